"""The daemon in-process (Service) against the replay server and the modem simulator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from daemon.ami.replayserver import ReplayServer, trace_body
from daemon.config import load_config
from daemon.sdnotify import Notifier
from daemon.service import Service
from gsm import simulator
from tests.conftest import AMI_DIR

OPEN_ALL_WEEK = "\n".join(
    f'{d} = ["00:00-24:00"]' for d in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
)


def _config(tmp_path: Path, port: int, device: str) -> Path:
    path = tmp_path / "textback.toml"
    path.write_text(
        f"""
[ami]
port = {port}
username = "t"
secret = "s"
[calls]
ring_timeout = "5s"
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


async def _run(tmp_path: Path, server: ReplayServer) -> tuple[list[simulator.SentSms], dict]:
    port = await server.start()
    try:
        async with simulator.running("sim800") as sim:
            cfg_path = _config(tmp_path, port, sim.device)
            svc = Service(load_config(cfg_path), cfg_path, notifier=Notifier(""))
            task = asyncio.create_task(svc.run())
            try:
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
