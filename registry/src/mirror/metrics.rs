//! Prometheus metrics for `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheResult {
    pub route: &'static str,
    /// `hit` (served from the store), `miss` (fetched and stored), `revalidated` (upstream
    /// said unchanged) or `stale` (upstream failed; the stored copy was served).
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub cache: Family<CacheResult, Counter>,
    pub upstream_requests: Family<RouteLabel, Counter>,
    pub upstream_errors: Family<RouteLabel, Counter>,
    pub verification_failures: Family<RouteLabel, Counter>,
    pub bytes_served: Family<RouteLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("precomp_mirror");
        let metrics = Metrics {
            requests: Family::default(),
            cache: Family::default(),
            upstream_requests: Family::default(),
            upstream_errors: Family::default(),
            verification_failures: Family::default(),
            bytes_served: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "cache",
            "Object lookups by route and result (hit, miss, revalidated, stale)",
            metrics.cache.clone(),
        );
        registry.register(
            "upstream_requests",
            "Requests sent upstream, by route",
            metrics.upstream_requests.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream requests that failed or timed out, by route",
            metrics.upstream_errors.clone(),
        );
        registry.register(
            "verification_failures",
            "Upstream objects refused because a signature, origin or checksum check failed",
            metrics.verification_failures.clone(),
        );
        registry.register(
            "served_bytes",
            "Body bytes served, by route",
            metrics.bytes_served.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn cache(&self, route: &'static str, result: &'static str) {
        self.cache
            .get_or_create(&CacheResult { route, result })
            .inc();
    }
}
