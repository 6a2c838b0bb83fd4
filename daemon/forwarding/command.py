"""`[replies] on_reply`: a command run for each reply, as gammu-smsd's RunOnReceive.

Existing RunOnReceive scripts work unchanged: the environment has SMS_MESSAGES=1,
SMS_1_NUMBER, SMS_1_TEXT, DECODED_PARTS=0 (plus TEXTBACK_REPLY_ID and TEXTBACK_REPLY_KIND).
It runs from a bounded queue in its own task, never in the modem's path, with no shell
(the command line is split like a shell would, then run directly, so caller text can only
ever be data in the environment), and is stopped after `on_reply_timeout`. Best effort:
a reply whose command never ran is still kept and listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal

from daemon.config import Config
from daemon.logsetup import kv
from daemon.sinks.bus import QueueSink
from daemon.sinks.events import Event, ReplyReceived

log = logging.getLogger("daemon.forwarding")


def reply_environment(event: ReplyReceived) -> dict[str, str]:
    """gammu-smsd's variables for one inbound text (text already put together)."""
    # An environment value cannot hold NUL; a caller's NUL must not stop the command.
    return {
        "SMS_MESSAGES": "1",
        "SMS_1_NUMBER": event.sender.replace("\x00", ""),
        "SMS_1_TEXT": event.text.replace("\x00", ""),
        "SMS_1_CLASS": "-1",
        "DECODED_PARTS": "0",
        "TEXTBACK_REPLY_ID": str(event.reply_id),
        "TEXTBACK_REPLY_KIND": event.kind,
    }


class ReplyCommand(QueueSink):
    """Runs `on_reply` for each reply, one at a time, in its own task (`run()`)."""

    name = "on_reply"

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self._cfg = cfg
        #: Runs that failed to start, exited non-zero or timed out.
        self.failures = 0

    def reconfigure(self, cfg: Config) -> None:
        """Another command or timeout from the next reply on."""
        self._cfg = cfg

    def handle(self, event: Event) -> None:
        """Queue replies only."""
        if isinstance(event, ReplyReceived) and self._cfg.replies.on_reply.strip():
            super().handle(event)

    async def deliver(self, event: Event) -> None:
        """Run the command for one reply."""
        if not isinstance(event, ReplyReceived):
            return
        argv = shlex.split(self._cfg.replies.on_reply)
        if not argv:
            return
        env = {**os.environ, **reply_environment(event)}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                # its own process group: a timeout kills what it started too
                start_new_session=True,
            )
        except OSError as exc:
            self.failures += 1
            log.warning(kv(event="on_reply_failed", reply=event.reply_id, error=exc))
            return
        try:
            async with asyncio.timeout(self._cfg.replies.on_reply_timeout):
                _, err = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            self.failures += 1
            log.warning(
                kv(
                    event="on_reply_failed",
                    reply=event.reply_id,
                    error=f"still running after {self._cfg.replies.on_reply_timeout:g}s; killed",
                )
            )
            return
        if proc.returncode != 0:
            self.failures += 1
            log.warning(
                kv(
                    event="on_reply_failed",
                    reply=event.reply_id,
                    exit=proc.returncode,
                    stderr=err.decode(errors="replace")[-300:].strip() or None,
                )
            )
