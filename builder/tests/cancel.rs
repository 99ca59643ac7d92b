//! Cancelling a build: `run::build_lock` on the host toolchain, in the real sandbox, with the
//! fixtures `tests/fixtures/slow` (slow_ex sleeps for a minute while it compiles; slow_user
//! waits for it). Sources come from a `file://` repository made here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use precomp_builder::build::BuildContext;
use precomp_builder::config::SandboxedConfig;
use precomp_builder::managers;
use precomp_builder::run::{self, PackageResult, Progress, Reuse, Status};
use precomp_builder::sources::SourceCache;
use precomp_builder::store::BuildStore;
use precomp_builder::Cancel;
use precomp_proto::lock::{HexLockEntry, LockDep, LockEntry, MixLock};
use precomp_proto::manifest::ArtifactSigningKey;
use precomp_proto::metadata::{PackageMetadata, Requirement};
use precomp_proto::tarball::{self, PackageFile};
use precomp_sandbox::toolchain::{Store, Toolchain};
use precomp_sandbox::Sandbox;

/// A data directory with a `file://` repository of the slow fixtures, their lock, the host
/// toolchain and a signing key.
struct Setup {
    dir: tempfile::TempDir,
    lock: MixLock,
    sandbox: Sandbox,
    toolchain: Toolchain,
    key: ArtifactSigningKey,
}

/// The tests of this file one at a time: each looks for processes of its own, and a sandbox
/// the other starts (detecting the host toolchain) would be a child of this process too.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("precomp-cancel-")
            .tempdir()
            .unwrap();
        chmod_755(dir.path());
        let tarballs = dir.path().join("repo/tarballs");
        std::fs::create_dir_all(&tarballs).unwrap();
        let mut lock = MixLock::default();
        for (name, deps) in [("slow_ex", &[][..]), ("slow_user", &["slow_ex"][..])] {
            let created = package(name, deps);
            std::fs::write(tarballs.join(format!("{name}-1.0.0.tar")), &created.bytes).unwrap();
            lock.entries.insert(
                name.to_string(),
                LockEntry::Hex(HexLockEntry {
                    package: name.to_string(),
                    version: "1.0.0".into(),
                    inner_checksum: hex::encode(created.inner_checksum),
                    managers: vec!["mix".into()],
                    deps: deps
                        .iter()
                        .map(|dep| LockDep {
                            app: dep.to_string(),
                            requirement: Some(">= 1.0.0".into()),
                            package: dep.to_string(),
                            repo: "hexpm".into(),
                            optional: false,
                        })
                        .collect(),
                    repo: "hexpm".into(),
                    outer_checksum: Some(hex::encode(created.outer_checksum)),
                    extra: Vec::new(),
                }),
            );
        }
        let sandbox = Sandbox::new().expect("bwrap: apt-get install bubblewrap");
        let toolchain = Store::open(dir.path())
            .unwrap()
            .host(&sandbox)
            .expect("the host toolchain (erlang, elixir, rebar3 installed by .ci/setup)");
        Setup {
            dir,
            lock,
            sandbox,
            toolchain,
            key: ArtifactSigningKey::generate(),
        }
    }

    fn work_root(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn builds(&self) -> PathBuf {
        self.dir.path().join("builds")
    }

    /// Builds `apps` with `cancel`, `jobs` at a time, while `during` runs beside it; returns
    /// the results, the apps that started and how long the build took after `during` ended.
    fn build(
        &self,
        apps: &[&str],
        cancel: &Cancel,
        during: impl FnOnce(),
    ) -> (Vec<PackageResult>, Vec<String>, Duration) {
        let store = BuildStore::open(&self.builds()).unwrap();
        let sources = SourceCache::new(
            self.builds().join("sources"),
            &format!("file://{}", self.dir.path().join("repo").display()),
            None,
        )
        .unwrap();
        let context = BuildContext {
            sandbox: &self.sandbox,
            toolchain: &self.toolchain,
            sources: &sources,
            key: &self.key,
            mix_env: "prod".into(),
            config_env: "prod".into(),
            config: None,
            work_root: self.work_root(),
            keep_work: false,
            cancel: cancel.clone(),
        };
        let config = SandboxedConfig::new(&context);
        let trusted = [self.key.public_key()];
        let reuse = Reuse {
            store: &store,
            trusted: &trusted,
            compile_env: &config,
        };
        let progress = Started::default();
        let apps: Vec<String> = apps.iter().map(|a| a.to_string()).collect();
        let managers =
            managers::for_lock(&sources, &self.lock, None, &self.toolchain.elixir).unwrap();
        let (results, took) = std::thread::scope(|scope| {
            let build = scope.spawn(|| {
                run::build_lock(&context, &reuse, &self.lock, &managers, &apps, 2, &progress)
            });
            during();
            let after = Instant::now();
            let results = build.join().unwrap().expect("build_lock");
            (results, after.elapsed())
        });
        (results, progress.0.into_inner().unwrap(), took)
    }
}

#[derive(Default)]
struct Started(Mutex<Vec<String>>);

impl Progress for Started {
    fn started(&self, app: &str) {
        self.0.lock().unwrap().push(app.to_string());
    }
}

#[test]
fn a_build_cancelled_while_it_compiles_is_killed_at_once_and_nothing_is_stored() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let setup = Setup::new();
    let cancel = Cancel::new();
    let work_root = setup.work_root();
    let (results, started, took) = setup.build(&["slow_user"], &cancel, || {
        // Until slow_ex's module body runs in the sandbox (a minute of sleep follows).
        let deadline = Instant::now() + Duration::from_secs(120);
        while !compiling(&work_root) {
            assert!(Instant::now() < deadline, "slow_ex never started compiling");
            std::thread::sleep(Duration::from_millis(20));
        }
        let running = sandbox_processes(&work_root);
        assert!(
            running.iter().any(|p| p.contains("bwrap")),
            "no bwrap binding {}: {running:?}",
            work_root.display()
        );
        assert!(
            running.iter().any(|p| p.contains("deps.compile slow_ex")),
            "no mix deps.compile slow_ex running: {running:?}"
        );
        assert!(cancel.cancel("the lease was lost"));
    });

    eprintln!("the build ended {took:?} after the cancel");
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} after the cancel"
    );
    let by_app: BTreeMap<&str, &PackageResult> =
        results.iter().map(|r| (r.app.as_str(), r)).collect();
    assert_eq!(by_app.len(), 2, "{results:?}");
    for app in ["slow_ex", "slow_user"] {
        let result = by_app[app];
        assert!(
            matches!(&result.status, Status::Cancelled { reason } if reason == "the lease was lost"),
            "{app}: {:?}",
            result.status
        );
        assert!(result.build.is_none(), "{app} has a build");
    }
    // slow_user was queued behind slow_ex: it never started.
    assert_eq!(started, ["slow_ex"]);
    // Checked at once: no process of the sandbox survives, none is left to die later.
    let left = sandbox_processes(&work_root);
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(
        children_of_this_process().is_empty(),
        "children left: {:?}",
        children_of_this_process()
    );
    // Nothing stored, no failure recorded, no build directory left.
    for sub in ["artifacts", "manifests", "by-base", "logs", "failures"] {
        let files = files_under(&setup.builds().join(sub));
        assert!(files.is_empty(), "{sub}: {files:?}");
    }
    // (The toolchain's atom list, cached under .toolchain-atoms for every later build with
    // the toolchain, is no build's directory: docs/builder.md "One pass from a predicted atom
    // list".)
    let cache = work_root.join(".toolchain-atoms");
    let work: Vec<_> = files_under(&work_root)
        .into_iter()
        .filter(|path| !path.starts_with(&cache))
        .collect();
    assert!(work.is_empty(), "build directories left: {work:?}");
}

#[test]
fn a_cancelled_build_starts_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let setup = Setup::new();
    let cancel = Cancel::new();
    cancel.cancel("SIGTERM");
    let (results, started, _) = setup.build(&["slow_user"], &cancel, || {});
    assert!(started.is_empty(), "{started:?}");
    assert_eq!(results.len(), 2, "{results:?}");
    for result in &results {
        assert!(
            matches!(&result.status, Status::Cancelled { reason } if reason == "SIGTERM"),
            "{result:?}"
        );
    }
    assert!(files_under(&setup.builds().join("failures")).is_empty());
}

/// The marker slow_ex writes when its module body runs, in any build directory.
fn compiling(work_root: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(work_root) else {
        return false;
    };
    entries
        .flatten()
        .any(|e| e.path().join("deps/slow_ex/slow_ex.compiling").exists())
}

/// Command lines of the processes of this build's sandboxes: bwrap (its arguments name the
/// build directory, wherever it is re-parented) and the `mix deps.compile` inside — among this
/// process's descendants only, so another test run's slow_ex (another worktree, a leftover)
/// is not taken for ours.
fn sandbox_processes(work_root: &Path) -> Vec<String> {
    let root = std::fs::canonicalize(work_root)
        .unwrap_or_else(|_| work_root.to_path_buf())
        .display()
        .to_string();
    let all = processes();
    let parents: BTreeMap<u32, u32> = all.iter().map(|(pid, parent, _)| (*pid, *parent)).collect();
    let me = std::process::id();
    let descends_from_me = |mut pid: u32| {
        for _ in 0..64 {
            match parents.get(&pid) {
                Some(&parent) if parent == me => return true,
                Some(&parent) if parent > 1 => pid = parent,
                _ => return false,
            }
        }
        false
    };
    all.into_iter()
        .filter(|(pid, _, cmdline)| {
            cmdline.contains(&root)
                || (cmdline.contains("deps.compile slow_ex") && descends_from_me(*pid))
        })
        .map(|(_, _, cmdline)| cmdline)
        .collect()
}

/// Children of this test process: a bwrap left running or unreaped (a zombie) would be one.
fn children_of_this_process() -> Vec<String> {
    let me = std::process::id();
    processes()
        .into_iter()
        .filter(|(_, parent, _)| *parent == me)
        .map(|(pid, _, cmdline)| format!("{pid} {cmdline}"))
        .collect()
}

/// (pid, parent pid, command line) of every process.
fn processes() -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let parent = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = match String::from_utf8_lossy(&cmdline).replace('\0', " ").trim() {
            "" => format!("[{name}]"),
            text => text.to_string(),
        };
        out.push((pid, parent, cmdline));
    }
    out
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            files.push(entry.path());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    files
}

/// The Hex tarball of `tests/fixtures/slow/NAME` (version 1.0.0, built with mix).
fn package(name: &str, deps: &[&str]) -> tarball::CreatedTarball {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/slow")
        .join(name);
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(&root).unwrap().display().to_string();
                files.push(PackageFile::file(relative, std::fs::read(&path).unwrap()));
            }
        }
    }
    let metadata = PackageMetadata {
        name: name.into(),
        version: "1.0.0".into(),
        app: name.into(),
        description: format!("precomp test fixture {name}"),
        files: files.iter().map(|f| f.path.clone()).collect(),
        licenses: vec!["Apache-2.0".into()],
        links: Vec::new(),
        requirements: deps
            .iter()
            .map(|dep| Requirement {
                name: dep.to_string(),
                app: dep.to_string(),
                requirement: ">= 1.0.0".into(),
                optional: false,
                repository: "hexpm".into(),
            })
            .collect(),
        build_tools: vec!["mix".into()],
        elixir: Some("~> 1.14".into()),
        other: Vec::new(),
    };
    tarball::create(&metadata.to_config(), &files).unwrap()
}

fn chmod_755(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
