"""Replies: keywords, and the inbox that keeps, links and obeys them (real SQLite, the
real pipeline and outbox, a recording sender, a ManualClock)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.app.pipeline import Pipeline
from daemon.clock import ManualClock
from daemon.config import Config, RepliesConfig
from daemon.model import MessageKind, MessageState
from daemon.outbox.outbox import Outbox
from daemon.replies.inbox import Inbox
from daemon.replies.keywords import Keywords, ReplyKind, asks_to_stop, fold
from daemon.store.store import Store
from tests.outbox_fakes import NUMBERS, FakeSender, call

T0 = 1_795_300_000.0
KEYWORDS = Keywords.from_config(RepliesConfig())


# -- keywords ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("STOP", ReplyKind.OPT_OUT),
        ("Stop.", ReplyKind.OPT_OUT),
        ("  stop  ", ReplyKind.OPT_OUT),
        ("STOP 🛑", ReplyKind.OPT_OUT),
        ("\uff33\uff34\uff2f\uff30", ReplyKind.OPT_OUT),  # full-width STOP
        ("stop   all", ReplyKind.OPT_OUT),
        ("Opt-Out!", ReplyKind.OPT_OUT),
        ("unsubscribe", ReplyKind.OPT_OUT),
        ("Cancel", ReplyKind.OPT_OUT),
        ("please stop texting me", ReplyKind.OPT_OUT),
        ("STOP please", ReplyKind.OPT_OUT),
        ("how do I unsubscribe from this?", ReplyKind.OPT_OUT),
        ("start", ReplyKind.OPT_IN),
        ("UNSTOP", ReplyKind.OPT_IN),
        ("help?", ReplyKind.HELP),
        ("Info", ReplyKind.HELP),
        ("stopped", ReplyKind.MESSAGE),
        ("can I stop by at 3?", ReplyKind.MESSAGE),
        ("Stop by at 3?", ReplyKind.MESSAGE),
        ("Please don't stop", ReplyKind.MESSAGE),
        ("please don\u2019t stop!", ReplyKind.MESSAGE),
        ("When should I stop?", ReplyKind.MESSAGE),
        ("Bus stop", ReplyKind.MESSAGE),
        ("I don't want to opt out", ReplyKind.MESSAGE),
        ("please stop", ReplyKind.OPT_OUT),
        ("stop it now", ReplyKind.OPT_OUT),
        ("can you stop sending these", ReplyKind.OPT_OUT),
        ("remove me from your list", ReplyKind.OPT_OUT),
        ("Stop - Mary", ReplyKind.OPT_OUT),
        ("cancel my appointment", ReplyKind.MESSAGE),
        ("the end", ReplyKind.MESSAGE),
        ("yes", ReplyKind.MESSAGE),  # YES opts in only while opted out
        ("can you call me at 3?", ReplyKind.MESSAGE),
        ("", ReplyKind.MESSAGE),
        ("🛑", ReplyKind.MESSAGE),
    ],
)
def test_keywords(text: str, kind: ReplyKind) -> None:
    assert KEYWORDS.classify(text, opted_out=False) is kind


def test_yes_opts_in_only_while_opted_out() -> None:
    assert KEYWORDS.classify("Yes!", opted_out=True) is ReplyKind.OPT_IN
    assert KEYWORDS.classify("Yes!", opted_out=False) is ReplyKind.MESSAGE


def test_an_office_adds_its_own_words_and_may_only_flag_fuzzy_ones() -> None:
    words = Keywords.from_config(
        RepliesConfig(opt_out_words=["STOP", "ARRET", "ALTO", "PARAR"], fuzzy_opt_out="flag")
    )
    assert words.classify("Arrêt", opted_out=False) is ReplyKind.OPT_OUT
    assert words.classify("alto!", opted_out=False) is ReplyKind.OPT_OUT
    assert words.classify("please stop texting me", opted_out=False) is (ReplyKind.POSSIBLE_OPT_OUT)
    assert words.classify("cancel", opted_out=False) is ReplyKind.MESSAGE  # not on its list


@given(st.text())
def test_fold_never_raises_and_is_stable(text: str) -> None:
    once = fold(text)
    assert fold(once) == once
    assert once == once.strip()
    KEYWORDS.classify(text, opted_out=True)
    asks_to_stop(text)


#: Punctuation, symbols (emoji) and spaces that stay such under NFKC (a few symbols, such
#: as the parenthesised letters, fold to letters and are words then, not punctuation).
_AROUND = st.text(
    alphabet=st.characters(categories=["P", "S", "Z"]).filter(
        lambda c: not any(ch.isalnum() for ch in unicodedata.normalize("NFKC", c))
    )
)


@given(_AROUND, _AROUND)
def test_punctuation_emoji_and_spaces_around_stop_never_matter(pre: str, post: str) -> None:
    assert KEYWORDS.classify(f"{pre}StOp{post}", opted_out=False) is ReplyKind.OPT_OUT


# -- the inbox -----------------------------------------------------------------------------------


class Office:
    """A store, the pipeline and outbox, the inbox, a recording sender, one clock."""

    def __init__(self, store: Store, **replies: Any) -> None:
        self.clock = ManualClock(T0)
        self.cfg = Config(
            textback={"delay": "30s", "cooldown": "0s", "business_name": "Main Street Dental"},
            lines=[{"did": "2025550100", "callback_number": "+1 202-555-0100"}],
            replies=replies,
        )
        self.store = store
        self.sender = FakeSender(clock=self.clock)
        self.outbox = Outbox(self.cfg, store, self.clock, self.sender)
        self.pipeline = Pipeline(self.cfg, store, self.outbox, self.clock)
        self.inbox = Inbox(self.cfg, store, self.clock)

    async def missed_call(self, number: str = NUMBERS[0]) -> Any:
        c = call(number, at=self.clock.now())
        await self.pipeline.handle(c)
        return await self.pipeline.report(c.linkedid)

    async def send_due(self, after: float = 0.0) -> None:
        self.clock.advance(after)
        await self.outbox.process_due()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "tb.db")
    yield s
    await s.close()


def _rows(store: Store, sql: str, *params: object) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(store.path)
    try:
        return list(con.execute(sql, params).fetchall())
    finally:
        con.close()


async def test_stop_opts_out_cancels_confirms_once_and_silences_the_next_call(
    store: Store,
) -> None:
    office = Office(store)
    first = await office.missed_call()
    await office.send_due(after=30)  # the missed-call text goes
    assert len(office.sender.sent) == 1
    office.clock.advance(60)
    waiting = await office.missed_call()  # a second call: its text waits (cooldown 0)
    assert waiting.message == "waiting"

    got = await office.inbox.receive(NUMBERS[0], "Stop.")
    assert got.kind is ReplyKind.OPT_OUT
    assert got.message_id == first.message_id  # linked to the text it answers
    assert got.answer_id is not None
    assert await store.is_opted_out(NUMBERS[0])
    cancelled = await store.get_message(waiting.message_id)
    assert cancelled is not None
    assert (cancelled.state, cancelled.reason) == (MessageState.CANCELLED, "opted_out")
    confirm = await store.get_message(got.answer_id)
    assert confirm is not None
    assert (confirm.kind, confirm.state) == (MessageKind.OPT_OUT_CONFIRMATION, "queued")
    await office.send_due()  # at once: no wait step for a confirmation
    assert office.sender.sent[-1] == (
        NUMBERS[0],
        "Main Street Dental: you will get no more texts from us. Reply START to undo.",
    )

    again = await office.inbox.receive(NUMBERS[0], "STOP")  # a second STOP: no second text
    assert again.answer_id is None
    office.clock.advance(3600)
    r = await office.missed_call()
    assert (r.decision, r.reason) == ("suppress", "opted_out")
    await office.send_due(after=3600)
    assert len(office.sender.sent) == 2  # the text and the confirmation, nothing more
    assert _rows(store, "SELECT number, source, text FROM optouts") == [
        (NUMBERS[0], "keyword", "Stop.")
    ]
    assert _rows(store, "SELECT opted_out, source, text FROM optout_log") == [
        (1, "keyword", "Stop.")
    ]


async def test_start_opts_back_in_with_one_confirmation(store: Store) -> None:
    office = Office(store)
    await office.inbox.receive(NUMBERS[0], "STOP")
    got = await office.inbox.receive(NUMBERS[0], "yes")
    assert got.kind is ReplyKind.OPT_IN
    assert got.answer_id is not None
    assert not await store.is_opted_out(NUMBERS[0])
    await office.send_due()
    assert [t for _, t in office.sender.sent][-1] == (
        "Main Street Dental: texts are back on. Reply STOP to opt out."
    )
    nothing = await office.inbox.receive(NUMBERS[0], "START")  # not opted out: no answer
    assert nothing.answer_id is None
    r = await office.missed_call()
    assert (r.decision, r.reason) == ("send", "missed")
    assert _rows(store, "SELECT opted_out FROM optout_log ORDER BY id") == [(1,), (0,)]


async def test_help_is_answered_once_a_day_with_the_callback_number(store: Store) -> None:
    office = Office(store)
    first = await office.inbox.receive(NUMBERS[1], "HELP")
    second = await office.inbox.receive(NUMBERS[1], "help")
    assert first.answer_id is not None
    assert (second.answer_id, second.why_no_answer) == (None, "answered_today")
    await office.send_due()
    assert office.sender.sent == [
        (
            NUMBERS[1],
            "Main Street Dental: we text back the calls we miss. Call us at +1 202-555-0100."
            " Reply STOP to opt out.",
        )
    ]


@pytest.mark.parametrize(
    ("sender", "kind"),
    [("12345", "short_code"), ("T-Mobile", "alphanumeric"), ("+1202", "invalid")],
)
async def test_short_codes_and_names_are_kept_but_never_answered(
    store: Store, sender: str, kind: str
) -> None:
    office = Office(store)
    got = await office.inbox.receive(sender, "STOP")
    assert got.reply_id is not None
    assert (got.sender_kind, got.number, got.answer_id) == (kind, None, None)
    assert await store.optout_count() == 0
    assert _rows(store, "SELECT sender, text, sender_kind FROM replies") == [(sender, "STOP", kind)]


async def test_no_answer_to_a_premium_number_or_past_a_cap_but_the_opt_out_holds(
    store: Store,
) -> None:
    office = Office(store)
    premium = await office.inbox.receive("+19005550123", "HELP")
    assert (premium.answer_id, premium.why_no_answer) == (None, "destination_not_allowed")

    capped = Office(store, confirm_opt_out="{business_name}: stopped.")
    capped.cfg = capped.cfg.model_copy(
        update={"textback": capped.cfg.textback.model_copy(update={"max_per_hour": 1})}
    )
    capped.inbox.reconfigure(capped.cfg)
    await capped.outbox.enqueue(
        destination=NUMBERS[2],
        text="hi",
        template_kind=None,
        call_ids=[],
        parts=1,
        kind=MessageKind.TEST,
    )
    got = await capped.inbox.receive(NUMBERS[3], "STOP")
    assert (got.answer_id, got.why_no_answer) == (None, "cap_reached")
    assert await store.is_opted_out(NUMBERS[3])  # recorded all the same


async def test_a_fuzzy_opt_out_may_only_be_flagged(store: Store) -> None:
    office = Office(store, fuzzy_opt_out="flag")
    got = await office.inbox.receive(NUMBERS[0], "please stop texting me")
    assert (got.kind, got.answer_id) == (ReplyKind.POSSIBLE_OPT_OUT, None)
    assert not await store.is_opted_out(NUMBERS[0])
    assert _rows(store, "SELECT kind FROM replies") == [("possible_opt_out",)]


async def test_a_reply_links_to_the_latest_text_within_the_window(store: Store) -> None:
    office = Office(store, reply_window="1h")
    r = await office.missed_call()
    await office.send_due(after=30)
    linked = await office.inbox.receive(NUMBERS[0], "can you call me at 3?")
    assert (linked.kind, linked.message_id) == (ReplyKind.MESSAGE, r.message_id)
    assert linked.call_id == r.call_id
    office.clock.advance(2 * 3600)
    late = await office.inbox.receive(NUMBERS[0], "hello?")
    assert (late.message_id, late.call_id) == (None, None)  # kept, unlinked
    stranger = await office.inbox.receive(NUMBERS[4], "who is this")
    assert stranger.message_id is None


async def test_the_same_sms_read_twice_is_kept_once(store: Store) -> None:
    office = Office(store)
    first = await office.inbox.receive(NUMBERS[0], "STOP", sms_key="k1")
    again = await office.inbox.receive(NUMBERS[0], "STOP", sms_key="k1")
    assert first.reply_id is not None
    assert again.reply_id is None
    assert _rows(store, "SELECT COUNT(*) FROM replies") == [(1,)]
    assert await store.counter("replies") == 1
    assert await store.counter("replies.opt_out") == 1


async def test_a_confirmation_survives_a_restart_and_goes_once(tmp_path: Path) -> None:
    path = tmp_path / "tb.db"
    store = await Store.open(path)
    office = Office(store)
    await office.inbox.receive(NUMBERS[0], "STOP")  # the daemon dies before sending it
    await store.close()

    store = await Store.open(path)
    try:
        again = Office(store)
        await again.outbox.recover()
        await again.send_due()
        await again.send_due(after=600)
        assert [n for n, _ in again.sender.sent] == [NUMBERS[0]]
    finally:
        await store.close()


# -- `textback replies` and `stats` --------------------------------------------------------------


def _cli(argv: list[str], now: float) -> int:
    from daemon.cli import build_parser
    from daemon.cli import replies as replies_cmd
    from daemon.cli import stats as stats_cmd

    args = build_parser().parse_args(argv)
    command = {"replies": replies_cmd.main, "stats": stats_cmd.main}[args.command]
    return command(args, ManualClock(now))


async def _fill(db: Path) -> tuple[Any, float]:
    store = await Store.open(db, tz="America/Chicago")
    try:
        office = Office(store)
        r = await office.missed_call()
        await office.send_due(after=30)
        await office.inbox.receive(NUMBERS[0], 'call me at 3 "please"\x1b[2J')
        await office.inbox.receive(NUMBERS[0], "STOP")
        await office.inbox.receive("12345", "Your bill is ready")
        return r, office.clock.now()
    finally:
        await store.close()


def test_replies_lists_each_with_its_call_and_stats_counts_them_by_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "textback.toml"
    cfg.write_text(
        f'[database]\npath = "{tmp_path / "tb.db"}"\n[hours]\ntimezone = "America/Chicago"\n'
    )
    r, now = asyncio.run(_fill(tmp_path / "tb.db"))

    assert _cli(["replies", "--config", str(cfg), "--json"], now) == 0
    docs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [d["kind"] for d in docs] == ["message", "opt_out", "message"]
    assert docs[1]["call_linkedid"] == r.linkedid
    assert docs[1]["answer_state"] == "queued"
    assert docs[0]["sender_kind"] == "short_code"
    assert docs[0]["call_id"] is None

    assert _cli(["replies", "--config", str(cfg), "--caller", "(202) 555-0101"], now) == 0
    out = capsys.readouterr().out
    assert "opt_out" in out
    assert "no_answer call at" in out
    assert "\x1b" not in out  # the caller's control bytes are shown escaped
    assert "Your bill" not in out

    assert _cli(["stats", "--config", str(cfg), "--json"], now) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["periods"]["today"]["replies_by_kind"] == {"message": 2, "opt_out": 1}


async def test_odd_replies_are_kept_whole_and_never_crash(store: Store) -> None:
    office = Office(store)
    long_text = ("Hello, this is a long message about my appointment. " * 31)[:1600]
    cases = [
        ("", False),
        (long_text, False),
        ("half of a long text", True),
        ("\ufffd replaced lone surrogate", False),
        ("STOP\x00\x1a\r\nATD+19005550123;", False),
    ]
    for text, incomplete in cases:
        got = await office.inbox.receive(NUMBERS[1], text, incomplete=incomplete)
        assert got.reply_id is not None
    rows = _rows(store, "SELECT text, incomplete, kind FROM replies ORDER BY id")
    assert [(t, bool(i)) for t, i, _ in rows] == cases
    assert [k for _, _, k in rows[:4]] == ["message"] * 4
    # "STOP" first, whatever follows, asks to stop; the bytes after it stay inert data
    assert rows[4][2] == "opt_out"
    assert _rows(store, "SELECT source, text FROM optouts") == [("reply", cases[4][0])]


# -- what review found ---------------------------------------------------------------------------


async def test_any_opt_out_cancels_what_waits_and_the_outbox_looks_again_before_sending(
    store: Store,
) -> None:
    office = Office(store)
    r = await office.missed_call()
    assert r.message == "waiting"
    assert await store.optout_add(NUMBERS[0], office.clock.now(), source="cli")  # the CLI
    m = await store.get_message(r.message_id)
    assert m is not None
    assert (m.state, m.reason) == (MessageState.CANCELLED, "opted_out")

    office.clock.advance(60)
    r2 = await office.missed_call(NUMBERS[1])
    # a number put on the list behind the daemon's back (another tool, a restore)
    con = sqlite3.connect(store.path)
    con.execute("INSERT INTO optouts (number, added_at) VALUES (?, ?)", (NUMBERS[1], T0))
    con.commit()
    con.close()
    await office.send_due(after=60)
    assert office.sender.sent == []
    m2 = await store.get_message(r2.message_id)
    assert m2 is not None
    assert (m2.state, m2.reason) == (MessageState.CANCELLED, "opted_out")


async def test_each_change_of_mind_is_confirmed_even_on_one_day(store: Store) -> None:
    office = Office(store)
    answers = [
        (await office.inbox.receive(NUMBERS[0], word)).answer_id
        for word in ("STOP", "START", "STOP")
    ]
    assert None not in answers
    assert len(set(answers)) == 3


async def test_help_from_a_whole_number_range_trips_the_pumping_guard(store: Store) -> None:
    office = Office(store)
    office.cfg = office.cfg.model_copy(
        update={"textback": office.cfg.textback.model_copy(update={"pumping_max_per_range": 3})}
    )
    office.inbox.reconfigure(office.cfg)
    got = [await office.inbox.receive(f"+1202555{n:04d}", "HELP") for n in range(100, 120)]
    answered = [g for g in got if g.answer_id is not None]
    assert 1 <= len(answered) <= 4
    assert {g.why_no_answer for g in got if g.answer_id is None} == {"cap_reached"}


async def test_a_stop_kept_before_replies_were_read_is_obeyed_unconfirmed(store: Store) -> None:
    con = sqlite3.connect(store.path)  # rows as a database from before schema 3 holds them
    con.executemany(
        "INSERT INTO replies (sender, text, received_at, sender_kind, kind) VALUES (?,?,?,?,?)",
        [
            ("2025550101", "Stop", T0 - 86400, "number", "message"),
            (NUMBERS[1], "see you at 3", T0 - 80000, "number", "message"),
            ("12345", "STOP", T0 - 70000, "number", "message"),
        ],
    )
    con.commit()
    con.close()
    office = Office(store)
    assert await office.inbox.judge_old_replies() == 1
    assert await store.is_opted_out(NUMBERS[0])
    assert await office.inbox.judge_old_replies() == 0  # judged once
    assert await store.messages() == []  # no late confirmation
    assert _rows(store, "SELECT kind, sender_kind FROM replies ORDER BY id") == [
        ("opt_out", "number"),
        ("message", "number"),
        ("message", "short_code"),
    ]
    assert _rows(store, "SELECT source FROM optouts") == [("legacy_reply",)]
