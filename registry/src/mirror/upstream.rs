//! The upstream Hex repository, over HTTP(S): conditional GETs with bounded bodies and a
//! timeout on every request. A `file:///DIR` upstream reads a repository directory (as
//! `precomp repo build` writes one) instead: for air-gapped mirrors, and verified exactly
//! like a remote one.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("upstream {url}: timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("upstream {url}: answered {status}")]
    Status { url: String, status: u16 },
    #[error("upstream {url}: body is over the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
}

/// What upstream answered.
#[derive(Debug)]
pub enum Fetched {
    Body { bytes: Bytes, etag: Option<String> },
    NotModified { etag: Option<String> },
    NotFound,
}

pub struct Upstream {
    client: reqwest::Client,
    base: String,
    timeout: Duration,
}

impl Upstream {
    pub fn new(base: &str, timeout: Duration) -> Result<Upstream, UpstreamError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("precomp/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // Registry files are gzip bodies, not a transfer encoding: take bytes as sent.
            .no_gzip()
            .build()
            .map_err(|e| UpstreamError::Request {
                url: base.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Upstream {
            client,
            base: base.trim_end_matches('/').to_string(),
            timeout,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// GETs `path`, sending `If-None-Match` when `etag` is given, reading at most `limit`
    /// bytes of body. The whole exchange, body included, is bounded by the timeout.
    pub async fn get(
        &self,
        path: &str,
        etag: Option<&str>,
        limit: u64,
    ) -> Result<Fetched, UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        self.get_until(path, etag, limit, deadline).await
    }

    /// [`Upstream::get`], bounded by `deadline` instead of a timeout from now: for a request
    /// that makes several exchanges within one timeout (a tarball and its package record).
    pub async fn get_until(
        &self,
        path: &str,
        etag: Option<&str>,
        limit: u64,
        deadline: tokio::time::Instant,
    ) -> Result<Fetched, UpstreamError> {
        let url = self.url(path);
        if let Some(dir) = self.base.strip_prefix("file://") {
            return read_file(&url, &std::path::Path::new(dir).join(path), limit).await;
        }
        match tokio::time::timeout_at(deadline, self.exchange(&url, etag, limit)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                url,
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        url: &str,
        etag: Option<&str>,
        limit: u64,
    ) -> Result<Fetched, UpstreamError> {
        let request_error = |e: reqwest::Error| UpstreamError::Request {
            url: url.to_string(),
            reason: e.to_string(),
        };
        let mut request = self.client.get(url);
        if let Some(etag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let mut response = request.send().await.map_err(request_error)?;
        let status = response.status();
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match status.as_u16() {
            200 => {}
            304 => return Ok(Fetched::NotModified { etag }),
            // hex.pm answers 403 for objects that do not exist (S3); clients treat both alike.
            403 | 404 => return Ok(Fetched::NotFound),
            code => {
                return Err(UpstreamError::Status {
                    url: url.to_string(),
                    status: code,
                })
            }
        }
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(UpstreamError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(UpstreamError::TooLarge {
                    url: url.to_string(),
                    limit,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched::Body {
            bytes: body.freeze(),
            etag,
        })
    }
}

/// A `file://` upstream: the object's file, bounded. No ETag, so every revalidation reads and
/// verifies the file again; local reads are cheap.
async fn read_file(
    url: &str,
    path: &std::path::Path,
    limit: u64,
) -> Result<Fetched, UpstreamError> {
    let request_error = |e: std::io::Error| UpstreamError::Request {
        url: url.to_string(),
        reason: e.to_string(),
    };
    let meta = match tokio::fs::metadata(path).await {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return Ok(Fetched::NotFound),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Fetched::NotFound),
        Err(e) => return Err(request_error(e)),
    };
    if meta.len() > limit {
        return Err(UpstreamError::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    let bytes = tokio::fs::read(path).await.map_err(request_error)?;
    if bytes.len() as u64 > limit {
        return Err(UpstreamError::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    Ok(Fetched::Body {
        bytes: Bytes::from(bytes),
        etag: None,
    })
}
