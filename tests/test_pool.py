"""Several modems (issue 12): the pool routes each text to the right SIM, sends one text per
modem at a time, moves a text to another modem only when it is known not sent, and
honours each SIM's monthly cap.

Real parts: the outbox and the pool over a real SQLite file, each modem a simulator on a
real pty with its own profile. The tests wait on the simulators and the database, never on
timers; the simulators' records of what reached the network are the judge.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.clock import SystemClock
from daemon.config import Config, load_config
from daemon.model import MessageKind
from daemon.outbox.outbox import Outbox
from daemon.sending.pool import ModemPool
from daemon.sinks.bus import EventBus
from daemon.sinks.events import Event, TextChanged
from daemon.store.store import Store
from gsm.finder import find_by_imei
from gsm.modem import Timeouts
from gsm.simulator import PROFILES, Faults, Simulator, running

pytestmark = pytest.mark.timeout(60)

FAST = Timeouts(command=5.0, probe=0.2, startup=10.0, prompt=5.0, send=5.0, health_interval=0)
#: Test numbers only (555-01xx).
CALLERS = [f"+1202555{n:04d}" for n in range(110, 130)]
LINE_A = "+12025550100"
LINE_B = "+12025550199"
WAIT = 30.0


def imei(n: int) -> str:
    """A made-up IMEI per simulator (15 digits)."""
    return f"35693803564{n:04d}"


class Changes:
    """A sink that keeps every TextChanged (the journal's message lines)."""

    name = "test-changes"

    def __init__(self) -> None:
        self.seen: list[TextChanged] = []

    def handle(self, event: Event) -> None:
        if isinstance(event, TextChanged):
            self.seen.append(event)


@dataclasses.dataclass
class Rig:
    """The pool's modems, the outbox, the database."""

    sims: list[Simulator]
    pool: ModemPool
    outbox: Outbox
    store: Store
    db: Path
    changes: Changes

    async def text(self, number: str, line: str = "") -> int:
        return await self.outbox.enqueue(
            destination=number,
            text=f"Sorry we missed your call ({number[-2:]})",
            template_kind=None,
            call_ids=[],
            kind=MessageKind.MISSED_CALL,
            line=line,
        )

    def rows(self) -> list[sqlite3.Row]:
        con = sqlite3.connect(self.db)
        con.row_factory = sqlite3.Row
        try:
            return list(con.execute("SELECT * FROM messages ORDER BY id"))
        finally:
            con.close()

    def states(self) -> collections.Counter[str]:
        return collections.Counter(r["state"] for r in self.rows())

    async def until(self, predicate: Callable[[], bool], what: str = "") -> None:
        async def _wait() -> None:
            # the simulator looks again whenever it changes and every 10 ms (the database)
            await self.sims[0].wait_for(predicate)

        try:
            await asyncio.wait_for(_wait(), WAIT)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}: {self.states()}") from None

    async def settled(self, n: int) -> None:
        """Until `n` texts are in a final state."""
        final = ("sent", "failed", "uncertain", "expired", "cancelled")
        await self.until(lambda: sum(r["state"] in final for r in self.rows()) >= n, f"{n} done")

    def sent_by(self) -> dict[str, list[str]]:
        """Per simulator (by modem name): the numbers that reached the network."""
        return {
            lane.name: [p.number for p in sim.parts]
            for lane, sim in zip(self.pool.lanes, self.sims, strict=True)
        }


def did_key(did: str) -> str:
    """DIDs as the service matches them (E.164 there; the last ten digits will do here)."""
    return "".join(ch for ch in did if ch.isdigit())[-10:]


def config(modems: list[dict[str, Any]], **textback: Any) -> Config:
    tb = {
        "delay": "0s",
        "retry_backoff": "1s",
        "max_per_hour": 0,
        "max_per_day": 0,
        "max_per_month": 0,
        **textback,
    }
    return load_config(None, overrides={"modems": modems, "textback": tb})


@contextlib.asynccontextmanager
async def pool_rig(
    tmp_path: Path,
    specs: list[tuple[str, dict[str, Any]]],
    *,
    faults: list[Faults | None] | None = None,
    imeis: list[str] | None = None,
    start: bool = True,
    **textback: Any,
) -> AsyncIterator[Rig]:
    """Simulators of these profiles, one [[modems]] entry each (name modem<i> unless the
    entry names it), the pool and the outbox running."""
    async with contextlib.AsyncExitStack() as stack:
        sims = []
        for i, (profile, _entry) in enumerate(specs):
            prof = dataclasses.replace(
                PROFILES[profile], imei=(imeis or [])[i] if imeis else imei(i)
            )
            f = (faults or [None] * len(specs))[i]
            sims.append(await stack.enter_async_context(running(prof, f)))
        modems = [
            {"name": f"modem{i}", "device": sim.device, **entry}
            for i, ((_p, entry), sim) in enumerate(zip(specs, sims, strict=True))
        ]
        cfg = config(modems, **textback)
        bus = EventBus.standard()
        changes = Changes()
        bus.add(changes)
        tmp_path.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a test, once
        db = tmp_path / "tb.db"
        store = await Store.open(db, bus=bus)
        stack.push_async_callback(store.close)
        clock = SystemClock()
        pool = ModemPool(cfg, store=store, bus=bus, clock=clock, timeouts=FAST, line_key=did_key)
        outbox = Outbox(cfg, store, clock, pool)
        tasks = [asyncio.create_task(pool.run())]
        rig = Rig(sims, pool, outbox, store, db, changes)
        try:
            if start:
                await rig.until(lambda: all(lane.ready for lane in pool.lanes), "modems ready")
            tasks.append(asyncio.create_task(outbox.run()))
            yield rig
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await pool.close()


async def test_each_line_goes_out_through_its_own_sim(tmp_path: Path) -> None:
    specs = [("sim800", {"lines": [LINE_A]}), ("huawei", {"lines": ["(202) 555-0199"]})]
    async with pool_rig(tmp_path, specs) as r:
        for n, number in enumerate(CALLERS[:6]):
            await r.text(number, line="2025550100" if n % 2 == 0 else LINE_B)
        await r.settled(6)
        assert r.sent_by() == {"modem0": CALLERS[0:6:2], "modem1": CALLERS[1:6:2]}
        assert {(x["destination"], x["sender"]) for x in r.rows()} == {
            (c, "modem0" if n % 2 == 0 else "modem1") for n, c in enumerate(CALLERS[:6])
        }
        assert r.states() == {"sent": 6}


async def test_four_modems_send_four_texts_at_once(tmp_path: Path) -> None:
    # each modem holds a text 1 s between its body and +CMGS: all four are in flight
    # together, and eight texts spread two to each modem
    slow = [Faults(accept_delay=1.0) for _ in range(4)]
    specs: list[tuple[str, dict[str, Any]]] = [
        ("sim800", {}),
        ("huawei", {}),
        ("quectel", {}),
        ("wavecom", {}),
    ]
    async with pool_rig(tmp_path, specs, faults=slow) as r:
        for number in CALLERS[:8]:
            await r.text(number)
        await r.until(lambda: all(sim.parts for sim in r.sims), "a part at each modem")
        assert r.states()["sending"] == 4
        assert len({x["sender"] for x in r.rows() if x["state"] == "sending"}) == 4
        await r.settled(8)
        assert sorted(len(v) for v in r.sent_by().values()) == [2, 2, 2, 2]
        everything = [n for v in r.sent_by().values() for n in v]
        assert sorted(everything) == sorted(CALLERS[:8])  # each once


async def test_a_number_goes_back_through_the_sim_that_last_texted_it(tmp_path: Path) -> None:
    specs = [("quectel", {}), ("huawei", {"lines": [LINE_B]})]
    async with pool_rig(tmp_path, specs) as r:
        await r.text(CALLERS[0], line=LINE_B)  # modem1, its line
        await r.settled(1)
        # no line now: modem0 is first and idle, but modem1 texted this number last
        await r.text(CALLERS[0])
        await r.text(CALLERS[1])  # a number nobody texted: the first free modem
        await r.settled(3)
        assert r.sent_by() == {"modem0": [CALLERS[1]], "modem1": [CALLERS[0], CALLERS[0]]}


@pytest.mark.parametrize("fallback", [False, True])
async def test_a_line_waits_for_its_own_modem_unless_it_may_fall_back(
    tmp_path: Path, fallback: bool
) -> None:
    expect = "sent" if fallback else "queued"
    async with pool_rig(
        tmp_path,
        [("sim800", {"lines": [LINE_A], "fallback": fallback}), ("huawei", {})],
    ) as r:
        r.sims[0].vanish()  # the line's own modem is unplugged
        await r.until(lambda: not r.pool.lanes[0].ready, "modem0 gone")
        await r.text(CALLERS[0], line=LINE_A)
        await r.text(CALLERS[1])  # no line: modem1 takes it either way
        await r.until(lambda: r.states()["sent"] == 1 + fallback, "free texts sent")
        await r.outbox.settle()  # a pass after the last send: the line's text stays
        by_dest = {x["destination"]: x for x in r.rows()}
        assert by_dest[CALLERS[1]]["state"] == "sent"
        assert by_dest[CALLERS[0]]["state"] == expect
        assert (CALLERS[0] in r.sent_by()["modem1"]) is fallback
        assert r.sent_by()["modem0"] == []


async def test_a_text_known_not_sent_moves_to_another_modem_at_once(tmp_path: Path) -> None:
    # modem0 is not registered: +CMS ERROR 331 (no network service) to the body, which
    # the driver knows was not sent; the text goes out through modem1 without a backoff
    faults = [Faults(), Faults()]
    async with pool_rig(
        tmp_path, [("quectel", {}), ("sim800", {})], faults=faults, retry_backoff="1h"
    ) as r:
        faults[0].no_network = True
        await r.text(CALLERS[0])
        await r.settled(1)
        (row,) = r.rows()
        assert (row["state"], row["sender"], row["attempts"]) == ("sent", "modem1", 2)
        assert r.sent_by() == {"modem0": [], "modem1": [CALLERS[0]]}
        reasons = [c.reason for c in r.changes.seen if c.message_id == row["id"]]
        assert "failover" in reasons
        assert "retry" not in reasons


async def test_an_unclear_failure_stays_with_its_modem(tmp_path: Path) -> None:
    # +CMS ERROR 500 to a body says nothing about where it failed: never moved elsewhere
    faults = [Faults(cms_every=1, cms_code=500), Faults()]
    async with pool_rig(
        tmp_path, [("quectel", {}), ("sim800", {})], faults=faults, retry_backoff="1h"
    ) as r:
        mid = await r.text(CALLERS[0])
        await r.until(lambda: r.rows()[0]["attempts"] == 1 and r.rows()[0]["state"] == "queued")
        await r.outbox.settle()
        row = r.rows()[0]
        assert (row["state"], row["sender"]) == ("queued", "modem0")
        assert r.sent_by()["modem1"] == []
        reasons = [c.reason for c in r.changes.seen if c.message_id == mid]
        assert "failover" not in reasons
        assert "retry" in reasons


async def test_a_modem_unplugged_mid_burst(tmp_path: Path) -> None:
    # modem0 takes its third text and vanishes before the +CMGS: that text is uncertain
    # (never resent); its other texts go out through the others; nothing twice
    faults = [Faults(vanish_after_body=2), Faults(accept_delay=0.05), Faults(accept_delay=0.05)]
    specs: list[tuple[str, dict[str, Any]]] = [("huawei", {}), ("sim800", {}), ("quectel", {})]
    async with pool_rig(tmp_path, specs, faults=faults) as r:
        for number in CALLERS[:15]:
            await r.text(number)
        await r.settled(15)
        assert r.sims[0].vanished == 1
        states = r.states()
        assert states == {"sent": 14, "uncertain": 1}
        (lost,) = [x for x in r.rows() if x["state"] == "uncertain"]
        assert lost["sender"] == "modem0"
        assert lost["destination"] == r.sims[0].parts[-1].number
        reached = collections.Counter(p.number for sim in r.sims for p in sim.parts)
        assert reached == collections.Counter(CALLERS[:15])  # each once, the uncertain too
        assert len(r.sims[0].parts) == 3


async def test_a_sim_at_its_monthly_cap(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    specs = [
        ("sim800", {"max_per_month": 2, "lines": [LINE_A]}),
        ("huawei", {}),
    ]
    with caplog.at_level(logging.WARNING, logger="daemon.service"):
        async with pool_rig(tmp_path, specs) as r:
            for number in CALLERS[:2]:
                await r.text(number, line=LINE_A)
            await r.settled(2)
            await r.text(CALLERS[2], line=LINE_A)  # its SIM is at the cap, no fallback
            for number in CALLERS[3:6]:
                await r.text(number)
            await r.settled(5)
            await r.outbox.settle()
            by_dest = {x["destination"]: x["state"] for x in r.rows()}
            assert by_dest[CALLERS[2]] == "queued"
            assert r.sent_by() == {"modem0": CALLERS[:2], "modem1": CALLERS[3:6]}
            assert await r.store.sent_by_modem(0.0) == {"modem0": 2, "modem1": 3}
    (said,) = [m for m in caplog.messages if "event=modem_cap_reached" in m]
    assert "modem=modem0" in said
    assert "max_per_month=2" in said


async def test_two_modems_with_one_imei_the_second_is_refused(tmp_path: Path) -> None:
    same = imei(7)
    async with pool_rig(
        tmp_path, [("huawei", {}), ("huawei", {})], imeis=[same, same], start=False
    ) as r:
        lanes = r.pool.lanes
        await r.until(
            # "starting" is a problem too, for a moment: wait for the refusal itself
            lambda: (
                sum(x.ready for x in lanes) == 1
                and any("reports IMEI" in (x.supervisor.problem or "") for x in lanes)
            ),
            "one modem ready, one refused",
        )
        (refused,) = [x for x in lanes if not x.ready]
        assert f"reports IMEI {same}" in refused.supervisor.problem
        assert "cloned IMEI" in refused.supervisor.problem
        for number in CALLERS[:3]:
            await r.text(number)
        await r.settled(3)
        assert r.sent_by()[refused.name] == []
        assert r.states() == {"sent": 3}


async def test_a_modem_found_by_imei_is_found_again_on_a_new_path(tmp_path: Path) -> None:
    # "imei:<IMEI>": the pool asks the ports for their IMEI (gsm.finder); after a USB
    # reset the modem comes back as another ttyUSBn and is found there again
    ports = tmp_path / "dev"
    ports.mkdir()
    pattern = [str(ports / "ttyUSB*")]

    async def finder(wanted: str) -> str:
        return await find_by_imei(wanted, pattern, timeout=1.0)

    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            running("quectel", directory=str(ports), imei=imei(1), stable_path=False)
        )
        b = await stack.enter_async_context(
            running("sim800", directory=str(ports), imei=imei(2), stable_path=False)
        )
        cfg = config(
            [
                {"name": "front", "device": f"imei:{imei(1)}", "lines": [LINE_A]},
                {"name": "back", "device": f"imei:{imei(2)}"},
            ]
        )
        bus = EventBus.standard()
        store = await Store.open(tmp_path / "tb.db", bus=bus)
        stack.push_async_callback(store.close)
        clock = SystemClock()
        pool = ModemPool(
            cfg, store=store, bus=bus, clock=clock, timeouts=FAST, line_key=did_key, finder=finder
        )
        stack.push_async_callback(pool.close)
        outbox = Outbox(cfg, store, clock, pool)
        front = pool.lanes[0].supervisor
        tasks = [asyncio.create_task(pool.run()), asyncio.create_task(outbox.run())]
        try:
            await asyncio.wait_for(a.wait_for(lambda: pool.lanes[0].ready), WAIT)
            await asyncio.wait_for(b.wait_for(lambda: pool.lanes[1].ready), WAIT)
            assert (front.device, pool.lanes[1].supervisor.device) == (a.device, b.device)
            first = a.device
            a.vanish()
            a.come_back(new_path=True)
            assert a.device != first
            await asyncio.wait_for(a.wait_for(lambda: front.device == a.device), WAIT)
            await asyncio.wait_for(a.wait_for(lambda: pool.lanes[0].ready), WAIT)
            await outbox.enqueue(
                destination=CALLERS[0],
                text="Sorry we missed your call",
                template_kind=None,
                call_ids=[],
                line=LINE_A,
            )
            await asyncio.wait_for(a.wait_sent(1), WAIT)
            assert [s.number for s in a.sent] == [CALLERS[0]]
            assert b.sent == []
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
