"""Retention ([database] keep_calls) and the bounded backlog of a database outage.

Real SQLite files; time is a ManualClock (the daily loop is driven by advancing it).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.app.pipeline import Pipeline
from daemon.app.retention import FIRST_PASS_AFTER, INTERVAL, Retention
from daemon.clock import ManualClock
from daemon.config import Config
from daemon.model import MessageKind, MessageState
from daemon.outbox.outbox import Outbox
from daemon.store.retention import Pruned
from daemon.store.store import Store
from tests.outbox_fakes import NUMBERS, call

DAY = 86400.0
T0 = 1_795_300_000.0
#: "Now" for the retention tests: 500 days after T0.
NOW = T0 + 500 * DAY


def config(keep: str = "400d", **textback: object) -> Config:
    return Config(database={"keep_calls": keep}, textback={"delay": "0s", **textback})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "tb.db", durable=False)
    yield s
    await s.close()


async def _count(store: Store, table: str) -> int:
    async with store.connection.execute(f"SELECT COUNT(*) FROM {table}") as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _call_with_text(
    store: Store, pipeline: Pipeline, clock: ManualClock, number: str, at: float
) -> int:
    """A missed call at `at` whose text was sent (one part): returns the message id."""
    clock.set(at)
    await pipeline.handle(call(number, at=at))
    (m,) = [m for m in await store.messages() if m.destination == number and m.created_at == at]
    await store.update_message(m.id, now=at, state=MessageState.SENT)
    await store.add_parts(m.id, [7], at)
    return m.id


async def test_old_calls_go_with_their_decisions_and_texts_and_nothing_else(
    store: Store,
) -> None:
    cfg = config(max_per_hour=0, max_per_day=0, max_per_month=0, pumping_max_per_range=0)
    clock = ManualClock(T0)
    pipeline = Pipeline(cfg, store, Outbox(cfg, store, clock), clock)
    old = T0  # 500 days before NOW
    young = NOW - 10 * DAY
    sent_old = await _call_with_text(store, pipeline, clock, NUMBERS[0], old)
    # an old call whose text is still queued: kept, and so is the call
    clock.set(old + 1)
    await pipeline.handle(call(NUMBERS[2], at=old + 1))
    (stuck,) = [m for m in await store.messages() if m.destination == NUMBERS[2]]
    await store.update_message(stuck.id, now=old, state=MessageState.QUEUED)
    # an old text no call leads to (an opt-out confirmation) and an old reply to the old
    # text, and an opt-out: the text goes, the reply and the opt-out stay
    answer = await store.add_message(
        destination=NUMBERS[3],
        text="You will get no more texts.",
        template_kind=None,
        call_ids=[],
        parts=1,
        encoding="gsm7",
        now=old,
        due_at=old,
        state=MessageState.SENT,
        kind=MessageKind.OPT_OUT_CONFIRMATION,
    )
    await store.optout_add(NUMBERS[3], old)
    db = store.connection
    await db.execute(
        "INSERT INTO replies (sender, text, received_at, number, message_id, call_id, answer_id)"
        " VALUES (?, 'STOP', ?, ?, ?, 1, ?)",
        (NUMBERS[0], old + 60, NUMBERS[0], sent_old, answer),
    )
    await store.add_gap(old, old + 5, "AMI connection lost")
    await _call_with_text(store, pipeline, clock, NUMBERS[1], young)
    assert await _count(store, "calls") == 3

    retention = Retention(cfg, store, ManualClock(NOW), batch=1)
    pruned = await retention.prune_once()

    assert (pruned.calls, pruned.decisions, pruned.messages, pruned.parts, pruned.gaps) == (
        1,
        1,
        2,
        1,
        1,
    )
    hist = await store.history(limit=10)
    assert sorted(h.caller for h in hist) == sorted([NUMBERS[1], NUMBERS[2]])
    left = {m.id: m.state for m in await store.messages()}
    assert stuck.id in left  # never a pending text
    assert sent_old not in left
    assert answer not in left
    assert await _count(store, "replies") == 1  # the caller's words stay, unlinked
    async with db.execute("SELECT call_id, message_id, answer_id FROM replies") as cur:
        assert tuple(await cur.fetchone() or ()) == (None, None, None)
    assert await store.is_opted_out(NUMBERS[3])
    assert await _count(store, "message_parts") == 1  # the young text's part
    async with db.execute("PRAGMA foreign_key_check") as cur:
        assert await cur.fetchall() == []
    # a second pass finds nothing more
    assert (await retention.prune_once()).rows == 0


async def test_a_text_shared_with_a_younger_call_goes_with_its_last_call(store: Store) -> None:
    cfg = config(keep="10d", cooldown="0s")
    clock = ManualClock(T0)
    pipeline = Pipeline(cfg, store, Outbox(cfg, store, clock), clock)
    # two missed calls of one caller: the second joins the first's text (one text)
    await pipeline.handle(call(NUMBERS[0], at=T0))
    first = (await store.messages())[0]
    assert first.state == MessageState.QUEUED  # pending: the next call joins it
    clock.set(T0 + 2 * DAY)
    await pipeline.handle(call(NUMBERS[0], at=T0 + 2 * DAY))  # joins: merged
    assert len(await store.messages()) == 1
    await store.update_message(first.id, now=T0, state=MessageState.SENT)
    retention = Retention(cfg, store, ManualClock(T0 + 11 * DAY), batch=10)
    pruned = await retention.prune_once()
    assert (pruned.calls, pruned.messages) == (1, 0)  # the younger call still leads to it
    assert [m.id for m in await store.messages()] == [first.id]
    retention = Retention(cfg, store, ManualClock(T0 + 13 * DAY), batch=10)
    pruned = await retention.prune_once()
    assert (pruned.calls, pruned.messages) == (1, 1)
    assert await store.messages() == []


async def test_keep_calls_zero_keeps_everything(store: Store) -> None:
    cfg = config(keep="0s")
    clock = ManualClock(T0)
    pipeline = Pipeline(cfg, store, Outbox(cfg, store, clock), clock)
    await pipeline.handle(call(NUMBERS[0], at=T0))
    assert (await Retention(cfg, store, ManualClock(NOW)).prune_once()).rows == 0
    assert await _count(store, "calls") == 1


def _fill(path: Path, n: int, at: float) -> None:
    """`n` old calls, each with a decision, a sent text and a part (plain SQL, fast)."""
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO calls (id, linkedid, caller, caller_name, did, inbound, outcome,"
            " started_at, ended_at, ring_seconds, withheld, recorded_at)"
            " VALUES (?, ?, '+12025550150', '', '5551000', 1, 'abandoned', ?, ?, 3, 0, ?)",
            [(i, f"{at:.0f}.{i}", at + i, at + i + 3, at + i + 3) for i in range(1, n + 1)],
        )
        conn.executemany(
            "INSERT INTO messages (id, destination, text, state, call_ids, created_at,"
            " due_at, updated_at) VALUES (?, '+12025550150', 'x', 'sent', ?, ?, ?, ?)",
            [(i, f"[{i}]", at + i, at + i, at + i) for i in range(1, n + 1)],
        )
        conn.executemany(
            "INSERT INTO decisions (call_id, action, reason, decided_at, message_id)"
            " VALUES (?, 'send', 'missed', ?, ?)",
            [(i, at + i, i) for i in range(1, n + 1)],
        )
        conn.executemany(
            "INSERT INTO message_parts (message_id, part, reference, created_at)"
            " VALUES (?, 1, ?, ?)",
            [(i, i % 256, at + i) for i in range(1, n + 1)],
        )
    conn.close()


async def test_the_pipeline_writes_between_batches(tmp_path: Path) -> None:
    """A long pass never holds the database: a call arriving meanwhile is recorded before
    the pass ends, and each batch is short."""
    path = tmp_path / "big.db"
    s0 = await Store.open(path)  # the schema
    await s0.close()
    _fill(path, 3000, T0)
    store = await Store.open(path, durable=False)
    stop: list[asyncio.Task[Pruned]] = []
    try:
        cfg = config()
        clock = ManualClock(NOW)
        pipeline = Pipeline(cfg, store, Outbox(cfg, store, clock), clock)
        retention = Retention(cfg, store, clock, batch=100)
        task = asyncio.create_task(retention.prune_once())
        stop.append(task)
        await asyncio.sleep(0)  # the pass has started its first batch
        await pipeline.handle(call("+12025550155", at=NOW))
        assert not task.done()  # recorded while the pass still runs
        pruned = await task
        assert pruned.calls == 3000
        assert pruned.messages == 3000
        assert [h.caller for h in await store.history(limit=5)] == ["+12025550155"]
        assert retention.slowest_batch < 1.0  # a generous bound; see README for figures
    finally:
        for t in stop:
            t.cancel()
        await asyncio.gather(*stop, return_exceptions=True)
        await store.close()


async def test_the_daily_loop_runs_on_the_injected_clock(store: Store) -> None:
    cfg = config()
    clock = ManualClock(NOW)  # the call is 500 days old
    await store.record_call(call(NUMBERS[0], at=T0), destination=None, now=T0)
    retention = Retention(cfg, store, clock)
    task = asyncio.create_task(retention.run())
    try:
        await asyncio.sleep(0)
        assert clock.pending == 1  # waiting for its first pass
        assert await _count(store, "calls") == 1
        clock.advance(FIRST_PASS_AFTER)
        await asyncio.wait_for(retention.passed(1), 10)
        assert await _count(store, "calls") == 0
        assert clock.pending == 1  # asleep until tomorrow
        # the next old call waits for the next day's pass
        await store.record_call(call(NUMBERS[1], at=T0), destination=None, now=T0)
        clock.advance(INTERVAL - 1)
        await asyncio.sleep(0)
        assert retention.passes == 1
        assert await _count(store, "calls") == 1
        clock.advance(1)
        await asyncio.wait_for(retention.passed(2), 10)
        assert await _count(store, "calls") == 0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- the backlog of a database outage ---------------------------------------------------------


async def test_backlog_is_capped_and_what_overflows_is_counted_logged_and_saved(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="daemon.pipeline")
    cfg = config()
    clock = ManualClock(T0)
    pipeline = Pipeline(cfg, store, Outbox(cfg, store, clock), clock, max_backlog=3)
    db = store.connection
    await db.execute("PRAGMA query_only = ON")  # the database refuses every write
    calls = [call(n, at=T0 + i) for i, n in enumerate(NUMBERS[:5])]
    for c in calls:
        await pipeline.handle(c)
    assert pipeline.backlog == 3
    assert pipeline.counts["backlog_dropped"] == 2
    lines = [r for r in caplog.records if "event=backlog_overflow" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.ERROR, logging.ERROR]
    assert calls[0].linkedid in lines[0].getMessage()
    assert f"caller={NUMBERS[0]}" in lines[0].getMessage()
    assert "dropped_total=2" in lines[1].getMessage()
    await db.execute("PRAGMA query_only = OFF")
    assert await pipeline.retry_backlog() == 3
    assert sorted(h.caller for h in await store.history()) == sorted(NUMBERS[2:5])
    assert await store.counter("store.backlog_dropped") == 2
    assert any(
        "event=store_recovered" in r.getMessage() and "dropped=2" in r.getMessage()
        for r in caplog.records
    )
