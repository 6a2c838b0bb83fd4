"""What happened, as typed, frozen values: the daemon's events, for sinks to take.

An event that reports something written to the database is emitted once, after the
transaction that made it true has committed (the store publishes it; see
`daemon.store.store.Store`), so a sink never tells the world about a text that a rollback
took back. Events about things outside the database (the modem's state, a sending pause)
are emitted by their owner when they happen.

Sinks (daemon/sinks/: the log, the counters; later MQTT, metrics, mail) only listen: the
pipeline and the outbox never call a sink, and a new feature is a new sink.

This module imports only daemon.model: any package that emits or hears events may import
it (everything but intake and decide, which emit nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from daemon.model import FinishedCall, MessageKind, MessageState


@dataclass(frozen=True, slots=True)
class CallRecorded:
    """A finished call was written (every call, decided or not)."""

    call: FinishedCall
    call_id: int
    destination: str | None  # the caller in E.164 when it is a valid number


@dataclass(frozen=True, slots=True)
class CallDecided:
    """The decision for a finished call was written: send (or merged) or suppress."""

    call: FinishedCall
    call_id: int
    action: str  # "send" or "suppress"
    reason: str  # a reason word (DESIGN.md, Decisions); "missed" for send
    detail: str
    text: str | None
    message_id: int | None
    merged: bool
    at: float


@dataclass(frozen=True, slots=True)
class TextWritten:
    """A new text is in the outbox (`waiting` for its wait step, or `queued`)."""

    message_id: int
    destination: str
    kind: MessageKind
    state: MessageState
    due_at: float
    call_ids: tuple[int, ...]
    line: str
    at: float


@dataclass(frozen=True, slots=True)
class TextChanged:
    """A text moved to another state.

    `reason` says why where there is a why: called_back, answered_on_retry, retry,
    max_age, send_uncertain, in_flight_at_restart, resend_uncertain, permanent_error,
    max_attempts, delivery_report (the network's report moved it). The other fields are
    filled where they apply; `was` is the state a delivery report moved it from (`sent`,
    or `uncertain` for a send a crash cut off, settled after the fact: then `references`
    are the reports' and `age` the seconds since that send started).
    """

    message_id: int
    destination: str
    kind: MessageKind
    state: MessageState
    at: float
    reason: str | None = None
    attempt: int | None = None
    references: tuple[int, ...] = ()
    error: str | None = None
    retry_in: float | None = None
    age: float | None = None
    sender: str = ""
    was: MessageState | None = None


@dataclass(frozen=True, slots=True)
class TextMerged:
    """Another missed call from the same caller joined a pending text (one text, not two)."""

    message_id: int
    destination: str
    state: MessageState
    call_id: int
    calls: int
    at: float


@dataclass(frozen=True, slots=True)
class TextReworded:
    """A pending text got another template (a joining call left a voicemail)."""

    message_id: int
    template_kind: str | None
    at: float


@dataclass(frozen=True, slots=True)
class CallbackCancelled:
    """The office called the caller back (or answered a repeat call): texts cancelled."""

    destination: str
    reason: str
    linkedid: str
    message_ids: tuple[int, ...]
    at: float


@dataclass(frozen=True, slots=True)
class GuardTripped:
    """A cap or the SMS-pumping guard held a text back (written with the decision)."""

    guard: str  # max_per_hour, max_per_day, max_per_month, pumping
    at: float


@dataclass(frozen=True, slots=True)
class SendingPaused:
    """Sending is paused by a guard; `first` is False while the same pause still holds."""

    key: str  # the guard, or "pumping:<number range>"
    detail: str
    first: bool


@dataclass(frozen=True, slots=True)
class PolicyError:
    """The policy said send but gave no text or destination: a bug, made visible; the call
    is recorded as suppressed."""

    linkedid: str
    detail: str


@dataclass(frozen=True, slots=True)
class SendingResumed:
    """A text went ahead: the pause of this guard is over."""

    key: str


@dataclass(frozen=True, slots=True)
class DeliveryReported:
    """The network's delivery report for a part of a text was written."""

    reference: int
    message_id: int | None  # None: no text of ours has that reference
    status: str  # delivered, failed, pending
    at: float


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """A text someone sent to the office's number was written."""

    reply_id: int
    sender: str
    text: str
    at: float
    optout: bool = False
    kind: str = "message"  # opt_out, opt_in, help, possible_opt_out, message
    sender_kind: str = "number"  # number, short_code, alphanumeric, invalid
    message_id: int | None = None  # the text it answers, when linked
    call_id: int | None = None  # the missed call of that text
    incomplete: bool = False  # a part never came


@dataclass(frozen=True, slots=True)
class OptOutChanged:
    """A number was put on (or taken off) the do-not-text list."""

    number: str
    opted_out: bool
    source: str  # cli, keyword, mqtt ...
    at: float


@dataclass(frozen=True, slots=True)
class AmiGap:
    """The AMI link was down from `started_at` to `ended_at`: calls may be missing."""

    gap_id: int
    started_at: float
    ended_at: float | None
    detail: str


@dataclass(frozen=True, slots=True)
class ModemStateChanged:
    """A sender's modem came up, went away, or stopped for good.

    state: ready (with `error` when the probe of maker, operator and signal failed),
    unavailable (will retry), failed (will not retry).
    """

    name: str
    device: str
    state: str
    error: str | None = None
    retry_in: float | None = None
    first_failure: bool = True
    maker: str | None = None
    model: str | None = None
    operator: str | None = None
    signal: int | None = None  # 0-31 (AT+CSQ), 99 unknown
    registration: str | None = None
    mode: str | None = None  # pdu or text


@dataclass(frozen=True, slots=True)
class PauseChanged:
    """Texting was paused (`textback pause`, the MQTT switch) or resumed, in this process.

    A pause made by another process (the CLI) is not an event here: the daemon reads it
    from the database (daemon.store.settings)."""

    paused: bool
    until: float | None  # the end of the pause; None: until resumed (or when resumed)
    source: str  # cli, mqtt
    at: float


#: Every event the daemon emits.
Event = (
    CallRecorded
    | CallDecided
    | TextWritten
    | TextChanged
    | TextMerged
    | TextReworded
    | CallbackCancelled
    | GuardTripped
    | SendingPaused
    | SendingResumed
    | PolicyError
    | DeliveryReported
    | ReplyReceived
    | OptOutChanged
    | AmiGap
    | ModemStateChanged
    | PauseChanged
)


class Sink(Protocol):
    """Takes events. `handle` runs on the event loop and must not block or await: a sink
    with slow work (a network, a disk) queues the event and does the work in its own task
    (see `daemon.sinks.bus.QueueSink`)."""

    name: str

    def handle(self, event: Event) -> None:
        """Take one event."""
        ...
