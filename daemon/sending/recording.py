"""A sender that sends nothing: it records each text (for replays and the demo's checks)."""

from __future__ import annotations

from daemon.sending.sender import SendRequest, SendResult


class RecordingSender:
    """Stands in for the modem: always ready, records (number, text), sends nothing."""

    name = "recording"

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.requests: list[SendRequest] = []

    @property
    def ready(self) -> bool:
        """Always ready."""
        return True

    async def send(self, request: SendRequest) -> SendResult:
        """Record the text; one made-up message reference per text."""
        self.requests.append(request)
        self.sent.append((request.destination, request.text))
        return SendResult.sent([len(self.sent) % 256], sender=self.name)
