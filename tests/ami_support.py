"""Helpers for the AMI intake tests: a client wired to a replay server on loopback TCP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from daemon.clock import ManualClock
from daemon.config import AmiConfig
from daemon.intake.client import AmiClient
from daemon.intake.replayserver import ReplayServer

SECRET = "s3cr3t-for-tests"


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Wait for real I/O to make `cond` true (not a timer: timers run on ManualClock)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.002)


async def settle(rounds: int = 20) -> None:
    """Give pending I/O a moment (used only to show that something does NOT happen)."""
    for _ in range(rounds):
        await asyncio.sleep(0.002)


@dataclass
class Rig:
    """A running server + client pair and what the client delivered."""

    server: ReplayServer
    client: AmiClient
    clock: ManualClock
    events: list[dict[str, str]] = field(default_factory=list)
    resyncs: list[tuple[list[dict[str, str]], float, float]] = field(default_factory=list)
    #: how many events had arrived when each resync came: its place in the stream
    resync_at: list[int] = field(default_factory=list)


@asynccontextmanager
async def rig(
    server: ReplayServer,
    *,
    secret: str = SECRET,
    wanted: frozenset[str] | None = None,
    wanted_vars: frozenset[str] = frozenset(),
    on_event: Callable[[dict[str, str]], None] | None = None,
    **cfg: float,
) -> AsyncIterator[Rig]:
    """Start `server` and an AmiClient against it; close both afterwards."""
    server.secret = SECRET
    port = await server.start()
    clock = ManualClock()
    events: list[dict[str, str]] = []
    resyncs: list[tuple[list[dict[str, str]], float, float]] = []
    resync_at: list[int] = []

    def on_resync(ch: list[dict[str, str]], a: float, b: float) -> None:
        resyncs.append((ch, a, b))
        resync_at.append(len(events))

    client = AmiClient(
        AmiConfig(port=port, username="textback", secret=secret, **cfg),  # type: ignore[arg-type]
        on_event=on_event or events.append,
        on_resync=on_resync,
        clock=clock,
        wanted=wanted,
        wanted_vars=wanted_vars,
    )
    r = Rig(server, client, clock, events, resyncs, resync_at)
    try:
        await client.start()
        yield r
    finally:
        await client.close()
        await server.close()
