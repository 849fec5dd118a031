"""The store layout before versioned migrations, as the old code wrote it (its SQL, verbatim).

Per-component scripts recorded in ``schema_versions (component, version)`` of
``quicflow.db``, and the credential tables in their own ``credentials.db``.
"""

from __future__ import annotations

COMPONENT_SCHEMAS = {
    "runs": """
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
            user TEXT NOT NULL, at TEXT NOT NULL, comment TEXT NOT NULL DEFAULT '', PRIMARY KEY (run_id, gate)
        )
    """,
    "logs": """
        CREATE TABLE log_lines (
            stream TEXT NOT NULL, seq INTEGER NOT NULL, at TEXT NOT NULL, source TEXT NOT NULL DEFAULT '',
            channel TEXT NOT NULL DEFAULT 'stdout', line TEXT NOT NULL, PRIMARY KEY (stream, seq)
        );
        CREATE TABLE log_streams (stream TEXT PRIMARY KEY, closed INTEGER NOT NULL DEFAULT 0)
    """,
    "alert.records": """
        CREATE TABLE alert_records (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
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
            sent_at REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX alert_records_key ON alert_records (rule, project, env, version, id);
        CREATE INDEX alert_records_waiting ON alert_records (mode, sent_at)
    """,
    "alert.outbox": """
        CREATE TABLE alert_outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
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
            next_attempt_at REAL NOT NULL,
            lease_until REAL NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            finished_at REAL,
            last_error TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX alert_outbox_due ON alert_outbox (state, next_attempt_at);
        CREATE TABLE alert_deliveries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            outbox_id INTEGER NOT NULL REFERENCES alert_outbox (id),
            key TEXT NOT NULL,
            callback TEXT NOT NULL,
            scope TEXT NOT NULL DEFAULT '',
            attempt INTEGER NOT NULL,
            status TEXT NOT NULL,
            response_code INTEGER,
            latency_ms REAL NOT NULL,
            error TEXT NOT NULL DEFAULT '',
            at REAL NOT NULL
        );
        CREATE INDEX alert_deliveries_outbox ON alert_deliveries (outbox_id, attempt);
        CREATE INDEX alert_deliveries_callback ON alert_deliveries (callback, id)
    """,
    "api_tokens": """
        CREATE TABLE api_tokens (
            id TEXT PRIMARY KEY, username TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL DEFAULT '',
            last_used_at TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX api_tokens_by_user ON api_tokens (username)
    """,
    "trigger_records": """
        CREATE TABLE trigger_records (
            id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, trigger_id TEXT NOT NULL,
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
    "schedules": """
        CREATE TABLE schedules (
            id TEXT PRIMARY KEY, spec TEXT NOT NULL, last_slot TEXT NOT NULL,
            next_run TEXT NOT NULL DEFAULT '', last_run TEXT NOT NULL DEFAULT '',
            last_status TEXT NOT NULL DEFAULT '', last_error TEXT NOT NULL DEFAULT '',
            last_run_id TEXT NOT NULL DEFAULT ''
        )
    """,
    "builder": """
        CREATE TABLE builds (
            id TEXT PRIMARY KEY, project TEXT NOT NULL, version TEXT NOT NULL,
            commit_id TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, image TEXT NOT NULL DEFAULT '',
            digest TEXT NOT NULL DEFAULT '', duration REAL, started_at TEXT NOT NULL,
            completed_at TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '',
            actor TEXT NOT NULL DEFAULT '', builder TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX builds_by_project ON builds (project, started_at);
        CREATE TABLE image_artifacts (
            build_id TEXT PRIMARY KEY REFERENCES builds (id), project TEXT NOT NULL,
            version TEXT NOT NULL, image TEXT NOT NULL, digest TEXT NOT NULL,
            size INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL
        );
        CREATE INDEX artifacts_by_project ON image_artifacts (project, created)
    """,
}

SCHEMA_VERSIONS = (
    "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER)"
)

CREDENTIALS_SCHEMA = """
CREATE TABLE IF NOT EXISTS sealed_credentials (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    project     TEXT,
    type        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_by  TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS sealed_credentials_key_id ON sealed_credentials (key_id);
CREATE TABLE IF NOT EXISTS credential_audit (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    credential_id TEXT NOT NULL,
    action        TEXT NOT NULL,
    actor         TEXT NOT NULL,
    source_ip     TEXT,
    at            TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS credential_audit_credential ON credential_audit (credential_id, id);
CREATE TABLE IF NOT EXISTS credential_usage (
    credential_id TEXT PRIMARY KEY,
    last_used_at  TEXT NOT NULL
);
"""
