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

pub use build::{build, build_with, BuildOptions, BuiltRepo};
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
    #[error("{dir}: no package sources (mix.exs, src/*.app.src, an erlang.mk Makefile) or .tar files found")]
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

/// Mode of every file a repository holds: all of it is public and meant to be served, by a
/// web server whose workers are usually another user than the one who built it.
pub const FILE_MODE: u32 = 0o644;
/// Mode of every directory a repository holds.
pub const DIR_MODE: u32 = 0o755;

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it into place, so
/// a reader sees the old file or the whole new one, never a partial one. The file is
/// [`FILE_MODE`] and its directory [`DIR_MODE`], whatever the umask (temporary files start
/// as 0600).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StaticRepoError> {
    let io = |source| StaticRepoError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    set_mode(dir, DIR_MODE)?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    set_mode(file.path(), FILE_MODE)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Sets the permission bits of `path` to `mode`.
pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), StaticRepoError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(
            |source| StaticRepoError::Io {
                path: path.to_path_buf(),
                source,
            },
        )?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}
