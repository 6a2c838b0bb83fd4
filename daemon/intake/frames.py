"""Sans-I/O AMI framing: bytes in, one plain ``dict[str, str]`` per message out.

Written by hand rather than taken from panoramisk because panoramisk 1.4 decodes every TCP
read on its own (a UTF-8 character split across two reads is dropped) and spends ~30 us per
event on a case-insensitive dict and regex dispatch. Here bytes are buffered until a whole
message (ending in an empty line) is there, and only then decoded.

Events nobody reads can be dropped on the bytes level (`wanted_events`, `wanted_vars`): a
real stream is half VarSet, and skipping a frame costs a prefix slice instead of a decode
and a dict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

# The journal name operators filter on: kept stable when modules move.
log = logging.getLogger("daemon.ami.frames")

#: The first few problems of each kind are logged as warnings, the rest at debug level.
LOUD_REPORTS = 5

#: A message longer than this is dropped whole (and counted): memory stays bounded.
MAX_FRAME_BYTES = 256 * 1024

_TERM = b"\r\n\r\n"
_BANNER = b"Asterisk Call Manager/"
_EVENT = b"Event: "
_VARIABLE = b"\r\nVariable: "
_VARSET = b"VarSet"

#: Repeated headers that carry NAME=VALUE pairs; stored as "ChanVariable:NAME" keys.
_VAR_HEADERS = frozenset({"ChanVariable", "DestChanVariable"})

Message = dict[str, str]


@dataclass(slots=True)
class FrameStats:
    """Counters of what the parser saw and could not use."""

    frames: int = 0
    malformed_lines: int = 0
    oversized: int = 0
    decode_errors: int = 0
    skipped: int = 0

    @property
    def malformed(self) -> int:
        """Every kind of bad input together."""
        return self.malformed_lines + self.oversized + self.decode_errors


def parse_message(text: str, stats: FrameStats | None = None) -> Message:
    """Turn one decoded message (without its terminating blank line) into a dict."""
    if "ChanVariable" in text:
        return _parse_careful(text, stats)
    msg: Message = {}
    for line in text.split("\r\n"):
        key, sep, value = line.partition(": ")
        if sep and key:
            msg[key] = value
        else:
            # a rare line: "Key:value", no colon at all, or an empty key
            return _parse_careful(text, stats)
    return msg


def _parse_careful(text: str, stats: FrameStats | None) -> Message:
    msg: Message = {}
    for line in text.split("\r\n"):
        key, sep, value = line.partition(": ")
        if not sep:
            key, sep, value = line.partition(":")
            if not sep or not key:
                if line and stats is not None:
                    _bad_line(stats, line)
                continue
        if not key:
            if stats is not None:
                _bad_line(stats, line)
            continue
        if key in _VAR_HEADERS:
            name, _, val = value.partition("=")
            msg[f"{key}:{name}"] = val
        else:
            msg[key] = value
    return msg


def _bad_line(stats: FrameStats, line: str) -> None:
    stats.malformed_lines += 1
    level = logging.WARNING if stats.malformed_lines <= LOUD_REPORTS else logging.DEBUG
    log.log(
        level,
        "AMI line without 'Key: value' skipped (%d so far): %.80r",
        stats.malformed_lines,
        line,
    )


class FrameParser:
    """Cuts an AMI byte stream into messages, whatever the read boundaries are.

    `wanted_events`: event names to keep (None keeps all); others are skipped before
    decoding. `wanted_vars`: of VarSet events, keep only those setting these variables
    (None keeps all VarSet events that `wanted_events` lets through).
    """

    __slots__ = (
        "_buf",
        "_discarding",
        "_max",
        "_seen_start",
        "_wanted",
        "_wanted_vars",
        "banner",
        "stats",
    )

    def __init__(
        self,
        max_frame: int = MAX_FRAME_BYTES,
        *,
        wanted_events: frozenset[str] | None = None,
        wanted_vars: frozenset[str] | None = None,
    ) -> None:
        self._buf = b""
        self._max = max_frame
        self._discarding = False
        self._seen_start = False
        self._wanted = None if wanted_events is None else {e.encode() for e in wanted_events}
        self._wanted_vars = None if wanted_vars is None else {v.encode() for v in wanted_vars}
        self.banner: str | None = None
        self.stats = FrameStats()

    def reset(self) -> None:
        """Forget any partial data (a new connection starts)."""
        self._buf = b""
        self._discarding = False
        self._seen_start = False

    def feed(self, data: bytes) -> list[Message]:
        """Add bytes; return every message they completed, in order."""
        buf = self._buf + data if self._buf else bytes(data)
        if not self._seen_start:
            if len(buf) < len(_BANNER) and _BANNER.startswith(buf):
                self._buf = buf
                return []
            self._seen_start = True
            if buf.startswith(_BANNER):
                end = buf.find(b"\r\n")
                if end < 0:
                    self._seen_start = False
                    self._buf = buf
                    return []
                self.banner = buf[:end].decode("utf-8", "replace")
                buf = buf[end + 2 :]
        parts = buf.split(_TERM)
        rest = parts.pop()
        out: list[Message] = []
        if parts:
            if self._discarding:
                # the tail of a message already counted as oversized
                self._discarding = False
                del parts[0]
            wanted = self._wanted
            wanted_vars = self._wanted_vars
            stats = self.stats
            limit = self._max
            for raw in parts:
                if wanted is not None and raw.startswith(_EVENT):
                    nl = raw.find(b"\r\n", 7)
                    name = raw[7:nl] if nl > 0 else raw[7:]
                    if name not in wanted:
                        stats.skipped += 1
                        continue
                    if wanted_vars is not None and name == _VARSET:
                        i = raw.find(_VARIABLE)
                        if i > 0:
                            j = raw.find(b"\r\n", i + 12)
                            if (raw[i + 12 : j] if j > 0 else raw[i + 12 :]) not in wanted_vars:
                                stats.skipped += 1
                                continue
                if len(raw) > limit:
                    self._oversized(len(raw))
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    stats.decode_errors += 1
                    level = (
                        logging.WARNING if stats.decode_errors <= LOUD_REPORTS else logging.DEBUG
                    )
                    log.log(level, "AMI message is not UTF-8 (%s); kept with U+FFFD", exc.reason)
                    text = raw.decode("utf-8", "replace")
                if text.startswith("\r\n"):
                    text = text.lstrip("\r\n")
                    if not text:
                        continue
                elif not text:
                    continue
                stats.frames += 1
                out.append(parse_message(text, stats))
        if len(rest) > self._max:
            # keep the last 3 bytes: the terminator may be split across reads
            if not self._discarding:
                self._oversized(len(rest))
            self._discarding = True
            rest = rest[-3:]
        self._buf = rest
        return out

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the end of a message."""
        return len(self._buf)

    def _oversized(self, size: int) -> None:
        self.stats.oversized += 1
        level = logging.WARNING if self.stats.oversized <= LOUD_REPORTS else logging.DEBUG
        log.log(level, "AMI message over %d bytes (%d+) dropped", self._max, size)
