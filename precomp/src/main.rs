//! `precomp`: an org-internal Hex mirror that also serves precompiled packages. One binary,
//! one file per subcommand under `commands/`.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "precomp", version, about, long_about = None)]
struct Cli {
    /// Directory for everything precomp stores (keys, caches, databases, artifacts)
    /// [default: ./precomp-data, or `data` in the --config file of `serve`
    /// and `mirror sync`].
    #[arg(long, global = true, env = "PRECOMP_DATA")]
    data: Option<PathBuf>,

    /// Log filter, e.g. `info`, `debug`, `precomp_registry=debug` (tracing EnvFilter syntax).
    #[arg(long, global = true, env = "PRECOMP_LOG", default_value = "warn")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Static, signed Hex repositories: build one from package sources, verify one.
    #[command(subcommand)]
    Repo(commands::repo::RepoCommand),
    /// Keys that sign manifests and verdicts, and the signed trust document (roles,
    /// rotation, revocation).
    #[command(subcommand)]
    Keys(commands::keys::KeysCommand),
    /// Runs the pull-through Hex mirror.
    Serve(commands::serve::ServeArgs),
    /// The mirror's store: prefetch packages for offline use.
    #[command(subcommand)]
    Mirror(commands::mirror::MirrorCommand),
    /// Toolchain images and the build sandbox: build, list, verify, run a command inside.
    #[command(subcommand)]
    Toolchain(commands::toolchain::ToolchainCommand),
    /// Builds precompiled artifacts of Hex packages in the sandbox, signs and publishes them.
    Build(commands::build::BuildArgs),
    /// Installs precompiled dependencies into a Mix project's `_build` after `mix deps.get`.
    Fetch(commands::fetch::FetchArgs),
    /// Shows a manifest or an artifact, signatures checked.
    Inspect(commands::inspect::InspectArgs),
    /// Upload tokens for builders publishing to the mirror.
    #[command(subcommand)]
    Token(commands::token::TokenCommand),
    /// A build or audit worker: leases jobs from the mirror (misses to build, with --audit
    /// published builds to rebuild and compare) and reports signed results.
    Worker(commands::worker::WorkerArgs),
    /// Rebuilds published artifacts independently and signs verdicts.
    Audit(commands::audit::AuditArgs),
    /// Removes artifacts no recent lock needs (dry run by default).
    Gc(commands::gc::GcArgs),
    /// The artifact store: re-verify every stored artifact (`scrub`).
    #[command(subcommand)]
    Store(commands::store::StoreCommand),
    /// A consistent snapshot of the data directory.
    Backup(commands::backup::BackupArgs),
    /// Restores a snapshot into an empty data directory.
    Restore(commands::backup::RestoreArgs),
    /// Runs the main job end to end on this machine with embedded defaults.
    Demo(commands::demo::DemoArgs),
}

/// Global settings every command sees.
pub struct Context {
    /// `--data` / `PRECOMP_DATA` when given.
    pub data_flag: Option<PathBuf>,
}

impl Context {
    pub const DEFAULT_DATA: &'static str = "./precomp-data";

    /// The data directory: `--data`, else `PRECOMP_DATA`, else the default.
    pub fn data(&self) -> PathBuf {
        self.data_flag
            .clone()
            .unwrap_or_else(|| PathBuf::from(Self::DEFAULT_DATA))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let context = Context {
        data_flag: cli.data,
    };
    let result = match cli.command {
        Command::Repo(command) => commands::repo::run(&context, command),
        Command::Keys(command) => commands::keys::run(&context, command),
        Command::Serve(args) => commands::serve::run(&context, args),
        Command::Mirror(command) => commands::mirror::run(&context, command),
        Command::Toolchain(command) => commands::toolchain::run(&context, command),
        Command::Build(args) => commands::build::run(&context, args),
        Command::Fetch(args) => commands::fetch::run(&context, args),
        Command::Inspect(args) => commands::inspect::run(&context, args),
        Command::Token(command) => commands::token::run(&context, command),
        Command::Worker(args) => commands::worker::run(&context, args),
        Command::Audit(args) => commands::audit::run(&context, args),
        Command::Gc(args) => commands::gc::run(&context, args),
        Command::Store(command) => commands::store::run(&context, command),
        Command::Backup(args) => commands::backup::run_backup(&context, args),
        Command::Restore(args) => commands::backup::run_restore(&context, args),
        Command::Demo(args) => commands::demo::run(&context, args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
