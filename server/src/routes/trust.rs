//! `/precomp/v1/trust` and `/precomp/v1/trust/VERSION`: the signed trust document the
//! operator issued with `precomp keys` (`DATA/trust/trust.doc`, `DATA/trust/history/N.doc`),
//! as stored. Clients verify it against the root key they pin.

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use precomp_artifacts::Refusal;
use sha2::{Digest, Sha256};

use super::api::{self, blocking, path_number, ApiRequest};
use super::{IMMUTABLE, REVALIDATE};
use crate::respond::content;
use crate::AppState;

const LABEL: &str = "precomp_trust";

pub async fn current(State(app): State<AppState>, request: Request) -> Response {
    answer(&app, None, ApiRequest::new(request)).await
}

pub async fn version(
    State(app): State<AppState>,
    version: super::Param,
    request: Request,
) -> Response {
    let request = ApiRequest::new(request);
    match super::param(version).and_then(|v| path_number(&v)) {
        Some(version) => answer(&app, Some(version), request).await,
        None => api::unknown(request.head()),
    }
}

async fn answer(app: &AppState, version: Option<u64>, request: ApiRequest) -> Response {
    if !request.read() {
        return super::method_not_allowed(LABEL, request.method(), "GET, HEAD", request.head());
    }
    let result = get(app, version, request.headers().clone(), request.head()).await;
    request.finish(LABEL, result).await
}

async fn get(
    app: &AppState,
    version: Option<u64>,
    headers: http::HeaderMap,
    head: bool,
) -> Result<Response, Refusal> {
    let dir = app.artifacts.trust_dir();
    let path = match version {
        Some(version) => dir.join("history").join(format!("{version}.doc")),
        None => dir.join("trust.doc"),
    };
    let limit = precomp_proto::trust::MAX_TRUST_DOCUMENT_SIZE as u64;
    let body = blocking(
        &app.artifacts,
        move |_| match precomp_proto::file::read_bounded(&path, limit) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(Refusal::internal(e.to_string())),
        },
    )
    .await?;
    match body {
        Some(body) => {
            let digest: [u8; 32] = Sha256::digest(&body).into();
            Ok(content(
                Bytes::from(body),
                &digest,
                if version.is_some() {
                    IMMUTABLE
                } else {
                    REVALIDATE
                },
                "application/octet-stream",
                &headers,
                head,
            ))
        }
        None => Err(Refusal::new(
            404,
            match version {
                Some(version) => format!("this mirror has no trust document version {version}"),
                None => "this mirror publishes no trust document: its operator creates one with \
                         `precomp keys init --root ROOT.key`"
                    .to_string(),
            },
        )),
    }
}
