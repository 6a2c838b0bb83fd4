"""The reports: what `textback stats` and `textback history` read, in one hop each.

Plain functions over a connection (run on the database thread by `Store.stats` and
`Store.history`); they only read. The calendar (which day a timestamp falls on) is the
store's, in the zone the office keeps its days in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from daemon.store.rows import placeholders


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
    resolved_by: str | None = None  # 'delivery_report': an uncertain text settled after
    modem: str | None = None  # the modem that took its text (several modems: which SIM)


@dataclass(slots=True)
class PeriodStats:
    """Counts over one period (today, 7 days, 30 days)."""

    calls: dict[str, int] = field(default_factory=dict)
    texts: dict[str, int] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)
    replies: int = 0
    replies_by_kind: dict[str, int] = field(default_factory=dict)
    optouts_added: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    #: texts each modem took (sent, delivered or uncertain), by modem name
    texts_by_modem: dict[str, int] = field(default_factory=dict)


def _all(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
    return list(conn.execute(sql, tuple(params)).fetchall())


def _scalar(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    row = conn.execute(sql, tuple(params)).fetchone()
    return None if row is None else row[0]


def period_stats(conn: sqlite3.Connection, start: float, first_day: str) -> PeriodStats:
    """Counts over the time from `start` (local midnight of `first_day`) on."""
    out = PeriodStats()
    for r in _all(
        conn,
        "SELECT outcome, COUNT(*) AS n FROM calls WHERE ended_at >= ? GROUP BY outcome",
        (start,),
    ):
        out.calls[r["outcome"]] = r["n"]
    for r in _all(
        conn,
        "SELECT state, COUNT(*) AS n FROM messages WHERE created_at >= ? GROUP BY state",
        (start,),
    ):
        out.texts[r["state"]] = r["n"]
    for r in _all(
        conn,
        "SELECT reason, COUNT(*) AS n FROM decisions"
        " WHERE decided_at >= ? AND action = 'suppress' GROUP BY reason",
        (start,),
    ):
        out.suppressed[r["reason"]] = r["n"]
    # A text cancelled in the wait step is a reason for not sending, too.
    for r in _all(
        conn,
        "SELECT reason, COUNT(*) AS n FROM messages"
        " WHERE created_at >= ? AND state = 'cancelled' GROUP BY reason",
        (start,),
    ):
        key = r["reason"] or "cancelled"
        out.suppressed[key] = out.suppressed.get(key, 0) + r["n"]
    for r in _all(
        conn,
        "SELECT sender, COUNT(*) AS n FROM messages WHERE created_at >= ? AND sender != ''"
        " AND state IN ('sent', 'delivered', 'uncertain') GROUP BY sender",
        (start,),
    ):
        out.texts_by_modem[r["sender"]] = r["n"]
    out.replies = int(
        _scalar(conn, "SELECT COUNT(*) FROM replies WHERE received_at >= ?", (start,))
    )
    for r in _all(
        conn,
        "SELECT kind, COUNT(*) AS n FROM replies WHERE received_at >= ? GROUP BY kind",
        (start,),
    ):
        out.replies_by_kind[r["kind"]] = r["n"]
    out.optouts_added = int(
        _scalar(conn, "SELECT COUNT(*) FROM optouts WHERE added_at >= ?", (start,))
    )
    for r in _all(
        conn,
        "SELECT name, SUM(value) AS n FROM counters WHERE day >= ? GROUP BY name",
        (first_day,),
    ):
        out.counters[r["name"]] = r["n"]
    return out


def history(
    conn: sqlite3.Connection,
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
        " m.last_error, m.resolved_by, m.sender"
        " FROM calls c"
        " LEFT JOIN decisions d ON d.id = (SELECT MAX(id) FROM decisions WHERE call_id = c.id)"
        " LEFT JOIN messages m ON m.id = d.message_id"
        " WHERE 1=1"
    )
    params: list[Any] = []
    if caller is not None:
        names = [caller] if isinstance(caller, str) else list(caller)
        marks = placeholders(names)
        sql += f" AND (c.caller IN ({marks}) OR c.destination IN ({marks}))"
        params += names + names
    if since is not None:
        sql += " AND c.ended_at >= ?"
        params.append(since)
    sql += " ORDER BY c.ended_at DESC, c.id DESC LIMIT ?"
    params.append(limit)
    out = []
    for r in _all(conn, sql, params):
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
                resolved_by=r["resolved_by"],
                modem=r["sender"] or None,
            )
        )
    return out


@dataclass(slots=True)
class ReplyRow:
    """One text someone sent back, with the text and the call it answers."""

    reply_id: int
    sender: str
    number: str | None
    sender_kind: str
    text: str
    received_at: float
    kind: str
    incomplete: bool
    modem: str
    message_id: int | None
    call_id: int | None
    call_linkedid: str | None
    call_outcome: str | None
    call_did: str | None
    call_ended_at: float | None
    voicemail_left: bool | None
    answer_id: int | None
    answer_state: str | None


def replies(
    conn: sqlite3.Connection,
    *,
    caller: str | Sequence[str] | None = None,
    since: float | None = None,
    limit: int = 50,
    reply_id: int | None = None,
) -> list[ReplyRow]:
    """Recent replies, newest first, each with the call it answers and its own answer."""
    sql = (
        "SELECT r.id, r.sender, r.number, r.sender_kind, r.text, r.received_at, r.kind,"
        " r.incomplete, r.modem, r.message_id, r.call_id, r.answer_id,"
        " c.linkedid, c.outcome, c.did, c.ended_at, c.voicemail_left, a.state AS astate"
        " FROM replies r"
        " LEFT JOIN calls c ON c.id = r.call_id"
        " LEFT JOIN messages a ON a.id = r.answer_id"
        " WHERE 1=1"
    )
    params: list[Any] = []
    if caller is not None:
        names = [caller] if isinstance(caller, str) else list(caller)
        marks = placeholders(names)
        sql += f" AND (r.sender IN ({marks}) OR r.number IN ({marks}))"
        params += names + names
    if since is not None:
        sql += " AND r.received_at >= ?"
        params.append(since)
    if reply_id is not None:
        sql += " AND r.id = ?"
        params.append(reply_id)
    sql += " ORDER BY r.received_at DESC, r.id DESC LIMIT ?"
    params.append(limit)
    out = []
    for r in _all(conn, sql, params):
        vm = r["voicemail_left"]
        out.append(
            ReplyRow(
                reply_id=r["id"],
                sender=r["sender"],
                number=r["number"],
                sender_kind=r["sender_kind"],
                text=r["text"],
                received_at=r["received_at"],
                kind=r["kind"],
                incomplete=bool(r["incomplete"]),
                modem=r["modem"],
                message_id=r["message_id"],
                call_id=r["call_id"],
                call_linkedid=r["linkedid"],
                call_outcome=r["outcome"],
                call_did=r["did"],
                call_ended_at=r["ended_at"],
                voicemail_left=None if vm is None else bool(vm),
                answer_id=r["answer_id"],
                answer_state=r["astate"],
            )
        )
    return out
