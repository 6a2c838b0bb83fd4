"""The durable outbox: wait, cancel, send, retry, give up, all recorded in SQLite.

A text is written (state `waiting`) before anything is sent. Its life:

    waiting --delay--> queued --> sending --> sent
       |                 |  ^        |
       |                 |  +-retry--+  (retryable error, exponential backoff)
       |                 |           +--> failed     (permanent error, or max_attempts)
       +-----------------+--> cancelled (called back / answered on retry in the wait step)
       +-----------------+--> expired   (not sent within max_age)
    sending at a restart --> uncertain  (or back to queued with resend_uncertain)

The outbox owns no modem: it sends through an `SmsSender`, which the gsm driver fulfils.
One send at a time. Time comes only from the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from daemon.clock import Clock
from daemon.config import Config
from daemon.logsetup import kv
from daemon.store.store import PENDING_STATES, Message, Store, StoreError, StoreTx
from gsm.errors import SendUncertain

# The journal name operators filter on: kept stable when modules move.
log = logging.getLogger("daemon.outbox")

#: How often to look again when the sender is down and texts are queued (and may expire).
NOT_READY_POLL = 5.0
#: First and longest wait before retrying after the database refused a write.
STORE_RETRY_FIRST = 1.0
STORE_RETRY_MAX = 60.0


@runtime_checkable
class SmsSender(Protocol):
    """What the outbox needs from a modem: send one text, get its message references."""

    async def send_sms(self, number: str, text: str, *, status_report: bool = True) -> list[int]:
        """Send `text` to `number` (E.164); return the modem's reference of each part."""
        ...


def is_retryable(exc: BaseException) -> bool:
    """Is another try worth it? An explicit `retryable` flag wins (gsm.errors has one:
    SendUncertain is a TimeoutError that must NOT be retried blindly); otherwise timeouts
    and OS errors are retryable and everything else is permanent."""
    flag = getattr(exc, "retryable", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(exc, TimeoutError | OSError)


def is_uncertain(exc: BaseException) -> bool:
    """The modem may have sent the text although the send failed (gsm SendUncertain)."""
    return isinstance(exc, SendUncertain)


def sender_ready(sender: SmsSender | None) -> bool:
    """A sender is ready unless absent or it says otherwise through a `ready` attribute."""
    if sender is None:
        return False
    ready = getattr(sender, "ready", True)
    if callable(ready):
        ready = ready()
    return bool(ready)


class Outbox:
    """The queue of texts; `run()` is its worker, `process_due()` one pass of it."""

    def __init__(
        self, cfg: Config, store: Store, clock: Clock, sender: SmsSender | None = None
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._clock = clock
        self._sender = sender
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

    # -- wiring ------------------------------------------------------------------------------

    def reconfigure(self, cfg: Config) -> None:
        """Use a new config (delay, max_age, retries) from now on."""
        self._cfg = cfg
        self.wake()

    def set_sender(self, sender: SmsSender | None) -> None:
        """Attach (or detach, with None) the modem; texts stay queued while there is none."""
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
        now: float | None = None,
    ) -> int:
        """Write a new text: `waiting` until the configured delay, or `queued` at once when
        the delay is 0 (no wait step to end)."""
        at = self._clock.now() if now is None else now
        after: list[Callable[[], None]] = []
        mid = await self._store.batch(
            lambda tx: self.enqueue_in(
                tx,
                destination=destination,
                text=text,
                template_kind=template_kind,
                call_ids=call_ids,
                parts=parts,
                encoding=encoding,
                now=at,
                after=after,
            )
        )
        for fn in after:
            fn()
        return mid

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
        after: list[Callable[[], None]],
    ) -> int:
        """`enqueue` inside the caller's transaction (on the database thread).

        What must wait for the commit (the log line, waking the worker) is appended to
        `after`, for the caller to run once the transaction is committed.
        """
        delay = self._cfg.textback.delay
        due = now + delay
        state = "waiting" if delay > 0 else "queued"
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
        )

        def done() -> None:
            log.info(
                kv(
                    event="message",
                    id=mid,
                    destination=destination,
                    state=state,
                    due_in=f"{due - now:g}s",
                    calls=",".join(str(c) for c in call_ids),
                )
            )
            self.wake()

        after.append(done)
        return mid

    async def pending_for(self, destination: str) -> Message | None:
        """The text still waiting or queued for `destination`, if any."""
        return await self._store.pending_for(destination)

    async def join(self, message: Message, call_id: int, *, now: float | None = None) -> None:
        """Join another missed call to a pending text: one text, not two.

        A text still in its wait step waits again from now, so a caller ringing twice
        gets the full wait step after the last ring (max_age still bounds it).
        """
        at = self._clock.now() if now is None else now
        after: list[Callable[[], None]] = []
        await self._store.batch(lambda tx: self.join_in(tx, message, call_id, now=at, after=after))
        for fn in after:
            fn()

    def join_in(
        self,
        tx: StoreTx,
        message: Message,
        call_id: int,
        *,
        now: float,
        after: list[Callable[[], None]],
    ) -> None:
        """`join` inside the caller's transaction; the log line goes to `after`."""
        calls = [*message.call_ids, call_id]
        due = max(message.due_at, now + self._cfg.textback.delay)
        # Only a text still in its wait step waits again; one already going out just
        # gains the call (it is the one text this caller gets either way).
        if not tx.update_message(
            message.id,
            now=now,
            expect=("waiting",),
            call_ids=calls,
            due_at=due,
            next_attempt_at=due,
        ):
            tx.update_message(message.id, now=now, call_ids=calls)
        after.append(
            lambda: log.info(
                kv(
                    event="message",
                    id=message.id,
                    destination=message.destination,
                    state=message.state,
                    merged_call=call_id,
                    calls=len(calls),
                )
            )
        )

    async def cancel(self, destination: str, reason: str, *, now: float | None = None) -> list[int]:
        """Cancel every pending text to `destination`; returns the ids cancelled."""
        at = self._clock.now() if now is None else now
        done = []
        for m in await self._store.messages(PENDING_STATES, destination):
            if not await self._store.update_message(
                m.id, now=at, expect=PENDING_STATES, state="cancelled", reason=reason
            ):
                continue  # it went to the modem in the meantime: too late to cancel
            log.info(
                kv(
                    event="message",
                    id=m.id,
                    destination=destination,
                    state="cancelled",
                    reason=reason,
                )
            )
            done.append(m.id)
        return done

    # -- restart -------------------------------------------------------------------------------

    async def recover(self) -> dict[str, int]:
        """At start: the send in flight at a crash becomes `uncertain` (or is requeued).

        Returns counts by what was done, for the start-up log line.
        """
        now = self._clock.now()
        counts = {"uncertain": 0, "requeued": 0, "pending": 0}
        for m in await self._store.messages(["sending"]):
            if self._cfg.textback.resend_uncertain:
                await self._store.update_message(
                    m.id,
                    now=now,
                    state="queued",
                    next_attempt_at=now,
                    last_error="in flight at a restart; resending (resend_uncertain)",
                )
                log.warning(
                    kv(
                        event="message",
                        id=m.id,
                        destination=m.destination,
                        state="queued",
                        reason="resend_uncertain",
                    )
                )
                counts["requeued"] += 1
            else:
                await self._store.update_message(
                    m.id,
                    now=now,
                    state="uncertain",
                    reason="in_flight_at_restart",
                    last_error="in flight at a restart; not resent (resend_uncertain is off)",
                )
                log.warning(
                    kv(
                        event="message",
                        id=m.id,
                        destination=m.destination,
                        state="uncertain",
                        reason="in_flight_at_restart",
                    )
                )
                counts["uncertain"] += 1
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
        for mid, destination in await self._store.release_due(now):
            log.info(kv(event="message", id=mid, destination=destination, state="queued"))
        attempts = 0
        if not sender_ready(self._sender):
            return attempts
        for mid, next_attempt_at in await self._store.queued():
            if not sender_ready(self._sender):
                break
            if next_attempt_at is not None and next_attempt_at > self._clock.now():
                continue
            if await self._send_one(mid):
                attempts += 1
        return attempts

    async def _expire(self, m: Message, now: float) -> None:
        if not await self._store.update_message(
            m.id,
            now=now,
            expect=PENDING_STATES,
            state="expired",
            reason=f"not sent within max_age {self._cfg.textback.max_age:g}s",
        ):
            return
        log.warning(
            kv(
                event="message",
                id=m.id,
                destination=m.destination,
                state="expired",
                reason="max_age",
                age=f"{now - m.created_at:.0f}s",
                last_error=m.last_error,
            )
        )

    async def _send_one(self, message_id: int) -> bool:
        """Send one queued text; True when the modem was asked to send it."""
        async with self._send_lock:
            m = await self._store.get_message(message_id)
            sender = self._sender
            if m is None or m.state != "queued" or sender is None:
                return False  # cancelled or sent while an earlier send ran
            now = self._clock.now()
            tb = self._cfg.textback
            if now - m.created_at > tb.max_age:
                await self._expire(m, now)
                return False
            attempt = m.attempts + 1
            # Durable before the modem hears of it: a crash from here on means `uncertain`.
            if not await self._store.update_message(
                m.id, now=now, expect=("queued",), state="sending", attempts=attempt
            ):
                return False  # cancelled while we looked at it
            log.info(
                kv(
                    event="message",
                    id=m.id,
                    destination=m.destination,
                    state="sending",
                    attempt=attempt,
                )
            )
            try:
                refs = await sender.send_sms(
                    m.destination, m.text, status_report=self._cfg.modem.status_reports
                )
            except asyncio.CancelledError:
                # Shutting down mid-send: the row stays `sending`, so the next start
                # marks it uncertain rather than guessing.
                raise
            except Exception as exc:
                await self._after_error(m, attempt, exc)
                return True
            await self._durably(self._record_sent, m, refs)
            return True

    async def _record_sent(self, m: Message, refs: list[int]) -> None:
        now = self._clock.now()
        await self._store.mark_sent(m.id, refs, now)
        log.info(
            kv(
                event="message",
                id=m.id,
                destination=m.destination,
                state="sent",
                refs=",".join(str(r) for r in refs),
            )
        )

    async def _after_error(self, m: Message, attempt: int, exc: Exception) -> None:
        tb = self._cfg.textback
        err = f"{type(exc).__name__}: {exc}"[:500]
        now = self._clock.now()
        uncertain = is_uncertain(exc)
        if uncertain and not (tb.resend_uncertain and attempt < tb.max_attempts):
            # The body reached the modem; a resend could text the caller twice.
            await self._durably(
                self._store.update_message,
                m.id,
                now=now,
                state="uncertain",
                last_error=err,
                reason="send_uncertain",
            )
            log.warning(
                kv(
                    event="message",
                    id=m.id,
                    destination=m.destination,
                    state="uncertain",
                    reason="send_uncertain",
                    error=err,
                )
            )
            return
        if (uncertain or is_retryable(exc)) and attempt < tb.max_attempts:
            wait = tb.retry_backoff * 2 ** (attempt - 1)
            await self._durably(
                self._store.update_message,
                m.id,
                now=now,
                state="queued",
                last_error=err,
                next_attempt_at=now + wait,
            )
            # First retry at WARNING, repeats at DEBUG (STYLE.md: logs).
            level = logging.WARNING if attempt == 1 else logging.DEBUG
            log.log(
                level,
                kv(
                    event="message",
                    id=m.id,
                    destination=m.destination,
                    state="queued",
                    reason="retry",
                    attempt=attempt,
                    retry_in=f"{wait:g}s",
                    error=err,
                ),
            )
            return
        why = "permanent_error" if not is_retryable(exc) else "max_attempts"
        await self._durably(
            self._store.update_message, m.id, now=now, state="failed", last_error=err, reason=why
        )
        log.error(
            kv(
                event="message",
                id=m.id,
                destination=m.destination,
                state="failed",
                reason=why,
                attempts=attempt,
                error=err,
            )
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
                self.store_errors += 1
                log.error(
                    kv(
                        event="store_error",
                        during="record_send_result",
                        error=exc,
                        retry_in=f"{delay:g}s",
                    )
                )
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
            if sender_ready(self._sender):
                assert queued_next is not None
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
                self.store_errors += 1
                log.error(
                    kv(
                        event="store_error",
                        during="outbox",
                        error=exc,
                        retry_in=f"{self._store_retry:g}s",
                    )
                )
                delay = self._store_retry
                self._store_retry = min(self._store_retry * 2, STORE_RETRY_MAX)
            self._loops_done += 1
            async with self._cond:
                self._cond.notify_all()
            await self._wait(delay)

    async def _store_trouble(self, exc: StoreError, during: str) -> None:
        self.store_errors += 1
        log.error(
            kv(event="store_error", during=during, error=exc, retry_in=f"{self._store_retry:g}s")
        )
        await self._clock.sleep(self._store_retry)
        self._store_retry = min(self._store_retry * 2, STORE_RETRY_MAX)

    async def _wait(self, delay: float | None) -> None:
        waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(self._wake.wait())]
        if delay is not None:
            waiters.append(asyncio.ensure_future(self._clock.sleep(delay)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            for w in waiters:
                with contextlib.suppress(asyncio.CancelledError):
                    await w

    async def quiesce(self) -> None:
        """Shutdown: start no new send, and return once the send in flight has finished.

        The text being sent when SIGTERM arrives finishes (and is recorded as sent or
        failed) rather than being cut off mid AT+CMGS and left `uncertain`.
        """
        self._sender = None
        async with self._send_lock:
            pass

    async def settle(self) -> None:
        """Wait until the running worker has made a full pass that started after this call.

        For tests and replays on a ManualClock: advance the clock, then `await settle()`.
        """
        want = self._loops_started + 1
        self.wake()
        async with self._cond:
            await self._cond.wait_for(lambda: self._loops_done >= want)
