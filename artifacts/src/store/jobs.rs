//! Jobs leased to workers on other machines: `POST /precomp/v1/jobs/lease`,
//! `POST /precomp/v1/jobs/ID/heartbeat`, `POST /precomp/v1/jobs/ID/release`, with a token.
//!
//! A job is one lease of one unit of work; the `leases` table holds one row per lease, its id
//! the job id, its `kind` what the work is:
//!
//! - **build** (`precomp worker`, a token that may publish): an open miss to build
//!   ([`select_miss`]). The job is closed once the miss is (`PUT manifests/KEY` with its base
//!   key, or `POST failures`).
//! - **audit** (`precomp worker --audit`, a token that may post verdicts): a published build
//!   that fewer than `fewer_than` distinct auditors have audited (countersigned or posted a
//!   verdict on), that the leasing auditor key has not audited and the leasing token has not
//!   released as failed ([`select_audit`]). The job is closed once that auditor posts a verdict
//!   on the build (`POST verdicts/KEY`), or the build is no longer published.
//!
//! Both kinds lease the same way. A unit of work is leasable while it has no *live* lease: not
//! ended, not expired, not closed. Leasing one whose earlier lease expired ends that lease as
//! `lost`: a heartbeat on it is then `409`, so its worker stops. A heartbeat on an expired
//! lease that nobody took since renews it; on a closed job it is `409`. A release ends the
//! lease as `released` (back in the queue at once), or for an audit job as `failed` (with a
//! reason: never offered to that token again; a failed rebuild says nothing about the
//! published bytes, but offering it forever to the same machine is pointless). Only the token
//! that leased a job renews or releases it. Times are kept in milliseconds so short leases
//! expire on time.

use precomp_proto::manifest::ArtifactPublicKey;
use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};

use super::super::api::{
    AuditBuild, HeartbeatRequest, JobKind, JobListing, Lease, LeaseReleased, LeaseRenewed,
    LeaseRequest, LeaseTuple, LiveJob, Miss, ReleaseOutcome, ReleaseRequest, TupleDemand,
    WorkerSeen, MAX_FEWER_THAN, MAX_LEASE_TUPLES, MAX_RELEASE_REASON,
};
use super::super::token::valid_token_name;
use super::super::{Artifacts, Publisher, Refusal, MAX_LEASE_SECONDS, MIN_LEASE_SECONDS};
use super::{
    index_build_row, miss_row, ArtifactStore, ArtifactStoreError, INDEX_BUILD_COLUMNS,
    MISS_COLUMNS, WORKER_WINDOW_SECONDS,
};

/// Bound on the targets one lease request names.
const MAX_TARGETS: usize = 16;

/// Bound on the `auditor` key id of a lease request.
const MAX_AUDITOR_ID: usize = 128;

/// SQL: the audit lease `l` is done, its auditor having posted a verdict on its build.
const AUDIT_DONE: &str =
    "EXISTS (SELECT 1 FROM verdicts v WHERE v.key = l.key AND v.auditor_id = l.auditor)";

/// What one lease is for.
enum Job {
    Build(Miss),
    Audit(AuditBuild),
}

impl Job {
    fn kind(&self) -> JobKind {
        match self {
            Job::Build(_) => JobKind::Build,
            Job::Audit(_) => JobKind::Audit,
        }
    }

    fn base_key(&self) -> &str {
        match self {
            Job::Build(miss) => miss.miss_key(),
            Job::Audit(audit) => &audit.build.base_key,
        }
    }

    /// The audited build's key.
    fn key(&self) -> Option<&str> {
        match self {
            Job::Build(_) => None,
            Job::Audit(audit) => Some(&audit.build.key),
        }
    }

    fn package_version(&self) -> (&str, &str) {
        match self {
            Job::Build(miss) => (&miss.package, &miss.version),
            Job::Audit(audit) => (&audit.package, &audit.build.version),
        }
    }
}

impl Artifacts {
    /// Leases the next job `request` asks for to `publisher`'s token: for a build job the
    /// most-reported open miss it matches, for an audit job the matching published build with
    /// the fewest audits; `None` when there is none. A build job needs a token that may
    /// publish, an audit job one that may post verdicts (`403` otherwise).
    pub fn lease_job(
        &self,
        request: &LeaseRequest,
        publisher: &Publisher,
    ) -> Result<Option<Lease>, Refusal> {
        check_lease_request(request)?;
        // The scope the job's report needs (the access table let builders and auditors in):
        // a job its token could not report is never handed out.
        let needed = match request.kind {
            JobKind::Build => crate::Scope::Builder,
            JobKind::Audit => crate::Scope::Auditor,
        };
        if !self.scopes_of(publisher).contains(&needed) {
            return Err(Refusal::new(
                403,
                format!(
                    "token {:?} has no {needed} scope: it cannot lease {} jobs",
                    publisher.name,
                    match request.kind {
                        JobKind::Build => "build",
                        JobKind::Audit => "audit",
                    }
                ),
            ));
        }
        // Who may lease what; for audits, the auditor the lease is for, and the keys whose
        // signatures count as audits (the index's `auditors`).
        let (auditor, auditor_ids) = match request.kind {
            JobKind::Build => {
                self.trusted_for(publisher)?;
                (None, Vec::new())
            }
            JobKind::Audit => {
                let auditor = self.lease_auditor(request, publisher)?;
                let ids: Vec<String> = self
                    .auditor_keys()
                    .iter()
                    .map(ArtifactPublicKey::key_id)
                    .collect();
                (Some(auditor), ids)
            }
        };
        let store = &self.store;
        let err = store.db_err();
        if request.kind == JobKind::Build {
            // Misses whose values expired are closed before one is handed out.
            store.expire_if_due(&self.misses)?;
        }
        let now = now_ms();
        let mut db = store.db.lock();
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        // What this worker can do, for the job listing's "which tuples have no worker".
        record_worker_tuples(&tx, request, &publisher.name, now / 1000).map_err(&err)?;
        let job = match &auditor {
            None => select_miss(&tx, request, now)
                .map_err(&err)?
                .map(Job::Build),
            Some(auditor) => select_audit(&tx, request, auditor, publisher, &auditor_ids, now)
                .map_err(&err)?
                .map(Job::Audit),
        };
        let Some(job) = job else {
            tx.commit().map_err(&err)?;
            return Ok(None);
        };
        let lease_ms = request.lease_seconds as i64 * 1000;
        let id = insert_lease(
            &tx,
            &job,
            request,
            publisher,
            auditor.as_deref(),
            now,
            lease_ms,
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        let (package, version) = job.package_version();
        tracing::info!(
            job = id,
            kind = %job.kind(),
            base_key = %job.base_key(),
            key = job.key().unwrap_or(""),
            package = %package,
            version = %version,
            worker = %request.worker,
            token = %publisher.name,
            "job leased"
        );
        let (miss, build) = match job {
            Job::Build(miss) => (Some(miss), None),
            Job::Audit(audit) => (None, Some(audit)),
        };
        Ok(Some(Lease {
            job: id,
            kind: request.kind,
            lease_expires_at: expires_at(now + lease_ms),
            lease_seconds: request.lease_seconds,
            miss,
            build,
        }))
    }

    /// Renews the lease of `job` for the token that leased it: `409` when it was lost (it
    /// expired and was leased again), released, or the job is closed.
    pub fn heartbeat_job(
        &self,
        job: u64,
        request: &HeartbeatRequest,
        publisher: &Publisher,
    ) -> Result<LeaseRenewed, Refusal> {
        if let Some(seconds) = request.lease_seconds {
            check_lease_seconds(seconds)?;
        }
        let store = &self.store;
        let err = store.db_err();
        let now = now_ms();
        let mut db = store.db.lock();
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let held = held_job(store, &tx, job, publisher).map_err(Refusal::from)??;
        self.may_work_on(held.kind, publisher)?;
        if let Some(ended) = &held.ended {
            return Err(Refusal::new(409, ended_message(job, ended)));
        }
        if let Some(closed_by) = &held.closed_by {
            return Err(Refusal::new(
                409,
                format!("job {job} is closed ({closed_by}): stop working on it"),
            ));
        }
        let lease_ms = request
            .lease_seconds
            .map_or(held.lease_ms, |s| s as i64 * 1000);
        tx.execute(
            "UPDATE leases SET expires_ms = ?2, lease_ms = ?3 WHERE job = ?1",
            params![job as i64, now + lease_ms, lease_ms],
        )
        .map_err(&err)?;
        // A worker busy with a job still serves the tuples it asked for.
        tx.execute(
            "UPDATE worker_tuples SET last_seen = ?2
             WHERE (kind, worker, token_name) IN
                   (SELECT kind, worker, token_name FROM leases WHERE job = ?1)",
            params![job as i64, now / 1000],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(LeaseRenewed {
            job,
            kind: held.kind,
            base_key: held.base_key,
            key: held.key,
            lease_expires_at: expires_at(now + lease_ms),
            lease_seconds: (lease_ms / 1000) as u64,
        })
    }

    /// Ends the lease of `job` (the token that leased it): `released` puts the work back in the
    /// queue; `failed` (audit jobs) keeps it from this token for good.
    pub fn release_job(
        &self,
        job: u64,
        request: &ReleaseRequest,
        publisher: &Publisher,
    ) -> Result<LeaseReleased, Refusal> {
        let reason = check_release_request(request)?;
        let store = &self.store;
        let err = store.db_err();
        let now = now_ms();
        let mut db = store.db.lock();
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let held = held_job(store, &tx, job, publisher).map_err(Refusal::from)??;
        self.may_work_on(held.kind, publisher)?;
        if held.kind == JobKind::Build && request.outcome == ReleaseOutcome::Failed {
            return Err(Refusal::new(
                422,
                format!(
                    "job {job} is a build job: report a failed build with POST \
                     /precomp/v1/failures (it keeps the log and closes the miss), or release \
                     it without an outcome"
                ),
            ));
        }
        let result = match held.ended.as_deref() {
            Some("released" | "failed") => "already_released",
            Some(ended) => return Err(Refusal::new(409, ended_message(job, ended))),
            None => {
                tx.execute(
                    "UPDATE leases SET ended_at = ?2, ended = ?3, reason = ?4 WHERE job = ?1",
                    params![job as i64, now / 1000, request.outcome.as_str(), reason],
                )
                .map_err(&err)?;
                if held.closed_by.is_some() {
                    "closed"
                } else {
                    request.outcome.as_str()
                }
            }
        };
        tx.commit().map_err(&err)?;
        tracing::info!(
            job,
            kind = %held.kind,
            base_key = %held.base_key,
            key = held.key.as_deref().unwrap_or(""),
            token = %publisher.name,
            result,
            reason = reason.unwrap_or(""),
            "job released"
        );
        Ok(LeaseReleased {
            job,
            kind: held.kind,
            base_key: held.base_key,
            key: held.key,
            result: result.to_string(),
        })
    }

    /// `GET jobs`: the open misses by tuple and whether a worker asked for that tuple within
    /// [`WORKER_WINDOW_SECONDS`], the workers seen, and the live leases. For builders' tokens
    /// (as `GET misses`); it shows no compile-env values.
    pub fn job_listing(&self, publisher: &Publisher) -> Result<JobListing, Refusal> {
        self.check_builder(publisher)?;
        self.store.expire_if_due(&self.misses)?;
        let store = &self.store;
        let err = store.db_err();
        let now = now_ms();
        let since = now / 1000 - WORKER_WINDOW_SECONDS;
        let db = store.db.lock();
        let listing = (|| -> rusqlite::Result<JobListing> {
            let mut workers_by_tuple: std::collections::BTreeMap<
                (String, String, String, String),
                Vec<String>,
            > = Default::default();
            let mut seen: std::collections::BTreeMap<(String, String, String), WorkerSeen> =
                Default::default();
            {
                let mut stmt = db.prepare(
                    "SELECT kind, worker, token_name, otp_major, elixir, mix_env, target,
                        last_seen
                     FROM worker_tuples WHERE last_seen >= ?1
                     ORDER BY worker, token_name, kind, otp_major, elixir, mix_env, target",
                )?;
                let mut rows = stmt.query(params![since])?;
                while let Some(row) = rows.next()? {
                    let kind: String = row.get(0)?;
                    let kind = if kind == "audit" {
                        JobKind::Audit
                    } else {
                        JobKind::Build
                    };
                    let (worker, token): (String, String) = (row.get(1)?, row.get(2)?);
                    let tuple: (String, String, String, String) =
                        (row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?);
                    let last_seen: i64 = row.get(7)?;
                    if kind == JobKind::Build {
                        let names = workers_by_tuple.entry(tuple.clone()).or_default();
                        if !names.contains(&worker) {
                            names.push(worker.clone());
                        }
                    }
                    let entry = seen
                        .entry((worker.clone(), token.clone(), kind.as_str().to_string()))
                        .or_insert_with(|| WorkerSeen {
                            worker,
                            token,
                            kind,
                            tuples: Vec::new(),
                            last_seen,
                        });
                    entry.last_seen = entry.last_seen.max(last_seen);
                    let (otp_major, elixir, mix_env, target) = tuple;
                    match entry.tuples.iter_mut().find(|t| {
                        t.otp_major == otp_major && t.elixir == elixir && t.mix_env == mix_env
                    }) {
                        Some(existing) => existing.targets.push(target),
                        None => entry.tuples.push(LeaseTuple {
                            otp_major,
                            elixir,
                            mix_env,
                            targets: vec![target],
                        }),
                    }
                }
            }
            let mut tuples = Vec::new();
            {
                let mut stmt = db.prepare(
                    "SELECT m.otp_major, m.elixir, m.mix_env, m.target, count(*),
                        count(m.variant_key), sum(m.count), min(m.first_reported),
                        count(*) FILTER (WHERE EXISTS (SELECT 1 FROM leases l
                            WHERE l.kind = 'build' AND l.base_key = m.miss_key
                              AND l.ended_at IS NULL AND l.expires_ms > ?1))
                     FROM misses m WHERE m.closed_at IS NULL
                     GROUP BY m.otp_major, m.elixir, m.mix_env, m.target
                     ORDER BY count(*) DESC, m.otp_major, m.elixir, m.mix_env, m.target",
                )?;
                let mut rows = stmt.query(params![now])?;
                while let Some(row) = rows.next()? {
                    let tuple: (String, String, String, String) =
                        (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
                    let workers = workers_by_tuple.get(&tuple).cloned().unwrap_or_default();
                    let (otp_major, elixir, mix_env, target) = tuple;
                    tuples.push(TupleDemand {
                        otp_major,
                        elixir,
                        mix_env,
                        target,
                        open_misses: row.get::<_, i64>(4)? as u64,
                        variants: row.get::<_, i64>(5)? as u64,
                        reports: row.get::<_, i64>(6)? as u64,
                        oldest_reported: row.get(7)?,
                        leased: row.get::<_, i64>(8)? as u64,
                        served: !workers.is_empty(),
                        workers,
                    });
                }
            }
            let mut jobs = Vec::new();
            {
                let mut stmt = db.prepare(
                    "SELECT l.job, l.kind, l.base_key, l.key, l.worker, l.token_name,
                        l.leased_at, l.expires_ms,
                        coalesce(mi.package, ma.package), coalesce(mi.version, ma.version),
                        coalesce(mi.otp_major, ma.otp_major), coalesce(mi.elixir, ma.elixir),
                        coalesce(mi.mix_env, ma.mix_env), coalesce(mi.target, ma.target)
                     FROM leases l
                     LEFT JOIN misses mi ON l.kind = 'build' AND mi.miss_key = l.base_key
                     LEFT JOIN manifests ma ON l.kind = 'audit' AND ma.key = l.key
                     WHERE l.ended_at IS NULL AND l.expires_ms > ?1
                       AND (mi.closed_at IS NULL AND mi.miss_key IS NOT NULL
                            OR ma.key IS NOT NULL)
                     ORDER BY l.job",
                )?;
                let mut rows = stmt.query(params![now])?;
                while let Some(row) = rows.next()? {
                    let kind: String = row.get(1)?;
                    jobs.push(LiveJob {
                        job: row.get::<_, i64>(0)? as u64,
                        kind: if kind == "audit" {
                            JobKind::Audit
                        } else {
                            JobKind::Build
                        },
                        base_key: row.get(2)?,
                        key: row.get(3)?,
                        worker: row.get(4)?,
                        token: row.get(5)?,
                        leased_at: row.get(6)?,
                        lease_expires_at: expires_at(row.get(7)?),
                        package: row.get::<_, Option<String>>(8)?.unwrap_or_default(),
                        version: row.get::<_, Option<String>>(9)?.unwrap_or_default(),
                        otp_major: row.get::<_, Option<String>>(10)?.unwrap_or_default(),
                        elixir: row.get::<_, Option<String>>(11)?.unwrap_or_default(),
                        mix_env: row.get::<_, Option<String>>(12)?.unwrap_or_default(),
                        target: row.get::<_, Option<String>>(13)?.unwrap_or_default(),
                    });
                }
            }
            Ok(JobListing {
                window_seconds: WORKER_WINDOW_SECONDS as u64,
                tuples,
                workers: seen.into_values().collect(),
                jobs,
            })
        })()
        .map_err(&err)?;
        Ok(listing)
    }

    /// The auditor key id an audit lease of `publisher`'s token is for: one of the keys it may
    /// post verdicts with (`403` for a token that may post none), the one `request` names.
    fn lease_auditor(
        &self,
        request: &LeaseRequest,
        publisher: &Publisher,
    ) -> Result<String, Refusal> {
        let ids: Vec<String> = self
            .verdict_keys(publisher)?
            .iter()
            .map(ArtifactPublicKey::key_id)
            .collect();
        match &request.auditor {
            Some(id) if ids.contains(id) => Ok(id.clone()),
            Some(id) => Err(Refusal::new(
                403,
                format!(
                    "auditor {id:?} is not a key token {:?} may post verdicts with ({}): lease \
                     with the key id of the key the worker signs with",
                    publisher.name,
                    ids.join(", ")
                ),
            )),
            None if ids.len() == 1 => Ok(ids[0].clone()),
            None => Err(Refusal::new(
                422,
                format!(
                    "token {:?} may post verdicts signed by any of {} auditor keys: name the one \
                     this worker signs with in `auditor` (its key id, `ed25519:…`)",
                    publisher.name,
                    ids.len()
                ),
            )),
        }
    }

    /// Whether `publisher`'s token may (still) work on a job of `kind`: publish builds, or
    /// post verdicts (`403` otherwise).
    fn may_work_on(&self, kind: JobKind, publisher: &Publisher) -> Result<(), Refusal> {
        match kind {
            JobKind::Build => self.effective_keys()?.builder_keys_for(publisher).map(drop),
            JobKind::Audit => self.verdict_keys(publisher).map(drop),
        }
    }
}

/// SQL: the row aliased `m` (its `otp_major`, `elixir`, `mix_env`, `target`) is of one of the
/// tuples in the JSON array bound to `?1`.
const OF_A_TUPLE: &str = "EXISTS (SELECT 1 FROM json_each(?1) t
    WHERE json_extract(t.value, '$.otp_major') = m.otp_major
      AND json_extract(t.value, '$.elixir') = m.elixir
      AND json_extract(t.value, '$.mix_env') = m.mix_env
      AND m.target IN (SELECT value FROM json_each(t.value, '$.targets')))";

/// Records that `worker` (with `token`'s token) asked for each of `request`'s tuples now.
fn record_worker_tuples(
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
fn select_miss(
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
/// v1 key); fewest audits first, then oldest published, then by key. `auditor_ids` are the mirror's auditor keys, whose signatures count as audits.
fn select_audit(
    tx: &Transaction<'_>,
    request: &LeaseRequest,
    auditor: &str,
    publisher: &Publisher,
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
                publisher.name,
                request.fewer_than
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
fn insert_lease(
    tx: &Transaction<'_>,
    job: &Job,
    request: &LeaseRequest,
    publisher: &Publisher,
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
            publisher.name,
            lease_ms,
            now / 1000,
            now + lease_ms
        ],
    )?;
    Ok(tx.last_insert_rowid() as u64)
}

/// A lease row as a heartbeat or a release sees it.
struct HeldJob {
    kind: JobKind,
    base_key: String,
    /// An audit job's build key.
    key: Option<String>,
    lease_ms: i64,
    /// `lost`, `released` or `failed`.
    ended: Option<String>,
    /// Set when the job is closed: what closed it.
    closed_by: Option<String>,
}

/// The lease `job`, if it exists and `publisher`'s token leased it (`404`, `403` otherwise).
fn held_job(
    store: &ArtifactStore,
    tx: &Transaction<'_>,
    job: u64,
    publisher: &Publisher,
) -> Result<Result<HeldJob, Refusal>, ArtifactStoreError> {
    let row: Option<(String, HeldJob)> = tx
        .query_row(
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
                let kind: String = row.get(0)?;
                Ok((
                    row.get(3)?,
                    HeldJob {
                        kind: if kind == "audit" {
                            JobKind::Audit
                        } else {
                            JobKind::Build
                        },
                        base_key: row.get(1)?,
                        key: row.get(2)?,
                        lease_ms: row.get(4)?,
                        ended: row.get(5)?,
                        closed_by: row.get(6)?,
                    },
                ))
            },
        )
        .optional()
        .map_err(store.db_err())?;
    let Some((token_name, held)) = row else {
        return Ok(Err(Refusal::new(
            404,
            format!("no job {job} on this mirror: lease one with POST /precomp/v1/jobs/lease"),
        )));
    };
    if token_name != publisher.name {
        return Ok(Err(Refusal::new(
            403,
            format!(
                "job {job} was leased with token {token_name:?}, not {:?}: only the token that \
                 leased a job renews or releases it",
                publisher.name
            ),
        )));
    }
    Ok(Ok(held))
}

fn ended_message(job: u64, ended: &str) -> String {
    match ended {
        "lost" => format!(
            "job {job}: the lease expired and the job was leased again; stop working on it \
             (heartbeat more often than the lease lasts)"
        ),
        _ => format!("job {job} was released; lease a new job"),
    }
}

fn check_lease_seconds(seconds: u64) -> Result<(), Refusal> {
    if !(MIN_LEASE_SECONDS..=MAX_LEASE_SECONDS).contains(&seconds) {
        return Err(Refusal::new(
            422,
            format!(
                "lease_seconds {seconds} is not within {MIN_LEASE_SECONDS}..={MAX_LEASE_SECONDS}"
            ),
        ));
    }
    Ok(())
}

fn check_lease_request(request: &LeaseRequest) -> Result<(), Refusal> {
    if !valid_token_name(&request.worker) {
        return Err(Refusal::new(
            422,
            format!(
                "worker {:?} must be 1 to 64 letters, digits, `-`, `_` and `.`, not starting \
                 with `.`",
                request.worker
            ),
        ));
    }
    if request.tuples.len() > MAX_LEASE_TUPLES {
        return Err(Refusal::new(
            422,
            format!(
                "tuples must list at most {MAX_LEASE_TUPLES} tuples (OTP major, Elixir, Mix env, \
                 targets)"
            ),
        ));
    }
    for tuple in request.all_tuples() {
        check_tuple(&tuple)?;
    }
    if request.kind == JobKind::Audit {
        if !(1..=MAX_FEWER_THAN).contains(&request.fewer_than) {
            return Err(Refusal::new(
                422,
                format!(
                    "fewer_than {} is not within 1..={MAX_FEWER_THAN} (1: builds nobody audited)",
                    request.fewer_than
                ),
            ));
        }
        if let Some(auditor) = &request.auditor {
            if auditor.is_empty()
                || auditor.len() > MAX_AUDITOR_ID
                || auditor.chars().any(char::is_control)
            {
                return Err(Refusal::new(
                    422,
                    format!("auditor must be a key id (`ed25519:…`), 1 to {MAX_AUDITOR_ID} bytes"),
                ));
            }
        }
    }
    check_lease_seconds(request.lease_seconds)
}

/// One tuple of a lease request: `otp_major`, `elixir`, `mix_env` 1 to 64 characters on one
/// line, 1 to 16 targets, each `any` or ARCH-LIBC.
fn check_tuple(tuple: &LeaseTuple) -> Result<(), Refusal> {
    for (field, value) in [
        ("otp_major", &tuple.otp_major),
        ("elixir", &tuple.elixir),
        ("mix_env", &tuple.mix_env),
    ] {
        if value.is_empty() || value.len() > 64 || value.chars().any(char::is_control) {
            return Err(Refusal::new(
                422,
                format!("{field} must be 1 to 64 characters on one line"),
            ));
        }
    }
    if tuple.targets.is_empty() || tuple.targets.len() > MAX_TARGETS {
        return Err(Refusal::new(
            422,
            format!("targets must list 1 to {MAX_TARGETS} targets (`any`, ARCH-LIBC)"),
        ));
    }
    for target in &tuple.targets {
        let valid = target == "any"
            || (target.len() <= 64
                && target
                    .split_once('-')
                    .is_some_and(|(a, l)| !a.is_empty() && !l.is_empty())
                && target
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        if !valid {
            return Err(Refusal::new(
                422,
                format!("target {target:?} is neither `any` nor ARCH-LIBC"),
            ));
        }
    }
    Ok(())
}

/// The release's reason, checked: one line of at most [`MAX_RELEASE_REASON`] bytes.
fn check_release_request(request: &ReleaseRequest) -> Result<Option<&str>, Refusal> {
    let reason = request.reason.as_deref().filter(|r| !r.is_empty());
    if let Some(reason) = reason {
        if reason.len() > MAX_RELEASE_REASON {
            return Err(Refusal::new(
                413,
                format!(
                    "the reason is {} bytes, over the limit of {MAX_RELEASE_REASON}: send its \
                     first line, cut",
                    reason.len()
                ),
            ));
        }
        if reason.chars().any(char::is_control) {
            return Err(Refusal::new(
                422,
                "the reason must be one line of text (no control characters)",
            ));
        }
    }
    Ok(reason)
}

/// `values` as a JSON array, for `json_each(?)`.
fn json_list(values: &[String]) -> String {
    serde_json::to_string(values).expect("strings serialise")
}

/// Unix seconds at or after `ms`.
fn expires_at(ms: i64) -> i64 {
    (ms + 999) / 1000
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::ManifestRecord;
    use crate::ArtifactsConfig;
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

        fn sql(&self, sql: &str, params: impl rusqlite::Params) {
            let db = self.artifacts.store().db.lock();
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
