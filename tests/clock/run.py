"""`make test-clock`: the tests that touch time, run again under a faked wall clock.

Every test must pass whenever it runs: at 23:59:55, when "today" ends five seconds into the
run, and across a DST change. This runs pytest under libfaketime (Debian's `faketime`)
once per combination below: the wall clock starts at that local instant in that zone (TZ is
set to the zone too) and keeps moving, in the tests and in every process they start.
pytest's start and collection take a few seconds, so nearly every test runs in the first
minutes after the change (when the stats tests once failed); the summary says when the
first test started and the last ended on the faked clock, and warns when all ran before.

Which tests: all of tests/ but the modules in SKIP (each says why). Those never read the
calendar, or run the real daemon with hours open all week and no caps (the *e2e*
modules: their outcomes cannot depend on the hour, and test_e2e alone takes 3 minutes).
Every module in SKIP passed under at least one of these combinations when it was added.

How the clock is faked: FAKETIME="@<epoch seconds>" with FAKETIME_FMT=%s (an instant, so
a repeated hour is never ambiguous), FAKETIME_DONT_RESET=1 (child processes go on from the
parent's time instead of starting over), FAKETIME_DONT_FAKE_MONOTONIC=1 (timeouts and the
event loop keep real time, or threads hang) and FAKETIME_FORCE_MONOTONIC_FIX=0 (with the
monotonic clock real, condition-variable waits need no rewriting; rewritten, thread
hand-overs went through libfaketime's lock and this selection ran twice as long).
tests/clock/shim/sitecustomize.py replaces `time.sleep`, which that libfaketime breaks
(see there).

    python -m tests.clock.run                     # every combination
    python -m tests.clock.run --only Chicago      # the combinations whose label has it
    python -m tests.clock.run --list
    python -m tests.clock.run --only "America/Chicago 2026-11-01" -- tests/test_reports.py -x
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.clock.plugin import SPAN

ROOT = Path(__file__).resolve().parents[2]
SHIM = Path(__file__).resolve().parent / "shim"
PLUGIN = "tests.clock.plugin"


@dataclass(frozen=True)
class Combo:
    """One faked start: a zone and a local wall-clock time in it (the first, for a time
    that a DST change repeats)."""

    zone: str
    local: str
    why: str

    @property
    def label(self) -> str:
        """`zone date time`, as --only matches it."""
        return f"{self.zone} {self.local}"

    def instant(self) -> float:
        """Epoch seconds of the local time (fold=0: the first of a repeated hour)."""
        return datetime.fromisoformat(self.local).replace(tzinfo=ZoneInfo(self.zone)).timestamp()

    def shown(self, ts: float) -> str:
        """`ts` in this zone, with its abbreviation (CDT, CST...)."""
        return datetime.fromtimestamp(ts, ZoneInfo(self.zone)).strftime("%Y-%m-%d %H:%M:%S %Z")


#: The office zones the tests use (America/Chicago, America/New_York, the default one,
#: America/Los_Angeles, Europe/Berlin) five seconds before midnight, UTC, and five seconds
#: before each DST change in both directions in a US and a European zone.
COMBOS = (
    Combo("America/New_York", "2026-06-30 23:59:55", "midnight, and a new month"),
    Combo("America/Chicago", "2026-12-31 23:59:55", "midnight, and a new year"),
    Combo("America/Los_Angeles", "2026-12-24 23:59:55", "midnight into a holiday"),
    Combo("Europe/Berlin", "2026-02-28 23:59:55", "midnight, and a new month"),
    Combo("UTC", "2026-11-22 23:59:55", "midnight in UTC (evening in the Americas)"),
    Combo("America/Chicago", "2026-03-08 01:59:55", "DST starts: 02:00 CST is 03:00 CDT"),
    Combo("America/Chicago", "2026-11-01 01:59:55", "DST ends: 02:00 CDT is 01:00 CST"),
    Combo("Europe/Berlin", "2026-03-29 01:59:55", "DST starts: 02:00 CET is 03:00 CEST"),
    Combo("Europe/Berlin", "2026-10-25 02:59:55", "DST ends: 03:00 CEST is 02:00 CET"),
)

#: Test modules left out (glob patterns), and why: none reads the calendar.
SKIP = {
    "tests/test_*e2e*.py": "the real daemon (test_e2e's or the bench's config: hours open "
    "all week, no caps); minutes each",
    "tests/test_crash_reports.py": "kill -9 of the real process; relative windows only",
    "tests/test_modem.py": "AT dialogues with the simulator",
    "tests/test_modem_inbound.py": "inbound texts through the simulator; fixed timestamps",
    "tests/test_modemcli.py": "the modem commands through the simulator",
    "tests/test_at.py": "AT parser",
    "tests/test_pdu.py": "PDU encoding; its timestamps are given",
    "tests/test_gsm7.py": "GSM-7 encoding",
    "tests/test_ami_frames.py": "AMI framing",
    "tests/test_ami_client.py": "AMI client, keepalive on a ManualClock",
    "tests/test_ami_malformed.py": "AMI framing",
    "tests/test_tracker_traces.py": "traces carry their own timestamps",
    "tests/test_outbox_property.py": "hypothesis on a ManualClock; slow",
    "tests/test_layout.py": "imports",
    "tests/test_systemd.py": "unit files",
    "tests/test_install.py": "install.sh/uninstall.sh into a directory tree; 30 s",
    "tests/test_finder.py": "finding a modem by IMEI through the simulator",
    "tests/test_recovery.py": "the modem's recovery ladder through the simulator",
    "tests/test_textmode.py": "text-mode encoding through the simulator",
    "tests/test_send_errors.py": "send failures classified",
    "tests/test_delivery_reports_gsm.py": "delivery reports through the simulator",
}

_RESULT = re.compile(r"^(FAILED|ERROR) (\S+)")
#: Seconds from each combination's start to its midnight or DST change.
LEAD = 5.0


def faked_env(combo: Combo) -> dict[str, str]:
    """The environment of one run under the faked clock."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env.update(
        {
            "TZ": combo.zone,
            "FAKETIME": f"@{int(combo.instant())}",
            "FAKETIME_FMT": "%s",
            "FAKETIME_DONT_RESET": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_FORCE_MONOTONIC_FIX": "0",
            "PYTHONPATH": f"{SHIM}{os.pathsep}{path}" if path else str(SHIM),
        }
    )
    return env


def command(faketime: str, combo: Combo, argv: list[str]) -> list[str]:
    """`faketime -f @<epoch> <argv>` (the wrapper finds the library and shares one clock
    between the processes it starts)."""
    return [faketime, "-f", f"@{int(combo.instant())}", *argv]


def check_faked(faketime: str, combo: Combo) -> str | None:
    """None when a Python process under this combination sees the faked time and zone;
    else what is wrong (so a broken libfaketime can never pass vacuously)."""
    probe = "import time; print(time.time(), time.strftime('%Z'))"
    out = subprocess.run(
        command(faketime, combo, [sys.executable, "-c", probe]),
        env=faked_env(combo),
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        seen, zone = out.stdout.split()
        skew = abs(float(seen) - combo.instant())
    except ValueError:
        return f"the probe printed {out.stdout!r} {out.stderr!r}"
    if skew > 60:
        return f"the clock is {skew:.0f} s away from the faked start: libfaketime is not loaded"
    if zone != datetime.fromtimestamp(combo.instant(), ZoneInfo(combo.zone)).strftime("%Z"):
        return f"the local zone is {zone}, not {combo.zone}"
    return None


@dataclass(frozen=True)
class Result:
    """How one combination went."""

    combo: Combo
    returncode: int
    failed: list[str]
    output: str
    seconds: float

    @property
    def ok(self) -> bool:
        """pytest passed."""
        return self.returncode == 0

    @property
    def span(self) -> tuple[float, float] | None:
        """The faked times the first test started and the last ended (tests/clock/plugin)."""
        for line in self.output.splitlines():
            if line.startswith(SPAN):
                first, last = line.split()[1:3]
                return float(first), float(last)
        return None

    def when(self) -> str:
        """When the tests ran on the faked clock, and whether they reached the change
        five seconds after the start (tests that end before it prove nothing)."""
        if self.span is None:
            return "no test ran"
        first, last = self.span
        c = self.combo
        ran = f"tests ran {c.shown(first)} to {c.shown(last)}"
        return ran if last > c.instant() + LEAD else ran + ": ALL BEFORE THE CHANGE, proves nothing"


def run_combo(faketime: str, combo: Combo, pytest_args: list[str]) -> Result:
    """Run pytest under one combination and keep its output."""
    t0 = time.monotonic()
    problem = check_faked(faketime, combo)
    if problem is not None:
        return Result(combo, 2, [problem], problem, time.monotonic() - t0)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", PLUGIN]
    argv += pytest_args
    out = subprocess.run(
        command(faketime, combo, argv),
        cwd=ROOT,
        env=faked_env(combo),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    failed = [m.group(2) for line in out.stdout.splitlines() if (m := _RESULT.match(line))]
    return Result(combo, out.returncode, failed, out.stdout, time.monotonic() - t0)


def report(result: Result) -> None:
    """One line for a combination that passed; its whole pytest output when it failed."""
    c = result.combo
    head = f"TZ={c.zone} from {c.shown(c.instant())} ({c.why})"
    if result.ok:
        last = result.output.strip().splitlines()[-1:] or [""]
        print(f"test-clock: ok      {head}: {last[0].strip('= ')}; {result.when()}", flush=True)
        return
    print(f"\n=== test-clock: FAILED {head}\n{result.output}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run every (or the --only) combination; print which failed; exit 1 if any did."""
    parser = argparse.ArgumentParser(
        description="Run the tests under libfaketime at the risky instants.",
        epilog="Arguments after -- go to pytest instead of the default selection.",
    )
    parser.add_argument("--only", action="append", help="combinations whose label has this")
    parser.add_argument("--list", action="store_true", help="print the combinations and exit")
    parser.add_argument("--jobs", type=int, default=2, help="combinations run at once (2)")
    parser.add_argument("pytest_args", nargs="*", help="pytest arguments (after --)")
    args = parser.parse_args(argv)
    combos = [c for c in COMBOS if not args.only or any(o in c.label for o in args.only)]
    if args.list or not combos:
        for c in COMBOS:
            print(f"{c.label}  ({c.why})")
        return 0 if combos else 2
    faketime = shutil.which("faketime")
    if faketime is None:
        print("test-clock: no `faketime` command: apt-get install faketime", file=sys.stderr)
        return 2
    pytest_args = args.pytest_args or ["tests", *(f"--ignore-glob={p}" for p in sorted(SKIP))]
    what = " ".join(args.pytest_args) or f"tests/ but {len(SKIP)} modules (SKIP)"
    print(f"test-clock: {len(combos)} combinations, {args.jobs} at a time: {what}", flush=True)
    started = time.monotonic()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(run_combo, faketime, c, pytest_args) for c in combos]
        for fut in as_completed(futures):
            report(fut.result())
    results = [f.result() for f in futures]
    print(f"\n=== test-clock: {len(combos)} combinations in {time.monotonic() - started:.0f} s")
    for r in results:
        verdict = "ok" if r.ok else f"FAILED (pytest exit {r.returncode})"
        print(f"{verdict:<22} TZ={r.combo.zone:<20} from {r.combo.local}  {r.seconds:4.0f} s")
        print(f"    {r.when()}")
        for test in r.failed:
            print(f"    {test}")
    bad = [r.combo for r in results if not r.ok]
    for c in bad:
        print(f'rerun: .venv/bin/python -m tests.clock.run --only "{c.label}"')
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
