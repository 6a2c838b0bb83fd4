"""`textback history [--caller N] [--since T] [--limit N] [--json]`: why did (or didn't)
this caller get a text?

The recent calls, newest first, each with its decision, reason and message state. The
caller may be typed as the operator heard it ("(206) 555-0102"); `--since 2h` counts back
from the clock's "now". The database is opened read-only with no lock, so it works while
the daemon runs.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from datetime import datetime
from zoneinfo import ZoneInfo

from daemon.cli.common import UserError, command_config, db_path, local_time, run_command, table
from daemon.clock import Clock, SystemClock
from daemon.config import Config, parse_duration
from daemon.decide.numbers import CallerKind, classify_caller
from daemon.model import MessageState
from daemon.store.store import HistoryRow, Store

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?$")


def main(args: argparse.Namespace, clock: Clock | None = None) -> int:
    """`textback history [--config FILE] [--caller N] [--since T] [--limit N] [--json]`
    (`clock`: a test's; default the system's)."""
    return run_command(show_history, args, clock or SystemClock())


def parse_since(text: str, now: float, tz: ZoneInfo) -> float:
    """'2h', '7d' (that long ago) or '2026-11-22' / '2026-11-22 14:00' (local time)."""
    t = text.strip()
    if _DATE_RE.match(t):
        try:
            return datetime.fromisoformat(t).replace(tzinfo=tz).timestamp()
        except ValueError as exc:
            raise UserError(f"--since {text!r}: {exc}") from exc
    try:
        return now - parse_duration(t)
    except ValueError as exc:
        raise UserError(
            f"--since {text!r}: use a duration such as 2h or 7d, or a date such as 2026-11-22"
        ) from exc


def caller_spellings(raw: str, cfg: Config) -> list[str]:
    """The caller as typed and, when it is a valid number, its E.164 form."""
    judged = classify_caller(raw, home_region=cfg.textback.home_region)
    names = [raw.strip()]
    if judged.kind is CallerKind.VALID and judged.e164:
        names.append(judged.e164)
    return names


#: Texts that ended without going out (or maybe did): history says why.
_WHY_STATES = frozenset(
    {MessageState.CANCELLED, MessageState.FAILED, MessageState.EXPIRED, MessageState.UNCERTAIN}
)


def _why(r: HistoryRow) -> str:
    if r.decision is None:
        return "no decision recorded"
    if r.decision == "suppress":
        return r.detail or r.reason or ""
    if r.message == "merged":
        return f"joined message {r.message_id}"
    if r.resolved_by == "delivery_report":
        # was uncertain (its send cut off by a crash): the network's report settled it
        was = f"was uncertain: {r.message_reason}" if r.message_reason else "was uncertain"
        if r.message == MessageState.DELIVERED:
            return f"resolved by delivery report ({was})"
        return f"delivery report: not delivered ({was})"
    if r.message in _WHY_STATES:
        return r.message_reason or r.message
    return ""


async def show_history(args: argparse.Namespace, clock: Clock) -> int:
    """Print the recent calls (table or JSON lines); `--since` durations end at `clock.now()`."""
    cfg = command_config(args)
    path = db_path(cfg)
    tz = ZoneInfo(cfg.hours.timezone)
    now = clock.now()
    since = parse_since(args.since, now, tz) if args.since else None
    callers = caller_spellings(args.caller, cfg) if args.caller else None
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    store = await Store.open(path, readonly=True, tz=cfg.hours.timezone)
    try:
        rows = await store.history(caller=callers, since=since, limit=args.limit or 50)
    finally:
        await store.close()
    if args.json:
        for r in rows:
            doc = asdict(r)
            doc["why"] = _why(r)
            print(json.dumps(doc, sort_keys=True))
        return 0
    if not rows:
        print("no calls recorded" + (" for that caller" if callers else ""))
        return 0
    # with [[modems]], which modem (SIM) took each text
    pool = bool(cfg.modems)
    head = ["time", "caller", "outcome", "ring", "decision", "reason", "message", "why"]
    cells = [[*head, *(["modem"] if pool else []), "linkedid"]]
    for r in rows:
        cells.append(
            [
                local_time(r.ended_at, tz),
                r.caller or "-",
                r.outcome,
                f"{r.ring_seconds:.0f}s",
                r.decision or "-",
                r.reason or "-",
                r.message or "-",
                _why(r) or "-",
                *([r.modem or "-"] if pool else []),
                r.linkedid,
            ]
        )
    print(table(cells, right={3}))
    return 0
