"""`textback check --live`: the config against the real machine, PBX and modem.

Plain `check` (daemon.check) reads only the config. This logs in to AMI, proves each
permission the config needs, looks at the modem as the service would open it, and looks
at the host (service user, database folder, clock, unit, journal). Every finding is one
line: the key or component, the problem, and the exact command or config line that
fixes it (`Finding.line`). Any ERROR makes `check --live` exit 1.

Facts about the host are read from the paths in `Host`, so tests can point them at a
fake /etc/group or name another service user; the checks themselves are the real ones.

Also here, because plain `check` prints it too: a config file that holds a secret but is
readable by other users (`secret_file_problems`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import enum
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from daemon.check import Problem, Severity
from daemon.config import Config, PoolModemConfig
from daemon.intake.frames import FrameParser, Message

#: Where the unit may be installed, first match wins (admin's copy, then a package's).
UNIT_PATHS = (
    Path("/etc/systemd/system/textback.service"),
    Path("/usr/lib/systemd/system/textback.service"),
    Path("/lib/systemd/system/textback.service"),
)
#: The service user when no unit says otherwise (systemd/textback.sysusers).
DEFAULT_SERVICE_USER = "textback"
#: The read classes textback needs, and what each brings (README "Asterisk: the manager user").
READ_CLASSES = {
    "system": "FullyBooted/Shutdown: a PBX restart is noticed",
    "call": "Newchannel, Dial*, Hangup, Bridge*: who rang and who answered",
    "dialplan": "Newexten and VarSet: voicemail reached and left",
    "agent": "Queue* and AgentConnect: queue outcomes",
}
#: The manager.conf line that grants them all.
READ_LINE = "read = system,call,dialplan,agent"
#: Asterisk's clock and ours may differ this much before ring times suffer (seconds).
CLOCK_SKEW_MAX = 2.0
#: A clock before this is unset (a Raspberry Pi without RTC before NTP answers).
SANE_YEAR = 2025
#: Weaker than this (dBm) a text may fail to go out.
WEAK_SIGNAL_DBM = -105
_VOLATILE_PORT = re.compile(r"^/dev/tty(USB|ACM|S|AMA)\d+$")
_TERMINALS = frozenset({"minicom", "screen", "picocom", "cu", "tio", "microcom", "socat", "cat"})


class Level(enum.StrEnum):
    """How a finding reads: ok and note are fine; a warning works but should be fixed;
    an error means texts will be missed."""

    OK = "ok"
    NOTE = "note"
    WARNING = "WARNING"
    ERROR = "ERROR"


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of `check --live`: where, what, and the fix."""

    level: Level
    where: str  # a config key ("ami.secret", "modems[1].device") or a component ("unit")
    problem: str
    fix: str = ""

    def line(self) -> str:
        """The finding as printed: one line."""
        fix = f" -> fix: {self.fix}" if self.fix else ""
        return f"{self.level.value:<7} {self.where}: {self.problem}{fix}"


def _ok(where: str, what: str) -> Finding:
    return Finding(Level.OK, where, what)


def _note(where: str, what: str, fix: str = "") -> Finding:
    return Finding(Level.NOTE, where, what, fix)


def _warn(where: str, what: str, fix: str) -> Finding:
    return Finding(Level.WARNING, where, what, fix)


def _err(where: str, what: str, fix: str) -> Finding:
    return Finding(Level.ERROR, where, what, fix)


@dataclass(frozen=True, slots=True)
class Host:
    """Where host facts come from. The defaults are the real machine's; tests name a
    service user and point the files at temporary copies."""

    passwd: Path = Path("/etc/passwd")
    group: Path = Path("/etc/group")
    proc: Path = Path("/proc")
    unit_paths: tuple[Path, ...] = UNIT_PATHS
    manager_conf: Path = Path("/etc/asterisk/manager.conf")
    by_id: Path = Path("/dev/serial/by-id")
    service_user: str | None = None
    """None: the installed unit's User=, else "textback"."""
    systemd: bool | None = None
    """None: look (/run/systemd/system exists when systemd is PID 1)."""
    journal_socket: Path = Path("/run/systemd/journal/socket")
    ami_timeout: float = 5.0
    """Connect and per-action timeout."""
    event_wait: float = 5.0
    """Longest time to listen for AMI events when they are still needed to decide."""
    modem_startup: float = 15.0


# --- the service user ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    """Who the service runs as, and the groups it has (for access checks)."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]
    exists: bool
    group_names: dict[int, str] = field(default_factory=dict)
    wanted: str = ""
    """The service user asked for, when it does not exist (`name` is then this user)."""

    def can(self, st: os.stat_result, want: int) -> bool:
        """Would this user get `want` (os.R_OK | os.W_OK | os.X_OK) on a file with `st`?
        Plain mode bits, as the kernel checks them (ACLs not read)."""
        if self.uid == 0:
            return True
        mode = st.st_mode
        if st.st_uid == self.uid:
            bits = (mode >> 6) & 7
        elif st.st_gid in self.groups:
            bits = (mode >> 3) & 7
        else:
            bits = mode & 7
        return bits & want == want

    def group_name(self, gid: int) -> str:
        """A group's name from the group file, else its number."""
        return self.group_names.get(gid, str(gid))


def _read_colon_file(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


@dataclass(frozen=True, slots=True)
class Unit:
    """What the installed unit says (empty when none is installed)."""

    path: Path | None
    user: str | None
    supplementary: tuple[str, ...]
    state_directory: str | None


def read_unit(host: Host) -> Unit:
    """The first installed textback.service: its User=, SupplementaryGroups= and
    StateDirectory=."""
    for p in host.unit_paths:
        try:
            text = p.read_text()
        except OSError:
            continue
        user, groups, state = None, [], None
        for raw in text.splitlines():
            key, sep, value = raw.strip().partition("=")
            if not sep or raw.lstrip().startswith(("#", ";")):
                continue
            if key == "User":
                user = value.strip()
            elif key == "SupplementaryGroups":
                groups += value.split()
            elif key == "StateDirectory":
                state = value.split()[0] if value.split() else None
        return Unit(p, user, tuple(groups), state)
    return Unit(None, None, (), None)


def resolve_account(host: Host, unit: Unit) -> Account:
    """The service user from host.passwd and host.group, with the unit's
    SupplementaryGroups= (systemd adds them at start); a user that does not exist comes
    back with `exists=False` and this process's own ids."""
    name = host.service_user or unit.user or DEFAULT_SERVICE_USER
    groups = _read_colon_file(host.group)
    names = {int(g[2]): g[0] for g in groups if len(g) >= 3 and g[2].isdigit()}
    for row in _read_colon_file(host.passwd):
        if len(row) >= 4 and row[0] == name and row[2].isdigit() and row[3].isdigit():
            uid, gid = int(row[2]), int(row[3])
            member = {
                int(g[2])
                for g in groups
                if len(g) >= 4 and g[2].isdigit() and name in g[3].split(",")
            }
            extra = {gid_ for gid_, n in names.items() if n in unit.supplementary}
            return Account(name, uid, gid, frozenset({gid, *member, *extra}), True, names)
    me = next(
        (r[0] for r in _read_colon_file(host.passwd) if len(r) > 2 and r[2] == str(os.getuid())),
        str(os.getuid()),
    )
    return Account(
        me, os.getuid(), os.getgid(), frozenset({os.getgid(), *os.getgroups()}), False, names, name
    )


def _account_findings(acct: Account, unit: Unit) -> list[Finding]:
    if not acct.exists:
        return [
            _warn(
                "service user",
                f"{acct.wanted!r} does not exist, so the checks below are for the user"
                f" running this ({acct.name})",
                "install -m 0644 systemd/textback.sysusers /etc/sysusers.d/textback.conf"
                " && systemd-sysusers (install.sh does it)",
            )
        ]
    where = f" (the User= of {unit.path})" if unit.path and unit.user else ""
    return [_ok("service user", f"{acct.name}{where}, uid {acct.uid}")]


# --- the config file ----------------------------------------------------------------------


def _secret_keys(cfg: Config) -> list[str]:
    keys = []
    if cfg.ami.secret:
        keys.append("ami.secret")
    if cfg.modem.pin:
        keys.append("modem.pin")
    keys += [f"modems[{i}].pin" for i, m in enumerate(cfg.modems) if m.pin]
    if cfg.smtp.password:
        keys.append("smtp.password")
    if cfg.mqtt.password:
        keys.append("mqtt.password")
    return keys


def secret_file_problems(
    path: Path, cfg: Config | None, *, service_group: str = DEFAULT_SERVICE_USER
) -> list[Problem]:
    """A config file holding a secret, readable by other users (mode wider than 0640):
    a warning with the chmod/chown line that fixes it. Plain `check` prints it too."""
    if cfg is None:
        return []
    keys = _secret_keys(cfg)
    try:
        st = path.stat()
    except OSError:
        return []
    if not keys or st.st_mode & 0o027 == 0:
        return []
    mode = stat.S_IMODE(st.st_mode)
    who = "every user" if st.st_mode & 0o004 else "more users than root and the service"
    return [
        Problem(
            "(file)",
            f"{path} holds {', '.join(keys)} but its mode is {mode:04o}: {who} can read it",
            f"chmod 0640 {path} && chown root:{service_group} {path}",
            Severity.WARNING,
        )
    ]


# --- the host -----------------------------------------------------------------------------


def _systemd_running(host: Host) -> bool:
    if host.systemd is not None:
        return host.systemd
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _run(argv: Sequence[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return done.returncode, (done.stdout or done.stderr).strip()


def check_database(cfg: Config, acct: Account, unit: Unit) -> list[Finding]:
    """The database folder (and file) writable by the service user."""
    db = Path(cfg.database.path)
    folder = db.parent
    by_systemd = unit.state_directory is not None and folder == Path(
        "/var/lib", unit.state_directory
    )
    fix_dir = f"install -d -o {acct.name} -g {acct.name} -m 0750 {folder}"
    if not folder.is_dir():
        if by_systemd:
            return [_ok("database.path", f"{folder} is made by systemd at the first start")]
        return [_err("database.path", f"folder {folder} does not exist", fix_dir)]
    st = folder.stat()
    if not acct.can(st, os.W_OK | os.X_OK):
        if by_systemd:  # StateDirectory= chowns it to User= at each start
            return [_ok("database.path", f"{folder} is given to {acct.name} by systemd at start")]
        return [
            _err(
                "database.path",
                f"folder {folder} is not writable by {acct.name} (the database, its WAL and"
                " backups are created there)",
                f"chown {acct.name}: {folder} && chmod 0750 {folder}",
            )
        ]
    if db.exists() and not acct.can(db.stat(), os.R_OK | os.W_OK):
        return [
            _err(
                "database.path",
                f"{db} is not readable and writable by {acct.name}",
                f"chown {acct.name}: {db}*",
            )
        ]
    return [_ok("database.path", f"{folder} is writable by {acct.name}")]


def check_clock(cfg: Config, host: Host, skew: float | None) -> list[Finding]:
    """The office time zone loads, the clock is set, and agrees with Asterisk's."""
    out: list[Finding] = []
    from daemon.decide.hours import office_zone  # noqa: PLC0415 (only here)

    try:
        office_zone(cfg.hours.timezone)
        out.append(_ok("hours.timezone", f"{cfg.hours.timezone} loads"))
    except ValueError as exc:
        out.append(_err("hours.timezone", str(exc), "apt-get install tzdata, or fix the name"))
    now = time.time()
    year = time.gmtime(now).tm_year
    if year < SANE_YEAR:
        out.append(
            _err(
                "clock",
                f"the clock says {year}: it is not set",
                "timedatectl set-ntp true (and wait for the first NTP answer)",
            )
        )
    elif skew is not None and abs(skew) > CLOCK_SKEW_MAX:
        out.append(
            _warn(
                "clock",
                f"Asterisk's clock differs from this machine's by {skew:+.1f}s"
                " (ring times, waits and history times shift)",
                "timedatectl set-ntp true on both machines",
            )
        )
    else:
        near = "" if skew is None else f", within {abs(skew):.1f}s of Asterisk's"
        utc = time.strftime("%Y-%m-%d %H:%M", time.gmtime(now))
        out.append(_ok("clock", f"set (UTC {utc}{near})"))
    if _systemd_running(host) and shutil.which("timedatectl"):
        rc, said = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
        if rc == 0 and said == "no":
            out.append(_warn("clock", "not synchronised by NTP", "timedatectl set-ntp true"))
    return out


def check_unit(host: Host, unit: Unit) -> list[Finding]:
    """The unit installed and enabled; journald reachable."""
    install = (
        "install -m 0644 systemd/textback.service /etc/systemd/system/ && systemctl"
        " daemon-reload && systemctl enable --now textback"
    )
    if not _systemd_running(host):
        where = f"installed at {unit.path}" if unit.path else "not installed"
        return [
            _note("unit", f"{where}; enabled: not checked (no systemd running here)"),
            _note("journal", "not checked (no systemd running here)"),
        ]
    out: list[Finding] = []
    rc, said = _run(["systemctl", "is-enabled", "textback.service"])
    if said in ("enabled", "enabled-runtime", "linked"):
        out.append(_ok("unit", f"textback.service is {said}"))
    elif unit.path is None or said in ("", "not-found") or rc == 4:
        out.append(_err("unit", "textback.service is not installed", install))
    else:
        out.append(_err("unit", f"textback.service is {said}", "systemctl enable --now textback"))
    if host.journal_socket.exists():
        out.append(_ok("journal", f"journald listens at {host.journal_socket}"))
    else:
        out.append(
            _warn(
                "journal",
                f"no journald socket at {host.journal_socket}: log lines may be lost",
                "systemctl start systemd-journald.socket",
            )
        )
    return out


# --- the modem ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Holder:
    """A process that has a device open."""

    pid: int
    name: str
    cmdline: str

    def describe(self) -> str:
        """ "ModemManager (pid 412)"."""
        return f"{self.name} (pid {self.pid})"

    def fix(self) -> str:
        """What stops it."""
        if self.name == "ModemManager":
            return "systemctl disable --now ModemManager (or install.sh's udev rule)"
        if "textback" in self.cmdline:
            return (
                f"another textback holds it: systemctl stop textback, or kill {self.pid};"
                " one textback per modem"
            )
        if self.name in _TERMINALS:
            return f"close that terminal program (kill {self.pid})"
        return f"stop it (kill {self.pid}) or point [modem] device at another port"


def _pty_index(path: str) -> int | None:
    m = re.fullmatch(r"/dev/pts/(\d+)", path)
    return int(m.group(1)) if m else None


def holders(device: str, proc: Path = Path("/proc")) -> list[Holder]:
    """Every other process with `device` open, by /proc/<pid>/fd. The process holding a
    pty's other end (its master, /dev/ptmx with that tty-index) is the device itself,
    not a user of it, and is left out. Without root only this user's processes show."""
    target = os.path.realpath(device)
    pty = _pty_index(target)
    me = os.getpid()
    out = []
    try:
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return []
    for pid in sorted(pids):
        if pid == me:
            continue
        fd_dir = proc / str(pid) / "fd"
        uses = False
        is_master = False
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if link == target:
                uses = True
            elif pty is not None and link in ("/dev/ptmx", "/dev/pts/ptmx"):
                with contextlib.suppress(OSError):
                    info = (proc / str(pid) / "fdinfo" / fd).read_text()
                    if re.search(rf"^tty-index:\s*{pty}$", info, re.M):
                        is_master = True
        if uses and not is_master:
            name, cmdline = "?", ""
            with contextlib.suppress(OSError):
                name = (proc / str(pid) / "comm").read_text().strip()
            with contextlib.suppress(OSError):
                raw = (proc / str(pid) / "cmdline").read_bytes()
                cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
            out.append(Holder(pid, name, cmdline))
    return out


def _by_id_link(real: str, host: Host) -> str | None:
    try:
        names = sorted(os.listdir(host.by_id))
    except OSError:
        return None
    for n in names:
        p = host.by_id / n
        if os.path.realpath(p) == real:
            return str(p)
    return None


def _device_key(cfg: Config, i: int) -> str:
    return f"modems[{i}].device" if cfg.modems else "modem.device"


def _section(cfg: Config, i: int) -> str:
    return f"[[modems]] {cfg.modems[i].name!r}" if cfg.modems else "[modem]"


def check_device(
    cfg: Config, i: int, device: str, acct: Account, host: Host
) -> tuple[list[Finding], bool]:
    """The device file: (findings, whether it is fit to open)."""
    key = _device_key(cfg, i)
    sect = _section(cfg, i)
    out: list[Finding] = []
    if not os.path.exists(device):
        if os.path.islink(device):
            return [
                _err(
                    key,
                    f"{device} points to {os.readlink(device)}, which is gone (the modem was"
                    " unplugged, or came back under another name)",
                    f'plug it in; ls -l {host.by_id}/ and set device = "<its link>" in {sect}',
                )
            ], False
        return [
            _err(
                key,
                f"{device} does not exist (modem unplugged, or the wrong name)",
                f'plug it in; ls -l {host.by_id}/ and set device = "<its link>" in {sect}',
            )
        ], False
    real = os.path.realpath(device)
    st = os.stat(real)
    if not stat.S_ISCHR(st.st_mode):
        return [
            _err(
                key,
                f"{device} is not a serial port (not a character device)",
                f"a modem is /dev/serial/by-id/usb-... (ls -l {host.by_id}/)",
            )
        ], False
    if os.path.islink(device):
        out.append(_ok(key, f"{device} -> {real}, a character device"))
    elif _VOLATILE_PORT.match(device) and not device.startswith(("/dev/ttyS", "/dev/ttyAMA")):
        link = _by_id_link(real, host) or "/dev/serial/by-id/usb-..."
        out.append(
            _warn(
                key,
                f"{device} can become another ttyUSB after a replug or reboot",
                f'device = "{link}" in {sect} (or /dev/textback-modem from install.sh\'s'
                " udev rule)",
            )
        )
    else:
        out.append(_ok(key, f"{device} is a character device"))
    if not acct.can(st, os.R_OK | os.W_OK):
        group = acct.group_name(st.st_gid)
        out.append(
            _err(
                key,
                f"{real} is {stat.S_IMODE(st.st_mode):04o} {st.st_uid}:{group} and user"
                f" {acct.name} is not in group {group}: the service cannot open it",
                f"usermod -aG {group} {acct.name} (then systemctl restart textback)"
                if group == "dialout"
                else f"chgrp dialout {real} && chmod 0660 {real}, or a udev rule"
                ' (install.sh writes one: GROUP="dialout", MODE="0660")',
            )
        )
        fit = acct.uid == os.getuid()
    else:
        out.append(_ok(key, f"readable and writable by {acct.name}"))
        fit = True
    held = holders(device, host.proc)
    for h in held:
        out.append(_err(key, f"{real} is held open by {h.describe()}: {h.cmdline[:80]}", h.fix()))
    if not held:
        seen = "" if os.getuid() == 0 else " (only this user's processes could be seen)"
        out.append(_ok(key, f"no other process has it open{seen}"))
    return out, fit and not held


async def probe_modem(
    cfg: Config, i: int, entry: PoolModemConfig, device: str, host: Host
) -> list[Finding]:
    """Open the modem as the service would: SIM, registration, signal, SMS centre."""
    from daemon.cli.modem import open_modem  # noqa: PLC0415 (serial code only when probing)
    from gsm import commands as C  # noqa: PLC0415
    from gsm.errors import AtTimeout, GsmError, PinError  # noqa: PLC0415

    key = _device_key(cfg, i)
    sect = _section(cfg, i)
    settings = cfg.modem_settings(entry)
    who = f"{entry.name} ({device}): " if cfg.modems else ""
    try:
        modem = open_modem(cfg, device, require_network=False, settings=settings)
    except ValueError as exc:
        return [_err(f"{key[:-7]}.pin", str(exc), f"fix the PIN or SMSC in {sect}")]
    modem.t = dataclasses.replace(modem.t, startup=host.modem_startup)
    out: list[Finding] = []
    try:
        try:
            await modem.start()
        except PinError as exc:
            said = str(exc)
            if "PUK" in said:
                return [
                    _err(
                        "sim",
                        f"{who}the SIM is PUK-locked (three wrong PINs)",
                        "put the SIM in a phone and enter its PUK (from the SIM's card),"
                        f' then set its PIN as pin = "..." in {sect}',
                    )
                ]
            if "asks for a PIN" in said:
                return [
                    _err(
                        "sim",
                        f"{who}the SIM asks for a PIN and {sect} has none",
                        f'pin = "<the SIM\'s PIN>" in {sect} (or remove the PIN in a phone)',
                    )
                ]
            return [
                _err(
                    "sim",
                    f"{device}: {said}",
                    f"check pin in {sect}; textback never retries a refused PIN",
                )
            ]
        except AtTimeout as exc:
            return [
                _err(
                    key,
                    f"{device} does not answer {exc.command}",
                    "try the stick's other ports (textback modem --device PATH); a stick"
                    " in storage mode needs usb_modeswitch",
                )
            ]
        except GsmError as exc:
            return [_err(key, f"{device}: {exc}", "textback modem --device PATH says more")]
        out.append(_ok("sim", f"{who}SIM ready"))
        info = await modem.probe()
        if info.registration in (1, 5):
            op = f" on {info.operator}" if info.operator else ""
            out.append(_ok("network", f"{who}{info.registration_text}{op}"))
        else:
            out.append(
                _err(
                    "network",
                    f"{who}not registered ({info.registration_text})",
                    "check the antenna, the SIM's plan and coverage; a new SIM may need"
                    " activating in a phone first",
                )
            )
        if info.dbm is None:
            out.append(_warn("signal", f"{who}unknown (no antenna?)", "fit the antenna; move it"))
        elif info.dbm < WEAK_SIGNAL_DBM:
            out.append(
                _warn(
                    "signal",
                    f"{who}weak ({info.dbm} dBm)",
                    "move the antenna (a window, off the rack) or use a USB extension",
                )
            )
        else:
            out.append(_ok("signal", f"{who}{info.dbm} dBm"))
        smsc: str | None = None
        with contextlib.suppress(GsmError):
            reply = await modem.command(C.CSCA.line() + "?", prefix=C.CSCA.prefix)
            values = reply.values(C.CSCA.prefix or "+CSCA:")
            smsc = C.parse_csca(values[0]) if values else None
        if smsc:
            out.append(_ok("smsc", f"{who}SMS centre {smsc}"))
        elif settings.smsc:
            out.append(_ok("smsc", f"{who}SMS centre {settings.smsc} from the config"))
        else:
            out.append(
                _err(
                    f"{key[:-7]}.smsc",
                    f"{who}the SIM has no SMS centre address, so no text can go out",
                    f'smsc = "+<your carrier\'s SMS centre>" in {sect}',
                )
            )
    finally:
        await modem.close()
    return out


async def check_modems(cfg: Config, acct: Account, host: Host) -> list[Finding]:
    """Every configured modem: the device file, who holds it, then the modem itself."""
    from gsm.errors import GsmError  # noqa: PLC0415
    from gsm.finder import find_by_imei  # noqa: PLC0415

    out: list[Finding] = []
    for i, entry in enumerate(cfg.modem_entries()):
        device = entry.device.strip()
        if entry.imei is not None:
            try:
                device = await find_by_imei(entry.imei)
            except GsmError as exc:
                out.append(
                    _err(
                        _device_key(cfg, i),
                        f"no modem answers with IMEI {entry.imei}: {exc}",
                        "plug it in; textback modem --device PATH prints each modem's IMEI",
                    )
                )
                continue
            out.append(_ok(_device_key(cfg, i), f"IMEI {entry.imei} is on {device}"))
        found, fit = check_device(cfg, i, device, acct, host)
        out += found
        if fit:
            out += await probe_modem(cfg, i, entry, device, host)
    return out


# --- AMI ------------------------------------------------------------------------------------


class AmiError(Exception):
    """The AMI session could not go on (closed, timed out)."""


class _Session:
    """A bare AMI session: one action at a time; events that arrive meanwhile are kept."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = FrameParser()
        self.events: list[Message] = []
        self._pending: list[Message] = []
        self._n = 0

    async def _next(self, timeout: float) -> Message:
        while not self._pending:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
            except TimeoutError as exc:
                raise AmiError("no answer") from exc
            except OSError as exc:
                raise AmiError(str(exc)) from exc
            if not data:
                raise AmiError("Asterisk closed the connection")
            self._pending += self.parser.feed(data)
        return self._pending.pop(0)

    async def action(
        self, name: str, timeout: float, **headers: str
    ) -> tuple[Message, list[Message]]:
        """Send an action; (its response, the events of its list if it has one)."""
        self._n += 1
        aid = f"textback-check-{self._n}"
        msg = {"Action": name, "ActionID": aid, **headers}
        self.writer.write("".join(f"{k}: {v}\r\n" for k, v in msg.items()).encode() + b"\r\n")
        await self.writer.drain()
        response: Message | None = None
        items: list[Message] = []
        deadline = time.monotonic() + timeout
        while True:
            got = await self._next(max(0.01, deadline - time.monotonic()))
            if got.get("ActionID") != aid:
                if "Event" in got:
                    self.events.append(got)
                continue
            if "Response" in got:
                response = got
                if got.get("EventList", "").lower() != "start":
                    return response, items
            elif "Event" in got:
                if got.get("EventList", "").lower() == "complete":
                    assert response is not None
                    return response, items
                items.append(got)

    async def listen(self, seconds: float) -> None:
        """Keep the events that arrive within `seconds`."""
        with contextlib.suppress(AmiError):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                got = await self._next(max(0.01, deadline - time.monotonic()))
                if "Event" in got:
                    self.events.append(got)

    async def close(self) -> None:
        with contextlib.suppress(AmiError, OSError):
            await self.action("Logoff", 1.0)
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@dataclass(slots=True)
class ManagerConf:
    """What /etc/asterisk/manager.conf says, where this user may read it."""

    general: dict[str, str] = field(default_factory=dict)
    users: dict[str, dict[str, str]] = field(default_factory=dict)


def read_manager_conf(path: Path) -> ManagerConf | None:
    """[general] and the user sections (later lines win; #include followed), or None when
    the file cannot be read (textback's user usually may not)."""
    conf = ManagerConf()
    seen: set[Path] = set()

    def load(p: Path, top: bool) -> bool:
        if p in seen:
            return True
        seen.add(p)
        try:
            lines = p.read_text(errors="replace").splitlines()
        except OSError:
            return not top
        section: dict[str, str] | None = None
        for raw in lines:
            line = raw.split(";", 1)[0].strip()
            if line.startswith(("#include", "#tryinclude")):
                name = line.split(None, 1)[1].strip().strip('"') if " " in line else ""
                if name:
                    base = p.parent / name
                    for inc in sorted(base.parent.glob(base.name)):
                        load(inc, False)
                continue
            m = re.match(r"^\[([^\]]+)\]", line)
            if m:
                name = m.group(1).strip()
                section = conf.general if name == "general" else conf.users.setdefault(name, {})
                continue
            k, sep, v = line.partition("=")
            if sep and section is not None:
                k = k.strip().rstrip(">").strip().lower()
                v = v.lstrip(">").strip()
                if k in ("read", "write") and k in section:
                    section[k] += "," + v  # several read= lines add up
                elif k == "channelvars" and k in section:
                    section[k] += "," + v
                else:
                    section[k] = v
        return True

    return conf if load(path, True) else None


def _classes(value: str) -> set[str]:
    return {c.strip().lower() for c in value.split(",") if c.strip()}


_ASTERISK_CLASS = {"X": "0123456789", "Z": "123456789", "N": "23456789"}


def exten_matches(pattern: str, number: str) -> bool:
    """An Asterisk extension (exact, or a `_` pattern: X Z N [..] . !) matching `number`."""
    if not pattern.startswith("_"):
        return pattern == number
    rx = ""
    i, p = 0, pattern[1:]
    while i < len(p):
        ch = p[i]
        up = ch.upper()
        if up in _ASTERISK_CLASS:
            rx += f"[{_ASTERISK_CLASS[up]}]"
        elif ch == "[":
            j = p.find("]", i)
            if j < 0:
                return False
            rx += "[" + re.sub(r"[\\^]", "", p[i + 1 : j]) + "]"
            i = j
        elif ch == ".":
            rx += ".+"
        elif ch == "!":
            rx += ".*"
        else:
            rx += re.escape(ch)
        i += 1
    try:
        return re.fullmatch(rx, number) is not None
    except re.error:
        return False


@dataclass(slots=True)
class AmiResult:
    """The findings, and Asterisk's clock if it told it (Ping)."""

    findings: list[Finding]
    clock_skew: float | None = None
    """Asterisk's clock minus ours, from the Ping answer (None: not told)."""


def _manager_fix(user: str, line: str) -> str:
    return (
        f'"{line}" under [{user}] in /etc/asterisk/manager.conf, then asterisk -rx "manager reload"'
    )


async def check_ami(cfg: Config, host: Host) -> AmiResult:
    """Log in and prove each permission and setting textback relies on."""
    ami = cfg.ami
    if not ami.enabled:
        return AmiResult([_note("ami", "not checked: [ami] enabled = false")])
    where = f"{ami.host}:{ami.port}"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(ami.host, ami.port), host.ami_timeout
        )
    except (OSError, TimeoutError) as exc:
        if isinstance(exc, TimeoutError):
            why = "no answer"
        elif isinstance(exc, ConnectionRefusedError):
            why = "connection refused: nothing listens there"
        else:
            why = exc.strerror or str(exc)
        return AmiResult(
            [
                _err(
                    "ami.host",
                    f"cannot reach AMI at {where} ({why})",
                    'in /etc/asterisk/manager.conf [general]: "enabled = yes", "port ='
                    f' {ami.port}", "bindaddr = 127.0.0.1" (or this host\'s address), then'
                    ' asterisk -rx "manager reload"; or fix [ami] host/port',
                )
            ]
        )
    session = _Session(reader, writer)
    mconf = read_manager_conf(host.manager_conf)
    try:
        return await _check_session(cfg, host, session, mconf, where)
    except AmiError as exc:
        return AmiResult(
            [_err("ami", f"the session with {where} broke off: {exc}", "run check --live again")]
        )
    finally:
        await session.close()


async def _check_session(
    cfg: Config, host: Host, s: _Session, mconf: ManagerConf | None, where: str
) -> AmiResult:
    ami = cfg.ami
    user = ami.username
    out: list[Finding] = []
    t = host.ami_timeout
    resp, _ = await s.action("Login", t, Username=user, Secret=ami.secret, Events="on")
    if resp.get("Response", "").lower() != "success":
        said = resp.get("Message", "refused")
        reason = "the secret does not match, the user is missing, or this host is not permitted"
        if mconf is not None:
            section = mconf.users.get(user)
            if section is None:
                reason = f"manager.conf has no [{user}]"
            elif section.get("secret") != ami.secret:
                reason = f"[ami] secret differs from the secret of [{user}] in manager.conf"
            else:
                reason = "the secret matches manager.conf: check its permit=/deny= lines"
        return AmiResult(
            [
                _err(
                    "ami.secret",
                    f"Asterisk at {where} refused the login of {user!r} ({said}): {reason}",
                    f"set [ami] secret to the secret of [{user}] in /etc/asterisk/manager.conf"
                    ' (and permit = 127.0.0.1/255.255.255.255), then asterisk -rx "manager'
                    ' reload"',
                )
            ]
        )
    out.append(_ok("ami", f"logged in to {where} as {user}"))
    started = time.monotonic()

    # Asterisk's clock: the Ping answer carries it
    skew = None
    resp, _ = await s.action("Ping", t)
    with contextlib.suppress(ValueError):
        skew = float(resp.get("Timestamp", "")) - time.time()

    # Getvar: a global variable that is not set; refused only without write = reporting
    resp, _ = await s.action("Getvar", t, Variable="TEXTBACK_CHECK")
    getvar_ok = "permission denied" not in resp.get("Message", "").lower()
    if getvar_ok:
        out.append(_ok("ami.getvar", "Getvar allowed (withheld callers can be asked about)"))
    else:
        out.append(
            _err(
                "ami.getvar",
                "Getvar refused (Permission denied): no CoreShowChannels resync after a"
                " reconnect, no Getvar of CALLERID(pres), no DBGet of callers' names",
                _manager_fix(user, "write = reporting"),
            )
        )

    if cfg.calls.enforce_ring_timeout:
        resp, _ = await s.action(
            "Redirect",
            t,
            Channel="textback-check/nonexistent",
            Context="textback-check",
            Exten="s",
            Priority="1",
        )
        if "permission denied" in resp.get("Message", "").lower():
            out.append(
                _err(
                    "calls.enforce_ring_timeout",
                    "Redirect refused (Permission denied): calls ringing past ring_timeout"
                    " are not sent to voicemail",
                    _manager_fix(user, "write = reporting,call")
                    + "; or enforce_ring_timeout = false in [calls]",
                )
            )
        else:
            out.append(_ok("calls.enforce_ring_timeout", "Redirect allowed"))

    out += await _check_dialplan(cfg, s, t, user)

    # events: listen until every question is answered, or event_wait is up
    def decided() -> bool:
        classes, pres, stamps = _evidence(s.events)
        return set(READ_CLASSES) <= classes and pres is not None and stamps is not None

    left = host.event_wait - (time.monotonic() - started)
    while left > 0 and not decided():
        await s.listen(min(left, 0.1))
        left = host.event_wait - (time.monotonic() - started)
    out += _event_findings(
        cfg,
        events=s.events,
        mconf=mconf,
        user=user,
        getvar_ok=getvar_ok,
        waited=host.event_wait,
    )
    return AmiResult(out, skew)


async def _check_dialplan(cfg: Config, s: _Session, t: float, user: str) -> list[Finding]:
    ami = cfg.ami
    resp, items = await s.action("ShowDialPlan", t)
    if "permission denied" in resp.get("Message", "").lower():
        return [
            _warn(
                "ami.inbound_contexts",
                "ShowDialPlan refused, so the contexts and DIDs could not be looked up",
                _manager_fix(user, "write = reporting"),
            )
        ]
    if resp.get("Response", "").lower() != "success":
        return [
            _warn(
                "ami.inbound_contexts",
                f"ShowDialPlan failed ({resp.get('Message', '?')}): contexts not looked up",
                "asterisk -rx 'dialplan show' on the PBX lists them",
            )
        ]
    contexts: dict[str, set[str]] = {}
    for ev in items:
        if ev.get("Event") == "ListDialplan" and ev.get("Context"):
            exts = contexts.setdefault(ev["Context"], set())
            if ev.get("Extension"):
                exts.add(ev["Extension"])
    out: list[Finding] = []
    configured = ami.inbound_contexts
    present = [c for c in configured if c in contexts]
    missing = [c for c in configured if c not in contexts]
    explicit = "inbound_contexts" in ami.model_fields_set
    if present:
        out.append(_ok("ami.inbound_contexts", "in the dialplan: " + ", ".join(present)))
    likely = sorted(
        c for c in contexts if re.search(r"trunk|pstn|incoming|inbound|from-|did", c, re.I)
    )
    if explicit:
        for c in missing:
            close = difflib.get_close_matches(c, list(contexts), 1)
            guess = f'"{close[0]}"' if close else ", ".join(f'"{x}"' for x in likely[:4])
            out.append(
                _warn(
                    "ami.inbound_contexts",
                    f"{c!r} is not a context of this dialplan: no call starts there",
                    f"inbound_contexts in [ami] with the trunk's context, e.g. {guess}"
                    if guess
                    else "inbound_contexts in [ami]: the context your trunk delivers calls to",
                )
            )
    elif not present and not (ami.inbound_trunks or ami.inbound_dids):
        shown = ", ".join(f'"{x}"' for x in likely[:4]) or '"<your trunk\'s context>"'
        out.append(
            _err(
                "ami.inbound_contexts",
                "none of the default inbound contexts (FreePBX's) is in this dialplan, and"
                " no inbound_trunks or inbound_dids are set: no call would count as inbound",
                f"inbound_contexts = [{shown}] in [ami] (the context your trunk's calls start in)",
            )
        )
    dids = [*ami.inbound_dids, *(line.did for line in cfg.lines)]
    all_exts = {e for exts in contexts.values() for e in exts}
    for did in dids:
        digits = did.strip()
        forms = {digits, digits.lstrip("+"), re.sub(r"\D", "", digits)}
        forms |= {f[1:] for f in list(forms) if f.startswith("1") and len(f) == 11}
        hit = [e for e in all_exts if any(exten_matches(e, f) for f in forms if f)]
        if hit:
            out.append(_ok("ami.inbound_dids", f"{did} is in the dialplan ({sorted(hit)[0]})"))
        else:
            out.append(
                _warn(
                    "ami.inbound_dids",
                    f"{did} matches no extension of the dialplan: its calls never come",
                    "check the DID as the trunk sends it (asterisk -rx 'dialplan show"
                    " <context>'), and write it the same way in the config",
                )
            )
    return out


def _evidence(events: Iterable[Message]) -> tuple[set[str], bool | None, bool | None]:
    """From the events seen: the read classes, whether CALLERID(pres) rides along
    (None: no channel event to tell), whether events carry Timestamp (None: none to tell)."""
    classes: set[str] = set()
    pres: bool | None = None
    stamps: bool | None = None
    for ev in events:
        priv = _classes(ev.get("Privilege", "")) - {"all"}
        classes |= priv
        if "Channel" in ev and "Uniqueid" in ev:
            pres = pres or "ChanVariable:CALLERID(pres)" in ev
        if priv and ev.get("Event") != "FullyBooted":  # sent at login without a Timestamp
            stamps = stamps or "Timestamp" in ev
    return classes, pres, stamps


def _event_findings(
    cfg: Config,
    *,
    events: list[Message],
    mconf: ManagerConf | None,
    user: str,
    getvar_ok: bool,
    waited: float,
) -> list[Finding]:
    classes, pres, stamps = _evidence(events)
    out: list[Finding] = []
    granted: set[str] | None = None
    if mconf is not None and user in mconf.users:
        granted = _classes(mconf.users[user].get("read", ""))
    for cls, why in READ_CLASSES.items():
        if cls in classes:
            out.append(_ok("ami.read", f"{cls} events arrive"))
        elif granted is not None and (cls in granted or "all" in granted):
            out.append(_ok("ami.read", f"{cls}: granted in manager.conf (none arrived yet)"))
        elif granted is not None:
            out.append(
                _err(
                    "ami.read",
                    f"manager.conf does not grant read class {cls} ({why})",
                    _manager_fix(user, READ_LINE),
                )
            )
        else:
            out.append(
                _warn(
                    "ami.read",
                    f"no {cls} events arrived in {waited:g}s (normal on a quiet PBX; manager.conf"
                    f" not readable here): read class {cls} unconfirmed ({why})",
                    f"make sure of {_manager_fix(user, READ_LINE)}; or run check --live as"
                    " root, or during a test call",
                )
            )
    general = mconf.general if mconf is not None else {}
    if pres is None and "channelvars" in general:
        pres = "callerid(pres)" in general["channelvars"].lower().replace(" ", "")
    if stamps is None and "timestampevents" in general:
        stamps = general["timestampevents"].lower() in ("yes", "true", "on", "1")
    chan_fix = (
        _manager_fix(user, "channelvars = CALLERID(pres)")
        .replace(f"under [{user}]", "under [general]")
        .replace('asterisk -rx "manager reload"', "restart Asterisk")
    )
    if pres:
        out.append(
            _ok("ami.channelvars", "CALLERID(pres) rides on every event: withheld callers known")
        )
    else:
        skip = cfg.calls.unknown_presentation == "skip"
        if pres is None:
            what = "unknown (no call during the check and manager.conf not readable)"
        else:
            what = "not set"
        if getvar_ok:
            meaning = (
                "textback asks each caller's channel with Getvar instead; a call that ends"
                " before the answer cannot be told from a withheld one"
            )
        else:
            meaning = (
                "and Getvar is refused: a withheld caller whose carrier passes the number"
                " looks like any other"
            )
        consequence = (
            "such callers are skipped (unknown_presentation = skip)"
            if skip
            else "such callers are texted (unknown_presentation = text)"
        )
        level = Level.WARNING if (getvar_ok or skip) else Level.ERROR
        out.append(
            Finding(
                level,
                "ami.channelvars",
                f"channelvars CALLERID(pres) {what}: {meaning}; {consequence}",
                chan_fix,
            )
        )
    ts_fix = _manager_fix(user, "timestampevents = yes").replace(
        f"under [{user}]", "under [general]"
    )
    if stamps:
        out.append(_ok("ami.timestampevents", "events carry Asterisk's Timestamp"))
    elif stamps is None:
        out.append(
            _note(
                "ami.timestampevents",
                "not confirmed (no timestamped event arrived; manager.conf not readable)",
                ts_fix,
            )
        )
    else:
        out.append(
            _warn(
                "ami.timestampevents",
                "off: ring times are measured on arrival, inexact when the PBX is busy",
                ts_fix,
            )
        )
    return out


# --- all of it ------------------------------------------------------------------------------


async def run_live(
    cfg: Config, config_path: Path | None, host: Host | None = None
) -> list[Finding]:
    """Every live check, in the order a technician fixes things."""
    host = host or Host()
    unit = read_unit(host)
    acct = resolve_account(host, unit)
    out = _account_findings(acct, unit)
    if config_path is not None:
        for p in secret_file_problems(config_path, cfg, service_group=acct.name):
            out.append(_warn("config", p.message, p.hint))
        try:
            st = os.stat(config_path)
        except OSError:
            st = None
        if st is not None and not acct.can(st, os.R_OK):
            out.append(
                _err(
                    "config",
                    f"{config_path} is not readable by {acct.name}",
                    f"chown root:{acct.name} {config_path} && chmod 0640 {config_path}",
                )
            )
    ami = await check_ami(cfg, host)
    out += ami.findings
    out += await check_modems(cfg, acct, host)
    out += check_database(cfg, acct, unit)
    out += check_clock(cfg, host, ami.clock_skew)
    out += check_unit(host, unit)
    return out


def live_errors(findings: Iterable[Finding]) -> int:
    """How many findings are errors."""
    return sum(1 for f in findings if f.level is Level.ERROR)


__all__ = [
    "Finding",
    "Host",
    "Level",
    "exten_matches",
    "holders",
    "live_errors",
    "read_manager_conf",
    "run_live",
    "secret_file_problems",
]
