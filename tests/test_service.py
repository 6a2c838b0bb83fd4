"""The daemon in-process (Service) against the replay server and the modem simulator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from daemon.app.service import Service
from daemon.config import load_config
from daemon.intake.replayserver import ReplayServer, trace_body
from daemon.sdnotify import Notifier
from gsm import simulator
from tests.conftest import AMI_DIR

OPEN_ALL_WEEK = "\n".join(
    f'{d} = ["00:00-24:00"]' for d in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
)


def _config(tmp_path: Path, port: int, device: str, calls: str) -> Path:
    path = tmp_path / "textback.toml"
    path.write_text(
        f"""
[ami]
port = {port}
username = "t"
secret = "s"
{calls}
[modem]
device = "{device}"
[textback]
delay = "0s"
business_name = "Main Street Dental"
template = "Sorry we missed you at {{business_name}}."
pumping_max_per_range = 0
[hours]
{OPEN_ALL_WEEK}
[database]
path = "{tmp_path / "t.db"}"
"""
    )
    return path


def _without_channelvars(raw: bytes) -> bytes:
    """The trace as a PBX without `channelvars` would send it (the file is not touched)."""
    lines = raw.split(b"\r\n")
    keep = [ln for ln in lines if not ln.startswith((b"ChanVariable:", b"DestChanVariable:"))]
    return b"\r\n".join(keep)


async def _run(
    tmp_path: Path,
    server: ReplayServer,
    calls: str = '[calls]\nring_timeout = "5s"\n',
    reload_calls: str | None = None,
) -> tuple[list[simulator.SentSms], dict]:
    """Run the Service until the stream is played and handled; with `reload_calls`, the
    config is rewritten with it and reloaded (as on SIGHUP) before the stream starts."""
    if reload_calls is not None:
        server.flowing.clear()
    port = await server.start()
    try:
        async with simulator.running("sim800") as sim:
            cfg_path = _config(tmp_path, port, sim.device, calls)
            svc = Service(load_config(cfg_path), cfg_path, notifier=Notifier(""))
            task = asyncio.create_task(svc.run())
            try:
                if reload_calls is not None:
                    await asyncio.wait_for(server.connected.wait(), 30)
                    _config(tmp_path, port, sim.device, reload_calls)
                    assert svc.reload()
                    server.flowing.set()
                await asyncio.wait_for(server.finished.wait(), 30)
                # every call finished and decided, every text handled
                async with asyncio.timeout(30):
                    while True:
                        await asyncio.sleep(0.05)
                        if svc.tracker.active or svc.store is None or svc._events.qsize():
                            continue
                        if not await svc.store.messages(("waiting", "queued", "sending")):
                            break
                assert svc.store is not None
                rows = await svc.store.history(caller=None, since=None, limit=50)
            finally:
                svc.request_stop()
                assert await task == 0
            return list(sim.sent), {r.caller: r for r in rows}
    finally:
        await server.close()


@pytest.mark.timeout(60)
async def test_withheld_caller_found_by_getvar_without_channelvars(tmp_path: Path) -> None:
    body = _without_channelvars(trace_body((AMI_DIR / "14-anonymous-missed.ami").read_bytes()))
    assert b"prohib" not in body
    server = ReplayServer(body, username="t", secret="s", speed=8.0)
    # what the live channel answers to Getvar CALLERID(pres) (README of the traces)
    server.getvar_values[("PJSIP/trunk-00000002", "CALLERID(pres)")] = "prohib_not_screened"
    sent, rows = await _run(tmp_path, server)
    assert sent == []
    assert rows["+12025550114"].reason == "anonymous"
    assert "getvar" in server.stats.actions or "Getvar" in server.stats.actions


@pytest.mark.timeout(60)
async def test_without_getvar_answer_the_asserted_number_would_be_texted(tmp_path: Path) -> None:
    # the control: the same stream, Getvar answering "allowed": the number is texted,
    # so the test above passes because of the Getvar answer and nothing else
    body = _without_channelvars(trace_body((AMI_DIR / "14-anonymous-missed.ami").read_bytes()))
    server = ReplayServer(body, username="t", secret="s", speed=8.0)
    server.getvar_values[("PJSIP/trunk-00000002", "CALLERID(pres)")] = "allowed_not_screened"
    sent, rows = await _run(tmp_path, server)
    assert [s.number for s in sent] == ["+12025550114"]
    assert rows["+12025550114"].reason == "missed"
    assert json.dumps(sent[0].text) == json.dumps("Sorry we missed you at Main Street Dental.")


@pytest.mark.timeout(60)
async def test_enforce_ring_timeout_redirects_a_call_still_ringing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # trace 02 rings 2.5 s before the caller gives up; with a 1 s ring timeout enforced,
    # the daemon must send the caller's channel to the voicemail target meanwhile
    server = ReplayServer(
        trace_body((AMI_DIR / "02-abandoned-while-ringing.ami").read_bytes()),
        username="t",
        secret="s",
        speed=1.0,
    )
    extra = '[calls]\nring_timeout = "1s"\nmin_ring = "0.5s"\nenforce_ring_timeout = true\n'
    extra += 'voicemail_target = "vm-main,s,1"\n'
    caplog.set_level("INFO", logger="daemon.service")
    await _run(tmp_path, server, calls=extra)
    actions = [a.lower() for a in server.stats.actions]
    assert actions.count("redirect") == 1
    (line,) = [r.getMessage() for r in caplog.records if "event=redirect" in r.getMessage()]
    assert "channel=PJSIP/trunk-00000002" in line  # the caller's channel in trace 02
    assert "target=vm-main,s,1" in line
    assert "ok=True" in line


@pytest.mark.timeout(60)
async def test_sighup_turns_enforce_ring_timeout_on(tmp_path: Path) -> None:
    server = ReplayServer(
        trace_body((AMI_DIR / "02-abandoned-while-ringing.ami").read_bytes()),
        username="t",
        secret="s",
        speed=1.0,
    )
    off = '[calls]\nring_timeout = "1s"\nmin_ring = "0.5s"\n'
    on = off + 'enforce_ring_timeout = true\nvoicemail_target = "vm-main,s,1"\n'
    await _run(tmp_path, server, calls=off, reload_calls=on)
    assert [a.lower() for a in server.stats.actions].count("redirect") == 1
