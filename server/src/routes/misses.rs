//! `/precomp/v1/misses`: `POST` a miss (anyone; checked against the lock it carries,
//! `Artifacts::record_miss`), `GET`/`HEAD` the open misses (a builder's token: they carry
//! consumers' compile-time values).

use axum::extract::{Request, State};
use axum::response::Response;
use http::StatusCode;
use precomp_artifacts::{MissReport, Misses, Refusal, MAX_MISS_BODY};

use super::api::{blocking, created_or_ok, parse_json, ApiRequest};
use crate::respond::json;
use crate::AppState;

const LIST: &str = "precomp_misses";
const REPORTS: &str = "precomp_miss_reports";

pub async fn misses(State(app): State<AppState>, request: Request) -> Response {
    let mut request = ApiRequest::new(request);
    if request.read() {
        let result = list(&app, request.headers().clone(), request.head()).await;
        return request.finish(LIST, result).await;
    }
    if request.method() == http::Method::POST {
        let result = post(&app, &mut request).await;
        return request.finish(REPORTS, result).await;
    }
    super::method_not_allowed(LIST, request.method(), "GET, HEAD, POST", request.head())
}

async fn list(app: &AppState, headers: http::HeaderMap, head: bool) -> Result<Response, Refusal> {
    let authorization = match headers.get(http::header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| Refusal::new(401, "the Authorization header is not ASCII"))?
                .to_string(),
        ),
    };
    // Misses carry consumers' compile-time values: builders' tokens only.
    let misses = blocking(&app.artifacts, move |a| {
        let publisher = a.authenticate(authorization.as_deref())?;
        Ok(Misses {
            misses: a.open_misses(&publisher)?,
        })
    })
    .await?;
    Ok(json(StatusCode::OK, &misses, "no-store", head))
}

async fn post(app: &AppState, request: &mut ApiRequest) -> Result<Response, Refusal> {
    let (bytes, _budget) = request.read_body(MAX_MISS_BODY, "the miss report").await?;
    let report: MissReport = parse_json(&bytes, "miss report")?;
    drop(bytes);
    let recorded = blocking(&app.artifacts, move |a| a.record_miss(&report)).await?;
    Ok(json(
        created_or_ok(recorded.count == 1),
        &recorded,
        "no-store",
        false,
    ))
}
