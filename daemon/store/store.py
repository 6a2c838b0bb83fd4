"""Storage: one SQLite file in WAL mode through aiosqlite, owned by one daemon.

Everything the daemon saw and did is kept here: calls with their outcome, decisions with
their reason word, the outbox (messages and their parts), replies, opt-outs, AMI gaps and
counters by day. The schema (daemon.store.schema) is versioned with `PRAGMA user_version`;
migrations run at open. The statements are in daemon.store.rows, the reports' queries in
daemon.store.reports; this module owns the connection, its transactions and its lock.

An exclusive `flock` on "<db>.lock" makes sure one daemon owns a database, so two
instances cannot double-text. Read-only openers (`textback stats`, `history`) take no lock.

Events: a statement that makes something true emits its event into the transaction
(`StoreTx.emit`); the store hands them to its event bus once, right after the commit, and
drops them on a rollback. So no sink ever hears of something the database does not hold.

Errors from SQLite (full disk, locked database, I/O) surface as `StoreError`; callers log,
count and retry them: nothing is dropped on the floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar, cast
from zoneinfo import ZoneInfo

import aiosqlite

from daemon.config import Config
from daemon.decide.policy import PolicyFacts
from daemon.errors import TextbackError
from daemon.logsetup import kv
from daemon.model import FinishedCall, MessageKind, MessageState
from daemon.sinks.bus import EventBus
from daemon.sinks.events import Event
from daemon.store import backup, reports, retention, routing, schema
from daemon.store.live import LiveState, read_live
from daemon.store.reports import HistoryRow, PeriodStats, ReplyRow
from daemon.store.rows import Message, StoreTx
from daemon.store.settings import PauseState

__all__ = [
    "BUSY_TIMEOUT_MS",
    "MESSAGE_STATES",
    "SCHEMA_VERSION",
    "HistoryRow",
    "Message",
    "PeriodStats",
    "ReplyRow",
    "Store",
    "StoreError",
    "StoreLockedError",
    "StoreTx",
]

# The journal name operators filter on: kept stable when modules move.
log = logging.getLogger("daemon.store")

T = TypeVar("T")

#: Waiting this long for another connection's write lock before SQLite says "locked".
BUSY_TIMEOUT_MS = 5000
#: Every message state, as stored.
MESSAGE_STATES = tuple(s.value for s in MessageState)
SCHEMA_VERSION = schema.SCHEMA_VERSION


class StoreError(TextbackError):
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
        bus: EventBus | None = None,
    ) -> None:
        self._db = db
        #: Where committed events go (the log and the counters unless told otherwise).
        self.bus = bus if bus is not None else EventBus.standard()
        # The events of the open `transaction()`, bound when it begins: published at its
        # commit, dropped at a rollback. A unit outside one gets a list of its own, bound
        # when it is submitted, so a unit cancelled mid-hop never lends its events to the
        # next one.
        self._tx_events: list[Event] | None = None
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
        bus: EventBus | None = None,
    ) -> Store:
        """Open (creating and migrating if needed) the database at `path`.

        `lock` takes the exclusive daemon lock (StoreLockedError if another holds it).
        `readonly` opens an existing database for reading only, with no lock, no migration.
        `tz` is the zone whose calendar days the counters and caps use.
        `busy_timeout_ms` is how long to wait for another connection's write lock.
        `durable=False` skips fsync (synchronous=OFF): only for tests and dry runs.
        `bus` takes the events of what is committed (default: the log and the counters).
        """
        p = Path(path)
        if readonly:
            _check_path(p, must_exist=True)
            try:
                db = await aiosqlite.connect(f"file:{p}?mode=ro", uri=True, isolation_level=None)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open database {p}: {exc}") from exc
            store = cls(
                db,
                p,
                lock_file=None,
                readonly=True,
                tz=tz,
                busy_timeout_ms=busy_timeout_ms,
                bus=bus,
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
            db,
            p,
            lock_file=lock_file,
            readonly=False,
            tz=tz,
            busy_timeout_ms=busy_timeout_ms,
            bus=bus,
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
        known = len(schema.MIGRATIONS)
        if version > known:
            raise StoreError(
                f"{self.path} has schema version {version}; this textback knows up to "
                f"{known}: upgrade textback"
            )
        if 0 < version < known:
            # an upgrade: keep a copy of the database as it was before any step runs
            try:
                copy = await asyncio.to_thread(backup.take_backup, self.path, version)
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(
                    f"cannot back up {self.path} before migrating it from schema {version}"
                    f" ({exc}); nothing was changed: free space in {self.path.parent}"
                ) from exc
            log.info(kv(event="backup", database=self.path, version=version, copy=copy))
        for target in range(version + 1, known + 1):
            script = schema.MIGRATIONS[target - 1]
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
        events: list[Event] = []
        self._tx_events = events
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
            self._publish(events)
        finally:
            self._in_tx = False
            self._tx_events = None

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

    async def _write(self, fn: Callable[[StoreTx], T]) -> T:
        """Run `fn` atomically: inside this task's open transaction, or as its own
        transaction (BEGIN, fn, COMMIT in one hop to the database thread)."""
        task = asyncio.current_task()
        if self._owner is not None and self._owner is task:
            events = self._tx_events
            if self._in_tx and events is not None:
                # the open transaction handles errors and publishes at its commit
                return await self._run(lambda conn: fn(StoreTx(self, conn, events)))
            return await self._atomic_hop(fn)
        async with self._mutex:
            self._owner = task
            try:
                return await self._atomic_hop(fn)
            finally:
                self._owner = None

    async def _atomic_hop(self, fn: Callable[[StoreTx], T]) -> T:
        if self.readonly:
            raise StoreError(f"database {self.path} is open read-only")
        events: list[Event] = []
        try:
            out = await self._run(
                lambda conn: _atomic(conn, lambda c: fn(StoreTx(self, c, events)))
            )
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {exc}") from exc
        self._publish(events)
        return out

    def _publish(self, events: list[Event]) -> None:
        """Hand a committed transaction's events to the bus, in the order emitted. The
        data is already committed: nothing a sink does may undo that or reach the writer."""
        try:
            self.bus.emit_all(events)
        except Exception:  # the bus guards each sink; this guards the bus itself
            log.exception(kv(event="sink_error", during="publish", events=len(events)))

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
        return await self._write(fn)

    async def read(self, fn: Callable[[StoreTx], T]) -> T:
        """Run `fn(tx)` for reading only, in one hop to the database thread."""
        # a read emits nothing; the list only satisfies StoreTx
        return await self._read(lambda conn: fn(StoreTx(self, conn, [])))

    async def _scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        async with self._db.execute(sql, tuple(params)) as cur:
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async with self._db.execute(sql, tuple(params)) as cur:
            rows = await cur.fetchall()
        return list(rows)

    # -- retention -------------------------------------------------------------------------

    async def prune(self, cutoff: float, limit: int) -> retention.Pruned:
        """One retention batch (daemon.store.retention): at most `limit` calls that ended
        before `cutoff`, with their decisions and texts, as one short transaction. Other
        tasks' units run between two batches (the store's lock is fair)."""
        if self.readonly:
            raise StoreError(f"database {self.path} is open read-only")
        # the lock and the error mapping of a read; the unit is its own transaction
        async with self._reading():
            return await self._run(
                lambda conn: _atomic(conn, lambda c: retention.prune_batch(c, cutoff, limit))
            )

    # -- calendar --------------------------------------------------------------------------

    @property
    def timezone(self) -> str:
        """The zone whose calendar days the counters and caps use."""
        return self._tz.key

    def set_timezone(self, tz: str) -> None:
        """Use another zone's calendar days from now on ([hours] timezone changed by a
        SIGHUP). Days already counted keep their dates; the day of the change may be
        split between the old zone's date and the new one's."""
        self._tz = ZoneInfo(tz)

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
        return await self._write(lambda tx: tx.record_call(call, destination=destination, now=now))

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
        """Keep the decision taken for a recorded call; returns its id."""

        def unit(tx: StoreTx) -> int:
            call = tx.get_call(call_id)
            if call is None:
                raise StoreError(f"no call {call_id} to decide on")
            return tx.record_decision(
                call,
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

        return await self.batch(unit)

    async def policy_facts(self, destination: str | None, now: float, cfg: Config) -> PolicyFacts:
        """What the policy needs to know about a destination and about recent sending
        (see `StoreTx.policy_facts`)."""
        return await self.read(lambda tx: tx.policy_facts(destination, now, cfg))

    # -- the outbox's rows -----------------------------------------------------------------

    async def get_message(self, message_id: int) -> Message | None:
        """One outbox row by id."""
        return await self.read(lambda tx: tx.get_message(message_id))

    async def messages(
        self,
        states: Collection[MessageState] | None = None,
        destination: str | None = None,
        *,
        kinds: Collection[MessageKind] | None = None,
    ) -> list[Message]:
        """Outbox rows, oldest first, optionally filtered by state, destination and kind."""
        return await self.read(lambda tx: tx.messages(states, destination, kinds=kinds))

    async def pending_for(self, destination: str) -> Message | None:
        """The missed-call text still waiting or queued for a destination, if any."""
        return await self.read(lambda tx: tx.pending_for(destination))

    async def count_messages(self, states: Collection[MessageState]) -> int:
        """How many outbox rows are in one of `states` (one COUNT, no rows loaded)."""
        return await self.read(lambda tx: tx.count_messages(states))

    async def too_old(self, now: float, max_age: float) -> list[Message]:
        """Pending texts older than `max_age` at `now`, oldest first."""
        return await self.read(lambda tx: tx.too_old(now, max_age))

    async def queued(self) -> list[tuple[int, float | None]]:
        """(id, next_attempt_at) of every queued text, oldest first."""
        return await self.read(lambda tx: tx.queued())

    async def queued_routes(self) -> list[routing.QueuedText]:
        """Every queued text with the modem that last texted its number (a pool's route)."""
        return await self._read(routing.queued_routes)

    async def sent_by_modem(self, since: float) -> dict[str, int]:
        """Texts each modem (SIM) took since `since`, by modem name."""
        return await self._read(lambda c: routing.sent_by_modem(c, since))

    async def outbox_times(self) -> tuple[float | None, float | None, float | None, int]:
        """See `StoreTx.outbox_times`."""
        return await self.read(lambda tx: tx.outbox_times())

    async def update_message(
        self,
        message_id: int,
        *,
        now: float,
        expect: Collection[MessageState] | None = None,
        state: MessageState | None = None,
        reason: str | None = None,
        last_error: str | None = None,
        attempts: int | None = None,
        sent_at: float | None = None,
    ) -> bool:
        """Change an outbox row, compare-and-set on `expect` (see `StoreTx.update_message`,
        which the outbox uses inside its own units). Emits no event and so counts nothing
        (the outbox's transitions do both): for tests and tools that set a row up."""
        return await self._write(
            lambda tx: tx.update_message(
                message_id,
                now=now,
                expect=expect,
                state=state,
                reason=reason,
                last_error=last_error,
                attempts=attempts,
                sent_at=sent_at,
            )
        )

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
        state: MessageState = MessageState.WAITING,
        kind: MessageKind = MessageKind.MISSED_CALL,
        line: str = "",
    ) -> int:
        """Write an outbox row as it is (no event; the outbox's `enqueue` is the way in
        for a text to send): for tests and tools that set a row up."""
        return await self._write(
            lambda tx: tx.add_message(
                destination=destination,
                text=text,
                template_kind=template_kind,
                call_ids=call_ids,
                parts=parts,
                encoding=encoding,
                now=now,
                due_at=due_at,
                state=state,
                kind=kind,
                line=line,
            )
        )

    async def add_parts(self, message_id: int, references: Sequence[int], now: float) -> None:
        """Keep the modem's message reference of each part of a sent text."""
        await self._write(lambda tx: tx.add_parts(message_id, references, now))

    async def message_parts(self, message_id: int) -> list[dict[str, Any]]:
        """The parts of a text with their references and delivery status."""
        async with self._reading():
            rows = await self._all(
                "SELECT part, reference, status, status_at FROM message_parts"
                " WHERE message_id = ? ORDER BY part",
                (message_id,),
            )
        return [dict(r) for r in rows]

    # -- what the modem hears, opt-outs, gaps, counters -----------------------------------

    async def record_delivery(
        self,
        reference: int,
        status: str,
        now: float,
        *,
        recipient: str = "",
        tp_status: int | None = None,
        modem: str = "",
        window: float = 0.0,
    ) -> int | None:
        """A delivery report, kept and matched to its text (see `StoreTx.record_delivery`:
        by reference, else an `uncertain` text to `recipient` within `window`); returns
        the message id it belongs to."""
        return await self._write(
            lambda tx: tx.record_delivery(
                reference,
                status,
                now,
                recipient=recipient,
                tp_status=tp_status,
                modem=modem,
                window=window,
            )
        )

    async def add_reply(
        self, sender: str, text: str, now: float, *, optout: bool = False
    ) -> int | None:
        """Keep an inbound SMS as it is (the reply handler, daemon.replies, links and
        judges it first)."""
        return await self._write(lambda tx: tx.add_reply(sender, text, now, optout=optout))

    async def optout_add(self, number: str, now: float, *, source: str = "cli") -> bool:
        """Put a number (E.164) on the do-not-text list; False if it already was."""
        return await self._write(lambda tx: tx.optout_add(number, now, source=source))

    async def optout_remove(self, number: str, now: float, *, source: str = "cli") -> bool:
        """Take a number off the list; False if it was not on it."""
        return await self._write(lambda tx: tx.optout_remove(number, now, source=source))

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

    async def live(self, now: float) -> LiveState:
        """Today's counts, the outbox now and the pause, in one read (daemon.store.live)."""
        day, start = self.day_of(now), self.day_start(now)
        return await self._read(lambda c: read_live(c, day, start, now))

    async def pause_state(self, now: float) -> PauseState | None:
        """The pause of texting in force at `now` (daemon.store.settings), if any."""
        return await self.read(lambda tx: tx.pause_state(now))

    async def pause(self, until: float | None, *, source: str, now: float) -> None:
        """Pause texting until `until` (None: until resumed), replacing any pause."""
        await self._write(lambda tx: tx.pause(until, source=source, now=now))

    async def resume(self, *, source: str, now: float) -> bool:
        """End the pause of texting; False when it was not paused."""
        return await self._write(lambda tx: tx.resume(source=source, now=now))

    async def add_gap(self, started_at: float, ended_at: float | None, detail: str = "") -> int:
        """Keep a time span in which the AMI link was down (calls may be missing)."""
        return await self._write(lambda tx: tx.add_gap(started_at, ended_at, detail))

    async def gaps(self) -> list[tuple[float, float | None, str]]:
        """Every AMI gap, oldest first."""
        async with self._reading():
            rows = await self._all("SELECT started_at, ended_at, detail FROM ami_gaps ORDER BY id")
        return [(r["started_at"], r["ended_at"], r["detail"]) for r in rows]

    async def bump(self, name: str, n: int = 1, *, now: float) -> None:
        """Add `n` to the counter `name` of the day of `now` (counts no event stands for,
        such as the database's own refusals once it takes writes again)."""
        await self._write(lambda tx: tx.bump(name, n, now))

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
        return await self._read(lambda c: reports.period_stats(c, start, first_day))

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
        """Recent calls, newest first, with decision, reason and message state."""
        return await self._read(
            lambda c: reports.history(c, caller=caller, since=since, limit=limit)
        )

    async def replies(
        self,
        *,
        caller: str | Sequence[str] | None = None,
        since: float | None = None,
        limit: int = 50,
        reply_id: int | None = None,
    ) -> list[ReplyRow]:
        """Recent replies, newest first, with what they answer (or the one `reply_id`)."""
        return await self._read(
            lambda c: reports.replies(c, caller=caller, since=since, limit=limit, reply_id=reply_id)
        )


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
