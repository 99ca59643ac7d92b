//! `/precomp/v1/manifests/KEY`: `PUT` a signed manifest (token; verified before it is
//! stored, `Artifacts::publish_manifest`), `GET`/`HEAD` the envelope served for the key
//! (`Artifacts::served_manifest`); `/precomp/v1/manifests/KEY/history`: every manifest kept
//! for the key, as JSON (`Artifacts::manifest_history`).

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use precomp_artifacts::Refusal;
use precomp_proto::manifest::MAX_SIGNED_MANIFEST_SIZE;
use sha2::{Digest, Sha256};

use super::api::{self, blocking, created_or_ok, ApiRequest, Routed, Writes};
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
    match api::digest_resource(key, request, Writes::Put, DOWNLOADS) {
        Routed::Read(key, request) => {
            let result = get(&app, &key, request.headers().clone(), request.head()).await;
            request.finish(DOWNLOADS, result).await
        }
        Routed::Write(key, mut request) => {
            let result = put(&app, key, &mut request).await;
            request.finish(UPLOADS, result).await
        }
        Routed::Answered(answer) => answer,
    }
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
    let (key, request) = match api::digest_resource(key, request, Writes::Never, HISTORY) {
        Routed::Read(key, request) => (key, request),
        Routed::Write(..) => unreachable!("a resource that is never written"),
        Routed::Answered(answer) => return answer,
    };
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
