"""MQTT end to end: the real `textback run` process, a real Mosquitto, the fake Asterisk
(the bench's BenchServer writing trace 02 calls with fresh ids and fictional 555-01xx
callers on demand) and the modem simulator on a pty; a real aiomqtt subscriber.

The daemon runs with `keepalive = "2s"`, so a kill -9 must show `offline` within 3 s.
Waits are on messages, log lines and the simulator, never on timers; the one timing
claim measured is the will's delay. A broker down "10 minutes" is not waited out here:
the queue is bounded by count, not time, and tests/test_mqtt.py runs ten minutes of
outage and capped backoff on the injected clock; here the broker is down for a whole
burst of calls, which must all be texted once.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from gsm import simulator
from tests.bench.bench_service import CONFIG, SECRET, USER, BenchServer, CallMaker
from tests.daemonproc import running_daemon
from tests.mqtt_support import Recorder, broker
from tests.test_e2e import wait_until

pytestmark = pytest.mark.timeout(120)

KEEPALIVE = 2.0
BASE = "textback/office1"
DISCOVERY = "homeassistant/sensor/textback_office1/missed_today/config"


def write_config(path: Path, *, ami: int, device: str, db: Path, mqtt: str) -> Path:
    """The bench's config (no wait step, no caps) with an [mqtt] section."""
    path.write_text(CONFIG.format(port=ami, user=USER, secret=SECRET, device=device, db=db) + mqtt)
    return path


def mqtt_section(url: str, **extra: str) -> str:
    """[mqtt] for the office1 site, keepalive 2 s, the switch on."""
    lines = [
        "[mqtt]",
        f'url = "{url}"',
        'site = "office1"',
        f'keepalive = "{KEEPALIVE:g}s"',
        "commands = true",
        *(f'{k} = "{v}"' for k, v in extra.items()),
    ]
    return "\n" + "\n".join(lines) + "\n"


def cli(config: Path, *args: str) -> str:
    """Run a `textback` command next to the daemon; its stdout."""
    out = subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout


async def place(server: BenchServer, maker: CallMaker, index: int) -> None:
    """One missed call (abandoned while ringing), written at once."""
    # The real daemon runs on the system clock, so its events carry "now"; nothing asserted
    # depends on the hour (the config keeps the office open all week, no caps).
    before, hangup, after = maker.render(index, time.time())
    server.write(before + hangup + after)
    await server.drain()


async def test_the_daemon_on_mqtt(tmp_path: Path) -> None:
    maker = CallMaker()
    server = BenchServer()
    ami = await server.start()
    try:
        async with (
            broker(tmp_path) as b,
            Recorder(b) as rec,
            simulator.running("sim800") as sim,
        ):
            db = tmp_path / "textback.db"
            cfg = write_config(
                tmp_path / "textback.toml",
                ami=ami,
                device=sim.device,
                db=db,
                mqtt=mqtt_section(b.url),
            )
            async with running_daemon(cfg, tmp_path) as d:
                await asyncio.wait_for(server.up.wait(), 30)
                await rec.wait(lambda: rec.on(f"{BASE}/state"), 30, "state")
                assert rec.on(f"{BASE}/status")[-1].payload == b"online"
                await rec.wait(lambda: rec.on(DISCOVERY), 10, "discovery")
                await d.wait_log("event=modem_ready", 30)

                # a missed call: its event (with the linkedid) and its text's
                await place(server, maker, 0)
                await rec.wait(lambda: rec.on(f"{BASE}/event/text_sent"), 20, "text_sent")
                missed = rec.on(f"{BASE}/event/missed_call")[0].json()
                assert missed["linkedid"].startswith("2000000000.")
                assert missed["decision"] == "send"
                assert "caller" not in missed  # expose_caller is off
                assert rec.on(f"{BASE}/event/text_sent")[0].json()["linkedid"] == missed["linkedid"]
                assert len(sim.sent) == 1

                # paused by the CLI (another process): the next call is judged `disabled`
                # and not texted, and the state says so within the poll
                assert "paused" in cli(cfg, "pause", "--for", "2h")
                await place(server, maker, 1)
                await rec.wait(
                    lambda: len(rec.on(f"{BASE}/event/missed_call")) == 2, 20, "2nd call"
                )
                second = rec.on(f"{BASE}/event/missed_call")[1].json()
                assert (second["decision"], second["reason"]) == ("suppress", "disabled")
                await rec.wait(
                    lambda: rec.on(f"{BASE}/state")[-1].json()["enabled"] is False, 10, "off"
                )
                assert rec.on(f"{BASE}/state")[-1].json()["paused_until"] is not None

                # the switch: a bad payload is ignored with a line; ON resumes
                async with aiomqtt.Client("127.0.0.1", b.port) as ha:
                    await ha.publish(f"{BASE}/cmd/enabled", b"toggle please", qos=1)
                    await d.wait_log("event=mqtt_command_ignored", 10)
                    await ha.publish(f"{BASE}/cmd/enabled", b"ON", qos=1)
                await rec.wait(
                    lambda: rec.on(f"{BASE}/state")[-1].json()["enabled"] is True, 10, "on"
                )
                assert "not paused" in cli(cfg, "resume")
                await place(server, maker, 2)
                await rec.wait(lambda: len(sim.sent) == 2, 20, "3rd call texted")

                # the broker restarts: online, state and discovery are back within 5 s
                b.stop()
                await d.wait_log("event=mqtt_lost", 10)
                b.start()
                back = time.monotonic()
                await rec.wait(
                    lambda: (
                        rec.on(f"{BASE}/status", since=back)
                        and rec.on(f"{BASE}/state", since=back)
                        and rec.on(DISCOVERY, since=back)
                    ),
                    5,
                    "online, state and discovery after the restart",
                )
                assert rec.on(f"{BASE}/status", since=back)[-1].payload == b"online"

                # the broker down during a burst: every text still goes out, once; the
                # events wait and follow when it is back
                b.stop()
                await d.wait_log("event=mqtt_lost", 10, count=2)
                burst = range(3, 23)
                for i in burst:
                    await place(server, maker, i)
                # (checked at each daemon log line: no MQTT message comes meanwhile)
                await wait_until(d, lambda: len(sim.sent) == 2 + len(burst), 60)
                assert sim.duplicates == 0
                assert len({s.number for s in sim.sent}) == len(sim.sent)
                b.start()
                await rec.wait(
                    lambda: len(rec.on(f"{BASE}/event/missed_call")) >= 3 + len(burst),
                    15,
                    "the burst's events after the outage",
                )
                ids = [h.json()["event_id"] for h in rec.starting(f"{BASE}/event/")]
                assert len(ids) == len(set(ids))
                # the backlog went out IN_FLIGHT at a time, without aiomqtt's warning of
                # "pending publish calls" (past 10 by default: one journal line each)
                assert [ln for ln in d.lines if "pending publish calls" in ln] == []

                # kill -9: the broker says offline for it within 1.5 x keepalive
                await rec.wait(
                    lambda: rec.on(f"{BASE}/status")[-1].payload == b"online", 10, "online"
                )
                assert d.proc is not None
                killed = time.monotonic()
                d.proc.send_signal(signal.SIGKILL)
                await rec.wait(
                    lambda: (
                        rec.on(f"{BASE}/status", since=killed)
                        and rec.on(f"{BASE}/status", since=killed)[-1].payload == b"offline"
                    ),
                    3 * KEEPALIVE,
                    "the will",
                )
                took = rec.on(f"{BASE}/status", since=killed)[-1].at - killed
                # mosquitto checks keepalives in its loop: allow its 0.5 s granularity
                assert took <= 1.5 * KEEPALIVE + 0.5, took
    finally:
        await server.close()


async def test_wrong_password_does_not_touch_texting(tmp_path: Path) -> None:
    maker = CallMaker()
    server = BenchServer()
    ami = await server.start()
    try:
        async with (
            broker(tmp_path, users={"office": "right-password"}) as b,
            simulator.running("sim800") as sim,
        ):
            cfg = write_config(
                tmp_path / "textback.toml",
                ami=ami,
                device=sim.device,
                db=tmp_path / "textback.db",
                mqtt=mqtt_section(b.url, username="office", password="not-the-password"),
            )
            async with running_daemon(cfg, tmp_path) as d:
                await asyncio.wait_for(server.up.wait(), 30)
                await d.wait_log("event=mqtt_refused", 30)
                await d.wait_log("event=modem_ready", 30)
                await place(server, maker, 0)
                await place(server, maker, 1)
                await wait_until(d, lambda: len(sim.sent) == 2, 30)
                refused = [ln for ln in d.lines if "event=mqtt_refused" in ln]
                assert len(refused) == 1, refused  # one clear line; then backoff (60 s)
                assert "username and password" in refused[0]
                assert "not-the-password" not in "\n".join(d.lines)
    finally:
        await server.close()
