"""Callers' names: which name a text may greet a caller by, and which it never may.

A caller ID name comes from the caller's network, and a caller who spoofs a number can
put anything there ("Pay at evil.example", "Call 1-900-555-0199"). Pasted into a text,
that becomes phishing sent from the office's own number to the person whose number was
spoofed. So a text greets a caller by name only when the office itself knows them: a
`Contact` from its own list (a file or the PBX's Asterisk database). A network-supplied
name is used only when the config allows it (`[contacts] use_pbx_names`) and it looks
like a person's name (`person_name`); anything else gets the fallback wording.

Pure functions, no I/O.
"""

from __future__ import annotations

import unicodedata
from typing import NamedTuple

from daemon.model import Contact

#: Longest caller name put into a text (characters, after cleaning).
CALLER_NAME_MAX = 30
#: A network name with more words than this is a sentence, not a name.
MAX_WORDS = 3
#: Combining marks one letter may carry (Vietnamese needs two when not precomposed).
MAX_MARKS = 2

#: Caller ID names that mean "no name" (compared case-insensitively, after cleaning),
#: and the carriers' warnings that sit in the same field.
NO_NAME = frozenset(
    {
        "unknown",
        "<unknown>",
        "anonymous",
        "unavailable",
        "restricted",
        "private",
        "withheld",
        "blocked",
        "no caller id",
        "unknown name",
        "unknown caller",
        "unknown number",
        "anonymous caller",
        "private caller",
        "private number",
        "no name",
        "out of area",
        "wireless caller",
        "cell phone",
        "toll free call",
        "spam likely",
        "scam likely",
        "potential spam",
        "suspected spam",
        "telemarketer",
        "fraud risk",
        "nomorobo",
    }
)

#: Words that are part of a link or a call to action, never of a name (case-insensitive).
_NOT_NAME_WORDS = frozenset(
    {
        "www",
        "http",
        "https",
        "com",
        "net",
        "org",
        "html",
        "click",
        "visit",
        "call",
        "pay",
        "verify",
        "login",
        "urgent",
        "refund",
        "prize",
        "winner",
    }
)

#: Punctuation a name may hold, inside a word: initials and titles (J. R.), apostrophes
#: (O'Brien, and the typographic one phones put there) and hyphens (Smith-Jones).
_NAME_PUNCT = frozenset(".'-\u2019")
#: Letter categories of names (no Lm modifier letters: superscripts and look-alike marks).
_LETTERS = frozenset({"Lu", "Ll", "Lt", "Lo"})
#: Scripts that one name may mix: Japanese writes names in kanji and kana together.
_SCRIPT_GROUPS = {"HIRAGANA": "CJK", "KATAKANA": "CJK"}


def clean_text(raw: str, limit: int) -> str:
    """Untrusted text made inert: no control, format (bidi override, zero-width),
    surrogate, private-use or unassigned characters; whitespace runs become one space;
    at most `limit` characters."""
    # Bounded work whatever the input size (a caller ID name may be megabytes of junk):
    # what lies beyond this many characters never makes it into a text anyway.
    raw = raw[: max(16 * limit, 256)]
    kept = []
    for ch in unicodedata.normalize("NFC", raw):
        cat = unicodedata.category(ch)
        if ch.isspace() or cat in ("Zl", "Zp"):
            kept.append(" ")  # CR, LF, tabs, line separators: a space, then collapsed
        elif cat[0] == "C":  # Cc control, Cf format (U+202E ...), Cs, Co, Cn
            continue
        else:
            kept.append(ch)
    return " ".join("".join(kept).split())[:limit].rstrip()


def _script(ch: str) -> str:
    """The script of a letter, from its Unicode name ("LATIN", "CYRILLIC", "CJK", ...)."""
    word = unicodedata.name(ch, "?").split(" ", 1)[0]
    return _SCRIPT_GROUPS.get(word, word)


def _word_problem(word: str) -> str:
    """Why one word of a network name is not part of a person's name ("" when it is)."""
    if unicodedata.category(word[0]) not in _LETTERS:
        return "a word starts with punctuation"
    if word.lower().strip(".'-\u2019") in _NOT_NAME_WORDS:
        return f"{word!r} is a link or call-to-action word"
    prev = ""
    for ch in word:
        if ch in _NAME_PUNCT and prev in _NAME_PUNCT:
            return "punctuation runs"
        prev = ch
    pieces = word.rstrip(".").split(".")
    # A dot inside a word is a domain (bit.ly, evil.example) unless every piece is one
    # letter: initials such as "J.R.".
    if len(pieces) > 1 and any(len(p.strip("'-\u2019")) > 1 for p in pieces):
        return "a domain-like word"
    return ""


def name_problem(raw: str) -> str:
    """Why a network-supplied caller name is not used ("" when it looks like a person's).

    A person's name here: letters (one script; combining accents of that script), spaces
    and `.'-` inside words, at most three words, at most CALLER_NAME_MAX characters. No
    digits, `@`, `/`, `:`, no domain-like word, no control or format characters (bidi
    overrides, zero-width joiners), no emoji or symbols, no compatibility look-alikes
    (fullwidth or mathematical letters), and not a carrier's "no name" word.
    """
    text = raw.strip()
    if not text:
        return "empty"
    if len(text) > CALLER_NAME_MAX * 4:
        return "too long"
    for ch in text:
        if unicodedata.category(ch)[0] == "C":
            return f"control or format character U+{ord(ch):04X}"
    text = unicodedata.normalize("NFC", " ".join(text.split()))
    if len(text) > CALLER_NAME_MAX:
        return "too long"
    if unicodedata.normalize("NFKC", text) != text:
        return "compatibility look-alike characters"
    if text.lower() in NO_NAME:
        return "a no-name word"
    scripts: set[str] = set()
    prev_cat = ""
    marks = 0
    for ch in text:
        cat = unicodedata.category(ch)
        marks = marks + 1 if cat in ("Mn", "Mc") else 0
        if cat in _LETTERS:
            scripts.add(_script(ch))
        elif cat in ("Mn", "Mc"):
            # an accent belongs to the letter before it, in that letter's script; a pile
            # of them is decoration (zalgo text), not a name
            if prev_cat not in _LETTERS and prev_cat not in ("Mn", "Mc"):
                return "a mark without a letter"
            if marks > MAX_MARKS:
                return "too many marks on one letter"
            mark = unicodedata.name(ch, "?").split(" ", 1)[0]
            if mark != "COMBINING":
                scripts.add(_SCRIPT_GROUPS.get(mark, mark))
        elif ch != " " and ch not in _NAME_PUNCT:
            return f"character {ch!r} is not part of a name"
        prev_cat = cat
    if len(scripts) > 1:
        return "mixed scripts (" + ", ".join(sorted(scripts)) + ")"
    words = text.split(" ")
    if len(words) > MAX_WORDS:
        return f"{len(words)} words"
    for word in words:
        why = _word_problem(word)
        if why:
            return why
    return ""


def person_name(raw: str) -> str | None:
    """The network-supplied name when it looks like a person's (`name_problem`), else None."""
    if name_problem(raw):
        return None
    return unicodedata.normalize("NFC", " ".join(raw.split()))


class CallerNames(NamedTuple):
    """The values of {caller_name} and {first_name} for one call."""

    caller_name: str
    first_name: str


def caller_names(
    contact: Contact | None, network_name: str, *, use_pbx_names: bool, fallback: str
) -> CallerNames:
    """{caller_name} and {first_name}: the office's contact first; else, only when allowed,
    a network-supplied name that looks like a person's (its first name is not guessed:
    carriers write "DOE JANE" as often as "Jane Doe"); else the fallback for both."""
    if contact is not None:
        name = clean_text(contact.name, CALLER_NAME_MAX)
        first = clean_text(contact.first_name, CALLER_NAME_MAX)
        if name or first:
            return CallerNames(name or first, first or fallback)
    if use_pbx_names:
        network = person_name(network_name)
        if network is not None:
            return CallerNames(network, fallback)
    return CallerNames(fallback, fallback)
