"""Service benchmark: the real `textback run` process, end to end, against the fakes.

Run: `.venv/bin/python -m tests.bench.bench_service [--quick] [--save]` (or `make bench`).

Everything is measured on the real daemon process (`python -m daemon.cli run`, as systemd
starts it, with a $NOTIFY_SOCKET), not an in-process Service. This process hosts the
fake Asterisk (daemon/ami/replayserver.py's handshake over loopback TCP) and the modem
simulator (gsm/simulator.py on a real pty); the daemon writes a real SQLite file with
its production settings (WAL, synchronous=FULL). Config: the wait step `delay = "0s"`,
`cooldown = "0s"`, every cap and the SMS-pumping guard off (0), so nothing is held back.

Calls are trace 02 (abandoned while ringing, a recorded Asterisk 22 call) repeated with
fresh Uniqueids/Linkedids, channel names, shifted timestamps and fresh caller numbers
from the fictional 555-01xx blocks of eight area codes (800 numbers).

1. Latency: the server writes a call's events up to its final Hangup, then that Hangup
   alone (time taken when the write returns), and we time the AT+CMGS line arriving at
   the simulator (its `on_command` hook). One call at a time: the next call starts after
   the text is sent. Baseline in the same run: a minimal relay process (an asyncio
   Protocol that logs in, splits frames and writes AT+CMGS to the pty on the final
   Hangup), timed the same way.
2. Burst: 1,000 calls whose final Hangups are written within one second; time until all
   1,000 calls are committed in the database (each call's row, decision and text are one
   transaction, polled with a separate read-only sqlite3 connection), and until every
   text is sent at the simulator's pace. Baselines: a bare durable SQLite commit and a
   bare AT/OK round trip on the pty, both in the same run.
3. Process: time from exec to READY=1, RSS idle and after the burst (VmRSS), CPU while
   idle (utime+stime from /proc/<pid>/stat) with the AMI link and the modem up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.intake.replayserver import ReplayServer, _Conn, trace_body
from gsm import simulator
from tests.daemonproc import Daemon, NotifyListener

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "tests" / "data" / "ami" / "02-abandoned-while-ringing.ami"
RESULTS = Path(__file__).resolve().parent / "service_results.md"
USER = "bench"
SECRET = "bench-secret"
#: Fictional test numbers only: 555-0100..0199 in eight area codes.
AREA_CODES = (202, 206, 305, 312, 415, 512, 617, 718)
#: WatchdogSec in systemd/textback.service (the daemon pings at half of it).
WATCHDOG_USEC = "30000000"
#: aiosqlite calls (each a hop to its worker thread and back) per paced call: counted once
#: with a wrapper around aiosqlite.Connection._execute (not part of the benchmark).
HOPS_PER_CALL = 51
TARGETS = {"p99_ms": 50.0, "durable_s": 2.0, "idle_cpu_pct": 1.0, "rss_mb": 80.0}

_ID = re.compile(rb"(?<=: )1795331033\.(\d{1,3})(?=\r\n)")
_TS = re.compile(rb"(?<=\r\nTimestamp: )([0-9]+\.[0-9]+)")
_CHAN = re.compile(rb"PJSIP/(trunk|101)-([0-9a-f]{8})")
_CALLER = b"+12025550102"

CONFIG = """\
# written by tests/bench/bench_service.py
[ami]
host = "127.0.0.1"
port = {port}
username = "{user}"
secret = "{secret}"

[modem]
device = "{device}"

[textback]
delay = "0s"
cooldown = "0s"
max_per_hour = 0
max_per_day = 0
max_per_month = 0
pumping_max_per_range = 0
business_name = "Main Street Dental"

[hours]
mon = ["00:00-24:00"]
tue = ["00:00-24:00"]
wed = ["00:00-24:00"]
thu = ["00:00-24:00"]
fri = ["00:00-24:00"]
sat = ["00:00-24:00"]
sun = ["00:00-24:00"]

[database]
path = "{db}"

[log]
level = "info"
"""


# -- calls --------------------------------------------------------------------------------


def numbers() -> list[str]:
    """The 800 fictional numbers, interleaved across area codes."""
    return [f"+1{ac}555{n:04d}" for n in range(100, 200) for ac in AREA_CODES]


class CallMaker:
    """Trace 02 with fresh ids, channel names, timestamps and caller number per call."""

    def __init__(self) -> None:
        body = trace_body(TRACE.read_bytes())
        body = body[body.index(b"Event: Newchannel") :]
        if not body.endswith(b"\r\n\r\n"):
            body = body.rstrip(b"\r\n") + b"\r\n\r\n"
        self.body = body
        frames = body.split(b"\r\n\r\n")[:-1]
        last = max(i for i, f in enumerate(frames) if f.startswith(b"Event: Hangup\r\n"))
        stamp = re.search(rb"\r\nTimestamp: ([0-9.]+)", frames[last] + b"\r\n")
        assert stamp is not None
        self.hangup_ts = float(stamp.group(1))
        self.numbers = numbers()

    def render(self, index: int, end_ts: float) -> tuple[bytes, bytes, bytes]:
        """Call `index`: (events before its final Hangup, that Hangup, events after)."""
        epoch = f"{2_000_000_000 + index}".encode()
        shift = end_ts - self.hangup_ts
        data = _ID.sub(lambda m: epoch + b"." + m.group(1), self.body)
        data = _TS.sub(lambda m: f"{float(m.group(1)) + shift:.6f}".encode(), data)
        data = _CHAN.sub(
            lambda m: b"PJSIP/%s-%08x" % (m.group(1), index * 16 + int(m.group(2), 16)), data
        )
        data = data.replace(_CALLER, self.numbers[index % len(self.numbers)].encode())
        frames = [f + b"\r\n\r\n" for f in data.split(b"\r\n\r\n")[:-1]]
        last = max(i for i, f in enumerate(frames) if f.startswith(b"Event: Hangup\r\n"))
        return b"".join(frames[:last]), frames[last], b"".join(frames[last + 1 :])


class BenchServer(ReplayServer):
    """The replay server's handshake; the benchmark writes events when it wants."""

    def __init__(self) -> None:
        super().__init__(b"", username=USER, secret=SECRET)
        self.live: _Conn | None = None
        self.up = asyncio.Event()

    async def _stream(self, conn: _Conn) -> None:
        self.live = conn
        self.up.set()
        await asyncio.Event().wait()  # until the connection ends (cancelled)

    def write(self, data: bytes) -> float:
        """Write whole frames; return when the write returned (the bytes are in the kernel)."""
        conn = self.live
        assert conn is not None
        conn.write(data)
        conn.at_boundary = True
        conn.flush()
        return time.monotonic()

    async def drain(self) -> None:
        """Wait while the client is slower than we write."""
        assert self.live is not None
        await self.live.writer.drain()


# -- helpers ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` every 2 ms."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: timed out waiting for {what}")
        await asyncio.sleep(0.002)


class Cmgs:
    """Arrival times of AT+CMGS lines at the simulator."""

    def __init__(self, sim: simulator.Simulator) -> None:
        self.times: list[float] = []
        sim.on_command = self._seen

    def _seen(self, line: str) -> None:
        if line[:7].upper() == "AT+CMGS":
            self.times.append(time.monotonic())


async def paced_latency(
    server: BenchServer,
    sim: simulator.Simulator,
    maker: CallMaker,
    calls: int,
    first: int,
    *,
    wait_sent: bool,
) -> list[float]:
    """One call at a time: Hangup written -> AT+CMGS at the simulator, in seconds."""
    cmgs = Cmgs(sim)
    out = []
    for i in range(first, first + calls):
        before, hangup, after = maker.render(i, time.time())
        server.write(before)
        await server.drain()
        await asyncio.sleep(0.005)  # the daemon takes the call's start first
        k, sent = len(cmgs.times), len(sim.sent)
        t0 = server.write(hangup)
        await until(lambda: len(cmgs.times) > k, 10.0, f"AT+CMGS for call {i}")  # noqa: B023
        out.append(cmgs.times[k] - t0)
        if wait_sent:
            await until(lambda: len(sim.sent) > sent, 10.0, f"text of call {i}")  # noqa: B023
        server.write(after)
        await asyncio.sleep(0.002)
    return out


# -- baselines ----------------------------------------------------------------------------

_RELAY = r"""
import asyncio, os, sys

port, dev, user, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

class Relay(asyncio.Protocol):
    def __init__(self, fd, done):
        self.fd, self.done, self.buf = fd, done, b""
    def connection_made(self, t):
        t.write(f"Action: Login\r\nUsername: {user}\r\nSecret: {secret}\r\n\r\n".encode())
    def data_received(self, data):
        frames = (self.buf + data).split(b"\r\n\r\n")
        self.buf = frames.pop()
        for f in frames:
            if f.startswith(b"Event: Hangup\r\n") and b"\r\nChannel: PJSIP/trunk-" in f:
                os.write(self.fd, b"AT+CMGS=1\r\x1b")  # ESC: the simulator cancels, says OK
    def connection_lost(self, exc):
        self.done.set_result(None)

async def main():
    fd = os.open(dev, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, lambda: os.read(fd, 4096))  # drop echo and answers
    done = loop.create_future()
    await loop.create_connection(lambda: Relay(fd, done), "127.0.0.1", port)
    await done

asyncio.run(main())
"""

_AT_PING = r"""
import json, os, select, sys, time

fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
def cmd(line):
    os.write(fd, line)
    buf = b""
    while not buf.endswith(b"OK\r\n"):
        select.select([fd], [], [])
        buf += os.read(fd, 4096)
cmd(b"ATE0\r")
times = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    cmd(b"AT\r")
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""


async def relay_baseline(maker: CallMaker, calls: int) -> list[float]:
    """The same latency measurement through a minimal relay process instead of the daemon."""
    server = BenchServer()
    port = await server.start()
    try:
        async with simulator.running("sim800") as sim:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _RELAY, str(port), sim.device, USER, SECRET
            )
            try:
                await asyncio.wait_for(server.up.wait(), 10)
                return await paced_latency(server, sim, maker, calls, 0, wait_sent=False)
            finally:
                proc.kill()
                await proc.wait()
    finally:
        await server.close()


async def at_roundtrip(count: int) -> list[float]:
    """Bare AT -> OK round trips on the simulator's pty from another process."""
    async with simulator.running("sim800") as sim:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _AT_PING, sim.device, str(count), stdout=subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        times: list[float] = json.loads(out)
        return times


def commit_baseline(directory: Path, count: int) -> list[float]:
    """Bare durable commits: one-row INSERTs in WAL mode with synchronous=FULL."""
    db = sqlite3.connect(directory / "commit-baseline.db", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    times = []
    for i in range(count):
        t0 = time.perf_counter()
        db.execute("BEGIN")
        db.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
        db.execute("COMMIT")
        times.append(time.perf_counter() - t0)
    db.close()
    return times


async def aiosqlite_roundtrip(directory: Path, count: int) -> list[float]:
    """Bare aiosqlite round trips: `SELECT 1` and its row, through the worker thread."""
    import aiosqlite

    times = []
    async with aiosqlite.connect(directory / "roundtrip-baseline.db") as db:
        for _ in range(count):
            t0 = time.perf_counter()
            async with db.execute("SELECT 1") as cur:
                await cur.fetchone()
            times.append(time.perf_counter() - t0)
    return times


def startup_baseline(runs: int) -> dict[str, float]:
    """Bare interpreter start, and the start plus importing the daemon's modules."""
    out = {}
    for name, code in (("python", "pass"), ("imports", "import daemon.app.service, daemon.cli")):
        took = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
            took.append(time.perf_counter() - t0)
        out[name] = statistics.median(took)
    return out


# -- the daemon session -------------------------------------------------------------------


class DbPoll:
    """A separate read-only connection to the daemon's database."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)

    def count(self, sql: str) -> int:
        n: int = self.db.execute(sql).fetchone()[0]
        return n

    def calls(self) -> int:
        return self.count("SELECT count(*) FROM calls")

    def messages(self) -> int:
        return self.count("SELECT count(*) FROM messages")

    def pending(self) -> int:
        return self.count(
            "SELECT count(*) FROM messages WHERE state IN ('waiting', 'queued', 'sending')"
        )

    def close(self) -> None:
        self.db.close()


async def burst(
    server: BenchServer,
    sim: simulator.Simulator | None,
    maker: CallMaker,
    poll: DbPoll,
    *,
    calls: int,
    first: int,
    send_timeout: float,
) -> dict[str, Any]:
    """`calls` missed calls whose final Hangups are written within one second.

    Without a simulator (the modem unplugged) it waits only until all are durable."""
    rendered = [maker.render(first + i, time.time()) for i in range(calls)]
    blobs = [a + b + c for a, b, c in rendered]
    calls0, msgs0 = poll.calls(), poll.messages()
    sent0 = len(sim.sent) if sim is not None else 0
    written = 0
    t_first = t_last = 0.0
    start = time.monotonic()
    durable_at: float | None = None

    while written < calls:
        due = min(calls, int((time.monotonic() - start) * calls) + 1)
        if due > written:
            t = server.write(b"".join(blobs[written:due]))
            if written == 0:
                t_first = t
            written = due
            t_last = t
            await server.drain()
        await asyncio.sleep(0.001)
        if durable_at is None and poll.calls() - calls0 >= calls:
            durable_at = time.monotonic()
    write_s = t_last - t_first
    while durable_at is None:
        if poll.calls() - calls0 >= calls:
            durable_at = time.monotonic()
            break
        if time.monotonic() - t_first > send_timeout:
            raise TimeoutError("benchmark: burst never became durable")
        await asyncio.sleep(0.005)
    texts = poll.messages() - msgs0
    out = {
        "calls": calls,
        "texts": texts,
        "write_s": write_s,
        "durable_s": durable_at - t_first,
        "durable_after_last_s": durable_at - t_last,
    }
    if sim is None:
        return out
    while not (poll.pending() == 0 and len(sim.sent) - sent0 >= texts):
        if time.monotonic() - t_first > send_timeout:
            raise TimeoutError(
                f"benchmark: {len(sim.sent) - sent0} of {texts} burst texts sent in time"
            )
        await asyncio.sleep(0.01)
    sent_at = time.monotonic()
    out["sent"] = len(sim.sent) - sent0
    out["sent_s"] = sent_at - t_first
    out["send_rate"] = texts / (sent_at - t_first)
    return out


async def unplugged_burst(workdir: Path, maker: CallMaker, calls: int) -> dict[str, Any]:
    """The burst against a fresh daemon whose modem is missing: no sends compete."""
    server = BenchServer()
    port = await server.start()
    sub = workdir / "unplugged"
    sub.mkdir()
    try:
        cfg = sub / "textback.toml"
        db = sub / "textback.db"
        cfg.write_text(
            CONFIG.format(port=port, user=USER, secret=SECRET, device=sub / "no-modem", db=db)
        )
        notify = NotifyListener(sub / "notify.sock")
        daemon = Daemon(cfg, notify, env={"WATCHDOG_USEC": WATCHDOG_USEC})
        await daemon.start()
        try:
            await notify.wait_for("READY=1", 30)
            await asyncio.wait_for(server.up.wait(), 30)
            await daemon.wait_log("event=modem_unavailable", 30)
            await asyncio.sleep(1.0)
            poll = DbPoll(db)
            assert daemon.proc is not None
            spy = _profiler(daemon.proc.pid, ".unplugged")
            cpu0 = proc_cpu(daemon.proc.pid)
            try:
                out = await burst(server, None, maker, poll, calls=calls, first=0, send_timeout=120)
                out["cpu_s"] = proc_cpu(daemon.proc.pid) - cpu0
                return out
            finally:
                poll.close()
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(30)
        finally:
            await daemon.kill()
            notify.close()
    finally:
        await server.close()


async def daemon_session(
    quick: bool, workdir: Path, maker: CallMaker
) -> tuple[dict[str, Any], list[float]]:
    """Start the real daemon; idle, paced latency, burst; measure the process."""
    n_lat = 100 if quick else 1000
    n_burst = 1000
    idle_s = 10.0 if quick else 60.0
    res: dict[str, Any] = {}
    server = BenchServer()
    port = await server.start()
    try:
        async with simulator.running("sim800") as sim:
            cfg = workdir / "textback.toml"
            db = workdir / "textback.db"
            cfg.write_text(
                CONFIG.format(port=port, user=USER, secret=SECRET, device=sim.device, db=db)
            )
            notify = NotifyListener(workdir / "notify.sock")
            daemon = Daemon(cfg, notify, env={"WATCHDOG_USEC": WATCHDOG_USEC})
            t0 = time.monotonic()
            await daemon.start()
            try:
                await notify.wait_for("READY=1", 30)
                res["ready_s"] = time.monotonic() - t0
                assert daemon.proc is not None
                pid = daemon.proc.pid
                await asyncio.wait_for(server.up.wait(), 30)
                await daemon.wait_log("event=modem_ready", 30)
                res["up_s"] = time.monotonic() - t0
                await asyncio.sleep(2.0)  # let start-up work settle
                res["rss_idle"] = proc_mem(pid)
                c0, w0 = proc_cpu(pid), time.monotonic()
                await asyncio.sleep(idle_s)
                c1, w1 = proc_cpu(pid), time.monotonic()
                res["idle_s"] = w1 - w0
                res["idle_cpu_pct"] = 100 * (c1 - c0) / (w1 - w0)
                print("  idle done; paced latency ...", file=sys.stderr, flush=True)
                spy = _profiler(pid)

                cpu_before = proc_cpu(pid)
                lat = await paced_latency(server, sim, maker, n_lat, 0, wait_sent=True)
                res["latency_cpu_per_call_ms"] = 1000 * (proc_cpu(pid) - cpu_before) / n_lat
                res["rss_after_latency"] = proc_mem(pid)
                print("  burst ...", file=sys.stderr, flush=True)

                poll = DbPoll(db)
                try:
                    cpu_before = proc_cpu(pid)
                    res["burst"] = await burst(
                        server, sim, maker, poll, calls=n_burst, first=n_lat, send_timeout=600
                    )
                    res["burst"]["cpu_s"] = proc_cpu(pid) - cpu_before
                finally:
                    poll.close()
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(30)
                await asyncio.sleep(1.0)
                res["rss_after_burst"] = proc_mem(pid)
                res["duplicates"] = sim.duplicates
                numbers_sent = [s.number for s in sim.sent]
                res["texts_total"] = len(numbers_sent)

                t_stop = time.monotonic()
                daemon.signal(signal.SIGTERM)
                res["exit_code"] = await daemon.wait_exit(20)
                res["stop_s"] = time.monotonic() - t_stop
                levels = [_level(ln) for ln in daemon.lines]
                res["log_lines"] = {lv: levels.count(lv) for lv in sorted(set(levels))}
                res["log_problems"] = sorted(
                    {
                        m.group(1)
                        for ln in daemon.lines
                        if _level(ln) in ("WARNING", "ERROR", "CRITICAL")
                        for m in [re.search(r"event=(\S+)", ln)]
                        if m is not None
                    }
                )
            finally:
                await daemon.kill()
                notify.close()

            # restarts on the now-full database: READY again
            restarts = []
            for _ in range(1 if quick else 3):
                (workdir / "notify.sock").unlink(missing_ok=True)
                notify = NotifyListener(workdir / "notify.sock")
                daemon = Daemon(cfg, notify, env={"WATCHDOG_USEC": WATCHDOG_USEC})
                t0 = time.monotonic()
                await daemon.start()
                try:
                    await notify.wait_for("READY=1", 30)
                    restarts.append(time.monotonic() - t0)
                    daemon.signal(signal.SIGTERM)
                    await daemon.wait_exit(20)
                finally:
                    await daemon.kill()
                    notify.close()
            res["restart_ready_s"] = statistics.median(restarts)
    finally:
        await server.close()
    return res, lat


def _level(line: str) -> str:
    """The level word of a daemon log line ("2026-11-22 08:00:00 INFO name: ...")."""
    parts = line.split(" ", 3)
    return parts[2] if len(parts) > 3 else ""


def _profiler(pid: int, suffix: str = "") -> subprocess.Popen[bytes] | None:
    """py-spy on the daemon when TEXTBACK_BENCH_PROFILE names an output file (collapsed)."""
    out = os.environ.get("TEXTBACK_BENCH_PROFILE")
    if not out:
        return None
    out += suffix
    spy = Path(sys.executable).with_name("py-spy")
    cmd = [str(spy), "record", "--pid", str(pid), "--format", "raw", "--output", out, "-r", "200"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)


# -- the report ---------------------------------------------------------------------------


def run(quick: bool = False) -> dict[str, Any]:
    """Run the service benchmark; the result's "markdown" is its BENCHMARKS.md section."""
    maker = CallMaker()
    n_base = 100 if quick else 1000
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="textback-bench-", dir="/var/tmp") as tmp:
        workdir = Path(tmp)
        print("  baselines ...", file=sys.stderr, flush=True)
        relay = asyncio.run(relay_baseline(maker, n_base))
        at_rt = asyncio.run(at_roundtrip(200))
        commits = commit_baseline(workdir, 200)
        trips = asyncio.run(aiosqlite_roundtrip(workdir, 2000))
        startup = startup_baseline(1 if quick else 3)
        print("  daemon ...", file=sys.stderr, flush=True)
        res, lat = asyncio.run(daemon_session(quick, workdir, maker))
        print("  burst with the modem unplugged ...", file=sys.stderr, flush=True)
        res["unplugged"] = asyncio.run(unplugged_burst(workdir, maker, 1000))
    ms = 1000.0
    res["latency"] = {
        "n": len(lat),
        "p50": pct(lat, 50) * ms,
        "p90": pct(lat, 90) * ms,
        "p99": pct(lat, 99) * ms,
        "max": max(lat) * ms,
        "first_tenth_p50": pct(lat[: len(lat) // 10], 50) * ms,
        "last_tenth_p50": pct(lat[-(len(lat) // 10) :], 50) * ms,
    }
    res["relay"] = {
        "n": len(relay),
        "p50": pct(relay, 50) * ms,
        "p99": pct(relay, 99) * ms,
    }
    res["at_roundtrip"] = {"p50": pct(at_rt, 50) * ms, "p99": pct(at_rt, 99) * ms}
    res["commit"] = {"p50": pct(commits, 50) * ms, "p99": pct(commits, 99) * ms}
    res["aiosqlite"] = {"p50": pct(trips, 50) * ms, "p99": pct(trips, 99) * ms}
    res["startup"] = startup
    res["quick"] = quick
    res["latency_ms"] = [round(x * ms, 2) for x in lat]
    res["loadavg"] = {"before": load0, "after": os.getloadavg()}
    res["events_per_call"] = maker.body.count(b"\r\n\r\n")
    res["markdown"] = markdown(res)
    return res


def _ok(good: bool) -> str:
    return "met" if good else "**missed**"


def markdown(r: dict[str, Any]) -> str:
    """The BENCHMARKS.md section."""
    lat, rel, b, u = r["latency"], r["relay"], r["burst"], r["unplugged"]
    at, com, st = r["at_roundtrip"], r["commit"], r["startup"]
    rss_idle = r["rss_idle"]["VmRSS"]
    rss_burst = r["rss_after_burst"]["VmRSS"]
    peak = r["rss_after_burst"]["VmHWM"]
    t = TARGETS
    cmd = "make bench" if not r["quick"] else "python -m tests.bench.run --quick"
    per_text_ms = 1000 / b["send_rate"]
    floor_ms = 2 * at["p50"] + 2 * com["p50"]
    load = r["loadavg"]
    logs = ", ".join(f"{k} {v:,}" for k, v in r["log_lines"].items()) or "none"
    problems = ", ".join(f"`{e}`" for e in r["log_problems"]) or "none"
    hop_ms = r["aiosqlite"]["p50"] / 3  # execute, fetch, close: three hops
    rows = [
        (
            f"Hangup written -> AT+CMGS at the simulator, {lat['n']:,} paced calls",
            f"p50 {lat['p50']:.1f} ms, **p99 {lat['p99']:.1f} ms** (p90 {lat['p90']:.1f},"
            f" max {lat['max']:.1f}); p50 of the first tenth {lat['first_tenth_p50']:.1f},"
            f" of the last {lat['last_tenth_p50']:.1f}",
            f"p99 < {t['p99_ms']:.0f} ms: {_ok(lat['p99'] < t['p99_ms'])}",
            f"minimal relay process, same path: p50 {rel['p50']:.2f} ms, p99"
            f" {rel['p99']:.2f} ms (daemon/relay: {lat['p50'] / rel['p50']:.0f}x at p50);"
            f" bare durable SQLite commit p50 {com['p50']:.2f} ms, p99 {com['p99']:.2f} ms",
        ),
        (
            f"burst: {b['calls']:,} missed calls (Hangups written over {b['write_s']:.2f} s):"
            " all durable (call, decision and text committed)",
            f"**{b['durable_s']:.2f} s** after the first Hangup"
            f" ({b['durable_after_last_s']:.2f} s after the last); {b['texts']:,} texts",
            f"< {t['durable_s']:.0f} s: {_ok(b['durable_s'] < t['durable_s'])}",
            f"{b['calls']:,} bare durable commits: {b['calls'] * com['p50'] / 1000:.2f} s;"
            f" {b['calls']:,} x {HOPS_PER_CALL} bare aiosqlite hops ({hop_ms * 1000:.0f} us"
            f" each): {b['calls'] * HOPS_PER_CALL * hop_ms / 1000:.2f} s",
        ),
        (
            "the same burst, modem unplugged (a fresh daemon; no sends compete)",
            f"{u['durable_s']:.2f} s ({u['durable_after_last_s']:.2f} s after the last)",
            f"< {t['durable_s']:.0f} s: {_ok(u['durable_s'] < t['durable_s'])}",
            f"the burst with sends: {b['durable_s']:.2f} s"
            f" ({b['durable_s'] / u['durable_s']:.2f}x this); daemon CPU here"
            f" {u['cpu_s']:.1f} s",
        ),
        (
            f"burst: all {b['texts']:,} texts sent at the simulator's pace",
            f"{b['sent_s']:.1f} s after the first Hangup ({b['send_rate']:.0f} texts/s,"
            f" {per_text_ms:.1f} ms each)",
            "none",
            f"floor: 2 bare AT/OK round trips on the pty (p50 {at['p50']:.2f} ms) + 2 bare"
            f" commits = {floor_ms:.2f} ms per text ({per_text_ms / floor_ms:.0f}x)",
        ),
        (
            "RSS (VmRSS) idle / after the burst (peak VmHWM)",
            f"{rss_idle:.1f} MB / {rss_burst:.1f} MB ({peak:.1f} MB)",
            f"< {t['rss_mb']:.0f} MB: {_ok(max(rss_idle, rss_burst, peak) < t['rss_mb'])}",
            "",
        ),
        (
            f"CPU while idle for {r['idle_s']:.0f} s, AMI and modem connected",
            f"**{r['idle_cpu_pct']:.2f} %** of one core"
            f" ({r['idle_cpu_pct'] * r['idle_s'] * 10:.0f} ms of CPU)",
            f"< {t['idle_cpu_pct']:.0f} %: {_ok(r['idle_cpu_pct'] < t['idle_cpu_pct'])}",
            "",
        ),
        (
            "exec -> READY=1: fresh database (migrations) / restart on the full database",
            f"{r['ready_s']:.2f} s / {r['restart_ready_s']:.2f} s",
            "none",
            f"bare `python -c pass` {st['python']:.2f} s; interpreter + importing the"
            f" daemon's modules {st['imports']:.2f} s",
        ),
    ]
    table = ["| measure | result | target | baseline (same run) |", "|---|---|---|---|"]
    table += [f"| {w} | {x} | {y} | {z} |" for w, x, y, z in rows]
    misses = []
    if lat["p99"] >= t["p99_ms"]:
        misses.append(f"latency p99 by {lat['p99'] - t['p99_ms']:.1f} ms")
    if b["durable_s"] >= t["durable_s"]:
        misses.append(
            f"burst durability by {b['durable_s'] - t['durable_s']:.1f} s"
            f" ({b['durable_s'] / t['durable_s']:.1f}x the target)"
        )
    if r["idle_cpu_pct"] >= t["idle_cpu_pct"]:
        misses.append(f"idle CPU by {r['idle_cpu_pct'] - t['idle_cpu_pct']:.2f} points")
    if max(rss_idle, rss_burst, peak) >= t["rss_mb"]:
        misses.append(f"RSS by {max(rss_idle, rss_burst, peak) - t['rss_mb']:.1f} MB")
    missed = "Targets missed: " + "; ".join(misses) + "." if misses else "All targets met."
    alone = " --quick" if r["quick"] else ""
    return f"""## Service (`textback run`, end to end)

Command: `{cmd}` (alone: `.venv/bin/python -m tests.bench.bench_service{alone}`).
Everything runs against the real daemon process (`python -m daemon.cli run --config ...`,
with $NOTIFY_SOCKET and WATCHDOG_USEC as systemd sets them), not an in-process Service.
The benchmark process hosts the fake Asterisk (the replay server's handshake over loopback
TCP) and the modem simulator (SIM800 profile, PDU mode, on a real pty). The daemon's
SQLite file is on disk (ext4) with its production settings (WAL, synchronous=FULL), and it
logs at `info` to a pipe the benchmark reads, as journald would. Config: `delay = "0s"`,
`cooldown = "0s"`, every cap and the pumping guard off. Calls: recorded trace 02 (abandoned
while ringing, {r["events_per_call"]} events) with fresh ids, channel names, timestamps and
callers (555-01xx in eight area codes: 800 numbers, so in the burst a repeat caller whose
first text is still queued is merged into it, as designed: {b["calls"]:,} calls gave
{b["texts"]:,} texts). Latency calls go one at a time: the call's events, then its final
Hangup alone (timed when the server's write returns), then the next call once the text
is sent; AT+CMGS is timed when the simulator parses the line (one event-loop hop after
the pty read; the same for the relay baseline).

{chr(10).join(table)}

{missed} Daemon CPU: {r["latency_cpu_per_call_ms"]:.1f} ms per paced call (decision, text,
send, logs), {b["cpu_s"]:.1f} s for the burst. After SIGTERM the daemon exited with
{r["exit_code"]} in {r["stop_s"]:.2f} s; texts the simulator decoded: {r["texts_total"]:,},
duplicate parts: {r["duplicates"]}. Daemon log lines by level: {logs}; events logged
at WARNING or above: {problems}.

What limits each number (found with py-spy on the daemon, a counting wrapper around
aiosqlite's calls, and scratch runs with the daemon's SQLite at synchronous=OFF through a
sitecustomize; none of that is part of `make bench`):
- History: the first full run of this benchmark (before the changes below) gave a burst
  durable after 7.9 s (4.9-9.6 s over eight runs; 11.2 s with the modem unplugged) and a
  paced p99 of 57 ms. Each call then made {HOPS_PER_CALL} aiosqlite hops in 4 committed
  transactions; py-spy put a third of the loop's CPU in the pipeline (cap queries and
  phonenumbers parsing each caller twice) and a sixth in the outbox re-reading every
  pending row twice per pass. What changed: finished calls waiting in the queue are
  recorded in one transaction (group commit, order kept, a faulty call retried alone);
  each call's statements run as one function on the database thread; a text is created
  `queued` when the wait step is 0; one UPDATE moves every due text to `queued` and the
  next wake-up is a query; the cap counts are one statement and the pumping scan is
  skipped with the guard off; `classify_caller` is cached. The "51 bare hops" baseline
  row shows what the old per-call round trips alone would cost.
- Latency: parsing the Hangup and finishing the call take well under a millisecond (see
  the AMI section); the rest is one transaction with its fsync before AT+CMGS, the
  `sending` row, and the daemon's CPU (decision, log lines). The tail follows the
  machine's load (2 CPUs shared by the daemon, its database thread, this benchmark and
  other jobs); the relay's p99 shows the same noise on one hop. The relay is the floor
  set by TCP, the pty and two loops.
- Burst durability: the daemon now keeps pace with the Hangups (durable within
  milliseconds of the last one); the limit is the daemon's CPU per call (decision,
  policy queries, log lines) on one event loop, then one fsync per batch.
- Send pace: the simulator answers at once, so this is the daemon's own cost per text:
  two transactions (`sending`, `sent`) and the queue scans of the outbox pass, plus
  AT+CMGS, the prompt, the PDU and +CMGS on the pty. A real modem needs 3-7 s per text,
  so a real 1,000-text backlog drains in about an hour; it is durable meanwhile.
- RSS: the interpreter, pydantic, phonenumbers' metadata and aiosqlite; the burst adds
  little because the queue lives in SQLite, not in memory.
- Idle CPU: the AMI keepalive (every 20 s), the STATUS refresh (a query every 5 s), the
  watchdog ping (every 15 s), the call-expiry sweep (every 60 s).
- READY: starting the interpreter and importing the modules (pydantic, phonenumbers,
  panoramisk, aiosqlite) is nearly all of it; then opening and migrating the database.
  READY does not wait for the PBX or the modem.

Numbers come from one run on a shared, noisy 2-CPU machine (load average
{load["before"][0]:.1f} before, {load["after"][0]:.1f} after: other jobs were running); the
latencies over 25 ms of a separate 600-call profiling run came in clusters that followed
the machine's load, not periodically (no WAL-checkpoint pattern). The baselines were
measured in the same run.
"""


def main(argv: list[str] | None = None) -> int:
    """Run it and print the markdown; `--save` also writes tests/bench/service_results.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    parser.add_argument("--save", action="store_true", help=f"write {RESULTS.name}")
    parser.add_argument("--json", action="store_true", help="also print the raw numbers")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = run(quick=args.quick)
    print(result["markdown"])
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=1))
    if args.save:
        took = time.perf_counter() - started
        RESULTS.write_text(result["markdown"].rstrip() + f"\n\n(run took {took:.0f} s)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
