//! The wire formats precomp speaks, with no I/O beyond byte slices and paths it is handed.
//!
//! - [`registry`]: Hex registry resources (`/names`, `/versions`, `/packages/NAME`):
//!   protobuf messages, RSA signatures, origin checks.
//! - [`tarball`]: Hex package tarballs (version 3): reading, creating, safe extraction.
//! - [`term`]: Erlang and Elixir term text, the syntax of `metadata.config`, `.app` files,
//!   `rebar.config` and `mix.lock`.
//! - [`metadata`]: a package's `metadata.config`.
//! - [`lock`]: a project's `mix.lock`.
//! - [`manager`]: which build tool Mix compiles each dependency with, replayed from its
//!   converger on the lock graph.
//! - [`rebar_lock`]: a rebar3 project's `rebar.lock`.
//! - [`buildkey`]: the build key of a precompiled artifact, and a lock's closures.
//! - [`manifest`]: artifact manifests and their ed25519 signatures.
//! - [`verdict`]: audit verdicts, signed by auditors who rebuilt a published artifact.
//! - [`api`]: the JSON bodies of the mirror's artifact API.
//! - [`artifact`]: artifact tarballs: reproducible packing, safe unpacking, checks against a
//!   manifest.
//! - [`config`]: a Mix project's compile-time config values, as `Application.compile_env`
//!   reads them.
//! - [`trust`]: the signed trust document: keys, roles, validity, revocations, rotations,
//!   and the one walk along root rotations ([`trust::follow`]).
//! - [`file`]: reading a file within a size bound.
//!
//! This crate sits at the bottom of the workspace: every other crate depends on it, it depends
//! on none of them.

pub mod api;
pub mod artifact;
pub mod beam;
pub mod buildkey;
pub mod config;
pub mod etf;
pub mod file;
pub mod lock;
pub mod manager;
pub mod manifest;
pub mod metadata;
pub mod rebar_lock;
pub mod registry;
pub mod tarball;
pub mod term;
pub mod time;
pub mod trust;
mod unpack;
pub mod verdict;
