"""Retention: calls past `[database] keep_calls` go, with their decisions and texts.

One call to `prune_batch` is one short transaction (the store runs it like any other
unit of writes): at most `limit` calls, oldest first, with their decisions and the texts
only those calls led to (and each text's parts and delivery reports); once no old call is
left, at most `limit` old texts no call leads to any more (answers, staff forwards, tests,
texts whose last call went in an earlier batch), old unmatched delivery reports and old
AMI gaps. The caller loops until a
batch finds nothing, yielding between batches, so the pipeline's writes interleave.

Never deleted: a text still pending or being sent (waiting, queued, sending), and so
neither the calls that led to it; replies, opt-outs and their audit log, counters. A
reply that answered a deleted text or call keeps its words; only its link is cleared.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

#: Texts in these states are never deleted, whatever their age.
_KEEP_STATES = ("waiting", "queued", "sending")
_KEEP_SQL = ",".join(f"'{s}'" for s in _KEEP_STATES)


@dataclass(slots=True)
class Pruned:
    """What one batch (or a whole pass, summed) deleted."""

    calls: int = 0
    decisions: int = 0
    messages: int = 0
    parts: int = 0
    reports: int = 0
    gaps: int = 0

    @property
    def rows(self) -> int:
        """Every row deleted."""
        return self.calls + self.decisions + self.messages + self.parts + self.reports + self.gaps

    def add(self, other: Pruned) -> None:
        """Sum another batch into this one."""
        self.calls += other.calls
        self.decisions += other.decisions
        self.messages += other.messages
        self.parts += other.parts
        self.reports += other.reports
        self.gaps += other.gaps


def _marks(ids: Sequence[int]) -> str:
    return ",".join("?" * len(ids))


def _delete_messages(conn: sqlite3.Connection, ids: list[int], out: Pruned) -> None:
    """Delete texts (their parts and reports first); replies keep their words."""
    if not ids:
        return
    q = _marks(ids)
    out.reports += conn.execute(
        "DELETE FROM delivery_reports WHERE part_id IN"
        f" (SELECT id FROM message_parts WHERE message_id IN ({q}))",
        ids,
    ).rowcount
    conn.execute(f"UPDATE replies SET message_id = NULL WHERE message_id IN ({q})", ids)
    conn.execute(f"UPDATE replies SET answer_id = NULL WHERE answer_id IN ({q})", ids)
    out.reports += conn.execute(
        f"DELETE FROM delivery_reports WHERE message_id IN ({q})", ids
    ).rowcount
    out.parts += conn.execute(f"DELETE FROM message_parts WHERE message_id IN ({q})", ids).rowcount
    out.messages += conn.execute(f"DELETE FROM messages WHERE id IN ({q})", ids).rowcount


def prune_batch(conn: sqlite3.Connection, cutoff: float, limit: int) -> Pruned:
    """Delete one batch of what ended before `cutoff` (epoch seconds); see the module doc.

    Runs inside the caller's transaction. A batch that deletes nothing means done.
    """
    out = Pruned()
    calls = [
        r[0]
        for r in conn.execute(
            "SELECT c.id FROM calls c WHERE c.ended_at < ? AND NOT EXISTS ("
            " SELECT 1 FROM decisions d JOIN messages m ON m.id = d.message_id"
            f" WHERE d.call_id = c.id AND m.state IN ({_KEEP_SQL}))"
            " ORDER BY c.ended_at LIMIT ?",
            (cutoff, limit),
        )
    ]
    if calls:
        q = _marks(calls)
        linked = [
            r[0]
            for r in conn.execute(
                f"SELECT DISTINCT message_id FROM decisions WHERE call_id IN ({q})"
                " AND message_id IS NOT NULL",
                calls,
            )
        ]
        # a text another (younger, or later batch's) call also leads to stays for now:
        # it goes with its last call, or as an orphan below
        doomed: list[int] = []
        if linked:
            m = _marks(linked)
            shared = {
                r[0]
                for r in conn.execute(
                    f"SELECT DISTINCT message_id FROM decisions WHERE message_id IN ({m})"
                    f" AND call_id NOT IN ({q})",
                    [*linked, *calls],
                )
            }
            doomed = [i for i in linked if i not in shared]
        conn.execute(f"UPDATE replies SET call_id = NULL WHERE call_id IN ({q})", calls)
        out.decisions += conn.execute(
            f"DELETE FROM decisions WHERE call_id IN ({q})", calls
        ).rowcount
        _delete_messages(conn, doomed, out)
        out.calls += conn.execute(f"DELETE FROM calls WHERE id IN ({q})", calls).rowcount
        # the rest once the old calls are gone: until then nearly every old text still
        # has its call, and looking for orphans among them would cost each batch a scan
        return out
    orphans = [
        r[0]
        for r in conn.execute(
            "SELECT m.id FROM messages m WHERE m.created_at < ?"
            f" AND m.state NOT IN ({_KEEP_SQL})"
            " AND NOT EXISTS (SELECT 1 FROM decisions d WHERE d.message_id = m.id)"
            " ORDER BY m.created_at LIMIT ?",
            (cutoff, limit),
        )
    ]
    _delete_messages(conn, orphans, out)
    out.reports += conn.execute(
        "DELETE FROM delivery_reports WHERE id IN (SELECT id FROM delivery_reports"
        " WHERE received_at < ? AND message_id IS NULL LIMIT ?)",
        (cutoff, limit),
    ).rowcount
    out.gaps += conn.execute(
        "DELETE FROM ami_gaps WHERE id IN (SELECT id FROM ami_gaps"
        " WHERE COALESCE(ended_at, started_at) < ? LIMIT ?)",
        (cutoff, limit),
    ).rowcount
    return out
