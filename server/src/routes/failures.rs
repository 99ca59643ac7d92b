//! `POST /precomp/v1/failures` (token): a failed build with its log. `GET`/`HEAD
//! /precomp/v1/failures/PACKAGE`: a package's failures, most recent first.

use axum::extract::{Request, State};
use axum::response::Response;
use precomp_artifacts::{valid_package, FailureReport, Failures, Refusal, MAX_FAILURE_BODY};

use super::api::{self, blocking, created_or_ok, parse_json, ApiRequest};
use crate::respond::{json, json_revalidated};
use crate::AppState;

const LIST: &str = "precomp_failures";
const REPORTS: &str = "precomp_failure_reports";

pub async fn report(State(app): State<AppState>, request: Request) -> Response {
    let mut request = ApiRequest::new(request);
    if request.method() != http::Method::POST {
        return super::method_not_allowed(LIST, request.method(), "POST", request.head());
    }
    let result = post(&app, &mut request).await;
    request.finish(REPORTS, result).await
}

async fn post(app: &AppState, request: &mut ApiRequest) -> Result<Response, Refusal> {
    let publisher = api::publisher(&app.artifacts, &request.parts).await?;
    let (bytes, _budget) = request
        .read_body(MAX_FAILURE_BODY, "the failure report")
        .await?;
    let report: FailureReport = parse_json(&bytes, "failure report")?;
    let recorded = blocking(&app.artifacts, move |a| {
        a.record_failure(&report, &publisher)
    })
    .await?;
    Ok(json(
        created_or_ok(recorded.attempts == 1),
        &recorded,
        "no-store",
        false,
    ))
}

pub async fn list(
    State(app): State<AppState>,
    package: super::Param,
    request: Request,
) -> Response {
    let request = ApiRequest::new(request);
    let Some(package) = super::param(package).filter(|p| valid_package(p)) else {
        return api::unknown(request.head());
    };
    if !request.read() {
        return super::method_not_allowed(LIST, request.method(), "GET, HEAD", request.head());
    }
    let failures = blocking(&app.artifacts, move |a| {
        Ok(Failures {
            failures: a.store().failures(&package)?,
            package,
        })
    })
    .await;
    let result = failures.map(|f| json_revalidated(&f, request.headers(), request.head()));
    request.finish(LIST, result).await
}
