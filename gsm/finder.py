"""Finding a modem by its IMEI: `[[modems]] device = "imei:<IMEI>"`.

A USB modem that resets (AT+CFUN=1,1, a brown-out, a replug) comes back as whichever
/dev/ttyUSBn is free, and a machine with two identical sticks cannot tell them apart by
their /dev/serial/by-id names when those lack a serial number. The IMEI (27.007 5.4
AT+CGSN; V.250 AT+GSN on modems without it) names the module itself.

`find_by_imei` asks every candidate port at once (the globs of `DEFAULT_PORTS`, or the
caller's), each with a short timeout, and closes every port as soon as it answered or
timed out. Ports are opened exclusively (pyserial's `exclusive=True`, a flock): a port
held by another program that locks it, or by a running `Modem` of this process, is
skipped at once, never written to. A by-id link and the ttyUSBn it points to are one
port; several ports of one USB device (a Quectel EC25's ttyUSB2 and ttyUSB3, a Huawei
stick's modem and PCUI ports) that answer the same IMEI are one modem (the by-id name,
else the first path, is returned); two different devices answering the same IMEI are an
error (`ImeiAmbiguous`): the blank IMEIs of cheap clones (the transcripts in
tests/data/modem show "111111111111111" on five different models) would make the pool
send through the wrong SIM.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import re
import weakref
from collections.abc import Sequence
from pathlib import Path

from gsm import commands as C
from gsm.at import AtParser, Expect, Response
from gsm.errors import GsmError, ImeiAmbiguous, ImeiNotFound
from gsm.transport import SerialLink

log = logging.getLogger(__name__)

IMEI_PREFIX = "imei:"
DEFAULT_PORTS: tuple[str, ...] = ("/dev/serial/by-id/*", "/dev/ttyUSB*", "/dev/ttyACM*")
"""Where modems show up on Linux: the stable by-id links, USB-serial (option, qcserial)
and CDC-ACM ports."""
PROBE_TIMEOUT = 1.5
"""Seconds one port may take to answer AT+CGSN (and AT+GSN): a modem answers in tens of
milliseconds; a port that is no modem (a GPS NMEA port, a diag port) never does."""
_IMEI_RE = re.compile(r"^[0-9]{14,17}$")
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def imei_of_device(device: str) -> str | None:
    """The IMEI of a device setting "imei:<IMEI>", None for a path; ValueError when the
    IMEI is not 14 to 17 digits (3GPP TS 23.003 6.2: 15 digits, 16 as IMEISV)."""
    if not device.lower().startswith(IMEI_PREFIX):
        return None
    imei = device[len(IMEI_PREFIX) :].strip()
    if not _IMEI_RE.match(imei):
        raise ValueError(f"{device!r}: an IMEI is 14 to 17 digits")
    return imei


def candidate_ports(patterns: Sequence[str] = DEFAULT_PORTS) -> list[str]:
    """Every path matching `patterns` (glob), in order, each once."""
    seen: dict[str, None] = {}
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            seen.setdefault(path, None)
    return list(seen)


def usb_device_of(path: str, sys_root: str = "/sys") -> str | None:
    """The sysfs directory of the USB device a tty belongs to (several ports of one stick
    share it), None when it is no USB port (a pty, an on-board UART)."""
    name = os.path.basename(os.path.realpath(path))
    node = Path(sys_root, "class", "tty", name, "device")
    try:
        here = node.resolve(strict=True)
    except OSError:
        return None
    for parent in (here, *here.parents):
        if ":" not in parent.name and (parent / "idVendor").exists():
            return str(parent)
    return None


def _one_name_per_port(paths: list[str]) -> list[str]:
    """One name per real port: its by-id link where there is one, else the first path."""
    by_real: dict[str, str] = {}
    for path in paths:
        real = os.path.realpath(path)
        if real not in by_real or ("/by-id/" in path and "/by-id/" not in by_real[real]):
            by_real[real] = path
    return list(by_real.values())


def _by_device(paths: list[str]) -> dict[str, list[str]]:
    """`paths` grouped by the device they belong to (a USB device, else the port)."""
    devices: dict[str, list[str]] = {}
    for path in paths:
        devices.setdefault(usb_device_of(path) or os.path.realpath(path), []).append(path)
    return devices


async def read_imei(
    path: str, *, baudrate: int = 115200, timeout: float = PROBE_TIMEOUT
) -> str | None:
    """Open `path` exclusively, ask AT+CGSN (then AT+GSN), close it; the IMEI or None (the
    port is busy, gone, no modem, or silent within `timeout`)."""
    loop = asyncio.get_running_loop()
    parser = AtParser()
    replies: asyncio.Queue[Response | None] = asyncio.Queue()

    def on_data(data: bytes) -> None:
        for event in parser.feed(data):
            if isinstance(event, Response):
                replies.put_nowait(event)

    try:
        link = await SerialLink.open(path, baudrate, on_data, lambda _exc: replies.put_nowait(None))
    except GsmError as exc:
        log.debug("IMEI probe: %s not opened: %s", path, exc)
        return None
    deadline = loop.time() + timeout
    try:
        # A second try starts with ESC: a modem left at a "> " prompt by a dead program
        # took the first command as message text (27.005 3.5.1: ESC cancels it).
        for n, (line, lead) in enumerate(
            ((C.CGSN.line(), b""), (C.CGSN.line(), b"\x1b"), ("AT+GSN", b""))
        ):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            parser.expect(Expect(line))
            link.write(lead + line.encode("ascii") + b"\r")
            try:
                async with asyncio.timeout(remaining / 2 if n == 0 else remaining):
                    reply = await replies.get()
            except TimeoutError:
                parser.cancel()
                continue
            if reply is None:
                return None  # the port went away
            if reply.final.ok:
                imei = C.parse_imei(reply.lines)
                if imei is not None:
                    return imei
        return None
    finally:
        with contextlib.suppress(Exception):
            await link.close()


async def scan(
    patterns: Sequence[str] = DEFAULT_PORTS,
    *,
    baudrate: int = 115200,
    timeout: float = PROBE_TIMEOUT,
) -> dict[str, str | None]:
    """Every candidate port (by its first name: a by-id link before the ttyUSBn it points
    to) and the IMEI it answered, None for no answer. All ports at once."""
    names = _one_name_per_port(candidate_ports(patterns))
    lock = _locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:  # two modems resolving at once would find each other's probe busy
        found = await asyncio.gather(
            *(read_imei(path, baudrate=baudrate, timeout=timeout) for path in names)
        )
    return dict(zip(names, found, strict=True))


async def find_by_imei(
    imei: str,
    patterns: Sequence[str] = DEFAULT_PORTS,
    *,
    baudrate: int = 115200,
    timeout: float = PROBE_TIMEOUT,
) -> str:
    """The path of the port whose modem answers with `imei`.

    ImeiNotFound (retryable) when none does; ImeiAmbiguous when different devices do
    (ports of one USB device count as one: the by-id name, else the first path)."""
    answers = await scan(patterns, baudrate=baudrate, timeout=timeout)
    matching = [path for path, got in answers.items() if got == imei]
    if not matching:
        raise ImeiNotFound(imei, len(answers))
    devices = _by_device(matching)
    if len(devices) > 1:
        raise ImeiAmbiguous(imei, tuple(paths[0] for paths in devices.values()))
    paths = next(iter(devices.values()))
    chosen = next((p for p in paths if "/by-id/" in p), paths[0])
    log.debug("IMEI %s answers on %s", imei, chosen)
    return chosen
