"""Sans-I/O parts of receiving: the assembler (parts and their SIM slots), the text-mode
answer parsers (golden transcripts, UCS-2, bad input) and text-mode +CMT framing."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gsm import commands as C
from gsm import errors
from gsm.at import AtParser, Expect, Response, Urc, cmt_text_length, split_fields
from gsm.inbound import Assembler, Ready
from gsm.pdu import Concat, Deliver, StatusReport, decode_deliver, encode_deliver, join_parts
from tests.conftest import MODEM_DIR

WHEN = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
TO = "+12025550142"
T0 = '"26/11/22,08:00:00+00"'
T5 = '"26/11/22,08:00:05+00"'


def _part(
    seq: int, total: int, text: str, *, ref: int = 7, sender: str = "+12025550142"
) -> Deliver:
    return Deliver(
        sender=sender,
        text=text,
        timestamp=WHEN,
        concat=Concat(reference=ref, total=total, seq=seq),
        encoding="gsm7",
    )


# ------------------------------------------------------------------------ assembler


def test_whole_text_comes_with_every_part_slot() -> None:
    asm = Assembler(wait=60)
    assert asm.add(_part(2, 3, "b"), ("SM", 2), 0.0) == []
    assert asm.add(_part(1, 3, "a"), ("SM", 1), 1.0) == []
    assert asm.held_slots() == {("SM", 1), ("SM", 2)}
    (ready,) = asm.add(_part(3, 3, "c"), ("SM", 3), 2.0)
    assert ready.item == Deliver("+12025550142", "abc", WHEN, None, "gsm7")
    assert sorted(ready.slots) == [("SM", 1), ("SM", 2), ("SM", 3)]
    assert asm.pending == 0
    assert asm.next_deadline() is None


def test_a_part_that_never_comes_is_given_up_after_the_wait_since_the_latest_part() -> None:
    asm = Assembler(wait=10)
    asm.add(_part(1, 3, "a"), ("SM", 1), 0.0)
    asm.add(_part(3, 3, "c"), None, 5.0)  # straight from the network: no slot
    assert asm.next_deadline() == 15.0  # the wait counts from the latest part
    assert asm.expire(14.9) == []
    (ready,) = asm.expire(15.0)
    assert isinstance(ready.item, Deliver)
    assert (ready.item.text, ready.item.incomplete, ready.item.missing) == ("ac", True, (2,))
    assert ready.slots == (("SM", 1),)


def test_a_duplicate_part_s_slot_goes_with_the_text() -> None:
    asm = Assembler(wait=60)
    asm.add(_part(1, 2, "a"), ("SM", 1), 0.0)
    assert asm.add(_part(1, 2, "a"), ("SM", 5), 0.0) == []
    (ready,) = asm.add(_part(2, 2, "b"), ("SM", 2), 0.0)
    assert sorted(ready.slots) == [("SM", 1), ("SM", 2), ("SM", 5)]
    assert asm.duplicates == 1


def test_too_many_waiting_texts_make_the_oldest_give_way_incomplete() -> None:
    asm = Assembler(wait=60, max_pending=2)
    asm.add(_part(1, 2, "x", ref=1), ("SM", 1), 0.0)
    asm.add(_part(1, 2, "y", ref=2), ("SM", 2), 0.0)
    (ready,) = asm.add(_part(1, 2, "z", ref=3), ("SM", 3), 0.0)
    assert isinstance(ready.item, Deliver)
    assert (ready.item.text, ready.item.missing, ready.slots) == ("x", (2,), (("SM", 1),))


def test_single_texts_and_reports_pass_at_once() -> None:
    asm = Assembler(wait=1)
    whole = Deliver("+1", "hi", WHEN, None, "gsm7")
    assert asm.add(whole, ("SM", 4), 0.0) == [Ready(whole, (("SM", 4),))]
    with pytest.raises(ValueError, match="positive"):
        Assembler(wait=0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=2, max_value=5), min_size=1, max_size=4),
    st.data(),
)
def test_every_slot_comes_out_exactly_once_whatever_the_order(
    totals: list[int], data: st.DataObject
) -> None:
    asm = Assembler(wait=1000)
    parts: list[tuple[Deliver, tuple[str, int]]] = []
    withheld: dict[int, set[int]] = {}
    index = 0
    for ref, total in enumerate(totals):
        missing = data.draw(st.sets(st.integers(min_value=1, max_value=total), max_size=1))
        withheld[ref] = missing
        for seq in range(1, total + 1):
            if seq not in missing:
                index += 1
                parts.append((_part(seq, total, f"{ref}.{seq};", ref=ref), ("SM", index)))
    order = data.draw(st.permutations(parts))
    out: list[Ready] = []
    for n, (part, slot) in enumerate(order):
        out += asm.add(part, slot, float(n))
    out += asm.expire(1e9)
    slots = [s for r in out for s in r.slots]
    assert sorted(slots) == sorted(s for _, s in parts)
    assert len(out) == len(totals)
    for ready in out:
        assert isinstance(ready.item, Deliver)
        ref = int(ready.item.text.split(".", 1)[0])
        assert ready.item.missing == tuple(sorted(withheld[ref]))
        assert ready.item.incomplete == bool(withheld[ref])
        expected = "".join(
            f"{ref}.{s};" for s in range(1, totals[ref] + 1) if s not in withheld[ref]
        )
        assert ready.item.text == expected


def test_join_parts_marks_what_is_missing() -> None:
    joined = join_parts([_part(1, 4, "a"), _part(3, 4, "c")], total=4)
    assert (joined.text, joined.incomplete, joined.missing, joined.concat) == (
        "ac",
        True,
        (2, 4),
        None,
    )
    assert not join_parts([_part(1, 1, "a")]).incomplete
    assert Deliver("+1", "x", WHEN, None, "gsm7").missing == ()  # old constructors work


# --------------------------------------------------------------- text-mode answers


def _dialogue(send: str, mode: str) -> str:
    dialogues = json.loads((MODEM_DIR / "python-gsmmodem-sms-dialogues.json").read_text())
    (ex,) = [e for e in dialogues["exchanges"] if e.get("send") == send and e.get("mode") == mode]
    return str(ex["receive"])


def _answer(command: str, prefix: str, receive: str | bytes) -> Response:
    parser = AtParser()
    parser.expect(Expect(command, prefix))
    data = receive.encode("latin-1") if isinstance(receive, str) else receive
    (resp,) = [e for e in parser.feed(data) if isinstance(e, Response)]
    return resp


def test_golden_text_mode_cmgr() -> None:
    resp = _answer("AT+CMGR=1", "+CMGR:", _dialogue("AT+CMGR=1\r", "text"))
    read = C.parse_cmgr_text(resp.lines)
    assert read.status == "REC UNREAD"
    assert read.message == Deliver(
        sender="+0123456789",
        text="Hello world!",
        timestamp=datetime(2013, 3, 8, 15, 2, 16, tzinfo=timezone(timedelta(hours=2))),
        concat=None,
        encoding="gsm7",
    )


def test_golden_text_mode_cmgl() -> None:
    unread = _answer("AT+CMGL", "+CMGL:", _dialogue('AT+CMGL="REC UNREAD"\r', "text"))
    (one,) = C.parse_cmgl_text(unread.lines)
    assert (one.index, one.status) == (0, "REC UNREAD")
    assert isinstance(one.message, Deliver)
    assert (one.message.sender, one.message.text) == ("+27748577604", "Hello raspberry pi")
    read = _answer("AT+CMGL", "+CMGL:", _dialogue('AT+CMGL="REC READ"\r', "text"))
    got = C.parse_cmgl_text(read.lines)
    assert [(r.index, r.status) for r in got] == [(1, "REC READ"), (2, "REC READ")]
    texts = [r.message.text for r in got if isinstance(r.message, Deliver)]
    assert texts[0].startswith("New and here to stay!")
    assert texts[1].endswith("Queries? 0860003422.")


def test_ucs2_answer_with_full_header() -> None:
    text = "Merci 😀 OK"
    hex_text = text.encode("utf-16-be").hex().upper()
    oa = "+12025550142".encode("utf-16-be").hex().upper()
    lines = (
        f'+CMGR: "REC READ","{oa}",,"26/11/22,08:00:00-20",145,4,0,8,"+12025550100",145,22',
        hex_text,
    )
    read = C.parse_cmgr_text(lines, ucs2=True)
    assert read.message == Deliver(
        sender="+12025550142",
        text=text,
        timestamp=datetime(2026, 11, 22, 8, 0, tzinfo=timezone(timedelta(hours=-5))),
        concat=None,
        encoding="ucs2",
        smsc="+12025550100",
    )
    assert read.warnings == ()


def test_a_lone_surrogate_is_replaced_and_said() -> None:
    read = C.parse_cmgr_text(
        ('+CMGR: "REC UNREAD","+1",,"26/11/22,08:00:00+00"', "D8000041"), ucs2=True
    )
    assert isinstance(read.message, Deliver)
    assert read.message.text == "\ufffdA"
    assert read.warnings
    assert "surrogate" in read.warnings[0]
    assert C.decode_ucs2_hex("00410042") == ("AB", False)
    assert C.decode_ucs2_hex("004100") == ("A\ufffd", True)


def test_text_not_in_hex_under_ucs2_is_kept_as_it_came() -> None:
    read = C.parse_cmgr_text(('+CMGR: "REC UNREAD","+1",,"26/11/22,08:00:00+00"', "Hi!"), ucs2=True)
    assert isinstance(read.message, Deliver)
    assert read.message.text == "Hi!"
    assert read.warnings == ("text not in UCS-2 hex; kept as it came",)


def test_8bit_data_and_several_text_lines() -> None:
    header = '+CMGR: "REC READ","+1",,"26/11/22,08:00:00+00",145,4,0,4,"+2",145,2'
    read = C.parse_cmgr_text((header, "C3A9"))
    assert isinstance(read.message, Deliver)
    assert (read.message.text, read.message.encoding) == ("Ã©", "8bit")
    two = C.parse_cmgr_text(('+CMGR: "REC READ","+1",,"26/11/22,08:00:00+00"', "line 1", "line 2"))
    assert isinstance(two.message, Deliver)
    assert two.message.text == "line 1\nline 2"


def test_status_reports_and_stored_outgoing_in_text_mode() -> None:
    read = C.parse_cmgr_text((f'+CMGR: "REC UNREAD",6,17,"+12025550123",145,{T0},{T5},0',))
    assert read.message == StatusReport(
        message_ref=17,
        recipient="+12025550123",
        status=0,
        delivered=True,
        final=True,
        scts=datetime(2026, 11, 22, 8, 0, tzinfo=UTC),
        discharge=datetime(2026, 11, 22, 8, 0, 5, tzinfo=UTC),
    )
    cds = C.parse_cds_text(
        '6,18,"12025550123",145,"26/11/22,08:00:00+00","26/11/22,08:00:05+00",64'
    )
    assert (cds.message_ref, cds.recipient, cds.delivered, cds.final) == (
        18,
        "+12025550123",
        False,
        True,
    )
    listing = C.parse_cmgl_text(
        (
            '+CMGL: 1,"STO UNSENT","+12025550123",,',
            "draft",
            '+CMGL: 2,"REC READ",6,19,"+1202",145,"26/11/22,08:00:00+00","26/11/22,08:00:05+00",0',
            '+CMGL: 3,"REC READ","+1",,"bad time"',
            "text",
            '+CMGL: 4,"REC UNREAD","+1",,"26/11/22,08:00:00+00",145,5',
            "hello",
        )
    )
    assert [(r.index, type(r.message).__name__, r.error is None) for r in listing] == [
        (1, "NoneType", True),
        (2, "StatusReport", True),
        (3, "NoneType", False),
        (4, "Deliver", True),
    ]
    assert listing[2].raw == ('+CMGL: 3,"REC READ","+1",,"bad time"', "text")  # for the log


def test_a_text_line_taken_for_the_final_code_is_an_error_not_an_empty_text() -> None:
    # In IRA a text "OK" ends the answer early; <length> (AT+CSDH=1) shows it is missing.
    resp = _answer(
        "AT+CMGR=1",
        "+CMGR:",
        f'\r\n+CMGR: "REC UNREAD","+1",,{T0},145,4,0,0,"+2",145,2\r\nOK\r\n\r\nOK\r\n',
    )
    with pytest.raises(errors.ProtocolError, match="no text line"):
        C.parse_cmgr_text(resp.lines)


@pytest.mark.parametrize(
    "lines",
    [
        (),
        ("+CMGR: ",),
        ('+CMGR: "REC UNREAD"',),
        ('+CMGR: "FOO","+1",,"26/11/22,08:00:00+00"', "x"),
        ('+CMGR: "REC UNREAD","+1",,"26/13/22,08:00:00+00"', "x"),
        ('+CMGR: "REC UNREAD","+1",,"26/11/22,08:00:00+99"', "x"),
        ('+CMGR: "REC UNREAD",6,x,"+1",145,"26/11/22,08:00:00+00","26/11/22,08:00:05+00",0',),
        ('+CMGR: "REC UNREAD",6,999,"+1",145,"26/11/22,08:00:00+00","26/11/22,08:00:05+00",0',),
        ('+CMGR: "REC UNREAD","+1",,"26/11/22,08:00:00+00",145,4,0,"x","+2",145,2', "y"),
        ('+CMGR: "REC UNREAD","+1",,"26/11/22,08:00:00+00",145,4,0,32,"+2",145,2', "y"),
    ],
)
def test_malformed_text_mode_answers_raise_protocol_error(lines: tuple[str, ...]) -> None:
    with pytest.raises(errors.ProtocolError):
        C.parse_cmgr_text(lines)


def test_a_cmgl_index_that_is_not_a_number_spoils_the_listing() -> None:
    with pytest.raises(errors.ProtocolError):
        C.parse_cmgl_text(('+CMGL: x,"REC READ","+1",,"26/11/22,08:00:00+00"', "hi"))


_LINE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
_HEADERISH = st.one_of(
    _LINE,
    st.builds(lambda s: "+CMGR: " + s, _LINE),
    st.builds(lambda s: "+CMGL: " + s, _LINE),
    st.builds(
        lambda a, b: f'+CMGR: "REC UNREAD",{a},,"{b}"',
        _LINE,
        _LINE,
    ),
    st.sampled_from(["D800", "0041", "ZZ", '"', ",,,,,,,,,,", "26/11/22,08:00:00+00"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_HEADERISH, max_size=6), st.booleans())
def test_garbage_text_mode_answers_raise_only_our_errors(lines: list[str], ucs2: bool) -> None:
    with contextlib.suppress(errors.ProtocolError):
        C.parse_cmgr_text(tuple(lines), ucs2=ucs2)
    try:
        reads = C.parse_cmgl_text(tuple(lines), ucs2=ucs2)
    except errors.ProtocolError:
        reads = []
    assert all(isinstance(r, C.TextRead) for r in reads)
    value = lines[0] if lines else ""
    with contextlib.suppress(errors.ProtocolError):
        C.parse_cmt_text(value, lines[-1] if lines else "", ucs2=ucs2)
    with contextlib.suppress(errors.ProtocolError):
        C.parse_cds_text(value, ucs2=ucs2)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789ABCDEFabcdefXZ ", max_size=40))
def test_ucs2_hex_decoding_never_crashes(data: str) -> None:
    try:
        text, replaced = C.decode_ucs2_hex(data)
    except errors.ProtocolError:
        return
    assert isinstance(text, str)
    assert not replaced or "\ufffd" in text


# ----------------------------------------------------------------- +CMT framing


def test_text_mode_cmt_keeps_its_line_whatever_it_looks_like() -> None:
    parser = AtParser()
    data = (
        b'\r\n+CMT: "+12025550142",,"26/11/22,08:00:00+00"\r\nOK\r\n'
        b'\r\n+CMT: "+12025550142",,"26/11/22,08:00:00+00"\r\nRING me back\r\n'
        b'\r\n+CMT: "+12025550142",,"26/11/22,08:00:00+00",145,4,0,0,"+1",145,0\r\n'
        b"\r\n+CMT: ,25\r\n0791\r\n"
    )
    events = parser.feed(data)
    assert events == [
        Urc("+CMT", '"+12025550142",,"26/11/22,08:00:00+00"', events[0].line, "OK"),  # type: ignore[union-attr]
        Urc("+CMT", '"+12025550142",,"26/11/22,08:00:00+00"', events[1].line, "RING me back"),  # type: ignore[union-attr]
        Urc(
            "+CMT",
            '"+12025550142",,"26/11/22,08:00:00+00",145,4,0,0,"+1",145,0',
            events[2].line,  # type: ignore[union-attr]
            "",
        ),
        Urc("+CMT", ",25", "+CMT: ,25", "0791"),
    ]
    read = C.parse_cmt_text(events[1].value, events[1].data or "")  # type: ignore[union-attr]
    assert isinstance(read.message, Deliver)
    assert read.message.text == "RING me back"


def test_cmt_header_forms() -> None:
    assert split_fields('"+1",,"26/11/22,08:00:00+00"') == ['"+1"', "", '"26/11/22,08:00:00+00"']
    assert cmt_text_length('"+1",,"26/11/22,08:00:00+00"') is None
    assert cmt_text_length('"+1",,"26/11/22,08:00:00+00",145,4,0,0,"+1",145,12') == 12
    with pytest.raises(ValueError, match="text-mode"):
        cmt_text_length(",25")


def test_a_pdu_round_trip_still_decodes_after_the_new_fields() -> None:
    (pdu,) = encode_deliver("+12025550142", "hi", timestamp=WHEN)
    assert decode_deliver(pdu).incomplete is False
