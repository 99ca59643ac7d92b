//! A content-addressed blob directory several processes share (`precomp serve`, `mirror sync`,
//! `gc`, `backup`): `blobs/sha256/`, `tmp/` for blobs between write and rename, and
//! `store.lock`, on which every process holding the directory open keeps a shared lock; and
//! the SQLite index each store keeps beside its blobs.

use std::fs::File;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Where a blob lives under its store's root: `blobs/sha256/ab/abcdef…`, by the lowercase hex
/// of its SHA-256 (what `precomp gc` and `precomp backup` walk too).
pub fn blob_relative_path(sha256_hex: &str) -> PathBuf {
    let fan_out = sha256_hex.get(..2).unwrap_or(sha256_hex);
    Path::new("blobs/sha256").join(fan_out).join(sha256_hex)
}

/// Creates the directories and takes the shared lock, held for as long as the returned file
/// lives. A process that gets the lock exclusively first is alone, so what is in `tmp/` then
/// belongs to writes that never finished and is removed; otherwise `tmp/` may hold another
/// process's blob between its write and its rename, and is left alone. Errors name the path.
pub fn open(root: &Path) -> Result<File, (PathBuf, std::io::Error)> {
    for dir in ["blobs/sha256", "tmp"] {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).map_err(|e| (dir.clone(), e))?;
    }
    let lock_path = root.join("store.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(|e| (lock_path.clone(), e))?;
    if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
        let tmp = root.join("tmp");
        for entry in std::fs::read_dir(&tmp)
            .map_err(|e| (tmp.clone(), e))?
            .flatten()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    flock(&lock, FlockOperation::LockShared).map_err(|e| (lock_path, e.into()))?;
    Ok(lock)
}

/// Opens (creating if needed) a store's SQLite index at `path`, set up as every store needs
/// it: waiting up to 10 s for another process's write (set first, so that even setting WAL
/// waits rather than fails), write-ahead logging, and `synchronous` (`NORMAL`, or `FULL` where
/// an acknowledged write must survive a power cut).
pub fn open_index(path: &Path, synchronous: &str) -> rusqlite::Result<rusqlite::Connection> {
    let db = rusqlite::Connection::open(path)?;
    db.busy_timeout(std::time::Duration::from_secs(10))?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", synchronous)?;
    Ok(db)
}
