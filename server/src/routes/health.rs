//! `/healthz`: `ok` while the server can serve, `503` naming what is wrong when a database
//! does not answer (checked on each call, on a blocking thread, within 2 seconds).

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use http::{Method, StatusCode};

use crate::respond::{labelled, text};
use crate::AppState;

/// How long the database checks may take before the server counts as unhealthy.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz(State(app): State<AppState>, method: Method) -> Response {
    let head = method == Method::HEAD;
    if !super::read_method(&method) {
        return super::hex::not_allowed("healthz", head);
    }
    let check = tokio::task::spawn_blocking(move || {
        app.mirror
            .store()
            .check()
            .map_err(|e| format!("mirror store: {e}"))?;
        app.artifacts
            .store()
            .check()
            .map_err(|e| format!("artifact store: {e}"))
    });
    let problem = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(problem))) => Some(problem),
        Ok(Err(e)) => Some(format!("health check failed: {e}")),
        Err(_) => Some(format!(
            "the databases did not answer within {CHECK_TIMEOUT:?}"
        )),
    };
    let response = match problem {
        None => text(StatusCode::OK, "ok", head),
        Some(problem) => {
            tracing::error!("unhealthy: {problem}");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("unhealthy: {problem}"),
                head,
            )
        }
    };
    labelled("healthz", response)
}
