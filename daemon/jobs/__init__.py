"""Several offices over one MQTT broker (issue 14): jobs, results, the group's
do-not-text list.

Owns: the job and result wire format and topics (wire.py), the broker connection they
share (link.py: MQTT 5, reconnecting), a site's `BrokerSender` (site.py: a `LaneSender`
whose every send is a job awaiting its result), a sender's `JobServer` (serve.py: takes
jobs from the shared subscription into its own outbox, answers each once) and the
group's do-not-text list (optouts.py). May import: daemon.config, daemon.clock,
daemon.logsetup, daemon.model, daemon.decide, daemon.mqtt (payload helpers, broker URL),
daemon.sending.sender, daemon.sinks, daemon.store, daemon.outbox. Nothing imports it but
daemon.app.
"""
