"""A sender of the group's modem bank: `[jobs] serve = true`.

`JobServer.on_job` takes each job from `$share/<group>/<p>/jobs/+` (the broker gives
each to one sender of the group) and judges it (daemon.jobs.wire.parse_job: not JSON,
missing fields, not a valid number, a text over MAX_TEXT, a job_id not of the topic's
site -> `refused` with why). In one transaction it then looks the job_id up: seen before
-> the recorded result again (or nothing yet while its text is still on its way: the
result follows); past not_after -> `expired`; an opted-out number or a cap reached ->
`refused`; else the job is recorded (job_id unique) with a text of kind `job` in this
sender's own outbox, which sends it through the modems as any text (routing by line,
retries, and `sending` durable before AT+CMGS, so a crash makes it `uncertain`, never
resent). The text's `created_at` is set so that the outbox's max_age ends it at the
job's not_after, not later.

When the text reaches a final state (TextChanged), this sink records the answer with the
job and publishes it to `<p>/<site>/results`: sent, failed, uncertain, expired, or
refused for a text cancelled (opted out meanwhile). Results wait for the broker while it
is away (the queue is this sink's).
"""

from __future__ import annotations

import logging

from daemon.clock import Clock
from daemon.config import Config
from daemon.decide.policy import cap_pause
from daemon.jobs.link import Link, LinkDown
from daemon.jobs.wire import BadJob, Job, JobResult, JobState, parse_job, results_topic
from daemon.logsetup import kv
from daemon.model import MessageKind, MessageState
from daemon.mqtt.payloads import site_of
from daemon.outbox.outbox import Outbox
from daemon.sinks.bus import QueueSink
from daemon.sinks.events import Event, TextChanged
from daemon.store.jobs import JobRow
from daemon.store.store import Store, StoreTx

log = logging.getLogger("daemon.jobs")

_ANSWERS = {
    MessageState.SENT: JobState.SENT,
    MessageState.FAILED: JobState.FAILED,
    MessageState.UNCERTAIN: JobState.UNCERTAIN,
    MessageState.EXPIRED: JobState.EXPIRED,
    MessageState.CANCELLED: JobState.REFUSED,
}


class JobServer(QueueSink):
    """The sender side of the jobs; see the module docstring."""

    name = "jobs"

    def __init__(self, cfg: Config, store: Store, clock: Clock) -> None:
        super().__init__()
        self._cfg = cfg
        self._store = store
        self._clock = clock
        self.me = site_of(cfg)
        self.prefix = cfg.mqtt.topic_prefix
        self.link: Link | None = None  # set by the assembly (daemon.jobs.roles)
        #: Jobs refused, taken, and answered again from the record.
        self.refused = 0
        self.taken = 0
        self.repeated = 0

    def handle(self, event: Event) -> None:
        """Only the end of a job's text is queued."""
        if (
            isinstance(event, TextChanged)
            and event.kind is MessageKind.JOB
            and event.state in _ANSWERS
        ):
            super().handle(event)

    async def deliver(self, event: Event) -> None:
        """Record the answer of a job whose text ended, and publish it."""
        assert isinstance(event, TextChanged)
        now = self._clock.now()
        state = _ANSWERS[event.state]
        detail = event.error or event.reason or ""

        def unit(tx: StoreTx) -> JobRow | None:
            row = tx.jobs().job_of_message(event.message_id)
            if row is not None and not row.state:
                tx.jobs().answer_job(row.job_id, state, detail, event.sender, now)
            return row

        row = await self._store.batch(unit)
        if row is None:
            return
        if row.state:  # answered before (a delivery report after sent, say)
            return
        await self._publish(
            row.site, JobResult(row.job_id, state, detail, self.me, event.sender, now)
        )

    async def _publish(self, site: str, result: JobResult) -> None:
        """Publish a result, waiting for the broker while it is away."""
        assert self.link is not None
        while True:
            try:
                await self.link.publish(results_topic(self.prefix, site), result.payload())
                log.info(
                    kv(
                        event="job_answered",
                        job_id=result.job_id,
                        state=result.state,
                        modem=result.modem or None,
                        detail=result.detail or None,
                    )
                )
                return
            except LinkDown:
                await self.link.connected.wait()

    async def on_job(self, topic: str, raw: bytes) -> None:
        """One message on the jobs topic (see the module docstring)."""
        site = topic.rsplit("/", 1)[-1]
        now = self._clock.now()
        try:
            job = parse_job(raw, site=site, home_region=self._cfg.textback.home_region.upper())
        except BadJob as exc:
            self.refused += 1
            log.warning(kv(event="job_refused", site=site, job_id=exc.job_id or None, why=exc))
            await self._publish(
                site, JobResult(exc.job_id, JobState.REFUSED, str(exc), self.me, "", now)
            )
            return
        answer = await self._store.batch(lambda tx: self._take(tx, site, job, now))
        if answer is not None:
            await self._publish(site, answer)

    def _take(self, tx: StoreTx, site: str, job: Job, now: float) -> JobResult | None:
        """Record the job (or find it recorded); the result to publish now, if any."""
        ledger = tx.jobs()
        row = ledger.job(job.job_id)
        if row is not None:
            self.repeated += 1
            if not row.state:
                return None  # its text is on its way: the result follows
            at = row.answered_at or now
            return JobResult(row.job_id, JobState(row.state), row.detail, self.me, row.modem, at)
        refusal = ""
        state = JobState.REFUSED
        if now > job.not_after:
            state, refusal = JobState.EXPIRED, "past not_after when it arrived; not sent"
        elif tx.is_opted_out(job.destination):
            refusal = "opted_out: the number is on the do-not-text list"
        else:
            pause = cap_pause(tx.policy_facts(None, now, self._cfg), self._cfg, now)
            if pause is not None:
                refusal = f"{pause.guard}: {pause.detail}"
        if refusal:
            ledger.add_job(job.job_id, site, now, state=str(state), detail=refusal)
            self.refused += 1
            return JobResult(job.job_id, state, refusal, self.me, "", now)
        created = min(now, job.not_after - self._cfg.textback.max_age)
        mid = Outbox.enqueue_answer_in(
            tx,
            destination=job.destination,
            text=job.text,
            kind=MessageKind.JOB,
            parts=0,
            encoding="",
            line=job.line,
            now=created,
        )
        ledger.add_job(job.job_id, site, now, message_id=mid)
        self.taken += 1
        return None
