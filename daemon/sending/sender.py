"""One sender interface: a text in, a result out.

The outbox sends every text through a `Sender`: the modem supervisor (a GSM modem), the
replay's recording fake, and later a pool of modems and a broker. A sender never raises
for a text it could not send: it answers with a `SendResult` that says `sent` (with the
network's message references), `failed` (known not sent; `retryable` says whether
another try may work), or `uncertain` (the text may have gone out: never resend blindly).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from daemon.model import MessageKind
from gsm.errors import SendUncertain

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


def result_of_error(exc: BaseException, *, sender: str = "") -> SendResult:
    """The result a send that raised `exc` stands for."""
    error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
    if is_uncertain(exc):
        return SendResult(SendStatus.UNCERTAIN, error=error, sender=sender)
    return SendResult(SendStatus.FAILED, error=error, retryable=is_retryable(exc), sender=sender)
