"""Several offices over one broker (issue 14), with real processes: a Mosquitto broker,
a sender daemon (`[ami] enabled = false`, `[jobs] serve = true`, a simulator modem) and
a site daemon (`[sending] via = "broker"`, the fake PBX replaying a recorded burst).
The simulator's records are the judge of what reached the network.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import time
from pathlib import Path

import aiomqtt
import pytest

from daemon.intake.replayserver import ReplayServer
from daemon.jobs.wire import number_hash, optout_topic
from gsm import simulator
from tests.daemonproc import running_daemon
from tests.mqtt_support import broker, free_port
from tests.test_e2e import (
    BURST,
    TERMINAL,
    body_of,
    db_rows,
    expectation,
    messages,
    ready,
    stop,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.timeout(90)

LAB_NUMBER = "+12025550199"  # the directly published jobs' destination (not in the burst)


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + "Z"


def site_config(path: Path, *, port: int, device: str, db: Path, extra: str) -> Path:
    write_config(path, port=port, device=device, db=db, extra=extra)
    return path


def sender_config(path: Path, device: str, db: Path, url: str) -> Path:
    extra = (
        f'[mqtt]\nurl = "{url}"\nsite = "bank"\ndiscovery = false\n'
        '[jobs]\nserve = true\ngroup = "dental"\n'
    )
    write_config(path, port=free_port(), device=device, db=db, extra=extra)
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^\[ami\]\n", "[ami]\nenabled = false\n", text, count=1)
    path.write_text(text, encoding="utf-8")
    return path


async def quiet_site(
    stack: contextlib.AsyncExitStack, tmp_path: Path, url: str
) -> tuple[ReplayServer, Path, Path]:
    """Site north's fake PBX replaying the burst (quiet until `flowing` is set), its
    database and its config (via the broker at `url`, group dental)."""
    server = ReplayServer(body_of(BURST), username="e2e", secret="e2e-secret")
    server.flowing.clear()
    await server.start()
    stack.push_async_callback(server.close)
    db = tmp_path / "site.db"
    extra = (
        f'[mqtt]\nurl = "{url}"\nsite = "north"\ndiscovery = false\n'
        '[sending]\nvia = "broker"\n[jobs]\ngroup = "dental"\n'
    )
    cfg = site_config(tmp_path / "site.toml", port=server.port, device="unused", db=db, extra=extra)
    return server, db, cfg


class Results:
    """A real MQTT 5 client that publishes jobs and keeps the results it hears; it grants
    each claim (a `taken` result) to the job's first claimant, as a site does."""

    def __init__(self, port: int, topic: str) -> None:
        self.port = port
        self.topic = topic
        self.heard: list[dict[str, str]] = []
        self.owners: dict[str, str] = {}
        self._new = asyncio.Event()
        self.client: aiomqtt.Client | None = None

    async def run(self, up: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", self.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            self.client = client
            await client.subscribe(self.topic, qos=1)
            up.set()
            async for m in client.messages:
                assert isinstance(m.payload, bytes)
                heard = json.loads(m.payload)
                if heard["state"] == "taken":
                    owner = self.owners.setdefault(heard["job_id"], heard["sender"])
                    grant = {"job_id": heard["job_id"], "sender": heard["sender"]}
                    grant["go"] = owner == heard["sender"]
                    grants = self.topic.rsplit("/", 1)[0] + "/grants"
                    await client.publish(grants, json.dumps(grant).encode(), qos=1)
                    continue
                self.heard.append(heard)
                self._new.set()

    async def wait(self, n: int, timeout: float = 20.0) -> None:
        async def _wait() -> None:
            while len(self.heard) < n:
                self._new.clear()
                await self._new.wait()

        try:
            await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{len(self.heard)} results of {n}: {self.heard}") from None

    async def publish(self, site: str, payload: bytes) -> None:
        assert self.client is not None
        await self.client.publish(f"textback/jobs/{site}", payload, qos=1)


async def test_sender_and_site_over_a_broker(tmp_path: Path) -> None:
    exp = expectation(BURST)
    assert len(exp.sure) == 23
    stopper = sorted(exp.sure)[0]  # texts STOP to the bank before the site starts
    async with contextlib.AsyncExitStack() as stack:
        mq = await stack.enter_async_context(broker(tmp_path))
        sim = await stack.enter_async_context(
            simulator.running("sim800", simulator.Faults(accept_delay=0.02))
        )
        sdb = tmp_path / "sender.db"
        (tmp_path / "s").mkdir()
        scfg = sender_config(tmp_path / "s" / "sender.toml", sim.device, sdb, mq.url)
        sender = await stack.enter_async_context(running_daemon(scfg, tmp_path / "s"))
        await ready(sender)
        await sender.wait_log("event=jobs_link_up")

        # -- a STOP received by the bank's modem goes to the whole group's list
        sim.inject_text(stopper, "STOP")
        await sender.wait_log("event=group_optout_published")

        # -- jobs published by hand: repeated, expired, malformed
        res = Results(mq.port, "textback/lab/results")
        up = asyncio.Event()
        task = asyncio.create_task(res.run(up))
        stack.push_async_callback(_cancel, task)
        await asyncio.wait_for(up.wait(), 10)
        # The sender daemon judges not_after on the system clock: only the +-600 s and -5 s
        # windows around "now" matter, never the hour.
        job = {
            "job_id": "lab:1:1000",
            "destination": LAB_NUMBER,
            "text": "one text, three deliveries",
            "line": "",
            "not_after": iso(time.time() + 600),
        }
        for _ in range(3):
            await res.publish("lab", json.dumps(job).encode())
        old = dict(job, job_id="lab:2:1000", text="too late", not_after=iso(time.time() - 5))
        await res.publish("lab", json.dumps(old).encode())
        bad = [
            b"not json at all",
            json.dumps({"job_id": "lab:3:1"}).encode(),
            json.dumps(dict(job, job_id="lab:4:1", destination="+1202555")).encode(),
            json.dumps(dict(job, job_id="lab:5:1", text="x" * 10_000)).encode(),
            json.dumps(dict(job, job_id="north:6:1")).encode(),  # forged: another site's id
        ]
        for payload in bad:
            await res.publish("lab", payload)
        # the two repeats came while the text was on its way: its one result follows
        await res.wait(1 + 1 + len(bad))
        # seen again after its result: answered from the record, not sent again
        await res.publish("lab", json.dumps(job).encode())
        await res.wait(2 + 1 + len(bad))
        by_state = collections.Counter(r["state"] for r in res.heard)
        assert by_state == {"sent": 2, "expired": 1, "refused": 5}, res.heard
        assert {r["job_id"] for r in res.heard if r["state"] == "sent"} == {"lab:1:1000"}
        refused = [r["detail"] for r in res.heard if r["state"] == "refused"]
        assert any("not JSON" in d for d in refused)
        assert any("missing" in d for d in refused)
        assert any("not a valid number" in d or "E.164" in d for d in refused)
        assert any("10000 characters" in d for d in refused)
        assert any("not one of site" in d for d in refused)
        assert [p.text for p in sim.parts if p.number == LAB_NUMBER] == [job["text"]]
        assert sender.proc is not None
        assert sender.proc.returncode is None

        # -- a site joins later: it gets the group's list, then its burst goes by the bank
        # The PBX is quiet until the site's link is up, the group's list in: the stopper's
        # call is then suppress/opted_out (a call decided before would have its text
        # cancelled when the list applies; test_a_new_site_sends_nothing_... covers that)
        server, db, cfg = await quiet_site(stack, tmp_path, mq.url)
        async with running_daemon(cfg, tmp_path) as site:
            await ready(site)
            await site.wait_log("event=jobs_link_up", 30)
            server.flowing.set()
            await wait_until(
                site,
                lambda: (
                    len(messages(db)) == 22 and all(m["state"] in TERMINAL for m in messages(db))
                ),
            )
            assert await stop(site) == 0
        rows = messages(db)
        assert collections.Counter(r["state"] for r in rows) == {"sent": 22}
        assert all(r["sender"] == "bank/modem" for r in rows)
        optout = db_rows(
            db,
            "SELECT d.action, d.reason FROM decisions d JOIN calls c ON c.id = d.call_id"
            " WHERE c.destination = ?",
            (stopper,),
        )
        assert [(r["action"], r["reason"]) for r in optout][:1] == [("suppress", "opted_out")]
        assert await stop(sender) == 0

    # every expected text reached the network once; the stopper got only its confirmation
    reached = collections.Counter(p.number for p in sim.parts if p.number != LAB_NUMBER)
    want = collections.Counter(n for n in exp.sure if n != stopper)
    want[stopper] = 1  # the opt-out confirmation
    assert reached == want
    assert {p.number: p.text for p in sim.parts if p.number in want and p.number != stopper} == {
        n: t for n, t in exp.sure.items() if n != stopper
    }
    jobs = db_rows(sdb, "SELECT state FROM jobs")
    assert collections.Counter(r["state"] for r in jobs) == {"sent": 23, "expired": 1}


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
        await task


#: Fictional 555-01xx numbers of real area codes: the group list's filler.
FILLER_AREAS = (202, 206, 212, 213, 303, 305, 312, 404, 415, 512, 617, 702, 713, 718, 801)


async def test_a_new_site_sends_nothing_before_the_group_list_is_in(tmp_path: Path) -> None:
    """A new site's calls come as soon as its link is up: the group's retained do-not-text
    list (1,500 numbers, so it takes a while to apply) is in by then, so a number opted
    out elsewhere gets no job, rather than one the sender must refuse or, worse, send."""
    exp = expectation(BURST)
    out = set(exp.sure) | set(exp.maybe)  # every number the burst could text
    fillers = [f"+1{ac}55501{n:02d}" for ac in FILLER_AREAS for n in range(100)]
    listed = sorted(out) + [n for n in fillers if n not in out]
    async with contextlib.AsyncExitStack() as stack:
        mq = await stack.enter_async_context(broker(tmp_path))
        sim = await stack.enter_async_context(simulator.running("sim800"))
        async with aiomqtt.Client("127.0.0.1", mq.port) as office:
            for i, number in enumerate(listed):
                payload = {
                    "event_id": f"0190f0b2-0000-7000-8000-{i:012d}",
                    "number": number,
                    "opted_out": True,
                    "source": "keyword",
                    "origin": "elsewhere",
                    "at": "2026-11-01T12:00:00.000Z",
                }
                await office.publish(
                    optout_topic("textback", "dental", number_hash("dental", number)),
                    json.dumps(payload).encode(),
                    qos=1,
                    retain=True,
                )
        sdb = tmp_path / "sender.db"
        (tmp_path / "s").mkdir()
        scfg = sender_config(tmp_path / "s" / "sender.toml", sim.device, sdb, mq.url)
        sender = await stack.enter_async_context(running_daemon(scfg, tmp_path / "s"))
        await ready(sender)
        await sender.wait_log("event=jobs_link_up", 60)

        server, db, cfg = await quiet_site(stack, tmp_path, mq.url)
        async with running_daemon(cfg, tmp_path) as site:
            await ready(site)
            await site.wait_log("event=jobs_link_up", 60)
            server.flowing.set()
            await wait_until(
                site,
                lambda: (
                    len(db_rows(db, "SELECT id FROM calls")) == exp.calls
                    and all(m["state"] in TERMINAL for m in messages(db))
                ),
            )
            assert await stop(site) == 0
        assert await stop(sender) == 0
    rows = messages(db)
    assert [r["state"] for r in rows if r["state"] != "cancelled"] == [], rows
    assert db_rows(sdb, "SELECT job_id FROM jobs") == []  # no job ever reached a sender
    assert [p.number for p in sim.parts] == []
    # the whole list came (Mosquitto queues a subscriber's retained messages past its
    # max_queued_messages of 1,000)
    assert len(db_rows(db, "SELECT number FROM optouts")) == len(listed)
