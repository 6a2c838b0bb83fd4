"""Sending: the one Sender interface and the senders behind it.

Owns `Sender` (SendRequest -> SendResult: sent with references, a known failure, or
uncertain), the modem as a sender (ModemSender over a started gsm.Modem) and its
supervisor (start with backoff, probe, hand what the modem receives to the store), and
the recording sender of replays. A pool of modems or a broker is one more Sender.

May import: the leaves, store (to keep what the modem receives), sinks (the bus, for the
modem's state), gsm.
"""
