//! The mirror side of a fetch, and the work started before the project probe answers.
//!
//! [`Downloads`] is what every request of one run shares: the client, the trust policy, the
//! `--jobs` permits, each package's index (asked once) and each build's *preparation*
//! ([`Downloads::prepare`], made once): its signed manifest verified against the policy, its
//! artifact received with its SHA-256 checked as it arrives and unpacked, its files checked
//! against the manifest in the same pass, into a staging directory beside its target in
//! `_build/<env>/lib`. What a preparation does not check is whether the build is the one
//! *this* project needs: that takes its key, which needs the probe's answers (toolchain, Mix
//! envs, config). The lookup checks it, then moves the staged directory into place.
//!
//! The probe (an `elixir` VM evaluating mix.exs) is the fixed cost of every fetch, so
//! [`Early::start`] begins what does not need its answers at the same time: it reads
//! `mix.lock` where Mix reads it by default, asks the mirror for every package's index,
//! locks and recovers the lib directory Mix uses by default (`_build/<env>/lib`, or what
//! `MIX_BUILD_PATH`, `MIX_BUILD_ROOT`, `MIX_TARGET` make it), and prepares the build of each
//! package that is most likely ours: the one build of the locked version for the toolchain
//! and Mix env most of the lock's packages have builds for, for target `any` or this
//! machine's. When the probe answers, [`Early::settle`] keeps that work if the guessed lib
//! directory is the project's, and otherwise waits for it and throws it away. Either way the
//! lookup decides by key alone: a preparation whose key is not the one the project needs is
//! never installed, and is deleted at the end of the run.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use precomp_http::artifacts::ArtifactClient;
use precomp_proto::api::IndexBuild;
use precomp_proto::artifact::ArtifactError;
use precomp_proto::buildkey::Target;
use precomp_proto::lock::{LockEntry, MixLock};
use precomp_proto::manifest::SignedManifest;
use tokio::sync::{OnceCell, RwLock, Semaphore};
use tokio::task::JoinHandle;

use crate::error::ClientError;
use crate::fetch::{missed, MissKind, Missed};
use crate::install::{self, LibLock, Staged};
use crate::trust::TrustPolicy;

/// A package's builds, as the mirror's index lists them.
pub(crate) type Builds = Arc<Vec<IndexBuild>>;

/// A build's manifest and artifact, verified and staged ([`Downloads::prepare`]).
pub(crate) struct Prepared {
    /// Verified against the policy; the lookup checks it against the project's key.
    pub signed_manifest: Vec<u8>,
    /// Artifact size.
    pub bytes: u64,
    /// Taken by the one install of it.
    pub staged: Mutex<Option<Staged>>,
}

type PreparedCell = Arc<OnceCell<Result<Arc<Prepared>, Missed>>>;
type IndexCell = Arc<OnceCell<Result<Builds, String>>>;

/// What every request of one run shares.
pub(crate) struct Downloads {
    pub client: ArtifactClient,
    pub policy: TrustPolicy,
    /// Requests to the mirror, and artifacts held in memory, at a time (`--jobs`).
    pub permits: Semaphore,
    indexes: Mutex<HashMap<String, IndexCell>>,
    /// By (app, key).
    prepared: Mutex<HashMap<(String, String), PreparedCell>>,
    /// Held (shared) by every staging in progress; taken exclusively to wait for them.
    staging: Arc<RwLock<()>>,
    /// Unpacks at a time. While the probe runs, one CPU fewer than the machine has: the
    /// probe's VM is the critical path of a fetch and gets a CPU to itself, staging the
    /// others (it is done long before the probe on any lock of a realistic size). Once the
    /// probe answered, `jobs`.
    unpacking: Semaphore,
    /// Permits `unpacking` gets when the probe answered.
    unpacking_later: std::sync::atomic::AtomicUsize,
    /// Speculative work, aborted and awaited before the lib directory is let go; `None` once
    /// stopped (nothing speculative starts any more).
    speculative: Mutex<Option<Vec<JoinHandle<()>>>>,
}

impl Downloads {
    pub fn new(client: ArtifactClient, policy: TrustPolicy, jobs: usize) -> Downloads {
        let jobs = jobs.max(1);
        let beside_probe = std::thread::available_parallelism()
            .map_or(1, |cpus| cpus.get().saturating_sub(1))
            .clamp(1, jobs);
        Downloads {
            client,
            policy,
            permits: Semaphore::new(jobs),
            unpacking: Semaphore::new(beside_probe),
            unpacking_later: (jobs - beside_probe).into(),
            indexes: Mutex::default(),
            prepared: Mutex::default(),
            staging: Arc::default(),
            speculative: Mutex::new(Some(Vec::new())),
        }
    }

    /// The probe answered: staging may use `jobs` CPUs.
    pub fn probe_answered(&self) {
        let more = self
            .unpacking_later
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        self.unpacking.add_permits(more);
    }

    /// The builds of `package` the mirror lists (asked once per run).
    pub async fn index(&self, package: &str) -> Result<Builds, String> {
        let cell = self
            .indexes
            .lock()
            .expect("index cells")
            .entry(package.to_string())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let _permit = self.permits.acquire().await;
            self.client
                .index(package)
                .await
                .map(|index| Arc::new(index.builds))
                .map_err(|e| e.to_string())
        })
        .await
        .clone()
    }

    /// `build` of `app`, its manifest verified against the policy and its artifact staged in
    /// `lib_dir` (made once per run; callers wait for the one preparation).
    pub async fn prepare(
        &self,
        lib_dir: &Path,
        app: &str,
        build: &IndexBuild,
    ) -> Result<Arc<Prepared>, Missed> {
        let cell = self
            .prepared
            .lock()
            .expect("prepared cells")
            .entry((app.to_string(), build.key.clone()))
            .or_default()
            .clone();
        cell.get_or_init(|| async { self.prepare_now(lib_dir, app, build).await.map(Arc::new) })
            .await
            .clone()
    }

    async fn prepare_now(
        &self,
        lib_dir: &Path,
        app: &str,
        build: &IndexBuild,
    ) -> Result<Prepared, Missed> {
        let key = &build.key;
        // Held until the artifact is unpacked: at most `jobs` artifacts in memory.
        let _permit = self.permits.acquire().await;
        let signed_manifest = match self.client.manifest(key).await {
            Ok(Some(bytes)) => bytes.to_vec(),
            Ok(None) => {
                return Err(missed(
                    MissKind::NoArtifact,
                    format!("the mirror lists build {key} but has no manifest for it"),
                ))
            }
            Err(e) => return Err(missed(MissKind::Unavailable, e.to_string())),
        };
        let signed = SignedManifest::decode(&signed_manifest)
            .map_err(|e| missed(MissKind::VerificationFailed, format!("manifest {key}: {e}")))?;
        let (manifest, _signers) = self.policy.verify(&signed).map_err(|refusal| {
            missed(
                MissKind::of_refusal(&refusal),
                format!("manifest {key}: {}", self.policy.explain(&refusal)),
            )
        })?;
        if manifest.key != *key {
            return Err(missed(
                MissKind::VerificationFailed,
                format!("the mirror served manifest {} for key {key}", manifest.key),
            ));
        }
        let output = manifest.output.clone().ok_or_else(|| {
            missed(
                MissKind::VerificationFailed,
                "the manifest describes no artifact",
            )
        })?;
        let app_file = format!("ebin/{app}.app");
        if !output.files.iter().any(|f| f.path == app_file) {
            return Err(missed(
                MissKind::VerificationFailed,
                format!("the artifact has no {app_file}"),
            ));
        }
        let sha256 = hex::encode(&output.artifact_sha256);
        if sha256 != build.artifact_sha256 {
            tracing::debug!(
                "{app}: the index names artifact {} but the signed manifest {sha256}; using the manifest's",
                build.artifact_sha256
            );
        }
        let Ok(digest) = <[u8; 32]>::try_from(output.artifact_sha256.as_slice()) else {
            return Err(missed(
                MissKind::VerificationFailed,
                format!("manifest {key}: the artifact digest is not a SHA-256"),
            ));
        };
        // Received with its SHA-256 checked against the signed manifest's as it arrives.
        let artifact = match self
            .client
            .artifact_sized(&digest, output.artifact_size)
            .await
        {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return Err(missed(
                    MissKind::NoArtifact,
                    format!("the mirror has the manifest but not artifact {sha256}"),
                ))
            }
            Err(e @ precomp_http::Error::TooLarge { .. }) => {
                return Err(missed(
                    MissKind::VerificationFailed,
                    format!(
                        "artifact {sha256}: {e} (the manifest says {})",
                        output.artifact_size
                    ),
                ))
            }
            Err(e @ precomp_http::Error::Digest { .. }) => {
                return Err(missed(
                    MissKind::VerificationFailed,
                    format!("artifact {sha256} does not match its signed manifest: {e}"),
                ))
            }
            Err(e) => return Err(missed(MissKind::Unavailable, e.to_string())),
        };
        // Unpacked beside its target, checked against the manifest's files in the same pass.
        let bytes = artifact.len() as u64;
        let _unpacking = self.unpacking.acquire().await;
        let staging = self.staging.clone().read_owned().await;
        let (lib_dir, app_owned) = (lib_dir.to_path_buf(), app.to_string());
        let staged = tokio::task::spawn_blocking(move || {
            let staged = install::stage(&lib_dir, &app_owned, &artifact, Some(&output));
            drop(staging);
            staged
        })
        .await
        .map_err(|e| missed(MissKind::InstallFailed, e.to_string()))?
        .map_err(|e| match e {
            install::InstallError::Unpack(
                e @ (ArtifactError::Io { .. } | ArtifactError::Destination { .. }),
            ) => missed(MissKind::InstallFailed, e.to_string()),
            install::InstallError::Unpack(e) => missed(
                MissKind::VerificationFailed,
                format!("artifact {sha256} does not match its signed manifest: {e}"),
            ),
            install::InstallError::NoAppFile(file) => missed(
                MissKind::VerificationFailed,
                format!("the artifact has no {file}"),
            ),
            e => missed(MissKind::InstallFailed, e.to_string()),
        })?;
        Ok(Prepared {
            signed_manifest,
            bytes,
            staged: Mutex::new(Some(staged)),
        })
    }

    /// Stops the speculative preparations nobody waits for, and waits for every staging in
    /// progress: after this nothing writes into the lib directory. Unused staged builds are
    /// deleted when the last reference to them goes.
    pub async fn stop(&self) {
        let handles = self
            .speculative
            .lock()
            .expect("handles")
            .take()
            .unwrap_or_default();
        for handle in &handles {
            handle.abort();
        }
        for handle in handles {
            let _ = handle.await;
        }
        let _ = self.staging.write().await;
        self.prepared.lock().expect("prepared cells").clear();
    }
}

impl Downloads {
    /// Runs `work` as speculative work (see [`Downloads::stop`]), unless stopped already.
    fn speculate(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut handles = self.speculative.lock().expect("handles");
        if let Some(handles) = handles.as_mut() {
            handles.push(tokio::spawn(work));
        }
    }
}

/// The lib directory Mix uses when mix.exs does not say otherwise (`Mix.Project.build_path`):
/// `MIX_BUILD_PATH`, else `MIX_BUILD_ROOT` (default `_build`) and `<target>_<env>` (just the
/// env for the host target), then `lib`.
pub(crate) fn default_lib_dir(project_dir: &Path, mix_env: &str) -> PathBuf {
    let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    let build_path = match var("MIX_BUILD_PATH") {
        Some(path) => project_dir.join(path),
        None => {
            let root = var("MIX_BUILD_ROOT").unwrap_or_else(|| "_build".into());
            let sub = match var("MIX_TARGET").as_deref() {
                None | Some("host") => mix_env.to_string(),
                Some(target) => format!("{target}_{mix_env}"),
            };
            project_dir.join(root).join(sub)
        }
    };
    normalize(&build_path).join("lib")
}

/// `path` without `.` components and with `..` applied, as Elixir's `Path.expand` leaves it
/// (links are not followed).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// This machine's native target as precomp names it, when the probe has not said yet.
fn guess_native() -> Option<Target> {
    let libc = if cfg!(target_env = "musl") {
        "linux-musl"
    } else if cfg!(target_os = "linux") {
        "linux-gnu"
    } else if cfg!(target_os = "macos") {
        "darwin"
    } else {
        return None;
    };
    Target::parse_native(&format!("{}-{libc}", std::env::consts::ARCH))
}

/// The lib directory locked and recovered before the probe answered.
struct Locked {
    lib_dir: PathBuf,
    guard: LibLock,
    recovered: Vec<String>,
    /// Directories this run created to get there (removed again if the guess was wrong).
    created: Vec<PathBuf>,
}

/// Work started before the probe answers ([`Early::start`]).
pub(crate) struct Early {
    locked: Option<tokio::sync::oneshot::Receiver<Result<Locked, ClientError>>>,
}

/// What [`Early::settle`] hands the run: the lib directory, locked and recovered.
pub(crate) struct Settled {
    pub guard: LibLock,
    pub recovered: Vec<String>,
}

impl Early {
    /// Starts, beside the probe: the index of every package of `project_dir/mix.lock`, and
    /// (with the default lib directory locked) the preparation of each package's likely build.
    /// Nothing starts without `mix.exs` and `mix.lock` there.
    pub fn start(
        downloads: &Arc<Downloads>,
        project_dir: &Path,
        mix_env: &str,
        target: Option<Target>,
    ) -> Early {
        let lock_path = project_dir.join("mix.lock");
        let lock = (project_dir.join("mix.exs").is_file())
            .then(|| crate::fetch::read_lock(&lock_path).ok())
            .flatten()
            .and_then(|text| MixLock::parse(&text).ok());
        let Some(lock) = lock else {
            return Early { locked: None };
        };
        let lib_dir = default_lib_dir(project_dir, mix_env);
        let (send, locked) = tokio::sync::oneshot::channel();
        let native = target.or_else(guess_native);
        let early = downloads.clone();
        downloads.speculate(async move {
            let downloads = early;
            // Every index at once; the lib directory locked meanwhile.
            let packages: Vec<(String, String, String)> = lock
                .entries
                .iter()
                .filter_map(|(app, entry)| match entry {
                    LockEntry::Hex(hex) => {
                        Some((app.clone(), hex.package.clone(), hex.version.clone()))
                    }
                    _ => None,
                })
                .collect();
            let mut indexes = Vec::new();
            for (_, package, _) in &packages {
                let (downloads, package) = (downloads.clone(), package.clone());
                indexes.push(tokio::spawn(async move { downloads.index(&package).await }));
            }
            let dir = lib_dir.clone();
            let locking = tokio::task::spawn_blocking(move || lock_and_recover(&dir)).await;
            let locking = locking.unwrap_or_else(|e| Err(ClientError::Internal(e.to_string())));
            let speculate = locking.is_ok();
            let _ = send.send(locking);
            let mut builds = Vec::new();
            for ((app, _, version), index) in packages.into_iter().zip(indexes) {
                if let Ok(Ok(index)) = index.await {
                    builds.push((app, version, index));
                }
            }
            if !speculate {
                return;
            }
            let auditors = downloads.policy.has_auditors();
            for (app, build) in likely_builds(&builds, native.as_ref(), auditors) {
                let (task, lib_dir) = (downloads.clone(), lib_dir.clone());
                downloads.speculate(async move {
                    let _ = task.prepare(&lib_dir, &app, &build).await;
                });
            }
        });
        Early {
            locked: Some(locked),
        }
    }

    /// The project's lib directory, locked and recovered: the one locked early when it is
    /// the project's (its preparations stay usable), else, once the early work stopped and
    /// was thrown away, `lib_dir` itself.
    pub async fn settle(
        self,
        downloads: &Downloads,
        lib_dir: &Path,
    ) -> Result<Settled, ClientError> {
        let locked = match self.locked {
            Some(receiver) => receiver.await.ok(),
            None => None,
        };
        if let Some(Ok(locked)) = locked {
            if locked.lib_dir == lib_dir {
                return Ok(Settled {
                    guard: locked.guard,
                    recovered: locked.recovered,
                });
            }
            tracing::debug!(
                "the build directory is {}, not {}: early work thrown away",
                lib_dir.display(),
                locked.lib_dir.display()
            );
            abandon(downloads, locked).await;
        } else {
            downloads.stop().await;
        }
        let dir = lib_dir.to_path_buf();
        let locked = tokio::task::spawn_blocking(move || lock_and_recover(&dir))
            .await
            .map_err(|e| ClientError::Internal(e.to_string()))??;
        Ok(Settled {
            guard: locked.guard,
            recovered: locked.recovered,
        })
    }
}

impl Early {
    /// The probe failed: stops the early work and removes what it made.
    pub async fn abandon(self, downloads: &Downloads) {
        let locked = match self.locked {
            Some(receiver) => receiver.await.ok(),
            None => None,
        };
        match locked {
            Some(Ok(locked)) => abandon(downloads, locked).await,
            _ => downloads.stop().await,
        }
    }
}

/// Stops the early work staged in `locked`'s directory, then lets it go, removing the lock
/// file and the directories made for it.
async fn abandon(downloads: &Downloads, locked: Locked) {
    downloads.stop().await;
    if !locked.created.is_empty() {
        let _ = std::fs::remove_file(locked.lib_dir.join(install::LOCK_FILE));
    }
    drop(locked.guard);
    for dir in locked.created.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Locks `lib_dir` (creating it) and recovers what an interrupted run left there.
fn lock_and_recover(lib_dir: &Path) -> Result<Locked, ClientError> {
    let mut created = Vec::new();
    let mut dir = Some(lib_dir);
    while let Some(path) = dir {
        if path.exists() {
            break;
        }
        created.push(path.to_path_buf());
        dir = path.parent();
    }
    created.reverse();
    let guard = LibLock::acquire(lib_dir)?;
    let recovered = install::recover(lib_dir)?;
    Ok(Locked {
        lib_dir: lib_dir.to_path_buf(),
        guard,
        recovered,
        created,
    })
}

/// For each package (app, locked version, its builds), the build most likely to be the one
/// the project needs, before the probe can say: among builds of the locked version, of key
/// format 2, for target `any` or `native`, not flagged when the policy names auditors, those
/// for the toolchain and Mix env most packages have builds for; chosen only when there is
/// exactly one (several mean several configs: the lookup decides after the probe).
fn likely_builds(
    packages: &[(String, String, Builds)],
    native: Option<&Target>,
    auditors: bool,
) -> Vec<(String, IndexBuild)> {
    let native = native.map(Target::to_string);
    let usable = |version: &str, build: &IndexBuild| {
        build.version == version
            && build.key_format == 2
            && (build.target == "any" || Some(&build.target) == native.as_ref())
            && !(build.flagged && auditors)
    };
    let mut tuples: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    for (_, version, builds) in packages {
        let mut seen: Vec<(&str, &str, &str)> = builds
            .iter()
            .filter(|b| usable(version, b))
            .map(|b| (b.otp_major.as_str(), b.elixir.as_str(), b.mix_env.as_str()))
            .collect();
        seen.sort();
        seen.dedup();
        for tuple in seen {
            *tuples.entry(tuple).or_default() += 1;
        }
    }
    // The most common; ties go to the first in order (deterministic).
    let Some(best) = tuples
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(tuple, _)| *tuple)
    else {
        return Vec::new();
    };
    packages
        .iter()
        .filter_map(|(app, version, builds)| {
            let mut ours = builds.iter().filter(|b| {
                usable(version, b)
                    && (b.otp_major.as_str(), b.elixir.as_str(), b.mix_env.as_str()) == best
            });
            match (ours.next(), ours.next()) {
                (Some(build), None) => Some((app.clone(), build.clone())),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(version: &str, otp: &str, env: &str, target: &str, key: &str) -> IndexBuild {
        IndexBuild {
            version: version.into(),
            key: key.into(),
            base_key: key.into(),
            otp_major: otp.into(),
            elixir: "1.14.0".into(),
            mix_env: env.into(),
            target: target.into(),
            artifact_sha256: String::new(),
            artifact_size: 0,
            compile_env: vec![],
            key_format: 2,
            recipe: None,
            signers: vec![],
            agreed_by: vec![],
            auditors: vec![],
            flagged: false,
            verdicts: vec![],
            disagreements: vec![],
        }
    }

    #[test]
    fn the_likely_build_is_the_one_of_the_most_common_toolchain() {
        let native = Target::parse("x86_64-linux-gnu");
        let packages = vec![
            (
                "a".to_string(),
                "1.0.0".to_string(),
                Arc::new(vec![
                    build("1.0.0", "25", "prod", "any", "a25"),
                    build("1.0.0", "27", "prod", "any", "a27"),
                    build("0.9.0", "25", "prod", "any", "a-old"),
                ]),
            ),
            (
                "b".to_string(),
                "2.0.0".to_string(),
                Arc::new(vec![build(
                    "2.0.0",
                    "25",
                    "prod",
                    "x86_64-linux-gnu",
                    "b25",
                )]),
            ),
            (
                "c".to_string(),
                "1.0.0".to_string(),
                // Two configs: the lookup decides.
                Arc::new(vec![
                    build("1.0.0", "25", "prod", "any", "c-red"),
                    build("1.0.0", "25", "prod", "any", "c-blue"),
                ]),
            ),
            (
                "d".to_string(),
                "1.0.0".to_string(),
                Arc::new(vec![build(
                    "1.0.0",
                    "25",
                    "prod",
                    "aarch64-linux-gnu",
                    "d-arm",
                )]),
            ),
        ];
        let chosen: Vec<(String, String)> = likely_builds(&packages, native.as_ref(), false)
            .into_iter()
            .map(|(app, build)| (app, build.key))
            .collect();
        assert_eq!(
            chosen,
            vec![("a".into(), "a25".into()), ("b".into(), "b25".into())]
        );
        assert!(likely_builds(&[], native.as_ref(), false).is_empty());
    }

    #[test]
    fn the_default_build_directory_is_mixs() {
        // The process's MIX_* variables are read: only check what they do not change.
        if ["MIX_BUILD_PATH", "MIX_BUILD_ROOT", "MIX_TARGET"]
            .iter()
            .all(|v| std::env::var_os(v).is_none())
        {
            assert_eq!(
                default_lib_dir(Path::new("/p/./app/../app"), "test"),
                Path::new("/p/app/_build/test/lib")
            );
        }
        assert_eq!(normalize(Path::new("/a/./b/../c")), Path::new("/a/c"));
    }
}
