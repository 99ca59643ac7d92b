//! Audit jobs (`precomp worker --audit`): a published build, rebuilt and compared exactly as
//! `precomp audit` does it (`precomp_ops::audit::Auditor`), in a fresh run directory under
//! DATA/audit that is removed afterwards unless a failed rebuild left its log there.
//!
//! The result is reported by what the auditor posts: a match by its countersignature and
//! `match` verdict, a mismatch by its verdict; either closes the job on the mirror. A failed
//! rebuild releases the job as `failed` with the reason (the mirror does not offer it to this
//! token again), and so does a build of another build recipe (which a mirror that knows
//! recipes never leases: the lease names this precomp's); one this toolchain cannot rebuild
//! is released plainly.

use std::path::{Path, PathBuf};

use precomp_builder::workdir::{self, WorkDir};
use precomp_http::Error as ClientError;
use precomp_ops::audit::{
    other_recipe_reason, AuditError, AuditReport, Auditor, Candidate, Outcome,
};
use precomp_proto::api::{JobKind, Lease, LeaseRequest};

use crate::error::{chain, Result, WorkerError};
use crate::output::{AuditJobLine, JobLine, JobReport};
use crate::{JobStatus, Jobs, RunEnd, Worker};

/// Audits leased builds, each in its own run directory under DATA/audit.
pub(crate) fn run(worker: &Worker<'_>, request: &LeaseRequest) -> Result<RunEnd> {
    let root = worker.config.data.join("audit");
    std::fs::create_dir_all(&root).map_err(WorkerError::io("creating", &root))?;
    worker.lease_loop(request, &AuditJobs { worker, root })
}

/// A new directory `root/run-…` for an audit run (`precomp audit`'s and an audit job's;
/// 0755: the sandbox user reads its sources), removed when dropped — or, should this process
/// be killed, by the next run's sweep of `root`, which runs first.
pub fn new_run_dir(root: &Path) -> Result<WorkDir> {
    workdir::sweep(root);
    WorkDir::create(root, "run-", 0o755).map_err(|source| WorkerError::RunDir {
        root: root.to_path_buf(),
        source: Box::new(source),
    })
}

struct AuditJobs<'a> {
    worker: &'a Worker<'a>,
    /// DATA/audit.
    root: PathBuf,
}

impl Jobs for AuditJobs<'_> {
    /// Audits one leased build and reports it: done for a match, a mismatch for a mismatch,
    /// failed otherwise.
    fn work_on(&self, lease: &Lease) -> Result<JobStatus> {
        let worker = self.worker;
        let job = lease.job;
        let Some(build) = lease.build.clone().filter(|_| lease.kind == JobKind::Audit) else {
            return Err(WorkerError::NotAnAuditJob {
                job,
                kind: lease.kind,
                mirror: worker.client.base_url().to_string(),
            });
        };
        let candidate = Candidate::from(build);
        worker.note(&format!(
            "job {job}: auditing {} {} (key {}, {} audit{} so far)",
            candidate.package,
            candidate.build.version,
            candidate.build.key,
            audits(&candidate),
            if audits(&candidate) == 1 { "" } else { "s" }
        ));
        let cancel = worker.shutdown.child();
        let Audited { report, lost } =
            self.audit(job, lease.lease_seconds, &candidate, cancel.clone())?;
        let report = match report {
            Ok(report) => report,
            // Stopped: nothing was posted; on shutdown the job goes back to the queue.
            Err(e) if cancel.is_cancelled() => {
                let outcome = worker.give_back(job);
                let reason = cancel.reason().unwrap_or_else(|| e.to_string());
                self.report(job, &candidate, outcome, Some(&reason), None);
                return Ok(JobStatus::Failed);
            }
            Err(source) => {
                let e = WorkerError::Audit {
                    package: candidate.package.clone(),
                    version: candidate.build.version.clone(),
                    source: Box::new(source),
                };
                self.report(job, &candidate, "error", Some(&chain(&e)), None);
                return Err(e);
            }
        };
        let (client, runtime) = (&worker.client, &worker.runtime);
        let (outcome, status) = match &report.outcome {
            Outcome::Match { .. } => ("match", JobStatus::Done),
            Outcome::Mismatch { .. } => ("mismatch", JobStatus::Mismatch),
            // The mirror offered a build this toolchain cannot rebuild: back to the queue.
            Outcome::Skipped { reason } => {
                if let Err(e) = runtime.block_on(client.release(job)) {
                    worker.note(&format!("warning: releasing job {job}: {e}"));
                }
                worker.note(&format!(
                    "warning: job {job}: skipped ({reason}); released it"
                ));
                ("skipped", JobStatus::Failed)
            }
            // A build of another recipe (offered by a mirror that predates recipes in leases):
            // released as failed with the reason, so this token is not offered it again.
            Outcome::OtherRecipe { recipe } => {
                let reason = other_recipe_reason(&candidate.build.key, recipe.as_deref());
                match runtime.block_on(client.release_failed(job, &reason)) {
                    Ok(_) => ("other_recipe", JobStatus::Failed),
                    Err(ClientError::Refused { status: 409, .. }) => {
                        ("lease_lost", JobStatus::Failed)
                    }
                    Err(source) => {
                        let e = WorkerError::ReportFailedAudit { job, source };
                        self.report(job, &candidate, "error", Some(&chain(&e)), None);
                        return Err(e);
                    }
                }
            }
            Outcome::Failed { reason, .. } => {
                match runtime.block_on(client.release_failed(job, reason)) {
                    Ok(_) => ("failed", JobStatus::Failed),
                    Err(ClientError::Refused { status: 409, .. }) => {
                        ("lease_lost", JobStatus::Failed)
                    }
                    Err(source) => {
                        let e = WorkerError::ReportFailedAudit { job, source };
                        self.report(job, &candidate, "error", Some(&chain(&e)), None);
                        return Err(e);
                    }
                }
            }
        };
        if let (Some(message), "failed" | "skipped" | "other_recipe" | "lease_lost") =
            (&lost, outcome)
        {
            worker.note(&format!(
                "warning: job {job}: the mirror refused a heartbeat: {message}"
            ));
        }
        self.report(job, &candidate, outcome, None, Some(&report));
        Ok(status)
    }
}

/// How one leased audit ran.
struct Audited {
    /// The report, or an error that may pass (the job goes back to the queue).
    report: Result<AuditReport, AuditError>,
    /// The heartbeat's 409 message, if the mirror refused a renewal meanwhile (the lease was
    /// lost, or the job closed — by this audit's own verdict, too).
    lost: Option<String>,
}

impl AuditJobs<'_> {
    /// Runs the audit of `candidate` in a fresh run directory, with the lease renewed.
    fn audit(
        &self,
        job: u64,
        lease_seconds: u64,
        candidate: &Candidate,
        cancel: precomp_builder::Cancel,
    ) -> Result<Audited> {
        let worker = self.worker;
        let build = &candidate.build;
        let toolchain = worker
            .toolchain_for(&build.otp_major, &build.elixir, &build.target)
            .ok_or_else(|| WorkerError::NoToolchainFor {
                what: "build",
                otp_major: build.otp_major.clone(),
                elixir: build.elixir.clone(),
                target: build.target.clone(),
            })?;
        let run = new_run_dir(&self.root)?;
        let run_dir = run.path().to_path_buf();
        let auditor = Auditor {
            sandbox: worker.sandbox,
            toolchain,
            key: &worker.key,
            client: &worker.client,
            runtime: &worker.runtime,
            mirror: worker.config.mirror.clone(),
            work: run_dir.clone(),
            jobs: worker.config.jobs,
            dry_run: false,
            keep_work: false,
            cancel: cancel.clone(),
        };
        let heartbeat = worker.heartbeat(job, lease_seconds, cancel)?;
        let report = auditor.audit_leased(candidate, worker.observer.audits());
        let lost = heartbeat.stop();
        // A failed rebuild's log is in the run directory: keep it for that.
        let keep = matches!(
            &report,
            Ok(AuditReport {
                outcome: Outcome::Failed { log: Some(_), .. },
                ..
            })
        );
        if keep {
            worker.note(&format!(
                "kept the audit's directory: {}",
                run.keep().display()
            ));
        }
        Ok(Audited { report, lost })
    }

    /// The job's report: its line and a summary.
    fn report(
        &self,
        job: u64,
        candidate: &Candidate,
        outcome: &'static str,
        error: Option<&str>,
        report: Option<&AuditReport>,
    ) {
        let (package, version, key) = (
            &candidate.package,
            &candidate.build.version,
            &candidate.build.key,
        );
        let mut line = AuditJobLine {
            audit: None,
            job,
            key: key.clone(),
            kind: JobKind::Audit,
            log: None,
            outcome,
            package: package.clone(),
            reason: error.map(str::to_string),
            version: version.clone(),
        };
        if let Some(report) = report {
            let audit = report.line();
            line.reason = audit.reason.clone().or(line.reason);
            line.log = audit.log.clone();
            line.audit = Some(Box::new(audit));
        }
        let detail = match (error, report.map(|r| &r.outcome)) {
            (Some(error), _) if outcome == "lease_lost" => format!(": {error}"),
            (Some(error), _) => format!(": {error}; released for another worker"),
            (None, Some(Outcome::Match { .. })) => {
                ": the same bytes; countersigned, match verdict posted".into()
            }
            (None, Some(Outcome::Mismatch { verdict, .. })) => {
                format!(
                    ": {}; verdict posted, the build is flagged",
                    verdict.summary
                )
            }
            (None, Some(Outcome::Failed { reason, .. })) => {
                format!(": {reason}; released as failed")
            }
            (None, Some(Outcome::Skipped { reason })) => format!(": {reason}; released"),
            (None, Some(Outcome::OtherRecipe { recipe })) => format!(
                ": {}; released as failed",
                other_recipe_reason(key, recipe.as_deref())
            ),
            (None, None) => String::new(),
        };
        self.worker.observer.report(&JobReport {
            line: JobLine::Audit(line),
            summary: format!("job {job}: {outcome} {package} {version} (key {key}){detail}"),
        });
    }
}

/// Distinct auditors who audited the build so far, as the lease says.
fn audits(candidate: &Candidate) -> usize {
    precomp_ops::audit::audits(&candidate.build)
}
