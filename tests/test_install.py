"""install.sh and uninstall.sh into temporary trees (--root): the files, their modes, the
venv from the hash-checked lock, idempotence (a second run changes nothing and says so),
--dry-run changing nothing, uninstall keeping data and --purge removing it; shellcheck.

One venv build (about 25 s) serves the whole sequence, so it is one test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEVICE = "/dev/serial/by-id/usb-Quectel_EC25_0123-if02-port0"
MAINTAINER_SCRIPTS = {"preinst", "postinst", "prerm", "postrm"}


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(REPO / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with its type, mode, mtime and content hash (files)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in [*dirnames, *filenames]:
            p = Path(dirpath, name)
            st = p.lstat()
            what = f"{st.st_mode:o} {st.st_mtime_ns}"
            if p.is_symlink():
                what += " -> " + os.readlink(p)
            elif p.is_file():
                what += " " + hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = what
    return out


@pytest.mark.timeout(300)  # one venv build from the lock: about 30 s
def test_install_twice_dry_run_uninstall_purge(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()

    # --dry-run into an empty tree: says what it would do, writes nothing
    dry = sh("install.sh", "--root", str(root), "--dry-run", "--device", DEVICE)
    assert "would create the venv /opt/textback" in dry.stdout
    assert "would write /etc/textback/textback.toml (mode 0640 root:textback)" in dry.stdout
    assert list(root.iterdir()) == []

    first = sh("install.sh", "--root", str(root), "--device", DEVICE)
    out = first.stdout
    assert "installed requirements.lock (every file checked against its sha256)" in out
    assert "not in --root mode, would run: systemd-sysusers" in out
    assert "not in --root mode, would run: udevadm control --reload" in out
    assert "Then run: /opt/textback/bin/textback check --live" in out

    venv = root / "opt/textback"
    # the scripts run as /opt/textback, not from the tree they were built in
    assert (venv / "bin/textback").read_text().splitlines()[0] == "#!/opt/textback/bin/python"
    cfg = root / "etc/textback/textback.toml"
    assert cfg.stat().st_mode & 0o777 == 0o640
    assert 'device = "/dev/textback-modem"' in cfg.read_text()
    unit = root / "etc/systemd/system/textback.service"
    assert unit.read_text() == (REPO / "systemd/textback.service").read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/textback.service"
    assert os.readlink(wants) == "/etc/systemd/system/textback.service"
    assert (root / "etc/sysusers.d/textback.conf").read_text() == (
        REPO / "systemd/textback.sysusers"
    ).read_text()
    rule = (root / "etc/udev/rules.d/70-textback-modem.rules").read_text()
    assert 'ENV{ID_SERIAL}=="Quectel_EC25_0123", ENV{ID_MM_DEVICE_IGNORE}="1"' in rule
    assert 'ENV{ID_USB_INTERFACE_NUM}=="02", SYMLINK+="textback-modem"' in rule
    # the installed program works: plain check of the config it wrote
    check = subprocess.run(
        [str(venv / "bin/python"), "-m", "daemon.cli", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,  # not the checkout: the venv's own copy is imported
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "textback check:" in check.stdout
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import daemon; print(daemon.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(venv))

    # a second run changes nothing and says so
    before = snapshot(root)
    second = sh("install.sh", "--root", str(root), "--device", DEVICE)
    assert "Nothing changed: textback" in second.stdout
    assert "  installed" not in second.stdout
    assert snapshot(root) == before
    # and so does a dry run over the installed tree
    again = sh("install.sh", "--root", str(root), "--device", DEVICE, "--dry-run")
    assert "Nothing changed" in again.stdout
    assert snapshot(root) == before

    # uninstall keeps the database and the config
    db = root / "var/lib/textback/textback.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"SQLite format 3\0")
    dry = sh("uninstall.sh", "--root", str(root), "--dry-run")
    assert "would remove /opt/textback" in dry.stdout
    assert snapshot(root)["opt/textback"] == before["opt/textback"]
    removed = sh("uninstall.sh", "--root", str(root))
    assert "removed /opt/textback" in removed.stdout
    assert "kept /var/lib/textback (--purge removes it)" in removed.stdout
    assert not venv.exists()
    assert not unit.exists()
    assert not wants.is_symlink()
    assert not (root / "etc/udev/rules.d/70-textback-modem.rules").exists()
    assert db.read_bytes() == b"SQLite format 3\0"
    assert cfg.exists()

    purged = sh("uninstall.sh", "--root", str(root), "--purge")
    assert "removed /var/lib/textback" in purged.stdout
    assert not db.exists()
    assert not cfg.exists()
    assert not (root / "etc/sysusers.d/textback.conf").exists()
    assert "Nothing to remove" in sh("uninstall.sh", "--root", str(root), "--purge").stdout


def test_scripts_pass_shellcheck() -> None:
    """shellcheck is installed by .ci/run; a machine without it fails here (not a skip)."""
    exe = shutil.which("shellcheck")
    assert exe is not None, "apt-get install shellcheck (.ci/run does)"
    scripts = [REPO / "install.sh", REPO / "uninstall.sh", *sorted(REPO.glob("packaging/**/*.sh"))]
    scripts += [p for p in sorted(REPO.glob("packaging/deb/*")) if p.name in MAINTAINER_SCRIPTS]
    done = subprocess.run(
        [exe, *map(str, scripts)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout


def test_lock_pins_every_dependency_with_hashes() -> None:
    """A dependency added to pyproject.toml without `make lock` would break install.sh."""
    import re
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lock = (REPO / "requirements.lock").read_text()
    pinned = {
        m.group(1).lower().replace("_", "-"): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", lock, re.M)
    }
    for dep in deps:
        name = re.split(r"[<>=;! \[]", dep, maxsplit=1)[0].lower().replace("_", "-")
        if "platform_system == 'Windows'" in dep:
            continue
        assert name in pinned, f"{name} is not in requirements.lock: run make lock"
    assert "setuptools" in pinned  # textback itself is built without build isolation
    blocks = re.split(r"^(?=[A-Za-z])", lock, flags=re.M)
    for block in blocks:
        if "==" in block:
            assert "--hash=sha256:" in block, block.splitlines()[0]
