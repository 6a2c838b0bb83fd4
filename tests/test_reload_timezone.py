"""SIGHUP: a new [hours] timezone applies from the next call, without a restart.

The Service is built as `run` builds it (a real SQLite file, the real pipeline and outbox)
on a ManualClock; `reload()` is what SIGHUP calls.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.app.service import Service
from daemon.clock import ManualClock
from daemon.config import load_config
from daemon.sdnotify import Notifier
from daemon.store.store import Store
from tests.outbox_fakes import call

#: Tuesday 2026-03-03 15:30 UTC: 10:30 in New York (open), 00:30 Wednesday in Tokyo (closed).
T = datetime(2026, 3, 3, 15, 30, tzinfo=UTC).timestamp()


def _write(path: Path, zone: str) -> None:
    path.write_text(
        f"""
[ami]
enabled = false
[textback]
delay = "0s"
pumping_max_per_range = 0
[hours]
timezone = "{zone}"
[database]
path = "{path.parent / "t.db"}"
"""
    )


async def test_a_new_timezone_applies_at_sighup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.service")
    path = tmp_path / "textback.toml"
    _write(path, "America/New_York")
    clock = ManualClock(T)
    svc = Service(load_config(path), path, clock=clock, notifier=Notifier(""))
    svc.store = await Store.open(svc.cfg.database.path, tz=svc.cfg.hours.timezone)
    try:
        svc._assemble()
        assert svc.pipeline is not None
        first = call("+12025550131", at=T)
        await svc.pipeline.handle(first)
        assert svc.store.day_of(T) == "2026-03-03"

        _write(path, "Asia/Tokyo")
        assert svc.reload()
        assert not [r for r in caplog.records if "reload_partial" in r.getMessage()]
        assert any("event=timezone_changed" in r.getMessage() for r in caplog.records)
        second = call("+12025550132", at=T)
        await svc.pipeline.handle(second)

        before = await svc.pipeline.report(first.linkedid)
        after = await svc.pipeline.report(second.linkedid)
        assert before is not None
        assert after is not None
        assert before.text is not None
        assert after.text is not None
        assert "We will call you back soon" in before.text  # in hours in New York
        assert "We are closed now" in after.text  # after hours in Tokyo, same instant
        # the counters' and caps' calendar follows at once
        assert svc.store.day_of(T) == "2026-03-04"
        assert svc.store.timezone == "Asia/Tokyo"
    finally:
        await svc.store.close()


async def test_a_bad_timezone_is_refused_and_the_old_one_kept(tmp_path: Path) -> None:
    path = tmp_path / "textback.toml"
    _write(path, "America/Chicago")
    svc = Service(load_config(path), path, clock=ManualClock(T), notifier=Notifier(""))
    svc.store = await Store.open(svc.cfg.database.path, tz=svc.cfg.hours.timezone)
    try:
        svc._assemble()
        _write(path, "America/Chicgo")
        assert not svc.reload()
        assert svc.cfg.hours.timezone == "America/Chicago"
        assert svc.store.timezone == "America/Chicago"
    finally:
        await svc.store.close()
