//! Build jobs: an open miss, built in the sandbox as `precomp build --missing` builds it —
//! with the toolchain of its tuple, and with the consumer's compile-time values when it is a
//! config variant ([`super::super::variants`]) — published (or its failure recorded) with the
//! worker's token.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use precomp_artifacts::{FailureReport, Lease, LeaseRequest, Miss};
use precomp_builder::build::BuildContext;
use precomp_builder::config::SandboxedConfig;
use precomp_builder::run::{self, CompileEnvSource, PackageResult, Status};
use precomp_builder::sources::SourceCache;
use precomp_builder::store::BuildStore;
use precomp_proto::lock::MixLock;
use precomp_proto::manifest::ArtifactPublicKey;

use super::super::build::{
    app_for, build_and_publish, json_line, miss_managers, publish_fields, settle_miss,
    trusted_keys, work_root, LockBuild, Reporter,
};
use super::super::variants::{self, MissConfig};
use super::{lease_loop, Common, Heartbeat, Jobs};

/// Sets up the builder (its store in DATA/builds, sources from the mirror, a build context
/// per toolchain) and builds leased misses.
pub(super) fn run(common: &Common<'_>, request: &LeaseRequest) -> anyhow::Result<ExitCode> {
    let args = common.args;
    let data = &common.data;
    let trusted = trusted_keys(common.key, &args.trust)?;
    let store = BuildStore::open(&data.join("builds"))?;
    let sources = SourceCache::new(data.join("builds/sources"), &args.mirror)?;
    let work_root = work_root(common.sandbox, data, args.work_dir.as_deref())?;
    let contexts: Vec<BuildContext<'_>> = common
        .toolchains
        .iter()
        .map(|t| BuildContext {
            sandbox: common.sandbox,
            toolchain: &t.toolchain,
            sources: &sources,
            key: common.key,
            mix_env: args.mix_env.clone(),
            config_env: "prod".to_string(),
            // Workers have no config of their own: a miss with values is a config variant.
            config: None,
            work_root: work_root.clone(),
            keep_work: false,
            // Config evaluation (shared by jobs) stops on shutdown; each job's builds also
            // stop when its lease ends (`work_on`).
            cancel: common.shutdown.clone(),
        })
        .collect();
    let configs: Vec<SandboxedConfig<'_>> = contexts.iter().map(SandboxedConfig::new).collect();
    let jobs = BuildJobs {
        common,
        contexts: &contexts,
        configs: &configs,
        store: &store,
        trusted: &trusted,
    };
    lease_loop(common, request, &jobs)
}

struct BuildJobs<'a> {
    common: &'a Common<'a>,
    /// One per toolchain, in `common.toolchains`' order.
    contexts: &'a [BuildContext<'a>],
    /// Each context's (empty) config, evaluated once for all jobs.
    configs: &'a [SandboxedConfig<'a>],
    store: &'a BuildStore,
    trusted: &'a [ArtifactPublicKey],
}

impl Jobs for BuildJobs<'_> {
    /// Builds one leased miss and reports it: success when the result was reported (a
    /// publish or a failure record, which closes the miss).
    fn work_on(&self, lease: &Lease) -> anyhow::Result<ExitCode> {
        let (args, client, runtime) = (self.common.args, self.common.client, self.common.runtime);
        let job = lease.job;
        let miss = lease.miss.as_ref().with_context(|| {
            format!(
                "job {job} is a {} job without a miss: this worker builds misses",
                lease.kind
            )
        })?;
        let Some(index) = self
            .common
            .toolchains
            .iter()
            .position(|t| t.builds(&miss.otp_major, &miss.elixir, &miss.target))
        else {
            anyhow::bail!(
                "the mirror leased a miss for OTP {}, Elixir {}, target {}: none of this \
                 worker's toolchains has that tuple",
                miss.otp_major,
                miss.elixir,
                miss.target
            );
        };
        let base_context = &self.contexts[index];
        let toolchain = base_context.toolchain;
        eprintln!(
            "job {job}: building {} {} ({}, reported {} times) for OTP {}, Elixir {}, target {} \
             with toolchain {}",
            miss.package,
            miss.version,
            variants::describe_miss_key(miss),
            miss.count,
            miss.otp_major,
            miss.elixir,
            miss.target,
            toolchain.id
        );
        let cancel = self.common.shutdown.child();
        let heartbeat = Heartbeat::start(
            client.base_url(),
            &args.token,
            job,
            lease.lease_seconds,
            cancel.clone(),
        )?;
        let context = BuildContext {
            cancel,
            ..base_context.clone()
        };
        // The config: the worker's own (none), or a variant made from the miss's values,
        // checked in the sandbox before anything compiles.
        let prepared = match variants::miss_config(miss, &self.configs[index], &context.work_root) {
            Ok(prepared) => prepared,
            Err(e) => {
                heartbeat.stop();
                return Err(e);
            }
        };
        let variant = match prepared {
            Ok(MissConfig::Builder) => None,
            Ok(MissConfig::Variant(variant)) => {
                eprintln!(
                    "job {job}: a config variant: building with the {} compile-time value{} \
                     the miss carries",
                    variant.values,
                    if variant.values == 1 { "" } else { "s" }
                );
                Some(variant)
            }
            Err(reason) => {
                heartbeat.stop();
                return self.not_built(lease, miss, toolchain, &reason);
            }
        };
        let variant_context = variant.as_ref().map(|variant| BuildContext {
            config: Some(variant.path().to_path_buf()),
            ..context.clone()
        });
        let variant_config = variant_context.as_ref().map(SandboxedConfig::new);
        let (context, compile_env): (&BuildContext<'_>, &dyn CompileEnvSource) =
            match (&variant_context, &variant_config) {
                (Some(context), Some(config)) => (context, config),
                _ => (&context, &self.configs[index]),
            };
        if let Some(config) = &variant_config {
            match variants::check_variant(miss, config) {
                Ok(None) => {}
                Ok(Some(reason)) => {
                    heartbeat.stop();
                    return self.not_built(lease, miss, toolchain, &reason);
                }
                Err(e) => {
                    heartbeat.stop();
                    return Err(e);
                }
            }
        }
        let reuse = run::Reuse {
            store: self.store,
            trusted: self.trusted,
            compile_env,
        };
        let parsed = MixLock::parse(&miss.lock)
            .with_context(|| format!("the lock reported with the miss of {}", miss.package))
            .and_then(|lock| {
                let spec = format!("{}@{}", miss.package, miss.version);
                let app = app_for(&lock, &spec, Path::new("the reported lock"))?;
                Ok((lock, app))
            });
        let (lock, app) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                heartbeat.stop();
                return Err(e);
            }
        };
        // The managers the client computed on its whole project (the lock reported with a
        // miss is the package's closure only).
        let managers = match miss_managers(context, &lock, miss) {
            Ok(managers) => managers,
            Err(e) => {
                heartbeat.stop();
                return Err(e);
            }
        };
        let built = build_and_publish(
            context,
            &reuse,
            &LockBuild {
                lock: &lock,
                managers: &managers,
                apps: std::slice::from_ref(&app),
            },
            self.common.jobs,
            &Reporter { json: args.json },
            Some((runtime, client)),
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
        // Stopped: nothing of it is reported; on shutdown the job goes back to the queue.
        if let Status::Cancelled { reason } = &target.status {
            let outcome = self.common.give_back(job);
            if args.json {
                let mut line = job_line(lease, miss, toolchain, outcome, lost.is_some());
                line["reason"] = reason.as_str().into();
                println!("{line}");
            } else {
                println!(
                    "job {job}: {} {} {outcome}: {reason}",
                    miss.package, miss.version
                );
            }
            return Ok(ExitCode::FAILURE);
        }
        // A package that was not built (a dependency failed) is recorded as failed under the
        // miss's base key, with the reason as its log, so the miss does not come back forever.
        let unbuilt = match &target.status {
            Status::Skipped { reason } | Status::NotBuildable { reason } => Some(reason.clone()),
            _ => None,
        };
        let reported = match &unbuilt {
            Some(reason) => runtime
                .block_on(client.record_failure(&FailureReport {
                    package: miss.package.clone(),
                    version: miss.version.clone(),
                    base_key: miss.miss_key().to_string(),
                    toolchain_id: toolchain.id.clone(),
                    log: format!("precomp worker: not built: {reason}\n"),
                }))
                .map(|_| ())
                .map_err(anyhow::Error::from),
            // The build or its failure is reported; close the miss too when that report does
            // not (`settle_miss`).
            None => match published {
                Some(Ok(_)) => {
                    settle_miss(runtime, client, toolchain, miss, target, published.as_ref()).map(
                        |note| {
                            if let Some(note) = note {
                                eprintln!("job {job}: {note}");
                            }
                        },
                    )
                }
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
        if args.json {
            let lines: Vec<serde_json::Value> = results
                .iter()
                .map(|(result, published)| {
                    let mut line = json_line(result, None);
                    if let Some(published) = published {
                        publish_fields(&mut line, published);
                    }
                    line
                })
                .collect();
            let mut line = job_line(lease, miss, toolchain, outcome, lost.is_some());
            line["results"] = lines.into();
            if let Some(build) = &target.build {
                line["key"] = build.manifest.key.clone().into();
            }
            println!("{line}");
        } else {
            println!("{}", summary(job, target, outcome, &reported));
        }
        match reported {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) if superseded => {
                eprintln!("warning: job {job}: not reported, the lease was lost: {e:#}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(e.context(format!(
                "reporting the result of {} {} to the mirror",
                miss.package, miss.version
            ))),
        }
    }
}

impl BuildJobs<'_> {
    /// A miss that cannot be built (its values cannot be given to a build): recorded as a
    /// failure under its key with why, so it does not come back to every worker.
    fn not_built(
        &self,
        lease: &Lease,
        miss: &Miss,
        toolchain: &precomp_sandbox::toolchain::Toolchain,
        reason: &str,
    ) -> anyhow::Result<ExitCode> {
        let job = lease.job;
        variants::record_not_built(
            self.common.runtime,
            self.common.client,
            toolchain,
            miss,
            reason,
        )?;
        if self.common.args.json {
            let mut line = job_line(lease, miss, toolchain, "not_buildable", false);
            line["reason"] = reason.into();
            println!("{line}");
        } else {
            println!(
                "job {job}: {} {} not built, recorded as failed: {reason}",
                miss.package, miss.version
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The `--json` fields every job line has: which job, which miss, which toolchain, and how
/// it ended.
fn job_line(
    lease: &Lease,
    miss: &Miss,
    toolchain: &precomp_sandbox::toolchain::Toolchain,
    outcome: &str,
    lease_lost: bool,
) -> serde_json::Value {
    serde_json::json!({
        "job": lease.job,
        "kind": lease.kind,
        "package": miss.package,
        "version": miss.version,
        "base_key": miss.base_key,
        "request_key": miss.request_key,
        "variant_key": miss.variant_key,
        "toolchain": toolchain.id,
        "outcome": outcome,
        "lease_lost": lease_lost,
    })
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
