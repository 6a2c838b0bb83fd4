"""SMS PDUs (gsm/pdu.py): golden vectors, spec examples, properties, fuzzing, reassembly."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gsm import gsm7, pdu
from tests.conftest import MODEM_DIR

FAST = settings(max_examples=200, deadline=None)
VECTORS: dict[str, Any] = json.loads((MODEM_DIR / "pdu-vectors.json").read_text())
SUBMITS: list[dict[str, Any]] = VECTORS["submit_vectors"]
RECEIVED: list[dict[str, Any]] = VECTORS["received_pdus"]
NUMBER = "+12025550123"  # 11 digits: odd, so the last semi-octet is padded with F
UTC2 = timezone(timedelta(hours=2))


def _parts(vector: dict[str, Any]) -> list[dict[str, Any]]:
    return vector.get("parts") or [vector]


def _encode_like(vector: dict[str, Any]) -> list[pdu.SubmitPart]:
    """Encode the vector's (number, text) with the options its first PDU shows."""
    first = pdu.decode_submit(_parts(vector)[0]["pdu"])
    return pdu.encode_submit(
        vector["number"],
        vector["text"],
        reference=first.concat.reference if first.concat else 0,
        request_status_report=first.status_report_requested,
        validity_minutes=first.validity_minutes,
        smsc=first.smsc,
        message_ref=first.message_ref,
        reject_duplicates=first.reject_duplicates,
    )


# ------------------------------------------------------------------ golden vectors

# Vectors whose PDUs we make byte for byte the same way (by index in submit_vectors).
EXACT = [0, 2, 5, 6, 7]


@pytest.mark.parametrize("index", EXACT)
def test_submit_vector_exact(index: int) -> None:
    vector = SUBMITS[index]
    expected = _parts(vector)
    parts = _encode_like(vector)
    assert [p.pdu for p in parts] == [e["pdu"] for e in expected]
    assert [p.tpdu_length for p in parts] == [e["tpdu_length"] for e in expected]
    for part, exp in zip(parts, expected, strict=True):
        if "text" in exp:
            assert part.text == exp["text"]
        if "at" in exp:
            assert exp["at"] == f"AT+CMGS={part.tpdu_length}\r"
    assert pdu.sms_info(vector["text"]).parts == len(expected)


def test_submit_vector_national_number_differs_only_in_type_of_address() -> None:
    # python-gsmmodem marks a number without "+" (and the SMSC "12345") as "national"
    # (type 0xA1); we say "unknown" (0x81), since "0126541234" keeps its trunk prefix.
    # Apart from those two octets our PDU is the vector's.
    vector = SUBMITS[3]
    (part,) = _encode_like(vector)
    expected = vector["pdu"]
    assert expected.startswith("04A1")
    assert expected[14:18] == "0AA1"
    assert part.pdu == "0481" + expected[4:16] + "81" + expected[18:]
    assert part.tpdu_length == vector["tpdu_length"]


@pytest.mark.parametrize(("index", "why"), [(1, "flash (class 0)"), (4, "absolute validity")])
def test_submit_vector_decoded(index: int, why: str) -> None:
    # Choices we never make when sending; the decoder must still read them right.
    vector = SUBMITS[index]
    sub = pdu.decode_submit(vector["pdu"])
    assert (sub.number, sub.text, sub.encoding) == (vector["number"], vector["text"], "gsm7")
    assert pdu.tpdu_length(vector["pdu"]) == vector["tpdu_length"]
    if why == "absolute validity":
        assert sub.validity_absolute == datetime(2013, 7, 10, 13, 39, tzinfo=UTC2)
        assert sub.validity_minutes is None


@pytest.mark.parametrize("index", range(len(SUBMITS)))
def test_submit_vector_decodes_to_its_content(index: int) -> None:
    vector = SUBMITS[index]
    texts = []
    for part in _parts(vector):
        sub = pdu.decode_submit(part["pdu"])
        assert sub.number == vector["number"]
        if "concat" in part:
            c = part["concat"]
            assert sub.concat == pdu.Concat(c["ref"], c["total"], c["seq"])
        if "alphabet" in vector:
            assert sub.encoding == vector["alphabet"]
        texts.append(sub.text)
    assert "".join(texts) == vector["text"]


def test_submit_vector_validity_periods() -> None:
    assert pdu.decode_submit(SUBMITS[2]["pdu"]).validity_minutes == 52 * 7 * 24 * 60  # F4
    assert pdu.decode_submit(SUBMITS[3]["pdu"]).validity_minutes == 3 * 24 * 60  # A9


@pytest.mark.parametrize("index", range(len(RECEIVED)))
def test_received_vector(index: int) -> None:
    vector = RECEIVED[index]
    kind = vector["type"]
    if kind == "SMS-DELIVER":
        msg = pdu.decode_incoming(vector["pdu"])
        assert isinstance(msg, pdu.Deliver)
        assert msg == pdu.decode_deliver(vector["pdu"])
        assert msg.sender == vector["number"]
        assert msg.text == vector["text"]
        if "time" in vector:
            assert msg.timestamp == datetime.fromisoformat(vector["time"])
            assert msg.timestamp.utcoffset() == datetime.fromisoformat(vector["time"]).utcoffset()
        if "smsc" in vector:
            assert msg.smsc == vector["smsc"]
        if "udh_concat" in vector:
            c = vector["udh_concat"]
            assert msg.concat == pdu.Concat(c["ref"], c["total"], c["seq"])
    elif kind == "SMS-STATUS-REPORT":
        report = pdu.decode_incoming(vector["pdu"])
        assert isinstance(report, pdu.StatusReport)
        assert report.message_ref == vector["reference"]
        if "number" in vector:
            assert report.recipient == vector["number"]
        assert report.delivered
        assert report.final
    else:
        assert kind == "SMS-SUBMIT"
        sub = pdu.decode_submit(vector["pdu"])
        assert sub.text == vector["text"]
        if "number" in vector:
            assert sub.number == vector["number"]
        with pytest.raises(pdu.PduError, match="not an incoming message"):
            pdu.decode_incoming(vector["pdu"])


def test_received_status_report_times() -> None:
    report = pdu.decode_status_report(RECEIVED[3]["pdu"])
    cet = timezone(timedelta(hours=1))
    assert report.scts == datetime(2011, 1, 11, 17, 59, 15, tzinfo=cet)
    assert report.discharge == datetime(2011, 1, 11, 17, 59, 17, tzinfo=cet)


def test_received_concat_total_one_comes_straight_back() -> None:
    msg = pdu.decode_deliver(RECEIVED[4]["pdu"])
    assert pdu.Reassembler().add(msg, now=0.0) is msg


def test_received_ucs2_udl_longer_than_data_is_not_over_read() -> None:
    sub = pdu.decode_submit(RECEIVED[7]["pdu"])
    assert sub.text == "はい"
    assert sub.concat == pdu.Concat(reference=0, total=3, seq=1)


def test_received_8bit_is_reported_as_such() -> None:
    sub = pdu.decode_submit(RECEIVED[8]["pdu"])
    assert sub.encoding == "8bit"
    assert sub.smsc == "+2781191"


def test_alphanumeric_sender_encodes_like_the_real_one() -> None:
    # The Megafon DELIVER: OA "0DD0CDF2396C7EBB01" (13 semi-octets, type 0xD0).
    when = datetime(2014, 5, 27, 14, 1, 48, tzinfo=timezone(timedelta(hours=4)))
    (hex_pdu,) = pdu.encode_deliver("Megafon", "hi", timestamp=when)
    assert hex_pdu.startswith("00040DD0CDF2396C7EBB01")
    assert pdu.decode_deliver(hex_pdu).sender == "Megafon"


# ------------------------------------------------------------ TS 23.040 / primers


def test_classic_submit_example() -> None:
    # The SMS-SUBMIT of the well-known PDU primer (dreamfabric): to +46708251358,
    # "hellohello", relative validity AA (4 days).
    (part,) = pdu.encode_submit("+46708251358", "hellohello", validity_minutes=4 * 24 * 60)
    assert part.pdu == "0011000B916407281553F80000AA0AE8329BFD4697D9EC37"
    assert part.tpdu_length == 23


def test_classic_deliver_example() -> None:
    # Its SMS-DELIVER: SMSC +27381000015, sender type C8 (subscriber number, national
    # plan), time stamp 99-03-29 15:16:59 +02.
    msg = pdu.decode_deliver(
        "07917283010010F5040BC87238880900F10000993092516195800AE8329BFD4697D9EC37"
    )
    assert msg.smsc == "+27381000015"
    assert msg.sender == "27838890001"
    assert msg.timestamp == datetime(1999, 3, 29, 15, 16, 59, tzinfo=UTC2)
    assert msg.text == "hellohello"


def test_odd_digit_count_pads_with_f() -> None:
    (part,) = pdu.encode_submit(NUMBER, "x")
    assert part.pdu.startswith("0001000B912120550521F3")
    assert pdu.decode_submit(part.pdu).number == NUMBER
    (even,) = pdu.encode_submit("+1202555012", "x")
    assert even.pdu.startswith("0001000A912120550521")


def test_number_without_plus_is_type_unknown() -> None:
    (part,) = pdu.encode_submit("2025550123", "x")
    assert part.pdu.startswith("0001000A81")
    assert pdu.decode_submit(part.pdu).number == "2025550123"


def test_smsc_field() -> None:
    (part,) = pdu.encode_submit(NUMBER, "x", smsc="+12025550100")
    assert part.pdu.startswith("07912120550501F0")
    assert part.tpdu_length == len(part.pdu) // 2 - 8
    assert pdu.tpdu_length(part.pdu) == part.tpdu_length
    assert pdu.decode_submit(part.pdu).smsc == "+12025550100"


def test_first_octet_bits() -> None:
    def first_octet(**kw: Any) -> int:
        return int(pdu.encode_submit(NUMBER, "x", **kw)[0].pdu[2:4], 16)

    assert first_octet() == 0x01
    assert first_octet(request_status_report=True) == 0x21  # TP-SRR
    assert first_octet(validity_minutes=60) == 0x11  # TP-VPF = relative
    assert first_octet(reject_duplicates=True) == 0x05  # TP-RD
    long = pdu.encode_submit(NUMBER, "x" * 161, request_status_report=True, reference=7)
    assert [int(p.pdu[2:4], 16) for p in long] == [0x61, 0x61]  # TP-UDHI as well
    sub = pdu.decode_submit(long[1].pdu)
    assert sub.status_report_requested
    assert sub.concat == pdu.Concat(reference=7, total=2, seq=2)


@pytest.mark.parametrize(
    ("minutes", "octet", "back"),
    [
        (1, 0, 5),
        (5, 0, 5),
        (6, 1, 10),
        (720, 143, 720),
        (721, 144, 750),
        (1440, 167, 1440),
        (1441, 168, 2880),
        (4 * 1440, 170, 4 * 1440),
        (30 * 1440, 196, 30 * 1440),
        (30 * 1440 + 1, 197, 5 * 10080),
        (63 * 10080, 255, 63 * 10080),
        (10**9, 255, 63 * 10080),
    ],
)
def test_validity_table(minutes: int, octet: int, back: int) -> None:
    # TS 23.040 9.2.3.12.1, rounded up to the next period the octet can say.
    assert pdu.validity_octet(minutes) == octet
    assert pdu.validity_minutes_of(octet) == back


def test_validity_rounds_up_to_the_smallest_period() -> None:
    durations = [pdu.validity_minutes_of(o) for o in range(256)]
    assert durations == sorted(durations)
    for minutes in [*range(1, 3000, 7), *range(3000, 63 * 10080 + 1, 997)]:
        octet = pdu.validity_octet(minutes)
        assert durations[octet] >= minutes
        assert octet == 0 or durations[octet - 1] < minutes
    with pytest.raises(ValueError, match="at least 1 minute"):
        pdu.validity_octet(0)


# --------------------------------------------------------------- parts and limits


@pytest.mark.parametrize(
    ("text", "encoding", "parts", "units", "per_part"),
    [
        ("", "gsm7", 1, 0, 160),
        ("a" * 160, "gsm7", 1, 160, 160),
        ("a" * 161, "gsm7", 2, 161, 153),
        ("a" * 306, "gsm7", 2, 306, 153),
        ("a" * 307, "gsm7", 3, 307, 153),
        ("€" * 80, "gsm7", 1, 160, 160),
        ("€" * 81, "gsm7", 2, 162, 153),  # 76 escape pairs fit a part, not 76.5
        ("{}" * 77, "gsm7", 3, 308, 153),
        ("ж" * 70, "ucs2", 1, 70, 70),
        ("ж" * 71, "ucs2", 2, 71, 67),
        ("ж" * 134, "ucs2", 2, 134, 67),
        ("ж" * 135, "ucs2", 3, 135, 67),
        ("😀" * 35, "ucs2", 1, 70, 70),
        ("😀" * 36, "ucs2", 2, 72, 67),  # 33 pairs a part
        ("a" * 159 + "ç", "ucs2", 3, 160, 67),  # one non-GSM char turns it all UCS-2
    ],
)
def test_sms_info(text: str, encoding: str, parts: int, units: int, per_part: int) -> None:
    info = pdu.sms_info(text)
    assert info == pdu.SmsInfo(encoding, parts, units, per_part)
    assert len(pdu.encode_submit(NUMBER, text)) == parts


def test_escape_pair_is_never_split() -> None:
    text = "a" * 152 + "€" + "b" * 10
    encoding, parts = pdu.split_text(text)
    assert encoding == "gsm7"
    assert parts == ["a" * 152, "€" + "b" * 10]


def test_surrogate_pair_is_never_split() -> None:
    text = "ж" * 66 + "😀" + "ж" * 10
    encoding, parts = pdu.split_text(text)
    assert encoding == "ucs2"
    assert parts == ["ж" * 66, "😀" + "ж" * 10]
    encoded = pdu.encode_submit(NUMBER, text)
    assert [pdu.decode_submit(p.pdu).text for p in encoded] == parts


def test_part_limits() -> None:
    assert len(pdu.split_text("a" * 153 * 255)[1]) == 255
    with pytest.raises(ValueError, match="at most 255"):
        pdu.split_text("a" * (153 * 255 + 1))
    with pytest.raises(ValueError, match="lone surrogate"):
        pdu.encode_submit(NUMBER, "a\ud800b")
    with pytest.raises(ValueError, match="lone surrogate"):
        pdu.sms_info("\udc00")


@pytest.mark.parametrize(
    "number",
    [
        "",
        "+",
        "++12025550123",
        "12a4",
        "+1 202 555 0123",
        "+12025550123\n",
        "+12025550123\r",
        '+1202555"',
        "+1202555\x1a",
        "１２３",  # fullwidth digits: str.isdigit() would say yes
        "+" + "1" * 21,
        "Office",
    ],
)
def test_bad_numbers_are_refused(number: str) -> None:
    with pytest.raises(ValueError, match="must be"):
        pdu.encode_submit(number, "hello")


@pytest.mark.parametrize(
    "kw",
    [
        {"reference": 256},
        {"reference": -1},
        {"message_ref": 300},
        {"smsc": "+1 202"},
        {"validity_minutes": 0},
    ],
)
def test_bad_options_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must be|at least"):
        pdu.encode_submit(NUMBER, "hello", **kw)


# ----------------------------------------------------------------------- properties

GSM7_ALPHABET = st.sampled_from(sorted(gsm7.GSM7_CHARS | gsm7.EXTENSION_CHARS))
# Hypothesis prefers short strings; most branches force lengths that need several parts,
# and the last one puts an escape or surrogate pair right at a part boundary.
any_text = st.one_of(
    st.text(max_size=200),
    st.text(min_size=60, max_size=300),
    st.text(alphabet=GSM7_ALPHABET, min_size=140, max_size=700),
    st.text(alphabet=st.sampled_from("a€{😀ж\n "), min_size=50, max_size=300),
    st.builds(
        lambda n, tail: "a" * n + tail,
        st.sampled_from([65, 66, 67, 68, 69, 70, 150, 151, 152, 153, 158, 159, 160]),
        st.text(alphabet=st.sampled_from("a€{😀ж"), min_size=1, max_size=20),
    ),
)
# TP-UD starts after: first octet, MR, DA (2 + 6 octets for NUMBER), PID, DCS, UDL.
SUBMIT_HEADER_OCTETS = 13


def _assert_part_ends_cleanly(part: pdu.SubmitPart, encoding: str, *, multipart: bool) -> None:
    """On the wire, a part neither ends with an escape septet nor a high surrogate."""
    tpdu = bytes.fromhex(part.pdu)[1:]
    udl, ud = tpdu[SUBMIT_HEADER_OCTETS - 1], tpdu[SUBMIT_HEADER_OCTETS:]
    header = 6 if multipart else 0
    if encoding == "gsm7":
        fill, header_septets = (1, 7) if multipart else (0, 0)
        septets = gsm7.unpack_septets(ud[header:], udl - header_septets, fill)
        assert not septets or septets[-1] != gsm7.ESCAPE
    else:
        body = ud[header:]
        assert len(body) % 2 == 0
        assert not body or not 0xD8 <= body[-2] <= 0xDB


@FAST
@given(any_text)
def test_submit_roundtrip(text: str) -> None:
    parts = pdu.encode_submit(NUMBER, text, reference=42)
    info = pdu.sms_info(text)
    assert len(parts) == info.parts
    decoded = [pdu.decode_submit(p.pdu) for p in parts]
    assert "".join(d.text for d in decoded) == text
    for part, sub in zip(parts, decoded, strict=True):
        assert sub.number == NUMBER
        assert sub.encoding == info.encoding
        assert sub.text == part.text
        assert part.tpdu_length == len(part.pdu) // 2 - 1
        assert part.tpdu_length - SUBMIT_HEADER_OCTETS <= pdu.MAX_USER_DATA_OCTETS
        units = (
            gsm7.septet_length(part.text)
            if info.encoding == "gsm7"
            else len(part.text.encode("utf-16-be")) // 2
        )
        assert units <= info.chars_per_part
        _assert_part_ends_cleanly(part, info.encoding, multipart=len(parts) > 1)
        if len(parts) == 1:
            assert sub.concat is None
        else:
            assert sub.concat == pdu.Concat(reference=42, total=len(parts), seq=part.seq)


tz_strategy = st.integers(-79, 79).map(lambda q: timezone(timedelta(minutes=15 * q)))
time_strategy = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2089, 12, 31), timezones=tz_strategy
).map(lambda d: d.replace(microsecond=0))
sender_strategy = st.one_of(
    st.from_regex(r"\+?[0-9]{1,20}", fullmatch=True),
    st.text(alphabet=st.sampled_from("ABCXYZabc xyz019-&€"), min_size=1, max_size=5).filter(
        lambda s: gsm7.septet_length(s) <= 11
    ),
)


@FAST
@given(sender_strategy, any_text, time_strategy, st.integers(0, 255))
def test_deliver_roundtrip_through_reassembler(
    sender: str, text: str, when: datetime, reference: int
) -> None:
    pdus = pdu.encode_deliver(sender, text, timestamp=when, reference=reference)
    assert len(pdus) == pdu.sms_info(text).parts
    reassembler = pdu.Reassembler()
    results = [reassembler.add(pdu.decode_deliver(h), now=float(i)) for i, h in enumerate(pdus)]
    assert results[:-1] == [None] * (len(pdus) - 1)
    whole = results[-1]
    assert whole is not None
    assert (whole.sender, whole.text, whole.timestamp) == (sender, text, when)
    assert whole.timestamp.utcoffset() == when.utcoffset()
    assert reassembler.pending == 0


@FAST
@given(
    st.integers(0, 255),
    st.from_regex(r"\+?[0-9]{1,20}", fullmatch=True),
    st.integers(0, 255),
    time_strategy,
    time_strategy,
)
def test_status_report_roundtrip(
    ref: int, recipient: str, status: int, scts: datetime, dt: datetime
) -> None:
    hex_pdu = pdu.encode_status_report(ref, recipient, status=status, scts=scts, discharge=dt)
    report = pdu.decode_incoming(hex_pdu)
    assert report == pdu.StatusReport(
        message_ref=ref,
        recipient=recipient,
        status=status,
        delivered=status < 0x20,
        final=not 0x20 <= status < 0x40,
        scts=scts,
        discharge=dt,
    )


@pytest.mark.parametrize(
    ("status", "delivered", "final"),
    [
        (0x00, True, True),  # received by the recipient
        (0x01, True, True),  # forwarded, delivery unconfirmed
        (0x20, False, False),  # congestion, the SC keeps trying
        (0x30, False, False),
        (0x41, False, True),  # incompatible destination: permanent
        (0x46, False, True),  # validity period expired
        (0x62, False, True),  # temporary error, the SC gave up
    ],
)
def test_status_meaning(status: int, delivered: bool, final: bool) -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    report = pdu.decode_status_report(
        pdu.encode_status_report(9, NUMBER, status=status, scts=when, discharge=when)
    )
    assert (report.delivered, report.final) == (delivered, final)


def test_negative_time_zone() -> None:
    when = datetime(2024, 12, 31, 23, 59, 58, tzinfo=timezone(timedelta(hours=-5)))
    (hex_pdu,) = pdu.encode_deliver(NUMBER, "x", timestamp=when)
    # Time stamp: 42 21 13 32 95 85, then -20 quarters: "0A" (sign bit 3, swapped digits).
    assert "42211332958 50A".replace(" ", "") in hex_pdu
    assert pdu.decode_deliver(hex_pdu).timestamp.utcoffset() == timedelta(hours=-5)


@pytest.mark.parametrize(
    "when",
    [
        datetime(2024, 1, 1),  # naive
        datetime(2024, 1, 1, tzinfo=timezone(timedelta(minutes=10))),  # not a quarter hour
        datetime(2090, 1, 1, tzinfo=UTC),  # beyond what two digits can say
        datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=20))),  # beyond 79 quarters
    ],
)
def test_bad_timestamps_are_refused(when: datetime) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        pdu.encode_deliver(NUMBER, "x", timestamp=when)


def test_bad_alphanumeric_senders_are_refused() -> None:
    when = datetime(2024, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="1-11"):
        pdu.encode_deliver("A" * 12, "x", timestamp=when)
    with pytest.raises(ValueError, match="neither a number"):
        pdu.encode_deliver("Кафе", "x", timestamp=when)


# ------------------------------------------------------------------- malformed input

VALID_DELIVER = RECEIVED[1]["pdu"]
VALID_REPORT = RECEIVED[3]["pdu"]
ALL_PDUS = [p["pdu"] for v in SUBMITS for p in _parts(v)] + [r["pdu"] for r in RECEIVED]
DECODERS = [pdu.decode_submit, pdu.decode_deliver, pdu.decode_status_report, pdu.decode_incoming]


def _only_pdu_errors(hex_pdu: str) -> None:
    for decoder in DECODERS:
        with contextlib.suppress(pdu.PduError):
            decoder(hex_pdu)


@FAST
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _only_pdu_errors(data.hex())


@FAST
@given(
    st.sampled_from(ALL_PDUS),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(0, 200),
)
def test_fuzz_mutated_pdus(base: str, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(bytes.fromhex(base))
    for pos, value in flips:
        data[pos % len(data)] = value
    _only_pdu_errors(bytes(data[: len(data) - cut % len(data)]).hex())


@pytest.mark.parametrize("bad", ["", "0", "zz", "0G11", "00 11", "٠٠", "00\n11"])
def test_not_hex(bad: str) -> None:
    for decoder in DECODERS:
        with pytest.raises(pdu.PduError, match="hex"):
            decoder(bad)


def test_every_truncation_before_the_user_data_raises() -> None:
    # SMSC (8), first octet, OA (8), PID, DCS, SCTS (7), UDL: 27 octets before the text.
    data = bytes.fromhex(VALID_DELIVER)
    for end in range(1, 27):
        with pytest.raises(pdu.PduError, match="PDU ends"):
            pdu.decode_deliver(data[:end].hex())
    # The user data itself may come short (see the module docstring): a prefix decodes.
    assert pdu.decode_deliver(data[:31].hex()).text == "It i"


def test_wrong_message_types() -> None:
    with pytest.raises(pdu.PduError, match="not an SMS-DELIVER"):
        pdu.decode_deliver(VALID_REPORT)
    with pytest.raises(pdu.PduError, match="not an SMS-STATUS-REPORT"):
        pdu.decode_status_report(VALID_DELIVER)
    with pytest.raises(pdu.PduError, match="not an SMS-SUBMIT"):
        pdu.decode_submit(VALID_DELIVER)


def _deliver_with_udh(udh: str, text_hex: str = "0061", dcs: str = "08") -> str:
    ud = bytes.fromhex(udh + text_hex)
    return f"0044{'0B912120550521F3'}00{dcs}42101020304080{len(ud):02X}{ud.hex().upper()}"


def test_udh_variants() -> None:
    # 16-bit reference IE (0x08).
    msg = pdu.decode_deliver(_deliver_with_udh("06080412340200"))
    assert msg.concat is None  # seq 0: TS 23.040 says ignore the element
    msg = pdu.decode_deliver(_deliver_with_udh("060804123402 02".replace(" ", "")))
    assert msg.concat == pdu.Concat(reference=0x1234, total=2, seq=2)
    assert msg.text == "a"
    # A port-addressing IE (0x05) first, then the concat IE: both parsed, text intact.
    msg = pdu.decode_deliver(_deliver_with_udh("0B05040B8423F00003070301"))
    assert msg.concat == pdu.Concat(reference=7, total=3, seq=1)
    # seq beyond total: ignored.
    assert pdu.decode_deliver(_deliver_with_udh("050003070304")).concat is None
    with pytest.raises(pdu.PduError, match="overruns"):
        pdu.decode_deliver(_deliver_with_udh("0400050301"))
    with pytest.raises(pdu.PduError, match="User Data Header"):
        pdu.decode_deliver(_deliver_with_udh("09000307"))


@pytest.mark.parametrize(
    ("dcs", "encoding"),
    [
        ("00", "gsm7"),
        ("10", "gsm7"),
        ("F0", "gsm7"),
        ("04", "8bit"),
        ("F4", "8bit"),
        ("08", "ucs2"),
    ],
)
def test_data_coding_schemes(dcs: str, encoding: str) -> None:
    text_hex = {"gsm7": "E8329BFD4697D9EC37", "8bit": "68656C6C6F68656C6C6F"}.get(
        encoding, "00680065006C006C006F00680065006C006C006F"
    )
    udl = "14" if encoding == "ucs2" else "0A"  # octets for UCS-2, else septets / octets
    hex_pdu = f"0004 0B912120550521F3 00{dcs} 42101020304080 {udl}{text_hex}".replace(" ", "")
    msg = pdu.decode_deliver(hex_pdu)
    assert (msg.text, msg.encoding) == ("hellohello", encoding)


def test_compressed_data_is_refused() -> None:
    with pytest.raises(pdu.PduError, match="compressed"):
        pdu.decode_deliver("00040B912120550521F3002042101020304080024865")


# -------------------------------------------------------------------------- reassembly


def _deliver_parts(sender: str, text: str, reference: int) -> list[pdu.Deliver]:
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    return [
        pdu.decode_deliver(h)
        for h in pdu.encode_deliver(sender, text, timestamp=when, reference=reference)
    ]


LONG_A = "A" * 200 + "end"
LONG_B = "ж" * 100 + "😀"


def test_reassembly_out_of_order_interleaved_and_duplicated() -> None:
    a = _deliver_parts("+12025550101", LONG_A, 5)
    b = _deliver_parts("+12025550102", LONG_B, 5)  # same reference, other sender
    r = pdu.Reassembler()
    assert r.add(a[1], 0.0) is None
    assert r.add(b[1], 1.0) is None
    assert r.add(a[1], 2.0) is None  # a duplicate
    assert r.duplicates == 1
    assert r.pending == 2
    whole_b = r.add(b[0], 3.0)
    assert whole_b is not None
    assert whole_b.text == LONG_B
    assert whole_b.encoding == "ucs2"
    whole_a = r.add(a[0], 4.0)
    assert whole_a is not None
    assert whole_a.text == LONG_A
    assert whole_a.concat is None
    assert r.pending == 0
    assert r.pop_stale(5.0) == []


def test_reassembly_gives_up_after_max_age_without_losing_parts() -> None:
    a = _deliver_parts("+12025550101", LONG_A, 9)
    r = pdu.Reassembler(max_age=60.0)
    assert r.add(a[0], 100.0) is None
    assert r.pop_stale(159.0) == []
    assert r.pop_stale(160.0) == [[a[0]]]
    assert r.pending == 0
    # The late part starts a new group rather than completing the abandoned one.
    assert r.add(a[1], 161.0) is None
    assert r.pending == 1


def test_reassembly_is_bounded() -> None:
    r = pdu.Reassembler(max_pending=3)
    firsts = [_deliver_parts(f"+120255501{i:02d}", LONG_A, 1)[0] for i in range(10)]
    for i, part in enumerate(firsts):
        assert r.add(part, float(i)) is None
        assert r.pending <= 3
    # 7 groups gave way; the stale list keeps the 3 newest of them, 4 were dropped.
    assert r.dropped == 4
    assert r.pop_stale(10.0) == [[firsts[4]], [firsts[5]], [firsts[6]]]
    assert r.pending == 3
    with pytest.raises(ValueError, match="max_pending"):
        pdu.Reassembler(max_pending=0)


def test_reassembly_keeps_apart_two_messages_sharing_a_reference() -> None:
    # Senders reuse references: two 2-part texts with reference 0, parts interleaved.
    one = _deliver_parts(NUMBER, "1" * 200, 0)
    two = _deliver_parts(NUMBER, "2" * 200, 0)
    r = pdu.Reassembler()
    assert r.add(one[0], 0.0) is None
    assert r.add(two[0], 1.0) is None  # same key and seq, other content: not a duplicate
    assert r.duplicates == 0
    first = r.add(one[1], 2.0)
    assert first is not None
    assert first.text == "1" * 200
    second = r.add(two[1], 3.0)
    assert second is not None
    assert second.text == "2" * 200
    assert r.pending == 0


def test_reserved_message_type_is_read_as_deliver() -> None:
    # TS 23.040 9.2.3.1: TP-MTI 3 is handled as an SMS-DELIVER.
    (hex_pdu,) = pdu.encode_deliver(NUMBER, "hi", timestamp=datetime(2024, 1, 1, tzinfo=UTC))
    reserved = hex_pdu[:2] + f"{int(hex_pdu[2:4], 16) | 0x03:02X}" + hex_pdu[4:]
    msg = pdu.decode_incoming(reserved)
    assert isinstance(msg, pdu.Deliver)
    assert msg.text == "hi"
    assert pdu.decode_deliver(reserved) == msg


def test_single_part_passes_through() -> None:
    (msg,) = _deliver_parts(NUMBER, "short", 0)
    assert msg.concat is None
    assert pdu.Reassembler().add(msg, 0.0) is msg
