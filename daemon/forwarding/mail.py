"""Replies forwarded to the office by mail, through a real SMTP server (aiosmtplib).

A sink: it hears `ReplyReceived` and wakes its worker; it never slows receipt or texting.
What to mail is the `forwards` table, written in each reply's own transaction by the
inbox, so a reply received is a mail owed, across crashes and restarts. The worker sends
what is due, one mail per reply (all `forward_email` addresses on it), and:

- a server that is down, slow or answers 4xx: the mail waits and is tried again, 30 s
  doubling to an hour, until GIVE_UP_AFTER has passed since the reply; then it is given
  up with one loud line (the reply stays in `textback replies`);
- a 5xx answer (a refused address, a refused login): failed at once, loudly: resending
  the same mail to the same server will not change its mind.

Each mail names the caller's number, the text, and the call it answers (time in the
office's zone, line, outcome); its subject can be scanned ("Reply from +1 202-555-0101 to
your missed call at 10:32"), and all mails about one caller form one thread
(Message-ID, In-Reply-To and References to a root per caller).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib
import phonenumbers

from daemon.clock import Clock, first_of
from daemon.config import Config
from daemon.decide.hours import office_zone
from daemon.decide.templates import clean_text
from daemon.logsetup import kv
from daemon.sinks.bus import TextsFirst
from daemon.sinks.events import Event, ReplyReceived
from daemon.store.reports import ReplyRow
from daemon.store.store import Store, StoreError, StoreTx

log = logging.getLogger("daemon.forwarding")

#: First wait after a failed attempt; doubles up to RETRY_MAX.
RETRY_FIRST = 30.0
RETRY_MAX = 3600.0
#: A mail not taken by the server this long after its reply is given up.
GIVE_UP_AFTER = 86_400.0
#: The longest wait between looks at the queue when nothing wakes the worker.
IDLE_POLL = 3600.0
#: A whole mail may take this many SMTP timeouts (connect, hello, TLS, login, mail, data).
SEND_STEPS = 6
#: The longest a mail waits for due texts to go first. A burst that the daemon's own
#: CPU paces (texts queued faster than it can hand them to the modem) lasts seconds, so
#: this bound is rarely reached there; behind a real modem's pace (3-7 s a text) a queue
#: can last long, and a mail about a reply then still leaves within a minute. A shorter
#: bound does not spare the texts anything in a steady flow of replies: each mail only
#: leaves that much later, and the mails still go out during the burst.
MAIL_YIELD = 60.0

_KIND_WORDS = {
    "opt_out": "Opt-out",
    "opt_in": "Opt-in",
    "help": "HELP",
    "possible_opt_out": "Possible opt-out",
}


def pretty_number(number: str) -> str:
    """+12025550101 as +1 202-555-0101 (anything else as it is)."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return number
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or "textback.local"


def compose(cfg: Config, row: ReplyRow, *, recipients: list[str], extra: int = 0) -> EmailMessage:
    """The mail for one reply (or, with `extra`, the summary of a sender's flood)."""
    tz = office_zone(cfg.hours.timezone)
    # The sender is the network's (or an attacker's) bytes: no CR, LF or other control
    # character may reach a header, where it would break the mail or forge a header.
    who = pretty_number(row.number) if row.number else clean_text(row.sender, 40)
    word = _KIND_WORDS.get(row.kind, "Reply")
    if extra:
        subject = f"{extra} more replies from {who} in the last hour"
    elif row.call_ended_at is not None:
        at = datetime.fromtimestamp(row.call_ended_at, tz).strftime("%H:%M")
        subject = f"{word} from {who} to your missed call at {at}"
    else:
        subject = f"{word} from {who}"
    received = datetime.fromtimestamp(row.received_at, tz).strftime("%Y-%m-%d %H:%M")
    lines = []
    if extra:
        lines += [
            f"{who} sent {extra} more texts in the hour after the one mailed last;",
            "they are all kept: `textback replies --caller` lists them.",
            "",
        ]
    else:
        lines += [row.text, "", "--"]
    lines.append(f"From: {who}" + ("" if row.sender_kind == "number" else f" ({row.sender_kind})"))
    lines.append(f"Received: {received} ({cfg.hours.timezone})")
    if row.call_ended_at is not None:
        call_at = datetime.fromtimestamp(row.call_ended_at, tz).strftime("%Y-%m-%d %H:%M")
        vm = ", a voicemail was left" if row.voicemail_left else ""
        lines.append(
            f"Answers: the missed call at {call_at} to line {row.call_did or '-'}"
            f" ({row.call_outcome}{vm})"
        )
    else:
        lines.append("Answers: no text of ours to this number recently (unlinked)")
    if row.kind in _KIND_WORDS:
        lines.append(f"Understood as: {_KIND_WORDS[row.kind]}")
    if row.incomplete:
        lines.append("Note: a part of this text never arrived; shown as far as it got.")
    msg = EmailMessage()
    msg["From"] = cfg.smtp.from_address
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Date"] = formatdate(row.received_at, localtime=False)
    domain = _domain(cfg.smtp.from_address)
    msg["Message-ID"] = make_msgid(f"reply-{row.reply_id}", domain=domain)
    # One thread per caller: every mail points at the same root, named by the caller.
    root = hashlib.sha256((row.number or row.sender).encode()).hexdigest()[:20]
    thread = f"<caller-{root}@{domain}>"
    msg["In-Reply-To"] = thread
    msg["References"] = thread
    msg.set_content("\n".join(lines) + "\n")
    return msg


class MailForwarder:
    """The mail sink and its worker (`run()` in the service's TaskGroup)."""

    name = "mail"

    def __init__(
        self, cfg: Config, store: Store, clock: Clock, texts_first: TextsFirst | None = None
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._clock = clock
        self._wake = asyncio.Event()
        #: The outbox, set by the assembly; without it mail never waits for texts.
        self.texts_first = texts_first
        #: When the oldest mail held back for texts may wait no longer (None: none held).
        self._held_until: float | None = None

    def reconfigure(self, cfg: Config) -> None:
        """New addresses and server from now on (SIGHUP)."""
        self._cfg = cfg
        self._wake.set()

    def handle(self, event: Event) -> None:
        """A reply was committed: there may be a mail to send."""
        if isinstance(event, ReplyReceived):
            self._wake.set()

    async def run(self) -> None:
        """Send what is due, then sleep until the next is due or a reply comes."""
        while True:
            _stop_if_asked()
            self._wake.clear()
            try:
                await self.process_due()
                nxt = await self._store.read(lambda tx: tx.next_forward_at())
            except StoreError as exc:
                log.error(kv(event="store_error", during="forwarding", error=exc))
                nxt = self._clock.now() + RETRY_FIRST
            except Exception as exc:  # a bug costs a pause in mail, never the daemon
                log.exception(kv(event="bug", during="forwarding", error=repr(exc)))
                nxt = self._clock.now() + RETRY_FIRST
            delay = IDLE_POLL if nxt is None else max(0.0, nxt - self._clock.now())
            held, self._held_until = self._held_until, None
            if held is not None and self.texts_first is not None:
                # Mail held back for texts: wait for the burst to end (or the oldest
                # mail's bound). Not a look at every reply that comes meanwhile: each
                # look is queries on the database connection the sends use.
                await self.texts_first.quiet(max(0.0, held - self._clock.now()))
                continue
            await self._wait(min(delay, IDLE_POLL))

    async def _wait(self, delay: float) -> None:
        await first_of(self._clock.sleep(delay), self._wake.wait())

    async def process_due(self) -> int:
        """Try every due mail once; returns how many the server took.

        Texts to callers go first: while the outbox has due texts in hand (a burst of
        missed calls), a mail younger than MAIL_YIELD waits until the outbox is quiet,
        so building and sending mail never delays a missed-call text; no mail waits
        longer than that.

        The mails of one pass share one SMTP session (one connection, EHLO, STARTTLS and
        login for up to a pass's 50 mails: after a burst the held-back mails leave
        together), and those the server took are recorded `sent` in one transaction at
        the end of the pass. A crash between the server taking a mail and that record
        sends it again at the next start: a mail is delivered at least once.
        """
        now = self._clock.now()
        due = await self._store.read(lambda tx: tx.due_forwards(now))
        if due and self.texts_first is not None and self.texts_first.busy():
            held = [float(f["created_at"]) + MAIL_YIELD for f in due]
            due = [f for f, until in zip(due, held, strict=True) if until <= now]
            if not due:
                self._held_until = min(held)
        if not due:
            return 0
        session = _Session(self._cfg)
        sent: list[sqlite3.Row] = []
        try:
            for fwd in due:
                if await self._one(fwd, session):
                    sent.append(fwd)
        finally:
            await session.close()
            if sent:
                await self._record_sent(sent)
        return len(sent)

    async def _one(self, fwd: sqlite3.Row, session: _Session) -> bool:
        """One mail through the pass's session: True once the server took it (recorded
        by the caller); any other end is recorded here."""
        cfg = self._cfg
        rows = await self._store.replies(reply_id=fwd["reply_id"], limit=1)
        if not rows:
            await self._record(fwd, "failed", "its reply is gone")
            return False
        row = rows[0]
        recipients = [a.strip() for a in str(fwd["target"]).split(",") if a.strip()]
        extra = 0
        if fwd["channel"] == "mail_summary":
            start = float(fwd["created_at"])
            sender = row.sender
            extra = await self._store.read(lambda tx: tx.replies_of(sender, start, start + 3600.0))
        try:
            message = compose(cfg, row, recipients=recipients, extra=extra)
        except Exception as exc:  # a mail that cannot be built will never be: fail it
            await self._record(fwd, "failed", f"cannot build the mail: {exc!r}")
            return False
        if session.down is not None:  # the server could not be reached this pass
            await self._retry(fwd, session.down)
            return False
        try:
            await session.send(message, recipients)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [e.code for e in exc.recipients]
            error = "; ".join(f"{e.recipient}: {e.code} {e.message}" for e in exc.recipients)
            if codes and all(500 <= c < 600 for c in codes):
                await self._record(fwd, "failed", error)
            else:
                await self._retry(fwd, error)
            return False
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                await self._record(fwd, "failed", f"{exc.code} {exc.message}")
                return False
            await self._retry(fwd, f"{exc.code} {exc.message}")
            return False
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self._retry(fwd, f"{type(exc).__name__}: {exc}")
            return False
        log.info(kv(event="forwarded", reply=row.reply_id, channel="mail", to=len(recipients)))
        return True

    async def _retry(self, fwd: sqlite3.Row, error: str) -> None:
        now = self._clock.now()
        attempts = int(fwd["attempts"]) + 1
        if now - float(fwd["created_at"]) >= GIVE_UP_AFTER:
            await self._record(fwd, "given_up", error)
            return
        wait = min(RETRY_FIRST * 2 ** (attempts - 1), RETRY_MAX)
        level = logging.WARNING if attempts == 1 else logging.DEBUG
        log.log(
            level,
            kv(
                event="forward_retry",
                reply=fwd["reply_id"],
                attempt=attempts,
                retry_in=f"{wait:g}s",
                error=error,
            ),
        )
        fid = int(fwd["id"])

        def unit(tx: StoreTx) -> None:
            tx.update_forward(
                fid,
                now=now,
                state="pending",
                attempts=attempts,
                next_attempt_at=now + wait,
                last_error=error,
            )

        await self._store.batch(unit)

    async def _record_sent(self, fwds: list[sqlite3.Row]) -> None:
        """Every mail of a pass the server took, `sent` in one transaction."""
        now = self._clock.now()
        done = [(int(f["id"]), int(f["attempts"]) + 1) for f in fwds]

        def unit(tx: StoreTx) -> None:
            for fid, attempts in done:
                tx.update_forward(fid, now=now, state="sent", attempts=attempts)

        await self._store.batch(unit)

    async def _record(self, fwd: sqlite3.Row, state: str, error: str | None) -> None:
        now = self._clock.now()
        attempts = int(fwd["attempts"]) + 1
        fid = int(fwd["id"])
        if state != "sent":
            log.error(
                kv(
                    event="forward_" + state,
                    reply=fwd["reply_id"],
                    attempts=attempts,
                    error=error,
                    note="the reply is kept: textback replies shows it",
                )
            )

        def unit(tx: StoreTx) -> None:
            tx.update_forward(fid, now=now, state=state, attempts=attempts, last_error=error)

        await self._store.batch(unit)


def _stop_if_asked() -> None:
    """Raise CancelledError if this task was asked to stop and the request got lost:
    aiosmtplib reads each answer with asyncio.wait_for, which in Python 3.11 returns the
    answer, dropping the cancel, when both come in the same turn of the loop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _Session:
    """One SMTP session for the mails of a pass, opened at the first mail.

    A connection that cannot be made (or EHLO, STARTTLS, the login fail) sets `down`:
    the pass's other mails wait for the next try without each trying again. After any
    error during a mail the connection is dropped and the next mail opens a new one, so
    that no half-finished transaction is carried over.
    """

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self._client: aiosmtplib.SMTP | None = None
        self.down: str | None = None

    async def send(self, message: EmailMessage, recipients: list[str]) -> None:
        """One mail, bounded as a whole (the SMTP timeout bounds each step only); an
        address the server refused while it took the others is said loudly."""
        timeout = self._cfg.smtp.timeout
        try:
            async with asyncio.timeout(SEND_STEPS * timeout):
                client = await self._connected()
                refused, _ = await client.send_message(message, recipients=recipients)
        except BaseException:
            self._drop()
            raise
        if refused:
            log.error(
                kv(
                    event="forward_refused",
                    addresses=",".join(sorted(refused)),
                    note="the other addresses got the mail",
                )
            )

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        smtp = self._cfg.smtp
        client = aiosmtplib.SMTP(
            hostname=smtp.host,
            port=smtp.port,
            username=smtp.username or None,
            password=smtp.password or None,
            use_tls=smtp.tls == "tls",
            start_tls=smtp.tls == "starttls",
            timeout=smtp.timeout,
            # a fixed EHLO name: no DNS lookup of this host (getfqdn) for every session
            local_hostname=_domain(smtp.from_address),
        )
        try:
            await client.connect()
        except aiosmtplib.SMTPResponseException:
            client.close()
            raise  # a refused login or EHLO: the caller says 5xx or 4xx
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            self.down = f"{type(exc).__name__}: {exc}"
            raise
        self._client = client
        return client

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def close(self) -> None:
        """QUIT politely (bounded), or just drop the connection."""
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        try:
            async with asyncio.timeout(self._cfg.smtp.timeout):
                await client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()
