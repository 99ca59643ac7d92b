//! `/precomp/v1/verdicts/KEY`: `POST` an auditor's signed verdict (an auditor's token),
//! `GET`/`HEAD` the verdicts on a build.

use axum::extract::{Request, State};
use axum::response::Response;
use precomp_artifacts::{Refusal, MAX_VERDICT_BODY};

use super::api::{self, blocking, created_or_ok, ApiRequest, Routed, Writes};
use crate::respond::{json, json_revalidated};
use crate::AppState;

const LIST: &str = "precomp_verdicts";
const REPORTS: &str = "precomp_verdict_reports";

pub async fn verdicts(
    State(app): State<AppState>,
    key: super::Param,
    request: Request,
) -> Response {
    match api::digest_resource(key, request, Writes::Post, LIST) {
        Routed::Read(key, request) => {
            let verdicts = blocking(&app.artifacts, move |a| Ok(a.verdicts(&key)?)).await;
            let result = verdicts.map(|v| json_revalidated(&v, request.headers(), request.head()));
            request.finish(LIST, result).await
        }
        Routed::Write(key, mut request) => {
            let result = post(&app, key, &mut request).await;
            request.finish(REPORTS, result).await
        }
        Routed::Answered(answer) => answer,
    }
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
