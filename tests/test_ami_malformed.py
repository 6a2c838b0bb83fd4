"""Bad AMI input is logged and counted; later good frames arrive; memory stays bounded."""

from __future__ import annotations

import logging
import random

import pytest

from daemon.intake.frames import MAX_FRAME_BYTES, FrameParser
from daemon.intake.protocol import AmiProtocol
from daemon.intake.replayserver import ReplayServer, encode
from tests.ami_support import rig, until


def _good(i: int, **extra: str) -> bytes:
    return encode(
        {
            "Event": "Newchannel",
            "Timestamp": f"1795331018.{i:06d}",
            "Channel": f"PJSIP/trunk-{i:08x}",
            "CallerIDNum": "+12025550142",
            "CallerIDName": "José",
            "Uniqueid": f"1795331018.{i}",
            "Linkedid": f"1795331018.{i}",
            **extra,
        }
    )


NO_COLON = b"Event: Newstate\r\nthis line has no colon\r\nUniqueid: 1.5\r\n\r\n"
GARBAGE = bytes(random.Random(7).randrange(256) for _ in range(3000)).replace(b"\r\n\r\n", b"")
LATIN1 = "Event: Newchannel\r\nCallerIDName: Jos\xe9\r\nUniqueid: 1.6\r\n\r\n".encode("latin-1")
NO_IDS = b"Event: Hangup\r\nChannel: PJSIP/trunk-1\r\nCause: 16\r\n\r\n"
HUGE = b"Event: VarSet\r\nValue: " + b"x" * (1024 * 1024) + b"\r\n\r\n"


def _body() -> bytes:
    return b"".join(
        [
            _good(1),
            NO_COLON,
            _good(2),
            GARBAGE + b"\r\n\r\n",
            _good(3),
            LATIN1,
            _good(4),
            HUGE,
            _good(5),
            NO_IDS,
            _good(6),
        ]
    )


def test_parser_counts_every_kind_and_keeps_the_good(caplog: pytest.LogCaptureFixture) -> None:
    parser = FrameParser()
    body = _body()
    msgs: list[dict[str, str]] = []
    peak = 0
    for i in range(0, len(body), 65536):
        msgs += parser.feed(body[i : i + 65536])
        peak = max(peak, parser.buffered)
    assert peak <= MAX_FRAME_BYTES  # the 1 MB line never sits in memory whole
    good = [m for m in msgs if m.get("CallerIDName") == "José"]
    assert [m["Uniqueid"] for m in good] == [f"1795331018.{i}" for i in range(1, 7)]
    stats = parser.stats
    assert stats.oversized == 1
    assert stats.decode_errors >= 2  # the garbage and the Latin-1 name
    assert stats.malformed_lines >= 2  # "no colon" and the garbage's lines
    latin = next(m for m in msgs if m.get("Uniqueid") == "1.6")
    assert latin["CallerIDName"] == "Jos\ufffd"  # replaced, visibly, never silently dropped
    assert any(m.get("Event") == "Hangup" and "Uniqueid" not in m for m in msgs)
    text = caplog.text
    assert "AMI line without 'Key: value' skipped" in text
    assert "'this line has no colon'" in text
    assert "AMI message is not UTF-8" in text
    assert f"AMI message over {MAX_FRAME_BYTES} bytes" in text


def test_a_huge_frame_in_one_read_is_dropped_too() -> None:
    parser = FrameParser()
    msgs = parser.feed(HUGE + _good(9))
    assert [m["Uniqueid"] for m in msgs] == ["1795331018.9"]
    assert parser.stats.oversized == 1
    assert parser.buffered == 0


def test_endless_line_without_terminator_stays_bounded() -> None:
    parser = FrameParser()
    parser.feed(b"Event: Junk\r\nValue: ")
    for _ in range(100):  # 6.4 MB and never a blank line
        parser.feed(b"y" * 65536)
        assert parser.buffered <= MAX_FRAME_BYTES
    assert parser.stats.oversized == 1
    assert parser.feed(b"\r\n\r\n" + _good(10))[0]["Uniqueid"] == "1795331018.10"


async def test_handler_exception_is_logged_counted_and_survived(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    def handler(msg: dict[str, str]) -> None:
        if msg["Uniqueid"] == "1795331018.2":
            raise RuntimeError("tracker bug")
        seen.append(msg["Uniqueid"])

    proto = AmiProtocol(handler)
    proto.data_received(_good(1) + _good(2) + _good(3))
    assert seen == ["1795331018.1", "1795331018.3"]
    assert proto.handler_errors == 1
    assert "AMI event handler failed on Newchannel" in caplog.text


async def test_malformed_stream_over_tcp(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    body = _body()
    # and finally the stream ends in the middle of a frame
    tail = _good(7)[:40]
    server = ReplayServer(body + tail, fully_booted=False, drop_at=[len(body) + len(tail)])
    async with rig(server) as r:
        await until(lambda: r.client.counters.losses == 1, what="loss at the cut")
        good = [e["Uniqueid"] for e in r.events if e.get("CallerIDName") == "José"]
        assert good == [f"1795331018.{i}" for i in range(1, 7)]
        counters = r.client.counters
        # oversized 1 + decode errors 2 + malformed lines + the frame cut off at the end
        assert counters.malformed >= 6
        assert any(e.get("Event") == "Hangup" and "Uniqueid" not in e for e in r.events)
        await until(lambda: r.clock.pending >= 1)
        r.clock.advance(1.0)
        await until(lambda: r.client.connected, what="reconnect after the cut")
    assert "ended inside a message (40 bytes dropped)" in caplog.text
