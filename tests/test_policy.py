"""The policy: every reason word, the order of the checks, caps and the pumping guard."""

from __future__ import annotations

import dataclasses
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.clock import ManualClock
from daemon.config import Config, TextbackConfig
from daemon.decide.policy import (
    CHECK_ORDER,
    NEVER_TEXTED_TYPES,
    Decision,
    Pause,
    PolicyFacts,
    PumpingGuard,
    cancel_reason,
    cap_pause,
    decide,
    destination_check,
    is_blocked,
    number_range,
    number_type_reason,
    sending_pause,
)
from daemon.model import (
    MISSED_OUTCOMES,
    FinishedCall,
    InboundAnswered,
    OutboundDialled,
    Outcome,
    Reason,
)

NY = ZoneInfo("America/New_York")
#: Tuesday 2026-03-03 10:30 in New York: business hours.
NOW = datetime(2026, 3, 3, 10, 30, tzinfo=NY).timestamp()
CALLER = "+12025550123"
DID = "2025550100"
NO_FACTS = PolicyFacts()


def mkcall(**kw: Any) -> FinishedCall:
    base: dict[str, Any] = {
        "linkedid": "1772551800.7",
        "caller": CALLER,
        "caller_name": "Jane Doe",
        "did": DID,
        "inbound": True,
        "outcome": Outcome.NO_ANSWER,
        "started_at": NOW - 25,
        "ended_at": NOW,
        "ring_seconds": 20.0,
        "voicemail_left": None,
        "withheld": False,
    }
    base.update(kw)
    return FinishedCall(**base)


def config(lines: list[dict[str, Any]] | None = None, **textback: Any) -> Config:
    return Config(textback={"business_name": "Main Street Dental", **textback}, lines=lines or [])


def reason(call: FinishedCall, facts: PolicyFacts = NO_FACTS, cfg: Config | None = None) -> str:
    d = decide(call, facts, cfg or config(), NOW)
    return str(d.reason)


# -- send -------------------------------------------------------------------------------------


def test_missed_call_from_a_valid_number_is_sent_the_rendered_text() -> None:
    d = decide(mkcall(), NO_FACTS, config(), NOW)
    assert d.action == "send"
    assert d.reason is Reason.MISSED
    assert d.destination == CALLER
    assert d.template_kind == "in_hours"
    assert d.text == TextbackConfig().template.format(business_name="Main Street Dental")
    assert (d.parts, d.encoding) == (1, "gsm7")
    assert "in_hours" in d.detail


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome.VOICEMAIL,
        Outcome.NO_ANSWER,
        Outcome.ABANDONED,
        Outcome.BUSY,
        Outcome.QUEUE_ABANDON,
        Outcome.IVR_ABANDON,
        Outcome.CARRIER_VOICEMAIL,
    ],
)
def test_every_missed_outcome_is_sent(outcome: Outcome) -> None:
    assert decide(mkcall(outcome=outcome), NO_FACTS, config(), NOW).action == "send"


def test_voicemail_left_gets_the_voicemail_text() -> None:
    d = decide(mkcall(outcome=Outcome.VOICEMAIL, voicemail_left=True), NO_FACTS, config(), NOW)
    assert d.template_kind == "voicemail"
    assert d.text is not None
    assert d.text.startswith("Thanks for your message to Main Street Dental")


def test_local_number_without_country_code_is_understood() -> None:
    for raw in ("2025550123", "(202) 555-0123", "1-202-555-0123", "+1 202 555 0123"):
        d = decide(mkcall(caller=raw), NO_FACTS, config(), NOW)
        assert (d.action, d.destination) == ("send", CALLER), raw


def test_long_text_costs_several_parts_and_ucs2_is_known() -> None:
    d = decide(mkcall(), NO_FACTS, config(template="x" * 170), NOW)
    assert (d.parts, d.encoding) == (2, "gsm7")
    d = decide(mkcall(), NO_FACTS, config(template="Grazie 😀 {business_name}"), NOW)
    assert (d.parts, d.encoding) == (1, "ucs2")


# -- each reason --------------------------------------------------------------------------------


def test_not_inbound() -> None:
    assert reason(mkcall(inbound=False)) == "not_inbound"
    assert reason(mkcall(outcome=Outcome.NOT_INBOUND)) == "not_inbound"


def test_answered() -> None:
    d = decide(mkcall(outcome=Outcome.ANSWERED, answered_by="PJSIP/101"), NO_FACTS, config(), NOW)
    assert (d.action, d.reason, d.text) == ("suppress", Reason.ANSWERED, None)
    assert "PJSIP/101" in d.detail


def test_short_abandon() -> None:
    d = decide(mkcall(outcome=Outcome.SHORT_ABANDON, ring_seconds=0.4), NO_FACTS, config(), NOW)
    assert d.reason is Reason.SHORT_ABANDON
    assert "0.4s" in d.detail


@pytest.mark.parametrize(
    ("caller", "withheld"),
    [
        ("", False),
        ("anonymous", False),
        ("Anonymous", False),
        ("<unknown>", False),
        ("restricted", False),
        (CALLER, True),  # withheld, even though the carrier passed the real number
    ],
)
def test_anonymous(caller: str, withheld: bool) -> None:
    d = decide(mkcall(caller=caller, withheld=withheld), NO_FACTS, config(), NOW)
    assert d.reason is Reason.ANONYMOUS
    assert d.destination is None


@pytest.mark.parametrize(
    "caller",
    [
        "12",
        "1-800-FLOWERS",
        "+1202555012345678",
        "202555012\r\nAT+CMGS",
        '"+12025550123"',
        "+99912345678",
        "2025550123\x1a",
        "0" * 500,
    ],
)
def test_invalid_number(caller: str) -> None:
    d = decide(mkcall(caller=caller), NO_FACTS, config(), NOW)
    assert d.reason is Reason.INVALID_NUMBER
    assert d.destination is None
    assert "\r" not in d.detail
    assert "\x1a" not in d.detail


@pytest.mark.parametrize(
    "entry", ["+12025550123", "(202) 555-0123", "202-555-0123", "1 202 555 0123", "12025550123"]
)
def test_blocked_in_any_format(entry: str) -> None:
    cfg = config(blocklist=[entry])
    assert reason(mkcall(), cfg=cfg) == "blocked"
    assert reason(mkcall(caller="2025550123"), cfg=cfg) == "blocked"
    assert reason(mkcall(caller="+12025550124"), cfg=cfg) == "missed"


def test_blocklist_entry_that_is_not_a_valid_number_still_matches_its_digits() -> None:
    cfg = config(blocklist=["555-0123 ext"])
    assert not is_blocked(CALLER, CALLER, cfg)
    assert is_blocked("+15550123", "5550123", config(blocklist=["5550123"])) is True


@pytest.mark.parametrize(
    ("caller", "home", "allowed"),
    [
        ("+18765550123", "US", []),  # +1 876 is Jamaica, not the US
        ("+14165550123", "US", []),  # Canada
        ("+12025550123", "CA", []),  # the US, for an office in Canada
        ("+442079460123", "US", ["CA"]),
        ("+12025550123", "US", ["CA"]),  # allowed_countries replaces home_region
    ],
)
def test_destination_not_allowed_by_country(caller: str, home: str, allowed: list[str]) -> None:
    cfg = config(home_region=home, allowed_countries=allowed)
    d = decide(mkcall(caller=caller), NO_FACTS, cfg, NOW)
    assert d.reason is Reason.DESTINATION_NOT_ALLOWED
    assert "country" in d.detail
    assert d.destination == caller  # recorded, never texted


def test_allowed_countries_let_a_foreign_mobile_through() -> None:
    cfg = config(allowed_countries=["US", "JM"])
    d = decide(mkcall(caller="+18765550123"), NO_FACTS, cfg, NOW)
    assert (d.action, d.destination) == ("send", "+18765550123")


@pytest.mark.parametrize(
    ("caller", "home", "ntype"),
    [
        ("+19005550199", "US", "premium_rate"),
        ("+18005550199", "US", "toll_free"),
        ("+449098790123", "GB", "premium_rate"),
        ("+448081570123", "GB", "toll_free"),
        ("+443069990123", "GB", "uan"),
    ],
)
def test_destination_not_allowed_by_dangerous_type(caller: str, home: str, ntype: str) -> None:
    # Even with every configurable type allowed.
    everything = ["mobile", "fixed_line_or_mobile", "fixed_line", "voip", "personal_number"]
    cfg = config(home_region=home, allowed_number_types=everything)
    d = decide(mkcall(caller=caller), NO_FACTS, cfg, NOW)
    assert d.reason is Reason.DESTINATION_NOT_ALLOWED
    assert ntype in d.detail


def test_international_premium_rate_is_never_texted() -> None:
    # +979: International Premium Rate Service (no country, "001"), a pumping favourite;
    # the number is libphonenumber's own example.
    c = mkcall(caller="+979123456789")
    d = decide(c, NO_FACTS, config(), NOW)
    assert d.reason is Reason.DESTINATION_NOT_ALLOWED
    assert "country 001" in d.detail
    d = decide(c, NO_FACTS, config(allowed_countries=["US", "001"]), NOW)
    assert d.reason is Reason.DESTINATION_NOT_ALLOWED
    assert "premium_rate" in d.detail


def test_dangerous_types_are_never_allowed_even_if_a_config_slipped_them_in() -> None:
    for ntype in ("premium_rate", "shared_cost", "toll_free", "uan", "voicemail", "pager"):
        assert ntype in NEVER_TEXTED_TYPES
        assert number_type_reason(ntype, [ntype, "mobile"]) is Reason.DESTINATION_NOT_ALLOWED
    assert number_type_reason(None, ["mobile"]) is Reason.DESTINATION_NOT_ALLOWED
    assert number_type_reason("unknown", ["mobile"]) is Reason.DESTINATION_NOT_ALLOWED
    # The config schema refuses them outright.
    with pytest.raises(Exception, match="allowed_number_types"):
        Config(textback={"allowed_number_types": ["premium_rate"]})


def test_not_mobile_for_a_fixed_line_unless_fixed_lines_are_on() -> None:
    cfg = config(home_region="GB")
    d = decide(mkcall(caller="020 7946 0123"), NO_FACTS, cfg, NOW)
    assert d.reason is Reason.NOT_MOBILE
    assert d.destination == "+442079460123"
    assert "fixed_line" in d.detail
    on = config(home_region="GB", allowed_number_types=["mobile", "fixed_line"])
    d = decide(mkcall(caller="020 7946 0123"), NO_FACTS, on, NOW)
    assert (d.action, d.destination) == ("send", "+442079460123")


def test_not_mobile_for_a_type_taken_off_the_list() -> None:
    cfg = config(allowed_number_types=["mobile"])  # US numbers are fixed_line_or_mobile
    assert reason(mkcall(), cfg=cfg) == "not_mobile"
    assert number_type_reason("voip", ["mobile"]) is Reason.NOT_MOBILE
    assert number_type_reason("mobile", ["mobile"]) is None


def test_opted_out() -> None:
    d = decide(mkcall(), PolicyFacts(opted_out=True), config(), NOW)
    assert (d.reason, d.destination) == (Reason.OPTED_OUT, CALLER)


def test_disabled_globally_and_per_line() -> None:
    assert reason(mkcall(), cfg=config(enabled=False)) == "disabled"
    cfg = config(lines=[{"did": DID, "enabled": False}, {"did": "2025550101"}])
    d = decide(mkcall(), NO_FACTS, cfg, NOW)
    assert d.reason is Reason.DISABLED
    assert DID in d.detail
    assert reason(mkcall(did="2025550101"), cfg=cfg) == "missed"
    assert reason(mkcall(did="2025550102"), cfg=cfg) == "missed"  # no line: [textback]


def test_cooldown_per_caller() -> None:
    facts = PolicyFacts(last_text_at=NOW - 3600)
    d = decide(mkcall(), facts, config(), NOW)
    assert d.reason is Reason.COOLDOWN
    assert "1h ago" in d.detail
    assert "cooldown 1d" in d.detail
    # Just inside and just outside the default 24 h.
    assert reason(mkcall(), PolicyFacts(last_text_at=NOW - 86399)) == "cooldown"
    assert reason(mkcall(), PolicyFacts(last_text_at=NOW - 86400)) == "missed"
    # Configurable; 0 turns it off.
    assert reason(mkcall(), facts, config(cooldown="30m")) == "missed"
    assert reason(mkcall(), PolicyFacts(last_text_at=NOW), config(cooldown=0)) == "missed"


@pytest.mark.parametrize(
    ("facts", "guard"),
    [
        (PolicyFacts(sent_last_hour=30), "max_per_hour"),
        (PolicyFacts(sent_today=200), "max_per_day"),
        (PolicyFacts(sent_this_month=3000), "max_per_month"),
        (PolicyFacts(sent_this_month=3000, sent_today=200, sent_last_hour=30), "max_per_month"),
        (PolicyFacts(sent_today=200, sent_last_hour=30), "max_per_day"),
    ],
)
def test_cap_reached(facts: PolicyFacts, guard: str) -> None:
    d = decide(mkcall(), facts, config(), NOW)
    assert d.reason is Reason.CAP_REACHED
    assert d.detail.split()[0] == guard  # the pipeline keys its one loud line on this


def test_caps_below_the_limit_and_zero_mean_no_cap() -> None:
    below = PolicyFacts(sent_last_hour=29, sent_today=199, sent_this_month=2999)
    assert reason(mkcall(), below) == "missed"
    huge = PolicyFacts(sent_last_hour=10**6, sent_today=10**6, sent_this_month=10**6)
    cfg = config(max_per_hour=0, max_per_day=0, max_per_month=0)
    assert reason(mkcall(), huge, cfg) == "missed"


def test_pumping_guard() -> None:
    d = decide(mkcall(), PolicyFacts(range_destinations=5), config(), NOW)
    assert d.reason is Reason.CAP_REACHED
    assert d.detail.startswith("pumping guard")
    assert "+12025550" in d.detail  # the range: "+" and the first 8 digits
    assert reason(mkcall(), PolicyFacts(range_destinations=4)) == "missed"
    off = config(pumping_max_per_range=0)
    assert reason(mkcall(), PolicyFacts(range_destinations=10**4), off) == "missed"


def test_called_back_and_answered_on_retry_are_cancel_reasons() -> None:
    assert cancel_reason(InboundAnswered("1.1", CALLER, NOW)) is Reason.ANSWERED_ON_RETRY
    assert cancel_reason(OutboundDialled("1.2", "92025550123", NOW)) is Reason.CALLED_BACK


def test_every_reason_word_is_covered() -> None:
    decided = set(CHECK_ORDER) | {Reason.MISSED, Reason.CALLED_BACK, Reason.ANSWERED_ON_RETRY}
    assert decided == set(Reason)


# -- the order of checks ----------------------------------------------------------------------


def test_check_order_first_matching_reason_wins() -> None:
    """Start with a call that is wrong in every way, fix one thing at a time."""
    c = mkcall(
        inbound=False,
        outcome=Outcome.ANSWERED,
        withheld=True,
        caller="12",
        presentation_known=False,
    )
    tb: dict[str, Any] = {
        "blocklist": ["202-555-0123"],
        "home_region": "CA",
        "allowed_number_types": ["mobile"],
        "enabled": False,
    }
    lines = [{"did": DID, "enabled": False}]
    facts = PolicyFacts(opted_out=True, last_text_at=NOW - 60, sent_today=200, range_destinations=9)
    seen: list[str] = []

    def step() -> Decision:
        cfg = config(lines, **tb)
        skip = cfg.calls.model_copy(update={"unknown_presentation": "skip"})
        d = decide(c, facts, cfg.model_copy(update={"calls": skip}), NOW)
        seen.append(f"{d.reason}" + (" (pumping)" if "pumping" in d.detail else ""))
        return d

    step()
    c = dataclasses.replace(c, inbound=True)
    step()
    c = dataclasses.replace(c, outcome=Outcome.SHORT_ABANDON)
    step()
    c = dataclasses.replace(c, outcome=Outcome.NO_ANSWER)
    step()
    c = dataclasses.replace(c, withheld=False)
    step()
    c = dataclasses.replace(c, presentation_known=True)
    step()
    c = dataclasses.replace(c, caller=CALLER)
    step()
    tb["blocklist"] = []
    step()
    tb["allowed_countries"] = ["CA", "US"]
    step()
    del tb["allowed_number_types"]
    step()
    facts = dataclasses.replace(facts, opted_out=False)
    step()
    tb["enabled"] = True
    step()
    lines = []
    step()
    facts = dataclasses.replace(facts, last_text_at=None)
    step()
    facts = dataclasses.replace(facts, sent_today=0)
    step()
    facts = dataclasses.replace(facts, range_destinations=0)
    assert step().action == "send"
    assert seen == [
        "not_inbound",
        "answered",
        "short_abandon",
        "anonymous",
        "presentation_unknown",
        "invalid_number",
        "blocked",
        "destination_not_allowed",
        "not_mobile",
        "opted_out",
        "disabled",
        "disabled",
        "cooldown",
        "cap_reached",
        "cap_reached (pumping)",
        "missed",
    ]
    assert [r for i, r in enumerate(seen) if r not in seen[:i] and r in CHECK_ORDER] == [
        str(r) for r in CHECK_ORDER
    ]


def test_anonymous_wins_over_everything_about_the_number() -> None:
    # A withheld premium-rate number on the blocklist, opted out: still just anonymous.
    cfg = config(blocklist=["+19005550199"])
    c = mkcall(caller="+19005550199", withheld=True)
    d = decide(c, PolicyFacts(opted_out=True, last_text_at=NOW), cfg, NOW)
    assert (d.reason, d.destination) == (Reason.ANONYMOUS, None)


def test_call_checks_come_before_caller_checks() -> None:
    assert reason(mkcall(outcome=Outcome.ANSWERED, caller="12")) == "answered"
    assert reason(mkcall(outcome=Outcome.SHORT_ABANDON, withheld=True)) == "short_abandon"
    assert reason(mkcall(inbound=False, caller="anonymous")) == "not_inbound"


# -- destination_check ------------------------------------------------------------------------


def test_destination_check_is_stateless_and_returns_the_number_when_valid() -> None:
    cfg = config(blocklist=["+12025550124"])
    assert destination_check(mkcall(), cfg) == (CALLER, None)
    assert destination_check(mkcall(caller="2025550124"), cfg) == ("+12025550124", Reason.BLOCKED)
    assert destination_check(mkcall(withheld=True), cfg) == (None, Reason.ANONYMOUS)
    assert destination_check(mkcall(caller="x"), cfg) == (None, Reason.INVALID_NUMBER)
    assert destination_check(mkcall(caller="+18765550123"), cfg) == (
        "+18765550123",
        Reason.DESTINATION_NOT_ALLOWED,
    )
    # Whatever the call's outcome: the pipeline records the number of every call.
    assert destination_check(mkcall(outcome=Outcome.ANSWERED), cfg) == (CALLER, None)


# -- pauses -------------------------------------------------------------------------------------


def test_cap_pause_until_the_window_passes() -> None:
    cfg = config()
    hour = cap_pause(PolicyFacts(sent_last_hour=30), cfg, NOW)
    assert hour == Pause("max_per_hour", hour.detail if hour else "", NOW + 3600)
    day = cap_pause(PolicyFacts(sent_today=200), cfg, NOW)
    assert day is not None
    assert day.until == datetime(2026, 3, 4, tzinfo=NY).timestamp()
    month = cap_pause(PolicyFacts(sent_this_month=3000), cfg, NOW)
    assert month is not None
    assert month.until == datetime(2026, 4, 1, tzinfo=NY).timestamp()
    assert "2026-04-01" in month.detail
    assert cap_pause(NO_FACTS, cfg, NOW) is None


def test_day_cap_resumes_at_local_midnight_across_a_dst_change() -> None:
    saturday_noon = datetime(2026, 3, 7, 12, 0, tzinfo=NY).timestamp()
    day = cap_pause(PolicyFacts(sent_today=200), config(), saturday_noon)
    assert day is not None
    assert day.until == datetime(2026, 3, 8, tzinfo=NY).timestamp()
    december = datetime(2026, 12, 15, 12, 0, tzinfo=NY).timestamp()
    month = cap_pause(PolicyFacts(sent_this_month=3000), config(), december)
    assert month is not None
    assert month.until == datetime(2027, 1, 1, tzinfo=NY).timestamp()


def test_pumping_guard_pause() -> None:
    guard = PumpingGuard(config(pumping_window="15m", pumping_max_per_range=3))
    assert guard.check(CALLER, PolicyFacts(range_destinations=2), NOW) is None
    pause = guard.check(CALLER, PolicyFacts(range_destinations=3), NOW)
    assert pause is not None
    assert pause.guard == "pumping"
    assert pause.until == NOW + 900
    assert "15m" in pause.detail
    assert number_range("+12025550123", 8) == "+12025550"
    # Caps come first; the guard needs a destination.
    both = PolicyFacts(sent_last_hour=30, range_destinations=9)
    assert sending_pause(CALLER, both, config(), NOW).guard == "max_per_hour"  # type: ignore[union-attr]
    assert sending_pause(None, PolicyFacts(range_destinations=9), config(), NOW) is None


# -- a config slip never silences a missed call -------------------------------------------


def test_broken_template_falls_back_to_the_built_in_wording() -> None:
    d = decide(mkcall(), NO_FACTS, config(template="Hi {name}"), NOW)
    assert d.action == "send"
    assert d.text == "Sorry we missed your call to Main Street Dental. We will call you back soon."
    assert "template problem" in d.detail
    d = decide(mkcall(caller_name=""), NO_FACTS, config(template="{caller_name}"), NOW)
    assert d.action == "send"
    assert d.text is not None
    assert d.text.startswith("Sorry we missed your call")
    assert "empty" in d.detail


def test_bad_hours_fall_back_too() -> None:
    cfg = Config(hours={"timezone": "Mars/Olympus"})
    d = decide(mkcall(), NO_FACTS, cfg, NOW)
    assert d.action == "send"
    assert "unknown time zone" in d.detail
    assert decide(mkcall(), PolicyFacts(sent_today=200), cfg, NOW).reason is Reason.CAP_REACHED


# -- properties -------------------------------------------------------------------------------

_valid_looking = st.one_of(
    st.sampled_from(
        ["+12025550123", "2025550199", "+18765550123", "+19005550199", "+447012345678"]
    ),
    st.from_regex(r"\+?1?[2-9]\d{2}[2-9]\d{6}", fullmatch=True),
)
_callers = st.one_of(
    _valid_looking,
    _valid_looking,
    st.text(max_size=40),
    st.text(alphabet="+0123456789 ()-.", max_size=20),
)
_facts = st.one_of(
    st.just(NO_FACTS),
    st.builds(
        PolicyFacts,
        opted_out=st.booleans(),
        last_text_at=st.one_of(st.none(), st.floats(NOW - 200_000, NOW + 100)),
        sent_last_hour=st.integers(0, 40),
        sent_today=st.integers(0, 250),
        sent_this_month=st.integers(0, 4000),
        range_destinations=st.integers(0, 8),
    ),
)
# Weighted towards calls that get a text, so the "send" branch is well exercised.
_calls = st.builds(
    mkcall,
    caller=_callers,
    caller_name=st.text(max_size=60),
    answered_by=st.text(max_size=20),
    did=st.one_of(st.just(DID), st.text(max_size=20)),
    withheld=st.sampled_from([False, False, False, True]),
    inbound=st.sampled_from([True, True, True, False]),
    outcome=st.one_of(st.sampled_from(sorted(MISSED_OUTCOMES)), st.sampled_from(list(Outcome))),
    voicemail_left=st.sampled_from([None, True, False]),
)


@settings(max_examples=400, deadline=None)
@given(c=_calls, facts=_facts, when=st.floats(NOW - 400 * 86400, NOW + 400 * 86400))
def test_decide_never_sends_to_anything_but_a_valid_e164_number(
    c: FinishedCall, facts: PolicyFacts, when: float
) -> None:
    d = decide(c, facts, CFG_PROPERTY, when)
    assert d.reason in CHECK_ORDER or d.reason is Reason.MISSED
    # The detail goes into log lines and history: nothing from the caller may break them.
    assert not any(unicodedata.category(ch)[0] == "C" for ch in d.detail)
    if d.action == "send":
        assert d.reason is Reason.MISSED
        assert d.destination is not None
        assert d.destination[0] == "+"
        assert d.destination[1:].isdigit()
        assert phonenumbers.is_valid_number(phonenumbers.parse(d.destination))
        assert not c.withheld
        assert c.inbound
        assert d.text
        assert not any(unicodedata.category(ch)[0] == "C" for ch in d.text)
        assert d.parts >= 1
        assert d.encoding in ("gsm7", "ucs2")
        assert d.template_kind in ("in_hours", "after_hours", "voicemail")
    else:
        assert d.text is None


CFG_PROPERTY = Config(
    textback={
        "template": "Hi {caller_name}, {business_name} {time} {day}",
        "allowed_countries": ["US", "JM", "GB"],
    },
    hours={"sat": ["22:00-02:00"], "holidays": ["2026-03-04"]},
)


# -- the pipeline's side of the contract ------------------------------------------------------


async def test_real_pipeline_uses_this_policy(tmp_path: Path) -> None:
    from daemon.app.pipeline import Pipeline
    from daemon.outbox.outbox import Outbox
    from daemon.store.store import Store

    cfg = config(delay="30s", allowed_countries=["US"])
    clock = ManualClock(NOW)
    store = await Store.open(tmp_path / "tb.db")
    try:
        outbox = Outbox(cfg, store, clock, None)
        pipeline = Pipeline(cfg, store, outbox, clock, drive_outbox=True)
        await pipeline.handle(mkcall(linkedid="a"))
        await pipeline.handle(mkcall(linkedid="b", caller="+19005550199"))
        await pipeline.handle(mkcall(linkedid="c", withheld=True))
        got = {r.linkedid: (r.decision, r.reason) for r in await pipeline.reports()}
        assert got == {
            "a": ("send", "missed"),
            "b": ("suppress", "destination_not_allowed"),
            "c": ("suppress", "anonymous"),
        }
        a = await pipeline.report("a")
        assert a is not None
        assert a.text is not None
        assert a.text.startswith("Sorry we missed your call to Main Street Dental")
    finally:
        await store.close()
