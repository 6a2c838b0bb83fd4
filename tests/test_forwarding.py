"""Replies carried on to the office: mail through a real SMTP server (aiosmtpd on a free
loopback port), staff texts through the outbox, and the on_reply command."""

from __future__ import annotations

import asyncio
import contextlib
import email
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from daemon.clock import ManualClock
from daemon.config import Config
from daemon.forwarding.command import ReplyCommand
from daemon.forwarding.mail import GIVE_UP_AFTER, MailForwarder
from daemon.model import MessageKind
from daemon.outbox.outbox import Outbox
from daemon.replies.inbox import Inbox
from daemon.store.store import Store
from tests.outbox_fakes import NUMBERS, FakeSender, call
from tests.stopping import assert_a_stop_ends_the_wait

T0 = 1_795_300_000.0
STAFF = "+13125550188"


class Inbox_:
    """What the test SMTP server received."""

    def __init__(self, answer: str | None = None) -> None:
        self.mails: list[Message] = []
        self.rcpt: list[list[str]] = []
        self.sessions: list[int] = []  # the connection each mail came in on
        self.answer = answer  # e.g. "550 no such user": refuse every mail

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.answer:
            return self.answer
        self.sessions.append(id(session))
        self.mails.append(email.message_from_bytes(envelope.content))
        self.rcpt.append(list(envelope.rcpt_tos))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox_, int]]:
    handler = Inbox_()
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "tb.db")
    yield s
    await s.close()


def _cfg(port: int, **replies: Any) -> Config:
    return Config(
        textback={"delay": "0s", "cooldown": "0s", "business_name": "Main Street Dental"},
        hours={"timezone": "America/New_York"},
        replies={"forward_email": ["desk@example.com", "boss@example.com"], **replies},
        smtp={
            "host": "127.0.0.1",
            "port": port,
            "tls": "none",
            "from_address": "textback@dental.example",
            "timeout": "2s",
        },
    )


class Office:
    def __init__(self, store: Store, cfg: Config) -> None:
        self.clock = ManualClock(T0)
        self.store = store
        self.cfg = cfg
        self.sender = FakeSender(clock=self.clock)
        self.outbox = Outbox(cfg, store, self.clock, self.sender)
        self.inbox = Inbox(cfg, store, self.clock)
        self.mail = MailForwarder(cfg, store, self.clock, texts_first=self.outbox)
        store.bus.add(self.mail)


async def test_a_reply_is_mailed_once_with_the_call_it_answers(
    store: Store, smtp: tuple[Inbox_, int]
) -> None:
    server, port = smtp
    office = Office(store, _cfg(port))
    from daemon.app.pipeline import Pipeline

    pipeline = Pipeline(office.cfg, store, office.outbox, office.clock)
    c = call(NUMBERS[0], at=T0)
    await pipeline.handle(c)
    await office.outbox.process_due()
    office.clock.advance(120)
    await office.inbox.receive(NUMBERS[0], "can you call me at 3?")
    assert await office.mail.process_due() == 1
    assert await office.mail.process_due() == 0  # once
    (mail,) = server.mails
    assert mail["Subject"].startswith("Reply from +1 202-555-0101 to your missed call at ")
    assert sorted(server.rcpt[0]) == ["boss@example.com", "desk@example.com"]
    body = mail.get_payload()
    assert isinstance(body, str)
    assert body.startswith("can you call me at 3?")
    assert "(no_answer)" in body
    assert mail["In-Reply-To"] == mail["References"]

    await office.inbox.receive(NUMBERS[0], "STOP")
    await office.outbox.process_due()  # its confirmation goes first
    await office.mail.process_due()
    second = server.mails[1]
    assert second["Subject"].startswith("Opt-out from +1 202-555-0101")
    assert second["In-Reply-To"] == mail["In-Reply-To"]  # one thread per caller
    assert second["Message-ID"] != mail["Message-ID"]


async def test_the_mails_of_a_pass_share_one_session_and_are_all_recorded(
    store: Store, smtp: tuple[Inbox_, int]
) -> None:
    server, port = smtp
    office = Office(store, _cfg(port))
    for n in NUMBERS[:4]:
        await office.inbox.receive(n, f"hello from {n}")
    assert await office.mail.process_due() == 4
    assert len(server.mails) == 4
    assert len(set(server.sessions)) == 1  # one connection, EHLO and QUIT for the four
    states = sqlite3.connect(store.path).execute("SELECT state, attempts FROM forwards")
    assert [tuple(r) for r in states] == [("sent", 1)] * 4
    assert await office.mail.process_due() == 0  # nothing sent twice
    assert await store.counter("forwards.sent") == 4


async def test_a_server_that_cannot_be_reached_is_tried_once_per_pass(store: Store) -> None:
    accepted = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()  # no 220 greeting: the connection cannot be used

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        office = Office(store, _cfg(port))
        for n in NUMBERS[:3]:
            await office.inbox.receive(n, "anyone?")
        assert await office.mail.process_due() == 0
    finally:
        server.close()
        await server.wait_closed()
    assert accepted == 1  # not once per mail
    rows = sqlite3.connect(store.path).execute(
        "SELECT state, attempts, next_attempt_at - ? FROM forwards", (T0,)
    )
    assert [tuple(r) for r in rows] == [("pending", 1, 30.0)] * 3  # all wait for the next try


async def test_smtp_down_waits_and_retries_then_delivers(store: Store) -> None:
    port = _free_port()  # nothing listens there yet
    office = Office(store, _cfg(port))
    await office.inbox.receive(NUMBERS[1], "hello?")
    assert await office.mail.process_due() == 0
    (row,) = sqlite3.connect(store.path).execute("SELECT state, attempts FROM forwards")
    assert tuple(row) == ("pending", 1)
    handler = Inbox_()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        assert await office.mail.process_due() == 0  # not due yet: the backoff holds
        office.clock.advance(30)
        assert await office.mail.process_due() == 1
        assert len(handler.mails) == 1
    finally:
        controller.stop()
    assert await store.counter("forwards.sent") == 1


async def test_a_5xx_fails_at_once_and_a_dead_server_is_given_up_after_a_day(
    store: Store,
) -> None:
    refusing = Inbox_(answer="550 no such mailbox")
    port = _free_port()
    controller = Controller(refusing, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        office = Office(store, _cfg(port))
        await office.inbox.receive(NUMBERS[2], "refused")
        assert await office.mail.process_due() == 0
    finally:
        controller.stop()
    rows = sqlite3.connect(store.path).execute("SELECT state, last_error FROM forwards").fetchall()
    assert rows[0][0] == "failed"
    assert "550" in rows[0][1]

    office.clock.advance(60)
    await office.inbox.receive(NUMBERS[3], "nobody home")  # the server is gone now
    for _ in range(40):
        await office.mail.process_due()
        office.clock.advance(3600)
    states = [r[0] for r in sqlite3.connect(store.path).execute("SELECT state FROM forwards")]
    assert states == ["failed", "given_up"]
    (gave_up_at,) = (
        sqlite3.connect(store.path)
        .execute("SELECT updated_at - created_at FROM forwards WHERE state = 'given_up'")
        .fetchone()
    )
    assert GIVE_UP_AFTER <= gave_up_at < GIVE_UP_AFTER + 3600  # a day, not sooner or much later


async def test_a_hanging_server_times_out_and_nothing_else_waits(store: Store) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never says 220

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = _cfg(port)
        cfg = cfg.model_copy(update={"smtp": cfg.smtp.model_copy(update={"timeout": 0.2})})
        office = Office(store, cfg)
        got = await office.inbox.receive(NUMBERS[0], "STOP")
        assert got.answer_id is not None  # the confirmation is written all the same
        assert await office.mail.process_due() == 0
        await office.outbox.process_due()
        assert [n for n, _ in office.sender.sent] == [NUMBERS[0]]
    finally:
        server.close()
        await server.wait_closed()
    (row,) = sqlite3.connect(store.path).execute("SELECT state FROM forwards")
    assert row[0] == "pending"


async def test_a_flood_is_mailed_up_to_the_limit_then_summed_up(
    store: Store, smtp: tuple[Inbox_, int]
) -> None:
    server, port = smtp
    office = Office(store, _cfg(port, forward_per_hour=3))
    for i in range(1000):
        office.clock.set(T0 + i * 0.06)
        await office.inbox.receive(NUMBERS[4], f"spam {i}")
    await office.mail.process_due()
    assert len(server.mails) == 3
    office.clock.set(T0 + 3600 + 10)
    await office.mail.process_due()
    assert len(server.mails) == 4
    assert server.mails[3]["Subject"] == "997 more replies from +1 415-555-0105 in the last hour"
    (n,) = sqlite3.connect(store.path).execute("SELECT COUNT(*) FROM replies").fetchone()
    assert n == 1000  # every text kept


async def test_staff_get_one_text_per_reply_under_the_caps(store: Store) -> None:
    cfg = Config(
        textback={"delay": "0s", "cooldown": "0s"},
        replies={"forward_sms": [STAFF, "(312) 555-0188", NUMBERS[0]], "forward_per_hour": 2},
    )
    office = Office(store, cfg)
    await office.inbox.receive(NUMBERS[1], "running late\x00, sorry")
    await office.inbox.receive(NUMBERS[0], "hi from a staff phone")
    await office.outbox.process_due()
    first = f"Reply from {NUMBERS[1]}: running late, sorry"  # the NUL is dropped
    assert office.sender.sent == [
        (STAFF, first),  # one text, though the list names that mobile twice
        (NUMBERS[0], first),
        (STAFF, f"Reply from {NUMBERS[0]}: hi from a staff phone"),  # not to itself
    ]
    kinds = {m.kind for m in await store.messages()}
    assert kinds == {MessageKind.STAFF_FORWARD}
    for i in range(3):  # forward_per_hour = 2: one more reply of this sender goes on
        await office.inbox.receive(NUMBERS[1], f"again {i}")
    await office.outbox.process_due()
    assert len(office.sender.sent) == 5


async def test_on_reply_runs_the_command_with_gammu_variables(tmp_path: Path) -> None:
    out = tmp_path / "seen.txt"
    script = tmp_path / "hook.py"
    script.write_text(
        "import os, sys\n"
        f"open({str(out)!r}, 'a').write(os.environ['SMS_1_NUMBER'] + '|'"
        " + os.environ['SMS_1_TEXT'] + '|' + os.environ['SMS_MESSAGES'] + '\\n')\n"
    )
    store = await Store.open(tmp_path / "tb.db")
    try:
        cfg = Config(replies={"on_reply": f"{sys.executable} {script}"})
        command = ReplyCommand(cfg)
        store.bus.add(command)
        task = asyncio.create_task(command.run())
        inbox = Inbox(cfg, store, ManualClock(T0))
        await inbox.receive(NUMBERS[0], "it's me; $(rm -rf /) `x`")
        await asyncio.wait_for(command.join(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await store.close()
    assert out.read_text() == f"{NUMBERS[0]}|it's me; $(rm -rf /) `x`|1\n"
    assert command.failures == 0


async def test_a_sender_with_a_line_break_is_mailed_and_never_stops_the_worker(
    store: Store, smtp: tuple[Inbox_, int]
) -> None:
    server, port = smtp
    office = Office(store, _cfg(port))
    await office.inbox.receive("Bank\r\nBcc: evil@example.com", "your card")
    assert await office.mail.process_due() == 1
    (mail,) = server.mails
    assert "Bcc" not in mail
    assert "\n" not in mail["Subject"]
    assert sorted(server.rcpt[0]) == ["boss@example.com", "desk@example.com"]


class Refusing(Inbox_):
    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        return "550 no such user"


async def test_every_address_refused_fails_at_once(store: Store) -> None:
    port = _free_port()
    controller = Controller(Refusing(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        office = Office(store, _cfg(port))
        await office.inbox.receive(NUMBERS[0], "hello")
        assert await office.mail.process_due() == 0
    finally:
        controller.stop()
    (row,) = sqlite3.connect(store.path).execute("SELECT state, last_error FROM forwards")
    assert row[0] == "failed"
    assert "550" in row[1]


async def test_texts_to_callers_go_before_mail_for_at_most_a_minute(
    store: Store, smtp: tuple[Inbox_, int]
) -> None:
    server, port = smtp
    office = Office(store, _cfg(port))
    sending = await _sending(office)
    assert office.outbox.busy()
    await office.inbox.receive(NUMBERS[0], "call me")
    assert await office.mail.process_due() == 0  # a text is being sent: mail waits
    office.clock.advance(59)
    assert await office.mail.process_due() == 0
    office.clock.advance(1)
    assert await office.mail.process_due() == 1  # never more than MAIL_YIELD
    assert len(server.mails) == 1
    office.sender.gate.set()
    assert await sending == 1
    assert not office.outbox.busy()


async def test_held_mail_leaves_when_the_texts_are_out(
    store: Store, smtp: tuple[Inbox_, int]
) -> None:
    """The worker waits for the outbox to be quiet, not for its next look: the mail
    leaves as soon as the burst's last text is handed over, and no sooner."""
    server, port = smtp
    office = Office(store, _cfg(port))
    sending = await _sending(office)
    await office.inbox.receive(NUMBERS[0], "call me")
    worker = asyncio.create_task(office.mail.run())
    try:
        # the worker's pass finds the outbox busy: it waits on the clock for MAIL_YIELD
        # at most (one sleeper), having mailed nothing
        await _until(lambda: office.clock.pending == 1)
        assert server.mails == []
        office.sender.gate.set()
        assert await sending == 1
        await _until(lambda: len(server.mails) == 1)  # with no clock advanced
        # the worker ends its session and records the mail, then idles: only then is it
        # cancelled (a cancel landing in aiosmtplib's last read can be swallowed there)
        await _until(lambda: _forward_states(store) == ["sent"] and office.clock.pending == 1)
    finally:
        office.sender.gate.set()
        worker.cancel()
        await asyncio.gather(worker, sending, return_exceptions=True)


async def test_a_stop_landing_while_the_worker_wakes_ends_it(store: Store) -> None:
    """The worker's wait (a reply or its timer): seen as the daemon never exiting after
    SIGTERM."""
    cfg = _cfg(_free_port())
    office = Office(store, cfg)
    await assert_a_stop_ends_the_wait(
        lambda: office.mail._wait(3600.0), lambda: office.mail.reconfigure(cfg)
    )


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for work on other threads (the database's, the SMTP server's)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def _sending(office: Office) -> asyncio.Task[int]:
    """A text's send under way (until `office.sender.gate` is set): the outbox is busy."""
    office.sender.gate = asyncio.Event()
    await office.outbox.enqueue(
        destination=NUMBERS[1],
        text="sorry we missed you",
        template_kind=None,
        call_ids=[],
        parts=1,
        kind=MessageKind.TEST,
    )
    sending = asyncio.create_task(office.outbox.process_due())
    await asyncio.wait_for(office.sender.started.wait(), 5)
    return sending


def _forward_states(store: Store) -> list[str]:
    """The forwards' states, read on a connection of this thread."""
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        return [str(r[0]) for r in db.execute("SELECT state FROM forwards ORDER BY id")]
