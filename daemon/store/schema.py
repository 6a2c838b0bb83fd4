"""The database's schema: every migration, in order, never edited once released.

`PRAGMA user_version` says how many of them a file has had; `Store.open` runs the rest,
each in one transaction with its version bump.
"""

from __future__ import annotations

# Each entry moves the schema from version i to i+1; never edit a released one, add more.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        linkedid TEXT NOT NULL,
        caller TEXT NOT NULL,
        caller_name TEXT NOT NULL,
        did TEXT NOT NULL,
        inbound INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL NOT NULL,
        ring_seconds REAL NOT NULL,
        voicemail_left INTEGER,
        withheld INTEGER NOT NULL,
        dialled TEXT NOT NULL DEFAULT '',
        answered_by TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL DEFAULT '',
        destination TEXT,
        recorded_at REAL NOT NULL
    );
    CREATE INDEX calls_ended ON calls(ended_at);
    CREATE INDEX calls_linkedid ON calls(linkedid);
    CREATE INDEX calls_caller ON calls(caller);
    CREATE INDEX calls_destination ON calls(destination);
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        call_id INTEGER NOT NULL REFERENCES calls(id),
        action TEXT NOT NULL CHECK (action IN ('send', 'suppress')),
        reason TEXT NOT NULL,
        destination TEXT,
        template_kind TEXT,
        text TEXT,
        detail TEXT NOT NULL DEFAULT '',
        decided_at REAL NOT NULL,
        message_id INTEGER REFERENCES messages(id),
        merged INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX decisions_call ON decisions(call_id);
    CREATE INDEX decisions_time ON decisions(decided_at);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        text TEXT NOT NULL,
        state TEXT NOT NULL,
        template_kind TEXT,
        call_ids TEXT NOT NULL DEFAULT '[]',
        parts INTEGER NOT NULL DEFAULT 0,
        encoding TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        due_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt_at REAL,
        sent_at REAL,
        reason TEXT
    );
    CREATE INDEX messages_dest ON messages(destination, state);
    CREATE INDEX messages_state ON messages(state, created_at);
    CREATE INDEX messages_created ON messages(created_at);
    CREATE TABLE message_parts (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages(id),
        part INTEGER NOT NULL,
        reference INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'submitted',
        status_at REAL,
        created_at REAL NOT NULL
    );
    CREATE INDEX parts_ref ON message_parts(reference);
    CREATE TABLE replies (
        id INTEGER PRIMARY KEY,
        sender TEXT NOT NULL,
        text TEXT NOT NULL,
        received_at REAL NOT NULL,
        optout INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX replies_time ON replies(received_at);
    CREATE TABLE optouts (
        number TEXT PRIMARY KEY,
        added_at REAL NOT NULL,
        source TEXT NOT NULL DEFAULT 'cli'
    );
    CREATE TABLE ami_gaps (
        id INTEGER PRIMARY KEY,
        started_at REAL NOT NULL,
        ended_at REAL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE counters (
        name TEXT NOT NULL,
        day TEXT NOT NULL,
        value INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (name, day)
    );
    """,
    # 2: message kinds (only missed-call texts wait, merge and get cancelled), the line
    # (DID) a text answers for, and the sender that sent it.
    """
    ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'missed_call';
    ALTER TABLE messages ADD COLUMN line TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN sender TEXT NOT NULL DEFAULT '';
    CREATE INDEX messages_kind_dest ON messages(kind, destination, state);
    """,
    # 3: replies know what they are (a keyword, a message), whom they come from (a number,
    # a short code, a name), what they answer (the text and its call), whether parts were
    # missing, which modem took them, and the automatic answer they got; one key per SMS
    # so a text read twice from the SIM is kept once. Opt-outs keep the exact words, and
    # every change of the list is audited.
    """
    ALTER TABLE replies ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';
    ALTER TABLE replies ADD COLUMN sender_kind TEXT NOT NULL DEFAULT 'number';
    ALTER TABLE replies ADD COLUMN number TEXT;
    ALTER TABLE replies ADD COLUMN message_id INTEGER REFERENCES messages(id);
    ALTER TABLE replies ADD COLUMN call_id INTEGER REFERENCES calls(id);
    ALTER TABLE replies ADD COLUMN incomplete INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE replies ADD COLUMN modem TEXT NOT NULL DEFAULT '';
    ALTER TABLE replies ADD COLUMN answer_id INTEGER REFERENCES messages(id);
    ALTER TABLE replies ADD COLUMN sms_key TEXT;
    CREATE UNIQUE INDEX replies_sms_key ON replies(sms_key) WHERE sms_key IS NOT NULL;
    CREATE INDEX replies_number ON replies(number, received_at);
    ALTER TABLE optouts ADD COLUMN text TEXT NOT NULL DEFAULT '';
    CREATE TABLE optout_log (
        id INTEGER PRIMARY KEY,
        number TEXT NOT NULL,
        opted_out INTEGER NOT NULL,
        source TEXT NOT NULL,
        text TEXT NOT NULL DEFAULT '',
        reply_id INTEGER REFERENCES replies(id),
        at REAL NOT NULL
    );
    CREATE INDEX optout_log_number ON optout_log(number, at);
    """,
    # 4: the durable queue of replies to forward by mail (one row a mail: a reply, or the
    # summary of a sender's replies past the hourly limit).
    """
    CREATE TABLE forwards (
        id INTEGER PRIMARY KEY,
        reply_id INTEGER NOT NULL REFERENCES replies(id),
        channel TEXT NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_error TEXT
    );
    CREATE INDEX forwards_due ON forwards(state, next_attempt_at);
    CREATE INDEX forwards_reply ON forwards(reply_id, channel);
    CREATE INDEX forwards_channel_time ON forwards(channel, created_at);
    CREATE INDEX replies_sender ON replies(sender, received_at);
    """,
    # 5: delivery reports (issue 10): every report the modem handed on, with the text it
    # was matched to; when a text last went to a sender (attempted_at: what a report's
    # window starts from, kept when a crash makes the text `uncertain`), and who settled
    # a text's fate after the fact (resolved_by: 'delivery_report') and when it was
    # delivered.
    """
    ALTER TABLE messages ADD COLUMN attempted_at REAL;
    ALTER TABLE messages ADD COLUMN resolved_by TEXT;
    ALTER TABLE messages ADD COLUMN delivered_at REAL;
    CREATE TABLE delivery_reports (
        id INTEGER PRIMARY KEY,
        reference INTEGER NOT NULL,
        recipient TEXT NOT NULL,
        status INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        received_at REAL NOT NULL,
        modem TEXT NOT NULL DEFAULT '',
        message_id INTEGER REFERENCES messages(id),
        part_id INTEGER REFERENCES message_parts(id)
    );
    CREATE INDEX delivery_reports_message ON delivery_reports(message_id, received_at);
    CREATE INDEX delivery_reports_time ON delivery_reports(received_at);
    """,
    # 6: retention ([database] keep_calls) deletes old calls in small batches: it finds
    # the texts, parts and replies of a call or a text by these, not by scanning tables.
    """
    CREATE INDEX decisions_message ON decisions(message_id);
    CREATE INDEX parts_message ON message_parts(message_id);
    CREATE INDEX replies_call ON replies(call_id);
    CREATE INDEX replies_message ON replies(message_id);
    CREATE INDEX replies_answer ON replies(answer_id);
    """,
    # 7: settings changed at run time, one row a name (issue 11): `paused` is the
    # on/off toggle of `textback pause`/`resume` and the Home Assistant switch (value:
    # the epoch seconds it ends at, '' until resumed; no row: not paused). Kept here so a
    # restart keeps it and the CLI (another process) and the daemon share it.
    """
    CREATE TABLE settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        source TEXT NOT NULL DEFAULT ''
    );
    """,
    # 8: several modems (issue 12): which modem took a text is its `sender` (written when
    # it goes to the modem); a SIM's texts this month and the modem that last texted a
    # number are read by it.
    """
    CREATE INDEX messages_sender ON messages(sender, state);
    """,
    # 9: several offices over a broker (issue 14). `jobs`: on a sender, each job taken
    # (job_id unique, recorded before AT+CMGS), the outbox row that sends it and, once
    # known, the result it was answered with (a job seen again gets the same answer).
    # `group_optouts`: the group's do-not-text events applied here, the latest per
    # hashed number (an older event arriving late is not applied over a newer one).
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        message_id INTEGER REFERENCES messages(id),
        state TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '',
        modem TEXT NOT NULL DEFAULT '',
        received_at REAL NOT NULL,
        answered_at REAL
    );
    CREATE INDEX jobs_message ON jobs(message_id);
    CREATE TABLE group_optouts (
        number_hash TEXT PRIMARY KEY,
        event_id TEXT NOT NULL,
        opted_out INTEGER NOT NULL,
        at REAL NOT NULL,
        applied_at REAL NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
