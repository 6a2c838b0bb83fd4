"""`textback replies`: the texts people sent back, newest first, each with the missed call
and the text it answers, and what textback did about it (an opt-out, its confirmation).

The database is opened read-only with no lock, so it works while the daemon runs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from zoneinfo import ZoneInfo

from daemon.cli.common import UserError, command_config, db_path, local_time, run_command, table
from daemon.cli.history import caller_spellings, parse_since
from daemon.clock import Clock, SystemClock
from daemon.logsetup import kv
from daemon.store.store import ReplyRow, Store


def main(args: argparse.Namespace, clock: Clock | None = None) -> int:
    """`textback replies [--config FILE] [--caller N] [--since T] [--limit N] [--json]`."""
    return run_command(show_replies, args, clock or SystemClock())


def _answers(r: ReplyRow, tz: ZoneInfo) -> str:
    if r.call_id is None:
        return "unlinked" if r.sender_kind == "number" else f"from a {r.sender_kind}"
    when = "-" if r.call_ended_at is None else local_time(r.call_ended_at, tz)
    vm = ", voicemail left" if r.voicemail_left else ""
    return f"{r.call_outcome} call at {when} to {r.call_did or '-'}{vm}"


def _shown(text: str) -> str:
    # Caller-controlled text: control characters and quotes must not forge the table.
    return kv(text=text)[len("text=") :]


async def show_replies(args: argparse.Namespace, clock: Clock) -> int:
    """Print the recent replies (table or JSON lines)."""
    cfg = command_config(args)
    path = db_path(cfg)
    tz = ZoneInfo(cfg.hours.timezone)
    since = parse_since(args.since, clock.now(), tz) if args.since else None
    callers = caller_spellings(args.caller, cfg) if args.caller else None
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    store = await Store.open(path, readonly=True, tz=cfg.hours.timezone)
    try:
        rows = await store.replies(caller=callers, since=since, limit=args.limit or 50)
    finally:
        await store.close()
    if args.json:
        for r in rows:
            print(json.dumps(asdict(r), sort_keys=True, ensure_ascii=False))
        return 0
    if not rows:
        print("no replies recorded" + (" from that number" if callers else ""))
        return 0
    cells = [["time", "from", "kind", "answer", "answers", "text"]]
    for r in rows:
        answer = "-" if r.answer_id is None else f"{r.answer_state or '?'} ({r.answer_id})"
        kind = r.kind + (" (incomplete)" if r.incomplete else "")
        cells.append(
            [
                local_time(r.received_at, tz),
                _shown(r.sender),
                kind,
                answer,
                _answers(r, tz),
                _shown(r.text),
            ]
        )
    print(table(cells))
    return 0
