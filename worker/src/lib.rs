//! Workers on any machine (`precomp worker`): a [`Worker`] leases jobs from the mirror over
//! HTTP, renews the lease while it works ([`heartbeat`]), and reports signed results with its
//! token:
//!
//! - build jobs ([`build_jobs`]): open misses, built in the sandbox as `precomp build
//!   --missing` would, published (or their failure recorded);
//! - audit jobs ([`audit_jobs`]): published builds fewer than N auditors have audited,
//!   rebuilt and compared as `precomp audit` does; the match (countersignature and verdict)
//!   or mismatch (verdict) is posted, a failed rebuild released as `failed`.
//!
//! A worker may hold several toolchains ([`toolchains`]): its lease request lists the tuple
//! (OTP major, Elixir, Mix env, targets) of each, the mirror hands out a job of any of them,
//! and the job is done with the toolchain of its tuple.
//!
//! A job's work is cancelled (its sandboxes killed, nothing stored or reported) when the
//! mirror refuses a heartbeat (the lease was lost, or the job closed by someone else's
//! result) and when the worker's shutdown handle is cancelled ([`signals`]: SIGTERM or
//! SIGINT); on shutdown the job is released for another worker and [`Worker::run`] returns.
//!
//! Also here, because `precomp build` shares them: publishing a lock's builds and closing
//! the miss they were built for ([`publish`]), config variants ([`variants`]), and the
//! `--json` lines of both commands as serde types ([`output`]).
//!
//! The library prints nothing: progress and warnings go to an [`Observer`], each job's result
//! is a [`JobReport`] (its `--json` line and a summary for people). The CLI
//! (`precomp/src/commands/worker.rs`) parses arguments and prints.

pub mod audit_jobs;
pub mod build_jobs;
pub mod error;
pub mod heartbeat;
pub mod output;
pub mod publish;
pub mod signals;
pub mod toolchains;
pub mod variants;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use precomp_builder::Cancel;
use precomp_http::artifacts::ArtifactClient;
use precomp_proto::api::{
    JobKind, Lease, LeaseRequest, LeaseTuple, MAX_FEWER_THAN, MAX_LEASE_SECONDS, MIN_LEASE_SECONDS,
};
use precomp_proto::manifest::{ArtifactPublicKey, ArtifactSigningKey};
use precomp_sandbox::toolchain::Toolchain;
use precomp_sandbox::Sandbox;

pub use error::{chain, WorkerError};
pub use output::{JobLine, JobReport};
pub use toolchains::WorkerToolchain;

/// What a worker is told (`precomp worker`'s flags).
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The mirror: its artifact API hands out the jobs, its Hex repository the sources.
    pub mirror: String,
    /// The worker's token.
    pub token: String,
    /// Build misses or audit builds.
    pub kind: JobKind,
    /// Audits: only builds fewer than this many distinct auditors have audited (1 to
    /// [`MAX_FEWER_THAN`]).
    pub fewer_than: u32,
    /// The Mix env of the misses to build (of the builds to audit).
    pub mix_env: String,
    /// How long a lease lasts without a heartbeat ([`MIN_LEASE_SECONDS`] to
    /// [`MAX_LEASE_SECONDS`]).
    pub lease_seconds: u64,
    /// Do one job (or find none) and return.
    pub once: bool,
    /// How long to wait before asking again when there is no job or the mirror failed.
    pub poll: Duration,
    /// The worker's name, shown to the mirror's operator ([`host_name`] by default).
    pub name: String,
    /// Builds at a time within a job.
    pub jobs: usize,
    /// The data directory: builds in DATA/builds, audits in DATA/audit.
    pub data: PathBuf,
    /// Builds: other keys whose stored builds are reused (the worker's own always are).
    pub trust: Vec<ArtifactPublicKey>,
    /// Builds: where build projects are made (`publish::work_root`).
    pub work_dir: Option<PathBuf>,
}

impl WorkerConfig {
    /// A build worker's config with the defaults of `precomp worker`.
    pub fn new(mirror: &str, token: &str, kind: JobKind, data: PathBuf) -> WorkerConfig {
        WorkerConfig {
            mirror: mirror.to_string(),
            token: token.to_string(),
            kind,
            fewer_than: 1,
            mix_env: "prod".into(),
            lease_seconds: 600,
            once: false,
            poll: Duration::from_secs(10),
            name: host_name(),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            data,
            trust: Vec::new(),
            work_dir: None,
        }
    }

    /// Refuses values the mirror would refuse, naming the flag.
    pub fn check(&self) -> error::Result<()> {
        if !(MIN_LEASE_SECONDS..=MAX_LEASE_SECONDS).contains(&self.lease_seconds) {
            return Err(WorkerError::LeaseSeconds {
                given: self.lease_seconds,
            });
        }
        if !(1..=MAX_FEWER_THAN).contains(&self.fewer_than) {
            return Err(WorkerError::FewerThan {
                given: self.fewer_than,
            });
        }
        Ok(())
    }
}

/// Where a worker's progress, warnings and results go (the CLI prints them).
pub trait Observer: Send + Sync {
    /// Progress or a warning, one line for people (`warning: …` for warnings).
    fn note(&self, text: &str);
    /// A job's result, or that `once` found none.
    fn report(&self, report: &JobReport);
    /// Progress of a build job's packages.
    fn builds(&self) -> &dyn precomp_builder::run::Progress {
        &()
    }
    /// Progress of an audit job's rebuild.
    fn audits(&self) -> &dyn precomp_ops::audit::Progress {
        &()
    }
}

/// How a job ended, for an exit status: `precomp worker --once` exits 0, 1 or 2 (a
/// mismatch, as `precomp audit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// Its result was reported (a build, a recorded failure, a match).
    Done,
    /// Not reported, or the build failed to be reported; or cancelled.
    Failed,
    /// An audit whose rebuild gave other bytes (the verdict was posted).
    Mismatch,
}

/// Why [`Worker::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The shutdown handle was cancelled (between jobs or during one, which was released).
    Stopped,
    /// `once`: there was no job.
    NoJobs,
    /// `once`: the job's status.
    Job(JobStatus),
}

/// A worker: its config, sandbox, toolchains, signing key and mirror client.
pub struct Worker<'a> {
    pub config: WorkerConfig,
    pub sandbox: &'a Sandbox,
    /// One per tuple, in the order given ([`toolchains::worker_toolchains`]).
    pub toolchains: Vec<WorkerToolchain>,
    /// The builder's key, or the auditor's for audits.
    pub key: ArtifactSigningKey,
    /// Cancelled to stop (SIGTERM, SIGINT: [`signals::cancel_on_signals`]); each job works
    /// under a child of it.
    pub shutdown: Cancel,
    pub observer: Arc<dyn Observer>,
    runtime: tokio::runtime::Runtime,
    client: ArtifactClient,
}

/// One kind of job: what the lease loop hands each leased job to.
trait Jobs {
    /// Works on one leased job and reports its result to the mirror (and the observer).
    /// `Err` when the job could not be worked on here: the loop releases it for another
    /// worker.
    fn work_on(&self, lease: &Lease) -> error::Result<JobStatus>;
}

impl<'a> Worker<'a> {
    /// A worker; `toolchains` must not be empty.
    pub fn new(
        config: WorkerConfig,
        sandbox: &'a Sandbox,
        toolchains: Vec<WorkerToolchain>,
        key: ArtifactSigningKey,
        shutdown: Cancel,
        observer: Arc<dyn Observer>,
    ) -> error::Result<Worker<'a>> {
        config.check()?;
        if toolchains.is_empty() {
            return Err(WorkerError::NoToolchains);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| WorkerError::Start {
                what: "the HTTP client",
                source,
            })?;
        let client =
            ArtifactClient::new(&config.mirror, Some(config.token.clone())).map_err(|source| {
                WorkerError::MirrorUrl {
                    url: config.mirror.clone(),
                    source,
                }
            })?;
        Ok(Worker {
            config,
            sandbox,
            toolchains,
            key,
            shutdown,
            observer,
            runtime,
            client,
        })
    }

    /// Leases jobs and works on them until `once` has done one, or the shutdown handle is
    /// cancelled. `Err` with `once` when the mirror could not be asked or the job could not
    /// be worked on (it was released).
    pub fn run(&self) -> error::Result<RunEnd> {
        let request = self.lease_request();
        match self.config.kind {
            JobKind::Build => build_jobs::run(self, &request),
            JobKind::Audit => audit_jobs::run(self, &request),
        }
    }

    /// The lease request of this worker: every tuple in `tuples`, and the first one at the top
    /// level too, for mirrors that predate `tuples` (they lease for it alone).
    pub fn lease_request(&self) -> LeaseRequest {
        let config = &self.config;
        let tuples: Vec<LeaseTuple> = self
            .toolchains
            .iter()
            .map(|t| LeaseTuple {
                otp_major: t.toolchain.otp.clone(),
                elixir: t.toolchain.elixir.clone(),
                mix_env: config.mix_env.clone(),
                targets: vec!["any".to_string(), t.native.clone()],
            })
            .collect();
        let first = tuples[0].clone();
        LeaseRequest {
            kind: config.kind,
            worker: config.name.clone(),
            otp_major: first.otp_major,
            elixir: first.elixir,
            mix_env: first.mix_env,
            targets: first.targets,
            tuples: if tuples.len() > 1 { tuples } else { Vec::new() },
            lease_seconds: config.lease_seconds,
            fewer_than: config.fewer_than,
            auditor: (config.kind == JobKind::Audit).then(|| self.key.public_key().key_id()),
            // An auditor rebuilds with this precomp's recipe: only builds of it compare.
            recipe: (config.kind == JobKind::Audit).then(|| precomp_builder::RECIPE.to_string()),
        }
    }

    /// The mirror's artifact API, with the worker's token.
    pub fn client(&self) -> &ArtifactClient {
        &self.client
    }

    fn note(&self, text: &str) {
        self.observer.note(text);
    }

    /// The toolchain jobs of this tuple are done with: the first one given that has it.
    fn toolchain_for(&self, otp_major: &str, elixir: &str, target: &str) -> Option<&Toolchain> {
        self.toolchains
            .iter()
            .find(|t| t.builds(otp_major, elixir, target))
            .map(|t| &t.toolchain)
    }

    /// After a cancelled job: releases it when the worker is shutting down (another worker
    /// takes it), leaves it when the mirror ended the lease. The job's outcome.
    fn give_back(&self, job: u64) -> &'static str {
        if !self.shutdown.is_cancelled() {
            return "lease_lost";
        }
        match self.runtime.block_on(self.client.release(job)) {
            Ok(_) => self.note(&format!("job {job}: released for another worker")),
            Err(e) => self.note(&format!("warning: releasing job {job}: {e}")),
        }
        "cancelled"
    }

    /// Renews `job`'s lease while it runs, cancelling `cancel` when the mirror refuses.
    fn heartbeat(
        &self,
        job: u64,
        lease_seconds: u64,
        cancel: Cancel,
    ) -> error::Result<heartbeat::Heartbeat> {
        heartbeat::Heartbeat::start(
            self.client.base_url(),
            &self.config.token,
            job,
            lease_seconds,
            cancel,
            self.observer.clone(),
        )
    }

    /// Leases jobs of `request`'s kind and hands each to `jobs`, until `once` has done one.
    fn lease_loop(&self, request: &LeaseRequest, jobs: &dyn Jobs) -> error::Result<RunEnd> {
        let (config, client, runtime) = (&self.config, &self.client, &self.runtime);
        let poll = config.poll.max(Duration::from_secs(1));
        let what = describe(request);
        self.note(&format!(
            "worker {} leasing {} jobs from {} ({what})",
            request.worker,
            request.kind,
            client.base_url(),
        ));
        let stopped = || {
            let reason = self.shutdown.reason().unwrap_or_default();
            self.note(&format!("worker {} stopped: {reason}", request.worker));
            Ok(RunEnd::Stopped)
        };
        loop {
            if self.shutdown.is_cancelled() {
                return stopped();
            }
            let lease = match runtime.block_on(client.lease(request)) {
                Ok(lease) => lease,
                Err(source) if config.once => return Err(WorkerError::Lease { source }),
                Err(e) => {
                    self.note(&format!(
                        "warning: leasing a job: {e}; asking again in {poll:?}"
                    ));
                    pause(poll, &self.shutdown);
                    continue;
                }
            };
            let Some(lease) = lease else {
                if config.once {
                    let summary = match request.kind {
                        JobKind::Build => format!("no open misses for this worker ({what})"),
                        JobKind::Audit => format!("no builds to audit for this worker ({what})"),
                    };
                    self.observer.report(&JobReport {
                        line: JobLine::NoJobs(output::NoJobsLine::new(request.kind)),
                        summary,
                    });
                    return Ok(RunEnd::NoJobs);
                }
                pause(poll, &self.shutdown);
                continue;
            };
            if self.shutdown.is_cancelled() {
                // Leased as the signal came: not started, so back to the queue.
                self.give_back(lease.job);
                return stopped();
            }
            match jobs.work_on(&lease) {
                Ok(status) if config.once => return Ok(RunEnd::Job(status)),
                Ok(_) if self.shutdown.is_cancelled() => return stopped(),
                Ok(_) => {}
                Err(e) => {
                    // Give the job back: another worker may do it.
                    if let Err(release) = runtime.block_on(client.release(lease.job)) {
                        self.note(&format!("warning: releasing job {}: {release}", lease.job));
                    }
                    if config.once {
                        return Err(WorkerError::Job {
                            job: lease.job,
                            source: Box::new(e),
                        });
                    }
                    self.note(&format!(
                        "error: job {}: {}; released it",
                        lease.job,
                        chain(&e)
                    ));
                    pause(poll, &self.shutdown);
                }
            }
        }
    }
}

/// What a worker leases, for people: `OTP 25, Elixir 1.14.0, mix env prod, targets any, …`,
/// one such tuple after the other (`; `).
pub fn describe(request: &LeaseRequest) -> String {
    let mut text = request
        .all_tuples()
        .iter()
        .map(|t| {
            format!(
                "OTP {}, Elixir {}, mix env {}, targets {}",
                t.otp_major,
                t.elixir,
                t.mix_env,
                t.targets.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    if request.kind == JobKind::Audit {
        text.push_str(&format!(
            ", fewer than {} audit{}",
            request.fewer_than,
            if request.fewer_than == 1 { "" } else { "s" }
        ));
    }
    text
}

/// Sleeps for `duration`, or until `shutdown` is cancelled.
fn pause(duration: Duration, shutdown: &Cancel) {
    let until = std::time::Instant::now() + duration;
    while !shutdown.is_cancelled() {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// The host's name as a worker name (letters, digits, `-`, `_`, `.`; at most 64).
pub fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let name = name.trim_start_matches('.').to_string();
    if name.is_empty() {
        "worker".to_string()
    } else {
        name
    }
}
