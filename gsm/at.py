"""Sans-I/O AT protocol parser: bytes in, typed events out. No asyncio, no serial port.

The modem's output is one stream in which the answer to our command, unsolicited result
codes (URCs) and line noise are mixed. `AtParser` knows which command is in flight (the
client tells it with `expect`) and so can tell an answer line from a URC that arrives in
the middle of the answer, drop the echo of the command, spot the `> ` prompt of AT+CMGS
(with or without a leading CRLF), and end the answer at its final result code.

V.250 framing: a modem ends every line with CR (S3) LF (S4) and, in verbose mode (V1),
also starts each answer line with CRLF. We split on CR or LF alone and drop empty lines,
which covers both, the echo (which ends with a bare CR) and quirky "\\r\\r\\n" endings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gsm.errors import CME_MEANINGS, CMS_MEANINGS, CmeError, CmsError, CommandError
from gsm.pdu import PduError, data_coding

# Longest line we buffer: a PDU line is at most ~360 hex characters and the longest real
# answer in our transcripts (a one-line +CLAC) is ~2 kB. More is noise, dropped.
MAX_LINE = 8192
# Most information lines we keep for one answer (AT+CMGL on a full SIM is ~ 2 x 255).
MAX_LINES = 2048

# Final result codes (V.250 5.7.1 plus the vendor ones seen in tests/data/modem).
_PLAIN_FINALS = {
    "OK": "OK",
    "ERROR": "ERROR",
    "NO CARRIER": "NO CARRIER",
    "BUSY": "BUSY",
    "NO ANSWER": "NO ANSWER",
    "NO DIALTONE": "NO DIALTONE",
    # Huawei E1752 answers unknown commands so (tests/data/modem/huaweie1752.json).
    "COMMAND NOT SUPPORT": "ERROR",
    "TOO MANY PARAMETERS": "ERROR",
}
_TERMINATOR = re.compile(rb"[\r\n]")
_CME_RE = re.compile(r"^\+CME ERROR:\s*(.*)$", re.IGNORECASE)
_CMS_RE = re.compile(r"^\+CMS ERROR:\s*(.*)$", re.IGNORECASE)

# Unsolicited result codes we recognise, by the start of their line. Standard ones from
# TS 27.007 / 27.005, vendor ones from the SIM800, Huawei, Quectel, ZTE, Wavecom manuals
# and the transcripts in tests/data/modem.
URC_PREFIXES: tuple[str, ...] = (
    "RING",
    "+CRING:",
    "+CLIP:",
    "+CCWA:",
    "+CMTI:",
    "+CMT:",
    "+CDS:",
    "+CDSI:",
    "+CBM:",
    "+CREG:",
    "+CGREG:",
    "+CEREG:",
    "+CUSD:",
    "+CIEV:",
    "+CPIN:",
    "+CFUN:",
    "+CTZV:",
    "+CTZE:",
    "+QIND:",
    "+QUSIM:",
    "+CSQN:",
    "*PSUTTZ:",
    "DST:",
    "+PSUTTZ:",
    "Call Ready",
    "SMS Ready",
    "RDY",
    "UNDER-VOLTAGE",
    "OVER-VOLTAGE",
    "NORMAL POWER DOWN",
    "^",  # every Huawei URC: ^RSSI ^BOOT ^MODE ^SRVST ^SIMST ^DSFLOWRPT ^ORIG ^CONF ^CEND ...
    "+ZDONR:",
    "+ZPASR:",
    "+ZUSIMR:",
    "+WIND:",
    "HANGUP:",
    "+STIN:",
    "NO CARRIER",
)

# URCs followed by a second line that belongs to them (TS 27.005 3.4.1: +CMT and, in PDU
# mode, +CDS: <length> then the PDU).
_TWO_LINE_URCS = ("+CMT:", "+CDS:")
# Text mode +CMT with AT+CSDH=1 has ten fields, the last the length of the text.
_CMT_TEXT_FIELDS = 10


def split_fields(value: str) -> list[str]:
    """The comma-separated fields of an answer or URC value; commas inside double quotes
    (a time stamp "26/11/22,08:00:00+04") do not split. Fields keep their quotes."""
    fields: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            fields.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    fields.append("".join(current).strip())
    return fields


def cmt_text_in_characters(value: str) -> bool:
    """Does the text of a text-mode +CMT (`value`, ten fields) come as characters, which
    may hold line breaks, rather than as hex (27.005 3.1 <data>: 8-bit and UCS-2 data, and
    GSM-7 with a User Data Header, come as hex of their octets)?"""
    fields = split_fields(value)
    try:
        fo = int(fields[4])
        coding = data_coding(int(fields[6]))
    except (ValueError, IndexError, PduError):
        return True  # unreadable: count characters, never trust a line
    return coding == "gsm7" and not fo & 0x40


def cmt_text_length(value: str) -> int | None:
    """For a text-mode +CMT value (`<oa>,[<alpha>],<scts>[,...,<length>]`): the length
    of the text when the header shows it (AT+CSDH=1), else None. Raises ValueError for a
    PDU-mode value (`[<alpha>],<length>`: two fields)."""
    fields = split_fields(value)
    if len(fields) < 3:
        raise ValueError("not a text-mode +CMT")
    if len(fields) == _CMT_TEXT_FIELDS and fields[-1].isdigit():
        return int(fields[-1])
    return None


@dataclass(frozen=True, slots=True)
class Final:
    """A final result code. `kind`: OK, ERROR, CME, CMS, NO CARRIER, BUSY, ...;
    `code` the number of +CME/+CMS ERROR; `text` the line as received."""

    kind: str
    code: int | None = None
    text: str = ""

    @property
    def ok(self) -> bool:
        """True for OK."""
        return self.kind == "OK"


@dataclass(frozen=True, slots=True)
class Response:
    """The complete answer to one command: its information lines and final code."""

    command: str
    lines: tuple[str, ...]
    final: Final

    def raise_for_error(self, name: str | None = None) -> None:
        """Raise the matching GsmError unless the final code is OK.

        `name` replaces the command in the message (to keep a PIN out of logs).
        """
        final = self.final
        command = name or self.command
        if final.kind == "OK":
            return
        code = final.code if final.code is not None else -1
        detail = final.text.split(":", 1)[-1].strip()
        if final.kind == "CME":
            raise CmeError(command, code, detail)
        if final.kind == "CMS":
            raise CmsError(command, code, detail)
        raise CommandError(command, final.kind)

    def values(self, prefix: str) -> list[str]:
        """The text after `prefix` of every line starting with it (stripped)."""
        n = len(prefix)
        return [ln[n:].strip() for ln in self.lines if ln.upper().startswith(prefix.upper())]


@dataclass(frozen=True, slots=True)
class Urc:
    """An unsolicited result code: `name` ("+CMTI", "RING", "^RSSI"), `value` after the
    colon, and for two-line URCs (+CMT, +CDS in PDU mode) the second line in `data`:
    the PDU, or for a text-mode +CMT its text as received (latin-1): exactly <length>
    characters, line breaks included, when it comes as characters."""

    name: str
    value: str
    line: str
    data: str | None = None


@dataclass(frozen=True, slots=True)
class Prompt:
    """The `> ` prompt: the modem waits for the message body (AT+CMGS, AT+CMGW)."""


@dataclass(frozen=True, slots=True)
class Noise:
    """Bytes that are nobody's answer: garbage, an overflowing line, a stray line."""

    reason: str
    data: str


Event = Response | Urc | Prompt | Noise


@dataclass(slots=True)
class Expect:
    """What the parser should expect for the command in flight.

    `command` is the line as sent (for echo removal and error messages); `prefix` the
    start of its answer lines ("+CSQ:"), None for commands whose answer has no prefix
    (AT+CGMI); `prompt` for AT+CMGS; `done_on_prefix` for modems that omit the final OK
    (Wavecom's AT+CPIN?); `stale_guard` drops finals that come before any `prefix` line
    (used to resynchronise after a timeout: a late OK of an older command is not ours).
    """

    command: str
    prefix: str | None = None
    prompt: bool = False
    done_on_prefix: bool = False
    stale_guard: bool = False
    body: str | None = None
    prompted: bool = False
    lines: list[str] = field(default_factory=list)


def parse_final(line: str) -> Final | None:
    """The final result code in `line`, or None if it is not one."""
    upper = line.upper()
    kind = _PLAIN_FINALS.get(upper)
    if kind is not None:
        return Final(kind, None, line)
    for regex, name, meanings in (
        (_CME_RE, "CME", CME_MEANINGS),
        (_CMS_RE, "CMS", CMS_MEANINGS),
    ):
        m = regex.match(line)
        if m:
            arg = m.group(1).strip()
            if arg.isdigit():
                return Final(name, int(arg), line)
            # Verbose mode (CMEE=2) gives the text: map it back to its code when we can.
            code = next((c for c, t in meanings.items() if t.lower() == arg.lower()), None)
            return Final(name, code, line)
    return None


_CLEAN = re.compile(r"[ -~]*")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
# Outer whitespace, NULs and control bytes are framing noise (a Wavecom answers
# " WAVECOM MODEM"; modems emit NULs when they power up).
_FRAMING = "".join(chr(c) for c in range(33)) + "\x7f"


def _is_clean(text: str) -> bool:
    return _CLEAN.fullmatch(text) is not None


def _strip(text: str) -> str:
    return text.strip(_FRAMING)


def urc_name(line: str, prefixes: tuple[str, ...] = URC_PREFIXES) -> str | None:
    """The URC name of `line` ("+CMTI", "^RSSI", "RING") or None if it is not a URC."""
    for p in prefixes:
        if line.startswith(p):
            if p == "^":
                # Huawei reports carry a colon (^RSSI: 17, ^MODE:5,4); a bare ^WORD is an
                # answer line (the AT+CLAC list of tests/data/modem/huaweie1752.json).
                if ":" not in line:
                    return None
                return line.split(":", 1)[0].strip()
            if p.endswith(":"):
                return line.split(":", 1)[0].strip()
            return p
    return None


class AtParser:
    """Turns modem bytes into `Event`s. Call `expect` before writing a command."""

    def __init__(
        self,
        *,
        max_line: int = MAX_LINE,
        urc_prefixes: tuple[str, ...] = URC_PREFIXES,
    ) -> None:
        self._buf = bytearray()
        self._max_line = max_line
        self._urc_prefixes = urc_prefixes
        self._pending: Expect | None = None
        self._urc_head: tuple[str, str, str] | None = None
        self._text_head: tuple[str, str, str] | None = None
        self._text_need: int | None = None
        """Bytes of a text-mode +CMT text still to take as they are (never as lines)."""
        self._text_skip_lf = False
        #: A partial line was buffered when the command was registered: it began before
        #: the command was written, so it cannot be part of its answer.
        self._before_command = False
        self.hex_texts = False
        """Set by the client while AT+CSCS="UCS2" is in effect: texts come as hex."""

    @property
    def pending(self) -> Expect | None:
        """The command in flight, if any."""
        return self._pending

    def expect(self, expect: Expect) -> None:
        """Register the command about to be written (the waiter comes before the write)."""
        self._pending = expect
        self._before_command = bool(self._buf) and self._text_need is None

    def sent_body(self, body: str) -> None:
        """Tell the parser the message body went out after the prompt (to drop its echo)."""
        if self._pending is not None:
            self._pending.body = body

    def cancel(self) -> None:
        """Forget the command in flight (after a timeout): later lines are stray."""
        self._pending = None

    def reset(self) -> None:
        """Drop all state (after the device was reopened)."""
        self._buf.clear()
        self._pending = None
        self._urc_head = None
        self._text_head = None
        self._text_need = None
        self._text_skip_lf = False
        self._before_command = False

    def feed(self, data: bytes) -> list[Event]:
        """Consume bytes; return the events they complete, in order."""
        events: list[Event] = []
        self._buf += data
        while True:
            if self._text_need is not None:
                if not self._take_text(events):
                    break
                continue
            m = _TERMINATOR.search(self._buf)
            if m is None:
                break
            raw = bytes(self._buf[: m.start()])
            ended_cr = m.group() == b"\r"
            del self._buf[: m.end()]
            if self._before_command:
                # The rest of a line that began before the command was written (noise,
                # a cut-off "OK", a URC): read as if no command were waiting, so that a
                # final code in it never ends the new command before its answer.
                self._before_command = False
                pending, self._pending = self._pending, None
                try:
                    if raw:
                        self._line(raw, events)
                finally:
                    if self._pending is None:
                        self._pending = pending
                if self._taking_text():
                    self._text_skip_lf = ended_cr
                continue
            if raw:
                self._line(raw, events)
                if self._taking_text():
                    self._text_skip_lf = ended_cr
        if self._taking_text():
            return events
        if len(self._buf) > self._max_line:
            events.append(Noise("overflow", self._buf[:80].decode("latin-1")))
            self._buf.clear()
        pending = self._pending
        if (
            pending is not None
            and pending.prompt
            and not pending.prompted
            and _strip(self._buf.decode("latin-1")) == ">"
        ):
            self._buf.clear()
            pending.prompted = True
            events.append(Prompt())
        return events

    def _taking_text(self) -> bool:
        return self._text_need is not None

    def _take_text(self, events: list[Event]) -> bool:
        """Take the text of a text-mode +CMT: exactly <length> bytes after its header's
        line end, whatever they hold (line breaks, "OK", "+CMT: ..."). False: wait."""
        if self._text_skip_lf:
            if not self._buf:
                return False
            if self._buf[0] == 0x0A:  # the LF of the header's CR LF
                del self._buf[0]
            self._text_skip_lf = False
        need = self._text_need
        head = self._text_head
        if need is None or head is None:  # pragma: no cover - set together
            self._text_need = None
            return True
        if len(self._buf) < need:
            return False
        text = bytes(self._buf[:need]).decode("latin-1")
        del self._buf[:need]
        self._text_need = None
        self._text_head = None
        events.append(Urc(head[0], head[1], head[2], text))
        return True

    def _line(self, raw: bytes, events: list[Event]) -> None:
        if self._text_head is not None:
            # The text of a text-mode +CMT that comes as hex (no line break in it) or
            # without a <length>: the modem writes the header and the text as one, so
            # this line is the text, whatever it looks like, kept as it came.
            head_name, head_value, head = self._text_head
            self._text_head = None
            events.append(Urc(head_name, head_value, head, raw.decode("latin-1")))
            return
        text = _strip(raw.decode("latin-1"))
        if not text:
            return
        pending = self._pending
        # Echo: the command itself, or the message body (ending in Ctrl-Z) after the prompt.
        if pending is not None:
            bare = text.rstrip("\x1a")
            if bare.upper() == pending.command.upper():
                return
            if pending.body is not None and bare.lstrip("> ").rstrip("\x1a") == pending.body:
                return
        if not _is_clean(text):
            events.append(Noise("garbage", text[:80]))
            return
        # Second line of a two-line URC: a PDU. Anything else means it was lost, and the
        # line is someone else's (our command's final code must not be eaten).
        if self._urc_head is not None:
            head_name, head_value, head = self._urc_head
            self._urc_head = None
            if _HEX.fullmatch(text):
                events.append(Urc(head_name, head_value, head, text))
                return
            events.append(Urc(head_name, head_value, head, None))
        if pending is not None:
            if pending.prompt and not pending.prompted and text in (">", "> "):
                pending.prompted = True
                events.append(Prompt())
                return
            final = parse_final(text)
            if final is not None:
                if pending.stale_guard and not pending.lines:
                    events.append(Noise("stale", text))
                    return
                self._pending = None
                events.append(Response(pending.command, tuple(pending.lines), final))
                return
            prefix = pending.prefix
            if prefix is not None and text.upper().startswith(prefix.upper()):
                self._add_line(pending, text, events)
                if pending.done_on_prefix:
                    self._pending = None
                    events.append(Response(pending.command, tuple(pending.lines), Final("OK")))
                return
        name = urc_name(text, self._urc_prefixes)
        if name is not None:
            value = text.split(":", 1)[1].strip() if ":" in text else ""
            if text.startswith("+CMT:"):
                try:
                    length = cmt_text_length(value)
                except ValueError:  # PDU mode: the PDU line follows
                    self._urc_head = (name, value, text)
                    return
                if length == 0:  # an empty text: no text line follows
                    events.append(Urc(name, value, text, ""))
                    return
                self._text_head = (name, value, text)
                if length is not None and not self.hex_texts and cmt_text_in_characters(value):
                    # Characters: the text may hold line breaks, and a line of it may
                    # look like anything ("OK", another "+CMT: ..."): take <length> of
                    # them as they are, never a line.
                    self._text_need = min(length, self._max_line)
                return
            if text.startswith(_TWO_LINE_URCS) and value.isdigit():
                self._urc_head = (name, value, text)
                return
            events.append(Urc(name, value, text))
            return
        if pending is not None:
            if pending.stale_guard:
                events.append(Noise("stale", text))
                return
            self._add_line(pending, text, events)
            return
        events.append(Noise("stray", text))

    @staticmethod
    def _add_line(pending: Expect, text: str, events: list[Event]) -> None:
        if len(pending.lines) >= MAX_LINES:
            events.append(Noise("overflow", text[:80]))
            return
        pending.lines.append(text)
