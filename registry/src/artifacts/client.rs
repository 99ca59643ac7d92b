//! A client of the artifact API, for `precomp build` (publish, failures, misses to build) and
//! `precomp fetch` (index, manifests, artifacts, reporting misses). Async (reqwest); callers
//! without a runtime build a current-thread tokio runtime and `block_on` each call.
//!
//! Every download is bounded; an artifact is checked against the digest it was asked by.
//! Errors say what failed and what to do next.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use precomp_proto::manifest::MAX_SIGNED_MANIFEST_SIZE;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::{
    ArtifactStored, FailureRecorded, FailureReport, Failures, Index, ManifestStored, MissRecorded,
    MissReport, Misses, API_PREFIX, MAX_ARTIFACT_SIZE, MAX_FAILURE_LOG, MAX_JSON_RESPONSE,
};
use super::{HeartbeatRequest, Lease, LeaseReleased, LeaseRenewed, LeaseRequest};
use super::{Packages, VerdictStored, Verdicts};
use super::{ReleaseOutcome, ReleaseRequest, MAX_RELEASE_REASON};

/// Bound on the text of an error answer kept for the message.
const MAX_ERROR_BODY: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: {reason}; is the mirror running there? (check --mirror / the URL)")]
    Connect { url: String, reason: String },
    #[error("{url}: no answer within {timeout:?}; the mirror may be overloaded, try again")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: this needs an upload token: pass --token or set PRECOMP_TOKEN (the mirror's operator makes one with `precomp token create --name NAME`)")]
    NoToken { url: String },
    #[error("{url}: the mirror refused the token: {message}")]
    Unauthorized { url: String, message: String },
    #[error("{url}: the mirror refused: {message}")]
    Forbidden { url: String, message: String },
    #[error("{url}: the mirror refused the upload ({status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: the answer is over the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: the artifact's sha256 is {actual}, not the {expected} asked for; the mirror or the network corrupted it: do not use it")]
    Digest {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{url}: the answer is not the JSON docs/protocol.md describes: {reason}; are the mirror and this precomp the same version?")]
    Json { url: String, reason: String },
    #[error("mirror URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

/// Whether an upload stored something new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uploaded {
    Created,
    AlreadyPresent,
}

/// The artifact API of one mirror.
#[derive(Clone, Debug)]
pub struct ArtifactClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    timeout: Duration,
}

impl ArtifactClient {
    /// A client of the mirror at `base_url` (e.g. `http://mirror:4000`), with the upload token
    /// if this caller publishes or lists misses.
    pub fn new(base_url: &str, token: Option<String>) -> Result<ArtifactClient, ClientError> {
        ArtifactClient::with_timeout(base_url, token, Duration::from_secs(300))
    }

    /// [`ArtifactClient::new`] with a bound on each whole exchange.
    pub fn with_timeout(
        base_url: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<ArtifactClient, ClientError> {
        let base = base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::BadUrl {
                url: base_url.to_string(),
                reason: "must be an http:// or https:// URL".to_string(),
            });
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("precomp/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .no_gzip()
            .build()
            .map_err(|e| ClientError::BadUrl {
                url: base_url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(ArtifactClient {
            http,
            base,
            token: token.filter(|t| !t.is_empty()),
            timeout,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}/{path}", self.base)
    }

    /// `PUT artifacts/SHA256`. The mirror stores the body only if its sha256 is `sha256`.
    pub async fn upload_artifact(
        &self,
        sha256: &[u8; 32],
        bytes: impl Into<Bytes>,
    ) -> Result<Uploaded, ClientError> {
        let url = self.url(&format!("artifacts/{}", hex::encode(sha256)));
        let (status, body) = self
            .send(Method::PUT, &url, Some(bytes.into()), true, MAX_ERROR_BODY)
            .await?;
        let _: ArtifactStored = parse(&url, &body)?;
        Ok(uploaded(status))
    }

    /// Whether the mirror has the artifact (`HEAD artifacts/SHA256`), to skip an upload.
    pub async fn has_artifact(&self, sha256: &[u8; 32]) -> Result<bool, ClientError> {
        let url = self.url(&format!("artifacts/{}", hex::encode(sha256)));
        match self.send(Method::HEAD, &url, None, false, 0).await {
            Ok(_) => Ok(true),
            Err(ClientError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `PUT manifests/KEY` with an encoded `SignedManifest`. The artifact must be uploaded
    /// first.
    pub async fn upload_manifest(
        &self,
        key: &str,
        signed_manifest: impl Into<Bytes>,
    ) -> Result<(Uploaded, ManifestStored), ClientError> {
        let url = self.url(&format!("manifests/{key}"));
        let (status, body) = self
            .send(
                Method::PUT,
                &url,
                Some(signed_manifest.into()),
                true,
                MAX_ERROR_BODY,
            )
            .await?;
        let stored: ManifestStored = parse(&url, &body)?;
        Ok((uploaded(status), stored))
    }

    /// `POST failures`. A log over [`MAX_FAILURE_LOG`] is cut to its end (where the error is).
    pub async fn record_failure(
        &self,
        report: &FailureReport,
    ) -> Result<FailureRecorded, ClientError> {
        let url = self.url("failures");
        let mut report = report.clone();
        report.log = log_tail(&report.log, MAX_FAILURE_LOG);
        let body = serde_json::to_vec(&report).expect("plain data serialises");
        let (_, body) = self
            .send(Method::POST, &url, Some(body.into()), true, MAX_ERROR_BODY)
            .await?;
        parse(&url, &body)
    }

    /// `POST misses`: no token needed.
    pub async fn report_miss(&self, report: &MissReport) -> Result<MissRecorded, ClientError> {
        let url = self.url("misses");
        let body = serde_json::to_vec(report).expect("plain data serialises");
        let (_, body) = self
            .send(Method::POST, &url, Some(body.into()), false, MAX_ERROR_BODY)
            .await?;
        parse(&url, &body)
    }

    /// `GET misses` (token): the open misses, most reported first.
    pub async fn misses(&self) -> Result<Misses, ClientError> {
        let url = self.url("misses");
        let (_, body) = self
            .send(Method::GET, &url, None, true, MAX_JSON_RESPONSE)
            .await?;
        parse(&url, &body)
    }

    /// `POST jobs/lease` (token): the next job `request` matches (a build job: the
    /// most-reported open miss; an audit job: the build with the fewest audits), leased to
    /// this worker; `None` when there is none (`204`).
    pub async fn lease(&self, request: &LeaseRequest) -> Result<Option<Lease>, ClientError> {
        let url = self.url("jobs/lease");
        let body = serde_json::to_vec(request).expect("plain data serialises");
        let (status, body) = self
            .send(
                Method::POST,
                &url,
                Some(body.into()),
                true,
                MAX_JSON_RESPONSE,
            )
            .await?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        parse(&url, &body).map(Some)
    }

    /// `POST jobs/ID/heartbeat` (the token that leased the job): renews the lease, for
    /// `lease_seconds` if given, else for its own length. A lost lease or a closed job is
    /// [`ClientError::Refused`] with status `409`: stop building it.
    pub async fn heartbeat(
        &self,
        job: u64,
        lease_seconds: Option<u64>,
    ) -> Result<LeaseRenewed, ClientError> {
        let url = self.url(&format!("jobs/{job}/heartbeat"));
        let body =
            serde_json::to_vec(&HeartbeatRequest { lease_seconds }).expect("plain data serialises");
        let (_, body) = self
            .send(Method::POST, &url, Some(body.into()), true, MAX_ERROR_BODY)
            .await?;
        parse(&url, &body)
    }

    /// `POST jobs/ID/release` (the token that leased the job): gives it back to the queue.
    pub async fn release(&self, job: u64) -> Result<LeaseReleased, ClientError> {
        let url = self.url(&format!("jobs/{job}/release"));
        let (_, body) = self
            .send(Method::POST, &url, Some(Bytes::new()), true, MAX_ERROR_BODY)
            .await?;
        parse(&url, &body)
    }

    /// `POST jobs/ID/release` with outcome `failed` (audit jobs: the rebuild failed here), so
    /// the mirror never offers the job to this token again. `reason` is sent as one line, cut
    /// to [`MAX_RELEASE_REASON`] bytes.
    pub async fn release_failed(
        &self,
        job: u64,
        reason: &str,
    ) -> Result<LeaseReleased, ClientError> {
        let url = self.url(&format!("jobs/{job}/release"));
        let request = ReleaseRequest {
            outcome: ReleaseOutcome::Failed,
            reason: Some(one_line(reason, MAX_RELEASE_REASON)),
        };
        let body = serde_json::to_vec(&request).expect("plain data serialises");
        let (_, body) = self
            .send(Method::POST, &url, Some(body.into()), true, MAX_ERROR_BODY)
            .await?;
        parse(&url, &body)
    }

    /// `GET index/PACKAGE`: every published build of the package (none is an empty list).
    pub async fn index(&self, package: &str) -> Result<Index, ClientError> {
        let url = self.url(&format!("index/{package}"));
        let (_, body) = self
            .send(Method::GET, &url, None, false, MAX_JSON_RESPONSE)
            .await?;
        parse(&url, &body)
    }

    /// `GET index`: the packages with at least one build.
    pub async fn packages(&self) -> Result<Packages, ClientError> {
        let url = self.url("index");
        let (_, body) = self
            .send(Method::GET, &url, None, false, MAX_JSON_RESPONSE)
            .await?;
        parse(&url, &body)
    }

    /// `GET verdicts/KEY`: the audit verdicts on a build.
    pub async fn verdicts(&self, key: &str) -> Result<Verdicts, ClientError> {
        let url = self.url(&format!("verdicts/{key}"));
        let (_, body) = self
            .send(Method::GET, &url, None, false, MAX_JSON_RESPONSE)
            .await?;
        parse(&url, &body)
    }

    /// `POST verdicts/KEY` with an encoded `SignedVerdict` (an auditor's token).
    pub async fn post_verdict(
        &self,
        key: &str,
        signed_verdict: impl Into<Bytes>,
    ) -> Result<VerdictStored, ClientError> {
        let url = self.url(&format!("verdicts/{key}"));
        let (_, body) = self
            .send(
                Method::POST,
                &url,
                Some(signed_verdict.into()),
                true,
                MAX_ERROR_BODY,
            )
            .await?;
        parse(&url, &body)
    }

    /// `GET failures/PACKAGE`.
    pub async fn failures(&self, package: &str) -> Result<Failures, ClientError> {
        let url = self.url(&format!("failures/{package}"));
        let (_, body) = self
            .send(Method::GET, &url, None, false, MAX_JSON_RESPONSE)
            .await?;
        parse(&url, &body)
    }

    /// `GET manifests/KEY`: the signed manifest's bytes, `None` if none is published. The
    /// caller verifies it with the keys it trusts.
    pub async fn manifest(&self, key: &str) -> Result<Option<Bytes>, ClientError> {
        let url = self.url(&format!("manifests/{key}"));
        not_found_is_none(
            self.send(
                Method::GET,
                &url,
                None,
                false,
                MAX_SIGNED_MANIFEST_SIZE as u64,
            )
            .await,
        )
    }

    /// `GET artifacts/SHA256`: the artifact, checked against `sha256`; `None` if absent.
    pub async fn artifact(&self, sha256: &[u8; 32]) -> Result<Option<Bytes>, ClientError> {
        let expected = hex::encode(sha256);
        let url = self.url(&format!("artifacts/{expected}"));
        let Some(body) = not_found_is_none(
            self.send(Method::GET, &url, None, false, MAX_ARTIFACT_SIZE)
                .await,
        )?
        else {
            return Ok(None);
        };
        let actual: [u8; 32] = Sha256::digest(&body).into();
        if actual != *sha256 {
            return Err(ClientError::Digest {
                url,
                expected,
                actual: hex::encode(actual),
            });
        }
        Ok(Some(body))
    }

    /// `GET trust` (the current signed trust document) or `GET trust/VERSION`; `None` if the
    /// mirror has none. The caller verifies it (`precomp_ops::trust::refresh`).
    pub async fn trust_document(&self, version: Option<u64>) -> Result<Option<Bytes>, ClientError> {
        let url = match version {
            Some(version) => self.url(&format!("trust/{version}")),
            None => self.url("trust"),
        };
        let limit = precomp_proto::trust::MAX_TRUST_DOCUMENT_SIZE as u64;
        not_found_is_none(self.send(Method::GET, &url, None, false, limit).await)
    }

    /// One exchange: the status and the body (at most `limit` bytes) of a 2xx answer, else the
    /// error its status means.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
        needs_token: bool,
        limit: u64,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut request = self.http.request(method.clone(), url);
        if needs_token {
            let token = self.token.as_ref().ok_or_else(|| ClientError::NoToken {
                url: url.to_string(),
            })?;
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let exchange = async {
            let mut response = request.send().await.map_err(|e| ClientError::Connect {
                url: url.to_string(),
                reason: error_chain(&e),
            })?;
            let status = response.status();
            let limit = if status.is_success() {
                limit
            } else {
                MAX_ERROR_BODY
            };
            if response.content_length().is_some_and(|n| n > limit) && status.is_success() {
                return Err(ClientError::TooLarge {
                    url: url.to_string(),
                    limit,
                });
            }
            let mut bytes = BytesMut::new();
            if method != Method::HEAD {
                while let Some(chunk) =
                    response.chunk().await.map_err(|e| ClientError::Connect {
                        url: url.to_string(),
                        reason: error_chain(&e),
                    })?
                {
                    if (bytes.len() + chunk.len()) as u64 > limit {
                        if status.is_success() {
                            return Err(ClientError::TooLarge {
                                url: url.to_string(),
                                limit,
                            });
                        }
                        break;
                    }
                    bytes.extend_from_slice(&chunk);
                }
            }
            Ok((status, bytes.freeze()))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.to_string(),
                timeout: self.timeout,
            })??;
        if status.is_success() {
            return Ok((status, bytes));
        }
        let message = String::from_utf8_lossy(&bytes).trim().to_string();
        let url = url.to_string();
        Err(match status.as_u16() {
            401 => ClientError::Unauthorized { url, message },
            403 => ClientError::Forbidden { url, message },
            status @ (400 | 409 | 413 | 422) => ClientError::Refused {
                url,
                status,
                message,
            },
            status => ClientError::Status {
                url,
                status,
                message,
            },
        })
    }
}

fn uploaded(status: StatusCode) -> Uploaded {
    if status == StatusCode::CREATED {
        Uploaded::Created
    } else {
        Uploaded::AlreadyPresent
    }
}

fn not_found_is_none(
    result: Result<(StatusCode, Bytes), ClientError>,
) -> Result<Option<Bytes>, ClientError> {
    match result {
        Ok((_, body)) => Ok(Some(body)),
        Err(ClientError::Status { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| ClientError::Json {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `text` on one line (control characters as spaces), cut to at most `limit` bytes at a
/// character boundary.
pub(crate) fn one_line(text: &str, limit: usize) -> String {
    let mut line = String::new();
    for c in text.trim().chars() {
        let c = if c.is_control() { ' ' } else { c };
        if line.len() + c.len_utf8() > limit {
            break;
        }
        line.push(c);
    }
    line
}

/// The last `limit` bytes of `log` (at a character boundary), marked as cut.
pub(crate) fn log_tail(log: &str, limit: usize) -> String {
    if log.len() <= limit {
        return log.to_string();
    }
    const MARK: &str = "[precomp: log cut to its end]\n";
    let mut start = log.len() - (limit - MARK.len());
    while !log.is_char_boundary(start) {
        start += 1;
    }
    format!("{MARK}{}", &log[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_logs_keep_their_end_within_the_limit() {
        assert_eq!(log_tail("short", 100), "short");
        let log = format!("{}é the error", "x".repeat(200));
        let cut = log_tail(&log, 64);
        assert!(cut.len() <= 64, "{}", cut.len());
        assert!(cut.ends_with("é the error"));
        assert!(cut.starts_with("[precomp: log cut"));
    }

    #[test]
    fn reasons_are_one_line_within_the_limit() {
        assert_eq!(one_line(" a\nb\tc ", 100), "a b c");
        let cut = one_line(&"é".repeat(100), 7);
        assert_eq!(cut, "ééé");
    }

    #[test]
    fn refuses_non_http_urls() {
        assert!(matches!(
            ArtifactClient::new("ftp://x", None),
            Err(ClientError::BadUrl { .. })
        ));
        let client = ArtifactClient::new("http://m:4000/", None).unwrap();
        assert_eq!(client.url("misses"), "http://m:4000/precomp/v1/misses");
    }
}
