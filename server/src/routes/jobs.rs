//! `/precomp/v1/jobs/...`: workers lease jobs (`POST jobs/lease`), renew the lease while they
//! work (`POST jobs/ID/heartbeat`) and give it back (`POST jobs/ID/release`). What a token
//! may lease depends on the job's kind; the artifact service checks that. `GET jobs` (a
//! builder's token) lists the open misses by tuple, which tuples no worker asked for lately,
//! the workers seen and the live leases.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::header::{HeaderValue, CACHE_CONTROL};
use http::StatusCode;
use precomp_artifacts::{HeartbeatRequest, LeaseRequest, Refusal, ReleaseRequest, MAX_JOB_BODY};

use super::api::{self, blocking, optional_json, parse_json, path_number, ApiRequest};
use crate::respond::json;
use crate::AppState;

const LEASES: &str = "precomp_job_leases";
const HEARTBEATS: &str = "precomp_job_heartbeats";
const RELEASES: &str = "precomp_job_releases";
const LISTING: &str = "precomp_jobs";

/// `GET`/`HEAD /precomp/v1/jobs`: the job listing.
pub async fn listing(State(app): State<AppState>, request: Request) -> Response {
    let request = ApiRequest::new(request);
    if !request.read() {
        return super::method_not_allowed(LISTING, request.method(), "GET, HEAD", request.head());
    }
    let head = request.head();
    let result = list(&app, &request.parts, head).await;
    request.finish(LISTING, result).await
}

async fn list(
    app: &AppState,
    parts: &http::request::Parts,
    head: bool,
) -> Result<Response, Refusal> {
    let publisher = api::any_token(parts)?;
    let listing = blocking(&app.artifacts, move |a| a.job_listing(&publisher)).await?;
    Ok(json(StatusCode::OK, &listing, "no-store", head))
}

pub async fn lease(State(app): State<AppState>, request: Request) -> Response {
    let mut request = ApiRequest::new(request);
    if request.method() != http::Method::POST {
        return super::method_not_allowed(LEASES, request.method(), "POST", request.head());
    }
    let result = post_lease(&app, &mut request).await;
    request.finish(LEASES, result).await
}

pub async fn heartbeat(
    State(app): State<AppState>,
    job: super::Param,
    request: Request,
) -> Response {
    let mut request = ApiRequest::new(request);
    let Some(job) = super::param(job).and_then(|j| path_number(&j)) else {
        return api::unknown(request.head());
    };
    if request.method() != http::Method::POST {
        return super::method_not_allowed(HEARTBEATS, request.method(), "POST", request.head());
    }
    let result = post_heartbeat(&app, job, &mut request).await;
    request.finish(HEARTBEATS, result).await
}

pub async fn release(State(app): State<AppState>, job: super::Param, request: Request) -> Response {
    let mut request = ApiRequest::new(request);
    let Some(job) = super::param(job).and_then(|j| path_number(&j)) else {
        return api::unknown(request.head());
    };
    if request.method() != http::Method::POST {
        return super::method_not_allowed(RELEASES, request.method(), "POST", request.head());
    }
    let result = post_release(&app, job, &mut request).await;
    request.finish(RELEASES, result).await
}

/// `200` with the lease, `204` when no job matches.
async fn post_lease(app: &AppState, request: &mut ApiRequest) -> Result<Response, Refusal> {
    let publisher = api::any_token(&request.parts)?;
    let (bytes, _budget) = request.read_body(MAX_JOB_BODY, "the lease request").await?;
    let lease_request: LeaseRequest = parse_json(&bytes, "lease request")?;
    let lease = blocking(&app.artifacts, move |a| {
        a.lease_job(&lease_request, &publisher)
    })
    .await?;
    Ok(match lease {
        Some(lease) => json(StatusCode::OK, &lease, "no-store", false),
        None => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
    })
}

async fn post_heartbeat(
    app: &AppState,
    job: u64,
    request: &mut ApiRequest,
) -> Result<Response, Refusal> {
    let publisher = api::any_token(&request.parts)?;
    let (bytes, _budget) = request.read_body(MAX_JOB_BODY, "the heartbeat").await?;
    let heartbeat: HeartbeatRequest = optional_json(&bytes, "heartbeat")?;
    let renewed = blocking(&app.artifacts, move |a| {
        a.heartbeat_job(job, &heartbeat, &publisher)
    })
    .await?;
    Ok(json(StatusCode::OK, &renewed, "no-store", false))
}

async fn post_release(
    app: &AppState,
    job: u64,
    request: &mut ApiRequest,
) -> Result<Response, Refusal> {
    let publisher = api::any_token(&request.parts)?;
    let (bytes, _budget) = request.read_body(MAX_JOB_BODY, "the release").await?;
    let release: ReleaseRequest = optional_json(&bytes, "release")?;
    let released = blocking(&app.artifacts, move |a| {
        a.release_job(job, &release, &publisher)
    })
    .await?;
    Ok(json(StatusCode::OK, &released, "no-store", false))
}
