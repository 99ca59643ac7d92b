//! `precomp worker`: a worker on any machine. It leases jobs from the mirror over HTTP, renews
//! the lease while it works ([`Heartbeat`]), and reports signed results with its token:
//!
//! - build jobs (the default, [`build`]): open misses, built in the sandbox as `precomp build
//!   --missing` would, published (or their failure recorded);
//! - audit jobs (`--audit`, [`audit`]): published builds fewer than N auditors have audited,
//!   rebuilt and compared as `precomp audit` does; the match (countersignature and verdict)
//!   or mismatch (verdict) is posted, a failed rebuild released as `failed`.
//!
//! A worker may hold several toolchains (`--toolchain` repeated, or `--all-toolchains`): its
//! lease request lists the tuple (OTP major, Elixir, Mix env, targets) of each, the mirror
//! hands out a job of any of them, and the job is done with the toolchain of its tuple.
//!
//! A job's work is cancelled ([`Cancel`]: its sandboxes killed, nothing stored or reported)
//! when the mirror refuses a heartbeat (the lease was lost, or the job closed by someone
//! else's result) and when the worker gets SIGTERM or SIGINT; on a signal the job is released
//! for another worker and the worker exits (0). A second signal exits at once.

mod audit;
mod build;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use precomp_artifacts::{
    JobKind, Lease, LeaseRequest, LeaseTuple, MAX_FEWER_THAN, MAX_LEASE_SECONDS, MIN_LEASE_SECONDS,
};
use precomp_builder::Cancel;
use precomp_http::artifacts::ArtifactClient;
use precomp_http::Error as ClientError;
use precomp_proto::manifest::ArtifactSigningKey;
use precomp_sandbox::toolchain::Toolchain;
use precomp_sandbox::Sandbox;

use super::build::{load_signing_key, resolve_toolchain};
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

/// What every kind of job uses.
struct Common<'a> {
    args: &'a WorkerArgs,
    data: PathBuf,
    sandbox: &'a Sandbox,
    /// One per tuple, in the order given.
    toolchains: &'a [WorkerToolchain],
    key: &'a ArtifactSigningKey,
    runtime: &'a tokio::runtime::Runtime,
    client: &'a ArtifactClient,
    /// Builds at a time within a job.
    jobs: usize,
    /// Cancelled by SIGTERM or SIGINT; each job works under a child of it.
    shutdown: Cancel,
}

/// A toolchain a worker works with, and the target its native code gets.
struct WorkerToolchain {
    toolchain: Toolchain,
    native: String,
}

impl WorkerToolchain {
    /// Whether jobs of this tuple are done with it.
    fn builds(&self, otp_major: &str, elixir: &str, target: &str) -> bool {
        self.toolchain.otp == otp_major
            && self.toolchain.elixir == elixir
            && (target == "any" || target == self.native)
    }
}

impl Common<'_> {
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
            Ok(_) => eprintln!("job {job}: released for another worker"),
            Err(e) => eprintln!("warning: releasing job {job}: {e}"),
        }
        "cancelled"
    }
}

/// One kind of job: what the lease loop hands each leased job to.
trait Jobs {
    /// Works on one leased job and reports its result to the mirror; the exit status of
    /// `--once`. `Err` when the job could not be worked on here: the loop releases it for
    /// another worker.
    fn work_on(&self, lease: &Lease) -> anyhow::Result<ExitCode>;
}

pub fn run(context: &Context, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    if !(MIN_LEASE_SECONDS..=MAX_LEASE_SECONDS).contains(&args.lease_seconds) {
        bail!("--lease-seconds must be within {MIN_LEASE_SECONDS}..={MAX_LEASE_SECONDS}");
    }
    if !(1..=MAX_FEWER_THAN).contains(&args.fewer_than) {
        bail!("--fewer-than must be within 1..={MAX_FEWER_THAN} (1: builds nobody audited)");
    }
    let shutdown = Cancel::new();
    watch_shutdown_signals(&shutdown)?;
    let data = context.data();
    let key = load_signing_key(&args.key)?;
    let sandbox = Sandbox::new()?;
    let toolchains = worker_toolchains(&data, &args, &sandbox)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP client")?;
    let client = ArtifactClient::new(&args.mirror, Some(args.token.clone()))
        .with_context(|| format!("the mirror URL {:?}", args.mirror))?;
    let kind = if args.audit {
        JobKind::Audit
    } else {
        JobKind::Build
    };
    let request = lease_request(
        kind,
        args.name.clone().unwrap_or_else(host_name),
        &toolchains,
        &args,
        args.audit.then(|| key.public_key().key_id()),
    );
    let common = Common {
        args: &args,
        data,
        sandbox: &sandbox,
        toolchains: &toolchains,
        key: &key,
        runtime: &runtime,
        client: &client,
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        shutdown,
    };
    match kind {
        JobKind::Build => build::run(&common, &request),
        JobKind::Audit => audit::run(&common, &request),
    }
}

/// The toolchains `--toolchain` and `--all-toolchains` name, one per tuple: a toolchain with
/// the OTP major, Elixir and native target of one before it is left out (with a warning).
fn worker_toolchains(
    data: &std::path::Path,
    args: &WorkerArgs,
    sandbox: &Sandbox,
) -> anyhow::Result<Vec<WorkerToolchain>> {
    let mut found = Vec::new();
    let given = if args.toolchains_given.is_empty() && !args.all_toolchains {
        vec!["host".to_string()]
    } else {
        args.toolchains_given.clone()
    };
    for spec in &given {
        found.push(resolve_toolchain(
            data,
            args.toolchains.as_deref(),
            spec,
            sandbox,
        )?);
    }
    if args.all_toolchains {
        let dir = args.toolchains.as_deref().unwrap_or(data);
        let store = precomp_sandbox::toolchain::Store::open(dir)
            .with_context(|| format!("opening the toolchain store in {}", dir.display()))?;
        found.extend(store.list(sandbox)?);
    }
    let mut toolchains: Vec<WorkerToolchain> = Vec::new();
    for toolchain in found {
        let native = precomp_builder::build::native_target(&toolchain.architecture)?.to_string();
        if let Some(first) = toolchains.iter().find(|t| {
            t.toolchain.otp == toolchain.otp
                && t.toolchain.elixir == toolchain.elixir
                && t.native == native
        }) {
            if first.toolchain.id != toolchain.id {
                eprintln!(
                    "warning: toolchain {} has the tuple of {} (OTP {}, Elixir {}, {native}): \
                     its jobs are done with {}",
                    toolchain.id,
                    first.toolchain.id,
                    toolchain.otp,
                    toolchain.elixir,
                    first.toolchain.id
                );
            }
            continue;
        }
        toolchains.push(WorkerToolchain { toolchain, native });
    }
    if toolchains.is_empty() {
        bail!("no toolchain: give --toolchain ID (or --all-toolchains with images in the store)");
    }
    Ok(toolchains)
}

/// The lease request of a worker with `toolchains`: every tuple in `tuples`, and the first
/// one at the top level too, for mirrors that predate `tuples` (they lease for it alone).
fn lease_request(
    kind: JobKind,
    worker: String,
    toolchains: &[WorkerToolchain],
    args: &WorkerArgs,
    auditor: Option<String>,
) -> LeaseRequest {
    let tuples: Vec<LeaseTuple> = toolchains
        .iter()
        .map(|t| LeaseTuple {
            otp_major: t.toolchain.otp.clone(),
            elixir: t.toolchain.elixir.clone(),
            mix_env: args.mix_env.clone(),
            targets: vec!["any".to_string(), t.native.clone()],
        })
        .collect();
    let first = tuples[0].clone();
    LeaseRequest {
        kind,
        worker,
        otp_major: first.otp_major,
        elixir: first.elixir,
        mix_env: first.mix_env,
        targets: first.targets,
        tuples: if tuples.len() > 1 { tuples } else { Vec::new() },
        lease_seconds: args.lease_seconds,
        fewer_than: args.fewer_than,
        auditor,
    }
}

/// Leases jobs of `request`'s kind and hands each to `jobs`, until `--once` has done one.
fn lease_loop(
    common: &Common<'_>,
    request: &LeaseRequest,
    jobs: &dyn Jobs,
) -> anyhow::Result<ExitCode> {
    let (args, client, runtime) = (common.args, common.client, common.runtime);
    let poll = Duration::from_secs(args.poll_seconds.max(1));
    let what = describe(request);
    eprintln!(
        "worker {} leasing {} jobs from {} ({what})",
        request.worker,
        request.kind,
        client.base_url(),
    );
    let stopped = || {
        let reason = common.shutdown.reason().unwrap_or_default();
        eprintln!("worker {} stopped: {reason}", request.worker);
    };
    loop {
        if common.shutdown.is_cancelled() {
            stopped();
            return Ok(ExitCode::SUCCESS);
        }
        let lease = match runtime.block_on(client.lease(request)) {
            Ok(lease) => lease,
            Err(e) if args.once => return Err(e).context("leasing a job from the mirror"),
            Err(e) => {
                eprintln!("warning: leasing a job: {e}; asking again in {poll:?}");
                pause(poll, &common.shutdown);
                continue;
            }
        };
        let Some(lease) = lease else {
            if args.once {
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"job": null, "kind": request.kind, "outcome": "no_jobs"})
                    );
                } else {
                    match request.kind {
                        JobKind::Build => println!("no open misses for this worker ({what})"),
                        JobKind::Audit => println!("no builds to audit for this worker ({what})"),
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            pause(poll, &common.shutdown);
            continue;
        };
        if common.shutdown.is_cancelled() {
            // Leased as the signal came: not started, so back to the queue.
            common.give_back(lease.job);
            stopped();
            return Ok(ExitCode::SUCCESS);
        }
        match jobs.work_on(&lease) {
            Ok(status) if args.once => return Ok(status),
            Ok(_) if common.shutdown.is_cancelled() => {
                stopped();
                return Ok(ExitCode::SUCCESS);
            }
            Ok(_) => {}
            Err(e) => {
                // Give the job back: another worker may do it.
                if let Err(release) = runtime.block_on(client.release(lease.job)) {
                    eprintln!("warning: releasing job {}: {release}", lease.job);
                }
                if args.once {
                    return Err(e.context(format!("job {}", lease.job)));
                }
                eprintln!("error: job {}: {e:#}; released it", lease.job);
                pause(poll, &common.shutdown);
            }
        }
    }
}

/// What a worker leases, for people: `OTP 25, Elixir 1.14.0, mix env prod, targets any, …`,
/// one such tuple after the other (`; `).
fn describe(request: &LeaseRequest) -> String {
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

/// Cancels `shutdown` on the first SIGTERM or SIGINT (a thread waits for them, so the worker
/// finishes its job's clean-up); exits at once, 130, on a second.
fn watch_shutdown_signals(shutdown: &Cancel) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal watcher")?;
    // Registered before this returns: a signal from now on is seen.
    let (mut term, mut interrupt) = runtime
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })
        .context("listening for SIGTERM and SIGINT")?;
    let shutdown = shutdown.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut first = true;
                loop {
                    let name = tokio::select! {
                        _ = term.recv() => "SIGTERM",
                        _ = interrupt.recv() => "SIGINT",
                    };
                    if !first {
                        eprintln!("{name} again: exiting now");
                        std::process::exit(130);
                    }
                    first = false;
                    eprintln!(
                        "{name}: stopping the current job and releasing it (again to exit now)"
                    );
                    shutdown.cancel(format!("the worker received {name}"));
                }
            })
        })
        .context("starting the signal watcher")?;
    Ok(())
}

/// Renews a job's lease every third of its length on its own thread while the job runs.
/// When the mirror refuses a renewal (the lease was lost or the job closed meanwhile) it
/// cancels the job's handle, so its builds stop, and [`Heartbeat::stop`] says why.
struct Heartbeat {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Option<String>>,
}

impl Heartbeat {
    fn start(
        base_url: &str,
        token: &str,
        job: u64,
        lease_seconds: u64,
        cancel: Cancel,
    ) -> anyhow::Result<Self> {
        let interval = Duration::from_millis(lease_seconds * 1000 / 3);
        // An answer later than the interval is as good as none.
        let client = ArtifactClient::with_timeout(base_url, Some(token.to_string()), interval)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the heartbeat's HTTP client")?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || loop {
            match stopped.recv_timeout(interval) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return None,
            }
            match runtime.block_on(client.heartbeat(job, None)) {
                Ok(renewed) => {
                    tracing::debug!(job, expires = renewed.lease_expires_at, "lease renewed")
                }
                // Lost (another worker has it) or closed: nothing more to renew.
                Err(ClientError::Refused {
                    status: 409,
                    message,
                    ..
                }) => {
                    cancel.cancel(format!(
                        "the mirror ended the lease of job {job}: {message}"
                    ));
                    return Some(message);
                }
                // Transient: the next beat may get through before the lease ends.
                Err(e) => eprintln!("warning: heartbeat of job {job}: {e}"),
            }
        });
        Ok(Heartbeat { stop, thread })
    }

    /// Stops renewing; the 409 message if the lease was lost or the job closed meanwhile.
    fn stop(self) -> Option<String> {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or(None)
    }
}

/// The host's name as a worker name (letters, digits, `-`, `_`, `.`; at most 64).
fn host_name() -> String {
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
