"""Storage: one SQLite file in WAL mode through aiosqlite, owned by one daemon.

Everything the daemon saw and did is kept here: calls with their outcome, decisions with
their reason word, the outbox (messages and their parts), replies, opt-outs, AMI gaps and
counters by day. The schema is versioned with `PRAGMA user_version`; migrations run at
open. An exclusive `flock` on "<db>.lock" makes sure one daemon owns a database, so two
instances cannot double-text. Read-only openers (`textback stats`, `history`) take no lock.

Errors from SQLite (full disk, locked database, I/O) surface as `StoreError`; callers log,
count and retry them: nothing is dropped on the floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar, cast
from zoneinfo import ZoneInfo

import aiosqlite

from daemon.config import Config
from daemon.decide.policy import PolicyFacts
from daemon.logsetup import kv
from daemon.model import FinishedCall

# The journal name operators filter on: kept stable when modules move.
log = logging.getLogger("daemon.store")

T = TypeVar("T")

#: Seconds in an hour, for the hourly cap's count.
HOUR = 3600.0
#: Waiting this long for another connection's write lock before SQLite says "locked".
BUSY_TIMEOUT_MS = 5000

#: Message states in which a text went out, or may still go out: these count for caps,
#: cooldown and the pumping guard.
LIVE_STATES = ("waiting", "queued", "sending", "sent", "uncertain")
#: States in which a text is still pending (not yet handed to the modem).
PENDING_STATES = ("waiting", "queued")
#: Every message state.
MESSAGE_STATES = (
    "waiting",
    "queued",
    "sending",
    "sent",
    "failed",
    "cancelled",
    "expired",
    "uncertain",
)

# Each entry moves the schema from version i to i+1; never edit a released one, add more.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        linkedid TEXT NOT NULL,
        caller TEXT NOT NULL,
        caller_name TEXT NOT NULL,
        did TEXT NOT NULL,
        inbound INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL NOT NULL,
        ring_seconds REAL NOT NULL,
        voicemail_left INTEGER,
        withheld INTEGER NOT NULL,
        dialled TEXT NOT NULL DEFAULT '',
        answered_by TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL DEFAULT '',
        destination TEXT,
        recorded_at REAL NOT NULL
    );
    CREATE INDEX calls_ended ON calls(ended_at);
    CREATE INDEX calls_linkedid ON calls(linkedid);
    CREATE INDEX calls_caller ON calls(caller);
    CREATE INDEX calls_destination ON calls(destination);
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        call_id INTEGER NOT NULL REFERENCES calls(id),
        action TEXT NOT NULL CHECK (action IN ('send', 'suppress')),
        reason TEXT NOT NULL,
        destination TEXT,
        template_kind TEXT,
        text TEXT,
        detail TEXT NOT NULL DEFAULT '',
        decided_at REAL NOT NULL,
        message_id INTEGER REFERENCES messages(id),
        merged INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX decisions_call ON decisions(call_id);
    CREATE INDEX decisions_time ON decisions(decided_at);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        text TEXT NOT NULL,
        state TEXT NOT NULL,
        template_kind TEXT,
        call_ids TEXT NOT NULL DEFAULT '[]',
        parts INTEGER NOT NULL DEFAULT 0,
        encoding TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        due_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt_at REAL,
        sent_at REAL,
        reason TEXT
    );
    CREATE INDEX messages_dest ON messages(destination, state);
    CREATE INDEX messages_state ON messages(state, created_at);
    CREATE INDEX messages_created ON messages(created_at);
    CREATE TABLE message_parts (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages(id),
        part INTEGER NOT NULL,
        reference INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'submitted',
        status_at REAL,
        created_at REAL NOT NULL
    );
    CREATE INDEX parts_ref ON message_parts(reference);
    CREATE TABLE replies (
        id INTEGER PRIMARY KEY,
        sender TEXT NOT NULL,
        text TEXT NOT NULL,
        received_at REAL NOT NULL,
        optout INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX replies_time ON replies(received_at);
    CREATE TABLE optouts (
        number TEXT PRIMARY KEY,
        added_at REAL NOT NULL,
        source TEXT NOT NULL DEFAULT 'cli'
    );
    CREATE TABLE ami_gaps (
        id INTEGER PRIMARY KEY,
        started_at REAL NOT NULL,
        ended_at REAL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE counters (
        name TEXT NOT NULL,
        day TEXT NOT NULL,
        value INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (name, day)
    );
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)


class StoreError(Exception):
    """The database cannot do what was asked (full disk, locked, I/O error, bad file)."""


class StoreLockedError(StoreError):
    """Another daemon owns this database (its lock file is held)."""

    def __init__(self, db_path: Path, lock_path: Path) -> None:
        self.db_path = db_path
        self.lock_path = lock_path
        super().__init__(
            f"database {db_path} is in use by another textback daemon "
            f"(lock {lock_path} is held); only one daemon may own a database"
        )


@dataclass(slots=True)
class Message:
    """One row of the outbox."""

    id: int
    destination: str
    text: str
    state: str
    template_kind: str | None
    call_ids: list[int]
    parts: int
    encoding: str
    created_at: float
    due_at: float
    updated_at: float
    attempts: int
    last_error: str | None
    next_attempt_at: float | None
    sent_at: float | None
    reason: str | None


@dataclass(slots=True)
class HistoryRow:
    """One call with its decision and message state, as `textback history` shows it."""

    call_id: int
    linkedid: str
    caller: str
    caller_name: str
    did: str
    outcome: str
    ended_at: float
    ring_seconds: float
    voicemail_left: bool | None
    decision: str | None
    reason: str | None
    detail: str
    message_id: int | None
    message: str | None  # message state, "merged" for a call joined to another's text
    message_reason: str | None  # why a text was cancelled, or its last error
    text: str | None


@dataclass(slots=True)
class PeriodStats:
    """Counts over one period (today, 7 days, 30 days)."""

    calls: dict[str, int] = field(default_factory=dict)
    texts: dict[str, int] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)
    replies: int = 0
    optouts_added: int = 0
    counters: dict[str, int] = field(default_factory=dict)


def _row_message(row: sqlite3.Row) -> Message:
    return Message(
        id=row["id"],
        destination=row["destination"],
        text=row["text"],
        state=row["state"],
        template_kind=row["template_kind"],
        call_ids=list(json.loads(row["call_ids"])),
        parts=row["parts"],
        encoding=row["encoding"],
        created_at=row["created_at"],
        due_at=row["due_at"],
        updated_at=row["updated_at"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        next_attempt_at=row["next_attempt_at"],
        sent_at=row["sent_at"],
        reason=row["reason"],
    )


def _placeholders(items: Sequence[object]) -> str:
    return ",".join("?" for _ in items)


_MESSAGE_COLUMNS = frozenset(
    {
        "state",
        "text",
        "template_kind",
        "call_ids",
        "parts",
        "encoding",
        "due_at",
        "attempts",
        "last_error",
        "next_attempt_at",
        "sent_at",
        "reason",
    }
)
#: States a text ends in; each bumps its `texts.<state>` counter when reached.
_FINAL_STATES = ("sent", "failed", "cancelled", "expired", "uncertain")


class StoreTx:
    """The store's statements, run synchronously on the database thread.

    `Store.batch(fn)` hands one of these to `fn` inside one transaction, so a whole unit
    of work (a burst of finished calls, say) costs one hop to the database thread and one
    commit, not one hop per statement. Store's async methods use the same statements.
    Never keep one beyond the function it was handed to.
    """

    def __init__(self, store: Store, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn

    def _scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = self._conn.execute(sql, tuple(params)).fetchone()
        return None if row is None else row[0]

    def bump(self, name: str, n: int, now: float) -> None:
        """Add `n` to the counter `name` of the day of `now`."""
        self._conn.execute(
            "INSERT INTO counters (name, day, value) VALUES (?,?,?)"
            " ON CONFLICT (name, day) DO UPDATE SET value = value + excluded.value",
            (name, self._store.day_of(now), n),
        )

    def record_call(self, call: FinishedCall, *, destination: str | None, now: float) -> int:
        """Keep a finished call; returns its id."""
        cur = self._conn.execute(
            "INSERT INTO calls (linkedid, caller, caller_name, did, inbound, outcome,"
            " started_at, ended_at, ring_seconds, voicemail_left, withheld, dialled,"
            " answered_by, channel, destination, recorded_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                call.linkedid,
                call.caller,
                call.caller_name,
                call.did,
                int(call.inbound),
                str(call.outcome),
                call.started_at,
                call.ended_at,
                call.ring_seconds,
                None if call.voicemail_left is None else int(call.voicemail_left),
                int(call.withheld),
                call.dialled,
                call.answered_by,
                call.channel,
                destination,
                now,
            ),
        )
        self.bump(f"calls.{call.outcome}", 1, call.ended_at)
        assert cur.lastrowid is not None
        return cur.lastrowid

    def record_decision(
        self,
        call_id: int,
        *,
        action: str,
        reason: str,
        destination: str | None,
        template_kind: str | None,
        text: str | None,
        detail: str,
        now: float,
        message_id: int | None = None,
        merged: bool = False,
    ) -> int:
        """Keep the decision taken for a call; returns its id."""
        cur = self._conn.execute(
            "INSERT INTO decisions (call_id, action, reason, destination, template_kind,"
            " text, detail, decided_at, message_id, merged)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                call_id,
                action,
                reason,
                destination,
                template_kind,
                text,
                detail,
                now,
                message_id,
                int(merged),
            ),
        )
        if action == "send":
            self.bump("decisions.send", 1, now)
        else:
            self.bump(f"suppressed.{reason}", 1, now)
        assert cur.lastrowid is not None
        return cur.lastrowid

    def policy_facts(self, destination: str | None, now: float, cfg: Config) -> PolicyFacts:
        """What the policy needs to know about a destination and about recent sending.

        A count serves only its cap, and the range count only the pumping guard: with
        every cap off (0) the counts are not taken and read 0, and with the guard off the
        range is not scanned and reads 0.
        """
        tb = cfg.textback
        hour = today = month = 0
        live = _placeholders(LIVE_STATES)
        if tb.max_per_hour or tb.max_per_day or tb.max_per_month:
            # One pass over this month's live texts answers all three caps.
            h, d, m = now - HOUR, self._store.day_start(now), self._store.month_start(now)
            row = self._conn.execute(
                "SELECT COALESCE(SUM(created_at >= ?), 0), COALESCE(SUM(created_at >= ?), 0),"
                f" COALESCE(SUM(created_at >= ?), 0) FROM messages WHERE state IN ({live})"
                " AND created_at >= ?",
                (h, d, m, *LIVE_STATES, min(h, d, m)),
            ).fetchone()
            hour, today, month = int(row[0]), int(row[1]), int(row[2])
        if destination is None:
            return PolicyFacts(sent_last_hour=hour, sent_today=today, sent_this_month=month)
        opted = self._scalar("SELECT 1 FROM optouts WHERE number = ?", (destination,))
        # A text counts for the cooldown from when it went (or may have gone) out.
        last = self._scalar(
            f"SELECT MAX(COALESCE(sent_at, updated_at)) FROM messages"
            f" WHERE destination = ? AND state IN ({live})",
            (destination, *LIVE_STATES),
        )
        in_range = 0
        if tb.pumping_max_per_range:
            prefix = destination[: 1 + tb.pumping_prefix_digits]
            in_range = int(
                self._scalar(
                    "SELECT COUNT(DISTINCT destination) FROM messages"
                    " WHERE substr(destination, 1, ?) = ? AND created_at >= ?"
                    " AND destination != ?",
                    (len(prefix), prefix, now - tb.pumping_window, destination),
                )
            )
        return PolicyFacts(
            opted_out=opted is not None,
            last_text_at=None if last is None else float(last),
            sent_last_hour=hour,
            sent_today=today,
            sent_this_month=month,
            range_destinations=in_range,
        )

    def add_message(
        self,
        *,
        destination: str,
        text: str,
        template_kind: str | None,
        call_ids: Sequence[int],
        parts: int,
        encoding: str,
        now: float,
        due_at: float,
        state: str = "waiting",
    ) -> int:
        """Write a new text to the outbox (before anything is sent); returns its id."""
        cur = self._conn.execute(
            "INSERT INTO messages (destination, text, state, template_kind, call_ids,"
            " parts, encoding, created_at, due_at, updated_at, next_attempt_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                destination,
                text,
                state,
                template_kind,
                json.dumps(list(call_ids)),
                parts,
                encoding,
                now,
                due_at,
                now,
                due_at,
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def get_message(self, message_id: int) -> Message | None:
        """One outbox row by id."""
        row = self._conn.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return None if row is None else _row_message(row)

    def messages(
        self, states: Sequence[str] | None = None, destination: str | None = None
    ) -> list[Message]:
        """Outbox rows, oldest first, optionally filtered by state and destination."""
        sql = "SELECT * FROM messages WHERE 1=1"
        params: list[Any] = []
        if states is not None:
            sql += f" AND state IN ({_placeholders(states)})"
            params += list(states)
        if destination is not None:
            sql += " AND destination = ?"
            params.append(destination)
        rows = self._conn.execute(sql + " ORDER BY id", params).fetchall()
        return [_row_message(r) for r in rows]

    def pending_for(self, destination: str) -> Message | None:
        """The newest text still waiting or queued for a destination, if any."""
        row = self._conn.execute(
            f"SELECT * FROM messages WHERE state IN ({_placeholders(PENDING_STATES)})"
            " AND destination = ? ORDER BY id DESC LIMIT 1",
            (*PENDING_STATES, destination),
        ).fetchone()
        return None if row is None else _row_message(row)

    def update_message(
        self,
        message_id: int,
        *,
        now: float,
        expect: Sequence[str] | None = None,
        **fields: Any,
    ) -> bool:
        """Change columns of an outbox row; see `Store.update_message`."""
        bad = set(fields) - _MESSAGE_COLUMNS
        if bad:
            raise ValueError(f"not message columns: {sorted(bad)}")
        if "call_ids" in fields:
            fields["call_ids"] = json.dumps(list(fields["call_ids"]))
        cols = ", ".join(f"{k} = ?" for k in fields)
        sql = f"UPDATE messages SET {cols}, updated_at = ? WHERE id = ?"
        params: list[Any] = [*fields.values(), now, message_id]
        if expect is not None:
            sql += f" AND state IN ({_placeholders(expect)})"
            params += list(expect)
        cur = self._conn.execute(sql, params)
        if cur.rowcount == 0:
            return False
        state = fields.get("state")
        if state in _FINAL_STATES:
            self.bump(f"texts.{state}", 1, now)
        if state == "cancelled" and fields.get("reason"):
            self.bump(f"cancelled.{fields['reason']}", 1, now)
        return True

    def add_parts(self, message_id: int, references: Sequence[int], now: float) -> None:
        """Keep the modem's message reference of each part of a sent text."""
        self._conn.executemany(
            "INSERT INTO message_parts (message_id, part, reference, created_at) VALUES (?,?,?,?)",
            [(message_id, i + 1, ref, now) for i, ref in enumerate(references)],
        )

    def count_messages(self, states: Sequence[str]) -> int:
        """How many outbox rows are in one of `states`."""
        return int(
            self._scalar(
                f"SELECT COUNT(*) FROM messages WHERE state IN ({_placeholders(states)})",
                states,
            )
        )

    def too_old(self, now: float, max_age: float) -> list[Message]:
        """Pending texts older than `max_age` at `now` (to expire), oldest first."""
        rows = self._conn.execute(
            f"SELECT * FROM messages WHERE state IN ({_placeholders(PENDING_STATES)})"
            " AND ? - created_at > ? ORDER BY id",
            (*PENDING_STATES, now, max_age),
        ).fetchall()
        return [_row_message(r) for r in rows]

    def release_due(self, now: float) -> list[tuple[int, str]]:
        """End the wait step of every text due by `now`: `waiting` -> `queued`, one
        statement. Returns (id, destination) of each, in id order."""
        rows = self._conn.execute(
            "UPDATE messages SET state = 'queued', next_attempt_at = ?, updated_at = ?"
            " WHERE state = 'waiting' AND due_at <= ? RETURNING id, destination",
            (now, now, now),
        ).fetchall()
        return sorted((int(r[0]), str(r[1])) for r in rows)

    def queued(self) -> list[tuple[int, float | None]]:
        """(id, next_attempt_at) of every queued text, oldest first."""
        rows = self._conn.execute(
            "SELECT id, next_attempt_at FROM messages WHERE state = 'queued' ORDER BY id"
        ).fetchall()
        return [(int(r[0]), r[1]) for r in rows]

    def outbox_times(self) -> tuple[float | None, float | None, float | None, int]:
        """For the outbox's next wake-up, over the pending texts: the oldest created_at,
        the earliest due_at of a waiting text, the earliest next attempt of a queued one
        (its due_at when it has none), and how many are queued."""
        row = self._conn.execute(
            "SELECT MIN(created_at),"
            " MIN(CASE WHEN state = 'waiting' THEN due_at END),"
            " MIN(CASE WHEN state = 'queued' THEN COALESCE(next_attempt_at, due_at) END),"
            " COALESCE(SUM(state = 'queued'), 0)"
            f" FROM messages WHERE state IN ({_placeholders(PENDING_STATES)})",
            PENDING_STATES,
        ).fetchone()
        return row[0], row[1], row[2], int(row[3])

    def mark_sent(self, message_id: int, references: Sequence[int], now: float) -> None:
        """A text went out: `sent`, with the modem's reference of each part."""
        self.update_message(message_id, now=now, state="sent", sent_at=now, last_error=None)
        self.add_parts(message_id, references, now)


def _atomic(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """BEGIN IMMEDIATE, fn, COMMIT (ROLLBACK on any error), all on the database thread."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        out = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return out


class Store:
    """The daemon's database. Open with `await Store.open(path)`; close with `close()`."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: Path,
        *,
        lock_file: IO[bytes] | None,
        readonly: bool,
        tz: str,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> None:
        self._db = db
        self._busy_ms = busy_timeout_ms
        self._durable = True
        self.path = path
        self._lock_file = lock_file
        self.readonly = readonly
        self._tz = ZoneInfo(tz)
        self._mutex = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._in_tx = False

    # -- opening and closing -------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        lock: bool = True,
        tz: str = "UTC",
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        durable: bool = True,
    ) -> Store:
        """Open (creating and migrating if needed) the database at `path`.

        `lock` takes the exclusive daemon lock (StoreLockedError if another holds it).
        `readonly` opens an existing database for reading only, with no lock, no migration.
        `tz` is the zone whose calendar days the counters and caps use.
        `busy_timeout_ms` is how long to wait for another connection's write lock.
        `durable=False` skips fsync (synchronous=OFF): only for tests and dry runs.
        """
        p = Path(path)
        if readonly:
            _check_path(p, must_exist=True)
            try:
                db = await aiosqlite.connect(f"file:{p}?mode=ro", uri=True, isolation_level=None)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open database {p}: {exc}") from exc
            store = cls(
                db, p, lock_file=None, readonly=True, tz=tz, busy_timeout_ms=busy_timeout_ms
            )
            try:
                await store._setup_readonly()
            except BaseException:
                await db.close()
                raise
            return store
        _check_path(p, must_exist=False)
        lock_file = _take_lock(p) if lock else None
        try:
            db = await aiosqlite.connect(str(p), isolation_level=None)
        except sqlite3.Error as exc:
            _release_lock(lock_file)
            raise StoreError(f"cannot open database {p}: {exc}") from exc
        store = cls(
            db, p, lock_file=lock_file, readonly=False, tz=tz, busy_timeout_ms=busy_timeout_ms
        )
        store._durable = durable
        try:
            await store._setup()
        except BaseException:
            await store.close()
            raise
        return store

    async def _setup(self) -> None:
        self._db.row_factory = sqlite3.Row
        try:
            await self._db.execute(f"PRAGMA busy_timeout = {int(self._busy_ms)}")
            await self._db.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable across process crashes in WAL mode; FULL adds power-cut safety
            # for the last transaction at the cost of an fsync per commit, worth it here.
            sync = "FULL" if self._durable else "OFF"
            await self._db.execute(f"PRAGMA synchronous = {sync}")
            await self._db.execute("PRAGMA foreign_keys = ON")
            await self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot set up database {self.path}: {exc}") from exc

    async def _setup_readonly(self) -> None:
        self._db.row_factory = sqlite3.Row
        try:
            await self._db.execute(f"PRAGMA busy_timeout = {int(self._busy_ms)}")
            version = await self._scalar("PRAGMA user_version")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read database {self.path}: {exc}") from exc
        if version == 0:
            raise StoreError(f"{self.path} is not a textback database (no schema)")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this textback knows up to "
                f"{SCHEMA_VERSION}: upgrade textback"
            )

    async def _migrate(self) -> None:
        version = int(await self._scalar("PRAGMA user_version") or 0)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this textback knows up to "
                f"{SCHEMA_VERSION}: upgrade textback"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            script = _MIGRATIONS[target - 1]
            # executescript commits first; the whole step plus the version bump is one
            # transaction, so a crash mid-migration leaves the old version intact.
            await self._db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {target};\nCOMMIT;"
            )
            log.info(kv(event="migrated", database=self.path, version=target))

    async def close(self) -> None:
        """Close the connection and release the daemon lock."""
        try:
            await self._db.close()
        finally:
            _release_lock(self._lock_file)
            self._lock_file = None

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connection(self) -> aiosqlite.Connection:
        """The raw connection (tests use it for PRAGMAs such as max_page_count)."""
        return self._db

    # -- transactions ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """One atomic unit of writes; re-entrant within the task that opened it.

        One connection serves the whole daemon, so a task-owned lock keeps other tasks'
        statements out of an open transaction.
        """
        task = asyncio.current_task()
        if self._owner is not None and self._owner is task:
            if self._in_tx:
                yield
                return
            # Holding the lock for a read; upgrade to a transaction.
            async with self._tx_body():
                yield
            return
        async with self._mutex:
            self._owner = task
            try:
                async with self._tx_body():
                    yield
            finally:
                self._owner = None

    @contextlib.asynccontextmanager
    async def _tx_body(self) -> AsyncIterator[None]:
        if self.readonly:
            raise StoreError(f"database {self.path} is open read-only")
        try:
            await self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {exc}") from exc
        self._in_tx = True
        try:
            yield
        except sqlite3.Error as exc:
            await self._rollback()
            raise StoreError(f"database {self.path}: {exc}") from exc
        except BaseException:
            await self._rollback()
            raise
        else:
            try:
                await self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                await self._rollback()
                raise StoreError(f"database {self.path}: {exc}") from exc
        finally:
            self._in_tx = False

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            await self._db.execute("ROLLBACK")

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        """Serialise a read with other tasks' transactions; sqlite errors become StoreError."""
        task = asyncio.current_task()
        if self._owner is not None and self._owner is task:
            try:
                yield
            except sqlite3.Error as exc:
                raise StoreError(f"database {self.path}: {exc}") from exc
            return
        async with self._mutex:
            self._owner = task
            try:
                yield
            except sqlite3.Error as exc:
                raise StoreError(f"database {self.path}: {exc}") from exc
            finally:
                self._owner = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on the connection's thread: one hop for any number of statements."""
        # aiosqlite has no public call for this; `_execute` is how each of its own methods
        # runs a function on its worker thread (the same in aiosqlite 0.20 to 0.22).
        db = self._db
        return cast(T, await db._execute(fn, db._conn))  # type: ignore[no-untyped-call]

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` atomically: inside this task's open transaction, or as its own
        transaction (BEGIN, fn, COMMIT in one hop to the database thread)."""
        task = asyncio.current_task()
        if self._owner is not None and self._owner is task:
            if self._in_tx:
                return await self._run(fn)  # the open transaction handles errors
            return await self._atomic_hop(fn)
        async with self._mutex:
            self._owner = task
            try:
                return await self._atomic_hop(fn)
            finally:
                self._owner = None

    async def _atomic_hop(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self.readonly:
            raise StoreError(f"database {self.path} is open read-only")
        try:
            return await self._run(lambda conn: _atomic(conn, fn))
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {exc}") from exc

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._reading():
            return await self._run(fn)

    async def batch(self, fn: Callable[[StoreTx], T]) -> T:
        """Run `fn(tx)` as one transaction on the database thread: one hop, one commit.

        For a unit of many statements (the pipeline records a burst of calls this way).
        Any exception in `fn` rolls the whole unit back; SQLite errors become StoreError.
        `fn` runs off the event loop: it must not touch asyncio objects, and should leave
        logging and other side effects to its caller, after the commit.
        """
        return await self._write(lambda conn: fn(StoreTx(self, conn)))

    async def _scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        async with self._db.execute(sql, tuple(params)) as cur:
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async with self._db.execute(sql, tuple(params)) as cur:
            rows = await cur.fetchall()
        return list(rows)

    # -- calendar --------------------------------------------------------------------------

    def day_of(self, ts: float) -> str:
        """The calendar day (YYYY-MM-DD, in the store's zone) of a timestamp."""
        return datetime.fromtimestamp(ts, self._tz).date().isoformat()

    def day_start(self, ts: float) -> float:
        """Epoch seconds of local midnight starting the day of `ts`."""
        d = datetime.fromtimestamp(ts, self._tz)
        return d.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()

    def month_start(self, ts: float) -> float:
        """Epoch seconds of local midnight starting the month of `ts`."""
        d = datetime.fromtimestamp(ts, self._tz)
        return d.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()

    # -- calls and decisions ---------------------------------------------------------------

    async def record_call(self, call: FinishedCall, *, destination: str | None, now: float) -> int:
        """Keep a finished call; returns its id."""
        return await self._write(
            lambda c: StoreTx(self, c).record_call(call, destination=destination, now=now)
        )

    async def record_decision(
        self,
        call_id: int,
        *,
        action: str,
        reason: str,
        destination: str | None,
        template_kind: str | None,
        text: str | None,
        detail: str,
        now: float,
        message_id: int | None = None,
        merged: bool = False,
    ) -> int:
        """Keep the decision taken for a call; returns its id."""
        return await self._write(
            lambda c: StoreTx(self, c).record_decision(
                call_id,
                action=action,
                reason=reason,
                destination=destination,
                template_kind=template_kind,
                text=text,
                detail=detail,
                now=now,
                message_id=message_id,
                merged=merged,
            )
        )

    # -- policy facts ----------------------------------------------------------------------

    async def policy_facts(self, destination: str | None, now: float, cfg: Config) -> PolicyFacts:
        """What the policy needs to know about a destination and about recent sending
        (see `StoreTx.policy_facts`)."""
        return await self._read(lambda c: StoreTx(self, c).policy_facts(destination, now, cfg))

    # -- the outbox's rows -----------------------------------------------------------------

    async def add_message(
        self,
        *,
        destination: str,
        text: str,
        template_kind: str | None,
        call_ids: Sequence[int],
        parts: int,
        encoding: str,
        now: float,
        due_at: float,
        state: str = "waiting",
    ) -> int:
        """Write a new text to the outbox (before anything is sent); returns its id."""
        return await self._write(
            lambda c: StoreTx(self, c).add_message(
                destination=destination,
                text=text,
                template_kind=template_kind,
                call_ids=call_ids,
                parts=parts,
                encoding=encoding,
                now=now,
                due_at=due_at,
                state=state,
            )
        )

    async def get_message(self, message_id: int) -> Message | None:
        """One outbox row by id."""
        return await self._read(lambda c: StoreTx(self, c).get_message(message_id))

    async def messages(
        self, states: Sequence[str] | None = None, destination: str | None = None
    ) -> list[Message]:
        """Outbox rows, oldest first, optionally filtered by state and destination."""
        return await self._read(lambda c: StoreTx(self, c).messages(states, destination))

    async def pending_for(self, destination: str) -> Message | None:
        """The text still waiting or queued for a destination, if any."""
        return await self._read(lambda c: StoreTx(self, c).pending_for(destination))

    async def count_messages(self, states: Sequence[str]) -> int:
        """How many outbox rows are in one of `states` (one COUNT, no rows loaded)."""
        return await self._read(lambda c: StoreTx(self, c).count_messages(states))

    async def too_old(self, now: float, max_age: float) -> list[Message]:
        """Pending texts older than `max_age` at `now`, oldest first."""
        return await self._read(lambda c: StoreTx(self, c).too_old(now, max_age))

    async def release_due(self, now: float) -> list[tuple[int, str]]:
        """Every waiting text due by `now` becomes queued (one UPDATE, one commit);
        returns (id, destination) of each."""
        return await self._write(lambda c: StoreTx(self, c).release_due(now))

    async def queued(self) -> list[tuple[int, float | None]]:
        """(id, next_attempt_at) of every queued text, oldest first."""
        return await self._read(lambda c: StoreTx(self, c).queued())

    async def outbox_times(self) -> tuple[float | None, float | None, float | None, int]:
        """See `StoreTx.outbox_times`."""
        return await self._read(lambda c: StoreTx(self, c).outbox_times())

    async def mark_sent(self, message_id: int, references: Sequence[int], now: float) -> None:
        """A text went out: `sent` and its parts' references, in one transaction."""
        await self._write(lambda c: StoreTx(self, c).mark_sent(message_id, references, now))

    async def update_message(
        self,
        message_id: int,
        *,
        now: float,
        expect: Sequence[str] | None = None,
        **fields: Any,
    ) -> bool:
        """Change columns of an outbox row (state, attempts, last_error, ...).

        With `expect`, only while the row is in one of those states (compare-and-set, so a
        cancel and a send racing each other cannot both win); returns whether it changed.
        """
        bad = set(fields) - _MESSAGE_COLUMNS
        if bad:  # before the database thread: a caller's mistake, not a database error
            raise ValueError(f"not message columns: {sorted(bad)}")
        return await self._write(
            lambda c: StoreTx(self, c).update_message(message_id, now=now, expect=expect, **fields)
        )

    async def add_parts(self, message_id: int, references: Sequence[int], now: float) -> None:
        """Keep the modem's message reference of each part of a sent text."""
        await self._write(lambda c: StoreTx(self, c).add_parts(message_id, references, now))

    async def record_delivery(self, reference: int, status: str, now: float) -> int | None:
        """A delivery report for a modem reference; returns the message id it belongs to.

        References wrap at 256, so the most recent part with that reference is meant.
        """
        async with self.transaction():
            rows = await self._all(
                "SELECT id, message_id FROM message_parts WHERE reference = ?"
                " ORDER BY id DESC LIMIT 1",
                (reference,),
            )
            if not rows:
                return None
            await self._db.execute(
                "UPDATE message_parts SET status = ?, status_at = ? WHERE id = ?",
                (status, now, rows[0]["id"]),
            )
            await self._bump(f"delivery.{status}", 1, now)
            return int(rows[0]["message_id"])

    async def message_parts(self, message_id: int) -> list[dict[str, Any]]:
        """The parts of a text with their references and delivery status."""
        async with self._reading():
            rows = await self._all(
                "SELECT part, reference, status, status_at FROM message_parts"
                " WHERE message_id = ? ORDER BY part",
                (message_id,),
            )
        return [dict(r) for r in rows]

    # -- replies, opt-outs, gaps, counters ---------------------------------------------------

    async def add_reply(self, sender: str, text: str, now: float, *, optout: bool = False) -> int:
        """Keep an inbound SMS."""
        async with self.transaction():
            cur = await self._db.execute(
                "INSERT INTO replies (sender, text, received_at, optout) VALUES (?,?,?,?)",
                (sender, text, now, int(optout)),
            )
            await self._bump("replies", 1, now)
            assert cur.lastrowid is not None
            return cur.lastrowid

    async def optout_add(self, number: str, now: float, *, source: str = "cli") -> bool:
        """Put a number (E.164) on the do-not-text list; False if it already was."""
        async with self.transaction():
            cur = await self._db.execute(
                "INSERT OR IGNORE INTO optouts (number, added_at, source) VALUES (?,?,?)",
                (number, now, source),
            )
            added = cur.rowcount > 0
            if added:
                await self._bump("optouts.added", 1, now)
            return added

    async def optout_remove(self, number: str, now: float) -> bool:
        """Take a number off the list; False if it was not on it."""
        async with self.transaction():
            cur = await self._db.execute("DELETE FROM optouts WHERE number = ?", (number,))
            removed = cur.rowcount > 0
            if removed:
                await self._bump("optouts.removed", 1, now)
            return removed

    async def optout_list(self) -> list[tuple[str, float, str]]:
        """Every opted-out number with when and how it was added."""
        async with self._reading():
            rows = await self._all("SELECT number, added_at, source FROM optouts ORDER BY number")
        return [(r["number"], r["added_at"], r["source"]) for r in rows]

    async def is_opted_out(self, number: str) -> bool:
        """True when the number is on the do-not-text list."""
        async with self._reading():
            return (
                await self._scalar("SELECT 1 FROM optouts WHERE number = ?", (number,)) is not None
            )

    async def add_gap(self, started_at: float, ended_at: float | None, detail: str = "") -> int:
        """Keep a time span in which the AMI link was down (calls may be missing)."""
        async with self.transaction():
            cur = await self._db.execute(
                "INSERT INTO ami_gaps (started_at, ended_at, detail) VALUES (?,?,?)",
                (started_at, ended_at, detail),
            )
            await self._bump("ami.gaps", 1, started_at)
            assert cur.lastrowid is not None
            return cur.lastrowid

    async def gaps(self) -> list[tuple[float, float | None, str]]:
        """Every AMI gap, oldest first."""
        async with self._reading():
            rows = await self._all("SELECT started_at, ended_at, detail FROM ami_gaps ORDER BY id")
        return [(r["started_at"], r["ended_at"], r["detail"]) for r in rows]

    async def bump(self, name: str, n: int = 1, *, now: float) -> None:
        """Add `n` to the counter `name` of the day of `now`."""
        await self._write(lambda c: StoreTx(self, c).bump(name, n, now))

    async def _bump(self, name: str, n: int, now: float) -> None:
        await self._run(lambda c: StoreTx(self, c).bump(name, n, now))

    async def counter(self, name: str, *, since_day: str = "0000-00-00") -> int:
        """The sum of a counter over the days from `since_day` on."""
        async with self._reading():
            v = await self._scalar(
                "SELECT COALESCE(SUM(value), 0) FROM counters WHERE name = ? AND day >= ?",
                (name, since_day),
            )
        return int(v)

    # -- reports -----------------------------------------------------------------------------

    async def stats(self, now: float, days: int) -> PeriodStats:
        """Counts over the last `days` calendar days including today (1 = today)."""
        start = self.day_start(now)
        for _ in range(days - 1):
            start = self.day_start(start - 1.0)
        first_day = self.day_of(start)
        out = PeriodStats()
        async with self._reading():
            for r in await self._all(
                "SELECT outcome, COUNT(*) AS n FROM calls WHERE ended_at >= ? GROUP BY outcome",
                (start,),
            ):
                out.calls[r["outcome"]] = r["n"]
            for r in await self._all(
                "SELECT state, COUNT(*) AS n FROM messages WHERE created_at >= ? GROUP BY state",
                (start,),
            ):
                out.texts[r["state"]] = r["n"]
            for r in await self._all(
                "SELECT reason, COUNT(*) AS n FROM decisions"
                " WHERE decided_at >= ? AND action = 'suppress' GROUP BY reason",
                (start,),
            ):
                out.suppressed[r["reason"]] = r["n"]
            # A text cancelled in the wait step is a reason for not sending, too.
            for r in await self._all(
                "SELECT reason, COUNT(*) AS n FROM messages"
                " WHERE created_at >= ? AND state = 'cancelled' GROUP BY reason",
                (start,),
            ):
                key = r["reason"] or "cancelled"
                out.suppressed[key] = out.suppressed.get(key, 0) + r["n"]
            out.replies = int(
                await self._scalar("SELECT COUNT(*) FROM replies WHERE received_at >= ?", (start,))
            )
            out.optouts_added = int(
                await self._scalar("SELECT COUNT(*) FROM optouts WHERE added_at >= ?", (start,))
            )
            for r in await self._all(
                "SELECT name, SUM(value) AS n FROM counters WHERE day >= ? GROUP BY name",
                (first_day,),
            ):
                out.counters[r["name"]] = r["n"]
        return out

    async def optout_count(self) -> int:
        """How many numbers are on the do-not-text list now."""
        async with self._reading():
            return int(await self._scalar("SELECT COUNT(*) FROM optouts"))

    async def history(
        self,
        *,
        caller: str | Sequence[str] | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[HistoryRow]:
        """Recent calls, newest first, with decision, reason and message state.

        `caller` (one or several spellings) matches the raw caller ID or the normalised
        destination.
        """
        sql = (
            "SELECT c.id AS call_id, c.linkedid, c.caller, c.caller_name, c.did, c.outcome,"
            " c.ended_at, c.ring_seconds, c.voicemail_left, d.action, d.reason, d.detail,"
            " d.message_id, d.merged, d.text, m.state AS mstate, m.reason AS mreason,"
            " m.last_error"
            " FROM calls c"
            " LEFT JOIN decisions d ON d.id = (SELECT MAX(id) FROM decisions WHERE call_id = c.id)"
            " LEFT JOIN messages m ON m.id = d.message_id"
            " WHERE 1=1"
        )
        params: list[Any] = []
        if caller is not None:
            names = [caller] if isinstance(caller, str) else list(caller)
            marks = _placeholders(names)
            sql += f" AND (c.caller IN ({marks}) OR c.destination IN ({marks}))"
            params += names + names
        if since is not None:
            sql += " AND c.ended_at >= ?"
            params.append(since)
        sql += " ORDER BY c.ended_at DESC, c.id DESC LIMIT ?"
        params.append(limit)
        async with self._reading():
            rows = await self._all(sql, params)
        out = []
        for r in rows:
            vm = r["voicemail_left"]
            state = r["mstate"]
            if r["merged"]:
                state = "merged"
            out.append(
                HistoryRow(
                    call_id=r["call_id"],
                    linkedid=r["linkedid"],
                    caller=r["caller"],
                    caller_name=r["caller_name"],
                    did=r["did"],
                    outcome=r["outcome"],
                    ended_at=r["ended_at"],
                    ring_seconds=r["ring_seconds"],
                    voicemail_left=None if vm is None else bool(vm),
                    decision=r["action"],
                    reason=r["reason"],
                    detail=r["detail"] or "",
                    message_id=r["message_id"],
                    message=state,
                    message_reason=r["mreason"] or r["last_error"],
                    text=r["text"],
                )
            )
        return out


def _check_path(p: Path, *, must_exist: bool) -> None:
    # A quick stat; cheap enough to do on the loop before the connection thread exists.
    if must_exist and not p.exists():
        raise StoreError(f"no database at {p} (has the daemon run yet?)")
    if not p.parent.is_dir():
        raise StoreError(f"cannot create database {p}: directory {p.parent} does not exist")


def _take_lock(db_path: Path) -> IO[bytes]:
    lock_path = db_path.with_name(db_path.name + ".lock")
    try:
        fh = open(lock_path, "a+b")  # noqa: SIM115 - held open for the store's lifetime
    except OSError as exc:
        raise StoreError(f"cannot create lock file {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        fh.close()
        raise StoreLockedError(db_path, lock_path) from exc
    except OSError as exc:
        fh.close()
        raise StoreError(f"cannot lock {lock_path}: {exc.strerror}") from exc
    # The owner's pid helps an operator find the other daemon.
    fh.truncate(0)
    fh.write(f"{os.getpid()}\n".encode())
    fh.flush()
    return fh


def _release_lock(fh: IO[bytes] | None) -> None:
    if fh is None:
        return
    with contextlib.suppress(OSError):
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    fh.close()
