"""GSM 03.38 (3GPP TS 23.038) 7-bit default alphabet: character mapping and septet packing.

Pure functions, no I/O. Text is mapped to septets through the default alphabet
(TS 23.038 6.2.1) and its extension table (6.2.1.1), reached through the escape
septet 0x1B; an extension character costs two septets.

Written here rather than taken from a package: ``gsm0338`` is only a codec (no septet
cost, no packing with the fill bits a User Data Header needs) and the SMS libraries
that pack septets (smspdu, python-gsmmodem, python-messaging) are unmaintained,
untyped, and bundle their own PDU layers. The table below is the whole alphabet.
"""

from __future__ import annotations

__all__ = [
    "ESCAPE",
    "EXTENSION_CHARS",
    "GSM7_CHARS",
    "decode_septets",
    "encode_septets",
    "is_gsm7",
    "pack_septets",
    "septet_cost",
    "septet_length",
    "unpack_septets",
]

ESCAPE = 0x1B
"""The escape septet: the next septet is read from the extension table."""

# The default alphabet, indexed by septet value (TS 23.038 6.2.1). 0x1B is the escape,
# which has no character of its own; "\x1b" stands in for it and is never encoded.
_DEFAULT = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(_DEFAULT) == 128

# The extension table (TS 23.038 6.2.1.1): septet after ESC -> character.
_EXTENSION: dict[int, str] = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

_CHAR_TO_SEPTET: dict[str, int] = {ch: i for i, ch in enumerate(_DEFAULT) if i != ESCAPE}
_CHAR_TO_EXTENSION: dict[str, int] = {ch: code for code, ch in _EXTENSION.items()}

GSM7_CHARS = frozenset(_CHAR_TO_SEPTET)
"""Characters of the default alphabet (one septet each)."""
EXTENSION_CHARS = frozenset(_CHAR_TO_EXTENSION)
"""Characters of the extension table (two septets each: ESC + code)."""


def septet_cost(char: str) -> int:
    """Septets one character costs: 1, 2 (extension table) or 0 (not in GSM-7)."""
    if char in _CHAR_TO_SEPTET:
        return 1
    if char in _CHAR_TO_EXTENSION:
        return 2
    return 0


def is_gsm7(text: str) -> bool:
    """True when every character is in the default alphabet or the extension table."""
    return all(ch in _CHAR_TO_SEPTET or ch in _CHAR_TO_EXTENSION for ch in text)


def septet_length(text: str) -> int:
    """Septets the text takes in GSM-7; ValueError when a character is not in GSM-7."""
    total = 0
    for ch in text:
        cost = septet_cost(ch)
        if cost == 0:
            raise ValueError(f"character {ch!r} is not in the GSM 7-bit alphabet")
        total += cost
    return total


def encode_septets(text: str) -> list[int]:
    """Text -> septet values (extension characters as ESC + code).

    Raises ValueError for a character outside the default alphabet and extension table.
    """
    out: list[int] = []
    for ch in text:
        septet = _CHAR_TO_SEPTET.get(ch)
        if septet is not None:
            out.append(septet)
            continue
        code = _CHAR_TO_EXTENSION.get(ch)
        if code is None:
            raise ValueError(f"character {ch!r} is not in the GSM 7-bit alphabet")
        out.extend((ESCAPE, code))
    return out


def decode_septets(septets: list[int] | bytes) -> str:
    """Septet values -> text. Never fails on any 7-bit input.

    An escape followed by a code the extension table lacks decodes as the default
    alphabet's character for that code (TS 23.038 6.2.1.1 says to display it so); an
    escape followed by another escape, or a lone escape at the end, decodes as a space
    (the code is reserved for a further table, to be shown as a space until one exists).
    ValueError for a value above 127.
    """
    out: list[str] = []
    i = 0
    n = len(septets)
    while i < n:
        septet = septets[i]
        if not 0 <= septet <= 0x7F:
            raise ValueError(f"septet value {septet} out of range")
        if septet != ESCAPE:
            out.append(_DEFAULT[septet])
            i += 1
            continue
        if i + 1 >= n:
            out.append(" ")
            break
        code = septets[i + 1]
        if not 0 <= code <= 0x7F:
            raise ValueError(f"septet value {code} out of range")
        if code == ESCAPE:
            out.append(" ")
        else:
            out.append(_EXTENSION.get(code, _DEFAULT[code]))
        i += 2
    return "".join(out)


def pack_septets(septets: list[int], fill_bits: int = 0) -> bytes:
    """Pack septets into octets, least significant bit first (TS 23.038 6.1.2.1.1).

    ``fill_bits`` zero bits come first: the padding that puts the first character on a
    septet boundary after a User Data Header (TS 23.040 9.2.3.24). Spare bits at the
    end are zero; the septet count travels separately (TP-UDL), so they cannot be
    mistaken for an '@'.
    """
    if not 0 <= fill_bits <= 6:
        raise ValueError(f"fill_bits must be 0..6, not {fill_bits}")
    acc = 0
    for i, septet in enumerate(septets):
        if not 0 <= septet <= 0x7F:
            raise ValueError(f"septet value {septet} out of range")
        acc |= septet << (fill_bits + 7 * i)
    nbits = fill_bits + 7 * len(septets)
    return acc.to_bytes((nbits + 7) // 8, "little")


def unpack_septets(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    """Unpack ``count`` septets from octets packed by :func:`pack_septets`.

    ValueError when the octets hold fewer than ``count`` septets.
    """
    if not 0 <= fill_bits <= 6:
        raise ValueError(f"fill_bits must be 0..6, not {fill_bits}")
    if count < 0 or fill_bits + 7 * count > 8 * len(data):
        raise ValueError(f"{len(data)} octets cannot hold {count} septets")
    acc = int.from_bytes(data, "little") >> fill_bits
    return [(acc >> (7 * i)) & 0x7F for i in range(count)]
