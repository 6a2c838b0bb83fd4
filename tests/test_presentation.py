"""[calls] unknown_presentation: a caller nothing could say was or was not withheld.

The tracker knows the presentation from manager.conf channelvars (CALLERID(pres) on the
caller's events) or from a Getvar answer; when neither says anything, `presentation_known`
is False and the config decides: "text" (the default: fail open, as before) or "skip".
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from daemon.check import presentation_lines
from daemon.cli.replay import replay_bytes
from daemon.config import Config
from daemon.decide.policy import PolicyFacts, decide
from daemon.intake.replayserver import ReplayServer, trace_body
from daemon.model import Reason
from tests.conftest import AMI_DIR
from tests.outbox_fakes import call
from tests.test_service import _run, _without_channelvars

SKIP = '[calls]\nring_timeout = "5s"\nunknown_presentation = "skip"\n'


def _cfg(mode: str) -> Config:
    cfg = Config()
    return cfg.model_copy(
        update={"calls": cfg.calls.model_copy(update={"unknown_presentation": mode})}
    )


def test_the_tracker_knows_the_presentation_only_when_an_event_says_it() -> None:
    with_vars = replay_bytes([(AMI_DIR / "14-anonymous-missed.ami").read_bytes()], Config())[0]
    assert [c.presentation_known for c in with_vars] == [True, True]
    without = _without_channelvars((AMI_DIR / "14-anonymous-missed.ami").read_bytes())
    plain = replay_bytes([without], Config())[0]
    assert [c.presentation_known for c in plain] == [False, False]
    # the literal "anonymous" caller stays withheld whatever is known
    assert [c.withheld for c in plain] == [True, False]


def test_policy_skip_suppresses_with_its_own_reason_and_text_sends() -> None:
    c = dataclasses.replace(call(), presentation_known=False)
    skipped = decide(c, PolicyFacts(), _cfg("skip"), c.ended_at)
    assert (skipped.action, skipped.reason) == ("suppress", Reason.PRESENTATION_UNKNOWN)
    assert skipped.destination is None  # the number may be one the caller withheld
    assert "unknown_presentation = skip" in skipped.detail
    assert decide(c, PolicyFacts(), _cfg("text"), c.ended_at).action == "send"
    known = dataclasses.replace(c, presentation_known=True)
    assert decide(known, PolicyFacts(), _cfg("skip"), c.ended_at).action == "send"
    # a caller known to be withheld stays `anonymous`, the first reason
    hidden = dataclasses.replace(c, withheld=True)
    assert decide(hidden, PolicyFacts(), _cfg("skip"), c.ended_at).reason is Reason.ANONYMOUS


def test_check_says_which_way_an_unknown_caller_goes() -> None:
    assert any("texted, fail open" in line for line in presentation_lines(_cfg("text")))
    skip = presentation_lines(_cfg("skip"))
    assert any("NOT texted, reason presentation_unknown" in line for line in skip)
    off = Config(ami={"enabled": False})
    assert presentation_lines(off) == ["no PBX ([ami] enabled = false): no call is tracked"]


@pytest.mark.timeout(60)
async def test_getvar_refused_and_skip_the_caller_is_not_texted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No channelvars, Getvar "Permission denied": nothing can tell; skip obeys."""
    caplog.set_level(logging.DEBUG, logger="daemon.service")
    body = _without_channelvars(trace_body((AMI_DIR / "14-anonymous-missed.ami").read_bytes()))
    server = ReplayServer(body, username="t", secret="s", speed=8.0, refuse={"getvar"})
    sent, rows = await _run(tmp_path, server, SKIP)
    assert sent == []
    assert rows["+12025550114"].reason == "presentation_unknown"
    assert rows["anonymous"].reason == "anonymous"
    said = [r for r in caplog.records if "event=presentation_unknown" in r.getMessage()]
    assert said
    assert said[0].levelno == logging.WARNING
    assert "unknown_presentation=skip" in said[0].getMessage()


@pytest.mark.timeout(60)
async def test_getvar_refused_and_text_the_caller_is_texted_as_before(tmp_path: Path) -> None:
    body = _without_channelvars(trace_body((AMI_DIR / "14-anonymous-missed.ami").read_bytes()))
    server = ReplayServer(body, username="t", secret="s", speed=8.0, refuse={"getvar"})
    sent, rows = await _run(tmp_path, server)
    assert [s.number for s in sent] == ["+12025550114"]
    assert rows["+12025550114"].reason == "missed"


@pytest.mark.timeout(60)
async def test_getvar_answering_keeps_skip_texting_normal_callers(tmp_path: Path) -> None:
    body = _without_channelvars(trace_body((AMI_DIR / "14-anonymous-missed.ami").read_bytes()))
    server = ReplayServer(body, username="t", secret="s", speed=8.0)
    server.getvar_values[("PJSIP/trunk-00000002", "CALLERID(pres)")] = "allowed_not_screened"
    sent, rows = await _run(tmp_path, server, SKIP)
    assert [s.number for s in sent] == ["+12025550114"]
    assert rows["+12025550114"].reason == "missed"
