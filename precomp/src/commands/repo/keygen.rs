//! `precomp repo keygen`: a new RSA key for signing a repository's registry files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use precomp_proto::registry::RepoSigningKey;

use crate::commands::write_new;
use crate::Context;

/// Writes a new RSA private key (PKCS#8 PEM, mode 0600) for `precomp repo build --key`, and
/// its public key (SPKI PEM) beside it as OUT.pub.
#[derive(Args)]
pub struct KeygenArgs {
    /// Where to write the private key; refuses to overwrite an existing file.
    #[arg(long)]
    out: PathBuf,
    /// Key size in bits (Hex requires at least 2048).
    #[arg(long, default_value_t = 2048)]
    bits: usize,
}

pub fn run(_context: &Context, args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let public_path = PathBuf::from(format!("{}.pub", args.out.display()));
    for path in [&args.out, &public_path] {
        if path.exists() {
            bail!(
                "{} already exists; refusing to overwrite a key",
                path.display()
            );
        }
    }
    let key = RepoSigningKey::generate(args.bits)?;
    write_new(&args.out, key.to_pkcs8_pem()?.as_bytes(), 0o600)?;
    let public = key.public_key();
    write_new(&public_path, public.to_spki_pem()?.as_bytes(), 0o644)?;
    println!("{} {}", args.out.display(), public.fingerprint());
    Ok(ExitCode::SUCCESS)
}
