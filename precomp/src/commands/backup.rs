//! `precomp backup` and `precomp restore`: consistent snapshots of a data directory (the
//! artifact store, the mirror's cache, the trust document) and restoring one into an empty
//! data directory.

use std::path::PathBuf;
use std::process::ExitCode;

use precomp_ops::backup::{self, BackupOptions};

use crate::Context;

/// Writes a consistent snapshot of DATA into a new directory: each SQLite database through
/// SQLite's online backup API (one read transaction), the blobs that snapshot names (each
/// verified by its SHA-256), the trust document, and precomp-backup.json listing every file
/// with its size and SHA-256. Safe while `precomp serve` runs. The directory appears only
/// once complete.
#[derive(clap::Args)]
pub struct BackupArgs {
    /// The backup directory to create (must not exist).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Hard-link blobs instead of copying them (same filesystem; fast, but no protection
    /// against losing that disk).
    #[arg(long)]
    link: bool,
    /// Leave out DATA/mirror, the cache of upstream (it refills on demand).
    #[arg(long)]
    skip_mirror: bool,
}

/// Restores a backup into DATA, which must be absent or empty (stop the mirror and move the
/// old data directory aside first). Every file is checked against precomp-backup.json and
/// every database with SQLite's integrity check before the directory is put in place.
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup directory (`precomp backup --out`).
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// Only verify the backup; restore nothing.
    #[arg(long)]
    check: bool,
}

pub fn run_backup(context: &Context, args: BackupArgs) -> anyhow::Result<ExitCode> {
    let summary = backup::backup(&BackupOptions {
        data: context.data(),
        out: args.out.clone(),
        link: args.link,
        skip_mirror: args.skip_mirror,
        precomp_version: env!("CARGO_PKG_VERSION").to_string(),
    })?;
    println!(
        "backed up {} files ({} bytes; databases {}) into {}",
        summary.files,
        summary.bytes,
        summary.databases.join(", "),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run_restore(context: &Context, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    if args.check {
        let manifest = backup::verify(&args.from)?;
        println!(
            "{}: {} files verified",
            args.from.display(),
            manifest.files.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let data = context.data();
    let summary = backup::restore(&args.from, &data)?;
    println!(
        "restored {} files ({} bytes) into {}; start the mirror on it with `precomp --data {} serve`",
        summary.files,
        summary.bytes,
        data.display(),
        data.display()
    );
    Ok(ExitCode::SUCCESS)
}
