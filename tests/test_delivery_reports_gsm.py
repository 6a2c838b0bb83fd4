"""Delivery reports in the driver and the simulator: stored by the modem (AT+CNMI ds=2,
+CDSI) where it can, pushed (ds=1, +CDS) where it cannot; a stored report that came
while nobody listened is read at the next start, a pushed one is lost; the simulator's
network reports by itself after a delay."""

from __future__ import annotations

import asyncio

import pytest

from gsm import commands as C
from gsm.errors import ProtocolError
from gsm.modem import Modem
from gsm.pdu import StatusReport
from gsm.simulator import Faults, Simulator, running
from tests.test_modem_inbound import FAST, Keeper, _modem, _until

TO = "+12025550123"


def test_cpms_memories_in_every_form_modems_answer() -> None:
    huawei = '("ME","MT","SM","SR"),("ME","MT","SM","SR"),("ME","MT","SM","SR")'
    assert C.parse_cpms_memories(huawei) == ("ME", "MT", "SM", "SR")
    wavecom = '(("SM","BM","SR"),("SM"))'  # tests/data/modem/wavecommultiband900e1800.json
    assert C.parse_cpms_memories(wavecom) == ("SM", "BM", "SR")
    assert C.parse_cpms_memories("(),(),()") == ()  # nokia
    with pytest.raises(ProtocolError):
        C.parse_cpms_memories('"SM",1,10')


def test_cnmi_with_another_ds() -> None:
    assert C.cnmi_with_ds("AT+CNMI=2,1,0,1,0", 2) == "AT+CNMI=2,1,0,2,0"
    assert C.cnmi_with_ds("AT+CNMI=2,1", 1) == "AT+CNMI=2,1,0,1"


@pytest.mark.parametrize(
    ("profile", "reports", "routing", "ds"),
    [
        ("huawei", "auto", "stored", "2"),
        ("quectel", "auto", "stored", "2"),
        ("wavecom", "auto", "stored", "2"),
        ("sim800", "auto", "direct", "1"),  # no SR, and ds=2 is not among its values
        ("huawei", "direct", "direct", "1"),
        ("sim800", "stored", "direct", "1"),  # asked for, refused: pushed all the same
    ],
)
async def test_reports_are_stored_where_the_modem_can(
    profile: str, reports: str, routing: str, ds: str
) -> None:
    async with running(profile) as sim:
        modem = await _modem(sim, reports=reports)
        try:
            assert modem.report_routing == routing
            assert (await modem.probe()).reports == routing
        finally:
            await modem.close()
        cnmi = [c for c in sim.commands if c.startswith("AT+CNMI=")]
        assert cnmi[-1].split(",")[3] == ds
        assert sim._state.cnmi[3] == int(ds)


def test_a_bad_reports_setting_is_refused_before_the_port() -> None:
    with pytest.raises(ValueError, match="reports"):
        Modem("/dev/null", reports="sometimes")  # type: ignore[arg-type]


async def _send_then_die(sim: Simulator, keeper: Keeper) -> int:
    """Send one text with a report requested; then the program on the port is gone."""
    modem = await _modem(sim, keeper)
    try:
        (ref,) = await modem.send_sms(TO, "hello")
    finally:
        await modem.close()
    sim.host_closed()
    return ref


@pytest.mark.parametrize("mode", ["pdu", "text"])
async def test_a_report_stored_while_nobody_listened_is_read_at_the_next_start(
    mode: str,
) -> None:
    async with running("huawei") as sim:
        keeper = Keeper(sim)
        ref = await _send_then_die(sim, keeper)
        sim.inject_report(ref, TO)  # its +CDSI goes nowhere
        assert len(sim.stored("SR")) == 1
        sim.host_opened()
        modem = await _modem(sim, keeper, mode=mode)  # the start-up sweep reads SR
        try:
            await _until(sim, lambda: bool(keeper.items) and not sim.stored("SR"))
        finally:
            await modem.close()
    [report] = keeper.items
    assert isinstance(report, StatusReport)
    assert (report.message_ref, report.recipient, report.delivered) == (ref, TO, True)


async def test_a_report_pushed_while_nobody_listened_is_lost() -> None:
    async with running("sim800") as sim:
        keeper = Keeper(sim)
        ref = await _send_then_die(sim, keeper)
        sim.inject_report(ref, TO)  # +CDS to a closed port
        sim.host_opened()
        modem = await _modem(sim, keeper)
        try:
            # the start-up sweep has run (it lists SM) and a later report still arrives
            await _until(sim, lambda: "AT+CMGL=4" in sim.commands)
            sim.inject_report(ref, TO, status=0x41)
            await _until(sim, lambda: bool(keeper.items))
        finally:
            await modem.close()
    assert [(r.message_ref, r.status) for r in keeper.items if isinstance(r, StatusReport)] == [
        (ref, 0x41)
    ]
    assert sim.reports == [(ref, TO, 0), (ref, TO, 0x41)]


@pytest.mark.parametrize("profile", ["huawei", "sim800"])
async def test_the_simulated_network_reports_by_itself_after_its_delay(profile: str) -> None:
    async with running(profile, Faults(urc_noise=True)) as sim:
        sim.report_delay = 0.05
        keeper = Keeper(sim)
        modem = await _modem(sim, keeper)
        try:
            refs = await modem.send_sms(TO, "Please call me back about the invoice, " * 5)
            unasked = await modem.send_sms(TO, "no report", status_report=False)
            await _until(sim, lambda: len(keeper.items) == 2 and not sim.stored("SR"))
            await asyncio.sleep(0.1)  # a report for the text that asked for none would be here
        finally:
            await modem.close()
    assert len(refs) == 2
    assert sorted(r.message_ref for r in keeper.items if isinstance(r, StatusReport)) == refs
    assert [r for r, _, _ in sim.reports] == refs
    assert unasked[0] not in [r for r, _, _ in sim.reports]


async def test_a_part_in_its_accept_delay_is_sent_before_its_answer() -> None:
    async with running("sim800", Faults(accept_delay=0.3)) as sim:
        modem = Modem(sim.device, timeouts=FAST, reconnect=False)
        await modem.start()
        try:
            send = asyncio.create_task(modem.send_sms(TO, "hello"))
            await _until(sim, lambda: len(sim.sent) == 1)
            assert not send.done()  # recorded as sent, +CMGS not yet answered
            assert await send == [sim.sent[0].references[0]]
        finally:
            await modem.close()
