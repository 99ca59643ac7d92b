//! Accepting connections and driving them.
//!
//! - **Limits.** At most `max_connections` open connections on the main listener, and
//!   `max_connections_per_client` per client address (connections from a trusted proxy are
//!   not counted per client: a load balancer holds many). A connection over a limit gets a
//!   fixed `503` and is closed at once, before anything is read, and counted
//!   (`precomp_mirror_connections_refused_total`). The limit in total is also kept under the
//!   process's file descriptor limit (raised to its hard limit at startup), leaving room for
//!   the admin listener, the stores and upstream connections: a flood of sockets cannot take
//!   the descriptors `/healthz` or a blob read needs.
//! - **Protocols.** HTTP/1.1, and HTTP/2 with prior knowledge (h2c), on one port (hyper's
//!   auto builder). HTTP/2 streams per connection and header list size are bounded.
//! - **Timeouts.** A connection that has not started a request within `header_read_timeout`
//!   of connecting is closed; so is one with no request in progress that moves no byte for
//!   `idle_timeout` (a client that stopped reading a response included). HTTP/1.1: hyper
//!   closes a connection that does not complete a request header within
//!   `header_read_timeout` of starting to wait for it — between keep-alive requests too.
//! - **PROXY protocol** (`proxy_protocol`): each connection must start with a v1 or v2
//!   header, read within `header_read_timeout`; its source address is the client's.
//! - **Admin listener**: `/healthz` and `/metrics` on their own port, outside the main
//!   listener's limits (with a small limit of its own).
//! - **Shutdown**: stop accepting, let requests in flight finish (up to `shutdown_grace`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::Mutex;
use precomp_registry::mirror::{ConnectionLabel, Metrics, Mirror, ReasonLabel};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::Service;

use crate::layers::{self, Peer};
use crate::{AppState, Listeners, ServerConfig};

/// Connections the admin listener takes at once.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// File descriptors kept free of client connections: the admin listener's, SQLite's, blob
/// reads and writes, upstream connections.
const RESERVED_DESCRIPTORS: usize = MAX_ADMIN_CONNECTIONS + 128;

/// The answer to a connection over a limit, sent before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
cache-control: no-store\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 55\r\n\
\r\n\
the mirror has too many connections; retry in a second\n";

pub(crate) async fn run(
    state: AppState,
    config: Arc<ServerConfig>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let max_connections = connection_limit(config.max_connections);
    let limits = Arc::new(ConnectionLimits {
        max_total: max_connections,
        max_per_client: config.max_connections_per_client,
        open: AtomicUsize::new(0),
        per_client: Mutex::new(HashMap::new()),
    });
    let graceful = Arc::new(GracefulShutdown::new());
    let builder = http_builder(&config);
    let mirror = Arc::clone(&state.mirror);

    let main_service = layers::main_service(state.clone(), Arc::clone(&config));
    let admin = listeners.admin.map(|listener| {
        let service = layers::admin_service(state.clone());
        let admin_limits = Arc::new(ConnectionLimits {
            max_total: MAX_ADMIN_CONNECTIONS,
            max_per_client: MAX_ADMIN_CONNECTIONS,
            open: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            "admin",
            service,
            admin_limits,
            Arc::clone(&config),
            builder.clone(),
            Arc::clone(&mirror),
            Arc::clone(&graceful),
            async move {
                let mut stopped = stopped;
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        ));
        (stop, task)
    });

    accept_loop(
        listeners.main,
        "main",
        main_service,
        limits,
        Arc::clone(&config),
        builder,
        mirror,
        Arc::clone(&graceful),
        shutdown,
    )
    .await;
    if let Some((stop, task)) = admin {
        let _ = stop.send(true);
        let _ = task.await;
    }

    tracing::info!("shutting down: waiting for requests in flight");
    let graceful =
        Arc::try_unwrap(graceful).unwrap_or_else(|_| unreachable!("both accept loops have ended"));
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {:?}; closing them",
            config.shutdown_grace
        );
    }
    Ok(())
}

/// HTTP/1.1 and HTTP/2 (prior knowledge) on one port, with the header read timeout and the
/// HTTP/2 bounds.
fn http_builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.h2_max_concurrent_streams)
        .max_header_list_size(config.max_header_bytes);
    builder
}

/// The connection limit in total, kept under the file descriptor limit (raised to its hard
/// limit first) with [`RESERVED_DESCRIPTORS`] to spare.
fn connection_limit(configured: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("raising the open file limit: {e}");
            limit = getrlimit(Resource::Nofile);
        }
    }
    let Some(descriptors) = limit.current else {
        return configured;
    };
    let room = usize::try_from(descriptors)
        .unwrap_or(usize::MAX)
        .saturating_sub(RESERVED_DESCRIPTORS)
        .max(1);
    if configured > room {
        tracing::warn!(
            configured,
            descriptors,
            effective = room,
            "max_connections is over what the open file limit allows; using {room} (raise \
             the limit, e.g. LimitNOFILE= in the systemd unit, to allow more)"
        );
        room
    } else {
        configured
    }
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop<S>(
    listener: TcpListener,
    name: &'static str,
    service: S,
    limits: Arc<ConnectionLimits>,
    config: Arc<ServerConfig>,
    builder: auto::Builder<TokioExecutor>,
    mirror: Arc<Mirror>,
    graceful: Arc<GracefulShutdown>,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let label = ConnectionLabel { listener: name };
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let metrics = mirror.metrics();
        metrics.connections_accepted.get_or_create(&label).inc();
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            name,
            service: service.clone(),
            limits: Arc::clone(&limits),
            config: Arc::clone(&config),
            builder: builder.clone(),
            mirror: Arc::clone(&mirror),
            graceful: graceful.watcher(),
        };
        if config.proxy_protocol && name == "main" {
            tokio::spawn(async move {
                let deadline = Instant::now() + connection.config.header_read_timeout;
                match tokio::time::timeout_at(deadline, proxy::read_header(stream)).await {
                    Ok(Ok((io, source))) => connection.admit(io, source).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "refused a connection: {e}");
                        connection.closed("proxy_header");
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "no PROXY protocol header in time");
                        connection.closed("proxy_header");
                    }
                }
            });
        } else {
            connection.admit(proxy::Prefixed::new(stream), peer).await;
        }
    }
}

type GracefulWatcher = hyper_util::server::graceful::Watcher;

/// What driving one connection needs.
struct Connection<S> {
    name: &'static str,
    service: S,
    limits: Arc<ConnectionLimits>,
    config: Arc<ServerConfig>,
    builder: auto::Builder<TokioExecutor>,
    mirror: Arc<Mirror>,
    graceful: GracefulWatcher,
}

impl<S> Connection<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    fn metrics(&self) -> &Metrics {
        self.mirror.metrics()
    }

    fn closed(&self, reason: &'static str) {
        closed(self.metrics(), reason);
    }

    /// Admits the connection from `client` if the limits allow (refusing it otherwise), and
    /// drives it on its own task.
    async fn admit(self, io: proxy::Prefixed, client: SocketAddr) {
        let trusted = self
            .config
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&client.ip()));
        let permit = match self.limits.admit(client.ip(), !trusted) {
            Ok(permit) => permit,
            Err(reason) => {
                self.metrics()
                    .connections_refused
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                tracing::debug!(%client, reason, "connection refused at the limit");
                let _ = io.try_write(REFUSED);
                return;
            }
        };
        tokio::spawn(self.drive(io, client, permit));
    }

    async fn drive(self, io: proxy::Prefixed, client: SocketAddr, _permit: ConnectionPermit) {
        let label = ConnectionLabel {
            listener: self.name,
        };
        let gauge = self.metrics().connections.get_or_create(&label).clone();
        gauge.inc();
        let activity = Arc::new(Activity::new());
        let service = self.service.clone();
        let tracked = Arc::clone(&activity);
        let hyper_service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(Peer(client));
            let in_flight = InFlight::start(&tracked);
            // Every layer of ours and axum's router is always ready: no `poll_ready` (and no
            // `Oneshot` state machine) per request.
            let response = service.clone().call(request.map(Body::new));
            async move {
                let response = response.await;
                drop(in_flight);
                response
            }
        });
        let io = ActivityIo {
            inner: io,
            activity: Arc::clone(&activity),
        };
        let connection = self
            .builder
            .serve_connection(TokioIo::new(io), hyper_service)
            .into_owned();
        let mirror = Arc::clone(&self.mirror);
        let connection = self.graceful.watch(connection);
        let mut connection = std::pin::pin!(connection);
        let connected = Instant::now();
        let header_timeout = self.config.header_read_timeout;
        let idle_timeout = self.config.idle_timeout;
        let mut busy_until = connected;
        loop {
            let deadline = if activity.started() == 0 {
                connected + header_timeout
            } else {
                (activity.last() + idle_timeout).max(busy_until)
            };
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%client, "connection ended: {e}");
                    }
                    break;
                }
                () = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    if activity.in_flight() > 0 {
                        // A request in progress is bounded by the request timeout.
                        busy_until = now + idle_timeout;
                    } else if activity.started() == 0 {
                        tracing::debug!(%client, "no request within {header_timeout:?}: closing");
                        closed(mirror.metrics(), "no_request");
                        break;
                    } else if now >= activity.last() + idle_timeout {
                        tracing::debug!(%client, "idle for {idle_timeout:?}: closing");
                        closed(mirror.metrics(), "idle");
                        break;
                    }
                }
            }
        }
        gauge.dec();
    }
}

/// Counts a connection the server closed, by why.
fn closed(metrics: &Metrics, reason: &'static str) {
    metrics
        .connections_closed
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

/// Connections open now, in total and per client address.
struct ConnectionLimits {
    max_total: usize,
    max_per_client: usize,
    open: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionLimits {
    /// A permit for a connection from `client` (counted per client when `per_client`), or
    /// the limit reached: `total` or `per_client`.
    fn admit(
        self: &Arc<Self>,
        client: IpAddr,
        per_client: bool,
    ) -> Result<ConnectionPermit, &'static str> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err("total");
        }
        if per_client {
            let mut clients = self.per_client.lock();
            let count = clients.entry(client).or_insert(0);
            if *count >= self.max_per_client {
                if *count == 0 {
                    clients.remove(&client);
                }
                drop(clients);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err("per_client");
            }
            *count += 1;
        }
        Ok(ConnectionPermit {
            limits: Arc::clone(self),
            client: per_client.then_some(client),
        })
    }
}

/// An open connection's place in [`ConnectionLimits`], given back when dropped.
struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    client: Option<IpAddr>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some(client) = self.client {
            let mut clients = self.limits.per_client.lock();
            if let Some(count) = clients.get_mut(&client) {
                *count -= 1;
                if *count == 0 {
                    clients.remove(&client);
                }
            }
        }
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a connection has done lately: requests started and in progress, and when it last
/// moved a byte.
struct Activity {
    since: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    started: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.since.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.since + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

/// A request in progress on a connection, counted down when dropped (the service's future
/// finished or was dropped).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection's socket, recording when it last moved a byte.
struct ActivityIo {
    inner: proxy::Prefixed,
    activity: Arc<Activity>,
}

impl AsyncRead for ActivityIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_http_answer() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(body.lines().count(), 1);
    }

    #[test]
    fn connections_are_limited_in_total_and_per_client() {
        let limits = Arc::new(ConnectionLimits {
            max_total: 3,
            max_per_client: 2,
            open: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        });
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = limits.admit(a, true).unwrap();
        let _second = limits.admit(a, true).unwrap();
        assert_eq!(limits.admit(a, true).err(), Some("per_client"));
        // A trusted proxy's connections are not counted per client.
        let proxied = limits.admit(a, false).unwrap();
        assert_eq!(limits.admit(b, true).err(), Some("total"));
        drop(proxied);
        let _third = limits.admit(b, true).unwrap();
        drop(first);
        assert_eq!(limits.open.load(Ordering::Relaxed), 2);
        assert_eq!(limits.per_client.lock().get(&a), Some(&1));
    }
}

mod proxy {
    //! The PROXY protocol (v1 text, v2 binary; haproxy's proxy-protocol.txt), parsed by the
    //! `ppp` crate: the header a load balancer sends first on each connection, naming the
    //! client it came from.

    use std::io;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::{Buf, Bytes};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;

    /// The largest header: v2's 16 bytes and at most 65535 of addresses and extensions.
    const MAX_HEADER: usize = 16 + 65535;

    /// A socket with bytes read past the PROXY header put back in front.
    pub struct Prefixed {
        prefix: Bytes,
        stream: TcpStream,
    }

    impl Prefixed {
        pub fn new(stream: TcpStream) -> Prefixed {
            Prefixed {
                prefix: Bytes::new(),
                stream,
            }
        }

        pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
            self.stream.try_write(bytes)
        }
    }

    /// Reads the PROXY header from `stream`: the socket, positioned after the header, and the
    /// client's address (the peer's for a `LOCAL` or `UNKNOWN` header: a health check from
    /// the proxy itself).
    pub async fn read_header(mut stream: TcpStream) -> io::Result<(Prefixed, SocketAddr)> {
        let peer = stream.peer_addr()?;
        let mut buffer = Vec::with_capacity(256);
        loop {
            let mut chunk = [0u8; 1024];
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed before its PROXY protocol header",
                ));
            }
            buffer.extend_from_slice(&chunk[..read]);
            match parse(&buffer) {
                Parsed::Incomplete if buffer.len() < MAX_HEADER => continue,
                Parsed::Incomplete => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "PROXY protocol header too long",
                    ))
                }
                Parsed::Invalid(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("not a PROXY protocol header: {e}"),
                    ))
                }
                Parsed::Complete { length, source } => {
                    let mut rest = Bytes::from(buffer);
                    rest.advance(length);
                    let prefixed = Prefixed {
                        prefix: rest,
                        stream,
                    };
                    return Ok((prefixed, source.unwrap_or(peer)));
                }
            }
        }
    }

    enum Parsed {
        Incomplete,
        Invalid(String),
        Complete {
            length: usize,
            source: Option<SocketAddr>,
        },
    }

    fn parse(buffer: &[u8]) -> Parsed {
        use ppp::{v1, v2, HeaderResult, PartialResult};
        match HeaderResult::parse(buffer) {
            HeaderResult::V1(Ok(header)) => Parsed::Complete {
                length: header.header.len(),
                source: match header.addresses {
                    v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    v1::Addresses::Unknown => None,
                },
            },
            HeaderResult::V2(Ok(header)) => Parsed::Complete {
                length: header.len(),
                source: match header.addresses {
                    v2::Addresses::IPv4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    v2::Addresses::IPv6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    _ => None,
                },
            },
            HeaderResult::V1(Err(e)) if e.is_incomplete() => Parsed::Incomplete,
            HeaderResult::V2(Err(e)) if e.is_incomplete() => Parsed::Incomplete,
            HeaderResult::V1(Err(e)) => Parsed::Invalid(e.to_string()),
            HeaderResult::V2(Err(e)) => Parsed::Invalid(e.to_string()),
        }
    }

    impl AsyncRead for Prefixed {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if !self.prefix.is_empty() {
                let n = self.prefix.len().min(buf.remaining());
                buf.put_slice(&self.prefix[..n]);
                self.prefix.advance(n);
                return Poll::Ready(Ok(()));
            }
            Pin::new(&mut self.stream).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Prefixed {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.stream).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.stream.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.stream).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.stream).poll_shutdown(cx)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn reads_v1_and_v2_headers_and_keeps_what_follows() {
            let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 4000\r\nGET /names HTTP/1.1\r\n";
            match parse(v1) {
                Parsed::Complete { length, source } => {
                    assert_eq!(&v1[length..], b"GET /names HTTP/1.1\r\n");
                    assert_eq!(source, Some("203.0.113.7:51234".parse().unwrap()));
                }
                _ => panic!("v1 not parsed"),
            }
            assert!(matches!(parse(b"PROXY TCP4 203.0"), Parsed::Incomplete));
            assert!(matches!(
                parse(b"GET / HTTP/1.1\r\n\r\n"),
                Parsed::Invalid(_)
            ));

            let mut v2 = ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                ppp::v2::Protocol::Stream,
                (
                    "198.51.100.2:40000".parse::<SocketAddr>().unwrap(),
                    "10.0.0.1:4000".parse::<SocketAddr>().unwrap(),
                ),
            )
            .build()
            .unwrap();
            let header_length = v2.len();
            v2.extend_from_slice(b"PRI * HTTP/2.0");
            match parse(&v2) {
                Parsed::Complete { length, source } => {
                    assert_eq!(length, header_length);
                    assert_eq!(source, Some("198.51.100.2:40000".parse().unwrap()));
                }
                _ => panic!("v2 not parsed"),
            }
            assert!(matches!(parse(&v2[..10]), Parsed::Incomplete));
        }
    }
}
