//! `precomp toolchain`: the toolchain images builds run on, and the build sandbox.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use precomp_sandbox::toolchain::{self, Credentials, ImageRequest, ImportRequest, Store, Suite};
use precomp_sandbox::{Limits, Mount, Sandbox, Spec, Status, Stdio};

use crate::Context;

#[derive(Subcommand)]
pub enum ToolchainCommand {
    Build(BuildArgs),
    Import(ImportArgs),
    List(ListArgs),
    Verify(VerifyArgs),
    Run(RunArgs),
}

/// Builds a Debian toolchain image (or finds the one built from the same inputs).
///
/// `debootstrap --variant=minbase SUITE`, then `apt-get install --no-install-recommends` of
/// erlang-base, erlang-dev, elixir, rebar3, gcc, make, libc6-dev and ca-certificates inside
/// the root; logs, caches and generated ids are removed (docs/sandbox.md lists them), the tree is digested and
/// stored under DATA/toolchains/<digest>/. Keyed by the suite, architecture, packages and the
/// suite's signed InRelease: a second build with the same inputs is instant. Needs root and
/// `apt-get install debootstrap`; bookworm takes a few minutes and ~1.1 GB, trixie ~1.3 GB.
#[derive(Args)]
pub struct BuildArgs {
    /// Debian suite: bookworm (OTP 25, Elixir 1.14) or trixie (OTP 27, Elixir 1.18).
    #[arg(long)]
    suite: String,
    /// Debian mirror [default: env PRECOMP_DEBIAN_MIRROR, else the host's apt sources, else
    /// http://deb.debian.org/debian].
    #[arg(long)]
    mirror: Option<String>,
    /// Packages to install instead of the default toolchain set (repeatable).
    #[arg(long = "package", value_name = "PACKAGE")]
    packages: Vec<String>,
    /// Build again even if an image from the same inputs exists.
    #[arg(long)]
    rebuild: bool,
    /// Print the toolchain's record as JSON.
    #[arg(long)]
    json: bool,
}

/// Makes a toolchain from a container image: your CI image, so builds match its OTP/Elixir.
///
/// IMAGE is a registry reference (`registry.example.com/ci/elixir:1.16-otp-26`,
/// `…@sha256:DIGEST`; `docker://` optional; plain HTTP only for a registry on loopback), an
/// OCI image layout directory (`oci:DIR[:TAG]`), or an archive from `docker save` or skopeo
/// (`docker-archive:FILE[:TAG]`, `oci-archive:FILE[:TAG]`). The image for this machine's
/// platform is picked from a multi-platform index. Every blob is checked against its digest
/// and size, every layer against its diff_id, before anything is stored; layers are applied
/// with the path-safety rules of docs/sandbox.md (no escapes, no devices, set-id bits
/// cleared, sizes bounded). Then erl, elixir and rebar3 run in the sandbox to record the
/// versions; an image without OTP or Elixir, or not glibc Linux, is refused. Stored under
/// DATA/toolchains/<tree digest>/ with the image's manifest digest as provenance; importing
/// the same manifest again is instant. Needs root.
#[derive(Args)]
pub struct ImportArgs {
    /// The image (see above).
    image: String,
    /// Registry user name [default: from ~/.docker/config.json `auths`, else anonymous].
    #[arg(long, env = "PRECOMP_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Read the registry password (or token) from the first line of stdin.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// Pull and apply the layers even if this manifest was imported before.
    #[arg(long)]
    reimport: bool,
    /// Largest total size of the image's files, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 16 * 1024)]
    max_size: u64,
    /// Print the toolchain's record as JSON.
    #[arg(long)]
    json: bool,
}

/// Lists the toolchains: the images in the data directory, and `host`.
#[derive(Args)]
pub struct ListArgs {
    /// JSON: a list of objects with id, kind (image, imported, host), suite, digest, otp,
    /// otp_full, elixir, rebar3, architecture, packages (and for images root, files, bytes,
    /// input_key; for imported ones image: reference, manifest_digest, platform, libc...).
    #[arg(long)]
    json: bool,
}

/// Recomputes a toolchain's digest and compares it with its record.
///
/// Images: every path, mode, owner, content and link target of the root against the stored
/// manifest; the first differing paths are printed. `host`: the toolchain packages' files
/// against dpkg's checksums. Exits 1 on any difference.
#[derive(Args)]
pub struct VerifyArgs {
    /// `host`, an image id, a digest or digest prefix, or a suite (its newest image).
    id: String,
}

/// Runs one command in the build sandbox, with the build policy (for debugging a build).
///
/// No network (loopback only), the toolchain's /usr and /etc read-only, a private /tmp, the
/// output directory writable at /build (the working directory), the build environment and
/// nothing else (PATH, HOME=/tmp/home, LANG=C.UTF-8, TZ=UTC, SOURCE_DATE_EPOCH,
/// ERL_COMPILER_OPTIONS=deterministic), the build limits. stdin, stdout and stderr are the
/// terminal's. Exits with the command's status; 124 on time-out, after killing every process
/// of the sandbox.
#[derive(Args)]
pub struct RunArgs {
    /// `host`, an image id, a digest or digest prefix, or a suite (its newest image).
    id: String,
    /// Wall-time limit in seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Memory limit in MiB.
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    /// Limit on processes and threads.
    #[arg(long)]
    processes: Option<u64>,
    /// Host directory mounted writable at /build [default: a temporary directory, removed
    /// afterwards].
    #[arg(long)]
    output: Option<PathBuf>,
    /// Read-only mount, HOST_PATH[:SANDBOX_PATH] (default /src/NAME); repeatable.
    #[arg(long = "ro", value_name = "HOST[:DEST]")]
    read_only: Vec<String>,
    /// Extra environment variable NAME=VALUE; repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn run(context: &Context, command: ToolchainCommand) -> anyhow::Result<ExitCode> {
    match command {
        ToolchainCommand::Build(args) => build(context, args),
        ToolchainCommand::Import(args) => import(context, args),
        ToolchainCommand::List(args) => list(context, args),
        ToolchainCommand::Verify(args) => verify(context, args),
        ToolchainCommand::Run(args) => run_command(context, args),
    }
}

fn store(context: &Context) -> anyhow::Result<Store> {
    let data = context.data();
    Store::open(&data).with_context(|| format!("opening the toolchain store in {}", data.display()))
}

fn build(context: &Context, args: BuildArgs) -> anyhow::Result<ExitCode> {
    let suite: Suite = args.suite.parse()?;
    let mut request = ImageRequest::new(suite);
    if let Some(mirror) = args.mirror {
        request.mirror = mirror.trim_end_matches('/').to_string();
    }
    if !args.packages.is_empty() {
        request.packages = args.packages;
    }
    request.rebuild = args.rebuild;
    let sandbox = Sandbox::new()?;
    let store = store(context)?;
    eprintln!(
        "building the {suite} image from {} (minutes on first build)...",
        request.mirror
    );
    let built = store.build(&sandbox, &request)?;
    if args.json {
        println!(
            "{}",
            toolchain::to_json(std::slice::from_ref(&built.toolchain))
        );
    } else {
        println!("{}", built.toolchain.summary());
        println!(
            "{} in {:.1} s: {}",
            if built.reused {
                "reused (same inputs)"
            } else {
                "built"
            },
            built.elapsed.as_secs_f64(),
            built
                .toolchain
                .root
                .as_ref()
                .map(|r| r.display().to_string())
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn import(context: &Context, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let mut request = ImportRequest::new(&args.image);
    request.reimport = args.reimport;
    request.bounds.max_bytes = args.max_size << 20;
    if let Some(username) = args.username {
        let password = if args.password_stdin {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        } else if let Ok(password) = std::env::var("PRECOMP_REGISTRY_PASSWORD") {
            password
        } else {
            bail!("--username needs a password: --password-stdin, or PRECOMP_REGISTRY_PASSWORD");
        };
        request.credentials = Some(Credentials { username, password });
    }
    let sandbox = Sandbox::new()?;
    let store = store(context)?;
    eprintln!("importing {}...", args.image);
    let imported = store.import(&sandbox, &request)?;
    if args.json {
        println!(
            "{}",
            toolchain::to_json(std::slice::from_ref(&imported.toolchain))
        );
    } else {
        let t = &imported.toolchain;
        println!("{}", t.summary());
        if let Some(image) = &t.image {
            println!(
                "image {} ({}), {}, {}{}",
                image
                    .manifest_digest
                    .as_deref()
                    .unwrap_or(image.config_digest.as_str()),
                image.platform,
                image.libc,
                image.os.as_deref().unwrap_or("unknown OS"),
                if t.rebar3.is_empty() {
                    "; no rebar3 in the image: packages built with rebar3 will fail to build"
                } else {
                    ""
                }
            );
        }
        println!(
            "{} in {:.1} s: {}",
            if imported.reused {
                "reused (imported before)"
            } else {
                "imported"
            },
            imported.elapsed.as_secs_f64(),
            t.root
                .as_ref()
                .map(|r| r.display().to_string())
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list(context: &Context, args: ListArgs) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::new()?;
    let toolchains = store(context)?.list(&sandbox)?;
    if args.json {
        println!("{}", toolchain::to_json(&toolchains));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<14} {:<9} {:<8} {:<10} {:<8} {:<8} {:<7} DIGEST [IMAGE]",
        "ID", "SUITE", "KIND", "OTP", "ELIXIR", "REBAR3", "ARCH"
    );
    for t in &toolchains {
        println!(
            "{:<14} {:<9} {:<8} {:<10} {:<8} {:<8} {:<7} {}{}",
            t.id,
            t.suite,
            match t.kind {
                toolchain::Kind::Image => "image",
                toolchain::Kind::Imported => "imported",
                toolchain::Kind::Host => "host",
            },
            t.otp_full,
            t.elixir,
            t.rebar3,
            t.architecture,
            t.digest,
            t.image
                .as_ref()
                .map(|i| format!(" {}", i.reference))
                .unwrap_or_default()
        );
    }
    if toolchains.is_empty() {
        println!("(none: build one with `precomp toolchain build --suite bookworm`)");
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(context: &Context, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::new()?;
    let store = store(context)?;
    let toolchain = store.resolve(&args.id, &sandbox)?;
    let verification = store.verify(&toolchain)?;
    const SHOWN: usize = 20;
    for difference in verification.differences.iter().take(SHOWN) {
        println!("FAIL {difference}");
    }
    if verification.differences.len() > SHOWN {
        println!(
            "FAIL ... and {} more differences",
            verification.differences.len() - SHOWN
        );
    }
    if verification.ok() {
        println!("ok: {} digest {}", toolchain.id, toolchain.digest);
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "FAILED: {} digest is {}, recorded {}",
            toolchain.id, verification.actual, toolchain.digest
        );
        Ok(ExitCode::FAILURE)
    }
}

fn run_command(context: &Context, args: RunArgs) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::new()?;
    let store = store(context)?;
    let toolchain = store.resolve(&args.id, &sandbox)?;

    let temporary;
    let output = match &args.output {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temporary = precomp_sandbox::scratch_dir("precomp-run-")?;
            temporary.path().to_path_buf()
        }
    };
    let mut spec = Spec::build(toolchain.sandbox_root(), &output, &args.command);
    spec.stdio = Stdio::Inherit;
    spec.limits = Limits {
        wall_time: Duration::from_secs(args.timeout),
        ..Limits::build()
    };
    if let Some(mib) = args.memory {
        spec.limits.memory_bytes = mib << 20;
    }
    if let Some(processes) = args.processes {
        spec.limits.processes = processes;
    }
    for mount in &args.read_only {
        let (host, dest) = match mount.split_once(':') {
            Some((host, dest)) => (PathBuf::from(host), PathBuf::from(dest)),
            None => {
                let host = PathBuf::from(mount);
                let name = host
                    .file_name()
                    .with_context(|| format!("--ro {mount}: no file name"))?;
                let dest = PathBuf::from("/src").join(name);
                (host, dest)
            }
        };
        spec.sources.push(Mount::new(host, dest));
    }
    for pair in &args.env {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("--env {pair}: expected NAME=VALUE");
        };
        spec.env.insert(name.to_string(), value.to_string());
    }
    let outcome = sandbox.run(&spec)?;
    match &outcome.status {
        Status::Exited(_) => {}
        other => eprintln!("precomp: {} ({})", other, toolchain.id),
    }
    Ok(ExitCode::from(
        outcome.status.exit_code().clamp(0, 255) as u8
    ))
}
