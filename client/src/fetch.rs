//! `precomp fetch`: for every Hex dependency the project needs, compute its build key as the
//! builder does, find the artifact on the mirror, verify it, and install it for Mix.
//!
//! Lookup (`docs/protocol.md`, "The build key"): keys are Merkle keys — each closure member
//! is named by its own key — so a package's key is computed after its members' (closure
//! order, independent branches in parallel; each package's key once per run and Mix env,
//! [`key_of`]). A member's key is known when it is installed with our key, or the mirror has
//! some build of it for our toolchain and env: that build's target and the compile-env paths
//! it records, with our config's values, give our key for it even when no build matches our
//! config. With the members' keys, the base key (everything but the compile env) for target
//! `any` and for this machine's native target; the mirror's index of the package lists builds
//! by base key with the compile-env paths each read; for each candidate the consumer's config
//! is evaluated for those paths (once per run, only when some candidate needs it) and the
//! full key computed; the candidate whose key matches is the artifact. Its signed manifest is
//! checked against the trust policy, its key against its inputs and its inputs against ours,
//! the artifact against the manifest's digests; only then is anything written under `_build`.
//!
//! Whatever cannot be used is a miss, left to Mix, with its reason. A package one of whose
//! members has no build at all has no key yet: it misses naming that member, and
//! `--request-builds` reports it with a request key so builders build the whole closure.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use precomp_proto::api::{MAX_COMPILE_ENV_VALUE, MAX_MISS_COMPILE_ENV_BYTES};
use precomp_proto::buildkey::{
    BuildInputs, BuildKey, BuildKeyError, ClosureMember, CompileEnvEntry, Manager, Target,
};
use precomp_proto::config::AppConfig;
use precomp_proto::lock::{LockEntry, MixLock};
use precomp_proto::manifest::{FileRecord, Manifest, SignedManifest};
use precomp_proto::term::{parse_erlang_terms, to_erlang_text, Syntax, Term};

use precomp_http::artifacts::ArtifactClient;
use precomp_http::{ByteCounter, Settings};
use precomp_proto::api::{CompileEnvJson, IndexBuild, MissMember, MissReport};

use crate::download::{Downloads, Early};
use crate::error::ClientError;
use crate::install;
use crate::project::{ProbeRun, Project};
use crate::trust::{Refusal, TrustPolicy};

/// Everything a fetch needs.
#[derive(Debug)]
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
    /// A token sent with every request (a mirror that requires one to read:
    /// `precomp serve --require-read-token`; any scope does).
    pub token: Option<String>,
    /// Report misses to the mirror so builders make them.
    pub request_builds: bool,
    /// The probe of `project_dir` for `mix_env`, when the caller started it already
    /// ([`Project::start_probe`], as early as it can: it is the fixed cost of a fetch);
    /// `None`: the fetch starts it.
    pub probe: Option<ProbeRun>,
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
    /// The mirror's builds of this release are of key format v1 (before every closure
    /// member was named by its own key): never used; builders rebuild them.
    OldKeyFormat,
    /// A dependency in its closure has no build on the mirror for this toolchain, so its key
    /// (which names each dependency's key) cannot be computed yet.
    DependencyNotBuilt,
    /// The mirror's builders tried these inputs and the build failed: the mirror holds the
    /// failure and its log.
    BuildFailed,
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
            MissKind::OldKeyFormat => "old_key_format",
            MissKind::DependencyNotBuilt => "dependency_not_built",
            MissKind::BuildFailed => "build_failed",
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

    pub(crate) fn of_refusal(refusal: &Refusal) -> MissKind {
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
        /// Set when it replaced an install with our key whose files no longer were the
        /// signed ones (a `mix deps.compile` rebuilt it in place, or files were changed):
        /// the first difference found.
        replaced: Option<String>,
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

/// A miss that builders can fix: what `--request-builds` reports (docs/protocol.md,
/// "Misses"): its key, and what the mirror needs to recompute it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildRequest {
    /// The base key when every closure member's key is known, else the request key.
    pub key: MissKey,
    pub target: String,
    pub manager: String,
    /// Our values for the compile-env paths the mirror's builds of the package record.
    pub compile_env: Vec<CompileEnvJson>,
    pub closure: Vec<MissMember>,
    /// With our own compile-env values: the variant key (a config variant: a builder builds
    /// it with those values; docs/protocol.md "Misses").
    pub variant_key: Option<String>,
}

/// What identifies a miss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MissKey {
    Base(String),
    Request(String),
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

    /// Its `--json` line ([`DepLine`]).
    pub fn line(&self) -> DepLine {
        let mut line = DepLine {
            app: self.app.clone(),
            base_key: None,
            bytes: None,
            key: None,
            kind: None,
            mix_builds: None,
            package: self.package.clone(),
            reason: None,
            removed_stale: None,
            replaced: None,
            request_key: None,
            signers: None,
            status: "",
            variant_key: None,
            version: self.version.clone(),
        };
        line.status = match &self.outcome {
            Outcome::Installed {
                key,
                bytes,
                signers,
                replaced,
            } => {
                line.key = Some(key.clone());
                line.bytes = Some(*bytes);
                line.signers = Some(signers.clone());
                line.replaced = replaced.clone();
                "installed"
            }
            Outcome::Current { key } => {
                line.key = Some(key.clone());
                "current"
            }
            Outcome::Miss {
                kind,
                reason,
                removed_stale,
            } => {
                line.kind = Some(kind.as_str());
                line.reason = Some(reason.clone());
                line.removed_stale = Some(*removed_stale);
                "miss"
            }
            Outcome::Skipped { reason, mix_builds } => {
                line.reason = Some(reason.clone());
                line.mix_builds = Some(*mix_builds);
                "skipped"
            }
        };
        if let Some(request) = &self.build_request {
            match &request.key {
                MissKey::Base(key) => line.base_key = Some(key.clone()),
                MissKey::Request(key) => line.request_key = Some(key.clone()),
            }
            line.variant_key = request.variant_key.clone();
        }
        line
    }
}

/// One dependency's `precomp fetch --json` line (docs/client.md "Output"): `app`, `package`
/// and `version` (null for git and path deps), `status` (`installed`, `current`, `miss`,
/// `skipped`) and what that status has: `key`, `bytes`, `signers` (and `replaced`) for an
/// install, `key` when current, `kind`, `reason` and `removed_stale` for a miss (with
/// `base_key` or `request_key`, and `variant_key`, when builders can fix it), `reason` and
/// `mix_builds` when skipped. Fields in name order, as the lines have always been printed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DepLine {
    pub app: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mix_builds: Option<bool>,
    pub package: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_stale: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signers: Option<Vec<String>>,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant_key: Option<String>,
    pub version: Option<String>,
}

/// The last line of `precomp fetch --json` (docs/client.md "Output"): `"summary": true`, the
/// counts, bytes and seconds of the run, the apps Mix still compiles (`missing`), the builds
/// requested, and the tuple looked up. Fields in name order, as always printed.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SummaryLine {
    pub bytes: u64,
    pub current: usize,
    pub elixir: String,
    pub hits: usize,
    pub installed: usize,
    pub misses: usize,
    pub missing: Vec<String>,
    pub mix_env: String,
    pub otp: String,
    pub requested_builds: usize,
    pub requested_open: usize,
    /// Rounded to milliseconds.
    pub seconds: f64,
    pub skipped: usize,
    /// Always `true`: tells this line from the dependencies' lines.
    pub summary: bool,
    pub target: Option<String>,
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
    /// Misses reported to the mirror (`--request-builds`); of those, how many are open for
    /// builders, and what closed the others (`app: closed by`); reports that failed.
    pub requested: usize,
    pub requested_open: usize,
    pub requested_closed: Vec<String>,
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

    /// The summary line (the last `--json` line).
    pub fn json_summary(&self) -> SummaryLine {
        let skipped = self.deps.len() - self.hits() - self.misses();
        SummaryLine {
            bytes: self.bytes,
            current: self.hits() - self.installed(),
            elixir: self.elixir.clone(),
            hits: self.hits(),
            installed: self.installed(),
            misses: self.misses(),
            missing: self.missing_apps().into_iter().map(String::from).collect(),
            mix_env: self.mix_env.clone(),
            otp: self.otp_major.clone(),
            requested_builds: self.requested,
            requested_open: self.requested_open,
            seconds: (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            skipped,
            summary: true,
            target: self.native_target.clone(),
        }
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
    /// The manager Mix uses for each Hex dependency in this project, `None` where it finds
    /// none ([`Project::mix_managers`]: Mix's rule, which depends on the whole graph).
    managers: BTreeMap<String, Option<Manager>>,
    policy: TrustPolicy,
    /// The mirror: indexes, and builds prepared for installing ([`Downloads`]).
    downloads: Arc<Downloads>,
    native: Option<Target>,
    config: tokio::sync::OnceCell<Result<Arc<AppConfig>, String>>,
    counter: Arc<Counter>,
    /// Each package's key resolution by (app, Mix env), made once ([`key_of`]).
    keys: std::sync::Mutex<KeyCells>,
}

type KeyCells = HashMap<(String, String), Arc<tokio::sync::OnceCell<Arc<KeyResolution>>>>;

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

    /// Our values for the compile-env paths `recorded` (values ignored). A value no builder
    /// can be given — not plain data (a fun, pid, reference, port), or longer than a miss may
    /// carry — makes the package not buildable, saying which path.
    async fn compile_env_for(
        &self,
        recorded: &[CompileEnvEntry],
    ) -> Result<Vec<CompileEnvEntry>, Missed> {
        if recorded.is_empty() {
            return Ok(Vec::new());
        }
        let config = self
            .config()
            .await
            .map_err(|e| missed(MissKind::Config, e))?;
        let entries = config.entries_for(recorded).map_err(|e| match e {
            precomp_proto::config::ConfigError::Opaque { app, path } => missed(
                MissKind::NotBuildable,
                format!(
                    "your config gives {app} {path} a value that is not plain data (a fun, pid, \
                     reference or port): it cannot be compared with a build's, and no builder \
                     can build with it"
                ),
            ),
            other => missed(MissKind::Config, other.to_string()),
        })?;
        for entry in &entries {
            let size = entry.value.as_ref().map_or(0, |v| to_erlang_text(v).len());
            if size > MAX_COMPILE_ENV_VALUE {
                return Err(missed(
                    MissKind::NotBuildable,
                    format!(
                        "your config gives {} a value of {size} bytes (as Erlang terms), over the \
                         {MAX_COMPILE_ENV_VALUE} a build request may carry: no builder is asked \
                         to build with it",
                        entry.describe_path(Syntax::Erlang)
                    ),
                ));
            }
        }
        Ok(entries)
    }
}

/// Runs a fetch in the project of `options`.
pub async fn fetch(
    mut options: FetchOptions,
    observer: Arc<dyn Observer>,
) -> Result<FetchReport, ClientError> {
    let started = Instant::now();
    // The probe (an `elixir` VM) is the fixed cost of a fetch, so it starts first, and what
    // does not need its answers starts beside it (indexes, and the likely builds verified and
    // unpacked).
    let probe = match options.probe.take() {
        Some(probe) => Ok(probe),
        None => Project::start_probe(&options.project_dir, &options.mix_env),
    };
    let probe = tokio::task::spawn_blocking(move || probe?.wait());
    let counter = Arc::new(Counter {
        total: AtomicU64::new(0),
        observer: observer.clone(),
    });
    let client = mirror_client(&options.mirror, options.retries, options.token.clone())?
        .with_counter(counter.clone());
    let downloads = Arc::new(Downloads::new(client, options.policy.clone(), options.jobs));
    let early = Early::start(
        &downloads,
        &options.project_dir,
        &options.mix_env,
        options.target.clone(),
    );
    let project = match probe.await {
        Ok(Ok(project)) => project,
        Ok(Err(e)) => {
            early.abandon(&downloads).await;
            return Err(e);
        }
        Err(e) => {
            early.abandon(&downloads).await;
            return Err(ClientError::Internal(e.to_string()));
        }
    };
    // The probe's VM is done with its part: staging may use every CPU now.
    downloads.probe_answered();
    let lib_dir = project.lib_dir();
    let settled = early.settle(&downloads, &lib_dir).await?;
    let _guard = settled.guard;
    let recovered = settled.recovered;
    for line in &recovered {
        tracing::info!("{line}");
    }
    let lock = read_lock(&project.lockfile).and_then(|text| {
        let lock = MixLock::parse(&text).map_err(|source| ClientError::Lock {
            path: project.lockfile.clone(),
            source,
        })?;
        Ok((text, lock))
    });
    let (lock_text, lock) = match lock {
        Ok(lock) => lock,
        Err(e) => {
            downloads.stop().await;
            return Err(e);
        }
    };
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

    let (wanted, skipped) = plan(&project, &lock);
    let managers = project.mix_managers(&lock);
    let run = Arc::new(Run {
        project,
        lock,
        managers,
        policy: options.policy,
        downloads: downloads.clone(),
        native,
        config: tokio::sync::OnceCell::new(),
        counter,
        keys: std::sync::Mutex::new(HashMap::new()),
    });
    observer.started(wanted.len());

    // One task per dependency; each waits for its closure's keys (computed by their own
    // tasks, once), and takes one of `jobs` permits for each request to the mirror.
    let mut tasks = tokio::task::JoinSet::new();
    for (app, dep_env) in wanted {
        let run = run.clone();
        let observer = observer.clone();
        tasks.spawn(async move {
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
    // Nothing writes into lib/ any more (unused early work is stopped and deleted); the
    // renames of this run's installs are made durable at once.
    downloads.stop().await;
    if deps
        .iter()
        .any(|d| matches!(d.outcome, Outcome::Installed { .. }))
    {
        install::sync_dir(&lib_dir);
    }

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

    let requested = if options.request_builds {
        request_builds(&run, &deps, &lock_text).await
    } else {
        Requested::default()
    };
    drop(_guard);
    // Its config dump is not needed any more: a probe VM still running is stopped.
    run.project.config_dump.stop();

    Ok(FetchReport {
        deps,
        bytes: run.counter.total.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        recovered,
        requested: requested.reported,
        requested_open: requested.open,
        requested_closed: requested.closed,
        request_errors: requested.errors,
        mix_env: run.project.mix_env.clone(),
        elixir: run.project.elixir.clone(),
        otp_major: run.project.otp_major.clone(),
        native_target: run.native.as_ref().map(Target::to_string),
        build_path: run.project.build_path.clone(),
    })
}

/// The client of the mirror's artifact API: `retries` extra attempts after a transient
/// failure (`--retries`), each call bounded by the client's default deadline.
pub fn mirror_client(
    url: &str,
    retries: u32,
    token: Option<String>,
) -> Result<ArtifactClient, ClientError> {
    ArtifactClient::with_settings(
        url,
        Settings {
            retries,
            token,
            ..Settings::default()
        },
    )
    .map_err(|e| ClientError::MirrorUrl {
        url: url.to_string(),
        message: e.to_string(),
    })
}

pub(crate) fn read_lock(path: &Path) -> Result<String, ClientError> {
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
#[derive(Clone, Debug)]
pub(crate) struct Missed {
    kind: MissKind,
    reason: String,
    request: Option<Box<BuildRequest>>,
}

pub(crate) fn missed(kind: MissKind, reason: impl Into<String>) -> Missed {
    Missed {
        kind,
        reason: reason.into(),
        request: None,
    }
}

/// What a package's key needs besides the lock and the toolchain, as far as this run knows:
/// what a miss carries for it (docs/protocol.md, "Misses").
#[derive(Clone, Debug)]
struct KeyInputs {
    manager: Manager,
    /// `None` when the mirror has no build of it for our toolchain and env.
    target: Option<Target>,
    /// Our values for the compile-env paths its builds record.
    compile_env: Vec<CompileEnvEntry>,
}

/// What this run found out about one package's key, for one Mix env ([`key_of`]).
struct KeyResolution {
    /// Its key, when it can be computed: what its dependents' keys name it by.
    key: Option<BuildKey>,
    /// `None` when not even its manager is known.
    inputs: Option<KeyInputs>,
    /// The build with that key, if there is one.
    found: Found,
    /// Why the package itself misses (always set when `found` is [`Found::Nothing`]).
    miss: Option<Missed>,
    /// When its key is known but no build on the mirror has it: why, in a few words (for
    /// its dependents' reasons).
    difference: Option<String>,
    /// An install with our key is there, but its files are not the signed ones: why (it is
    /// installed again from the mirror's build, the outcome saying so).
    replaced: Option<String>,
    /// For a build found on the mirror: what `--request-builds` reports when it cannot be
    /// used after all (its signers revoked, its artifact gone), so builders rebuild it.
    request: Option<Box<BuildRequest>>,
}

/// Where the build with our key is.
enum Found {
    /// Installed under `_build`, with our key.
    Installed {
        key: String,
    },
    /// On the mirror.
    Candidate {
        build: Box<IndexBuild>,
        inputs: Box<BuildInputs>,
        key: String,
    },
    Nothing,
}

async fn resolve(run: &Run, app: &str, dep_env: &str) -> DepReport {
    let (package, version) = match run.lock.entries.get(app) {
        Some(LockEntry::Hex(entry)) => (Some(entry.package.clone()), Some(entry.version.clone())),
        _ => (None, None),
    };
    let lib_dir = run.project.lib_dir();
    let outcome = match lookup(run, app, dep_env).await {
        Ok(outcome) => Ok(outcome),
        Err(mut miss) => {
            // A build found on the mirror but unusable because its signers are revoked, or
            // its manifest or artifact went away: builders can rebuild it (the mirror keeps
            // such a miss open while nothing that counts satisfies it).
            if miss.request.is_none()
                && matches!(miss.kind, MissKind::Revoked | MissKind::NoArtifact)
            {
                miss.request = key_of(run, app, dep_env).await.request.clone();
            }
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
            build_request: miss.request.map(|request| *request),
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
    let resolution = key_of(run, app, dep_env).await;
    let fetch_marker = deps_dir.join(".fetch");
    let mix_built = run.managers.get(app) == Some(&Some(Manager::Mix));
    let elixir_scm = mix_built.then_some(project.elixir_scm.as_slice());
    let lib_dir = project.lib_dir();
    let (candidate, inputs, key) = match &resolution.found {
        // Already installed with the key this build has: leave it, refresh Mix's markers.
        Found::Installed { key } => {
            install::refresh_markers(&lib_dir, app, &fetch_marker, elixir_scm)
                .map_err(|e| missed(MissKind::InstallFailed, format!("refreshing markers: {e}")))?;
            return Ok(Outcome::Current { key: key.clone() });
        }
        Found::Candidate { build, inputs, key } => (build, inputs, key.clone()),
        Found::Nothing => {
            return Err(resolution.miss.clone().unwrap_or_else(|| {
                missed(
                    MissKind::NoArtifact,
                    "the mirror has no build with this key",
                )
            }))
        }
    };

    // With auditors in the policy, a build an audit found not reproducible is not used.
    if candidate.flagged && run.policy.has_auditors() {
        return Err(missed(MissKind::Flagged, flagged_reason(candidate)));
    }

    // The build's signed manifest (verified against the policy) and its artifact (checked
    // against every digest the manifest holds), unpacked beside its target: prepared once,
    // perhaps already while the probe ran. Now checked against our key and inputs.
    let prepared = run.downloads.prepare(&lib_dir, app, candidate).await?;
    let (manifest, signers) = verify_manifest(run, &prepared.signed_manifest, inputs, &key)?;
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
    let Some(staged) = prepared.staged.lock().expect("staged").take() else {
        return Err(missed(
            MissKind::InstallFailed,
            format!("build {key} was installed once already in this run"),
        ));
    };

    // Only now does anything change under _build/<env>/lib/<app>.
    let bytes = prepared.bytes;
    let key_owned = key.clone();
    let scm = elixir_scm.map(<[u8]>::to_vec);
    let signed_manifest = prepared.signed_manifest.clone();
    tokio::task::spawn_blocking(move || {
        install::install_staged(
            staged,
            &install::Markers {
                key: &key_owned,
                signed_manifest: &signed_manifest,
                elixir_scm: scm.as_deref(),
                fetch_marker: &fetch_marker,
            },
        )
    })
    .await
    .map_err(|e| missed(MissKind::InstallFailed, e.to_string()))?
    .map_err(|e| missed(MissKind::InstallFailed, e.to_string()))?;
    Ok(Outcome::Installed {
        key,
        bytes,
        signers,
        replaced: resolution.replaced.clone(),
    })
}

/// The key resolution of `app` for Mix env `env`, computed once per run ([`resolve_key`]):
/// callers wait for the one computation. Boxed, as it recurses through the closure.
fn key_of<'a>(
    run: &'a Run,
    app: &'a str,
    env: &'a str,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<KeyResolution>> + Send + 'a>> {
    Box::pin(async move {
        let cell = run
            .keys
            .lock()
            .expect("key cells")
            .entry((app.to_string(), env.to_string()))
            .or_default()
            .clone();
        cell.get_or_init(|| async { Arc::new(resolve_key(run, app, env).await) })
            .await
            .clone()
    })
}

/// Works out `app`'s key for Mix env `env` (the env its whole closure is built with): its
/// members' keys first, then the build installed with our key, else the mirror's builds of
/// it: the one whose key is ours, or the closest one, whose target and compile-env paths give
/// our key for it all the same (what its dependents need).
async fn resolve_key(run: &Run, app: &str, env: &str) -> KeyResolution {
    let unknown = |miss: Missed, inputs: Option<KeyInputs>| KeyResolution {
        key: None,
        inputs,
        found: Found::Nothing,
        miss: Some(miss),
        difference: None,
        replaced: None,
        request: None,
    };
    let (package, closure) = match run.lock.closure_by_app(app) {
        Ok(closure) => closure,
        Err(e) => return unknown(missed(MissKind::NotBuildable, e.to_string()), None),
    };
    if let Some(declared) = run.project.declared(app) {
        if !declared.custom.is_empty() {
            let options: Vec<String> = declared.custom.iter().map(|o| format!("{o}:")).collect();
            return unknown(
                missed(
                    MissKind::CustomOptions,
                    format!(
                        "mix.exs sets {} for it: artifacts are built the package's own way",
                        options.join(", ")
                    ),
                ),
                None,
            );
        }
    }
    let manager = match run.managers.get(app).copied().flatten() {
        Some(manager) => manager,
        None => {
            let e = BuildKeyError::NoManager {
                app: app.to_string(),
            };
            return unknown(missed(MissKind::NotBuildable, e.to_string()), None);
        }
    };

    // The members' keys first (each computed once, by whichever task asks first).
    let mut members = Vec::new();
    let mut member_inputs = Vec::new();
    let mut unknown_member: Option<(String, Missed)> = None;
    let mut differences = Vec::new();
    for (member_app, member) in &closure {
        let cycle = run
            .lock
            .closure_by_app(member_app)
            .is_ok_and(|(_, theirs)| theirs.contains_key(app));
        if cycle {
            return unknown(
                missed(
                    MissKind::NotBuildable,
                    format!("mix.lock: {app} and {member_app} depend on each other"),
                ),
                None,
            );
        }
        let resolution = key_of(run, member_app, env).await;
        if let Some(difference) = &resolution.difference {
            differences.push(format!("{}: {difference}", member.name));
        }
        if resolution.key.is_none() && unknown_member.is_none() {
            let miss = resolution
                .miss
                .clone()
                .unwrap_or_else(|| missed(MissKind::NoArtifact, "its key is unknown"));
            unknown_member = Some((member.name.clone(), miss));
        }
        members.push(ClosureMember {
            package: member.clone(),
            key: resolution.key,
        });
        member_inputs.push((member.clone(), resolution.inputs.clone()));
    }
    let inputs = BuildInputs {
        package,
        manager,
        closure: members,
        otp_major: run.project.otp_major.clone(),
        elixir: run.project.elixir.clone(),
        mix_env: env.to_string(),
        target: Target::Any,
        compile_env: Vec::new(),
    };
    let with_target = |target: &Target| BuildInputs {
        target: target.clone(),
        ..inputs.clone()
    };

    // Installed with our key, and its files are the signed ones (by content, never mtimes):
    // nothing to ask the mirror. Files that differ (Mix rebuilt it in place) are installed
    // again from the mirror's build below.
    let mut replaced = None;
    if unknown_member.is_none() {
        if let Some(installed) = install::installed(&run.project.lib_dir(), app) {
            if let Some((key, target, compile_env, files)) =
                current_key(run, &inputs, &installed).await
            {
                let (lib_dir, app_owned) = (run.project.lib_dir(), app.to_string());
                let checked = tokio::task::spawn_blocking(move || {
                    install::check_installed(&lib_dir, &app_owned, &files)
                })
                .await;
                match checked {
                    Ok(Ok(())) => {
                        return KeyResolution {
                            key: BuildKey::parse(&key),
                            inputs: Some(KeyInputs {
                                manager,
                                target: Some(target),
                                compile_env,
                            }),
                            found: Found::Installed { key },
                            miss: None,
                            difference: None,
                            replaced: None,
                            request: None,
                        };
                    }
                    Ok(Err(drift)) => {
                        tracing::info!("{app}: the install is not the signed build: {drift}");
                        replaced = Some(format!("Mix rebuilt it or its files changed: {drift}"));
                    }
                    Err(e) => tracing::warn!("{app}: checking the install: {e}"),
                }
            } else {
                tracing::debug!("{app}: the installed build is not this build's");
            }
        }
    }

    let name = inputs.package.name.clone();
    let version = inputs.package.version.clone();
    let builds = match run.downloads.index(&name).await {
        Ok(builds) => builds,
        Err(e) => {
            let inputs = KeyInputs {
                manager,
                target: None,
                compile_env: Vec::new(),
            };
            return unknown(missed(MissKind::Unavailable, e), Some(inputs));
        }
    };
    // Our target for a build of the index: `any`, or ours for native code (built here, or
    // elsewhere: native code built for this machine would have our target).
    let our_target = |build: &IndexBuild| -> Option<Target> {
        match build.target.as_str() {
            "any" => Some(Target::Any),
            _ => run.native.clone(),
        }
    };
    let ours = |build: &&IndexBuild| {
        build.version == version
            && build.otp_major == run.project.otp_major
            && build.elixir == run.project.elixir
            && build.mix_env == env
    };

    // The builds with one of our base keys, and the one with our key.
    let mut candidates: Vec<(&IndexBuild, Target)> = Vec::new();
    if unknown_member.is_none() {
        for build in builds.iter().filter(ours).filter(|b| b.key_format == 2) {
            let Some(target) = our_target(build) else {
                continue;
            };
            if target.to_string() != build.target && build.target != "any" {
                continue;
            }
            if with_target(&target)
                .base_key()
                .is_ok_and(|key| key.to_string() == build.base_key)
            {
                candidates.push((build, target));
            }
        }
    }
    let mut mismatch = None;
    for (build, target) in &candidates {
        let entries = match our_entries(run, build).await {
            Ok(entries) => entries,
            Err(miss) => return unknown(miss, None),
        };
        let candidate_inputs = BuildInputs {
            compile_env: entries.clone(),
            ..with_target(target)
        };
        let Ok(key) = candidate_inputs.key() else {
            continue;
        };
        if key.to_string() == build.key {
            let own = KeyInputs {
                manager,
                target: Some(target.clone()),
                compile_env: entries,
            };
            let request = with_request(
                missed(MissKind::NoArtifact, ""),
                &with_target(target),
                &own,
                &member_inputs,
                true,
            )
            .request;
            return KeyResolution {
                key: Some(key),
                inputs: Some(own),
                found: Found::Candidate {
                    build: Box::new((*build).clone()),
                    inputs: Box::new(candidate_inputs),
                    key: key.to_string(),
                },
                miss: None,
                difference: None,
                replaced,
                request,
            };
        }
        if mismatch.is_none() {
            let recorded = index_compile_env(build).unwrap_or_default();
            mismatch = Some(describe_compile_env_mismatch(
                &recorded,
                &entries,
                manager.syntax(),
            ));
        }
    }

    // No build has our key. The closest build of this release for our toolchain and env
    // still says what the package reads (its target, its compile-env paths): our key for it.
    let representative = candidates
        .first()
        .map(|(b, t)| (*b, t.clone()))
        .or_else(|| {
            let mut same: Vec<&IndexBuild> = builds.iter().filter(ours).collect();
            same.sort_by_key(|b| (b.key_format != 2, b.target != "any"));
            same.into_iter()
                .find_map(|build| our_target(build).map(|target| (build, target)))
        });
    let (target, compile_env) = match &representative {
        Some((build, target)) => match our_entries(run, build).await {
            Ok(entries) => (Some(target.clone()), entries),
            Err(miss) => return unknown(miss, None),
        },
        None => (None, Vec::new()),
    };
    let own = KeyInputs {
        manager,
        target: target.clone(),
        compile_env: compile_env.clone(),
    };
    // The target a build request asks for: native when the package is known to hold native
    // code, else `any` (a builder may find it native; that build satisfies the request).
    let request_target = target.clone().unwrap_or_else(|| {
        match (&run.native, builds.iter().any(|b| b.target != "any")) {
            (Some(native), true) => native.clone(),
            _ => Target::Any,
        }
    });
    let request = |miss: Missed, every_key_known: bool| {
        with_request(
            miss,
            &with_target(&request_target),
            &own,
            &member_inputs,
            every_key_known,
        )
    };

    if let Some((member, member_miss)) = unknown_member {
        let miss = match member_miss.kind {
            // Nothing a build would fix: said as it is.
            kind @ (MissKind::Unavailable
            | MissKind::Config
            | MissKind::NotBuildable
            | MissKind::CustomOptions
            | MissKind::VerificationFailed) => missed(
                kind,
                format!("its dependency {member}: {}", member_miss.reason),
            ),
            _ => {
                let miss = request(
                    missed(
                        MissKind::DependencyNotBuilt,
                        format!(
                            "needs a build of {member} first: the key of {name} {version} names \
                             its dependencies' keys ({})",
                            member_miss.reason
                        ),
                    ),
                    false,
                );
                // A builder that built the closure and failed on the package itself records
                // the failure under the miss's request key.
                match miss.request.as_ref().map(|request| &request.key) {
                    Some(MissKey::Request(key)) => {
                        let keys = [key.clone()];
                        failed_build(run, &name, &version, &keys, miss).await
                    }
                    _ => miss,
                }
            }
        };
        return unknown(miss, Some(own));
    }

    // Our key for it all the same, when some build says what it reads.
    let key = target.as_ref().and_then(|target| {
        BuildInputs {
            compile_env: compile_env.clone(),
            ..with_target(target)
        }
        .key()
        .ok()
    });
    let requested = with_target(&request_target);
    let miss = if let Some(mismatch) = mismatch {
        // A config variant: reported with our values, a builder builds it with them.
        request(
            missed(
                MissKind::CompileEnvMismatch,
                format!(
                    "the mirror's builds of {name} {version} were compiled with other config: \
                     {mismatch}"
                ),
            ),
            true,
        )
    } else {
        request(
            no_candidate(&requested, &builds, run.native.as_ref(), &differences),
            true,
        )
    };
    // The mirror's builders may have tried these inputs: then the miss says so, and where the
    // log is, rather than what else is built.
    let miss = if miss.kind == MissKind::NoArtifact {
        let mut keys: Vec<String> = [
            Some(&request_target),
            Some(&Target::Any),
            run.native.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|target| with_target(target).base_key().ok())
        .map(|key| key.to_string())
        .collect();
        keys.dedup();
        failed_build(run, &name, &version, &keys, miss).await
    } else {
        miss
    };
    let difference = key.map(|_| short_difference(&miss));
    let mut miss = miss;
    if let Some(replaced) = replaced {
        // The changed install is removed as stale (`resolve`): Mix builds it.
        miss.reason = format!("{} (the install had changed: {replaced})", miss.reason);
    }
    KeyResolution {
        key,
        inputs: Some(own),
        found: Found::Nothing,
        miss: Some(miss),
        difference,
        replaced: None,
        request: None,
    }
}

/// What a dependent's reason says of a member whose key no build has: its own reason, without
/// the package's name it starts with.
fn short_difference(miss: &Missed) -> String {
    match miss.kind {
        MissKind::CompileEnvMismatch => miss
            .reason
            .split_once(": ")
            .map_or(miss.reason.clone(), |(_, values)| {
                format!("other compile-time config ({values})")
            }),
        _ => miss.reason.clone(),
    }
}

/// `miss` as a `build_failed` miss when the mirror holds a failed build of its package under
/// one of `keys` (the base keys and request key our inputs give): which toolchain failed, and
/// where the log is. Unchanged when there is none, or the failures cannot be read.
async fn failed_build(
    run: &Run,
    name: &str,
    version: &str,
    keys: &[String],
    miss: Missed,
) -> Missed {
    let failures = {
        let _permit = run.downloads.permits.acquire().await;
        run.downloads.client.failures(name).await
    };
    let failures = match failures {
        Ok(failures) => failures.failures,
        Err(e) if e.status() == Some(404) => return miss,
        Err(e) => {
            tracing::debug!("{name}: reading the mirror's failures: {e}");
            return miss;
        }
    };
    // Most recent first, as the mirror lists them.
    let Some(failure) = failures
        .iter()
        .find(|f| f.version == version && keys.contains(&f.base_key))
    else {
        return miss;
    };
    Missed {
        kind: MissKind::BuildFailed,
        reason: format!(
            "the mirror's builders failed to build {name} {version} for these inputs \
             (toolchain {}, {} attempt{}, last {}): its log is at {}/precomp/v1/failures/{name} \
             (log sha256 {})",
            failure.toolchain_id,
            failure.attempts,
            if failure.attempts == 1 { "" } else { "s" },
            precomp_proto::time::utc(failure.last_reported),
            run.downloads.client.base_url(),
            failure.log_sha256
        ),
        request: miss.request,
    }
}

/// Our config's values for the compile-env paths `build` records.
async fn our_entries(run: &Run, build: &IndexBuild) -> Result<Vec<CompileEnvEntry>, Missed> {
    let recorded = index_compile_env(build).map_err(|e| {
        missed(
            MissKind::VerificationFailed,
            format!("the index's compile env of {}: {e}", build.key),
        )
    })?;
    run.compile_env_for(&recorded).await
}

/// Attaches what `--request-builds` reports: the miss's key for `inputs` (whose target is the
/// one requested) — the base key when `every_key_known`, else the request key — and what the
/// mirror needs to recompute it. None when some member's manager is unknown (no miss the
/// mirror could check).
fn with_request(
    mut miss: Missed,
    inputs: &BuildInputs,
    own: &KeyInputs,
    members: &[(precomp_proto::buildkey::PackageRef, Option<KeyInputs>)],
    every_key_known: bool,
) -> Missed {
    let key = if every_key_known {
        inputs.base_key().map(|k| MissKey::Base(k.to_string()))
    } else {
        inputs
            .request_key()
            .map(|k| MissKey::Request(k.to_string()))
    };
    let Ok(key) = key else {
        return miss;
    };
    let mut closure = Vec::new();
    for (package, member) in members {
        let Some(member) = member else {
            return miss;
        };
        closure.push(MissMember {
            name: package.name.clone(),
            version: package.version.clone(),
            manager: member.manager.to_string(),
            target: member.target.as_ref().map(Target::to_string),
            compile_env: compile_env_json(&member.compile_env),
        });
    }
    let compile_env = compile_env_json(&own.compile_env);
    let carried: usize = compile_env
        .iter()
        .chain(closure.iter().flat_map(|m| m.compile_env.iter()))
        .map(|e| e.path.len() + e.value.as_ref().map_or(0, String::len))
        .sum();
    if carried > MAX_MISS_COMPILE_ENV_BYTES {
        miss.reason = format!(
            "{} (not reported to builders: the compile-time values its closure reads are \
             {carried} bytes, over the {MAX_MISS_COMPILE_ENV_BYTES} a build request may carry)",
            miss.reason
        );
        return miss;
    }
    // With our own values for its paths: a config variant, identified by its variant key.
    let variant_key = if own.compile_env.is_empty() {
        None
    } else {
        let variant = BuildInputs {
            compile_env: own.compile_env.clone(),
            ..inputs.clone()
        };
        match variant.variant_key() {
            Ok(key) => Some(key.to_string()),
            Err(_) => return miss,
        }
    };
    miss.request = Some(Box::new(BuildRequest {
        key,
        target: inputs.target.to_string(),
        manager: own.manager.to_string(),
        compile_env,
        closure,
        variant_key,
    }));
    miss
}

/// Compile-env entries as the API carries them: Erlang term text.
fn compile_env_json(entries: &[CompileEnvEntry]) -> Vec<CompileEnvJson> {
    entries
        .iter()
        .map(|entry| CompileEnvJson {
            app: entry.app.clone(),
            path: to_erlang_text(&Term::List(entry.path.clone())),
            value: entry.value.as_ref().map(to_erlang_text),
        })
        .collect()
}

/// The key of an install that is this build's, with its target, our compile env and the
/// files its manifest lists (to check the install by), if `installed` is: its stored
/// manifest still meets the policy, its target is `any` or ours, its base key is ours
/// (`inputs`, every member key known, for that target) and our config gives its key.
async fn current_key(
    run: &Run,
    inputs: &BuildInputs,
    installed: &install::Installed,
) -> Option<(String, Target, Vec<CompileEnvEntry>, Vec<FileRecord>)> {
    let signed = SignedManifest::decode(&installed.signed_manifest).ok()?;
    let (manifest, _) = run.policy.verify(&signed).ok()?;
    if manifest.key != installed.key {
        return None;
    }
    let theirs = manifest.inputs().ok()?;
    if theirs.target != Target::Any && Some(&theirs.target) != run.native.as_ref() {
        return None;
    }
    let ours = BuildInputs {
        target: theirs.target.clone(),
        ..inputs.clone()
    };
    if ours.base_key().ok()?.to_string() != manifest.base_key {
        return None;
    }
    let compile_env = run.compile_env_for(&theirs.compile_env).await.ok()?;
    let key = BuildInputs {
        compile_env: compile_env.clone(),
        ..ours
    }
    .key()
    .ok()?
    .to_string();
    let files = manifest.output?.files;
    (key == installed.key).then_some((key, theirs.target, compile_env, files))
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
        .chain(build.disagreements.iter().map(|d| {
            format!(
                "another build of the same key gave other bytes: {} (builder {})",
                d.summary,
                d.signers.join(", ")
            )
        }))
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
    if ours.manager != theirs.manager {
        return Some(format!(
            "built with {}, Mix uses {} here",
            theirs.manager, ours.manager
        ));
    }
    let sorted = |closure: &[ClosureMember]| {
        let mut c = closure.to_vec();
        c.sort();
        c
    };
    if sorted(&ours.closure) != sorted(&theirs.closure) {
        return Some(
            "its dependency closure (or what its dependencies were built with) differs from this \
             project's"
                .into(),
        );
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
            ours.manager.syntax(),
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
/// Which compile-env values differ, each shown in `syntax` (the package's people's: Elixir for
/// a Mix package): `cfg_macro [:label]: built with "red", your config sets "blue"`.
fn describe_compile_env_mismatch(
    recorded: &[CompileEnvEntry],
    ours: &[CompileEnvEntry],
    syntax: Syntax,
) -> String {
    let differences: Vec<String> = recorded
        .iter()
        .filter_map(|entry| {
            let our_entry = ours
                .iter()
                .find(|e| e.app == entry.app && e.path == entry.path)?;
            (our_entry.value != entry.value).then(|| {
                format!(
                    "{}: built with {}, your config sets {}",
                    entry.describe_path(syntax),
                    entry.describe_value(syntax),
                    our_entry.describe_value(syntax)
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

/// Why no build of the index has one of our base keys (`ours`: our inputs, with the target a
/// request would ask for; `differences`: the members whose keys no build has, and why).
fn no_candidate(
    ours: &BuildInputs,
    builds: &[IndexBuild],
    native: Option<&Target>,
    differences: &[String],
) -> Missed {
    let name = &ours.package.name;
    let version = &ours.package.version;
    let same_version: Vec<&IndexBuild> = builds.iter().filter(|b| &b.version == version).collect();
    if same_version.is_empty() {
        return missed(
            MissKind::NoArtifact,
            format!(
                "the mirror has no build of {name} {version} (for OTP {}, Elixir {}, Mix env \
                 {}{})",
                ours.otp_major,
                ours.elixir,
                ours.mix_env,
                // Native code is built per target: name it too.
                match &ours.target {
                    Target::Any => String::new(),
                    native => format!(", target {native}"),
                }
            ),
        );
    }
    let toolchain: Vec<&&IndexBuild> = same_version
        .iter()
        .filter(|b| b.otp_major == ours.otp_major && b.elixir == ours.elixir)
        .collect();
    if toolchain.is_empty() {
        let mut built: Vec<String> = same_version
            .iter()
            .map(|b| format!("OTP {} / Elixir {}", b.otp_major, b.elixir))
            .collect();
        built.sort();
        built.dedup();
        return missed(
            MissKind::NoArtifact,
            format!(
                "{name} {version} is built for {} only; this project uses OTP {} / Elixir {}",
                built.join(", "),
                ours.otp_major,
                ours.elixir
            ),
        );
    }
    let env: Vec<&&&IndexBuild> = toolchain
        .iter()
        .filter(|b| b.mix_env == ours.mix_env)
        .collect();
    if env.is_empty() {
        return missed(
            MissKind::NoArtifact,
            format!(
                "{name} {version} is built for Mix env {} only; this dependency uses {}",
                toolchain[0].mix_env, ours.mix_env
            ),
        );
    }
    let current: Vec<&&&IndexBuild> = env.iter().copied().filter(|b| b.key_format == 2).collect();
    if current.is_empty() {
        return missed(
            MissKind::OldKeyFormat,
            format!(
                "the mirror's builds of {name} {version} are of key format v1, which does not \
                 name what its dependencies were built with; builders rebuild it with key format \
                 v2 (precomp build --missing)"
            ),
        );
    }
    let ours_target = native.map_or_else(|| "unknown".to_string(), Target::to_string);
    let other_targets: BTreeSet<&str> = current
        .iter()
        .map(|b| b.target.as_str())
        .filter(|t| *t != "any" && *t != ours_target)
        .collect();
    if !other_targets.is_empty() && current.iter().all(|b| b.target != "any") {
        let all_other = current.iter().all(|b| b.target != ours_target);
        if all_other {
            return missed(
                MissKind::OtherTarget,
                format!(
                    "{name} {version} has native code built for {} only; this machine is {ours_target}",
                    other_targets.into_iter().collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
    if !differences.is_empty() {
        return missed(
            MissKind::NoArtifact,
            format!(
                "no build of {name} {version} against this project's builds of its \
                 dependencies: {}",
                differences.join("; ")
            ),
        );
    }
    missed(
        MissKind::NoArtifact,
        format!("no build of {name} {version} against this project's versions of its dependencies"),
    )
}

/// Reports the misses builders can fix to the mirror, one after the other; how many were
/// reported and the failures.
async fn request_builds(run: &Run, deps: &[DepReport], lock_text: &str) -> Requested {
    let mut requested = Requested::default();
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
        let (base_key, request_key) = match &request.key {
            MissKey::Base(key) => (Some(key.clone()), None),
            MissKey::Request(key) => (None, Some(key.clone())),
        };
        let report = MissReport {
            package: package.clone(),
            version: version.clone(),
            base_key,
            request_key,
            variant_key: request.variant_key.clone(),
            reason: reason.clone(),
            otp_major: run.project.otp_major.clone(),
            elixir: run.project.elixir.clone(),
            mix_env: dep_env,
            target: request.target.clone(),
            lock: closure_lock(&run.lock, &dep.app, lock_text),
            manager: request.manager.clone(),
            compile_env: request.compile_env.clone(),
            closure: request.closure.clone(),
        };
        match run.downloads.client.report_miss(&report).await {
            Ok(recorded) => {
                requested.reported += 1;
                if recorded.open {
                    requested.open += 1;
                } else {
                    requested.closed.push(format!(
                        "{}: {}",
                        dep.app,
                        recorded.closed_by.as_deref().unwrap_or("closed")
                    ));
                }
            }
            Err(e) => requested.errors.push(format!("{}: {e}", dep.app)),
        }
    }
    requested
}

/// What `--request-builds` did.
#[derive(Default)]
struct Requested {
    /// Misses the mirror recorded.
    reported: usize,
    /// Of those, the ones open for builders now.
    open: usize,
    /// The others, each `app: what closed it` (a failure recorded, or a build the mirror
    /// counts that this client does not use).
    closed: Vec<String>,
    errors: Vec<String>,
}

/// mix.lock text with just `app` and its closure, as Mix would write it; the whole lock if
/// that cannot be written (the client cuts it to the mirror's bound).
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
        None => full.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/client.md "Output": a miss builders can fix, and the summary object with the
    /// documented fields, as `--json` prints them (name order, nulls kept for
    /// `package`/`version`/`target`).
    #[test]
    fn json_lines_have_the_documented_fields() {
        let miss = DepReport {
            app: "shapes".into(),
            package: Some("shapes".into()),
            version: Some("2.0.0".into()),
            outcome: Outcome::Miss {
                kind: MissKind::NoArtifact,
                reason: "no build".into(),
                removed_stale: false,
            },
            build_request: Some(BuildRequest {
                key: MissKey::Base("ab".into()),
                target: "any".into(),
                manager: "mix".into(),
                compile_env: Vec::new(),
                closure: Vec::new(),
                variant_key: None,
            }),
        };
        assert_eq!(
            serde_json::to_string(&miss.line()).unwrap(),
            format!(
                r#"{{"app":"shapes","base_key":"ab","kind":"{}","package":"shapes","reason":"no build","removed_stale":false,"status":"miss","version":"2.0.0"}}"#,
                MissKind::NoArtifact.as_str()
            )
        );
        let git = DepReport {
            app: "from_git".into(),
            package: None,
            version: None,
            outcome: Outcome::Skipped {
                reason: "a git dependency".into(),
                mix_builds: true,
            },
            build_request: None,
        };
        assert_eq!(
            serde_json::to_string(&git.line()).unwrap(),
            r#"{"app":"from_git","mix_builds":true,"package":null,"reason":"a git dependency","status":"skipped","version":null}"#
        );
        let report = FetchReport {
            deps: vec![miss, git],
            bytes: 0,
            elapsed: Duration::from_millis(1500),
            recovered: Vec::new(),
            requested: 1,
            requested_open: 1,
            requested_closed: Vec::new(),
            request_errors: Vec::new(),
            mix_env: "prod".into(),
            elixir: "1.14.0".into(),
            otp_major: "25".into(),
            native_target: None,
            build_path: PathBuf::from("_build"),
        };
        let summary = serde_json::to_value(report.json_summary()).unwrap();
        let mut fields: Vec<&str> = summary
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut documented = vec![
            "summary",
            "hits",
            "installed",
            "current",
            "misses",
            "skipped",
            "bytes",
            "seconds",
            "missing",
            "requested_builds",
            "requested_open",
            "mix_env",
            "elixir",
            "otp",
            "target",
        ];
        fields.sort();
        documented.sort();
        assert_eq!(fields, documented);
        assert_eq!(summary["summary"], true);
        assert_eq!(
            summary["missing"],
            serde_json::json!(["shapes", "from_git"])
        );
        assert_eq!(summary["seconds"], 1.5);
        assert_eq!(summary["target"], serde_json::Value::Null);
    }
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
            config_dump: crate::process::Tail::ready(None),
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
            Syntax::Elixir,
        );
        assert_eq!(
            text,
            "env_reader [:greeting]: built with \"hello\", your config sets \"howdy\""
        );
        let erlang = describe_compile_env_mismatch(
            &[entry(Some(Term::binary("hello")))],
            &[entry(Some(Term::atom("hi")))],
            Syntax::Erlang,
        );
        assert_eq!(
            erlang,
            "env_reader [greeting]: built with <<\"hello\">>, your config sets hi"
        );
        assert!(describe_compile_env_mismatch(
            &[entry(None)],
            &[entry(Some(Term::atom("x")))],
            Syntax::Elixir
        )
        .contains("built with nothing, your config sets :x"));
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    /// A `no_artifact` miss names the exact tuple it was looked up for; the target only for
    /// native code (other packages are built once for every target).
    #[test]
    fn a_miss_with_no_build_names_its_tuple() {
        let mut ours = BuildInputs {
            package: precomp_proto::buildkey::PackageRef {
                name: "tiny_nif".into(),
                version: "1.0.0".into(),
                outer_checksum: [0; 32],
            },
            manager: Manager::Mix,
            closure: vec![],
            otp_major: "27".into(),
            elixir: "1.18.3".into(),
            mix_env: "prod".into(),
            target: Target::Any,
            compile_env: vec![],
        };
        let miss = no_candidate(&ours, &[], None, &[]);
        assert_eq!(miss.kind, MissKind::NoArtifact);
        assert_eq!(
            miss.reason,
            "the mirror has no build of tiny_nif 1.0.0 (for OTP 27, Elixir 1.18.3, Mix env prod)"
        );
        ours.target = Target::parse("aarch64-linux-musl").unwrap();
        assert!(no_candidate(&ours, &[], None, &[])
            .reason
            .ends_with("(for OTP 27, Elixir 1.18.3, Mix env prod, target aarch64-linux-musl)"),);
    }
}
