"""Receiving through the real driver, a real pty and the simulator: the keeper (stored
before deleted, refusals read again, nothing offered twice while it is kept), long texts
with a part that never comes (a timer, not the next PDU), text mode, direct +CMT."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from gsm.inbound import Inbound
from gsm.modem import Modem, Timeouts
from gsm.pdu import Deliver, StatusReport, decode_deliver, encode_deliver
from gsm.simulator import Faults, Simulator, running

# Every wait small: a part is given up after 0.2 s, the SIM swept every 0.3 s.
FAST = Timeouts(
    command=2.0,
    probe=0.2,
    startup=5.0,
    prompt=2.0,
    send=2.0,
    registration=0.2,
    poll=0.01,
    reopen_initial=0.01,
    reopen_max=0.05,
    health_interval=0,
    part_wait=0.2,
    sweep=0.3,
)
CALLER = "+12025550142"
LONG = "Please call me back about the invoice, " * 8  # three GSM-7 parts
WAIT = 5.0
WHEN = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


class Keeper:
    """A keeper that records what it got, and what the SIM held at that moment."""

    def __init__(self, sim: Simulator, answers: Callable[[Inbound], bool] | None = None) -> None:
        self.sim = sim
        self.items: list[Inbound] = []
        self.stored_then: list[dict[int, str]] = []
        self.answers = answers or (lambda _item: True)
        self.busy = 0
        self.most_busy = 0

    async def __call__(self, item: Inbound) -> bool:
        self.busy += 1
        self.most_busy = max(self.most_busy, self.busy)
        try:
            self.items.append(item)
            self.stored_then.append(self.sim.stored("SM") | self.sim.stored("SR"))
            await asyncio.sleep(0)
            return self.answers(item)
        finally:
            self.busy -= 1

    def texts(self) -> list[str]:
        return [i.text for i in self.items if isinstance(i, Deliver)]


async def _until(sim: Simulator, predicate: Callable[[], bool]) -> None:
    await asyncio.wait_for(sim.wait_for(predicate), WAIT)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with running("sim800", Faults(urc_noise=True)) as s:
        yield s


async def _modem(sim: Simulator, keeper: Keeper | None = None, **kwargs: object) -> Modem:
    modem = Modem(sim.device, timeouts=kwargs.pop("timeouts", FAST), **kwargs)  # type: ignore[arg-type]
    if keeper is not None:
        modem.set_keeper(keeper)
    await asyncio.wait_for(modem.start(), 10)
    return modem


@pytest.mark.parametrize("mode", ["pdu", "text"])
@pytest.mark.parametrize("profile", ["sim800", "huawei", "quectel", "wavecom"])
async def test_a_text_is_kept_before_it_is_deleted(profile: str, mode: str) -> None:
    async with running(profile, Faults(urc_noise=True)) as sim:
        keeper = Keeper(sim)
        modem = await _modem(sim, keeper, mode=mode)
        try:
            sim.inject_text(CALLER, "STOP")
            await _until(sim, lambda: bool(keeper.items) and not sim.stored())
        finally:
            await modem.close()
        assert keeper.texts() == ["STOP"]
        # When the keeper had it, it was still on the SIM; it went only after the True.
        assert len(keeper.stored_then[0]) == 1
        assert "AT+CMGD=1" in sim.commands


async def test_a_long_text_s_parts_are_all_kept_then_all_deleted(sim: Simulator) -> None:
    keeper = Keeper(sim)
    modem = await _modem(sim, keeper)
    try:
        pdus = sim.inject_text(CALLER, LONG)
        await _until(sim, lambda: bool(keeper.items) and not sim.stored())
    finally:
        await modem.close()
    assert len(pdus) == 3
    assert keeper.texts() == [LONG]
    assert len(keeper.stored_then[0]) == 3  # every part still stored while it was kept


async def test_refused_texts_stay_on_the_sim_and_are_offered_again_by_the_sweep(
    sim: Simulator,
) -> None:
    answers = iter([False, False, True])
    keeper = Keeper(sim, lambda _item: next(answers))
    modem = await _modem(sim, keeper)
    try:
        sim.inject_text(CALLER, LONG)
        await _until(sim, lambda: len(keeper.items) == 2)
        assert len(sim.stored()) == 3  # refused twice: still there, every part
        await _until(sim, lambda: len(keeper.items) == 3 and not sim.stored())
    finally:
        await modem.close()
    assert keeper.texts() == [LONG, LONG, LONG]


async def test_a_keeper_that_raises_leaves_the_text_on_the_sim(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def keeper(item: Inbound) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database locked")
        return True

    modem = await _modem(sim)
    modem.set_keeper(keeper)
    try:
        with caplog.at_level(logging.ERROR, logger="gsm.modem"):
            sim.inject_text(CALLER, "hello")
            await _until(sim, lambda: calls == 1)
            assert len(sim.stored()) == 1
            await _until(sim, lambda: calls == 2 and not sim.stored())
    finally:
        await modem.close()
    assert "the keeper failed" in caplog.text


async def test_nothing_is_offered_twice_while_it_is_being_kept(sim: Simulator) -> None:
    release = asyncio.Event()
    got: list[Inbound] = []

    async def slow_keeper(item: Inbound) -> bool:
        got.append(item)
        await release.wait()  # a slow database: several sweeps pass meanwhile
        return True

    modem = await _modem(sim)
    modem.set_keeper(slow_keeper)
    try:
        sim.inject_text(CALLER, "one")
        await _until(sim, lambda: len(got) == 1)
        sweeps = sim.commands.count("AT+CMGL=4")
        await _until(sim, lambda: sim.commands.count("AT+CMGL=4") >= sweeps + 3)
        # The keeper is awaited without the command lock: a send goes through meanwhile.
        assert await asyncio.wait_for(modem.send_sms("+12025550123", "sent while keeping"), 5)
        release.set()
        await _until(sim, lambda: not sim.stored())
        await asyncio.sleep(FAST.sweep * 2)
    finally:
        await modem.close()
    assert [i.text for i in got if isinstance(i, Deliver)] == ["one"]
    assert [s.text for s in sim.sent] == ["sent while keeping"]


@pytest.mark.parametrize("keep", [True, False])
async def test_a_part_that_never_comes_is_given_up_by_a_timer(sim: Simulator, keep: bool) -> None:
    # part_wait is 0.2 s; no other message comes after the two parts, so only a timer
    # can hand the text on. No sweep either: it is the timer, not a later read.
    timeouts = replace(FAST, sweep=0)
    keeper = Keeper(sim) if keep else None
    modem = await _modem(sim, keeper, timeouts=timeouts)
    stream = modem.incoming()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        sim.inject_text(CALLER, LONG, withhold={2})
        if keeper is not None:
            await _until(sim, lambda: bool(keeper.items) and not sim.stored())
            (item,) = keeper.items
        else:
            item = await asyncio.wait_for(anext(stream), WAIT)
        waited = loop.time() - started
    finally:
        await stream.aclose()
        await modem.close()
    assert isinstance(item, Deliver)
    assert (item.incomplete, item.missing, item.sender) == (True, (2,), CALLER)
    assert item.text.startswith(LONG[:150])
    assert LONG[153:306] not in item.text
    assert FAST.part_wait <= waited < 2.0
    assert not sim.stored()  # the parts that came are deleted once handed on


async def test_a_late_part_after_the_give_up_is_a_text_of_its_own(sim: Simulator) -> None:
    keeper = Keeper(sim)
    modem = await _modem(sim, keeper)
    try:
        pdus = sim.inject_text(CALLER, LONG, withhold={2})
        await _until(sim, lambda: len(keeper.items) == 1)
        sim.inject_pdu(pdus[1])
        await _until(sim, lambda: len(keeper.items) == 2 and not sim.stored())
    finally:
        await modem.close()
    first, late = keeper.items
    assert isinstance(first, Deliver)
    assert isinstance(late, Deliver)
    assert (first.missing, late.missing) == ((2,), (1, 3))
    assert first.text + late.text != LONG  # not glued back: kept as two incomplete texts
    assert sorted(first.text + late.text) == sorted(LONG)


@pytest.mark.parametrize("mode", ["pdu", "text"])
async def test_direct_texts_go_to_the_keeper_and_a_refused_one_waits_in_memory(
    sim: Simulator, mode: str
) -> None:
    answers = iter([False, True])
    keeper = Keeper(sim, lambda _item: next(answers))
    modem = await _modem(sim, keeper, mode=mode)
    try:
        sim.inject_text(CALLER, "OK", direct=True)  # as +CMT: on no SIM
        await _until(sim, lambda: len(keeper.items) == 2)
    finally:
        await modem.close()
    assert keeper.texts() == ["OK", "OK"]
    assert keeper.stored_then == [{}, {}]


@pytest.mark.parametrize(
    ("no_pdu", "charset_fault", "text"),
    [
        (False, False, "Merci 😀 à bientôt"),
        (False, False, "OK"),
        (False, True, "STOP 🙏"),
        (False, True, "ERROR"),
        (True, False, "Merci 😀 à bientôt"),
        (True, False, "RING me back +CMTI: 3"),
        (True, True, "Call me at 10, thanks"),
    ],
)
async def test_text_mode_reads_stored_texts(no_pdu: bool, charset_fault: bool, text: str) -> None:
    faults = Faults(urc_noise=True, no_ucs2=charset_fault, no_pdu=no_pdu)
    async with running("sim800", faults) as sim:
        keeper = Keeper(sim)
        modem = await _modem(sim, keeper, mode="text")
        try:
            sim.inject_text(CALLER, text)
            sim.inject_text("+447700900123", "second")
            await _until(sim, lambda: len(keeper.items) == 2 and not sim.stored())
            # Sending still works after reading: the modem is put back to text mode, IRA.
            await modem.send_sms("+12025550123", "Thanks, we will call")
        finally:
            await modem.close()
        assert sorted(keeper.texts()) == sorted([text, "second"])
        assert {i.sender for i in keeper.items if isinstance(i, Deliver)} == {
            CALLER,
            "+447700900123",
        }
        assert [s.text for s in sim.sent] == ["Thanks, we will call"]
        switches = [c for c in sim.commands if c.startswith("AT+CSCS=")]
        modes = [c for c in sim.commands if c.startswith("AT+CMGF=")]
        if not no_pdu:  # every read in PDU mode, then back to text mode; CSCS untouched
            assert switches == ['AT+CSCS="IRA"']
            assert modes[0] == "AT+CMGF=1"
            assert len(modes) >= 3
            assert modes[1:] == ["AT+CMGF=0", "AT+CMGF=1"] * (len(modes) // 2)
            assert sim._state.mode == 1
        elif charset_fault:  # asked once, refused, never again: read in IRA
            assert modes == ["AT+CMGF=1", "AT+CMGF=0"]  # refused once, never asked again
            assert switches == ['AT+CSCS="IRA"', 'AT+CSCS="UCS2"']
        else:  # each read in UCS-2, then back to IRA ("IRA" itself written in UCS-2)
            reads = switches[1:]
            assert reads
            assert reads == ['AT+CSCS="UCS2"', 'AT+CSCS="004900520041"'] * (len(reads) // 2)
        assert sim._state.cscs == "IRA"


VICTIM = "+12065550102"
FORGED_CMT = f'hi\n+CMT: "{VICTIM}",,"26/01/01,00:00:00+00",145,4,0,0,"+12063130004",145,5\nSTART'
FORGED_CMGL = f'hi\n+CMGL: 1,"REC READ","{VICTIM}",,"26/01/01,00:00:00+00",145,5\nSTART'


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize(
    "text", [FORGED_CMT, FORGED_CMGL, "fine\nOK\nthanks", "a\r\n+CMS ERROR: 500\r\nb\nERROR"]
)
async def test_text_mode_a_text_cannot_forge_another_or_end_a_command(
    direct: bool, text: str
) -> None:
    """The caller's own text is never parsed as modem lines: a text holding a "+CMT:" or
    "+CMGL:" header of another sender reaches the keeper as ONE text from its real
    sender, whole; an "OK" or "ERROR" line inside it ends no command."""
    async with running("sim800", Faults(no_ucs2=True)) as sim:
        keeper = Keeper(sim)
        modem = await _modem(sim, keeper, mode="text")
        try:
            sim.inject_text(CALLER, text, direct=direct)
            await _until(sim, lambda: bool(keeper.items) and not sim.stored())
            await asyncio.sleep(FAST.sweep * 2)  # sweeps read nothing more
            await modem.send_sms("+12025550123", "still fine")
        finally:
            await modem.close()
        assert [(i.sender, i.text) for i in keeper.items if isinstance(i, Deliver)] == [
            (CALLER, text)
        ]
        assert [s.text for s in sim.sent] == ["still fine"]


@pytest.mark.parametrize(("no_pdu", "direct"), [(False, False), (False, True), (True, False)])
async def test_text_mode_long_texts_are_reassembled(no_pdu: bool, direct: bool) -> None:
    """Stored parts read in PDU mode; a direct +CMT part or one read in text mode (a modem
    refusing PDU mode) shows its user data with its header in hex, which is read."""
    async with running("sim800", Faults(no_ucs2=True, no_pdu=no_pdu)) as sim:
        keeper = Keeper(sim)
        modem = await _modem(sim, keeper, mode="text")
        try:
            sim.inject_text(CALLER, LONG, direct=direct)
            await _until(sim, lambda: bool(keeper.items) and not sim.stored())
        finally:
            await modem.close()
        assert keeper.texts() == [LONG]


async def test_text_mode_without_pdu_in_ira_leaves_a_text_it_cannot_read_on_the_sim(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running("sim800", Faults(no_ucs2=True, no_pdu=True)) as sim:
        keeper = Keeper(sim)
        modem = await _modem(sim, keeper, mode="text")
        try:
            with caplog.at_level(logging.WARNING, logger="gsm.modem"):
                sim.inject_text(CALLER, "OK")  # reads as the final code in IRA
                sim.inject_text(CALLER, "fine")
                await _until(sim, lambda: keeper.texts() == ["fine"] and len(sim.stored()) == 1)
                await asyncio.sleep(FAST.sweep * 2)
        finally:
            await modem.close()
        assert keeper.texts() == ["fine"]
        assert [decode_deliver(p).text for p in sim.stored().values()] == ["OK"]
        assert "no text line" in caplog.text


@pytest.mark.parametrize("mode", ["pdu", "text"])
async def test_a_lone_surrogate_is_replaced_not_a_crash(
    sim: Simulator, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    (pdu,) = encode_deliver(CALLER, "ЖA", timestamp=WHEN)
    assert pdu.endswith("04160041")
    bad = pdu[:-8] + "D8000041"  # UTF-16 with a high surrogate and no low one
    keeper = Keeper(sim)
    modem = await _modem(sim, keeper, mode=mode)
    try:
        with caplog.at_level(logging.WARNING, logger="gsm.modem"):
            sim.inject_pdu(bad)
            await _until(sim, lambda: bool(keeper.items) and not sim.stored())
    finally:
        await modem.close()
    assert keeper.texts() == ["\ufffdA"]


@pytest.mark.parametrize(("profile", "mode"), [("huawei", "pdu"), ("sim800", "text")])
async def test_delivery_reports_are_kept(profile: str, mode: str) -> None:
    async with running(profile) as sim:
        keeper = Keeper(sim)
        modem = await _modem(sim, keeper, mode=mode)
        try:
            (ref,) = await modem.send_sms("+12025550123", "hello")
            sim.inject_report(ref, "+12025550123")
            await _until(sim, lambda: bool(keeper.items) and not sim.stored("SR"))
        finally:
            await modem.close()
        (report,) = keeper.items
        assert isinstance(report, StatusReport)
        assert (report.message_ref, report.recipient, report.delivered) == (
            ref,
            "+12025550123",
            True,
        )
        if profile == "huawei":  # stored in SR (+CDSI): kept before it was deleted there
            assert len(keeper.stored_then[0]) == 1


async def test_a_kept_text_whose_delete_failed_is_deleted_later_never_offered_again(
    sim: Simulator,
) -> None:
    keeper = Keeper(sim)
    modem = await _modem(sim, keeper)
    try:
        sim.faults.cmgd_errors = 1
        sim.inject_text(CALLER, "kept once")
        await _until(sim, lambda: bool(keeper.items) and not sim.stored())
        await asyncio.sleep(FAST.sweep * 2)
    finally:
        await modem.close()
    assert keeper.texts() == ["kept once"]
    assert sim.commands.count("AT+CMGD=1") == 2  # refused once, done at the next sweep


async def test_a_kept_text_across_a_vanishing_modem_is_not_offered_again() -> None:
    async with running("sim800", Faults(return_after=0.05)) as sim:

        def vanish(_item: Inbound) -> bool:
            sim.vanish()  # the stick is pulled while the database writes
            return True

        keeper = Keeper(sim, vanish)
        modem = await _modem(sim, keeper)
        try:
            sim.inject_text(CALLER, "during a reconnect")
            await _until(sim, lambda: modem.reconnects == 1 and not sim.stored())
            await asyncio.sleep(FAST.sweep * 2)
        finally:
            await modem.close()
        assert keeper.texts() == ["during a reconnect"]


async def test_texts_stored_before_start_are_kept_before_they_are_deleted(
    sim: Simulator,
) -> None:
    sim.inject_text(CALLER, "while the daemon was down")  # no AT+CNMI yet: silent
    sim.inject_text(CALLER, LONG)
    keeper = Keeper(sim)
    modem = await _modem(sim, keeper)
    try:
        await _until(sim, lambda: len(keeper.items) == 2 and not sim.stored())
    finally:
        await modem.close()
    assert sorted(keeper.texts()) == sorted(["while the daemon was down", LONG])
    assert [len(s) for s in keeper.stored_then] == [4, 4]


async def test_a_keeper_set_late_gets_what_already_came(sim: Simulator) -> None:
    modem = await _modem(sim)
    try:
        sim.inject_text(CALLER, "early")
        await _until(sim, lambda: not sim.stored())  # read and deleted, no keeper yet
        keeper = Keeper(sim)
        modem.set_keeper(keeper)
        await _until(sim, lambda: bool(keeper.items))
        sim.inject_text(CALLER, "late")
        await _until(sim, lambda: len(keeper.items) == 2)
        modem.set_keeper(None)
        sim.inject_text(CALLER, "back to incoming")
        stream = modem.incoming()
        got = await asyncio.wait_for(anext(stream), WAIT)
        await stream.aclose()
    finally:
        await modem.close()
    assert keeper.texts() == ["early", "late"]
    assert isinstance(got, Deliver)
    assert got.text == "back to incoming"


async def test_keeping_is_one_at_a_time_in_order_and_wait_closed_returns(sim: Simulator) -> None:
    keeper = Keeper(sim)
    modem = await _modem(sim, keeper)
    waiter = asyncio.create_task(modem.wait_closed())
    try:
        for n in range(5):
            sim.inject_text(CALLER, f"text {n}")
        await _until(sim, lambda: len(keeper.items) == 5 and not sim.stored())
        assert not waiter.done()
    finally:
        await modem.close()
    await asyncio.wait_for(waiter, 1)
    assert sorted(keeper.texts()) == [f"text {n}" for n in range(5)]
    assert keeper.most_busy == 1


@pytest.mark.parametrize("announced", [True, False])
async def test_a_new_text_in_a_slot_whose_delete_failed_is_read_not_deleted(
    sim: Simulator, announced: bool
) -> None:
    """The delete of a kept text answers an error but did happen; a new text lands in the
    freed slot. It is read and kept (announced by +CMTI, or found by a sweep), never
    deleted unread as the old one; the old one, still there, is deleted and not offered."""
    keeper = Keeper(sim)
    modem = await _modem(sim, keeper)
    try:
        sim.faults.cmgd_errors = 1  # the delete answers an error ...
        sim.inject_text(CALLER, "first")
        await _until(sim, lambda: bool(keeper.items) and "AT+CMGD=1" in sim.commands)
        await asyncio.sleep(0.05)
        sim._state.storage["SM"].pop(1)  # ... but the SIM did let go
        if announced:
            sim.inject_text(VICTIM, "STOP")  # lands in the freed slot 1, +CMTI SM,1
        else:
            (pdu,) = encode_deliver(VICTIM, "STOP", timestamp=WHEN)
            sim._state.storage["SM"][1] = ("0", pdu)  # silently: a lost +CMTI
        await _until(sim, lambda: len(keeper.items) == 2 and not sim.stored())
        # A kept text whose delete failed and that is still there: deleted, not offered.
        sim.faults.cmgd_errors = 1
        sim.inject_text(CALLER, "third")
        await _until(sim, lambda: len(keeper.items) == 3 and not sim.stored())
        await asyncio.sleep(FAST.sweep * 2)
    finally:
        await modem.close()
    assert keeper.texts() == ["first", "STOP", "third"]
    assert [i.sender for i in keeper.items if isinstance(i, Deliver)] == [CALLER, VICTIM, CALLER]


async def test_a_sender_with_a_line_break_cannot_forge_a_log_line(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    sender = "Bank\nFAKE"  # an alphanumeric sender is the caller's to choose

    async def refuse(_item: Inbound) -> bool:
        raise RuntimeError("database down")

    modem = Modem(sim.device, timeouts=FAST)
    modem.set_keeper(refuse)
    await asyncio.wait_for(modem.start(), 10)
    try:
        with caplog.at_level(logging.DEBUG, logger="gsm.modem"):
            (pdu,) = encode_deliver(sender, "hello", timestamp=WHEN)
            sim.inject_pdu(pdu)
            await _until(sim, lambda: "the keeper failed" in caplog.text)
    finally:
        await modem.close()
    assert "Bank\\nFAKE" in caplog.text
    assert not any("\n" in r.getMessage() for r in caplog.records)


async def test_a_text_names_the_sim_slots_it_was_read_from(sim: Simulator) -> None:
    keeper = Keeper(sim)
    modem = await _modem(sim, keeper)
    try:
        sim.inject_text(CALLER, LONG)  # three parts: slots 1, 2, 3
        await _until(sim, lambda: bool(keeper.items) and not sim.stored())
        sim.inject_text(CALLER, "direct", direct=True)
        await _until(sim, lambda: len(keeper.items) == 2)
    finally:
        await modem.close()
    long, direct = keeper.items
    assert isinstance(long, Deliver)
    assert isinstance(direct, Deliver)
    assert (long.text, sorted(long.slots)) == (LONG, ["SM:1", "SM:2", "SM:3"])
    assert (direct.text, direct.slots) == ("direct", ())


async def test_a_read_gate_holds_the_reading_and_the_text_waits_on_the_sim(
    sim: Simulator,
) -> None:
    """An application's gate (sends first) is awaited before a stored text is read: the
    text stays on the SIM, unread and unkept, until the gate opens."""
    keeper = Keeper(sim, lambda _item: True)
    entered = asyncio.Event()
    release = asyncio.Event()
    hold = False

    async def gate() -> None:
        if hold:
            entered.set()
            await release.wait()

    modem = Modem(sim.device, timeouts=FAST)
    modem.set_keeper(keeper)
    modem.set_read_gate(gate)  # before start, as the service does
    await asyncio.wait_for(modem.start(), 10)
    try:
        # the start-up sweep lists the SIM first: hold the reads once it has
        await _until(sim, lambda: any(c.startswith("AT+CMGL") for c in sim.commands))
        hold = True
        sim.inject_text(CALLER, "call me back")
        await asyncio.wait_for(entered.wait(), WAIT)
        assert keeper.items == []
        assert len(sim.stored()) == 1  # safe on the SIM while the gate holds
        release.set()
        await _until(sim, lambda: keeper.texts() == ["call me back"] and not sim.stored())
    finally:
        await modem.close()
