"""Finding a modem by its IMEI over real ptys: simulators answer AT+CGSN; ports that are
held, silent, gone or shared by two devices."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gsm import errors
from gsm.finder import (
    candidate_ports,
    find_by_imei,
    imei_of_device,
    read_imei,
    scan,
    usb_device_of,
)
from gsm.simulator import PROFILES, Faults, Simulator, running
from gsm.transport import SerialLink

IMEI_A = "356938035643809"
IMEI_B = "490154203237518"


@contextlib.asynccontextmanager
async def sims(
    directory: Path, *specs: tuple[str, str | None, Faults | None]
) -> AsyncIterator[list[Simulator]]:
    started: list[Simulator] = []
    try:
        for profile, imei, faults in specs:
            sim = Simulator(profile, faults, directory=str(directory), imei=imei, stable_path=False)
            await sim.start()
            started.append(sim)
        yield started
    finally:
        for sim in started:
            await sim.stop()


def test_imei_device_setting() -> None:
    assert imei_of_device("/dev/ttyUSB0") is None
    assert imei_of_device("imei:356938035643809") == "356938035643809"
    assert imei_of_device("IMEI: 356938035643809 ") == "356938035643809"
    with pytest.raises(ValueError, match="14 to 17 digits"):
        imei_of_device("imei:12345")
    with pytest.raises(ValueError, match="14 to 17 digits"):
        imei_of_device("imei:35693803564380x")


async def test_four_profiles_each_found_by_imei(tmp_path: Path) -> None:
    imeis = {name: f"35693803564{n:04d}" for n, name in enumerate(sorted(PROFILES))}
    specs = [(name, imei, None) for name, imei in imeis.items()]
    async with sims(tmp_path, *specs) as started:
        pattern = [str(tmp_path / "ttyUSB*")]
        found = await scan(pattern, timeout=1.0)
        assert sorted(found.values()) == sorted(imeis.values())
        for sim, imei in zip(started, imeis.values(), strict=True):
            assert await find_by_imei(imei, pattern, timeout=1.0) == sim.device
        with pytest.raises(errors.ImeiNotFound, match="4 port"):
            await find_by_imei("490154203237599", pattern, timeout=0.5)


async def test_a_modem_is_found_again_on_its_new_path(tmp_path: Path) -> None:
    async with sims(tmp_path, ("quectel", IMEI_A, None), ("sim800", IMEI_B, None)) as (a, _b):
        pattern = [str(tmp_path / "ttyUSB*")]
        before = await find_by_imei(IMEI_A, pattern, timeout=1.0)
        a.vanish()
        a.come_back(new_path=True)
        after = await find_by_imei(IMEI_A, pattern, timeout=1.0)
        assert before != after == a.device
        assert not os.path.lexists(before)  # noqa: ASYNC240 - a test, one call


async def test_two_devices_with_one_imei_are_refused(tmp_path: Path) -> None:
    async with sims(tmp_path, ("huawei", IMEI_A, None), ("huawei", IMEI_A, None)) as both:
        with pytest.raises(errors.ImeiAmbiguous) as caught:
            await find_by_imei(IMEI_A, [str(tmp_path / "ttyUSB*")], timeout=1.0)
        assert sorted(caught.value.paths) == sorted(s.device for s in both)
        assert "by-id" in str(caught.value)
        assert not caught.value.retryable


async def test_a_by_id_link_and_its_port_are_one(tmp_path: Path) -> None:
    async with running("sim800", directory=str(tmp_path), imei=IMEI_A) as sim:
        pty = sim.pty_path
        found = await find_by_imei(IMEI_A, [str(tmp_path / "usb-*"), pty], timeout=1.0)
        assert found == sim.device  # the stable name, not the /dev/pts one


async def test_a_held_port_is_skipped_at_once_and_left_alone(tmp_path: Path) -> None:
    async with sims(tmp_path, ("quectel", IMEI_A, None)) as (sim,):
        held = await SerialLink.open(sim.device, 115200, lambda _d: None, lambda _e: None)
        try:
            seen = len(sim.commands)
            started = time.monotonic()
            assert await read_imei(sim.device, timeout=2.0) is None
            assert time.monotonic() - started < 1.0
            assert len(sim.commands) == seen  # not one byte written to it
        finally:
            await held.close()
        assert await read_imei(sim.device, timeout=2.0) == IMEI_A


async def test_silent_and_vanished_ports_answer_nothing_within_the_timeout(tmp_path: Path) -> None:
    async with sims(tmp_path, ("sim800", IMEI_A, Faults(mute=True)), ("huawei", IMEI_B, None)) as (
        mute,
        gone,
    ):
        gone.vanish()
        started = time.monotonic()
        assert await read_imei(mute.device, timeout=0.3) is None
        assert await read_imei(gone.device, timeout=0.3) is None
        assert time.monotonic() - started < 1.5
        # a silent port is asked again after an ESC (a prompt left by a dead program)
        assert mute.commands == []  # muted: it parsed nothing, but the probe closed it
        assert await asyncio.wait_for(scan([str(tmp_path / "ttyUSB*")], timeout=0.3), 3) == {
            mute.device: None
        }


async def test_a_modem_left_at_a_prompt_is_found_after_an_esc(tmp_path: Path) -> None:
    async with running("quectel", directory=str(tmp_path), imei=IMEI_A) as sim:
        link = await SerialLink.open(sim.device, 115200, lambda _d: None, lambda _e: None)
        link.write(b"ATE0\r")
        link.write(b"AT+CMGF=1\r")
        link.write(b'AT+CMGS="+12025550123"\r')
        await sim.wait_for(lambda: any(c.startswith("AT+CMGS") for c in sim.commands))
        await link.close()  # a program killed at the "> " prompt
        assert await read_imei(sim.device, timeout=1.0) == IMEI_A
        assert sim.sent == []  # the stray command text was cancelled, never sent


def test_usb_device_of_groups_the_ports_of_one_stick(tmp_path: Path) -> None:
    usb = tmp_path / "devices" / "usb1" / "1-1" / "1-1.3"
    for n in (2, 3):
        port = usb / f"1-1.3:1.{n}" / f"ttyUSB{n}"
        port.mkdir(parents=True)
        (tmp_path / "class" / "tty" / f"ttyUSB{n}").mkdir(parents=True)
        (tmp_path / "class" / "tty" / f"ttyUSB{n}" / "device").symlink_to(port.parent)
    (usb / "idVendor").write_text("2c7c\n")
    assert usb_device_of("/dev/ttyUSB2", str(tmp_path)) == str(usb)
    assert usb_device_of("/dev/ttyUSB3", str(tmp_path)) == str(usb)
    assert usb_device_of("/dev/pts/7", str(tmp_path)) is None


def test_candidate_ports_are_listed_once_in_order(tmp_path: Path) -> None:
    for name in ("ttyUSB1", "ttyUSB0", "ttyACM0"):
        (tmp_path / name).touch()
    got = candidate_ports([str(tmp_path / "ttyUSB*"), str(tmp_path / "tty*")])
    assert [Path(p).name for p in got] == ["ttyUSB0", "ttyUSB1", "ttyACM0"]
