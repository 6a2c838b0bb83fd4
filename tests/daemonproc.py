"""Run the real `textback run` process in tests: a notify socket, its log lines, signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path


class NotifyListener:
    """A real $NOTIFY_SOCKET: collects what the daemon tells systemd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []
        self._new = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.messages.append(self.sock.recv(4096).decode())
                self._new.set()

    async def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        """Wait until a notify message contains `needle`; return it."""

        async def _wait() -> str:
            seen = 0
            while True:
                for msg in self.messages[seen:]:
                    if needle in msg:
                        return msg
                seen = len(self.messages)
                self._new.clear()
                await self._new.wait()

        return await asyncio.wait_for(_wait(), timeout)

    def close(self) -> None:
        """Stop listening."""
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


class Daemon:
    """`textback run --config FILE` as a real child process."""

    def __init__(self, config: Path, notify: NotifyListener, env: dict[str, str] | None = None):
        self.config = config
        self.notify = notify
        self.env = env or {}
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._new = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the process; its stderr lines are collected in `lines`."""
        env = dict(os.environ)
        env.update(
            {
                "NOTIFY_SOCKET": str(self.notify.path),
                # no WATCHDOG_PID: its pid is not known before the start; the daemon
                # then takes the watchdog as meant for itself, as systemd intends
                "WATCHDOG_USEC": "2000000",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon.cli",
            "run",
            "--config",
            str(self.config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            self._new.set()

    async def wait_log(self, needle: str, timeout: float = 20.0, *, count: int = 1) -> list[str]:
        """Wait until `count` log lines contain `needle`."""

        async def _wait() -> list[str]:
            while True:
                hits = [line for line in self.lines if needle in line]
                if len(hits) >= count:
                    return hits
                if self._reader is not None and self._reader.done():
                    raise AssertionError(
                        f"daemon exited before logging {needle!r}:\n" + "\n".join(self.lines)
                    )
                self._new.clear()
                await self._new.wait()

        return await asyncio.wait_for(_wait(), timeout)

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the daemon."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 15.0) -> int:
        """Wait for the process to end; return its exit code."""
        assert self.proc is not None
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return rc

    async def kill(self) -> None:
        """kill -9 and reap."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


@contextlib.asynccontextmanager
async def running_daemon(
    config: Path, tmp: Path, env: dict[str, str] | None = None
) -> AsyncIterator[Daemon]:
    """Start the daemon and make sure it is gone afterwards, whatever the test did."""
    notify = NotifyListener(tmp / "notify.sock")
    d = Daemon(config, notify, env)
    await d.start()
    try:
        yield d
    finally:
        await d.kill()
        notify.close()
