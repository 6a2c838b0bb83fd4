"""Observability benchmark (issue 11, Measured): the 1,000-call burst with metrics (and
MQTT, when the daemon has it) on, against the same burst with them off.

Run: `.venv/bin/python -m tests.bench.run --only bench_observe --out /tmp/observe.md`.

Each round starts a fresh real daemon (`python -m daemon.cli run`, production database
settings) per variant, in turn (interleaved rounds, so drift and noise of a shared
machine fall on every variant alike), against bench_service's fakes (BenchServer over
loopback TCP, the sim800 simulator on a pty):

- off: no [metrics], no [mqtt] (the baseline of the same run);
- metrics: `[metrics] textfile` and `listen`, `interval = "1s"` (15x the default rate),
  and the endpoint scraped every second during the burst;
- mqtt+metrics: the same plus `[mqtt] url` to a real Mosquitto (its own config, a free
  loopback port) with one subscriber to `#` in a process of its own; only when
  daemon/mqtt exists and mosquitto is installed.

Per run: 1,000 missed calls whose final Hangups are written within one second (1,000
distinct fictional 555-01xx callers, so no text merges and every call is one text);
durable = all 1,000 calls committed (polled read-only); texting latency per text = its
call's Hangup written -> its AT+CMGS at the simulator (sends are one at a time, so the
k-th AT+CMGS is the k-th text the simulator records); RSS (VmRSS and peak VmHWM) after
the burst; daemon CPU during it. Ratios are against the off runs of the same session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gsm import simulator
from tests.bench.bench_service import (
    CONFIG,
    SECRET,
    USER,
    WATCHDOG_USEC,
    BenchServer,
    CallMaker,
    DbPoll,
    _profiler,
    burst,
    pct,
    proc_cpu,
    proc_mem,
)
from tests.daemonproc import Daemon, NotifyListener

ROOT = Path(__file__).resolve().parents[2]
#: 1,000 distinct fictional callers: 555-0100..0199 in ten area codes.
AREA_CODES = (202, 206, 303, 305, 312, 404, 415, 512, 617, 718)
CALLS = 1000
TARGETS = {"durable_s": 2.0, "p99_ratio": 1.10, "rss_mb": 80.0}
_CALLER_NUM = re.compile(rb"\r\nCallerIDNum: (\+\d+)\r\n")

_SUBSCRIBER = r"""
import asyncio, sys
import aiomqtt

async def main():
    n = 0
    async with aiomqtt.Client("127.0.0.1", int(sys.argv[1])) as c:
        await c.subscribe("#", qos=1)
        print("subscribed", flush=True)
        async for _ in c.messages:
            n += 1

asyncio.run(main())
"""


class TimedServer(BenchServer):
    """BenchServer that notes when each caller's events (Hangup included) were written."""

    def __init__(self) -> None:
        super().__init__()
        self.hangup_at: dict[str, float] = {}

    def write(self, data: bytes) -> float:
        t = super().write(data)
        for m in _CALLER_NUM.finditer(data):
            self.hangup_at.setdefault(m.group(1).decode(), t)
        return t


class CmgsTimes:
    """Arrival times of AT+CMGS lines at the simulator."""

    def __init__(self, sim: simulator.Simulator) -> None:
        self.times: list[float] = []
        sim.on_command = self._seen

    def _seen(self, line: str) -> None:
        if line[:7].upper() == "AT+CMGS":
            self.times.append(time.monotonic())


class Mosquitto:
    """A real broker on a free loopback port, its own config, no persistence."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.sub: asyncio.subprocess.Process | None = None

    async def up(self) -> None:
        """Wait for the broker, then start the subscriber and wait for its subscription."""
        deadline = time.monotonic() + 10
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        self.sub = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SUBSCRIBER, str(self.port), stdout=subprocess.PIPE
        )
        assert self.sub.stdout is not None
        line = await asyncio.wait_for(self.sub.stdout.readline(), 10)
        assert line.strip() == b"subscribed", line

    async def stop(self) -> None:
        if self.sub is not None and self.sub.returncode is None:
            self.sub.terminate()
            await self.sub.wait()
        if self.proc.poll() is None:
            self.proc.terminate()
            await asyncio.to_thread(self.proc.wait, 10)


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mqtt_available() -> bool:
    """The daemon has MQTT (daemon/mqtt, the [mqtt] section) and Mosquitto is here."""
    have_broker = bool(shutil.which("mosquitto")) or Path("/usr/sbin/mosquitto").exists()
    try:
        from daemon.config import Config

        has_section = "mqtt" in Config.model_fields
    except ImportError:
        has_section = False
    return (ROOT / "daemon" / "mqtt" / "__init__.py").exists() and has_section and have_broker


def _maker() -> CallMaker:
    maker = CallMaker()
    maker.numbers = [f"+1{ac}555{n:04d}" for n in range(100, 200) for ac in AREA_CODES]
    assert len(set(maker.numbers)) >= CALLS
    return maker


async def scrape(port: int) -> str:
    """One GET /metrics; the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data.decode()


async def one_run(variant: str, workdir: Path, maker: CallMaker) -> dict[str, Any]:
    """A fresh daemon with `variant`'s config; one burst; its figures."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=workdir))
    server = TimedServer()
    port = await server.start()
    broker = Mosquitto(run_dir) if variant == "mqtt+metrics" else None
    try:
        if broker is not None:
            await broker.up()
        async with simulator.running("sim800") as sim:
            db = run_dir / "textback.db"
            cfg = run_dir / "textback.toml"
            text = CONFIG.format(port=port, user=USER, secret=SECRET, device=sim.device, db=db)
            http_port = 0
            if variant != "off":
                http_port = free_port()
                text += (
                    f'\n[metrics]\ntextfile = "{run_dir / "textback.prom"}"\n'
                    f'listen = "127.0.0.1:{http_port}"\ninterval = "1s"\n'
                )
            if broker is not None:
                text += f'\n[mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\nsite = "bench"\n'
            cfg.write_text(text)
            notify = NotifyListener(run_dir / "notify.sock")
            daemon = Daemon(cfg, notify, env={"WATCHDOG_USEC": WATCHDOG_USEC})
            await daemon.start()
            try:
                await notify.wait_for("READY=1", 30)
                await asyncio.wait_for(server.up.wait(), 30)
                await daemon.wait_log("event=modem_ready", 30)
                if broker is not None:
                    await daemon.wait_log("mqtt", 30)
                await asyncio.sleep(1.0)  # start-up work settles
                assert daemon.proc is not None
                pid = daemon.proc.pid
                rss_idle = proc_mem(pid)["VmRSS"]
                cmgs = CmgsTimes(sim)
                sent0 = len(sim.sent)
                scrapes: list[str] = []
                stop_scraping = asyncio.Event()

                async def scraper() -> None:
                    while not stop_scraping.is_set():
                        scrapes.append(await scrape(http_port))
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop_scraping.wait(), 1.0)

                task = asyncio.create_task(scraper()) if http_port else None
                poll = DbPoll(db)
                spy = _profiler(pid, f".{variant}")
                cpu0 = proc_cpu(pid)
                try:
                    res = await burst(
                        server, sim, maker, poll, calls=CALLS, first=0, send_timeout=300
                    )
                finally:
                    poll.close()
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(30)
                    stop_scraping.set()
                    if task is not None:
                        await task
                res["cpu_s"] = proc_cpu(pid) - cpu0
                sent = sim.sent[sent0:]
                times = cmgs.times
                lat = [
                    times[k] - server.hangup_at[s.number]
                    for k, s in enumerate(sent)
                    if k < len(times) and s.number in server.hangup_at
                ]
                res["cmgs"] = len(times)
                res["latency"] = lat
                res["scrapes"] = len(scrapes)
                await asyncio.sleep(0.5)
                mem = proc_mem(pid)
                res["rss_idle"] = rss_idle
                res["rss"] = mem["VmRSS"]
                res["peak"] = mem["VmHWM"]
                res["duplicates"] = sim.duplicates
                if variant != "off":
                    prom = await scrape(http_port)  # now (the textfile is up to 1 s old)
                    m = re.search(r"^textback_hangup_to_submit_seconds_count (\S+)$", prom, re.M)
                    s_ = re.search(r"^textback_hangup_to_submit_seconds_sum (\S+)$", prom, re.M)
                    if m and s_:
                        res["hist_count"] = float(m.group(1))
                        res["hist_mean"] = float(s_.group(1)) / max(1.0, float(m.group(1)))
                daemon.signal(signal.SIGTERM)
                res["exit_code"] = await daemon.wait_exit(20)
                res["problems"] = sorted(
                    {
                        mm.group(1)
                        for ln in daemon.lines
                        if " WARNING " in ln or " ERROR " in ln or " CRITICAL " in ln
                        for mm in [re.search(r"event=(\S+)", ln)]
                        if mm is not None
                    }
                )
                return res
            finally:
                await daemon.kill()
                notify.close()
    finally:
        if broker is not None:
            await broker.stop()
        await server.close()


def run(quick: bool = False) -> dict[str, Any]:
    """Interleaved rounds of every variant; the result's "markdown" is its section."""
    rounds = 1 if quick else 4
    variants = ["off", "metrics"] + (["mqtt+metrics"] if mqtt_available() else [])
    maker = _maker()
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="textback-observe-", dir="/var/tmp") as tmp:
        for r in range(rounds):
            # rotate the order too: no variant always runs first after a quiet moment
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for v in order:
                print(f"  round {r + 1}/{rounds}: {v} ...", file=sys.stderr, flush=True)
                runs[v].append(asyncio.run(one_run(v, Path(tmp), maker)))
    out: dict[str, Any] = {"quick": quick, "rounds": rounds, "variants": variants}
    for v, rs in runs.items():
        lat = [x for r in rs for x in r["latency"]]
        out[v] = {
            "runs": len(rs),
            "texts": sum(r["sent"] for r in rs),
            "latency_n": len(lat),
            "p50_ms": pct(lat, 50) * 1000,
            "p99_ms": pct(lat, 99) * 1000,
            "p99_each_ms": [pct(r["latency"], 99) * 1000 for r in rs],
            "durable_s": statistics.median(r["durable_s"] for r in rs),
            "durable_max_s": max(r["durable_s"] for r in rs),
            "sent_s": statistics.median(r["sent_s"] for r in rs),
            "cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "rss_mb": statistics.median(r["rss"] for r in rs),
            "rss_idle_mb": statistics.median(r["rss_idle"] for r in rs),
            "peak_mb": max(r["peak"] for r in rs),
            "duplicates": sum(r["duplicates"] for r in rs),
            "exit_codes": sorted({r["exit_code"] for r in rs}),
            "problems": sorted({p for r in rs for p in r["problems"]}),
            "scrapes": sum(r["scrapes"] for r in rs),
            "hist_count": [r.get("hist_count") for r in rs],
            "hist_mean_ms": [
                round(r["hist_mean"] * 1000, 1) for r in rs if r.get("hist_mean") is not None
            ],
            "bench_mean_ms": [round(statistics.mean(r["latency"]) * 1000, 1) for r in rs],
        }
    out["loadavg"] = {"before": load0, "after": os.getloadavg()}
    out["markdown"] = markdown(out)
    return out


def markdown(r: dict[str, Any]) -> str:
    """The BENCHMARKS.md section."""
    base = r["off"]
    lines = [
        "## Metrics and MQTT on vs off (tests/bench/bench_observe.py)",
        "",
        f"{r['rounds']} interleaved round(s) of fresh daemons, each one burst of {CALLS:,} "
        "missed calls (Hangups written within 1 s, 1,000 distinct callers); texting latency "
        "= Hangup written -> its AT+CMGS at the simulator. metrics: textfile and endpoint, "
        '`interval = "1s"`, scraped every second during the burst.',
        "",
    ]
    if "mqtt+metrics" not in r["variants"]:
        lines += [
            "MQTT not measured: daemon/mqtt or Mosquitto is not there in this checkout.",
            "",
        ]
    lines += [
        "| variant | durable (median / worst) | texting p50 / p99 | p99 vs off | all sent | "
        "daemon CPU in the burst (vs off) | RSS idle / after / peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in r["variants"]:
        x = r[v]
        ratio = x["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("nan")
        lines.append(
            f"| {v} | {x['durable_s']:.2f} s / {x['durable_max_s']:.2f} s | "
            f"{x['p50_ms']:.0f} ms / {x['p99_ms']:.0f} ms | {ratio:.3f}x | "
            f"{x['sent_s']:.2f} s ({x['texts']:,} texts) | {x['cpu_s']:.2f} s "
            f"({x['cpu_s'] / base['cpu_s']:.3f}x) | "
            f"{x['rss_idle_mb']:.1f} / {x['rss_mb']:.1f} / {x['peak_mb']:.1f} MB |"
        )
    lines.append("")
    t = TARGETS
    for v in r["variants"]:
        if v == "off":
            continue
        x = r[v]
        ratio = x["p99_ms"] / base["p99_ms"]
        lines.append(
            f"- {v}: durable < {t['durable_s']:.0f} s: "
            f"{'met' if x['durable_max_s'] < t['durable_s'] else '**missed**'}; "
            f"p99 within 10% of off: {'met' if ratio <= t['p99_ratio'] else '**missed**'} "
            f"({ratio:.3f}x); RSS < {t['rss_mb']:.0f} MB: "
            f"{'met' if x['peak_mb'] < t['rss_mb'] else '**missed**'}. "
            f"Per-round p99: {', '.join(f'{p:.0f}' for p in x['p99_each_ms'])} ms "
            f"(off: {', '.join(f'{p:.0f}' for p in base['p99_each_ms'])} ms). "
            f"Scrapes during bursts: {x['scrapes']}. The daemon's own histogram counted "
            f"{', '.join(str(int(c or 0)) for c in x['hist_count'])} texts, mean "
            f"{', '.join(str(m) for m in x['hist_mean_ms'])} ms (this bench's mean: "
            f"{', '.join(str(m) for m in x['bench_mean_ms'])} ms)."
        )
    for v in r["variants"]:
        x = r[v]
        if x["duplicates"] or x["exit_codes"] != [0] or x["problems"]:
            lines.append(
                f"- {v}: duplicates {x['duplicates']}, exit codes {x['exit_codes']}, "
                f"warnings {', '.join(x['problems']) or 'none'}"
            )
    load = r["loadavg"]
    lines += [
        "",
        f"Load average before/after: {load['before'][0]:.2f} / {load['after'][0]:.2f}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run it alone: `python -m tests.bench.bench_observe [--quick]`."""
    quick = "--quick" in (argv if argv is not None else sys.argv[1:])
    print(run(quick)["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
