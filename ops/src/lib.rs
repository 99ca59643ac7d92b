//! Operations: keys, reproducibility audits, garbage collection, backup and deployment.
//!
//! Not built yet: this crate marks its place in the workspace. It will depend on
//! `precomp-proto`, `precomp-registry` and `precomp-builder`.
