//! `precomp`: an org-internal Hex mirror that also serves precompiled packages. One binary,
//! one file per subcommand under `commands/`.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "precomp", version, about, long_about = None)]
struct Cli {
    /// Directory for everything precomp stores (keys, caches, databases, artifacts).
    #[arg(
        long,
        global = true,
        env = "PRECOMP_DATA",
        default_value = "./precomp-data"
    )]
    data: PathBuf,

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
    /// Runs the main job end to end on this machine with embedded defaults.
    Demo(commands::demo::DemoArgs),
}

/// Global settings every command sees.
pub struct Context {
    pub data: PathBuf,
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
    let context = Context { data: cli.data };
    let result = match cli.command {
        Command::Repo(command) => commands::repo::run(&context, command),
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
