"""The service assembles optional parts: with `[ami] enabled = false` there is no AMI client,
the STATUS line says so, texts still go out through the modem (the simulator on a pty), and
`textback check` does not ask for an AMI secret."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.app.service import Service
from daemon.check import Severity, check_config, has_errors, validate
from daemon.cli import check as check_cli
from daemon.clock import ManualClock
from daemon.config import load_config
from daemon.model import MessageKind, MessageState
from daemon.sdnotify import Notifier
from daemon.sinks.bus import EventBus
from daemon.sinks.events import Event, ModemStateChanged, TextChanged
from gsm import simulator
from tests.outbox_fakes import NUMBERS

T0 = 1_795_300_000.0
#: How long real I/O (the pty, the database thread) may take before a test gives up.
WAIT = 20.0


def _config(tmp_path: Path, device: str, ami: str = "enabled = false\n") -> Path:
    path = tmp_path / "textback.toml"
    path.write_text(
        f"""
[ami]
{ami}
[modem]
device = "{device}"
[textback]
delay = "30s"
business_name = "Main Street Dental"
[database]
path = "{tmp_path / "t.db"}"
"""
    )
    return path


class Waiter:
    """A sink that lets a test wait for an event it expects."""

    name = "waiter"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def handle(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def first(self, match: Callable[[Event], bool]) -> Event:
        async with asyncio.timeout(WAIT):
            while True:
                for ev in self.events:
                    if match(ev):
                        return ev
                self._changed.clear()
                await self._changed.wait()


async def test_a_service_without_ami_starts_and_sends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.service")
    async with simulator.running("sim800") as sim:
        path = _config(tmp_path, sim.device)
        waiter = Waiter()
        bus = EventBus.standard()
        bus.add(waiter)
        svc = Service(
            load_config(path), path, clock=ManualClock(T0), notifier=Notifier(""), bus=bus
        )
        task = asyncio.create_task(svc.run())
        try:
            await waiter.first(lambda e: isinstance(e, ModemStateChanged) and e.state == "ready")
            assert svc.ami is None
            assert svc.status_line().startswith("AMI off, modem ready")
            assert svc.outbox is not None
            mid = await svc.outbox.enqueue(
                destination=NUMBERS[0],
                text="textback test message",
                template_kind=None,
                call_ids=[],
                kind=MessageKind.TEST,
            )
            await waiter.first(
                lambda e: (
                    isinstance(e, TextChanged)
                    and e.message_id == mid
                    and e.state is MessageState.SENT
                )
            )
            assert [(s.number, s.text) for s in sim.sent] == [(NUMBERS[0], "textback test message")]
            assert svc.store is not None
            m = await svc.store.get_message(mid)
            assert m is not None
            assert (m.state, m.kind, m.sender) == (MessageState.SENT, MessageKind.TEST, "modem")
        finally:
            svc.request_stop()
            assert await asyncio.wait_for(task, WAIT) == 0
    started = [r.getMessage() for r in caplog.records if "event=started" in r.getMessage()]
    assert len(started) == 1
    assert " ami=off " in started[0]


def test_check_asks_no_ami_secret_when_ami_is_off(tmp_path: Path) -> None:
    path = _config(tmp_path, "/dev/null")
    cfg, problems = check_config(path)
    assert cfg is not None
    assert not cfg.ami.enabled
    assert cfg.ami.secret == ""
    assert [p for p in problems if p.key.startswith("ami.secret")] == []
    ami = [p for p in problems if p.key.startswith("ami.")]
    assert [(p.key, p.severity) for p in ami] == [("ami.enabled", Severity.WARNING)]
    assert not has_errors(problems)
    assert [p.key for p in validate(cfg) if p.key.startswith("ami.")] == ["ami.enabled"]


def test_check_still_asks_for_the_secret_when_ami_is_on(tmp_path: Path) -> None:
    # the control for the test above: the same file with AMI on
    path = _config(tmp_path, "/dev/null", ami="enabled = true\n")
    cfg, problems = check_config(path)
    assert cfg is not None
    keys = [p.key for p in problems if p.key.startswith("ami.")]
    assert keys == ["ami.secret"]


def test_textback_check_prints_the_ami_warning_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, "/dev/null")
    assert check_cli.main(argparse.Namespace(config=str(path))) == 0
    out = capsys.readouterr().out
    assert "WARNING ami.enabled: false: textback will not connect to Asterisk" in out
    assert "ami.secret" not in out
    assert out.rstrip().splitlines()[-1].startswith("OK with ")
