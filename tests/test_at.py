"""The sans-I/O AT parser and the answer parsers, on real modem transcripts and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gsm import commands as C
from gsm import errors
from gsm.at import (
    AtParser,
    Event,
    Expect,
    Final,
    Noise,
    Prompt,
    Response,
    Urc,
    parse_final,
)
from gsm.pdu import PduError, decode_incoming
from tests.conftest import MODEM_DIR

FAILING_DIR = MODEM_DIR / "failing"


def _transcripts() -> list[Any]:
    params = []
    for path in sorted(MODEM_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        for i, ex in enumerate(data["exchanges"]):
            params.append(pytest.param(data, ex, id=f"{path.stem}-{i}"))
    return params


def _prefix(command: str) -> str | None:
    m = re.match(r"^AT([+^$][A-Z]+)", command.upper())
    return f"{m.group(1)}:" if m else None


def _feed(parser: AtParser, data: bytes, chunk: int) -> list[Event]:
    events: list[Event] = []
    for i in range(0, len(data), chunk):
        events += parser.feed(data[i : i + chunk])
    return events


def _v1(receive: str) -> str:
    """Put back the leading CRLF the python-gsmmodem fixtures dropped (V.250 V1 framing)."""
    if receive.endswith("> "):
        body, tail = receive[:-2], "\r\n> "
    else:
        body, tail = receive, ""
    lines = [ln for ln in re.split(r"[\r\n]+", body) if ln]
    return "".join(f"\r\n{ln}\r\n" for ln in lines) + tail


def _run_exchange(
    data: dict[str, Any], ex: dict[str, Any], receive: str, chunk: int
) -> list[Event]:
    parser = AtParser()
    send: str | None = ex.get("send")
    if send is not None:
        command = send.rstrip("\r").rstrip("\x1a")
        if send.endswith("\x1a"):  # the message body after the prompt
            exp = Expect("AT+CMGS=1", "+CMGS:", prompt=True, prompted=True)
            parser.expect(exp)
            parser.sent_body(command)
        else:
            quirks = C.quirks_for(data["model"])
            parser.expect(
                Expect(
                    command,
                    _prefix(command),
                    prompt=command.upper().startswith("AT+CMGS"),
                    done_on_prefix=quirks.cpin_without_ok and command.upper() == "AT+CPIN?",
                )
            )
    return _feed(parser, receive.encode("latin-1"), chunk)


@pytest.mark.parametrize(("data", "ex"), _transcripts())
def test_real_transcripts_parse_to_their_lines_and_final(
    data: dict[str, Any], ex: dict[str, Any]
) -> None:
    """Every line a real modem sent comes out once, as an answer line or a URC; the
    answer ends with the final code the modem gave; prompts are seen."""
    for receive in (ex["receive"], _v1(ex["receive"])):
        whole = _run_exchange(data, ex, receive, len(receive) or 1)
        for chunk in (1, 7):
            assert _run_exchange(data, ex, receive, chunk) == whole
        assert not [e for e in whole if isinstance(e, Noise)]
        got: list[str] = []
        for e in whole:
            if isinstance(e, Response):
                got += e.lines
                if e.final.text:
                    got.append(e.final.text)
            elif isinstance(e, Urc):
                got += [e.line] + ([e.data] if e.data else [])
        body = receive[:-2] if receive.endswith("> ") else receive
        want = [ln.strip() for ln in re.split(r"[\r\n]+", body) if ln.strip()]
        assert sorted(got) == sorted(want)  # URCs come out as they arrive, answers at the end
        finals = [parse_final(ln) for ln in want]
        responses = [e for e in whole if isinstance(e, Response)]
        if receive.endswith("> "):
            assert isinstance(whole[-1], Prompt)
            assert not responses
        elif "send" in ex and any(finals):
            assert len(responses) == 1
            final = next(f for f in finals if f)
            assert responses[0].final == final
        if "urc" in ex:
            assert all(isinstance(e, Urc) for e in whole)


def test_wavecom_cpin_without_ok_ends_on_its_line() -> None:
    parser = AtParser()
    parser.expect(Expect("AT+CPIN?", "+CPIN:", done_on_prefix=True))
    events = parser.feed(b"+CPIN: READY\r\n")
    assert events == [Response("AT+CPIN?", ("+CPIN: READY",), Final("OK"))]


def test_echo_is_dropped_with_echo_on() -> None:
    parser = AtParser()
    parser.expect(Expect("AT+CGMI"))
    events = parser.feed(b"AT+CGMI\r\r\nSIMCOM_Ltd\r\n\r\nOK\r\n")
    assert len(events) == 1
    assert isinstance(events[0], Response)
    assert events[0].lines == ("SIMCOM_Ltd",)


@pytest.mark.parametrize("prompt", [b"> ", b"\r\n> ", b"\r\n>", b"AT+CMGS=23\r\r\n> "])
def test_prompt_with_or_without_crlf_and_echo(prompt: bytes) -> None:
    parser = AtParser()
    parser.expect(Expect("AT+CMGS=23", "+CMGS:", prompt=True))
    assert parser.feed(prompt) == [Prompt()]
    parser.sent_body("0011AB")
    events = parser.feed(b"0011AB\x1a\r\n+CMGS: 7\r\n\r\nOK\r\n")
    assert len(events) == 1
    assert isinstance(events[0], Response)
    assert C.parse_cmgs(events[0].values("+CMGS:")) == 7


def test_urcs_inside_an_answer_are_told_apart() -> None:
    parser = AtParser()
    parser.expect(Expect("AT+CGMR"))
    events = parser.feed(
        b'\r\nRev1\r\n\r\n+CMTI: "SM",3\r\n\r\n^RSSI: 17\r\nRev2\r\n'
        b"\r\n+CDS: 6\r\n0006F1\r\n\r\nRING\r\n\r\nOK\r\n"
    )
    urcs = [e for e in events if isinstance(e, Urc)]
    assert [u.name for u in urcs] == ["+CMTI", "^RSSI", "+CDS", "RING"]
    assert urcs[2].data == "0006F1"
    resp = events[-1]
    assert isinstance(resp, Response)
    assert resp.lines == ("Rev1", "Rev2")


def test_creg_answer_is_not_a_urc_but_a_creg_urc_is() -> None:
    parser = AtParser()
    assert parser.feed(b"\r\n+CREG: 5\r\n") == [Urc("+CREG", "5", "+CREG: 5")]
    parser.expect(Expect("AT+CREG?", "+CREG:"))
    events = parser.feed(b"\r\n+CREG: 0,1\r\n\r\nOK\r\n")
    assert isinstance(events[0], Response)
    assert C.parse_creg(events[0].values("+CREG:")[0]) == 1


def test_stale_guard_skips_late_finals_of_an_older_command() -> None:
    parser = AtParser()
    parser.expect(Expect("AT+CSQ", "+CSQ:", stale_guard=True))
    events = parser.feed(b"\r\n+CMGS: 4\r\n\r\nOK\r\n\r\n+CSQ: 20,0\r\n\r\nOK\r\n")
    assert [type(e) for e in events] == [Noise, Noise, Response]
    assert isinstance(events[-1], Response)
    assert events[-1].lines == ("+CSQ: 20,0",)


def test_lines_without_a_command_are_stray_noise() -> None:
    parser = AtParser()
    assert parser.feed(b"\r\nOK\r\nhello\r\n") == [Noise("stray", "OK"), Noise("stray", "hello")]


def test_garbage_and_overflow_are_bounded_noise() -> None:
    parser = AtParser(max_line=64)
    events = parser.feed(b"\x00\xff\xfe\x13junk\r\n" + b"x" * 100)
    assert [e.reason for e in events if isinstance(e, Noise)] == ["garbage", "overflow"]
    parser.expect(Expect("AT"))
    assert parser.feed(b"\r\nOK\r\n")[-1] == Response("AT", (), Final("OK", None, "OK"))


@pytest.mark.parametrize(
    ("line", "kind", "code"),
    [
        ("OK", "OK", None),
        ("ERROR", "ERROR", None),
        ("NO CARRIER", "NO CARRIER", None),
        ("COMMAND NOT SUPPORT", "ERROR", None),
        ("+CME ERROR: 11", "CME", 11),
        ("+CME ERROR: SIM PIN required", "CME", 11),
        ("+CMS ERROR: 331", "CMS", 331),
        ("+CMS ERROR:38", "CMS", 38),
    ],
)
def test_final_codes(line: str, kind: str, code: int | None) -> None:
    final = parse_final(line)
    assert final is not None
    assert (final.kind, final.code) == (kind, code)


def test_errors_carry_code_meaning_and_retryability() -> None:
    net = errors.CmsError("AT+CMGS=23", 38)
    assert (net.code, net.meaning, net.retryable) == (38, "network out of order", True)
    bad = errors.CmsError("AT+CMGS=23", 1)
    assert not bad.retryable
    assert "unassigned" in str(bad)
    busy = errors.CmeError("AT+CPIN?", 14)
    assert busy.retryable
    assert busy.meaning == "SIM busy"
    assert not errors.CmeError("AT+CPIN?", 16).retryable
    timeout = errors.AtTimeout("AT+CMGS=23", 60)
    assert isinstance(timeout, TimeoutError)
    assert "AT+CMGS=23" in str(timeout)
    assert timeout.retryable
    assert not errors.SendUncertain("AT+CMGS=23", 60).retryable
    assert not errors.PinError("wrong").retryable
    assert errors.ModemGone("x").retryable


def test_golden_answers_read_right() -> None:
    dialogues = json.loads((MODEM_DIR / "python-gsmmodem-sms-dialogues.json").read_text())
    csq = [ex for ex in dialogues["exchanges"] if ex.get("send") == "AT+CSQ\r"]
    read = []
    for ex in csq:
        parser = AtParser()
        parser.expect(Expect("AT+CSQ", "+CSQ:"))
        (resp,) = parser.feed(ex["receive"].encode())
        assert isinstance(resp, Response)
        read.append(C.parse_csq(resp.values("+CSQ:")[0]))
    assert read == [(18, 99), (4, 0), (99, 99)]
    creg = {
        ex["note"]: ex["receive"] for ex in dialogues["exchanges"] if ex.get("send") == "AT+CREG?\r"
    }
    states = {}
    for note, receive in creg.items():
        parser = AtParser()
        parser.expect(Expect("AT+CREG?", "+CREG:"))
        (resp,) = parser.feed(receive.encode())
        assert isinstance(resp, Response)
        states[note] = C.parse_creg(resp.values("+CREG:")[0])
    assert states == {
        "searching": 2,
        "home": 1,
        "roaming": 5,
        "registration denied": 3,
        "not searching": 0,
    }
    for ex in dialogues["exchanges"]:
        if ex.get("mode") == "pdu" and "decoded" in ex:
            parser = AtParser()
            parser.expect(Expect(ex["send"].strip(), "+CMGR:"))
            (resp,) = parser.feed(ex["receive"].encode())
            assert isinstance(resp, Response)
            msg = decode_incoming(C.parse_cmgr_pdu(resp.lines))
            assert getattr(msg, "text", None) == ex["decoded"]["text"]
            assert getattr(msg, "sender", None) == ex["decoded"]["number"]


def test_iccid_and_operator_forms() -> None:
    assert C.parse_iccid(("+QCCID: 89860318740234567890",)) == "89860318740234567890"
    assert C.parse_iccid(('^ICCID: "8944110068256270054"',)) == "8944110068256270054"
    assert C.parse_iccid(("no",)) is None
    assert C.parse_crsm_iccid('144,0,"984411008652260750F4"') == "8944110068256270054"
    assert C.parse_cops('0,0,"T-Mobile",7') == "T-Mobile"
    assert C.parse_cops("0") is None
    assert C.csq_dbm(21) == -71
    assert C.csq_dbm(99) is None


@pytest.mark.parametrize(
    "number", ["12025550123", "+1202555012\r", '+1"', "+", "+0123", "+1" + "2" * 15, "", "+1 202"]
)
def test_only_plus_and_digits_pass_the_number_gate(number: str) -> None:
    with pytest.raises(ValueError, match="international number"):
        C.check_number(number)


def test_quirks_table_matches_makers() -> None:
    assert C.quirks_for("SIMCOM_Ltd").family == "simcom"
    assert C.quirks_for(" WAVECOM MODEM").cpin_without_ok
    assert C.quirks_for("Nokia").cnmi is None
    assert C.quirks_for("huawei").iccid == "AT^ICCID?"
    assert C.quirks_for(None) is C.GENERIC


def _check(case: dict[str, Any], resp: Response | None, urcs: list[Urc]) -> None:
    check = case["check"]
    if check == "cmti":
        C.parse_cmti(urcs[0].value)
        return
    if check == "cds-text":
        C.parse_cds_text(urcs[0].value)
        return
    assert resp is not None
    if check == "final":
        resp.raise_for_error()
    elif check == "csq":
        C.parse_csq(C.one_value(resp.values("+CSQ:"), "AT+CSQ"))
    elif check == "creg":
        C.parse_creg(C.one_value(resp.values("+CREG:"), "AT+CREG?"))
    elif check == "cmgs":
        C.parse_cmgs(resp.values("+CMGS:"))
    elif check == "cmgr":
        C.parse_cmgr_pdu(resp.lines)
    elif check == "cmgl":
        C.parse_cmgl_pdu(resp.lines)
    elif check == "cmgr-text":
        C.parse_cmgr_text(resp.lines)
    elif check == "cmgl-text":
        C.parse_cmgl_text(resp.lines)
    elif check == "cmgr-decode":
        decode_incoming(C.parse_cmgr_pdu(resp.lines))
    elif check == "cops":
        C.parse_cops(C.one_value(resp.values("+COPS:"), "AT+COPS?"))
    elif check == "cpin":
        C.parse_cpin(C.one_value(resp.values("+CPIN:"), "AT+CPIN?"))
    else:
        raise AssertionError(f"unknown check {check}")


_RAISES: dict[str, type[Exception]] = {
    "ProtocolError": errors.ProtocolError,
    "CmsError": errors.CmsError,
    "CmeError": errors.CmeError,
    "CommandError": errors.CommandError,
    "PduError": PduError,
}


@pytest.mark.parametrize("path", sorted(FAILING_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_malformed_replies_raise_our_errors(path: Path) -> None:
    case = json.loads(path.read_text())
    parser = AtParser()
    parser.expect(Expect(case["command"], case["prefix"]))
    events = parser.feed(case["receive"].encode("latin-1"))
    resp = next((e for e in events if isinstance(e, Response)), None)
    urcs = [e for e in events if isinstance(e, Urc)]
    with pytest.raises(_RAISES[case["raises"]]):
        _check(case, resp, urcs)


def test_failing_set_is_not_empty() -> None:
    assert len(list(FAILING_DIR.glob("*.json"))) >= 20


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=50))
@example(data=b"OK", chunk=1)  # a cut-off "OK" before the command once ended it early
def test_any_bytes_never_crash_and_the_buffer_stays_bounded(data: bytes, chunk: int) -> None:
    parser = AtParser(max_line=256)
    parser.expect(Expect("AT+CMGS=12", "+CMGS:", prompt=True))
    for e in _feed(parser, data, chunk):
        assert isinstance(e, Response | Urc | Prompt | Noise)
    assert len(parser._buf) <= 256
    # Whatever came before, a clean answer after a line break is still read.
    parser.expect(Expect("AT+CSQ", "+CSQ:"))
    events = parser.feed(b"\r\n+CSQ: 9,0\r\n\r\nOK\r\n")
    last = events[-1]
    assert isinstance(last, Response)
    assert last.final.ok
    assert last.values("+CSQ:") == ["9,0"]


_ANSWER = (
    b'\r\n+CMTI: "SM",1\r\nAT+CGMR\r\r\nRev1\r\n^RSSI: 3\r\nRev2\r\n\r\n+CDS: 4\r\nAB\r\n\r\nOK\r\n'
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(_ANSWER)), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    def run(points: list[int]) -> list[Event]:
        parser = AtParser()
        parser.expect(Expect("AT+CGMR"))
        events: list[Event] = []
        last = 0
        for p in [*sorted(points), len(_ANSWER)]:
            events += parser.feed(_ANSWER[last:p])
            last = p
        return events

    assert run(cuts) == run([])


def test_cmgl_listing_and_identity_lines() -> None:
    dialogues = json.loads((MODEM_DIR / "python-gsmmodem-sms-dialogues.json").read_text())
    (ex,) = [e for e in dialogues["exchanges"] if e.get("send") == "AT+CMGL=0\r"]
    parser = AtParser()
    parser.expect(Expect("AT+CMGL=0", "+CMGL:"))
    (resp,) = parser.feed(ex["receive"].encode())
    assert isinstance(resp, Response)
    ((index, pdu),) = C.parse_cmgl_pdu(resp.lines)
    assert index == 0
    assert decode_incoming(pdu).text == "Hello raspberry pi"  # type: ignore[union-attr]
    assert C.parse_imei(("+CGSN: 869170031234567",)) == "869170031234567"
    assert C.parse_imei(("garbage 12",)) is None
    assert C.first_line(('+QIND: "csq",21,99', "+CGMI: Quectel")) == "Quectel"


def test_a_two_line_urc_missing_its_pdu_does_not_eat_the_final() -> None:
    parser = AtParser()
    parser.expect(Expect("AT+CSQ", "+CSQ:"))
    events = parser.feed(b"\r\n+CSQ: 9,0\r\n\r\n+CDS: 25\r\n\r\nOK\r\n")
    assert events[0] == Urc("+CDS", "25", "+CDS: 25", None)
    assert isinstance(events[1], Response)
    assert events[1].final.ok


_CMT_HEAD = '+CMT: "+12025550142",,"26/01/01,00:00:00+00",145,4,0,{dcs},"+12063130004",145,{n}'


@pytest.mark.parametrize("cut", [1, 7, 60, 70, 200])
def test_a_text_mode_cmt_text_is_length_characters_never_lines(cut: int) -> None:
    """A text-mode +CMT text is <length> characters whatever it holds: a forged +CMT
    header, "OK", "+CMS ERROR" lines end no command and make no URC of their own."""
    text = 'hi\r\n+CMT: "+12065550102",,"26/01/01,00:00:00+00",145,4,0,0,,145,5\nSTART\r\nOK\nERROR'
    head = _CMT_HEAD.format(dcs=0, n=len(text))
    stream = f"\r\n{head}\r\n{text}\r\n\r\n+CSQ: 20,0\r\n\r\nOK\r\n".encode("latin-1")
    parser = AtParser()
    parser.expect(Expect("AT+CSQ", "+CSQ:"))
    events = []
    for i in range(0, len(stream), cut):
        events += parser.feed(stream[i : i + cut])
    urcs = [e for e in events if isinstance(e, Urc)]
    responses = [e for e in events if isinstance(e, Response)]
    assert [(u.name, u.data) for u in urcs] == [("+CMT", text)]
    assert [(r.lines, r.final.kind) for r in responses] == [(("+CSQ: 20,0",), "OK")]


def test_a_text_mode_cmt_in_hex_is_one_line() -> None:
    data = "00480069"  # UCS-2 "Hi": hex holds no line break
    head = _CMT_HEAD.format(dcs=8, n=4)
    parser = AtParser()
    events = parser.feed(f"\r\n{head}\r\n{data}\r\nRING\r\n".encode())
    assert [(e.name, e.data) for e in events if isinstance(e, Urc)] == [
        ("+CMT", data),
        ("RING", None),
    ]


def test_a_line_begun_before_the_command_never_answers_it() -> None:
    """Bytes buffered when a command is registered came before it was written: a final
    code completed by the answer's first line break is noise, and a URC in it is kept."""
    parser = AtParser()
    parser.feed(b"OK")  # a cut-off final code, left from before
    parser.expect(Expect("AT+CSQ", "+CSQ:"))
    events = parser.feed(b"\r\n+CSQ: 9,0\r\n\r\nOK\r\n")
    assert isinstance(events[0], Noise)
    assert isinstance(events[-1], Response)
    assert events[-1].lines == ("+CSQ: 9,0",)

    parser.feed(b'+CMTI: "SM",')  # a URC cut by the command's write
    parser.expect(Expect("AT+CSQ", "+CSQ:"))
    events = parser.feed(b"3\r\n+CSQ: 12,0\r\n\r\nOK\r\n")
    assert isinstance(events[0], Urc)
    assert events[0].value == '"SM",3'
    assert isinstance(events[-1], Response)
    assert events[-1].lines == ("+CSQ: 12,0",)
