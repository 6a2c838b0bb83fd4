"""What the commands share: one-line user errors, and for the reports (stats, history,
optout) the config, the database path, local times and aligned tables.

Nothing here loads serial or AMI code, so every command may import it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from daemon.clock import Clock
from daemon.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from daemon.errors import TextbackError
from daemon.store.store import StoreError

#: An async command body: the parsed arguments and the clock it reads "now" from.
Worker = Callable[[argparse.Namespace, Clock], Coroutine[Any, Any, int]]


class UserError(TextbackError):
    """A problem explained to the user in one line (exit 1)."""


def command_config(args: argparse.Namespace) -> Config:
    """--config FILE, else the default file when it exists, else the defaults.

    A config that does not load is a UserError naming its first problem.
    """
    path = getattr(args, "config", None)
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    try:
        return load_config(path)
    except ConfigError as exc:
        raise UserError(str(exc).splitlines()[0]) from exc


def db_path(cfg: Config) -> Path:
    """The database file; a UserError when the daemon has not created it yet."""
    p = Path(cfg.database.path)
    if not p.exists():
        raise UserError(
            f"no database at {p} (has the daemon run yet? see [database] path in the config)"
        )
    return p


def fail(message: str) -> int:
    """A user error: one line on stderr; the exit code 1."""
    print(f"textback: {message}", file=sys.stderr)
    return 1


def run_command(worker: Worker, args: argparse.Namespace, clock: Clock) -> int:
    """Run an async command body; a UserError or StoreError is one line on stderr, exit 1."""
    try:
        rc: int = asyncio.run(worker(args, clock))
    except (UserError, StoreError) as exc:
        return fail(str(exc))
    return rc


def local_time(ts: float, tz: ZoneInfo) -> str:
    """Epoch seconds as the office's local time, to the second."""
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S")


def table(rows: list[list[str]], right: set[int] | None = None) -> str:
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
