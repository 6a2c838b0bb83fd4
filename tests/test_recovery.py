"""The recovery ladder on real ptys: resync, reopen, AT+CFUN=1,1 (the port leaving and
coming back, perhaps as another ttyUSBn found by IMEI), then giving up; two modems of
different profiles side by side."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from gsm import errors
from gsm.modem import Modem, ModemState, Timeouts
from gsm.simulator import Faults, Simulator, running

FAST = Timeouts(
    command=0.3,
    probe=0.05,
    startup=0.4,
    prompt=0.5,
    send=1.0,
    registration=0.2,
    poll=0.01,
    reopen_initial=0.01,
    reopen_max=0.05,
    health_interval=0.02,
    sweep=0,
    scale=0.05,
    reset_settle=0.5,
    rescan=0.05,
)
TO = "+12025550123"


def _steps(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ladder's log lines, one word each: resync, reopen, reset, failed."""
    out = []
    for record in caplog.records:
        msg = record.getMessage()
        if " recovery: " in msg:
            out.append(msg.split(" recovery: ", 1)[1].split()[0].rstrip(":"))
    return out


async def _start(device: str, **kwargs: object) -> Modem:
    modem = Modem(device, timeouts=kwargs.pop("timeouts", FAST), **kwargs)  # type: ignore[arg-type]
    await asyncio.wait_for(modem.start(), 10)
    return modem


@pytest.mark.parametrize("profile", ["quectel", "sim800"])  # a USB module, a UART one
async def test_a_stuck_module_is_reopened_then_reset(
    profile: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gsm.modem")
    async with running(profile, Faults(reset_time=0.1)) as sim:
        modem = await _start(sim.device)
        try:
            sim.faults.stuck = True  # +CME ERROR: 0 to everything until a reset
            await asyncio.wait_for(sim.wait_for(lambda: sim.resets == 1), 10)
            await asyncio.wait_for(modem.wait_ready(), 10)
            assert await modem.send_sms(TO, "back after a reset")
        finally:
            await modem.close()
        assert modem.recovery["reopen"] == 1
        assert modem.recovery["reset"] == 1
        assert _steps(caplog) == ["reopen", "reset"]
        assert "AT+CFUN=1,1" in sim.commands
        assert [s.text for s in sim.sent] == ["back after a reset"]
        # a USB module left the bus and came back; a UART one kept its port
        assert sim.vanished == (1 if sim.profile.usb else 0)


async def test_a_dead_module_climbs_to_the_top_and_is_given_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gsm.modem")
    async with running("huawei", Faults(reset_time=0.05)) as sim:
        modem = await _start(sim.device, timeouts=replace(FAST, reset_settle=0.1, scale=0.02))
        try:
            sim.faults.mute = True  # nothing answers, not even AT+CFUN=1,1
            await asyncio.wait_for(sim.wait_for(lambda: modem.state is ModemState.FAILED), 20)
            with pytest.raises(errors.ModemFailed, match=r"2 reset\(s\)"):
                await modem.wait_ready()
            with pytest.raises(errors.ModemFailed):
                await modem.send_sms(TO, "never")
        finally:
            await modem.close()
    steps = _steps(caplog)
    assert steps[-4:] == ["reopen", "reset", "reset", "failed"]
    assert set(steps[:-4]) <= {"resync"}
    assert modem.recovery["reset"] == 2
    assert sim.resets == 0  # it never heard the reset


async def test_a_refused_reset_still_reopens(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gsm.modem")
    async with running("wavecom", Faults(cfun_reset_refused=True, reset_time=0.05)) as sim:
        modem = await _start(sim.device, max_resets=1)
        try:
            sim.faults.stuck = True
            await asyncio.wait_for(sim.wait_for(lambda: modem.state is ModemState.FAILED), 20)
        finally:
            await modem.close()
    assert _steps(caplog)[-3:] == ["reopen", "reset", "failed"]
    assert "not confirmed" in caplog.text


async def test_a_working_send_starts_the_ladder_again() -> None:
    async with running("quectel", Faults(reset_time=0.05)) as sim:
        modem = await _start(sim.device, max_resets=1)
        try:
            for n in range(1, 3):
                sim.faults.stuck = True
                await asyncio.wait_for(sim.wait_for(lambda n=n: sim.resets == n), 10)
                await asyncio.wait_for(modem.wait_ready(), 10)
                await modem.send_sms(TO, f"back {n}")  # worked: the count starts again
        finally:
            await modem.close()
    assert modem.state is ModemState.CLOSED
    assert modem.recovery == {"resync": modem.recovery["resync"], "reopen": 2, "reset": 2}


async def test_reset_onto_a_new_path_found_by_imei_beside_another_modem(
    tmp_path: Path,
) -> None:
    ports = (str(tmp_path / "ttyUSB*"),)
    a = Simulator(
        "quectel",
        Faults(reset_time=0.05, reset_new_path=True),
        directory=str(tmp_path),
        imei="356938035643809",
        stable_path=False,
    )
    b = Simulator("huawei", directory=str(tmp_path), imei="490154203237518", stable_path=False)
    await a.start()
    await b.start()
    try:
        first = a.device
        ma = await _start("imei:356938035643809", ports=ports)
        mb = await _start(
            "imei:490154203237518", ports=ports, timeouts=replace(FAST, health_interval=0)
        )
        try:
            assert (ma.device, mb.device) == (a.device, b.device)
            a.faults.stuck = True
            await asyncio.wait_for(a.wait_for(lambda: a.resets == 1), 10)
            await asyncio.wait_for(ma.wait_ready(), 10)
            assert ma.device == a.device != first
            await asyncio.gather(ma.send_sms(TO, "from a"), mb.send_sms(TO, "from b"))
        finally:
            await ma.close()
            await mb.close()
        assert [s.text for s in a.sent] == ["from a"]
        assert [s.text for s in b.sent] == ["from b"]
        assert mb.recovery == {"resync": 0, "reopen": 0, "reset": 0}
    finally:
        await a.stop()
        await b.stop()


async def test_a_replugged_stick_is_found_again_on_its_new_path(tmp_path: Path) -> None:
    async with running(
        "huawei", directory=str(tmp_path), imei="356938035643809", stable_path=False
    ) as sim:
        modem = await _start(
            "imei:356938035643809",
            ports=(str(tmp_path / "ttyUSB*"),),
            timeouts=replace(FAST, health_interval=0),
        )
        try:
            sim.vanish()
            await asyncio.wait_for(sim.wait_for(lambda: not modem.ready), 5)
            sim.come_back(new_path=True)
            await asyncio.wait_for(modem.wait_ready(), 10)
            assert modem.device == sim.device
            assert modem.spec == "imei:356938035643809"
            await modem.send_sms(TO, "found again")
        finally:
            await modem.close()
        assert [s.text for s in sim.sent] == ["found again"]


async def test_two_modems_with_one_imei_fail_to_start(tmp_path: Path) -> None:
    async with (
        running("sim800", directory=str(tmp_path), imei="356938035643809", stable_path=False),
        running("quectel", directory=str(tmp_path), imei="356938035643809", stable_path=False),
    ):
        modem = Modem("imei:356938035643809", ports=(str(tmp_path / "ttyUSB*"),), timeouts=FAST)
        with pytest.raises(errors.ImeiAmbiguous):
            await modem.start()
        assert modem.state is ModemState.FAILED
