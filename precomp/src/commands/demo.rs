//! `precomp demo`: the main job on this machine with embedded defaults.
//!
//! 1. A signed Hex repository built from the fixture packages: the upstream.
//! 2. The mirror in front of it, with an empty store, on a loopback port.
//! 3. Every object fetched through the mirror over HTTP, cold then warm, and compared byte for
//!    byte with the upstream's.
//! 4. rebar3, a real Hex client, fetching and compiling a project's dependencies through the
//!    mirror with signature and origin checks on, and the result run.
//! 5. A builder key and an upload token; `precomp build` of the sample Mix project's lock in the
//!    sandbox, published to the mirror.
//! 6. The sample project with its deps unpacked as `mix deps.get` leaves them. A fetch whose
//!    policy requires one auditor installs nothing yet: no auditor has rebuilt the builds.
//! 7. An independent audit: `precomp audit --all`, with the auditor's own key, token and data
//!    directory (the mirror trusts the auditor's key), rebuilds every published build from
//!    source and countersigns those whose bytes match.
//! 8. `precomp fetch`, requiring one auditor, installs every dependency from the mirror,
//!    verified: each signed by the builder and countersigned by the auditor.
//! 9. The proof: `mix compile` compiles none of the dependencies and the sample code runs on
//!    them; `mix deps.compile` from scratch, timed in a copy, for comparison.
//!
//! Each stage prints its timing.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::Args;
use precomp_artifacts::{Artifacts, ArtifactsConfig};
use precomp_proto::manifest::ArtifactPublicKey;
use precomp_proto::registry::{RepoPublicKey, RepoSigningKey};
use precomp_registry::mirror::{self, Mirror, MirrorConfig, Upstream};
use precomp_registry::static_repo;

use crate::Context;

/// Builds a signed Hex repository from the fixture packages, puts the mirror in front of it,
/// fetches everything through the mirror, has rebar3 build a project through it, builds the
/// sample Mix project's dependencies in the sandbox and publishes them, has an independent
/// auditor rebuild and countersign them, installs them with `precomp fetch` requiring that
/// auditor, and shows that `mix compile` compiles none of them. All under DATA/demo.
#[derive(Args)]
pub struct DemoArgs {
    /// Package sources to publish (run from the repository root, or point this elsewhere).
    #[arg(long, default_value = "tests/fixtures/packages")]
    packages: PathBuf,
    /// The rebar3 project to build through the mirror.
    #[arg(long, default_value = "tests/fixtures/consumers/rebar3_app")]
    consumer: PathBuf,
    /// The Mix project whose dependencies are built and fetched.
    #[arg(long, default_value = "tests/fixtures/consumers/mix_app")]
    sample: PathBuf,
    /// The sample's dependencies, as NAME@VERSION (its mix.lock).
    #[arg(
        long = "release",
        default_values_t = SAMPLE_RELEASES.iter().map(|r| r.to_string()),
    )]
    releases: Vec<String>,
}

/// The sample project's lock: what `mix deps.get` resolves for tests/fixtures/consumers/mix_app.
const SAMPLE_RELEASES: &[&str] = &[
    "env_reader@1.0.0",
    "erl_counter@1.0.0",
    "mk_erl@1.0.0",
    "plain_ex@1.0.0",
    "shape_user@1.0.0",
    "shapes@2.0.0",
    "tiny_nif@1.0.0",
];

pub fn run(context: &Context, args: DemoArgs) -> anyhow::Result<ExitCode> {
    if !args.packages.is_dir() {
        bail!(
            "{} is not a directory; run from the precomp checkout or pass --packages",
            args.packages.display()
        );
    }
    let dir = std::path::absolute(context.data().join("demo"))?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    // 1. The upstream: a static signed repository.
    let started = Instant::now();
    let key_path = dir.join("repo-key.pem");
    let key = if key_path.exists() {
        RepoSigningKey::from_pem(&std::fs::read_to_string(&key_path)?)?
    } else {
        let key = RepoSigningKey::generate(2048)?;
        std::fs::write(&key_path, key.to_pkcs8_pem()?)?;
        key
    };
    let upstream = dir.join("upstream");
    let built = static_repo::build(&args.packages, "hexpm", &key, &upstream)?;
    let report = static_repo::verify(&upstream, &key.public_key(), Some("hexpm"));
    for failure in &report.failures {
        println!("FAIL     {failure}");
    }
    ensure!(
        report.ok(),
        "the repository built from the fixtures does not verify"
    );
    println!(
        "upstream {} packages, {} releases, signed by {}, verified ({:.2?})",
        built.packages.len(),
        built.release_count(),
        key.public_key().fingerprint(),
        started.elapsed()
    );

    // The builder's and the auditor's keys; the mirror trusts the auditor's.
    let keys = dir.join("keys");
    for name in [BUILDER, AUDITOR] {
        if !keys.join(format!("{name}.key")).exists() {
            precomp(
                "keys generate",
                &[
                    "keys".as_ref(),
                    "generate".as_ref(),
                    "--name".as_ref(),
                    name.as_ref(),
                    "--out".as_ref(),
                    keys.as_os_str(),
                ],
            )?;
        }
    }
    let auditor_key = read_public_key(&keys.join(format!("{AUDITOR}.pub")))?;

    // 2. The mirror, with an empty store.
    let store = dir.join("mirror");
    let artifacts_data = dir.join("artifacts");
    for old in [&store, &artifacts_data] {
        if old.exists() {
            std::fs::remove_dir_all(old).with_context(|| format!("clearing {}", old.display()))?;
        }
    }
    let mut config = MirrorConfig::defaults(store);
    config.listen = "127.0.0.1:0".parse()?;
    config.upstream = format!("file://{}", upstream.display());
    config.upstream_key = key.public_key();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let artifacts = Artifacts::open(ArtifactsConfig {
        data: artifacts_data.clone(),
        auditor_keys: vec![auditor_key],
        ..ArtifactsConfig::default()
    })?;
    let (url, server) = runtime.block_on(async {
        let mirror = Mirror::open(config)?;
        let listeners = precomp_server::Listeners::bind("127.0.0.1:0".parse()?, None).await?;
        let url = format!("http://{}", listeners.main.local_addr()?);
        let server = tokio::spawn(precomp_server::serve(
            precomp_server::AppState::new(mirror, artifacts),
            precomp_server::ServerConfig::default(),
            listeners,
            async {
                let _ = stopped.await;
            },
        ));
        Ok::<_, anyhow::Error>((url, server))
    })?;
    println!("mirror   {url} in front of {}", upstream.display());

    // 3. Everything through the mirror, cold then warm.
    let paths = repository_paths(&upstream)?;
    let client = Upstream::new(&url, Duration::from_secs(30))?;
    for pass in ["cold", "warm"] {
        let started = Instant::now();
        let bytes = runtime.block_on(fetch_all(&client, &upstream, &paths))?;
        println!(
            "fetch    {} objects, {} bytes, identical to upstream, {pass} ({:.2?})",
            paths.len(),
            bytes,
            started.elapsed()
        );
    }

    // 4. rebar3 through the mirror.
    let outcome = rebar3_through(&url, &dir, &upstream.join("public_key"), &args.consumer);
    match outcome {
        Ok(Some(line)) => println!("{line}"),
        Ok(None) => println!("rebar3   skipped: rebar3 is not installed (apt-get install rebar3)"),
        Err(e) => {
            let _ = stop.send(());
            return Err(e);
        }
    }

    // 5-9. Builds, the audit, precomp fetch, and the proof.
    let outcome = mix_loop(&url, &dir, &upstream, &key.public_key(), &args);
    let _ = stop.send(());
    runtime.block_on(server)??;
    outcome?;
    Ok(ExitCode::SUCCESS)
}

/// Builds the sample's lock and publishes it, has an auditor rebuild and countersign it,
/// fetches it into the sample requiring that auditor, and shows that Mix compiles none of the
/// installed dependencies.
fn mix_loop(
    url: &str,
    dir: &Path,
    upstream: &Path,
    repo_key: &RepoPublicKey,
    args: &DemoArgs,
) -> anyhow::Result<()> {
    ensure!(
        args.sample.is_dir(),
        "{} is not a directory; pass --sample",
        args.sample.display()
    );
    let os = |s: &str| std::ffi::OsString::from(s);

    // 5. Token, lock, builds.
    let keys = dir.join("keys");
    let token = precomp(
        "token create",
        &[
            &os("--data"),
            dir.as_os_str(),
            &os("token"),
            &os("create"),
            &os("--name"),
            &os("demo-builder"),
            &os("--key"),
            keys.join(format!("{BUILDER}.pub")).as_os_str(),
        ],
    )?
    .trim()
    .to_string();
    let pins = args
        .releases
        .iter()
        .map(|r| {
            r.split_once('@')
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .with_context(|| format!("{r:?}: give releases as NAME@VERSION"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let lock = static_repo::lock_for(upstream, repo_key, "hexpm", &pins)?;
    let project = dir.join("project");
    if project.exists() {
        std::fs::remove_dir_all(&project)?;
    }
    copy_dir(&args.sample, &project)?;
    std::fs::write(project.join("mix.lock"), lock.to_text()?)?;
    let builder_data = dir.join("builder");
    if builder_data.exists() {
        std::fs::remove_dir_all(&builder_data)?;
    }
    std::fs::create_dir_all(&builder_data)?;
    for path in [dir, &builder_data] {
        use std::os::unix::fs::PermissionsExt;
        // The sandbox user must reach the builds' work directories.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    }
    let started = Instant::now();
    let built = precomp(
        "build",
        &[
            &os("--data"),
            builder_data.as_os_str(),
            &os("build"),
            &os("--json"),
            &os("--lock"),
            project.join("mix.lock").as_os_str(),
            &os("--mirror"),
            &os(url),
            &os("--toolchain"),
            &os("host"),
            &os("--key"),
            keys.join(format!("{BUILDER}.key")).as_os_str(),
            &os("--config"),
            project.join("config").as_os_str(),
            &os("--config-env"),
            &os("dev"),
            &os("--publish"),
            &os("--token"),
            &os(&token),
        ],
    )?;
    println!(
        "build    {} packages of the sample's lock built in the sandbox (host toolchain), signed and published ({:.2?})",
        built.lines().count(),
        started.elapsed()
    );

    // 6. The sample with its deps unpacked as `mix deps.get` leaves them.
    for (app, entry) in lock.hex() {
        let tarball = std::fs::read(
            upstream.join(static_repo::layout::tarball(&entry.package, &entry.version)),
        )?;
        let tarball = precomp_proto::tarball::read(&tarball)?;
        let dest = project.join("deps").join(app);
        precomp_proto::tarball::unpack_contents(&tarball.contents_tar_gz, &dest)?;
        std::fs::write(dest.join(".fetch"), "")?;
    }
    // Mix's Hex client is not needed: the deps are unpacked, an offline SCM serves them.
    let mix_exs = std::fs::read_to_string(project.join("mix.exs"))?;
    std::fs::write(
        project.join("mix.exs"),
        format!("{}{mix_exs}", precomp_builder::project::SCM),
    )?;
    // A consumer that requires a builder and an auditor: nothing is installed before the audit.
    let fetch = || -> anyhow::Result<(Vec<serde_json::Value>, serde_json::Value, Duration)> {
        let started = Instant::now();
        let fetched = precomp(
            "fetch",
            &[
                &os("fetch"),
                &os("--json"),
                &os("--project"),
                project.as_os_str(),
                &os("--mirror"),
                &os(url),
                &os("--trust"),
                keys.join(format!("{BUILDER}.pub")).as_os_str(),
                &os("--auditor"),
                keys.join(format!("{AUDITOR}.pub")).as_os_str(),
                &os("--require-auditors"),
                &os("1"),
                &os("--env"),
                &os("dev"),
            ],
        )?;
        let elapsed = started.elapsed();
        let mut lines = fetched
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<Vec<serde_json::Value>, _>>()
            .with_context(|| format!("precomp fetch --json printed:\n{fetched}"))?;
        let summary = lines
            .pop()
            .context("precomp fetch --json printed nothing")?;
        Ok((lines, summary, elapsed))
    };
    let (deps, summary, _) = fetch()?;
    // Every dependency Mix uses here (plain_ex is test-only: skipped) is refused for want of
    // an auditor.
    let unaudited = deps
        .iter()
        .filter(|dep| dep["status"] == "miss" && dep["kind"] == "policy")
        .count();
    ensure!(
        summary["hits"] == 0 && unaudited > 0 && summary["misses"] == unaudited,
        "before the audit, precomp fetch --require-auditors 1 should install nothing, but:\n{}",
        serde_json::Value::from(deps.clone())
    );
    println!(
        "policy   before any audit, precomp fetch --require-auditors 1 installs nothing: {unaudited} missed, not yet audited"
    );

    // 7. The audit: another key, another token, its own data directory.
    let audit = audit_all(url, dir, &keys)?;
    println!("{audit}");

    // 8. The same fetch, now that the auditor has countersigned.
    let (deps, summary, fetch_time) = fetch()?;
    let builder_id = read_public_key(&keys.join(format!("{BUILDER}.pub")))?.key_id();
    let auditor_id = read_public_key(&keys.join(format!("{AUDITOR}.pub")))?.key_id();
    for dep in deps.iter().filter(|dep| dep["status"] == "installed") {
        let signers = dep["signers"].as_array().cloned().unwrap_or_default();
        ensure!(
            [&builder_id, &auditor_id]
                .iter()
                .all(|id| signers.iter().any(|s| s == id.as_str())),
            "{} was installed without the builder's and the auditor's signatures: {dep}",
            dep["app"]
        );
    }
    println!(
        "fetch    precomp fetch installed {} dependencies, {} missed, {} bytes, each signed by the builder and countersigned by the auditor (--require-auditors 1) ({fetch_time:.2?})",
        summary["hits"], summary["misses"], summary["bytes"]
    );
    ensure!(
        summary["misses"] == 0,
        "precomp fetch missed dependencies:\n{}",
        serde_json::Value::from(deps)
    );

    // 9. The proof.
    let mix = |dir: &Path, mix_args: &[&str]| -> anyhow::Result<String> {
        let output = Command::new("mix")
            .args(mix_args)
            .current_dir(dir)
            .env("MIX_ENV", "dev")
            .env("MIX_REBAR3", "/usr/bin/rebar3")
            .env_remove("MIX_BUILD_PATH")
            .output()
            .context("running mix")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        ensure!(
            output.status.success(),
            "mix {} failed:\n{text}",
            mix_args.join(" ")
        );
        Ok(text)
    };
    let scratch = dir.join("project-from-scratch");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    copy_dir(&project, &scratch)?;
    std::fs::remove_dir_all(scratch.join("_build"))?;

    let started = Instant::now();
    let compiled = mix(&project, &["compile"])?;
    let compile_time = started.elapsed();
    let deps_compiled: Vec<&str> = lock
        .hex()
        .map(|(app, _)| app)
        .filter(|app| compiled.lines().any(|l| l.trim() == format!("==> {app}")))
        .collect();
    ensure!(
        deps_compiled.is_empty(),
        "mix compile compiled {} after precomp fetch:\n{compiled}",
        deps_compiled.join(", ")
    );
    let ran = mix(
        &project,
        &["run", "--no-compile", "-e", "IO.inspect(MixApp.run())"],
    )?;
    println!(
        "proof    mix compile after precomp fetch compiled none of the dependencies, only the sample ({compile_time:.2?}); MixApp.run() = {}",
        ran.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    let started = Instant::now();
    mix(&scratch, &["deps.compile"])?;
    println!(
        "compare  mix deps.compile of the same dependencies from scratch: {:.2?}, against {fetch_time:.2?} for precomp fetch",
        started.elapsed()
    );
    Ok(())
}

/// The demo's key names, under DATA/demo/keys.
const BUILDER: &str = "demo";
const AUDITOR: &str = "demo-auditor";

fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the precomp binary")
}

/// Runs this precomp binary; its stdout, or an error with everything it printed.
fn precomp(what: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let output = Command::new(exe()?)
        .args(args)
        .env_remove("PRECOMP_DATA")
        .output()
        .with_context(|| format!("running precomp {what}"))?;
    ensure!(
        output.status.success(),
        "precomp {what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn read_public_key(path: &Path) -> anyhow::Result<ArtifactPublicKey> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    ArtifactPublicKey::from_pem(&pem)
        .with_context(|| format!("{} is not an ed25519 public key", path.display()))
}

/// `precomp audit --all` as an independent auditor: its own token (bound to its key, which the
/// mirror trusts as an auditor's) and its own data directory, DATA/demo/auditor. The line to
/// print; an error when a rebuild failed or gave other bytes.
fn audit_all(url: &str, dir: &Path, keys: &Path) -> anyhow::Result<String> {
    let os = |s: &str| std::ffi::OsString::from(s);
    let token = precomp(
        "token create",
        &[
            &os("--data"),
            dir.as_os_str(),
            &os("token"),
            &os("create"),
            &os("--name"),
            &os("demo-auditor"),
            &os("--key"),
            keys.join(format!("{AUDITOR}.pub")).as_os_str(),
        ],
    )?
    .trim()
    .to_string();
    let data = dir.join("auditor");
    if data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("clearing {}", data.display()))?;
    }
    std::fs::create_dir_all(&data)?;
    {
        use std::os::unix::fs::PermissionsExt;
        // The sandbox user must reach the rebuilds' work directories.
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))?;
    }
    let started = Instant::now();
    let output = Command::new(exe()?)
        .arg("--data")
        .arg(&data)
        .args([
            "audit",
            "--all",
            "--json",
            "--toolchain",
            "host",
            "--mirror",
            url,
        ])
        .arg("--key")
        .arg(keys.join(format!("{AUDITOR}.key")))
        .args(["--token", &token])
        .env_remove("PRECOMP_DATA")
        .output()
        .context("running precomp audit")?;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let results: Vec<String> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|line| line["result"].as_str().unwrap_or("?").to_string())
        .collect();
    let count = |result: &str| results.iter().filter(|r| *r == result).count();
    let line = format!(
        "audit    an independent auditor (own key, token and directory) rebuilt the {} published builds from source: {} matched, {} mismatched{}, matches countersigned on the mirror ({elapsed:.2?})",
        results.len(),
        count("match"),
        count("mismatch"),
        match (count("failed"), count("skipped")) {
            (0, 0) => String::new(),
            (failed, skipped) => format!(", {failed} failed, {skipped} skipped"),
        }
    );
    ensure!(
        output.status.success() && !results.is_empty() && count("match") == results.len(),
        "{line}\nprecomp audit (exit status {}):\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(line)
}

/// Every file of a static repository, as request paths.
fn repository_paths(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut paths = vec!["names".to_string(), "versions".to_string()];
    for dir in ["packages", "tarballs"] {
        let mut names: Vec<String> = std::fs::read_dir(root.join(dir))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        paths.extend(names.into_iter().map(|n| format!("{dir}/{n}")));
    }
    Ok(paths)
}

async fn fetch_all(client: &Upstream, upstream: &Path, paths: &[String]) -> anyhow::Result<u64> {
    let mut total = 0;
    for path in paths {
        match client.get(path, None, 64 * 1024 * 1024).await? {
            mirror::Fetched::Body { bytes, .. } => {
                let expected = std::fs::read(upstream.join(path))?;
                ensure!(
                    bytes == expected,
                    "/{path} through the mirror differs from upstream"
                );
                total += bytes.len() as u64;
            }
            other => bail!("/{path} through the mirror: {other:?}"),
        }
    }
    Ok(total)
}

/// Builds `consumer` with rebar3 through the mirror, in a fresh HOME that trusts the
/// upstream's key, then runs it. `None` when rebar3 is not installed.
fn rebar3_through(
    url: &str,
    dir: &Path,
    public_key: &Path,
    consumer: &Path,
) -> anyhow::Result<Option<String>> {
    if Command::new("rebar3").arg("version").output().is_err() {
        return Ok(None);
    }
    ensure!(
        consumer.is_dir(),
        "{} is not a directory; pass --consumer",
        consumer.display()
    );
    let work = dir.join("rebar3");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    let project = work.join("project");
    copy_dir(consumer, &project)?;
    let home = work.join("home");
    std::fs::create_dir_all(home.join(".config/rebar3"))?;
    let pem = std::fs::read_to_string(public_key)?;
    std::fs::write(
        home.join(".config/rebar3/rebar.config"),
        format!(
            "{{hex, [{{repos, [#{{name => <<\"hexpm\">>, repo_public_key => <<\"{}\">>}}]}}]}}.\n",
            pem.trim()
        ),
    )?;
    let started = Instant::now();
    let output = Command::new("rebar3")
        .arg("compile")
        .current_dir(&project)
        .env("HOME", &home)
        .env("REBAR_CACHE_DIR", work.join("cache"))
        .env("HEX_CDN", url)
        .env_remove("HEX_MIRROR")
        .output()
        .context("running rebar3")?;
    ensure!(
        output.status.success(),
        "rebar3 compile through the mirror failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let compiled = started.elapsed();
    let lib = project.join("_build/default/lib");
    // rebar3 keeps its own state in a hidden directory beside the apps.
    let mut apps: Vec<String> = std::fs::read_dir(&lib)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|name| !name.starts_with('.'))
        .collect();
    apps.sort();
    let app = std::fs::read_dir(project.join("src"))?
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".app.src")
                .map(str::to_string)
        })
        .next()
        .context("the consumer has no src/*.app.src")?;
    let mut run = Command::new("erl");
    run.arg("-noshell");
    for app in &apps {
        run.arg("-pa").arg(lib.join(app).join("ebin"));
    }
    let ran = run
        .args([
            "-eval",
            &format!("io:format(\"~p\", [{app}:run()]), halt()."),
        ])
        .output()
        .context("running erl")?;
    ensure!(ran.status.success(), "running {app}:run() failed");
    Ok(Some(format!(
        "rebar3   fetched and compiled {} through the mirror, signatures checked ({compiled:.2?}); {app}:run() = {}",
        apps.join(", "),
        String::from_utf8_lossy(&ran.stdout)
    )))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
