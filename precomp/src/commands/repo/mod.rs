//! `precomp repo`: static, signed Hex repositories.

mod build;
mod keygen;
mod lock;
mod verify;

use std::process::ExitCode;

use clap::Subcommand;

use crate::Context;

#[derive(Subcommand)]
pub enum RepoCommand {
    Build(build::BuildArgs),
    Verify(verify::VerifyArgs),
    Keygen(keygen::KeygenArgs),
    Lock(lock::LockArgs),
}

pub fn run(context: &Context, command: RepoCommand) -> anyhow::Result<ExitCode> {
    match command {
        RepoCommand::Build(args) => build::run(context, args),
        RepoCommand::Verify(args) => verify::run(context, args),
        RepoCommand::Keygen(args) => keygen::run(context, args),
        RepoCommand::Lock(args) => lock::run(context, args),
    }
}
