//! The pull-through mirror: serves the Hex repository protocol from its store, fetching what
//! it lacks from upstream, verifying it, and storing it before anyone sees it.
//!
//! - Registry files (`/names`, `/versions`, `/packages/NAME`) are verified (signature with the
//!   upstream key, origin) and revalidated upstream with a conditional request once older than
//!   the TTL; when upstream fails, the stored copy is served (stale) and the failure counted.
//! - Tarballs are verified against the outer checksum in the verified `/packages/NAME` and
//!   are immutable once stored. Docs are checked to be well-formed gzip (Hex signs no docs).
//! - Concurrent misses for one object share one upstream request.
//! - What fails verification is never stored; the client gets 502 naming the failed check.

mod metrics;
mod routes;
mod store;
mod upstream;

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use precomp_proto::registry::{self, RepoPublicKey};
use sha2::{Digest, Sha256};

pub use metrics::{ConnectionLabel, Metrics, ReasonLabel, RouteLabel, RouteStatus};
use precomp_proto::time::unix_now as now;
pub use routes::Route;
pub use store::{ObjectMeta, Store, StoreError};
pub use upstream::{Fetched, Upstream, UpstreamError};

/// hex.pm, the default upstream.
pub const HEXPM_URL: &str = "https://repo.hex.pm";

/// Bounds on upstream bodies, by kind (hex_core's tarball limit; generous for the rest).
const MAX_REGISTRY_BYTES: u64 = registry::MAX_COMPRESSED_SIZE;
const MAX_TARBALL_BYTES: u64 = precomp_proto::tarball::MAX_TARBALL_SIZE;
const MAX_DOCS_BYTES: u64 = 64 * 1024 * 1024;
const MAX_DOCS_UNPACKED_BYTES: u64 = 512 * 1024 * 1024;
const MAX_INSTALLS_BYTES: u64 = 64 * 1024 * 1024;

/// Everything the mirror needs to run.
#[derive(Clone, Debug)]
pub struct MirrorConfig {
    pub listen: SocketAddr,
    /// Base URL of the upstream repository.
    pub upstream: String,
    /// The key upstream signs registry files with.
    pub upstream_key: RepoPublicKey,
    /// The repository name upstream's registry files carry (the origin check).
    pub upstream_repository: String,
    /// Directory for the mirror's database and blobs.
    pub data: PathBuf,
    /// How long a registry file is served without asking upstream whether it changed.
    pub registry_ttl: Duration,
    /// Bound on one upstream exchange, body included.
    pub upstream_timeout: Duration,
    /// Bytes of hot object bodies kept in memory.
    pub memory_cache_bytes: u64,
}

impl MirrorConfig {
    /// The embedded defaults: hex.pm upstream with its built-in key, 127.0.0.1:4000.
    pub fn defaults(data: PathBuf) -> MirrorConfig {
        MirrorConfig {
            listen: "127.0.0.1:4000".parse().expect("a valid address"),
            upstream: HEXPM_URL.to_string(),
            upstream_key: RepoPublicKey::hexpm(),
            upstream_repository: registry::HEXPM.to_string(),
            data,
            registry_ttl: Duration::from_secs(300),
            upstream_timeout: Duration::from_secs(30),
            memory_cache_bytes: 256 * 1024 * 1024,
        }
    }
}

/// How a request for an object ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    Found {
        meta: ObjectMeta,
        body: Bytes,
    },
    NotFound,
    /// Upstream failed, sent something that failed verification, or broke the protocol.
    BadGateway(String),
    /// Our own storage failed.
    Internal(String),
}

/// A release's checksums as the verified registry record gives them (raw SHA-256 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseChecksums {
    /// Hex's inner checksum (what `mix.lock`'s fourth element holds).
    pub inner: Vec<u8>,
    /// The whole tarball's checksum (`mix.lock`'s last element); absent in old records.
    pub outer: Option<Vec<u8>>,
}

/// What [`Mirror::release_checksums`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseLookup {
    Found(ReleaseChecksums),
    /// Neither the package nor this version of it is in the registry.
    NotFound,
    /// The store holds no record with the version, and fetching was not allowed.
    NotHeld,
    /// Upstream failed or sent what failed verification, or the store failed.
    Failed(String),
}

type SharedFetch = Shared<BoxFuture<'static, Outcome>>;

pub struct Mirror {
    config: MirrorConfig,
    store: Store,
    upstream: Upstream,
    metrics: Metrics,
    inflight: Mutex<HashMap<String, SharedFetch>>,
    /// `/public_key`: the upstream key as SPKI PEM, with its digest, made once at startup.
    public_key: Outcome,
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream key: {0}")]
    Key(#[from] registry::KeyError),
}

impl Mirror {
    pub fn open(config: MirrorConfig) -> Result<Arc<Mirror>, MirrorError> {
        let store = Store::open(&config.data, config.memory_cache_bytes)?;
        let upstream = Upstream::new(&config.upstream, config.upstream_timeout)?;
        let pem = Bytes::from(config.upstream_key.to_spki_pem()?);
        let public_key = Outcome::Found {
            meta: ObjectMeta {
                sha256: Sha256::digest(&pem).into(),
                size: pem.len() as u64,
                upstream_etag: None,
                checked_at: 0,
            },
            body: pem,
        };
        tracing::info!(
            upstream = %config.upstream,
            data = %config.data.display(),
            objects = store.len(),
            "mirror store opened"
        );
        Ok(Arc::new(Mirror {
            config,
            store,
            upstream,
            metrics: Metrics::default(),
            inflight: Mutex::new(HashMap::new()),
            public_key,
        }))
    }

    pub fn config(&self) -> &MirrorConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The object for `route`, from the store or from upstream. Routes that are not objects
    /// (health, metrics) are `NotFound` here.
    pub async fn object(self: &Arc<Self>, route: &Route) -> Outcome {
        match route {
            Route::Names | Route::Versions | Route::Package(_) => {
                self.registry_file(route, false).await
            }
            Route::Installs(rest) if is_install_index(rest) => {
                self.registry_file(route, false).await
            }
            Route::Tarball { .. } | Route::Docs { .. } | Route::Installs(_) => {
                match self.lookup(&route.object_path()).await {
                    Some(meta) => {
                        self.metrics.cache(route.label(), "hit");
                        self.read(meta).await
                    }
                    None => self.single_flight(route.clone()).await,
                }
            }
            Route::PublicKey => self.public_key.clone(),
            Route::Healthz | Route::Metrics => Outcome::NotFound,
        }
    }

    /// A registry file: served from the store while younger than the TTL, else revalidated
    /// (or, with `force`, always revalidated).
    async fn registry_file(self: &Arc<Self>, route: &Route, force: bool) -> Outcome {
        if !force {
            if let Some(meta) = self.lookup(&route.object_path()).await {
                if now() - meta.checked_at < self.config.registry_ttl.as_secs() as i64 {
                    self.metrics.cache(route.label(), "hit");
                    return self.read(meta).await;
                }
            }
        }
        self.single_flight(route.clone()).await
    }

    /// The object's metadata: from the in-memory index, or on an index miss from SQLite (on a
    /// blocking thread: every 404 is such a miss). A database error counts as a miss.
    async fn lookup(self: &Arc<Self>, path: &str) -> Option<ObjectMeta> {
        if let Some(meta) = self.store.cached(path) {
            return Some(meta);
        }
        self.reload(path).await
    }

    /// The object's row as SQLite has it now (on a blocking thread); errors are logged and
    /// count as absent.
    async fn reload(self: &Arc<Self>, path: &str) -> Option<ObjectMeta> {
        let path = path.to_string();
        self.blocking(move |store| store.reload(&path))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!("{e}");
                None
            })
    }

    /// The stored body: from memory, else read (and checked) from disk on a blocking thread.
    async fn read(self: &Arc<Self>, meta: ObjectMeta) -> Outcome {
        if let Some(body) = self.store.read_cached(&meta) {
            return Outcome::Found { meta, body };
        }
        let digest = meta.clone();
        match self.blocking(move |store| store.read(&digest)).await {
            Ok(body) => Outcome::Found { meta, body },
            Err(e) => {
                tracing::error!("{e}");
                Outcome::Internal(e.to_string())
            }
        }
    }

    /// Runs store work (SQLite, disk) on a blocking thread, off the async workers. A panic
    /// there is an error, not a crash.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let mirror = Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&mirror.store))
            .await
            .unwrap_or_else(|e| Err(StoreError::Task(e.to_string())))
    }

    /// Runs the upstream fetch for `route` once, however many requests wait for it. The fetch
    /// runs as its own task, so it completes (and fills the cache) even if every waiting
    /// client goes away.
    async fn single_flight(self: &Arc<Self>, route: Route) -> Outcome {
        let key = route.object_path();
        let shared = {
            let mut inflight = self.inflight.lock();
            if let Some(shared) = inflight.get(&key) {
                shared.clone()
            } else {
                let mirror = Arc::clone(self);
                let task_key = key.clone();
                let task = tokio::spawn(async move {
                    // Removes the entry however the fetch ends, a panic included, so a failed
                    // fetch never blocks later requests for the same object.
                    let _done = InflightGuard {
                        mirror: Arc::clone(&mirror),
                        key: task_key,
                    };
                    Arc::clone(&mirror).fetch(route).await
                });
                let shared = async move {
                    task.await
                        .unwrap_or_else(|e| Outcome::Internal(format!("fetch task failed: {e}")))
                }
                .boxed()
                .shared();
                inflight.insert(key, shared.clone());
                shared
            }
        };
        shared.await
    }

    /// Boxed because a tarball fetch awaits its package record through `single_flight`,
    /// which spawns `fetch` again: the cycle needs a named, `Send` future type.
    fn fetch(self: Arc<Self>, route: Route) -> BoxFuture<'static, Outcome> {
        async move {
            match &route {
                Route::Tarball { name, version } => self.fetch_tarball(&route, name, version).await,
                _ => self.fetch_object(&route).await,
            }
        }
        .boxed()
    }

    /// Registry files, docs and installs: conditional GET, verify, store.
    async fn fetch_object(self: &Arc<Self>, route: &Route) -> Outcome {
        let path = route.object_path();
        let label = route.label();
        // Re-read: another process sharing the store (a sync) may have refreshed it.
        let existing = self.reload(&path).await;
        let limit = match route {
            Route::Docs { .. } => MAX_DOCS_BYTES,
            Route::Installs(_) => MAX_INSTALLS_BYTES,
            _ => MAX_REGISTRY_BYTES,
        };
        self.metrics
            .upstream_requests
            .get_or_create(&metrics::RouteLabel { route: label })
            .inc();
        let conditional = existing.as_ref().and_then(|m| m.upstream_etag.as_deref());
        let fetched = self
            .upstream
            .get_until(&path, conditional, limit, self.upstream_deadline())
            .await;
        match fetched {
            Ok(upstream::Fetched::Body { bytes, etag }) => {
                if let Err(check) = verify(route, &bytes, &self.config) {
                    self.metrics
                        .verification_failures
                        .get_or_create(&metrics::RouteLabel { route: label })
                        .inc();
                    tracing::error!(path = %route, "refused upstream object: {check}");
                    // A copy that passed verification earlier is still safe to serve.
                    if let Some(meta) = existing {
                        self.metrics.cache(label, "stale");
                        return self.read(meta).await;
                    }
                    return Outcome::BadGateway(check);
                }
                self.metrics.cache(label, "miss");
                self.put(&path, bytes, etag).await
            }
            Ok(upstream::Fetched::NotModified { etag }) => match existing {
                Some(_) => {
                    self.metrics.cache(label, "revalidated");
                    let touched = path.clone();
                    match self
                        .blocking(move |store| store.touch(&touched, etag, now()))
                        .await
                    {
                        Ok(Some(meta)) => self.read(meta).await,
                        Ok(None) => Outcome::Internal(format!("{route} vanished from the store")),
                        Err(e) => Outcome::Internal(e.to_string()),
                    }
                }
                None => Outcome::BadGateway(format!(
                    "upstream answered 304 Not Modified to an unconditional request for {route}"
                )),
            },
            Ok(upstream::Fetched::NotFound) => Outcome::NotFound,
            Err(e) => self.upstream_failed(route, existing, e).await,
        }
    }

    /// The checksums the verified `/packages/NAME` record gives `name` `version`, for checking
    /// what a client claims about a release (a miss's lock). A record the store holds is used
    /// whatever its age (a release's checksums never change); one it does not hold, or that
    /// lacks the version, is fetched through the normal pull-through path when `fetch` allows
    /// it ([`ReleaseLookup::NotHeld`] otherwise). The caller bounds the time it waits.
    pub async fn release_checksums(
        self: &Arc<Self>,
        name: &str,
        version: &str,
        fetch: bool,
    ) -> ReleaseLookup {
        if !routes::valid_name(name) {
            return ReleaseLookup::NotFound;
        }
        let route = Route::Package(name.to_string());
        let decode = |outcome: Outcome| -> Result<Option<ReleaseChecksums>, ReleaseLookup> {
            let body = match outcome {
                Outcome::Found { body, .. } => body,
                Outcome::NotFound => return Err(ReleaseLookup::NotFound),
                Outcome::BadGateway(reason) | Outcome::Internal(reason) => {
                    return Err(ReleaseLookup::Failed(reason))
                }
            };
            let decoded = registry::decode_package(
                &body,
                &self.config.upstream_key,
                &self.config.upstream_repository,
                name,
            )
            .map_err(|e| ReleaseLookup::Failed(format!("stored {route}: {e}")))?;
            Ok(decoded
                .releases
                .into_iter()
                .find(|r| r.version == version)
                .map(|release| ReleaseChecksums {
                    inner: release.inner_checksum,
                    outer: release.outer_checksum,
                }))
        };
        let held = match self.lookup(&route.object_path()).await {
            Some(meta) => match decode(self.read(meta).await) {
                Ok(Some(found)) => return ReleaseLookup::Found(found),
                Ok(None) => true,
                Err(failed) => return failed,
            },
            None => false,
        };
        if !fetch {
            return ReleaseLookup::NotHeld;
        }
        match decode(self.registry_file(&route, held).await) {
            Ok(Some(found)) => ReleaseLookup::Found(found),
            Ok(None) => ReleaseLookup::NotFound,
            Err(failed) => failed,
        }
    }

    /// The deadline of an upstream exchange that starts now.
    fn upstream_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.config.upstream_timeout
    }

    /// Tarballs: the release's outer checksum comes from the verified `/packages/NAME`; the
    /// tarball is stored only if its sha256 equals it.
    ///
    /// The whole request — the package record (revalidated or fetched if need be) and the
    /// tarball — is bounded by one `upstream_timeout`, not one each.
    async fn fetch_tarball(self: &Arc<Self>, route: &Route, name: &str, version: &str) -> Outcome {
        let deadline = self.upstream_deadline();
        let package_route = Route::Package(name.to_string());
        let mut forced = false;
        let expected = loop {
            let record =
                tokio::time::timeout_at(deadline, self.registry_file(&package_route, forced)).await;
            let Ok(record) = record else {
                // The record's fetch goes on and fills the store; this request is out of time.
                let e = UpstreamError::Timeout {
                    url: self.upstream.url(&package_route.object_path()),
                    timeout: self.config.upstream_timeout,
                };
                return self.upstream_failed(route, None, e).await;
            };
            let package = match record {
                Outcome::Found { body, .. } => body,
                Outcome::NotFound => return Outcome::NotFound,
                other => return other,
            };
            // Verified when stored; decoding verifies again, which costs a millisecond on a
            // miss and guards against a store changed behind our back.
            let decoded = match registry::decode_package(
                &package,
                &self.config.upstream_key,
                &self.config.upstream_repository,
                name,
            ) {
                Ok(decoded) => decoded,
                Err(e) => return Outcome::Internal(format!("stored {package_route}: {e}")),
            };
            match decoded.releases.iter().find(|r| r.version == version) {
                Some(release) => match &release.outer_checksum {
                    Some(outer) => break outer.clone(),
                    None => {
                        return Outcome::BadGateway(format!(
                            "{package_route} has no outer checksum for {version}; cannot verify {route}"
                        ))
                    }
                },
                // Perhaps published since the record was cached: ask upstream once.
                None if !forced => forced = true,
                None => return Outcome::NotFound,
            }
        };

        let path = route.object_path();
        self.metrics
            .upstream_requests
            .get_or_create(&metrics::RouteLabel {
                route: route.label(),
            })
            .inc();
        match self
            .upstream
            .get_until(&path, None, MAX_TARBALL_BYTES, deadline)
            .await
        {
            Ok(upstream::Fetched::Body { bytes, etag }) => {
                let actual = Sha256::digest(&bytes);
                if actual.as_slice() != expected.as_slice() {
                    self.metrics
                        .verification_failures
                        .get_or_create(&metrics::RouteLabel {
                            route: route.label(),
                        })
                        .inc();
                    let check = format!(
                        "{route}: checksum check failed: sha256 is {}, {package_route} says {}",
                        hex::encode(actual),
                        hex::encode(&expected)
                    );
                    tracing::error!("refused upstream object: {check}");
                    return Outcome::BadGateway(check);
                }
                self.metrics.cache(route.label(), "miss");
                self.put(&path, bytes, etag).await
            }
            Ok(upstream::Fetched::NotFound) => Outcome::NotFound,
            Ok(upstream::Fetched::NotModified { .. }) => Outcome::BadGateway(format!(
                "upstream answered 304 Not Modified to an unconditional request for {route}"
            )),
            Err(e) => self.upstream_failed(route, None, e).await,
        }
    }

    async fn upstream_failed(
        self: &Arc<Self>,
        route: &Route,
        existing: Option<ObjectMeta>,
        e: UpstreamError,
    ) -> Outcome {
        self.metrics
            .upstream_errors
            .get_or_create(&metrics::RouteLabel {
                route: route.label(),
            })
            .inc();
        match existing {
            Some(meta) => {
                tracing::warn!(path = %route, "upstream failed, serving the stored copy: {e}");
                self.metrics.cache(route.label(), "stale");
                self.read(meta).await
            }
            None => {
                tracing::warn!(path = %route, "upstream failed: {e}");
                Outcome::BadGateway(e.to_string())
            }
        }
    }

    async fn put(self: &Arc<Self>, path: &str, bytes: Bytes, etag: Option<String>) -> Outcome {
        let mirror = Arc::clone(self);
        let path = path.to_string();
        let stored = tokio::task::spawn_blocking(move || {
            let meta = mirror.store.put(&path, &bytes, etag, now())?;
            Ok::<_, StoreError>(Outcome::Found { meta, body: bytes })
        })
        .await;
        match stored {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                tracing::error!("storing failed: {e}");
                Outcome::Internal(e.to_string())
            }
            Err(e) => Outcome::Internal(format!("store task failed: {e}")),
        }
    }
}

struct InflightGuard {
    mirror: Arc<Mirror>,
    key: String,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.mirror.inflight.lock().remove(&self.key);
    }
}

/// `/installs/*.csv` and their `.signed` files change as Hex releases; everything else under
/// `/installs` is a versioned, immutable file.
fn is_install_index(rest: &str) -> bool {
    rest.ends_with(".csv") || rest.ends_with(".csv.signed")
}

/// The checks an upstream body must pass before it is stored. The error names the check.
fn verify(route: &Route, bytes: &[u8], config: &MirrorConfig) -> Result<(), String> {
    let key = &config.upstream_key;
    let repo = &config.upstream_repository;
    let result = match route {
        Route::Names => registry::decode_names(bytes, key, repo).map(drop),
        Route::Versions => registry::decode_versions(bytes, key, repo).map(drop),
        Route::Package(name) => registry::decode_package(bytes, key, repo, name).map(drop),
        Route::Docs { .. } => return check_gzip(route, bytes),
        // Hex's installer indexes are signed with a separate builds key that Mix checks
        // itself; they are passed through verbatim.
        _ => return Ok(()),
    };
    result.map_err(|e| e.to_string())
}

/// Docs tarballs are not signed by Hex; the least we check is that they are complete gzip
/// streams of bounded size.
fn check_gzip(route: &Route, bytes: &[u8]) -> Result<(), String> {
    let mut decoder = flate2::read::GzDecoder::new(bytes).take(MAX_DOCS_UNPACKED_BYTES + 1);
    let mut sink = [0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match decoder.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                total += n as u64;
                if total > MAX_DOCS_UNPACKED_BYTES {
                    return Err(format!(
                        "{route}: size check failed: over {MAX_DOCS_UNPACKED_BYTES} bytes unpacked"
                    ));
                }
            }
            Err(e) => return Err(format!("{route}: gzip check failed: {e}")),
        }
    }
}
