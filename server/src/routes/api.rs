//! What the artifact API's routes share: tokens, bounded request bodies, refusals, running the
//! store's work on blocking threads. Conventions: docs/protocol.md, "Precompiled artifacts
//! API".

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use precomp_artifacts::{valid_digest, Artifacts, Publisher, Refusal};
use sha2::{Digest, Sha256};

use crate::layers::{BodyBudget, BodyLimitError};
use crate::respond::{labelled, refused, text};

/// A request to the API, taken apart: its head, and its body until a handler reads it (a body
/// a refusal leaves unread is drained, so the client reads the answer, not a reset).
pub struct ApiRequest {
    pub parts: Parts,
    pub body: Option<Body>,
}

impl ApiRequest {
    pub fn new(request: Request) -> ApiRequest {
        let (parts, body) = request.into_parts();
        ApiRequest {
            parts,
            body: Some(body),
        }
    }

    pub fn method(&self) -> &Method {
        &self.parts.method
    }

    pub fn head(&self) -> bool {
        self.parts.method == Method::HEAD
    }

    pub fn read(&self) -> bool {
        super::read_method(&self.parts.method)
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// The request's body, once.
    pub fn take_body(&mut self) -> Body {
        self.body.take().expect("the body is read once")
    }

    /// The body's bytes, at most `limit`: refused (413) before reading when its declared
    /// length is over and while reading when it turns out to be; held in memory only within
    /// the server's body memory budget (429 when it is spent). The returned permit gives the
    /// budget back when dropped: keep it as long as the bytes.
    pub async fn read_body(
        &mut self,
        limit: usize,
        what: &str,
    ) -> Result<(Bytes, Option<BudgetPermit>), Refusal> {
        check_length(self.headers(), limit as u64, what)?;
        let budget = self.parts.extensions.get::<BodyBudget>().cloned();
        let declared = declared_length(self.headers());
        let mut permit = match (&budget, declared) {
            (Some(budget), Some(length)) => Some(budget.take(length).ok_or_else(busy)?),
            (Some(budget), None) => Some(budget.take(0).ok_or_else(busy)?),
            (None, _) => None,
        };
        let mut body = self.take_body();
        let mut bytes = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| body_error(e, what))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if bytes.len() + data.len() > limit {
                return Err(too_large(what, limit as u64));
            }
            if let Some(permit) = &mut permit {
                if !permit.cover(bytes.len() + data.len()) {
                    return Err(busy());
                }
            }
            bytes.extend_from_slice(&data);
        }
        Ok((bytes.freeze(), permit))
    }

    /// The answer to a refusal; a body the handler left unread is read and discarded first
    /// (at most [`MAX_DRAIN`] bytes, 10 seconds), or the connection is closed after the
    /// answer.
    pub async fn refuse(mut self, refusal: Refusal) -> Response {
        let head = self.head();
        let mut response = refused(refusal, head);
        if let Some(body) = self.body.take() {
            if !drain(body, &self.parts.headers).await {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        response
    }

    /// `result` as the answer, labelled `route`.
    pub async fn finish(self, route: &'static str, result: Result<Response, Refusal>) -> Response {
        let response = match result {
            Ok(response) => response,
            Err(refusal) => self.refuse(refusal).await,
        };
        labelled(route, response)
    }
}

/// A share of the body memory budget ([`BodyBudget`]), given back when dropped.
pub struct BudgetPermit {
    budget: BodyBudget,
    held: usize,
}

impl BudgetPermit {
    /// Grows the share to `bytes`; false when the budget cannot cover it.
    fn cover(&mut self, bytes: usize) -> bool {
        if bytes <= self.held {
            return true;
        }
        // Grow in steps, not per frame.
        let want = bytes.max(self.held * 2).max(64 * 1024);
        if self.budget.try_take(want - self.held) {
            self.held = want;
            true
        } else if self.budget.try_take(bytes - self.held) {
            self.held = bytes;
            true
        } else {
            false
        }
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

impl BodyBudget {
    fn take(&self, bytes: u64) -> Option<BudgetPermit> {
        let bytes = usize::try_from(bytes).ok()?;
        self.try_take(bytes).then(|| BudgetPermit {
            budget: self.clone(),
            held: bytes,
        })
    }
}

fn busy() -> Refusal {
    Refusal::new(
        429,
        "the mirror is receiving too many request bodies at once; retry in a few seconds",
    )
}

/// A request body that could not be read: cut off by the server's body timeouts (408) or
/// broken by the client (400).
fn body_error(error: axum::Error, what: &str) -> Refusal {
    match crate::layers::body_limit(&error) {
        Some(BodyLimitError::Stalled(after)) => Refusal::new(
            408,
            format!("reading {what}: nothing arrived for {after:?}; the request was cut off"),
        ),
        Some(BodyLimitError::TooSlow { rate, minimum }) => Refusal::new(
            408,
            format!(
                "reading {what}: it arrived at {rate} bytes/s, under the minimum of {minimum}; \
                 the request was cut off"
            ),
        ),
        None => Refusal::new(400, format!("reading {what}: {error}")),
    }
}

/// A request to a resource named by a digest, matched ([`digest_resource`]).
pub enum Routed {
    /// GET or HEAD of the resource named by the digest.
    Read(String, ApiRequest),
    /// The resource's write method.
    Write(String, ApiRequest),
    /// Answered already: not a digest (404), or a method the resource does not take (405).
    Answered(Response),
}

/// How a resource named by a digest is written, if it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    Never,
    Put,
    Post,
}

impl Writes {
    fn method(self) -> Option<Method> {
        match self {
            Writes::Never => None,
            Writes::Put => Some(Method::PUT),
            Writes::Post => Some(Method::POST),
        }
    }

    /// The `Allow` header of such a resource.
    fn allow(self) -> &'static str {
        match self {
            Writes::Never => "GET, HEAD",
            Writes::Put => "GET, HEAD, PUT",
            Writes::Post => "GET, HEAD, POST",
        }
    }
}

/// The method and path matching of a resource named by a digest (`…/SHA256`, `…/KEY`) that
/// answers GET and HEAD and is written as `writes` says: a read or a write of the digest, or
/// the answer already: `404` (the API's) when the parameter is not a digest, `405` with
/// `Allow`, labelled `label`, for any other method.
pub fn digest_resource(
    param: super::Param,
    request: Request,
    writes: Writes,
    label: &'static str,
) -> Routed {
    let request = ApiRequest::new(request);
    let Some(digest) = super::param(param).filter(|digest| valid_digest(digest)) else {
        return Routed::Answered(unknown(request.head()));
    };
    if request.read() {
        return Routed::Read(digest, request);
    }
    if writes.method().as_ref() == Some(request.method()) {
        return Routed::Write(digest, request);
    }
    Routed::Answered(super::method_not_allowed(
        label,
        request.method(),
        writes.allow(),
        request.head(),
    ))
}

/// The API's 404 for paths it does not have, whatever the method.
pub fn unknown(head: bool) -> Response {
    labelled(
        "precomp_unknown",
        text(
            StatusCode::NOT_FOUND,
            "not found: the artifact API has /precomp/v1/artifacts/SHA256, \
             /precomp/v1/manifests/KEY, /precomp/v1/index[/PACKAGE], /precomp/v1/failures[/PACKAGE], \
             /precomp/v1/misses, /precomp/v1/verdicts/KEY and /precomp/v1/jobs[/...]",
            head,
        ),
    )
}

/// The request's token, authenticated by [`crate::access::authorize`] (which checked the
/// route's scopes), checked further with `may` (what its keys allow) before any body is read.
pub async fn token(
    artifacts: &Arc<Artifacts>,
    parts: &Parts,
    may: fn(&Artifacts, &Publisher) -> Result<(), Refusal>,
) -> Result<Publisher, Refusal> {
    let principal = crate::access::principal(&parts.extensions)?;
    blocking(artifacts, move |a| {
        may(a, &principal.publisher)?;
        Ok(principal.publisher)
    })
    .await
}

/// An upload: the token could publish something.
pub async fn publisher(artifacts: &Arc<Artifacts>, parts: &Parts) -> Result<Publisher, Refusal> {
    token(artifacts, parts, |a, publisher| {
        a.trusted_for(publisher).map(drop)
    })
    .await
}

/// The token (what it may do is checked later, e.g. by job kind).
pub fn any_token(parts: &Parts) -> Result<Publisher, Refusal> {
    crate::access::principal(&parts.extensions).map(|principal| principal.publisher)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Refuses early a body whose declared length is over `limit`.
pub fn check_length(headers: &HeaderMap, limit: u64, what: &str) -> Result<(), Refusal> {
    match declared_length(headers) {
        Some(length) if length > limit => Err(too_large(what, limit)),
        _ => Ok(()),
    }
}

/// `201 Created` for something new, `200 OK` for what was already there.
pub fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

pub fn too_large(what: &str, limit: u64) -> Refusal {
    Refusal::new(413, format!("{what} is over the limit of {limit} bytes"))
}

/// Streams an upload into a temporary file under the store's `tmp/`, hashing it, bounded by
/// `limit`; the file is synced. Dropping the returned file deletes it.
pub async fn receive(
    artifacts: &Arc<Artifacts>,
    mut body: Body,
    limit: u64,
) -> Result<(tempfile::NamedTempFile, [u8; 32], u64), Refusal> {
    // The body's frames go to a blocking task that hashes them and writes them into a file
    // in `tmp/`: neither the SHA-256 of up to 256 MiB nor the file writes run on the runtime.
    // The bounded channel makes a slow disk slow the reads down, not fill memory.
    let (frames, mut received) = tokio::sync::mpsc::channel::<Bytes>(8);
    let dir = artifacts.blobs().tmp_dir();
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(|e| Refusal::internal(format!("{}: {e}", dir.display())))?;
        let io_error =
            |e: std::io::Error| Refusal::internal(format!("{}: {e}", tmp.path().display()));
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut file = tmp.as_file();
        while let Some(data) = received.blocking_recv() {
            hasher.update(&data);
            file.write_all(&data).map_err(io_error)?;
            size += data.len() as u64;
        }
        file.sync_all().map_err(io_error)?;
        Ok::<_, Refusal>((tmp, hasher.finalize().into(), size))
    });
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        // On an error the sender is dropped on return: the writer ends and its temporary
        // file is removed when dropped.
        let frame = frame.map_err(|e| body_error(e, "the artifact"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > limit {
            return Err(too_large("the artifact", limit));
        }
        if frames.send(data).await.is_err() {
            // The writer stopped (its error is returned below).
            break;
        }
    }
    drop(frames);
    let (tmp, digest, written) = writer.await.unwrap_or_else(|e| {
        Err(Refusal::internal(format!(
            "artifact upload task failed: {e}"
        )))
    })?;
    if written != size {
        return Err(Refusal::internal(format!(
            "{}: {written} of {size} bytes written",
            tmp.path().display()
        )));
    }
    Ok((tmp, digest, size))
}

/// Bound on the body read and discarded before a refusal is sent, so that the client, still
/// sending, reads the answer instead of a connection reset.
const MAX_DRAIN: u64 = 32 * 1024 * 1024;

/// Reads and discards an unread body (at most [`MAX_DRAIN`] bytes, for at most 10 seconds).
/// Returns whether it was read to its end, so the connection can be kept.
async fn drain(mut body: Body, headers: &HeaderMap) -> bool {
    if declared_length(headers).is_some_and(|length| length > MAX_DRAIN) {
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
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or(false)
}

pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Refusal> {
    serde_json::from_slice(bytes).map_err(|e| {
        Refusal::new(
            400,
            format!("the {what} is not the JSON docs/protocol.md describes: {e}"),
        )
    })
}

/// An optional JSON body: empty (or blank) is `T::default()`.
pub fn optional_json<T: serde::de::DeserializeOwned + Default>(
    bytes: &[u8],
    what: &str,
) -> Result<T, Refusal> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse_json(bytes, what)
    }
}

/// 64 lowercase hex digits (the routes accept no other) as bytes.
pub fn parse_digest(hex_text: &str) -> [u8; 32] {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut digest).expect("routes accept only 64 hex digits");
    digest
}

/// A decimal number in a path (a trust document version, a job id): no sign, no leading
/// zero, not zero.
pub fn path_number(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || text.starts_with('0') {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Runs the artifact service's work (SQLite, disk) on a blocking thread. A panic there is a
/// 500, not a crash.
pub async fn blocking<T, F>(artifacts: &Arc<Artifacts>, work: F) -> Result<T, Refusal>
where
    T: Send + 'static,
    F: FnOnce(&Artifacts) -> Result<T, Refusal> + Send + 'static,
{
    let artifacts = Arc::clone(artifacts);
    tokio::task::spawn_blocking(move || work(&artifacts))
        .await
        .unwrap_or_else(|e| Err(Refusal::internal(format!("artifact task failed: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_numbers_are_plain_decimals() {
        assert_eq!(path_number("12"), Some(12));
        for bad in ["", "0", "012", "x", "-1", "+1", "123456789012345678901"] {
            assert_eq!(path_number(bad), None, "{bad}");
        }
    }
}
