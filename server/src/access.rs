//! Who may do what: the one place every route's requirement is written and checked, before
//! its handler runs ([`authorize`], a route layer on the main router). A handler that needs a
//! token finds the authenticated [`Principal`] in the request's extensions; what the token's
//! keys allow it to sign is the artifact service's business (`precomp_artifacts::trust_policy`).
//!
//! | route | method | needs |
//! |---|---|---|
//! | `/healthz`, `/metrics` | any | nothing |
//! | Hex routes (`/names`, `/versions`, `/packages/…`, `/tarballs/…`, `/docs/…`, `/installs/…`, `/public_key`) | GET, HEAD | a reader when `require_read_token` |
//! | `artifacts/SHA256`, `manifests/KEY[/history]`, `index[/PACKAGE]`, `failures/PACKAGE`, `verdicts/KEY`, `trust[/VERSION]` | GET, HEAD | a reader when `require_read_token` |
//! | `misses` | POST | a reader when `require_read_token` (a consumer's CI reports what it fetched with the credential it fetched with) |
//! | `misses` | GET, HEAD | `builder` (misses carry consumers' compile-time values) |
//! | `failures` | POST | `builder` |
//! | `artifacts/SHA256`, `manifests/KEY` | PUT | `builder` or `auditor` (auditors countersign; the keys decide what is published) |
//! | `verdicts/KEY` | POST | `auditor` |
//! | `jobs`, `jobs/lease`, `jobs/ID/heartbeat`, `jobs/ID/release` | any | `builder` or `auditor` (build jobs need builder keys, audit jobs auditor keys) |
//!
//! Every scope reads. Methods a route does not take pass through to its handler, which
//! answers 405. Future routes (pages, organisation repositories) get a row here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::header::AUTHORIZATION;
use http::Method;
use parking_lot::Mutex;
use precomp_artifacts::{Principal, Refusal, Scope};

use crate::routes::api::{blocking, ApiRequest};
use crate::AppState;

/// The Hex repository's name in the table: it is the router's fallback (one service for
/// `/names`, `/versions`, `/packages/…`, `/tarballs/…`, `/docs/…`, `/installs/…`,
/// `/public_key`; `routes::hex`), so it has no path pattern and calls [`check`] itself.
pub const HEX_REPOSITORY: &str = "the Hex repository";

/// What a route and method need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Open,
    /// Anyone, or a token (any scope) when the mirror requires one to read.
    Read,
    /// A token with one of these scopes.
    Scopes(&'static [Scope]),
}

const BUILDER: Access = Access::Scopes(&[Scope::Builder]);
const AUDITOR: Access = Access::Scopes(&[Scope::Auditor]);
const WORKER: Access = Access::Scopes(&[Scope::Builder, Scope::Auditor]);

/// The table: what `method` on the route matched as `route` (axum's path pattern) needs;
/// `None` for a method the route does not take (its handler answers 405).
pub fn required(route: &str, method: &Method) -> Option<Access> {
    let read = method == Method::GET || method == Method::HEAD;
    let access = match route {
        "/healthz" | "/metrics" => Access::Open,
        HEX_REPOSITORY if read => Access::Read,
        "/precomp/v1/artifacts/{sha256}" if read => Access::Read,
        // Content-addressed and meaningless without a manifest: auditors upload what they
        // countersign, as builders do.
        "/precomp/v1/artifacts/{sha256}" if method == Method::PUT => WORKER,
        "/precomp/v1/manifests/{key}" if read => Access::Read,
        "/precomp/v1/manifests/{key}" if method == Method::PUT => WORKER,
        "/precomp/v1/manifests/{key}/history"
        | "/precomp/v1/index"
        | "/precomp/v1/index/{package}"
        | "/precomp/v1/failures/{package}"
        | "/precomp/v1/trust"
        | "/precomp/v1/trust/{version}"
            if read =>
        {
            Access::Read
        }
        "/precomp/v1/failures" if method == Method::POST => BUILDER,
        "/precomp/v1/misses" if read => BUILDER,
        "/precomp/v1/misses" if method == Method::POST => Access::Read,
        "/precomp/v1/verdicts/{key}" if read => Access::Read,
        "/precomp/v1/verdicts/{key}" if method == Method::POST => AUDITOR,
        "/precomp/v1/jobs" if read => WORKER,
        "/precomp/v1/jobs/lease"
        | "/precomp/v1/jobs/{job}/heartbeat"
        | "/precomp/v1/jobs/{job}/release"
            if method == Method::POST =>
        {
            WORKER
        }
        _ => return None,
    };
    Some(access)
}

/// The route layer: checks the route's requirement ([`required`]) and, when a token was
/// needed, puts its [`Principal`] in the request's extensions; else answers 401 (no or a bad
/// token) or 403 (a token without the scope).
pub async fn authorize(
    State(app): State<AppState>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let Some(route) = matched else {
        return next.run(request).await;
    };
    match check(&app, route.as_str(), request).await {
        Ok(request) => next.run(request).await,
        Err(refused) => refused,
    }
}

/// Checks the requirement of `route` (a path pattern of the table, or [`HEX_REPOSITORY`]) for
/// `request`: the request, with the [`Principal`] in its extensions when a token was needed;
/// else the answer (401: no or a bad token; 403: a token without the scope).
pub async fn check(app: &AppState, route: &str, mut request: Request) -> Result<Request, Response> {
    let needs = match required(route, request.method()) {
        None | Some(Access::Open) => return Ok(request),
        Some(Access::Read) if !app.policy.require_read_token => return Ok(request),
        Some(Access::Read) => &[][..],
        Some(Access::Scopes(scopes)) => scopes,
    };
    let authorization = match request.headers().get(AUTHORIZATION) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|v| Some(v.to_string()))
            .map_err(|_| Refusal::new(401, "the Authorization header is not ASCII")),
    };
    let checked = match authorization {
        Ok(authorization) => {
            blocking(&app.artifacts, move |a| {
                a.authenticate(authorization.as_deref())
            })
            .await
        }
        Err(refusal) => Err(refusal),
    };
    match checked.and_then(|principal| permit(principal, needs, route)) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            Ok(request)
        }
        Err(refusal) => Err(ApiRequest::new(request)
            .finish("unauthorized", Err(refusal))
            .await),
    }
}

/// `principal` if it has one of `needs` (none: any token), else 403 naming them.
fn permit(principal: Principal, needs: &[Scope], route: &str) -> Result<Principal, Refusal> {
    if needs.is_empty() || needs.iter().any(|scope| principal.has(*scope)) {
        return Ok(principal);
    }
    let needs: Vec<&str> = needs.iter().map(|scope| scope.as_str()).collect();
    let has: Vec<&str> = principal
        .scopes
        .iter()
        .map(|scope| scope.as_str())
        .collect();
    Err(Refusal::new(
        403,
        format!(
            "token {:?} has the scopes {} but {route} needs {}: ask the mirror's operator for a \
             token with it (`precomp token create --scope SCOPE`)",
            principal.publisher.name,
            has.join(", "),
            needs.join(" or ")
        ),
    ))
}

/// The authenticated token of a request [`authorize`] let through, if it needed one.
pub fn principal(extensions: &http::Extensions) -> Result<Principal, Refusal> {
    extensions.get::<Principal>().cloned().ok_or_else(|| {
        Refusal::internal("a route that needs a token has no row in the access table")
    })
}

/// The access settings and the miss report bounds of a running server.
pub struct Policy {
    /// Reads (Hex routes, the artifact API's public reads, miss reports) need a token.
    pub require_read_token: bool,
    /// Miss reports per time window.
    pub misses: MissRate,
    /// Registry records one miss report may make the mirror fetch upstream.
    pub miss_record_fetches: usize,
}

impl Policy {
    pub fn new(config: &crate::ServerConfig) -> Policy {
        Policy {
            require_read_token: config.require_read_token,
            misses: MissRate::new(
                config.miss_reports_per_client,
                config.miss_reports_total,
                MISS_WINDOW,
            ),
            miss_record_fetches: config.miss_record_fetches,
        }
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy::new(&crate::ServerConfig::default())
    }
}

/// The window miss reports are counted in.
pub const MISS_WINDOW: Duration = Duration::from_secs(60);

/// Bound on the client addresses whose miss reports are counted at once: past it, windows
/// that ended are forgotten, and if none has, new clients share one count.
const MAX_COUNTED_CLIENTS: usize = 65_536;

/// Miss reports counted per client address and in total, in fixed windows: past either
/// bound a report is refused (429) until the window ends.
pub struct MissRate {
    per_client: u32,
    total: u32,
    window: Duration,
    counts: Mutex<Counts>,
}

struct Counts {
    started: Instant,
    total: u32,
    clients: HashMap<IpAddr, u32>,
    /// Clients past [`MAX_COUNTED_CLIENTS`], counted together.
    overflow: u32,
}

impl MissRate {
    pub fn new(per_client: u32, total: u32, window: Duration) -> MissRate {
        MissRate {
            per_client,
            total,
            window,
            counts: Mutex::new(Counts {
                started: Instant::now(),
                total: 0,
                clients: HashMap::new(),
                overflow: 0,
            }),
        }
    }

    /// Counts a report from `client`: a 429 with the seconds to the window's end when it is
    /// one too many for the client or in total.
    pub fn admit(&self, client: Option<IpAddr>) -> Result<(), Refusal> {
        let mut counts = self.counts.lock();
        let now = Instant::now();
        if now.duration_since(counts.started) >= self.window {
            counts.started = now;
            counts.total = 0;
            counts.clients.clear();
            counts.overflow = 0;
        }
        let retry = (self.window - now.duration_since(counts.started))
            .as_secs()
            .max(1);
        if counts.total >= self.total {
            return Err(Refusal::too_many(
                retry,
                format!(
                    "the mirror takes at most {} miss reports a minute from everyone together \
                     (--miss-reports-total); retry in {retry} s",
                    self.total
                ),
            ));
        }
        let full = counts.clients.len() >= MAX_COUNTED_CLIENTS;
        let count = match client {
            Some(address) if !full || counts.clients.contains_key(&address) => {
                counts.clients.entry(address).or_insert(0)
            }
            _ => &mut counts.overflow,
        };
        if *count >= self.per_client {
            return Err(Refusal::too_many(
                retry,
                format!(
                    "this client sent {} miss reports this minute, the most the mirror takes \
                     from one address (--miss-reports-per-client); retry in {retry} s",
                    self.per_client
                ),
            ));
        }
        *count += 1;
        counts.total += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_need_scopes_and_reads_follow_the_setting() {
        assert_eq!(required("/healthz", &Method::GET), Some(Access::Open));
        assert_eq!(required(HEX_REPOSITORY, &Method::GET), Some(Access::Read));
        assert_eq!(required(HEX_REPOSITORY, &Method::POST), None);
        assert_eq!(
            required("/precomp/v1/artifacts/{sha256}", &Method::PUT),
            Some(WORKER)
        );
        assert_eq!(
            required("/precomp/v1/failures", &Method::POST),
            Some(BUILDER)
        );
        assert_eq!(required("/precomp/v1/misses", &Method::GET), Some(BUILDER));
        assert_eq!(
            required("/precomp/v1/misses", &Method::POST),
            Some(Access::Read)
        );
        assert_eq!(
            required("/precomp/v1/verdicts/{key}", &Method::POST),
            Some(AUDITOR)
        );
        assert_eq!(
            required("/precomp/v1/jobs/lease", &Method::POST),
            Some(WORKER)
        );
    }

    #[test]
    fn miss_reports_are_bounded_per_client_and_in_total() {
        let rate = MissRate::new(2, 3, Duration::from_secs(60));
        let a = Some("10.0.0.1".parse().unwrap());
        let b = Some("10.0.0.2".parse().unwrap());
        rate.admit(a).unwrap();
        rate.admit(a).unwrap();
        let refused = rate.admit(a).unwrap_err();
        assert_eq!(refused.status, 429);
        assert!(refused.retry_after.is_some_and(|s| s > 0 && s <= 60));
        assert!(refused.message.contains("one address"), "{refused:?}");
        rate.admit(b).unwrap();
        let refused = rate.admit(b).unwrap_err();
        assert!(refused.message.contains("everyone"), "{refused:?}");
        let quick = MissRate::new(1, 10, Duration::from_millis(50));
        quick.admit(a).unwrap();
        assert!(quick.admit(a).is_err());
        std::thread::sleep(Duration::from_millis(60));
        quick.admit(a).unwrap();
    }
}
