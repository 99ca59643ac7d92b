-- Schema version 3: key format v2. Manifests record their key format (1 for every manifest
-- published before) and their base text, which misses are matched against.
ALTER TABLE manifests ADD COLUMN key_format INTEGER NOT NULL DEFAULT 1;
ALTER TABLE manifests ADD COLUMN base_text TEXT;

-- Misses are identified by their miss key (base key or request key) and carry their inputs:
-- the table is rebuilt. The misses of key format v1 are kept for the record (and `precomp
-- gc`'s recent locks) but closed: no v2 build can satisfy them, and clients report them again.
ALTER TABLE misses RENAME TO misses_v2;
DROP INDEX IF EXISTS misses_open;
CREATE TABLE misses (
    miss_key       TEXT PRIMARY KEY NOT NULL,
    base_key       TEXT,
    request_text   TEXT NOT NULL,
    package        TEXT NOT NULL,
    version        TEXT NOT NULL,
    reason         TEXT NOT NULL,
    otp_major      TEXT NOT NULL,
    elixir         TEXT NOT NULL,
    mix_env        TEXT NOT NULL,
    target         TEXT NOT NULL,
    lock           TEXT NOT NULL,
    inputs         TEXT NOT NULL,
    count          INTEGER NOT NULL,
    first_reported INTEGER NOT NULL,
    last_reported  INTEGER NOT NULL,
    closed_at      INTEGER,
    closed_by      TEXT
) STRICT;
CREATE INDEX misses_open ON misses (closed_at, count);
CREATE INDEX misses_release ON misses (package, version, closed_at);
INSERT INTO misses (miss_key, base_key, request_text, package, version, reason, otp_major,
    elixir, mix_env, target, lock, inputs, count, first_reported, last_reported, closed_at,
    closed_by)
SELECT base_key, base_key, '', package, version, reason, otp_major, elixir, mix_env, target,
    lock, '{}', count, first_reported, last_reported, coalesce(closed_at, unixepoch()),
    coalesce(closed_by, 'key format v1: reported again with key format v2')
FROM misses_v2;
DROP TABLE misses_v2;
