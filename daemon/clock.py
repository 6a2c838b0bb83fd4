"""One clock, injected everywhere: tests advance it instead of sleeping."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable
from typing import Protocol


class Clock(Protocol):
    """Wall-clock seconds since the epoch, and a way to wait on that clock."""

    def now(self) -> float:
        """Current time, seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until `seconds` have passed on this clock."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Current time, seconds since the epoch."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Wait on the event loop's timer."""
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that only moves when a test (or a replay) moves it.

    `sleep()` returns once `advance()`/`set()` has moved time past its deadline, so
    timers fire deterministically without real waiting.
    """

    def __init__(self, start: float = 1_795_300_000.0) -> None:
        self._now = start
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        """Current time, seconds since the epoch."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by `seconds`."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (self._now + seconds, next(self._seq), fut))
        await fut

    def set(self, when: float) -> None:
        """Move the clock to `when` (never backwards) and wake due sleepers."""
        self._now = max(self._now, when)
        while self._waiters and self._waiters[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`."""
        self.set(self._now + seconds)

    @property
    def pending(self) -> int:
        """How many sleepers are waiting."""
        return sum(1 for _, _, f in self._waiters if not f.done())


async def first_of(*aws: Awaitable[object]) -> None:
    """Wait until the first of `aws` is done, then cancel the others and let them end.

    Gathered, never awaited under suppress(CancelledError): a stop that lands while this
    waits ends the caller instead of being swallowed as one of theirs.
    """
    waiters = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
