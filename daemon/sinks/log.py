"""The log sink: the one place that words each event as a journal line.

Lines are `key=value` (daemon.logsetup.kv), one per event, under the logger names the
journal has always shown (daemon.outbox for texts, daemon.pipeline for calls and pauses,
daemon.service for the modem and what it receives), so an operator's filters keep working.
Levels follow STYLE.md: trouble at WARNING, the first retry at WARNING and repeats at DEBUG.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from daemon.logsetup import kv
from daemon.model import MessageState
from daemon.sinks.events import (
    AmiGap,
    CallbackCancelled,
    CallDecided,
    DeliveryReported,
    Event,
    ModemStateChanged,
    OptOutChanged,
    PauseChanged,
    PolicyError,
    ReplyReceived,
    SendingPaused,
    SendingResumed,
    TextChanged,
    TextMerged,
    TextReworded,
    TextWritten,
)

_texts = logging.getLogger("daemon.outbox")
_calls = logging.getLogger("daemon.pipeline")
_device = logging.getLogger("daemon.service")

#: Said with a sending pause: what it means for the calls that follow.
PAUSE_NOTE = "calls are recorded as cap_reached and not texted until it passes"


class LogSink:
    """Words events as log lines."""

    name = "log"

    def handle(self, event: Event) -> None:
        """Log one event (some events, such as a recorded call, have no line of their own)."""
        match event:
            case TextChanged():
                self._text_changed(event)
            case TextWritten():
                _texts.info(
                    kv(
                        event="message",
                        id=event.message_id,
                        destination=event.destination,
                        state=event.state,
                        due_in=f"{event.due_at - event.at:g}s",
                        calls=",".join(str(c) for c in event.call_ids),
                    )
                )
            case TextMerged():
                _texts.info(
                    kv(
                        event="message",
                        id=event.message_id,
                        destination=event.destination,
                        state=event.state,
                        merged_call=event.call_id,
                        calls=event.calls,
                    )
                )
            case CallDecided():
                call = event.call
                _calls.info(
                    kv(
                        event="call",
                        linkedid=call.linkedid,
                        caller=call.caller,
                        did=call.did,
                        outcome=call.outcome,
                        ring=f"{call.ring_seconds:.1f}s",
                        decision=event.action,
                        reason=event.reason,
                        message=event.message_id,
                        detail=event.detail or None,
                    )
                )
            case TextReworded():
                _calls.info(kv(event="message", id=event.message_id, reworded=event.template_kind))
            case CallbackCancelled():
                _calls.info(
                    kv(
                        event="cancelled",
                        destination=event.destination,
                        reason=event.reason,
                        linkedid=event.linkedid,
                        messages=",".join(str(i) for i in event.message_ids),
                    )
                )
            case SendingPaused(first=True):
                _calls.warning(
                    kv(
                        event="sending_paused",
                        guard=event.key,
                        detail=event.detail,
                        note=PAUSE_NOTE,
                    )
                )
            case SendingPaused():
                _calls.debug(kv(event="sending_paused", guard=event.key, detail=event.detail))
            case SendingResumed():
                _calls.warning(kv(event="sending_resumed", guard=event.key))
            case PolicyError():
                _calls.error(kv(event="policy_error", linkedid=event.linkedid, detail=event.detail))
            case DeliveryReported():
                _device.info(
                    kv(
                        event="delivery_report",
                        reference=event.reference,
                        message=event.message_id,
                        status=event.status,
                    )
                )
            case ReplyReceived():
                _device.info(kv(event="reply", sender=event.sender, chars=len(event.text)))
            case ModemStateChanged():
                self._modem(event)
            case PauseChanged(paused=True):
                until = "resumed" if event.until is None else _utc(event.until)
                _calls.warning(
                    kv(
                        event="paused",
                        until=until,
                        source=event.source,
                        note="calls are recorded as disabled and not texted",
                    )
                )
            case PauseChanged():
                _calls.info(kv(event="resumed", source=event.source))
            case OptOutChanged() | AmiGap():
                # No line: the CLI says what it did to the list, the AMI client words the
                # gap when it reconnects; these events are for the other sinks.
                pass

    @staticmethod
    def _text_changed(ev: TextChanged) -> None:
        base = {"event": "message", "id": ev.message_id, "destination": ev.destination}
        state = ev.state
        # which modem, where several send (a pool names the modem a text goes to)
        modem = {"modem": ev.sender} if ev.sender and state is not MessageState.SENT else {}
        if state is MessageState.SENDING:
            _texts.info(kv(**base, state=state, attempt=ev.attempt, **modem))
        elif state is MessageState.SENT:
            _texts.info(kv(**base, state=state, refs=",".join(str(r) for r in ev.references)))
        elif state is MessageState.QUEUED and ev.reason == "retry":
            # First retry at WARNING, repeats at DEBUG (STYLE.md: logs).
            level = logging.WARNING if ev.attempt == 1 else logging.DEBUG
            retry_in = None if ev.retry_in is None else f"{ev.retry_in:g}s"
            _texts.log(
                level,
                kv(
                    **base,
                    state=state,
                    reason="retry",
                    attempt=ev.attempt,
                    retry_in=retry_in,
                    error=ev.error,
                ),
            )
        elif state is MessageState.QUEUED and ev.reason:
            why = {"error": ev.error} if ev.error else {}
            _texts.warning(kv(**base, state=state, reason=ev.reason, **modem, **why))
        elif state is MessageState.QUEUED:
            _texts.info(kv(**base, state=state))
        elif state is MessageState.CANCELLED:
            _texts.info(kv(**base, state=state, reason=ev.reason))
        elif state is MessageState.EXPIRED:
            age = None if ev.age is None else f"{ev.age:.0f}s"
            _texts.warning(kv(**base, state=state, reason="max_age", age=age, last_error=ev.error))
        elif ev.was is MessageState.UNCERTAIN:
            # a send a crash (or an unclear answer) cut off, settled by the network's report
            level = logging.INFO if state is MessageState.DELIVERED else logging.WARNING
            fields = {
                "state": state,
                "was": ev.was,
                "resolved_by": ev.reason,
                "refs": ",".join(str(r) for r in ev.references) or None,
                "after": None if ev.age is None else f"{ev.age:.0f}s",
            }
            if ev.error is not None:
                fields["error"] = ev.error
            _texts.log(level, kv(**base, **fields))
        elif state is MessageState.DELIVERED:
            # every part reported delivered; each report has its own delivery_report line
            _texts.debug(kv(**base, state=state, reason=ev.reason))
        elif state is MessageState.UNCERTAIN and ev.error is not None:
            _texts.warning(kv(**base, state=state, reason=ev.reason, error=ev.error))
        elif state is MessageState.UNCERTAIN:
            _texts.warning(kv(**base, state=state, reason=ev.reason))
        elif state is MessageState.FAILED:
            _texts.error(
                kv(**base, state=state, reason=ev.reason, attempts=ev.attempt, error=ev.error)
            )
        else:
            _texts.info(kv(**base, state=state, reason=ev.reason))

    @staticmethod
    def _modem(ev: ModemStateChanged) -> None:
        if ev.state == "ready" and ev.error is not None:
            # up, but the probe (maker, operator, signal) failed
            _device.warning(kv(event="modem_probe_failed", error=ev.error))
        elif ev.state == "ready":
            _device.info(
                kv(
                    event="modem_ready",
                    device=ev.device,
                    maker=ev.maker,
                    model=ev.model,
                    operator=ev.operator,
                    signal=ev.signal,
                    registration=ev.registration,
                    mode=ev.mode,
                )
            )
        elif ev.state == "failed":
            _device.error(kv(event="modem_failed", device=ev.device, error=ev.error, retry="never"))
        elif ev.state == "unavailable":
            level = logging.WARNING if ev.first_failure else logging.DEBUG
            _device.log(
                level,
                kv(
                    event="modem_unavailable",
                    device=ev.device,
                    error=ev.error,
                    retry_in=ev.retry_in,
                ),
            )
        else:
            _device.info(kv(event="modem", device=ev.device, state=ev.state, error=ev.error))


def _utc(ts: float) -> str:
    """Epoch seconds as UTC ISO 8601, to the second."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
