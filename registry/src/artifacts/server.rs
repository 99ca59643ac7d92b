//! HTTP for the artifact API: parses `/precomp/v1/...`, bounds every body, authenticates, and
//! runs the store's work on blocking threads.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE,
    WWW_AUTHENTICATE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use precomp_proto::manifest::MAX_SIGNED_MANIFEST_SIZE;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{
    valid_digest, valid_package, ArtifactStored, Artifacts, FailureReport, Failures, Index,
    MissReport, Misses, Publisher, Refusal, MAX_ARTIFACT_SIZE, MAX_FAILURE_BODY, MAX_MISSES_LISTED,
    MAX_MISSES_LOCK_BYTES, MAX_MISS_BODY,
};
use super::{HeartbeatRequest, LeaseRequest, ReleaseRequest, MAX_JOB_BODY};
use super::{Packages, MAX_VERDICT_BODY};
use crate::content::content;

/// `Cache-Control` of an artifact: content-addressed, so cached forever.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of a manifest: it gains signatures when auditors countersign it.
pub const MANIFEST_CACHE: &str = "public, max-age=60";
/// `Cache-Control` of the index and failure lists: revalidated on every use (ETag).
pub const REVALIDATE: &str = "no-cache";

/// Whether `path` belongs to the artifact API (`/precomp/v1/...`, slashes tolerated as the
/// Hex routes tolerate them).
pub fn is_api_path(path: &str) -> bool {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    segments.next() == Some("precomp") && segments.next() == Some("v1")
}

#[derive(Debug, PartialEq, Eq)]
enum ApiRoute {
    Artifact(String),
    Manifest(String),
    Index(String),
    Failures,
    FailuresOf(String),
    Misses,
    /// `verdicts/KEY`: audit verdicts on a build.
    Verdicts(String),
    /// `index`: the packages with builds.
    Packages,
    /// `trust` (the current trust document) or `trust/VERSION`.
    Trust(Option<u64>),
    /// `jobs/lease`: a worker leases a job (a miss to build, a build to audit).
    JobLease,
    /// `jobs/ID/heartbeat`.
    JobHeartbeat(u64),
    /// `jobs/ID/release`.
    JobRelease(u64),
}

impl ApiRoute {
    fn parse(path: &str) -> Option<ApiRoute> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match segments.as_slice() {
            ["precomp", "v1", rest @ ..] => match rest {
                ["artifacts", sha] if valid_digest(sha) => {
                    Some(ApiRoute::Artifact(sha.to_string()))
                }
                ["manifests", key] if valid_digest(key) => {
                    Some(ApiRoute::Manifest(key.to_string()))
                }
                ["index", package] if valid_package(package) => {
                    Some(ApiRoute::Index(package.to_string()))
                }
                ["failures"] => Some(ApiRoute::Failures),
                ["failures", package] if valid_package(package) => {
                    Some(ApiRoute::FailuresOf(package.to_string()))
                }
                ["misses"] => Some(ApiRoute::Misses),
                ["verdicts", key] if valid_digest(key) => Some(ApiRoute::Verdicts(key.to_string())),
                ["index"] => Some(ApiRoute::Packages),
                ["trust"] => Some(ApiRoute::Trust(None)),
                ["trust", version] => trust_version(version).map(|v| ApiRoute::Trust(Some(v))),
                ["jobs", "lease"] => Some(ApiRoute::JobLease),
                ["jobs", job, "heartbeat"] => trust_version(job).map(ApiRoute::JobHeartbeat),
                ["jobs", job, "release"] => trust_version(job).map(ApiRoute::JobRelease),
                _ => None,
            },
            _ => None,
        }
    }

    /// The metrics label of a read of this route.
    fn label(&self) -> &'static str {
        match self {
            ApiRoute::Artifact(_) => "precomp_artifacts",
            ApiRoute::Manifest(_) => "precomp_manifests",
            ApiRoute::Index(_) => "precomp_index",
            ApiRoute::Failures | ApiRoute::FailuresOf(_) => "precomp_failures",
            ApiRoute::Misses => "precomp_misses",
            ApiRoute::Verdicts(_) => "precomp_verdicts",
            ApiRoute::Packages => "precomp_index",
            ApiRoute::Trust(_) => "precomp_trust",
            ApiRoute::JobLease => "precomp_job_leases",
            ApiRoute::JobHeartbeat(_) => "precomp_job_heartbeats",
            ApiRoute::JobRelease(_) => "precomp_job_releases",
        }
    }

    fn allow(&self) -> &'static str {
        match self {
            ApiRoute::Artifact(_) | ApiRoute::Manifest(_) => "GET, HEAD, PUT",
            ApiRoute::Index(_) | ApiRoute::FailuresOf(_) => "GET, HEAD",
            ApiRoute::Failures => "POST",
            ApiRoute::Misses => "GET, HEAD, POST",
            ApiRoute::Verdicts(_) => "GET, HEAD, POST",
            ApiRoute::Packages => "GET, HEAD",
            ApiRoute::Trust(_) => "GET, HEAD",
            ApiRoute::JobLease | ApiRoute::JobHeartbeat(_) | ApiRoute::JobRelease(_) => "POST",
        }
    }
}

/// Answers one request under `/precomp/v1/`. Returns the metrics label of the route with the
/// response.
pub async fn handle<B>(
    artifacts: &Arc<Artifacts>,
    request: Request<B>,
) -> (&'static str, Response<Full<Bytes>>)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    // Upload handlers take the body when they read it; one refused before that is drained.
    let mut body = Some(body);
    let head = parts.method == Method::HEAD;
    let read = parts.method == Method::GET || head;
    let Some(route) = ApiRoute::parse(parts.uri.path()) else {
        return (
            "precomp_unknown",
            text(
                StatusCode::NOT_FOUND,
                "not found: the artifact API has /precomp/v1/artifacts/SHA256, \
                 /precomp/v1/manifests/KEY, /precomp/v1/index[/PACKAGE], /precomp/v1/failures[/PACKAGE], \
                 /precomp/v1/misses, /precomp/v1/verdicts/KEY and /precomp/v1/jobs/...",
                head,
            ),
        );
    };
    let headers = &parts.headers;
    let (label, result) = match (&route, &parts.method) {
        (ApiRoute::Artifact(sha), _) if read => (
            route.label(),
            get_artifact(artifacts, sha, headers, head).await,
        ),
        (ApiRoute::Artifact(sha), &Method::PUT) => (
            "precomp_artifact_uploads",
            put_artifact(artifacts, sha, headers, &mut body).await,
        ),
        (ApiRoute::Manifest(key), _) if read => (
            route.label(),
            get_manifest(artifacts, key, headers, head).await,
        ),
        (ApiRoute::Manifest(key), &Method::PUT) => (
            "precomp_manifest_uploads",
            put_manifest(artifacts, key, headers, &mut body).await,
        ),
        (ApiRoute::Index(package), _) if read => {
            let package = package.clone();
            let index = blocking(artifacts, move |a| {
                Ok(Index {
                    builds: a.index_builds(&package)?,
                    package,
                })
            })
            .await;
            (
                route.label(),
                index.map(|i| json_revalidated(&i, headers, head)),
            )
        }
        (ApiRoute::FailuresOf(package), _) if read => {
            let package = package.clone();
            let failures = blocking(artifacts, move |a| {
                Ok(Failures {
                    failures: a.store().failures(&package)?,
                    package,
                })
            })
            .await;
            (
                route.label(),
                failures.map(|f| json_revalidated(&f, headers, head)),
            )
        }
        (ApiRoute::Failures, &Method::POST) => (
            "precomp_failure_reports",
            post_failure(artifacts, headers, &mut body).await,
        ),
        (ApiRoute::Misses, _) if read => {
            (route.label(), get_misses(artifacts, headers, head).await)
        }
        (ApiRoute::Misses, &Method::POST) => (
            "precomp_miss_reports",
            post_miss(artifacts, headers, &mut body).await,
        ),
        (ApiRoute::Verdicts(key), _) if read => {
            let key = key.clone();
            let verdicts = blocking(artifacts, move |a| Ok(a.store().verdicts(&key)?)).await;
            (
                route.label(),
                verdicts.map(|v| json_revalidated(&v, headers, head)),
            )
        }
        (ApiRoute::Verdicts(key), &Method::POST) => (
            "precomp_verdict_reports",
            post_verdict(artifacts, key, headers, &mut body).await,
        ),
        (ApiRoute::JobLease, &Method::POST) => (
            route.label(),
            post_lease(artifacts, headers, &mut body).await,
        ),
        (ApiRoute::JobHeartbeat(job), &Method::POST) => (
            route.label(),
            post_heartbeat(artifacts, *job, headers, &mut body).await,
        ),
        (ApiRoute::JobRelease(job), &Method::POST) => (
            route.label(),
            post_release(artifacts, *job, headers, &mut body).await,
        ),
        (ApiRoute::Trust(version), _) if read => (
            route.label(),
            get_trust(artifacts, *version, headers, head).await,
        ),
        (ApiRoute::Packages, _) if read => {
            let packages = blocking(artifacts, |a| {
                Ok(Packages {
                    packages: a.store().packages()?,
                })
            })
            .await;
            (
                route.label(),
                packages.map(|p| json_revalidated(&p, headers, head)),
            )
        }
        _ => {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!(
                    "{} is not allowed here; allowed: {}",
                    parts.method,
                    route.allow()
                ),
                head,
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(route.allow()));
            return (route.label(), response);
        }
    };
    let response = match result {
        Ok(response) => response,
        Err(refusal) => {
            let mut response = refused(refusal, head);
            if let Some(body) = body.take() {
                if !drain(body, headers).await {
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
            }
            response
        }
    };
    (label, response)
}

// ---------------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------------

async fn get_artifact(
    artifacts: &Arc<Artifacts>,
    sha: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Full<Bytes>>, Refusal> {
    let digest = parse_digest(sha);
    let body = blocking(artifacts, move |a| {
        let body = a.store().read_artifact(&digest)?;
        if body.is_some() && !head {
            // For `precomp gc`: when it was last fetched (throttled; never fails the read).
            a.store().touch_artifact(&digest);
        }
        Ok(body)
    })
    .await?;
    match body {
        Some(body) => Ok(content(
            body,
            &digest,
            IMMUTABLE,
            "application/gzip",
            headers,
            head,
        )),
        None => Err(Refusal::new(
            404,
            format!("artifact {sha} is not on this mirror"),
        )),
    }
}

/// `GET trust[/VERSION]`: the signed trust document the operator issued with `precomp keys`
/// (`DATA/trust/trust.doc`, `DATA/trust/history/VERSION.doc`), as stored. Clients verify it
/// against the root key they pin.
async fn get_trust(
    artifacts: &Arc<Artifacts>,
    version: Option<u64>,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Full<Bytes>>, Refusal> {
    let dir = artifacts.trust_dir();
    let path = match version {
        Some(version) => dir.join("history").join(format!("{version}.doc")),
        None => dir.join("trust.doc"),
    };
    let limit = precomp_proto::trust::MAX_TRUST_DOCUMENT_SIZE as u64;
    let body = blocking(artifacts, move |_| {
        use std::io::Read;
        match std::fs::File::open(&path) {
            Ok(file) => {
                let mut bytes = Vec::new();
                file.take(limit + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| Refusal::internal(format!("{}: {e}", path.display())))?;
                if bytes.len() as u64 > limit {
                    return Err(Refusal::internal(format!(
                        "{} is over the limit of {limit} bytes",
                        path.display()
                    )));
                }
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Refusal::internal(format!("{}: {e}", path.display()))),
        }
    })
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
                headers,
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

/// A trust document version in a path: decimal, no leading zero.
fn trust_version(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || text.starts_with('0') {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

async fn get_manifest(
    artifacts: &Arc<Artifacts>,
    key: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Full<Bytes>>, Refusal> {
    let owned = key.to_string();
    let body = blocking(artifacts, move |a| Ok(a.store().manifest(&owned)?)).await?;
    match body {
        Some(body) => {
            let digest: [u8; 32] = Sha256::digest(&body).into();
            Ok(content(
                Bytes::from(body),
                &digest,
                MANIFEST_CACHE,
                "application/octet-stream",
                headers,
                head,
            ))
        }
        None => Err(Refusal::new(
            404,
            format!("no manifest is published for key {key}"),
        )),
    }
}

async fn get_misses(
    artifacts: &Arc<Artifacts>,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Full<Bytes>>, Refusal> {
    let authorization = authorization(headers)?;
    let misses = blocking(artifacts, move |a| {
        a.authenticate(authorization.as_deref())?;
        Ok(Misses {
            misses: a
                .store()
                .open_misses(MAX_MISSES_LISTED, MAX_MISSES_LOCK_BYTES)?,
        })
    })
    .await?;
    Ok(json(StatusCode::OK, &misses, "no-store", head))
}

// ---------------------------------------------------------------------------------------------
// Uploads
// ---------------------------------------------------------------------------------------------

/// Authenticates the request's token and checks with `may` that it may do this at all, before
/// any body is read.
async fn token(
    artifacts: &Arc<Artifacts>,
    headers: &HeaderMap,
    may: fn(&Artifacts, &Publisher) -> Result<(), Refusal>,
) -> Result<Publisher, Refusal> {
    let authorization = authorization(headers)?;
    blocking(artifacts, move |a| {
        let publisher = a.authenticate(authorization.as_deref())?;
        may(a, &publisher)?;
        Ok(publisher)
    })
    .await
}

/// An upload: the token could publish something.
async fn publisher(artifacts: &Arc<Artifacts>, headers: &HeaderMap) -> Result<Publisher, Refusal> {
    token(artifacts, headers, |a, publisher| {
        a.trusted_for(publisher).map(drop)
    })
    .await
}

async fn put_artifact<B>(
    artifacts: &Arc<Artifacts>,
    sha: &str,
    headers: &HeaderMap,
    body: &mut Option<B>,
) -> Result<Response<Full<Bytes>>, Refusal>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let publisher = publisher(artifacts, headers).await?;
    check_length(headers, MAX_ARTIFACT_SIZE, "the artifact")?;
    let expected = parse_digest(sha);
    let body = body.take().expect("the body is read once");
    let (tmp, actual, size) = receive(artifacts, body, MAX_ARTIFACT_SIZE).await?;
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
        Ok(a.store().put_artifact(tmp, &actual, size, &name)?)
    })
    .await?;
    if created {
        tracing::info!(sha256 = %sha, size, publisher = %publisher.name, "artifact stored");
    }
    let status = created_or_ok(created);
    Ok(json(
        status,
        &ArtifactStored {
            sha256: sha.to_string(),
            size,
            created,
        },
        "no-store",
        false,
    ))
}

async fn put_manifest<B>(
    artifacts: &Arc<Artifacts>,
    key: &str,
    headers: &HeaderMap,
    body: &mut Option<B>,
) -> Result<Response<Full<Bytes>>, Refusal>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let publisher = publisher(artifacts, headers).await?;
    let bytes = read_body(headers, body, MAX_SIGNED_MANIFEST_SIZE, "the manifest").await?;
    let key = key.to_string();
    let stored = blocking(artifacts, move |a| {
        a.publish_manifest(&key, &bytes, &publisher)
    })
    .await?;
    let status = created_or_ok(stored.result == "created");
    Ok(json(status, &stored, "no-store", false))
}

async fn post_failure<B>(
    artifacts: &Arc<Artifacts>,
    headers: &HeaderMap,
    body: &mut Option<B>,
) -> Result<Response<Full<Bytes>>, Refusal>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let publisher = publisher(artifacts, headers).await?;
    let bytes = read_body(headers, body, MAX_FAILURE_BODY, "the failure report").await?;
    let report: FailureReport = parse_json(&bytes, "failure report")?;
    let recorded = blocking(artifacts, move |a| a.record_failure(&report, &publisher)).await?;
    let status = created_or_ok(recorded.attempts == 1);
    Ok(json(status, &recorded, "no-store", false))
}

/// `POST verdicts/KEY`: an auditor's signed verdict.
async fn post_verdict<B>(
    artifacts: &Arc<Artifacts>,
    key: &str,
    headers: &HeaderMap,
    body: &mut Option<B>,
) -> Result<Response<Full<Bytes>>, Refusal>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let publisher = token(artifacts, headers, |a, publisher| {
        a.verdict_keys(publisher).map(drop)
    })
    .await?;
    let bytes = read_body(headers, body, MAX_VERDICT_BODY, "the verdict").await?;
    let key = key.to_string();
    let stored = blocking(artifacts, move |a| {
        a.record_verdict(&key, &bytes, &publisher)
    })
    .await?;
    let status = created_or_ok(stored.stored == "created");
    Ok(json(status, &stored, "no-store", false))
}

async fn post_miss<B>(
    artifacts: &Arc<Artifacts>,
    headers: &HeaderMap,
    body: &mut Option<B>,
) -> Result<Response<Full<Bytes>>, Refusal>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let bytes = read_body(headers, body, MAX_MISS_BODY, "the miss report").await?;
    let report: MissReport = parse_json(&bytes, "miss report")?;
    let recorded = blocking(artifacts, move |a| a.record_miss(&report)).await?;
    let status = created_or_ok(recorded.count == 1);
    Ok(json(status, &recorded, "no-store", false))
}

// ---------------------------------------------------------------------------------------------
// Jobs (build and audit)
// ---------------------------------------------------------------------------------------------

/// A job request. What the token may do depends on the job's kind (publish builds, post
/// verdicts): the store checks that once it knows the kind.
async fn job_token(artifacts: &Arc<Artifacts>, headers: &HeaderMap) -> Result<Publisher, Refusal> {
    token(artifacts, headers, |_, _| Ok(())).await
}

/// An optional JSON body: empty (or blank) is `T::default()`.
fn optional_json<T: serde::de::DeserializeOwned + Default>(
    bytes: &[u8],
    what: &str,
) -> Result<T, Refusal> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse_json(bytes, what)
    }
}

/// `POST jobs/lease`: `200` with the lease, `204` when no job matches.
async fn post_lease<B>(
    artifacts: &Arc<Artifacts>,
    headers: &HeaderMap,
    body: &mut Option<B>,
) -> Result<Response<Full<Bytes>>, Refusal>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let publisher = job_token(artifacts, headers).await?;
    let bytes = read_body(headers, body, MAX_JOB_BODY, "the lease request").await?;
    let request: LeaseRequest = parse_json(&bytes, "lease request")?;
    let lease = blocking(artifacts, move |a| a.lease_job(&request, &publisher)).await?;
    Ok(match lease {
        Some(lease) => json(StatusCode::OK, &lease, "no-store", false),
        None => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
    })
}

/// `POST jobs/ID/heartbeat`: the body, optional, is a [`HeartbeatRequest`].
async fn post_heartbeat<B>(
    artifacts: &Arc<Artifacts>,
    job: u64,
    headers: &HeaderMap,
    body: &mut Option<B>,
) -> Result<Response<Full<Bytes>>, Refusal>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let publisher = job_token(artifacts, headers).await?;
    let bytes = read_body(headers, body, MAX_JOB_BODY, "the heartbeat").await?;
    let request: HeartbeatRequest = optional_json(&bytes, "heartbeat")?;
    let renewed = blocking(artifacts, move |a| {
        a.heartbeat_job(job, &request, &publisher)
    })
    .await?;
    Ok(json(StatusCode::OK, &renewed, "no-store", false))
}

/// `POST jobs/ID/release`: the body, optional, is a [`ReleaseRequest`].
async fn post_release<B>(
    artifacts: &Arc<Artifacts>,
    job: u64,
    headers: &HeaderMap,
    body: &mut Option<B>,
) -> Result<Response<Full<Bytes>>, Refusal>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let publisher = job_token(artifacts, headers).await?;
    let bytes = read_body(headers, body, MAX_JOB_BODY, "the release").await?;
    let request: ReleaseRequest = optional_json(&bytes, "release")?;
    let released = blocking(artifacts, move |a| a.release_job(job, &request, &publisher)).await?;
    Ok(json(StatusCode::OK, &released, "no-store", false))
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

fn authorization(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    match headers.get(AUTHORIZATION) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|v| Some(v.to_string()))
            .map_err(|_| Refusal::new(401, "the Authorization header is not ASCII")),
    }
}

/// Refuses early a body whose declared length is over `limit`.
fn check_length(headers: &HeaderMap, limit: u64, what: &str) -> Result<(), Refusal> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => Err(too_large(what, limit)),
        _ => Ok(()),
    }
}

/// `201 Created` for something new, `200 OK` for what was already there.
fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

fn too_large(what: &str, limit: u64) -> Refusal {
    Refusal::new(413, format!("{what} is over the limit of {limit} bytes"))
}

/// Reads a request body of at most `limit` bytes: refused before reading when its declared
/// length is over, and while reading when it turns out to be.
async fn read_body<B>(
    headers: &HeaderMap,
    body: &mut Option<B>,
    limit: usize,
    what: &str,
) -> Result<Bytes, Refusal>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    check_length(headers, limit as u64, what)?;
    let body = body.take().expect("the body is read once");
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(what, limit as u64)),
        Err(e) => Err(Refusal::new(400, format!("reading {what}: {e}"))),
    }
}

/// Streams an upload into a temporary file under the store's `tmp/`, hashing it, bounded by
/// `limit`; the file is synced. Dropping the returned file deletes it.
async fn receive<B>(
    artifacts: &Arc<Artifacts>,
    mut body: B,
    limit: u64,
) -> Result<(tempfile::NamedTempFile, [u8; 32], u64), Refusal>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tmp = blocking(artifacts, |a| {
        let dir = a.store().tmp_dir();
        tempfile::NamedTempFile::new_in(&dir)
            .map_err(|e| Refusal::internal(format!("{}: {e}", dir.display())))
    })
    .await?;
    let io_error = |e: std::io::Error| Refusal::internal(format!("{}: {e}", tmp.path().display()));
    let mut file = tokio::fs::File::from_std(tmp.as_file().try_clone().map_err(io_error)?);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Refusal::new(400, format!("reading the artifact: {}", e.into())))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > limit {
            return Err(too_large("the artifact", limit));
        }
        hasher.update(&data);
        file.write_all(&data).await.map_err(io_error)?;
    }
    file.flush().await.map_err(io_error)?;
    file.sync_all().await.map_err(io_error)?;
    drop(file);
    Ok((tmp, hasher.finalize().into(), size))
}

/// Bound on the body read and discarded before a refusal is sent, so that the client, still
/// sending, reads the answer instead of a connection reset.
const MAX_DRAIN: u64 = 32 * 1024 * 1024;

/// Reads and discards an unread body (at most [`MAX_DRAIN`] bytes, for at most 10 seconds).
/// Returns whether it was read to its end, so the connection can be kept.
async fn drain<B>(mut body: B, headers: &HeaderMap) -> bool
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_DRAIN) {
        return false;
    }
    let read = async {
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Ok(data) = frame.into_data() {
                seen += data.len() as u64;
                if seen > MAX_DRAIN {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .unwrap_or(false)
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Refusal> {
    serde_json::from_slice(bytes).map_err(|e| {
        Refusal::new(
            400,
            format!("the {what} is not the JSON docs/protocol.md describes: {e}"),
        )
    })
}

fn parse_digest(hex_text: &str) -> [u8; 32] {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut digest).expect("routes accept only 64 hex digits");
    digest
}

async fn blocking<T, F>(artifacts: &Arc<Artifacts>, work: F) -> Result<T, Refusal>
where
    T: Send + 'static,
    F: FnOnce(&Artifacts) -> Result<T, Refusal> + Send + 'static,
{
    let artifacts = Arc::clone(artifacts);
    tokio::task::spawn_blocking(move || work(&artifacts))
        .await
        .unwrap_or_else(|e| Err(Refusal::internal(format!("artifact task failed: {e}"))))
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

fn json_revalidated<T: Serialize>(
    value: &T,
    headers: &HeaderMap,
    head: bool,
) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("plain data serialises");
    let digest: [u8; 32] = Sha256::digest(&body).into();
    content(
        Bytes::from(body),
        &digest,
        REVALIDATE,
        "application/json",
        headers,
        head,
    )
}

fn json<T: Serialize>(
    status: StatusCode,
    value: &T,
    cache_control: &'static str,
    head: bool,
) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("plain data serialises");
    let size = body.len();
    let mut response = Response::new(Full::new(if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    }));
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    out.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    out.insert(CONTENT_LENGTH, HeaderValue::from(size));
    response
}

fn refused(refusal: Refusal, head: bool) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = text(status, &refusal.message, head);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"precomp\""),
        );
    }
    response
}

fn text(status: StatusCode, message: &str, head: bool) -> Response<Full<Bytes>> {
    let body = format!("{message}\n");
    let size = body.len();
    let mut response = Response::new(Full::new(if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    }));
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    out.insert(CONTENT_LENGTH, HeaderValue::from(size));
    out.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_api_paths() {
        let sha = "ab".repeat(32);
        assert!(is_api_path("/precomp/v1/misses"));
        assert!(is_api_path("//precomp//v1/x"));
        assert!(!is_api_path("/precomp"));
        assert!(!is_api_path("/precomp/v2/misses"));
        assert!(!is_api_path("/packages/precomp"));
        assert_eq!(
            ApiRoute::parse(&format!("/precomp/v1/artifacts/{sha}")),
            Some(ApiRoute::Artifact(sha.clone()))
        );
        assert_eq!(
            ApiRoute::parse(&format!("/precomp/v1/manifests/{sha}/")),
            Some(ApiRoute::Manifest(sha.clone()))
        );
        assert_eq!(
            ApiRoute::parse("/precomp/v1/index/jason"),
            Some(ApiRoute::Index("jason".into()))
        );
        assert_eq!(
            ApiRoute::parse("/precomp/v1/failures"),
            Some(ApiRoute::Failures)
        );
        assert_eq!(
            ApiRoute::parse("/precomp/v1/failures/jason"),
            Some(ApiRoute::FailuresOf("jason".into()))
        );
        assert_eq!(
            ApiRoute::parse("/precomp/v1/misses"),
            Some(ApiRoute::Misses)
        );
        assert_eq!(
            ApiRoute::parse("/precomp/v1/trust"),
            Some(ApiRoute::Trust(None))
        );
        assert_eq!(
            ApiRoute::parse("/precomp/v1/trust/12"),
            Some(ApiRoute::Trust(Some(12)))
        );
        assert_eq!(
            ApiRoute::parse("/precomp/v1/jobs/lease"),
            Some(ApiRoute::JobLease)
        );
        assert_eq!(
            ApiRoute::parse("/precomp/v1/jobs/17/heartbeat"),
            Some(ApiRoute::JobHeartbeat(17))
        );
        assert_eq!(
            ApiRoute::parse("/precomp/v1/jobs/17/release"),
            Some(ApiRoute::JobRelease(17))
        );
        assert_eq!(ApiRoute::parse("/precomp/v1/jobs/017/release"), None);
        assert_eq!(ApiRoute::parse("/precomp/v1/jobs/x/heartbeat"), None);
        for bad in [
            "/precomp/v1/trust/012",
            "/precomp/v1/trust/x",
            "/precomp/v1/trust/0",
        ] {
            assert_eq!(ApiRoute::parse(bad), None, "{bad}");
        }
        for bad in [
            "/precomp/v1/artifacts/ABAB",
            &format!("/precomp/v1/artifacts/{}", "AB".repeat(32)),
            &format!("/precomp/v1/artifacts/{sha}/x"),
            "/precomp/v1/index/Jason",
            "/precomp/v1/index/..",
            "/precomp/v1/nothing",
            "/precomp/v1",
        ] {
            assert_eq!(ApiRoute::parse(bad), None, "{bad}");
        }
    }
}
