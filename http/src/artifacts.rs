//! The mirror's artifact API (`docs/protocol.md`, "Precompiled artifacts API"), typed: for
//! `precomp fetch` (index, manifests, artifacts, misses, the trust document), `precomp build`
//! and `worker` (publish, failures, misses to build, jobs) and `precomp audit` (verdicts).
//!
//! Every answer is bounded by the limit [`precomp_proto::api`] sets for it (the server's
//! own); an artifact's SHA-256 is checked as it arrives. Which calls are retried after an
//! ambiguous failure ([`crate::retry`]): every read; `PUT`s (content-addressed: a repeat stores
//! nothing new); `POST failures` and `POST misses` (a repeat only counts the report once
//! more); `POST verdicts/KEY` (an auditor's verdict replaces its earlier one);
//! `POST jobs/ID/heartbeat` (renews the same lease). Not `POST jobs/lease` (a repeat could
//! lease a second job) nor `POST jobs/ID/release` (a repeat after it went through is a 409):
//! those are repeated only when the mirror surely did not act (no connection, 408, 429, 503).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use precomp_proto::api::{
    ArtifactStored, FailureRecorded, FailureReport, Failures, HeartbeatRequest, Index, Lease,
    LeaseReleased, LeaseRenewed, LeaseRequest, ManifestStored, MissRecorded, MissReport, Misses,
    Packages, ReleaseOutcome, ReleaseRequest, VerdictStored, Verdicts, API_PREFIX,
    MAX_ARTIFACT_SIZE, MAX_FAILURE_LOG, MAX_JSON_RESPONSE, MAX_MANIFEST_SIZE, MAX_MISS_LOCK,
    MAX_MISS_REASON, MAX_RELEASE_REASON, MAX_TRUST_DOCUMENT_SIZE,
};

use crate::{ByteCounter, Client, Error, Idempotency, Request, Settings, Sink, MAX_ERROR_BODY};

/// Whether an upload stored something new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uploaded {
    Created,
    AlreadyPresent,
}

/// The artifact API of one mirror.
#[derive(Clone, Debug)]
pub struct ArtifactClient {
    client: Client,
    base: String,
}

impl ArtifactClient {
    /// A client of the mirror at `base_url` (e.g. `http://mirror:4000`), with the upload token
    /// if this caller publishes or lists misses; the default [`Settings`].
    pub fn new(base_url: &str, token: Option<String>) -> Result<ArtifactClient, Error> {
        ArtifactClient::with_settings(
            base_url,
            Settings {
                token,
                ..Settings::default()
            },
        )
    }

    /// [`ArtifactClient::new`] with a bound on each call as a whole, retries included.
    pub fn with_timeout(
        base_url: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<ArtifactClient, Error> {
        ArtifactClient::with_settings(
            base_url,
            Settings {
                token,
                timeout,
                ..Settings::default()
            },
        )
    }

    /// A client of the mirror at `base_url` with `settings` (its `server` is the mirror's).
    pub fn with_settings(base_url: &str, settings: Settings) -> Result<ArtifactClient, Error> {
        let base = base_url.trim().trim_end_matches('/').to_string();
        Client::check_url("mirror", &base)?;
        let client = Client::new(Settings {
            server: "the mirror",
            ..settings
        })?;
        Ok(ArtifactClient { client, base })
    }

    /// Every body chunk received is also counted by `counter`.
    pub fn with_counter(mut self, counter: Arc<dyn ByteCounter>) -> ArtifactClient {
        self.client = self.client.with_counter(counter);
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The HTTP client underneath (its settings, for callers that make other requests).
    pub fn http(&self) -> &Client {
        &self.client
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}/{path}", self.base)
    }

    async fn json<T: DeserializeOwned>(&self, request: Request) -> Result<T, Error> {
        let (_, body) = self.client.fetch(&request).await?;
        parse(request.url(), &body)
    }

    /// `PUT artifacts/SHA256`. The mirror stores the body only if its sha256 is `sha256`.
    pub async fn upload_artifact(
        &self,
        sha256: &[u8; 32],
        bytes: impl Into<Bytes>,
    ) -> Result<Uploaded, Error> {
        let url = self.url(&format!("artifacts/{}", hex::encode(sha256)));
        let request = Request::put(url, bytes).with_token().limit(MAX_ERROR_BODY);
        let (head, body) = self.client.fetch(&request).await?;
        let _: ArtifactStored = parse(request.url(), &body)?;
        Ok(uploaded(head.status))
    }

    /// Whether the mirror has the artifact (`HEAD artifacts/SHA256`), to skip an upload.
    pub async fn has_artifact(&self, sha256: &[u8; 32]) -> Result<bool, Error> {
        let url = self.url(&format!("artifacts/{}", hex::encode(sha256)));
        let mut nothing = Vec::new();
        let found = self
            .client
            .send(&Request::head(url).with_token_if_any(), &mut nothing)
            .await;
        Ok(crate::not_found_is_none(found)?.is_some())
    }

    /// `PUT manifests/KEY` with an encoded `SignedManifest`. The artifact must be uploaded
    /// first.
    pub async fn upload_manifest(
        &self,
        key: &str,
        signed_manifest: impl Into<Bytes>,
    ) -> Result<(Uploaded, ManifestStored), Error> {
        let url = self.url(&format!("manifests/{key}"));
        let request = Request::put(url, signed_manifest)
            .with_token()
            .limit(MAX_ERROR_BODY);
        let (head, body) = self.client.fetch(&request).await?;
        let stored: ManifestStored = parse(request.url(), &body)?;
        Ok((uploaded(head.status), stored))
    }

    /// `POST failures`. A log over [`MAX_FAILURE_LOG`] is cut to its end (where the error is).
    pub async fn record_failure(&self, report: &FailureReport) -> Result<FailureRecorded, Error> {
        let mut report = report.clone();
        report.log = log_tail(&report.log, MAX_FAILURE_LOG);
        let body = serde_json::to_vec(&report).expect("plain data serialises");
        let request = Request::post(self.url("failures"), body, Idempotency::Idempotent)
            .json()
            .with_token()
            .limit(MAX_ERROR_BODY);
        self.json(request).await
    }

    /// `POST misses`: no token needed. The reason is sent as one line of at most
    /// [`MAX_MISS_REASON`] bytes and the lock cut to [`MAX_MISS_LOCK`], the mirror's bounds.
    pub async fn report_miss(&self, report: &MissReport) -> Result<MissRecorded, Error> {
        let mut report = report.clone();
        report.reason = one_line(&report.reason, MAX_MISS_REASON);
        if report.lock.len() > MAX_MISS_LOCK {
            let mut end = MAX_MISS_LOCK;
            while !report.lock.is_char_boundary(end) {
                end -= 1;
            }
            report.lock.truncate(end);
        }
        let body = serde_json::to_vec(&report).expect("plain data serialises");
        let request = Request::post(self.url("misses"), body, Idempotency::Idempotent)
            .with_token_if_any()
            .json()
            .limit(MAX_ERROR_BODY);
        self.json(request).await
    }

    /// `GET misses` (token): the open misses, most reported first.
    pub async fn misses(&self) -> Result<Misses, Error> {
        let request = Request::get(self.url("misses"), MAX_JSON_RESPONSE).with_token();
        self.json(request).await
    }

    /// `POST jobs/lease` (token): the next job `request` matches (a build job: the
    /// most-reported open miss; an audit job: the build with the fewest audits), leased to
    /// this worker; `None` when there is none (`204`).
    pub async fn lease(&self, request: &LeaseRequest) -> Result<Option<Lease>, Error> {
        let body = serde_json::to_vec(request).expect("plain data serialises");
        let request = Request::post(self.url("jobs/lease"), body, Idempotency::NotIdempotent)
            .json()
            .with_token()
            .limit(MAX_JSON_RESPONSE);
        let (head, body) = self.client.fetch(&request).await?;
        if head.status == 204 {
            return Ok(None);
        }
        parse(request.url(), &body).map(Some)
    }

    /// `POST jobs/ID/heartbeat` (the token that leased the job): renews the lease, for
    /// `lease_seconds` if given, else for its own length. A lost lease or a closed job is
    /// [`Error::Refused`] with status `409`: stop building it.
    pub async fn heartbeat(
        &self,
        job: u64,
        lease_seconds: Option<u64>,
    ) -> Result<LeaseRenewed, Error> {
        let body =
            serde_json::to_vec(&HeartbeatRequest { lease_seconds }).expect("plain data serialises");
        let url = self.url(&format!("jobs/{job}/heartbeat"));
        let request = Request::post(url, body, Idempotency::Idempotent)
            .json()
            .with_token()
            .limit(MAX_ERROR_BODY);
        self.json(request).await
    }

    /// `POST jobs/ID/release` (the token that leased the job): gives it back to the queue.
    pub async fn release(&self, job: u64) -> Result<LeaseReleased, Error> {
        let url = self.url(&format!("jobs/{job}/release"));
        let request = Request::post(url, Bytes::new(), Idempotency::NotIdempotent)
            .with_token()
            .limit(MAX_ERROR_BODY);
        self.json(request).await
    }

    /// `POST jobs/ID/release` with outcome `failed` (audit jobs: the rebuild failed here), so
    /// the mirror never offers the job to this token again. `reason` is sent as one line, cut
    /// to [`MAX_RELEASE_REASON`] bytes.
    pub async fn release_failed(&self, job: u64, reason: &str) -> Result<LeaseReleased, Error> {
        let release = ReleaseRequest {
            outcome: ReleaseOutcome::Failed,
            reason: Some(one_line(reason, MAX_RELEASE_REASON)),
        };
        let body = serde_json::to_vec(&release).expect("plain data serialises");
        let url = self.url(&format!("jobs/{job}/release"));
        let request = Request::post(url, body, Idempotency::NotIdempotent)
            .json()
            .with_token()
            .limit(MAX_ERROR_BODY);
        self.json(request).await
    }

    /// `GET index/PACKAGE`: every published build of the package (none is an empty list).
    pub async fn index(&self, package: &str) -> Result<Index, Error> {
        let request = Request::get(self.url(&format!("index/{package}")), MAX_JSON_RESPONSE)
            .with_token_if_any();
        match self.json(request).await {
            // The mirror answers an empty list; another server may say 404.
            Err(Error::Status { status: 404, .. }) => Ok(Index {
                package: package.to_string(),
                builds: Vec::new(),
            }),
            other => other,
        }
    }

    /// `GET index`: the packages with at least one build.
    pub async fn packages(&self) -> Result<Packages, Error> {
        self.json(Request::get(self.url("index"), MAX_JSON_RESPONSE).with_token_if_any())
            .await
    }

    /// `GET verdicts/KEY`: the audit verdicts on a build.
    pub async fn verdicts(&self, key: &str) -> Result<Verdicts, Error> {
        let request = Request::get(self.url(&format!("verdicts/{key}")), MAX_JSON_RESPONSE)
            .with_token_if_any();
        self.json(request).await
    }

    /// `POST verdicts/KEY` with an encoded `SignedVerdict` (an auditor's token).
    pub async fn post_verdict(
        &self,
        key: &str,
        signed_verdict: impl Into<Bytes>,
    ) -> Result<VerdictStored, Error> {
        let url = self.url(&format!("verdicts/{key}"));
        let request = Request::post(url, signed_verdict, Idempotency::Idempotent)
            .with_token()
            .limit(MAX_ERROR_BODY);
        self.json(request).await
    }

    /// `GET failures/PACKAGE`.
    pub async fn failures(&self, package: &str) -> Result<Failures, Error> {
        let request = Request::get(self.url(&format!("failures/{package}")), MAX_JSON_RESPONSE)
            .with_token_if_any();
        self.json(request).await
    }

    /// `GET manifests/KEY`: the signed manifest's bytes, `None` if none is published. The
    /// caller verifies it with the keys it trusts.
    pub async fn manifest(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let url = self.url(&format!("manifests/{key}"));
        self.get(&url, MAX_MANIFEST_SIZE).await
    }

    /// `GET artifacts/SHA256`: the artifact, checked against `sha256`; `None` if absent.
    pub async fn artifact(&self, sha256: &[u8; 32]) -> Result<Option<Bytes>, Error> {
        self.artifact_sized(sha256, MAX_ARTIFACT_SIZE).await
    }

    /// [`ArtifactClient::artifact`] of at most `size` bytes (a signed manifest's exact size:
    /// the buffer is made that large at once, and a longer body is refused as it arrives).
    /// The SHA-256 is computed while the body arrives, and checked at its end.
    pub async fn artifact_sized(
        &self,
        sha256: &[u8; 32],
        size: u64,
    ) -> Result<Option<Bytes>, Error> {
        let expected = hex::encode(sha256);
        let url = self.url(&format!("artifacts/{expected}"));
        let limit = size.min(MAX_ARTIFACT_SIZE);
        // An exact size from a signed manifest: one allocation; the default bound: grow.
        let capacity = if size < MAX_ARTIFACT_SIZE { size } else { 0 };
        let mut sink = Digesting::with_capacity(capacity as usize);
        let request = Request::get(url.clone(), limit).with_token_if_any();
        if crate::not_found_is_none(self.client.send(&request, &mut sink).await)?.is_none() {
            return Ok(None);
        }
        let actual: [u8; 32] = sink.hasher.finalize().into();
        if actual != *sha256 {
            return Err(Error::Digest {
                url,
                expected,
                actual: hex::encode(actual),
            });
        }
        Ok(Some(sink.body.freeze()))
    }

    /// `GET trust` (the current signed trust document) or `GET trust/VERSION`; `None` if the
    /// mirror has none. The caller verifies it (`precomp_ops::trust::refresh`).
    pub async fn trust_document(&self, version: Option<u64>) -> Result<Option<Bytes>, Error> {
        let url = match version {
            Some(version) => self.url(&format!("trust/{version}")),
            None => self.url("trust"),
        };
        self.get(&url, MAX_TRUST_DOCUMENT_SIZE).await
    }

    /// `GET url` on the mirror, with the token if the client has one; `None` on 404.
    async fn get(&self, url: &str, limit: u64) -> Result<Option<Bytes>, Error> {
        let request = Request::get(url, limit).with_token_if_any();
        crate::not_found_is_none(self.client.fetch(&request).await.map(|(_, body)| body))
    }
}

/// A body and its SHA-256, computed as the chunks arrive.
struct Digesting {
    hasher: Sha256,
    body: BytesMut,
}

impl Digesting {
    fn with_capacity(capacity: usize) -> Digesting {
        Digesting {
            hasher: Sha256::new(),
            body: BytesMut::with_capacity(capacity),
        }
    }
}

impl Sink for Digesting {
    fn reset(&mut self) {
        self.hasher = Sha256::new();
        self.body.clear();
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.hasher.update(chunk);
        self.body.extend_from_slice(chunk);
        Ok(())
    }
}

fn uploaded(status: u16) -> Uploaded {
    if status == 201 {
        Uploaded::Created
    } else {
        Uploaded::AlreadyPresent
    }
}

fn parse<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Json {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

/// `text` on one line (control characters as spaces), cut to at most `limit` bytes at a
/// character boundary.
pub fn one_line(text: &str, limit: usize) -> String {
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
pub fn log_tail(log: &str, limit: usize) -> String {
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
        assert_eq!(one_line(&"é".repeat(100), 7), "ééé");
        assert_eq!(one_line("ééé", 5), "éé");
    }

    #[test]
    fn refuses_what_is_not_an_http_url() {
        for url in ["ftp://x", "not a url", "http://"] {
            assert!(
                matches!(ArtifactClient::new(url, None), Err(Error::BadUrl { .. })),
                "{url}"
            );
        }
        let client = ArtifactClient::new(" http://m:4000/ ", None).unwrap();
        assert_eq!(client.url("misses"), "http://m:4000/precomp/v1/misses");
    }
}
