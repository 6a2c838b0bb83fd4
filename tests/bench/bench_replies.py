"""Replies benchmark: inbound texts -> mail, and inbound texts during a burst of sends.

Run: `.venv/bin/python -m tests.bench.bench_replies [--quick]` (or `make bench`).

Everything runs against the real daemon process (`python -m daemon.cli run`), with the
helpers of tests/bench/bench_service.py: the fake Asterisk (its BenchServer over loopback
TCP), the modem simulator on a real pty, the same calls (trace 02 with fresh ids and
callers from the fictional 555-01xx blocks of eight area codes) and the same burst. This
process starts a real SMTP server as a process of its own (tests/bench/smtp_sink.py:
aiosmtpd's Controller on a free loopback port, each mail's arrival time reported back);
the daemon forwards every reply there (`[replies] forward_email`, `[smtp] tls = "none"`).
Inbound texts come in through the simulator's `inject_text` (stored on the SIM,
announced with +CMTI, as the driver configures the SIM800).

1. Reply -> mail: one missed call (and its text) per number first, then one reply from
   each number, a few per second; each is timed from `inject_text` to the SMTP server's
   `handle_DATA` (both in this process, wall clock). Baseline, interleaved with it in the
   same run: a direct `aiosmtplib.send` from this process of the same mail (a copy of a
   mail the daemon sent, same size) to the same server, timed the same way.
2. Inbound during a burst: bench_service's 1,000-call burst. Each round: a burst alone;
   a minute of inbound texts at the rate the issue names (1,000 in a minute; 100 in 6 s
   with --quick) with bursts inside it (at 1/4, 2/4 and 3/4 of the minute; one, half way,
   with --quick); a burst alone; a harsh stream (as many texts, spread over the time a
   burst alone took to be texted) with a burst from its start. Outbound latency per
   text: the Hangup written -> AT+CMGS at the simulator (texts matched to calls by
   number); medians over the bursts with a stream against the median over the bursts
   alone. Afterwards the daemon's SQLite file must hold every call and every reply (by
   a token in each text), and the SMTP server must have had every mail.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import email
import email.policy
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib

from gsm import simulator
from tests.bench.bench_service import (
    CONFIG,
    SECRET,
    USER,
    WATCHDOG_USEC,
    BenchServer,
    CallMaker,
    Cmgs,
    DbPoll,
    _level,
    _profiler,
    burst,
    pct,
    proc_cpu,
    until,
)
from tests.daemonproc import Daemon, NotifyListener

#: Reply received from the modem -> mail accepted (issue 9).
TARGET_MAIL_P99_S = 2.0
#: Outbound p99 with inbound texts / without, at most (issue 9).
TARGET_RATIO = 1.10
#: Replies per second in part 1 ("a few per second").
REPLY_RATE = 5.0
#: The issue's inbound rate: this many texts ...
STREAM_TEXTS = 1000
#: ... in this many seconds.
STREAM_WINDOW = 60.0
#: A marker of each reply's text, found again in the mail and in the database.
_REF = re.compile(rb"ref ([a-z0-9]+)")
_NEWCHANNEL = b"Event: Newchannel"

EXTRA = """
[replies]
forward_email = ["desk@example.com"]
# every reply mailed: senders repeat across rounds; the flood summary is another path
forward_per_hour = 100

[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from_address = "textback@example.com"
"""


def reply_text(token: str) -> str:
    """A plain reply (no keyword, no automatic answer) carrying its token."""
    return f"Can you call me back after 5? ref {token}"


# -- the SMTP server ---------------------------------------------------------------------


class Mailbox:
    """The SMTP server (tests/bench/smtp_sink.py, a process of its own): when each mail's
    DATA was handed over, by the token in it."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.content: dict[str, bytes] = {}
        self.untagged = 0
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Start the server process; its port."""
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.bench.smtp_sink",
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )
        assert self._proc.stdout is not None
        first = await asyncio.wait_for(self._proc.stdout.readline(), 30)
        if not first.startswith(b"PORT "):
            raise RuntimeError(f"smtp_sink said {first!r}")
        self.port = int(first.split()[1])
        self._reader = asyncio.create_task(self._read(self._proc.stdout))
        return self.port

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        while line := await stdout.readline():
            mail = json.loads(line)
            token = mail["token"]
            if token is None:
                self.untagged += 1
                continue
            self.at[token] = float(mail["at"])
            if mail["content"] is not None:
                self.content[token] = base64.b64decode(mail["content"])

    async def stop(self) -> None:
        """Stop the server process (every mail line it wrote read first)."""
        if self._proc is None:
            return
        if self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
        await self._proc.wait()
        if self._reader is not None:
            await self._reader


# -- measuring ---------------------------------------------------------------------------


class TimedServer(BenchServer):
    """bench_service's server, noting when each write returned and how many calls it held."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[float, int]] | None = None

    def write(self, data: bytes) -> float:
        t = super().write(data)
        if self.writes is not None:
            self.writes.append((t, data.count(_NEWCHANNEL)))
        return t


def outbound_latencies(
    maker: CallMaker,
    first: int,
    writes: list[tuple[float, int]],
    cmgs: list[float],
    parts: list[simulator.PartRecord],
) -> dict[str, Any]:
    """Per text: its AT+CMGS time minus the final-Hangup write of the earliest call from
    its number not matched yet (a repeat caller merged into a queued text stays unmatched)."""
    per_call = maker.body.count(_NEWCHANNEL)
    hangups: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
    index = first
    for t, channels in writes:
        for _ in range(channels // per_call):
            hangups[maker.numbers[index % len(maker.numbers)]].append(t)
            index += 1
    lat = []
    stray = 0
    for t, part in zip(cmgs, parts, strict=False):
        queue = hangups.get(part.number)
        if queue:
            lat.append(t - queue.popleft())
        else:
            stray += 1
    return {
        "calls": index - first,
        "lat": lat,
        "unmatched_calls": sum(len(q) for q in hangups.values()),
        "stray_texts": stray,
        "cmgs_vs_parts": (len(cmgs), len(parts)),
    }


def summary(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """n, p50, p99, max (in ms by default)."""
    if not values:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {
        "n": len(values),
        "p50": pct(values, 50) * scale,
        "p99": pct(values, 99) * scale,
        "max": max(values) * scale,
    }


async def wait_done(predicate: Any, timeout: float) -> bool:
    """Like bench_service.until, but says False instead of raising."""
    try:
        await until(predicate, timeout, "")
    except TimeoutError:
        return False
    return True


async def stream_texts(
    sim: simulator.Simulator,
    texts: list[tuple[str, str]],
    window: float,
    injected: dict[str, float],
    out: dict[str, Any],
) -> None:
    """Inject (number, token) texts evenly over `window` seconds; note when each went in,
    the most texts on the SIM at once, and what broke, if anything."""
    n = len(texts)
    start = time.monotonic()
    i = 0
    peak = 0
    while i < n:
        due = min(n, int((time.monotonic() - start) / window * n) + 1)
        while i < due:
            number, token = texts[i]
            try:
                sim.inject_text(number, reply_text(token))
            except Exception as exc:  # the simulator's SIM is full, or worse: say so
                out["error"] = (
                    f"inject_text #{i + 1} of {n} raised {type(exc).__name__}: {exc!r}"
                    f" with {len(sim.stored('SM'))} texts on the SIM"
                )
                out["injected"] = i
                out["sim_peak"] = max(peak, len(sim.stored("SM")))
                return
            injected[token] = time.time()
            i += 1
        peak = max(peak, len(sim.stored("SM")))
        # Sleep until the next text is due (at most 50 ms, so the peak is still sampled
        # during a harsh stream): this process also runs the simulator that answers every
        # AT command of the burst, and waking every 2 ms to find nothing due cost it ~10%
        # more CPU in the bursts with a stream than in those alone, a cost no modem has.
        next_due = start + i * window / n
        await asyncio.sleep(min(0.05, max(0.0, next_due - time.monotonic())))
    out["injected"] = n
    out["stream_s"] = time.monotonic() - start
    # texts still arrive on the SIM after the last injection only if the daemon lags
    while (sim.stored("SM") or sim.network_held) and time.monotonic() - start < window + 60:
        peak = max(peak, len(sim.stored("SM")))
        await asyncio.sleep(0.005)
    out["sim_peak"] = peak


def stored_replies(poll: DbPoll, after_id: int) -> tuple[dict[str, float], int, int]:
    """Replies with id > after_id: token -> received_at, rows, rows without a token."""
    rows = poll.db.execute(
        "SELECT text, received_at FROM replies WHERE id > ?", (after_id,)
    ).fetchall()
    got: dict[str, float] = {}
    untagged = 0
    for text, received_at in rows:
        m = _REF.search(str(text).encode())
        if m is None:
            untagged += 1
        else:
            got[m.group(1).decode()] = float(received_at)
    return got, len(rows), untagged


def max_id(poll: DbPoll, table: str) -> int:
    return poll.count(f"SELECT coalesce(max(id), 0) FROM {table}")


# -- part 1: reply -> mail -----------------------------------------------------------------


async def reply_to_mail(
    sim: simulator.Simulator,
    maker: CallMaker,
    mailbox: Mailbox,
    poll: DbPoll,
    *,
    smtp_port: int,
    n: int,
) -> dict[str, Any]:
    """n replies (numbers 1..n, texted before) with a direct send interleaved."""
    # warm-up: number 0's reply; its mail is the baseline's template
    sim.inject_text(maker.numbers[0], reply_text("w0000"))
    await until(lambda: "w0000" in mailbox.at, 30, "the warm-up reply's mail")
    template = mailbox.content["w0000"]
    last_reply = max_id(poll, "replies")
    injected: dict[str, float] = {}
    base_start: dict[str, float] = {}
    base_return: dict[str, float] = {}
    period = 1.0 / REPLY_RATE
    start = time.monotonic()
    for i in range(1, n + 1):
        tick = start + (i - 1) * period
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
        token = f"r{i:04d}"
        injected[token] = time.time()
        sim.inject_text(maker.numbers[i], reply_text(token))
        await asyncio.sleep(max(0.0, tick + period / 2 - time.monotonic()))
        btoken = f"b{i:04d}"
        msg = email.message_from_bytes(
            template.replace(b"ref w0000", f"ref {btoken}".encode()), policy=email.policy.default
        )
        assert isinstance(msg, EmailMessage)
        base_start[btoken] = time.time()
        await aiosmtplib.send(msg, hostname="127.0.0.1", port=smtp_port, timeout=30)
        base_return[btoken] = time.time()
    done = await wait_done(lambda: all(t in mailbox.at for t in injected), 60)
    stored, rows, _ = stored_replies(poll, last_reply)
    mailed = [mailbox.at[t] - injected[t] for t in injected if t in mailbox.at]
    read = [stored[t] - injected[t] for t in injected if t in stored]
    after_read = [mailbox.at[t] - stored[t] for t in injected if t in stored and t in mailbox.at]
    base = [mailbox.at[t] - base_start[t] for t in base_start if t in mailbox.at]
    base_call = [base_return[t] - base_start[t] for t in base_start]
    return {
        "n": n,
        "all_mailed": done,
        "mailed": len(mailed),
        "stored": rows,
        "mail": summary(mailed),
        "read": summary(read),
        "after_read": summary(after_read),
        "base": summary(base),
        "base_call": summary(base_call),
        "mail_bytes": len(template),
    }


# -- part 2: inbound during a burst ----------------------------------------------------------


async def one_burst(
    server: TimedServer,
    sim: simulator.Simulator,
    maker: CallMaker,
    poll: DbPoll,
    pid: int,
    *,
    first: int,
    calls: int,
) -> dict[str, Any]:
    """bench_service's burst, with each text's Hangup -> AT+CMGS latency."""
    calls0 = poll.calls()
    parts0 = len(sim.parts)
    cmgs = Cmgs(sim)
    cpu0 = proc_cpu(pid)
    server.writes = []
    try:
        b = await burst(server, sim, maker, poll, calls=calls, first=first, send_timeout=300)
    finally:
        writes, server.writes = server.writes, None
    out: dict[str, Any] = {"burst": b, "cpu_s": proc_cpu(pid) - cpu0}
    out.update(outbound_latencies(maker, first, writes, cmgs.times, sim.parts[parts0:]))
    out["out"] = summary(out.pop("lat"))
    out["calls_stored"] = poll.calls() - calls0
    return out


async def with_stream(
    server: TimedServer,
    sim: simulator.Simulator,
    maker: CallMaker,
    mailbox: Mailbox,
    poll: DbPoll,
    *,
    pid: int,
    first: int,
    calls: int,
    texts: list[tuple[str, str]],
    window: float,
    leads: list[float],
) -> dict[str, Any]:
    """`texts` injected evenly over `window` s; a burst `lead` s after the start, for each
    lead (each burst sent in full before the next); then every reply stored and mailed?"""
    last_reply = max_id(poll, "replies")
    injected: dict[str, float] = {}
    stream: dict[str, Any] = {}
    cpu0 = proc_cpu(pid)
    t0 = time.monotonic()
    task = asyncio.create_task(stream_texts(sim, texts, window, injected, stream))
    bursts = []
    for lead in leads:
        await asyncio.sleep(max(0.0, t0 + lead - time.monotonic()))
        bursts.append(await one_burst(server, sim, maker, poll, pid, first=first, calls=calls))
        first += calls
    await task
    # what went in (all of it, unless the simulator refused one: then stream["error"])
    tokens = [t for _, t in texts][: stream["injected"]]
    out: dict[str, Any] = {"bursts": bursts, "inbound": len(texts), "window": window}
    out["leads"] = leads
    out["stream"] = stream
    out["all_stored"] = await wait_done(
        lambda: poll.count(f"SELECT count(*) FROM replies WHERE id > {last_reply}") >= len(tokens),
        120,
    )
    out["all_mailed"] = await wait_done(lambda: all(t in mailbox.at for t in tokens), 180)
    out["cpu_s"] = proc_cpu(pid) - cpu0
    stored, rows, untagged = stored_replies(poll, last_reply)
    out["replies_rows"] = rows
    out["replies_untagged"] = untagged
    out["missing"] = [t for t in tokens if t not in stored]
    out["duplicates"] = rows - untagged - len(stored)
    out["not_mailed"] = [t for t in tokens if t not in mailbox.at]
    out["mailed"] = len(tokens) - len(out["not_mailed"])
    out["in_store"] = summary([stored[t] - injected[t] for t in injected if t in stored])
    out["in_mail"] = summary(
        [mailbox.at[t] - injected[t] for t in injected if t in mailbox.at], scale=1.0
    )
    last_in = max(injected.values(), default=float("nan"))
    got = [stored[t] for t in injected if t in stored]
    mails = [mailbox.at[t] for t in injected if t in mailbox.at]
    out["store_lag_s"] = max(got) - last_in if got else float("nan")
    out["mail_lag_s"] = max(mails) - last_in if mails else float("nan")
    return out


def stream_of(maker: CallMaker, n: int, tag: str) -> list[tuple[str, str]]:
    """n inbound texts from the 800 numbers in turn, tokens `<tag>NNNN`."""
    return [(maker.numbers[i % len(maker.numbers)], f"{tag}{i:04d}") for i in range(n)]


# -- the daemon session -----------------------------------------------------------------------


async def session(quick: bool, workdir: Path, maker: CallMaker) -> dict[str, Any]:
    """One daemon forwarding replies to the SMTP server: reply -> mail, then the rounds."""
    n_replies = 20 if quick else 200
    rounds = 1 if quick else 3
    n_calls = 1000
    n_stream = 100 if quick else STREAM_TEXTS
    window = 6.0 if quick else STREAM_WINDOW
    n_harsh = 200 if quick else 1000
    n_in = 1 if quick else 3  # bursts during the stream
    res: dict[str, Any] = {"rounds": []}
    mailbox = Mailbox()
    smtp_port = await mailbox.start()
    server = TimedServer()
    port = await server.start()
    try:
        async with simulator.running("sim800") as sim:
            cfg = workdir / "textback.toml"
            db = workdir / "textback.db"
            cfg.write_text(
                CONFIG.format(port=port, user=USER, secret=SECRET, device=sim.device, db=db)
                + EXTRA.format(smtp_port=smtp_port)
            )
            notify = NotifyListener(workdir / "notify.sock")
            daemon = Daemon(cfg, notify, env={"WATCHDOG_USEC": WATCHDOG_USEC})
            await daemon.start()
            spy = None
            try:
                await notify.wait_for("READY=1", 30)
                assert daemon.proc is not None
                pid = daemon.proc.pid
                await asyncio.wait_for(server.up.wait(), 30)
                await daemon.wait_log("event=modem_ready", 30)
                await asyncio.sleep(1.0)
                spy = _profiler(pid, ".replies")
                poll = DbPoll(db)
                try:
                    print("  calls to reply to ...", file=sys.stderr, flush=True)
                    res["precalls"] = await burst(
                        server, sim, maker, poll, calls=n_replies + 1, first=0, send_timeout=60
                    )
                    await asyncio.sleep(1.0)
                    print("  replies -> mail ...", file=sys.stderr, flush=True)
                    res["mail"] = await reply_to_mail(
                        sim, maker, mailbox, poll, smtp_port=smtp_port, n=n_replies
                    )
                    first = n_replies + 1
                    alone: list[dict[str, Any]] = []
                    for r in range(rounds):
                        rnd: dict[str, Any] = {}
                        for name in ("alone", "stream", "alone2", "harsh"):
                            print(f"  round {r + 1}: {name} ...", file=sys.stderr, flush=True)
                            await asyncio.sleep(2.0)
                            if name.startswith("alone"):
                                rnd[name] = await one_burst(
                                    server, sim, maker, poll, pid, first=first, calls=n_calls
                                )
                                alone.append(rnd[name])
                                first += n_calls
                                continue
                            if name == "stream":
                                texts = stream_of(maker, n_stream, f"s{r}x")
                                w = window
                                leads = [window * (k + 1) / (n_in + 1) for k in range(n_in)]
                            else:
                                texts = stream_of(maker, n_harsh, f"h{r}x")
                                w = max(1.0, statistics.median(a["burst"]["sent_s"] for a in alone))
                                leads = [0.0]
                            rnd[name] = await with_stream(
                                server,
                                sim,
                                maker,
                                mailbox,
                                poll,
                                pid=pid,
                                first=first,
                                calls=n_calls,
                                texts=texts,
                                window=w,
                                leads=leads,
                            )
                            first += n_calls * len(leads)
                        res["rounds"].append(rnd)
                    res["calls_total"] = poll.calls()
                    res["replies_total"] = poll.count("SELECT count(*) FROM replies")
                finally:
                    poll.close()
                res["mails_untagged"] = mailbox.untagged
                daemon.signal(signal.SIGTERM)
                res["exit_code"] = await daemon.wait_exit(30)
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
                res["log_problem_lines"] = [
                    ln for ln in daemon.lines if _level(ln) in ("WARNING", "ERROR", "CRITICAL")
                ][:5]
            finally:
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(30)
                await daemon.kill()
                notify.close()
    finally:
        await server.close()
        await mailbox.stop()
    return res


# -- the report ---------------------------------------------------------------------------------


def run(quick: bool = False) -> dict[str, Any]:
    """Run the replies benchmark; the result's "markdown" is its BENCHMARKS.md section."""
    maker = CallMaker()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="textback-bench-replies-", dir="/var/tmp") as tmp:
        res = asyncio.run(session(quick, Path(tmp), maker))
    res["quick"] = quick
    res["loadavg"] = {"before": load0, "after": os.getloadavg()}
    res["markdown"] = markdown(res)
    return res


def _ok(good: bool) -> str:
    return "met" if good else "**missed**"


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(x["out"][key]) for x in runs)


def _stored_ok(run: dict[str, Any], calls: int) -> bool:
    return (
        all(b["calls_stored"] == b["burst"]["calls"] == calls for b in run["bursts"])
        and run["replies_rows"] == run["inbound"]
        and not run["missing"]
        and not run["not_mailed"]
        and "error" not in run["stream"]
    )


def _ms(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def markdown(r: dict[str, Any]) -> str:
    """The BENCHMARKS.md section."""
    m = r["mail"]
    rounds = r["rounds"]
    cmd = "make bench" if not r["quick"] else "python -m tests.bench.run --quick"
    alone_flag = " --quick" if r["quick"] else ""
    mail_ok = m["all_mailed"] and m["mail"]["p99"] < TARGET_MAIL_P99_S * 1000
    alone = [x[k] for x in rounds for k in ("alone", "alone2")]
    calls = alone[0]["burst"]["calls"]
    a50, a99 = _med(alone, "p50"), _med(alone, "p99")
    a_cpu = statistics.median(x["cpu_s"] for x in alone)
    rows = [
        (
            f"reply injected -> mail at the SMTP server, {m['n']} replies from distinct"
            f" numbers, {REPLY_RATE:g}/s",
            f"p50 {m['mail']['p50']:.1f} ms, **p99 {m['mail']['p99']:.1f} ms**"
            f" (max {m['mail']['max']:.1f}); {m['mailed']} of {m['n']} mailed,"
            f" {m['stored']} stored",
            f"p99 < {TARGET_MAIL_P99_S:g} s: {_ok(mail_ok)}",
            f"direct aiosmtplib.send of the same {m['mail_bytes']:,}-byte mail, same server,"
            f" interleaved: p50 {m['base']['p50']:.1f} ms, p99 {m['base']['p99']:.1f} ms"
            f" (daemon/direct: {m['mail']['p50'] / m['base']['p50']:.1f}x at p50,"
            f" {m['mail']['p99'] / m['base']['p99']:.1f}x at p99)",
        ),
        (
            "&nbsp;&nbsp;of which: injected -> the driver hands the text over (`received_at`)",
            f"p50 {m['read']['p50']:.1f} ms, p99 {m['read']['p99']:.1f} ms",
            "",
            "+CMTI, AT+CMGR on the pty, the PDU decoded",
        ),
        (
            "&nbsp;&nbsp;of which: handed over -> mail at the SMTP server",
            f"p50 {m['after_read']['p50']:.1f} ms, p99 {m['after_read']['p99']:.1f} ms",
            "",
            "the reply's transaction, the forwarder's queue read, compose, one SMTP session",
        ),
    ]
    verdicts: dict[str, tuple[bool, float, bool]] = {}
    for name, label in (("stream", "the issue's rate"), ("harsh", "harsh stream")):
        runs = [x[name] for x in rounds]
        bursts = [b for x in runs for b in x["bursts"]]
        w50, w99 = _med(bursts, "p50"), _med(bursts, "p99")
        stored_ok = all(_stored_ok(x, calls) for x in runs)
        ratio = w99 / a99
        verdicts[name] = (ratio <= TARGET_RATIO and stored_ok, ratio, stored_ok)
        if name == "stream":
            s50 = w50 / a50
            target = f"p99 <= {TARGET_RATIO:.2f}x alone and all stored: {_ok(verdicts[name][0])}"
        else:
            target = f"none (beyond the issue's rate); all stored: {_ok(stored_ok)}"
        first = runs[0]
        rate = first["inbound"] / first["window"]
        where = (
            "bursts at " + ", ".join(f"{t:.0f}" for t in first["leads"]) + " s"
            if first["leads"] != [0.0]
            else "burst from the start"
        )
        rows.append(
            (
                f"{len(bursts)} bursts of {calls:,} calls, each run with {first['inbound']:,}"
                f" inbound texts over {first['window']:.1f} s ({rate:.0f}/s, {label};"
                f" {where}): outbound Hangup -> AT+CMGS",
                f"p50 {w50:.0f} ms, **p99 {w99:.0f} ms** (medians; p99 per burst"
                f" {_ms([b['out']['p99'] for b in bursts])}); **{ratio:.2f}x** alone at p99,"
                f" {w50 / a50:.2f}x at p50; every call, reply and mail stored:"
                f" {'yes' if stored_ok else '**no**'}",
                target,
                f"{len(alone)} bursts alone, interleaved: p50 {a50:.0f} ms, p99 {a99:.0f} ms"
                f" (medians; p99 per burst {_ms([x['out']['p99'] for x in alone])})",
            )
        )
    table = ["| measure | result | target | baseline (same run) |", "|---|---|---|---|"]
    table += [f"| {w} | {x} | {y} | {z} |" for w, x, y, z in rows]

    detail = [
        "| round: run | texts sent per burst (s to send all) | calls stored | replies"
        " stored / injected | mailed | most texts on the SIM at once | inbound: injected ->"
        " handed over p50 / p99 | injected -> mail p99 | last handed over / mailed after"
        " the last injection | daemon CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    per_text_cpu = []
    for i, rnd in enumerate(rounds, start=1):
        for name in ("alone", "stream", "alone2", "harsh"):
            x = rnd[name]
            bursts = x.get("bursts", [x])
            sent = ", ".join(f"{b['burst']['sent']:,} ({b['burst']['sent_s']:.1f})" for b in bursts)
            stored = sum(b["calls_stored"] for b in bursts)
            if "stream" not in x:
                detail.append(
                    f"| {i}: {name.rstrip('2')} | {sent} | {stored:,} | - | - | - | - | - | - |"
                    f" {x['cpu_s']:.1f} s |"
                )
                continue
            s = x["stream"]
            broke = f" ({s['error']})" if "error" in s else ""
            dup = f", {x['duplicates']} twice" if x["duplicates"] else ""
            per_text_cpu.append((name, (x["cpu_s"] - len(bursts) * a_cpu) / x["inbound"]))
            detail.append(
                f"| {i}: {name} | {sent} | {stored:,} |"
                f" {x['replies_rows']:,} / {s['injected']:,}{dup}{broke} |"
                f" {x['mailed']:,} | {s.get('sim_peak', '?')} |"
                f" {x['in_store']['p50']:.0f} / {x['in_store']['p99']:.0f} ms |"
                f" {x['in_mail']['p99']:.1f} s |"
                f" {x['store_lag_s']:.1f} s / {x['mail_lag_s']:.1f} s | {x['cpu_s']:.1f} s |"
            )
    stream_cpu = [v for k, v in per_text_cpu if k == "stream"]
    cpu_ms = 1000 * statistics.median(stream_cpu) if stream_cpu else float("nan")
    s0, h0 = rounds[0]["stream"], rounds[0]["harsh"]
    share = cpu_ms * s0["inbound"] / s0["window"] / 10  # % of one core
    harsh = [x["harsh"] for x in rounds]
    read_rate = statistics.median(x["inbound"] / (x["window"] + x["store_lag_s"]) for x in harsh)
    sim_peak = max(int(x["stream"].get("sim_peak", 0)) for x in harsh)
    stream_peak = max(int(x["stream"]["stream"].get("sim_peak", 0)) for x in rounds)

    misses = []
    if not mail_ok:
        misses.append(f"reply -> mail p99 {m['mail']['p99'] / 1000:.2f} s")
    for name, (_, ratio, stored_ok) in verdicts.items():
        label = "the issue's stream" if name == "stream" else "the harsh stream"
        if name == "stream" and ratio > TARGET_RATIO:
            misses.append(f"outbound p99 with {label} {ratio:.2f}x alone")
        if not stored_ok:
            misses.append(f"not every call, reply and mail kept with {label}")
    near = abs(verdicts["stream"][1] - TARGET_RATIO) < 0.05
    flip = (
        " With the target at 10%, a figure this close to it can go either way from run to"
        " run on this machine."
        if near
        else ""
    )
    missed = "Targets missed: " + "; ".join(misses) + "." if misses else "All targets met."
    logs = ", ".join(f"{k} {v:,}" for k, v in r["log_lines"].items()) or "none"
    problems = ", ".join(f"`{e}`" for e in r["log_problems"]) or "none"
    load = r["loadavg"]
    return f"""## Replies (inbound texts -> mail; inbound texts during a burst)

Command: `{cmd}` (alone: `.venv/bin/python -m tests.bench.bench_replies{alone_flag}`).
The real daemon process as in the service section (same fake Asterisk, simulator and
config: no wait, no cooldown, caps off), plus `[replies] forward_email` to a real SMTP
server in a process of its own (tests/bench/smtp_sink.py: aiosmtpd's Controller on a
loopback port, `tls = "none"`; `forward_per_hour = 100` so that every reply is mailed).
An earlier version ran the server as a thread of this process, where it shared the GIL
with the modem simulator that the daemon's sends wait on: every mail then slowed the
simulated modem, a cost no office has. Inbound texts
are injected with the simulator's `inject_text` (stored on the SIM and announced with
+CMTI; the driver reads each with AT+CMGR, hands it to the inbox and deletes it once
kept). Each text carries a token found again in the mail and in the `replies` table.
Times: the injection (this process) and `handle_DATA` (the server's process), both
wall clock on this machine;
`received_at` is the daemon's clock when the driver handed the text over.
Reply -> mail: {m["n"]} numbers got a missed-call text first (so each reply is linked
and its mail names the call), then replied, {REPLY_RATE:g} per second, after one
warm-up reply (not counted); a direct send of a copy of the daemon's mail went out half
a period after each. Bursts: bench_service's burst ({calls:,} calls, Hangups over one
second, 800 distinct callers, so the number of texts depends on how many repeat calls
find their first text still queued). Per round: a burst alone; the issue's stream (a
minute's texts at its rate, with bursts inside it); a burst alone; a harsh stream (the
same number of texts spread over the time a burst alone takes to be texted, the burst
from its first second). {len(rounds)} round(s). Outbound latency: each text's AT+CMGS at
the simulator minus the write of its call's final Hangup (texts matched to calls by
number; a repeat caller merged into a queued text counts once), so in a burst it is
mostly the wait behind the texts before it.

{chr(10).join(table)}

{missed}

{chr(10).join(detail)}

Daemon CPU per inbound text (read, stored, deleted from the SIM and mailed), from the
issue's stream runs (each run's CPU less its bursts', counted at the alone median):
**{cpu_ms:.1f} ms**.

What limits each number (found with py-spy on the daemon and EXPLAIN QUERY PLAN in
scratch runs; none of that is part of `make bench`):
- Reply -> mail (p99 {m["mail"]["p99"]:.0f} ms against {TARGET_MAIL_P99_S:g} s): the
  driver hands a text over {m["read"]["p50"]:.1f} ms (p50) after it is stored on the SIM
  (+CMTI, AT+CMGR, the PDU decoded); then come the reply's transaction (one fsync), the
  forwarder's read of its queue and of the reply, the mail built with Python's `email`
  package (its header registry parses every header it is given: about a quarter of the
  loop's CPU per reply in a py-spy profile), and an SMTP session (aiosmtplib: connect,
  EHLO, MAIL, RCPT, DATA, QUIT, with a fixed EHLO name so no DNS lookup). At a few
  replies a second each pass has one mail; mails due together (after a burst) share one
  session. The direct send is the floor of that last step on this server; a real server
  over a network adds its round trips and TLS.
- The issue's stream during a burst: a burst is texted as fast as the daemon's event
  loop goes (see the service section), and each inbound text costs that same daemon
  {cpu_ms:.1f} ms of CPU: at {s0["inbound"] / s0["window"]:.0f} texts/s that is
  {share:.0f}% of one core, so a slowdown of about {share:.0f}% is to be expected from
  CPU alone (measured: {100 * (verdicts["stream"][1] - 1):+.0f}% at p99,
  {100 * (s50 - 1):+.0f}% at p50).{flip} Mail forwarding was what cost the margin
  first: with `forward_email` off the same rounds slowed the sends by 1.05x at p99;
  with it on, 1.32x-1.53x. Since then, while the outbox has due texts in hand, a mail
  waits (up to a minute; the held-back mails then share one SMTP session) and so does
  an inbound text, on the SIM, before it is read and stored (up to 10 s:
  `Outbox.quiet`, the driver's read gate): the "most texts on the SIM" column shows
  them waiting. What was left inside the bursts, found with py-spy per burst (the
  daemon and this process, alone against with a stream, in scratch runs): the held
  mail looked at its queue every 0.5 s (three queries on the connection the sends
  use; now it waits for the outbox to be quiet), a reply read slipped in between two
  passes of one burst (the outbox now stays busy across them), and this process's
  injector woke every 2 ms (now when a text is due). After those the daemon's CPU per
  burst with a stream is within a few % of alone; what remains is the stream itself:
  the simulator's +CMTI lines and injection in this process, which also answers every
  AT command of the burst, and the daemon's reading of them, on two shared CPUs.
- The harsh stream ({h0["inbound"] / h0["window"]:.0f} texts/s, far beyond the issue's
  rate): nothing was lost, but the driver reads one text at a time (AT+CMGR, the
  inbox's transaction, AT+CMGD) under the command lock the sends use too: about
  {read_rate:.0f} texts/s were read while the burst was sent, the sends slowed by the
  ratio above, and up to {sim_peak} texts sat on the simulated SIM at once (the issue's
  stream: at most {stream_peak}). The simulator stores up to 999 texts and, when they
  are all taken, holds the rest "in the network" until AT+CMGD frees a slot, as an SMSC
  retries a full phone; a real SIM's SM store holds a few tens (AT+CPMS tells), so on
  real hardware the network would hold most of them: this stream measures the daemon,
  not a modem.

Daemon log lines by level: {logs}; events logged at WARNING or above: {problems}. After
SIGTERM the daemon exited with {r["exit_code"]}. Mails without a token: {r["mails_untagged"]}.

Numbers come from one run on a shared, noisy 2-CPU machine (load average
{load["before"][0]:.1f} before, {load["after"][0]:.1f} after); this process (fake Asterisk,
simulator) and the SMTP server's process share the two CPUs with the daemon. The
baselines were measured in the same run.
"""


def main(argv: list[str] | None = None) -> int:
    """Run it and print the markdown."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    parser.add_argument("--json", action="store_true", help="also print the raw numbers")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    print(result["markdown"])
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
