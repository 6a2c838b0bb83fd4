"""A check shared by the workers' tests: a stop is never swallowed by a wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


async def assert_a_stop_ends_the_wait(
    wait: Callable[[], Coroutine[Any, Any, None]], wake: Callable[[], None]
) -> None:
    """Start `wait()`, wake it, and cancel it 0, 1, 2... loop steps after the wake-up
    until it returns before the cancel: at each step the cancel must end it cancelled
    (a wait that cancels its other waiter and awaits it under suppress(CancelledError)
    takes the stop for that waiter's cancel and returns as if woken)."""
    for steps in range(16):
        task = asyncio.create_task(wait())
        await asyncio.sleep(0)
        wake()
        for _ in range(steps):
            await asyncio.sleep(0)
        if task.done():  # woken and returned before the stop: every step was tried
            assert steps > 1
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled(), f"the stop was swallowed {steps} steps after the wake-up"
    raise AssertionError("the wait never returned after its wake-up")
