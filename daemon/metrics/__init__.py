"""Metrics: the daemon's Prometheus face, a sink on the event bus and a worker.

Owns the metric names of DESIGN.md ("Wave 2 contracts": textback_calls_total and the
rest), their fixed label sets, and how they are shown: `collect.Metrics` is the sink (it
counts the events' durable counters, by the names daemon.sinks.counters gives them, and
times each missed call's Hangup to its AT+CMGS) and the prometheus_client collector on
a registry of its own; `export.Exporter` seeds the counters from the database's stored
counts at start (a restart never makes a counter go down), reads the outbox by state,
rewrites the node_exporter textfile atomically every `[metrics] interval`, and serves
`[metrics] listen` over HTTP on the event loop.

Nothing calls it: the service adds the sink to its bus and runs the worker when
`[metrics] textfile` or `listen` is set, and hands it read-only probes (AMI connected,
each modem's state and signal) instead of being called by the parts.

May import: the leaves, sinks (the events, the counter names), store (the stored counts
and the outbox by state), replies (the reply kinds, a fixed label set).
"""
