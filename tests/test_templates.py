"""Templates: checking, safe rendering of hostile caller data, choice of wording, previews."""

from __future__ import annotations

import time
import unicodedata
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import Config, TextbackConfig
from daemon.decide.names import CALLER_NAME_MAX
from daemon.decide.templates import (
    FIELDS,
    TemplateError,
    caller_name_value,
    check_template,
    clean_text,
    gsm7_fold,
    line_for,
    render,
    render_for_call,
    render_preview,
    select_template,
)
from daemon.model import Contact, FinishedCall, Outcome
from gsm.pdu import sms_info

NY = ZoneInfo("America/New_York")
#: Tuesday 2026-03-03, 10:30 in New York: business hours by default.
OPEN = datetime(2026, 3, 3, 10, 30, tzinfo=NY).timestamp()
#: Tuesday 2026-03-03, 19:05 in New York: after hours.
CLOSED = datetime(2026, 3, 3, 19, 5, tzinfo=NY).timestamp()
CALLER = "+12025550123"
DID = "2025550100"


def mkcall(**kw: Any) -> FinishedCall:
    base: dict[str, Any] = {
        "linkedid": "1772551800.1",
        "caller": CALLER,
        "caller_name": "",
        "did": DID,
        "inbound": True,
        "outcome": Outcome.NO_ANSWER,
        "started_at": OPEN - 25,
        "ended_at": OPEN,
        "ring_seconds": 20.0,
        "voicemail_left": None,
        "withheld": False,
    }
    base.update(kw)
    return FinishedCall(**base)


def config(**textback: Any) -> Config:
    return Config(textback={"business_name": "Main Street Dental", **textback})


def pbx_config(**textback: Any) -> Config:
    """A config that lets person-like network caller names into texts (use_pbx_names)."""
    return Config(
        textback={"business_name": "Main Street Dental", **textback},
        contacts={"use_pbx_names": True},
    )


def has_control(text: str) -> bool:
    """Any control, format (bidi, zero-width), surrogate or line/paragraph separator."""
    return any(unicodedata.category(ch)[0] == "C" or ch in "\u2028\u2029" for ch in text)


# -- check_template -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        TextbackConfig().template,
        TextbackConfig().template_after_hours,
        TextbackConfig().template_voicemail,
        "Hi {caller_name}, {business_name} {did} {callback_number} {time} {day}",
        "Literal braces {{like this}} are fine",
        "No fields at all",
    ],
)
def test_check_template_accepts_good_templates(template: str) -> None:
    assert check_template(template) == []


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("Hi {name}", "unknown field {name}"),
        ("Hi {}", "without a name"),
        ("Hi {0}", "without a name"),
        ("Hi {caller_name!r}", "conversion"),
        ("Hi {caller_name:>10}", "format spec"),
        ("Hi {business_name.upper}", "attribute or index"),
        ("Hi {business_name[0]}", "attribute or index"),
        ("Hi {caller_name", "cannot read"),
        ("Hi caller_name}", "cannot read"),
        ("", "empty template"),
        ("   ", "empty template"),
    ],
)
def test_check_template_reports_each_problem(template: str, words: str) -> None:
    problems = check_template(template)
    assert problems
    assert any(words in p for p in problems), problems


def test_check_template_lists_every_problem() -> None:
    problems = check_template("{a} {b} {did!s}")
    assert len(problems) == 3


# -- render ---------------------------------------------------------------------------------


def test_render_substitutes_named_fields_and_keeps_literal_braces() -> None:
    out = render(
        "{{x}} {business_name}: {caller_name}/{business_name}",
        {
            "business_name": "Acme",
            "caller_name": "Jane",
        },
    )
    assert out == "{x} Acme: Jane/Acme"


@pytest.mark.parametrize(
    "value", ["{business_name}", "%s%n%x", "{0}", "{caller_name!r}", "{{}}", "${HOME}", "}{"]
)
def test_render_never_evaluates_values(value: str) -> None:
    fields = {"business_name": "Acme", "caller_name": value}
    assert render("Hi {caller_name} from {business_name}", fields) == f"Hi {value} from Acme"


def test_render_strict_refuses_bad_templates() -> None:
    with pytest.raises(TemplateError, match="unknown field"):
        render("Hi {nope}", {"nope": "x"})
    with pytest.raises(TemplateError, match="no value"):
        render("Hi {did}", {})
    with pytest.raises(TemplateError):
        render("Hi {", {})


def test_render_loose_keeps_bad_fields_as_written() -> None:
    fields = {"business_name": "Acme"}
    assert render("{business_name} {nope} {did:>3}", fields, strict=False) == (
        "Acme {nope} {did:>3}"
    )
    assert render("Hi {", fields, strict=False) == "Hi {"


# -- caller names -----------------------------------------------------------------------------

HOSTILE = [
    'Jane\r\nAT+CMGS="+19005550199"\r',
    "Evil\x1a\x1b[31m\x00\x07",
    "\u202eenaJ\u202c",  # right-to-left override
    "Ja\u200bne\u2066\u2069\ufeff",  # zero-width and isolates
    'O\'Brien "quoted"',
    "{business_name}{0}%s%d",
    "A" * 10_000,
    "\u2028line\u2029para\x85next",
    "\t  spaced   \n out  ",
    "\ud800lone surrogate",
    "\U000f0000private use",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_caller_names_never_reach_a_text(name: str) -> None:
    # Even with use_pbx_names, a network name with control, format or odd characters is
    # not a person's name: the fallback goes out instead.
    cfg = pbx_config(template="Hi {caller_name}, {business_name}.", caller_name_fallback="there")
    kind, text = render_for_call(cfg, mkcall(caller_name=name), OPEN)
    assert kind == "in_hours"
    assert not has_control(text)
    assert text == "Hi there, Main Street Dental."
    assert caller_name_value(cfg, mkcall(caller_name=name)) == "there"


def test_network_name_used_only_with_use_pbx_names() -> None:
    c = mkcall(caller_name="  JANE   DOE ")
    assert caller_name_value(config(caller_name_fallback="there"), c) == "there"
    assert caller_name_value(pbx_config(), c) == "JANE DOE"
    # longer than CALLER_NAME_MAX: not cut into a stranger's name, left out
    long = mkcall(caller_name="Bartholomew Fitzgerald-Worthington")
    assert caller_name_value(pbx_config(caller_name_fallback="there"), long) == "there"


def test_contact_names_are_cleaned_and_cut() -> None:
    cfg = config()
    long = "Bartholomew Maximilian Fitzgerald-Worthington"
    cut = caller_name_value(cfg, mkcall(), Contact(long))
    assert cut == long[:CALLER_NAME_MAX].rstrip()
    assert len(cut) == CALLER_NAME_MAX
    # Cut after "A" * 29 + " ": no trailing space.
    assert caller_name_value(cfg, mkcall(), Contact("A" * 29 + " B")) == "A" * 29
    assert caller_name_value(cfg, mkcall(), Contact(" JANE \r\n DOE\x00 ")) == "JANE DOE"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "<unknown>",
        "unknown",
        "UNKNOWN",
        "Anonymous",
        "anonymous",
        CALLER,
        "2025550123",
        "+1 (202) 555-0123",
        "\x00\r\n",
        "\u202e",
        "Unknown Caller",
        "OUT OF AREA",
    ],
)
def test_no_real_name_gives_the_fallback(name: str) -> None:
    cfg = pbx_config(template="Hi {caller_name}!", caller_name_fallback="friend")
    assert caller_name_value(cfg, mkcall(caller_name=name), fallback="there") == "there"
    assert render_for_call(cfg, mkcall(caller_name=name), OPEN)[1] == "Hi friend!"


@pytest.mark.parametrize(
    ("name", "shown", "encoding"),
    [
        ("Zoë Adams", "Zoe Adams", "gsm7"),  # ë is not GSM-7, e is: one part, not two
        ("Se\u00e1n O\u2019Brien", "Sean O'Brien", "gsm7"),
        ("José Muñoz", "José Muñoz", "gsm7"),  # é and ñ are GSM-7 already
        ("李小龍", "李小龍", "ucs2"),  # another script is kept as it is
        ("Łukasz", "Łukasz", "ucs2"),  # Ł has no accent to drop
    ],
)
def test_accented_names_are_folded_only_to_keep_the_text_gsm7(
    name: str, shown: str, encoding: str
) -> None:
    cfg = config(template="Hi {caller_name}, " + "x" * 120)
    text = render_for_call(cfg, mkcall(), OPEN, Contact(name))[1]
    assert text.startswith(f"Hi {shown}, ")
    info = sms_info(text)
    assert info.encoding == encoding
    assert info.parts == (1 if encoding == "gsm7" else 2)


def test_names_keep_their_accents_when_the_text_is_ucs2_anyway() -> None:
    cfg = config(template="Merci {first_name} 😀")
    assert render_for_call(cfg, mkcall(), OPEN, Contact("Zoë Adams", "Zoë"))[1] == "Merci Zoë 😀"


def test_first_name_folds_with_the_full_name() -> None:
    cfg = config(template="Hi {first_name} ({caller_name}), " + "x" * 120)
    text = render_for_call(cfg, mkcall(), OPEN, Contact("Zoë Adams", "Zoë"))[1]
    assert text.startswith("Hi Zoe (Zoe Adams), ")
    assert sms_info(text).encoding == "gsm7"


def test_clean_text_keeps_ordinary_letters_of_any_script() -> None:
    assert clean_text("Zoë Ångström 李小龍 محمد", 100) == "Zoë Ångström 李小龍 محمد"
    assert clean_text("e\u0301", 10) == "é"  # NFC


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=200), did=st.text(max_size=30))
def test_render_never_raises_and_never_evaluates_caller_data(name: str, did: str) -> None:
    cfg = pbx_config(
        template="Hi {caller_name}. {business_name} on {did}, call {callback_number} ({day} {time})"
    )
    c = mkcall(caller_name=name, did=did)
    _, text = render_for_call(cfg, c, OPEN)
    value = caller_name_value(cfg, c)
    # The name as cleaned, or folded to GSM-7 when that keeps the text cheap.
    assert text.startswith((f"Hi {value}. Main Street Dental on ", f"Hi {gsm7_fold(value)}. "))
    assert len(value) <= CALLER_NAME_MAX
    assert not has_control(text)
    assert text.endswith("(Tuesday 10:30)")


# -- choice of template -------------------------------------------------------------------


def test_select_template_by_hours_and_voicemail() -> None:
    cfg = config()
    tb = cfg.textback
    assert select_template(cfg, mkcall(), OPEN) == ("in_hours", tb.template)
    assert select_template(cfg, mkcall(), CLOSED) == ("after_hours", tb.template_after_hours)
    assert select_template(cfg, mkcall(voicemail_left=True), OPEN) == (
        "voicemail",
        tb.template_voicemail,
    )
    assert select_template(cfg, mkcall(voicemail_left=True), CLOSED)[0] == "voicemail"
    # Voicemail reached but nothing left, or unknowable: the hours decide.
    assert select_template(cfg, mkcall(voicemail_left=False), CLOSED)[0] == "after_hours"
    assert select_template(cfg, mkcall(voicemail_left=None), OPEN)[0] == "in_hours"


def test_holiday_gets_the_after_hours_wording() -> None:
    cfg = Config(hours={"holidays": ["2026-03-03"]})
    assert select_template(cfg, mkcall(), OPEN)[0] == "after_hours"


def test_lines_override_name_templates_and_callback_number() -> None:
    cfg = Config(
        textback={"business_name": "Main Street Dental", "template": "{business_name} {did}"},
        lines=[
            {
                "did": DID,
                "business_name": "Main Street Orthodontics",
                "template_after_hours": "Closed. {business_name}: call {callback_number} on {day}",
                "callback_number": "+1 202 555 0111",
            },
            {"did": "2025550199", "template_voicemail": "Got it, {caller_name}"},
        ],
    )
    # The line's own after-hours text, business name and callback number.
    assert render_for_call(cfg, mkcall(), CLOSED) == (
        "after_hours",
        "Closed. Main Street Orthodontics: call +1 202 555 0111 on Tuesday",
    )
    # The line has no in-hours template of its own: [textback]'s, with the line's name.
    assert render_for_call(cfg, mkcall(), OPEN)[1] == f"Main Street Orthodontics {DID}"
    other = mkcall(did="2025550199", voicemail_left=True)
    assert render_for_call(cfg, other, OPEN, Contact("Jane")) == ("voicemail", "Got it, Jane")
    # No callback_number on that line: the DID itself.
    cfg2 = Config(lines=[{"did": "2025550199", "template": "Call {callback_number}"}])
    assert render_for_call(cfg2, mkcall(did="2025550199"), OPEN)[1] == "Call 2025550199"
    # A DID without a line: [textback] everything.
    assert (
        render_for_call(cfg, mkcall(did="2025550142"), OPEN)[1] == "Main Street Dental 2025550142"
    )


def test_line_matches_the_did_written_another_way() -> None:
    cfg = Config(
        lines=[
            {"did": "+1 (202) 555-0100", "business_name": "Annex"},
            {"did": "100", "business_name": "Internal"},
        ]
    )
    assert line_for(cfg, "2025550100") is cfg.lines[0]
    assert line_for(cfg, "+12025550100") is cfg.lines[0]
    assert line_for(cfg, "100") is cfg.lines[1]  # exact match: short numbers too
    assert line_for(cfg, "2025550101") is None
    assert line_for(cfg, "") is None
    assert line_for(cfg, "x" * 1000) is None
    assert render_for_call(cfg, mkcall(did="2025550100"), OPEN)[1].startswith("Sorry we missed")
    assert "Annex" in render_for_call(cfg, mkcall(did="2025550100"), OPEN)[1]


def test_ten_megabyte_name_is_cheap() -> None:
    start = time.perf_counter()
    value = caller_name_value(pbx_config(), mkcall(caller_name="\u202e" + "A" * 10_000_000))
    assert value == ""
    cut = caller_name_value(config(), mkcall(), Contact("\u202e" + "A" * 10_000_000))
    assert cut == "A" * CALLER_NAME_MAX
    assert time.perf_counter() - start < 0.5


def test_time_and_day_are_local_to_the_office() -> None:
    cfg = config(template="{day} {time}")
    assert render_for_call(cfg, mkcall(), OPEN)[1] == "Tuesday 10:30"
    cfg_la = Config(
        textback={"template": "{day} {time}", "template_after_hours": "{day} {time}"},
        hours={"timezone": "America/Los_Angeles"},
    )
    assert render_for_call(cfg_la, mkcall(), OPEN)[1] == "Tuesday 07:30"
    # Just after midnight in New York is still Monday evening in Los Angeles.
    late = datetime(2026, 3, 3, 0, 10, tzinfo=NY).timestamp()
    assert render_for_call(cfg_la, mkcall(), late)[1] == "Monday 21:10"


def test_hostile_did_is_cleaned() -> None:
    cfg = config(template="Line {did}, call {callback_number}")
    text = render_for_call(cfg, mkcall(did="2025550100\r\nAT+CMGD=1\x1a"), OPEN)[1]
    assert not has_control(text)
    assert text.startswith("Line 2025550100 AT+CMGD")


# -- previews -------------------------------------------------------------------------------


def test_render_preview_lists_every_template_with_its_cost() -> None:
    cfg = Config(
        textback={
            "business_name": "Main Street Dental",
            "template": "Hi {caller_name}, sorry we missed you at {time} on {day}.",
        },
        lines=[
            {
                "did": DID,
                "business_name": "Dental Annex",
                "template_voicemail": "谢谢 {caller_name}",
            },
            {"did": "2025550199", "template_after_hours": "x" * 200 + " {business_name}"},
        ],
    )
    previews = render_preview(cfg)
    labels = [p.label for p in previews]
    assert labels == [
        "textback.template",
        "textback.template_after_hours",
        "textback.template_voicemail",
        "lines[0].template",
        "lines[0].template_after_hours",
        "lines[0].template_voicemail",
        "lines[1].template",
        "lines[1].template_after_hours",
        "lines[1].template_voicemail",
    ]
    _, text, info = previews[0]  # unpacks like a tuple
    assert text == "Hi Jane Doe, sorry we missed you at 10:30 on Tuesday."
    assert (info.encoding, info.parts) == ("gsm7", 1)
    assert previews[3].text == "Hi Jane Doe, sorry we missed you at 10:30 on Tuesday."
    assert previews[4].text.startswith("Thanks for calling Dental Annex.")
    assert previews[5].text == "谢谢 Jane Doe"
    assert previews[5].info.encoding == "ucs2"
    assert previews[7].info.parts == 2
    assert previews[7].text.endswith(" Main Street Dental")


def test_render_preview_does_not_raise_on_a_broken_template() -> None:
    previews = render_preview(Config(textback={"template": "Hi {name} {"}))
    assert previews[0].text == "Hi {name} {"
    assert previews[0].info.parts == 1


def test_fields_are_the_documented_set() -> None:
    assert FIELDS == (
        "business_name",
        "caller_name",
        "first_name",
        "did",
        "callback_number",
        "time",
        "day",
    )
