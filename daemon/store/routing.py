"""What a pool of modems reads to route texts: the queued texts with the modem that last
texted each number, and how many texts each modem (SIM) sent this month.

Plain functions over a connection (run on the database thread by `Store.queued_routes`
and `Store.sent_by_modem`); they only read. Which modem sent a text is its `sender`
column: written when the text goes to a modem (`sending`) and kept when it is sent.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from daemon.model import MessageState

#: States whose sender surely or maybe texted the number (the affinity of a reply).
_TEXTED = (MessageState.SENT, MessageState.DELIVERED, MessageState.UNCERTAIN)
#: States that count against a SIM's monthly plan: went to the modem, maybe out.
_SPENT = (*_TEXTED, MessageState.SENDING)


@dataclass(frozen=True, slots=True)
class QueuedText:
    """A queued text as a pool routes it."""

    message_id: int
    next_attempt_at: float | None
    destination: str
    line: str  # the DID the caller rang ("" when none)
    last_modem: str  # the modem that last texted this number ("" when none did)


def _marks(items: tuple[object, ...]) -> str:
    return ",".join("?" * len(items))


def queued_routes(conn: sqlite3.Connection) -> list[QueuedText]:
    """Every queued text, oldest first, with the modem that last texted its number."""
    texted = tuple(str(s) for s in _TEXTED)
    rows = conn.execute(
        "SELECT m.id, m.next_attempt_at, m.destination, m.line,"
        " COALESCE((SELECT s.sender FROM messages s WHERE s.destination = m.destination"
        f" AND s.state IN ({_marks(texted)}) AND s.sender != ''"
        " ORDER BY COALESCE(s.sent_at, s.updated_at) DESC, s.id DESC LIMIT 1), '')"
        " FROM messages m WHERE m.state = 'queued' ORDER BY m.id",
        texted,
    ).fetchall()
    return [QueuedText(int(r[0]), r[1], str(r[2]), str(r[3]), str(r[4])) for r in rows]


def sent_by_modem(conn: sqlite3.Connection, since: float) -> dict[str, int]:
    """Texts each modem took since `since` (sending, sent, delivered or uncertain: each
    may have cost the SIM a text), by modem name."""
    spent = tuple(str(s) for s in _SPENT)
    rows = conn.execute(
        "SELECT sender, COUNT(*) FROM messages"
        f" WHERE sender != '' AND state IN ({_marks(spent)})"
        " AND COALESCE(sent_at, attempted_at, updated_at) >= ? GROUP BY sender",
        (*spent, since),
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}
