//! Build jobs: an open miss, built in the sandbox as `precomp build --missing` builds it,
//! published (or its failure recorded) with the worker's token.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use precomp_builder::build::BuildContext;
use precomp_builder::config::SandboxedConfig;
use precomp_builder::run::{self, PackageResult, Status};
use precomp_builder::sources::SourceCache;
use precomp_builder::store::BuildStore;
use precomp_proto::lock::MixLock;
use precomp_registry::artifacts::{FailureReport, Lease, LeaseRequest};

use super::super::build::{
    app_for, build_and_publish, config_differs, json_line, miss_managers, settle_miss,
    trusted_keys, work_root, LockBuild, Reporter,
};
use super::{lease_loop, Common, Heartbeat, Jobs};

/// Sets up the builder (its store in DATA/builds, sources from the mirror) and builds leased
/// misses.
pub(super) fn run(common: &Common<'_>, request: &LeaseRequest) -> anyhow::Result<ExitCode> {
    let args = common.args;
    let data = &common.data;
    let trusted = trusted_keys(common.key, &args.trust)?;
    let store = BuildStore::open(&data.join("builds"))?;
    let sources = SourceCache::new(data.join("builds/sources"), &args.mirror)?;
    let build_context = BuildContext {
        sandbox: common.sandbox,
        toolchain: common.toolchain,
        sources: &sources,
        key: common.key,
        mix_env: args.mix_env.clone(),
        config_env: "prod".to_string(),
        config: None,
        work_root: work_root(common.sandbox, data, args.work_dir.as_deref())?,
        keep_work: false,
        // Config evaluation (shared by jobs) stops on shutdown; each job's builds also stop
        // when its lease ends (`work_on`).
        cancel: common.shutdown.clone(),
    };
    let config = SandboxedConfig::new(&build_context);
    let reuse = run::Reuse {
        store: &store,
        trusted: &trusted,
        compile_env: &config,
    };
    let jobs = BuildJobs {
        common,
        build_context: &build_context,
        reuse: &reuse,
    };
    lease_loop(common, request, &jobs)
}

struct BuildJobs<'a> {
    common: &'a Common<'a>,
    build_context: &'a BuildContext<'a>,
    reuse: &'a run::Reuse<'a>,
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
        eprintln!(
            "job {job}: building {} {} ({} {}, reported {} times)",
            miss.package,
            miss.version,
            if miss.base_key.is_some() {
                "base key"
            } else {
                "request key"
            },
            miss.miss_key(),
            miss.count
        );
        // A miss whose compile-time values this worker's config does not give is not built
        // here (config variants are not supported yet): recorded as a failure with why, so it
        // does not come back to every worker.
        if let Some(why) = config_differs(miss, self.reuse.compile_env)? {
            runtime.block_on(client.record_failure(&FailureReport {
                package: miss.package.clone(),
                version: miss.version.clone(),
                base_key: miss.miss_key().to_string(),
                toolchain_id: self.build_context.toolchain.id.clone(),
                log: format!("precomp worker: not built: {why}\n"),
            }))?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "job": job,
                        "kind": lease.kind,
                        "package": miss.package,
                        "version": miss.version,
                        "base_key": miss.base_key,
                        "request_key": miss.request_key,
                        "outcome": "skipped",
                        "lease_lost": false,
                        "reason": why,
                    })
                );
            } else {
                println!(
                    "job {job}: {} {} not built, recorded as failed: {why}",
                    miss.package, miss.version
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        let lock = MixLock::parse(&miss.lock)
            .with_context(|| format!("the lock reported with the miss of {}", miss.package))?;
        let spec = format!("{}@{}", miss.package, miss.version);
        let app = app_for(&lock, &spec, Path::new("the reported lock"))?;
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
            ..self.build_context.clone()
        };
        // The managers the client computed on its whole project (the lock reported with a
        // miss is the package's closure only).
        let managers = miss_managers(&context, &lock, miss)?;
        let built = build_and_publish(
            &context,
            self.reuse,
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
                println!(
                    "{}",
                    serde_json::json!({
                        "job": job,
                        "kind": lease.kind,
                        "package": miss.package,
                        "version": miss.version,
                        "base_key": miss.base_key,
                        "request_key": miss.request_key,
                        "outcome": outcome,
                        "lease_lost": lost.is_some(),
                        "reason": reason,
                    })
                );
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
                    toolchain_id: self.build_context.toolchain.id.clone(),
                    log: format!("precomp worker: not built: {reason}\n"),
                }))
                .map(|_| ())
                .map_err(anyhow::Error::from),
            // The build or its failure is reported; close the miss too when that report does
            // not (`settle_miss`).
            None => match published {
                Some(Ok(())) => settle_miss(
                    runtime,
                    client,
                    self.build_context.toolchain,
                    miss,
                    target,
                    published.as_ref(),
                )
                .map(|note| {
                    if let Some(note) = note {
                        eprintln!("job {job}: {note}");
                    }
                }),
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
                        line["published"] = published.is_ok().into();
                    }
                    line
                })
                .collect();
            let mut line = serde_json::json!({
                "job": job,
                "kind": lease.kind,
                "package": miss.package,
                "version": miss.version,
                "base_key": miss.base_key,
                "request_key": miss.request_key,
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
