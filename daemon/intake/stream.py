"""The one decoding path from AMI bytes to messages, shared by the live intake and replay."""

from __future__ import annotations

from collections.abc import Callable

from daemon.intake.frames import FrameParser, FrameStats, Message

EventSink = Callable[[Message], None]


class AmiStream:
    """Feed raw AMI bytes; events go to `on_event`, action responses to `on_response`.

    `wanted` (event names) lets the caller drop events it never reads before they cost
    anything more than a prefix check; None keeps every event. `wanted_vars` does the same
    for VarSet events by variable name (None keeps every VarSet that `wanted` keeps).
    """

    def __init__(
        self,
        on_event: EventSink,
        on_response: EventSink | None = None,
        *,
        wanted: frozenset[str] | None = None,
        wanted_vars: frozenset[str] | None = None,
    ) -> None:
        self._parser = FrameParser(wanted_events=wanted, wanted_vars=wanted_vars)
        self._on_event = on_event
        self._on_response = on_response
        self._wanted = wanted

    @property
    def stats(self) -> FrameStats:
        """The framing counters."""
        return self._parser.stats

    @property
    def banner(self) -> str | None:
        """The greeting line, e.g. 'Asterisk Call Manager/11.0.0'."""
        return self._parser.banner

    def reset(self) -> None:
        """A new connection: forget partial data."""
        self._parser.reset()

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the end of a message."""
        return self._parser.buffered

    def feed(self, data: bytes) -> None:
        """Decode `data` and dispatch every complete message."""
        wanted = self._wanted
        for msg in self._parser.feed(data):
            name = msg.get("Event")
            if name is not None:
                if wanted is None or name in wanted:
                    self._on_event(msg)
                else:
                    self._parser.stats.skipped += 1
            elif self._on_response is not None:
                self._on_response(msg)
