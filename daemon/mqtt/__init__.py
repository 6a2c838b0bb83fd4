"""MQTT: the office's live view on a broker, and Home Assistant's entities.

Owns the MQTT sink and worker (client: hears the bus's events, turns them into the
topics and payloads DESIGN.md fixes, and publishes them from a bounded in-memory queue
through one aiomqtt connection with its last will, capped backoff and jitter), the
payloads (payloads: events and state as JSON, with UUIDv7 event ids from uuid7), the
Home Assistant discovery messages (discovery: also printed and withdrawn by `textback
mqtt discovery`), and the `cmd/enabled` switch (pause and resume, written to the store).

MQTT is a sink: the pipeline and the outbox never call it, and nothing it does (a broker
down, slow or refusing the login) reaches texting. It reads the day's counts and the
outbox depth from the store, at most every few seconds.

May import: the leaves, sinks (the events), store (the state it shows; the pause).
"""
