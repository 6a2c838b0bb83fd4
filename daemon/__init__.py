"""textback: texts back the callers an office did not answer.

The packages follow the data flow (DESIGN.md):

    intake/   AMI in: login, keepalive, reconnect, framing; the tracker (one state
              machine per call, one outcome word each)
    decide/   the policy (send or suppress, and why), caller numbers, business hours,
              the templates: pure functions of a call, facts and the config
    store/    SQLite: schema and migrations, the rows (statements), the reports' queries;
              publishes each transaction's events after it commits
    outbox/   the durable queue of texts: wait, merge, cancel, send, retry, give up
    sending/  the one Sender interface and its senders (the modem supervisor, a recorder)
    replies/  what callers text back: keywords (STOP, START, HELP), the inbox that keeps,
              links and obeys each reply
    sinks/    the events (what happened, typed), the bus and what listens: the log, the
              counters
    app/      the assembly: the pipeline (tracker events to decisions and texts), the
              service (`textback run`), the dry run behind `textback replay`
    cli/      one module per command

Beside them, the leaves everything may import: model (calls, outcomes, reasons, message
states and kinds), errors (TextbackError, the root every package's errors share, so it
sits below them all), clock, config, logsetup. A package imports only from the leaves and
from the packages listed above it, never from one below (tests/test_layout.py checks
this); gsm/ never imports daemon/.
"""
