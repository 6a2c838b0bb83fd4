"""The real driver through a real pty against the simulator: every profile, every fault."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gsm import errors
from gsm.modem import Modem, ModemState, SmsSender, Timeouts, text_mode_safe
from gsm.pdu import Deliver, StatusReport, sms_info
from gsm.simulator import PROFILES, Faults, Simulator, running
from gsm.transport import open_error

FAST = Timeouts(
    command=2.0,
    probe=0.2,
    startup=5.0,
    prompt=2.0,
    send=2.0,
    registration=0.2,
    poll=0.01,
    reopen_initial=0.01,
    reopen_max=0.05,
    health_interval=0,
)
TO = "+12025550123"
TEXTS = {
    "gsm7": "Sorry we missed your call. We will call you back soon.",
    "extension": "Price: 10€ [a] {b} ~c~ \\d^ |e|",
    "ucs2-emoji": "Merci d'avoir appelé 😀👍🏽 à bientôt",
    "multipart-gsm7": "Long text with € ext chars, " * 12,
    "multipart-ucs2": "Привет 😀 " * 20,
}
FAULTS = {
    "none": Faults(),
    "urc-noise": Faults(urc_noise=True),
    "garbage": Faults(garbage=True),
    "slow": Faults(slow=0.01),
}


def _target(link: str) -> str | None:
    return os.path.realpath(link) if os.path.lexists(link) else None


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with running("sim800") as s:
        yield s


async def _started(sim: Simulator, **kwargs: object) -> Modem:
    modem = Modem(sim.device, timeouts=kwargs.pop("timeouts", FAST), **kwargs)  # type: ignore[arg-type]
    await asyncio.wait_for(modem.start(), 10)
    return modem


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_texts_arrive_exactly_as_sent(profile: str, fault: str) -> None:
    faults = replace(FAULTS[fault])
    async with running(profile, faults) as sim:
        modem = await _started(sim)
        try:
            for name, text in TEXTS.items():
                refs = await asyncio.wait_for(modem.send_sms(TO, text), 10)
                got = sim.sent[-1]
                assert (got.number, got.text) == (TO, text), name
                assert got.parts == sms_info(text).parts == len(refs)
                assert list(got.references) == refs
                assert got.status_report
        finally:
            await modem.close()
        assert len(sim.sent) == len(TEXTS)
        assert sim.duplicates == 0
        assert len(sim.parts) == sum(sms_info(t).parts for t in TEXTS.values())
        if fault == "garbage":
            assert modem.noise > 0  # seen, counted, and harmless


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_probe_reads_identity(profile: str) -> None:
    async with running(profile) as sim:
        modem = await _started(sim)
        try:
            info = await modem.probe()
        finally:
            await modem.close()
    p = PROFILES[profile]
    assert info.maker == p.maker.strip()
    assert info.model == p.model.strip()
    assert info.firmware == (p.firmware or None)
    assert info.imei == p.imei
    assert info.iccid == p.iccid
    assert info.operator == p.operator
    assert (info.rssi, info.dbm) == (21, -71)
    assert info.registration == 1
    assert info.mode == "pdu"
    assert info.inbound


async def test_modem_is_an_sms_sender(sim: Simulator) -> None:
    modem = await _started(sim)
    try:
        sender: SmsSender = modem
        assert sender.ready
        assert await sender.send_sms(TO, "hi") == [1]
        assert modem.state is ModemState.READY
        assert await modem.health_check() == (21, 1)
    finally:
        await modem.close()
    assert modem.state is ModemState.CLOSED


@pytest.mark.parametrize(
    "number", ["12025550123", '+1202555"', "+12025550123\r\nAT+CMGS=1", "+1\x1a", "", "+"]
)
async def test_bad_numbers_never_reach_the_modem(sim: Simulator, number: str) -> None:
    modem = await _started(sim)
    try:
        with pytest.raises(ValueError, match="international"):
            await modem.send_sms(number, "hello")
    finally:
        await modem.close()
    assert not [c for c in sim.commands if "CMGS" in c]


async def test_slow_answers_within_the_timeouts_still_send() -> None:
    async with running("huawei", Faults(slow=0.05)) as sim:
        modem = await _started(sim)
        try:
            assert len(await modem.send_sms(TO, TEXTS["multipart-gsm7"])) == 3
        finally:
            await modem.close()
        assert sim.sent[0].text == TEXTS["multipart-gsm7"]


async def test_too_slow_prompt_times_out_then_recovers_without_duplicates() -> None:
    async with running("sim800") as sim:
        modem = await _started(sim, timeouts=replace(FAST, prompt=0.05))
        try:
            sim.faults.slow = 0.3
            with pytest.raises(errors.AtTimeout) as exc:
                await asyncio.wait_for(modem.send_sms(TO, "one"), 5)
            assert exc.value.retryable
            assert "AT+CMGS" in str(exc.value)
            sim.faults.slow = 0.0
            assert await asyncio.wait_for(modem.send_sms(TO, "one"), 5)
        finally:
            await modem.close()
        assert [s.text for s in sim.sent] == ["one"]
        assert sim.duplicates == 0


async def test_no_answer_after_the_body_is_uncertain_not_retried() -> None:
    async with running("sim800") as sim:
        modem = await _started(sim, timeouts=replace(FAST, send=0.1))
        try:
            original = sim._body

            async def late_body(pending: tuple[str, int | str], body: str) -> None:
                sim.faults.slow = 0.5
                await original(pending, body)

            sim._body = late_body  # type: ignore[method-assign]
            with pytest.raises(errors.SendUncertain) as exc:
                await asyncio.wait_for(modem.send_sms(TO, "maybe"), 5)
            assert not exc.value.retryable
        finally:
            await modem.close()


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_modem_gone_after_the_body_is_uncertain_not_retryable(profile: str) -> None:
    # The network took the text, then the module reset before "+CMGS: <mr>": a
    # retryable ModemGone here would make the outbox text the caller twice.
    async with running(profile, Faults(vanish_after_body=0)) as sim:
        modem = await _started(sim)
        try:
            with pytest.raises(errors.SendUncertain) as exc:
                await asyncio.wait_for(modem.send_sms(TO, "taken"), 5)
            assert isinstance(exc.value, errors.LostAfterBody)
            assert not exc.value.retryable
            assert "went away after taking the message" in str(exc.value)
        finally:
            await modem.close()
        assert [s.text for s in sim.sent] == ["taken"]


async def test_unreadable_message_reference_is_uncertain() -> None:
    async with running("sim800", Faults(bad_message_ref=True)) as sim:
        modem = await _started(sim)
        try:
            with pytest.raises(errors.UnclearAfterBody, match="no message reference") as exc:
                await asyncio.wait_for(modem.send_sms(TO, "garbled"), 5)
            assert isinstance(exc.value, errors.SendUncertain)
            assert not exc.value.retryable
        finally:
            await modem.close()
        assert len(sim.sent) == 1


async def test_uncertain_part_of_a_multipart_text_resends_from_that_part_only() -> None:
    # Part 1 is confirmed, part 2 is taken and the modem resets before answering: the
    # send is uncertain. A deliberate resend (resend_uncertain) repeats part 2, never 1.
    text = "z" * 400  # 3 parts
    async with running("sim800", Faults(vanish_after_body=1)) as sim:
        modem = await _started(sim)
        try:
            with pytest.raises(errors.LostAfterBody):
                await asyncio.wait_for(modem.send_sms(TO, text), 5)
            assert [p.seq for p in sim.parts] == [1, 2]
            sim.come_back()
            await asyncio.wait_for(modem.wait_ready(), 5)
            refs = await asyncio.wait_for(modem.send_sms(TO, text), 5)
        finally:
            await modem.close()
        assert len(refs) == 3
        assert [p.seq for p in sim.parts] == [1, 2, 2, 3]
        assert len({p.reference for p in sim.parts}) == 1  # one text for the handset


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_cms_error_every_second_part_resumes_without_duplicating(profile: str) -> None:
    text = "x" * 400  # 3 parts
    async with running(profile, Faults(cms_every=2)) as sim:
        modem = await _started(sim)
        try:
            with pytest.raises(errors.CmsError) as exc:
                await modem.send_sms(TO, text)
            assert (exc.value.code, exc.value.retryable) == (38, True)
            assert len(sim.parts) == 1
            sim.faults.cms_every = 0
            refs = await modem.send_sms(TO, text)
        finally:
            await modem.close()
        assert len(refs) == 3
        assert [s.text for s in sim.sent] == [text]
        assert [p.seq for p in sim.parts] == [1, 2, 3]
        assert sim.duplicates == 0


async def test_permanent_cms_error_is_not_retryable() -> None:
    async with running("sim800", Faults(cms_every=1, cms_code=1)) as sim:
        modem = await _started(sim)
        try:
            with pytest.raises(errors.CmsError) as exc:
                await modem.send_sms(TO, "hello")
        finally:
            await modem.close()
    assert not exc.value.retryable
    assert exc.value.meaning.startswith("unassigned")


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_vanishing_device_fails_the_send_then_reopens_by_id(profile: str) -> None:
    async with running(profile, Faults(vanish_after=1)) as sim:
        modem = await _started(sim)
        try:
            await modem.send_sms(TO, "first")
            first_pty = sim.pty_path
            with pytest.raises(errors.ModemGone) as exc:
                await asyncio.wait_for(modem.send_sms(TO, "second"), 5)
            assert exc.value.retryable
            await sim.wait_for(lambda: modem.state is ModemState.RECONNECTING)
            with pytest.raises(errors.ModemGone):
                await modem.send_sms(TO, "second")
            assert _target(sim.device) is None  # the by-id link went with the device
            sim.come_back()
            await asyncio.wait_for(modem.wait_ready(), 5)
            assert modem.reconnects == 1
            assert _target(sim.device) == sim.pty_path
            await modem.send_sms(TO, "second")
        finally:
            await modem.close()
        assert first_pty
        assert [s.text for s in sim.sent] == ["first", "second"]
        assert sim.duplicates == 0


async def test_vanishing_mid_multipart_resumes_at_the_missing_part() -> None:
    text = "y" * 400  # 3 parts
    async with running("sim800", Faults(vanish_after=2)) as sim:
        modem = await _started(sim)
        try:
            with pytest.raises(errors.ModemGone):
                await asyncio.wait_for(modem.send_sms(TO, text), 5)
            assert len(sim.parts) == 2
            sim.come_back()
            await asyncio.wait_for(modem.wait_ready(), 5)
            refs = await modem.send_sms(TO, text)
        finally:
            await modem.close()
        assert len(refs) == 3
        assert [s.text for s in sim.sent] == [text]
        assert [p.seq for p in sim.parts] == [1, 2, 3]


async def test_without_reconnect_a_vanished_modem_fails() -> None:
    async with running("sim800") as sim:
        modem = await _started(sim, reconnect=False)
        try:
            sim.vanish()
            await sim.wait_for(lambda: modem.state is ModemState.FAILED)
            with pytest.raises(errors.ModemGone):
                await modem.send_sms(TO, "x")
        finally:
            await modem.close()


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_no_network_at_start_is_not_registered(profile: str) -> None:
    async with running(profile, Faults(no_network=True)) as sim:
        modem = Modem(sim.device, timeouts=FAST)
        with pytest.raises(errors.NotRegistered, match="searching") as exc:
            await asyncio.wait_for(modem.start(), 5)
        assert exc.value.retryable
        assert modem.state is ModemState.FAILED
        await modem.close()


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_network_lost_later_fails_sends_retryably(profile: str) -> None:
    async with running(profile) as sim:
        modem = await _started(sim)
        try:
            sim.faults.no_network = True
            with pytest.raises(errors.CmsError) as exc:
                await modem.send_sms(TO, "hello")
            assert (exc.value.code, exc.value.retryable) == (331, True)
            sim.faults.no_network = False
            await modem.send_sms(TO, "hello")
        finally:
            await modem.close()
        assert [s.text for s in sim.sent] == ["hello"]


async def test_probe_without_network_still_starts() -> None:
    async with running("quectel", Faults(no_network=True)) as sim:
        modem = Modem(sim.device, timeouts=FAST, require_network=False)
        await modem.start()
        try:
            info = await modem.probe()
        finally:
            await modem.close()
    assert info.registration == 2
    assert info.operator is None


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_sim_pin_is_entered_once(profile: str) -> None:
    async with running(profile, Faults(pin="4321")) as sim:
        modem = await _started(sim, pin="4321")
        try:
            assert await modem.send_sms(TO, "unlocked")
        finally:
            await modem.close()
        assert sim.pin_attempts == 1


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_wrong_pin_stops_and_is_never_retried(profile: str) -> None:
    async with running(profile, Faults(pin="4321")) as sim:
        modem = Modem(sim.device, timeouts=FAST, pin="1111")
        with pytest.raises(errors.PinError, match="not retrying") as exc:
            await modem.start()
        assert "1111" not in str(exc.value)  # the PIN is never in a message or log
        assert not errors.PinError.retryable
        assert modem.state is ModemState.FAILED
        await modem.close()
        assert sim.pin_attempts == 1


async def test_silence_after_the_pin_entry_is_never_answered_with_a_second_pin() -> None:
    # The modem takes AT+CPIN="...", then falls silent (a slow SIM, a reset): the attempt
    # may have counted, so the driver stops with a PinError rather than a retryable error
    # that would make the daemon start a new Modem and enter the PIN again.
    async with running("sim800", Faults(pin="4321", silent_after_pin=True)) as sim:
        quick = Timeouts(
            command=0.2, probe=0.2, startup=5.0, poll=0.01, health_interval=0, scale=0.04
        )
        modem = Modem(sim.device, timeouts=quick, pin="1111")
        with pytest.raises(errors.PinError, match="may have counted"):
            await modem.start()
        await modem.close()
        assert sim.pin_attempts == 1


# CPIN's own timeout 5 s x 0.05 = 0.25 s; the SIM below takes 0.4 s to check a PIN.
SLOW_PIN = replace(FAST, command=0.1, scale=0.05, poll=0.02)


async def test_slow_check_of_a_wrong_pin_is_one_attempt_and_a_pin_error() -> None:
    # AT+CPIN="1111" times out (the SIM is slow), then the SIM refuses it late. The
    # driver looks (AT+CPIN?) instead of writing the PIN again, and stops for good.
    async with running("sim800", Faults(pin="4321", pin_delay=0.4)) as sim:
        modem = Modem(sim.device, timeouts=SLOW_PIN, pin="1111")
        with pytest.raises(errors.PinError, match="may have counted") as exc:
            await asyncio.wait_for(modem.start(), 10)
        assert "SIM PIN" in str(exc.value)
        assert modem.state is ModemState.FAILED
        await modem.close()
        assert sim.pin_attempts == 1
        assert sim._state.pin_tries == 2  # one try used, not three: no PUK lock
        assert not sim._state.puk


async def test_slow_check_of_the_right_pin_goes_on() -> None:
    async with running("sim800", Faults(pin="4321", pin_delay=0.4)) as sim:
        modem = await _started(sim, pin="4321", timeouts=SLOW_PIN)
        try:
            assert modem.ready
            assert await asyncio.wait_for(modem.send_sms(TO, "unlocked late"), 5)
        finally:
            await modem.close()
        assert sim.pin_attempts == 1


async def test_a_modem_never_writes_an_unconfirmed_pin_again() -> None:
    # A second start() of the same Modem (the SIM now answers) must not enter the PIN
    # again: the first entry was never confirmed and may have counted.
    async with running("sim800", Faults(pin="4321", silent_after_pin=True)) as sim:
        modem = Modem(sim.device, timeouts=replace(SLOW_PIN, command=0.2), pin="4321")
        with pytest.raises(errors.PinError, match="may have counted"):
            await asyncio.wait_for(modem.start(), 10)
        sim.faults.silent_after_pin = False
        sim.faults.mute = False
        with pytest.raises(errors.PinError, match="may have counted"):
            await asyncio.wait_for(modem.start(), 10)
        await modem.close()
        assert sim.pin_attempts == 1


async def test_reconnect_enters_a_refused_pin_once_then_fails() -> None:
    # The PIN was accepted at start; the module then reboots and its SIM refuses the
    # PIN (slowly). The reconnect loop writes it once, then stops: no second try.
    async with running("sim800", Faults(pin="4321")) as sim:
        modem = await _started(sim, pin="4321", timeouts=replace(SLOW_PIN, reopen_initial=0.01))
        try:
            sim.faults.pin = "9876"
            sim.faults.pin_delay = 0.4
            sim.vanish()
            await asyncio.wait_for(sim.wait_for(lambda: modem.state is ModemState.RECONNECTING), 5)
            sim.come_back()
            await asyncio.wait_for(sim.wait_for(lambda: modem.state is ModemState.FAILED), 10)
            assert isinstance(modem.fatal, errors.PinError)
            assert sim.pin_attempts == 2  # once at start (accepted), once after the reboot
            assert sim._state.pin_tries == 2
        finally:
            await modem.close()


async def test_pin_required_but_not_configured() -> None:
    async with running("huawei", Faults(pin="4321")) as sim:
        modem = Modem(sim.device, timeouts=FAST)
        with pytest.raises(errors.PinError, match="asks for a PIN"):
            await modem.start()
        await modem.close()
        assert sim.pin_attempts == 0


def test_pin_must_be_digits() -> None:
    with pytest.raises(ValueError, match="4 to 8 digits"):
        Modem("/dev/null", pin='12"4')


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_mute_modem_does_not_answer_at(profile: str) -> None:
    async with running(profile, Faults(mute=True)) as sim:
        modem = Modem(sim.device, timeouts=replace(FAST, startup=0.3, probe=0.05))
        with pytest.raises(errors.AtTimeout) as exc:
            await asyncio.wait_for(modem.start(), 5)
        assert exc.value.command == "AT"
        await modem.close()


async def test_missing_device(tmp_path: Path) -> None:
    modem = Modem(str(tmp_path / "ttyUSB9"), timeouts=FAST)
    with pytest.raises(errors.NoDevice, match="no such device"):
        await modem.start()
    await modem.close()


def test_open_errors_map_to_clear_ones() -> None:
    assert isinstance(open_error("/dev/x", PermissionError(13, "denied")), errors.DevicePermission)
    assert "dialout" in str(open_error("/dev/x", PermissionError(13, "denied")))
    assert isinstance(open_error("/dev/x", FileNotFoundError(2, "no")), errors.NoDevice)
    assert isinstance(open_error("/dev/x", OSError(5, "io")), errors.ModemGone)


async def test_text_mode_sends_what_pdu_mode_sends(sim: Simulator) -> None:
    modem = await _started(sim, mode="text")
    try:
        assert modem.mode == "text"
        refs = await modem.send_sms(TO, "Call us back at 10, thanks!")
        emoji = await modem.send_sms(TO, "emoji 😀")
        long = await modem.send_sms(TO, "z" * 200)
    finally:
        await modem.close()
    assert (len(refs), len(emoji), len(long)) == (1, 1, 2)
    assert [(s.text, s.encoding) for s in sim.sent] == [
        ("Call us back at 10, thanks!", "gsm7"),
        ("emoji 😀", "ucs2"),
        ("(1/2) " + "z" * 154, "gsm7"),
        ("(2/2) " + "z" * 46, "gsm7"),
    ]
    assert text_mode_safe("Call us back at 10, thanks!")
    assert not text_mode_safe('quote "x"')


@pytest.mark.parametrize("profile", ["sim800", "huawei", "quectel"])
async def test_inbound_texts_and_delivery_reports(profile: str) -> None:
    async with running(profile, Faults(urc_noise=True)) as sim:
        modem = await _started(sim)
        stream = modem.incoming()
        try:
            refs = await modem.send_sms(TO, "hello")
            sim.inject_text("+12025550142", "STOP " + "é" * 100)  # 2 UCS-2 parts
            got = await asyncio.wait_for(anext(stream), 5)
            assert isinstance(got, Deliver)
            assert (got.sender, got.text) == ("+12025550142", "STOP " + "é" * 100)
            sim.inject_report(refs[0], TO)
            report = await asyncio.wait_for(anext(stream), 5)
            assert isinstance(report, StatusReport)
            assert (report.message_ref, report.recipient, report.delivered) == (refs[0], TO, True)
            # read and deleted: nothing left in the simulated SIM
            assert not any(sim._state.storage.values())
        finally:
            await stream.aclose()
            await modem.close()


async def test_incoming_ends_on_close(sim: Simulator) -> None:
    modem = await _started(sim)
    stream = modem.incoming()
    await modem.close()
    assert [m async for m in stream] == []


async def test_start_twice_is_an_error(sim: Simulator) -> None:
    modem = await _started(sim)
    try:
        with pytest.raises(RuntimeError):
            await modem.start()
    finally:
        await modem.close()


async def test_context_manager_and_raw_command(sim: Simulator) -> None:
    async with Modem(sim.device, timeouts=FAST) as modem:
        reply = await modem.command("AT+CGMI")
        assert reply.lines == ("SIMCOM_Ltd",)
        with pytest.raises(errors.CommandError):
            await modem.command("AT+NOPE")
        with pytest.raises(ValueError, match="control bytes"):
            await modem.command('AT+CMGS="x"\r')


async def test_health_check_notices_a_dead_modem_and_reopens() -> None:
    fast = replace(FAST, health_interval=0.02, command=0.1, probe=0.1, startup=0.5, scale=0.01)
    async with running("sim800") as sim:
        modem = await _started(sim, timeouts=fast)
        try:
            sim.faults.mute = True
            await asyncio.wait_for(sim.wait_for(lambda: modem.state is ModemState.RECONNECTING), 5)
            sim.faults.mute = False
            await asyncio.wait_for(modem.wait_ready(), 20)
            assert modem.reconnects == 1
            assert await modem.send_sms(TO, "back")
        finally:
            await modem.close()
        assert [s.text for s in sim.sent] == ["back"]


async def test_modem_without_pdu_mode_falls_back_to_text() -> None:
    async with running("wavecom", Faults(no_pdu=True)) as sim:
        modem = await _started(sim)
        try:
            assert modem.mode == "text"
            assert len(await modem.send_sms(TO, "We missed your call, sorry")) == 1
            assert len(await modem.send_sms(TO, TEXTS["multipart-gsm7"])) == 6
        finally:
            await modem.close()
        assert [(s.text, s.encoding) for s in sim.sent[:2]] == [
            ("We missed your call, sorry", "gsm7"),
            ("(1/6) " + "Long text with € ext chars, " * 2 + "Long ", "ucs2"),
        ]


async def test_device_that_comes_back_by_itself() -> None:
    async with running("quectel", Faults(vanish_after=0, return_after=0.05)) as sim:
        modem = await _started(sim)
        try:
            with pytest.raises(errors.ModemGone):
                await asyncio.wait_for(modem.send_sms(TO, "one"), 5)
            await asyncio.wait_for(modem.wait_ready(), 10)
            await modem.send_sms(TO, "one")
        finally:
            await modem.close()
        assert [s.text for s in sim.sent] == ["one"]
        assert sim.vanished == 1


async def _send_all(texts: list[str]) -> list[str]:
    async with running("sim800") as sim:
        modem = await _started(sim)
        try:
            for text in texts:
                await asyncio.wait_for(modem.send_sms(TO, text), 10)
        finally:
            await modem.close()
        assert sim.duplicates == 0
        return [s.text for s in sim.sent]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=350),
        min_size=1,
        max_size=6,
    )
)
def test_any_text_arrives_exactly_as_sent(texts: list[str]) -> None:
    assert asyncio.run(_send_all(texts)) == texts


async def test_start_cleans_up_a_modem_left_at_the_prompt() -> None:
    """A daemon killed at the "> " prompt leaves the modem waiting for a body."""
    async with running("sim800") as sim:
        modem = Modem(sim.device, timeouts=FAST)
        await modem.start()
        await modem.command("AT+CMGF=0")
        modem._write(b"AT+CMGS=20\r")  # and die before the body
        await sim.wait_for(lambda: any(c == "AT+CMGS=20" for c in sim.commands))
        await modem.close()
        sim.faults.slow = 0.02  # the OK for the ESC and the OK for AT come apart
        modem = await _started(sim)
        try:
            assert modem.ready
            assert await modem.send_sms(TO, "after the crash") == [1]
        finally:
            await modem.close()
        assert [s.text for s in sim.sent] == ["after the crash"]


async def test_the_pin_never_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(5)  # TRACE: raw bytes on the wire
    async with running("sim800", Faults(pin="4321")) as sim:
        modem = await _started(sim, pin="4321")
        await modem.close()
    assert "AT+CPIN?" in caplog.text  # the wire was logged...
    assert "4321" not in caplog.text  # ...but not the PIN


def test_gsm_imports_nothing_from_daemon() -> None:
    import ast

    root = Path(__file__).resolve().parents[1] / "gsm"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n.split(".")[0] == "daemon"], path.name


@pytest.mark.parametrize("profile", ["sim800", "huawei"])
async def test_texts_stored_while_nobody_listened_are_read_at_start(profile: str) -> None:
    async with running(profile) as sim:
        sim.inject_text("+12025550142", "STOP")  # no AT+CNMI yet: stored, not announced
        sim.inject_text("+12025550143", "call me " * 30)
        modem = await _started(sim)
        stream = modem.incoming()
        try:
            got = [await asyncio.wait_for(anext(stream), 5) for _ in range(2)]
        finally:
            await stream.aclose()
            await modem.close()
        assert sorted((m.sender, m.text) for m in got if isinstance(m, Deliver)) == [
            ("+12025550142", "STOP"),
            ("+12025550143", "call me " * 30),
        ]
        assert not sim._state.storage["SM"]


async def test_a_second_driver_cannot_open_the_same_modem(sim: Simulator) -> None:
    first = await _started(sim)
    second = Modem(sim.device, timeouts=FAST)
    try:
        with pytest.raises(errors.ModemGone, match="lock"):
            await second.start()
    finally:
        await second.close()
        await first.close()


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_radio_switched_on_when_the_modem_starts_in_flight_mode(profile: str) -> None:
    async with running(profile, Faults(flight_mode=True)) as sim:
        modem = await _started(sim)
        try:
            assert await modem.send_sms(TO, "airborne no more")
        finally:
            await modem.close()
        assert "AT+CFUN=1" in sim.commands
        assert [s.text for s in sim.sent] == ["airborne no more"]
        if PROFILES[profile].busy_after_cfun:  # asked again through the 515 busy answers
            assert sim.commands.count("AT+CREG?") >= 3
