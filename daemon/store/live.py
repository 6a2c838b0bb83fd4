"""What the office looks like now, in one read: for live views (MQTT state, a dashboard).

One hop to the database thread, a handful of indexed reads: the day counters (the same
rows `textback stats` sums), the outbox depth, the last missed call, texts sent today by
each sender, and the pause (daemon.store.settings).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from daemon.model import MISSED_OUTCOMES, OPEN_STATES, MessageState
from daemon.store import settings

_MISSED = tuple(f"calls.{o}" for o in sorted(MISSED_OUTCOMES))
_OPEN = tuple(str(s) for s in sorted(OPEN_STATES))
_SENT = (str(MessageState.SENT), str(MessageState.DELIVERED))
#: A text is sent (or expires) within max_age of being written; two days more than
#: covers any sane max_age and keeps the per-sender count on the state index.
_SENT_LOOKBACK = 2 * 86400.0


@dataclass(frozen=True, slots=True)
class LiveState:
    """Today's counts (the office's calendar day), the outbox now, and the pause."""

    missed_today: int
    sent_today: int
    failed_today: int  # failed or expired: not sent
    outbox_depth: int  # waiting, queued or being sent
    queued: int  # due, waiting for a sender
    last_missed_at: float | None
    paused: settings.PauseState | None
    sent_today_by: dict[str, int] = field(default_factory=dict)  # by sender (modem) name


def read_live(conn: sqlite3.Connection, day: str, day_start: float, now: float) -> LiveState:
    """The live state: `day` is today's date and `day_start` its local midnight."""

    def counter(names: tuple[str, ...]) -> int:
        marks = ",".join("?" * len(names))
        row = conn.execute(
            f"SELECT COALESCE(SUM(value), 0) FROM counters WHERE day = ? AND name IN ({marks})",
            (day, *names),
        ).fetchone()
        return int(row[0])

    marks = ",".join("?" * len(_OPEN))
    depth = conn.execute(
        f"SELECT COUNT(*), COALESCE(SUM(state = ?), 0) FROM messages WHERE state IN ({marks})",
        (str(MessageState.QUEUED), *_OPEN),
    ).fetchone()
    outcomes = tuple(name.removeprefix("calls.") for name in _MISSED)
    om = ",".join("?" * len(outcomes))
    last = conn.execute(
        f"SELECT MAX(ended_at) FROM calls WHERE inbound = 1 AND outcome IN ({om})", outcomes
    ).fetchone()[0]
    by: dict[str, int] = {}
    for sender, n in conn.execute(
        "SELECT sender, COUNT(*) FROM messages WHERE state IN (?, ?) AND created_at >= ?"
        " AND sent_at >= ? GROUP BY sender",
        (*_SENT, day_start - _SENT_LOOKBACK, day_start),
    ):
        by[str(sender)] = int(n)
    return LiveState(
        missed_today=counter(_MISSED),
        sent_today=counter(("texts.sent",)),
        failed_today=counter(("texts.failed", "texts.expired")),
        outbox_depth=int(depth[0]),
        queued=int(depth[1]),
        last_missed_at=None if last is None else float(last),
        paused=settings.pause_state(conn, now),
        sent_today_by=by,
    )
