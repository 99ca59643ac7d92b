//! The one HTTP client every precomp command uses: `precomp fetch`, `build`, `worker`,
//! `audit`, the builder's source downloads, and the mirror's upstream (`serve`, `mirror
//! sync`).
//!
//! - [`Client`]: built once per command and shared (reqwest on rustls, connections pooled,
//!   HTTP/1.1, and h2 where a TLS server offers it), with one user agent
//!   ([`USER_AGENT`]), an optional bearer token, and three bounds on time ([`Settings`]):
//!   connecting, silence while reading, and each call as a whole, retries included.
//! - Every body is bounded per call: a body past the bound is [`Error::TooLarge`], naming
//!   the URL and the bound, and is never held in memory past it. Bodies stream into a
//!   [`Sink`] (a buffer, or a digest and a buffer for artifacts).
//! - Failures worth trying again are retried with exponential backoff and jitter, honouring
//!   `Retry-After`, and only when a retry cannot do harm: the rules are in [`retry`].
//! - [`artifacts::ArtifactClient`]: the mirror's artifact API, typed (index, manifests,
//!   artifacts, misses, failures, verdicts, jobs, the trust document).
//! - [`blocking::BlockingClient`]: the same client for code without an async runtime.
//!
//! The bounds on what the artifact API carries are shared with the server, in
//! [`precomp_proto::api`].

pub mod artifacts;
pub mod blocking;
mod error;
pub mod retry;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderValue, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER};
use reqwest::Method;
use tokio::time::Instant;

pub use error::Error;
pub use retry::Idempotency;

use retry::Failure;

/// The `User-Agent` of every request precomp makes.
pub const USER_AGENT: &str = concat!("precomp/", env!("CARGO_PKG_VERSION"));

/// Bound on the body of an error answer kept for its message.
pub const MAX_ERROR_BODY: u64 = 64 * 1024;

/// Characters of an error answer's body shown in the error.
const MAX_ERROR_MESSAGE: usize = 1000;

/// How a [`Client`] connects, waits and retries.
#[derive(Clone, Debug)]
pub struct Settings {
    /// What the server is, for messages: `the mirror`, `upstream`, `the Hex repository`.
    pub server: &'static str,
    /// Bound on establishing a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Bound on silence while waiting for an answer or reading a body.
    pub read_timeout: Duration,
    /// Bound on each call as a whole: every attempt, every wait between them, every body.
    /// A call can set its own deadline instead ([`Request::deadline`]).
    pub timeout: Duration,
    /// Extra attempts after a failure worth retrying ([`retry`]).
    pub retries: u32,
    /// The wait before the first retry; doubled for each next one.
    pub backoff: Duration,
    /// Bound on one wait, `Retry-After` included.
    pub max_backoff: Duration,
    /// Sent as `Authorization: Bearer` by requests that need it ([`Request::with_token`]).
    pub token: Option<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            server: "the server",
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(300),
            retries: 3,
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            token: None,
        }
    }
}

/// Receives the size of every body chunk as it arrives (progress bars, totals).
pub trait ByteCounter: Send + Sync {
    fn add(&self, bytes: u64);
}

impl ByteCounter for std::sync::atomic::AtomicU64 {
    fn add(&self, bytes: u64) {
        self.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where a body goes as it arrives. Each attempt starts with [`Sink::reset`].
pub trait Sink: Send {
    /// A new attempt begins: drop what an earlier one wrote.
    fn reset(&mut self);
    /// The next chunk. An error stops the call (it is not retried) with the reason.
    fn write(&mut self, chunk: &[u8]) -> Result<(), String>;
}

impl Sink for BytesMut {
    fn reset(&mut self) {
        self.clear();
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.extend_from_slice(chunk);
        Ok(())
    }
}

impl Sink for Vec<u8> {
    fn reset(&mut self) {
        self.clear();
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.extend_from_slice(chunk);
        Ok(())
    }
}

/// One call: what to send, how much body to accept, whether it may be repeated.
#[derive(Clone, Debug)]
pub struct Request {
    method: Method,
    url: String,
    body: Option<Bytes>,
    content_type: Option<&'static str>,
    token: bool,
    token_if_any: bool,
    limit: u64,
    idempotency: Idempotency,
    if_none_match: Option<String>,
    deadline: Option<Instant>,
}

impl Request {
    fn new(method: Method, url: impl Into<String>, idempotency: Idempotency) -> Request {
        Request {
            method,
            url: url.into(),
            body: None,
            content_type: None,
            token: false,
            token_if_any: false,
            limit: 0,
            idempotency,
            if_none_match: None,
            deadline: None,
        }
    }

    /// `GET url`, accepting a body of at most `limit` bytes.
    pub fn get(url: impl Into<String>, limit: u64) -> Request {
        Request::new(Method::GET, url, Idempotency::Idempotent).limit(limit)
    }

    /// `HEAD url`.
    pub fn head(url: impl Into<String>) -> Request {
        Request::new(Method::HEAD, url, Idempotency::Idempotent)
    }

    /// `PUT url` with `body`: idempotent (precomp only PUTs content-addressed objects).
    pub fn put(url: impl Into<String>, body: impl Into<Bytes>) -> Request {
        Request::new(Method::PUT, url, Idempotency::Idempotent).body(body)
    }

    /// `POST url` with `body`; `idempotency` says whether the API makes a repeat harmless.
    pub fn post(
        url: impl Into<String>,
        body: impl Into<Bytes>,
        idempotency: Idempotency,
    ) -> Request {
        Request::new(Method::POST, url, idempotency).body(body)
    }

    fn body(mut self, body: impl Into<Bytes>) -> Request {
        self.body = Some(body.into());
        self
    }

    /// The answer's body may be at most `limit` bytes.
    pub fn limit(mut self, limit: u64) -> Request {
        self.limit = limit;
        self
    }

    /// Sends the client's token; without one the call fails at once ([`Error::NoToken`]).
    pub fn with_token(mut self) -> Request {
        self.token = true;
        self
    }

    /// Sends the client's token if it has one (a mirror may require one to read: `precomp
    /// serve --require-read-token`); without one the call goes without. Only for requests
    /// to the mirror the token is for.
    pub fn with_token_if_any(mut self) -> Request {
        self.token_if_any = true;
        self
    }

    /// `Content-Type: application/json`.
    pub fn json(mut self) -> Request {
        self.content_type = Some("application/json");
        self
    }

    /// A conditional GET: `If-None-Match: etag`.
    pub fn if_none_match(mut self, etag: Option<&str>) -> Request {
        self.if_none_match = etag.map(str::to_string);
        self
    }

    /// The call must be over by `deadline`, retries included, instead of
    /// [`Settings::timeout`] from its start.
    pub fn deadline(mut self, deadline: Instant) -> Request {
        self.deadline = Some(deadline);
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A successful answer's status line and headers of interest (2xx, or 304 to a conditional
/// request); its body went to the sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub etag: Option<String>,
    /// Body bytes received (of the last attempt).
    pub received: u64,
}

/// The HTTP client: cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    settings: Arc<Settings>,
    counter: Option<Arc<dyn ByteCounter>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.settings.server)
            .field("timeout", &self.settings.timeout)
            .field("retries", &self.settings.retries)
            .field("token", &self.settings.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Client {
    pub fn new(settings: Settings) -> Result<Client, Error> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .tcp_nodelay(true)
            // Bodies are taken as sent: registry files and artifacts are gzip data, not a
            // transfer encoding, and digests are over the bytes served.
            .no_gzip()
            .no_brotli()
            .no_deflate()
            .no_zstd()
            .build()
            .map_err(|e| Error::BadUrl {
                what: "HTTP client",
                url: String::new(),
                reason: error::chain(&e),
            })?;
        Ok(Client {
            http,
            settings: Arc::new(Settings {
                token: settings.token.clone().filter(|t| !t.is_empty()),
                ..settings
            }),
            counter: None,
        })
    }

    /// Every body chunk this client receives is also counted by `counter`.
    pub fn with_counter(mut self, counter: Arc<dyn ByteCounter>) -> Client {
        self.counter = Some(counter);
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Checks that `url` is an absolute http(s) URL; `what` names it in the error (`mirror`).
    pub fn check_url(what: &'static str, url: &str) -> Result<(), Error> {
        let bad = |reason: String| Error::BadUrl {
            what,
            url: url.to_string(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("must be an http:// or https:// URL".into()));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("has no host".into()));
        }
        Ok(())
    }

    /// Makes `request`, retrying as [`retry`] says, the body into `sink`.
    pub async fn send(&self, request: &Request, sink: &mut dyn Sink) -> Result<Head, Error> {
        if request.token && self.settings.token.is_none() {
            return Err(Error::NoToken {
                url: request.url.clone(),
            });
        }
        let started = Instant::now();
        let deadline = request
            .deadline
            .unwrap_or_else(|| started + self.settings.timeout);
        let mut retries = 0;
        loop {
            sink.reset();
            let outcome = tokio::time::timeout_at(deadline, self.attempt(request, sink)).await;
            let (error, failure, retry_after) = match outcome {
                Ok(Ok(head)) => return Ok(head),
                Ok(Err(failed)) => failed,
                Err(_) => (
                    Error::Timeout {
                        url: request.url.clone(),
                        server: self.settings.server,
                        timeout: deadline.saturating_duration_since(started),
                    },
                    Failure::Interrupted,
                    None,
                ),
            };
            if retries >= self.settings.retries
                || !retry::worth_retrying(failure, request.idempotency)
            {
                return Err(error);
            }
            let wait = match retry_after {
                Some(wait) => wait.min(self.settings.max_backoff),
                None => retry::backoff(self.settings.backoff, self.settings.max_backoff, retries),
            };
            if Instant::now() + wait >= deadline {
                return Err(error);
            }
            tracing::debug!(url = %request.url, %error, retry = retries + 1, ?wait, "retrying");
            tokio::time::sleep(wait).await;
            retries += 1;
        }
    }

    /// Makes `request`; the answer and its whole body.
    pub async fn fetch(&self, request: &Request) -> Result<(Head, Bytes), Error> {
        let mut body = BytesMut::new();
        let head = self.send(request, &mut body).await?;
        Ok((head, body.freeze()))
    }

    /// `GET url`: the body (at most `limit` bytes), `None` on 404.
    pub async fn get(&self, url: &str, limit: u64) -> Result<Option<Bytes>, Error> {
        not_found_is_none(self.fetch(&Request::get(url, limit)).await.map(|(_, b)| b))
    }

    /// One attempt. On failure: the error, how it failed, and the server's `Retry-After`.
    async fn attempt(
        &self,
        request: &Request,
        sink: &mut dyn Sink,
    ) -> Result<Head, (Error, Failure, Option<Duration>)> {
        let url = request.url.as_str();
        let mut builder = self.http.request(request.method.clone(), url);
        let mut token_sent = false;
        if request.token || request.token_if_any {
            if let Some(token) = &self.settings.token {
                builder = builder.bearer_auth(token);
                token_sent = true;
            }
        }
        if let Some(content_type) = request.content_type {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        if let Some(etag) = &request.if_none_match {
            builder = builder.header(IF_NONE_MATCH, etag);
        }
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        let mut response = builder.send().await.map_err(|e| self.transport(url, &e))?;
        let status = response.status().as_u16();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header(ETAG);
        if !(response.status().is_success() || status == 304) {
            let retry_after = header(RETRY_AFTER)
                .and_then(|value| retry::parse_retry_after(&value, SystemTime::now()));
            let message = error_message(&mut response).await;
            return Err((
                Error::from_status(url, status, message, token_sent),
                Failure::Status(status),
                retry_after,
            ));
        }
        let mut received = 0u64;
        if request.method == Method::HEAD || status == 304 {
            return Ok(Head {
                status,
                etag,
                received,
            });
        }
        let too_large = || {
            (
                Error::TooLarge {
                    url: url.to_string(),
                    limit: request.limit,
                },
                Failure::Final,
                None,
            )
        };
        if response.content_length().is_some_and(|n| n > request.limit) {
            return Err(too_large());
        }
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport(url, &e))?
        {
            received += chunk.len() as u64;
            if received > request.limit {
                return Err(too_large());
            }
            if let Some(counter) = &self.counter {
                counter.add(chunk.len() as u64);
            }
            sink.write(&chunk).map_err(|reason| {
                (
                    Error::Sink {
                        url: url.to_string(),
                        reason,
                    },
                    Failure::Final,
                    None,
                )
            })?;
        }
        Ok(Head {
            status,
            etag,
            received,
        })
    }

    /// A reqwest error as ours: no connection (nothing was sent), no answer in time, or an
    /// exchange broken off (the server may have acted on the request).
    fn transport(&self, url: &str, error: &reqwest::Error) -> (Error, Failure, Option<Duration>) {
        let url = url.to_string();
        let server = self.settings.server;
        if error.is_connect() {
            let reason = error::chain(error);
            return (
                Error::Connect {
                    url,
                    server,
                    reason,
                },
                Failure::NotSent,
                None,
            );
        }
        if error.is_timeout() {
            let timeout = self.settings.read_timeout;
            return (
                Error::Timeout {
                    url,
                    server,
                    timeout,
                },
                Failure::Interrupted,
                None,
            );
        }
        let reason = error::chain(error);
        (Error::Transport { url, reason }, Failure::Interrupted, None)
    }
}

/// `Ok(None)` for a 404, the rest as it is.
pub fn not_found_is_none<T>(result: Result<T, Error>) -> Result<Option<T>, Error> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(Error::Status { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The start of an error answer's body, on one line: what the server said.
async fn error_message(response: &mut reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 >= MAX_ERROR_BODY {
            break;
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let message: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_ERROR_MESSAGE)
        .collect();
    if message.is_empty() {
        "(no body)".into()
    } else {
        message
    }
}
