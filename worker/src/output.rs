//! The `--json` lines of `precomp build` and `precomp worker`, each a serde type that owns its
//! format (docs/builder.md, docs/audit.md). Fields are declared in name order: the order the
//! lines have always been printed in.

use std::path::Path;

use precomp_builder::run::{PackageResult, Status};
use precomp_ops::audit::AuditLine;
use precomp_proto::api::{JobKind, Miss};
use serde::Serialize;

use crate::publish::Published;

/// One package's line of `precomp build --json` (and of a build job's `results`): package,
/// version, app, status (`built`, `reused`, `failed`, `skipped`, `cancelled`,
/// `not_buildable`) with `reason` (and `log`) when not built; for a stored build its key,
/// base key, target, artifact digest and size and the artifact and manifest paths; when
/// published, how (`published`, `publish_result` or `publish_error`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PackageLine {
    pub app: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    pub package: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub version: String,
}

impl PackageLine {
    /// The line of `result`, its artifact and manifest where the store keeps them.
    pub fn new(result: &PackageResult) -> PackageLine {
        let mut line = PackageLine {
            app: result.app.clone(),
            artifact: None,
            artifact_sha256: None,
            artifact_size: None,
            base_key: None,
            duration_ms: None,
            key: None,
            log: None,
            manifest: None,
            package: result.package.name.clone(),
            publish_error: None,
            publish_result: None,
            published: None,
            reason: None,
            status: "",
            target: None,
            version: result.package.version.clone(),
        };
        line.status = match &result.status {
            Status::Built { duration } => {
                line.duration_ms = Some(duration.as_millis() as u64);
                "built"
            }
            Status::Reused => "reused",
            Status::Failed { reason, log, .. } => {
                line.reason = Some(reason.clone());
                line.log = Some(log.display().to_string());
                "failed"
            }
            Status::Skipped { reason } => {
                line.reason = Some(reason.clone());
                "skipped"
            }
            Status::Cancelled { reason } => {
                line.reason = Some(reason.clone());
                "cancelled"
            }
            Status::NotBuildable { reason } => {
                line.reason = Some(reason.clone());
                "not_buildable"
            }
        };
        if let Some(build) = &result.build {
            let manifest = &build.manifest;
            let output = manifest
                .output
                .as_ref()
                .expect("stored builds have an output");
            line.key = Some(manifest.key.clone());
            line.base_key = Some(manifest.base_key.clone());
            line.target = Some(manifest.target.clone());
            line.artifact_sha256 = Some(hex::encode(&output.artifact_sha256));
            line.artifact_size = Some(output.artifact_size);
            line.artifact = Some(build.artifact_path.display().to_string());
            line.manifest = Some(build.manifest_path.display().to_string());
        }
        line
    }

    /// With the artifact and manifest at other paths (copies, `precomp build --out`).
    pub fn copied_to(mut self, artifact: &Path, manifest: &Path) -> PackageLine {
        if self.key.is_some() {
            self.artifact = Some(artifact.display().to_string());
            self.manifest = Some(manifest.display().to_string());
        }
        self
    }

    /// With what publishing it did on the mirror, truly (a skipped package was not published).
    pub fn with_published(mut self, published: &crate::error::Result<Published>) -> PackageLine {
        self.published = Some(false);
        match published {
            Ok(Published::Manifest(result)) => {
                // `other_recipe`: the key is served by another recipe's build, not this one.
                self.published = Some(result != "other_recipe");
                self.publish_result = Some(result.clone());
            }
            Ok(Published::Failure) => self.publish_result = Some("failure_recorded".into()),
            Ok(Published::Nothing) => {}
            Err(e) => self.publish_error = Some(crate::error::chain(e)),
        }
        self
    }
}

/// A build job's line (`precomp worker --json`): the job, its miss, the toolchain, how it
/// ended (`outcome`: `published`, `failed`, `not_buildable`, `lease_lost`, `cancelled`,
/// `error`), `reason` when not built, and when built `key` and `results` (one
/// [`PackageLine`] per package of the job). `base_key`, `request_key` and `variant_key`
/// are null when the miss has none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BuildJobLine {
    pub base_key: Option<String>,
    pub job: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub kind: JobKind,
    pub lease_lost: bool,
    pub outcome: &'static str,
    pub package: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub request_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<PackageLine>>,
    pub toolchain: String,
    pub variant_key: Option<String>,
    pub version: String,
}

impl BuildJobLine {
    /// The fields every build job's line has.
    pub fn new(
        job: u64,
        miss: &Miss,
        toolchain: &str,
        outcome: &'static str,
        lease_lost: bool,
    ) -> BuildJobLine {
        BuildJobLine {
            base_key: miss.base_key.clone(),
            job,
            key: None,
            kind: JobKind::Build,
            lease_lost,
            outcome,
            package: miss.package.clone(),
            reason: None,
            request_key: miss.request_key.clone(),
            results: None,
            toolchain: toolchain.to_string(),
            variant_key: miss.variant_key.clone(),
            version: miss.version.clone(),
        }
    }
}

/// An audit job's line (`precomp worker --audit --json`): the job, the build, how it ended
/// (`outcome`: `match`, `mismatch`, `failed`, `skipped`, `other_recipe`, `lease_lost`,
/// `error`), `reason` (and `log`) for `failed`, `skipped`, `other_recipe` and `error`, and
/// `audit`, the build's `precomp audit --json` line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditJobLine {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<Box<AuditLine>>,
    pub job: u64,
    pub key: String,
    pub kind: JobKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    pub outcome: &'static str,
    pub package: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub version: String,
}

/// `--once` found no job: `{"job": null, "kind": KIND, "outcome": "no_jobs"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NoJobsLine {
    /// Always `None`: there is no job.
    pub job: Option<u64>,
    pub kind: JobKind,
    pub outcome: &'static str,
}

impl NoJobsLine {
    pub fn new(kind: JobKind) -> NoJobsLine {
        NoJobsLine {
            job: None,
            kind,
            outcome: "no_jobs",
        }
    }
}

/// What one job (or a `--once` that found none) gives: its `--json` line, and the same for
/// people.
#[derive(Clone, Debug, PartialEq)]
pub struct JobReport {
    pub line: JobLine,
    /// One line for people (what the CLI prints without `--json`).
    pub summary: String,
}

/// The `--json` line of a [`JobReport`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum JobLine {
    Build(BuildJobLine),
    Audit(AuditJobLine),
    NoJobs(NoJobsLine),
}

impl JobLine {
    /// How the job ended (`published`, `match`, `no_jobs`, …).
    pub fn outcome(&self) -> &'static str {
        match self {
            JobLine::Build(line) => line.outcome,
            JobLine::Audit(line) => line.outcome,
            JobLine::NoJobs(line) => line.outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/builder.md and docs/audit.md: what `--once` prints when there is no job.
    #[test]
    fn no_jobs_lines_are_the_documented_ones() {
        assert_eq!(
            serde_json::to_string(&NoJobsLine::new(JobKind::Audit)).unwrap(),
            r#"{"job":null,"kind":"audit","outcome":"no_jobs"}"#
        );
        assert_eq!(
            serde_json::to_string(&JobLine::NoJobs(NoJobsLine::new(JobKind::Build))).unwrap(),
            r#"{"job":null,"kind":"build","outcome":"no_jobs"}"#
        );
    }

    /// A build job's line keeps the miss's absent keys as nulls and leaves out what the
    /// outcome does not have, in name order (as `serde_json::json!` printed it).
    #[test]
    fn a_build_job_line_has_nulls_for_absent_keys_and_fields_in_name_order() {
        let miss: Miss = serde_json::from_value(serde_json::json!({
            "package": "opt_user", "version": "1.0.0", "request_key": "ab",
            "reason": "not built", "otp_major": "25", "elixir": "1.14.0", "mix_env": "prod",
            "target": "any", "lock": "%{}", "count": 1, "first_reported": 1,
            "last_reported": 1,
        }))
        .unwrap();
        let mut line = BuildJobLine::new(7, &miss, "host", "not_buildable", false);
        line.reason = Some("why".into());
        assert_eq!(
            serde_json::to_string(&line).unwrap(),
            r#"{"base_key":null,"job":7,"kind":"build","lease_lost":false,"outcome":"not_buildable","package":"opt_user","reason":"why","request_key":"ab","toolchain":"host","variant_key":null,"version":"1.0.0"}"#
        );
    }

    /// The keys of the JSON object `text` at its top level, in the order printed.
    fn top_level_keys(text: &str) -> Vec<String> {
        let (mut depth, mut keys, mut in_string, mut escaped) = (0, Vec::new(), false, false);
        let mut current = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if in_string {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        in_string = false;
                        if depth == 1 && chars.peek() == Some(&':') {
                            keys.push(std::mem::take(&mut current));
                        }
                        current.clear();
                    }
                    _ => current.push(c),
                }
                continue;
            }
            match c {
                '"' => in_string = true,
                '{' | '[' => depth += 1,
                '}' | ']' => depth -= 1,
                _ => {}
            }
        }
        keys
    }

    /// Every field of a package line, printed in name order: the order `serde_json::json!`
    /// objects had, so the lines are byte for byte what they were.
    #[test]
    fn a_full_package_line_prints_its_fields_in_name_order() {
        let some = || Some("x".to_string());
        let line = PackageLine {
            app: "a".into(),
            artifact: some(),
            artifact_sha256: some(),
            artifact_size: Some(1),
            base_key: some(),
            duration_ms: Some(2),
            key: some(),
            log: some(),
            manifest: some(),
            package: "p".into(),
            publish_error: some(),
            publish_result: some(),
            published: Some(true),
            reason: some(),
            status: "built",
            target: some(),
            version: "1".into(),
        };
        let keys = top_level_keys(&serde_json::to_string(&line).unwrap());
        assert_eq!(keys.len(), 17, "{keys:?}");
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);

        let audit = AuditJobLine {
            audit: None,
            job: 1,
            key: "k".into(),
            kind: JobKind::Audit,
            log: some(),
            outcome: "failed",
            package: "p".into(),
            reason: some(),
            version: "1".into(),
        };
        let keys = top_level_keys(&serde_json::to_string(&audit).unwrap());
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!((keys.len(), &keys), (8, &sorted));
    }
}
