"""Properties of the whole path (pipeline + outbox + store) and restarts in every state.

The property test runs random sequences of calls, answers, call-backs, modem errors and
modem outages on a ManualClock that jumps from one due time to the next, then checks:
every missed call ends in exactly one sent text or exactly one recorded reason for not
sending; never two texts to one caller inside the cooldown; never silence (no text left
pending); the modem saw exactly the texts recorded as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.app.pipeline import Pipeline
from daemon.clock import ManualClock
from daemon.model import MISSED_OUTCOMES, InboundAnswered, OutboundDialled, Outcome
from daemon.outbox.outbox import Outbox
from daemon.store.store import MESSAGE_STATES, Store
from tests.outbox_fakes import NUMBERS, FakeSender, Retryable, call, cfg

T0 = 1_795_300_000.0
CALLERS = [*NUMBERS[:3], "anonymous", "12"]  # three real numbers, one withheld, one invalid
TERMINAL = {"sent", "failed", "cancelled", "expired", "uncertain"}

PROPERTY_CFG = {
    "delay": "30s",
    "cooldown": "1h",
    "max_age": "2h",
    "retry_backoff": "10s",
    "max_attempts": 3,
    "max_per_hour": 0,
    "max_per_day": 0,
    "max_per_month": 0,
    "pumping_max_per_range": 0,
}

_call = st.tuples(
    st.just("call"),
    st.sampled_from([0, 0, 1, 1, 2, 3, 4]),  # mostly real numbers, so texts collide
    st.sampled_from(
        [
            Outcome.NO_ANSWER,
            Outcome.VOICEMAIL,
            Outcome.ABANDONED,
            Outcome.ANSWERED,
            Outcome.SHORT_ABANDON,
            Outcome.BUSY,
        ]
    ),
    st.sampled_from([0, 5, 20, 29, 31, 60, 600, 3599, 3601, 8000]),
)
_op = st.one_of(
    _call,
    _call,
    _call,
    _call,
    st.tuples(st.just("answered"), st.integers(0, 2), st.just(None), st.sampled_from([0, 5, 25])),
    st.tuples(st.just("dial"), st.integers(0, 2), st.just(None), st.sampled_from([0, 10, 40])),
    st.tuples(st.just("errors"), st.integers(1, 2), st.just(None), st.just(0)),
    st.tuples(st.just("down"), st.just(0), st.just(None), st.sampled_from([0, 60])),
    st.tuples(st.just("up"), st.just(0), st.just(None), st.sampled_from([0, 60, 9000])),
    st.tuples(st.just("restart"), st.just(0), st.just(None), st.sampled_from([0, 20, 600])),
    st.tuples(st.just("crash"), st.just(0), st.just(None), st.sampled_from([30, 600])),
)


async def _crash_during_next_send(
    outbox: Outbox, clock: ManualClock, sender: FakeSender, dt: float
) -> None:
    """Run the clock on; if a send starts, the process dies right there (kill -9)."""
    sender.gate = asyncio.Event()  # the modem never answers this one
    sender.started = asyncio.Event()
    work = asyncio.ensure_future(_run_until(outbox, clock, clock.now() + dt))
    started = asyncio.ensure_future(sender.started.wait())
    await asyncio.wait([work, started], return_when=asyncio.FIRST_COMPLETED)
    for fut in (work, started):
        fut.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fut
    sender.gate = None


async def _run_until(outbox: Outbox, clock: ManualClock, target: float) -> None:
    """Move the clock to `target`, stopping at every time the outbox has work due."""
    while True:
        nxt = await outbox.next_wakeup()
        if nxt is None or nxt > target:
            break
        clock.set(max(nxt, clock.now()))
        await outbox.process_due()
    clock.set(target)
    await outbox.process_due()


async def _scenario(ops: list[tuple[str, int, Outcome | None, int]], db: Path) -> None:
    config = cfg(**PROPERTY_CFG)
    clock = ManualClock(T0)
    store = await Store.open(db, durable=False)  # no fsync: speed; logic is what is tested
    try:
        sender = FakeSender(clock=clock)
        outbox = Outbox(config, store, clock, sender)
        pipeline = Pipeline(config, store, outbox, clock)
        await outbox.recover()
        calls = []
        decided: dict[str, str] = {}
        for kind, who, outcome, dt in ops:
            if kind != "crash":  # a crash runs the clock itself, to die inside a send
                await _run_until(outbox, clock, clock.now() + dt)
            now = clock.now()
            if kind == "call":
                assert outcome is not None
                c = call(
                    CALLERS[who], outcome=outcome, at=now, withheld=CALLERS[who] == "anonymous"
                )
                calls.append(c)
                await pipeline.handle(c)
            elif kind == "answered":
                await pipeline.handle(InboundAnswered(f"a{now}", CALLERS[who], now))
            elif kind == "dial":
                await pipeline.handle(OutboundDialled(f"d{now}", CALLERS[who], now))
            elif kind == "errors":
                sender.script.extend(Retryable("network busy") for _ in range(who))
            elif kind == "down":
                sender.ready = False
            elif kind == "up":
                sender.ready = True
            else:  # the daemon restarts (after a crash mid-send, maybe): same file, new objects
                if kind == "crash":
                    await _crash_during_next_send(outbox, clock, sender, dt)
                decided.update({r.linkedid: r.decision for r in await pipeline.reports()})
                await store.close()
                store = await Store.open(db, durable=False)
                outbox = Outbox(config, store, clock, sender)
                pipeline = Pipeline(config, store, outbox, clock)
                await outbox.recover()
        sender.ready = True
        await _run_until(outbox, clock, clock.now() + 3 * 3600)

        # Never silence: nothing is left waiting, queued or sending.
        messages = await store.messages()
        assert all(m.state in TERMINAL for m in messages), [m.state for m in messages]
        by_id = {m.id: m for m in messages}

        # Every call has exactly one decision; every missed call exactly one ending.
        hist = {h.linkedid: h for h in await store.history(limit=10_000)}
        assert len(hist) == len(calls)
        async with store.connection.execute(
            "SELECT call_id, COUNT(*) FROM decisions GROUP BY call_id HAVING COUNT(*) != 1"
        ) as cur:
            assert await cur.fetchall() == []
        decided.update({r.linkedid: r.decision for r in await pipeline.reports()})
        for c in calls:
            h = hist[c.linkedid]
            assert decided[c.linkedid] == h.decision
            if h.decision == "suppress":
                assert h.message_id is None
                assert h.reason
                assert h.reason != "missed"
                continue
            assert c.outcome in MISSED_OUTCOMES
            assert h.message_id is not None
            m = by_id[h.message_id]
            assert h.call_id in m.call_ids
            # Anything but sent carries the recorded reason for not sending.
            if m.state == "cancelled":
                assert m.reason in ("called_back", "answered_on_retry"), m
            elif m.state == "failed":
                assert m.reason == "max_attempts", m
                assert m.last_error, m
            elif m.state == "expired":
                assert (m.reason or "").startswith("not sent within max_age"), m
            elif m.state == "uncertain":
                assert m.reason == "in_flight_at_restart", m

        # The modem saw exactly the texts recorded as sent, each once.
        sent = [m for m in messages if m.state == "sent"]
        assert sorted(d for d, _ in sender.sent) == sorted(m.destination for m in sent)

        # Never two texts to one caller inside the cooldown.
        times: dict[str, list[float]] = defaultdict(list)
        for m in sent:
            assert m.sent_at is not None
            times[m.destination].append(m.sent_at)
        for ts in times.values():
            ts.sort()
            assert all(b - a >= 3600 for a, b in itertools.pairwise(ts)), ts
    finally:
        await store.close()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(_op, min_size=8, max_size=40))
async def test_every_missed_call_ends_in_one_text_or_one_reason(
    ops: list[tuple[str, int, Outcome | None, int]],
) -> None:
    with tempfile.TemporaryDirectory() as d:
        await _scenario(ops, Path(d) / "tb.db")


# -- restart in the middle of every outbox state -----------------------------------------------


async def _reopen(path: Path, clock: ManualClock, **tb: object) -> tuple[Store, Outbox, FakeSender]:
    store = await Store.open(path)
    sender = FakeSender(clock=clock)
    outbox = Outbox(cfg(**tb), store, clock, sender)
    await outbox.recover()
    return store, outbox, sender


async def _setup(path: Path, clock: ManualClock, state: str) -> int:
    """Leave one message in `state` in the database at `path`, then close it."""
    store = await Store.open(path)
    sender = FakeSender(clock=clock, ready=state != "queued")
    outbox = Outbox(cfg(delay="30s", max_attempts=1), store, clock, sender)
    mid = await outbox.enqueue(destination=NUMBERS[0], text="hi", template_kind=None, call_ids=[1])
    if state == "cancelled":
        await outbox.cancel(NUMBERS[0], "called_back")
    if state in ("queued", "sent", "failed", "delivered"):
        if state == "failed":
            sender.script.append(Retryable("no network"))
        clock.advance(30)
        await outbox.process_due()
    if state in ("expired",):
        clock.advance(7201)
        await outbox.process_due()
    if state == "uncertain":
        await store.update_message(mid, now=clock.now(), state="uncertain")
    if state == "delivered":  # the network's report for its one part
        [part] = await store.message_parts(mid)
        await store.record_delivery(part["reference"], "delivered", clock.now())
    m = await store.get_message(mid)
    assert m is not None
    assert m.state == state
    await store.close()
    return mid


@pytest.mark.parametrize(
    ("state", "expected", "sends"),
    [
        ("waiting", "sent", 1),
        ("queued", "sent", 1),
        ("sent", "sent", 0),
        ("failed", "failed", 0),
        ("cancelled", "cancelled", 0),
        ("expired", "expired", 0),
        ("uncertain", "uncertain", 0),
        ("delivered", "delivered", 0),
    ],
)
async def test_restart_in_each_state(tmp_path: Path, state: str, expected: str, sends: int) -> None:
    path = tmp_path / "tb.db"
    clock = ManualClock(T0)
    mid = await _setup(path, clock, state)
    store, outbox, sender = await _reopen(path, clock, delay="30s")
    try:
        for _ in range(5):
            clock.advance(30)
            await outbox.process_due()
        m = await store.get_message(mid)
        assert m is not None
        assert m.state == expected
        assert len(sender.sent) == sends
    finally:
        await store.close()


async def test_restart_after_max_age_expires_pending_texts(tmp_path: Path) -> None:
    path = tmp_path / "tb.db"
    clock = ManualClock(T0)
    waiting = await _setup(path, clock, "waiting")
    clock.set(T0 + 3 * 3600)  # the daemon was down all afternoon
    store, outbox, sender = await _reopen(path, clock, max_age="2h")
    try:
        await outbox.process_due()
        m = await store.get_message(waiting)
        assert m is not None
        assert m.state == "expired"
        assert sender.attempts == []
    finally:
        await store.close()


async def test_restart_keeps_the_retry_schedule(tmp_path: Path) -> None:
    path = tmp_path / "tb.db"
    clock = ManualClock(T0)
    store = await Store.open(path)
    sender = FakeSender(clock=clock, script=[Retryable("busy")])
    outbox = Outbox(cfg(delay="0s", retry_backoff="60s"), store, clock, sender)
    mid = await outbox.enqueue(destination=NUMBERS[0], text="hi", template_kind=None, call_ids=[1])
    await outbox.process_due()
    await store.close()
    store, outbox, sender = await _reopen(path, clock, delay="0s", retry_backoff="60s")
    try:
        clock.advance(59)
        await outbox.process_due()
        assert sender.attempts == []
        clock.advance(1)
        await outbox.process_due()
        m = await store.get_message(mid)
        assert m is not None
        assert (m.state, m.attempts) == ("sent", 2)
    finally:
        await store.close()


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from daemon.clock import ManualClock
    from daemon.config import Config
    from daemon.outbox.outbox import Outbox
    from daemon.store.store import Store

    class Hang:
        name = "hang"
        ready = True

        async def send(self, request):
            print("SENDING", flush=True)
            await asyncio.Event().wait()  # the modem never answers: we get killed here

    async def main():
        store = await Store.open(sys.argv[1])
        clock = ManualClock(1_795_300_000.0)
        outbox = Outbox(Config(textback={"delay": "0s"}), store, clock, Hang())
        await outbox.enqueue(destination="+12025550101", text="hi", template_kind=None,
                             call_ids=[1])
        await outbox.process_due()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("resend", [False, True])
async def test_kill_9_during_a_send_leaves_it_uncertain(tmp_path: Path, resend: bool) -> None:
    path = tmp_path / "tb.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        str(path),
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[1],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"SENDING"
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    # The lock died with the process: a new daemon takes over.
    clock = ManualClock(T0 + 60)
    store, outbox, sender = await _reopen(path, clock, resend_uncertain=resend)
    try:
        for _ in range(3):
            await outbox.process_due()
            clock.advance(60)
        (m,) = await store.messages()
        if resend:
            assert (m.state, len(sender.sent)) == ("sent", 1)
            assert m.attempts == 2
        else:
            assert (m.state, len(sender.sent)) == ("uncertain", 0)
            assert m.reason == "in_flight_at_restart"
    finally:
        await store.close()


def test_every_state_is_covered_by_a_restart_test() -> None:
    covered = {"waiting", "queued", "sent", "failed", "cancelled", "expired", "uncertain"}
    covered.add("delivered")
    covered.add("sending")  # the kill -9 test
    assert covered == set(MESSAGE_STATES)
