"""Several modems as one sender: `ModemPool`, one `ModemSupervisor` (one SIM) per
`[[modems]]` entry, each a lane that sends one text at a time, so N modems send N texts
at once.

The outbox asks the pool which lane takes each queued text (`assign`), marks the text
`sending` on that lane, sends through it, and hands the result back (`finish`). Which
modem sends a text:

1. the one whose `lines` hold the DID the caller rang (the text's `line`). While that
   modem is down (or at its `max_per_month`) the text waits for it, unless the modem's
   entry says `fallback = true`: then it goes as in 2 and 3 through another modem;
2. else the ready modem that last texted this number (replies come back to the same SIM);
3. else the ready, healthy modem with the shortest queue (texts that can only go through
   it), the first in the config on a tie.

A text whose send failed in a way known to be before submission (`SendResult.not_sent`)
may move to another modem at once; after an unclear failure it stays with its modem (a
retry there resumes a long text after its confirmed parts), and an `uncertain` text is
never resent. Health: connected and ready, registered, consecutive failures below
`UNHEALTHY_FAILURES`; an unhealthy modem is used only when nothing healthy can take a
text. A modem whose IMEI another modem of the pool already has is refused.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from daemon.clock import Clock
from daemon.config import Config, PoolModemConfig
from daemon.logsetup import kv
from daemon.sending.modem import ImeiFinder, ModemSupervisor, TextKeeper
from daemon.sending.sender import Sender, SendRequest, SendResult, SendStatus
from daemon.sinks.bus import EventBus
from daemon.store.routing import QueuedText
from daemon.store.store import Store, StoreError
from gsm.modem import ModemInfo, ReadGate, Timeouts

# The journal name operators filter on.
log = logging.getLogger("daemon.service")

#: Consecutive failed sends after which a modem counts as unhealthy.
UNHEALTHY_FAILURES = 3
#: How often each SIM's texts this month are read again from the store (with caps on).
COUNTS_REFRESH = 60.0
#: +CREG states that mean registered (home, roaming).
_REGISTERED = (1, 5)


@dataclass(slots=True)
class Lane:
    """One modem of the pool and what routing knows about it."""

    entry: PoolModemConfig
    supervisor: ModemSupervisor
    index: int
    busy: bool = False
    failures: int = 0  # consecutive failed sends
    sent_month: int = 0  # texts this SIM took this month (with max_per_month)
    capped_said: bool = False

    @property
    def name(self) -> str:
        """The modem's name."""
        return self.entry.name

    @property
    def ready(self) -> bool:
        """Its modem can take a send now."""
        return self.supervisor.ready

    async def send(self, request: SendRequest) -> SendResult:
        """Send through this lane's modem."""
        return await self.supervisor.send(request)

    @property
    def capped(self) -> bool:
        """At its SIM's max_per_month."""
        cap = self.entry.max_per_month
        return bool(cap) and self.sent_month >= cap

    @property
    def usable(self) -> bool:
        """Ready and under its cap."""
        return self.ready and not self.capped

    @property
    def registered(self) -> bool:
        """Registered on the network, as far as the driver knows (unknown counts)."""
        modem = self.supervisor.modem
        reg = None if modem is None else modem.registration
        return reg is None or reg in _REGISTERED

    @property
    def healthy(self) -> bool:
        """Usable, registered and not failing."""
        return self.usable and self.registered and self.failures < UNHEALTHY_FAILURES

    def health(self) -> dict[str, object]:
        """For `status_text` and tests: connected, registered, signal, failures."""
        modem = self.supervisor.modem
        return {
            "connected": self.ready,
            "registered": self.registered,
            "signal": None if modem is None else modem.rssi,
            "failures": self.failures,
            "sent_month": self.sent_month,
        }


class ModemPool:
    """Several modems behind one `Sender`: see the module docstring."""

    name = "pool"

    def __init__(
        self,
        cfg: Config,
        *,
        store: Store,
        bus: EventBus,
        clock: Clock,
        timeouts: Timeouts | None = None,
        keep_text: TextKeeper | None = None,
        line_key: Callable[[str], str] | None = None,
        finder: ImeiFinder | None = None,
        read_gate: ReadGate | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._key = line_key or (lambda did: did.strip())
        self.lanes: list[Lane] = []
        for i, entry in enumerate(cfg.modem_entries()):
            sup = ModemSupervisor(
                cfg.modem_settings(entry),
                store=store,
                bus=bus,
                clock=clock,
                timeouts=timeouts,
                name=entry.name,
                keep_text=keep_text,
                vet=self._vet,
                finder=finder,
                read_gate=read_gate,
            )
            self.lanes.append(Lane(entry, sup, i))
        self._by_name = {lane.name: lane for lane in self.lanes}
        self._owner: dict[str, Lane] = {}
        for lane in self.lanes:
            for did in lane.entry.lines:
                self._owner.setdefault(self._key(did), lane)
        #: message id -> modems a failure known to be before submission came from
        self._avoid: dict[int, set[str]] = {}
        #: message id -> the modem that must retry it (its failure was unclear)
        self._stick: dict[int, str] = {}
        self._capped = any(lane.entry.max_per_month for lane in self.lanes)
        self._counted_at = -math.inf
        self._month: float | None = None

    # -- the Sender ------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Some modem can take a send now."""
        return any(lane.usable for lane in self.lanes)

    async def send(self, request: SendRequest) -> SendResult:
        """Send one text outside the outbox's lanes: through the modem routing picks."""
        text = QueuedText(request.message_id or 0, None, request.destination, request.line, "")
        lane = self._pick(text, set())
        if lane is None:
            return SendResult(
                SendStatus.FAILED,
                error="no modem free for this text",
                retryable=True,
                not_sent=True,
            )
        lane.busy = True
        try:
            result = await lane.send(request)
            self.finish(lane, text, result)
        finally:
            self.release(lane)
        return result

    # -- routing -----------------------------------------------------------------------------

    def owner_of(self, line: str) -> Lane | None:
        """The modem whose lines hold this DID, if any."""
        return self._owner.get(self._key(line)) if line else None

    async def prepare(self, now: float) -> None:
        """Before a pass: each SIM's texts this month, read again now and then (only when
        some modem has a max_per_month)."""
        if not self._capped:
            return
        month = self._store.month_start(now)
        if month == self._month and now - self._counted_at < COUNTS_REFRESH:
            return
        try:
            counts = await self._store.sent_by_modem(month)
        except StoreError as exc:
            log.error(kv(event="store_error", during="modem_counts", error=exc))
            return
        self._month, self._counted_at = month, now
        for lane in self.lanes:
            lane.sent_month = counts.get(lane.name, 0)
            if not lane.capped:
                lane.capped_said = False
            self._say_capped(lane)

    def _say_capped(self, lane: Lane) -> None:
        if lane.capped and not lane.capped_said:
            lane.capped_said = True
            log.warning(
                kv(
                    event="modem_cap_reached",
                    modem=lane.name,
                    sent_month=lane.sent_month,
                    max_per_month=lane.entry.max_per_month,
                    lines=",".join(lane.entry.lines) or "-",
                    fallback=lane.entry.fallback,
                )
            )

    def assign(self, texts: Sequence[QueuedText]) -> list[tuple[QueuedText, Lane]]:
        """Which free lane takes which of these due texts now (each lane taken is marked
        busy until `finish`). Texts bound to one modem (their line's, the one retrying
        them, the one that last texted the number) go first, then the rest to the ready
        modem with the shortest queue."""
        bound: list[tuple[QueuedText, Lane | None]] = []
        free: list[QueuedText] = []
        queue = dict.fromkeys(self._by_name, 0)
        for text in texts:
            lane, only = self._bound(text)
            if only:
                bound.append((text, lane))
                if lane is not None:
                    queue[lane.name] += 1
            else:
                free.append(text)
        out: list[tuple[QueuedText, Lane]] = []
        for text, lane in bound:
            if lane is not None and not lane.busy:
                lane.busy = True
                out.append((text, lane))
        for text in free:
            lane = self._pick(text, self._avoid.get(text.message_id, set()), queue)
            if lane is not None:
                lane.busy = True
                out.append((text, lane))
        return out

    def _bound(self, text: QueuedText) -> tuple[Lane | None, bool]:
        """(lane, True) when only that lane may send the text now (None: none may now,
        it waits); (None, False) when any modem may."""
        stick = self._stick.get(text.message_id)
        if stick is not None and stick in self._by_name:
            lane = self._by_name[stick]
            return (lane if lane.usable else None), True
        owner = self.owner_of(text.line)
        avoid = self._avoid.get(text.message_id, set())
        if owner is not None:
            if owner.usable and (owner.name not in avoid or not owner.entry.fallback):
                return owner, True
            if not owner.entry.fallback:
                return None, True  # its line's SIM only: it waits for that modem
            return None, False  # fallback: any other modem
        last = self._by_name.get(text.last_modem)
        if last is not None and last.healthy and last.name not in avoid:
            return last, True
        return None, False

    def _pick(
        self, text: QueuedText, avoid: set[str], queue: dict[str, int] | None = None
    ) -> Lane | None:
        """The free lane for a text any modem may send: healthy first, then the shortest
        queue, then config order. Its line's own modem is left out (it is down)."""
        owner = self.owner_of(text.line)
        lanes = [
            lane
            for lane in self.lanes
            if lane.usable and not lane.busy and lane.name not in avoid and lane is not owner
        ]
        if not lanes:
            return None
        q = queue or {}
        return min(lanes, key=lambda lane: (not lane.healthy, q.get(lane.name, 0), lane.index))

    def release(self, sender: Sender) -> None:
        """The lane is free again."""
        self._by_name[sender.name].busy = False

    def finish(self, sender: Sender, text: QueuedText, result: SendResult) -> bool:
        """A lane's send ended: count the modem's health and the SIM's texts; True when the
        text failed before submission and another modem may take it now (failover)."""
        lane = self._by_name[sender.name]
        mid = text.message_id
        if result.status is SendStatus.FAILED and result.not_sent:
            lane.failures += 1
            self._avoid.setdefault(mid, set()).add(lane.name)
            self._stick.pop(mid, None)
            bound, only = self._bound(text)
            if only:
                return bound is not None and bound is not lane
            owner = self.owner_of(text.line)
            return any(
                o.usable and o.name not in self._avoid[mid] and o is not owner for o in self.lanes
            )
        if result.status is SendStatus.FAILED:
            lane.failures += 1
            if result.retryable:
                self._stick[mid] = lane.name  # unclear: only this modem may resume it
            else:
                self._forget(mid)
            return False
        # sent or uncertain: the SIM may have spent a text either way
        lane.failures = 0 if result.status is SendStatus.SENT else lane.failures + 1
        lane.sent_month += 1
        self._say_capped(lane)
        self._forget(mid)
        return False

    def _forget(self, mid: int) -> None:
        self._avoid.pop(mid, None)
        self._stick.pop(mid, None)

    # -- the modems' life ------------------------------------------------------------------

    def _vet(self, sup: ModemSupervisor, info: ModemInfo) -> str:
        """Refuse a modem reporting the IMEI of another modem of the pool."""
        if not info.imei:
            return ""
        for lane in self.lanes:
            other = lane.supervisor
            if other is sup or other.info is None or other.info.imei != info.imei:
                continue
            if other.modem is None:
                continue  # that one was refused or is gone
            return (
                f"modem {sup.name!r} on {sup.device} reports IMEI {info.imei}, the IMEI of"
                f" modem {other.name!r} on {other.device}: one modem configured twice, or"
                " two with a cloned IMEI; give each [[modems]] entry its own device"
                " (/dev/serial/by-id/...)"
            )
        return ""

    async def run(self) -> None:
        """Start every modem and keep them (each with its own backoff and reconnects)."""
        async with asyncio.TaskGroup() as tg:
            for lane in self.lanes:
                tg.create_task(lane.supervisor.run(), name=f"modem {lane.name}")

    def status_text(self) -> str:
        """The modems' part of the STATUS line: each modem's name and state."""
        parts = []
        for lane in self.lanes:
            text = lane.supervisor.status_text()
            text = text.removeprefix("modem ")
            if lane.capped:
                text += ", at max_per_month"
            parts.append(f"{lane.name}: {text}")
        ready = sum(lane.ready for lane in self.lanes)
        return f"modems {ready}/{len(self.lanes)} ready ({'; '.join(parts)})"

    async def close(self) -> None:
        """Close every modem's port."""
        await asyncio.gather(*(lane.supervisor.close() for lane in self.lanes))
