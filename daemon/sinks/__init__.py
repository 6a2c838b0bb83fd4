"""Sinks: the event bus and what listens to it.

Owns the EventBus (each event to every sink; a failing sink is counted and logged and
never reaches the emitter), QueueSink (the base for sinks with slow work: a bounded queue
and a task), the log sink (the one place that words each event) and the counter sink
(the one place that names each counter). MQTT, metrics and mail are further sinks.

Owns the events too (events: the typed, frozen values the core emits and sinks hear),
so a capability that listens finds everything it needs here.

May import: model, logsetup. Never the pipeline, the outbox or the store: sinks
only listen.
"""
