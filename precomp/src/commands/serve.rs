//! `precomp serve`: the pull-through Hex mirror.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use precomp_artifacts::{Artifacts, ArtifactsConfig, MissPolicy};
use precomp_proto::manifest::ArtifactPublicKey;
use precomp_registry::mirror::{Mirror, MirrorConfig};
use precomp_server::{AppState, Listeners, ServerConfig};

use super::mirror::{FileConfig, MirrorSettings};
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
/// HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on one port. Misbehaving clients are bounded
/// by the limits and timeouts below (docs/mirror.md, "Limits"); --admin-listen answers
/// /healthz and /metrics on a port of its own, outside those limits.
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
    /// Config variants a release may get per tuple (OTP major, Elixir, Mix env): distinct sets
    /// of compile-time values that consumers' misses ask builders to build, within the
    /// retention; a miss asking for one more is refused (422) [default: 8].
    #[arg(long, value_name = "N", env = "PRECOMP_MAX_CONFIG_VARIANTS")]
    max_config_variants: Option<u32>,
    /// Days the compile-time values a miss carries are kept after its last report; then they
    /// are erased and an open miss is closed [default: 30].
    #[arg(long, value_name = "DAYS", env = "PRECOMP_MISS_RETENTION_DAYS")]
    miss_retention_days: Option<u32>,
    /// Misses open at once; a report that would open another is refused (429) while reports
    /// of open misses still count [default: 10000].
    #[arg(long, value_name = "N", env = "PRECOMP_MAX_OPEN_MISSES")]
    max_open_misses: Option<u64>,
    /// Miss reports one client address may send per minute; more get 429 [default: 120].
    #[arg(long, value_name = "N", env = "PRECOMP_MISS_REPORTS_PER_CLIENT")]
    miss_reports_per_client: Option<u32>,
    /// Miss reports taken per minute from everyone together; more get 429 [default: 1200].
    #[arg(long, value_name = "N", env = "PRECOMP_MISS_REPORTS_TOTAL")]
    miss_reports_total: Option<u32>,
    /// Registry records (/packages/NAME) the mirror does not hold that one miss report may
    /// make it fetch upstream to check the report's lock against [default: 32].
    #[arg(long, value_name = "N", env = "PRECOMP_MISS_RECORD_FETCHES")]
    miss_record_fetches: Option<usize>,
    /// Reads need a token (any scope): the Hex routes, the artifact API's reads and miss
    /// reports. Mix sends it as the hexpm repository's auth key, rebar3 as `repo_key`,
    /// `precomp fetch` with --token (docs/mirror.md, "Tokens and scopes") [default: off].
    #[arg(long, env = "PRECOMP_REQUIRE_READ_TOKEN")]
    require_read_token: bool,
    /// Address of a second listener that answers only /healthz and /metrics, outside the main
    /// listener's connection and request limits [default: none].
    #[arg(long, env = "PRECOMP_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Seconds a client has to send a complete request header, from connecting and (HTTP/1.1)
    /// from when the connection waits for its next request [default: 15].
    #[arg(long, value_name = "SECS", env = "PRECOMP_HEADER_READ_TIMEOUT")]
    header_read_timeout: Option<u64>,
    /// Seconds a connection with no request in progress may move no byte before it is closed
    /// [default: 60].
    #[arg(long, value_name = "SECS", env = "PRECOMP_IDLE_TIMEOUT")]
    idle_timeout: Option<u64>,
    /// Seconds a request body may deliver nothing before it is cut off (408) [default: 30].
    #[arg(long, value_name = "SECS", env = "PRECOMP_BODY_READ_TIMEOUT")]
    body_read_timeout: Option<u64>,
    /// Bytes per second a request body must average once it has been read for
    /// --body-read-timeout, or it is cut off (408); 0 for no minimum [default: 1024].
    #[arg(long, value_name = "BYTES", env = "PRECOMP_BODY_MIN_RATE")]
    body_min_rate: Option<u64>,
    /// Seconds a request may take to be answered before it gets 503 [default: 300].
    #[arg(long, value_name = "SECS", env = "PRECOMP_REQUEST_TIMEOUT")]
    request_timeout: Option<u64>,
    /// Requests handled at once; more get 503 [default: 1024].
    #[arg(long, value_name = "N", env = "PRECOMP_MAX_REQUESTS")]
    max_requests: Option<usize>,
    /// MiB of request bodies held in memory at once (reports, manifests; uploads of
    /// artifacts stream to disk); a body over it gets 429 [default: 64].
    #[arg(long, value_name = "MIB", env = "PRECOMP_MAX_BODY_MEMORY_MB")]
    max_body_memory_mb: Option<u64>,
    /// Open connections in total; more are answered 503 and closed. Kept under the open file
    /// limit [default: 16384].
    #[arg(long, value_name = "N", env = "PRECOMP_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Open connections per client address (a trusted proxy's are not counted)
    /// [default: 4096].
    #[arg(long, value_name = "N", env = "PRECOMP_MAX_CONNECTIONS_PER_CLIENT")]
    max_connections_per_client: Option<usize>,
    /// Address or CIDR of a proxy (load balancer) whose X-Forwarded-For names the client.
    /// Repeat for several; in the environment, separate them with commas [default: none].
    #[arg(
        long = "trusted-proxy",
        value_name = "CIDR",
        env = "PRECOMP_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<String>,
    /// Every connection starts with a PROXY protocol (v1 or v2) header from a load balancer,
    /// naming the client [default: off].
    #[arg(long, env = "PRECOMP_PROXY_PROTOCOL")]
    proxy_protocol: bool,
}

pub fn run(context: &Context, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (config, artifacts_config, server, admin_listen) = resolve(context, args)?;
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
        let listeners = Listeners::bind(config.listen, admin_listen)
            .await
            .with_context(|| match admin_listen {
                Some(admin) => format!("listening on {} and {admin}", config.listen),
                None => format!("listening on {}", config.listen),
            })?;
        let address = listeners.main.local_addr()?;
        // Scripts and tests read this line to learn the port.
        println!("precomp mirror listening on http://{address}");
        if let Some(admin) = &listeners.admin {
            // ... and this one, the admin port.
            println!("precomp admin listening on http://{}", admin.local_addr()?);
        }
        tracing::info!(%address, upstream = %config.upstream, "mirror listening");
        let state = AppState::new(mirror, artifacts);
        precomp_server::serve(state, server, listeners, shutdown_signal()).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

type Resolved = (
    MirrorConfig,
    ArtifactsConfig,
    ServerConfig,
    Option<SocketAddr>,
);

fn resolve(context: &Context, args: ServeArgs) -> anyhow::Result<Resolved> {
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
    let mut misses = MissPolicy::default();
    if let Some(max) = args.max_config_variants.or(file.max_config_variants) {
        misses.max_config_variants = max;
    }
    if let Some(days) = args.miss_retention_days.or(file.miss_retention_days) {
        if days == 0 {
            anyhow::bail!(
                "--miss-retention-days must be at least 1: builders need the values a miss \
                 carries to build it"
            );
        }
        misses.retention_seconds = i64::from(days) * 86_400;
    }
    if let Some(max) = args.max_open_misses.or(file.max_open_misses) {
        anyhow::ensure!(max > 0, "max_open_misses must be at least 1");
        misses.max_open = max;
    }
    let artifacts = ArtifactsConfig {
        data: data.join("artifacts"),
        builder_keys,
        auditor_keys,
        trust_root,
        misses,
    };
    let server = server_config(
        &file,
        ServerFlags {
            header_read_timeout: args.header_read_timeout,
            idle_timeout: args.idle_timeout,
            body_read_timeout: args.body_read_timeout,
            body_min_rate: args.body_min_rate,
            request_timeout: args.request_timeout,
            max_requests: args.max_requests,
            max_body_memory_mb: args.max_body_memory_mb,
            max_connections: args.max_connections,
            max_connections_per_client: args.max_connections_per_client,
            trusted_proxies: args.trusted_proxies,
            proxy_protocol: args.proxy_protocol,
            miss_reports_per_client: args.miss_reports_per_client,
            miss_reports_total: args.miss_reports_total,
            miss_record_fetches: args.miss_record_fetches,
            require_read_token: args.require_read_token,
        },
    )?;
    let admin_listen = args.admin_listen.or(file.admin_listen);
    Ok((config, artifacts, server, admin_listen))
}

/// The server's limits as the flags (or environment) give them; the file's where not.
struct ServerFlags {
    header_read_timeout: Option<u64>,
    idle_timeout: Option<u64>,
    body_read_timeout: Option<u64>,
    body_min_rate: Option<u64>,
    request_timeout: Option<u64>,
    max_requests: Option<usize>,
    max_body_memory_mb: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    trusted_proxies: Vec<String>,
    proxy_protocol: bool,
    miss_reports_per_client: Option<u32>,
    miss_reports_total: Option<u32>,
    miss_record_fetches: Option<usize>,
    require_read_token: bool,
}

/// The server's limits: each from its flag or environment variable, else the file, else the
/// default. Timeouts and limits must be at least 1.
fn server_config(file: &FileConfig, flags: ServerFlags) -> anyhow::Result<ServerConfig> {
    let mut config = ServerConfig::default();
    let seconds = |name: &str, value: Option<u64>, into: &mut Duration| -> anyhow::Result<()> {
        if let Some(value) = value {
            anyhow::ensure!(value > 0, "{name} must be at least 1 second");
            *into = Duration::from_secs(value);
        }
        Ok(())
    };
    seconds(
        "header_read_timeout",
        flags.header_read_timeout.or(file.header_read_timeout),
        &mut config.header_read_timeout,
    )?;
    seconds(
        "idle_timeout",
        flags.idle_timeout.or(file.idle_timeout),
        &mut config.idle_timeout,
    )?;
    seconds(
        "body_read_timeout",
        flags.body_read_timeout.or(file.body_read_timeout),
        &mut config.body_read_timeout,
    )?;
    seconds(
        "request_timeout",
        flags.request_timeout.or(file.request_timeout),
        &mut config.request_timeout,
    )?;
    if let Some(rate) = flags.body_min_rate.or(file.body_min_rate) {
        config.body_min_rate = rate;
    }
    let count = |name: &str, value: Option<usize>, into: &mut usize| -> anyhow::Result<()> {
        if let Some(value) = value {
            anyhow::ensure!(value > 0, "{name} must be at least 1");
            *into = value;
        }
        Ok(())
    };
    count(
        "max_requests",
        flags.max_requests.or(file.max_requests),
        &mut config.max_requests,
    )?;
    count(
        "max_connections",
        flags.max_connections.or(file.max_connections),
        &mut config.max_connections,
    )?;
    count(
        "max_connections_per_client",
        flags
            .max_connections_per_client
            .or(file.max_connections_per_client),
        &mut config.max_connections_per_client,
    )?;
    if let Some(mib) = flags.max_body_memory_mb.or(file.max_body_memory_mb) {
        anyhow::ensure!(mib > 0, "max_body_memory_mb must be at least 1");
        config.max_body_memory = mib.saturating_mul(1024 * 1024);
    }
    // A list from the flag or the environment replaces the file's.
    let proxies = if flags.trusted_proxies.is_empty() {
        file.trusted_proxies.clone().unwrap_or_default()
    } else {
        flags.trusted_proxies
    };
    config.trusted_proxies = proxies
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .with_context(|| {
                    format!("trusted proxy {text:?} is neither an IP address nor a CIDR range")
                })
        })
        .collect::<anyhow::Result<_>>()?;
    config.proxy_protocol = flags.proxy_protocol || file.proxy_protocol.unwrap_or(false);
    config.require_read_token =
        flags.require_read_token || file.require_read_token.unwrap_or(false);
    let rate = |name: &str, value: Option<u32>, into: &mut u32| -> anyhow::Result<()> {
        if let Some(value) = value {
            anyhow::ensure!(value > 0, "{name} must be at least 1");
            *into = value;
        }
        Ok(())
    };
    rate(
        "miss_reports_per_client",
        flags
            .miss_reports_per_client
            .or(file.miss_reports_per_client),
        &mut config.miss_reports_per_client,
    )?;
    rate(
        "miss_reports_total",
        flags.miss_reports_total.or(file.miss_reports_total),
        &mut config.miss_reports_total,
    )?;
    if let Some(fetches) = flags.miss_record_fetches.or(file.miss_record_fetches) {
        config.miss_record_fetches = fetches;
    }
    Ok(config)
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
