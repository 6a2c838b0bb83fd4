"""Test helpers for store/outbox/pipeline tests: a recording SMS sender and call builders."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from daemon.config import Config
from daemon.model import FinishedCall, Outcome
from daemon.sending.sender import SendRequest, SendResult, result_of_error

#: Test numbers only (555-01xx).
NUMBERS = ["+12025550101", "+12065550102", "+13055550103", "+13125550104", "+14155550105"]

_ids = itertools.count(1)


class Retryable(Exception):
    """Like a gsm.errors exception with retryable=True (e.g. +CMS ERROR: network timeout)."""

    retryable = True


class Permanent(Exception):
    """Like a gsm.errors exception with retryable=False (e.g. invalid destination)."""

    retryable = False


@dataclass
class FakeSender:
    """Records every send; `script` holds exceptions to raise on the next attempts."""

    script: list[BaseException | None] = field(default_factory=list)
    ready: bool = True
    sent: list[tuple[str, str]] = field(default_factory=list)
    attempts: list[tuple[str, float | None]] = field(default_factory=list)
    clock: Any = None
    gate: asyncio.Event | None = None  # when set, each send waits for it
    in_flight: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)  # set when a send begins
    max_in_flight: int = 0
    _ref: int = 0

    name: str = "fake"

    async def send(self, request: SendRequest) -> SendResult:
        """The Sender interface: a scripted exception becomes its result, as a modem's does."""
        try:
            refs = await self.send_sms(request.destination, request.text)
        except Exception as exc:
            return result_of_error(exc, sender=self.name)
        return SendResult.sent(refs, sender=self.name)

    async def send_sms(self, number: str, text: str, *, status_report: bool = True) -> list[int]:
        self.attempts.append((number, self.clock.now() if self.clock else None))
        self.in_flight += 1
        self.started.set()
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.script:
                exc = self.script.pop(0)
                if exc is not None:
                    raise exc
            self.sent.append((number, text))
            self._ref = (self._ref + 1) % 256
            parts = 2 if len(text) > 160 else 1
            return [(self._ref + i) % 256 for i in range(parts)]
        finally:
            self.in_flight -= 1


def cfg(**textback: Any) -> Config:
    """A default config with [textback] overrides."""
    return Config(textback=textback)


def call(
    caller: str = NUMBERS[0],
    *,
    outcome: Outcome = Outcome.NO_ANSWER,
    at: float = 1_795_300_000.0,
    inbound: bool = True,
    withheld: bool = False,
    did: str = "2025550100",
    voicemail_left: bool | None = None,
    linkedid: str | None = None,
) -> FinishedCall:
    """A finished call ending at `at`."""
    return FinishedCall(
        linkedid=linkedid or f"1795300000.{next(_ids)}",
        caller=caller,
        caller_name="Test Caller",
        did=did,
        inbound=inbound,
        outcome=outcome,
        started_at=at - 25.0,
        ended_at=at,
        ring_seconds=20.0,
        voicemail_left=voicemail_left,
        withheld=withheld,
    )
