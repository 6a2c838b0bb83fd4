"""`textback run`: the daemon. Assembles its parts and supervises them.

The parts: the AMI intake and tracker (unless `[ami] enabled = false`), the pipeline
(policy and outbox over the store), a sender (the modem supervisor) and the event bus
with its sinks (the log and the counters). One TaskGroup supervises. The AMI protocol
hands events to the tracker synchronously (it is cheap and in order); what the tracker
emits goes through a queue to the pipeline, which writes to SQLite before anything is
sent (with `[sending] via = "broker"` the sender is daemon.jobs' BrokerSender, and with
`[jobs] serve` the job server feeds this outbox from the broker). The outbox owns no
modem: it holds the supervisor as its sender, which is ready only while its modem is,
and texts wait in the outbox meanwhile.

systemd: READY=1 once config and database are up (not waiting for the PBX or the modem),
STATUS lines a person can read, WATCHDOG=1 from the event loop, SIGTERM finishes the AT
send in flight and exits within 10 s, SIGHUP reloads templates and policy (and re-reads
the contacts file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from importlib import metadata
from pathlib import Path
from typing import Any

from daemon.app.pipeline import MAX_BATCH, Pipeline
from daemon.app.retention import Retention
from daemon.check import Severity, check_config, log_warnings
from daemon.clock import Clock, SystemClock
from daemon.config import Config
from daemon.contacts.names import Names
from daemon.decide.numbers import CallerKind, classify_caller
from daemon.forwarding.command import ReplyCommand
from daemon.forwarding.mail import MailForwarder
from daemon.intake.client import AmiClient, AmiError
from daemon.intake.frames import Message
from daemon.intake.tracker import WANTED_EVENTS, WANTED_VARS, CallTracker
from daemon.jobs import roles as jobs_roles
from daemon.jobs.site import BrokerSender
from daemon.logsetup import kv
from daemon.metrics.collect import Metrics, ModemView
from daemon.metrics.export import Exporter
from daemon.model import OPEN_STATES, FinishedCall, TrackerEvent
from daemon.mqtt.client import MqttSink
from daemon.outbox.outbox import Outbox
from daemon.replies.inbox import Inbox
from daemon.sdnotify import Notifier
from daemon.sending.modem import InboundSms, ModemSupervisor
from daemon.sending.pool import ModemPool
from daemon.sinks.bus import EventBus
from daemon.store.store import Store, StoreError, StoreLockedError
from gsm.commands import csq_dbm
from gsm.modem import Modem, Timeouts

log = logging.getLogger("daemon.service")

#: How often calls whose end never arrived are looked for.
EXPIRE_INTERVAL = 60.0
#: How often the STATUS line is refreshed (only sent when it changed).
STATUS_INTERVAL = 5.0
#: SIGTERM: calls already finished reach the database within this...
STOP_DRAIN = 1.5
#: ...and the send in flight may finish within this: with closing the port and the
#: database, the daemon is gone within 10 s (systemd's TimeoutStopSec is 15 s).
STOP_GRACE = 7.0
#: The longest an inbound text waits for a burst of texts to callers to be sent first.
INBOUND_YIELD = 10.0
#: After a stop, how long a cancelled task may take to end before it is cancelled again.
STOP_RECANCEL = 0.5
#: enforce_ring_timeout: how often ringing calls are checked.
ENFORCE_INTERVAL = 1.0

#: The header manager.conf `channelvars = CALLERID(pres)` adds to every event.
_PRES_KEY = "ChanVariable:CALLERID(pres)"
#: Getvar bookkeeping is cleared past this many calls (only ringing calls matter).
PRES_ASKED_MAX = 10_000

#: Keys a SIGHUP cannot change without a restart (connections and files are open).
#: None: the whole section. Everything else applies from the next call; [hours] timezone
#: too (business hours, {time}/{day}, and the store's days for counters and caps).
RESTART_KEYS: dict[str, tuple[str, ...] | None] = {
    "ami": ("host", "port", "username", "secret", "keepalive", "ping_timeout", "max_backoff"),
    "modem": None,
    "database": None,
    "mqtt": None,
    "metrics": None,
    "sending": None,
    "jobs": None,
}


class Service:
    """The running daemon. `run()` returns the process exit code."""

    def __init__(
        self,
        cfg: Config,
        config_path: Path | None,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        modem_timeouts: Timeouts | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.notifier = notifier or Notifier()
        self._modem_timeouts = modem_timeouts
        #: The sinks: the log and the counters, and whatever a later part adds.
        self.bus = bus if bus is not None else EventBus.standard()
        self.tracker = CallTracker(cfg, self.clock)
        self._events: asyncio.Queue[TrackerEvent] = asyncio.Queue()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.store: Store | None = None
        self.outbox: Outbox | None = None
        self.pipeline: Pipeline | None = None
        self.ami: AmiClient | None = None
        self.sender: ModemSupervisor | ModemPool | BrokerSender | None = None
        #: Several offices over a broker ([sending] via = "broker", [jobs] serve).
        self.jobs: jobs_roles.Roles | None = None
        self.inbox: Inbox | None = None
        self.mail: MailForwarder | None = None
        self.reply_command: ReplyCommand | None = None
        #: Deletes calls past [database] keep_calls, a little every day.
        self.retention: Retention | None = None
        #: Who the office knows callers as ([contacts]); handed to the pipeline.
        self.names: Names | None = None
        #: The MQTT sink and worker, when [mqtt] url is set.
        self.mqtt: MqttSink | None = None
        #: Prometheus ([metrics] textfile or listen): a sink and its worker.
        self.metrics: Exporter | None = None
        self._waiting = 0
        self._redirected: set[str] = set()
        self._bg: set[asyncio.Task[None]] = set()
        #: Callers' channels whose presentation was asked with Getvar (no channelvars).
        self._pres_asked: set[str] = set()
        self._ask_pres = True
        #: Inbound calls finished with the presentation unknown (first one at WARNING).
        self._pres_unknown = 0
        #: Unexpected exceptions survived (each logged with its traceback).
        self.bugs = 0

    # -- life cycle ------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking new work and shut down (SIGTERM, SIGINT)."""
        if not self._stop.is_set():
            log.info(kv(event="stopping", reason="signal"))
        self._stop.set()

    def request_reload(self) -> None:
        """Reload templates and policy from the config file (SIGHUP)."""
        self._reload.set()

    async def run(self) -> int:
        """Open the database, start everything, and serve until stopped."""
        loop = asyncio.get_running_loop()
        for sig, handler in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
        try:
            self.store = await Store.open(
                self.cfg.database.path, tz=self.cfg.hours.timezone, bus=self.bus
            )
        except StoreLockedError as exc:
            log.error(kv(event="start_failed", error=exc))
            return 1
        except (StoreError, OSError) as exc:
            log.error(kv(event="start_failed", database=self.cfg.database.path, error=exc))
            return 1
        try:
            return await self._serve()
        finally:
            await self.store.close()
            self.notifier.close()
            log.info(kv(event="stopped"))

    @property
    def modem(self) -> Modem | None:
        """The (first) modem, once its supervisor has started it."""
        sups = self.supervisors()
        return sups[0].modem if sups else None

    def supervisors(self) -> list[ModemSupervisor]:
        """One supervisor per modem: the one `[modem]`, or each of `[[modems]]`."""
        if isinstance(self.sender, ModemPool):
            return [lane.supervisor for lane in self.sender.lanes]
        if isinstance(self.sender, BrokerSender):
            return []
        return [] if self.sender is None else [self.sender]

    def _line_key(self, did: str) -> str:
        """A DID as lines are matched: its E.164 number when it is one, else as written."""
        judged = classify_caller(did.strip(), home_region=self.cfg.textback.home_region.upper())
        return judged.e164 if judged.kind is CallerKind.VALID and judged.e164 else did.strip()

    def _assemble(self) -> None:
        """Build the parts this config asks for: AMI intake only when enabled."""
        assert self.store is not None
        cfg = self.cfg
        self.inbox = Inbox(cfg, self.store, self.clock)
        # Forwarding listens to replies; the inbox never calls it. Always there (idle
        # without forward_email), so a SIGHUP that adds addresses is obeyed at once.
        self.mail = MailForwarder(cfg, self.store, self.clock)
        self.bus.add(self.mail)
        self.reply_command = ReplyCommand(cfg)
        self.retention = Retention(cfg, self.store, self.clock)
        self.bus.add(self.reply_command)
        if jobs_roles.wanted(cfg):
            # several offices over a broker (daemon.jobs): ValueError without [mqtt] url
            self.jobs = jobs_roles.Roles(cfg, self.store, self.clock)
            self.jobs.add_sinks(self.bus)
        if self.jobs is not None and self.jobs.sender is not None:
            self.sender = self.jobs.sender  # each text a job for the group's senders
        elif cfg.modems:
            # several modems: each its own send loop; texts routed by line, last sender,
            # shortest queue (daemon.sending.pool)
            self.sender = ModemPool(
                cfg,
                store=self.store,
                bus=self.bus,
                clock=self.clock,
                timeouts=self._modem_timeouts,
                keep_text=self._keep_text,
                read_gate=self._inbound_gate,
                line_key=self._line_key,
            )
        else:
            self.sender = ModemSupervisor(
                cfg.modem,
                store=self.store,
                bus=self.bus,
                clock=self.clock,
                timeouts=self._modem_timeouts,
                keep_text=self._keep_text,
                read_gate=self._inbound_gate,
            )
        self.outbox = Outbox(cfg, self.store, self.clock, sender=self.sender)
        self.mail.texts_first = self.outbox  # mail waits while a burst of texts goes out
        if cfg.metrics.textfile or cfg.metrics.listen:
            # a sink like the others: it hears the bus and reads probes, nobody calls it
            metrics = Metrics(
                modems=[sup.name for sup in self.supervisors()],
                version=_version(),
                delay=cfg.textback.delay,
                ami_connected=lambda: self.ami is not None and self.ami.connected,
                modem_views=self._modem_views,
                pbx_offset=lambda: self.clock.now() - self.tracker.pbx_now(),
            )
            self.metrics = Exporter(cfg.metrics, metrics, self.store, self.bus, self.clock)
        self.names = Names(cfg, self.clock, astdb=self._db_get)
        self.pipeline = Pipeline(cfg, self.store, self.outbox, self.clock, names=self.names)
        if cfg.mqtt.url.strip():
            # a sink like the others: it hears the bus and never gets in texting's way
            try:
                self.mqtt = MqttSink(cfg, self.store, self.clock)
            except ValueError as exc:  # `textback check` says so too; texting goes on
                log.error(kv(event="mqtt_off", key="mqtt.url", error=exc))
            else:
                self.mqtt.texts_first = self.outbox  # a burst's events wait for its texts
                self.bus.add(self.mqtt)
        if cfg.ami.enabled:
            self.ami = AmiClient(
                cfg.ami,
                on_event=self._on_ami_event,
                on_resync=self._on_resync,
                clock=self.clock,
                wanted=WANTED_EVENTS,
                wanted_vars=WANTED_VARS,
            )

    async def _db_get(self, family: str, key: str, timeout: float) -> str | None:
        """The contacts' Asterisk database lookup (AMI DBGet); AmiError without AMI."""
        if self.ami is None:
            raise AmiError("[ami] enabled = false: no Asterisk database")
        return await self.ami.db_get(family, key, timeout)

    def _modem_views(self) -> list[ModemView]:
        """Each modem's state for the metrics: up, and its signal in dBm."""
        views = []
        for sup in self.supervisors():
            modem = sup.modem
            rssi = None if modem is None else modem.rssi
            dbm = None if rssi is None else csq_dbm(rssi)
            views.append(ModemView(sup.name, sup.ready, dbm))
        return views

    async def _inbound_gate(self) -> None:
        """Before the driver reads a text from the SIM: texts to callers first (at most
        INBOUND_YIELD), the text waiting on the SIM meanwhile."""
        if self.outbox is not None:
            await self.outbox.quiet(INBOUND_YIELD)

    async def _keep_text(self, sms: InboundSms) -> None:
        """A modem's inbound text, to the inbox (StoreError: not kept).

        While a burst of texts to callers is being sent, the text waits on the SIM (read,
        not deleted: a crash loses nothing) for at most INBOUND_YIELD, then is stored and
        acted on: an opt-out is still obeyed within seconds, and the sends are not slowed
        by the inbox's work.
        """
        assert self.inbox is not None
        assert self.outbox is not None
        await self.outbox.quiet(INBOUND_YIELD)
        await self.inbox.receive(
            sms.sender,
            sms.text,
            at=sms.at,
            incomplete=sms.incomplete,
            modem=sms.modem,
        )

    async def _serve(self) -> int:
        try:
            self._assemble()
        except ValueError as exc:  # [sending] via = broker or [jobs] serve, no broker
            log.error(kv(event="start_failed", key="mqtt.url", error=exc))
            return 1
        if self.metrics is not None:
            # before anything else writes: the stored counts, then every event after them
            await self.metrics.seed()
        assert self.inbox is not None
        try:
            await self.inbox.judge_old_replies()
        except StoreError as exc:  # tried again at the next start; nothing is lost
            log.error(kv(event="store_error", during="judge_old_replies", error=exc))
        assert self.outbox is not None
        assert self.pipeline is not None
        assert self.sender is not None
        assert self.retention is not None
        assert self.names is not None
        await self.names.reload()  # a bad file is logged; texts then use the fallback name
        cfg = self.cfg
        log.info(
            kv(
                event="started",
                ami=f"{cfg.ami.host}:{cfg.ami.port}" if self.ami is not None else "off",
                modem=",".join(f"{e.name}={e.device}" for e in cfg.modems) or cfg.modem.device,
                database=cfg.database.path,
                ring_timeout=f"{cfg.calls.ring_timeout:g}s",
                delay=f"{cfg.textback.delay:g}s",
                enabled=cfg.textback.enabled,
            )
        )
        self.notifier.ready(self.status_line())
        work: list[asyncio.Task[Any]] = []
        crashed: list[BaseException] = []
        try:
            async with asyncio.TaskGroup() as tg:
                work = [
                    tg.create_task(self._consume(), name="pipeline"),
                    tg.create_task(self.pipeline.run(), name="outbox"),
                    tg.create_task(self.sender.run(), name="modem"),
                    tg.create_task(self._expire_loop(), name="expire"),
                    tg.create_task(self._status_loop(), name="status"),
                    tg.create_task(self.retention.run(), name="retention"),
                    tg.create_task(self._reload_loop(), name="reload"),
                    tg.create_task(self.names.run(), name="contacts"),
                ]
                interval = self.notifier.watchdog_interval()
                if interval:
                    work.append(tg.create_task(self._watchdog_loop(interval), name="watchdog"))
                if self.mail is not None:
                    work.append(tg.create_task(self.mail.run(), name="mail"))
                if self.metrics is not None:
                    work.append(tg.create_task(self.metrics.run(), name="metrics"))
                if self.reply_command is not None:
                    work.append(tg.create_task(self.reply_command.run(), name="on_reply"))
                if self.mqtt is not None:
                    work.append(tg.create_task(self.mqtt.run(), name="mqtt"))
                if self.jobs is not None:
                    work.append(tg.create_task(self.jobs.run(), name="jobs"))
                if self.ami is not None:
                    work.append(tg.create_task(self.ami.run(), name="ami"))
                    # always running: a SIGHUP may turn enforce_ring_timeout on or off
                    work.append(tg.create_task(self._enforce_loop(self.ami), name="enforce"))
                await self._stop.wait()
                await self._shutdown(work)
        except* Exception as group:
            crashed.extend(group.exceptions)
        for err in crashed:
            log.critical(kv(event="crashed", error=repr(err)), exc_info=err)
        return 1 if crashed else 0

    async def _shutdown(self, work: list[asyncio.Task[Any]]) -> None:
        """Stop intake, let the pipeline take what arrived, finish the send in flight."""
        self.notifier.stopping()
        assert self.outbox is not None
        if self.ami is not None:
            await self.ami.close()
        # no new AT+CMGS after SIGTERM; the one in flight may finish (quiesce, below)
        self.outbox.stop_sending()
        # what the tracker emitted before the intake stopped still reaches the database
        try:
            async with asyncio.timeout(STOP_DRAIN):
                await self._drain_events()
        except TimeoutError:
            log.warning(
                kv(event="stop_timeout", waiting_for="database", calls=self._events.qsize())
            )
        try:
            async with asyncio.timeout(STOP_GRACE):
                await self.outbox.quiesce()
        except TimeoutError:
            # the modem did not finish in time: the row stays `sending`, which the next
            # start marks `uncertain` (never resent blindly); say so rather than go quietly
            log.warning(
                kv(
                    event="stop_timeout",
                    waiting_for="modem",
                    waited=f"{STOP_GRACE:g}s",
                    note="the text in flight will be marked uncertain at the next start",
                )
            )
        if self.mqtt is not None:
            # the events of the stop go out, then a retained `offline` (bounded inside)
            await self.mqtt.close()
        for task in [*work, *self._bg]:
            task.cancel()
        await self._until_ended(work)
        await asyncio.gather(*self._bg, return_exceptions=True)
        if self.sender is not None:
            try:
                async with asyncio.timeout(1.0):
                    await self.sender.close()
            except TimeoutError:
                log.warning(kv(event="stop_timeout", waiting_for="serial port close"))
        if self.metrics is not None:
            try:
                async with asyncio.timeout(1.0):
                    await self.metrics.close()  # the last textfile: AMI and modem down
            except TimeoutError:
                log.warning(kv(event="stop_timeout", waiting_for="metrics textfile"))

    async def _until_ended(self, work: list[asyncio.Task[Any]]) -> None:
        """Wait for the cancelled tasks to end, cancelling again those that go on.

        A library can swallow a cancellation: Python 3.11's asyncio.wait_for (aiosmtplib
        reads each SMTP answer with it) returns the answer when it arrives together with
        the cancel, and the task then goes on as if never asked to stop (seen: the mail
        worker back asleep for an hour and the daemon never exiting after SIGTERM).
        """
        pending = {t for t in work if not t.done()}
        while pending:
            _, pending = await asyncio.wait(pending, timeout=STOP_RECANCEL)
            for task in pending:
                log.warning(
                    kv(event="stop_timeout", waiting_for=task.get_name(), note="cancelled again")
                )
                task.cancel()

    async def _drain_events(self) -> None:
        await self._events.join()

    # -- AMI -> tracker -> pipeline ----------------------------------------------------------

    def _on_ami_event(self, msg: Message) -> None:
        # Called from the AMI protocol for every wanted event: keep it cheap.
        for ev in self.tracker.feed(msg):
            self._events.put_nowait(ev)
        if self._ask_pres and msg.get("Event") == "Newexten" and _PRES_KEY not in msg:
            self._maybe_ask_presentation(msg)

    def _maybe_ask_presentation(self, msg: Message) -> None:
        """No `channelvars = CALLERID(pres)`: ask the live channel with Getvar, once."""
        uid = msg.get("Uniqueid", "")
        if not uid or uid in self._pres_asked or not self.tracker.is_inbound_caller(uid):
            return
        if len(self._pres_asked) > PRES_ASKED_MAX:
            self._pres_asked.clear()  # bounded: an entry only matters while its call rings
        self._pres_asked.add(uid)
        task = asyncio.get_running_loop().create_task(
            self._ask_presentation(uid, msg.get("Channel", ""))
        )
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _ask_presentation(self, uid: str, channel: str) -> None:
        assert self.ami is not None
        try:
            reply = await self.ami.action(
                {"Action": "Getvar", "Channel": channel, "Variable": "CALLERID(pres)"}
            )
        except AmiError as exc:
            # the caller may be withheld and we could not find out: say so, loudly
            log.warning(kv(event="getvar_failed", channel=channel, error=exc))
            return
        answer = reply[0] if reply else {}
        if answer.get("Response") == "Success":
            value = answer.get("Value", "")
            self.tracker.set_presentation(uid, value)
            log.debug(kv(event="presentation", channel=channel, value=value))
        elif "denied" in answer.get("Message", "").lower():
            self._ask_pres = False
            log.warning(
                kv(
                    event="withheld_detection_off",
                    why="Getvar permission denied",
                    fix="manager.conf: channelvars = CALLERID(pres), or write = reporting",
                )
            )

    def _on_resync(self, channels: list[Message], gap_from: float, gap_to: float) -> None:
        # The intake times the gap on this host's clock, the tracker keeps the PBX's (event
        # Timestamps): shift by the skew it has seen (none before the first stamped event).
        skew = self.tracker.pbx_now() - self.clock.now()
        for ev in self.tracker.resync(channels, gap_from + skew, gap_to + skew):
            self._events.put_nowait(ev)
        if gap_to > gap_from and self.store is not None:
            self._spawn_store(self.store.add_gap(gap_from, gap_to, "AMI connection lost"))

    def _spawn_store(self, coro: Any) -> None:
        async def _do() -> None:
            try:
                await coro
            except Exception as exc:  # the gap is logged either way; never lose the task
                log.error(kv(event="store_error", during="gap", error=exc))

        task = asyncio.get_running_loop().create_task(_do())
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _consume(self) -> None:
        assert self.pipeline is not None
        while True:
            # Everything that arrived meanwhile goes in together: a burst of finished calls
            # is then recorded in one transaction (pipeline.handle_many), in order.
            batch = [await self._events.get()]
            while len(batch) < MAX_BATCH and not self._events.empty():
                batch.append(self._events.get_nowait())
            try:
                for ev in batch:
                    if isinstance(ev, FinishedCall):
                        self._redirected.discard(ev.linkedid)
                        self._pres_asked.discard(ev.linkedid)
                        self._note_presentation(ev)
                await self.pipeline.handle_many(batch)
            except Exception as exc:
                # a bug must cost these calls at most, not the daemon (and every call after);
                # the pipeline already takes a failing call alone, so this is rare
                self.bugs += 1
                log.exception(
                    kv(event="bug", during="pipeline", tracker_events=len(batch), error=exc)
                )
            finally:
                for _ in batch:
                    self._events.task_done()

    def _note_presentation(self, call: FinishedCall) -> None:
        """An inbound caller whose withheld flag nothing could tell (no channelvars, no
        Getvar answer): said at WARNING the first time, at DEBUG after."""
        if not call.inbound or call.presentation_known or call.withheld:
            return
        self._pres_unknown += 1
        level = logging.WARNING if self._pres_unknown == 1 else logging.DEBUG
        log.log(
            level,
            kv(
                event="presentation_unknown",
                linkedid=call.linkedid,
                unknown_presentation=self.cfg.calls.unknown_presentation,
                fix="manager.conf: channelvars = CALLERID(pres), or write = reporting",
            ),
        )

    async def _expire_loop(self) -> None:
        while True:
            await self.clock.sleep(EXPIRE_INTERVAL)
            for ev in self.tracker.expire(self.tracker.pbx_now()):
                self._events.put_nowait(ev)

    # -- housekeeping ----------------------------------------------------------------------

    def status_line(self) -> str:
        """What `systemctl status` shows: AMI, modem, signal, queue."""
        if not self.cfg.ami.enabled:
            ami = "AMI off"
        elif self.ami is not None and self.ami.connected:
            ami = "AMI connected"
        else:
            ami = "AMI connecting"
        modem = "modem not ready (starting)" if self.sender is None else self.sender.status_text()
        return f"{ami}, {modem}, {self._waiting} waiting, {self.tracker.active} calls in progress"

    async def _status_loop(self) -> None:
        assert self.store is not None
        while True:
            with contextlib.suppress(StoreError):  # the STATUS line keeps the last count
                self._waiting = await self.store.count_messages(OPEN_STATES)
            self.notifier.status(self.status_line())
            await self.clock.sleep(STATUS_INTERVAL)

    async def _watchdog_loop(self, interval: float) -> None:
        # deliberately the real event-loop timer: a stuck loop must miss its ping
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _reload_loop(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            if self._stop.is_set():
                continue  # stopping: READY=1 after STOPPING=1 would confuse systemd
            self.notifier.reloading()
            self.reload()
            if self.names is not None:
                await self.names.reload()  # SIGHUP re-reads the contacts file too
            self.notifier.ready(self.status_line())

    def reload(self) -> bool:
        """Apply the config file again; a broken one is refused and the old one kept."""
        new, problems = check_config(self.config_path)
        errors = [p for p in problems if p.severity is Severity.ERROR]
        if new is None or errors:
            log.error(kv(event="reload_refused", problems=len(errors), keeping="old config"))
            for p in errors:
                log.error(kv(event="config_problem", key=p.key, problem=p.message, hint=p.hint))
            return False
        log_warnings(problems)
        for section, keys in RESTART_KEYS.items():
            old_part, new_part = getattr(self.cfg, section), getattr(new, section)
            names = keys if keys is not None else tuple(type(old_part).model_fields)
            changed = [k for k in names if getattr(old_part, k) != getattr(new_part, k)]
            if changed:
                keys_text = ",".join(f"{section}.{k}" for k in changed)
                log.warning(kv(event="reload_partial", keys=keys_text, needs="restart"))
        if self.cfg.modems != new.modems:
            log.warning(kv(event="reload_partial", keys="modems", needs="restart"))
        if self.store is not None and self.store.timezone != new.hours.timezone:
            zone = new.hours.timezone
            log.info(kv(event="timezone_changed", old=self.store.timezone, new=zone))
            self.store.set_timezone(zone)
        self.cfg = new
        self.tracker.reconfigure(new)
        if self.pipeline is not None:
            self.pipeline.reconfigure(new)
        if self.inbox is not None:
            self.inbox.reconfigure(new)
        if self.mail is not None:
            self.mail.reconfigure(new)
        if self.reply_command is not None:
            self.reply_command.reconfigure(new)
        if self.retention is not None:
            self.retention.reconfigure(new)
        if self.names is not None:
            self.names.reconfigure(new)
        log.info(kv(event="reloaded", config=self.config_path))
        return True

    async def _enforce_loop(self, ami: AmiClient) -> None:
        """Redirect calls ringing past ring_timeout to the voicemail target (AMI Redirect)."""
        while True:
            await self.clock.sleep(ENFORCE_INTERVAL)
            calls = self.cfg.calls  # the config of this pass: SIGHUP may have changed it
            if not calls.enforce_ring_timeout or not ami.connected:
                continue
            target = calls.voicemail_target
            context, exten, priority = _split_target(target)
            for linkedid, channel in self.tracker.ringing_longer_than(
                calls.ring_timeout, self.tracker.pbx_now()
            ):
                if linkedid in self._redirected:
                    continue
                self._redirected.add(linkedid)
                try:
                    reply = await ami.action(
                        {
                            "Action": "Redirect",
                            "Channel": channel,
                            "Context": context,
                            "Exten": exten,
                            "Priority": priority,
                        }
                    )
                    ok = bool(reply) and reply[0].get("Response") == "Success"
                    log.info(
                        kv(
                            event="redirect",
                            linkedid=linkedid,
                            channel=channel,
                            target=target,
                            ok=ok,
                            message=reply[0].get("Message") if reply else None,
                        )
                    )
                except Exception as exc:  # one failed Redirect must not stop the loop
                    log.warning(kv(event="redirect_failed", linkedid=linkedid, error=exc))


def _split_target(target: str) -> tuple[str, str, str]:
    parts = [p.strip() for p in target.split(",")]
    while len(parts) < 3:
        parts.append("1")
    return parts[0], parts[1], parts[2]


def _version() -> str:
    """The installed textback's version (textback_build_info)."""
    try:
        return metadata.version("textback")
    except metadata.PackageNotFoundError:
        return "unknown"
