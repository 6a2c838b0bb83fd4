"""Storage: one SQLite file (WAL) owned by one daemon.

Owns the schema and its migrations (schema), the statements (rows: StoreTx, run on the
database thread inside one transaction), the reports' queries (reports: stats, history),
and the connection, its transactions and lock (store: Store). A statement that makes
something true emits its event into the transaction; the store publishes the events on
its bus after the commit, and bumps their day counters inside it.

May import: the leaves, decide (PolicyFacts), sinks (the bus and the counter names).
"""
