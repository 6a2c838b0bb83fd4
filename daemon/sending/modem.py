"""The modem as a sender: `ModemSender` wraps a started gsm.Modem; `ModemSupervisor`
owns one modem's life (start with backoff, probe, hand inbound texts and delivery reports
to the store) and is itself the `Sender` the outbox holds, ready only while its modem is.

A modem that comes up, goes away or stops for good is a `ModemStateChanged` event: the
log sink words it, the outbox wakes on `ready`. What the modem receives is written
through the store, whose events (`ReplyReceived`, `DeliveryReported`) follow the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from daemon.clock import Clock
from daemon.config import IMEI_PREFIX, SINGLE_MODEM, ModemConfig
from daemon.logsetup import kv
from daemon.sending.sender import (
    SendRequest,
    SendResult,
    SendStatus,
    result_of_error,
)
from daemon.sinks.bus import EventBus
from daemon.sinks.events import ModemStateChanged
from daemon.store.store import Store, StoreError
from gsm.errors import GsmError, PinError
from gsm.finder import find_by_imei
from gsm.modem import Modem, ModemInfo, ModemState, ReadGate, Timeouts
from gsm.pdu import Deliver, StatusReport

# The journal name operators filter on: kept stable when modules move.
log = logging.getLogger("daemon.service")

#: Modem start-up retries: first wait, doubling up to the longest.
MODEM_RETRY_FIRST = 2.0
MODEM_RETRY_MAX = 60.0
#: The name of the one modem of a `[modem]` section.
DEFAULT_NAME = SINGLE_MODEM
#: How often an "imei:" device's modem is looked at for having gone away.
IMEI_WATCH = 2.0


@dataclass(frozen=True, slots=True)
class InboundSms:
    """An inbound text as one modem received it, for the keeper."""

    sender: str
    text: str
    at: float
    modem: str
    incomplete: bool


#: What takes an inbound text (the reply inbox, daemon.replies): it must have kept it
#: when it returns, and raise StoreError when it could not.
TextKeeper = Callable[[InboundSms], Awaitable[object]]


#: Finds the port of a modem by its IMEI (raises a GsmError: retryable when not found).
ImeiFinder = Callable[[str], Awaitable[str]]
#: Judges a modem that came up (a pool refuses a second modem with the same IMEI): the
#: reason it may not be used, "" when it may.
Vetter = Callable[["ModemSupervisor", ModemInfo], str]


class ModemSender:
    """A started gsm.Modem as a `Sender`."""

    def __init__(self, modem: Modem, name: str = DEFAULT_NAME) -> None:
        self._modem = modem
        self._name = name

    @property
    def name(self) -> str:
        """The modem's name."""
        return self._name

    @property
    def ready(self) -> bool:
        """True while the modem can take a send."""
        return self._modem.ready

    async def send(self, request: SendRequest) -> SendResult:
        """AT+CMGS the text; every gsm error becomes its result (see gsm.modem.send_sms)."""
        try:
            refs = await self._modem.send_sms(
                request.destination, request.text, status_report=request.status_report
            )
        except (GsmError, OSError, TimeoutError) as exc:
            return result_of_error(exc, sender=self._name)
        return SendResult.sent(refs, sender=self._name)


class ModemSupervisor:
    """Starts the modem of one `[modem]` section and keeps it; a `Sender` all along."""

    def __init__(
        self,
        cfg: ModemConfig,
        *,
        store: Store,
        bus: EventBus,
        clock: Clock,
        timeouts: Timeouts | None = None,
        name: str = DEFAULT_NAME,
        keep_text: TextKeeper | None = None,
        vet: Vetter | None = None,
        finder: ImeiFinder | None = None,
        read_gate: ReadGate | None = None,
    ) -> None:
        self._cfg = cfg
        self._read_gate = read_gate
        self._vet = vet
        self._finder = finder
        #: What the last probe said (None before, or when the probe failed).
        self.info: ModemInfo | None = None
        #: The port in use: the configured path, or where an "imei:" device was found.
        self.device = cfg.device
        self._store = store
        self._bus = bus
        self._clock = clock
        self._timeouts = timeouts
        self._name = name
        self._keep_text = keep_text
        #: The modem once started (None before, or after a setting made it give up).
        self.modem: Modem | None = None
        #: Why there is no usable modem ("" when there is one).
        self.problem = "starting"
        # Sends wait until the modem is probed and announced ready, as they always have:
        # a send must not queue behind the probe's commands.
        self._attached = False
        self._closing = False

    @property
    def name(self) -> str:
        """The modem's name."""
        return self._name

    @property
    def ready(self) -> bool:
        """True while the modem can take a send."""
        return self._attached and self.modem is not None and self.modem.ready

    async def send(self, request: SendRequest) -> SendResult:
        """Send through the modem (a retryable failure while there is none)."""
        if self.modem is None:
            return SendResult(SendStatus.FAILED, error=f"no modem: {self.problem}", retryable=True)
        return await ModemSender(self.modem, self._name).send(request)

    @property
    def imei(self) -> str | None:
        """The IMEI an "imei:<IMEI>" device names, else None."""
        d = self._cfg.device.strip()
        return d[len(IMEI_PREFIX) :].strip() if d.lower().startswith(IMEI_PREFIX) else None

    async def _locate(self) -> str:
        """The port to open: the configured path, or the one answering with its IMEI
        (GsmError when none does, or two do)."""
        imei = self.imei
        if imei is None:
            return self._cfg.device
        return await (self._finder or find_by_imei)(imei)

    async def _until_lost(self, modem: Modem) -> None:
        """Return once the modem is closed, or (an "imei:" device, opened without the
        driver's reconnect) gone: it may come back on another port, found again by IMEI."""
        if self.imei is None:
            await modem.wait_closed()
            return
        while modem.state not in (ModemState.FAILED, ModemState.CLOSED):
            await self._clock.sleep(IMEI_WATCH)

    def _state(
        self,
        state: str,
        *,
        error: str | None = None,
        retry_in: float | None = None,
        first_failure: bool = True,
        info: ModemInfo | None = None,
    ) -> None:
        self._bus.emit(
            ModemStateChanged(
                name=self._name,
                device=self.device,
                state=state,
                error=error,
                retry_in=retry_in,
                first_failure=first_failure,
                maker=None if info is None else info.maker,
                model=None if info is None else info.model,
                operator=None if info is None else info.operator,
                signal=None if info is None else info.rssi,
                registration=None if info is None else info.registration_text,
                mode=None if info is None else info.mode,
            )
        )

    async def run(self) -> None:
        """Start the modem, retrying with backoff; then hand on what it receives."""
        m = self._cfg
        delay = MODEM_RETRY_FIRST
        first_failure = True
        while True:
            try:
                self.device = await self._locate()
            except GsmError as exc:
                if not exc.retryable:
                    # two ports answer with this IMEI: a person must pick one
                    self.problem = str(exc)
                    self._state("failed", error=str(exc))
                    return
                self.problem = str(exc)
                self._state(
                    "unavailable", error=str(exc), retry_in=delay, first_failure=first_failure
                )
                first_failure = False
                await self._clock.sleep(delay)
                delay = min(delay * 2, MODEM_RETRY_MAX)
                continue
            try:
                modem = Modem(
                    self.device,
                    baudrate=m.baudrate,
                    pin=m.pin or None,
                    smsc=m.smsc.replace(" ", "") or None,
                    mode=m.mode,
                    # [modem] delivery_reports: stored by the modem where it can
                    reports=m.delivery_reports,
                    # [modem] send_timeout: the longest wait for +CMGS after the message body
                    timeouts=self._timeouts or Timeouts(send=m.send_timeout),
                    # an "imei:" device may come back on another port: found again here
                    reconnect=self.imei is None,
                )
            except ValueError as exc:
                # a setting the driver refuses (PIN or SMSC shape): no retry can fix it
                self.problem = f"config: {exc}"
                self._state("failed", error=str(exc))
                return
            # Before start: the start-up sweep reads what arrived while we were down, and
            # each of those too must be stored before the SIM lets go of it.
            modem.set_keeper(self._keep)
            modem.set_read_gate(self._read_gate)
            try:
                await modem.start()
            except PinError as exc:
                # a wrong PIN retried three times locks the SIM: stop, loudly, for good
                self.problem = f"SIM: {exc}"
                self._state("failed", error=str(exc))
                await modem.close()
                return
            except (GsmError, OSError) as exc:
                # SIM not inserted or busy, no answer, device missing: worth another try
                self.problem = str(exc)
                self._state(
                    "unavailable", error=str(exc), retry_in=delay, first_failure=first_failure
                )
                first_failure = False
                await modem.close()
                await self._clock.sleep(delay)
                delay = min(delay * 2, MODEM_RETRY_MAX)
                continue
            self.modem = modem
            self.problem = ""
            try:
                info = await modem.probe()
            except (GsmError, OSError) as exc:
                # usable all the same: ready, with the reason we know nothing about it
                self.info = None
                self._attached = True
                self._state("ready", error=str(exc))
            else:
                self.info = info
                refused = "" if self._vet is None else self._vet(self, info)
                if refused:
                    # e.g. the IMEI of another modem of the pool: never send through it
                    self.problem = refused
                    self.modem = None
                    self._state("failed", error=refused, info=info)
                    await modem.close()
                    return
                self._attached = True
                self._state("ready", info=info)
            await self._until_lost(modem)
            if self.imei is None or self._closing:
                return
            # gone: look for it again by its IMEI (a USB reset may renumber its port)
            self._attached = False
            self.modem = None
            self.problem = "gone; looking for it by IMEI"
            self._state("unavailable", error=str(modem.fatal or "gone"), retry_in=0.0)
            await modem.close()
            delay = MODEM_RETRY_FIRST
            first_failure = False

    async def _keep(self, item: Deliver | StatusReport) -> bool:
        """The modem's keeper: a delivery report or an inbound text, into the store. The
        SIM lets go of it only once this returns True (after the commit); a StoreError
        leaves it there, and the modem offers it again at its next sweep. An item may be
        offered twice after a crash: it is kept twice then (sender, second and text do not
        name an SMS, so nothing merges the two; a second STOP changes nothing)."""
        now = self._clock.now()
        try:
            if isinstance(item, StatusReport):
                status = "delivered" if item.delivered else ("failed" if item.final else "pending")
                # by reference; else it may settle an uncertain text to that number
                await self._store.record_delivery(
                    item.message_ref,
                    status,
                    now,
                    recipient=item.recipient,
                    tp_status=item.status,
                    modem=self._name,
                    window=self._cfg.report_window,
                )
            else:
                await self._text(item, now)
        except StoreError as exc:
            log.error(kv(event="store_error", during="inbound", error=exc))
            return False
        return True

    async def _text(self, item: Deliver, now: float) -> None:
        """Hand one inbound text to the keeper (the inbox), or keep it as it is."""
        if self._keep_text is None:
            await self._store.add_reply(item.sender, item.text, now)
            return
        await self._keep_text(
            InboundSms(
                sender=item.sender,
                text=item.text,
                at=now,
                modem=self._name,
                incomplete=item.incomplete,
            )
        )

    def status_text(self) -> str:
        """The modem's part of the STATUS line."""
        if self.modem is not None and self.modem.ready:
            rssi = self.modem.rssi
            return "modem ready" + (f", signal {rssi}/31" if rssi not in (None, 99) else "")
        if self.modem is not None:
            text = f"modem {self.modem.state.value}"
            if self.modem.fatal is not None:
                text += f" ({self.modem.fatal})"
            return text
        return f"modem not ready ({self.problem})" if self.problem else "modem"

    async def close(self) -> None:
        """Close the modem's port (the caller bounds how long it may take)."""
        self._closing = True
        if self.modem is not None:
            await self.modem.close()
