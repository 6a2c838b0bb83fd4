"""`textback modem` and `textback send-test` against the simulator run as a process."""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.cli import main as cli_main
from daemon.cli import modem as modemcli
from daemon.cli import send_test
from gsm.errors import AtTimeout, DevicePermission, ModemGone, NoDevice, PinError


class SimProcess:
    """`python -m gsm.simulator` in a child process; reads its device path."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gsm.simulator", *args], stdout=subprocess.PIPE, bufsize=0
        )
        self._buf = b""
        self.device = self.line("device:")
        self.pty = self.line("pty:")

    def line(self, prefix: str, timeout: float = 10.0) -> str:
        """The rest of the next stdout line starting with `prefix` (fail after `timeout` s)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                raw, self._buf = self._buf.split(b"\n", 1)
                text = raw.decode().strip()
                if text.startswith(prefix):
                    return text[len(prefix) :].strip()
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"the simulator printed no line starting {prefix!r}"
            chunk = os.read(fd, 4096)
            assert chunk, "the simulator exited"
            self._buf += chunk

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    s = SimProcess("--profile", "sim800")
    yield s
    s.stop()


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {"config": None, "device": None, "number": None, "text": None}
    return argparse.Namespace(**{**base, **kw})


def test_simulator_process_prints_its_device(sim: SimProcess) -> None:
    assert Path(sim.device).is_symlink()
    assert Path(sim.device).resolve().as_posix() == sim.pty


def test_modem_probe_prints_identity(sim: SimProcess, capsys: pytest.CaptureFixture[str]) -> None:
    assert modemcli.main(_args(device=sim.device)) == 0
    out = capsys.readouterr().out
    assert "SIMCOM_SIM800L" in out
    assert "869170031234567" in out
    assert "registered (home)" in out
    assert "-71 dBm" in out
    # SIM800 cannot store delivery reports (no AT+CNMI ds=2): pushed, and the probe says so
    assert "reports:      direct (+CDS: lost while textback is down)" in out


def test_send_test_through_the_cli(sim: SimProcess, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["send-test", "+12025550123", "--device", sim.device, "--text", "Hi there"])
    assert rc == 0
    assert "message reference(s): 1" in capsys.readouterr().out
    assert sim.line("sent to") == "+12025550123 (1 part(s)): Hi there"


def test_send_test_renders_the_template_and_reads_a_config(
    sim: SimProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "textback.toml"
    cfg.write_text(f'[modem]\ndevice = "{sim.device}"\n\n[textback]\nbusiness_name = "Acme"\n')
    assert send_test.main(_args(config=str(cfg), number="(202) 555-0123")) == 0
    assert "sent to +12025550123" in capsys.readouterr().out
    assert "Acme" in sim.line("sent to")


@pytest.mark.parametrize("number", ["12", "+1202555012\r3", "hello", '+1"'])
def test_send_test_refuses_bad_numbers(number: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert send_test.main(_args(device="/nonexistent", number=number)) == 1
    err = capsys.readouterr().err
    assert err.startswith("textback: not a valid phone number")
    assert err.count("\n") == 1


def test_not_a_serial_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "notatty"
    plain.write_text("")
    assert modemcli.main(_args(device=str(plain))) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"textback: {plain} is not a serial port (a modem is /dev/ttyUSBn")
    assert err.count("\n") == 1


def test_no_such_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert modemcli.main(_args(device=str(tmp_path / "ttyUSB7"))) == 1
    err = capsys.readouterr().err
    assert "no such device" in err
    assert err.count("\n") == 1


def test_pin_required(capsys: pytest.CaptureFixture[str]) -> None:
    s = SimProcess("--profile", "huawei", "--pin", "1234")
    try:
        assert modemcli.main(_args(device=s.device)) == 1
    finally:
        s.stop()
    assert "SIM: the SIM asks for a PIN" in capsys.readouterr().err


def test_modem_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(modemcli, "STARTUP_TIMEOUT", 0.5)
    s = SimProcess("--mute")
    try:
        started = time.monotonic()
        assert modemcli.main(_args(device=s.device)) == 1
        assert time.monotonic() - started < 5
    finally:
        s.stop()
    assert "does not answer AT" in capsys.readouterr().err


def test_explanations_are_one_clear_line() -> None:
    dev = "/dev/ttyUSB0"
    assert "dialout" in modemcli.explain(DevicePermission(dev), dev)
    assert "plugged in" in modemcli.explain(NoDevice(dev), dev)
    assert "does not answer AT" in modemcli.explain(AtTimeout("AT", 10), dev)
    assert modemcli.explain(PinError("wrong PIN"), dev).startswith("SIM:")
    busy = ModemGone(f"{dev}: cannot open: Could not exclusively lock port {dev}")
    assert "ModemManager" in modemcli.explain(busy, dev)
    for exc in (DevicePermission(dev), NoDevice(dev), AtTimeout("AT", 1), PinError("x")):
        assert "\n" not in modemcli.explain(exc, dev)
