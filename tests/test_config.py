"""The config: schema, example file, durations, env overrides, and `textback check`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import cli
from daemon.check import Severity, check_config, has_errors, validate
from daemon.config import Config, ConfigError, format_duration, load_config, parse_duration
from daemon.config_example import (
    README_START,
    REGENERATE,
    all_key_docs,
    render_example,
    render_markdown,
    update_readme,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "textback.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TEXTBACK_* variable of the machine running the tests leaks into them."""
    for name in list(os.environ):
        if name.upper().startswith("TEXTBACK_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "textback.toml"
    path.write_text(text, encoding="utf-8")
    return path


def run_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = cli.main(["check", "--config", str(path)])
    out, err = capsys.readouterr()
    return rc, out + err


def problems_of(**sections: Any) -> list[tuple[str, str, str]]:
    cfg = load_config(None, overrides=sections)
    return [(p.key, p.severity.value, p.message) for p in validate(cfg)]


# --- the example file --------------------------------------------------------------------


def test_committed_example_matches_the_schema() -> None:
    committed = EXAMPLE.read_text(encoding="utf-8")
    assert committed == render_example(), (
        f"config/textback.toml is out of date with daemon/config.py; regenerate it: {REGENERATE}"
    )


def test_example_loads_to_exactly_the_defaults() -> None:
    assert load_config(EXAMPLE).model_dump() == Config().model_dump()


def test_example_passes_check_without_errors() -> None:
    cfg, problems = check_config(EXAMPLE)
    assert cfg is not None
    assert not has_errors(problems), problems
    # The only complaints are the things every install must fill in (and the modem, when
    # this machine has none at /dev/ttyUSB0).
    assert {p.key for p in problems} - {"modem.device"} == {
        "ami.secret",
        "textback.business_name",
    }


def test_every_key_is_documented_with_unit_and_default() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    docs = all_key_docs()
    assert len(docs) > 50
    for doc in docs:
        assert doc.description, f"{doc.path} has no description in daemon/config.py"
        assert re.search(rf"^#* ?#?\s*{doc.name} = ", text, re.M), doc.path
        numeric = isinstance(doc.default, int | float) and not isinstance(doc.default, bool)
        if numeric:
            assert doc.unit, f"{doc.path}: add its unit to UNITS in daemon/config_example.py"
    assert text.count("Default:") == len(docs)
    bare = re.findall(r"^[# ]*\w+ =$", text, re.M)
    assert bare == [], f"give these keys an example value in daemon/config_example.py: {bare}"


def test_commented_lines_example_is_valid(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    start = text.index("# [[lines]]\n")
    block = text[start : text.index("\n\n", start)]
    uncommented = "\n".join(
        line[2:] for line in block.splitlines() if line.startswith("# ")
    ).replace("[[lines]]", "\n[[lines]]", 1)
    path = write(tmp_path, text.replace(block, "") + "\n" + uncommented + "\n")
    cfg, problems = check_config(path)
    assert cfg is not None, problems
    assert [line.did for line in cfg.lines] == ["+12025550100"]
    assert cfg.lines[0].callback_number == "+1 202 555 0100"
    assert not has_errors(problems), problems


def test_markdown_reference_names_every_key() -> None:
    md = render_markdown()
    for doc in all_key_docs():
        assert f"| `{doc.name}` |" in md
    assert "#### `[[lines]]`" in md
    assert "never logged" in md


def test_readme_config_reference_is_current() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert README_START in readme, "README.md lost its config-reference markers"
    assert update_readme(readme) == readme, (
        "README.md's config reference is out of date: run "
        "python -m daemon.config_example --readme README.md"
    )


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("24h", 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("500ms", 0.5),
        ("2d", 172800.0),
        ("1.5m", 90.0),
        (" 20S ", 20.0),
        (15, 15.0),
        ("15", 15.0),
    ],
)
def test_durations_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty duration"),
        ("abc", "cannot read 'abc'"),
        ("30x", "use a unit"),
        ("5s30", "use a unit"),
        ("-5s", "use a unit"),
        (-5, "negative"),
        (True, "not true/false"),
        (["30s"], "a duration such as"),
    ],
)
def test_bad_durations_are_clear_errors(text: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_duration(text)


def test_bad_duration_in_file_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[calls]\nring_timeout = "20 seconds"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [(key, message)] = info.value.problems
    assert key == "calls.ring_timeout"
    assert "'30s'" in message


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(0, 10**7).map(float), st.integers(1, 999).map(lambda n: n / 1000)))
def test_format_duration_reads_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


# --- strictness and the environment --------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key", "hint"),
    [
        ('[calls]\nring_timout = "20s"\n', "calls.ring_timout", "did you mean ring_timeout?"),
        ("[colls]\nx = 1\n", "colls", "did you mean [calls]?"),
        ('[[lines]]\ndid = "+12025550100"\nname = "x"\n', "lines[0].name", "keys of [[lines]]"),
    ],
)
def test_unknown_keys_are_errors_with_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, key: str, hint: str
) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(path)
    rc, out = run_check(path, capsys)
    assert rc == 1
    assert f"ERROR   {key}: unknown key" in out
    assert hint in out


def test_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[calls]\nring_timeout = "18s"\nmin_ring = "2s"\n')
    assert load_config(path).calls.ring_timeout == 18.0
    monkeypatch.setenv("TEXTBACK_CALLS__RING_TIMEOUT", "15s")
    monkeypatch.setenv("TEXTBACK_AMI__PORT", "5039")
    cfg = load_config(path)
    assert cfg.calls.ring_timeout == 15.0
    assert cfg.calls.min_ring == 2.0  # the file's other keys stay
    assert cfg.ami.port == 5039


def test_env_errors_name_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEXTBACK_CALLS__RING_TIMEOUT", "soon")
    rc, out = run_check(write(tmp_path, ""), capsys)
    assert rc == 1
    assert "calls.ring_timeout: cannot read 'soon'" in out
    assert "set by environment variable TEXTBACK_CALLS__RING_TIMEOUT" in out


def test_env_value_is_marked_in_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEXTBACK_CALLS__RING_TIMEOUT", "16s")
    rc, out = run_check(write(tmp_path, ""), capsys)
    assert rc == 0
    assert 'ring_timeout = "16s"   # from TEXTBACK_CALLS__RING_TIMEOUT' in out


# --- textback check ----------------------------------------------------------------------


def test_check_ok_exit_0_and_shows_settings(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_check(EXAMPLE, capsys)
    assert rc == 0
    assert "Settings in effect (secrets hidden):" in out
    assert 'timezone = "America/New_York"' in out
    assert "secret = (not set)" in out
    assert "textback.template  [1 part, GSM-7, 68/160]" in out
    assert "    Sorry we missed your call to our office. We will call you back soon." in out
    assert re.search(r"OK with [23] warnings$", out.rstrip())


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_check(tmp_path / "nope.toml", capsys)
    assert rc == 1
    assert "ERROR   (file): no such file" in out
    assert "hint: copy config/textback.toml" in out


def test_check_toml_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_check(write(tmp_path, "[calls]\nring_timeout = 20s\n"), capsys)
    assert rc == 1
    assert "ERROR   (syntax):" in out
    assert "need double quotes" in out


def test_check_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        """
[calls]
enforce_ring_timeout = true
[textback]
home_region = "XX"
template = "Hi {caller}, sorry we missed you"
[hours]
timezone = "Mars/Olympus"
mon = ["9-17"]
holidays = ["2026-02-30"]
[[lines]]
did = "+12025550100"
[[lines]]
did = "+12025550100"
""",
    )
    rc, out = run_check(path, capsys)
    assert rc == 1
    for expected in [
        "ERROR   calls.voicemail_target: enforce_ring_timeout is on",
        "ERROR   textback.home_region: 'XX'",
        "ERROR   textback.template: unknown field {caller}",
        "did you mean {caller_name}?",
        "ERROR   hours.timezone: unknown time zone 'Mars/Olympus'",
        "ERROR   hours.mon[0]: '9-17' is not \"HH:MM-HH:MM\"",
        "ERROR   hours.holidays[0]: '2026-02-30'",
        "ERROR   lines[1].did: '+12025550100' is the same DID as lines[0].did",
    ]:
        assert expected in out
    assert "NOT OK: 7 errors" in out


def test_secrets_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret, pin = "Zq9-hunter2-secret", "4321"
    good = tmp_path / "good.toml"
    good.write_text(f'[ami]\nsecret = "{secret}"\n[modem]\npin = "{pin}"\n', encoding="utf-8")
    rc, out = run_check(good, capsys)
    assert rc == 0
    assert "secret = (set, hidden)" in out
    assert "pin = (set, hidden)" in out
    assert secret not in out
    assert pin not in out
    # A bad PIN and a config that fails to load do not echo them either.
    bad_pin = write(tmp_path, f'[ami]\nsecret = "{secret}"\n[modem]\npin = "43a1"\n')
    rc, out = run_check(bad_pin, capsys)
    assert rc == 1
    assert "modem.pin: a SIM PIN is 4 to 8 digits" in out
    assert "43a1" not in out
    assert secret not in out
    broken = tmp_path / "broken.toml"
    broken.write_text(f'[ami]\nsecret = "{secret}"\nport = "x"\n', encoding="utf-8")
    rc, out = run_check(broken, capsys)
    assert rc == 1
    assert secret not in out
    assert secret not in repr(load_config(good))


# --- ring timeout and the other cross-field checks -------------------------------------------


@pytest.mark.parametrize(
    ("ring", "fragment"),
    [
        ("12s", "12s is under 15s: staff have too little time to pick up"),
        ("25s", "25s is over 20s: a call forwarded to a mobile reaches the mobile carrier's"),
    ],
)
def test_ring_timeout_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ring: str, fragment: str
) -> None:
    path = write(tmp_path, f'[calls]\nring_timeout = "{ring}"\n')
    rc, out = run_check(path, capsys)
    assert rc == 0  # a warning, not an error
    assert f"WARNING calls.ring_timeout: {fragment}" in out


@pytest.mark.parametrize("ring", [15.0, 17.5, 20.0])
def test_ring_timeout_in_range_no_warning(ring: float) -> None:
    keys = [key for key, _, _ in problems_of(calls={"ring_timeout": ring})]
    assert "calls.ring_timeout" not in keys


@pytest.mark.parametrize(
    ("sections", "key", "severity", "fragment"),
    [
        ({"calls": {"enforce_ring_timeout": True}}, "calls.voicemail_target", "error", "empty"),
        ({"calls": {"voicemail_target": "vm"}}, "calls.voicemail_target", "error", "not"),
        ({"calls": {"voicemail_target": "vm,,1"}}, "calls.voicemail_target", "error", "not"),
        ({"calls": {"min_ring": "20s"}}, "calls.min_ring", "error", "short_abandon"),
        ({"hours": {"tue": ["09:00-09:00"]}}, "hours.tue[0]", "error", "is empty"),
        (
            {"hours": {"fri": ["22:00-03:00"], "sat": ["02:00-05:00"]}},
            "hours.sat[0]",
            "warning",
            "overlaps hours.fri[0]",
        ),
        (
            {"hours": {"sun": ["22:00-03:00"], "mon": ["01:00-05:00"]}},
            "hours.sun[0]",
            "warning",
            "overlaps hours.mon[0]",
        ),
        ({"hours": {"wed": ["09:00-24:30"]}}, "hours.wed[0]", "error", "not a time of day"),
        ({"hours": {"thu": ["09:00-13:00", "12:00-17:00"]}}, "hours.thu[1]", "warning", "over"),
        ({"hours": {"holidays": ["12/25/2026"]}}, "hours.holidays[0]", "error", "not a date"),
        ({"hours": {"timezone": "America/Chicgo"}}, "hours.timezone", "error", "unknown"),
        ({"textback": {"home_region": "us"}}, "textback.home_region", "error", "capitals"),
        (
            {"textback": {"allowed_countries": ["CA", "ZZ"]}},
            "textback.allowed_countries[1]",
            "error",
            "'ZZ'",
        ),
        (
            {"textback": {"allowed_countries": ["CA"]}},
            "textback.allowed_countries",
            "warning",
            "home_region",
        ),
        ({"textback": {"template": "{0} hi"}}, "textback.template", "error", "without a name"),
        ({"textback": {"template": "{did.x}"}}, "textback.template", "error", "attribute"),
        ({"textback": {"template": "{bizname}"}}, "textback.template", "error", "unknown field"),
        ({"textback": {"template": "{time:%H}"}}, "textback.template", "error", "not allowed"),
        ({"textback": {"template": "a { b"}}, "textback.template", "error", "cannot read"),
        ({"textback": {"template": " "}}, "textback.template", "error", "empty template"),
        ({"textback": {"delay": "3h"}}, "textback.max_age", "error", "expire"),
        ({"textback": {"max_per_hour": 500}}, "textback.max_per_hour", "warning", "never"),
        ({"textback": {"blocklist": ["12"]}}, "textback.blocklist[0]", "warning", "not a valid"),
        (
            {"ami": {"inbound_contexts": [], "inbound_trunks": [], "inbound_dids": []}},
            "ami.inbound_contexts",
            "error",
            "no call would ever count as inbound",
        ),
        ({"modem": {"smsc": "12345"}}, "modem.smsc", "error", "international"),
        ({"database": {"path": "textback.db"}}, "database.path", "warning", "relative"),
        ({"modem": {"device": "/dev/textback-none"}}, "modem.device", "warning", "not exist"),
        (
            {"lines": [{"did": "+12025550101", "template": "Hi {caller_name}"}]},
            "lines[0].template",
            "warning",
            "caller_name_fallback is empty",
        ),
        (
            {"lines": [{"did": "+12025550101"}, {"did": "(202) 555-0101"}]},
            "lines[1].did",
            "error",
            "same DID as lines[0].did",
        ),
        (
            {"textback": {"template": "We\u2019re sorry we missed you. " * 3}},
            "textback.template",
            "warning",
            "UCS-2 (70 characters a part instead of 160) because of '\u2019' (U+2019)",
        ),
        (
            {"lines": [{"did": "+12025550101", "template": "Sorry. " * 60}]},
            "lines[0].template",
            "warning",
            "is 3 SMS parts long",
        ),
    ],
)
def test_validate_finds(sections: dict[str, Any], key: str, severity: str, fragment: str) -> None:
    found = problems_of(**sections)
    assert any(k == key and s == severity and fragment in m for k, s, m in found), found


def test_validate_accepts_a_full_office() -> None:
    found = problems_of(
        ami={"secret": "x"},
        modem={"device": "/dev/null"},  # exists and is read-write for everyone
        calls={"enforce_ring_timeout": True, "voicemail_target": "ext-local,vmu100,1"},
        textback={
            "business_name": "Main Street Dental",
            "allowed_countries": ["US", "CA"],
            "template": "Hi {caller_name}, sorry we missed your {day} {time} call to {did}.",
            "caller_name_fallback": "there",
        },
        contacts={"astdb_family": "cidname"},
        hours={
            "fri": ["09:00-17:00", "22:00-02:00"],
            "sat": ["10:00-12:00", "13:00-24:00"],
            "holidays": ["2026-12-25"],
        },
        lines=[
            {"did": "+12025550100", "callback_number": "+12025550100"},
            {"did": "+12025550101", "template": "Call {callback_number}.", "callback_number": "1"},
        ],
    )
    # enforce_ring_timeout is always reminded of (manager.conf needs write=call).
    assert [(k, s) for k, s, _ in found] == [("calls.enforce_ring_timeout", "warning")]


def test_check_config_for_reload(tmp_path: Path) -> None:
    cfg, problems = check_config(write(tmp_path, '[hours]\nmon = ["nine to five"]\n'))
    assert cfg is not None
    assert has_errors(problems)
    [bad] = [p for p in problems if p.severity is Severity.ERROR]
    assert bad.key == "hours.mon[0]"
    assert bad.hint
    cfg, problems = check_config(write(tmp_path, "[hours]\nmonday = []\n"))
    assert cfg is None
    assert [p.key for p in problems] == ["hours.monday"]


def test_misspelt_environment_section_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEXTBACK_CALS__RING_TIMEOUT", "15s")
    rc, out = run_check(write(tmp_path, ""), capsys)
    assert rc == 0
    assert "WARNING (environment) TEXTBACK_CALS__RING_TIMEOUT: names no config section" in out
    assert "did you mean TEXTBACK_CALLS__...?" in out


def test_modem_device_without_permission_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root here, for whom every file is writable: fake only the access check.
    monkeypatch.setattr("daemon.check.os.access", lambda path, mode: False)
    found = problems_of(modem={"device": "/dev/null"})
    assert ("modem.device", "warning", "/dev/null is not readable and writable by this user") in [
        (k, s, m) for k, s, m in found
    ]


def test_check_names_a_broker_role_without_a_broker(tmp_path: Path) -> None:
    _, problems = check_config(write(tmp_path, '[sending]\nvia = "broker"\n'))
    assert [(p.key, p.severity.name) for p in problems if p.key == "sending.via"] == [
        ("sending.via", "ERROR")
    ]
    _, problems = check_config(
        write(tmp_path, '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n[jobs]\nserve = true\n')
    )
    assert not [p for p in problems if p.key.startswith(("jobs.", "sending."))]
    _, problems = check_config(
        write(
            tmp_path,
            '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n[jobs]\nserve = true\n'
            '[sending]\nvia = "broker"\n',
        )
    )
    assert [p.key for p in problems if p.key == "jobs.serve"] == ["jobs.serve"]
