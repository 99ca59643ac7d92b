//! Debian toolchain images: `debootstrap --variant=minbase`, then the toolchain packages
//! installed with apt-get inside the root, then everything that differs between two builds of
//! the same packages removed or normalised (the list is in `docs/sandbox.md`), then digested.

use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::{detect, set_mode, write_json, Built, Kind, Store, Toolchain};
use crate::bwrap::find_program;
use crate::error::{Error, Result};
use crate::run::{is_root, Sandbox};
use crate::spec::{Root, DEFAULT_SOURCE_DATE_EPOCH};
use crate::tree;

/// The packages of a toolchain image (and what `host` is expected to have).
/// `ca-certificates`: OTP 27's `httpc` fails without CA certificates, even for plain HTTP.
pub const DEFAULT_PACKAGES: &[&str] = &[
    "ca-certificates",
    "elixir",
    "erlang-base",
    "erlang-dev",
    "gcc",
    "libc6-dev",
    "make",
    "rebar3",
];
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Bumped whenever the way images are made changes, so old images are not reused for new
/// inputs.
const RECIPE: &str = "precomp-toolchain-image v1";
/// The `/etc/apt/sources.list` every image gets, whatever mirror built it.
const CANONICAL_MIRROR: &str = "http://deb.debian.org/debian";

/// The Debian suites images are made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// Debian 12: OTP 25, Elixir 1.14.0, rebar3 3.19.
    Bookworm,
    /// Debian 13: OTP 27, Elixir 1.18.3, rebar3 3.24.
    Trixie,
}

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
        }
    }
}

impl std::str::FromStr for Suite {
    type Err = Error;

    fn from_str(s: &str) -> Result<Suite> {
        match s {
            "bookworm" => Ok(Suite::Bookworm),
            "trixie" => Ok(Suite::Trixie),
            other => Err(Error::UnsupportedSuite(other.into())),
        }
    }
}

impl std::fmt::Display for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct ImageRequest {
    pub suite: Suite,
    /// Installed with `apt-get install --no-install-recommends` after debootstrap.
    pub packages: Vec<String>,
    /// Where packages come from (not part of the key: the signed InRelease is).
    pub mirror: String,
    /// Build even when an image from the same inputs exists.
    pub rebuild: bool,
}

impl ImageRequest {
    pub fn new(suite: Suite) -> ImageRequest {
        ImageRequest {
            suite,
            packages: DEFAULT_PACKAGES.iter().map(|p| p.to_string()).collect(),
            mirror: default_mirror(),
            rebuild: false,
        }
    }
}

/// `$PRECOMP_DEBIAN_MIRROR`, else the first Debian archive in the host's apt sources, else
/// deb.debian.org.
pub fn default_mirror() -> String {
    if let Ok(mirror) = std::env::var("PRECOMP_DEBIAN_MIRROR") {
        if !mirror.is_empty() {
            return mirror.trim_end_matches('/').to_string();
        }
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let name = file.to_string_lossy();
        if !(name.ends_with(".list") || name.ends_with(".sources")) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim();
            let uris: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().collect()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace()
                    .filter(|w| w.contains("://"))
                    .take(1)
                    .collect()
            } else {
                Vec::new()
            };
            if let Some(uri) = uris
                .into_iter()
                .map(|u| u.trim_end_matches('/'))
                .find(|u| u.ends_with("/debian") && u.starts_with("http"))
            {
                return uri.to_string();
            }
        }
    }
    DEFAULT_MIRROR.to_string()
}

pub(super) fn build(store: &Store, sandbox: &Sandbox, request: &ImageRequest) -> Result<Built> {
    let started = Instant::now();
    // The image is checked and used from inside the sandbox: a store the sandbox user cannot
    // reach (a data directory under /root) would otherwise fail only after minutes of
    // debootstrap.
    std::fs::create_dir_all(store.dir()).map_err(|e| Error::io(store.dir(), e))?;
    sandbox.check_readable(store.dir())?;
    let suite = request.suite.name();
    let mut packages = request.packages.clone();
    packages.sort();
    packages.dedup();
    let architecture = host_architecture()?;
    let recipe = format!(
        "{RECIPE}\nvariant=minbase\nsuite={suite}\narchitecture={architecture}\npackages={}\n",
        packages.join(" ")
    );
    let recipe_key = sha256_hex(recipe.as_bytes());
    let input_key = |release: &str| sha256_hex(format!("{recipe}release={release}\n").as_bytes());

    let release_url = format!("{}/dists/{suite}/InRelease", request.mirror);
    let release = match fetch(&release_url) {
        Ok(bytes) => sha256_hex(&bytes),
        Err(error) => {
            // Offline: the newest image of the same recipe will do.
            let mut same: Vec<Toolchain> = store
                .images()?
                .into_iter()
                .filter(|t| t.recipe_key.as_deref() == Some(&recipe_key))
                .collect();
            if request.rebuild || same.is_empty() {
                return Err(error);
            }
            tracing::warn!(%error, "mirror unreachable; reusing the image built for the same recipe");
            return Ok(Built {
                toolchain: same.pop().expect("non-empty"),
                reused: true,
                elapsed: started.elapsed(),
            });
        }
    };
    let key = input_key(&release);
    if !request.rebuild {
        if let Some(toolchain) = lookup(store, &key)? {
            return Ok(Built {
                toolchain,
                reused: true,
                elapsed: started.elapsed(),
            });
        }
    }

    if !is_root() {
        return Err(Error::NeedsRoot);
    }
    let debootstrap = find_program("debootstrap").ok_or(Error::DebootstrapMissing)?;
    if !Path::new(KEYRING).exists() {
        return Err(Error::KeyringMissing {
            path: KEYRING.into(),
        });
    }
    let locks = store.dir().join(".locks");
    std::fs::create_dir_all(&locks).map_err(|e| Error::io(&locks, e))?;
    let _lock = lock(&locks.join(format!("{recipe_key}.lock")))?;
    // Someone else may have built it while we waited.
    if !request.rebuild {
        if let Some(toolchain) = lookup(store, &key)? {
            return Ok(Built {
                toolchain,
                reused: true,
                elapsed: started.elapsed(),
            });
        }
    }

    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(store.dir())
        .map_err(|e| Error::io(store.dir(), e))?;
    set_mode(staging.path(), 0o755)?;
    let root = staging.path().join("root");
    let log_path = staging.path().join("build.log");
    let log = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
    tracing::info!(suite, mirror = %request.mirror, root = %root.display(), "debootstrap");

    let mut command = Command::new(&debootstrap);
    command
        .arg("--variant=minbase")
        .arg(format!("--arch={architecture}"))
        .arg(format!("--keyring={KEYRING}"))
        .arg(suite)
        .arg(&root)
        .arg(&request.mirror);
    build_env(&mut command);
    let result = step(command, &log, &log_path, "debootstrap");
    // debootstrap mounts /proc and /sys in the root and unmounts them on exit; make sure
    // nothing is left before anything below the root is removed.
    release_mounts(&root)?;
    result?;

    // debootstrap's package lists: apt installs from exactly the index it used.
    let used_release = used_release(&root, suite)?;
    let key = if used_release != release {
        tracing::info!(
            "the suite changed on the mirror during the build; keying by the release used"
        );
        input_key(&used_release)
    } else {
        key
    };
    write_file(
        &root.join("etc/apt/apt.conf.d/99precomp"),
        "// precomp toolchain image\nAcquire::Languages \"none\";\n\
         APT::Install-Recommends \"false\";\nAPT::Install-Suggests \"false\";\n",
    )?;
    tracing::info!(packages = %packages.join(" "), "apt-get install");
    let bwrap = crate::bwrap::find()?;
    let mut install = Command::new(&bwrap);
    install
        .arg("--bind")
        .arg(&root)
        .arg("/")
        .args(["--dev", "/dev", "--proc", "/proc"])
        .args(["--perms", "1777", "--tmpfs", "/tmp"])
        .args(["--unshare-pid", "--unshare-ipc", "--unshare-uts"])
        .args(["--hostname", "precomp", "--die-with-parent"])
        .args(["--cap-add", "ALL"]);
    if Path::new("/etc/resolv.conf").exists() {
        install.args(["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"]);
    }
    install.arg("--clearenv");
    for (name, value) in install_env() {
        install.arg("--setenv").arg(name).arg(value);
    }
    install
        .args([
            "--",
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
        ])
        .args(&packages);
    install.env_clear();
    step(install, &log, &log_path, "apt-get install in the image")?;

    let installed = installed_versions(&root, &packages)?;
    normalize(&root, request.suite)?;
    let manifest = tree::manifest(&root)?;
    let digest = manifest.digest.clone();
    write_file(&staging.path().join("manifest"), &manifest.text)?;

    let dir = store.dir().join(&digest);
    if dir.join("toolchain.json").exists() {
        tracing::info!(%digest, "an identical image is already stored");
    } else {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let staged = staging.keep();
        std::fs::rename(&staged, &dir).map_err(|e| Error::io(&dir, e))?;
        let _ = std::fs::remove_file(dir.join("build.log"));
        let versions = detect(sandbox, &Root::Image(dir.join("root")))?;
        let toolchain = Toolchain {
            id: digest[..12].to_string(),
            kind: Kind::Image,
            suite: suite.into(),
            digest: digest.clone(),
            otp: versions.otp,
            otp_full: versions.otp_full,
            elixir: versions.elixir,
            rebar3: versions.rebar3,
            architecture: versions.architecture,
            packages: installed,
            input_key: Some(key.clone()),
            recipe_key: Some(recipe_key.clone()),
            release_sha256: Some(used_release),
            files: manifest.files,
            bytes: manifest.bytes,
            root: None,
            rebar3_path: None,
            image: None,
        };
        write_json(&dir.join("toolchain.json"), &toolchain)?;
    }
    write_file(
        &store.dir().join("inputs").join(&key),
        &format!("{digest}\n"),
    )?;
    let toolchain = store
        .load_image(&digest)?
        .expect("the record was just written");
    tracing::info!(id = %toolchain.id, elapsed = ?started.elapsed(), "image built");
    Ok(Built {
        toolchain,
        reused: false,
        elapsed: started.elapsed(),
    })
}

fn lookup(store: &Store, key: &str) -> Result<Option<Toolchain>> {
    let index = store.dir().join("inputs").join(key);
    let Ok(digest) = std::fs::read_to_string(&index) else {
        return Ok(None);
    };
    store.load_image(digest.trim())
}

/// Environment for debootstrap: fixed, plus the host's proxy settings.
fn build_env(command: &mut Command) {
    command.env_clear();
    for (name, value) in install_env() {
        command.env(name, value);
    }
}

fn install_env() -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("HOME".into(), "/root".into()),
        ("DEBIAN_FRONTEND".into(), "noninteractive".into()),
        // shadow's tools (pwconv, useradd) write it as the password-change date.
        (
            "SOURCE_DATE_EPOCH".into(),
            DEFAULT_SOURCE_DATE_EPOCH.to_string(),
        ),
    ];
    for name in [
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    ] {
        if let Ok(value) = std::env::var(name) {
            env.push((name.into(), value));
        }
    }
    env
}

/// Runs one build step with its output appended to the build log.
fn step(mut command: Command, log: &std::fs::File, log_path: &Path, name: &str) -> Result<()> {
    let out = log.try_clone().map_err(|e| Error::io(log_path, e))?;
    let err = log.try_clone().map_err(|e| Error::io(log_path, e))?;
    let program = command.get_program().to_string_lossy().into_owned();
    let status = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|e| Error::Spawn { program, source: e })?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(25).collect();
    Err(Error::StepFailed {
        step: name.into(),
        status: status.to_string(),
        output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

fn host_architecture() -> Result<String> {
    let output = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .map_err(|e| Error::Dpkg(e.to_string()))?;
    let arch = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || arch.is_empty() {
        return Err(Error::Dpkg(
            "dpkg --print-architecture printed nothing".into(),
        ));
    }
    Ok(arch)
}

/// Downloads a small file with curl (which debootstrap's hosts have).
fn fetch(url: &str) -> Result<Vec<u8>> {
    let curl = find_program("curl").ok_or_else(|| Error::Fetch {
        url: url.into(),
        reason: "curl is not installed (apt-get install curl)".into(),
    })?;
    let output = Command::new(curl)
        .args(["-fsSL", "--retry", "2", "--max-time", "60", url])
        .output()
        .map_err(|e| Error::Fetch {
            url: url.into(),
            reason: e.to_string(),
        })?;
    if !output.status.success() || output.stdout.is_empty() {
        return Err(Error::Fetch {
            url: url.into(),
            reason: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output.stdout)
}

/// SHA-256 of the InRelease (or Release) debootstrap left in the root's apt lists.
fn used_release(root: &Path, suite: &str) -> Result<String> {
    let lists = root.join("var/lib/apt/lists");
    let reader = std::fs::read_dir(&lists).map_err(|e| Error::io(&lists, e))?;
    let mut candidates: Vec<PathBuf> = reader
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.ends_with(&format!("_dists_{suite}_InRelease"))
                || name.ends_with(&format!("_dists_{suite}_Release"))
        })
        .collect();
    candidates.sort();
    let path = candidates.first().ok_or_else(|| Error::StepFailed {
        step: "debootstrap".into(),
        status: "no InRelease".into(),
        output: format!("{} holds no Release file for {suite}", lists.display()),
    })?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(sha256_hex(&bytes))
}

/// Versions of the requested packages, from the image's dpkg database.
fn installed_versions(
    root: &Path,
    packages: &[String],
) -> Result<std::collections::BTreeMap<String, String>> {
    let output = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Package}\t${Version}\n"])
        .args(packages)
        .output()
        .map_err(|e| Error::Dpkg(e.to_string()))?;
    if !output.status.success() {
        return Err(Error::Dpkg(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| {
            let (name, version) = l.split_once('\t')?;
            Some((name.to_string(), version.to_string()))
        })
        .collect())
}

/// Removes or rewrites what differs between two builds of the same packages, or belongs to
/// the machine that built the image. Keep in step with docs/sandbox.md.
fn normalize(root: &Path, suite: Suite) -> Result<()> {
    // Mount points and runtime state: emptied.
    for dir in ["dev", "proc", "sys", "run", "tmp", "var/tmp"] {
        empty_dir(&root.join(dir), true)?;
    }
    // Logs, package caches and downloaded indexes: files removed, directories kept.
    for dir in [
        "var/log",
        "var/cache/apt",
        "var/lib/apt/lists",
        "var/cache/fontconfig",
        "var/cache/ldconfig",
    ] {
        empty_dir(&root.join(dir), false)?;
    }
    // Backups and host-specific files.
    for file in [
        "etc/passwd-",
        "etc/group-",
        "etc/shadow-",
        "etc/gshadow-",
        "etc/subuid-",
        "etc/subgid-",
        "etc/hostname",
        "etc/resolv.conf",
        "etc/hosts",
        "var/lib/dbus/machine-id",
    ] {
        remove_file(&root.join(file))?;
    }
    // Previous versions of dpkg's and debconf's databases.
    for dir in ["var/lib/dpkg", "var/cache/debconf"] {
        let dir = root.join(dir);
        for entry in std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
        {
            if entry.file_name().to_string_lossy().ends_with("-old") {
                remove_file(&entry.path())?;
            }
        }
    }
    // A generated id: empty means "not set yet" to systemd and dbus.
    let machine_id = root.join("etc/machine-id");
    if machine_id.symlink_metadata().is_ok() {
        remove_file(&machine_id)?;
        write_file(&machine_id, "")?;
        set_mode(&machine_id, 0o444)?;
    }
    // Password-change days: the build date unless SOURCE_DATE_EPOCH was honoured.
    let shadow = root.join("etc/shadow");
    if let Ok(text) = std::fs::read_to_string(&shadow) {
        let day = (DEFAULT_SOURCE_DATE_EPOCH / 86_400).to_string();
        let fixed: String = text
            .lines()
            .map(|line| {
                let mut fields: Vec<&str> = line.split(':').collect();
                if fields.len() > 2 && !fields[2].is_empty() {
                    fields[2] = &day;
                }
                fields.join(":") + "\n"
            })
            .collect();
        if fixed != text {
            rewrite(&shadow, &fixed)?;
        }
    }
    // The mirror that built it is not part of the image.
    rewrite(
        &root.join("etc/apt/sources.list"),
        &format!("deb {CANONICAL_MIRROR} {} main\n", suite.name()),
    )?;
    // Python bytecode compiled at install time (none in the default package set).
    remove_pycache(&root.join("usr"))?;
    Ok(())
}

/// Unmounts (lazily) every mount at or below `root`, deepest first; fails if one stays.
fn release_mounts(root: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let below = |text: &str| -> Vec<PathBuf> {
        let mut points: Vec<PathBuf> = text
            .lines()
            // "36 35 98:0 / /mnt/point rw,..." — the fifth field, octal-escaped.
            .filter_map(|line| line.split(' ').nth(4))
            .map(|field| PathBuf::from(unescape_mount_path(field)))
            .filter(|point| point.starts_with(root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        points
    };
    let read = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("/proc/self/mountinfo", e))
    };
    for point in below(&read()?) {
        tracing::warn!(mount = %point.display(), "unmounting what debootstrap left mounted");
        let c = std::ffi::CString::new(point.as_os_str().as_bytes())
            .map_err(|e| Error::io(&point, std::io::Error::other(e)))?;
        // SAFETY: umount2 reads the NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    if let Some(point) = below(&read()?).first() {
        return Err(Error::StepFailed {
            step: "cleaning up after debootstrap".into(),
            status: "a mount is left".into(),
            output: format!(
                "{} is still mounted: unmount it before removing {}",
                point.display(),
                root.display()
            ),
        });
    }
    Ok(())
}

fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(Ok(v)) = field.get(i + 1..i + 4).map(|o| u8::from_str_radix(o, 8)) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn empty_dir(dir: &Path, everything: bool) -> Result<()> {
    let Ok(reader) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in reader.flatten() {
        let path = entry.path();
        let meta = path.symlink_metadata().map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            if everything {
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            } else {
                empty_dir(&path, false)?;
            }
        } else {
            remove_file(&path)?;
        }
    }
    Ok(())
}

fn remove_pycache(dir: &Path) -> Result<()> {
    let Ok(reader) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in reader.flatten() {
        let path = entry.path();
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            if entry.file_name() == "__pycache__" {
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            } else {
                remove_pycache(&path)?;
            }
        }
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Replaces a file's content, keeping its mode and owner.
fn rewrite(path: &Path, text: &str) -> Result<()> {
    let meta = path.metadata().map_err(|e| Error::io(path, e))?;
    std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
    set_mode(path, meta.mode() & 0o7777)?;
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))
        .map_err(|e| Error::io(path, e))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An exclusive `flock` held until dropped.
pub(super) struct Lock(std::fs::File);

pub(super) fn lock(path: &Path) -> Result<Lock> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    tracing::debug!(lock = %path.display(), "waiting for the image lock");
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::io(path, error));
        }
    }
    let mut writer = &file;
    let _ = writeln!(writer, "{}", std::process::id());
    Ok(Lock(file))
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: unlock our own descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(super::unescape_mount_path(r"/a\040b\011c/d"), "/a b\tc/d");
        assert_eq!(super::unescape_mount_path(r"/x\0"), r"/x\0");
    }
}
