"""`textback replay` through the real command line entry point."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from daemon.app.dryrun import dry_run
from daemon.cli import main
from daemon.cli.replay import call_record, replay_events
from daemon.config import Config
from tests.conftest import AMI_DIR, policy_verdict, trace_names

TRACE01 = str(AMI_DIR / "01-missed-noanswer-voicemail.ami")
TRACE02 = AMI_DIR / "02-abandoned-while-ringing.ami"
FIELDS = {
    "linkedid",
    "caller",
    "caller_name",
    "did",
    "outcome",
    "ring_seconds",
    "voicemail_left",
    "decision",
    "reason",
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["replay", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def json_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def caller_trace(tmp_path: Path, number: bytes = b"", name: bytes = b"") -> str:
    """Trace 02 with the caller's number and/or name swapped, written to a temp file."""
    data = TRACE02.read_bytes()
    if number:
        data = data.replace(b"+12025550102", number)
    if name:
        data = data.replace(b"Maria Garcia", name)
    path = tmp_path / "trace.ami"
    path.write_bytes(data)
    return str(path)


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, TRACE01, "--json", "--ring-timeout", "5s")
    assert rc == 0
    (rec,) = json_lines(out)
    assert rec.keys() >= FIELDS
    assert rec["outcome"] == "voicemail"
    assert rec["voicemail_left"] is False
    assert rec["ring_seconds"] == 5.0
    assert (rec["decision"], rec["reason"]) == ("send", "missed")
    assert "1 calls, 1 texts" in err
    assert rec["message"] == "sent"
    assert "our office" in str(rec["text"])


def test_small_chunks_same_answer(capsys: pytest.CaptureFixture[str]) -> None:
    _, whole, _ = run(capsys, str(AMI_DIR / "17-burst.ami"), "--json")
    rc, small, _ = run(capsys, str(AMI_DIR / "17-burst.ami"), "--json", "--chunk", "3")
    assert rc == 0
    assert json_lines(small) == json_lines(whole)
    assert len(json_lines(whole)) == 30


def test_human_lines_are_aligned(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, str(AMI_DIR / "17-burst.ami"))
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 30
    assert len({line.index("outcome=") for line in lines}) == 1
    assert len({line.index("decision=") for line in lines}) == 1
    assert all(line.startswith("linkedid=") for line in lines)


def test_missing_trace_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, out, err = run(capsys, str(tmp_path / "nope.ami"))
    assert rc == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "cannot read" in err
    assert "nope.ami" in err


def test_directory_is_not_a_trace(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, err = run(capsys, str(tmp_path))
    assert rc == 1
    assert out == ""
    assert "cannot read" in err


@pytest.mark.parametrize(
    ("argv", "rc", "words"),
    [
        (["--chunk", "0"], 2, "--chunk"),
        (["--region", "XX"], 1, "--region"),
        (["--ring-timeout", "soon"], 1, "--ring-timeout"),
    ],
)
def test_bad_options(
    capsys: pytest.CaptureFixture[str], argv: list[str], rc: int, words: str
) -> None:
    code, out, err = run(capsys, TRACE01, *argv)
    assert code == rc
    assert out == ""
    assert words in err


def test_config_file_is_read(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "textback.toml"
    cfg.write_text('[ami]\ninbound_contexts = ["from-pstn"]\n')
    rc, out, _ = run(capsys, TRACE01, "--json", "--config", str(cfg))
    assert rc == 0
    (rec,) = json_lines(out)
    assert (rec["outcome"], rec["reason"]) == ("not_inbound", "not_inbound")


def test_bad_config_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "textback.toml"
    cfg.write_text("[calls]\nring_timout = 5\n")
    rc, out, err = run(capsys, TRACE01, "--config", str(cfg))
    assert rc == 1
    assert out == ""
    assert "ring_timout" in err
    rc, out, err = run(capsys, TRACE01, "--config", str(tmp_path / "missing.toml"))
    assert rc == 1
    assert "no such file" in err


@pytest.mark.parametrize(
    ("caller", "verdict"),
    [
        ((b"+12025550102", "US"), ("send", "missed")),
        ((b"1-800-FLOWERS", "US"), ("suppress", "invalid_number")),
        ((b"anonymous", "US"), ("suppress", "anonymous")),
        ((b"+19005550123", "US"), ("suppress", "destination_not_allowed")),  # premium rate
        ((b"+18005550123", "US"), ("suppress", "destination_not_allowed")),  # toll free
        ((b"+442079460123", "US"), ("suppress", "destination_not_allowed")),  # outside US
        ((b"+12025550102", "GB"), ("suppress", "destination_not_allowed")),
        ((b"+442079460123", "GB"), ("suppress", "not_mobile")),  # a UK fixed line
    ],
)
def test_policy_verdict_by_caller(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    caller: tuple[bytes, str],
    verdict: tuple[str, str],
) -> None:
    number, region = caller
    trace = caller_trace(tmp_path, number=number)
    rc, out, _ = run(capsys, trace, "--json", "--region", region)
    assert rc == 0
    (rec,) = json_lines(out)
    assert rec["outcome"] == "abandoned"
    assert (rec["decision"], rec["reason"]) == verdict


def test_allowed_countries_from_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = caller_trace(tmp_path, number=b"+442079460123")
    cfg = tmp_path / "textback.toml"
    cfg.write_text(
        '[textback]\nallowed_countries = ["US", "GB"]\n'
        'allowed_number_types = ["mobile", "fixed_line_or_mobile", "fixed_line"]\n'
    )
    rc, out, _ = run(capsys, trace, "--json", "--config", str(cfg))
    assert rc == 0
    (rec,) = json_lines(out)
    assert (rec["decision"], rec["reason"]) == ("send", "missed")


def test_caller_name_control_bytes_are_inert(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = caller_trace(tmp_path, name='Evil\x1b[2J Name "q" José'.encode())
    rc, out, _ = run(capsys, trace)
    assert rc == 0
    assert "\x1b" not in out
    assert "\\u001b[2J" in out
    assert "José" in out
    rc, out, _ = run(capsys, trace, "--json")
    (rec,) = json_lines(out)
    assert rec["caller_name"] == 'Evil\x1b[2J Name "q" José'


def test_garbage_trace_is_survived(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "garbage.ami"
    path.write_bytes(b"\x00\xff\xfe garbage\r\nno colon here\r\n\r\n" + TRACE02.read_bytes()[:5000])
    rc, out, err = run(capsys, str(path), "--json")
    assert rc == 0
    assert out == ""  # the call never finished inside the cut trace
    assert "0 calls" in err
    assert "still in progress" in err
    assert "malformed=0" not in err


def test_outbound_calls_show_the_dialled_number(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, str(AMI_DIR / "21-missed-then-callback.ami"))
    assert rc == 0
    first, second = out.splitlines()
    assert "dialled=" not in first
    assert second.endswith("dialled=+12025550121")
    assert "reason=not_inbound" in second


# -- the full policy and the wait step on the trace's own clock (issue 4) ----------------------


def _policy_config(tmp_path: Path, delay: str) -> str:
    path = tmp_path / "textback.toml"
    path.write_text(
        f"""
[calls]
ring_timeout = "5s"
[textback]
delay = "{delay}"
business_name = "Main Street Dental"
template = "Sorry we missed you at {{business_name}}."
template_after_hours = "Closed now: {{business_name}}."
[hours]
mon = ["00:00-24:00"]
tue = ["00:00-24:00"]
wed = ["00:00-24:00"]
thu = ["00:00-24:00"]
fri = ["00:00-24:00"]
sat = ["00:00-24:00"]
sun = ["00:00-24:00"]
"""
    )
    return str(path)


def test_repeat_caller_gets_one_text(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = str(AMI_DIR / "20-repeat-caller.ami")
    rc, out, _ = run(capsys, trace, "--json", "--config", _policy_config(tmp_path, "30s"))
    assert rc == 0
    recs = json_lines(out)
    # call 2 ends ~34 s in, inside call 1's 30 s wait: it joins the pending text;
    # call 3 (~65 s) comes after the text went out: the cooldown holds it back
    assert [r["message"] for r in recs] == ["sent", "merged", None]
    assert [r["reason"] for r in recs] == ["missed", "missed", "cooldown"]
    assert recs[0]["text"] == "Sorry we missed you at Main Street Dental."
    assert recs[2]["text"] is None


def test_repeat_caller_without_wait_is_cooldown(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = str(AMI_DIR / "20-repeat-caller.ami")
    rc, out, _ = run(capsys, trace, "--json", "--config", _policy_config(tmp_path, "0s"))
    assert rc == 0
    recs = json_lines(out)
    assert [r["message"] for r in recs] == ["sent", None, None]
    assert [r["reason"] for r in recs] == ["missed", "cooldown", "cooldown"]


def test_callback_during_the_wait_cancels(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = str(AMI_DIR / "21-missed-then-callback.ami")
    rc, out, _ = run(capsys, trace, "--json", "--config", _policy_config(tmp_path, "30s"))
    assert rc == 0
    missed, callback = json_lines(out)
    assert missed["message"] == "cancelled"
    assert callback["outcome"] == "not_inbound"
    assert callback["message"] is None


def test_callback_after_the_text_changes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = str(AMI_DIR / "21-missed-then-callback.ami")
    rc, out, _ = run(capsys, trace, "--json", "--config", _policy_config(tmp_path, "5s"))
    assert rc == 0
    missed, _callback = json_lines(out)
    assert missed["message"] == "sent"


# -- one policy: a call the dry run has no report for is judged by the same policy ------------

#: Reasons only history gives (earlier texts, opt-outs): a call judged alone cannot have them.
_HISTORY_REASONS = {"cooldown", "cap_reached", "opted_out"}


@pytest.mark.parametrize("name", trace_names())
def test_without_a_report_the_real_policy_judges_the_call_alone(name: str) -> None:
    cfg = Config()
    cfg = cfg.model_copy(update={"calls": cfg.calls.model_copy(update={"ring_timeout": 5.0})})
    data = (AMI_DIR / f"{name}.ami").read_bytes()
    finished, _, _, events = replay_events([data], cfg)
    reports = asyncio.run(dry_run(events, cfg))
    assert finished
    for call in finished:
        alone = call_record(call, cfg)
        assert (alone["decision"], alone["reason"]) == policy_verdict(call, cfg), call.linkedid
        assert alone["text"] is None  # nothing queued, so no text and no message
        assert alone["message"] is None
        full = call_record(call, cfg, reports[call.linkedid])
        same = {k: v for k, v in full.items() if k not in ("decision", "reason", "text", "message")}
        assert {k: alone[k] for k in same} == same
        if full["reason"] not in _HISTORY_REASONS:
            assert (alone["decision"], alone["reason"]) == (full["decision"], full["reason"])
