//! Applying image layers to a root directory, as a container runtime does, without trusting
//! them.
//!
//! A layer is a tar stream (gzip- or zstd-compressed or not) of changes: files, directories,
//! symlinks and hard links to add or replace, and *whiteouts* — `.wh.NAME` removes `NAME` from
//! the layers below, `.wh..wh..opq` in a directory hides everything the layers below put in it
//! (OCI image spec, "Representing Changes"). The rules, and where they come from:
//!
//! - **Paths stay in the root.** Entry names and hard-link names with a `..` component are
//!   refused; a leading `/` means the image's root (as for Docker and containerd), never the
//!   host's. Parent directories are resolved *inside the root*, following
//!   symlinks as a chroot would (containerd's `fs.RootPath`): an absolute target restarts at
//!   the root, `..` stops at it. So a layer that plants `etc -> /etc` or `x -> ../../..` and
//!   then writes `etc/passwd` or `x/y` writes inside the root, never outside. The last
//!   component is never followed: whatever is there is removed and replaced (a whiteout
//!   removes the link, not its target).
//! - **Symlink targets are kept verbatim**, absolute ones included (`/bin -> usr/bin`,
//!   `/etc/alternatives/...`): they are resolved later inside the sandbox, whose root is the
//!   image.
//! - **Hard links only to files already in the root**, resolved the same way.
//! - **No device nodes or FIFOs.** Entries below `dev/`, `proc/` and `sys/` are dropped (the
//!   sandbox mounts its own, as Docker does); a device or FIFO anywhere else is refused.
//! - **No set-uid or set-gid bits**: they are cleared (builds run with no new privileges and
//!   never need them; on the host they would be a way to root for anyone who can reach the
//!   store). Extended attributes (file capabilities, SELinux labels) are not applied.
//! - **Bounded**: the bytes of files written, the entries created (over all layers) and each
//!   layer's decompressed stream.
//!
//! The staging root is private to us (0700 parent, nobody else writes it), so resolving paths
//! in user space and then acting on them is not racy.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::ImportError;

/// Most symlinks followed while resolving one path (Linux's own limit is 40).
const MAX_SYMLINK_HOPS: u32 = 40;
/// Longest entry name, link name or symlink target accepted: `PATH_MAX` minus the NUL.
const MAX_PATH_BYTES: usize = 4095;
/// Directories whose contents are dropped: the sandbox mounts its own there.
const MOUNT_POINTS: &[&str] = &["dev", "proc", "sys"];
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Bounds for one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Bytes of regular files written, over all layers (a replaced file counts again).
    pub max_bytes: u64,
    /// Entries (files, directories, links, whiteouts) processed, over all layers.
    pub max_entries: u64,
    /// Bytes of one layer's decompressed tar stream.
    pub max_layer_stream: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_bytes: 16 << 30,
            max_entries: 2_000_000,
            max_layer_stream: 20 << 30,
        }
    }
}

/// What applying the layers did, for the record and the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
    /// Files and directories whose set-uid or set-gid bit was cleared.
    pub setid_cleared: u64,
    /// Entries dropped below `dev/`, `proc/`, `sys/`.
    pub dropped: u64,
}

/// Applies layers in order to `root`.
pub struct Applier {
    root: PathBuf,
    bounds: Bounds,
    /// Whether to give entries their owners (root can; anyone else keeps their own).
    chown: bool,
    pub applied: Applied,
}

/// How a layer's bytes are compressed, told by their first bytes (as containerd does): the
/// media type is checked too, but the bytes decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn sniff(first: &[u8]) -> Compression {
        if first.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if first.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A reader that hashes what passes through and fails past a limit.
struct Metered<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other(format!(
                "the decompressed layer is larger than {} bytes",
                self.limit
            )));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl Applier {
    /// `root` must be an existing, empty directory of ours.
    pub fn new(root: &Path, bounds: Bounds) -> Applier {
        Applier {
            root: root.to_path_buf(),
            bounds,
            chown: crate::run::is_root(),
            applied: Applied::default(),
        }
    }

    /// Applies one layer file (compressed or not). Returns the SHA-256 (hex) of the
    /// decompressed tar stream: the layer's `diff_id`, which the image config lists.
    pub fn apply_file(&mut self, layer: &Path) -> Result<String, ImportError> {
        let failed = |e: io::Error| ImportError::io(layer, e);
        let mut file = std::fs::File::open(layer).map_err(failed)?;
        let mut first = [0u8; 4];
        let n = read_up_to(&mut file, &mut first).map_err(failed)?;
        let compression = Compression::sniff(&first[..n]);
        let file = std::fs::File::open(layer).map_err(failed)?;
        let file = io::BufReader::with_capacity(256 * 1024, file);
        match compression {
            Compression::None => self.apply(file),
            Compression::Gzip => self.apply(flate2::read::MultiGzDecoder::new(file)),
            Compression::Zstd => Err(ImportError::Unsupported(
                "zstd-compressed layers are not supported yet: push the image with gzip layers \
                 (e.g. `skopeo copy --dest-compress-format gzip`)"
                    .into(),
            )),
        }
    }

    /// Applies one decompressed layer stream; returns its SHA-256 (hex).
    pub fn apply(&mut self, stream: impl Read) -> Result<String, ImportError> {
        let mut metered = Metered {
            inner: stream,
            hasher: Sha256::new(),
            read: 0,
            limit: self.bounds.max_layer_stream,
        };
        {
            let mut archive = tar::Archive::new(&mut metered);
            // Entries of this layer, so an opaque whiteout keeps them whatever their order.
            let mut this_layer: HashSet<PathBuf> = HashSet::new();
            let entries = archive.entries().map_err(ImportError::layer_io)?;
            for entry in entries {
                let mut entry = entry.map_err(ImportError::layer_io)?;
                self.applied.entries += 1;
                if self.applied.entries > self.bounds.max_entries {
                    return Err(ImportError::TooLarge(format!(
                        "more than {} entries",
                        self.bounds.max_entries
                    )));
                }
                let name = entry.path_bytes().into_owned();
                self.apply_entry(&mut entry, &name, &mut this_layer)
                    .map_err(|problem| match problem {
                        Problem::Entry(why) => ImportError::BadEntry {
                            path: String::from_utf8_lossy(&name).into_owned(),
                            why,
                        },
                        Problem::Fatal(error) => error,
                    })?;
            }
        }
        // The tar's end-of-archive blocks and any padding count in the diff_id.
        io::copy(&mut metered, &mut io::sink()).map_err(ImportError::layer_io)?;
        Ok(hex::encode(metered.hasher.finalize()))
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        name: &[u8],
        this_layer: &mut HashSet<PathBuf>,
    ) -> Result<(), Problem> {
        let components = entry_path(name)?;
        let Some((last, parents)) = components.split_last() else {
            return Ok(()); // `./`: the root itself.
        };
        if MOUNT_POINTS.contains(&components[0].to_str().unwrap_or("")) && components.len() > 1 {
            self.applied.dropped += 1;
            return Ok(());
        }
        let kind = entry.header().entry_type();
        let last_text = last.to_str().unwrap_or("");
        if let Some(removed) = last_text.strip_prefix(WHITEOUT_PREFIX) {
            self.applied.whiteouts += 1;
            if last_text == OPAQUE_WHITEOUT {
                return self.opaque(parents, this_layer);
            }
            if removed.starts_with(WHITEOUT_PREFIX) {
                // AUFS metadata (`.wh..wh.plnk`, `.wh..wh.aufs`): ignored, as by containerd.
                return Ok(());
            }
            if removed.is_empty() || removed == "." || removed == ".." {
                return Err(Problem::Entry(format!(
                    "a whiteout must name an entry, not {removed:?}"
                )));
            }
            return self.whiteout(parents, OsStr::new(removed));
        }
        let parent = self.resolve(parents, true)?.expect("created");
        let path = parent.join(last);
        this_layer.insert(path.strip_prefix(&self.root).unwrap_or(&path).to_path_buf());
        let header = entry.header();
        let mode = header.mode().map_err(|e| Problem::Entry(e.to_string()))?;
        let uid = header.uid().map_err(|e| Problem::Entry(e.to_string()))?;
        let gid = header.gid().map_err(|e| Problem::Entry(e.to_string()))?;
        let owner = (
            u32::try_from(uid).map_err(|_| Problem::Entry(format!("uid {uid}")))?,
            u32::try_from(gid).map_err(|_| Problem::Entry(format!("gid {gid}")))?,
        );
        let mode = self.safe_mode(mode);
        let existing = path.symlink_metadata().ok();
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match existing {
                    Some(meta) if meta.is_dir() => {}
                    Some(_) => {
                        remove(&path)?;
                        mkdir(&path)?;
                    }
                    None => mkdir(&path)?,
                }
                self.finish(&path, mode, owner)
            }
            T::Regular | T::Continuous => {
                if existing.is_some() {
                    remove(&path)?;
                }
                let size = entry
                    .header()
                    .size()
                    .map_err(|e| Problem::Entry(e.to_string()))?;
                self.applied.bytes += size;
                if self.applied.bytes > self.bounds.max_bytes {
                    return Err(Problem::Fatal(ImportError::TooLarge(format!(
                        "more than {} bytes of files",
                        self.bounds.max_bytes
                    ))));
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| fatal(&path, e))?;
                let copied = io::copy(&mut entry.take(size), &mut file)
                    .map_err(|e| Problem::Fatal(ImportError::layer_io(e)))?;
                if copied != size {
                    return Err(Problem::Entry("the layer ends inside this file".into()));
                }
                drop(file);
                self.finish(&path, mode, owner)
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Problem::Entry("a symlink without a target".into()))?
                    .into_owned();
                if target.is_empty() || target.len() > MAX_PATH_BYTES || target.contains(&0) {
                    return Err(Problem::Entry(format!(
                        "bad symlink target {:?}",
                        String::from_utf8_lossy(&target)
                    )));
                }
                if existing.is_some() {
                    remove(&path)?;
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(|e| fatal(&path, e))?;
                self.owner(&path, owner)
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Problem::Entry("a hard link without a target".into()))?
                    .into_owned();
                let source = self.hard_link_source(&target)?;
                if source == path {
                    return Ok(());
                }
                if existing.is_some() {
                    remove(&path)?;
                }
                std::fs::hard_link(&source, &path).map_err(|e| fatal(&path, e))
            }
            T::Char | T::Block | T::Fifo => Err(Problem::Entry(format!(
                "{} outside /dev: device nodes and FIFOs are refused",
                match kind {
                    T::Char => "a character device",
                    T::Block => "a block device",
                    _ => "a FIFO",
                }
            ))),
            // PAX and GNU long-name headers are consumed by the tar reader itself.
            other => Err(Problem::Entry(format!(
                "unsupported tar entry type {:?}",
                other.as_byte() as char
            ))),
        }
    }

    /// `.wh.NAME` in `parents`: removes `NAME` (and everything below it) if it is there.
    fn whiteout(&mut self, parents: &[OsString], name: &OsStr) -> Result<(), Problem> {
        let Some(parent) = self.resolve(parents, false)? else {
            return Ok(());
        };
        let path = parent.join(name);
        if path.symlink_metadata().is_ok() {
            remove(&path)?;
        }
        Ok(())
    }

    /// `.wh..wh..opq` in `parents`: empties the directory of what lower layers put there,
    /// keeping what this layer wrote (containerd's rule: the opaque marker may come after the
    /// layer's own entries in that directory).
    fn opaque(
        &mut self,
        parents: &[OsString],
        this_layer: &HashSet<PathBuf>,
    ) -> Result<(), Problem> {
        let dir = self.resolve(parents, true)?.expect("created");
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            let reader = std::fs::read_dir(&dir).map_err(|e| fatal(&dir, e))?;
            for child in reader {
                let child = child.map_err(|e| fatal(&dir, e))?.path();
                let rel = child.strip_prefix(&self.root).unwrap_or(&child);
                if this_layer.contains(rel) {
                    let meta = child.symlink_metadata().map_err(|e| fatal(&child, e))?;
                    if meta.is_dir() {
                        stack.push(child);
                    }
                } else {
                    remove(&child)?;
                }
            }
        }
        Ok(())
    }

    /// The file a hard link's name points at: inside the root, an existing regular file or
    /// symlink (never a directory).
    fn hard_link_source(&self, target: &[u8]) -> Result<PathBuf, Problem> {
        let components = entry_path(target).map_err(|problem| match problem {
            Problem::Entry(why) => Problem::Entry(format!("hard link target: {why}")),
            other => other,
        })?;
        let Some((last, parents)) = components.split_last() else {
            return Err(Problem::Entry("a hard link to the root".into()));
        };
        let missing = || {
            Problem::Entry(format!(
                "hard link target {:?} is not a file earlier in the image",
                String::from_utf8_lossy(target)
            ))
        };
        let parent = self.resolve(parents, false)?.ok_or_else(missing)?;
        let source = parent.join(last);
        let meta = source.symlink_metadata().map_err(|_| missing())?;
        if !(meta.is_file() || meta.file_type().is_symlink()) {
            return Err(missing());
        }
        Ok(source)
    }

    /// The host path of the directory `components` of the image, resolved inside the root:
    /// symlinks followed with the root as `/`, `..` stopping at the root. Missing directories
    /// are created when `create` (mode 0755, owned by root, as runtimes do), else `None`.
    pub(crate) fn resolve(
        &self,
        components: &[OsString],
        create: bool,
    ) -> Result<Option<PathBuf>, Problem> {
        let mut current: Vec<OsString> = Vec::new();
        let mut pending: std::collections::VecDeque<OsString> =
            components.iter().cloned().collect();
        let mut hops = 0;
        while let Some(name) = pending.pop_front() {
            match name.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    current.pop();
                    continue;
                }
                _ => {}
            }
            let mut path = self.root.clone();
            path.extend(&current);
            path.push(&name);
            match path.symlink_metadata() {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    mkdir(&path)?;
                    current.push(name);
                }
                Err(e) => return Err(fatal(&path, e)),
                Ok(meta) if meta.is_dir() => current.push(name),
                Ok(meta) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(Problem::Entry(format!(
                            "more than {MAX_SYMLINK_HOPS} symlinks on the way (a loop?)"
                        )));
                    }
                    let target = std::fs::read_link(&path).map_err(|e| fatal(&path, e))?;
                    let bytes = target.as_os_str().as_bytes();
                    if bytes.starts_with(b"/") {
                        current.clear();
                    }
                    for part in bytes.split(|&b| b == b'/').rev() {
                        pending.push_front(OsString::from_vec(part.to_vec()));
                    }
                }
                Ok(_) => {
                    let mut rel = PathBuf::new();
                    rel.extend(&current);
                    rel.push(&name);
                    return Err(Problem::Entry(format!(
                        "/{} is a file, not a directory",
                        rel.display()
                    )));
                }
            }
        }
        let mut path = self.root.clone();
        path.extend(&current);
        Ok(Some(path))
    }

    /// The permission bits kept: set-uid and set-gid cleared (and counted), sticky kept.
    fn safe_mode(&mut self, mode: u32) -> u32 {
        if mode & 0o6000 != 0 {
            self.applied.setid_cleared += 1;
        }
        mode & 0o1777
    }

    fn finish(&self, path: &Path, mode: u32, owner: (u32, u32)) -> Result<(), Problem> {
        self.owner(path, owner)?;
        // After chown, which clears set-id bits anyway; the path is ours and not a symlink.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fatal(path, e))
    }

    fn owner(&self, path: &Path, (uid, gid): (u32, u32)) -> Result<(), Problem> {
        if self.chown {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| fatal(path, e))?;
        }
        Ok(())
    }
}

/// Why an entry could not be applied.
pub(crate) enum Problem {
    /// The layer is at fault: refused, naming the entry.
    Entry(String),
    /// Something else failed (disk, limits).
    Fatal(ImportError),
}

impl From<ImportError> for Problem {
    fn from(error: ImportError) -> Self {
        Problem::Fatal(error)
    }
}

fn fatal(path: &Path, error: io::Error) -> Problem {
    Problem::Fatal(ImportError::io(path, error))
}

/// An entry name as components: `.` and empty components dropped, `..` refused. A leading
/// `/` names the image's root, as for Docker and containerd (umoci writes `/` for the root
/// directory). Empty for the root itself.
fn entry_path(name: &[u8]) -> Result<Vec<OsString>, Problem> {
    if name.len() > MAX_PATH_BYTES {
        return Err(Problem::Entry("the name is longer than 4095 bytes".into()));
    }
    let mut components = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(Problem::Entry("a `..` component".into())),
            part if part.contains(&0) => return Err(Problem::Entry("a NUL byte".into())),
            part => components.push(OsString::from_vec(part.to_vec())),
        }
    }
    Ok(components)
}

fn mkdir(path: &Path) -> Result<(), Problem> {
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(|e| fatal(path, e))
}

/// Removes what is at `path` without following it: a directory with everything below it
/// (std's `remove_dir_all` does not follow symlinks), anything else unlinked.
fn remove(path: &Path) -> Result<(), Problem> {
    let meta = path.symlink_metadata().map_err(|e| fatal(path, e))?;
    if meta.is_dir() {
        std::fs::remove_dir_all(path).map_err(|e| fatal(path, e))
    } else {
        std::fs::remove_file(path).map_err(|e| fatal(path, e))
    }
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Owner and mode of a path, for tests and the record.
#[allow(dead_code)]
pub(crate) fn mode_of(path: &Path) -> Option<(u32, u32, u32)> {
    let meta = path.symlink_metadata().ok()?;
    Some((meta.mode() & 0o7777, meta.uid(), meta.gid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry of a test layer; names are written raw, so hostile ones can be made.
    enum E<'a> {
        Dir(&'a str, u32),
        File(&'a str, u32, &'a [u8]),
        Link(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Device(&'a str),
        Fifo(&'a str),
    }

    fn layer(entries: &[E]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut out);
            for entry in entries {
                let mut header = tar::Header::new_gnu();
                let (name, data): (&str, &[u8]) = match entry {
                    E::Dir(name, mode) => {
                        header.set_entry_type(tar::EntryType::Directory);
                        header.set_mode(*mode);
                        (name, b"")
                    }
                    E::File(name, mode, data) => {
                        header.set_entry_type(tar::EntryType::Regular);
                        header.set_mode(*mode);
                        (name, data)
                    }
                    E::Link(name, target) | E::Hard(name, target) => {
                        header.set_entry_type(if matches!(entry, E::Link(..)) {
                            tar::EntryType::Symlink
                        } else {
                            tar::EntryType::Link
                        });
                        header.set_mode(0o777);
                        let raw = &mut header.as_old_mut().linkname;
                        raw[..target.len()].copy_from_slice(target.as_bytes());
                        (name, b"")
                    }
                    E::Device(name) => {
                        header.set_entry_type(tar::EntryType::Char);
                        header.set_mode(0o666);
                        header.set_device_major(1).unwrap();
                        header.set_device_minor(3).unwrap();
                        (name, b"")
                    }
                    E::Fifo(name) => {
                        header.set_entry_type(tar::EntryType::Fifo);
                        header.set_mode(0o644);
                        (name, b"")
                    }
                };
                let raw = &mut header.as_old_mut().name;
                raw[..name.len()].copy_from_slice(name.as_bytes());
                header.set_size(data.len() as u64);
                header.set_uid(0);
                header.set_gid(0);
                header.set_cksum();
                builder.append(&header, data).unwrap();
            }
            builder.finish().unwrap();
        }
        out
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        /// A directory beside the root that no layer may touch.
        outside: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b/root");
        let outside = dir.path().join("a/outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"keep me").unwrap();
        Fixture {
            _dir: dir,
            root,
            outside,
        }
    }

    fn apply(f: &Fixture, layers: &[&[E]]) -> Result<Applier, ImportError> {
        apply_bounded(f, layers, Bounds::default())
    }

    fn apply_bounded(f: &Fixture, layers: &[&[E]], bounds: Bounds) -> Result<Applier, ImportError> {
        let mut applier = Applier::new(&f.root, bounds);
        for entries in layers {
            let bytes = layer(entries);
            let digest = applier.apply(&bytes[..])?;
            assert_eq!(digest, hex::encode(Sha256::digest(&bytes)));
        }
        Ok(applier)
    }

    fn outside_untouched(f: &Fixture) {
        let names: Vec<_> = std::fs::read_dir(&f.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"]);
        assert_eq!(std::fs::read(f.outside.join("secret")).unwrap(), b"keep me");
    }

    fn refused(result: Result<Applier, ImportError>, why: &str) {
        match result {
            Err(ImportError::BadEntry { why: actual, .. }) => {
                assert!(actual.contains(why), "{actual:?} should say {why:?}")
            }
            Err(other) => panic!("expected a refused entry ({why}), got {other}"),
            Ok(_) => panic!("expected a refused entry ({why})"),
        }
    }

    #[test]
    fn files_dirs_links_modes_and_hard_links_are_applied() {
        let f = fixture();
        let applier = apply(
            &f,
            &[&[
                E::Dir("usr/", 0o755),
                E::Dir("usr/bin/", 0o755),
                E::File("usr/bin/erl", 0o755, b"#!/bin/sh\n"),
                E::Link("bin", "usr/bin"),
                E::Link("usr/bin/abs", "/etc/alternatives/x"),
                E::Hard("usr/bin/erl2", "usr/bin/erl"),
                E::Dir("tmp/", 0o1777),
                E::File("./etc/motd", 0o644, b"hi"),
            ]],
        )
        .unwrap();
        let root = &f.root;
        assert_eq!(
            std::fs::read(root.join("usr/bin/erl")).unwrap(),
            b"#!/bin/sh\n"
        );
        assert_eq!(mode_of(&root.join("usr/bin/erl")).unwrap().0, 0o755);
        assert_eq!(mode_of(&root.join("tmp")).unwrap().0, 0o1777);
        assert_eq!(
            std::fs::read_link(root.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert_eq!(
            std::fs::read_link(root.join("usr/bin/abs")).unwrap(),
            Path::new("/etc/alternatives/x")
        );
        let a = root.join("usr/bin/erl").metadata().unwrap();
        let b = root.join("usr/bin/erl2").metadata().unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(std::fs::read(root.join("etc/motd")).unwrap(), b"hi");
        assert_eq!(applier.applied.bytes, 12);
    }

    #[test]
    fn escape_by_dotdot_is_refused_and_absolute_paths_stay_in_the_root() {
        let f = fixture();
        refused(
            apply(&f, &[&[E::File("../../outside/x", 0o644, b"x")]]),
            "`..`",
        );
        refused(apply(&f, &[&[E::File("usr/../../x", 0o644, b"x")]]), "`..`");
        refused(
            apply(&f, &[&[E::Hard("x", "../../outside/secret")]]),
            "`..`",
        );
        // An absolute name is the image's own path.
        let outside = format!("{}", f.outside.join("secret").display());
        apply(
            &f,
            &[&[E::File(&outside, 0o644, b"x"), E::Hard("/h", &outside)]],
        )
        .unwrap();
        assert_eq!(std::fs::read(f.root.join(&outside[1..])).unwrap(), b"x");
        assert!(f.root.join("h").is_file());
        outside_untouched(&f);
    }

    #[test]
    fn writing_through_a_symlink_stays_in_the_root() {
        let f = fixture();
        // A relative link climbing out, an absolute one, both then written through: resolved
        // with the root as `/`, they land inside it.
        apply(
            &f,
            &[
                &[
                    E::Link("up", "../../../outside"),
                    E::Link("abs", "/"),
                    E::Link("loop", "loop"),
                ],
                &[
                    E::File("up/secret", 0o644, b"owned"),
                    E::File("abs/a/outside/secret", 0o644, b"owned"),
                ],
            ],
        )
        .unwrap();
        outside_untouched(&f);
        // `../../../outside` from the root is the root's own `/outside`.
        assert_eq!(
            std::fs::read(f.root.join("outside/secret")).unwrap(),
            b"owned"
        );
        assert_eq!(
            std::fs::read(f.root.join("a/outside/secret")).unwrap(),
            b"owned"
        );
        // The last component is never followed: a file entry replaces the link itself.
        let f = fixture();
        let target = f.outside.join("secret");
        let link = format!("{}", target.display());
        apply(
            &f,
            &[&[E::Link("s", &link)], &[E::File("s", 0o644, b"new")]],
        )
        .unwrap();
        outside_untouched(&f);
        assert!(f.root.join("s").symlink_metadata().unwrap().is_file());
        // A symlink loop is refused, not followed forever.
        let f = fixture();
        refused(
            apply(
                &f,
                &[&[E::Link("loop", "loop")], &[E::File("loop/x", 0o644, b"")]],
            ),
            "symlinks",
        );
    }

    #[test]
    fn hard_links_point_only_at_files_in_the_root() {
        let f = fixture();
        let outside = format!("{}", f.outside.join("secret").display());
        // Through an absolute symlink out of the root: resolved inside, where there is nothing.
        refused(
            apply(
                &f,
                &[&[
                    E::Link("o", &outside[1..outside.len() - 7]),
                    E::Hard("x", "o/secret"),
                ]],
            ),
            "not a file earlier",
        );
        let f = fixture();
        refused(
            apply(&f, &[&[E::Dir("d/", 0o755), E::Hard("x", "d")]]),
            "not a file",
        );
        let f = fixture();
        refused(
            apply(&f, &[&[E::Hard("x", "missing")]]),
            "not a file earlier",
        );
        outside_untouched(&f);
    }

    #[test]
    fn whiteouts_remove_lower_entries_and_stay_in_the_root() {
        let f = fixture();
        apply(
            &f,
            &[
                &[
                    E::File("etc/a", 0o644, b"a"),
                    E::File("etc/b", 0o644, b"b"),
                    E::Dir("opt/d/", 0o755),
                    E::File("opt/d/old", 0o644, b"old"),
                    E::Dir("opt/d/sub/", 0o755),
                    E::File("opt/d/sub/older", 0o644, b""),
                    E::Link("up", "../../../outside"),
                ],
                &[
                    E::File("etc/.wh.a", 0o644, b""),
                    // Whiteouts through a link that points out of the root: resolved inside.
                    E::File("up/.wh.secret", 0o644, b""),
                    E::File(".wh.missing", 0o644, b""),
                    // This layer's own entry in an opaque directory is kept, whatever the order.
                    E::Dir("opt/d/sub/", 0o755),
                    E::File("opt/d/new", 0o644, b"new"),
                    E::File("opt/d/.wh..wh..opq", 0o644, b""),
                ],
            ],
        )
        .unwrap();
        outside_untouched(&f);
        let r = &f.root;
        assert!(!r.join("etc/a").exists());
        assert!(r.join("etc/b").exists());
        assert!(!r.join("opt/d/old").exists());
        assert!(!r.join("opt/d/sub/older").exists());
        assert!(r.join("opt/d/sub").is_dir());
        assert_eq!(std::fs::read(r.join("opt/d/new")).unwrap(), b"new");
        assert!(!r.join("opt/d/.wh..wh..opq").exists());
        for bad in ["etc/.wh...", "etc/.wh.", "etc/.wh.."] {
            let f = fixture();
            let result = apply(&f, &[&[E::File(bad, 0o644, b"")]]);
            assert!(result.is_err(), "{bad}");
            outside_untouched(&f);
        }
    }

    #[test]
    fn whiteout_of_a_directory_removes_it_but_not_what_its_links_point_at() {
        let f = fixture();
        let outside = format!("{}", f.outside.display());
        apply(
            &f,
            &[
                &[
                    E::Dir("d/", 0o755),
                    E::Link("d/out", &outside),
                    E::Link("l", &outside),
                ],
                &[E::File(".wh.d", 0o644, b""), E::File(".wh.l", 0o644, b"")],
            ],
        )
        .unwrap();
        outside_untouched(&f);
        assert!(!f.root.join("d").exists());
        assert!(f.root.join("l").symlink_metadata().is_err());
    }

    #[test]
    fn devices_and_fifos_are_refused_except_below_dev() {
        let f = fixture();
        refused(apply(&f, &[&[E::Device("usr/bin/mem")]]), "device");
        let f = fixture();
        refused(apply(&f, &[&[E::Fifo("tmp/p")]]), "FIFO");
        let f = fixture();
        let applier = apply(
            &f,
            &[&[
                E::Dir("dev/", 0o755),
                E::Device("dev/null"),
                E::File("proc/x", 0o644, b""),
            ]],
        )
        .unwrap();
        assert_eq!(applier.applied.dropped, 2);
        assert!(f.root.join("dev").is_dir());
        assert_eq!(std::fs::read_dir(f.root.join("dev")).unwrap().count(), 0);
    }

    #[test]
    fn setid_bits_are_cleared() {
        let f = fixture();
        let applier = apply(
            &f,
            &[&[E::File("usr/bin/su", 0o4755, b"x"), E::Dir("srv/", 0o2775)]],
        )
        .unwrap();
        assert_eq!(mode_of(&f.root.join("usr/bin/su")).unwrap().0, 0o755);
        assert_eq!(mode_of(&f.root.join("srv")).unwrap().0, 0o775);
        assert_eq!(applier.applied.setid_cleared, 2);
    }

    #[test]
    fn sizes_and_entry_counts_are_bounded() {
        let big = vec![0u8; 4096];
        let f = fixture();
        let bounds = Bounds {
            max_bytes: 5000,
            ..Bounds::default()
        };
        let result = apply_bounded(
            &f,
            &[&[E::File("a", 0o644, &big), E::File("b", 0o644, &big)]],
            bounds,
        );
        assert!(
            matches!(result, Err(ImportError::TooLarge(_))),
            "{:?}",
            result.err()
        );
        let f = fixture();
        let bounds = Bounds {
            max_entries: 3,
            ..Bounds::default()
        };
        let many: Vec<E> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| E::File(n, 0o644, b""))
            .collect();
        let result = apply_bounded(&f, &[&many], bounds);
        assert!(matches!(result, Err(ImportError::TooLarge(_))));
        let f = fixture();
        let bounds = Bounds {
            max_layer_stream: 10_000,
            ..Bounds::default()
        };
        let huge = vec![0u8; 20_000];
        let result = apply_bounded(&f, &[&[E::File("a", 0o644, &huge)]], bounds);
        assert!(result.is_err());
    }

    #[test]
    fn a_file_in_the_parent_path_is_refused() {
        let f = fixture();
        refused(
            apply(
                &f,
                &[&[
                    E::File("etc", 0o644, b""),
                    E::File("etc/passwd", 0o644, b""),
                ]],
            ),
            "not a directory",
        );
    }

    #[test]
    fn compression_is_told_by_the_bytes() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"usr/"), Compression::None);
        // A gzip layer applies like the tar it holds, and its diff_id is the tar's digest.
        let tar = layer(&[E::File("a", 0o644, b"x")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("layer");
        std::fs::write(&file, gz.finish().unwrap()).unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let digest = Applier::new(&root, Bounds::default())
            .apply_file(&file)
            .unwrap();
        assert_eq!(digest, hex::encode(Sha256::digest(&tar)));
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"x");
    }
}
