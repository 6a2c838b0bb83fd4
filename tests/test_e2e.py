"""End to end: the real `textback run` process against a fake Asterisk and a fake modem.

The daemon runs as a child process (tests/daemonproc.py) with a real notify socket; the
AMI side is the ReplayServer over loopback TCP replaying the recorded lab traces, the
modem is the simulator on a real pty, the database a real SQLite file in tmp_path. The
tests wait on log lines, notify messages and the simulator's state, never on timers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import shlex
import signal
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.intake.replayserver import ReplayServer, trace_body
from gsm import simulator
from tests.conftest import AMI_DIR, load_sidecar, trace_names
from tests.daemonproc import Daemon, running_daemon

# Every test here starts one or two daemon processes; trace 26 alone streams 4.4 MB.
pytestmark = pytest.mark.timeout(90)

BUSINESS = "Main Street Dental"
SALES = "Main Street Dental sales"  # [[lines]] business name of DID 5551002
FALLBACK = "there"
TEMPLATE = "Hi {caller_name}, sorry we missed your call to {business_name}."
TEMPLATE_VM = "Thanks for your voicemail, {caller_name}. {business_name} will call you back."
TEMPLATE_NEW = "Hello {caller_name}, {business_name} missed you and will call back."
#: Everything a run waits for (streaming, calls, texts) must happen within this.
WAIT = 30.0
TERMINAL = ("sent", "failed", "cancelled", "expired", "uncertain")

_CONFIG = """\
[ami]
host = "127.0.0.1"
port = {port}
username = "e2e"
secret = "e2e-secret"

[calls]
ring_timeout = "5s"   # the lab traces were recorded with a 5 s ring timeout

[modem]
device = {device}
mode = {mode}

[textback]
delay = {delay}
cooldown = {cooldown}
retry_backoff = "1s"
business_name = {business}
caller_name_fallback = {fallback}
# all lab callers are 555-01xx numbers, a handful of 1000-number blocks: widen the guard
pumping_max_per_range = 1000
max_per_hour = 0
max_per_day = 0
max_per_month = 0
template = {template}
template_voicemail = {template_vm}

[hours]
timezone = "America/New_York"
mon = ["00:00-24:00"]
tue = ["00:00-24:00"]
wed = ["00:00-24:00"]
thu = ["00:00-24:00"]
fri = ["00:00-24:00"]
sat = ["00:00-24:00"]
sun = ["00:00-24:00"]

[[lines]]
did = "5551002"
business_name = {sales}

[database]
path = {db}

[contacts]
file = {contacts}
{extra}"""

#: The office's contacts file the e2e daemon reads (fictional 555-01xx numbers). Network
#: caller names in the traces are never used (use_pbx_names is off): a caller not listed
#: here is greeted with the fallback.
CONTACTS = {"+12025550121": "José O'Brien"}  # é is GSM-7: never folded


def write_config(
    path: Path,
    *,
    port: int,
    device: str,
    db: Path,
    delay: str = "0s",
    template: str = TEMPLATE,
    extra: str = "",
    cooldown: str = "24h",
    mode: str = "pdu",
) -> Path:
    """The daemon's TOML file (JSON strings are valid TOML basic strings), and the
    contacts file beside it."""
    contacts = path.parent / "contacts.csv"
    contacts.write_text(
        "number,name\n" + "".join(f"{n},{name}\n" for n, name in CONTACTS.items()),
        encoding="utf-8",
    )
    path.write_text(
        _CONFIG.format(
            port=port,
            device=json.dumps(device),
            delay=json.dumps(delay),
            cooldown=json.dumps(cooldown),
            mode=json.dumps(mode),
            business=json.dumps(BUSINESS),
            fallback=json.dumps(FALLBACK),
            template=json.dumps(template),
            template_vm=json.dumps(TEMPLATE_VM),
            sales=json.dumps(SALES),
            db=json.dumps(str(db)),
            contacts=json.dumps(str(contacts)),
            extra=extra,
        )
    )
    return path


# -- reading what the daemon said and stored ----------------------------------------------


def fields(line: str) -> dict[str, str]:
    """The key=value fields of one log line (values quoted as daemon.logsetup.kv does)."""
    _, _, rest = line.partition(": ")
    out = {}
    try:
        words = shlex.split(rest)
    except ValueError:
        return {}
    for word in words:
        key, eq, value = word.partition("=")
        if eq:
            out[key] = value
    return out


def events(d: Daemon, name: str) -> list[dict[str, str]]:
    """Every `event=<name>` log line of the daemon, parsed."""
    needle = f"event={name} "
    return [fields(line) for line in d.lines if needle in line]


def message_states(d: Daemon) -> dict[str, str]:
    """The latest state the log gave each message id."""
    states: dict[str, str] = {}
    for f in events(d, "message"):
        if "id" in f and "state" in f:
            states[f["id"]] = f["state"]
    return states


async def wait_until(d: Daemon, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until `predicate()` holds, checked on every new log line of the daemon."""

    async def _wait() -> None:
        while not predicate():
            if d.proc is not None and d.proc.returncode is not None:
                raise AssertionError("daemon exited:\n" + "\n".join(d.lines[-40:]))
            d._new.clear()
            await d._new.wait()

    try:
        await asyncio.wait_for(_wait(), timeout)
    except TimeoutError:
        raise AssertionError("timed out; daemon log tail:\n" + "\n".join(d.lines[-40:])) from None


async def ready(d: Daemon, timeout: float = WAIT) -> str:
    """Wait for READY=1 (failing at once, with the log, if the daemon exits first)."""
    waiter = asyncio.ensure_future(d.notify.wait_for("READY=1", timeout))
    assert d.proc is not None
    exited = asyncio.ensure_future(d.proc.wait())
    try:
        await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await exited
    if not waiter.done():
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        raise AssertionError("daemon exited before READY=1:\n" + "\n".join(d.lines[-40:]))
    try:
        return waiter.result()
    except TimeoutError:
        raise AssertionError("no READY=1; log tail:\n" + "\n".join(d.lines[-40:])) from None


async def notified(
    d: Daemon, message: str, count: int, timeout: float = WAIT, *, prefix: bool = False
) -> None:
    """Wait until the daemon sent the notify `message` (or one starting with it) `count`
    times."""
    notify = d.notify

    def seen() -> int:
        return sum(m.startswith(message) if prefix else m == message for m in notify.messages)

    async def _wait() -> None:
        while seen() < count:
            notify._new.clear()
            await notify._new.wait()

    await asyncio.wait_for(_wait(), timeout)


async def streamed(d: Daemon, server: ReplayServer, timeout: float = WAIT) -> None:
    """Wait until the replay server has sent its whole trace."""
    try:
        await asyncio.wait_for(server.finished.wait(), timeout)
    except TimeoutError:
        raise AssertionError("trace not streamed:\n" + "\n".join(d.lines[-40:])) from None


async def settled(d: Daemon, calls: int, timeout: float = WAIT) -> None:
    """Wait until `calls` calls were logged and every text reached a final state."""

    def done() -> bool:
        if len(events(d, "call")) < calls:
            return False
        return all(s in TERMINAL for s in message_states(d).values())

    await wait_until(d, done, timeout)


def db_rows(db: Path, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
    """Read the daemon's database read-only (it may still be running: WAL allows it)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return list(con.execute(sql, tuple(params)))
    finally:
        con.close()


def messages(db: Path) -> list[sqlite3.Row]:
    """Every message row, oldest first."""
    return db_rows(db, "SELECT * FROM messages ORDER BY id")


# -- what the sidecars expect ------------------------------------------------------------


def render(call: dict[str, Any], template: str = TEMPLATE) -> str:
    """The text a call should get: written here independently of daemon.decide.templates."""
    business = SALES if call["did"] == "5551002" else BUSINESS
    if call.get("voicemail_left") is True:
        template = TEMPLATE_VM
    name = CONTACTS.get(call.get("caller_e164") or "", FALLBACK)
    return template.replace("{caller_name}", name).replace("{business_name}", business)


@dataclass
class Expectation:
    """Per destination: the texts a trace's calls allow."""

    #: destination -> the one text it must get (nothing can cancel it)
    sure: dict[str, str]
    #: destination -> texts it may get: a callback or an answered retry may cancel it
    maybe: dict[str, set[str]]
    #: calls the daemon must log
    calls: int


def expectation(name: str, template: str = TEMPLATE) -> Expectation:
    """What a trace's sidecar expects: one text per destination (cooldown), rendered from
    its first missed call; destinations called back (or answered on a retry) after a miss
    may have had their pending text cancelled, so any of their renderings or none."""
    calls = load_sidecar(name)["calls"]
    order = sorted(
        range(len(calls)),
        key=lambda i: (calls[i].get("started_at_offset_s") or 0.0, i),
    )
    sure: dict[str, str] = {}
    maybe: dict[str, set[str]] = {}
    first_miss: dict[str, int] = {}
    for pos, i in enumerate(order):
        c = calls[i]
        if c["expected_textback"]:
            first_miss.setdefault(c["caller_e164"], pos)
    for dest, pos in first_miss.items():
        later = [calls[i] for i in order[pos + 1 :]]
        racy = any(
            (not c["inbound"] and c["did"] == dest)
            or (c["inbound"] and c.get("caller_e164") == dest and c["answered_by_human"])
            for c in later
        )
        first = calls[order[pos]]
        if racy:
            maybe[dest] = {
                render(c, template)
                for c in calls
                if c["expected_textback"] and c["caller_e164"] == dest
            }
        else:
            sure[dest] = render(first, template)
    return Expectation(sure, maybe, len(calls))


def check_texts(exp: Expectation, sent: list[simulator.SentSms], db: Path) -> None:
    """The simulator got exactly the expected texts, one per destination, as the DB says."""
    per_dest = collections.Counter(s.number for s in sent)
    twice = {n: k for n, k in per_dest.items() if k > 1}
    assert not twice, f"texted more than once: {twice}"
    got = {s.number: s.text for s in sent}
    unexpected = set(got) - set(exp.sure) - set(exp.maybe)
    assert not unexpected, f"texts nobody expected: {sorted(unexpected)}"
    missing = set(exp.sure) - set(got)
    assert not missing, f"expected texts not sent: {sorted(missing)}"
    for dest, text in exp.sure.items():
        assert got[dest] == text
    for dest, texts in exp.maybe.items():
        if dest in got:
            assert got[dest] in texts
    rows = messages(db)
    assert all(r["state"] in TERMINAL for r in rows)
    assert sorted((r["destination"], r["text"]) for r in rows if r["state"] == "sent") == sorted(
        got.items()
    )
    for r in rows:
        if r["state"] == "cancelled":
            assert r["destination"] in exp.maybe
            assert r["reason"] in ("called_back", "answered_on_retry")
        else:
            assert r["state"] == "sent", dict(r)


# -- the rig -------------------------------------------------------------------------------


@dataclass
class Rig:
    """One fake PBX, one simulated modem, the config and the database."""

    server: ReplayServer
    sim: simulator.Simulator
    config: Path
    db: Path
    tmp: Path

    def write(self, **kwargs: Any) -> Path:
        """(Re)write the config file."""
        return write_config(
            self.config, port=self.server.port, device=self.sim.device, db=self.db, **kwargs
        )


@contextlib.asynccontextmanager
async def rig(
    tmp: Path,
    body: bytes,
    *,
    faults: simulator.Faults | None = None,
    **server_kwargs: Any,
) -> AsyncIterator[Rig]:
    """A ReplayServer streaming `body` and a simulator; both closed afterwards."""
    server = ReplayServer(body, username="e2e", secret="e2e-secret", **server_kwargs)
    await server.start()
    try:
        async with simulator.running("sim800", faults) as sim:
            yield Rig(server, sim, tmp / "textback.toml", tmp / "textback.db", tmp)
    finally:
        await server.close()


def body_of(*names: str) -> bytes:
    """The events of one or more traces, one after the other."""
    return b"".join(trace_body((AMI_DIR / f"{n}.ami").read_bytes()) for n in names)


#: The value of an event's `Timestamp:` header.
_STAMP = re.compile(rb"(?<=\r\nTimestamp: )(\d+\.\d+)")


def retimed(*names: str, gap: float = 60.0) -> list[bytes]:
    """Traces one after the other, each re-timed to start `gap` seconds (event time) after
    the previous one ended. Within a trace every difference stays as recorded; the gaps
    give a paced replay (ReplayServer speed=) room for a test to pause the stream."""
    out = []
    end: float | None = None
    for name in names:
        body = body_of(name)
        stamps = [float(m) for m in _STAMP.findall(body)]
        shift = 0.0 if end is None else end + gap - stamps[0]

        def moved(m: re.Match[bytes], shift: float = shift) -> bytes:
            return b"%.6f" % (float(m.group(1)) + shift)

        out.append(_STAMP.sub(moved, body))
        end = stamps[-1] + shift
    return out


async def logged_calls(d: Daemon, n: int) -> list[dict[str, str]]:
    """Wait until `n` calls were logged; return them."""
    await wait_until(d, lambda: len(events(d, "call")) >= n)
    return events(d, "call")


async def stop(d: Daemon, timeout: float = 10.0) -> int:
    """SIGTERM and the exit code."""
    d.signal(signal.SIGTERM)
    try:
        return await d.wait_exit(timeout)
    except TimeoutError:
        raise AssertionError("no exit after SIGTERM:\n" + "\n".join(d.lines[-40:])) from None


# -- every recorded trace ------------------------------------------------------------------

TRACE_21 = "21-missed-then-callback"
#: Per trace: the wait step. Trace 21's office calls the caller back ~15 s after the miss
#: (event time; milliseconds at full replay speed): a longer wait step cancels the text.
DELAYS = {TRACE_21: "60s"}


@pytest.mark.parametrize("name", trace_names())
async def test_trace_texts_exactly_the_expected_callers(name: str, tmp_path: Path) -> None:
    exp = expectation(name)
    if name == TRACE_21:
        # the wait step outlasts the callback: the one expected text is cancelled
        assert exp.maybe == {"+12025550121": {render(load_sidecar(name)["calls"][0])}}
        exp = Expectation({}, exp.maybe, exp.calls)
    started = time.monotonic()
    async with rig(tmp_path, body_of(name)) as r:
        r.write(delay=DELAYS.get(name, "0s"))
        async with running_daemon(r.config, tmp_path) as d:
            await ready(d)
            await streamed(d, r.server)
            await settled(d, exp.calls)
            logged = events(d, "call")
            sidecar = load_sidecar(name)["calls"]
            assert collections.Counter(c["caller"] for c in logged) == collections.Counter(
                c["caller"] for c in sidecar
            )
            # a caller none of whose calls expects a text is never texted, whatever the reason
            never = {c["caller"] for c in sidecar} - {
                c["caller"] for c in sidecar if c["expected_textback"]
            }
            assert all(c["decision"] == "suppress" for c in logged if c["caller"] in never)
            check_texts(exp, r.sim.sent, r.db)
            assert await stop(d) == 0
    if name == TRACE_21:
        rows = messages(r.db)
        assert [(x["state"], x["reason"]) for x in rows] == [("cancelled", "called_back")]
        assert r.sim.sent == []
    if name.startswith("26-"):
        took = time.monotonic() - started
        print(f"trace 26: {exp.calls} calls, {len(r.sim.sent)} texts in {took:.1f} s")


async def test_trace_21_without_wait_step_the_callback_changes_nothing(tmp_path: Path) -> None:
    # delay 0: the text goes out at once; the office's callback ~15 s later (event time)
    # finds nothing to cancel. The replay is paced (speed 8) and paused after the missed
    # call until the text is out, so the order does not depend on the machine's speed.
    call = load_sidecar(TRACE_21)["calls"][0]
    async with rig(tmp_path, body_of(TRACE_21), speed=8.0) as r:
        r.write(delay="0s")
        async with running_daemon(r.config, tmp_path) as d:
            await ready(d)
            first = await logged_calls(d, 1)
            r.server.flowing.clear()
            assert first[0]["decision"] == "send"
            await wait_until(d, lambda: "sent" in message_states(d).values())
            r.server.flowing.set()
            calls = await logged_calls(d, 2)
            await settled(d, 2)
            assert (calls[1]["outcome"], calls[1]["reason"]) == ("not_inbound", "not_inbound")
            assert events(d, "cancelled") == []
            assert await stop(d) == 0
    assert [(s.number, s.text) for s in r.sim.sent] == [("+12025550121", render(call))]
    assert [(x["state"], x["text"]) for x in messages(r.db)] == [("sent", render(call))]


# -- crashes, unplugged modems, lost PBX links ----------------------------------------------

BURST = "17-burst"


async def test_kill_9_mid_burst_then_restart_sends_each_text_once(tmp_path: Path) -> None:
    exp = expectation(BURST)
    assert len(exp.sure) == 23
    faults = simulator.Faults()
    async with rig(tmp_path, body_of(BURST), faults=faults) as r:
        r.write()
        run1 = tmp_path / "run1"
        run1.mkdir()
        async with running_daemon(r.config, run1) as d:
            await ready(d)
            await asyncio.wait_for(r.sim.wait_sent(1), WAIT)
            # From now on the modem takes 0.5 s per answer, so the burst drains slowly. The
            # kill comes as soon as the next text has reached the modem, which then waits
            # 0.5 s before its +CMGS: that text is `sending` in the database.
            faults.slow = 0.5
            await logged_calls(d, exp.calls)
            n = len(r.sim.sent) + 1
            await asyncio.wait_for(r.sim.wait_sent(n), WAIT)
            await d.kill()
        at_kill = list(r.sim.sent)
        assert len(at_kill) == n < 23
        rows = messages(r.db)
        assert len(rows) == 23  # every missed call's text was durable before the kill
        in_flight = [x for x in rows if x["state"] == "sending"]
        assert [(x["destination"], x["text"]) for x in in_flight] == [
            (at_kill[-1].number, at_kill[-1].text)
        ]
        assert sum(x["state"] == "sent" for x in rows) == n - 1
        faults.slow = 0.0
        run2 = tmp_path / "run2"
        run2.mkdir()
        async with running_daemon(r.config, run2) as d:
            await ready(d)
            await asyncio.wait_for(r.sim.wait_sent(23), WAIT)
            await settled(d, 0)
            uncertain = [f for f in events(d, "message") if f.get("state") == "uncertain"]
            assert [(f["id"], f["reason"]) for f in uncertain] == [
                (str(in_flight[0]["id"]), "in_flight_at_restart")
            ]
            assert await stop(d) == 0
    sent = r.sim.sent
    assert collections.Counter(s.number for s in sent) == collections.Counter(exp.sure.keys())
    assert {s.number: s.text for s in sent} == exp.sure
    final = {x["id"]: x["state"] for x in messages(r.db)}
    assert final.pop(in_flight[0]["id"]) == "uncertain"  # not resent: resend_uncertain is off
    assert set(final.values()) == {"sent"}


async def test_modem_vanishes_mid_queue_and_comes_back(tmp_path: Path) -> None:
    exp = expectation(BURST)
    # after 5 texts the sixth AT+CMGS makes the stick vanish (the pty closes, the link goes)
    async with rig(tmp_path, body_of(BURST), faults=simulator.Faults(vanish_after=5)) as r:
        r.write()
        async with running_daemon(r.config, tmp_path) as d:
            await ready(d)
            await asyncio.wait_for(r.sim.wait_for(lambda: not r.sim.present), WAIT)
            assert len(r.sim.sent) == 5
            # the send in flight failed and waits for a retry; nothing was lost
            await wait_until(
                d, lambda: any(f.get("reason") == "retry" for f in events(d, "message"))
            )
            await wait_until(d, lambda: any("went away" in line for line in d.lines))
            r.sim.come_back()
            await asyncio.wait_for(r.sim.wait_sent(23), WAIT)
            await settled(d, exp.calls)
            assert r.sim.vanished == 1
            check_texts(exp, r.sim.sent, r.db)
            assert await stop(d) == 0


async def test_ami_link_drops_and_comes_back(tmp_path: Path) -> None:
    # Two drops: one between two calls (nothing in progress), one inside the first event
    # 1 s (event time) into call 07, as it starts ringing 101 and 102 for 5 s: the resync
    # after the reconnect lists its channels. Paced (speed 10) so that each resync is
    # answered while the call still rings.
    names = (
        "01-missed-noanswer-voicemail",
        "02-abandoned-while-ringing",
        "07-ringgroup-noanswer",
        "06-busy-voicemail",
        "11-ivr-hangup",
    )
    parts = retimed(*names, gap=3.0)
    body = b"".join(parts)
    cut_between = len(parts[0]) + len(parts[1])  # the first event of call 07
    stamps = [(m.start(), float(m.group(1))) for m in _STAMP.finditer(body)]
    t07 = next(t for pos, t in stamps if pos > cut_between)
    mid_07 = next(pos for pos, t in stamps if t >= t07 + 1.0) + 5  # inside that event
    async with rig(tmp_path, body, drop_at=[cut_between, mid_07], speed=10.0) as r:
        r.write()
        async with running_daemon(r.config, tmp_path) as d:
            await ready(d)
            await streamed(d, r.server)
            await settled(d, len(names))
            assert (r.server.stats.drops, r.server.stats.logins) == (2, 3)
            resyncs = [line for line in d.lines if "AMI resync:" in line]
            assert len(resyncs) == 3
            assert "AMI resync: 0 channel(s)" not in resyncs[2]  # call 07 was in progress
            gaps = db_rows(r.db, "SELECT * FROM ami_gaps ORDER BY id")
            assert len(gaps) == 2, "\n".join(d.lines)
            assert all(g["ended_at"] > g["started_at"] for g in gaps)
            calls = events(d, "call")
            assert sorted(c["caller"] for c in calls) == sorted(
                load_sidecar(n)["calls"][0]["caller"] for n in names
            ), "\n".join(d.lines)
            exp: dict[str, str] = {}
            for n in names:
                exp.update(expectation(n).sure)
            assert len(exp) == len(names)
            check_texts(Expectation(exp, {}, len(names)), r.sim.sent, r.db)
            assert await stop(d) == 0


# -- signals and systemd ---------------------------------------------------------------------


async def test_sighup_reloads_a_good_config_and_refuses_a_broken_one(tmp_path: Path) -> None:
    # Three calls, re-timed 60 s (event time) apart and replayed at speed 20: after each
    # call the stream is paused, the config rewritten and SIGHUP sent, then it goes on.
    names = ("02-abandoned-while-ringing", "07-ringgroup-noanswer", "09-queue-abandon")
    calls = [load_sidecar(n)["calls"][0] for n in names]
    async with rig(tmp_path, b"".join(retimed(*names)), speed=20.0) as r:
        r.write(template=TEMPLATE)
        async with running_daemon(r.config, tmp_path) as d:
            await ready(d)
            await logged_calls(d, 1)
            r.server.flowing.clear()
            # a good config: a new wording for the next call
            r.write(template=TEMPLATE_NEW)
            d.signal(signal.SIGHUP)
            await d.wait_log("event=reloaded")
            await d.notify.wait_for("RELOADING=1")
            # READY=1 again after the reload, with the live status line
            await notified(d, "READY=1", 2, prefix=True)
            status = [m for m in d.notify.messages if m.startswith("READY=1")][-1]
            assert re.search(r"STATUS=AMI connected, modem ready, signal \d+/31, 0 waiting", status)
            r.server.flowing.set()
            await logged_calls(d, 2)
            r.server.flowing.clear()
            # a broken one: refused, the last good one stays in force
            r.config.write_text(r.config.read_text() + "\n[textback]\nnot_a_key = 1\n")
            d.signal(signal.SIGHUP)
            await d.wait_log("event=reload_refused")
            r.server.flowing.set()
            await logged_calls(d, 3)
            await settled(d, 3)
            assert len([line for line in d.lines if "event=reloaded" in line]) == 1
            assert any("event=config_problem" in line for line in d.lines)
            assert await stop(d) == 0
    got = [(s.number, s.text) for s in r.sim.sent]
    assert got == [
        (calls[0]["caller_e164"], render(calls[0], TEMPLATE)),
        (calls[1]["caller_e164"], render(calls[1], TEMPLATE_NEW)),
        (calls[2]["caller_e164"], render(calls[2], TEMPLATE_NEW)),
    ]


async def test_sigterm_during_a_send_finishes_it_and_exits_0(tmp_path: Path) -> None:
    call = load_sidecar("01-missed-noanswer-voicemail")["calls"][0]
    faults = simulator.Faults()
    async with rig(tmp_path, body_of("01-missed-noanswer-voicemail"), faults=faults) as r:
        r.server.flowing.clear()  # no call until the modem is up
        r.write()
        async with running_daemon(r.config, tmp_path) as d:
            await ready(d)
            await d.wait_log("event=modem_ready")
            faults.slow = 1.5  # the prompt and the +CMGS answer each take 1.5 s
            r.server.flowing.set()
            await wait_until(d, lambda: "sending" in message_states(d).values())
            t0 = time.monotonic()
            d.signal(signal.SIGTERM)
            rc = await d.wait_exit(12.0)
            took = time.monotonic() - t0
            assert rc == 0
            assert took < 10.0
            await d.notify.wait_for("STOPPING=1")
            assert list(message_states(d).values()) == ["sent"]
    assert [(s.number, s.text) for s in r.sim.sent] == [(call["caller_e164"], render(call))]
    assert [x["state"] for x in messages(r.db)] == ["sent"]


async def test_ready_without_pbx_or_modem_then_both_turn_up(tmp_path: Path) -> None:
    # a port nobody listens on yet, a modem that is not plugged in yet
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = "02-abandoned-while-ringing"
    sim = simulator.Simulator("sim800")  # not started: no pty, no by-id link
    server = ReplayServer(body_of(name), username="e2e", secret="e2e-secret")
    config = write_config(
        tmp_path / "textback.toml", port=port, device=sim.device, db=tmp_path / "textback.db"
    )
    try:
        t0 = time.monotonic()
        async with running_daemon(config, tmp_path) as d:
            msg = await ready(d)
            assert time.monotonic() - t0 < 15.0
            assert "STATUS=AMI connecting, modem not ready" in msg
            await d.wait_log("event=modem_unavailable")
            await d.wait_log("AMI cannot connect")
            # the PBX comes up and the modem is plugged in: the daemon finds both
            await server.start(port=port)
            await sim.start()
            await notified(d, "WATCHDOG=1", 3)
            await d.wait_log("event=modem_ready")
            await d.wait_log("AMI connected")
            await settled(d, 1)
            check_texts(expectation(name), sim.sent, tmp_path / "textback.db")
            assert len(sim.sent) == 1
            assert await stop(d) == 0
    finally:
        await sim.stop()
        await server.close()


async def test_send_timeout_from_the_config_makes_a_silent_send_uncertain(tmp_path: Path) -> None:
    # [modem] send_timeout = 1s reaches the driver: a modem that takes 1.8 s to say +CMGS
    # leaves the text `uncertain` (it may have gone out), never resent
    call = load_sidecar("02-abandoned-while-ringing")["calls"][0]
    faults = simulator.Faults()
    async with rig(tmp_path, body_of("02-abandoned-while-ringing"), faults=faults) as r:
        r.server.flowing.clear()
        r.write()
        r.config.write_text(
            r.config.read_text().replace("[modem]\n", '[modem]\nsend_timeout = "1s"\n')
        )
        async with running_daemon(r.config, tmp_path) as d:
            await ready(d)
            await d.wait_log("event=modem_ready")
            faults.slow = 1.8
            r.server.flowing.set()
            await settled(d, 1)
            assert list(message_states(d).values()) == ["uncertain"]
            assert await stop(d) == 0
    assert [(s.number, s.text) for s in r.sim.sent] == [(call["caller_e164"], render(call))]
    rows = messages(r.db)
    assert [(x["state"], x["reason"], x["attempts"]) for x in rows] == [
        ("uncertain", "send_uncertain", 1)
    ]


async def test_a_second_daemon_on_the_same_database_refuses_to_start(tmp_path: Path) -> None:
    # one owner per database: two daemons would text every caller twice
    name = "02-abandoned-while-ringing"
    async with rig(tmp_path, body_of(name)) as r:
        r.server.flowing.clear()
        r.write()
        async with running_daemon(r.config, tmp_path) as d:
            await ready(d)
            second = tmp_path / "second"
            second.mkdir()
            async with running_daemon(r.config, second) as d2:
                assert await d2.wait_exit(WAIT) == 1
                assert any("event=start_failed" in line for line in d2.lines)
                assert not any("READY=1" in m for m in d2.notify.messages)
            r.server.flowing.set()
            await settled(d, 1)
            check_texts(expectation(name), r.sim.sent, r.db)
            assert len(r.sim.sent) == 1
            assert await stop(d) == 0


async def test_delivery_report_and_reply_reach_the_database(tmp_path: Path) -> None:
    name = "02-abandoned-while-ringing"
    caller = load_sidecar(name)["calls"][0]["caller_e164"]
    async with rig(tmp_path, body_of(name)) as r:
        r.write()
        async with running_daemon(r.config, tmp_path) as d:
            await ready(d)
            await settled(d, 1)
            [sms] = r.sim.sent
            assert sms.status_report  # [modem] status_reports defaults to on
            r.sim.inject_report(sms.references[0], caller)
            [report] = [fields(x) for x in await d.wait_log("event=delivery_report")]
            assert report["status"] == "delivered"
            [row] = messages(r.db)
            assert report["message"] == str(row["id"])
            parts = db_rows(r.db, "SELECT * FROM message_parts WHERE message_id = ?", [row["id"]])
            assert [(p["reference"], p["status"]) for p in parts] == [
                (sms.references[0], "delivered")
            ]
            r.sim.inject_text(caller, "Thanks, call me after 5")
            await d.wait_log("event=reply")
            replies = db_rows(r.db, "SELECT sender, text FROM replies")
            assert [tuple(x) for x in replies] == [(caller, "Thanks, call me after 5")]
            assert await stop(d) == 0


@pytest.mark.parametrize("mode", ["pdu", "text"])
async def test_stop_from_the_phone_is_obeyed_and_confirmed_once(tmp_path: Path, mode: str) -> None:
    # missed call -> text -> the caller answers STOP -> one confirmation at once, the
    # number on the do-not-text list with the exact words, the reply linked to the text;
    # in PDU mode and in text mode (the modem reads inbound texts in both)
    name = "02-abandoned-while-ringing"
    caller = load_sidecar(name)["calls"][0]["caller_e164"]
    async with rig(tmp_path, body_of(name)) as r:
        r.write(mode=mode)
        async with running_daemon(r.config, tmp_path) as d:
            await ready(d)
            await settled(d, 1)
            [first] = r.sim.sent
            [up] = [x for x in d.lines if "event=modem_ready" in x]
            assert f"mode={mode}" in up
            r.sim.inject_text(caller, "Stop!")
            await d.wait_log("event=reply")
            await wait_until(d, lambda: len(r.sim.sent) == 2)
            confirm = r.sim.sent[1]
            assert confirm.number == caller
            assert "Reply START" in confirm.text
            r.sim.inject_text(caller, "STOP")  # again: kept, not answered again
            await wait_until(d, lambda: len(db_rows(r.db, "SELECT id FROM replies")) == 2)
            optouts = db_rows(r.db, "SELECT number, source, text FROM optouts")
            assert [tuple(x) for x in optouts] == [(caller, "keyword", "Stop!")]
            replies = db_rows(r.db, "SELECT kind, message_id, answer_id FROM replies ORDER BY id")
            [row] = messages(r.db)[:1]
            assert replies[0]["kind"] == "opt_out"
            assert replies[0]["message_id"] == row["id"]
            assert replies[0]["answer_id"] is not None
            assert replies[1]["answer_id"] is None
            assert await stop(d) == 0
            assert len(r.sim.sent) == 2
            assert first.text != confirm.text


async def test_a_reply_comes_back_to_the_office_by_mail(tmp_path: Path) -> None:
    # missed call -> text -> the caller writes back -> a mail through a real SMTP server
    import email as email_lib
    import socket

    from aiosmtpd.controller import Controller

    got: list[email_lib.message.Message] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            got.append(email_lib.message_from_bytes(envelope.content))
            return "250 OK"

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    name = "02-abandoned-while-ringing"
    caller = load_sidecar(name)["calls"][0]["caller_e164"]
    try:
        async with rig(tmp_path, body_of(name)) as r:
            r.write(
                extra=(
                    '[replies]\nforward_email = ["desk@example.com"]\n'
                    f'[smtp]\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\n'
                    'from_address = "textback@example.com"\n'
                )
            )
            async with running_daemon(r.config, tmp_path) as d:
                await ready(d)
                await settled(d, 1)
                r.sim.inject_text(caller, "Can you call me after 5?")
                await d.wait_log("event=forwarded")
                assert await stop(d) == 0
    finally:
        controller.stop()
    (mail,) = got
    assert "to your missed call at" in mail["Subject"]
    body = mail.get_payload()
    assert isinstance(body, str)
    assert body.startswith("Can you call me after 5?")


async def test_stop_silences_the_next_missed_call_and_start_brings_texts_back(
    tmp_path: Path,
) -> None:
    # trace 20: one caller rings three times. After the first text the stream is paused and
    # the caller texts STOP (one confirmation); the second call is not texted
    # (opted_out); paused again, START (one confirmation); the third call is texted.
    name = "20-repeat-caller"
    caller = load_sidecar(name)["calls"][0]["caller_e164"]
    async with rig(tmp_path, body_of(name), speed=10.0) as r:
        r.write(cooldown="0s")
        async with running_daemon(r.config, tmp_path) as d:
            await ready(d)
            await logged_calls(d, 1)
            r.server.flowing.clear()
            await wait_until(d, lambda: len(r.sim.sent) == 1)
            r.sim.inject_text(caller, "STOP")
            await wait_until(d, lambda: len(r.sim.sent) == 2)  # the confirmation
            r.server.flowing.set()
            second = (await logged_calls(d, 2))[1]
            assert (second["decision"], second["reason"]) == ("suppress", "opted_out")
            r.server.flowing.clear()
            r.sim.inject_text(caller, "start")
            await wait_until(d, lambda: len(r.sim.sent) == 3)  # its confirmation
            r.server.flowing.set()
            calls = await logged_calls(d, 3)
            assert (calls[2]["decision"], calls[2]["reason"]) == ("send", "missed")
            await wait_until(d, lambda: len(r.sim.sent) == 4)
            assert await stop(d) == 0
    texts = [s.text for s in r.sim.sent]
    assert [s.number for s in r.sim.sent] == [caller] * 4
    assert "Reply START" in texts[1]
    assert "texts are back on" in texts[2]
    assert texts[3] == texts[0]
    kinds = [row["kind"] for row in db_rows(r.db, "SELECT kind FROM messages ORDER BY id")]
    assert kinds == ["missed_call", "opt_out_confirmation", "opt_in_confirmation", "missed_call"]


async def test_kill_9_while_calls_ring_then_restart_adopts_them(tmp_path: Path) -> None:
    # The burst replayed at speed 2, the daemon killed while about half its calls are still
    # ringing. The new process logs in, lists the channels in progress and adopts those
    # calls: each is judged as its sidecar says (the ring start of an adopted call is only
    # an estimate, so it never counts as a misdial), and nobody gets two texts. (Calls that
    # ended in the instant between the kill and the restart are lost with the process:
    # Asterisk does not replay events.)
    sidecar = load_sidecar(BURST)["calls"]
    expected = {c["caller"]: c["expected_textback"] for c in sidecar}
    texts = {c["caller_e164"]: render(c) for c in sidecar if c["expected_textback"]}
    async with rig(tmp_path, body_of(BURST), speed=2.0) as r:
        r.write()
        run1, run2 = tmp_path / "run1", tmp_path / "run2"
        run1.mkdir()
        run2.mkdir()
        async with running_daemon(r.config, run1) as d:
            await ready(d)
            await logged_calls(d, 10)
            await d.kill()
        before = {c["caller"] for c in events(d, "call")}
        async with running_daemon(r.config, run2) as d:
            await ready(d)
            await d.wait_log("adopted a call in progress")
            await streamed(d, r.server)
            # the adoptions are logged at the resync, before any call of the new process
            adopted = {fields(line)["linkedid"] for line in d.lines if "adopted a call" in line}

            def all_judged() -> bool:
                done = {c["linkedid"] for c in events(d, "call")}
                states = message_states(d).values()
                return adopted <= done and all(x in TERMINAL for x in states)

            await wait_until(d, all_judged)
            after = [c for c in events(d, "call") if c["linkedid"] in adopted]
            assert len(after) == len(adopted) > 5
            assert not before & {c["caller"] for c in after}
            wrong = [
                (c["caller"], c["outcome"], c["decision"])
                for c in after
                if (c["decision"] == "send") != expected[c["caller"]]
            ]
            assert not wrong, "\n".join(d.lines)
            assert await stop(d) == 0
    per_dest = collections.Counter(s.number for s in r.sim.sent)
    assert max(per_dest.values()) == 1
    assert all(texts[s.number] == s.text for s in r.sim.sent)
    assert {c["caller"] for c in after if expected[c["caller"]]} <= set(per_dest)


async def test_a_call_that_ends_while_the_ami_link_is_down(tmp_path: Path) -> None:
    # The link drops as call 07's phones stop ringing and everything else of that call
    # happens while nobody is connected (gap_events). At the reconnect its channels are gone: it
    # is finished on what was known, on the PBX's clock (the trace is from another day
    # than this host's clock), and still texted; the next call comes through as usual.
    names = ("07-ringgroup-noanswer", "02-abandoned-while-ringing")
    parts = retimed(*names, gap=3.0)
    body = b"".join(parts)
    mid = body.index(b"Event: DialEnd") + 5  # the phones stop ringing after 5 s
    lost = parts[0].count(b"\r\n\r\n", mid) - 1  # the rest of call 07
    async with rig(tmp_path, body, drop_at=[mid], gap_events=lost, speed=10.0) as r:
        r.write()
        async with running_daemon(r.config, tmp_path) as d:
            await ready(d)
            await streamed(d, r.server)
            await settled(d, 2)
            await d.wait_log("call ended during the AMI gap")
            assert await stop(d) == 0
    calls = db_rows(r.db, "SELECT caller, outcome, started_at, ended_at FROM calls ORDER BY id")
    assert [c["caller"] for c in calls] == ["+12025550107", "+12025550102"]
    assert calls[0]["outcome"] in ("abandoned", "no_answer")
    for c in calls:
        assert 0 <= c["ended_at"] - c["started_at"] < 30, dict(c)
    [gap] = db_rows(r.db, "SELECT * FROM ami_gaps")
    assert gap["ended_at"] > gap["started_at"]
    exp = {**expectation(names[0]).sure, **expectation(names[1]).sure}
    check_texts(Expectation(exp, {}, 2), r.sim.sent, r.db)


async def test_sigterm_with_a_slow_long_send_still_exits_in_time(tmp_path: Path) -> None:
    # A two-part text through a modem taking 3 s per answer needs 12 s, more than the
    # stop's grace time: SIGTERM waits the grace time for the send, says so, and exits 0
    # within 10 s (systemd's stop timeout is 15 s). The row stays `sending`; the next
    # start marks it `uncertain` and does not resend it.
    name = "01-missed-noanswer-voicemail"
    long_template = TEMPLATE + " " + "We are sorry for the wait. " * 6
    faults = simulator.Faults()
    async with rig(tmp_path, body_of(name), faults=faults) as r:
        r.server.flowing.clear()
        r.write(template=long_template)
        run1, run2 = tmp_path / "run1", tmp_path / "run2"
        run1.mkdir()
        run2.mkdir()
        async with running_daemon(r.config, run1) as d:
            await ready(d)
            await d.wait_log("event=modem_ready")
            faults.slow = 3.0  # under the 5 s wait for the prompt: each part goes through
            r.server.flowing.set()
            [call] = await logged_calls(d, 1)
            assert "2 parts" in call["detail"]
            await wait_until(d, lambda: "sending" in message_states(d).values())
            t0 = time.monotonic()
            d.signal(signal.SIGTERM)
            assert await d.wait_exit(12.0) == 0
            assert time.monotonic() - t0 < 10.0
            [line] = [x for x in d.lines if "event=stop_timeout" in x]
            assert fields(line)["waiting_for"] == "modem"
        assert [x["state"] for x in messages(r.db)] == ["sending"]
        assert r.sim.sent == []  # the second part never went
        faults.slow = 0.0
        async with running_daemon(r.config, run2) as d:
            await ready(d)
            await d.wait_log("event=outbox_recovered")
            assert await stop(d) == 0
    assert [(x["state"], x["reason"]) for x in messages(r.db)] == [
        ("uncertain", "in_flight_at_restart")
    ]
    assert r.sim.sent == []
