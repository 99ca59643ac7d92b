//! The one HTTP server of precomp: the Hex mirror's routes and the precompiled artifact API
//! (`/precomp/v1/`) on one axum [`Router`](axum::Router), behind the limits that keep it
//! serving when clients misbehave.
//!
//! - [`routes`]: one module per endpoint (or small group of endpoints); each turns a request
//!   into a call on the domain (`precomp_registry::mirror::Mirror`,
//!   `precomp_artifacts::Artifacts`) and its answer into a response.
//! - [`respond`]: how answers look on the wire (text errors, JSON, stored bodies with ETags),
//!   and the one place domain errors become HTTP statuses.
//! - [`layers`]: what every request passes through: slashes normalised, the concurrency limit,
//!   the per-request timeout, request bodies guarded against stalls and slow senders and
//!   bounded in memory, the client's address (trusted proxies), metrics, tracing, panics
//!   caught.
//! - [`listener`]: accepting connections: limits in total and per client address, HTTP/1.1
//!   and HTTP/2 (h2c, prior knowledge) on one port, header read, first-request and idle
//!   timeouts, the PROXY protocol, graceful shutdown; and the optional admin listener that
//!   answers `/healthz` and `/metrics` outside those limits.
//!
//! Every limit is a field of [`ServerConfig`]; `docs/mirror.md` lists them with their
//! defaults and settings.

pub mod access;
pub mod layers;
pub mod listener;
pub mod respond;
pub mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use precomp_artifacts::Artifacts;
use precomp_registry::mirror::Mirror;
use tokio::net::TcpListener;

/// The limits and timeouts of the server. [`ServerConfig::default`] holds the documented
/// defaults.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// A connection must send a complete request header within this long: from when it
    /// connects, and (HTTP/1.1) from when it starts waiting for each next request.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress that moves no byte for this long is closed.
    pub idle_timeout: Duration,
    /// A request body that delivers nothing for this long is cut off (408).
    pub body_read_timeout: Duration,
    /// Once a body has been read for `body_read_timeout`, it must have come at this many bytes
    /// per second on average, or it is cut off (408). 0: no minimum.
    pub body_min_rate: u64,
    /// A request whose handler has not answered within this long gets 503.
    pub request_timeout: Duration,
    /// Requests being handled at once; more get 503 at once.
    pub max_requests: usize,
    /// Bytes of request bodies held in memory at once (JSON reports, manifests); a body that
    /// would go over gets 429. Artifact uploads stream to disk and do not count.
    pub max_body_memory: u64,
    /// Open connections in total on the main listener; more are closed on arrival.
    pub max_connections: usize,
    /// Open connections per client address on the main listener.
    pub max_connections_per_client: usize,
    /// Proxies whose `X-Forwarded-For` is believed, and whose own connections are not
    /// counted per client (a load balancer holds many).
    pub trusted_proxies: Vec<IpNet>,
    /// Every connection on the main listener starts with a PROXY protocol header (v1 or v2),
    /// whose source address is the client's.
    pub proxy_protocol: bool,
    /// HTTP/2: streams one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 and HTTP/1.1: bytes of request header a client may send.
    pub max_header_bytes: u32,
    /// How long requests in flight may take to finish once shutdown begins.
    pub shutdown_grace: Duration,
    /// Reads (the Hex routes, the artifact API's public reads) and miss reports need a token
    /// (any scope: [`access`]).
    pub require_read_token: bool,
    /// Miss reports a client address may send per minute; more get 429.
    pub miss_reports_per_client: u32,
    /// Miss reports taken per minute from everyone together; more get 429.
    pub miss_reports_total: u32,
    /// Registry records (`/packages/NAME`) one miss report may make the mirror fetch
    /// upstream to check its lock against; a lock needing more is refused (422).
    pub miss_record_fetches: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_read_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            body_min_rate: 1024,
            request_timeout: Duration::from_secs(300),
            max_requests: 1024,
            max_body_memory: 64 * 1024 * 1024,
            max_connections: 16384,
            max_connections_per_client: 4096,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            h2_max_concurrent_streams: 128,
            max_header_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
            require_read_token: false,
            miss_reports_per_client: 120,
            miss_reports_total: 1200,
            miss_record_fetches: 32,
        }
    }
}

/// What the handlers work on: the Hex mirror and the artifact service.
#[derive(Clone)]
pub struct AppState {
    pub mirror: Arc<Mirror>,
    pub artifacts: Arc<Artifacts>,
    /// Who may read, and the bounds on miss reports: set from the [`ServerConfig`] when the
    /// server starts ([`serve`]).
    pub policy: Arc<access::Policy>,
}

impl AppState {
    pub fn new(mirror: Arc<Mirror>, artifacts: Arc<Artifacts>) -> AppState {
        AppState {
            mirror,
            artifacts,
            policy: Arc::new(access::Policy::default()),
        }
    }
}

/// The listeners the server answers on.
pub struct Listeners {
    /// The mirror, the artifact API, `/healthz` and `/metrics`, behind every limit.
    pub main: TcpListener,
    /// `/healthz` and `/metrics` only, outside the main listener's connection and request
    /// limits, so they still answer when those are reached.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the main listener and, if given, the admin listener.
    pub async fn bind(main: SocketAddr, admin: Option<SocketAddr>) -> std::io::Result<Listeners> {
        let main = TcpListener::bind(main).await?;
        let admin = match admin {
            Some(address) => Some(TcpListener::bind(address).await?),
            None => None,
        };
        Ok(Listeners { main, admin })
    }
}

/// Serves until `shutdown` resolves, then stops accepting, lets requests in flight finish (up
/// to `shutdown_grace`), and returns.
pub async fn serve(
    state: AppState,
    config: ServerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let state = AppState {
        policy: Arc::new(access::Policy::new(&config)),
        ..state
    };
    listener::run(state, Arc::new(config), listeners, shutdown).await
}
