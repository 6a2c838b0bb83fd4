"""`[mqtt] url`, read: where the broker is and whether to speak TLS (no aiomqtt import:
`textback check` uses it)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

#: Socket options of the jobs link's connection (aiomqtt's `socket_options`). paho sets
#: no TCP_NODELAY, so a small packet sent right after an acknowledgement waited for
#: Nagle's algorithm (up to 40 ms on Linux): bench_sites measured a site's grant 44 ms
#: behind the claim it answers. Not the MQTT sink's: measured there (bench_mqtt, A/B on
#: one machine), Hangup -> missed_call p99 went from 15 ms to 45 ms with it.
SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


@dataclass(frozen=True, slots=True)
class Broker:
    """Where and how to connect, from `[mqtt] url`."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Broker:
        """mqtt://host[:port] or mqtts://host[:port]; ValueError for anything else."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"{url!r}: the scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"{url!r}: no host, e.g. mqtt://127.0.0.1:1883")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError(f"{url!r}: only mqtt[s]://host[:port]; login in username/password")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ValueError(f"{url!r}: {exc}") from exc
        return cls(parts.hostname, port, tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"
