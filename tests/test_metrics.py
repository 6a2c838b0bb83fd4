"""Prometheus metrics (daemon/metrics): the names and label sets, the stored counts as the
counters' start, the Hangup -> AT+CMGS histogram, the atomic textfile, the HTTP endpoint,
`textback check`; and the real daemon's output through `promtool check metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.check import validate
from daemon.clock import ManualClock
from daemon.config import Config, MetricsConfig
from daemon.metrics.collect import (
    DECISIONS,
    MESSAGE_STATES,
    OUTCOMES,
    REPLY_KINDS,
    TEXT_STATES,
    Metrics,
    ModemView,
)
from daemon.metrics.export import Exporter, parse_listen, write_atomically
from daemon.model import FinishedCall, MessageKind, MessageState, Outcome
from daemon.sinks.bus import EventBus
from daemon.sinks.events import CallDecided, CallRecorded, ReplyReceived, TextChanged
from daemon.store.store import Store
from tests.daemonproc import running_daemon
from tests.test_e2e import body_of, events, ready, rig, settled

#: A series: (sample name, sorted label pairs).
Key = tuple[str, tuple[tuple[str, str], ...]]

CALLER = "+12025550142"


def samples(text: str) -> dict[Key, float]:
    """Every sample of a text exposition, by name and labels."""
    out: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value (KeyError when the series is missing)."""
    return samples(text)[(name, tuple(sorted(labels.items())))]


def counters(text: str) -> dict[Key, float]:
    """The counter samples (names ending in _total)."""
    return {k: v for k, v in samples(text).items() if k[0].endswith("_total")}


def promtool_check(text: str) -> None:
    """`promtool check metrics` must accept it (and find no lint problem)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is missing: install Debian's `prometheus` package "
            "(apt-get install prometheus; .ci/run does it) to check the metrics' format"
        )
    run = subprocess.run(
        [promtool, "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    said = (run.stdout + run.stderr).decode()
    assert run.returncode == 0, said
    assert not said.strip(), said  # lint findings are printed even with exit 0


def call(linkedid: str, ended_at: float, outcome: Outcome = Outcome.NO_ANSWER) -> FinishedCall:
    return FinishedCall(
        linkedid=linkedid,
        caller=CALLER,
        caller_name="",
        did="+12025550100",
        inbound=True,
        outcome=outcome,
        started_at=ended_at - 20,
        ended_at=ended_at,
        ring_seconds=20.0,
        voicemail_left=None,
        withheld=False,
    )


def decided(c: FinishedCall, mid: int, at: float, *, merged: bool = False) -> CallDecided:
    return CallDecided(
        call=c,
        call_id=mid,
        action="send",
        reason="missed",
        detail="",
        text="Sorry we missed you",
        message_id=mid,
        merged=merged,
        at=at,
    )


def changed(mid: int, state: MessageState, at: float, sender: str = "") -> TextChanged:
    return TextChanged(
        message_id=mid,
        destination=CALLER,
        kind=MessageKind.MISSED_CALL,
        state=state,
        at=at,
        sender=sender,
    )


# -- the names and label sets -----------------------------------------------------------


def test_every_series_is_there_from_the_start_at_zero() -> None:
    text = Metrics(modems=["modem"], version="1.2.3").render().decode()
    promtool_check(text)
    for outcome in OUTCOMES:
        assert value(text, "textback_calls_total", outcome=outcome) == 0
    assert len(OUTCOMES) == 10
    for decision, reason in DECISIONS:
        assert value(text, "textback_decisions_total", decision=decision, reason=reason) == 0
    assert ("suppress", "opted_out") in DECISIONS
    assert ("send", "missed") in DECISIONS
    for state in TEXT_STATES:
        assert value(text, "textback_texts_total", modem="modem", state=state) == 0
    assert set(TEXT_STATES) == {"sent", "failed", "cancelled", "expired", "uncertain", "delivered"}
    for kind in REPLY_KINDS:
        assert value(text, "textback_replies_total", kind=kind) == 0
    assert "opt_out" in REPLY_KINDS
    for state in MESSAGE_STATES:
        assert value(text, "textback_outbox_messages", state=state) == 0
    assert value(text, "textback_hangup_to_submit_seconds_count") == 0
    assert value(text, "textback_hangup_to_submit_seconds_bucket", le="+Inf") == 0
    assert value(text, "textback_modem_up", modem="modem") == 0
    assert math.isnan(value(text, "textback_modem_signal_dbm", modem="modem"))  # not known
    assert value(text, "textback_ami_connected") == 0
    assert value(text, "textback_ami_reconnects_total") == 0
    assert value(text, "textback_build_info", version="1.2.3") == 1
    # a phone number is never a label: every label value comes from a fixed set
    assert "+1" not in text


def test_probes_are_read_at_each_collection() -> None:
    up = {"ami": False, "modem": False}
    m = Metrics(
        modems=["modem"],
        version="0",
        ami_connected=lambda: up["ami"],
        modem_views=lambda: [ModemView("modem", up["modem"], -71.0 if up["modem"] else None)],
    )
    before = m.render().decode()
    up.update(ami=True, modem=True)
    after = m.render().decode()
    assert value(before, "textback_ami_connected") == 0
    assert value(after, "textback_ami_connected") == 1
    assert value(after, "textback_modem_up", modem="modem") == 1
    assert value(after, "textback_modem_signal_dbm", modem="modem") == -71


def test_counters_start_from_the_stored_counts_and_add_each_event() -> None:
    m = Metrics(modems=["modem"], version="0")
    m.seed({"calls.no_answer": 7, "texts.sent": 5, "ami.gaps": 2, "pipeline.errors": 9})
    c = call("1795300000.1", 1_795_300_000.0)
    m.handle(CallRecorded(call=c, call_id=1, destination=CALLER))
    m.handle(decided(c, 1, 1_795_300_000.1))
    m.handle(changed(1, MessageState.SENT, 1_795_300_001.0, sender="modem"))
    m.handle(ReplyReceived(reply_id=1, sender=CALLER, text="STOP", at=0.0, kind="opt_out"))
    text = m.render().decode()
    assert value(text, "textback_calls_total", outcome="no_answer") == 8
    assert value(text, "textback_decisions_total", decision="send", reason="missed") == 1
    assert value(text, "textback_texts_total", modem="modem", state="sent") == 6
    assert value(text, "textback_replies_total", kind="opt_out") == 1
    assert value(text, "textback_ami_reconnects_total") == 2
    assert "pipeline" not in text  # a stored count that is no metric stays out


def test_hangup_to_submit_is_timed_from_the_first_call_to_the_send() -> None:
    m = Metrics(modems=["modem"], version="0", delay=30.0, pbx_offset=lambda: 2.0)
    first, second = call("a.1", 1000.0), call("b.1", 1010.0)
    m.handle(decided(first, 7, 1000.1))
    m.handle(decided(second, 7, 1010.1, merged=True))  # joined the same text
    m.handle(changed(7, MessageState.SENDING, 1032.5))  # 30.5 s after the Hangup (+2 s skew)
    m.handle(changed(7, MessageState.QUEUED, 1033.0))  # a retry ...
    m.handle(changed(7, MessageState.SENDING, 1064.0))  # ... is not the text's first send
    cancelled = call("c.1", 2000.0)
    m.handle(decided(cancelled, 8, 2000.0))
    m.handle(changed(8, MessageState.CANCELLED, 2010.0))
    m.handle(changed(8, MessageState.SENDING, 2020.0))  # (cannot happen; is not timed)
    text = m.render().decode()
    promtool_check(text)
    assert value(text, "textback_hangup_to_submit_seconds_count") == 1
    assert value(text, "textback_hangup_to_submit_seconds_sum") == pytest.approx(30.5)
    # buckets follow the wait step: 30 s + 0.5 s holds it, 30 s + 0.25 s does not
    assert value(text, "textback_hangup_to_submit_seconds_bucket", le="30.5") == 1
    assert value(text, "textback_hangup_to_submit_seconds_bucket", le="30.25") == 0


# -- the textfile -----------------------------------------------------------------------


def test_the_textfile_is_replaced_whole_never_read_in_part(tmp_path: Path) -> None:
    path = tmp_path / "textback.prom"
    # big enough that a plain rewrite would be seen half-written
    versions = [(f"# version {i}\n" + f"x_total {i}\n" * 50_000).encode() for i in range(20)]
    write_atomically(path, versions[0])
    stop = threading.Event()
    seen: list[bytes] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(path.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for data in versions[1:]:
            write_atomically(path, data)
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 1
    assert all(s in versions for s in seen), "a read saw a partial file"
    assert path.read_bytes() == versions[-1]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # node_exporter reads it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["textback.prom"]  # no temp left


def test_a_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "textback.prom"
    path.mkdir()  # the rename over it fails (for root too)
    (path / "keep").write_text("x")
    with pytest.raises(IsADirectoryError):
        write_atomically(path, b"new\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["textback.prom"]
    assert (path / "keep").read_text() == "x"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "t.db", durable=False)
    try:
        yield s
    finally:
        await s.close()


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Let the loop (and a write's thread) run until `predicate` holds."""
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 (a write's thread has no event to await)
            await asyncio.sleep(0.005)
    assert predicate(), what


async def test_the_exporter_seeds_from_the_database_and_writes_every_interval(
    tmp_path: Path, store: Store
) -> None:
    now = 1_795_300_000.0
    await store.bump("calls.no_answer", 3, now=now - 86400 * 3)  # other days count too
    await store.bump("calls.no_answer", 2, now=now)
    await store.bump("ami.gaps", 1, now=now)
    clock = ManualClock(now)
    bus = EventBus()
    prom = tmp_path / "textback.prom"
    cfg = MetricsConfig(textfile=str(prom), interval=15.0)
    exporter = Exporter(cfg, Metrics(modems=["modem"], version="0"), store, bus, clock)
    await exporter.seed()
    assert exporter.metrics in bus.sinks
    task = asyncio.create_task(exporter.run())
    try:
        await until(lambda: exporter.writes == 1, "the first write at start")
        first = prom.read_text()
        assert value(first, "textback_calls_total", outcome="no_answer") == 5
        assert value(first, "textback_ami_reconnects_total") == 1
        bus.emit(CallRecorded(call=call("x.1", now), call_id=9, destination=CALLER))
        await asyncio.sleep(0)
        assert exporter.writes == 1  # nothing new before the interval passes
        clock.advance(15.0)
        await until(lambda: exporter.writes == 2, "the write after one interval")
        assert value(prom.read_text(), "textback_calls_total", outcome="no_answer") == 6
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_outbox_gauge_counts_texts_by_state(store: Store) -> None:
    now = 1_795_300_000.0
    for i in range(3):
        await store.add_message(
            destination=f"+1202555014{i}",
            text="hi",
            template_kind=None,
            call_ids=[],
            parts=1,
            encoding="gsm7",
            now=now,
            due_at=now,
            state=MessageState.QUEUED if i else MessageState.WAITING,
        )
    exporter = Exporter(
        MetricsConfig(), Metrics(modems=["modem"], version="0"), store, EventBus(), ManualClock()
    )
    await exporter.refresh()
    text = exporter.metrics.render().decode()
    assert value(text, "textback_outbox_messages", state="queued") == 2
    assert value(text, "textback_outbox_messages", state="waiting") == 1
    assert value(text, "textback_outbox_messages", state="sent") == 0


# -- the HTTP endpoint ------------------------------------------------------------------


async def http_get(port: int, path: str = "/metrics", method: str = "GET") -> tuple[str, str]:
    """(status line and headers, body) of one request over loopback."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    return head, body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_the_endpoint_serves_the_metrics_on_the_loop(store: Store) -> None:
    port = free_port()
    cfg = MetricsConfig(listen=f"127.0.0.1:{port}")
    exporter = Exporter(
        cfg, Metrics(modems=["modem"], version="0"), store, EventBus(), ManualClock()
    )
    await exporter.seed()
    task = asyncio.create_task(exporter.run())
    try:
        await until(lambda: exporter.address is not None, "listening")
        head, body = await http_get(port)
        assert head.startswith("HTTP/1.0 200")
        assert "text/plain; version=0.0.4" in head
        assert body == exporter.metrics.render().decode()
        head, _ = await http_get(port, "/nothing")
        assert head.startswith("HTTP/1.0 404")
        head, _ = await http_get(port, "/metrics", "POST")
        assert head.startswith("HTTP/1.0 405")
        head, body = await http_get(port, "/metrics", "HEAD")
        assert head.startswith("HTTP/1.0 200")
        assert body == ""
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await exporter.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)  # closed with the daemon


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9533") == ("127.0.0.1", 9533)
    assert parse_listen("[::1]:9533") == ("::1", 9533)
    assert parse_listen(" localhost:80 ") == ("localhost", 80)
    for bad in ("9533", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "::1:9533", ":9533"):
        with pytest.raises(ValueError, match=r"host:port|IPv6|1-65535"):
            parse_listen(bad)


def test_check_names_a_bad_textfile_directory_and_listen_address(tmp_path: Path) -> None:
    def problems(**metrics: object) -> dict[str, str]:
        cfg = Config(metrics=MetricsConfig(**metrics))  # type: ignore[arg-type]
        return {
            p.key: f"{p.severity}: {p.message}"
            for p in validate(cfg)
            if p.key.startswith("metrics.")
        }

    assert problems(textfile=str(tmp_path / "textback.prom"), listen="127.0.0.1:9533") == {}
    assert problems(textfile=str(tmp_path / "nowhere" / "textback.prom")) == {
        "metrics.textfile": f"error: directory {tmp_path / 'nowhere'} does not exist"
    }
    assert problems(textfile=str(tmp_path / "textback.txt"))["metrics.textfile"].startswith(
        "warning: 'textback.txt' does not end in .prom"
    )
    assert problems(listen="9533")["metrics.listen"].startswith("error: ")
    assert problems(listen="0.0.0.0:9533")["metrics.listen"].startswith("warning: 0.0.0.0")
    assert problems(listen="127.0.0.1:9533", interval=0)["metrics.interval"].startswith("error")


# -- the real daemon --------------------------------------------------------------------

#: lab traces: two missed calls that are texted, one answered call
TRACES = ("01-missed-noanswer-voicemail", "02-abandoned-while-ringing", "04-answered")


def _metrics_section(prom: Path, port: int) -> str:
    return f'\n[metrics]\ntextfile = "{prom}"\nlisten = "127.0.0.1:{port}"\ninterval = "100ms"\n'


class FileWatcher:
    """Reads the textfile over and over in a thread, as node_exporter would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reads = 0
        self.partial: list[str] = []
        self.inodes: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.path.open() as fh:
                    text = fh.read()
                    self.inodes.add(os.fstat(fh.fileno()).st_ino)
            except FileNotFoundError:
                continue
            self.reads += 1
            if not text.endswith("\n") or "textback_build_info{" not in text:
                self.partial.append(text)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


async def converged(prom: Path, port: int) -> str:
    """Wait until the textfile and the endpoint say the same (nothing moving); return it."""
    async with asyncio.timeout(15):
        while True:
            _, body = await http_get(port)
            if await asyncio.to_thread(read_or_empty, prom) == body:
                return body
            await asyncio.sleep(0.05)


def read_or_empty(path: Path) -> str:
    """The file's text, "" while it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def at_least(later: dict[Key, float], earlier: dict[Key, float]) -> list[str]:
    """The counters that went down (or vanished) from `earlier` to `later`."""
    return [f"{k}: {v} -> {later.get(k)}" for k, v in earlier.items() if later.get(k, -1) < v]


@pytest.mark.timeout(120)
async def test_a_real_daemon_s_metrics(tmp_path: Path) -> None:
    prom_dir = tmp_path / "textfile_collector"
    prom_dir.mkdir()
    prom = prom_dir / "textback.prom"
    port = free_port()
    async with rig(tmp_path, body_of(*TRACES)) as r:
        r.write(extra=_metrics_section(prom, port))
        watcher = FileWatcher(prom)
        try:
            async with running_daemon(r.config, tmp_path) as d:
                await ready(d)
                await settled(d, calls=3)
                # every text is final, logged after the simulator took it
                assert len(r.sim.sent) == 2, r.sim.sent
                caller = r.sim.sent[0].number
                r.sim.inject_text(caller, "Thanks, call me after 5")
                await d.wait_log("event=reply ")
                text = await converged(prom, port)
                promtool_check(text)
                assert sum(value(text, "textback_calls_total", outcome=o) for o in OUTCOMES) == len(
                    events(d, "call")
                )
                assert value(text, "textback_calls_total", outcome="answered") == 1
                assert (
                    value(text, "textback_decisions_total", decision="send", reason="missed") == 2
                )
                assert value(text, "textback_texts_total", modem="modem", state="sent") == 2
                assert value(text, "textback_replies_total", kind="message") == 1
                assert value(text, "textback_hangup_to_submit_seconds_count") == 2
                assert value(text, "textback_ami_connected") == 1
                assert value(text, "textback_modem_up", modem="modem") == 1
                assert -113 <= value(text, "textback_modem_signal_dbm", modem="modem") <= -51
                assert value(text, "textback_outbox_messages", state="sent") == 2
                assert value(text, "textback_ami_reconnects_total") == 0
                before = counters(text)

                # an AMI reconnect: one more reconnect, no counter goes down
                r.server.drop()
                await d.wait_log("AMI gap from")
                await until(
                    lambda: (
                        prom.exists()
                        and value(prom.read_text(), "textback_ami_reconnects_total") == 1
                    ),
                    "the reconnect counted",
                )
                after_reconnect = counters(await converged(prom, port))
                assert not at_least(after_reconnect, before)

                d.signal(signal.SIGTERM)
                assert await d.wait_exit() == 0
        finally:
            watcher.stop()
        stopped = prom.read_text()
        promtool_check(stopped)
        assert value(stopped, "textback_ami_connected") == 0  # the last write: links down
        assert value(stopped, "textback_modem_up", modem="modem") == 0
        assert not at_least(counters(stopped), after_reconnect)
        # node_exporter's view: every read whole, each a new file (renamed in place)
        assert watcher.reads > 10
        assert not watcher.partial
        assert len(watcher.inodes) > 2

        # a restart starts every counter where the database left it
        (tmp_path / "notify.sock").unlink()
        prom.unlink()
        async with running_daemon(r.config, tmp_path) as d2:
            await ready(d2)
            await d2.wait_log("event=metrics_started")
            await until(prom.exists, "the first textfile of the restarted daemon")
            restarted = prom.read_text()
            promtool_check(restarted)
            assert not at_least(counters(restarted), counters(stopped))
            assert value(restarted, "textback_calls_total", outcome="answered") == 1
            assert value(restarted, "textback_texts_total", modem="modem", state="sent") == 2
            assert value(restarted, "textback_ami_reconnects_total") == 1
            # the histogram is the process's own: it starts afresh
            assert value(restarted, "textback_hangup_to_submit_seconds_count") == 0
            d2.signal(signal.SIGTERM)
            assert await d2.wait_exit() == 0


def test_the_readme_alert_rules_are_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Prometheus\n", 1)[1].split("\n## ", 1)[0]
    rules = section.split("### Two alerts", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: apt-get install prometheus (.ci/run does it)")
    path = tmp_path / "textback.rules.yml"
    path.write_text(rules)
    run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, check=False)
    assert run.returncode == 0, (run.stdout + run.stderr).decode()
    assert b"2 rules found" in run.stdout
