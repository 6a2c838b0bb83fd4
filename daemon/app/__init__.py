"""The assembly: the parts put together and run.

Owns the pipeline (tracker events to recorded calls, decisions and texts in the outbox),
the service behind `textback run` (builds the parts the config asks for: AMI intake
unless `[ami] enabled = false`, the sender, the sinks; one TaskGroup; systemd
notifications, signals, reload) and the dry run behind `textback replay`.

May import: every package above cli.
"""
