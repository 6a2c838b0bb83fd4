"""AMI intake benchmark: events/s through intake + tracker over loopback TCP, vs baselines.

Run: `.venv/bin/python -m tests.bench.bench_ami [--quick]` (or `make bench` for all).

The stream is the shared traces (tests/data/ami) repeated with fresh Uniqueids/Linkedids
and shifted timestamps. A separate process serves it (the replay server's handshake:
Login, CoreShowChannels, Ping) as fast as the socket takes it, so the server's CPU is not
the measuring process's. The measuring process runs, interleaved and repeated:

- `baseline`: a minimal asyncio Protocol that splits frames and builds a dict per event;
- `panoramisk`: stock panoramisk 1.4, one callback registered for every event;
- `intake`: our AmiClient (panoramisk session + AmiProtocol) feeding the CallTracker.

Then: a paced run at 2,000 events/s (one event per write) measuring the time from the
server writing a call's last Hangup to the tracker returning its finished call; and the
RSS of the measuring process after 100k and after 1M events through intake + tracker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.intake.replayserver import ReplayServer, _Conn, trace_body

AMI_DIR = Path(__file__).resolve().parents[1] / "data" / "ami"
END_ID = "bench.end"
END = (
    f"Event: Hangup\r\nPrivilege: call,all\r\nChannel: PJSIP/bench-end\r\n"
    f"Uniqueid: {END_ID}\r\nLinkedid: {END_ID}\r\nCause: 16\r\n\r\n"
).encode()
SECRET = "bench"
_TOKEN = re.compile(rb"\r\n(Uniqueid|Linkedid|DestUniqueid|DestLinkedid|Timestamp): ([0-9.]+)")


# -- the stream: shared traces repeated with fresh ids ---------------------------------


@dataclass
class _Template:
    literals: list[bytes]
    tokens: list[tuple[bool, float | str]]  # (is_timestamp, delta or seq)
    events: int
    span: float


def _templates() -> list[_Template]:
    out = []
    for path in sorted(AMI_DIR.glob("*.ami")):
        body = trace_body(path.read_bytes())
        stamps = [float(m) for m in re.findall(rb"\r\nTimestamp: ([0-9.]+)", body)]
        t0 = min(stamps) if stamps else 0.0
        literals: list[bytes] = []
        tokens: list[tuple[bool, float | str]] = []
        last = 0
        for m in _TOKEN.finditer(body):
            literals.append(body[last : m.start(2)])
            if m.group(1) == b"Timestamp":
                tokens.append((True, float(m.group(2)) - t0))
            else:
                tokens.append((False, m.group(2).decode().partition(".")[2]))
            last = m.end(2)
        literals.append(body[last:])
        span = (max(stamps) - t0) if stamps else 0.0
        out.append(_Template(literals, tokens, body.count(b"\r\n\r\nEvent: ") + 1, span))
    return out


def _render(templates: list[_Template], rep: int, start: float) -> tuple[bytes, float]:
    """One pass over every trace with ids no other pass uses; returns (bytes, next start)."""
    parts: list[bytes] = []
    cursor = start
    for ti, tpl in enumerate(templates):
        epoch = 2_000_000_000 + rep * len(templates) + ti
        lit = tpl.literals
        for i, (is_ts, val) in enumerate(tpl.tokens):
            parts.append(lit[i])
            if is_ts:
                parts.append(f"{cursor + val:.6f}".encode())  # type: ignore[operator]
            else:
                parts.append(f"{epoch}.{val}".encode())
        parts.append(lit[-1])
        cursor += tpl.span + 5.0
    return b"".join(parts), cursor


def events_per_pass(templates: list[_Template]) -> int:
    """Events in one pass over every trace."""
    return sum(t.events for t in templates)


# -- the server process ---------------------------------------------------------------


class _BenchServer(ReplayServer):
    """The replay server's handshake, streaming `reps` freshly rendered passes, then END."""

    def __init__(self, reps: int, rate: float | None, limit: int | None = None) -> None:
        super().__init__(b"", secret=SECRET, fully_booted=False)
        self.reps = reps
        self.rate = rate
        self.limit = limit
        self.paced = 0
        self.templates = _templates()
        self.hangup_writes: dict[str, float] = {}
        # rendered before the client connects, so the server is not what is measured
        self.rendered: list[bytes] = []
        if rate is None:
            start = 1_800_000_000.0
            for rep in range(reps):
                data, start = _render(self.templates, rep, start)
                self.rendered.append(data)

    async def _stream(self, conn: _Conn) -> None:  # type: ignore[override]
        start = 1_800_000_000.0
        writer = conn.writer
        try:
            for rep in range(self.reps):
                if self.rendered:
                    data = self.rendered[rep]
                else:
                    data, start = _render(self.templates, rep, start)
                if self.rate is None:
                    view = memoryview(data)
                    for i in range(0, len(data), 262144):
                        conn.write(view[i : i + 262144])  # type: ignore[arg-type]
                        conn.at_boundary = data.endswith(b"\r\n\r\n", 0, i + 262144)
                        if conn.at_boundary:
                            conn.flush()
                        await writer.drain()
                else:
                    await self._paced(conn, data)
            conn.write(END)
            conn.at_boundary = True
            conn.flush()
            await writer.drain()
        except (ConnectionError, OSError):
            pass

    async def _paced(self, conn: _Conn, data: bytes) -> None:
        assert self.rate is not None
        frames = [f + b"\r\n\r\n" for f in data.split(b"\r\n\r\n") if f]
        t0 = time.monotonic()
        for i, frame in enumerate(frames):
            if self.limit is not None and self.paced >= self.limit:
                return
            self.paced += 1
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if frame.startswith(b"Event: Hangup\r\n"):
                uid = re.search(rb"\r\nUniqueid: ([^\r]+)", frame)
                if uid:
                    self.hangup_writes[uid.group(1).decode()] = time.monotonic()
            conn.at_boundary = True
            conn.write(frame)
            conn.at_boundary = True
            conn.flush()
            await conn.writer.drain()


def _serve(reps: int, rate: float | None, limit: int | None, conn: Any) -> None:
    async def main() -> None:
        server = _BenchServer(reps, rate, limit)
        port = await server.start()
        conn.send(port)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # "stop"
        conn.send(server.hangup_writes)
        await server.close()

    asyncio.run(main())


class ServerProcess:
    """The stream server in its own process."""

    def __init__(self, reps: int, rate: float | None = None, limit: int | None = None) -> None:
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(reps, rate, limit, child), daemon=True)
        self._proc.start()
        self.port: int = self._conn.recv()

    def stop(self) -> dict[str, float]:
        self._conn.send("stop")
        writes: dict[str, float] = self._conn.recv()
        self._proc.join(10)
        return writes


# -- the three clients -----------------------------------------------------------------


class _Minimal(asyncio.Protocol):
    """Baseline 1: split frames, a plain dict per event, nothing else."""

    def __init__(self, sink: Callable[[dict[str, str]], None]) -> None:
        self.buf = b""
        self.sink = sink
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(f"Action: Login\r\nUsername: textback\r\nSecret: {SECRET}\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        frames = (self.buf + data).split(b"\r\n\r\n")
        self.buf = frames.pop()
        sink = self.sink
        for frame in frames:
            msg = {}
            for line in frame.decode("utf-8", "replace").split("\r\n"):
                key, _, value = line.partition(": ")
                msg[key] = value
            if "Event" in msg:
                sink(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def _run_baseline(port: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def sink(msg: dict[str, str]) -> None:
        if msg.get("Uniqueid") == END_ID:
            done.set_result(None)

    t0, c0 = time.perf_counter(), time.process_time()
    transport, _ = await loop.create_connection(lambda: _Minimal(sink), "127.0.0.1", port)
    await done
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    transport.close()
    return took, cpu


async def _run_panoramisk(port: int) -> tuple[float, float]:
    from panoramisk import Manager

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def on_event(manager: Any, event: Any) -> None:
        if event.get("Uniqueid") == END_ID and not done.done():
            done.set_result(None)

    manager = Manager(
        host="127.0.0.1",
        port=port,
        username="textback",
        secret=SECRET,
        loop=loop,
        ping_delay=3600,
    )
    manager.register_event("*", on_event)
    t0, c0 = time.perf_counter(), time.process_time()
    await manager.connect()
    await done
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    manager.close()
    await asyncio.sleep(0)
    return took, cpu


def _tracker() -> tuple[Any, frozenset[str] | None, frozenset[str], str]:
    """The real CallTracker (no silent stand-in: a bench that cannot import it must fail,
    not measure something else)."""
    from daemon.clock import SystemClock
    from daemon.config import Config
    from daemon.intake import tracker as tracker_mod

    trk = tracker_mod.CallTracker(Config(), SystemClock())
    return trk, tracker_mod.WANTED_EVENTS, tracker_mod.WANTED_VARS, "CallTracker"


async def _run_intake(
    port: int,
    *,
    on_finished: Callable[[Any], None] | None = None,
    sample: Callable[[Any], None] | None = None,
) -> tuple[float, float]:
    from daemon.clock import SystemClock
    from daemon.config import AmiConfig
    from daemon.intake.client import AmiClient

    trk, wanted, wanted_vars, _ = _tracker()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    feed = trk.feed

    def on_event(msg: dict[str, str]) -> None:
        out = feed(msg)
        if out and on_finished is not None:
            for item in out:
                on_finished(item)
        if msg["Event"] == "Hangup" and msg.get("Uniqueid") == END_ID:
            done.set_result(None)

    cfg = AmiConfig(port=port, username="textback", secret=SECRET, keepalive=3600.0)
    client = AmiClient(
        cfg,
        on_event=on_event,
        on_resync=lambda channels, a, b: None,
        clock=SystemClock(),
        wanted=wanted,
        wanted_vars=wanted_vars,
    )
    sampler: asyncio.Task[None] | None = None
    if sample is not None:

        async def sampling() -> None:
            while True:
                sample(client)
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sampling())
    t0, c0 = time.perf_counter(), time.process_time()
    await client.start()
    await done
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    if sampler is not None:
        sample(client)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    await client.close()
    return took, cpu


# -- measurements ----------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def throughput(events: int, rounds: int) -> dict[str, Any]:
    """Interleaved, repeated runs of the three clients on the same stream."""
    templates = _templates()
    per_pass = events_per_pass(templates)
    reps = max(1, -(-events // per_pass))
    total = reps * per_pass + 1
    runners = {
        "baseline": _run_baseline,
        "intake": _run_intake,
        "panoramisk": _run_panoramisk,
    }
    rates: dict[str, list[float]] = {k: [] for k in runners}
    cpu_rates: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            server = ServerProcess(reps)
            try:
                took, cpu = asyncio.run(runners[name](server.port))  # type: ignore[operator]
            finally:
                server.stop()
            rates[name].append(total / took)
            cpu_rates[name].append(total / cpu)
            print(
                f"  round {r + 1} {name}: {total / took:,.0f} events/s, "
                f"{total / cpu:,.0f} events per CPU-second",
                file=sys.stderr,
            )

    def ratio(a: str, b: str, table: dict[str, list[float]]) -> float:
        return statistics.median(x / y for x, y in zip(table[a], table[b], strict=True))

    return {
        "events": total,
        "rounds": rounds,
        "rates": rates,
        "cpu_rates": cpu_rates,
        "median": {k: statistics.median(v) for k, v in rates.items()},
        "cpu_median": {k: statistics.median(v) for k, v in cpu_rates.items()},
        "intake_vs_baseline": ratio("intake", "baseline", cpu_rates),
        "intake_vs_panoramisk": ratio("intake", "panoramisk", cpu_rates),
        "panoramisk_vs_baseline": ratio("panoramisk", "baseline", cpu_rates),
        "wall_intake_vs_baseline": ratio("intake", "baseline", rates),
        "wall_intake_vs_panoramisk": ratio("intake", "panoramisk", rates),
    }


def latency(rate: float, events: int) -> dict[str, Any]:
    """Paced stream: server write of a call's last Hangup -> finished call returned."""
    templates = _templates()
    reps = max(1, -(-events // events_per_pass(templates)))
    server = ServerProcess(reps, rate=rate, limit=events)
    finished: dict[str, float] = {}

    def on_finished(item: Any) -> None:
        if hasattr(item, "outcome"):
            finished[item.linkedid] = time.monotonic()

    try:
        asyncio.run(_run_intake(server.port, on_finished=on_finished))
    finally:
        writes = server.stop()
    lid_of: dict[str, str] = {}
    start = 1_800_000_000.0
    hangup = re.compile(
        rb"Event: Hangup\r\n(?:[^\r]*\r\n)*?Uniqueid: ([^\r]+)\r\nLinkedid: ([^\r]+)"
    )
    for rep in range(reps):
        data, start = _render(templates, rep, start)
        for m in hangup.finditer(data):
            lid_of[m.group(1).decode()] = m.group(2).decode()
    # per finished call: the latest Hangup of that call written before it finished
    last_write: dict[str, float] = {}
    for uid, t in writes.items():
        lid = lid_of.get(uid)
        if lid is not None and t <= finished.get(lid, -1.0):
            last_write[lid] = max(last_write.get(lid, 0.0), t)
    lat = sorted((finished[lid] - t) * 1000 for lid, t in last_write.items())
    if not lat:
        return {"calls": 0, "events": events}
    return {
        "events": events,
        "calls": len(lat),
        "p50_ms": lat[len(lat) // 2],
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "max_ms": lat[-1],
    }


def memory(low: int, high: int) -> dict[str, Any]:
    """RSS of this process after `low` and after `high` events through intake + tracker."""
    templates = _templates()
    per_pass = events_per_pass(templates)
    reps = max(1, -(-high // per_pass))
    server = ServerProcess(reps)
    marks: dict[str, float] = {}

    def sample(client: Any) -> None:
        c = client.counters
        seen = c.events + c.skipped
        rss = _rss_mb()
        if seen >= low and "low" not in marks:
            marks["low"], marks["low_events"] = rss, seen
        if seen >= high:
            marks["high"], marks["high_events"] = rss, seen
        if seen:
            marks["skipped_share"] = c.skipped / seen

    try:
        asyncio.run(_run_intake(server.port, sample=sample))
    finally:
        server.stop()
    return marks


def breakdown(repeat: int) -> dict[str, float]:
    """CPU microseconds per event of each stage, in process (no TCP), best of `repeat`."""
    from daemon.intake.protocol import AmiProtocol

    templates = _templates()
    data, _ = _render(templates, 0, 1_800_000_000.0)
    n = events_per_pass(templates)
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    _, wanted, wanted_vars, _ = _tracker()

    def split_only() -> None:
        rest = b""
        for chunk in chunks:
            frames = (rest + chunk).split(b"\r\n\r\n")
            rest = frames.pop()

    def baseline() -> None:
        proto = _Minimal.__new__(_Minimal)
        proto.buf, proto.sink = b"", lambda msg: None
        for chunk in chunks:
            proto.data_received(chunk)

    def intake(with_tracker: bool) -> Callable[[], None]:
        def go() -> None:
            sink = _tracker()[0].feed if with_tracker else (lambda msg: None)
            proto = AmiProtocol(sink, wanted=wanted, wanted_vars=wanted_vars)
            for chunk in chunks:
                proto.data_received(chunk)

        return go

    stages = {
        "split": split_only,
        "baseline": baseline,
        "intake": intake(False),
        "intake_tracker": intake(True),
    }
    best = {k: float("inf") for k in stages}
    for _ in range(repeat):
        for name, fn in stages.items():
            c0 = time.process_time()
            fn()
            best[name] = min(best[name], (time.process_time() - c0) / n * 1e6)
    return best


def run(quick: bool) -> dict[str, Any]:
    """Run the whole benchmark; the "markdown" entry is the section for BENCHMARKS.md."""
    started = time.perf_counter()
    events = 60_000 if quick else 500_000
    rounds = 2 if quick else 5
    tp = throughput(events, rounds)
    # repeated: one run's p99 rests on its 5 slowest calls, and other processes on a
    # shared machine can delay any of them
    lats = [latency(2000.0, 6_000 if quick else 24_000) for _ in range(1 if quick else 3)]
    lat = sorted(lats, key=lambda x: x.get("p99_ms", float("inf")))[len(lats) // 2]
    lat["runs_p99_ms"] = [x.get("p99_ms") for x in lats]
    mem = memory(100_000, 300_000 if quick else 1_000_000)
    sink = _tracker()[3]
    parts = breakdown(3 if quick else 7)
    result = {
        "throughput": tp,
        "latency": lat,
        "memory": mem,
        "breakdown": parts,
        "sink": sink,
        "quick": quick,
    }
    result["markdown"] = _markdown(result, quick)
    result["seconds"] = time.perf_counter() - started
    return result


def _markdown(res: dict[str, Any], quick: bool) -> str:
    tp, lat, mem = res["throughput"], res["latency"], res["memory"]
    med, cpu = tp["median"], tp["cpu_median"]
    cmd = ".venv/bin/python -m tests.bench.bench_ami" + (" --quick" if quick else "")
    rows = [
        ("baseline", "minimal asyncio Protocol: split frames, a dict per event"),
        ("intake", f"our intake (AmiClient, AmiProtocol) + {res['sink']}"),
        ("panoramisk", "stock panoramisk 1.4, one callback for every event"),
    ]
    lines = [
        "## AMI intake",
        "",
        f"Command: `{cmd}` (part of `make bench`). Stream: the shared traces repeated with "
        f"fresh Uniqueids/Linkedids and shifted timestamps, {tp['events']:,} events, served "
        "over loopback TCP by a separate process (the replay server's handshake). Each client "
        f"ran {tp['rounds']} times, interleaved; medians. Events per CPU-second counts only "
        "the measuring process's CPU time, so it is the steadier figure on a shared machine; "
        "the ratios are medians of per-round ratios.",
        "",
        "| client | events/s (wall) | events per CPU-second | vs baseline (CPU) |",
        "|---|---:|---:|---:|",
    ]
    vs = {
        "baseline": 1.0,
        "intake": tp["intake_vs_baseline"],
        "panoramisk": tp["panoramisk_vs_baseline"],
    }
    for key, label in rows:
        lines.append(f"| {label} | {med[key]:,.0f} | {cpu[key]:,.0f} | {vs[key]:.2f}x |")
    lines += [
        "",
        f"Intake + tracker vs stock panoramisk: **{tp['intake_vs_panoramisk']:.1f}x** CPU "
        f"({tp['wall_intake_vs_panoramisk']:.1f}x wall; target >= 4x); vs baseline 1: "
        f"**{tp['intake_vs_baseline']:.2f}x** CPU ({tp['wall_intake_vs_baseline']:.2f}x wall; "
        "target >= 1.0x). Per-round events/s (wall): "
        + "; ".join(
            f"{k} " + ", ".join(f"{v:,.0f}" for v in vals) for k, vals in tp["rates"].items()
        )
        + ".",
        "",
    ]
    if lat.get("calls"):
        lines.append(
            f"Paced 2,000 events/s ({lat['events']:,} events), one event per write: server write "
            f"of a call's last Hangup to the tracker's finished call, {lat['calls']} calls: "
            f"p50 {lat['p50_ms']:.2f} ms, "
            f"**p99 {lat['p99_ms']:.2f} ms** (target < 1 ms), max {lat['max_ms']:.2f} ms"
            + (
                " (the median run of "
                + ", ".join(f"{p:.2f}" for p in lat["runs_p99_ms"] if p is not None)
                + " ms p99)."
                if len(lat["runs_p99_ms"]) > 1
                else "."
            )
        )
    else:
        lines.append("Paced latency: no finished calls were measured.")
    if "low" in mem and "high" in mem:
        lines.append(
            f"\nRSS of the measuring process: {mem['low']:.1f} MB after "
            f"{mem['low_events']:,} events, {mem['high']:.1f} MB after {mem['high_events']:,}: "
            f"**growth {mem['high'] - mem['low']:+.1f} MB** (target < 10 MB)."
        )
    bd = res["breakdown"]
    kept = 1.0 - mem.get("skipped_share", 0.0)
    lines += [
        "",
        "What limits it. In process (no TCP), CPU per event of the stream, best of several: "
        f"splitting frames alone {bd['split']:.2f} us; baseline 1 {bd['baseline']:.2f} us; "
        f"our intake {bd['intake']:.2f} us; intake + tracker {bd['intake_tracker']:.2f} us. "
        f"The intake wins by not parsing what the tracker never reads: only {kept:.0%} of "
        "this stream's events are in `WANTED_EVENTS` (and VarSets only for `WANTED_VARS`); "
        "the rest are dropped after a prefix check on the raw bytes. What remains is one "
        "UTF-8 decode and a Python split per kept event (~4 us for a 20-line event), the "
        "check per skipped event (a bytes slice and a set lookup), and the tracker "
        f"({bd['intake_tracker'] - bd['intake']:.2f} us per event of the stream). Over TCP "
        "the reads are large (256 KiB, ~550 events), yet every client spends about 1 us "
        "more per event than in process (the socket copy, 500,000 events of allocation and "
        "garbage collection, the tracker's state across 43 passes; not split further "
        "here), which narrows the ratio. Stock panoramisk pays for a "
        "case-insensitive Message and a regex per registered pattern on every event. "
        "Everything runs on one core in the event loop; the server process and the kernel's "
        "loopback use the other. Shared, noisy 2-CPU machine: wall rates vary by +-30% "
        "between rounds; CPU rates and the ratios much less.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run and print the markdown section (a full run also writes tests/bench/ami_results.md)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    res = run(args.quick)
    text = res["markdown"] + f"\n(run took {res['seconds']:.0f} s)\n"
    if not args.quick:  # the file the lead pastes holds full runs only
        (Path(__file__).parent / "ami_results.md").write_text(text)
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != "markdown"}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
