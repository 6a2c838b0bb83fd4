"""Inbound texts put back together, each with the SIM slots its parts came from: pure.

The modem reads the parts of a concatenated text one at a time, from the SIM (a slot:
memory and index) or straight from the network (+CMT: no slot). `Assembler` groups them
like `gsm.pdu.Reassembler` (sender, reference, total; a part goes to the oldest group of
its key that lacks its number; a part equal in every field to one held is a duplicate),
and also remembers where each part is stored, so that the driver deletes a text's parts
from the SIM only once the whole text was kept. A group whose next part has not come
`wait` seconds after its latest one is handed out as far as it got, marked incomplete:
the caller arms a timer for `next_deadline()` and calls `expire()`; `now` is whatever
clock the caller uses (the event loop's time in the driver).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gsm.pdu import Deliver, StatusReport, join_parts

Slot = tuple[str, int]
"""Where a message is stored on the modem: (memory, index), e.g. ("SM", 3)."""

Inbound = Deliver | StatusReport
"""An inbound text (whole, or incomplete) or a delivery report."""


@dataclass(frozen=True, slots=True)
class Ready:
    """An inbound item ready to be handed on, and the SIM slots to delete once it is kept
    (every part's, duplicates included; empty for what came straight from the network)."""

    item: Inbound
    slots: tuple[Slot, ...] = ()


@dataclass(slots=True)
class _Group:
    key: tuple[str, int, int]
    deadline: float
    parts: dict[int, Deliver] = field(default_factory=dict)
    slots: list[Slot] = field(default_factory=list)


class Assembler:
    """Concatenated parts to whole texts, with their slots. See the module docstring.

    At most `max_pending` groups wait at once; a further one makes the oldest give way
    (handed out incomplete), so memory stays bounded whatever a sender does.
    """

    def __init__(self, *, wait: float, max_pending: int = 64) -> None:
        if wait <= 0:
            raise ValueError("wait must be positive")
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.wait = wait
        self.max_pending = max_pending
        self._pending: list[_Group] = []  # oldest first
        self.duplicates = 0
        """Parts received twice (equal in every field); the first copy is used."""

    @property
    def pending(self) -> int:
        """Incomplete groups waiting for parts."""
        return len(self._pending)

    def held_slots(self) -> set[Slot]:
        """The slots of every part still waiting for the rest of its text."""
        return {slot for group in self._pending for slot in group.slots}

    def next_deadline(self) -> float | None:
        """When the first waiting group is given up (None if none waits)."""
        return min((g.deadline for g in self._pending), default=None)

    def add(self, msg: Deliver, slot: Slot | None, now: float) -> list[Ready]:
        """Add one part (or a whole text); what is ready now, expired groups first."""
        out = self.expire(now)
        slots = () if slot is None else (slot,)
        if msg.concat is None or msg.concat.total == 1:
            out.append(Ready(msg, slots))
            return out
        key = (msg.sender, msg.concat.reference, msg.concat.total)
        seq = msg.concat.seq
        group: _Group | None = None
        for candidate in self._pending:
            if candidate.key != key:
                continue
            held = candidate.parts.get(seq)
            if held == msg:
                # The same part stored twice: its second slot goes with the text, so that
                # it is deleted with it and never read again as a text of its own.
                self.duplicates += 1
                candidate.slots.extend(slots)
                return out
            if held is None and group is None:
                group = candidate
        if group is None:
            if len(self._pending) >= self.max_pending:
                out.append(self._give_up(self._pending.pop(0)))
            group = _Group(key=key, deadline=now + self.wait)
            self._pending.append(group)
        group.parts[seq] = msg
        group.slots.extend(slots)
        group.deadline = now + self.wait
        if len(group.parts) == msg.concat.total:
            self._pending.remove(group)
            parts = [group.parts[n] for n in sorted(group.parts)]
            out.append(Ready(join_parts(parts), tuple(group.slots)))
        return out

    def expire(self, now: float) -> list[Ready]:
        """Give up every group whose wait is over: each as far as it got, incomplete."""
        late = [g for g in self._pending if g.deadline <= now]
        self._pending = [g for g in self._pending if g.deadline > now]
        return [self._give_up(g) for g in late]

    def _give_up(self, group: _Group) -> Ready:
        parts = [group.parts[n] for n in sorted(group.parts)]
        return Ready(join_parts(parts, total=group.key[2]), tuple(group.slots))
