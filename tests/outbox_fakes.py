"""Test helpers for store/outbox/pipeline tests: a recording SMS sender and call builders."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from daemon.config import Config
from daemon.model import MISSED_OUTCOMES, FinishedCall, Outcome, Reason
from daemon.numbers import CallerKind, classify_caller

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
    max_in_flight: int = 0
    _ref: int = 0

    async def send_sms(self, number: str, text: str, *, status_report: bool = True) -> list[int]:
        self.attempts.append((number, self.clock.now() if self.clock else None))
        self.in_flight += 1
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


# -- a stand-in for daemon.policy (same API), used until/unless the real one is wanted --------


@dataclass(frozen=True)
class StandInFacts:
    opted_out: bool = False
    last_text_at: float | None = None
    sent_last_hour: int = 0
    sent_today: int = 0
    sent_this_month: int = 0
    range_destinations: int = 0


@dataclass(frozen=True)
class StandInDecision:
    action: str
    reason: Reason
    destination: str | None
    template_kind: str | None = None
    text: str | None = None
    parts: int = 0
    encoding: str = ""
    detail: str = ""


def _destination_check(c: FinishedCall, config: Config) -> tuple[str | None, Reason | None]:
    judged = classify_caller(c.caller, home_region=config.textback.home_region, withheld=c.withheld)
    if judged.kind is CallerKind.ANONYMOUS:
        return None, Reason.ANONYMOUS
    if judged.kind is CallerKind.INVALID:
        return None, Reason.INVALID_NUMBER
    return judged.e164, None


def _decide(c: FinishedCall, facts: StandInFacts, config: Config, now: float) -> StandInDecision:
    tb = config.textback

    def no(reason: Reason, detail: str = "") -> StandInDecision:
        return StandInDecision("suppress", reason, dest, detail=detail)

    dest, bad = _destination_check(c, config)
    if not c.inbound:
        return no(Reason.NOT_INBOUND)
    if c.outcome is Outcome.SHORT_ABANDON:
        return no(Reason.SHORT_ABANDON)
    if c.outcome not in MISSED_OUTCOMES:
        return no(Reason.ANSWERED)
    if dest is None:
        assert bad is not None
        return no(bad)
    if not tb.enabled:
        return no(Reason.DISABLED)
    if facts.opted_out:
        return no(Reason.OPTED_OUT)
    if facts.last_text_at is not None and now - facts.last_text_at < tb.cooldown:
        return no(Reason.COOLDOWN)
    if tb.max_per_hour and facts.sent_last_hour >= tb.max_per_hour:
        return no(Reason.CAP_REACHED, f"max_per_hour {tb.max_per_hour} reached")
    if tb.pumping_max_per_range and facts.range_destinations >= tb.pumping_max_per_range:
        return no(Reason.CAP_REACHED, "pumping guard: many numbers in one range")
    kind = "voicemail" if c.voicemail_left else "in_hours"
    text = f"Sorry we missed your call to {tb.business_name}."
    return StandInDecision("send", Reason.MISSED, dest, kind, text, 1, "gsm7")


STAND_IN_POLICY = SimpleNamespace(
    PolicyFacts=StandInFacts, destination_check=_destination_check, decide=_decide
)
