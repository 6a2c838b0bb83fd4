"""Caller numbers: untrusted caller ID in, a valid E.164 number (or a reason) out.

Only a number that `phonenumbers` calls valid ever leaves this module as a destination;
letters are never keypad-converted (a caller ID "1-800-FLOWERS" is invalid, not a number).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneNumberType

#: Caller ID values Asterisk and carriers use for "no number".
_ANONYMOUS = frozenset(
    {"", "anonymous", "unknown", "<unknown>", "restricted", "private", "unavailable", "withheld"}
)
_MAX_INPUT = 32  # longer caller IDs are not numbers; don't let them reach the parser


class CallerKind(StrEnum):
    """What a caller ID is, before any destination policy."""

    VALID = "valid"
    ANONYMOUS = "anonymous"  # no number, or the caller asked for privacy
    INVALID = "invalid"  # something, but not a valid phone number


@dataclass(frozen=True, slots=True)
class CallerNumber:
    """A caller ID judged: its kind and, when valid, its E.164 form, region and type."""

    kind: CallerKind
    e164: str | None = None
    region: str | None = None
    number_type: str | None = None  # lower-case phonenumbers type name, e.g. "mobile"


_TYPE_NAMES = {
    value: name.lower()
    for name, value in vars(PhoneNumberType).items()
    if not name.startswith("_") and isinstance(value, int)
}


#: Judged numbers kept: a burst of calls judges each caller several times (destination
#: check, decision, cancels), and phonenumbers' parse is the costly part. Bounded, so a
#: flood of spoofed numbers cannot grow memory.
CLASSIFY_CACHE_SIZE = 4096


@lru_cache(maxsize=CLASSIFY_CACHE_SIZE)
def classify_caller(raw: str, *, home_region: str, withheld: bool = False) -> CallerNumber:
    """Judge an untrusted caller ID number. `withheld` wins over any number present.

    Pure (the result is a frozen value), so results are cached.
    """
    text = raw.strip()
    if withheld or text.lower() in _ANONYMOUS:
        return CallerNumber(CallerKind.ANONYMOUS)
    if len(text) > _MAX_INPUT or any(ch.isalpha() for ch in text):
        return CallerNumber(CallerKind.INVALID)
    # Only digits, an optional leading '+', and common separators are a number at all.
    if not all(ch.isdigit() or ch in "+ -().\t" for ch in text) or "+" in text[1:]:
        return CallerNumber(CallerKind.INVALID)
    try:
        parsed = phonenumbers.parse(text, home_region.upper())
    except phonenumbers.NumberParseException:
        return CallerNumber(CallerKind.INVALID)
    if not phonenumbers.is_valid_number(parsed):
        return CallerNumber(CallerKind.INVALID)
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    region = phonenumbers.region_code_for_number(parsed)
    ntype = _TYPE_NAMES.get(phonenumbers.number_type(parsed), "unknown")
    return CallerNumber(CallerKind.VALID, e164=e164, region=region, number_type=ntype)


def is_safe_destination(number: str) -> bool:
    """True when `number` is '+' and 8-15 digits: the only shape that may reach an AT line."""
    return len(number) >= 9 and len(number) <= 16 and number[0] == "+" and number[1:].isdigit()
