"""Several offices over one broker when parts fail (issue 14), with real processes: a
Mosquitto broker, two sender daemons (`[jobs] serve`, a simulator modem each) and a site
daemon (`[sending] via = "broker"`, the fake PBX replaying a recorded burst). A sender is
killed with SIGKILL mid-burst; the broker is restarted mid-burst. The simulators' records
are the judge of what reached the network; the site's database of what it was told.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from daemon.clock import ManualClock
from daemon.config import load_config
from daemon.intake.replayserver import ReplayServer
from daemon.jobs.link import LinkDown
from daemon.jobs.site import BrokerSender
from daemon.sending.sender import SendRequest, SendResult
from gsm import simulator
from tests.daemonproc import Daemon, running_daemon
from tests.mqtt_support import Mosquitto, free_port
from tests.test_e2e import (
    BURST,
    TERMINAL,
    body_of,
    db_rows,
    events,
    expectation,
    messages,
    ready,
    stop,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.timeout(90)

#: Seconds each simulated modem waits for the network to accept a text: the burst of 23
#: then takes a few seconds, long enough to kill a sender or restart the broker inside it.
ACCEPT_DELAY = 0.3
#: The site offers again a job nobody claimed after this long (default 10 s; short here so
#: that the test does not wait for it).
REPUBLISH = "2s"


class PersistentMosquitto(Mosquitto):
    """A broker that keeps sessions and queued QoS 1 messages across a restart (on the
    same port), as Debian's packaged Mosquitto does (`persistence true`): it writes its
    database when stopped (SIGTERM) and reads it at the start."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        conf = self.conf.read_text()
        conf = conf.replace(
            "persistence false\n", f"persistence true\npersistence_location {workdir}/\n"
        )
        self.conf.write_text(conf)

    def restart(self) -> None:
        """SIGTERM, then start again on the same port."""
        self.stop()
        self.start()


@contextlib.asynccontextmanager
async def started(b: Mosquitto) -> AsyncIterator[Mosquitto]:
    """`b` started, stopped afterwards whatever happened."""
    b.start()
    try:
        yield b
    finally:
        b.stop()


def sender_config(path: Path, name: str, device: str, url: str) -> Path:
    """A sender of group "dental": no PBX, one modem, jobs served."""
    extra = (
        f'[mqtt]\nurl = "{url}"\nsite = "{name}"\ndiscovery = false\n'
        '[jobs]\nserve = true\ngroup = "dental"\n'
    )
    write_config(path, port=free_port(), device=device, db=path.parent / "sender.db", extra=extra)
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^\[ami\]\n", "[ami]\nenabled = false\n", text, count=1)
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class Bank:
    """One sender daemon's parts."""

    name: str
    sim: simulator.Simulator
    config: Path
    db: Path


async def bank(
    stack: contextlib.AsyncExitStack, tmp: Path, name: str, url: str
) -> tuple[Bank, Daemon]:
    """A simulator modem and a running sender daemon named `name`, linked to the broker."""
    sim = await stack.enter_async_context(
        simulator.running("sim800", simulator.Faults(accept_delay=ACCEPT_DELAY))
    )
    (tmp / name).mkdir()
    cfg = sender_config(tmp / name / "sender.toml", name, sim.device, url)
    b = Bank(name, sim, cfg, tmp / name / "sender.db")
    return b, await start_sender(stack, b, tmp / name)


async def start_sender(stack: contextlib.AsyncExitStack, b: Bank, run: Path) -> Daemon:
    """Start (or start again) the sender daemon of `b`, from `run` (its notify socket)."""
    d = await stack.enter_async_context(running_daemon(b.config, run))
    await ready(d)
    await d.wait_log("event=jobs_link_up")
    return d


async def site(stack: contextlib.AsyncExitStack, tmp: Path, url: str) -> tuple[Daemon, Path]:
    """The site "north" replaying the recorded burst; its texts go through the broker."""
    server = ReplayServer(body_of(BURST), username="e2e", secret="e2e-secret")
    await server.start()
    stack.push_async_callback(server.close)
    db = tmp / "site.db"
    extra = (
        f'[mqtt]\nurl = "{url}"\nsite = "north"\ndiscovery = false\n'
        f'[sending]\nvia = "broker"\nrepublish = "{REPUBLISH}"\n[jobs]\ngroup = "dental"\n'
    )
    cfg = write_config(tmp / "site.toml", port=server.port, device="unused", db=db, extra=extra)
    d = await stack.enter_async_context(running_daemon(cfg, tmp))
    await ready(d)
    return d, db


def states(db: Path) -> collections.Counter[str]:
    """The site's texts by state."""
    return collections.Counter(r["state"] for r in messages(db))


def reached(*sims: simulator.Simulator) -> collections.Counter[str]:
    """Every whole text the simulators took, by destination."""
    return collections.Counter(s.number for sim in sims for s in sim.sent)


def jobs_of(db: Path) -> list[Any]:
    """A sender's recorded jobs."""
    return db_rows(db, "SELECT job_id, state, message_id FROM jobs ORDER BY received_at")


async def test_kill_9_of_a_sender_mid_burst(tmp_path: Path) -> None:
    """The other sender takes the rest; nothing is sent twice; the text the killed sender
    had in flight comes back `uncertain` when it is back (its own database says so)."""
    exp = expectation(BURST)
    async with contextlib.AsyncExitStack() as stack:
        mq = await stack.enter_async_context(started(Mosquitto(tmp_path)))
        a, da = await bank(stack, tmp_path, "bank1", mq.url)
        b, db_ = await bank(stack, tmp_path, "bank2", mq.url)
        sited, sdb = await site(stack, tmp_path, mq.url)

        # bank1's second text reaches its modem, which then waits ACCEPT_DELAY before its
        # +CMGS: that text is `sending` in bank1's database when the kill comes
        await asyncio.wait_for(a.sim.wait_sent(2), 30)
        await da.kill()
        by_a = [s.number for s in a.sim.sent]
        assert len(by_a) == 2
        texts = {r["id"]: r for r in messages(a.db)}
        # unanswered jobs whose text has not ended (an answer is published, then recorded:
        # the kill may fall between the two for the text sent before)
        held = [
            r
            for r in jobs_of(a.db)
            if not r["state"]
            and (r["message_id"] is None or texts[r["message_id"]]["state"] not in TERMINAL)
        ]
        in_flight = [texts[r["message_id"]] for r in held if r["message_id"] is not None]
        in_flight = [x for x in in_flight if x["state"] == "sending"]
        assert [x["destination"] for x in in_flight] == [by_a[-1]]
        # besides the one in flight, at most one job claimed ahead (one modem + TAKE_AHEAD)
        assert len(held) <= 2, held
        # the site's texts bank1 may own: its message id is the middle of the job_id
        owned = {int(r["job_id"].split(":")[1]) for r in held}

        # bank2 takes everything else: the jobs bank1 had not claimed come to it again
        def rest_done() -> bool:
            rows = messages(sdb)
            return len(rows) == 23 and all(
                r["state"] in TERMINAL for r in rows if r["id"] not in owned
            )

        await wait_until(sited, rest_done, timeout=45)
        assert await sited.wait_log("event=job_offered_again")
        assert {r["state"] for r in messages(sdb) if r["id"] not in owned} == {"sent"}
        assert len(b.sim.sent) >= 23 - len(held) - len(by_a)

        # bank1 is back: its database answers the job in flight `uncertain` (never resent)
        # and sends the one it had claimed ahead, if any
        (tmp_path / "bank1-again").mkdir()
        da = await start_sender(stack, a, tmp_path / "bank1-again")
        await wait_until(
            sited,
            lambda: len(messages(sdb)) == 23 and all(r["state"] in TERMINAL for r in messages(sdb)),
        )
        assert await stop(sited) == 0
        assert await stop(da) == 0
        assert await stop(db_) == 0

    assert states(sdb) == {"sent": 22, "uncertain": 1}
    [unsure] = [r for r in messages(sdb) if r["state"] == "uncertain"]
    assert unsure["destination"] == in_flight[0]["destination"]
    assert unsure["sender"].startswith("bank1")  # the sender that had it in flight
    assert unsure["last_error"] == "in_flight_at_restart"  # the sender's own word for it
    # every expected text reached the network exactly once, by one modem or the other
    assert reached(a.sim, b.sim) == collections.Counter(exp.sure.keys())
    assert {s.number: s.text for sim in (a.sim, b.sim) for s in sim.sent} == exp.sure
    # bank2 claimed no job of bank1's: the two ledgers share no job_id
    mine = {r["job_id"] for r in jobs_of(b.db) if r["state"] == "sent"}
    theirs = {r["job_id"] for r in jobs_of(a.db) if r["state"] in ("sent", "uncertain")}
    assert not mine & theirs
    assert len(mine) + len(theirs) == 23


async def test_central_broker_restarted_mid_burst(tmp_path: Path) -> None:
    """Nothing lost, nothing doubled: every text is sent once and every site text ends."""
    exp = expectation(BURST)
    async with contextlib.AsyncExitStack() as stack:
        mq = PersistentMosquitto(tmp_path)
        await stack.enter_async_context(started(mq))
        a, da = await bank(stack, tmp_path, "bank1", mq.url)
        b, db_ = await bank(stack, tmp_path, "bank2", mq.url)
        sited, sdb = await site(stack, tmp_path, mq.url)

        await wait_until(sited, lambda: states(sdb)["sent"] >= 4, timeout=30)
        mq.restart()
        assert (tmp_path / "mosquitto.db").exists()  # what it kept over the restart
        for d in (sited, da, db_):
            await d.wait_log("event=jobs_link_up", count=2)
        await wait_until(
            sited,
            lambda: len(messages(sdb)) == 23 and all(r["state"] in TERMINAL for r in messages(sdb)),
            timeout=45,
        )
        texted_at_restart = [f for f in events(sited, "message") if f.get("state") == "sent"]
        assert await stop(sited) == 0
        assert await stop(da) == 0
        assert await stop(db_) == 0

    assert len(texted_at_restart) == 23
    assert states(sdb) == {"sent": 23}
    assert reached(a.sim, b.sim) == collections.Counter(exp.sure.keys())
    assert {s.number: s.text for sim in (a.sim, b.sim) for s in sim.sent} == exp.sure
    assert a.sim.sent  # both senders worked
    assert b.sim.sent


async def test_a_claim_left_by_a_killed_sender_is_given_back(tmp_path: Path) -> None:
    """A sender killed after claiming a job and before its grant came answers it
    `released` when it is back (never taken, never sent), so the site may offer it again."""
    async with contextlib.AsyncExitStack() as stack:
        mq = await stack.enter_async_context(started(Mosquitto(tmp_path)))
        a, da = await bank(stack, tmp_path, "bank1", mq.url)
        client = await stack.enter_async_context(
            aiomqtt.Client("127.0.0.1", mq.port, protocol=aiomqtt.ProtocolVersion.V5)
        )
        await client.subscribe("textback/lab/results", qos=1)
        # the daemon judges not_after on the system clock: only "10 min from now" matters
        not_after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))
        job = {
            "job_id": "lab:1:1000",
            "destination": "+12025550142",
            "text": "claimed, never granted",
            "line": "",
            "not_after": not_after,
        }
        await client.publish("textback/jobs/lab", json.dumps(job).encode(), qos=1)
        heard: list[dict[str, str]] = []

        async def next_result() -> dict[str, str]:
            async for m in client.messages:
                assert isinstance(m.payload, bytes)
                got: dict[str, str] = json.loads(m.payload)
                heard.append(got)
                return got
            raise AssertionError("the client stopped")

        claim = await asyncio.wait_for(next_result(), 20)
        assert (claim["job_id"], claim["state"], claim["sender"]) == (
            "lab:1:1000",
            "taken",
            "bank1",
        )
        # no grant: the claim is on bank1's disk, the job not in its outbox
        assert [(r["job_id"], r["state"], r["message_id"]) for r in jobs_of(a.db)] == [
            ("lab:1:1000", "", None)
        ]
        await da.kill()

        (tmp_path / "bank1-again").mkdir()
        da = await start_sender(stack, a, tmp_path / "bank1-again")
        released = await asyncio.wait_for(next_result(), 20)
        assert (released["job_id"], released["state"]) == ("lab:1:1000", "released")
        assert "not sent" in released["detail"]
        await da.wait_log("event=job_released")  # logged once it is off the ledger
        assert jobs_of(a.db) == []  # forgotten: a copy offered again is claimed anew
        assert await stop(da) == 0
    assert a.sim.sent == []


# -- the site's rules for claims, in process (a fake link, the clock injected) -----------


class FakeLink:
    """What BrokerSender needs of daemon.jobs.link.Link: it keeps what was published."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.new = asyncio.Event()
        #: Publishes tried, LinkDown ones included.
        self.attempts = 0

    async def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, expiry: float | None = None
    ) -> None:
        self.attempts += 1
        if not self.connected.is_set():
            raise LinkDown("no broker connection")
        self.published.append((topic, json.loads(payload)))
        self.new.set()

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [p for t, p in self.published if t == topic]

    async def wait(self, topic: str, n: int) -> None:
        async def _wait() -> None:
            while len(self.on(topic)) < n:
                self.new.clear()
                await self.new.wait()

        await asyncio.wait_for(_wait(), 5)


@dataclass
class FakeRow:
    """The outbox row BrokerSender reads (its id and creation time)."""

    id: int
    created_at: float


class FakeStore:
    """What BrokerSender needs of the store: the row a send is for."""

    def __init__(self, created_at: float) -> None:
        self.created_at = created_at

    async def get_message(self, message_id: int) -> FakeRow:
        return FakeRow(message_id, self.created_at)


def claim(jid: str, sender: str, state: str = "taken") -> bytes:
    """A claim (or a result) as a sender publishes it."""
    payload = {"job_id": jid, "state": state, "detail": "", "sender": sender, "modem": "m"}
    return json.dumps(payload | {"at": "2026-11-24T15:00:00Z"}).encode()


@contextlib.asynccontextmanager
async def one_job(
    republish: str = "10s",
) -> AsyncIterator[tuple[BrokerSender, FakeLink, ManualClock, asyncio.Task[SendResult]]]:
    """A BrokerSender of site "north" sending one text (message 7) as a job."""
    cfg = load_config(
        None,
        overrides={
            "mqtt": {"url": "mqtt://127.0.0.1:1", "site": "north"},
            "sending": {"via": "broker", "republish": republish},
        },
    )
    clock = ManualClock()
    link = FakeLink()
    # the fakes have what BrokerSender uses of a Store and a Link (tests are not type-checked)
    sender = BrokerSender(cfg, FakeStore(clock.now()), clock, link=link)  # type: ignore[arg-type]
    request = SendRequest("+12025550142", "hello", message_id=7)
    task = asyncio.create_task(sender.send(request))
    await link.wait("textback/jobs/north", 1)
    try:
        yield sender, link, clock, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_first_claim_wins_and_only_its_sender_answers() -> None:
    async with one_job() as (sender, link, clock, task):
        [job] = link.on("textback/jobs/north")
        jid = job["job_id"]
        await sender.on_message("textback/north/results", claim(jid, "bank2"))
        await sender.on_message("textback/north/results", claim(jid, "bank1"))
        await sender.on_message("textback/north/results", claim(jid, "bank2"))  # asked again
        await link.wait("textback/north/grants", 3)  # each published by a task of its own
        assert [(g["sender"], g["go"]) for g in link.on("textback/north/grants")] == [
            ("bank2", True),
            ("bank1", False),
            ("bank2", True),
        ]
        # claimed: never offered again, however long it waits
        clock.advance(60)
        await asyncio.sleep(0)
        assert len(link.on("textback/jobs/north")) == 1
        # bank1's word on a job it does not own counts for nothing
        await sender.on_message("textback/north/results", claim(jid, "bank1", "expired"))
        assert not task.done()
        await sender.on_message("textback/north/results", claim(jid, "bank2", "sent"))
        result = await asyncio.wait_for(task, 5)
        assert (result.status, result.sender) == ("sent", "bank2/m")
        # the job is no longer awaited: a late claim is refused
        await sender.on_message("textback/north/results", claim(jid, "bank1"))
        await link.wait("textback/north/grants", 4)
        assert link.on("textback/north/grants")[-1] == {
            "job_id": jid,
            "sender": "bank1",
            "go": False,
        }


async def test_a_job_nobody_claims_is_offered_again_until_one_does() -> None:
    async with one_job("10s") as (sender, link, clock, task):
        jid = link.on("textback/jobs/north")[0]["job_id"]
        for n in (2, 3):
            clock.advance(10)
            await link.wait("textback/jobs/north", n)
        assert {j["job_id"] for j in link.on("textback/jobs/north")} == {jid}
        assert sender.reoffered == 2
        await sender.on_message("textback/north/results", claim(jid, "bank1"))
        clock.advance(30)
        await asyncio.sleep(0)
        assert len(link.on("textback/jobs/north")) == 3
        # given back by a sender that stopped before taking it: a retryable failure, so
        # the outbox requeues the text and its next attempt offers it to anyone again
        await sender.on_message("textback/north/results", claim(jid, "bank1", "released"))
        result = await asyncio.wait_for(task, 5)
        assert (result.status, result.retryable) == ("failed", True)
        assert result.error.startswith("released")


async def test_an_offer_due_while_the_broker_is_away_waits_for_it_without_spinning() -> None:
    async with one_job("10s") as (sender, link, clock, task):
        link.connected.clear()
        clock.advance(10)  # the offer again is due; the publish finds no broker
        for _ in range(50):
            await asyncio.sleep(0)
        assert link.attempts == 2  # tried once, then waits for the broker, not in a loop
        link.connected.set()
        await link.wait("textback/jobs/north", 2)
        assert sender.reoffered == 1
        assert not task.done()
