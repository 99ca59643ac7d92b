//! Build jobs: an open miss, built in the sandbox as `precomp build --missing` builds it —
//! with the toolchain of its tuple, and with the consumer's compile-time values when it is a
//! config variant ([`crate::variants`]) — published (or its failure recorded) with the
//! worker's token.

use std::path::Path;

use precomp_builder::build::BuildContext;
use precomp_builder::config::SandboxedConfig;
use precomp_builder::run::{self, CompileEnvSource, PackageResult, Status};
use precomp_builder::sources::SourceCache;
use precomp_builder::store::BuildStore;
use precomp_proto::api::{FailureReport, Lease, LeaseRequest, Miss};
use precomp_proto::lock::MixLock;
use precomp_proto::manifest::ArtifactPublicKey;

use crate::error::{chain, Result, WorkerError};
use crate::output::{BuildJobLine, JobLine, JobReport, PackageLine};
use crate::publish::{app_for, miss_managers, publish_results, settle_miss, work_root};
use crate::variants::{self, MissConfig};
use crate::{JobStatus, Jobs, RunEnd, Worker};

/// Sets up the builder (its store in DATA/builds, sources from the mirror, a build context
/// per toolchain) and builds leased misses.
pub(crate) fn run(worker: &Worker<'_>, request: &LeaseRequest) -> Result<RunEnd> {
    let config = &worker.config;
    let data = &config.data;
    let mut trusted = vec![worker.key.public_key()];
    trusted.extend(config.trust.iter().cloned());
    let store = BuildStore::open(&data.join("builds"))?;
    let sources = SourceCache::new(
        data.join("builds/sources"),
        &config.mirror,
        Some(config.token.clone()),
    )?;
    let work_root = work_root(worker.sandbox, data, config.work_dir.as_deref())?;
    let contexts: Vec<BuildContext<'_>> = worker
        .toolchains
        .iter()
        .map(|t| BuildContext {
            sandbox: worker.sandbox,
            toolchain: &t.toolchain,
            sources: &sources,
            key: &worker.key,
            mix_env: config.mix_env.clone(),
            config_env: "prod".to_string(),
            // Workers have no config of their own: a miss with values is a config variant.
            config: None,
            work_root: work_root.clone(),
            keep_work: false,
            // Config evaluation (shared by jobs) stops on shutdown; each job's builds also
            // stop when its lease ends (`work_on`).
            cancel: worker.shutdown.clone(),
        })
        .collect();
    let configs: Vec<SandboxedConfig<'_>> = contexts.iter().map(SandboxedConfig::new).collect();
    let jobs = BuildJobs {
        worker,
        contexts: &contexts,
        configs: &configs,
        store: &store,
        trusted: &trusted,
    };
    worker.lease_loop(request, &jobs)
}

struct BuildJobs<'a> {
    worker: &'a Worker<'a>,
    /// One per toolchain, in `worker.toolchains`' order.
    contexts: &'a [BuildContext<'a>],
    /// Each context's (empty) config, evaluated once for all jobs.
    configs: &'a [SandboxedConfig<'a>],
    store: &'a BuildStore,
    trusted: &'a [ArtifactPublicKey],
}

impl Jobs for BuildJobs<'_> {
    /// Builds one leased miss and reports it: done when the result was reported (a publish
    /// or a failure record, which closes the miss).
    fn work_on(&self, lease: &Lease) -> Result<JobStatus> {
        let worker = self.worker;
        let (client, runtime) = (&worker.client, &worker.runtime);
        let job = lease.job;
        let miss = lease.miss.as_ref().ok_or(WorkerError::NotABuildJob {
            job,
            kind: lease.kind,
        })?;
        let Some(index) = worker
            .toolchains
            .iter()
            .position(|t| t.builds(&miss.otp_major, &miss.elixir, &miss.target))
        else {
            return Err(WorkerError::NoToolchainFor {
                what: "miss",
                otp_major: miss.otp_major.clone(),
                elixir: miss.elixir.clone(),
                target: miss.target.clone(),
            });
        };
        let base_context = &self.contexts[index];
        let toolchain = base_context.toolchain;
        worker.note(&format!(
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
        ));
        let cancel = worker.shutdown.child();
        let heartbeat = worker.heartbeat(job, lease.lease_seconds, cancel.clone())?;
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
                worker.note(&format!(
                    "job {job}: a config variant: building with the {} compile-time value{} \
                     the miss carries",
                    variant.values,
                    if variant.values == 1 { "" } else { "s" }
                ));
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
            .map_err(|source| WorkerError::MissLock {
                package: miss.package.clone(),
                source,
            })
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
        let built = run::build_lock(
            context,
            &reuse,
            &lock,
            &managers,
            std::slice::from_ref(&app),
            worker.config.jobs,
            worker.observer.builds(),
        );
        // Refused while building: the lease was lost, or someone else's result closed the
        // job (the build was cancelled unless it had just finished).
        let lost = heartbeat.refused();
        let built = match built {
            Ok(built) => built,
            Err(e) => {
                heartbeat.stop();
                return Err(e.into());
            }
        };
        if let Some(message) = &lost {
            worker.note(&format!(
                "warning: job {job}: lost the lease while building ({message}); reporting the \
                 result anyway"
            ));
        }
        // Renewed while the results are uploaded. A renewal refused from here on may be
        // refused because this upload closed the job: only a report that then fails means
        // the lease was lost.
        let mut results = publish_results(built, toolchain, Some((runtime, client)));
        let refused_while_reporting = heartbeat.stop().filter(|_| lost.is_none());
        for (result, published) in &results {
            if let Some(Err(e)) = published {
                worker.note(&format!(
                    "error: publishing {} {}: {}",
                    result.package.name,
                    result.package.version,
                    chain(e)
                ));
            }
        }
        let Some(target_index) = results.iter().position(|(result, _)| result.app == app) else {
            return Err(WorkerError::NoResult { app });
        };
        // Each package's line, publish errors included, before the target's result is taken
        // out of `results` (its publish error is what the report failed with).
        let package_lines: Vec<PackageLine> = results
            .iter()
            .map(|(result, published)| {
                let line = PackageLine::new(result);
                match published {
                    Some(published) => line.with_published(published),
                    None => line,
                }
            })
            .collect();
        let (target, published) = results.swap_remove(target_index);
        // Stopped: nothing of it is reported; on shutdown the job goes back to the queue.
        if let Status::Cancelled { reason } = &target.status {
            let outcome = worker.give_back(job);
            let mut line = BuildJobLine::new(job, miss, &toolchain.id, outcome, lost.is_some());
            line.reason = Some(reason.clone());
            worker.observer.report(&JobReport {
                line: JobLine::Build(line),
                summary: format!(
                    "job {job}: {} {} {outcome}: {reason}",
                    miss.package, miss.version
                ),
            });
            return Ok(JobStatus::Failed);
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
                .map_err(WorkerError::from),
            // The build or its failure is reported; close the miss too when that report does
            // not (`settle_miss`).
            None => match published {
                Some(Ok(published)) => settle_miss(
                    runtime,
                    client,
                    toolchain,
                    miss,
                    &target,
                    Some(&Ok(published)),
                )
                .map(|note| {
                    if let Some(note) = note {
                        worker.note(&format!("job {job}: {note}"));
                    }
                }),
                Some(Err(e)) => Err(e),
                None => Err(WorkerError::NotPublished),
            },
        };
        // With the lease lost, another worker has (or had) the job: its publish wins, and a
        // different manifest for the same key (another build's duration) is refused.
        let superseded = reported.is_err() && (lost.is_some() || refused_while_reporting.is_some());
        if let (Ok(()), Some(message)) = (&reported, &refused_while_reporting) {
            tracing::debug!(
                job,
                message,
                "a renewal refused once the result closed the job"
            );
        }
        let lease_lost = lost.is_some() || superseded;
        let outcome = match (&reported, &target.status, &target.build) {
            (Err(_), _, _) if superseded => "lease_lost",
            (Err(_), _, _) => "error",
            (Ok(()), _, Some(_)) => "published",
            (Ok(()), _, None) => "failed",
        };
        let mut line = BuildJobLine::new(job, miss, &toolchain.id, outcome, lease_lost);
        line.results = Some(package_lines);
        line.key = target.build.as_ref().map(|b| b.manifest.key.clone());
        worker.observer.report(&JobReport {
            line: JobLine::Build(line),
            summary: summary(job, &target, outcome, &reported),
        });
        match reported {
            Ok(()) => Ok(JobStatus::Done),
            Err(e) if superseded => {
                worker.note(&format!(
                    "warning: job {job}: not reported, the lease was lost: {}",
                    chain(&e)
                ));
                Ok(JobStatus::Done)
            }
            Err(e) => Err(WorkerError::Report {
                package: miss.package.clone(),
                version: miss.version.clone(),
                source: Box::new(e),
            }),
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
    ) -> Result<JobStatus> {
        let job = lease.job;
        let worker = self.worker;
        variants::record_not_built(&worker.runtime, &worker.client, toolchain, miss, reason)?;
        let mut line = BuildJobLine::new(job, miss, &toolchain.id, "not_buildable", false);
        line.reason = Some(reason.to_string());
        worker.observer.report(&JobReport {
            line: JobLine::Build(line),
            summary: format!(
                "job {job}: {} {} not built, recorded as failed: {reason}",
                miss.package, miss.version
            ),
        });
        Ok(JobStatus::Done)
    }
}

fn summary(job: u64, target: &PackageResult, outcome: &str, reported: &Result<()>) -> String {
    let what = format!("{} {}", target.package.name, target.package.version);
    match (&target.build, &target.status, reported) {
        (_, _, Err(e)) => format!("job {job}: {what}: reporting failed: {}", chain(e)),
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
