"""The MQTT sink and its worker: events in on the bus, out to the broker on its own time.

`handle` (on the event loop, from the bus) only turns an event into a payload and puts
it in a bounded deque: it never waits for the broker. The worker (`run`, one task the
service starts when `[mqtt] url` is set) connects with a last will of `offline` on the
status topic (retained, QoS 1), says `online`, sends discovery, the state and every
modem's state (retained), subscribes to Home Assistant's status and, with `commands =
true`, to `cmd/enabled`, then publishes events in order (QoS 1, never retained) and the
state when it changed, at most every STATE_INTERVAL. In a burst (BURST_BACKLOG events
waiting while the outbox hands texts to the modem) events wait for the texts,
EVENT_YIELD at most at a time.

A lost or refused connection is retried by capped exponential backoff with jitter (the
longest wait at once for a refused login: it will not fix itself), one log line per
change of state. Events wait in memory meanwhile, MAX_QUEUED at most: past that the
oldest are dropped, counted, and said once per outage. Texting never waits for any of
this. `close` (a clean stop) publishes what it can within a second, then `offline`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl
from collections import deque
from typing import Any

import aiomqtt

from daemon.clock import Clock, SystemClock
from daemon.config import Config
from daemon.logsetup import kv
from daemon.mqtt import discovery
from daemon.mqtt.broker import Broker
from daemon.mqtt.payloads import (
    EventPayloads,
    Topics,
    dumps,
    event_message,
    modem_payload,
    site_of,
    state_payload,
)
from daemon.sinks.bus import TextsFirst
from daemon.sinks.events import (
    CallDecided,
    Event,
    ModemStateChanged,
    PauseChanged,
    TextChanged,
    TextMerged,
    TextWritten,
)
from daemon.store.store import Store, StoreError

log = logging.getLogger("daemon.mqtt")

#: Events published at once, each awaiting its PUBACK (under paho's max_inflight, 20).
IN_FLIGHT = 16
#: Events held while the broker is away (a few hundred bytes each).
MAX_QUEUED = 10_000
#: The state is published at most this often (it changes with every call and text).
STATE_INTERVAL = 2.0
#: ...and read again at least this often when no event said it changed: a pause made by
#: the CLI (another process), a pause that ran out, a new day.
STATE_POLL = 5.0
#: Reconnect backoff: first wait, doubling to the longest; a refused login waits longest.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
#: Connect and publish acknowledgements: a broker silent this long has failed.
BROKER_TIMEOUT = 10.0
#: A clean stop: how long queued events may take to go out before `offline`.
CLOSE_GRACE = 1.0
#: Events waiting while texts are being handed to the modem: this many make a burst,
#: and a burst's events wait for the texts (see `_flush_events`) ...
BURST_BACKLOG = 32
#: ... this long at most at a time.
EVENT_YIELD = 10.0
#: CONNACK codes (MQTT 3.1.1) that mean the login is wrong: 4 bad user name or
#: password, 5 not authorised (MQTT 5: 134, 135).
AUTH_CODES = frozenset({4, 5, 134, 135})
#: Longest command payload shown in a log line.
SHOWN = 40


class MqttSink:
    """The MQTT sink (`handle`) and worker (`run`, `close`). See the module docstring."""

    name = "mqtt"

    def __init__(
        self,
        cfg: Config,
        store: Store | None,
        clock: Clock | None = None,
        *,
        max_queued: int = MAX_QUEUED,
        backoff_first: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
        state_interval: float = STATE_INTERVAL,
        state_poll: float = STATE_POLL,
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._clock = clock or SystemClock()
        self.broker = Broker.parse(cfg.mqtt.url)
        self.topics = Topics.of(cfg)
        self._payloads = EventPayloads(expose_caller=cfg.mqtt.expose_caller)
        self._queue: deque[tuple[str, bytes]] = deque()
        self._max_queued = max(1, max_queued)
        self._backoff = (backoff_first, max(backoff_first, backoff_max))
        self._state_interval = state_interval
        self._state_poll = state_poll
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self._modems: dict[str, ModemStateChanged | None] = {}
        #: Retained messages waiting to go out (topic -> payload); the latest wins.
        self._retained: dict[str, bytes] = {}
        #: What the broker holds now (topic -> payload), to publish only changes.
        self._published: dict[str, bytes] = {}
        self._client: aiomqtt.Client | None = None
        self._closing = False
        #: The outbox, set by the assembly: a burst's events wait for its texts.
        self.texts_first: TextsFirst | None = None
        self._state_down = ""  # the failure last logged ("" when connected)
        #: Events dropped because the queue was full (since the start; `dropped_now`:
        #: in this outage, said when the broker is back).
        self.dropped = 0
        self._dropped_now = 0
        #: Events and retained messages published; connections made; attempts.
        self.published = 0
        self.connects = 0
        self.attempts = 0
        #: Command messages ignored (malformed) and obeyed.
        self.commands_ignored = 0
        self.commands_done = 0
        #: Unexpected exceptions survived (each logged with its traceback).
        self.bugs = 0
        self.connected = asyncio.Event()

    # -- the sink ----------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """Turn an event into its MQTT message and queue it; never blocks."""
        if isinstance(event, ModemStateChanged):
            self._modems[event.name] = event
            self._dirty.set()
            return
        if isinstance(event, CallDecided | TextWritten | TextChanged | TextMerged | PauseChanged):
            self._dirty.set()
        mapped = self._payloads.of(event)
        if mapped is None:
            return
        kind, body = mapped
        if len(self._queue) >= self._max_queued:
            self._queue.popleft()
            self.dropped += 1
            self._dropped_now += 1
            if self._dropped_now == 1:
                log.warning(
                    kv(
                        event="mqtt_overflow",
                        queued=len(self._queue),
                        note="the oldest MQTT events are dropped until the broker is back;"
                        " texting goes on",
                    )
                )
        self._queue.append((self.topics.event(kind), event_message(kind, body)))
        self._wake.set()

    @property
    def backlog(self) -> int:
        """Events waiting for the broker."""
        return len(self._queue)

    # -- the worker --------------------------------------------------------------------

    def _client_for(self) -> aiomqtt.Client:
        m = self._cfg.mqtt
        tls: ssl.SSLContext | None = None
        if self.broker.tls:
            tls = ssl.create_default_context(cafile=m.ca_file or None)
        client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            username=m.username or None,
            password=m.password or None,
            identifier=m.client_id or f"textback-{self.topics.site}",
            keepalive=max(1, round(m.keepalive)),
            will=aiomqtt.Will(self.topics.status, b"offline", qos=1, retain=True),
            tls_context=tls,
            timeout=BROKER_TIMEOUT,
            clean_session=True,
            logger=logging.getLogger("daemon.mqtt.paho"),
        )
        # aiomqtt warns past 10 publishes awaiting their PUBACK, once per publish: with
        # IN_FLIGHT at once by design that was a journal line per event in a burst (and
        # a tenth of the sink's CPU). Its own public knob; above what this sink can have.
        client.pending_calls_threshold = 2 * IN_FLIGHT
        return client

    async def run(self) -> None:
        """Connect, publish, reconnect: until cancelled or closed."""
        first, longest = self._backoff
        delay = first
        while not self._stopped():
            self.attempts += 1
            wait = delay
            try:
                client = self._client_for()
                self._client = client
                async with client:
                    self._up()
                    delay = first
                    await self._session(client)
            except* aiomqtt.MqttError as group:
                exc = group.exceptions[0]
                refused = _refused(exc)
                if refused:
                    wait = longest
                self._down(exc, refused=refused, retry_in=wait)
            except* (OSError, ssl.SSLError) as group:
                self._down(group.exceptions[0], refused=False, retry_in=wait)
            except* Exception as group:
                # a bug here must cost MQTT a reconnect at most, never the daemon
                self.bugs += 1
                log.error(
                    kv(event="bug", during="mqtt", error=repr(group.exceptions[0])),
                    exc_info=group.exceptions[0],
                )
            finally:
                self._client = None
                self.connected.clear()
            if self._stopped():
                return
            await self._clock.sleep(_jitter(wait))
            delay = min(delay * 2, longest)

    def _stopped(self) -> bool:
        """`close()` was called: no more connecting (a call: mypy would narrow a field)."""
        return self._closing

    def _up(self) -> None:
        self.connects += 1
        self.connected.set()
        log.info(
            kv(
                event="mqtt_connected",
                broker=self.broker,
                site=self.topics.site,
                queued=len(self._queue),
                dropped=self._dropped_now or None,
            )
        )
        self._state_down = ""
        self._dropped_now = 0

    def _down(self, exc: BaseException, *, refused: bool, retry_in: float) -> None:
        was_up = self.connected.is_set()
        what = "refused" if refused else ("lost" if was_up else "unreachable")
        fields: dict[str, Any] = {
            "event": f"mqtt_{what}",
            "broker": self.broker,
            "error": str(exc) or type(exc).__name__,
            "retry_in": f"{retry_in:g}s",
            "queued": len(self._queue),
        }
        if refused:
            fields["fix"] = "check [mqtt] username and password (and the broker's ACL)"
        # one line per change of state: the same failure again is DEBUG
        key = f"{what}:{fields['error']}"
        level = logging.DEBUG if key == self._state_down else logging.WARNING
        self._state_down = key
        log.log(level, kv(**fields))

    async def _session(self, client: aiomqtt.Client) -> None:
        t = self.topics
        await _publish(client, t.status, b"online", qos=1, retain=True)
        if self._cfg.mqtt.commands:
            await client.subscribe(t.cmd_enabled, qos=1)
        if self._cfg.mqtt.discovery:
            await client.subscribe(t.ha_status, qos=1)
        self._published.clear()  # the broker may have restarted without its store
        await self._announce(client)
        # Not a TaskGroup: on Python 3.11 one whose child fails can leave this task with
        # a cancel request counted (cancelling() > 0) after it is over, and the next
        # session would then take itself for stopped.
        tasks = [
            asyncio.create_task(self._listen(client), name="mqtt-listen"),
            asyncio.create_task(self._ticker(), name="mqtt-state"),
            asyncio.create_task(self._pump(client), name="mqtt-publish"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _announce(self, client: aiomqtt.Client) -> None:
        """Discovery, the state and each modem's state: after every connect, and when
        Home Assistant comes back."""
        if self._cfg.mqtt.discovery:
            for topic, payload in discovery.messages(
                self._cfg, self.topics, modems=list(self._modems)
            ):
                await _publish(client, topic, payload, qos=1, retain=True)
                self.published += 1
        await self._refresh(force=True)
        await self._flush_retained(client)

    async def _pump(self, client: aiomqtt.Client) -> None:
        while True:
            await self._flush_events(client)
            await self._flush_retained(client)
            self._wake.clear()
            if not self._queue and not self._retained:
                await self._wake.wait()

    async def _flush_events(self, client: aiomqtt.Client, *, hold: bool = True) -> None:
        budget = 0  # events to publish before holding again
        while self._queue:
            if hold and budget <= 0 and self._burst():
                # Texts to callers first. A publish costs paho ~0.25 ms of this loop's
                # CPU, three events a call: in a burst that the CPU paces (a fast modem,
                # many calls) it slowed the texts by a fifth (bench_observe). A burst's
                # events wait until its texts are handed over, EVENT_YIELD at most; then
                # what waited goes out before the next wait. A call or two at a time
                # never waits: its events go out at once.
                assert self.texts_first is not None
                await self.texts_first.quiet(EVENT_YIELD)
                budget = len(self._queue)
            # Up to IN_FLIGHT at once: one publish and its PUBACK at a time cost a turn of
            # the loop and a socket write and read each; the packets still leave in order
            # on the one connection, and the broker keeps that order.
            batch = list(itertools.islice(self._queue, IN_FLIGHT))
            budget -= len(batch)
            results = await asyncio.gather(
                *(
                    _publish(client, topic, payload, qos=1, retain=False)
                    for topic, payload in batch
                ),
                return_exceptions=True,
            )
            # gone from the queue only once the broker has it (PUBACK): an event cut off
            # by a lost link goes again; its event_id lets consumers drop the repeat
            for (_, payload), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    raise result
                if self._queue and self._queue[0][1] is payload:
                    self._queue.popleft()
                self.published += 1

    def _burst(self) -> bool:
        """A backlog of events while texts are being handed to the modem."""
        tf = self.texts_first
        return tf is not None and len(self._queue) >= BURST_BACKLOG and tf.busy()

    async def _flush_retained(self, client: aiomqtt.Client) -> None:
        while self._retained:
            topic = next(iter(self._retained))
            payload = self._retained[topic]
            await _publish(client, topic, payload, qos=1, retain=True)
            if self._retained.get(topic) is payload:
                del self._retained[topic]
            self._published[topic] = payload
            self.published += 1

    async def _ticker(self) -> None:
        """The state, when an event said it changed (at most every state_interval), and
        every state_poll anyway."""
        since = 0.0
        while True:
            await self._clock.sleep(self._state_interval)
            since += self._state_interval
            if self._dirty.is_set() or since >= self._state_poll:
                since = 0.0
                await self._refresh()

    async def _refresh(self, *, force: bool = False) -> None:
        """Read the state and queue what changed (everything with `force`)."""
        self._dirty.clear()
        now = self._clock.now()
        if self._store is None:
            return
        try:
            live = await self._store.live(now)
        except StoreError as exc:
            log.debug(kv(event="mqtt_state_unread", error=exc))
            self._dirty.set()  # try again at the next tick
            return
        out = {
            self.topics.state: dumps(state_payload(live, config_enabled=self._cfg.textback.enabled))
        }
        for name in discovery.modem_names(self._cfg, self._modems):
            out[self.topics.modem_state(name)] = dumps(
                modem_payload(
                    self._modems.get(name),
                    queued=live.queued,
                    sent_today=live.sent_today_by.get(name, 0),
                )
            )
        for topic, payload in out.items():
            if force or self._published.get(topic) != payload:
                self._retained[topic] = payload
        if self._retained:
            self._wake.set()

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload
            raw = payload if isinstance(payload, bytes) else str(payload or "").encode()
            if topic == self.topics.ha_status:
                if raw.strip() == b"online":
                    log.info(kv(event="mqtt_discovery", why="Home Assistant is online"))
                    await self._announce(client)
            elif topic == self.topics.cmd_enabled:
                await self._command(raw)

    async def _command(self, raw: bytes) -> None:
        """`cmd/enabled`: ON resumes texting, OFF pauses it until resumed; anything else is
        ignored with a log line."""
        word = raw.strip().decode("utf-8", "replace").upper()
        if word not in ("ON", "OFF") or self._store is None:
            self.commands_ignored += 1
            shown = raw[:SHOWN].decode("utf-8", "replace")
            log.warning(
                kv(
                    event="mqtt_command_ignored",
                    topic=self.topics.cmd_enabled,
                    payload=shown,
                    expected="ON or OFF",
                )
            )
            return
        now = self._clock.now()
        try:
            if word == "OFF":
                await self._store.pause(None, source="mqtt", now=now)
            else:
                done = await self._store.resume(source="mqtt", now=now)
                if not self._cfg.textback.enabled:
                    log.warning(
                        kv(
                            event="mqtt_command",
                            command="ON",
                            resumed=done,
                            note="[textback] enabled = false in the config still wins",
                        )
                    )
        except StoreError as exc:
            log.error(kv(event="mqtt_command_failed", command=word, error=exc))
            return
        self.commands_done += 1
        await self._refresh()

    async def close(self) -> None:
        """A clean stop: what is queued goes out for up to CLOSE_GRACE, then `offline`
        (retained) and a proper disconnect, so the will is not sent."""
        self._closing = True
        client = self._client
        if client is None or not self.connected.is_set():
            return
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
            async with asyncio.timeout(CLOSE_GRACE):
                await self._flush_events(client, hold=False)
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
            async with asyncio.timeout(CLOSE_GRACE):
                await client.publish(self.topics.status, b"offline", qos=1, retain=True)
                log.info(kv(event="mqtt_offline", broker=self.broker, why="stopping"))


async def _publish(
    client: aiomqtt.Client, topic: str, payload: bytes, *, qos: int, retain: bool
) -> None:
    """Publish, and never swallow a cancel: aiomqtt waits for the PUBACK with Python
    3.11's asyncio.wait_for, which drops a cancel that comes together with the answer;
    the task would then go on (seen: the worker back to reading messages after a stop,
    never ending)."""
    await client.publish(topic, payload, qos=qos, retain=retain)
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _refused(exc: BaseException) -> bool:
    """A CONNACK that refuses the login (wrong user name or password, not authorised)."""
    rc = getattr(exc, "rc", None)
    value = getattr(rc, "value", rc)
    return isinstance(exc, aiomqtt.MqttCodeError) and value in AUTH_CODES


def _jitter(delay: float) -> float:
    """Half the delay, plus up to the other half at random: reconnecting offices do not
    all knock at once."""
    return delay / 2 + random.uniform(0, delay / 2)


__all__ = ["Broker", "MqttSink", "site_of"]
