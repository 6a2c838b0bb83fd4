"""An upgrade keeps the database: a copy (SQLite's backup API) named after the old schema
version is taken before any migration runs, the newest few are kept, and a copy that
cannot be made stops the upgrade with nothing changed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from daemon.store import schema
from daemon.store.backup import backup_path, backups, take_backup
from daemon.store.store import Store, StoreError

OLD = schema.SCHEMA_VERSION - 2


def old_database(path: Path, version: int = OLD) -> None:
    """A database as an older textback left it: the first `version` migrations, a call."""
    db = sqlite3.connect(path)
    for script in schema.MIGRATIONS[:version]:
        db.executescript(script)
    db.execute(
        "INSERT INTO calls (linkedid, caller, caller_name, did, inbound, outcome, started_at,"
        " ended_at, ring_seconds, withheld, recorded_at) VALUES"
        " ('1.1', '+12025550123', '', '+12025550100', 1, 'no_answer', 1, 2, 1, 0, 2)"
    )
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


def version_and_calls(path: Path) -> tuple[int, int]:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0], db.execute(
            "SELECT count(*) FROM calls"
        ).fetchone()[0]
    finally:
        db.close()


async def test_upgrade_backs_up_the_old_schema_first(tmp_path: Path) -> None:
    path = tmp_path / "textback.db"
    old_database(path)
    store = await Store.open(path, durable=False)
    await store.close()
    copy = backup_path(path, OLD)
    assert copy.name == f"textback.db.schema{OLD}.bak"
    assert version_and_calls(copy) == (OLD, 1)  # the database as it was
    assert version_and_calls(path) == (schema.SCHEMA_VERSION, 1)
    assert copy.stat().st_mode & 0o777 == path.stat().st_mode & 0o777
    # opening the migrated database again takes no new copy
    store = await Store.open(path, durable=False)
    await store.close()
    assert backups(path) == [copy]


async def test_a_new_database_gets_no_backup(tmp_path: Path) -> None:
    path = tmp_path / "textback.db"
    store = await Store.open(path, durable=False)
    await store.close()
    assert backups(path) == []


def test_the_newest_three_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "textback.db"
    old_database(path, 1)
    for v in (1, 2, 3, 4):
        take_backup(path, v)
    assert [p.name for p in backups(path)] == [f"textback.db.schema{v}.bak" for v in (2, 3, 4)]


async def test_no_backup_no_migration(tmp_path: Path) -> None:
    path = tmp_path / "textback.db"
    old_database(path)
    # the copy's temporary name is taken by a directory: the copy cannot be made
    (tmp_path / f"textback.db.schema{OLD}.bak.part").mkdir()
    with pytest.raises(StoreError, match=f"cannot back up .* from schema {OLD}"):
        await Store.open(path, durable=False)
    assert version_and_calls(path) == (OLD, 1)
