//! What can go wrong in a build, with what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Lock(#[from] precomp_proto::buildkey::BuildKeyError),
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
    // Not a `#[source]`: the message already holds the HTTP error (which names the URL), and
    // an error chain printed with `{:#}` would say it twice.
    #[error("fetching a package source: {0}")]
    Http(precomp_http::Error),
    #[error(
        "{package} {version}: the mirror served a tarball with SHA-256 {actual}, but mix.lock \
         says {expected}; refusing it (a tampered mirror or a wrong lock)"
    )]
    ChecksumMismatch {
        package: String,
        version: String,
        expected: String,
        actual: String,
    },
    #[error("{package} {version}: {source}")]
    Tarball {
        package: String,
        version: String,
        source: Box<precomp_proto::tarball::TarballError>,
    },
    #[error("sandbox: {0}")]
    Sandbox(#[from] precomp_sandbox::Error),
    #[error("packing the artifact of {app}: {source}")]
    Artifact {
        app: String,
        source: precomp_proto::artifact::ArtifactError,
    },
    #[error("{app}: the build produced no {path}; is the app name in mix.lock right?")]
    NoAppFile { app: String, path: String },
    #[error("{app}: {path}: {message}")]
    AppFile {
        app: String,
        path: String,
        message: String,
    },
    #[error("manifest: {0}")]
    Manifest(#[from] precomp_proto::manifest::ManifestError),
    #[error("the build store at {path} is damaged: {message}")]
    Store { path: PathBuf, message: String },
    #[error("reading the build config: {0}")]
    Config(String),
    #[error("{0}")]
    Invalid(String),
    /// The run's [`Cancel`](crate::Cancel) handle was cancelled with this reason.
    #[error("the build was cancelled: {reason}")]
    Cancelled { reason: String },
}

pub type Result<T, E = BuildError> = std::result::Result<T, E>;

/// `map_err` helper for I/O on a path.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl From<precomp_http::Error> for BuildError {
    fn from(error: precomp_http::Error) -> BuildError {
        BuildError::Http(error)
    }
}
