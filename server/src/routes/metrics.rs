//! `/metrics`: every counter and gauge in the Prometheus (OpenMetrics) text format.

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::Method;

use crate::respond::labelled;
use crate::AppState;

pub async fn metrics(State(app): State<AppState>, method: Method) -> Response {
    let head = method == Method::HEAD;
    if !super::read_method(&method) {
        return super::hex::not_allowed("metrics", head);
    }
    // Rendering reads the audit verdicts from SQLite: off the async workers.
    let mirror = app.mirror.clone();
    let text = tokio::task::spawn_blocking(move || mirror.metrics().render())
        .await
        .unwrap_or_default();
    let mut response = Response::new(if head {
        Body::empty()
    } else {
        Body::from(text)
    });
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    labelled("metrics", response)
}
