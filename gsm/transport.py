"""A thin serial transport on pyserial-asyncio-fast: it opens the port and moves bytes.

It knows nothing of AT: received bytes go to `on_data`, a lost link to `on_lost`.
Opening maps the operating system's errors to our own (no such device, permission).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable

import serial
import serial_asyncio_fast

from gsm.errors import DevicePermission, ModemGone, NoDevice, NotASerialPort

log = logging.getLogger(__name__)
TRACE = 5  # below DEBUG: raw bytes on the wire


class SerialLink(asyncio.Protocol):
    """An open serial port. Create with `await SerialLink.open(...)`."""

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[Exception | None], None],
    ) -> None:
        self._on_data = on_data
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.device = ""

    @classmethod
    async def open(
        cls,
        device: str,
        baudrate: int,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[Exception | None], None],
    ) -> SerialLink:
        """Open `device` at `baudrate` (8N1, no flow control)."""
        link = cls(on_data, on_lost)
        link.device = device
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await serial_asyncio_fast.create_serial_connection(
                loop, lambda: link, device, baudrate=baudrate, exclusive=True
            )
        except (serial.SerialException, OSError) as exc:
            raise open_error(device, exc) from exc
        # connection_made comes with the next loop turn; writes may start right away.
        link._transport = transport
        return link

    @property
    def is_open(self) -> bool:
        """True until the link is closed or lost."""
        return self._transport is not None and not self._closed.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "rx %r", data)
        self._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        self._on_lost(exc)

    def write(self, data: bytes, *, secret: bool = False) -> None:
        """Queue bytes for the modem; ModemGone if the link is not open.

        `secret`: the bytes hold a PIN, so the TRACE log shows only their length.
        """
        if self._transport is None or self._transport.is_closing():
            raise ModemGone(f"{self.device}: not open")
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "tx %s", f"<{len(data)} secret bytes>" if secret else repr(data))
        self._transport.write(data)

    async def close(self) -> None:
        """Close the port and wait until it is closed."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        if self._transport is not None:
            await asyncio.shield(self._closed)


def open_error(device: str, exc: BaseException) -> Exception:
    """Our error for an exception raised while opening `device`."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, FileNotFoundError) or code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return NoDevice(device)
    if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM):
        return DevicePermission(device)
    if code == errno.ENOTTY or "Inappropriate ioctl" in str(exc):
        return NotASerialPort(device)
    return ModemGone(f"{device}: cannot open: {exc}")
