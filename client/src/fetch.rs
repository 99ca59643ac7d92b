//! `precomp fetch`: for every Hex dependency the project needs, compute its build key as the
//! builder does, find the artifact on the mirror, verify it, and install it for Mix.
//!
//! Lookup (`docs/protocol.md`, "The build key"): the base key (everything but the compile
//! env) for target `any` and for this machine's native target; the mirror's index of the
//! package lists builds by base key with the compile-env paths each read; for each candidate
//! the consumer's config is evaluated for those paths (once per run, only when some
//! candidate needs it) and the full key computed; the candidate whose key matches is the
//! artifact. Its signed manifest is checked against the trust policy, its key against its
//! inputs and its inputs against ours, the artifact against the manifest's digests; only then
//! is anything written under `_build`.
//!
//! Whatever cannot be used is a miss, left to Mix, with its reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use precomp_proto::artifact;
use precomp_proto::buildkey::{BuildInputs, CompileEnvEntry, PackageRef, Target};
use precomp_proto::config::AppConfig;
use precomp_proto::lock::{LockEntry, MixLock};
use precomp_proto::manager::Manager;
use precomp_proto::manifest::{Manifest, SignedManifest};
use precomp_proto::term::{parse_erlang_terms, to_erlang_text, Term};

use crate::error::ClientError;
use crate::install::{self, Install};
use crate::mirror::{ByteCounter, HttpError, IndexBuild, MirrorClient, MissReport};
use crate::project::Project;
use crate::trust::{Refusal, TrustPolicy};

/// Everything a fetch needs.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// The Mix project (where mix.exs is).
    pub project_dir: PathBuf,
    /// The consumer's MIX_ENV.
    pub mix_env: String,
    /// The mirror's root URL.
    pub mirror: String,
    pub policy: TrustPolicy,
    /// Downloads at a time.
    pub jobs: usize,
    /// Extra attempts for transient HTTP failures.
    pub retries: u32,
    /// The native target, instead of the one Erlang reports.
    pub target: Option<Target>,
    /// Report misses to the mirror so builders make them.
    pub request_builds: bool,
}

/// Progress callbacks (the CLI draws a progress bar with them).
pub trait Observer: Send + Sync {
    /// The dependencies about to be looked up.
    fn started(&self, _deps: usize) {}
    /// Bytes received from the mirror.
    fn bytes(&self, _bytes: u64) {}
    /// One dependency is done.
    fn finished(&self, _dep: &DepReport) {}
}

/// An [`Observer`] that ignores everything.
pub struct Quiet;

impl Observer for Quiet {}

/// Why a dependency was left to Mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MissKind {
    /// The mirror has no build for these inputs.
    NoArtifact,
    /// The mirror's builds read compile-time config the consumer sets differently.
    CompileEnvMismatch,
    /// The mirror has native code for another target only.
    OtherTarget,
    /// A manifest or artifact failed verification: digests, signatures, key, inputs.
    VerificationFailed,
    /// Signed by nobody the client trusts.
    Untrusted,
    /// Signed only by revoked keys.
    Revoked,
    /// Trusted signatures that do not meet the policy (count, required signers, auditors).
    Policy,
    /// An auditor rebuilt it and got other bytes (the policy names auditors).
    Flagged,
    /// The mirror could not be reached or answered with an error.
    Unavailable,
    /// No build key: the closure is not all Hex, or the lock entry is incomplete.
    NotBuildable,
    /// The project's dep options change how Mix builds it (`compile:`, `manager:`, ...).
    CustomOptions,
    /// `deps/<app>` is missing: `mix deps.get` has not fetched it.
    NotFetched,
    /// The consumer's config could not be evaluated.
    Config,
    /// Writing under `_build` failed.
    InstallFailed,
}

impl MissKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MissKind::NoArtifact => "no_artifact",
            MissKind::CompileEnvMismatch => "compile_env_mismatch",
            MissKind::OtherTarget => "other_target",
            MissKind::VerificationFailed => "verification_failed",
            MissKind::Untrusted => "untrusted",
            MissKind::Revoked => "revoked",
            MissKind::Policy => "policy",
            MissKind::Flagged => "flagged",
            MissKind::Unavailable => "unavailable",
            MissKind::NotBuildable => "not_buildable",
            MissKind::CustomOptions => "custom_options",
            MissKind::NotFetched => "not_fetched",
            MissKind::Config => "config",
            MissKind::InstallFailed => "install_failed",
        }
    }

    fn of_refusal(refusal: &Refusal) -> MissKind {
        match refusal.kind() {
            "untrusted" => MissKind::Untrusted,
            "revoked" => MissKind::Revoked,
            "policy" => MissKind::Policy,
            _ => MissKind::VerificationFailed,
        }
    }
}

/// What happened to one dependency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Downloaded, verified and installed.
    Installed {
        key: String,
        /// Artifact size.
        bytes: u64,
        signers: Vec<String>,
    },
    /// Already installed with the same key: left alone.
    Current { key: String },
    /// Left to Mix.
    Miss {
        kind: MissKind,
        reason: String,
        /// A precompiled install with another key was removed, so Mix rebuilds it.
        removed_stale: bool,
    },
    /// Not looked up: Mix builds it (`mix_builds`: a git or path dep) or does not need it in
    /// this env.
    Skipped { reason: String, mix_builds: bool },
}

/// A miss that builders can fix: what `--request-builds` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildRequest {
    pub base_key: String,
    pub target: String,
}

/// One dependency's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepReport {
    pub app: String,
    /// The Hex package and version (Hex deps only).
    pub package: Option<String>,
    pub version: Option<String>,
    pub outcome: Outcome,
    pub build_request: Option<BuildRequest>,
}

impl DepReport {
    pub fn is_hit(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Installed { .. } | Outcome::Current { .. }
        )
    }

    pub fn is_miss(&self) -> bool {
        matches!(self.outcome, Outcome::Miss { .. })
    }

    /// One JSON object (a `--json` line).
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::json!({
            "app": self.app,
            "package": self.package,
            "version": self.version,
        });
        let object = value.as_object_mut().expect("an object");
        match &self.outcome {
            Outcome::Installed {
                key,
                bytes,
                signers,
            } => {
                object.insert("status".into(), "installed".into());
                object.insert("key".into(), key.as_str().into());
                object.insert("bytes".into(), (*bytes).into());
                object.insert("signers".into(), serde_json::json!(signers));
            }
            Outcome::Current { key } => {
                object.insert("status".into(), "current".into());
                object.insert("key".into(), key.as_str().into());
            }
            Outcome::Miss {
                kind,
                reason,
                removed_stale,
            } => {
                object.insert("status".into(), "miss".into());
                object.insert("kind".into(), kind.as_str().into());
                object.insert("reason".into(), reason.as_str().into());
                object.insert("removed_stale".into(), (*removed_stale).into());
            }
            Outcome::Skipped { reason, mix_builds } => {
                object.insert("status".into(), "skipped".into());
                object.insert("reason".into(), reason.as_str().into());
                object.insert("mix_builds".into(), (*mix_builds).into());
            }
        }
        if let Some(request) = &self.build_request {
            object.insert("base_key".into(), request.base_key.as_str().into());
        }
        value
    }
}

/// The result of a fetch.
#[derive(Clone, Debug)]
pub struct FetchReport {
    /// Sorted by app.
    pub deps: Vec<DepReport>,
    /// Bytes received from the mirror.
    pub bytes: u64,
    pub elapsed: Duration,
    /// Apps put back after an interrupted earlier run.
    pub recovered: Vec<String>,
    /// Misses reported to the mirror (`--request-builds`), and reports that failed.
    pub requested: usize,
    pub request_errors: Vec<String>,
    pub mix_env: String,
    pub elixir: String,
    pub otp_major: String,
    pub native_target: Option<String>,
    pub build_path: PathBuf,
}

impl FetchReport {
    pub fn hits(&self) -> usize {
        self.deps.iter().filter(|d| d.is_hit()).count()
    }

    pub fn installed(&self) -> usize {
        self.deps
            .iter()
            .filter(|d| matches!(d.outcome, Outcome::Installed { .. }))
            .count()
    }

    pub fn misses(&self) -> usize {
        self.deps.iter().filter(|d| d.is_miss()).count()
    }

    /// The deps Mix still has to compile: every miss, and git or path deps. What
    /// `--print-missing` prints for `mix deps.compile`.
    pub fn missing_apps(&self) -> Vec<&str> {
        self.deps
            .iter()
            .filter(|d| {
                d.is_miss()
                    || matches!(
                        d.outcome,
                        Outcome::Skipped {
                            mix_builds: true,
                            ..
                        }
                    )
            })
            .map(|d| d.app.as_str())
            .collect()
    }

    /// The summary object (the last `--json` line).
    pub fn summary_json(&self) -> serde_json::Value {
        let skipped = self.deps.len() - self.hits() - self.misses();
        serde_json::json!({
            "summary": true,
            "hits": self.hits(),
            "installed": self.installed(),
            "current": self.hits() - self.installed(),
            "misses": self.misses(),
            "skipped": skipped,
            "bytes": self.bytes,
            "seconds": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "missing": self.missing_apps(),
            "requested_builds": self.requested,
            "mix_env": self.mix_env,
            "elixir": self.elixir,
            "otp": self.otp_major,
            "target": self.native_target,
        })
    }

    /// The one-line human summary.
    pub fn summary_line(&self) -> String {
        let current = self.hits() - self.installed();
        format!(
            "precomp fetch: {} hit{} ({} installed, {} already current), {} miss{}, {} downloaded in {:.1} s",
            self.hits(),
            if self.hits() == 1 { "" } else { "s" },
            self.installed(),
            current,
            self.misses(),
            if self.misses() == 1 { "" } else { "es" },
            human_bytes(self.bytes),
            self.elapsed.as_secs_f64()
        )
    }
}

/// `1.5 MiB` style sizes.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// What every lookup of one run shares.
struct Run {
    project: Project,
    lock: MixLock,
    /// The manager Mix uses for each dependency in this project ([`Project::mix_managers`]).
    managers: BTreeMap<String, Option<Manager>>,
    policy: TrustPolicy,
    client: MirrorClient,
    native: Option<Target>,
    config: tokio::sync::OnceCell<Result<Arc<AppConfig>, String>>,
    counter: Counter,
}

struct Counter {
    total: AtomicU64,
    observer: Arc<dyn Observer>,
}

impl ByteCounter for Counter {
    fn add(&self, bytes: u64) {
        self.total.fetch_add(bytes, Ordering::Relaxed);
        self.observer.bytes(bytes);
    }
}

impl Run {
    /// The consumer's config, evaluated once per run on first use.
    async fn config(&self) -> Result<Arc<AppConfig>, String> {
        self.config
            .get_or_init(|| async {
                let project = self.project.clone();
                tokio::task::spawn_blocking(move || crate::consumer_config::evaluate(&project))
                    .await
                    .map_err(|e| format!("evaluating the config: {e}"))?
                    .map(Arc::new)
            })
            .await
            .clone()
    }

    /// Our values for the compile-env paths `recorded` (values ignored).
    async fn compile_env_for(
        &self,
        recorded: &[CompileEnvEntry],
    ) -> Result<Vec<CompileEnvEntry>, String> {
        if recorded.is_empty() {
            return Ok(Vec::new());
        }
        let config = self.config().await?;
        config.entries_for(recorded).map_err(|e| e.to_string())
    }
}

/// Runs a fetch in the project of `options`.
pub async fn fetch(
    options: FetchOptions,
    observer: Arc<dyn Observer>,
) -> Result<FetchReport, ClientError> {
    let started = Instant::now();
    let client = MirrorClient::new(&options.mirror, options.retries)?;
    let dir = options.project_dir.clone();
    let mix_env = options.mix_env.clone();
    let project = tokio::task::spawn_blocking(move || Project::probe(&dir, &mix_env))
        .await
        .map_err(|e| ClientError::Internal(e.to_string()))??;
    let lock_text = read_lock(&project.lockfile)?;
    let lock = MixLock::parse(&lock_text).map_err(|source| ClientError::Lock {
        path: project.lockfile.clone(),
        source,
    })?;
    let native = match options.target.clone() {
        Some(target) => Some(target),
        None => match project.native_target() {
            Ok(target) => Some(target),
            Err(e) => {
                tracing::warn!("{e}; looking up target-independent artifacts only");
                None
            }
        },
    };
    let lib_dir = project.lib_dir();
    let guard_dir = lib_dir.clone();
    let _guard = tokio::task::spawn_blocking(move || install::LibLock::acquire(&guard_dir))
        .await
        .map_err(|e| ClientError::Internal(e.to_string()))??;
    let recovered = install::recover(&lib_dir)?;
    for line in &recovered {
        tracing::info!("{line}");
    }

    let (wanted, skipped) = plan(&project, &lock);
    let managers = project.mix_managers(&lock);
    let run = Arc::new(Run {
        project,
        lock,
        managers,
        policy: options.policy,
        client,
        native,
        config: tokio::sync::OnceCell::new(),
        counter: Counter {
            total: AtomicU64::new(0),
            observer: observer.clone(),
        },
    });
    observer.started(wanted.len());

    let permits = Arc::new(tokio::sync::Semaphore::new(options.jobs.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (app, dep_env) in wanted {
        let run = run.clone();
        let permits = permits.clone();
        let observer = observer.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let report = resolve(&run, &app, &dep_env).await;
            observer.finished(&report);
            report
        });
    }
    let mut deps = skipped;
    while let Some(joined) = tasks.join_next().await {
        deps.push(joined.map_err(|e| ClientError::Internal(format!("a lookup task: {e}")))?);
    }
    deps.sort_by(|a, b| a.app.cmp(&b.app));

    if deps
        .iter()
        .any(|d| matches!(d.outcome, Outcome::Installed { .. }))
        || deps.iter().any(|d| {
            matches!(
                d.outcome,
                Outcome::Miss {
                    removed_stale: true,
                    ..
                }
            )
        })
    {
        for path in &run.project.compile_locks {
            install::touch_compile_lock(path)?;
        }
    }

    let (requested, request_errors) = if options.request_builds {
        request_builds(&run, &deps, &lock_text).await
    } else {
        (0, Vec::new())
    };
    drop(_guard);

    Ok(FetchReport {
        deps,
        bytes: run.counter.total.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        recovered,
        requested,
        request_errors,
        mix_env: run.project.mix_env.clone(),
        elixir: run.project.elixir.clone(),
        otp_major: run.project.otp_major.clone(),
        native_target: run.native.as_ref().map(Target::to_string),
        build_path: run.project.build_path.clone(),
    })
}

fn read_lock(path: &Path) -> Result<String, ClientError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ClientError::NoLock {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(ClientError::io(path)(e)),
        Ok(meta) if meta.len() > precomp_proto::lock::MAX_LOCK_SIZE as u64 => {
            return Err(ClientError::Lock {
                path: path.to_path_buf(),
                source: precomp_proto::lock::LockError::TooLarge {
                    size: meta.len() as usize,
                    max: precomp_proto::lock::MAX_LOCK_SIZE,
                },
            })
        }
        Ok(_) => {}
    }
    std::fs::read_to_string(path).map_err(ClientError::io(path))
}

/// Which lock entries this env needs: the Hex ones to look up, with the dep's Mix env, and
/// the rest as skipped. Needed is everything reachable in the lock from the deps the project
/// declares for this env and target; when a declared git or path dep (whose own deps the
/// lock does not list) is needed, every entry is.
fn plan(project: &Project, lock: &MixLock) -> (Vec<(String, String)>, Vec<DepReport>) {
    let mut everything = false;
    let mut stack: Vec<String> = Vec::new();
    for dep in project.deps.iter().filter(|d| d.active) {
        match lock.entries.get(&dep.app) {
            Some(LockEntry::Hex(_)) => stack.push(dep.app.clone()),
            // An umbrella sibling: its own declared deps are in `project.deps` already.
            None if project.apps.contains(&dep.app) => {}
            _ => {
                stack.push(dep.app.clone());
                everything = true;
            }
        }
    }
    let mut needed: BTreeSet<String> = BTreeSet::new();
    while let Some(app) = stack.pop() {
        if !needed.insert(app.clone()) {
            continue;
        }
        match lock.entries.get(&app) {
            Some(LockEntry::Hex(entry)) => {
                for dep in &entry.deps {
                    if lock.entries.contains_key(&dep.app) && !needed.contains(&dep.app) {
                        stack.push(dep.app.clone());
                    }
                }
            }
            Some(_) => everything = true,
            None => {}
        }
    }
    let mut wanted = Vec::new();
    let mut skipped = Vec::new();
    for (app, entry) in &lock.entries {
        let is_needed = everything || needed.contains(app);
        match entry {
            LockEntry::Hex(_) if is_needed => {
                let env = project
                    .declared(app)
                    .map(|d| d.env.clone())
                    .unwrap_or_else(|| "prod".to_string());
                wanted.push((app.clone(), env));
            }
            LockEntry::Hex(hex) => skipped.push(DepReport {
                app: app.clone(),
                package: Some(hex.package.clone()),
                version: Some(hex.version.clone()),
                outcome: Outcome::Skipped {
                    reason: format!(
                        "not used with MIX_ENV={} MIX_TARGET={}",
                        project.mix_env, project.mix_target
                    ),
                    mix_builds: false,
                },
                build_request: None,
            }),
            other => {
                let scm = match other {
                    LockEntry::Git(_) => "git".to_string(),
                    LockEntry::Other { scm } => scm.clone(),
                    LockEntry::Hex(_) => unreachable!(),
                };
                skipped.push(DepReport {
                    app: app.clone(),
                    package: None,
                    version: None,
                    outcome: Outcome::Skipped {
                        reason: format!("from {scm}, not Hex: Mix builds it"),
                        mix_builds: is_needed,
                    },
                    build_request: None,
                });
            }
        }
    }
    (wanted, skipped)
}

/// A miss on its way out of [`lookup`].
struct Missed {
    kind: MissKind,
    reason: String,
    request: Option<BuildRequest>,
}

fn missed(kind: MissKind, reason: impl Into<String>) -> Missed {
    Missed {
        kind,
        reason: reason.into(),
        request: None,
    }
}

/// The base key inputs of a dependency.
struct Keys {
    inputs: BuildInputs,
    any: String,
    native: Option<(Target, String)>,
}

impl Keys {
    fn target_of(&self, base_key: &str) -> Option<Target> {
        if base_key == self.any {
            return Some(Target::Any);
        }
        match &self.native {
            Some((target, key)) if key == base_key => Some(target.clone()),
            _ => None,
        }
    }
}

async fn resolve(run: &Run, app: &str, dep_env: &str) -> DepReport {
    let (package, version) = match run.lock.entries.get(app) {
        Some(LockEntry::Hex(entry)) => (Some(entry.package.clone()), Some(entry.version.clone())),
        _ => (None, None),
    };
    let lib_dir = run.project.lib_dir();
    let outcome = match lookup(run, app, dep_env).await {
        Ok(outcome) => Ok(outcome),
        Err(miss) => {
            // A precompiled install with another key is wrong for this build now: remove it
            // so Mix compiles the dependency instead of trusting it.
            let mut removed_stale = false;
            if install::is_precompiled(&lib_dir, app) {
                match install::remove(&lib_dir, app) {
                    Ok(()) => removed_stale = true,
                    Err(e) => tracing::warn!("{app}: removing the stale precompiled build: {e}"),
                }
            }
            Err((miss, removed_stale))
        }
    };
    match outcome {
        Ok(outcome) => DepReport {
            app: app.to_string(),
            package,
            version,
            outcome,
            build_request: None,
        },
        Err((miss, removed_stale)) => DepReport {
            app: app.to_string(),
            package,
            version,
            outcome: Outcome::Miss {
                kind: miss.kind,
                reason: miss.reason,
                removed_stale,
            },
            build_request: miss.request,
        },
    }
}

async fn lookup(run: &Run, app: &str, dep_env: &str) -> Result<Outcome, Missed> {
    let project = &run.project;
    let deps_dir = project.deps_path.join(app);
    if !deps_dir.is_dir() {
        return Err(missed(
            MissKind::NotFetched,
            format!(
                "{} is missing: run `mix deps.get` before precomp fetch",
                deps_dir.display()
            ),
        ));
    }
    if let Some(declared) = project.declared(app) {
        if !declared.custom.is_empty() {
            return Err(missed(
                MissKind::CustomOptions,
                format!(
                    "mix.exs sets {} for it: artifacts are built the package's own way",
                    declared
                        .custom
                        .iter()
                        .map(|o| format!("{o}:"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let (package, closure) = run
        .lock
        .closure(app)
        .map_err(|e| missed(MissKind::NotBuildable, e.to_string()))?;
    let keys = keys(run, package, closure, dep_env)?;
    let fetch_marker = deps_dir.join(".fetch");
    let mix_built = run.managers.get(app) == Some(&Some(Manager::Mix));
    let elixir_scm = mix_built.then_some(project.elixir_scm.as_slice());
    let lib_dir = project.lib_dir();

    // Already installed with the key this build has: leave it, refresh Mix's markers.
    if let Some(installed) = install::installed(&lib_dir, app) {
        match current_key(run, &keys, &installed).await {
            Some(key) => {
                install::refresh_markers(&lib_dir, app, &fetch_marker, elixir_scm).map_err(
                    |e| missed(MissKind::InstallFailed, format!("refreshing markers: {e}")),
                )?;
                return Ok(Outcome::Current { key });
            }
            None => tracing::debug!("{app}: the installed build is not this build's"),
        }
    }

    let package_name = &keys.inputs.package.name;
    let index = match run.client.index(package_name, &run.counter).await {
        Ok(Some(index)) => index,
        Ok(None) => {
            return Err(request(
                missed(
                    MissKind::NoArtifact,
                    format!("the mirror has no builds of {package_name}"),
                ),
                &keys,
                false,
            ))
        }
        Err(e) => return Err(missed(MissKind::Unavailable, e.to_string())),
    };
    let candidates: Vec<&IndexBuild> = index
        .builds
        .iter()
        .filter(|b| keys.target_of(&b.base_key).is_some())
        .collect();
    if candidates.is_empty() {
        return Err(no_candidate(&keys, &index.builds));
    }

    // Our full key for each candidate's compile-env paths; the one that matches.
    let mut chosen = None;
    let mut mismatch = None;
    for candidate in &candidates {
        let recorded = index_compile_env(candidate).map_err(|e| {
            missed(
                MissKind::VerificationFailed,
                format!("the index's compile env of {}: {e}", candidate.key),
            )
        })?;
        let ours = run
            .compile_env_for(&recorded)
            .await
            .map_err(|e| missed(MissKind::Config, e))?;
        let target = keys
            .target_of(&candidate.base_key)
            .expect("candidates match a base key");
        let inputs = BuildInputs {
            target,
            compile_env: ours.clone(),
            ..keys.inputs.clone()
        };
        let key = inputs
            .key()
            .map_err(|e| missed(MissKind::NotBuildable, e.to_string()))?;
        if key.to_string() == candidate.key {
            chosen = Some((*candidate, inputs, key.to_string()));
            break;
        }
        if mismatch.is_none() {
            mismatch = Some(describe_compile_env_mismatch(&recorded, &ours));
        }
    }
    let Some((candidate, inputs, key)) = chosen else {
        return Err(missed(
            MissKind::CompileEnvMismatch,
            format!(
                "the mirror's builds of {package_name} {} were compiled with other config: {}",
                keys.inputs.package.version,
                mismatch.unwrap_or_default()
            ),
        ));
    };

    // With auditors in the policy, a build an audit found not reproducible is not used.
    if candidate.flagged && run.policy.has_auditors() {
        return Err(missed(MissKind::Flagged, flagged_reason(candidate)));
    }

    // The signed manifest, verified against the policy, its key and our inputs.
    let manifest_bytes = match run.client.manifest(&key, &run.counter).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return Err(missed(
                MissKind::NoArtifact,
                format!("the mirror lists build {key} but has no manifest for it"),
            ))
        }
        Err(e) => return Err(missed(MissKind::Unavailable, e.to_string())),
    };
    let (manifest, signers) = verify_manifest(run, &manifest_bytes, &inputs, &key)?;
    let output = manifest.output.clone().ok_or_else(|| {
        missed(
            MissKind::VerificationFailed,
            "the manifest describes no artifact",
        )
    })?;
    if output.native_code && inputs.target == Target::Any {
        return Err(missed(
            MissKind::VerificationFailed,
            "the manifest says target `any` but the artifact holds native code",
        ));
    }
    let app_file = format!("ebin/{app}.app");
    if !output.files.iter().any(|f| f.path == app_file) {
        return Err(missed(
            MissKind::VerificationFailed,
            format!("the artifact has no {app_file}"),
        ));
    }
    let sha256 = hex::encode(&output.artifact_sha256);
    if sha256 != candidate.artifact_sha256 {
        tracing::debug!(
            "{app}: the index names artifact {} but the signed manifest {sha256}; using the manifest's",
            candidate.artifact_sha256
        );
    }

    // The artifact, checked against every digest the manifest holds.
    let artifact = match run
        .client
        .artifact(&sha256, output.artifact_size, &run.counter)
        .await
    {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return Err(missed(
                MissKind::NoArtifact,
                format!("the mirror has the manifest but not artifact {sha256}"),
            ))
        }
        Err(e @ HttpError::TooLarge { .. }) => {
            return Err(missed(
                MissKind::VerificationFailed,
                format!(
                    "artifact {sha256}: {e} (the manifest says {})",
                    output.artifact_size
                ),
            ))
        }
        Err(e) => return Err(missed(MissKind::Unavailable, e.to_string())),
    };
    if let Err(e) = artifact::check(&artifact, &output) {
        return Err(missed(
            MissKind::VerificationFailed,
            format!("artifact {sha256} does not match its signed manifest: {e}"),
        ));
    }

    // Only now does anything touch _build.
    let bytes = artifact.len() as u64;
    let app_owned = app.to_string();
    let key_owned = key.clone();
    let scm = elixir_scm.map(<[u8]>::to_vec);
    tokio::task::spawn_blocking(move || {
        install::install(&Install {
            lib_dir: &lib_dir,
            app: &app_owned,
            artifact: &artifact,
            key: &key_owned,
            signed_manifest: &manifest_bytes,
            elixir_scm: scm.as_deref(),
            fetch_marker: &fetch_marker,
        })
    })
    .await
    .map_err(|e| missed(MissKind::InstallFailed, e.to_string()))?
    .map_err(|e| missed(MissKind::InstallFailed, e.to_string()))?;
    Ok(Outcome::Installed {
        key,
        bytes,
        signers,
    })
}

fn keys(
    run: &Run,
    package: PackageRef,
    closure: Vec<PackageRef>,
    dep_env: &str,
) -> Result<Keys, Missed> {
    let inputs = BuildInputs {
        package,
        closure,
        otp_major: run.project.otp_major.clone(),
        elixir: run.project.elixir.clone(),
        mix_env: dep_env.to_string(),
        target: Target::Any,
        compile_env: Vec::new(),
    };
    let base = |inputs: &BuildInputs| {
        inputs
            .base_key()
            .map(|k| k.to_string())
            .map_err(|e| missed(MissKind::NotBuildable, e.to_string()))
    };
    let any = base(&inputs)?;
    let native = match &run.native {
        Some(target) => {
            let native_inputs = BuildInputs {
                target: target.clone(),
                ..inputs.clone()
            };
            Some((target.clone(), base(&native_inputs)?))
        }
        None => None,
    };
    Ok(Keys {
        inputs,
        any,
        native,
    })
}

/// The key of an install that is this build's, if `installed` is: its stored manifest still
/// meets the policy, names one of our base keys, and our config gives its key.
async fn current_key(run: &Run, keys: &Keys, installed: &install::Installed) -> Option<String> {
    let signed = SignedManifest::decode(&installed.signed_manifest).ok()?;
    let (manifest, _) = run.policy.verify(&signed).ok()?;
    if manifest.key != installed.key {
        return None;
    }
    let target = keys.target_of(&manifest.base_key)?;
    let recorded = manifest.inputs().ok()?.compile_env;
    let ours = run.compile_env_for(&recorded).await.ok()?;
    let key = BuildInputs {
        target,
        compile_env: ours,
        ..keys.inputs.clone()
    }
    .key()
    .ok()?
    .to_string();
    (key == installed.key).then_some(key)
}

/// Decodes and verifies a signed manifest, and checks it is exactly the build we want.
fn verify_manifest(
    run: &Run,
    bytes: &[u8],
    ours: &BuildInputs,
    key: &str,
) -> Result<(Manifest, Vec<String>), Missed> {
    let signed = SignedManifest::decode(bytes)
        .map_err(|e| missed(MissKind::VerificationFailed, format!("manifest {key}: {e}")))?;
    let (manifest, signers) = run.policy.verify(&signed).map_err(|refusal| {
        missed(
            MissKind::of_refusal(&refusal),
            format!("manifest {key}: {}", run.policy.explain(&refusal)),
        )
    })?;
    let theirs = manifest
        .check_key()
        .map_err(|e| missed(MissKind::VerificationFailed, format!("manifest {key}: {e}")))?;
    if manifest.key != key {
        return Err(missed(
            MissKind::VerificationFailed,
            format!("the mirror served manifest {} for key {key}", manifest.key),
        ));
    }
    if let Some(difference) = describe_inputs_difference(ours, &theirs) {
        return Err(missed(
            MissKind::VerificationFailed,
            format!("manifest {key} is for another build: {difference}"),
        ));
    }
    Ok((manifest, signers))
}

/// `flagged by audit: …`: what each auditor that found a mismatch said.
fn flagged_reason(build: &IndexBuild) -> String {
    let verdicts: Vec<String> = build
        .verdicts
        .iter()
        .filter(|v| v.result == "mismatch")
        .map(|v| format!("{} (auditor {})", v.summary, v.auditor))
        .collect();
    format!(
        "flagged by audit: {}",
        if verdicts.is_empty() {
            "an auditor's rebuild gave other bytes".to_string()
        } else {
            verdicts.join("; ")
        }
    )
}

/// The first input that differs between our build and a manifest's, if any.
fn describe_inputs_difference(ours: &BuildInputs, theirs: &BuildInputs) -> Option<String> {
    if ours.package != theirs.package {
        return Some(format!(
            "package {} {} vs {} {}",
            theirs.package.name, theirs.package.version, ours.package.name, ours.package.version
        ));
    }
    let sorted = |closure: &[PackageRef]| {
        let mut c = closure.to_vec();
        c.sort();
        c
    };
    if sorted(&ours.closure) != sorted(&theirs.closure) {
        return Some("its dependency closure differs from mix.lock's".into());
    }
    for (what, a, b) in [
        ("OTP", &ours.otp_major, &theirs.otp_major),
        ("Elixir", &ours.elixir, &theirs.elixir),
        ("Mix env", &ours.mix_env, &theirs.mix_env),
    ] {
        if a != b {
            return Some(format!("{what} {b}, this project uses {a}"));
        }
    }
    if ours.target != theirs.target {
        return Some(format!(
            "target {}, expected {}",
            theirs.target, ours.target
        ));
    }
    if precomp_proto::buildkey::compile_env_digest(&ours.compile_env)
        != precomp_proto::buildkey::compile_env_digest(&theirs.compile_env)
    {
        return Some(describe_compile_env_mismatch(
            &theirs.compile_env,
            &ours.compile_env,
        ));
    }
    None
}

/// The compile-env entries a candidate recorded, from the index.
fn index_compile_env(build: &IndexBuild) -> Result<Vec<CompileEnvEntry>, String> {
    build
        .compile_env
        .iter()
        .map(|record| {
            let path = match one_term(&record.path)? {
                Term::List(path) => path,
                other => return Err(format!("path {} is not a list", other.summary())),
            };
            let value = record.value.as_deref().map(one_term).transpose()?;
            Ok(CompileEnvEntry {
                app: record.app.clone(),
                path,
                value,
            })
        })
        .collect()
}

fn one_term(text: &str) -> Result<Term, String> {
    match parse_erlang_terms(&format!("{text}.")) {
        Ok(mut terms) if terms.len() == 1 => Ok(terms.remove(0)),
        Ok(_) => Err(format!("{text:?} is not one term")),
        Err(e) => Err(format!("{text:?}: {e}")),
    }
}

/// `env_reader [greeting]: built with <<"hello">>, your config sets <<"howdy">>`.
fn describe_compile_env_mismatch(recorded: &[CompileEnvEntry], ours: &[CompileEnvEntry]) -> String {
    let show = |value: &Option<Term>| match value {
        Some(value) => value.summary(),
        None => "nothing".to_string(),
    };
    let ours_by_path: BTreeMap<(String, String), &Option<Term>> = ours
        .iter()
        .map(|e| {
            (
                (e.app.clone(), to_erlang_text(&Term::List(e.path.clone()))),
                &e.value,
            )
        })
        .collect();
    let differences: Vec<String> = recorded
        .iter()
        .filter_map(|entry| {
            let path = to_erlang_text(&Term::List(entry.path.clone()));
            let our_value = ours_by_path.get(&(entry.app.clone(), path.clone()))?;
            (*our_value != &entry.value).then(|| {
                format!(
                    "{} {path}: built with {}, your config sets {}",
                    entry.app,
                    show(&entry.value),
                    show(our_value)
                )
            })
        })
        .collect();
    if differences.is_empty() {
        "the compile-env values differ".into()
    } else {
        differences.join("; ")
    }
}

/// Why no build of the index has one of our base keys.
fn no_candidate(keys: &Keys, builds: &[IndexBuild]) -> Missed {
    let ours = &keys.inputs;
    let name = &ours.package.name;
    let version = &ours.package.version;
    let same_version: Vec<&IndexBuild> = builds.iter().filter(|b| &b.version == version).collect();
    if same_version.is_empty() {
        return request(
            missed(
                MissKind::NoArtifact,
                format!("the mirror has no build of {name} {version}"),
            ),
            keys,
            builds.iter().any(|b| b.target != "any"),
        );
    }
    let toolchain: Vec<&&IndexBuild> = same_version
        .iter()
        .filter(|b| b.otp_major == ours.otp_major && b.elixir == ours.elixir)
        .collect();
    let native = same_version.iter().any(|b| b.target != "any");
    if toolchain.is_empty() {
        let mut built: Vec<String> = same_version
            .iter()
            .map(|b| format!("OTP {} / Elixir {}", b.otp_major, b.elixir))
            .collect();
        built.sort();
        built.dedup();
        return request(
            missed(
                MissKind::NoArtifact,
                format!(
                    "{name} {version} is built for {} only; this project uses OTP {} / Elixir {}",
                    built.join(", "),
                    ours.otp_major,
                    ours.elixir
                ),
            ),
            keys,
            native,
        );
    }
    let env: Vec<&&&IndexBuild> = toolchain
        .iter()
        .filter(|b| b.mix_env == ours.mix_env)
        .collect();
    if env.is_empty() {
        return request(
            missed(
                MissKind::NoArtifact,
                format!(
                    "{name} {version} is built for Mix env {} only; this dependency uses {}",
                    toolchain[0].mix_env, ours.mix_env
                ),
            ),
            keys,
            native,
        );
    }
    let ours_target = keys
        .native
        .as_ref()
        .map(|(t, _)| t.to_string())
        .unwrap_or_else(|| "unknown".into());
    let other_targets: BTreeSet<&str> = env
        .iter()
        .map(|b| b.target.as_str())
        .filter(|t| *t != "any" && *t != ours_target)
        .collect();
    if !other_targets.is_empty() && env.iter().all(|b| b.target != "any") {
        let all_other = env.iter().all(|b| b.target != ours_target);
        if all_other {
            return request(
                missed(
                    MissKind::OtherTarget,
                    format!(
                        "{name} {version} has native code built for {} only; this machine is {ours_target}",
                        other_targets.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                ),
                keys,
                true,
            );
        }
    }
    request(
        missed(
            MissKind::NoArtifact,
            format!(
                "no build of {name} {version} against this project's versions of its dependencies"
            ),
        ),
        keys,
        native,
    )
}

/// Attaches what `--request-builds` reports: the base key for the native target when the
/// package is known to hold native code, else for `any`.
fn request(mut miss: Missed, keys: &Keys, native: bool) -> Missed {
    let (target, base_key) = match (&keys.native, native) {
        (Some((target, key)), true) => (target.to_string(), key.clone()),
        _ => ("any".to_string(), keys.any.clone()),
    };
    miss.request = Some(BuildRequest { base_key, target });
    miss
}

/// Reports the misses builders can fix to the mirror, one after the other; how many were
/// reported and the failures.
async fn request_builds(run: &Run, deps: &[DepReport], lock_text: &str) -> (usize, Vec<String>) {
    let mut reported = 0;
    let mut errors = Vec::new();
    for dep in deps {
        let (Some(request), Some(package), Some(version), Outcome::Miss { reason, .. }) =
            (&dep.build_request, &dep.package, &dep.version, &dep.outcome)
        else {
            continue;
        };
        let dep_env = run
            .project
            .declared(&dep.app)
            .map(|d| d.env.clone())
            .unwrap_or_else(|| "prod".into());
        let report = MissReport {
            package: package.clone(),
            version: version.clone(),
            base_key: request.base_key.clone(),
            reason: one_line(reason, 256),
            otp_major: run.project.otp_major.clone(),
            elixir: run.project.elixir.clone(),
            mix_env: dep_env,
            target: request.target.clone(),
            lock: closure_lock(&run.lock, &dep.app, lock_text),
        };
        match run.client.report_miss(&report).await {
            Ok(()) => reported += 1,
            Err(e) => errors.push(format!("{}: {e}", dep.app)),
        }
    }
    (reported, errors)
}

/// `text` on one line (control characters become spaces), cut to at most `max` bytes.
fn one_line(text: &str, max: usize) -> String {
    let mut line = String::new();
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if line.len() + c.len_utf8() > max {
            break;
        }
        line.push(c);
    }
    line
}

/// mix.lock text with just `app` and its closure, as Mix would write it; the whole lock if
/// that cannot be written.
fn closure_lock(lock: &MixLock, app: &str, full: &str) -> String {
    let subset = || {
        let (_, closure) = lock.closure_by_app(app).ok()?;
        let mut entries = BTreeMap::new();
        for member in closure.keys().map(String::as_str).chain([app]) {
            entries.insert(member.to_string(), lock.entries.get(member)?.clone());
        }
        MixLock { entries }.to_text().ok()
    };
    match subset() {
        Some(text) => text,
        None => full.chars().take(crate::mirror::MAX_MISS_LOCK).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::DeclaredDep;

    fn project(deps: Vec<DeclaredDep>) -> Project {
        Project {
            dir: "/p".into(),
            apps: vec!["my_app".into()],
            umbrella: false,
            build_path: "/p/_build/dev".into(),
            deps_path: "/p/deps".into(),
            lockfile: "/p/mix.lock".into(),
            config_path: "/p/config/config.exs".into(),
            compile_locks: vec![],
            mix_env: "dev".into(),
            mix_target: "host".into(),
            elixir: "1.14.0".into(),
            otp_major: "25".into(),
            system_architecture: "x86_64-pc-linux-gnu".into(),
            hex_scm: "Hex.SCM".into(),
            elixir_scm: vec![],
            deps,
            config_dump: None,
        }
    }

    fn declared(app: &str, active: bool, hex: bool) -> DeclaredDep {
        DeclaredDep {
            app: app.into(),
            env: "prod".into(),
            active,
            hex,
            custom: vec![],
        }
    }

    const LOCK: &str = r#"%{
  "a": {:hex, :a, "1.0.0", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", [:mix], [{:b, "~> 1.0", [hex: :b, repo: "hexpm", optional: false]}], "hexpm", "0000000000000000000000000000000000000000000000000000000000000001"},
  "b": {:hex, :b, "1.0.0", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", [:mix], [], "hexpm", "0000000000000000000000000000000000000000000000000000000000000002"},
  "credo": {:hex, :credo, "1.0.0", "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc", [:mix], [{:c, "~> 1.0", [hex: :c, repo: "hexpm", optional: false]}], "hexpm", "0000000000000000000000000000000000000000000000000000000000000003"},
  "c": {:hex, :c, "1.0.0", "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc", [:mix], [], "hexpm", "0000000000000000000000000000000000000000000000000000000000000004"},
  "fork": {:git, "https://example.invalid/fork.git", "0123456789abcdef0123456789abcdef01234567", []},
}"#;

    fn apps(wanted: &[(String, String)]) -> Vec<&str> {
        wanted.iter().map(|(a, _)| a.as_str()).collect()
    }

    #[test]
    fn the_plan_follows_the_lock_from_the_deps_active_in_this_env() {
        let lock = MixLock::parse(LOCK).unwrap();
        let (wanted, skipped) = plan(
            &project(vec![
                declared("a", true, true),
                declared("credo", false, true),
            ]),
            &lock,
        );
        assert_eq!(apps(&wanted), vec!["a", "b"]);
        let skipped: Vec<(&str, bool)> = skipped
            .iter()
            .map(|d| match &d.outcome {
                Outcome::Skipped { mix_builds, .. } => (d.app.as_str(), *mix_builds),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            skipped,
            vec![("c", false), ("credo", false), ("fork", false)]
        );

        // A needed git dep may need anything in the lock.
        let (wanted, skipped) = plan(
            &project(vec![
                declared("a", true, true),
                declared("fork", true, false),
            ]),
            &lock,
        );
        assert_eq!(apps(&wanted), vec!["a", "b", "c", "credo"]);
        assert!(skipped.iter().any(|d| d.app == "fork"
            && matches!(
                d.outcome,
                Outcome::Skipped {
                    mix_builds: true,
                    ..
                }
            )));
    }

    #[test]
    fn the_miss_lock_holds_the_closure_only() {
        let lock = MixLock::parse(LOCK).unwrap();
        let text = closure_lock(&lock, "a", LOCK);
        let subset = MixLock::parse(&text).unwrap();
        assert_eq!(subset.entries.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(subset.closure("a").unwrap(), lock.closure("a").unwrap());
    }

    #[test]
    fn compile_env_mismatches_name_the_path_and_both_values() {
        let entry = |value: Option<Term>| CompileEnvEntry {
            app: "env_reader".into(),
            path: vec![Term::atom("greeting")],
            value,
        };
        let text = describe_compile_env_mismatch(
            &[entry(Some(Term::binary("hello")))],
            &[entry(Some(Term::binary("howdy")))],
        );
        assert!(text.contains("env_reader [greeting]"), "{text}");
        assert!(text.contains("hello") && text.contains("howdy"), "{text}");
        assert!(
            describe_compile_env_mismatch(&[entry(None)], &[entry(Some(Term::atom("x")))])
                .contains("built with nothing")
        );
    }

    #[test]
    fn miss_reasons_are_one_bounded_line() {
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("ééé", 5), "éé");
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
