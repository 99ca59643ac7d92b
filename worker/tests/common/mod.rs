//! A mirror to drive workers against, started in this process: the fixture packages
//! (`tests/fixtures/packages`, plus slow_ex) as a signed static repository upstream, and
//! `precomp serve`'s server (`precomp_server`) on loopback with its own data directory. The
//! worker under test talks to it over HTTP as to any mirror.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use precomp_artifacts::{open_metadata, Artifacts, ArtifactsConfig};
use precomp_proto::api::{JobKind, MissReport};
use precomp_proto::buildkey::{KeyParts, KeyToolchain, Target};
use precomp_proto::lock::MixLock;
use precomp_proto::manager::{lock_roots, mix_managers, Converger};
use precomp_proto::manifest::{ArtifactPublicKey, ArtifactSigningKey};
use precomp_proto::registry::{RepoPublicKey, RepoSigningKey};
use precomp_registry::mirror::{Mirror, MirrorConfig};
use precomp_registry::static_repo;
use precomp_sandbox::Sandbox;
pub use precomp_testkit::{copy_dir, data_dir, workspace};
use precomp_worker::{
    JobReport, Observer, RunEnd, Worker, WorkerConfig, WorkerError, WorkerToolchain,
};

/// The signed static repository of the fixture packages and slow_ex, and the builder's and
/// the auditor's keys: made once per test process.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub repo_key: RepoPublicKey,
    pub builder: ArtifactSigningKey,
    pub auditor: ArtifactSigningKey,
}

impl Fixture {
    pub fn get() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let dir = data_dir("precomp-worker-lib-fixture-");
            let packages = dir.path().join("packages");
            copy_dir(&workspace().join("tests/fixtures/packages"), &packages);
            // slow_ex compiles for a minute: a build to stop.
            copy_dir(
                &workspace().join("tests/fixtures/slow/slow_ex"),
                &packages.join("slow_ex"),
            );
            let key = RepoSigningKey::generate(2048).unwrap();
            let repo = dir.path().join("repo");
            static_repo::build(&packages, "hexpm", &key, &repo).unwrap();
            Fixture {
                repo,
                repo_key: key.public_key(),
                builder: ArtifactSigningKey::generate(),
                auditor: ArtifactSigningKey::generate(),
                _dir: dir,
            }
        })
    }

    /// The mix.lock of `releases` (NAME@VERSION), as `precomp repo lock` writes it.
    pub fn lock(&self, releases: &[&str]) -> String {
        let pins: Vec<(String, String)> = releases
            .iter()
            .map(|r| {
                let (name, version) = r.split_once('@').unwrap();
                (name.to_string(), version.to_string())
            })
            .collect();
        static_repo::lock_for(&self.repo, &self.repo_key, "hexpm", &pins)
            .unwrap()
            .to_text()
            .unwrap()
    }
}

/// `precomp serve` of the fixture repository, in this process, trusting the fixture's
/// auditor key; stopped when dropped.
pub struct TestMirror {
    pub url: String,
    pub data: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestMirror {
    pub fn start() -> TestMirror {
        let fixture = Fixture::get();
        let data = data_dir("precomp-worker-lib-mirror-");
        let mut config = MirrorConfig::defaults(data.path().join("mirror"));
        config.upstream = format!("file://{}", fixture.repo.display());
        config.upstream_key = fixture.repo_key.clone();
        let artifacts = Artifacts::open(ArtifactsConfig {
            data: data.path().join("artifacts"),
            auditor_keys: vec![fixture.auditor.public_key()],
            ..ArtifactsConfig::default()
        })
        .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let url = runtime.block_on(async {
            let mirror = Mirror::open(config).unwrap();
            let listeners = precomp_server::Listeners::bind("127.0.0.1:0".parse().unwrap(), None)
                .await
                .unwrap();
            let url = format!("http://{}", listeners.main.local_addr().unwrap());
            tokio::spawn(precomp_server::serve(
                precomp_server::AppState::new(mirror, artifacts),
                precomp_server::ServerConfig::default(),
                listeners,
                async {
                    let _ = stopped.await;
                },
            ));
            url
        });
        TestMirror {
            url,
            data,
            runtime,
            stop: Some(stop),
        }
    }

    /// A token named `name` bound to `key` (`precomp token create --key`).
    pub fn token(&self, name: &str, key: &ArtifactPublicKey) -> String {
        open_metadata(&self.data.path().join("artifacts"))
            .unwrap()
            .create_token(name, Some(key), None)
            .unwrap()
    }

    /// A client of the mirror's artifact API with `token`.
    pub fn client(&self, token: Option<&str>) -> precomp_http::artifacts::ArtifactClient {
        precomp_http::artifacts::ArtifactClient::new(&self.url, token.map(str::to_string)).unwrap()
    }

    /// Runs `future` (a client call) to completion.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Reports a miss of `package` (a package without dependencies) in `lock` for the
    /// toolchain `otp` / `elixir`, as a client that found no build: its base key.
    pub fn report_miss(&self, lock: &str, package: &str, otp: &str, elixir: &str) -> String {
        let parsed = MixLock::parse(lock).unwrap();
        let (app, entry) = parsed.hex().find(|(_, e)| e.package == package).unwrap();
        let version = entry.version.clone();
        let (_, closure) = parsed.closure_by_app(app).unwrap();
        assert!(closure.is_empty(), "{package} has dependencies");
        let infer = |_: &str| Ok::<_, std::convert::Infallible>(None);
        let managers =
            mix_managers(&parsed, &lock_roots(&parsed), Converger::Elixir1_15, infer).unwrap();
        let manager = managers[app].expect("the lock names the package's manager");
        let parts = BTreeMap::from([(
            app.to_string(),
            KeyParts {
                manager,
                target: Some(Target::Any),
                compile_env: Vec::new(),
            },
        )]);
        let toolchain = KeyToolchain {
            otp_major: otp.into(),
            elixir: elixir.into(),
            mix_env: "prod".into(),
        };
        let inputs = parsed
            .inputs_bottom_up(app, Target::Any, &parts, &toolchain)
            .unwrap();
        let base_key = inputs.base_key().unwrap().to_string();
        let report: MissReport = serde_json::from_value(serde_json::json!({
            "package": package, "version": version, "base_key": base_key,
            "reason": "not built", "otp_major": otp, "elixir": elixir, "mix_env": "prod",
            "target": "any", "lock": lock, "manager": manager.to_string(),
            "compile_env": [], "closure": [],
        }))
        .unwrap();
        self.block_on(self.client(None).report_miss(&report))
            .unwrap();
        base_key
    }
}

impl Drop for TestMirror {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What a worker told its observer: notes and job reports, in order.
#[derive(Default)]
pub struct Recorder {
    pub notes: Mutex<Vec<String>>,
    pub reports: Mutex<Vec<JobReport>>,
}

impl Observer for Recorder {
    fn note(&self, text: &str) {
        eprintln!("{text}");
        self.notes.lock().unwrap().push(text.to_string());
    }

    fn report(&self, report: &JobReport) {
        eprintln!("{}", report.summary);
        self.reports.lock().unwrap().push(report.clone());
    }
}

impl Recorder {
    /// Whether a note contains `text`.
    pub fn noted(&self, text: &str) -> bool {
        self.notes.lock().unwrap().iter().any(|n| n.contains(text))
    }

    /// The last job report's `--json` line, as JSON.
    pub fn last_line(&self) -> serde_json::Value {
        let reports = self.reports.lock().unwrap();
        let report = reports.last().expect("a job report");
        serde_json::to_value(&report.line).unwrap()
    }
}

/// The host toolchain, as a worker's only one.
pub fn host_toolchain(data: &Path, sandbox: &Sandbox) -> WorkerToolchain {
    let (mut toolchains, warnings) =
        precomp_worker::toolchains::worker_toolchains(data, None, &[], false, sandbox).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    toolchains.remove(0)
}

/// A worker of `kind` on a fresh data directory, with `token` and `key`, doing one job with
/// a `lease_seconds` lease; its data directory and what it told its observer.
pub struct TestWorker {
    pub data: tempfile::TempDir,
    pub recorder: Arc<Recorder>,
    pub shutdown: precomp_builder::Cancel,
    config: WorkerConfig,
    key: ArtifactSigningKey,
}

impl TestWorker {
    pub fn new(
        mirror: &TestMirror,
        kind: JobKind,
        token: &str,
        key: &ArtifactSigningKey,
        lease_seconds: u64,
    ) -> TestWorker {
        let data = data_dir("precomp-worker-lib-data-");
        let mut config = WorkerConfig::new(&mirror.url, token, kind, data.path().to_path_buf());
        config.once = true;
        config.lease_seconds = lease_seconds;
        config.name = "lib-test".into();
        TestWorker {
            data,
            recorder: Arc::new(Recorder::default()),
            shutdown: precomp_builder::Cancel::new(),
            config,
            key: copy_key(key),
        }
    }

    /// Asks the mirror at `url` instead.
    pub fn with_mirror(mut self, url: &str) -> TestWorker {
        self.config.mirror = url.to_string();
        self
    }

    /// Works on jobs until the shutdown handle is cancelled, instead of on one.
    pub fn until_shutdown(mut self) -> TestWorker {
        self.config.once = false;
        self.config.poll = std::time::Duration::from_secs(1);
        self
    }

    /// Runs the worker (leases, works on one job, returns).
    pub fn run(&self) -> Result<RunEnd, WorkerError> {
        let sandbox = Sandbox::new().unwrap();
        let toolchain = host_toolchain(self.data.path(), &sandbox);
        let worker = Worker::new(
            self.config.clone(),
            &sandbox,
            vec![toolchain],
            copy_key(&self.key),
            self.shutdown.clone(),
            self.recorder.clone(),
        )?;
        worker.run()
    }

    /// The host toolchain's OTP major and Elixir.
    pub fn tuple(&self) -> (String, String) {
        let sandbox = Sandbox::new().unwrap();
        let toolchain = host_toolchain(self.data.path(), &sandbox).toolchain;
        (toolchain.otp, toolchain.elixir)
    }
}

/// Signing keys are not `Clone` (one owner each): a copy through its PEM.
pub fn copy_key(key: &ArtifactSigningKey) -> ArtifactSigningKey {
    ArtifactSigningKey::from_pem(&key.to_pem().unwrap()).unwrap()
}

/// What a [`HoldingProxy`] does to a request it holds.
#[derive(Clone, Copy, Debug)]
pub enum Hold {
    /// Passes it on, and holds the mirror's answer back this long: the mirror has acted on
    /// the request while the client still waits (or gives up).
    Answer(std::time::Duration),
    /// Never passes it on (nor anything after it on that connection): lost on the way, the
    /// client waits until it gives up.
    Request,
}

/// A TCP proxy in front of a mirror that holds the first `times` requests whose bytes
/// contain `needle` (e.g. `PUT /precomp/v1/manifests/`) as [`Hold`] says. Every other
/// exchange passes at once; [`HoldingProxy::seen`] counts the matching requests.
pub struct HoldingProxy {
    pub url: String,
    seen: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    address: std::net::SocketAddr,
}

impl HoldingProxy {
    pub fn start(upstream: &str, needle: &'static [u8], times: usize, hold: Hold) -> HoldingProxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let upstream: std::net::SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("the mirror's address");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let (stopping, counted) = (stop.clone(), seen.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(upstream) else {
                    continue;
                };
                // Set when a request to hold went up this connection: its answer (the next
                // bytes down, HTTP/1.1 answering in order) is held back.
                let matched = Arc::new(AtomicBool::new(false));
                let (mut client_in, mut server_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (up, counted) = (matched.clone(), counted.clone());
                std::thread::spawn(move || {
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = std::io::Read::read(&mut client_in, &mut buffer) {
                        let chunk = &buffer[..n];
                        if chunk.windows(needle.len()).any(|w| w == needle)
                            && counted.fetch_add(1, Ordering::SeqCst) < times
                        {
                            match hold {
                                Hold::Answer(_) => up.store(true, Ordering::SeqCst),
                                // Read on until the client gives up, forwarding nothing.
                                Hold::Request => {
                                    while let Ok(1..) =
                                        std::io::Read::read(&mut client_in, &mut buffer)
                                    {
                                    }
                                    break;
                                }
                            }
                        }
                        if std::io::Write::write_all(&mut server_out, chunk).is_err() {
                            break;
                        }
                    }
                    let _ = server_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut server_in, mut client_out) = (server, client);
                std::thread::spawn(move || {
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = std::io::Read::read(&mut server_in, &mut buffer) {
                        if let (true, Hold::Answer(delay)) =
                            (matched.swap(false, Ordering::SeqCst), hold)
                        {
                            std::thread::sleep(delay);
                        }
                        if std::io::Write::write_all(&mut client_out, &buffer[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        HoldingProxy {
            url: format!("http://{address}"),
            seen,
            stop,
            address,
        }
    }

    /// How many requests matching the needle went through so far.
    pub fn seen(&self) -> usize {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stop`.
        let _ = std::net::TcpStream::connect(self.address);
    }
}
