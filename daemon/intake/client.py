"""AMI intake: login, keepalive, reconnect with capped backoff, resync after every gap.

panoramisk does the session work it does well: `Manager.send_action` and its `Action`
objects (ActionIDs, serialising actions, matching responses and collecting multi-message
answers like CoreShowChannels' event list), and its `AMIProtocol` bookkeeping, which our
`AmiProtocol` subclasses. Four things in panoramisk 1.4 are wrong for a daemon, so this
module drives them itself:

- reading: `AmiProtocol` decodes whole frames (panoramisk decodes every TCP read alone);
- reconnecting: `Manager.connection_lost` schedules a fixed 2 s reconnect with
  `loop.call_later` that `Manager.close()` does not cancel; our `_Manager` never schedules
  one, and `AmiClient.run` reconnects with capped exponential backoff on the injected clock;
- keepalive: `Manager.ping` never looks at the answer; we send the Ping action through
  panoramisk and give the Pong a deadline (`ping_timeout`): none means a dead link;
- connecting: `Manager.connect` retries on its own timer too, so the TCP connect and the
  Login action are awaited here instead;
- speed: panoramisk builds a case-insensitive Message and runs a regex per event (~30 us);
  `AmiProtocol` drops unwanted events unparsed and hands wanted ones over as plain dicts.

After each login: Login with "Events: off", then CoreShowChannels and "Events: on" in one
write, so the resync snapshot reaches the tracker before any event of the new connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from panoramisk.manager import Manager

from daemon.clock import Clock
from daemon.config import AmiConfig
from daemon.errors import TextbackError
from daemon.intake.frames import Message
from daemon.intake.protocol import AmiProtocol, plain

# The journal name operators filter on: kept stable when modules move.
log = logging.getLogger("daemon.ami.client")

#: First reconnect delay; doubles on every failed attempt up to `AmiConfig.max_backoff`.
BASE_BACKOFF = 1.0
#: How many steps a refused login moves the backoff at once: wrong credentials will not
#: fix themselves in a second, so the wait reaches the longest one after two attempts.
AUTH_FAILURE_STEPS = 2
#: Gaps kept in memory for `AmiClient.gaps` (all of them are counted and logged).
GAPS_KEPT = 100


class AmiError(TextbackError):
    """Base of every intake error."""


class AmiLoginError(AmiError):
    """Asterisk refused the Login action (wrong username or secret, or not permitted)."""


class AmiConnectionLost(AmiError):
    """The connection ended; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AmiTimeout(AmiError, TimeoutError):
    """An action got no answer in time; the message names the action."""


@dataclass(slots=True)
class AmiCounters:
    """What the intake did, for logs, `textback stats` and tests."""

    connect_attempts: int = 0
    connects: int = 0
    connect_failures: int = 0
    login_failures: int = 0
    losses: int = 0
    pings: int = 0
    pongs: int = 0
    ping_timeouts: int = 0
    gaps: int = 0
    gap_seconds: float = 0.0
    resyncs: int = 0
    resync_failures: int = 0
    events: int = 0
    handler_errors: int = 0
    unexpected_errors: int = 0
    malformed: int = 0
    skipped: int = 0
    last_backoff: float = 0.0
    backoffs: list[float] = field(default_factory=list)


class _Manager(Manager):  # type: ignore[misc]  # panoramisk ships no type hints
    """panoramisk's Manager without its own reconnect and ping timers."""

    def connection_lost(self, exc: BaseException | None) -> None:
        # Stock: log.error + loop.call_later(2, self.connect), not cancellable by close().
        self._connected = False

    def ping(self) -> None:  # pragma: no cover - never scheduled here
        return None


EventCallback = Callable[[Message], None]
ResyncCallback = Callable[[list[Message], float, float], None]


class AmiClient:
    """The AMI intake: one connection at a time, reconnecting until `close()`.

    `on_event` gets each wanted event as a plain dict (the event's own `Timestamp:` header
    is left for the tracker). After every successful login, `on_resync(channels, gap_from,
    gap_to)` gets the channels Asterisk reports in progress (CoreShowChannel events);
    `gap_from == gap_to` on the first connection. The Login asks for no events and the
    Events action turns them on right after the CoreShowChannels list, so the snapshot
    comes before any event of the new connection and every later event follows it once.
    `wanted`/`wanted_vars` drop other events (and VarSets of other variables) unparsed.
    `jitter` (0..1) shortens each backoff by a random share, so many daemons restarted
    together do not reconnect in step.
    """

    def __init__(
        self,
        cfg: AmiConfig,
        *,
        on_event: EventCallback,
        on_resync: ResyncCallback | None,
        clock: Clock,
        wanted: frozenset[str] | None,
        wanted_vars: frozenset[str],
        jitter: float = 0.0,
    ) -> None:
        self._cfg = cfg
        self._on_event = on_event
        self._on_resync = on_resync
        self._clock = clock
        self._wanted = wanted
        self._wanted_vars = wanted_vars
        self._jitter = jitter
        self._manager: Any = None
        self._protocol: AmiProtocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._closing = False
        self._logged_in = False
        self._attempt = 0
        self._failing = False
        self._last_rx = 0.0
        self._lost_at: float | None = None
        self._resync_from: float | None = None
        self._resync_seq = 0
        self._counters = AmiCounters()
        self.gaps: deque[tuple[float, float]] = deque(maxlen=GAPS_KEPT)
        self.banner: str | None = None
        #: What the intake is doing: idle, connecting, logging_in, resyncing, up (serving,
        #: pinging), backoff (waiting to reconnect) or closed. For status lines and tests.
        self.state = "idle"

    # -- public ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while logged in on a live connection."""
        return self._logged_in and self._protocol is not None and not self._protocol.closed

    @property
    def counters(self) -> AmiCounters:
        """A snapshot of the counters, including the live connection's."""
        snap = dataclasses.replace(self._counters, backoffs=list(self._counters.backoffs))
        protocol = self._protocol
        if protocol is not None:
            snap.events += protocol.events
            snap.handler_errors += protocol.handler_errors
            snap.malformed += protocol.stats.malformed
            snap.skipped += protocol.stats.skipped
        return snap

    @property
    def where(self) -> str:
        """host:port, for log lines."""
        return f"{self._cfg.host}:{self._cfg.port}"

    async def start(self) -> None:
        """Run the intake in a background task (stopped by `close()`)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="ami-intake")

    async def close(self) -> None:
        """Stop for good: no reconnect is attempted after this returns."""
        self._closing = True
        self.state = "closed"
        self._stop.set()
        self._drop_connection()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # a caller cancelled while this waits is cancelled (suppress would swallow it)
            await asyncio.gather(task, return_exceptions=True)

    async def run(self) -> None:
        """Connect, serve, and reconnect with backoff until `close()`."""
        while not self._closing:
            auth_failed = False
            try:
                await self._session()
            except AmiLoginError as exc:
                auth_failed = True
                self._counters.login_failures += 1
                self._note_failure(
                    f"AMI login to {self.where} as {self._cfg.username} failed: {exc}"
                )
            except (OSError, AmiError) as exc:
                if not self._closing:
                    self._note_loss(exc)
            except Exception:
                # a bug, not the network: say so loudly, then carry on like after a loss
                self._counters.unexpected_errors += 1
                log.exception("AMI intake: unexpected error, reconnecting")
            finally:
                self._finish_connection()
            if self._stop.is_set():
                break
            delay = self._next_backoff(auth_failed)
            self.state = "backoff"
            if await self._wait(self._clock.sleep(delay)):
                break
        self.state = "closed"

    async def action(self, action: dict[str, str], timeout: float | None = None) -> list[Message]:
        """Send one AMI action; return its response (and any list events) as plain dicts.

        Raises AmiError when not connected, AmiTimeout when no complete answer arrives
        within `timeout` (default `ping_timeout`) on the injected clock.
        """
        if not self.connected:
            raise AmiError(f"AMI not connected, cannot send {action.get('Action')}")
        return await self._request(action, timeout)

    async def db_get(self, family: str, key: str, timeout: float | None = None) -> str | None:
        """One Asterisk database entry (AMI DBGet): its value, None when there is none.

        Asterisk answers "Result will follow", a DBGetResponse event with `Val`, then
        DBGetComplete; a missing entry is an Error "Database entry not found". Raises
        AmiError when not connected or refused (a manager user without write = system or
        reporting), AmiTimeout when no answer comes within `timeout`.
        """
        for part in (family, key):
            if not part or any(ch in part for ch in "\r\n:") or len(part) > 80:
                raise AmiError(f"not a database family or key: {part!r}")
        answer = await self.action({"Action": "DBGet", "Family": family, "Key": key}, timeout)
        head = answer[0] if answer else {}
        if head.get("Response") != "Success":
            message = head.get("Message", "no answer")
            if "not found" in message.lower():
                return None
            raise AmiError(f"DBGet {family}/{key} refused: {message}")
        for msg in answer[1:]:
            if msg.get("Event") == "DBGetResponse":
                return msg.get("Val", "")
        return None

    # -- one connection ----------------------------------------------------------------

    async def _session(self) -> None:
        cfg = self._cfg
        loop = asyncio.get_running_loop()
        self._counters.connect_attempts += 1
        self.state = "connecting"

        def factory() -> AmiProtocol:
            return AmiProtocol(
                self._on_event,
                wanted=self._wanted,
                wanted_vars=self._wanted_vars,
                on_data=self._touch,
            )

        manager = _Manager(
            host=cfg.host,
            port=cfg.port,
            username=cfg.username,
            secret=cfg.secret,
            loop=loop,
            protocol_factory=factory,
            log=logging.getLogger("daemon.ami.panoramisk"),
        )
        self._manager = manager
        try:
            # bounded: a black-holed host would otherwise hang the kernel's SYN retries
            _, protocol = await self._race(
                loop.create_connection(factory, cfg.host, cfg.port),
                f"TCP connect to {self.where}",
                cfg.ping_timeout,
            )
        except (OSError, AmiTimeout):
            self._counters.connect_failures += 1
            raise
        assert isinstance(protocol, AmiProtocol)
        self._protocol = protocol
        # What Manager.connection_made would set up, minus its Login-and-pinger timers.
        protocol.factory = manager
        protocol.config = manager.config
        protocol.encoding = manager.encoding = "utf8"
        manager.responses = protocol.responses
        manager.protocol = protocol
        manager._connected = True
        self.state = "logging_in"
        resp = (
            await self._request(
                {
                    "Action": "Login",
                    "Username": cfg.username,
                    "Secret": cfg.secret,
                    # off until the resync: the snapshot comes before any event
                    "Events": "off",
                },
                None,
            )
        )[0]
        if resp.get("Response") != "Success":
            raise AmiLoginError(resp.get("Message") or resp.get("Response") or "no reason given")
        self.banner = protocol.stream.banner
        self._logged_in = True
        self._attempt = 0
        self._failing = False
        self._counters.connects += 1
        log.info(
            "AMI connected to %s as %s (%s)", self.where, cfg.username, self.banner or "no banner"
        )
        self.state = "resyncing"
        await self._resync(protocol)
        self.state = "up"
        await self._keepalive(protocol)

    async def _resync(self, protocol: AmiProtocol) -> None:
        now = self._clock.now()
        if self._lost_at is not None:
            # the gap is over at login: what happens from here on is seen
            gap_from, self._lost_at = self._lost_at, None
            if self._resync_from is None:
                self._resync_from = gap_from
            self._counters.gaps += 1
            self._counters.gap_seconds += max(0.0, now - gap_from)
            self.gaps.append((gap_from, now))
            log.warning(
                "AMI gap from %.3f to %.3f (%.1f s): events in it are lost, resyncing",
                gap_from,
                now,
                now - gap_from,
            )
        self._resync_seq += 1
        aid = f"textback-resync-{self._resync_seq}"

        def complete(answer: list[Message]) -> None:
            # Runs inside data_received, right where the list ends in the stream: the
            # tracker gets the snapshot after exactly the events sent before it.
            if answer and answer[0].get("Response") not in (None, "Success"):
                self._counters.resync_failures += 1
                log.warning(
                    "AMI resync refused: %s (manager.conf: the user needs write = reporting); "
                    "calls in progress across the gap may be misjudged",
                    answer[0].get("Message", answer[0].get("Response")),
                )
                return
            channels = [m for m in answer if m.get("Event") == "CoreShowChannel"]
            self._counters.resyncs += 1
            # a connection lost before its resync finished: this one covers both gaps
            gap_from = self._resync_from if self._resync_from is not None else now
            self._resync_from = None
            log.info("AMI resync: %d channel(s) in progress", len(channels))
            if self._on_resync is not None:
                try:
                    self._on_resync(channels, gap_from, now)
                except Exception:
                    self._counters.handler_errors += 1
                    log.exception("AMI resync handler failed")

        protocol.on_complete[aid] = complete
        # Both actions in one go: Asterisk answers the list, then turns events on, so the
        # tracker gets the snapshot first and every later event after it, none twice.
        listing = self._send({"Action": "CoreShowChannels", "ActionID": aid})
        events_on = self._send({"Action": "Events", "EventMask": "on"})
        try:
            await self._answer(listing, "CoreShowChannels", None)
        except AmiTimeout as exc:
            self._counters.resync_failures += 1
            log.warning("AMI resync failed: %s; calls in progress may be misjudged", exc)
        finally:
            protocol.on_complete.pop(aid, None)
        try:
            answer = await self._answer(events_on, "Events", None)
        except AmiTimeout:
            # manager.conf "brokeneventsaction = yes" sends no answer when all events go on
            log.warning("AMI: no answer to the Events action; assuming events are on")
            return
        if answer and answer[0].get("Response") != "Success":
            raise AmiError(f"Asterisk refused to send events: {answer[0].get('Message', '?')}")

    async def _keepalive(self, protocol: AmiProtocol) -> None:
        cfg = self._cfg
        while True:
            await self._race(self._clock.sleep(cfg.keepalive), "idle")
            self._counters.pings += 1
            try:
                await self._request({"Action": "Ping"}, cfg.ping_timeout)
                self._counters.pongs += 1
            except AmiTimeout:
                self._counters.ping_timeouts += 1
                raise AmiConnectionLost(
                    f"no answer to Ping within {cfg.ping_timeout:g} s (half-open connection?)"
                ) from None

    async def _request(self, action: dict[str, str], timeout: float | None) -> list[Message]:
        return await self._answer(self._send(action), action.get("Action", "?"), timeout)

    def _send(self, action: dict[str, str]) -> asyncio.Future[Any]:
        """Write an action now; its answer is awaited with `_answer`."""
        manager = self._manager
        protocol = self._protocol
        if manager is None or protocol is None:
            raise AmiConnectionLost("not connected")
        if protocol.closed:
            lost = protocol.lost
            raise AmiConnectionLost(
                self._loss_reason(lost.result()) if lost is not None and lost.done() else "closed"
            )
        fut: asyncio.Future[Any] = manager.send_action(dict(action))
        return fut

    async def _answer(
        self, fut: asyncio.Future[Any], name: str, timeout: float | None
    ) -> list[Message]:
        limit = self._cfg.ping_timeout if timeout is None else timeout
        try:
            result = await self._race(fut, name, limit)
        finally:
            if not fut.done():
                fut.cancel()
        items = result if isinstance(result, list) else [result]
        return plain(items)

    async def _race(self, aw: Awaitable[Any], what: str, timeout: float | None = None) -> Any:
        """Await `aw` unless the connection ends, close() is called, or `timeout` passes.

        The timeout runs on the injected clock, so tests advance it instead of waiting.
        """
        main = asyncio.ensure_future(aw)
        waiters: set[asyncio.Future[Any]] = {main}
        stop = asyncio.ensure_future(self._stop.wait())
        waiters.add(stop)
        lost = self._protocol.lost if self._protocol is not None else None
        if lost is not None:
            waiters.add(lost)
        timer = asyncio.ensure_future(self._clock.sleep(timeout)) if timeout is not None else None
        if timer is not None:
            waiters.add(timer)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in (stop, timer, main):
                if w is not None and not w.done():
                    w.cancel()
            await asyncio.gather(
                *(w for w in (stop, timer, main) if w is not None), return_exceptions=True
            )
        if main.done() and not main.cancelled():
            return main.result()
        if self._closing:
            raise AmiConnectionLost("closed")
        if lost is not None and lost.done():
            raise AmiConnectionLost(self._loss_reason(lost.result()))
        raise AmiTimeout(f"no answer to {what} within {timeout:g} s")

    # -- bookkeeping -------------------------------------------------------------------

    def _touch(self) -> None:
        self._last_rx = self._clock.now()

    @staticmethod
    def _loss_reason(exc: BaseException | None) -> str:
        if exc is None:
            return "closed by the server"
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    def _drop_connection(self) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

    def _finish_connection(self) -> None:
        protocol, self._protocol = self._protocol, None
        was_up = self._logged_in
        self._logged_in = False
        if protocol is None:
            return
        stats = protocol.stats
        self._counters.events += protocol.events
        self._counters.handler_errors += protocol.handler_errors
        self._counters.malformed += stats.malformed
        self._counters.skipped += stats.skipped
        if protocol.stream.buffered:
            self._counters.malformed += 1
            log.warning(
                "AMI stream from %s ended inside a message (%d bytes dropped)",
                self.where,
                protocol.stream.buffered,
            )
        if self._manager is not None:
            self._manager.close()
            # panoramisk parks unanswered actions for a resend after the next FullyBooted;
            # we never resend blindly (a Redirect twice is worse than none): drop them.
            waiting = self._manager.awaiting_actions
            while waiting:
                act = waiting.popleft()
                if not act.future.done():
                    act.future.cancel()
        if protocol.transport is not None:
            protocol.transport.close()
        if was_up and not self._closing:
            self._counters.losses += 1
            if self._lost_at is None:
                self._lost_at = self._last_rx or self._clock.now()

    def _note_loss(self, exc: BaseException) -> None:
        if isinstance(exc, AmiConnectionLost):
            reason = exc.reason
        elif isinstance(exc, OSError):
            reason = exc.strerror or str(exc) or type(exc).__name__
        else:
            reason = str(exc) or type(exc).__name__
        if self._protocol is not None and self._protocol.shutdown:
            reason += " (Asterisk shut down)"
        if self._logged_in:
            # a working connection ended: always worth a warning, it opens a new cycle
            self._failing = False
            self._note_failure(f"AMI connection to {self.where} lost: {reason}")
        else:
            self._note_failure(f"AMI cannot connect to {self.where}: {reason}")

    def _note_failure(self, text: str) -> None:
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(level, "%s", text)

    def _next_backoff(self, auth_failed: bool) -> float:
        self._attempt += AUTH_FAILURE_STEPS if auth_failed else 1
        delay = min(self._cfg.max_backoff, BASE_BACKOFF * 2.0 ** (self._attempt - 1))
        if self._jitter:
            delay *= 1.0 - self._jitter * random.random()
        self._counters.last_backoff = delay
        if len(self._counters.backoffs) < GAPS_KEPT:
            self._counters.backoffs.append(delay)
        log.debug("AMI reconnect to %s in %.1f s", self.where, delay)
        return delay

    async def _wait(self, aw: Awaitable[None]) -> bool:
        """Wait for `aw` (a backoff sleep) unless close() comes first; True if closing."""
        main = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in (main, stop):
                if not w.done():
                    w.cancel()
            await asyncio.gather(main, stop, return_exceptions=True)
        return self._closing
