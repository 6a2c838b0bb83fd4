"""Intake + tracker over loopback TCP: the same finished calls as the file read in one go,
and after a connection loss mid-call every call still finishes exactly once."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.clock import ManualClock
from daemon.config import AmiConfig, Config
from daemon.intake.client import AmiClient
from daemon.intake.replayserver import ReplayServer, trace_body
from daemon.intake.stream import AmiStream
from daemon.intake.tracker import WANTED_EVENTS, WANTED_VARS, CallTracker
from daemon.model import FinishedCall
from tests.ami_support import SECRET, settle, until
from tests.conftest import AMI_DIR, trace_names


def _summary(calls: list[FinishedCall]) -> list[tuple[Any, ...]]:
    return [
        (c.linkedid, c.outcome.value, round(c.ring_seconds, 3), c.voicemail_left, c.caller)
        for c in calls
    ]


def _offline(body: bytes) -> list[FinishedCall]:
    tracker = CallTracker(Config(), ManualClock())
    out: list[FinishedCall] = []

    def on_event(msg: dict[str, str]) -> None:
        out.extend(e for e in tracker.feed(msg) if isinstance(e, FinishedCall))

    AmiStream(on_event, wanted=WANTED_EVENTS, wanted_vars=WANTED_VARS).feed(body)
    return out


class _Live:
    def __init__(self, server: ReplayServer) -> None:
        self.server = server
        self.clock = ManualClock()
        self.tracker = CallTracker(Config(), self.clock)
        self.finished: list[FinishedCall] = []
        self.from_resync: list[FinishedCall] = []
        self.resyncs = 0

    def on_event(self, msg: dict[str, str]) -> None:
        self.finished.extend(e for e in self.tracker.feed(msg) if isinstance(e, FinishedCall))

    def on_resync(self, channels: list[dict[str, str]], gap_from: float, gap_to: float) -> None:
        self.resyncs += 1
        done = [
            e
            for e in self.tracker.resync(channels, gap_from, gap_to)
            if isinstance(e, FinishedCall)
        ]
        self.from_resync.extend(done)
        self.finished.extend(done)

    async def start(self) -> AmiClient:
        port = await self.server.start()
        self.server.secret = SECRET
        self.client = AmiClient(
            AmiConfig(port=port, secret=SECRET),
            on_event=self.on_event,
            on_resync=self.on_resync,
            clock=self.clock,
            wanted=WANTED_EVENTS,
            wanted_vars=WANTED_VARS,
        )
        await self.client.start()
        return self.client

    async def stop(self) -> None:
        await self.client.close()
        await self.server.close()


@pytest.mark.parametrize("name", trace_names())
async def test_live_intake_gives_the_same_calls_as_the_file(name: str) -> None:
    body = trace_body((AMI_DIR / f"{name}.ami").read_bytes())
    expected = _summary(_offline(body))
    assert expected  # every shared trace has calls
    live = _Live(ReplayServer(body, fully_booted=False, chunk=8191))
    await live.start()
    try:
        await until(lambda: live.server.finished.is_set() and live.resyncs == 1)
        await until(lambda: len(live.finished) >= len(expected))
        await settle(3)
        assert _summary(live.finished) == expected
    finally:
        await live.stop()


async def test_loss_mid_call_the_tracker_carries_on() -> None:
    """Cut inside a call; its hang-up is lost in the gap: resync finishes it, once."""
    body = trace_body((AMI_DIR / "07-ringgroup-noanswer.ami").read_bytes())
    expected = _offline(body)
    first = expected[0].linkedid
    cut = body.index(b"Event: DialBegin") + 20
    server = ReplayServer(body, fully_booted=False, drop_at=[cut], gap_events=10_000)
    live = _Live(server)
    server.flowing.clear()
    await live.start()
    try:
        await until(lambda: live.resyncs == 1)
        server.flowing.set()
        await until(lambda: live.client.counters.losses == 1)
        assert live.tracker.active >= 1  # the call was in progress at the cut
        await until(lambda: live.clock.pending >= 1)
        live.clock.advance(1.0)
        await until(lambda: live.resyncs == 2)
        await settle()
        ids = [c.linkedid for c in live.finished]
        assert ids.count(first) == 1  # finished exactly once, never twice
        assert [c.linkedid for c in live.from_resync] == [first]
        assert live.tracker.active == 0
        assert live.client.counters.gaps == 1
    finally:
        await live.stop()


async def test_short_loss_between_events_changes_nothing() -> None:
    """A cut exactly between two events, nothing lost: the outcome is as without it."""
    body = trace_body((AMI_DIR / "04-answered.ami").read_bytes())
    expected = _summary(_offline(body))
    cut = body.index(b"Event: BridgeEnter")  # a frame boundary, mid-call
    live = _Live(ReplayServer(body, fully_booted=False, drop_at=[cut]))
    live.server.flowing.clear()
    await live.start()
    try:
        await until(lambda: live.resyncs == 1)
        live.server.flowing.set()
        await until(lambda: live.client.counters.losses == 1)
        await until(lambda: live.clock.pending >= 1)
        live.clock.advance(1.0)
        await until(lambda: live.server.finished.is_set() and live.resyncs == 2)
        await until(lambda: len(live.finished) >= len(expected))
        await settle(3)
        assert _summary(live.finished) == expected
        assert live.from_resync == []
    finally:
        await live.stop()
