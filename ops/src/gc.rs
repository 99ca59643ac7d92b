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
//! not committed yet). The verdicts of a removed build go with it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use precomp_proto::buildkey::PackageRef;
use precomp_proto::lock::MixLock;
use precomp_proto::manifest::{Manifest, SignedManifest};
use precomp_registry::blob_relative_path;
use prost::Message;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

const DAY: i64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("{} has no artifact store (artifacts.db): is --data the mirror's data directory?", dir.display())]
    NoStore { dir: PathBuf },
    #[error("artifact database {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
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
    /// Bytes of the artifacts and stray blobs removed (or that would be).
    pub bytes: u64,
    pub kept: Kept,
    pub kept_artifacts: usize,
    /// Kept builds whose artifact blob is missing: a store to repair (re-publish them).
    pub missing_blobs: Vec<String>,
}

/// Plans and, with `apply`, performs a collection.
pub fn collect(options: &GcOptions) -> Result<GcReport, GcError> {
    let db_path = options.store.join("artifacts.db");
    if !db_path.is_file() {
        return Err(GcError::NoStore {
            dir: options.store.clone(),
        });
    }
    let db_err = |source| GcError::Db {
        path: db_path.clone(),
        source,
    };
    let cutoff = options.now - i64::from(options.older_than_days) * DAY;

    let mut kept_locks = BTreeSet::new();
    for (path, text) in &options.keep_locks {
        let lock = MixLock::parse(text).map_err(|e| GcError::Lock {
            path: path.clone(),
            message: e.to_string(),
        })?;
        kept_locks.extend(lock_closures(&lock));
    }

    let mut db =
        Connection::open_with_flags(&db_path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(db_err)?;
    db.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(db_err)?;
    // Created by the store too; an older store may not have it yet.
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS artifact_use (
            sha256    TEXT PRIMARY KEY NOT NULL,
            last_used INTEGER NOT NULL
        ) STRICT;",
    )
    .map_err(db_err)?;
    // A write transaction when applying: nothing is published or recorded while the plan is
    // made and carried out.
    let tx = db
        .transaction_with_behavior(if options.apply {
            TransactionBehavior::Immediate
        } else {
            TransactionBehavior::Deferred
        })
        .map_err(db_err)?;

    let mut miss_locks = BTreeSet::new();
    {
        let mut stmt = tx
            .prepare("SELECT lock FROM misses WHERE last_reported >= ?1")
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![cutoff], |row| row.get::<_, String>(0))
            .map_err(db_err)?;
        for text in rows {
            let text = text.map_err(db_err)?;
            if let Ok(lock) = MixLock::parse(&text) {
                miss_locks.extend(lock_closures(&lock));
            }
        }
    }

    let last_used: HashMap<String, i64> = {
        let mut stmt = tx
            .prepare("SELECT sha256, last_used FROM artifact_use")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };

    let mut kept = Kept::default();
    let mut dropped_manifests = Vec::new();
    let mut needed_artifacts: HashSet<String> = HashSet::new();
    {
        let mut stmt = tx
            .prepare(
                "SELECT key, package, version, artifact_sha256, published_at, signed_manifest
                 FROM manifests ORDER BY package, version, key",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, Vec<u8>>(5)?,
                ))
            })
            .map_err(db_err)?;
        for row in rows {
            let (key, package, version, artifact, published_at, signed) = row.map_err(db_err)?;
            let used = last_used.get(&artifact).copied();
            let keep = if published_at >= cutoff || used.is_some_and(|at| at >= cutoff) {
                kept.recent += 1;
                true
            } else {
                match manifest_closure(&signed) {
                    None => {
                        tracing::warn!(%key, "gc: keeping a manifest that does not decode");
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
                needed_artifacts.insert(artifact);
            } else {
                dropped_manifests.push(DroppedManifest {
                    key,
                    package,
                    version,
                    artifact_sha256: artifact,
                    published_at,
                    last_used: used,
                });
            }
        }
    }

    let mut dropped_artifacts = Vec::new();
    let mut known_blobs: HashSet<String> = HashSet::new();
    {
        let mut stmt = tx
            .prepare("SELECT sha256, size, uploaded_at FROM artifacts ORDER BY sha256")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .map_err(db_err)?;
        for row in rows {
            let (sha256, size, uploaded_at) = row.map_err(db_err)?;
            let used = last_used.get(&sha256).copied();
            let recent = uploaded_at >= cutoff || used.is_some_and(|at| at >= cutoff);
            if needed_artifacts.contains(&sha256) || recent {
                known_blobs.insert(sha256);
            } else {
                dropped_artifacts.push(DroppedArtifact {
                    sha256,
                    size: size.max(0) as u64,
                    uploaded_at,
                    last_used: used,
                });
            }
        }
    }

    let has_verdicts: bool = tx
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'verdicts'",
            [],
            |_| Ok(()),
        )
        .optional()
        .map_err(db_err)?
        .is_some();
    if options.apply {
        for manifest in &dropped_manifests {
            tx.execute(
                "DELETE FROM manifests WHERE key = ?1",
                params![manifest.key],
            )
            .map_err(db_err)?;
            if has_verdicts {
                tx.execute("DELETE FROM verdicts WHERE key = ?1", params![manifest.key])
                    .map_err(db_err)?;
            }
        }
        for artifact in &dropped_artifacts {
            tx.execute(
                "DELETE FROM artifacts WHERE sha256 = ?1",
                params![artifact.sha256],
            )
            .map_err(db_err)?;
            tx.execute(
                "DELETE FROM artifact_use WHERE sha256 = ?1",
                params![artifact.sha256],
            )
            .map_err(db_err)?;
        }
    }
    tx.commit().map_err(db_err)?;
    drop(db);

    let blobs = options.store.join("blobs/sha256");
    let mut bytes = 0;
    for artifact in &dropped_artifacts {
        bytes += artifact.size;
        if options.apply {
            remove_if_present(&options.store.join(blob_relative_path(&artifact.sha256)))?;
        }
    }
    let dropped: HashSet<&str> = dropped_artifacts
        .iter()
        .map(|a| a.sha256.as_str())
        .collect();
    let mut stray_blobs = Vec::new();
    for (name, path, size, modified) in list_blobs(&blobs)? {
        if known_blobs.contains(&name) || dropped.contains(name.as_str()) || modified >= cutoff {
            continue;
        }
        bytes += size;
        if options.apply {
            remove_if_present(&path)?;
        }
        stray_blobs.push(name);
    }
    let mut missing_blobs: Vec<String> = needed_artifacts
        .iter()
        .filter(|sha| !options.store.join(blob_relative_path(sha)).exists())
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

/// Every `blobs/sha256/ab/abcd…` file: name, path, size, modification time.
fn list_blobs(blobs: &Path) -> Result<Vec<(String, PathBuf, u64, i64)>, GcError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GcError::Io { path, source }
    };
    let mut found = Vec::new();
    let shards = match std::fs::read_dir(blobs) {
        Ok(shards) => shards,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io(blobs)(e)),
    };
    for shard in shards {
        let shard = shard.map_err(io(blobs))?.path();
        if !shard.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&shard).map_err(io(&shard))? {
            let entry = entry.map_err(io(&shard))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let meta = entry.metadata().map_err(io(&entry.path()))?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            found.push((name, entry.path(), meta.len(), modified));
        }
    }
    found.sort();
    Ok(found)
}

fn remove_if_present(path: &Path) -> Result<(), GcError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(GcError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}
