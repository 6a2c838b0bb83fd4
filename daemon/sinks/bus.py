"""The event bus: hands each event to every sink, and keeps a sink from hurting the core.

`emit` calls each sink's `handle` in turn on the event loop. A sink that raises is
counted and logged (once per sink and error type at ERROR, then at DEBUG) and the others
still get the event; the emitter never sees the error. A sink with slow work subclasses
`QueueSink`: `handle` only puts the event in a bounded queue, a task of its own delivers,
and what overflows is counted and dropped, so a slow broker can never slow texting.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from daemon.logsetup import kv
from daemon.sinks.counters import CounterSink
from daemon.sinks.events import Event, Sink
from daemon.sinks.log import LogSink

log = logging.getLogger("daemon.sinks.events")

#: Default bound of a QueueSink's queue: minutes of a busy office's events.
QUEUE_SINK_SIZE = 1000


class EventBus:
    """The sinks of one daemon, in the order they were added."""

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self._sinks: list[Sink] = list(sinks)
        #: Exceptions raised by each sink (by sink name).
        self.errors: Counter[str] = Counter()
        self._said: set[tuple[str, str]] = set()

    @classmethod
    def standard(cls) -> EventBus:
        """The sinks every daemon has: the log and the counters."""
        return cls([LogSink(), CounterSink()])

    @property
    def sinks(self) -> tuple[Sink, ...]:
        """The sinks, in order."""
        return tuple(self._sinks)

    def add(self, sink: Sink) -> None:
        """Add a sink; it gets every event emitted from now on."""
        self._sinks.append(sink)

    def remove(self, sink: Sink) -> None:
        """Stop giving events to a sink (no error if it is not there)."""
        if sink in self._sinks:
            self._sinks.remove(sink)

    def find(self, kind: type[Sink]) -> Sink | None:
        """The first sink of a type (the counters, say), or None."""
        for sink in self._sinks:
            if isinstance(sink, kind):
                return sink
        return None

    def emit(self, event: Event) -> None:
        """Give one event to every sink; a failing sink never stops the others."""
        for sink in self._sinks:
            try:
                sink.handle(event)
            except Exception as exc:
                self._sink_failed(sink, event, exc)

    def emit_all(self, events: Iterable[Event]) -> None:
        """Emit several events, in order."""
        for event in events:
            self.emit(event)

    def _sink_failed(self, sink: Sink, event: Event, exc: Exception) -> None:
        # Saying a sink failed must not fail in turn (a sink without a name, an exception
        # whose repr raises): the emitter is past a commit and must never see it.
        try:
            name = str(getattr(sink, "name", type(sink).__name__))
            self.errors[name] += 1
            key = (name, type(exc).__name__)
            level = logging.DEBUG if key in self._said else logging.ERROR
            self._said.add(key)
            log.log(
                level,
                kv(event="sink_error", sink=name, on=type(event).__name__, error=repr(exc)),
                exc_info=level == logging.ERROR,
            )
        except Exception:
            self.errors["?"] += 1


class QueueSink:
    """Base of a sink whose work may be slow: a bounded queue and a task that delivers.

    Subclasses implement `deliver`; the owner runs `run()` in its TaskGroup. `handle`
    never blocks: a full queue drops the event and counts it in `dropped`.
    """

    name = "queue"

    def __init__(self, maxsize: int = QUEUE_SINK_SIZE) -> None:
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        #: Events dropped because the queue was full.
        self.dropped = 0
        #: Events whose delivery raised.
        self.failed = 0

    def handle(self, event: Event) -> None:
        """Queue the event for `run()`; drop and count it when the queue is full."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            # Loud once per burst of drops, not once per event.
            level = logging.WARNING if self.dropped == 1 else logging.DEBUG
            log.log(level, kv(event="sink_overflow", sink=self.name, dropped=self.dropped))

    @property
    def backlog(self) -> int:
        """Events queued and not yet delivered."""
        return self._queue.qsize()

    async def run(self) -> None:
        """Deliver queued events one at a time, for ever; a failed delivery is counted."""
        while True:
            event = await self._queue.get()
            try:
                await self.deliver(event)
            except Exception as exc:
                self.failed += 1
                log.warning(kv(event="sink_error", sink=self.name, error=repr(exc)))
            finally:
                self._queue.task_done()

    async def join(self) -> None:
        """Wait until every queued event has been delivered (tests, clean stops)."""
        await self._queue.join()

    async def deliver(self, event: Event) -> None:
        """Do the slow work for one event."""
        raise NotImplementedError


class TextsFirst(Protocol):
    """What a sink's worker waits for while a burst of texts goes out: the outbox
    (daemon.outbox.Outbox), handed to the sink by the assembly. Texts to callers go
    first; a mail or a burst's MQTT events wait (a bounded time)."""

    def busy(self) -> bool:
        """Due texts are in hand now."""
        ...

    async def quiet(self, at_most: float) -> None:
        """Return once no due text is in hand, or after `at_most` seconds."""
        ...
