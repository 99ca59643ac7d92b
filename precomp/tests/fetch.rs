//! `precomp fetch` in a real Mix project (tests/fixtures/consumers/mix_app) against a real
//! `precomp serve` over loopback, with real `mix`, `elixir`, `erl` and `rebar3`.
//!
//! The artifacts are built once per run, the way the builder does but on the host: the
//! consumer's Hex deps are compiled by `mix compile` in a copy of the project (each dep in
//! its Mix env, prod, with the consumer's config), then each `_build/dev/lib/<dep>` is packed
//! with `proto::artifact`, described by a manifest with the build key's inputs from the
//! lock and the local toolchain, signed with a builder key and published through the
//! mirror's API with an upload token. Making them here lets tests tamper with, withhold or
//! re-sign single builds; one test instead builds with `precomp build` itself and checks that
//! the builder's keys are the client's.
//!
//! Mix's Hex client is not installed on these machines, so `mix deps.get` cannot run: each
//! consumer copy gets `deps/<app>` unpacked from the repository's tarballs, the `mix.lock`
//! `precomp repo lock` writes, a `.fetch` marker as `mix deps.get` leaves it, and a stand-in
//! SCM (Precomp.BuildSCM, fetchable like Hex, refusing to fetch) prepended to its mix.exs so
//! Mix accepts `{:name, "~> x"}` deps. The end-to-end test with the real Hex client runs
//! where `mix hex.info` works and says why it is skipped elsewhere.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use precomp_http::artifacts::ArtifactClient;
use precomp_proto::artifact;
use precomp_proto::buildkey::{BuildInputs, BuildKey, ClosureMember, Target};
use precomp_proto::lock::MixLock;
use precomp_proto::manager::{lock_roots, mix_managers, Converger, Manager};
use precomp_proto::manifest::{ArtifactSigningKey, Manifest, SignedManifest};
use prost::Message;
use sha2::{Digest, Sha256};

/// The consumer's Hex deps that get artifacts (plain_ex is `only: :test`).
const BUILT: &[&str] = &[
    "env_reader",
    "erl_counter",
    "mk_erl",
    "shape_user",
    "shapes",
    "tiny_nif",
];

/// Built with Elixir by Mix: they get `compile.elixir_scm`.
const MIX_BUILT: &[&str] = &["env_reader", "shape_user", "shapes", "tiny_nif"];

const RELEASES: &[&str] = &[
    "env_reader@1.0.0",
    "erl_counter@1.0.0",
    "mk_erl@1.0.0",
    "plain_ex@1.0.0",
    "shape_user@1.0.0",
    "shapes@2.0.0",
    "tiny_nif@1.0.0",
];

/// What `MixApp.run()` prints with the fixture's config.
const RUN_OUTPUT: &str = r#"%{greeting: "howdy, ci?", id: "order-1", mk_erl: "a=1&b=x", mk_erl_version: '1.0.0', nif: 42, origin: %{label: "origin", x: 0.0, y: 0.0, z: 0.0}, shapes: "2.0.0"}"#;

const RUN: &str = "IO.puts(inspect(MixApp.run(), limit: :infinity, width: 10_000))";

/// A fetchable SCM standing in for Hex.SCM where the Hex client is not installed: deps are
/// already unpacked under deps/ and never fetched (the builder's own, `Precomp.BuildSCM`).
const TEST_SCM: &str = precomp_builder::project::SCM;

// ---------------------------------------------------------------------------------------------
// The shared fixture: repository, lock, artifacts
// ---------------------------------------------------------------------------------------------

struct Build {
    artifact: Vec<u8>,
    manifest: Manifest,
}

struct Fixture {
    dir: tempfile::TempDir,
    lock: String,
    builder: ArtifactSigningKey,
    otp: String,
    elixir: String,
    native: Target,
    builds: BTreeMap<String, Build>,
    /// `compile.elixir_scm` as real Mix wrote it for each Mix-built dep.
    mix_elixir_scm: BTreeMap<String, Vec<u8>>,
}

impl Fixture {
    fn get() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(Fixture::build)
    }

    fn build() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("precomp-fetch-fixture-")
            .tempdir()
            .unwrap();
        common::remove_at_exit(dir.path());
        let root = dir.path();
        let repo_key = root.join("repo.pem");
        keygen(&repo_key);
        repo_build(
            &workspace().join("tests/fixtures/packages"),
            &repo_key,
            "hexpm",
            &root.join("repo"),
        );
        let lock_path = root.join("mix.lock");
        let mut args: Vec<String> = ["repo", "lock", "--repo"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(root.join("repo").display().to_string());
        args.push("--public-key".into());
        args.push(root.join("repo.pem.pub").display().to_string());
        args.push("--out".into());
        args.push(lock_path.display().to_string());
        args.extend(RELEASES.iter().map(|r| r.to_string()));
        ok(precomp(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ));
        let lock = std::fs::read_to_string(&lock_path).unwrap();

        let builder = ArtifactSigningKey::generate();
        std::fs::write(
            root.join("builder.pub"),
            builder.public_key().to_pem().unwrap(),
        )
        .unwrap();
        std::fs::write(root.join("builder.pem"), builder.to_pem().unwrap()).unwrap();
        let stranger = ArtifactSigningKey::generate();
        std::fs::write(
            root.join("stranger.pub"),
            stranger.public_key().to_pem().unwrap(),
        )
        .unwrap();

        let otp = capture(Command::new("erl").args([
            "-noshell",
            "-eval",
            "io:format(\"~s\", [erlang:system_info(otp_release)]), halt().",
        ]));
        let architecture = capture(Command::new("erl").args([
            "-noshell",
            "-eval",
            "io:format(\"~s\", [erlang:system_info(system_architecture)]), halt().",
        ]));
        let elixir = capture(Command::new("elixir").args(["-e", "IO.write(System.version())"]));
        let native = precomp_client::project::native_target(&architecture).unwrap();

        // Compile every dep in a copy of the consumer, as the builder would.
        let project = root.join("build");
        let fixture = Fixture {
            dir,
            lock,
            builder,
            otp,
            elixir,
            native,
            builds: BTreeMap::new(),
            mix_elixir_scm: BTreeMap::new(),
        };
        fixture.make_consumer(&project);
        let compile = fixture.mix(&project, &["compile"]);
        assert!(compile.status.success(), "{}", describe(&compile));
        let lock = MixLock::parse(&fixture.lock).unwrap();
        let mut builds: BTreeMap<String, Build> = BTreeMap::new();
        let mut scm = BTreeMap::new();
        // In closure order: each member's key is part of its dependents' keys.
        let mut order: Vec<&str> = Vec::new();
        while order.len() < BUILT.len() {
            let next = BUILT
                .iter()
                .find(|app| {
                    !order.contains(app)
                        && lock
                            .closure_by_app(app)
                            .unwrap()
                            .1
                            .keys()
                            .all(|member| order.contains(&member.as_str()))
                })
                .expect("BUILT holds every closure it needs");
            order.push(next);
        }
        // The managers Mix uses in the consumer (the one rule: its converger on the lock graph).
        let infer = |app: &str| {
            let dir = project.join("deps").join(app);
            let names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            Ok::<_, std::convert::Infallible>(Manager::infer_from_files(&names))
        };
        let managers = mix_managers(
            &lock,
            &lock_roots(&lock),
            Converger::for_elixir(&fixture.elixir),
            infer,
        )
        .unwrap();
        for app in order {
            let app_dir = project.join("_build/dev/lib").join(app);
            let packed = artifact::pack(&app_dir, &project).unwrap();
            let compile_env = precomp_builder::build::read_compile_env(
                app,
                &app_dir.join(format!("ebin/{app}.app")),
            )
            .unwrap();
            let (package, closure) = lock.closure_by_app(app).unwrap();
            let closure = closure
                .iter()
                .map(|(member, package)| ClosureMember {
                    package: package.clone(),
                    key: BuildKey::parse(&builds[member].manifest.key),
                })
                .collect();
            let inputs = BuildInputs {
                package,
                manager: managers[app].expect("Mix finds a manager for every built package"),
                closure,
                otp_major: fixture.otp.clone(),
                elixir: fixture.elixir.clone(),
                mix_env: "prod".into(),
                target: if packed.native_code {
                    fixture.native.clone()
                } else {
                    Target::Any
                },
                compile_env,
            };
            let manifest = test_manifest(
                &inputs,
                packed.output(),
                &fixture.builder.public_key().key_id(),
                None,
            );
            if MIX_BUILT.contains(&app) {
                scm.insert(
                    app.to_string(),
                    std::fs::read(app_dir.join(".mix/compile.elixir_scm")).unwrap(),
                );
            }
            builds.insert(
                app.to_string(),
                Build {
                    artifact: packed.bytes,
                    manifest,
                },
            );
        }
        assert_eq!(
            builds["tiny_nif"].manifest.target,
            fixture.native.to_string(),
            "tiny_nif holds native code"
        );
        assert!(
            !builds["env_reader"].manifest.compile_env.is_empty(),
            "env_reader records its compile env"
        );
        Fixture {
            builds,
            mix_elixir_scm: scm,
            ..fixture
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn key_of(&self, app: &str) -> &str {
        &self.builds[app].manifest.key
    }

    /// A consumer project at `dir`: the fixture with the test SCM, the lock, deps unpacked
    /// and their `.fetch` markers.
    fn make_consumer(&self, dir: &Path) {
        let source = workspace().join("tests/fixtures/consumers/mix_app");
        precomp_testkit::copy_dir(&source, dir);
        let mix_exs = std::fs::read_to_string(source.join("mix.exs")).unwrap();
        std::fs::write(dir.join("mix.exs"), format!("{TEST_SCM}{mix_exs}")).unwrap();
        std::fs::write(dir.join("mix.lock"), &self.lock).unwrap();
        for release in RELEASES {
            let (name, version) = release.split_once('@').unwrap();
            let tarball = std::fs::read(
                self.path("repo/tarballs")
                    .join(format!("{name}-{version}.tar")),
            )
            .unwrap();
            let tarball = precomp_proto::tarball::read(&tarball).unwrap();
            let dest = dir.join("deps").join(name);
            precomp_proto::tarball::unpack_contents(&tarball.contents_tar_gz, &dest).unwrap();
            std::fs::write(dest.join(".fetch"), "").unwrap();
        }
    }

    /// `mix ARGS` in `dir` (MIX_ENV=dev).
    fn mix(&self, dir: &Path, args: &[&str]) -> Output {
        let mut command = Command::new("mix");
        command
            .args(args)
            .current_dir(dir)
            .env("MIX_ENV", "dev")
            .env("MIX_REBAR3", "/usr/bin/rebar3")
            .env_remove("MIX_BUILD_PATH")
            .env_remove("MIX_TARGET");
        output_within(command, Duration::from_secs(300))
    }
}

fn capture(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        describe(&output)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// The mirror, publishing, and a proxy that can lie
// ---------------------------------------------------------------------------------------------

/// A `precomp serve` of the fixture repository with the builder's key trusted for uploads,
/// killed when dropped.
struct Mirror {
    child: Child,
    url: String,
    /// The mirror's data directory, removed after the mirror is killed.
    _data: tempfile::TempDir,
    token: String,
    log: tempfile::NamedTempFile,
}

impl Mirror {
    fn start(fixture: &Fixture) -> Mirror {
        let data = tempfile::tempdir().unwrap();
        let mut create = precomp_command();
        create.arg("--data").arg(data.path()).args([
            "token",
            "create",
            "--name",
            "fixture-builder",
        ]);
        let token = ok(output_within(create, Duration::from_secs(30)))
            .trim()
            .to_string();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut command = precomp_command();
        command
            .arg("--data")
            .arg(data.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(format!("file://{}", fixture.path("repo").display()))
            .arg("--upstream-key")
            .arg(fixture.path("repo.pem.pub"))
            .arg("--builder-key")
            .arg(fixture.path("builder.pub"))
            .env("PRECOMP_LOG", "info")
            .stderr(log.reopen().unwrap());
        let log_path = log.path().to_path_buf();
        let (child, url) = spawn_serve(command, move || {
            std::fs::read_to_string(&log_path).unwrap_or_default()
        });
        Mirror {
            child,
            url,
            _data: data,
            token,
            log,
        }
    }

    fn client(&self) -> ArtifactClient {
        ArtifactClient::new(&self.url, Some(self.token.clone())).unwrap()
    }

    /// Publishes the builds of `apps`, each signed by the builder.
    fn publish(&self, fixture: &Fixture, apps: &[&str]) {
        let runtime = runtime();
        let client = self.client();
        for app in apps {
            let build = &fixture.builds[*app];
            let sha: [u8; 32] = Sha256::digest(&build.artifact).into();
            let signed = SignedManifest::sign(&build.manifest, &fixture.builder).encode_to_vec();
            runtime.block_on(async {
                client
                    .upload_artifact(&sha, build.artifact.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{app}: {e}\n{}", self.log()));
                client
                    .upload_manifest(&build.manifest.key, signed)
                    .await
                    .unwrap_or_else(|e| panic!("{app}: {e}\n{}", self.log()));
            });
        }
    }

    fn log(&self) -> String {
        format!(
            "mirror log:\n{}",
            std::fs::read_to_string(self.log.path()).unwrap_or_default()
        )
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What the proxy does to an answer: `(path, status, body) -> (status, body)`.
type Rule = dyn Fn(&str, u16, Vec<u8>) -> (u16, Vec<u8>) + Send + Sync;

/// A loopback HTTP proxy in front of the mirror that rewrites answers: a compromised mirror
/// or network. Every request path is recorded.
struct Proxy {
    url: String,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(
        upstream: &str,
        rule: impl Fn(&str, u16, Vec<u8>) -> (u16, Vec<u8>) + Send + Sync + 'static,
    ) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let paths = Arc::new(Mutex::new(Vec::new()));
        let rule: Arc<Rule> = Arc::new(rule);
        let upstream = upstream.to_string();
        let seen = paths.clone();
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (client, rule, upstream, seen) =
                    (client.clone(), rule.clone(), upstream.clone(), seen.clone());
                std::thread::spawn(move || {
                    let _ = proxy_one(stream, &client, &upstream, &*rule, &seen);
                });
            }
        });
        Proxy { url, paths }
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

fn proxy_one(
    mut stream: std::net::TcpStream,
    client: &reqwest::blocking::Client,
    upstream: &str,
    rule: &Rule,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let precomp_testkit::http::Request {
        method, path, body, ..
    } = precomp_testkit::http::read_request(&mut reader)?;
    seen.lock().unwrap().push(path.clone());
    let response = client
        .request(method.parse().unwrap(), format!("{upstream}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send();
    let (status, body) = match response {
        Ok(response) => (
            response.status().as_u16(),
            response.bytes().map(|b| b.to_vec()).unwrap_or_default(),
        ),
        Err(e) => (502, e.to_string().into_bytes()),
    };
    let (status, body) = rule(&path, status, body);
    write!(
        stream,
        "HTTP/1.1 {status} Proxied\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)
}

// ---------------------------------------------------------------------------------------------
// Consumers
// ---------------------------------------------------------------------------------------------

/// A fresh consumer project, as after `mix deps.get`.
struct Consumer {
    dir: tempfile::TempDir,
}

impl Consumer {
    fn new(fixture: &Fixture) -> Consumer {
        let dir = tempfile::Builder::new()
            .prefix("precomp-fetch-consumer-")
            .tempdir()
            .unwrap();
        fixture.make_consumer(dir.path());
        Consumer { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn lib(&self) -> PathBuf {
        self.path().join("_build/dev/lib")
    }

    fn fetch_command(&self, fixture: &Fixture, mirror: &str, args: &[&str]) -> Command {
        let mut command = precomp_command();
        command
            .arg("fetch")
            .arg("--project")
            .arg(self.path())
            .args(["--mirror", mirror])
            .arg("--trust")
            .arg(fixture.path("builder.pub"))
            .args(args)
            .env("MIX_ENV", "dev")
            .env_remove("HEX_MIRROR")
            .env_remove("MIX_BUILD_PATH")
            .env_remove("MIX_TARGET");
        command
    }

    /// `precomp build` of this project's lock with its config (dev), in a data directory of its
    /// own, on the toolchain `toolchain` gives (`--toolchain …`), published to `mirror` with
    /// the builder's key and token; fails the test unless it succeeds within `limit`.
    fn build_and_publish(
        &self,
        fixture: &Fixture,
        mirror: &Mirror,
        toolchain: &[&std::ffi::OsStr],
        limit: Duration,
    ) {
        let data = tempfile::tempdir().unwrap();
        let mut build = precomp_command();
        build
            .arg("--data")
            .arg(data.path())
            .args(["build", "--lock"])
            .arg(self.path().join("mix.lock"))
            .args(["--mirror", &mirror.url])
            .args(toolchain)
            .arg("--key")
            .arg(fixture.path("builder.pem"))
            .arg("--config")
            .arg(self.path().join("config"))
            .args([
                "--config-env",
                "dev",
                "--publish",
                "--token",
                &mirror.token,
                "--json",
            ]);
        let built = output_within(build, limit);
        assert!(
            built.status.success(),
            "{}\n{}",
            describe(&built),
            mirror.log()
        );
    }

    /// `precomp fetch --json ARGS`: the output, the per-dep objects by app, the summary.
    fn fetch_json(&self, fixture: &Fixture, mirror: &str, args: &[&str]) -> Fetched {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = output_within(
            self.fetch_command(fixture, mirror, &all),
            Duration::from_secs(300),
        );
        Fetched::parse(output)
    }

    fn mix(&self, fixture: &Fixture, args: &[&str]) -> Output {
        fixture.mix(self.path(), args)
    }

    /// `mix run` of MixApp.run(): its stdout's last line.
    fn run_app(&self, fixture: &Fixture) -> String {
        let output = self.mix(fixture, &["run", "-e", RUN]);
        assert!(output.status.success(), "{}", describe(&output));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }

    /// Every file under `lib/<app>` with its contents and mtime.
    fn snapshot(&self, app: &str) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
        fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, (Vec<u8>, SystemTime)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    walk(&path, root, out);
                } else {
                    out.insert(
                        path.strip_prefix(root).unwrap().to_path_buf(),
                        (std::fs::read(&path).unwrap(), meta.modified().unwrap()),
                    );
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.lib().join(app), &self.lib().join(app), &mut out);
        out
    }

    /// Staging leftovers in lib/.
    fn leftovers(&self) -> Vec<String> {
        match std::fs::read_dir(self.lib()) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".precomp-tmp-"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// A `precomp fetch --json` run.
struct Fetched {
    output: Output,
    deps: BTreeMap<String, serde_json::Value>,
    summary: serde_json::Value,
}

impl Fetched {
    fn parse(output: Output) -> Fetched {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", describe(&output)))
            })
            .collect();
        let summary = lines
            .pop()
            .unwrap_or_else(|| panic!("no output: {}", describe(&output)));
        assert_eq!(summary["summary"], true, "{}", describe(&output));
        let deps = lines
            .into_iter()
            .map(|d| (d["app"].as_str().unwrap().to_string(), d))
            .collect();
        Fetched {
            output,
            deps,
            summary,
        }
    }

    fn status(&self, app: &str) -> &str {
        self.deps[app]["status"].as_str().unwrap()
    }

    fn kind(&self, app: &str) -> &str {
        self.deps[app]["kind"].as_str().unwrap_or("")
    }

    fn reason(&self, app: &str) -> &str {
        self.deps[app]["reason"].as_str().unwrap_or("")
    }

    fn describe(&self) -> String {
        describe(&self.output)
    }
}

/// The install of `app` in `lib` is complete: exactly the manifest's files with their
/// digests, real directories, and the markers.
fn assert_installed(lib: &Path, fixture: &Fixture, app: &str) {
    let dir = lib.join(app);
    let build = &fixture.builds[app];
    for file in &build.manifest.output.as_ref().unwrap().files {
        let path = dir.join(&file.path);
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{app}: {}: {e}", path.display()));
        assert_eq!(
            Sha256::digest(&bytes).to_vec(),
            file.sha256,
            "{app}: {}",
            file.path
        );
    }
    for top in ["ebin", "priv", "include"] {
        if let Ok(meta) = std::fs::symlink_metadata(dir.join(top)) {
            assert!(meta.is_dir(), "{app}/{top} is a real directory, not a link");
        }
    }
    assert_eq!(
        std::fs::read_to_string(dir.join(".mix/precomp.key"))
            .unwrap()
            .trim(),
        build.manifest.key
    );
    assert!(dir.join(".mix/compile.fetch").is_file(), "{app}");
}

type Snapshot = BTreeMap<PathBuf, (Vec<u8>, SystemTime)>;

/// The same files with the same contents and mtimes; else the differences.
fn assert_same_files(before: &[Snapshot], after: &[Snapshot], what: &str) {
    let mut differences = Vec::new();
    for (app, (a, b)) in BUILT.iter().zip(before.iter().zip(after)) {
        for path in a.keys().chain(b.keys()) {
            match (a.get(path), b.get(path)) {
                (Some(x), Some(y)) if x == y => {}
                (x, y) => differences.push(format!(
                    "{app}/{}: {:?} -> {:?}",
                    path.display(),
                    x.map(|v| v.1),
                    y.map(|v| v.1)
                )),
            }
        }
    }
    differences.dedup();
    assert!(
        differences.is_empty(),
        "{what} changed installed files: {differences:#?}"
    );
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn fetch_installs_every_dependency_and_mix_compiles_none_of_them() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, BUILT);
    let consumer = Consumer::new(fixture);
    // `mix deps.get` just ran: Elixir 1.14 recompiles a dep whose `.fetch` is newer than its
    // `compile.fetch`, in whole seconds.
    let fetched_at = SystemTime::now();
    for app in BUILT {
        std::fs::File::options()
            .write(true)
            .open(consumer.path().join("deps").join(app).join(".fetch"))
            .unwrap()
            .set_modified(fetched_at)
            .unwrap();
    }

    let fetched = consumer.fetch_json(fixture, &mirror.url, &[]);
    assert!(fetched.output.status.success(), "{}", fetched.describe());
    for app in BUILT {
        assert_eq!(
            fetched.status(app),
            "installed",
            "{app}: {}",
            fetched.describe()
        );
        assert_eq!(fetched.deps[*app]["key"], fixture.key_of(app));
        assert_installed(&consumer.lib(), fixture, app);
        let compile_fetch = consumer.lib().join(app).join(".mix/compile.fetch");
        assert!(
            mtime(&compile_fetch) >= fetched_at,
            "{app}: compile.fetch not older than .fetch"
        );
        // compile.elixir_scm: byte for byte what Mix writes, for Mix-built deps only.
        let scm = std::fs::read(consumer.lib().join(app).join(".mix/compile.elixir_scm")).ok();
        assert_eq!(
            scm.as_ref(),
            fixture.mix_elixir_scm.get(*app),
            "{app}: compile.elixir_scm"
        );
    }
    assert_eq!(fetched.status("plain_ex"), "skipped", "only: :test");
    assert!(!consumer.lib().join("plain_ex").exists());
    assert_eq!(fetched.summary["hits"], BUILT.len());
    assert_eq!(fetched.summary["misses"], 0);
    let bytes = fetched.summary["bytes"].as_u64().unwrap();
    let artifacts: u64 = BUILT
        .iter()
        .map(|a| fixture.builds[*a].artifact.len() as u64)
        .sum();
    assert!(
        bytes >= artifacts,
        "{bytes} bytes received, artifacts are {artifacts}"
    );
    // mk_erl: Mix would symlink ebin into deps/mk_erl; the install is a real directory
    // holding the beams.
    assert!(consumer.lib().join("mk_erl/ebin/mk_erl.beam").is_file());
    assert!(!consumer
        .path()
        .join("deps/mk_erl/ebin/mk_erl.beam")
        .exists());
    assert!(consumer
        .path()
        .join("_build/dev/lib/mix_app/.mix/compile.lock")
        .is_file());

    // `mix compile` compiles the project only: no dep is compiled, no installed file changes.
    let before: Vec<_> = BUILT.iter().map(|a| consumer.snapshot(a)).collect();
    let compile = consumer.mix(fixture, &["compile"]);
    assert!(compile.status.success(), "{}", describe(&compile));
    let log = text(&compile);
    for app in BUILT {
        assert!(
            !log.contains(&format!("==> {app}")),
            "{app} compiled:\n{log}"
        );
        assert!(
            !log.contains(&format!("Generated {app} app")),
            "{app} compiled:\n{log}"
        );
        assert!(
            !log.contains(&format!("Compiling {app}")),
            "{app} compiled:\n{log}"
        );
    }
    assert!(log.contains("Generated mix_app app"), "{log}");
    let after: Vec<_> = BUILT.iter().map(|a| consumer.snapshot(a)).collect();
    assert_same_files(&before, &after, "mix compile");

    // The installed beams load and run: the NIF, the erlang.mk app, the compile-time config.
    assert_eq!(consumer.run_app(fixture), RUN_OUTPUT);
    let erl = Command::new("erl")
        .arg("-noshell")
        .arg("-pa")
        .args(BUILT.iter().map(|a| consumer.lib().join(a).join("ebin")))
        .args([
            "-eval",
            "io:format(\"~s ~s\", [mk_erl:encode([{k, 1}]), 'Elixir.EnvReader':greet(<<\"erl\">>)]), halt().",
        ])
        .env("ERL_CRASH_DUMP_SECONDS", "0")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&erl.stdout),
        "k=1 howdy, erl?",
        "{}",
        describe(&erl)
    );

    // A second fetch, with the mirror gone: everything is current, nothing is downloaded,
    // nothing is touched.
    drop(mirror);
    let again = consumer.fetch_json(fixture, "http://127.0.0.1:9", &[]);
    assert!(again.output.status.success(), "{}", again.describe());
    for app in BUILT {
        assert_eq!(again.status(app), "current", "{app}: {}", again.describe());
    }
    assert_eq!(again.summary["bytes"], 0);
    assert_eq!(again.summary["misses"], 0);
    let unchanged: Vec<_> = BUILT.iter().map(|a| consumer.snapshot(a)).collect();
    assert_same_files(&after, &unchanged, "a second fetch");
}

/// "current" means verified bytes: after a bare `mix deps.compile` rewrote `_build`, the
/// markers survive but the beams are Mix's own (their debug info holds this checkout's
/// path); the next fetch finds each changed install by content, installs the signed build
/// again and says so, and `mix compile` then compiles none of them.
#[test]
fn installs_mix_rebuilt_in_place_are_found_by_content_and_replaced() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, BUILT);
    let consumer = Consumer::new(fixture);
    let fetched = consumer.fetch_json(fixture, &mirror.url, &[]);
    for app in BUILT {
        assert_eq!(fetched.status(app), "installed", "{}", fetched.describe());
    }

    let rebuild = consumer.mix(fixture, &["deps.compile"]);
    assert!(rebuild.status.success(), "{}", describe(&rebuild));
    let rebuilt: Vec<&str> = BUILT
        .iter()
        .copied()
        .filter(|app| {
            let files = &fixture.builds[*app].manifest.output.as_ref().unwrap().files;
            files.iter().any(|file| {
                std::fs::read(consumer.lib().join(app).join(&file.path))
                    .map(|bytes| Sha256::digest(&bytes).to_vec() != file.sha256)
                    .unwrap_or(true)
            })
        })
        .collect();
    for app in MIX_BUILT {
        assert!(
            rebuilt.contains(app),
            "{app}: mix deps.compile left the signed beams: {}",
            text(&rebuild)
        );
        assert!(
            consumer.lib().join(app).join(".mix/precomp.key").is_file(),
            "{app}: the marker survives a rebuild, so it cannot be what decides"
        );
    }

    let again = consumer.fetch_json(fixture, &mirror.url, &[]);
    assert!(again.output.status.success(), "{}", again.describe());
    for app in BUILT {
        assert_installed(&consumer.lib(), fixture, app);
        let line = &again.deps[*app];
        if rebuilt.contains(app) {
            assert_eq!(line["status"], "installed", "{app}: {line}");
            let replaced = line["replaced"].as_str().unwrap_or_default();
            assert!(replaced.contains("Mix rebuilt it"), "{app}: {line}");
        } else {
            assert_eq!(line["status"], "current", "{app}: {line}");
        }
    }
    // Rebuilt by Mix once more: the human report says so, one line each.
    let rebuild = consumer.mix(fixture, &["deps.compile"]);
    assert!(rebuild.status.success(), "{}", describe(&rebuild));
    let human = output_within(
        consumer.fetch_command(fixture, &mirror.url, &[]),
        Duration::from_secs(120),
    );
    assert!(human.status.success(), "{}", describe(&human));
    let stdout = String::from_utf8_lossy(&human.stdout);
    for app in MIX_BUILT {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("replaced   {app} "))
                    && l.contains("Mix rebuilt it")),
            "{app}: {}",
            describe(&human)
        );
    }
    for app in BUILT {
        assert_installed(&consumer.lib(), fixture, app);
    }

    let compile = consumer.mix(fixture, &["compile"]);
    assert!(compile.status.success(), "{}", describe(&compile));
    let log = text(&compile);
    for app in BUILT {
        assert!(
            !log.contains(&format!("==> {app}")),
            "{app} compiled:\n{log}"
        );
    }
    assert_eq!(consumer.run_app(fixture), RUN_OUTPUT);
}

#[test]
fn artifacts_from_precomp_build_are_hits_and_mix_compiles_none_of_them() {
    // The builder's keys and the client's agree: `precomp build` of the consumer's lock,
    // with its config, published to the mirror; then `precomp fetch` finds every one.
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    let consumer = Consumer::new(fixture);
    consumer.build_and_publish(
        fixture,
        &mirror,
        &["--toolchain".as_ref(), "host".as_ref()],
        Duration::from_secs(600),
    );

    let fetched = consumer.fetch_json(fixture, &mirror.url, &["--require-all"]);
    assert!(fetched.output.status.success(), "{}", fetched.describe());
    for app in BUILT {
        assert_eq!(
            fetched.status(app),
            "installed",
            "{app}: {}",
            fetched.describe()
        );
    }
    let compile = consumer.mix(fixture, &["compile"]);
    let log = text(&compile);
    assert!(compile.status.success(), "{log}");
    for app in BUILT {
        assert!(
            !log.contains(&format!("==> {app}")),
            "{app} compiled:\n{log}"
        );
    }
    assert_eq!(consumer.run_app(fixture), RUN_OUTPUT);
}

/// A directory of `elixir`, `mix` and `erl` commands that run those of the toolchain image
/// at `root` over this machine's filesystem (bubblewrap puts the image's /usr and /etc in
/// place, every other path is the host's), so a project and precomp see the same paths.
fn toolchain_commands(root: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for name in ["elixir", "mix", "erl"] {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nexec bwrap --bind / / --dev-bind /dev /dev --ro-bind '{root}/usr' /usr \
                 --ro-bind '{root}/etc' /etc -- /usr/bin/{name} \"$@\"\n",
                root = root.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn with_elixir_1_18_the_markers_keep_mix_from_compiling_installed_deps() {
    // The trixie image (OTP 27, Elixir 1.18), built first if the shared store lacks it.
    let cache = toolchain_cache();
    let trixie = precomp_testkit::toolchain::image(Suite::Trixie);
    let root = trixie.root.clone().expect("an image has a root");
    let (elixir, otp) = (trixie.elixir.clone(), trixie.otp.clone());
    let fixture = Fixture::get();
    let scratch = tempfile::tempdir().unwrap();
    let bin = scratch.path().join("bin");
    toolchain_commands(&root, &bin);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    // The wrappers were just written: a process another test thread forked meanwhile may
    // still hold one open for writing until it execs (ETXTBSY); that passes within moments.
    let mut attempts = 0;
    let version = loop {
        match Command::new(bin.join("elixir"))
            .args(["-e", "IO.write(System.version())"])
            .output()
        {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        elixir,
        "the trixie image's elixir does not run under bubblewrap here: {}",
        describe(&version)
    );

    // Builds for Elixir 1.18 by the builder, with the consumer's config.
    let mirror = Mirror::start(fixture);
    let consumer = Consumer::new(fixture);
    consumer.build_and_publish(
        fixture,
        &mirror,
        &[
            "--toolchain".as_ref(),
            trixie.id.as_ref(),
            "--toolchains".as_ref(),
            cache.as_os_str(),
        ],
        Duration::from_secs(900),
    );

    // precomp fetch with Elixir 1.18 on PATH: its keys, its markers.
    let mut fetch = consumer.fetch_command(fixture, &mirror.url, &["--json", "--require-all"]);
    fetch.env("PATH", &path);
    let fetched = Fetched::parse(output_within(fetch, Duration::from_secs(300)));
    assert!(fetched.output.status.success(), "{}", fetched.describe());
    assert_eq!(fetched.summary["elixir"], elixir.as_str());
    assert_eq!(fetched.summary["otp"], otp.as_str());
    for app in BUILT {
        assert_eq!(
            fetched.status(app),
            "installed",
            "{app}: {}",
            fetched.describe()
        );
    }
    let scm = Command::new(bin.join("erl"))
        .args([
            "-noshell",
            "-eval",
            "{ok, B} = file:read_file(\"_build/dev/lib/shapes/.mix/compile.elixir_scm\"), \
             io:format(\"~0p\", [binary_to_term(B)]), halt().",
        ])
        .current_dir(consumer.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&scm.stdout),
        format!("{{1,{{<<\"{elixir}\">>,\"{otp}\"}},'Elixir.Precomp.BuildSCM'}}"),
        "{}",
        describe(&scm)
    );

    // Mix 1.18 compiles none of them (compile.fetch present, the .app's compile_env valid
    // under this config, compile.elixir_scm equal to its own), and the app runs.
    let mix = |args: &[&str]| {
        let mut command = Command::new("mix");
        command
            .args(args)
            .current_dir(consumer.path())
            .env("PATH", &path)
            .env("MIX_ENV", "dev")
            .env("MIX_REBAR3", "/usr/bin/rebar3");
        output_within(command, Duration::from_secs(300))
    };
    let compile = mix(&["compile"]);
    let log = text(&compile);
    assert!(compile.status.success(), "{log}");
    for app in BUILT {
        assert!(
            !log.contains(&format!("==> {app}")),
            "{app} compiled:\n{log}"
        );
    }
    assert!(log.contains("Generated mix_app app"), "{log}");
    let run = mix(&["run", "-e", RUN]);
    assert!(text(&run).contains("nif: 42"), "{}", describe(&run));
    assert!(
        text(&run).contains("greeting: \"howdy, ci?\""),
        "{}",
        describe(&run)
    );
}

#[test]
fn tampered_artifacts_manifests_and_signatures_are_refused_and_nothing_is_installed() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, BUILT);
    // A mirror (or network) that changes one byte of env_reader's artifact, one byte of
    // shapes' manifest and one byte of mk_erl's signature, and answers for tiny_nif with
    // shape_user's manifest: genuine, validly signed, but another build.
    let artifact_path = format!(
        "/precomp/v1/artifacts/{}",
        hex::encode(Sha256::digest(&fixture.builds["env_reader"].artifact))
    );
    let shapes_manifest = format!("/precomp/v1/manifests/{}", fixture.key_of("shapes"));
    let mk_erl_manifest = format!("/precomp/v1/manifests/{}", fixture.key_of("mk_erl"));
    let tiny_nif_manifest = format!("/precomp/v1/manifests/{}", fixture.key_of("tiny_nif"));
    let other_build =
        SignedManifest::sign(&fixture.builds["shape_user"].manifest, &fixture.builder)
            .encode_to_vec();
    let proxy = Proxy::start(&mirror.url, move |path, status, mut body| {
        if path == artifact_path {
            let middle = body.len() / 2;
            body[middle] ^= 0x40;
        } else if path == shapes_manifest {
            let mut signed = SignedManifest::decode(&body).unwrap();
            let mut manifest = Manifest::decode(signed.manifest.as_slice()).unwrap();
            manifest.provenance.as_mut().unwrap().builder_id = "someone else".into();
            signed.manifest = manifest.encode_to_vec();
            body = signed.encode_to_vec();
        } else if path == mk_erl_manifest {
            let mut signed = SignedManifest::decode(&body).unwrap();
            signed.signatures[0].signature[10] ^= 1;
            body = signed.encode_to_vec();
        } else if path == tiny_nif_manifest {
            body = other_build.clone();
        }
        (status, body)
    });

    let consumer = Consumer::new(fixture);
    let fetched = consumer.fetch_json(fixture, &proxy.url, &[]);
    assert!(fetched.output.status.success(), "{}", fetched.describe());
    for (app, needle) in [
        ("env_reader", "does not match its signed manifest"),
        ("shapes", "bad signature"),
        ("mk_erl", "bad signature"),
        ("tiny_nif", "served manifest"),
    ] {
        assert_eq!(fetched.status(app), "miss", "{app}: {}", fetched.describe());
        assert_eq!(fetched.kind(app), "verification_failed", "{app}");
        assert!(
            fetched.reason(app).contains(needle),
            "{app}: {}",
            fetched.reason(app)
        );
        assert!(
            !consumer.lib().join(app).exists(),
            "{app}: nothing may be installed for a refused artifact"
        );
    }
    for app in ["erl_counter", "shape_user"] {
        assert_eq!(
            fetched.status(app),
            "installed",
            "{app}: {}",
            fetched.describe()
        );
    }
    assert_eq!(fetched.summary["misses"], 4);
    assert!(
        consumer.leftovers().is_empty(),
        "{:?}",
        consumer.leftovers()
    );

    // The human report names each refused dependency with its reason.
    let human = output_within(
        consumer.fetch_command(fixture, &proxy.url, &[]),
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&human.stdout);
    for app in ["env_reader", "shapes", "mk_erl", "tiny_nif"] {
        assert!(
            stdout.lines().any(|l| l.starts_with("miss")
                && l.contains(app)
                && l.contains("verification_failed")),
            "{app}:\n{stdout}"
        );
    }
    assert!(stdout.contains("precomp fetch: 2 hits"), "{stdout}");

    // Mix builds the missed ones itself; the app runs.
    let compile = consumer.mix(fixture, &["compile"]);
    assert!(compile.status.success(), "{}", describe(&compile));
    let log = text(&compile);
    assert!(log.contains("==> env_reader"), "{log}");
    assert!(!log.contains("==> shape_user"), "{log}");
    assert_eq!(consumer.run_app(fixture), RUN_OUTPUT);
}

#[test]
fn untrusted_revoked_and_too_few_signers_are_misses() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, &["shapes"]);
    let consumer = Consumer::new(fixture);
    let stranger = fixture.path("stranger.pub");
    let builder = fixture.path("builder.pub");
    let run = |args: &[&str], trust_builder: bool| {
        let mut command = precomp_command();
        command
            .arg("fetch")
            .arg("--project")
            .arg(consumer.path())
            .args(["--mirror", &mirror.url, "--json"])
            .args(args)
            .env("MIX_ENV", "dev");
        if trust_builder {
            command.arg("--trust").arg(&builder);
        }
        Fetched::parse(output_within(command, Duration::from_secs(300)))
    };
    let stranger_s = stranger.to_str().unwrap();
    let builder_s = builder.to_str().unwrap();

    let untrusted = run(&["--trust", stranger_s], false);
    assert_eq!(
        untrusted.kind("shapes"),
        "untrusted",
        "{}",
        untrusted.describe()
    );
    assert!(untrusted
        .reason("shapes")
        .contains(&fixture.builder.public_key().key_id()));

    let revoked = run(&["--trust", stranger_s, "--revoked", builder_s], true);
    assert_eq!(revoked.kind("shapes"), "revoked", "{}", revoked.describe());

    let two = run(&["--trust", stranger_s, "--min-signatures", "2"], true);
    assert_eq!(two.kind("shapes"), "policy", "{}", two.describe());
    assert!(
        two.reason("shapes").contains("needs 2"),
        "{}",
        two.reason("shapes")
    );

    let required = run(
        &["--trust", stranger_s, "--require-signer", stranger_s],
        true,
    );
    assert_eq!(required.kind("shapes"), "policy", "{}", required.describe());

    for fetched in [&untrusted, &revoked, &two, &required] {
        assert_eq!(fetched.summary["hits"], 0, "{}", fetched.describe());
        assert!(!consumer.lib().join("shapes").exists());
    }
    // Unpublished deps are plain misses.
    assert_eq!(untrusted.kind("env_reader"), "no_artifact");

    // A policy nothing can meet is an error, not a run full of misses.
    let mut command = consumer.fetch_command(fixture, &mirror.url, &["--revoked", builder_s]);
    command.arg("--json");
    let output = output_within(command, Duration::from_secs(60));
    assert!(!output.status.success());
    assert!(
        text(&output).contains("every trusted key is revoked"),
        "{}",
        describe(&output)
    );
}

#[test]
fn another_compile_env_is_a_miss_and_a_stale_install_is_left_to_mix() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, BUILT);
    let consumer = Consumer::new(fixture);
    let first = consumer.fetch_json(fixture, &mirror.url, &[]);
    assert_eq!(
        first.status("env_reader"),
        "installed",
        "{}",
        first.describe()
    );

    // The consumer changes the greeting env_reader reads at compile time.
    std::fs::write(
        consumer.path().join("config/config.exs"),
        "import Config\nconfig :env_reader, greeting: \"hi\", format: [punctuation: \"?\"]\n",
    )
    .unwrap();
    let lock_before = mtime(
        &consumer
            .path()
            .join("_build/dev/lib/mix_app/.mix/compile.lock"),
    );
    std::thread::sleep(Duration::from_millis(1100));
    let second = consumer.fetch_json(fixture, &mirror.url, &[]);
    assert_eq!(second.status("env_reader"), "miss", "{}", second.describe());
    assert_eq!(second.kind("env_reader"), "compile_env_mismatch");
    let reason = second.reason("env_reader");
    assert!(
        // In Elixir, as the project's config writes it.
        reason.contains("env_reader [:greeting]: built with \"howdy\", your config sets \"hi\""),
        "{reason}"
    );
    assert_eq!(second.deps["env_reader"]["removed_stale"], true);
    assert!(!consumer.lib().join("env_reader").exists());
    for app in ["shape_user", "shapes", "erl_counter", "mk_erl", "tiny_nif"] {
        assert_eq!(second.status(app), "current", "{app}");
    }
    assert!(
        mtime(
            &consumer
                .path()
                .join("_build/dev/lib/mix_app/.mix/compile.lock")
        ) > lock_before,
        "compile.lock is touched when a dependency changed"
    );

    // Mix compiles env_reader with the new config, and nothing else.
    let compile = consumer.mix(fixture, &["compile"]);
    assert!(compile.status.success(), "{}", describe(&compile));
    let log = text(&compile);
    assert!(log.contains("==> env_reader"), "{log}");
    for app in ["shape_user", "shapes", "tiny_nif"] {
        assert!(!log.contains(&format!("==> {app}")), "{log}");
    }
    assert!(consumer.run_app(fixture).contains("greeting: \"hi, ci?\""));

    // A Mix-compiled dependency that misses is left alone.
    let third = consumer.fetch_json(fixture, &mirror.url, &[]);
    assert_eq!(third.kind("env_reader"), "compile_env_mismatch");
    assert_eq!(third.deps["env_reader"]["removed_stale"], false);
    assert!(consumer
        .lib()
        .join("env_reader/ebin/env_reader.app")
        .is_file());
}

/// A config value no builder can be given — a reference (or a pid, a fun) — for a path a
/// package reads: the package is not buildable, the reason says which path and why, and
/// `--request-builds` does not report it (nothing is sent; the value is not plain data).
/// The rest of the project is unaffected.
#[test]
fn a_config_value_that_is_not_plain_data_is_not_buildable_and_not_reported() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, BUILT);
    let consumer = Consumer::new(fixture);
    std::fs::write(
        consumer.path().join("config/config.exs"),
        "import Config\nconfig :env_reader, greeting: make_ref(), format: [punctuation: \"?\"]\n",
    )
    .unwrap();
    let fetched = consumer.fetch_json(fixture, &mirror.url, &["--request-builds"]);
    assert!(fetched.output.status.success(), "{}", fetched.describe());
    assert_eq!(
        fetched.status("env_reader"),
        "miss",
        "{}",
        fetched.describe()
    );
    assert_eq!(fetched.kind("env_reader"), "not_buildable");
    let reason = fetched.reason("env_reader");
    assert!(
        reason.contains("env_reader [greeting]") && reason.contains("not plain data"),
        "{reason}"
    );
    assert!(fetched.deps["env_reader"].get("base_key").is_none());
    for app in ["shape_user", "shapes", "erl_counter", "mk_erl", "tiny_nif"] {
        assert_eq!(
            fetched.status(app),
            "installed",
            "{app}: {}",
            fetched.describe()
        );
    }
    assert_eq!(
        fetched.summary["requested_builds"],
        0,
        "{}",
        fetched.describe()
    );
    assert!(runtime()
        .block_on(mirror.client().misses())
        .unwrap()
        .misses
        .is_empty());
}

#[test]
fn native_code_for_another_target_is_a_miss() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, BUILT);
    let consumer = Consumer::new(fixture);
    let other = match fixture.native.to_string().as_str() {
        "aarch64-linux-gnu" => "x86_64-linux-gnu",
        _ => "aarch64-linux-gnu",
    };
    let fetched = consumer.fetch_json(fixture, &mirror.url, &["--target", other]);
    assert_eq!(
        fetched.kind("tiny_nif"),
        "other_target",
        "{}",
        fetched.describe()
    );
    let reason = fetched.reason("tiny_nif");
    assert!(
        reason.contains(&fixture.native.to_string()) && reason.contains(other),
        "{reason}"
    );
    assert!(!consumer.lib().join("tiny_nif").exists());
    // Target-independent artifacts are still used.
    assert_eq!(
        fetched.status("shapes"),
        "installed",
        "{}",
        fetched.describe()
    );
    assert_eq!(fetched.summary["misses"], 1);
}

#[test]
fn print_missing_require_all_and_request_builds_hand_misses_to_mix_and_builders() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    // shape_user is not built yet.
    mirror.publish(
        fixture,
        &["env_reader", "erl_counter", "mk_erl", "shapes", "tiny_nif"],
    );
    let consumer = Consumer::new(fixture);

    let output = output_within(
        consumer.fetch_command(
            fixture,
            &mirror.url,
            &["--print-missing", "--require-all", "--request-builds"],
        ),
        Duration::from_secs(300),
    );
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "shape_user\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("miss       shape_user 1.0.0") && stderr.contains("[no_artifact]"),
        "{stderr}"
    );
    assert!(stderr.contains("requested builds for 1 miss"), "{stderr}");

    // The mirror has the miss, with the base key the builder needs.
    let misses = runtime().block_on(mirror.client().misses()).unwrap();
    assert_eq!(misses.misses.len(), 1, "{misses:?}");
    let miss = &misses.misses[0];
    assert_eq!(
        (miss.package.as_str(), miss.version.as_str()),
        ("shape_user", "1.0.0")
    );
    assert_eq!(
        miss.base_key.as_ref(),
        Some(&fixture.builds["shape_user"].manifest.base_key)
    );
    assert_eq!(miss.target, "any");
    // With what the mirror needs to recompute it: shapes' target and its (empty) compile env.
    assert_eq!(miss.manager, "mix");
    assert_eq!(miss.closure.len(), 1, "{miss:?}");
    assert_eq!(
        (
            miss.closure[0].name.as_str(),
            miss.closure[0].target.as_deref()
        ),
        ("shapes", Some("any"))
    );
    let subset = MixLock::parse(&miss.lock).unwrap();
    assert_eq!(
        subset.entries.keys().collect::<Vec<_>>(),
        ["shape_user", "shapes"]
    );

    // The JSON summary is the last line; with everything current the exit status is 0.
    let json = consumer.fetch_json(fixture, &mirror.url, &["--require-all"]);
    assert_eq!(json.output.status.code(), Some(3));
    assert_eq!(json.summary["misses"], 1);
    assert_eq!(json.summary["hits"], 5);
    assert_eq!(json.summary["missing"], serde_json::json!(["shape_user"]));
    assert!(json.deps["shape_user"]["base_key"].is_string());

    // The deps.compile flow: compile just the misses, then nothing is left to compile.
    let deps_compile = consumer.mix(fixture, &["deps.compile", "shape_user"]);
    assert!(deps_compile.status.success(), "{}", describe(&deps_compile));
    let log = text(&deps_compile);
    assert!(log.contains("==> shape_user"), "{log}");
    for app in ["env_reader", "shapes", "tiny_nif"] {
        assert!(!log.contains(&format!("==> {app}")), "{log}");
    }
    let compile = consumer.mix(fixture, &["compile"]);
    let log = text(&compile);
    assert!(compile.status.success(), "{log}");
    for app in BUILT {
        assert!(!log.contains(&format!("==> {app}")), "{log}");
    }
    assert_eq!(consumer.run_app(fixture), RUN_OUTPUT);

    // Once published, the next fetch installs it over Mix's build; nothing is missing.
    mirror.publish(fixture, &["shape_user"]);
    let last = output_within(
        consumer.fetch_command(fixture, &mirror.url, &["--print-missing", "--require-all"]),
        Duration::from_secs(300),
    );
    assert!(last.status.success(), "{}", describe(&last));
    assert_eq!(String::from_utf8_lossy(&last.stdout), "\n");
    assert_installed(&consumer.lib(), fixture, "shape_user");
}

#[test]
fn killed_mid_install_leaves_each_dependency_as_it_was_or_fully_installed() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, BUILT);
    let consumer = Consumer::new(fixture);
    // env_reader compiled by Mix first: the fetch will replace that build.
    let compile = consumer.mix(fixture, &["deps.compile", "env_reader"]);
    assert!(compile.status.success(), "{}", describe(&compile));
    let mix_build = consumer.snapshot("env_reader");

    // Stop the fetch while env_reader's replacement is staged, then kill -9 it.
    let mut command = consumer.fetch_command(fixture, &mirror.url, &["--jobs", "1"]);
    command
        .env(precomp_client::install::PAUSE_BEFORE_SWAP_ENV, "env_reader")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("pausing before swapping env_reader") {
                let _ = tx.send(());
            }
        }
    });
    let paused = rx.recv_timeout(Duration::from_secs(120));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(paused.is_ok(), "the fetch never reached the swap");

    // env_reader is exactly Mix's build; every other dep is absent or complete.
    assert!(
        consumer.snapshot("env_reader") == mix_build,
        "env_reader changed"
    );
    for app in BUILT.iter().filter(|a| **a != "env_reader") {
        if consumer.lib().join(app).exists() {
            assert_installed(&consumer.lib(), fixture, app);
        }
    }
    assert!(
        !consumer.leftovers().is_empty(),
        "the staged install is left over"
    );
    // Mix still works on that state.
    let compile = consumer.mix(fixture, &["compile"]);
    assert!(compile.status.success(), "{}", describe(&compile));

    // Kill -9 at assorted moments: never a partial dependency.
    let started = Instant::now();
    for delay_ms in [150u64, 400, 700, 900, 1100, 1400] {
        let fresh = Consumer::new(fixture);
        let mut child = fresh
            .fetch_command(fixture, &mirror.url, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        for app in BUILT {
            if fresh.lib().join(app).exists() {
                assert_installed(&fresh.lib(), fixture, app);
            }
        }
    }
    assert!(started.elapsed() < Duration::from_secs(120));

    // The next run recovers: everything installed, no leftovers.
    let fetched = consumer.fetch_json(fixture, &mirror.url, &[]);
    assert!(fetched.output.status.success(), "{}", fetched.describe());
    for app in BUILT {
        assert!(
            ["installed", "current"].contains(&fetched.status(app)),
            "{app}: {}",
            fetched.describe()
        );
        assert_installed(&consumer.lib(), fixture, app);
    }
    assert!(
        consumer.leftovers().is_empty(),
        "{:?}",
        consumer.leftovers()
    );
    assert_eq!(consumer.run_app(fixture), RUN_OUTPUT);
}

#[test]
fn transient_mirror_errors_are_retried() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, &["shapes"]);
    // Every first request for a path fails with 503.
    let failed = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let proxy = Proxy::start(&mirror.url, move |path, status, body| {
        if failed.lock().unwrap().insert(path.to_string()) {
            (503, b"try again".to_vec())
        } else {
            (status, body)
        }
    });
    let consumer = Consumer::new(fixture);
    let fetched = consumer.fetch_json(fixture, &proxy.url, &[]);
    assert_eq!(
        fetched.status("shapes"),
        "installed",
        "{}",
        fetched.describe()
    );
    let artifact = format!(
        "/precomp/v1/artifacts/{}",
        hex::encode(Sha256::digest(&fixture.builds["shapes"].artifact))
    );
    assert_eq!(
        proxy.paths().iter().filter(|p| **p == artifact).count(),
        2,
        "{:?}",
        proxy.paths()
    );
    // With no retries, a 503 is a miss that says so.
    let consumer = Consumer::new(fixture);
    let proxy = Proxy::start(&mirror.url, |_, _, _| (503, b"down".to_vec()));
    let fetched = consumer.fetch_json(fixture, &proxy.url, &["--retries", "0"]);
    assert_eq!(
        fetched.kind("shapes"),
        "unavailable",
        "{}",
        fetched.describe()
    );
    assert!(fetched.reason("shapes").contains("503"));
}

/// Without `--mirror` or PRECOMP_MIRROR, `precomp fetch` reads from the mirror Mix's Hex uses:
/// HEX_MIRROR, and a trusted mirror (HEX_TRUSTED_MIRROR, which a mirror requiring a read
/// token needs, docs/client.md) before it, as Hex prefers it.
#[test]
fn without_a_mirror_flag_fetch_uses_the_mirror_hex_uses_a_trusted_one_first() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, &["shapes"]);
    // Nothing listens on port 9 (discard): a fetch from there is a miss, not a hit.
    let nowhere = "http://127.0.0.1:9";
    for (variables, hits) in [
        (vec![("HEX_MIRROR", mirror.url.as_str())], true),
        (
            vec![
                ("HEX_MIRROR", nowhere),
                ("HEX_TRUSTED_MIRROR", mirror.url.as_str()),
            ],
            true,
        ),
        (
            vec![
                ("HEX_MIRROR", mirror.url.as_str()),
                ("HEX_TRUSTED_MIRROR_URL", nowhere),
            ],
            false,
        ),
    ] {
        let consumer = Consumer::new(fixture);
        let mut fetch = precomp_command();
        fetch
            .args(["fetch", "--json", "--retries", "0", "--project"])
            .arg(consumer.path())
            .arg("--trust")
            .arg(fixture.path("builder.pub"))
            .env("MIX_ENV", "dev")
            .envs(variables.iter().copied());
        let fetched = Fetched::parse(output_within(fetch, Duration::from_secs(300)));
        let expected = if hits { "installed" } else { "miss" };
        assert_eq!(
            fetched.status("shapes"),
            expected,
            "{variables:?}: {}",
            fetched.describe()
        );
    }
}

/// docs/client.md's flow with Mix's real Hex client: `mix deps.get` through the mirror,
/// `precomp fetch` installs every build, `mix compile` compiles none of them. Ignored: Hex
/// comes only from hex.pm; run it where `mix local.hex` was run, or with a Hex built from its
/// source in a scratch MIX_HOME (README, Tests):
/// `MIX_HOME=DIR cargo test -p precomp --test fetch -- --ignored with_the_hex_client`.
#[test]
#[ignore = "needs Mix's Hex client, which only hex.pm provides (`mix local.hex`)"]
fn with_the_hex_client_deps_get_fetch_and_compile_end_to_end() {
    require_mix_hex_client();
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, BUILT);
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("mix_app");
    precomp_testkit::copy_dir(
        &workspace().join("tests/fixtures/consumers/mix_app"),
        &project,
    );
    let hex_home = dir.path().join("hex");
    let mix = |args: &[&str]| {
        let mut command = Command::new("mix");
        command
            .args(args)
            .current_dir(&project)
            .env("MIX_ENV", "dev")
            .env("HEX_HOME", &hex_home)
            .env("HEX_MIRROR", &mirror.url)
            .env("MIX_REBAR3", "/usr/bin/rebar3");
        // Hex settings of the environment the test runs in would win over HEX_MIRROR or
        // weaken its checks; MIX_HOME is kept: it is where the Hex archive is.
        for name in [
            "HEX_TRUSTED_MIRROR",
            "HEX_TRUSTED_MIRROR_URL",
            "HEX_MIRROR_URL",
            "HEX_UNSAFE_REGISTRY",
            "HEX_NO_VERIFY_REPO_ORIGIN",
            "HEX_OFFLINE",
            "HEX_REPOS_KEY",
        ] {
            command.env_remove(name);
        }
        output_within(command, Duration::from_secs(300))
    };
    let pem = fixture.path("repo.pem.pub");
    let set = mix(&[
        "hex.repo",
        "set",
        "hexpm",
        "--url",
        &mirror.url,
        "--public-key",
        pem.to_str().unwrap(),
    ]);
    assert!(set.status.success(), "{}", describe(&set));
    let get = mix(&["deps.get"]);
    assert!(get.status.success(), "{}", describe(&get));

    let mut fetch = precomp_command();
    fetch
        .args(["fetch", "--json", "--require-all", "--project"])
        .arg(&project)
        .arg("--trust")
        .arg(fixture.path("builder.pub"))
        .env("HEX_MIRROR", &mirror.url)
        .env("MIX_ENV", "dev");
    let fetched = Fetched::parse(output_within(fetch, Duration::from_secs(300)));
    assert!(fetched.output.status.success(), "{}", fetched.describe());
    assert_eq!(fetched.summary["hits"], BUILT.len());

    let compile = mix(&["compile"]);
    let log = text(&compile);
    assert!(compile.status.success(), "{log}");
    for app in BUILT {
        assert!(
            !log.contains(&format!("==> {app}")),
            "{app} compiled:\n{log}"
        );
    }
    let run = mix(&["run", "-e", RUN]);
    assert!(text(&run).contains(RUN_OUTPUT), "{}", describe(&run));
}

// ---------------------------------------------------------------------------------------------
// Keys that cover the closure's configuration (key format v2)
// ---------------------------------------------------------------------------------------------

/// A consumer of cfg_macro_user (and through it cfg_macro), as after `mix deps.get`, whose
/// config sets cfg_macro's label (or nothing).
fn cfg_consumer(fixture: &Fixture, dir: &Path, label: Option<&str>) {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(
        dir.join("mix.exs"),
        format!(
            "{TEST_SCM}\ndefmodule CfgApp.MixProject do\n  use Mix.Project\n\n  def project do\n    \
             [app: :cfg_app, version: \"0.1.0\", deps: [{{:cfg_macro_user, \"~> 1.0\"}}]]\n  \
             end\nend\n"
        ),
    )
    .unwrap();
    match label {
        Some(label) => set_label(dir, label),
        None => std::fs::write(dir.join("config/config.exs"), "import Config\n").unwrap(),
    }
    let releases = ["cfg_macro@1.0.0", "cfg_macro_user@1.0.0"];
    let mut args = vec![
        "repo".to_string(),
        "lock".into(),
        "--repo".into(),
        fixture.path("repo").display().to_string(),
        "--public-key".into(),
        fixture.path("repo.pem.pub").display().to_string(),
        "--out".into(),
        dir.join("mix.lock").display().to_string(),
    ];
    args.extend(releases.iter().map(|r| r.to_string()));
    ok(precomp(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    for release in releases {
        let (name, version) = release.split_once('@').unwrap();
        let tarball = std::fs::read(
            fixture
                .path("repo/tarballs")
                .join(format!("{name}-{version}.tar")),
        )
        .unwrap();
        let tarball = precomp_proto::tarball::read(&tarball).unwrap();
        let dest = dir.join("deps").join(name);
        precomp_proto::tarball::unpack_contents(&tarball.contents_tar_gz, &dest).unwrap();
        std::fs::write(dest.join(".fetch"), "").unwrap();
    }
}

fn set_label(dir: &Path, label: &str) {
    std::fs::write(
        dir.join("config/config.exs"),
        format!("import Config\nconfig :cfg_macro, label: {label:?}\n"),
    )
    .unwrap();
}

/// `precomp build ARGS --json` in `data` on the host toolchain, publishing to `mirror`:
/// its output and its lines by app.
fn build_json(
    fixture: &Fixture,
    mirror: &Mirror,
    data: &Path,
    args: &[&std::ffi::OsStr],
) -> (Output, BTreeMap<String, serde_json::Value>) {
    let mut build = precomp_command();
    build
        .arg("--data")
        .arg(data)
        .arg("build")
        .args(args)
        .args(["--mirror", &mirror.url, "--toolchain", "host", "--key"])
        .arg(fixture.path("builder.pem"))
        .args([
            "--config-env",
            "dev",
            "--publish",
            "--token",
            &mirror.token,
            "--json",
        ]);
    let output = output_within(build, Duration::from_secs(600));
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{e}: {line}\n{}", describe(&output)));
            (value["app"].as_str().unwrap().to_string(), value)
        })
        .collect();
    (output, lines)
}

/// The bytes of `path` in the artifact tarball at `artifact`.
fn artifact_file(artifact: &str, path: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(artifact).unwrap();
    precomp_proto::artifact::unpack(&bytes, &dir.path().join("app")).unwrap();
    std::fs::read(dir.path().join("app").join(path)).unwrap()
}

/// The stale case key format v2 exists for: cfg_macro reads its label from its compile-time
/// config and its macro expands it into cfg_macro_user, which reads no config. When the
/// consumer changes cfg_macro's label, both miss (cfg_macro_user because what its dependency
/// was built with changed); both are reported: cfg_macro as a config variant carrying the new
/// value, cfg_macro_user carrying it for its member, and the mirror recomputes their keys from
/// it. A builder with no config of its own builds them as config variants, with the carried
/// value, the member's before its dependent's: both get new keys (the ones the consumer
/// computes), cfg_macro_user's beam holds the new label, and the next fetch installs both.
#[test]
fn a_dependencys_config_change_misses_its_dependents_and_rebuilds_them_with_other_beams() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    let consumer = Consumer {
        dir: tempfile::Builder::new()
            .prefix("precomp-fetch-cfg-")
            .tempdir()
            .unwrap(),
    };
    cfg_consumer(fixture, consumer.path(), Some("red"));

    // Built and published with the consumer's config: both are hits.
    let red_data = tempfile::tempdir().unwrap();
    let (output, red) = build_json(
        fixture,
        &mirror,
        red_data.path(),
        &[
            "--lock".as_ref(),
            consumer.path().join("mix.lock").as_os_str(),
            "--config".as_ref(),
            consumer.path().join("config").as_os_str(),
        ],
    );
    assert!(output.status.success(), "{}", describe(&output));
    let first = consumer.fetch_json(fixture, &mirror.url, &["--require-all"]);
    assert!(first.output.status.success(), "{}", first.describe());
    for app in ["cfg_macro", "cfg_macro_user"] {
        assert_eq!(first.status(app), "installed", "{}", first.describe());
        assert_eq!(first.deps[app]["key"], red[app]["key"], "{app}");
    }

    // cfg_macro's label changes: cfg_macro misses on its config, cfg_macro_user because the
    // build of its dependency it was made against is not this project's.
    set_label(consumer.path(), "blue");
    let second = consumer.fetch_json(fixture, &mirror.url, &["--request-builds"]);
    assert_eq!(second.status("cfg_macro"), "miss", "{}", second.describe());
    assert_eq!(second.kind("cfg_macro"), "compile_env_mismatch");
    assert!(
        second
            .reason("cfg_macro")
            .contains("cfg_macro [:label]: built with \"red\", your config sets \"blue\""),
        "{}",
        second.describe()
    );
    assert_eq!(
        second.status("cfg_macro_user"),
        "miss",
        "{}",
        second.describe()
    );
    assert_eq!(second.kind("cfg_macro_user"), "no_artifact");
    let reason = second.reason("cfg_macro_user");
    assert!(
        reason.contains("builds of its dependencies")
            && reason.contains("cfg_macro")
            && reason.contains("blue"),
        "{reason}"
    );
    for app in ["cfg_macro", "cfg_macro_user"] {
        assert_eq!(second.deps[app]["removed_stale"], true, "{app}");
    }
    // The misses the mirror accepted (it recomputed their keys) carry cfg_macro's new value:
    // cfg_macro's own, a config variant named by its variant key, and cfg_macro_user's.
    assert_eq!(
        second.summary["requested_builds"],
        2,
        "{}",
        second.describe()
    );
    let misses = runtime().block_on(mirror.client().misses()).unwrap();
    assert_eq!(misses.misses.len(), 2, "{misses:?}");
    let miss_of = |package: &str| {
        misses
            .misses
            .iter()
            .find(|m| m.package == package)
            .unwrap_or_else(|| panic!("no miss of {package}: {misses:?}"))
    };
    let variant = miss_of("cfg_macro");
    assert_eq!(
        variant.variant_key.as_deref(),
        second.deps["cfg_macro"]["variant_key"].as_str(),
        "{}",
        second.describe()
    );
    assert_eq!(
        variant.compile_env[0].value.as_deref(),
        Some("<<\"blue\">>")
    );
    let miss = miss_of("cfg_macro_user");
    assert_eq!(
        miss.base_key.as_ref(),
        second.deps["cfg_macro_user"]["base_key"]
            .as_str()
            .map(str::to_string)
            .as_ref()
    );
    assert_eq!(miss.variant_key, None, "cfg_macro_user reads no config");
    assert_eq!(miss.closure[0].name, "cfg_macro");
    assert_eq!(
        miss.closure[0].compile_env[0].value.as_deref(),
        Some("<<\"blue\">>")
    );

    // A builder with no config of its own builds both as config variants, with the value
    // the misses carry, and closes them.
    let blue_data = tempfile::tempdir().unwrap();
    let (output, blue) = build_json(fixture, &mirror, blue_data.path(), &["--missing".as_ref()]);
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is a config variant"), "{stderr}");
    for app in ["cfg_macro", "cfg_macro_user"] {
        assert_eq!(blue[app]["published"], true, "{app}: {}", describe(&output));
        assert_ne!(blue[app]["key"], red[app]["key"], "{app}'s key changed");
    }
    assert_eq!(
        blue["cfg_macro"]["key"].as_str(),
        variant.variant_key.as_deref(),
        "the variant's build has the key the consumer computed"
    );
    // cfg_macro_user's own inputs did not change, its beam did: the label is in it.
    let beam = "ebin/Elixir.CfgMacroUser.beam";
    let red_beam = artifact_file(red["cfg_macro_user"]["artifact"].as_str().unwrap(), beam);
    let blue_beam = artifact_file(blue["cfg_macro_user"]["artifact"].as_str().unwrap(), beam);
    // (The literal is in the compressed LitT chunk; running it below shows it is "blue".)
    assert_ne!(
        red_beam, blue_beam,
        "cfg_macro_user's beam follows cfg_macro's config"
    );
    assert!(runtime()
        .block_on(mirror.client().misses())
        .unwrap()
        .misses
        .is_empty());

    // Both are hits again, with the new keys, and the project runs with the new label.
    let third = consumer.fetch_json(fixture, &mirror.url, &["--require-all"]);
    assert!(third.output.status.success(), "{}", third.describe());
    for app in ["cfg_macro", "cfg_macro_user"] {
        assert_eq!(third.status(app), "installed", "{}", third.describe());
        assert_eq!(third.deps[app]["key"], blue[app]["key"], "{app}");
    }
    let run = fixture.mix(
        consumer.path(),
        &["run", "-e", "IO.puts(CfgMacroUser.label())"],
    );
    let log = text(&run);
    assert!(run.status.success(), "{log}");
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).lines().last(),
        Some("blue"),
        "{log}"
    );
    assert!(
        !log.contains("==> cfg_macro"),
        "nothing of the closure compiled: {log}"
    );
}

/// Builds the mirror lists as of key format v1 (published before key format v2, still
/// served) are never used and never an error: each is a miss saying so, reported for
/// builders to rebuild; the same builds listed as format 2 are hits.
#[test]
fn builds_of_key_format_v1_are_misses_never_errors() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, BUILT);
    // The index as a mirror lists the builds it stored before key format v2.
    let proxy = Proxy::start(&mirror.url, |path, status, body| {
        if !path.starts_with("/precomp/v1/index/") || status != 200 {
            return (status, body);
        }
        let mut index: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for build in index["builds"].as_array_mut().unwrap() {
            build["key_format"] = 1.into();
        }
        (status, serde_json::to_vec(&index).unwrap())
    });
    let consumer = Consumer::new(fixture);
    let old = consumer.fetch_json(fixture, &proxy.url, &["--request-builds"]);
    assert!(old.output.status.success(), "{}", old.describe());
    for app in BUILT {
        assert_eq!(old.status(app), "miss", "{app}: {}", old.describe());
        assert_eq!(old.kind(app), "old_key_format", "{app}: {}", old.describe());
        assert!(
            old.reason(app).contains("key format v1"),
            "{}",
            old.reason(app)
        );
        assert!(!consumer.lib().join(app).exists(), "{app} installed");
    }
    // Reported for builders, each with a key the mirror recomputed and accepted.
    assert_eq!(
        old.summary["requested_builds"],
        BUILT.len(),
        "{}",
        old.describe()
    );
    assert!(!proxy
        .paths()
        .iter()
        .any(|p| p.starts_with("/precomp/v1/manifests/")));

    let current = consumer.fetch_json(fixture, &mirror.url, &["--require-all"]);
    assert!(current.output.status.success(), "{}", current.describe());
}

/// The hit-rate promise with Merkle keys: a consumer with the default config, against a
/// mirror that has built nothing, reports every miss — cfg_macro_user by its request key, as
/// cfg_macro's key cannot be known yet — builders build what was reported, and the next run
/// hits everything.
#[test]
fn after_builders_build_the_reported_misses_a_default_config_hits_everything() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    let consumer = Consumer {
        dir: tempfile::Builder::new()
            .prefix("precomp-fetch-default-")
            .tempdir()
            .unwrap(),
    };
    cfg_consumer(fixture, consumer.path(), None);

    let first = consumer.fetch_json(fixture, &mirror.url, &["--request-builds"]);
    assert!(first.output.status.success(), "{}", first.describe());
    assert_eq!(
        first.kind("cfg_macro"),
        "no_artifact",
        "{}",
        first.describe()
    );
    assert_eq!(first.kind("cfg_macro_user"), "dependency_not_built");
    assert!(
        first
            .reason("cfg_macro_user")
            .contains("needs a build of cfg_macro first"),
        "{}",
        first.describe()
    );
    assert!(first.deps["cfg_macro"]["base_key"].is_string());
    let request_key = first.deps["cfg_macro_user"]["request_key"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", first.describe()))
        .to_string();
    assert_eq!(first.summary["requested_builds"], 2, "{}", first.describe());
    let misses = runtime().block_on(mirror.client().misses()).unwrap().misses;
    assert_eq!(misses.len(), 2, "{misses:?}");
    assert!(misses
        .iter()
        .any(|m| m.request_key.as_deref() == Some(request_key.as_str())));

    let data = tempfile::tempdir().unwrap();
    let (output, built) = build_json(fixture, &mirror, data.path(), &["--missing".as_ref()]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        built["cfg_macro_user"]["published"],
        true,
        "{}",
        describe(&output)
    );
    assert!(runtime()
        .block_on(mirror.client().misses())
        .unwrap()
        .misses
        .is_empty());

    let second = consumer.fetch_json(fixture, &mirror.url, &["--require-all"]);
    assert!(second.output.status.success(), "{}", second.describe());
    assert_eq!(second.summary["hits"], 2, "{}", second.describe());
}
