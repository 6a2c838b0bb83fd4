"""What text mode (AT+CMGF=1) sends for a text: pure functions, no I/O.

Text mode has no User Data Header, so a long text cannot be concatenated: it goes out
as separate texts, each numbered "(1/3) ", "(2/3) ", ..., each within one SMS. Each
part is written in one of two ways:

- **plain** ("ira"): AT+CSCS="IRA", AT+CSMP <dcs> 0, the text as it is. Only for
  characters that read the same in IRA (ITU-T T.50, ASCII) and the GSM 7-bit default
  alphabet, which the modem converts by 27.005 Annex A: letters, digits, space and
  common punctuation (`PLAIN_CHARS`). 160 characters a part.
- **UCS-2** ("ucs2"): AT+CSCS="UCS2", AT+CSMP <dcs> 8, the number and the body written
  as hex of UTF-16-BE (27.005 3.1 <data>: with a UCS2 <dcs> the body is hex of its
  octets; 27.007 5.5: under "UCS2" every string argument is hex too). 70 UTF-16 units
  (140 octets) a part; a character beyond U+FFFF is a surrogate pair, never split.

Everything else goes as UCS-2: accented letters, line breaks, `@ $ _ "`, and the GSM-7
extension characters `~ { } [ ] \\ ^ | €`. Those could only be written in GSM-7 as the
escape 0x1B and a code (AT+CSCS="GSM"), and in a text-mode body 0x1B is ESC, which
cancels the message (27.005 3.5.1; the Telit LE910Cx and ME910G1 manuals: "To exit
without sending the message issue ESC char (0x1B hex)"; Siemens TC3x: "Writing can be
aborted by entering <ESC>"). Vendors work around it differently (Siemens MC55 spells
GSM characters as "\\1B"-style escapes, SIMCom's SIM800 offers AT+CSCS="HEX" of septets)
and none of the modems in tests/data/modem shows either, so no modem gets the GSM
charset: UCS-2 works on every modem that takes AT+CSCS="UCS2" with AT+CSMP (the
python-gsmmodem transcripts' Huawei and ZTE sticks list both in AT+CLAC) at the cost of
70 characters a part instead of 160. Line breaks are UCS-2 too: in a plain body every
CR makes the modem send another "> " prompt (27.005 3.5.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MAX_TEXT_PARTS",
    "PLAIN_CHARS",
    "PLAIN_LIMIT",
    "UCS2_LIMIT",
    "TextModePart",
    "coding_of",
    "join_text_mode",
    "number_prefix",
    "split_text_mode",
    "units",
]

TextCoding = Literal["ira", "ucs2"]

PLAIN_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,!?'()+-:;/&%#*=<>"
)
"""Characters that read the same in IRA and the GSM default alphabet."""
PLAIN_LIMIT = 160
"""Characters in one plain (GSM 7-bit) SMS."""
UCS2_LIMIT = 70
"""UTF-16 code units in one UCS-2 SMS (140 octets of user data)."""
MAX_TEXT_PARTS = 99
"""More separate texts than this is a flood, not a message (PDU mode stops at 255)."""
_PREFIX_RE = re.compile(r"^\((\d+)/(\d+)\) ")


@dataclass(frozen=True, slots=True)
class TextModePart:
    """One separate text: `text` is what the phone shows (with its number prefix)."""

    text: str
    coding: TextCoding
    seq: int
    total: int

    @property
    def body(self) -> str:
        """What is written after the "> " prompt: the text, or its UCS-2 hex."""
        if self.coding == "ucs2":
            return self.text.encode("utf-16-be").hex().upper()
        return self.text

    @property
    def dcs(self) -> int:
        """The AT+CSMP <dcs> it needs (TS 23.038 4: 0 GSM 7-bit, 8 UCS-2)."""
        return 8 if self.coding == "ucs2" else 0


def coding_of(text: str) -> TextCoding:
    """ "ira" when every character is plain (`PLAIN_CHARS`), else "ucs2"."""
    return "ira" if all(ch in PLAIN_CHARS for ch in text) else "ucs2"


def units(text: str, coding: TextCoding) -> int:
    """What `text` costs in one part: characters (plain) or UTF-16 code units (UCS-2)."""
    if coding == "ira":
        return len(text)
    return sum(2 if ord(ch) > 0xFFFF else 1 for ch in text)


def number_prefix(seq: int, total: int) -> str:
    """The "(2/3) " in front of each part of a long text."""
    return f"({seq}/{total}) "


def _cut(text: str, coding: TextCoding, total: int) -> list[str] | None:
    """`text` cut into pieces that fit after their "(k/total) " prefix; None when it needs
    more than `total` pieces. A piece ends after a space where one is in its last third,
    so words stay whole; else it is cut at the limit."""
    limit = PLAIN_LIMIT if coding == "ira" else UCS2_LIMIT
    pieces: list[str] = []
    start = 0
    while start < len(text):
        seq = len(pieces) + 1
        if seq > total:
            return None
        room = limit - len(number_prefix(seq, total))
        end = start
        used = 0
        while end < len(text):
            cost = 2 if coding == "ucs2" and ord(text[end]) > 0xFFFF else 1
            if used + cost > room:
                break
            used += cost
            end += 1
        if end < len(text):
            space = text.rfind(" ", start, end)
            if space >= 0 and (space + 1 - start) * 3 >= (end - start) * 2:
                end = space + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def split_text_mode(text: str) -> list[TextModePart]:
    """The separate texts text mode sends for `text`, in order.

    One part, as it is, when it fits one SMS of its coding; else numbered parts whose
    prefix and piece together fit one SMS each. Joining the pieces (without prefixes)
    gives `text` back. ValueError for an empty text, a lone surrogate, or more than
    `MAX_TEXT_PARTS` parts."""
    if not text:
        raise ValueError("empty text")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        raise ValueError("text contains a lone surrogate code point")
    coding = coding_of(text)
    limit = PLAIN_LIMIT if coding == "ira" else UCS2_LIMIT
    if units(text, coding) <= limit:
        return [TextModePart(text, coding, 1, 1)]
    # The prefix grows with the number of parts ("(10/12) " is longer than "(9/9) "):
    # try totals from the fewest possible up until the text fits in that many.
    total = 2
    while True:
        pieces = _cut(text, coding, total)
        if pieces is not None:
            break
        total += 1
        if total > MAX_TEXT_PARTS:
            raise ValueError(f"text needs more than {MAX_TEXT_PARTS} separate texts in text mode")
    n = len(pieces)
    return [
        TextModePart(number_prefix(seq, n) + piece, coding, seq, n)
        for seq, piece in enumerate(pieces, start=1)
    ]


def join_text_mode(shown: list[str]) -> str:
    """The text a reader pieces together from separate numbered texts (tests and tools):
    each "(k/n) " prefix removed, in the order given. ValueError when a numbered part is
    out of order or its total disagrees."""
    if len(shown) == 1:
        return shown[0]
    out: list[str] = []
    for seq, part in enumerate(shown, start=1):
        m = _PREFIX_RE.match(part)
        if m is None or int(m.group(1)) != seq or int(m.group(2)) != len(shown):
            raise ValueError(f"part {seq} of {len(shown)} is numbered wrong: {part[:12]!r}")
        out.append(part[m.end() :])
    return "".join(out)
