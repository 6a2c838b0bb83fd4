"""SIGKILL during a burst through the real `textback run` process and the simulator, with
delivery reports stored by the modem (issue 10, part 2): nothing lost, nothing sent twice
(the simulator's record of the parts it took is the judge), and the texts each kill left
`uncertain` are settled by their reports, read at the next start, within 5 minutes of the
send (the daemon's clock); `textback history` says so. The same run with a modem that
can only push its reports (+CDS) leaves them uncertain: reports sent to a closed port
are gone, and nothing is resent."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from tests.bench.bench_crash import RESOLVE_WITHIN_S, crash_run

pytestmark = pytest.mark.timeout(180)


async def test_kill_9_in_a_burst_uncertain_texts_are_resolved_by_stored_reports(
    tmp_path: Path,
) -> None:
    run = await crash_run(tmp_path, profile="huawei", texts=24, kills=3)
    assert run.routing == "stored"
    assert (run.lost, run.duplicated, run.sim_duplicate_parts) == (0, 0, 0)
    assert len(run.killed_sending) == run.kills == run.uncertain_made  # one in flight a kill
    assert run.resolved_in_time >= 0.9 * run.uncertain_made
    assert run.uncertain_left == 0
    assert all(0 < s <= RESOLVE_WITHIN_S for s in run.resolve_s)
    assert run.states == {"delivered": 24}  # the others by their part's reference
    history = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon.cli",
        "history",
        "--config",
        str(tmp_path / "textback.toml"),
        "--json",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await history.communicate()
    assert history.returncode == 0
    docs = [json.loads(line) for line in out.decode().splitlines()]
    resolved = {d["message_id"]: d["why"] for d in docs if d["resolved_by"]}
    why = "resolved by delivery report (was uncertain: in_flight_at_restart)"
    assert resolved == dict.fromkeys(run.killed_sending, why)


async def test_with_pushed_reports_the_kill_made_texts_stay_uncertain(tmp_path: Path) -> None:
    run = await crash_run(tmp_path, profile="sim800", texts=12, kills=2)
    assert run.routing == "direct"
    assert (run.lost, run.duplicated, run.sim_duplicate_parts) == (0, 0, 0)
    assert run.uncertain_made == 2
    assert (run.uncertain_left, run.resolved) == (2, 0)
    # the others went out; their reports too are lost when pushed while nobody listened
    assert run.states.pop("uncertain") == 2
    assert set(run.states) <= {"sent", "delivered"}
    assert sum(run.states.values()) == 10
