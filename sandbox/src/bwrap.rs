//! A [`Spec`] turned into a bubblewrap command line.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::spec::{Spec, HOME_DIR, HOSTNAME};

/// The system directories a toolchain root provides, bound read-only (or reproduced as links
/// when they are merged-/usr symlinks). Nothing else of the root is visible.
pub const SYSTEM_DIRS: &[&str] = &[
    "usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32",
];

/// Size of the private `/dev/shm` (POSIX shared memory and semaphores).
pub const SHM_BYTES: u64 = 64 << 20;

/// Finds `bwrap`: `$PRECOMP_BWRAP`, else on `PATH`, else `/usr/bin/bwrap`.
pub fn find() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PRECOMP_BWRAP") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::BwrapMissing)
        };
    }
    find_program("bwrap").ok_or(Error::BwrapMissing)
}

/// Looks a program up on `PATH`, then in `/usr/bin` and `/usr/sbin`.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            candidate
                .metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The bwrap arguments for `spec` (everything after the program name). `status_fd` is the
/// descriptor bwrap reports the child's pid and exit code on.
pub fn arguments(spec: &Spec, status_fd: i32) -> Result<Vec<OsString>> {
    let mounts = spec.validate()?;
    let mut args = Args::default();
    // Every namespace: user, mount, pid, ipc, uts, net (only loopback inside), cgroup. The user
    // namespace is asked for explicitly so that its failure is an error, not a silent skip, and
    // so that nested user namespaces can be disabled.
    args.flag("--unshare-all");
    args.flag("--unshare-user");
    args.flag("--disable-userns");
    args.flag("--assert-userns-disabled");
    // SIGKILL to the sandbox when its parent dies; a new session so the command cannot push
    // input into the caller's terminal (TIOCSTI); no capabilities. bwrap sets
    // PR_SET_NO_NEW_PRIVS itself before running the command.
    args.flag("--die-with-parent");
    args.flag("--new-session");
    args.pair("--cap-drop", "ALL");
    args.pair("--hostname", HOSTNAME);
    args.pair("--json-status-fd", status_fd.to_string());

    args.flag("--clearenv");
    for (name, value) in &spec.env {
        args.flag("--setenv");
        args.flag(name);
        args.flag(value);
    }

    system_dirs(&mut args, spec.root.dir())?;
    args.pair("--proc", "/proc");
    args.pair("--dev", "/dev");
    args.pair("--size", SHM_BYTES.to_string());
    args.pair("--tmpfs", "/dev/shm");
    args.pair("--remount-ro", "/dev");
    args.pair("--size", spec.limits.tmp_bytes.to_string());
    args.pair("--perms", "1777");
    args.pair("--tmpfs", "/tmp");
    args.pair("--dir", HOME_DIR);
    args.pair("--dir", "/var");
    args.pair("--symlink", "/tmp");
    args.flag("/var/tmp");

    for (mount, writable) in mounts {
        args.flag(if writable { "--bind" } else { "--ro-bind" });
        args.flag(absolute(&mount.host)?);
        args.flag(&mount.dest);
    }
    // The root tmpfs bwrap builds the tree on: read-only once everything is mounted.
    args.pair("--remount-ro", "/");
    args.pair("--chdir", &spec.workdir);
    args.flag("--");
    for word in &spec.command {
        args.flag(word);
    }
    Ok(args.0)
}

fn system_dirs(args: &mut Args, root: &Path) -> Result<()> {
    let mut found_usr = false;
    for name in SYSTEM_DIRS {
        let path = root.join(name);
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        let dest = Path::new("/").join(name);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| Error::io(&path, e))?;
            args.flag("--symlink");
            args.flag(target);
            args.flag(dest);
        } else if meta.is_dir() {
            found_usr |= *name == "usr";
            args.flag("--ro-bind");
            args.flag(&path);
            args.flag(dest);
        }
    }
    if !found_usr {
        return Err(Error::InvalidSpec(format!(
            "toolchain root {} has no usr/ directory",
            root.display()
        )));
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(|e| Error::io(path, e))
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn flag(&mut self, word: impl AsRef<std::ffi::OsStr>) {
        self.0.push(word.as_ref().to_owned());
    }

    fn pair(&mut self, flag: &str, value: impl AsRef<std::ffi::OsStr>) {
        self.flag(flag);
        self.flag(value);
    }
}

/// A command line for logs: words quoted when they need it.
pub fn display(program: &Path, args: &[OsString]) -> String {
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|word| {
            let text = String::from_utf8_lossy(word.as_bytes());
            if !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
            {
                text.into_owned()
            } else {
                format!("'{}'", text.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Root;

    fn words(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn has_seq(haystack: &[String], needle: &[&str]) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w.iter().zip(needle).all(|(a, b)| a == b))
    }

    #[test]
    fn build_policy_command_line() {
        let out = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let spec = Spec::build(Root::Host, out.path(), ["mix", "compile"])
            .source(src.path(), "/build/deps/jason");
        let args = words(&arguments(&spec, 9).unwrap());
        for flag in [
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
        ] {
            assert!(args.contains(&flag.to_string()), "{flag} missing: {args:?}");
        }
        let out_host = std::fs::canonicalize(out.path()).unwrap();
        let src_host = std::fs::canonicalize(src.path()).unwrap();
        for seq in [
            &["--cap-drop", "ALL"][..],
            &["--json-status-fd", "9"],
            &["--hostname", "precomp"],
            &["--ro-bind", "/usr", "/usr"],
            &["--ro-bind", "/etc", "/etc"],
            &["--setenv", "ERL_COMPILER_OPTIONS", "deterministic"],
            &["--setenv", "TZ", "UTC"],
            &["--bind", out_host.to_str().unwrap(), "/build"],
            &["--ro-bind", src_host.to_str().unwrap(), "/build/deps/jason"],
            &[
                "--remount-ro",
                "/",
                "--chdir",
                "/build",
                "--",
                "mix",
                "compile",
            ],
        ] {
            assert!(has_seq(&args, seq), "{seq:?} missing: {args:?}");
        }
        // Exactly one writable bind, and the output mounted before what is inside it.
        assert_eq!(args.iter().filter(|a| *a == "--bind").count(), 1);
        let bind = args.iter().position(|a| a == "--bind").unwrap();
        let ro = args
            .iter()
            .rposition(|a| a == "--ro-bind")
            .expect("a read-only bind");
        assert!(bind < ro);
        // /etc/passwd-style leakage of the host environment: nothing but --setenv pairs.
        assert!(!args.iter().any(|a| a.starts_with("HOME=")));
    }

    #[test]
    fn image_root_links_are_reproduced() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.path().join("bin")).unwrap();
        std::fs::create_dir_all(root.path().join("root")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let spec = Spec::build(Root::Image(root.path().into()), out.path(), ["true"]);
        let args = words(&arguments(&spec, 3).unwrap());
        let usr = root.path().join("usr");
        assert!(has_seq(
            &args,
            &["--ro-bind", usr.to_str().unwrap(), "/usr"]
        ));
        assert!(has_seq(&args, &["--symlink", "usr/bin", "/bin"]));
        assert!(!args.iter().any(|a| a.ends_with("/root")), "{args:?}");

        let empty = tempfile::tempdir().unwrap();
        let spec = Spec::build(Root::Image(empty.path().into()), out.path(), ["true"]);
        assert!(arguments(&spec, 3).is_err());
    }

    #[test]
    fn display_quotes() {
        let line = display(
            Path::new("/usr/bin/bwrap"),
            &["--setenv".into(), "A".into(), "x y'z".into()],
        );
        assert_eq!(line, r"/usr/bin/bwrap --setenv A 'x y'\''z'");
    }
}
