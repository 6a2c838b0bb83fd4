"""The asyncio modem client: start-up, identity, sending, inbound texts, reconnection.

One command is in flight at a time (a lock); its waiter is registered with the parser
before the command is written; every wait has a timeout and races the loss of the link,
so nothing hangs when the modem is unplugged. Unsolicited result codes go to a worker
that reads and deletes stored texts and hands texts and delivery reports to `incoming()`.

Inbound: `set_keeper(keeper)` hands each text and delivery report to an async keeper
before its SIM slots are deleted (see `set_keeper`); without one they come out of
`incoming()`. A long text whose next part does not come within `Timeouts.part_wait` is
handed on as far as it got (`Deliver.incomplete`), by a timer. What is stored is read
again every `Timeouts.sweep`. Text mode reads stored texts in PDU mode (AT+CMGF=0 around
each read), so a caller's text is never parsed as modem lines; a modem refusing that is
read in text mode, in UCS-2 hex where it can. A direct text-mode +CMT is taken as exactly
its <length> characters (AT+CSDH=1), never as a line.

Life cycle: `start()` opens the port and initialises the modem (AT until it answers,
ATE0, AT+CMEE=1, AT+CPIN?, registration, AT+CSCA, AT+CMGF, AT+CNMI). When the device
goes away later, sends fail at once with a retryable `ModemGone`, and a background task
reopens the same path (a /dev/serial/by-id link follows the stick to its new ttyUSBn)
with capped exponential backoff and initialises it again. A SIM problem (wrong PIN,
PUK) stops everything: it needs a person, and retrying a PIN would lock the SIM.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Literal, Protocol

from gsm import commands as C
from gsm.at import AtParser, Expect, Noise, Prompt, Response, Urc, cmt_text_length
from gsm.errors import (
    AtTimeout,
    CmeError,
    CmsError,
    CommandError,
    GsmError,
    ImeiAmbiguous,
    LostAfterBody,
    ModemFailed,
    ModemGone,
    NotRegistered,
    PinError,
    ProtocolError,
    SendUncertain,
    SimError,
    UnclearAfterBody,
    UnsupportedText,
)
from gsm.finder import DEFAULT_PORTS, find_by_imei, imei_of_device
from gsm.inbound import Assembler, Inbound, Ready, Slot
from gsm.pdu import (
    Deliver,
    PduError,
    StatusReport,
    SubmitPart,
    decode_incoming,
    encode_submit,
    sms_info,
    validity_octet,
)
from gsm.textmode import PLAIN_CHARS, TextModePart, split_text_mode
from gsm.transport import SerialLink

log = logging.getLogger(__name__)

Keeper = Callable[[Inbound], Awaitable[bool]]
#: Awaited before each read of what is stored on the SIM (see `set_read_gate`).
ReadGate = Callable[[], Awaitable[None]]
"""Stores an inbound item for good: True once its SIM slots may be deleted (set_keeper)."""

Reports = Literal["auto", "stored", "direct"]
"""How delivery reports reach us (AT+CNMI <ds>, 27.005 3.4.1): "stored" (ds=2) keeps them
in the modem's memory with +CDSI, so those that come while nobody listens (the daemon
down or restarting) are read at the next start; "direct" (ds=1) pushes them as +CDS,
lost when nobody listens; "auto" stores them where AT+CPMS=? offers the status-report
memory "SR" (a modem storing reports where they cannot be read loses them: Huawei's
MU509 manual says so of +CDSI), else pushes them."""

ESC = b"\x1b"
CTRL_Z = b"\x1a"


class SmsSender(Protocol):
    """What the outbox needs from a modem."""

    @property
    def ready(self) -> bool:
        """True when a send can be tried now."""
        ...

    async def send_sms(self, number: str, text: str, *, status_report: bool = True) -> list[int]:
        """Send `text` to `number`; the message reference of every part."""
        ...


_PIN_UNKNOWN = (
    "no answer to the PIN entry; not retrying: the attempt may have counted"
    " (three wrong PINs lock the SIM); check the SIM in a phone, then restart"
)
#: How long (scaled by Timeouts.scale) to look at the SIM after the PIN went out.
_PIN_SETTLE = 10.0
#: Seconds a long text waits for its next part before it is handed on incomplete. Parts
#: come seconds apart; a minute leaves room for a slow network and still answers soon.
PART_WAIT = 60.0
#: Seconds between reads of everything stored: refused texts are offered again so often.
SWEEP_INTERVAL = 300.0
#: Direct (+CMT) items a keeper refused, held in memory for another try; more are dropped.
_MAX_UNKEPT = 256
#: Failures in a row that call for the next step of the recovery ladder.
STUCK_AFTER = 3
#: +CME ERROR codes of a module that is stuck (27.007 9.2.1): "phone failure", "no
#: connection to phone", "phone-adaptor link reserved". A reset may cure them; SIM and
#: network errors (10-16, 30-32) it would not.
STUCK_CME = frozenset({0, 1, 2})
#: AT+CFUN=1,1 resets (27.007 8.2 <rst> 1: reset the MT before setting <fun>) tried
#: without a working send or health check in between before the modem is given up.
MAX_RESETS = 2


class ModemState(enum.StrEnum):
    """Where the modem is in its life cycle (shown in STATUS lines)."""

    CLOSED = "closed"
    STARTING = "starting"
    READY = "ready"
    RECONNECTING = "reconnecting"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Every wait of the driver, in seconds. Tests pass small values."""

    command: float = C.DEFAULT_TIMEOUT
    """Commands without a longer time of their own."""
    probe: float = 1.0
    """One bare AT while waiting for the modem to answer at start-up."""
    startup: float = 30.0
    """Give up when the modem has not answered AT for this long (a USB stick boots in ~10 s)."""
    prompt: float = C.CMGS_PROMPT_TIMEOUT
    """The `> ` prompt after AT+CMGS."""
    send: float = C.CMGS.timeout
    """+CMGS after the message body: the network may take up to a minute."""
    registration: float = 60.0
    """Wait this long for network registration at start-up."""
    poll: float = 2.0
    """Between registration (and SIM busy) polls."""
    reopen_initial: float = 1.0
    """First wait before reopening a vanished device; doubles each failure."""
    reopen_max: float = 60.0
    """Longest wait between reopen attempts."""
    health_interval: float = 60.0
    """A health check (CSQ, CREG) this often; 0 turns it off."""
    part_wait: float = PART_WAIT
    """A long text whose next part has not come this long after its latest one is handed
    on as far as it got, marked incomplete."""
    sweep: float = SWEEP_INTERVAL
    """Read what is stored this often (texts a keeper refused, a lost +CMTI); 0 turns it
    off (the sweeps at start and after a reopen still run)."""
    scale: float = 1.0
    """Multiplies the commands' own longer timeouts (commands.py: AT+CPIN, AT+CMGL, ...)."""
    reset_settle: float = 5.0
    """After AT+CFUN=1,1: wait up to this long for a USB modem's port to leave (a module on
    a UART keeps its port; it is reopened after this wait). A USB module drops off the
    bus within a second or two of the OK."""
    rescan: float = 10.0
    """Longest wait between reopen attempts of a modem named by IMEI and after a reset:
    a port that re-enumerates (in 5-20 s) is found again within 30 s."""


@dataclass(frozen=True, slots=True)
class ModemInfo:
    """What `probe()` found out. Fields the modem would not tell are None."""

    device: str
    maker: str | None
    model: str | None
    firmware: str | None
    imei: str | None
    iccid: str | None
    operator: str | None
    rssi: int | None
    """AT+CSQ <rssi> (0..31, 99 unknown)."""
    dbm: int | None
    registration: int | None
    """+CREG <stat>: 1 home, 5 roaming (see commands.REG_STATES)."""
    registration_text: str
    mode: str
    """"pdu" or "text": how texts are sent."""
    inbound: bool
    """Inbound texts and delivery reports are indicated (AT+CNMI accepted)."""
    reports: str = "off"
    """How delivery reports come: "stored" (+CDSI), "direct" (+CDS) or "off"."""


class _Lost:
    """Put in the reply queue when the link goes away: the waiting command fails."""

    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc


@dataclass(slots=True)
class _Progress:
    parts: list[SubmitPart] | list[TextModePart]
    refs: list[int]


@dataclass(frozen=True, slots=True)
class _Read:
    """Read one stored message (+CMTI, +CDSI)."""

    slot: Slot


@dataclass(frozen=True, slots=True)
class _Sweep:
    """Read everything stored (after start and reopen, and every Timeouts.sweep)."""


@dataclass(frozen=True, slots=True)
class _Delete:
    """Delete what a keeper kept."""

    slots: tuple[Slot, ...]


_SimOp = _Read | _Sweep | _Delete


@dataclass(frozen=True, slots=True)
class _Stored:
    """One stored message as read: `message` None when it cannot be read (`problem`
    says why) or is not an inbound one (a stored outgoing message)."""

    slot: Slot
    message: Inbound | None
    raw: str
    problem: str | None = None
    warnings: tuple[str, ...] = ()

    @classmethod
    def of_pdu(cls, slot: Slot, pdu: str) -> _Stored:
        try:
            return cls(slot, decode_incoming(pdu), pdu)
        except PduError as exc:
            return cls(slot, None, pdu, str(exc))

    @classmethod
    def of_text(cls, slot: Slot, read: C.TextRead, raw: str) -> _Stored:
        return cls(slot, read.message, raw, read.error, read.warnings)


# How many half-sent multipart texts we remember, to resume them without repeating parts.
_MAX_PARTIAL = 64


def text_mode_safe(text: str) -> bool:
    """Does `text` go out in text mode (AT+CMGF=1) as one plain text, as it is? Only a
    single GSM-7 part whose characters read the same in the modem's IRA and GSM character
    sets (gsm.textmode.PLAIN_CHARS). Every other text goes out too, as UCS-2 and/or as
    separate numbered texts (gsm.textmode)."""
    if not text or any(ch not in PLAIN_CHARS for ch in text):
        return False
    info = sms_info(text)
    return info.encoding == "gsm7" and info.parts == 1


# AT+CSMP <fo> (27.005 3.3.2, TS 23.040 9.2.3): SMS-SUBMIT (0x01) with a relative validity
# period (TP-VPF 0x10) is 17, the default of the SIM800 manual and of Fibocom's G510;
# TP-SRR (0x20) asks for a delivery report: 49, as the Nokia N79 answers AT+CSMP?
# (tests/data/modem/nokian79.json: "+CSMP: 49,167,0,0"). <vp> 167 is 24 hours.
CSMP_FO = 17
CSMP_FO_REPORT = 0x20
CSMP_VP = 167


class Modem:
    """A GSM modem on a serial port. See the module docstring for the life cycle.

    `pin` is entered once if the SIM asks; `smsc` ("+digits") is set with AT+CSCA;
    `mode` "text" sends in text mode (single plain GSM-7 texts only); `reconnect`
    reopens a vanished device; `require_network` False lets `start()` finish without
    registration (for probing).
    """

    def __init__(
        self,
        device: str,
        *,
        baudrate: int = 115200,
        pin: str | None = None,
        smsc: str | None = None,
        mode: Literal["pdu", "text"] = "pdu",
        timeouts: Timeouts | None = None,
        validity_minutes: int | None = None,
        reconnect: bool = True,
        require_network: bool = True,
        reports: Reports = "auto",
        ports: tuple[str, ...] = DEFAULT_PORTS,
        max_resets: int = MAX_RESETS,
    ) -> None:
        self._want_imei = imei_of_device(device)
        """Set for a device "imei:<IMEI>": the port is looked up at every open."""
        self._ports = ports
        self.device = device
        """The port in use (for "imei:..." the path last found; the setting until then)."""
        self.spec = device
        """The device as configured: a path or "imei:<IMEI>"."""
        self._max_resets = max_resets
        if reports not in ("auto", "stored", "direct"):
            raise ValueError(f"reports: {reports!r} is not auto, stored or direct")
        self._reports: Reports = reports
        self.report_routing = "off"
        """How delivery reports come since start-up: "stored" (AT+CNMI ds=2, +CDSI),
        "direct" (ds=1, +CDS) or "off" (no AT+CNMI, or one without reports)."""
        self._report_mems: set[str] = set()
        """Memories other than SM that stored reports are read from (sweeps)."""
        self._require_network = require_network
        self.baudrate = baudrate
        self._pin = C.check_pin(pin) if pin else None
        self._smsc = C.check_number(smsc) if smsc else None
        self._want_mode: Literal["pdu", "text"] = mode
        self._mode: Literal["pdu", "text"] = mode
        self.t = timeouts or Timeouts()
        self._validity = validity_minutes
        self._reconnect = reconnect
        self._parser = AtParser()
        self._lock = asyncio.Lock()
        self._replies: asyncio.Queue[Response | Prompt | _Lost] = asyncio.Queue()
        self._link: SerialLink | None = None
        self._state = ModemState.CLOSED
        self._ready = asyncio.Event()
        self._fatal: GsmError | None = None
        self._closing = False
        self._started = False
        self._dirty = False
        self._timeouts_in_row = 0
        self._pin_unconfirmed = False
        """The PIN went out and the SIM never said READY: never write it again."""
        self._quirks = C.GENERIC
        self._maker: str | None = None
        self._inbound_on = False
        self._read_mem = "SM"
        self._inbox: asyncio.Queue[Inbound | None] = asyncio.Queue()
        self._ops: asyncio.Queue[_SimOp] = asyncio.Queue()
        self._sweep_queued = False
        self._keeper: Keeper | None = None
        self._read_gate: ReadGate | None = None
        self._keeping: asyncio.Queue[Ready] = asyncio.Queue()
        self._assembler = Assembler(wait=self.t.part_wait)
        self._part_timer: asyncio.TimerHandle | None = None
        self._claimed: dict[Slot, str] = {}
        """Read under a keeper and not deleted: never read again while it is kept. The
        value is what the slot held (its raw PDU), to tell it from a new text later."""
        self._undeleted: dict[Slot, str] = {}
        """Kept, but the delete failed: what each slot held then. A sweep (or a +CMTI)
        deletes the slot only while it still holds the same; anything else in it is a
        new text that landed in the slot after all (the SIM did let go), read as such."""
        self._unreadable: set[Slot] = set()
        """Unreadable under a keeper: left on the SIM, not read again this run."""
        self._unkept: deque[Inbound] = deque()
        self._refusals = 0
        self._charset: str | None = None
        """Text mode: the AT+CSCS in effect ("IRA", "UCS2"; None: the modem's own)."""
        self._csmp: tuple[int, int, int, int] | None = None
        """Text mode: the AT+CSMP in effect (None: not known, set before the next send)."""
        self._csmp_ok = True
        """The modem takes AT+CSMP (without it, plain texts go out with its own)."""
        self._smsc_known: str | None = self._smsc
        """The SMS centre the modem had (AT+CSCA?) or was given: put back when AT+CSMP
        empties it (Qualcomm M6280, ZTE K3565-Z)."""
        self._ucs2_ok = True
        self._pdu_reads_ok = True
        """Text mode: the modem takes AT+CMGF=0 for reading stored messages."""
        self._in_pdu = False
        """Text mode: AT+CMGF=0 is in effect (a read's switch back failed)."""
        self._closed = asyncio.Event()
        self._partial: OrderedDict[tuple[str, str, bool, str], _Progress] = OrderedDict()
        self._concat_ref = random.randrange(256)
        self._reconnect_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.registration: int | None = None
        self.rssi: int | None = None
        self.noise = 0
        """Bytes/lines that were nobody's answer (garbage, stray lines), counted."""
        self.reconnects = 0
        self.recovery: dict[str, int] = {"resync": 0, "reopen": 0, "reset": 0}
        """Steps of the recovery ladder taken, by name, since the Modem was made."""
        self._failures = 0
        """Sends and health checks that failed in a row the way a stuck module fails."""
        self._rung = 0
        """Recovery steps (reopen, resets) taken since the last working send or health
        check: the next one climbs higher."""
        self._resets_since_ok = 0

    # ------------------------------------------------------------------ properties

    @property
    def state(self) -> ModemState:
        """The life-cycle state."""
        return self._state

    @property
    def ready(self) -> bool:
        """True when a send can be tried now."""
        return self._state is ModemState.READY

    @property
    def mode(self) -> str:
        """ "pdu" or "text" (after a fallback)."""
        return self._mode

    @property
    def fatal(self) -> GsmError | None:
        """The error that stopped the modem for good (FAILED), if any."""
        return self._fatal

    # ------------------------------------------------------------------ life cycle

    async def __aenter__(self) -> Modem:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the device and initialise the modem; raise a GsmError if it cannot."""
        if self._started:
            raise RuntimeError("Modem.start() called twice")
        self._closing = False
        self._state = ModemState.STARTING
        try:
            await self._open()
            async with self._lock:
                await self._initialise()
        except BaseException as exc:
            await self._drop_link()
            self._state = ModemState.FAILED
            if isinstance(exc, GsmError):
                self._fatal = exc
            raise
        self._started = True
        self._set_ready()
        self._queue_sweep()
        self._spawn(self._inbound_worker())
        self._spawn(self._keep_worker())
        if self.t.sweep > 0:
            self._spawn(self._sweep_loop())
        if self.t.health_interval > 0:
            self._spawn(self._health_loop())

    async def close(self) -> None:
        """Stop background work and close the port. Safe to call twice."""
        self._closing = True
        self._closed.set()
        if self._part_timer is not None:
            self._part_timer.cancel()
            self._part_timer = None
        tasks = list(self._tasks)
        if self._reconnect_task is not None:
            tasks.append(self._reconnect_task)
        for task in tasks:
            task.cancel()
        # a caller cancelled while this waits is cancelled (suppress would swallow it)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._reconnect_task = None
        await self._drop_link()
        self._state = ModemState.CLOSED
        self._ready.clear()
        self._inbox.put_nowait(None)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the modem is READY; raise its fatal error if it FAILED."""
        async with asyncio.timeout(timeout):
            while not self.ready:
                if self._state is ModemState.FAILED and self._fatal is not None:
                    raise self._fatal
                if self._state is ModemState.CLOSED:
                    raise ModemGone(f"{self.device}: closed")
                await self._ready.wait()

    def _set_ready(self) -> None:
        self._state = ModemState.READY
        self._ready.set()

    def _set_failed(self, exc: GsmError) -> None:
        self._fatal = exc
        self._state = ModemState.FAILED
        # Wake wait_ready() so it can raise the error.
        self._ready.set()
        self._ready.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("modem background task died", exc_info=task.exception())

    async def _open(self, *, resolve: bool = True) -> None:
        """Open the port; for a modem named by IMEI, look it up first (`resolve`) unless
        it is to be the port found last."""
        self._parser.reset()
        self._drain()
        if self._want_imei is not None and (resolve or self.device == self.spec):
            self.device = await find_by_imei(self._want_imei, self._ports, baudrate=self.baudrate)
        opened: list[SerialLink] = []  # the loss callback must know which link it was
        link = await SerialLink.open(
            self.device,
            self.baudrate,
            self._on_data,
            lambda exc: self._on_lost(opened[0], exc),
        )
        opened.append(link)
        self._link = link
        self._dirty = False
        self._timeouts_in_row = 0
        log.debug("opened %s at %d baud", self.device, self.baudrate)

    async def _drop_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()
        self._replies.put_nowait(_Lost(None))

    def _on_lost(self, link: SerialLink, exc: Exception | None) -> None:
        if link is not self._link:
            return  # one we closed ourselves
        self._link = None
        self._replies.put_nowait(_Lost(exc))
        if self._closing or not self._started:
            return
        log.warning("modem %s went away: %s", self.device, exc or "closed")
        self._begin_reconnect()

    def _begin_reconnect(self) -> None:
        if self._state is ModemState.FAILED:
            return
        if not self._reconnect:
            self._set_failed(ModemGone(f"{self.device}: gone (reconnect is off)"))
            return
        self._state = ModemState.RECONNECTING
        self._ready.clear()
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self, reset: str | None = None) -> None:
        """Reopen the device until it works again. `reset`: why the module is reset
        first (AT+CFUN=1,1). A port that opens while the module in it does not work (no
        answer to AT, a stuck +CME ERROR, garbled answers) is reset, up to `max_resets`
        times without a working send or health check in between; then the modem is given
        up (FAILED, ModemFailed). A missing port is waited for without end (unplugged:
        a person may plug it in again)."""
        delay = self.t.reopen_initial
        attempt = 0
        after_reset = False
        while not self._closing:
            if reset is not None:
                if self._resets_since_ok >= self._max_resets:
                    self._give_up(reset)
                    return
                await self._reset_module(reset)
                reset = None
                after_reset = True
                delay = self.t.reopen_initial
            await asyncio.sleep(delay)
            attempt += 1
            opened = False
            try:
                await self._open()
                opened = True
                async with self._lock:
                    await self._initialise()
            except (PinError, SimError, ImeiAmbiguous) as exc:
                await self._drop_link()
                log.error("modem %s: %s; not retrying", self.device, exc)
                self._set_failed(exc)
                return
            except GsmError as exc:
                await self._drop_link()
                if opened and _stuck(exc):
                    reset = f"the port opens but the modem does not work: {exc}"
                    continue
                level = logging.WARNING if attempt == 1 else logging.DEBUG
                log.log(level, "modem %s: reopen attempt %d failed: %s", self.device, attempt, exc)
                cap = self.t.reopen_max
                if self._want_imei is not None or after_reset:
                    cap = min(cap, self.t.rescan)
                delay = min(delay * 2, cap)
                continue
            except Exception:  # a bug must not end the reconnecting for good
                await self._drop_link()
                log.exception(
                    "modem %s: reopen attempt %d failed unexpectedly", self.device, attempt
                )
                delay = min(delay * 2, self.t.reopen_max)
                continue
            self.reconnects += 1
            log.warning("modem %s is back after %d attempt(s)", self.device, attempt)
            self._set_ready()
            self._queue_sweep()
            return

    async def _reset_module(self, why: str) -> None:
        """Recovery step "reset": AT+CFUN=1,1 on a freshly opened port (whatever it
        answers), the port closed, then wait for a USB module's port to leave the bus
        (`Timeouts.reset_settle`); the reconnect loop then reopens it where it comes back
        (the same path, a by-id link that follows it, or another ttyUSBn found by IMEI)."""
        self._resets_since_ok += 1
        self._rung += 1
        self.recovery["reset"] += 1
        log.warning(
            "modem %s recovery: reset %d of %d (AT+CFUN=1,1): %s",
            self.device,
            self._resets_since_ok,
            self._max_resets,
            why,
        )
        try:
            await self._open(resolve=False)  # the port it was on: a stuck one may not say
            async with self._lock:
                self._write(ESC)  # a body half-written is cancelled, not sent
                await self._cmd(C.CFUN.line("1,1"), timeout=self._slow(C.CFUN), resync=False)
        except GsmError as exc:
            log.warning("modem %s: AT+CFUN=1,1 not confirmed (%s)", self.device, exc)
        finally:
            await self._drop_link()
        path = self.device
        for _ in range(max(1, round(self.t.reset_settle / max(self.t.poll, 1e-3)))):
            if not await asyncio.to_thread(os.path.exists, path):
                break  # gone: it re-enumerates (the reconnect loop waits for it)
            await asyncio.sleep(self.t.poll)

    def _give_up(self, why: str) -> None:
        """Recovery step "failed": the ladder is at its top."""
        exc = ModemFailed(
            f"{self.device}: not working after {self._resets_since_ok} reset(s)"
            f" (AT+CFUN=1,1); last: {why}"
        )
        log.error("modem %s recovery: failed: %s; giving up", self.device, exc)
        self._set_failed(exc)

    async def _force_reconnect(self, why: str) -> None:
        """Climb the recovery ladder: reopen the port the first time; reset the module
        (AT+CFUN=1,1) when a reopen since the last working send or health check did not
        help."""
        link = self._link
        if link is None or self._state is not ModemState.READY:
            return
        self._failures = 0
        self._rung += 1
        self._link = None
        self._replies.put_nowait(_Lost(None))
        await link.close()
        if not self._reconnect:
            self._set_failed(ModemGone(f"{self.device}: {why} (reconnect is off)"))
            return
        self._state = ModemState.RECONNECTING
        self._ready.clear()
        if self._rung == 1:
            self.recovery["reopen"] += 1
            log.warning("modem %s recovery: reopen: %s", self.device, why)
            reset = None
        else:
            reset = f"{why}, again after a reopen"
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(
                self._reconnect_loop(reset)
            )

    def _worked(self) -> None:
        """A send or health check worked: the ladder starts again at the bottom."""
        self._failures = 0
        self._rung = 0
        self._resets_since_ok = 0

    def _failed(self, exc: BaseException) -> None:
        """A send or health check failed: STUCK_AFTER stuck failures in a row climb."""
        if not _stuck(exc):
            return
        self._failures += 1
        if self._failures >= STUCK_AFTER and self._state is ModemState.READY:
            self._spawn(self._force_reconnect(f"{self._failures} failures in a row: {exc}"))

    # -------------------------------------------------------------- byte handling

    def _on_data(self, data: bytes) -> None:
        try:
            events = self._parser.feed(data)
        except Exception:  # a parser bug must not kill the reader (zigpy-znp's rule)
            log.exception("AT parser failed on %r", data[:80])
            self._parser.reset()
            return
        for ev in events:
            if isinstance(ev, Response | Prompt):
                self._replies.put_nowait(ev)
            elif isinstance(ev, Urc):
                self._on_urc(ev)
            elif isinstance(ev, Noise):
                self.noise += 1
                log.debug("modem noise (%s): %r", ev.reason, ev.data)

    def _drain(self) -> None:
        while not self._replies.empty():
            self._replies.get_nowait()

    def _write(self, data: bytes, *, secret: bool = False) -> None:
        link = self._link
        if link is None:
            raise ModemGone(f"{self.device}: not open")
        link.write(data, secret=secret)

    async def _next_reply(self, command: str, timeout: float) -> Response | Prompt:
        try:
            async with asyncio.timeout(timeout):
                item = await self._replies.get()
        except TimeoutError:
            self._parser.cancel()
            self._dirty = True
            self._timeouts_in_row += 1
            raise AtTimeout(command, timeout) from None
        if isinstance(item, _Lost):
            self._parser.cancel()
            raise ModemGone(f"{self.device}: went away during {command}: {item.exc or 'closed'}")
        self._timeouts_in_row = 0
        return item

    def _slow(self, command: C.Command) -> float:
        """A command's own (longer) timeout, scaled; never below the general one."""
        return max(command.timeout * self.t.scale, self.t.command)

    async def _cmd(
        self,
        line: str,
        *,
        prefix: str | None = None,
        timeout: float | None = None,
        check: bool = True,
        done_on_prefix: bool = False,
        secret: bool = False,
        resync: bool = True,
    ) -> Response:
        """Run one command (the lock must be held) and return its whole answer."""
        if not line.isascii() or any(ch in line for ch in "\r\n\x1a\x1b"):
            raise ValueError(f"refusing to write a command with control bytes: {line!r}")
        if self._dirty and resync:
            await self._resync()
        self._drain()
        self._parser.expect(Expect(line, prefix, done_on_prefix=done_on_prefix))
        self._write(line.encode("ascii") + b"\r", secret=secret)
        name = "AT+CPIN=<pin>" if secret else line  # the PIN never reaches a message
        reply = await self._next_reply(name, timeout or self.t.command)
        if isinstance(reply, Prompt):
            self._write(ESC)
            raise ProtocolError(f"{name}: unexpected '> ' prompt")
        if check:
            reply.raise_for_error(name)
        return reply

    async def _resync(self, *, step: bool = True) -> None:
        """After a timeout a late answer may still come: AT+CSQ with a stale guard
        skips every final code that arrives before its own +CSQ line."""
        self._drain()
        self._parser.expect(Expect(C.CSQ.line(), C.CSQ.prefix, stale_guard=True))
        self._write(C.CSQ.line().encode("ascii") + b"\r")
        if step:  # the first step of the recovery ladder (not the routine one at start-up)
            self.recovery["resync"] += 1
            log.info("modem %s recovery: resync (a command went unanswered)", self.device)
        try:
            reply = await self._next_reply("AT+CSQ (resync)", self.t.command)
        except AtTimeout:
            if self._timeouts_in_row >= STUCK_AFTER and self._state is ModemState.READY:
                self._spawn(self._force_reconnect("no answer to three commands in a row"))
            raise
        if isinstance(reply, Response):
            self._dirty = False

    async def command(
        self, line: str, *, prefix: str | None = None, timeout: float | None = None
    ) -> Response:
        """Run one AT command now (for tools and health checks); raise on its error."""
        async with self._lock:
            return await self._cmd(line, prefix=prefix, timeout=timeout)

    # -------------------------------------------------------------- start-up steps

    async def _initialise(self) -> None:
        # A predecessor that died at the "> " prompt leaves the modem waiting for a body:
        # ESC cancels it (27.005 3.5.1) and is ignored in command state.
        self._write(ESC)
        await self._wait_for_at()
        await self._cmd(C.ECHO_OFF.line())
        try:
            await self._cmd(C.CMEE.line("1"))
        except CommandError as exc:
            log.info("modem refuses AT+CMEE=1 (%s); errors will be plain ERROR", exc)
        self._maker = await self._optional(C.CGMI.line(), None)
        self._quirks = C.quirks_for(self._maker)
        await self._unlock_sim()
        await self._radio_on()
        if self._require_network:
            await self._wait_registered()
        else:
            await self._registration_state()
        if self._smsc:
            await self._cmd(C.CSCA.line(f'"{self._smsc}",145'), timeout=self._slow(C.CSCA))
        await self._set_mode()
        self._inbound_on = False
        self.report_routing = "off"
        self._report_mems = set()
        self._read_mem = "SM"
        if self._quirks.cnmi:
            await self._indications(self._quirks.cnmi)

    async def _indications(self, cnmi: str) -> None:
        """AT+CNMI with the best <ds> the modem takes: stored reports (2) where `reports`
        allows and the modem has a memory to read them from, else pushed ones (1), else
        none (0: inbound texts are still indicated)."""
        tries = [1, 0]
        if self._reports != "direct":
            listed = await self._memories()
            if self._reports == "stored" or "SR" in listed:
                tries.insert(0, 2)
            if "SR" in listed:
                self._report_mems.add("SR")
        for ds in tries:
            line = C.cnmi_with_ds(cnmi, ds)
            try:
                await self._cmd(line)
            except CommandError as exc:
                log.info("modem refuses %s (%s)", line, exc)
                continue
            self._inbound_on = True
            self.report_routing = {2: "stored", 1: "direct"}.get(ds, "off")
            break
        else:
            log.warning("modem refuses AT+CNMI (%s): no inbound texts", cnmi)
            return
        if self.report_routing != "stored":
            self._report_mems.clear()
            if self._reports == "stored":
                log.warning("modem cannot store delivery reports: %s", self.report_routing)
        elif self._report_mems:
            # The memory read last may still be selected from before (a predecessor killed
            # while it read "SR"): say which one reads go to.
            with contextlib.suppress(CommandError):
                await self._cmd(C.CPMS.line('"SM"'), prefix=C.CPMS.prefix)

    async def _memories(self) -> tuple[str, ...]:
        """AT+CPMS=?: the memories messages can be read from (empty if it will not say)."""
        try:
            reply = await self._cmd(C.CPMS.line("?"), prefix=C.CPMS.prefix)
            values = reply.values("+CPMS:")
            return C.parse_cpms_memories(values[0]) if values else ()
        except (CommandError, ProtocolError) as exc:
            log.debug("AT+CPMS=? not answered (%s)", exc)
            return ()

    async def _wait_for_at(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.t.startup
        while True:
            try:
                await self._cmd("AT", timeout=self.t.probe, resync=False)
                break
            except CommandError:
                break  # it answered (ofono's phonesim says ERROR to a bare AT)
            except AtTimeout:
                if loop.time() >= deadline:
                    raise AtTimeout("AT", self.t.startup) from None
        # Late OKs of unanswered ATs, or the OK a modem gives for the ESC that left a
        # prompt, may still be on their way: resynchronise before the real work.
        await self._resync(step=False)

    async def _unlock_sim(self) -> None:
        for _ in range(30):
            state = await self._sim_state()
            if state is None:  # SIM busy, just after boot
                await asyncio.sleep(self.t.poll)
                continue
            if state == "READY":
                self._pin_unconfirmed = False
                return
            if state == "SIM PIN":
                await self._enter_pin()
                return
            if "PUK" in state:
                raise PinError(f"the SIM is locked ({state}): unlock it in a phone")
            raise PinError(f"the SIM asks for {state}, which textback cannot give")
        raise SimError("the SIM stayed busy")

    async def _sim_state(self) -> str | None:
        """AT+CPIN?: the SIM's state, or None while the SIM is busy."""
        try:
            reply = await self._cmd(
                C.CPIN.line() + "?",
                prefix=C.CPIN.prefix,
                timeout=self._slow(C.CPIN),
                done_on_prefix=self._quirks.cpin_without_ok,
            )
        except CmeError as exc:
            if exc.code in (14, 515):  # SIM busy, just after boot or PIN entry
                return None
            if exc.code in (10, 13, 15):
                raise SimError(f"SIM problem: {exc.meaning}") from exc
            if exc.code == 12:
                raise PinError("the SIM is PUK-locked: unlock it in a phone") from exc
            raise
        return C.parse_cpin(C.one_value(reply.values("+CPIN:"), "AT+CPIN?"))

    async def _enter_pin(self) -> None:
        """Write the PIN once, then look (AT+CPIN?) until the SIM is READY.

        Three wrong PINs lock the SIM, so the PIN is written at most once per Modem
        unless the SIM confirmed it (READY): a refusal, or no clear answer within a
        bounded time, is a PinError, which nobody retries without a person.
        """
        if not self._pin:
            raise PinError("the SIM asks for a PIN: set [modem] pin")
        if self._pin_unconfirmed:
            # an earlier entry by this Modem was never confirmed: it may have counted
            raise PinError(_PIN_UNKNOWN)
        self._pin_unconfirmed = True
        try:
            await self._cmd(C.CPIN.line(f'"{self._pin}"'), timeout=self._slow(C.CPIN), secret=True)
        except CommandError as exc:
            raise PinError(
                f"the SIM refused the PIN ({exc}); not retrying: three wrong PINs lock the SIM"
            ) from exc
        except GsmError as exc:
            # No clear answer (slow SIM, reset, garbled line): the try may have counted.
            # Look below, but never write the PIN again, here or in a new Modem.
            log.warning(
                "modem %s: no clear answer to the PIN entry (%s); looking", self.device, exc
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(_PIN_SETTLE * self.t.scale, 3 * self.t.poll)
        while True:
            state: str | None = None
            try:
                state = await self._sim_state()
            except PinError:
                raise
            except ModemGone as exc:
                raise PinError(_PIN_UNKNOWN) from exc
            except GsmError as exc:  # a slow answer, a late reply in the way: look again
                log.debug("modem %s: AT+CPIN? after the PIN: %s", self.device, exc)
            if state == "READY":
                self._pin_unconfirmed = False
                return
            if state is not None and "PUK" in state:
                raise PinError(f"the SIM is locked ({state}): unlock it in a phone")
            if loop.time() >= deadline:
                raise PinError(f"{_PIN_UNKNOWN} (the SIM says {state or 'nothing clear'})")
            await asyncio.sleep(self.t.poll)

    async def _registration_state(self) -> int:
        reply = await self._cmd(C.CREG.line() + "?", prefix=C.CREG.prefix)
        stat = C.parse_creg(C.one_value(reply.values("+CREG:"), "AT+CREG?"))
        if stat not in C.REGISTERED:
            # LTE-only modems (EC25 on LTE) register on EPS while +CREG says 0.
            try:
                eps = await self._cmd(C.CEREG.line() + "?", prefix=C.CEREG.prefix)
                values = eps.values("+CEREG:")
                if values and C.parse_creg(values[0]) in C.REGISTERED:
                    stat = C.parse_creg(values[0])
            except (CommandError, ProtocolError):
                pass
        self.registration = stat
        return stat

    async def _radio_on(self) -> None:
        """Leave flight mode: a modem at AT+CFUN=0 or 4 never registers (ofono's phonesim
        starts at 4, tests/data/modem/ofono-phonesim.json)."""
        try:
            reply = await self._cmd(C.CFUN.line() + "?", prefix=C.CFUN.prefix)
        except (CommandError, ProtocolError):
            return
        value = (reply.values("+CFUN:") or [""])[0].split(",")[0].strip()
        if value in ("0", "4"):  # not "(0-1,4-7)": ZTE answers the read with the test form
            log.warning("modem radio is off (+CFUN: %s): switching it on", value)
            await self._cmd(C.CFUN.line("1"), timeout=self._slow(C.CFUN))

    async def _wait_registered(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.t.registration
        while True:
            try:
                stat = await self._registration_state()
            except CmeError as exc:
                if not exc.retryable:
                    raise
                # Wavecom answers +CME ERROR: 515 for a while after AT+CFUN=1.
                stat = 4
            if stat in C.REGISTERED:
                return
            if loop.time() >= deadline:
                raise NotRegistered(
                    f"not registered on a network after {self.t.registration:g} s:"
                    f" {C.REG_STATES.get(stat, stat)}"
                )
            await asyncio.sleep(self.t.poll)

    async def _set_mode(self) -> None:
        if self._want_mode == "pdu":
            try:
                await self._cmd(C.CMGF.line("0"))
                self._mode = "pdu"
                return
            except CommandError as exc:
                log.warning(
                    "modem refuses PDU mode (%s): falling back to text mode, which sends"
                    " long texts as separate numbered texts",
                    exc,
                )
        await self._cmd(C.CMGF.line("1"))
        self._mode = "text"
        self._in_pdu = False
        self._pdu_reads_ok = True
        self._charset = None
        self._parser.hex_texts = False
        self._ucs2_ok = True
        self._csmp = None
        self._csmp_ok = True
        if self._smsc_known is None:  # to put back should AT+CSMP empty it
            csca = await self._optional(C.CSCA.line() + "?", "+CSCA:")
            self._smsc_known = C.parse_csca(csca) if csca else None
        with contextlib.suppress(CommandError):
            await self._cmd(C.CSCS.line('"IRA"'))
            self._charset = "IRA"
        # The full header of a received text: its <length> tells whether a text line
        # follows, its <dcs> how the text is written (27.005 3.3.3).
        with contextlib.suppress(CommandError):
            await self._cmd(C.CSDH.line("1"))

    async def _optional(self, line: str, prefix: str | None) -> str | None:
        try:
            reply = await self._cmd(line, prefix=prefix)
        except (CommandError, ProtocolError):
            return None
        if prefix is not None:
            values = reply.values(prefix)
            return values[0] if values else None
        return C.first_line(reply.lines)

    # -------------------------------------------------------------------- identity

    async def probe(self) -> ModemInfo:
        """Ask the modem who it is and how it is doing."""
        self._require_open()
        async with self._lock:
            maker = await self._optional(C.CGMI.line(), None)
            model = await self._optional(C.CGMM.line(), None)
            firmware = await self._optional(C.CGMR.line(), None)
            imei = await self._imei()
            iccid = await self._iccid()
            cops = await self._optional(C.COPS.line() + "?", "+COPS:")
            csq = await self._optional(C.CSQ.line(), "+CSQ:")
            try:
                registration: int | None = await self._registration_state()
            except (CommandError, ProtocolError):
                registration = None
        operator = None
        if cops:
            with contextlib.suppress(ProtocolError):
                operator = C.parse_cops(cops)
        rssi = None
        if csq:
            with contextlib.suppress(ProtocolError):
                rssi = C.parse_csq(csq)[0]
        self.rssi = rssi
        return ModemInfo(
            device=self.device,
            maker=maker,
            model=model,
            firmware=firmware,
            imei=imei,
            iccid=iccid,
            operator=operator,
            rssi=rssi,
            dbm=C.csq_dbm(rssi) if rssi is not None else None,
            registration=registration,
            registration_text=C.REG_STATES.get(registration, "unknown")
            if registration is not None
            else "unknown",
            mode=self._mode,
            inbound=self._inbound_on,
            reports=self.report_routing,
        )

    async def _imei(self) -> str | None:
        try:
            reply = await self._cmd(C.CGSN.line())
        except (CommandError, ProtocolError):
            return None
        return C.parse_imei(reply.lines)

    async def _iccid(self) -> str | None:
        for line in (self._quirks.iccid, "AT+CCID", "AT+CRSM=176,12258,0,0,10"):
            try:
                reply = await self._cmd(line)
            except (CommandError, ProtocolError):
                continue
            if line.startswith("AT+CRSM"):
                for value in reply.values("+CRSM:"):
                    found = C.parse_crsm_iccid(value)
                    if found:
                        return found
                continue
            found = C.parse_iccid(reply.lines)
            if found:
                return found
        return None

    async def health_check(self) -> tuple[int | None, int]:
        """Signal (CSQ rssi) and registration state, now."""
        async with self._lock:
            csq = await self._cmd(C.CSQ.line(), prefix="+CSQ:")
            rssi = C.parse_csq(C.one_value(csq.values("+CSQ:"), "AT+CSQ"))[0]
            stat = await self._registration_state()
        self.rssi = rssi
        return rssi, stat

    async def _health_loop(self) -> None:
        interval = self.t.health_interval
        failures = 0
        while True:
            await asyncio.sleep(interval)
            if not self.ready:
                continue
            try:
                rssi, stat = await self.health_check()
            except ModemGone:
                continue  # the reconnect logic has it
            except GsmError as exc:
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "modem health check failed (%d in a row): %s", failures, exc)
                interval = min(interval * 2, self.t.health_interval * 8)
                if failures >= STUCK_AFTER:
                    await self._force_reconnect("health check failed three times")
                    failures = 0
                continue
            self._worked()
            if failures:
                log.info("modem health check ok again")
            failures = 0
            interval = self.t.health_interval
            if stat not in C.REGISTERED:
                log.warning("modem not registered: %s", C.REG_STATES.get(stat, stat))
            log.debug("modem health: rssi=%s registration=%s", rssi, stat)

    # ---------------------------------------------------------------------- sending

    def _require_open(self) -> None:
        if self._link is None:
            raise ModemGone(f"{self.device}: not open ({self._state})")

    def _require_ready(self) -> None:
        if self._state is ModemState.FAILED and self._fatal is not None:
            raise self._fatal
        if not self.ready:
            raise ModemGone(f"{self.device}: not ready ({self._state})")

    async def send_sms(self, number: str, text: str, *, status_report: bool = True) -> list[int]:
        """Send `text` to `number` ("+" and digits, else ValueError before the modem).

        Returns the message reference (+CMGS) of every part. A multipart text that
        failed part way is remembered: sending the same text to the same number again
        resumes at the first part not confirmed, so no confirmed part is sent twice.

        Errors: ValueError (bad number or empty text, nothing written); ModemGone when
        the modem is away before a part's body was written (retryable); SendUncertain
        (LostAfterBody, UnclearAfterBody) when a body went out but no clear +CMGS came
        (not retryable: resending could text twice; a multipart text keeps its progress,
        so a deliberate resend starts at the uncertain part); CmsError with its code,
        retryable or not; UnsupportedText in text mode.
        """
        C.check_number(number)
        if not text:
            raise ValueError("empty text")
        self._require_ready()
        mode = self._mode
        key = (number, text, status_report, mode)
        progress = self._partial.get(key)
        if progress is None:
            parts: list[SubmitPart] | list[TextModePart]
            if mode == "text":
                parts = split_text_mode(text)
            else:
                self._concat_ref = (self._concat_ref + 1) % 256
                parts = encode_submit(
                    number,
                    text,
                    reference=self._concat_ref,
                    request_status_report=status_report,
                    validity_minutes=self._validity,
                )
            progress = _Progress(parts, [])
        else:
            log.info(
                "resuming a %d-part text at part %d", len(progress.parts), len(progress.refs) + 1
            )
        self._partial[key] = progress
        self._partial.move_to_end(key)
        while len(self._partial) > _MAX_PARTIAL:
            self._partial.popitem(last=False)
        try:
            for part in progress.parts[len(progress.refs) :]:
                async with self._lock:
                    self._require_ready()
                    if isinstance(part, TextModePart):
                        ref = await self._submit_text(number, part, status_report)
                    else:
                        ref = await self._submit(f"AT+CMGS={part.tpdu_length}", part.pdu)
                progress.refs.append(ref)
        except GsmError as exc:
            exc.parts_sent = len(progress.refs)
            self._failed(exc)
            # Retryable, or uncertain (a deliberate resend must not repeat the parts
            # already confirmed): keep the progress. Otherwise the text is given up.
            if not exc.retryable and not isinstance(exc, SendUncertain):
                self._partial.pop(key, None)
            raise
        except BaseException:
            self._partial.pop(key, None)
            raise
        self._partial.pop(key, None)
        self._worked()
        return list(progress.refs)

    async def _submit_text(self, number: str, part: TextModePart, status_report: bool) -> int:
        """One separate text in text mode (the lock must be held): AT+CSMP with its data
        coding, AT+CSCS="UCS2" around a UCS-2 one (the number in UCS-2 hex too), then
        AT+CMGS. UnsupportedText (nothing sent) when the modem cannot take UCS-2."""
        await self._text_mode_for_sending()
        fo = CSMP_FO | (CSMP_FO_REPORT if status_report else 0)
        vp = validity_octet(self._validity) if self._validity else CSMP_VP
        await self._set_csmp((fo, vp, 0, part.dcs))
        if part.coding == "ira":
            await self._charset_for_sending()
            return await self._submit(f'AT+CMGS="{number}",145', part.body)
        if not await self._charset_ucs2(reading=False):
            raise UnsupportedText(
                'the modem works in text mode and refuses AT+CSCS="UCS2": this text needs'
                " UCS-2 (characters outside plain letters, digits and punctuation)"
            )
        try:
            return await self._submit(f'AT+CMGS="{_ucs2_hex(number)}",145', part.body)
        finally:
            await self._restore_charset()

    async def _set_csmp(self, wanted: tuple[int, int, int, int]) -> None:
        """AT+CSMP=<fo>,<vp>,<pid>,<dcs> unless in effect already. A modem refusing it
        sends plain texts with its own parameters (no delivery report asked, perhaps);
        a UCS-2 text cannot go (UnsupportedText). Qualcomm and ZTE empty the SMS centre
        address on AT+CSMP (tests/data/modem/qualcommm6280.json, ztek3565z.json): it is
        put back when AT+CSCA? comes back empty."""
        if self._csmp == wanted:
            return
        if self._csmp_ok:
            try:
                await self._cmd(C.CSMP.line(",".join(map(str, wanted))))
            except CommandError as exc:
                self._csmp_ok = False
                log.warning(
                    "modem refuses AT+CSMP (%s): text mode sends only plain texts, with"
                    " the modem's own text parameters",
                    exc,
                )
            else:
                self._csmp = wanted
                await self._keep_smsc()
                return
        if wanted[3] != 0:
            raise UnsupportedText(
                "the modem works in text mode and refuses AT+CSMP: this text needs UCS-2"
                " (data coding 8), which cannot be asked for"
            )

    async def _keep_smsc(self) -> None:
        """After AT+CSMP: the SMS centre address still set? Put it back if not."""
        try:
            reply = await self._cmd(C.CSCA.line() + "?", prefix=C.CSCA.prefix)
        except (CommandError, ProtocolError) as exc:
            log.debug("AT+CSCA? not answered after AT+CSMP: %s", exc)
            return
        values = reply.values("+CSCA:")
        number = C.parse_csca(values[0]) if values else None
        if number:
            self._smsc_known = number
            return
        if self._smsc_known is None:
            log.warning("the modem has no SMS centre address: set [modem] smsc")
            return
        log.warning(
            "AT+CSMP emptied the modem's SMS centre address: setting %s again",
            self._smsc_known,
        )
        await self._cmd(C.CSCA.line(f'"{self._smsc_known}",145'), timeout=self._slow(C.CSCA))

    async def _submit(self, line: str, body: str) -> int:
        if self._dirty:
            await self._resync()
        self._drain()
        self._parser.expect(Expect(line, "+CMGS:", prompt=True))
        self._write(line.encode("ascii") + b"\r")
        try:
            reply = await self._next_reply(line, self.t.prompt)
        except AtTimeout:
            with contextlib.suppress(GsmError):
                self._write(ESC)  # leave the prompt, should it still come
            raise
        if isinstance(reply, Response):
            reply.raise_for_error()
            raise ProtocolError(f"{line}: OK without a '> ' prompt")
        self._parser.sent_body(body)
        self._write(body.encode("ascii") + CTRL_Z)
        # From here the network may have the text: whatever keeps us from reading a
        # clear answer is SendUncertain (never retried blindly: the caller would get it
        # twice). Only a clear error (+CMS ERROR) says that nothing went out.
        try:
            final = await self._next_reply(line, self.t.send)
        except AtTimeout as exc:
            raise SendUncertain(line, self.t.send) from exc
        except ModemGone as exc:
            raise LostAfterBody(line, str(exc)) from exc
        except GsmError as exc:
            raise UnclearAfterBody(line, str(exc)) from exc
        if isinstance(final, Prompt):
            with contextlib.suppress(GsmError):
                self._write(ESC)  # leave the prompt
            raise UnclearAfterBody(line, "a second '> ' prompt")
        try:
            final.raise_for_error()
        except CmsError as exc:
            exc.after_body = True  # says "not sent" only for errors.CMS_NOT_SENT codes
            raise
        except CommandError as exc:
            # ERROR or +CME ERROR to a body: 27.005 3.5.1 answers a failed send with +CMS
            # ERROR, so nothing says where this one happened.
            exc.before_submission = False
            raise
        try:
            ref = C.parse_cmgs(final.values("+CMGS:"))
        except (GsmError, ValueError) as exc:
            raise UnclearAfterBody(line, f"no message reference: {exc}") from exc
        log.debug("sent part, message reference %d", ref)
        return ref

    # ---------------------------------------------------------------------- inbound
    #
    # Stored messages (+CMTI/+CDSI, and the sweeps) are read by one worker, the only one
    # that reads, lists or deletes on the SIM, under the command lock. Without a keeper
    # a message is deleted as soon as it is read and goes to incoming(). With a keeper
    # its slot is "claimed" when read: no sweep or +CMTI reads it again while it waits
    # for the rest of its text or for the keeper, and it is deleted only once the keeper
    # said True (a _Delete op back to the worker). The keeper is awaited by its own task,
    # never under the lock, so a slow database holds up no send.

    def set_read_gate(self, gate: ReadGate | None) -> None:
        """Await `gate()` before each read of stored messages (a +CMTI, a sweep), so that
        an application can put its own work first, e.g. a burst of sends: what waits
        stays on the SIM meanwhile, so nothing is lost. The gate should be bounded; one
        that raises is logged and passed."""
        self._read_gate = gate

    def set_keeper(self, keeper: Keeper | None) -> None:
        """Hand every inbound item to `keeper` instead of `incoming()`.

        `await keeper(item)` gets each inbound text (whole, or given up on and marked
        `incomplete`) and delivery report, one at a time, in arrival order. True: it is
        kept for good, and the SIM slots it came from (every part of a long text) are
        deleted. False or an exception: they stay on the SIM and are read and offered
        again at the next sweep (`Timeouts.sweep`); an item that came straight from the
        network (+CMT, +CDS: on no SIM) waits in memory and is offered again then too.
        Delivery is at least once: after a crash between the keeper's True and the
        delete, the same text is offered again at the next start, so the keeper should
        recognise what it already has (sender, time stamp, text).

        With a keeper set nothing goes to `incoming()`. Set it before `start()` so that
        the start-up sweep's texts are kept before they are deleted; items that reached
        `incoming()` before (already deleted from the SIM) are handed to the keeper now.
        `None` goes back to `incoming()` with deletion at once.
        """
        self._keeper = keeper
        if keeper is None:
            return
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if item is None:  # closed: let incoming() readers end
                self._inbox.put_nowait(None)
                break
            self._keeping.put_nowait(Ready(item))

    async def wait_closed(self) -> None:
        """Return once `close()` was called (for a caller that only set a keeper)."""
        await self._closed.wait()

    def _on_urc(self, urc: Urc) -> None:
        name = urc.name.upper()
        try:
            if name in ("+CMTI", "+CDSI"):
                slot = C.parse_cmti(urc.value)
                if name == "+CDSI" and slot[0] != "SM":
                    self._report_mems.add(slot[0])  # swept from now on too
                self._ops.put_nowait(_Read(slot))
            elif name == "+CMT":
                if urc.data is None:
                    raise ProtocolError("its PDU line never came")
                if _text_mode_cmt(urc.value):
                    read = C.parse_cmt_text(urc.value, urc.data, ucs2=self._charset == "UCS2")
                    for warning in read.warnings:
                        log.warning("inbound text (+CMT): %r", warning)
                    if read.message is not None:
                        self._take_message(read.message, None)
                else:
                    self._take_message(decode_incoming(urc.data), None)
            elif name == "+CDS":
                if urc.data is not None:
                    self._take_message(decode_incoming(urc.data), None)
                elif "," in urc.value:  # text mode: the report is the line itself
                    report = C.parse_cds_text(urc.value, ucs2=self._charset == "UCS2")
                    self._take_message(report, None)
                else:
                    raise ProtocolError("its PDU line never came")
            elif name == "+CREG":
                self.registration = C.parse_creg(urc.value, query=False)
            else:
                log.debug("URC %r", urc.line)
        except (ProtocolError, PduError) as exc:
            self.noise += 1
            data = "" if urc.data is None else f" / {urc.data!r}"
            log.warning("cannot read URC %r%s: %s", urc.line, data, exc)

    def _take_message(self, msg: Inbound, slot: Slot | None) -> None:
        """One message read (from `slot` if it was claimed there, else None): a report
        goes on at once, a text part into the assembler."""
        if isinstance(msg, StatusReport):
            self._dispatch(Ready(msg, () if slot is None else (slot,)))
            return
        for ready in self._assembler.add(msg, slot, asyncio.get_running_loop().time()):
            self._dispatch(ready)
        self._arm_part_timer()

    def _take_stored(self, stored: _Stored, claimed: bool) -> None:
        mem, index = stored.slot
        for warning in stored.warnings:
            log.warning("stored message %s/%d: %r", mem, index, warning)
        if stored.message is not None:
            self._take_message(stored.message, stored.slot if claimed else None)
            return
        if stored.problem is not None:
            self.noise += 1
            log.warning(
                "unreadable stored message %s/%d (%s): %r", mem, index, stored.problem, stored.raw
            )
        else:
            log.info("stored message %s/%d is not an inbound text: %r", mem, index, stored.raw)
        if claimed:
            # A keeper keeps only what can be read: this stays on the SIM for a person to
            # look at (its raw form is in the line above) and is not read again this run.
            self._unreadable.add(stored.slot)

    def _dispatch(self, ready: Ready) -> None:
        if isinstance(ready.item, Deliver) and ready.slots:
            named = tuple(f"{mem}:{index}" for mem, index in ready.slots)
            ready = Ready(replace(ready.item, slots=named), ready.slots)
        if isinstance(ready.item, Deliver) and ready.item.incomplete:
            item = ready.item
            log.warning(
                "a long text from %r: part(s) %s never came; handed on as far as it got",
                item.sender,
                ",".join(map(str, item.missing)),
            )
        if self._keeper is not None:
            self._keeping.put_nowait(ready)
            return
        self._inbox.put_nowait(ready.item)
        if ready.slots:  # claimed under a keeper that has gone since
            self._queue_op(_Delete(ready.slots))

    def _arm_part_timer(self) -> None:
        """A timer for the first waiting long text: when its next part is overdue it is
        handed on as far as it got, even if no other message ever comes."""
        if self._part_timer is not None:
            self._part_timer.cancel()
            self._part_timer = None
        deadline = self._assembler.next_deadline()
        if deadline is not None and not self._closing:
            loop = asyncio.get_running_loop()
            self._part_timer = loop.call_at(deadline, self._parts_due, deadline)

    def _parts_due(self, deadline: float) -> None:
        self._part_timer = None
        # call_at may fire a hair before its time; the deadline itself has come.
        now = max(asyncio.get_running_loop().time(), deadline)
        for ready in self._assembler.expire(now):
            self._dispatch(ready)
        self._arm_part_timer()

    async def _keep_worker(self) -> None:
        while True:
            ready = await self._keeping.get()
            keeper = self._keeper
            if keeper is None:  # taken away while this waited
                self._dispatch(ready)
                continue
            try:
                kept = bool(await keeper(ready.item))
            except Exception:  # the keeper's bug must not end receiving
                log.exception("the keeper failed on an inbound %s", _kind(ready.item))
                kept = False
            if kept:
                self._refusals = 0
                if ready.slots:
                    self._queue_op(_Delete(ready.slots))
                continue
            self._refusals += 1
            level = logging.WARNING if self._refusals == 1 else logging.DEBUG
            if ready.slots:
                for slot in ready.slots:
                    self._claimed.pop(slot, None)
                log.log(
                    level,
                    "inbound %s not kept: left on the SIM, offered again within %g s",
                    _kind(ready.item),
                    self.t.sweep,
                )
                continue
            # Straight from the network (+CMT, +CDS): it is on no SIM and cannot be left
            # anywhere but here; it is lost only if the process ends before a keep.
            self._unkept.append(ready.item)
            if len(self._unkept) > _MAX_UNKEPT:
                lost = self._unkept.popleft()
                log.error("inbound %s never kept and given up: %r", _kind(lost), lost)
            log.log(
                level,
                "inbound %s (not stored on the SIM) not kept: held in memory, offered"
                " again within %g s",
                _kind(ready.item),
                self.t.sweep,
            )

    def _queue_op(self, op: _SimOp) -> None:
        if isinstance(op, _Sweep):
            if self._sweep_queued:
                return
            self._sweep_queued = True
        self._ops.put_nowait(op)

    def _queue_sweep(self) -> None:
        if self._inbound_on:
            self._queue_op(_Sweep())

    async def _sweep_loop(self) -> None:
        """Every `Timeouts.sweep`: offer again what a keeper refused, and read what is
        stored (refused texts left on the SIM; texts whose +CMTI was lost)."""
        while True:
            await asyncio.sleep(self.t.sweep)
            while self._unkept:
                self._keeping.put_nowait(Ready(self._unkept.popleft()))
            if self.ready:
                self._queue_sweep()

    async def _inbound_worker(self) -> None:
        while True:
            op = await self._ops.get()
            gate = self._read_gate
            if gate is not None and not isinstance(op, _Delete):
                try:
                    await gate()
                except Exception:  # the application's bug must not end receiving
                    log.exception("the read gate failed")
            if isinstance(op, _Sweep):
                self._sweep_queued = False
            try:
                await self.wait_ready()
                if isinstance(op, _Sweep):
                    await self._sweep()
                elif isinstance(op, _Read):
                    await self._read_one(op.slot)
                else:
                    await self._delete(op.slots)
            except GsmError as exc:
                if isinstance(op, _Delete):  # kept: delete at the next sweep, never re-offer
                    self._remember_undeleted(op.slots)
                # 321 "invalid memory index": the start-up sweep read it already.
                quiet = isinstance(exc, CmsError) and exc.code == 321
                level = logging.DEBUG if quiet else logging.WARNING
                log.log(level, "stored messages (%s): %s", _op_name(op), exc)

    def _remember_undeleted(self, slots: Iterable[Slot]) -> None:
        for slot in slots:
            self._undeleted[slot] = self._claimed.get(slot, self._undeleted.get(slot, ""))

    def _still_undeleted(self, stored: _Stored) -> bool:
        """Does `stored` hold what was kept there and not deleted? If not, the old text
        is gone (the failed delete did happen) and this is a new one: forgotten as kept."""
        kept = self._undeleted.get(stored.slot)
        if kept is None:
            return False
        if kept == stored.raw:
            return True
        mem, index = stored.slot
        log.info("%s/%d holds a new text since its failed delete: reading it", mem, index)
        self._undeleted.pop(stored.slot, None)
        self._claimed.pop(stored.slot, None)
        return False

    async def _read_one(self, slot: Slot) -> None:
        if slot in self._claimed and slot not in self._undeleted:
            return  # read already (by a sweep): it is being kept
        async with self._lock:
            stored = await self._read_stored(slot)
            if self._still_undeleted(stored):
                await self._delete_slot(slot)  # the same text, kept already
                return
            if slot in self._claimed:
                return  # a sweep read it meanwhile: it is being kept
            claimed = self._keeper is not None
            if claimed:
                self._claimed[slot] = stored.raw
            else:
                await self._delete_slot(slot)
        self._take_stored(stored, claimed)

    async def _sweep(self) -> None:
        """Read every stored message not read yet: texts (and reports) that arrived
        while nobody listened (the daemon down, a +CMTI lost with a reopen), and those
        a keeper refused; delete those kept whose delete failed before."""
        memories = ["SM", *sorted(self._report_mems - {"SM"})]  # reports stored (+CDSI)
        for mem in memories:
            fresh: list[_Stored] = []
            async with self._lock:
                try:
                    await self._select(mem)
                except CommandError as exc:
                    if mem == "SM":
                        raise
                    log.warning("cannot read stored delivery reports in %s: %s", mem, exc)
                    self._report_mems.discard(mem)
                    continue
                listed = await self._list_stored(mem)
                slots = {s.slot for s in listed}
                for gone in [s for s in set(self._undeleted) | self._unreadable if s[0] == mem]:
                    if gone not in slots:  # deleted by someone else meanwhile
                        self._undeleted.pop(gone, None)
                        self._unreadable.discard(gone)
                        self._claimed.pop(gone, None)
                claimed = self._keeper is not None
                for stored in listed:
                    if self._still_undeleted(stored):
                        await self._delete_slot(stored.slot)
                    elif stored.slot not in self._claimed:
                        fresh.append(stored)
                for stored in fresh:
                    if claimed:
                        self._claimed[stored.slot] = stored.raw
                    else:
                        await self._delete_slot(stored.slot)
            for stored in fresh:
                self._take_stored(stored, claimed)
            if fresh:
                log.info("read %d stored message(s) from %s", len(fresh), mem)

    async def _delete(self, slots: tuple[Slot, ...]) -> None:
        """Delete the slots of what a keeper kept; those not deleted now (the modem went
        away) are deleted by the next sweep, never offered again."""
        left = set(slots)
        try:
            async with self._lock:
                for slot in sorted(slots):
                    try:
                        await self._delete_slot(slot)
                    except CmsError as exc:
                        if exc.code != 321:  # 321: not there any more, which is as good
                            raise
                        self._claimed.pop(slot, None)
                    left.discard(slot)
        except BaseException:
            self._remember_undeleted(left)
            raise

    async def _select(self, mem: str) -> None:
        if mem != self._read_mem:
            await self._cmd(C.CPMS.line(f'"{mem}"'), prefix=C.CPMS.prefix)
            self._read_mem = mem

    async def _delete_slot(self, slot: Slot) -> None:
        """AT+CMGD one slot (the lock must be held); it is no longer claimed."""
        mem, index = slot
        await self._select(mem)
        await self._cmd(C.CMGD.line(str(index)), timeout=self._slow(C.CMGD))
        self._claimed.pop(slot, None)
        self._undeleted.pop(slot, None)
        self._unreadable.discard(slot)

    async def _read_stored(self, slot: Slot) -> _Stored:
        """AT+CMGR one slot (the lock must be held)."""
        mem, index = slot
        await self._select(mem)
        line = C.CMGR.line(str(index))
        if self._mode != "text" or await self._pdu_for_reading():
            try:
                reply = await self._cmd(line, prefix="+CMGR:", timeout=self._slow(C.CMGR))
            finally:
                await self._restore_text_mode()
            return _Stored.of_pdu(slot, C.parse_cmgr_pdu(reply.lines))
        ucs2 = await self._charset_for_reading()
        try:
            reply = await self._cmd(line, prefix="+CMGR:", timeout=self._slow(C.CMGR))
        finally:
            await self._restore_charset()
        read = C.parse_cmgr_text(reply.lines, ucs2=ucs2)
        return _Stored.of_text(slot, read, "\n".join(reply.lines))

    async def _list_stored(self, mem: str) -> list[_Stored]:
        """AT+CMGL every message of `mem` (selected; the lock must be held)."""
        if self._mode != "text" or await self._pdu_for_reading():
            try:
                reply = await self._cmd(
                    C.CMGL.line("4"), prefix=C.CMGL.prefix, timeout=self._slow(C.CMGL)
                )
            finally:
                await self._restore_text_mode()
            return [_Stored.of_pdu((mem, i), pdu) for i, pdu in C.parse_cmgl_pdu(reply.lines)]
        ucs2 = await self._charset_for_reading()
        out: list[_Stored] = []
        try:
            reply = await self._cmd_string_arg(C.CMGL, "ALL", ucs2)
            # Each listed index is read again with AT+CMGR: its header has <fo> and <dcs>
            # (a long text's part comes as hex with its User Data Header), and a listing
            # line forged inside a text makes at most a needless read of a real slot.
            indexes = sorted(
                {r.index for r in C.parse_cmgl_text(reply.lines, ucs2=ucs2) if r.index is not None}
            )
            for index in indexes:
                slot = (mem, index)
                try:
                    one = await self._cmd(
                        C.CMGR.line(str(index)), prefix="+CMGR:", timeout=self._slow(C.CMGR)
                    )
                except CmsError as exc:
                    if exc.code == 321:  # no such slot: a forged listing line
                        continue
                    raise
                try:
                    read = C.parse_cmgr_text(one.lines, ucs2=ucs2)
                except ProtocolError as exc:
                    read = C.TextRead(None, index, error=str(exc))
                out.append(_Stored.of_text(slot, read, "\n".join(one.lines)))
        finally:
            await self._restore_charset()
        return out

    async def _pdu_for_reading(self) -> bool:
        """Text mode reads stored messages in PDU mode (AT+CMGF=0 around the read) where
        the modem allows it: a PDU is hex, so no text can pass for a modem line (a text
        line "OK", "+CMGL: ..." or "+CMS ERROR: 500" in text mode can), every character
        set and the User Data Header of a long text's parts come through, and the
        decoder is the one PDU mode uses. False (after one warning): read in text mode."""
        if not self._pdu_reads_ok:
            return False
        try:
            await self._cmd(C.CMGF.line("0"))
        except CommandError as exc:
            self._pdu_reads_ok = False
            log.warning(
                "modem refuses AT+CMGF=0 (%s): stored texts are read in text mode, where"
                " a text's own lines could pass for the modem's",
                exc,
            )
            return False
        self._in_pdu = True
        return True

    async def _restore_text_mode(self) -> None:
        """Back to AT+CMGF=1 after a PDU read (text mode sends so); a failure is left for
        the next send to retry."""
        try:
            await self._text_mode_for_sending()
        except GsmError as exc:
            log.warning("modem stays in PDU mode after a read: %s", exc)

    async def _text_mode_for_sending(self) -> None:
        if self._mode == "text" and self._in_pdu:
            await self._cmd(C.CMGF.line("1"))
            self._in_pdu = False

    async def _cmd_string_arg(self, command: C.Command, arg: str, ucs2: bool) -> Response:
        """`command="arg"`. Under AT+CSCS="UCS2" every string argument is written in UCS-2
        hex too (27.007 5.5); a modem that wants it plain gets a second try so."""
        forms = [_ucs2_hex(arg), arg] if ucs2 else [arg]
        for n, form in enumerate(forms, start=1):
            try:
                return await self._cmd(
                    command.line(f'"{form}"'), prefix=command.prefix, timeout=self._slow(command)
                )
            except CommandError:
                if n == len(forms):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _charset_for_reading(self) -> bool:
        """Text mode reads in UCS-2 (True) where the modem can: as hex no text can be
        mistaken for a modem line (in IRA a text "OK" or "RING me" can), and no character
        is lost. Only around the read: every string argument and answer (AT+CPMS,
        AT+COPS?, the number of AT+CMGS) would be UCS-2 hex too otherwise."""
        return await self._charset_ucs2(reading=True)

    async def _charset_ucs2(self, *, reading: bool) -> bool:
        """AT+CSCS="UCS2" (True), around a read or a UCS-2 send; False (after one
        warning) when the modem refuses it."""
        if not self._ucs2_ok:
            return False
        if self._charset == "UCS2":
            return True
        try:
            await self._cmd(C.CSCS.line('"UCS2"'))
        except CommandError as exc:
            self._ucs2_ok = False
            log.warning(
                'modem refuses AT+CSCS="UCS2" (%s): texts are read in its own character'
                " set, where characters outside ASCII may be lost, and only plain texts"
                " can be sent",
                exc,
            )
            return False
        self._charset = "UCS2"
        self._parser.hex_texts = True
        return True

    async def _restore_charset(self) -> None:
        """Back to IRA after a read; a failure is left for the next send to retry."""
        try:
            await self._charset_for_sending()
        except GsmError as exc:
            log.warning("modem stays in UCS-2 after a read: %s", exc)

    async def _charset_for_sending(self) -> None:
        """Text mode sends in IRA: the number and the text of AT+CMGS as they are."""
        if self._charset == "UCS2":
            await self._cmd_string_arg(C.CSCS, "IRA", ucs2=True)
            self._charset = "IRA"
            self._parser.hex_texts = False

    async def incoming(self) -> AsyncIterator[Inbound]:
        """Inbound texts (reassembled) and delivery reports, until the modem is closed.

        Nothing comes here while a keeper is set (`set_keeper`)."""
        while True:
            item = await self._inbox.get()
            if item is None:
                self._inbox.put_nowait(None)  # let other readers end too
                return
            yield item


def _stuck(exc: BaseException) -> bool:
    """Does `exc` look like a module that stopped working (what a reset may cure): no
    answer (a timeout before any body went out), garbled answers, a stuck +CME ERROR?
    Not: a missing port, the SIM, the network, a refused text, an unclear send."""
    if isinstance(exc, SendUncertain):
        return False
    if isinstance(exc, CmeError):
        return exc.code in STUCK_CME
    return isinstance(exc, AtTimeout | ProtocolError)


def _ucs2_hex(text: str) -> str:
    return text.encode("utf-16-be").hex().upper()


def _text_mode_cmt(value: str) -> bool:
    try:
        cmt_text_length(value)
    except ValueError:
        return False
    return True


def _kind(item: Inbound) -> str:
    if isinstance(item, StatusReport):
        return f"delivery report (reference {item.message_ref})"
    # %r: the sender is the caller's to choose (an alphanumeric one may hold a line break)
    return f"text from {item.sender!r}"


def _op_name(op: _SimOp) -> str:
    if isinstance(op, _Read):
        return f"reading {op.slot[0]}/{op.slot[1]}"
    if isinstance(op, _Delete):
        return "deleting " + ",".join(f"{m}/{i}" for m, i in op.slots)
    return "sweep"
