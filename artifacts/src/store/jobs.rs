//! Leases of jobs to workers on other machines (the `leases` and `worker_tuples` tables):
//! what `POST /precomp/v1/jobs/lease`, `POST /precomp/v1/jobs/ID/heartbeat` and `POST
//! /precomp/v1/jobs/ID/release` ask of the store ([`crate::jobs`] checks requests and tokens),
//! each one transaction: the types, and the SQL the SQLite store's lease operations
//! (`MetadataStore::lease_job`, `renew_lease`, `end_lease`, `job_listing`, in `store.rs`) share.
//!
//! A job is one lease of one unit of work; the `leases` table holds one row per lease, its id
//! the job id, its `kind` what the work is:
//!
//! - **build** (`precomp worker`, a token that may publish): an open miss to build
//!   ([`select_miss`]). The job is closed once the miss is (`PUT manifests/KEY` with its base
//!   key, or `POST failures`).
//! - **audit** (`precomp worker --audit`, a token that may post verdicts): a published build
//!   that fewer than `fewer_than` distinct auditors have audited (countersigned or posted a
//!   verdict on), of the auditor's build recipe, that the leasing auditor key has not audited
//!   and the leasing token has not released as failed ([`select_audit`]). The job is closed
//!   once that auditor posts a verdict on the build (`POST verdicts/KEY`), or the build is no
//!   longer published.
//!
//! Both kinds lease the same way. A unit of work is leasable while it has no *live* lease: not
//! ended, not expired, not closed. Leasing one whose earlier lease expired ends that lease as
//! `lost`: renewing it is then [`JobError::Ended`] (the API's `409`), so its worker stops.
//! Renewing an expired lease that nobody took since renews it; on a closed job it is
//! [`JobError::Closed`] (`409`). A release ends the
//! lease as `released` (back in the queue at once), or for an audit job as `failed` (with a
//! reason: never offered to that token again; a failed rebuild says nothing about the
//! published bytes, but offering it forever to the same machine is pointless). Only the token
//! that leased a job renews or releases it ([`JobError::NotYours`]). Times are kept in
//! milliseconds so short leases expire on time, and passed in by the caller (`now_ms`).

use rusqlite::{params, OptionalExtension, Transaction};

use super::super::api::{AuditBuild, JobKind, LeaseRequest, Miss};
use super::{index_build_row, miss_row, ArtifactStoreError, INDEX_BUILD_COLUMNS, MISS_COLUMNS};

/// SQL: the audit lease `l` is done, its auditor having posted a verdict on its build.
const AUDIT_DONE: &str =
    "EXISTS (SELECT 1 FROM verdicts v WHERE v.key = l.key AND v.auditor_id = l.auditor)";

/// What a lease asks the store for ([`crate::MetadataStore::lease_job`]); checked by the
/// service.
#[derive(Clone, Copy, Debug)]
pub struct LeaseQuery<'a> {
    pub request: &'a LeaseRequest,
    /// The leasing token's name.
    pub token: &'a str,
    /// For an audit job: the auditor key id the lease is for.
    pub auditor: Option<&'a str>,
    /// For an audit job: the mirror's auditor keys, whose signatures count as audits.
    pub auditor_ids: &'a [String],
}

/// What one lease is for.
#[derive(Clone, Debug)]
pub enum Job {
    Build(Miss),
    Audit(AuditBuild),
}

impl Job {
    pub fn kind(&self) -> JobKind {
        match self {
            Job::Build(_) => JobKind::Build,
            Job::Audit(_) => JobKind::Audit,
        }
    }

    pub fn base_key(&self) -> &str {
        match self {
            Job::Build(miss) => miss.miss_key(),
            Job::Audit(audit) => &audit.build.base_key,
        }
    }

    /// The audited build's key.
    pub fn key(&self) -> Option<&str> {
        match self {
            Job::Build(_) => None,
            Job::Audit(audit) => Some(&audit.build.key),
        }
    }

    pub fn package_version(&self) -> (&str, &str) {
        match self {
            Job::Build(miss) => (&miss.package, &miss.version),
            Job::Audit(audit) => (&audit.package, &audit.build.version),
        }
    }
}

/// A lease just granted.
#[derive(Clone, Debug)]
pub struct LeasedJob {
    /// The job id.
    pub job: u64,
    pub work: Job,
    /// When the lease expires, in Unix milliseconds.
    pub expires_ms: i64,
}

/// A lease as the store holds it ([`crate::MetadataStore::job`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    pub job: u64,
    pub kind: JobKind,
    pub base_key: String,
    /// An audit job's build key.
    pub key: Option<String>,
    /// The name of the token that leased it.
    pub token: String,
    pub lease_ms: i64,
    /// How its lease ended, if it did.
    pub ended: Option<LeaseEnded>,
    /// Set when the job is closed: what closed it.
    pub closed_by: Option<String>,
}

/// How a lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEnded {
    /// It expired and the work was leased again.
    Lost,
    Released,
    /// Released as failed (audit jobs): never offered to that token again.
    Failed,
}

impl LeaseEnded {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseEnded::Lost => "lost",
            LeaseEnded::Released => "released",
            LeaseEnded::Failed => "failed",
        }
    }

    fn parse(text: &str) -> LeaseEnded {
        match text {
            "lost" => LeaseEnded::Lost,
            "failed" => LeaseEnded::Failed,
            _ => LeaseEnded::Released,
        }
    }
}

/// Why the store would not renew or end a lease: the API's 404, 403 and 409
/// (`impl From<ArtifactStoreError> for Refusal`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    #[error("no job {job} on this mirror")]
    NotFound { job: u64 },
    #[error("job {job} was leased with token {leased_by:?}, not {token:?}")]
    NotYours {
        job: u64,
        leased_by: String,
        token: String,
    },
    #[error("job {job}: its lease ended ({})", ended.as_str())]
    Ended { job: u64, ended: LeaseEnded },
    #[error("job {job} is closed ({closed_by})")]
    Closed { job: u64, closed_by: String },
}

/// How ending a lease went ([`crate::MetadataStore::end_lease`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEnd {
    /// It was released (or released as failed) before: nothing changed.
    AlreadyReleased,
    /// It ended now; `closed`: the job was closed already.
    Ended { closed: bool },
}

/// SQL: the row aliased `m` (its `otp_major`, `elixir`, `mix_env`, `target`) is of one of the
/// tuples in the JSON array bound to `?1`.
const OF_A_TUPLE: &str = "EXISTS (SELECT 1 FROM json_each(?1) t
    WHERE json_extract(t.value, '$.otp_major') = m.otp_major
      AND json_extract(t.value, '$.elixir') = m.elixir
      AND json_extract(t.value, '$.mix_env') = m.mix_env
      AND m.target IN (SELECT value FROM json_each(t.value, '$.targets')))";

/// Records that `worker` (with `token`'s token) asked for each of `request`'s tuples now.
pub(super) fn record_worker_tuples(
    tx: &Transaction<'_>,
    request: &LeaseRequest,
    token: &str,
    now: i64,
) -> rusqlite::Result<()> {
    for tuple in request.all_tuples() {
        for target in &tuple.targets {
            tx.execute(
                "INSERT INTO worker_tuples (kind, worker, token_name, otp_major, elixir, mix_env,
                    target, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT DO UPDATE SET last_seen = ?8",
                params![
                    request.kind.as_str(),
                    request.worker,
                    token,
                    tuple.otp_major,
                    tuple.elixir,
                    tuple.mix_env,
                    target,
                    now
                ],
            )?;
        }
    }
    Ok(())
}

/// The open miss a build lease gets: exactly one of the request's tuples (OTP major, Elixir,
/// Mix env, a target among its targets), no live build lease; most reported first, then
/// oldest, then by miss key. (A build lease's `base_key` column holds the miss key.)
pub(super) fn select_miss(
    tx: &Transaction<'_>,
    request: &LeaseRequest,
    now: i64,
) -> rusqlite::Result<Option<Miss>> {
    tx.query_row(
        &format!(
            "SELECT {MISS_COLUMNS} FROM misses m
             WHERE closed_at IS NULL AND {OF_A_TUPLE}
               AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.kind = 'build'
                               AND l.base_key = m.miss_key AND l.ended_at IS NULL
                               AND l.expires_ms > ?2)
             ORDER BY count DESC, first_reported, miss_key LIMIT 1"
        ),
        params![tuples_json(request), now],
        miss_row,
    )
    .optional()
}

/// The request's tuples as a JSON array, for [`OF_A_TUPLE`].
fn tuples_json(request: &LeaseRequest) -> String {
    serde_json::to_string(&request.all_tuples()).expect("plain data serialises")
}

/// The published build an audit lease for `auditor` gets: exactly the request's OTP major,
/// Elixir and Mix env, a target among its targets, fewer than `fewer_than` audits (distinct
/// auditors among its signers and its verdicts' authors), none by `auditor`, no live audit
/// lease, not released as failed by this token, of key format v2 (a rebuild cannot give a
/// v1 key), of the request's build recipe (`manifests.recipe`: a rebuild with another recipe
/// may differ in bytes that depend on how it compiles; a request without one gets builds
/// whose manifest records none); fewest audits first, then oldest published, then by key.
/// `auditor_ids` are the mirror's auditor keys, whose signatures count as audits.
pub(super) fn select_audit(
    tx: &Transaction<'_>,
    request: &LeaseRequest,
    auditor: &str,
    token: &str,
    auditor_ids: &[String],
    now: i64,
) -> rusqlite::Result<Option<AuditBuild>> {
    let key: Option<String> = tx
        .query_row(
            &format!(
                "SELECT key FROM (
                   SELECT m.key, m.published_at,
                     (SELECT count(*) FROM (
                        SELECT v.auditor_id FROM verdicts v WHERE v.key = m.key
                        UNION
                        SELECT s.value FROM json_each(m.signers) s
                        WHERE s.value IN (SELECT value FROM json_each(?3)))) AS audits
                   FROM manifests m
                   WHERE {OF_A_TUPLE}
                     AND m.key_format = 2
                     AND m.recipe IS ?7
                     AND NOT EXISTS (SELECT 1 FROM verdicts v
                                     WHERE v.key = m.key AND v.auditor_id = ?2)
                     AND NOT EXISTS (SELECT 1 FROM json_each(m.signers) s WHERE s.value = ?2)
                     AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.kind = 'audit'
                                     AND l.key = m.key AND l.ended_at IS NULL
                                     AND l.expires_ms > ?4 AND NOT {AUDIT_DONE})
                     AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.kind = 'audit'
                                     AND l.key = m.key AND l.token_name = ?5
                                     AND l.ended = 'failed'))
                 WHERE audits < ?6
                 ORDER BY audits, published_at, key LIMIT 1"
            ),
            params![
                tuples_json(request),
                auditor,
                json_list(auditor_ids),
                now,
                token,
                request.fewer_than,
                request.recipe
            ],
            |row| row.get(0),
        )
        .optional()?;
    let Some(key) = key else {
        return Ok(None);
    };
    // `index_build_row` reads the first columns; the package comes after them.
    let package_column = INDEX_BUILD_COLUMNS.split(',').count();
    let (package, mut build) = tx.query_row(
        &format!("SELECT {INDEX_BUILD_COLUMNS}, package FROM manifests WHERE key = ?1"),
        params![key],
        |row| Ok((row.get(package_column)?, index_build_row(row)?)),
    )?;
    build.auditors = build
        .signers
        .iter()
        .filter(|s| auditor_ids.contains(s))
        .cloned()
        .collect();
    super::verdicts::attach(tx, std::slice::from_mut(&mut build))?;
    Ok(Some(AuditBuild { package, build }))
}

/// Ends the earlier leases of `job`'s work, which expired (it was leasable): their workers
/// lost them. Then leases it to `publisher`'s token; the new job id.
pub(super) fn insert_lease(
    tx: &Transaction<'_>,
    job: &Job,
    request: &LeaseRequest,
    token: &str,
    auditor: Option<&str>,
    now: i64,
    lease_ms: i64,
) -> rusqlite::Result<u64> {
    match job {
        Job::Build(miss) => tx.execute(
            "UPDATE leases SET ended_at = ?2, ended = 'lost'
             WHERE kind = 'build' AND base_key = ?1 AND ended_at IS NULL",
            params![miss.miss_key(), now / 1000],
        )?,
        // An audit lease whose verdict was posted is done, not lost.
        Job::Audit(audit) => tx.execute(
            &format!(
                "UPDATE leases AS l SET ended_at = ?2, ended = 'lost'
                 WHERE kind = 'audit' AND key = ?1 AND ended_at IS NULL AND NOT {AUDIT_DONE}"
            ),
            params![audit.build.key, now / 1000],
        )?,
    };
    tx.execute(
        "INSERT INTO leases (kind, base_key, key, auditor, worker, token_name, lease_ms,
            leased_at, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            job.kind().as_str(),
            job.base_key(),
            job.key(),
            auditor,
            request.worker,
            token,
            lease_ms,
            now / 1000,
            now + lease_ms
        ],
    )?;
    Ok(tx.last_insert_rowid() as u64)
}

/// The lease `job` as it stands.
pub(super) fn job_row(db: &rusqlite::Connection, job: u64) -> rusqlite::Result<Option<JobRecord>> {
    db.query_row(
        &format!(
            "SELECT l.kind, l.base_key, l.key, l.token_name, l.lease_ms, l.ended,
               CASE l.kind
                 WHEN 'audit' THEN CASE
                   WHEN NOT EXISTS (SELECT 1 FROM manifests WHERE key = l.key)
                     THEN 'the build is no longer published'
                   WHEN {AUDIT_DONE} THEN 'verdict posted by ' || l.auditor
                 END
                 ELSE (SELECT coalesce(m.closed_by, 'closed') FROM misses m
                       WHERE m.miss_key = l.base_key AND m.closed_at IS NOT NULL)
               END
             FROM leases l WHERE l.job = ?1"
        ),
        params![job as i64],
        |row| {
            Ok(JobRecord {
                job,
                kind: job_kind(&row.get::<_, String>(0)?),
                base_key: row.get(1)?,
                key: row.get(2)?,
                token: row.get(3)?,
                lease_ms: row.get(4)?,
                ended: row
                    .get::<_, Option<String>>(5)?
                    .as_deref()
                    .map(LeaseEnded::parse),
                closed_by: row.get(6)?,
            })
        },
    )
    .optional()
}

/// The lease `job`, if it exists and `token` leased it.
pub(super) fn held_job(
    tx: &Transaction<'_>,
    job: u64,
    token: &str,
) -> rusqlite::Result<Result<JobRecord, ArtifactStoreError>> {
    Ok(match job_row(tx, job)? {
        None => Err(JobError::NotFound { job }.into()),
        Some(held) if held.token != token => Err(JobError::NotYours {
            job,
            leased_by: held.token,
            token: token.to_string(),
        }
        .into()),
        Some(held) => Ok(held),
    })
}

fn job_kind(text: &str) -> JobKind {
    if text == "audit" {
        JobKind::Audit
    } else {
        JobKind::Build
    }
}

/// `values` as a JSON array, for `json_each(?)`.
fn json_list(values: &[String]) -> String {
    serde_json::to_string(values).expect("strings serialise")
}

/// Unix seconds at or after `ms`.
pub(crate) fn expires_at(ms: i64) -> i64 {
    (ms + 999) / 1000
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::{
        HeartbeatRequest, JobListing, Lease, LeaseTuple, ReleaseOutcome, ReleaseRequest,
        MAX_FEWER_THAN, MAX_LEASE_TUPLES, MAX_RELEASE_REASON,
    };
    use crate::store::{ArtifactStore, ManifestRecord, WORKER_WINDOW_SECONDS};
    use crate::{Artifacts, ArtifactsConfig, Publisher, Refusal};
    use precomp_proto::buildkey::{BuildInputs, Manager, PackageRef, Target};
    use precomp_proto::manifest::{ArtifactSigningKey, Manifest, Output, SignedManifest};
    use prost::Message;

    struct Mirror {
        _dir: tempfile::TempDir,
        artifacts: Arc<Artifacts>,
        builder: ArtifactSigningKey,
        auditors: [ArtifactSigningKey; 2],
    }

    impl Mirror {
        fn new() -> Mirror {
            let dir = tempfile::tempdir().unwrap();
            let builder = ArtifactSigningKey::generate();
            let auditors = [
                ArtifactSigningKey::generate(),
                ArtifactSigningKey::generate(),
            ];
            let artifacts = Artifacts::open(ArtifactsConfig {
                data: dir.path().to_path_buf(),
                builder_keys: vec![builder.public_key()],
                auditor_keys: auditors
                    .iter()
                    .map(ArtifactSigningKey::public_key)
                    .collect(),
                ..ArtifactsConfig::default()
            })
            .unwrap();
            Mirror {
                _dir: dir,
                artifacts,
                builder,
                auditors,
            }
        }

        /// Publishes a build of `package` 1.0.0 for OTP `otp` and `target`, published at
        /// `published_at`: its key.
        fn publish(&self, package: &str, otp: &str, target: &str, published_at: i64) -> String {
            let mut manifest = Manifest::default();
            manifest
                .set_inputs(&BuildInputs {
                    package: PackageRef {
                        name: package.into(),
                        version: "1.0.0".into(),
                        outer_checksum: [7; 32],
                    },
                    manager: Manager::Mix,
                    closure: vec![],
                    otp_major: otp.into(),
                    elixir: "1.14.0".into(),
                    mix_env: "prod".into(),
                    target: match target.split_once('-') {
                        Some((arch, libc)) => Target::Native {
                            arch: arch.into(),
                            libc: libc.into(),
                        },
                        None => Target::Any,
                    },
                    compile_env: vec![],
                })
                .unwrap();
            manifest.output = Some(Output {
                artifact_sha256: vec![1; 32],
                artifact_size: 10,
                ..Default::default()
            });
            let signed = SignedManifest::sign(&manifest, &self.builder);
            let record = ManifestRecord {
                key: manifest.key.clone(),
                base_key: manifest.base_key.clone(),
                package: package.into(),
                version: "1.0.0".into(),
                otp_major: otp.into(),
                elixir: "1.14.0".into(),
                mix_env: "prod".into(),
                target: target.into(),
                artifact_sha256: hex::encode([1; 32]),
                artifact_size: 10,
                compile_env: vec![],
                signers: vec![self.builder.public_key().key_id()],
                key_format: manifest.format,
                base_text: manifest.check_key().unwrap().base_text().unwrap(),
                recipe: None,
            };
            let store = self.artifacts.store();
            store
                .put_manifest(
                    &record,
                    &signed,
                    &signed.encode_to_vec(),
                    "builder",
                    &|_| true,
                )
                .unwrap();
            self.sql(
                "UPDATE manifests SET published_at = ?2 WHERE key = ?1",
                params![manifest.key, published_at],
            );
            manifest.key
        }

        /// Runs `sql` on the store's database (another connection, as `precomp token` has).
        fn sql(&self, sql: &str, params: impl rusqlite::Params) {
            let store = ArtifactStore::open(self._dir.path()).unwrap();
            let db = store.db.lock();
            db.execute(sql, params).unwrap();
        }

        /// A stored verdict of auditor `n` on `key` (the row only: selection reads nothing
        /// else).
        fn verdict(&self, key: &str, n: usize) {
            self.sql(
                "INSERT INTO verdicts (key, auditor_id, result, summary, toolchain_id,
                    signed_verdict, verdict_sha256, reported_by, received_at)
                 VALUES (?1, ?2, 'match', '', 'host', x'', '', 'auditor', 0)",
                params![key, self.auditor_id(n)],
            );
        }

        /// Auditor `n` countersigned `key`.
        fn countersigned(&self, key: &str, n: usize) {
            let signers =
                serde_json::json!([self.builder.public_key().key_id(), self.auditor_id(n)]);
            self.sql(
                "UPDATE manifests SET signers = ?2 WHERE key = ?1",
                params![key, signers.to_string()],
            );
        }

        fn auditor_id(&self, n: usize) -> String {
            self.auditors[n].public_key().key_id()
        }

        /// A token bound to auditor `n`'s key, named `name`.
        fn auditor(&self, n: usize, name: &str) -> Publisher {
            Publisher {
                name: name.into(),
                key: Some(self.auditors[n].public_key()),
                scopes: None,
            }
        }

        /// Expires every lease now, as if nobody had renewed them.
        fn expire_all(&self) {
            self.sql("UPDATE leases SET expires_ms = 0", params![]);
        }

        fn lease(
            &self,
            publisher: &Publisher,
            targets: &[&str],
            fewer_than: u32,
        ) -> Result<Option<Lease>, Refusal> {
            self.artifacts.lease_job(
                &LeaseRequest {
                    kind: JobKind::Audit,
                    worker: "w".into(),
                    otp_major: "25".into(),
                    elixir: "1.14.0".into(),
                    mix_env: "prod".into(),
                    targets: targets.iter().map(|t| t.to_string()).collect(),
                    tuples: Vec::new(),
                    lease_seconds: 60,
                    fewer_than,
                    auditor: None,
                    recipe: None,
                },
                publisher,
            )
        }

        /// The key of the build an audit lease gives `publisher`; `None` when none.
        fn leased(
            &self,
            publisher: &Publisher,
            targets: &[&str],
            fewer_than: u32,
        ) -> Option<String> {
            self.lease(publisher, targets, fewer_than)
                .unwrap()
                .map(|lease| {
                    assert_eq!(lease.kind, JobKind::Audit);
                    assert!(lease.miss.is_none());
                    lease
                        .build
                        .expect("an audit lease names its build")
                        .build
                        .key
                })
        }
    }

    const ANY: &[&str] = &["any"];

    #[test]
    fn audit_jobs_are_the_builds_with_fewest_audits_then_the_oldest_for_this_toolchain() {
        let mirror = Mirror::new();
        let old = mirror.publish("old_one", "25", "any", 100);
        let newer = mirror.publish("newer", "25", "any", 200);
        let newest = mirror.publish("newest", "25", "any", 300);
        let native = mirror.publish("native", "25", "x86_64-linux-gnu", 50);
        mirror.publish("other_otp", "26", "any", 10);
        // `old` has one audit (a verdict by auditor 1), `newer` one (auditor 1 countersigned).
        mirror.verdict(&old, 1);
        mirror.countersigned(&newer, 1);
        let (a0, a1) = (mirror.auditor(0, "a0"), mirror.auditor(1, "a1"));

        // Fewest audits first, though it is the newest: nothing else has none (native and
        // other_otp are not for these targets / this OTP).
        let lease = mirror.lease(&a0, ANY, 2).unwrap().unwrap();
        let build = lease.build.unwrap();
        assert_eq!(build.package, "newest");
        assert_eq!(build.build.key, newest);
        assert_eq!(
            build.build.signers,
            vec![mirror.builder.public_key().key_id()]
        );
        // Fewer than 1: nothing else, and newest is leased (exclusive while live).
        assert_eq!(mirror.leased(&a0, ANY, 1), None);
        assert_eq!(mirror.leased(&a1, ANY, 1), None);
        // Then the oldest with one audit; the index fields come along.
        let lease = mirror.lease(&a0, ANY, 2).unwrap().unwrap();
        let build = lease.build.unwrap().build;
        assert_eq!(build.key, old);
        assert_eq!(build.verdicts.len(), 1, "{build:?}");
        assert_eq!(build.verdicts[0].auditor, mirror.auditor_id(1));
        let build = mirror
            .lease(&a0, ANY, 2)
            .unwrap()
            .unwrap()
            .build
            .unwrap()
            .build;
        assert_eq!(build.key, newer);
        assert_eq!(build.auditors, vec![mirror.auditor_id(1)]);
        // Auditor 1 audited old and newer already; newest is leased.
        assert_eq!(mirror.leased(&a1, ANY, 2), None);
        // Native code for a target the worker builds.
        assert_eq!(
            mirror.leased(&a1, &["any", "x86_64-linux-gnu"], 1),
            Some(native)
        );
    }

    #[test]
    fn expired_audit_leases_go_back_to_the_queue_and_verdicts_close_them() {
        let mirror = Mirror::new();
        let key = mirror.publish("plain_ex", "25", "any", 100);
        let (a0, a1) = (mirror.auditor(0, "a0"), mirror.auditor(1, "a1"));
        let first = mirror.lease(&a0, ANY, 2).unwrap().unwrap();
        assert_eq!(mirror.leased(&a1, ANY, 2), None, "exclusive while live");
        let artifacts = &mirror.artifacts;
        let renewed = artifacts
            .heartbeat_job(first.job, &HeartbeatRequest::default(), &a0)
            .unwrap();
        assert_eq!(renewed.kind, JobKind::Audit);
        assert_eq!(renewed.key.as_deref(), Some(key.as_str()));
        // Another token: 403; no such job: 404.
        let refused = artifacts
            .heartbeat_job(first.job, &HeartbeatRequest::default(), &a1)
            .unwrap_err();
        assert_eq!(refused.status, 403, "{refused:?}");
        let missing = artifacts
            .heartbeat_job(999, &HeartbeatRequest::default(), &a0)
            .unwrap_err();
        assert_eq!(missing.status, 404);

        // Expired: another auditor gets it, and the first lease is lost.
        mirror.expire_all();
        let second = mirror.lease(&a1, ANY, 2).unwrap().unwrap();
        assert_ne!(second.job, first.job);
        let lost = artifacts
            .heartbeat_job(first.job, &HeartbeatRequest::default(), &a0)
            .unwrap_err();
        assert_eq!(lost.status, 409);
        assert!(lost.message.contains("leased again"), "{lost:?}");

        // Auditor 1 posts its verdict: the job is closed, and the build is free for the
        // next auditor at once (fewer than 2), though the lease has not expired.
        mirror.verdict(&key, 1);
        let closed = artifacts
            .heartbeat_job(second.job, &HeartbeatRequest::default(), &a1)
            .unwrap_err();
        assert_eq!(closed.status, 409);
        assert!(closed.message.contains("closed"), "{closed:?}");
        assert!(closed.message.contains(&mirror.auditor_id(1)), "{closed:?}");
        let third = mirror.lease(&a0, ANY, 2).unwrap().unwrap();
        // Its verdict made it done, not lost (409), when auditor 0 leased the build again.
        let released = artifacts
            .release_job(second.job, &ReleaseRequest::default(), &a1)
            .unwrap();
        assert_eq!(released.result, "closed");
        assert_eq!(
            artifacts
                .release_job(second.job, &ReleaseRequest::default(), &a1)
                .unwrap()
                .result,
            "already_released"
        );
        // Two audits now with auditor 0's: nothing has fewer than 2.
        mirror.verdict(&key, 0);
        assert!(artifacts
            .heartbeat_job(third.job, &HeartbeatRequest::default(), &a0)
            .is_err());
        assert_eq!(mirror.leased(&a0, ANY, 2), None);
        assert_eq!(mirror.leased(&a1, ANY, 2), None);
    }

    #[test]
    fn a_failed_audit_is_not_offered_again_to_that_token() {
        let mirror = Mirror::new();
        let key = mirror.publish("plain_ex", "25", "any", 100);
        let a0 = mirror.auditor(0, "a0");
        let artifacts = &mirror.artifacts;
        let lease = mirror.lease(&a0, ANY, 1).unwrap().unwrap();
        // A plain release puts it back in the queue.
        let released = artifacts
            .release_job(lease.job, &ReleaseRequest::default(), &a0)
            .unwrap();
        assert_eq!(released.result, "released");
        assert_eq!(released.key.as_deref(), Some(key.as_str()));
        let lease = mirror.lease(&a0, ANY, 1).unwrap().unwrap();
        // Reasons are bounded and on one line.
        let long = ReleaseRequest {
            outcome: ReleaseOutcome::Failed,
            reason: Some("x".repeat(MAX_RELEASE_REASON + 1)),
        };
        assert_eq!(
            artifacts
                .release_job(lease.job, &long, &a0)
                .unwrap_err()
                .status,
            413
        );
        let failed = ReleaseRequest {
            outcome: ReleaseOutcome::Failed,
            reason: Some("the rebuild failed: mix compile exited 1".into()),
        };
        let released = artifacts.release_job(lease.job, &failed, &a0).unwrap();
        assert_eq!(released.result, "failed");
        assert_eq!(mirror.leased(&a0, ANY, 1), None, "not offered to a0 again");
        // The same auditor key with another token, and another auditor, still get it.
        let other_token = mirror.auditor(0, "a0-second-machine");
        assert_eq!(mirror.leased(&other_token, ANY, 1), Some(key.clone()));
        mirror.expire_all();
        assert_eq!(mirror.leased(&mirror.auditor(1, "a1"), ANY, 1), Some(key));
    }

    #[test]
    fn only_auditors_lease_audit_jobs_and_build_jobs_keep_their_rules() {
        let mirror = Mirror::new();
        mirror.publish("plain_ex", "25", "any", 100);
        let artifacts = &mirror.artifacts;
        let builder = Publisher {
            name: "builder".into(),
            key: Some(mirror.builder.public_key()),
            scopes: None,
        };
        let refused = mirror.lease(&builder, ANY, 1).unwrap_err();
        assert_eq!(refused.status, 403, "{refused:?}");
        assert!(refused.message.contains("auditor"), "{refused:?}");
        // fewer_than is bounded.
        assert_eq!(
            mirror
                .lease(&mirror.auditor(0, "a0"), ANY, 0)
                .unwrap_err()
                .status,
            422
        );
        assert_eq!(
            mirror
                .lease(&mirror.auditor(0, "a0"), ANY, MAX_FEWER_THAN + 1)
                .unwrap_err()
                .status,
            422
        );
        // A token bound to no key may use any auditor key: it must say which.
        let unbound = Publisher {
            name: "unbound".into(),
            key: None,
            scopes: None,
        };
        let refused = mirror.lease(&unbound, ANY, 1).unwrap_err();
        assert_eq!(refused.status, 422, "{refused:?}");
        let mut request = LeaseRequest {
            kind: JobKind::Audit,
            worker: "w".into(),
            otp_major: "25".into(),
            elixir: "1.14.0".into(),
            mix_env: "prod".into(),
            targets: vec!["any".into()],
            tuples: Vec::new(),
            lease_seconds: 60,
            fewer_than: 1,
            auditor: Some("ed25519:0000000000000000".into()),
            recipe: None,
        };
        assert_eq!(
            artifacts.lease_job(&request, &unbound).unwrap_err().status,
            403
        );
        request.auditor = Some(mirror.auditor_id(1));
        // The same token with only the builder scope cannot lease an audit job.
        let scoped = Publisher {
            scopes: Some(vec![crate::Scope::Builder]),
            ..unbound.clone()
        };
        let refused = artifacts.lease_job(&request, &scoped).unwrap_err();
        assert_eq!(refused.status, 403, "{refused:?}");
        assert!(refused.message.contains("no auditor scope"), "{refused:?}");
        let lease = artifacts.lease_job(&request, &unbound).unwrap().unwrap();
        assert!(artifacts
            .heartbeat_job(lease.job, &HeartbeatRequest::default(), &unbound)
            .is_ok());
        // The same token name, now bound to a builder's key (re-created): it may no longer
        // work on audits.
        let rebound = Publisher {
            name: "unbound".into(),
            key: Some(mirror.builder.public_key()),
            scopes: None,
        };
        let refused = artifacts
            .heartbeat_job(lease.job, &HeartbeatRequest::default(), &rebound)
            .unwrap_err();
        assert_eq!(refused.status, 403);
        assert!(refused.message.contains("auditor keys"), "{refused:?}");

        // Build jobs: the default kind; "failed" is for audits (a build failure is POST
        // failures); an audit lease does not hold a miss of the same base key.
        let request: LeaseRequest = serde_json::from_str(
            r#"{"worker": "b", "otp_major": "25", "elixir": "1.14.0", "mix_env": "prod",
                "targets": ["any"], "lease_seconds": 60}"#,
        )
        .unwrap();
        assert_eq!(request.kind, JobKind::Build);
        assert_eq!(request.fewer_than, 1);
        assert_eq!(artifacts.lease_job(&request, &builder).unwrap(), None);
        mirror.sql(
            "INSERT INTO misses (miss_key, base_key, request_text, package, version, reason,
                otp_major, elixir, mix_env, target, lock, inputs, count, first_reported,
                last_reported)
             VALUES ('b1', 'b1', '', 'shapes', '1.0.0', 'not built', '25', '1.14.0', 'prod',
                'any', '', '{}', 1, unixepoch(), unixepoch())",
            params![],
        );
        let build = artifacts.lease_job(&request, &builder).unwrap().unwrap();
        assert_eq!(build.kind, JobKind::Build);
        assert_eq!(build.miss.as_ref().unwrap().miss_key(), "b1");
        assert!(build.build.is_none());
        let json = serde_json::to_value(&build).unwrap();
        assert_eq!(json["kind"], "build");
        assert!(json.get("build").is_none(), "{json}");
        let failed = ReleaseRequest {
            outcome: ReleaseOutcome::Failed,
            reason: None,
        };
        let refused = artifacts
            .release_job(build.job, &failed, &builder)
            .unwrap_err();
        assert_eq!(refused.status, 422);
        assert!(
            refused.message.contains("POST /precomp/v1/failures"),
            "{refused:?}"
        );
        assert_eq!(
            artifacts
                .release_job(build.job, &ReleaseRequest::default(), &builder)
                .unwrap()
                .result,
            "released"
        );
    }

    /// A worker with several toolchains leases misses of any of its tuples and never one of
    /// another; a single-tuple request (as workers before `tuples` send) still works; the job
    /// listing says which tuple no worker asked for, and who asked for what.
    #[test]
    fn leases_cover_every_tuple_of_a_worker_and_the_listing_shows_unserved_ones() {
        let mirror = Mirror::new();
        for (key, otp, elixir, count) in [
            ("m25", "25", "1.14.0", 3),
            ("m27", "27", "1.18.3", 2),
            ("m26", "26", "1.16.3", 1),
        ] {
            mirror.sql(
                "INSERT INTO misses (miss_key, base_key, request_text, package, version, reason,
                    otp_major, elixir, mix_env, target, lock, inputs, count, first_reported,
                    last_reported)
                 VALUES (?1, ?1, '', 'plain_ex', '1.0.0', 'not built', ?2, ?3, 'prod', 'any',
                    '', '{}', ?4, unixepoch(), unixepoch())",
                params![key, otp, elixir, count],
            );
        }
        let builder = Publisher {
            name: "builder".into(),
            key: Some(mirror.builder.public_key()),
            scopes: None,
        };
        let tuple = |otp: &str, elixir: &str| LeaseTuple {
            otp_major: otp.into(),
            elixir: elixir.into(),
            mix_env: "prod".into(),
            targets: vec!["any".into(), "x86_64-linux-gnu".into()],
        };
        let two: LeaseRequest = serde_json::from_value(serde_json::json!({
            "worker": "multi", "lease_seconds": 60,
            "tuples": [tuple("25", "1.14.0"), tuple("27", "1.18.3")]}))
        .unwrap();
        let artifacts = &mirror.artifacts;
        let leased = |request: &LeaseRequest| {
            artifacts
                .lease_job(request, &builder)
                .unwrap()
                .map(|lease| lease.miss.unwrap().miss_key().to_string())
        };
        assert_eq!(leased(&two).as_deref(), Some("m25"));
        assert_eq!(leased(&two).as_deref(), Some("m27"));
        assert_eq!(leased(&two), None, "m26 is of no tuple of this worker");

        // Before any worker asked for 26, and after one did, with the old single tuple.
        let listing = artifacts.job_listing(&builder).unwrap();
        assert_eq!(listing.window_seconds, WORKER_WINDOW_SECONDS as u64);
        let by_otp = |listing: &JobListing, otp: &str| {
            listing
                .tuples
                .iter()
                .find(|t| t.otp_major == otp)
                .cloned()
                .unwrap_or_else(|| panic!("no tuple {otp}: {listing:?}"))
        };
        let unserved = by_otp(&listing, "26");
        assert!(!unserved.served, "{listing:?}");
        assert!(unserved.workers.is_empty());
        assert_eq!((unserved.open_misses, unserved.leased), (1, 0));
        let served = by_otp(&listing, "25");
        assert!(served.served, "{listing:?}");
        assert_eq!(served.workers, vec!["multi".to_string()]);
        assert_eq!(served.leased, 1);
        assert_eq!(listing.jobs.len(), 2, "{listing:?}");
        assert_eq!(listing.jobs[0].package, "plain_ex");
        assert_eq!(listing.jobs[0].worker, "multi");
        assert_eq!(listing.workers.len(), 1);
        assert_eq!(listing.workers[0].tuples.len(), 2, "{listing:?}");

        let old: LeaseRequest = serde_json::from_value(serde_json::json!({
            "worker": "old", "otp_major": "26", "elixir": "1.16.3", "mix_env": "prod",
            "targets": ["any"], "lease_seconds": 60}))
        .unwrap();
        assert_eq!(leased(&old).as_deref(), Some("m26"));
        let listing = artifacts.job_listing(&builder).unwrap();
        let now_served = by_otp(&listing, "26");
        assert!(now_served.served);
        assert_eq!(now_served.workers, vec!["old".to_string()]);

        // Bounded and checked like the top-level tuple.
        let mut too_many = two.clone();
        too_many.tuples = vec![tuple("25", "1.14.0"); MAX_LEASE_TUPLES + 1];
        assert_eq!(
            artifacts.lease_job(&too_many, &builder).unwrap_err().status,
            422
        );
        let mut bad = two.clone();
        bad.tuples[1].targets = vec!["not a target".into()];
        assert_eq!(artifacts.lease_job(&bad, &builder).unwrap_err().status, 422);
        // An auditor's token sees no listing (it is for builders).
        let auditor = mirror.auditor(0, "a0");
        assert_eq!(artifacts.job_listing(&auditor).unwrap_err().status, 403);
    }
}
