"""The counters: the one place that names what each event counts.

Two views of the same names:
- `durable_counts(event)`: the day counters kept in SQLite (`counters` table, read by
  `textback stats`). The store bumps them inside the very transaction that writes the
  event's rows, so a count can never disagree with the rows after a crash.
- `CounterSink`: the same counts (and a few that only make sense live, such as guard
  trips) in memory since the process started, for the STATUS line, tests and, later,
  metrics.
"""

from __future__ import annotations

from collections import Counter

from daemon.model import FINAL_STATES, MessageState
from daemon.sinks.events import (
    AmiGap,
    CallDecided,
    CallRecorded,
    DeliveryReported,
    Event,
    GuardTripped,
    OptOutChanged,
    ReplyReceived,
    SendingPaused,
    TextChanged,
)


def durable_counts(event: Event) -> list[tuple[str, float]]:
    """The day counters an event adds one to, each with the time that picks its day."""
    match event:
        case CallRecorded(call=call):
            return [(f"calls.{call.outcome}", call.ended_at)]
        case CallDecided(action="send", at=at):
            return [("decisions.send", at)]
        case CallDecided(reason=reason, at=at):
            return [(f"suppressed.{reason}", at)]
        case TextChanged(state=state, reason=reason, at=at, was=was) if state in FINAL_STATES:
            out = [(f"texts.{state}", at)]
            if state is MessageState.CANCELLED and reason:
                out.append((f"cancelled.{reason}", at))
            if was is MessageState.UNCERTAIN:  # counted uncertain before: now settled
                out.append((f"uncertain_resolved.{state}", at))
            return out
        case DeliveryReported(message_id=mid, status=status, at=at) if mid is not None:
            return [(f"delivery.{status}", at)]
        case ReplyReceived(kind=kind, at=at):
            return [("replies", at), (f"replies.{kind}", at)]
        case OptOutChanged(opted_out=True, at=at):
            return [("optouts.added", at)]
        case OptOutChanged(opted_out=False, at=at):
            return [("optouts.removed", at)]
        case AmiGap(started_at=at):
            return [("ami.gaps", at)]
        case GuardTripped(guard=guard, at=at):
            return [(f"guard.{guard}", at)]
    return []


def live_counts(event: Event) -> list[tuple[str, int]]:
    """What an event adds to the in-memory counts (besides its durable counts).

    A callback's cancellations are counted per text by their TextChanged events.
    """
    match event:
        case CallDecided(action=action, reason=reason):
            return [(f"decision.{action}.{reason}", 1)]
        case SendingPaused(first=True):
            return [("guard_trips", 1)]
    return []


class CounterSink:
    """Counts every event since the process started, by the names above."""

    name = "counters"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def handle(self, event: Event) -> None:
        """Count one event."""
        for name, _ in durable_counts(event):
            self.counts[name] += 1
        for name, n in live_counts(event):
            self.counts[name] += n

    def __getitem__(self, name: str) -> int:
        return self.counts[name]
