//! Prometheus metrics for `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// Which listener a connection came in on: `main` (the mirror and the API) or `admin`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabel {
    pub listener: &'static str,
}

/// Why the server refused or closed something (connections, requests).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictResult {
    /// `match` or `mismatch`.
    pub result: &'static str,
}

/// Reads the stored audit verdicts, `(matches, mismatches)`, when `/metrics` is rendered.
type VerdictSource = Box<dyn Fn() -> Option<(u64, u64)> + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    /// Stored audit verdicts (the latest per build and auditor), by result.
    pub audit_verdicts: Family<VerdictResult, Gauge>,
    /// matches / (matches + mismatches) of the stored verdicts; NaN before the first one.
    pub reproducibility: Gauge<f64, std::sync::atomic::AtomicU64>,
    verdict_source: std::sync::OnceLock<VerdictSource>,
    pub requests: Family<RouteStatus, Counter>,
    pub cache: Family<CacheResult, Counter>,
    pub upstream_requests: Family<RouteLabel, Counter>,
    pub upstream_errors: Family<RouteLabel, Counter>,
    pub verification_failures: Family<RouteLabel, Counter>,
    pub bytes_served: Family<RouteLabel, Counter>,
    /// Connections open now, by listener.
    pub connections: Family<ConnectionLabel, Gauge>,
    /// Connections accepted, by listener.
    pub connections_accepted: Family<ConnectionLabel, Counter>,
    /// Connections closed at once on arrival: `total` or `per_client` limit reached.
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Connections the server closed: `idle` (nothing moved for the idle timeout),
    /// `no_request` (no request within the header read timeout of connecting), `proxy_header`
    /// (no valid PROXY protocol header).
    pub connections_closed: Family<ReasonLabel, Counter>,
    /// Requests refused or cut off by a server limit: `concurrency`, `body_memory`,
    /// `request_timeout`, `body_stalled`, `body_too_slow`.
    pub requests_limited: Family<ReasonLabel, Counter>,
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
            connections: Family::default(),
            connections_accepted: Family::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            requests_limited: Family::default(),
            audit_verdicts: Family::default(),
            reproducibility: Gauge::default(),
            verdict_source: std::sync::OnceLock::new(),
            registry: Registry::default(),
        };
        metrics.reproducibility.set(f64::NAN);
        registry.register(
            "audit_verdicts",
            "Audit verdicts stored (the latest per build and auditor), by result (match, mismatch)",
            metrics.audit_verdicts.clone(),
        );
        registry.register(
            "reproducibility_ratio",
            "Share of the stored audit verdicts that found the rebuilt artifact identical",
            metrics.reproducibility.clone(),
        );
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
        registry.register(
            "connections",
            "HTTP connections open now, by listener (main, admin)",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "HTTP connections accepted, by listener (main, admin)",
            metrics.connections_accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed on arrival because a limit was reached (total, per_client)",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections the server closed (idle, no_request, proxy_header)",
            metrics.connections_closed.clone(),
        );
        registry.register(
            "requests_limited",
            "Requests refused or cut off by a server limit (concurrency, body_memory, \
             request_timeout, body_stalled, body_too_slow)",
            metrics.requests_limited.clone(),
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
        if let Some((matches, mismatches)) = self.verdict_source.get().and_then(|source| source()) {
            self.set_audit_verdicts(matches, mismatches);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Where [`Metrics::render`] reads the audit verdicts from (the artifact store's verdict
    /// table; `precomp serve` sets it). Set once; later calls are ignored.
    pub fn set_verdict_source(
        &self,
        source: impl Fn() -> Option<(u64, u64)> + Send + Sync + 'static,
    ) {
        let _ = self.verdict_source.set(Box::new(source));
    }

    /// Sets the verdict gauges and the reproducibility ratio from the stored counts.
    pub fn set_audit_verdicts(&self, matches: u64, mismatches: u64) {
        for (result, count) in [("match", matches), ("mismatch", mismatches)] {
            self.audit_verdicts
                .get_or_create(&VerdictResult { result })
                .set(count as i64);
        }
        let total = matches + mismatches;
        self.reproducibility.set(if total == 0 {
            f64::NAN
        } else {
            matches as f64 / total as f64
        });
    }

    /// Counts a request answered on `route` with `status`.
    pub fn request(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&RouteStatus { route, status })
            .inc();
    }

    /// Counts body bytes served on `route`.
    pub fn served(&self, route: &'static str, bytes: u64) {
        self.bytes_served
            .get_or_create(&RouteLabel { route })
            .inc_by(bytes);
    }

    /// Counts a request a server limit refused or cut off.
    pub fn limited(&self, reason: &'static str) {
        self.requests_limited
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn cache(&self, route: &'static str, result: &'static str) {
        self.cache
            .get_or_create(&CacheResult { route, result })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reproducibility_ratio_follows_the_stored_verdicts() {
        let metrics = Metrics::default();
        let before = metrics.render();
        assert!(
            before.contains("precomp_mirror_reproducibility_ratio NaN"),
            "{before}"
        );
        let counts = std::sync::Arc::new(std::sync::Mutex::new((3u64, 1u64)));
        let source = counts.clone();
        metrics.set_verdict_source(move || Some(*source.lock().unwrap()));
        let text = metrics.render();
        assert!(
            text.contains("precomp_mirror_audit_verdicts{result=\"match\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("precomp_mirror_audit_verdicts{result=\"mismatch\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("precomp_mirror_reproducibility_ratio 0.75"),
            "{text}"
        );
        *counts.lock().unwrap() = (4, 0);
        assert!(metrics
            .render()
            .contains("precomp_mirror_reproducibility_ratio 1.0"));
    }
}
