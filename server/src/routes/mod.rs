//! The routes: one module per endpoint or small group of endpoints.
//!
//! | module | paths |
//! |---|---|
//! | [`hex`] | `/names`, `/versions`, `/packages/NAME`, `/tarballs/…`, `/docs/…`, `/installs/…`, `/public_key`: the router's fallback, so every path no other route takes (unknown ones 404, or the API's 404 under `/precomp/v1/`) |
//! | [`health`] | `/healthz` |
//! | [`metrics`] | `/metrics` |
//! | [`artifacts`] | `/precomp/v1/artifacts/SHA256` |
//! | [`manifests`] | `/precomp/v1/manifests/KEY`, `/precomp/v1/manifests/KEY/history` |
//! | [`index`] | `/precomp/v1/index`, `/precomp/v1/index/PACKAGE` |
//! | [`failures`] | `/precomp/v1/failures`, `/precomp/v1/failures/PACKAGE` |
//! | [`misses`] | `/precomp/v1/misses` |
//! | [`verdicts`] | `/precomp/v1/verdicts/KEY` |
//! | [`trust`] | `/precomp/v1/trust`, `/precomp/v1/trust/VERSION` |
//! | [`jobs`] | `/precomp/v1/jobs/lease`, `/precomp/v1/jobs/ID/heartbeat`, `…/release` |
//!
//! Paths reach the router with repeated and trailing slashes removed ([`crate::layers`]).
//! Every route checks its own method, so an unknown path is 404 whatever the method, and a
//! known one answers 405 with `Allow`.

pub mod api;
pub mod artifacts;
pub mod failures;
pub mod health;
pub mod hex;
pub mod index;
pub mod jobs;
pub mod manifests;
pub mod metrics;
pub mod misses;
pub mod trust;
pub mod verdicts;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use http::header::{HeaderValue, ALLOW};
use http::{Method, StatusCode};

use crate::respond::{labelled, text};
use crate::AppState;

/// `Cache-Control` of an artifact: content-addressed, so cached forever.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of a manifest: it gains signatures when auditors countersign it.
pub const MANIFEST_CACHE: &str = "public, max-age=60";
/// `Cache-Control` of the index and failure lists: revalidated on every use (ETag).
pub const REVALIDATE: &str = "no-cache";

/// The main listener's routes: the Hex mirror, the artifact API, health and metrics.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", any(health::healthz))
        .route("/metrics", any(metrics::metrics))
        .route("/precomp/v1/artifacts/{sha256}", any(artifacts::artifact))
        .route("/precomp/v1/manifests/{key}", any(manifests::manifest))
        .route(
            "/precomp/v1/manifests/{key}/history",
            any(manifests::history),
        )
        .route("/precomp/v1/index", any(index::packages))
        .route("/precomp/v1/index/{package}", any(index::index))
        .route("/precomp/v1/failures", any(failures::report))
        .route("/precomp/v1/failures/{package}", any(failures::list))
        .route("/precomp/v1/misses", any(misses::misses))
        .route("/precomp/v1/verdicts/{key}", any(verdicts::verdicts))
        .route("/precomp/v1/trust", any(trust::current))
        .route("/precomp/v1/trust/{version}", any(trust::version))
        .route("/precomp/v1/jobs", any(jobs::listing))
        .route("/precomp/v1/jobs/lease", any(jobs::lease))
        .route("/precomp/v1/jobs/{job}/heartbeat", any(jobs::heartbeat))
        .route("/precomp/v1/jobs/{job}/release", any(jobs::release))
        // Every route's requirement, checked before its handler: `crate::access` (the Hex
        // repository, the fallback, checks its own with `access::check`).
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::access::authorize,
        ))
        .fallback_service(hex::HexRepository(state.clone()))
        .with_state(state)
}

/// The admin listener's routes: health and metrics only.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", any(health::healthz))
        .route("/metrics", any(metrics::metrics))
        .fallback(|request: Request| async move {
            let head = request.method() == Method::HEAD;
            labelled(
                "unknown",
                text(
                    StatusCode::NOT_FOUND,
                    "not found: the admin listener answers /healthz and /metrics",
                    head,
                ),
            )
        })
        .with_state(state)
}

/// A path parameter, or why it could not be taken (percent-escapes that are not UTF-8): a
/// route answers 404 then, as for any path it does not know.
pub type Param = Result<Path<String>, PathRejection>;

/// The parameter's text, if it has one.
pub fn param(param: Param) -> Option<String> {
    param.ok().map(|Path(text)| text)
}

/// GET or HEAD.
pub fn read_method(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// `405 Method Not Allowed` naming the methods `allow`ed, labelled `route`.
pub fn method_not_allowed(
    route: &'static str,
    method: &Method,
    allow: &'static str,
    head: bool,
) -> Response {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{method} is not allowed here; allowed: {allow}"),
        head,
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    labelled(route, response)
}
