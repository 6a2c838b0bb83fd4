"""The store on real SQLite files: schema, lock, facts, reports, full disk, locked database."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from daemon.model import Outcome
from daemon.store.store import SCHEMA_VERSION, Store, StoreError, StoreLockedError
from tests.outbox_fakes import NUMBERS, call, cfg

T0 = 1_795_300_000.0  # 2026-11-22 ~ 21:46 UTC


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "tb.db")
    yield s
    await s.close()


async def _message(store: Store, dest: str, at: float, state: str = "waiting") -> int:
    return await store.add_message(
        destination=dest,
        text="hello",
        template_kind="in_hours",
        call_ids=[],
        parts=1,
        encoding="gsm7",
        now=at,
        due_at=at + 30,
        state=state,
    )


async def test_fresh_database_is_migrated_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "tb.db"
    s = await Store.open(path)
    async with s.connection.execute("PRAGMA user_version") as cur:
        assert (await cur.fetchone())[0] == SCHEMA_VERSION  # type: ignore[index]
    async with s.connection.execute("PRAGMA journal_mode") as cur:
        assert (await cur.fetchone())[0] == "wal"  # type: ignore[index]
    await s.record_call(call(), destination=NUMBERS[0], now=T0)
    await s.close()
    # Reopening runs no migration again and keeps the data.
    s = await Store.open(path)
    assert len(await s.history()) == 1
    await s.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tb.db"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StoreError, match="upgrade textback"):
        await Store.open(path)
    # The lock was released on the way out.
    with pytest.raises(StoreError, match="upgrade textback"):
        await Store.open(path)


async def test_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        await Store.open(tmp_path / "nope" / "tb.db")


async def test_second_opener_is_refused_by_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "tb.db"
    first = await Store.open(path)
    with pytest.raises(StoreLockedError, match=r"tb\.db\.lock") as info:
        await Store.open(path)
    assert info.value.lock_path == tmp_path / "tb.db.lock"
    await first.close()
    second = await Store.open(path)  # free again once the owner closed
    await second.close()


async def test_lock_holds_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "tb.db"
    first = await Store.open(path)
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from daemon.store.store import Store, StoreLockedError
        async def main():
            try:
                await Store.open({str(path)!r})
            except StoreLockedError as exc:
                print(exc)
                sys.exit(3)
            sys.exit(0)
        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=subprocess.PIPE, cwd=Path(__file__).parents[1]
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 3
    assert b"in use by another textback daemon" in out
    await first.close()


async def test_reader_works_while_the_daemon_holds_the_lock(store: Store) -> None:
    await store.record_call(call(), destination=NUMBERS[0], now=T0)
    reader = await Store.open(store.path, readonly=True)
    try:
        rows = await reader.history()
        assert [r.caller for r in rows] == [NUMBERS[0]]
        with pytest.raises(StoreError, match="read-only"):
            await reader.optout_add(NUMBERS[1], T0)
    finally:
        await reader.close()


async def test_readonly_open_of_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no database at"):
        await Store.open(tmp_path / "none.db", readonly=True)


async def test_call_decision_and_history(store: Store) -> None:
    c = call(NUMBERS[0], outcome=Outcome.VOICEMAIL, at=T0, voicemail_left=True)
    cid = await store.record_call(c, destination=NUMBERS[0], now=T0)
    mid = await _message(store, NUMBERS[0], T0)
    await store.record_decision(
        cid,
        action="send",
        reason="missed",
        destination=NUMBERS[0],
        template_kind="voicemail",
        text="hello",
        detail="",
        now=T0,
        message_id=mid,
    )
    c2 = call(NUMBERS[1], outcome=Outcome.ANSWERED, at=T0 + 5)
    cid2 = await store.record_call(c2, destination=NUMBERS[1], now=T0 + 5)
    await store.record_decision(
        cid2,
        action="suppress",
        reason="answered",
        destination=NUMBERS[1],
        template_kind=None,
        text=None,
        detail="a person answered",
        now=T0 + 5,
    )
    rows = await store.history()
    assert [(r.caller, r.decision, r.reason, r.message) for r in rows] == [
        (NUMBERS[1], "suppress", "answered", None),
        (NUMBERS[0], "send", "missed", "waiting"),
    ]
    assert rows[1].voicemail_left is True
    only = await store.history(caller=NUMBERS[0])
    assert [r.linkedid for r in only] == [c.linkedid]
    assert await store.history(since=T0 + 1) == rows[:1]
    assert len(await store.history(limit=1)) == 1
    assert await store.counter("calls.voicemail") == 1
    assert await store.counter("suppressed.answered") == 1


async def test_policy_facts_count_caps_cooldown_and_ranges(tmp_path: Path) -> None:
    tz = "America/New_York"
    store = await Store.open(tmp_path / "tb.db", tz=tz)
    try:
        zone = ZoneInfo(tz)
        noon = datetime(2026, 11, 22, 12, 0, tzinfo=zone).timestamp()
        # Yesterday (same month), two hours ago, 10 minutes ago, and a cancelled one.
        await _message(store, "+12025550111", noon - 86400, "sent")
        await _message(store, "+12025550112", noon - 7200, "sent")
        m = await _message(store, NUMBERS[0], noon - 600, "queued")
        await store.update_message(m, now=noon - 500, state="sent", sent_at=noon - 500)
        await _message(store, "+12025550113", noon - 60, "cancelled")
        facts = await store.policy_facts(NUMBERS[0], noon, cfg())
        assert facts.sent_last_hour == 1
        assert facts.sent_today == 2
        assert facts.sent_this_month == 3
        assert facts.last_text_at == noon - 500
        assert facts.opted_out is False
        # +12025550... share 8 digits after '+': four other numbers in that range.
        facts = await store.policy_facts("+12025550114", noon, cfg(pumping_window="1d"))
        assert facts.range_destinations == 4
        facts = await store.policy_facts("+12025550114", noon, cfg(pumping_window="15m"))
        assert facts.range_destinations == 2  # the cancelled one counts: it was attempted
        facts = await store.policy_facts(
            "+12025550114", noon, cfg(pumping_prefix_digits=10, pumping_window="1d")
        )
        assert facts.range_destinations == 3  # +1202555011x only
        await store.optout_add(NUMBERS[0], noon)
        assert (await store.policy_facts(NUMBERS[0], noon, cfg())).opted_out is True
        # A new month starts the monthly count afresh (local time, not UTC).
        dec1 = datetime(2026, 12, 1, 0, 30, tzinfo=zone).timestamp()
        assert (await store.policy_facts(None, dec1, cfg())).sent_this_month == 0
    finally:
        await store.close()


async def test_optouts(store: Store) -> None:
    assert await store.optout_add(NUMBERS[0], T0) is True
    assert await store.optout_add(NUMBERS[0], T0) is False
    await store.optout_add(NUMBERS[1], T0, source="reply")
    assert [n for n, _, _ in await store.optout_list()] == [NUMBERS[0], NUMBERS[1]]
    assert await store.is_opted_out(NUMBERS[1])
    assert await store.optout_remove(NUMBERS[1], T0) is True
    assert await store.optout_remove(NUMBERS[1], T0) is False
    assert not await store.is_opted_out(NUMBERS[1])
    assert await store.optout_count() == 1


async def test_parts_delivery_reports_gaps_replies(store: Store) -> None:
    m1 = await _message(store, NUMBERS[0], T0, "sent")
    m2 = await _message(store, NUMBERS[1], T0, "sent")
    await store.add_parts(m1, [7, 8], T0)
    await store.add_parts(m2, [7], T0 + 1)  # references wrap: the newest part is meant
    assert await store.record_delivery(7, "delivered", T0 + 2) == m2
    assert await store.record_delivery(99, "delivered", T0 + 2) is None
    assert [p["status"] for p in await store.message_parts(m1)] == ["submitted", "submitted"]
    assert [p["status"] for p in await store.message_parts(m2)] == ["delivered"]
    await store.add_gap(T0, T0 + 30, "reconnect")
    assert await store.gaps() == [(T0, T0 + 30, "reconnect")]
    await store.add_reply(NUMBERS[0], "STOP", T0, optout=True)
    assert (await store.stats(T0, 1)).replies == 1


async def test_stats_periods(store: Store) -> None:
    for days_ago in (0, 3, 20, 40):
        at = T0 - days_ago * 86400
        cid = await store.record_call(call(at=at), destination=NUMBERS[0], now=at)
        await store.record_decision(
            cid,
            action="suppress",
            reason="cooldown",
            destination=NUMBERS[0],
            template_kind=None,
            text=None,
            detail="",
            now=at,
        )
    await store.add_message(
        destination=NUMBERS[1],
        text="x",
        template_kind=None,
        call_ids=[],
        parts=1,
        encoding="gsm7",
        now=T0,
        due_at=T0,
        state="cancelled",
    )
    counts = [
        (await store.stats(T0, d)).calls.get("no_answer", 0) for d in (1, 7, 30)
    ]  # today, 7 days, 30 days
    assert counts == [1, 2, 3]
    today = await store.stats(T0, 1)
    assert today.suppressed == {"cooldown": 1, "cancelled": 1}
    assert today.texts == {"cancelled": 1}
    assert today.counters["calls.no_answer"] == 1


async def test_full_disk_is_an_error_and_nothing_half_written(store: Store) -> None:
    db = store.connection
    async with db.execute("PRAGMA page_count") as cur:
        pages = (await cur.fetchone())[0]  # type: ignore[index]
    await db.execute(f"PRAGMA max_page_count = {pages}")
    big = call(NUMBERS[0], at=T0)

    async def unit() -> None:
        async with store.transaction():
            cid = await store.record_call(big, destination=NUMBERS[0], now=T0)
            await _message(store, NUMBERS[0], T0)
            await store.record_decision(
                cid,
                action="send",
                reason="missed",
                destination=NUMBERS[0],
                template_kind=None,
                text="x" * 500,
                detail="",
                now=T0,
            )

    landed = 0
    with pytest.raises(StoreError, match="full"):  # noqa: PT012 - fill until it refuses
        while landed < 500:
            await unit()
            landed += 1
    # Every call that landed has its decision and message: the failed unit rolled back.
    async with db.execute("SELECT COUNT(*) FROM calls") as cur:
        n_calls = (await cur.fetchone())[0]  # type: ignore[index]
    async with db.execute("SELECT COUNT(*) FROM decisions") as cur:
        n_dec = (await cur.fetchone())[0]  # type: ignore[index]
    async with db.execute("SELECT COUNT(*) FROM messages") as cur:
        n_msg = (await cur.fetchone())[0]  # type: ignore[index]
    assert n_calls == n_dec == n_msg == landed
    await db.execute("PRAGMA max_page_count = 1073741823")
    await store.record_call(big, destination=NUMBERS[0], now=T0)  # room again: it lands


async def test_locked_database_is_an_error_then_works(tmp_path: Path) -> None:
    path = tmp_path / "tb.db"
    store = await Store.open(path, busy_timeout_ms=50)
    try:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="locked"):
            await store.record_call(call(), destination=NUMBERS[0], now=T0)
        other.execute("ROLLBACK")
        other.close()
        await store.record_call(call(), destination=NUMBERS[0], now=T0)
        assert len(await store.history()) == 1
    finally:
        await store.close()


async def test_concurrent_writers_in_one_process_do_not_mix_transactions(store: Store) -> None:
    async def unit(i: int) -> None:
        async with store.transaction():
            cid = await store.record_call(call(at=T0 + i), destination=NUMBERS[0], now=T0)
            await asyncio.sleep(0)  # let the other tasks try to interleave
            if i % 2:
                raise RuntimeError("roll me back")
            await store.bump("test", now=T0)
            assert cid > 0

    results = await asyncio.gather(*(unit(i) for i in range(10)), return_exceptions=True)
    assert sum(isinstance(r, RuntimeError) for r in results) == 5
    assert len(await store.history()) == 5
    assert await store.counter("test") == 5


async def test_a_failing_migration_leaves_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.store.schema as schema_mod

    path = tmp_path / "tb.db"
    s = await Store.open(path)
    await s.optout_add(NUMBERS[0], T0)
    await s.close()
    broken = "CREATE TABLE extra (x INTEGER); INSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(schema_mod, "MIGRATIONS", (*schema_mod.MIGRATIONS, broken))
    with pytest.raises(StoreError, match="no_such_table"):
        await Store.open(path)
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        assert "extra" not in tables  # the half-done step rolled back
        assert con.execute("SELECT number FROM optouts").fetchall() == [(NUMBERS[0],)]
    finally:
        con.close()
