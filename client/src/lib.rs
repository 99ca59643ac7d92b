//! The consumer side: what `precomp fetch` does in a Mix project after `mix deps.get`.
//!
//! - [`project`]: the Mix project as Mix sees it (build path, declared deps, toolchain),
//!   read with the local `elixir`.
//! - [`trust`]: trusted keys, the signature policy, the config file.
//! - the mirror's artifact API (index, manifests, artifacts, misses), bounded and retried,
//!   is `precomp_http::artifacts::ArtifactClient`, the client every command shares.
//! - [`install`]: atomic installs into `_build/<env>/lib/<app>` with the markers Mix checks,
//!   and recovery after an interrupted run.
//! - [`fetch`]: the whole run: keys, lookup, verification, install, report.
//! - [`revoked`]: removing every install no trusted key vouches for, when the trust policy
//!   leaves no usable key and the run stops.

pub mod consumer_config;
mod download;
pub mod error;
pub mod fetch;
pub mod install;
pub mod process;
pub mod project;
pub mod revoked;
pub mod trust;

pub use error::ClientError;
pub use fetch::{fetch, DepReport, FetchOptions, FetchReport, MissKind, Observer, Outcome};
