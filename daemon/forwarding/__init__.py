"""Forwarding: replies carried on to the office, as sinks of `ReplyReceived`.

Owns the mail forwarder (mail: the `forwards` queue the inbox fills in each reply's
transaction, sent through SMTP with retries, thread per caller, summary past the hourly
limit) and the on_reply command (command: gammu-smsd's RunOnReceive variables, a timeout,
never in the modem's path). Staff texts are written by the inbox itself, as outbox texts
of kind staff_forward.

May import: the leaves, decide (the office's zone), store, sinks.
"""
