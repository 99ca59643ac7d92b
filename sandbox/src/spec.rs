//! What runs in the sandbox: the toolchain root, the mounts, the working path, the exact
//! environment, the limits and the command.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// The fixed working path of a build, and where the output directory is mounted by default.
pub const BUILD_DIR: &str = "/build";
/// `HOME` inside the sandbox: a directory on the sandbox's private `/tmp`.
pub const HOME_DIR: &str = "/tmp/home";
/// `PATH` inside the sandbox on the host toolchain. `/usr/local` is left out on purpose:
/// nothing of the host's local installs may leak into a build.
pub const PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin";
/// `PATH` inside the sandbox on an image: Docker's default, since container images (the
/// official erlang and elixir ones among them) install OTP and Elixir under `/usr/local`. An
/// image's `/usr/local` is the image's, not the host's; debootstrap images leave it empty.
pub const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The sandbox's hostname (its own UTS namespace).
pub const HOSTNAME: &str = "precomp";
/// `SOURCE_DATE_EPOCH` unless a build says otherwise: 1980-01-01T00:00:00Z, the earliest time
/// zip and friends can represent.
pub const DEFAULT_SOURCE_DATE_EPOCH: u64 = 315_532_800;

/// Sandbox paths that belong to the sandbox itself or the toolchain: no mount may be placed on
/// or under them.
const RESERVED: &[&str] = &[
    "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/dev",
    "/sys", "/tmp", "/var", "/run",
];

/// The root file system a sandbox sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Root {
    /// The host's own system directories (`/usr`, `/etc` and the merged-/usr links), read-only.
    Host,
    /// A toolchain image: a Debian root whose `/usr` and `/etc` are bound read-only.
    Image(PathBuf),
}

impl Root {
    /// The directory the system directories come from.
    pub fn dir(&self) -> &Path {
        match self {
            Root::Host => Path::new("/"),
            Root::Image(dir) => dir,
        }
    }
}

/// A host path mounted at a sandbox path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub host: PathBuf,
    pub dest: PathBuf,
}

impl Mount {
    pub fn new(host: impl Into<PathBuf>, dest: impl Into<PathBuf>) -> Self {
        Mount {
            host: host.into(),
            dest: dest.into(),
        }
    }
}

/// Resource limits. Memory and processes use cgroup v2 when the machine offers a writable,
/// delegated cgroup with the `memory` and `pids` controllers, rlimits otherwise (see
/// `docs/sandbox.md` for what each enforcement does and does not bound).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time; past it every process of the sandbox is killed.
    pub wall_time: Duration,
    /// Memory: cgroup `memory.max` for the whole sandbox, or `RLIMIT_DATA` per process.
    pub memory_bytes: u64,
    /// Tasks (processes and threads): cgroup `pids.max`, or `RLIMIT_NPROC` for the sandbox uid.
    pub processes: u64,
    /// The largest single file any process may write (`RLIMIT_FSIZE`).
    pub file_size_bytes: u64,
    /// Total size of the regular files in the output directory; checked while the command
    /// runs (the sandbox is killed when it is exceeded) and after it ends.
    pub output_bytes: u64,
    /// Size of the private tmpfs at `/tmp` (memory-backed).
    pub tmp_bytes: u64,
    /// Open files per process (`RLIMIT_NOFILE`), fixed so builds do not depend on the host's.
    pub open_files: u64,
    /// Bytes of stdout and of stderr kept when they are captured (the first and last halves);
    /// the rest is counted and dropped.
    pub captured_bytes: usize,
}

impl Limits {
    /// The build policy's limits: generous enough for any sane Hex package, small enough to
    /// keep a hostile one from taking the machine down.
    pub fn build() -> Self {
        Limits {
            wall_time: Duration::from_secs(3600),
            memory_bytes: 4 << 30,
            processes: 1024,
            file_size_bytes: 1 << 30,
            output_bytes: 2 << 30,
            tmp_bytes: 1 << 30,
            open_files: 4096,
            captured_bytes: 1 << 20,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::build()
    }
}

/// Where the command's standard streams go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdio {
    /// stdin is `/dev/null`; stdout and stderr are captured, bounded by
    /// [`Limits::captured_bytes`].
    Capture,
    /// All three are the caller's (interactive debugging).
    Inherit,
}

/// One command in the sandbox.
#[derive(Clone, Debug)]
pub struct Spec {
    pub root: Root,
    /// Read-only mounts (package sources, dependencies). The sandbox uid must be able to
    /// read them and search every parent directory ([`crate::Sandbox::run`] checks).
    pub sources: Vec<Mount>,
    /// The one writable directory, on the host and in the sandbox. When precomp runs as
    /// root, its tree is given (`chown`) to the sandbox uid before the run.
    pub output: Mount,
    /// The working directory inside the sandbox.
    pub workdir: PathBuf,
    /// The exact environment: nothing else is inherited.
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    pub stdio: Stdio,
    pub command: Vec<OsString>,
}

impl Spec {
    /// The build policy: `output_dir` mounted writable at [`BUILD_DIR`], which is also the
    /// working directory; [`build_env`] with the default `SOURCE_DATE_EPOCH` and deterministic
    /// compilation; [`Limits::build`]; output captured.
    pub fn build<I, S>(root: Root, output_dir: impl Into<PathBuf>, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut env = build_env(DEFAULT_SOURCE_DATE_EPOCH, true);
        if let Root::Image(_) = root {
            env.insert("PATH".into(), IMAGE_PATH.into());
        }
        Spec {
            root,
            sources: Vec::new(),
            output: Mount::new(output_dir, BUILD_DIR),
            workdir: PathBuf::from(BUILD_DIR),
            env,
            limits: Limits::build(),
            stdio: Stdio::Capture,
            command: command.into_iter().map(Into::into).collect(),
        }
    }

    /// Adds a read-only mount.
    pub fn source(mut self, host: impl Into<PathBuf>, dest: impl Into<PathBuf>) -> Self {
        self.sources.push(Mount::new(host, dest));
        self
    }

    /// Sets (or replaces) one environment variable.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Checks the spec; returns its mounts in mounting order (parents before children).
    pub(crate) fn validate(&self) -> Result<Vec<(&Mount, bool)>> {
        if self.command.is_empty() {
            return Err(Error::InvalidSpec("the command is empty".into()));
        }
        if let Root::Image(dir) = &self.root {
            if !dir.join("usr").is_dir() {
                return Err(Error::InvalidSpec(format!(
                    "toolchain root {} has no usr/ directory",
                    dir.display()
                )));
            }
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(Error::InvalidSpec(format!(
                    "environment variable name {name:?}"
                )));
            }
            if value.contains('\0') {
                return Err(Error::InvalidSpec(format!(
                    "environment variable {name} contains NUL"
                )));
            }
        }
        check_dest(&self.output.dest)?;
        if !self.output.host.is_dir() {
            return Err(Error::InvalidSpec(format!(
                "output directory {} does not exist or is not a directory",
                self.output.host.display()
            )));
        }
        let mut mounts = vec![(&self.output, true)];
        for source in &self.sources {
            check_dest(&source.dest)?;
            if !source.host.exists() {
                return Err(Error::InvalidSpec(format!(
                    "source {} does not exist",
                    source.host.display()
                )));
            }
            if source.dest == self.output.dest {
                return Err(Error::InvalidSpec(format!(
                    "two mounts at {}",
                    source.dest.display()
                )));
            }
            if source.dest.starts_with(&self.output.dest) {
                // A read-only mount inside the output: fine, mounted after it.
            } else if self.output.dest.starts_with(&source.dest) {
                return Err(Error::InvalidSpec(format!(
                    "the output {} cannot be inside the read-only mount {}",
                    self.output.dest.display(),
                    source.dest.display()
                )));
            }
            mounts.push((source, false));
        }
        for (i, (a, _)) in mounts.iter().enumerate() {
            for (b, _) in &mounts[i + 1..] {
                if a.dest == b.dest {
                    return Err(Error::InvalidSpec(format!(
                        "two mounts at {}",
                        a.dest.display()
                    )));
                }
            }
        }
        // Parents first; the output stays before the sources it contains.
        mounts.sort_by_key(|(mount, writable)| (mount.dest.components().count(), !writable));
        check_normal(&self.workdir, "working directory")?;
        let inside_mount = mounts
            .iter()
            .any(|(m, _)| self.workdir.starts_with(&m.dest));
        if !inside_mount && !self.workdir.starts_with("/tmp") {
            return Err(Error::InvalidSpec(format!(
                "working directory {} is not inside a mount or /tmp",
                self.workdir.display()
            )));
        }
        Ok(mounts)
    }
}

/// The build environment: exactly these variables, nothing inherited. `ERL_COMPILER_OPTIONS`
/// is `deterministic` when asked (beams without absolute paths in `CInf`; see
/// mix-mechanics.md §4).
pub fn build_env(source_date_epoch: u64, deterministic: bool) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".into(), PATH.into());
    env.insert("HOME".into(), HOME_DIR.into());
    env.insert("LANG".into(), "C.UTF-8".into());
    env.insert("TZ".into(), "UTC".into());
    env.insert("SOURCE_DATE_EPOCH".into(), source_date_epoch.to_string());
    if deterministic {
        env.insert("ERL_COMPILER_OPTIONS".into(), "deterministic".into());
    }
    env
}

fn check_normal(path: &Path, what: &str) -> Result<()> {
    let normal = path.is_absolute()
        && path
            .components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
        && path.components().count() > 1;
    if normal {
        Ok(())
    } else {
        Err(Error::InvalidSpec(format!(
            "{what} {} must be an absolute path without `.` or `..`, and not /",
            path.display()
        )))
    }
}

fn check_dest(dest: &Path) -> Result<()> {
    check_normal(dest, "mount point")?;
    if let Some(reserved) = RESERVED.iter().find(|r| dest.starts_with(r)) {
        return Err(Error::InvalidSpec(format!(
            "mount point {} is on the sandbox's own {reserved}",
            dest.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(out: &Path) -> Spec {
        Spec::build(Root::Host, out, ["true"])
    }

    #[test]
    fn build_policy_environment_is_exact() {
        let env = build_env(42, true);
        let names: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "ERL_COMPILER_OPTIONS",
                "HOME",
                "LANG",
                "PATH",
                "SOURCE_DATE_EPOCH",
                "TZ"
            ]
        );
        assert_eq!(env["SOURCE_DATE_EPOCH"], "42");
        assert!(!build_env(42, false).contains_key("ERL_COMPILER_OPTIONS"));
    }

    #[test]
    fn mounts_are_validated_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let ok = spec(out)
            .source(out, "/build/deps/b/c")
            .source(out, "/build/deps/a")
            .source(out, "/src");
        let order: Vec<String> = ok
            .validate()
            .unwrap()
            .iter()
            .map(|(m, _)| m.dest.display().to_string())
            .collect();
        assert_eq!(
            order,
            ["/build", "/src", "/build/deps/a", "/build/deps/b/c"]
        );

        for (dest, why) in [
            ("/usr/lib/x", "on the sandbox's own /usr"),
            ("/tmp", "on the sandbox's own /tmp"),
            ("relative", "absolute"),
            ("/a/../b", "absolute"),
            ("/", "absolute"),
            ("/build", "two mounts"),
        ] {
            let error = spec(out).source(out, dest).validate().unwrap_err();
            assert!(error.to_string().contains(why), "{dest}: {error}");
        }
        let mut nested = spec(out).source(out, "/src");
        nested.output.dest = "/src/out".into();
        assert!(nested
            .validate()
            .unwrap_err()
            .to_string()
            .contains("cannot be inside"));
        let mut cwd = spec(out);
        cwd.workdir = "/elsewhere".into();
        assert!(cwd.validate().is_err());
        let missing = spec(out).source(out.join("missing"), "/src");
        assert!(missing.validate().is_err());
        assert!(spec(out).env("A=B", "x").validate().is_err());
        let mut empty = spec(out);
        empty.command.clear();
        assert!(empty.validate().is_err());
    }
}
