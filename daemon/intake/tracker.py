"""The call tracker: AMI events in, one finished call (one outcome word) per Linkedid out.

A call is everything that shares a Linkedid: the caller's channel (its Uniqueid equals the
Linkedid), the extension legs a Dial or a Queue rings, Local channels of ring groups and
follow-me, and outside legs of forwards. The call is finished when its last channel hangs
up, so exactly one `FinishedCall` comes out however many legs rang.

The tracker sits on the hot path, after `AmiStream` has dropped the events it never reads
(`WANTED_EVENTS`, `WANTED_VARS`). Per event it does one dict dispatch on the event name,
one dict lookup for the call, and a few slot writes: no regexes, no logging at INFO.

Time comes from each event's own `Timestamp:` header (manager.conf `timestampevents`);
the injected clock is the fallback.

What each outcome is built from (see `_classify`):
  answered            a DialEnd ANSWER of a real (non-Local) leg, or a queue AgentConnect
  carrier_voicemail   an outside leg (trunk) that answered only after
                      `carrier_voicemail_seconds` of ringing, on an inbound call
  voicemail           the VoiceMail application ran on a channel of the call;
                      voicemail_left from VMSTATUS / VM_MESSAGEFILE / MessageWaiting
  queue_abandon       QueueCallerAbandon
  abandoned           the caller hung up while legs rang (DialEnd CANCEL, or legs still
                      open at the caller's hang-up), or before anything happened;
  short_abandon       ... within `min_ring` seconds of the call's start (a misdial);
                      or, when nothing rang, within `min_ring` seconds of the PBX
                      answering the caller (IVR, announcement: `ivr_seconds`)
  no_answer           the last dial ended NOANSWER, a queue timed out, or the dialplan
                      hung up (Hangup app) with nothing answered
  busy                the last dial ended BUSY / CHANUNAVAIL / CONGESTION
  ivr_abandon         the PBX answered the caller's channel (IVR, announcement), nobody
                      else, and the caller stayed min_ring or more (or the PBX hung up)
  not_inbound         the caller's channel did not come in from outside (by context,
                      trunk endpoint or DID); an office phone dialling a trunk emits
                      OutboundDialled and keeps the number in `dialled`

ring_seconds runs from the first DialBegin (a phone starts ringing) to the answer, the
voicemail, or the end of the last ringing leg / the caller's hang-up; 0 when no phone
rang (IVR, busy). A caller who left a queue counts from joining it (Asterisk's HoldTime).

Inbound callers are withheld when any event of their channel carries CALLERID(pres) or
CALLERID(num-pres) prohib* (manager.conf channelvars), when NewCallerid says Prohibited,
when `set_presentation` is told so (a Getvar answer), or when the number is "anonymous".
A call none of whose caller events, and no Getvar answer, said the presentation either way
finishes with `presentation_known` False ([calls] unknown_presentation decides).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from daemon.clock import Clock
from daemon.config import Config
from daemon.model import FinishedCall, InboundAnswered, OutboundDialled, Outcome, TrackerEvent

# The journal name operators filter on: kept stable when modules move.
log = logging.getLogger("daemon.tracker")

Message = dict[str, str]

#: Event names the tracker reads; the intake may drop every other event unparsed.
WANTED_EVENTS: frozenset[str] = frozenset(
    {
        "Newchannel",
        "Newstate",
        "Newexten",
        "NewCallerid",
        "DialBegin",
        "DialEnd",
        "Hangup",
        "VarSet",
        "QueueCallerJoin",
        "QueueCallerLeave",
        "QueueCallerAbandon",
        "AgentConnect",
        "MessageWaiting",
    }
)

#: VarSet variables the tracker reads (voicemail left or not); other VarSets may be dropped.
WANTED_VARS: frozenset[str] = frozenset({"VMSTATUS", "VM_MESSAGEFILE"})

#: Dialplan applications that mean "the caller reached voicemail".
VOICEMAIL_APPS = frozenset({"VoiceMail", "MinivmRecord"})
#: Dialplan applications that end the call from the PBX side (the caller did not hang up).
_PBX_HANGUP_APPS = frozenset({"Hangup", "Congestion", "Busy"})
_BUSY_STATUSES = frozenset({"BUSY", "CHANUNAVAIL", "CONGESTION"})
#: Caller ID numbers that mean the caller asked for privacy.
_WITHHELD_NUMBERS = frozenset({"anonymous", "restricted", "private", "withheld"})
_NO_VALUE = frozenset({"<unknown>", "<Unknown>"})
#: Timestamps outside these (years 2000 and 2200) are garbage, not a PBX clock off a bit.
#: Absolute on purpose: a replay of traffic recorded long ago must keep its own times.
EARLIEST_STAMP = 946_684_800.0
LATEST_STAMP = 7_258_118_400.0
#: Finished Linkedids remembered so that late events (a duplicate Hangup, a Hangup after
#: expiry) are counted as late instead of unknown, and never start a second call.
RECENT_FINISHED = 4096


def _clean(value: str | None) -> str:
    if value is None or value in _NO_VALUE:
        return ""
    return value


def _endpoint(channel: str) -> str:
    """'PJSIP/trunk-0000001c' -> 'trunk' (the endpoint or peer part of a channel name)."""
    slash = channel.find("/")
    dash = channel.rfind("-")
    if slash < 0 or dash <= slash:
        return channel[slash + 1 :]
    return channel[slash + 1 : dash]


def _looks_like_number(text: str) -> bool:
    digits = text[1:] if text.startswith("+") else text
    return len(digits) >= 3 and digits.isdigit()


def _dialled_number(msg: Message) -> str:
    """The outside number of a DialBegin: DestExten, else the DialString before '@'."""
    exten = msg.get("DestExten", "")
    if _looks_like_number(exten):
        return exten
    dial = msg.get("DialString", "")
    head = dial.partition("@")[0].rpartition("/")[2]
    if _looks_like_number(head):
        return head
    num = msg.get("DestCallerIDNum", "")
    return num if _looks_like_number(num) else head


@dataclass(slots=True)
class TrackerStats:
    """Counters for logs, `textback stats` and tests."""

    events: int = 0
    ignored: int = 0  # a wanted event name carrying nothing the tracker needs
    unknown_channel: int = 0  # an event for a call the tracker never saw start
    missing_ids: int = 0  # an event without Uniqueid or Linkedid
    late: int = 0  # an event for a call already finished (duplicate Hangup ...)
    bad_timestamp: int = 0
    no_timestamp: int = 0  # timed by the clock: manager.conf lacks timestampevents = yes
    started: int = 0
    adopted: int = 0  # calls picked up by a resync
    expired: int = 0  # calls finished because their end never arrived
    vanished: int = 0  # calls that ended during a gap (resync)
    finished: Counter[str] = field(default_factory=Counter)  # by outcome word


class _Call:
    """The state of one call in progress (one Linkedid)."""

    __slots__ = (
        "adopted",
        "answered_by",
        "caller",
        "caller_left_ringing",
        "caller_name",
        "carrier_vm",
        "channel",
        "channels",
        "dialled",
        "dialling_started",
        "did",
        "end_unknown",
        "in_queue",
        "inbound",
        "last_at",
        "last_dial",
        "leg_dial_at",
        "linkedid",
        "origin",
        "origin_hungup_at",
        "origin_pending",
        "outside_legs",
        "pbx_answered",
        "pbx_answered_at",
        "pbx_hangup",
        "pending",
        "pres_known",
        "pres_prohibited",
        "queue_abandoned",
        "queue_join_at",
        "queue_joined",
        "ring_end",
        "ring_start",
        "started_at",
        "stop_at",
        "vm_left",
        "vm_reached",
        "vm_status_seen",
    )

    def __init__(self, linkedid: str, at: float) -> None:
        self.linkedid = linkedid
        self.origin = ""  # Uniqueid of the caller's channel
        self.channel = ""
        self.caller = ""
        self.caller_name = ""
        self.did = ""
        self.inbound = False
        self.started_at = at
        self.last_at = at
        self.channels: set[str] = set()
        self.pending: set[str] = set()  # legs dialled and not yet ended
        self.origin_pending: set[str] = set()  # ... by the caller's own channel
        self.leg_dial_at: dict[str, float] = {}
        self.outside_legs: set[str] = set()
        self.ring_start: float | None = None
        self.ring_end: float | None = None
        self.stop_at: float | None = None  # answer / voicemail: ringing stopped
        self.last_dial = ""
        self.answered_by = ""
        self.carrier_vm = False
        self.vm_reached = False
        self.vm_left = False
        self.vm_status_seen = False
        self.queue_joined = False
        self.queue_join_at: float | None = None
        self.in_queue = False
        self.queue_abandoned = False
        self.pbx_answered = False
        self.pbx_answered_at: float | None = None  # the caller's channel went Up (PBX or person)
        self.pbx_hangup = False
        self.caller_left_ringing = False
        self.end_unknown = False  # the caller's hang-up was never seen (expiry, gap)
        self.origin_hungup_at: float | None = None
        self.pres_prohibited = False
        self.pres_known = False  # an event or a Getvar said the presentation, either way
        self.dialled = ""
        self.dialling_started = False
        self.adopted = False


class CallTracker:
    """One state machine per Linkedid; `feed` returns what finished or happened."""

    def __init__(self, cfg: Config, clock: Clock) -> None:
        self._clock = clock
        self._calls: dict[str, _Call] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        # Uniqueid -> the call the channel started in. Asterisk moves a channel to another
        # Linkedid when it is bridged with an older call (pickup, transfer); its Hangup
        # must still close the call that counted it.
        self._chan_call: dict[str, _Call] = {}
        self.stats = TrackerStats()
        self._last_stamp: float | None = None
        self._last_rx = 0.0
        self._handlers: dict[str, Callable[[Message], list[TrackerEvent] | None]] = {
            "Newchannel": self._on_newchannel,
            "Newstate": self._on_newstate,
            "Newexten": self._on_newexten,
            "NewCallerid": self._on_newcallerid,
            "DialBegin": self._on_dialbegin,
            "DialEnd": self._on_dialend,
            "Hangup": self._on_hangup,
            "VarSet": self._on_varset,
            "QueueCallerJoin": self._on_queue_join,
            "QueueCallerLeave": self._on_queue_leave,
            "QueueCallerAbandon": self._on_queue_abandon,
            "AgentConnect": self._on_agent_connect,
            "MessageWaiting": self._on_message_waiting,
        }
        self.reconfigure(cfg)

    def reconfigure(self, cfg: Config) -> None:
        """Take new settings; calls in progress keep their state."""
        self._cfg = cfg
        self._inbound_contexts = frozenset(cfg.ami.inbound_contexts)
        self._inbound_trunks = frozenset(cfg.ami.inbound_trunks)
        self._inbound_dids = frozenset(cfg.ami.inbound_dids)
        self._min_ring = cfg.calls.min_ring
        self._carrier_after = cfg.calls.carrier_voicemail_seconds
        self._max_age = cfg.calls.max_call_age

    @property
    def active(self) -> int:
        """Calls in progress."""
        return len(self._calls)

    # ------------------------------------------------------------------ the hot path

    def feed(self, msg: Message) -> list[TrackerEvent]:
        """Take one AMI event; return the tracker events it caused (often none)."""
        self.stats.events += 1
        handler = self._handlers.get(msg.get("Event", ""))
        if handler is None:
            self.stats.ignored += 1
            return []
        return handler(msg) or []

    def _ts(self, msg: Message) -> float:
        stamp = msg.get("Timestamp")
        if stamp:
            try:
                at = float(stamp)
            except ValueError:
                at = -1.0  # not a time: counted below
            # inf, nan or a time years away is no time at all: count it, use our own clock
            if not EARLIEST_STAMP < at < LATEST_STAMP:  # also false for nan
                self.stats.bad_timestamp += 1
            else:
                self._last_stamp = at
                self._last_rx = self._clock.now()
                return at
        else:
            self.stats.no_timestamp += 1
        return self._clock.now()

    def pbx_now(self) -> float:
        """The PBX's clock now: the last event's own time plus what passed here since.

        Ring and call ages compare event times with this, never with the local clock, so a
        PBX whose clock differs from this host's (or a replay of old traffic) is judged right.
        """
        if self._last_stamp is None:
            return self._clock.now()
        return self._last_stamp + (self._clock.now() - self._last_rx)

    def _call_of(self, msg: Message) -> _Call | None:
        """The call an event belongs to; counts the event when there is none."""
        lid = msg.get("Linkedid")
        if not lid or not msg.get("Uniqueid"):
            self.stats.missing_ids += 1
            log.debug("event without Uniqueid/Linkedid: %s", msg.get("Event"))
            return None
        call = self._calls.get(lid)
        if call is None:
            if lid in self._recent:
                self.stats.late += 1
            else:
                self.stats.unknown_channel += 1
                log.debug("event for a call never seen: %s linkedid=%s", msg.get("Event"), lid)
        return call

    @staticmethod
    def _origin_event(call: _Call, msg: Message) -> None:
        """An event about the caller's own channel: watch the presentation.

        manager.conf `channelvars = CALLERID(pres),CALLERID(num-pres)` puts it on every
        event. Newchannel is stamped before PAI/Privacy apply, so later events decide;
        once any says prohibited, the caller stays withheld (never text a withheld caller).
        """
        pres = msg.get("ChanVariable:CALLERID(pres)")
        if pres is not None:
            call.pres_known = call.pres_known or bool(pres)
            if pres.startswith("prohib"):
                call.pres_prohibited = True
        num_pres = msg.get("ChanVariable:CALLERID(num-pres)")
        if num_pres is not None:
            call.pres_known = call.pres_known or bool(num_pres)
            if num_pres.startswith("prohib"):
                call.pres_prohibited = True

    def is_inbound_caller(self, uniqueid: str) -> bool:
        """True when `uniqueid` is the caller's own channel of an inbound call in progress."""
        call = self._chan_call.get(uniqueid)
        return call is not None and call.inbound and call.origin == uniqueid

    def set_presentation(self, uniqueid: str, value: str) -> bool:
        """Record a caller's presentation learnt another way (e.g. a Getvar of
        CALLERID(pres) by the intake). Returns False when the channel is not a caller's."""
        call = self._chan_call.get(uniqueid)
        if call is None or call.origin != uniqueid:
            return False
        if value:
            call.pres_known = True
        if value.startswith("prohib"):
            call.pres_prohibited = True
        return True

    def _on_newchannel(self, msg: Message) -> list[TrackerEvent] | None:
        lid = msg.get("Linkedid")
        uid = msg.get("Uniqueid")
        if not lid or not uid:
            self.stats.missing_ids += 1
            return None
        call = self._calls.get(lid)
        if call is None:
            if lid in self._recent:
                self.stats.late += 1
                return None
            call = _Call(lid, self._ts(msg))
            self._calls[lid] = call
            self.stats.started += 1
        call.channels.add(uid)
        self._chan_call[uid] = call
        if uid == lid or not call.origin:
            self._set_origin(call, msg, uid)
        return None

    def _set_origin(self, call: _Call, msg: Message, uid: str) -> None:
        call.origin = uid
        channel = msg.get("Channel", "")
        call.channel = channel
        call.caller = _clean(msg.get("CallerIDNum"))
        call.caller_name = _clean(msg.get("CallerIDName"))
        context = msg.get("Context", "")
        exten = msg.get("Exten", "")
        if (
            context in self._inbound_contexts
            or exten in self._inbound_dids
            or (
                self._inbound_trunks
                and (
                    _endpoint(channel) in self._inbound_trunks
                    or channel.rpartition("-")[0] in self._inbound_trunks
                )
            )
        ):
            call.inbound = True
            # "s": the trunk gave no number; a later inbound context may show the DID
            call.did = "" if exten == "s" else exten
        self._origin_event(call, msg)

    def _on_newstate(self, msg: Message) -> list[TrackerEvent] | None:
        call = self._call_of(msg)
        if call is None:
            return None
        if msg["Uniqueid"] == call.origin:
            self._origin_event(call, msg)
            if msg.get("ChannelStateDesc") == "Up" and not call.pbx_answered:
                call.pbx_answered = True
                call.pbx_answered_at = self._ts(msg)
        return None

    def _on_newexten(self, msg: Message) -> list[TrackerEvent] | None:
        call = self._call_of(msg)
        if call is None:
            return None
        app = msg.get("Application", "")
        if app in VOICEMAIL_APPS:
            if not call.vm_reached:
                call.vm_reached = True
                if call.stop_at is None and not call.answered_by:
                    call.stop_at = self._ts(msg)
            return None
        if msg["Uniqueid"] != call.origin:
            return None
        self._origin_event(call, msg)
        if app in _PBX_HANGUP_APPS:
            call.pbx_hangup = True
            if app != "Hangup" and not call.origin_pending:
                call.last_dial = app.upper()  # Busy() / Congestion(): "every target busy"
        if not call.did and not call.dialling_started:
            exten = msg.get("Exten", "")
            if exten != "s" and msg.get("Context", "") in self._inbound_contexts:
                # the caller's channel entered an inbound context (e.g. a trunk context
                # that does Goto(from-pstn,${EXTEN},1)): this is where the DID is seen
                call.inbound = True
                call.did = exten
        return None

    def _on_newcallerid(self, msg: Message) -> list[TrackerEvent] | None:
        call = self._call_of(msg)
        if call is None or msg["Uniqueid"] != call.origin:
            return None
        self._origin_event(call, msg)
        calling_pres = msg.get("CID-CallingPres", "")
        if calling_pres:
            call.pres_known = True
        if "Prohibited" in calling_pres:
            call.pres_prohibited = True
        if call.inbound:
            # a caller-name lookup may fill the name in later; the number stays as it came
            name = _clean(msg.get("CallerIDName"))
            if name:
                call.caller_name = name
        return None

    def _is_outside(self, msg: Message) -> bool:
        dest = msg.get("DestChannel", "")
        if dest.startswith("Local/"):
            return False
        if msg.get("DestContext", "") in self._inbound_contexts:
            return True
        return bool(self._inbound_trunks) and _endpoint(dest) in self._inbound_trunks

    def _on_dialbegin(self, msg: Message) -> list[TrackerEvent] | None:
        call = self._call_of(msg)
        if call is None:
            return None
        at = self._ts(msg)
        call.last_at = at
        dest = msg.get("DestUniqueid", "") or msg.get("DestChannel", "")
        if msg["Uniqueid"] == call.origin:
            self._origin_event(call, msg)
            call.origin_pending.add(dest)
        call.dialling_started = True
        call.pending.add(dest)
        call.leg_dial_at[dest] = at
        call.ring_end = None
        if call.ring_start is None:
            call.ring_start = at
        if self._is_outside(msg):
            call.outside_legs.add(dest)
            if not call.inbound:
                number = _dialled_number(msg)
                if number and number != call.dialled:
                    call.dialled = number
                    return [OutboundDialled(call.linkedid, number, at)]
        return None

    def _on_dialend(self, msg: Message) -> list[TrackerEvent] | None:
        call = self._call_of(msg)
        if call is None:
            return None
        at = self._ts(msg)
        call.last_at = at
        status = msg.get("DialStatus", "")
        dest = msg.get("DestUniqueid", "") or msg.get("DestChannel", "")
        call.pending.discard(dest)
        if not call.pending and not call.in_queue:
            call.ring_end = at
        if status != "ANSWER":
            # Only the caller's own dials tell how the ringing ended: a Local;2 half
            # (ring groups, follow-me) reports CANCEL when the caller's Dial timed out
            # and hung it up. And a queue cancels its member legs on its own timeout;
            # the caller leaving a queue is QueueCallerAbandon.
            if msg["Uniqueid"] == call.origin:
                self._origin_event(call, msg)
                call.origin_pending.discard(dest)
                if status and not (call.in_queue and status == "CANCEL"):
                    call.last_dial = status
            return None
        if msg["Uniqueid"] == call.origin:
            self._origin_event(call, msg)
            call.origin_pending.discard(dest)
        dest_channel = msg.get("DestChannel", "")
        if dest_channel.startswith("Local/") or call.answered_by or call.carrier_vm:
            # a Local half "answers" when its other half does something; the real
            # leg behind it reports its own DialEnd
            return None
        if dest in call.outside_legs and call.inbound:
            rang = at - call.leg_dial_at.get(dest, at)
            if rang >= self._carrier_after:
                call.carrier_vm = True
                if call.stop_at is None:
                    call.stop_at = at
                return None
        return self._answered(call, dest_channel, at)

    def _answered(self, call: _Call, by: str, at: float) -> list[TrackerEvent] | None:
        call.answered_by = by or "?"
        if call.stop_at is None:
            call.stop_at = at
        if call.inbound:
            return [InboundAnswered(call.linkedid, call.caller, at)]
        return None

    def _on_agent_connect(self, msg: Message) -> list[TrackerEvent] | None:
        call = self._call_of(msg)
        if call is None or call.answered_by:
            return None
        by = msg.get("DestChannel") or msg.get("MemberName") or msg.get("Interface", "")
        return self._answered(call, by, self._ts(msg))

    def _on_queue_join(self, msg: Message) -> list[TrackerEvent] | None:
        call = self._call_of(msg)
        if call is None:
            return None
        # ringing starts when a member's phone rings (DialBegin); the time held in the
        # queue counts when no phone ever rang, and for a queue abandon (see _finish)
        if not call.queue_joined:
            call.queue_join_at = self._ts(msg)
        call.queue_joined = True
        call.in_queue = True
        call.ring_end = None
        return None

    def _on_queue_leave(self, msg: Message) -> list[TrackerEvent] | None:
        call = self._call_of(msg)
        if call is None:
            return None
        call.in_queue = False
        if not call.pending and call.ring_end is None:
            call.ring_end = self._ts(msg)
        return None

    def _on_queue_abandon(self, msg: Message) -> list[TrackerEvent] | None:
        call = self._call_of(msg)
        if call is None:
            return None
        call.queue_abandoned = True
        return self._on_queue_leave(msg) if call.in_queue else None

    def _on_varset(self, msg: Message) -> list[TrackerEvent] | None:
        var = msg.get("Variable")
        if var == "VMSTATUS":
            call = self._call_of(msg)
            if call is not None:
                call.vm_status_seen = True
                if msg.get("Value") == "SUCCESS":
                    call.vm_left = True
        elif var == "VM_MESSAGEFILE":
            call = self._call_of(msg)
            if call is not None and msg.get("Value"):
                call.vm_left = True
        else:
            self.stats.ignored += 1
        return None

    def _on_message_waiting(self, msg: Message) -> list[TrackerEvent] | None:
        lid = msg.get("Linkedid")
        if not lid:
            return None  # a mailbox changed outside any call (someone listened): not ours
        call = self._calls.get(lid)
        if call is not None and call.vm_reached and msg.get("Waiting") == "1":
            call.vm_left = True
        return None

    def _on_hangup(self, msg: Message) -> list[TrackerEvent] | None:
        uid = msg.get("Uniqueid")
        if not uid:
            self.stats.missing_ids += 1
            return None
        call = self._chan_call.pop(uid, None)
        if call is None:
            if msg.get("Linkedid") in self._recent:
                self.stats.late += 1
            else:
                self.stats.unknown_channel += 1
            return None
        at = self._ts(msg)
        call.last_at = at
        if uid == call.origin:
            self._origin_event(call, msg)
            if call.origin_hungup_at is None:
                call.origin_hungup_at = at
                call.caller_left_ringing = bool(call.origin_pending) or call.last_dial == "CANCEL"
        call.channels.discard(uid)
        if call.channels:
            return None
        return [self._finish(call, at)]

    # ------------------------------------------------------------------ finishing

    def _finish(self, call: _Call, at: float) -> FinishedCall:
        del self._calls[call.linkedid]
        chan_call = self._chan_call
        for uid in call.channels:  # only after expiry or a gap: channels still listed
            chan_call.pop(uid, None)
        recent = self._recent
        recent[call.linkedid] = None
        if len(recent) > RECENT_FINISHED:
            recent.popitem(last=False)
        outcome = self._classify(call, at)
        hung = call.origin_hungup_at if call.origin_hungup_at is not None else at
        ring_seconds = 0.0
        if call.queue_join_at is not None and (
            call.ring_start is None or outcome is Outcome.QUEUE_ABANDON
        ):
            # a caller who left a queue waited from joining it (Asterisk's HoldTime),
            # whether or not an agent's phone rang meanwhile
            call.ring_start = call.queue_join_at
        if call.ring_start is not None:
            if call.stop_at is not None:
                end = call.stop_at
            elif call.ring_end is not None:
                end = call.ring_end
            else:
                end = hung
            ring_seconds = max(0.0, end - call.ring_start)
        voicemail_left: bool | None = None
        if outcome is Outcome.VOICEMAIL:
            if call.vm_left:
                voicemail_left = True
            elif call.vm_status_seen:
                voicemail_left = False
        self.stats.finished[outcome.value] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "call finished linkedid=%s inbound=%s outcome=%s ring=%.1fs channels=%s",
                call.linkedid,
                call.inbound,
                outcome.value,
                ring_seconds,
                call.channel,
            )
        return FinishedCall(
            linkedid=call.linkedid,
            caller=call.caller,
            caller_name=call.caller_name,
            did=call.did if call.inbound else "",
            inbound=call.inbound,
            outcome=outcome,
            started_at=call.started_at,
            ended_at=at,
            ring_seconds=ring_seconds,
            voicemail_left=voicemail_left,
            withheld=call.pres_prohibited or call.caller.strip().lower() in _WITHHELD_NUMBERS,
            presentation_known=call.pres_known,
            dialled=call.dialled,
            answered_by=call.answered_by,
            channel=call.channel,
            ivr_seconds=self._ivr_wait(call),
        )

    def _classify(self, call: _Call, at: float) -> Outcome:
        if not call.inbound:
            return Outcome.NOT_INBOUND
        if call.answered_by:
            return Outcome.ANSWERED
        if call.carrier_vm:
            return Outcome.CARRIER_VOICEMAIL
        if call.vm_reached:
            return Outcome.VOICEMAIL
        if call.queue_abandoned:
            return Outcome.QUEUE_ABANDON
        hung = call.origin_hungup_at if call.origin_hungup_at is not None else at
        if call.origin_hungup_at is None and not call.end_unknown:
            call.caller_left_ringing = bool(call.origin_pending) or call.last_dial == "CANCEL"
        if call.caller_left_ringing:
            return self._abandon(call, hung)
        if call.queue_joined:
            return Outcome.NO_ANSWER  # the queue timed out; the dialplan moved on
        if call.last_dial == "NOANSWER":
            return Outcome.NO_ANSWER
        if call.last_dial in _BUSY_STATUSES:
            return Outcome.BUSY
        if call.pbx_answered:
            listened = self._ivr_wait(call)
            if listened is not None and listened < self._min_ring:
                return Outcome.SHORT_ABANDON  # a misdial: hung up as the greeting began
            return Outcome.IVR_ABANDON
        if call.pbx_hangup:
            return Outcome.NO_ANSWER
        return self._abandon(call, hung)

    @staticmethod
    def _ivr_wait(call: _Call) -> float | None:
        """The PBX answered (IVR, announcement), nothing rang, and the caller hung up:
        the seconds from that answer to the hang-up, else None.

        That is the time the caller waited (they heard whom they had called when the PBX
        answered), judged against min_ring as the ringing is for a call that rang. None
        when the PBX hung up (the caller did not leave), when the hang-up was never seen,
        or for a call adopted at a resync (its times are estimates).
        """
        if (
            not call.pbx_answered
            or call.ring_start is not None
            or call.queue_joined
            or call.pbx_hangup
            or call.end_unknown
            or call.adopted
            or call.pbx_answered_at is None
            or call.origin_hungup_at is None
        ):
            return None
        return max(0.0, call.origin_hungup_at - call.pbx_answered_at)

    def _abandon(self, call: _Call, hung: float) -> Outcome:
        # the caller's whole wait counts, not only the ringing: a caller who hung up
        # half a second into ringing after an announcement did not misdial. When the
        # hang-up was never seen the wait is unknown: no misdial can be claimed. Nor for
        # a call adopted at a resync: its start is an estimate (CoreShowChannel's whole
        # seconds, taken on this host's clock while the hang-up has the PBX's time).
        if call.end_unknown or call.adopted:
            return Outcome.ABANDONED
        if hung - call.started_at < self._min_ring:
            return Outcome.SHORT_ABANDON
        return Outcome.ABANDONED

    # ------------------------------------------------------------------ upkeep

    def ringing_longer_than(self, seconds: float, now: float) -> list[tuple[str, str]]:
        """Inbound calls whose phones have rung `seconds` or more with nobody answering:
        (linkedid, caller's channel) pairs, for `enforce_ring_timeout`. Calls waiting in a
        queue are left alone: the queue's own timeout governs them."""
        out: list[tuple[str, str]] = []
        for call in self._calls.values():
            if (
                call.inbound
                and call.pending
                and call.ring_start is not None
                and now - call.ring_start >= seconds
                and not call.in_queue
                and not call.answered_by
                and not call.vm_reached
                and not call.carrier_vm
                and call.origin_hungup_at is None
                and call.channel
            ):
                out.append((call.linkedid, call.channel))
        return out

    def expire(self, now: float) -> list[FinishedCall]:
        """Finish calls older than `max_call_age` whose end never arrived (lost events)."""
        cutoff = now - self._max_age
        old = [call for call in self._calls.values() if call.started_at < cutoff]
        out: list[FinishedCall] = []
        for call in old:
            self._lose_sight(call)
            fin = self._finish(call, call.last_at)
            self.stats.expired += 1
            log.info(
                "call expired: no end seen linkedid=%s age=%.0fs outcome=%s",
                call.linkedid,
                now - call.started_at,
                fin.outcome.value,
            )
            out.append(fin)
        if out:
            log.warning(
                "expired %d call(s) whose hang-up never arrived (older than %.0fs)",
                len(out),
                self._max_age,
            )
        return out

    @staticmethod
    def _lose_sight(call: _Call) -> None:
        """The caller's hang-up will never be seen: judge the state as it was last known."""
        if call.origin_hungup_at is None and not call.end_unknown:
            call.end_unknown = True
            call.caller_left_ringing = bool(call.origin_pending) or call.last_dial == "CANCEL"

    def resync(
        self, channels: Iterable[Message], gap_from: float, gap_to: float
    ) -> list[TrackerEvent]:
        """After a reconnect: reconcile with the CoreShowChannel events of live channels.

        Calls held whose channels are all gone ended during the gap: they are finished
        with what was known at `gap_from` (logged). Live calls never seen are adopted
        from what CoreShowChannel tells (context, caller, application, bridge).
        """
        live: dict[str, list[Message]] = {}
        live_uids: set[str] = set()
        for ch in channels:
            uid = ch.get("Uniqueid")
            lid = ch.get("Linkedid") or uid
            if not uid or not lid:
                self.stats.missing_ids += 1
                continue
            live_uids.add(uid)
            live.setdefault(lid, []).append(ch)
        out: list[TrackerEvent] = []
        for lid, call in list(self._calls.items()):
            gone = call.channels - live_uids
            if call.origin in gone:
                self._lose_sight(call)
            if gone:
                for uid in gone:
                    call.channels.discard(uid)
                    call.pending.discard(uid)
                    call.origin_pending.discard(uid)
                    self._chan_call.pop(uid, None)
            if not call.channels:
                self.stats.vanished += 1
                fin = self._finish(call, max(call.last_at, gap_from))
                log.warning(
                    "call ended during the AMI gap, finished on what was known "
                    "linkedid=%s outcome=%s gap=%.1fs",
                    lid,
                    fin.outcome.value,
                    gap_to - gap_from,
                )
                out.append(fin)
            elif lid in live:
                # still up: legs born during the gap join it, and what happened meanwhile
                # (answered, voicemail) is read from the snapshot
                for ch in live[lid]:
                    uid = ch.get("Uniqueid", "")
                    if uid not in call.channels:
                        call.channels.add(uid)
                        self._chan_call[uid] = call
                out.extend(self._apply_snapshot(call, live[lid], gap_to))
        for lid, chans in live.items():
            if lid in self._calls or lid in self._recent:
                continue
            out.extend(self._adopt(lid, chans, gap_to))
        return out

    def _adopt(self, lid: str, chans: list[Message], now: float) -> list[TrackerEvent]:
        origin = next((c for c in chans if c.get("Uniqueid") == lid), chans[0])
        started = now - _duration(origin.get("Duration", ""))
        call = _Call(lid, started)
        call.adopted = True
        self._calls[lid] = call
        self.stats.adopted += 1
        for ch in chans:
            uid = ch.get("Uniqueid", "")
            call.channels.add(uid)
            self._chan_call[uid] = call
        self._set_origin(
            call,
            {
                "Channel": origin.get("Channel", ""),
                "CallerIDNum": origin.get("CallerIDNum", ""),
                "CallerIDName": origin.get("CallerIDName", ""),
                "Context": origin.get("Context", ""),
                "Exten": origin.get("Exten") or origin.get("Extension", ""),
            },
            origin.get("Uniqueid", lid),
        )
        log.info(
            "adopted a call in progress after a gap linkedid=%s inbound=%s channels=%d",
            lid,
            call.inbound,
            len(chans),
        )
        return self._apply_snapshot(call, chans, now)

    def _apply_snapshot(self, call: _Call, chans: list[Message], now: float) -> list[TrackerEvent]:
        """What CoreShowChannel says about a live call: voicemail, queue, answered."""
        origin = next((c for c in chans if c.get("Uniqueid") == call.origin), None)
        if origin is None:
            return []
        app = origin.get("Application", "")
        if app in VOICEMAIL_APPS and not call.vm_reached:
            call.vm_reached = True
            if call.stop_at is None and not call.answered_by:
                call.stop_at = now
        elif app == "Queue" and not call.queue_joined:
            call.queue_joined = call.in_queue = True
            call.queue_join_at = call.started_at
        if origin.get("ChannelStateDesc") == "Up":
            call.pbx_answered = True
        bridge = origin.get("BridgeId", "")
        if not bridge or call.answered_by:
            return []
        for c in chans:
            # bridged with another real channel of the call: somebody answered
            if (
                c is not origin
                and c.get("BridgeId") == bridge
                and not c.get("Channel", "").startswith("Local/")
            ):
                return self._answered(call, c.get("Channel", ""), now) or []
        return []


def _duration(text: str) -> float:
    """CoreShowChannel's 'HH:MM:SS' -> seconds (0 when unreadable)."""
    total = 0.0
    for part in text.split(":"):
        if not part.isdigit():
            return 0.0
        total = total * 60 + int(part)
    return total
