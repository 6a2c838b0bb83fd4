"""AT commands as data (each with its answer prefix and its own timeout), the parsers of
their answers, and the table of per-maker quirks.

Timeouts are seconds. Where a manual gives a maximum response time we follow it (SIMCom
"SIM800 Series AT Command Manual" V1.09 lists a "Max Response Time" for every command);
otherwise 2 s, which is long for a modem that answers in tens of milliseconds and short
enough to notice a dead link quickly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from gsm import gsm7
from gsm.at import split_fields
from gsm.errors import ProtocolError
from gsm.pdu import (
    Concat,
    DataCoding,
    Deliver,
    PduError,
    StatusReport,
    data_coding,
    decode_user_data,
)

DEFAULT_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Command:
    """One AT command: what to write, how its answer lines start, how long it may take."""

    at: str
    prefix: str | None
    timeout: float
    doc: str

    def line(self, arg: str | None = None) -> str:
        """The command line to write (without CR), with `=arg` when given."""
        return self.at if arg is None else f"{self.at}={arg}"


AT = Command("AT", None, 1.0, "attention: is the modem there and listening?")
ECHO_OFF = Command("ATE0", None, DEFAULT_TIMEOUT, "no command echo (V.250 6.2.4)")
CMEE = Command("AT+CMEE", None, DEFAULT_TIMEOUT, "numeric +CME ERROR codes (27.007 9.1)")
# SIM800 manual V1.09 3.2.28 AT+CPIN; we allow 5 s, SIMs are slow right after power-up.
CPIN = Command("AT+CPIN", "+CPIN:", 5.0, "SIM state query (?) or PIN entry (27.007 8.3)")
CREG = Command("AT+CREG", "+CREG:", DEFAULT_TIMEOUT, "network registration (27.007 7.2)")
CSCA = Command("AT+CSCA", "+CSCA:", 5.0, "SMS centre address (27.005 3.3.1)")
CMGF = Command("AT+CMGF", "+CMGF:", DEFAULT_TIMEOUT, "message format: 0 PDU, 1 text (27.005 3.2.3)")
CNMI = Command("AT+CNMI", "+CNMI:", DEFAULT_TIMEOUT, "new message indications (27.005 3.4.1)")
# Switching the radio on takes a few seconds on most modules.
CFUN = Command("AT+CFUN", "+CFUN:", 10.0, "phone functionality: 1 full, 0/4 radio off (27.007 8.2)")
CEREG = Command("AT+CEREG", "+CEREG:", DEFAULT_TIMEOUT, "EPS (LTE) registration (27.007 10.1.22)")
CSCS = Command("AT+CSCS", None, DEFAULT_TIMEOUT, "TE character set (27.007 5.5)")
CSMP = Command(
    "AT+CSMP",
    "+CSMP:",
    DEFAULT_TIMEOUT,
    "text mode parameters <fo>,<vp>,<pid>,<dcs> (27.005 3.3.2)",
)
CSDH = Command("AT+CSDH", None, DEFAULT_TIMEOUT, "show text mode parameters (27.005 3.3.3)")
CPMS = Command("AT+CPMS", "+CPMS:", 5.0, "message storage to read and delete in (27.005 3.2.2)")
CGMI = Command("AT+CGMI", None, DEFAULT_TIMEOUT, "manufacturer (27.007 5.1)")
CGMM = Command("AT+CGMM", None, DEFAULT_TIMEOUT, "model (27.007 5.2)")
CGMR = Command("AT+CGMR", None, DEFAULT_TIMEOUT, "firmware revision (27.007 5.3)")
CGSN = Command("AT+CGSN", None, DEFAULT_TIMEOUT, "IMEI (27.007 5.4)")
# AT+COPS=? (a network scan) can take minutes; we only use the read form, which is quick.
COPS = Command("AT+COPS", "+COPS:", 10.0, "operator selection / current operator (27.007 7.3)")
CSQ = Command("AT+CSQ", "+CSQ:", DEFAULT_TIMEOUT, "signal quality (27.007 8.5)")
CMGR = Command("AT+CMGR", "+CMGR:", 5.0, "read a stored message (27.005 3.4.3)")
CMGD = Command("AT+CMGD", None, 5.0, "delete a stored message (27.005 3.5.4)")
CMGL = Command("AT+CMGL", "+CMGL:", 20.0, "list stored messages (27.005 3.4.2)")
# The prompt comes at once; the network may take up to a minute to accept the message
# (SIM800 manual V1.09 4.2.5 AT+CMGS: "Max Response Time 60s").
CMGS = Command("AT+CMGS", "+CMGS:", 60.0, "send a message (27.005 3.5.1)")
CMGS_PROMPT_TIMEOUT = 5.0
CRSM = Command("AT+CRSM", "+CRSM:", 5.0, "restricted SIM access, reads EF_ICCID (27.007 8.18)")


# Registration states of +CREG/+CGREG/+CEREG (27.007 7.2 <stat>).
REG_STATES: dict[int, str] = {
    0: "not registered",
    1: "registered (home)",
    2: "searching",
    3: "registration denied",
    4: "unknown",
    5: "registered (roaming)",
    6: "registered for SMS only (home)",
    7: "registered for SMS only (roaming)",
    8: "emergency only",
}
REGISTERED = frozenset({1, 5, 6, 7})

_NUMBER_RE = re.compile(r"^\+[1-9][0-9]{1,14}$")
_PIN_RE = re.compile(r"^[0-9]{4,8}$")
_HEX_RE = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")


def check_number(number: str) -> str:
    """Return `number` if it is "+" and 2..15 digits (E.164), else raise ValueError.

    This is the gate in front of every AT line that carries a number: a caller ID that
    holds quotes, CR or Ctrl-Z never reaches the modem.
    """
    if not isinstance(number, str) or not _NUMBER_RE.match(number):
        raise ValueError(f"not an international number (+ and digits): {number!r}")
    return number


def check_pin(pin: str) -> str:
    """Return `pin` if it is 4..8 digits, else raise ValueError (it goes into AT+CPIN)."""
    if not _PIN_RE.match(pin):
        raise ValueError("the SIM PIN must be 4 to 8 digits")
    return pin


def _ints(value: str, command: str, n: int) -> list[int]:
    parts = [p.strip() for p in value.split(",")]
    if len(parts) < n:
        raise ProtocolError(f"{command}: expected {n} numbers, got {value!r}")
    try:
        return [int(p) for p in parts[:n]]
    except ValueError:
        raise ProtocolError(f"{command}: not a number in {value!r}") from None


def one_value(values: list[str], command: str) -> str:
    """The single answer value of a command, or ProtocolError if it is missing."""
    if not values:
        raise ProtocolError(f"{command}: answer line missing")
    return values[0]


def parse_csq(value: str) -> tuple[int, int]:
    """`+CSQ: <rssi>,<ber>` -> (rssi, ber); 99 means unknown."""
    rssi, ber = _ints(value, "AT+CSQ", 2)
    if not (0 <= rssi <= 31 or rssi == 99 or 100 <= rssi <= 199):
        raise ProtocolError(f"AT+CSQ: rssi out of range: {value!r}")
    return rssi, ber


def csq_dbm(rssi: int) -> int | None:
    """Signal in dBm from the CSQ rssi (27.007 8.5: 0 = -113 dBm ... 31 = -51 dBm)."""
    if 0 <= rssi <= 31:
        return -113 + 2 * rssi
    return None


def parse_creg(value: str, *, query: bool = True) -> int:
    """The <stat> of a +CREG answer (`<n>,<stat>[,...]`) or URC (`<stat>[,<lac>,<ci>]`)."""
    parts = [p.strip() for p in value.split(",")]
    # A URC has <stat> first; an answer to AT+CREG? has <n>,<stat>. A URC with location
    # (n=2) has a quoted second field, which tells the two apart.
    index = 1 if query and len(parts) >= 2 and not parts[1].startswith('"') else 0
    try:
        stat = int(parts[index])
    except (ValueError, IndexError):
        raise ProtocolError(f"+CREG: cannot read {value!r}") from None
    if stat not in REG_STATES:
        raise ProtocolError(f"+CREG: unknown state in {value!r}")
    return stat


def parse_cops(value: str) -> str | None:
    """The operator name of `+COPS: <mode>[,<format>,"<oper>"[,<AcT>]]`, if any."""
    m = re.match(r'^\d+(?:,\d+,"([^"]*)")?', value.strip())
    if not m:
        raise ProtocolError(f"AT+COPS?: cannot read {value!r}")
    return m.group(1) or None


def parse_csca(value: str) -> str | None:
    """The number of an AT+CSCA? answer (`"+12025550100",145`), None when it is empty."""
    number = value.split(",", maxsplit=1)[0].strip().strip('"').strip()
    return number or None


def parse_cpin(value: str) -> str:
    """`+CPIN: READY` -> "READY" (or SIM PIN, SIM PUK, ...)."""
    state = value.strip().strip('"').upper()
    if not state:
        raise ProtocolError("AT+CPIN?: empty SIM state")
    return state


def parse_cmgs(values: list[str]) -> int:
    """The message reference of `+CMGS: <mr>[,<scts>]`."""
    value = one_value(values, "AT+CMGS")
    head = value.split(",", 1)[0].strip()
    if not head.isdigit() or int(head) > 255:
        raise ProtocolError(f"AT+CMGS: bad message reference {value!r}")
    return int(head)


def parse_cmgr_pdu(lines: tuple[str, ...]) -> str:
    """The PDU (hex) of a PDU-mode `+CMGR: <stat>,[<alpha>],<length>` answer."""
    for i, line in enumerate(lines):
        if line.upper().startswith("+CMGR:"):
            if i + 1 >= len(lines):
                break
            pdu = lines[i + 1].strip()
            if not _HEX_RE.match(pdu):
                raise ProtocolError(f"AT+CMGR: not a hex PDU: {pdu[:40]!r}")
            return pdu
    raise ProtocolError("AT+CMGR: answer has no PDU line")


def parse_cmgl_pdu(lines: tuple[str, ...]) -> list[tuple[int, str]]:
    """(index, PDU) of every message in a PDU-mode `+CMGL: <index>,<stat>,[<alpha>],<length>`
    answer, each header line followed by its PDU line."""
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.upper().startswith("+CMGL:"):
            i += 1
            continue
        head = line[6:].split(",", 1)[0].strip()
        if not head.isdigit():
            raise ProtocolError(f"AT+CMGL: bad index in {line!r}")
        if i + 1 >= len(lines) or not _HEX_RE.match(lines[i + 1].strip()):
            raise ProtocolError(f"AT+CMGL: no PDU after {line!r}")
        out.append((int(head), lines[i + 1].strip()))
        i += 2
    return out


def parse_cmti(value: str) -> tuple[str, int]:
    """`+CMTI: "<mem>",<index>` (and `+CDSI`) -> (memory, index)."""
    m = re.match(r'^"?([A-Za-z]{2})"?\s*,\s*(\d+)$', value.strip())
    if not m:
        raise ProtocolError(f"+CMTI: cannot read {value!r}")
    return m.group(1).upper(), int(m.group(2))


def parse_iccid(lines: tuple[str, ...]) -> str | None:
    """The ICCID in any of the vendor answers (+CCID, +QCCID, ^ICCID, bare digits)."""
    for line in lines:
        m = re.search(r"(89[0-9]{16,20})", line.replace('"', ""))
        if m:
            return m.group(1)
    return None


def parse_crsm_iccid(value: str) -> str | None:
    """ICCID from `+CRSM: 144,0,"<hex>"`: EF_ICCID is BCD with swapped nibbles."""
    m = re.search(r'144\s*,\s*0\s*,\s*"?([0-9A-Fa-f]+)', value)
    if not m:
        return None
    raw = m.group(1)
    digits = "".join(raw[i + 1] + raw[i] for i in range(0, len(raw) - 1, 2))
    return digits.rstrip("Ff") or None


# ---------------------------------------------------------------- text mode (CMGF=1)
#
# TS 27.005 3.4.1 (+CMT, +CDS), 3.4.2 (+CMGL), 3.4.3 (+CMGR) in text mode. Fields in
# brackets are shown only with AT+CSDH=1; we ask for it, because <length> tells whether
# a text line follows (a text "OK" must not pass for the final code) and <dcs> how its
# characters are written. With AT+CSCS="UCS2" the text (and often <oa>) comes as UCS-2
# hex: four hex digits per UTF-16 unit; data coded 8-bit or UCS-2 always comes as hex.
#
#   +CMGR: <stat>,<oa>,[<alpha>],<scts>[,<tooa>,<fo>,<pid>,<dcs>,<sca>,<tosca>,<length>]
#   +CMGR: <stat>,<fo>,<mr>,[<ra>],[<tora>],<scts>,<dt>,<st>          (status report)
#   +CMGL: <index>,<stat>,<oa/da>,[<alpha>],[<scts>][,<tooa/toda>,<length>]
#   +CMGL: <index>,<stat>,<fo>,<mr>,[<ra>],[<tora>],<scts>,<dt>,<st>  (status report)
#   +CMT: <oa>,[<alpha>],<scts>[,<tooa>,<fo>,<pid>,<dcs>,<sca>,<tosca>,<length>]
#   +CDS: <fo>,<mr>,[<ra>],[<tora>],<scts>,<dt>,<st>
# A text answer is followed by its text line(s); a status report has none.

TEXT_STATS = ("REC UNREAD", "REC READ", "STO UNSENT", "STO SENT")
"""Text-mode <stat> of a stored message, by its PDU-mode number (27.005 3.1)."""
_TOA_INTERNATIONAL = "145"
_SCTS_RE = re.compile(
    r"^(\d{2})/(\d{1,2})/(\d{1,2}),(\d{1,2}):(\d{2}):(\d{2})(?:([+-])(\d{1,2}))?$"
)
_UCS2_HEX_RE = re.compile(r"^(?:[0-9A-Fa-f]{4})+$")


@dataclass(frozen=True, slots=True)
class TextRead:
    """One message as text mode shows it (AT+CMGR, AT+CMGL, +CMT, +CDS)."""

    message: Deliver | StatusReport | None
    """None for a stored outgoing message (STO UNSENT/STO SENT), or when `error` is set."""
    index: int | None = None
    """Its index on the SIM (AT+CMGL); None for the other answers."""
    status: str = ""
    """REC UNREAD, REC READ, STO UNSENT, STO SENT ("" for +CMT and +CDS)."""
    warnings: tuple[str, ...] = ()
    """What was repaired on the way: a lone surrogate replaced, a text kept as it came."""
    error: str | None = None
    """An AT+CMGL entry that could not be read (the others still are)."""
    raw: tuple[str, ...] = ()
    """An AT+CMGL entry's lines as received (its header and text lines), for logs."""


def decode_ucs2_hex(data: str) -> tuple[str, bool]:
    """Text from UCS-2 (UTF-16-BE) hex; True when something had to be replaced (a lone
    surrogate, an odd trailing byte becomes U+FFFD). ProtocolError if it is not hex."""
    try:
        raw = bytes.fromhex(data)
    except ValueError:
        raise ProtocolError(f"not UCS-2 hex: {data[:40]!r}") from None
    try:
        return raw.decode("utf-16-be"), False
    except UnicodeDecodeError:
        return raw.decode("utf-16-be", errors="replace"), True


def _unquote(field: str) -> str:
    field = field.strip()
    if len(field) >= 2 and field[0] == field[-1] == '"':
        return field[1:-1]
    return field


def _string(field: str, ucs2: bool) -> str:
    """A quoted string field; under UCS2 modems may write it in UCS-2 hex too, which is
    taken only when it reads as printable ASCII (an address, a time stamp)."""
    value = _unquote(field)
    if ucs2 and _UCS2_HEX_RE.match(value):
        decoded = bytes.fromhex(value).decode("utf-16-be", errors="replace")
        if all(" " <= ch <= "~" for ch in decoded):
            return decoded
    return value


def _address(field: str, toa: str | None, ucs2: bool) -> str:
    value = _string(field, ucs2).strip()
    if toa is not None and toa.strip() == _TOA_INTERNATIONAL and value.isdigit():
        value = "+" + value  # type of address 145: international, "+" omitted by some
    return value


def _int(field: str, what: str) -> int:
    value = _unquote(field).strip()
    if not value.isdigit():
        raise ProtocolError(f"{what}: not a number: {field!r}")
    return int(value)


def parse_text_scts(field: str, *, ucs2: bool = False) -> datetime:
    """A text-mode time stamp `"yy/MM/dd,hh:mm:ss+zz"` (zz in quarter hours); without a
    zone (some modems) it is read as UTC."""
    value = _string(field, ucs2)
    m = _SCTS_RE.match(value)
    if not m:
        raise ProtocolError(f"cannot read the time stamp {field!r}")
    yy, mo, dd, hh, mi, ss = (int(m.group(i)) for i in range(1, 7))
    zone = UTC
    if m.group(7):
        quarters = int(m.group(8)) * (-1 if m.group(7) == "-" else 1)
        if not -79 <= quarters <= 79:  # 23.040 9.2.3.11: at most 19:45 hours
            raise ProtocolError(f"time zone out of range in {field!r}")
        zone = timezone(timedelta(minutes=15 * quarters))
    # Two year digits, read as the PDU decoder does: 90-99 are 1990s, 00-89 2000-2089.
    year = 1900 + yy if yy >= 90 else 2000 + yy
    try:
        return datetime(year, mo, dd, hh, mi, ss, tzinfo=zone)
    except ValueError as exc:
        raise ProtocolError(f"time stamp {field!r}: {exc}") from None


def _coding(field: str | None) -> DataCoding | None:
    if field is None or not _unquote(field).strip():
        return None
    try:
        return data_coding(_int(field, "<dcs>"))
    except PduError as exc:
        raise ProtocolError(f"<dcs> {field!r}: {exc}") from None


def _body(
    lines: list[str], *, ucs2: bool, coding: DataCoding | None
) -> tuple[str, DataCoding, tuple[str, ...]]:
    """The text of a message from its text line(s): (text, encoding, warnings)."""
    plain = "\n".join(lines)  # a text with line breaks comes as several lines
    packed = "".join(line.strip() for line in lines)
    warnings: list[str] = []
    if coding == "8bit":
        try:
            return bytes.fromhex(packed).decode("latin-1"), "8bit", ()
        except ValueError:
            return plain, "8bit", ("8-bit data not in hex; kept as it came",)
    if ucs2 or coding == "ucs2":
        if _UCS2_HEX_RE.match(packed) or not packed:
            text, replaced = decode_ucs2_hex(packed)
        elif re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", packed):
            text, replaced = decode_ucs2_hex(packed)  # an odd byte: U+FFFD at the end
            replaced = True
        else:
            text, replaced = plain, False
            warnings.append("text not in UCS-2 hex; kept as it came")
        if replaced:
            warnings.append("invalid UCS-2 (a lone surrogate or odd byte) replaced by U+FFFD")
    else:
        text = plain
    if coding is None:
        coding = "gsm7" if gsm7.is_gsm7(text) else "ucs2"
    return text, coding, tuple(warnings)


def _deliver(
    *,
    oa: str,
    scts: str,
    tooa: str | None,
    dcs: str | None,
    sca: str | None,
    length: str | None,
    lines: list[str],
    ucs2: bool,
    fo: str | None = None,
) -> tuple[Deliver, tuple[str, ...]]:
    announced = _unquote(length or "").strip()
    if announced.isdigit() and int(announced) > 0 and not lines:
        # The text line was taken for something else (a text "OK" for the final code):
        # an error, so that the message is not deleted as if it were empty.
        raise ProtocolError(f"<length> {announced} but no text line")
    concat: Concat | None = None
    warnings: tuple[str, ...]
    first = _unquote(fo or "").strip()
    dcoding = _coding(dcs)
    if first.isdigit() and int(first) & 0x40 and dcoding is not None:
        # TP-UDHI: the whole user data, header included, as hex (27.005 3.1 <data>):
        # the header tells which part of a long text this is.
        packed = "".join(line.strip() for line in lines)
        try:
            data = bytes.fromhex(packed)
            udl = int(announced) if announced.isdigit() else len(data)
            if dcoding == "gsm7" and not announced.isdigit():
                udl = len(data) * 8 // 7
            text, concat = decode_user_data(udl, data, udhi=True, coding=dcoding)
        except (ValueError, PduError) as exc:
            raise ProtocolError(f"user data with a header not readable: {exc}") from None
        coding, warnings = dcoding, ()
    else:
        text, coding, warnings = _body(lines, ucs2=ucs2, coding=dcoding)
    smsc = _address(sca, "145", ucs2) if sca is not None and _unquote(sca) else None
    return (
        Deliver(
            sender=_address(oa, tooa, ucs2),
            text=text,
            timestamp=parse_text_scts(scts, ucs2=ucs2),
            concat=concat,
            encoding=coding,
            smsc=smsc,
        ),
        warnings,
    )


def _status_report(fields: list[str], ucs2: bool) -> StatusReport:
    """`<fo>,<mr>,[<ra>],[<tora>],<scts>,<dt>,<st>` (TS 27.005 3.4.1 +CDS)."""
    if len(fields) < 7:
        raise ProtocolError(f"status report: expected 7 fields, got {len(fields)}")
    mr = _int(fields[1], "<mr>")
    status = _int(fields[6], "<st>")
    if mr > 255 or status > 255:
        raise ProtocolError(f"status report: <mr> or <st> out of range: {fields!r}")
    return StatusReport(
        message_ref=mr,
        recipient=_address(fields[2], fields[3], ucs2),
        status=status,
        delivered=status < 0x20,
        final=not 0x20 <= status < 0x40,
        scts=parse_text_scts(fields[4], ucs2=ucs2),
        discharge=parse_text_scts(fields[5], ucs2=ucs2),
    )


def _stat(field: str) -> str:
    value = _unquote(field).strip().upper()
    if value.isdigit() and int(value) < len(TEXT_STATS):
        return TEXT_STATS[int(value)]  # a few modems give the number in text mode too
    if value not in TEXT_STATS:
        raise ProtocolError(f"unknown message status {field!r}")
    return value


def _is_status_report(fields: list[str]) -> bool:
    # A text's first field is its quoted address; a report's is <fo>, a bare number.
    return bool(fields) and fields[0].strip().isdigit()


def _read_one(
    stat: str, rest: list[str], lines: list[str], *, ucs2: bool, listing: bool
) -> tuple[Deliver | StatusReport | None, tuple[str, ...]]:
    if stat.startswith("STO"):
        return None, ()
    if _is_status_report(rest):
        return _status_report(rest, ucs2), ()
    if len(rest) < 3:
        raise ProtocolError(f"expected <oa>,[<alpha>],<scts>, got {rest!r}")
    if listing:  # +CMGL: <oa>,[<alpha>],[<scts>][,<tooa>,<length>]
        tooa, dcs, sca = (rest[3] if len(rest) >= 5 else None), None, None
        length = rest[4] if len(rest) >= 5 else None
    else:  # +CMGR: <oa>,[<alpha>],<scts>[,<tooa>,<fo>,<pid>,<dcs>,<sca>,<tosca>,<length>]
        full = len(rest) >= 10
        tooa = rest[3] if full else None
        dcs = rest[6] if full else None
        sca = rest[7] if full else None
        length = rest[9] if full else None
    fo = rest[4] if not listing and len(rest) >= 10 else None
    return _deliver(
        fo=fo,
        oa=rest[0],
        scts=rest[2],
        tooa=tooa,
        dcs=dcs,
        sca=sca,
        length=length,
        lines=lines,
        ucs2=ucs2,
    )


def parse_cmgr_text(lines: tuple[str, ...], *, ucs2: bool = False) -> TextRead:
    """A text-mode AT+CMGR answer: the header line, then the text line(s), if any.
    `ucs2`: AT+CSCS="UCS2" was in effect. ProtocolError when it cannot be read."""
    for i, line in enumerate(lines):
        if line.upper().startswith("+CMGR:"):
            fields = split_fields(line[6:].strip())
            stat = _stat(fields[0])
            message, warnings = _read_one(
                stat, fields[1:], list(lines[i + 1 :]), ucs2=ucs2, listing=False
            )
            return TextRead(message, None, stat, warnings)
    raise ProtocolError("AT+CMGR: answer has no +CMGR line")


def parse_cmgl_text(lines: tuple[str, ...], *, ucs2: bool = False) -> list[TextRead]:
    """Every message of a text-mode AT+CMGL answer. An entry that cannot be read comes
    back with its `error` (so one bad message does not hide the others); a header whose
    index cannot be read makes the whole answer a ProtocolError."""
    out: list[TextRead] = []
    heads = [i for i, line in enumerate(lines) if line.upper().startswith("+CMGL:")]
    for n, i in enumerate(heads):
        fields = split_fields(lines[i][6:].strip())
        index = _int(fields[0], "AT+CMGL <index>")
        body = list(lines[i + 1 : heads[n + 1] if n + 1 < len(heads) else len(lines)])
        raw = (lines[i], *body)
        stat = ""
        try:
            if len(fields) < 2:
                raise ProtocolError("no <stat>")
            stat = _stat(fields[1])
            message, warnings = _read_one(stat, fields[2:], body, ucs2=ucs2, listing=True)
        except ProtocolError as exc:
            out.append(TextRead(None, index, stat, error=str(exc), raw=raw))
            continue
        out.append(TextRead(message, index, stat, warnings, raw=raw))
    return out


def parse_cmt_text(value: str, text: str, *, ucs2: bool = False) -> TextRead:
    """A text-mode +CMT (`value` after the colon) and its text line."""
    fields = split_fields(value)
    if len(fields) < 3:
        raise ProtocolError(f"+CMT: cannot read {value!r}")
    full = len(fields) >= 10
    message, warnings = _deliver(
        fo=fields[4] if full else None,
        oa=fields[0],
        scts=fields[2],
        tooa=fields[3] if full else None,
        dcs=fields[6] if full else None,
        sca=fields[7] if full else None,
        length=None,  # the parser already knows: an empty text comes as ""
        lines=[text] if text else [],
        ucs2=ucs2,
    )
    return TextRead(message, None, "", warnings)


def parse_cds_text(value: str, *, ucs2: bool = False) -> StatusReport:
    """A text-mode +CDS: `<fo>,<mr>,[<ra>],[<tora>],<scts>,<dt>,<st>`."""
    return _status_report(split_fields(value), ucs2)


_IDENTITY_PREFIXES = ("+CGMI:", "+CGMM:", "+CGMR:", "+CGSN:", "+GMI:", "+GMM:", "+GMR:", "+GSN:")
_URC_LIKE = re.compile(r"^[+^*$][A-Za-z]+:")


def first_line(lines: tuple[str, ...]) -> str | None:
    """The first information line (for answers without a prefix: CGMI, CGMM, CGMR).

    Some modems write "+CGMI: <maker>"; any other "+XXX:" line is a vendor URC we did not
    know, not the answer.
    """
    for line in lines:
        text = line.strip()
        upper = text.upper()
        prefix = next((p for p in _IDENTITY_PREFIXES if upper.startswith(p)), None)
        if prefix is not None:
            text = text[len(prefix) :].strip()
        elif _URC_LIKE.match(text):
            continue
        if text:
            return text.strip('"')
    return None


def parse_imei(lines: tuple[str, ...]) -> str | None:
    """The IMEI (14 to 17 digits, 3GPP TS 23.003) in an AT+CGSN answer."""
    for line in lines:
        m = re.search(r"(?<![0-9])([0-9]{14,17})(?![0-9])", line)
        if m:
            return m.group(1)
    return None


def parse_cpms_memories(value: str) -> tuple[str, ...]:
    """The <mem1> list of an AT+CPMS=? answer (the memories to read and delete in):
    `("ME","MT","SM","SR"),(...),(...)`, or Wavecom's `(("SM","BM","SR"),("SM"))`.
    Empty when the modem lists none (Nokia: `(),(),()`)."""
    m = re.search(r"\(([^()]*)\)", value)
    if m is None:
        raise ProtocolError(f"+CPMS: no list of memories in {value!r}")
    return tuple(_unquote(x).strip().upper() for x in m.group(1).split(",") if x.strip())


def cnmi_with_ds(cnmi: str, ds: int) -> str:
    """`AT+CNMI=<mode>,<mt>,<bm>,<ds>,<bfr>` with another <ds> (27.005 3.4.1): 0 no
    delivery reports, 1 pushed as +CDS, 2 stored by the modem and announced with +CDSI."""
    head, _, args = cnmi.partition("=")
    fields = args.split(",")
    while len(fields) < 4:
        fields.append("0")
    fields[3] = str(ds)
    return f"{head}={','.join(fields)}"


@dataclass(frozen=True, slots=True)
class Quirks:
    """What one modem family does differently. Matched by the AT+CGMI answer."""

    family: str
    # How to read the SIM's ICCID (not in 27.007; AT+CRSM is the standard fallback).
    iccid: str = "AT+CCID"
    # Answers AT+CPIN? without a final OK (tests/data/modem/wavecommultiband900e1800.json).
    cpin_without_ok: bool = False
    # AT+CNMI to route +CMTI and delivery reports; None: the modem has no +CNMI. Its
    # <ds> is the driver's choice (Modem `reports`: stored where the modem can).
    cnmi: str | None = "AT+CNMI=2,1,0,1,0"
    note: str = ""


QUIRKS: dict[str, Quirks] = {
    # SIM800 Series AT Command Manual V1.09: AT+CCID ("show ICCID"); AT+CNMI with ds=1
    # gives +CDS: <length><CR><LF><pdu> (its table of unsolicited result codes).
    "simcom": Quirks("simcom", iccid="AT+CCID", note="SIM800/SIM7600"),
    # Quectel EC25&EC21 AT Commands Manual V1.3: AT+QCCID answers "+QCCID: <iccid>".
    "quectel": Quirks("quectel", iccid="AT+QCCID", note="EC25/EG25"),
    # Huawei module AT Command Interface Specification: AT^ICCID? -> ^ICCID: <iccid>.
    # Status reports can be routed to storage (ds=2, +CDSI), read with AT+CPMS="SR"
    # (AT+CPMS=? lists "SR": tests/data/modem/huaweie1752.json).
    "huawei": Quirks("huawei", iccid="AT^ICCID?", cnmi="AT+CNMI=2,1,0,2,0", note="E3372/E1752"),
    "wavecom": Quirks("wavecom", cpin_without_ok=True, note="AT+CPIN? lacks OK"),
    "zte": Quirks("zte", iccid="AT+ZGETICCID", note="URCs before the prompt"),
    "qualcomm": Quirks("qualcomm", iccid="AT+CRSM=176,12258,0,0,10"),
    "nokia": Quirks("nokia", cnmi=None, note="no AT+CNMI: no inbound indications"),
}
GENERIC = Quirks("generic")


def quirks_for(maker: str | None) -> Quirks:
    """The quirks of the maker named by AT+CGMI ("SIMCOM_Ltd", "huawei", ...)."""
    name = (maker or "").lower()
    for key, quirks in QUIRKS.items():
        if key in name:
            return quirks
    return GENERIC
