"""The metrics worker: seeds the counters, refreshes the outbox gauge, writes the
textfile, serves HTTP.

- `seed()`: the stored counts (every day summed) become the counters' start, and the sink
  joins the bus with no await in between, so no event is counted twice or lost.
- `run()`: every `[metrics] interval` on the injected clock, reads the outbox by state
  and rewrites `[metrics] textfile` atomically: a temporary file in the same directory,
  written, fsynced, renamed over the old one (and the directory fsynced), so
  node_exporter's textfile collector reads the old file or the new one, never half of
  one. The disk work runs in a thread: the event loop never waits on fsync.
- `[metrics] listen`: a small HTTP/1.0 server on the event loop (asyncio streams, no
  thread): GET /metrics (or /) answers the text format rendered at that moment.
- `close()`: stops the server and writes the file a last time (the AMI link and the
  modem then show down), so a stopped daemon is not shown as connected.

A textfile or endpoint that fails is logged (the first time at WARNING) and tried again;
metrics never stop or slow texting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from daemon.clock import Clock
from daemon.config import MetricsConfig
from daemon.logsetup import kv
from daemon.metrics.collect import MESSAGE_STATES, Metrics, stored_names
from daemon.model import MessageState
from daemon.sinks.bus import EventBus
from daemon.store.store import Store, StoreError

log = logging.getLogger("daemon.metrics")

#: A scrape's request line and headers must arrive within this, and fit in this.
HTTP_READ_TIMEOUT = 5.0
HTTP_MAX_HEAD = 8192
#: The file mode of the textfile: node_exporter runs as another user and must read it.
TEXTFILE_MODE = 0o644


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets: `[::1]:9533`) as (host, port); ValueError if not."""
    text = listen.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{listen!r} is not host:port, e.g. 127.0.0.1:9533")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{listen!r}: write an IPv6 address in brackets, e.g. [::1]:9533")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{listen!r}: the port must be 1-65535")
    return host, port


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temp file beside it, fsync, rename, fsync the directory."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), TEXTFILE_MODE)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Exporter:
    """Runs the metrics of one daemon: see the module docstring."""

    def __init__(
        self, cfg: MetricsConfig, metrics: Metrics, store: Store, bus: EventBus, clock: Clock
    ) -> None:
        self._cfg = cfg
        self.metrics = metrics
        self._store = store
        self._bus = bus
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._write_failures = 0
        self._read_failures = 0
        #: Textfile writes done (tests and the journal).
        self.writes = 0
        #: The address the HTTP server listens on, once it does.
        self.address: tuple[str, int] | None = None

    async def seed(self) -> None:
        """Start the counters from the stored counts, then join the bus."""
        totals = {name: await self._store.counter(name) for name in stored_names()}
        self.metrics.seed(totals)
        self._bus.add(self.metrics)  # no await since the read: nothing missed or doubled
        log.info(
            kv(
                event="metrics_started",
                textfile=self._cfg.textfile or None,
                listen=self._cfg.listen or None,
                interval=f"{self._cfg.interval:g}s",
            )
        )

    async def run(self) -> None:
        """Serve HTTP (when asked) and refresh and write every interval, until cancelled."""
        if self._cfg.listen:
            await self._listen()
        while True:
            await self.refresh()
            await self.write()
            await self._clock.sleep(self._cfg.interval)

    async def close(self) -> None:
        """Stop serving; write the textfile a last time (the links now show down)."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        await self.write()

    # -- the outbox gauge --------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the outbox by state (the last reading stays when the database refuses)."""
        try:
            counts = {
                s: await self._store.count_messages({MessageState(s)}) for s in MESSAGE_STATES
            }
        except StoreError as exc:
            self._read_failures += 1
            level = logging.WARNING if self._read_failures == 1 else logging.DEBUG
            log.log(level, kv(event="metrics_error", during="outbox", error=exc))
            return
        self.metrics.set_outbox(counts)

    # -- the textfile ------------------------------------------------------------------

    async def write(self) -> None:
        """Rewrite the textfile (if one is configured) with the metrics now."""
        if not self._cfg.textfile:
            return
        data = self.metrics.render()  # on the loop: the counts are the loop's
        path = Path(self._cfg.textfile)
        try:
            await asyncio.to_thread(write_atomically, path, data)
        except OSError as exc:
            self._write_failures += 1
            level = logging.WARNING if self._write_failures == 1 else logging.DEBUG
            log.log(
                level,
                kv(event="metrics_error", during="textfile", path=path, error=exc),
            )
            return
        if self._write_failures:
            log.info(kv(event="metrics_recovered", during="textfile", path=path))
            self._write_failures = 0
        self.writes += 1

    # -- HTTP --------------------------------------------------------------------------

    async def _listen(self) -> None:
        try:
            host, port = parse_listen(self._cfg.listen)
            self._server = await asyncio.start_server(self._serve, host, port, limit=HTTP_MAX_HEAD)
        except (OSError, ValueError) as exc:
            # the daemon texts on without it; `textback check` names a bad address
            log.error(
                kv(event="metrics_error", during="listen", listen=self._cfg.listen, error=exc)
            )
            return
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        log.info(kv(event="metrics_listening", address=f"{sock[0]}:{sock[1]}"))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(HTTP_READ_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            if len(head) > HTTP_MAX_HEAD:
                return
            method, _, rest = head.partition(b" ")
            target = rest.partition(b" ")[0].partition(b"?")[0]
            if method not in (b"GET", b"HEAD"):
                status, body, ctype = b"405 Method Not Allowed", b"GET only\n", b"text/plain"
            elif target not in (b"/metrics", b"/"):
                status, body, ctype = b"404 Not Found", b"try /metrics\n", b"text/plain"
            else:
                status, body = b"200 OK", self.metrics.render()
                ctype = CONTENT_TYPE_PLAIN_0_0_4.encode()
            writer.write(
                b"HTTP/1.0 " + status + b"\r\nContent-Type: " + ctype
                + b"\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + (b"" if method == b"HEAD" else body)
            )  # fmt: skip
            with contextlib.suppress(OSError):
                await writer.drain()
        except OSError:
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
