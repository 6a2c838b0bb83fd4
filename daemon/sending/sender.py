"""One sender interface: a text in, a result out.

The outbox sends every text through a `Sender`: the modem supervisor (a GSM modem), the
replay's recording fake, and later a pool of modems and a broker. A sender never raises
for a text it could not send: it answers with a `SendResult` that says `sent` (with the
network's message references), `failed` (known not sent; `retryable` says whether
another try may work), or `uncertain` (the text may have gone out: never resend blindly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from daemon.model import MessageKind
from daemon.store.routing import QueuedText
from gsm.errors import SendUncertain, Submission, submission_of

#: How much of an error's text is kept with a text (the outbox row's last_error).
ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class SendRequest:
    """One text to send now."""

    destination: str  # E.164, already judged a valid, allowed number
    text: str
    line: str = ""  # the office line (DID) it answers for; "" when none
    kind: MessageKind = MessageKind.MISSED_CALL
    message_id: int | None = None
    status_report: bool = True  # ask the network for a delivery report


class SendStatus(StrEnum):
    """What became of a send."""

    SENT = "sent"
    FAILED = "failed"
    UNCERTAIN = "uncertain"


@dataclass(frozen=True, slots=True)
class SendResult:
    """The answer to one `SendRequest`."""

    status: SendStatus
    references: tuple[int, ...] = ()  # one per part, when sent
    error: str = ""  # what went wrong, as the outbox records it
    retryable: bool = False  # failed, and another try may work
    sender: str = ""  # which sender (modem) answered
    #: failed, and known that nothing of it reached the network: another modem of a pool
    #: may send it (failover). False for anything unclear, and for a long text some of
    #: whose parts went out (sending it elsewhere would repeat them).
    not_sent: bool = False

    @classmethod
    def sent(cls, references: list[int] | tuple[int, ...], *, sender: str = "") -> SendResult:
        """Sent, with the message reference of each part."""
        return cls(SendStatus.SENT, tuple(references), sender=sender)


class Sender(Protocol):
    """Sends texts. `ready` is False while it cannot send (modem absent or starting)."""

    @property
    def name(self) -> str:
        """A short name for logs, history and metrics (the modem's name)."""
        ...

    @property
    def ready(self) -> bool:
        """Can it send now?"""
        ...

    async def send(self, request: SendRequest) -> SendResult:
        """Send one text; never raises for a send that failed (only CancelledError)."""
        ...


@runtime_checkable
class LaneSender(Sender, Protocol):
    """A sender with several lanes (a pool of modems), each sending one text at a time.

    The outbox asks it which lane takes each due text (`assign`, which reserves the lane),
    writes the text `sending` on that lane, sends through the lane, hands the result back
    (`finish`), writes it, and frees the lane (`release`). A plain `Sender` is one lane.
    """

    async def prepare(self, now: float) -> None:
        """Before a pass: refresh what routing reads from the store."""
        ...

    def assign(self, texts: Sequence[QueuedText]) -> Sequence[tuple[QueuedText, Sender]]:
        """Which free lane takes which of these due texts now."""
        ...

    def finish(self, lane: Sender, text: QueuedText, result: SendResult) -> bool:
        """A lane's send ended with `result` (before it is written). True: the text
        failed before submission and another lane may take it at once (failover)."""
        ...

    def release(self, lane: Sender) -> None:
        """The lane is free again (its result is written, or nothing was sent)."""
        ...


def is_retryable(exc: BaseException) -> bool:
    """Is another try worth it? An explicit `retryable` flag wins (gsm.errors has one:
    SendUncertain is a TimeoutError that must NOT be retried blindly); otherwise timeouts
    and OS errors are retryable and everything else is permanent."""
    flag = getattr(exc, "retryable", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(exc, TimeoutError | OSError)


def is_uncertain(exc: BaseException) -> bool:
    """The modem may have sent the text although the send failed (gsm SendUncertain)."""
    return isinstance(exc, SendUncertain)


def known_not_sent(exc: BaseException) -> bool:
    """Is it known that nothing of the text reached the network? Only then may a pool
    send it through another modem. The driver decides (gsm.errors.submission_of): a long
    text some of whose parts went out, or anything unclear, stays where it is."""
    return submission_of(exc) is Submission.NOT_SENT


def result_of_error(exc: BaseException, *, sender: str = "") -> SendResult:
    """The result a send that raised `exc` stands for."""
    error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
    if is_uncertain(exc):
        return SendResult(SendStatus.UNCERTAIN, error=error, sender=sender)
    return SendResult(
        SendStatus.FAILED,
        error=error,
        retryable=is_retryable(exc),
        sender=sender,
        not_sent=known_not_sent(exc),
    )
