"""`textback check --live` (daemon.livecheck) against a live fake Asterisk (the replay
server on loopback) and the modem simulator (a real pty), with each broken setup made for
real: a wrong secret, a refused Getvar, no channelvars, a port held open by another
process, a service user without dialout (a fake /etc/group), a SIM needing a PIN or PUK.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from daemon import livecheck
from daemon.cli import check as cli_check
from daemon.cli import main as cli_main
from daemon.config import Config, load_config
from daemon.intake.replayserver import ReplayServer
from daemon.livecheck import (
    Finding,
    Host,
    Level,
    exten_matches,
    holders,
    read_manager_conf,
    run_live,
    secret_file_problems,
)
from gsm.simulator import Faults, running

TRACE = Path(__file__).parent / "data" / "ami" / "14-anonymous-missed.ami"
SECRET = "live-check-secret"
SVC_UID = 4242  # the service user's uid and gid when the tests run as root
DIALPLAN = {"from-trunk": ["5551000", "_1202555XXXX"], "internal": ["_1XX"]}


@dataclass
class Box:
    """A good box: a replay server, a simulator, a config and host paths."""

    server: ReplayServer
    device: str
    config: Path
    host: Host
    tmp: Path

    def cfg(self, extra: str = "") -> Config:
        if extra:
            self.config.write_text(self.config.read_text() + extra)
        return load_config(self.config)


def _etc(tmp: Path, *, dialout_members: str) -> tuple[Path, Path]:
    uid, gid = os.getuid(), os.getgid()
    me = SVC_UID if uid == 0 else uid  # the service user is never root
    passwd = tmp / "passwd"
    passwd.write_text(f"svc:x:{me}:{me}::/var/lib/textback:/usr/sbin/nologin\n")
    group = tmp / "group"
    group.write_text(f"svc:x:{me}:\ndialout:x:20:{dialout_members}\nroot:x:0:\nme:x:{gid}:\n")
    return passwd, group


def write_config(path: Path, port: int, device: str, db: Path, extra: str = "") -> None:
    path.write_text(
        f'[ami]\nport = {port}\nsecret = "{SECRET}"\n'
        + extra
        + f'\n[modem]\ndevice = "{device}"\n[database]\npath = "{db}"\n'
    )
    path.chmod(0o640)


@asynccontextmanager
async def box(
    tmp_path: Path,
    *,
    faults: Faults | None = None,
    ami: str = "",
    server_kw: dict[str, Any] | None = None,
) -> AsyncIterator[Box]:
    kw: dict[str, Any] = {"secret": SECRET, "dialplan": DIALPLAN, **(server_kw or {})}
    server = ReplayServer.from_trace(TRACE, **kw)
    port = await server.start()
    try:
        (tmp_path / "dev").mkdir()
        async with running("sim800", faults, directory=str(tmp_path / "dev")) as sim:
            (tmp_path / "db").mkdir()
            # the pty is the test user's: name it as the service user's group for the check
            passwd, group = _etc(tmp_path, dialout_members="svc")
            cfgp = tmp_path / "textback.toml"
            write_config(cfgp, port, sim.device, tmp_path / "db" / "textback.db", ami)
            if os.getuid() == 0:  # as install.sh leaves them: root:svc 0640, svc's folder
                os.chown(cfgp, 0, SVC_UID)
                os.chown(tmp_path / "db", SVC_UID, SVC_UID)
            host = Host(
                passwd=passwd,
                group=group,
                unit_paths=(tmp_path / "no-unit.service",),
                manager_conf=tmp_path / "no-manager.conf",
                service_user="svc",
                systemd=False,
                event_wait=2.0,
                ami_timeout=3.0,
                modem_startup=5.0,
            )
            b = Box(server, sim.device, cfgp, host, tmp_path)
            _pts_for(b)
            yield b
    finally:
        await server.close()


def _pts_for(box_: Box) -> None:
    """Make the simulator's pty look like a real modem's tty: group dialout (20), 0660;
    the service user then reaches it through dialout membership only."""
    real = os.path.realpath(box_.device)
    if os.getuid() == 0:
        os.chown(real, 0, 20)
    os.chmod(real, 0o660)


def by_where(findings: list[Finding], where: str) -> list[Finding]:
    return [f for f in findings if f.where == where]


def errors(findings: list[Finding]) -> list[str]:
    return [f.line() for f in findings if f.level is Level.ERROR]


async def test_good_box_is_green(tmp_path: Path) -> None:
    async with box(tmp_path) as b:
        found = await run_live(b.cfg(), b.config, b.host)
    assert errors(found) == []
    lines = "\n".join(f.line() for f in found)
    assert "ok      ami: logged in to 127.0.0.1:" in lines
    assert "ok      ami.getvar: Getvar allowed" in lines
    for cls in ("system", "call", "dialplan", "agent"):
        assert f"ok      ami.read: {cls} events arrive" in lines
    assert "ok      ami.channelvars: CALLERID(pres) rides on every event" in lines
    assert "ok      ami.timestampevents" in lines
    assert "ok      ami.inbound_contexts: in the dialplan: from-trunk" in lines
    assert "ok      modem.device: readable and writable by svc" in lines
    assert "ok      sim:" in lines
    assert "ok      network:" in lines
    assert "ok      smsc:" in lines
    assert "ok      database.path:" in lines
    # no finding line ever carries the secret
    assert SECRET not in lines


async def test_wrong_secret_is_named(tmp_path: Path) -> None:
    async with box(tmp_path, server_kw={"secret": "the-real-one"}) as b:
        mc = tmp_path / "manager.conf"
        mc.write_text("[general]\nenabled = yes\n\n[textback]\nsecret = the-real-one\n")
        found = await run_live(b.cfg(), b.config, replace(b.host, manager_conf=mc))
    (f,) = by_where(found, "ami.secret")
    assert f.level is Level.ERROR
    assert "refused the login of 'textback'" in f.problem
    assert "[ami] secret differs from the secret of [textback] in manager.conf" in f.problem
    assert "set [ami] secret to the secret of [textback]" in f.fix
    assert "the-real-one" not in f.line()
    assert SECRET not in f.line()
    assert b.server.stats.failed_logins == 1


async def test_refused_getvar_and_no_channelvars(tmp_path: Path) -> None:
    kw = {"refuse": {"getvar"}, "channelvars": False}
    async with box(tmp_path, server_kw=kw) as b:
        found = await run_live(b.cfg(), b.config, b.host)
    (g,) = by_where(found, "ami.getvar")
    assert g.level is Level.ERROR
    assert "Permission denied" in g.problem
    assert '"write = reporting" under [textback]' in g.fix
    (c,) = by_where(found, "ami.channelvars")
    # neither channelvars nor Getvar: withheld callers look like anyone (texted: fail open)
    assert c.level is Level.ERROR
    assert "not set" in c.problem
    assert "unknown_presentation = text" in c.problem
    assert "channelvars = CALLERID(pres)" in c.fix
    assert "under [general]" in c.fix


async def test_no_channelvars_with_getvar_is_a_warning(tmp_path: Path) -> None:
    async with box(tmp_path, server_kw={"channelvars": False, "timestamps": False}) as b:
        found = await run_live(b.cfg(), b.config, b.host)
    (c,) = by_where(found, "ami.channelvars")
    assert c.level is Level.WARNING
    assert "Getvar instead" in c.problem
    (t,) = by_where(found, "ami.timestampevents")
    assert t.level is Level.WARNING
    assert "timestampevents = yes" in t.fix


async def test_missing_read_class_and_redirect_refused(tmp_path: Path) -> None:
    kw = {"read": {"system", "call"}, "refuse": {"redirect"}}
    ami = 'inbound_contexts = ["from-trunk", "from-pstm"]\ninbound_dids = ["+12025550100"]\n'
    async with box(tmp_path, server_kw=kw, ami=ami) as b:
        b.cfg('[calls]\nenforce_ring_timeout = true\nvoicemail_target = "vm,100,1"\n')
        mc = tmp_path / "manager.conf"
        mc.write_text(
            "[general]\ntimestampevents = yes\n#include manager_custom.conf\n"
            f"[textback]\nsecret = {SECRET}\nread = system,call\n"
        )
        (tmp_path / "manager_custom.conf").write_text("[textback](+)\nwrite = reporting\n")
        host = replace(b.host, manager_conf=mc, event_wait=0.5)
        found = await run_live(b.cfg(), b.config, host)
    reads = {f.problem.split()[0]: f for f in by_where(found, "ami.read")}
    assert reads["system"].level is Level.OK
    bad = [f for f in by_where(found, "ami.read") if f.level is Level.ERROR]
    assert sorted(f.problem.split("read class ")[1].split()[0] for f in bad) == [
        "agent",
        "dialplan",
    ]
    assert all("read = system,call,dialplan,agent" in f.fix for f in bad)
    (r,) = by_where(found, "calls.enforce_ring_timeout")
    assert r.level is Level.ERROR
    assert "write = reporting,call" in r.fix
    ctx = by_where(found, "ami.inbound_contexts")
    assert any("'from-pstm' is not a context" in f.problem for f in ctx)
    assert any('"from-trunk"' in f.fix for f in ctx if f.level is Level.WARNING)
    (d,) = by_where(found, "ami.inbound_dids")
    assert d.level is Level.OK
    assert "_1202555XXXX" in d.problem


async def test_default_contexts_absent_is_an_error(tmp_path: Path) -> None:
    kw = {"dialplan": {"incoming-sip": ["s"]}}
    async with box(tmp_path, server_kw=kw) as b:
        b.server.dialplan = {"incoming-sip": ["s"]}
        found = await run_live(b.cfg(), b.config, b.host)
    (c,) = by_where(found, "ami.inbound_contexts")
    assert c.level is Level.ERROR
    assert '"incoming-sip"' in c.fix


async def test_ami_unreachable(tmp_path: Path) -> None:
    async with box(tmp_path) as b:
        cfg = b.cfg()
        port = b.server.port
    # the server is closed now: nothing listens on its port
    cfg = cfg.model_copy(update={"ami": cfg.ami.model_copy(update={"port": port})})
    found = await run_live(cfg, None, replace(b.host, modem_startup=0.5))
    (f,) = by_where(found, "ami.host")
    assert f.level is Level.ERROR
    assert f"cannot reach AMI at 127.0.0.1:{port}" in f.problem


@contextmanager
def held_open(device: str) -> Iterator[int]:
    """Another process holding the port open, as a terminal program would."""
    code = (
        "import sys; f = open(sys.argv[1], 'rb+', buffering=0); print('open', flush=True);"
        " sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, device],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "open"
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


async def test_port_held_by_another_process_is_named(tmp_path: Path) -> None:
    async with box(tmp_path) as b:
        # the simulator itself (this process) holds the pty's master: never reported
        assert holders(b.device) == []
        with held_open(b.device) as pid:
            found = await run_live(b.cfg(), b.config, b.host)
            assert [h.pid for h in holders(b.device)] == [pid]
        # after it let go, nothing holds it
        assert holders(b.device) == []
    held = [f for f in by_where(found, "modem.device") if "held open" in f.problem]
    assert len(held) == 1
    assert f"(pid {pid})" in held[0].problem
    assert held[0].level is Level.ERROR
    assert f"kill {pid}" in held[0].fix
    # the modem was not opened over the other program
    assert by_where(found, "sim") == []


async def test_service_user_without_dialout(tmp_path: Path) -> None:
    # Never skipped: without root the pty cannot be given to dialout and the check would
    # prove nothing, so the test says so and fails (CI runs as root).
    assert os.getuid() == 0, "run as root: the pty must be chowned to the dialout group"
    async with box(tmp_path) as b:
        _, group = _etc(tmp_path, dialout_members="someone-else")
        found = await run_live(b.cfg(), b.config, replace(b.host, group=group))
    bad = [f for f in by_where(found, "modem.device") if f.level is Level.ERROR]
    assert len(bad) == 1
    assert "user svc is not in group dialout" in bad[0].problem
    assert bad[0].fix.startswith("usermod -aG dialout svc")


async def test_sim_needing_a_pin(tmp_path: Path) -> None:
    async with box(tmp_path, faults=Faults(pin="1234")) as b:
        found = await run_live(b.cfg(), b.config, b.host)
        (f,) = by_where(found, "sim")
        assert f.level is Level.ERROR
        assert "asks for a PIN and [modem] has none" in f.problem
        assert f.fix.startswith('pin = "<the SIM')
        # with the PIN in the config the SIM is ready
        text = b.config.read_text().replace("[modem]\n", '[modem]\npin = "1234"\n')
        b.config.write_text(text)
        found = await run_live(load_config(b.config), b.config, b.host)
    (f,) = by_where(found, "sim")
    assert f.level is Level.OK


async def test_sim_puk_locked(tmp_path: Path) -> None:
    async with box(tmp_path, faults=Faults(puk_locked=True)) as b:
        found = await run_live(b.cfg(), b.config, b.host)
    (f,) = by_where(found, "sim")
    assert f.level is Level.ERROR
    assert "PUK-locked" in f.problem
    assert "PUK" in f.fix


async def test_broken_by_id_link_and_not_a_serial_port(tmp_path: Path) -> None:
    async with box(tmp_path) as b:
        gone = tmp_path / "usb-Gone_Modem-if00-port0"
        gone.symlink_to("/dev/ttyUSB97")
        plain = tmp_path / "plain-file"
        plain.write_text("")
        text = b.config.read_text()
        cfg = load_config(b.config)
        b.config.write_text(
            text.replace("[modem]\n", "")
            .replace(f'device = "{b.device}"\n', "")
            .replace("[database]", "[database]")
            + f'[[modems]]\nname = "a"\ndevice = "{gone}"\n'
            + f'[[modems]]\nname = "b"\ndevice = "{plain}"\n'
        )
        cfg = load_config(b.config)
        found = await run_live(cfg, b.config, replace(b.host, event_wait=0.2))
    (a,) = by_where(found, "modems[0].device")
    assert a.level is Level.ERROR
    assert "points to /dev/ttyUSB97, which is gone" in a.problem
    (p,) = by_where(found, "modems[1].device")
    assert p.level is Level.ERROR
    assert "not a serial port" in p.problem


def test_secret_file_mode_warns_in_plain_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfgp = tmp_path / "t.toml"
    write_config(cfgp, 5038, "/dev/ttyUSB0", tmp_path / "db.sqlite")
    assert secret_file_problems(cfgp, load_config(cfgp)) == []
    cfgp.chmod(0o644)
    (p,) = secret_file_problems(cfgp, load_config(cfgp))
    assert "holds ami.secret but its mode is 0644: every user can read it" in p.message
    assert p.hint == f"chmod 0640 {cfgp} && chown root:textback {cfgp}"
    cli_main(["check", "--config", str(cfgp)])
    out = capsys.readouterr().out
    assert "WARNING (file):" in out
    assert "mode is 0644" in out
    assert SECRET not in out
    # no secret in the file: any mode is fine
    cfgp.write_text(cfgp.read_text().replace(f'secret = "{SECRET}"', ""))
    assert secret_file_problems(cfgp, load_config(cfgp)) == []


def test_cli_live_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command line: --live runs the live checks; an unreachable PBX and a missing
    modem are errors: exit 1, one line each."""
    # The host as on a fresh machine, whatever this one has: a `textback` user left by an
    # install (CI's package check makes one) would add its own findings about tmp_path.
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tmp_path / "group").write_text("root:x:0:\ndialout:x:20:\n")
    fresh = Host(passwd=tmp_path / "passwd", group=tmp_path / "group", unit_paths=())
    real = livecheck.run_live

    async def run_live(cfg: Config, path: Path | None, host: Host | None = None) -> Any:
        return await real(cfg, path, host or fresh)

    monkeypatch.setattr(cli_check, "run_live", run_live)
    cfgp = tmp_path / "t.toml"
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        write_config(cfgp, port, str(tmp_path / "nothing"), tmp_path / "db.sqlite")
        rc = cli_main(["check", "--config", str(cfgp), "--live"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "Live checks (AMI, modems, host):" in out
    assert f"ERROR   ami.host: cannot reach AMI at 127.0.0.1:{port}" in out
    assert "ERROR   modem.device:" in out
    assert "does not exist" in out
    assert out.rstrip().splitlines()[-1].startswith("NOT OK: 2 error(s)")


def test_manager_conf_and_patterns(tmp_path: Path) -> None:
    mc = tmp_path / "manager.conf"
    mc.write_text(
        "[general]\nchannelvars = CALLERID(pres) ; comment\n[textback]\nread = system\n"
        "read = call\n"
    )
    conf = read_manager_conf(mc)
    assert conf is not None
    assert conf.general["channelvars"] == "CALLERID(pres)"
    assert conf.users["textback"]["read"] == "system,call"
    assert read_manager_conf(tmp_path / "absent.conf") is None
    assert exten_matches("_1202555XXXX", "12025550100")
    assert not exten_matches("_1202555XXXX", "1202555010")
    assert exten_matches("_NXXNXXXXXX", "2025550100")
    assert exten_matches("_[2-9]!", "2")
    assert exten_matches("_X.", "5551000")
    assert not exten_matches("_X.", "5")
    assert exten_matches("5551000", "5551000")
    assert not exten_matches("5551000", "555")
