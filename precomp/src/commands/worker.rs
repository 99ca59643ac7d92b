//! `precomp worker`: a build worker on any machine. It leases jobs (open misses) from the
//! mirror over HTTP, builds each in the sandbox as `precomp build --missing` would, renews the
//! lease while it builds, and reports the signed result (or the failure) with its token.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use precomp_builder::build::BuildContext;
use precomp_builder::config::SandboxedConfig;
use precomp_builder::run::{self, PackageResult, Status};
use precomp_builder::sources::SourceCache;
use precomp_builder::store::BuildStore;
use precomp_proto::lock::MixLock;
use precomp_registry::artifacts::{
    ArtifactClient, ClientError, FailureReport, Lease, LeaseRequest, MAX_LEASE_SECONDS,
    MIN_LEASE_SECONDS,
};
use precomp_sandbox::Sandbox;

use super::build::{
    app_for, build_and_publish, json_line, load_signing_key, resolve_toolchain, trusted_keys,
    work_root, Reporter,
};
use crate::Context;

/// Runs a build worker: leases the most-reported open miss this toolchain can build from the
/// mirror, builds it in the sandbox (its closure from the miss's lock, sources from --mirror),
/// signs it with --key, publishes the artifact and manifest (or records the failure with its
/// log), and leases the next. While a job builds, its lease is renewed every third of
/// --lease-seconds; a worker that stops renewing loses the job to another worker when the
/// lease expires. The token must be able to publish (`precomp token create --key FILE.pub`).
#[derive(Args)]
pub struct WorkerArgs {
    /// The precomp mirror: its artifact API hands out the jobs, its Hex repository the sources.
    #[arg(long, env = "PRECOMP_MIRROR")]
    mirror: String,
    /// The worker's token (`precomp token create`).
    #[arg(long, env = "PRECOMP_TOKEN", hide_env_values = true)]
    token: String,
    /// The builder's ed25519 signing key (`precomp keys generate`); never visible inside the
    /// sandbox.
    #[arg(long, env = "PRECOMP_BUILDER_KEY")]
    key: PathBuf,
    /// The toolchain: `host`, an image id, a digest prefix or a suite (bookworm, trixie).
    /// Only misses for its OTP major and Elixir are leased.
    #[arg(long, default_value = "host")]
    toolchain: String,
    /// Where toolchain images are stored [default: the data directory].
    #[arg(long, env = "PRECOMP_TOOLCHAINS")]
    toolchains: Option<PathBuf>,
    /// The Mix env of the misses to build.
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
    /// One JSON object per job on stdout: job, package, version, base_key, outcome
    /// (`published`, `failed`, `error`), lease_lost, results (as `precomp build --json`);
    /// `{"job": null, "outcome": "no_jobs"}` when --once finds none.
    #[arg(long)]
    json: bool,
    /// The worker's name, shown to the mirror's operator [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Also trust stored builds signed by this public key for reuse (repeatable).
    #[arg(long = "trust", value_name = "FILE.pub")]
    trust: Vec<PathBuf>,
    /// Builds at a time within a job [default: the number of CPUs].
    #[arg(long)]
    jobs: Option<usize>,
    /// Where build projects are made [default: as `precomp build`].
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

pub fn run(context: &Context, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    if !(MIN_LEASE_SECONDS..=MAX_LEASE_SECONDS).contains(&args.lease_seconds) {
        bail!("--lease-seconds must be within {MIN_LEASE_SECONDS}..={MAX_LEASE_SECONDS}");
    }
    let poll = Duration::from_secs(args.poll_seconds.max(1));
    let data = context.data();
    let key = load_signing_key(&args.key)?;
    let trusted = trusted_keys(&key, &args.trust)?;
    let sandbox = Sandbox::new()?;
    let toolchain =
        resolve_toolchain(&data, args.toolchains.as_deref(), &args.toolchain, &sandbox)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP client")?;
    let client = ArtifactClient::new(&args.mirror, Some(args.token.clone()))
        .with_context(|| format!("the mirror URL {:?}", args.mirror))?;
    let store = BuildStore::open(&data.join("builds"))?;
    let sources = SourceCache::new(data.join("builds/sources"), &args.mirror)?;
    let build_context = BuildContext {
        sandbox: &sandbox,
        toolchain: &toolchain,
        sources: &sources,
        key: &key,
        mix_env: args.mix_env.clone(),
        config_env: "prod".to_string(),
        config: None,
        work_root: work_root(&sandbox, &data, args.work_dir.as_deref())?,
        keep_work: false,
    };
    let config = SandboxedConfig::new(&build_context);
    let reuse = run::Reuse {
        store: &store,
        trusted: &trusted,
        compile_env: &config,
    };
    let native = precomp_builder::build::native_target(&toolchain.architecture)?.to_string();
    let request = LeaseRequest {
        worker: args.name.clone().unwrap_or_else(host_name),
        otp_major: toolchain.otp.clone(),
        elixir: toolchain.elixir.clone(),
        mix_env: args.mix_env.clone(),
        targets: vec!["any".to_string(), native],
        lease_seconds: args.lease_seconds,
    };
    let worker = Worker {
        build_context: &build_context,
        reuse: &reuse,
        runtime: &runtime,
        client: &client,
        args: &args,
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    eprintln!(
        "worker {} leasing from {} (OTP {}, Elixir {}, mix env {}, targets {})",
        request.worker,
        client.base_url(),
        request.otp_major,
        request.elixir,
        request.mix_env,
        request.targets.join(", ")
    );
    loop {
        let lease = match runtime.block_on(client.lease(&request)) {
            Ok(lease) => lease,
            Err(e) if args.once => return Err(e).context("leasing a job from the mirror"),
            Err(e) => {
                eprintln!("warning: leasing a job: {e}; asking again in {poll:?}");
                std::thread::sleep(poll);
                continue;
            }
        };
        let Some(lease) = lease else {
            if args.once {
                if args.json {
                    println!("{}", serde_json::json!({"job": null, "outcome": "no_jobs"}));
                } else {
                    println!(
                        "no open misses for this worker (OTP {}, Elixir {}, mix env {}, targets {})",
                        request.otp_major,
                        request.elixir,
                        request.mix_env,
                        request.targets.join(", ")
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            std::thread::sleep(poll);
            continue;
        };
        match worker.work_on(&lease) {
            Ok(reported) if args.once => {
                return Ok(if reported {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            Ok(_) => {}
            Err(e) => {
                // Give the job back: another worker may build it.
                if let Err(release) = runtime.block_on(client.release(lease.job)) {
                    eprintln!("warning: releasing job {}: {release}", lease.job);
                }
                if args.once {
                    return Err(e.context(format!("job {}", lease.job)));
                }
                eprintln!("error: job {}: {e:#}; released it", lease.job);
                std::thread::sleep(poll);
            }
        }
    }
}

struct Worker<'a> {
    build_context: &'a BuildContext<'a>,
    reuse: &'a run::Reuse<'a>,
    runtime: &'a tokio::runtime::Runtime,
    client: &'a ArtifactClient,
    args: &'a WorkerArgs,
    jobs: usize,
}

impl Worker<'_> {
    /// Builds one leased miss and reports it. `Ok(true)` when the result was reported (a
    /// publish or a failure record, which closes the miss); `Err` when the job could not be
    /// worked on here (the caller releases it).
    fn work_on(&self, lease: &Lease) -> anyhow::Result<bool> {
        let miss = &lease.miss;
        let job = lease.job;
        eprintln!(
            "job {job}: building {} {} (base key {}, reported {} times)",
            miss.package, miss.version, miss.base_key, miss.count
        );
        let lock = MixLock::parse(&miss.lock)
            .with_context(|| format!("the lock reported with the miss of {}", miss.package))?;
        let spec = format!("{}@{}", miss.package, miss.version);
        let app = app_for(&lock, &spec, Path::new("the reported lock"))?;
        let heartbeat = Heartbeat::start(
            self.client.base_url(),
            &self.args.token,
            job,
            lease.lease_seconds,
        )?;
        let built = build_and_publish(
            self.build_context,
            self.reuse,
            &lock,
            std::slice::from_ref(&app),
            self.jobs,
            &Reporter {
                json: self.args.json,
            },
            Some((self.runtime, self.client)),
        );
        let lost = heartbeat.stop();
        let results = built?;
        if let Some(message) = &lost {
            eprintln!("warning: job {job}: lost the lease while building ({message}); reported the result anyway");
        }
        for (result, published) in &results {
            if let Some(Err(e)) = published {
                eprintln!(
                    "error: publishing {} {}: {e:#}",
                    result.package.name, result.package.version
                );
            }
        }
        let (target, published) = results
            .iter()
            .find(|(result, _)| result.app == app)
            .with_context(|| format!("the build of {app} gave no result"))?;
        // A package that was not built (a dependency failed) is recorded as failed under the
        // miss's base key, with the reason as its log, so the miss does not come back forever.
        let unbuilt = match &target.status {
            Status::Skipped { reason } | Status::NotBuildable { reason } => Some(reason.clone()),
            _ => None,
        };
        let reported = match &unbuilt {
            Some(reason) => self
                .runtime
                .block_on(self.client.record_failure(&FailureReport {
                    package: miss.package.clone(),
                    version: miss.version.clone(),
                    base_key: miss.base_key.clone(),
                    toolchain_id: self.build_context.toolchain.id.clone(),
                    log: format!("precomp worker: not built: {reason}\n"),
                }))
                .map(|_| ())
                .map_err(anyhow::Error::from),
            None => match published {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(anyhow::anyhow!("{e:#}")),
                None => Err(anyhow::anyhow!("not published")),
            },
        };
        // With the lease lost, another worker has (or had) the job: its publish wins, and a
        // different manifest for the same key (another build's duration) is refused.
        let superseded = reported.is_err() && lost.is_some();
        let outcome = match (&reported, &target.status, &target.build) {
            (Err(_), _, _) if superseded => "lease_lost",
            (Err(_), _, _) => "error",
            (Ok(()), _, Some(_)) => "published",
            (Ok(()), _, None) => "failed",
        };
        if self.args.json {
            let lines: Vec<serde_json::Value> = results
                .iter()
                .map(|(result, published)| {
                    let mut line = json_line(result, None);
                    if let Some(published) = published {
                        line["published"] = published.is_ok().into();
                    }
                    line
                })
                .collect();
            let mut line = serde_json::json!({
                "job": job,
                "package": miss.package,
                "version": miss.version,
                "base_key": miss.base_key,
                "outcome": outcome,
                "lease_lost": lost.is_some(),
                "results": lines,
            });
            if let Some(build) = &target.build {
                line["key"] = build.manifest.key.clone().into();
            }
            println!("{line}");
        } else {
            println!("{}", summary(job, target, outcome, &reported));
        }
        match reported {
            Ok(()) => Ok(true),
            Err(e) if superseded => {
                eprintln!("warning: job {job}: not reported, the lease was lost: {e:#}");
                Ok(true)
            }
            Err(e) => Err(e.context(format!(
                "reporting the result of {} {} to the mirror",
                miss.package, miss.version
            ))),
        }
    }
}

fn summary(
    job: u64,
    target: &PackageResult,
    outcome: &str,
    reported: &anyhow::Result<()>,
) -> String {
    let what = format!("{} {}", target.package.name, target.package.version);
    match (&target.build, &target.status, reported) {
        (_, _, Err(e)) => format!("job {job}: {what}: reporting failed: {e:#}"),
        (Some(build), _, Ok(())) => format!(
            "job {job}: published {what} (key {}, base key {})",
            build.manifest.key, build.manifest.base_key
        ),
        (None, Status::Failed { reason, .. }, Ok(())) => {
            format!("job {job}: {what} failed to build ({reason}); the failure was recorded")
        }
        (None, _, Ok(())) => format!("job {job}: {what} was not built; recorded as {outcome}"),
    }
}

/// Renews a job's lease every third of its length on its own thread while the job builds.
struct Heartbeat {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Option<String>>,
}

impl Heartbeat {
    fn start(base_url: &str, token: &str, job: u64, lease_seconds: u64) -> anyhow::Result<Self> {
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
                }) => return Some(message),
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
