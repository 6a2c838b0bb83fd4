"""Several modems through the real `textback run` process (issue 12): a burst of recorded
calls over a fake PBX, three simulator modems of different profiles on real ptys, one of
them unplugged mid-burst; `textback history`, `stats`, `modem` and `check` name the modems.
The simulators' records are the judge of what reached the network.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.check import check_config
from daemon.cli import modem as modemcli
from daemon.config import SINGLE_MODEM, load_config
from daemon.intake.replayserver import ReplayServer
from gsm import simulator
from tests.daemonproc import running_daemon
from tests.test_e2e import (
    BURST,
    TERMINAL,
    body_of,
    events,
    expectation,
    messages,
    ready,
    stop,
    wait_until,
    write_config,
)
from tests.test_modemcli import SimProcess, _args

pytestmark = pytest.mark.timeout(90)

SALES_DID = "5551002"  # the trace's sales line: its callers get the sales SIM's text


def pool_config(path: Path, port: int, db: Path, modems: list[tuple[str, str, str]]) -> Path:
    """The e2e config with [[modems]] (name, device, lines TOML) instead of [modem] device."""
    extra = "".join(
        f'\n[[modems]]\nname = "{name}"\ndevice = {json.dumps(device)}\nlines = {lines}\n'
        for name, device, lines in modems
    )
    write_config(path, port=port, device="unused", db=db, extra=extra)
    text = re.sub(r'(?m)^device = "unused"\n', "", path.read_text(encoding="utf-8"))
    path.write_text(text, encoding="utf-8")
    return path


def cli(*args: str) -> str:
    """`textback <args>` as a child process; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


async def test_three_modems_one_unplugged_mid_burst(tmp_path: Path) -> None:
    exp = expectation(BURST)
    assert len(exp.sure) == 23
    assert not exp.maybe
    # "front" takes three texts, then the fourth's body and vanishes before its +CMGS
    front_faults = simulator.Faults(vanish_after_body=3, accept_delay=0.05)
    server = ReplayServer(body_of(BURST), username="e2e", secret="e2e-secret")
    await server.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(server.close)
        front = await stack.enter_async_context(simulator.running("sim800", front_faults))
        sales = await stack.enter_async_context(
            simulator.running("huawei", simulator.Faults(accept_delay=0.05))
        )
        back = await stack.enter_async_context(
            simulator.running("quectel", simulator.Faults(accept_delay=0.05))
        )
        sims = {"front": front, "sales": sales, "back": back}
        db = tmp_path / "textback.db"
        config = pool_config(
            tmp_path / "textback.toml",
            server.port,
            db,
            [
                ("front", front.device, "[]"),
                ("sales", sales.device, f'["{SALES_DID}"]'),
                ("back", back.device, "[]"),
            ],
        )
        async with running_daemon(config, tmp_path) as d:
            status = await ready(d)
            assert "modems" in status
            await wait_until(
                d,
                lambda: (
                    len(messages(db)) == 23 and all(m["state"] in TERMINAL for m in messages(db))
                ),
            )
            assert front.vanished == 1
            # the journal names the modem each text went to
            sending = [f for f in events(d, "message") if f.get("state") == "sending"]
            assert {f["modem"] for f in sending} == {"front", "sales", "back"}
            assert await stop(d) == 0
    rows = messages(db)
    assert collections.Counter(r["state"] for r in rows) == {"sent": 22, "uncertain": 1}
    (lost,) = [r for r in rows if r["state"] == "uncertain"]
    assert (lost["sender"], lost["destination"]) == ("front", front.parts[-1].number)
    # nothing twice, nothing missing: the uncertain text reached the network once too
    reached = collections.Counter(p.number for sim in sims.values() for p in sim.parts)
    assert reached == collections.Counter(exp.sure.keys())
    assert {p.number: p.text for sim in sims.values() for p in sim.parts} == exp.sure
    assert len(front.parts) == 4
    # the sales line's callers got their text from the sales SIM, and only they did... of
    # the texts with a line: the others spread over the modems still there
    on_sales = {r["destination"] for r in rows if r["line"] == SALES_DID}
    assert on_sales
    assert {r["sender"] for r in rows if r["line"] == SALES_DID} == {"sales"}
    assert on_sales <= {p.number for p in sales.parts}
    assert {p.number for p in back.parts}
    assert not on_sales & {p.number for p in back.parts}
    for r in rows:
        assert r["sender"] in sims
        assert r["destination"] in {p.number for p in sims[r["sender"]].parts}

    out = cli("history", "--config", str(config), "--json")
    history = [json.loads(line) for line in out.splitlines()]
    assert {h["modem"] for h in history if h["message"] in ("sent", "uncertain")} == set(sims)
    table = cli("history", "--config", str(config))
    assert table.splitlines()[0].split()[-2:] == ["modem", "linkedid"]
    stats = json.loads(cli("stats", "--config", str(config), "--json"))
    by_modem = stats["periods"]["today"]["texts_by_modem"]
    assert by_modem == dict(collections.Counter(r["sender"] for r in rows))
    assert "texts by modem" in cli("stats", "--config", str(config))


def test_modem_command_probes_every_modem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = SimProcess("--profile", "sim800"), SimProcess("--profile", "huawei")
    try:
        config = tmp_path / "textback.toml"
        config.write_text(
            f'[[modems]]\nname = "front"\ndevice = "{a.device}"\nlines = ["+12025550100"]\n'
            f'[[modems]]\nname = "back"\ndevice = "{b.device}"\n'
            f'[[modems]]\nname = "gone"\ndevice = "{tmp_path / "ttyUSB9"}"\n',
            encoding="utf-8",
        )
        assert modemcli.main(_args(config=str(config))) == 1  # "gone" cannot be probed
        out = capsys.readouterr().out
    finally:
        a.stop()
        b.stop()
    blocks = out.split("\n\n")
    assert [blk.splitlines()[0].split()[0] for blk in blocks] == ["[front]", "[back]", "[gone]"]
    assert "SIMCOM_SIM800L" in blocks[0]
    assert "lines: +12025550100" in blocks[0]
    assert "E3372" in blocks[1] or "HUAWEI" in blocks[1].upper()
    assert "not probed: no such device" in blocks[2]


@pytest.mark.parametrize(
    ("toml", "key", "said"),
    [
        (
            '[[modems]]\nname = "a"\ndevice = "/dev/null"\nlines = ["+12025550100"]\n'
            '[[modems]]\nname = "b"\ndevice = "/dev/zero"\nlines = ["(202) 555-0100"]\n',
            "modems[1].lines[0]",
            "is also a line of modems[0] (a)",
        ),
        (
            '[[modems]]\nname = "a"\ndevice = "/dev/null"\n'
            '[[modems]]\nname = "a"\ndevice = "/dev/zero"\n',
            "modems[1].name",
            "is also the name of modems[0]",
        ),
        (
            '[[modems]]\nname = "a"\ndevice = "imei:356938035643809"\n'
            '[[modems]]\nname = "b"\ndevice = "IMEI:356938035643809"\n',
            "modems[1].device",
            "is the same modem as modems[0].device",
        ),
        (
            '[[modems]]\nname = "a"\ndevice = "/dev/null"\nfallback = true\n',
            "modems[0].fallback",
            "fallback = true on a modem without lines",
        ),
        (
            '[modem]\ndevice = "/dev/null"\n[[modems]]\nname = "a"\ndevice = "/dev/zero"\n',
            "modem.device",
            "not used with [[modems]]",
        ),
        (
            '[[modems]]\nname = "Front Desk"\ndevice = "/dev/null"\n',
            "modems[0].name",
            "is not a usable modem name",
        ),
    ],
)
def test_check_explains_a_bad_pool(tmp_path: Path, toml: str, key: str, said: str) -> None:
    path = tmp_path / "textback.toml"
    path.write_text(toml, encoding="utf-8")
    _cfg, problems = check_config(path)
    errors = [p for p in problems if p.severity == "error" and p.key == key]
    assert errors, problems
    assert said in errors[0].message
    assert errors[0].hint  # and what to do about it
    # `textback run` refuses it with the same words
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert f"{key}: " in done.stderr


def test_a_single_modem_section_is_one_modem_named_modem() -> None:
    cfg = load_config(None, overrides={"modem": {"device": "/dev/ttyUSB3", "pin": "1234"}})
    (entry,) = cfg.modem_entries()
    assert (entry.name, entry.device, entry.lines, entry.fallback) == (
        SINGLE_MODEM,
        "/dev/ttyUSB3",
        [],
        False,
    )
    assert cfg.modem_settings(entry) == cfg.modem
