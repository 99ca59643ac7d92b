//! Audit jobs (`precomp worker --audit`): a published build, rebuilt and compared exactly as
//! `precomp audit` does it (`precomp_ops::audit::Auditor`), in a fresh run directory under
//! DATA/audit that is removed afterwards unless a failed rebuild left its log there.
//!
//! The result is reported by what the auditor posts: a match by its countersignature and
//! `match` verdict, a mismatch by its verdict; either closes the job on the mirror. A failed
//! rebuild releases the job as `failed` with the reason (the mirror does not offer it to this
//! token again); one this toolchain cannot rebuild is released plainly.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use precomp_artifacts::{JobKind, Lease, LeaseRequest};
use precomp_http::Error as ClientError;
use precomp_ops::audit::{AuditError, AuditReport, Auditor, Candidate, Outcome};

use super::super::audit::{finish_run_dir, new_run_dir, Reporter, MISMATCH};
use super::{lease_loop, Common, Heartbeat, Jobs};

/// Audits leased builds, each in its own run directory under DATA/audit.
pub(super) fn run(common: &Common<'_>, request: &LeaseRequest) -> anyhow::Result<ExitCode> {
    let root = common.data.join("audit");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    lease_loop(common, request, &AuditJobs { common, root })
}

struct AuditJobs<'a> {
    common: &'a Common<'a>,
    /// DATA/audit.
    root: PathBuf,
}

impl Jobs for AuditJobs<'_> {
    /// Audits one leased build and reports it: success for a match, [`MISMATCH`] for a
    /// mismatch, failure otherwise.
    fn work_on(&self, lease: &Lease) -> anyhow::Result<ExitCode> {
        let job = lease.job;
        let Some(build) = lease.build.clone().filter(|_| lease.kind == JobKind::Audit) else {
            bail!(
                "job {job} is a {} job without a build to audit: the mirror at {} does not know \
                 audit jobs; upgrade it",
                lease.kind,
                self.common.client.base_url()
            );
        };
        let candidate = Candidate::from(build);
        eprintln!(
            "job {job}: auditing {} {} (key {}, {} audit{} so far)",
            candidate.package,
            candidate.build.version,
            candidate.build.key,
            audits(&candidate),
            if audits(&candidate) == 1 { "" } else { "s" }
        );
        let cancel = self.common.shutdown.child();
        let Audited { report, lost } =
            self.audit(job, lease.lease_seconds, &candidate, cancel.clone())?;
        let report = match report {
            Ok(report) => report,
            // Stopped: nothing was posted; on shutdown the job goes back to the queue.
            Err(e) if cancel.is_cancelled() => {
                let outcome = self.common.give_back(job);
                let reason = cancel.reason().unwrap_or_else(|| e.to_string());
                self.print(job, &candidate, outcome, Some(&reason), None);
                return Ok(ExitCode::FAILURE);
            }
            Err(e) => {
                let e = anyhow::Error::from(e).context(format!(
                    "auditing {} {}",
                    candidate.package, candidate.build.version
                ));
                self.print(job, &candidate, "error", Some(&format!("{e:#}")), None);
                return Err(e);
            }
        };
        let client = self.common.client;
        let runtime = self.common.runtime;
        let (outcome, status) = match &report.outcome {
            Outcome::Match { .. } => ("match", ExitCode::SUCCESS),
            Outcome::Mismatch { .. } => ("mismatch", ExitCode::from(MISMATCH)),
            // The mirror offered a build this toolchain cannot rebuild: back to the queue.
            Outcome::Skipped { reason } => {
                if let Err(e) = runtime.block_on(client.release(job)) {
                    eprintln!("warning: releasing job {job}: {e}");
                }
                eprintln!("warning: job {job}: skipped ({reason}); released it");
                ("skipped", ExitCode::FAILURE)
            }
            Outcome::Failed { reason, .. } => {
                match runtime.block_on(client.release_failed(job, reason)) {
                    Ok(_) => ("failed", ExitCode::FAILURE),
                    Err(ClientError::Refused { status: 409, .. }) => {
                        ("lease_lost", ExitCode::FAILURE)
                    }
                    Err(e) => {
                        let e = anyhow::Error::from(e)
                            .context(format!("reporting the failed audit of job {job}"));
                        self.print(job, &candidate, "error", Some(&format!("{e:#}")), None);
                        return Err(e);
                    }
                }
            }
        };
        if let (Some(message), "failed" | "skipped" | "lease_lost") = (&lost, outcome) {
            eprintln!("warning: job {job}: the mirror refused a heartbeat: {message}");
        }
        self.print(job, &candidate, outcome, None, Some(&report));
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
    ) -> anyhow::Result<Audited> {
        let common = self.common;
        let build = &candidate.build;
        let toolchain = common
            .toolchain_for(&build.otp_major, &build.elixir, &build.target)
            .with_context(|| {
                format!(
                    "the mirror leased a build for OTP {}, Elixir {}, target {}: none of this \
                     worker's toolchains has that tuple",
                    build.otp_major, build.elixir, build.target
                )
            })?;
        let run = new_run_dir(&self.root)?;
        let run_dir = run.path().to_path_buf();
        let auditor = Auditor {
            sandbox: common.sandbox,
            toolchain,
            key: common.key,
            client: common.client,
            runtime: common.runtime,
            mirror: common.args.mirror.clone(),
            work: run_dir.clone(),
            jobs: common.jobs,
            dry_run: false,
            keep_work: false,
            cancel: cancel.clone(),
        };
        let heartbeat = Heartbeat::start(
            common.client.base_url(),
            &common.args.token,
            job,
            lease_seconds,
            cancel,
        )?;
        // Progress and the result line on stderr; with --json, stdout has the job's line.
        let report = auditor.audit_leased(candidate, &Reporter { json: false });
        let lost = heartbeat.stop();
        // A failed rebuild's log is in the run directory: keep it for that.
        let keep = matches!(
            &report,
            Ok(AuditReport {
                outcome: Outcome::Failed { log: Some(_), .. },
                ..
            })
        );
        finish_run_dir(run, keep);
        Ok(Audited { report, lost })
    }

    /// The job's line: JSON on stdout with --json, else a summary.
    fn print(
        &self,
        job: u64,
        candidate: &Candidate,
        outcome: &str,
        error: Option<&str>,
        report: Option<&AuditReport>,
    ) {
        let (package, version, key) = (
            &candidate.package,
            &candidate.build.version,
            &candidate.build.key,
        );
        if self.common.args.json {
            let mut line = serde_json::json!({
                "job": job,
                "kind": JobKind::Audit,
                "package": package,
                "version": version,
                "key": key,
                "outcome": outcome,
            });
            if let Some(error) = error {
                line["reason"] = error.into();
            }
            if let Some(report) = report {
                let audit = report.to_json();
                for field in ["reason", "log"] {
                    if let Some(value) = audit.get(field) {
                        line[field] = value.clone();
                    }
                }
                line["audit"] = audit;
            }
            println!("{line}");
            return;
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
            (None, None) => String::new(),
        };
        println!("job {job}: {outcome} {package} {version} (key {key}){detail}");
    }
}

/// Distinct auditors who audited the build so far, as the lease says.
fn audits(candidate: &Candidate) -> usize {
    precomp_ops::audit::audits(&candidate.build)
}
