//! `precomp backup` and `precomp restore`: not built yet.

use std::process::ExitCode;

use crate::Context;

#[derive(clap::Args)]
pub struct BackupArgs {}

#[derive(clap::Args)]
pub struct RestoreArgs {}

pub fn run_backup(_context: &Context, _args: BackupArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("precomp backup is not built yet")
}

pub fn run_restore(_context: &Context, _args: RestoreArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("precomp restore is not built yet")
}
