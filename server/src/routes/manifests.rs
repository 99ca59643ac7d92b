//! `/precomp/v1/manifests/KEY`: `PUT` a signed manifest (token; verified before it is
//! stored, `Artifacts::publish_manifest`), `GET`/`HEAD` the envelope served for the key
//! (`Artifacts::served_manifest`); `/precomp/v1/manifests/KEY/history`: every manifest kept
//! for the key, as JSON (`Artifacts::manifest_history`).

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use precomp_artifacts::{valid_digest, Refusal};
use precomp_proto::manifest::MAX_SIGNED_MANIFEST_SIZE;
use sha2::{Digest, Sha256};

use super::api::{self, blocking, created_or_ok, ApiRequest};
use super::MANIFEST_CACHE;
use crate::respond::{content, json, json_revalidated};
use crate::AppState;

const DOWNLOADS: &str = "precomp_manifests";
const UPLOADS: &str = "precomp_manifest_uploads";
const HISTORY: &str = "precomp_manifest_history";

pub async fn manifest(
    State(app): State<AppState>,
    key: super::Param,
    request: Request,
) -> Response {
    let mut request = ApiRequest::new(request);
    let Some(key) = super::param(key).filter(|key| valid_digest(key)) else {
        return api::unknown(request.head());
    };
    if request.read() {
        let result = get(&app, &key, request.headers().clone(), request.head()).await;
        return request.finish(DOWNLOADS, result).await;
    }
    if request.method() == http::Method::PUT {
        let result = put(&app, key, &mut request).await;
        return request.finish(UPLOADS, result).await;
    }
    super::method_not_allowed(
        DOWNLOADS,
        request.method(),
        "GET, HEAD, PUT",
        request.head(),
    )
}

async fn get(
    app: &AppState,
    key: &str,
    headers: http::HeaderMap,
    head: bool,
) -> Result<Response, Refusal> {
    let owned = key.to_string();
    let body = blocking(&app.artifacts, move |a| Ok(a.served_manifest(&owned)?)).await?;
    match body {
        Some(body) => {
            let digest: [u8; 32] = Sha256::digest(&body).into();
            Ok(content(
                Bytes::from(body),
                &digest,
                MANIFEST_CACHE,
                "application/octet-stream",
                &headers,
                head,
            ))
        }
        None => Err(Refusal::new(
            404,
            format!("no manifest is published for key {key}"),
        )),
    }
}

async fn put(app: &AppState, key: String, request: &mut ApiRequest) -> Result<Response, Refusal> {
    let publisher = api::publisher(&app.artifacts, &request.parts).await?;
    let (bytes, _budget) = request
        .read_body(MAX_SIGNED_MANIFEST_SIZE, "the manifest")
        .await?;
    let stored = blocking(&app.artifacts, move |a| {
        a.publish_manifest(&key, &bytes, &publisher)
    })
    .await?;
    // 201 when it is published now (new, or in place of a build nothing counts on).
    Ok(json(
        created_or_ok(matches!(stored.result.as_str(), "created" | "replaced")),
        &stored,
        "no-store",
        false,
    ))
}

/// `GET`/`HEAD /precomp/v1/manifests/KEY/history`: JSON, revalidated with the ETag; `404`
/// when nothing is published under the key.
pub async fn history(State(app): State<AppState>, key: super::Param, request: Request) -> Response {
    let request = ApiRequest::new(request);
    let Some(key) = super::param(key).filter(|key| valid_digest(key)) else {
        return api::unknown(request.head());
    };
    if !request.read() {
        return super::method_not_allowed(HISTORY, request.method(), "GET, HEAD", request.head());
    }
    let owned = key.clone();
    let result = blocking(&app.artifacts, move |a| Ok(a.manifest_history(&owned)?))
        .await
        .and_then(|history| {
            history
                .ok_or_else(|| Refusal::new(404, format!("no manifest is published for key {key}")))
        })
        .map(|history| json_revalidated(&history, request.headers(), request.head()));
    request.finish(HISTORY, result).await
}
