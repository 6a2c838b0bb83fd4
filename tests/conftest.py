"""Shared fixtures: trace files, the policy's verdict on one call, and a guard that fails a
test leaving tasks behind."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Config
from daemon.decide.policy import PolicyFacts, decide
from daemon.model import FinishedCall

DATA = Path(__file__).parent / "data"
AMI_DIR = DATA / "ami"
MODEM_DIR = DATA / "modem"


def trace_names() -> list[str]:
    """Every recorded AMI trace, by file stem."""
    return sorted(p.stem for p in AMI_DIR.glob("*.ami"))


def load_sidecar(name: str) -> dict[str, Any]:
    """The JSON sidecar of a trace: what really happened."""
    data: dict[str, Any] = json.loads((AMI_DIR / f"{name}.json").read_text())
    return data


def policy_verdict(call: FinishedCall, cfg: Config) -> tuple[str, str]:
    """The real policy on one call alone (no history: no opt-out, cooldown or caps) at the
    call's own end time: (send or suppress, the reason word)."""
    decision = decide(call, PolicyFacts(), cfg, call.ended_at)
    return decision.action, str(decision.reason)


@pytest.fixture(autouse=True)
async def _no_task_left_behind() -> AsyncIterator[None]:
    """Fail any async test that leaves a task running (aioesphomeapi's guard)."""
    before = asyncio.all_tasks()
    yield
    await asyncio.sleep(0)
    left = [
        t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()
    ]
    if left:
        for t in left:
            t.cancel()
        pytest.fail(f"tasks left running: {[t.get_coro() for t in left]}")
