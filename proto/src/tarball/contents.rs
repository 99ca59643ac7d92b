//! `contents.tar.gz`: listing and safe extraction.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use tar::EntryType;

use super::error::{EntryProblem, TarballError};
use super::tree::{archive_path, symlink_target, Inserted, NodeKind, Tree};
use super::MAX_UNPACKED_SIZE;
use crate::unpack::{staging_dir, Counter, Limited};

/// What an entry of `contents.tar.gz` creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file; `executable` when any execute bit is set in the archive.
    File { executable: bool },
    /// A directory.
    Directory,
    /// A symlink whose target (as stored) stays inside the package.
    Symlink { target: String },
    /// A hard link to a regular file earlier in the archive, normalized target path.
    /// [`unpack_contents`] writes it as an independent copy of that file.
    HardLink { target: String },
}

/// One entry of `contents.tar.gz`, in archive order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentEntry {
    /// Relative, `/`-separated, without `.` components or trailing `/`.
    pub path: String,
    pub kind: EntryKind,
    /// Bytes of file data (for a hard link, of the file it copies); 0 for directories and
    /// symlinks.
    pub size: u64,
}

/// What [`unpack_contents`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackSummary {
    /// The entries, in archive order, as [`list_contents`] reports them. A later regular file
    /// entry at the same path replaces an earlier one, as in any tar extraction.
    pub entries: Vec<ContentEntry>,
    /// Bytes of the decompressed tar stream, headers and padding included.
    pub decompressed_size: u64,
    /// Bytes of file data written, hard-link copies included.
    pub bytes_written: u64,
}

/// Lists the entries of `contents.tar.gz` without writing anything.
///
/// Runs every check [`unpack_contents`] runs (paths, links, entry types, conflicts, size
/// bounds, gzip CRC), so a package that lists fine unpacks fine, barring filesystem errors.
pub fn list_contents(contents_tar_gz: &[u8]) -> Result<Vec<ContentEntry>, TarballError> {
    Ok(walk(contents_tar_gz, &mut ListOnly)?.entries)
}

/// Safely extracts `contents.tar.gz` into `dest`, which must not exist yet or be an empty
/// directory (missing parents are created).
///
/// Refused, with an error naming the entry: absolute paths, `..` components, symlinks whose
/// target is absolute or can resolve outside the root, hard links to anything but a regular
/// file extracted earlier, entries whose path passes through a symlink, devices, fifos and
/// other special entries, entries that would replace a symlink or change a file into a
/// directory (or back), archives that create more than 2^18 files, directories and links,
/// and archives whose decompressed stream, declared sizes or written bytes exceed
/// [`MAX_UNPACKED_SIZE`]. The decompressed bytes are counted as they come out of the gzip
/// stream, so neither a gzip bomb nor a lying header gets past the bound; hard links are
/// written as copies and count again, so they cannot amplify it either.
///
/// A later regular file at the same path replaces an earlier one, and `./` prefixes,
/// repeated `/` and trailing `/` are normalized away, as every tar extractor does. Paths and
/// link targets must be UTF-8 and at most 4095 bytes (255 per component).
///
/// Regular files get mode 0o755 if any execute bit is set in the archive, else 0o644;
/// setuid, setgid, sticky bits, ownership and timestamps from the archive are ignored.
///
/// Extraction happens in a fresh sibling directory `.NAME.unpack-*` (mode 0o700 while in
/// progress) that is renamed to `dest` only once everything was written and checked; on
/// failure it is removed, so `dest` either holds the complete package or is left as it was.
/// A crash mid-way can leave the dot-prefixed staging directory behind, never `dest`.
pub fn unpack_contents(contents_tar_gz: &[u8], dest: &Path) -> Result<UnpackSummary, TarballError> {
    check_destination(dest)?;
    let name = dest.file_name().ok_or(TarballError::Destination {
        path: dest.to_path_buf(),
        problem: "the path has no final component",
    })?;
    let parent = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|source| TarballError::Io {
        action: "create the parent directory",
        path: parent.clone(),
        source,
    })?;
    let staging = staging_dir(&parent, name).map_err(|source| TarballError::Io {
        action: "create a staging directory in",
        path: parent.to_path_buf(),
        source,
    })?;
    let result = extract_into(contents_tar_gz, &staging).and_then(|summary| {
        set_mode(&staging, 0o755).map_err(|source| TarballError::Io {
            action: "set permissions of",
            path: staging.clone(),
            source,
        })?;
        move_into_place(&staging, dest)?;
        Ok(summary)
    });
    if result.is_err() {
        // Best effort: the staging name starts with a dot and says `unpack`, so a leftover
        // cannot be mistaken for a finished package.
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

fn check_destination(dest: &Path) -> Result<(), TarballError> {
    let refuse = |problem| {
        Err(TarballError::Destination {
            path: dest.to_path_buf(),
            problem,
        })
    };
    match fs::symlink_metadata(dest) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(TarballError::Io {
            action: "inspect",
            path: dest.to_path_buf(),
            source,
        }),
        Ok(meta) if meta.file_type().is_symlink() => refuse("it is a symlink"),
        Ok(meta) if !meta.is_dir() => refuse("it exists and is not a directory"),
        Ok(_) => {
            let mut listing = fs::read_dir(dest).map_err(|source| TarballError::Io {
                action: "list",
                path: dest.to_path_buf(),
                source,
            })?;
            if listing.next().is_some() {
                refuse("it is a directory that is not empty")
            } else {
                Ok(())
            }
        }
    }
}

fn move_into_place(staging: &Path, dest: &Path) -> Result<(), TarballError> {
    // POSIX rename replaces an empty directory atomically and fails on a non-empty one, so a
    // destination filled in the meantime is never clobbered.
    match fs::rename(staging, dest) {
        Ok(()) => Ok(()),
        Err(first) => {
            // Platforms whose rename refuses any existing target: remove the (still empty)
            // directory and retry once.
            let emptied = fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir())
                && fs::remove_dir(dest).is_ok();
            if emptied && fs::rename(staging, dest).is_ok() {
                return Ok(());
            }
            Err(TarballError::Io {
                action: "move the unpacked package into place at",
                path: dest.to_path_buf(),
                source: first,
            })
        }
    }
}

fn extract_into(contents_tar_gz: &[u8], root: &Path) -> Result<UnpackSummary, TarballError> {
    let mut sink = DiskSink {
        root: root.to_path_buf(),
        open: None,
        verified: Vec::new(),
    };
    let walked = walk(contents_tar_gz, &mut sink)?;
    // Defence in depth on top of the model check in `walk`: ask the kernel where each link
    // really leads. Dangling links cannot be resolved and are harmless.
    let real_root = fs::canonicalize(root).map_err(|source| TarballError::Io {
        action: "resolve",
        path: root.to_path_buf(),
        source,
    })?;
    for entry in &walked.entries {
        if let EntryKind::Symlink { target } = &entry.kind {
            if let Ok(real) = fs::canonicalize(root.join(&entry.path)) {
                if !real.starts_with(&real_root) {
                    return Err(TarballError::UnsafeEntry {
                        entry: entry.path.clone(),
                        problem: EntryProblem::LinkEscapes {
                            target: target.clone(),
                        },
                    });
                }
            }
        }
    }
    Ok(UnpackSummary {
        entries: walked.entries,
        decompressed_size: walked.decompressed,
        bytes_written: walked.written,
    })
}

/// Where the walker sends what it accepted.
trait Sink {
    fn directory(&mut self, path: &[String]) -> Result<(), TarballError>;
    fn file_begin(
        &mut self,
        path: &[String],
        executable: bool,
        replace: bool,
    ) -> Result<(), TarballError>;
    fn file_chunk(&mut self, data: &[u8]) -> Result<(), TarballError>;
    fn file_end(&mut self) -> Result<(), TarballError>;
    fn symlink(&mut self, path: &[String], target: &str) -> Result<(), TarballError>;
    fn hard_link(
        &mut self,
        path: &[String],
        source: &[String],
        replace: bool,
    ) -> Result<(), TarballError>;
}

struct ListOnly;

impl Sink for ListOnly {
    fn directory(&mut self, _: &[String]) -> Result<(), TarballError> {
        Ok(())
    }
    fn file_begin(&mut self, _: &[String], _: bool, _: bool) -> Result<(), TarballError> {
        Ok(())
    }
    fn file_chunk(&mut self, _: &[u8]) -> Result<(), TarballError> {
        Ok(())
    }
    fn file_end(&mut self) -> Result<(), TarballError> {
        Ok(())
    }
    fn symlink(&mut self, _: &[String], _: &str) -> Result<(), TarballError> {
        Ok(())
    }
    fn hard_link(&mut self, _: &[String], _: &[String], _: bool) -> Result<(), TarballError> {
        Ok(())
    }
}

struct Walked {
    entries: Vec<ContentEntry>,
    decompressed: u64,
    written: u64,
}

fn stream_error(counter: &Counter, after: &Option<String>, source: io::Error) -> TarballError {
    if counter.exceeded() {
        TarballError::ContentsTooLarge {
            limit: MAX_UNPACKED_SIZE,
            what: "decompressed tar stream",
        }
    } else {
        TarballError::ContentsTar {
            after: after.clone(),
            source,
        }
    }
}

const WRITTEN: &str = "file data written, hard-link copies included";

fn add_bounded(total: &mut u64, amount: u64, what: &'static str) -> Result<(), TarballError> {
    *total = total.saturating_add(amount);
    if *total > MAX_UNPACKED_SIZE {
        return Err(TarballError::ContentsTooLarge {
            limit: MAX_UNPACKED_SIZE,
            what,
        });
    }
    Ok(())
}

fn describe_type(entry_type: EntryType) -> String {
    match entry_type {
        EntryType::Char => "character device".to_string(),
        EntryType::Block => "block device".to_string(),
        EntryType::Fifo => "fifo".to_string(),
        EntryType::GNUSparse => "GNU sparse file".to_string(),
        EntryType::GNULongName => "stray GNU long-name record".to_string(),
        EntryType::GNULongLink => "stray GNU long-link record".to_string(),
        EntryType::XHeader => "stray pax header".to_string(),
        other => format!("entry of type {:?}", other.as_byte() as char),
    }
}

/// Reads `contents.tar.gz` entry by entry, checks each against the model of what the archive
/// has created so far, and hands accepted ones to `sink`.
fn walk(contents_tar_gz: &[u8], sink: &mut dyn Sink) -> Result<Walked, TarballError> {
    let (reader, counter) = Limited::new(GzDecoder::new(contents_tar_gz), MAX_UNPACKED_SIZE);
    let mut archive = tar::Archive::new(reader);
    let mut tree = Tree::new();
    let mut entries = Vec::new();
    let mut declared = 0u64;
    let mut written = 0u64;
    let mut current: Option<String> = None;
    let mut buf = vec![0u8; 64 * 1024];

    let iter = archive
        .entries()
        .map_err(|e| stream_error(&counter, &current, e))?;
    for entry in iter {
        let mut entry = entry.map_err(|e| stream_error(&counter, &current, e))?;
        let raw_path = entry.path_bytes().into_owned();
        let display = String::from_utf8_lossy(&raw_path).into_owned();
        current = Some(display.clone());
        let refuse = |problem| TarballError::UnsafeEntry {
            entry: display.clone(),
            problem,
        };
        let entry_type = entry.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            // pax defaults for later entries (mtime, owner...): nothing we apply anyway.
            continue;
        }
        let size = entry.size();
        add_bounded(&mut declared, size, "sizes declared by entry headers")?;
        let path = archive_path(&raw_path).map_err(refuse)?;
        let joined = path.join("/");

        match entry_type {
            EntryType::Regular | EntryType::Continuous => {
                if path.is_empty() {
                    return Err(refuse(EntryProblem::EmptyPath));
                }
                let mode = entry
                    .header()
                    .mode()
                    .map_err(|e| stream_error(&counter, &current, e))?;
                let executable = mode & 0o111 != 0;
                let inserted = tree
                    .insert(&path, NodeKind::File { executable, size })
                    .map_err(refuse)?;
                add_bounded(&mut written, size, WRITTEN)?;
                sink.file_begin(&path, executable, inserted == Inserted::ReplacedFile)?;
                let mut copied = 0u64;
                loop {
                    let n = match entry.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(stream_error(&counter, &current, e)),
                    };
                    copied += n as u64;
                    sink.file_chunk(&buf[..n])?;
                }
                if copied != size {
                    return Err(TarballError::ContentsTar {
                        after: current.clone(),
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("entry data is truncated: header says {size} bytes, stream holds {copied}"),
                        ),
                    });
                }
                sink.file_end()?;
                entries.push(ContentEntry {
                    path: joined,
                    kind: EntryKind::File { executable },
                    size,
                });
            }
            EntryType::Directory => {
                if path.is_empty() {
                    // `./`: the root itself, which exists already.
                    continue;
                }
                tree.insert(&path, NodeKind::Dir).map_err(refuse)?;
                sink.directory(&path)?;
                entries.push(ContentEntry {
                    path: joined,
                    kind: EntryKind::Directory,
                    size: 0,
                });
            }
            EntryType::Symlink => {
                if path.is_empty() {
                    return Err(refuse(EntryProblem::EmptyPath));
                }
                let raw_target = entry.link_name_bytes().unwrap_or_default();
                let target = symlink_target(&raw_target, false).map_err(refuse)?;
                tree.insert(
                    &path,
                    NodeKind::Symlink {
                        target: target.clone(),
                    },
                )
                .map_err(refuse)?;
                sink.symlink(&path, &target)?;
                entries.push(ContentEntry {
                    path: joined,
                    kind: EntryKind::Symlink { target },
                    size: 0,
                });
            }
            EntryType::Link => {
                if path.is_empty() {
                    return Err(refuse(EntryProblem::EmptyPath));
                }
                let raw_target = entry.link_name_bytes().unwrap_or_default();
                let (source, executable, source_size) =
                    tree.hard_link_source(&path, &raw_target).map_err(refuse)?;
                let inserted = tree
                    .insert(
                        &path,
                        NodeKind::File {
                            executable,
                            size: source_size,
                        },
                    )
                    .map_err(refuse)?;
                add_bounded(&mut written, source_size, WRITTEN)?;
                sink.hard_link(&path, &source, inserted == Inserted::ReplacedFile)?;
                entries.push(ContentEntry {
                    path: joined,
                    kind: EntryKind::HardLink {
                        target: source.join("/"),
                    },
                    size: source_size,
                });
            }
            other => {
                return Err(refuse(EntryProblem::UnsupportedType {
                    kind: describe_type(other),
                }))
            }
        }
    }

    // Read what follows the end-of-archive marker so the gzip CRC and length are verified
    // and trailing data counts against the bound too.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| stream_error(&counter, &current, e))?;

    tree.check_all_symlinks()
        .map_err(|(entry, problem)| TarballError::UnsafeEntry { entry, problem })?;

    Ok(Walked {
        entries,
        decompressed: counter.read(),
        written,
    })
}

/// Writes accepted entries below `root`. Every write re-checks the filesystem: parents must be
/// real directories and new files are created exclusively, so even a model bug (or a
/// case-insensitive filesystem folding two names into one) cannot make a write follow a link.
struct DiskSink {
    root: PathBuf,
    open: Option<(PathBuf, fs::File, bool)>,
    /// The directory whose components were last checked on disk. Entries usually come
    /// grouped by directory, and a checked directory cannot turn into anything else later
    /// (nothing replaces a directory, and symlink creation never overwrites), so only the
    /// components past the common prefix need checking again.
    verified: Vec<String>,
}

impl DiskSink {
    fn disk_path(&self, path: &[String]) -> PathBuf {
        let mut out = self.root.clone();
        out.extend(path);
        out
    }

    fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TarballError + 'a {
        move |source| TarballError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Makes sure every proper prefix of `path` is a real directory, creating missing ones.
    fn ensure_dirs(&mut self, path: &[String], upto: usize) -> Result<(), TarballError> {
        let wanted = &path[..upto.min(path.len())];
        let known = self
            .verified
            .iter()
            .zip(wanted)
            .take_while(|(a, b)| a == b)
            .count();
        let mut dir = self.root.clone();
        dir.extend(&wanted[..known]);
        for (index, name) in wanted.iter().enumerate().skip(known) {
            dir.push(name);
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) => {
                    let shown = path[..=index].join("/");
                    let problem = if meta.file_type().is_symlink() {
                        EntryProblem::ThroughSymlink { symlink: shown }
                    } else {
                        EntryProblem::ParentNotDirectory { parent: shown }
                    };
                    return Err(TarballError::UnsafeEntry {
                        entry: path.join("/"),
                        problem,
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&dir).map_err(Self::io("create directory", &dir))?;
                }
                Err(err) => return Err(Self::io("inspect", &dir)(err)),
            }
        }
        self.verified = wanted.to_vec();
        Ok(())
    }

    fn remove_replaced_file(&self, target: &Path) -> Result<(), TarballError> {
        let meta = fs::symlink_metadata(target).map_err(Self::io("inspect", target))?;
        if !meta.is_file() {
            return Err(Self::io("replace", target)(io::Error::other(
                "expected the regular file extracted earlier",
            )));
        }
        fs::remove_file(target).map_err(Self::io("remove replaced file", target))
    }

    fn create_new(target: &Path) -> Result<fs::File, TarballError> {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(target)
            .map_err(Self::io("create file", target))
    }
}

impl Sink for DiskSink {
    fn directory(&mut self, path: &[String]) -> Result<(), TarballError> {
        self.ensure_dirs(path, path.len())
    }

    fn file_begin(
        &mut self,
        path: &[String],
        executable: bool,
        replace: bool,
    ) -> Result<(), TarballError> {
        self.ensure_dirs(path, path.len().saturating_sub(1))?;
        let target = self.disk_path(path);
        if replace {
            self.remove_replaced_file(&target)?;
        }
        let file = Self::create_new(&target)?;
        self.open = Some((target, file, executable));
        Ok(())
    }

    fn file_chunk(&mut self, data: &[u8]) -> Result<(), TarballError> {
        match &mut self.open {
            Some((path, file, _)) => file.write_all(data).map_err(Self::io("write", path)),
            None => Ok(()),
        }
    }

    fn file_end(&mut self) -> Result<(), TarballError> {
        if let Some((path, file, executable)) = self.open.take() {
            drop(file);
            let mode = if executable { 0o755 } else { 0o644 };
            set_mode(&path, mode).map_err(Self::io("set permissions of", &path))?;
        }
        Ok(())
    }

    fn symlink(&mut self, path: &[String], target: &str) -> Result<(), TarballError> {
        self.ensure_dirs(path, path.len().saturating_sub(1))?;
        let link = self.disk_path(path);
        make_symlink(target, &link).map_err(Self::io("create symlink", &link))
    }

    fn hard_link(
        &mut self,
        path: &[String],
        source: &[String],
        replace: bool,
    ) -> Result<(), TarballError> {
        self.ensure_dirs(path, path.len().saturating_sub(1))?;
        let from = self.disk_path(source);
        let to = self.disk_path(path);
        let meta = fs::symlink_metadata(&from).map_err(Self::io("inspect", &from))?;
        if !meta.is_file() {
            return Err(Self::io("copy", &from)(io::Error::other(
                "hard link source is not a regular file",
            )));
        }
        // Open the source before removing anything: even if the model let a link name the
        // file it replaces, the open handle still reads the original data.
        let mut source_file = fs::File::open(&from).map_err(Self::io("open", &from))?;
        if replace {
            self.remove_replaced_file(&to)?;
        }
        let mut file = Self::create_new(&to)?;
        io::copy(&mut source_file, &mut file).map_err(Self::io("copy into", &to))?;
        drop(file);
        let executable = is_executable(&meta);
        set_mode(&to, if executable { 0o755 } else { 0o644 })
            .map_err(Self::io("set permissions of", &to))
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

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &fs::Metadata) -> bool {
    false
}

#[cfg(unix)]
fn make_symlink(target: &str, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn make_symlink(_target: &str, _link: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "symlinks are only unpacked on Unix",
    ))
}
