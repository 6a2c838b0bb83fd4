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

from gsm.errors import ProtocolError

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


@dataclass(frozen=True, slots=True)
class Quirks:
    """What one modem family does differently. Matched by the AT+CGMI answer."""

    family: str
    # How to read the SIM's ICCID (not in 27.007; AT+CRSM is the standard fallback).
    iccid: str = "AT+CCID"
    # Answers AT+CPIN? without a final OK (tests/data/modem/wavecommultiband900e1800.json).
    cpin_without_ok: bool = False
    # AT+CNMI to route +CMTI and delivery reports; None: the modem has no +CNMI.
    cnmi: str | None = "AT+CNMI=2,1,0,1,0"
    note: str = ""


QUIRKS: dict[str, Quirks] = {
    # SIM800 Series AT Command Manual V1.09: AT+CCID ("show ICCID"); AT+CNMI with ds=1
    # gives +CDS: <length><CR><LF><pdu> (its table of unsolicited result codes).
    "simcom": Quirks("simcom", iccid="AT+CCID", note="SIM800/SIM7600"),
    # Quectel EC25&EC21 AT Commands Manual V1.3: AT+QCCID answers "+QCCID: <iccid>".
    "quectel": Quirks("quectel", iccid="AT+QCCID", note="EC25/EG25"),
    # Huawei module AT Command Interface Specification: AT^ICCID? -> ^ICCID: <iccid>.
    # Status reports are routed to storage (ds=2, +CDSI), read with AT+CPMS="SR".
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
