//! Hex package tarballs, version 3: reading, deterministic creation, safe extraction.
//!
//! A package is published as `NAME-VERSION.tar`, an uncompressed tar holding four regular
//! files (hexpm/specifications `package_tarball.md`):
//!
//! - `VERSION`: the ASCII text `3`;
//! - `CHECKSUM`: the *inner checksum*, 64 uppercase hex digits of
//!   SHA-256(`VERSION` ‖ `metadata.config` ‖ `contents.tar.gz`), deprecated but still
//!   published in the registry as `Release.inner_checksum`;
//! - `metadata.config`: Erlang term text (see [`crate::metadata`]);
//! - `contents.tar.gz`: the package files, a gzipped tar.
//!
//! The *outer checksum*, SHA-256 of the whole `.tar`, is what the registry's
//! `Release.outer_checksum` carries and what clients verify downloads against.
//!
//! The reference implementation is hex_core's `hex_tarball.erl` (and its fork of OTP's
//! `erl_tar`); the limits below are hex_core's current defaults. What hex_core does and what
//! this module does differently is spelt out on [`read`] and [`unpack_contents`]: in short,
//! the same members, version and checksum rules, but duplicates, non-regular members and
//! risky links are refused rather than resolved by whichever copy or link comes last.
//!
//! Everything here takes byte slices; only [`unpack_contents`] touches the filesystem.

mod contents;
mod error;
mod outer;
mod tree;

pub use contents::{list_contents, unpack_contents, ContentEntry, EntryKind, UnpackSummary};
pub use error::{EntryProblem, TarballError};
pub use outer::{
    create, format_checksum, inner_checksum, outer_checksum, parse_checksum, read, CreatedTarball,
    PackageFile, PackageFileKind, Tarball,
};

/// Largest outer tarball accepted or created: hex_core's `tarball_max_size` default (16 MiB
/// since hex_core 0.10.1; rebar3 3.19 still vendors hex_core 0.7.1 with 8 MiB).
pub const MAX_TARBALL_SIZE: u64 = 16 * 1024 * 1024;

/// Largest decompressed `contents.tar.gz` accepted or created, counted as bytes of the tar
/// stream (headers and padding included) like hex_core's `tarball_max_uncompressed_size`
/// default (128 MiB since hex_core 0.10.1; 64 MiB in rebar3 3.19's hex_core 0.7.1). The same
/// bound applies to the sum of entry sizes and to the bytes [`unpack_contents`] writes.
pub const MAX_UNPACKED_SIZE: u64 = 128 * 1024 * 1024;

/// Largest `VERSION` member: hex_core's `MAX_VERSION_SIZE` (since 0.13.0).
pub const MAX_VERSION_SIZE: u64 = 32;

/// Largest `CHECKSUM` member: hex_core's `MAX_CHECKSUM_SIZE` (since 0.13.0).
pub const MAX_CHECKSUM_SIZE: u64 = 128;

/// Largest `metadata.config` member: hex_core's `MAX_METADATA_SIZE` (1 MiB since 0.16.0,
/// 128 KiB in 0.13–0.15), checked on create and on read.
pub const MAX_METADATA_SIZE: u64 = 1024 * 1024;

/// The only tarball version read or written. hex_core refuses every other `VERSION` too.
pub const VERSION: &str = "3";

/// mtime of every entry [`create`] writes: 2000-01-01T00:00:00Z, as hex_core writes.
pub const ENTRY_MTIME: u64 = 946_684_800;

/// Member names of the outer tar.
pub const VERSION_MEMBER: &str = "VERSION";
pub const CHECKSUM_MEMBER: &str = "CHECKSUM";
pub const METADATA_MEMBER: &str = "metadata.config";
pub const CONTENTS_MEMBER: &str = "contents.tar.gz";
