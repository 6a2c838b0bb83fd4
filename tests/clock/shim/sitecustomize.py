"""Loaded only by `make test-clock` (tests/clock/run.py puts this directory on PYTHONPATH).

libfaketime 0.9.10 (Debian 12's) breaks `time.sleep` when the monotonic clock is left
real (FAKETIME_DONT_FAKE_MONOTONIC=1): Python 3.11 sleeps with
clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) and libfaketime shifts that absolute
deadline by the fake offset, so the kernel sees a negative time and says EINVAL
(wolfcw/libfaketime#426). `subprocess.Popen.wait(timeout)` sleeps that way. Here a sleep
is a `select` with a relative timeout, which libfaketime leaves alone.
"""

from __future__ import annotations

import os
import select
import time

if os.environ.get("FAKETIME"):

    def _sleep(seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        select.select([], [], [], seconds)

    time.sleep = _sleep  # type: ignore[assignment]  # floats are all the tests give it
