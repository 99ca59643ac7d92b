//! Installing an artifact into `_build/<env>/lib/<app>` so that Mix treats the dependency as
//! compiled (`../shared/design/mix-mechanics.md` §1.2), atomically.
//!
//! The artifact is unpacked into a staging directory beside the target,
//! `lib/.precomp-tmp-<app>.<random>/new`, the markers are written into it, and it replaces
//! `lib/<app>` with one `renameat2(RENAME_EXCHANGE)` (or, where the filesystem lacks it, by
//! moving the old directory to `…/old` and the new one in). The old contents are then
//! deleted with the staging directory. A run killed at any point leaves `lib/<app>` either
//! as it was or fully installed: [`recover`] (run first by every fetch) puts a moved-aside
//! directory back and deletes staging leftovers.
//!
//! Markers written (Elixir 1.14 and 1.18 alike):
//! - `.mix/compile.fetch`, with an mtime not older than `deps/<app>/.fetch` (1.14 compares
//!   them in seconds; 1.18 only needs the file);
//! - `.mix/compile.elixir_scm` for Mix-built deps: `{1, {Elixir, OtpMajor}, Hex.SCM}` as Mix
//!   writes it, so a later Elixir or OTP upgrade makes Mix recompile;
//! - `.mix/precomp.key` and `.mix/precomp.manifest`: the build key and the signed manifest,
//!   so a re-run leaves an install with the same key alone without asking the mirror.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use precomp_proto::artifact;
use precomp_proto::manifest::FileRecord;

/// Prefix of staging directories in `lib/`.
pub const STAGING_PREFIX: &str = ".precomp-tmp-";

/// The lock file in `lib/` that serialises fetches of one build directory.
pub const LOCK_FILE: &str = ".precomp.lock";

/// Test hook, only in builds with the `test-hooks` feature (the workspace's tests turn it on;
/// `cargo build` and `cargo install` leave it off): when this environment variable names the
/// app being installed, the install stops (for a minute) with everything staged, right before
/// the swap, after printing `pausing before swapping APP` to stderr, so a test can kill the
/// process at the worst moment.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub const PAUSE_BEFORE_SWAP_ENV: &str = "PRECOMP_TEST_PAUSE_BEFORE_SWAP";

/// Marker files, relative to the app's build directory.
pub const KEY_MARKER: &str = ".mix/precomp.key";
pub const MANIFEST_MARKER: &str = ".mix/precomp.manifest";
pub const FETCH_MARKER: &str = ".mix/compile.fetch";
pub const ELIXIR_SCM_MARKER: &str = ".mix/compile.elixir_scm";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unpacking the artifact: {0}")]
    Unpack(#[from] artifact::ArtifactError),
    #[error("the artifact has no {0}: Mix would not see the app")]
    NoAppFile(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to install for one dependency.
pub struct Install<'a> {
    /// `_build/<env>/lib`.
    pub lib_dir: &'a Path,
    pub app: &'a str,
    /// The verified artifact.
    pub artifact: &'a [u8],
    pub key: &'a str,
    /// The signed manifest it was verified with.
    pub signed_manifest: &'a [u8],
    /// `compile.elixir_scm` bytes, for deps Mix builds with Elixir.
    pub elixir_scm: Option<&'a [u8]>,
    /// `deps/<app>/.fetch`.
    pub fetch_marker: &'a Path,
}

/// An app's install by precomp, as its markers record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub key: String,
    pub signed_manifest: Vec<u8>,
}

/// Installs `spec` into `lib/<app>`, replacing what is there, atomically.
pub fn install(spec: &Install<'_>) -> Result<(), InstallError> {
    std::fs::create_dir_all(spec.lib_dir).map_err(io(spec.lib_dir))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!("{STAGING_PREFIX}{}.", spec.app))
        .tempdir_in(spec.lib_dir)
        .map_err(io(spec.lib_dir))?;
    let new = staging.path().join("new");
    let files = artifact::unpack(spec.artifact, &new)?;
    let app_file = format!("ebin/{}.app", spec.app);
    if !files.iter().any(|f| f.path == app_file) {
        return Err(InstallError::NoAppFile(app_file));
    }
    let mix_dir = new.join(".mix");
    std::fs::create_dir_all(&mix_dir).map_err(io(&mix_dir))?;
    if let Some(scm) = spec.elixir_scm {
        write_file(&new.join(ELIXIR_SCM_MARKER), scm)?;
    }
    write_file(&new.join(MANIFEST_MARKER), spec.signed_manifest)?;
    write_file(&new.join(KEY_MARKER), format!("{}\n", spec.key).as_bytes())?;
    touch_fetch_marker(&new, spec.fetch_marker)?;

    #[cfg(feature = "test-hooks")]
    if std::env::var_os(PAUSE_BEFORE_SWAP_ENV).is_some_and(|app| app == spec.app) {
        eprintln!("pausing before swapping {}", spec.app);
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
    let target = spec.lib_dir.join(spec.app);
    replace(&new, &target, &staging.path().join("old"))?;
    // The old contents (if any) are inside `staging`, deleted with it.
    drop(staging);
    sync_dir(spec.lib_dir);
    Ok(())
}

/// Moves `new` to `target`, replacing it: one atomic exchange where the filesystem supports
/// it, else `target` → `aside`, `new` → `target` ([`recover`] undoes a half-done move).
fn replace(new: &Path, target: &Path, aside: &Path) -> Result<(), InstallError> {
    let exists = target.symlink_metadata().is_ok();
    if !exists {
        return std::fs::rename(new, target).map_err(io(target));
    }
    let cwd = rustix::fs::CWD;
    match rustix::fs::renameat_with(cwd, new, cwd, target, rustix::fs::RenameFlags::EXCHANGE) {
        Ok(()) => return Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {}
        Err(e) => return Err(io(target)(e.into())),
    }
    std::fs::rename(target, aside).map_err(io(target))?;
    std::fs::rename(new, target).map_err(io(target))
}

/// Removes `lib/<app>` (a stale precompiled install), atomically: moved into a staging
/// directory first, so an interrupted removal is undone by [`recover`].
pub fn remove(lib_dir: &Path, app: &str) -> Result<(), InstallError> {
    let target = lib_dir.join(app);
    if target.symlink_metadata().is_err() {
        return Ok(());
    }
    let staging = tempfile::Builder::new()
        .prefix(&format!("{STAGING_PREFIX}{app}."))
        .tempdir_in(lib_dir)
        .map_err(io(lib_dir))?;
    std::fs::rename(&target, staging.path().join("old")).map_err(io(&target))?;
    drop(staging);
    Ok(())
}

/// Cleans up after an interrupted fetch: a directory moved aside while its replacement was
/// not yet in place goes back; every staging directory is deleted. Returns a line per
/// restored app.
pub fn recover(lib_dir: &Path) -> Result<Vec<String>, InstallError> {
    let mut restored = Vec::new();
    let entries = match std::fs::read_dir(lib_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(restored),
        Err(e) => return Err(io(lib_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(lib_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(STAGING_PREFIX) else {
            continue;
        };
        let staging = entry.path();
        if let Some((app, _random)) = rest.rsplit_once('.') {
            let old = staging.join("old");
            let target = lib_dir.join(app);
            if !app.is_empty()
                && !app.contains('/')
                && old.symlink_metadata().is_ok()
                && target.symlink_metadata().is_err()
            {
                std::fs::rename(&old, &target).map_err(io(&target))?;
                restored.push(format!("{app}: restored after an interrupted install"));
            }
        }
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    Ok(restored)
}

/// The precomp install of `lib/<app>`, if its markers and `.app` are there.
pub fn installed(lib_dir: &Path, app: &str) -> Option<Installed> {
    let dir = lib_dir.join(app);
    if !dir.join(format!("ebin/{app}.app")).is_file() {
        return None;
    }
    let key = std::fs::read_to_string(dir.join(KEY_MARKER)).ok()?;
    let signed_manifest = std::fs::read(dir.join(MANIFEST_MARKER)).ok()?;
    Some(Installed {
        key: key.trim().to_string(),
        signed_manifest,
    })
}

/// How an install's files differ from its manifest's list: the first difference found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Drift {
    #[error("{0} is missing")]
    Missing(String),
    #[error("{0} has other bytes than the signed manifest lists")]
    Changed(String),
    #[error("{0} is not a regular file of the install (a link, or another kind of file)")]
    NotAFile(String),
    #[error("{0} has {1} executable bit than the manifest lists")]
    Mode(String, &'static str),
    #[error("{0} is not in the signed manifest")]
    Extra(String),
}

/// Checks that `lib/<app>` holds exactly the files the manifest lists, by content (SHA-256
/// and size) and executable bit — never by mtime — and nothing else outside `.mix/` (Mix's
/// and precomp's markers). Links anywhere on a listed path count as differences: precomp
/// installs real files, while Mix links `priv` into `deps/`. A `mix deps.compile` that
/// rebuilt the dependency in place gives other beams (their debug info holds the build
/// path) and is found here.
pub fn check_installed(lib_dir: &Path, app: &str, files: &[FileRecord]) -> Result<(), Drift> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    let dir = lib_dir.join(app);
    let mut listed = std::collections::BTreeSet::new();
    for file in files {
        listed.insert(file.path.as_str());
        let mut path = dir.clone();
        for component in file.path.split('/') {
            path.push(component);
            match std::fs::symlink_metadata(&path) {
                Err(_) => return Err(Drift::Missing(file.path.clone())),
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Drift::NotAFile(file.path.clone()))
                }
                Ok(_) => {}
            }
        }
        let meta =
            std::fs::symlink_metadata(&path).map_err(|_| Drift::Missing(file.path.clone()))?;
        if !meta.is_file() {
            return Err(Drift::NotAFile(file.path.clone()));
        }
        if meta.len() != file.size {
            return Err(Drift::Changed(file.path.clone()));
        }
        let mut hasher = Sha256::new();
        File::open(&path)
            .and_then(|mut f| std::io::copy(&mut f, &mut hasher))
            .map_err(|_| Drift::Missing(file.path.clone()))?;
        if hasher.finalize().as_slice() != file.sha256.as_slice() {
            return Err(Drift::Changed(file.path.clone()));
        }
        let executable = meta.permissions().mode() & 0o111 != 0;
        if executable != file.executable {
            let which = if file.executable { "no" } else { "an" };
            return Err(Drift::Mode(file.path.clone(), which));
        }
    }
    // Anything else besides the markers: a beam Mix added, a file an artifact does not hold.
    let mut stack = vec![(dir.clone(), String::new())];
    while let Some((current, prefix)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = format!("{prefix}{name}");
            if relative == ".mix" {
                continue;
            }
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => stack.push((entry.path(), format!("{relative}/"))),
                _ if listed.contains(relative.as_str()) => {}
                _ => return Err(Drift::Extra(relative)),
            }
        }
    }
    Ok(())
}

/// True when `lib/<app>` was installed by precomp (whatever its key).
pub fn is_precompiled(lib_dir: &Path, app: &str) -> bool {
    lib_dir.join(app).join(KEY_MARKER).is_file()
}

/// Brings the Mix markers of an install that is kept up to date: `compile.fetch` after
/// `deps/<app>/.fetch` (a later `mix deps.get` may have removed or outdated it), and
/// `compile.elixir_scm`.
pub fn refresh_markers(
    lib_dir: &Path,
    app: &str,
    fetch_marker: &Path,
    elixir_scm: Option<&[u8]>,
) -> Result<(), InstallError> {
    let dir = lib_dir.join(app);
    let compile_fetch = dir.join(FETCH_MARKER);
    let fresh = match (mtime(&compile_fetch), mtime(fetch_marker)) {
        (Some(_), None) => true,
        (Some(ours), Some(theirs)) => secs(ours) >= secs(theirs),
        (None, _) => false,
    };
    if !fresh {
        touch_fetch_marker(&dir, fetch_marker)?;
    }
    if let Some(scm) = elixir_scm {
        let path = dir.join(ELIXIR_SCM_MARKER);
        if std::fs::read(&path).ok().as_deref() != Some(scm) {
            write_file(&path, scm)?;
        }
    }
    Ok(())
}

/// Creates or touches `path` (a project's `compile.lock`), as Mix's `will_recompile` does:
/// the project then re-checks its deps.
pub fn touch_compile_lock(path: &Path) -> Result<(), InstallError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    // Never in the future: Mix warns about future mtimes and resets them.
    file.set_modified(SystemTime::now()).map_err(io(path))
}

/// `dir/.mix/compile.fetch`, with an mtime of now or, if `deps/<app>/.fetch` is newer (a
/// clock ahead), its mtime.
fn touch_fetch_marker(dir: &Path, fetch_marker: &Path) -> Result<(), InstallError> {
    let path = dir.join(FETCH_MARKER);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io(&path))?;
    // Mix 1.14 recompiles when `.fetch` is newer, in whole seconds: not older is enough,
    // and a time in the future would make Mix warn and reset it.
    let mut when = SystemTime::now();
    if let Some(fetched) = mtime(fetch_marker) {
        when = when.max(fetched);
    }
    file.set_modified(when).map_err(io(&path))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), InstallError> {
    let mut file = File::create(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn secs(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sync_dir(dir: &Path) {
    if let Ok(file) = File::open(dir) {
        let _ = file.sync_all();
    }
}

/// An exclusive lock on a build directory's `lib/`, held while fetching into it: two
/// fetches into one project wait for each other.
pub struct LibLock {
    _file: File,
}

impl LibLock {
    pub fn acquire(lib_dir: &Path) -> Result<LibLock, InstallError> {
        std::fs::create_dir_all(lib_dir).map_err(io(lib_dir))?;
        let path = lib_dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(LibLock { _file: file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => tracing::warn!(
                "another precomp fetch is installing into {}; waiting for it",
                lib_dir.display()
            ),
            Err(e) => return Err(io(&path)(e.into())),
        }
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(&path)(e.into()))?;
        Ok(LibLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A packed app with `ebin/<app>.app` (when `with_app`) and a beam holding `content`.
    fn artifact(app: &str, content: &str, with_app: bool) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let app_dir = dir.path().join(app);
        std::fs::create_dir_all(app_dir.join("ebin")).unwrap();
        std::fs::create_dir_all(app_dir.join("priv")).unwrap();
        if with_app {
            std::fs::write(
                app_dir.join(format!("ebin/{app}.app")),
                format!("{{application,{app},[{{vsn,\"1.0.0\"}}]}}.\n"),
            )
            .unwrap();
        }
        std::fs::write(app_dir.join(format!("ebin/{app}.beam")), content).unwrap();
        std::fs::write(app_dir.join("priv/data.txt"), content).unwrap();
        artifact::pack(&app_dir, dir.path()).unwrap().bytes
    }

    #[test]
    fn an_install_is_checked_by_content_against_its_file_list() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (lib, deps) = (dir.path().join("lib"), dir.path().join("deps"));
        std::fs::create_dir_all(deps.join("dep")).unwrap();
        let bytes = artifact("dep", "one", true);
        install_into(&lib, &deps, &bytes, "k1").unwrap();
        let files = artifact::list(&bytes).unwrap();
        check_installed(&lib, "dep", &files).unwrap();

        // Markers change (mtimes, Mix's own files under .mix): still the same install.
        std::fs::write(lib.join("dep/.mix/compile.elixir"), b"mix manifest").unwrap();
        check_installed(&lib, "dep", &files).unwrap();

        // Rebuilt in place with the same size: other bytes.
        let beam = lib.join("dep/ebin/dep.beam");
        std::fs::write(&beam, b"two").unwrap();
        assert_eq!(
            check_installed(&lib, "dep", &files),
            Err(Drift::Changed("ebin/dep.beam".into()))
        );
        std::fs::write(&beam, b"one").unwrap();
        check_installed(&lib, "dep", &files).unwrap();

        // A beam Mix added, a file removed, a mode, a link where a file was.
        std::fs::write(lib.join("dep/ebin/extra.beam"), b"x").unwrap();
        assert_eq!(
            check_installed(&lib, "dep", &files),
            Err(Drift::Extra("ebin/extra.beam".into()))
        );
        std::fs::remove_file(lib.join("dep/ebin/extra.beam")).unwrap();
        std::fs::set_permissions(&beam, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            check_installed(&lib, "dep", &files),
            Err(Drift::Mode("ebin/dep.beam".into(), "an"))
        );
        std::fs::set_permissions(&beam, std::fs::Permissions::from_mode(0o644)).unwrap();
        let priv_dir = lib.join("dep/priv");
        std::fs::rename(&priv_dir, dir.path().join("priv-elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("priv-elsewhere"), &priv_dir).unwrap();
        assert_eq!(
            check_installed(&lib, "dep", &files),
            Err(Drift::NotAFile("priv/data.txt".into())),
            "Mix links priv into deps/: not the install"
        );
        std::fs::remove_file(&priv_dir).unwrap();
        assert_eq!(
            check_installed(&lib, "dep", &files),
            Err(Drift::Missing("priv/data.txt".into()))
        );
    }

    fn leftovers(lib: &Path) -> Vec<String> {
        std::fs::read_dir(lib)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.') && n != LOCK_FILE)
            .collect()
    }

    fn install_into(lib: &Path, deps: &Path, bytes: &[u8], key: &str) -> Result<(), InstallError> {
        install(&Install {
            lib_dir: lib,
            app: "dep",
            artifact: bytes,
            key,
            signed_manifest: b"manifest",
            elixir_scm: Some(b"scm"),
            fetch_marker: &deps.join("dep/.fetch"),
        })
    }

    #[test]
    fn installs_then_replaces_atomically_with_markers_after_fetch() {
        let root = tempfile::tempdir().unwrap();
        let (lib, deps) = (root.path().join("_build/dev/lib"), root.path().join("deps"));
        std::fs::create_dir_all(deps.join("dep")).unwrap();
        // deps.get touched .fetch "in the future" (clock skew): compile.fetch must be later.
        let fetched = SystemTime::now() + Duration::from_secs(100);
        File::create(deps.join("dep/.fetch"))
            .unwrap()
            .set_modified(fetched)
            .unwrap();

        install_into(&lib, &deps, &artifact("dep", "one", true), "k1").unwrap();
        let dir = lib.join("dep");
        assert_eq!(
            std::fs::read_to_string(dir.join("ebin/dep.beam")).unwrap(),
            "one"
        );
        assert_eq!(std::fs::read(dir.join(ELIXIR_SCM_MARKER)).unwrap(), b"scm");
        assert_eq!(installed(&lib, "dep").unwrap().key, "k1");
        let marker = mtime(&dir.join(FETCH_MARKER)).unwrap();
        assert!(
            secs(marker) >= secs(fetched),
            "compile.fetch must not be older than .fetch"
        );
        assert!(leftovers(&lib).is_empty(), "{:?}", leftovers(&lib));

        install_into(&lib, &deps, &artifact("dep", "two", true), "k2").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("ebin/dep.beam")).unwrap(),
            "two"
        );
        assert_eq!(installed(&lib, "dep").unwrap().key, "k2");
        assert!(leftovers(&lib).is_empty(), "{:?}", leftovers(&lib));

        // An artifact without the .app is refused before anything changes.
        let error = install_into(&lib, &deps, &artifact("dep", "three", false), "k3");
        assert!(
            matches!(error, Err(InstallError::NoAppFile(_))),
            "{error:?}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("ebin/dep.beam")).unwrap(),
            "two"
        );
        assert!(leftovers(&lib).is_empty(), "{:?}", leftovers(&lib));

        remove(&lib, "dep").unwrap();
        assert!(!dir.exists());
        assert!(leftovers(&lib).is_empty(), "{:?}", leftovers(&lib));
    }

    #[test]
    fn recovery_puts_back_a_directory_moved_aside_and_drops_staging() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("lib");
        std::fs::create_dir_all(&lib).unwrap();

        // Killed between "old aside" and "new in": the old install comes back.
        let staged = lib.join(format!("{STAGING_PREFIX}dep.AbC123"));
        std::fs::create_dir_all(staged.join("old/ebin")).unwrap();
        std::fs::write(staged.join("old/ebin/dep.app"), "old").unwrap();
        std::fs::create_dir_all(staged.join("new/ebin")).unwrap();
        // Killed while unpacking another app: its half-written staging goes, the app stays.
        let other = lib.join(format!("{STAGING_PREFIX}other_app.XyZ789"));
        std::fs::create_dir_all(other.join("new/ebin")).unwrap();
        std::fs::create_dir_all(lib.join("other_app/ebin")).unwrap();
        std::fs::write(lib.join("other_app/ebin/other_app.app"), "kept").unwrap();
        // Killed after the swap: the old contents left in staging go.
        let swapped = lib.join(format!("{STAGING_PREFIX}other_app.Swp000"));
        std::fs::create_dir_all(swapped.join("old/ebin")).unwrap();

        let restored = recover(&lib).unwrap();
        assert_eq!(restored.len(), 1, "{restored:?}");
        assert_eq!(
            std::fs::read_to_string(lib.join("dep/ebin/dep.app")).unwrap(),
            "old"
        );
        assert_eq!(
            std::fs::read_to_string(lib.join("other_app/ebin/other_app.app")).unwrap(),
            "kept"
        );
        assert!(leftovers(&lib).is_empty(), "{:?}", leftovers(&lib));
        assert!(recover(&root.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn one_fetch_at_a_time_per_build_directory() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("lib");
        let first = LibLock::acquire(&lib).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let lib = lib.clone();
            std::thread::spawn(move || {
                let _second = LibLock::acquire(&lib).unwrap();
                tx.send(()).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "took a held lock"
        );
        drop(first);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        waiter.join().unwrap();
    }

    #[test]
    fn markers_are_refreshed_and_compile_lock_moves_forward() {
        let root = tempfile::tempdir().unwrap();
        let (lib, deps) = (root.path().join("lib"), root.path().join("deps"));
        std::fs::create_dir_all(deps.join("dep")).unwrap();
        install_into(&lib, &deps, &artifact("dep", "one", true), "k1").unwrap();
        // `mix deps.get` again: Elixir 1.18 deletes compile.fetch, 1.14 touches .fetch.
        std::fs::remove_file(lib.join("dep").join(FETCH_MARKER)).unwrap();
        std::fs::remove_file(lib.join("dep").join(ELIXIR_SCM_MARKER)).unwrap();
        refresh_markers(&lib, "dep", &deps.join("dep/.fetch"), Some(b"scm")).unwrap();
        assert!(lib.join("dep").join(FETCH_MARKER).is_file());
        assert_eq!(
            std::fs::read(lib.join("dep").join(ELIXIR_SCM_MARKER)).unwrap(),
            b"scm"
        );
        let later = SystemTime::now() + Duration::from_secs(50);
        File::create(deps.join("dep/.fetch"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        refresh_markers(&lib, "dep", &deps.join("dep/.fetch"), None).unwrap();
        assert!(secs(mtime(&lib.join("dep").join(FETCH_MARKER)).unwrap()) >= secs(later));

        let lock = root.path().join("_build/dev/lib/app/.mix/compile.lock");
        touch_compile_lock(&lock).unwrap();
        File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        let first = mtime(&lock).unwrap();
        touch_compile_lock(&lock).unwrap();
        assert!(mtime(&lock).unwrap() > first);
        assert!(mtime(&lock).unwrap() <= SystemTime::now());
    }
}
