"""`textback pause [--for DURATION]`: stop texting callers, at run time, until resumed.

Calls are still judged and recorded: paused, a missed call's decision is `suppress` with
reason `disabled` (detail "paused (cli) until ..."), as with `[textback] enabled = false`.
Texts already waiting when the pause starts still go out, and so do the answers to
STOP/START/HELP. The pause is a row in the database (daemon.store.settings): the running
daemon reads it in the transaction that decides each call, so the next call is paused,
and a restart keeps it. `--for 2h` ends it by itself. Like `optout add`, it writes next to
the running daemon without its lock.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from daemon.cli.common import UserError, command_config, db_path, local_time, run_command
from daemon.clock import Clock, SystemClock
from daemon.config import format_duration, parse_duration
from daemon.store.store import Store


def main(args: argparse.Namespace, clock: Clock | None = None) -> int:
    """`textback pause [--for DURATION] [--config FILE]`."""
    return run_command(pause, args, clock or SystemClock())


async def pause(args: argparse.Namespace, clock: Clock) -> int:
    """Write the pause, stamped with `clock.now()`; say until when."""
    cfg = command_config(args)
    length: float | None = None
    if args.for_:
        try:
            length = parse_duration(args.for_)
        except ValueError as exc:
            raise UserError(f"--for: {exc}") from exc
        if length <= 0:
            raise UserError("--for must be longer than 0s, e.g. --for 2h")
    now = clock.now()
    until = None if length is None else now + length
    store = await Store.open(db_path(cfg), lock=False, tz=cfg.hours.timezone)
    try:
        await store.pause(until, source="cli", now=now)
    finally:
        await store.close()
    if until is None:
        print("texting paused until `textback resume`; calls are recorded as disabled")
    else:
        tz = ZoneInfo(cfg.hours.timezone)
        assert length is not None
        print(
            f"texting paused for {format_duration(length)}, until {local_time(until, tz)} "
            f"({datetime.fromtimestamp(until, UTC):%H:%M} UTC); calls are recorded as disabled"
        )
    if not cfg.textback.enabled:
        print("note: [textback] enabled = false in the config: texting is off anyway")
    return 0
