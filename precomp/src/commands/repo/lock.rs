//! `precomp repo lock`: a mix.lock for pinned releases of a static repository.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use precomp_proto::registry::RepoPublicKey;
use precomp_registry::static_repo;

use crate::Context;

/// Writes the mix.lock `mix deps.get` would write for exact releases of a static repository,
/// without a Hex client: checksums from the signed registry records, build tools from each
/// tarball's metadata. Every non-optional dependency of a pinned release must be pinned too;
/// an optional one is in the lock only when pinned (as Mix includes it only when something
/// else requires it).
#[derive(Args)]
pub struct LockArgs {
    /// The releases, as NAME@VERSION.
    #[arg(required = true)]
    releases: Vec<String>,
    /// The repository directory (`precomp repo build --out`).
    #[arg(long)]
    repo: PathBuf,
    /// The repository's public key, PEM.
    #[arg(long)]
    public_key: PathBuf,
    /// The repository name its records are signed for.
    #[arg(long, default_value = "hexpm")]
    name: String,
    /// Write the lock here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(_context: &Context, args: LockArgs) -> anyhow::Result<ExitCode> {
    let pem = std::fs::read_to_string(&args.public_key)
        .with_context(|| format!("reading the public key {}", args.public_key.display()))?;
    let key = RepoPublicKey::from_pem(&pem)
        .with_context(|| format!("loading the public key {}", args.public_key.display()))?;
    let pins = args
        .releases
        .iter()
        .map(|spec| {
            spec.split_once('@')
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .with_context(|| format!("{spec:?}: give releases as NAME@VERSION"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let lock = static_repo::lock_for(&args.repo, &key, &args.name, &pins)?;
    let text = lock.to_text()?;
    match &args.out {
        Some(out) => {
            std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
