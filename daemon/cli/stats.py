"""`textback stats [--json]`: the operator's monitor.

Calls by outcome, texts by state, suppressions by reason, replies and opt-outs, for
today, 7 and 30 days (calendar days in the office's time zone, counted back from the
clock's "now"). The database is opened read-only with no lock, so it works while the
daemon runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence

from daemon.cli.common import command_config, db_path, run_command, table
from daemon.clock import Clock, SystemClock
from daemon.store.store import PeriodStats, Store

#: The periods `textback stats` shows: label, calendar days including today.
PERIODS = (("today", 1), ("7 days", 7), ("30 days", 30))


def main(args: argparse.Namespace, clock: Clock | None = None) -> int:
    """`textback stats [--config FILE] [--json]` (`clock`: a test's; default the system's)."""
    return run_command(show_stats, args, clock or SystemClock())


async def show_stats(args: argparse.Namespace, clock: Clock) -> int:
    """Print the counters of each period ending at `clock.now()`."""
    cfg = command_config(args)
    path = db_path(cfg)
    store = await Store.open(path, readonly=True, tz=cfg.hours.timezone)
    try:
        now = clock.now()
        periods = [(label, await store.stats(now, days)) for label, days in PERIODS]
        optouts = await store.optout_count()
    finally:
        await store.close()
    if args.json:
        doc = {
            "database": str(path),
            "timezone": cfg.hours.timezone,
            "periods": {
                label: {
                    "calls": p.calls,
                    "texts": p.texts,
                    "suppressed": p.suppressed,
                    "replies": p.replies,
                    "replies_by_kind": p.replies_by_kind,
                    "optouts_added": p.optouts_added,
                    "counters": p.counters,
                    **({"texts_by_modem": p.texts_by_modem} if cfg.modems else {}),
                }
                for label, p in periods
            },
            "optouts_total": optouts,
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(f"database {path}, days in {cfg.hours.timezone}")
    print(stats_table(periods, optouts, modems=[m.name for m in cfg.modems]))
    return 0


def stats_table(
    periods: list[tuple[str, PeriodStats]], optouts: int, *, modems: Sequence[str] = ()
) -> str:
    """The counters as one aligned table, a column per period; with several `modems`,
    the texts each took."""
    rows: list[list[str]] = [["", *(label for label, _ in periods)]]

    def section(title: str, pick: Callable[[PeriodStats], Mapping[str, int]]) -> None:
        keys: set[str] = set()
        for _, p in periods:
            keys |= set(pick(p))
        rows.append([title, *("" for _ in periods)])
        if not keys:
            rows.append(["  (none)", *("0" for _ in periods)])
        for k in sorted(keys):
            rows.append([f"  {k}", *(str(pick(p).get(k, 0)) for _, p in periods)])

    section("calls", lambda p: p.calls)
    section("texts", lambda p: p.texts)
    if modems:
        rows.append(["texts by modem", *("" for _ in periods)])
        for name in modems:
            rows.append([f"  {name}", *(str(p.texts_by_modem.get(name, 0)) for _, p in periods)])
    section("not texted, by reason", lambda p: p.suppressed)
    rows.append(["replies", *(str(p.replies) for _, p in periods)])
    kinds = sorted({k for _, p in periods for k in p.replies_by_kind})
    for k in kinds:
        rows.append([f"  {k}", *(str(p.replies_by_kind.get(k, 0)) for _, p in periods)])
    rows.append(["opt-outs added", *(str(p.optouts_added) for _, p in periods)])
    return table(rows, right=set(range(1, len(periods) + 1))) + f"\nopt-outs now: {optouts}"
