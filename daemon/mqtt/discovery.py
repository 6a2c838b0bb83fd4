"""Home Assistant MQTT discovery: one device "textback <site>" and its entities.

Each entity is one retained config message at
`<discovery_prefix>/<component>/<node>/<object>/config`, with the site's status topic as
its availability. Sensors and the switch read the retained state topics; the two event
entities read the event topics (each payload carries `event_type`). An empty retained
message at the same topic withdraws an entity (`textback mqtt discovery --remove`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from daemon.config import Config
from daemon.mqtt.payloads import DEFAULT_MODEM, Topics, topic_word


@dataclass(frozen=True, slots=True)
class Entity:
    """One discovery message."""

    component: str  # sensor, binary_sensor, event, switch
    object_id: str
    config: dict[str, Any]


def version() -> str:
    """textback's installed version."""
    try:
        return metadata.version("textback")
    except metadata.PackageNotFoundError:
        return "unknown"


def modem_names(cfg: Config, seen: Iterable[str] = ()) -> list[str]:
    """The modems to show: every `[[modems]]` name when the config has them, else the one
    `[modem]` ("modem"), and any other name the daemon has heard from."""
    names = [str(getattr(m, "name", "")) for m in getattr(cfg, "modems", None) or ()]
    names = [n for n in names if n] or [DEFAULT_MODEM]
    for name in seen:
        if name not in names:
            names.append(name)
    return names


def node_id(topics: Topics) -> str:
    """The device's node id: textback_<site>."""
    return topic_word(f"textback_{topics.site}").replace(".", "_")


def entities(
    cfg: Config, topics: Topics, *, modems: Iterable[str] = (), all_components: bool = False
) -> list[Entity]:
    """Every entity this config shows. `all_components`: the switch too even when
    `commands = false` (to withdraw it)."""
    node = node_id(topics)
    device = {
        "identifiers": [node],
        "name": f"textback {topics.site}",
        "manufacturer": "textback",
        "model": "missed-call text-back",
        "sw_version": version(),
    }
    common = {
        "device": device,
        "availability": [{"topic": topics.status}],
        "payload_available": "online",
        "payload_not_available": "offline",
        "origin": {"name": "textback", "sw_version": version()},
    }

    def entity(component: str, object_id: str, name: str, **fields: Any) -> Entity:
        config = {"name": name, "unique_id": f"{node}_{object_id}", **fields, **common}
        return Entity(component, object_id, config)

    state = topics.state
    out = [
        entity(
            "sensor",
            "missed_today",
            "Missed calls today",
            state_topic=state,
            value_template="{{ value_json.missed_today }}",
            state_class="total_increasing",
            unit_of_measurement="calls",
            icon="mdi:phone-missed",
        ),
        entity(
            "sensor",
            "sent_today",
            "Texts sent today",
            state_topic=state,
            value_template="{{ value_json.sent_today }}",
            state_class="total_increasing",
            unit_of_measurement="texts",
            icon="mdi:message-arrow-right",
        ),
        entity(
            "sensor",
            "outbox_depth",
            "Outbox",
            state_topic=state,
            value_template="{{ value_json.outbox_depth }}",
            state_class="measurement",
            unit_of_measurement="texts",
            icon="mdi:tray-full",
        ),
        entity(
            "sensor",
            "last_missed",
            "Last missed call",
            state_topic=state,
            # HA reads the payload "None" as unknown: no missed call yet
            value_template="{{ value_json.last_missed_at or 'None' }}",
            device_class="timestamp",
        ),
        entity(
            "event",
            "calls",
            "Missed call",
            state_topic=topics.event("missed_call"),
            event_types=["missed_call"],
            icon="mdi:phone-missed",
        ),
        entity(
            "event",
            "replies",
            "Reply",
            state_topic=topics.event("reply"),
            event_types=["reply"],
            icon="mdi:message-reply-text",
        ),
    ]
    for name in modem_names(cfg, modems):
        word = topic_word(name)
        mstate = topics.modem_state(name)
        label = "Modem" if name == DEFAULT_MODEM else f"Modem {name}"
        out += [
            entity(
                "binary_sensor",
                f"modem_{word}_connected",
                f"{label} connected",
                state_topic=mstate,
                value_template="{{ 'ON' if value_json.connected else 'OFF' }}",
                device_class="connectivity",
                entity_category="diagnostic",
            ),
            entity(
                "sensor",
                f"modem_{word}_signal",
                f"{label} signal",
                state_topic=mstate,
                value_template="{{ value_json.rssi_dbm if value_json.rssi_dbm is not none"
                " else 'None' }}",
                device_class="signal_strength",
                unit_of_measurement="dBm",
                state_class="measurement",
                entity_category="diagnostic",
            ),
            entity(
                "sensor",
                f"modem_{word}_operator",
                f"{label} operator",
                state_topic=mstate,
                value_template="{{ value_json.operator or 'None' }}",
                icon="mdi:radio-tower",
                entity_category="diagnostic",
            ),
        ]
    if cfg.mqtt.commands or all_components:
        out.append(
            entity(
                "switch",
                "enabled",
                "Text-back",
                state_topic=state,
                value_template="{{ 'ON' if value_json.enabled else 'OFF' }}",
                command_topic=topics.cmd_enabled,
                payload_on="ON",
                payload_off="OFF",
                icon="mdi:message-reply",
            )
        )
    return out


def topic_of(topics: Topics, e: Entity) -> str:
    """Where an entity's config message goes."""
    return f"{topics.discovery_prefix}/{e.component}/{node_id(topics)}/{e.object_id}/config"


def messages(cfg: Config, topics: Topics, *, modems: Iterable[str] = ()) -> list[tuple[str, bytes]]:
    """(topic, payload) of every discovery message, retained; with `commands = false` an
    empty payload for the switch, so a switch shown before is withdrawn."""
    out = [
        (topic_of(topics, e), json.dumps(e.config, separators=(",", ":")).encode())
        for e in entities(cfg, topics, modems=modems)
    ]
    if not cfg.mqtt.commands:
        switch = Entity("switch", "enabled", {})
        out.append((topic_of(topics, switch), b""))
    return out


def removals(cfg: Config, topics: Topics, *, modems: Iterable[str] = ()) -> list[str]:
    """The topics to clear (an empty retained message each) to withdraw every entity."""
    return [topic_of(topics, e) for e in entities(cfg, topics, modems=modems, all_components=True)]
