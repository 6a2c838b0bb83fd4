"""A sender of the group's modem bank: `[jobs] serve = true`.

`JobServer.on_job` takes each job from `$share/<group>/<p>/jobs/+` (the broker gives
each to one sender of the group) and judges it (daemon.jobs.wire.parse_job: not JSON,
missing fields, not a valid number, a text over MAX_TEXT, a job_id not of the topic's
site -> `refused` with why). It then looks the job_id up: seen before -> the recorded
result again (or nothing yet while its text is still on its way: the result follows);
past not_after -> `expired`; an opted-out number or a cap reached -> `refused`.

Any other job waits here, in memory, until this sender can send it soon: it holds at
most one job per modem plus TAKE_AHEAD (claimed, or recorded and not yet answered). The
rest of a burst stays unclaimed, so when this sender dies the site offers it again and
the other senders take it (Mosquitto hands a dead sender's share to nobody). A job's turn
come, the sender claims it (a `taken` result) and waits for the site's grant on
`<p>/<site>/grants`; no grant within CLAIM_RETRY: it claims again (a lost grant, a
reconnect). The claim is on disk before it is published: a run that stopped before its
grant came leaves it there, and the next run answers it `released` (never taken, not
sent), which the site offers again. Granted, the job is recorded (job_id unique) with a
text of kind `job` in this sender's own outbox, in one transaction, which sends it
through the modems as any text (routing by line, retries, and `sending` durable before
AT+CMGS, so a crash makes it `uncertain`, never resent). Denied (another sender owns it,
or the site no longer awaits it): dropped. The text's `created_at` is set so that the
outbox's max_age ends it at the job's not_after, not later.

When the text reaches a final state (TextChanged), this sink records the answer with the
job and publishes it to `<p>/<site>/results`: sent, failed, uncertain, expired, or
refused for a text cancelled (opted out meanwhile). Results wait for the broker while it
is away (the queue is this sink's).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from enum import Enum

from daemon.clock import Clock, first_of
from daemon.config import Config
from daemon.decide.policy import cap_pause
from daemon.jobs.link import Link, LinkDown
from daemon.jobs.wire import (
    BadJob,
    Job,
    JobResult,
    JobState,
    parse_grant,
    parse_job,
    results_topic,
)
from daemon.logsetup import kv
from daemon.model import MessageKind, MessageState
from daemon.mqtt.payloads import site_of
from daemon.outbox.outbox import Outbox
from daemon.sinks.bus import QueueSink
from daemon.sinks.events import Event, TextChanged
from daemon.store.jobs import JobRow
from daemon.store.store import Store, StoreTx

log = logging.getLogger("daemon.jobs")

#: Jobs held beyond one per modem (claimed or in the outbox, unanswered): the next
#: claim is made while a text is still on its way, so a modem never waits on a grant.
TAKE_AHEAD = 1
#: A claim without a grant this long (seconds) is made again (the grant was lost, or the
#: link was down); the site answers a repeated claim the same way.
CLAIM_RETRY = 5.0


class Verdict(Enum):
    """What judging a job found (JobServer._take)."""

    ANSWERED = "answered"  # a result to publish now
    ON_ITS_WAY = "on_its_way"  # recorded here, its text not ended: the result follows
    NEW = "new"  # to be claimed
    RECORDED = "recorded"  # granted and now in this sender's outbox


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
        #: Claims the site refused (another sender had the job, or it was no longer awaited).
        self.denied = 0
        #: How many jobs this sender holds at once (see TAKE_AHEAD).
        self.capacity = len(cfg.modem_entries()) + TAKE_AHEAD
        #: Jobs waiting for their turn to be claimed: job_id -> (site, job), oldest first.
        self._pending: OrderedDict[str, tuple[str, Job]] = OrderedDict()
        #: Jobs claimed, or recorded and not yet answered (at most `capacity`).
        self._holding: set[str] = set()
        #: job_id -> the future a grant resolves (True: go).
        self._claims: dict[str, asyncio.Future[bool]] = {}
        self._changed = asyncio.Event()

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
        row = await self._store.batch(lambda tx: tx.jobs().job_of_message(event.message_id))
        if row is None:
            return
        self._release(row.job_id)
        if row.state:  # answered before (a delivery report after sent, say)
            return
        detail = event.error or event.reason or ""
        await self._answer(row, _ANSWERS[event.state], detail, event.sender)

    async def _answer(self, row: JobRow, state: JobState, detail: str, modem: str) -> None:
        """Publish a job's answer, then record it: a stop between the two leaves it
        unrecorded, and the next run publishes it again (_answer_left); the site takes
        the first and ignores a repeat."""
        now = self._clock.now()
        await self._publish(row.site, JobResult(row.job_id, state, detail, self.me, modem, now))
        await self._store.batch(
            lambda tx: tx.jobs().answer_job(row.job_id, state, detail, modem, now)
        )

    async def _answer_left(self) -> None:
        """Answer the jobs whose text ended while the previous run stopped before it
        answered them (the site awaits the answer)."""
        states = tuple(str(s) for s in _ANSWERS)
        left = await self._store.batch(lambda tx: tx.jobs().ended_unanswered(states))
        for row, text_state, why, modem in left:
            await self._answer(row, _ANSWERS[MessageState(text_state)], why, modem)

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
                await self.link.back()

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
        if job.job_id in self._pending or job.job_id in self._holding:
            return  # a copy (offered again) of a job already here
        verdict, answer = await self._store.batch(
            lambda tx: self._take(tx, site, job, now, record=False)
        )
        if answer is not None:
            await self._publish(site, answer)
        elif verdict is Verdict.NEW:
            self._pending[job.job_id] = (site, job)
            self._changed.set()

    def on_grant(self, topic: str, raw: bytes) -> None:
        """A site's grant on `<p>/<site>/grants`: to the claim awaiting it, if it is ours."""
        try:
            grant = parse_grant(raw)
        except (ValueError, TypeError) as exc:
            log.warning(kv(event="bad_grant", topic=topic, error=exc))
            return
        fut = self._claims.get(grant.job_id)
        if grant.sender == self.me and fut is not None and not fut.done():
            fut.set_result(grant.go)

    async def run_claims(self) -> None:
        """Give back the claims a previous run left ungranted, then claim the waiting
        jobs in order, while fewer than `capacity` are held."""
        await self._answer_left()
        await self._release_left_claims()
        async with asyncio.TaskGroup() as tg:
            while True:
                while self._pending and len(self._holding) < self.capacity:
                    jid, (site, job) = self._pending.popitem(last=False)
                    self._holding.add(jid)
                    tg.create_task(self._claim(site, job), name=f"claim {jid}")
                self._changed.clear()
                await self._changed.wait()

    async def _release_left_claims(self) -> None:
        """A claim recorded by a run that stopped before its grant: the site may have
        granted it, so it waits for this sender's word. The job was never taken here
        (no text): answer `released`, and the site offers it again."""
        assert self.link is not None
        left = await self._store.batch(lambda tx: tx.jobs().claimed())
        for jid, site in left:
            now = self._clock.now()
            why = "claimed by a sender that stopped before taking it; not sent"
            await self._publish(site, JobResult(jid, JobState.RELEASED, why, self.me, "", now))
            await self._forget(jid)
            log.info(kv(event="job_released", job_id=jid, site=site))

    async def _forget(self, jid: str) -> None:
        """Drop a claim that is not (or no longer) ours from the ledger."""
        await self._store.batch(lambda tx: tx.jobs().forget(jid))

    def _release(self, jid: str) -> None:
        if jid in self._holding:
            self._holding.discard(jid)
            self._changed.set()

    async def _claim(self, site: str, job: Job) -> None:
        """Claim one job, and record it if granted (see the module docstring)."""
        assert self.link is not None
        recorded = False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._claims[job.job_id] = fut
        try:
            # durable before the claim leaves: a kill after it still leaves a trace here,
            # and the next run gives the job back (_release_left_claims)
            claim_at = self._clock.now()
            await self._store.batch(lambda tx: tx.jobs().add_job(job.job_id, site, claim_at))
            while not fut.done():
                now = self._clock.now()
                if now > job.not_after:  # judged again below: answered `expired`
                    break
                claim = JobResult(job.job_id, JobState.TAKEN, "", self.me, "", now)
                try:
                    await self.link.publish(results_topic(self.prefix, site), claim.payload())
                except LinkDown:
                    await self.link.back()
                    continue
                await first_of(asyncio.shield(fut), self._clock.sleep(CLAIM_RETRY))
            if fut.done() and not fut.result():
                self.denied += 1
                log.info(kv(event="job_claim_denied", job_id=job.job_id, site=site))
                await self._forget(job.job_id)
                return
            now = self._clock.now()
            verdict, answer = await self._store.batch(
                lambda tx: self._take(tx, site, job, now, record=True)
            )
            recorded = verdict is Verdict.RECORDED or verdict is Verdict.ON_ITS_WAY
            if answer is not None:
                await self._publish(site, answer)
        except Exception as exc:  # one job's trouble never stops the claims of the others
            log.exception(kv(event="bug", during="job_claim", job_id=job.job_id, error=exc))
        finally:
            self._claims.pop(job.job_id, None)
            if not recorded:
                self._release(job.job_id)

    def _take(
        self, tx: StoreTx, site: str, job: Job, now: float, *, record: bool
    ) -> tuple[Verdict, JobResult | None]:
        """Judge the job (and record it when `record`, the site having granted it): what
        was found, and the result to publish now, if any."""
        ledger = tx.jobs()
        row = ledger.job(job.job_id)
        claimed = row is not None and row.message_id is None and not row.state
        if claimed and not record:
            return Verdict.ON_ITS_WAY, None  # being claimed here
        if row is not None and not claimed:
            self.repeated += 1
            if not row.state:
                return Verdict.ON_ITS_WAY, None  # its text is on its way: the result follows
            at = row.answered_at or now
            result = JobResult(row.job_id, JobState(row.state), row.detail, self.me, row.modem, at)
            return Verdict.ANSWERED, result
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
            if claimed:
                ledger.answer_job(job.job_id, str(state), refusal, "", now)
            else:
                ledger.add_job(job.job_id, site, now, state=str(state), detail=refusal)
            self.refused += 1
            return Verdict.ANSWERED, JobResult(job.job_id, state, refusal, self.me, "", now)
        if not record:
            return Verdict.NEW, None
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
        if claimed:
            ledger.attach(job.job_id, mid)
        else:
            ledger.add_job(job.job_id, site, now, message_id=mid)
        self.taken += 1
        return Verdict.RECORDED, None
