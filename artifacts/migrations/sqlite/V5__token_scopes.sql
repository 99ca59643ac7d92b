-- Schema version 5: tokens have scopes (`token::scopes_text`: reader, builder, auditor,
-- publisher), or NULL for a token whose scopes follow from its key as they did before scopes
-- existed (every token of an older database, and `precomp token create` without `--scope`):
-- builder when it may publish builds, auditor when it may post verdicts, reader always
-- (`Artifacts::authenticate`).
ALTER TABLE tokens ADD COLUMN scopes TEXT;
