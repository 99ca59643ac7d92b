//! Reproducibility audits: rebuild published artifacts independently and compare the bytes.
//!
//! For each selected build (`GET /precomp/v1/index…`) the auditor fetches the signed
//! manifest, makes the lock of its package and closure from the release tarballs alone and a
//! config giving the compile-time values it records ([`inputs`]), and builds it with the
//! builder library — the closure too, from source — in a fresh data directory of its own
//! (its own source cache, store and work directories, under another host path; nothing of
//! the builder's is reused), on its own toolchain (any image of the same OTP and Elixir).
//!
//! - Same key and same artifact digest: a **match**. The auditor countersigns the manifest
//!   and uploads it; the mirror appends the signature, and lists the auditor under
//!   `auditors` in the index. It also posts a signed `match` verdict: the audit's record
//!   (toolchain), which the index lists and the mirror's metrics count.
//! - Same key, other bytes: a **mismatch**. The auditor downloads the published artifact,
//!   compares it file by file and beams chunk by chunk ([`diff`], [`beam`]), and posts a
//!   signed verdict ([`precomp_proto::verdict`]) that names each file and chunk and what was
//!   decoded of the difference. The mirror flags the build.
//! - A rebuild that fails, or whose key differs (its inputs could not be reproduced), is
//!   reported as **failed**; nothing is posted: that says nothing about the published bytes.
//! - A build for another OTP/Elixir or native target than the auditor's toolchain is
//!   **skipped**.
//! - A build whose manifest records another build recipe than this precomp's
//!   ([`precomp_builder::RECIPE`]), or none, is **other_recipe**: not rebuilt, nothing
//!   posted. Its rebuild may differ in bytes that depend on how it is compiled (the atom list
//!   it boots from), not on what: only an auditor of its recipe can compare it.
//!
//! `precomp audit` selects builds from the index ([`select`]) and audits them all
//! ([`Auditor::audit`]); `precomp worker --audit` audits the builds the mirror leases to it,
//! one at a time ([`Auditor::audit_leased`], a [`Candidate`] from the lease's build).

pub mod beam;
pub mod diff;
pub use precomp_proto::etf;
pub mod inputs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use precomp_builder::build::{native_target, BuildContext};
use precomp_builder::config::SandboxedConfig;
use precomp_builder::run::{self, Status};
use precomp_builder::sources::SourceCache;
use precomp_builder::store::BuildStore;
use precomp_http::artifacts::ArtifactClient;
use precomp_proto::api::{AuditBuild, IndexBuild};
use precomp_proto::manifest::{ArtifactSigningKey, Manifest, SignedManifest};
use precomp_proto::verdict::{self, Verdict, MATCH, MISMATCH};
use precomp_sandbox::toolchain::Toolchain;
use precomp_sandbox::Sandbox;
use prost::Message;

/// What can stop an audit.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Mirror(#[from] precomp_http::Error),
    #[error("{0}")]
    Build(#[from] precomp_builder::BuildError),
    #[error("{0}")]
    Manifest(#[from] precomp_proto::manifest::ManifestError),
    #[error("{0}")]
    Lock(#[from] precomp_proto::buildkey::BuildKeyError),
    #[error("verdict: {0}")]
    Verdict(#[from] precomp_proto::verdict::VerdictError),
    #[error("{0}")]
    Artifact(String),
    #[error("{0}")]
    Invalid(String),
    /// The rebuild was cancelled through [`Auditor::cancel`]: it says nothing about the
    /// published bytes.
    #[error("the rebuild was cancelled: {reason}")]
    Cancelled { reason: String },
}

impl AuditError {
    /// Whether the same audit may succeed later or elsewhere: the mirror unreachable, slow or
    /// failing (5xx), a fetch, the sandbox or local files failing. Anything else — an
    /// inconsistent manifest, a refused verdict, an input that cannot be reproduced — would
    /// fail the same way again.
    pub fn may_pass(&self) -> bool {
        use precomp_builder::BuildError;
        match self {
            AuditError::Io { .. } | AuditError::Cancelled { .. } => true,
            AuditError::Mirror(error) => error.is_transient(),
            AuditError::Build(error) => matches!(
                error,
                BuildError::Io { .. }
                    | BuildError::Fetch { .. }
                    | BuildError::Http(_)
                    | BuildError::Sandbox(_)
                    | BuildError::Store { .. }
                    | BuildError::Cancelled { .. }
            ),
            _ => false,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which published builds to audit. With nothing set: every build.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only this package's builds.
    pub package: Option<String>,
    /// Only builds with fewer than this many audits (auditors who countersigned or posted a
    /// verdict).
    pub fewer_than: Option<usize>,
    /// Then a random sample of this many (among those the toolchain can rebuild, of this
    /// precomp's build recipe).
    pub sample: Option<usize>,
}

/// How many distinct auditors have weighed in on a build: countersigned or posted a verdict.
pub fn audits(build: &IndexBuild) -> usize {
    let mut ids: Vec<&str> = build.auditors.iter().map(String::as_str).collect();
    ids.extend(build.verdicts.iter().map(|v| v.auditor.as_str()));
    ids.sort();
    ids.dedup();
    ids.len()
}

/// A published build to audit.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub package: String,
    pub build: IndexBuild,
}

/// The build of an audit job's lease (`precomp worker --audit`).
impl From<AuditBuild> for Candidate {
    fn from(leased: AuditBuild) -> Candidate {
        Candidate {
            package: leased.package,
            build: leased.build,
        }
    }
}

/// The builds of the mirror that `selection` picks, sorted by package, version and key.
pub fn select(
    client: &ArtifactClient,
    runtime: &tokio::runtime::Runtime,
    selection: &Selection,
    toolchain: &Toolchain,
) -> Result<Vec<Candidate>, AuditError> {
    let packages = match &selection.package {
        Some(package) => vec![package.clone()],
        None => runtime.block_on(client.packages())?.packages,
    };
    let mut builds = Vec::new();
    for package in packages {
        let index = runtime.block_on(client.index(&package))?;
        builds.extend(index.builds.into_iter().map(|b| (package.clone(), b)));
    }
    let mut builds: Vec<(String, IndexBuild)> = builds
        .into_iter()
        .filter(|(_, b)| selection.fewer_than.is_none_or(|n| audits(b) < n))
        .collect();
    if let Some(n) = selection.sample {
        builds.retain(|(_, b)| {
            fits(b, toolchain).is_ok() && b.recipe.as_deref() == Some(precomp_builder::RECIPE)
        });
        shuffle(&mut builds);
        builds.truncate(n);
    }
    builds.sort_by(|(p, a), (q, b)| (p, &a.version, &a.key).cmp(&(q, &b.version, &b.key)));
    Ok(builds
        .into_iter()
        .map(|(package, build)| Candidate { package, build })
        .collect())
}

fn shuffle<T>(items: &mut [T]) {
    use rand_core::RngCore;
    for i in (1..items.len()).rev() {
        let j = (rand_core::OsRng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Whether `toolchain` can rebuild `build`: the same OTP major and Elixir, and for native
/// code the same target.
pub fn fits(build: &IndexBuild, toolchain: &Toolchain) -> Result<(), String> {
    if build.key_format != precomp_proto::manifest::MANIFEST_FORMAT {
        return Err(format!(
            "of key format v{}: a rebuild gives a key format v2 key, so it cannot be compared \
             (builders rebuild it with key format v2)",
            build.key_format
        ));
    }
    if build.otp_major != toolchain.otp || build.elixir != toolchain.elixir {
        return Err(format!(
            "built with OTP {} / Elixir {}; toolchain {} has OTP {} / Elixir {} (audit it with \
             --toolchain of that tuple)",
            build.otp_major, build.elixir, toolchain.id, toolchain.otp, toolchain.elixir
        ));
    }
    if build.target != "any" {
        let native = native_target(&toolchain.architecture)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| toolchain.architecture.clone());
        if build.target != native {
            return Err(format!(
                "native code for {}; this toolchain builds {native}",
                build.target
            ));
        }
    }
    Ok(())
}

/// Everything an audit run shares.
pub struct Auditor<'a> {
    pub sandbox: &'a Sandbox,
    pub toolchain: &'a Toolchain,
    /// The auditor's signing key: countersignatures, verdicts, and its own rebuilds.
    pub key: &'a ArtifactSigningKey,
    /// The mirror: manifests, artifacts, sources; where verdicts go.
    pub client: &'a ArtifactClient,
    pub runtime: &'a tokio::runtime::Runtime,
    /// The mirror's URL, for sources (`/tarballs/…`).
    pub mirror: String,
    /// A fresh, empty directory of this run (sources, store, work): nothing is shared with
    /// a builder's data directory.
    pub work: PathBuf,
    /// Builds at a time: [`Auditor::audit`] audits up to this many candidates at once.
    pub jobs: usize,
    /// Compare only: countersign nothing, post nothing.
    pub dry_run: bool,
    /// Keep each build's project directory.
    pub keep_work: bool,
    /// Stops the rebuild (its sandboxes killed, nothing stored): a worker's lost lease or
    /// shutdown. An audit cancelled this way is [`AuditError::Cancelled`].
    pub cancel: precomp_builder::Cancel,
}

/// How one build's audit ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The rebuild gave the published bytes. `published`: the mirror's answer to the
    /// countersigned manifest (`countersigned`, `unchanged`), `None` in a dry run.
    Match { published: Option<String> },
    /// The rebuild gave other bytes. `flagged`: the mirror's answer to the verdict, `None`
    /// in a dry run.
    Mismatch {
        verdict: Box<Verdict>,
        flagged: Option<bool>,
    },
    /// The toolchain cannot rebuild it.
    Skipped { reason: String },
    /// Built with another build recipe than this precomp's, or an unknown one (`recipe`:
    /// the manifest's, `None` when it records none): not rebuilt, nothing posted.
    OtherRecipe { recipe: Option<String> },
    /// No comparison: the rebuild failed, or its inputs could not be reproduced, or the
    /// mirror did not answer.
    Failed {
        reason: String,
        log: Option<PathBuf>,
    },
}

/// One build's audit.
#[derive(Clone, Debug)]
pub struct AuditReport {
    pub package: String,
    pub version: String,
    pub key: String,
    pub outcome: Outcome,
    pub duration: Duration,
}

impl AuditReport {
    pub fn result(&self) -> &'static str {
        match self.outcome {
            Outcome::Match { .. } => "match",
            Outcome::Mismatch { .. } => "mismatch",
            Outcome::Skipped { .. } => "skipped",
            Outcome::OtherRecipe { .. } => "other_recipe",
            Outcome::Failed { .. } => "failed",
        }
    }

    /// One `precomp audit --json` line ([`AuditLine`]).
    pub fn line(&self) -> AuditLine {
        let mut line = AuditLine {
            chunks: None,
            countersigned: None,
            duration_ms: self.duration.as_millis() as u64,
            files: None,
            flagged: None,
            key: self.key.clone(),
            log: None,
            package: self.package.clone(),
            published_sha256: None,
            reason: None,
            rebuilt_sha256: None,
            recipe: None,
            result: self.result(),
            summary: None,
            version: self.version.clone(),
        };
        match &self.outcome {
            Outcome::Match { published } => line.countersigned = Some(published.clone()),
            Outcome::Mismatch { verdict, flagged } => {
                line.summary = Some(verdict.summary.clone());
                line.chunks = Some(verdict.chunk_ids());
                line.published_sha256 = Some(hex::encode(&verdict.published_sha256));
                line.rebuilt_sha256 = Some(hex::encode(&verdict.rebuilt_sha256));
                line.files = Some(precomp_artifacts::verdict_files_json(verdict));
                line.flagged = Some(*flagged);
            }
            Outcome::Skipped { reason } => line.reason = Some(reason.clone()),
            Outcome::OtherRecipe { recipe } => {
                line.reason = Some(other_recipe_reason(&self.key, recipe.as_deref()));
                line.recipe = Some(recipe.clone());
            }
            Outcome::Failed { reason, log } => {
                line.reason = Some(reason.clone());
                line.log = log.as_ref().map(|log| log.display().to_string());
            }
        }
        line
    }
}

/// A `precomp audit --json` line (docs/audit.md): the build, `result` (`match`, `mismatch`,
/// `skipped`, `other_recipe`, `failed`) and what that result has — `countersigned` for a
/// match (the mirror's answer, null in a dry run); `summary`, `chunks`, `published_sha256`,
/// `rebuilt_sha256`, `files` and `flagged` (null in a dry run) for a mismatch; `recipe` (the
/// build's, null when unknown) for `other_recipe`; `reason` (and `log`) otherwise.
/// Fields in name order, as the lines have always been printed.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AuditLine {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub countersigned: Option<Option<String>>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<precomp_proto::api::FileDifferenceJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flagged: Option<Option<bool>>,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    pub package: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuilt_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipe: Option<Option<String>>,
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    pub version: String,
}

/// Progress callbacks (the CLI prints them).
pub trait Progress {
    fn started(&self, _candidate: &Candidate) {}
    fn finished(&self, _report: &AuditReport) {}
}

impl Progress for () {}

impl Auditor<'_> {
    /// Audits `candidates`, up to `jobs` of them at a time (each rebuild then gets its share
    /// of the `jobs` builds at a time), sharing the run's source cache and store: a closure
    /// package two rebuilds need is built by either, or by both at once (the same bytes,
    /// stored atomically). The reports come in the candidates' order. A build's own problems
    /// are its report's; only the run's setup fails the call.
    pub fn audit(
        &self,
        candidates: &[Candidate],
        progress: &(dyn Progress + Sync),
    ) -> Result<Vec<AuditReport>, AuditError> {
        let (sources, store) = self.prepare()?;
        let lanes = self.jobs.clamp(1, candidates.len().max(1));
        let jobs = (self.jobs / lanes).max(1);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let reports: std::sync::Mutex<Vec<Option<Result<AuditReport, AuditError>>>> =
            std::sync::Mutex::new((0..candidates.len()).map(|_| None).collect());
        std::thread::scope(|scope| {
            for _ in 0..lanes {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(candidate) = candidates.get(i) else {
                        return;
                    };
                    let report =
                        self.audit_candidate(candidate, &sources, &store, progress, jobs, false);
                    reports.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(report);
                });
            }
        });
        reports
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .map(|report| report.expect("every candidate is audited"))
            .collect()
    }

    /// Audits one build leased from the mirror (`precomp worker --audit`), as
    /// [`Auditor::audit`] does, in this auditor's fresh `work` directory. An error that
    /// [may pass](AuditError::may_pass) — the mirror or the sandbox failing — is the call's,
    /// so the job goes back to the queue (`progress` then saw `started` only); every other
    /// problem is the report's `Failed`, which ends the job for this auditor.
    pub fn audit_leased(
        &self,
        candidate: &Candidate,
        progress: &dyn Progress,
    ) -> Result<AuditReport, AuditError> {
        let (sources, store) = self.prepare()?;
        self.audit_candidate(candidate, &sources, &store, progress, self.jobs, true)
    }

    /// The run's directories, source cache and build store.
    fn prepare(&self) -> Result<(SourceCache, BuildStore), AuditError> {
        for dir in ["sources", "store", "work", "inputs", "diff"] {
            let path = self.work.join(dir);
            std::fs::create_dir_all(&path).map_err(io(&path))?;
            set_mode(&path, 0o755)?;
        }
        let sources = SourceCache::new(
            self.work.join("sources"),
            &self.mirror,
            self.client.http().settings().token.clone(),
        )?;
        let store = BuildStore::open(&self.work.join("store"))?;
        Ok((sources, store))
    }

    /// One build's audit and report, its rebuild with up to `jobs` builds at a time; with
    /// `passing_errors`, an error that may pass is returned rather than reported as `Failed`.
    fn audit_candidate(
        &self,
        candidate: &Candidate,
        sources: &SourceCache,
        store: &BuildStore,
        progress: &dyn Progress,
        jobs: usize,
        passing_errors: bool,
    ) -> Result<AuditReport, AuditError> {
        let build = &candidate.build;
        progress.started(candidate);
        let started = Instant::now();
        let outcome = match fits(build, self.toolchain) {
            Err(reason) => Outcome::Skipped { reason },
            Ok(()) => match self.audit_one(build, sources, store, jobs) {
                Ok(outcome) => outcome,
                Err(e) if passing_errors && e.may_pass() => return Err(e),
                Err(e) => Outcome::Failed {
                    reason: e.to_string(),
                    log: None,
                },
            },
        };
        let report = AuditReport {
            package: candidate.package.clone(),
            version: build.version.clone(),
            key: build.key.clone(),
            outcome,
            duration: started.elapsed(),
        };
        progress.finished(&report);
        Ok(report)
    }

    fn audit_one(
        &self,
        build: &IndexBuild,
        sources: &SourceCache,
        store: &BuildStore,
        jobs: usize,
    ) -> Result<Outcome, AuditError> {
        let published_bytes = self
            .runtime
            .block_on(self.client.manifest(&build.key))?
            .ok_or_else(|| {
                AuditError::Invalid(format!(
                    "the index lists {} but the mirror has no manifest for it",
                    build.key
                ))
            })?;
        let signed = SignedManifest::decode(&published_bytes)?;
        let manifest = Manifest::decode(signed.manifest.as_slice())
            .map_err(precomp_proto::manifest::ManifestError::DecodeManifest)?;
        manifest.check_key()?;
        if manifest.key != build.key {
            return Err(AuditError::Invalid(format!(
                "the mirror served manifest {} for key {}",
                manifest.key, build.key
            )));
        }
        // Like with like: a rebuild with another recipe proves nothing about these bytes.
        let recipe = manifest.provenance.as_ref().and_then(|p| p.recipe.clone());
        if recipe.as_deref() != Some(precomp_builder::RECIPE) {
            return Ok(Outcome::OtherRecipe { recipe });
        }
        let output = manifest
            .output
            .as_ref()
            .ok_or_else(|| AuditError::Invalid("the manifest describes no artifact".into()))?;

        // The inputs, from the manifest alone, and the compile env its closure members'
        // manifests record (their keys name them; one the mirror lacks leaves its values to
        // the defaults, and a key that then differs says so).
        let (lock, app) = inputs::lock(&manifest, sources)?;
        let own = manifest.inputs()?;
        let mut compile_env = own.compile_env;
        // Each package is rebuilt with the manager its manifest records: Mix's choice in the
        // consumer's project, which the closure's lock alone may not give.
        let mut recorded_managers = vec![(own.package.name.clone(), own.manager)];
        for member in &manifest.closure {
            let Some(bytes) = self.runtime.block_on(self.client.manifest(&member.key))? else {
                continue;
            };
            let member_manifest = SignedManifest::decode(&bytes)
                .and_then(|signed| {
                    Manifest::decode(signed.manifest.as_slice())
                        .map_err(precomp_proto::manifest::ManifestError::DecodeManifest)
                })
                .and_then(|m| m.check_key())?;
            recorded_managers.push((
                member_manifest.package.name.clone(),
                member_manifest.manager,
            ));
            compile_env.extend(member_manifest.compile_env);
        }
        let config = match precomp_builder::config::config_exs(&compile_env) {
            Some(text) => {
                let path = self
                    .work
                    .join("inputs")
                    .join(format!("{}.exs", manifest.key));
                std::fs::write(&path, text).map_err(io(&path))?;
                Some(path)
            }
            None => None,
        };

        // The rebuild, with its closure, into the auditor's own store.
        let context = BuildContext {
            sandbox: self.sandbox,
            toolchain: self.toolchain,
            sources,
            key: self.key,
            mix_env: manifest.mix_env.clone(),
            config_env: "prod".into(),
            config,
            work_root: self.work.join("work"),
            keep_work: self.keep_work,
            cancel: self.cancel.clone(),
        };
        let compile_env = SandboxedConfig::new(&context);
        let trusted = [self.key.public_key()];
        let reuse = run::Reuse {
            store,
            trusted: &trusted,
            compile_env: &compile_env,
        };
        let mut managers =
            precomp_builder::managers::for_lock(sources, &lock, None, &self.toolchain.elixir)?;
        for (package, manager) in recorded_managers {
            if let Some((member_app, _)) = lock.hex().find(|(_, e)| e.package == package) {
                managers.insert(member_app.to_string(), manager);
            }
        }
        let results = run::build_lock(
            &context,
            &reuse,
            &lock,
            &managers,
            std::slice::from_ref(&app),
            jobs,
            &(),
        )?;
        let result = results
            .into_iter()
            .find(|r| r.app == app)
            .ok_or_else(|| AuditError::Invalid(format!("the rebuild did not report {app}")))?;
        let rebuilt = match (result.status, result.build) {
            (_, Some(stored)) => stored,
            (Status::Cancelled { reason }, None) => return Err(AuditError::Cancelled { reason }),
            (Status::Failed { reason, log, .. }, None) => {
                return Ok(Outcome::Failed {
                    reason: format!("the rebuild failed: {reason}"),
                    log: Some(log),
                })
            }
            (Status::Skipped { reason }, None) => {
                return Ok(Outcome::Failed {
                    reason: format!("the rebuild was skipped: {reason}"),
                    log: None,
                })
            }
            (_, None) => {
                return Ok(Outcome::Failed {
                    reason: "the rebuild has no artifact".into(),
                    log: None,
                })
            }
        };
        if rebuilt.manifest.key != manifest.key {
            return Ok(Outcome::Failed {
                reason: format!(
                    "the rebuild has key {}, not {}: its inputs could not be reproduced ({})",
                    rebuilt.manifest.key,
                    manifest.key,
                    inputs_difference(&manifest, &rebuilt.manifest)
                ),
                log: None,
            });
        }
        let rebuilt_output = rebuilt
            .manifest
            .output
            .as_ref()
            .ok_or_else(|| AuditError::Invalid("the rebuild has no output".into()))?;

        if rebuilt_output.artifact_sha256 == output.artifact_sha256 {
            if self.dry_run {
                return Ok(Outcome::Match { published: None });
            }
            let mut countersigned = signed.clone();
            countersigned.countersign(self.key);
            let (_, stored) = self.runtime.block_on(
                self.client
                    .upload_manifest(&manifest.key, countersigned.encode_to_vec()),
            )?;
            // And a match verdict: the audit's record (toolchain, when), which the index and
            // the mirror's metrics count.
            let verdict = Verdict {
                key: manifest.key.clone(),
                manifest_sha256: verdict::manifest_digest(&signed.manifest).to_vec(),
                result: MATCH.into(),
                published_sha256: output.artifact_sha256.clone(),
                rebuilt_sha256: rebuilt_output.artifact_sha256.clone(),
                rebuilt_size: rebuilt_output.artifact_size,
                toolchain_id: self.toolchain.id.clone(),
                toolchain_digest: self.toolchain.digest.clone(),
                summary: "the rebuild gave the same bytes".into(),
                ..Verdict::default()
            }
            .sign(self.key)?;
            self.runtime.block_on(
                self.client
                    .post_verdict(&manifest.key, verdict.encode_to_vec()),
            )?;
            return Ok(Outcome::Match {
                published: Some(stored.result),
            });
        }

        // A mismatch: what differs, signed, posted.
        let sha256: [u8; 32] = output.artifact_sha256.as_slice().try_into().map_err(|_| {
            AuditError::Invalid("the manifest's artifact digest is not 32 bytes".into())
        })?;
        let published_artifact = self
            .runtime
            .block_on(self.client.artifact(&sha256))?
            .ok_or_else(|| {
                AuditError::Invalid(format!(
                    "the mirror has the manifest but not artifact {}",
                    hex::encode(sha256)
                ))
            })?;
        let rebuilt_artifact =
            std::fs::read(&rebuilt.artifact_path).map_err(io(&rebuilt.artifact_path))?;
        let scratch = tempfile::Builder::new()
            .prefix(&format!("{}-", manifest.key))
            .tempdir_in(self.work.join("diff"))
            .map_err(io(&self.work.join("diff")))?;
        let files = diff::artifacts(&published_artifact, &rebuilt_artifact, scratch.path())?;
        let verdict = Verdict {
            key: manifest.key.clone(),
            manifest_sha256: verdict::manifest_digest(&signed.manifest).to_vec(),
            result: MISMATCH.into(),
            published_sha256: output.artifact_sha256.clone(),
            rebuilt_sha256: rebuilt_output.artifact_sha256.clone(),
            rebuilt_size: rebuilt_output.artifact_size,
            toolchain_id: self.toolchain.id.clone(),
            toolchain_digest: self.toolchain.digest.clone(),
            summary: diff::summary(&files),
            files,
            ..Verdict::default()
        };
        let signed_verdict = verdict.sign(self.key)?;
        let verdict = signed_verdict.verify(&[self.key.public_key()])?;
        let flagged = if self.dry_run {
            None
        } else {
            let stored = self.runtime.block_on(
                self.client
                    .post_verdict(&manifest.key, signed_verdict.encode_to_vec()),
            )?;
            Some(stored.flagged)
        };
        Ok(Outcome::Mismatch {
            verdict: Box::new(verdict),
            flagged,
        })
    }
}

/// Why a build of another recipe (`recipe`; `None`: unknown) is not audited, and by whom it
/// can be.
pub fn other_recipe_reason(key: &str, recipe: Option<&str>) -> String {
    let ours = precomp_builder::RECIPE;
    match recipe {
        Some(recipe) => format!(
            "{key} was built with recipe {recipe}; this precomp builds with recipe {ours}, so \
             its rebuild may differ in bytes that depend on how it compiles, not on what: audit \
             it with a precomp of recipe {recipe}"
        ),
        None => format!(
            "{key} records no build recipe (its builder predates recipes); this precomp builds \
             with recipe {ours}, so its rebuild may differ in bytes that depend on how it \
             compiles, not on what: audit it with a precomp of the version that built it"
        ),
    }
}

/// Which key input differs between the published manifest and the rebuild's.
fn inputs_difference(published: &Manifest, rebuilt: &Manifest) -> String {
    if published.compile_env != rebuilt.compile_env {
        let show = |m: &Manifest| {
            m.compile_env
                .iter()
                .map(|r| {
                    format!(
                        "{} {} = {}",
                        r.app,
                        r.path,
                        r.value.as_deref().unwrap_or("(unset)")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        return format!(
            "compile env: published [{}], rebuilt [{}]",
            show(published),
            show(rebuilt)
        );
    }
    if published.target != rebuilt.target {
        return format!(
            "target: published {}, rebuilt {}",
            published.target, rebuilt.target
        );
    }
    let differing: Vec<String> = published
        .closure
        .iter()
        .filter(|member| {
            rebuilt
                .closure
                .iter()
                .any(|other| other.name == member.name && other.key != member.key)
        })
        .map(|member| member.name.clone())
        .collect();
    if !differing.is_empty() {
        return format!(
            "the builds of its dependencies {} (their keys) differ",
            differing.join(", ")
        );
    }
    "the closure or toolchain".into()
}

fn set_mode(path: &Path, mode: u32) -> Result<(), AuditError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}
