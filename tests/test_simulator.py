"""The simulator itself, spoken to over its pty with raw reads and writes (no driver)."""

from __future__ import annotations

import asyncio
import os
import termios
import tty
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gsm.pdu import encode_submit, tpdu_length
from gsm.simulator import PROFILES, STORE_SLOTS, Faults, Simulator, running


class RawPort:
    """The pty slave opened by hand: bytes in, bytes out."""

    def __init__(self, path: str, *, flush: bool = True) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd, termios.TCSANOW)
        if flush:  # as pyserial does on open: the boot messages are gone
            termios.tcflush(self.fd, termios.TCIFLUSH)
        self.buf = b""
        self._more = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.fd)
            self.buf += b"<EOF>"
        self.buf += data
        self._more.set()

    async def ask(self, data: bytes, until: bytes = b"OK\r\n") -> bytes:
        """Write `data` (if any, after dropping what was read so far); return what is
        read up to and including `until`."""
        if data:
            self.buf = b""
            os.write(self.fd, data)
        async with asyncio.timeout(5):
            while until not in self.buf:
                self._more.clear()
                await self._more.wait()
        out, self.buf = self.buf.split(until, 1)
        return out + until

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


@pytest.fixture
async def port_sim() -> AsyncIterator[tuple[RawPort, Simulator]]:
    async with running("sim800") as sim:
        port = RawPort(sim.device)
        yield port, sim
        port.close()


async def test_echo_is_on_at_power_up_and_ate0_stops_it(
    port_sim: tuple[RawPort, Simulator],
) -> None:
    port, _ = port_sim
    assert await port.ask(b"AT\r") == b"AT\r\r\nOK\r\n"
    assert await port.ask(b"ATE0\r") == b"ATE0\r\r\nOK\r\n"
    assert await port.ask(b"AT+CGMI\r") == b"\r\nSIMCOM_Ltd\r\n\r\nOK\r\n"


async def test_sends_are_decoded_and_recorded(port_sim: tuple[RawPort, Simulator]) -> None:
    port, sim = port_sim
    await port.ask(b"ATE0\r")
    parts = encode_submit("+12025550123", "a" * 200, reference=7, request_status_report=True)
    for part in parts:
        assert (await port.ask(f"AT+CMGS={part.tpdu_length}\r".encode(), b"> ")).endswith(b"> ")
        reply = await port.ask(part.pdu.encode() + b"\x1a")
        assert b"+CMGS: " in reply
    assert [(p.seq, p.total, p.reference, p.message_ref) for p in sim.parts] == [
        (1, 2, 7, 1),
        (2, 2, 7, 2),
    ]
    assert len(sim.sent) == 1
    assert sim.sent[0].text == "a" * 200
    assert sim.sent[0].references == (1, 2)
    assert sim.sent[0].status_report


async def test_wrong_length_is_cms_304_and_esc_cancels(
    port_sim: tuple[RawPort, Simulator],
) -> None:
    port, sim = port_sim
    await port.ask(b"ATE0\r")
    (part,) = encode_submit("+12025550123", "hi")
    await port.ask(f"AT+CMGS={part.tpdu_length + 1}\r".encode(), b"> ")
    assert b"+CMS ERROR: 304" in await port.ask(part.pdu.encode() + b"\x1a", b"304\r\n")
    await port.ask(f"AT+CMGS={part.tpdu_length}\r".encode(), b"> ")
    assert await port.ask(part.pdu.encode() + b"\x1b") == b"\r\nOK\r\n"
    assert sim.parts == []


async def test_three_wrong_pins_lock_the_sim() -> None:
    async with running("sim800", Faults(pin="1234")) as sim:
        port = RawPort(sim.device)
        try:
            await port.ask(b"ATE0\r")
            await port.ask(b"AT+CMEE=1\r")
            assert b"SIM PIN" in await port.ask(b"AT+CPIN?\r")
            assert b"+CME ERROR: 11" in await port.ask(b"AT+CMGF=0\r", b"11\r\n")
            for _ in range(3):
                assert b"+CME ERROR: 16" in await port.ask(b'AT+CPIN="0000"\r', b"16\r\n")
            assert b"+CPIN: SIM PUK" in await port.ask(b"AT+CPIN?\r")
            assert b"+CME ERROR: 12" in await port.ask(b'AT+CPIN="1234"\r', b"12\r\n")
        finally:
            port.close()
        assert sim.pin_attempts == 4


async def test_profile_quirks_on_the_wire() -> None:
    async with running("huawei") as sim:
        port = RawPort(sim.device)
        try:
            await port.ask(b"ATE0\r")
            assert await port.ask(b"AT+WIND?\r", b"SUPPORT\r\n") == b"\r\nCOMMAND NOT SUPPORT\r\n"
            assert await port.ask(b"AT+CMGS=5\r", b">") == b">"
        finally:
            port.close()
    async with running("wavecom") as sim:
        port = RawPort(sim.device)
        try:
            await port.ask(b"ATE0\r")
            assert await port.ask(b"AT+CPIN?\r", b"READY\r\n") == b"\r\n+CPIN: READY\r\n"
        finally:
            port.close()


async def test_noise_and_garbage_faults_show_on_the_wire() -> None:
    async with running("huawei", Faults(urc_noise=True, garbage=True)) as sim:
        port = RawPort(sim.device)
        try:
            reply = await port.ask(b"AT+CGMM\r")
            assert b"\xff\xfe" in reply
            assert b"\r\n^" in reply
            assert b"E3372" in reply
        finally:
            port.close()


async def test_inject_text_is_announced_only_after_cnmi(
    port_sim: tuple[RawPort, Simulator],
) -> None:
    port, sim = port_sim
    await port.ask(b"ATE0\r")
    sim.inject_text("+12025550142", "first")
    await port.ask(b"AT+CNMI=2,1,0,1,0\r")
    sim.inject_text("+12025550142", "second")
    urc = await port.ask(b"", b'"SM",2\r\n')
    assert urc == b'\r\n+CMTI: "SM",2\r\n'
    reply = await port.ask(b"AT+CMGR=1\r")
    assert reply.startswith(b"\r\n+CMGR: 0,,")
    sim.inject_report(5, "+12025550123")
    assert (await port.ask(b"", b"+CDS: ")).endswith(b"\r\n+CDS: ")


async def test_vanish_closes_the_pty_and_come_back_repoints_the_link(
    port_sim: tuple[RawPort, Simulator],
) -> None:
    port, sim = port_sim
    old = sim.pty_path
    sim.vanish()
    assert not sim.present
    assert not os.path.lexists(sim.device)  # noqa: ASYNC240
    await port.ask(b"", b"<EOF>")
    sim.come_back()
    assert os.path.realpath(sim.device) == sim.pty_path  # noqa: ASYNC240
    assert old
    fresh = RawPort(sim.device, flush=False)
    try:
        assert (await fresh.ask(b"", b"SMS Ready\r\n")).startswith(b"\r\nRDY\r\n")  # booted
        assert await fresh.ask(b"AT\r") == b"AT\r\r\nOK\r\n"  # and echo is on again
    finally:
        fresh.close()
    assert sim.vanished == 1


def test_every_profile_cites_its_manual() -> None:
    assert len(PROFILES) >= 2
    for profile in PROFILES.values():
        assert "AT" in profile.doc or "tests/data/modem" in profile.doc
        assert profile.iccid_command.startswith("AT")


async def test_malformed_arguments_get_error_not_a_dead_simulator(
    port_sim: tuple[RawPort, Simulator],
) -> None:
    port, _ = port_sim
    await port.ask(b"ATE0\r")
    assert await port.ask(b"AT+CMEE=x\r", b"ERROR\r\n") == b"\r\nERROR\r\n"
    assert await port.ask(b"AT+CREG=?\r", b"ERROR\r\n") == b"\r\nERROR\r\n"
    assert await port.ask(b"AT\r") == b"\r\nOK\r\n"


async def test_text_mode_shows_stored_texts_as_modems_do(
    port_sim: tuple[RawPort, Simulator],
) -> None:
    port, sim = port_sim
    when = datetime(2026, 11, 22, 8, 0, tzinfo=timezone(timedelta(hours=-5)))
    await port.ask(b"ATE0\r")
    await port.ask(b"AT+CMGF=1\r")
    sim.inject_text("+12025550142", "Call me, thanks é", timestamp=when)
    first = await port.ask(b"AT+CMGR=1\r")
    # The form of the python-gsmmodem transcripts (tests/data/modem): header, then text.
    assert first == (
        b'\r\n+CMGR: "REC UNREAD","+12025550142",,"26/11/22,08:00:00-20"\r\n'
        b"\r\nCall me, thanks ?\r\n\r\nOK\r\n"
    )
    assert b'"REC READ"' in await port.ask(b'AT+CMGL="ALL"\r')
    assert b"+CMS ERROR: 302" in await port.ask(b"AT+CMGL=4\r", b"302\r\n")
    await port.ask(b'AT+CSCS="UCS2"\r')
    await port.ask(b"AT+CSDH=1\r")
    full = await port.ask(b"AT+CMGR=1\r")
    oa = "+12025550142".encode("utf-16-be").hex().upper()
    body = "Call me, thanks é".encode("utf-16-be").hex().upper()
    assert (
        full
        == (
            f'\r\n+CMGR: "REC READ","{oa}",,"26/11/22,08:00:00-20",145,4,0,0,'
            f'"{"+12025550100".encode("utf-16-be").hex().upper()}",145,17\r\n'
            f"\r\n{body}\r\n\r\nOK\r\n"
        ).encode()
    )
    await port.ask(b"AT+CMGF=0\r")
    assert b"+CMS ERROR: 302" in await port.ask(b'AT+CMGL="ALL"\r', b"302\r\n")


async def test_direct_texts_and_a_withheld_part_on_the_wire(
    port_sim: tuple[RawPort, Simulator],
) -> None:
    port, sim = port_sim
    await port.ask(b"ATE0\r")
    await port.ask(b"AT+CNMI=2,1,0,1,0\r")
    pdus = sim.inject_text("+12025550142", "x" * 400, withhold={2})
    assert len(pdus) == 3
    assert await port.ask(b"", b'"SM",2\r\n') == b'\r\n+CMTI: "SM",1\r\n\r\n+CMTI: "SM",2\r\n'
    assert sim.stored() == {1: pdus[0], 2: pdus[2]}
    sim.inject_pdu(pdus[1], direct=True)
    assert await port.ask(b"", pdus[1].encode() + b"\r\n") == (
        f"\r\n+CMT: ,{tpdu_length(pdus[1])}\r\n{pdus[1]}\r\n".encode()
    )
    await port.ask(b"AT+CMGF=1\r")
    await port.ask(b"AT+CNMI=2,2,0,1,0\r")  # mt=2: every text comes direct
    sim.inject_text("+12025550142", "OK", timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert await port.ask(b"", b"\r\nOK\r\n") == (
        b'\r\n+CMT: "+12025550142",,"26/01/02,03:04:05+00"\r\nOK\r\n'
    )
    assert len(sim.stored()) == 2  # the direct ones were not stored


async def test_a_full_sim_leaves_texts_with_the_network_until_a_slot_frees(
    port_sim: tuple[RawPort, Simulator],
) -> None:
    """As an SMSC does with a phone whose memory is full: nothing raised, nothing lost;
    the held text comes (stored, +CMTI) once AT+CMGD frees a slot."""
    port, sim = port_sim
    await port.ask(b"ATE0\r")
    for i in range(STORE_SLOTS):
        sim.inject_text("+12025550142", f"text {i}")
    await port.ask(b"AT+CNMI=2,1,0,1,0\r")
    assert sim.inject_text("+12025550143", "one too many")
    assert len(sim.stored("SM")) == STORE_SLOTS
    (held,) = sim.network_held
    reply = await port.ask(b"AT+CMGD=7\r", b'"SM",7\r\n')
    assert reply.endswith(b'OK\r\n\r\n+CMTI: "SM",7\r\n')
    assert not sim.network_held
    assert sim.stored("SM")[7] == held
