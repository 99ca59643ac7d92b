//! `precomp mirror`: work on the pull-through mirror's store without serving it; and the
//! settings every command that opens the mirror shares (`precomp serve`, `precomp mirror
//! sync`): upstream, its key and repository name, timeouts, the data directory, and the
//! `--config` TOML file they can come from.

mod sync;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use precomp_proto::registry::RepoPublicKey;
use precomp_registry::mirror::MirrorConfig;
use serde::Deserialize;

use crate::Context;

#[derive(Subcommand)]
pub enum MirrorCommand {
    Sync(sync::SyncArgs),
}

pub fn run(context: &Context, command: MirrorCommand) -> anyhow::Result<ExitCode> {
    match command {
        MirrorCommand::Sync(args) => sync::run(context, args),
    }
}

/// The mirror settings shared by `precomp serve` and `precomp mirror sync`. Each comes from its
/// flag, else its environment variable, else the --config file, else the embedded default.
#[derive(Args, Debug, Default)]
pub struct MirrorSettings {
    /// TOML file with any of these settings (same names with `_` for `-`, plus `data`). One
    /// file serves `precomp serve` and `precomp mirror sync`; each ignores the other's keys.
    #[arg(long, env = "PRECOMP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Upstream Hex repository: an http(s) URL, or file:///DIR for a repository directory such
    /// as `precomp repo build` writes [default: https://repo.hex.pm].
    #[arg(long, env = "PRECOMP_UPSTREAM")]
    pub upstream: Option<String>,
    /// PEM public key upstream signs its registry with [default: hex.pm's key, built in].
    #[arg(long, env = "PRECOMP_UPSTREAM_KEY")]
    pub upstream_key: Option<PathBuf>,
    /// Repository name upstream's registry files must carry (origin check) [default: hexpm].
    #[arg(long, env = "PRECOMP_UPSTREAM_REPOSITORY")]
    pub upstream_repository: Option<String>,
    /// Seconds a registry file is taken from the store before upstream is asked whether it
    /// changed [default: 300].
    #[arg(long, env = "PRECOMP_REGISTRY_TTL")]
    pub registry_ttl: Option<u64>,
    /// Seconds one upstream request may take, body included [default: 30].
    #[arg(long, env = "PRECOMP_UPSTREAM_TIMEOUT")]
    pub upstream_timeout: Option<u64>,
}

/// The --config file: every setting of every mirror command, all optional. One file serves
/// `precomp serve` and `precomp mirror sync` alike; each reads the keys it knows.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    pub upstream_key: Option<PathBuf>,
    pub upstream_repository: Option<String>,
    pub registry_ttl: Option<u64>,
    pub upstream_timeout: Option<u64>,
    pub memory_cache_mb: Option<u64>,
    /// `precomp serve`: public keys (SPKI PEM files) of the builders it trusts.
    pub builder_keys: Option<Vec<PathBuf>>,
    /// `precomp serve`: public keys (SPKI PEM files) of the auditors it trusts.
    pub auditor_keys: Option<Vec<PathBuf>>,
    /// `precomp serve`: the root public key (SPKI PEM file) the trust document in
    /// DATA/trust must be signed by, directly or through root rotations.
    pub trust_root: Option<PathBuf>,
    /// `precomp serve`: config variants per release and tuple, and days miss values are kept.
    pub max_config_variants: Option<u32>,
    pub miss_retention_days: Option<u32>,
    /// `precomp serve`: who may read, and the bounds on misses (docs/mirror.md, "Limits").
    pub max_open_misses: Option<u64>,
    pub miss_reports_per_client: Option<u32>,
    pub miss_reports_total: Option<u32>,
    pub miss_record_fetches: Option<usize>,
    pub require_read_token: Option<bool>,
    /// `precomp serve`: the server's limits and timeouts (docs/mirror.md, "Limits").
    pub admin_listen: Option<SocketAddr>,
    pub header_read_timeout: Option<u64>,
    pub idle_timeout: Option<u64>,
    pub body_read_timeout: Option<u64>,
    pub body_min_rate: Option<u64>,
    pub request_timeout: Option<u64>,
    pub max_requests: Option<usize>,
    pub max_body_memory_mb: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub trusted_proxies: Option<Vec<String>>,
    pub proxy_protocol: Option<bool>,
}

impl MirrorSettings {
    /// Reads the --config file, if any, and applies the shared settings over the embedded
    /// defaults. Returns the file too, for the settings only one command has.
    pub fn resolve(self, context: &Context) -> anyhow::Result<(MirrorConfig, FileConfig)> {
        let file = match &self.config {
            Some(path) => read_config(path)?,
            None => FileConfig::default(),
        };
        let data = context
            .data_flag
            .clone()
            .or_else(|| file.data.clone())
            .unwrap_or_else(|| PathBuf::from(Context::DEFAULT_DATA));
        let mut config = MirrorConfig::defaults(data.join("mirror"));
        if let Some(upstream) = self.upstream.or_else(|| file.upstream.clone()) {
            if !["http://", "https://", "file:///"]
                .iter()
                .any(|scheme| upstream.starts_with(scheme))
            {
                bail!("upstream {upstream:?} must be an http://, https:// or file:/// URL");
            }
            config.upstream = upstream;
        }
        if let Some(path) = self.upstream_key.or_else(|| file.upstream_key.clone()) {
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("reading the upstream key {}", path.display()))?;
            config.upstream_key = RepoPublicKey::from_pem(&pem)
                .with_context(|| format!("loading the upstream key {}", path.display()))?;
        }
        if let Some(repository) = self
            .upstream_repository
            .or_else(|| file.upstream_repository.clone())
        {
            config.upstream_repository = repository;
        }
        if let Some(seconds) = self.registry_ttl.or(file.registry_ttl) {
            config.registry_ttl = Duration::from_secs(seconds);
        }
        if let Some(seconds) = self.upstream_timeout.or(file.upstream_timeout) {
            if seconds == 0 {
                bail!("upstream timeout must be at least 1 second");
            }
            config.upstream_timeout = Duration::from_secs(seconds);
        }
        Ok((config, file))
    }
}

fn read_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing the config file {}", path.display()))
}
