"""The asyncio modem client: start-up, identity, sending, inbound texts, reconnection.

One command is in flight at a time (a lock); its waiter is registered with the parser
before the command is written; every wait has a timeout and races the loss of the link,
so nothing hangs when the modem is unplugged. Unsolicited result codes go to a worker
that reads and deletes stored texts and hands texts and delivery reports to `incoming()`.

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
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol

from gsm import commands as C
from gsm.at import AtParser, Expect, Noise, Prompt, Response, Urc
from gsm.errors import (
    AtTimeout,
    CmeError,
    CmsError,
    CommandError,
    GsmError,
    LostAfterBody,
    ModemGone,
    NotRegistered,
    PinError,
    ProtocolError,
    SendUncertain,
    SimError,
    UnclearAfterBody,
    UnsupportedText,
)
from gsm.pdu import (
    Deliver,
    PduError,
    Reassembler,
    StatusReport,
    SubmitPart,
    decode_incoming,
    encode_submit,
    sms_info,
)
from gsm.transport import SerialLink

log = logging.getLogger(__name__)

Inbound = Deliver | StatusReport
"""What `Modem.incoming()` yields: an inbound text (whole) or a delivery report."""

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
    scale: float = 1.0
    """Multiplies the commands' own longer timeouts (commands.py: AT+CPIN, AT+CMGL, ...)."""


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


class _Lost:
    """Put in the reply queue when the link goes away: the waiting command fails."""

    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc


@dataclass(slots=True)
class _Progress:
    parts: list[SubmitPart]
    refs: list[int]


# Put on the stored-message queue to read everything stored (after start and reopen).
_SWEEP = ("*", 0)

# How many half-sent multipart texts we remember, to resume them without repeating parts.
_MAX_PARTIAL = 64


def text_mode_safe(text: str) -> bool:
    """May `text` go out in text mode (AT+CMGF=1)? Only a single GSM-7 part whose
    characters read the same in the modem's IRA and GSM character sets: letters, digits,
    space and common punctuation. No line breaks: in text mode each CR makes the modem
    send another prompt (TS 27.005 3.5.1). Everything else needs PDU mode."""
    allowed = set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,!?'()+-:;/&%#*=<>"
    )
    if not text or any(ch not in allowed for ch in text):
        return False
    info = sms_info(text)
    return info.encoding == "gsm7" and info.parts == 1


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
    ) -> None:
        self.device = device
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
        self._stored: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self._reassembler = Reassembler()
        self._partial: OrderedDict[tuple[str, str, bool], _Progress] = OrderedDict()
        self._concat_ref = random.randrange(256)
        self._reconnect_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.registration: int | None = None
        self.rssi: int | None = None
        self.noise = 0
        """Bytes/lines that were nobody's answer (garbage, stray lines), counted."""
        self.reconnects = 0

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
        if self.t.health_interval > 0:
            self._spawn(self._health_loop())

    async def close(self) -> None:
        """Stop background work and close the port. Safe to call twice."""
        self._closing = True
        tasks = list(self._tasks)
        if self._reconnect_task is not None:
            tasks.append(self._reconnect_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
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

    async def _open(self) -> None:
        self._parser.reset()
        self._drain()
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

    async def _reconnect_loop(self) -> None:
        delay = self.t.reopen_initial
        attempt = 0
        while not self._closing:
            await asyncio.sleep(delay)
            attempt += 1
            try:
                await self._open()
                async with self._lock:
                    await self._initialise()
            except (PinError, SimError) as exc:
                await self._drop_link()
                log.error("modem %s: %s; not retrying", self.device, exc)
                self._set_failed(exc)
                return
            except GsmError as exc:
                await self._drop_link()
                level = logging.WARNING if attempt == 1 else logging.DEBUG
                log.log(level, "modem %s: reopen attempt %d failed: %s", self.device, attempt, exc)
                delay = min(delay * 2, self.t.reopen_max)
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

    async def _force_reconnect(self, why: str) -> None:
        link = self._link
        if link is None:
            return
        log.warning("modem %s: %s; reopening", self.device, why)
        self._link = None
        self._replies.put_nowait(_Lost(None))
        await link.close()
        self._begin_reconnect()

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

    async def _resync(self) -> None:
        """After a timeout a late answer may still come: AT+CSQ with a stale guard
        skips every final code that arrives before its own +CSQ line."""
        self._drain()
        self._parser.expect(Expect(C.CSQ.line(), C.CSQ.prefix, stale_guard=True))
        self._write(C.CSQ.line().encode("ascii") + b"\r")
        try:
            reply = await self._next_reply("AT+CSQ (resync)", self.t.command)
        except AtTimeout:
            if self._timeouts_in_row >= 3 and self._state is ModemState.READY:
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
        if self._mode == "text":
            # Reading texts back is done in PDU mode only; they stay on the SIM.
            log.warning("text mode: inbound texts and delivery reports are not read")
        elif self._quirks.cnmi:
            try:
                await self._cmd(self._quirks.cnmi)
                self._inbound_on = True
            except CommandError as exc:
                log.warning("modem refuses %s (%s): no inbound texts", self._quirks.cnmi, exc)
        self._read_mem = "SM"

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
        await self._resync()

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
                    " only single plain GSM-7 texts",
                    exc,
                )
        await self._cmd(C.CMGF.line("1"))
        self._mode = "text"
        with contextlib.suppress(CommandError):
            await self._cmd(C.CSCS.line('"IRA"'))

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
            self._flush_stale()  # a long text whose last part never came goes out as is
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
                if failures >= 3:
                    await self._force_reconnect("health check failed three times")
                    failures = 0
                continue
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
        if self._mode == "text":
            return [await self._send_text_mode(number, text)]
        key = (number, text, status_report)
        progress = self._partial.get(key)
        if progress is None:
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
                    ref = await self._submit(f"AT+CMGS={part.tpdu_length}", part.pdu)
                progress.refs.append(ref)
        except GsmError as exc:
            # Retryable, or uncertain (a deliberate resend must not repeat the parts
            # already confirmed): keep the progress. Otherwise the text is given up.
            if not exc.retryable and not isinstance(exc, SendUncertain):
                self._partial.pop(key, None)
            raise
        except BaseException:
            self._partial.pop(key, None)
            raise
        self._partial.pop(key, None)
        return list(progress.refs)

    async def _send_text_mode(self, number: str, text: str) -> int:
        if not text_mode_safe(text):
            raise UnsupportedText(
                "the modem works in text mode, which sends only one plain GSM-7 part"
                " (letters, digits, common punctuation); this text needs PDU mode"
            )
        async with self._lock:
            self._require_ready()
            return await self._submit(f'AT+CMGS="{number}",145', text)

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
        final.raise_for_error()
        try:
            ref = C.parse_cmgs(final.values("+CMGS:"))
        except (GsmError, ValueError) as exc:
            raise UnclearAfterBody(line, f"no message reference: {exc}") from exc
        log.debug("sent part, message reference %d", ref)
        return ref

    # ---------------------------------------------------------------------- inbound

    def _on_urc(self, urc: Urc) -> None:
        name = urc.name.upper()
        try:
            if name in ("+CMTI", "+CDSI"):
                self._stored.put_nowait(C.parse_cmti(urc.value))
            elif name in ("+CDS", "+CMT"):
                if urc.data is None:
                    raise ProtocolError("its PDU line never came")
                self._deliver_pdu(urc.data)
            elif name == "+CREG":
                self.registration = C.parse_creg(urc.value, query=False)
            else:
                log.debug("URC %s", urc.line)
        except (ProtocolError, PduError) as exc:
            self.noise += 1
            log.warning("cannot read URC %r: %s", urc.line, exc)

    def _deliver_pdu(self, pdu: str) -> None:
        msg = decode_incoming(pdu)
        loop = asyncio.get_running_loop()
        if isinstance(msg, StatusReport):
            self._inbox.put_nowait(msg)
            return
        whole = self._reassembler.add(msg, loop.time())
        if whole is not None:
            self._inbox.put_nowait(whole)
        self._flush_stale()

    def _flush_stale(self) -> None:
        for parts in self._reassembler.pop_stale(asyncio.get_running_loop().time()):
            # Never lose a text: an incomplete one goes out as far as it got.
            head = parts[0]
            self._inbox.put_nowait(
                Deliver(
                    sender=head.sender,
                    text="".join(p.text for p in parts),
                    timestamp=head.timestamp,
                    concat=head.concat,
                    encoding=head.encoding,
                    smsc=head.smsc,
                )
            )

    def _queue_sweep(self) -> None:
        if self._inbound_on:
            self._stored.put_nowait(_SWEEP)

    async def _sweep(self) -> None:
        """Read and delete every stored message: texts (and reports) that arrived while
        nobody listened (the daemon down, the +CMTI lost with a reopen)."""
        memories = ["SM"]
        if self._quirks.cnmi and self._quirks.cnmi.split(",")[3:4] == ["2"]:
            memories.append("SR")  # delivery reports stored there (+CDSI)
        for mem in memories:
            async with self._lock:
                if mem != self._read_mem:
                    await self._cmd(C.CPMS.line(f'"{mem}"'), prefix=C.CPMS.prefix)
                    self._read_mem = mem
                reply = await self._cmd(
                    C.CMGL.line("4"), prefix=C.CMGL.prefix, timeout=self._slow(C.CMGL)
                )
                stored = C.parse_cmgl_pdu(reply.lines)
                for index, _ in stored:
                    await self._cmd(C.CMGD.line(str(index)), timeout=self._slow(C.CMGD))
            for index, pdu in stored:
                try:
                    self._deliver_pdu(pdu)
                except PduError as exc:
                    self.noise += 1
                    log.warning("unreadable stored message %s/%d (%s): %s", mem, index, exc, pdu)
            if stored:
                log.info("read %d message(s) stored in %s while nobody listened", len(stored), mem)

    async def _inbound_worker(self) -> None:
        while True:
            mem, index = await self._stored.get()
            if (mem, index) == _SWEEP:
                try:
                    await self.wait_ready()
                    await self._sweep()
                except GsmError as exc:
                    log.warning("cannot list stored messages: %s", exc)
                continue
            try:
                await self.wait_ready()
                async with self._lock:
                    pdu = await self._read_stored(mem, index)
                    await self._cmd(C.CMGD.line(str(index)), timeout=self._slow(C.CMGD))
            except CmsError as exc:
                # 321 "invalid memory index": the start-up sweep read it already.
                level = logging.DEBUG if exc.code == 321 else logging.WARNING
                log.log(level, "cannot read stored message %s/%d: %s", mem, index, exc)
                continue
            except GsmError as exc:
                log.warning("cannot read stored message %s/%d: %s", mem, index, exc)
                continue
            try:
                self._deliver_pdu(pdu)
            except PduError as exc:
                self.noise += 1
                log.warning("unreadable stored message %s/%d (%s): %s", mem, index, exc, pdu)

    async def _read_stored(self, mem: str, index: int) -> str:
        if mem != self._read_mem:
            await self._cmd(C.CPMS.line(f'"{mem}"'), prefix=C.CPMS.prefix)
            self._read_mem = mem
        reply = await self._cmd(
            C.CMGR.line(str(index)), prefix="+CMGR:", timeout=self._slow(C.CMGR)
        )
        return C.parse_cmgr_pdu(reply.lines)

    async def incoming(self) -> AsyncIterator[Inbound]:
        """Inbound texts (reassembled) and delivery reports, until the modem is closed."""
        while True:
            item = await self._inbox.get()
            if item is None:
                self._inbox.put_nowait(None)  # let other readers end too
                return
            yield item
