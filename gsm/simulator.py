"""A GSM modem on a real pseudo-terminal, for tests, the demo and manual trials.

The simulator owns the master side of a pty (os.openpty) and answers AT commands on it
the way real modems do, so the driver under test opens the slave path with pyserial like
any /dev/ttyUSBn. A symlink in a temporary directory plays /dev/serial/by-id: it keeps
its name when the simulated stick "vanishes" (the pty is closed, the link removed) and
"comes back" (a new pty, perhaps under another /dev/pts number, the link re-pointed).

It decodes every SMS-SUBMIT it receives (gsm.pdu) and records the texts "sent", puts
concatenated parts back together, and can inject inbound texts and delivery reports:
stored (+CMTI / +CDSI, then AT+CMGR, AT+CMGL, AT+CMGD) or direct (+CMT / +CDS), in PDU
or text mode (AT+CMGF, with AT+CSCS "IRA", "GSM" or "UCS2" and AT+CSDH), a long text
with a part withheld (`inject_text(..., withhold={2})`, delivered later with
`inject_pdu`), with URC noise around them (`Faults.urc_noise`).

Profiles follow the makers' AT manuals (sections cited in each profile's `doc`); fault
switches (`Faults`) make it slow, failing, noisy, vanishing, garbled, networkless or
PIN-locked. In-process::

    async with simulator.running(profile="sim800") as sim:
        modem = Modem(sim.device)
        ...
        sim.sent  # [SentSms(number, text, parts, references, ...)]

or by hand: ``python -m gsm.simulator --profile huawei`` prints the device path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import tty
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from gsm import gsm7
from gsm.pdu import (
    Deliver,
    PduError,
    StatusReport,
    decode_incoming,
    decode_submit,
    encode_deliver,
    encode_status_report,
    tpdu_length,
)

#: Slots of each message store. Far more than a real SIM's SM (AT+CPMS tells; a few tens),
#: so that benchmarks measure the daemon; when they are all taken the network holds what
#: comes (see `inject_pdu`).
STORE_SLOTS = 999


@dataclass(frozen=True, slots=True)
class Profile:
    """How one modem family answers. `doc` cites the manual sections followed."""

    name: str
    maker: str
    model: str
    firmware: str
    imei: str
    iccid: str
    iccid_command: str
    iccid_answer: str
    operator: str
    unsupported: str = "ERROR"
    prompt: bytes = b"\r\n> "
    cpin_without_ok: bool = False
    has_cereg: bool = False
    busy_after_cfun: int = 0
    """Commands answered +CME ERROR: 515 (busy) right after AT+CFUN=1."""
    boot: tuple[str, ...] = ()
    noise: tuple[str, ...] = ()
    memories: tuple[str, ...] = ("SM", "ME")
    """What AT+CPMS=? lists and AT+CPMS takes (messages are read and deleted there)."""
    cpms_test: str = ""
    """The AT+CPMS=? answer line when it is not the usual three lists of `memories`."""
    report_memory: str | None = None
    """Where AT+CNMI ds=2 stores delivery reports (announced with +CDSI); None: the
    modem refuses ds=2."""
    usb: bool = True
    """A USB module: AT+CFUN=1,1 resets it and its ports leave the bus and come back
    (re-enumerated, perhaps as another ttyUSBn). False: a module on a UART (behind a
    USB-serial adapter that stays): the port stays, the module is silent while it boots
    and then greets with its power-on codes."""
    doc: str = ""


PROFILES: dict[str, Profile] = {
    "sim800": Profile(
        name="sim800",
        maker="SIMCOM_Ltd",
        model="SIMCOM_SIM800L",
        firmware="Revision:1418B05SIM800L24",
        imei="869170031234567",
        iccid="8901410321111851072",
        # SIM800 Series AT Command Manual V1.09, AT+CCID: the bare ICCID line, then OK.
        iccid_command="AT+CCID",
        iccid_answer="{iccid}",
        operator="T-Mobile",
        # TS 27.005 3.5.1: the prompt is "<CR><LF><greater_than><space>".
        prompt=b"\r\n> ",
        # SIM800 manual V1.09, "Summary of unsolicited result codes": power-on sequence.
        boot=("RDY", "+CFUN: 1", "+CPIN: READY", "Call Ready", "SMS Ready"),
        noise=(
            '+CIEV: 10,"310260","T-Mobile","T-Mobile", 0, 0',
            '*PSUTTZ: 2026,11,22,8,0,0,"+0",0',
            "DST: 0",
            "RING",
            '+CLIP: "+12025550142",145,"",0,"",0',
        ),
        # V1.09 AT+CPMS: "SM", "ME", "SM_P", "ME_P", "MT"; AT+CNMI <ds> 0 or 1 only.
        memories=("SM", "ME", "SM_P", "ME_P", "MT"),
        # A SIM800L is a UART module (on a USB-serial adapter, whose port stays).
        usb=False,
        doc=(
            "SIMCom SIM800 Series AT Command Manual V1.09: echo on at power-up (ATE1 is the"
            " default); AT+CCID; AT+CMGS (4.2.5, max response 60 s) after the CRLF '> '"
            " prompt of TS 27.005 3.5.1; AT+CNMI ds=1 gives '+CDS: <length><CR><LF><pdu>'"
            " (ds=2 is not among its values: reports cannot be stored);"
            " the unsolicited codes of its summary table (RDY, +CFUN, +CPIN, Call Ready,"
            " SMS Ready, *PSUTTZ, DST, +CIEV)."
        ),
    ),
    "huawei": Profile(
        name="huawei",
        maker="huawei",
        model="E3372",
        firmware="22.315.01.00.00",
        imei="866123456789012",
        iccid="8944110068256270054",
        # Huawei LTE module AT Command Interface Specification: AT^ICCID? -> ^ICCID: <iccid>.
        iccid_command="AT^ICCID?",
        iccid_answer="^ICCID: {iccid}",
        operator="Vodafone",
        # tests/data/modem/huaweie1752.json: unknown commands -> COMMAND NOT SUPPORT.
        unsupported="COMMAND NOT SUPPORT",
        # A bare "> " with no leading CRLF: the form the python-gsmmodem fixtures show;
        # the driver must accept both.
        prompt=b"> ",
        boot=("^BOOT:12345678,0,0,0,75", "^SIMST: 1", "^SRVST: 2"),
        noise=("^RSSI: 17", "^MODE: 5,4", "^DSFLOWRPT:00000A,0,0,0,0,0,0", "^SRVST: 2"),
        # tests/data/modem/huaweie1752.json: AT+CPMS=? lists "ME","MT","SM","SR".
        memories=("ME", "MT", "SM", "SR"),
        report_memory="SR",
        doc=(
            "Huawei E3372/E1752 (HUAWEI AT Command Interface Specification, ^RSSI/^MODE/"
            "^BOOT unsolicited reports); unsupported commands answer 'COMMAND NOT SUPPORT'"
            " (tests/data/modem/huaweie1752.json); delivery reports stored in SR (+CDSI)."
        ),
    ),
    "quectel": Profile(
        name="quectel",
        maker="Quectel",
        model="EC25",
        firmware="EC25EFAR06A06M4G",
        imei="861234567890123",
        iccid="89860318740234567890",
        # Quectel EC25&EC21 AT Commands Manual V1.3, AT+QCCID: "+QCCID: <iccid>".
        iccid_command="AT+QCCID",
        iccid_answer="+QCCID: {iccid}",
        operator="AT&T",
        prompt=b"\r\n> ",
        has_cereg=True,
        # Quectel power-up: RDY, +CPIN: READY, +QUSIM: 1, then +QIND: SMS DONE / PB DONE.
        boot=("RDY", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE", "+QIND: PB DONE"),
        noise=('+QIND: "csq",21,99', '+CGREG: 1,"2B0F","0A6B2C1",7', "RING"),
        # Its URC table has +CDSI ("new message status report is received, and saved to
        # memory"); that the memory is "SR" is our assumption.
        memories=("SM", "ME", "MT", "SR"),
        report_memory="SR",
        doc=(
            "Quectel EC25 (EC25&EC21 AT Commands Manual V1.3): AT+QCCID, AT+CEREG for LTE"
            " registration, +QIND/+QUSIM unsolicited reports, the CRLF '> ' prompt;"
            " delivery reports stored (+CDSI), in SR (assumed)."
        ),
    ),
    "wavecom": Profile(
        name="wavecom",
        maker=" WAVECOM MODEM",
        model=" MULTIBAND  900E  1800",
        firmware="",
        imei="351234567890123",
        iccid="8933150319005024316",
        iccid_command="AT+CCID",
        iccid_answer="+CCID: {iccid}",
        operator="Orange",
        cpin_without_ok=True,
        busy_after_cfun=2,
        noise=("+WIND: 5,1", "+WIND: 2", "RING"),
        # tests/data/modem/wavecommultiband900e1800.json: AT+CPMS=? and AT+CNMI=2,1,0,2.
        memories=("SM", "BM", "SR"),
        cpms_test='+CPMS: (("SM","BM","SR"),("SM"))',
        report_memory="SR",
        usb=False,  # an RS-232 modem
        doc=(
            "Wavecom Multiband 900E/1800 (tests/data/modem/wavecommultiband900e1800.json):"
            " AT+CPIN? answers without a final OK; AT+CGMR gives ERROR; the two commands"
            " after AT+CFUN=1 fail with +CME ERROR: 515; +WIND URCs."
        ),
    ),
}


@dataclass(slots=True)
class Faults:
    """Fault switches. Mutable: a test may change them while the simulator runs."""

    slow: float = 0.0
    """Seconds to wait before every answer."""
    cms_every: int = 0
    """Every Nth message part fails with +CMS ERROR: `cms_code` (0: never)."""
    cms_code: int = 38
    urc_noise: bool = False
    """Unsolicited codes inside answers, before the prompt and between ^Z and +CMGS."""
    vanish_after: int | None = None
    """After this many accepted parts the next AT+CMGS makes the device vanish (once)."""
    garbage: bool = False
    """Garbage bytes before every answer."""
    no_network: bool = False
    """Not registered (+CREG: 0,2); sends fail with +CMS ERROR: 331."""
    pin: str | None = None
    """The SIM asks for this PIN at power-up."""
    puk_locked: bool = False
    """The SIM is PUK-locked (three wrong PINs before): +CPIN: SIM PUK, and AT+CPIN=<pin>
    fails."""
    pin_delay: float = 0.0
    """Seconds the SIM takes to check AT+CPIN=<pin> (commands after it wait, as on a modem)."""
    silent_after_pin: bool = False
    """AT+CPIN=<pin> is taken (and counted) but nothing is answered from then on."""
    vanish_after_body: int | None = None
    """After this many accepted parts the next part is taken (recorded as sent), then
    the device vanishes before its +CMGS (once)."""
    bad_message_ref: bool = False
    """Parts are taken (recorded as sent) but answered "+CMGS: 999", a reference no modem gives."""
    mute: bool = False
    """Answer nothing at all (a modem at the wrong baud rate, or a dead one)."""
    flight_mode: bool = False
    """Start with the radio off (+CFUN: 4): no registration until AT+CFUN=1."""
    no_pdu: bool = False
    """Refuse PDU mode (AT+CMGF=0 -> +CMS ERROR: 303), as some old phones do."""
    return_after: float | None = None
    """After vanishing, come back by itself this many seconds later (for the demo)."""
    no_ucs2: bool = False
    """Refuse AT+CSCS="UCS2" (text mode then reads texts in IRA)."""
    cmgd_errors: int = 0
    """The next this many AT+CMGD fail with +CMS ERROR: 500 (nothing deleted)."""
    accept_delay: float = 0.0
    """Seconds the network takes to accept a message part: the wait between its body
    (the part is recorded as sent at once) and +CMGS. A kill in this wait leaves the
    text in flight."""
    reset_time: float = 0.2
    """Seconds AT+CFUN=1,1 takes: the port is away (USB) or the module silent (UART)."""
    reset_new_path: bool = False
    """A USB module comes back from AT+CFUN=1,1 under a new path (another ttyUSBn)."""
    stuck: bool = False
    """The module is stuck: every command but AT, ATE, AT+CMEE, AT+CFUN and the identity
    ones (AT+CGMI, AT+CGSN, ...) answers +CME ERROR: 0 (phone failure) until AT+CFUN=1,1
    resets it; reopening the port does not help. (`mute`, no answer at all, is cured by
    nothing.)"""
    cfun_reset_refused: bool = False
    """AT+CFUN=1,1 answers ERROR (a module without the reset argument)."""
    csmp_clears_smsc: bool = False
    """AT+CSMP=... empties the SMS centre address, as the Qualcomm M6280 and ZTE K3565-Z
    do (tests/data/modem/qualcommm6280.json, ztek3565z.json; python-gsmmodem issue #8)."""
    max_text_chars: int | None = None
    """Text mode: a body longer than this (characters in GSM-7, octets in UCS-2) is refused
    (+CMS ERROR: 305) even below one SMS's limit (None: one SMS's limit: 160 / 140)."""


@dataclass(frozen=True, slots=True)
class PartRecord:
    """One SMS-SUBMIT as the simulator received it."""

    number: str
    text: str
    seq: int
    total: int
    reference: int | None
    message_ref: int
    status_report: bool
    encoding: str
    pdu: str


@dataclass(frozen=True, slots=True)
class SentSms:
    """One whole text the simulator "sent" (all its parts arrived)."""

    number: str
    text: str
    parts: int
    references: tuple[int, ...]
    status_report: bool
    encoding: str


_PATH_NUMBERS = itertools.count()
_GARBAGE = bytes([0x00, 0xFF, 0xFE, 0x13, 0x88, 0x7F, 0x80, 0x9B]) + b"~~"


@dataclass(slots=True)
class _ModemState:
    echo: bool = True
    cmee: int = 0
    mode: int = 0
    sim_locked: bool = False
    puk: bool = False
    pin_tries: int = 3
    creg_n: int = 0
    cfun: int = 1
    busy: int = 0
    cnmi: tuple[int, ...] = (0, 0, 0, 0, 0)
    read_mem: str = "SM"
    smsc: str = "+12025550100"
    cscs: str = "IRA"
    csdh: int = 0
    csmp: tuple[int, int, int, int] = (17, 167, 0, 0)
    """AT+CSMP <fo>,<vp>,<pid>,<dcs>: the SIM800 manual's defaults."""
    storage: dict[str, dict[int, tuple[str, str]]] = field(
        default_factory=lambda: {"SM": {}, "SR": {}, "ME": {}}
    )


class Simulator:
    """A simulated modem behind a real pty. See the module docstring."""

    def __init__(
        self,
        profile: str | Profile = "sim800",
        faults: Faults | None = None,
        *,
        directory: str | None = None,
        seed: int = 1,
        imei: str | None = None,
        stable_path: bool = True,
    ) -> None:
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        if imei is not None:  # two simulators may share one (a cloned or blank IMEI)
            self.profile = replace(self.profile, imei=imei)
        self.faults = faults or Faults()
        self._own_dir = directory is None
        self._dir = Path(directory or tempfile.mkdtemp(prefix="textback-sim-"))
        model = re.sub(r"[^A-Za-z0-9]+", "_", self.profile.model.strip())
        self._stable = stable_path
        self.device = (
            str(self._dir / f"usb-Simulated_{model}-if00-port0")
            if stable_path
            else self._new_path()
        )
        """The path to the current pty: a stable one (like /dev/serial/by-id/...), or with
        `stable_path=False` one like /dev/ttyUSBn that a replug may change (`come_back`)."""
        self.resets = 0
        """AT+CFUN=1,1 resets taken."""
        self._rebooting = False
        self.pty_path = ""
        self.sent: list[SentSms] = []
        self.parts: list[PartRecord] = []
        self.commands: list[str] = []
        self.on_command: Callable[[str], None] | None = None
        """Called with each command line as it is parsed (benchmarks time AT+CMGS by it)."""
        self.pin_attempts = 0
        self.network_held: deque[str] = deque()
        """Texts the network holds because SM was full (delivered as slots free up)."""
        self.duplicates = 0
        self.vanished = 0
        self.raw_echo = False
        """Echo every byte straight back and answer nothing (the benchmark's baseline)."""
        self._rng = random.Random(seed)
        self._master = -1
        self._slave = -1
        self._rx: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._out = bytearray()
        self._writer_on = False
        self._task: asyncio.Task[None] | None = None
        self._state = _ModemState()
        self._groups: dict[tuple[str, int, int], dict[int, PartRecord]] = {}
        self._accepted = 0
        self._bodies = 0
        self._mr = 0
        self._changed = asyncio.Event()
        self._stopped = False
        self._return_timer: asyncio.TimerHandle | None = None
        self.report_delay: float | None = None
        """Seconds after a part that asked for one (TP-SRR) was taken until the network's
        delivery report arrives (None: none come by themselves; `inject_report` still
        works). It is stored (AT+CNMI ds=2) or pushed (ds=1) as `inject_report` says,
        also while nobody listens (`host_closed`)."""
        self.report_status = 0
        """TP-ST of the reports made after `report_delay` (0: received by the recipient)."""
        self.reports: list[tuple[int, str, int]] = []
        """Every delivery report the network gave: (message reference, recipient, TP-ST)."""
        self.host_open = True
        """Someone holds the port open. False (`host_closed`): everything the modem says
        is lost, as on a real port nobody reads (a +CDS pushed then is gone for good)."""
        self._report_timers: set[asyncio.TimerHandle] = set()

    # ----------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Create the pty and begin answering."""
        self._stopped = False
        self._power_on()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Close the pty and stop; remove the temporary directory."""
        self._stopped = True
        for timer in self._report_timers:
            timer.cancel()
        self._report_timers.clear()
        if self._return_timer is not None:
            self._return_timer.cancel()
        self._close_pty()
        if self._task is not None:
            self._rx.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def vanish(self) -> None:
        """Unplug: close the pty (the driver's reads fail) and remove the by-id link."""
        self.vanished += 1
        self._close_pty()
        self._notify()
        if self.faults.return_after is not None and not self._stopped:
            loop = asyncio.get_running_loop()
            self._return_timer = loop.call_later(self.faults.return_after, self.come_back)

    def come_back(self, *, new_path: bool = False) -> None:
        """Plug in again: a fresh pty, the link re-pointed, the modem freshly booted.
        `new_path`: under another name (`device` changes), as a ttyUSBn can."""
        if self._master >= 0 or self._stopped:
            return
        if new_path:
            self.device = self._new_path()
        self._power_on()
        self._notify()

    def _new_path(self) -> str:
        """A name no simulator in this directory has used: ttyUSB<n>."""
        n = next(_PATH_NUMBERS)
        while (self._dir / f"ttyUSB{n}").exists():
            n = next(_PATH_NUMBERS)
        return str(self._dir / f"ttyUSB{n}")

    def _cfun_reset(self) -> None:
        """AT+CFUN=1,1 (answered OK already): a USB module leaves the bus at once and comes
        back `reset_time` later (on a new path with `reset_new_path`); a UART module is
        silent that long and greets with its power-on codes."""
        self.resets += 1
        self.faults.stuck = False
        loop = asyncio.get_running_loop()
        if self.profile.usb:
            # leave the bus just after the OK went out (the host reads it first)
            def gone() -> None:
                if self._stopped:
                    return
                self.vanished += 1
                self._close_pty()
                self._notify()
                self._return_timer = loop.call_later(
                    self.faults.reset_time,
                    lambda: self.come_back(new_path=self.faults.reset_new_path),
                )

            loop.call_later(0.01, gone)
            return
        self._rebooting = True

        def booted() -> None:
            self._rebooting = False
            if self._master < 0 or self._stopped:
                return
            self._state = self._fresh_state()
            for urc in self.profile.boot:
                self._send(f"\r\n{urc}\r\n".encode())
            self._notify()

        loop.call_later(self.faults.reset_time, booted)

    @property
    def present(self) -> bool:
        """True while the pty exists."""
        return self._master >= 0

    @property
    def cnmi(self) -> tuple[int, ...]:
        """The AT+CNMI in effect (<mode>,<mt>,<bm>,<ds>,<bfr>)."""
        return self._state.cnmi

    def host_closed(self) -> None:
        """The program on the port is gone (killed): what the modem says from now on is
        lost, and so is what it said that the dead program never read."""
        self.host_open = False
        self._out.clear()
        if self._slave >= 0:
            os.set_blocking(self._slave, False)
            with contextlib.suppress(OSError):
                while os.read(self._slave, 4096):
                    pass
            os.set_blocking(self._slave, True)

    def host_opened(self) -> None:
        """A program holds the port again (call before starting it)."""
        self.host_open = True

    def _power_on(self) -> None:
        master, slave = os.openpty()
        # Raw mode at once: no echo or CR/LF mangling by the line discipline, even before
        # the driver opens the slave. We keep the slave open ourselves, so the master
        # never reads EIO between two opens of the driver.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.pty_path = os.ttyname(slave)
        link = Path(self.device)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(self.pty_path)
        self._state = self._fresh_state()
        self._out.clear()
        asyncio.get_running_loop().add_reader(master, self._readable)
        if not self.faults.mute:
            for urc in self.profile.boot:
                self._send(f"\r\n{urc}\r\n".encode())

    def _fresh_state(self) -> _ModemState:
        return _ModemState(
            sim_locked=self.faults.pin is not None or self.faults.puk_locked,
            puk=self.faults.puk_locked,
            cfun=4 if self.faults.flight_mode else 1,
        )

    def _close_pty(self) -> None:
        if self._master < 0:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._master)
        if self._writer_on:
            loop.remove_writer(self._master)
            self._writer_on = False
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = -1
        self._out.clear()
        with contextlib.suppress(FileNotFoundError):
            Path(self.device).unlink()

    # ------------------------------------------------------------------------ I/O

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data and self.raw_echo:
            self._send(data)  # the benchmark's floor: bytes straight back, no parsing
        elif data:
            self._rx.put_nowait(data)

    def _send(self, data: bytes) -> None:
        if self._master < 0 or not self.host_open:
            return
        self._out += data
        self._flush()

    def _flush(self) -> None:
        if self._master < 0:
            return
        while self._out:
            try:
                n = os.write(self._master, self._out)
            except BlockingIOError:
                break
            except OSError:
                self._out.clear()
                return
            del self._out[:n]
        loop = asyncio.get_running_loop()
        if self._out and not self._writer_on:
            loop.add_writer(self._master, self._flush)
            self._writer_on = True
        elif not self._out and self._writer_on:
            loop.remove_writer(self._master)
            self._writer_on = False

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds: checked whenever the simulator changes, and
        every 10 ms for conditions outside it (the driver's state)."""
        while not predicate():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.01)

    async def wait_sent(self, n: int) -> None:
        """Wait until `n` whole texts were sent."""
        await self.wait_for(lambda: len(self.sent) >= n)

    # -------------------------------------------------------------------- parsing

    async def _run(self) -> None:
        line = bytearray()
        body: bytearray | None = None
        pending: tuple[str, int | str] | None = None
        while True:
            chunk = await self._rx.get()
            if chunk is None:
                return
            if self.faults.mute or self._rebooting:
                continue
            if self._state.echo:
                self._send(chunk)
            for b in chunk:
                if body is not None and pending is not None:
                    if b == 0x1A:
                        await self._body(pending, body.decode("latin-1"))
                        body, pending = None, None
                    elif b == 0x1B:
                        body, pending = None, None
                        await self._answer([], "OK")
                    else:
                        body.append(b)
                    continue
                if b == 0x0D:
                    text = line.decode("latin-1").strip()
                    line.clear()
                    if text[:2].upper() != "AT":
                        continue  # V.250 5.2.1: characters before "AT" are ignored
                    try:
                        prompt = await self._command(text)
                    except (ValueError, IndexError, KeyError):
                        # A malformed argument (AT+CMEE=x): a modem says ERROR and lives on.
                        await self._answer([], "ERROR")
                        continue
                    if prompt is not None:
                        pending, body = prompt, bytearray()
                elif b in (0x0A, 0x1B):
                    continue
                else:
                    line.append(b)
                    if len(line) > 4096:
                        line.clear()

    async def _answer(self, lines: list[str], final: str | None = "OK") -> None:
        if self.faults.slow:
            await asyncio.sleep(self.faults.slow)
        out = bytearray()
        if self.faults.garbage:
            out += self._garbage()
        for ln in lines:
            out += b"\r\n" + ln.encode("latin-1") + b"\r\n"
            if self.faults.urc_noise and self.profile.noise:
                out += self._noise()
            if self.faults.garbage:
                out += self._garbage()
        if final is not None:
            out += b"\r\n" + final.encode() + b"\r\n"
        self._send(bytes(out))

    def _garbage(self) -> bytes:
        # Line noise as a USB-serial bridge makes it: high bytes, NULs, XOFF; on a line of
        # its own (CR/LF inside garbage would cut real lines, which no driver can undo).
        return _GARBAGE + bytes([self._rng.randrange(0x80, 0x100)]) + b"\r\n"

    def _noise(self) -> bytes:
        urc = self._rng.choice(self.profile.noise)
        return f"\r\n{urc}\r\n".encode()

    def _error(self, code: int, *, cms: bool = False) -> str:
        if cms:
            return f"+CMS ERROR: {code}"
        if self._state.cmee == 0:
            return "ERROR"
        return f"+CME ERROR: {code}"

    async def _command(self, text: str) -> tuple[str, int | str] | None:
        """Answer one command line; for AT+CMGS return what the body is for."""
        self.commands.append(text)
        if self.on_command is not None:
            self.on_command(text)
        self._notify()
        st = self._state
        cmd = text[2:]
        up = cmd.upper()
        p = self.profile
        sms_cmd = up.startswith(("+CMGF", "+CMGS", "+CMGR", "+CMGD", "+CMGL", "+CNMI", "+CSCA"))
        if (
            self.faults.stuck
            and up not in ("", "E0", "E1")
            and not up.startswith(("+CMEE", "+CFUN", "+CGMI", "+CGMM", "+CGMR", "+CGSN", "+GSN"))
        ):
            await self._answer([], self._error(0))
            return None
        if st.busy and not up.startswith("+CFUN"):
            st.busy -= 1
            await self._answer([], self._error(515))
            return None
        if st.sim_locked and sms_cmd:
            await self._answer([], self._error(12 if st.puk else 11))
            return None
        if up == "":
            await self._answer([])
        elif up in ("E0", "E1"):
            st.echo = up == "E1"
            await self._answer([])
        elif up in ("Z", "&F"):
            await self._answer([])
        elif up.startswith("+CMEE="):
            st.cmee = int(cmd[6:] or "0")
            await self._answer([])
        elif up == "+CPIN?":
            state = "SIM PUK" if st.puk else "SIM PIN" if st.sim_locked else "READY"
            await self._answer([f"+CPIN: {state}"], None if p.cpin_without_ok else "OK")
        elif up.startswith("+CPIN="):
            await self._enter_pin(cmd[6:].strip().strip('"'))
        elif up in ("+CGMI", "+GMI"):
            await self._answer([p.maker])
        elif up in ("+CGMM", "+GMM"):
            await self._answer([p.model])
        elif up in ("+CGMR", "+GMR"):
            await self._answer([p.firmware] if p.firmware else [], "OK" if p.firmware else "ERROR")
        elif up in ("+CGSN", "+GSN"):
            await self._answer([p.imei])
        elif up == "+CFUN=1,1":
            if self.faults.cfun_reset_refused:
                await self._answer([], p.unsupported)
            else:
                await self._answer([])
                self._cfun_reset()
        elif text.upper() == p.iccid_command.upper():
            await self._answer([p.iccid_answer.format(iccid=p.iccid)])
        elif up == "+CRSM=176,12258,0,0,10":
            raw = (p.iccid + "F" * (20 - len(p.iccid)))[:20]
            swapped = "".join(raw[i + 1] + raw[i] for i in range(0, 20, 2))
            await self._answer([f'+CRSM: 144,0,"{swapped}"'])
        elif up == "+COPS?":
            if self.faults.no_network or st.sim_locked:
                await self._answer(["+COPS: 0"])
            else:
                await self._answer([f'+COPS: 0,0,"{p.operator}",7'])
        elif up == "+CSQ":
            await self._answer(["+CSQ: 99,99" if self.faults.no_network else "+CSQ: 21,0"])
        elif up == "+CFUN?":
            await self._answer([f"+CFUN: {st.cfun}"])
        elif up in ("+CFUN=0", "+CFUN=1", "+CFUN=4"):
            st.cfun = int(up[-1])
            st.busy = p.busy_after_cfun if st.cfun == 1 else 0
            await self._answer([])
        elif up == "+CREG?":
            stat = 0 if st.sim_locked or st.cfun != 1 else 2 if self.faults.no_network else 1
            await self._answer([f"+CREG: {st.creg_n},{stat}"])
        elif up.startswith("+CREG="):
            st.creg_n = int(cmd[6:] or "0")
            await self._answer([])
        elif up == "+CEREG?" and p.has_cereg:
            stat = 0 if st.sim_locked or st.cfun != 1 else 2 if self.faults.no_network else 1
            await self._answer([f"+CEREG: 0,{stat}"])
        elif up.startswith("+CSCA="):
            m = re.match(r'^"(\+?[0-9]+)"(?:,\d+)?$', cmd[6:].strip())
            if not m:
                await self._answer([], self._error(304, cms=True))
            else:
                st.smsc = m.group(1)
                await self._answer([])
        elif up == "+CSCA?":
            await self._answer([f'+CSCA: "{st.smsc}",145'])
        elif up == "+CMGF=0" and self.faults.no_pdu:
            await self._answer([], self._error(303, cms=True))
        elif up in ("+CMGF=0", "+CMGF=1"):
            st.mode = int(up[-1])
            await self._answer([])
        elif up == "+CMGF?":
            await self._answer([f"+CMGF: {st.mode}"])
        elif up.startswith("+CSCS="):
            charset = self._string_arg(cmd[6:]).upper()
            if charset not in _CHARSETS or (charset == "UCS2" and self.faults.no_ucs2):
                await self._answer([], self._error(4))
            else:
                st.cscs = charset
                await self._answer([])
        elif up == "+CSCS?":
            await self._answer([f'+CSCS: "{st.cscs}"'])
        elif up == "+CSMP?":
            await self._answer(["+CSMP: " + ",".join(map(str, st.csmp))])
        elif up.startswith("+CSMP="):
            given = [x.strip() for x in cmd[6:].split(",")]
            values = [int(x) if x else old for x, old in zip(given, st.csmp, strict=False)]
            if len(given) > 4 or not all(0 <= v <= 255 for v in values):
                await self._answer([], self._error(305, cms=True))
            else:
                st.csmp = (*values, *st.csmp[len(values) :])  # type: ignore[assignment]
                if self.faults.csmp_clears_smsc:
                    st.smsc = ""
                await self._answer([])
        elif up in ("+CSDH=0", "+CSDH=1"):
            st.csdh = int(up[-1])
            await self._answer([])
        elif up.startswith("+CNMI="):
            try:
                cnmi = tuple(int(x or "0") for x in cmd[6:].split(","))
            except ValueError:
                await self._answer([], self._error(303, cms=True))
                return None
            if cnmi[3:4] == (2,) and p.report_memory is None:
                await self._answer([], self._error(303, cms=True))  # not among its <ds>
            else:
                st.cnmi = cnmi
                await self._answer([])
        elif up == "+CPMS=?":
            lists = ",".join(["(" + ",".join(f'"{m}"' for m in p.memories) + ")"] * 3)
            await self._answer([p.cpms_test or f"+CPMS: {lists}"])
        elif up.startswith("+CPMS="):
            mem = self._string_arg(cmd[6:].split(",")[0]).upper()
            if mem not in p.memories:
                await self._answer([], self._error(302, cms=True))
            else:
                st.read_mem = mem
                used = len(st.storage.setdefault(mem, {}))
                await self._answer([f"+CPMS: {used},50,{used},50,{used},50"])
        elif up.startswith("+CMGS="):
            return await self._cmgs(cmd[6:].strip())
        elif up.startswith("+CMGR="):
            await self._cmgr(cmd[6:].strip())
        elif up.startswith("+CMGL="):
            await self._cmgl(cmd[6:].strip())
        elif up.startswith("+CMGD="):
            index = cmd[6:].split(",")[0].strip()
            if self.faults.cmgd_errors > 0:
                self.faults.cmgd_errors -= 1
                await self._answer([], self._error(500, cms=True))
            elif index.isdigit():
                st.storage[st.read_mem].pop(int(index), None)
                await self._answer([])
                self._deliver_held()
            else:
                await self._answer([], self._error(321, cms=True))
        else:
            await self._answer([], p.unsupported)
        return None

    async def _enter_pin(self, pin: str) -> None:
        st = self._state
        self.pin_attempts += 1
        self._notify()
        if self.faults.pin_delay:
            await asyncio.sleep(self.faults.pin_delay)
        if self.faults.silent_after_pin:
            # the SIM counts the try; the answer never comes (a slow SIM, a reset)
            if pin != self.faults.pin:
                st.pin_tries -= 1
            self.faults.mute = True
            return
        if st.puk:
            await self._answer([], self._error(12))
        elif not st.sim_locked:
            await self._answer([], self._error(3))
        elif pin == self.faults.pin:
            st.sim_locked = False
            await self._answer([])
        else:
            st.pin_tries -= 1
            if st.pin_tries <= 0:
                st.puk = True
            await self._answer([], self._error(16))

    async def _cmgs(self, arg: str) -> tuple[str, int | str] | None:
        faults = self.faults
        if faults.vanish_after is not None and self._accepted >= faults.vanish_after:
            faults.vanish_after = None  # once; come_back() brings it back
            self.vanish()
            return None
        if self._state.mode == 0:
            if not arg.isdigit():
                await self._answer([], self._error(304, cms=True))
                return None
            target: int | str = int(arg)
        else:
            m = re.match(r'^("[^"]*")(?:,\d+)?$', arg)
            number = self._string_arg(m.group(1)) if m else ""
            if not re.fullmatch(r"\+?[0-9]+", number):
                await self._answer([], self._error(305, cms=True))
                return None
            target = number
        if faults.slow:
            await asyncio.sleep(faults.slow)
        out = b""
        if faults.urc_noise and self.profile.noise:
            out += self._noise()
        self._send(out + self.profile.prompt)
        return ("pdu" if self._state.mode == 0 else "text", target)

    async def _body(self, pending: tuple[str, int | str], body: str) -> None:
        kind, target = pending
        faults = self.faults
        self._bodies += 1
        lead: list[str] = []
        if faults.urc_noise and self.profile.noise:
            lead = [self._rng.choice(self.profile.noise) for _ in range(2)]
        if faults.no_network:
            await self._answer(lead, self._error(331, cms=True))
            return
        if faults.cms_every and self._bodies % faults.cms_every == 0:
            await self._answer(lead, self._error(faults.cms_code, cms=True))
            return
        if not self._state.smsc and (kind != "pdu" or body.startswith("00")):
            await self._answer(lead, self._error(330, cms=True))  # SMSC address unknown
            return
        if kind == "pdu":
            try:
                if tpdu_length(body) != target:
                    raise PduError("length mismatch")
                submit = decode_submit(body)
            except PduError:
                await self._answer(lead, self._error(304, cms=True))
                return
            record = PartRecord(
                number=submit.number,
                text=submit.text,
                seq=submit.concat.seq if submit.concat else 1,
                total=submit.concat.total if submit.concat else 1,
                reference=submit.concat.reference if submit.concat else None,
                message_ref=self._next_mr(),
                status_report=submit.status_report_requested,
                encoding=submit.encoding,
                pdu=body,
            )
        else:
            fo, _vp, _pid, dcs = self._state.csmp
            shown = self._text_mode_body(body, dcs)
            if shown is None:
                await self._answer(lead, self._error(305, cms=True))
                return
            record = PartRecord(
                number=str(target),
                text=shown,
                seq=1,
                total=1,
                reference=None,
                message_ref=self._next_mr(),
                status_report=bool(fo & 0x20),
                encoding="ucs2" if dcs & 0x0C == 0x08 else "gsm7",
                pdu="",
            )
        vanish = faults.vanish_after_body is not None and self._accepted >= faults.vanish_after_body
        self._record(record)
        if vanish:
            # the network has the text, the answer never comes: a module resetting on its
            # transmit current peak, or a USB stick pulled at the wrong moment
            faults.vanish_after_body = None
            self.vanish()
            return
        ref = 999 if faults.bad_message_ref else record.message_ref
        if faults.accept_delay:
            await asyncio.sleep(faults.accept_delay)
        await self._answer([*lead, f"+CMGS: {ref}"])

    def _text_mode_body(self, body: str, dcs: int) -> str | None:
        """What the phone shows for a text-mode body (27.005 3.5.1 and 3.1 <data>), or None
        when the modem refuses it (+CMS ERROR: 305): with a UCS-2 <dcs> the body is hex of
        the UTF-16-BE octets, at most 140; with GSM-7 it is text in the TE character set
        (AT+CSCS), at most 160 septets: IRA's and UCS2's characters converted to the GSM
        alphabet (what it lacks becomes "?"), GSM's bytes taken as septets (its escape,
        0x1B, never gets here: in a body it is ESC, which cancels the message)."""
        limit = self.faults.max_text_chars
        if dcs & 0x0C == 0x08:
            if not re.fullmatch(r"(?:[0-9A-Fa-f]{4})+", body) or len(body) // 2 > min(
                140, 2 * limit if limit else 140
            ):
                return None
            return bytes.fromhex(body).decode("utf-16-be", errors="replace")
        cscs = self._state.cscs
        if cscs == "UCS2":
            if not re.fullmatch(r"(?:[0-9A-Fa-f]{4})*", body):
                return None
            text = bytes.fromhex(body).decode("utf-16-be", errors="replace")
        elif cscs == "GSM":
            if any(ord(ch) > 0x7F for ch in body):
                return None
            text = gsm7.decode_septets([ord(ch) for ch in body])
        else:
            text = body
        text = "".join(ch if gsm7.septet_cost(ch) else "?" for ch in text.replace("\r", "\n"))
        if gsm7.septet_length(text) > min(160, limit or 160):
            return None
        return text

    def _next_mr(self) -> int:
        self._mr = (self._mr + 1) % 256
        return self._mr

    def _record(self, part: PartRecord) -> None:
        self.parts.append(part)
        self._accepted += 1
        if part.status_report and self.report_delay is not None:
            self._schedule_report(part.message_ref, part.number)
        if part.total == 1 or part.reference is None:
            self.sent.append(
                SentSms(
                    part.number,
                    part.text,
                    1,
                    (part.message_ref,),
                    part.status_report,
                    part.encoding,
                )
            )
        else:
            key = (part.number, part.reference, part.total)
            group = self._groups.setdefault(key, {})
            if part.seq in group:
                self.duplicates += 1
            group[part.seq] = part
            if len(group) == part.total:
                del self._groups[key]
                ordered = [group[s] for s in sorted(group)]
                self.sent.append(
                    SentSms(
                        part.number,
                        "".join(x.text for x in ordered),
                        part.total,
                        tuple(x.message_ref for x in ordered),
                        part.status_report,
                        part.encoding,
                    )
                )
        self._notify()

    async def _cmgr(self, arg: str) -> None:
        st = self._state
        box = st.storage[st.read_mem]
        if not arg.isdigit() or int(arg) not in box:
            await self._answer([], self._error(321, cms=True))
            return
        stat, pdu = box[int(arg)]
        box[int(arg)] = ("1" if stat == "0" else stat, pdu)  # REC UNREAD -> REC READ
        if st.mode == 0:
            await self._answer([f"+CMGR: {stat},,{tpdu_length(pdu)}", pdu])
            return
        head, body = self._text_view(pdu, listing=False)
        await self._answer([f'+CMGR: "{TEXT_STATS[int(stat)]}",{head}', *body])

    async def _cmgl(self, arg: str) -> None:
        """AT+CMGL: a <stat> number in PDU mode, a quoted name in text mode (27.005 3.4.2;
        the wrong kind is refused, as the python-gsmmodem transcripts show)."""
        st = self._state
        wanted = self._string_arg(arg).upper()
        if st.mode == 0:
            ok = arg.isdigit() and int(arg) <= 4
            want = {str(int(arg))} if ok and int(arg) < 4 else {"0", "1", "2", "3"}
        else:
            ok = arg.startswith('"') and (wanted == "ALL" or wanted in TEXT_STATS)
            want = (
                {"0", "1", "2", "3"}
                if wanted == "ALL"
                else {str(TEXT_STATS.index(wanted)) if wanted in TEXT_STATS else ""}
            )
        if not ok:
            await self._answer([], self._error(302, cms=True))
            return
        box = st.storage[st.read_mem]
        listing: list[str] = []
        for i in sorted(box):
            stat, pdu = box[i]
            if stat not in want:
                continue
            if st.mode == 0:
                listing += [f"+CMGL: {i},{stat},,{tpdu_length(pdu)}", pdu]
            else:
                head, body = self._text_view(pdu, listing=True)
                listing += [f'+CMGL: {i},"{TEXT_STATS[int(stat)]}",{head}', *body]
            box[i] = ("1" if stat == "0" else stat, pdu)
        await self._answer(listing)

    # ------------------------------------------------------------------ text mode

    def _text_view(self, pdu: str, *, listing: bool) -> tuple[str, list[str]]:
        """How text mode shows a stored PDU: the header fields after <stat> (or the +CMT
        header) and the text line(s) (none for a status report), in the AT+CSCS in effect."""
        st = self._state
        msg = decode_incoming(pdu)
        if isinstance(msg, StatusReport):
            return _report_fields(msg, pdu, st.cscs == "UCS2"), []
        oa = self._string(msg.sender)
        scts = _text_scts(msg.timestamp)
        body = self._text_body(msg, pdu)
        head = f'"{oa}",,"{scts}"'
        if st.csdh:
            tooa = 145 if msg.sender.startswith("+") else 129 if msg.sender.isdigit() else 208
            length = len(msg.text) if msg.encoding == "gsm7" else len(body) // 2
            if _udhi(pdu):  # hex of the whole user data: <length> is its TP-UDL
                length = _udl(pdu)
            if listing:
                head += f",{tooa},{length}"
            else:
                first = int(pdu[2 + 2 * int(pdu[:2], 16) :][:2], 16)
                dcs = 8 if msg.encoding == "ucs2" else 4 if msg.encoding == "8bit" else 0
                head += f',{tooa},{first},0,{dcs},"{self._string(st.smsc)}",145,{length}'
        return head, body.split("\n") if body else []

    def _string_arg(self, raw: str) -> str:
        """A string argument of a command, unquoted; under AT+CSCS="UCS2" it must be UCS-2
        hex, as 27.007 5.5 says and modems insist ("" otherwise, which nothing accepts)."""
        value = raw.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = value[1:-1]
        if self._state.cscs != "UCS2":
            return value
        if not re.fullmatch(r"(?:[0-9A-Fa-f]{4})*", value):
            return ""
        return bytes.fromhex(value).decode("utf-16-be", errors="replace")

    def _string(self, value: str) -> str:
        """A string field in the AT+CSCS in effect (SIM800 writes <oa> in UCS-2 hex)."""
        if self._state.cscs == "UCS2":
            return value.encode("utf-16-be").hex().upper()
        return value

    def _text_body(self, msg: Deliver, pdu: str) -> str:
        """27.005 3.1 <data>: UCS-2 and 8-bit data as hex of their octets, whatever the
        AT+CSCS (so a lone surrogate comes as it was sent); GSM-7 text in the TE
        character set: UCS-2 hex, or IRA/GSM with what ASCII lacks as "?"."""
        if _udhi(pdu):  # TP-UDHI: the whole user data, header too, in hex
            return _user_data_octets(pdu, header=True).hex().upper()
        if msg.encoding != "gsm7":
            return _user_data_octets(pdu).hex().upper()
        if self._state.cscs == "UCS2":
            return msg.text.encode("utf-16-be").hex().upper()
        return "".join(ch if ch in "\r\n" or " " <= ch <= "~" else "?" for ch in msg.text)

    # ------------------------------------------------------------------ injection

    def _store(self, mem: str, pdu: str) -> int | None:
        """Its index, or None: `mem` is full."""
        box = self._state.storage.setdefault(mem, {})
        index = next((i for i in range(1, STORE_SLOTS + 1) if i not in box), None)
        if index is None:
            return None
        box[index] = ("0", pdu)
        self._notify()
        return index

    def _deliver_held(self) -> None:
        """The network tries again what it held while SM was full (a slot was freed)."""
        while self.network_held and len(self._state.storage.get("SM", {})) < STORE_SLOTS:
            self.inject_pdu(self.network_held.popleft(), direct=False)

    def stored(self, mem: str = "SM") -> dict[int, str]:
        """What is stored in `mem` now: index -> PDU."""
        return {i: pdu for i, (_, pdu) in self._state.storage[mem].items()}

    def inject_text(
        self,
        sender: str,
        text: str,
        *,
        timestamp: datetime | None = None,
        direct: bool | None = None,
        withhold: Collection[int] = (),
    ) -> list[str]:
        """A text arrives from the network, in as many parts as it needs; see `inject_pdu`
        for `direct`. Parts numbered in `withhold` (1-based) never come. Returns every
        part's PDU, the withheld ones included (to deliver later with `inject_pdu`)."""
        when = timestamp or datetime.now(UTC).replace(microsecond=0)
        pdus = encode_deliver(sender, text, timestamp=when, reference=self._rng.randrange(256))
        for seq, pdu in enumerate(pdus, start=1):
            if seq not in withhold:
                self.inject_pdu(pdu, direct=direct)
        return pdus

    def inject_pdu(self, pdu: str, *, direct: bool | None = None) -> int | None:
        """One SMS-DELIVER (or status report) PDU arrives. Stored in SM and announced with
        +CMTI (AT+CNMI mt=1; silent with mt=0): returns its index. Or direct, as +CMT (as
        mt=2 asks, or `direct=True`, like a class 0 text): in PDU mode `+CMT: ,<length>`
        and the PDU; in text mode `+CMT: "<oa>",,"<scts>"[,...]` and the text line."""
        st = self._state
        mt = st.cnmi[1] if len(st.cnmi) > 1 else 0
        if direct is None:
            direct = mt in (2, 3)
        noise = self._noise() if self.faults.urc_noise and self.profile.noise else b""
        if not direct:
            index = self._store("SM", pdu)
            if index is None:
                # SM full: the modem refuses it and the network (the SMSC) keeps it and
                # tries again later, as networks do; here when AT+CMGD frees a slot
                self.network_held.append(pdu)
                return None
            if mt == 1:
                self._send(noise + f'\r\n+CMTI: "SM",{index}\r\n'.encode() + noise)
            return index
        if st.mode == 0:
            urc = f"+CMT: ,{tpdu_length(pdu)}\r\n{pdu}"
        else:
            head, body = self._text_view(pdu, listing=False)
            # The text as it is, line breaks and all, right after the header: a TE reads
            # <length> characters of it (AT+CSDH=1), never a line.
            urc = f"+CMT: {head}\r\n" + "\n".join(body)
        # A modem writes the header and its second line as one: noise only around them.
        self._send(noise + f"\r\n{urc}\r\n".encode("latin-1") + noise)
        self._notify()
        return None

    def _schedule_report(self, message_ref: int, recipient: str) -> None:
        """The network's report on a part, `report_delay` seconds from now."""
        assert self.report_delay is not None

        def fire() -> None:
            self._report_timers.discard(timer)
            if not self._stopped:
                self.inject_report(message_ref, recipient, status=self.report_status)

        timer = asyncio.get_running_loop().call_later(self.report_delay, fire)
        self._report_timers.add(timer)

    def inject_report(self, message_ref: int, recipient: str, *, status: int = 0) -> None:
        """A delivery report arrives: +CDS (ds=1; a line of fields in text mode) or stored
        in the profile's report memory with +CDSI (ds=2). Pushed while nobody listens
        (`host_closed`) it is lost; stored, it waits there."""
        self.reports.append((message_ref, recipient, status))
        now = datetime.now(UTC).replace(microsecond=0)
        pdu = encode_status_report(message_ref, recipient, status=status, scts=now, discharge=now)
        ds = self._state.cnmi[3] if len(self._state.cnmi) > 3 else 0
        if ds == 1 and self._state.mode == 0:
            self._send(f"\r\n+CDS: {tpdu_length(pdu)}\r\n{pdu}\r\n".encode())
        elif ds == 1:
            head, _ = self._text_view(pdu, listing=False)
            self._send(f"\r\n+CDS: {head}\r\n".encode())
        elif ds == 2:
            mem = self.profile.report_memory or "SR"
            index = self._store(mem, pdu)
            if index is not None:  # a full report store loses it (no network retries one)
                self._send(f'\r\n+CDSI: "{mem}",{index}\r\n'.encode())


TEXT_STATS = ("REC UNREAD", "REC READ", "STO UNSENT", "STO SENT")
_CHARSETS = frozenset({"IRA", "GSM", "UCS2", "8859-1", "PCCP437"})


def _text_scts(when: datetime) -> str:
    """A time stamp as text mode writes it: "yy/MM/dd,hh:mm:ss+zz" (zz: quarter hours)."""
    offset = when.utcoffset()
    quarters = int(offset.total_seconds() // 900) if offset is not None else 0
    sign = "-" if quarters < 0 else "+"
    return when.strftime("%y/%m/%d,%H:%M:%S") + f"{sign}{abs(quarters):02d}"


def _report_fields(report: StatusReport, pdu: str, ucs2: bool) -> str:
    """`<fo>,<mr>,"<ra>",<tora>,"<scts>","<dt>",<st>` of a status report."""
    first = int(pdu[2 + 2 * int(pdu[:2], 16) :][:2], 16)
    ra = report.recipient
    tora = 145 if ra.startswith("+") else 129
    if ucs2:
        ra = ra.encode("utf-16-be").hex().upper()
    return (
        f'{first},{report.message_ref},"{ra}",{tora},"{_text_scts(report.scts)}",'
        f'"{_text_scts(report.discharge)}",{report.status}'
    )


def _udhi(pdu: str) -> bool:
    """TP-UDHI of a PDU: its user data starts with a header."""
    return bool(int(pdu[2 + 2 * int(pdu[:2], 16) :][:2], 16) & 0x40)


def _udl(pdu: str) -> int:
    """TP-UDL of an SMS-DELIVER PDU."""
    raw = bytes.fromhex(pdu)
    i = 1 + raw[0] + 1
    i += 2 + (raw[i] + 1) // 2 + 2 + 7
    return raw[i]


def _user_data_octets(pdu: str, *, header: bool = False) -> bytes:
    """The user data of an SMS-DELIVER PDU without its header: what a modem shows in text
    mode, as hex, for a UCS-2 or 8-bit text (TS 23.040 9.2.2.1 field by field)."""
    raw = bytes.fromhex(pdu)
    i = 1 + raw[0]  # the SMSC field
    first = raw[i]
    i += 1
    i += 2 + (raw[i] + 1) // 2  # TP-OA: length in semi-octets, type, value
    i += 2 + 7  # TP-PID, TP-DCS, TP-SCTS
    udl = raw[i]
    data = raw[i + 1 : i + 1 + udl]
    if first & 0x40 and not header:  # TP-UDHI: skip the User Data Header
        data = data[1 + data[0] :]
    return data


@contextlib.asynccontextmanager
async def running(
    profile: str | Profile = "sim800",
    faults: Faults | None = None,
    *,
    directory: str | None = None,
    seed: int = 1,
    imei: str | None = None,
    stable_path: bool = True,
) -> AsyncIterator[Simulator]:
    """A started simulator, stopped on exit: ``sim.device``, ``sim.sent``."""
    sim = Simulator(
        profile, faults, directory=directory, seed=seed, imei=imei, stable_path=stable_path
    )
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m gsm.simulator`: run a simulated modem until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m gsm.simulator", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="sim800")
    parser.add_argument("--pin", help="the SIM asks for this PIN")
    parser.add_argument("--slow", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--cms-every", type=int, default=0, help="every Nth part fails")
    parser.add_argument("--noise", action="store_true", help="URCs inside answers")
    parser.add_argument("--garbage", action="store_true", help="garbage before answers")
    parser.add_argument("--no-network", action="store_true", help="never registered")
    parser.add_argument("--mute", action="store_true", help="answer nothing at all")
    args = parser.parse_args(argv)
    faults = Faults(
        slow=args.slow,
        cms_every=args.cms_every,
        urc_noise=args.noise,
        garbage=args.garbage,
        no_network=args.no_network,
        pin=args.pin,
        mute=args.mute,
    )

    async def run() -> None:
        # SIGTERM ends the run like Ctrl-C, so the pty and the temporary link are removed.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        async with running(args.profile, faults) as sim:
            print(f"{sim.profile.maker.strip()} {sim.profile.model.strip()} simulator")
            print(f"device: {sim.device}")
            print(f"pty:    {sim.pty_path}", flush=True)
            seen = 0
            while True:
                await sim.wait_sent(seen + 1)
                for sms in sim.sent[seen:]:
                    print(f"sent to {sms.number} ({sms.parts} part(s)): {sms.text}", flush=True)
                seen = len(sim.sent)

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
