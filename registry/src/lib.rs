//! The registry: everything that makes and serves Hex repositories.
//!
//! - [`source`]: a Mix / rebar3 / erlang.mk project directory → the package tarball its own
//!   tooling would publish.
//! - [`mirror`]: the pull-through Hex mirror (`precomp serve`): verified, stored, served.
//! - [`static_repo`]: build and verify static, signed Hex repositories (private packages,
//!   test upstreams).
//!
//! Depends on `precomp-proto` for every wire format. The precompiled-artifact service beside
//! the mirror is its own crate, `precomp-artifacts`, sharing [`blob_dir`]'s layout.

pub mod blob_dir;
pub use blob_dir::blob_relative_path;
pub mod mirror;
pub mod source;
pub mod static_repo;
