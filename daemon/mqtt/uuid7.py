"""UUIDv7 (RFC 9562): time-ordered unique ids for MQTT events.

Python 3.11's `uuid` module has no uuid7 (it arrives in 3.14), and pulling in a package
for 20 lines is not worth it. An event id lets a consumer drop the duplicates QoS 1 may
deliver; v7 also sorts by time, so ids read in order in a log or a database index.

Layout: 48 bits of Unix milliseconds, the version (7), 12 bits `rand_a`, the variant
(0b10), 62 bits `rand_b`. Within one millisecond `rand_a` is a counter (RFC 9562
section 6.2, method 1, from a random start), so ids made in the same millisecond still
sort in the order they were made; should it run out, the millisecond is borrowed from
the future rather than break the order.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_COUNTER_MAX = 0xFFF


class _Generator:
    """The last millisecond used and the counter within it (one per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def next(self, ms: int) -> tuple[int, int]:
        """The (millisecond, counter) of the next id made at `ms`."""
        with self._lock:
            if ms > self._last_ms:
                self._last_ms = ms
                self._counter = int.from_bytes(os.urandom(2), "big") & 0x7FF  # room to count
            else:
                self._counter += 1
                if self._counter > _COUNTER_MAX:
                    self._last_ms += 1
                    self._counter = 0
            return self._last_ms, self._counter


_generator = _Generator()


def uuid7(now: float | None = None) -> uuid.UUID:
    """A new UUIDv7, time-ordered after every one made before by this process.

    `now` (epoch seconds) stamps it with another clock's time (tests); the default is
    the system clock.
    """
    ms, counter = _generator.next(int((time.time() if now is None else now) * 1000))
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= rand_b
    return uuid.UUID(int=value)
