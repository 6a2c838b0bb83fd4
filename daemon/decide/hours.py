"""Business hours: is the office open at a given instant? Pure, no I/O beyond the zone files.

The schedule is wall-clock time in the office time zone ([hours] timezone), so daylight
saving changes move the opening hours with the clocks, as people expect. Each weekday has
zero or more "HH:MM-HH:MM" spans; a span whose end is not after its start runs past
midnight into the next day ("22:00-02:00" on Friday is open until 02:00 on Saturday).
A holiday (YYYY-MM-DD, in the office time zone) is closed all day, including the early
hours that a previous day's overnight span would otherwise cover.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from functools import lru_cache

from daemon.config import HoursConfig

#: Config keys of the weekdays, Monday first (datetime.weekday() order).
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: Weekday names for the {day} merge field. Fixed English words, not the process locale,
#: so a text does not change language with the service's environment.
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

_SPAN_RE = re.compile(r"(\d{2}):(\d{2})-(\d{2}):(\d{2})")
_DAY_MINUTES = 24 * 60


@dataclass(frozen=True, slots=True)
class Span:
    """One open span in minutes after local midnight; `end` > 1440 runs into the next day."""

    start: int
    end: int

    @property
    def overnight(self) -> bool:
        """True when the span runs past midnight into the next day."""
        return self.end > _DAY_MINUTES


def parse_span(text: str) -> Span:
    """Read "HH:MM-HH:MM" (end may be "24:00"; an end before the start runs past midnight).

    Raises ValueError with a message fit for `textback check`.
    """
    m = _SPAN_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f'{text!r} is not "HH:MM-HH:MM" (e.g. "09:00-17:00")')
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or m1 > 59:
        raise ValueError(f"{text!r}: the start is not a time of day (00:00 to 23:59)")
    if h2 > 24 or m2 > 59 or (h2 == 24 and m2 != 0):
        raise ValueError(f"{text!r}: the end is not a time of day (00:00 to 24:00)")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if end == start:
        raise ValueError(f"{text!r} is empty (it starts when it ends); use 00:00-24:00 all day")
    if end < start:
        end += _DAY_MINUTES  # past midnight, into the next day
    return Span(start, end)


def parse_holiday(text: str) -> date:
    """Read a YYYY-MM-DD holiday; ValueError with a clear message."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
        raise ValueError(f'{text!r} is not a date "YYYY-MM-DD" (e.g. "2026-12-25")')
    try:
        return date.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a real date: {exc}") from exc


def office_zone(name: str) -> tzinfo:
    """The office time zone; ValueError naming the zone when it is unknown or unreadable."""
    return _zone(name)


@lru_cache(maxsize=32)
def _zone(name: str) -> tzinfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        # ZoneInfoNotFoundError also covers a machine with neither /usr/share/zoneinfo
        # nor the tzdata package; say both possibilities.
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as 'America/Chicago' "
            "(if the name is right, install the system tzdata package or the tzdata "
            "Python package)"
        ) from exc


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed [hours] section: spans per weekday (Monday first) and holidays."""

    zone: tzinfo
    week: tuple[tuple[Span, ...], ...]
    holidays: frozenset[date]

    def is_open(self, when: float) -> bool:
        """True when `when` (epoch seconds) falls in an open span and not on a holiday."""
        local = datetime.fromtimestamp(when, self.zone)
        today = local.date()
        if today in self.holidays:
            return False
        minute = local.hour * 60 + local.minute
        for span in self.week[local.weekday()]:
            if span.start <= minute < span.end:
                return True
        yesterday = today - timedelta(days=1)
        if yesterday in self.holidays:
            return False
        for span in self.week[yesterday.weekday()]:
            if span.overnight and minute < span.end - _DAY_MINUTES:
                return True
        return False


def schedule(hours: HoursConfig) -> Schedule:
    """Parse [hours]; ValueError on a bad zone, span or holiday (with the key)."""
    # The config models hold lists, so they are not hashable: cache on their contents.
    days = tuple(tuple(getattr(hours, day)) for day in DAYS)
    return _schedule(hours.timezone, days, tuple(hours.holidays))


@lru_cache(maxsize=16)
def _schedule(
    timezone: str, days: tuple[tuple[str, ...], ...], holiday_texts: tuple[str, ...]
) -> Schedule:
    zone = office_zone(timezone)
    week = []
    for day, texts in zip(DAYS, days, strict=True):
        spans = []
        for i, text in enumerate(texts):
            try:
                spans.append(parse_span(text))
            except ValueError as exc:
                raise ValueError(f"hours.{day}[{i}]: {exc}") from None
        week.append(tuple(spans))
    holidays = set()
    for i, text in enumerate(holiday_texts):
        try:
            holidays.add(parse_holiday(text))
        except ValueError as exc:
            raise ValueError(f"hours.holidays[{i}]: {exc}") from None
    return Schedule(zone, tuple(week), frozenset(holidays))


def is_open(hours: HoursConfig, when: float) -> bool:
    """Is the office open at `when` (epoch seconds)? ValueError on a bad [hours] section."""
    return schedule(hours).is_open(when)


def local_time(hours: HoursConfig, when: float) -> datetime:
    """`when` as an aware datetime in the office time zone."""
    return datetime.fromtimestamp(when, office_zone(hours.timezone))
