"""Contacts: the callers the office knows by name, so a text greets no one else by name.

Owns the office's contact list (`book`: a CSV or vCard file read into E.164 numbers and
names, with what was skipped and why) and `Names`, the lookup the pipeline is handed at
assembly: the file first (re-read on SIGHUP and when it changes), then the Asterisk
database family the PBX keeps caller names in (AMI DBGet, through a function the service
passes in; cached for a bounded time). Which name a text may use is decided in
`daemon.decide.names`; this package only finds the contact.

May import: the leaves (model, config, errors, clock, logsetup) and decide (caller
numbers in E.164). Not intake: the Asterisk database is reached through the function
handed in, so nothing here opens a connection.
"""
