"""MQTT benchmark: Hangup -> `missed_call` event at a subscriber, on the real daemon.

Run: `.venv/bin/python -m tests.bench.bench_mqtt [--quick]` (or `make bench`).

The real `textback run` process (as in bench_service: the fake Asterisk writing trace 02
calls with fresh ids and fictional callers, the modem simulator on a pty, a real SQLite
file) with `[mqtt]` pointing at a real Mosquitto started here on a loopback port; a real
aiomqtt subscriber in this process. One call at a time: the call's events up to its
final Hangup, then the Hangup alone (time taken when the write returns), and the time the
subscriber receives that call's `missed_call` event; the next call once its text is sent.
Then a burst of calls whose Hangups are written at once, with MQTT on and (a second
daemon) off: the time from each Hangup to its AT+CMGS at the simulator, and the daemon's
RSS after the burst. (Prometheus metrics are not on in either run.)
"""

from __future__ import annotations

import asyncio
import statistics
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
    BenchServer,
    CallMaker,
    Cmgs,
    pct,
    proc_mem,
    until,
)
from tests.daemonproc import Daemon, NotifyListener
from tests.mqtt_support import Mosquitto, Recorder

TARGET_P99_MS = 20.0


def _config(workdir: Path, port: int, device: str, url: str | None, name: str) -> Path:
    cfg = workdir / f"{name}.toml"
    text = CONFIG.format(
        port=port, user=USER, secret=SECRET, device=device, db=workdir / f"{name}.db"
    )
    if url:
        text += f'\n[mqtt]\nurl = "{url}"\nsite = "bench"\n'
    cfg.write_text(text)
    return cfg


async def _session(
    workdir: Path,
    maker: CallMaker,
    *,
    url: str | None,
    rec: Recorder | None,
    paced: int,
    burst: int,
    first: int,
    name: str,
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    server = BenchServer()
    port = await server.start()
    try:
        async with simulator.running("sim800") as sim:
            cmgs = Cmgs(sim)
            notify = NotifyListener(workdir / f"{name}.sock")
            d = Daemon(_config(workdir, port, sim.device, url, name), notify)
            await d.start()
            try:
                await notify.wait_for("READY=1", 30)
                await asyncio.wait_for(server.up.wait(), 30)
                await d.wait_log("event=modem_ready", 30)
                if rec is not None:
                    await rec.wait(lambda: rec.on("textback/bench/state"), 30, "state")
                await asyncio.sleep(1.0)
                lat: list[float] = []
                for i in range(first, first + paced):
                    before, hangup, after = maker.render(i, time.time())
                    server.write(before)
                    await server.drain()
                    seen = len(rec.on("textback/bench/event/missed_call")) if rec else 0
                    sent = len(sim.sent)
                    t0 = server.write(hangup + after)
                    if rec is not None:
                        await rec.wait(
                            lambda s=seen: len(rec.on("textback/bench/event/missed_call")) > s,
                            10,
                            "missed_call",
                        )
                        lat.append(rec.on("textback/bench/event/missed_call")[-1].at - t0)
                    await until(lambda s=sent: len(sim.sent) > s, 30, "text")
                res["paced_ms"] = [1000 * x for x in lat]
                # burst: every Hangup written at once
                start = first + paced
                frames = [maker.render(i, time.time()) for i in range(start, start + burst)]
                server.write(b"".join(b for b, _, _ in frames))
                await server.drain()
                n0 = len(cmgs.times)
                t0 = server.write(b"".join(h + a for _, h, a in frames))
                total = len(sim.sent) + burst
                await until(lambda: len(sim.sent) >= total, 600, "burst texted")
                assert d.proc is not None
                res["burst_sent"] = len(sim.sent) - paced
                res["burst_s"] = time.monotonic() - t0
                res["rss_mb"] = proc_mem(d.proc.pid).get("VmHWM", 0.0)
                burst_lat = [1000 * (t - t0) for t in cmgs.times[n0:]]
                res["burst_p50_ms"] = pct(burst_lat, 50)
                res["burst_p99_ms"] = pct(burst_lat, 99)
                res["duplicates"] = sim.duplicates
            finally:
                await d.kill()
                notify.close()
    finally:
        await server.close()
    return res


async def _main(quick: bool) -> dict[str, Any]:
    paced = 100 if quick else 300
    # 1,000 calls at the simulator's pace take minutes per run: bench_observe has that burst
    burst = 200 if quick else 300
    maker = CallMaker()
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir)
        broker.start()
        try:
            async with Recorder(broker, topics=("textback/bench/#",)) as rec:
                on = await _session(
                    workdir,
                    maker,
                    url=broker.url,
                    rec=rec,
                    paced=paced,
                    burst=burst,
                    first=0,
                    name="on",
                )
                on["events_heard"] = len(rec.on("textback/bench/event/missed_call"))
            off = await _session(
                workdir,
                maker,
                url=None,
                rec=None,
                paced=0,
                burst=burst,
                first=paced + burst,
                name="off",
            )
        finally:
            broker.stop()
    return {"on": on, "off": off, "paced": paced, "burst": burst}


def run(quick: bool = False) -> dict[str, Any]:
    """The benchmark; its "markdown" is the section for BENCHMARKS.md."""
    r = asyncio.run(_main(quick))
    lat = r["on"]["paced_ms"]
    r["p50_ms"], r["p99_ms"] = pct(lat, 50), pct(lat, 99)
    r["markdown"] = markdown(r)
    return r


def markdown(r: dict[str, Any]) -> str:
    """The results as a BENCHMARKS.md section."""
    on, off = r["on"], r["off"]
    lat = on["paced_ms"]
    return "\n".join(
        [
            "## MQTT (real daemon, real Mosquitto, loopback)",
            "",
            f"Hangup -> `missed_call` received by a subscriber, {len(lat)} calls one at a "
            f"time: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {max(lat):.1f} ms "
            f"(target p99 < {TARGET_P99_MS:g} ms), mean {statistics.mean(lat):.1f} ms.",
            "",
            f"Burst of {r['burst']} calls, Hangups written at once (Hangup -> AT+CMGS; the "
            "simulator sends one at a time, so p99 is the whole burst): MQTT on: "
            f"{on['burst_sent']} texted in {on['burst_s']:.1f} s, p50 {on['burst_p50_ms']:.0f} "
            f"ms, p99 {on['burst_p99_ms']:.0f} ms, peak RSS {on['rss_mb']:.0f} MB; MQTT off: "
            f"{off['burst_sent']} in {off['burst_s']:.1f} s, p50 {off['burst_p50_ms']:.0f} ms, "
            f"p99 {off['burst_p99_ms']:.0f} ms, peak RSS {off['rss_mb']:.0f} MB "
            f"(p99 on/off {on['burst_p99_ms'] / off['burst_p99_ms']:.2f}). Duplicates: "
            f"{on['duplicates']} / {off['duplicates']}. "
            "Prometheus metrics were off in both runs.",
        ]
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv)["markdown"])
