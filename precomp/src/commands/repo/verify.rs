//! `precomp repo verify`: checks a static repository as a client would.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use precomp_proto::registry::RepoPublicKey;
use precomp_registry::static_repo;

use crate::Context;

/// Checks every signature, origin and checksum of a static Hex repository.
///
/// Verifies `names`, `versions` and every `packages/NAME` against the public key and the
/// repository name, every tarball's outer and inner checksum against its package record and
/// its metadata against its file name, and that the indexes agree. Prints one line per failed
/// check, naming the file, and exits non-zero if there is any.
#[derive(Args)]
pub struct VerifyArgs {
    /// The repository directory.
    dir: PathBuf,
    /// The repository's public key, PEM (SPKI or PKCS#1).
    #[arg(long)]
    public_key: PathBuf,
    /// Expected repository name; by default the name the signed `names` file carries.
    #[arg(long)]
    name: Option<String>,
}

pub fn run(_context: &Context, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let pem = std::fs::read_to_string(&args.public_key)
        .with_context(|| format!("reading the public key {}", args.public_key.display()))?;
    let key = RepoPublicKey::from_pem(&pem)
        .with_context(|| format!("loading the public key {}", args.public_key.display()))?;
    let report = static_repo::verify(&args.dir, &key, args.name.as_deref());
    for failure in &report.failures {
        println!("FAIL {failure}");
    }
    println!(
        "{}: repository {:?}, {} packages, {} releases checked, {} failures",
        if report.ok() { "ok" } else { "FAILED" },
        report.repository,
        report.packages,
        report.releases,
        report.failures.len()
    );
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
