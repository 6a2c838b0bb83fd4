"""Several offices over brokers (issue 14, Measured): 2 sites, 1 then 2 then 4 senders.

Real processes on loopback: the central Mosquitto (`set_tcp_nodelay true`, as the README
advises), a site-side Mosquitto bridged to it with the lines of
config/mosquitto-bridge.conf (tests/test_sites_bridge.SiteBroker), site "north" (`textback
run`, `[sending] via = "broker"`) on its own broker behind the bridge, site "south"
directly on the central broker, and N senders (`[jobs] serve`, `[ami] enabled = false`)
on the central broker, each with one simulator modem that takes 3 s per text
(`accept_delay`: between a message body and its +CMGS). Each site's fake PBX
(bench_service.BenchServer) writes missed calls from distinct fictional callers.

1. Throughput: both sites' bursts written at once, TEXTS_PER_SENDER texts per sender in
   all (the burst grows with N, so every run sends for about the same time); from the
   write to the last text `sent` in the two sites' databases. Baseline: the 1-sender run
   of the same module run; target: N senders at least 0.9 x N times its throughput.
2. Latency: then one call at a time, alternating sites (nothing queues anywhere), job
   published -> result back, both timed by a subscriber on the site's own broker (north's
   local one, south's the central one), minus the modem's own time for that text (the
   simulator notes when AT+CMGS came and when it answered +CMGS). For this phase the
   modems take LATENCY_MODEM s per text: the time is subtracted anyway, and 3 s would
   only make the samples few. Target: p99 under 100 ms. The section also splits each
   job's time into its steps (a sender's claim and the site's grant, when senders claim
   jobs; AT+CMGS; the modem; the result), as the site's broker and the simulator saw them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
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
    pct,
    proc_cpu,
)
from tests.daemonproc import Daemon, running_daemon
from tests.mqtt_support import Heard, Mosquitto, Recorder, free_port
from tests.test_sites_bridge import GROUP, site_broker

#: Seconds each simulated modem takes per text in the throughput phase.
PER_TEXT = 3.0
#: Seconds per text in the latency phase (subtracted from every sample).
LATENCY_MODEM = 0.3
#: Texts per sender in a throughput run (full; --quick: QUICK_PER_SENDER). Even: the
#: burst is split between the two sites.
TEXTS_PER_SENDER = 20
QUICK_PER_SENDER = 2
#: Paced calls per run in the latency phase (half at each site).
LATENCY_CALLS = 40
QUICK_LATENCY_CALLS = 6
SENDERS = (1, 2, 4)
#: A job's final result states (a sender's claim on a job travels as a result too).
FINAL = ("sent", "failed", "uncertain", "expired", "refused")
#: The pass marks: throughput per sender against the 1-sender run; overhead p99.
TARGET = 0.9
OVERHEAD_P99_MS = 100.0
PROFILES = ("sim800", "huawei", "quectel", "wavecom")
#: north sits behind its own broker (the bridge); south is on the central one.
SITES = ("north", "south")
#: Fictional callers: +1 202 555 0100-0149 call north, 0150-0199 south.
CALLERS = {
    "north": [f"+1202555{n:04d}" for n in range(100, 150)],
    "south": [f"+1202555{n:04d}" for n in range(150, 200)],
}


class CentralBroker(Mosquitto):
    """The central broker as README "Several offices" has it: `set_tcp_nodelay true`
    (without it a message right after an acknowledgement waits up to 40 ms)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        with self.conf.open("a", encoding="utf-8") as f:
            f.write("set_tcp_nodelay true\n")


@contextlib.asynccontextmanager
async def central_broker(workdir: Path) -> AsyncIterator[CentralBroker]:
    """A started central broker, stopped afterwards."""
    b = CentralBroker(workdir)
    b.start()
    try:
        yield b
    finally:
        b.stop()


class TimedSim(simulator.Simulator):
    """A simulator that notes, per text, when AT+CMGS came and when +CMGS: answered."""

    def __init__(self, profile: str, faults: simulator.Faults) -> None:
        super().__init__(profile, faults)
        self._cmgs_at: float | None = None
        #: (number, AT+CMGS arrived, +CMGS: written), time.monotonic()
        self.modem_times: list[tuple[str, float, float]] = []
        self.on_command = self._heard

    def _heard(self, line: str) -> None:
        if line[:7].upper() == "AT+CMGS":
            self._cmgs_at = time.monotonic()

    def _send(self, data: bytes) -> None:
        # every byte the modem says passes here: the +CMGS answer is the end of its time
        if b"+CMGS:" in data and self._cmgs_at is not None and self.parts:
            self.modem_times.append((self.parts[-1].number, self._cmgs_at, time.monotonic()))
            self._cmgs_at = None
        super()._send(data)


@contextlib.asynccontextmanager
async def timed_sim(profile: str, faults: simulator.Faults) -> AsyncIterator[TimedSim]:
    """A started TimedSim, stopped afterwards."""
    sim = TimedSim(profile, faults)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def site_toml(site: str, port: int, db: Path, url: str) -> str:
    """A site: the bench's PBX config, texts via the broker."""
    text = CONFIG.format(port=port, user=USER, secret=SECRET, device="unused", db=db)
    return text + (
        f'\n[mqtt]\nurl = "{url}"\nsite = "{site}"\ndiscovery = false\n'
        f'[sending]\nvia = "broker"\n[jobs]\ngroup = "{GROUP}"\n'
    )


def sender_toml(name: str, device: str, db: Path, url: str) -> str:
    """A sender: no PBX, one modem, jobs served."""
    text = CONFIG.format(port=free_port(), user=USER, secret=SECRET, device=device, db=db)
    text = re.sub(r"(?m)^\[ami\]\n", "[ami]\nenabled = false\n", text, count=1)
    return text + (
        f'\n[mqtt]\nurl = "{url}"\nsite = "{name}"\ndiscovery = false\n'
        f'[jobs]\nserve = true\ngroup = "{GROUP}"\n'
    )


@dataclass
class Site:
    """One site's PBX, daemon, database and the subscriber on its broker."""

    name: str
    server: BenchServer
    maker: CallMaker
    daemon: Daemon
    poll: DbPoll
    heard: Recorder
    #: One dict per paced call (one_sample).
    samples: list[dict[str, float]] = field(default_factory=list)

    @property
    def jobs(self) -> str:
        return f"textback/jobs/{self.name}"

    @property
    def results(self) -> str:
        return f"textback/{self.name}/results"

    @property
    def grants(self) -> str:
        return f"textback/{self.name}/grants"


async def one_sample(s: Site, sims: list[TimedSim], index: int) -> dict[str, float]:
    """One missed call at site `s` while nothing else is under way: the times of its job,
    of a sender's claim and the site's grant (when the senders claim jobs), of the
    modem's AT+CMGS and +CMGS answer and of the final result, from `job` on."""
    k = len(s.heard.on(s.jobs))
    before, hangup, after = s.maker.render(index, time.time())
    written = s.server.write(before + hangup + after)
    await s.heard.wait(lambda: len(s.heard.on(s.jobs)) > k, 30, "a job")
    job = s.heard.on(s.jobs)[k]
    job_id, dest = job.json()["job_id"], job.json()["destination"]

    def about(topic: str, final: bool | None) -> list[Heard]:
        return [
            h
            for h in s.heard.on(topic)
            if h.json()["job_id"] == job_id
            and (final is None or (h.json().get("state") in FINAL) == final)
        ]

    await s.heard.wait(lambda: bool(about(s.results, True)), 30, f"the result of {job_id}")
    # its AT+CMGS came after the call was written: one text, one modem, nothing else going
    ((cmd, ans),) = [
        (c, a)
        for sim in sims
        for number, c, a in sim.modem_times
        if number == dest and c >= written
    ]
    out = {
        "job": 0.0,
        "cmgs": cmd - job.at,
        "answered": ans - job.at,
        "result": about(s.results, True)[0].at - job.at,
    }
    claims, grants = about(s.results, False), about(s.grants, None)
    if claims and grants:
        out["claim"] = claims[0].at - job.at
        out["grant"] = grants[0].at - job.at
    return out


async def _daemon(stack: contextlib.AsyncExitStack, workdir: Path, toml: str) -> Daemon:
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before the run
    cfg = workdir / "textback.toml"
    cfg.write_text(toml)
    return await stack.enter_async_context(
        running_daemon(cfg, workdir, env={"WATCHDOG_USEC": WATCHDOG_USEC})
    )


async def one_run(workdir: Path, n: int, per_sender: int, latency_calls: int) -> dict[str, Any]:
    """Both sites' bursts through `n` senders, then the paced latency samples."""
    total = per_sender * n
    res: dict[str, Any] = {"senders": n, "texts": total}
    async with contextlib.AsyncExitStack() as stack:
        (workdir / "central").mkdir(parents=True)
        central = await stack.enter_async_context(central_broker(workdir / "central"))
        bridge = await stack.enter_async_context(Recorder(central, ("textback/north/bridge",)))
        local = await stack.enter_async_context(site_broker(workdir / "north-broker", central))
        # the bridge's own notification, retained at the central broker: it is up
        up = "textback/north/bridge"
        await bridge.wait(lambda: [h.payload for h in bridge.on(up)][-1:] == [b"1"], 30, up)
        sims = [
            await stack.enter_async_context(
                timed_sim(PROFILES[i % len(PROFILES)], simulator.Faults(accept_delay=PER_TEXT))
            )
            for i in range(n)
        ]
        senders = [
            await _daemon(
                stack,
                workdir / f"bank{i}",
                sender_toml(f"bank{i}", sim.device, workdir / f"bank{i}" / "s.db", central.url),
            )
            for i, sim in enumerate(sims)
        ]
        started = []
        for name, on in (("north", local), ("south", central)):
            server = BenchServer()
            port = await server.start()
            stack.push_async_callback(server.close)
            db = workdir / name / "site.db"
            daemon = await _daemon(stack, workdir / name, site_toml(name, port, db, on.url))
            heard = await stack.enter_async_context(
                Recorder(on, tuple(f"textback/{t}" for t in (f"jobs/{name}", f"{name}/#")))
            )
            started.append((name, server, daemon, heard, db))
        for d in senders:
            await d.notify.wait_for("READY=1", 60)
            await d.wait_log("event=jobs_link_up", 60)
            await d.wait_log("event=modem_ready", 60)
        sites: list[Site] = []
        for name, server, daemon, heard, db in started:
            await daemon.notify.wait_for("READY=1", 60)
            await daemon.wait_log("event=jobs_link_up", 60)
            await asyncio.wait_for(server.up.wait(), 60)
            maker = CallMaker()
            maker.numbers = CALLERS[name]
            poll = DbPoll(db)
            stack.callback(poll.close)
            sites.append(Site(name, server, maker, daemon, poll, heard))
        pids = [d.proc.pid for d in (*senders, *(s.daemon for s in sites)) if d.proc]

        # -- 1. throughput: both bursts at once
        half = total // len(sites)
        bursts = [
            b"".join(a + b + c for a, b, c in (s.maker.render(i, time.time()) for i in range(half)))
            for s in sites
        ]
        cpu0 = sum(proc_cpu(p) for p in pids)
        t0 = time.monotonic()
        for s, data in zip(sites, bursts, strict=True):
            s.server.write(data)
        for s in sites:
            await s.server.drain()
        deadline = t0 + total * PER_TEXT / n * 3 + 60
        sql = "SELECT count(*) FROM messages WHERE state = 'sent'"
        while sum(s.poll.count(sql) for s in sites) < total:
            if time.monotonic() > deadline:
                tails = "\n\n".join(
                    "\n".join(d.lines[-15:]) for d in (*senders, *(s.daemon for s in sites))
                )
                raise TimeoutError(f"bench_sites: {n} senders did not send {total} texts:\n{tails}")
            await asyncio.sleep(0.05)
        res["elapsed_s"] = time.monotonic() - t0
        res["cpu_ms_per_text"] = 1000 * (sum(proc_cpu(p) for p in pids) - cpu0) / total
        numbers = [p.number for sim in sims for p in sim.parts]
        res["duplicates"] = sum(k - 1 for k in collections.Counter(numbers).values())
        res["per_sender"] = [len(sim.parts) for sim in sims]
        res["not_sent"] = sum(
            s.poll.count("SELECT count(*) FROM messages WHERE state != 'sent'") for s in sites
        )

        # -- 2. latency: one call at a time, alternating sites
        for sim in sims:
            sim.faults.accept_delay = LATENCY_MODEM
        for j in range(latency_calls):
            s = sites[j % len(sites)]
            s.samples.append(await one_sample(s, sims, half + j // len(sites)))
        res["latency"] = {s.name: s.samples for s in sites}
    per_3s = total / res["elapsed_s"] * PER_TEXT
    res["per_3s"] = per_3s
    return res


async def _main(quick: bool) -> list[dict[str, Any]]:
    per = QUICK_PER_SENDER if quick else TEXTS_PER_SENDER
    calls = QUICK_LATENCY_CALLS if quick else LATENCY_CALLS
    out = []
    with tempfile.TemporaryDirectory(prefix="textback-bench-sites-") as tmp:
        for n in SENDERS:
            print(f"  {n} senders: {per * n} texts ...", file=sys.stderr, flush=True)
            out.append(await one_run(Path(tmp) / f"run{n}", n, per, calls))
    base = out[0]["per_3s"]
    for r in out:
        r["x_base"] = r["per_3s"] / base
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """The benchmark; its "markdown" entry is the BENCHMARKS.md section."""
    runs = asyncio.run(_main(quick))
    return {"runs": runs, "markdown": markdown(runs, quick)}


#: The steps of one job (one_sample's keys): from, to, what happens in between. The
#: claim and grant appear when the senders claim jobs (then job -> AT+CMGS is split).
STEPS = (
    ("job", "claim", "job -> a sender's claim"),
    ("claim", "grant", "claim -> the site's grant"),
    ("grant", "cmgs", "grant -> AT+CMGS"),
    ("job", "cmgs", "job -> AT+CMGS"),
    ("cmgs", "answered", "the modem"),
    ("answered", "result", "+CMGS -> result at the site"),
)


def _all(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    return [x for r in runs for samples in r["latency"].values() for x in samples]


def _ms(values: list[float], q: float) -> str:
    return f"{1000 * pct(values, q):.1f}"


def markdown(runs: list[dict[str, Any]], quick: bool) -> str:
    """The BENCHMARKS.md section."""
    per = QUICK_PER_SENDER if quick else TEXTS_PER_SENDER
    calls = QUICK_LATENCY_CALLS if quick else LATENCY_CALLS
    lines = [
        "## Several offices over brokers (bench_sites)",
        "",
        "Real processes over loopback: the central Mosquitto (`set_tcp_nodelay true`, as the"
        " README advises); site `north` (`textback run`,"
        ' `[sending] via = "broker"`) on its own Mosquitto, bridged to the central one with'
        " the lines of `config/mosquitto-bridge.conf`; site `south` directly on the central"
        " broker; N senders (`[jobs] serve`) on the central broker, each with one simulator"
        f" modem taking {PER_TEXT:g} s per text. Results from a shared machine (2 CPUs,"
        " other agents' tests and benchmarks running): compare the ratios within this run.",
        "",
        f"Throughput: both sites' bursts of missed calls written at once, {per} texts per"
        " sender in all (half at each site), from the write to the last text `sent` in the"
        " two sites' databases. Baseline: the 1-sender run; target: N senders at least"
        f" {TARGET:g} x N times the baseline.",
        "",
        "| senders | texts | sent per sender | seconds | texts per 3 s | x baseline | target |"
        " daemons' CPU per text | duplicates | not sent |",
        "|---:|---:|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in runs:
        n = r["senders"]
        ok = "ok" if r["x_base"] >= TARGET * n else "MISSED"
        lines.append(
            f"| {n} | {r['texts']} | {'/'.join(map(str, r['per_sender']))} |"
            f" {r['elapsed_s']:.1f} | {r['per_3s']:.2f} | {r['x_base']:.2f} |"
            f" >= {TARGET * n:.1f}: {ok} | {r['cpu_ms_per_text']:.1f} ms |"
            f" {r['duplicates']} | {r['not_sent']} |"
        )
    lines += [
        "",
        f"Latency: then {calls} calls one at a time, alternating sites, so nothing queues:"
        " job published -> its final result back, both timed by a subscriber on the site's"
        " own broker (north's local one, south's the central one), minus the modem's own time"
        " for that text (from AT+CMGS to its +CMGS answer, noted by the simulator;"
        f" {LATENCY_MODEM:g} s per text in this phase, since it is subtracted anyway)."
        f" Target: p99 under {OVERHEAD_P99_MS:g} ms. north's path has two more broker hops"
        " (site broker -> bridge -> central broker, and back).",
        "",
        "| senders | site | samples | job -> result, p50 | minus the modem: p50 | p99 | max |"
        " target |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        for site, samples in r["latency"].items():
            raw = [x["result"] for x in samples]
            over = [x["result"] - (x["answered"] - x["cmgs"]) for x in samples]
            ok = "ok" if 1000 * pct(over, 99) < OVERHEAD_P99_MS else "MISSED"
            lines.append(
                f"| {r['senders']} | {site}{' (bridged)' if site == 'north' else ''} |"
                f" {len(over)} | {_ms(raw, 50)} ms | {_ms(over, 50)} ms | {_ms(over, 99)} ms |"
                f" {1000 * max(over):.1f} ms | < {OVERHEAD_P99_MS:g} ms: {ok} |"
            )
    steps = [(a, b, what) for a, b, what in STEPS if all(b in x for x in _all(runs))]
    lines += [
        "",
        "Where the time goes (p50 over every run's samples, ms; times as the site's broker"
        " and the simulator saw them):",
        "",
        "| site | " + " | ".join(what for _, _, what in steps) + " |",
        "|---|" + "---:|" * len(steps),
    ]
    for site in SITES:
        samples = [x for r in runs for x in r["latency"][site]]
        cells = [_ms([x[b] - x[a] for x in samples], 50) for a, b, _ in steps]
        lines.append(f"| {site} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.bench.bench_sites [--quick]`: print the section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(run(quick=args.quick)["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
