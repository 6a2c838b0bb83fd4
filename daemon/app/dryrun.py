"""The full policy and the outbox's wait step on a recorded trace's own clock, sending nothing.

`textback replay` uses this: the tracker's events go through the real Pipeline, Outbox and
Store (a throw-away SQLite file) with a ManualClock set to each event's own time, and a
sender that only records; callers are named from `[contacts] file` as the daemon would. So
a repeat caller shows one text, a callback during the wait shows `cancelled`, exactly as
the daemon would have done live.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

from daemon.app.pipeline import CallReport, Pipeline
from daemon.clock import ManualClock
from daemon.config import Config
from daemon.contacts.names import Names
from daemon.model import FinishedCall, TrackerEvent
from daemon.outbox.outbox import Outbox
from daemon.sending.recording import RecordingSender
from daemon.store.store import Store

#: A replay never runs the outbox more often than this per event (a guard, not a limit
#: anyone should reach: each pass sends or changes at least one text).
_MAX_PASSES = 10_000


def event_time(ev: TrackerEvent) -> float:
    """When a tracker event happened, on the trace's clock."""
    return ev.ended_at if isinstance(ev, FinishedCall) else ev.at


async def _run_due(outbox: Outbox, clock: ManualClock, until: float) -> None:
    """Let the outbox do, in time order, everything due up to `until`."""
    for _ in range(_MAX_PASSES):
        nxt = await outbox.next_wakeup()
        if nxt is None or nxt > until:
            break
        clock.set(nxt)
        await outbox.process_due()
    clock.set(until)


async def dry_run(events: Iterable[TrackerEvent], cfg: Config) -> dict[str, CallReport]:
    """Run events through policy and outbox on their own clock; the report per Linkedid."""
    evs = list(events)
    start = min((event_time(e) for e in evs), default=0.0)
    clock = ManualClock(start)
    with tempfile.TemporaryDirectory(prefix="textback-replay-") as tmp:
        store = await Store.open(
            Path(tmp) / "replay.db", tz=cfg.hours.timezone, durable=False, lock=False
        )
        try:
            outbox = Outbox(cfg, store, clock, RecordingSender())
            # the contacts file as the daemon reads it; no PBX, so no Asterisk database
            names = Names(cfg, clock)
            await names.reload()
            pipeline = Pipeline(cfg, store, outbox, clock, names=names)
            for ev in evs:
                await _run_due(outbox, clock, max(clock.now(), event_time(ev)))
                await pipeline.handle(ev)
            # after the last call: let every wait step end and every text go
            end = clock.now() + cfg.textback.delay + 1.0
            await _run_due(outbox, clock, end)
            return {r.linkedid: r for r in await pipeline.reports()}
        finally:
            await store.close()
