"""`textback resume`: end a pause (`textback pause`, or the Home Assistant switch).

The next call the daemon decides is texted again. `[textback] enabled = false` in the
config still wins: resume cannot turn texting on against the config.
"""

from __future__ import annotations

import argparse

from daemon.cli.common import command_config, db_path, run_command
from daemon.clock import Clock, SystemClock
from daemon.store.store import Store


def main(args: argparse.Namespace, clock: Clock | None = None) -> int:
    """`textback resume [--config FILE]`."""
    return run_command(resume, args, clock or SystemClock())


async def resume(args: argparse.Namespace, clock: Clock) -> int:
    """Delete the pause; say whether there was one."""
    cfg = command_config(args)
    store = await Store.open(db_path(cfg), lock=False, tz=cfg.hours.timezone)
    try:
        was = await store.pause_state(clock.now())
        done = await store.resume(source="cli", now=clock.now())
    finally:
        await store.close()
    if was is not None:
        print("texting resumed")
    elif done:
        print("texting resumed (the pause had already run out)")
    else:
        print("texting was not paused")
    if not cfg.textback.enabled:
        print("note: [textback] enabled = false in the config: texting stays off")
    return 0
