"""`textback replay TRACE`: a recorded AMI byte stream through the live decoding code, the
tracker and the real policy and wait step (daemon.app.dryrun), one verdict per finished
call. Nothing is sent.

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
from daemon.app.pipeline import CallReport
from daemon.clock import SystemClock
from daemon.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    load_config,
    parse_duration,
)
from daemon.decide.policy import PolicyFacts, decide
from daemon.intake.stream import AmiStream
from daemon.intake.tracker import WANTED_EVENTS, WANTED_VARS, CallTracker
from daemon.model import OPEN_STATES, FinishedCall, TrackerEvent


def call_record(
    call: FinishedCall, cfg: Config, report: CallReport | None = None
) -> dict[str, Any]:
    """The replay's view of one finished call, with its verdict.

    With a `report` from the dry run (full policy and wait step) its decision, reason,
    rendered text and message state are shown. Without one, the same policy judges the
    call alone (no history, so no cooldown or caps) at the call's own end time, never the
    wall clock, and there is no text or message.
    """
    if report is not None:
        decision, reason = report.decision, str(report.reason)
    else:
        verdict = decide(call, PolicyFacts(), cfg, call.ended_at)
        decision, reason = verdict.action, str(verdict.reason)
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
    if report.message in OPEN_STATES:
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
