-- Schema version 2: leases have a kind (build or audit jobs); existing leases are build jobs.
-- An audit job names the audited build's key and the auditor key it is for; a worker gives a
-- reason when it releases a job as failed.
ALTER TABLE leases ADD COLUMN kind TEXT NOT NULL DEFAULT 'build';
ALTER TABLE leases ADD COLUMN key TEXT;
ALTER TABLE leases ADD COLUMN auditor TEXT;
ALTER TABLE leases ADD COLUMN reason TEXT;
CREATE INDEX IF NOT EXISTS leases_key ON leases (key, ended_at);
