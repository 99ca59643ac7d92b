//! The mirror's storage: metadata in SQLite (WAL), bodies as content-addressed blobs on disk.
//!
//! ```text
//! DATA/mirror/mirror.db              objects: path → sha256, size, upstream ETag, checked_at
//! DATA/mirror/blobs/sha256/ab/abcd…  the bytes, named by their sha256
//! DATA/mirror/tmp/                   downloads being written; emptied at startup when alone
//! DATA/mirror/store.lock             held (shared) by every process with the store open
//! ```
//!
//! A blob is written to `tmp/`, synced, and renamed into `blobs/` before its row is committed,
//! so a crash at any point leaves either the old state or the new one, never a row pointing at
//! a partial file. Hot bodies are kept in a bounded in-memory cache and every object's
//! metadata in an in-memory index, so a cached request touches neither SQLite nor the disk.
//!
//! Several processes may share one store (`precomp serve` and `precomp mirror sync` on the same
//! data directory): SQLite in WAL mode with a busy timeout serialises their writes, blobs are
//! content-addressed and renamed into place atomically, and `tmp/` is emptied only by a process
//! that has the store to itself (`store.lock`). The index is loaded at startup, so an
//! object another process stored later is looked up in SQLite on an index miss, and a row is
//! re-read before it is revalidated upstream ([`Store::reload`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, RwLock};

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mirror database {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("blob {path} is corrupt: its sha256 is {actual}, expected {expected}")]
    Corrupt {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("mirror store task failed: {0}")]
    Task(String),
}

/// What the store knows about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub sha256: [u8; 32],
    pub size: u64,
    /// The upstream's ETag for conditional revalidation, if it sent one.
    pub upstream_etag: Option<String>,
    /// Unix seconds of the last time upstream confirmed this object (for the TTL only).
    pub checked_at: i64,
}

impl ObjectMeta {
    /// Our strong ETag: the body's sha256, so equal bytes always have equal ETags.
    pub fn etag(&self) -> String {
        format!("\"{}\"", hex::encode(self.sha256))
    }
}

pub struct Store {
    root: PathBuf,
    db_path: PathBuf,
    db: Mutex<Connection>,
    index: RwLock<HashMap<String, ObjectMeta>>,
    cache: moka::sync::Cache<[u8; 32], Bytes>,
    /// `store.lock`, locked shared while the store is open.
    _lock: std::fs::File,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    path          TEXT PRIMARY KEY NOT NULL,
    sha256        BLOB NOT NULL,
    size          INTEGER NOT NULL,
    upstream_etag TEXT,
    checked_at    INTEGER NOT NULL
) STRICT;
";

impl Store {
    /// Opens (creating if needed) the store under `root`, keeping up to `cache_bytes` of hot
    /// bodies in memory.
    pub fn open(root: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let lock = crate::blob_dir::open(root)
            .map_err(|(path, source)| StoreError::Io { path, source })?;

        let db_path = root.join("mirror.db");
        let db_err = |source| StoreError::Db {
            path: db_path.clone(),
            source,
        };
        // NORMAL: a lost write is fetched from upstream again.
        let db = crate::blob_dir::open_index(&db_path, "NORMAL").map_err(db_err)?;
        db.execute_batch(SCHEMA).map_err(db_err)?;

        let mut index = HashMap::new();
        {
            let mut stmt = db
                .prepare("SELECT path, sha256, size, upstream_etag, checked_at FROM objects")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |row| {
                    let sha: Vec<u8> = row.get(1)?;
                    Ok((
                        row.get::<_, String>(0)?,
                        sha,
                        row.get::<_, i64>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, i64>(4)?,
                    ))
                })
                .map_err(db_err)?;
            for row in rows {
                let (path, sha, size, upstream_etag, checked_at) = row.map_err(db_err)?;
                let Ok(sha256) = <[u8; 32]>::try_from(sha.as_slice()) else {
                    tracing::warn!(%path, "ignoring a row with a malformed digest");
                    continue;
                };
                index.insert(
                    path,
                    ObjectMeta {
                        sha256,
                        size: size as u64,
                        upstream_etag,
                        checked_at,
                    },
                );
            }
        }

        let cache = moka::sync::Cache::builder()
            .weigher(|_key: &[u8; 32], value: &Bytes| value.len().try_into().unwrap_or(u32::MAX))
            .max_capacity(cache_bytes)
            .build();
        Ok(Store {
            root: root.to_path_buf(),
            db_path,
            db: Mutex::new(db),
            index: RwLock::new(index),
            cache,
            _lock: lock,
        })
    }

    /// The object's metadata: from the index, or on a miss from SQLite, where another process
    /// sharing the store may have put it since this one started. A database error on that
    /// lookup is logged and counts as a miss.
    pub fn get(&self, path: &str) -> Option<ObjectMeta> {
        if let Some(meta) = self.cached(path) {
            return Some(meta);
        }
        self.reload(path).unwrap_or_else(|e| {
            tracing::warn!("{e}");
            None
        })
    }

    /// The object's metadata if the in-memory index has it; never touches SQLite (for the
    /// async request path: an index miss goes to [`Store::reload`] on a blocking thread).
    pub fn cached(&self, path: &str) -> Option<ObjectMeta> {
        self.index.read().get(path).cloned()
    }

    /// Whether the database answers a query: for `/healthz`.
    pub fn check(&self) -> Result<(), StoreError> {
        self.db
            .lock()
            .query_row("SELECT count(*) FROM objects WHERE path = ''", [], |_| {
                Ok(())
            })
            .map_err(|source| StoreError::Db {
                path: self.db_path.clone(),
                source,
            })
    }

    /// The object's metadata as SQLite has it now, the index updated to match: for an object
    /// another process may have changed (a registry file refreshed by a sync).
    pub fn reload(&self, path: &str) -> Result<Option<ObjectMeta>, StoreError> {
        // The index is updated under the database lock, so a concurrent `put` (which writes
        // its row under that lock, then the index) can never be overwritten by an older row.
        let db = self.db.lock();
        let row = db
            .query_row(
                "SELECT sha256, size, upstream_etag, checked_at FROM objects WHERE path = ?1",
                params![path],
                |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(|source| StoreError::Db {
                path: self.db_path.clone(),
                source,
            })?;
        let mut index = self.index.write();
        let meta = row.and_then(|(sha, size, upstream_etag, checked_at)| {
            Some(ObjectMeta {
                sha256: <[u8; 32]>::try_from(sha.as_slice()).ok()?,
                size: size as u64,
                upstream_etag,
                checked_at,
            })
        });
        match &meta {
            Some(meta) => index.insert(path.to_string(), meta.clone()),
            None => index.remove(path),
        };
        Ok(meta)
    }

    /// Number of objects stored.
    pub fn len(&self) -> usize {
        self.index.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The object's bytes, from memory or disk. A blob whose bytes no longer match its digest
    /// is an error, never served.
    pub fn read(&self, meta: &ObjectMeta) -> Result<Bytes, StoreError> {
        if let Some(bytes) = self.read_cached(meta) {
            return Ok(bytes);
        }
        let path = self.blob_path(&meta.sha256);
        let bytes = Bytes::from(std::fs::read(&path).map_err(io(&path))?);
        let actual: [u8; 32] = Sha256::digest(&bytes).into();
        if actual != meta.sha256 {
            return Err(StoreError::Corrupt {
                path,
                expected: hex::encode(meta.sha256),
                actual: hex::encode(actual),
            });
        }
        self.cache.insert(meta.sha256, bytes.clone());
        Ok(bytes)
    }

    /// The object's bytes if they are in memory; never touches the disk.
    pub fn read_cached(&self, meta: &ObjectMeta) -> Option<Bytes> {
        self.cache.get(&meta.sha256)
    }

    /// Stores `bytes` as the object at `path`: blob first (temporary file, sync, rename), then
    /// its row. Callers verify before they store.
    pub fn put(
        &self,
        path: &str,
        bytes: &Bytes,
        upstream_etag: Option<String>,
        checked_at: i64,
    ) -> Result<ObjectMeta, StoreError> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        let blob = self.blob_path(&sha256);
        if !blob.exists() {
            let dir = blob.parent().expect("blob paths have a parent");
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let tmp_dir = self.root.join("tmp");
            let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io(&tmp_dir))?;
            tmp.write_all(bytes).map_err(io(tmp.path()))?;
            tmp.as_file().sync_all().map_err(io(tmp.path()))?;
            tmp.persist(&blob).map_err(|e| StoreError::Io {
                path: blob.clone(),
                source: e.error,
            })?;
        }
        let meta = ObjectMeta {
            sha256,
            size: bytes.len() as u64,
            upstream_etag,
            checked_at,
        };
        self.db
            .lock()
            .execute(
                "INSERT INTO objects (path, sha256, size, upstream_etag, checked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(path) DO UPDATE SET sha256 = ?2, size = ?3, upstream_etag = ?4, checked_at = ?5",
                params![path, sha256.as_slice(), meta.size as i64, meta.upstream_etag, checked_at],
            )
            .map_err(|source| StoreError::Db {
                path: self.db_path.clone(),
                source,
            })?;
        self.index.write().insert(path.to_string(), meta.clone());
        self.cache.insert(sha256, bytes.clone());
        Ok(meta)
    }

    /// Records that upstream confirmed the object unchanged (a 304) at `checked_at`.
    pub fn touch(
        &self,
        path: &str,
        upstream_etag: Option<String>,
        checked_at: i64,
    ) -> Result<Option<ObjectMeta>, StoreError> {
        let updated = self
            .db
            .lock()
            .query_row(
                "UPDATE objects SET checked_at = ?2, upstream_etag = COALESCE(?3, upstream_etag)
                 WHERE path = ?1 RETURNING upstream_etag",
                params![path, checked_at, upstream_etag],
                |row| row.get::<_, Option<String>>(0),
            )
            .optional()
            .map_err(|source| StoreError::Db {
                path: self.db_path.clone(),
                source,
            })?;
        let Some(etag) = updated else { return Ok(None) };
        let mut index = self.index.write();
        Ok(index.get_mut(path).map(|meta| {
            meta.checked_at = checked_at;
            meta.upstream_etag = etag;
            meta.clone()
        }))
    }

    fn blob_path(&self, sha256: &[u8; 32]) -> PathBuf {
        self.root
            .join(crate::blob_relative_path(&hex::encode(sha256)))
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two stores on one directory stand for two processes (`serve` and `mirror sync`): flock
    /// locks belong to open files, and each store has its own index and connection.
    #[test]
    fn stores_sharing_a_directory_see_each_others_objects() {
        let dir = tempfile::tempdir().unwrap();
        let server = Store::open(dir.path(), 1 << 20).unwrap();
        let sync = Store::open(dir.path(), 1 << 20).unwrap();

        // Stored by the sync after the server loaded its index: found on the miss.
        let tarball = Bytes::from_static(b"tarball");
        let meta = sync.put("tarballs/a-1.0.0.tar", &tarball, None, 1).unwrap();
        assert_eq!(server.get("tarballs/a-1.0.0.tar"), Some(meta.clone()));
        assert_eq!(server.read(&meta).unwrap(), tarball);
        assert_eq!(server.get("tarballs/b-1.0.0.tar"), None);

        // Refreshed by the sync: the server's index has the old row until it reloads.
        let old = server
            .put("packages/a", &Bytes::from_static(b"v1"), None, 1)
            .unwrap();
        let new = sync
            .put(
                "packages/a",
                &Bytes::from_static(b"v2"),
                Some("\"e\"".into()),
                2,
            )
            .unwrap();
        assert_eq!(server.get("packages/a"), Some(old));
        assert_eq!(server.reload("packages/a").unwrap(), Some(new.clone()));
        assert_eq!(server.get("packages/a"), Some(new));
    }

    #[test]
    fn tmp_is_emptied_only_by_a_store_alone_on_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path(), 0).unwrap();
        let writing = dir.path().join("tmp/.tmpInProgress");
        std::fs::write(&writing, b"half a blob").unwrap();
        let second = Store::open(dir.path(), 0).unwrap();
        assert!(writing.exists(), "another store's download was removed");
        drop(first);
        drop(second);
        let _alone = Store::open(dir.path(), 0).unwrap();
        assert!(!writing.exists(), "a crashed download was left in tmp/");
    }
}
