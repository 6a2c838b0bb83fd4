"""`make try-live`: `textback check --live` against a live fake Asterisk (the replay
server on loopback, serving a recorded call with every read class, channelvars and
timestamps, and a dialplan with the trunk's context) and the modem simulator on a real pty.
The CI runs it from a fresh clone and prints how long clone -> green took.

Exit code: check --live's (0: green).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from daemon.intake.replayserver import ReplayServer
from gsm.simulator import running

TRACE = Path(__file__).parent / "data" / "ami" / "14-anonymous-missed.ami"
SECRET = "try-live-secret"  # a throwaway for the fake Asterisk on loopback


def write_config(tmp: Path, port: int, device: str) -> Path:
    """A config as install.sh leaves it (0640), for the fake PBX and the simulator."""
    cfg = tmp / "textback.toml"
    cfg.write_text(
        f'[ami]\nport = {port}\nsecret = "{SECRET}"\n'
        f'[modem]\ndevice = "{device}"\n'
        '[textback]\nbusiness_name = "Main Street Dental"\n'
        f'[database]\npath = "{tmp}/db/textback.db"\n'
    )
    cfg.chmod(0o640)
    (tmp / "db").mkdir()
    return cfg


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="textback-try-") as tmp:
        server = ReplayServer.from_trace(TRACE, secret=SECRET, dialplan={"from-trunk": ["5551000"]})
        port = await server.start()
        try:
            async with running("quectel", directory=tmp) as sim:
                cfg = write_config(Path(tmp), port, sim.device)
                cmd = [sys.executable, "-m", "daemon.cli", "check", "--live", "--config", str(cfg)]
                proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE)
                out, _ = await proc.communicate()
                text = out.decode()
                print(text[text.find("Live checks") :], end="")
                return proc.returncode or 0
        finally:
            await server.close()


if __name__ == "__main__":
    os.environ.pop("TEXTBACK_AMI__SECRET", None)
    sys.exit(asyncio.run(main()))
