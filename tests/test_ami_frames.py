"""AMI framing: any read boundaries give the same messages; the byte-level filter is exact."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.intake.frames import FrameParser, parse_message
from daemon.intake.protocol import AmiProtocol
from daemon.intake.replayserver import encode, trace_body
from daemon.intake.stream import AmiStream
from tests.conftest import AMI_DIR, trace_names

SMALL_TRACES = ["03-short-abandon", "11-ivr-hangup", "12-internal-noanswer"]
NAMES = ["José Núñez", "山田太郎", "Zoë 😀 Ørsted", "Ελένη", "محمد", "👩‍👩‍👧 Family"]


def _events(raw: bytes) -> list[dict[str, str]]:
    return FrameParser().feed(raw)


def _feed_cut(raw: bytes, cuts: list[int], **kw: frozenset[str] | None) -> list[dict[str, str]]:
    parser = FrameParser(**kw)
    out: list[dict[str, str]] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(raw)]:
        out += parser.feed(raw[last:cut])
        last = cut
    return out


def _utf8_frames() -> bytes:
    body = b"Asterisk Call Manager/11.0.0\r\n"
    for i, name in enumerate(NAMES):
        body += encode(
            {
                "Event": "Newchannel",
                "Timestamp": f"1795331018.{i:06d}",
                "Channel": f"PJSIP/trunk-0000000{i}",
                "CallerIDNum": f"+1202555010{i}",
                "CallerIDName": name,
                "Uniqueid": f"1795331018.{i}",
                "Linkedid": f"1795331018.{i}",
            }
        )
    return body


def test_every_trace_parses_to_its_events_in_one_piece() -> None:
    for name in trace_names():
        raw = (AMI_DIR / f"{name}.ami").read_bytes()
        msgs = _events(raw)
        frames = raw.split(b"\r\n\r\n")
        expected = sum(1 for f in frames if f.startswith(b"Event: "))
        assert sum(1 for m in msgs if "Event" in m) == expected, name
        assert all(m.get("Event") or m.get("Response") for m in msgs), name


def test_every_byte_boundary_of_utf8_frames() -> None:
    raw = _utf8_frames()
    whole = _events(raw)
    assert [m["CallerIDName"] for m in whole] == NAMES
    for cut in range(len(raw) + 1):
        assert _feed_cut(raw, [cut]) == whole, cut


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_cuts_of_small_traces(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(SMALL_TRACES))
    raw = (AMI_DIR / f"{name}.ami").read_bytes()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=60))
    assert _feed_cut(raw, cuts) == _events(raw)


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(_utf8_frames())), max_size=40))
def test_random_cuts_of_multibyte_names(cuts: list[int]) -> None:
    raw = _utf8_frames()
    assert _feed_cut(raw, cuts) == _events(raw)


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, len(_utf8_frames())), min_size=1, max_size=20))
async def test_live_protocol_gets_whole_names_whatever_the_reads(cuts: list[int]) -> None:
    """The live intake's own Protocol (not just the parser) under every cut."""
    raw = _utf8_frames()
    got: list[dict[str, str]] = []
    proto = AmiProtocol(got.append)
    last = 0
    for cut in [*sorted(set(cuts)), len(raw)]:
        proto.data_received(raw[last:cut])
        last = cut
    assert [m["CallerIDName"] for m in got] == NAMES
    assert proto.version == "11.0.0"


def test_stock_panoramisk_loses_a_split_character() -> None:
    """Measured fact 1: panoramisk decodes each read alone; our parser does not."""
    from panoramisk.ami_protocol import AMIProtocol

    raw = encode({"Event": "Newchannel", "CallerIDName": "José", "Uniqueid": "1.1"})
    cut = raw.index("é".encode()) + 1  # between the two bytes of "é"

    class Sink:
        forgetable_actions = ()
        events: list[str] = []  # noqa: RUF012 - a test double

        def dispatch(self, msg: object) -> None:
            self.events.append(msg["CallerIDName"])  # type: ignore[index]

    stock = AMIProtocol()
    stock.connection_made(None)
    stock.factory = Sink()
    stock.data_received(raw[:cut])
    stock.data_received(raw[cut:])
    assert stock.factory.events == ["Jos"]  # the bug the intake exists to fix
    assert _feed_cut(raw, [cut])[0]["CallerIDName"] == "José"


@pytest.mark.parametrize("name", trace_names())
def test_byte_level_filter_equals_filtering_parsed_events(name: str) -> None:
    raw = (AMI_DIR / f"{name}.ami").read_bytes()
    wanted = frozenset({"Newchannel", "Hangup", "DialEnd", "BridgeEnter", "VarSet", "Cdr"})
    wanted_vars = frozenset({"VMSTATUS", "DIALSTATUS"})
    full = _events(raw)
    expect = [
        m
        for m in full
        if "Event" not in m
        or (m["Event"] in wanted and (m["Event"] != "VarSet" or m.get("Variable") in wanted_vars))
    ]
    parser = FrameParser(wanted_events=wanted, wanted_vars=wanted_vars)
    assert parser.feed(raw) == expect
    assert parser.stats.skipped == len(full) - len(expect)
    got: list[dict[str, str]] = []
    stream = AmiStream(got.append, wanted=wanted, wanted_vars=wanted_vars)
    for i in range(0, len(raw), 4096):
        stream.feed(raw[i : i + 4096])
    assert got == [m for m in expect if "Event" in m]


def test_parse_message_shapes() -> None:
    assert parse_message("Event: X\r\nA: b: c\r\nEmpty: ") == {
        "Event": "X",
        "A": "b: c",
        "Empty": "",
    }
    # "Key:value" without the space, a line without colon, an empty key
    from daemon.intake.frames import FrameStats

    stats = FrameStats()
    assert parse_message("Event: X\r\nKey:value\r\njunk\r\n: nokey", stats) == {
        "Event": "X",
        "Key": "value",
    }
    assert stats.malformed_lines == 2
    assert parse_message(
        "Event: Newchannel\r\nChanVariable: CALLERID(pres)=prohib\r\nChanVariable: X=1=2"
    ) == {"Event": "Newchannel", "ChanVariable:CALLERID(pres)": "prohib", "ChanVariable:X": "1=2"}


def test_parse_fast_path_equals_careful_path_on_every_trace() -> None:
    from daemon.intake.frames import _parse_careful

    for name in trace_names():
        body = trace_body((AMI_DIR / f"{name}.ami").read_bytes())
        for raw in body.split(b"\r\n\r\n"):
            text = raw.decode()
            if text:
                assert parse_message(text) == _parse_careful(text, None)


def test_protocol_works_without_a_connection_or_loop() -> None:
    """`textback replay` feeds the live protocol straight from a file, no event loop."""
    raw = (AMI_DIR / "11-ivr-hangup.ami").read_bytes()
    got: list[dict[str, str]] = []
    proto = AmiProtocol(got.append, wanted=frozenset({"Newchannel", "Hangup"}))
    for i in range(0, len(raw), 333):
        proto.data_received(raw[i : i + 333])
    full = [m for m in _events(raw) if m.get("Event") in {"Newchannel", "Hangup"}]
    assert got == full
    assert proto.events == len(full)
    assert proto.stream.buffered == 0
    proto.data_received(b"Event: Hangup\r\nUniqueid: 1.")
    assert proto.stream.buffered > 0  # the input stopped mid-message: visible to the caller
