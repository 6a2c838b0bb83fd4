"""`textback modem [--config FILE] [--device PATH]`: probe the modem (maker, model,
firmware, SIM, registration, operator, signal); with `[[modems]]`, every modem under its
name (an "imei:" device found by its IMEI first).

It works without a config file when --device is given; without either it reads the
default config (/etc/textback/textback.toml) if it exists, else uses the defaults. A
technician's usual mistakes each get one clear line and exit code 1. `textback send-test`
(daemon.cli.send_test) opens the modem with the same helpers.
"""

from __future__ import annotations

import argparse
import asyncio

from daemon.cli.common import fail
from daemon.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    ModemConfig,
    PoolModemConfig,
    load_config,
)
from gsm.errors import (
    AtTimeout,
    DevicePermission,
    GsmError,
    ModemGone,
    NoDevice,
    NotASerialPort,
    NotRegistered,
    PinError,
)
from gsm.finder import find_by_imei, imei_of_device
from gsm.modem import Modem, ModemInfo, Timeouts

# How long the modem may take to answer AT when the command starts (a stick that was
# just plugged in boots in about 10 s). Tests shorten it.
STARTUP_TIMEOUT = 15.0
# How long send-test waits for network registration.
REGISTRATION_TIMEOUT = 30.0


def modem_config(args: argparse.Namespace) -> Config:
    """--config FILE; else the default file unless --device makes it unneeded; else the
    defaults. Raises ConfigError."""
    path = getattr(args, "config", None)
    if path:
        return load_config(path)
    if DEFAULT_CONFIG_PATH.exists() and not getattr(args, "device", None):
        return load_config(DEFAULT_CONFIG_PATH)
    return load_config(None)


def explain(exc: GsmError, device: str) -> str:
    """One line a technician can act on."""
    if isinstance(exc, NoDevice):
        return f"no such device: {device} (is the modem plugged in? see ls /dev/serial/by-id/)"
    if isinstance(exc, DevicePermission):
        return str(exc)
    if isinstance(exc, NotASerialPort):
        return f"{exc} (a modem is /dev/ttyUSBn, /dev/ttyACMn or /dev/serial/by-id/...)"
    if isinstance(exc, AtTimeout) and exc.command == "AT":
        return (
            f"the modem on {device} does not answer AT (wrong port? try the other"
            " /dev/ttyUSBn, or a stick still in storage mode needs usb_modeswitch)"
        )
    if isinstance(exc, PinError):
        return f"SIM: {exc}"
    if isinstance(exc, ModemGone) and "lock" in str(exc).lower():
        return f"{device} is in use by another program (ModemManager? stop or mask it)"
    if isinstance(exc, NotRegistered):
        return f"{exc} (check the antenna, the SIM's plan, and coverage)"
    return f"modem on {device}: {exc}"


def open_modem(
    cfg: Config, device: str, *, require_network: bool, settings: ModemConfig | None = None
) -> Modem:
    """A Modem for a one-shot command: no reconnect, no health checks, short start-up.
    `settings`: one [[modems]] entry's (its PIN and SMSC), else [modem]'s."""
    m = settings or cfg.modem
    return Modem(
        device,
        baudrate=m.baudrate,
        pin=m.pin or None,
        smsc=m.smsc or None,
        mode=m.mode,
        timeouts=Timeouts(
            startup=STARTUP_TIMEOUT,
            send=m.send_timeout,
            registration=REGISTRATION_TIMEOUT,
            health_interval=0,
        ),
        reconnect=False,
        require_network=require_network,
        reports=m.delivery_reports,
    )


#: How `textback modem` says where delivery reports go (AT+CNMI <ds>).
_REPORTS = {
    "stored": "stored (kept by the modem while textback is down, +CDSI)",
    "direct": "direct (+CDS: lost while textback is down)",
    "off": "off (the modem sends none to textback)",
}


def format_info(info: ModemInfo) -> str:
    """The probe as aligned lines."""
    signal = "unknown" if info.rssi is None or info.dbm is None else f"{info.rssi} ({info.dbm} dBm)"
    rows = [
        ("device", info.device),
        ("maker", info.maker),
        ("model", info.model),
        ("firmware", info.firmware),
        ("IMEI", info.imei),
        ("SIM ICCID", info.iccid),
        ("operator", info.operator),
        ("signal", signal),
        ("registration", info.registration_text),
        ("SMS mode", info.mode),
        ("inbound SMS", "yes" if info.inbound else "no (modem has no AT+CNMI)"),
        ("reports", _REPORTS.get(info.reports, info.reports)),
    ]
    return "\n".join(f"{k + ':':<14}{v if v is not None else 'unknown'}" for k, v in rows)


async def _probe(modem: Modem) -> ModemInfo:
    try:
        await modem.start()
        return await modem.probe()
    finally:
        await modem.close()


async def _probe_entry(cfg: Config, entry: PoolModemConfig) -> tuple[str, ModemInfo | None]:
    """Probe one [[modems]] entry (found by its IMEI first for an "imei:" device): its
    info, or None and the one line that explains why not."""
    device = entry.device
    try:
        imei = imei_of_device(device)
        if imei is not None:
            device = await find_by_imei(imei)
        return device, await _probe(
            open_modem(cfg, device, require_network=False, settings=cfg.modem_settings(entry))
        )
    except GsmError as exc:
        return explain(exc, device), None
    except ValueError as exc:
        return str(exc), None


async def _probe_all(cfg: Config) -> list[tuple[str, ModemInfo | None]]:
    # one after the other: an IMEI search opens every port, each modem's own included
    return [await _probe_entry(cfg, entry) for entry in cfg.modems]


def _main_pool(cfg: Config) -> int:
    """`textback modem` with [[modems]]: every modem, each under its name; exit 1 when
    any cannot be probed."""
    bad = 0
    results = asyncio.run(_probe_all(cfg))
    for n, (entry, (said, info)) in enumerate(zip(cfg.modems, results, strict=True)):
        if n:
            print()
        lines = ", ".join(entry.lines) or "none (any text no line claims)"
        print(f"[{entry.name}] {entry.device}   lines: {lines}")
        if info is None:
            bad += 1
            print(f"  not probed: {said}")
        else:
            print("\n".join("  " + row for row in format_info(info).splitlines()))
    return 1 if bad else 0


def main(args: argparse.Namespace) -> int:
    """`textback modem [--config FILE] [--device PATH]`."""
    try:
        cfg = modem_config(args)
    except ConfigError as exc:
        return fail(str(exc).splitlines()[0])
    if cfg.modems and not getattr(args, "device", None):
        return _main_pool(cfg)
    device = getattr(args, "device", None) or cfg.modem.device
    try:
        info = asyncio.run(_probe(open_modem(cfg, device, require_network=False)))
    except GsmError as exc:
        return fail(explain(exc, device))
    except ValueError as exc:  # a PIN or SMSC in the config that cannot be right
        return fail(str(exc))
    print(format_info(info))
    return 0
