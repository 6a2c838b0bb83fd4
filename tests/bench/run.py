"""`make bench`: run every benchmark and write BENCHMARKS.md.

Each bench module exposes `run(quick: bool) -> dict` whose "markdown" entry is its section.
Ratios are against baselines measured in the same run: machines here are noisy.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

MODULES = [
    "tests.bench.bench_ami",
    "tests.bench.bench_at",
    "tests.bench.bench_service",
    "tests.bench.bench_replies",
    "tests.bench.bench_crash",
    "tests.bench.bench_observe",
    "tests.bench.bench_mqtt",
    "tests.bench.bench_pool",
    "tests.bench.bench_sites",
]
OUT = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and write BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    parser.add_argument("--only", action="append", help="run only modules containing this")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the report")
    args = parser.parse_args(argv)
    sections = []
    for name in MODULES:
        if args.only and not any(o in name for o in args.only):
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            print(f"{name}: not present, skipped", file=sys.stderr)
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        result = module.run(quick=args.quick)
        took = time.perf_counter() - started
        sections.append(str(result.get("markdown", "")).rstrip() + f"\n\n(run took {took:.0f} s)\n")
    cmd = "make bench" if not args.quick else "python -m tests.bench.run --quick"
    head = (
        "# Benchmarks\n\n"
        f"Written by `{cmd}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"Python {platform.python_version()}, {platform.machine()}, "
        f"{_cpus()} CPUs. Numbers are from one run on a shared, noisy machine; the ratios "
        "against baselines measured in the same run are what to compare.\n"
    )
    args.out.write_text(head + "\n" + "\n".join(sections))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
