//! Artifact tarballs: the reproducible `.tar.gz` of an app's build directory
//! (`_build/<env>/lib/<app>`) that precomp builds, signs, serves and installs.
//!
//! Reproducibility is the point: the same tree gives the same bytes, whatever the host path,
//! mtimes, owners, umask or directory order. So:
//!
//! - only the top-level directories `ebin`, `include` and `priv` are packed (`ebin` must
//!   exist); anything else in the build directory (`.mix/`, `consolidated/`...) is left out;
//! - symlinks are resolved: Mix symlinks `priv` and `include` (and, for erlang.mk packages,
//!   `ebin`) into `deps/<app>`, and an installed artifact must hold real files. A link must
//!   resolve inside `link_root` (the build project's directory); symlinked directories are
//!   copied as real directories, cycles are refused, and so are devices, fifos and sockets;
//! - entries are sorted by path bytes, directories included (`ebin/`), every mtime is
//!   [`ARTIFACT_MTIME`], uid and gid are 0 with no user or group names, modes are 0755 for
//!   directories and executables (any execute bit set) and 0644 for other files;
//! - ustar headers (GNU long-name records for paths a ustar header cannot hold), written by
//!   the `tar` crate; gzip by flate2 at level 9, with no file name, mtime 0 and OS 255.
//!
//! The format never contains links, so [`unpack`] refuses any; it also refuses absolute
//! paths, `..`, entries out of order, anything outside `ebin`/`include`/`priv`, and bounds the
//! sizes ([`MAX_ARTIFACT_SIZE`], [`MAX_CONTENT_SIZE`], [`MAX_ENTRIES`]). `docs/protocol.md`,
//! "Artifact tarball", specifies the format.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::bufread::GzDecoder;
use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::manifest::{FileRecord, Output};
use crate::unpack::{staging_dir, Counter, Limited};

/// mtime of every entry: `SOURCE_DATE_EPOCH` 315532800, 1980-01-01T00:00:00Z (the earliest
/// time a zip can hold; what reproducible-builds tooling commonly uses).
pub const ARTIFACT_MTIME: u64 = 315_532_800;

/// The top-level directories an artifact may hold, in the order they sort.
pub const TOP_LEVEL: [&str; 3] = ["ebin", "include", "priv"];

/// Largest artifact (the compressed `.tar.gz`) created or read.
pub const MAX_ARTIFACT_SIZE: u64 = 256 * 1024 * 1024;

/// Largest sum of file sizes in an artifact.
pub const MAX_CONTENT_SIZE: u64 = 512 * 1024 * 1024;

/// Most entries (files and directories) in an artifact.
pub const MAX_ENTRIES: usize = 65_536;

/// Largest decompressed tar stream read: the content plus room for headers and padding.
const MAX_TAR_SIZE: u64 = MAX_CONTENT_SIZE + (MAX_ENTRIES as u64) * 2048 + 1024 * 1024;

/// Longest entry path, in bytes (Linux `PATH_MAX` minus the NUL).
pub const MAX_PATH_BYTES: usize = 4095;

/// Longest path component, in bytes (`NAME_MAX`).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// gzip level: fixed, so the bytes depend on the tree only.
const GZIP_LEVEL: u32 = 9;

/// gzip header OS byte: 255, "unknown", so the host does not show.
const GZIP_OS: u8 = 255;

/// The first bytes of an ELF object: a file starting with them is native code.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// A packed artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedArtifact {
    /// The `.tar.gz`.
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`.
    pub sha256: [u8; 32],
    /// Every regular file, sorted by path (relative to the app directory: `ebin/x.beam`).
    pub files: Vec<FileRecord>,
    /// Whether some file is an ELF object (a NIF or port program).
    pub native_code: bool,
}

impl PackedArtifact {
    /// The manifest's `Output` for this artifact.
    pub fn output(&self) -> Output {
        Output {
            artifact_sha256: self.sha256.to_vec(),
            artifact_size: self.bytes.len() as u64,
            files: self.files.clone(),
            native_code: self.native_code,
        }
    }
}

/// Why an artifact could not be packed, read, unpacked or matched against its manifest.
/// Paths inside the artifact are shown relative to the app directory (`priv/x.so`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    #[error("could not {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} has no ebin directory: it is not a built app (compile it first)", .app_dir.display())]
    NoEbin { app_dir: PathBuf },
    #[error("`{path}` is not a directory; an artifact's top-level entries are the directories ebin, include and priv")]
    TopLevelNotDirectory { path: String },
    #[error("symlink `{path}` -> `{target}` cannot be resolved: {source}")]
    LinkUnresolvable {
        path: String,
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("symlink `{path}` -> `{target}` resolves to {}, outside {}; an artifact may only take files from the build project", .resolved.display(), .root.display())]
    LinkEscapes {
        path: String,
        target: String,
        resolved: PathBuf,
        root: PathBuf,
    },
    #[error("symlink `{path}` -> `{target}` leads back to a directory that contains it (a cycle)")]
    LinkCycle { path: String, target: String },
    #[error("`{path}` is a {kind}; an artifact holds only regular files and directories")]
    SpecialFile { path: String, kind: &'static str },
    #[error("a name in `{parent}` is not UTF-8: {name}")]
    NotUtf8 { parent: String, name: String },
    #[error("path `{path}` is longer than {limit} bytes")]
    PathTooLong { path: String, limit: usize },
    #[error("the artifact holds more than {limit} files and directories")]
    TooManyEntries { limit: usize },
    #[error("the artifact's {what} exceeds the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("could not write the artifact: {0}")]
    Build(#[source] io::Error),
    #[error("the artifact is not a well-formed tar.gz ({}): {source}", after_entry(.after))]
    Malformed {
        after: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("artifact entry `{entry}`: {problem}")]
    BadEntry { entry: String, problem: String },
    #[error("cannot unpack into {}: {problem}", .path.display())]
    Destination {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("the artifact is {actual} bytes, the manifest says {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("the artifact's SHA-256 is {actual}, the manifest says {expected}{}", if *.files_match { " (every file matches: the tar or gzip encoding differs)" } else { "" })]
    DigestMismatch {
        expected: String,
        actual: String,
        files_match: bool,
    },
    #[error("file `{path}` is listed in the manifest but missing from the artifact")]
    FileMissing { path: String },
    #[error("file `{path}` is in the artifact but not in the manifest")]
    FileUnexpected { path: String },
    #[error("file `{path}`: {what} is {actual} in the artifact, the manifest says {expected}")]
    FileMismatch {
        path: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("the artifact {} native code, the manifest says it {}", if *.actual { "holds" } else { "holds no" }, if *.actual { "holds none" } else { "does" })]
    NativeCodeMismatch { actual: bool },
}

fn after_entry(after: &Option<String>) -> String {
    match after {
        Some(entry) => format!("at or after entry `{entry}`"),
        None => "before any entry was read".to_string(),
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ArtifactError + 'a {
    move |source| ArtifactError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Packing

/// One entry to pack, found by walking the tree.
struct Item {
    path: String,
    /// Where to read a file from (a real path, links resolved); `None` for a directory.
    source: Option<(PathBuf, bool)>,
}

struct Walker {
    root: PathBuf,
    items: Vec<Item>,
    declared: u64,
}

/// Packs the app build directory `app_dir` (`_build/<env>/lib/<app>`). Symlinks, wherever
/// they are, must resolve inside `link_root` (the build project directory).
pub fn pack(app_dir: &Path, link_root: &Path) -> Result<PackedArtifact, ArtifactError> {
    let root = fs::canonicalize(link_root).map_err(io_error("resolve the link root", link_root))?;
    let app = fs::canonicalize(app_dir).map_err(io_error("resolve", app_dir))?;
    let meta = fs::metadata(&app).map_err(io_error("inspect", app_dir))?;
    if !meta.is_dir() {
        return Err(ArtifactError::Io {
            action: "pack",
            path: app_dir.to_path_buf(),
            source: io::Error::other("not a directory"),
        });
    }
    let mut walker = Walker {
        root,
        items: Vec::new(),
        declared: 0,
    };
    for name in TOP_LEVEL {
        let path = app.join(name);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if name == "ebin" {
                    return Err(ArtifactError::NoEbin {
                        app_dir: app_dir.to_path_buf(),
                    });
                }
                continue;
            }
            Err(e) => return Err(io_error("inspect", &path)(e)),
            Ok(_) => {}
        }
        let (real, meta) = walker.resolve(&path, name, &app)?;
        if !meta.is_dir() {
            return Err(ArtifactError::TopLevelNotDirectory {
                path: name.to_string(),
            });
        }
        let mut stack = vec![app.clone()];
        walker.directory(&real, name.to_string(), &mut stack, &path)?;
    }
    let mut items = walker.items;
    items.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    write_archive(&items)
}

impl Walker {
    /// What `path` (shown as `rel`, inside the canonical directory `parent`) is, links
    /// resolved: the real path and its metadata. Refuses escaping and dangling links and
    /// special files.
    fn resolve(
        &self,
        path: &Path,
        rel: &str,
        parent: &Path,
    ) -> Result<(PathBuf, fs::Metadata), ArtifactError> {
        let meta = fs::symlink_metadata(path).map_err(io_error("inspect", path))?;
        let (real, meta) = if meta.file_type().is_symlink() {
            let target = fs::read_link(path)
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            let resolved =
                fs::canonicalize(path).map_err(|source| ArtifactError::LinkUnresolvable {
                    path: rel.to_string(),
                    target: target.clone(),
                    source,
                })?;
            if !resolved.starts_with(&self.root) {
                return Err(ArtifactError::LinkEscapes {
                    path: rel.to_string(),
                    target,
                    resolved,
                    root: self.root.clone(),
                });
            }
            let meta = fs::metadata(&resolved).map_err(io_error("inspect", &resolved))?;
            (resolved, meta)
        } else {
            let name = path.file_name().unwrap_or_default();
            (parent.join(name), meta)
        };
        let file_type = meta.file_type();
        if file_type.is_dir() || file_type.is_file() {
            return Ok((real, meta));
        }
        Err(ArtifactError::SpecialFile {
            path: rel.to_string(),
            kind: special_kind(&meta),
        })
    }

    /// Adds the directory `real` (canonical) as `rel`, then everything below it. `stack`
    /// holds the canonical directories above it, for cycle detection; `shown` is the path
    /// through which it was reached, for messages.
    fn directory(
        &mut self,
        real: &Path,
        rel: String,
        stack: &mut Vec<PathBuf>,
        shown: &Path,
    ) -> Result<(), ArtifactError> {
        if stack.iter().any(|dir| dir == real) {
            let target = fs::read_link(shown)
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_else(|_| real.display().to_string());
            return Err(ArtifactError::LinkCycle { path: rel, target });
        }
        self.push(Item {
            path: rel.clone(),
            source: None,
        })?;
        let mut names = Vec::new();
        for entry in fs::read_dir(real).map_err(io_error("list", real))? {
            let entry = entry.map_err(io_error("list", real))?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|name| ArtifactError::NotUtf8 {
                    parent: rel.clone(),
                    name: name.to_string_lossy().into_owned(),
                })?;
            names.push(name);
        }
        names.sort();
        stack.push(real.to_path_buf());
        for name in names {
            let child_rel = format!("{rel}/{name}");
            if child_rel.len() > MAX_PATH_BYTES {
                return Err(ArtifactError::PathTooLong {
                    path: child_rel,
                    limit: MAX_PATH_BYTES,
                });
            }
            let path = real.join(&name);
            let (child_real, meta) = self.resolve(&path, &child_rel, real)?;
            if meta.is_dir() {
                self.directory(&child_real, child_rel, stack, &path)?;
            } else {
                self.declared = self.declared.saturating_add(meta.len());
                if self.declared > MAX_CONTENT_SIZE {
                    return Err(ArtifactError::TooLarge {
                        what: "file contents",
                        limit: MAX_CONTENT_SIZE,
                    });
                }
                let executable = is_executable(&meta);
                self.push(Item {
                    path: child_rel,
                    source: Some((child_real, executable)),
                })?;
            }
        }
        stack.pop();
        Ok(())
    }

    fn push(&mut self, item: Item) -> Result<(), ArtifactError> {
        if self.items.len() >= MAX_ENTRIES {
            return Err(ArtifactError::TooManyEntries { limit: MAX_ENTRIES });
        }
        self.items.push(item);
        Ok(())
    }
}

#[cfg(unix)]
fn special_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_meta: &fs::Metadata) -> &'static str {
    "special file"
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &fs::Metadata) -> bool {
    false
}

/// A ustar header with everything that could vary between machines fixed.
fn fixed_header(entry_type: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_ustar();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(ARTIFACT_MTIME);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Reads a regular file, at most `limit` bytes.
fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, ArtifactError> {
    let file = fs::File::open(path).map_err(io_error("open", path))?;
    let meta = file.metadata().map_err(io_error("inspect", path))?;
    if !meta.is_file() {
        return Err(io_error("read", path)(io::Error::other(
            "no longer a regular file",
        )));
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len().min(limit)).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(io_error("read", path))?;
    if data.len() as u64 > limit {
        return Err(ArtifactError::TooLarge {
            what: "file contents",
            limit: MAX_CONTENT_SIZE,
        });
    }
    Ok(data)
}

fn write_archive(items: &[Item]) -> Result<PackedArtifact, ArtifactError> {
    let gz = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS)
        .write(Vec::new(), Compression::new(GZIP_LEVEL));
    let mut builder = tar::Builder::new(gz);
    let mut files = Vec::new();
    let mut native_code = false;
    let mut content = 0u64;
    for item in items {
        match &item.source {
            None => {
                let mut header = fixed_header(EntryType::Directory, 0o755, 0);
                builder
                    .append_data(&mut header, format!("{}/", item.path), io::empty())
                    .map_err(ArtifactError::Build)?;
            }
            Some((source, executable)) => {
                let data = read_file(source, MAX_CONTENT_SIZE - content)?;
                content += data.len() as u64;
                native_code |= data.starts_with(ELF_MAGIC);
                let mode = if *executable { 0o755 } else { 0o644 };
                let mut header = fixed_header(EntryType::Regular, mode, data.len() as u64);
                builder
                    .append_data(&mut header, &item.path, data.as_slice())
                    .map_err(ArtifactError::Build)?;
                files.push(FileRecord {
                    path: item.path.clone(),
                    sha256: Sha256::digest(&data).to_vec(),
                    size: data.len() as u64,
                    executable: *executable,
                });
            }
        }
    }
    let bytes = builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(ArtifactError::Build)?;
    if bytes.len() as u64 > MAX_ARTIFACT_SIZE {
        return Err(ArtifactError::TooLarge {
            what: "compressed size",
            limit: MAX_ARTIFACT_SIZE,
        });
    }
    // What we write must be what every reader accepts: a name pack allows but list refuses
    // would only show up when a client installs it.
    let listed = walk(&bytes, &mut ListOnly)?;
    if listed.files != files || listed.native_code != native_code {
        return Err(ArtifactError::Build(io::Error::other(
            "the packed artifact does not list as written (a bug in precomp)",
        )));
    }
    Ok(PackedArtifact {
        sha256: Sha256::digest(&bytes).into(),
        bytes,
        files,
        native_code,
    })
}

// ---------------------------------------------------------------------------------------------
// Reading

/// What an artifact is, as [`info`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactInfo {
    pub sha256: [u8; 32],
    pub size: u64,
    /// Every regular file, sorted by path.
    pub files: Vec<FileRecord>,
    pub native_code: bool,
}

impl ArtifactInfo {
    /// The manifest's `Output` for this artifact.
    pub fn output(&self) -> Output {
        Output {
            artifact_sha256: self.sha256.to_vec(),
            artifact_size: self.size,
            files: self.files.clone(),
            native_code: self.native_code,
        }
    }
}

/// Reads an artifact with every check [`list`] makes: its digest, size, files and whether
/// it holds native code.
pub fn info(bytes: &[u8]) -> Result<ArtifactInfo, ArtifactError> {
    let walked = walk(bytes, &mut ListOnly)?;
    Ok(ArtifactInfo {
        sha256: Sha256::digest(bytes).into(),
        size: bytes.len() as u64,
        files: walked.files,
        native_code: walked.native_code,
    })
}

/// Lists the files of an artifact, checking its whole structure (entry types, paths, order,
/// modes, bounds, the gzip CRC) without writing anything: an artifact that lists fine
/// unpacks fine, barring filesystem errors.
pub fn list(bytes: &[u8]) -> Result<Vec<FileRecord>, ArtifactError> {
    Ok(walk(bytes, &mut ListOnly)?.files)
}

/// Unpacks an artifact into `dest`, which must not exist (its parent is created if needed).
///
/// Everything [`list`] checks is checked before anything is written where it could be
/// followed: the format has no links, every entry's parent directory must come earlier in
/// the archive, so writes only ever go into directories this call created. Files get mode
/// 0755 or 0644 as recorded, directories 0755. The files are written into a fresh sibling
/// directory `.NAME.unpack-*` renamed to `dest` once complete; on failure it is removed and
/// `dest` does not appear.
pub fn unpack(bytes: &[u8], dest: &Path) -> Result<Vec<FileRecord>, ArtifactError> {
    unpack_then(bytes, dest, |_| Ok(()))
}

/// [`unpack`], and in the same pass every check [`check`] makes against a manifest's
/// `output`: the files are compared as they were written, before `dest` appears, so an
/// artifact that does not match its manifest never appears at `dest` (one decompression
/// instead of two).
pub fn unpack_checked(
    bytes: &[u8],
    dest: &Path,
    output: &Output,
) -> Result<Vec<FileRecord>, ArtifactError> {
    unpack_then(bytes, dest, |walked| compare(bytes, walked, output))
}

/// Unpacks into a staging directory, runs `accept` on what was walked, then moves it to
/// `dest`.
fn unpack_then(
    bytes: &[u8],
    dest: &Path,
    accept: impl FnOnce(&Walked) -> Result<(), ArtifactError>,
) -> Result<Vec<FileRecord>, ArtifactError> {
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("inspect", dest)(e)),
        Ok(_) => {
            return Err(ArtifactError::Destination {
                path: dest.to_path_buf(),
                problem: "it already exists",
            })
        }
    }
    let name = dest.file_name().ok_or(ArtifactError::Destination {
        path: dest.to_path_buf(),
        problem: "the path has no final component",
    })?;
    let parent = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_error("create the parent directory", &parent))?;
    let staging =
        staging_dir(&parent, name).map_err(io_error("create a staging directory in", &parent))?;
    let result = (|| {
        let mut sink = DiskSink {
            root: staging.clone(),
            open: None,
        };
        let walked = walk(bytes, &mut sink)?;
        accept(&walked)?;
        set_mode(&staging, 0o755).map_err(io_error("set permissions of", &staging))?;
        if fs::symlink_metadata(dest).is_ok() {
            return Err(ArtifactError::Destination {
                path: dest.to_path_buf(),
                problem: "it appeared while unpacking",
            });
        }
        fs::rename(&staging, dest).map_err(io_error("move the unpacked artifact to", dest))?;
        Ok(walked.files)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// Checks `bytes` against a manifest's `Output`: every file's path, SHA-256, size and
/// executable bit, native code, then the artifact's size and SHA-256. The error names the
/// first difference, files first, so a changed file is named rather than reported as a
/// different artifact digest.
pub fn check(bytes: &[u8], output: &Output) -> Result<(), ArtifactError> {
    let walked = walk(bytes, &mut ListOnly)?;
    compare(bytes, &walked, output)
}

/// Everything [`check`] checks except the artifact's own size and SHA-256, reading the
/// artifact as a stream (a stored blob, never held in memory whole): its structure, every
/// file's path, SHA-256, size and executable bit, and native code. The caller checks the
/// size and digest of the bytes it fed in (hashing them as they pass: one read, one hash).
/// The reader is read to its end (nothing may follow the gzip stream) unless an error
/// stops it first; the caller bounds it.
pub fn check_files(reader: impl io::BufRead, output: &Output) -> Result<(), ArtifactError> {
    let walked = walk_stream(reader, &mut ListOnly)?;
    compare_files(&walked, output)
}

/// What [`check`] compares, once `bytes` were walked.
fn compare(bytes: &[u8], walked: &Walked, output: &Output) -> Result<(), ArtifactError> {
    compare_files(walked, output)?;
    if bytes.len() as u64 != output.artifact_size {
        return Err(ArtifactError::SizeMismatch {
            expected: output.artifact_size,
            actual: bytes.len() as u64,
        });
    }
    let digest = Sha256::digest(bytes);
    if digest.as_slice() != output.artifact_sha256.as_slice() {
        return Err(ArtifactError::DigestMismatch {
            expected: hex::encode(&output.artifact_sha256),
            actual: hex::encode(digest),
            files_match: true,
        });
    }
    Ok(())
}

/// The files and native code of what was walked against a manifest's `Output`.
fn compare_files(walked: &Walked, output: &Output) -> Result<(), ArtifactError> {
    let mut expected: Vec<&FileRecord> = output.files.iter().collect();
    expected.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let mut actual = walked.files.iter().peekable();
    let mut wanted = expected.into_iter().peekable();
    loop {
        match (actual.peek(), wanted.peek()) {
            (None, None) => break,
            (Some(a), None) => {
                return Err(ArtifactError::FileUnexpected {
                    path: a.path.clone(),
                })
            }
            (None, Some(w)) => {
                return Err(ArtifactError::FileMissing {
                    path: w.path.clone(),
                })
            }
            (Some(a), Some(w)) => match a.path.as_bytes().cmp(w.path.as_bytes()) {
                std::cmp::Ordering::Less => {
                    return Err(ArtifactError::FileUnexpected {
                        path: a.path.clone(),
                    })
                }
                std::cmp::Ordering::Greater => {
                    return Err(ArtifactError::FileMissing {
                        path: w.path.clone(),
                    })
                }
                std::cmp::Ordering::Equal => {
                    compare_file(a, w)?;
                    actual.next();
                    wanted.next();
                }
            },
        }
    }
    if walked.native_code != output.native_code {
        return Err(ArtifactError::NativeCodeMismatch {
            actual: walked.native_code,
        });
    }
    Ok(())
}

fn compare_file(actual: &FileRecord, wanted: &FileRecord) -> Result<(), ArtifactError> {
    let mismatch = |what, expected: String, found: String| ArtifactError::FileMismatch {
        path: actual.path.clone(),
        what,
        expected,
        actual: found,
    };
    if actual.sha256 != wanted.sha256 {
        return Err(mismatch(
            "SHA-256",
            hex::encode(&wanted.sha256),
            hex::encode(&actual.sha256),
        ));
    }
    if actual.size != wanted.size {
        return Err(mismatch(
            "size",
            wanted.size.to_string(),
            actual.size.to_string(),
        ));
    }
    if actual.executable != wanted.executable {
        let show = |x: bool| if x { "executable" } else { "not executable" }.to_string();
        return Err(mismatch(
            "mode",
            show(wanted.executable),
            show(actual.executable),
        ));
    }
    Ok(())
}

/// Where the walker sends accepted entries.
trait Sink {
    fn directory(&mut self, path: &str) -> Result<(), ArtifactError>;
    fn file_begin(&mut self, path: &str, executable: bool) -> Result<(), ArtifactError>;
    fn file_chunk(&mut self, data: &[u8]) -> Result<(), ArtifactError>;
    fn file_end(&mut self) -> Result<(), ArtifactError>;
}

struct ListOnly;

impl Sink for ListOnly {
    fn directory(&mut self, _: &str) -> Result<(), ArtifactError> {
        Ok(())
    }
    fn file_begin(&mut self, _: &str, _: bool) -> Result<(), ArtifactError> {
        Ok(())
    }
    fn file_chunk(&mut self, _: &[u8]) -> Result<(), ArtifactError> {
        Ok(())
    }
    fn file_end(&mut self) -> Result<(), ArtifactError> {
        Ok(())
    }
}

/// Writes below `root`, a directory this process just created. Directories and files are
/// created exclusively, so nothing existing is ever written through or replaced.
struct DiskSink {
    root: PathBuf,
    open: Option<(PathBuf, fs::File, bool)>,
}

impl DiskSink {
    fn target(&self, path: &str) -> PathBuf {
        let mut out = self.root.clone();
        out.extend(path.split('/'));
        out
    }
}

impl Sink for DiskSink {
    fn directory(&mut self, path: &str) -> Result<(), ArtifactError> {
        let target = self.target(path);
        fs::create_dir(&target).map_err(io_error("create directory", &target))?;
        set_mode(&target, 0o755).map_err(io_error("set permissions of", &target))
    }

    fn file_begin(&mut self, path: &str, executable: bool) -> Result<(), ArtifactError> {
        let target = self.target(path);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(&target)
            .map_err(io_error("create file", &target))?;
        self.open = Some((target, file, executable));
        Ok(())
    }

    fn file_chunk(&mut self, data: &[u8]) -> Result<(), ArtifactError> {
        match &mut self.open {
            Some((path, file, _)) => file.write_all(data).map_err(io_error("write", path)),
            None => Ok(()),
        }
    }

    fn file_end(&mut self) -> Result<(), ArtifactError> {
        if let Some((path, file, executable)) = self.open.take() {
            let mode = if executable { 0o755 } else { 0o644 };
            // On the open file (no second path lookup); exact whatever the umask.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_error("set permissions of", &path))?;
            }
            #[cfg(not(unix))]
            let _ = (mode, &path);
            drop(file);
        }
        Ok(())
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

struct Walked {
    files: Vec<FileRecord>,
    native_code: bool,
}

/// Checks one entry path (after any trailing `/` of a directory was removed): UTF-8,
/// relative, no empty, `.` or `..` component, no NUL, bounded, under a top-level directory.
fn entry_path(raw: &[u8]) -> Result<(String, usize), String> {
    let text = std::str::from_utf8(raw).map_err(|_| "path is not UTF-8".to_string())?;
    if text.starts_with('/') {
        return Err("path is absolute".into());
    }
    if text.len() > MAX_PATH_BYTES {
        return Err(format!("path is longer than {MAX_PATH_BYTES} bytes"));
    }
    let mut depth = 0;
    for component in text.split('/') {
        match component {
            "" => return Err("path has an empty component".into()),
            "." => return Err("path has a `.` component".into()),
            ".." => return Err("path has a `..` component".into()),
            c if c.contains('\0') => return Err("path contains a NUL byte".into()),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(format!(
                    "a path component is longer than {MAX_COMPONENT_BYTES} bytes"
                ))
            }
            _ => depth += 1,
        }
    }
    let top = text.split('/').next().unwrap_or("");
    if !TOP_LEVEL.contains(&top) {
        return Err(format!(
            "`{top}` is not one of the top-level directories {}",
            TOP_LEVEL.join(", ")
        ));
    }
    Ok((text.to_string(), depth))
}

/// Reads an artifact entry by entry, checks each, and hands accepted ones to `sink`.
fn walk(bytes: &[u8], sink: &mut dyn Sink) -> Result<Walked, ArtifactError> {
    if bytes.len() as u64 > MAX_ARTIFACT_SIZE {
        return Err(ArtifactError::TooLarge {
            what: "compressed size",
            limit: MAX_ARTIFACT_SIZE,
        });
    }
    walk_stream(bytes, sink)
}

/// [`walk`] of a stream (its compressed size bounded by the caller).
fn walk_stream(input: impl io::BufRead, sink: &mut dyn Sink) -> Result<Walked, ArtifactError> {
    let (reader, counter) = Limited::new(GzDecoder::new(input), MAX_TAR_SIZE);
    let mut archive = tar::Archive::new(reader);
    let mut current: Option<String> = None;
    let stream_error = |counter: &Counter, after: &Option<String>, source: io::Error| {
        if counter.exceeded() {
            ArtifactError::TooLarge {
                what: "decompressed tar stream",
                limit: MAX_TAR_SIZE,
            }
        } else {
            ArtifactError::Malformed {
                after: after.clone(),
                source,
            }
        }
    };
    let mut files = Vec::new();
    let mut native_code = false;
    let mut directories = std::collections::HashSet::new();
    let mut previous: Option<String> = None;
    let mut entries = 0usize;
    let mut content = 0u64;
    let mut buf = vec![0u8; 64 * 1024];

    let iter = archive
        .entries()
        .map_err(|e| stream_error(&counter, &current, e))?;
    for entry in iter {
        let mut entry = entry.map_err(|e| stream_error(&counter, &current, e))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        current = Some(shown.clone());
        let bad = |problem: String| ArtifactError::BadEntry {
            entry: shown.clone(),
            problem,
        };
        entries += 1;
        if entries > MAX_ENTRIES {
            return Err(ArtifactError::TooManyEntries { limit: MAX_ENTRIES });
        }
        if entry
            .pax_extensions()
            .map_err(|e| stream_error(&counter, &current, e))?
            .is_some()
        {
            return Err(bad(
                "has a pax extended header, which artifacts never use".into()
            ));
        }
        let entry_type = entry.header().entry_type();
        let mode = entry
            .header()
            .mode()
            .map_err(|e| stream_error(&counter, &current, e))?;
        let is_dir = match entry_type {
            EntryType::Directory => true,
            EntryType::Regular => false,
            EntryType::Symlink | EntryType::Link => {
                return Err(bad(
                    "is a link; artifacts hold only regular files and directories".into(),
                ))
            }
            other => {
                return Err(bad(format!(
                    "has entry type {:?}; artifacts hold only regular files and directories",
                    other.as_byte() as char
                )))
            }
        };
        let raw_path = if is_dir {
            raw.strip_suffix(b"/")
                .ok_or_else(|| bad("directory entry does not end with `/`".into()))?
        } else {
            if raw.ends_with(b"/") {
                return Err(bad("file entry ends with `/`".into()));
            }
            raw.as_slice()
        };
        let (path, depth) = entry_path(raw_path).map_err(&bad)?;
        if let Some(previous) = &previous {
            if path.as_bytes() <= previous.as_bytes() {
                return Err(bad(format!(
                    "comes after `{previous}`: entries must be sorted by path, each once"
                )));
            }
        }
        if depth == 1 {
            if !is_dir {
                return Err(bad("a top-level entry must be a directory".into()));
            }
        } else {
            let parent = &path[..path.rfind('/').unwrap_or(0)];
            if !directories.contains(parent) {
                return Err(bad(format!(
                    "its directory `{parent}` has no entry before it"
                )));
            }
        }
        previous = Some(path.clone());
        if is_dir {
            if mode != 0o755 || entry.size() != 0 {
                return Err(bad(format!(
                    "directory has mode {mode:o} and size {}; artifacts use 755 and 0",
                    entry.size()
                )));
            }
            sink.directory(&path)?;
            directories.insert(path);
            continue;
        }
        let executable = match mode {
            0o755 => true,
            0o644 => false,
            other => {
                return Err(bad(format!(
                    "file has mode {other:o}; artifacts use 644 or 755"
                )))
            }
        };
        let size = entry.size();
        content = content.saturating_add(size);
        if content > MAX_CONTENT_SIZE {
            return Err(ArtifactError::TooLarge {
                what: "file contents",
                limit: MAX_CONTENT_SIZE,
            });
        }
        sink.file_begin(&path, executable)?;
        let mut hasher = Sha256::new();
        let mut head = Vec::with_capacity(4);
        let mut copied = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(stream_error(&counter, &current, e)),
            };
            let chunk = &buf[..n];
            if head.len() < 4 {
                let take = (4 - head.len()).min(n);
                head.extend_from_slice(&chunk[..take]);
            }
            hasher.update(chunk);
            copied += n as u64;
            sink.file_chunk(chunk)?;
        }
        if copied != size {
            return Err(ArtifactError::Malformed {
                after: current.clone(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "entry data is truncated: header says {size} bytes, stream holds {copied}"
                    ),
                ),
            });
        }
        sink.file_end()?;
        native_code |= head.as_slice() == ELF_MAGIC;
        files.push(FileRecord {
            path,
            sha256: hasher.finalize().to_vec(),
            size,
            executable,
        });
    }

    // Read the rest of the gzip member so its CRC and length are checked, then make sure
    // nothing follows it.
    let mut limited = archive.into_inner();
    io::copy(&mut limited, &mut io::sink()).map_err(|e| stream_error(&counter, &current, e))?;
    let mut rest = limited.into_inner().into_inner();
    let following =
        io::copy(&mut rest, &mut io::sink()).map_err(|source| ArtifactError::Malformed {
            after: current.clone(),
            source,
        })?;
    if following > 0 {
        return Err(ArtifactError::Malformed {
            after: current,
            source: io::Error::other(format!("{following} bytes follow the gzip stream")),
        });
    }
    Ok(Walked { files, native_code })
}
