//! Static Hex repositories: a directory of files any web server can serve as a Hex repo.
//!
//! Layout (hexpm/specifications endpoints.md): `names`, `versions`, `packages/NAME`,
//! `tarballs/NAME-VERSION.tar`, and `public_key` (SPKI PEM) for
//! `mix hex.repo add --fetch-public-key`.

mod build;
mod lock;
mod verify;

use std::io::Write;
use std::path::{Path, PathBuf};

use precomp_proto::registry::KeyError;

use crate::source::SourceError;

pub use build::{build, BuiltRepo};
pub use lock::lock_for;
pub use verify::{verify, VerifyFailure, VerifyReport};

/// File names inside a repository.
pub mod layout {
    pub const NAMES: &str = "names";
    pub const VERSIONS: &str = "versions";
    pub const PUBLIC_KEY: &str = "public_key";
    pub const PACKAGES_DIR: &str = "packages";
    pub const TARBALLS_DIR: &str = "tarballs";

    pub fn package(name: &str) -> String {
        format!("{PACKAGES_DIR}/{name}")
    }

    /// `+` build metadata stays literal, as Hex clients request it.
    pub fn tarball(name: &str, version: &str) -> String {
        format!("{TARBALLS_DIR}/{name}-{version}.tar")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StaticRepoError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{origin}: {message}")]
    Package { origin: PathBuf, message: String },
    #[error("{release} appears twice: in {first} and in {second}")]
    Duplicate {
        release: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{dir}: no package sources (mix.exs, src/*.app.src, ebin/*.app) or .tar files found")]
    Empty { dir: PathBuf },
    #[error("{out} exists and is not a Hex repository; refusing to replace it (remove it or choose another --out)")]
    OutNotARepo { out: PathBuf },
    #[error("repository name {name:?} must be letters, digits, `_` or `-`")]
    RepoName { name: String },
    #[error("signing key: {0}")]
    Key(#[from] KeyError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it into place, so
/// a reader sees the old file or the whole new one, never a partial one.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StaticRepoError> {
    let io = |source| StaticRepoError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}
