"""The broker connection of the jobs roles: MQTT 5, reconnecting, one per process.

`Link.run` connects to `[mqtt] url` (its own client id, `<client_id or textback-<site>>-jobs`),
subscribes to what its users asked for and hands every message to `on_message` in order;
a lost connection is retried by capped exponential backoff, one log line per change.
A site's session is persistent (clean start off, SESSION_EXPIRY): results published
while it was away are delivered when it is back. A sender's is not (clean start, expiry
0): Mosquitto (2.0.11, observed) gives each message of a shared subscription to the next
member in turn when it is published, an absent member with a live session included, and
drops what a session held when it ends; it never hands it to the others. A sender's
session ending with its connection keeps new jobs off a dead sender at once, and the site
offers again what no sender claimed (daemon.jobs.site). QoS 1 jobs are acknowledged on
receipt (aiomqtt's default): a job is the sender's only once the site granted its claim.
`publish` raises `LinkDown` while there is no connection: its callers keep the work
durable and try again.

The link is up (`connected`, `jobs_link_up`) only once it has heard back a marker it
publishes to `<p>/<site>/sync` after subscribing: the broker sends what a subscription
holds (the group's retained do-not-text list, results queued while away) before a
message published after it, and every message is handled in order, so by then the list
is applied here. A site sends no job before (`BrokerSender.ready`): a text decided in
its first moment to a number opted out elsewhere is cancelled when the list applies,
not sent. A marker that never comes back (an ACL that refuses the topic) is waited for
SYNC_TIMEOUT, then the link goes up anyway with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.clock import Clock
from daemon.config import Config
from daemon.logsetup import kv
from daemon.mqtt.broker import SOCKET_OPTIONS, Broker
from daemon.mqtt.payloads import site_of

log = logging.getLogger("daemon.jobs")

#: Reconnect backoff: first wait, doubling to the longest.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: Connect, subscribe and publish acknowledgements: a broker silent this long has failed.
BROKER_TIMEOUT = 10.0
#: After a failed publish while the link still looked up: wait this long (seconds).
LINK_RETRY = 1.0
#: Publishes awaiting their acknowledgement beyond which aiomqtt logs a warning (at least).
PENDING_WARN = 100
#: How long the broker keeps a site's session (and the results queued for it) while away.
SESSION_EXPIRY = 86400
#: The longest wait for the link's own sync marker (see the module docstring).
SYNC_TIMEOUT = 10.0

Handler = Callable[[str, bytes], Awaitable[None]]


class LinkDown(ConnectionError):
    """No broker connection now: nothing was published."""


class Link:
    """One MQTT 5 connection; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        clock: Clock,
        *,
        subscriptions: Sequence[str],
        on_message: Handler,
        persistent: bool,
        state_topics: Collection[str] = (),
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self.broker = Broker.parse(cfg.mqtt.url)
        self.site = site_of(cfg)
        self._subs = list(subscriptions)
        #: Subscribed at QoS 0: retained state (the group's list, one topic per number)
        #: that the broker sends whole at every subscribe. At QoS 1 Mosquitto queues a
        #: subscriber at most max_queued_messages (1,000 by default) beyond those in
        #: flight and drops the rest: a list of 1,500 numbers arrived as 1,020 (seen with
        #: 2.0.11). At QoS 0 there is no such queue; what is missed while away comes
        #: again, as the latest word per number, at the next connect's subscribe.
        self._state_topics = frozenset(state_topics)
        self.sync_topic = f"{cfg.mqtt.topic_prefix}/{self.site}/sync"
        self._marker = b""
        self._on_message = on_message
        self._persistent = persistent
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self._state_down = ""
        #: Messages whose handler raised (logged; the link goes on).
        self.bugs = 0

    def _client_for(self) -> aiomqtt.Client:
        m = self._cfg.mqtt
        tls = ssl.create_default_context(cafile=m.ca_file or None) if self.broker.tls else None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY if self._persistent else 0
        client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            username=m.username or None,
            password=m.password or None,
            identifier=f"{m.client_id or f'textback-{self.site}'}-jobs",
            keepalive=max(1, round(m.keepalive)),
            tls_context=tls,
            timeout=BROKER_TIMEOUT,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=not self._persistent,
            properties=props,
            logger=logging.getLogger("daemon.jobs.paho"),
            socket_options=SOCKET_OPTIONS,
        )
        # aiomqtt warns above 10 publishes awaiting their PUBACK; a site offering its
        # in-flight jobs again, or answering a burst of claims, has that many as a rule
        client.pending_calls_threshold = max(PENDING_WARN, 2 * self._cfg.sending.in_flight)
        return client

    async def run(self) -> None:
        """Connect, subscribe, hand on messages, reconnect: until cancelled."""
        delay = BACKOFF_FIRST
        while True:
            try:
                client = self._client_for()
                late: asyncio.Task[None] | None = None
                async with client:
                    for topic in [*self._subs, self.sync_topic]:
                        await client.subscribe(topic, qos=0 if topic in self._state_topics else 1)
                    self._client = client
                    self._state_down = ""
                    delay = BACKOFF_FIRST
                    self._marker = uuid.uuid4().hex.encode()
                    await client.publish(self.sync_topic, self._marker, qos=1)
                    late = asyncio.create_task(self._late(), name="jobs-sync-late")
                    async for message in client.messages:
                        raw = message.payload if isinstance(message.payload, bytes) else b""
                        topic = message.topic.value
                        if topic == self.sync_topic:
                            if raw == self._marker:
                                self._up()
                            continue
                        try:
                            await self._on_message(topic, raw)
                        except Exception as exc:  # one bad message never stops the link
                            self.bugs += 1
                            log.exception(kv(event="bug", during="jobs_message", error=exc))
            except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
                self._down(exc, delay)
            finally:
                if late is not None:
                    late.cancel()
                    await asyncio.gather(late, return_exceptions=True)
                self._client = None
                self.connected.clear()
            await self._clock.sleep(delay * (0.75 + random.random() / 2))
            delay = min(delay * 2, BACKOFF_MAX)

    def _up(self, *, late: bool = False) -> None:
        if self.connected.is_set():
            return
        if late:
            log.warning(
                kv(
                    event="jobs_sync_late",
                    topic=self.sync_topic,
                    waited=f"{SYNC_TIMEOUT:g}s",
                    note="the group's do-not-text list may still be arriving",
                    fix=f"let {self.site} read and write {self.sync_topic} in the broker's ACL",
                )
            )
        self.connected.set()
        log.info(kv(event="jobs_link_up", broker=self.broker, site=self.site))

    async def _late(self) -> None:
        await self._clock.sleep(SYNC_TIMEOUT)
        self._up(late=True)

    def _down(self, exc: BaseException, retry_in: float) -> None:
        error = str(exc) or type(exc).__name__
        level = logging.DEBUG if error == self._state_down else logging.WARNING
        self._state_down = error
        log.log(
            level,
            kv(event="jobs_link_down", broker=self.broker, error=error, retry_in=f"{retry_in:g}s"),
        )

    async def back(self) -> None:
        """After a LinkDown: wait until the connection is back. A publish can fail a moment
        before the link knows it is lost: then wait LINK_RETRY, not nothing (a loop of
        publish, LinkDown, publish would spin meanwhile)."""
        if self.connected.is_set():
            await self._clock.sleep(LINK_RETRY)
        else:
            await self.connected.wait()

    async def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, expiry: float | None = None
    ) -> None:
        """QoS 1 (waits for the broker's acknowledgement); LinkDown without a connection.
        `expiry`: MQTT 5 message expiry, in seconds (at least 1)."""
        client = self._client
        if client is None:
            raise LinkDown("no broker connection")
        props = None
        if expiry is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = max(1, int(expiry))
        try:
            await client.publish(topic, payload, qos=1, retain=retain, properties=props)
        except aiomqtt.MqttError as exc:
            raise LinkDown(str(exc)) from exc
