"""`textback optout add|remove|list [NUMBER]`: the office's own do-not-text list.

Each entry keeps who/when/how (`source` "cli" here, the time from the clock). add and
remove write one row next to the running daemon (SQLite's own locking and a busy timeout
handle that); they never take the daemon lock. list opens the database read-only.
"""

from __future__ import annotations

import argparse
from zoneinfo import ZoneInfo

from daemon.cli.common import UserError, command_config, db_path, local_time, run_command
from daemon.clock import Clock, SystemClock
from daemon.decide.numbers import CallerKind, classify_caller
from daemon.store.store import Store


def main(args: argparse.Namespace, clock: Clock | None = None) -> int:
    """`textback optout add|remove|list [NUMBER] [--config FILE]` (`clock`: a test's;
    default the system's)."""
    return run_command(change_optouts, args, clock or SystemClock())


async def change_optouts(args: argparse.Namespace, clock: Clock) -> int:
    """List the opt-outs, or add or remove one number, stamped with `clock.now()`."""
    cfg = command_config(args)
    if args.action == "list":
        if args.number:
            raise UserError("optout list takes no NUMBER")
        path = db_path(cfg)
        tz = ZoneInfo(cfg.hours.timezone)
        store = await Store.open(path, readonly=True, tz=cfg.hours.timezone)
        try:
            rows = await store.optout_list()
        finally:
            await store.close()
        if not rows:
            print("no opted-out numbers")
        for number, added, source in rows:
            print(f"{number}  added {local_time(added, tz)}  ({source})")
        return 0
    if not args.number:
        raise UserError(f"optout {args.action} needs a NUMBER, e.g. +12025550123")
    judged = classify_caller(args.number, home_region=cfg.textback.home_region)
    if judged.kind is not CallerKind.VALID or judged.e164 is None:
        raise UserError(
            f"{args.number!r} is not a valid phone number "
            f"(home region {cfg.textback.home_region}; write it as +<country><number>)"
        )
    path = db_path(cfg)
    # No daemon lock: the running daemon owns it; a single-row write shares the file safely.
    store = await Store.open(path, lock=False, tz=cfg.hours.timezone)
    try:
        if args.action == "add":
            done = await store.optout_add(judged.e164, clock.now(), source="cli")
            print(f"{judged.e164} {'added to' if done else 'was already on'} the do-not-text list")
        else:
            done = await store.optout_remove(judged.e164, clock.now())
            print(f"{judged.e164} {'removed from' if done else 'was not on'} the do-not-text list")
    finally:
        await store.close()
    return 0
