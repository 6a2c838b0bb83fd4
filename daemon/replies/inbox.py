"""The inbox: every text someone sends to the office's number, kept, linked and obeyed.

One reply is one transaction: the reply is written with what it answers (the latest
missed-call text to that number within `reply_window`, and through it the call), what it
is (a keyword or a message) and who sent it (a number, a short code, a name); an opt-out
goes on the do-not-text list with the exact words, cancels what is still waiting or
queued to that number, and writes its one confirmation into the outbox, all at once. So
a crash can never leave an opt-out unconfirmed or confirmed twice: the confirmation is
durable the moment the opt-out is, and the outbox sends it within seconds (it does not
wait, merge or get cancelled by a call).

No loops, no pumping: only a valid number is ever answered (never a short code or a
sender name, which carriers use for their notices); at most one automatic answer of each
kind per number per office day; an answer goes only where a missed-call text could
(allowed countries and number types, not blocklisted) and only under the caps. The
opt-out itself is always recorded, whatever happens to its confirmation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from daemon.clock import Clock
from daemon.config import Config, LineConfig
from daemon.decide.hours import office_zone
from daemon.decide.numbers import CallerKind, classify_caller
from daemon.decide.policy import (
    allowed_countries,
    is_blocked,
    number_type_reason,
    sending_pause,
)
from daemon.decide.templates import business_name, clean_text, render, time_fields
from daemon.logsetup import kv
from daemon.model import MessageKind
from daemon.outbox.outbox import Outbox
from daemon.replies.keywords import Keywords, ReplyKind, fold
from daemon.store.store import Store, StoreTx
from gsm.pdu import sms_info

log = logging.getLogger("daemon.replies")

#: The window of `forward_per_hour`.
HOUR = 3600.0
#: How much of a reply a staff text carries (two GSM-7 parts with the header).
STAFF_CHARS = 280

_ANSWERS = {
    ReplyKind.OPT_OUT: MessageKind.OPT_OUT_CONFIRMATION,
    ReplyKind.OPT_IN: MessageKind.OPT_IN_CONFIRMATION,
    ReplyKind.HELP: MessageKind.HELP,
}


@dataclass(frozen=True, slots=True)
class InboundText:
    """One inbound text as a modem handed it over."""

    sender: str  # as the network gave it: a number, a short code or a name (untrusted)
    text: str
    at: float
    incomplete: bool = False  # a part never came
    modem: str = ""
    sms_key: str | None = None  # the same SMS read twice has the same key


@dataclass(frozen=True, slots=True)
class Received:
    """What became of one inbound text."""

    reply_id: int | None  # None: the same SMS was kept before (read twice)
    kind: ReplyKind
    sender_kind: str
    number: str | None
    message_id: int | None  # the text it answers
    call_id: int | None
    answer_id: int | None  # the automatic answer written, if any
    why_no_answer: str = ""


def sender_kind(sender: str, number_kind: CallerKind) -> str:
    """number, short_code (a few digits: carriers, services), alphanumeric or invalid."""
    if number_kind is CallerKind.VALID:
        return "number"
    if any(c.isalpha() for c in sender):
        return "alphanumeric"
    # short codes are a few digits with no country code (never "+...")
    if sender.isdigit() and len(sender) <= 8:
        return "short_code"
    return "invalid"


class Inbox:
    """Takes inbound texts (from any modem) and does what they ask."""

    def __init__(self, cfg: Config, store: Store, clock: Clock) -> None:
        self._cfg = cfg
        self._keywords = Keywords.from_config(cfg.replies)
        self._store = store
        self._clock = clock

    def reconfigure(self, cfg: Config) -> None:
        """Use new word lists and wording from now on (SIGHUP)."""
        self._cfg = cfg
        self._keywords = Keywords.from_config(cfg.replies)

    async def receive(
        self,
        sender: str,
        text: str,
        *,
        at: float | None = None,
        incomplete: bool = False,
        modem: str = "",
        sms_key: str | None = None,
    ) -> Received:
        """Keep one inbound text and act on it, in one transaction. Raises StoreError when
        the database refuses it: the caller must then keep the text (on the SIM)."""
        msg = InboundText(
            sender=sender,
            text=text,
            at=self._clock.now() if at is None else at,
            incomplete=incomplete,
            modem=modem,
            sms_key=sms_key,
        )
        cfg, keywords = self._cfg, self._keywords
        out = await self._store.batch(lambda tx: self._receive_in(tx, cfg, keywords, msg))
        if out.why_no_answer:
            log.info(
                kv(
                    event="reply_not_answered",
                    reply=out.reply_id,
                    kind=out.kind,
                    why=out.why_no_answer,
                )
            )
        return out

    async def judge_old_replies(self) -> int:
        """Replies kept before textback could read them (a database from before replies
        were judged): an exact opt-out keyword among them is obeyed now, without a
        confirmation (it would come late and out of the blue), each said at WARNING.
        Returns how many numbers were opted out."""
        cfg, keywords = self._cfg, self._keywords
        now = self._clock.now()

        def unit(tx: StoreTx) -> list[tuple[str, int]]:
            done = []
            for rid, sender, text, _ in tx.unjudged_replies():
                judged = classify_caller(sender, home_region=cfg.textback.home_region)
                skind = sender_kind(sender, judged.kind)
                number = judged.e164 if judged.kind is CallerKind.VALID else None
                exact = number is not None and fold(text) in keywords.opt_out
                tx.judge_reply(
                    rid,
                    number=number,
                    sender_kind=skind,
                    kind="opt_out" if exact else "message",
                )
                if (
                    exact
                    and number is not None
                    and tx.optout_add(number, now, source="legacy_reply", text=text, reply_id=rid)
                ):
                    done.append((number, rid))
            return done

        done = await self._store.batch(unit)
        for number, rid in done:
            log.warning(
                kv(
                    event="opt_out_from_old_reply",
                    number=number,
                    reply=rid,
                    note="a STOP kept before replies were read; obeyed now, not confirmed",
                )
            )
        return len(done)

    def _receive_in(
        self, tx: StoreTx, cfg: Config, keywords: Keywords, msg: InboundText
    ) -> Received:
        sender, text, now = msg.sender, msg.text, msg.at
        judged = classify_caller(sender, home_region=cfg.textback.home_region)
        skind = sender_kind(sender, judged.kind)
        number = judged.e164 if judged.kind is CallerKind.VALID else None
        opted_out = number is not None and tx.is_opted_out(number)
        kind = keywords.classify(text, opted_out=opted_out)
        answered = None
        if number is not None:
            answered = tx.latest_text_to(number, now - cfg.replies.reply_window)
        message_id = None if answered is None else answered.id
        call_id = None if answered is None or not answered.call_ids else answered.call_ids[-1]
        reply_id = tx.add_reply(
            sender,
            text,
            now,
            optout=kind is ReplyKind.OPT_OUT,
            kind=str(kind),
            sender_kind=skind,
            number=number,
            message_id=message_id,
            call_id=call_id,
            incomplete=msg.incomplete,
            modem=msg.modem,
            sms_key=msg.sms_key,
        )
        done = Received(reply_id, kind, skind, number, message_id, call_id, None)
        if reply_id is not None:
            self._forward_in(tx, cfg, msg, reply_id, number)
        if reply_id is None or number is None:
            return done  # kept before; or nobody to act for (short code, sender name)
        exact = fold(text) in keywords.opt_out
        if kind is ReplyKind.OPT_OUT:
            if not tx.optout_add(
                number,
                now,
                source="keyword" if exact else "reply",
                text=text,
                reply_id=reply_id,
            ):
                return done  # opted out already: confirmed then, not again
            # (optout_add cancelled what was still waiting to this number)
        elif kind is ReplyKind.OPT_IN:
            if not tx.optout_remove(number, now, source="keyword", text=text, reply_id=reply_id):
                return done  # not opted out: nothing to undo, nothing to confirm
        elif kind is not ReplyKind.HELP:
            return done
        answer_kind = _ANSWERS[kind]
        why = self._may_answer(tx, cfg, number, raw=sender, kind=answer_kind, now=now)
        if why:
            return Received(reply_id, kind, skind, number, message_id, call_id, None, why)
        body = self._wording(cfg, answer_kind, tx, call_id, now)
        info = sms_info(body)
        line = "" if answered is None else answered.line
        answer_id = Outbox.enqueue_answer_in(
            tx,
            destination=number,
            text=body,
            kind=answer_kind,
            parts=info.parts,
            encoding=info.encoding,
            line=line,
            now=now,
        )
        tx.set_reply_answer(reply_id, answer_id)
        return Received(reply_id, kind, skind, number, message_id, call_id, answer_id)

    def _forward_in(
        self, tx: StoreTx, cfg: Config, msg: InboundText, reply_id: int, number: str | None
    ) -> None:
        """Queue the office's copies of a reply, in the reply's own transaction: a mail
        (sent by the forwarder, retried until the server takes it) and a text to each staff
        mobile. A sender past `forward_per_hour` is summed up in one later mail instead."""
        rc = cfg.replies
        since = msg.at - HOUR
        if rc.forward_email and cfg.smtp.host:
            target = ",".join(rc.forward_email)
            sent = tx.forwards_since(msg.sender, "mail", since)
            if sent < rc.forward_per_hour:
                tx.add_forward(reply_id, channel="mail", target=target, now=msg.at)
            elif not tx.forwards_since(msg.sender, "mail_summary", since):
                # one summary when the hour is over, however many more come
                tx.add_forward(
                    reply_id, channel="mail_summary", target=target, now=msg.at, due=msg.at + HOUR
                )
        if rc.forward_sms and tx.forwards_since(msg.sender, "sms", since) < rc.forward_per_hour:
            body = f"Reply from {number or msg.sender}: {clean_text(msg.text, STAFF_CHARS)}"
            info = sms_info(body)
            for staff in _staff_numbers(cfg):
                if staff == number:
                    continue  # a staff phone texting the office gets no copy of itself
                why = destination_problem(cfg, staff, staff)
                if not why and tx.is_opted_out(staff):
                    why = "opted_out"
                facts = tx.policy_facts(staff, msg.at, cfg)
                if not why and sending_pause(staff, facts, cfg, msg.at) is not None:
                    why = "cap_reached"
                if why:
                    log.warning(kv(event="forward_skipped", reply=reply_id, why=why))
                    continue
                Outbox.enqueue_answer_in(
                    tx,
                    destination=staff,
                    text=body,
                    kind=MessageKind.STAFF_FORWARD,
                    parts=info.parts,
                    encoding=info.encoding,
                    line="",
                    now=msg.at,
                )
                tx.add_forward(reply_id, channel="sms", target=staff, now=msg.at, state="handed")

    def _may_answer(
        self, tx: StoreTx, cfg: Config, number: str, *, raw: str, kind: MessageKind, now: float
    ) -> str:
        """Why no automatic answer may go to `number` now ("" when it may)."""
        why = destination_problem(cfg, number, raw)
        if why:
            return why
        # A confirmation follows a real change of the list (one text in, one out); HELP
        # changes nothing, so it is answered once a day at most.
        if kind is MessageKind.HELP and tx.answered_since(number, kind, self._store.day_start(now)):
            return "answered_today"
        if sending_pause(number, tx.policy_facts(number, now, cfg), cfg, now) is not None:
            return "cap_reached"
        return ""

    def _wording(
        self, cfg: Config, kind: MessageKind, tx: StoreTx, call_id: int | None, now: float
    ) -> str:
        rc = cfg.replies
        template = {
            MessageKind.OPT_OUT_CONFIRMATION: rc.confirm_opt_out,
            MessageKind.OPT_IN_CONFIRMATION: rc.confirm_opt_in,
        }.get(kind, rc.help_text)
        call = None if call_id is None else tx.get_call(call_id)
        line = None if call is None else cfg.line_for(call.did)
        callback = _callback_number(cfg, line, "" if call is None else call.did)
        try:
            when = time_fields(datetime.fromtimestamp(now, office_zone(cfg.hours.timezone)))
        except ValueError:
            when = {"time": "", "day": ""}
        fields = {
            "business_name": clean_text(business_name(cfg, line), 60),
            "caller_name": cfg.textback.caller_name_fallback,
            "first_name": cfg.textback.caller_name_fallback,
            "did": clean_text("" if call is None else call.did, 20),
            "callback_number": clean_text(callback, 20),
            **when,
        }
        # `textback check` refuses a broken template; should one slip through, the words
        # as written still go out rather than no confirmation at all.
        return render(template, fields, strict=False)


def destination_problem(cfg: Config, number: str, raw: str) -> str:
    """Why an automatic text may not go to `number` ("" when it may): the destination
    rules of a missed-call text (countries, number types, blocklist)."""
    judged = classify_caller(raw, home_region=cfg.textback.home_region)
    tb = cfg.textback
    if judged.region not in allowed_countries(tb):
        return "destination_not_allowed"
    if number_type_reason(judged.number_type, list(tb.allowed_number_types)) is not None:
        return "destination_not_allowed"
    if is_blocked(number, raw, cfg):
        return "blocked"
    return ""


def _staff_numbers(cfg: Config) -> list[str]:
    """The staff mobiles of `forward_sms` in E.164, each once (`check` names bad ones)."""
    out: list[str] = []
    for raw in cfg.replies.forward_sms:
        judged = classify_caller(raw, home_region=cfg.textback.home_region)
        if judged.kind is CallerKind.VALID and judged.e164 and judged.e164 not in out:
            out.append(judged.e164)
    return out


def _callback_number(cfg: Config, line: LineConfig | None, did: str) -> str:
    """The number to call back: the line's, else the first line that names one, else the
    number the caller rang."""
    if line is not None and line.callback_number:
        return line.callback_number
    for other in cfg.lines:
        if other.callback_number:
            return other.callback_number
    return did
