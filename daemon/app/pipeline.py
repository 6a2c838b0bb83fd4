"""From a tracker event to a recorded decision and a queued text.

For each finished call: record the call, join a pending text for the same destination if
there is one (one text, not two), else ask the policy with facts from the store, record the
decision and put a text in the outbox. A person answering a repeat call, or anyone in the
office dialling the caller, cancels a text still in its wait step.

The same object runs live (the outbox worker sends in the background) and in a dry-run
replay on the trace's own ManualClock (`drive_outbox=True`: each event first processes what
the outbox has due at that time; a recording fake sender stands in for the modem).

A database that refuses a write (full disk, locked) loses no event while it can be held:
it is kept in memory, in order, and retried with backoff. The memory is bounded
(`MAX_BACKLOG` events): past it the oldest event is dropped, counted and logged at ERROR
with its call (`event=backlog_overflow`), and the count is saved once the database is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from daemon.clock import Clock
from daemon.config import Config
from daemon.contacts.names import Names
from daemon.decide.numbers import CallerKind, classify_caller
from daemon.decide.policy import (
    Pause,
    PolicyFacts,
    cancel_reason,
    decide,
    destination_check,
    number_range,
    sending_pause,
)
from daemon.logsetup import kv
from daemon.model import (
    MISSED_OUTCOMES,
    Contact,
    FinishedCall,
    InboundAnswered,
    MessageKind,
    MessageState,
    OutboundDialled,
    Reason,
    TrackerEvent,
)
from daemon.outbox.outbox import Outbox
from daemon.sinks.events import (
    CallbackCancelled,
    GuardTripped,
    PolicyError,
    SendingPaused,
    SendingResumed,
    TextReworded,
)
from daemon.store.store import Message, Store, StoreError, StoreTx

# The journal name operators filter on: kept stable when modules move.
log = logging.getLogger("daemon.pipeline")

#: Per-call results kept in memory for replays and the demo (the store keeps everything).
MAX_RESULTS = 10_000
#: Most finished calls recorded in one transaction (bounds how long one commit holds the
#: database thread and the connection while a burst is written).
MAX_BATCH = 100
#: Final states whose `reason` a report shows.
_WHY_STATES = frozenset(
    {MessageState.CANCELLED, MessageState.FAILED, MessageState.EXPIRED, MessageState.UNCERTAIN}
)
#: First and longest wait before retrying events the database refused.
RETRY_FIRST = 1.0
RETRY_MAX = 60.0
#: Most tracker events held in memory while the database refuses writes (a few hundred
#: bytes each: about hours of a busy office's calls); past it the oldest is dropped.
MAX_BACKLOG = 10_000


@dataclass(frozen=True, slots=True)
class CallReport:
    """What became of one finished call: the decision and the state its text ends in."""

    linkedid: str
    call_id: int
    decision: str  # "send" or "suppress"
    reason: str
    detail: str
    text: str | None
    message_id: int | None
    merged: bool
    #: sent, cancelled, merged, waiting, queued, failed, expired, uncertain; None: no text
    message: str | None = None
    #: why a text was cancelled (called_back, answered_on_retry) or failed
    message_reason: str | None = None


def _template_kind(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


class _Pauses:
    """The sending pauses as one unit of work sees them: the pipeline's, as they were when
    the unit was submitted, plus its own changes. The unit emits its pause events into its
    transaction (so each line stands before its call's line, as the events happened); the
    changes reach the pipeline only once the unit has committed (`apply`)."""

    def __init__(self, held: dict[str, Pause]) -> None:
        self._held = dict(held)
        self._changes: list[tuple[str, Pause | None]] = []

    def trip(self, key: str, pause: Pause, now: float) -> bool:
        """Note a pause; True when it is a new one (not one still holding)."""
        held = self._held.get(key)
        if held is not None and now < held.until:
            return False
        self._held[key] = pause
        self._changes.append((key, pause))
        return True

    def clear(self, pumping_key: str) -> list[str]:
        """A text went ahead: every cap's pause ends, and the guard of its number range."""
        gone = [k for k in self._held if k == pumping_key or not k.startswith("pumping:")]
        for key in gone:
            del self._held[key]
            self._changes.append((key, None))
        return gone

    def apply(self, target: dict[str, Pause]) -> None:
        """Make the unit's changes the pipeline's (after its commit)."""
        for key, pause in self._changes:
            if pause is None:
                target.pop(key, None)
            else:
                target[key] = pause


class Pipeline:
    """Tracker events in; calls, decisions and texts out (into the store and outbox)."""

    def __init__(
        self,
        cfg: Config,
        store: Store,
        outbox: Outbox,
        clock: Clock,
        *,
        drive_outbox: bool = False,
        names: Names | None = None,
        max_backlog: int = MAX_BACKLOG,
    ) -> None:
        self._cfg = cfg
        #: Who the office knows each caller as (None: nobody is known by name).
        self._names = names
        self._store = store
        self._outbox = outbox
        self._clock = clock
        self._drive_outbox = drive_outbox
        self._backlog: deque[tuple[TrackerEvent, float]] = deque()
        self._max_backlog = max(1, max_backlog)
        self._saved_dropped = 0
        self._backlog_ready = asyncio.Event()
        self._retry_delay = RETRY_FIRST
        self._results: OrderedDict[str, CallReport] = OrderedDict()
        self._tripped: dict[str, Pause] = {}
        #: In-memory counters (the database may be what is failing).
        self.counts: Counter[str] = Counter()
        self._saved_errors = 0

    # -- wiring ------------------------------------------------------------------------------

    def reconfigure(self, cfg: Config) -> None:
        """Use a new config from the next event on."""
        self._cfg = cfg
        self._outbox.reconfigure(cfg)

    @property
    def backlog(self) -> int:
        """Events waiting for the database to take them."""
        return len(self._backlog)

    async def run(self) -> None:
        """The background work: the outbox worker and retries of refused events."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._outbox.run(), name="outbox")
            tg.create_task(self._retry_loop(), name="pipeline-retry")

    async def _retry_loop(self) -> None:
        while True:
            await self._backlog_ready.wait()
            await self._clock.sleep(self._retry_delay)
            await self.retry_backlog()

    # -- events --------------------------------------------------------------------------------

    async def handle(self, event: TrackerEvent) -> None:
        """Take one tracker event. Never raises for a database problem: keeps and retries."""
        now = self._clock.now()
        if self._drive_outbox:
            await self.tick()
        if self._backlog:
            await self.retry_backlog()
        if self._backlog:  # still refused: keep the order of events
            self._defer(event, now, None)
            return
        await self._apply_one(event, now)

    async def handle_many(self, events: Sequence[TrackerEvent]) -> None:
        """Take several tracker events, in order: the same result as `handle` on each.

        A run of finished calls is recorded in one transaction (group commit: one hop to
        the database thread and one fsync for the run, not a few of each per call); each
        call still sees the ones before it (a repeat caller joins the text just written),
        and nothing is sent before the commit. Should the run fail on a bug, its calls are
        taken one at a time, so only the faulty one is affected.
        """
        if self._drive_outbox or len(events) <= 1:
            for event in events:
                await self.handle(event)
            return
        now = self._clock.now()
        if self._backlog:
            await self.retry_backlog()
        i = 0
        while i < len(events):
            if self._backlog:  # refused: keep the order of events
                for event in events[i:]:
                    self._defer(event, now, None)
                return
            j = i
            while j < len(events) and j - i < MAX_BATCH and isinstance(events[j], FinishedCall):
                j += 1
            if j - i > 1:
                await self._finish_run([e for e in events[i:j] if isinstance(e, FinishedCall)], now)
                i = j
            else:
                await self._apply_one(events[i], now)
                i += 1

    async def _apply_one(self, event: TrackerEvent, now: float) -> None:
        try:
            await self._apply(event, now)
        except StoreError as exc:
            self._defer(event, now, exc)
        except Exception:
            await self._failed(event, now)

    async def _finish_run(self, calls: list[FinishedCall], now: float) -> None:
        contacts = await asyncio.gather(*(self._contact(call) for call in calls))
        cfg = self._cfg
        after: list[Callable[[], None]] = []
        pauses = _Pauses(self._tripped)

        def unit(tx: StoreTx) -> None:
            for call, contact in zip(calls, contacts, strict=True):
                self._finish_in(tx, call, now, cfg, after=after, pauses=pauses, contact=contact)

        try:
            await self._store.batch(unit)
        except StoreError as exc:
            # The whole run was rolled back: keep every call, in order, for the retries.
            self._defer(calls[0], now, exc)
            for call in calls[1:]:
                self._defer(call, now, None)
            return
        except Exception:
            for call in calls:
                if self._backlog:
                    self._defer(call, now, None)
                else:
                    await self._apply_one(call, now)
            return
        pauses.apply(self._tripped)
        for fn in after:
            fn()

    async def _failed(self, event: TrackerEvent, at: float) -> None:
        """A bug, not the database: retrying would fail the same way. Say so loudly, with
        the whole event, keep the call (without a decision: history shows that), and keep
        going for every other call."""
        self.counts["errors"] += 1
        log.exception(kv(event="pipeline_error", tracker_event=repr(event)))
        if isinstance(event, FinishedCall):
            try:
                await self._store.record_call(event, destination=None, now=at)
                await self._store.bump("pipeline.errors", now=at)
            except Exception as exc:  # a second fault must not escape: handle() never raises
                log.error(
                    kv(
                        event="store_error",
                        during="pipeline_error",
                        linkedid=event.linkedid,
                        error=repr(exc),
                    )
                )

    async def tick(self) -> None:
        """Dry-run: let the outbox do what is due at the clock's time (sends go to the fake)."""
        try:
            await self._outbox.process_due()
        except StoreError as exc:
            self.counts["store_errors"] += 1
            log.error(kv(event="store_error", during="outbox", error=exc))

    async def retry_backlog(self) -> int:
        """Try the refused events again, oldest first; returns how many landed."""
        landed = 0
        while self._backlog:
            event, at = self._backlog[0]
            try:
                await self._apply(event, at)
            except StoreError as exc:
                self.counts["store_errors"] += 1
                log.error(
                    kv(
                        event="store_error",
                        during="retry",
                        backlog=len(self._backlog),
                        error=exc,
                        retry_in=f"{self._retry_delay:g}s",
                    )
                )
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
                return landed
            except Exception:
                await self._failed(event, at)
            else:
                landed += 1
            self._backlog.popleft()
        self._retry_delay = RETRY_FIRST
        self._backlog_ready.clear()
        if landed:
            dropped = self.counts["backlog_dropped"] - self._saved_dropped
            log.warning(kv(event="store_recovered", landed=landed, dropped=dropped or None))
            await self._save_error_count()
        return landed

    async def _save_error_count(self) -> None:
        """Once the database takes writes again, keep the count of its refusals there too."""
        unsaved = self.counts["store_errors"] - self._saved_errors
        dropped = self.counts["backlog_dropped"] - self._saved_dropped
        try:
            if unsaved > 0:
                await self._store.bump("store.errors", unsaved, now=self._clock.now())
                self._saved_errors += unsaved
            if dropped > 0:
                await self._store.bump("store.backlog_dropped", dropped, now=self._clock.now())
                self._saved_dropped += dropped
        except StoreError:
            return  # counted in memory; saved next time

    def _defer(self, event: TrackerEvent, at: float, exc: StoreError | None) -> None:
        if len(self._backlog) >= self._max_backlog:
            self._drop_oldest()
        self._backlog.append((event, at))
        self._backlog_ready.set()
        self.counts["deferred"] += 1
        if exc is not None:
            self.counts["store_errors"] += 1
            log.error(
                kv(
                    event="store_error",
                    during=type(event).__name__,
                    backlog=len(self._backlog),
                    error=exc,
                    retry_in=f"{self._retry_delay:g}s",
                )
            )

    def _drop_oldest(self) -> None:
        """The backlog is full: the oldest event goes, counted and said (never silently)."""
        old, at = self._backlog.popleft()
        self.counts["backlog_dropped"] += 1
        caller = old.caller if isinstance(old, FinishedCall | InboundAnswered) else None
        log.error(
            kv(
                event="backlog_overflow",
                dropped=type(old).__name__,
                linkedid=old.linkedid,
                caller=caller,
                at=f"{at:.3f}",
                dropped_total=self.counts["backlog_dropped"],
                cap=self._max_backlog,
                note="the database refused writes this long; this call is not recorded",
            )
        )

    async def _apply(self, event: TrackerEvent, now: float) -> None:
        if isinstance(event, FinishedCall):
            await self._finished(event, now)
        elif isinstance(event, InboundAnswered):
            await self._cancel(event.caller, cancel_reason(event), now, event.linkedid)
        elif isinstance(event, OutboundDialled):
            await self._cancel(event.number, cancel_reason(event), now, event.linkedid)

    async def _contact(self, call: FinishedCall) -> Contact | None:
        """The office's contact for a missed caller (before the transaction: the lookup may
        ask the PBX); None for every other call, or when the lookup fails."""
        if self._names is None or not call.inbound or call.outcome not in MISSED_OUTCOMES:
            return None
        try:
            return await self._names.lookup(call)
        except Exception:  # a bug there costs the name, never the text
            log.exception(kv(event="contact_lookup_error", linkedid=call.linkedid))
            return None

    async def _finished(self, call: FinishedCall, now: float) -> None:
        contact = await self._contact(call)
        cfg = self._cfg
        after: list[Callable[[], None]] = []
        pauses = _Pauses(self._tripped)
        await self._store.batch(
            lambda tx: self._finish_in(
                tx, call, now, cfg, after=after, pauses=pauses, contact=contact
            )
        )
        pauses.apply(self._tripped)
        for fn in after:
            fn()

    def _finish_in(
        self,
        tx: StoreTx,
        call: FinishedCall,
        now: float,
        cfg: Config,
        *,
        after: list[Callable[[], None]],
        pauses: _Pauses,
        contact: Contact | None = None,
    ) -> None:
        """Record one finished call, its decision and its text, inside `tx`.

        Runs on the database thread: what it does emits its events into `tx` (the store
        publishes them after the commit), in the order the journal has always told them;
        the pipeline's own memory (the results kept for reports, the sending pauses) is
        changed once the transaction is committed (`after`, `pauses`).
        """
        destination, _ = destination_check(call, cfg)
        missed = call.inbound and call.outcome in MISSED_OUTCOMES
        call_id = tx.record_call(call, destination=destination, now=now)
        pending = None
        if missed and destination is not None:
            pending = tx.pending_for(destination)
        if pending is not None:
            self._outbox.join_in(tx, pending, call_id, now=now)
            detail = f"merged into message {pending.id}"
            if call.voicemail_left and self._reword_for_voicemail(
                tx, call, pending, now, cfg=cfg, contact=contact
            ):
                reworded = tx.get_message(pending.id)
                pending = reworded or pending
                detail += f"; text reworded ({pending.template_kind})"
            tx.record_decision(
                call,
                call_id,
                action="send",
                reason=Reason.MISSED,
                destination=destination,
                template_kind=pending.template_kind,
                text=pending.text,
                detail=detail,
                now=now,
                message_id=pending.id,
                merged=True,
            )
            report = CallReport(
                call.linkedid,
                call_id,
                "send",
                str(Reason.MISSED),
                detail,
                pending.text,
                pending.id,
                merged=True,
            )
        else:
            facts = tx.policy_facts(destination, now, cfg)
            decision = decide(call, facts, cfg, now, contact=contact)
            action, reason, detail = decision.action, decision.reason, decision.detail
            mid = None
            if action == "send":
                if decision.destination is None or not decision.text:
                    # A policy bug must not become a text to nowhere; keep it visible.
                    tx.emit(PolicyError(linkedid=call.linkedid, detail=detail))
                    action, detail = "suppress", f"policy said send without text: {detail}"
                else:
                    mid = self._outbox.enqueue_in(
                        tx,
                        destination=decision.destination,
                        text=decision.text,
                        template_kind=_template_kind(decision.template_kind),
                        call_ids=[call_id],
                        parts=decision.parts,
                        encoding=decision.encoding,
                        now=now,
                        kind=MessageKind.MISSED_CALL,
                        line=call.did,
                    )
            sent_to = decision.destination
            if action == "send" and sent_to is not None:
                for key in pauses.clear(self._guard_key("pumping", sent_to, cfg)):
                    tx.emit(SendingResumed(key=key))
            elif reason is Reason.CAP_REACHED:
                pause = sending_pause(sent_to, facts, cfg, now)
                if pause is not None:
                    tx.emit(GuardTripped(guard=pause.guard, at=now))
                    key = self._guard_key(pause.guard, sent_to, cfg)
                    first = pauses.trip(key, pause, now)
                    tx.emit(SendingPaused(key=key, detail=pause.detail, first=first))
            tx.record_decision(
                call,
                call_id,
                action=action,
                reason=reason,
                destination=decision.destination or destination,
                template_kind=_template_kind(decision.template_kind),
                text=decision.text,
                detail=detail,
                now=now,
                message_id=mid,
            )
            report = CallReport(
                call.linkedid,
                call_id,
                action,
                str(reason),
                detail,
                decision.text,
                mid,
                merged=False,
            )
        after.append(lambda: self._remember(report))

    def _reword_for_voicemail(
        self,
        tx: StoreTx,
        call: FinishedCall,
        pending: Message,
        now: float,
        *,
        cfg: Config,
        contact: Contact | None,
    ) -> bool:
        """The joining call left a voicemail: the pending text thanks for the message."""
        again = decide(call, PolicyFacts(), cfg, now, contact=contact)
        kind = _template_kind(again.template_kind)
        if again.action != "send" or not again.text or kind == pending.template_kind:
            return False
        tx.update_message(
            pending.id,
            now=now,
            text=again.text,
            template_kind=kind,
            parts=again.parts,
            encoding=again.encoding,
        )
        tx.emit(TextReworded(message_id=pending.id, template_kind=kind, at=now))
        return True

    @staticmethod
    def _guard_key(guard: str, destination: str | None, cfg: Config) -> str:
        # The pumping guard pauses one number range; a cap pauses everything.
        if guard == "pumping" and destination is not None:
            return f"pumping:{number_range(destination, cfg.textback.pumping_prefix_digits)}"
        return guard

    async def _cancel(self, number: str, reason: Reason, now: float, linkedid: str) -> None:
        home = self._cfg.textback.home_region
        candidates = [number]
        # Office phones often dial an outside-line prefix (9 or 0) before the number.
        if len(number) > 8 and number[:1] in ("9", "0"):
            candidates.append(number[1:])
        seen: set[str] = set()
        for raw in candidates:
            judged = classify_caller(raw, home_region=home)
            if judged.kind is not CallerKind.VALID or judged.e164 is None:
                continue
            if judged.e164 in seen:
                continue
            seen.add(judged.e164)
            ids = await self._outbox.cancel(judged.e164, str(reason), now=now)
            if ids:
                self._store.bus.emit(
                    CallbackCancelled(
                        destination=judged.e164,
                        reason=str(reason),
                        linkedid=linkedid,
                        message_ids=tuple(ids),
                        at=now,
                    )
                )

    # -- results -------------------------------------------------------------------------------

    def _remember(self, report: CallReport) -> None:
        self._results[report.linkedid] = report
        self._results.move_to_end(report.linkedid)
        while len(self._results) > MAX_RESULTS:
            self._results.popitem(last=False)

    async def report(self, linkedid: str) -> CallReport | None:
        """What became of a call (decision, reason, text, and its text's state now)."""
        r = self._results.get(linkedid)
        if r is None:
            return None
        if r.message_id is None:
            return r
        m = await self._store.get_message(r.message_id)
        if m is None:
            return r
        # The text as it stands (a joining voicemail may have reworded it).
        if r.merged:
            return replace(r, message="merged", text=m.text)
        why = m.reason if m.state in _WHY_STATES else None
        return replace(r, message=m.state, message_reason=why, text=m.text)

    async def reports(self) -> list[CallReport]:
        """Every remembered call's report, in the order the calls finished."""
        out = []
        for linkedid in list(self._results):
            r = await self.report(linkedid)
            if r is not None:
                out.append(r)
        return out
