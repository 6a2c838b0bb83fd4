"""The asyncio Protocol behind the live AMI connection (panoramisk's `protocol_factory`).

panoramisk 1.4's own `AMIProtocol.data_received` decodes each TCP read alone with
errors='ignore' (a UTF-8 character split across reads is lost) and builds a
case-insensitive `Message` per event (~30 us). This subclass keeps panoramisk's
request/response bookkeeping (`send`, `handle_message`, the `Action` futures that collect
multi-message answers such as CoreShowChannels) and replaces the reading side with
`AmiStream`, the same decoder `textback replay` uses: whole frames are decoded, events
nobody wants are dropped on the bytes level, and wanted events reach the sink as plain
dicts without touching panoramisk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from panoramisk.actions import Action, Command
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message as PanoramiskMessage

from daemon.intake.frames import FrameStats, Message
from daemon.intake.stream import AmiStream

# The journal name operators filter on: kept stable when modules move.
log = logging.getLogger("daemon.ami.protocol")

#: Events our own actions and the server's goodbye produce: always let through the filter.
CONTROL_EVENTS = frozenset(
    {"CoreShowChannel", "CoreShowChannelsComplete", "DBGetResponse", "DBGetComplete", "Shutdown"}
)


def plain(messages: list[Any]) -> list[Message]:
    """panoramisk Messages as plain dicts (without the "content" key panoramisk adds)."""
    return [{k: v for k, v in m.items() if k != "content"} for m in messages]


class AmiProtocol(AMIProtocol):  # type: ignore[misc]  # panoramisk ships no type hints
    """Reads AMI bytes through `AmiStream`; writes actions the panoramisk way.

    `on_event` gets every wanted event as a plain dict, in order.
    An exception raised by `on_event` is logged and counted, never kills the reader.

    Without a connection (`textback replay`), call `data_received` with the file's bytes in
    any pieces; `stream.buffered` at the end tells whether the input stopped mid-message.
    """

    def __init__(
        self,
        on_event: Callable[[Message], None],
        *,
        wanted: frozenset[str] | None = None,
        wanted_vars: frozenset[str] | None = None,
        on_data: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        stream_wanted = None if wanted is None else wanted | CONTROL_EVENTS
        self.stream = AmiStream(
            self._event, self._response, wanted=stream_wanted, wanted_vars=wanted_vars
        )
        self._on_event = on_event
        self._on_data = on_data
        self._wanted = wanted
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.factory: Any = None
        self.responses: dict[str, Any] = {}
        self.version: str | None = None
        self.log = log
        #: ActionID -> called with the complete answer (plain dicts) inside data_received,
        #: at its place in the stream, before any later event is dispatched.
        self.on_complete: dict[str, Callable[[list[Message]], None]] = {}
        self.events = 0
        self.handler_errors = 0
        self.shutdown = False
        #: Set (to the reason, or None) when the connection ends, however it ends; it is
        #: made in connection_made, so a protocol fed without a connection needs no loop.
        self.lost: asyncio.Future[BaseException | None] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; panoramisk's bookkeeping is set up by the manager."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.closed = False
        self.lost = asyncio.get_running_loop().create_future()
        self.stream.reset()

    def data_received(self, data: bytes) -> None:
        """Decode whole frames only (never a lone TCP read) and dispatch them."""
        if self._on_data is not None:
            self._on_data()
        self.stream.feed(data)
        if self.version is None and self.stream.banner is not None:
            self.version = self.stream.banner.partition("/")[2].strip()

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the waiting client, then let panoramisk fail what was pending."""
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(exc)
        if not self.closed and self.factory is not None:
            super().connection_lost(exc)
        self.closed = True

    def send(self, data: Any, as_list: bool | None = False) -> Any:
        """Write an action; return the future of its answer (panoramisk's `send`).

        Rewritten only because the stock one logs the whole action on a failed write,
        and a Login action carries the secret.
        """
        if not isinstance(data, Action):
            data = (Command if "Command" in data else Action)(data, as_list=as_list)
        data.as_list = as_list
        self.responses[data.id] = data
        if data.action_id:
            self.responses[data.action_id] = data
        if self.transport is None or self.transport.is_closing():
            data.future.set_exception(ConnectionError("AMI connection is closed"))
            data.future.exception()  # retrieved here; the caller sees it on await
        else:
            self.transport.write(str(data).encode("utf-8"))
        return data.future

    # -- dispatch ----------------------------------------------------------------------

    def _event(self, msg: Message) -> None:
        if "ActionID" in msg and msg["ActionID"] in self.responses:
            self._answer(msg)
            return
        name = msg["Event"]
        if name == "Shutdown":
            # Asterisk is stopping: it will close the socket; say why in the loss line.
            self.shutdown = True
        wanted = self._wanted
        if wanted is not None and name not in wanted:
            return
        self.events += 1
        try:
            self._on_event(msg)
        except Exception:
            self.handler_errors += 1
            log.exception("AMI event handler failed on %s event", name)

    def _response(self, msg: Message) -> None:
        if self.factory is None or not msg:
            return
        self._answer(msg)

    def _answer(self, msg: Message) -> None:
        """Part of an action's answer: panoramisk matches it to its Action."""
        aid = msg.get("ActionID")
        action = self.responses.get(aid) if aid is not None else None
        try:
            self.handle_message(PanoramiskMessage(msg))
        except Exception:
            # never let an odd answer kill the reader (asyncio would close the link)
            self.handler_errors += 1
            log.exception("AMI answer for %s could not be matched", aid)
            return
        if action is None or aid not in self.on_complete:
            return
        fut = action.future
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            callback = self.on_complete.pop(aid)
            result = fut.result()
            try:
                callback(plain(result if isinstance(result, list) else [result]))
            except Exception:
                self.handler_errors += 1
                log.exception("AMI answer handler failed for %s", aid)

    @property
    def stats(self) -> FrameStats:
        """The framing counters of this connection."""
        return self.stream.stats
