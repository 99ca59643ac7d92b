//! Sandboxes whose runner died.
//!
//! A run binds bwrap to the thread that started it (parent-death signal from bwrap's first
//! instruction, then bwrap's own `--die-with-parent`), and the namespace's init dies with
//! bwrap. One window is left, inside bwrap itself (0.8): bwrap sets its parent-death signal,
//! clones the init, and only then releases it through an eventfd; an init whose bwrap is
//! killed before that release waits on the eventfd forever — re-parented to PID 1, asleep,
//! with no children, holding its bind mounts. Nothing in the dead runner can end it, so the
//! next process to clean the runner's directories does: [`kill_leftovers`], called on every
//! directory a sweep removes (`precomp_builder::workdir::sweep`).

use std::path::Path;

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
