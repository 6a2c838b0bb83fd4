"""A real Mosquitto broker for tests, and a real aiomqtt client that records what it hears.

`Mosquitto` runs `mosquitto -c <its own config>` on a free loopback port, no persistence
(a restart forgets retained messages, so whatever is back after one was published
again), optionally with a password file made by mosquitto_passwd. `Recorder` subscribes
with aiomqtt, keeps every message with its arrival time, and reconnects by itself when
the broker restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest


def mosquitto_binary() -> str | None:
    """mosquitto's path (Debian installs it to /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One broker process on 127.0.0.1:<port>."""

    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None) -> None:
        binary = mosquitto_binary()
        if binary is None:
            pytest.fail("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
        self.binary = binary
        self.port = free_port()
        self.dir = workdir
        self.log = workdir / "mosquitto.log"
        lines = [
            # as root mosquitto would become the `mosquitto` user, who cannot read the
            # test's files; as anyone else this line is ignored
            f"user {getpass.getuser()}",
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if users:
            pw = workdir / "passwords"
            pw.write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
            pw.chmod(0o600)
            subprocess.run(["mosquitto_passwd", "-U", str(pw)], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The [mqtt] url of this broker."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text(errors='replace')}")
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not listen within 10 s")

    def stop(self) -> None:
        """Stop it (SIGTERM) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass(frozen=True)
class Heard:
    """One message a Recorder got."""

    topic: str
    payload: bytes
    retain: bool
    at: float  # time.monotonic()

    def json(self) -> Any:
        """The payload as JSON."""
        return json.loads(self.payload)


class Recorder:
    """A real subscriber: every message on `topics`, reconnecting after a broker restart."""

    def __init__(self, broker: Mosquitto, topics: tuple[str, ...] = ("#",), **login: str):
        self.broker = broker
        self.topics = topics
        self.login = login
        self.heard: list[Heard] = []
        self._new = asyncio.Event()
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.broker.port, keepalive=5, **self.login
                ) as client:
                    for t in self.topics:
                        await client.subscribe(t, qos=1)
                    self.subscribed.set()
                    async for m in client.messages:
                        raw = m.payload if isinstance(m.payload, bytes) else b""
                        self.heard.append(
                            Heard(m.topic.value, raw, bool(m.retain), time.monotonic())
                        )
                        self._new.set()
            except aiomqtt.MqttError:
                self.subscribed.clear()
                await asyncio.sleep(0.05)

    async def __aenter__(self) -> Recorder:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def on(self, topic: str, since: float = 0.0) -> list[Heard]:
        """Messages on `topic` (MQTT wildcards not supported) heard after `since`."""
        return [h for h in self.heard if h.topic == topic and h.at >= since]

    def starting(self, prefix: str, since: float = 0.0) -> list[Heard]:
        """Messages on topics starting with `prefix` heard after `since`."""
        return [h for h in self.heard if h.topic.startswith(prefix) and h.at >= since]

    async def wait(self, predicate: Any, timeout: float = 10.0, what: str = "") -> None:
        """Wait until `predicate()` holds (checked at every message)."""

        async def _wait() -> None:
            while not predicate():
                self._new.clear()
                await self._new.wait()

        try:
            await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            tail = "\n".join(f"{h.topic} {h.payload[:120]!r}" for h in self.heard[-15:])
            raise AssertionError(f"timed out waiting for {what}; last heard:\n{tail}") from None


@contextlib.asynccontextmanager
async def broker(workdir: Path, **kw: Any) -> AsyncIterator[Mosquitto]:
    """A started broker, stopped afterwards whatever happened."""
    b = Mosquitto(workdir, **kw)
    b.start()
    try:
        yield b
    finally:
        b.stop()
