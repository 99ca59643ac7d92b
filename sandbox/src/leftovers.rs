//! Sandboxes whose runner died.
//!
//! A run binds bwrap to the thread that started it (parent-death signal from bwrap's first
//! instruction, then bwrap's own `--die-with-parent`), and the namespace's init dies with
//! bwrap. One window is left, inside bwrap itself (0.8): bwrap sets its parent-death signal,
//! clones the init, and only then releases it through an eventfd; an init whose bwrap is
//! killed before that release waits on the eventfd forever — re-parented to PID 1, asleep,
//! with no children, holding its bind mounts. Nothing in the dead runner can end it, so the
//! next process to clean the runner's directories does: [`kill_leftovers`], called on every
//! directory a sweep removes — work directories (`precomp_builder::workdir::sweep`) and the
//! temporary ones of one-off runs ([`scratch_dir`], [`sweep_scratch_dirs`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{flock, FlockOperation};

use crate::{Error, Result};

/// Every [`scratch_dir`]'s name starts with this, so a sweep knows what is ours.
const SCRATCH_PREFIX: &str = "precomp-sandbox-";

/// A directory younger than this is never swept: its creator may not have locked it yet.
const MIN_AGE: Duration = Duration::from_secs(60);

/// A temporary directory for a one-off sandbox run (toolchain detection, `precomp toolchain
/// run`): the sandbox user can reach it (0755), it is locked (`flock`, not inherited by the
/// sandbox) while this value lives, and removed when it is dropped — or, when its process was
/// killed, by the next [`sweep_scratch_dirs`], with what its sandboxes left.
#[derive(Debug)]
pub struct ScratchDir {
    // Dropped first: unlocked, then removed.
    _lock: File,
    dir: tempfile::TempDir,
}

impl ScratchDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A new [`ScratchDir`] in the temporary directory: `precomp-sandbox-PREFIX…`.
pub fn scratch_dir(prefix: &str) -> Result<ScratchDir> {
    use std::os::unix::fs::PermissionsExt;
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    let dir = tempfile::Builder::new()
        .prefix(&format!("{SCRATCH_PREFIX}{prefix}"))
        .tempdir()
        .map_err(io(std::env::temp_dir()))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(io(dir.path().to_path_buf()))?;
    let lock = File::open(dir.path()).map_err(io(dir.path().to_path_buf()))?;
    flock(&lock, FlockOperation::NonBlockingLockExclusive)
        .map_err(|e| io(dir.path().to_path_buf())(e.into()))?;
    Ok(ScratchDir { _lock: lock, dir })
}

/// Removes the scratch directories in the temporary directory whose process died without
/// removing them (nobody holds their lock; older than a minute), after killing what names
/// them ([`kill_leftovers`]). How many it removed.
pub fn sweep_scratch_dirs() -> usize {
    sweep_abandoned(&std::env::temp_dir(), |entry| {
        entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(SCRATCH_PREFIX))
    })
}

/// Removes the directories under `root` that `candidate` accepts and no live process holds
/// (each is locked with `flock` for as long as its process works there; the kernel drops the
/// lock however the process dies), except those younger than a minute (another process may
/// be about to lock them); first kills what the dead owner's sandboxes left naming them
/// ([`kill_leftovers`]). How many it removed; one it cannot remove is logged and left. Shared
/// by [`sweep_scratch_dirs`] and the builder's work directories
/// (`precomp_builder::workdir::sweep`).
pub fn sweep_abandoned(root: &Path, candidate: impl Fn(&std::fs::DirEntry) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || !candidate(&entry) {
            continue;
        }
        let young = entry
            .metadata()
            .and_then(|m| m.modified())
            .map(|modified| modified.elapsed().unwrap_or_default() < MIN_AGE)
            .unwrap_or(true);
        let path = entry.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if young || flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // young, or a live process works there
        }
        kill_leftovers(&path);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                removed += 1;
                tracing::info!(
                    "removed {}: its process ended without removing it",
                    path.display()
                );
            }
            Err(e) => tracing::warn!("removing the abandoned {}: {e}", path.display()),
        }
    }
    removed
}

/// Kills (SIGKILL) every process whose command line names `dir` or a path under it — a
/// sandbox's bwrap names its output and source directories in its arguments — other than
/// this one. Call it only on a directory that nobody uses any more (its owner is dead): what
/// names it then is left over. Processes this user may not signal are skipped. How many it
/// killed.
pub fn kill_leftovers(dir: &Path) -> usize {
    let mut names = vec![dir.as_os_str().as_encoded_bytes().to_vec()];
    if let Ok(canonical) = std::fs::canonicalize(dir) {
        let canonical = canonical.as_os_str().as_encoded_bytes().to_vec();
        if canonical != names[0] {
            names.push(canonical);
        }
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let me = std::process::id();
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let names_dir = cmdline
            .split(|&b| b == 0)
            .any(|arg| names.iter().any(|name| names_path(arg, name)));
        if !names_dir {
            continue;
        }
        // SAFETY: kill has no memory preconditions; a pid reused since the read gets a
        // signal only if its new command line named the same directory, which is the point.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
            tracing::warn!(
                pid,
                dir = %dir.display(),
                "killed a process left over from a sandbox whose runner died"
            );
            killed += 1;
        }
    }
    killed
}

/// Whether `arg` is `dir` or a path under it.
fn names_path(arg: &[u8], dir: &[u8]) -> bool {
    let dir = dir.strip_suffix(b"/").unwrap_or(dir);
    arg.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Waits until process `pid`'s command line names `path`: `spawn` can return before the
    /// child's exec has replaced its command line.
    fn wait_until_named(pid: u32, path: &Path) {
        let path = path.as_os_str().as_encoded_bytes();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| names_path(arg, path)))
        {
            assert!(
                Instant::now() < deadline,
                "process {pid} never named {path:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sets a directory's mtime to two hours ago (coreutils `touch`): past [`MIN_AGE`].
    fn age(path: &Path) {
        let status = Command::new("touch")
            .args(["-d", "2 hours ago"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// A scratch directory whose process died (unlocked, old), with a process still naming
    /// it: both gone after a sweep. One whose process lives (locked), and a young one, stay.
    #[test]
    fn a_sweep_removes_dead_runners_scratch_directories_with_their_leftovers() {
        let live = scratch_dir("test-live-").unwrap();
        age(live.path());
        let young = scratch_dir("test-young-").unwrap();
        // Its process died: the lock went with it (here: dropped without removing).
        let dead = scratch_dir("test-dead-").unwrap();
        let dead_path = dead.path().to_path_buf();
        let ScratchDir { _lock, dir } = dead;
        drop(_lock);
        let _ = dir.keep();
        age(&dead_path);
        let mut leftover = Command::new("perl")
            .args(["-e", "sleep 60"])
            .arg(&dead_path)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        assert!(live.path().starts_with(std::env::temp_dir()));
        assert!(live
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("precomp-sandbox-test-live-"));

        wait_until_named(leftover.id(), &dead_path);

        assert!(sweep_scratch_dirs() >= 1);
        assert!(!dead_path.exists());
        assert!(
            leftover.wait().unwrap().code().is_none(),
            "killed by a signal"
        );
        assert!(live.path().exists() && young.path().exists());
    }

    #[test]
    fn a_path_is_named_by_itself_and_what_is_under_it_only() {
        assert!(names_path(b"/w/build-1", b"/w/build-1"));
        assert!(names_path(b"/w/build-1/deps/app", b"/w/build-1"));
        assert!(names_path(b"/w/build-1/deps", b"/w/build-1/"));
        assert!(!names_path(b"/w/build-10", b"/w/build-1"));
        assert!(!names_path(b"--bind", b"/w/build-1"));
        assert!(!names_path(b"/w", b"/w/build-1"));
    }

    /// Processes naming the directory — one orphaned by a shell that exited, like the init a
    /// dead bwrap leaves — are killed; one naming a sibling with a longer name is not.
    #[test]
    fn processes_naming_a_dead_runners_directory_are_killed_and_no_others() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("build-1");
        let sibling = root.path().join("build-10");
        std::fs::create_dir_all(dir.join("deps")).unwrap();
        std::fs::create_dir_all(&sibling).unwrap();
        // perl (essential in Debian) sleeps with the paths as mere arguments.
        let sleeper = |path: &Path| {
            let mut command = Command::new("perl");
            command
                .args(["-e", "sleep 60"])
                .arg(path)
                .stdin(Stdio::null());
            command
        };
        let orphaned = Command::new("sh")
            .args(["-c", "(perl -e 'sleep 60' \"$0\" &)"])
            .arg(dir.join("deps"))
            .status()
            .unwrap();
        assert!(orphaned.success());
        let mut direct = sleeper(&dir).spawn().unwrap();
        let mut other = sleeper(&sibling).spawn().unwrap();
        let naming = |path: &Path| {
            let path = path.as_os_str().as_encoded_bytes().to_vec();
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| names_path(arg, &path)))
                })
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while naming(&dir) < 2 {
            assert!(Instant::now() < deadline, "the shells never started");
            std::thread::sleep(Duration::from_millis(10));
        }

        assert_eq!(kill_leftovers(&dir), 2);
        assert!(
            direct.wait().unwrap().code().is_none(),
            "killed by a signal"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while naming(&dir) > 0 {
            assert!(Instant::now() < deadline, "the orphan survived");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            other.try_wait().unwrap().is_none(),
            "the sibling's process was killed"
        );
        assert_eq!(kill_leftovers(&dir), 0);
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
