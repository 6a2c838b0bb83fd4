"""The outbox sending through the real gsm driver to the modem simulator on a real pty."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.clock import ManualClock
from daemon.outbox.outbox import Outbox
from daemon.sending.modem import ModemSender
from daemon.store.store import Store
from gsm.modem import Modem, Timeouts
from gsm.simulator import Faults, running
from tests.outbox_fakes import NUMBERS, cfg

T0 = 1_795_300_000.0
LONG = "Sorry we missed your call to Example Dental. " * 5  # 225 chars: two GSM-7 parts

FAST = Timeouts(command=5.0, probe=0.2, startup=10.0, prompt=5.0, send=5.0, health_interval=0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "tb.db")
    yield s
    await s.close()


async def test_text_goes_out_through_the_driver_with_its_references(store: Store) -> None:
    async with running("sim800") as sim:
        modem = Modem(sim.device, timeouts=FAST, reconnect=False)
        await modem.start()
        try:
            clock = ManualClock(T0)
            outbox = Outbox(cfg(delay="30s"), store, clock, ModemSender(modem))
            mid = await outbox.enqueue(
                destination=NUMBERS[0], text=LONG, template_kind="in_hours", call_ids=[1]
            )
            await outbox.process_due()
            assert sim.sent == []  # still in the wait step
            clock.advance(30)
            assert await outbox.process_due() == 1
            assert len(sim.sent) == 1
            got = sim.sent[0]
            assert (got.number, got.text, got.parts) == (NUMBERS[0], LONG, 2)
            m = await store.get_message(mid)
            assert m is not None
            assert m.state == "sent"
            refs = [p["reference"] for p in await store.message_parts(mid)]
            assert tuple(refs) == got.references
            # The delivery report for a part finds its message.
            assert await store.record_delivery(refs[-1], "delivered", clock.now()) == mid
        finally:
            await modem.close()


async def test_no_network_is_retried_then_sent(store: Store) -> None:
    async with running("sim800") as sim:
        modem = Modem(sim.device, timeouts=FAST, reconnect=False)
        await modem.start()
        try:
            clock = ManualClock(T0)
            outbox = Outbox(cfg(delay="0s", retry_backoff="30s"), store, clock, ModemSender(modem))
            mid = await outbox.enqueue(
                destination=NUMBERS[1], text="Sorry we missed you", template_kind=None, call_ids=[1]
            )
            sim.faults.cms_every = 1  # every part fails: +CMS ERROR: 38 network out of order
            await outbox.process_due()
            m = await store.get_message(mid)
            assert m is not None
            assert (m.state, m.attempts) == ("queued", 1)
            assert "CMS ERROR: 38" in (m.last_error or "")
            sim.faults.cms_every = 0
            clock.advance(30)
            await outbox.process_due()
            m = await store.get_message(mid)
            assert m is not None
            assert (m.state, m.attempts) == ("sent", 2)
            assert [s.number for s in sim.sent] == [NUMBERS[1]]
        finally:
            await modem.close()


async def test_unplugged_modem_keeps_the_text_queued(store: Store) -> None:
    async with running("sim800", Faults()) as sim:
        modem = Modem(sim.device, timeouts=FAST, reconnect=False)
        await modem.start()
        try:
            clock = ManualClock(T0)
            outbox = Outbox(cfg(delay="0s"), store, clock, ModemSender(modem))
            mid = await outbox.enqueue(
                destination=NUMBERS[2], text="Sorry we missed you", template_kind=None, call_ids=[1]
            )
            sim.vanish()
            await outbox.process_due()
            m = await store.get_message(mid)
            assert m is not None
            # Either the driver already knew (not ready: no attempt used) or the send
            # failed with a retryable ModemGone: queued for later either way.
            assert m.state == "queued"
            assert m.attempts <= 1
            assert m.attempts == 0 or "ModemGone" in (m.last_error or "")
            assert sim.sent == []
            # the driver notices the closed port on its own (its reader's EOF): under load
            # that can come a moment after the failed send returned
            for _ in range(500):
                if not modem.ready:
                    break
                await asyncio.sleep(0.01)
            assert not modem.ready
        finally:
            await modem.close()


async def test_modem_gone_after_taking_the_text_is_uncertain_never_resent(store: Store) -> None:
    # The modem takes the message body (the network has the text), then resets before its
    # +CMGS answer. Resending would text the caller twice: the text is `uncertain`.
    async with running("sim800", Faults(vanish_after_body=0, return_after=0.05)) as sim:
        modem = Modem(sim.device, timeouts=FAST)  # reconnect on: the modem comes back
        await modem.start()
        try:
            clock = ManualClock(T0)
            outbox = Outbox(cfg(delay="0s", retry_backoff="1s"), store, clock, ModemSender(modem))
            mid = await outbox.enqueue(
                destination=NUMBERS[2], text="Sorry we missed you", template_kind=None, call_ids=[1]
            )
            await outbox.process_due()
            m = await store.get_message(mid)
            assert m is not None
            assert m.state == "uncertain"
            assert "went away after taking the message" in (m.last_error or "")
            await modem.wait_ready(10)  # back, and able to send
            clock.advance(600)
            await outbox.process_due()
            assert [s.number for s in sim.sent] == [NUMBERS[2]]  # once, never twice
            m = await store.get_message(mid)
            assert m is not None
            assert m.state == "uncertain"
        finally:
            await modem.close()
