"""MQTT: the sink and worker against a real Mosquitto (tests/mqtt_support.py), a real
SQLite store and the injected ManualClock (backoff and the state ticker wait on it, so
nothing here sleeps for a timer); the payloads, discovery and UUIDv7 as pure functions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from daemon.check import validate
from daemon.clock import ManualClock
from daemon.config import Config
from daemon.model import FinishedCall, MessageKind, MessageState, Outcome
from daemon.mqtt import discovery
from daemon.mqtt.broker import Broker
from daemon.mqtt.client import BURST_BACKLOG, EVENT_YIELD, MqttSink
from daemon.mqtt.payloads import EventPayloads, Topics, event_message, rssi_dbm
from daemon.mqtt.uuid7 import uuid7
from daemon.sinks.bus import EventBus
from daemon.sinks.events import (
    CallDecided,
    CallRecorded,
    ModemStateChanged,
    OptOutChanged,
    TextChanged,
    TextWritten,
)
from daemon.store.store import Store
from tests.mqtt_support import Mosquitto, Recorder, broker

pytestmark = pytest.mark.timeout(60)

CALLER = "+12025550123"
SITE = "lab"


def cfg_for(url: str, **mqtt: Any) -> Config:
    """A config with [mqtt] pointing at `url`, site `lab`."""
    return Config(mqtt={"url": url, "site": SITE, "keepalive": "5s", **mqtt})  # type: ignore[arg-type]


def call(linkedid: str = "1795331033.2", outcome: Outcome = Outcome.ABANDONED) -> FinishedCall:
    """A missed inbound call from a fictional number."""
    return FinishedCall(
        linkedid=linkedid,
        caller=CALLER,
        caller_name="",
        did="5551000",
        inbound=True,
        outcome=outcome,
        started_at=1_795_300_000.0,
        ended_at=1_795_300_010.0,
        ring_seconds=8.0,
        voicemail_left=None,
        withheld=False,
    )


def decided(c: FinishedCall, at: float = 1_795_300_010.5) -> CallDecided:
    """The send decision of `c` (message 7)."""
    return CallDecided(
        call=c,
        call_id=3,
        action="send",
        reason="missed",
        detail="",
        text="Sorry we missed your call",
        message_id=7,
        merged=False,
        at=at,
    )


# -- pure parts ----------------------------------------------------------------------------


def test_uuid7_is_version_7_time_ordered_and_unique() -> None:
    ids = [uuid7(1_795_300_000.123) for _ in range(5000)]  # one millisecond: the counter
    ids += [uuid7(1_795_300_000.124)]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids, key=lambda u: u.bytes)  # made in order, sorted in order
    assert int.from_bytes(ids[0].bytes[:6], "big") == 1_795_300_000_123


def test_event_payloads_carry_id_time_linkedid_and_no_number_unless_exposed() -> None:
    hidden = EventPayloads(expose_caller=False)
    c = call()
    assert hidden.of(CallRecorded(call=c, call_id=3, destination=CALLER)) is None
    kind, body = hidden.of(decided(c)) or ("", {})
    assert kind == "missed_call"
    wire = json.loads(event_message(kind, body))
    assert wire["event_type"] == "missed_call"
    assert uuid.UUID(wire["event_id"]).version == 7
    assert wire["ts"] == "2026-11-21T22:26:50.500Z"
    assert wire["linkedid"] == "1795331033.2"
    assert CALLER not in json.dumps(wire)
    assert "caller" not in wire
    # a text of that call carries its linkedid, its sending too
    written = TextWritten(
        message_id=7,
        destination=CALLER,
        kind=MessageKind.MISSED_CALL,
        state=MessageState.WAITING,
        due_at=1_795_300_040.0,
        call_ids=(3,),
        line="5551000",
        at=1_795_300_010.5,
    )
    assert hidden.of(written) is not None
    sent = TextChanged(
        message_id=7,
        destination=CALLER,
        kind=MessageKind.MISSED_CALL,
        state=MessageState.SENT,
        at=1_795_300_041.0,
        references=(12,),
        sender="modem",
    )
    kind, body = hidden.of(sent) or ("", {})
    assert (kind, body["linkedid"], body["parts"]) == ("text_sent", "1795331033.2", 1)
    assert "caller" not in body
    shown = EventPayloads(expose_caller=True)
    _, body = shown.of(OptOutChanged(number=CALLER, opted_out=True, source="keyword", at=1.0)) or (
        "",
        {},
    )
    assert body["caller"] == CALLER
    # an answered call is not a missed_call event
    assert hidden.of(decided(call(outcome=Outcome.ANSWERED))) is None


def test_rssi_dbm_from_csq() -> None:
    assert [rssi_dbm(s) for s in (0, 18, 31, 99, None)] == [-113, -77, -51, None, None]


def test_discovery_has_the_entities_home_assistant_needs() -> None:
    cfg = cfg_for("mqtt://127.0.0.1:1883", commands=True)
    topics = Topics.of(cfg)
    msgs = {t: json.loads(p) for t, p in discovery.messages(cfg, topics)}
    node = "textback_lab"
    missed = msgs[f"homeassistant/sensor/{node}/missed_today/config"]
    assert missed["state_class"] == "total_increasing"
    assert missed["device"]["name"] == "textback lab"
    assert missed["availability"] == [{"topic": "textback/lab/status"}]
    assert msgs[f"homeassistant/sensor/{node}/last_missed/config"]["device_class"] == "timestamp"
    signal = msgs[f"homeassistant/sensor/{node}/modem_modem_signal/config"]
    assert (signal["device_class"], signal["unit_of_measurement"]) == ("signal_strength", "dBm")
    assert signal["entity_category"] == "diagnostic"
    assert f"homeassistant/binary_sensor/{node}/modem_modem_connected/config" in msgs
    assert msgs[f"homeassistant/event/{node}/calls/config"]["event_types"] == ["missed_call"]
    switch = msgs[f"homeassistant/switch/{node}/enabled/config"]
    assert switch["command_topic"] == "textback/lab/cmd/enabled"
    # one device for all; every unique id unique
    assert len({m["unique_id"] for m in msgs.values()}) == len(msgs)
    # without commands the switch is withdrawn (an empty retained config)
    off = dict(discovery.messages(cfg_for("mqtt://h", commands=False), topics))
    assert off[f"homeassistant/switch/{node}/enabled/config"] == b""


def test_broker_url_and_check() -> None:
    assert Broker.parse("mqtts://broker.example") == Broker("broker.example", 8883, True)
    assert Broker.parse("mqtt://127.0.0.1:1884") == Broker("127.0.0.1", 1884, False)
    with pytest.raises(ValueError, match="scheme"):
        Broker.parse("http://127.0.0.1")
    problems = {p.key: p for p in validate(cfg_for("tcp://x"))}
    assert "mqtt.url" in problems
    problems = {
        p.key: p
        for p in validate(
            cfg_for("mqtts://broker.example", username="office", ca_file="/nonexistent/ca.pem")
        )
    }
    assert "mqtt.password" in problems
    assert "mqtt.ca_file" in problems
    assert not [p for p in validate(cfg_for("mqtt://127.0.0.1:1883")) if p.key.startswith("mqtt")]


# -- the worker against a real broker ---------------------------------------------------------


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Let the worker run until `predicate()` (it reached its next wait on the clock)."""
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the worker never got there")


@contextlib.asynccontextmanager
async def worker(
    cfg: Config, store: Store | None, clock: ManualClock, **kw: Any
) -> AsyncIterator[MqttSink]:
    """The sink on a bus, its worker running; closed and stopped afterwards."""
    sink = MqttSink(cfg, store, clock, **kw)
    task = asyncio.create_task(sink.run())
    try:
        yield sink
    finally:
        await sink.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "t.db", durable=False, bus=EventBus())
    try:
        yield s
    finally:
        await s.close()


async def test_connect_online_state_discovery_events_and_clean_offline(
    tmp_path: Path, store: Store
) -> None:
    clock = ManualClock()
    async with broker(tmp_path) as b, Recorder(b) as rec:
        cfg = cfg_for(b.url, commands=True)
        async with worker(cfg, store, clock) as sink:
            await rec.wait(lambda: rec.on("textback/lab/modem/modem/state"), what="states")
            assert rec.on("textback/lab/status")[-1].payload == b"online"
            assert rec.on("textback/lab/status")[-1].retain is False  # live, not replayed
            state = rec.on("textback/lab/state")[-1].json()
            assert state["enabled"] is True
            assert state["missed_today"] == 0
            assert rec.starting("homeassistant/sensor/textback_lab/")
            modem = rec.on("textback/lab/modem/modem/state")[-1].json()
            assert modem["connected"] is False
            # a modem comes up: its state (dBm) goes out at the next tick
            sink.handle(
                ModemStateChanged(
                    name="modem", device="/dev/ttyUSB0", state="ready", signal=18,
                    operator="Lab Mobile", registration="registered (home)",
                )
            )  # fmt: skip
            clock.advance(2.0)
            await rec.wait(
                lambda: rec.on("textback/lab/modem/modem/state")[-1].json()["connected"],
                what="modem state",
            )
            m = rec.on("textback/lab/modem/modem/state")[-1].json()
            assert (m["rssi_dbm"], m["operator"], m["registered"]) == (-77, "Lab Mobile", True)
            sink.handle(decided(call()))
            await rec.wait(lambda: rec.on("textback/lab/event/missed_call"), what="event")
            ev = rec.on("textback/lab/event/missed_call")[0]
            assert ev.retain is False
            assert ev.json()["linkedid"] == "1795331033.2"
        # a clean stop says offline itself (retained)
        await rec.wait(
            lambda: rec.on("textback/lab/status")[-1].payload == b"offline", what="offline"
        )


class Burst:
    """The outbox as the sink sees it: busy until `over` is set."""

    def __init__(self) -> None:
        self.over = asyncio.Event()
        self.waited: list[float] = []
        self.waiting = asyncio.Event()

    def busy(self) -> bool:
        return not self.over.is_set()

    async def quiet(self, at_most: float) -> None:
        self.waited.append(at_most)
        self.waiting.set()
        await self.over.wait()


async def test_a_bursts_events_wait_for_its_texts_a_single_calls_do_not(
    tmp_path: Path, store: Store
) -> None:
    clock = ManualClock()
    topic = "textback/lab/event/missed_call"
    async with (
        broker(tmp_path) as b,
        Recorder(b) as rec,
        worker(cfg_for(b.url), store, clock) as sink,
    ):
        await rec.wait(lambda: rec.on("textback/lab/state"), what="the state")
        sink.texts_first = burst = Burst()
        sink.handle(decided(call("1795331033.1")))  # one call while a text goes out
        await rec.wait(lambda: len(rec.on(topic)) == 1, what="the single call's event")
        assert burst.waited == []
        for i in range(BURST_BACKLOG):  # a burst: these wait for its texts
            sink.handle(decided(call(f"1795331034.{i}")))
        await asyncio.wait_for(burst.waiting.wait(), 10)
        assert burst.waited == [EVENT_YIELD]
        assert len(rec.on(topic)) == 1
        assert sink.backlog == BURST_BACKLOG
        burst.over.set()  # the texts are out
        await rec.wait(lambda: len(rec.on(topic)) == 1 + BURST_BACKLOG, what="the burst")
        linkedids = [h.json()["linkedid"] for h in rec.on(topic)[1:]]
        assert linkedids == [f"1795331034.{i}" for i in range(BURST_BACKLOG)]  # in order


async def test_home_assistant_online_resends_discovery(tmp_path: Path, store: Store) -> None:
    clock = ManualClock()
    async with broker(tmp_path) as b, Recorder(b) as rec, worker(cfg_for(b.url), store, clock):
        topic = "homeassistant/sensor/textback_lab/missed_today/config"
        await rec.wait(lambda: rec.on(topic), what="discovery")
        mark = time.monotonic()
        async with aiomqtt.Client("127.0.0.1", b.port) as ha:
            await ha.publish("homeassistant/status", b"online", qos=1)
        await rec.wait(lambda: rec.on(topic, since=mark), what="discovery again")
        assert rec.on(topic, since=mark)[0].json()["name"] == "Missed calls today"


async def test_switch_pauses_and_resumes_and_bad_payload_is_ignored(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    async with (
        broker(tmp_path) as b,
        Recorder(b) as rec,
        worker(cfg_for(b.url, commands=True), store, clock) as sink,
    ):
        await rec.wait(lambda: rec.on("textback/lab/state"), what="state")
        async with aiomqtt.Client("127.0.0.1", b.port) as ha:
            with caplog.at_level(logging.WARNING, logger="daemon.mqtt"):
                await ha.publish("textback/lab/cmd/enabled", b"\x00\xffmaybe", qos=1)
                await ha.publish("textback/lab/cmd/enabled", b"OFF", qos=1)
                await rec.wait(
                    lambda: not rec.on("textback/lab/state")[-1].json()["enabled"],
                    what="enabled false",
                )
            assert sink.commands_ignored == 1
            ignored = [r for r in caplog.records if "mqtt_command_ignored" in r.getMessage()]
            assert len(ignored) == 1
            pause = await store.pause_state(clock.now())
            assert pause is not None
            assert pause.source == "mqtt"
            assert pause.until is None
            await ha.publish("textback/lab/cmd/enabled", b"ON", qos=1)
            await rec.wait(
                lambda: rec.on("textback/lab/state")[-1].json()["enabled"],
                what="enabled true",
            )
        assert await store.pause_state(clock.now()) is None
        assert sink.commands_done == 2


async def test_wrong_password_one_log_line_then_backoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    async with broker(tmp_path, users={"office": "right-password"}) as b:
        cfg = cfg_for(b.url, username="office", password="wrong-password")
        with caplog.at_level(logging.DEBUG, logger="daemon.mqtt"):
            async with worker(cfg, None, clock, backoff_first=1.0, backoff_max=60.0) as sink:
                # three refusals: each waits the longest backoff (a login does not fix
                # itself), on the injected clock
                for attempt in (1, 2, 3):
                    await until(lambda: sink.attempts >= attempt and clock.pending > 0)  # noqa: B023
                    clock.advance(60.0)
                refused = [r for r in caplog.records if "event=mqtt_refused" in r.getMessage()]
                assert len(refused) >= 3
                loud = [r for r in refused if r.levelno >= logging.WARNING]
                assert len(loud) == 1, "one clear line, the repeats at DEBUG"
                assert "username and password" in loud[0].getMessage()
                assert "wrong-password" not in caplog.text  # never the secret
                assert sink.connects == 0


async def test_broker_down_events_wait_bounded_and_go_out_when_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten minutes of outage on the injected clock: the backoff stays capped, events wait
    (the oldest dropped past the bound, counted, said once), and go out on reconnect."""
    clock = ManualClock()
    b = Mosquitto(tmp_path)
    cfg = cfg_for(b.url)
    with caplog.at_level(logging.DEBUG, logger="daemon.mqtt"):
        async with worker(cfg, None, clock, max_queued=50, backoff_max=30.0) as sink:
            waited = 0.0
            for i in range(120):
                sink.handle(decided(call(linkedid=f"1795331033.{i}"), at=clock.now()))
            while waited < 600.0:
                await until(lambda: clock.pending > 0)
                clock.advance(30.0)
                waited += 30.0
            assert sink.attempts >= 600 / 30  # capped: never longer than 30 s apart
            assert (sink.dropped, sink.backlog) == (70, 50)
            overflow = [r for r in caplog.records if "event=mqtt_overflow" in r.getMessage()]
            assert len(overflow) == 1
            unreachable = [r for r in caplog.records if "mqtt_unreachable" in r.getMessage()]
            assert sum(r.levelno >= logging.WARNING for r in unreachable) == 1
            b.start()
            try:
                async with Recorder(b) as rec:
                    await until(lambda: clock.pending > 0)
                    clock.advance(30.0)
                    await rec.wait(
                        lambda: len(rec.starting("textback/lab/event/missed_call")) == 50,
                        what="the 50 kept events",
                    )
                    ids = [h.json()["linkedid"] for h in rec.starting("textback/lab/event/")]
                    assert ids == [f"1795331033.{i}" for i in range(70, 120)]  # newest kept
            finally:
                await sink.close()
                b.stop()


async def test_the_pause_survives_a_restart_and_runs_out(tmp_path: Path) -> None:
    now = 1_795_300_000.0
    s = await Store.open(tmp_path / "p.db", durable=False, bus=EventBus())
    await s.pause(now + 7200, source="cli", now=now)
    await s.close()
    s = await Store.open(tmp_path / "p.db", durable=False, bus=EventBus())
    try:
        pause = await s.pause_state(now + 60)
        assert pause is not None
        assert pause.until == now + 7200
        assert "paused (cli) until" in pause.detail()
        facts = await s.policy_facts("+12025550123", now + 60, Config())
        assert facts.paused == pause.detail()
        assert await s.pause_state(now + 7201) is None  # over by itself
        assert not (await s.live(now + 7201)).paused
        assert await s.resume(source="cli", now=now)
        assert not await s.resume(source="cli", now=now)
    finally:
        await s.close()
