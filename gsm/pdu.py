"""SMS PDUs (3GPP TS 23.040) for PDU-mode modems: encode and decode, pure, no I/O.

What is here:

* :func:`sms_info` and :func:`split_text`: the encoding a text needs (GSM-7 when every
  character is in the default alphabet or its extension table, else UCS-2, which is
  UTF-16-BE so that emoji travel as surrogate pairs) and how it splits into parts:
  160 septets or 70 UTF-16 units in one part; 153 / 67 per part when concatenated (a
  6-octet User Data Header with IEI 0x00 takes the rest). A part never ends inside an
  escape pair or a surrogate pair, because the split is made per character.
* :func:`encode_submit` / :func:`decode_submit`: SMS-SUBMIT, with concatenation,
  relative validity period (TP-VPF = 10), status report request (TP-SRR).
* :func:`encode_deliver` / :func:`decode_deliver` and :func:`encode_status_report` /
  :func:`decode_status_report`: what the network sends to the modem; the encoders exist
  so that the simulator can inject inbound texts and delivery reports.
* :class:`Reassembler`: puts concatenated inbound parts back together, in bounded memory.

Every hex string carries the SMSC field first, as AT+CMGS, +CMGR, +CMGL and +CDS do
(TS 27.005 3.1): "00" means "the SIM's SMSC". Decoders raise :class:`PduError` (a
ValueError) for anything malformed, never IndexError or the like. One leniency, taken
from real traffic: when TP-UDL promises more user data than the PDU holds (a vector in
tests/data/modem/pdu-vectors.json shows a real stack doing so), the user data that is
there is decoded; everything before the user data, and the User Data Header, must be
complete.

Written by hand: the Python SMS PDU libraries are unmaintained (smspdu: 2011, Python 2;
python-gsmmodem: 2013, its forks bundle a whole modem driver; python-messaging: 2020,
untyped, no status-report encoder), smspdudecoder only decodes, and pdubuild only builds
single SMS-SUBMITs. We need typed encoders and decoders for all three message types,
the simulator's side included, under mypy --strict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal

from gsm import gsm7

__all__ = [
    "MAX_PARTS",
    "MAX_USER_DATA_OCTETS",
    "Concat",
    "DataCoding",
    "Deliver",
    "Encoding",
    "PduError",
    "Reassembler",
    "SmsInfo",
    "StatusReport",
    "Submit",
    "SubmitPart",
    "data_coding",
    "decode_deliver",
    "decode_incoming",
    "decode_status_report",
    "decode_submit",
    "encode_deliver",
    "encode_status_report",
    "encode_submit",
    "join_parts",
    "sms_info",
    "split_text",
    "tpdu_length",
    "validity_minutes_of",
    "validity_octet",
]

Encoding = Literal["gsm7", "ucs2"]
"""The encodings we send: GSM 7-bit default alphabet or UCS-2 (UTF-16-BE)."""
DataCoding = Literal["gsm7", "8bit", "ucs2"]
"""What a received PDU may carry: the two we send, plus 8-bit data (decoded as Latin-1)."""

GSM7_SINGLE = 160
GSM7_MULTI = 153
UCS2_SINGLE = 70
UCS2_MULTI = 67
MAX_USER_DATA_OCTETS = 140
"""TP-UD is at most 140 octets (TS 23.040 9.2.3.24)."""
MAX_PARTS = 255
"""An 8-bit concatenation IE counts parts in one octet."""
_MAX_ADDRESS_DIGITS = 20  # TS 23.040 9.1.2.5: at most 10 octets of address value

_DCS_GSM7 = 0x00
_DCS_UCS2 = 0x08
_IEI_CONCAT_8 = 0x00
_IEI_CONCAT_16 = 0x08

# TS 23.040 9.2.3.1: TP-MTI, in the direction the PDU travels.
_MTI_DELIVER = 0
_MTI_SUBMIT = 1
_MTI_STATUS_REPORT = 2
# TS 23.040 9.2.3.1: an MS that receives the reserved TP-MTI (3) handles the TPDU as an
# SMS-DELIVER.
_MTI_RESERVED = 3

_NUMBER_RE = re.compile(r"\+?[0-9]{1,20}")
_HEX_RE = re.compile(r"(?:[0-9A-Fa-f]{2})+")
# TS 23.040 9.1.2.3: semi-octet values 0xA..0xE stand for these characters.
_SEMI_OCTET_CHARS = "0123456789*#abc"
# Time stamps carry two year digits. SMS began in the 1990s, so 90-99 are 1990-1999
# (the classic 23.040 examples are dated 1999) and 00-89 are 2000-2089.
_FIRST_YEAR = 1990


def _century_year(yy: int) -> int:
    return 1900 + yy if yy >= _FIRST_YEAR % 100 else 2000 + yy


class PduError(ValueError):
    """A PDU that cannot be decoded: malformed, truncated, or of an unexpected type."""


@dataclass(frozen=True, slots=True)
class SmsInfo:
    """What a text costs, known before sending."""

    encoding: Encoding
    parts: int
    units: int
    """Septets (GSM-7, extension characters count two) or UTF-16 code units (UCS-2)."""
    chars_per_part: int
    """160 or 153 (GSM-7), 70 or 67 (UCS-2): units a part holds, single or concatenated."""


@dataclass(frozen=True, slots=True)
class SubmitPart:
    """One SMS-SUBMIT ready for AT+CMGS=<tpdu_length>."""

    pdu: str
    """Upper-case hex, including the leading SMSC field ("00" = the SIM's SMSC)."""
    tpdu_length: int
    """Octets after the SMSC field: the <length> of AT+CMGS."""
    text: str
    seq: int
    total: int


@dataclass(frozen=True, slots=True)
class Concat:
    """A concatenation information element (TS 23.040 9.2.3.24.1 / .8)."""

    reference: int
    total: int
    seq: int


@dataclass(frozen=True, slots=True)
class Submit:
    """A decoded SMS-SUBMIT."""

    number: str
    text: str
    concat: Concat | None
    status_report_requested: bool
    validity_minutes: int | None
    """The relative validity period; None when absent or not relative."""
    encoding: DataCoding
    message_ref: int = 0
    reject_duplicates: bool = False
    smsc: str | None = None
    validity_absolute: datetime | None = None
    """The absolute validity period (TP-VPF = 11), when that form was used."""


@dataclass(frozen=True, slots=True)
class Deliver:
    """A decoded SMS-DELIVER: an inbound text, or one part of one."""

    sender: str
    """"+digits" (international), digits, or an alphanumeric name."""
    text: str
    timestamp: datetime
    """The service centre time stamp, with its time zone."""
    concat: Concat | None
    encoding: DataCoding
    smsc: str | None = None
    incomplete: bool = False
    """Some parts of a concatenated text never came: `text` holds the parts that did, in
    order, and `missing` numbers the others (1-based)."""
    missing: tuple[int, ...] = ()
    slots: tuple[str, ...] = ()
    """The SIM storage slots ("SM:3") the modem read this text (every part) from, under
    a keeper; empty for a direct +CMT. The same slots again mean the same stored text
    read again (a refused or undeleted one), not a new one. Set by the modem driver."""


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A decoded SMS-STATUS-REPORT (TS 23.040 9.2.2.3)."""

    message_ref: int
    """The TP-MR of the SMS-SUBMIT it reports on (what +CMGS answered)."""
    recipient: str
    status: int
    """TP-ST (TS 23.040 9.2.3.15)."""
    delivered: bool
    """The message reached the recipient (TP-ST 0x00-0x1F: transaction completed)."""
    final: bool
    """No further report will follow (only 0x20-0x3F says the SC is still trying)."""
    scts: datetime
    discharge: datetime


# --------------------------------------------------------------------------- text


def _check_text(text: str) -> None:
    for ch in text:
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise ValueError("text contains a lone surrogate code point")


def _ucs2_units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def _split(text: str) -> tuple[Encoding, list[str], int]:
    """Encoding, parts, total units; no limit on the number of parts."""
    _check_text(text)
    if gsm7.is_gsm7(text):
        encoding: Encoding = "gsm7"
        costs = [gsm7.septet_cost(ch) for ch in text]
        single, multi = GSM7_SINGLE, GSM7_MULTI
    else:
        encoding = "ucs2"
        costs = [_ucs2_units(ch) for ch in text]
        single, multi = UCS2_SINGLE, UCS2_MULTI
    total = sum(costs)
    if total <= single:
        return encoding, [text], total
    # Per character, so an escape pair or a surrogate pair always stays in one part.
    parts: list[str] = []
    start = 0
    used = 0
    for i, cost in enumerate(costs):
        if used + cost > multi:
            parts.append(text[start:i])
            start, used = i, 0
        used += cost
    parts.append(text[start:])
    return encoding, parts, total


def split_text(text: str) -> tuple[Encoding, list[str]]:
    """The encoding the text needs and the texts of its parts, in order.

    Never splits an escape pair or a surrogate pair. ValueError for a lone surrogate
    or a text needing more than 255 parts.
    """
    encoding, parts, _ = _split(text)
    if len(parts) > MAX_PARTS:
        raise ValueError(f"text needs {len(parts)} parts; at most {MAX_PARTS} can be sent")
    return encoding, parts


def sms_info(text: str) -> SmsInfo:
    """What sending ``text`` costs: encoding, parts, units. ValueError on a lone surrogate."""
    encoding, parts, units = _split(text)
    if encoding == "gsm7":
        per_part = GSM7_SINGLE if len(parts) == 1 else GSM7_MULTI
    else:
        per_part = UCS2_SINGLE if len(parts) == 1 else UCS2_MULTI
    return SmsInfo(encoding=encoding, parts=len(parts), units=units, chars_per_part=per_part)


# ------------------------------------------------------------------ addresses, times


def _check_number(number: str, what: str) -> tuple[int, str]:
    """(type of address, digits) of a "+digits" or "digits" number; ValueError otherwise."""
    # fullmatch, not match with "$": "$" would let a trailing newline through.
    if not isinstance(number, str) or _NUMBER_RE.fullmatch(number) is None:
        raise ValueError(f"{what} must be '+' and 1-20 digits, or 1-20 digits: {number!r}")
    if number.startswith("+"):
        return 0x91, number[1:]  # international, ISDN/telephony numbering plan
    # Unknown type of number: the network reads the digits as dialled. ("National", 0xA1,
    # as python-gsmmodem uses, would claim the digits lack any prefix, which a number with
    # a leading trunk 0 does not.)
    return 0x81, number


def _semi_octets(digits: str) -> bytes:
    if len(digits) % 2:
        digits += "F"
    return bytes(int(digits[i + 1] + digits[i], 16) for i in range(0, len(digits), 2))


def _encode_address(number: str, what: str) -> bytes:
    """TP-DA / TP-OA / TP-RA: digit count, type of address, semi-octets."""
    toa, digits = _check_number(number, what)
    return bytes([len(digits), toa]) + _semi_octets(digits)


def _encode_alpha_address(name: str) -> bytes:
    """An alphanumeric TP-OA (type 0xD0): GSM-7 packed, at most 11 characters."""
    try:
        septets = gsm7.encode_septets(name)
    except ValueError as exc:
        raise ValueError(f"sender {name!r} is neither a number nor GSM-7 text") from exc
    if not 1 <= len(septets) <= 11:
        raise ValueError(f"alphanumeric sender must be 1-11 GSM-7 septets: {name!r}")
    packed = gsm7.pack_septets(septets)
    return bytes([(len(septets) * 7 + 3) // 4, 0xD0]) + packed


def _encode_smsc(smsc: str | None) -> bytes:
    """The SMSC field of TS 24.011 (length in octets, then type and semi-octets)."""
    if smsc is None:
        return b"\x00"
    toa, digits = _check_number(smsc, "SMSC")
    body = bytes([toa]) + _semi_octets(digits)
    return bytes([len(body)]) + body


def _encode_timestamp(when: datetime, what: str) -> bytes:
    """TP-SCTS / TP-DT: seven swapped semi-octet pairs, time zone in quarter hours."""
    offset = when.utcoffset()
    if offset is None:
        raise ValueError(f"{what} must be timezone-aware: {when!r}")
    if not _FIRST_YEAR <= when.year < _FIRST_YEAR + 100:
        raise ValueError(f"{what} year must be {_FIRST_YEAR}-{_FIRST_YEAR + 99}: {when!r}")
    minutes, rest = divmod(offset, timedelta(minutes=15))
    if rest:
        raise ValueError(f"{what} UTC offset must be whole quarter hours: {offset}")
    quarters = abs(minutes)
    if quarters > 79:  # the tens digit has three bits; real zones stay within +-14 h
        raise ValueError(f"{what} UTC offset beyond +-19:45 cannot be sent: {offset}")
    fields = [when.year % 100, when.month, when.day, when.hour, when.minute, when.second]
    out = bytearray(((v % 10) << 4) | (v // 10) for v in fields)
    out.append(((quarters % 10) << 4) | (quarters // 10) | (0x08 if minutes < 0 else 0))
    return bytes(out)


def validity_octet(minutes: int) -> int:
    """The relative TP-VP octet (TS 23.040 9.2.3.12.1) for a period of ``minutes``.

    Rounds up to the next period the octet can say (5-minute steps up to 12 h, 30-minute
    steps to 24 h, days to 30 days, weeks to 63 weeks); longer periods get 63 weeks.
    ValueError for a period below one minute.
    """
    if minutes < 1:
        raise ValueError(f"validity must be at least 1 minute, not {minutes}")
    if minutes <= 720:
        return -(-minutes // 5) - 1
    if minutes <= 1440:
        return 143 + -(-(minutes - 720) // 30)
    if minutes <= 30 * 1440:
        return max(168, 166 + -(-minutes // 1440))
    return min(255, max(197, 192 + -(-minutes // 10080)))


def validity_minutes_of(octet: int) -> int:
    """Minutes a relative TP-VP octet stands for (TS 23.040 9.2.3.12.1)."""
    if not 0 <= octet <= 255:
        raise ValueError(f"TP-VP octet out of range: {octet}")
    if octet <= 143:
        return (octet + 1) * 5
    if octet <= 167:
        return 720 + (octet - 143) * 30
    if octet <= 196:
        return (octet - 166) * 1440
    return (octet - 192) * 10080


# ------------------------------------------------------------------------- encoding


def _user_data(text: str, encoding: Encoding, udh: bytes) -> tuple[int, bytes]:
    """(TP-UDL, TP-UD) for a part, the header included."""
    if encoding == "gsm7":
        septets = gsm7.encode_septets(text)
        if not udh:
            return len(septets), gsm7.pack_septets(septets)
        # The text starts on a septet boundary after the header (TS 23.040 9.2.3.24).
        fill = (7 - len(udh) * 8 % 7) % 7
        header_septets = (len(udh) * 8 + fill) // 7
        return header_septets + len(septets), udh + gsm7.pack_septets(septets, fill)
    data = udh + text.encode("utf-16-be")
    return len(data), data


def _concat_udh(reference: int, total: int, seq: int) -> bytes:
    return bytes([5, _IEI_CONCAT_8, 3, reference, total, seq])


def _check_octet(value: int, what: str) -> None:
    if not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError(f"{what} must be 0-255, not {value!r}")


def encode_submit(
    number: str,
    text: str,
    *,
    reference: int = 0,
    request_status_report: bool = False,
    validity_minutes: int | None = None,
    smsc: str | None = None,
    message_ref: int = 0,
    reject_duplicates: bool = False,
) -> list[SubmitPart]:
    """SMS-SUBMIT PDUs for ``text`` to ``number``, one per part.

    ``number`` (and ``smsc``) must be "+digits" or digits, else ValueError: nothing
    else reaches the modem. ``reference`` is the concatenation reference (8-bit IE
    0x00), used only when the text needs more than one part. ``validity_minutes`` sets a
    relative validity period, rounded up to one TP-VP can say. ``message_ref`` is
    TP-MR; most modems put their own in its place.
    """
    da = _encode_address(number, "number")
    smsc_field = _encode_smsc(smsc)
    _check_octet(reference, "reference")
    _check_octet(message_ref, "message_ref")
    encoding, parts = split_text(text)
    total = len(parts)
    first = _MTI_SUBMIT
    if reject_duplicates:
        first |= 0x04
    vp = b""
    if validity_minutes is not None:
        first |= 0x10  # TP-VPF = 10: relative, one octet
        vp = bytes([validity_octet(validity_minutes)])
    if request_status_report:
        first |= 0x20
    if total > 1:
        first |= 0x40  # TP-UDHI
    dcs = _DCS_GSM7 if encoding == "gsm7" else _DCS_UCS2
    out: list[SubmitPart] = []
    for seq, part in enumerate(parts, start=1):
        udh = _concat_udh(reference, total, seq) if total > 1 else b""
        udl, ud = _user_data(part, encoding, udh)
        tpdu = bytes([first, message_ref]) + da + bytes([0x00, dcs]) + vp + bytes([udl]) + ud
        pdu = (smsc_field + tpdu).hex().upper()
        out.append(SubmitPart(pdu=pdu, tpdu_length=len(tpdu), text=part, seq=seq, total=total))
    return out


def encode_deliver(
    sender: str,
    text: str,
    *,
    timestamp: datetime,
    smsc: str | None = None,
    reference: int = 0,
) -> list[str]:
    """SMS-DELIVER PDUs (hex, SMSC field first) as the network would hand them to a modem.

    ``sender`` is "+digits", digits, or an alphanumeric name of at most 11 GSM-7
    septets. Long texts are concatenated with ``reference``. ``timestamp`` must be
    timezone-aware. For the simulator, to inject inbound texts.
    """
    if _NUMBER_RE.fullmatch(sender) is not None:
        oa = _encode_address(sender, "sender")
    else:
        oa = _encode_alpha_address(sender)
    smsc_field = _encode_smsc(smsc)
    _check_octet(reference, "reference")
    scts = _encode_timestamp(timestamp, "timestamp")
    encoding, parts = split_text(text)
    total = len(parts)
    first = _MTI_DELIVER | 0x04  # TP-MMS = 1: no more messages waiting
    if total > 1:
        first |= 0x40
    dcs = _DCS_GSM7 if encoding == "gsm7" else _DCS_UCS2
    out: list[str] = []
    for seq, part in enumerate(parts, start=1):
        udh = _concat_udh(reference, total, seq) if total > 1 else b""
        udl, ud = _user_data(part, encoding, udh)
        tpdu = bytes([first]) + oa + bytes([0x00, dcs]) + scts + bytes([udl]) + ud
        out.append((smsc_field + tpdu).hex().upper())
    return out


def encode_status_report(
    message_ref: int,
    recipient: str,
    *,
    status: int = 0,
    scts: datetime,
    discharge: datetime,
    smsc: str | None = None,
) -> str:
    """An SMS-STATUS-REPORT PDU (hex, SMSC field first), for the simulator's +CDS."""
    _check_octet(message_ref, "message_ref")
    _check_octet(status, "status")
    ra = _encode_address(recipient, "recipient")
    tpdu = (
        bytes([_MTI_STATUS_REPORT | 0x04, message_ref])
        + ra
        + _encode_timestamp(scts, "scts")
        + _encode_timestamp(discharge, "discharge")
        + bytes([status])
    )
    return (_encode_smsc(smsc) + tpdu).hex().upper()


# ------------------------------------------------------------------------- decoding


class _Reader:
    """Reads octets and raises PduError, naming the field, when they run out."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def octet(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise PduError(f"PDU ends before {what}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise PduError(f"PDU ends inside {what}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk


def _from_hex(pdu_hex: str) -> bytes:
    if not isinstance(pdu_hex, str):
        raise PduError(f"PDU must be a hex string, not {type(pdu_hex).__name__}")
    stripped = pdu_hex.strip()
    if _HEX_RE.fullmatch(stripped) is None:
        raise PduError("PDU is not an even number of hex digits")
    return bytes.fromhex(stripped)


def _digits(octets: bytes, count: int, what: str) -> str:
    nibbles = [n for octet in octets for n in (octet & 0x0F, octet >> 4)][:count]
    if 0x0F in nibbles:
        # Some stacks count the filler in the length (a real one in pdu-vectors.json):
        # a filler ends the digits, provided only fillers follow it.
        end = nibbles.index(0x0F)
        if any(n != 0x0F for n in nibbles[end:]):
            raise PduError(f"{what}: filler nibble inside the digits")
        nibbles = nibbles[:end]
    return "".join(_SEMI_OCTET_CHARS[n] for n in nibbles)


def _read_smsc(reader: _Reader) -> str | None:
    length = reader.octet("the SMSC length")
    if length == 0:
        return None
    if length > 11:
        raise PduError(f"SMSC field of {length} octets (at most 11)")
    body = reader.take(length, "the SMSC address")
    toa = body[0]
    value = body[1:]
    count = 2 * len(value)
    if value and value[-1] >> 4 == 0x0F:
        count -= 1
    digits = _digits(value, count, "SMSC address")
    return _with_ton(toa, digits)


def _with_ton(toa: int, digits: str) -> str:
    if (toa >> 4) & 0x07 == 0x01 and digits:
        return "+" + digits
    return digits


def _read_address(reader: _Reader, what: str) -> str:
    count = reader.octet(f"the {what} length")
    if count > _MAX_ADDRESS_DIGITS:
        raise PduError(f"{what} of {count} semi-octets (at most {_MAX_ADDRESS_DIGITS})")
    toa = reader.octet(f"the {what} type")
    value = reader.take((count + 1) // 2, f"the {what}")
    if (toa >> 4) & 0x07 == 0x05:  # alphanumeric, GSM-7 packed (TS 23.040 9.1.2.5)
        septets = gsm7.unpack_septets(value, count * 4 // 7)
        return gsm7.decode_septets(septets)
    return _with_ton(toa, _digits(value, count, what))


def _read_timestamp(reader: _Reader, what: str) -> datetime:
    raw = reader.take(7, what)
    values: list[int] = []
    for octet in raw[:6]:
        low, high = octet & 0x0F, octet >> 4
        if low > 9 or high > 9:
            raise PduError(f"{what}: non-decimal digit in {octet:02X}")
        values.append(low * 10 + high)
    tz = raw[6]
    tens, units = tz & 0x07, tz >> 4
    if units > 9:
        raise PduError(f"{what}: non-decimal time zone {tz:02X}")
    quarters = tens * 10 + units
    if tz & 0x08:
        quarters = -quarters
    year, month, day, hour, minute, second = values
    try:
        return datetime(
            _century_year(year),
            month,
            day,
            hour,
            minute,
            second,
            tzinfo=timezone(timedelta(minutes=15 * quarters)),
        )
    except ValueError as exc:
        raise PduError(f"{what}: {exc}") from exc


def data_coding(dcs: int) -> DataCoding:
    """The alphabet of a TP-DCS octet (TS 23.038 4); PduError for compressed data.

    Text mode shows the TP-DCS too (AT+CSDH=1), so the text-mode parsers use this.
    """
    return _coding(dcs)


def _coding(dcs: int) -> DataCoding:
    """The alphabet of a TP-DCS octet (TS 23.038 4)."""
    group = dcs >> 4
    if group <= 0x07:  # general data coding, with or without automatic deletion
        if dcs & 0x20:
            raise PduError(f"compressed user data (TP-DCS {dcs:02X}) is not supported")
        alphabet = (dcs >> 2) & 0x03
        if alphabet == 1:
            return "8bit"
        if alphabet == 2:
            return "ucs2"
        return "gsm7"  # 0, and the reserved 3, which TS 23.038 says to read as GSM-7
    if group == 0x0E:  # message waiting indication, UCS-2
        return "ucs2"
    if group == 0x0F:  # data coding / message class
        return "8bit" if dcs & 0x04 else "gsm7"
    return "gsm7"  # 0xC, 0xD (message waiting, GSM-7) and reserved groups


def _parse_udh(udh: bytes) -> Concat | None:
    """The concatenation IE of a User Data Header (without its length octet), if any."""
    concat: Concat | None = None
    i = 0
    while i < len(udh):
        if i + 2 > len(udh):
            raise PduError("User Data Header ends inside an information element")
        iei, iel = udh[i], udh[i + 1]
        data = udh[i + 2 : i + 2 + iel]
        if len(data) < iel:
            raise PduError(f"User Data Header element {iei:02X} overruns the header")
        i += 2 + iel
        if iei == _IEI_CONCAT_8 and iel == 3:
            reference, total, seq = data
        elif iei == _IEI_CONCAT_16 and iel == 4:
            reference, total, seq = (data[0] << 8) | data[1], data[2], data[3]
        else:
            continue  # other elements (ports, language shifts...) carry no text
        # TS 23.040 9.2.3.24.1: a zero count or number, or a number past the count,
        # means the receiver ignores the element.
        if total == 0 or seq == 0 or seq > total:
            continue
        concat = Concat(reference=reference, total=total, seq=seq)
    return concat


def _read_user_data(reader: _Reader, udhi: bool, coding: DataCoding) -> tuple[str, Concat | None]:
    udl = reader.octet("TP-UDL")
    data = reader.rest()
    header = b""
    concat: Concat | None = None
    if udhi:
        if not data:
            raise PduError("TP-UDHI set but no user data")
        header = data[: 1 + data[0]]
        if len(header) < 1 + data[0]:
            raise PduError("PDU ends inside the User Data Header")
        concat = _parse_udh(header[1:])
    if coding == "gsm7":
        fill = (7 - len(header) * 8 % 7) % 7
        header_septets = (len(header) * 8 + fill) // 7
        if udl < header_septets:
            raise PduError(f"TP-UDL {udl} is shorter than the User Data Header")
        body = data[len(header) :]
        # Lenient on a short body (see the module docstring): decode the septets present.
        count = min(udl - header_septets, (len(body) * 8 - fill) // 7) if body else 0
        try:
            text = gsm7.decode_septets(gsm7.unpack_septets(body, count, fill))
        except ValueError as exc:  # pragma: no cover - count is bounded above
            raise PduError(str(exc)) from exc
        return text, concat
    if udl < len(header):
        raise PduError(f"TP-UDL {udl} is shorter than the User Data Header")
    body = data[len(header) : udl]
    if coding == "ucs2":
        # "replace": a lone surrogate from a sloppy sender becomes U+FFFD, not a crash.
        return body.decode("utf-16-be", errors="replace"), concat
    return body.decode("latin-1"), concat


def decode_user_data(
    udl: int, data: bytes, *, udhi: bool, coding: DataCoding
) -> tuple[str, Concat | None]:
    """TP-UD as text mode shows it in hex (27.005 3.1 <data> with TP-UDHI set): the text
    and the concatenation element of its User Data Header. `udl` is TP-UDL (septets for
    GSM-7, octets otherwise)."""
    return _read_user_data(_Reader(bytes([min(max(udl, 0), 255)]) + data), udhi, coding)


def _start(pdu_hex: str) -> tuple[_Reader, str | None, int]:
    reader = _Reader(_from_hex(pdu_hex))
    smsc = _read_smsc(reader)
    first = reader.octet("the first octet")
    return reader, smsc, first


def _check_mti(first: int, expected: int, name: str) -> None:
    if first & 0x03 != expected:
        raise PduError(f"not an {name} (TP-MTI {first & 0x03})")


def decode_submit(pdu_hex: str) -> Submit:
    """Decode an SMS-SUBMIT (hex, SMSC field first), as a modem receives it after AT+CMGS."""
    reader, smsc, first = _start(pdu_hex)
    _check_mti(first, _MTI_SUBMIT, "SMS-SUBMIT")
    return _decode_submit_body(reader, smsc, first)


def _decode_submit_body(reader: _Reader, smsc: str | None, first: int) -> Submit:
    message_ref = reader.octet("TP-MR")
    number = _read_address(reader, "destination address")
    reader.octet("TP-PID")
    coding = _coding(reader.octet("TP-DCS"))
    vpf = (first >> 3) & 0x03
    validity_minutes: int | None = None
    validity_absolute: datetime | None = None
    if vpf == 2:
        validity_minutes = validity_minutes_of(reader.octet("TP-VP"))
    elif vpf == 3:
        validity_absolute = _read_timestamp(reader, "TP-VP")
    elif vpf == 1:
        reader.take(7, "TP-VP")  # enhanced format: not something we send or act on
    text, concat = _read_user_data(reader, bool(first & 0x40), coding)
    return Submit(
        number=number,
        text=text,
        concat=concat,
        status_report_requested=bool(first & 0x20),
        validity_minutes=validity_minutes,
        encoding=coding,
        message_ref=message_ref,
        reject_duplicates=bool(first & 0x04),
        smsc=smsc,
        validity_absolute=validity_absolute,
    )


def _decode_deliver_body(reader: _Reader, smsc: str | None, first: int) -> Deliver:
    sender = _read_address(reader, "originating address")
    reader.octet("TP-PID")
    coding = _coding(reader.octet("TP-DCS"))
    timestamp = _read_timestamp(reader, "TP-SCTS")
    text, concat = _read_user_data(reader, bool(first & 0x40), coding)
    return Deliver(
        sender=sender,
        text=text,
        timestamp=timestamp,
        concat=concat,
        encoding=coding,
        smsc=smsc,
    )


def _decode_status_body(reader: _Reader, first: int) -> StatusReport:
    del first  # TP-MMS, TP-SRQ: nothing we act on
    message_ref = reader.octet("TP-MR")
    recipient = _read_address(reader, "recipient address")
    scts = _read_timestamp(reader, "TP-SCTS")
    discharge = _read_timestamp(reader, "TP-DT")
    status = reader.octet("TP-ST")
    # Optional TP-PI, TP-PID, TP-DCS, TP-UD may follow; a delivery report needs none.
    return StatusReport(
        message_ref=message_ref,
        recipient=recipient,
        status=status,
        delivered=status < 0x20,
        final=not 0x20 <= status < 0x40,
        scts=scts,
        discharge=discharge,
    )


def decode_deliver(pdu_hex: str) -> Deliver:
    """Decode an SMS-DELIVER (hex, SMSC field first), as +CMGR / +CMGL / +CMT give it."""
    reader, smsc, first = _start(pdu_hex)
    if first & 0x03 != _MTI_RESERVED:
        _check_mti(first, _MTI_DELIVER, "SMS-DELIVER")
    return _decode_deliver_body(reader, smsc, first)


def decode_status_report(pdu_hex: str) -> StatusReport:
    """Decode an SMS-STATUS-REPORT (hex, SMSC field first), as +CDS gives it."""
    reader, _, first = _start(pdu_hex)
    _check_mti(first, _MTI_STATUS_REPORT, "SMS-STATUS-REPORT")
    return _decode_status_body(reader, first)


def decode_incoming(pdu_hex: str) -> Deliver | StatusReport:
    """Decode what the network sent, by TP-MTI: an SMS-DELIVER or an SMS-STATUS-REPORT."""
    reader, smsc, first = _start(pdu_hex)
    mti = first & 0x03
    if mti in (_MTI_DELIVER, _MTI_RESERVED):
        return _decode_deliver_body(reader, smsc, first)
    if mti == _MTI_STATUS_REPORT:
        return _decode_status_body(reader, first)
    raise PduError(f"not an incoming message (TP-MTI {mti})")


def tpdu_length(pdu_hex: str) -> int:
    """Octets after the SMSC field: the <length> that AT+CMGS, +CMGL, +CMT and +CDS use."""
    reader = _Reader(_from_hex(pdu_hex))
    length = reader.octet("the SMSC length")
    reader.take(length, "the SMSC address")
    return len(reader.rest())


# --------------------------------------------------------------------- reassembly


def join_parts(parts: list[Deliver], total: int | None = None) -> Deliver:
    """One text from its parts (in order): their texts joined, the first part's sender,
    time stamp and SMSC, ``concat`` None. With ``total`` (the parts the text announced)
    any part number not among ``parts`` makes it ``incomplete``, listed in ``missing``.
    """
    if not parts:
        raise ValueError("no parts to join")
    head = parts[0]
    encoding: DataCoding = "ucs2" if any(p.encoding == "ucs2" for p in parts) else head.encoding
    have = {p.concat.seq for p in parts if p.concat is not None}
    missing = tuple(n for n in range(1, total + 1) if n not in have) if total else ()
    return Deliver(
        sender=head.sender,
        text="".join(p.text for p in parts),
        timestamp=head.timestamp,
        concat=None,
        encoding=encoding,
        smsc=head.smsc,
        incomplete=bool(missing),
        missing=missing,
    )


@dataclass(slots=True)
class _Group:
    key: tuple[str, int, int]
    first_seen: float
    parts: dict[int, Deliver] = field(default_factory=dict)


class Reassembler:
    """Puts concatenated SMS-DELIVER parts back together, in bounded memory.

    Parts are grouped by (sender, reference, total). Senders reuse references, so two
    messages may share a key while both are incomplete: a part goes to the oldest
    group of its key that lacks its number, and only a part equal in every field to one
    already held counts as a duplicate. A group waits at most ``max_age`` seconds (of
    the injected ``now``) from its first part, and at most ``max_pending`` groups wait at
    once (the oldest gives way). A group that times out or gives way is not dropped:
    :meth:`pop_stale` hands its parts out so the caller can keep them. Only when even
    that list is full (``max_pending`` groups nobody collected) are the oldest dropped,
    counted in ``dropped``.
    """

    def __init__(self, *, max_pending: int = 64, max_age: float = 1800.0) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        self.max_pending = max_pending
        self.max_age = max_age
        # Oldest first; at most max_pending entries, so a linear scan is cheap.
        self._pending: list[_Group] = []
        self._stale: list[list[Deliver]] = []
        self.duplicates = 0
        """Parts received twice (equal in every field); the first copy is kept."""
        self.dropped = 0
        """Incomplete groups dropped because nobody collected them with pop_stale."""

    @property
    def pending(self) -> int:
        """Incomplete groups waiting for parts."""
        return len(self._pending)

    def add(self, msg: Deliver, now: float) -> Deliver | None:
        """Add one part; the whole message when it is complete, else None.

        A message without concatenation (or with a total of 1) comes straight back. The
        whole message has the parts' texts in order, the first part's time stamp, and
        ``concat`` None.
        """
        self._expire(now)
        if msg.concat is None or msg.concat.total == 1:
            return msg
        key = (msg.sender, msg.concat.reference, msg.concat.total)
        seq = msg.concat.seq
        group: _Group | None = None
        for candidate in self._pending:
            if candidate.key != key:
                continue
            held = candidate.parts.get(seq)
            if held == msg:
                self.duplicates += 1
                return None
            if held is None and group is None:
                group = candidate
        if group is None:
            if len(self._pending) >= self.max_pending:
                self._make_stale(self._pending.pop(0))
            group = _Group(key=key, first_seen=now)
            self._pending.append(group)
        group.parts[seq] = msg
        if len(group.parts) < msg.concat.total:
            return None
        self._pending.remove(group)
        return join_parts([group.parts[n] for n in sorted(group.parts)])

    def pop_stale(self, now: float) -> list[list[Deliver]]:
        """Incomplete messages given up on (timed out or evicted): each one's parts in order."""
        self._expire(now)
        stale, self._stale = self._stale, []
        return stale

    def _expire(self, now: float) -> None:
        while self._pending and now - self._pending[0].first_seen >= self.max_age:
            self._make_stale(self._pending.pop(0))

    def _make_stale(self, group: _Group) -> None:
        self._stale.append([group.parts[n] for n in sorted(group.parts)])
        if len(self._stale) > self.max_pending:
            del self._stale[0]
            self.dropped += 1
