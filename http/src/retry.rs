//! Which failures are tried again, and how long to wait first.
//!
//! A failed attempt is retried only when trying again can help and cannot do harm:
//!
//! | failure | idempotent request | other request |
//! |---|---|---|
//! | no connection (refused, DNS, TLS handshake, connect timeout) | retried | retried: nothing was sent |
//! | 408 Request Timeout, 429 Too Many Requests, 503 Service Unavailable | retried | retried: the server refused before acting |
//! | 500, 502, 504 | retried | not retried: the server may have acted |
//! | a timeout or a body cut short after the request was sent | retried | not retried |
//! | any other status (400, 401, 403, 404, 409, 413, 422, ...) | never | never |
//! | a body over the call's limit, a digest that does not match | never | never |
//!
//! Waits double from [`crate::Settings::backoff`] per attempt, up to
//! [`crate::Settings::max_backoff`], each a random point in its upper half (jitter: clients
//! that failed together do not come back together). A `Retry-After` (seconds or an HTTP
//! date) on a 429 or 503 replaces the computed wait, capped at `max_backoff`. No wait goes
//! past the call's deadline: a retry that could not finish in time is not started.

use std::time::{Duration, SystemTime};

/// Whether a request may be repeated after an ambiguous failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotency {
    /// Doing it twice is doing it once: GET, HEAD, PUT of content-addressed objects, and the
    /// POSTs the API makes safe (docs/protocol.md, "Retries").
    Idempotent,
    /// Repeated only when the server surely did not act on it (no connection, 408, 429,
    /// 503).
    NotIdempotent,
}

/// How an attempt failed, for the retry decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The request was never sent (no connection).
    NotSent,
    /// Sent; no complete answer (a timeout, a connection reset, a body cut short).
    Interrupted,
    /// An answer with this status.
    Status(u16),
    /// Anything else: never retried.
    Final,
}

/// Statuses that say "not now" rather than "no".
pub(crate) fn transient_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Whether a failure is retried for a request of `idempotency`.
pub(crate) fn worth_retrying(failure: Failure, idempotency: Idempotency) -> bool {
    match failure {
        Failure::NotSent => true,
        Failure::Status(408 | 429 | 503) => true,
        Failure::Status(status) => {
            idempotency == Idempotency::Idempotent && transient_status(status)
        }
        Failure::Interrupted => idempotency == Idempotency::Idempotent,
        Failure::Final => false,
    }
}

/// The wait before retry number `attempt` (0 for the first retry): `base` doubled per
/// attempt, capped at `max`, a random point in its upper half.
pub(crate) fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let full = base
        .saturating_mul(2u32.saturating_pow(attempt.min(30)))
        .min(max);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

/// A `Retry-After` value: delay seconds, or an HTTP date (measured from `now`).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_cannot_do_harm_is_retried() {
        use Failure::*;
        use Idempotency::*;
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(worth_retrying(Status(status), Idempotent), "{status}");
        }
        for status in [400, 401, 403, 404, 409, 413, 422, 501] {
            assert!(!worth_retrying(Status(status), Idempotent), "{status}");
            assert!(!worth_retrying(Status(status), NotIdempotent), "{status}");
        }
        assert!(worth_retrying(Status(408), NotIdempotent));
        assert!(worth_retrying(Status(429), NotIdempotent));
        assert!(worth_retrying(Status(503), NotIdempotent));
        assert!(!worth_retrying(Status(502), NotIdempotent));
        assert!(!worth_retrying(Status(500), NotIdempotent));
        assert!(worth_retrying(NotSent, NotIdempotent));
        assert!(worth_retrying(Interrupted, Idempotent));
        assert!(!worth_retrying(Interrupted, NotIdempotent));
        assert!(!worth_retrying(Final, Idempotent));
    }

    #[test]
    fn waits_double_within_bounds_with_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in 0..40 {
            let full = (base * 2u32.pow(attempt.min(10))).min(max);
            let wait = backoff(base, max, attempt);
            assert!(wait >= full / 2 && wait <= full, "{attempt}: {wait:?}");
        }
        let waits: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| backoff(base, max, 3)).collect();
        assert!(waits.len() > 1, "jitter spreads the waits");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }
}
