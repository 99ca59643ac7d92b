//! cgroup v2 limits for one sandbox: `memory.max`, `memory.swap.max`, `pids.max`, and
//! `cgroup.kill` to end the whole tree.
//!
//! Used only when `/sys/fs/cgroup` is a cgroup2 mount and a parent cgroup is delegated to us
//! with the `memory` and `pids` controllers enabled for its children (`cgroup.subtree_control`)
//! and writable. The parent is `$PRECOMP_CGROUP_PARENT` when set, else the cgroup this process
//! is in. Otherwise the sandbox falls back to rlimits and says why.

use std::ffi::CString;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::spec::Limits;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// How memory and process limits are enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// A cgroup v2 child of this parent per sandbox: limits hold for the sandbox as a whole.
    Cgroup { parent: PathBuf },
    /// rlimits: `RLIMIT_DATA` per process, `RLIMIT_NPROC` for the sandbox's uid. `reason` says
    /// why cgroups are not used.
    Rlimits { reason: String },
}

impl Enforcement {
    /// Looks at this machine: cgroup v2 if usable, rlimits otherwise.
    pub fn detect() -> Enforcement {
        let explicit = std::env::var_os("PRECOMP_CGROUP_PARENT").map(PathBuf::from);
        match usable_parent(explicit) {
            Ok(parent) => Enforcement::Cgroup { parent },
            Err(reason) => Enforcement::Rlimits { reason },
        }
    }

    pub fn is_cgroup(&self) -> bool {
        matches!(self, Enforcement::Cgroup { .. })
    }
}

impl std::fmt::Display for Enforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Enforcement::Cgroup { parent } => write!(f, "cgroup v2 under {}", parent.display()),
            Enforcement::Rlimits { reason } => write!(f, "rlimits ({reason})"),
        }
    }
}

fn usable_parent(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    let root = CString::new(CGROUP_ROOT).unwrap();
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(root.as_ptr(), &mut fs) } != 0 {
        return Err(format!("{CGROUP_ROOT} is not mounted"));
    }
    #[allow(clippy::unnecessary_cast)]
    if fs.f_type as i64 != CGROUP2_SUPER_MAGIC {
        return Err(format!(
            "{CGROUP_ROOT} is not a cgroup2 mount (cgroup v1 or hybrid hierarchy)"
        ));
    }
    let parent = match explicit {
        Some(parent) => parent,
        None => {
            let own = std::fs::read_to_string("/proc/self/cgroup")
                .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
            let path = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
            Path::new(CGROUP_ROOT).join(path.trim_start_matches('/'))
        }
    };
    let control = std::fs::read_to_string(parent.join("cgroup.subtree_control"))
        .map_err(|e| format!("{}/cgroup.subtree_control: {e}", parent.display()))?;
    for controller in ["memory", "pids"] {
        if !control.split_whitespace().any(|c| c == controller) {
            return Err(format!(
                "the {controller} controller is not enabled for children of {} (set \
                 PRECOMP_CGROUP_PARENT to a delegated cgroup whose cgroup.subtree_control has \
                 memory and pids)",
                parent.display()
            ));
        }
    }
    let c = CString::new(parent.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: access only reads the NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(format!("{} is not writable", parent.display()));
    }
    Ok(parent)
}

/// One sandbox's cgroup; removed on drop.
pub(crate) struct Cgroup {
    dir: PathBuf,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl Cgroup {
    pub(crate) fn create(parent: &Path, limits: &Limits) -> std::io::Result<Cgroup> {
        let name = format!(
            "precomp-sandbox-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = parent.join(name);
        std::fs::create_dir(&dir)?;
        let cgroup = Cgroup { dir };
        cgroup.write("memory.max", &limits.memory_bytes.to_string())?;
        match cgroup.write("memory.swap.max", "0") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
        cgroup.write("pids.max", &limits.processes.to_string())?;
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join(file))?
            .write_all(value.as_bytes())
    }

    /// `cgroup.procs`, opened for the child to move itself in before it executes bwrap.
    pub(crate) fn procs(&self) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.procs"))
    }

    /// Kills every process in the cgroup.
    pub(crate) fn kill(&self) {
        if self.write("cgroup.kill", "1").is_ok() {
            return;
        }
        // Kernels before 5.14: signal each member until none is left.
        for _ in 0..100 {
            let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) else {
                return;
            };
            let pids: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: plain syscall; the pid is a member of our cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// (`oom_kill` from memory.events, `max` from pids.events).
    pub(crate) fn events(&self) -> (u64, u64) {
        let field = |file: &str, key: &str| {
            std::fs::read_to_string(self.dir.join(file))
                .ok()
                .and_then(|text| {
                    text.lines().find_map(|l| {
                        let (k, v) = l.split_once(' ')?;
                        (k == key).then(|| v.trim().parse().ok()).flatten()
                    })
                })
                .unwrap_or(0)
        };
        (
            field("memory.events", "oom_kill"),
            field("pids.events", "max"),
        )
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.dir.exists() {
            tracing::warn!(cgroup = %self.dir.display(), "could not remove the sandbox cgroup");
        }
    }
}
