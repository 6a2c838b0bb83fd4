"""Topics and payloads, as DESIGN.md ("Wave 2 contracts") fixes them: pure functions.

`<p>/<site>/status` online/offline; `<p>/<site>/state` and `<p>/<site>/modem/<name>/state`
retained JSON; `<p>/<site>/event/<type>` JSON with a UUIDv7 `event_id`, a UTC ISO 8601
`ts` and the call's `linkedid` where there is one. A caller's number (and a reply's
words) is in a payload only with `expose_caller = true`, and never in a topic: every
topic level is made of the config's words and fixed names.
"""

from __future__ import annotations

import json
import re
import socket
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from daemon.config import Config
from daemon.model import MISSED_OUTCOMES, MessageState
from daemon.mqtt.uuid7 import uuid7
from daemon.sinks.events import (
    AmiGap,
    CallDecided,
    CallRecorded,
    Event,
    ModemStateChanged,
    OptOutChanged,
    ReplyReceived,
    TextChanged,
    TextWritten,
)
from daemon.store.live import LiveState

#: The event types (the last level of `<p>/<site>/event/<type>`).
EVENT_TYPES = (
    "missed_call",
    "text_queued",
    "text_sent",
    "text_failed",
    "text_cancelled",
    "reply",
    "opt_out",
    "opt_in",
    "ami_gap",
)
#: Calls and texts remembered to put a linkedid on later events of the same call.
LINKS_KEPT = 10_000
#: The name of the one modem of a `[modem]` section (daemon.sending.modem.DEFAULT_NAME).
DEFAULT_MODEM = "modem"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def topic_word(word: str) -> str:
    """One topic level made safe: no '/', '+', '#', spaces or control characters."""
    return _UNSAFE.sub("_", word.strip()) or "_"


def site_of(cfg: Config) -> str:
    """`[mqtt] site`, else this machine's host name (its first label), topic-safe."""
    site = cfg.mqtt.site.strip() or socket.gethostname().split(".")[0]
    return topic_word(site)


def iso(ts: float) -> str:
    """Epoch seconds as UTC ISO 8601 with milliseconds: 2026-11-22T15:04:05.123Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def dumps(payload: dict[str, Any]) -> bytes:
    """Compact JSON, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def rssi_dbm(signal: int | None) -> int | None:
    """AT+CSQ's 0-31 as dBm (0: -113 dBm or less, 31: -51 dBm or more); 99: unknown."""
    if signal is None or not 0 <= signal <= 31:
        return None
    return -113 + 2 * signal


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic tree of one site."""

    prefix: str
    site: str
    discovery_prefix: str

    @classmethod
    def of(cls, cfg: Config) -> Topics:
        """The topics `cfg` names."""
        prefix = "/".join(topic_word(p) for p in cfg.mqtt.topic_prefix.split("/") if p)
        return cls(prefix or "textback", site_of(cfg), topic_word(cfg.mqtt.discovery_prefix))

    @property
    def base(self) -> str:
        """`<p>/<site>`."""
        return f"{self.prefix}/{self.site}"

    @property
    def status(self) -> str:
        """online / offline, retained; also the last will."""
        return f"{self.base}/status"

    @property
    def state(self) -> str:
        """The office's state, retained JSON."""
        return f"{self.base}/state"

    @property
    def cmd_enabled(self) -> str:
        """ON / OFF: resume or pause texting (only with `commands = true`)."""
        return f"{self.base}/cmd/enabled"

    @property
    def ha_status(self) -> str:
        """Home Assistant's own status (birth message `online`)."""
        return f"{self.discovery_prefix}/status"

    def modem_state(self, name: str) -> str:
        """One modem's state, retained JSON."""
        return f"{self.base}/modem/{topic_word(name)}/state"

    def event(self, kind: str) -> str:
        """Where events of one type go (QoS 1, never retained)."""
        return f"{self.base}/event/{kind}"


def state_payload(live: LiveState, *, config_enabled: bool) -> dict[str, Any]:
    """`<p>/<site>/state`: enabled is false while paused or with `[textback] enabled =
    false`; `paused_until` says until when (null: not paused, or until resumed)."""
    pause = live.paused
    return {
        "enabled": config_enabled and pause is None,
        "missed_today": live.missed_today,
        "sent_today": live.sent_today,
        "failed_today": live.failed_today,
        "outbox_depth": live.outbox_depth,
        "last_missed_at": None if live.last_missed_at is None else iso(live.last_missed_at),
        "paused": pause is not None,
        "paused_until": None if pause is None or pause.until is None else iso(pause.until),
    }


def modem_payload(ev: ModemStateChanged | None, *, queued: int, sent_today: int) -> dict[str, Any]:
    """`<p>/<site>/modem/<name>/state` from the modem's last state change (None: not
    heard from yet)."""
    ready = ev is not None and ev.state == "ready"
    registration = None if ev is None else ev.registration
    return {
        "connected": ready,
        "rssi_dbm": rssi_dbm(ev.signal) if ev is not None and ready else None,
        "registered": bool(ready and registration and registration.startswith("registered")),
        "operator": ev.operator if ev is not None and ready else None,
        "queued": queued,
        "sent_today": sent_today,
    }


class EventPayloads:
    """Turns the bus's events into (type, payload) pairs; remembers which call each text
    and call id belong to, so later events carry the linkedid."""

    def __init__(self, *, expose_caller: bool) -> None:
        self.expose_caller = expose_caller
        self._calls: OrderedDict[int, str] = OrderedDict()  # call id -> linkedid
        self._texts: OrderedDict[int, str] = OrderedDict()  # message id -> linkedid

    @staticmethod
    def _keep(links: OrderedDict[int, str], key: int, linkedid: str) -> None:
        links[key] = linkedid
        if len(links) > LINKS_KEPT:
            links.popitem(last=False)

    def of(self, event: Event) -> tuple[str, dict[str, Any]] | None:
        """The event type and its payload (without event_id and ts), or None."""
        match event:
            case CallRecorded(call=call, call_id=call_id):
                self._keep(self._calls, call_id, call.linkedid)
            case CallDecided(call=call) if call.inbound and call.outcome in MISSED_OUTCOMES:
                out: dict[str, Any] = {
                    "ts": event.at,
                    "linkedid": call.linkedid,
                    "outcome": str(call.outcome),
                    "did": call.did,
                    "ring_seconds": round(call.ring_seconds, 3),
                    "voicemail_left": call.voicemail_left,
                    "decision": event.action,
                    "reason": event.reason,
                    "message_id": event.message_id,
                    "merged": event.merged,
                }
                if self.expose_caller:
                    out["caller"] = call.caller
                return "missed_call", out
            case TextWritten():
                linkedid = next((self._calls[c] for c in event.call_ids if c in self._calls), None)
                if linkedid is not None:
                    self._keep(self._texts, event.message_id, linkedid)
                out = {
                    "ts": event.at,
                    "message_id": event.message_id,
                    "kind": str(event.kind),
                    "state": str(event.state),
                    "due_at": iso(event.due_at),
                    "line": event.line,
                }
                return "text_queued", self._with(out, linkedid, event.destination)
            case TextChanged(state=state):
                kind = {
                    MessageState.SENT: "text_sent",
                    MessageState.FAILED: "text_failed",
                    MessageState.EXPIRED: "text_failed",
                    MessageState.CANCELLED: "text_cancelled",
                }.get(state)
                if kind is None or event.was is not None:  # a report settling a text
                    return None
                out = {
                    "ts": event.at,
                    "message_id": event.message_id,
                    "kind": str(event.kind),
                    "state": str(state),
                    "reason": event.reason,
                }
                if state is MessageState.SENT:
                    out.update(
                        parts=len(event.references), attempt=event.attempt, modem=event.sender
                    )
                elif event.error:
                    out["error"] = event.error
                linkedid = self._texts.get(event.message_id)
                return kind, self._with(out, linkedid, event.destination)
            case ReplyReceived():
                linkedid = None if event.call_id is None else self._calls.get(event.call_id)
                out = {
                    "ts": event.at,
                    "reply_id": event.reply_id,
                    "kind": event.kind,
                    "sender_kind": event.sender_kind,
                    "message_id": event.message_id,
                    "incomplete": event.incomplete,
                }
                if self.expose_caller:
                    out["text"] = event.text
                return "reply", self._with(out, linkedid, event.sender)
            case OptOutChanged():
                out = {"ts": event.at, "source": event.source}
                kind = "opt_out" if event.opted_out else "opt_in"
                return kind, self._with(out, None, event.number)
            case AmiGap():
                return "ami_gap", {
                    "ts": event.ended_at if event.ended_at is not None else event.started_at,
                    "gap_id": event.gap_id,
                    "started_at": iso(event.started_at),
                    "ended_at": None if event.ended_at is None else iso(event.ended_at),
                    "detail": event.detail,
                }
        return None

    def _with(self, out: dict[str, Any], linkedid: str | None, number: str) -> dict[str, Any]:
        if linkedid is not None:
            out["linkedid"] = linkedid
        if self.expose_caller:
            out["caller"] = number
        return out


def event_message(kind: str, body: dict[str, Any]) -> bytes:
    """The wire payload of an event: event_type, a fresh UUIDv7 event_id, ts in UTC ISO
    8601, then the event's own fields."""
    ts = float(body.pop("ts"))
    head: dict[str, Any] = {
        "event_type": kind,
        "event_id": str(uuid7(ts)),
        "ts": iso(ts),
    }
    return dumps(head | body)
