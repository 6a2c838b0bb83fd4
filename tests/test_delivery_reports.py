"""Delivery reports in the store and the outbox (issue 10, part 2), on a real SQLite file
and a ManualClock: a report is kept and matched by reference (and recipient); every part
delivered makes a sent text `delivered`; a report to the number of an `uncertain` text
within the window settles it (delivered, or failed), recorded as resolved by report, and
it is never resent; reports read before the restart's recovery count too."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.app.pipeline import Pipeline
from daemon.cli.history import _why
from daemon.clock import ManualClock
from daemon.config import Config
from daemon.model import MessageState
from daemon.outbox.outbox import Outbox
from daemon.sinks.counters import CounterSink
from daemon.sinks.events import Event, TextChanged
from daemon.store.rows import same_number
from daemon.store.store import Store
from tests.outbox_fakes import FakeSender, call

T0 = 1_795_300_000.0
CALLER = "+12025550142"
OTHER = "+12025550143"


def config(window: str = "1h", **textback: object) -> Config:
    return Config(textback={"delay": "0s", **textback}, modem={"report_window": window})


class Events:
    """A sink that keeps every event."""

    name = "events"

    def __init__(self) -> None:
        self.seen: list[Event] = []

    def handle(self, event: Event) -> None:
        self.seen.append(event)

    def changes(self) -> list[tuple[int, str, str | None, str | None]]:
        return [
            (e.message_id, e.state, e.reason, e.was)
            for e in self.seen
            if isinstance(e, TextChanged) and e.state not in ("queued", "sending")
        ]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "tb.db")
    yield s
    await s.close()


async def _in_flight_at_crash(
    store: Store, clock: ManualClock, destination: str = CALLER, parts: int = 1
) -> int:
    """A text that was `sending` when the process died (started at the clock's now)."""
    mid = await store.add_message(
        destination=destination,
        text="Sorry we missed your call",
        template_kind=None,
        call_ids=[],
        parts=parts,
        encoding="gsm7",
        now=clock.now(),
        due_at=clock.now(),
        state="queued",
    )
    await store.update_message(mid, now=clock.now(), state="sending")
    return mid


async def _state(store: Store, mid: int) -> tuple[str, str | None]:
    m = await store.get_message(mid)
    assert m is not None
    return m.state, m.resolved_by


def test_same_number_takes_the_national_form_and_nothing_shorter() -> None:
    assert same_number("+12025550142", "12025550142")
    assert same_number("+12025550142", "2025550142")  # a report in national form
    assert not same_number("+12025550142", "+12025550143")
    assert not same_number("+12025550142", "0142")  # too short to say
    assert not same_number("", "+12025550142")


async def test_a_report_by_reference_and_recipient_then_every_part_delivered(
    store: Store,
) -> None:
    events = Events()
    store.bus.add(events)
    clock = ManualClock(T0)
    outbox = Outbox(config(), store, clock, FakeSender(clock=clock))
    mid = await outbox.enqueue(
        destination=CALLER, text="x" * 200, template_kind=None, call_ids=[1]
    )  # two parts
    await outbox.process_due()
    refs = [p["reference"] for p in await store.message_parts(mid)]
    assert len(refs) == 2
    # the same reference to another number is not ours
    assert await store.record_delivery(refs[0], "delivered", T0 + 1, recipient=OTHER) is None
    assert await store.record_delivery(refs[0], "delivered", T0 + 2, recipient=CALLER) == mid
    assert await _state(store, mid) == ("sent", None)  # one part of two
    assert await store.record_delivery(refs[1], "delivered", T0 + 3, recipient=CALLER) == mid
    assert await _state(store, mid) == ("delivered", None)
    assert events.changes()[-1] == (mid, "delivered", "delivery_report", "sent")


async def test_an_uncertain_text_is_settled_by_a_report_to_its_number(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    events = Events()
    store.bus.add(events)
    clock = ManualClock(T0)
    crashed = await _in_flight_at_crash(store, clock)
    clock.advance(20)  # the restart
    sender = FakeSender(clock=clock)
    outbox = Outbox(config(), store, clock, sender)
    assert (await outbox.recover())["uncertain"] == 1
    assert await _state(store, crashed) == ("uncertain", None)
    # a report to another number, and a pending one to this number, settle nothing
    assert (
        await store.record_delivery(9, "delivered", T0 + 25, recipient=OTHER, window=3600) is None
    )
    assert await store.record_delivery(7, "pending", T0 + 26, recipient=CALLER, window=3600) is None
    assert await _state(store, crashed) == ("uncertain", None)
    with caplog.at_level(logging.INFO, logger="daemon.outbox"):
        got = await store.record_delivery(
            7, "delivered", T0 + 30, recipient="2025550142", tp_status=0, window=3600
        )
    assert got == crashed
    m = await store.get_message(crashed)
    assert m is not None
    assert (m.state, m.resolved_by, m.reason) == (
        "delivered",
        "delivery_report",
        "in_flight_at_restart",
    )
    assert (m.sent_at, m.delivered_at) == (T0, T0 + 30)  # it went out when its send started
    assert events.changes()[-1] == (crashed, "delivered", "delivery_report", "uncertain")
    [line] = [r.getMessage() for r in caplog.records if "was=uncertain" in r.getMessage()]
    assert line == (
        f"event=message id={crashed} destination={CALLER} state=delivered was=uncertain"
        " resolved_by=delivery_report refs=7 after=30s"
    )
    counters = store.bus.find(CounterSink)
    assert isinstance(counters, CounterSink)
    assert counters["uncertain_resolved.delivered"] == 1
    # never resent: nothing is due, nothing goes to the sender
    clock.advance(3600)
    await outbox.process_due()
    assert sender.sent == []


async def test_outside_the_window_it_stays_uncertain_and_the_report_is_kept(
    store: Store,
) -> None:
    clock = ManualClock(T0)
    crashed = await _in_flight_at_crash(store, clock)
    outbox = Outbox(config(window="10m"), store, clock, FakeSender(clock=clock))
    await outbox.recover()
    assert (
        await store.record_delivery(7, "delivered", T0 + 601, recipient=CALLER, window=600) is None
    )
    assert await _state(store, crashed) == ("uncertain", None)
    async with store._reading():
        rows = await store._all("SELECT reference, message_id FROM delivery_reports")
    assert [tuple(r) for r in rows] == [(7, None)]


async def test_a_report_read_before_the_recovery_settles_the_text_at_recovery(
    store: Store,
) -> None:
    # the modem's start-up sweep read the stored report while the text was still `sending`
    clock = ManualClock(T0)
    crashed = await _in_flight_at_crash(store, clock)
    clock.advance(15)
    assert (
        await store.record_delivery(7, "delivered", T0 + 15, recipient=CALLER, window=3600) is None
    )
    clock.advance(1)
    outbox = Outbox(config(), store, clock, FakeSender(clock=clock))
    assert (await outbox.recover())["uncertain"] == 1
    assert await _state(store, crashed) == ("delivered", "delivery_report")


async def test_a_report_that_the_network_gave_up_settles_it_failed_never_resent(
    store: Store,
) -> None:
    clock = ManualClock(T0)
    crashed = await _in_flight_at_crash(store, clock)
    sender = FakeSender(clock=clock)
    outbox = Outbox(config(), store, clock, sender)
    await outbox.recover()
    await store.record_delivery(7, "failed", T0 + 5, recipient=CALLER, tp_status=0x41, window=3600)
    m = await store.get_message(crashed)
    assert m is not None
    assert (m.state, m.resolved_by, m.delivered_at) == ("failed", "delivery_report", None)
    assert m.last_error is not None
    assert "0x41" in m.last_error
    clock.advance(3600)
    await outbox.process_due()
    assert sender.sent == []


async def test_a_long_uncertain_text_needs_a_report_for_each_part(store: Store) -> None:
    clock = ManualClock(T0)
    crashed = await _in_flight_at_crash(store, clock, parts=2)
    await Outbox(config(), store, clock, FakeSender(clock=clock)).recover()
    await store.record_delivery(7, "delivered", T0 + 5, recipient=CALLER, window=3600)
    await store.record_delivery(7, "delivered", T0 + 6, recipient=CALLER, window=3600)  # again
    assert await _state(store, crashed) == ("uncertain", None)
    await store.record_delivery(8, "delivered", T0 + 7, recipient=CALLER, window=3600)
    assert await _state(store, crashed) == ("delivered", "delivery_report")


async def test_history_says_it_was_resolved_by_report(store: Store) -> None:
    clock = ManualClock(T0)
    cfg = config()
    sender = FakeSender(clock=clock)
    outbox = Outbox(cfg, store, clock, sender)
    pipeline = Pipeline(cfg, store, outbox, clock, drive_outbox=False)
    await pipeline.handle(call(CALLER, at=T0))
    [m] = await store.messages()
    await store.update_message(m.id, now=T0, state="sending")  # then the crash
    await Outbox(cfg, store, clock, sender).recover()
    await store.record_delivery(3, "delivered", T0 + 9, recipient=CALLER, window=3600)
    [row] = await store.history()
    assert (row.message, row.resolved_by) == (MessageState.DELIVERED, "delivery_report")
    assert _why(row) == "resolved by delivery report (was uncertain: in_flight_at_restart)"
