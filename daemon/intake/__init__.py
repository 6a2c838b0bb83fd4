"""AMI in: what Asterisk says, turned into finished calls.

Owns the AMI connection (client: login, Ping keepalive, capped backoff, resync after a
gap), the sans-I/O framing (frames, stream, protocol for panoramisk), the replay server
that serves recorded traces over loopback, and the tracker (one state machine per
Linkedid, emitting FinishedCall, InboundAnswered and OutboundDialled).

May import: the leaves (model, config, clock, errors, logsetup) only. Knows nothing of
policy, storage or sending.
"""
