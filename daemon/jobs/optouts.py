"""One do-not-text list for the whole group, over the broker.

Every opt-out and opt-in made here (a STOP to a sender's modem, a START, the CLI:
`OptOutChanged` with any source but "group") is published, retained, to
`<p>/group/<group>/optout/<hash>`: the hash (daemon.jobs.wire.number_hash) names the
number without showing it; the payload carries it: {event_id (UUIDv7), number,
opted_out, source, origin (the site or sender), at}. Retained, one topic per number, so
the broker holds the latest word on every number and a site or sender that joins later
receives the whole list when it subscribes.

Every member applies what it hears into its own store (`optouts`, audited with source
"group", which is not published again): idempotent by event_id, and an event older than
the one last applied for that number is ignored (`group_optouts`, kept across restarts).
"""

from __future__ import annotations

import json
import logging

from daemon.clock import Clock
from daemon.config import Config
from daemon.jobs.link import Link, LinkDown
from daemon.jobs.wire import dumps, number_hash, optout_topic, parse_time
from daemon.logsetup import kv
from daemon.mqtt.payloads import iso, site_of
from daemon.mqtt.uuid7 import uuid7
from daemon.sinks.bus import QueueSink
from daemon.sinks.events import Event, OptOutChanged
from daemon.store.store import Store, StoreTx

log = logging.getLogger("daemon.jobs")

#: The source of a list change heard from the group (never published again).
GROUP = "group"


class GroupList(QueueSink):
    """Publishes this member's list changes; applies the group's. See the docstring."""

    name = "group-optouts"

    def __init__(self, cfg: Config, store: Store, clock: Clock) -> None:
        super().__init__()
        self._cfg = cfg
        self._store = store
        self._clock = clock
        self.me = site_of(cfg)
        self.group = cfg.jobs.group
        self.prefix = cfg.mqtt.topic_prefix
        self.link: Link | None = None  # set by the assembly (daemon.jobs.roles)
        #: Events applied here, and events heard again or older than the one applied.
        self.applied = 0
        self.ignored = 0

    @property
    def topic(self) -> str:
        """The subscription: every number's retained topic."""
        return optout_topic(self.prefix, self.group)

    def handle(self, event: Event) -> None:
        """Only this member's own list changes are queued for the group."""
        if isinstance(event, OptOutChanged) and event.source != GROUP:
            super().handle(event)

    async def deliver(self, event: Event) -> None:
        """Publish one list change, retained, waiting for the broker while it is away."""
        assert isinstance(event, OptOutChanged)
        assert self.link is not None
        hashed = number_hash(self.group, event.number)
        event_id = str(uuid7(event.at))
        payload = dumps(
            {
                "event_id": event_id,
                "number": event.number,
                "opted_out": event.opted_out,
                "source": event.source,
                "origin": self.me,
                "at": iso(event.at),
            }
        )
        now = self._clock.now()
        await self._store.batch(
            lambda tx: tx.jobs().note_group_optout(hashed, event_id, event.opted_out, event.at, now)
        )
        while True:
            try:
                await self.link.publish(
                    optout_topic(self.prefix, self.group, hashed), payload, retain=True
                )
                log.info(kv(event="group_optout_published", opted_out=event.opted_out))
                return
            except LinkDown:
                await self.link.back()

    async def on_message(self, topic: str, raw: bytes) -> None:
        """A list change from the group (or a retained one at subscribe): apply it."""
        try:
            data = json.loads(raw)
            number = str(data["number"])
            event_id = str(data["event_id"])
            opted_out = data["opted_out"]
            at = parse_time(data["at"])
            origin = str(data.get("origin", ""))[:100]
            if not isinstance(opted_out, bool):
                raise TypeError("opted_out is not true/false")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning(kv(event="bad_group_optout", topic=topic, error=exc))
            return
        hashed = number_hash(self.group, number)
        if topic.rsplit("/", 1)[-1] != hashed:
            log.warning(kv(event="bad_group_optout", topic=topic, error="hash does not match"))
            return
        now = self._clock.now()

        def unit(tx: StoreTx) -> bool:
            ledger = tx.jobs()
            last = ledger.group_optout_at(hashed)
            if last is not None and (last[0] == event_id or last[1] >= at):
                return False
            text = f"from {origin}" if origin else ""
            if opted_out:
                tx.optout_add(number, now, source=GROUP, text=text)
            else:
                tx.optout_remove(number, now, source=GROUP, text=text)
            ledger.note_group_optout(hashed, event_id, opted_out, at, now)
            return True

        if await self._store.batch(unit):
            self.applied += 1
            log.info(kv(event="group_optout_applied", opted_out=opted_out, origin=origin))
        else:
            self.ignored += 1
