"""systemd/: the unit passes `systemd-analyze verify`, keeps its hardening, matches the config.

These tests need systemd's tools; they fail (not skip) without them, since CI installs
systemd (.ci/run). Here: `apt-get install -y systemd`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import DEFAULT_CONFIG_PATH, Config

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "textback.service"
SYSUSERS = ROOT / "systemd" / "textback.sysusers"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install systemd (apt-get install -y systemd); CI does")
    return path


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every directive, duplicates kept (systemd allows them)."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def service(key: str) -> list[str]:
    return [v for s, k, v in directives(UNIT.read_text()) if s == "Service" and k == key]


def verify(tmp_path: Path, text: str, name: str = "textback.service") -> tuple[int, str]:
    """Run systemd-analyze verify on a copy whose ExecStart binary exists on this machine."""
    prog = "/opt/textback/bin/textback"
    assert prog in text
    # verify insists the ExecStart binary exists; the venv under /opt is not here.
    text = text.replace(prog, sys.executable)
    if not Path("/bin/kill").exists():  # a minimal container without procps
        text = text.replace("/bin/kill", tool("true"))
    path = tmp_path / name
    path.write_text(text)
    proc = subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Other units of the machine may draw remarks; only lines about ours count.
    ours = [ln for ln in (proc.stdout + proc.stderr).splitlines() if name in ln]
    return proc.returncode, "\n".join(ours)


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    rc, remarks = verify(tmp_path, UNIT.read_text())
    assert rc == 0
    assert remarks == ""


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict")
    _, remarks = verify(tmp_path, broken)
    assert "Unknown key 'ProtectSytem'" in remarks


def test_unit_runs_the_daemon_as_notify_service_with_watchdog() -> None:
    assert service("Type") == ["notify"]
    assert service("NotifyAccess") == ["main"]
    assert service("WatchdogSec") == ["30"]
    assert service("Restart") == ["on-failure"]
    assert service("TimeoutStopSec") == ["15"]
    assert service("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    [exec_start] = service("ExecStart")
    assert exec_start == f"/opt/textback/bin/textback run --config {DEFAULT_CONFIG_PATH}"


def test_unit_user_groups_and_directories_match_the_config() -> None:
    assert service("User") == ["textback"]
    assert service("Group") == ["textback"]
    assert service("SupplementaryGroups") == ["dialout"]
    assert service("StateDirectory") == ["textback"]
    assert service("ConfigurationDirectory") == ["textback"]
    # The default database lives in the StateDirectory, the only writable place.
    assert Config().database.path.startswith("/var/lib/textback/")
    assert DEFAULT_CONFIG_PATH.parent == Path("/etc/textback")


def test_unit_hardening() -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "DevicePolicy": "closed",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "UMask": "0027",
        "LogRateLimitIntervalSec": "0",
    }
    for key, value in expected.items():
        assert service(key) == [value], key
    assert service("DeviceAllow") == ["char-ttyUSB rw", "char-ttyACM rw"]
    assert service("SystemCallFilter")[0] == "@system-service"
    # PrivateDevices would hide the modem's tty.
    assert service("PrivateDevices") == []


def test_every_service_setting_is_explained() -> None:
    """Each group of [Service] lines carries a comment saying why (and when to loosen)."""
    block: list[str] = []
    section = ""
    unexplained = []
    for raw in [*UNIT.read_text().splitlines(), ""]:
        line = raw.strip()
        if line.startswith("["):
            section = line
        if line:
            block.append(line)
            continue
        has_comment = any(b.startswith("#") for b in block)
        settings = [b for b in block if not b.startswith(("#", "["))]
        if section == "[Service]" and settings and not has_comment:
            unexplained += settings
        block = []
    assert unexplained == []


def test_sysusers_creates_the_user_in_dialout(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group"):
        (tmp_path / "etc" / name).write_text("")
    proc = subprocess.run(
        [tool("systemd-sysusers"), "--dry-run", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Creating user 'textback'" in out
    assert str(SYSUSERS) not in out  # no complaint about a line of ours
    rules = [line.split() for line in SYSUSERS.read_text().splitlines() if line[:1] not in "#"]
    assert ["m", "textback", "dialout"] in rules
