//! `precomp demo`: the main job on this machine with embedded defaults.
//!
//! Today: a repository signing key, a static signed Hex repository built from the fixture
//! packages, and a full verification of it. Each stage reports its timing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::Args;
use precomp_proto::registry::RepoSigningKey;
use precomp_registry::static_repo;

use crate::Context;

/// Builds and verifies a signed Hex repository from the fixture packages, under DATA/demo.
#[derive(Args)]
pub struct DemoArgs {
    /// Package sources to publish (run from the repository root, or point this elsewhere).
    #[arg(long, default_value = "tests/fixtures/packages")]
    packages: PathBuf,
}

pub fn run(context: &Context, args: DemoArgs) -> anyhow::Result<ExitCode> {
    if !args.packages.is_dir() {
        bail!(
            "{} is not a directory; run from the precomp checkout or pass --packages",
            args.packages.display()
        );
    }
    let dir = context.data().join("demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let started = Instant::now();
    let key_path = dir.join("repo-key.pem");
    let key = if key_path.exists() {
        RepoSigningKey::from_pem(&std::fs::read_to_string(&key_path)?)?
    } else {
        let key = RepoSigningKey::generate(2048)?;
        std::fs::write(&key_path, key.to_pkcs8_pem()?)?;
        key
    };
    println!(
        "key      {} ({:.2?})",
        key.public_key().fingerprint(),
        started.elapsed()
    );

    let started = Instant::now();
    let repo = dir.join("repo");
    let built = static_repo::build(&args.packages, "hexpm", &key, &repo)?;
    for (name, versions) in &built.packages {
        println!("         {name} {}", versions.join(" "));
    }
    println!(
        "repo     {} packages, {} releases in {} ({:.2?})",
        built.packages.len(),
        built.release_count(),
        repo.display(),
        started.elapsed()
    );

    let started = Instant::now();
    let report = static_repo::verify(&repo, &key.public_key(), Some("hexpm"));
    for failure in &report.failures {
        println!("FAIL     {failure}");
    }
    println!(
        "verify   {} releases, {} failures ({:.2?})",
        report.releases,
        report.failures.len(),
        started.elapsed()
    );
    if !report.ok() {
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "serve it with any static web server; rebar3 reads it with HEX_CDN=<url> and the key {}",
        repo.join("public_key").display()
    );
    Ok(ExitCode::SUCCESS)
}
