//! `precomp demo`: the main job on this machine with embedded defaults.
//!
//! 1. A signed Hex repository built from the fixture packages: the upstream.
//! 2. The mirror in front of it, with an empty store, on a loopback port.
//! 3. Every object fetched through the mirror over HTTP, cold then warm, and compared byte for
//!    byte with the upstream's.
//! 4. rebar3, a real Hex client, fetching and compiling a project's dependencies through the
//!    mirror with signature and origin checks on, and the result run.
//!
//! Each stage prints its timing. Builds and `precomp fetch` join as they land.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::Args;
use precomp_proto::registry::RepoSigningKey;
use precomp_registry::mirror::{self, Mirror, MirrorConfig, Upstream};
use precomp_registry::static_repo;

use crate::Context;

/// Builds a signed Hex repository from the fixture packages, puts the mirror in front of it,
/// fetches everything through the mirror, and has rebar3 build a project through it. All
/// under DATA/demo.
#[derive(Args)]
pub struct DemoArgs {
    /// Package sources to publish (run from the repository root, or point this elsewhere).
    #[arg(long, default_value = "tests/fixtures/packages")]
    packages: PathBuf,
    /// The rebar3 project to build through the mirror.
    #[arg(long, default_value = "tests/fixtures/consumers/rebar3_app")]
    consumer: PathBuf,
}

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

    // 2. The mirror, with an empty store.
    let store = dir.join("mirror");
    if store.exists() {
        std::fs::remove_dir_all(&store).with_context(|| format!("clearing {}", store.display()))?;
    }
    let mut config = MirrorConfig::defaults(store);
    config.listen = "127.0.0.1:0".parse()?;
    config.upstream = format!("file://{}", upstream.display());
    config.upstream_key = key.public_key();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (url, server) = runtime.block_on(async {
        let mirror = Mirror::open(config)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(mirror::serve(mirror, listener, async {
            let _ = stopped.await;
        }));
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

    let _ = stop.send(());
    runtime.block_on(server)??;
    match outcome? {
        Some(line) => println!("{line}"),
        None => println!("rebar3   skipped: rebar3 is not installed (apt-get install rebar3)"),
    }
    Ok(ExitCode::SUCCESS)
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
