//! The digest of a directory tree: a canonical manifest (one line per entry, sorted by path:
//! kind, mode, owner, size, content hash or link target) and its SHA-256. No times.

use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const HEADER: &str = "precomp-tree-manifest v1\n";

/// A tree's manifest and digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The canonical text; its SHA-256 is the digest.
    pub text: String,
    pub digest: String,
    pub files: u64,
    pub bytes: u64,
}

impl Manifest {
    /// Wraps a stored manifest text.
    pub fn from_text(text: String) -> Manifest {
        let digest = hex::encode(Sha256::digest(text.as_bytes()));
        let (mut files, mut bytes) = (0, 0);
        for line in text.lines().skip(1) {
            let mut fields = line.split(' ');
            if fields.next() == Some("f") {
                files += 1;
                bytes += fields.nth(3).and_then(|s| s.parse().ok()).unwrap_or(0);
            }
        }
        Manifest {
            text,
            digest,
            files,
            bytes,
        }
    }

    /// The entry lines keyed by path.
    fn entries(&self) -> std::collections::BTreeMap<&str, &str> {
        self.text
            .lines()
            .skip(1)
            .filter_map(|line| line.rsplit_once(' ').map(|(rest, path)| (path, rest)))
            .collect()
    }

    /// What differs from `other` (this is the expected tree), path by path, in path order.
    pub fn differences(&self, actual: &Manifest) -> Vec<String> {
        let expected = self.entries();
        let found = actual.entries();
        let mut out = Vec::new();
        let mut paths: Vec<&str> = expected.keys().chain(found.keys()).copied().collect();
        paths.sort_unstable();
        paths.dedup();
        for path in paths {
            match (expected.get(path), found.get(path)) {
                (Some(a), Some(b)) if a != b => out.push(format!("changed {path}: {a} -> {b}")),
                (Some(_), None) => out.push(format!("missing {path}")),
                (None, Some(_)) => out.push(format!("unexpected {path}")),
                _ => {}
            }
        }
        out
    }
}

/// Walks `root` (never following links) and builds its manifest. Paths are relative to
/// `root`, written `/usr/bin/erl`; bytes outside printable ASCII, space and `%` are
/// %-escaped.
pub fn manifest(root: &Path) -> Result<Manifest> {
    let mut entries = Vec::new();
    walk(root, Path::new(""), &mut entries)?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut text = String::from(HEADER);
    let (mut files, mut bytes) = (0u64, 0u64);
    for (rel, path) in entries {
        let meta = path.symlink_metadata().map_err(|e| Error::io(&path, e))?;
        let kind = meta.file_type();
        let mode = meta.mode() & 0o7777;
        let owner = format!("{:04o} {} {}", mode, meta.uid(), meta.gid());
        let line = if kind.is_dir() {
            format!("d {owner} - -")
        } else if kind.is_file() {
            files += 1;
            bytes += meta.len();
            format!("f {owner} {} {}", meta.len(), hash_file(&path)?)
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| Error::io(&path, e))?;
            format!("l {owner} - {}", escape(target.as_os_str().as_bytes()))
        } else {
            let letter = if kind.is_block_device() {
                'b'
            } else if kind.is_char_device() {
                'c'
            } else if kind.is_fifo() {
                'p'
            } else {
                's'
            };
            let rdev = meta.rdev();
            format!(
                "{letter} {owner} - {},{}",
                libc::major(rdev),
                libc::minor(rdev)
            )
        };
        let _ = writeln!(text, "{line} {}", escape(&rel));
    }
    let digest = hex::encode(Sha256::digest(text.as_bytes()));
    Ok(Manifest {
        text,
        digest,
        files,
        bytes,
    })
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<(Vec<u8>, std::path::PathBuf)>) -> Result<()> {
    let dir = root.join(rel);
    let reader = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    for entry in reader {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let child_rel = rel.join(entry.file_name());
        let mut key = b"/".to_vec();
        key.extend_from_slice(child_rel.as_os_str().as_bytes());
        let is_dir = entry
            .file_type()
            .map_err(|e| Error::io(entry.path(), e))?
            .is_dir();
        out.push((key, entry.path()));
        if is_dir {
            walk(root, &child_rel, out)?;
        }
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Total apparent size of the regular files under `dir` and its number of entries, without
/// following links; stops counting once `stop_at` bytes are reached. Entries that vanish while
/// walking are skipped (the tree may be changing).
pub(crate) fn usage(dir: &Path, stop_at: u64) -> (u64, u64) {
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(reader) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in reader.flatten() {
            entries += 1;
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                bytes += meta.len();
                if bytes >= stop_at {
                    return (bytes, entries);
                }
            }
        }
    }
    (bytes, entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn digest_covers_paths_modes_contents_and_links_but_not_times() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\n").unwrap();
        std::fs::write(root.join("usr/a b%"), b"x").unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        let first = manifest(root).unwrap();
        assert!(first.text.contains("/usr/a%20b%25\n"), "{}", first.text);
        assert!(first.text.contains(" usr/bin /bin\n"), "{}", first.text);
        assert_eq!(first.files, 2);
        assert_eq!(Manifest::from_text(first.text.clone()), first);

        // Times do not count.
        let f = std::fs::File::options()
            .write(true)
            .open(root.join("usr/bin/tool"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(manifest(root).unwrap().digest, first.digest);

        // Contents, modes and link targets do, and the differences are named.
        std::fs::write(root.join("usr/bin/tool"), b"#!/bin/bash\n").unwrap();
        let changed = manifest(root).unwrap();
        assert_ne!(changed.digest, first.digest);
        let diff = first.differences(&changed);
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert!(diff[0].starts_with("changed /usr/bin/tool"), "{diff:?}");

        std::fs::set_permissions(
            root.join("usr/a b%"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::remove_file(root.join("bin")).unwrap();
        std::os::unix::fs::symlink("usr/sbin", root.join("bin")).unwrap();
        std::fs::write(root.join("new"), b"").unwrap();
        let diff = first.differences(&manifest(root).unwrap());
        let names: Vec<&str> = diff.iter().map(|d| d.split(':').next().unwrap()).collect();
        assert_eq!(
            names,
            [
                "changed /bin",
                "unexpected /new",
                "changed /usr/a%20b%25",
                "changed /usr/bin/tool",
            ]
        );
    }

    #[test]
    fn usage_counts_regular_files_only_and_stops_early() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/a"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("b"), vec![0u8; 24]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("l")).unwrap();
        assert_eq!(usage(dir.path(), u64::MAX), (1024, 4));
        assert!(usage(dir.path(), 10).0 >= 10);
    }
}
