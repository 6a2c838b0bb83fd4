"""The outbox: the durable queue of texts.

Owns a text's life after the decision (waiting, queued, sending, sent, failed,
cancelled, expired, uncertain), by kind: only a missed-call text waits, merges repeat
calls and is cancelled by a callback. It sends through one Sender and records each
change with its event in the same transaction.

May import: the leaves, decide (the caps), sending.sender (the interface only), store.
"""
