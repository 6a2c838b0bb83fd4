"""What a reply says, as far as keywords go: opt out, opt in, help, or a message.

Matching (DESIGN.md, Wave 2 contracts): NFKC, casefold, accents dropped, the spaces,
punctuation and emoji at both ends trimmed, inner spaces collapsed; then the whole reply
is compared exactly with the office's word lists, folded the same way. "Stop." "STOP 🛑",
full-width "STOP" and " stop " are STOP; "stopped" is not.

A reply that is not a keyword but clearly asks to stop ("please stop texting me") is a
possible opt-out. Only strong words count for that, and only where they mean "stop
texting": "stop" followed within two words by text(s), texting, message(s), messaging,
contacting, sending, sms or me; "stop" first, unless "by", "in", "at", "over" and the
like follow it; "please stop" at the end; "unsubscribe", "opt out", "optout", "remove me" anywhere;
never under a "don't", "not" or "never". So "can I stop by at 3?", "bus stop", "please
don't stop", "I don't want to opt out" and "cancel my appointment" are messages.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

from daemon.config import RepliesConfig

#: Words after "stop" that make it "stop texting".
_STOP_OBJECTS = frozenset(
    {
        "text",
        "texts",
        "texting",
        "message",
        "messages",
        "messaging",
        "contacting",
        "sending",
        "me",
        "sms",
    }
)
#: Words that ask to stop wherever they stand (unless negated).
_ALWAYS_OPT_OUT = frozenset(
    {"unsubscribe", "opt out", "optout", "opt-out", "stopall", "stop all", "remove me"}
)
#: What after a first-word "stop" makes it about going somewhere, not about texts.
_STOP_ELSEWHERE = frozenset(
    {"by", "in", "over", "at", "for", "to", "on", "off", "and", "the", "when", "if", "there"}
)
#: What before a last-word "stop" makes it a request.
_PLEASE = frozenset({"please", "pls", "plz", "just"})
#: Words that turn a request around ("I don't want to opt out", "please don't stop").
_NEGATIONS = frozenset({"don't", "dont", "do not", "not", "never", "no", "didn't", "didnt"})
_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")
_SPACES = re.compile(r"\s+")


class ReplyKind(StrEnum):
    """What a reply is taken to be."""

    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    POSSIBLE_OPT_OUT = "possible_opt_out"  # fuzzy_opt_out = "flag": kept and marked only
    MESSAGE = "message"


def fold(text: str) -> str:
    """The reply as keywords are compared: width, case and accents folded, the ends
    trimmed of anything that is not a letter or digit, inner spaces collapsed."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = "".join(c for c in unicodedata.normalize("NFKD", t) if not unicodedata.combining(c))
    start, end = 0, len(t)
    while start < end and not t[start].isalnum():
        start += 1
    while end > start and not t[end - 1].isalnum():
        end -= 1
    return _SPACES.sub(" ", t[start:end])


def _words(folded: str) -> list[str]:
    # a typographic apostrophe is an apostrophe ("don’t" is "don't")
    return _WORD.findall(folded.replace("\u2019", "'"))


def _negated(words: list[str], i: int) -> bool:
    """Is word `i` under a "don't", "not" or "never" in the three words before it?"""
    return any(w in _NEGATIONS for w in words[max(0, i - 3) : i])


def asks_to_stop(text: str) -> bool:
    """A message that is not the keyword but clearly asks to stop the texts."""
    words = _words(fold(text))
    n = len(words)
    for i, w in enumerate(words):
        two = " ".join(words[i : i + 2])
        if (w in _ALWAYS_OPT_OUT or two in _ALWAYS_OPT_OUT) and not _negated(words, i):
            return True
        if w != "stop" or _negated(words, i):
            continue
        after = words[i + 1 : i + 3]
        if any(x in _STOP_OBJECTS for x in after):
            return True  # "stop texting me", "can you stop sending these"
        if i == 0 and (n == 1 or words[1] not in _STOP_ELSEWHERE):
            # "STOP please", "Stop - Mary": a missed opt-out breaks the law, a wrong one
            # is undone with START (its confirmation says so); only "stop by", "stop in"
            # and the like mean something else
            return True
        if i == n - 1 and i > 0 and words[i - 1] in _PLEASE:
            return True  # "please stop", "pls stop"
    return False


@dataclass(frozen=True, slots=True)
class Keywords:
    """The office's word lists, folded once."""

    opt_out: frozenset[str]
    opt_in: frozenset[str]
    help: frozenset[str]
    fuzzy: str  # "opt_out" or "flag"

    @classmethod
    def from_config(cls, cfg: RepliesConfig) -> Keywords:
        """Fold the configured lists (empty entries ignored)."""

        def fold_all(words: list[str]) -> frozenset[str]:
            return frozenset(f for f in (fold(w) for w in words) if f)

        return cls(
            opt_out=fold_all(cfg.opt_out_words),
            opt_in=fold_all(cfg.opt_in_words),
            help=fold_all(cfg.help_words),
            fuzzy=cfg.fuzzy_opt_out,
        )

    def classify(self, text: str, *, opted_out: bool) -> ReplyKind:
        """What `text` is, for a sender who is (or is not) opted out now."""
        folded = fold(text)
        if folded in self.opt_out:
            return ReplyKind.OPT_OUT
        if folded in self.opt_in or (opted_out and folded == "yes"):
            return ReplyKind.OPT_IN
        if folded in self.help:
            return ReplyKind.HELP
        if asks_to_stop(text):
            return ReplyKind.OPT_OUT if self.fuzzy == "opt_out" else ReplyKind.POSSIBLE_OPT_OUT
        return ReplyKind.MESSAGE
