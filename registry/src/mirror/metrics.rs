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
