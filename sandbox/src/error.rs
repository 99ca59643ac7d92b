//! The errors of this crate. Each says what went wrong and what to do next.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bubblewrap (bwrap) is not installed: install it with `apt-get install bubblewrap`")]
    BwrapMissing,

    #[error(
        "bwrap could not set up the sandbox: {message}. Check that unprivileged user namespaces \
         are enabled (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0) \
         and that every path handed to the sandbox exists. Inside a container, the runtime must \
         also let bwrap create namespaces and mount a /proc (podman: --security-opt \
         seccomp=unconfined --security-opt unmask=ALL; see docs/operations.md \"Container\")"
    )]
    Setup { message: String },

    #[error(
        "could not run {command:?} in the sandbox: {message}. The toolchain must provide it \
         (PATH inside is /usr/bin:/bin:/usr/sbin:/sbin, with /usr/local/sbin:/usr/local/bin \
         first on images)"
    )]
    Exec { command: String, message: String },

    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),

    #[error(
        "{path} cannot be {access} by the sandbox user {uid}:{gid} ({reason}): bwrap runs as that \
         user, so every parent directory must be searchable by it (chmod o+x) and the path itself \
         {access}; keep signing keys in a private subdirectory instead"
    )]
    NotAccessible {
        path: PathBuf,
        access: &'static str,
        uid: u32,
        gid: u32,
        reason: String,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("could not start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },

    #[error("{context}: {source}")]
    Sys {
        context: String,
        source: std::io::Error,
    },

    #[error("debootstrap is not installed: install it with `apt-get install debootstrap`")]
    DebootstrapMissing,

    #[error(
        "the Debian archive keyring {path} is missing, so the suite's signatures cannot be checked: \
         install it with `apt-get install debian-archive-keyring`"
    )]
    KeyringMissing { path: PathBuf },

    #[error(
        "building a toolchain image needs root (debootstrap creates device nodes and dpkg changes \
         owners): run `precomp toolchain build` as root, or use the `host` toolchain"
    )]
    NeedsRoot,

    #[error("unsupported suite {0:?}: the supported suites are bookworm and trixie")]
    UnsupportedSuite(String),

    #[error(
        "could not fetch {url}: {reason}. Check the network and the mirror (--mirror); an image \
         already built for this suite can still be used by its id"
    )]
    Fetch { url: String, reason: String },

    #[error("{step} failed ({status}); last output:\n{output}")]
    StepFailed {
        step: String,
        status: String,
        output: String,
    },

    #[error("{what}: could not read {field} from {output:?}")]
    Detect {
        what: String,
        field: &'static str,
        output: String,
    },

    #[error(
        "no toolchain matches {id:?}; known: {known}. Run `precomp toolchain list`, or build one \
         with `precomp toolchain build --suite bookworm|trixie`"
    )]
    UnknownToolchain { id: String, known: String },

    #[error("toolchain id {id:?} is ambiguous, it matches {matches}: give more of the digest")]
    AmbiguousToolchain { id: String, matches: String },

    #[error(
        "{path}: unreadable toolchain record ({reason}); remove that directory and build again"
    )]
    BadRecord { path: PathBuf, reason: String },

    #[error("dpkg-query failed ({0}): the host toolchain needs a Debian-based host with dpkg")]
    Dpkg(String),

    #[error(transparent)]
    Import(#[from] crate::toolchain::ImportError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sys(context: impl Into<String>) -> Self {
        Error::Sys {
            context: context.into(),
            source: std::io::Error::last_os_error(),
        }
    }
}
