//! The Hex repository routes of the mirror (`../shared/design/hex-protocol.md` §1): every
//! object served verbatim from the store or upstream, with a strong ETag, never a
//! `Content-Encoding`. GET and HEAD only.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use http::header::{HeaderValue, ALLOW};
use http::request::Parts;
use http::{Method, StatusCode};
use precomp_registry::mirror::{Outcome, Route};

use crate::respond::{content, labelled, mirror_failure, text};
use crate::AppState;

/// The Hex repository: every path the router has no route of its own for. The mirror's
/// hottest path, so a plain `tower::Service` (the router's fallback) that parses the path
/// itself ([`Route::parse`]: validated, percent-decoded, no allocation for plain paths),
/// rather than routes with path parameters and extractors, which cost a third more per
/// request (docs/benchmarks.md, "precomp-server"). Unknown paths under `/precomp/v1/` get the
/// API's 404.
#[derive(Clone)]
pub struct HexRepository(pub AppState);

impl tower::Service<Request> for HexRepository {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let app = self.0.clone();
        Box::pin(async move {
            let path = request.uri().path();
            if path == "/precomp/v1" || path.starts_with("/precomp/v1/") {
                return Ok(super::api::unknown(request.method() == Method::HEAD));
            }
            let route = Route::parse(path);
            let request =
                match crate::access::check(&app, crate::access::HEX_REPOSITORY, request).await {
                    Ok(request) => request,
                    Err(refused) => return Ok(refused),
                };
            Ok(object(&app, route, request).await)
        })
    }
}

/// `405` for the mirror's paths: only GET and HEAD.
pub fn not_allowed(route: &'static str, head: bool) -> Response {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "only GET and HEAD are supported",
        head,
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    labelled(route, response)
}

/// The object of `route` (`None`: the path is not one the mirror serves, 404; a method other
/// than GET and HEAD, 405).
async fn object(app: &AppState, route: Option<Route>, request: Request) -> Response {
    let (parts, _body): (Parts, _) = request.into_parts();
    let (method, headers) = (&parts.method, &parts.headers);
    let head = method == Method::HEAD;
    let label = route.as_ref().map_or("unknown", Route::label);
    if !super::read_method(method) {
        return not_allowed(label, head);
    }
    let Some(route) = route else {
        return labelled(label, text(StatusCode::NOT_FOUND, "not found", head));
    };
    let response = match app.mirror.object(&route).await {
        Outcome::Found { meta, body } => content(
            body,
            &meta.sha256,
            route.cache_control(),
            "application/octet-stream",
            headers,
            head,
        ),
        failure => mirror_failure(&route, failure, head),
    };
    labelled(label, response)
}
