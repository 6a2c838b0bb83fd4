"""The policy: for one finished call, send a text or not, and the one reason why.

Pure functions: no I/O, no clock, no logging. What storage knows (opt-outs, the last
text to this number, how many texts went out lately) arrives as `PolicyFacts`, fetched by
the pipeline just before it asks.

Order of checks (the first that matches is the reason; `CHECK_ORDER` lists the words):

1. `not_inbound`    internal or outbound call
2. `answered`       a person answered
3. `short_abandon`  the caller hung up before min_ring (of ringing, or of an IVR or
                    announcement when nothing rang)
   (the call itself first: a call that was never missed says so, whoever called)
4. `anonymous`      the caller withheld the number, or there is none; nothing about the
                    number is looked at, even if the carrier passed one along
   `presentation_unknown`  [calls] unknown_presentation = "skip" and nothing (manager.conf
                    channelvars, a Getvar) said whether the caller withheld the number
5. `invalid_number` not a valid E.164 number (phonenumbers, with home_region)
6. `blocked`        on [textback] blocklist (any format; compared as E.164)
7. `destination_not_allowed`  a country not allowed (default: home_region only; +1 is
                    not "the US": +1 876 is Jamaica), or a type never texted (premium
                    rate, shared cost, toll free, UAN, voicemail access, pager, unknown)
8. `not_mobile`     a subscriber line of a type the config does not allow (fixed_line
                    unless turned on, voip, personal_number)
9. `opted_out`      the caller asked for no texts, or the office put them on its list
10. `disabled`      [textback] enabled = false, texting paused at run time (`textback
                    pause`, the MQTT switch), or the DID's [[lines]] enabled = false.
                    After every check about the call and the caller, so a trial run with
                    texting off records what would have happened: `disabled` then means
                    "would have been texted".
11. `cooldown`      this number had a text (sent or pending) within `cooldown`
12. `cap_reached`   max_per_month, max_per_day, max_per_hour (0: no cap), then the
                    SMS-pumping guard (detail "pumping guard: ..."): too many different
                    numbers of one range texted within pumping_window.

`called_back` and `answered_on_retry` are not decided here: the pipeline cancels a text
in its wait step with them (`cancel_reason`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Literal

from daemon.config import Config, TextbackConfig, format_duration
from daemon.decide.hours import office_zone
from daemon.decide.names import caller_names
from daemon.decide.numbers import CallerKind, CallerNumber, classify_caller, is_safe_destination
from daemon.decide.templates import (
    TEMPLATE_KEYS,
    TemplateKind,
    business_name,
    clean_text,
    line_for,
    render,
    render_for_call,
    time_fields,
)
from daemon.model import (
    MISSED_OUTCOMES,
    Contact,
    FinishedCall,
    InboundAnswered,
    OutboundDialled,
    Outcome,
    Reason,
)
from gsm.pdu import SmsInfo, sms_info

#: The reason words in the order they are checked (see the module docstring).
CHECK_ORDER: tuple[Reason, ...] = (
    Reason.NOT_INBOUND,
    Reason.ANSWERED,
    Reason.SHORT_ABANDON,
    Reason.ANONYMOUS,
    Reason.PRESENTATION_UNKNOWN,
    Reason.INVALID_NUMBER,
    Reason.BLOCKED,
    Reason.DESTINATION_NOT_ALLOWED,
    Reason.NOT_MOBILE,
    Reason.OPTED_OUT,
    Reason.DISABLED,
    Reason.COOLDOWN,
    Reason.CAP_REACHED,
)

#: Number types never texted whatever the config says: texting them costs money or
#: reaches a service, not a person (SMS-pumping targets), or we cannot tell what it is.
NEVER_TEXTED_TYPES = frozenset(
    {"premium_rate", "shared_cost", "toll_free", "uan", "voicemail", "pager", "unknown"}
)

#: Seconds in an hour, for the hourly cap.
HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class PolicyFacts:
    """What storage knows, fetched by the pipeline right before deciding."""

    opted_out: bool = False
    #: last text to this destination that was sent or is pending (epoch seconds)
    last_text_at: float | None = None
    #: texts sent or pending: the last hour, today and this month (office time zone)
    sent_last_hour: int = 0
    sent_today: int = 0
    sent_this_month: int = 0
    #: texting paused at run time (`textback pause`, the MQTT switch): the detail words;
    #: "" when not paused
    paused: str = ""
    #: OTHER distinct destinations of this destination's number range (its first
    #: pumping_prefix_digits E.164 digits) texted within pumping_window
    range_destinations: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """Send or suppress, with one reason word, and the text when sending."""

    action: Literal["send", "suppress"]
    reason: Reason  # Reason.MISSED for send
    destination: str | None  # E.164 when the caller is a valid number
    template_kind: TemplateKind | None
    text: str | None  # the rendered text, for send
    parts: int = 0  # SMS parts the text costs
    encoding: str = ""  # "gsm7" or "ucs2"
    detail: str = ""  # human words for logs and history


@dataclass(frozen=True, slots=True)
class Pause:
    """Sending is paused by a cap or the pumping guard.

    `guard` is the detail's first word ("max_per_hour", "max_per_day", "max_per_month",
    "pumping"), so the pipeline can log ONE loud line per guard that trips; `until` is the
    latest time (epoch seconds) the guard can still hold: by then the window has passed.
    """

    guard: str
    detail: str
    until: float


# -- caller and destination -------------------------------------------------------------


def judge_caller(call: FinishedCall, cfg: Config) -> CallerNumber:
    """The caller ID judged with the configured home region (withheld wins)."""
    return classify_caller(
        call.caller, home_region=cfg.textback.home_region.upper(), withheld=call.withheld
    )


def allowed_countries(tb: TextbackConfig) -> frozenset[str]:
    """The ISO regions texts may go to: allowed_countries, or home_region when empty."""
    return frozenset(c.upper() for c in tb.allowed_countries) or frozenset({tb.home_region.upper()})


def number_type_reason(number_type: str | None, allowed: list[str]) -> Reason | None:
    """None when a number type may be texted; else destination_not_allowed for a type
    never texted (even if configured), not_mobile for a subscriber type not allowed."""
    ntype = number_type or "unknown"
    if ntype in NEVER_TEXTED_TYPES:
        return Reason.DESTINATION_NOT_ALLOWED
    if ntype not in allowed:
        return Reason.NOT_MOBILE
    return None


@lru_cache(maxsize=8)
def _blocklist(entries: tuple[str, ...], home_region: str) -> frozenset[str]:
    """Blocklist entries as E.164 (and, for entries that do not parse, their digits)."""
    out: set[str] = set()
    for raw in entries:
        judged = classify_caller(raw, home_region=home_region)
        if judged.e164 is not None:
            out.add(judged.e164)
        else:
            digits = "".join(ch for ch in raw if ch.isdigit())
            if digits:
                out.add(digits)
    return frozenset(out)


def is_blocked(e164: str, raw_caller: str, cfg: Config) -> bool:
    """True when the number is on [textback] blocklist, in whatever format it was written."""
    tb = cfg.textback
    blocked = _blocklist(tuple(tb.blocklist), tb.home_region.upper())
    raw_digits = "".join(ch for ch in raw_caller if ch.isdigit())
    return e164 in blocked or e164[1:] in blocked or (bool(raw_digits) and raw_digits in blocked)


def destination_check(call: FinishedCall, cfg: Config) -> tuple[str | None, Reason | None]:
    """Stateless checks of the caller as a destination.

    (e164, None) when the number may be texted; (e164 or None, reason) when not: the
    E.164 form is returned whenever the caller ID is a valid number, so it can be recorded.
    Reasons: anonymous, invalid_number, blocked, destination_not_allowed, not_mobile.
    """
    e164, reason, _ = _destination(call, cfg)
    return e164, reason


def _destination(call: FinishedCall, cfg: Config) -> tuple[str | None, Reason | None, str]:
    tb = cfg.textback
    judged = judge_caller(call, cfg)
    if judged.kind is CallerKind.ANONYMOUS:
        why = "the caller withheld the number" if call.withheld else "no caller number"
        return None, Reason.ANONYMOUS, why
    if not call.presentation_known and cfg.calls.unknown_presentation == "skip":
        # the number may be one the caller withheld: never trusted, never recorded as one
        return (
            None,
            Reason.PRESENTATION_UNKNOWN,
            "nothing said whether the caller withheld the number (no CALLERID(pres) in "
            "the events, no Getvar answer); unknown_presentation = skip",
        )
    shown = clean_text(call.caller, 40)
    if judged.kind is not CallerKind.VALID or judged.e164 is None:
        return None, Reason.INVALID_NUMBER, f"caller ID {shown!r} is not a valid phone number"
    e164 = judged.e164
    if not is_safe_destination(e164):  # phonenumbers said valid; belt and braces
        return None, Reason.INVALID_NUMBER, f"{e164!r} is not +digits"
    if is_blocked(e164, call.caller, cfg):
        return e164, Reason.BLOCKED, f"{e164} is on the blocklist"
    region = (judged.region or "").upper()
    allowed = allowed_countries(tb)
    if region not in allowed:
        return (
            e164,
            Reason.DESTINATION_NOT_ALLOWED,
            f"country {region or 'none'} not allowed (allowed_countries: "
            f"{', '.join(sorted(allowed))})",
        )
    reason = number_type_reason(judged.number_type, list(tb.allowed_number_types))
    ntype = judged.number_type or "unknown"
    if reason is Reason.DESTINATION_NOT_ALLOWED:
        return e164, reason, f"{ntype} numbers are never texted"
    if reason is Reason.NOT_MOBILE:
        return (
            e164,
            reason,
            f"{ntype} not in allowed_number_types ({', '.join(tb.allowed_number_types)})",
        )
    return e164, None, ""


# -- caps and the pumping guard ---------------------------------------------------------


def number_range(e164: str, prefix_digits: int) -> str:
    """The number range of a destination for the pumping guard: "+" and its first digits."""
    return e164[: 1 + prefix_digits]


def cap_pause(facts: PolicyFacts, cfg: Config, now: float) -> Pause | None:
    """The cap that stops another text now (month, then day, then hour), if any."""
    tb = cfg.textback
    local = datetime.fromtimestamp(now, _zone_or_utc(cfg))
    if tb.max_per_month and facts.sent_this_month >= tb.max_per_month:
        first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (first + timedelta(days=32)).replace(day=1)
        return Pause(
            "max_per_month",
            f"max_per_month cap of {tb.max_per_month} reached ({facts.sent_this_month} "
            f"texts this month); sending resumes {nxt:%Y-%m-%d}",
            nxt.timestamp(),
        )
    if tb.max_per_day and facts.sent_today >= tb.max_per_day:
        nxt = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return Pause(
            "max_per_day",
            f"max_per_day cap of {tb.max_per_day} reached ({facts.sent_today} texts today); "
            f"sending resumes by {nxt:%Y-%m-%d %H:%M}",
            nxt.timestamp(),
        )
    if tb.max_per_hour and facts.sent_last_hour >= tb.max_per_hour:
        return Pause(
            "max_per_hour",
            f"max_per_hour cap of {tb.max_per_hour} reached ({facts.sent_last_hour} texts "
            "in the last hour)",
            now + HOUR,
        )
    return None


def _zone_or_utc(cfg: Config) -> tzinfo:
    # The config check refuses a bad zone; should one slip through, a cap still holds.
    try:
        return office_zone(cfg.hours.timezone)
    except ValueError:
        return UTC


class PumpingGuard:
    """SMS-pumping guard: many different numbers of one range in a short time.

    Fraudsters spoof caller IDs across a range of numbers they earn money on, so that an
    auto-reply texts each of them. More than `pumping_max_per_range` distinct numbers of
    one range (the first `pumping_prefix_digits` E.164 digits) within `pumping_window`
    pause texting to that range. 0 turns the guard off.
    """

    def __init__(self, cfg: Config) -> None:
        tb = cfg.textback
        self.max_per_range = tb.pumping_max_per_range
        self.prefix_digits = tb.pumping_prefix_digits
        self.window = tb.pumping_window

    def check(self, destination: str, facts: PolicyFacts, now: float) -> Pause | None:
        """A Pause when texting `destination` would exceed the range's allowance."""
        if not self.max_per_range or facts.range_destinations < self.max_per_range:
            return None
        rng = number_range(destination, self.prefix_digits)
        return Pause(
            "pumping",
            f"pumping guard: {facts.range_destinations} other numbers in range {rng} texted "
            f"within {format_duration(self.window)} (pumping_max_per_range "
            f"{self.max_per_range}); texts to that range are paused",
            now + self.window,
        )


def sending_pause(
    destination: str | None, facts: PolicyFacts, cfg: Config, now: float
) -> Pause | None:
    """The guard (cap, then pumping guard) that stops a text to `destination` now."""
    pause = cap_pause(facts, cfg, now)
    if pause is None and destination is not None:
        pause = PumpingGuard(cfg).check(destination, facts, now)
    return pause


def cancel_reason(event: InboundAnswered | OutboundDialled) -> Reason:
    """Why a text in its wait step is cancelled by this tracker event."""
    if isinstance(event, InboundAnswered):
        return Reason.ANSWERED_ON_RETRY
    return Reason.CALLED_BACK


# -- the decision -----------------------------------------------------------------------


def _suppress(reason: Reason, detail: str, destination: str | None = None) -> Decision:
    return Decision("suppress", reason, destination, None, None, detail=detail)


def decide(
    call: FinishedCall,
    facts: PolicyFacts,
    cfg: Config,
    now: float,
    *,
    contact: Contact | None = None,
) -> Decision:
    """Send or suppress this finished call, with the first matching reason (module doc).

    `contact`: the caller as the office's contacts know them (names the text may use).
    """
    tb = cfg.textback
    if not call.inbound or call.outcome is Outcome.NOT_INBOUND:
        return _suppress(Reason.NOT_INBOUND, "internal or outbound call")
    if call.outcome is Outcome.ANSWERED:
        by = clean_text(call.answered_by, 60)
        return _suppress(Reason.ANSWERED, f"answered by {by}" if by else "answered")
    if call.outcome is Outcome.SHORT_ABANDON:
        min_ring = format_duration(cfg.calls.min_ring)
        if call.ivr_seconds is not None and call.ring_seconds == 0:
            # nothing rang: the caller's wait began when the PBX answered (IVR, announcement)
            return _suppress(
                Reason.SHORT_ABANDON,
                f"caller hung up {call.ivr_seconds:.1f}s after the PBX answered, "
                f"nothing rang (min_ring {min_ring})",
            )
        return _suppress(
            Reason.SHORT_ABANDON,
            f"caller hung up after {call.ring_seconds:.1f}s (min_ring {min_ring})",
        )
    if call.outcome not in MISSED_OUTCOMES:  # every outcome is listed; stay safe if not
        return _suppress(Reason.ANSWERED, f"outcome {call.outcome} is not a missed call")

    e164, reason, detail = _destination(call, cfg)
    if reason is not None:
        return _suppress(reason, detail, e164)
    assert e164 is not None  # _destination returns a number whenever there is no reason

    if facts.opted_out:
        return _suppress(Reason.OPTED_OUT, f"{e164} opted out", e164)
    if not tb.enabled:
        return _suppress(Reason.DISABLED, "[textback] enabled = false", e164)
    if facts.paused:
        return _suppress(Reason.DISABLED, facts.paused, e164)
    line = line_for(cfg, call.did)
    if line is not None and not line.enabled:
        did = clean_text(call.did, 20)
        return _suppress(Reason.DISABLED, f"[[lines]] did {did!r} has enabled = false", e164)
    if facts.last_text_at is not None and tb.cooldown > 0:
        ago = now - facts.last_text_at
        if ago < tb.cooldown:
            return _suppress(
                Reason.COOLDOWN,
                f"texted {format_duration(max(0.0, math.floor(ago)))} ago "
                f"(cooldown {format_duration(tb.cooldown)})",
                e164,
            )
    pause = sending_pause(e164, facts, cfg, now)
    if pause is not None:
        return _suppress(Reason.CAP_REACHED, pause.detail, e164)

    kind, text, info, note = _render(cfg, call, now, contact)
    detail = f"{kind}, {info.parts} part{'s' if info.parts != 1 else ''} {info.encoding}"
    if note:
        detail += f"; {note}"
    return Decision(
        "send",
        Reason.MISSED,
        e164,
        kind,
        text,
        parts=info.parts,
        encoding=info.encoding,
        detail=detail,
    )


def _render(
    cfg: Config, call: FinishedCall, now: float, contact: Contact | None
) -> tuple[TemplateKind, str, SmsInfo, str]:
    """The text for a call and its cost; a broken template or [hours] (which the config
    check refuses) falls back to the built-in wording, so a config slip never silences a
    missed call. The last item says what went wrong, "" when nothing did."""
    try:
        kind, text = render_for_call(cfg, call, now, contact)
        info = sms_info(text)  # a text the modem cannot encode is a broken text too
        if text.strip():
            return kind, text, info, ""
        problem = "the template rendered to an empty text"
    except ValueError as exc:  # TemplateError is a ValueError; so are zone/span problems
        problem = f"template problem ({exc})"
    kind = "voicemail" if call.voicemail_left is True else "in_hours"
    default: str = TextbackConfig.model_fields[TEMPLATE_KEYS[kind]].default
    try:
        when = time_fields(datetime.fromtimestamp(now, UTC))
    except (ValueError, OverflowError, OSError):
        when = {"time": "", "day": ""}
    names = caller_names(
        contact, call.caller_name, use_pbx_names=cfg.contacts.use_pbx_names, fallback=""
    )
    fields = {
        "business_name": clean_text(business_name(cfg, line_for(cfg, call.did)), 60),
        "caller_name": names.caller_name,
        "first_name": names.first_name,
        "did": clean_text(call.did, 20),
        "callback_number": clean_text(call.did, 20),
        **when,
    }
    text = render(default, fields, strict=False)
    return kind, text, sms_info(text), f"{problem}; used the built-in wording"
