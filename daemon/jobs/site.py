"""A site whose texts go through the group's modem bank: `[sending] via = "broker"`.

`BrokerSender` is the outbox's `LaneSender`: each text's send publishes it as a job
(QoS 1, MQTT 5 message expiry until not_after) and then awaits its result, a future
resolved when `<p>/<site>/results` brings it. Nothing holds a modem meanwhile: a lane
is only a waiting task, `[sending] in_flight` of them at once. The outbox row is
`sending` (durable) from before the publish until the result, so the existing semantics
hold: a crash while a job is out makes it `uncertain` at the restart (never resent).

Claims: a sender asks for a job (a `taken` result) before it records it; the first
sender to claim a job still awaited here owns it (told `go` on `<p>/<site>/grants`,
again if it asks again), every other one is told no, and results from anyone but the
owner are ignored. A job nobody has claimed after `[sending] republish` is offered again:
Mosquitto gives each job of a shared subscription to one sender when it is published,
and drops what a sender's session held when the sender dies (seen with 2.0.11), so the
site, which still awaits the job, is where it is recovered. An owned job is never offered
again: its owner answers it (if it died, when it is back; else not_after + RESULT_GRACE).

Results, as the outbox writes them: sent -> `sent`; uncertain -> `uncertain`; failed and
refused -> `failed` (permanent: the sender already retried through its own outbox);
released (claimed, never taken, given back) -> a retryable failure: offered again;
expired -> a retryable failure past max_age, which the outbox's next pass writes
`expired` (reason max_age). No result by not_after + RESULT_GRACE -> `uncertain`: some
sender may have sent it. The broker down: `ready` is False, texts stay `queued` and
expire as today.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence

from daemon.clock import Clock, first_of
from daemon.config import Config
from daemon.jobs.link import LINK_RETRY, Link, LinkDown
from daemon.jobs.wire import (
    Grant,
    Job,
    JobResult,
    JobState,
    grants_topic,
    job_id,
    jobs_topic,
    parse_result,
)
from daemon.logsetup import kv
from daemon.mqtt.payloads import site_of
from daemon.sending.sender import Sender, SendRequest, SendResult, SendStatus
from daemon.store.routing import QueuedText
from daemon.store.store import Store

log = logging.getLogger("daemon.jobs")

#: After not_after, how long a result may still take to come back (a sender answers
#: `expired` to a job past not_after, at once).
RESULT_GRACE = 60.0
#: The sender name written with a site's texts while no result named one.
NAME = "broker"


class _Lane:
    """One job in flight (all lanes are alike: a waiting task each)."""

    def __init__(self, owner: BrokerSender) -> None:
        self._owner = owner

    @property
    def name(self) -> str:
        return NAME

    @property
    def ready(self) -> bool:
        return self._owner.ready

    async def send(self, request: SendRequest) -> SendResult:
        return await self._owner.send(request)


class BrokerSender:
    """The site side of the jobs; see the module docstring."""

    def __init__(self, cfg: Config, store: Store, clock: Clock, *, link: Link) -> None:
        self._cfg = cfg
        self._store = store
        self._clock = clock
        self.site = site_of(cfg)
        self.prefix = cfg.mqtt.topic_prefix
        #: The broker connection, run by daemon.jobs.roles (results come in through it).
        self.link = link
        self._lane = _Lane(self)
        self._busy = 0
        self._waiting: dict[str, asyncio.Future[JobResult]] = {}
        #: job_id -> the sender that claimed it first (for jobs in _waiting only).
        self._owner: dict[str, str] = {}
        #: Grants being published (kept so that they are not collected midway).
        self._granting: set[asyncio.Task[None]] = set()
        #: Results that came for no job in flight (late, or another process's).
        self.unmatched = 0
        #: Claims refused (another sender owns the job, or it is no longer awaited).
        self.denied = 0
        #: Jobs offered again because no sender had claimed them.
        self.reoffered = 0

    # -- Sender / LaneSender -------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The name of this sender."""
        return NAME

    @property
    def ready(self) -> bool:
        """True while the broker is connected."""
        return self.link.connected.is_set()

    async def prepare(self, now: float) -> None:
        """Nothing to refresh: any lane takes any text."""

    def assign(self, texts: Sequence[QueuedText]) -> Sequence[tuple[QueuedText, Sender]]:
        """As many due texts as there are free lanes."""
        free = max(0, self._cfg.sending.in_flight - self._busy)
        taken = list(texts[:free])
        self._busy += len(taken)
        return [(t, self._lane) for t in taken]

    def finish(self, lane: Sender, text: QueuedText, result: SendResult) -> bool:
        """No failover: the group's senders already share the work."""
        return False

    def release(self, lane: Sender) -> None:
        """A lane is free again."""
        self._busy = max(0, self._busy - 1)

    def status_text(self) -> str:
        """For the STATUS line."""
        up = "broker connected" if self.ready else "broker not connected"
        return f"{up}, {self._busy} jobs awaiting a result"

    async def run(self) -> None:
        """Nothing of its own to run (daemon.jobs.roles runs the link): wait to be
        cancelled, as a modem sender's supervisor would run."""
        await asyncio.get_running_loop().create_future()

    async def close(self) -> None:
        """Stop publishing grants (a claim not answered is made again); the link ends
        with its task."""
        for task in list(self._granting):
            task.cancel()
        await asyncio.gather(*self._granting, return_exceptions=True)

    # -- one job ---------------------------------------------------------------------------------

    async def send(self, request: SendRequest) -> SendResult:
        """Publish the text as a job and await its result (see the module docstring)."""
        assert request.message_id is not None
        m = await self._store.get_message(request.message_id)
        if m is None:
            return SendResult(SendStatus.FAILED, error="the text is gone", sender=NAME)
        not_after = m.created_at + self._cfg.textback.max_age
        job = Job(
            job_id(self.site, m.id, m.created_at),
            request.destination,
            request.text,
            request.line,
            not_after,
        )
        fut: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        self._waiting[job.job_id] = fut
        try:
            result = await self._await(job, fut)
        finally:
            self._waiting.pop(job.job_id, None)
            self._owner.pop(job.job_id, None)
        if result is None:
            return SendResult(
                SendStatus.UNCERTAIN,
                error=f"no result for job {job.job_id} by not_after + {RESULT_GRACE:g}s",
                sender=NAME,
            )
        return _as_send_result(result)

    async def _await(self, job: Job, fut: asyncio.Future[JobResult]) -> JobResult | None:
        """Publish (once connected; again after `republish` while no sender has claimed
        it), await the result."""
        deadline = job.not_after + RESULT_GRACE
        republish = self._cfg.sending.republish
        next_publish: float | None = self._clock.now()
        first = True
        while not fut.done():
            now = self._clock.now()
            if now >= deadline:
                return None
            if job.job_id in self._owner:
                next_publish = None  # claimed: its owner answers it, nobody else may
            if next_publish is not None and now >= next_publish and now < job.not_after:
                try:
                    await self.link.publish(
                        jobs_topic(self.prefix, self.site),
                        job.payload(),
                        expiry=job.not_after - now,
                    )
                    log.debug(kv(event="job_published", job_id=job.job_id))
                    if not first:
                        self.reoffered += 1
                        log.info(kv(event="job_offered_again", job_id=job.job_id))
                    first = False
                    next_publish = now + republish if republish > 0 else None
                except LinkDown:
                    # when the broker is back; a link not yet known lost: a moment later
                    gone = not self.link.connected.is_set()
                    next_publish = now if gone else now + LINK_RETRY
            wake = deadline if next_publish is None else min(deadline, next_publish)
            waiters: list[Awaitable[object]] = [asyncio.shield(fut)]
            if next_publish is not None and not self.link.connected.is_set():
                # the broker's return wakes it, not a timer (a due publish would spin)
                waiters.append(self.link.connected.wait())
                wake = deadline
            waiters.append(self._clock.sleep(max(0.0, wake - now)))
            await first_of(*waiters)
        return fut.result()

    async def on_message(self, topic: str, raw: bytes) -> None:
        """A result on `<p>/<site>/results`: to the send awaiting it."""
        try:
            result = parse_result(raw)
        except (ValueError, TypeError) as exc:
            log.warning(kv(event="bad_result", topic=topic, error=exc))
            return
        fut = self._waiting.get(result.job_id)
        if result.state is JobState.TAKEN:
            self._grant(result.job_id, result.sender, awaited=fut is not None and not fut.done())
            return
        if fut is None or fut.done():
            self.unmatched += 1
            log.info(kv(event="result_unmatched", job_id=result.job_id, state=result.state))
            return
        owner = self._owner.get(result.job_id)
        if owner is not None and result.sender != owner:
            # another sender's answer (a copy it judged, say expired): the owner's counts
            self.unmatched += 1
            log.info(
                kv(
                    event="result_not_owner",
                    job_id=result.job_id,
                    state=result.state,
                    sender=result.sender,
                    owner=owner,
                )
            )
            return
        fut.set_result(result)

    def _grant(self, jid: str, sender: str, *, awaited: bool) -> None:
        """Answer a claim: the first claimant of an awaited job owns it. The answer is
        published by a task of its own: the link's message loop (which calls this) never
        waits for a broker's acknowledgement, which a broker that just went away would
        keep it waiting for until BROKER_TIMEOUT (seen with aiomqtt 2.5)."""
        go = False
        if awaited and sender:
            go = self._owner.setdefault(jid, sender) == sender
        if not go:
            self.denied += 1
        log.debug(kv(event="job_claim", job_id=jid, sender=sender, go=go))
        task = asyncio.create_task(self._publish_grant(Grant(jid, sender, go)))
        self._granting.add(task)
        task.add_done_callback(self._granting.discard)

    async def _publish_grant(self, grant: Grant) -> None:
        # no broker now: the sender asks again, and the answer will be the same
        with contextlib.suppress(LinkDown):
            await self.link.publish(grants_topic(self.prefix, self.site), grant.payload())


def _as_send_result(result: JobResult) -> SendResult:
    who = "/".join(p for p in (result.sender, result.modem) if p) or NAME
    detail = result.detail or str(result.state)
    if result.state is JobState.SENT:
        return SendResult(SendStatus.SENT, sender=who)
    if result.state is JobState.UNCERTAIN:
        return SendResult(SendStatus.UNCERTAIN, error=detail, sender=who)
    if result.state is JobState.RELEASED:
        # retryable: the outbox requeues it and the next attempt offers it again
        error = f"released: {detail}"
        return SendResult(SendStatus.FAILED, error=error, retryable=True, sender=who)
    if result.state is JobState.EXPIRED:
        # retryable: the outbox requeues it, and its next pass finds it past max_age
        return SendResult(SendStatus.FAILED, error=f"expired: {detail}", retryable=True, sender=who)
    return SendResult(SendStatus.FAILED, error=f"{result.state}: {detail}", sender=who)
