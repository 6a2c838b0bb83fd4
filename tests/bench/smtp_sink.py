"""A real SMTP server in its own process, for the replies benchmark.

Run: `python -m tests.bench.smtp_sink` prints `PORT <n>` once it listens on a free
loopback port, then one JSON line per mail: {"token", "at", "content"}; `token` is the
`ref <token>` found in the mail (null if none), `at` the time (time.time()) its DATA was
handed over, `content` the whole mail in base64 for warm-up tokens ("w...") only.

Why a process of its own: in the benchmark's process the server's thread shared the GIL
with the modem simulator, so every mail the daemon sent slowed the simulated modem that
answers the daemon's sends; a mail server is another machine's work in an office.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import sys
import threading
import time
from typing import Any

from aiosmtpd.controller import Controller

_REF = re.compile(rb"ref ([a-z0-9]+)")


class _Handler:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        content = bytes(envelope.content)
        m = _REF.search(content)
        token = m.group(1).decode() if m else None
        line: dict[str, Any] = {"token": token, "at": now, "content": None}
        if token is not None and token.startswith("w"):
            line["content"] = base64.b64encode(content).decode()
        with self._lock:
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
        return "250 OK"


def main() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    controller = Controller(_Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
