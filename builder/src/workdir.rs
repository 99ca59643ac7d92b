//! Work directories that do not outlive their process, even one killed with `-9`.
//!
//! A build (or an audit run) works in a fresh directory under a shared root, removed when it
//! is done. A process killed with SIGKILL cannot remove it, so each directory is held with an
//! exclusive `flock` on the directory itself for as long as its [`WorkDir`] lives: the kernel
//! drops the lock when the process dies, however it dies. [`sweep`], run when a builder,
//! worker or audit starts, removes every directory under the root whose lock it can take —
//! nobody holds it, so nobody works there — unless it was [kept](WorkDir::keep) on purpose.
//!
//! The descriptor is close-on-exec (Rust opens files so), so sandboxes started from the
//! directory do not inherit the lock and cannot keep it alive.

use std::fs::File;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::error::{io, Result};

/// Left in a directory that is kept for the operator (failure logs): [`sweep`] leaves it.
pub const KEPT_MARKER: &str = ".precomp-kept";

/// A fresh directory under a work root, locked while this value lives and removed on drop.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    /// The open directory, locked exclusively; `None` once kept.
    lock: Option<File>,
}

impl WorkDir {
    /// A new directory `root/PREFIX…` with `mode` (the sandbox user must reach build
    /// directories: 0755), locked.
    pub fn create(root: &Path, prefix: &str, mode: u32) -> Result<WorkDir> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(root).map_err(io(root))?;
        let path = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(root)
            .map_err(io(root))?
            .keep();
        // Removed on drop from here on, should a step below fail.
        let mut dir = WorkDir { path, lock: None };
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(mode))
            .map_err(io(&dir.path))?;
        let file = File::open(&dir.path).map_err(io(&dir.path))?;
        flock(&file, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| io(&dir.path)(e.into()))?;
        dir.lock = Some(file);
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory in place for the operator: marked so that [`sweep`] leaves it,
    /// and unlocked. Its path.
    pub fn keep(mut self) -> PathBuf {
        let marker = self.path.join(KEPT_MARKER);
        if let Err(e) = std::fs::write(&marker, b"") {
            tracing::warn!("marking {} as kept: {e}", self.path.display());
        }
        self.lock = None;
        std::mem::take(&mut self.path)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", self.path.display());
            }
        }
    }
}

/// Removes the directories under `root` that no live process holds (their process ended
/// without removing them: killed, or a power cut), except kept ones and those created in the
/// last minute; first kills what is left of the dead owner's sandboxes
/// ([`precomp_sandbox::kill_leftovers`]). How many it removed; a directory it cannot remove is logged and left.
pub fn sweep(root: &Path) -> usize {
    // One-off sandbox runs (toolchain detection) keep their directories elsewhere.
    precomp_sandbox::sweep_scratch_dirs();
    precomp_sandbox::sweep_abandoned(root, |entry| !entry.path().join(KEPT_MARKER).exists())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    /// Sets a directory's mtime to two hours ago (coreutils `touch`): past the sweep's minute.
    fn age(path: &Path) {
        let status = Command::new("touch")
            .args(["-d", "2 hours ago"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn sweep_removes_only_what_no_live_process_holds() {
        let root = tempfile::tempdir().unwrap();

        // Ours, in use: locked by this process (another open file description would not get
        // the lock either), so left alone even when old.
        let ours = WorkDir::create(root.path(), "ours-", 0o755).unwrap();
        std::fs::write(ours.path().join("file"), b"x").unwrap();
        age(ours.path());

        // Held by another live process (util-linux `flock`), then that process killed with -9.
        let held = root.path().join("held");
        std::fs::create_dir(&held).unwrap();
        // `--close`: the lock stays with `flock` itself, not with the `sleep` it runs.
        let mut holder = Command::new("flock")
            .args(["--exclusive", "--close"])
            .arg(&held)
            .args(["sleep", "30"])
            .stdin(Stdio::null())
            .spawn()
            .expect("util-linux flock");
        // Wait until it holds the lock.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let probe = File::open(&held).unwrap();
            if flock(&probe, FlockOperation::NonBlockingLockExclusive).is_err() {
                break;
            }
            drop(probe);
            assert!(
                std::time::Instant::now() < deadline,
                "flock never took the lock"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        age(&held);

        // Abandoned long ago, with a process of its dead owner's sandbox still naming it (as
        // an init bwrap never released would), a young one, and one kept for the operator.
        let abandoned = root.path().join("abandoned");
        std::fs::create_dir_all(abandoned.join("deps/app")).unwrap();
        age(&abandoned);
        let mut leftover = Command::new("perl")
            .args(["-e", "sleep 60"])
            .arg(abandoned.join("deps/app"))
            .stdin(Stdio::null())
            .spawn()
            .expect("perl");
        // `spawn` can return before the child's exec has replaced its command line.
        let named = abandoned.join("deps/app").display().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read(format!("/proc/{}/cmdline", leftover.id()))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&named))
        {
            assert!(std::time::Instant::now() < deadline, "perl never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        let young = root.path().join("young");
        std::fs::create_dir(&young).unwrap();
        let kept = WorkDir::create(root.path(), "kept-", 0o755).unwrap().keep();
        age(&kept);

        assert_eq!(sweep(root.path()), 1);
        assert!(!abandoned.exists());
        let ended = leftover.wait().unwrap();
        assert!(ended.code().is_none(), "the leftover was killed: {ended:?}");
        assert!(ours.path().join("file").exists());
        assert!(held.exists() && young.exists() && kept.exists());

        holder.kill().unwrap(); // SIGKILL
        holder.wait().unwrap();
        age(&held);
        assert_eq!(sweep(root.path()), 1);
        assert!(
            !held.exists(),
            "the lock of a killed process is gone with it"
        );

        // Dropped normally: removed at once.
        let path = ours.path().to_path_buf();
        drop(ours);
        assert!(!path.exists());
        assert!(kept.exists());
    }
}
