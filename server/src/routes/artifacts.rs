//! `/precomp/v1/artifacts/SHA256`: `PUT` an artifact tarball (token), `GET`/`HEAD` it.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::StatusCode;
use precomp_artifacts::{ArtifactStored, Refusal, MAX_ARTIFACT_SIZE};
use tokio_util::io::ReaderStream;

use super::api::{self, blocking, created_or_ok, parse_digest, ApiRequest, Routed, Writes};
use super::IMMUTABLE;
use crate::respond::{json, stored};
use crate::AppState;

const DOWNLOADS: &str = "precomp_artifacts";
const UPLOADS: &str = "precomp_artifact_uploads";

pub async fn artifact(
    State(app): State<AppState>,
    sha: super::Param,
    request: Request,
) -> Response {
    match api::digest_resource(sha, request, Writes::Put, DOWNLOADS) {
        Routed::Read(sha, request) => {
            let result = get(&app, &sha, request.headers().clone(), request.head()).await;
            request.finish(DOWNLOADS, result).await
        }
        Routed::Write(sha, mut request) => {
            let result = put(&app, &sha, &mut request).await;
            request.finish(UPLOADS, result).await
        }
        Routed::Answered(answer) => answer,
    }
}

/// The artifact, streamed from disk. Its digest was checked when it was stored (and `store
/// scrub` checks stored blobs again); hashing every download would read it twice.
async fn get(
    app: &AppState,
    sha: &str,
    headers: http::HeaderMap,
    head: bool,
) -> Result<Response, Refusal> {
    let digest = parse_digest(sha);
    let path = app.artifacts.blobs().artifact_path(&digest);
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Refusal::new(
                404,
                format!("artifact {sha} is not on this mirror"),
            ))
        }
        Err(e) => return Err(Refusal::internal(format!("{}: {e}", path.display()))),
    };
    let size = file
        .metadata()
        .await
        .map_err(|e| Refusal::internal(format!("{}: {e}", path.display())))?
        .len();
    let response = stored(
        size,
        &digest,
        IMMUTABLE,
        "application/gzip",
        &headers,
        head,
        || Body::from_stream(ReaderStream::with_capacity(file, 64 * 1024)),
    );
    if response.status() == StatusCode::OK && !head {
        // For `precomp gc`: when it was last fetched (throttled; never fails the read).
        let _ = blocking(&app.artifacts, move |a| {
            a.store().touch_artifact(&digest);
            Ok(())
        })
        .await;
    }
    Ok(response)
}

async fn put(app: &AppState, sha: &str, request: &mut ApiRequest) -> Result<Response, Refusal> {
    let artifacts = &app.artifacts;
    let publisher = api::publisher(artifacts, &request.parts).await?;
    api::check_length(request.headers(), MAX_ARTIFACT_SIZE, "the artifact")?;
    let expected = parse_digest(sha);
    let body = request.take_body();
    let (tmp, actual, size) = api::receive(artifacts, body, MAX_ARTIFACT_SIZE).await?;
    if actual != expected {
        return Err(Refusal::new(
            422,
            format!(
                "artifact refused: digest check failed: the body's sha256 is {}, the path says \
                 {sha}; nothing was stored",
                hex::encode(actual)
            ),
        ));
    }
    let name = publisher.name.clone();
    let created = blocking(artifacts, move |a| {
        Ok(a.put_artifact(tmp, &actual, size, &name)?)
    })
    .await?;
    if created {
        tracing::info!(sha256 = %sha, size, publisher = %publisher.name, "artifact stored");
    }
    Ok(json(
        created_or_ok(created),
        &ArtifactStored {
            sha256: sha.to_string(),
            size,
            created,
        },
        "no-store",
        false,
    ))
}
