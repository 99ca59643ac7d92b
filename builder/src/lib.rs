//! The builder: compiles a Hex package version against its exact dependency closure, in the
//! sandbox, into a reproducible artifact with a signed manifest.
//!
//! - [`sources`]: release tarballs through the mirror, checked against the lock.
//! - [`managers`]: the build tool each package is built with, as the consumer's Mix picks it.
//! - [`project`]: the generated Mix project at the canonical path `/build`.
//! - [`build`]: one package: sandboxed `mix deps.compile`, artifact, manifest, signature.
//! - [`run`]: a lock's packages as a DAG, in parallel, reusing stored builds.
//! - [`store`]: the local store of artifacts, manifests and failure logs.
//! - [`workdir`]: work directories removed even when their process is killed.
//! - [`recipe`]: [`RECIPE`], how this builder compiles, recorded in every manifest.
//!
//! A run is cancelled through the [`Cancel`] handle in its [`build::BuildContext`]: nothing
//! new starts, running sandboxes are killed, and those packages end as
//! [`run::Status::Cancelled`].

pub mod atoms;
pub mod boot;
pub mod build;
pub mod config;
pub mod error;
pub mod managers;
pub mod project;
pub mod recipe;
pub mod run;
pub mod sources;
pub mod store;
pub mod workdir;

pub use error::{BuildError, Result};
pub use precomp_sandbox::Cancel;
pub use recipe::RECIPE;
