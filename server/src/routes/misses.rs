//! `/precomp/v1/misses`: `POST` a miss (anyone, or a reader when the mirror requires a token
//! to read: [`crate::access`]), `GET`/`HEAD` the open misses (a builder's token: they carry
//! consumers' compile-time values).
//!
//! A report is taken only within the bounds on reports per client address and in total
//! (429 with `Retry-After`), only when its key is what its lock and inputs give
//! (`Artifacts::check_miss`), and only when every release its lock pins has the checksums of
//! the mirror's verified `/packages/NAME` record ([`check_releases`]; records the mirror does
//! not hold are fetched through the normal pull-through path, at most
//! `ServerConfig::miss_record_fetches` per report, all within one `--upstream-timeout`). A
//! refusal never names the key or checksum the mirror computed.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use futures::stream::{self, StreamExt};
use http::StatusCode;
use precomp_artifacts::{LockedRelease, MissReport, Misses, Refusal, MAX_MISS_BODY};
use precomp_registry::mirror::{Mirror, ReleaseLookup};

use super::api::{blocking, created_or_ok, parse_json, ApiRequest};
use crate::respond::json;
use crate::AppState;

const LIST: &str = "precomp_misses";
const REPORTS: &str = "precomp_miss_reports";

/// Registry records looked up at once while a report is checked.
const CONCURRENT_LOOKUPS: usize = 8;

pub async fn misses(State(app): State<AppState>, request: Request) -> Response {
    let client = crate::layers::client(&request);
    let mut request = ApiRequest::new(request);
    if request.read() {
        let result = list(&app, &request.parts, request.head()).await;
        return request.finish(LIST, result).await;
    }
    if request.method() == http::Method::POST {
        let result = match app.policy.misses.admit(client) {
            Ok(()) => post(&app, &mut request).await,
            Err(refusal) => Err(refusal),
        };
        return request.finish(REPORTS, result).await;
    }
    super::method_not_allowed(LIST, request.method(), "GET, HEAD, POST", request.head())
}

async fn list(
    app: &AppState,
    parts: &http::request::Parts,
    head: bool,
) -> Result<Response, Refusal> {
    let publisher = super::api::any_token(parts)?;
    // Misses carry consumers' compile-time values: builders' tokens only (the access table
    // asks for the builder scope; the keys are checked too).
    let misses = blocking(&app.artifacts, move |a| {
        Ok(Misses {
            misses: a.open_misses(&publisher)?,
        })
    })
    .await?;
    Ok(json(StatusCode::OK, &misses, "no-store", head))
}

async fn post(app: &AppState, request: &mut ApiRequest) -> Result<Response, Refusal> {
    let (bytes, _budget) = request.read_body(MAX_MISS_BODY, "the miss report").await?;
    let report: MissReport = parse_json(&bytes, "miss report")?;
    drop(bytes);
    let report = Arc::new(report);
    let checking = Arc::clone(&report);
    let checked = blocking(&app.artifacts, move |a| a.check_miss(&checking)).await?;
    check_releases(
        &app.mirror,
        checked.releases(),
        app.policy.miss_record_fetches,
    )
    .await?;
    let recorded = blocking(&app.artifacts, move |a| {
        a.record_checked_miss(&report, checked)
    })
    .await?;
    Ok(json(
        created_or_ok(recorded.count == 1),
        &recorded,
        "no-store",
        false,
    ))
}

/// Every release must have the checksums the mirror's verified registry record gives it:
/// records held are used as they are; at most `max_fetches` records not held are fetched
/// upstream; the whole check takes at most the mirror's `upstream_timeout`. A release unknown
/// to the registry or with other checksums is a 422 naming it; upstream failing is a 502 (or
/// 503 when out of time), to be retried.
pub async fn check_releases(
    mirror: &Arc<Mirror>,
    releases: &[LockedRelease],
    max_fetches: usize,
) -> Result<(), Refusal> {
    let timeout = mirror.config().upstream_timeout;
    let check = async {
        // Held records first (no upstream request); then those not held, within the bound.
        let held: Vec<(LockedRelease, ReleaseLookup)> = stream::iter(releases.iter().cloned())
            .map(|release| async move {
                let found = mirror
                    .release_checksums(&release.package, &release.version, false)
                    .await;
                (release, found)
            })
            .buffer_unordered(CONCURRENT_LOOKUPS)
            .collect()
            .await;
        let mut missing = Vec::new();
        for (release, found) in held {
            match found {
                ReleaseLookup::NotHeld => missing.push(release),
                found => judge(&release, found)?,
            }
        }
        if missing.len() > max_fetches {
            return Err(Refusal::new(
                422,
                format!(
                    "lock: the mirror holds no registry record of {} of its packages (e.g. {} \
                     {}), more than the {max_fetches} one miss report may fetch: fetch the \
                     dependencies through this mirror (`mix deps.get` with HEX_MIRROR) first",
                    missing.len(),
                    missing[0].package,
                    missing[0].version
                ),
            ));
        }
        let fetched: Vec<(LockedRelease, ReleaseLookup)> = stream::iter(missing)
            .map(|release| async move {
                let found = mirror
                    .release_checksums(&release.package, &release.version, true)
                    .await;
                (release, found)
            })
            .buffer_unordered(CONCURRENT_LOOKUPS)
            .collect()
            .await;
        for (release, found) in fetched {
            judge(&release, found)?;
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(Refusal {
            retry_after: Some(30),
            ..Refusal::new(
                503,
                format!(
                    "checking the lock's packages against the registry took over \
                     {timeout:?} (the upstream timeout); retry later"
                ),
            )
        }),
    }
}

fn judge(release: &LockedRelease, found: ReleaseLookup) -> Result<(), Refusal> {
    match found {
        ReleaseLookup::Found(checksums) => {
            release.check(&checksums.inner, checksums.outer.as_deref())
        }
        ReleaseLookup::NotFound => Err(Refusal::new(
            422,
            format!(
                "lock: {} {} is not in the registry this mirror serves",
                release.package, release.version
            ),
        )),
        ReleaseLookup::NotHeld => Err(Refusal::internal(format!(
            "{} {}: the registry record was not fetched",
            release.package, release.version
        ))),
        ReleaseLookup::Failed(reason) => Err(Refusal::new(
            502,
            format!(
                "lock: the registry record of {} could not be checked: {reason}; retry later",
                release.package
            ),
        )),
    }
}
