"""`textback check [--config FILE] [--live]`: validate the config, print the settings in
effect, the rendered texts and every problem with its key; exit 1 on any error.

The checks themselves live in daemon.check, which `textback run` also uses to refuse a
broken config on SIGHUP. `--live` adds daemon.livecheck: AMI, the modems and the host,
one line per finding with its fix.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from daemon.check import Severity, check_config, contacts_problems, has_errors, report
from daemon.config import DEFAULT_CONFIG_PATH
from daemon.livecheck import Level, live_errors, run_live, secret_file_problems


def main(args: argparse.Namespace) -> int:
    """`textback check [--config FILE] [--live]`: exit 1 on any error, 0 otherwise."""
    path = Path(args.config) if getattr(args, "config", None) else DEFAULT_CONFIG_PATH
    cfg, problems = check_config(path)
    if cfg is not None:
        problems += contacts_problems(cfg)  # reads the contacts file (the daemon's SIGHUP doesn't)
        if not getattr(args, "live", False):  # --live says it among its own findings
            problems += secret_file_problems(path, cfg)
    lines = report(path, cfg, problems)
    bad = cfg is None or has_errors(problems)
    if cfg is None or not getattr(args, "live", False):
        print("\n".join(lines))
        return 1 if bad else 0
    verdict = lines.pop()  # the config's verdict; the live one follows the findings
    print("\n".join(lines))
    findings = asyncio.run(run_live(cfg, path if path.exists() else None))
    print(f"Config: {verdict}")
    print("")
    print("Live checks (AMI, modems, host):")
    for f in findings:
        print(f.line())
    errors = live_errors(findings) + sum(p.severity is Severity.ERROR for p in problems)
    warnings = sum(f.level is Level.WARNING for f in findings) + sum(
        p.severity is Severity.WARNING for p in problems
    )
    print("")
    if errors:
        print(f"NOT OK: {errors} error(s), {warnings} warning(s): fix the ERROR lines above")
    elif warnings:
        print(f"OK with {warnings} warning(s): ready to start (systemctl enable --now textback)")
    else:
        print("OK: ready to start (systemctl enable --now textback)")
    return 1 if errors else 0
