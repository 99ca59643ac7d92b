//! The mirror's HTTP front: hyper, HTTP/1.1 with keep-alive, GET and HEAD.
//!
//! Bodies are sent exactly as stored: no `Content-Encoding`, ever — registry files are gzip
//! bodies and Mix would gunzip one twice (`../shared/design/hex-protocol.md` §1). Every 200
//! carries a strong ETag (the body's sha256), and `If-None-Match` gets a 304.
//!
//! With an artifact store ([`serve_with_artifacts`]), `/precomp/v1/...` goes to the artifact
//! API ([`crate::artifacts`]), which also takes PUT and POST; every other path is answered
//! exactly as without it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::metrics::{RouteLabel, RouteStatus};
use super::{Mirror, Outcome, Route};
use crate::artifacts::{self, Artifacts};

/// Serves until `shutdown` resolves, then stops accepting, lets requests in flight finish
/// (up to 30 seconds), and returns.
pub async fn serve(
    mirror: Arc<Mirror>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with_artifacts(mirror, None, listener, shutdown).await
}

/// [`serve`], with the artifact API under `/precomp/v1/` when `artifacts` is given.
pub async fn serve_with_artifacts(
    mirror: Arc<Mirror>,
    artifacts: Option<Arc<Artifacts>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let mirror = Arc::clone(&mirror);
                let artifacts = artifacts.clone();
                let service = service_fn(move |request| {
                    let mirror = Arc::clone(&mirror);
                    let artifacts = artifacts.clone();
                    async move {
                        Ok::<_, Infallible>(match artifacts {
                            Some(artifacts) if artifacts::is_api_path(request.uri().path()) => {
                                handle_api(&mirror, &artifacts, request).await
                            }
                            _ => handle(&mirror, request).await,
                        })
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for requests in flight");
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after 30 s; closing them");
    }
    Ok(())
}

/// The artifact API: counted in the mirror's metrics like every other route, with the bytes
/// of what it serves.
async fn handle_api(
    mirror: &Mirror,
    artifacts: &Arc<Artifacts>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let head = request.method() == Method::HEAD;
    let (route, response) = artifacts::handle(artifacts, request).await;
    if response.status() == StatusCode::OK && !head {
        let size = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        mirror
            .metrics()
            .bytes_served
            .get_or_create(&RouteLabel { route })
            .inc_by(size);
    }
    count(mirror, route, &response);
    response
}

async fn handle(mirror: &Arc<Mirror>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are supported",
            head,
        );
    }
    let Some(route) = Route::parse(request.uri().path()) else {
        let response = text(StatusCode::NOT_FOUND, "not found", head);
        count(mirror, "unknown", &response);
        return response;
    };
    let response = match &route {
        Route::Healthz => text(StatusCode::OK, "ok", head),
        Route::Metrics => {
            let mut response = Response::new(Full::new(Bytes::from(mirror.metrics().render())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        _ => match mirror.object(&route).await {
            Outcome::Found { meta, body } => {
                let size = body.len() as u64;
                let response = crate::content::content(
                    body,
                    &meta.sha256,
                    route.cache_control(),
                    "application/octet-stream",
                    request.headers(),
                    head,
                );
                if response.status() == StatusCode::OK && !head {
                    mirror
                        .metrics()
                        .bytes_served
                        .get_or_create(&RouteLabel {
                            route: route.label(),
                        })
                        .inc_by(size);
                }
                response
            }
            Outcome::NotFound => text(StatusCode::NOT_FOUND, &format!("{route}: not found"), head),
            Outcome::BadGateway(reason) => text(StatusCode::BAD_GATEWAY, &reason, head),
            Outcome::Internal(reason) => text(StatusCode::INTERNAL_SERVER_ERROR, &reason, head),
        },
    };
    count(mirror, route.label(), &response);
    response
}

fn count(mirror: &Mirror, route: &'static str, response: &Response<Full<Bytes>>) {
    mirror
        .metrics()
        .requests
        .get_or_create(&RouteStatus {
            route,
            status: response.status().as_u16(),
        })
        .inc();
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
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(size));
    if status != StatusCode::OK {
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
