"""A small AMI server that replays a recorded trace over TCP (tests, demo, benchmarks).

It speaks the part of the Asterisk Manager handshake the intake uses: the banner, Login
(Success, or "Authentication failed" and a closed socket, as Asterisk does; "Events: off"
holds the stream back), Events (EventMask on starts it), Ping, CoreShowChannels (the
channels the trace has opened and not hung up so far), Getvar, DBGet (from `astdb`, as
Asterisk 13+ answers it), Redirect, ShowDialPlan (from `dialplan`), Logoff. Any action
can be refused with "Permission denied" (`refuse`), and the trace can be served as a
differently configured Asterisk would send it: only some read classes, no `channelvars`,
no `timestampevents`. After a good Login it streams the trace's events, as fast as the
socket takes them or paced by their `Timestamp:` headers. It can cut the connection at
given byte offsets and, on the next connection, carries on from the next whole event
(what a real Asterisk does: events in the gap are lost). The stream position survives
reconnects, so one server plays one trace once across any number of connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from daemon.intake.frames import FrameParser, Message

# The journal name operators filter on: kept stable when modules move.
log = logging.getLogger("daemon.ami.replayserver")

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
_TERM = b"\r\n\r\n"

#: CoreShowChannel fields, as Asterisk 22 sends them, filled from the trace's events.
_CHANNEL_FIELDS = (
    "Channel",
    "ChannelState",
    "ChannelStateDesc",
    "CallerIDNum",
    "CallerIDName",
    "ConnectedLineNum",
    "ConnectedLineName",
    "Language",
    "AccountCode",
    "Context",
    "Exten",
    "Priority",
    "Uniqueid",
    "Linkedid",
)


def trace_body(raw: bytes) -> bytes:
    """The events of a recorded trace: without the banner and the recorder's own responses."""
    if raw.startswith(b"Asterisk Call Manager/"):
        raw = raw[raw.index(b"\r\n") + 2 :]
    frames = raw.split(_TERM)
    keep = [f for f in frames if not (f.startswith(b"Response: ") and b"ActionID: lab-" in f)]
    return _TERM.join(keep)


def _as_configured(
    body: bytes, read: frozenset[str] | None, *, channelvars: bool, timestamps: bool
) -> bytes:
    """The trace as an Asterisk with these manager.conf settings sends it."""
    if read is None and channelvars and timestamps:
        return body
    frames = []
    for frame in body.split(_TERM):
        lines = frame.split(b"\r\n")
        if read is not None:
            priv = next((x[11:] for x in lines if x.startswith(b"Privilege: ")), None)
            if priv is not None:
                classes = {c.strip().decode().lower() for c in priv.split(b",")} - {"all"}
                if not classes & read:
                    continue
        if not channelvars:
            lines = [x for x in lines if not x.startswith(b"ChanVariable: ")]
        if not timestamps:
            lines = [x for x in lines if not x.startswith(b"Timestamp: ")]
        frames.append(b"\r\n".join(lines))
    return _TERM.join(frames)


def encode(msg: dict[str, str]) -> bytes:
    """One AMI message on the wire."""
    return "".join(f"{k}: {v}\r\n" for k, v in msg.items()).encode() + b"\r\n"


@dataclass
class ServerStats:
    """What the server saw, for tests to assert on."""

    connections: int = 0
    logins: int = 0
    failed_logins: int = 0
    pings: int = 0
    pongs: int = 0
    actions: list[str] = field(default_factory=list)
    drops: int = 0


class ReplayServer:
    """Serve `body` (AMI event bytes, see `trace_body`) to whoever logs in.

    `speed`: None streams as fast as the socket takes it; a number paces events by their
    `Timestamp:` headers divided by it. `chunk`: bytes per write (None: 64 KiB).
    `drop_at`: stream offsets at which to close the connection (each once).
    `answer_ping`: set False to play a half-open link that swallows Pings.
    `splits`: exact stream offsets to end writes at (to test read boundaries).
    `fully_booted`: send a FullyBooted event after Login, as Asterisk does.
    `refuse`: action names (lower case) answered "Permission denied", as for a manager
    user without the write class the action needs.
    `gap_events`: after a cut, this many further events are lost (they happened while
    nobody was connected) before the next connection's stream resumes.
    `read`: the manager user's read classes (None: all); events of other classes are
    never sent (FullyBooted is class system).
    `channelvars`: False drops the ChanVariable lines (manager.conf without channelvars).
    `timestamps`: False drops the Timestamp lines (timestampevents = no).
    `dialplan`: context -> extensions, for ShowDialPlan.
    Clear `flowing` to pause the stream (a quiet PBX); set it to go on.
    """

    def __init__(
        self,
        body: bytes,
        *,
        username: str = "textback",
        secret: str = "secret",
        speed: float | None = None,
        chunk: int | None = None,
        drop_at: Iterable[int] = (),
        answer_ping: bool = True,
        stream: bool = True,
        splits: Iterable[int] = (),
        fully_booted: bool = True,
        gap_events: int = 0,
        refuse: Iterable[str] = (),
        read: Iterable[str] | None = None,
        channelvars: bool = True,
        timestamps: bool = True,
        dialplan: dict[str, list[str]] | None = None,
    ) -> None:
        self.read = None if read is None else frozenset(c.lower() for c in read)
        self.dialplan = dict(dialplan or {})
        self.body = _as_configured(body, self.read, channelvars=channelvars, timestamps=timestamps)
        self.username = username
        self.secret = secret
        self.speed = speed
        self.chunk = chunk or 65536
        self.drop_at = sorted(set(drop_at))
        self.answer_ping = answer_ping
        self.stream = stream
        self.splits = sorted(set(splits))
        self.fully_booted = fully_booted and (self.read is None or "system" in self.read)
        self.gap_events = gap_events
        self.refuse = frozenset(refuse)
        self._cut = False
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.offset = 0
        self.stats = ServerStats()
        #: Getvar answers: (channel, variable) -> value ("" for anything not listed).
        self.getvar_values: dict[tuple[str, str], str] = {}
        #: The Asterisk database DBGet reads: (family, key) -> value.
        self.astdb: dict[tuple[str, str], str] = {}
        self.finished = asyncio.Event()
        self.connected = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_trace(cls, path: Path | str, **kwargs: object) -> ReplayServer:
        """A server for a recorded `.ami` file."""
        return cls(trace_body(Path(path).read_bytes()), **kwargs)  # type: ignore[arg-type]

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; return the port (0 picks a free one)."""
        self._server = await asyncio.start_server(self._serve, host, port)
        return self.port

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        # closing the sockets ends every connection task; cancelling them instead makes
        # asyncio's stream callback log a spurious CancelledError (Python 3.11)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=2.0)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def drop(self) -> None:
        """Close every client connection now (the stream position is kept)."""
        self._cut = True
        for w in list(self._writers):
            self.stats.drops += 1
            w.close()

    # -- one connection ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.stats.connections += 1
        self.connected.set()
        conn = _Conn(writer)
        streamer: asyncio.Task[None] | None = None
        try:
            writer.write(BANNER)
            parser = FrameParser()
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for msg in parser.feed(data):
                    done, start = self._answer(conn, msg)
                    if start and streamer is None and self.stream:
                        streamer = asyncio.create_task(self._stream(conn))
                    if done:
                        await writer.drain()
                        return
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if streamer is not None:
                streamer.cancel()
                await asyncio.gather(streamer, return_exceptions=True)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)

    def _answer(self, conn: _Conn, msg: Message) -> tuple[bool, bool]:
        """Answer one action; return (close the connection, start streaming)."""
        action = msg.get("Action", "")
        aid = msg.get("ActionID")
        head = {"ActionID": aid} if aid is not None else {}
        self.stats.actions.append(action)
        name = action.lower()
        if name == "login":
            if msg.get("Username") == self.username and msg.get("Secret") == self.secret:
                self.stats.logins += 1
                self._resume()
                conn.send(
                    encode({"Response": "Success", **head, "Message": "Authentication accepted"})
                )
                if self.fully_booted:
                    booted = {"Event": "FullyBooted", "Privilege": "system,all"}
                    conn.send(encode({**booted, "Status": "Fully Booted"}))
                conn.logged_in = True
                # "Events: off" in the Login: no events until the Events action turns them on
                return False, msg.get("Events", "on").lower() != "off"
            self.stats.failed_logins += 1
            conn.send(encode({"Response": "Error", **head, "Message": "Authentication failed"}))
            return True, False
        if not conn.logged_in:
            conn.send(encode({"Response": "Error", **head, "Message": "Permission denied"}))
            return False, False
        if name in self.refuse:
            conn.send(encode({"Response": "Error", **head, "Message": "Permission denied"}))
        elif name == "ping":
            self.stats.pings += 1
            if self.answer_ping:
                self.stats.pongs += 1
                conn.send(
                    encode(
                        {
                            "Response": "Success",
                            **head,
                            "Ping": "Pong",
                            "Timestamp": f"{time.time():.6f}",
                        }
                    )
                )
        elif name == "coreshowchannels":
            # built when written, so the list matches the events sent before it
            conn.send(lambda: self._channel_list(head))
        elif name == "events":
            on = msg.get("EventMask", "").lower() not in ("off", "")
            conn.send(encode({"Response": "Success", **head, "Events": "On" if on else "Off"}))
            return False, on
        elif name == "getvar":
            conn.send(
                encode(
                    {
                        "Response": "Success",
                        **head,
                        "Variable": msg.get("Variable", ""),
                        "Value": self.getvar_values.get(
                            (msg.get("Channel", ""), msg.get("Variable", "")), ""
                        ),
                    }
                )
            )
        elif name == "dbget":
            conn.send(self._dbget(msg, head))
        elif name == "redirect":
            conn.send(encode({"Response": "Success", **head, "Message": "Redirect successful"}))
        elif name == "showdialplan":
            conn.send(self._dialplan(head))
        elif name == "logoff":
            conn.send(
                encode({"Response": "Goodbye", **head, "Message": "Thanks for all the fish."})
            )
            return True, False
        else:
            conn.send(encode({"Response": "Error", **head, "Message": "Invalid/unknown command"}))
        return False, False

    def _dialplan(self, head: dict[str, str]) -> bytes:
        start = {"Response": "Success", **head, "EventList": "start"}
        out = [encode({**start, "Message": "DialPlan list will follow"})]
        n = 0
        for context, extens in self.dialplan.items():
            for exten in extens or [""]:
                row = {"Event": "ListDialplan", **head, "Context": context}
                if exten:
                    row |= {"Extension": exten, "Priority": "1", "Application": "NoOp"}
                    row |= {"AppData": "", "Registrar": "pbx_config"}
                out.append(encode(row))
                n += 1
        done = {"EventList": "Complete", "ListItems": str(n)}
        ctx = {"ListExtensions": str(n), "ListPriorities": str(n)}
        out.append(encode({"Event": "ShowDialPlanComplete", **head, **done, **ctx}))
        return b"".join(out)

    def _dbget(self, msg: Message, head: dict[str, str]) -> bytes:
        family, key = msg.get("Family", ""), msg.get("Key", "")
        value = self.astdb.get((family, key))
        if value is None:
            return encode({"Response": "Error", **head, "Message": "Database entry not found"})
        start = {"Response": "Success", **head, "EventList": "start"}
        out = [encode({**start, "Message": "Result will follow"})]
        entry = {"Family": family, "Key": key, "Val": value}
        out.append(encode({"Event": "DBGetResponse", **entry, **head}))
        done = {"EventList": "Complete", "ListItems": "1"}
        out.append(encode({"Event": "DBGetComplete", **head, **done}))
        return b"".join(out)

    def _resume(self) -> None:
        """A new session starts at a whole event; what happened while nobody was
        connected (the rest of a cut event, and `gap_events` more) is lost."""
        body = self.body
        if self.offset and not body.endswith(_TERM, 0, self.offset):
            nxt = body.find(_TERM, self.offset)
            self.offset = len(body) if nxt < 0 else nxt + 4
        if self._cut:
            self._cut = False
            for _ in range(self.gap_events):
                nxt = body.find(_TERM, self.offset)
                self.offset = len(body) if nxt < 0 else nxt + 4

    def _channel_list(self, head: dict[str, str]) -> bytes:
        channels = self.channels_in_progress()
        out = [
            encode(
                {
                    "Response": "Success",
                    **head,
                    "EventList": "start",
                    "Message": "Channels will follow",
                }
            )
        ]
        out += [encode({"Event": "CoreShowChannel", **head, **ch}) for ch in channels]
        done = {"EventList": "Complete", "ListItems": str(len(channels))}
        out.append(encode({"Event": "CoreShowChannelsComplete", **head, **done}))
        return b"".join(out)

    def channels_in_progress(self) -> list[dict[str, str]]:
        """Channels the stream so far has created and not hung up, as CoreShowChannel says.

        Built from the events already sent: each channel's latest state, its current
        dialplan application, its bridge, and how long it has existed.
        """
        seen: dict[str, dict[str, str]] = {}
        born: dict[str, float] = {}
        last = 0.0
        cut = self.body.rfind(_TERM, 0, self.offset)
        sent = self.body[: cut + 4] if cut >= 0 else b""  # whole events only
        for msg in FrameParser().feed(sent):
            uid = msg.get("Uniqueid")
            event = msg.get("Event")
            with contextlib.suppress(ValueError):
                last = float(msg.get("Timestamp", "")) if "Timestamp" in msg else last
            if not uid or not event:
                continue
            if event == "Hangup":
                seen.pop(uid, None)
                continue
            if event != "Newchannel" and uid not in seen:
                continue
            ch = seen.setdefault(uid, {})
            born.setdefault(uid, last)
            ch.update({k: msg[k] for k in _CHANNEL_FIELDS if k in msg})
            if event == "Newexten":
                ch["Application"] = msg.get("Application", "")
                ch["ApplicationData"] = msg.get("AppData", "")
            elif event == "BridgeEnter":
                ch["BridgeId"] = msg.get("BridgeUniqueid", "")
            elif event == "BridgeLeave":
                ch["BridgeId"] = ""
        out = []
        for uid, ch in seen.items():
            row = {k: ch.get(k, "") for k in _CHANNEL_FIELDS}
            secs = max(0, int(last - born[uid]))
            row["Application"] = ch.get("Application", "")
            row["ApplicationData"] = ch.get("ApplicationData", "")
            row["Duration"] = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
            row["BridgeId"] = ch.get("BridgeId", "")
            out.append(row)
        return out

    async def _stream(self, conn: _Conn) -> None:
        body = self.body
        started = time.monotonic()
        first_ts: float | None = None
        try:
            splits = [s for s in self.splits if s > self.offset]
            while self.offset < len(body):
                if not self.flowing.is_set():
                    await self.flowing.wait()
                end = min(len(body), self.offset + self.chunk)
                while splits and splits[0] <= self.offset:
                    del splits[0]
                if splits and splits[0] < end:
                    end = splits[0]
                if self.speed is not None:
                    end = self._next_end(self.offset)
                    when = self._timestamp(self.offset, end)
                    if when is not None:
                        if first_ts is None:
                            first_ts = when
                        delay = (when - first_ts) / self.speed - (time.monotonic() - started)
                        if delay > 0:
                            await asyncio.sleep(delay)
                if self.drop_at and self.drop_at[0] <= end:
                    end = max(self.offset, self.drop_at[0])
                    del self.drop_at[0]
                    conn.write(body[self.offset : end])
                    self.offset = end
                    self._cut = True
                    await conn.writer.drain()
                    self.stats.drops += 1
                    conn.writer.close()
                    return
                conn.write(body[self.offset : end])
                self.offset = end
                conn.at_boundary = body.endswith(_TERM, 0, end)
                if conn.at_boundary:
                    conn.flush()
                await conn.writer.drain()
                if self.chunk < 65536 or splits:
                    # let small writes leave as separate segments
                    await asyncio.sleep(0)
            self.finished.set()
        except (ConnectionError, OSError):
            pass

    def _next_end(self, pos: int) -> int:
        nxt = self.body.find(_TERM, pos)
        return len(self.body) if nxt < 0 else nxt + 4

    def _timestamp(self, start: int, end: int) -> float | None:
        i = self.body.find(b"\r\nTimestamp: ", start, end)
        if i < 0:
            return None
        j = self.body.find(b"\r\n", i + 13, end)
        try:
            return float(self.body[i + 13 : j])
        except ValueError:
            return None


class _Conn:
    """One client connection: writes answers only between events, as Asterisk does."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.logged_in = False
        self.at_boundary = True
        self._pending: list[bytes | Callable[[], bytes]] = []

    def send(self, data: bytes | Callable[[], bytes]) -> None:
        """Write an answer now if between events, else after the event being written."""
        if self.at_boundary:
            self.writer.write(data if isinstance(data, bytes) else data())
        else:
            self._pending.append(data)

    def write(self, data: bytes) -> None:
        self.at_boundary = False
        self.writer.write(data)

    def flush(self) -> None:
        for data in self._pending:
            self.writer.write(data if isinstance(data, bytes) else data())
        self._pending.clear()
