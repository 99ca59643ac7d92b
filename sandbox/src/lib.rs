//! The sandbox: the hermetic container every build runs in — bubblewrap, no network, a
//! read-only toolchain image identified by digest, a clean environment, fixed paths, limits.
//!
//! Not built yet: this crate marks its place in the workspace. It will depend on
//! `precomp-proto` only.
