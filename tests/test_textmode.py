"""Text mode sends what PDU mode sends: UCS-2, the GSM-7 extension characters, and long
texts as separate numbered texts. The splitting is pure (hypothesis); what the simulator
records is what a phone shows; golden answers from real modems."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gsm import errors, textmode
from gsm.gsm7 import EXTENSION_CHARS
from gsm.modem import CSMP_FO, CSMP_FO_REPORT, CSMP_VP, Modem, Timeouts
from gsm.simulator import PROFILES, Faults, running
from gsm.textmode import (
    PLAIN_LIMIT,
    UCS2_LIMIT,
    join_text_mode,
    number_prefix,
    split_text_mode,
    units,
)
from tests.conftest import MODEM_DIR

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
    sweep=0,
)
TO = "+12025550123"
TEXT_ONLY = Faults(no_pdu=True)

# Characters that push a text out of plain text mode, and ones that do not.
MIXED = st.text(
    st.sampled_from(
        list("abcXYZ 019.,!?'()") + sorted(EXTENSION_CHARS) + list('é@$_"\n') + ["😀", "Ж", "ü"]
    ),
    min_size=1,
    max_size=700,
)


@given(MIXED)
def test_every_part_fits_is_numbered_and_the_parts_give_the_text_back(text: str) -> None:
    parts = split_text_mode(text)
    coding = textmode.coding_of(text)
    limit = PLAIN_LIMIT if coding == "ira" else UCS2_LIMIT
    assert all(p.coding == coding for p in parts)
    assert all(units(p.text, coding) <= limit for p in parts)
    assert join_text_mode([p.text for p in parts]) == text
    n = len(parts)
    if n == 1:
        assert parts[0].text == text  # a text that fits goes as it is, unnumbered
    else:
        assert units(text, coding) > limit  # split only when it does not fit
        assert [p.text[: len(number_prefix(k, n))] for k, p in enumerate(parts, 1)] == [
            number_prefix(k, n) for k in range(1, n + 1)
        ]


def test_words_stay_whole_and_a_long_word_is_cut() -> None:
    words = split_text_mode("word " * 80)
    assert len(words) == 3
    assert all(p.text.endswith(" ") for p in words)
    word = split_text_mode("x" * 400)
    assert [len(p.text) for p in word] == [160, 160, 98]


def test_surrogate_pairs_are_never_split_and_count_two() -> None:
    parts = split_text_mode("😀" * 40)
    assert [units(p.text, "ucs2") for p in parts] == [70, 22]  # "(1/2) " + 32 emoji
    assert all("\ud83d" not in p.body for p in parts)
    assert join_text_mode([p.text for p in parts]) == "😀" * 40


def test_plain_and_ucs2_bodies() -> None:
    (plain,) = split_text_mode("Call us back, thanks!")
    assert (plain.coding, plain.dcs, plain.body) == ("ira", 0, "Call us back, thanks!")
    (ucs2,) = split_text_mode("10€")
    assert (ucs2.coding, ucs2.dcs, ucs2.body) == ("ucs2", 8, "0031003020AC")
    with pytest.raises(ValueError, match="empty"):
        split_text_mode("")
    with pytest.raises(ValueError, match="more than"):
        split_text_mode("😀" * 4000)


async def _send_all(profile: str, texts: list[str], faults: Faults = TEXT_ONLY) -> list[list[str]]:
    """Each text through a text-mode modem; what the simulator recorded for each."""
    async with running(profile, replace(faults)) as sim:
        modem = Modem(sim.device, timeouts=FAST)
        await asyncio.wait_for(modem.start(), 10)
        out = []
        try:
            assert modem.mode == "text"
            for text in texts:
                before = len(sim.sent)
                refs = await asyncio.wait_for(modem.send_sms(TO, text), 20)
                got = sim.sent[before:]
                assert len(got) == len(refs)
                assert all(s.number == TO and s.parts == 1 for s in got)
                out.append([s.text for s in got])
        finally:
            await modem.close()
        return out


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MIXED, min_size=1, max_size=4))
def test_what_the_phone_shows_gives_every_text_back(texts: list[str]) -> None:
    shown = asyncio.run(_send_all("sim800", texts))
    assert [join_text_mode(parts) for parts in shown] == texts


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_every_profile_sends_unicode_extension_characters_and_long_texts(
    profile: str,
) -> None:
    texts = [
        "We missed your call, sorry!",
        "Price: 10€ [a] {b} ~c~ \\d^ |e|",
        "Merci d'avoir appelé 😀 à bientôt",
        "Line one\nLine two",
        "plain " * 40,
    ]
    shown = await _send_all(profile, texts, Faults(no_pdu=True, urc_noise=True))
    assert shown[:4] == [[t] for t in texts[:4]]
    assert [p[:6] for p in shown[4]] == ["(1/2) ", "(2/2) "]
    assert join_text_mode(shown[4]) == texts[4]


async def test_the_modem_is_left_in_ira_with_the_report_asked_for() -> None:
    async with running("huawei", TEXT_ONLY) as sim:
        modem = Modem(sim.device, timeouts=FAST)
        await modem.start()
        try:
            await modem.send_sms(TO, "Grüße")
            assert sim._state.cscs == "IRA"  # restored after the UCS-2 send
            assert sim._state.csmp == (CSMP_FO | CSMP_FO_REPORT, CSMP_VP, 0, 8)
            await modem.send_sms(TO, "plain", status_report=False)
            assert sim._state.csmp == (CSMP_FO, CSMP_VP, 0, 0)
            csmp = [c for c in sim.commands if c.startswith("AT+CSMP")]
            await modem.send_sms(TO, "plain again", status_report=False)
            assert [c for c in sim.commands if c.startswith("AT+CSMP")] == csmp  # cached
        finally:
            await modem.close()
    assert [(s.encoding, s.status_report) for s in sim.sent] == [
        ("ucs2", True),
        ("gsm7", False),
        ("gsm7", False),
    ]
    # the number went in UCS-2 hex while AT+CSCS="UCS2" was in effect (27.007 5.5)
    assert 'AT+CMGS="002B00310032003000320035003500350030003100320033",145' in sim.commands


async def test_a_modem_that_empties_its_smsc_on_csmp_gets_it_back() -> None:
    async with running("sim800", Faults(no_pdu=True, csmp_clears_smsc=True)) as sim:
        modem = Modem(sim.device, timeouts=FAST)
        await modem.start()
        try:
            await modem.send_sms(TO, "one")
            await modem.send_sms(TO, "two €")
        finally:
            await modem.close()
        assert sim._state.smsc == "+12025550100"
    assert [s.text for s in sim.sent] == ["one", "two €"]


async def test_without_ucs2_only_plain_texts_go_and_nothing_is_half_sent() -> None:
    async with running("wavecom", Faults(no_pdu=True, no_ucs2=True)) as sim:
        modem = Modem(sim.device, timeouts=FAST)
        await modem.start()
        try:
            assert await modem.send_sms(TO, "plain " * 40)
            with pytest.raises(errors.UnsupportedText) as caught:
                await modem.send_sms(TO, "Grüße " * 30)
        finally:
            await modem.close()
    assert errors.submission_of(caught.value) is errors.Submission.NOT_SENT
    assert [s.text[:6] for s in sim.sent] == ["(1/2) ", "(2/2) "]


async def test_the_gsm_charset_escape_would_cancel_the_text() -> None:
    """Why extension characters go as UCS-2: in a text-mode body 0x1B is ESC, which
    cancels the message (27.005 3.5.1), so AT+CSCS="GSM" cannot carry "€" (ESC 0x65)."""
    async with running("sim800", TEXT_ONLY) as sim:
        modem = Modem(sim.device, timeouts=replace(FAST, send=0.2, command=0.3, prompt=0.3))
        await modem.start()
        try:
            await modem.command('AT+CSCS="GSM"')
            async with modem._lock:  # the driver's own step, as send_sms takes it
                with pytest.raises(errors.UnclearAfterBody, match="no message reference"):
                    await modem._submit('AT+CMGS="+12025550123",145', "10\x1be")
        finally:
            await modem.close()
    assert sim.sent == []


def test_golden_csmp_answers() -> None:
    """The <fo>,<vp> we set are what real modems show: the Nokia N79 answers AT+CSMP?
    with a delivery report asked for (49) and 24 h validity (167)."""
    nokia = json.loads((MODEM_DIR / "nokian79.json").read_text())
    answer = next(e["receive"] for e in nokia["exchanges"] if e.get("send") == "AT+CSMP?\r")
    fo, vp, pid, dcs = (int(x) for x in answer.split(":")[1].split("\r")[0].split(","))
    assert (fo, vp, pid, dcs) == (CSMP_FO | CSMP_FO_REPORT, CSMP_VP, 0, 0)
    # the sticks whose AT+CSMP empties the SMS centre (the simulator's csmp_clears_smsc)
    for name in ("qualcommm6280.json", "ztek3565z.json"):
        quirks = json.loads((MODEM_DIR / name).read_text())["quirks"]
        assert any("CSMP" in q and "SMSC" in q for q in quirks), name
    # the sticks that list AT+CSCS and AT+CSMP (text-mode UCS-2) in AT+CLAC
    for name in ("huaweie1752.json", "huaweik3715.json", "ztek3565z.json"):
        clac = next(
            e["receive"]
            for e in json.loads((MODEM_DIR / name).read_text())["exchanges"]
            if e.get("send") == "AT+CLAC\r"
        )
        assert "+CSCS" in clac, name
        assert "+CSMP" in clac, name


async def test_four_modems_of_four_profiles_send_at_once_in_both_modes() -> None:
    text = "Désolé, nous avons manqué votre appel {ticket 42} " * 3
    async with (
        running("sim800", Faults(no_pdu=True)) as a,
        running("huawei") as b,
        running("quectel", Faults(no_pdu=True)) as c,
        running("wavecom") as d,
    ):
        sims = [a, b, c, d]
        modems = [Modem(s.device, timeouts=FAST) for s in sims]
        await asyncio.gather(*(m.start() for m in modems))
        try:
            assert [m.mode for m in modems] == ["text", "pdu", "text", "pdu"]
            await asyncio.gather(*(m.send_sms(TO, text) for m in modems))
        finally:
            await asyncio.gather(*(m.close() for m in modems))
    for sim in (a, c):  # text mode: three separate numbered UCS-2 texts
        assert join_text_mode([s.text for s in sim.sent]) == text
        assert [s.encoding for s in sim.sent] == ["ucs2"] * 3
    for sim in (b, d):  # PDU mode: one GSM-7 text (é and the braces are GSM-7)
        assert [(s.text, s.parts, s.encoding) for s in sim.sent] == [(text, 1, "gsm7")]
