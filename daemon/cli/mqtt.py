"""`textback mqtt discovery --print|--remove`: Home Assistant's discovery messages.

`--print` shows each message (topic, then the JSON) the daemon publishes, retained, on
every connect. `--remove` connects to `[mqtt] url` and clears them (an empty retained
message each), which makes Home Assistant drop the device; a running daemon would send
them again on its next connect, so stop it or set `[mqtt] discovery = false` first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys

import aiomqtt

from daemon.cli.common import UserError, command_config, fail
from daemon.config import Config
from daemon.mqtt import discovery
from daemon.mqtt.broker import Broker
from daemon.mqtt.payloads import Topics

#: Longest wait for the broker when removing.
TIMEOUT = 10.0


def main(args: argparse.Namespace) -> int:
    """Dispatch `mqtt discovery`."""
    try:
        cfg = command_config(args)
    except UserError as exc:
        return fail(str(exc))
    topics = Topics.of(cfg)
    if args.print:
        for topic, payload in discovery.messages(cfg, topics):
            print(topic)
            print(json.dumps(json.loads(payload), indent=2) if payload else "(empty: withdrawn)")
            print()
        return 0
    if not cfg.mqtt.url.strip():
        return fail("[mqtt] url is empty: no broker to remove the messages from")
    try:
        broker = Broker.parse(cfg.mqtt.url)
    except ValueError as exc:
        return fail(f"mqtt.url: {exc}")
    try:
        n = asyncio.run(_remove(cfg, topics, broker))
    except Exception as exc:  # aiomqtt's errors, OSError, TLS: one line
        return fail(f"cannot remove the discovery messages from {broker}: {exc}")
    print(f"removed {n} discovery messages from {broker}", file=sys.stdout)
    return 0


async def _remove(cfg: Config, topics: Topics, broker: Broker) -> int:
    m = cfg.mqtt
    tls = ssl.create_default_context(cafile=m.ca_file or None) if broker.tls else None
    gone = discovery.removals(cfg, topics)
    async with (
        asyncio.timeout(TIMEOUT),
        aiomqtt.Client(
            broker.host,
            broker.port,
            username=m.username or None,
            password=m.password or None,
            identifier=f"{m.client_id or 'textback-' + topics.site}-cli",
            tls_context=tls,
            timeout=TIMEOUT,
        ) as client,
    ):
        for topic in gone:
            await client.publish(topic, b"", qos=1, retain=True)
    return len(gone)
