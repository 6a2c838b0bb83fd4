"""`textback stats`, `textback history` and `textback optout`: the operator's view.

stats and history open the database read-only and take no lock, so they work while the
daemon runs. optout writes one row next to the running daemon (SQLite's own locking and a
busy timeout handle that); it never takes the daemon lock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from daemon.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config, parse_duration
from daemon.decide.numbers import CallerKind, classify_caller
from daemon.store.store import HistoryRow, PeriodStats, Store, StoreError

#: The periods `textback stats` shows: label, calendar days including today.
PERIODS = (("today", 1), ("7 days", 7), ("30 days", 30))
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?$")


class UserError(Exception):
    """A problem explained to the user in one line (exit 1)."""


def _config(args: argparse.Namespace) -> Config:
    path = getattr(args, "config", None)
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    try:
        return load_config(path)
    except ConfigError as exc:
        raise UserError(str(exc).splitlines()[0]) from exc


def _db_path(cfg: Config) -> Path:
    p = Path(cfg.database.path)
    if not p.exists():
        raise UserError(
            f"no database at {p} (has the daemon run yet? see [database] path in the config)"
        )
    return p


def _run(main: Any, args: argparse.Namespace) -> int:
    try:
        rc: int = asyncio.run(main(args))
    except (UserError, StoreError) as exc:
        print(f"textback: {exc}", file=sys.stderr)
        return 1
    return rc


def _local(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[list[str]], right: set[int] | None = None) -> str:
    """Columns padded to their widest cell; `right` columns are right-aligned."""
    right = right or set()
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


# -- stats ---------------------------------------------------------------------------------------


def stats_main(args: argparse.Namespace) -> int:
    """`textback stats [--json]`: calls, texts, suppressions, replies, opt-outs."""
    return _run(_stats, args)


async def _stats(args: argparse.Namespace) -> int:
    cfg = _config(args)
    path = _db_path(cfg)
    store = await Store.open(path, readonly=True, tz=cfg.hours.timezone)
    try:
        now = time.time()
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
                    "optouts_added": p.optouts_added,
                    "counters": p.counters,
                }
                for label, p in periods
            },
            "optouts_total": optouts,
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(f"database {path}, days in {cfg.hours.timezone}")
    print(_stats_table(periods, optouts))
    return 0


def _stats_table(periods: list[tuple[str, PeriodStats]], optouts: int) -> str:
    rows: list[list[str]] = [["", *(label for label, _ in periods)]]

    def section(title: str, pick: Any) -> None:
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
    section("not texted, by reason", lambda p: p.suppressed)
    rows.append(["replies", *(str(p.replies) for _, p in periods)])
    rows.append(["opt-outs added", *(str(p.optouts_added) for _, p in periods)])
    return _table(rows, right=set(range(1, len(periods) + 1))) + f"\nopt-outs now: {optouts}"


# -- history -------------------------------------------------------------------------------------


def history_main(args: argparse.Namespace) -> int:
    """`textback history [--caller N] [--since T] [--limit N] [--json]`."""
    return _run(_history, args)


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


def _caller_spellings(raw: str, cfg: Config) -> list[str]:
    judged = classify_caller(raw, home_region=cfg.textback.home_region)
    names = [raw.strip()]
    if judged.kind is CallerKind.VALID and judged.e164:
        names.append(judged.e164)
    return names


def _why(r: HistoryRow) -> str:
    if r.decision is None:
        return "no decision recorded"
    if r.decision == "suppress":
        return r.detail or r.reason or ""
    if r.message == "merged":
        return f"joined message {r.message_id}"
    if r.message in ("cancelled", "failed", "expired", "uncertain"):
        return r.message_reason or r.message
    return ""


async def _history(args: argparse.Namespace) -> int:
    cfg = _config(args)
    path = _db_path(cfg)
    tz = ZoneInfo(cfg.hours.timezone)
    now = time.time()
    since = parse_since(args.since, now, tz) if args.since else None
    callers = _caller_spellings(args.caller, cfg) if args.caller else None
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
    table = [
        ["time", "caller", "outcome", "ring", "decision", "reason", "message", "why", "linkedid"]
    ]
    for r in rows:
        table.append(
            [
                _local(r.ended_at, tz),
                r.caller or "-",
                r.outcome,
                f"{r.ring_seconds:.0f}s",
                r.decision or "-",
                r.reason or "-",
                r.message or "-",
                _why(r) or "-",
                r.linkedid,
            ]
        )
    print(_table(table, right={3}))
    return 0


# -- optout --------------------------------------------------------------------------------------


def optout_main(args: argparse.Namespace) -> int:
    """`textback optout add|remove|list [NUMBER]`: the office's do-not-text list."""
    return _run(_optout, args)


async def _optout(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.action == "list":
        if args.number:
            raise UserError("optout list takes no NUMBER")
        path = _db_path(cfg)
        tz = ZoneInfo(cfg.hours.timezone)
        store = await Store.open(path, readonly=True, tz=cfg.hours.timezone)
        try:
            rows = await store.optout_list()
        finally:
            await store.close()
        if not rows:
            print("no opted-out numbers")
        for number, added, source in rows:
            print(f"{number}  added {_local(added, tz)}  ({source})")
        return 0
    if not args.number:
        raise UserError(f"optout {args.action} needs a NUMBER, e.g. +12025550123")
    judged = classify_caller(args.number, home_region=cfg.textback.home_region)
    if judged.kind is not CallerKind.VALID or judged.e164 is None:
        raise UserError(
            f"{args.number!r} is not a valid phone number "
            f"(home region {cfg.textback.home_region}; write it as +<country><number>)"
        )
    path = _db_path(cfg)
    # No daemon lock: the running daemon owns it; a single-row write shares the file safely.
    store = await Store.open(path, lock=False, tz=cfg.hours.timezone)
    try:
        if args.action == "add":
            done = await store.optout_add(judged.e164, time.time(), source="cli")
            print(f"{judged.e164} {'added to' if done else 'was already on'} the do-not-text list")
        else:
            done = await store.optout_remove(judged.e164, time.time())
            print(f"{judged.e164} {'removed from' if done else 'was not on'} the do-not-text list")
    finally:
        await store.close()
    return 0
