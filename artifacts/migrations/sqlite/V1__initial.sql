-- Schema version 1: the artifact store as it was first written (tokens, artifacts, manifests,
-- failures, misses keyed by base key, verdicts, build leases, artifact use). IF NOT EXISTS: a
-- database written before migrations were numbered may lack the tables added later in
-- version 1's life (verdicts, leases, artifact_use); this creates them.
CREATE TABLE IF NOT EXISTS tokens (
    name       TEXT PRIMARY KEY NOT NULL,
    sha256     BLOB NOT NULL UNIQUE,
    key_pem    TEXT,
    key_id     TEXT,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS artifacts (
    sha256      TEXT PRIMARY KEY NOT NULL,
    size        INTEGER NOT NULL,
    uploaded_by TEXT NOT NULL,
    uploaded_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS manifests (
    key             TEXT PRIMARY KEY NOT NULL,
    base_key        TEXT NOT NULL,
    package         TEXT NOT NULL,
    version         TEXT NOT NULL,
    otp_major       TEXT NOT NULL,
    elixir          TEXT NOT NULL,
    mix_env         TEXT NOT NULL,
    target          TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    artifact_size   INTEGER NOT NULL,
    compile_env     TEXT NOT NULL,
    signers         TEXT NOT NULL,
    signed_manifest BLOB NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    published_by    TEXT NOT NULL,
    published_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS manifests_package ON manifests (package);
CREATE INDEX IF NOT EXISTS manifests_base_key ON manifests (base_key);
CREATE TABLE IF NOT EXISTS failures (
    base_key       TEXT NOT NULL,
    toolchain_id   TEXT NOT NULL,
    package        TEXT NOT NULL,
    version        TEXT NOT NULL,
    log            TEXT NOT NULL,
    log_sha256     TEXT NOT NULL,
    reported_by    TEXT NOT NULL,
    attempts       INTEGER NOT NULL,
    first_reported INTEGER NOT NULL,
    last_reported  INTEGER NOT NULL,
    PRIMARY KEY (base_key, toolchain_id)
) STRICT;
CREATE INDEX IF NOT EXISTS failures_package ON failures (package);
CREATE TABLE IF NOT EXISTS misses (
    base_key       TEXT PRIMARY KEY NOT NULL,
    package        TEXT NOT NULL,
    version        TEXT NOT NULL,
    reason         TEXT NOT NULL,
    otp_major      TEXT NOT NULL,
    elixir         TEXT NOT NULL,
    mix_env        TEXT NOT NULL,
    target         TEXT NOT NULL,
    lock           TEXT NOT NULL,
    count          INTEGER NOT NULL,
    first_reported INTEGER NOT NULL,
    last_reported  INTEGER NOT NULL,
    closed_at      INTEGER,
    closed_by      TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS misses_open ON misses (closed_at, count);
CREATE TABLE IF NOT EXISTS verdicts (
    key            TEXT NOT NULL,
    auditor_id     TEXT NOT NULL,
    result         TEXT NOT NULL,
    summary        TEXT NOT NULL,
    toolchain_id   TEXT NOT NULL,
    signed_verdict BLOB NOT NULL,
    verdict_sha256 TEXT NOT NULL,
    reported_by    TEXT NOT NULL,
    received_at    INTEGER NOT NULL,
    PRIMARY KEY (key, auditor_id)
) STRICT;
CREATE TABLE IF NOT EXISTS leases (
    job        INTEGER PRIMARY KEY AUTOINCREMENT,
    base_key   TEXT NOT NULL,
    worker     TEXT NOT NULL,
    token_name TEXT NOT NULL,
    lease_ms   INTEGER NOT NULL,
    leased_at  INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    ended_at   INTEGER,
    ended      TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS leases_base_key ON leases (base_key, ended_at);
CREATE TABLE IF NOT EXISTS artifact_use (
    sha256    TEXT PRIMARY KEY NOT NULL,
    last_used INTEGER NOT NULL
) STRICT;
