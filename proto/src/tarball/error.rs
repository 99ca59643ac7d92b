//! Errors of [`crate::tarball`].

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a tarball could not be read, created, listed or unpacked.
///
/// Every message names the member (outer tar), entry (`contents.tar.gz`) or package file
/// (`create`) concerned and the check that failed, so a refused upload or mirror sync can be
/// diagnosed from the log line alone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TarballError {
    /// The outer `.tar` is bigger than [`super::MAX_TARBALL_SIZE`].
    #[error("tarball is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },

    /// The outer `.tar` could not be parsed as a tar archive.
    #[error("outer tar is malformed ({}): {source}", after_member(.after))]
    OuterTar {
        /// The last member read successfully, if any.
        after: Option<String>,
        #[source]
        source: io::Error,
    },

    /// The outer tar holds a member other than the four of version 3, or one of them is not a
    /// regular file.
    #[error(
        "outer tar member `{member}` ({kind}) is not allowed: a version 3 tarball holds exactly \
         the regular files VERSION, CHECKSUM, metadata.config and contents.tar.gz"
    )]
    UnexpectedMember { member: String, kind: String },

    /// One of the four members appears twice; tar readers disagree on which copy wins.
    #[error("outer tar member `{member}` appears more than once")]
    DuplicateMember { member: String },

    /// Some of the four members are absent.
    #[error("outer tar lacks member(s) {}", .missing.join(", "))]
    MissingMembers { missing: Vec<&'static str> },

    /// A member is bigger than hex_core allows for it.
    #[error("member `{member}` is {size} bytes, over its {limit}-byte limit")]
    MemberTooLarge {
        member: &'static str,
        size: u64,
        limit: u64,
    },

    /// A member's header claims more bytes than the archive holds.
    #[error("member `{member}` is truncated: its header says {expected} bytes, the archive holds {actual}")]
    TruncatedMember {
        member: &'static str,
        expected: u64,
        actual: u64,
    },

    /// `VERSION` is not `3`.
    #[error("member `VERSION` holds {found:?}; only tarball version \"3\" is supported")]
    UnsupportedVersion { found: String },

    /// `CHECKSUM` is not 64 hexadecimal digits.
    #[error("member `CHECKSUM` is not 64 hexadecimal digits: {found:?}")]
    MalformedChecksum { found: String },

    /// `CHECKSUM` does not match the SHA-256 of `VERSION ‖ metadata.config ‖ contents.tar.gz`.
    #[error(
        "member `CHECKSUM` says {expected} but VERSION ‖ metadata.config ‖ contents.tar.gz \
         hash to {actual}"
    )]
    ChecksumMismatch { expected: String, actual: String },

    /// The package contents are bigger than [`super::MAX_UNPACKED_SIZE`].
    #[error("package contents exceed the {limit}-byte unpacked limit ({what})")]
    ContentsTooLarge { limit: u64, what: &'static str },

    /// `contents.tar.gz` is not a well-formed gzipped tar.
    #[error("contents.tar.gz is malformed ({}): {source}", after_entry(.after))]
    ContentsTar {
        /// The entry being read when the error occurred, or the last one read.
        after: Option<String>,
        #[source]
        source: io::Error,
    },

    /// An entry of `contents.tar.gz` failed a safety check.
    #[error("contents.tar.gz entry `{entry}`: {problem}")]
    UnsafeEntry {
        entry: String,
        problem: EntryProblem,
    },

    /// A file handed to [`super::create`] failed a check.
    #[error("package file `{path}`: {problem}")]
    InvalidPackageFile { path: String, problem: EntryProblem },

    /// The destination of [`super::unpack_contents`] cannot be used.
    #[error("cannot unpack into {}: {problem}", .path.display())]
    Destination {
        path: PathBuf,
        problem: &'static str,
    },

    /// The tar writer failed while [`super::create`] assembled `what`.
    #[error("could not write {what}: {source}")]
    Build {
        what: &'static str,
        #[source]
        source: io::Error,
    },

    /// A filesystem operation failed while unpacking.
    #[error("could not {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn after_member(after: &Option<String>) -> String {
    match after {
        Some(member) => format!("after member `{member}`"),
        None => "before any member was read".to_string(),
    }
}

fn after_entry(after: &Option<String>) -> String {
    match after {
        Some(entry) => format!("at or after entry `{entry}`"),
        None => "before any entry was read".to_string(),
    }
}

/// What is wrong with one path, link or entry; carried by [`TarballError::UnsafeEntry`] and
/// [`TarballError::InvalidPackageFile`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryProblem {
    /// The path is empty (or only `.` and `/`).
    EmptyPath,
    /// The path bytes are not UTF-8.
    NotUtf8,
    /// The path starts with `/`.
    AbsolutePath,
    /// The path starts with a Windows drive (`C:`), which makes it absolute there.
    DrivePath,
    /// The path has a `..` component.
    ParentComponent,
    /// The path has an empty component (`a//b`, trailing `/`).
    EmptyComponent,
    /// The path has a `.` component.
    CurrentComponent,
    /// The path has a character tar or some platform cannot carry: NUL or `\`.
    ForbiddenCharacter(char),
    /// The path or one of its components is longer than the platform allows.
    TooLong { limit: usize },
    /// A parent of the path is a symlink: writing there would follow it.
    ThroughSymlink { symlink: String },
    /// A parent of the path is a regular file.
    ParentNotDirectory { parent: String },
    /// The archive creates more files, directories and links than allowed.
    TooManyEntries { limit: usize },
    /// The path appears more than once among the files given to [`super::create`].
    Duplicate,
    /// The entry would replace an earlier one of a kind it may not replace (anything over a
    /// symlink, a symlink over anything, a file over a directory or the reverse).
    Conflict {
        existing: &'static str,
        new: &'static str,
    },
    /// The entry type is not a regular file, directory, symlink or hard link.
    UnsupportedType { kind: String },
    /// A symlink or hard link has an empty target.
    EmptyLinkTarget,
    /// A symlink or hard link target is absolute.
    AbsoluteLinkTarget { target: String },
    /// A symlink target resolves above the package root.
    LinkEscapes { target: String },
    /// A symlink target walks through another symlink before its last component, where `..`
    /// or further components would be resolved relative to wherever that link points.
    LinkThroughSymlink { target: String, symlink: String },
    /// A symlink target has a NUL, a `\` or is too long.
    BadLinkTarget { target: String, why: &'static str },
    /// A hard link does not point at a regular file created earlier in the archive.
    HardLinkTarget { target: String, why: &'static str },
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryProblem::EmptyPath => write!(f, "path is empty"),
            EntryProblem::NotUtf8 => write!(f, "path is not valid UTF-8"),
            EntryProblem::AbsolutePath => write!(f, "path is absolute"),
            EntryProblem::DrivePath => write!(f, "path starts with a drive letter"),
            EntryProblem::ParentComponent => write!(f, "path has a `..` component"),
            EntryProblem::EmptyComponent => write!(f, "path has an empty component"),
            EntryProblem::CurrentComponent => write!(f, "path has a `.` component"),
            EntryProblem::ForbiddenCharacter(c) => write!(f, "path contains the character {c:?}"),
            EntryProblem::TooLong { limit } => {
                write!(
                    f,
                    "path or one of its components is longer than {limit} bytes"
                )
            }
            EntryProblem::ThroughSymlink { symlink } => {
                write!(f, "path passes through symlink `{symlink}` created earlier")
            }
            EntryProblem::ParentNotDirectory { parent } => {
                write!(f, "parent `{parent}` is a regular file, not a directory")
            }
            EntryProblem::TooManyEntries { limit } => write!(
                f,
                "the archive creates more than {limit} files, directories and links"
            ),
            EntryProblem::Duplicate => write!(f, "path appears more than once"),
            EntryProblem::Conflict { existing, new } => {
                write!(
                    f,
                    "a {new} would replace the {existing} already at this path"
                )
            }
            EntryProblem::UnsupportedType { kind } => write!(
                f,
                "entry is a {kind}; only regular files, directories, symlinks and hard links \
                 are allowed"
            ),
            EntryProblem::EmptyLinkTarget => write!(f, "link target is empty"),
            EntryProblem::AbsoluteLinkTarget { target } => {
                write!(f, "link target `{target}` is absolute")
            }
            EntryProblem::LinkEscapes { target } => {
                write!(
                    f,
                    "symlink target `{target}` resolves outside the package root"
                )
            }
            EntryProblem::LinkThroughSymlink { target, symlink } => write!(
                f,
                "symlink target `{target}` passes through symlink `{symlink}` before its last \
                 component"
            ),
            EntryProblem::BadLinkTarget { target, why } => {
                write!(f, "symlink target `{target}` {why}")
            }
            EntryProblem::HardLinkTarget { target, why } => {
                write!(f, "hard link target `{target}` {why}")
            }
        }
    }
}
