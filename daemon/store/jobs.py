"""Several offices over a broker (migration 9): the jobs a sender took, and the group's
do-not-text events applied here.

`Ledger` runs on the database thread inside one transaction (`StoreTx.jobs()`): a job is
recorded (its job_id unique) in the same transaction that writes its text to the outbox,
so it is on disk before any AT+CMGS, and a job seen again finds it. A job claimed from
its site and not yet granted is a row with no text (message_id NULL) and no state.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job as a sender recorded it; `state` is "" until its result is known."""

    job_id: str
    site: str
    message_id: int | None
    state: str
    detail: str
    modem: str
    answered_at: float | None


class Ledger:
    """The statements on `jobs` and `group_optouts`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def job(self, job_id: str) -> JobRow | None:
        """The recorded job, if this job_id was seen before."""
        row = self._conn.execute(
            "SELECT job_id, site, message_id, state, detail, modem, answered_at"
            " FROM jobs WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        return None if row is None else JobRow(*row)

    def job_of_message(self, message_id: int) -> JobRow | None:
        """The job an outbox row sends, if it is one."""
        row = self._conn.execute(
            "SELECT job_id, site, message_id, state, detail, modem, answered_at"
            " FROM jobs WHERE message_id = ?",
            (message_id,),
        ).fetchone()
        return None if row is None else JobRow(*row)

    def add_job(
        self,
        job_id: str,
        site: str,
        now: float,
        *,
        message_id: int | None = None,
        state: str = "",
        detail: str = "",
    ) -> bool:
        """Record a job (unique job_id); False when it already was."""
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO jobs (job_id, site, message_id, state, detail, received_at,"
            " answered_at) VALUES (?,?,?,?,?,?,?)",
            (job_id, site, message_id, state, detail, now, now if state else None),
        )
        return cur.rowcount > 0

    def answer_job(self, job_id: str, state: str, detail: str, modem: str, now: float) -> None:
        """Keep the result a job was answered with (the first one stays)."""
        self._conn.execute(
            "UPDATE jobs SET state = ?, detail = ?, modem = ?, answered_at = ?"
            " WHERE job_id = ? AND state = ''",
            (state, detail, modem, now, job_id),
        )

    def attach(self, job_id: str, message_id: int) -> None:
        """A claimed job granted: the outbox row that sends it."""
        self._conn.execute("UPDATE jobs SET message_id = ? WHERE job_id = ?", (message_id, job_id))

    def ended_unanswered(self, states: tuple[str, ...]) -> list[tuple[JobRow, str, str, str]]:
        """Jobs whose text ended (its state one of `states`) with no answer recorded (a
        stop between the two): each with the text's state, its why and its sender."""
        marks = ",".join("?" * len(states))
        rows = self._conn.execute(
            "SELECT j.job_id, j.site, j.message_id, j.state, j.detail, j.modem, j.answered_at,"
            " m.state, COALESCE(m.last_error, m.reason, ''), m.sender"
            " FROM jobs j JOIN messages m ON m.id = j.message_id"
            f" WHERE j.state = '' AND m.state IN ({marks}) ORDER BY j.received_at",
            states,
        ).fetchall()
        return [(JobRow(*r[:7]), str(r[7]), str(r[8]), str(r[9])) for r in rows]

    def claimed(self) -> list[tuple[str, str]]:
        """Jobs claimed and neither granted (no text) nor answered: (job_id, site)."""
        rows = self._conn.execute(
            "SELECT job_id, site FROM jobs WHERE message_id IS NULL AND state = ''"
            " ORDER BY received_at"
        ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def forget(self, job_id: str) -> None:
        """Drop a claim that was not granted (or given back): the job was never ours."""
        self._conn.execute(
            "DELETE FROM jobs WHERE job_id = ? AND message_id IS NULL AND state = ''",
            (job_id,),
        )

    def group_optout_at(self, number_hash: str) -> tuple[str, float] | None:
        """The group event last applied for a hashed number: (event_id, its time)."""
        row = self._conn.execute(
            "SELECT event_id, at FROM group_optouts WHERE number_hash = ?", (number_hash,)
        ).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def note_group_optout(
        self, number_hash: str, event_id: str, opted_out: bool, at: float, now: float
    ) -> None:
        """Remember the group event applied (or published) for a hashed number."""
        self._conn.execute(
            "INSERT INTO group_optouts (number_hash, event_id, opted_out, at, applied_at)"
            " VALUES (?,?,?,?,?) ON CONFLICT(number_hash) DO UPDATE SET"
            " event_id = excluded.event_id, opted_out = excluded.opted_out,"
            " at = excluded.at, applied_at = excluded.applied_at",
            (number_hash, event_id, int(opted_out), at, now),
        )
