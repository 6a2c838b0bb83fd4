"""`textback run [--config FILE]`: the daemon; systemd runs this.

A config with errors is refused before anything starts: each error on one stderr line,
then a pointer to `textback check`, exit 1. Warnings reach the journal, then the service
(daemon.app.service) runs until SIGTERM and its exit code is the process's.
"""

from __future__ import annotations

import asyncio
import sys
from argparse import Namespace
from pathlib import Path

from daemon.app.service import Service
from daemon.check import Severity, check_config, log_warnings
from daemon.config import DEFAULT_CONFIG_PATH
from daemon.logsetup import setup_logging


def main(args: Namespace) -> int:
    """`textback run [--config FILE]`."""
    path = Path(args.config) if args.config else DEFAULT_CONFIG_PATH
    cfg, problems = check_config(path)
    errors = [p for p in problems if p.severity is Severity.ERROR]
    if cfg is None or errors:
        for p in errors:
            print(f"textback: {path}: {p.key}: {p.message}", file=sys.stderr)
        print("textback: not started; `textback check` explains each problem", file=sys.stderr)
        return 1
    setup_logging(cfg.log.level)
    log_warnings(problems)
    return asyncio.run(Service(cfg, path).run())
