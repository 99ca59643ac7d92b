//! The builder: compiles a Hex package version against its exact dependency closure, in the
//! sandbox, into a reproducible beam tarball signed with ed25519.
//!
//! Not built yet: this crate marks its place in the workspace. It will depend on
//! `precomp-proto` (build keys, manifests) and `precomp-sandbox` (hermetic execution), and
//! the `precomp` CLI on it.
