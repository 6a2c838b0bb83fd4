"""Send failures classified for failover (gsm.errors.submission_of): known not sent,
partly sent, or unclear; through the real driver on a pty where a modem makes them."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from gsm import errors
from gsm.errors import CMS_NOT_SENT, Submission, submission_of
from gsm.modem import Modem, Timeouts
from gsm.simulator import Faults, running

FAST = Timeouts(
    command=1.0,
    probe=0.2,
    startup=3.0,
    prompt=1.0,
    send=0.5,
    registration=0.2,
    poll=0.01,
    reopen_initial=0.01,
    reopen_max=0.05,
    health_interval=0,
    sweep=0,
)
TO = "+12025550123"


def _cms(code: int, *, after_body: bool) -> errors.CmsError:
    exc = errors.CmsError("AT+CMGS=20", code)
    exc.after_body = after_body
    return exc


@pytest.mark.parametrize(
    ("code", "after_body", "expected"),
    [
        (331, True, Submission.NOT_SENT),  # no network service
        (330, True, Submission.NOT_SENT),  # SMSC unknown
        (304, True, Submission.NOT_SENT),  # invalid PDU parameter
        (42, True, Submission.NOT_SENT),  # RP-ERROR congestion: the network refused it
        (332, True, Submission.UNCLEAR),  # network timeout: the RP-ACK may be what was lost
        (500, True, Submission.UNCLEAR),  # unknown: Gammu's "error for a queued message"
        (300, True, Submission.UNCLEAR),  # ME failure, step unknown
        (515, True, Submission.UNCLEAR),  # vendor code
        (500, False, Submission.NOT_SENT),  # to the AT+CMGS line: no body went out
    ],
)
def test_cms_errors(code: int, after_body: bool, expected: Submission) -> None:
    assert submission_of(_cms(code, after_body=after_body)) is expected


def test_the_not_sent_codes_are_documented_ones() -> None:
    assert set(CMS_NOT_SENT) - set(range(1, 128)) <= set(errors.CMS_MEANINGS)
    assert not {300, 332, 340, 500} & CMS_NOT_SENT


def test_other_errors() -> None:
    assert submission_of(ValueError("bad number")) is Submission.NOT_SENT
    assert submission_of(errors.UnsupportedText("x")) is Submission.NOT_SENT
    assert submission_of(errors.ModemGone("gone")) is Submission.NOT_SENT
    assert submission_of(errors.AtTimeout("AT+CMGS=20", 5)) is Submission.NOT_SENT
    assert submission_of(errors.SendUncertain("AT+CMGS=20", 5)) is Submission.UNCLEAR
    assert submission_of(errors.LostAfterBody("AT+CMGS=20", "eof")) is Submission.UNCLEAR
    assert submission_of(RuntimeError("a bug")) is Submission.UNCLEAR
    partial = errors.ModemGone("gone")
    partial.parts_sent = 1
    assert submission_of(partial) is Submission.PARTIAL


async def _fails(faults: Faults, text: str = "hello", **kwargs: object) -> BaseException:
    async with running("quectel", faults) as sim:
        modem = Modem(sim.device, timeouts=FAST, **kwargs)  # type: ignore[arg-type]
        await asyncio.wait_for(modem.start(), 10)
        try:
            with pytest.raises(errors.GsmError) as caught:
                await asyncio.wait_for(modem.send_sms(TO, text), 10)
        finally:
            await modem.close()
        return caught.value


async def test_through_the_driver() -> None:
    gone_before = await _fails(Faults(vanish_after=0))
    assert submission_of(gone_before) is Submission.NOT_SENT
    gone_after = await _fails(Faults(vanish_after_body=0))
    assert submission_of(gone_after) is Submission.UNCLEAR
    refused = await _fails(Faults(cms_every=1, cms_code=331))
    assert submission_of(refused) is Submission.NOT_SENT
    unknown = await _fails(Faults(cms_every=1, cms_code=500))
    assert submission_of(unknown) is Submission.UNCLEAR
    silent = await _fails(Faults(accept_delay=2.0))
    assert isinstance(silent, errors.SendUncertain)
    assert submission_of(silent) is Submission.UNCLEAR
    second_part = await _fails(Faults(cms_every=2, cms_code=331), "long " * 60)
    assert second_part.parts_sent == 1
    assert submission_of(second_part) is Submission.PARTIAL


async def test_text_mode_without_ucs2_is_not_sent() -> None:
    faults = Faults(no_pdu=True, no_ucs2=True)
    refused = await _fails(replace(faults), "Grüße")
    assert isinstance(refused, errors.UnsupportedText)
    assert submission_of(refused) is Submission.NOT_SENT
