"""`textback replay TRACE`: a recorded AMI byte stream through the live decoding code and
the tracker, with a basic text-back verdict per finished call. Nothing is sent.

The bytes go through `daemon.intake.stream.AmiStream` in reads of `--chunk` bytes, exactly as
the live intake feeds it from TCP, so a replay shows what the daemon would have seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import phonenumbers

from daemon.app.dryrun import dry_run
from daemon.clock import SystemClock
from daemon.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    load_config,
    parse_duration,
)
from daemon.decide.numbers import CallerKind, classify_caller
from daemon.decide.pipeline import CallReport
from daemon.intake.stream import AmiStream
from daemon.intake.tracker import WANTED_EVENTS, WANTED_VARS, CallTracker
from daemon.model import MISSED_OUTCOMES, FinishedCall, Outcome, Reason, TrackerEvent

#: Number types that are never an SMS destination whatever the config says: texting them
#: costs money or reaches a service, not a person (the SMS-pumping targets of DESIGN.md).
NEVER_TEXTED_TYPES = frozenset(
    {"premium_rate", "shared_cost", "toll_free", "uan", "voicemail", "pager", "unknown"}
)


def basic_decision(call: FinishedCall, cfg: Config) -> tuple[str, str]:
    """Send or suppress, with one reason word, from the call alone (no history, no caps).

    Order: the outcome (answered, not_inbound, short_abandon), then the caller (withheld
    or anonymous, invalid), then the destination (country, then number type). A number
    type that is never a text destination (premium rate, shared cost, toll free ...) is
    `destination_not_allowed`, like a foreign number: it is an SMS-pumping target, not a
    caller to serve. A real subscriber line the config does not allow (fixed line, VoIP,
    with the default `allowed_number_types`) is `not_mobile`: it cannot take the text.
    The full policy (daemon.decide.policy) replaces this function in the daemon.
    """
    outcome = call.outcome
    if outcome is Outcome.NOT_INBOUND:
        return "suppress", Reason.NOT_INBOUND.value
    if outcome is Outcome.ANSWERED:
        return "suppress", Reason.ANSWERED.value
    if outcome is Outcome.SHORT_ABANDON:
        return "suppress", Reason.SHORT_ABANDON.value
    if outcome not in MISSED_OUTCOMES:  # pragma: no cover - every outcome is listed
        return "suppress", outcome.value
    home = cfg.textback.home_region.upper()
    number = classify_caller(call.caller, home_region=home, withheld=call.withheld)
    if number.kind is CallerKind.ANONYMOUS:
        return "suppress", Reason.ANONYMOUS.value
    if number.kind is CallerKind.INVALID:
        return "suppress", Reason.INVALID_NUMBER.value
    allowed = {c.upper() for c in cfg.textback.allowed_countries} or {home}
    if number.region not in allowed:
        return "suppress", Reason.DESTINATION_NOT_ALLOWED.value
    ntype = number.number_type or "unknown"
    if ntype in NEVER_TEXTED_TYPES:
        return "suppress", Reason.DESTINATION_NOT_ALLOWED.value
    if ntype not in cfg.textback.allowed_number_types:
        return "suppress", Reason.NOT_MOBILE.value
    return "send", Reason.MISSED.value


def call_record(
    call: FinishedCall, cfg: Config, report: CallReport | None = None
) -> dict[str, Any]:
    """The replay's view of one finished call, with its verdict.

    With a `report` from the dry run (full policy and wait step) its decision, reason,
    rendered text and message state are shown; without, the basic verdict.
    """
    if report is not None:
        decision, reason = report.decision, str(report.reason)
    else:
        decision, reason = basic_decision(call, cfg)
    text = report.text if report is not None and report.message is not None else None
    return {
        "linkedid": call.linkedid,
        "caller": call.caller,
        "caller_name": call.caller_name,
        "did": call.did,
        "outcome": call.outcome.value,
        "ring_seconds": round(call.ring_seconds, 1),
        "voicemail_left": call.voicemail_left,
        "decision": decision,
        "reason": reason,
        "text": text,
        "message": _message_state(report),
        "withheld": call.withheld,
        "dialled": call.dialled,
    }


def _message_state(report: CallReport | None) -> str | None:
    """`sent` (would be sent), `cancelled`, `merged`, or None when nothing is sent."""
    if report is None or report.message is None:
        return None
    if report.message in ("waiting", "queued", "sending"):
        return "sent"  # a replay ends before the daemon would have sent it; it would go
    return report.message


def replay_bytes(
    chunks: Any, cfg: Config, *, tracker: CallTracker | None = None
) -> tuple[list[FinishedCall], CallTracker, AmiStream]:
    """Feed byte chunks through AmiStream and a tracker; return the finished calls."""
    finished, trk, stream, _ = replay_events(chunks, cfg, tracker=tracker)
    return finished, trk, stream


def replay_events(
    chunks: Any, cfg: Config, *, tracker: CallTracker | None = None
) -> tuple[list[FinishedCall], CallTracker, AmiStream, list[TrackerEvent]]:
    """Like `replay_bytes`, and every tracker event in order (answers, callbacks too)."""
    trk = tracker if tracker is not None else CallTracker(cfg, SystemClock())
    finished: list[FinishedCall] = []
    events: list[TrackerEvent] = []

    def on_event(msg: dict[str, str]) -> None:
        for ev in trk.feed(msg):
            events.append(ev)
            if isinstance(ev, FinishedCall):
                finished.append(ev)

    stream = AmiStream(on_event, wanted=WANTED_EVENTS, wanted_vars=WANTED_VARS)
    for chunk in chunks:
        stream.feed(chunk)
    return finished, trk, stream, events


def _read_chunks(path: Path, size: int) -> Any:
    with path.open("rb") as fh:
        while chunk := fh.read(size):
            yield chunk


def _load(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH  # the daemon's own file; with none, the defaults hold
    cfg = load_config(path)
    textback = cfg.textback
    calls = cfg.calls
    if args.region:
        region = args.region.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"--region {args.region!r} is not a known ISO country code")
        textback = textback.model_copy(update={"home_region": region})
    if args.ring_timeout:
        try:
            seconds = parse_duration(args.ring_timeout)
        except ValueError as exc:
            raise ValueError(f"--ring-timeout: {exc}") from exc
        calls = calls.model_copy(update={"ring_timeout": seconds})
    return cfg.model_copy(update={"textback": textback, "calls": calls})


def _show(value: object) -> str:
    """A value for the human line: caller data is untrusted, so control bytes are escaped."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "='):
        return text
    return json.dumps(text, ensure_ascii=False)


_HUMAN_KEYS = (
    "linkedid",
    "caller",
    "caller_name",
    "did",
    "outcome",
    "ring_seconds",
    "voicemail_left",
    "decision",
    "reason",
    "message",
)


def main(args: argparse.Namespace) -> int:
    """Entry point of `textback replay`."""
    if args.chunk <= 0:
        print("textback replay: --chunk must be a positive number of bytes", file=sys.stderr)
        return 2
    try:
        cfg = _load(args)
    except ConfigError as exc:
        print(f"textback replay: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"textback replay: {exc}", file=sys.stderr)
        return 1
    path = Path(args.trace)
    try:
        finished, tracker, stream, events = replay_events(_read_chunks(path, args.chunk), cfg)
    except OSError as exc:
        print(f"textback replay: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    reports = asyncio.run(dry_run(events, cfg))
    records = [call_record(call, cfg, reports.get(call.linkedid)) for call in finished]
    if args.json:
        for rec in records:
            print(json.dumps(rec, ensure_ascii=False))
    else:
        rows = [[f"{k}={_show(rec[k])}" for k in _HUMAN_KEYS] for rec in records]
        widths = [max((len(r[i]) for r in rows), default=0) for i in range(len(_HUMAN_KEYS))]
        for rec, row in zip(records, rows, strict=True):
            line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
            if rec["dialled"]:
                line += f"  dialled={_show(rec['dialled'])}"  # an office phone called out
            print(line.rstrip())
    outcomes = Counter(rec["outcome"] for rec in records)
    texts = sum(1 for rec in records if rec["message"] == "sent")
    fs = stream.stats
    summary = (
        f"{len(records)} calls, {texts} texts; "
        + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items()))
        + f"; frames={fs.frames} skipped={fs.skipped} malformed={fs.malformed}"
        + f" unknown_channel={tracker.stats.unknown_channel}"
        + f" missing_ids={tracker.stats.missing_ids}"
    )
    if tracker.stats.no_timestamp:
        summary += (
            f"; {tracker.stats.no_timestamp} event(s) had no Timestamp header, timed on "
            "reading (set timestampevents = yes in manager.conf)"
        )
    if tracker.active:
        summary += f"; {tracker.active} call(s) still in progress at the end of the trace"
    print(summary, file=sys.stderr)
    return 0
