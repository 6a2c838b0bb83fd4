"""The `textback` command line: argument parsing and dispatch, nothing else.

Each command lives in its own module with a `main(args) -> int` function, imported only
when that command runs, so `textback replay` never loads serial code and so on.
Exit codes: 0 ok, 1 a user error explained in one clear line, 2 usage.

May import: anything (the top of the layout); nothing imports cli but its own modules.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command -> "module:function"
_COMMANDS = {
    "run": "daemon.cli.run:main",
    "check": "daemon.cli.check:main",
    "demo": "daemon.cli.demo:main",
    "replay": "daemon.cli.replay:main",
    "send-test": "daemon.cli.send_test:main",
    "modem": "daemon.cli.modem:main",
    "stats": "daemon.cli.stats:main",
    "history": "daemon.cli.history:main",
    "optout": "daemon.cli.optout:main",
    "replies": "daemon.cli.replies:main",
    "pause": "daemon.cli.pause:main",
    "resume": "daemon.cli.resume:main",
    "mqtt": "daemon.cli.mqtt:main",
}


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default /etc/textback/textback.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, as in DESIGN.md."""
    parser = argparse.ArgumentParser(
        prog="textback",
        description="Texts back the callers an office did not answer (Asterisk AMI + GSM modem).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="the daemon (systemd runs this)")
    _add_config(p)

    p = sub.add_parser("check", help="validate the config; exit 1 on any problem")
    _add_config(p)
    p.add_argument(
        "--live",
        action="store_true",
        help="also log in to AMI, open the modem and look at the host; name every problem",
    )

    p = sub.add_parser("demo", help="the whole pipeline on built-in data, no PBX, no modem")
    p.add_argument("--json", action="store_true", help="print JSON lines")

    p = sub.add_parser("replay", help="run a recorded AMI trace through intake, tracker, policy")
    p.add_argument("trace", metavar="TRACE", help="a recorded AMI byte stream (.ami)")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="one JSON object per finished call")
    p.add_argument(
        "--chunk", type=int, default=65536, metavar="N", help="bytes per read (default 65536)"
    )
    p.add_argument("--region", metavar="CC", help="home region, e.g. US (overrides config)")
    p.add_argument("--ring-timeout", metavar="DURATION", help="e.g. 5s (overrides config [calls])")

    p = sub.add_parser("send-test", help="send one real SMS now")
    p.add_argument("number", metavar="NUMBER", help="destination, e.g. +12025550123")
    _add_config(p)
    p.add_argument("--device", metavar="PATH", help="serial device (overrides config)")
    p.add_argument("--text", metavar="TEXT", help="the text (default: the rendered template)")

    p = sub.add_parser("modem", help="probe the modem")
    _add_config(p)
    p.add_argument("--device", metavar="PATH", help="serial device (overrides config)")

    p = sub.add_parser("stats", help="counters: today, 7 and 30 days")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="JSON output")

    p = sub.add_parser("history", help="recent calls with decision and message state")
    _add_config(p)
    p.add_argument("--caller", metavar="N", help="only this caller")
    p.add_argument("--since", metavar="T", help="e.g. 2h, 7d, or 2026-11-22")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N calls")
    p.add_argument("--json", action="store_true", help="JSON output")

    p = sub.add_parser("replies", help="texts people sent back, with the call they answer")
    _add_config(p)
    p.add_argument("--caller", metavar="N", help="only this number")
    p.add_argument("--since", metavar="T", help="e.g. 2h, 7d, or 2026-11-22")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N replies")
    p.add_argument("--json", action="store_true", help="JSON output")

    p = sub.add_parser("pause", help="stop texting callers until resumed (or --for)")
    _add_config(p)
    p.add_argument("--for", dest="for_", metavar="DURATION", help="e.g. 2h: resume by itself after")

    p = sub.add_parser("resume", help="end a pause: text callers again")
    _add_config(p)

    p = sub.add_parser("mqtt", help="MQTT: Home Assistant discovery messages")
    _add_config(p)
    mqtt_sub = p.add_subparsers(dest="mqtt_command", metavar="WHAT", required=True)
    d = mqtt_sub.add_parser("discovery", help="the discovery messages")
    _add_config(d)
    how = d.add_mutually_exclusive_group(required=True)
    how.add_argument("--print", action="store_true", help="print them")
    how.add_argument("--remove", action="store_true", help="withdraw them from the broker")

    p = sub.add_parser("optout", help="the office's do-not-text list")
    _add_config(p)
    p.add_argument("action", choices=["add", "remove", "list"])
    p.add_argument("number", nargs="?", metavar="NUMBER")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `textback` console script."""
    args = build_parser().parse_args(argv)
    target = _COMMANDS[args.command]
    module_name, _, func_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"textback: '{args.command}' is not built yet", file=sys.stderr)
        return 1
    func = getattr(module, func_name)
    try:
        rc: int = func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return rc


if __name__ == "__main__":
    sys.exit(main())
