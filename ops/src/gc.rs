//! Garbage collection of the artifact store (`precomp gc`): drops published builds nobody
//! needs any more, never one a kept lock needs. A dry run by default.
//!
//! A manifest (a published build) is kept when any of these holds:
//! - it was published within the last N days;
//! - its artifact was used within the last N days: served (`GET artifacts/SHA256`, recorded
//!   at most hourly per artifact in `artifact_use`) or named by a manifest being published;
//! - its package, version and dependency closure (each with its outer checksum) are those of
//!   an entry of a kept lock (`--keep-lock mix.lock`, any number): whatever the toolchain,
//!   env, target or config it was built for, a client with that lock may need it;
//! - the same, for the locks clients sent with their misses in the last N days;
//! - its manifest cannot be decoded (kept, and reported: nothing is removed on a guess).
//!
//! An artifact is removed when no kept manifest names it and it was neither uploaded nor used
//! within N days. Rows go first, in one write transaction that also re-reads everything the
//! decision rests on (so a publish or a download recorded meanwhile is seen), then the blobs.
//! A crash between the two leaves blobs without rows, which the next run removes ("stray"
//! blobs: in `blobs/` with no row, older than N days; younger ones may be uploads whose row is
//! not committed yet). The verdicts of a removed build go with it, and so do the other
//! manifests kept for its key (agreeing, conflicting and replaced ones: docs/protocol.md,
//! "Several manifests for one key"). A miss reported again after its build went away opens
//! again, so builders rebuild it.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

use precomp_artifacts::maintenance::{GcDrop, GcView};
use precomp_artifacts::{open_existing_metadata, ArtifactStoreError, Blobs};
use precomp_proto::buildkey::PackageRef;
use precomp_proto::lock::MixLock;
use precomp_proto::manifest::{Manifest, SignedManifest};
use prost::Message;

const DAY: i64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Store(#[from] ArtifactStoreError),
    #[error("kept lock {path}: {message}")]
    Lock { path: PathBuf, message: String },
}

/// What to collect.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// `DATA/artifacts`.
    pub store: PathBuf,
    /// Builds published or used within this many days are kept.
    pub older_than_days: u32,
    /// Locks whose builds are kept: `(where it came from, mix.lock text)`.
    pub keep_locks: Vec<(PathBuf, String)>,
    /// Remove; otherwise only report.
    pub apply: bool,
    /// Unix seconds.
    pub now: i64,
}

/// A build that goes (or would go).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DroppedManifest {
    pub key: String,
    pub package: String,
    pub version: String,
    pub artifact_sha256: String,
    pub published_at: i64,
    /// When its artifact was last used, if ever recorded.
    pub last_used: Option<i64>,
}

/// An artifact that goes (or would go).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DroppedArtifact {
    pub sha256: String,
    pub size: u64,
    pub uploaded_at: i64,
    pub last_used: Option<i64>,
}

/// Why builds were kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Kept {
    /// Published or used within N days.
    pub recent: usize,
    /// Needed by a `--keep-lock`.
    pub kept_locks: usize,
    /// Needed by a lock a client reported with a miss within N days.
    pub miss_locks: usize,
    /// Manifests that could not be decoded.
    pub undecodable: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub applied: bool,
    /// Unix seconds: what is older than this and unneeded goes.
    pub cutoff: i64,
    pub manifests: Vec<DroppedManifest>,
    pub artifacts: Vec<DroppedArtifact>,
    /// Blob files with no row, older than the cutoff.
    pub stray_blobs: Vec<String>,
    /// Closed misses (built, failed or expired) last reported before the cutoff: deleted (or
    /// that would be), as nothing reads them any more.
    pub closed_misses: u64,
    /// Bytes of the artifacts and stray blobs removed (or that would be).
    pub bytes: u64,
    pub kept: Kept,
    pub kept_artifacts: usize,
    /// Kept builds whose artifact blob is missing: a store to repair (re-publish them).
    pub missing_blobs: Vec<String>,
}

/// Plans and, with `apply`, performs a collection, through the store's
/// [`precomp_artifacts::MetadataStore::collect_garbage`]: the plan is made on what it reads
/// in one transaction and carried out in that same transaction.
pub fn collect(options: &GcOptions) -> Result<GcReport, GcError> {
    let cutoff = options.now - i64::from(options.older_than_days) * DAY;

    let mut kept_locks = BTreeSet::new();
    for (path, text) in &options.keep_locks {
        let lock = MixLock::parse(text).map_err(|e| GcError::Lock {
            path: path.clone(),
            message: e.to_string(),
        })?;
        kept_locks.extend(lock_closures(&lock));
    }

    let store = open_existing_metadata(&options.store)?;
    let blobs = Blobs::new(&options.store);
    let mut kept = Kept::default();
    let mut dropped_manifests = Vec::new();
    let mut dropped_artifacts = Vec::new();
    let mut needed_artifacts: HashSet<String> = HashSet::new();
    let mut closed_misses = 0;
    let mut known_blobs: HashSet<String> = HashSet::new();
    store.collect_garbage(cutoff, options.apply, &mut |view: &GcView| {
        let mut miss_locks = BTreeSet::new();
        for text in &view.miss_locks {
            if let Ok(lock) = MixLock::parse(text) {
                miss_locks.extend(lock_closures(&lock));
            }
        }
        for build in &view.builds {
            let used = build.last_used;
            let keep = if build.published_at >= cutoff || used.is_some_and(|at| at >= cutoff) {
                kept.recent += 1;
                true
            } else {
                match manifest_closure(&build.signed_manifest) {
                    None => {
                        tracing::warn!(key = %build.key, "gc: keeping a manifest that does not decode");
                        kept.undecodable += 1;
                        true
                    }
                    Some(closure) if kept_locks.contains(&closure) => {
                        kept.kept_locks += 1;
                        true
                    }
                    Some(closure) if miss_locks.contains(&closure) => {
                        kept.miss_locks += 1;
                        true
                    }
                    Some(_) => false,
                }
            };
            if keep {
                needed_artifacts.insert(build.artifact_sha256.clone());
            } else {
                dropped_manifests.push(DroppedManifest {
                    key: build.key.clone(),
                    package: build.package.clone(),
                    version: build.version.clone(),
                    artifact_sha256: build.artifact_sha256.clone(),
                    published_at: build.published_at,
                    last_used: used,
                });
            }
        }
        for artifact in &view.artifacts {
            let used = artifact.last_used;
            let recent = artifact.uploaded_at >= cutoff || used.is_some_and(|at| at >= cutoff);
            if needed_artifacts.contains(&artifact.sha256) || recent {
                known_blobs.insert(artifact.sha256.clone());
            } else {
                dropped_artifacts.push(DroppedArtifact {
                    sha256: artifact.sha256.clone(),
                    size: artifact.size,
                    uploaded_at: artifact.uploaded_at,
                    last_used: used,
                });
            }
        }
        closed_misses = view.old_closed_misses;
        GcDrop {
            builds: dropped_manifests.iter().map(|m| m.key.clone()).collect(),
            artifacts: dropped_artifacts.iter().map(|a| a.sha256.clone()).collect(),
            old_closed_misses: true,
        }
    })?;

    let mut bytes: u64 = dropped_artifacts.iter().map(|a| a.size).sum();
    let dropped: HashSet<&str> = dropped_artifacts
        .iter()
        .map(|a| a.sha256.as_str())
        .collect();
    let mut stray_blobs = Vec::new();
    for blob in blobs.files()? {
        if known_blobs.contains(&blob.sha256)
            || dropped.contains(blob.sha256.as_str())
            || blob.modified >= cutoff
        {
            continue;
        }
        bytes += blob.size;
        if options.apply {
            blobs.remove(&blob.sha256)?;
        }
        stray_blobs.push(blob.sha256);
    }
    let mut missing_blobs: Vec<String> = needed_artifacts
        .iter()
        .filter(|sha| !blobs.path(sha).exists())
        .cloned()
        .collect();
    missing_blobs.sort();

    Ok(GcReport {
        applied: options.apply,
        cutoff,
        kept_artifacts: known_blobs.len(),
        manifests: dropped_manifests,
        artifacts: dropped_artifacts,
        stray_blobs,
        closed_misses,
        bytes,
        kept,
        missing_blobs,
    })
}

/// The closure fingerprint of every Hex entry of `lock` whose closure is all Hex.
fn lock_closures(lock: &MixLock) -> Vec<String> {
    lock.hex()
        .filter_map(|(app, _)| lock.closure(app).ok())
        .map(|(package, closure)| fingerprint(&package, closure))
        .collect()
}

/// The closure fingerprint of a signed manifest's build; `None` if it does not decode.
fn manifest_closure(signed: &[u8]) -> Option<String> {
    let envelope = SignedManifest::decode(signed).ok()?;
    let manifest = <Manifest as Message>::decode(envelope.manifest.as_slice()).ok()?;
    let (package, closure) = manifest.releases().ok()?;
    Some(fingerprint(&package, closure))
}

/// `name@version#checksum` of the package, then of its closure sorted.
fn fingerprint(package: &PackageRef, mut closure: Vec<PackageRef>) -> String {
    closure.sort();
    let one =
        |p: &PackageRef| format!("{}@{}#{}", p.name, p.version, hex::encode(p.outer_checksum));
    let mut text = one(package);
    for member in &closure {
        text.push(' ');
        text.push_str(&one(member));
    }
    text
}
