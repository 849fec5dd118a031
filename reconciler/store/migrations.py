"""The numbered schema migrations of the operational store: every table of every component.

A database records the versions it has applied in ``schema_migrations``; opening one
applies the rest, in order, in one transaction. Migrations are only ever appended:
a released one is never edited, a change to a table is a new migration.

Migrations 1–8 are the per-component schemas of the layout before versioned
migrations (``legacy`` names the ``schema_versions`` row each one equals, so an old
data dir is adopted without running them again); 9 holds the credential tables that
used to live in their own ``credentials.db``; 10 replaces ordering by ``rowid``;
12–14 give log lines their fields, an integer id and (SQLite) a full-text index;
15 counts refused webhook deliveries in one record and binds delivery ids to bodies.

The SQL runs on SQLite and PostgreSQL alike; the few column types that differ are
written ``$serial`` (a generated integer primary key), ``$float`` (8-byte float),
``$bytes`` and ``$int64`` and spelled by each backend (``Database.column_types``).
"""

from __future__ import annotations

from reconciler.store.database import Migration

RUNS = Migration(
    1,
    "runs",
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY, project TEXT NOT NULL, env TEXT NOT NULL, version TEXT NOT NULL,
        config_commit TEXT NOT NULL, config_hash TEXT NOT NULL, trigger TEXT NOT NULL,
        state TEXT NOT NULL, previous_version TEXT, actor TEXT NOT NULL DEFAULT '',
        strategy TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL, started_at TEXT NOT NULL DEFAULT '',
        finished_at TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '', forced INTEGER NOT NULL DEFAULT 0,
        resumes TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '{}', seq INTEGER NOT NULL
    );
    CREATE INDEX runs_by_env ON runs (project, env, seq);
    CREATE INDEX runs_by_state ON runs (state);
    CREATE TABLE steps (
        run_id TEXT NOT NULL REFERENCES runs(id), key TEXT NOT NULL, status TEXT NOT NULL,
        started_at TEXT NOT NULL DEFAULT '', finished_at TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0, result TEXT NOT NULL DEFAULT '{}', error TEXT NOT NULL DEFAULT '',
        ord INTEGER NOT NULL, PRIMARY KEY (run_id, key)
    );
    CREATE TABLE decisions (
        run_id TEXT NOT NULL REFERENCES runs(id), gate TEXT NOT NULL, approved INTEGER NOT NULL,
        "user" TEXT NOT NULL, at TEXT NOT NULL, comment TEXT NOT NULL DEFAULT '', PRIMARY KEY (run_id, gate)
    )
    """,
    legacy=("runs", 1),
)

LOGS = Migration(
    2,
    "logs",
    """
    CREATE TABLE log_lines (
        stream TEXT NOT NULL, seq INTEGER NOT NULL, at TEXT NOT NULL, source TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL DEFAULT 'stdout', line TEXT NOT NULL, PRIMARY KEY (stream, seq)
    );
    CREATE TABLE log_streams (stream TEXT PRIMARY KEY, closed INTEGER NOT NULL DEFAULT 0)
    """,
    legacy=("logs", 1),
)

ALERT_RECORDS = Migration(
    3,
    "alert records",
    """
    CREATE TABLE alert_records (
        id $serial,
        rule TEXT NOT NULL,
        rule_event TEXT NOT NULL,
        event TEXT NOT NULL,
        mode TEXT NOT NULL,
        project TEXT NOT NULL,
        env TEXT NOT NULL,
        version TEXT NOT NULL,
        severity TEXT NOT NULL,
        title TEXT NOT NULL,
        message TEXT NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        run_id TEXT NOT NULL DEFAULT '',
        run_ids TEXT NOT NULL DEFAULT '[]',
        count INTEGER NOT NULL DEFAULT 1,
        notified INTEGER NOT NULL DEFAULT 0,
        sent_at $float,
        created_at $float NOT NULL,
        updated_at $float NOT NULL
    );
    CREATE INDEX alert_records_key ON alert_records (rule, project, env, version, id);
    CREATE INDEX alert_records_waiting ON alert_records (mode, sent_at)
    """,
    legacy=("alert.records", 1),
)

ALERT_OUTBOX = Migration(
    4,
    "alert outbox",
    """
    CREATE TABLE alert_outbox (
        id $serial,
        key TEXT NOT NULL UNIQUE,
        callback TEXT NOT NULL,
        scope TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL,
        url TEXT NOT NULL,
        secret TEXT,
        event TEXT NOT NULL DEFAULT '',
        body TEXT NOT NULL,
        policy TEXT NOT NULL,
        alert_id INTEGER,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at $float NOT NULL,
        lease_until $float NOT NULL DEFAULT 0,
        created_at $float NOT NULL,
        finished_at $float,
        last_error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX alert_outbox_due ON alert_outbox (state, next_attempt_at);
    CREATE TABLE alert_deliveries (
        id $serial,
        outbox_id INTEGER NOT NULL REFERENCES alert_outbox (id),
        key TEXT NOT NULL,
        callback TEXT NOT NULL,
        scope TEXT NOT NULL DEFAULT '',
        attempt INTEGER NOT NULL,
        status TEXT NOT NULL,
        response_code INTEGER,
        latency_ms $float NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        at $float NOT NULL
    );
    CREATE INDEX alert_deliveries_outbox ON alert_deliveries (outbox_id, attempt);
    CREATE INDEX alert_deliveries_callback ON alert_deliveries (callback, id)
    """,
    legacy=("alert.outbox", 1),
)

API_TOKENS = Migration(
    5,
    "api tokens",
    """
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY, username TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL DEFAULT '',
        last_used_at TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX api_tokens_by_user ON api_tokens (username)
    """,
    legacy=("api_tokens", 1),
)

TRIGGER_RECORDS = Migration(
    6,
    "trigger records",
    """
    CREATE TABLE trigger_records (
        id $serial, at TEXT NOT NULL, trigger_id TEXT NOT NULL,
        project TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT '', event TEXT NOT NULL DEFAULT '',
        delivery_id TEXT NOT NULL DEFAULT '', kind TEXT NOT NULL DEFAULT '', branch TEXT NOT NULL DEFAULT '',
        tag TEXT NOT NULL DEFAULT '', commit_id TEXT NOT NULL DEFAULT '', committer TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', run_id TEXT NOT NULL DEFAULT '',
        source_ip TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX trigger_records_by_trigger ON trigger_records (trigger_id, id);
    CREATE INDEX trigger_records_by_project ON trigger_records (project, id);
    CREATE TABLE webhook_deliveries (
        trigger_id TEXT NOT NULL, delivery_id TEXT NOT NULL, received_at TEXT NOT NULL,
        PRIMARY KEY (trigger_id, delivery_id)
    )
    """,
    legacy=("trigger_records", 1),
)

SCHEDULES = Migration(
    7,
    "schedules",
    """
    CREATE TABLE schedules (
        id TEXT PRIMARY KEY, spec TEXT NOT NULL, last_slot TEXT NOT NULL,
        next_run TEXT NOT NULL DEFAULT '', last_run TEXT NOT NULL DEFAULT '',
        last_status TEXT NOT NULL DEFAULT '', last_error TEXT NOT NULL DEFAULT '',
        last_run_id TEXT NOT NULL DEFAULT ''
    )
    """,
    legacy=("schedules", 1),
)

BUILDS = Migration(
    8,
    "builds",
    """
    CREATE TABLE builds (
        id TEXT PRIMARY KEY, project TEXT NOT NULL, version TEXT NOT NULL,
        commit_id TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, image TEXT NOT NULL DEFAULT '',
        digest TEXT NOT NULL DEFAULT '', duration $float, started_at TEXT NOT NULL,
        completed_at TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '',
        actor TEXT NOT NULL DEFAULT '', builder TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX builds_by_project ON builds (project, started_at);
    CREATE TABLE image_artifacts (
        build_id TEXT PRIMARY KEY REFERENCES builds (id), project TEXT NOT NULL,
        version TEXT NOT NULL, image TEXT NOT NULL, digest TEXT NOT NULL,
        size $int64 NOT NULL DEFAULT 0, created TEXT NOT NULL
    );
    CREATE INDEX artifacts_by_project ON image_artifacts (project, created)
    """,
    legacy=("builder", 1),
)

CREDENTIALS = Migration(
    9,
    "credentials",
    """
    CREATE TABLE sealed_credentials (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        project     TEXT,
        type        TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_by  TEXT NOT NULL DEFAULT '',
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        key_id      TEXT NOT NULL,
        nonce       $bytes NOT NULL,
        ciphertext  $bytes NOT NULL
    );
    CREATE INDEX sealed_credentials_key_id ON sealed_credentials (key_id);
    CREATE TABLE credential_audit (
        id            $serial,
        credential_id TEXT NOT NULL,
        action        TEXT NOT NULL,
        actor         TEXT NOT NULL,
        source_ip     TEXT,
        at            TEXT NOT NULL
    );
    CREATE INDEX credential_audit_credential ON credential_audit (credential_id, id);
    CREATE TABLE credential_usage (
        credential_id TEXT PRIMARY KEY,
        last_used_at  TEXT NOT NULL
    )
    """,
)

# Builds and artifacts were ordered newest first by (time, rowid); rowid is SQLite's
# alone, so each row gets an explicit sequence number. Rows already stored are numbered
# by (time, id): the insertion order of rows with the same second is not known portably.
BUILD_ORDER = Migration(
    10,
    "build order",
    """
    ALTER TABLE builds ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    UPDATE builds SET seq = (
        SELECT COUNT(*) FROM builds AS earlier WHERE earlier.started_at < builds.started_at
        OR (earlier.started_at = builds.started_at AND earlier.id <= builds.id)
    );
    CREATE INDEX builds_by_seq ON builds (seq);
    ALTER TABLE image_artifacts ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    UPDATE image_artifacts SET seq = (
        SELECT COUNT(*) FROM image_artifacts AS earlier WHERE earlier.created < image_artifacts.created
        OR (earlier.created = image_artifacts.created AND earlier.build_id <= image_artifacts.build_id)
    )
    """,
)

LEASES = Migration(
    11,
    "leases",
    """
    CREATE TABLE replicas (owner TEXT PRIMARY KEY, seen_at $float NOT NULL);
    CREATE TABLE leases (
        key TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        token $int64 NOT NULL,
        expires_at $float NOT NULL
    );
    CREATE INDEX leases_by_owner ON leases (owner)
    """,
)

# Log lines carry who wrote them and when (ns), and get a stable integer ``id``: the
# key of SQLite's full-text index and of a sink's "lines after" cursor. SQLite cannot
# add a primary key to a table, so it rebuilds ``log_lines`` (12); PostgreSQL adds an
# identity column (13); both then get the indexes and stream counters of 14. A line's
# time is read from its ISO ``at`` where it parses, else 0.
_LOG_FIELDS = """
    time_ns INTEGER NOT NULL DEFAULT 0, run_id TEXT NOT NULL DEFAULT '',
    build_id TEXT NOT NULL DEFAULT '', project TEXT NOT NULL DEFAULT '',
    env TEXT NOT NULL DEFAULT '', stage TEXT NOT NULL DEFAULT '',
    task TEXT NOT NULL DEFAULT '', target TEXT NOT NULL DEFAULT '',
    level TEXT NOT NULL DEFAULT 'info'
"""

LOG_RECORDS_SQLITE = Migration(
    12,
    "log records (SQLite): an integer id and a trigram full-text index",
    f"""
    CREATE TABLE log_lines_new (
        id INTEGER PRIMARY KEY, stream TEXT NOT NULL, seq INTEGER NOT NULL, at TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT '', channel TEXT NOT NULL DEFAULT 'stdout',
        line TEXT NOT NULL, {_LOG_FIELDS}, UNIQUE (stream, seq)
    );
    INSERT INTO log_lines_new (stream, seq, at, source, channel, line, time_ns)
        SELECT stream, seq, at, source, channel, line,
               COALESCE(CAST((julianday(at) - 2440587.5) * 86400000000000 AS INTEGER), 0)
        FROM log_lines ORDER BY stream, seq;
    DROP TABLE log_lines;
    ALTER TABLE log_lines_new RENAME TO log_lines;
    CREATE VIRTUAL TABLE log_search USING fts5(line, content='', tokenize='trigram case_sensitive 1');
    CREATE TABLE log_search_progress (id INTEGER PRIMARY KEY, upto INTEGER NOT NULL);
    INSERT INTO log_search_progress (id, upto) VALUES (1, 0)
    """,
    only="sqlite",
)

LOG_RECORDS_POSTGRESQL = Migration(
    13,
    "log records (PostgreSQL): an integer id and the fields of a line",
    """
    ALTER TABLE log_lines ADD COLUMN id BIGINT GENERATED BY DEFAULT AS IDENTITY;
    ALTER TABLE log_lines ADD COLUMN time_ns BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE log_lines ADD COLUMN run_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE log_lines ADD COLUMN build_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE log_lines ADD COLUMN project TEXT NOT NULL DEFAULT '';
    ALTER TABLE log_lines ADD COLUMN env TEXT NOT NULL DEFAULT '';
    ALTER TABLE log_lines ADD COLUMN stage TEXT NOT NULL DEFAULT '';
    ALTER TABLE log_lines ADD COLUMN task TEXT NOT NULL DEFAULT '';
    ALTER TABLE log_lines ADD COLUMN target TEXT NOT NULL DEFAULT '';
    ALTER TABLE log_lines ADD COLUMN level TEXT NOT NULL DEFAULT 'info';
    UPDATE log_lines SET time_ns = CASE
        WHEN at ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}'
        THEN (extract(epoch FROM at::timestamptz) * 1000000000)::BIGINT ELSE 0 END;
    CREATE UNIQUE INDEX log_lines_by_id ON log_lines (id)
    """,
    only="postgresql",
)

LOG_RECORDS = Migration(
    14,
    "log records: indexes by time and scope, stream counters",
    """
    CREATE INDEX log_lines_by_time ON log_lines (time_ns);
    CREATE INDEX log_lines_by_scope ON log_lines (project, env, time_ns);
    ALTER TABLE log_streams ADD COLUMN lines $int64 NOT NULL DEFAULT 0;
    ALTER TABLE log_streams ADD COLUMN bytes $int64 NOT NULL DEFAULT 0;
    INSERT INTO log_streams (stream, closed)
        SELECT DISTINCT stream, 0 FROM log_lines
        WHERE stream NOT IN (SELECT stream FROM log_streams);
    UPDATE log_streams SET
        lines = (SELECT COUNT(*) FROM log_lines WHERE log_lines.stream = log_streams.stream),
        bytes = (SELECT COALESCE(SUM(LENGTH(line)), 0) FROM log_lines
                 WHERE log_lines.stream = log_streams.stream);
    UPDATE log_lines SET run_id = stream,
        project = (SELECT project FROM runs WHERE runs.id = log_lines.stream),
        env = (SELECT env FROM runs WHERE runs.id = log_lines.stream)
        WHERE stream IN (SELECT id FROM runs);
    UPDATE log_lines SET build_id = stream,
        project = (SELECT project FROM builds WHERE builds.id = log_lines.stream)
        WHERE stream IN (SELECT id FROM builds)
    """,
)

TRIGGER_REFUSALS = Migration(
    15,
    "trigger records: refusals counted in one record, delivery ids bound to their body",
    """
    ALTER TABLE trigger_records ADD COLUMN occurrences INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE trigger_records ADD COLUMN last_at TEXT NOT NULL DEFAULT '';
    ALTER TABLE webhook_deliveries ADD COLUMN body_sha256 TEXT NOT NULL DEFAULT ''
    """,
)

MIGRATIONS = (
    RUNS,
    LOGS,
    ALERT_RECORDS,
    ALERT_OUTBOX,
    API_TOKENS,
    TRIGGER_RECORDS,
    SCHEDULES,
    BUILDS,
    CREDENTIALS,
    BUILD_ORDER,
    LEASES,
    LOG_RECORDS_SQLITE,
    LOG_RECORDS_POSTGRESQL,
    LOG_RECORDS,
    TRIGGER_REFUSALS,
)
