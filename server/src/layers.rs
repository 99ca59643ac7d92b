//! What every request on the main listener passes through, outermost first:
//!
//! 1. the guard ([`GuardService`]): the concurrency limit (503 at once when `max_requests` are in progress), the
//!    client's address (the TCP peer, or from `X-Forwarded-For` when the peer is a trusted
//!    proxy), the request body guarded against stalls and slow senders ([`GuardedBody`]) and
//!    its memory budget ([`BodyBudget`]), the per-request timeout (503), and the metrics: the
//!    answer counted by its route's label and status, and the bytes served.
//! 2. Request tracing (`tower_http::trace`, at debug level; left out when debug logging is
//!    off).
//! 3. Repeated and trailing slashes removed from the path ([`normalize_path`]), before routing.
//! 4. The router, with panics in handlers caught (500).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Method, StatusCode, Uri};
use http_body::Frame;
use ipnet::IpNet;
use tokio::time::{Instant, Sleep};
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::respond::{text, RouteName};
use crate::{routes, AppState, ServerConfig};

/// The connection a request came on, set by the listener: the client's address as the
/// connection gives it (the TCP peer, or the PROXY protocol's source).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// The client's address for this request: the peer's, or for a peer that is a trusted proxy,
/// the last address in `X-Forwarded-For` that is not a trusted proxy's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The client's address of a request: [`ClientAddr`] when a trusted proxy named it, else the
/// connection's [`Peer`].
pub fn client<B>(request: &http::Request<B>) -> Option<IpAddr> {
    let extensions = request.extensions();
    extensions
        .get::<ClientAddr>()
        .map(|c| c.0)
        .or_else(|| extensions.get::<Peer>().map(|p| p.0.ip()))
}

/// The state of the guard ([`GuardService`]).
pub struct Guard {
    state: AppState,
    config: Arc<ServerConfig>,
    in_progress: AtomicUsize,
    budget: BodyBudget,
}

/// The main listener's service: every layer above around the routes.
pub fn main_service(
    state: AppState,
    config: Arc<ServerConfig>,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Clone + Send + 'static
{
    let guard = Arc::new(Guard {
        budget: BodyBudget::new(config.max_body_memory),
        state: state.clone(),
        config,
        in_progress: AtomicUsize::new(0),
    });
    let router = routes::router(state).layer(CatchPanicLayer::custom(panicked));
    // Request spans only when they would be recorded (the log filter is set before the server
    // starts): the trace layer costs every request about a tenth of its user-space work even
    // when its spans are disabled (docs/benchmarks.md, "precomp-server").
    let trace = tracing::enabled!(tracing::Level::DEBUG).then(|| {
        ServiceBuilder::new()
            .map_response(|response: http::Response<_>| response.map(Body::new))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|request: &Request| {
                        tracing::debug_span!(
                            "request",
                            method = %request.method(),
                            path = %request.uri().path(),
                            client = ?client(request),
                        )
                    })
                    // The routes log their own failures, with what failed.
                    .on_failure(()),
            )
    });
    let inner = ServiceBuilder::new()
        .option_layer(trace)
        .map_request(normalize_path)
        .service(router);
    GuardService { inner, guard }
}

/// The admin listener's service: health and metrics, counted, panics caught; none of the
/// main listener's limits.
pub fn admin_service(
    state: AppState,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Clone + Send + 'static
{
    let router = routes::admin_router(state.clone()).layer(CatchPanicLayer::custom(panicked));
    ServiceBuilder::new()
        .layer(middleware::from_fn_with_state(state, count_layer))
        .service(router)
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error: the request's handler panicked (the server's log has the message)",
        false,
    )
}

async fn count_layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let head = request.method() == Method::HEAD;
    let response = next.run(request).await;
    count(&state, head, &response);
    response
}

/// A request in progress, counted down when dropped.
struct InProgress(Arc<Guard>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The guard around the rest of the stack. A plain `tower::Service` (no boxed
/// future): it is on the path of every request.
#[derive(Clone)]
pub struct GuardService<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S> Service<Request> for GuardService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    /// The guard layer: see the module's documentation.
    fn call(&mut self, mut request: Request) -> Self::Future {
        let guard = &self.guard;
        let config = &guard.config;
        let head = request.method() == Method::HEAD;
        if guard.in_progress.fetch_add(1, Ordering::Relaxed) >= config.max_requests {
            guard.in_progress.fetch_sub(1, Ordering::Relaxed);
            guard.state.mirror.metrics().limited("concurrency");
            let response = retry_later(&format!(
                "the mirror is handling its limit of {} requests; retry in a few seconds",
                config.max_requests
            ));
            count(&guard.state, head, &response);
            return GuardFuture::Refused {
                response: Some(response),
            };
        }
        let in_progress = InProgress(Arc::clone(guard));
        // Without trusted proxies the client is the peer: nothing to work out (see `client`).
        if !config.trusted_proxies.is_empty() {
            if let Some(Peer(peer)) = request.extensions().get::<Peer>().copied() {
                let client = client_addr(peer.ip(), &request, &config.trusted_proxies);
                request.extensions_mut().insert(ClientAddr(client));
            }
        }
        if !http_body::Body::is_end_stream(request.body()) {
            request.extensions_mut().insert(guard.budget.clone());
            let mirror = Arc::clone(&guard.state.mirror);
            let (stall, min_rate) = (config.body_read_timeout, config.body_min_rate);
            request = request.map(|body| {
                Body::new(GuardedBody::new(
                    body,
                    stall,
                    min_rate,
                    Box::new(move |reason| mirror.metrics().limited(reason)),
                ))
            });
        }
        GuardFuture::Running {
            deadline: tokio::time::sleep(config.request_timeout),
            future: self.inner.call(request),
            head,
            in_progress,
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of [`GuardService`]: the inner service's, or `503` at the request timeout;
    /// counted in the metrics either way.
    #[project = GuardProjection]
    pub enum GuardFuture<F> {
        Refused { response: Option<Response> },
        Running {
            #[pin]
            future: F,
            #[pin]
            deadline: Sleep,
            head: bool,
            in_progress: InProgress,
        },
    }
}

impl<F> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProjection::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after it was ready")))
            }
            GuardProjection::Running {
                future,
                deadline,
                head,
                in_progress,
            } => {
                let guard = &in_progress.0;
                let response = match future.poll(cx) {
                    Poll::Ready(Ok(response)) => response,
                    Poll::Ready(Err(never)) => match never {},
                    Poll::Pending => {
                        if deadline.poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        guard.state.mirror.metrics().limited("request_timeout");
                        retry_later(&format!(
                            "the request took longer than the mirror's limit of {:?}",
                            guard.config.request_timeout
                        ))
                    }
                };
                count(&guard.state, *head, &response);
                Poll::Ready(Ok(response))
            }
        }
    }
}

/// `503` with `Retry-After`.
fn retry_later(message: &str) -> Response {
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, message, false);
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response
}

/// Counts the answer by its route's label and status, and the body bytes of a 200.
fn count(state: &AppState, head: bool, response: &Response) {
    let route = response
        .extensions()
        .get::<RouteName>()
        .map_or("unknown", |r| r.0);
    let metrics = state.mirror.metrics();
    let status = response.status();
    metrics.request(route, status.as_u16());
    if status == StatusCode::OK && !head {
        let size = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        metrics.served(route, size);
    }
}

/// The client's address: `peer`, unless `peer` is a trusted proxy; then the last address of
/// `X-Forwarded-For` that is not a trusted proxy (each proxy appends the address it got the
/// request from, so only the entries trusted proxies added can be believed), or the first one
/// if every entry is trusted.
fn client_addr(peer: IpAddr, request: &Request, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !trusted.iter().any(|net| net.contains(&peer)) {
        return peer;
    }
    let mut client = peer;
    for value in request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok())
    {
        for entry in value.rsplit(',') {
            let Ok(address) = entry.trim().parse::<IpAddr>() else {
                // Garbage: nothing further left can be believed.
                return client;
            };
            client = address;
            if !trusted.iter().any(|net| net.contains(&address)) {
                return client;
            }
        }
    }
    client
}

/// Removes repeated and trailing slashes (Mix's `HEX_MIRROR=http://m/` gives
/// `//packages/x`), so the router sees one spelling of each path.
pub fn normalize_path(mut request: Request) -> Request {
    let path = request.uri().path();
    if !path.contains("//") && (path.len() <= 1 || !path.ends_with('/')) {
        return request;
    }
    let mut normal = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    if let Some(query) = request.uri().query() {
        normal.push('?');
        normal.push_str(query);
    }
    let mut parts = request.uri().clone().into_parts();
    if let Ok(path_and_query) = normal.parse() {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

// ---------------------------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------------------------

/// The bytes of request bodies the server may hold in memory at once, shared by every
/// request (`max_body_memory`): a route that buffers a body takes its share first and gives
/// it back when done, so stalled or flooding clients cannot grow the server's memory.
#[derive(Clone, Debug)]
pub struct BodyBudget(Arc<BudgetInner>);

#[derive(Debug)]
struct BudgetInner {
    left: AtomicUsize,
}

impl BodyBudget {
    pub fn new(bytes: u64) -> BodyBudget {
        BodyBudget(Arc::new(BudgetInner {
            left: AtomicUsize::new(usize::try_from(bytes).unwrap_or(usize::MAX)),
        }))
    }

    /// Takes `bytes` of the budget if that many are left.
    pub fn try_take(&self, bytes: usize) -> bool {
        self.0
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    /// Gives back `bytes` taken earlier.
    pub fn give_back(&self, bytes: usize) {
        self.0.left.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Bytes left.
    pub fn left(&self) -> usize {
        self.0.left.load(Ordering::Acquire)
    }
}

/// Why the server cut a request body off.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyLimitError {
    #[error("no byte of the request body arrived for {0:?}")]
    Stalled(Duration),
    #[error("the request body arrives at {rate} bytes/s, under the minimum of {minimum}")]
    TooSlow { rate: u64, minimum: u64 },
}

/// The [`BodyLimitError`] behind a body read error, if the server cut the body off.
pub fn body_limit(error: &(dyn std::error::Error + 'static)) -> Option<BodyLimitError> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(limit) = error.downcast_ref::<BodyLimitError>() {
            return Some(limit.clone());
        }
        current = error.source();
    }
    None
}

/// A request body that fails (and is dropped, freeing what it buffered) when nothing arrives
/// for `stall`, or when, once it has been read for `stall`, its average rate is under
/// `min_rate` bytes per second.
pub struct GuardedBody {
    inner: Body,
    stall: Duration,
    min_rate: u64,
    timer: Option<Pin<Box<Sleep>>>,
    started: Option<Instant>,
    received: u64,
    failed: bool,
    on_limit: Box<dyn Fn(&'static str) + Send + Sync>,
}

impl GuardedBody {
    pub fn new(
        inner: Body,
        stall: Duration,
        min_rate: u64,
        on_limit: Box<dyn Fn(&'static str) + Send + Sync>,
    ) -> GuardedBody {
        GuardedBody {
            inner,
            stall,
            min_rate,
            timer: None,
            started: None,
            received: 0,
            failed: false,
            on_limit,
        }
    }

    fn fail(&mut self, error: BodyLimitError) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.failed = true;
        (self.on_limit)(match error {
            BodyLimitError::Stalled(_) => "body_stalled",
            BodyLimitError::TooSlow { .. } => "body_too_slow",
        });
        Poll::Ready(Some(Err(axum::Error::new(error))))
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        let now = Instant::now();
        let started = *this.started.get_or_insert(now);
        let stall = this.stall;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                timer.as_mut().reset(now + stall);
                let elapsed = now - started;
                if this.min_rate > 0 && elapsed > stall {
                    let rate = (this.received as f64 / elapsed.as_secs_f64()) as u64;
                    if rate < this.min_rate {
                        let minimum = this.min_rate;
                        return this.fail(BodyLimitError::TooSlow { rate, minimum });
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if timer.as_mut().poll(cx).is_ready() {
                    return this.fail(BodyLimitError::Stalled(stall));
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_xff(values: &[&str]) -> Request {
        let mut builder = http::Request::builder().uri("/names");
        for value in values {
            builder = builder.header("x-forwarded-for", *value);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[test]
    fn the_client_address_comes_from_trusted_proxies_only() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let request = with_xff(&["203.0.113.7, 198.51.100.2"]);
        // Not from a trusted proxy: the header is the client's to forge.
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_addr(stranger, &request, &trusted), stranger);
        // From the proxy: the last entry it added.
        assert_eq!(
            client_addr(proxy, &request, &trusted),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        // Proxies in a chain are skipped; several headers read as one list.
        let chained = with_xff(&["203.0.113.7", "10.0.0.9"]);
        assert_eq!(
            client_addr(proxy, &chained, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // No header: the proxy itself.
        assert_eq!(client_addr(proxy, &with_xff(&[]), &trusted), proxy);
        // Garbage stops the walk at what was believed so far.
        let garbage = with_xff(&["nonsense, 10.0.0.8"]);
        assert_eq!(
            client_addr(proxy, &garbage, &trusted),
            "10.0.0.8".parse::<IpAddr>().unwrap()
        );
        // No trusted proxies configured: always the peer.
        assert_eq!(client_addr(proxy, &request, &[]), proxy);
    }

    #[test]
    fn paths_lose_repeated_and_trailing_slashes() {
        for (path, normal) in [
            ("/names", "/names"),
            ("//packages/x", "/packages/x"),
            ("/packages//x/", "/packages/x"),
            ("/", "/"),
            ("//", "/"),
            ("/precomp//v1/misses?x=1", "/precomp/v1/misses?x=1"),
        ] {
            let request = http::Request::builder()
                .uri(path)
                .body(Body::empty())
                .unwrap();
            let request = normalize_path(request);
            assert_eq!(
                request.uri().path_and_query().unwrap().as_str(),
                normal,
                "{path}"
            );
        }
    }

    #[test]
    fn the_body_budget_is_shared_and_given_back() {
        let budget = BodyBudget::new(100);
        assert!(budget.try_take(60));
        assert!(!budget.try_take(60));
        assert!(budget.try_take(40));
        budget.give_back(60);
        assert_eq!(budget.left(), 60);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_stall_timeout() {
        use http_body_util::BodyExt;
        let (mut sender, body) =
            futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        let body = Body::new(http_body_util::StreamBody::new(body));
        let limited = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = Arc::clone(&limited);
        let mut guarded = GuardedBody::new(
            body,
            Duration::from_secs(5),
            0,
            Box::new(move |reason| seen.lock().push(reason)),
        );
        use futures::SinkExt;
        sender
            .send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        let frame = guarded.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        let started = Instant::now();
        let error = guarded.frame().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(
            body_limit(&error),
            Some(BodyLimitError::Stalled(Duration::from_secs(5)))
        );
        assert_eq!(*limited.lock(), vec!["body_stalled"]);
        assert!(guarded.frame().await.is_none());
        drop(sender);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_fails_once_under_the_minimum_rate() {
        use http_body_util::BodyExt;
        let (mut sender, body) =
            futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        let body = Body::new(http_body_util::StreamBody::new(body));
        let mut guarded = GuardedBody::new(body, Duration::from_secs(2), 1000, Box::new(|_| {}));
        use futures::SinkExt;
        // 10 bytes a second: fine for 2 s, then under 1000 bytes/s.
        for second in 0..5 {
            sender
                .send(Ok(Frame::data(Bytes::from_static(b"0123456789"))))
                .await
                .unwrap();
            match guarded.frame().await.unwrap() {
                Ok(_) => assert!(second <= 2, "still read after {second} s"),
                Err(error) => {
                    assert!(matches!(
                        body_limit(&error),
                        Some(BodyLimitError::TooSlow { minimum: 1000, .. })
                    ));
                    return;
                }
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        panic!("the slow body was never cut off");
    }
}
