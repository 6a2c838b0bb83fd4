"""The metrics: a sink that counts the daemon's events and a collector that shows them.

Counters are the stored day counters (daemon.sinks.counters `durable_counts`), summed
over every day: the exporter seeds them from the database at start and this sink adds
each event after the commit that counted it, so a scrape after a restart (or an AMI or
modem reconnect) never sees a counter go down. Every series of a fixed label set is shown
from the start, at 0; a phone number is never a label.

`textback_hangup_to_submit_seconds` times a missed call's final Hangup (the call's end,
on the PBX's clock, moved to this host's clock by `pbx_offset`) to the moment its text
is handed to the modem (the `sending` state, committed just before AT+CMGS). A text
several calls joined is timed from the first. It lives in memory: a restart starts it
afresh, as Prometheus expects of a histogram.

`collect()` runs on the event loop (the exporter renders there), so nothing here locks.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from daemon.model import FINAL_STATES, MessageState, Outcome, Reason
from daemon.replies.keywords import ReplyKind
from daemon.sinks.counters import durable_counts
from daemon.sinks.events import CallDecided, Event, TextChanged

#: Outcome words, as labels (DESIGN.md, Outcome words).
OUTCOMES: tuple[str, ...] = tuple(o.value for o in Outcome)
#: (decision, reason) pairs: send is always "missed"; suppress has every other reason.
DECISIONS: tuple[tuple[str, str], ...] = (
    ("send", Reason.MISSED.value),
    *(("suppress", r.value) for r in Reason if r is not Reason.MISSED),
)
#: The states a text's life ends in (each counted when a text reaches it).
TEXT_STATES: tuple[str, ...] = tuple(s.value for s in MessageState if s in FINAL_STATES)
#: Every state a text can be in (the outbox gauge).
MESSAGE_STATES: tuple[str, ...] = tuple(s.value for s in MessageState)
#: What a reply was taken to be.
REPLY_KINDS: tuple[str, ...] = tuple(k.value for k in ReplyKind)
#: The modem label of texts when the daemon has several modems (see `Metrics`).
ALL_MODEMS = "all"

#: Hangup -> AT+CMGS buckets, in seconds after the wait step ([textback] delay): the
#: pipeline and outbox take milliseconds, a queue behind a burst or a slow modem
#: seconds, a modem that was down minutes, max_age (2 h by default) at most.
BUCKETS_AFTER_DELAY: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    7200.0,
)
#: Hangups remembered for texts not yet handed to the modem; the oldest go past this.
MAX_PENDING = 10_000


def stored_names() -> list[str]:
    """The stored day counters the metrics are made of (what the exporter seeds)."""
    return [
        *(f"calls.{o}" for o in OUTCOMES),
        "decisions.send",
        *(f"suppressed.{r}" for d, r in DECISIONS if d == "suppress"),
        *(f"texts.{s}" for s in TEXT_STATES),
        *(f"replies.{k}" for k in REPLY_KINDS),
        "ami.gaps",
    ]


_STORED = frozenset(stored_names())


@dataclass(frozen=True, slots=True)
class ModemView:
    """One modem as the metrics see it at a scrape."""

    name: str
    up: bool
    signal_dbm: float | None  # None: not known (no answer to AT+CSQ, or 99)


class Metrics:
    """The sink (`handle`) and the prometheus_client collector (`collect`) in one.

    `modems`: the modems' names (the label set of the modem gauges). `delay`: the wait
    step at start, the base of the histogram's buckets. The probes are read at every
    collection: `ami_connected()`, `modem_views()`, and `pbx_offset()` (seconds to add to
    a PBX time to put it on this host's clock) when a call is decided.
    """

    name = "metrics"

    def __init__(
        self,
        *,
        modems: Sequence[str],
        version: str,
        delay: float = 0.0,
        ami_connected: Callable[[], bool] = lambda: False,
        modem_views: Callable[[], Iterable[ModemView]] = tuple,
        pbx_offset: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.modems = tuple(modems) or ("modem",)
        self.version = version
        self._ami_connected = ami_connected
        self._modem_views = modem_views
        self._pbx_offset = pbx_offset
        #: The stored counters' totals: seeded, then one more per event.
        self.counts: Counter[str] = Counter()
        #: The outbox by state, as last read (the exporter refreshes it).
        self.outbox: dict[str, int] = dict.fromkeys(MESSAGE_STATES, 0)
        self.bounds: tuple[float, ...] = tuple(delay + b for b in BUCKETS_AFTER_DELAY)
        self._buckets = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self._sum = 0.0
        #: message id -> the Hangup (host clock) of the first call it texts back.
        self._hangups: dict[int, float] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- the sink ----------------------------------------------------------------------

    def seed(self, totals: dict[str, int]) -> None:
        """Start from the stored counts (before the sink is on the bus)."""
        for name, value in totals.items():
            if name in _STORED:
                self.counts[name] = int(value)

    def handle(self, event: Event) -> None:
        """Count one event; time a missed call's text from its Hangup to its send."""
        for name, _ in durable_counts(event):
            if name in _STORED:
                self.counts[name] += 1
        match event:
            case CallDecided(action="send", message_id=int(mid), call=call):
                if mid not in self._hangups:
                    if len(self._hangups) >= MAX_PENDING:
                        del self._hangups[next(iter(self._hangups))]
                    self._hangups[mid] = call.ended_at + self._pbx_offset()
            case TextChanged(state=MessageState.SENDING, message_id=mid, at=at):
                hangup = self._hangups.pop(mid, None)
                if hangup is not None:
                    self.observe(max(0.0, at - hangup))
            case TextChanged(state=state, message_id=mid) if state in FINAL_STATES:
                self._hangups.pop(mid, None)

    def observe(self, seconds: float) -> None:
        """One Hangup -> AT+CMGS time."""
        self._buckets[bisect_left(self.bounds, seconds)] += 1
        self._sum += seconds

    def set_outbox(self, counts: dict[str, int]) -> None:
        """The outbox by state, as just read."""
        self.outbox = {s: int(counts.get(s, 0)) for s in MESSAGE_STATES}

    # -- the collector ---------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Every metric, every series of its fixed label set (prometheus_client calls it)."""
        c = self.counts
        calls = CounterMetricFamily(
            "textback_calls_total", "Finished calls by outcome word.", labels=["outcome"]
        )
        for outcome in OUTCOMES:
            calls.add_metric([outcome], c[f"calls.{outcome}"])
        yield calls

        decisions = CounterMetricFamily(
            "textback_decisions_total",
            "Decisions on finished calls: send (reason missed) or suppress, by reason word.",
            labels=["decision", "reason"],
        )
        for decision, reason in DECISIONS:
            name = "decisions.send" if decision == "send" else f"suppressed.{reason}"
            decisions.add_metric([decision, reason], c[name])
        yield decisions

        texts = CounterMetricFamily(
            "textback_texts_total",
            "Texts that reached a state: sent, delivered (by the network's report), failed,"
            " cancelled, expired, uncertain.",
            labels=["modem", "state"],
        )
        modem = self.modems[0] if len(self.modems) == 1 else ALL_MODEMS
        for state in TEXT_STATES:
            texts.add_metric([modem, state], c[f"texts.{state}"])
        yield texts

        replies = CounterMetricFamily(
            "textback_replies_total", "Texts people sent to the office, by kind.", labels=["kind"]
        )
        for kind in REPLY_KINDS:
            replies.add_metric([kind], c[f"replies.{kind}"])
        yield replies

        outbox = GaugeMetricFamily(
            "textback_outbox_messages",
            "Texts in the database by state, as read at the last refresh.",
            labels=["state"],
        )
        for state in MESSAGE_STATES:
            outbox.add_metric([state], self.outbox.get(state, 0))
        yield outbox

        cumulative, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self._buckets, strict=True):
            running += n
            cumulative.append((_le(bound), float(running)))
        yield HistogramMetricFamily(
            "textback_hangup_to_submit_seconds",
            "A missed call's final Hangup to its text's AT+CMGS, in seconds (includes the"
            " wait step; since the daemon started).",
            buckets=cumulative,
            sum_value=self._sum,
        )

        views = {v.name: v for v in self._modem_views()}
        up = GaugeMetricFamily(
            "textback_modem_up", "1 while the modem can take a text.", labels=["modem"]
        )
        signal = GaugeMetricFamily(
            "textback_modem_signal_dbm",
            "The modem's signal (AT+CSQ) in dBm; NaN when not known.",
            labels=["modem"],
        )
        for name in self.modems:
            v = views.get(name)
            up.add_metric([name], 1.0 if v is not None and v.up else 0.0)
            dbm = None if v is None else v.signal_dbm
            signal.add_metric([name], math.nan if dbm is None else float(dbm))
        yield up
        yield signal

        yield GaugeMetricFamily(
            "textback_ami_connected",
            "1 while logged in to the Asterisk Manager Interface.",
            value=1.0 if self._ami_connected() else 0.0,
        )
        yield CounterMetricFamily(
            "textback_ami_reconnects_total",
            "Times the AMI link came back after being lost (each an AMI gap).",
            value=c["ami.gaps"],
        )
        info = GaugeMetricFamily(
            "textback_build_info", "The running textback's version.", labels=["version"]
        )
        info.add_metric([self.version], 1.0)
        yield info

    def render(self) -> bytes:
        """The Prometheus text format of every metric now."""
        return generate_latest(self.registry)


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it ("+Inf", "0.05", "30.0")."""
    if math.isinf(bound):
        return "+Inf"
    return repr(float(round(bound, 6)))
