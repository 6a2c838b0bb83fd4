"""`textback stats`, `history` and `optout` through the real command line.

What "today" and "7d" mean depends on the clock, so the tests that count by day run the
commands on a ManualClock at a fixed instant (NOW), not the wall clock: they pass at
23:59:59 in any time zone and across a DST change.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from daemon.cli import build_parser, history, main, optout, stats
from daemon.clock import ManualClock
from daemon.model import Outcome
from daemon.store.store import Store
from tests.outbox_fakes import NUMBERS, call

#: The instant the tests run at: noon in the office's zone (the config's America/Chicago).
#: The 30 days before it cross the end of DST (2026-11-01), the 7 days do not.
NOW = datetime(2026, 11, 18, 12, 0, tzinfo=ZoneInfo("America/Chicago")).timestamp()


def run_at(argv: list[str], now: float = NOW) -> int:
    """A report command as `textback` parses it, on a ManualClock at `now`."""
    args = build_parser().parse_args(argv)
    command = {"stats": stats.main, "history": history.main, "optout": optout.main}
    return command[args.command](args, ManualClock(now))


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "textback.toml"
    cfg.write_text(
        f'[database]\npath = "{tmp_path / "tb.db"}"\n[hours]\ntimezone = "America/Chicago"\n'
    )
    return cfg


async def _fill(db: Path, now: float) -> None:
    store = await Store.open(db)
    try:
        # A caller texted, a caller suppressed, a text cancelled, an old call, a reply.
        c1 = call(NUMBERS[0], at=now - 600, outcome=Outcome.VOICEMAIL, voicemail_left=True)
        cid = await store.record_call(c1, destination=NUMBERS[0], now=now - 600)
        mid = await store.add_message(
            destination=NUMBERS[0],
            text="Thanks for your message",
            template_kind="voicemail",
            call_ids=[cid],
            parts=1,
            encoding="gsm7",
            now=now - 600,
            due_at=now - 570,
        )
        await store.update_message(mid, now=now - 570, state="sent", sent_at=now - 570)
        await store.record_decision(
            cid,
            action="send",
            reason="missed",
            destination=NUMBERS[0],
            template_kind="voicemail",
            text="Thanks for your message",
            detail="",
            now=now - 600,
            message_id=mid,
        )
        c2 = call(NUMBERS[1], at=now - 300)
        cid = await store.record_call(c2, destination=NUMBERS[1], now=now - 300)
        await store.record_decision(
            cid,
            action="suppress",
            reason="cooldown",
            destination=NUMBERS[1],
            template_kind=None,
            text=None,
            detail="texted 3h ago",
            now=now - 300,
        )
        c3 = call("2065550102", at=now - 200)  # local spelling of NUMBERS[1]
        cid = await store.record_call(c3, destination=NUMBERS[1], now=now - 200)
        mid = await store.add_message(
            destination=NUMBERS[1],
            text="Sorry we missed you",
            template_kind="in_hours",
            call_ids=[cid],
            parts=1,
            encoding="gsm7",
            now=now - 200,
            due_at=now - 170,
        )
        await store.update_message(mid, now=now - 190, state="cancelled", reason="called_back")
        await store.record_decision(
            cid,
            action="send",
            reason="missed",
            destination=NUMBERS[1],
            template_kind="in_hours",
            text="Sorry we missed you",
            detail="",
            now=now - 200,
            message_id=mid,
        )
        old = call(NUMBERS[2], at=now - 20 * 86400, outcome=Outcome.ANSWERED)
        cid = await store.record_call(old, destination=NUMBERS[2], now=now - 20 * 86400)
        await store.add_reply(NUMBERS[0], "thanks!", now - 60)
    finally:
        await store.close()


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    cfg = _config(tmp_path)
    asyncio.run(_fill(tmp_path / "tb.db", NOW))
    return cfg


def test_stats_table(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_at(["stats", "--config", str(setup)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if "today" in line)
    assert header.split() == ["today", "7", "days", "30", "days"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:] if line.strip()}
    assert rows["voicemail"] == ["1", "1", "1"]
    assert rows["answered"] == ["0", "0", "1"]  # 20 days ago: only in the 30-day column
    assert rows["cooldown"] == ["1", "1", "1"]
    assert rows["called_back"] == ["1", "1", "1"]
    assert rows["sent"] == ["1", "1", "1"]
    assert rows["replies"] == ["1", "1", "1"]
    # Aligned: every count column ends at the same place as its header.
    widths = {len(line) for line in lines[1:] if line.startswith("  ")}
    assert len(widths) == 1


def test_stats_json(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_at(["stats", "--config", str(setup), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["periods"]["today"]["calls"] == {"voicemail": 1, "no_answer": 2}
    assert doc["periods"]["30 days"]["calls"]["answered"] == 1
    assert doc["periods"]["today"]["texts"] == {"sent": 1, "cancelled": 1}
    assert doc["periods"]["today"]["suppressed"] == {"cooldown": 1, "called_back": 1}
    assert doc["optouts_total"] == 0


def test_history_answers_why_no_text(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The operator types the number the way the caller said it.
    assert run_at(["history", "--config", str(setup), "--caller", "(206) 555-0102"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:8] == [
        "time",
        "caller",
        "outcome",
        "ring",
        "decision",
        "reason",
        "message",
        "why",
    ]
    assert len(out) == 3  # both calls of that caller, newest first
    assert "cancelled" in out[1]
    assert "called_back" in out[1]
    assert "suppress" in out[2]
    assert "cooldown" in out[2]


def test_history_json_since_and_limit(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_at(["history", "--config", str(setup), "--json", "--since", "7d"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["caller"] for d in docs] == ["2065550102", NUMBERS[1], NUMBERS[0]]
    assert [d["message"] for d in docs] == ["cancelled", None, "sent"]
    assert docs[0]["why"] == "called_back"
    assert run_at(["history", "--config", str(setup), "--json", "--limit", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert run_at(["history", "--config", str(setup), "--json", "--since", "2000-01-01"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_history_bad_since_is_one_line(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "--config", str(setup), "--since", "yesterday-ish"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--since" in err


def test_missing_database_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path)
    for argv in (["stats"], ["history"], ["optout", "list"], ["optout", "add", NUMBERS[0]]):
        assert main([*argv, "--config", str(cfg)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "no database at" in err
    assert not (tmp_path / "tb.db").exists()  # nothing was created by accident


def test_default_config_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(_fill(tmp_path / "env.db", NOW))
    monkeypatch.setenv("TEXTBACK_DATABASE__PATH", str(tmp_path / "env.db"))
    assert run_at(["stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["periods"]["today"]["replies"] == 1


def test_optout_add_remove_list(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(setup)
    assert run_at(["optout", "add", "(202) 555-0101", "--config", cfg]) == 0
    assert "+12025550101 added" in capsys.readouterr().out
    assert run_at(["optout", "add", "+12025550101", "--config", cfg], NOW + 60) == 0
    assert "already" in capsys.readouterr().out
    assert run_at(["optout", "list", "--config", cfg]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 1
    assert listed[0].startswith("+12025550101")
    # stamped with the clock's time (the first add), in the office's zone
    assert listed[0] == "+12025550101  added 2026-11-18 12:00:00  (cli)"
    assert run_at(["optout", "remove", "202-555-0101", "--config", cfg]) == 0
    assert "removed" in capsys.readouterr().out
    assert run_at(["optout", "list", "--config", cfg]) == 0
    assert "no opted-out numbers" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["anonymous", "1-800-FLOWERS", "12", '+1202"\r\nATD'])
def test_optout_rejects_what_is_not_a_number(
    setup: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    assert main(["optout", "add", bad, "--config", str(setup)]) == 1
    assert "not a valid phone number" in capsys.readouterr().err


def test_optout_needs_a_number(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optout", "add", "--config", str(setup)]) == 1
    assert "needs a NUMBER" in capsys.readouterr().err


def test_reports_work_while_the_daemon_holds_the_lock(
    setup: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon (in another thread's loop) owns the database; the commands still work."""
    opened = threading.Event()
    release = threading.Event()
    seen: list[bool] = []

    def daemon() -> None:
        async def hold() -> None:
            store = await Store.open(tmp_path / "tb.db")
            opened.set()
            await asyncio.to_thread(release.wait)
            seen.append(await store.is_opted_out(NUMBERS[3]))  # it sees the CLI's write
            await store.close()

        asyncio.run(hold())

    t = threading.Thread(target=daemon)
    t.start()
    try:
        assert opened.wait(10)
        assert run_at(["stats", "--config", str(setup)]) == 0
        assert run_at(["history", "--config", str(setup)]) == 0
        assert run_at(["optout", "add", NUMBERS[3], "--config", str(setup)]) == 0
        out = capsys.readouterr().out
        assert "voicemail" in out
        assert "added to" in out
    finally:
        release.set()
        t.join(10)
    assert seen == [True]
