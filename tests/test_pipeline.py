"""The pipeline: tracker events to recorded decisions and texts, on a real SQLite file."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.app.pipeline import Pipeline
from daemon.clock import ManualClock
from daemon.config import Config
from daemon.model import InboundAnswered, OutboundDialled, Outcome
from daemon.outbox.outbox import Outbox
from daemon.sinks.counters import CounterSink
from daemon.store.store import Store
from tests.outbox_fakes import NUMBERS, FakeSender, call, cfg

T0 = 1_795_300_000.0


class Rig:
    """Store + outbox + pipeline + fake sender on one ManualClock."""

    def __init__(self, store: Store, config: Config, *, drive: bool = True) -> None:
        self.clock = ManualClock(T0)
        self.store = store
        self.sender = FakeSender(clock=self.clock)
        self.outbox = Outbox(config, store, self.clock, self.sender)
        self.pipeline = Pipeline(config, store, self.outbox, self.clock, drive_outbox=drive)
        counters = store.bus.find(CounterSink)
        assert isinstance(counters, CounterSink)
        #: What the events counted (decisions, cancellations, guard trips).
        self.counters = counters

    async def at(self, t: float, event: Any) -> None:
        self.clock.set(T0 + t)
        await self.pipeline.handle(event)

    async def finish(self, after: float = 3600.0) -> None:
        self.clock.advance(after)
        await self.pipeline.tick()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "tb.db")
    yield s
    await s.close()


async def test_missed_call_is_recorded_queued_and_sent_after_the_wait(store: Store) -> None:
    rig = Rig(store, cfg(delay="30s"))
    c = call(NUMBERS[0], at=T0)
    await rig.at(0, c)
    r = await rig.pipeline.report(c.linkedid)
    assert r is not None
    assert (r.decision, r.reason, r.message) == ("send", "missed", "waiting")
    assert r.text is not None
    assert "our office" in r.text
    await rig.at(29, OutboundDialled("x", "5550000", T0 + 29))  # unrelated number
    assert rig.sender.sent == []
    await rig.finish()
    r = await rig.pipeline.report(c.linkedid)
    assert r is not None
    assert r.message == "sent"
    assert rig.sender.sent == [(NUMBERS[0], r.text)]
    hist = await store.history()
    assert [(h.decision, h.reason, h.message) for h in hist] == [("send", "missed", "sent")]


async def test_repeat_caller_in_the_wait_gets_one_text(store: Store) -> None:
    rig = Rig(store, cfg(delay="30s"))
    first, second = call(NUMBERS[0], at=T0), call(NUMBERS[0], at=T0 + 20)
    await rig.at(0, first)
    await rig.at(20, second)
    await rig.finish()
    a = await rig.pipeline.report(first.linkedid)
    b = await rig.pipeline.report(second.linkedid)
    assert a is not None
    assert b is not None
    assert (a.message, b.message) == ("sent", "merged")
    assert a.message_id == b.message_id
    assert len(rig.sender.sent) == 1
    assert [h.message for h in await store.history()] == ["merged", "sent"]


async def test_person_answering_a_repeat_call_cancels(store: Store) -> None:
    rig = Rig(store, cfg(delay="30s"))
    c = call("(202) 555-0101", at=T0)  # local format, home region US
    await rig.at(0, c)
    await rig.at(15, InboundAnswered("again", "2025550101", T0 + 15))
    await rig.at(16, call(NUMBERS[0], at=T0 + 16, outcome=Outcome.ANSWERED))
    await rig.finish()
    r = await rig.pipeline.report(c.linkedid)
    assert r is not None
    assert (r.message, r.message_reason) == ("cancelled", "answered_on_retry")
    assert rig.sender.sent == []
    hist = await store.history()
    assert [(h.outcome, h.reason, h.message) for h in hist] == [
        ("answered", "answered", None),
        ("no_answer", "missed", "cancelled"),
    ]
    assert hist[1].message_reason == "answered_on_retry"


@pytest.mark.parametrize("dialled", ["+12025550101", "2025550101", "92025550101", "912025550101"])
async def test_office_calling_back_cancels(store: Store, dialled: str) -> None:
    rig = Rig(store, cfg(delay="30s"))
    c = call(NUMBERS[0], at=T0)
    await rig.at(0, c)
    await rig.at(10, OutboundDialled("cb", dialled, T0 + 10))
    await rig.finish()
    r = await rig.pipeline.report(c.linkedid)
    assert r is not None
    assert (r.message, r.message_reason) == ("cancelled", "called_back")
    assert rig.sender.sent == []
    assert rig.counters["cancelled.called_back"] == 1
    assert await store.counter("cancelled.called_back") == 1


async def test_calling_back_after_the_text_went_changes_nothing(store: Store) -> None:
    rig = Rig(store, cfg(delay="30s"))
    c = call(NUMBERS[0], at=T0)
    await rig.at(0, c)
    await rig.at(31, OutboundDialled("cb", NUMBERS[0], T0 + 31))
    r = await rig.pipeline.report(c.linkedid)
    assert r is not None
    assert r.message == "sent"


async def test_suppressed_calls_have_one_reason_and_no_text(store: Store) -> None:
    rig = Rig(store, cfg(delay="0s"))
    calls = [
        call(NUMBERS[0], outcome=Outcome.ANSWERED),
        call(NUMBERS[1], outcome=Outcome.SHORT_ABANDON),
        call("anonymous", withheld=True),
        call("1-800-FLOWERS"),
        call(NUMBERS[2], inbound=False, outcome=Outcome.NOT_INBOUND),
    ]
    for i, c in enumerate(calls):
        await rig.at(i, c)
    await rig.finish()
    reasons = []
    for c in calls:
        r = await rig.pipeline.report(c.linkedid)
        assert r is not None
        assert r.decision == "suppress"
        assert r.message is None
        reasons.append(r.reason)
    assert reasons == ["answered", "short_abandon", "anonymous", "invalid_number", "not_inbound"]
    assert rig.sender.sent == []
    stats = await store.stats(T0 + 3600, 1)
    assert stats.suppressed == dict.fromkeys(reasons, 1)


async def test_cooldown_after_a_sent_text(store: Store) -> None:
    rig = Rig(store, cfg(delay="30s", cooldown="1h"))
    first = call(NUMBERS[0], at=T0)
    await rig.at(0, first)
    await rig.at(100, later := call(NUMBERS[0], at=T0 + 100))
    await rig.at(3700, again := call(NUMBERS[0], at=T0 + 3700))
    await rig.finish()
    got = [await rig.pipeline.report(c.linkedid) for c in (first, later, again)]
    assert [(g.reason, g.message) for g in got if g] == [
        ("missed", "sent"),
        ("cooldown", None),
        ("missed", "sent"),
    ]
    assert len(rig.sender.sent) == 2


async def test_a_cap_trip_is_one_loud_line_not_one_per_call(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(store, cfg(delay="0s", max_per_hour=1, pumping_max_per_range=0))
    with caplog.at_level(logging.INFO, logger="daemon.pipeline"):
        for i, n in enumerate(NUMBERS):
            await rig.at(i, call(n, at=T0 + i))
    await rig.finish(10)
    assert len(rig.sender.sent) == 1
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1
    assert "sending_paused" in loud[0].message
    assert "max_per_hour" in loud[0].message
    assert rig.counters["guard.max_per_hour"] == len(NUMBERS) - 1
    assert rig.counters["decision.suppress.cap_reached"] == len(NUMBERS) - 1
    # One line per finished call, with outcome, decision and reason.
    per_call = [r.message for r in caplog.records if r.message.startswith("event=call ")]
    assert len(per_call) == len(NUMBERS)
    assert all("outcome=no_answer" in m and "reason=" in m for m in per_call)


async def test_full_disk_keeps_every_call_and_lands_it_later(store: Store) -> None:
    rig = Rig(store, cfg(delay="30s", max_per_hour=0, max_per_day=0, pumping_max_per_range=0))
    db = store.connection
    async with db.execute("PRAGMA page_count") as cur:
        pages = (await cur.fetchone())[0]  # type: ignore[index]
    await db.execute(f"PRAGMA max_page_count = {pages}")
    handed = []
    t = 0
    while rig.pipeline.backlog < 3:  # until the disk has refused three calls
        n = f"+120255501{t % 100:02d}"  # test numbers +1 202 555 0100..0199
        c = call(n, at=T0 + t)
        handed.append(c)
        await rig.at(t, c)  # never raises
        t += 1
        assert t < 5000
    assert rig.pipeline.counts["store_errors"] >= 1
    before = len(await store.history(limit=100_000))
    assert before == len(handed) - 3
    await db.execute("PRAGMA max_page_count = 1073741823")
    assert await rig.pipeline.retry_backlog() == 3
    assert rig.pipeline.backlog == 0
    # The refusals are counted in the database too, once it takes writes again.
    assert await store.counter("store.errors") == rig.pipeline.counts["store_errors"]
    rows = await store.history(limit=100_000)
    assert len(rows) == len(handed)
    assert all(r.decision is not None for r in rows)
    await rig.finish()
    for c in handed:
        r = await rig.pipeline.report(c.linkedid)
        assert r is not None
        assert r.message in ("sent", "merged") or r.reason == "cooldown"


async def test_reconfigure_takes_effect_on_the_next_call(store: Store) -> None:
    rig = Rig(store, cfg(delay="0s"))
    rig.pipeline.reconfigure(cfg(delay="0s", enabled=False))
    c = call(NUMBERS[0])
    await rig.at(0, c)
    r = await rig.pipeline.report(c.linkedid)
    assert r is not None
    assert (r.decision, r.reason) == ("suppress", "disabled")


async def test_live_mode_sends_from_the_background_worker(store: Store) -> None:
    rig = Rig(store, cfg(delay="30s"), drive=False)
    runner = asyncio.create_task(rig.pipeline.run())
    try:
        c = call(NUMBERS[0], at=T0)
        await rig.pipeline.handle(c)
        await rig.outbox.settle()
        assert rig.sender.sent == []
        rig.clock.advance(30)
        await rig.outbox.settle()
        r = await rig.pipeline.report(c.linkedid)
        assert r is not None
        assert r.message == "sent"
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def test_dry_run_on_the_events_own_clock() -> None:
    """The replay's harness (daemon.app.dryrun) drives this pipeline on the trace's clock."""
    from daemon.app.dryrun import dry_run

    t = T0 + 100_000
    repeat1, repeat2 = call(NUMBERS[0], at=t), call(NUMBERS[0], at=t + 40)
    called_back = call(NUMBERS[1], at=t + 50)
    answered = call(NUMBERS[2], at=t + 60, outcome=Outcome.ANSWERED)
    merged1, merged2 = call(NUMBERS[3], at=t + 100), call(NUMBERS[3], at=t + 120)
    events = [
        repeat1,
        InboundAnswered("x", NUMBERS[4], t + 5),  # someone else: no effect
        repeat2,  # 40 s later: the first text has already gone
        called_back,
        OutboundDialled("cb", NUMBERS[1], t + 70),
        answered,
        merged1,
        merged2,
    ]
    reports = await dry_run(events, cfg(delay="30s"))
    got = [
        (reports[c.linkedid].reason, reports[c.linkedid].message)
        for c in events
        if isinstance(c, type(repeat1))
    ]
    assert got == [
        ("missed", "sent"),
        ("cooldown", None),
        ("missed", "cancelled"),
        ("answered", None),
        ("missed", "sent"),
        ("missed", "merged"),
    ]
    assert all(r.text for r in reports.values() if r.decision == "send")


async def test_pumping_guard_pauses_a_range_with_one_loud_line(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(store, cfg(delay="30s", pumping_max_per_range=5, pumping_window="10m"))
    spoofed = [f"+120255501{i:02d}" for i in range(10, 20)]  # one range, ten numbers
    with caplog.at_level(logging.INFO, logger="daemon.pipeline"):
        for i, n in enumerate(spoofed):
            await rig.at(i, call(n, at=T0 + i))
            # Calls from other ranges in between neither stop nor re-announce the pause.
            await rig.at(i + 0.5, call(NUMBERS[1 + i % 4], at=T0 + i + 0.5))
        await rig.at(700, call("+12025550190", at=T0 + 700))  # the window has passed
    await rig.finish()
    texted = [n for n, _ in rig.sender.sent]
    assert [n for n in texted if n.startswith("+12025550")] == [*spoofed[:5], "+12025550190"]
    assert rig.counters["guard.pumping"] == 5
    assert await store.counter("guard.pumping") == 5
    loud = [r.message for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 2
    assert loud[0].startswith("event=sending_paused guard=pumping:+12025550 ")
    assert loud[1] == "event=sending_resumed guard=pumping:+12025550"


async def test_a_joining_voicemail_rewords_the_pending_text(store: Store) -> None:
    rig = Rig(
        store, cfg(delay="30s", template_voicemail="Thanks for your message, {business_name}.")
    )
    first = call(NUMBERS[0], at=T0, outcome=Outcome.ABANDONED)
    second = call(NUMBERS[0], at=T0 + 20, outcome=Outcome.VOICEMAIL, voicemail_left=True)
    await rig.at(0, first)
    await rig.at(20, second)
    await rig.finish()
    assert rig.sender.sent == [(NUMBERS[0], "Thanks for your message, our office.")]
    r = await rig.pipeline.report(second.linkedid)
    assert r is not None
    assert r.message == "merged"
    assert "reworded (voicemail)" in r.detail
    a = await rig.pipeline.report(first.linkedid)
    assert a is not None
    assert (a.message, a.text) == ("sent", "Thanks for your message, our office.")


async def test_a_bug_on_one_event_is_loud_and_the_next_call_still_works(
    store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.app.pipeline as pipeline_mod

    rig = Rig(store, cfg(delay="0s"))
    real = pipeline_mod.decide

    def buggy(c: Any, *args: Any, **kw: Any) -> Any:
        if c.caller == NUMBERS[1]:
            raise KeyError("a bug")
        return real(c, *args, **kw)

    monkeypatch.setattr(pipeline_mod, "decide", buggy)
    bad, good = call(NUMBERS[1], at=T0), call(NUMBERS[2], at=T0 + 1)
    with caplog.at_level(logging.ERROR, logger="daemon.pipeline"):
        await rig.at(0, bad)  # does not raise
    await rig.at(1, good)
    await rig.finish()
    assert rig.pipeline.counts["errors"] == 1
    assert any("pipeline_error" in r.message and bad.linkedid in r.message for r in caplog.records)
    assert [n for n, _ in rig.sender.sent] == [NUMBERS[2]]
    # The call is kept, visibly without a decision; the next call is whole.
    assert [(h.caller, h.decision) for h in await store.history()] == [
        (NUMBERS[2], "send"),
        (NUMBERS[1], None),
    ]
    assert await store.counter("pipeline.errors") == 1


async def test_a_burst_in_one_transaction_decides_each_call_as_one_at_a_time(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # handle_many records a run of finished calls in one transaction: each call still sees
    # the ones before it (the repeat caller joins the text written just before), a cap
    # counts the texts of the same run, and nothing goes out before the commit.
    config = cfg(delay="0s", max_per_hour=3, pumping_max_per_range=0)
    burst = [
        call(NUMBERS[0], at=T0),
        call(NUMBERS[1], at=T0),
        call(NUMBERS[0], at=T0),  # repeat caller: merged
        call("anonymous", withheld=True, at=T0),
        OutboundDialled("x", NUMBERS[1], T0),  # the office calls 1 back: cancelled
        call(NUMBERS[2], at=T0),
        call(NUMBERS[3], at=T0),  # the third live text (a cancelled one does not count)
        call(NUMBERS[4], at=T0),  # over the cap of 3
    ]
    one = Rig(store, config, drive=False)
    with caplog.at_level(logging.INFO, logger="daemon.pipeline"):
        await one.pipeline.handle_many(burst)
    assert one.sender.sent == []  # live mode: only the worker sends
    got = [
        await one.pipeline.report(c.linkedid) for c in burst if not isinstance(c, OutboundDialled)
    ]
    assert [(r.reason, r.message) for r in got if r] == [
        ("missed", "queued"),
        ("missed", "cancelled"),
        ("missed", "merged"),
        ("anonymous", None),
        ("missed", "queued"),
        ("missed", "queued"),
        ("cap_reached", None),
    ]
    assert len([r for r in caplog.records if r.message.startswith("event=call ")]) == 7
    assert len([r for r in caplog.records if "sending_paused" in r.message]) == 1
    hist = await store.history(limit=100)
    assert len(hist) == 7
    assert all(h.decision is not None for h in hist)


async def test_a_bug_in_a_burst_costs_only_that_call(
    store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.app.pipeline as pipeline_mod

    rig = Rig(store, cfg(delay="0s"), drive=False)
    real = pipeline_mod.decide

    def buggy(c: Any, *args: Any, **kw: Any) -> Any:
        if c.caller == NUMBERS[1]:
            raise KeyError("a bug")
        return real(c, *args, **kw)

    monkeypatch.setattr(pipeline_mod, "decide", buggy)
    burst = [call(n, at=T0) for n in NUMBERS[:4]]
    with caplog.at_level(logging.ERROR, logger="daemon.pipeline"):
        await rig.pipeline.handle_many(burst)  # does not raise
    assert rig.pipeline.counts["errors"] == 1
    hist = {h.caller: h.decision for h in await store.history()}
    assert hist == {NUMBERS[0]: "send", NUMBERS[1]: None, NUMBERS[2]: "send", NUMBERS[3]: "send"}


async def test_a_refused_burst_is_kept_in_order_and_lands_later(store: Store) -> None:
    rig = Rig(store, cfg(delay="30s", max_per_hour=0, pumping_max_per_range=0), drive=False)
    db = store.connection
    await db.execute("PRAGMA query_only = ON")  # the database refuses every write
    burst = [call(n, at=T0) for n in NUMBERS[:5]]
    await rig.pipeline.handle_many(burst)
    assert rig.pipeline.backlog == 5
    assert await store.history() == []
    await db.execute("PRAGMA query_only = OFF")
    assert await rig.pipeline.retry_backlog() == 5
    hist = await store.history(limit=100)
    assert sorted(h.call_id for h in hist) == [1, 2, 3, 4, 5]
    assert [h.caller for h in sorted(hist, key=lambda h: h.call_id)] == NUMBERS[:5]
