"""The AMI intake over real loopback TCP against the replay server; timers on ManualClock."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.intake.client import AmiError
from daemon.intake.frames import FrameParser
from daemon.intake.replayserver import ReplayServer, encode, trace_body
from tests.ami_support import SECRET, rig, settle, until
from tests.conftest import AMI_DIR, trace_names
from tests.test_ami_frames import NAMES, _utf8_frames


def _body(name: str) -> bytes:
    return trace_body((AMI_DIR / f"{name}.ami").read_bytes())


def _expected(body: bytes) -> list[dict[str, str]]:
    return [m for m in FrameParser().feed(body) if "Event" in m]


@pytest.mark.parametrize("name", trace_names())
async def test_trace_arrives_as_parsed_in_one_piece(name: str) -> None:
    raw = (AMI_DIR / f"{name}.ami").read_bytes()
    expected = [m for m in FrameParser().feed(raw) if "Event" in m]
    server = ReplayServer(trace_body(raw), fully_booted=False, chunk=4093)
    async with rig(server) as r:
        await until(lambda: len(r.events) >= len(expected), what="all events")
        await settle(3)
        assert r.events == expected
        assert r.client.counters.malformed == 0
        assert r.client.counters.events == len(expected)
        assert len(r.resyncs) == 1


async def test_one_byte_writes_keep_multibyte_names() -> None:
    body = _utf8_frames().split(b"\r\n", 1)[1]
    server = ReplayServer(body, fully_booted=False, chunk=1)
    async with rig(server) as r:
        await until(lambda: len(r.events) == len(NAMES))
        assert [e["CallerIDName"] for e in r.events] == NAMES


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_tcp_writes_cut_anywhere(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["utf8", "11-ivr-hangup", "03-short-abandon"]))
    body = _utf8_frames().split(b"\r\n", 1)[1] if name == "utf8" else _body(name)
    splits = data.draw(st.lists(st.integers(1, len(body) - 1), max_size=30))
    server = ReplayServer(body, fully_booted=False, splits=splits)
    expected = _expected(body)
    async with rig(server) as r:
        await until(lambda: len(r.events) >= len(expected))
        assert r.events == expected


async def test_drop_mid_call_reconnects_resyncs_and_records_the_gap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    body = _body("04-answered")
    cut = body.index(b"Event: BridgeEnter") + 10  # inside an event, while the call is up
    frame_start = body.rindex(b"\r\n\r\n", 0, cut) + 4
    frame_end = body.index(b"\r\n\r\n", cut) + 4
    expected = _expected(body[:frame_start]) + _expected(body[frame_end:])
    server = ReplayServer(body, fully_booted=False, drop_at=[cut])
    server.flowing.clear()
    async with rig(server) as r:
        await until(lambda: len(r.resyncs) == 1)
        assert r.resyncs[0][1] == r.resyncs[0][2]  # first connect: no gap
        server.flowing.set()
        await until(lambda: r.client.counters.losses == 1, what="loss")
        await until(lambda: r.clock.pending >= 1, what="backoff sleep")
        await settle()
        assert server.stats.connections == 1  # the backoff waits on the injected clock
        assert not r.client.connected
        server.flowing.clear()  # keep the calls "in progress" for the resync
        lost_at = r.clock.now()
        r.clock.advance(1.0)
        await until(lambda: len(r.resyncs) == 2, what="resync")
        channels, gap_from, gap_to = r.resyncs[1]
        assert sorted(c["Channel"] for c in channels) == [
            "PJSIP/101-00000007",
            "PJSIP/trunk-00000006",
        ]
        assert {c["Linkedid"] for c in channels} == {"1795331048.6"}
        assert (gap_from, gap_to) == (lost_at, lost_at + 1.0)
        counters = r.client.counters
        assert (counters.gaps, counters.losses, counters.connects) == (1, 1, 2)
        assert list(r.client.gaps) == [(lost_at, lost_at + 1.0)]
        assert server.stats.actions.count("CoreShowChannels") == 2
        server.flowing.set()
        await until(lambda: len(r.events) >= len(expected), what="the rest")
        assert r.events == expected
        # each snapshot came before any event of its connection, and none came twice
        assert r.resync_at == [0, len(_expected(body[:frame_start]))]
    text = caplog.text
    assert "AMI connected to 127.0.0.1:" in text
    assert " as textback" in text
    assert "lost: closed by the server" in text
    assert "AMI gap from" in text
    assert SECRET not in text


async def test_close_during_pending_reconnect_connects_no_more() -> None:
    body = _body("03-short-abandon")
    server = ReplayServer(body, drop_at=[len(body) // 2])
    async with rig(server) as r:
        await until(lambda: r.client.counters.losses == 1)
        await until(lambda: r.clock.pending >= 1)
        await r.client.close()
        r.clock.advance(3600)
        await settle(50)
        assert server.stats.connections == 1
        assert not r.client.connected
        assert r.clock.pending == 0  # the backoff sleep was cancelled, not left behind


async def test_wrong_secret_backs_off_with_growing_waits(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="daemon.ami")
    server = ReplayServer(_body("03-short-abandon"))
    async with rig(server, secret="wrong-secret-xyz") as r:
        for n in range(1, 5):
            await until(lambda n=n: r.client.counters.login_failures == n)  # type: ignore[misc]
            await until(lambda: r.clock.pending >= 1)
            await settle()
            assert server.stats.connections == n  # no busy loop: waits for the clock
            r.clock.advance(r.client.counters.last_backoff)
        assert r.client.counters.backoffs[:4] == [2.0, 8.0, 30.0, 30.0]
        assert server.stats.failed_logins >= 4
        assert r.client.counters.connects == 0
    failures = [rec for rec in caplog.records if "login to" in rec.getMessage()]
    assert len(failures) >= 4
    assert failures[0].levelno == logging.WARNING
    assert "Authentication failed" in failures[0].getMessage()
    assert {rec.levelno for rec in failures[1:]} == {logging.DEBUG}
    assert "wrong-secret-xyz" not in caplog.text


async def test_refused_connection_backoff_doubles_to_the_cap() -> None:
    server = ReplayServer(b"")
    async with rig(server, max_backoff=30.0) as r:
        await until(lambda: r.client.connected)
        await server.close()  # nothing listens on the port any more
        server.drop()
        await until(lambda: r.client.counters.losses == 1)
        for n in range(1, 7):
            await until(lambda: r.clock.pending >= 1)
            r.clock.advance(r.client.counters.last_backoff)
            await until(lambda n=n: r.client.counters.connect_failures == n)  # type: ignore[misc]
        assert r.client.counters.backoffs[:7] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


async def test_backoff_resets_after_a_good_login() -> None:
    body = _body("04-answered")
    server = ReplayServer(body, drop_at=[8000, 16000], fully_booted=False)
    async with rig(server) as r:
        for n in (1, 2):
            await until(lambda n=n: r.client.counters.losses == n)  # type: ignore[misc]
            await until(lambda: r.clock.pending >= 1)
            r.clock.advance(r.client.counters.last_backoff)
        await until(lambda: server.finished.is_set() and len(r.resyncs) == 3)
        assert r.client.counters.backoffs == [1.0, 1.0]
        assert r.client.counters.gaps == 2


async def test_half_open_link_detected_within_ping_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = ReplayServer(_body("11-ivr-hangup"), answer_ping=False)
    async with rig(server, keepalive=20.0, ping_timeout=10.0) as r:
        await until(lambda: r.client.state == "up" and r.clock.pending >= 1)
        r.clock.advance(20.0)
        await until(lambda: server.stats.pings == 1, what="ping sent")
        r.clock.advance(9.9)
        await settle()
        assert r.client.connected
        assert r.client.counters.losses == 0
        r.clock.advance(0.1)
        await until(lambda: r.client.counters.losses == 1, what="loss detected")
        assert r.client.counters.ping_timeouts == 1
        await until(lambda: r.clock.pending >= 1)
        r.clock.advance(1.0)
        await until(lambda: server.stats.connections == 2, what="reconnect")
    assert "no answer to Ping within 10 s" in caplog.text


async def test_answered_pings_keep_the_connection() -> None:
    server = ReplayServer(_body("11-ivr-hangup"))
    async with rig(server, keepalive=20.0, ping_timeout=10.0) as r:
        for n in range(1, 4):
            await until(lambda: r.client.state == "up" and r.clock.pending >= 1)
            r.clock.advance(20.0)
            await until(lambda n=n: r.client.counters.pongs == n)  # type: ignore[misc]
        assert server.stats.pongs == 3
        await settle()
        assert r.client.connected
        assert r.client.counters.losses == 0
        assert r.client.counters.ping_timeouts == 0


async def test_actions_answered_and_refused_when_offline() -> None:
    server = ReplayServer(_body("11-ivr-hangup"))
    async with rig(server) as r:
        await until(lambda: r.client.connected)
        got = await r.client.action(
            {"Action": "Getvar", "Channel": "PJSIP/trunk-1", "Variable": "CALLERID(pres)"}
        )
        assert got[0]["Response"] == "Success"
        assert got[0]["Variable"] == "CALLERID(pres)"
        got = await r.client.action({"Action": "Redirect", "Channel": "PJSIP/trunk-1"})
        assert got[0]["Message"] == "Redirect successful"
        server.drop()
        await until(lambda: not r.client.connected)
        with pytest.raises(AmiError, match="not connected"):
            await r.client.action({"Action": "Getvar", "Variable": "X"})


async def test_wanted_filters_skip_events_and_varsets() -> None:
    body = _body("01-missed-noanswer-voicemail")
    wanted = frozenset({"Newchannel", "Hangup", "VarSet"})
    keep_vars = frozenset({"DIALSTATUS"})
    full = _expected(body)
    expected = [
        m
        for m in full
        if m["Event"] in wanted and (m["Event"] != "VarSet" or m["Variable"] in keep_vars)
    ]
    server = ReplayServer(body, fully_booted=False)
    async with rig(server, wanted=wanted, wanted_vars=keep_vars) as r:
        await until(lambda: server.finished.is_set() and len(r.events) >= len(expected))
        await settle(3)
        assert r.events == expected
        assert r.client.counters.skipped == len(full) - len(expected)


async def test_asterisk_shutdown_named_in_the_loss(caplog: pytest.LogCaptureFixture) -> None:
    body = encode({"Event": "Shutdown", "Shutdown": "Cleanly", "Restart": "True"})
    server = ReplayServer(body, drop_at=[len(body)])
    async with rig(server, wanted=frozenset({"Hangup"})) as r:
        await until(lambda: r.client.counters.losses == 1)
    assert "(Asterisk shut down)" in caplog.text


async def test_silent_server_login_times_out_on_the_clock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A port that accepts and never answers (a hung Asterisk): no hang, a clear line."""
    import asyncio

    from daemon.clock import ManualClock
    from daemon.config import AmiConfig
    from daemon.intake.client import AmiClient

    accepted: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clock = ManualClock()
    client = AmiClient(
        AmiConfig(port=port, secret=SECRET, ping_timeout=10.0),
        on_event=lambda m: None,
        on_resync=None,
        clock=clock,
        wanted=None,
        wanted_vars=frozenset(),
    )
    try:
        await client.start()
        await until(lambda: client.state == "logging_in" and clock.pending >= 1)
        clock.advance(9.9)
        await settle()
        assert client.counters.backoffs == []
        clock.advance(0.1)
        await until(lambda: client.counters.backoffs == [1.0])
        assert not client.connected
        assert client.counters.connects == 0
    finally:
        await client.close()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
    assert "no answer to Login within 10 s" in caplog.text


async def test_resync_refused_is_logged_and_events_still_flow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A manager user without write=reporting: no snapshot, a clear warning, events on."""
    body = _body("11-ivr-hangup")
    server = ReplayServer(body, fully_booted=False, refuse={"coreshowchannels"})
    async with rig(server) as r:
        await until(lambda: len(r.events) >= len(_expected(body)))
        assert r.events == _expected(body)
        assert r.resyncs == []  # never a made-up empty snapshot: calls would "vanish"
        assert r.client.counters.resync_failures == 1
    assert "AMI resync refused: Permission denied" in caplog.text


async def test_close_stops_a_run_task_owned_by_the_caller() -> None:
    """The service runs `run()` in its own TaskGroup; close() must end it too."""
    import asyncio

    from daemon.clock import ManualClock
    from daemon.config import AmiConfig
    from daemon.intake.client import AmiClient

    server = ReplayServer(_body("03-short-abandon"))
    server.secret = SECRET
    port = await server.start()
    clock = ManualClock()
    client = AmiClient(
        AmiConfig(port=port, secret=SECRET),
        on_event=lambda m: None,
        on_resync=None,
        clock=clock,
        wanted=None,
        wanted_vars=frozenset(),
        jitter=0.5,
    )
    task = asyncio.create_task(client.run())
    try:
        await until(lambda: client.state == "up")
        server.drop()
        await until(lambda: client.state == "backoff" and clock.pending >= 1)
        assert 0.5 <= client.counters.last_backoff <= 1.0  # jitter only ever shortens
        await client.close()
        await asyncio.wait_for(task, 5)  # ends on its own, not cancelled
        clock.advance(3600)
        await settle()
        assert server.stats.connections == 1
        assert client.state == "closed"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.close()
