//! A content-addressed blob directory several processes share (`precomp serve`, `mirror sync`,
//! `gc`, `backup`): `blobs/sha256/`, `tmp/` for blobs between write and rename, and
//! `store.lock`, on which every process holding the directory open keeps a shared lock.

use std::fs::File;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Creates the directories and takes the shared lock, held for as long as the returned file
/// lives. A process that gets the lock exclusively first is alone, so what is in `tmp/` then
/// belongs to writes that never finished and is removed; otherwise `tmp/` may hold another
/// process's blob between its write and its rename, and is left alone. Errors name the path.
pub(crate) fn open(root: &Path) -> Result<File, (PathBuf, std::io::Error)> {
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
