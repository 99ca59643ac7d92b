//! What `precomp gc`, `precomp backup`/`restore` and `precomp store scrub` need of the store:
//! nothing else opens the database or knows its tables. They open it with
//! [`crate::open_existing_metadata`] and go through [`MetadataStore`], except the backup of
//! the SQLite file, which is SQLite's alone.
//!
//! - [`MetadataStore::collect_garbage`]: what gc decides on, read in one transaction, and the
//!   builds and artifacts it drops deleted in that same transaction (then their blobs).
//! - [`scrub`]: every blob ([`Blobs::files`]) hashed again and compared with the rows that name
//!   it ([`MetadataStore::recorded_artifacts`], [`MetadataStore::named_artifacts`]).
//! - SQLite only: [`snapshot`], a consistent copy of the database file (SQLite's online backup
//!   API, one read transaction), and the blobs that copy names; [`snapshot_blobs`],
//!   [`check_snapshot`]: the same questions asked of a snapshot in a backup being verified or
//!   restored.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags};

use super::{io, ArtifactStore, ArtifactStoreError, Blobs, MetadataStore};

/// A published build, as gc weighs it.
#[derive(Clone, Debug)]
pub struct GcBuild {
    pub key: String,
    pub package: String,
    pub version: String,
    pub artifact_sha256: String,
    pub published_at: i64,
    /// When its artifact was last used (served, or named by a manifest being published).
    pub last_used: Option<i64>,
    /// The signed manifest (gc reads the build's dependency closure from it).
    pub signed_manifest: Vec<u8>,
}

/// A stored artifact, as gc weighs it.
#[derive(Clone, Debug)]
pub struct GcArtifact {
    pub sha256: String,
    pub size: u64,
    pub uploaded_at: i64,
    pub last_used: Option<i64>,
}

/// Everything gc decides on, read in one transaction.
#[derive(Clone, Debug, Default)]
pub struct GcView {
    /// The locks clients sent with misses last reported at or after the `misses_since` given.
    pub miss_locks: Vec<String>,
    /// Every published build, by package, version and key.
    pub builds: Vec<GcBuild>,
    /// Every stored artifact, by digest.
    pub artifacts: Vec<GcArtifact>,
    /// Closed misses last reported before `misses_since`: built, failed or expired, and too
    /// old for their lock to keep a build. Nothing reads them any more.
    pub old_closed_misses: u64,
}

/// What gc drops: builds by key (with their verdicts and the other manifests kept for the
/// key), artifacts by digest (their rows, then their blobs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcDrop {
    pub builds: Vec<String>,
    pub artifacts: Vec<String>,
    /// Whether to delete the view's `old_closed_misses` (without it the table only grows: a
    /// miss is closed, never deleted, when its build is published).
    pub old_closed_misses: bool,
}

/// A file in the blob directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobFile {
    /// Its name: the lowercase hex SHA-256 it should have.
    pub sha256: String,
    pub path: PathBuf,
    pub size: u64,
    /// Unix seconds.
    pub modified: i64,
}

/// A stored artifact's row: what the database says its blob is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedArtifact {
    pub sha256: String,
    pub size: u64,
}

/// An artifact published builds name ([`MetadataStore::named_artifacts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedArtifact {
    pub sha256: String,
    /// The size their manifests give it.
    pub size: u64,
    /// The keys of the published builds that name it, sorted.
    pub builds: Vec<String>,
}

/// Snapshots the SQLite database of the artifact store under `root` (`DATA/artifacts`) into
/// `dest`, for `precomp backup` (`ArtifactStore::snapshot`); returns the blobs the snapshot
/// names.
///
/// SQLite only, by design: the backup holds the metadata as the file `artifacts/artifacts.db`
/// that `restore` puts back ([`snapshot_blobs`] and [`check_snapshot`] read it), which only a
/// store whose metadata is that file can give. A store without it — none yet, or one whose
/// metadata is elsewhere, as a PostgreSQL store's will be (backed up with PostgreSQL's own
/// tools) — is [`ArtifactStoreError::NoStore`]. Not a [`MetadataStore`] method for that
/// reason: the trait is what every store does.
pub fn snapshot(root: &Path, dest: &Path) -> Result<Vec<String>, ArtifactStoreError> {
    ArtifactStore::open_existing(root)?.snapshot(dest)
}

impl ArtifactStore {
    /// Copies the database into `dest` (a new file, which must not exist) as one consistent
    /// snapshot — SQLite's online backup API in a single step, one read transaction, while
    /// the mirror keeps serving and accepting uploads — in rollback-journal mode (no `-wal`
    /// beside it), checked with `PRAGMA integrity_check` and synced. Returns the blobs the
    /// snapshot names: every one was in place before its row was committed.
    pub fn snapshot(&self, dest: &Path) -> Result<Vec<String>, ArtifactStoreError> {
        let dest_err = |source: rusqlite::Error| ArtifactStoreError::Db {
            path: dest.to_path_buf(),
            source: Box::new(source),
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mut dst = Connection::open(dest).map_err(dest_err)?;
        {
            use rusqlite::backup::{Backup, StepResult};
            let db = self.db.lock();
            let backup = Backup::new(&db, &mut dst).map_err(dest_err)?;
            let mut attempts = 0;
            loop {
                // -1: every page in one step, under one read transaction: a snapshot.
                match backup.step(-1).map_err(self.db_err())? {
                    StepResult::Done => break,
                    _ => {
                        attempts += 1;
                        if attempts > 600 {
                            return Err(ArtifactStoreError::Busy {
                                path: self.db_path.clone(),
                            });
                        }
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
            }
        }
        dst.pragma_update(None, "journal_mode", "DELETE")
            .map_err(dest_err)?;
        integrity_check(&dst, dest)?;
        let names = blob_names(&dst).map_err(dest_err)?;
        drop(dst);
        std::fs::File::open(dest)
            .and_then(|f| f.sync_all())
            .map_err(io(dest))?;
        Ok(names)
    }
}

/// The blobs an artifact database snapshot (in a backup) names, sorted: opened read-only.
pub fn snapshot_blobs(snapshot: &Path) -> Result<Vec<String>, ArtifactStoreError> {
    let err = |source: rusqlite::Error| ArtifactStoreError::Db {
        path: snapshot.to_path_buf(),
        source: Box::new(source),
    };
    let db =
        Connection::open_with_flags(snapshot, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
    blob_names(&db).map_err(err)
}

/// `PRAGMA integrity_check` of an artifact database snapshot (in a backup being restored).
pub fn check_snapshot(snapshot: &Path) -> Result<(), ArtifactStoreError> {
    let db = Connection::open_with_flags(snapshot, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
        |source: rusqlite::Error| ArtifactStoreError::Db {
            path: snapshot.to_path_buf(),
            source: Box::new(source),
        },
    )?;
    integrity_check(&db, snapshot)
}

fn integrity_check(db: &Connection, path: &Path) -> Result<(), ArtifactStoreError> {
    let result: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .map_err(|source: rusqlite::Error| ArtifactStoreError::Db {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
    if result != "ok" {
        return Err(ArtifactStoreError::Integrity {
            path: path.to_path_buf(),
            message: result,
        });
    }
    Ok(())
}

fn blob_names(db: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = db.prepare("SELECT sha256 FROM artifacts")?;
    let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
    let mut names: Vec<String> = rows.collect::<Result<_, _>>()?;
    names.retain(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()));
    names.sort();
    names.dedup();
    Ok(names)
}

/// The closed misses gc may delete: closed (built, failed, or expired unreported) and last
/// reported before the oldest report whose lock still counts. An open miss is never deleted
/// here: expiry closes it first.
pub(super) const OLD_CLOSED_MISSES: &str = "closed_at IS NOT NULL AND last_reported < ?1";

pub(super) fn gc_view(
    tx: &rusqlite::Transaction<'_>,
    misses_since: i64,
) -> rusqlite::Result<GcView> {
    let miss_locks = {
        let mut stmt = tx.prepare("SELECT lock FROM misses WHERE last_reported >= ?1")?;
        let rows = stmt.query_map(params![misses_since], |row| row.get::<_, String>(0))?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let builds = {
        let mut stmt = tx.prepare(
            "SELECT m.key, m.package, m.version, m.artifact_sha256, m.published_at,
                    u.last_used, m.signed_manifest
             FROM manifests m LEFT JOIN artifact_use u ON u.sha256 = m.artifact_sha256
             ORDER BY m.package, m.version, m.key",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(GcBuild {
                key: row.get(0)?,
                package: row.get(1)?,
                version: row.get(2)?,
                artifact_sha256: row.get(3)?,
                published_at: row.get(4)?,
                last_used: row.get(5)?,
                signed_manifest: row.get(6)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let artifacts = {
        let mut stmt = tx.prepare(
            "SELECT a.sha256, a.size, a.uploaded_at, u.last_used
             FROM artifacts a LEFT JOIN artifact_use u ON u.sha256 = a.sha256
             ORDER BY a.sha256",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(GcArtifact {
                sha256: row.get(0)?,
                size: row.get::<_, i64>(1)?.max(0) as u64,
                uploaded_at: row.get(2)?,
                last_used: row.get(3)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let old_closed_misses: i64 = tx.query_row(
        &format!("SELECT count(*) FROM misses WHERE {OLD_CLOSED_MISSES}"),
        params![misses_since],
        |row| row.get(0),
    )?;
    Ok(GcView {
        miss_locks,
        builds,
        artifacts,
        old_closed_misses: old_closed_misses.max(0) as u64,
    })
}

/// Every `blobs/sha256/ab/abcd…` file under `blobs`, sorted by name.
pub(super) fn list_blob_files(blobs: &Path) -> Result<Vec<BlobFile>, ArtifactStoreError> {
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
            let path = entry.path();
            let meta = entry.metadata().map_err(io(&path))?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            found.push(BlobFile {
                sha256: name,
                path,
                size: meta.len(),
                modified,
            });
        }
    }
    found.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    Ok(found)
}

/// What `precomp store scrub` found: every stored blob hashed again and compared with its name
/// and the database's rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScrubReport {
    /// Blobs hashed.
    pub checked: u64,
    /// Bytes hashed.
    pub bytes: u64,
    /// Artifacts a row or a published build names whose blob is absent.
    pub missing: Vec<MissingBlob>,
    /// Blobs whose bytes are not what their name (and row) say.
    pub corrupt: Vec<CorruptBlob>,
    /// Blob files no row names (gc removes them once older than its cutoff).
    pub orphaned: Vec<OrphanedBlob>,
}

impl ScrubReport {
    /// Whether nothing is wrong.
    pub fn clean(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty() && self.orphaned.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MissingBlob {
    pub sha256: String,
    /// Whether the `artifacts` table has a row for it.
    pub recorded: bool,
    /// Keys of the published builds that name it.
    pub builds: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CorruptBlob {
    pub sha256: String,
    /// The SHA-256 of the bytes it holds.
    pub actual: String,
    pub size: u64,
    /// The size its row records, if it has one.
    pub recorded_size: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OrphanedBlob {
    pub sha256: String,
    pub size: u64,
    /// Unix seconds.
    pub modified: i64,
}

/// Hashes every blob again and compares it with its name and the rows: blobs that are
/// missing, corrupt (bytes or size not what the name and row say) or orphaned (no row).
/// The files are listed before the rows are read, so an upload finishing meanwhile (its
/// blob renamed into place just before its row is committed) is not called orphaned.
pub fn scrub(store: &dyn MetadataStore, blobs: &Blobs) -> Result<ScrubReport, ArtifactStoreError> {
    use std::collections::{BTreeMap, HashSet};
    let files = blobs.files()?;
    let recorded: BTreeMap<String, u64> = store
        .recorded_artifacts()?
        .into_iter()
        .map(|a| (a.sha256, a.size))
        .collect();
    let named: BTreeMap<String, Vec<String>> =
        store
            .named_artifacts()?
            .into_iter()
            .fold(BTreeMap::new(), |mut named, artifact| {
                named
                    .entry(artifact.sha256)
                    .or_insert_with(Vec::new)
                    .extend(artifact.builds);
                named
            });
    let mut report = ScrubReport::default();
    let present: HashSet<&str> = files.iter().map(|f| f.sha256.as_str()).collect();
    for file in &files {
        let Some(&recorded_size) = recorded.get(&file.sha256) else {
            report.orphaned.push(OrphanedBlob {
                sha256: file.sha256.clone(),
                size: file.size,
                modified: file.modified,
            });
            continue;
        };
        let (size, actual) = hash_file(&file.path)?;
        report.checked += 1;
        report.bytes += size;
        if actual != file.sha256.to_ascii_lowercase() || size != recorded_size {
            report.corrupt.push(CorruptBlob {
                sha256: file.sha256.clone(),
                actual,
                size,
                recorded_size: Some(recorded_size),
            });
        }
    }
    let mut wanted: BTreeMap<&str, bool> = BTreeMap::new();
    for sha256 in recorded.keys() {
        wanted.insert(sha256, true);
    }
    for sha256 in named.keys() {
        wanted.entry(sha256).or_insert(false);
    }
    for (sha256, is_recorded) in wanted {
        if !present.contains(sha256) {
            report.missing.push(MissingBlob {
                sha256: sha256.to_string(),
                recorded: is_recorded,
                builds: named.get(sha256).cloned().unwrap_or_default(),
            });
        }
    }
    Ok(report)
}

/// (size, lowercase hex SHA-256) of a file, read in blocks.
fn hash_file(path: &Path) -> Result<(u64, String), ArtifactStoreError> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(io(path))?;
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::io::Write;

    fn put(store: &ArtifactStore, bytes: &[u8]) -> String {
        let mut tmp = tempfile::NamedTempFile::new_in(store.blobs.tmp_dir()).unwrap();
        tmp.write_all(bytes).unwrap();
        let sha: [u8; 32] = Sha256::digest(bytes).into();
        // As `Artifacts::put_artifact` does: the blob, then its row.
        store.blobs.persist(tmp, &sha).unwrap();
        store
            .record_artifact(&sha, bytes.len() as u64, "builder")
            .unwrap();
        hex::encode(sha)
    }

    /// Scrub hashes every stored blob again: a clean store is clean; a blob whose bytes
    /// changed is corrupt, a deleted one missing, a file no row names orphaned — each
    /// reported by name, the rest still counted as checked.
    #[test]
    fn scrub_finds_corrupt_missing_and_orphaned_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let a = put(&store, b"artifact a");
        let b = put(&store, b"artifact b");
        let c = put(&store, b"artifact c");
        let clean = scrub(&store, &store.blobs).unwrap();
        assert!(clean.clean(), "{clean:?}");
        assert_eq!((clean.checked, clean.bytes), (3, 30));

        // Same size, other bytes: only the digest can tell.
        std::fs::write(store.blobs.path(&a), b"artifact x").unwrap();
        std::fs::remove_file(store.blobs.path(&b)).unwrap();
        let orphan_bytes = b"nobody uploaded this";
        let orphan = hex::encode(Sha256::digest(orphan_bytes));
        let orphan_path = store.blobs.path(&orphan);
        std::fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
        std::fs::write(&orphan_path, orphan_bytes).unwrap();

        let report = scrub(&store, &store.blobs).unwrap();
        assert!(!report.clean());
        assert_eq!(report.checked, 2, "{report:?}");
        assert_eq!(report.corrupt.len(), 1, "{report:?}");
        assert_eq!(report.corrupt[0].sha256, a);
        assert_eq!(
            report.corrupt[0].actual,
            hex::encode(Sha256::digest(b"artifact x"))
        );
        assert_eq!(
            report.missing,
            vec![MissingBlob {
                sha256: b.clone(),
                recorded: true,
                builds: vec![],
            }]
        );
        assert_eq!(report.orphaned.len(), 1);
        assert_eq!(report.orphaned[0].sha256, orphan);
        assert_eq!(report.orphaned[0].size, orphan_bytes.len() as u64);
        assert!(!report.corrupt.iter().any(|x| x.sha256 == c));
    }

    /// A panic inside a store operation, mid-transaction (here in gc's plan, with the write
    /// transaction open), rolls it back and leaves the store usable: nothing deleted, the
    /// write lock released (another connection can write), later operations succeed.
    #[test]
    fn a_panic_mid_transaction_rolls_back_and_later_operations_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(ArtifactStore::open(dir.path()).unwrap());
        let kept = put(&store, b"kept");
        let token = store.create_token("builder", None, None).unwrap();
        let panicking = std::sync::Arc::clone(&store);
        let sha = kept.clone();
        let result = std::thread::spawn(move || {
            panicking.collect_garbage(0, true, &mut |view| {
                assert_eq!(view.artifacts.len(), 1);
                panic!("a bug in the middle of a write transaction ({sha})");
            })
        })
        .join();
        assert!(result.is_err(), "the operation did not panic");
        // Rolled back and released: another process's write goes through at once.
        let other = Connection::open(dir.path().join("artifacts.db")).unwrap();
        other
            .busy_timeout(std::time::Duration::from_millis(100))
            .unwrap();
        other
            .execute("UPDATE tokens SET created_at = created_at", [])
            .unwrap();
        store.check().unwrap();
        assert_eq!(store.recorded_artifacts().unwrap().len(), 1);
        assert!(matches!(
            store.lookup_token(&token).unwrap(),
            crate::TokenLookup::Active(_)
        ));
        let dropped = store
            .collect_garbage(0, true, &mut |view| GcDrop {
                builds: vec![],
                artifacts: view.artifacts.iter().map(|a| a.sha256.clone()).collect(),
                ..GcDrop::default()
            })
            .unwrap();
        assert_eq!(dropped.artifacts, vec![kept.clone()]);
        assert!(store.recorded_artifacts().unwrap().is_empty());
        assert!(!store.blobs.path(&kept).exists());
    }

    /// The snapshot (taken while the store is open, as beside a live mirror) is a
    /// self-contained database (no `-wal` needed) that names the stored blobs and passes its
    /// integrity check; a directory without a store has nothing to snapshot.
    #[test]
    fn a_snapshot_names_the_stored_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let mut expected = vec![put(&store, b"one"), put(&store, b"two")];
        expected.sort();
        let out = tempfile::tempdir().unwrap();
        let snapshot = out.path().join("copy/artifacts.db");
        assert_eq!(super::snapshot(dir.path(), &snapshot).unwrap(), expected);
        assert!(!out.path().join("copy/artifacts.db-wal").exists());
        check_snapshot(&snapshot).unwrap();
        assert_eq!(snapshot_blobs(&snapshot).unwrap(), expected);
        // A new store on the copy opens it as it is (same schema version).
        let restored = out.path().join("copy");
        let reopened = ArtifactStore::open_existing(&restored).unwrap();
        assert_eq!(reopened.recorded_artifacts().unwrap().len(), 2);
        assert!(matches!(
            super::snapshot(&out.path().join("nothing"), &out.path().join("none.db")),
            Err(ArtifactStoreError::NoStore { .. })
        ));
        assert!(!out.path().join("none.db").exists());
    }
}
