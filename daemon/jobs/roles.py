"""Assembly of the jobs roles this config asks for, over one broker connection.

`[sending] via = "broker"`: a `BrokerSender` (the outbox's sender; results in).
`[jobs] serve = true`: a `JobServer` (jobs in from the shared subscription, claims and
results out, grants in).
Either: the group's do-not-text list (`GroupList`). The service adds the sinks to its
bus and runs `run()`; with neither role there is nothing here.
"""

from __future__ import annotations

import asyncio

from daemon.clock import Clock
from daemon.config import Config
from daemon.jobs.link import Link
from daemon.jobs.optouts import GroupList
from daemon.jobs.serve import JobServer
from daemon.jobs.site import BrokerSender
from daemon.jobs.wire import grants_topic, results_topic, shared_jobs
from daemon.mqtt.payloads import site_of
from daemon.sinks.bus import EventBus
from daemon.store.store import Store


def wanted(cfg: Config) -> bool:
    """Does this config take part in a group (a site via the broker, or a sender)?"""
    return cfg.sending.via == "broker" or cfg.jobs.serve


class Roles:
    """The jobs parts of one process; ValueError for a bad or missing [mqtt] url."""

    def __init__(self, cfg: Config, store: Store, clock: Clock) -> None:
        if not cfg.mqtt.url.strip():
            raise ValueError("[sending] via = broker and [jobs] serve need [mqtt] url")
        prefix = cfg.mqtt.topic_prefix
        self.optouts = GroupList(cfg, store, clock)
        subs = [self.optouts.topic]
        self.server: JobServer | None = None
        self.sender: BrokerSender | None = None
        if cfg.jobs.serve:
            self.server = JobServer(cfg, store, clock)
            # the grants before the jobs: a claim's answer is never missed
            subs += [grants_topic(prefix), shared_jobs(prefix, cfg.jobs.group)]
        self._results = results_topic(prefix, site_of(cfg))
        if cfg.sending.via == "broker":
            subs.append(self._results)
        # A site's session outlives its connection (results published meanwhile wait for
        # it). A sender's does not: Mosquitto 2.0 hands a shared subscription's jobs round
        # robin at publish time, to a member that is away too, and drops them when its
        # session ends; a session ending with the connection stops that at once, and the
        # site offers again what nobody claimed (daemon.jobs.site).
        self.link = Link(
            cfg,
            clock,
            subscriptions=subs,
            on_message=self._dispatch,
            persistent=cfg.sending.via == "broker",
            state_topics=[self.optouts.topic],
        )
        if cfg.sending.via == "broker":
            self.sender = BrokerSender(cfg, store, clock, link=self.link)
        self.optouts.link = self.link
        if self.server is not None:
            self.server.link = self.link
        self._jobs_prefix = f"{prefix}/jobs/"
        self._grants_suffix = "/" + grants_topic(prefix).rsplit("/", 1)[-1]
        self._optout_prefix = self.optouts.topic[:-1]

    def add_sinks(self, bus: EventBus) -> None:
        """The group list (and the job server) hear the bus."""
        bus.add(self.optouts)
        if self.server is not None:
            bus.add(self.server)

    async def _dispatch(self, topic: str, raw: bytes) -> None:
        if topic.startswith(self._optout_prefix):
            await self.optouts.on_message(topic, raw)
        elif self.server is not None and topic.startswith(self._jobs_prefix):
            await self.server.on_job(topic, raw)
        elif self.server is not None and topic.endswith(self._grants_suffix):
            self.server.on_grant(topic, raw)
        elif self.sender is not None and topic == self._results:
            await self.sender.on_message(topic, raw)

    async def run(self) -> None:
        """The link and the sinks' delivery tasks."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.link.run(), name="jobs-link")
            tg.create_task(self.optouts.run(), name="group-optouts")
            if self.server is not None:
                tg.create_task(self.server.run(), name="jobs-server")
                tg.create_task(self.server.run_claims(), name="jobs-claims")
