"""Business hours: spans, several per day, past midnight, holidays, time zones and DST."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from daemon.config import HoursConfig
from daemon.decide.hours import (
    Span,
    is_open,
    local_time,
    office_zone,
    parse_holiday,
    parse_span,
    schedule,
)

NY = ZoneInfo("America/New_York")


def hours(**kw: Any) -> HoursConfig:
    return HoursConfig(**kw)


def at(text: str, zone: ZoneInfo = NY) -> float:
    """Epoch of a local wall time "YYYY-MM-DD HH:MM" in `zone`."""
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- spans ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("09:00-17:00", Span(540, 1020)),
        (" 08:30-12:15 ", Span(510, 735)),
        ("00:00-24:00", Span(0, 1440)),
        ("22:00-02:00", Span(1320, 1560)),  # past midnight: ends 02:00 the next day
        ("23:30-00:00", Span(1410, 1440)),
    ],
)
def test_parse_span_reads_valid_spans(text: str, span: Span) -> None:
    assert parse_span(text) == span


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("9-17", "HH:MM-HH:MM"),
        ("9:00-17:00", "HH:MM-HH:MM"),
        ("09:00 to 17:00", "HH:MM-HH:MM"),
        ("", "HH:MM-HH:MM"),
        ("24:00-02:00", "start is not a time of day"),
        ("09:60-10:00", "start is not a time of day"),
        ("09:00-24:30", "end is not a time of day"),
        ("09:00-25:00", "end is not a time of day"),
        ("10:00-10:00", "empty"),
        ("00:00-00:00", "00:00-24:00"),
    ],
)
def test_parse_span_errors_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_span(text)


def test_parse_holiday() -> None:
    assert parse_holiday("2026-12-25").isoformat() == "2026-12-25"
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_holiday("25.12.2026")
    with pytest.raises(ValueError, match="not a real date"):
        parse_holiday("2026-02-30")


def test_schedule_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"hours\.wed\[1\]"):
        schedule(hours(wed=["09:00-12:00", "13-17"]))
    with pytest.raises(ValueError, match=r"hours\.holidays\[0\]"):
        schedule(hours(holidays=["Christmas"]))


# -- open or closed -----------------------------------------------------------------------


def test_default_week_is_nine_to_five_monday_to_friday() -> None:
    h = hours()
    assert is_open(h, at("2026-03-03 09:00"))  # Tuesday
    assert is_open(h, at("2026-03-03 16:59"))
    assert not is_open(h, at("2026-03-03 08:59"))
    assert not is_open(h, at("2026-03-03 17:00"))  # the end is exclusive
    assert not is_open(h, at("2026-03-07 12:00"))  # Saturday
    assert not is_open(h, at("2026-03-08 12:00"))  # Sunday


def test_several_spans_per_day_leave_the_gaps_closed() -> None:
    h = hours(tue=["08:00-12:00", "13:00-17:30"])
    assert is_open(h, at("2026-03-03 11:59"))
    assert not is_open(h, at("2026-03-03 12:30"))  # lunch
    assert is_open(h, at("2026-03-03 13:00"))
    assert is_open(h, at("2026-03-03 17:29"))
    assert not is_open(h, at("2026-03-03 17:30"))


def test_span_past_midnight_runs_into_the_next_day() -> None:
    h = hours(fri=["22:00-02:00"], sat=[], thu=[])
    assert not is_open(h, at("2026-03-06 21:59"))  # Friday
    assert is_open(h, at("2026-03-06 23:00"))
    assert is_open(h, at("2026-03-07 01:59"))  # Saturday, from Friday's span
    assert not is_open(h, at("2026-03-07 02:00"))
    assert not is_open(h, at("2026-03-06 01:00"))  # Friday early: Thursday has no span


def test_midnight_to_midnight_is_open_all_day() -> None:
    h = hours(sun=["00:00-24:00"])
    assert is_open(h, at("2026-03-01 00:00"))
    assert is_open(h, at("2026-03-01 23:59"))
    assert not is_open(h, at("2026-03-02 00:00"))  # 24:00 is not an overnight span


def test_holiday_is_closed_all_day_including_the_overnight_spill() -> None:
    h = hours(
        thu=["09:00-17:00", "22:00-02:00"],
        fri=["09:00-17:00", "22:00-02:00"],
        holidays=["2026-12-25"],
    )
    assert is_open(h, at("2026-12-24 10:00"))  # Thursday, the day before
    assert not is_open(h, at("2026-12-25 01:00"))  # Thursday's span spills into a holiday
    assert not is_open(h, at("2026-12-25 10:00"))
    assert not is_open(h, at("2026-12-25 23:00"))
    assert not is_open(h, at("2026-12-26 01:00"))  # the holiday's own span does not spill
    assert is_open(h, at("2026-12-31 10:00"))  # the next Thursday


def test_holiday_is_a_date_in_the_office_time_zone() -> None:
    h = hours(timezone="America/Los_Angeles", holidays=["2026-12-25"], fri=["00:00-24:00"])
    la = ZoneInfo("America/Los_Angeles")
    # 2026-12-25 23:30 in Los Angeles is already the 26th in UTC: still the holiday.
    assert not is_open(h, at("2026-12-25 23:30", la))
    assert utc("2026-12-26 07:30") == at("2026-12-25 23:30", la)


def test_other_time_zone_uses_its_own_wall_clock() -> None:
    h = hours(timezone="Europe/Berlin")
    berlin = ZoneInfo("Europe/Berlin")
    assert is_open(h, at("2026-03-03 09:00", berlin))
    assert not is_open(h, at("2026-03-03 12:00"))  # noon in New York is 18:00 in Berlin
    assert not is_open(h, utc("2026-03-03 16:30"))  # 17:30 in Berlin


# -- daylight saving ------------------------------------------------------------------------


def test_spring_forward_moves_opening_with_the_clocks() -> None:
    h = hours()
    # Monday after the US change (2026-03-08): 09:00 EDT is 13:00 UTC, not 14:00.
    assert not is_open(h, utc("2026-03-09 12:59"))
    assert is_open(h, utc("2026-03-09 13:00"))
    # The Friday before, 09:00 EST was 14:00 UTC.
    assert not is_open(h, utc("2026-03-06 13:30"))
    assert is_open(h, utc("2026-03-06 14:00"))


def test_spring_forward_night_skips_the_missing_hour() -> None:
    h = hours(sun=["01:30-03:30"])
    assert is_open(h, utc("2026-03-08 06:59"))  # 01:59 EST
    assert is_open(h, utc("2026-03-08 07:00"))  # one second later it is 03:00 EDT
    assert not is_open(h, utc("2026-03-08 07:30"))  # 03:30 EDT


def test_fall_back_repeated_hour_is_open_both_times() -> None:
    h = hours(sun=["01:00-02:00"])
    assert is_open(h, utc("2026-11-01 05:30"))  # 01:30 EDT
    assert is_open(h, utc("2026-11-01 06:30"))  # 01:30 EST, the repeat
    assert not is_open(h, utc("2026-11-01 07:00"))  # 02:00 EST
    # Monday after: 09:00 EST is 14:00 UTC.
    assert not is_open(hours(), utc("2026-11-02 13:30"))
    assert is_open(hours(), utc("2026-11-02 14:00"))


# -- zones ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../../etc/passwd", "America/New York"])
def test_bad_time_zone_is_a_clear_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        office_zone(name)
    with pytest.raises(ValueError, match="unknown time zone"):
        is_open(hours(timezone=name), 0.0)


def test_local_time_is_in_the_office_zone() -> None:
    t = local_time(hours(timezone="America/Chicago"), utc("2026-07-01 15:00"))
    offset = t.utcoffset()
    assert (t.hour, t.minute) == (10, 0)
    assert offset is not None
    assert offset.total_seconds() == -5 * 3600  # CDT in July
