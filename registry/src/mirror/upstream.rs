//! The upstream Hex repository, over HTTP(S) with precomp's one HTTP client
//! (`precomp_http`): conditional GETs with bounded bodies, transient failures retried with
//! backoff, and one deadline for each request as a whole, its retries included. A
//! `file:///DIR` upstream reads a repository directory (as `precomp repo build` writes one)
//! instead: for air-gapped mirrors, and verified exactly like a remote one.

use std::time::Duration;

use bytes::Bytes;
use precomp_http::{Client, Request, Settings};

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
    #[error("upstream: {0}")]
    Http(precomp_http::Error),
}

/// What upstream answered.
#[derive(Debug)]
pub enum Fetched {
    Body { bytes: Bytes, etag: Option<String> },
    NotModified { etag: Option<String> },
    NotFound,
}

pub struct Upstream {
    client: Client,
    base: String,
    timeout: Duration,
}

impl Upstream {
    /// `timeout` bounds each request as a whole, retries included ([`Upstream::get_until`]).
    pub fn new(base: &str, timeout: Duration) -> Result<Upstream, UpstreamError> {
        let client = Client::new(Settings {
            server: "upstream",
            connect_timeout: timeout.min(Duration::from_secs(10)),
            read_timeout: timeout.min(Duration::from_secs(60)),
            timeout,
            ..Settings::default()
        })
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
    /// bytes of body. The whole exchange, retries and body included, is bounded by the
    /// timeout.
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
    /// Transient failures (no connection, 429, 5xx, a body cut short) are retried while the
    /// deadline allows.
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
        let request = Request::get(url.clone(), limit)
            .if_none_match(etag)
            .deadline(deadline);
        match self.client.fetch(&request).await {
            Ok((head, _)) if head.status == 304 => Ok(Fetched::NotModified { etag: head.etag }),
            Ok((head, bytes)) if head.status == 200 => Ok(Fetched::Body {
                bytes,
                etag: head.etag,
            }),
            Ok((head, _)) => Err(UpstreamError::Status {
                url,
                status: head.status,
            }),
            // hex.pm answers 403 for objects that do not exist (S3); clients treat both alike.
            Err(e) if matches!(e.status(), Some(403 | 404)) => Ok(Fetched::NotFound),
            Err(precomp_http::Error::Timeout { .. }) => Err(UpstreamError::Timeout {
                url,
                timeout: self.timeout,
            }),
            Err(precomp_http::Error::TooLarge { limit, .. }) => {
                Err(UpstreamError::TooLarge { url, limit })
            }
            Err(e) => match e.status() {
                Some(status) => Err(UpstreamError::Status { url, status }),
                None => Err(UpstreamError::Http(e)),
            },
        }
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
