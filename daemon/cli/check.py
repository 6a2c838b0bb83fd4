"""`textback check [--config FILE]`: validate the config, print the settings in effect,
the rendered texts and every problem with its key; exit 1 on any error.

The checks themselves live in daemon.check, which `textback run` also uses to refuse a
broken config on SIGHUP.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from daemon.check import check_config, contacts_problems, has_errors, report
from daemon.config import DEFAULT_CONFIG_PATH


def main(args: argparse.Namespace) -> int:
    """`textback check [--config FILE]`: exit 1 on any error, 0 otherwise."""
    path = Path(args.config) if getattr(args, "config", None) else DEFAULT_CONFIG_PATH
    cfg, problems = check_config(path)
    if cfg is not None:
        problems += contacts_problems(cfg)  # reads the contacts file (the daemon's SIGHUP doesn't)
    print("\n".join(report(path, cfg, problems)))
    return 1 if cfg is None or has_errors(problems) else 0
