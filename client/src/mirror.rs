//! The mirror's artifact API, as a client uses it (`docs/protocol.md`, "Precompiled
//! artifacts API"): the index of a package's builds, signed manifests by key, artifacts by
//! SHA-256, and miss reports.
//!
//! Every body is bounded; transient failures (connection errors, timeouts, 408, 429, 5xx, a
//! body cut short) are retried with exponential backoff; 404 is an answer, not an error.

use std::time::Duration;

use crate::error::ClientError;

/// Bound on an index document.
pub const MAX_INDEX_SIZE: u64 = 16 * 1024 * 1024;

/// Bound on an artifact, whatever its manifest claims.
pub const MAX_ARTIFACT_SIZE: u64 = precomp_proto::artifact::MAX_ARTIFACT_SIZE;

/// Bound on the text of a miss report's lock.
pub const MAX_MISS_LOCK: usize = 256 * 1024;

pub use precomp_proto::api::{
    CompileEnvJson, Index, IndexBuild, MissMember, MissReport, VerdictSummary,
};

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: more than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: {message}")]
    Decode { url: String, message: String },
}

/// Receives the size of every body chunk as it arrives.
pub trait ByteCounter: Send + Sync {
    fn add(&self, bytes: u64);
}

impl ByteCounter for () {
    fn add(&self, _bytes: u64) {}
}

impl ByteCounter for std::sync::atomic::AtomicU64 {
    fn add(&self, bytes: u64) {
        self.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A client of one mirror.
#[derive(Clone)]
pub struct MirrorClient {
    http: reqwest::Client,
    base: String,
    retries: u32,
    backoff: Duration,
}

impl MirrorClient {
    /// `base` is the mirror's root URL (what HEX_MIRROR points at); `retries` extra attempts
    /// are made for transient failures.
    pub fn new(base: &str, retries: u32) -> Result<MirrorClient, ClientError> {
        let base = base.trim().trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base).map_err(|e| ClientError::MirrorUrl {
            url: base.clone(),
            message: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::MirrorUrl {
                url: base,
                message: "only http:// and https:// mirrors are supported".into(),
            });
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("precomp/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::MirrorUrl {
                url: base.clone(),
                message: e.to_string(),
            })?;
        Ok(MirrorClient {
            http,
            base,
            retries,
            backoff: Duration::from_millis(250),
        })
    }

    /// Waits `backoff`, doubling each retry (tests use a short one).
    pub fn with_backoff(mut self, backoff: Duration) -> MirrorClient {
        self.backoff = backoff;
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The builds of `package`; `None` when the mirror has none.
    pub async fn index(
        &self,
        package: &str,
        counter: &dyn ByteCounter,
    ) -> Result<Option<Index>, HttpError> {
        let url = format!("{}/precomp/v1/index/{package}", self.base);
        let Some(body) = self.get(&url, MAX_INDEX_SIZE, counter).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| HttpError::Decode {
                url,
                message: format!("not an index: {e}"),
            })
    }

    /// The signed manifest of `key` (protobuf bytes); `None` when the mirror has none.
    pub async fn manifest(
        &self,
        key: &str,
        counter: &dyn ByteCounter,
    ) -> Result<Option<Vec<u8>>, HttpError> {
        let url = format!("{}/precomp/v1/manifests/{key}", self.base);
        self.get(
            &url,
            precomp_proto::manifest::MAX_SIGNED_MANIFEST_SIZE as u64,
            counter,
        )
        .await
    }

    /// The artifact with SHA-256 `sha256` (lowercase hex), at most `limit` bytes.
    pub async fn artifact(
        &self,
        sha256: &str,
        limit: u64,
        counter: &dyn ByteCounter,
    ) -> Result<Option<Vec<u8>>, HttpError> {
        let url = format!("{}/precomp/v1/artifacts/{sha256}", self.base);
        self.get(&url, limit.min(MAX_ARTIFACT_SIZE), counter).await
    }

    /// Tells the mirror nobody could use what it has for this build, so builders make it.
    pub async fn report_miss(&self, report: &MissReport) -> Result<(), HttpError> {
        let url = format!("{}/precomp/v1/misses", self.base);
        let body = serde_json::to_vec(report).map_err(|e| HttpError::Decode {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let mut attempt = 0;
        loop {
            let result = self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let retry = match result {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) if retryable(response.status().as_u16()) => {
                    status_error(&url, response).await
                }
                Ok(response) => return Err(status_error(&url, response).await),
                Err(e) => transport(&url, e),
            };
            if attempt >= self.retries {
                return Err(retry);
            }
            tokio::time::sleep(self.backoff * 2u32.saturating_pow(attempt)).await;
            attempt += 1;
        }
    }

    /// GET `url`: the body (at most `limit` bytes), `None` on 404, retrying transient
    /// failures.
    async fn get(
        &self,
        url: &str,
        limit: u64,
        counter: &dyn ByteCounter,
    ) -> Result<Option<Vec<u8>>, HttpError> {
        let mut attempt = 0;
        loop {
            let error = match self.get_once(url, limit, counter).await {
                Ok(body) => return Ok(body),
                Err((error, false)) => return Err(error),
                Err((error, true)) => error,
            };
            if attempt >= self.retries {
                return Err(error);
            }
            tracing::debug!(%url, %error, attempt, "retrying");
            tokio::time::sleep(self.backoff * 2u32.saturating_pow(attempt)).await;
            attempt += 1;
        }
    }

    /// One attempt; on failure the error and whether it is worth retrying.
    async fn get_once(
        &self,
        url: &str,
        limit: u64,
        counter: &dyn ByteCounter,
    ) -> Result<Option<Vec<u8>>, (HttpError, bool)> {
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| (transport(url, e), true))?;
        let status = response.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err((status_error(url, response).await, retryable(status)));
        }
        let too_large = || HttpError::TooLarge {
            url: url.to_string(),
            limit,
        };
        if response.content_length().is_some_and(|n| n > limit) {
            return Err((too_large(), false));
        }
        let mut body =
            Vec::with_capacity(response.content_length().unwrap_or(0).min(limit) as usize);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| (transport(url, e), true))?
        {
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err((too_large(), false));
            }
            counter.add(chunk.len() as u64);
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }
}

fn retryable(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

fn transport(url: &str, error: reqwest::Error) -> HttpError {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    HttpError::Transport {
        url: url.to_string(),
        message,
    }
}

async fn status_error(url: &str, mut response: reqwest::Response) -> HttpError {
    let status = response.status().as_u16();
    // The start of the body says why; the rest is not read.
    let mut bytes = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        bytes.extend_from_slice(&chunk);
        if bytes.len() >= 4096 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut body: String = text.trim().chars().take(300).collect();
    if body.is_empty() {
        body = "(no body)".into();
    }
    HttpError::Status {
        url: url.to_string(),
        status,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A loopback HTTP server answering each request with `answer(n)` (n counts requests).
    fn serve(
        answer: impl Fn(usize) -> (u16, Vec<u8>) + Send + Sync + 'static,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                    line.clear();
                }
                let (status, body) = answer(seen.fetch_add(1, Ordering::SeqCst));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
            }
        });
        (url, count)
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_404_is_an_answer() {
        let (url, count) = serve(|n| match n {
            0 | 1 => (503, b"busy".to_vec()),
            _ => (200, b"artifact".to_vec()),
        });
        let client = MirrorClient::new(&url, 3)
            .unwrap()
            .with_backoff(Duration::from_millis(1));
        let bytes = AtomicU64::new(0);
        let body = client
            .artifact(&"ab".repeat(32), 100, &bytes)
            .await
            .unwrap();
        assert_eq!(body.as_deref(), Some(&b"artifact"[..]));
        assert_eq!(count.load(Ordering::SeqCst), 3);
        assert_eq!(bytes.load(Ordering::SeqCst), 8);

        let (url, _) = serve(|_| (404, b"no".to_vec()));
        let client = MirrorClient::new(&url, 3).unwrap();
        assert_eq!(client.manifest("k", &()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn retries_run_out_and_bodies_are_bounded() {
        let (url, count) = serve(|_| (500, b"broken".to_vec()));
        let client = MirrorClient::new(&url, 2)
            .unwrap()
            .with_backoff(Duration::from_millis(1));
        let error = client.index("jason", &()).await.unwrap_err();
        assert!(
            matches!(error, HttpError::Status { status: 500, .. }),
            "{error}"
        );
        assert_eq!(count.load(Ordering::SeqCst), 3);

        let (url, count) = serve(|_| (200, vec![b'x'; 1000]));
        let client = MirrorClient::new(&url, 2).unwrap();
        let error = client.artifact("ab", 10, &()).await.unwrap_err();
        assert!(
            matches!(error, HttpError::TooLarge { limit: 10, .. }),
            "{error}"
        );
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "a too large body is not retried"
        );

        let (url, _) = serve(|_| (403, b"forbidden".to_vec()));
        let client = MirrorClient::new(&url, 2).unwrap();
        assert!(matches!(
            client.index("jason", &()).await,
            Err(HttpError::Status { status: 403, .. })
        ));
        assert!(MirrorClient::new("ftp://x", 0).is_err());
        assert!(MirrorClient::new("not a url", 0).is_err());
    }
}
