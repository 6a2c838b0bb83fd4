"""Run-time settings kept in the database (the `settings` table, migration 7).

One row a name. The only one so far is `paused`: the on/off toggle of `textback pause`,
`textback resume` and the Home Assistant switch. Its value is the epoch seconds the pause
ends at, or '' for a pause until resumed; no row means not paused. A pause whose end has
passed is over without anyone deleting the row.

Why a row and not a signal: the CLI is another process, and a restart must keep the
pause. The pipeline reads the row inside the very transaction that decides a call
(`StoreTx.policy_facts`), so a pause made by the CLI applies to the next call decided,
with no polling at all; the MQTT worker polls it every few seconds only to show it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class PauseState:
    """A pause in force: until when (None: until resumed), made how, and when."""

    until: float | None
    source: str
    since: float

    def detail(self) -> str:
        """The words a decision's detail gives it."""
        if self.until is None:
            return f"paused ({self.source}) until resumed"
        end = datetime.fromtimestamp(self.until, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return f"paused ({self.source}) until {end}"


def pause_state(conn: sqlite3.Connection, now: float) -> PauseState | None:
    """The pause in force at `now`, or None (no row, or its end has passed)."""
    row = conn.execute(
        "SELECT value, updated_at, source FROM settings WHERE name = ?", (PAUSED,)
    ).fetchone()
    if row is None:
        return None
    value, since, source = row[0], float(row[1]), str(row[2])
    if value == "":
        return PauseState(None, source, since)
    try:
        until = float(value)
    except ValueError:  # a hand-edited row: read as paused until resumed (fail safe)
        return PauseState(None, source, since)
    return PauseState(until, source, since) if until > now else None


def set_pause(conn: sqlite3.Connection, until: float | None, source: str, now: float) -> None:
    """Pause texting until `until` (None: until resumed), replacing any pause."""
    conn.execute(
        "INSERT INTO settings (name, value, updated_at, source) VALUES (?,?,?,?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
        " updated_at = excluded.updated_at, source = excluded.source",
        (PAUSED, "" if until is None else repr(float(until)), now, source),
    )


def clear_pause(conn: sqlite3.Connection) -> bool:
    """End the pause; False when there was no row."""
    return conn.execute("DELETE FROM settings WHERE name = ?", (PAUSED,)).rowcount > 0
