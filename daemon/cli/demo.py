"""`textback demo`: the real daemon, with no PBX and no modem.

A built-in AMI replay server streams calls recorded from a real Asterisk (the lab traces
in daemon/demo_data/), the built-in modem simulator stands in for the GSM modem on a real
pseudo-terminal, and the daemon runs as `textback run` does, on a temporary database.
At the end it prints the texts the simulator received, `textback history` and
`textback stats`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import time
from argparse import Namespace
from importlib import resources
from pathlib import Path

from daemon.app.service import Service
from daemon.cli import history, stats
from daemon.config import load_config
from daemon.intake.replayserver import ReplayServer, trace_body
from daemon.logsetup import setup_logging
from daemon.model import OPEN_STATES
from daemon.sdnotify import Notifier
from gsm import simulator

#: The wait step in the demo: long enough that the office's callback (trace 21) and the
#: repeat caller (trace 20) arrive during it, short enough to keep the demo quick.
DEMO_DELAY = "3s"
#: Give up waiting for the pipeline to settle after this long.
SETTLE_LIMIT = 45.0
TEMPLATE = "Hi {caller_name}, sorry we missed your call to {business_name}. We will call you back."
TEMPLATE_VOICEMAIL = (
    "Hi {caller_name}, thanks for your voicemail to {business_name}. We will call you back today."
)

_CONFIG = """\
# written by `textback demo`
[ami]
host = "127.0.0.1"
port = {port}
username = "demo"
secret = "demo-secret"

[calls]
ring_timeout = "5s"   # the lab traces were recorded with a 5 s ring timeout

[modem]
device = "{device}"

[textback]
delay = "{delay}"
business_name = "Main Street Dental"
caller_name_fallback = "there"
# Every lab caller is a fictional 555-01xx number: a real office never sees so many callers
# from one 1000-number block, so the SMS-pumping guard is widened for the demo.
pumping_max_per_range = 50
template = {template}
template_voicemail = {template_voicemail}

[hours]
timezone = "America/New_York"
mon = ["00:00-24:00"]
tue = ["00:00-24:00"]
wed = ["00:00-24:00"]
thu = ["00:00-24:00"]
fri = ["00:00-24:00"]
sat = ["00:00-24:00"]
sun = ["00:00-24:00"]

[[lines]]
did = "5551002"
business_name = "Main Street Dental sales"

[database]
path = "{db}"

[log]
level = "{level}"
"""


def demo_traces() -> list[tuple[str, bytes]]:
    """The recorded calls the demo replays, in name order."""
    root = resources.files("daemon") / "demo_data"
    return sorted((p.name, p.read_bytes()) for p in root.iterdir() if p.name.endswith(".ami"))


async def _settle(svc: Service, server: ReplayServer, deadline: float) -> None:
    """Wait until the stream is played, every call finished and every text handled."""
    await asyncio.wait_for(server.finished.wait(), max(1.0, deadline - time.monotonic()))
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if svc.tracker.active or svc.store is None:
            continue
        pending = await svc.store.messages(OPEN_STATES)
        if not pending and svc.pipeline is not None and not svc.pipeline.backlog:
            return


async def run_demo(workdir: Path, *, verbose: bool) -> tuple[int, list[simulator.SentSms], Path]:
    """Run the daemon against the replay server and the simulator; return what was sent."""
    traces = demo_traces()
    body = b"".join(trace_body(raw) for _, raw in traces)
    server = ReplayServer(body, username="demo", secret="demo-secret")
    port = await server.start()
    try:
        async with simulator.running("sim800") as sim:
            cfg_path = workdir / "textback.toml"
            cfg_path.write_text(
                _CONFIG.format(
                    port=port,
                    device=sim.device,
                    delay=DEMO_DELAY,
                    db=workdir / "textback.db",
                    level="info" if verbose else "warning",
                    template=json.dumps(TEMPLATE),
                    template_voicemail=json.dumps(TEMPLATE_VOICEMAIL),
                )
            )
            cfg = load_config(cfg_path)
            svc = Service(cfg, cfg_path, notifier=Notifier(""))
            task = asyncio.create_task(svc.run())
            try:
                await _settle(svc, server, time.monotonic() + SETTLE_LIMIT)
            finally:
                svc.request_stop()
                rc = await task
            return rc, list(sim.sent), cfg_path
    finally:
        await server.close()


def main(args: Namespace) -> int:
    """`textback demo [--json]`."""
    verbose = not args.json
    setup_logging("info" if verbose else "warning")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="textback-demo-") as tmp:
        workdir = Path(tmp)
        names = [name for name, _ in demo_traces()]
        if verbose:
            print(f"textback demo: replaying {len(names)} recorded Asterisk call traces")
            print("  " + ", ".join(n.removesuffix(".ami") for n in names))
            print("through the real daemon (AMI over loopback TCP, modem simulator on a pty)\n")
            sys.stdout.flush()
        rc, sent, cfg_path = asyncio.run(run_demo(workdir, verbose=verbose))
        if rc != 0:
            print(f"textback demo: the daemon exited with {rc}", file=sys.stderr)
            return 1
        if args.json:
            for sms in sent:
                print(json.dumps({"to": sms.number, "text": sms.text, "parts": sms.parts}))
            return 0
        logging.getLogger().setLevel(logging.WARNING)
        print(f"\n== texts the modem simulator sent: {len(sent)}")
        for sms in sent:
            print(
                f"  to {sms.number} ({sms.parts} part{'s' if sms.parts != 1 else ''}): {sms.text}"
            )
        print("\n== textback history (why each caller did or did not get a text)")
        sys.stdout.flush()
        history.main(
            Namespace(config=str(cfg_path), caller=None, since=None, limit=100, json=False)
        )
        print("\n== textback stats")
        sys.stdout.flush()
        stats.main(Namespace(config=str(cfg_path), json=False))
        print(f"\ndemo finished in {time.monotonic() - started:.1f} s")
    return 0
