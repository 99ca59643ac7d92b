//! `precomp worker`: the flags of a build or audit worker, and its printing. The worker
//! itself (leases, heartbeats, cancelling, builds, audits, reports) is the `precomp-worker`
//! crate ([`precomp_worker::Worker`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use precomp_builder::Cancel;
use precomp_proto::api::JobKind;
use precomp_sandbox::Sandbox;
use precomp_worker::{JobReport, JobStatus, Observer, RunEnd, Worker, WorkerConfig};

use super::build::{load_signing_key, trusted_keys, Reporter};
use crate::Context;

/// Runs a worker: leases a job from the mirror, works on it, reports the signed result with
/// its token, and leases the next.
///
/// Build jobs (the default): the most-reported open miss this toolchain can build, built in
/// the sandbox (its closure from the miss's lock, sources from --mirror), signed with --key,
/// published (or its failure recorded with its log). The token must be able to publish
/// (`precomp token create --key FILE.pub`).
///
/// Audit jobs (--audit): the published build for this toolchain with the fewest audits, fewer
/// than --fewer-than, that this auditor has not audited, rebuilt in a fresh directory under
/// DATA/audit and compared as `precomp audit` does: a match is countersigned and a `match`
/// verdict posted, a mismatch posts a verdict naming what differs (the mirror flags the
/// build). --key is the auditor's key; the token must be bound to it (or to none, with the key
/// among the mirror's --auditor-key).
///
/// While a job runs, its lease is renewed every third of --lease-seconds; a worker that stops
/// renewing loses the job to another worker when the lease expires, and a worker whose
/// renewal is refused (lost, or closed by another result) stops working on it at once.
/// SIGTERM or SIGINT stops the job's builds, releases the job for another worker and exits 0.
#[derive(Args)]
pub struct WorkerArgs {
    /// The precomp mirror: its artifact API hands out the jobs, its Hex repository the sources.
    #[arg(long, env = "PRECOMP_MIRROR")]
    mirror: String,
    /// The worker's token (`precomp token create`).
    #[arg(long, env = "PRECOMP_TOKEN", hide_env_values = true)]
    token: String,
    /// The ed25519 signing key (`precomp keys generate`): the builder's, or with --audit the
    /// auditor's; never visible inside the sandbox.
    #[arg(long, env = "PRECOMP_BUILDER_KEY")]
    key: PathBuf,
    /// Audit published builds instead of building misses.
    #[arg(long)]
    audit: bool,
    /// With --audit: only builds fewer than N distinct auditors have audited (countersigned or
    /// posted a verdict on), 1 to 64; 1 is builds nobody audited.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "audit")]
    fewer_than: u32,
    /// A toolchain: `host`, an image id, a digest prefix, a suite (bookworm, trixie) or the
    /// reference an image was imported from. Repeat for several: jobs for the OTP major and
    /// Elixir of any of them are leased, each done with its own (the first given, when two
    /// have the same) [default: host].
    #[arg(long = "toolchain", value_name = "ID")]
    toolchains_given: Vec<String>,
    /// Every toolchain the store holds (`precomp toolchain list`: host and each image), as if
    /// each were given with --toolchain (after those given).
    #[arg(long)]
    all_toolchains: bool,
    /// Where toolchain images are stored [default: the data directory].
    #[arg(long, env = "PRECOMP_TOOLCHAINS")]
    toolchains: Option<PathBuf>,
    /// The Mix env of the misses to build (of the builds to audit, with --audit).
    #[arg(long, default_value = "prod")]
    mix_env: String,
    /// How long a lease lasts without a heartbeat (2 to 3600).
    #[arg(long, default_value_t = 600)]
    lease_seconds: u64,
    /// Do one job (or find none) and exit.
    #[arg(long)]
    once: bool,
    /// How long to wait before asking again when there is no job or the mirror failed.
    #[arg(long, default_value_t = 10)]
    poll_seconds: u64,
    /// One JSON object per job on stdout: job, kind, package, version, outcome, and for
    /// builds base_key, key (when built), lease_lost, results (as `precomp build --json`)
    /// with outcome `published`, `failed`, `lease_lost` or `error`; for audits key and audit
    /// (as `precomp audit --json`) with outcome `match`, `mismatch`, `failed`, `skipped`,
    /// `lease_lost` or `error`. `{"job": null, "outcome": "no_jobs"}` when --once finds none.
    #[arg(long)]
    json: bool,
    /// The worker's name, shown to the mirror's operator [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Also trust stored builds signed by this public key for reuse (repeatable; builds only).
    #[arg(long = "trust", value_name = "FILE.pub", conflicts_with = "audit")]
    trust: Vec<PathBuf>,
    /// Builds at a time within a job [default: the number of CPUs].
    #[arg(long)]
    jobs: Option<usize>,
    /// Where build projects are made [default: as `precomp build`; builds only: audits work
    /// in DATA/audit].
    #[arg(long, conflicts_with = "audit")]
    work_dir: Option<PathBuf>,
}

pub fn run(context: &Context, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let kind = if args.audit {
        JobKind::Audit
    } else {
        JobKind::Build
    };
    let mut config = WorkerConfig::new(&args.mirror, &args.token, kind, context.data());
    config.fewer_than = args.fewer_than;
    config.mix_env = args.mix_env.clone();
    config.lease_seconds = args.lease_seconds;
    config.once = args.once;
    config.poll = Duration::from_secs(args.poll_seconds);
    if let Some(name) = &args.name {
        config.name = name.clone();
    }
    if let Some(jobs) = args.jobs {
        config.jobs = jobs;
    }
    config.work_dir = args.work_dir.clone();
    config.check()?;
    let shutdown = Cancel::new();
    precomp_worker::signals::cancel_on_signals(&shutdown, |text| eprintln!("{text}"))?;
    let key = load_signing_key(&args.key)?;
    // The worker's own key is always trusted for reuse; --trust adds others.
    config.trust = trusted_keys(&key, &args.trust)?.split_off(1);
    let sandbox = Sandbox::new()?;
    let (toolchains, warnings) = precomp_worker::toolchains::worker_toolchains(
        &config.data,
        args.toolchains.as_deref(),
        &args.toolchains_given,
        args.all_toolchains,
        &sandbox,
    )?;
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    let printer = Arc::new(Printer {
        json: args.json,
        builds: Reporter { json: args.json },
        // Audit progress and the result line go to stderr; with --json, stdout has the
        // job's line.
        audits: super::audit::Reporter { json: false },
    });
    let worker = Worker::new(config, &sandbox, toolchains, key, shutdown, printer)?;
    Ok(match worker.run()? {
        RunEnd::Stopped | RunEnd::NoJobs | RunEnd::Job(JobStatus::Done) => ExitCode::SUCCESS,
        RunEnd::Job(JobStatus::Failed) => ExitCode::FAILURE,
        RunEnd::Job(JobStatus::Mismatch) => ExitCode::from(super::audit::MISMATCH),
    })
}

/// Prints a worker's progress on stderr and each job's line on stdout (JSON with --json).
struct Printer {
    json: bool,
    builds: Reporter,
    audits: super::audit::Reporter,
}

impl Observer for Printer {
    fn note(&self, text: &str) {
        eprintln!("{text}");
    }

    fn report(&self, report: &JobReport) {
        if self.json {
            match serde_json::to_string(&report.line) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("error: the job's JSON line: {e}"),
            }
        } else {
            println!("{}", report.summary);
        }
    }

    fn builds(&self) -> &dyn precomp_builder::run::Progress {
        &self.builds
    }

    fn audits(&self) -> &dyn precomp_ops::audit::Progress {
        &self.audits
    }
}
