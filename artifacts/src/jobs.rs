//! Jobs leased to workers on other machines: `POST /precomp/v1/jobs/lease`,
//! `POST /precomp/v1/jobs/ID/heartbeat`, `POST /precomp/v1/jobs/ID/release`, `GET jobs`,
//! with a token. This side checks requests and tokens; the leases themselves are the
//! metadata store's ([`MetadataStore::lease_job`] and the methods beside it; the rules are
//! in `store/jobs.rs`'s docs). Times are the store's milliseconds, from [`now_ms`].

use precomp_proto::manifest::ArtifactPublicKey;

use crate::api::{
    HeartbeatRequest, JobKind, JobListing, Lease, LeaseReleased, LeaseRenewed, LeaseRequest,
    LeaseTuple, ReleaseOutcome, ReleaseRequest, MAX_FEWER_THAN, MAX_LEASE_TUPLES,
    MAX_RELEASE_REASON,
};
use crate::store::jobs::{expires_at, Job, JobError, LeaseEnd, LeaseQuery};
use crate::store::ArtifactStoreError;
use crate::token::valid_token_name;
use crate::{Artifacts, Publisher, Refusal, MAX_LEASE_SECONDS, MIN_LEASE_SECONDS};

/// Bound on the targets one lease request names.
const MAX_TARGETS: usize = 16;

/// Bound on the `auditor` key id of a lease request.
const MAX_AUDITOR_ID: usize = 128;

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
        if request.kind == JobKind::Build {
            // Misses whose values expired are closed before one is handed out.
            self.store.expire_if_due(&self.misses)?;
        }
        let leased = self.store.lease_job(
            &LeaseQuery {
                request,
                token: &publisher.name,
                auditor: auditor.as_deref(),
                auditor_ids: &auditor_ids,
            },
            now_ms(),
        )?;
        let Some(leased) = leased else {
            return Ok(None);
        };
        let job = leased.work;
        let (package, version) = job.package_version();
        tracing::info!(
            job = leased.job,
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
            job: leased.job,
            kind: request.kind,
            lease_expires_at: expires_at(leased.expires_ms),
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
        let kind = self.held_job(job, publisher)?;
        self.may_work_on(kind, publisher)?;
        let now = now_ms();
        let renewed = self.store.renew_lease(
            job,
            &publisher.name,
            request.lease_seconds.map(|s| s as i64 * 1000),
            now,
        )?;
        Ok(LeaseRenewed {
            job,
            kind: renewed.kind,
            base_key: renewed.base_key,
            key: renewed.key,
            lease_expires_at: expires_at(now + renewed.lease_ms),
            lease_seconds: (renewed.lease_ms / 1000) as u64,
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
        let kind = self.held_job(job, publisher)?;
        self.may_work_on(kind, publisher)?;
        if kind == JobKind::Build && request.outcome == ReleaseOutcome::Failed {
            return Err(Refusal::new(
                422,
                format!(
                    "job {job} is a build job: report a failed build with POST \
                     /precomp/v1/failures (it keeps the log and closes the miss), or release \
                     it without an outcome"
                ),
            ));
        }
        let end = self
            .store
            .end_lease(job, &publisher.name, request.outcome, reason, now_ms())?;
        let result = match end {
            LeaseEnd::AlreadyReleased => "already_released",
            LeaseEnd::Ended { closed: true } => "closed",
            LeaseEnd::Ended { closed: false } => request.outcome.as_str(),
        };
        // The job's kind and keys never change once leased.
        let held = self
            .store
            .job(job)?
            .ok_or(ArtifactStoreError::from(JobError::NotFound { job }))?;
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
    /// [`crate::WORKER_WINDOW_SECONDS`], the workers seen, and the live leases. For builders'
    /// tokens (as `GET misses`); it shows no compile-env values.
    pub fn job_listing(&self, publisher: &Publisher) -> Result<JobListing, Refusal> {
        self.check_builder(publisher)?;
        self.store.expire_if_due(&self.misses)?;
        Ok(self.store.job_listing(now_ms())?)
    }

    /// The kind of the job `job`, if it exists and `publisher`'s token leased it (`404`,
    /// `403` otherwise): a job's kind and token never change, so what is authorised on it
    /// holds for the store's transaction that follows (which checks the token again).
    fn held_job(&self, job: u64, publisher: &Publisher) -> Result<JobKind, Refusal> {
        let held = self
            .store
            .job(job)?
            .ok_or(ArtifactStoreError::from(JobError::NotFound { job }))?;
        if held.token != publisher.name {
            return Err(ArtifactStoreError::from(JobError::NotYours {
                job,
                leased_by: held.token,
                token: publisher.name.clone(),
            })
            .into());
        }
        Ok(held.kind)
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

pub(crate) fn ended_message(job: u64, ended: &str) -> String {
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

/// Now, in Unix milliseconds: the clock of leases (kept in milliseconds so short leases
/// expire on time).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
