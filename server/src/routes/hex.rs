//! The Hex repository routes of the mirror (`../shared/design/hex-protocol.md` §1): every
//! object served verbatim from the store or upstream, with a strong ETag, never a
//! `Content-Encoding`. GET and HEAD only.

use axum::extract::{Path, State};
use axum::response::Response;
use http::header::{HeaderValue, ALLOW};
use http::{HeaderMap, Method, StatusCode};
use precomp_registry::mirror::{Outcome, Route};

use crate::respond::{content, labelled, mirror_failure, text};
use crate::AppState;

pub async fn names(State(app): State<AppState>, method: Method, headers: HeaderMap) -> Response {
    object(&app, Some(Route::Names), &method, &headers).await
}

pub async fn versions(State(app): State<AppState>, method: Method, headers: HeaderMap) -> Response {
    object(&app, Some(Route::Versions), &method, &headers).await
}

pub async fn public_key(
    State(app): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    object(&app, Some(Route::PublicKey), &method, &headers).await
}

pub async fn package(
    State(app): State<AppState>,
    name: super::Param,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let route = name
        .ok()
        .and_then(|Path(name)| Route::from_segments(&["packages", &name]));
    object(&app, route, &method, &headers).await
}

pub async fn tarball(
    State(app): State<AppState>,
    file: super::Param,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let route = file
        .ok()
        .and_then(|Path(file)| Route::from_segments(&["tarballs", &file]));
    object(&app, route, &method, &headers).await
}

pub async fn docs(
    State(app): State<AppState>,
    file: super::Param,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let route = file
        .ok()
        .and_then(|Path(file)| Route::from_segments(&["docs", &file]));
    object(&app, route, &method, &headers).await
}

pub async fn installs(
    State(app): State<AppState>,
    rest: super::Param,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let route = rest.ok().and_then(|Path(rest)| {
        let mut segments = vec!["installs"];
        segments.extend(rest.split('/').filter(|s| !s.is_empty()));
        Route::from_segments(&segments)
    });
    object(&app, route, &method, &headers).await
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

/// The object of `route` (`None`: the path is not one the mirror serves, 404).
async fn object(
    app: &AppState,
    route: Option<Route>,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
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
