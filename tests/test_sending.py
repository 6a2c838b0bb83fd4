"""The sender interface: errors judged into results; the modem as a sender over the real
simulator on a pty; the modem supervisor's states, on a ManualClock for its retries."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from daemon.clock import ManualClock
from daemon.config import ModemConfig
from daemon.sending.modem import MODEM_RETRY_FIRST, ModemSender, ModemSupervisor
from daemon.sending.sender import (
    ERROR_CHARS,
    SendRequest,
    SendResult,
    SendStatus,
    result_of_error,
)
from daemon.sinks.bus import EventBus
from daemon.sinks.events import Event, ModemStateChanged
from daemon.store.store import Store
from gsm.errors import (
    CMS_RETRYABLE,
    AtTimeout,
    CmsError,
    LostAfterBody,
    ModemGone,
    NoDevice,
    SendUncertain,
)
from gsm.modem import Modem, Timeouts
from gsm.simulator import Faults, running
from tests.outbox_fakes import NUMBERS

T0 = 1_795_300_000.0
FAST = Timeouts(command=5.0, probe=0.2, startup=10.0, prompt=5.0, send=5.0, health_interval=0)
LONG = "Sorry we missed your call to Example Dental. " * 5  # 225 chars: two GSM-7 parts
#: How long a real modem exchange may take before a test gives up (not a timer to wait on).
WAIT = 20.0


# -- result_of_error ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "retryable", "error"),
    [
        (
            SendUncertain("AT+CMGS", 60),
            SendStatus.UNCERTAIN,
            False,
            "SendUncertain: AT+CMGS: no answer within 60 s",
        ),
        (
            LostAfterBody("AT+CMGS", "unplugged"),
            SendStatus.UNCERTAIN,
            False,
            "LostAfterBody: AT+CMGS: the modem went away after taking the message (unplugged)",
        ),
        (
            CmsError("AT+CMGS", 41),
            SendStatus.FAILED,
            True,
            "CmsError: AT+CMGS: +CMS ERROR: 41 (temporary failure)",
        ),
        (
            CmsError("AT+CMGS", 332),
            SendStatus.FAILED,
            True,
            "CmsError: AT+CMGS: +CMS ERROR: 332 (network timeout)",
        ),
        (
            CmsError("AT+CMGS", 21),
            SendStatus.FAILED,
            False,
            "CmsError: AT+CMGS: +CMS ERROR: 21 (short message transfer rejected)",
        ),
        (
            CmsError("AT+CMGS", 1),
            SendStatus.FAILED,
            False,
            "CmsError: AT+CMGS: +CMS ERROR: 1 (unassigned (unallocated) number)",
        ),
        (
            AtTimeout("AT+CMGS", 5),
            SendStatus.FAILED,
            True,
            "AtTimeout: AT+CMGS: no answer within 5 s",
        ),
        (ModemGone("/dev/ttyUSB0 gone"), SendStatus.FAILED, True, "ModemGone: /dev/ttyUSB0 gone"),
        (
            NoDevice("/dev/ttyUSB9"),
            SendStatus.FAILED,
            False,
            "NoDevice: no such device: /dev/ttyUSB9",
        ),
        (OSError("pty gone"), SendStatus.FAILED, True, "OSError: pty gone"),
        (TimeoutError("slow"), SendStatus.FAILED, True, "TimeoutError: slow"),
        (ValueError("bad number"), SendStatus.FAILED, False, "ValueError: bad number"),
    ],
)
def test_result_of_error(
    exc: BaseException, status: SendStatus, retryable: bool, error: str
) -> None:
    got = result_of_error(exc, sender="modem")
    # not_sent (may a pool move it to another modem) is the driver's call: tests/test_pool
    assert replace(got, not_sent=False) == SendResult(status, (), error, retryable, "modem")


def test_the_codes_used_above_are_the_drivers_own_verdicts() -> None:
    # the parametrisation above names 41 and 332 temporary, 21 and 1 permanent
    assert {41, 332} <= CMS_RETRYABLE
    assert not {21, 1} & CMS_RETRYABLE


def test_result_of_error_keeps_500_characters() -> None:
    got = result_of_error(CmsError("AT+CMGS", 500, "x"), sender="m")
    assert got.error == "CmsError: AT+CMGS: +CMS ERROR: 500 (unknown error)"
    long = result_of_error(RuntimeError("é" * 2000))
    assert ERROR_CHARS == 500
    assert len(long.error) == 500
    assert long.error == ("RuntimeError: " + "é" * 2000)[:500]
    assert (long.status, long.retryable, long.sender) == (SendStatus.FAILED, False, "")


# -- ModemSender over the simulator ---------------------------------------------------------------


async def test_modem_sender_sends_with_the_references() -> None:
    async with running("sim800") as sim:
        modem = Modem(sim.device, timeouts=FAST, reconnect=False)
        await modem.start()
        try:
            sender = ModemSender(modem, "front-desk")
            assert (sender.name, sender.ready) == ("front-desk", True)
            result = await sender.send(SendRequest(NUMBERS[0], LONG, line="2025550100"))
            (got,) = sim.sent
            assert (got.number, got.text, got.parts) == (NUMBERS[0], LONG, 2)
            assert result == SendResult.sent(got.references, sender="front-desk")
            assert len(result.references) == 2
            assert got.status_report
            await sender.send(SendRequest(NUMBERS[1], "no report", status_report=False))
            assert not sim.sent[1].status_report
        finally:
            await modem.close()


async def test_modem_sender_answers_failed_retryable_for_a_network_error() -> None:
    async with running("sim800", Faults(cms_every=1, cms_code=38)) as sim:
        modem = Modem(sim.device, timeouts=FAST, reconnect=False)
        await modem.start()
        try:
            result = await ModemSender(modem).send(SendRequest(NUMBERS[1], "hello"))
            assert (result.status, result.retryable, result.sender) == (
                SendStatus.FAILED,
                True,
                "modem",
            )
            assert re.fullmatch(
                r"CmsError: AT\+CMGS=\d+: \+CMS ERROR: 38 \(network out of order\)", result.error
            )
            assert sim.sent == []
        finally:
            await modem.close()


@pytest.mark.parametrize("reconnect", [False, True])
async def test_modem_gone_after_the_body_is_uncertain_never_raised(reconnect: bool) -> None:
    faults = Faults(vanish_after_body=0, return_after=0.05 if reconnect else None)
    async with running("sim800", faults) as sim:
        modem = Modem(sim.device, timeouts=FAST, reconnect=reconnect)
        await modem.start()
        try:
            result = await ModemSender(modem).send(SendRequest(NUMBERS[2], "hello"))
            assert result.status is SendStatus.UNCERTAIN
            assert not result.retryable
            assert result.references == ()
            assert result.error.startswith("LostAfterBody: ")
            assert "went away after taking the message" in result.error
            # the simulator did take the text: resending would have texted twice
            assert [s.number for s in sim.sent] == [NUMBERS[2]]
            assert sim.vanished == 1
        finally:
            await modem.close()


async def test_modem_sender_on_an_unplugged_modem_answers_failed_retryable() -> None:
    async with running("sim800") as sim:
        modem = Modem(sim.device, timeouts=FAST, reconnect=False)
        await modem.start()
        try:
            sim.vanish()
            result = await ModemSender(modem).send(SendRequest(NUMBERS[3], "hello"))
            assert (result.status, result.retryable) == (SendStatus.FAILED, True)
            assert result.error.startswith("ModemGone: ")
            assert sim.sent == []
        finally:
            await modem.close()


# -- ModemSupervisor ------------------------------------------------------------------------------


class ModemEvents:
    """A sink keeping the supervisor's ModemStateChanged events, and a way to wait for one."""

    name = "modem-events"

    def __init__(self) -> None:
        self.events: list[ModemStateChanged] = []
        self._changed = asyncio.Event()

    def handle(self, event: Event) -> None:
        if isinstance(event, ModemStateChanged):
            self.events.append(event)
            self._changed.set()

    async def wait_for(self, n: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.events) < n:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "tb.db")
    yield s
    await s.close()


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_supervisor_without_a_device_retries_on_its_clock(
    store: Store, tmp_path: Path
) -> None:
    device = str(tmp_path / "no-such-tty")
    seen = ModemEvents()
    clock = ManualClock(T0)
    sup = ModemSupervisor(
        ModemConfig.model_validate({"device": device}),
        store=store,
        bus=EventBus([seen]),
        clock=clock,
        timeouts=FAST,
    )
    task = asyncio.create_task(sup.run())
    try:
        await seen.wait_for(1)
        first = seen.events[0]
        assert (first.name, first.device, first.state, first.first_failure) == (
            "modem",
            device,
            "unavailable",
            True,
        )
        assert first.retry_in == MODEM_RETRY_FIRST
        assert first.error is not None
        assert device in first.error
        assert not sup.ready
        result = await sup.send(SendRequest(NUMBERS[0], "hello"))
        assert (result.status, result.retryable) == (SendStatus.FAILED, True)
        assert result.error.startswith("no modem: ")

        # the retry waits on the injected clock: not a moment before its delay
        assert clock.pending == 1
        clock.advance(MODEM_RETRY_FIRST - 0.1)
        assert clock.pending == 1
        assert len(seen.events) == 1
        clock.advance(0.1)
        await seen.wait_for(2)
        second = seen.events[1]
        assert (second.state, second.first_failure, second.retry_in) == (
            "unavailable",
            False,
            MODEM_RETRY_FIRST * 2,
        )
        assert not sup.ready
        assert sup.status_text().startswith("modem not ready (")
    finally:
        await _stop(task)
        await sup.close()


async def test_supervisor_with_the_simulator_is_ready_and_sends(store: Store) -> None:
    async with running("sim800") as sim:
        seen = ModemEvents()
        clock = ManualClock(T0)
        sup = ModemSupervisor(
            ModemConfig.model_validate({"device": sim.device}),
            store=store,
            bus=EventBus([seen]),
            clock=clock,
            timeouts=FAST,
            name="front-desk",
        )
        ready_before_run = sup.ready
        assert not ready_before_run
        task = asyncio.create_task(sup.run())
        try:
            await seen.wait_for(1)
            (ev,) = seen.events
            assert (ev.name, ev.device, ev.state, ev.error) == (
                "front-desk",
                sim.device,
                "ready",
                None,
            )
            assert (ev.maker, ev.model) == (sim.profile.maker, sim.profile.model)
            assert ev.operator == sim.profile.operator
            assert sup.ready
            assert sup.problem == ""
            assert sup.status_text().startswith("modem ready")
            result = await sup.send(SendRequest(NUMBERS[4], "hello from the supervisor"))
            (got,) = sim.sent
            assert result == SendResult.sent(got.references, sender="front-desk")
            assert got.text == "hello from the supervisor"
        finally:
            await _stop(task)
            await sup.close()


async def test_texts_stored_while_the_daemon_was_down_are_kept_before_the_sim_lets_go(
    store: Store,
) -> None:
    """The start-up sweep hands each stored text to the keeper first: a database that
    refuses it leaves it on the SIM; one that takes it frees the slot."""
    from daemon.sending.modem import InboundSms
    from daemon.store.store import StoreError

    kept: list[InboundSms] = []
    refuse = True

    async def keep_text(sms: InboundSms) -> None:
        if refuse:
            raise StoreError("disk full")
        kept.append(sms)

    async with running("sim800") as sim:
        sim.inject_text(NUMBERS[0], "STOP", direct=False)  # arrives while nobody listens
        assert len(sim.stored("SM")) == 1
        seen = ModemEvents()
        sup = ModemSupervisor(
            ModemConfig.model_validate({"device": sim.device}),
            store=store,
            bus=EventBus([seen]),
            clock=ManualClock(T0),
            timeouts=FAST,
            keep_text=keep_text,
        )
        task = asyncio.create_task(sup.run())
        try:
            await seen.wait_for(1)
            assert kept == []
            assert len(sim.stored("SM")) == 1  # refused: still on the SIM
            refuse = False
            sim.inject_text(NUMBERS[1], "hello", direct=False)  # +CMTI: read, now kept
            for _ in range(500):  # real pty round trips, no timer involved
                if len(kept) == 2 and not sim.stored("SM"):
                    break
                await asyncio.sleep(0.01)
            # the refused one is offered again (at the latest by the next sweep) and kept
            assert sorted(k.sender for k in kept) == sorted([NUMBERS[0], NUMBERS[1]])
            assert {k.modem for k in kept} == {"modem"}
            assert sim.stored("SM") == {}  # each freed only once kept
        finally:
            await _stop(task)
            await sup.close()


async def test_the_same_text_twice_in_one_second_is_two_texts(store: Store) -> None:
    """A flood of one text is many texts: nothing names two of them as one."""
    from datetime import UTC, datetime

    from daemon.sending.modem import InboundSms

    kept: list[InboundSms] = []

    async def keep_text(sms: InboundSms) -> None:
        kept.append(sms)

    async with running("sim800") as sim:
        seen = ModemEvents()
        sup = ModemSupervisor(
            ModemConfig.model_validate({"device": sim.device}),
            store=store,
            bus=EventBus([seen]),
            clock=ManualClock(T0),
            timeouts=FAST,
            keep_text=keep_text,
        )
        task = asyncio.create_task(sup.run())
        try:
            await seen.wait_for(1)
            at = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
            sim.inject_text(NUMBERS[0], "STOP", timestamp=at, direct=False)
            sim.inject_text(NUMBERS[0], "STOP", timestamp=at, direct=False)
            for _ in range(500):
                if len(kept) == 2:
                    break
                await asyncio.sleep(0.01)
            assert [(k.sender, k.text) for k in kept] == [
                (NUMBERS[0], "STOP"),
                (NUMBERS[0], "STOP"),
            ]
        finally:
            await _stop(task)
            await sup.close()
