//! What can go wrong in a worker and in the publishing steps `precomp build` shares: which
//! mirror, job, package or file, and what to do next. Each error keeps what caused it as its
//! source; [`chain`] prints the whole chain on one line (as the CLI's `{:#}` does).

use std::path::PathBuf;

use precomp_builder::BuildError;
use precomp_proto::api::{JobKind, MAX_FEWER_THAN, MAX_LEASE_SECONDS, MIN_LEASE_SECONDS};

/// A worker's (or a publishing step's) failure.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("--lease-seconds {given} must be within {MIN_LEASE_SECONDS}..={MAX_LEASE_SECONDS}")]
    LeaseSeconds { given: u64 },
    #[error("--fewer-than {given} must be within 1..={MAX_FEWER_THAN} (1: builds nobody audited)")]
    FewerThan { given: u32 },
    #[error("a worker needs a toolchain")]
    NoToolchains,
    #[error("no toolchain: give --toolchain ID (or --all-toolchains with images in the store)")]
    NoToolchainGiven,
    /// A tokio runtime or thread the worker needs could not start.
    #[error("starting {what}")]
    Start {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the mirror URL {url:?}")]
    MirrorUrl {
        url: String,
        #[source]
        source: precomp_http::Error,
    },
    /// `--once`: the lease request failed (the token refused, the mirror unreachable…).
    #[error("leasing a job from the mirror")]
    Lease {
        #[source]
        source: precomp_http::Error,
    },
    /// `--once`: a leased job could not be worked on; it was released for another worker.
    #[error("job {job}")]
    Job {
        job: u64,
        #[source]
        source: Box<WorkerError>,
    },
    #[error("job {job} is a {kind} job without a miss: this worker builds misses")]
    NotABuildJob { job: u64, kind: JobKind },
    #[error(
        "job {job} is a {kind} job without a build to audit: the mirror at {mirror} does not \
         know audit jobs; upgrade it"
    )]
    NotAnAuditJob {
        job: u64,
        kind: JobKind,
        mirror: String,
    },
    /// The mirror leased a job for a tuple none of the worker's toolchains has.
    #[error(
        "the mirror leased a {what} for OTP {otp_major}, Elixir {elixir}, target {target}: \
         none of this worker's toolchains has that tuple"
    )]
    NoToolchainFor {
        what: &'static str,
        otp_major: String,
        elixir: String,
        target: String,
    },
    #[error("the build of {app} gave no result")]
    NoResult { app: String },
    /// A build's result could not be reported; the mirror still has the job open.
    #[error("reporting the result of {package} {version} to the mirror")]
    Report {
        package: String,
        version: String,
        #[source]
        source: Box<WorkerError>,
    },
    #[error("not published")]
    NotPublished,
    #[error("auditing {package} {version}")]
    Audit {
        package: String,
        version: String,
        #[source]
        source: Box<precomp_ops::audit::AuditError>,
    },
    #[error("reporting the failed audit of job {job}")]
    ReportFailedAudit {
        job: u64,
        #[source]
        source: precomp_http::Error,
    },
    #[error("recording that the miss of {package} {version} is not built")]
    RecordNotBuilt {
        package: String,
        version: String,
        #[source]
        source: precomp_http::Error,
    },
    /// A file or directory operation: `what` says which (`creating`, `reading`, …).
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making {} searchable", path.display())]
    NotSearchable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating a run directory in {}", root.display())]
    RunDir {
        root: PathBuf,
        #[source]
        source: Box<BuildError>,
    },
    #[error("a directory for the variant's config")]
    VariantDir {
        #[source]
        source: Box<BuildError>,
    },
    /// The sandbox user cannot reach the build directory (`--work-dir`, or the fallback).
    #[error("{what}")]
    WorkDir {
        what: String,
        #[source]
        source: precomp_sandbox::Error,
    },
    #[error("opening the toolchain store in {}", dir.display())]
    ToolchainStore {
        dir: PathBuf,
        #[source]
        source: precomp_sandbox::Error,
    },
    #[error("the lock reported with the miss of {package}")]
    MissLock {
        package: String,
        #[source]
        source: precomp_proto::lock::LockError,
    },
    #[error("the miss of {package} says {member}'s manager is {manager:?}; is the client newer than this worker?")]
    MissManager {
        package: String,
        member: String,
        manager: String,
    },
    /// The miss is not what the artifact service's rules accept (its report is refused).
    #[error("the miss: {message}")]
    Miss { message: String },
    #[error("the compile env the miss carries: {message}")]
    MissCompileEnv { message: String },
    #[error("{spec:?}: give the package as NAME@VERSION")]
    Spec { spec: String },
    #[error("{} locks {name} at {locked}, not {asked}", lock.display())]
    LockedVersion {
        lock: PathBuf,
        name: String,
        locked: String,
        asked: String,
    },
    #[error("{} has no Hex package {name}", lock.display())]
    NotInLock { lock: PathBuf, name: String },
    #[error("--top-level {app}: the lock has no such dependency")]
    TopLevel { app: String },
    #[error("deciding each package's manager")]
    Managers {
        #[source]
        source: Box<BuildError>,
    },
    #[error("artifact digest: the manifest's artifact_sha256 has {len} bytes, not 32")]
    ArtifactDigest { len: usize },
    #[error("listening for SIGTERM and SIGINT")]
    Signals {
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(Box<BuildError>),
    #[error(transparent)]
    Sandbox(#[from] precomp_sandbox::Error),
    #[error(transparent)]
    Mirror(#[from] precomp_http::Error),
    #[error(transparent)]
    Manifest(#[from] precomp_proto::manifest::ManifestError),
    #[error(transparent)]
    BuildKey(#[from] precomp_proto::buildkey::BuildKeyError),
}

impl From<BuildError> for WorkerError {
    fn from(error: BuildError) -> WorkerError {
        WorkerError::Build(Box::new(error))
    }
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

impl WorkerError {
    /// The mirror's HTTP error under this one, if a request to it is what failed.
    pub fn mirror_error(&self) -> Option<&precomp_http::Error> {
        let mut error: &(dyn std::error::Error + 'static) = self;
        loop {
            if let Some(http) = error.downcast_ref::<precomp_http::Error>() {
                return Some(http);
            }
            error = error.source()?;
        }
    }

    /// `map_err` helper for I/O on a path.
    pub(crate) fn io<'a>(
        what: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> WorkerError + 'a {
        move |source| WorkerError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `error` and every cause under it, on one line (`a: b: c`), as anyhow's `{:#}` prints them.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
