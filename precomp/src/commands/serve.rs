//! `precomp serve`: the pull-through Hex mirror.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use precomp_proto::manifest::ArtifactPublicKey;
use precomp_registry::artifacts::{Artifacts, ArtifactsConfig};
use precomp_registry::mirror::{self, Mirror, MirrorConfig};

use super::mirror::MirrorSettings;
use crate::Context;

/// Runs the pull-through Hex mirror.
///
/// Serves the Hex repository protocol (/names, /versions, /packages/NAME,
/// /tarballs/NAME-VERSION.tar, /docs/NAME-VERSION.tar.gz, /public_key, /installs/*) from the
/// store under DATA/mirror, fetching what it lacks from upstream and verifying it before it is
/// stored: registry files by signature and origin, tarballs by the checksum in the verified
/// package record. Point clients at it with HEX_MIRROR=URL (mix) or HEX_CDN=URL (rebar3).
/// Also serves /healthz and /metrics (Prometheus). Stops gracefully on SIGTERM or Ctrl-C.
///
/// Precompiled artifacts are served and accepted under /precomp/v1/ from DATA/artifacts:
/// builders upload with a token from `precomp token create`. Without a trust document, a
/// manifest is published only if signed by the token's key or, for a token bound to none, by
/// a --builder-key; auditors (--auditor-key, `precomp audit`) countersign manifests and post
/// verdicts. Once `precomp keys init` has issued DATA/trust/trust.doc, it is verified (against
/// --trust-root when given) and followed on every upload, without a restart: its builder and
/// auditor keys count too, by role, and the keys it revokes or that expired never count.
///
/// Each setting comes from its flag, else its environment variable, else the --config TOML
/// file (same names with `_` for `-`, plus `data`), else the embedded default.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    mirror: MirrorSettings,
    /// Address to listen on [default: 127.0.0.1:4000]. Port 0 picks a free port.
    #[arg(long, env = "PRECOMP_LISTEN")]
    listen: Option<SocketAddr>,
    /// MiB of hot objects kept in memory [default: 256].
    #[arg(long, env = "PRECOMP_MEMORY_CACHE_MB")]
    memory_cache_mb: Option<u64>,
    /// Public key (SPKI PEM, as `precomp keys generate` writes NAME.pub) of a builder whose
    /// signed manifests tokens bound to no key may publish. Repeat for several; in the
    /// environment, separate them with commas. Replaces `builder_keys` of the config file.
    #[arg(
        long = "builder-key",
        value_name = "FILE",
        env = "PRECOMP_BUILDER_KEYS",
        value_delimiter = ','
    )]
    builder_keys: Vec<PathBuf>,
    /// Public key of an auditor (`precomp audit --key`): its countersignatures are listed as
    /// `auditors` in the index and it may post verdicts (a mismatch flags the build). Repeat
    /// for several; in the environment, separate them with commas.
    #[arg(
        long = "auditor-key",
        value_name = "FILE",
        env = "PRECOMP_AUDITOR_KEYS",
        value_delimiter = ','
    )]
    auditor_keys: Vec<PathBuf>,
    /// Root public key (SPKI PEM, the root's NAME.pub) the trust document in DATA/trust must be
    /// signed by, directly or through the root rotations in DATA/trust/history. Without it the
    /// document is checked against the root keys it lists itself. With it, uploads are refused
    /// while there is no trust document.
    #[arg(long = "trust-root", value_name = "FILE", env = "PRECOMP_TRUST_ROOT")]
    trust_root: Option<PathBuf>,
}

pub fn run(context: &Context, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (config, artifacts_config) = resolve(context, args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mirror = Mirror::open(config.clone())?;
        let artifacts = Artifacts::open(artifacts_config).context("opening the artifact store")?;
        // /metrics: the stored audit verdicts and the reproducibility rate.
        let verdicts = artifacts.clone();
        mirror.metrics().set_verdict_source(move || {
            verdicts
                .store()
                .verdict_counts()
                .map_err(|e| tracing::warn!("counting audit verdicts: {e}"))
                .ok()
        });
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let address = listener.local_addr()?;
        // Scripts and tests read this line to learn the port.
        println!("precomp mirror listening on http://{address}");
        tracing::info!(%address, upstream = %config.upstream, "mirror listening");
        mirror::serve_with_artifacts(mirror, Some(artifacts), listener, shutdown_signal()).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn resolve(context: &Context, args: ServeArgs) -> anyhow::Result<(MirrorConfig, ArtifactsConfig)> {
    let (mut config, file) = args.mirror.resolve(context)?;
    // As MirrorSettings::resolve finds it: the flag or environment, else the file's `data`.
    let data = context
        .data_flag
        .clone()
        .or_else(|| file.data.clone())
        .unwrap_or_else(|| PathBuf::from(Context::DEFAULT_DATA));
    // A list from the flag or the environment replaces the file's.
    let builder_keys = load_keys(
        "builder",
        &if args.builder_keys.is_empty() {
            file.builder_keys.clone().unwrap_or_default()
        } else {
            args.builder_keys
        },
    )?;
    let auditor_keys = load_keys(
        "auditor",
        &if args.auditor_keys.is_empty() {
            file.auditor_keys.clone().unwrap_or_default()
        } else {
            args.auditor_keys
        },
    )?;
    let trust_root = match args.trust_root.or_else(|| file.trust_root.clone()) {
        Some(path) => Some(load_key("trust root", &path)?),
        None => None,
    };
    if let Some(listen) = args.listen.or(file.listen) {
        config.listen = listen;
    }
    if let Some(mib) = args.memory_cache_mb.or(file.memory_cache_mb) {
        config.memory_cache_bytes = mib.saturating_mul(1024 * 1024);
    }
    let artifacts = ArtifactsConfig {
        data: data.join("artifacts"),
        builder_keys,
        auditor_keys,
        trust_root,
    };
    Ok((config, artifacts))
}

/// The public keys in `paths`, each an ed25519 SPKI PEM file (`what`: for errors).
fn load_keys(what: &str, paths: &[PathBuf]) -> anyhow::Result<Vec<ArtifactPublicKey>> {
    paths.iter().map(|path| load_key(what, path)).collect()
}

fn load_key(what: &str, path: &Path) -> anyhow::Result<ArtifactPublicKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} key {}", path.display()))?;
    ArtifactPublicKey::from_pem(&pem).with_context(|| {
        format!(
            "loading the {what} key {} (an ed25519 public key, as `precomp keys generate` writes \
             NAME.pub)",
            path.display()
        )
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
}
