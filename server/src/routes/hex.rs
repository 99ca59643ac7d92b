//! The Hex repository routes of the mirror (`../shared/design/hex-protocol.md` §1): every
//! object served verbatim from the store or upstream, with a strong ETag, never a
//! `Content-Encoding`. GET and HEAD only.

use axum::extract::{Path, Request, State};
use axum::response::Response;
use http::header::{HeaderValue, ALLOW};
use http::request::Parts;
use http::{Method, StatusCode};
use precomp_registry::mirror::{Outcome, Route};

use crate::respond::{content, labelled, mirror_failure, text};
use crate::AppState;

pub async fn names(State(app): State<AppState>, request: Request) -> Response {
    object(&app, Some(Route::Names), request).await
}

pub async fn versions(State(app): State<AppState>, request: Request) -> Response {
    object(&app, Some(Route::Versions), request).await
}

pub async fn public_key(State(app): State<AppState>, request: Request) -> Response {
    object(&app, Some(Route::PublicKey), request).await
}

pub async fn package(
    State(app): State<AppState>,
    name: super::Param,
    request: Request,
) -> Response {
    let route = name
        .ok()
        .and_then(|Path(name)| Route::from_segments(&["packages", &name]));
    object(&app, route, request).await
}

pub async fn tarball(
    State(app): State<AppState>,
    file: super::Param,
    request: Request,
) -> Response {
    let route = file
        .ok()
        .and_then(|Path(file)| Route::from_segments(&["tarballs", &file]));
    object(&app, route, request).await
}

pub async fn docs(State(app): State<AppState>, file: super::Param, request: Request) -> Response {
    let route = file
        .ok()
        .and_then(|Path(file)| Route::from_segments(&["docs", &file]));
    object(&app, route, request).await
}

pub async fn installs(
    State(app): State<AppState>,
    rest: super::Param,
    request: Request,
) -> Response {
    let route = rest.ok().and_then(|Path(rest)| {
        let mut segments = vec!["installs"];
        segments.extend(rest.split('/').filter(|s| !s.is_empty()));
        Route::from_segments(&segments)
    });
    object(&app, route, request).await
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

/// The object of `route` (`None`: the path is not one the mirror serves, 404). The request
/// is taken whole, not as extracted headers: a `HeaderMap` extractor clones the map.
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
