"""Unit tests of the call tracker on synthetic AMI events (shaped like the lab traces)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.cli.replay import replay_bytes
from daemon.clock import ManualClock
from daemon.config import Config
from daemon.intake.tracker import RECENT_FINISHED, WANTED_EVENTS, WANTED_VARS, CallTracker
from daemon.model import FinishedCall, InboundAnswered, OutboundDialled, Outcome, TrackerEvent
from tests.conftest import AMI_DIR, policy_verdict

T0 = 1_795_400_000.0


def make_cfg(**calls: Any) -> Config:
    cfg = Config()
    ami: dict[str, Any] = {}
    for key in ("inbound_contexts", "inbound_trunks", "inbound_dids"):
        if key in calls:
            ami[key] = calls.pop(key)
    return cfg.model_copy(
        update={
            "calls": cfg.calls.model_copy(update=calls),
            "ami": cfg.ami.model_copy(update=ami),
        }
    )


class Chan:
    """Builds the events of one channel, like Asterisk would send them."""

    def __init__(
        self,
        name: str,
        uid: str,
        lid: str,
        *,
        num: str = "",
        cname: str = "",
        context: str = "from-trunk",
        exten: str = "5551000",
    ) -> None:
        self.name, self.uid, self.lid = name, uid, lid
        self.num, self.cname, self.context, self.exten = num, cname, context, exten

    def ev(self, event: str, at: float | None, **extra: str) -> dict[str, str]:
        msg = {
            "Event": event,
            "Channel": self.name,
            "CallerIDNum": self.num,
            "CallerIDName": self.cname,
            "Context": self.context,
            "Exten": self.exten,
            "Uniqueid": self.uid,
            "Linkedid": self.lid,
        }
        if at is not None:
            msg["Timestamp"] = f"{at:.6f}"
        msg.update(extra)
        return msg

    def dest(self, other: Chan) -> dict[str, str]:
        return {
            "DestChannel": other.name,
            "DestUniqueid": other.uid,
            "DestLinkedid": other.lid,
            "DestContext": other.context,
            "DestExten": other.exten,
            "DestCallerIDNum": other.num,
        }


def feed_all(tracker: CallTracker, msgs: list[dict[str, str]]) -> list[TrackerEvent]:
    out: list[TrackerEvent] = []
    for m in msgs:
        out.extend(tracker.feed(m))
    return out


def finished(events: list[TrackerEvent]) -> list[FinishedCall]:
    return [e for e in events if isinstance(e, FinishedCall)]


def forward_to_mobile(answer_after: float, lid: str = "1.1") -> list[dict[str, str]]:
    """DID 5551005 forwards out through the trunk (lab dialplan); modelled on trace 13's
    outbound leg: DialBegin to PJSIP/trunk-... in context from-trunk, Ringing, then Up."""
    caller = Chan("PJSIP/trunk-00000001", lid, lid, num="+12025550150", cname="Pat Caller")
    caller.exten = "5551005"
    leg = Chan(
        "PJSIP/trunk-00000002",
        lid + "1",
        lid,
        num="+12065550180",
        context="from-trunk",
        exten="+12065550180",
    )
    t = T0
    return [
        caller.ev("Newchannel", t, ChannelStateDesc="Ring"),
        caller.ev("Newexten", t, Application="Dial", AppData="PJSIP/+12065550180@trunk,30"),
        leg.ev("Newchannel", t + 0.001, ChannelStateDesc="Down", Exten="s"),
        caller.ev("DialBegin", t + 0.002, DialString="+12065550180@trunk", **caller.dest(leg)),
        leg.ev("Newstate", t + 0.004, ChannelStateDesc="Ringing"),
        caller.ev("DialState", t + 0.004, DialStatus="RINGING", **caller.dest(leg)),
        leg.ev("Newstate", t + answer_after, ChannelStateDesc="Up"),
        caller.ev("DialEnd", t + answer_after, DialStatus="ANSWER", **caller.dest(leg)),
        caller.ev("Newstate", t + answer_after, ChannelStateDesc="Up"),
        caller.ev("Hangup", t + answer_after + 20, Cause="16"),
        leg.ev("Hangup", t + answer_after + 20.001, Cause="16"),
    ]


def test_forward_answered_after_the_ring_timeout_is_carrier_voicemail() -> None:
    cfg = make_cfg()  # carrier_voicemail_after defaults to ring_timeout, 20 s
    tracker = CallTracker(cfg, ManualClock(T0))
    events = feed_all(tracker, forward_to_mobile(answer_after=25.0))
    (call,) = finished(events)
    assert call.outcome is Outcome.CARRIER_VOICEMAIL
    assert call.inbound
    assert call.did == "5551005"
    assert abs(call.ring_seconds - 25.0) < 0.01
    assert not any(isinstance(e, InboundAnswered) for e in events)
    assert not any(isinstance(e, OutboundDialled) for e in events)  # a forward, not staff
    assert policy_verdict(call, cfg) == ("send", "missed")


def test_forward_answered_quickly_is_a_person() -> None:
    cfg = make_cfg()
    tracker = CallTracker(cfg, ManualClock(T0))
    events = feed_all(tracker, forward_to_mobile(answer_after=4.0))
    answered = [e for e in events if isinstance(e, InboundAnswered)]
    assert [a.caller for a in answered] == ["+12025550150"]
    (call,) = finished(events)
    assert call.outcome is Outcome.ANSWERED
    assert call.answered_by == "PJSIP/trunk-00000002"


def test_carrier_voicemail_after_is_configurable() -> None:
    tracker = CallTracker(make_cfg(carrier_voicemail_after=3.0), ManualClock(T0))
    (call,) = finished(feed_all(tracker, forward_to_mobile(answer_after=4.0)))
    assert call.outcome is Outcome.CARRIER_VOICEMAIL


def test_a_call_whose_hangup_never_arrives_expires() -> None:
    clock = ManualClock(T0)
    tracker = CallTracker(make_cfg(max_call_age=3600.0), clock)
    caller = Chan("PJSIP/trunk-00000001", "5.5", "5.5", num="+12025550151")
    leg = Chan("PJSIP/101-00000002", "5.6", "5.5", num="101", context="internal")
    feed_all(
        tracker,
        [
            caller.ev("Newchannel", T0),
            leg.ev("Newchannel", T0 + 0.001),
            caller.ev("DialBegin", T0 + 0.002, **caller.dest(leg)),
        ],
    )
    assert tracker.active == 1
    clock.advance(3599)
    assert tracker.expire(clock.now()) == []
    clock.advance(2)
    (call,) = tracker.expire(clock.now())
    assert call.linkedid == "5.5"
    assert call.outcome is Outcome.ABANDONED  # a leg was still ringing when it went silent
    assert tracker.active == 0
    assert tracker.stats.expired == 1
    # the lost hang-up turns up after all: counted as late, no second finished call
    assert tracker.feed(caller.ev("Hangup", clock.now())) == []
    assert tracker.stats.late == 1


def test_unknown_channels_and_missing_ids_are_counted_not_fatal() -> None:
    tracker = CallTracker(make_cfg(), ManualClock(T0))
    ghost = Chan("PJSIP/trunk-000000ff", "9.9", "9.9", num="+12025550152")
    assert tracker.feed(ghost.ev("DialBegin", T0, DestUniqueid="9.10")) == []
    assert tracker.feed(ghost.ev("Hangup", T0)) == []
    assert tracker.stats.unknown_channel == 2
    no_ids = ghost.ev("Newchannel", T0)
    del no_ids["Linkedid"]
    assert tracker.feed(no_ids) == []
    no_uid = ghost.ev("Hangup", T0)
    del no_uid["Uniqueid"]
    assert tracker.feed(no_uid) == []
    assert tracker.feed({"Event": "Newexten"}) == []
    assert tracker.stats.missing_ids == 3
    assert tracker.feed({"Event": "SomethingElse"}) == []
    assert tracker.feed({}) == []
    assert tracker.active == 0
    assert tracker.stats.events == 7


def test_bad_or_missing_timestamp_falls_back_to_the_clock() -> None:
    clock = ManualClock(T0)
    tracker = CallTracker(make_cfg(), clock)
    caller = Chan("PJSIP/trunk-00000001", "3.3", "3.3", num="+12025550153")
    tracker.feed(caller.ev("Newchannel", None))
    clock.advance(4.0)
    msg = caller.ev("Hangup", None)
    msg["Timestamp"] = "not-a-time"
    (call,) = finished(tracker.feed(msg))
    assert call.started_at == T0
    assert call.ended_at == T0 + 4.0
    assert tracker.stats.bad_timestamp == 1
    assert tracker.stats.no_timestamp == 1
    assert call.outcome is Outcome.ABANDONED


def test_duplicate_hangup_gives_one_finished_call() -> None:
    data = (AMI_DIR / "02-abandoned-while-ringing.ami").read_bytes()
    tail = data.rindex(b"Event: Hangup")
    end = data.index(b"\r\n\r\n", tail) + 4
    doubled = data[:end] + data[tail:end] + data[end:]
    calls, tracker, _ = replay_bytes([doubled], make_cfg(ring_timeout=5.0))
    assert len(calls) == 1
    assert tracker.stats.late == 1
    assert tracker.stats.finished["abandoned"] == 1


def _channel_row(ch: Chan, **extra: str) -> dict[str, str]:
    row = {
        "Event": "CoreShowChannel",
        "Channel": ch.name,
        "Uniqueid": ch.uid,
        "Linkedid": ch.lid,
        "Context": ch.context,
        "Exten": ch.exten,
        "CallerIDNum": ch.num,
        "CallerIDName": ch.cname,
        "ChannelStateDesc": "Ring",
        "Duration": "00:00:07",
    }
    row.update(extra)
    return row


def test_resync_finishes_vanished_calls_and_adopts_unknown_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker = CallTracker(make_cfg(), ManualClock(T0))
    gone = Chan("PJSIP/trunk-00000001", "7.1", "7.1", num="+12025550154")
    gone_leg = Chan("PJSIP/101-00000002", "7.2", "7.1", num="101", context="internal")
    kept = Chan("PJSIP/trunk-00000003", "7.3", "7.3", num="+12025550155")
    feed_all(
        tracker,
        [
            gone.ev("Newchannel", T0),
            gone_leg.ev("Newchannel", T0),
            gone.ev("DialBegin", T0 + 0.01, **gone.dest(gone_leg)),
            kept.ev("Newchannel", T0 + 1),
        ],
    )
    new = Chan("PJSIP/trunk-00000009", "7.9", "7.9", num="+12025550156", exten="5551001")
    agent = Chan("PJSIP/102-0000000a", "7.10", "7.9", num="102", context="internal")
    with caplog.at_level(logging.INFO, logger="daemon.tracker"):
        out = tracker.resync(
            [
                _channel_row(kept),
                _channel_row(new, ChannelStateDesc="Up", BridgeId="b1", Application="Dial"),
                _channel_row(agent, ChannelStateDesc="Up", BridgeId="b1"),
            ],
            gap_from=T0 + 5,
            gap_to=T0 + 12,
        )
    (fin,) = finished(out)
    assert fin.linkedid == "7.1"
    assert fin.outcome is Outcome.ABANDONED  # it was ringing when we lost sight of it
    assert fin.ended_at == T0 + 5
    answered = [e for e in out if isinstance(e, InboundAnswered)]
    assert [a.linkedid for a in answered] == ["7.9"]
    assert tracker.active == 2
    assert tracker.stats.vanished == 1
    assert tracker.stats.adopted == 1
    assert "ended during the AMI gap" in caplog.text
    # the adopted call ends normally later, once
    out = feed_all(tracker, [agent.ev("Hangup", T0 + 20), new.ev("Hangup", T0 + 20)])
    (adopted,) = finished(out)
    assert adopted.outcome is Outcome.ANSWERED
    assert adopted.did == "5551001"
    assert adopted.started_at == T0 + 12 - 7


def test_local_channel_halves_do_not_count_as_a_person() -> None:
    """Ring group through Local channels: only the real phone behind Local;2 answers."""
    tracker = CallTracker(make_cfg(), ManualClock(T0))
    caller = Chan("PJSIP/trunk-00000001", "8.1", "8.1", num="+12025550157")
    loc1 = Chan("Local/101@from-queue-00000001;1", "8.2", "8.1", context="from-queue")
    loc2 = Chan("Local/101@from-queue-00000001;2", "8.3", "8.1", context="from-queue")
    phone = Chan("PJSIP/101-00000004", "8.4", "8.1", num="101", context="internal")
    events = feed_all(
        tracker,
        [
            caller.ev("Newchannel", T0),
            loc1.ev("Newchannel", T0 + 0.01),
            loc2.ev("Newchannel", T0 + 0.01),
            caller.ev("DialBegin", T0 + 0.02, **caller.dest(loc1)),
            phone.ev("Newchannel", T0 + 0.03),
            loc2.ev("DialBegin", T0 + 0.03, **loc2.dest(phone)),
            # the Local half reports ANSWER first: not a person by itself
            caller.ev("DialEnd", T0 + 0.5, DialStatus="ANSWER", **caller.dest(loc1)),
            loc2.ev("Newexten", T0 + 0.5, Application="Dial"),
        ],
    )
    assert events == []
    events = feed_all(
        tracker,
        [
            loc2.ev("DialEnd", T0 + 3.0, DialStatus="ANSWER", **loc2.dest(phone)),
            caller.ev("Hangup", T0 + 9),
            loc1.ev("Hangup", T0 + 9),
            loc2.ev("Hangup", T0 + 9),
            phone.ev("Hangup", T0 + 9),
        ],
    )
    assert isinstance(events[0], InboundAnswered)
    (call,) = finished(events)
    assert call.outcome is Outcome.ANSWERED
    assert call.answered_by == "PJSIP/101-00000004"
    assert abs(call.ring_seconds - 2.98) < 0.01


def _dial_and_end(status: str, *, vm: bool = False) -> list[dict[str, str]]:
    caller = Chan("PJSIP/trunk-00000001", "4.1", "4.1", num="+12025550158")
    leg = Chan("PJSIP/103-00000002", "4.2", "4.1", num="103", context="internal")
    msgs = [
        caller.ev("Newchannel", T0),
        leg.ev("Newchannel", T0 + 0.001),
        caller.ev("DialBegin", T0 + 0.002, **caller.dest(leg)),
        caller.ev("DialEnd", T0 + 5.0, DialStatus=status, **caller.dest(leg)),
        leg.ev("Hangup", T0 + 5.0),
    ]
    if vm:
        msgs.append(caller.ev("Newexten", T0 + 5.0, Application="VoiceMail"))
        msgs.append(caller.ev("Newstate", T0 + 5.0, ChannelStateDesc="Up"))
    else:
        msgs.append(caller.ev("Newexten", T0 + 5.0, Application="Hangup"))
    msgs.append(caller.ev("Hangup", T0 + 9.0))
    return msgs


@pytest.mark.parametrize(
    ("status", "vm", "outcome"),
    [
        ("BUSY", False, Outcome.BUSY),
        ("CHANUNAVAIL", False, Outcome.BUSY),
        ("NOANSWER", False, Outcome.NO_ANSWER),
        ("NOANSWER", True, Outcome.VOICEMAIL),
        ("CANCEL", False, Outcome.ABANDONED),
    ],
)
def test_dial_results(status: str, vm: bool, outcome: Outcome) -> None:
    tracker = CallTracker(make_cfg(), ManualClock(T0))
    (call,) = finished(feed_all(tracker, _dial_and_end(status, vm=vm)))
    assert call.outcome is outcome
    if vm:
        assert call.voicemail_left is None  # VMSTATUS never seen: unknowable


def test_inbound_by_trunk_name_or_did_and_not_by_default() -> None:
    data = (AMI_DIR / "01-missed-noanswer-voicemail.ami").read_bytes()
    by_trunk = make_cfg(inbound_contexts=[], inbound_trunks=["trunk"])
    (call,) = replay_bytes([data], by_trunk)[0]
    assert call.outcome is Outcome.VOICEMAIL
    assert call.did == "5551000"
    by_did = make_cfg(inbound_contexts=[], inbound_dids=["5551000"])
    (call,) = replay_bytes([data], by_did)[0]
    assert call.outcome is Outcome.VOICEMAIL
    nothing = make_cfg(inbound_contexts=["from-pstn"])
    (call,) = replay_bytes([data], nothing)[0]
    assert call.outcome is Outcome.NOT_INBOUND


def test_answer_and_callback_events_come_before_the_finished_call() -> None:
    data = (AMI_DIR / "21-missed-then-callback.ami").read_bytes()
    tracker = CallTracker(make_cfg(ring_timeout=5.0), ManualClock(T0))
    from daemon.intake.stream import AmiStream

    events: list[TrackerEvent] = []
    AmiStream(
        lambda m: events.extend(tracker.feed(m)), wanted=WANTED_EVENTS, wanted_vars=WANTED_VARS
    ).feed(data)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["FinishedCall", "OutboundDialled", "FinishedCall"]
    dialled = events[1]
    assert isinstance(dialled, OutboundDialled)
    assert dialled.number == "+12025550121"
    data4 = (AMI_DIR / "04-answered.ami").read_bytes()
    events.clear()
    tracker2 = CallTracker(make_cfg(ring_timeout=5.0), ManualClock(T0))
    AmiStream(lambda m: events.extend(tracker2.feed(m))).feed(data4)
    assert [type(e).__name__ for e in events] == ["InboundAnswered", "FinishedCall"]
    answered = events[0]
    assert isinstance(answered, InboundAnswered)
    assert answered.caller == "+12025550104"


def test_reconfigure_takes_effect_for_new_decisions() -> None:
    data = (AMI_DIR / "02-abandoned-while-ringing.ami").read_bytes()
    tracker = CallTracker(make_cfg(), ManualClock(T0))
    tracker.reconfigure(make_cfg(min_ring=3.0))
    (call,) = replay_bytes([data], make_cfg(), tracker=tracker)[0]
    assert call.outcome is Outcome.SHORT_ABANDON  # 2.5 s < the new min_ring


def test_memory_stays_flat_with_100k_lost_hangups() -> None:
    clock = ManualClock(T0)
    tracker = CallTracker(make_cfg(max_call_age=60.0), clock)
    expired = 0
    peak = 0
    for i in range(100_000):
        lid = f"{T0:.0f}.{i}"
        at = T0 + i * 0.01
        tracker.feed(
            {
                "Event": "Newchannel",
                "Timestamp": f"{at:.6f}",
                "Channel": f"PJSIP/trunk-{i:08x}",
                "CallerIDNum": "+12025550159",
                "Context": "from-trunk",
                "Exten": "5551000",
                "Uniqueid": lid,
                "Linkedid": lid,
            }
        )
        if i % 1000 == 999:
            clock.set(at)
            expired += len(tracker.expire(clock.now()))
            peak = max(peak, tracker.active)
    clock.advance(3600)
    expired += len(tracker.expire(clock.now()))
    assert expired == 100_000
    assert tracker.active == 0
    assert peak <= 60 / 0.01 + 1000  # never more than max_call_age worth of calls
    assert len(tracker._recent) <= RECENT_FINISHED
    assert not tracker._chan_call
    assert tracker.stats.finished["short_abandon"] + tracker.stats.finished["abandoned"] == 100_000


def test_a_channel_moved_to_another_linkedid_still_closes_its_own_call() -> None:
    """Pickup / transfer: Asterisk gives the picker's channel the older call's Linkedid."""
    tracker = CallTracker(make_cfg(), ManualClock(T0))
    caller = Chan("PJSIP/trunk-00000001", "6.1", "6.1", num="+12025550160")
    ringing = Chan("PJSIP/101-00000002", "6.2", "6.1", num="101", context="internal")
    picker = Chan("PJSIP/102-00000003", "6.3", "6.3", num="102", context="internal", exten="*8")
    events = feed_all(
        tracker,
        [
            caller.ev("Newchannel", T0),
            ringing.ev("Newchannel", T0 + 0.01),
            caller.ev("DialBegin", T0 + 0.02, **caller.dest(ringing)),
            picker.ev("Newchannel", T0 + 2),
            caller.ev("DialEnd", T0 + 2.5, DialStatus="ANSWER", **caller.dest(picker)),
            ringing.ev("Hangup", T0 + 2.5),
        ],
    )
    assert [type(e).__name__ for e in events] == ["InboundAnswered"]
    picker.lid = "6.1"  # bridged with the older call: its Linkedid follows
    events = feed_all(tracker, [caller.ev("Hangup", T0 + 30), picker.ev("Hangup", T0 + 30)])
    calls = finished(events)
    assert sorted((c.linkedid, c.outcome.value) for c in calls) == [
        ("6.1", "answered"),
        ("6.3", "not_inbound"),
    ]
    assert tracker.active == 0


def test_presentation_learnt_later_marks_the_caller_withheld() -> None:
    tracker = CallTracker(make_cfg(), ManualClock(T0))
    caller = Chan("PJSIP/trunk-00000001", "2.1", "2.1", num="+12025550161")
    leg = Chan("PJSIP/101-00000002", "2.2", "2.1", num="101", context="internal")
    feed_all(tracker, [caller.ev("Newchannel", T0), leg.ev("Newchannel", T0)])
    assert tracker.set_presentation("2.2", "prohib_not_screened") is False  # not the caller
    assert tracker.set_presentation("2.9", "prohib_not_screened") is False  # unknown
    assert tracker.set_presentation("2.1", "prohib_not_screened") is True
    events = feed_all(tracker, [leg.ev("Hangup", T0 + 3), caller.ev("Hangup", T0 + 3)])
    (call,) = finished(events)
    assert call.withheld is True


def test_num_pres_alone_also_withholds() -> None:
    tracker = CallTracker(make_cfg(), ManualClock(T0))
    caller = Chan("PJSIP/trunk-00000001", "2.5", "2.5", num="+12025550162")
    pres = {"ChanVariable:CALLERID(num-pres)": "prohib_passed_screen"}
    events = feed_all(tracker, [caller.ev("Newchannel", T0), caller.ev("Hangup", T0 + 3, **pres)])
    (call,) = finished(events)
    assert call.withheld is True


def test_ringing_longer_than_lists_unanswered_inbound_calls() -> None:
    tracker = CallTracker(make_cfg(), ManualClock(T0))
    caller = Chan("PJSIP/trunk-00000001", "3.1", "3.1", num="+12025550163")
    leg = Chan("PJSIP/101-00000002", "3.2", "3.1", num="101", context="internal")
    office = Chan("PJSIP/100-00000003", "3.3", "3.3", num="100", context="internal")
    office_leg = Chan("PJSIP/101-00000004", "3.4", "3.3", num="101", context="internal")
    feed_all(
        tracker,
        [
            caller.ev("Newchannel", T0),
            leg.ev("Newchannel", T0),
            caller.ev("DialBegin", T0 + 0.01, **caller.dest(leg)),
            office.ev("Newchannel", T0),
            office_leg.ev("Newchannel", T0),
            office.ev("DialBegin", T0 + 0.01, **office.dest(office_leg)),
        ],
    )
    assert tracker.ringing_longer_than(20.0, T0 + 19) == []
    assert tracker.ringing_longer_than(20.0, T0 + 21) == [("3.1", "PJSIP/trunk-00000001")]
    tracker.feed(caller.ev("DialEnd", T0 + 22, DialStatus="ANSWER", **caller.dest(leg)))
    assert tracker.ringing_longer_than(20.0, T0 + 30) == []


def test_resync_learns_an_answer_that_happened_during_the_gap() -> None:
    tracker = CallTracker(make_cfg(), ManualClock(T0))
    caller = Chan("PJSIP/trunk-00000001", "1.1", "1.1", num="+12025550164")
    feed_all(tracker, [caller.ev("Newchannel", T0)])
    agent = Chan("PJSIP/101-00000002", "1.2", "1.1", num="101", context="internal")
    out = tracker.resync(
        [
            _channel_row(caller, ChannelStateDesc="Up", BridgeId="b7"),
            _channel_row(agent, ChannelStateDesc="Up", BridgeId="b7"),
        ],
        gap_from=T0 + 1,
        gap_to=T0 + 4,
    )
    assert [type(e).__name__ for e in out] == ["InboundAnswered"]
    # the leg born during the gap is part of the call: the call ends with its hang-up
    assert finished(feed_all(tracker, [caller.ev("Hangup", T0 + 9)])) == []
    (call,) = finished(feed_all(tracker, [agent.ev("Hangup", T0 + 9)]))
    assert call.outcome is Outcome.ANSWERED


def test_did_from_a_later_inbound_context() -> None:
    """A trunk that lands in its own context and jumps to from-pstn with the DID."""
    tracker = CallTracker(
        make_cfg(inbound_contexts=["from-pstn"], inbound_trunks=["carrier"]), ManualClock(T0)
    )
    caller = Chan(
        "PJSIP/carrier-00000001", "4.4", "4.4", num="+12025550165", context="c-in", exten="s"
    )
    events = feed_all(
        tracker,
        [
            caller.ev("Newchannel", T0),
            caller.ev("Newexten", T0, Application="Goto", Context="c-in", Exten="s"),
            caller.ev("Newexten", T0, Application="NoOp", Context="from-pstn", Exten="5551009"),
            caller.ev("Hangup", T0 + 5),
        ],
    )
    (call,) = finished(events)
    assert call.inbound
    assert call.did == "5551009"


def _ivr_then(*tail: dict[str, str]) -> list[dict[str, str]]:
    caller = Chan("PJSIP/trunk-00000001", "6.6", "6.6", num="+12025550166", exten="5551003")
    return [
        caller.ev("Newchannel", T0),
        caller.ev("Newexten", T0, Application="Answer"),
        caller.ev("Newstate", T0, ChannelStateDesc="Up"),
        caller.ev("Newexten", T0 + 0.1, Application="Background"),
        *tail,
    ]


def test_ivr_then_ringing_then_caller_hangs_up_is_abandoned() -> None:
    caller = Chan("PJSIP/trunk-00000001", "6.6", "6.6", num="+12025550166", exten="5551003")
    leg = Chan("PJSIP/101-00000002", "6.7", "6.6", num="101", context="internal")
    msgs = _ivr_then(
        leg.ev("Newchannel", T0 + 8),
        caller.ev("DialBegin", T0 + 8, **caller.dest(leg)),
        caller.ev("DialEnd", T0 + 8.5, DialStatus="CANCEL", **caller.dest(leg)),
        leg.ev("Hangup", T0 + 8.5),
        caller.ev("Hangup", T0 + 8.5),
    )
    (call,) = finished(feed_all(CallTracker(make_cfg(), ManualClock(T0)), msgs))
    # half a second of ringing, but 8.5 s of waiting: not a misdial
    assert call.outcome is Outcome.ABANDONED
    assert abs(call.ring_seconds - 0.5) < 0.01


@pytest.mark.parametrize(
    ("hang_after", "outcome"),
    [(0.6, Outcome.SHORT_ABANDON), (0.999, Outcome.SHORT_ABANDON), (1.0, Outcome.IVR_ABANDON)],
)
def test_caller_leaving_an_ivr_within_min_ring_of_its_answer_is_short_abandon(
    hang_after: float, outcome: Outcome
) -> None:
    """Nothing rang: the wait judged against min_ring runs from the PBX's answer."""
    caller = Chan("PJSIP/trunk-00000001", "6.6", "6.6", num="+12025550166", exten="5551003")
    # the PBX answers 2 s after the call came in (time before the answer is not judged)
    msgs = [
        caller.ev("Newchannel", T0 - 2),
        caller.ev("Newexten", T0, Application="Answer"),
        caller.ev("Newstate", T0, ChannelStateDesc="Up"),
        caller.ev("Newexten", T0 + 0.01, Application="Playback"),
        caller.ev("Hangup", T0 + hang_after),
    ]
    (call,) = finished(feed_all(CallTracker(make_cfg(), ManualClock(T0)), msgs))
    assert call.outcome is outcome
    assert call.ring_seconds == 0.0
    assert call.ivr_seconds is not None
    assert abs(call.ivr_seconds - hang_after) < 1e-6
    decision, reason = policy_verdict(call, make_cfg())
    assert decision == ("suppress" if outcome is Outcome.SHORT_ABANDON else "send")
    assert reason == ("short_abandon" if outcome is Outcome.SHORT_ABANDON else "missed")


def test_pbx_hanging_up_an_ivr_at_once_is_not_the_caller_misdialling() -> None:
    caller = Chan("PJSIP/trunk-00000001", "6.6", "6.6", num="+12025550166", exten="5551003")
    msgs = [
        caller.ev("Newchannel", T0),
        caller.ev("Newstate", T0, ChannelStateDesc="Up"),
        caller.ev("Newexten", T0 + 0.1, Application="Hangup"),
        caller.ev("Hangup", T0 + 0.2),
    ]
    (call,) = finished(feed_all(CallTracker(make_cfg(), ManualClock(T0)), msgs))
    assert call.outcome is Outcome.IVR_ABANDON
    assert call.ivr_seconds is None


def test_ivr_min_ring_follows_reconfigure() -> None:
    tracker = CallTracker(make_cfg(), ManualClock(T0))
    tracker.reconfigure(make_cfg(min_ring=0.5))
    (call,) = finished(
        feed_all(
            tracker,
            _ivr_then(
                Chan("PJSIP/trunk-00000001", "6.6", "6.6", num="+12025550166", exten="5551003").ev(
                    "Hangup", T0 + 0.6
                )
            ),
        )
    )
    assert call.outcome is Outcome.IVR_ABANDON  # 0.6 s >= the new min_ring


@pytest.mark.parametrize(
    ("app", "outcome"),
    [("Hangup", Outcome.NO_ANSWER), ("Busy", Outcome.BUSY), ("Congestion", Outcome.BUSY)],
)
def test_dialplan_ends_the_call_with_nothing_answered(app: str, outcome: Outcome) -> None:
    caller = Chan("PJSIP/trunk-00000001", "7.7", "7.7", num="+12025550167")
    msgs = [
        caller.ev("Newchannel", T0),
        caller.ev("Newexten", T0, Application=app),
        caller.ev("Hangup", T0 + 0.2),
    ]
    (call,) = finished(feed_all(CallTracker(make_cfg(), ManualClock(T0)), msgs))
    assert call.outcome is outcome


def test_queue_timeout_is_no_answer_not_abandon() -> None:
    """The queue cancels its members when its own timeout hits; the caller did not leave."""
    caller = Chan("PJSIP/trunk-00000001", "8.8", "8.8", num="+12025550168", exten="5551002")
    leg = Chan("PJSIP/101-00000002", "8.9", "8.8", num="101", context="internal")
    msgs = [
        caller.ev("Newchannel", T0),
        caller.ev("Newstate", T0, ChannelStateDesc="Up"),
        caller.ev("QueueCallerJoin", T0 + 0.01, Queue="sales"),
        leg.ev("Newchannel", T0 + 0.02),
        caller.ev("DialBegin", T0 + 0.02, **caller.dest(leg)),
        caller.ev("DialEnd", T0 + 20, DialStatus="CANCEL", **caller.dest(leg)),
        leg.ev("Hangup", T0 + 20),
        caller.ev("QueueCallerLeave", T0 + 20, Queue="sales"),
        caller.ev("Newexten", T0 + 20, Application="Hangup"),
        caller.ev("Hangup", T0 + 20),
    ]
    (call,) = finished(feed_all(CallTracker(make_cfg(), ManualClock(T0)), msgs))
    assert call.outcome is Outcome.NO_ANSWER
    assert abs(call.ring_seconds - 19.98) < 0.01


def _trace_messages(name: str) -> list[dict[str, str]]:
    from daemon.intake.frames import FrameParser

    parser = FrameParser(wanted_events=WANTED_EVENTS, wanted_vars=WANTED_VARS)
    return [m for m in parser.feed((AMI_DIR / f"{name}.ami").read_bytes()) if "Event" in m]


_BURST = _trace_messages("17-burst")


@settings(max_examples=40, deadline=None)
@given(
    drop=st.sets(st.integers(0, len(_BURST) - 1), max_size=60),
    dup=st.sets(st.integers(0, len(_BURST) - 1), max_size=30),
    swaps=st.lists(st.integers(0, len(_BURST) - 2), max_size=30),
)
def test_lost_duplicated_and_reordered_events_never_double_finish(
    drop: set[int], dup: set[int], swaps: list[int]
) -> None:
    msgs = [m for i, m in enumerate(_BURST) if i not in drop]
    for i in sorted(dup, reverse=True):
        if i < len(msgs):
            msgs.insert(i, msgs[i])
    for i in swaps:
        if i + 1 < len(msgs):
            msgs[i], msgs[i + 1] = msgs[i + 1], msgs[i]
    clock = ManualClock(T0)
    tracker = CallTracker(make_cfg(ring_timeout=5.0), clock)
    calls = finished(feed_all(tracker, msgs))
    clock.set(2_000_000_000.0)
    calls += tracker.expire(clock.now())
    ids = [c.linkedid for c in calls]
    assert len(ids) == len(set(ids)), "a call finished twice"
    started = {m["Linkedid"] for m in msgs if m.get("Event") == "Newchannel"}
    assert set(ids) == started
    assert tracker.active == 0
    assert not tracker._chan_call


@pytest.mark.parametrize(("caller_cancels", "outcome"), [(False, "no_answer"), (True, "abandoned")])
def test_ring_group_through_local_channels(caller_cancels: bool, outcome: str) -> None:
    """FreePBX style: Dial(Local/101@from-internal&...); the caller's Dial times out and
    hangs up the Local halves, whose own dials then report CANCEL: not the caller's doing."""
    caller = Chan("PJSIP/trunk-00000001", "9.1", "9.1", num="+12025550169", exten="5551001")
    loc1 = Chan("Local/101@from-internal-00000001;1", "9.2", "9.1", context="from-internal")
    loc2 = Chan("Local/101@from-internal-00000001;2", "9.3", "9.1", context="from-internal")
    phone = Chan("PJSIP/101-00000004", "9.4", "9.1", num="101", context="internal")
    end = "CANCEL" if caller_cancels else "NOANSWER"
    msgs = [
        caller.ev("Newchannel", T0),
        loc1.ev("Newchannel", T0 + 0.01),
        loc2.ev("Newchannel", T0 + 0.01),
        caller.ev("DialBegin", T0 + 0.02, **caller.dest(loc1)),
        phone.ev("Newchannel", T0 + 0.03),
        loc2.ev("DialBegin", T0 + 0.03, **loc2.dest(phone)),
        caller.ev("DialEnd", T0 + 15, DialStatus=end, **caller.dest(loc1)),
        loc2.ev("DialEnd", T0 + 15.001, DialStatus="CANCEL", **loc2.dest(phone)),
        phone.ev("Hangup", T0 + 15.002),
        loc2.ev("Hangup", T0 + 15.002),
        loc1.ev("Hangup", T0 + 15.002),
    ]
    if not caller_cancels:
        msgs.append(caller.ev("Newexten", T0 + 15.003, Application="Hangup"))
    msgs.append(caller.ev("Hangup", T0 + 15.004))
    (call,) = finished(feed_all(CallTracker(make_cfg(), ManualClock(T0)), msgs))
    assert call.outcome.value == outcome
    assert abs(call.ring_seconds - 14.98) < 0.01


def test_pbx_now_follows_the_event_clock_not_the_local_one() -> None:
    # the PBX's clock is an hour behind this host's: ages must still be right
    clock = ManualClock(T0 + 3600)
    tracker = CallTracker(make_cfg(), clock)
    assert tracker.pbx_now() == T0 + 3600  # nothing stamped yet: the local clock
    caller = Chan("PJSIP/trunk-00000001", "5.1", "5.1", num="+12025550166")
    leg = Chan("PJSIP/101-00000002", "5.2", "5.1", num="101", context="internal")
    feed_all(
        tracker,
        [
            caller.ev("Newchannel", T0),
            leg.ev("Newchannel", T0),
            caller.ev("DialBegin", T0 + 0.5, **caller.dest(leg)),
        ],
    )
    assert tracker.pbx_now() == pytest.approx(T0 + 0.5)
    clock.advance(10)
    assert tracker.pbx_now() == pytest.approx(T0 + 10.5)
    assert tracker.ringing_longer_than(20.0, tracker.pbx_now()) == []
    clock.advance(11)
    assert tracker.ringing_longer_than(20.0, tracker.pbx_now()) == [("5.1", "PJSIP/trunk-00000001")]
    # and nothing expires merely because this host's clock is ahead
    assert tracker.expire(tracker.pbx_now()) == []


@pytest.mark.parametrize("stamp", ["inf", "-inf", "nan", "1e20", "0", "12:00"])
def test_absurd_timestamps_are_counted_and_replaced_by_the_clock(stamp: str) -> None:
    clock = ManualClock(T0)
    tracker = CallTracker(make_cfg(), clock)
    caller = Chan("PJSIP/trunk-00000001", "6.1", "6.1", num="+12025550167")
    msg = caller.ev("Newchannel", T0)
    msg["Timestamp"] = stamp
    tracker.feed(msg)
    clock.advance(3)
    (call,) = finished(feed_all(tracker, [caller.ev("Hangup", T0 + 3)]))
    assert call.started_at == T0
    assert tracker.stats.bad_timestamp == 1
