//! Backups of a data directory (`precomp backup`) and restoring them (`precomp restore`).
//!
//! A backup is a directory laid out like the data directory it came from, plus
//! `precomp-backup.json` listing every file with its size and SHA-256:
//!
//! ```text
//! BACKUP/precomp-backup.json
//! BACKUP/artifacts/artifacts.db          SQLite snapshot (online backup API, one read transaction)
//! BACKUP/artifacts/blobs/sha256/ab/abcd…  every artifact the snapshot lists
//! BACKUP/mirror/mirror.db                 (unless --skip-mirror: the cache can be refilled)
//! BACKUP/mirror/blobs/sha256/ab/abcd…
//! BACKUP/trust/trust.doc, trust/history/N.doc
//! ```
//!
//! Consistency: each database is copied with SQLite's online backup API in one step (one read
//! transaction: a consistent snapshot while the mirror keeps serving and accepting uploads),
//! then the blobs *that snapshot names* are copied. Blobs are content-addressed and immutable,
//! and a blob is always in place before its row is committed, so every row of the snapshot
//! finds its blob; each copy is hashed and must match its name. Blobs stored after the
//! snapshot are simply not in it. The backup is written to a sibling directory and renamed
//! into place when complete, so a backup directory is either complete or absent.
//!
//! Restore goes into an empty (or absent) data directory only — so no mirror is using it —
//! through a sibling staging directory renamed into place at the end; every file is checked
//! against the listed size and SHA-256 while it is copied, and every database with
//! `PRAGMA integrity_check`. The backup must also be complete: the listing names every file
//! in it, and every blob the databases name is listed (so present and checked).

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use precomp_artifacts::{maintenance, ArtifactStoreError};
use precomp_proto::time::unix_now as now;
use precomp_registry::blob_relative_path;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file that lists a backup's contents; written last.
pub const BACKUP_MANIFEST: &str = "precomp-backup.json";

/// The backup format this code writes and reads.
pub const BACKUP_FORMAT: u32 = 1;

/// Bound on `precomp-backup.json`.
const MAX_MANIFEST_SIZE: u64 = 512 * 1024 * 1024;

/// The parts of a data directory a backup holds.
const PARTS: [&str; 3] = ["artifacts", "mirror", "trust"];

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] ArtifactStoreError),
    #[error("database {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{} already exists: back up into a new directory", path.display())]
    Exists { path: PathBuf },
    #[error("{} is not empty: restore into an empty or absent data directory (stop the mirror, move the old directory aside, then restore)", path.display())]
    NotEmpty { path: PathBuf },
    #[error("{} has nothing to back up (no artifacts/, mirror/ or trust/): is it the mirror's data directory?", path.display())]
    NothingToBackUp { path: PathBuf },
    #[error("{path} is named by the database snapshot but missing from the data directory (was `precomp gc --apply` running?); back up again")]
    MissingBlob { path: PathBuf },
    #[error("{} is corrupt: its sha256 is {actual}, expected {expected}", path.display())]
    Corrupt {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{}: integrity check failed: {message}", path.display())]
    Integrity { path: PathBuf, message: String },
    #[error("{}: not a precomp backup: {message}", path.display())]
    NotABackup { path: PathBuf, message: String },
    #[error("the database could not be snapshot: it stayed busy; try again")]
    Busy,
    #[error("{}: the backup is incomplete: {database} names {count} blob(s) that {BACKUP_MANIFEST} does not list, e.g. {}; nothing was restored: take a new backup, or restore an older one", path.display(), examples.join(", "))]
    Incomplete {
        path: PathBuf,
        database: String,
        count: usize,
        examples: Vec<String>,
    },
    #[error("{}: {relative} is in the backup but not in {BACKUP_MANIFEST}: the listing does not describe this backup (was it edited?); nothing was restored", path.display())]
    Unlisted { path: PathBuf, relative: String },
}

/// `precomp-backup.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    /// Unix seconds.
    pub created_at: i64,
    /// The precomp that wrote it.
    pub precomp_version: String,
    /// Every file but this one, sorted by path.
    pub files: Vec<BackupFile>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// Relative, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// The data directory.
    pub data: PathBuf,
    /// The backup directory to create.
    pub out: PathBuf,
    /// Hard-link blobs instead of copying them (same filesystem only; blobs are never changed
    /// in place, so a link is as good as a copy — except against losing that disk).
    pub link: bool,
    /// Leave out `mirror/`: a cache of upstream that refills on demand.
    pub skip_mirror: bool,
    /// `precomp --version`, recorded.
    pub precomp_version: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub files: usize,
    pub bytes: u64,
    /// The databases, relative paths.
    pub databases: Vec<String>,
}

/// Backs `options.data` up into `options.out` (which must not exist).
pub fn backup(options: &BackupOptions) -> Result<Summary, BackupError> {
    if options.out.exists() {
        return Err(BackupError::Exists {
            path: options.out.clone(),
        });
    }
    let parts: Vec<&str> = PARTS
        .into_iter()
        .filter(|p| !(options.skip_mirror && *p == "mirror"))
        .filter(|p| options.data.join(p).is_dir())
        .collect();
    if parts.is_empty() {
        return Err(BackupError::NothingToBackUp {
            path: options.data.clone(),
        });
    }
    let staging = sibling(&options.out, "partial")?;
    let result = write_backup(options, &parts, &staging);
    match result {
        Ok(summary) => {
            std::fs::rename(&staging, &options.out).map_err(io(&options.out))?;
            sync_parent(&options.out)?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn write_backup(
    options: &BackupOptions,
    parts: &[&str],
    staging: &Path,
) -> Result<Summary, BackupError> {
    let mut files = Vec::new();
    let mut databases = Vec::new();
    for part in parts {
        let source = options.data.join(part);
        match *part {
            "artifacts" | "mirror" => {
                let db_name = if *part == "artifacts" {
                    "artifacts.db"
                } else {
                    "mirror.db"
                };
                let db = source.join(db_name);
                if !db.is_file() {
                    continue;
                }
                let relative = format!("{part}/{db_name}");
                let snapshot = staging.join(&relative);
                // The artifact store snapshots itself (and says which blobs the snapshot
                // names); the mirror's cache database is copied here.
                let names = if *part == "artifacts" {
                    maintenance::snapshot(&source, &snapshot)?
                } else {
                    snapshot_database(&db, &snapshot)?;
                    blob_names(&snapshot, part)?
                };
                files.push(describe(&snapshot, &relative)?);
                databases.push(relative);
                for sha in names {
                    let relative = format!("{part}/{}", blob_relative_path(&sha).display());
                    let from = options.data.join(&relative);
                    if !from.is_file() {
                        return Err(BackupError::MissingBlob { path: from });
                    }
                    let to = staging.join(&relative);
                    let (size, actual) = copy_blob(&from, &to, options.link)?;
                    if actual != sha {
                        return Err(BackupError::Corrupt {
                            path: from,
                            expected: sha,
                            actual,
                        });
                    }
                    files.push(BackupFile {
                        path: relative,
                        size,
                        sha256: actual,
                    });
                }
            }
            _ => {
                // trust/: small signed files, copied as they are (temporary files skipped).
                for (relative, from) in regular_files(&source, part)? {
                    let to = staging.join(&relative);
                    let (size, sha256) = copy_blob(&from, &to, false)?;
                    files.push(BackupFile {
                        path: relative,
                        size,
                        sha256,
                    });
                }
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = BackupManifest {
        format: BACKUP_FORMAT,
        created_at: now(),
        precomp_version: options.precomp_version.clone(),
        files,
    };
    let path = staging.join(BACKUP_MANIFEST);
    let mut file = std::fs::File::create(&path).map_err(io(&path))?;
    file.write_all(&serde_json::to_vec_pretty(&manifest).expect("plain data serialises"))
        .and_then(|()| file.sync_all())
        .map_err(io(&path))?;
    sync_tree(staging)?;
    Ok(Summary {
        files: manifest.files.len(),
        bytes: manifest.files.iter().map(|f| f.size).sum(),
        databases,
    })
}

/// A consistent copy of the mirror cache's database at `source` into `dest` (a new, self-contained file in
/// rollback-journal mode), checked with `PRAGMA integrity_check`.
fn snapshot_database(source: &Path, dest: &Path) -> Result<(), BackupError> {
    let db_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Db { path, source }
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let src = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(db_err(source))?;
    src.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(db_err(source))?;
    let mut dst = Connection::open(dest).map_err(db_err(dest))?;
    {
        use rusqlite::backup::{Backup, StepResult};
        let backup = Backup::new(&src, &mut dst).map_err(db_err(dest))?;
        let mut attempts = 0;
        loop {
            // -1: every page in one step, under one read transaction: a snapshot.
            match backup.step(-1).map_err(db_err(source))? {
                StepResult::Done => break,
                _ => {
                    attempts += 1;
                    if attempts > 600 {
                        return Err(BackupError::Busy);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }
    // A file that needs no -wal beside it.
    dst.pragma_update(None, "journal_mode", "DELETE")
        .map_err(db_err(dest))?;
    integrity_check(&dst, dest)?;
    drop(dst);
    File::sync(dest)
}

fn integrity_check(db: &Connection, path: &Path) -> Result<(), BackupError> {
    let result: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .map_err(|source| BackupError::Db {
            path: path.to_path_buf(),
            source,
        })?;
    if result != "ok" {
        return Err(BackupError::Integrity {
            path: path.to_path_buf(),
            message: result,
        });
    }
    Ok(())
}

/// The blobs a database snapshot names (lowercase hex): the artifact store's by
/// [`maintenance::snapshot_blobs`], the mirror cache's `objects`.
fn blob_names(snapshot: &Path, part: &str) -> Result<Vec<String>, BackupError> {
    if part == "artifacts" {
        return Ok(maintenance::snapshot_blobs(snapshot)?);
    }
    let db_err = |source| BackupError::Db {
        path: snapshot.to_path_buf(),
        source,
    };
    let db =
        Connection::open_with_flags(snapshot, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db_err)?;
    let mut names: Vec<String> = {
        let mut stmt = db
            .prepare("SELECT DISTINCT sha256 FROM objects")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |row| row.get::<_, Vec<u8>>(0))
            .map_err(db_err)?;
        rows.map(|r| r.map(hex::encode))
            .collect::<Result<_, _>>()
            .map_err(db_err)?
    };
    names.retain(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()));
    names.sort();
    names.dedup();
    Ok(names)
}

/// Every regular file under `dir`, as (`part/relative`, path), skipping dot files (temporary
/// files of an atomic write in progress).
fn regular_files(dir: &Path, part: &str) -> Result<Vec<(String, PathBuf)>, BackupError> {
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), part.to_string())];
    while let Some((dir, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(io(&entry.path()))?;
            let relative = format!("{prefix}/{name}");
            if kind.is_dir() {
                stack.push((entry.path(), relative));
            } else if kind.is_file() {
                found.push((relative, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Copies (or hard-links) `from` to `to`, hashing what `to` holds: (size, sha256 hex).
fn copy_blob(from: &Path, to: &Path, link: bool) -> Result<(u64, String), BackupError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    if link && std::fs::hard_link(from, to).is_ok() {
        return hash_file(to);
    }
    let mut input = std::fs::File::open(from).map_err(io(from))?;
    let mut output = std::fs::File::create(to).map_err(io(to))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = input.read(&mut buffer).map_err(io(from))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        output.write_all(&buffer[..n]).map_err(io(to))?;
        size += n as u64;
    }
    output.sync_all().map_err(io(to))?;
    Ok((size, hex::encode(hasher.finalize())))
}

fn hash_file(path: &Path) -> Result<(u64, String), BackupError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(io(path))?;
    Ok((size, hex::encode(hasher.finalize())))
}

fn describe(path: &Path, relative: &str) -> Result<BackupFile, BackupError> {
    let (size, sha256) = hash_file(path)?;
    Ok(BackupFile {
        path: relative.to_string(),
        size,
        sha256,
    })
}

/// Reads and checks a backup: its manifest, and every file's size and SHA-256. The manifest.
/// Then that the backup is complete: [`check_all_listed`] and [`check_blobs_listed`].
pub fn verify(from: &Path) -> Result<BackupManifest, BackupError> {
    let manifest = read_manifest(from)?;
    check_all_listed(from, &manifest)?;
    for file in &manifest.files {
        let path = from.join(&file.path);
        let (size, sha256) = hash_file(&path)?;
        check_file(&path, file, size, &sha256)?;
    }
    check_blobs_listed(from, &manifest)?;
    Ok(manifest)
}

/// The listing describes the backup: every file in it is listed. An unlisted file means the
/// listing was edited, or belongs to another backup.
fn check_all_listed(root: &Path, manifest: &BackupManifest) -> Result<(), BackupError> {
    let listed: std::collections::HashSet<&str> =
        manifest.files.iter().map(|f| f.path.as_str()).collect();
    for part in PARTS {
        let dir = root.join(part);
        if !dir.is_dir() {
            continue;
        }
        for (relative, _) in regular_files(&dir, part)? {
            if !listed.contains(relative.as_str()) {
                return Err(BackupError::Unlisted {
                    path: root.to_path_buf(),
                    relative,
                });
            }
        }
    }
    Ok(())
}

/// Every blob that a listed database names is listed too, so present and checked. The
/// databases under `root` must have been checked against the listing first: what is read
/// here are the listed bytes.
///
/// Without this, a blob deleted together with its line in the listing would go unnoticed,
/// and the restored mirror would hold manifests whose artifacts are gone.
fn check_blobs_listed(root: &Path, manifest: &BackupManifest) -> Result<(), BackupError> {
    let listed: std::collections::HashSet<&str> =
        manifest.files.iter().map(|f| f.path.as_str()).collect();
    for file in &manifest.files {
        let Some(part) = database_part(&file.path) else {
            continue;
        };
        let missing: Vec<String> = blob_names(&root.join(&file.path), part)?
            .into_iter()
            .map(|sha| format!("{part}/{}", blob_relative_path(&sha).display()))
            .filter(|relative| !listed.contains(relative.as_str()))
            .collect();
        if !missing.is_empty() {
            return Err(BackupError::Incomplete {
                path: root.to_path_buf(),
                database: file.path.clone(),
                count: missing.len(),
                examples: missing.into_iter().take(3).collect(),
            });
        }
    }
    Ok(())
}

/// The part whose blobs the database at `relative` names: `artifacts/artifacts.db` and
/// `mirror/mirror.db`.
fn database_part(relative: &str) -> Option<&'static str> {
    match relative {
        "artifacts/artifacts.db" => Some("artifacts"),
        "mirror/mirror.db" => Some("mirror"),
        _ => None,
    }
}

/// Restores the backup at `from` into `data`, which must be absent or an empty directory.
pub fn restore(from: &Path, data: &Path) -> Result<Summary, BackupError> {
    let manifest = read_manifest(from)?;
    check_all_listed(from, &manifest)?;
    match std::fs::read_dir(data) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty {
                    path: data.to_path_buf(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(data)(e)),
    }
    let staging = sibling(data, "restore")?;
    let result = (|| {
        let mut databases = Vec::new();
        for file in &manifest.files {
            let source = from.join(&file.path);
            let dest = staging.join(&file.path);
            let (size, sha256) = copy_blob(&source, &dest, false)?;
            check_file(&source, file, size, &sha256)?;
            if file.path.ends_with(".db") {
                databases.push(file.path.clone());
            }
        }
        for relative in &databases {
            let path = staging.join(relative);
            if database_part(relative) == Some("artifacts") {
                maintenance::check_snapshot(&path)?;
                continue;
            }
            let db = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
                |source| BackupError::Db {
                    path: path.clone(),
                    source,
                },
            )?;
            integrity_check(&db, &path)?;
        }
        check_blobs_listed(&staging, &manifest)?;
        sync_tree(&staging)?;
        Ok(databases)
    })();
    let databases = match result {
        Ok(databases) => databases,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if data.exists() {
        std::fs::remove_dir(data).map_err(io(data))?;
    }
    std::fs::rename(&staging, data).map_err(io(data))?;
    sync_parent(data)?;
    Ok(Summary {
        files: manifest.files.len(),
        bytes: manifest.files.iter().map(|f| f.size).sum(),
        databases,
    })
}

fn read_manifest(from: &Path) -> Result<BackupManifest, BackupError> {
    let path = from.join(BACKUP_MANIFEST);
    let not_a_backup = |message: String| BackupError::NotABackup {
        path: from.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(&path).map_err(|e| {
        not_a_backup(format!(
            "{BACKUP_MANIFEST}: {e} (an incomplete backup has none)"
        ))
    })?;
    if meta.len() > MAX_MANIFEST_SIZE {
        return Err(not_a_backup(format!(
            "{BACKUP_MANIFEST} is over {MAX_MANIFEST_SIZE} bytes"
        )));
    }
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let manifest: BackupManifest = serde_json::from_slice(&bytes)
        .map_err(|e| not_a_backup(format!("{BACKUP_MANIFEST}: {e}")))?;
    if manifest.format != BACKUP_FORMAT {
        return Err(not_a_backup(format!(
            "format {} (this precomp reads {BACKUP_FORMAT})",
            manifest.format
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for file in &manifest.files {
        let relative = Path::new(&file.path);
        let safe = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
            && relative
                .components()
                .next()
                .is_some_and(|c| PARTS.iter().any(|p| c.as_os_str() == *p))
            && file.sha256.len() == 64;
        if !safe {
            return Err(not_a_backup(format!("unexpected path {:?}", file.path)));
        }
        if !seen.insert(&file.path) {
            return Err(not_a_backup(format!("{:?} is listed twice", file.path)));
        }
    }
    Ok(manifest)
}

fn check_file(path: &Path, file: &BackupFile, size: u64, sha256: &str) -> Result<(), BackupError> {
    if size != file.size || sha256 != file.sha256 {
        return Err(BackupError::Corrupt {
            path: path.to_path_buf(),
            expected: format!("{} ({} bytes)", file.sha256, file.size),
            actual: format!("{sha256} ({size} bytes)"),
        });
    }
    Ok(())
}

/// A fresh sibling directory of `path`: `.NAME.KIND-PID-N`.
fn sibling(path: &Path, kind: &str) -> Result<PathBuf, BackupError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    for n in 0..1000 {
        let candidate = parent.join(format!(".{name}.{kind}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&candidate)(e)),
        }
    }
    Err(BackupError::Exists {
        path: parent.join(format!(".{name}.{kind}-*")),
    })
}

/// Syncs every directory under `root` (files are synced as they are written).
fn sync_tree(root: &Path) -> Result<(), BackupError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            if entry.file_type().map_err(io(&entry.path()))?.is_dir() {
                stack.push(entry.path());
            }
        }
        File::sync(&dir)?;
    }
    Ok(())
}

fn sync_parent(path: &Path) -> Result<(), BackupError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => File::sync(parent),
        _ => Ok(()),
    }
}

struct File;

impl File {
    fn sync(path: &Path) -> Result<(), BackupError> {
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(io(path))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}
