"""The rows: every statement that writes or reads calls, decisions, texts, replies,
opt-outs and gaps, run synchronously on the database thread inside one transaction.

`Store.batch(fn)` hands a `StoreTx` to `fn`; a unit of work (a burst of finished calls, a
send's outcome) costs one hop to the database thread and one commit. A statement that
makes something true also emits its event with `StoreTx.emit`: the event's day counters
are bumped in the same transaction, and the store publishes the event once it commits.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.config import Config
from daemon.decide.policy import PolicyFacts
from daemon.model import (
    LIVE_STATES,
    PENDING_STATES,
    FinishedCall,
    MessageKind,
    MessageState,
    Outcome,
    Reason,
)
from daemon.sinks.counters import durable_counts
from daemon.sinks.events import (
    AmiGap,
    CallDecided,
    CallRecorded,
    DeliveryReported,
    Event,
    OptOutChanged,
    PauseChanged,
    ReplyReceived,
    TextChanged,
)
from daemon.store import jobs, settings

if TYPE_CHECKING:
    from daemon.store.store import Store

#: Seconds in an hour, for the hourly cap's count.
HOUR = 3600.0
#: The reason word of a text cancelled because its destination opted out.
OPTED_OUT = Reason.OPTED_OUT.value

_LIVE = tuple(sorted(LIVE_STATES))
_PENDING = tuple(sorted(PENDING_STATES))


@dataclass(slots=True)
class Message:
    """One row of the outbox."""

    id: int
    destination: str
    text: str
    state: MessageState
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
    kind: MessageKind = MessageKind.MISSED_CALL
    line: str = ""
    sender: str = ""
    attempted_at: float | None = None  # when it last went to a sender
    resolved_by: str | None = None  # 'delivery_report': its fate settled after the fact
    delivered_at: float | None = None


def _row_message(row: sqlite3.Row) -> Message:
    return Message(
        id=row["id"],
        destination=row["destination"],
        text=row["text"],
        state=MessageState(row["state"]),
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
        kind=MessageKind(row["kind"]),
        line=row["line"],
        sender=row["sender"],
        attempted_at=row["attempted_at"],
        resolved_by=row["resolved_by"],
        delivered_at=row["delivered_at"],
    )


def _attempt_time(m: Message) -> float:
    """When the text last went to a sender (rows from before schema 5: its last change)."""
    return m.updated_at if m.attempted_at is None else m.attempted_at


def same_number(a: str, b: str) -> bool:
    """Do two spellings name one phone number? A report's recipient may come in national
    form ("2025550123") for a text sent to "+12025550123": the digits of one end the
    other's, eight digits at least."""
    da = "".join(ch for ch in a if ch.isdigit())
    db = "".join(ch for ch in b if ch.isdigit())
    if not da or not db:
        return False
    short, long_ = sorted((da, db), key=len)
    return short == long_ or (len(short) >= 8 and long_.endswith(short))


def placeholders(items: Sequence[object]) -> str:
    """`?,?,?` for an IN list of `items`."""
    return ",".join("?" for _ in items)


class StoreTx:
    """The store's statements inside one transaction on the database thread.

    Never keep one beyond the function it was handed to, and never touch asyncio objects
    from it: it runs off the event loop.
    """

    def __init__(self, store: Store, conn: sqlite3.Connection, events: list[Event]) -> None:
        self._store = store
        self._conn = conn
        self._events = events

    def _scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = self._conn.execute(sql, tuple(params)).fetchone()
        return None if row is None else row[0]

    def emit(self, event: Event) -> None:
        """Count `event` in its day counters now, and publish it once this commits."""
        for name, when in durable_counts(event):
            self.bump(name, 1, when)
        self._events.append(event)

    def bump(self, name: str, n: int, now: float) -> None:
        """Add `n` to the counter `name` of the day of `now`."""
        self._conn.execute(
            "INSERT INTO counters (name, day, value) VALUES (?,?,?)"
            " ON CONFLICT (name, day) DO UPDATE SET value = value + excluded.value",
            (name, self._store.day_of(now), n),
        )

    # -- calls and decisions ---------------------------------------------------------------

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
        assert cur.lastrowid is not None
        self.emit(CallRecorded(call=call, call_id=cur.lastrowid, destination=destination))
        return cur.lastrowid

    def get_call(self, call_id: int) -> FinishedCall | None:
        """A recorded call, as the tracker finished it."""
        r = self._conn.execute("SELECT * FROM calls WHERE id = ?", (call_id,)).fetchone()
        if r is None:
            return None
        vm = r["voicemail_left"]
        return FinishedCall(
            linkedid=r["linkedid"],
            caller=r["caller"],
            caller_name=r["caller_name"],
            did=r["did"],
            inbound=bool(r["inbound"]),
            outcome=Outcome(r["outcome"]),
            started_at=r["started_at"],
            ended_at=r["ended_at"],
            ring_seconds=r["ring_seconds"],
            voicemail_left=None if vm is None else bool(vm),
            withheld=bool(r["withheld"]),
            dialled=r["dialled"],
            answered_by=r["answered_by"],
            channel=r["channel"],
        )

    def record_decision(
        self,
        call: FinishedCall,
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
                str(reason),
                destination,
                template_kind,
                text,
                detail,
                now,
                message_id,
                int(merged),
            ),
        )
        assert cur.lastrowid is not None
        self.emit(
            CallDecided(
                call=call,
                call_id=call_id,
                action=action,
                reason=str(reason),
                detail=detail,
                text=text,
                message_id=message_id,
                merged=merged,
                at=now,
            )
        )
        return cur.lastrowid

    def policy_facts(self, destination: str | None, now: float, cfg: Config) -> PolicyFacts:
        """What the policy needs to know about a destination and about recent sending.

        A count serves only its cap, and the range count only the pumping guard: with
        every cap off (0) the counts are not taken and read 0, and with the guard off the
        range is not scanned and reads 0. Texts of every kind count for the caps and the
        pumping guard (an auto-reply is a pumping target too); only missed-call texts for
        the cooldown.
        """
        tb = cfg.textback
        hour = today = month = 0
        live = placeholders(_LIVE)
        if tb.max_per_hour or tb.max_per_day or tb.max_per_month:
            # One pass over this month's live texts answers all three caps.
            h, d, m = now - HOUR, self._store.day_start(now), self._store.month_start(now)
            row = self._conn.execute(
                "SELECT COALESCE(SUM(created_at >= ?), 0), COALESCE(SUM(created_at >= ?), 0),"
                f" COALESCE(SUM(created_at >= ?), 0) FROM messages WHERE state IN ({live})"
                " AND created_at >= ?",
                (h, d, m, *_LIVE, min(h, d, m)),
            ).fetchone()
            hour, today, month = int(row[0]), int(row[1]), int(row[2])
        if destination is None:
            return PolicyFacts(sent_last_hour=hour, sent_today=today, sent_this_month=month)
        opted = self._scalar("SELECT 1 FROM optouts WHERE number = ?", (destination,))
        # A missed-call text counts for the cooldown from when it went (or may have gone)
        # out; an answer to HELP or a confirmation is not a reason to stay silent about
        # the caller's next missed call.
        last = self._scalar(
            f"SELECT MAX(COALESCE(sent_at, updated_at)) FROM messages"
            f" WHERE destination = ? AND state IN ({live}) AND kind = ?",
            (destination, *_LIVE, str(MessageKind.MISSED_CALL)),
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
        pause = settings.pause_state(self._conn, now)  # read in the deciding transaction
        return PolicyFacts(
            paused="" if pause is None else pause.detail(),
            opted_out=opted is not None,
            last_text_at=None if last is None else float(last),
            sent_last_hour=hour,
            sent_today=today,
            sent_this_month=month,
            range_destinations=in_range,
        )

    # -- the outbox's rows -----------------------------------------------------------------

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
        state: MessageState = MessageState.WAITING,
        kind: MessageKind = MessageKind.MISSED_CALL,
        line: str = "",
    ) -> int:
        """Write a new text to the outbox (before anything is sent); returns its id."""
        cur = self._conn.execute(
            "INSERT INTO messages (destination, text, state, template_kind, call_ids,"
            " parts, encoding, created_at, due_at, updated_at, next_attempt_at, kind, line)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                destination,
                text,
                str(state),
                template_kind,
                json.dumps(list(call_ids)),
                parts,
                encoding,
                now,
                due_at,
                now,
                due_at,
                str(kind),
                line,
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def get_message(self, message_id: int) -> Message | None:
        """One outbox row by id."""
        row = self._conn.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return None if row is None else _row_message(row)

    def messages(
        self,
        states: Collection[MessageState] | None = None,
        destination: str | None = None,
        *,
        kinds: Collection[MessageKind] | None = None,
    ) -> list[Message]:
        """Outbox rows, oldest first, optionally filtered by state, destination and kind."""
        sql = "SELECT * FROM messages WHERE 1=1"
        params: list[Any] = []
        if states is not None:
            sql += f" AND state IN ({placeholders(list(states))})"
            params += [str(s) for s in states]
        if destination is not None:
            sql += " AND destination = ?"
            params.append(destination)
        if kinds is not None:
            sql += f" AND kind IN ({placeholders(list(kinds))})"
            params += [str(k) for k in kinds]
        rows = self._conn.execute(sql + " ORDER BY id", params).fetchall()
        return [_row_message(r) for r in rows]

    def pending_for(self, destination: str) -> Message | None:
        """The newest missed-call text still waiting or queued for a destination, if any
        (the one a repeat call joins; texts of other kinds are never joined)."""
        row = self._conn.execute(
            f"SELECT * FROM messages WHERE kind = ? AND state IN ({placeholders(_PENDING)})"
            " AND destination = ? ORDER BY id DESC LIMIT 1",
            (str(MessageKind.MISSED_CALL), *_PENDING, destination),
        ).fetchone()
        return None if row is None else _row_message(row)

    def update_message(
        self,
        message_id: int,
        *,
        now: float,
        expect: Collection[MessageState] | None = None,
        state: MessageState | None = None,
        reason: str | None = None,
        last_error: str | None = None,
        clear_error: bool = False,
        attempts: int | None = None,
        call_ids: Sequence[int] | None = None,
        due_at: float | None = None,
        next_attempt_at: float | None = None,
        sent_at: float | None = None,
        text: str | None = None,
        template_kind: str | None = None,
        parts: int | None = None,
        encoding: str | None = None,
        sender: str | None = None,
    ) -> bool:
        """Change columns of an outbox row; a None argument leaves its column alone
        (`clear_error` empties last_error). Counts nothing and emits nothing: the outbox
        emits the event of each change, with its why.

        With `expect`, only while the row is in one of those states (compare-and-set, so a
        cancel and a send racing each other cannot both win); returns whether it changed.
        """
        cols: dict[str, Any] = {
            "state": None if state is None else str(state),
            "reason": reason,
            "last_error": last_error,
            "attempts": attempts,
            "call_ids": None if call_ids is None else json.dumps(list(call_ids)),
            "due_at": due_at,
            "next_attempt_at": next_attempt_at,
            "sent_at": sent_at,
            "text": text,
            "template_kind": template_kind,
            "parts": parts,
            "encoding": encoding,
            "sender": sender,
        }
        sets = {k: v for k, v in cols.items() if v is not None}
        if state == MessageState.SENDING:
            sets["attempted_at"] = now  # a delivery report's window starts here
        if clear_error:
            sets["last_error"] = None
        assign = "".join(f"{k} = ?, " for k in sets)
        sql = f"UPDATE messages SET {assign}updated_at = ? WHERE id = ?"
        params: list[Any] = [*sets.values(), now, message_id]
        if expect is not None:
            sql += f" AND state IN ({placeholders(list(expect))})"
            params += [str(s) for s in expect]
        return self._conn.execute(sql, params).rowcount > 0

    def cancel_pending(self, destination: str, reason: str, now: float) -> list[int]:
        """Cancel every missed-call text still waiting or queued to `destination` (the
        office called back, or the number opted out), each with its event; returns the
        ids. Texts of other kinds (a confirmation) are left alone."""
        done = []
        for m in self.messages(PENDING_STATES, destination, kinds=(MessageKind.MISSED_CALL,)):
            if not self.update_message(
                m.id,
                now=now,
                expect=PENDING_STATES,
                state=MessageState.CANCELLED,
                reason=reason,
            ):
                continue  # it went to the modem in the meantime: too late to cancel
            self.emit(
                TextChanged(
                    message_id=m.id,
                    destination=m.destination,
                    kind=m.kind,
                    state=MessageState.CANCELLED,
                    at=now,
                    reason=reason,
                )
            )
            done.append(m.id)
        return done

    def add_parts(self, message_id: int, references: Sequence[int], now: float) -> None:
        """Keep the modem's message reference of each part of a sent text."""
        self._conn.executemany(
            "INSERT INTO message_parts (message_id, part, reference, created_at) VALUES (?,?,?,?)",
            [(message_id, i + 1, ref, now) for i, ref in enumerate(references)],
        )

    def count_messages(self, states: Collection[MessageState]) -> int:
        """How many outbox rows are in one of `states`."""
        values = [str(s) for s in states]
        return int(
            self._scalar(
                f"SELECT COUNT(*) FROM messages WHERE state IN ({placeholders(values)})",
                values,
            )
        )

    def too_old(self, now: float, max_age: float) -> list[Message]:
        """Pending texts older than `max_age` at `now` (to expire), oldest first."""
        rows = self._conn.execute(
            f"SELECT * FROM messages WHERE state IN ({placeholders(_PENDING)})"
            " AND ? - created_at > ? ORDER BY id",
            (*_PENDING, now, max_age),
        ).fetchall()
        return [_row_message(r) for r in rows]

    def release_due(self, now: float) -> list[tuple[int, str, MessageKind]]:
        """End the wait step of every text due by `now`: `waiting` -> `queued`, one
        statement. Returns (id, destination, kind) of each, in id order."""
        rows = self._conn.execute(
            "UPDATE messages SET state = 'queued', next_attempt_at = ?, updated_at = ?"
            " WHERE state = 'waiting' AND due_at <= ? RETURNING id, destination, kind",
            (now, now, now),
        ).fetchall()
        return sorted((int(r[0]), str(r[1]), MessageKind(r[2])) for r in rows)

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
            f" FROM messages WHERE state IN ({placeholders(_PENDING)})",
            _PENDING,
        ).fetchone()
        return row[0], row[1], row[2], int(row[3])

    def mark_sent(
        self, message_id: int, references: Sequence[int], now: float, *, sender: str = ""
    ) -> None:
        """A text went out: `sent`, with the reference of each part and who sent it."""
        self.update_message(
            message_id,
            now=now,
            state=MessageState.SENT,
            sent_at=now,
            clear_error=True,
            sender=sender or None,
        )
        self.add_parts(message_id, references, now)
        self._early_reports(message_id, now)

    # -- what the modem hears ---------------------------------------------------------------

    def record_delivery(
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
        """A delivery report (`status`: delivered, failed or pending; `tp_status` its
        TP-ST) for a modem reference to `recipient`; kept, and matched to a text: returns
        the message id it belongs to, None when no text of ours is known to have it.

        Matched first by reference: references wrap at 256, so the most recent part with
        that reference (to that recipient, when the report names one) is meant. Else, a
        final report settles the oldest `uncertain` text to that recipient whose send
        started at most `window` seconds before (the reference of a send a crash cut off
        is unknown): delivered, or failed if the network could not deliver it; never
        resent. A text of several parts is settled once a report came for each.
        """
        if tp_status is None:
            tp_status = {"delivered": 0, "pending": 0x20}.get(status, 0x40)
        rid = int(
            self._conn.execute(
                "INSERT INTO delivery_reports"
                " (reference, recipient, status, outcome, received_at, modem)"
                " VALUES (?,?,?,?,?,?) RETURNING id",
                (reference, recipient, tp_status, status, now, modem),
            ).fetchone()[0]
        )
        mid = self._report_on_part(rid, reference, recipient, status, now)
        if mid is None and status != "pending" and recipient:
            for m in self._uncertain_to(recipient, now, window):
                self._link_report(rid, m.id, None)
                self._settle_uncertain(m, now)
                mid = m.id
                break
        self.emit(DeliveryReported(reference=reference, message_id=mid, status=status, at=now))
        return mid

    def resolve_uncertain(self, message_id: int, now: float, window: float) -> bool:
        """A text just made `uncertain`: reports kept before (read at start-up before the
        restart's recovery, or during a send that ended unclear) that fit it settle it now.
        Returns whether it was settled."""
        m = self.get_message(message_id)
        if m is None or m.state is not MessageState.UNCERTAIN:
            return False
        start = _attempt_time(m)
        rows = self._conn.execute(
            "SELECT id, recipient FROM delivery_reports WHERE message_id IS NULL"
            " AND outcome != 'pending' AND received_at >= ? AND received_at <= ? ORDER BY id",
            (start, start + window),
        ).fetchall()
        for r in rows:
            if same_number(str(r["recipient"]), m.destination):
                self._link_report(int(r["id"]), m.id, None)
                if self._settle_uncertain(m, now):
                    return True
        return False

    def _report_on_part(
        self, rid: int, reference: int, recipient: str, status: str, now: float
    ) -> int | None:
        """The part with this reference (and recipient) that the report is about: its
        status noted, its text delivered when every part is. Returns the text's id."""
        rows = self._conn.execute(
            "SELECT p.id, p.message_id, m.destination FROM message_parts p"
            " JOIN messages m ON m.id = p.message_id"
            " WHERE p.reference = ? ORDER BY p.id DESC LIMIT 32",
            (reference,),
        ).fetchall()
        row = next(
            (r for r in rows if not recipient or same_number(recipient, str(r["destination"]))),
            None,
        )
        if row is None:
            return None
        mid = int(row["message_id"])
        self._conn.execute(
            "UPDATE message_parts SET status = ?, status_at = ? WHERE id = ?",
            (status, now, row["id"]),
        )
        self._link_report(rid, mid, int(row["id"]))
        if status == "delivered":
            self._delivered_if_every_part(mid, now)
        return mid

    def _delivered_if_every_part(self, message_id: int, now: float) -> None:
        """A `sent` text whose every part is reported delivered becomes `delivered`."""
        left = self._scalar(
            "SELECT COUNT(*) FROM message_parts WHERE message_id = ? AND status != 'delivered'",
            (message_id,),
        )
        m = self.get_message(message_id)
        if left or m is None or m.state is not MessageState.SENT:
            return
        self._conn.execute(
            "UPDATE messages SET state = 'delivered', delivered_at = ?, updated_at = ?"
            " WHERE id = ? AND state = 'sent'",
            (now, now, message_id),
        )
        self.emit(
            TextChanged(
                message_id=m.id,
                destination=m.destination,
                kind=m.kind,
                state=MessageState.DELIVERED,
                at=now,
                reason="delivery_report",
                was=MessageState.SENT,
            )
        )

    def _uncertain_to(self, recipient: str, now: float, window: float) -> list[Message]:
        """`uncertain` texts to `recipient` whose send started within `window` before
        `now`, oldest first."""
        rows = self._conn.execute(
            "SELECT * FROM messages WHERE state = 'uncertain'"
            " AND COALESCE(attempted_at, updated_at) BETWEEN ? AND ?"
            " ORDER BY COALESCE(attempted_at, updated_at), id",
            (now - window, now),
        ).fetchall()
        return [m for m in map(_row_message, rows) if same_number(recipient, m.destination)]

    def _link_report(self, report_id: int, message_id: int, part_id: int | None) -> None:
        self._conn.execute(
            "UPDATE delivery_reports SET message_id = ?, part_id = ? WHERE id = ?",
            (message_id, part_id, report_id),
        )

    def _settle_uncertain(self, m: Message, now: float) -> bool:
        """Settle an `uncertain` text once a final report is linked for each of its parts:
        delivered if every one says so, else failed (the network had it and gave up).
        Returns whether it was settled."""
        rows = self._conn.execute(
            "SELECT reference, outcome, status FROM delivery_reports"
            " WHERE message_id = ? AND outcome != 'pending' ORDER BY id",
            (m.id,),
        ).fetchall()
        outcomes: dict[int, tuple[str, int]] = {}
        for r in rows:
            outcomes[int(r["reference"])] = (str(r["outcome"]), int(r["status"]))
        if len(outcomes) < max(m.parts, 1):
            return False
        bad = [st for outcome, st in outcomes.values() if outcome != "delivered"]
        state = MessageState.FAILED if bad else MessageState.DELIVERED
        error = f"not delivered: the network's report says TP-ST {bad[0]:#04x}" if bad else None
        self._conn.execute(
            "UPDATE messages SET state = ?, resolved_by = 'delivery_report',"
            " delivered_at = ?, sent_at = COALESCE(sent_at, attempted_at, updated_at),"
            " last_error = COALESCE(?, last_error), updated_at = ?"
            " WHERE id = ? AND state = 'uncertain'",
            (str(state), None if bad else now, error, now, m.id),
        )
        self.emit(
            TextChanged(
                message_id=m.id,
                destination=m.destination,
                kind=m.kind,
                state=state,
                at=now,
                reason="delivery_report",
                references=tuple(sorted(outcomes)),
                error=error,
                age=now - _attempt_time(m),
                was=MessageState.UNCERTAIN,
            )
        )
        return True

    def _early_reports(self, message_id: int, now: float) -> None:
        """Reports that came before their text's references were written (a fast network,
        a slow commit) are matched now."""
        m = self.get_message(message_id)
        if m is None:
            return
        rows = self._conn.execute(
            "SELECT d.id, d.reference, d.recipient, d.outcome FROM delivery_reports d"
            " WHERE d.message_id IS NULL AND d.received_at >= ? AND d.reference IN"
            " (SELECT reference FROM message_parts WHERE message_id = ?) ORDER BY d.id",
            (_attempt_time(m), message_id),
        ).fetchall()
        for r in rows:
            if not same_number(str(r["recipient"]), m.destination):
                continue
            part = self._scalar(
                "SELECT id FROM message_parts WHERE message_id = ? AND reference = ?",
                (message_id, r["reference"]),
            )
            self._conn.execute(
                "UPDATE message_parts SET status = ?, status_at = ? WHERE id = ?",
                (r["outcome"], now, part),
            )
            self._link_report(int(r["id"]), message_id, int(part))
            if r["outcome"] == "delivered":
                self._delivered_if_every_part(message_id, now)

    def add_reply(
        self,
        sender: str,
        text: str,
        now: float,
        *,
        optout: bool = False,
        kind: str = "message",
        sender_kind: str = "number",
        number: str | None = None,
        message_id: int | None = None,
        call_id: int | None = None,
        incomplete: bool = False,
        modem: str = "",
        sms_key: str | None = None,
    ) -> int | None:
        """Keep an inbound SMS; returns its id, or None when `sms_key` says this very SMS
        is kept already (read twice from the SIM)."""
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO replies (sender, text, received_at, optout, kind,"
            " sender_kind, number, message_id, call_id, incomplete, modem, sms_key)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                sender,
                text,
                now,
                int(optout),
                kind,
                sender_kind,
                number,
                message_id,
                call_id,
                int(incomplete),
                modem,
                sms_key,
            ),
        )
        if cur.rowcount <= 0:
            return None
        assert cur.lastrowid is not None
        self.emit(
            ReplyReceived(
                reply_id=cur.lastrowid,
                sender=sender,
                text=text,
                at=now,
                optout=optout,
                kind=kind,
                sender_kind=sender_kind,
                message_id=message_id,
                call_id=call_id,
                incomplete=incomplete,
            )
        )
        return cur.lastrowid

    def unjudged_replies(self) -> list[tuple[int, str, str, float]]:
        """(id, sender, text, received_at) of replies kept before they were judged (from
        a database older than schema 3: no number, kind "message")."""
        rows = self._conn.execute(
            "SELECT id, sender, text, received_at FROM replies"
            " WHERE number IS NULL AND sender_kind = 'number' AND kind = 'message' ORDER BY id"
        ).fetchall()
        return [(int(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    def judge_reply(
        self, reply_id: int, *, number: str | None, sender_kind: str, kind: str
    ) -> None:
        """Note what an old reply was, once judged."""
        self._conn.execute(
            "UPDATE replies SET number = ?, sender_kind = ?, kind = ?, optout = ? WHERE id = ?",
            (number, sender_kind, kind, int(kind == "opt_out"), reply_id),
        )

    def set_reply_answer(self, reply_id: int, message_id: int) -> None:
        """Note the automatic answer (a confirmation, the help text) a reply got."""
        self._conn.execute("UPDATE replies SET answer_id = ? WHERE id = ?", (message_id, reply_id))

    def latest_text_to(self, destination: str, since: float) -> Message | None:
        """The latest missed-call text that went (or may have gone) to `destination` since
        `since`: what a reply from that number answers."""
        row = self._conn.execute(
            "SELECT * FROM messages WHERE destination = ? AND kind = ?"
            " AND state IN ('sent', 'uncertain', 'delivered')"
            " AND COALESCE(sent_at, updated_at) >= ?"
            " ORDER BY COALESCE(sent_at, updated_at) DESC, id DESC LIMIT 1",
            (destination, str(MessageKind.MISSED_CALL), since),
        ).fetchone()
        return None if row is None else _row_message(row)

    def is_opted_out(self, number: str) -> bool:
        """Is the number on the do-not-text list?"""
        return self._scalar("SELECT 1 FROM optouts WHERE number = ?", (number,)) is not None

    def answered_since(self, destination: str, kind: MessageKind, since: float) -> bool:
        """Was a text of `kind` written to `destination` since `since` (any state)?"""
        return (
            self._scalar(
                "SELECT 1 FROM messages WHERE destination = ? AND kind = ? AND created_at >= ?"
                " LIMIT 1",
                (destination, str(kind), since),
            )
            is not None
        )

    # -- forwarding --------------------------------------------------------------------------

    def add_forward(
        self,
        reply_id: int,
        *,
        channel: str,
        target: str,
        now: float,
        due: float | None = None,
        state: str = "pending",
    ) -> int:
        """Queue a reply to be forwarded (`channel` mail or mail_summary) to `target`, or
        note one handed to the outbox (channel sms, state handed)."""
        cur = self._conn.execute(
            "INSERT INTO forwards (reply_id, channel, target, state, created_at,"
            " next_attempt_at, updated_at) VALUES (?,?,?,?,?,?,?)",
            (reply_id, channel, target, state, now, now if due is None else due, now),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def forwards_since(self, sender: str, channel: str, since: float) -> int:
        """How many replies `sender` sent since `since` were queued for `channel` (a
        forward is written with its reply)."""
        return int(
            self._scalar(
                # from the sender's recent replies (an index), not from every forward
                "SELECT COUNT(DISTINCT f.reply_id) FROM replies r"
                " JOIN forwards f ON f.reply_id = r.id"
                " WHERE r.sender = ? AND r.received_at >= ? AND f.channel = ?",
                (sender, since, channel),
            )
        )

    def due_forwards(self, now: float, limit: int = 50) -> list[sqlite3.Row]:
        """Pending forwards due by `now`, oldest first."""
        return list(
            self._conn.execute(
                "SELECT * FROM forwards WHERE state = 'pending' AND next_attempt_at <= ?"
                " AND channel IN ('mail', 'mail_summary')"
                " ORDER BY next_attempt_at, id LIMIT ?",
                (now, limit),
            ).fetchall()
        )

    def next_forward_at(self) -> float | None:
        """When the next pending forward is due (None: none pending)."""
        v = self._scalar("SELECT MIN(next_attempt_at) FROM forwards WHERE state = 'pending'")
        return None if v is None else float(v)

    def update_forward(
        self,
        forward_id: int,
        *,
        now: float,
        state: str,
        attempts: int,
        next_attempt_at: float | None = None,
        last_error: str | None = None,
    ) -> None:
        """Record what became of a forward's attempt."""
        self._conn.execute(
            "UPDATE forwards SET state = ?, attempts = ?, updated_at = ?,"
            " next_attempt_at = COALESCE(?, next_attempt_at), last_error = ? WHERE id = ?",
            (state, attempts, now, next_attempt_at, last_error, forward_id),
        )
        if state != "pending":
            self.bump(f"forwards.{state}", 1, now)

    def replies_of(self, sender: str, since: float, until: float) -> int:
        """How many replies `sender` sent in [since, until) that were not mailed one by
        one (what a flood's summary mail counts)."""
        return int(
            self._scalar(
                "SELECT COUNT(*) FROM replies r WHERE r.sender = ? AND r.received_at >= ?"
                " AND r.received_at < ? AND NOT EXISTS (SELECT 1 FROM forwards f"
                " WHERE f.reply_id = r.id AND f.channel = 'mail')",
                (sender, since, until),
            )
        )

    # -- the do-not-text list and AMI gaps --------------------------------------------------

    def optout_add(
        self,
        number: str,
        now: float,
        *,
        source: str = "cli",
        text: str = "",
        reply_id: int | None = None,
    ) -> bool:
        """Put a number (E.164) on the do-not-text list, with how (source) and the exact
        words; audited. False if it already was."""
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO optouts (number, added_at, source, text) VALUES (?,?,?,?)",
            (number, now, source, text),
        )
        if cur.rowcount <= 0:
            return False
        self._audit(number, True, source=source, text=text, reply_id=reply_id, now=now)
        # However it is opted out (a STOP, the CLI), nothing still waiting goes to it.
        self.cancel_pending(number, OPTED_OUT, now)
        self.emit(OptOutChanged(number=number, opted_out=True, source=source, at=now))
        return True

    def optout_remove(
        self,
        number: str,
        now: float,
        *,
        source: str = "cli",
        text: str = "",
        reply_id: int | None = None,
    ) -> bool:
        """Take a number off the list (audited); False if it was not on it."""
        cur = self._conn.execute("DELETE FROM optouts WHERE number = ?", (number,))
        if cur.rowcount <= 0:
            return False
        self._audit(number, False, source=source, text=text, reply_id=reply_id, now=now)
        self.emit(OptOutChanged(number=number, opted_out=False, source=source, at=now))
        return True

    def _audit(
        self,
        number: str,
        opted_out: bool,
        *,
        source: str,
        text: str,
        reply_id: int | None,
        now: float,
    ) -> None:
        self._conn.execute(
            "INSERT INTO optout_log (number, opted_out, source, text, reply_id, at)"
            " VALUES (?,?,?,?,?,?)",
            (number, int(opted_out), source, text, reply_id, now),
        )

    # -- several offices (daemon.store.jobs) -------------------------------------------------

    def jobs(self) -> jobs.Ledger:
        """The jobs a sender took and the group's do-not-text events, in this transaction."""
        return jobs.Ledger(self._conn)

    # -- run-time settings (daemon.store.settings) ------------------------------------------

    def pause_state(self, now: float) -> settings.PauseState | None:
        """The pause of texting in force at `now`, if any."""
        return settings.pause_state(self._conn, now)

    def pause(self, until: float | None, *, source: str, now: float) -> None:
        """Pause texting until `until` (None: until resumed); calls are then decided
        `disabled`."""
        settings.set_pause(self._conn, until, source, now)
        self.emit(PauseChanged(paused=True, until=until, source=source, at=now))

    def resume(self, *, source: str, now: float) -> bool:
        """End the pause; False when texting was not paused."""
        if not settings.clear_pause(self._conn):
            return False
        self.emit(PauseChanged(paused=False, until=None, source=source, at=now))
        return True

    def add_gap(self, started_at: float, ended_at: float | None, detail: str = "") -> int:
        """Keep a time span in which the AMI link was down (calls may be missing)."""
        cur = self._conn.execute(
            "INSERT INTO ami_gaps (started_at, ended_at, detail) VALUES (?,?,?)",
            (started_at, ended_at, detail),
        )
        assert cur.lastrowid is not None
        self.emit(
            AmiGap(gap_id=cur.lastrowid, started_at=started_at, ended_at=ended_at, detail=detail)
        )
        return cur.lastrowid
