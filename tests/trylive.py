"""`make try-live`: `textback check --live` against a live fake Asterisk (the replay
server on loopback, serving a recorded call with every read class, channelvars and
timestamps, and a dialplan with the trunk's context) and the modem simulator on a real pty.
The CI runs it from a fresh clone and prints how long clone -> green took.

Exit code: check --live's (0: green).
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
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


def as_installed(tmp: Path, cfg: Path, device: str) -> None:
    """What install.sh gives the service user, when this machine has one (an install, or
    CI's package check, made it) and this runs as root: check --live then judges these
    files as it would an installed daemon's, instead of finding them closed to it."""
    try:
        user = pwd.getpwnam("textback")
        dialout = grp.getgrnam("dialout").gr_gid
    except KeyError:
        return  # no service user: check --live judges for this process's own user
    if os.geteuid() != 0:
        return
    tmp.chmod(0o755)
    os.chown(cfg, 0, user.pw_gid)  # root:textback 0640
    os.chown(tmp / "db", user.pw_uid, user.pw_gid)
    (tmp / "db").chmod(0o750)
    pty = os.path.realpath(device)
    os.chown(pty, -1, dialout)  # as the udev rule install.sh writes: dialout, 0660
    os.chmod(pty, 0o660)


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="textback-try-") as tmp:
        server = ReplayServer.from_trace(TRACE, secret=SECRET, dialplan={"from-trunk": ["5551000"]})
        port = await server.start()
        try:
            async with running("quectel", directory=tmp) as sim:
                cfg = write_config(Path(tmp), port, sim.device)
                as_installed(Path(tmp), cfg, sim.device)
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
