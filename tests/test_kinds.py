"""Message kinds: only a missed-call text waits, merges and is cancelled by a callback;
the other kinds go out at once, under the caps; kind and line are stored and reach the
sender; a version-1 database upgrades with its texts kept. Real SQLite, a ManualClock."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.app.pipeline import Pipeline
from daemon.clock import ManualClock
from daemon.model import MessageKind, MessageState
from daemon.outbox.outbox import CapReached, Outbox
from daemon.sending.recording import RecordingSender
from daemon.sending.sender import SendRequest
from daemon.store.schema import MIGRATIONS
from daemon.store.store import SCHEMA_VERSION, Store
from tests.outbox_fakes import NUMBERS, FakeSender, call, cfg

T0 = 1_795_300_000.0
NOT_MISSED = [k for k in MessageKind if k is not MessageKind.MISSED_CALL]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "tb.db")
    yield s
    await s.close()


async def _put(
    outbox: Outbox,
    kind: MessageKind,
    dest: str = NUMBERS[0],
    text: str = "a text",
    line: str = "",
) -> int:
    return await outbox.enqueue(
        destination=dest, text=text, template_kind=None, call_ids=[], kind=kind, line=line
    )


async def _state(store: Store, mid: int) -> MessageState:
    m = await store.get_message(mid)
    assert m is not None
    return m.state


async def _count_rows(store: Store) -> int:
    async with store.connection.execute("SELECT COUNT(*) FROM messages") as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


# -- only a missed-call text waits ----------------------------------------------------------------


@pytest.mark.parametrize("kind", NOT_MISSED)
async def test_only_a_missed_call_text_waits(store: Store, kind: MessageKind) -> None:
    clock = ManualClock(T0)
    sender = FakeSender(clock=clock)
    outbox = Outbox(cfg(delay="30s"), store, clock, sender)
    other = await _put(outbox, kind, NUMBERS[1], "other kind")
    missed = await _put(outbox, MessageKind.MISSED_CALL, NUMBERS[0], "missed call")
    assert await _state(store, other) == MessageState.QUEUED
    assert await _state(store, missed) == MessageState.WAITING

    assert await outbox.process_due() == 1  # no clock advance
    assert sender.sent == [(NUMBERS[1], "other kind")]
    assert await _state(store, other) == MessageState.SENT
    assert await _state(store, missed) == MessageState.WAITING

    clock.advance(30)
    assert await outbox.process_due() == 1
    assert sender.sent[1:] == [(NUMBERS[0], "missed call")]


# -- only a missed-call text is cancelled by a callback -------------------------------------------


async def test_a_callback_cancels_the_missed_call_text_only(store: Store) -> None:
    clock = ManualClock(T0)
    sender = FakeSender(clock=clock)
    outbox = Outbox(cfg(delay="30s"), store, clock, sender)
    missed = await _put(outbox, MessageKind.MISSED_CALL, NUMBERS[0], "missed call")
    confirm = await _put(outbox, MessageKind.OPT_OUT_CONFIRMATION, NUMBERS[0], "you are out")
    assert await outbox.cancel(NUMBERS[0], "called_back") == [missed]
    m = await store.get_message(missed)
    assert m is not None
    assert (m.state, m.reason) == (MessageState.CANCELLED, "called_back")
    assert await _state(store, confirm) == MessageState.QUEUED
    await outbox.process_due()
    assert sender.sent == [(NUMBERS[0], "you are out")]


# -- a repeat missed call never merges into another kind ------------------------------------------


async def test_a_missed_call_never_merges_into_a_text_of_another_kind(store: Store) -> None:
    clock = ManualClock(T0)
    config = cfg(delay="30s", cooldown="0s")
    sender = FakeSender(clock=clock)
    outbox = Outbox(config, store, clock, sender)
    pipeline = Pipeline(config, store, outbox, clock)
    confirm = await _put(outbox, MessageKind.OPT_OUT_CONFIRMATION, NUMBERS[0], "you are out")
    assert await store.pending_for(NUMBERS[0]) is None
    assert await outbox.pending_for(NUMBERS[0]) is None

    c = call(NUMBERS[0], at=T0)
    await pipeline.handle(c)
    r = await pipeline.report(c.linkedid)
    assert r is not None
    assert (r.decision, r.reason, r.merged, r.message) == ("send", "missed", False, "waiting")
    assert r.message_id is not None
    assert r.message_id != confirm
    own = await store.get_message(r.message_id)
    assert own is not None
    assert own.kind == MessageKind.MISSED_CALL
    assert own.call_ids == [1]
    untouched = await store.get_message(confirm)
    assert untouched is not None
    assert (untouched.kind, untouched.state, untouched.call_ids, untouched.text) == (
        MessageKind.OPT_OUT_CONFIRMATION,
        MessageState.QUEUED,
        [],
        "you are out",
    )
    # The missed-call text is now the one a repeat call joins.
    pending = await store.pending_for(NUMBERS[0])
    assert pending is not None
    assert pending.id == r.message_id


async def test_only_a_missed_call_text_starts_the_cooldown(store: Store) -> None:
    """An answer to HELP is no reason to stay silent about the caller's next missed call;
    a missed-call text is."""
    clock = ManualClock(T0)
    config = cfg(delay="0s", cooldown="24h")
    sender = FakeSender(clock=clock)
    outbox = Outbox(config, store, clock, sender)
    pipeline = Pipeline(config, store, outbox, clock)
    await _put(outbox, MessageKind.HELP, NUMBERS[0], "Reply STOP to opt out")
    await outbox.process_due()
    assert sender.sent == [(NUMBERS[0], "Reply STOP to opt out")]

    clock.advance(60)
    first = call(NUMBERS[0], at=clock.now())
    await pipeline.handle(first)
    r = await pipeline.report(first.linkedid)
    assert r is not None
    assert (r.decision, r.reason) == ("send", "missed")
    await outbox.process_due()

    clock.advance(60)
    again = call(NUMBERS[0], at=clock.now())
    await pipeline.handle(again)
    r = await pipeline.report(again.linkedid)
    assert r is not None
    assert (r.decision, r.reason) == ("suppress", "cooldown")


# -- caps hold for every kind ---------------------------------------------------------------------


@pytest.mark.parametrize("cap", ["max_per_hour", "max_per_day", "max_per_month"])
@pytest.mark.parametrize("kind", [MessageKind.HELP, MessageKind.STAFF_FORWARD])
async def test_caps_hold_for_the_other_kinds(store: Store, cap: str, kind: MessageKind) -> None:
    clock = ManualClock(T0)
    caps = {"max_per_hour": 0, "max_per_day": 0, "max_per_month": 0, cap: 1}
    outbox = Outbox(cfg(delay="30s", **caps), store, clock, FakeSender(clock=clock))
    await _put(outbox, MessageKind.MISSED_CALL, NUMBERS[0])  # live: waiting
    clock.advance(60)
    with pytest.raises(CapReached) as caught:
        await _put(outbox, kind, NUMBERS[1])
    assert caught.value.pause.guard == cap
    assert await _count_rows(store) == 1


async def test_under_the_cap_another_kind_is_written(store: Store) -> None:
    # the control for the test above: the same text with room under the cap
    clock = ManualClock(T0)
    outbox = Outbox(cfg(delay="30s", max_per_hour=2), store, clock, FakeSender(clock=clock))
    await _put(outbox, MessageKind.MISSED_CALL, NUMBERS[0])
    await _put(outbox, MessageKind.HELP, NUMBERS[1])
    assert await _count_rows(store) == 2
    with pytest.raises(CapReached):
        await _put(outbox, MessageKind.HELP, NUMBERS[2])
    assert await _count_rows(store) == 2


# -- kind and line reach the sender ---------------------------------------------------------------


async def test_kind_and_line_are_stored_and_reach_the_sender(store: Store) -> None:
    clock = ManualClock(T0)
    sender = RecordingSender()
    outbox = Outbox(cfg(delay="30s"), store, clock, sender)
    mid = await _put(
        outbox, MessageKind.STAFF_FORWARD, NUMBERS[3], "call the patient", "2025550100"
    )
    m = await store.get_message(mid)
    assert m is not None
    assert (m.kind, m.line, m.sender) == (MessageKind.STAFF_FORWARD, "2025550100", "")
    await outbox.process_due()
    assert sender.requests == [
        SendRequest(
            destination=NUMBERS[3],
            text="call the patient",
            line="2025550100",
            kind=MessageKind.STAFF_FORWARD,
            message_id=mid,
            status_report=True,
        )
    ]
    m = await store.get_message(mid)
    assert m is not None
    assert (m.state, m.kind, m.line, m.sender) == (
        MessageState.SENT,
        MessageKind.STAFF_FORWARD,
        "2025550100",
        "recording",
    )


async def test_a_missed_call_text_carries_the_line_the_caller_dialled(store: Store) -> None:
    clock = ManualClock(T0)
    config = cfg(delay="0s")
    sender = RecordingSender()
    outbox = Outbox(config, store, clock, sender)
    pipeline = Pipeline(config, store, outbox, clock, drive_outbox=True)
    c = call(NUMBERS[2], at=T0, did="2025550177")
    await pipeline.handle(c)
    await pipeline.tick()
    (request,) = sender.requests
    assert (request.destination, request.kind, request.line) == (
        NUMBERS[2],
        MessageKind.MISSED_CALL,
        "2025550177",
    )
    assert request.message_id is not None
    m = await store.get_message(request.message_id)
    assert m is not None
    assert (m.kind, m.line, m.state) == (MessageKind.MISSED_CALL, "2025550177", MessageState.SENT)


# -- migration from schema version 1 --------------------------------------------------------------


def _v1_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(MIGRATIONS[0])
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO messages (destination, text, state, template_kind, call_ids, parts,"
            " encoding, created_at, due_at, updated_at, attempts, next_attempt_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (NUMBERS[4], "Sorry we missed you", "waiting", "in_hours", "[7]", 1, "gsm7",
             T0, T0 + 30, T0, 0, T0 + 30),
        )  # fmt: skip
        conn.commit()
    finally:
        conn.close()


async def test_a_version_1_database_opens_migrated_with_its_texts(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _v1_database(path)
    store = await Store.open(path)
    try:
        async with store.connection.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        assert row is not None
        assert row[0] == SCHEMA_VERSION == len(MIGRATIONS)
        (m,) = await store.messages()
        assert (m.destination, m.text, m.state, m.call_ids, m.template_kind) == (
            NUMBERS[4],
            "Sorry we missed you",
            MessageState.WAITING,
            [7],
            "in_hours",
        )
        assert (m.kind, m.line, m.sender) == (MessageKind.MISSED_CALL, "", "")
        # An old waiting text is still the one a repeat call joins.
        pending = await store.pending_for(NUMBERS[4])
        assert pending is not None
        assert pending.id == m.id
    finally:
        await store.close()
    # Opened again: nothing to migrate, nothing lost.
    again = await Store.open(path)
    try:
        assert [x.id for x in await again.messages()] == [m.id]
    finally:
        await again.close()
