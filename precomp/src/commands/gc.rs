//! `precomp gc`: not built yet.

use std::process::ExitCode;

use crate::Context;

#[derive(clap::Args)]
pub struct GcArgs {}

pub fn run(_context: &Context, _args: GcArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("precomp gc is not built yet")
}
