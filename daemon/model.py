"""Typed values that flow from the tracker to policy, outbox, store and any event sink."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """How a call ended; exactly one per finished call (DESIGN.md, Outcome words)."""

    ANSWERED = "answered"
    VOICEMAIL = "voicemail"
    NO_ANSWER = "no_answer"
    ABANDONED = "abandoned"
    SHORT_ABANDON = "short_abandon"
    BUSY = "busy"
    QUEUE_ABANDON = "queue_abandon"
    IVR_ABANDON = "ivr_abandon"
    CARRIER_VOICEMAIL = "carrier_voicemail"
    NOT_INBOUND = "not_inbound"


#: Outcomes that count as "missed": the caller may get a text.
MISSED_OUTCOMES = frozenset(
    {
        Outcome.VOICEMAIL,
        Outcome.NO_ANSWER,
        Outcome.ABANDONED,
        Outcome.BUSY,
        Outcome.QUEUE_ABANDON,
        Outcome.IVR_ABANDON,
        Outcome.CARRIER_VOICEMAIL,
    }
)


class Reason(StrEnum):
    """The one reason word of a decision (DESIGN.md, Decisions)."""

    MISSED = "missed"  # the reason attached to `send`
    ANSWERED = "answered"
    NOT_INBOUND = "not_inbound"
    ANONYMOUS = "anonymous"
    PRESENTATION_UNKNOWN = "presentation_unknown"  # unknown_presentation = "skip"
    INVALID_NUMBER = "invalid_number"
    SHORT_ABANDON = "short_abandon"
    COOLDOWN = "cooldown"
    OPTED_OUT = "opted_out"
    DESTINATION_NOT_ALLOWED = "destination_not_allowed"
    NOT_MOBILE = "not_mobile"
    CAP_REACHED = "cap_reached"
    DISABLED = "disabled"
    CALLED_BACK = "called_back"
    ANSWERED_ON_RETRY = "answered_on_retry"
    BLOCKED = "blocked"


@dataclass(frozen=True, slots=True)
class FinishedCall:
    """One call (one Linkedid), finished: the tracker emits exactly one per call."""

    linkedid: str
    caller: str  # caller ID number exactly as the PBX gave it (untrusted)
    caller_name: str  # caller ID name as the PBX gave it, "" when none (untrusted)
    did: str  # the number dialled on the inbound trunk, "" when unknown
    inbound: bool
    outcome: Outcome
    started_at: float  # epoch seconds of the first event of the call
    ended_at: float  # epoch seconds of the last hang-up
    ring_seconds: float  # first ring to answer, voicemail or hang-up
    voicemail_left: bool | None  # None when unknowable or no voicemail
    withheld: bool  # the caller asked for privacy (CALLERID(pres) prohib*, "anonymous")
    dialled: str = ""  # outbound calls: the number an office phone dialled
    answered_by: str = ""  # the channel/agent that answered, when a person did
    channel: str = ""  # the originating channel
    #: nothing rang and the PBX answered (IVR, announcement): seconds from that answer to
    #: the caller's hang-up, judged against min_ring; None otherwise or when unknowable
    ivr_seconds: float | None = None
    #: an event (manager.conf channelvars) or a Getvar answer said whether the caller
    #: withheld the number; False: nothing could tell ([calls] unknown_presentation)
    presentation_known: bool = True


@dataclass(frozen=True, slots=True)
class Contact:
    """A caller the office knows, from its own contacts (a file, the PBX's database).

    Trusted as config is, unlike the caller ID name the caller's network sends.
    """

    name: str  # {caller_name}
    first_name: str = ""  # {first_name}; "" when the contact gives none
    source: str = ""  # where it came from, for logs: "file", "astdb"


@dataclass(frozen=True, slots=True)
class InboundAnswered:
    """A person answered an inbound call (emitted at answer time, before the hang-up)."""

    linkedid: str
    caller: str
    at: float


@dataclass(frozen=True, slots=True)
class OutboundDialled:
    """An office phone dialled an outside number (emitted when the dial starts)."""

    linkedid: str
    number: str
    at: float


#: Everything the tracker can emit.
TrackerEvent = FinishedCall | InboundAnswered | OutboundDialled


class MessageState(StrEnum):
    """Where a text is in the outbox (DESIGN.md, Storage; the `messages.state` column).

    waiting -> queued -> sending -> sent | failed | uncertain; a pending text (waiting or
    queued) may instead be cancelled or expire. The network's delivery reports move a
    sent text to delivered once every part is, and settle an uncertain one (delivered, or
    failed when the network could not deliver it; `resolved_by` says so).
    """

    WAITING = "waiting"  # in its wait step (missed-call texts only)
    QUEUED = "queued"  # due: goes to a sender as soon as one is ready
    SENDING = "sending"  # handed to a sender; at a restart this means `uncertain`
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    UNCERTAIN = "uncertain"  # may or may not have gone out; never resent blindly
    DELIVERED = "delivered"  # the network reported it delivered (every part)


#: Not yet handed to a sender: may still be cancelled, merged into, or expire.
PENDING_STATES: frozenset[MessageState] = frozenset({MessageState.WAITING, MessageState.QUEUED})
#: Still in the outbox's hands (what the STATUS line counts as waiting).
OPEN_STATES: frozenset[MessageState] = PENDING_STATES | {MessageState.SENDING}
#: Went out, or may still go out: these count for caps, cooldown and the pumping guard.
LIVE_STATES: frozenset[MessageState] = OPEN_STATES | {
    MessageState.SENT,
    MessageState.UNCERTAIN,
    MessageState.DELIVERED,
}
#: A text's life ends in one of these.
FINAL_STATES: frozenset[MessageState] = frozenset(
    {
        MessageState.SENT,
        MessageState.FAILED,
        MessageState.CANCELLED,
        MessageState.EXPIRED,
        MessageState.UNCERTAIN,
        MessageState.DELIVERED,
    }
)


class MessageKind(StrEnum):
    """Why a text is sent (the `messages.kind` column).

    Only a missed-call text has a wait step, takes later missed calls into itself and is
    cancelled when the office calls back; every other kind goes out at once (still written
    to the outbox first, still under the caps) and is never merged or cancelled by a call.
    """

    MISSED_CALL = "missed_call"
    OPT_OUT_CONFIRMATION = "opt_out_confirmation"
    OPT_IN_CONFIRMATION = "opt_in_confirmation"
    HELP = "help"
    STAFF_FORWARD = "staff_forward"
    TEST = "test"
    JOB = "job"  # another office's text, taken from the broker (daemon.jobs)

    @property
    def waits(self) -> bool:
        """Has a wait step, merges repeat calls and is cancelled by a callback."""
        return self is MessageKind.MISSED_CALL
