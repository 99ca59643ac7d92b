//! Helpers shared by the precomp CLI's integration tests: running the binary, bounded child
//! processes, and rebar3 as a real Hex client.
#![allow(dead_code)] // each test crate uses its own subset

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // each test crate uses its own subset
pub use precomp_testkit::toolchain::{toolchain_cache, Suite};
pub use precomp_testkit::{copy_dir, workspace};

/// `precomp` with none of the test environment's PRECOMP_* settings or Hex mirror variables.
pub fn precomp_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_precomp"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PRECOMP_") {
            command.env_remove(key);
        }
    }
    // `precomp fetch` takes its mirror from Hex's variables too: only a test sets them.
    for name in [
        "HEX_TRUSTED_MIRROR_URL",
        "HEX_TRUSTED_MIRROR",
        "HEX_MIRROR_URL",
        "HEX_MIRROR",
    ] {
        command.env_remove(name);
    }
    command
}

pub fn precomp(args: &[&str]) -> Output {
    precomp_command().args(args).output().expect("run precomp")
}

pub fn ok(output: Output) -> String {
    assert!(output.status.success(), "failed: {}", describe(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `command` to completion, killing it after `limit`.
pub fn output_within(command: Command, limit: Duration) -> Output {
    try_output_within(command, limit).expect("spawn")
}

/// [`output_within`], with the error if `command` cannot be started.
pub fn try_output_within(mut command: Command, limit: Duration) -> std::io::Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let status = wait_within(&mut child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{command:?} still running after {limit:?}");
    });
    Ok(Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    })
}

pub fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process run in the background with its output collected, that says when a line of its
/// stderr first contains `marker` (a worker saying it has a job, say).
pub struct Watched {
    pub child: Child,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
    marker: std::sync::mpsc::Receiver<()>,
}

impl Watched {
    pub fn spawn(mut command: Command, marker: &str) -> Watched {
        use std::io::BufRead;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
        let stderr = child.stderr.take().unwrap();
        let marker = marker.to_string();
        let (seen, seen_rx) = std::sync::mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let line = line.unwrap();
                if line.contains(&marker) {
                    let _ = seen.send(());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        Watched {
            child,
            stdout,
            stderr,
            marker: seen_rx,
        }
    }

    /// Whether the marker appeared within `limit`.
    pub fn saw_marker(&self, limit: Duration) -> bool {
        self.marker.recv_timeout(limit).is_ok()
    }

    /// Waits for the process to exit within `limit` (killing it and panicking after that);
    /// all it printed.
    pub fn finish(mut self, limit: Duration) -> Output {
        let status = wait_within(&mut self.child, limit).unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!("still running after {limit:?}");
        });
        Output {
            status,
            stdout: self.stdout.join().unwrap().into_bytes(),
            stderr: self.stderr.join().unwrap().into_bytes(),
        }
    }
}

/// The version of Mix's Hex client (`(2, 5, 1)`); panics with what to do unless it is
/// installed. It comes only from hex.pm (`mix local.hex`), which CI cannot reach, so the tests
/// that need it are `#[ignore]`d and run with `cargo test -p precomp --test FILE -- --ignored`
/// where it is installed — or with an archive built from Hex's source into a scratch
/// `MIX_HOME`, which `mix` (and so these tests) takes from the environment (README, Tests).
pub fn require_mix_hex_client() -> (u32, u32, u32) {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = Command::new("mix");
    probe
        .arg("hex.info")
        .current_dir(dir.path())
        .env("HEX_OFFLINE", "1");
    let output = try_output_within(probe, Duration::from_secs(120)).unwrap_or_else(|e| {
        panic!("`mix` cannot run ({e}): install Elixir with `apt-get install elixir`")
    });
    assert!(
        output.status.success(),
        "Mix's Hex client is not installed: install it with `mix local.hex` (from hex.pm), or \
         build it from Hex's source and install it into a MIX_HOME (README, Tests). \
         `mix hex.info` said: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    // `Hex:    2.5.1` (a `-dev` or `-rc.N` suffix is ignored).
    let stdout = String::from_utf8_lossy(&output.stdout);
    let version = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Hex:"))
        .map(|v| v.trim().split(['-', '+']).next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no `Hex:` line in `mix hex.info`: {stdout}"));
    let parts: Vec<u32> = version
        .split('.')
        .map(|part| {
            part.parse()
                .unwrap_or_else(|_| panic!("Hex version {version:?}"))
        })
        .collect();
    match parts[..] {
        [major, minor, patch] => (major, minor, patch),
        _ => panic!("Hex version {version:?} is not MAJOR.MINOR.PATCH"),
    }
}

/// `rebar3 compile` in a fresh copy of the consumer project (erl_ids, and erl_counter through
/// it), with a fresh HOME and cache, against `url` (HEX_CDN), trusting `public_key` for the
/// hexpm repository: signature and origin checks on.
pub fn rebar3_compile(url: &str, public_key: &Path) -> (Output, tempfile::TempDir) {
    rebar3_compile_with_repo_key(url, public_key, None)
}

/// [`rebar3_compile`], with `repo_key` (a mirror's token) as the hexpm repository's
/// `repo_key`, which hex_core sends as the `authorization` header.
pub fn rebar3_compile_with_repo_key(
    url: &str,
    public_key: &Path,
    repo_key: Option<&str>,
) -> (Output, tempfile::TempDir) {
    let scratch = tempfile::tempdir().unwrap();
    let project = scratch.path().join("rebar3_app");
    copy_dir(
        &workspace().join("tests/fixtures/consumers/rebar3_app"),
        &project,
    );
    let home = scratch.path().join("home");
    let config_dir = home.join(".config/rebar3");
    std::fs::create_dir_all(&config_dir).unwrap();
    let pem = std::fs::read_to_string(public_key).unwrap();
    std::fs::write(
        config_dir.join("rebar.config"),
        format!(
            "{{hex, [{{repos, [#{{name => <<\"hexpm\">>, repo_public_key => <<\"{}\">>{}}}]}}]}}.\n",
            pem.trim(),
            repo_key.map_or(String::new(), |key| format!(", repo_key => <<\"{key}\">>"))
        ),
    )
    .unwrap();
    let mut command = Command::new("rebar3");
    command
        .arg("compile")
        .current_dir(&project)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", &home)
        .env("REBAR_CACHE_DIR", scratch.path().join("cache"))
        .env("HEX_CDN", url)
        .env("LANG", "C.UTF-8");
    let output = output_within(command, Duration::from_secs(120));
    (output, scratch)
}

pub fn fetched(scratch: &Path, app: &str) -> bool {
    scratch
        .join(format!(
            "rebar3_app/_build/default/lib/{app}/ebin/{app}.beam"
        ))
        .exists()
}

/// `precomp repo keygen --out KEY`: a repository signing key, and KEY.pub beside it.
pub fn keygen(key: &Path) {
    ok(precomp(&["repo", "keygen", "--out", key.to_str().unwrap()]));
}

/// `precomp repo build`: the signed repository `name` of `packages` in `out`; its stdout.
pub fn repo_build(packages: &Path, key: &Path, name: &str, out: &Path) -> String {
    ok(precomp(&[
        "repo",
        "build",
        "--packages",
        packages.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--name",
        name,
        "--out",
        out.to_str().unwrap(),
    ]))
}

/// stdout then stderr, for assertion messages and `contains` checks.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Starts `command`, a `precomp serve --listen 127.0.0.1:0 …` whose stderr the caller has set,
/// and waits up to 30 s for its first stdout line, "precomp mirror listening on URL". Returns
/// the child and the URL. If it does not start, kills it and panics with `diagnostics()`.
pub fn spawn_serve(mut command: Command, diagnostics: impl Fn() -> String) -> (Child, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn precomp serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        // Keep reading so the mirror never writes into a closed pipe.
        for _ in lines {}
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(Ok(line))) => line,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("precomp serve did not start ({other:?}): {}", diagnostics());
        }
    };
    let url = line
        .strip_prefix("precomp mirror listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, url)
}

/// The rebar3 consumer built in `lib` (`_build/default/lib`) runs on the fetched packages.
pub fn assert_consumer_runs(lib: &Path) {
    let run = Command::new("erl")
        .args(["-noshell", "-pa"])
        .args(["erl_ids", "erl_counter", "rebar3_app"].map(|a| lib.join(a).join("ebin")))
        .args(["-eval", "io:format(\"~p\", [rebar3_app:run()]), halt()."])
        .env("ERL_CRASH_DUMP_SECONDS", "0")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "[<<\"order-1\">>,<<\"order-2\">>,<<\"order-3\">>]",
        "{}",
        describe(&run)
    );
}

/// A running `precomp serve`, killed when dropped — or, for one held in a `static` (never
/// dropped), when the test binary exits; its stderr goes to a temporary file shown if it fails
/// to start.
pub struct ServeProcess {
    child: Child,
    url: String,
    _log: tempfile::NamedTempFile,
}

impl ServeProcess {
    /// Starts `command` (a `precomp … serve --listen 127.0.0.1:0 …`) and waits for its URL.
    pub fn spawn(mut command: Command) -> ServeProcess {
        let log = tempfile::NamedTempFile::new().unwrap();
        command.stderr(log.reopen().unwrap());
        let log_path = log.path().to_path_buf();
        let (child, url) = spawn_serve(command, move || {
            std::fs::read_to_string(&log_path).unwrap_or_default()
        });
        exit_reaper::register(child.id());
        ServeProcess {
            child,
            url,
            _log: log,
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn base(&self) -> &str {
        &self.url
    }

    /// The URL of `path` (starting with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        exit_reaper::unregister(self.child.id());
    }
}

/// Removes `dir` when the test binary exits, if it is still there: a directory held in a
/// `static` (a fixture a file's tests share) is never dropped.
pub fn remove_at_exit(dir: &Path) {
    exit_reaper::remove_at_exit(dir.to_path_buf());
}

/// Kills the servers still registered when the test binary exits, then removes the
/// directories registered: statics are never dropped, and a `precomp serve` or a fixture
/// directory shared by a file's tests would otherwise outlive the run.
mod exit_reaper {
    use std::path::PathBuf;
    use std::sync::{Mutex, Once};

    static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    fn install() {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            // SAFETY: `at_exit` is an `extern "C" fn()` that does not unwind.
            let status = unsafe { libc::atexit(at_exit) };
            assert_eq!(status, 0, "atexit failed");
        });
    }

    pub fn register(pid: u32) {
        install();
        live().push(pid);
    }

    pub fn remove_at_exit(dir: PathBuf) {
        install();
        DIRS.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(dir);
    }

    /// Called once the child was waited for, so its pid can no longer name another process.
    pub fn unregister(pid: u32) {
        live().retain(|&live| live != pid);
    }

    fn live() -> std::sync::MutexGuard<'static, Vec<u32>> {
        LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    extern "C" fn at_exit() {
        for &pid in live().iter() {
            // SAFETY: plain syscall; the pid is a child not yet waited for (still ours).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let dirs = std::mem::take(&mut *DIRS.lock().unwrap_or_else(|p| p.into_inner()));
        for dir in dirs {
            // Gone already when its TempDir was dropped: nothing to do.
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `precomp_testkit::data_dir` (a directory the sandbox user can reach), removed even if the
/// test process is killed ([`remove_at_exit`]).
pub fn data_dir(prefix: &str) -> tempfile::TempDir {
    let dir = precomp_testkit::data_dir(prefix);
    remove_at_exit(dir.path());
    dir
}

/// The id of the `suite` toolchain image in the store the tests share ([`toolchain_cache`]),
/// built there first if it is missing (see `precomp_testkit::toolchain`): for `--toolchain ID
/// --toolchains DIR`, or `--data DIR toolchain run ID`.
pub fn image_id(suite: Suite) -> String {
    precomp_testkit::toolchain::image(suite).id
}

/// A signed static repository of `tests/fixtures/packages` (plus `extra` package directories
/// under `tests/fixtures`) at `repo/`, its key at `repo.pem`, and ed25519 keys
/// `keys/NAME.key` / `.pub` for each of `keys`, in a directory the sandbox user can reach.
pub struct FixtureRepo {
    pub dir: tempfile::TempDir,
}

impl FixtureRepo {
    pub fn new(prefix: &str, extra: &[&str], keys: &[&str]) -> FixtureRepo {
        let dir = data_dir(prefix);
        let packages = dir.path().join("packages");
        copy_dir(&workspace().join("tests/fixtures/packages"), &packages);
        for package in extra {
            let source = workspace().join("tests/fixtures").join(package);
            copy_dir(&source, &packages.join(source.file_name().unwrap()));
        }
        let repo_key = dir.path().join("repo.pem");
        keygen(&repo_key);
        repo_build(&packages, &repo_key, "hexpm", &dir.path().join("repo"));
        for name in keys {
            ok(precomp(&[
                "keys",
                "generate",
                "--name",
                name,
                "--out",
                dir.path().join("keys").to_str().unwrap(),
            ]));
        }
        FixtureRepo { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `keys/NAME` (e.g. `builder.key`, `builder.pub`).
    pub fn key(&self, name: &str) -> PathBuf {
        self.path("keys").join(name)
    }

    /// The repository as a `--mirror` / `--upstream` URL.
    pub fn repo_url(&self) -> String {
        format!("file://{}", self.path("repo").display())
    }

    /// `precomp repo lock` of `releases` (NAME@VERSION), written to `path`.
    pub fn write_lock(&self, path: &Path, releases: &[&str]) {
        let mut args = vec![
            "repo".to_string(),
            "lock".into(),
            "--repo".into(),
            self.path("repo").display().to_string(),
            "--public-key".into(),
            self.path("repo.pem.pub").display().to_string(),
            "--out".into(),
            path.display().to_string(),
        ];
        args.extend(releases.iter().map(|r| r.to_string()));
        ok(precomp(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ));
    }
}

/// One RSA key per test binary for the signed upstreams of [`signed_upstream`].
fn upstream_signing_key() -> &'static precomp_proto::registry::RepoSigningKey {
    static KEY: std::sync::OnceLock<precomp_proto::registry::RepoSigningKey> =
        std::sync::OnceLock::new();
    KEY.get_or_init(|| precomp_proto::registry::RepoSigningKey::generate(2048).unwrap())
}

/// A signed static upstream (`file://DIR`, repository `hexpm`) holding a verified
/// `/packages/NAME` record for every Hex release of `locks`, with the checksums the locks give
/// them: what a mirror checks misses' locks against. Returns the upstream's URL and the path
/// of its public key (for `--upstream-key`).
#[allow(dead_code)]
pub fn signed_upstream(dir: &Path, locks: &[&str]) -> (String, PathBuf) {
    use precomp_proto::lock::{LockEntry, MixLock};
    use precomp_proto::registry::{encode_signed, Package, Release};
    let key = upstream_signing_key();
    let mut packages: std::collections::BTreeMap<String, Vec<Release>> = Default::default();
    for lock in locks {
        for entry in MixLock::parse(lock).unwrap().entries.into_values() {
            let LockEntry::Hex(entry) = entry else {
                continue;
            };
            let releases = packages.entry(entry.package.clone()).or_default();
            if releases.iter().any(|r| r.version == entry.version) {
                continue;
            }
            releases.push(Release {
                version: entry.version.clone(),
                inner_checksum: hex::decode(&entry.inner_checksum).unwrap(),
                outer_checksum: entry
                    .outer_checksum
                    .as_deref()
                    .map(|c| hex::decode(c).unwrap()),
                ..Default::default()
            });
        }
    }
    std::fs::create_dir_all(dir.join("packages")).unwrap();
    for (name, releases) in packages {
        let package = Package {
            releases,
            name: name.clone(),
            repository: "hexpm".into(),
            advisories: vec![],
        };
        std::fs::write(
            dir.join("packages").join(&name),
            encode_signed(&package, key),
        )
        .unwrap();
    }
    let public = dir.join("upstream.pub");
    std::fs::write(&public, key.public_key().to_spki_pem().unwrap()).unwrap();
    (format!("file://{}", dir.display()), public)
}

/// A manifest of `inputs` whose output is `output`, with the provenance a test's builder
/// `builder_id` records (the host toolchain, a 1 ms build, `recipe`): not yet signed.
pub fn test_manifest(
    inputs: &precomp_proto::buildkey::BuildInputs,
    output: precomp_proto::manifest::Output,
    builder_id: &str,
    recipe: Option<&str>,
) -> precomp_proto::manifest::Manifest {
    let mut manifest = precomp_proto::manifest::Manifest::default();
    manifest.set_inputs(inputs).unwrap();
    manifest.output = Some(output);
    manifest.provenance = Some(precomp_proto::manifest::Provenance {
        toolchain_id: "host".into(),
        toolchain_digest: "0".repeat(64),
        builder_id: builder_id.into(),
        build_duration_ms: 1,
        build_log_sha256: vec![0; 32],
        recipe: recipe.map(str::to_string),
    });
    manifest
}
