"""The durable outbox: wait, cancel, send, retry, give up, all recorded in SQLite.

A text is written (state `waiting` or `queued`) before anything is sent. Its life:

    waiting --delay--> queued --> sending --> sent
       |                 |  ^        |
       |                 |  +-retry--+  (retryable error, exponential backoff)
       |                 |           +--> failed     (permanent error, or max_attempts)
       +-----------------+--> cancelled (called back / answered on retry in the wait step)
       +-----------------+--> expired   (not sent within max_age)
    sending at a restart --> uncertain  (or back to queued with resend_uncertain)

Only a missed-call text waits, takes repeat calls into itself and is cancelled by a
callback (`MessageKind.waits`); an opt-out confirmation, a help answer, a staff forward or a
test is `queued` at once and never merged or cancelled by a call.

The outbox owns no modem: it sends through a `daemon.sending.sender.Sender`. One send at
a time, except through a `LaneSender` (a pool of modems): one send at a time per lane,
each in its own task, the lane written with the row when it goes `sending` (so a crash
leaves at most one `sending` row per modem, each marked `uncertain` at the restart); a
text known not sent moves to another lane at once (`failover`). Time comes only from the
injected clock. Every change of a text is written with its event (`TextWritten`,
`TextChanged`, `TextMerged`) in one transaction; the store publishes the event after the
commit, and the sinks word and count it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence

from daemon.clock import Clock, first_of
from daemon.config import Config
from daemon.decide.policy import Pause, cap_pause
from daemon.errors import TextbackError
from daemon.logsetup import kv
from daemon.model import PENDING_STATES, MessageKind, MessageState
from daemon.sending.sender import (
    ERROR_CHARS,
    LaneSender,
    Sender,
    SendRequest,
    SendResult,
    SendStatus,
    result_of_error,
)
from daemon.sinks.events import Event, ModemStateChanged, TextChanged, TextMerged, TextWritten
from daemon.store.routing import QueuedText
from daemon.store.rows import OPTED_OUT
from daemon.store.store import Message, Store, StoreError, StoreTx

# The journal name operators filter on: kept stable when modules move.
log = logging.getLogger("daemon.outbox")

#: How often to look again when the sender is down and texts are queued (and may expire).
NOT_READY_POLL = 5.0
#: First and longest wait before retrying after the database refused a write.
STORE_RETRY_FIRST = 1.0
STORE_RETRY_MAX = 60.0

_QUEUED = (MessageState.QUEUED,)
_WAITING = (MessageState.WAITING,)
_PENDING = tuple(sorted(PENDING_STATES))


class CapReached(TextbackError):
    """A text that no call decided on (a confirmation, an answer, a forward) would go past
    a cap (max_per_hour, max_per_day, max_per_month): nothing was written."""

    def __init__(self, pause: Pause) -> None:
        self.pause = pause
        super().__init__(f"{pause.guard}: {pause.detail}")


def _routed(m: Message) -> QueuedText:
    """A text as a pool routes it."""
    return QueuedText(m.id, m.next_attempt_at, m.destination, m.line, "")


def sender_ready(sender: Sender | None) -> bool:
    """A sender is ready unless absent or it says otherwise."""
    return sender is not None and bool(sender.ready)


def _changed(
    m: Message,
    state: MessageState,
    at: float,
    *,
    reason: str | None = None,
    attempt: int | None = None,
    references: tuple[int, ...] = (),
    error: str | None = None,
    retry_in: float | None = None,
    age: float | None = None,
    sender: str = "",
) -> TextChanged:
    return TextChanged(
        message_id=m.id,
        destination=m.destination,
        kind=m.kind,
        state=state,
        at=at,
        reason=reason,
        attempt=attempt,
        references=references,
        error=error,
        retry_in=retry_in,
        age=age,
        sender=sender,
    )


def _move(
    tx: StoreTx,
    m: Message,
    state: MessageState,
    now: float,
    *,
    expect: Collection[MessageState] | None = None,
    store_reason: str | None = None,
    last_error: str | None = None,
    attempts: int | None = None,
    next_attempt_at: float | None = None,
    sender: str | None = None,
    reason: str | None = None,
    attempt: int | None = None,
    error: str | None = None,
    retry_in: float | None = None,
    age: float | None = None,
) -> bool:
    """Move a text to `state` and emit its TextChanged in the same transaction: the one
    place a state change is written with the event the sinks word as its journal line.

    The row's columns: `store_reason` (its `reason`), `last_error`, `attempts`,
    `next_attempt_at`, `sender` (None leaves a column alone). The line's fields: `reason`,
    `attempt`, `error`, `retry_in`, `age`. With `expect`, only from those states: False,
    and no line, when the row had moved on (a cancel and a send racing each other).
    """
    changed = tx.update_message(
        m.id,
        now=now,
        expect=expect,
        state=state,
        reason=store_reason,
        last_error=last_error,
        attempts=attempts,
        next_attempt_at=next_attempt_at,
        sender=sender,
    )
    if expect is not None and not changed:
        return False
    tx.emit(
        _changed(
            m,
            state,
            now,
            reason=reason,
            attempt=attempt,
            error=error,
            retry_in=retry_in,
            age=age,
            sender=sender or "",
        )
    )
    return True


def _write_text(
    tx: StoreTx,
    *,
    destination: str,
    text: str,
    template_kind: str | None,
    call_ids: Sequence[int],
    parts: int,
    encoding: str,
    now: float,
    kind: MessageKind,
    line: str,
    delay: float,
) -> int:
    """Write a new text and its TextWritten event: `waiting` for `delay`, or `queued`."""
    due = now + delay
    state = MessageState.WAITING if delay > 0 else MessageState.QUEUED
    mid = tx.add_message(
        destination=destination,
        text=text,
        template_kind=template_kind,
        call_ids=call_ids,
        parts=parts,
        encoding=encoding,
        now=now,
        due_at=due,
        state=state,
        kind=kind,
        line=line,
    )
    tx.emit(
        TextWritten(
            message_id=mid,
            destination=destination,
            kind=kind,
            state=state,
            due_at=due,
            call_ids=tuple(call_ids),
            line=line,
            at=now,
        )
    )
    return mid


class _WakeOnNewText:
    """Wakes the outbox's worker when a new text is committed (by anyone's transaction)
    and when a sender's modem becomes ready."""

    name = "outbox-wake"

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    def handle(self, event: Event) -> None:
        if isinstance(event, TextWritten) or (
            isinstance(event, ModemStateChanged) and event.state == "ready"
        ):
            self._outbox.wake()


class Outbox:
    """The queue of texts; `run()` is its worker, `process_due()` one pass of it."""

    def __init__(
        self, cfg: Config, store: Store, clock: Clock, sender: Sender | None = None
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._clock = clock
        self._sender = sender
        self._stopping = False
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._cond = asyncio.Condition()
        self._loops_started = 0
        self._loops_done = 0
        self._store_retry = STORE_RETRY_FIRST
        self._recovered = False
        #: Store errors seen (kept in memory: the database may be what is failing).
        self.store_errors = 0
        self._saved_errors = 0
        #: A pool's sends in flight, one task per lane, by message id.
        self._inflight: dict[int, asyncio.Task[None]] = {}
        #: The last pass left due texts that no lane could take (wait to be woken).
        self._blocked = False
        #: Set while no due text is in hand: see `quiet`.
        self._quiet = asyncio.Event()
        self._quiet.set()
        #: The worker (`run`) drives the passes (process_due may also be called alone).
        self._working = False
        store.bus.add(_WakeOnNewText(self))

    # -- wiring ------------------------------------------------------------------------------

    def reconfigure(self, cfg: Config) -> None:
        """Use a new config (delay, max_age, retries) from now on."""
        self._cfg = cfg
        self.wake()

    def set_sender(self, sender: Sender | None) -> None:
        """Attach (or detach, with None) the sender; texts stay queued while there is none."""
        self._sender = sender
        self.wake()

    def wake(self) -> None:
        """Make the worker look at the queue now (new text, modem back, config change)."""
        self._wake.set()

    # -- writing and cancelling ----------------------------------------------------------------

    async def enqueue(
        self,
        *,
        destination: str,
        text: str,
        template_kind: str | None,
        call_ids: Sequence[int],
        parts: int = 0,
        encoding: str = "",
        kind: MessageKind = MessageKind.MISSED_CALL,
        line: str = "",
        now: float | None = None,
    ) -> int:
        """Write a new text: a missed-call text is `waiting` until the configured delay
        (or `queued` at once when the delay is 0); every other kind is `queued` at once.

        A missed-call text was judged by the policy, caps included; a text of another kind
        is held to the caps here, and raises CapReached (writing nothing) past one.
        """
        at = self._clock.now() if now is None else now
        cfg = self._cfg

        def unit(tx: StoreTx) -> int:
            if not kind.waits:
                pause = cap_pause(tx.policy_facts(None, at, cfg), cfg, at)
                if pause is not None:
                    raise CapReached(pause)
            return self.enqueue_in(
                tx,
                destination=destination,
                text=text,
                template_kind=template_kind,
                call_ids=call_ids,
                parts=parts,
                encoding=encoding,
                kind=kind,
                line=line,
                now=at,
            )

        return await self._store.batch(unit)

    def enqueue_in(
        self,
        tx: StoreTx,
        *,
        destination: str,
        text: str,
        template_kind: str | None,
        call_ids: Sequence[int],
        parts: int,
        encoding: str,
        now: float,
        kind: MessageKind = MessageKind.MISSED_CALL,
        line: str = "",
    ) -> int:
        """`enqueue` inside the caller's transaction (on the database thread). The worker
        is woken when the store publishes the text's event, after the commit."""
        delay = self._cfg.textback.delay if kind.waits else 0.0
        return _write_text(
            tx,
            destination=destination,
            text=text,
            template_kind=template_kind,
            call_ids=call_ids,
            parts=parts,
            encoding=encoding,
            now=now,
            kind=kind,
            line=line,
            delay=delay,
        )

    @staticmethod
    def enqueue_answer_in(
        tx: StoreTx,
        *,
        destination: str,
        text: str,
        kind: MessageKind,
        parts: int,
        encoding: str,
        line: str,
        now: float,
    ) -> int:
        """Write an automatic answer (a confirmation, the help text) inside the caller's
        transaction: `queued` at once. The caller has checked the caps and the rules."""
        if kind.waits:
            raise ValueError("a missed-call text is written by the pipeline, not as an answer")
        return _write_text(
            tx,
            destination=destination,
            text=text,
            template_kind=None,
            call_ids=(),
            parts=parts,
            encoding=encoding,
            now=now,
            kind=kind,
            line=line,
            delay=0.0,
        )

    async def pending_for(self, destination: str) -> Message | None:
        """The missed-call text still waiting or queued for `destination`, if any."""
        return await self._store.pending_for(destination)

    async def join(self, message: Message, call_id: int, *, now: float | None = None) -> None:
        """Join another missed call to a pending text: one text, not two.

        A text still in its wait step waits again from now, so a caller ringing twice
        gets the full wait step after the last ring (max_age still bounds it).
        """
        at = self._clock.now() if now is None else now
        await self._store.batch(lambda tx: self.join_in(tx, message, call_id, now=at))

    def join_in(self, tx: StoreTx, message: Message, call_id: int, *, now: float) -> None:
        """`join` inside the caller's transaction."""
        if not message.kind.waits:
            raise ValueError(f"a {message.kind} text never takes a call into it")
        calls = [*message.call_ids, call_id]
        due = max(message.due_at, now + self._cfg.textback.delay)
        # Only a text still in its wait step waits again; one already going out just
        # gains the call (it is the one text this caller gets either way).
        if not tx.update_message(
            message.id,
            now=now,
            expect=_WAITING,
            call_ids=calls,
            due_at=due,
            next_attempt_at=due,
        ):
            tx.update_message(message.id, now=now, call_ids=calls)
        tx.emit(
            TextMerged(
                message_id=message.id,
                destination=message.destination,
                state=message.state,
                call_id=call_id,
                calls=len(calls),
                at=now,
            )
        )

    async def cancel(self, destination: str, reason: str, *, now: float | None = None) -> list[int]:
        """Cancel every pending missed-call text to `destination` (the office called back,
        or answered the caller); returns the ids cancelled. Other kinds are left alone."""
        at = self._clock.now() if now is None else now
        return await self._store.batch(lambda tx: self.cancel_in(tx, destination, reason, now=at))

    @staticmethod
    def cancel_in(tx: StoreTx, destination: str, reason: str, *, now: float) -> list[int]:
        """`cancel` inside the caller's transaction."""
        return tx.cancel_pending(destination, reason, now)

    # -- restart -------------------------------------------------------------------------------

    async def recover(self) -> dict[str, int]:
        """At start: the send in flight at a crash becomes `uncertain` (or is requeued).

        Returns counts by what was done, for the start-up log line.
        """
        now = self._clock.now()
        resend = self._cfg.textback.resend_uncertain

        counts = {"uncertain": 0, "requeued": 0, "pending": 0}

        def unit(tx: StoreTx) -> None:
            for m in tx.messages((MessageState.SENDING,)):
                if resend:
                    _move(
                        tx,
                        m,
                        MessageState.QUEUED,
                        now,
                        next_attempt_at=now,
                        last_error="in flight at a restart; resending (resend_uncertain)",
                        reason="resend_uncertain",
                    )
                    counts["requeued"] += 1
                else:
                    _move(
                        tx,
                        m,
                        MessageState.UNCERTAIN,
                        now,
                        store_reason="in_flight_at_restart",
                        last_error="in flight at a restart; not resent (resend_uncertain is off)",
                        reason="in_flight_at_restart",
                    )
                    counts["uncertain"] += 1
                    # a delivery report read before this recovery may settle it at once
                    tx.resolve_uncertain(m.id, now, self._cfg.modem.report_window)

        # Read first: a start with nothing in flight writes nothing (and works while
        # another process holds the write lock).
        if await self._store.count_messages((MessageState.SENDING,)):
            await self._store.batch(unit)
        counts["pending"] = await self._store.count_messages(PENDING_STATES)
        self._recovered = True
        log.info(kv(event="outbox_recovered", **counts))
        return counts

    # -- the worker ----------------------------------------------------------------------------

    async def process_due(self) -> int:
        """One pass: expire what is too old, end wait steps, send what is due.

        Returns how many send attempts were made. Raises StoreError if the database
        refuses a write before a send (nothing is sent then).
        """
        now = self._clock.now()
        tb = self._cfg.textback
        # Set-based, so a long queue is not re-read row by row on every pass.
        for m in await self._store.too_old(now, tb.max_age):
            await self._expire(m, now)
        await self._store.batch(lambda tx: self._release_due_in(tx, now))
        attempts = 0
        if not self._can_send():
            if not isinstance(self._sender, LaneSender):
                self._quiet.set()  # nothing goes out now: nothing for other work to wait for
            return attempts
        if isinstance(self._sender, LaneSender):
            return await self._dispatch(self._sender, now)
        queued = await self._store.queued()
        if any(at is None or at <= now for _, at in queued):
            self._quiet.clear()
        try:
            for mid, next_attempt_at in queued:
                if not self._can_send():
                    break
                if next_attempt_at is not None and next_attempt_at > self._clock.now():
                    continue
                if await self._send_one(mid):
                    attempts += 1
        finally:
            # Texts of a burst that came during this pass (the worker was woken) go in
            # the worker's next pass, at once: stay busy across that boundary, or the
            # work held back for texts (a reply read, a mail) slips in between.
            if not (self._working and self._wake.is_set()):
                self._quiet.set()
        return attempts

    def busy(self) -> bool:
        """Due texts are in hand now (`quiet` would wait)."""
        return not self._quiet.is_set()

    async def quiet(self, at_most: float) -> None:
        """Return once no due text is in hand (a pass through the queue has ended), or
        after `at_most` seconds on the clock, whichever comes first.

        Texts to callers go first: work that can wait a little (storing a reply that is
        safe on the SIM meanwhile) waits here while a burst of missed-call texts is being
        sent, so it does not slow them; `at_most` bounds that wait, since behind a real
        modem's pace a queue can last long.
        """
        if self._quiet.is_set():
            return
        await first_of(self._quiet.wait(), self._clock.sleep(at_most))

    async def _dispatch(self, pool: LaneSender, now: float) -> int:
        """One pass through a pool: each due text a free lane takes is sent in its own
        task; the rest wait for a lane (a finished send or a modem back wakes the worker)."""
        await pool.prepare(now)
        due = [
            t
            for t in await self._store.queued_routes()
            if t.message_id not in self._inflight
            and (t.next_attempt_at is None or t.next_attempt_at <= now)
        ]
        started = 0
        for text, lane in pool.assign(due):
            task = asyncio.create_task(self._lane_send(pool, lane, text))
            self._inflight[text.message_id] = task
            started += 1
        self._blocked = len(due) > started
        self._settle_quiet()
        return started

    def _settle_quiet(self) -> None:
        """A pool is quiet when no lane sends and no due text waits for one."""
        if self._inflight or self._blocked:
            self._quiet.clear()
        else:
            self._quiet.set()

    async def _lane_send(self, pool: LaneSender, lane: Sender, text: QueuedText) -> None:
        """Send one text through one lane of a pool, then free the lane."""
        try:
            await self._send_via(text.message_id, lane, pool=pool, text=text)
        except StoreError as exc:  # before the send: the text stays queued
            self._store_error("outbox", exc, STORE_RETRY_FIRST)
        finally:
            pool.release(lane)
            self._inflight.pop(text.message_id, None)
            if not self._inflight:
                self._settle_quiet()
            self.wake()

    def _can_send(self) -> bool:
        return not self._stopping and sender_ready(self._sender)

    @staticmethod
    def _release_due_in(tx: StoreTx, now: float) -> None:
        for mid, destination, kind in tx.release_due(now):
            tx.emit(
                TextChanged(
                    message_id=mid,
                    destination=destination,
                    kind=kind,
                    state=MessageState.QUEUED,
                    at=now,
                )
            )

    async def _expire(self, m: Message, now: float) -> None:
        why = f"not sent within max_age {self._cfg.textback.max_age:g}s"

        def unit(tx: StoreTx) -> None:
            _move(
                tx,
                m,
                MessageState.EXPIRED,
                now,
                expect=_PENDING,
                store_reason=why,
                reason="max_age",
                age=now - m.created_at,
                error=m.last_error,
            )

        await self._store.batch(unit)

    async def _send_one(self, message_id: int) -> bool:
        """Send one queued text; True when the sender was asked to send it."""
        async with self._send_lock:
            sender = self._sender
            if sender is None:
                return False
            return await self._send_via(message_id, sender) is not None

    async def _send_via(
        self,
        message_id: int,
        sender: Sender,
        *,
        pool: LaneSender | None = None,
        text: QueuedText | None = None,
    ) -> SendResult | None:
        """Send one queued text through `sender` (a lane of `pool`: its name is written
        with the row as it goes `sending`); its result, None when it was not sent."""
        lane_name = None if pool is None else sender.name
        m = await self._store.get_message(message_id)
        if m is None or m.state != MessageState.QUEUED or self._stopping:
            return None  # cancelled or sent while an earlier send ran
        now = self._clock.now()
        if now - m.created_at > self._cfg.textback.max_age:
            await self._expire(m, now)
            return None
        attempt = m.attempts + 1

        def start(tx: StoreTx) -> bool:
            # The last look before the modem: a number opted out since this text was
            # written (by any path) never gets it.
            if m.kind.waits and tx.is_opted_out(m.destination):
                tx.cancel_pending(m.destination, OPTED_OUT, now)
                return False
            # Durable before the sender hears of it: a crash from here on is `uncertain`.
            # False: cancelled while we looked at it.
            return _move(
                tx,
                m,
                MessageState.SENDING,
                now,
                expect=_QUEUED,
                attempts=attempt,
                sender=lane_name,
                attempt=attempt,
            )

        if not await self._store.batch(start):
            return None
        request = SendRequest(
            destination=m.destination,
            text=m.text,
            line=m.line,
            kind=m.kind,
            message_id=m.id,
            status_report=self._cfg.modem.status_reports,
        )
        try:
            result = await sender.send(request)
        except asyncio.CancelledError:
            # Shutting down mid-send: the row stays `sending`, so the next start
            # marks it uncertain rather than guessing.
            raise
        except Exception as exc:  # a sender's bug: judged like the error it raised
            result = result_of_error(exc, sender=getattr(sender, "name", ""))
        moved = False
        if pool is not None:
            # a pool counts the lane's health; a text known not sent may go through
            # another modem at once (failover), never one whose send was unclear
            moved = pool.finish(sender, text or _routed(m), result)
        await self._durably(self._record_result, m, attempt, result, moved)
        return result

    def _record_result_in(
        self,
        tx: StoreTx,
        m: Message,
        attempt: int,
        result: SendResult,
        now: float,
        *,
        moved: bool = False,
    ) -> None:
        """Write what became of a send (sent, retry, uncertain or failed) with its event."""
        tb = self._cfg.textback
        if result.status is SendStatus.SENT:
            tx.mark_sent(m.id, result.references, now, sender=result.sender)
            tx.emit(
                _changed(
                    m,
                    MessageState.SENT,
                    now,
                    references=result.references,
                    sender=result.sender,
                    attempt=attempt,
                )
            )
            return
        err = result.error[:ERROR_CHARS]
        uncertain = result.status is SendStatus.UNCERTAIN
        if uncertain and not (tb.resend_uncertain and attempt < tb.max_attempts):
            # The body reached the modem; a resend could text the caller twice.
            _move(
                tx,
                m,
                MessageState.UNCERTAIN,
                now,
                last_error=err,
                store_reason="send_uncertain",
                sender=result.sender or None,
                reason="send_uncertain",
                error=err,
            )
            # its delivery report may have come while the send waited for +CMGS
            tx.resolve_uncertain(m.id, now, self._cfg.modem.report_window)
            return
        if moved and attempt < tb.max_attempts:
            # known not sent: another modem of the pool takes it now
            _move(
                tx,
                m,
                MessageState.QUEUED,
                now,
                last_error=err,
                next_attempt_at=now,
                reason="failover",
                attempt=attempt,
                retry_in=0.0,
                error=err,
            )
            return
        if (uncertain or result.retryable) and attempt < tb.max_attempts:
            wait = tb.retry_backoff * 2 ** (attempt - 1)
            _move(
                tx,
                m,
                MessageState.QUEUED,
                now,
                last_error=err,
                next_attempt_at=now + wait,
                reason="retry",
                attempt=attempt,
                retry_in=wait,
                error=err,
            )
            return
        why = "max_attempts" if result.retryable else "permanent_error"
        _move(
            tx,
            m,
            MessageState.FAILED,
            now,
            last_error=err,
            store_reason=why,
            reason=why,
            attempt=attempt,
            error=err,
        )

    async def _record_result(
        self, m: Message, attempt: int, result: SendResult, moved: bool
    ) -> None:
        now = self._clock.now()
        await self._store.batch(
            lambda tx: self._record_result_in(tx, m, attempt, result, now, moved=moved)
        )

    async def _durably(
        self, fn: Callable[..., Awaitable[object]], *args: object, **kwargs: object
    ) -> None:
        """Write the outcome of a send that happened; retry until the database takes it.

        The modem has already acted, so giving up would lose the record (and leave the row
        `sending`, which a restart turns into `uncertain`, never a duplicate).
        """
        delay = STORE_RETRY_FIRST
        while True:
            try:
                await fn(*args, **kwargs)
                return
            except StoreError as exc:
                self._store_error("record_send_result", exc, delay)
                await self._clock.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX)

    async def next_wakeup(self) -> float | None:
        """When the worker next has something to do (None: only when woken)."""
        tb = self._cfg.textback
        oldest, waiting_due, queued_next, n_queued = await self._store.outbox_times()
        times: list[float] = []
        if oldest is not None:
            times.append(oldest + tb.max_age + 0.001)
        if waiting_due is not None:
            times.append(waiting_due)
        if n_queued:
            if self._can_send():
                assert queued_next is not None
                if self._blocked and queued_next <= self._clock.now():
                    # due texts no lane could take: a lane freed or a modem back wakes
                    # the worker; look again now and then all the same
                    queued_next = self._clock.now() + NOT_READY_POLL
                times.append(queued_next)
            else:
                times.append(self._clock.now() + NOT_READY_POLL)
        return min(times) if times else None

    async def run(self) -> None:
        """The worker: recover, then process the queue whenever something is due."""
        while not self._recovered:
            try:
                await self.recover()
            except StoreError as exc:
                await self._store_trouble(exc, "recover")
        try:
            await self._work()
        finally:
            self._working = False
            self._quiet.set()  # no worker, no pass to wait for
            # a pool's sends in flight end with the worker: their rows stay `sending`,
            # which the next start marks `uncertain`
            tasks = list(self._inflight.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _work(self) -> None:
        self._working = True
        while True:
            self._loops_started += 1
            self._wake.clear()
            delay: float | None
            try:
                await self.process_due()
                nxt = await self.next_wakeup()
                delay = None if nxt is None else max(0.0, nxt - self._clock.now())
                self._store_retry = STORE_RETRY_FIRST
                if self.store_errors > self._saved_errors:
                    # The database works again: keep the count of its refusals there too.
                    n = self.store_errors - self._saved_errors
                    await self._store.bump("store.errors", n, now=self._clock.now())
                    self._saved_errors += n
            except StoreError as exc:
                self._store_error("outbox", exc, self._store_retry)
                delay = self._store_retry
                self._store_retry = min(self._store_retry * 2, STORE_RETRY_MAX)
            if not self._wake.is_set() and not isinstance(self._sender, LaneSender):
                self._quiet.set()  # no pass follows at once (see process_due)
            self._loops_done += 1
            async with self._cond:
                self._cond.notify_all()
            await self._wait(delay)

    def _store_error(self, during: str, exc: StoreError, retry_in: float) -> None:
        """Count a refusal of the database and say it: the one store_error line."""
        self.store_errors += 1
        log.error(kv(event="store_error", during=during, error=exc, retry_in=f"{retry_in:g}s"))

    async def _store_trouble(self, exc: StoreError, during: str) -> None:
        self._store_error(during, exc, self._store_retry)
        await self._clock.sleep(self._store_retry)
        self._store_retry = min(self._store_retry * 2, STORE_RETRY_MAX)

    async def _wait(self, delay: float | None) -> None:
        if delay is None:
            await self._wake.wait()
        else:
            await first_of(self._wake.wait(), self._clock.sleep(delay))

    def stop_sending(self) -> None:
        """Shutdown, first step: start no new send from now on (texts stay queued)."""
        self._stopping = True

    async def quiesce(self) -> None:
        """Shutdown: start no new send, and return once the send in flight has finished.

        The text being sent when SIGTERM arrives finishes (and is recorded as sent or
        failed) rather than being cut off mid AT+CMGS and left `uncertain`.
        """
        self.stop_sending()
        async with self._send_lock:
            pass
        while self._inflight:  # a pool's sends, one per lane
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    async def settle(self) -> None:
        """Wait until the running worker has made a full pass that started after this call.

        For tests and replays on a ManualClock: advance the clock, then `await settle()`.
        """
        want = self._loops_started + 1
        self.wake()
        async with self._cond:
            await self._cond.wait_for(lambda: self._loops_done >= want)
