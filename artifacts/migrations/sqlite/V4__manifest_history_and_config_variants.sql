-- Schema version 4: several manifests per key, config variants and multi-toolchain workers.

-- The manifests kept beside the published one of a key: agreeing, conflicting and replaced
-- ones (docs/protocol.md, "Several manifests for one key"). IF NOT EXISTS: databases written
-- between the two halves of version 4 have it already.
CREATE TABLE IF NOT EXISTS manifest_history (
    key             TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    status          TEXT NOT NULL,
    signed_manifest BLOB NOT NULL,
    signers         TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    published_by    TEXT NOT NULL,
    published_at    INTEGER NOT NULL,
    changed_at      INTEGER NOT NULL,
    note            TEXT NOT NULL DEFAULT '',
    verdicts        TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (key, manifest_digest)
) STRICT;

-- Misses keep their request key (a miss with an unknown member key), their variant key (a
-- miss carrying the package's own compile-env values, which it is then identified by), and
-- whether their inputs hold compile-env values (erased after the retention). Existing misses
-- were identified by their base key or request key: they keep it, with no variant key.
ALTER TABLE misses ADD COLUMN request_key TEXT;
ALTER TABLE misses ADD COLUMN variant_key TEXT;
ALTER TABLE misses ADD COLUMN has_values INTEGER NOT NULL DEFAULT 0;
UPDATE misses SET request_key = miss_key WHERE base_key IS NULL AND request_key IS NULL;
UPDATE misses SET has_values = 1 WHERE instr(inputs, '"app":') > 0;

-- The config variants requested per release and tuple (bounded), and what workers asked for.
CREATE TABLE IF NOT EXISTS config_variants (
    package    TEXT NOT NULL,
    version    TEXT NOT NULL,
    otp_major  TEXT NOT NULL,
    elixir     TEXT NOT NULL,
    mix_env    TEXT NOT NULL,
    digest     TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (package, version, otp_major, elixir, mix_env, digest)
) STRICT;
CREATE TABLE IF NOT EXISTS worker_tuples (
    kind       TEXT NOT NULL,
    worker     TEXT NOT NULL,
    token_name TEXT NOT NULL,
    otp_major  TEXT NOT NULL,
    elixir     TEXT NOT NULL,
    mix_env    TEXT NOT NULL,
    target     TEXT NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (kind, worker, token_name, otp_major, elixir, mix_env, target)
) STRICT;
