//! `precomp repo build`: package sources and tarballs → a static, signed Hex repository.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use precomp_proto::registry::RepoSigningKey;
use precomp_registry::static_repo;

use crate::Context;

/// Builds a static, signed Hex repository from package sources and tarballs.
///
/// Every directory directly inside --packages that is a Mix project (mix.exs), a rebar3
/// project (src/APP.app.src) or an erlang.mk project (ebin/APP.app) is packaged as its own
/// tooling would publish it; every NAME-VERSION.tar there is checked and included as it is.
/// Names and versions come from the projects, not from directory names. OUT then holds
/// `names`, `versions`, `packages/NAME`, `tarballs/NAME-VERSION.tar` and `public_key`, ready
/// for any static web server. Building twice from the same inputs gives the same bytes.
#[derive(Args)]
pub struct BuildArgs {
    /// Directory holding package source directories and/or package .tar files.
    #[arg(long)]
    packages: PathBuf,
    /// The repository's RSA private key, PEM (PKCS#8 or PKCS#1); see `precomp repo keygen`.
    #[arg(long)]
    key: PathBuf,
    /// Repository name, checked by clients as the origin of every registry file. Mix and
    /// rebar3 expect "hexpm" for the repository they use through HEX_MIRROR / HEX_CDN.
    #[arg(long, default_value = "hexpm")]
    name: String,
    /// Output directory; replaced if it already holds a repository.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(_context: &Context, args: BuildArgs) -> anyhow::Result<ExitCode> {
    let pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("reading the signing key {}", args.key.display()))?;
    let key = RepoSigningKey::from_pem(&pem)
        .with_context(|| format!("loading the signing key {}", args.key.display()))?;
    let built = static_repo::build(&args.packages, &args.name, &key, &args.out)?;
    for (name, versions) in &built.packages {
        println!("{name} {}", versions.join(" "));
    }
    for warning in &built.unresolved {
        eprintln!("warning: {warning}");
    }
    println!(
        "built repository {:?} in {}: {} packages, {} releases, key {}",
        args.name,
        args.out.display(),
        built.packages.len(),
        built.release_count(),
        key.public_key().fingerprint()
    );
    Ok(ExitCode::SUCCESS)
}
