"""Logging for people: key=value lines on stderr, no timestamp under journald, a TRACE level.

journald stamps every line itself, so when stderr is the journal (JOURNAL_STREAM is set)
the daemon leaves the time out rather than printing it twice.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def kv(**fields: object) -> str:
    """Render fields as `key=value` pairs; values with spaces or quotes are quoted."""
    return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(value: object) -> str:
    if value is None:
        return "-"
    text = f"{value:.1f}" if isinstance(value, float) else str(value)
    # Caller-controlled text must not forge log lines or fields.
    if any(ch in text for ch in ' "=\\') or not text.isprintable() or not text:
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        escaped = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in escaped)
        return f'"{escaped}"'
    return text


def under_journald() -> bool:
    """True when stderr is connected to the systemd journal."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class _JournalFormatter(logging.Formatter):
    """`<N>` priority prefixes let journald keep the level without a timestamp in the text."""

    _PRIO: Mapping[int, int] = {
        logging.CRITICAL: 2,
        logging.ERROR: 3,
        logging.WARNING: 4,
        logging.INFO: 6,
        logging.DEBUG: 7,
        TRACE: 7,
    }

    def format(self, record: logging.LogRecord) -> str:
        prio = self._PRIO.get(record.levelno, 6)
        return f"<{prio}>" + super().format(record)


def setup_logging(level: str = "info", *, stream: object = None) -> None:
    """Configure the root logger once for the daemon and the command line."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if under_journald():
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S"
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
