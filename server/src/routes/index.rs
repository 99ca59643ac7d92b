//! `/precomp/v1/index` (the packages with builds) and `/precomp/v1/index/PACKAGE` (every
//! build of a package): JSON, revalidated with the ETag; never 404.

use axum::extract::{Request, State};
use axum::response::Response;
use precomp_artifacts::{valid_package, Index, Packages};

use super::api::{self, blocking, ApiRequest};
use crate::respond::json_revalidated;
use crate::AppState;

const LABEL: &str = "precomp_index";

pub async fn packages(State(app): State<AppState>, request: Request) -> Response {
    let request = ApiRequest::new(request);
    if !request.read() {
        return super::method_not_allowed(LABEL, request.method(), "GET, HEAD", request.head());
    }
    let packages = blocking(&app.artifacts, |a| {
        Ok(Packages {
            packages: a.store().packages()?,
        })
    })
    .await;
    let result = packages.map(|p| json_revalidated(&p, request.headers(), request.head()));
    request.finish(LABEL, result).await
}

pub async fn index(
    State(app): State<AppState>,
    package: super::Param,
    request: Request,
) -> Response {
    let request = ApiRequest::new(request);
    let Some(package) = super::param(package).filter(|p| valid_package(p)) else {
        return api::unknown(request.head());
    };
    if !request.read() {
        return super::method_not_allowed(LABEL, request.method(), "GET, HEAD", request.head());
    }
    let index = blocking(&app.artifacts, move |a| {
        Ok(Index {
            builds: a.index_builds(&package)?,
            package,
        })
    })
    .await;
    let result = index.map(|i| json_revalidated(&i, request.headers(), request.head()));
    request.finish(LABEL, result).await
}
