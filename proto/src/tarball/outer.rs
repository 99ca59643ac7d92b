//! The outer `NAME-VERSION.tar`: reading, checksums and deterministic creation.

use std::io::{Read, Write};

use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::error::{EntryProblem, TarballError};
use super::tree::{package_path, symlink_target, NodeKind, Tree};
use super::{
    CHECKSUM_MEMBER, CONTENTS_MEMBER, ENTRY_MTIME, MAX_CHECKSUM_SIZE, MAX_METADATA_SIZE,
    MAX_TARBALL_SIZE, MAX_UNPACKED_SIZE, MAX_VERSION_SIZE, METADATA_MEMBER, VERSION,
    VERSION_MEMBER,
};

/// A parsed and checked outer tarball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tarball {
    /// Contents of `VERSION`; always `"3"` once [`read`] accepted it.
    pub version: String,
    /// SHA-256 of `VERSION ‖ metadata.config ‖ contents.tar.gz`, equal to `CHECKSUM`.
    pub inner_checksum: [u8; 32],
    /// SHA-256 of the whole outer tar: what the registry's `Release.outer_checksum` carries.
    pub outer_checksum: [u8; 32],
    /// `metadata.config` as stored: Erlang term text, not parsed here.
    pub metadata_config: Vec<u8>,
    /// `contents.tar.gz` as stored; see [`super::list_contents`] and
    /// [`super::unpack_contents`].
    pub contents_tar_gz: Vec<u8>,
}

/// What a package file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageFileKind {
    /// A regular file, stored with mode 0o755 when `executable`, else 0o644.
    File { contents: Vec<u8>, executable: bool },
    /// A symlink, stored with mode 0o777; the target must stay inside the package.
    Symlink { target: String },
}

/// One file to put into a package with [`create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    /// Relative and `/`-separated, without `.`, `..` or empty components.
    pub path: String,
    pub kind: PackageFileKind,
}

impl PackageFile {
    /// A regular, non-executable file.
    pub fn file(path: impl Into<String>, contents: impl Into<Vec<u8>>) -> PackageFile {
        PackageFile {
            path: path.into(),
            kind: PackageFileKind::File {
                contents: contents.into(),
                executable: false,
            },
        }
    }

    /// An executable regular file.
    pub fn executable(path: impl Into<String>, contents: impl Into<Vec<u8>>) -> PackageFile {
        PackageFile {
            path: path.into(),
            kind: PackageFileKind::File {
                contents: contents.into(),
                executable: true,
            },
        }
    }

    /// A symlink.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> PackageFile {
        PackageFile {
            path: path.into(),
            kind: PackageFileKind::Symlink {
                target: target.into(),
            },
        }
    }
}

/// The output of [`create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedTarball {
    /// The outer `.tar`.
    pub bytes: Vec<u8>,
    /// SHA-256 of `VERSION ‖ metadata.config ‖ contents.tar.gz`, also stored as `CHECKSUM`.
    pub inner_checksum: [u8; 32],
    /// SHA-256 of [`CreatedTarball::bytes`].
    pub outer_checksum: [u8; 32],
}

/// SHA-256 of a whole outer tarball: the checksum registries publish and clients verify.
pub fn outer_checksum(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// SHA-256 of `version ‖ metadata_config ‖ contents_tar_gz`: the (deprecated, still
/// published) inner checksum stored in `CHECKSUM`.
pub fn inner_checksum(version: &[u8], metadata_config: &[u8], contents_tar_gz: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(version);
    hasher.update(metadata_config);
    hasher.update(contents_tar_gz);
    hasher.finalize().into()
}

/// Uppercase base16, as `CHECKSUM` stores it and hex_core's `format_checksum/1` prints it.
pub fn format_checksum(checksum: &[u8; 32]) -> String {
    hex::encode_upper(checksum)
}

/// Parses `CHECKSUM`: 64 hexadecimal digits. Lowercase is accepted, as hex_core's
/// `decode_base16` does, although every writer emits uppercase.
pub fn parse_checksum(text: &[u8]) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Member name → (slot index, size limit).
fn member_slot(name: &[u8]) -> Option<(usize, &'static str, u64)> {
    match name {
        b"VERSION" => Some((0, VERSION_MEMBER, MAX_VERSION_SIZE)),
        b"CHECKSUM" => Some((1, CHECKSUM_MEMBER, MAX_CHECKSUM_SIZE)),
        b"metadata.config" => Some((2, METADATA_MEMBER, MAX_METADATA_SIZE)),
        b"contents.tar.gz" => Some((3, CONTENTS_MEMBER, MAX_TARBALL_SIZE)),
        _ => None,
    }
}

fn describe_member_type(entry_type: EntryType) -> String {
    match entry_type {
        EntryType::Regular => "regular file".to_string(),
        EntryType::Directory => "directory".to_string(),
        EntryType::Symlink => "symlink".to_string(),
        EntryType::Link => "hard link".to_string(),
        EntryType::Char => "character device".to_string(),
        EntryType::Block => "block device".to_string(),
        EntryType::Fifo => "fifo".to_string(),
        EntryType::XGlobalHeader => "pax global header".to_string(),
        other => format!("entry of type {:?}", other.as_byte() as char),
    }
}

/// Parses and checks an outer tarball: the size bound, the four members (each a regular file,
/// once, within its own size bound, nothing else), `VERSION` = `3`, and `CHECKSUM` = the
/// computed inner checksum. Member order is not checked, as hex_core does not check it.
///
/// `contents.tar.gz` is not opened here; [`super::list_contents`] and
/// [`super::unpack_contents`] check it.
pub fn read(bytes: &[u8]) -> Result<Tarball, TarballError> {
    let size = bytes.len() as u64;
    if size > MAX_TARBALL_SIZE {
        return Err(TarballError::TooLarge {
            size,
            limit: MAX_TARBALL_SIZE,
        });
    }

    let mut members: [Option<Vec<u8>>; 4] = [None, None, None, None];
    let mut last: Option<String> = None;
    let mut archive = tar::Archive::new(bytes);
    let entries = archive.entries().map_err(|source| TarballError::OuterTar {
        after: None,
        source,
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| TarballError::OuterTar {
            after: last.clone(),
            source,
        })?;
        let name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&name).into_owned();
        let entry_type = entry.header().entry_type();
        let slot = member_slot(&name).filter(|_| entry_type == EntryType::Regular);
        let Some((index, member, limit)) = slot else {
            return Err(TarballError::UnexpectedMember {
                member: shown,
                kind: describe_member_type(entry_type),
            });
        };
        if members[index].is_some() {
            return Err(TarballError::DuplicateMember { member: shown });
        }
        let expected = entry.size();
        if expected > limit {
            return Err(TarballError::MemberTooLarge {
                member,
                size: expected,
                limit,
            });
        }
        // The header's size is checked against the limit above and the data can be no longer
        // than the input, so this allocation is bounded by both.
        let mut data = Vec::with_capacity(expected.min(size) as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|source| TarballError::OuterTar {
                after: Some(shown.clone()),
                source,
            })?;
        if data.len() as u64 != expected {
            return Err(TarballError::TruncatedMember {
                member,
                expected,
                actual: data.len() as u64,
            });
        }
        members[index] = Some(data);
        last = Some(shown);
    }

    let [version, checksum, metadata_config, contents_tar_gz] = members;
    let names = [
        VERSION_MEMBER,
        CHECKSUM_MEMBER,
        METADATA_MEMBER,
        CONTENTS_MEMBER,
    ];
    let present = [
        version.is_some(),
        checksum.is_some(),
        metadata_config.is_some(),
        contents_tar_gz.is_some(),
    ];
    let (Some(version), Some(checksum), Some(metadata_config), Some(contents_tar_gz)) =
        (version, checksum, metadata_config, contents_tar_gz)
    else {
        let missing = names
            .iter()
            .zip(present)
            .filter(|(_, present)| !present)
            .map(|(name, _)| *name)
            .collect();
        return Err(TarballError::MissingMembers { missing });
    };

    if version != VERSION.as_bytes() {
        return Err(TarballError::UnsupportedVersion {
            found: String::from_utf8_lossy(&version).into_owned(),
        });
    }
    let expected = parse_checksum(&checksum).ok_or_else(|| TarballError::MalformedChecksum {
        found: String::from_utf8_lossy(&checksum).into_owned(),
    })?;
    let actual = inner_checksum(&version, &metadata_config, &contents_tar_gz);
    if expected != actual {
        return Err(TarballError::ChecksumMismatch {
            expected: format_checksum(&expected),
            actual: format_checksum(&actual),
        });
    }

    Ok(Tarball {
        version: VERSION.to_string(),
        inner_checksum: actual,
        outer_checksum: outer_checksum(bytes),
        metadata_config,
        contents_tar_gz,
    })
}

/// A ustar header with everything that could vary between machines fixed: hex_core's mtime,
/// uid/gid 0, empty owner names, no device numbers.
fn fixed_header(entry_type: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_ustar();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(ENTRY_MTIME);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Writing into a `Vec` only fails on paths the tar crate cannot encode, which the path
/// checks rule out; still an error, never a panic.
fn build_error(what: &'static str) -> impl Fn(std::io::Error) -> TarballError {
    move |source| TarballError::Build { what, source }
}

/// Builds a version 3 tarball from `metadata_config` (stored verbatim) and `files`.
///
/// The output depends on the inputs only: entries sorted by path bytes, every mtime set to
/// 2000-01-01 (hex_core's choice), uid/gid 0, empty owner names, modes 0o644 / 0o755 for
/// executables / 0o777 for symlinks, no directory entries (as hex_core writes none for
/// non-empty directories), gzip header without file name, with mtime 0 and OS 0 like
/// hex_core's. Paths must be canonical and relative (see [`PackageFile::path`]), may not repeat
/// or nest under a file or symlink, symlinks must stay inside the package, `metadata.config`
/// must fit in [`MAX_METADATA_SIZE`], the uncompressed contents in [`MAX_UNPACKED_SIZE`] and
/// the result in [`MAX_TARBALL_SIZE`].
pub fn create(
    metadata_config: &[u8],
    files: &[PackageFile],
) -> Result<CreatedTarball, TarballError> {
    if metadata_config.len() as u64 > MAX_METADATA_SIZE {
        return Err(TarballError::MemberTooLarge {
            member: METADATA_MEMBER,
            size: metadata_config.len() as u64,
            limit: MAX_METADATA_SIZE,
        });
    }

    let mut sorted: Vec<&PackageFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));

    let mut tree = Tree::new();
    let mut total = 0u64;
    for file in &sorted {
        let invalid = |problem| TarballError::InvalidPackageFile {
            path: file.path.clone(),
            problem,
        };
        let components = package_path(&file.path).map_err(invalid)?;
        let kind = match &file.kind {
            PackageFileKind::File {
                contents,
                executable,
            } => {
                total = total.saturating_add(contents.len() as u64);
                NodeKind::File {
                    executable: *executable,
                    size: contents.len() as u64,
                }
            }
            PackageFileKind::Symlink { target } => NodeKind::Symlink {
                target: symlink_target(target.as_bytes(), true).map_err(invalid)?,
            },
        };
        if total > MAX_UNPACKED_SIZE {
            return Err(TarballError::ContentsTooLarge {
                limit: MAX_UNPACKED_SIZE,
                what: "package file contents",
            });
        }
        match tree.insert(&components, kind) {
            Ok(super::tree::Inserted::New) => {}
            Ok(_) => return Err(invalid(EntryProblem::Duplicate)),
            Err(problem) => return Err(invalid(problem)),
        }
    }
    tree.check_all_symlinks()
        .map_err(|(path, problem)| TarballError::InvalidPackageFile { path, problem })?;

    let mut inner = tar::Builder::new(Vec::new());
    for file in &sorted {
        match &file.kind {
            PackageFileKind::File {
                contents,
                executable,
            } => {
                let mode = if *executable { 0o755 } else { 0o644 };
                let mut header = fixed_header(EntryType::Regular, mode, contents.len() as u64);
                inner
                    .append_data(&mut header, &file.path, contents.as_slice())
                    .map_err(build_error("contents.tar"))?;
            }
            PackageFileKind::Symlink { target } => {
                let mut header = fixed_header(EntryType::Symlink, 0o777, 0);
                inner
                    .append_link(&mut header, &file.path, target)
                    .map_err(build_error("contents.tar"))?;
            }
        }
    }
    let inner = inner.into_inner().map_err(build_error("contents.tar"))?;
    if inner.len() as u64 > MAX_UNPACKED_SIZE {
        return Err(TarballError::ContentsTooLarge {
            limit: MAX_UNPACKED_SIZE,
            what: "uncompressed contents tar",
        });
    }

    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(0)
        .write(Vec::new(), Compression::default());
    gz.write_all(&inner).map_err(build_error(CONTENTS_MEMBER))?;
    let contents_tar_gz = gz.finish().map_err(build_error(CONTENTS_MEMBER))?;

    let inner_sum = inner_checksum(VERSION.as_bytes(), metadata_config, &contents_tar_gz);
    let checksum_text = format_checksum(&inner_sum);
    let members: [(&str, &[u8]); 4] = [
        (VERSION_MEMBER, VERSION.as_bytes()),
        (CHECKSUM_MEMBER, checksum_text.as_bytes()),
        (METADATA_MEMBER, metadata_config),
        (CONTENTS_MEMBER, &contents_tar_gz),
    ];
    let mut outer = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut header = fixed_header(EntryType::Regular, 0o644, data.len() as u64);
        outer
            .append_data(&mut header, name, data)
            .map_err(build_error("the outer tar"))?;
    }
    let bytes = outer.into_inner().map_err(build_error("the outer tar"))?;
    if bytes.len() as u64 > MAX_TARBALL_SIZE {
        return Err(TarballError::TooLarge {
            size: bytes.len() as u64,
            limit: MAX_TARBALL_SIZE,
        });
    }
    let outer_sum = outer_checksum(&bytes);
    Ok(CreatedTarball {
        bytes,
        inner_checksum: inner_sum,
        outer_checksum: outer_sum,
    })
}
