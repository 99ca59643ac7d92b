//! Building for the mirror: one lock's builds published (artifact and manifest, or the
//! failure's log), and a miss closed when the build's own report does not close it. What
//! `precomp build --publish` / `--missing` does per lock and a build worker per job.

use std::path::{Path, PathBuf};

use precomp_builder::build::BuildContext;
use precomp_builder::managers::{self, Managers};
use precomp_builder::run::{self, PackageResult, Progress, Status};
use precomp_http::artifacts::ArtifactClient;
use precomp_proto::api::{FailureReport, Miss};
use precomp_proto::buildkey::request_satisfied_by;
use precomp_proto::lock::{LockEntry, MixLock};
use precomp_proto::manager::{Manager, TopLevelDep};
// The one place this crate reads the artifact service's own miss rules (`precomp_artifacts`):
// what a build must be to satisfy a miss.
use precomp_artifacts::{miss_request_text, miss_satisfied_by};
use precomp_sandbox::toolchain::Toolchain;
use precomp_sandbox::Sandbox;

use crate::error::{Result, WorkerError};

/// What to build of one lock: the packages asked for (and their closures), each with the
/// manager the consumer's Mix uses ([`lock_managers`]).
pub struct LockBuild<'a> {
    pub lock: &'a MixLock,
    pub managers: &'a Managers,
    pub apps: &'a [String],
}

/// One lock's builds (`run::build_lock`), each then published to the mirror when
/// `publish_to` is given (artifact and manifest, or the failure's log): what `precomp build`
/// does per lock and `precomp worker` per job. Each result comes with how its publication
/// went (`None` when not published).
pub fn build_and_publish(
    build_context: &BuildContext<'_>,
    reuse: &run::Reuse<'_>,
    work: &LockBuild<'_>,
    jobs: usize,
    progress: &dyn Progress,
    publish_to: Option<(&tokio::runtime::Runtime, &ArtifactClient)>,
) -> Result<Vec<(PackageResult, Option<Result<Published>>)>> {
    let results = run::build_lock(
        build_context,
        reuse,
        work.lock,
        work.managers,
        work.apps,
        jobs,
        progress,
    )?;
    Ok(publish_results(
        results,
        build_context.toolchain,
        publish_to,
    ))
}

/// Each result published to the mirror when `publish_to` is given ([`publish`]), with how
/// its publication went (`None` when not published): the second half of
/// [`build_and_publish`].
pub fn publish_results(
    results: Vec<PackageResult>,
    toolchain: &Toolchain,
    publish_to: Option<(&tokio::runtime::Runtime, &ArtifactClient)>,
) -> Vec<(PackageResult, Option<Result<Published>>)> {
    results
        .into_iter()
        .map(|result| {
            let published =
                publish_to.map(|(runtime, client)| publish(runtime, client, toolchain, &result));
            (result, published)
        })
        .collect()
}

/// The manager of each package of `lock`: the one the consumer's Mix uses, with `top_level`
/// its declared deps (`None`: the lock's roots).
pub fn lock_managers(
    context: &BuildContext<'_>,
    lock: &MixLock,
    top_level: Option<&[TopLevelDep]>,
) -> Result<Managers> {
    for dep in top_level.unwrap_or_default() {
        if !lock.entries.contains_key(&dep.app) {
            return Err(WorkerError::TopLevel {
                app: dep.app.clone(),
            });
        }
    }
    managers::for_lock(context.sources, lock, top_level, &context.toolchain.elixir).map_err(
        |source| WorkerError::Managers {
            source: Box::new(source),
        },
    )
}

/// The managers a reported miss carries (the client's, computed on its whole project: Mix's
/// rule depends on more than the closure the miss comes with), for the package and each
/// closure member; [`lock_managers`] for any the miss does not name.
pub fn miss_managers(context: &BuildContext<'_>, lock: &MixLock, miss: &Miss) -> Result<Managers> {
    let mut managers = lock_managers(context, lock, None)?;
    let reported = std::iter::once((&miss.package, &miss.manager)).chain(
        miss.closure
            .iter()
            .map(|member| (&member.name, &member.manager)),
    );
    for (package, manager) in reported {
        let Some((app, _)) = lock.hex().find(|(_, entry)| &entry.package == package) else {
            continue;
        };
        let manager = Manager::parse(manager).ok_or_else(|| WorkerError::MissManager {
            package: miss.package.clone(),
            member: package.clone(),
            manager: manager.clone(),
        })?;
        managers.insert(app.to_string(), manager);
    }
    Ok(managers)
}

/// The directory builds are made in: the sandbox user must reach it. Directories left there
/// by builds whose process was killed are removed first.
pub fn work_root(sandbox: &Sandbox, data: &Path, given: Option<&Path>) -> Result<PathBuf> {
    let root = choose_work_root(sandbox, data, given)?;
    precomp_builder::workdir::sweep(&root);
    Ok(root)
}

fn choose_work_root(sandbox: &Sandbox, data: &Path, given: Option<&Path>) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let make = |dir: &Path| -> Result<()> {
        std::fs::create_dir_all(dir).map_err(WorkerError::io("creating", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
            WorkerError::NotSearchable {
                path: dir.to_path_buf(),
                source,
            }
        })
    };
    if let Some(dir) = given {
        make(dir)?;
        sandbox
            .check_readable(dir)
            .map_err(|source| WorkerError::WorkDir {
                what: format!("--work-dir {}", dir.display()),
                source,
            })?;
        return Ok(dir.to_path_buf());
    }
    let preferred = data.join("builds/work");
    make(&preferred)?;
    match sandbox.check_readable(&preferred) {
        Ok(()) => Ok(preferred),
        Err(e) => {
            let fallback = std::env::temp_dir().join("precomp-build-work");
            make(&fallback)?;
            sandbox
                .check_readable(&fallback)
                .map_err(|source| WorkerError::WorkDir {
                    what: format!("{e}; and {}", fallback.display()),
                    source,
                })?;
            tracing::info!(
                "the sandbox user cannot reach {} ({e}); building in {}",
                preferred.display(),
                fallback.display()
            );
            Ok(fallback)
        }
    }
}

/// The lock's app for `NAME@VERSION` (the package name; the app name may differ).
pub fn app_for(lock: &MixLock, spec: &str, lock_path: &Path) -> Result<String> {
    let (name, version) = spec.split_once('@').ok_or_else(|| WorkerError::Spec {
        spec: spec.to_string(),
    })?;
    for (app, entry) in &lock.entries {
        if let LockEntry::Hex(entry) = entry {
            if entry.package == name {
                if entry.version != version {
                    return Err(WorkerError::LockedVersion {
                        lock: lock_path.to_path_buf(),
                        name: name.to_string(),
                        locked: entry.version.clone(),
                        asked: version.to_string(),
                    });
                }
                return Ok(app.clone());
            }
        }
    }
    Err(WorkerError::NotInLock {
        lock: lock_path.to_path_buf(),
        name: name.to_string(),
    })
}

/// What publishing one package's result did on the mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Published {
    /// The mirror took its manifest: its `result` (`created`, `unchanged`, `countersigned`,
    /// `agreed`, `replaced`; or `other_recipe`: the key is served by a build of another
    /// build recipe, and this one was not stored).
    Manifest(String),
    /// Its failure was recorded with its log.
    Failure,
    /// Nothing to upload (skipped, cancelled, not buildable).
    Nothing,
}

/// Uploads a build (artifact, then manifest) or records a failure with its log.
pub fn publish(
    runtime: &tokio::runtime::Runtime,
    client: &ArtifactClient,
    toolchain: &Toolchain,
    result: &PackageResult,
) -> Result<Published> {
    runtime.block_on(async {
        if let Some(build) = &result.build {
            let output = build
                .manifest
                .output
                .as_ref()
                .expect("stored builds have an output");
            let digest = &output.artifact_sha256;
            let sha256: [u8; 32] = digest
                .as_slice()
                .try_into()
                .map_err(|_| WorkerError::ArtifactDigest { len: digest.len() })?;
            if !client.has_artifact(&sha256).await? {
                let bytes = std::fs::read(&build.artifact_path)
                    .map_err(WorkerError::io("reading", &build.artifact_path))?;
                client.upload_artifact(&sha256, bytes).await?;
            }
            let (_, stored) = client
                .upload_manifest(&build.manifest.key, build.signed_bytes.clone())
                .await?;
            Ok(Published::Manifest(stored.result))
        } else if let Status::Failed { log, base_key, .. } = &result.status {
            let text = std::fs::read(log).map_err(WorkerError::io("reading", log))?;
            client
                .record_failure(&FailureReport {
                    package: result.package.name.clone(),
                    version: result.package.version.clone(),
                    base_key: base_key.clone(),
                    toolchain_id: toolchain.id.clone(),
                    log: String::from_utf8_lossy(&text).into_owned(),
                })
                .await?;
            Ok(Published::Failure)
        } else {
            Ok(Published::Nothing)
        }
    })
}

/// After building `miss` (its package's `result`, and how its publication went): what closes
/// the miss when the build's own report does not — a publish closes the misses its build
/// satisfies, a failure the miss with its base key. A failure is recorded under the miss's
/// key when the package failed under another base key (the miss's request key or variant
/// key, or another target), or was built but does not satisfy the miss (a dependency's
/// build read other compile-time paths than the miss knew of, or a config variant's build
/// read a path the miss does not carry), so the miss is not built again and again. Returns
/// what was recorded.
pub fn settle_miss(
    runtime: &tokio::runtime::Runtime,
    client: &ArtifactClient,
    toolchain: &Toolchain,
    miss: &Miss,
    result: &PackageResult,
    published: Option<&Result<Published>>,
) -> Result<Option<String>> {
    let log = match (&result.status, &result.build, published) {
        (
            Status::Failed {
                base_key, reason, ..
            },
            _,
            _,
        ) if base_key != miss.miss_key() => format!(
            "precomp: {} {} failed to build (base key {base_key}): {reason}\n",
            miss.package, miss.version
        ),
        (_, Some(build), Some(Ok(Published::Manifest(_)))) => {
            let inputs = build.manifest.inputs()?;
            let built = inputs.base_text()?;
            if miss_satisfied_by(miss, &built, &inputs.compile_env).map_err(|refusal| {
                WorkerError::Miss {
                    message: refusal.message,
                }
            })? {
                return Ok(None);
            }
            let request =
                miss_request_text(&miss.report()).map_err(|refusal| WorkerError::Miss {
                    message: refusal.message,
                })?;
            let why = if request_satisfied_by(&request, &built) {
                "it read compile-time paths the miss carries no values for (or other values \
                 than it carries)"
            } else {
                "the builds of its dependencies differ from what the miss says of them"
            };
            format!(
                "precomp: built {} {} with key {}, which does not satisfy the miss: {why}\n",
                miss.package, miss.version, build.manifest.key
            )
        }
        _ => return Ok(None),
    };
    runtime.block_on(client.record_failure(&FailureReport {
        package: miss.package.clone(),
        version: miss.version.clone(),
        base_key: miss.miss_key().to_string(),
        toolchain_id: toolchain.id.clone(),
        log: log.clone(),
    }))?;
    Ok(Some(format!("recorded as failed: {}", log.trim_end())))
}
