"""GSM 03.38 default alphabet, extension table and septet packing (gsm/gsm7.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gsm import gsm7

FAST = settings(max_examples=200, deadline=None)

# TS 23.038 6.2.1 spot checks: the places where GSM-7 differs from ASCII.
DEFAULT_TABLE_SAMPLES = {
    "@": 0x00,
    "£": 0x01,
    "$": 0x02,
    "¥": 0x03,
    "è": 0x04,
    "Ç": 0x09,
    "\n": 0x0A,
    "\r": 0x0D,
    "Δ": 0x10,
    "_": 0x11,
    "Ω": 0x15,
    "Ξ": 0x1A,
    "É": 0x1F,
    " ": 0x20,
    "¤": 0x24,
    "0": 0x30,
    "¡": 0x40,
    "A": 0x41,
    "Ä": 0x5B,
    "§": 0x5F,
    "¿": 0x60,
    "a": 0x61,
    "ä": 0x7B,
    "ü": 0x7E,
    "à": 0x7F,
}

# TS 23.038 6.2.1.1: the whole extension table.
EXTENSION_TABLE = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}


def test_alphabet_sizes() -> None:
    assert len(gsm7.GSM7_CHARS) == 127  # 128 codes less the escape
    assert frozenset(EXTENSION_TABLE) == gsm7.EXTENSION_CHARS
    assert not gsm7.GSM7_CHARS & gsm7.EXTENSION_CHARS


@pytest.mark.parametrize(("char", "septet"), DEFAULT_TABLE_SAMPLES.items())
def test_default_table(char: str, septet: int) -> None:
    assert gsm7.encode_septets(char) == [septet]
    assert gsm7.decode_septets([septet]) == char
    assert gsm7.septet_cost(char) == 1


@pytest.mark.parametrize(("char", "code"), EXTENSION_TABLE.items())
def test_extension_table_costs_two(char: str, code: int) -> None:
    assert gsm7.encode_septets(char) == [gsm7.ESCAPE, code]
    assert gsm7.decode_septets([gsm7.ESCAPE, code]) == char
    assert gsm7.septet_cost(char) == 2
    assert gsm7.septet_length("a" + char) == 3


@pytest.mark.parametrize("char", ["ç", "ж", "😀", "\t", "`", "\x1b", "\u2126"])
def test_outside_gsm7(char: str) -> None:
    # U+2126 OHM SIGN looks like the alphabet's U+03A9 GREEK CAPITAL OMEGA but is not it.
    assert not gsm7.is_gsm7("abc" + char)
    assert gsm7.septet_cost(char) == 0
    with pytest.raises(ValueError, match="not in the GSM 7-bit alphabet"):
        gsm7.encode_septets(char)
    with pytest.raises(ValueError, match="not in the GSM 7-bit alphabet"):
        gsm7.septet_length(char)


def test_pack_hellohello() -> None:
    # The classic packing example (TS 23.038 6.1.2.1.1 style, in every SMS PDU primer).
    septets = gsm7.encode_septets("hellohello")
    assert gsm7.pack_septets(septets).hex().upper() == "E8329BFD4697D9EC37"
    assert gsm7.decode_septets(gsm7.unpack_septets(bytes.fromhex("E8329BFD4697D9EC37"), 10)) == (
        "hellohello"
    )


def test_pack_eight_septets_fill_seven_octets() -> None:
    # 8 septets = 56 bits = exactly 7 octets; no spare bits, no trailing '@'.
    packed = gsm7.pack_septets(gsm7.encode_septets("abcdefgh"))
    assert len(packed) == 7
    assert gsm7.decode_septets(gsm7.unpack_septets(packed, 8)) == "abcdefgh"


def test_pack_with_fill_bit() -> None:
    # After a 6-octet UDH one fill bit puts the first septet on a boundary: 'L' (0x4C)
    # shifted left by one is 0x98, as in the concatenated vector of pdu-vectors.json.
    packed = gsm7.pack_septets(gsm7.encode_septets("Lorem"), fill_bits=1)
    assert packed[0] == 0x98
    assert gsm7.unpack_septets(packed, 5, fill_bits=1) == gsm7.encode_septets("Lorem")


def test_unpack_refuses_too_few_octets() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        gsm7.unpack_septets(b"\x00\x00", 3)
    with pytest.raises(ValueError, match="fill_bits"):
        gsm7.pack_septets([1], fill_bits=7)
    with pytest.raises(ValueError, match="out of range"):
        gsm7.pack_septets([128])


def test_decode_escape_oddities() -> None:
    # ESC + a code without an extension character shows the default character (6.2.1.1).
    assert gsm7.decode_septets([gsm7.ESCAPE, 0x41]) == "A"
    # ESC ESC (reserved for another table) and a dangling ESC show as a space.
    assert gsm7.decode_septets([gsm7.ESCAPE, gsm7.ESCAPE, 0x61]) == " a"
    assert gsm7.decode_septets([0x61, gsm7.ESCAPE]) == "a "
    with pytest.raises(ValueError, match="out of range"):
        gsm7.decode_septets([200])


gsm7_text = st.text(alphabet=st.sampled_from(sorted(gsm7.GSM7_CHARS | gsm7.EXTENSION_CHARS)))


@FAST
@given(gsm7_text)
def test_encode_decode_roundtrip(text: str) -> None:
    septets = gsm7.encode_septets(text)
    assert len(septets) == gsm7.septet_length(text)
    assert gsm7.decode_septets(septets) == text


@FAST
@given(st.lists(st.integers(0, 127), max_size=200), st.integers(0, 6))
def test_pack_unpack_roundtrip(septets: list[int], fill: int) -> None:
    packed = gsm7.pack_septets(septets, fill)
    assert len(packed) == (fill + 7 * len(septets) + 7) // 8
    assert gsm7.unpack_septets(packed, len(septets), fill) == septets


@FAST
@given(st.lists(st.integers(0, 127), max_size=200))
def test_decode_any_septets(septets: list[int]) -> None:
    # Whatever 7-bit values arrive, decoding yields text and never raises.
    assert isinstance(gsm7.decode_septets(septets), str)
