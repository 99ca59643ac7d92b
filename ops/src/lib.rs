//! Operations: reproducibility audits, keys and the trust document, garbage collection,
//! backup and restore, deployment files (`ops/deploy/`).
//!
//! - [`audit`]: rebuild published artifacts independently, compare, explain differences.
//! - [`trust`]: keys with roles, rotation and revocation in a signed trust document.
//! - [`gc`]: drop artifacts no recent lock needs.
//! - [`backup`]: consistent snapshots of a data directory, and restoring them.

pub mod audit;
pub mod backup;
pub mod gc;
pub mod trust;
