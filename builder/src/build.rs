//! One package, built once: sources and the closure's artifacts laid out in the generated
//! project, `mix deps.compile <app>` in the sandbox, the app's build directory packed into a
//! reproducible artifact, and a manifest with every key input, signed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use precomp_proto::artifact::{self, PackedArtifact};
use precomp_proto::buildkey::{BuildInputs, CompileEnvEntry, PackageRef, Target};
use precomp_proto::lock::{LockEntry, MixLock};
use precomp_proto::manifest::{ArtifactSigningKey, Manifest, Output, Provenance, SignedManifest};
use precomp_proto::term::{parse_erlang_terms, Term};
use precomp_sandbox::toolchain::Toolchain;
use precomp_sandbox::{Cancel, Sandbox, Spec, Status};

use crate::error::{io, BuildError, Result};
use crate::managers::Managers;
use crate::project::{self, ProjectDep, PROJECT_APP};
use crate::sources::{self, SourceCache};

/// What every build of one run shares. Cloning it is cheap (references and a few strings):
/// give a clone another [`Cancel`] handle to cancel one run without the others.
#[derive(Clone)]
pub struct BuildContext<'a> {
    pub sandbox: &'a Sandbox,
    pub toolchain: &'a Toolchain,
    pub sources: &'a SourceCache,
    pub key: &'a ArtifactSigningKey,
    /// The dependency's Mix env (`prod` unless the consumer says otherwise).
    pub mix_env: String,
    /// The env the project's config is evaluated for (the consumer's `MIX_ENV`).
    pub config_env: String,
    /// The compile-time config: a directory (`config/`) or one file (`config.exs`).
    pub config: Option<PathBuf>,
    /// Host directory under which each build gets a fresh project directory.
    pub work_root: PathBuf,
    /// Keep the project directory after the build (debugging).
    pub keep_work: bool,
    /// Cancels the run: no package starts once it is cancelled, and running sandboxes are
    /// killed. `Cancel::new()` for a run nobody cancels.
    pub cancel: Cancel,
}

/// A dependency's artifact, installed into the project before the build.
pub struct DependencyArtifact {
    pub app: String,
    pub artifact: Vec<u8>,
}

/// A finished build.
pub struct Built {
    pub manifest: Manifest,
    pub signed: SignedManifest,
    pub artifact: PackedArtifact,
    pub log: Vec<u8>,
}

/// How a build ended.
pub enum BuildOutcome {
    Built(Box<Built>),
    /// The package did not compile: nothing to publish, the log says why.
    Failed {
        reason: String,
        log: Vec<u8>,
    },
    /// [`BuildContext::cancel`] was cancelled before or while it compiled: its sandbox was
    /// killed and its project directory removed; nothing was built.
    Cancelled {
        reason: String,
    },
}

/// Builds `app` of `lock` with its closure's artifacts already built, each package declared
/// with its manager in `managers` (`managers::for_lock`).
pub fn build_package(
    context: &BuildContext<'_>,
    lock: &MixLock,
    managers: &Managers,
    app: &str,
    dependencies: &[DependencyArtifact],
) -> Result<BuildOutcome> {
    let started = Instant::now();
    if app == PROJECT_APP {
        return Err(BuildError::Invalid(format!(
            "cannot build a package whose app is named {PROJECT_APP}"
        )));
    }
    let (package, closure) = lock.closure_by_app(app)?;
    if let Some(reason) = context.cancel.reason() {
        return Ok(BuildOutcome::Cancelled { reason });
    }
    std::fs::create_dir_all(&context.work_root).map_err(io(&context.work_root))?;
    let work = tempfile::Builder::new()
        .prefix(&format!("{app}-"))
        .tempdir_in(&context.work_root)
        .map_err(io(&context.work_root))?;
    set_mode(work.path(), 0o755)?;

    let members: Vec<(String, PackageRef)> = std::iter::once((app.to_string(), package.clone()))
        .chain(closure.iter().map(|(a, p)| (a.clone(), p.clone())))
        .collect();
    lay_out(context, lock, managers, &members, work.path())?;
    let laid_out = started.elapsed();

    // The closure's artifacts, installed the way precomp fetch installs them.
    let lib = work
        .path()
        .join("_build")
        .join(&context.config_env)
        .join("lib");
    std::fs::create_dir_all(&lib).map_err(io(&lib))?;
    for dependency in dependencies {
        let dest = lib.join(&dependency.app);
        artifact::unpack(&dependency.artifact, &dest).map_err(|source| BuildError::Artifact {
            app: dependency.app.clone(),
            source,
        })?;
        let marker_dir = dest.join(".mix");
        std::fs::create_dir_all(&marker_dir).map_err(io(&marker_dir))?;
        let marker = marker_dir.join("compile.fetch");
        std::fs::write(&marker, b"").map_err(io(&marker))?;
    }

    let spec = Spec::build(
        context.toolchain.sandbox_root(),
        work.path(),
        ["mix", "deps.compile", app],
    )
    .env("MIX_ENV", &context.config_env)
    .env("MIX_REBAR3", "/usr/bin/rebar3")
    .env("HEX_OFFLINE", "1")
    // Builds run side by side: schedulers that spin while idle would take the CPU from the
    // other builds. (Scheduler flags do not change what the compiler emits.)
    .env("ERL_FLAGS", "+sbwt none +sbwtdcpu none +sbwtdio none");
    let prepared = started.elapsed();
    // Fetching sources may have taken a while: look again before starting the sandbox.
    if let Some(reason) = context.cancel.reason() {
        return Ok(BuildOutcome::Cancelled { reason });
    }
    let outcome = context.sandbox.run_cancellable(&spec, &context.cancel)?;
    tracing::debug!(
        app,
        sources_ms = laid_out.as_millis() as u64,
        prepared_ms = prepared.as_millis() as u64,
        sandbox_ms = outcome.elapsed.as_millis() as u64,
        "compiled"
    );
    if let Status::Cancelled { reason } = outcome.status {
        // Every process of the sandbox is dead; `work` (the half-built project) is removed
        // when it is dropped here.
        tracing::info!(app, %reason, "build cancelled");
        return Ok(BuildOutcome::Cancelled { reason });
    }
    let mut log = outcome.stdout.bytes.clone();
    log.extend_from_slice(&outcome.stderr.bytes);
    let result = if !outcome.status.success() {
        Ok(BuildOutcome::Failed {
            reason: format!("mix deps.compile {app}: {}", outcome.status),
            log,
        })
    } else {
        finish(context, app, &package, &closure, work.path(), log, started)
    };
    if context.keep_work {
        let kept = work.keep();
        tracing::info!(dir = %kept.display(), "kept the build directory");
    }
    result
}

fn finish(
    context: &BuildContext<'_>,
    app: &str,
    package: &PackageRef,
    closure: &BTreeMap<String, PackageRef>,
    work: &Path,
    log: Vec<u8>,
    started: Instant,
) -> Result<BuildOutcome> {
    let app_dir = work
        .join("_build")
        .join(&context.config_env)
        .join("lib")
        .join(app);
    let app_file = format!("ebin/{app}.app");
    if !app_dir.join(&app_file).is_file() {
        return Ok(BuildOutcome::Failed {
            reason: BuildError::NoAppFile {
                app: app.to_string(),
                path: app_file,
            }
            .to_string(),
            log,
        });
    }
    let compile_env = read_compile_env(app, &app_dir.join(&app_file))?;
    let packed = artifact::pack(&app_dir, work).map_err(|source| BuildError::Artifact {
        app: app.to_string(),
        source,
    })?;
    let target = if packed.native_code {
        native_target(&context.toolchain.architecture)?
    } else {
        Target::Any
    };
    let inputs = BuildInputs {
        package: package.clone(),
        closure: closure.values().cloned().collect(),
        otp_major: context.toolchain.otp.clone(),
        elixir: context.toolchain.elixir.clone(),
        mix_env: context.mix_env.clone(),
        target,
        compile_env,
    };
    let mut manifest = Manifest::default();
    manifest.set_inputs(&inputs)?;
    manifest.output = Some(Output {
        artifact_sha256: packed.sha256.to_vec(),
        artifact_size: packed.bytes.len() as u64,
        files: packed.files.clone(),
        native_code: packed.native_code,
    });
    manifest.provenance = Some(Provenance {
        toolchain_id: context.toolchain.id.clone(),
        toolchain_digest: context.toolchain.digest.clone(),
        builder_id: context.key.public_key().key_id(),
        build_duration_ms: started.elapsed().as_millis() as u64,
        build_log_sha256: Sha256::digest(&log).to_vec(),
    });
    let signed = SignedManifest::sign(&manifest, context.key);
    Ok(BuildOutcome::Built(Box::new(Built {
        manifest,
        signed,
        artifact: packed,
        log,
    })))
}

/// Writes the generated project for `members` (app, release) into `dir`: each release's
/// sources unpacked at `deps/<app>`, `mix.exs` (each member with its manager in `managers`)
/// and `config/`.
pub fn lay_out(
    context: &BuildContext<'_>,
    lock: &MixLock,
    managers: &Managers,
    members: &[(String, PackageRef)],
    dir: &Path,
) -> Result<()> {
    let deps_dir = dir.join("deps");
    std::fs::create_dir_all(&deps_dir).map_err(io(&deps_dir))?;
    let mut project_deps = Vec::new();
    for (member, package) in members {
        let tarball = context.sources.tarball(package)?;
        sources::unpack(package, &tarball, &deps_dir.join(member))?;
        match lock.entries.get(member) {
            Some(LockEntry::Hex(entry)) => project_deps.push(ProjectDep {
                app: member,
                entry,
                manager: managers.get(member).copied(),
            }),
            _ => {
                return Err(BuildError::Invalid(format!(
                    "{member} is not a Hex package of the lock"
                )))
            }
        }
    }
    project_deps.sort_by_key(|dep| dep.app);
    let mix_lock = project::mix_lock(&project_deps);
    let mix_exs = project::mix_exs(&project_deps, &context.mix_env, mix_lock.is_some());
    project::write(
        dir,
        &mix_exs,
        mix_lock.as_deref(),
        context.config.as_deref(),
    )
}

/// The `compile_env` entries Mix recorded in the `.app`: `{App, [Key | Path], {ok, V} | error}`.
pub fn read_compile_env(app: &str, path: &Path) -> Result<Vec<CompileEnvEntry>> {
    let fail = |message: String| BuildError::AppFile {
        app: app.to_string(),
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let terms = parse_erlang_terms(&text).map_err(|e| fail(e.to_string()))?;
    let props = match terms.as_slice() {
        [Term::Tuple(items)]
            if items.len() == 3 && items[0] == Term::Atom("application".into()) =>
        {
            match &items[2] {
                Term::List(props) => props,
                other => {
                    return Err(fail(format!(
                        "properties are not a list: {}",
                        other.summary()
                    )))
                }
            }
        }
        _ => return Err(fail("not one {application, App, Props} term".into())),
    };
    let mut entries = Vec::new();
    for prop in props {
        let Term::Tuple(pair) = prop else { continue };
        if pair.len() != 2 || pair[0] != Term::Atom("compile_env".into()) {
            continue;
        }
        let Term::List(records) = &pair[1] else {
            return Err(fail("compile_env is not a list".into()));
        };
        for record in records {
            let entry = match record {
                Term::Tuple(items) if items.len() == 3 => {
                    let app = match &items[0] {
                        Term::Atom(app) => app.clone(),
                        other => return Err(fail(format!("compile_env app {}", other.summary()))),
                    };
                    let path = match &items[1] {
                        Term::List(path) if !path.is_empty() => path.clone(),
                        other => return Err(fail(format!("compile_env path {}", other.summary()))),
                    };
                    let value = match &items[2] {
                        Term::Atom(error) if error == "error" => None,
                        Term::Tuple(ok) if ok.len() == 2 && ok[0] == Term::Atom("ok".into()) => {
                            Some(ok[1].clone())
                        }
                        other => {
                            return Err(fail(format!("compile_env value {}", other.summary())))
                        }
                    };
                    CompileEnvEntry { app, path, value }
                }
                other => return Err(fail(format!("compile_env entry {}", other.summary()))),
            };
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// The build-key target of native code built on a Debian `architecture`: the same target
/// `precomp fetch` computes from Erlang's system architecture there
/// ([`Target::from_debian_architecture`]).
pub fn native_target(architecture: &str) -> Result<Target> {
    Target::from_debian_architecture(architecture).ok_or_else(|| {
        BuildError::Invalid(format!(
            "toolchain architecture {architecture:?} has no known native target"
        ))
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}
