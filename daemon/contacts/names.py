"""`Names`: who the office knows a caller as, for the pipeline's templates.

Handed to the pipeline at assembly (`textback run`, `textback replay`). For a caller with
a valid number it returns the office's `Contact`, from the contacts file first, then from
the Asterisk database family the PBX keeps caller names in (AMI DBGet, through the
function the service passes in), or None. It never returns the caller ID name the
caller's network sent: whether that may be used is the templates' decision
(`daemon.decide.names`).

The file is read at start (`reload`), again on SIGHUP (`reload`), and when it changes:
`run` looks at its size, mtime and inode every WATCH_INTERVAL, and a lookup looks when
the last look is more than LOOKUP_CHECK_INTERVAL old. No busy loop: one stat each time.
A file that cannot be read or parsed is said once, loudly, and the previous list stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import phonenumbers

from daemon.clock import Clock
from daemon.config import Config
from daemon.contacts.book import Book, ContactsFileError, load_book
from daemon.decide.names import clean_text
from daemon.decide.numbers import CallerKind, classify_caller
from daemon.errors import TextbackError
from daemon.logsetup import kv
from daemon.model import Contact, FinishedCall

log = logging.getLogger("daemon.contacts")

#: `astdb(family, key, timeout)`: the value of an Asterisk database entry, None when there
#: is none; raises a TextbackError (AMI down, refused, timed out) when it cannot say.
AstDbGet = Callable[[str, str, float], Awaitable[str | None]]

#: A name from the Asterisk database is kept this long (an edited phone book entry is
#: seen within it); "no entry" is kept for ASTDB_MISS_TTL.
ASTDB_TTL = 300.0
ASTDB_MISS_TTL = 60.0
#: Numbers kept in the Asterisk database cache (bounded: spoofed floods cannot grow it).
ASTDB_CACHE_MAX = 4096
#: Longest wait for one DBGet answer: a text waits for it (30 s delay by default).
ASTDB_TIMEOUT = 2.0
#: Longest name kept from the Asterisk database.
ASTDB_NAME_MAX = 60
#: How often `run` looks at the contacts file for a change (one stat).
WATCH_INTERVAL = 30.0
#: A lookup looks at the file first when the last look is older than this.
LOOKUP_CHECK_INTERVAL = 5.0

_Signature = tuple[int, int, int]


class Names:
    """The caller-name lookup the pipeline holds: `await names.lookup(call)`."""

    def __init__(self, cfg: Config, clock: Clock, *, astdb: AstDbGet | None = None) -> None:
        self._cfg = cfg
        self._clock = clock
        self._astdb = astdb
        self._book = Book()
        self._book_path = ""
        self._signature: _Signature | None = None
        self._checked_at: float | None = None
        self._last_error = ""
        self._lock = asyncio.Lock()
        self._cache: OrderedDict[str, tuple[float, Contact | None]] = OrderedDict()
        self._astdb_failing = False
        #: DBGet actions sent, and lookups the cache answered (for tests and benchmarks).
        self.astdb_queries = 0
        self.astdb_hits = 0

    # -- config and the file -----------------------------------------------------------

    @property
    def book(self) -> Book:
        """The contact list in use (empty when there is no file or it never loaded)."""
        return self._book

    def reconfigure(self, cfg: Config) -> None:
        """A new config (SIGHUP): a new file or family takes effect at the next `reload`."""
        old = self._cfg.contacts
        self._cfg = cfg
        if cfg.contacts.astdb_family != old.astdb_family:
            self._cache.clear()
        if (
            cfg.contacts.file != old.file
            or cfg.textback.home_region != self._cfg.textback.home_region
        ):
            self._signature = None

    async def reload(self) -> bool:
        """Read the contacts file now (start, SIGHUP). False when it could not be used (the
        previous list is kept); True when read, or when no file is configured."""
        async with self._lock:
            return await self._load(force=True)

    async def refresh(self) -> bool:
        """Read the file again only when it changed (size, mtime or inode). True when a
        new list was loaded."""
        async with self._lock:
            return await self._load(force=False)

    async def run(self) -> None:
        """Look for changes of the file every WATCH_INTERVAL (the service runs this)."""
        while True:
            await self._clock.sleep(WATCH_INTERVAL)
            await self.refresh()

    async def _load(self, *, force: bool) -> bool:
        path = self._cfg.contacts.file.strip()
        self._checked_at = self._clock.now()
        if not path:
            if self._book_path:
                log.info(kv(event="contacts_off", was=self._book_path))
            self._book, self._book_path, self._signature = Book(), "", None
            return force
        signature = _stat(path)
        if not force and signature is not None and signature == self._signature:
            return False
        if not force and signature is None and self._last_error:
            return False  # still missing: said already
        region = self._cfg.textback.home_region
        try:
            book = await asyncio.to_thread(load_book, path, region)
        except ContactsFileError as exc:
            self._signature = signature
            message = str(exc)
            if message != self._last_error or force:
                log.error(
                    kv(
                        event="contacts_file_error",
                        file=path,
                        error=message,
                        keeping=f"{len(self._book)} numbers read before",
                    )
                )
            self._last_error = message
            return False
        self._book, self._book_path, self._signature = book, path, signature
        self._last_error = ""
        log.info(
            kv(
                event="contacts_loaded",
                file=path,
                kind=book.kind,
                numbers=len(book),
                skipped=book.skipped_count,
                duplicates=book.duplicates,
            )
        )
        if book.skipped_count:
            log.warning(
                kv(
                    event="contacts_skipped",
                    file=path,
                    rows=book.skipped_count,
                    first=book.skipped[0],
                    hint="textback check lists them",
                )
            )
        return True

    # -- lookups -----------------------------------------------------------------------

    async def lookup(self, call: FinishedCall) -> Contact | None:
        """The office's contact for this call's caller, or None (unknown, withheld,
        not a valid number, or the Asterisk database could not be asked)."""
        tb = self._cfg.textback
        judged = classify_caller(
            call.caller, home_region=tb.home_region.upper(), withheld=call.withheld
        )
        if judged.kind is not CallerKind.VALID or judged.e164 is None:
            return None
        e164 = judged.e164
        if self._cfg.contacts.file.strip():
            checked = self._checked_at
            if checked is None or self._clock.now() - checked >= LOOKUP_CHECK_INTERVAL:
                await self.refresh()
            contact = self._book.get(e164)
            if contact is not None:
                return contact
        family = self._cfg.contacts.astdb_family.strip()
        if family and self._astdb is not None:
            return await self._from_astdb(family, e164, call.caller)
        return None

    async def _from_astdb(self, family: str, e164: str, raw: str) -> Contact | None:
        now = self._clock.now()
        cached = self._cache.get(e164)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(e164)
            self.astdb_hits += 1
            return cached[1]
        assert self._astdb is not None
        contact: Contact | None = None
        try:
            for key in astdb_keys(e164, raw):
                self.astdb_queries += 1
                value = await self._astdb(family, key, ASTDB_TIMEOUT)
                name = clean_text(value or "", ASTDB_NAME_MAX)
                if name:
                    contact = Contact(name, "", "astdb")
                    break
        except TextbackError as exc:
            # AMI down or slow: this text goes without the name, nothing is cached
            if not self._astdb_failing:
                log.warning(kv(event="astdb_lookup_failed", family=family, error=exc))
            else:
                log.debug(kv(event="astdb_lookup_failed", family=family, error=exc))
            self._astdb_failing = True
            return None
        if self._astdb_failing:
            log.info(kv(event="astdb_lookup_recovered", family=family))
            self._astdb_failing = False
        ttl = ASTDB_TTL if contact is not None else ASTDB_MISS_TTL
        self._cache[e164] = (now + ttl, contact)
        self._cache.move_to_end(e164)
        while len(self._cache) > ASTDB_CACHE_MAX:
            self._cache.popitem(last=False)
        return contact


def astdb_keys(e164: str, raw: str) -> list[str]:
    """The keys a caller's name may sit under in the Asterisk database, most likely first:
    the number as the PBX showed it (what the dialplan's ${DB(cidname/${CALLERID(num)})}
    uses), then E.164, then the national number ("2025550123"). Only digits and a
    leading '+' ever reach an AMI action."""
    out: list[str] = []
    text = raw.strip()
    if text and text.lstrip("+").isdigit() and "+" not in text[1:] and len(text) <= 20:
        out.append(text)
    out.append(e164)
    try:
        national = str(phonenumbers.national_significant_number(phonenumbers.parse(e164)))
    except phonenumbers.NumberParseException:
        national = ""
    if national.isdigit():
        out.append(national)
    return list(dict.fromkeys(out))


def _stat(path: str) -> _Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
