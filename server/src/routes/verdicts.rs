//! `/precomp/v1/verdicts/KEY`: `POST` an auditor's signed verdict (an auditor's token),
//! `GET`/`HEAD` the verdicts on a build.

use axum::extract::{Request, State};
use axum::response::Response;
use precomp_artifacts::{valid_digest, Refusal, MAX_VERDICT_BODY};

use super::api::{self, blocking, created_or_ok, ApiRequest};
use crate::respond::{json, json_revalidated};
use crate::AppState;

const LIST: &str = "precomp_verdicts";
const REPORTS: &str = "precomp_verdict_reports";

pub async fn verdicts(
    State(app): State<AppState>,
    key: super::Param,
    request: Request,
) -> Response {
    let mut request = ApiRequest::new(request);
    let Some(key) = super::param(key).filter(|key| valid_digest(key)) else {
        return api::unknown(request.head());
    };
    if request.read() {
        let verdicts = blocking(&app.artifacts, move |a| Ok(a.verdicts(&key)?)).await;
        let result = verdicts.map(|v| json_revalidated(&v, request.headers(), request.head()));
        return request.finish(LIST, result).await;
    }
    if request.method() == http::Method::POST {
        let result = post(&app, key, &mut request).await;
        return request.finish(REPORTS, result).await;
    }
    super::method_not_allowed(LIST, request.method(), "GET, HEAD, POST", request.head())
}

async fn post(app: &AppState, key: String, request: &mut ApiRequest) -> Result<Response, Refusal> {
    let publisher = api::token(&app.artifacts, &request.parts, |a, publisher| {
        a.verdict_keys(publisher).map(drop)
    })
    .await?;
    let (bytes, _budget) = request.read_body(MAX_VERDICT_BODY, "the verdict").await?;
    let stored = blocking(&app.artifacts, move |a| {
        a.record_verdict(&key, &bytes, &publisher)
    })
    .await?;
    Ok(json(
        created_or_ok(stored.stored == "created"),
        &stored,
        "no-store",
        false,
    ))
}
