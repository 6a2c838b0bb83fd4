"""`textback send-test NUMBER [--config FILE] [--device PATH] [--text TEXT]`: send one
real SMS now and print its message reference(s).

The text is the rendered missed-call template, or TEXT. Like `textback modem` it works
without a config file when --device is given, opens the modem the same way
(daemon.cli.modem) and explains each usual mistake in one line, exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio

from daemon.cli.common import fail
from daemon.cli.modem import explain, modem_config, open_modem
from daemon.config import ConfigError
from daemon.decide.numbers import CallerKind, classify_caller
from daemon.decide.templates import render_preview
from gsm.errors import GsmError
from gsm.modem import Modem


async def _send(modem: Modem, number: str, text: str, status_report: bool) -> list[int]:
    try:
        await modem.start()
        return await modem.send_sms(number, text, status_report=status_report)
    finally:
        await modem.close()


def main(args: argparse.Namespace) -> int:
    """`textback send-test NUMBER [--config FILE] [--device PATH] [--text TEXT]`."""
    try:
        cfg = modem_config(args)
    except ConfigError as exc:
        return fail(str(exc).splitlines()[0])
    device = getattr(args, "device", None) or cfg.modem.device
    raw = str(args.number)
    number = classify_caller(raw, home_region=cfg.textback.home_region)
    if number.kind is not CallerKind.VALID or number.e164 is None:
        return fail(f"not a valid phone number: {raw!r} (write it as +<country><number>)")
    text = getattr(args, "text", None)
    if not text:
        text = render_preview(cfg)[0].text
    try:
        refs = asyncio.run(
            _send(
                open_modem(cfg, device, require_network=True),
                number.e164,
                text,
                cfg.modem.status_reports,
            )
        )
    except GsmError as exc:
        return fail(explain(exc, device))
    except ValueError as exc:
        return fail(str(exc))
    parts = "part" if len(refs) == 1 else "parts"
    print(
        f"sent to {number.e164} in {len(refs)} {parts};"
        f" message reference(s): {', '.join(str(r) for r in refs)}"
    )
    return 0
