"""Jobs and results as they travel (pure: no I/O).

Topics (`<p>` = [mqtt] topic_prefix): a site publishes its jobs to `<p>/jobs/<site>`
(QoS 1, MQTT 5 message expiry from not_after); the senders share
`$share/<group>/<p>/jobs/+`; results go to `<p>/<site>/results`; the site's grants go to
`<p>/<site>/grants`; the group's do-not-text list is `<p>/group/<group>/optout/<hash>`
(retained, one topic per hashed number).

A job: {job_id, destination (E.164), text, line, not_after (ISO 8601 UTC)}. job_id is
`<site>:<message id>:<created>`, created being the outbox row's creation time in
milliseconds: stable across attempts and republishing, and not reused by a rebuilt
database whose ids start again. A result: {job_id, state, detail, sender, modem, at}.

A claim is a result of state `taken` (not final): a sender asks the site for a job before
it records it. The site answers every claim with a grant {job_id, sender, go}: go is true
for the first sender that claimed the job while the site still awaits it (and again for
that sender), false for anyone else. Only a granted sender sends, so a job the site offers
again (a sender died holding it at the broker) is never sent by two senders.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from daemon.decide.numbers import CallerKind, classify_caller, is_safe_destination
from daemon.mqtt.payloads import iso

#: Longest text a sender takes (about ten SMS parts); anything longer is refused.
MAX_TEXT = 1600
#: Longest job payload read at all (bytes); a bigger one is refused unread.
MAX_PAYLOAD = 16_384
#: Longest detail kept in a result.
MAX_DETAIL = 300
JOB_FIELDS = ("job_id", "destination", "text", "line", "not_after")


class JobState(StrEnum):
    """What became of a job (the result's `state`)."""

    SENT = "sent"
    FAILED = "failed"
    UNCERTAIN = "uncertain"
    EXPIRED = "expired"
    REFUSED = "refused"
    #: Not final: a sender claims the job (see the module docstring).
    TAKEN = "taken"
    #: Not sent: the sender gives back a job it claimed and never took (it stopped
    #: before the grant came); the site offers it again.
    RELEASED = "released"


def jobs_topic(prefix: str, site: str) -> str:
    """Where a site publishes its jobs."""
    return f"{prefix}/jobs/{site}"


def shared_jobs(prefix: str, group: str) -> str:
    """The senders' shared subscription."""
    return f"$share/{group}/{prefix}/jobs/+"


def results_topic(prefix: str, site: str) -> str:
    """Where a site hears its results."""
    return f"{prefix}/{site}/results"


def grants_topic(prefix: str, site: str = "+") -> str:
    """Where a site answers the claims on its jobs (senders subscribe with `+`)."""
    return f"{prefix}/{site}/grants"


def optout_topic(prefix: str, group: str, number_hash: str = "+") -> str:
    """The group's do-not-text list, one retained topic per hashed number."""
    return f"{prefix}/group/{group}/optout/{number_hash}"


def number_hash(group: str, number: str) -> str:
    """A number as a topic level: SHA-256 of group and number (no number in a topic)."""
    return hashlib.sha256(f"{group}\n{number}".encode()).hexdigest()[:32]


def job_id(site: str, message_id: int, created_at: float) -> str:
    """The stable id of one outbox row of one site."""
    return f"{site}:{message_id}:{round(created_at * 1000)}"


@dataclass(frozen=True, slots=True)
class Job:
    """One text to send for a site."""

    job_id: str
    destination: str
    text: str
    line: str
    not_after: float

    def payload(self) -> bytes:
        """The job as published."""
        return dumps(
            {
                "job_id": self.job_id,
                "destination": self.destination,
                "text": self.text,
                "line": self.line,
                "not_after": iso(self.not_after),
            }
        )


@dataclass(frozen=True, slots=True)
class JobResult:
    """What became of a job."""

    job_id: str
    state: JobState
    detail: str
    sender: str
    modem: str
    at: float

    def payload(self) -> bytes:
        """The result as published."""
        return dumps(
            {
                "job_id": self.job_id,
                "state": str(self.state),
                "detail": self.detail[:MAX_DETAIL],
                "sender": self.sender,
                "modem": self.modem,
                "at": iso(self.at),
            }
        )


@dataclass(frozen=True, slots=True)
class Grant:
    """A site's answer to a claim: may `sender` send job `job_id`?"""

    job_id: str
    sender: str
    go: bool

    def payload(self) -> bytes:
        """The grant as published."""
        return dumps({"job_id": self.job_id, "sender": self.sender, "go": self.go})


def parse_grant(raw: bytes) -> Grant:
    """Read one grant; ValueError when it is not one."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    jid, sender, go = data.get("job_id"), data.get("sender"), data.get("go")
    if not isinstance(jid, str) or not isinstance(sender, str) or not isinstance(go, bool):
        raise ValueError("not {job_id, sender, go}")
    return Grant(jid, sender, go)


class BadJob(ValueError):
    """A job that cannot be taken; `job_id` when one could be read (else "")."""

    def __init__(self, why: str, job_id: str = "") -> None:
        super().__init__(why)
        self.job_id = job_id


def parse_time(value: object) -> float:
    """ISO 8601 with a zone (Z or an offset) to epoch seconds; ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError("not a string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    return moment.timestamp()


def parse_job(raw: bytes, *, site: str, home_region: str) -> Job:
    """Read and judge one job published on `<p>/jobs/<site>`; BadJob says why not."""
    if len(raw) > MAX_PAYLOAD:
        raise BadJob(f"payload of {len(raw)} bytes, more than {MAX_PAYLOAD}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise BadJob("not JSON") from None
    if not isinstance(data, dict):
        raise BadJob("not a JSON object")
    jid = data.get("job_id")
    jid = jid if isinstance(jid, str) and 0 < len(jid) <= 200 else ""
    missing = [f for f in JOB_FIELDS if f not in data]
    if missing:
        raise BadJob(f"missing {', '.join(missing)}", jid)
    if not jid:
        raise BadJob("job_id is not a string of 1-200 characters")
    if not jid.startswith(f"{site}:"):
        raise BadJob(f"job_id {jid[:60]!r} is not one of site {site!r}", jid)
    dest, text, line = data["destination"], data["text"], data["line"]
    if not isinstance(dest, str) or not is_safe_destination(dest):
        raise BadJob("destination is not an E.164 number", jid)
    judged = classify_caller(dest, home_region=home_region)
    if judged.kind is not CallerKind.VALID or judged.e164 != dest:
        raise BadJob("destination is not a valid number", jid)
    if not isinstance(text, str) or not text.strip():
        raise BadJob("text is empty or not a string", jid)
    if len(text) > MAX_TEXT:
        raise BadJob(f"text of {len(text)} characters, more than {MAX_TEXT}", jid)
    if not isinstance(line, str) or len(line) > 32:
        raise BadJob("line is not a string of at most 32 characters", jid)
    try:
        not_after = parse_time(data["not_after"])
    except ValueError:
        raise BadJob("not_after is not an ISO 8601 time with a zone", jid) from None
    return Job(jid, dest, text, line, not_after)


def parse_result(raw: bytes) -> JobResult:
    """Read one result; ValueError when it is not one."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    jid = data.get("job_id")
    if not isinstance(jid, str) or not jid:
        raise ValueError("no job_id")
    state = JobState(str(data.get("state")))
    at = data.get("at")
    return JobResult(
        jid,
        state,
        str(data.get("detail", ""))[:MAX_DETAIL],
        str(data.get("sender", ""))[:100],
        str(data.get("modem", ""))[:100],
        parse_time(at) if isinstance(at, str) else 0.0,
    )


def dumps(data: dict[str, Any]) -> bytes:
    """Compact JSON, UTF-8."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
