//! `precomp keys`: ed25519 keys that sign artifact manifests (builders, auditors).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use precomp_proto::manifest::ArtifactSigningKey;

use super::write_new;
use crate::Context;

#[derive(Subcommand)]
pub enum KeysCommand {
    Generate(GenerateArgs),
}

/// Writes a new ed25519 signing key to DIR/NAME.key (PKCS#8 PEM, mode 0600) and its public
/// key to DIR/NAME.pub (SPKI PEM), and prints the key id clients trust it by. Keys are
/// never overwritten. Keep NAME.key outside any build sandbox.
#[derive(Args)]
pub struct GenerateArgs {
    /// The key's name, e.g. the builder's host name: letters, digits, `-`, `_` and `.`.
    #[arg(long)]
    name: String,
    /// Directory for the two files; created if missing.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(_context: &Context, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Generate(args) => generate(args),
    }
}

fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let valid = !args.name.is_empty()
        && !args.name.starts_with('.')
        && args
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        bail!(
            "key name {:?} must be letters, digits, `-`, `_` and `.`, not starting with `.`",
            args.name
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let private = args.out.join(format!("{}.key", args.name));
    let public = args.out.join(format!("{}.pub", args.name));
    for path in [&private, &public] {
        if path.exists() {
            bail!(
                "{} already exists; refusing to overwrite a key",
                path.display()
            );
        }
    }
    let key = ArtifactSigningKey::generate();
    write_new(&private, key.to_pem()?.as_bytes(), 0o600)?;
    write_new(&public, key.public_key().to_pem()?.as_bytes(), 0o644)?;
    println!("{} {}", key.public_key().key_id(), private.display());
    Ok(ExitCode::SUCCESS)
}
