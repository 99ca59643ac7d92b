//! One package, built once: sources and the closure's artifacts laid out in the generated
//! project, `mix deps.compile <app>` in the sandbox — twice, the second time with the first's
//! atom table created at boot (crate::atoms) —, the app's build directory packed into a
//! reproducible artifact, and a manifest with every key input, signed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use precomp_proto::artifact::{self, PackedArtifact};
use precomp_proto::buildkey::{
    BuildInputs, BuildKey, BuildKeyError, ClosureMember, CompileEnvEntry, Manager, PackageRef,
    Target,
};
use precomp_proto::lock::{LockEntry, MixLock};
use precomp_proto::manifest::{ArtifactSigningKey, Manifest, Output, Provenance, SignedManifest};
use precomp_proto::term::{parse_erlang_terms, Term};
use precomp_sandbox::toolchain::Toolchain;
use precomp_sandbox::{Cancel, Sandbox, Spec, Status};

use crate::atoms::{self, Pass};
use crate::error::{io, BuildError, Result};
use crate::managers::Managers;
use crate::project::{self, ProjectDep, PROJECT_APP};
use crate::sources::{self, SourceCache};
use crate::workdir::WorkDir;

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
    /// Its build key: what the package's key records for it.
    pub key: BuildKey,
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
    let manager = *managers.get(app).ok_or_else(|| BuildKeyError::NoManager {
        app: app.to_string(),
    })?;
    if let Some(reason) = context.cancel.reason() {
        return Ok(BuildOutcome::Cancelled { reason });
    }
    let members: Vec<(String, PackageRef)> = std::iter::once((app.to_string(), package.clone()))
        .chain(closure.iter().map(|(a, p)| (a.clone(), p.clone())))
        .collect();
    // `work` gives the artifact. Mix packages compile once with an atom list predicted from
    // their inputs, and a second time (in a fresh project, with the first one's record) only
    // if that compile created atoms the list did not hold (docs/builder.md "One pass from a
    // predicted atom list"). make packages, and rebar3 ones whose compile runs code of their
    // own, compile twice (crate::atoms): pass 1 in a project of its own, thrown away once its
    // atom table is recorded, pass 2 in `work`. Other rebar3 packages compile once
    // (docs/builder.md "One pass for rebar3 packages"). All at /build in the sandbox.
    let mut work = work_dir(context, app)?;
    lay_out(context, lock, managers, &members, work.path())?;
    install_dependencies(context, dependencies, work.path())?;
    let twice = match manager {
        Manager::Mix => None,
        Manager::Make => Some("make runs whatever its Makefile says".to_string()),
        Manager::Rebar3 => atoms::erlang_compile_runs_code(work.path(), app, closure.keys())?,
    };
    let mut pass1 = None;
    let mut pass = match (manager, &twice) {
        (Manager::Mix, _) => Pass::Predicted,
        (_, Some(_)) => Pass::Record,
        (_, None) => Pass::Only,
    };
    if pass == Pass::Record {
        let dir = work_dir(context, app)?;
        lay_out(context, lock, managers, &members, dir.path())?;
        install_dependencies(context, dependencies, dir.path())?;
        pass1 = Some(dir);
    }
    let toolchain_atoms = context
        .work_root
        .join(".toolchain-atoms")
        .join(atoms::toolchain_atoms_cache_name(&context.toolchain.digest));
    let prepared = started.elapsed();

    let mut log = Vec::new();
    loop {
        // Fetching sources (or pass 1) may have taken a while: look again before starting.
        if let Some(reason) = context.cancel.reason() {
            return Ok(BuildOutcome::Cancelled { reason });
        }
        // Every pass but Only loads the hook's beam, compiled by the toolchain's own run.
        if pass != Pass::Only && !atoms::toolchain_cached(&toolchain_atoms) {
            if let Some(reason) = toolchain_atoms_once(context, &toolchain_atoms)? {
                return Ok(BuildOutcome::Cancelled { reason });
            }
        }
        let dir = match pass {
            Pass::Record => {
                let dir = pass1.as_ref().unwrap().path().to_path_buf();
                atoms::restore_hook_beam(&toolchain_atoms, &dir)?;
                dir
            }
            Pass::Precreated if pass1.is_some() => {
                let recorded = pass1.take().unwrap();
                let carried =
                    atoms::carry_boot_file(recorded.path(), atoms::BOOT_FILE, work.path());
                keep_if_asked(context, recorded);
                if let Err(e) = carried {
                    keep_if_asked(context, work);
                    return Ok(BuildOutcome::Failed {
                        reason: e.to_string(),
                        log,
                    });
                }
                atoms::restore_hook_beam(&toolchain_atoms, work.path())?;
                work.path().to_path_buf()
            }
            Pass::Predicted => {
                atoms::restore_hook_beam(&toolchain_atoms, work.path())?;
                let lib = work
                    .path()
                    .join("_build")
                    .join(&context.config_env)
                    .join("lib");
                atoms::write_predicted_boot(&toolchain_atoms, work.path(), &lib, app)?;
                work.path().to_path_buf()
            }
            Pass::Precreated => {
                atoms::restore_hook_beam(&toolchain_atoms, work.path())?;
                work.path().to_path_buf()
            }
            Pass::Only => work.path().to_path_buf(),
        };
        let outcome = context
            .sandbox
            .run_cancellable(&pass_spec(context, app, &dir, pass), &context.cancel)?;
        tracing::debug!(
            app,
            ?pass,
            prepared_ms = prepared.as_millis() as u64,
            sandbox_ms = outcome.elapsed.as_millis() as u64,
            "compiled"
        );
        if let Status::Cancelled { reason } = outcome.status {
            // Every process of the sandbox is dead; the half-built projects are removed when
            // they are dropped here.
            tracing::info!(app, %reason, "build cancelled");
            return Ok(BuildOutcome::Cancelled { reason });
        }
        let late = atoms::created_later(&outcome.stderr.bytes);
        match pass {
            Pass::Predicted if late == Some(0) => log.extend_from_slice(
                b"== precomp: one pass, with the atom list predicted from its inputs created at boot: its compile created no other atom ==\n",
            ),
            Pass::Predicted => log.extend_from_slice(
                format!(
                    "== precomp: pass 1 of 2, with the atom list predicted from its inputs created at boot; its compile created atoms the prediction did not hold ({}), so it records the atom table ==\n",
                    atoms::late_report(&outcome.stderr.bytes)
                )
                .as_bytes(),
            ),
            Pass::Record => log.extend_from_slice(
                format!(
                    "== precomp: pass 1 of 2, records the atom table (two passes: {}) ==\n",
                    twice.as_deref().unwrap_or_default()
                )
                .as_bytes(),
            ),
            Pass::Precreated => {
                log.extend_from_slice(b"== precomp: pass 2 of 2, with those atoms created at boot ==\n")
            }
            Pass::Only => log.extend_from_slice(
                b"== precomp: one pass (rebar3, no parse transform, plugin or hook: atom order cannot change the beams) ==\n",
            ),
        }
        log.extend_from_slice(&outcome.stdout.bytes);
        log.extend_from_slice(&outcome.stderr.bytes);
        if !outcome.status.success() {
            if let Some(recorded) = pass1.take() {
                keep_if_asked(context, recorded);
            }
            keep_if_asked(context, work);
            return Ok(BuildOutcome::Failed {
                reason: format!("mix deps.compile {app}: {}", outcome.status),
                log,
            });
        }
        pass = match pass {
            Pass::Record => Pass::Precreated,
            Pass::Predicted => {
                match late {
                    Some(0) => break,
                    // No report: the hook did not run, so nothing proves the atom order.
                    None => {
                        keep_if_asked(context, work);
                        return Ok(BuildOutcome::Failed {
                            reason: format!("mix deps.compile {app}: the atom check reported nothing (did the VM run its at-exit hooks?); the build cannot be shown reproducible"),
                            log,
                        });
                    }
                    // The run just done is pass 1: pass 2 compiles a fresh project with its
                    // record.
                    Some(_) => {
                        let second = work_dir(context, app)?;
                        lay_out(context, lock, managers, &members, second.path())?;
                        install_dependencies(context, dependencies, second.path())?;
                        let carried = atoms::carry_boot_file(
                            work.path(),
                            atoms::FALLBACK_FILE,
                            second.path(),
                        );
                        keep_if_asked(context, std::mem::replace(&mut work, second));
                        if let Err(e) = carried {
                            keep_if_asked(context, work);
                            return Ok(BuildOutcome::Failed {
                                reason: e.to_string(),
                                log,
                            });
                        }
                        Pass::Precreated
                    }
                }
            }
            Pass::Precreated | Pass::Only => break,
        };
    }
    let result = finish(
        context,
        manager,
        app,
        &package,
        &closure,
        dependencies,
        work.path(),
        log,
        started,
    );
    keep_if_asked(context, work);
    result
}

/// A fresh project directory under the work root, readable by the sandbox's user, held
/// while it is in use (crate::workdir).
fn work_dir(context: &BuildContext<'_>, app: &str) -> Result<WorkDir> {
    WorkDir::create(&context.work_root, &format!("{app}-"), 0o755)
}

/// The closure's artifacts, installed into the project the way precomp fetch installs them.
fn install_dependencies(
    context: &BuildContext<'_>,
    dependencies: &[DependencyArtifact],
    project: &Path,
) -> Result<()> {
    let lib = project.join("_build").join(&context.config_env).join("lib");
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
    Ok(())
}

/// One pass of `app`'s build in the sandbox, in project `dir`: `mix deps.compile <app>` with
/// the atom hook (crate::atoms), the build environment and nothing else.
fn pass_spec(context: &BuildContext<'_>, app: &str, dir: &Path, pass: Pass) -> Spec {
    let app_ebin = format!(
        "{}/_build/{}/lib/{app}/ebin",
        precomp_sandbox::BUILD_DIR,
        context.config_env
    );
    let mut spec = Spec::build(
        context.toolchain.sandbox_root(),
        dir,
        atoms::command(pass, app),
    )
    .env("MIX_ENV", &context.config_env)
    // Debian's /usr/bin/rebar3, or where an imported image has it (/usr/local/bin).
    .env("MIX_REBAR3", context.toolchain.rebar3_command())
    .env("HEX_OFFLINE", "1")
    // Builds run side by side: schedulers that spin while idle would take the CPU from
    // the other builds. (Scheduler flags do not change what the compiler emits.)
    .env("ERL_FLAGS", "+sbwt none +sbwtdcpu none +sbwtdio none");
    for (name, value) in atoms::env(pass, app, &app_ebin) {
        spec = spec.env(name, value);
    }
    spec
}

/// [`compute_toolchain_atoms`] unless another build already did: the first builds of a run
/// (and builds of other processes sharing the work root) all find the cache missing, so one
/// computes while the others wait for it on a lock beside the cache, then find it there.
fn toolchain_atoms_once(context: &BuildContext<'_>, cache: &Path) -> Result<Option<String>> {
    let dir = cache.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let lock_path = cache.with_extension("lock");
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    // Released when `lock` is closed, however this returns; the computation takes seconds.
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io(&lock_path)(e.into()))?;
    if atoms::toolchain_cached(cache) {
        return Ok(None);
    }
    compute_toolchain_atoms(context, cache)
}

/// Computes the toolchain's atoms (crate::atoms::toolchain_atoms_command) in a sandbox run of
/// their own, in a directory holding only the hook, and caches them at `cache`. Never from a
/// package's run: code a package runs at compile time could rewrite the file, and every
/// later build with the toolchain trusts it. `Some(reason)` when the run was cancelled.
fn compute_toolchain_atoms(context: &BuildContext<'_>, cache: &Path) -> Result<Option<String>> {
    let dir = WorkDir::create(&context.work_root, "toolchain-atoms-", 0o755)?;
    atoms::write_hook(dir.path())?;
    let mut spec = Spec::build(
        context.toolchain.sandbox_root(),
        dir.path(),
        atoms::toolchain_atoms_command(),
    )
    // As a build's VMs run (pass_spec), but no MIX_ENV: the cache is the toolchain's alone
    // (an env name no list holds is created by Mix after the phase, and caught at exit).
    .env("HEX_OFFLINE", "1")
    .env("ERL_FLAGS", "+sbwt none +sbwtdcpu none +sbwtdio none");
    for (name, value) in atoms::toolchain_atoms_env() {
        spec = spec.env(name, value);
    }
    let outcome = context.sandbox.run_cancellable(&spec, &context.cancel)?;
    if let Status::Cancelled { reason } = outcome.status {
        return Ok(Some(reason));
    }
    if !outcome.status.success() {
        return Err(BuildError::Invalid(format!(
            "computing the toolchain's atoms failed ({}): {}",
            outcome.status,
            String::from_utf8_lossy(&outcome.stderr.bytes)
        )));
    }
    atoms::save_toolchain_atoms(dir.path(), cache)?;
    Ok(None)
}

/// With `--keep-work`, leaves a project directory of the build behind; otherwise removes it.
fn keep_if_asked(context: &BuildContext<'_>, dir: WorkDir) {
    if context.keep_work {
        let kept = dir.keep();
        tracing::info!(dir = %kept.display(), "kept the build directory");
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    context: &BuildContext<'_>,
    manager: Manager,
    app: &str,
    package: &PackageRef,
    closure: &BTreeMap<String, PackageRef>,
    dependencies: &[DependencyArtifact],
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
    // Each member with the key of the build installed for it.
    let closure = closure
        .iter()
        .map(|(member, package)| {
            let dependency = dependencies
                .iter()
                .find(|d| &d.app == member)
                .ok_or_else(|| {
                    BuildError::Invalid(format!("{app}: no build of its dependency {member}"))
                })?;
            Ok(ClosureMember {
                package: package.clone(),
                key: Some(dependency.key),
            })
        })
        .collect::<Result<_>>()?;
    let inputs = BuildInputs {
        package: package.clone(),
        manager,
        closure,
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
        recipe: Some(crate::RECIPE.into()),
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
    )?;
    atoms::write_hook(dir)
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
