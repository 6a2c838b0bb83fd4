"""The outbox on a real SQLite file with a recording fake sender and a ManualClock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.clock import ManualClock
from daemon.outbox.outbox import Outbox
from daemon.sending.sender import is_retryable
from daemon.store.store import Store
from gsm.errors import CmsError, ModemGone, SendUncertain
from tests.outbox_fakes import NUMBERS, FakeSender, Permanent, Retryable, cfg
from tests.stopping import assert_a_stop_ends_the_wait

T0 = 1_795_300_000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "tb.db")
    yield s
    await s.close()


def _outbox(store: Store, clock: ManualClock, sender: FakeSender | None, **tb: object) -> Outbox:
    if sender is not None:
        sender.clock = clock
    return Outbox(cfg(**tb), store, clock, sender)


async def _enqueue(
    outbox: Outbox, dest: str = NUMBERS[0], text: str = "Sorry we missed you"
) -> int:
    return await outbox.enqueue(
        destination=dest, text=text, template_kind="in_hours", call_ids=[1], parts=1
    )


async def _state(store: Store, mid: int) -> str:
    m = await store.get_message(mid)
    assert m is not None
    return m.state


async def test_written_before_sending_and_sent_after_the_wait(
    store: Store, clock: ManualClock
) -> None:
    sender = FakeSender()
    outbox = _outbox(store, clock, sender, delay="30s")
    mid = await _enqueue(outbox)
    assert await _state(store, mid) == "waiting"
    assert await outbox.process_due() == 0
    clock.advance(29)
    await outbox.process_due()
    assert sender.sent == []
    clock.advance(1)
    assert await outbox.process_due() == 1
    assert sender.sent == [(NUMBERS[0], "Sorry we missed you")]
    m = await store.get_message(mid)
    assert m is not None
    assert (m.state, m.attempts, m.sent_at) == ("sent", 1, T0 + 30)
    assert [p["reference"] for p in await store.message_parts(mid)] == [1]
    # Nothing more to do: never sent twice.
    clock.advance(3600)
    assert await outbox.process_due() == 0
    assert len(sender.sent) == 1


async def test_cancel_in_the_wait_step(store: Store, clock: ManualClock) -> None:
    sender = FakeSender()
    outbox = _outbox(store, clock, sender)
    mid = await _enqueue(outbox)
    other = await _enqueue(outbox, NUMBERS[1])
    clock.advance(10)
    assert await outbox.cancel(NUMBERS[0], "called_back") == [mid]
    clock.advance(60)
    await outbox.process_due()
    assert sender.sent == [(NUMBERS[1], "Sorry we missed you")]
    m = await store.get_message(mid)
    assert m is not None
    assert (m.state, m.reason) == ("cancelled", "called_back")
    assert await _state(store, other) == "sent"
    # Too late to cancel a sent text: nothing changes.
    assert await outbox.cancel(NUMBERS[1], "called_back") == []


async def test_join_extends_the_wait_and_sends_one_text(store: Store, clock: ManualClock) -> None:
    sender = FakeSender()
    outbox = _outbox(store, clock, sender, delay="30s")
    mid = await _enqueue(outbox)
    clock.advance(20)
    pending = await outbox.pending_for(NUMBERS[0])
    assert pending is not None
    assert pending.id == mid
    await outbox.join(pending, 2)
    clock.advance(15)  # 35 s after the first call, 15 s after the second
    await outbox.process_due()
    assert sender.sent == []
    clock.advance(15)
    await outbox.process_due()
    assert len(sender.sent) == 1
    m = await store.get_message(mid)
    assert m is not None
    assert m.call_ids == [1, 2]


async def test_retryable_errors_back_off_exponentially(store: Store, clock: ManualClock) -> None:
    sender = FakeSender(script=[Retryable("network busy"), TimeoutError(), OSError("pty gone")])
    outbox = _outbox(store, clock, sender, delay="0s", retry_backoff="10s", max_attempts=5)
    mid = await _enqueue(outbox)
    for _ in range(200):  # step the clock 1 s at a time
        await outbox.process_due()
        clock.advance(1)
    times = [t - T0 for _, t in sender.attempts]  # type: ignore[operator]
    assert times == [0, 10, 30, 70]  # waits of 10, 20, 40 s
    m = await store.get_message(mid)
    assert m is not None
    assert (m.state, m.attempts) == ("sent", 4)
    assert len(sender.sent) == 1


async def test_max_attempts_then_failed_with_the_last_error(
    store: Store, clock: ManualClock
) -> None:
    sender = FakeSender(script=[Retryable(f"try {i}") for i in range(1, 10)])
    outbox = _outbox(store, clock, sender, delay="0s", retry_backoff="1s", max_attempts=3)
    mid = await _enqueue(outbox)
    for _ in range(20):
        await outbox.process_due()
        clock.advance(5)
    m = await store.get_message(mid)
    assert m is not None
    assert (m.state, m.attempts, m.reason) == ("failed", 3, "max_attempts")
    assert m.last_error == "Retryable: try 3"
    assert len(sender.attempts) == 3
    assert sender.sent == []


async def test_permanent_error_fails_at_once(store: Store, clock: ManualClock) -> None:
    sender = FakeSender(script=[Permanent("+CMS ERROR: 21 short message transfer rejected")])
    outbox = _outbox(store, clock, sender, delay="0s")
    mid = await _enqueue(outbox)
    await outbox.process_due()
    clock.advance(3600)
    await outbox.process_due()
    m = await store.get_message(mid)
    assert m is not None
    assert (m.state, m.reason, m.attempts) == ("failed", "permanent_error", 1)
    assert "short message transfer rejected" in (m.last_error or "")


def test_which_errors_are_retryable() -> None:
    assert is_retryable(TimeoutError())
    assert is_retryable(ConnectionResetError())
    assert is_retryable(Retryable())
    assert is_retryable(ModemGone("unplugged"))
    assert is_retryable(CmsError("AT+CMGS", 331))  # no network service
    assert not is_retryable(CmsError("AT+CMGS", 21))  # rejected
    assert not is_retryable(Permanent())
    assert not is_retryable(ValueError("bad number"))
    # A TimeoutError whose body reached the modem: its own flag wins.
    assert not is_retryable(SendUncertain("AT+CMGS", 60))


@pytest.mark.parametrize(("resend", "state", "sends"), [(False, "uncertain", 0), (True, "sent", 1)])
async def test_send_uncertain_is_not_resent_unless_configured(
    store: Store, clock: ManualClock, resend: bool, state: str, sends: int
) -> None:
    sender = FakeSender(script=[SendUncertain("AT+CMGS", 60)])
    outbox = _outbox(store, clock, sender, delay="0s", resend_uncertain=resend)
    mid = await _enqueue(outbox)
    for _ in range(10):
        await outbox.process_due()
        clock.advance(60)
    m = await store.get_message(mid)
    assert m is not None
    assert m.state == state
    assert len(sender.sent) == sends
    if not resend:
        assert m.reason == "send_uncertain"
        assert "SendUncertain" in (m.last_error or "")


async def test_sender_down_keeps_texts_queued_then_sends(store: Store, clock: ManualClock) -> None:
    sender = FakeSender(ready=False)
    outbox = _outbox(store, clock, sender, delay="30s", max_age="2h")
    mid = await _enqueue(outbox)
    clock.advance(600)
    await outbox.process_due()
    assert await _state(store, mid) == "queued"
    assert sender.attempts == []
    sender.ready = True
    await outbox.process_due()
    assert await _state(store, mid) == "sent"


async def test_no_sender_attached_keeps_texts_queued(store: Store, clock: ManualClock) -> None:
    outbox = _outbox(store, clock, None, delay="0s")
    mid = await _enqueue(outbox)
    await outbox.process_due()
    assert await _state(store, mid) == "queued"
    sender = FakeSender(clock=clock)
    outbox.set_sender(sender)
    await outbox.process_due()
    assert await _state(store, mid) == "sent"


async def test_a_text_that_could_not_go_out_expires(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    sender = FakeSender(ready=False)
    outbox = _outbox(store, clock, sender, delay="30s", max_age="2h")
    mid = await _enqueue(outbox)
    clock.advance(7200)
    await outbox.process_due()
    assert await _state(store, mid) == "queued"  # exactly max_age: still allowed
    clock.advance(1)
    with caplog.at_level(logging.WARNING, logger="daemon.outbox"):
        await outbox.process_due()
    assert await _state(store, mid) == "expired"
    sender.ready = True
    clock.advance(1)
    await outbox.process_due()
    assert sender.attempts == []
    assert any(f"id={mid}" in r.message and "state=expired" in r.message for r in caplog.records)


async def test_one_send_at_a_time(store: Store, clock: ManualClock) -> None:
    sender = FakeSender(gate=asyncio.Event())
    outbox = _outbox(store, clock, sender, delay="0s")
    ids = [await _enqueue(outbox, n) for n in NUMBERS]
    passes = [asyncio.create_task(outbox.process_due()) for _ in range(3)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert sender.gate is not None
    sender.gate.set()
    await asyncio.gather(*passes)
    assert sender.max_in_flight == 1
    assert sorted(n for n, _ in sender.sent) == sorted(NUMBERS)  # each exactly once
    assert [await _state(store, i) for i in ids] == ["sent"] * len(NUMBERS)


async def test_state_changes_are_logged_as_key_value_lines(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    sender = FakeSender()
    outbox = _outbox(store, clock, sender, delay="30s")
    with caplog.at_level(logging.INFO, logger="daemon.outbox"):
        mid = await _enqueue(outbox)
        clock.advance(30)
        await outbox.process_due()
    lines = [r.message for r in caplog.records if f"id={mid} " in r.message]
    states = [part for line in lines for part in line.split() if part.startswith("state=")]
    assert states == ["state=waiting", "state=queued", "state=sending", "state=sent"]
    assert all(f"destination={NUMBERS[0]}" in line for line in lines)


async def test_without_a_wait_step_a_text_is_queued_at_once(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    sender = FakeSender()
    outbox = _outbox(store, clock, sender, delay="0s")
    with caplog.at_level(logging.INFO, logger="daemon.outbox"):
        mid = await _enqueue(outbox)
        assert await _state(store, mid) == "queued"  # durable, and no wait step to end
        await outbox.process_due()
    lines = [r.message for r in caplog.records if f"id={mid} " in r.message]
    states = [part for line in lines for part in line.split() if part.startswith("state=")]
    assert states == ["state=queued", "state=sending", "state=sent"]
    assert await _state(store, mid) == "sent"


async def test_worker_loop_sends_when_the_clock_reaches_the_due_time(
    store: Store, clock: ManualClock
) -> None:
    sender = FakeSender()
    outbox = _outbox(store, clock, sender, delay="30s")
    worker = asyncio.create_task(outbox.run())
    try:
        await outbox.settle()
        mid = await _enqueue(outbox)
        await outbox.settle()
        for _ in range(5):  # let the worker reach its wait
            await asyncio.sleep(0)
        assert clock.pending == 1  # the worker sleeps until the due time, on our clock
        assert sender.sent == []
        clock.advance(30)
        await outbox.settle()
        assert await _state(store, mid) == "sent"
        assert len(sender.sent) == 1
    finally:
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker


async def test_worker_survives_a_locked_database_and_sends_afterwards(
    tmp_path: Path, clock: ManualClock
) -> None:
    import sqlite3

    store = await Store.open(tmp_path / "tb.db", busy_timeout_ms=20)
    sender = FakeSender()
    outbox = _outbox(store, clock, sender, delay="0s")
    mid = await _enqueue(outbox)
    other = sqlite3.connect(tmp_path / "tb.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the database
    worker = asyncio.create_task(outbox.run())
    try:
        await outbox.settle()
        assert outbox.store_errors >= 1
        assert sender.sent == []
        assert await _state(store, mid) == "queued"  # no wait step: queued at once
        other.execute("ROLLBACK")
        clock.advance(120)  # past the store retry backoff
        await outbox.settle()
        assert await _state(store, mid) == "sent"
        assert len(sender.sent) == 1
        assert await store.counter("store.errors") == outbox.store_errors
    finally:
        other.close()
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
        await store.close()


async def test_cancel_while_another_text_is_being_sent(store: Store, clock: ManualClock) -> None:
    sender = FakeSender(gate=asyncio.Event())
    outbox = _outbox(store, clock, sender, delay="0s")
    first = await _enqueue(outbox, NUMBERS[0])
    second = await _enqueue(outbox, NUMBERS[1])
    run = asyncio.create_task(outbox.process_due())
    await asyncio.wait_for(sender.started.wait(), 10)
    assert sender.in_flight == 1
    # The one in flight is past cancelling; the one behind it is not.
    assert await outbox.cancel(NUMBERS[0], "called_back") == []
    assert await outbox.cancel(NUMBERS[1], "called_back") == [second]
    assert sender.gate is not None
    sender.gate.set()
    await run
    assert [n for n, _ in sender.sent] == [NUMBERS[0]]
    assert await _state(store, first) == "sent"
    assert await _state(store, second) == "cancelled"


async def test_state_changes_are_compare_and_set(store: Store, clock: ManualClock) -> None:
    outbox = _outbox(store, clock, FakeSender(), delay="30s")
    mid = await _enqueue(outbox)
    assert await store.update_message(mid, now=T0, expect=("queued",), state="sending") is False
    assert await _state(store, mid) == "waiting"
    assert await store.update_message(mid, now=T0, expect=("waiting",), state="queued") is True
    assert await _state(store, mid) == "queued"


class _SeenClock(ManualClock):
    """A ManualClock that says when someone starts sleeping on it."""

    def __init__(self) -> None:
        super().__init__(T0)
        self.sleeping = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeping.set()
        await super().sleep(seconds)


async def test_database_refusing_the_sent_record_never_resends(tmp_path: Path) -> None:
    """The modem sent it, then the database refused to record it: keep trying the record,
    never the text."""
    import sqlite3

    clock = _SeenClock()

    store = await Store.open(tmp_path / "tb.db", busy_timeout_ms=20)
    other = sqlite3.connect(tmp_path / "tb.db", isolation_level=None)

    class LockAfterSend(FakeSender):
        async def send_sms(
            self, number: str, text: str, *, status_report: bool = True
        ) -> list[int]:
            refs = await super().send_sms(number, text, status_report=status_report)
            other.execute("BEGIN IMMEDIATE")  # the database is busy from now on
            return refs

    sender = LockAfterSend(clock=clock)
    outbox = Outbox(cfg(delay="0s"), store, clock, sender)
    try:
        mid = await _enqueue(outbox)
        run = asyncio.create_task(outbox.process_due())
        await asyncio.wait_for(clock.sleeping.wait(), 10)  # the recorder waits to retry
        assert outbox.store_errors >= 1
        assert not run.done()
        other.execute("ROLLBACK")
        clock.advance(1)
        await run
        assert await _state(store, mid) == "sent"
        assert len(sender.sent) == 1
        clock.advance(3600)
        await outbox.process_due()
        assert len(sender.sent) == 1
    finally:
        other.close()
        await store.close()


async def test_a_stop_landing_while_the_loop_wakes_ends_it(
    store: Store, clock: ManualClock
) -> None:
    """The loop's wait (a wake-up or its timer): a stop at any step must end it."""
    outbox = Outbox(cfg(), store, clock, FakeSender(clock=clock))
    await assert_a_stop_ends_the_wait(lambda: outbox._wait(3600.0), outbox.wake)


async def test_quiet_waits_for_the_texts_in_hand_and_no_longer_than_asked(
    store: Store, clock: ManualClock
) -> None:
    """Work that can wait (a reply safe on the SIM) waits while due texts are being sent,
    and for at most the time it asked."""
    sender = FakeSender(gate=asyncio.Event())
    outbox = _outbox(store, clock, sender, delay="0s")
    await outbox.quiet(10.0)  # nothing in hand: at once
    for n in NUMBERS[:2]:
        await _enqueue(outbox, n)
    passing = asyncio.create_task(outbox.process_due())
    await sender.started.wait()  # the first text is at the modem
    waiting = asyncio.create_task(outbox.quiet(10.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert sender.gate is not None
    sender.gate.set()  # both texts go out: the pass ends
    assert await passing == 2
    await asyncio.wait_for(waiting, 5)

    sender.gate = asyncio.Event()  # a modem that never answers
    sender.started.clear()
    await _enqueue(outbox, NUMBERS[2])
    passing = asyncio.create_task(outbox.process_due())
    await sender.started.wait()
    waiting = asyncio.create_task(outbox.quiet(10.0))
    for _ in range(10):  # until its timer is on the clock
        if clock.pending:
            break
        await asyncio.sleep(0)
    assert clock.pending == 1
    clock.advance(9.9)
    await asyncio.sleep(0)
    assert not waiting.done()
    clock.advance(0.1)
    await asyncio.wait_for(waiting, 5)  # bounded: the reply is kept all the same
    assert not passing.done()
    sender.gate.set()
    await passing
