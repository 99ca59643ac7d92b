//! Errors that stop a fetch as a whole. A dependency that cannot be used is not an error: it
//! is a miss, left to Mix, with its reason (see [`crate::fetch::MissKind`]).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{} has no mix.exs: run precomp fetch in a Mix project (or pass --project DIR)", dir.display())]
    NotAMixProject { dir: PathBuf },
    #[error("reading the Mix project in {}: {reason}", dir.display())]
    Probe { dir: PathBuf, reason: String },
    #[error("{} does not exist: run `mix deps.get` first", path.display())]
    NoLock { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Lock {
        path: PathBuf,
        source: precomp_proto::lock::LockError,
    },
    #[error("cannot tell the native target from Erlang's system architecture {value:?}; pass --target ARCH-LIBC (e.g. x86_64-linux-gnu)")]
    Target { value: String },
    #[error("mirror {url:?}: {message}")]
    MirrorUrl { url: String, message: String },
    #[error("trust policy: {0}")]
    Policy(String),
    #[error("{}: {message}", path.display())]
    KeyFile { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Settings { path: PathBuf, message: String },
    #[error("installing: {0}")]
    Install(#[from] crate::install::InstallError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ClientError {
    /// `map_err` helper for I/O on `what` (a path or a description).
    pub fn io<W: AsRef<Path>>(what: W) -> impl FnOnce(std::io::Error) -> ClientError {
        let what = what.as_ref().display().to_string();
        move |source| ClientError::Io { what, source }
    }
}
