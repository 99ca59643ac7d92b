//! `precomp audit`: not built yet.

use std::process::ExitCode;

use crate::Context;

#[derive(clap::Args)]
pub struct AuditArgs {}

pub fn run(_context: &Context, _args: AuditArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("precomp audit is not built yet")
}
