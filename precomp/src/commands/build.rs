//! `precomp build`: precompiled artifacts of Hex packages, built in the sandbox against the
//! exact closure a lock resolves, signed, kept in `DATA/builds/` and optionally published.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::Args;
use precomp_builder::build::BuildContext;
use precomp_builder::config::SandboxedConfig;
use precomp_builder::run::{self, CompileEnvSource, PackageResult, Progress, Status};

use precomp_builder::sources::SourceCache;
use precomp_builder::store::BuildStore;
use precomp_http::artifacts::ArtifactClient;
use precomp_proto::api::Miss;
use precomp_proto::lock::MixLock;
use precomp_proto::manager::TopLevelDep;
use precomp_proto::manifest::{ArtifactPublicKey, ArtifactSigningKey};
use precomp_sandbox::toolchain::Toolchain;
use precomp_sandbox::Sandbox;
use precomp_worker::output::PackageLine;
use precomp_worker::publish::{
    app_for, build_and_publish, lock_managers, miss_managers, settle_miss, work_root, LockBuild,
};
pub(crate) use precomp_worker::toolchains::resolve_toolchain;
use precomp_worker::variants::{self, MissConfig};

use crate::Context;

/// Builds precompiled artifacts: `NAME@VERSION` and its dependencies as `--lock` resolves
/// them, every Hex package of the lock, or the misses clients reported to the mirror.
///
/// Each package builds in the sandbox (no network, the toolchain read-only, the generated
/// project at /build) with `mix deps.compile`, after its dependencies, up to --jobs at a
/// time. A package whose key is already in DATA/builds is reused. Each artifact is a
/// reproducible tar.gz of `_build/ENV/lib/APP`; its manifest records every key input and
/// is signed with --key, which is never visible inside the sandbox. A package that fails to
/// compile is recorded with its log and never published; its dependents are skipped.
#[derive(Args)]
pub struct BuildArgs {
    /// The package to build, as NAME@VERSION (as in mix.lock); requires --lock.
    package: Option<String>,
    /// The mix.lock that resolves the closure; without NAME@VERSION, every Hex package in it
    /// is built.
    #[arg(long)]
    lock: Option<PathBuf>,
    /// Build the misses clients reported to the mirror (`precomp fetch --request-builds`);
    /// needs --token.
    #[arg(long, conflicts_with_all = ["package", "lock"])]
    missing: bool,
    /// The Hex repository sources come from: the precomp mirror (or file:///DIR).
    #[arg(long, env = "PRECOMP_MIRROR")]
    mirror: String,
    /// The toolchain: `host`, an image id, a digest prefix or a suite (bookworm, trixie).
    #[arg(long, default_value = "host")]
    toolchain: String,
    /// Where toolchain images are stored [default: the data directory].
    #[arg(long, env = "PRECOMP_TOOLCHAINS")]
    toolchains: Option<PathBuf>,
    /// The builder's ed25519 signing key (`precomp keys generate`).
    #[arg(long, env = "PRECOMP_BUILDER_KEY")]
    key: PathBuf,
    /// Also trust stored builds signed by this public key for reuse (repeatable; the
    /// builder's own key is always trusted).
    #[arg(long = "trust", value_name = "FILE.pub")]
    trust: Vec<PathBuf>,
    /// The dependencies' Mix env.
    #[arg(long, default_value = "prod")]
    mix_env: String,
    /// Compile-time config: a config/ directory or one config.exs (evaluated in the sandbox).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The env the config is evaluated for (the consumer's MIX_ENV).
    #[arg(long, default_value = "prod")]
    config_env: String,
    /// A dependency the consumer's mix.exs declares (repeatable) [default: the lock's roots].
    /// Mix picks a package's manager (mix, rebar3, make) from where it meets it: a make-only
    /// package reached through a rebar3 dependency is built with rebar3, unless the project
    /// declares it itself (docs/builder.md "Which manager").
    #[arg(long = "top-level", value_name = "APP", conflicts_with = "missing")]
    top_level: Vec<String>,
    /// Copy each artifact and manifest to DIR as NAME-VERSION-KEY12.tar.gz / .manifest.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Upload each built artifact and manifest (and each failure's log) to --mirror.
    #[arg(long, requires = "token")]
    publish: bool,
    /// The builder token (`precomp token create`).
    #[arg(long, env = "PRECOMP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Builds at a time [default: the number of CPUs].
    #[arg(long)]
    jobs: Option<usize>,
    /// One JSON object per package on stdout: package, version, app, status, key, base_key,
    /// artifact_sha256, artifact, manifest (paths), and for failures reason and log.
    #[arg(long)]
    json: bool,
    /// Keep each build's project directory (under the work directory) for debugging.
    #[arg(long)]
    keep_work: bool,
    /// Where build projects are made [default: DATA/builds/work, or a directory under the
    /// system's temporary directory when the sandbox user cannot reach DATA].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Build nothing: write the generated project of the packages and their closures to DIR
    /// (sources at deps/APP, mix.exs, config/) to reproduce a build by hand with
    /// `MIX_REBAR3=$(command -v rebar3) mix deps.compile` (DIR must not exist).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["publish", "out"])]
    prepare: Option<PathBuf>,
}

pub fn run(context: &Context, args: BuildArgs) -> anyhow::Result<ExitCode> {
    let data = context.data();
    let key = load_signing_key(&args.key)?;
    let trusted = trusted_keys(&key, &args.trust)?;

    let sandbox = Sandbox::new()?;
    let toolchain =
        resolve_toolchain(&data, args.toolchains.as_deref(), &args.toolchain, &sandbox)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP client")?;
    // Only publishing and --missing talk to the mirror's artifact API.
    let mirror_client = if args.publish || args.missing {
        Some(
            ArtifactClient::new(&args.mirror, args.token.clone())
                .with_context(|| format!("the mirror URL {:?}", args.mirror))?,
        )
    } else {
        None
    };
    let work_list = if let (true, Some(client)) = (args.missing, &mirror_client) {
        missing_work(&runtime, client, &toolchain, &args)?
    } else {
        let lock_path = args
            .lock
            .as_ref()
            .context("give --lock mix.lock (or --missing)")?;
        let lock = read_lock(lock_path)?;
        let apps = match &args.package {
            Some(spec) => vec![app_for(&lock, spec, lock_path)?],
            None => lock.hex().map(|(app, _)| app.to_string()).collect(),
        };
        vec![Work {
            lock,
            apps,
            miss: None,
        }]
    };
    let store = BuildStore::open(&data.join("builds"))?;
    let sources = SourceCache::new(
        data.join("builds/sources"),
        &args.mirror,
        args.token.clone(),
    )?;
    let build_context = BuildContext {
        sandbox: &sandbox,
        toolchain: &toolchain,
        sources: &sources,
        key: &key,
        mix_env: args.mix_env.clone(),
        config_env: args.config_env.clone(),
        config: args.config.clone(),
        work_root: work_root(&sandbox, &data, args.work_dir.as_deref())?,
        keep_work: args.keep_work,
        cancel: precomp_builder::Cancel::new(),
    };
    let top_level: Option<Vec<TopLevelDep>> =
        (!args.top_level.is_empty()).then(|| args.top_level.iter().map(TopLevelDep::new).collect());
    if let Some(dir) = &args.prepare {
        return prepare(&build_context, &work_list, top_level.as_deref(), dir);
    }
    let config = SandboxedConfig::new(&build_context);
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }

    let started = Instant::now();
    let reporter = Reporter { json: args.json };
    let mut failed = 0;
    let mut counts = [0usize; 4];
    for Work { lock, apps, miss } in &work_list {
        let publish_to = match (&mirror_client, args.publish) {
            (Some(client), true) => Some((&runtime, client)),
            _ => None,
        };
        // A miss is built with --config when that gives the compile-time values it carries,
        // else as a config variant: with a config made from those values (`variants`).
        let variant = match miss {
            None => None,
            Some(miss) => match variants::miss_config(miss, &config, &build_context.work_root)? {
                Ok(MissConfig::Builder) => None,
                Ok(MissConfig::Variant(variant)) => Some(variant),
                Err(reason) => {
                    not_built(miss, &reason, publish_to, &toolchain, &mut failed);
                    continue;
                }
            },
        };
        let variant_context = variant.as_ref().map(|variant| BuildContext {
            config: Some(variant.path().to_path_buf()),
            ..build_context.clone()
        });
        let variant_config = variant_context.as_ref().map(SandboxedConfig::new);
        let (context, compile_env): (&BuildContext<'_>, &dyn CompileEnvSource) =
            match (&variant_context, &variant_config, miss) {
                (Some(context), Some(variant_config), Some(miss)) => {
                    if let Some(reason) = variants::check_variant(miss, variant_config)? {
                        not_built(miss, &reason, publish_to, &toolchain, &mut failed);
                        continue;
                    }
                    eprintln!(
                        "the miss of {} {} is a config variant: building it with the {} \
                         compile-time value{} it carries",
                        miss.package,
                        miss.version,
                        variant.as_ref().map_or(0, |v| v.values),
                        if variant.as_ref().is_some_and(|v| v.values == 1) {
                            ""
                        } else {
                            "s"
                        }
                    );
                    (context, variant_config)
                }
                _ => (&build_context, &config),
            };
        let reuse = run::Reuse {
            store: &store,
            trusted: &trusted,
            compile_env,
        };
        let managers = match miss {
            Some(miss) => miss_managers(context, lock, miss)?,
            None => lock_managers(context, lock, top_level.as_deref())?,
        };
        let results = build_and_publish(
            context,
            &reuse,
            &LockBuild {
                lock,
                managers: &managers,
                apps,
            },
            jobs,
            &reporter,
            publish_to,
        )?;
        if let (Some(miss), Some((runtime, client))) = (miss, publish_to) {
            if let Some((result, published)) = results.iter().find(|(r, _)| apps.contains(&r.app)) {
                match settle_miss(
                    runtime,
                    client,
                    &toolchain,
                    miss,
                    result,
                    published.as_ref(),
                ) {
                    Ok(Some(note)) => eprintln!("the miss of {}: {note}", miss.package),
                    Ok(None) => {}
                    Err(e) => {
                        failed += 1;
                        eprintln!(
                            "error: closing the miss of {}: {}",
                            miss.package,
                            precomp_worker::chain(&e)
                        );
                    }
                }
            }
        }
        for (result, published) in &results {
            if let Some(out) = &args.out {
                copy_out(result, out)?;
            }
            match result.status {
                Status::Built { .. } => counts[0] += 1,
                Status::Reused => counts[1] += 1,
                Status::Failed { .. } | Status::Skipped { .. } | Status::Cancelled { .. } => {
                    counts[2] += 1;
                    failed += 1;
                }
                // Expected for git and path deps: reported, not an error.
                Status::NotBuildable { .. } => counts[3] += 1,
            }
            if let (Some(Ok(precomp_worker::publish::Published::Manifest(how))), false) =
                (published, args.json)
            {
                if how == "other_recipe" {
                    eprintln!(
                        "note: {} {}: the mirror serves a build of another build recipe under \
                         this key (not a reproducibility finding); this one was not published",
                        result.package.name, result.package.version
                    );
                }
            }
            if let Some(Err(e)) = published {
                failed += 1;
                eprintln!(
                    "error: publishing {} {}: {}",
                    result.package.name,
                    result.package.version,
                    precomp_worker::chain(e)
                );
            }
            if args.json {
                let mut line = PackageLine::new(result);
                if let Some(out) = &args.out {
                    if let Some(build) = &result.build {
                        let name = out_name(result, &build.manifest.key);
                        line = line.copied_to(
                            &out.join(format!("{name}.tar.gz")),
                            &out.join(format!("{name}.manifest")),
                        );
                    }
                }
                if let Some(published) = published {
                    line = line.with_published(published);
                }
                println!("{}", serde_json::to_string(&line)?);
            }
        }
    }
    if !args.json {
        eprintln!(
            "{} built, {} reused, {} failed or skipped, {} not buildable from this lock, in {:.1} s (toolchain {}: OTP {}, Elixir {})",
            counts[0],
            counts[1],
            counts[2],
            counts[3],
            started.elapsed().as_secs_f64(),
            toolchain.id,
            toolchain.otp,
            toolchain.elixir
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reads the builder's ed25519 signing key (`precomp keys generate`).
pub(crate) fn load_signing_key(path: &Path) -> anyhow::Result<ArtifactSigningKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("reading the signing key {}", path.display()))?;
    ArtifactSigningKey::from_pem(&pem)
        .with_context(|| format!("{} is not an ed25519 signing key", path.display()))
}

/// `--prepare`: the generated project of every package to build and its closure.
fn prepare(
    context: &BuildContext<'_>,
    work_list: &[Work],
    top_level: Option<&[TopLevelDep]>,
    dir: &Path,
) -> anyhow::Result<ExitCode> {
    let [Work { lock, apps, .. }] = work_list else {
        bail!("--prepare takes one lock");
    };
    if dir.exists() {
        bail!("{} exists; --prepare writes a new directory", dir.display());
    }
    let mut members = std::collections::BTreeMap::new();
    for app in apps {
        let (package, closure) = lock.closure_by_app(app)?;
        members.insert(app.clone(), package);
        members.extend(closure);
    }
    let members: Vec<_> = members.into_iter().collect();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let managers = lock_managers(context, lock, top_level)?;
    precomp_builder::build::lay_out(context, lock, &managers, &members, dir)?;
    eprintln!(
        "wrote the project of {} packages to {}",
        members.len(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The keys whose signatures make a stored build reusable: the builder's own and `--trust`.
pub(crate) fn trusted_keys(
    key: &ArtifactSigningKey,
    trust: &[PathBuf],
) -> anyhow::Result<Vec<ArtifactPublicKey>> {
    let mut trusted = vec![key.public_key()];
    for path in trust {
        let pem =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        trusted.push(
            ArtifactPublicKey::from_pem(&pem)
                .with_context(|| format!("{} is not an ed25519 public key", path.display()))?,
        );
    }
    Ok(trusted)
}

fn read_lock(path: &Path) -> anyhow::Result<MixLock> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    MixLock::parse(&text).with_context(|| format!("parsing {}", path.display()))
}

fn out_name(result: &PackageResult, key: &str) -> String {
    format!(
        "{}-{}-{}",
        result.package.name,
        result.package.version,
        &key[..12]
    )
}

fn copy_out(result: &PackageResult, out: &Path) -> anyhow::Result<()> {
    let Some(build) = &result.build else {
        return Ok(());
    };
    let name = out_name(result, &build.manifest.key);
    for (from, to) in [
        (&build.artifact_path, out.join(format!("{name}.tar.gz"))),
        (&build.manifest_path, out.join(format!("{name}.manifest"))),
    ] {
        std::fs::copy(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// What one build of `precomp build` is: packages of a lock, for a miss or not.
struct Work {
    lock: MixLock,
    apps: Vec<String>,
    /// `--missing`: the miss these packages are built for.
    miss: Option<Miss>,
}

/// `--missing`: the open misses this builder can build (same OTP major, Elixir, Mix env and
/// target as its toolchain and flags), each with its own lock; the others are listed.
fn missing_work(
    runtime: &tokio::runtime::Runtime,
    client: &ArtifactClient,
    toolchain: &Toolchain,
    args: &BuildArgs,
) -> anyhow::Result<Vec<Work>> {
    let misses = runtime
        .block_on(client.misses())
        .context("listing the mirror's misses")?;
    let native = precomp_builder::build::native_target(&toolchain.architecture)?.to_string();
    let mut work = Vec::new();
    for miss in misses.misses {
        let what = format!("{} {}", miss.package, miss.version);
        let skip = if miss.otp_major != toolchain.otp || miss.elixir != toolchain.elixir {
            Some(format!(
                "needs OTP {} and Elixir {}; toolchain {} has OTP {} and Elixir {}",
                miss.otp_major, miss.elixir, toolchain.id, toolchain.otp, toolchain.elixir
            ))
        } else if miss.mix_env != args.mix_env {
            Some(format!("needs --mix-env {}", miss.mix_env))
        } else if miss.target != "any" && miss.target != native {
            Some(format!(
                "needs target {}; this builder makes {native}",
                miss.target
            ))
        } else {
            None
        };
        if let Some(reason) = skip {
            eprintln!("skipping the miss of {what}: {reason}");
            continue;
        }
        let lock = MixLock::parse(&miss.lock)
            .with_context(|| format!("the lock reported with the miss of {what}"))?;
        let spec = format!("{}@{}", miss.package, miss.version);
        let app = app_for(&lock, &spec, Path::new("the reported lock"))?;
        work.push(Work {
            lock,
            apps: vec![app],
            miss: Some(miss),
        });
    }
    if work.is_empty() {
        eprintln!("no open misses for this builder");
    }
    Ok(work)
}

/// A miss `--missing` does not build: said on stderr and, with --publish, recorded as a
/// failure under its key (which closes it) with the reason; counted as failed if that fails.
fn not_built(
    miss: &Miss,
    reason: &str,
    publish_to: Option<(&tokio::runtime::Runtime, &ArtifactClient)>,
    toolchain: &Toolchain,
    failed: &mut usize,
) {
    eprintln!(
        "not building the miss of {} {}: {reason}",
        miss.package, miss.version
    );
    if let Some((runtime, client)) = publish_to {
        if let Err(e) = variants::record_not_built(runtime, client, toolchain, miss, reason) {
            *failed += 1;
            eprintln!("error: {}", precomp_worker::chain(&e));
        }
    }
}

/// Progress on stderr (the JSON lines go to stdout).
pub(crate) struct Reporter {
    pub(crate) json: bool,
}

impl Progress for Reporter {
    fn started(&self, app: &str) {
        if !self.json {
            eprintln!("building {app}");
        }
    }

    fn finished(&self, result: &PackageResult) {
        if self.json {
            return;
        }
        let line = match &result.status {
            Status::Built { duration } => format!(
                "built {} {} in {:.1} s",
                result.package.name,
                result.package.version,
                duration.as_secs_f64()
            ),
            Status::Reused => format!("reused {} {}", result.package.name, result.package.version),
            Status::Failed { reason, log, .. } => format!(
                "FAILED {} {}: {reason} (log: {})",
                result.package.name,
                result.package.version,
                log.display()
            ),
            Status::Skipped { reason } => format!(
                "skipped {} {}: {reason}",
                result.package.name, result.package.version
            ),
            Status::Cancelled { reason } => format!(
                "cancelled {} {}: {reason}",
                result.package.name, result.package.version
            ),
            Status::NotBuildable { reason } => format!(
                "not buildable {} {}: {reason}",
                result.package.name, result.package.version
            ),
        };
        eprintln!("{line}");
    }
}
