"""Retention: once a day, calls past `[database] keep_calls` are deleted in small batches.

Each batch is one short transaction (`Store.prune`, daemon.store.retention); between two
batches the task yields, so the pipeline and the outbox write in between and a pass over a
year of calls never holds the database for more than a batch. Time comes from the injected
clock: the first pass runs `FIRST_PASS_AFTER` after the start, then every `INTERVAL`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from daemon.clock import Clock
from daemon.config import Config, format_duration
from daemon.logsetup import kv
from daemon.store.retention import Pruned
from daemon.store.store import Store, StoreError

log = logging.getLogger("daemon.retention")

#: The first pass waits this long after the start (the start itself stays quick).
FIRST_PASS_AFTER = 600.0
#: Then one pass a day.
INTERVAL = 86400.0
#: A pass the database refused is tried again this much later.
RETRY_AFTER = 3600.0
#: Calls per batch (one transaction): a few milliseconds of the database's time.
BATCH = 200


class Retention:
    """Deletes what is older than keep_calls; `run()` is its daily loop."""

    def __init__(self, cfg: Config, store: Store, clock: Clock, *, batch: int = BATCH) -> None:
        self._cfg = cfg
        self._store = store
        self._clock = clock
        self._batch = batch
        #: The longest single batch of the last pass, in seconds of wall time.
        self.slowest_batch = 0.0
        #: Passes `run()` has finished (for the STATUS of tests and tools).
        self.passes = 0
        self._cond = asyncio.Condition()

    def reconfigure(self, cfg: Config) -> None:
        """Use a new keep_calls from the next pass."""
        self._cfg = cfg

    async def run(self) -> None:
        """First pass FIRST_PASS_AFTER after the start, then one every INTERVAL."""
        await self._clock.sleep(FIRST_PASS_AFTER)
        while True:
            try:
                await self.prune_once()
            except StoreError as exc:
                log.warning(
                    kv(
                        event="store_error",
                        during="retention",
                        error=exc,
                        retry_in=format_duration(RETRY_AFTER),
                    )
                )
                await self._clock.sleep(RETRY_AFTER)
                continue
            self.passes += 1
            async with self._cond:
                self._cond.notify_all()
            await self._clock.sleep(INTERVAL)

    async def passed(self, n: int) -> None:
        """Return once `run()` has finished `n` passes."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.passes >= n)

    async def prune_once(self) -> Pruned:
        """One pass: batches until one finds nothing older than keep_calls."""
        keep = self._cfg.database.keep_calls
        total = Pruned()
        self.slowest_batch = 0.0
        if keep <= 0:
            return total
        cutoff = self._clock.now() - keep
        batches = 0
        while True:
            started = time.perf_counter()
            got = await self._store.prune(cutoff, self._batch)
            self.slowest_batch = max(self.slowest_batch, time.perf_counter() - started)
            batches += 1
            total.add(got)
            if not got.rows:
                break
            await asyncio.sleep(0)  # let the pipeline's and the outbox's writes in
        line = kv(
            event="retention",
            keep_calls=format_duration(keep),
            calls=total.calls,
            decisions=total.decisions,
            messages=total.messages,
            parts=total.parts,
            reports=total.reports,
            gaps=total.gaps,
            batches=batches,
            slowest_batch=f"{self.slowest_batch * 1000:.1f}ms",
        )
        log.log(logging.INFO if total.rows else logging.DEBUG, line)
        return total
