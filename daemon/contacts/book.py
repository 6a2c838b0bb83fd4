"""The office's contact list from a file: CSV (`number,name[,first_name]`) or vCard.

Numbers are matched in E.164 whatever their spelling ("(202) 555-0123", "+1 202 555 0123",
"tel:+1-202-555-0123"), read with the office's home region. A row or card that cannot be
used (no valid number, no name) is skipped and said so (`Book.skipped`); a file that
cannot be read or parsed at all raises `ContactsFileError`, so the caller can keep the
list it had.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vobject

from daemon.decide.names import clean_text
from daemon.decide.numbers import CallerKind, classify_caller
from daemon.errors import TextbackError
from daemon.model import Contact

#: A bigger file is refused (a phone book of 100,000 contacts is a few MB).
MAX_FILE_BYTES = 32 * 1024 * 1024
#: Contacts kept at most; the rest of a larger file is skipped (and said so).
MAX_CONTACTS = 200_000
#: Longest name kept from a file (texts cut names shorter still).
NAME_MAX = 60
#: Skipped rows described in `Book.skipped` (all are counted).
SKIPPED_KEPT = 20

#: Header cells that mark a CSV's first row as a header, not a contact.
_HEADER_WORDS = frozenset(
    {"number", "phone", "phone number", "tel", "telephone", "mobile", "name", "caller"}
)


class ContactsFileError(TextbackError):
    """The contacts file cannot be read or parsed at all (the previous list is kept)."""


@dataclass(frozen=True)
class Book:
    """A contact list: E.164 number -> Contact, and what was left out."""

    contacts: Mapping[str, Contact] = field(default_factory=dict)
    kind: str = ""  # "csv" or "vcard"
    skipped_count: int = 0
    skipped: tuple[str, ...] = ()  # the first SKIPPED_KEPT, e.g. "line 7: no valid number"
    duplicates: int = 0  # numbers listed again (the first entry wins)

    def get(self, e164: str) -> Contact | None:
        """The contact of an E.164 number, if listed."""
        return self.contacts.get(e164)

    def __len__(self) -> int:
        return len(self.contacts)


class _Builder:
    def __init__(self, home_region: str, kind: str) -> None:
        self.region = home_region.upper()
        self.kind = kind
        self.contacts: dict[str, Contact] = {}
        self.skipped_count = 0
        self.skipped: list[str] = []
        self.duplicates = 0

    def skip(self, where: str, why: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < SKIPPED_KEPT:
            self.skipped.append(f"{where}: {why}")

    def e164(self, raw: str) -> str | None:
        text = raw.strip()
        if text.lower().startswith("tel:"):
            text = text[4:]
        text = text.split(";", 1)[0]  # tel: URI parameters (;ext=...)
        judged = classify_caller(text, home_region=self.region)
        return judged.e164 if judged.kind is CallerKind.VALID else None

    def add(self, where: str, numbers: list[str], name: str, first_name: str) -> None:
        name = clean_text(name, NAME_MAX)
        first_name = clean_text(first_name, NAME_MAX)
        if not name and not first_name:
            self.skip(where, "no name")
            return
        good = [n for n in (self.e164(raw) for raw in numbers) if n is not None]
        if not good:
            shown = ", ".join(repr(clean_text(n, 40)) for n in numbers) or "none"
            self.skip(where, f"no valid phone number ({shown})")
            return
        contact = Contact(name or first_name, first_name, "file")
        for number in good:
            if number in self.contacts:
                self.duplicates += 1
            elif len(self.contacts) >= MAX_CONTACTS:
                self.skip(where, f"more than {MAX_CONTACTS} numbers")
            else:
                self.contacts[number] = contact

    def book(self) -> Book:
        return Book(
            self.contacts, self.kind, self.skipped_count, tuple(self.skipped), self.duplicates
        )


def decode(data: bytes) -> str:
    """A file's text: UTF-8 (with or without a BOM), else Windows-1252 (Excel's CSV)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def is_vcard(text: str) -> bool:
    """True when the text is a vCard file (it starts with BEGIN:VCARD)."""
    return text.lstrip().upper().startswith("BEGIN:VCARD")


def parse_book(text: str, home_region: str) -> Book:
    """A contact list from a file's text, CSV or vCard (told apart by the content)."""
    if is_vcard(text):
        return _parse_vcard(text, home_region)
    return _parse_csv(text, home_region)


def load_book(path: Path | str, home_region: str) -> Book:
    """Read and parse a contacts file. ContactsFileError when it cannot be used at all."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ContactsFileError(
                f"{p}: {size} bytes, more than the {MAX_FILE_BYTES} a contacts file may have"
            )
        data = p.read_bytes()
    except OSError as exc:
        raise ContactsFileError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    book = parse_book(decode(data), home_region)
    if not book.contacts and data.strip():
        why = f" ({book.skipped[0]})" if book.skipped else ""
        raise ContactsFileError(f"{p}: no usable contact in the file{why}")
    return book


# -- CSV -----------------------------------------------------------------------------------


def _delimiter(text: str) -> str:
    """Comma, or the semicolon or tab a spreadsheet in some locales writes instead."""
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            if "," not in line:
                if ";" in line:
                    return ";"
                if "\t" in line:
                    return "\t"
            return ","
    return ","


def _parse_csv(text: str, home_region: str) -> Book:
    out = _Builder(home_region, "csv")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    first = True
    try:
        for row in reader:
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            where = f"line {reader.line_num}"
            if first and out.e164(cells[0]) is None and cells[0].lower() in _HEADER_WORDS:
                first = False
                continue  # a header row
            first = False
            name = cells[1] if len(cells) > 1 else ""
            first_name = cells[2] if len(cells) > 2 else ""
            out.add(where, [cells[0]], name, first_name)
    except csv.Error as exc:
        raise ContactsFileError(f"CSV line {reader.line_num}: {exc}") from exc
    return out.book()


# -- vCard ---------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """A vCard value as text: vobject gives a string, or a list for repeated parts."""
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value if v)
    return str(value or "")


def _cards(text: str) -> Iterator[Any]:
    # vobject logs each unreadable line itself; those lines are counted as skipped cards
    # below (a card without a name or number), so its own log line is not needed.
    vlog = logging.getLogger("vobject.base")
    level = vlog.level
    vlog.setLevel(logging.CRITICAL)
    try:
        yield from vobject.readComponents(text, ignoreUnreadable=True)
    finally:
        vlog.setLevel(level)


def _parse_vcard(text: str, home_region: str) -> Book:
    out = _Builder(home_region, "vcard")
    index = 0
    try:
        for index, card in enumerate(_cards(text), start=1):
            if getattr(card, "name", "").upper() != "VCARD":
                continue
            where = f"card {index}"
            given, family = "", ""
            n = card.contents.get("n")
            if n:
                given, family = _text(n[0].value.given), _text(n[0].value.family)
            name = _text(card.getChildValue("fn", "")) or " ".join(p for p in (given, family) if p)
            if not name:
                name = _text(card.getChildValue("org", ""))
            numbers = [_text(tel.value) for tel in card.contents.get("tel", [])]
            out.add(where, numbers, name, given)
    except ContactsFileError:
        raise
    except Exception as exc:  # vobject raises many kinds (ParseError, ValueError, ...)
        raise ContactsFileError(f"vCard after card {index}: {exc}") from exc
    return out.book()
