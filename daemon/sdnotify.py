"""The systemd notify protocol (READY, STATUS, WATCHDOG, STOPPING, RELOADING).

Hand-written: it is one datagram to $NOTIFY_SOCKET; the python-systemd binding needs a C
build and libsystemd headers, and the small PyPI `sdnotify` package is unmaintained.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages when run under systemd; does nothing otherwise."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._addr: str | None = None
        self._sock: socket.socket | None = None
        if addr:
            # An address starting with '@' is in the abstract namespace.
            self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        """True when a notify socket is configured."""
        return self._sock is not None

    def watchdog_interval(self) -> float | None:
        """Half of WatchdogSec when systemd asked for pings to this process, else None."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            return None

    def send(self, *fields: str) -> None:
        """Send `KEY=value` lines; failures are logged, never raised."""
        if self._sock is None or self._addr is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._addr)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str = "") -> None:
        """READY=1, once config and database are up."""
        self.send("READY=1", *(["STATUS=" + status] if status else []))

    def status(self, text: str) -> None:
        """A STATUS line a person can read in `systemctl status`; sent when it changes."""
        if text != self._last_status:
            self._last_status = text
            self.send("STATUS=" + text)

    def watchdog(self) -> None:
        """WATCHDOG=1 from the event loop."""
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        """STOPPING=1 at shutdown."""
        self.send("STOPPING=1")

    def reloading(self) -> None:
        """RELOADING=1 at the start of a SIGHUP reload (READY=1 follows)."""
        self.send("RELOADING=1")

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
