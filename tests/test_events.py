"""Events and sinks: published once, after the commit, in order; a failing or slow sink
never hurts the core; the log sink words each text change as the journal always showed it;
the durable counters agree with the events. Real SQLite files, a ManualClock."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.app.pipeline import Pipeline
from daemon.clock import ManualClock
from daemon.model import MessageKind, MessageState, Outcome
from daemon.outbox.outbox import Outbox
from daemon.sinks.bus import EventBus, QueueSink
from daemon.sinks.counters import CounterSink
from daemon.sinks.events import (
    Event,
    OptOutChanged,
    ReplyReceived,
    TextChanged,
    TextMerged,
    TextWritten,
)
from daemon.sinks.log import LogSink
from daemon.store.store import Store, StoreTx
from tests.outbox_fakes import NUMBERS, FakeSender, Permanent, Retryable, call, cfg

T0 = 1_795_300_000.0
TEXT = "Sorry we missed you"


class Recorder:
    """A sink that keeps every event it is given."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle(self, event: Event) -> None:
        self.events.append(event)


class CommitProbe:
    """A sink that looks at the database through a connection of its own, as another
    process would: it sees only what is committed."""

    name = "probe"

    def __init__(self, db: Path) -> None:
        self._conn = sqlite3.connect(db)
        #: (event type, the text's state as committed when the event arrived)
        self.seen: list[tuple[str, str | None]] = []

    def handle(self, event: Event) -> None:
        mid = getattr(event, "message_id", None)
        row = self._conn.execute("SELECT state FROM messages WHERE id = ?", (mid,)).fetchone()
        self.seen.append((type(event).__name__, None if row is None else row[0]))

    def close(self) -> None:
        self._conn.close()


class Boom:
    """A sink with a bug: raises on every event."""

    name = "boom"

    def handle(self, event: Event) -> None:
        raise RuntimeError("sink bug")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "tb.db")
    yield s
    await s.close()


def _outbox(store: Store, clock: ManualClock, sender: FakeSender, **tb: object) -> Outbox:
    sender.clock = clock
    return Outbox(cfg(**tb), store, clock, sender)


async def _enqueue(outbox: Outbox, dest: str = NUMBERS[0]) -> int:
    return await outbox.enqueue(
        destination=dest, text=TEXT, template_kind="in_hours", call_ids=[1], parts=1
    )


# -- published once, after the commit, in order ---------------------------------------------------


async def test_a_sent_text_publishes_its_four_events_once_in_order(
    store: Store, tmp_path: Path
) -> None:
    rec, probe = Recorder(), CommitProbe(tmp_path / "tb.db")
    store.bus.add(rec)
    store.bus.add(probe)
    try:
        clock = ManualClock(T0)
        sender = FakeSender()
        outbox = _outbox(store, clock, sender, delay="30s")
        mid = await _enqueue(outbox)
        assert [type(e) for e in rec.events] == [TextWritten]
        await outbox.process_due()  # still in its wait step: nothing changes
        assert len(rec.events) == 1
        clock.advance(30)
        assert await outbox.process_due() == 1
        clock.advance(3600)
        assert await outbox.process_due() == 0  # nothing more: no event more
    finally:
        probe.close()

    assert rec.events == [
        TextWritten(
            message_id=mid,
            destination=NUMBERS[0],
            kind=MessageKind.MISSED_CALL,
            state=MessageState.WAITING,
            due_at=T0 + 30,
            call_ids=(1,),
            line="",
            at=T0,
        ),
        TextChanged(
            message_id=mid,
            destination=NUMBERS[0],
            kind=MessageKind.MISSED_CALL,
            state=MessageState.QUEUED,
            at=T0 + 30,
        ),
        TextChanged(
            message_id=mid,
            destination=NUMBERS[0],
            kind=MessageKind.MISSED_CALL,
            state=MessageState.SENDING,
            at=T0 + 30,
            attempt=1,
        ),
        TextChanged(
            message_id=mid,
            destination=NUMBERS[0],
            kind=MessageKind.MISSED_CALL,
            state=MessageState.SENT,
            at=T0 + 30,
            attempt=1,
            references=(1,),
            sender="fake",
        ),
    ]
    # Each event reached the sink when its state was already committed: another
    # connection saw the row in the very state the event announces.
    assert probe.seen == [
        ("TextWritten", "waiting"),
        ("TextChanged", "queued"),
        ("TextChanged", "sending"),
        ("TextChanged", "sent"),
    ]


async def test_a_rolled_back_batch_publishes_nothing_and_counts_nothing(store: Store) -> None:
    rec = Recorder()
    store.bus.add(rec)

    def doomed(tx: StoreTx) -> None:
        tx.add_reply(NUMBERS[1], "STOP", T0)
        tx.emit(OptOutChanged(number=NUMBERS[1], opted_out=True, source="keyword", at=T0))
        raise RuntimeError("a bug after the writes")

    with pytest.raises(RuntimeError, match="a bug after the writes"):
        await store.batch(doomed)
    assert rec.events == []
    assert await store.counter("replies") == 0
    assert await store.counter("optouts.added") == 0
    async with store.connection.execute("SELECT COUNT(*) FROM replies") as cur:
        assert (await cur.fetchone())[0] == 0  # type: ignore[index]

    # The next unit publishes its own event only: nothing of the rolled-back one leaks.
    reply_id = await store.batch(lambda tx: tx.add_reply(NUMBERS[2], "thanks", T0 + 1))
    assert rec.events == [
        ReplyReceived(reply_id=reply_id, sender=NUMBERS[2], text="thanks", at=T0 + 1)
    ]
    assert await store.counter("replies") == 1
    assert await store.counter("optouts.added") == 0


async def test_events_of_an_open_transaction_wait_for_its_commit(store: Store) -> None:
    rec = Recorder()
    store.bus.add(rec)
    async with store.transaction():
        await store.add_reply(NUMBERS[0], "hello", T0)
        await store.optout_add(NUMBERS[0], T0, source="keyword")
        assert rec.events == []  # written, not yet committed: nobody hears of it
    assert [type(e) for e in rec.events] == [ReplyReceived, OptOutChanged]

    async def doomed() -> None:
        async with store.transaction():
            await store.add_reply(NUMBERS[1], "again", T0 + 1)
            raise LookupError("rolled back")

    with pytest.raises(LookupError, match="rolled back"):
        await doomed()
    assert len(rec.events) == 2
    assert await store.counter("replies") == 1


# -- a failing sink -------------------------------------------------------------------------------


async def test_a_raising_sink_stops_neither_the_others_nor_the_outbox(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="daemon.sinks.events")
    rec = Recorder()
    bus = EventBus([Boom(), rec])
    store = await Store.open(tmp_path / "tb.db", bus=bus)
    try:
        clock = ManualClock(T0)
        sender = FakeSender()
        outbox = _outbox(store, clock, sender, delay="0s")
        mid = await _enqueue(outbox)
        assert await outbox.process_due() == 1
        m = await store.get_message(mid)
        assert m is not None
        assert m.state == MessageState.SENT
    finally:
        await store.close()
    assert sender.sent == [(NUMBERS[0], TEXT)]
    assert [(type(e).__name__, getattr(e, "state", None)) for e in rec.events] == [
        ("TextWritten", MessageState.QUEUED),
        ("TextChanged", MessageState.SENDING),
        ("TextChanged", MessageState.SENT),
    ]
    assert bus.errors["boom"] == 3
    assert bus.errors["recorder"] == 0
    errors = [r for r in caplog.records if r.name == "daemon.sinks.events"]
    # Loud once per sink and error type, then quiet.
    assert [r.levelno for r in errors] == [logging.ERROR, logging.DEBUG, logging.DEBUG]
    assert errors[0].getMessage().startswith("event=sink_error sink=boom on=TextWritten")


# -- the durable counters -------------------------------------------------------------------------


async def test_durable_counters_match_the_events_of_a_decided_and_sent_call(store: Store) -> None:
    clock = ManualClock(T0)
    config = cfg(delay="30s")
    sender = FakeSender(clock=clock)
    outbox = Outbox(config, store, clock, sender)
    pipeline = Pipeline(config, store, outbox, clock, drive_outbox=True)
    counters = store.bus.find(CounterSink)
    assert isinstance(counters, CounterSink)

    c = call(NUMBERS[0], at=T0, outcome=Outcome.NO_ANSWER)
    await pipeline.handle(c)
    clock.advance(3600)
    await pipeline.tick()
    report = await pipeline.report(c.linkedid)
    assert report is not None
    assert (report.decision, report.message) == ("send", "sent")

    for name in ("calls.no_answer", "decisions.send", "texts.sent"):
        assert await store.counter(name) == 1, name
        assert counters[name] == 1, name
    # Every counter in the database is one the sink counted the same.
    async with store.connection.execute(
        "SELECT name, SUM(value) FROM counters GROUP BY name"
    ) as cur:
        stored = {str(r[0]): int(r[1]) for r in await cur.fetchall()}
    assert stored == {"calls.no_answer": 1, "decisions.send": 1, "texts.sent": 1}
    assert {name: counters[name] for name in stored} == stored


# -- QueueSink ------------------------------------------------------------------------------------


class ListSink(QueueSink):
    """A slow sink: delivers into a list, each delivery waiting for `gate` when one is set."""

    name = "list"

    def __init__(self, maxsize: int = 1000, gate: asyncio.Event | None = None) -> None:
        super().__init__(maxsize)
        self.delivered: list[Event] = []
        self.gate = gate

    async def deliver(self, event: Event) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.delivered.append(event)


def _reply(i: int) -> ReplyReceived:
    return ReplyReceived(reply_id=i, sender=NUMBERS[0], text=f"reply {i}", at=T0 + i)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_queue_sink_delivers_in_order_in_its_own_task() -> None:
    sink = ListSink()
    task = asyncio.create_task(sink.run())
    try:
        events = [_reply(i) for i in range(1, 6)]
        for ev in events:
            sink.handle(ev)
        assert sink.delivered == []  # handle only queues
        await asyncio.wait_for(sink.join(), 5)
        assert sink.delivered == events
        assert (sink.dropped, sink.failed, sink.backlog) == (0, 0, 0)
    finally:
        await _stop(task)


async def test_a_full_queue_sink_drops_and_counts_and_never_blocks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="daemon.sinks.events")
    gate = asyncio.Event()
    sink = ListSink(maxsize=2, gate=gate)
    task = asyncio.create_task(sink.run())
    try:
        events = [_reply(i) for i in range(1, 7)]
        for ev in events:
            sink.handle(ev)  # returns at once, full queue or not
        assert sink.dropped == 4
        assert sink.backlog == 2
        overflow = [r for r in caplog.records if "event=sink_overflow" in r.getMessage()]
        assert [r.levelno for r in overflow] == [logging.WARNING] + [logging.DEBUG] * 3
        gate.set()
        await asyncio.wait_for(sink.join(), 5)
        assert sink.delivered == events[:2]
        assert sink.failed == 0
    finally:
        await _stop(task)


# -- the log sink's wording -----------------------------------------------------------------------


def _tc(state: MessageState, **fields: object) -> TextChanged:
    return TextChanged(
        message_id=3,
        destination="+12025550101",
        kind=MessageKind.MISSED_CALL,
        state=state,
        at=T0,
        **fields,  # type: ignore[arg-type]
    )


BASE = "event=message id=3 destination=+12025550101"


@dataclass(frozen=True)
class Wording:
    event: Event
    level: int
    line: str


WORDINGS = {
    "written": Wording(
        TextWritten(
            message_id=3,
            destination="+12025550101",
            kind=MessageKind.MISSED_CALL,
            state=MessageState.WAITING,
            due_at=T0 + 30,
            call_ids=(1, 2),
            line="",
            at=T0,
        ),
        logging.INFO,
        f"{BASE} state=waiting due_in=30s calls=1,2",
    ),
    "merged": Wording(
        TextMerged(
            message_id=3,
            destination="+12025550101",
            state=MessageState.WAITING,
            call_id=9,
            calls=2,
            at=T0,
        ),
        logging.INFO,
        f"{BASE} state=waiting merged_call=9 calls=2",
    ),
    "queued": Wording(_tc(MessageState.QUEUED), logging.INFO, f"{BASE} state=queued"),
    "sending": Wording(
        _tc(MessageState.SENDING, attempt=1), logging.INFO, f"{BASE} state=sending attempt=1"
    ),
    "sent": Wording(
        _tc(MessageState.SENT, references=(7, 8), attempt=1),
        logging.INFO,
        f"{BASE} state=sent refs=7,8",
    ),
    "retry-first": Wording(
        _tc(
            MessageState.QUEUED,
            reason="retry",
            attempt=1,
            retry_in=30.0,
            error="CmsError: AT+CMGS: +CMS ERROR: 38 (network out of order)",
        ),
        logging.WARNING,
        f"{BASE} state=queued reason=retry attempt=1 retry_in=30s"
        ' error="CmsError: AT+CMGS: +CMS ERROR: 38 (network out of order)"',
    ),
    "retry-again": Wording(
        _tc(MessageState.QUEUED, reason="retry", attempt=2, retry_in=60.0, error="OSError: gone"),
        logging.DEBUG,
        f'{BASE} state=queued reason=retry attempt=2 retry_in=60s error="OSError: gone"',
    ),
    "resend-uncertain": Wording(
        _tc(MessageState.QUEUED, reason="resend_uncertain"),
        logging.WARNING,
        f"{BASE} state=queued reason=resend_uncertain",
    ),
    "expired": Wording(
        _tc(MessageState.EXPIRED, reason="max_age", age=7200.4, error="OSError: gone"),
        logging.WARNING,
        f'{BASE} state=expired reason=max_age age=7200s last_error="OSError: gone"',
    ),
    "expired-never-tried": Wording(
        _tc(MessageState.EXPIRED, reason="max_age", age=7201.0),
        logging.WARNING,
        f"{BASE} state=expired reason=max_age age=7201s last_error=-",
    ),
    "uncertain": Wording(
        _tc(
            MessageState.UNCERTAIN,
            reason="send_uncertain",
            error="SendUncertain: AT+CMGS: no answer within 60 s",
        ),
        logging.WARNING,
        f"{BASE} state=uncertain reason=send_uncertain"
        ' error="SendUncertain: AT+CMGS: no answer within 60 s"',
    ),
    "uncertain-restart": Wording(
        _tc(MessageState.UNCERTAIN, reason="in_flight_at_restart"),
        logging.WARNING,
        f"{BASE} state=uncertain reason=in_flight_at_restart",
    ),
    "failed": Wording(
        _tc(
            MessageState.FAILED,
            reason="permanent_error",
            attempt=1,
            error="CmsError: AT+CMGS: +CMS ERROR: 21 (short message transfer rejected)",
        ),
        logging.ERROR,
        f"{BASE} state=failed reason=permanent_error attempts=1"
        ' error="CmsError: AT+CMGS: +CMS ERROR: 21 (short message transfer rejected)"',
    ),
    "cancelled": Wording(
        _tc(MessageState.CANCELLED, reason="called_back"),
        logging.INFO,
        f"{BASE} state=cancelled reason=called_back",
    ),
}


@pytest.mark.parametrize("case", list(WORDINGS))
def test_log_sink_words_each_text_change_as_the_journal_always_showed_it(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    want = WORDINGS[case]
    caplog.set_level(logging.DEBUG)
    LogSink().handle(want.event)
    got = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert got == [("daemon.outbox", want.level, want.line)]


async def test_the_outbox_events_give_the_journal_lines_of_a_troubled_send(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="daemon.outbox")
    clock = ManualClock(T0)
    sender = FakeSender(script=[Retryable("busy"), None, Retryable("busy again")])
    outbox = _outbox(store, clock, sender, delay="0s", retry_backoff="10s")
    mid = await _enqueue(outbox)
    other = await _enqueue(outbox, NUMBERS[1])
    for _ in range(40):
        await outbox.process_due()
        clock.advance(1)
    bad = FakeSender(script=[Permanent("rejected")])
    outbox.set_sender(bad)
    last = await _enqueue(outbox, NUMBERS[2])
    await outbox.process_due()

    lines = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "daemon.outbox" and r.getMessage().startswith("event=message")
    ]
    a = f"event=message id={mid} destination={NUMBERS[0]}"
    b = f"event=message id={other} destination={NUMBERS[1]}"
    c = f"event=message id={last} destination={NUMBERS[2]}"
    assert lines == [
        (logging.INFO, f"{a} state=queued due_in=0s calls=1"),
        (logging.INFO, f"{b} state=queued due_in=0s calls=1"),
        (logging.INFO, f"{a} state=sending attempt=1"),
        (
            logging.WARNING,
            f'{a} state=queued reason=retry attempt=1 retry_in=10s error="Retryable: busy"',
        ),
        (logging.INFO, f"{b} state=sending attempt=1"),
        (logging.INFO, f"{b} state=sent refs=1"),
        (logging.INFO, f"{a} state=sending attempt=2"),
        (
            logging.DEBUG,
            f'{a} state=queued reason=retry attempt=2 retry_in=20s error="Retryable: busy again"',
        ),
        (logging.INFO, f"{a} state=sending attempt=3"),
        (logging.INFO, f"{a} state=sent refs=2"),
        (logging.INFO, f"{c} state=queued due_in=0s calls=1"),
        (logging.INFO, f"{c} state=sending attempt=1"),
        (
            logging.ERROR,
            f'{c} state=failed reason=permanent_error attempts=1 error="Permanent: rejected"',
        ),
    ]


# -- what review found: a broken sink, a cancelled unit, the order of pause lines ---------------


class NamelessBoom:
    """A sink with no name whose error cannot even be shown."""

    def handle(self, event: object) -> None:
        raise BadRepr


class BadRepr(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


async def test_a_sink_that_fails_badly_never_undoes_or_repeats_a_commit(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "tb.db", bus=EventBus([NamelessBoom()]))  # type: ignore[list-item]
    try:
        clock = ManualClock(T0)
        config = cfg(delay="0s")
        sender = FakeSender(clock=clock)
        outbox = Outbox(config, store, clock, sender)
        pipeline = Pipeline(config, store, outbox, clock)
        await pipeline.handle(call(NUMBERS[0], at=T0))
        await outbox.process_due()
        assert len(sender.sent) == 1
        (m,) = await store.messages()
        assert m.state == MessageState.SENT
        assert len(await store.history()) == 1  # recorded once, not again as a "failure"
        assert await store.counter("calls.no_answer") == 1
        assert store.bus.errors  # counted all the same
    finally:
        await store.close()


async def test_a_cancelled_unit_never_lends_its_events_to_the_next(store: Store) -> None:
    import threading

    rec = Recorder()
    store.bus.add(rec)
    entered, gate = threading.Event(), threading.Event()

    def slow(tx: StoreTx) -> int:
        entered.set()
        gate.wait(10)
        return tx.add_reply(NUMBERS[0], "from A", T0)

    def failing(tx: StoreTx) -> None:
        raise ValueError("B fails")

    a = asyncio.create_task(store.batch(slow))
    assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
    a.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await a
    with pytest.raises(ValueError, match="B fails"):
        await store.batch(failing)
    await store.add_reply(NUMBERS[2], "from C", T0 + 2)
    heard = [e.sender for e in rec.events if isinstance(e, ReplyReceived)]
    assert heard == [NUMBERS[2]]  # A's event is not published with another unit's


async def test_a_pause_line_stands_before_its_calls_line(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(T0)
    config = cfg(delay="0s", max_per_hour=1, pumping_max_per_range=0)
    outbox = Outbox(config, store, clock, FakeSender(clock=clock))
    pipeline = Pipeline(config, store, outbox, clock)
    with caplog.at_level(logging.INFO, logger="daemon.pipeline"):
        await pipeline.handle(call(NUMBERS[0], at=T0))
        clock.advance(60)
        second = call(NUMBERS[1], at=clock.now())
        await pipeline.handle(second)
    lines = [r.getMessage() for r in caplog.records if r.name == "daemon.pipeline"]
    paused = next(i for i, x in enumerate(lines) if x.startswith("event=sending_paused "))
    decided = next(i for i, x in enumerate(lines) if f"linkedid={second.linkedid} " in x)
    assert paused == decided - 1
    assert "reason=cap_reached" in lines[decided]
