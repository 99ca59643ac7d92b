//! Build workers (`precomp worker`) against a real `precomp serve`: job leases over HTTP
//! (exclusive while live, back in the queue once expired, lost leases refused), and a worker
//! building a reported miss in the sandbox on the host toolchain and publishing it.
//!
//! A worker stops a job's build when it gets SIGTERM (and releases the job) or when the mirror
//! ends its lease (and leaves it).
//!
//! The fixture packages are served from a signed static repository (`precomp repo build`)
//! as the mirror's upstream; locks come from `precomp repo lock`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use precomp_proto::buildkey::{KeyParts, KeyToolchain, Target};
use precomp_proto::lock::MixLock;
use precomp_proto::manager::{lock_roots, mix_managers, Converger};
use serde_json::{json, Value};

/// The fixture repository and a builder key pair, made once per test process.
struct Fixture(FixtureRepo);

impl Fixture {
    fn get() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            // slow_ex (tests/fixtures/slow) compiles for a minute: a build to stop.
            Fixture(FixtureRepo::new(
                "precomp-worker-fixture-",
                &["slow/slow_ex"],
                &["builder"],
            ))
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.path(rel)
    }

    /// `precomp repo lock` of `releases`: the mix.lock text.
    fn lock(&self, releases: &[&str]) -> String {
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join("mix.lock");
        self.0.write_lock(&path, releases);
        std::fs::read_to_string(path).unwrap()
    }
}

/// A mirror of the fixture repository on its own data directory, with worker tokens.
struct Mirror {
    server: ServeProcess,
    _data: tempfile::TempDir,
    data: PathBuf,
}

impl Mirror {
    fn start() -> Mirror {
        let fixture = Fixture::get();
        let data = data_dir("precomp-worker-mirror-");
        let mut command = precomp_command();
        command
            .arg("--data")
            .arg(data.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(format!("file://{}", fixture.path("repo").display()))
            .arg("--upstream-key")
            .arg(fixture.path("repo.pem.pub"));
        let server = ServeProcess::spawn(command);
        Mirror {
            server,
            data: data.path().to_path_buf(),
            _data: data,
        }
    }

    /// `precomp token create --name NAME --key builder.pub` on the mirror's data.
    fn token(&self, name: &str) -> String {
        ok(precomp(&[
            "--data",
            self.data.to_str().unwrap(),
            "token",
            "create",
            "--name",
            name,
            "--key",
            Fixture::get().path("keys/builder.pub").to_str().unwrap(),
        ]))
        .trim()
        .to_string()
    }

    fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, String) {
        let client = reqwest::blocking::Client::new();
        let mut request = client.post(self.server.url(path)).body(body.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        (status, response.text().unwrap())
    }

    fn get(&self, path: &str, token: Option<&str>) -> String {
        let client = reqwest::blocking::Client::new();
        let mut request = client.get(self.server.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().unwrap();
        assert!(response.status().is_success(), "GET {path}");
        response.text().unwrap()
    }

    /// Reports a miss of `package@version` in `lock` for this toolchain, as a client that
    /// found no build of anything: its closure members' keys are unknown. Its miss key: the
    /// base key for a package without dependencies, else the request key.
    fn report_miss(&self, lock: &str, package: &str, otp: &str, elixir: &str) -> String {
        self.report_miss_with(lock, package, otp, elixir, json!([]))
    }

    /// [`Mirror::report_miss`], the package's own compile-env entries being `compile_env`.
    fn report_miss_with(
        &self,
        lock: &str,
        package: &str,
        otp: &str,
        elixir: &str,
        compile_env: Value,
    ) -> String {
        let parsed = MixLock::parse(lock).unwrap();
        let (app, entry) = parsed.hex().find(|(_, e)| e.package == package).unwrap();
        let version = entry.version.clone();
        let (_, closure) = parsed.closure_by_app(app).unwrap();
        let infer = |_: &str| Ok::<_, std::convert::Infallible>(None);
        let managers =
            mix_managers(&parsed, &lock_roots(&parsed), Converger::Elixir1_15, infer).unwrap();
        let manager = |app: &str| managers[app].expect("the lock names each package's manager");
        let mut parts = BTreeMap::new();
        parts.insert(
            app.to_string(),
            KeyParts {
                manager: manager(app),
                target: Some(Target::Any),
                compile_env: Vec::new(),
            },
        );
        let mut members = Vec::new();
        for (member, release) in &closure {
            parts.insert(
                member.clone(),
                KeyParts {
                    manager: manager(member),
                    target: None,
                    compile_env: Vec::new(),
                },
            );
            members.push(json!({"name": release.name, "version": release.version,
                                "manager": manager(member).to_string(), "compile_env": []}));
        }
        let toolchain = KeyToolchain {
            otp_major: otp.into(),
            elixir: elixir.into(),
            mix_env: "prod".into(),
        };
        let inputs = parsed
            .inputs_bottom_up(app, Target::Any, &parts, &toolchain)
            .unwrap();
        let (field, key) = if closure.is_empty() {
            ("base_key", inputs.base_key().unwrap().to_string())
        } else {
            ("request_key", inputs.request_key().unwrap().to_string())
        };
        let mut report = json!({"package": package, "version": version,
                "reason": "not built", "otp_major": otp, "elixir": elixir,
                "mix_env": "prod", "target": "any", "lock": lock,
                "manager": manager(app).to_string(), "compile_env": compile_env,
                "closure": members});
        report[field] = key.clone().into();
        let (status, text) = self.post("/precomp/v1/misses", None, &report);
        assert!(status == 200 || status == 201, "{status} {text}");
        // A miss carrying the package's own values is named by its variant key.
        let recorded: Value = serde_json::from_str(&text).unwrap();
        match recorded["variant_key"].as_str() {
            Some(variant_key) => variant_key.to_string(),
            None => key,
        }
    }
}

fn lease_body(worker: &str, otp: &str, lease_seconds: u64) -> Value {
    json!({"worker": worker, "otp_major": otp, "elixir": "1.14.0", "mix_env": "prod",
           "targets": ["any", "x86_64-linux-gnu"], "lease_seconds": lease_seconds})
}

/// Two workers never hold the same job while a lease is live; an expired lease goes back to
/// the queue; the worker that lost it gets 409 on its heartbeat; a release gives a job back.
#[test]
fn leases_are_exclusive_expire_back_to_the_queue_and_lost_leases_are_refused() {
    let fixture = Fixture::get();
    let mirror = Mirror::start();
    let w1 = mirror.token("w1");
    let w2 = mirror.token("w2");
    // Two misses (keys computed for OTP 25, Elixir 1.14.0; nothing is built here): shapes is
    // reported twice, so it is leased first.
    let lock = fixture.lock(&["shapes@1.0.0", "plain_ex@1.0.0"]);
    let shapes = mirror.report_miss(&lock, "shapes", "25", "1.14.0");
    mirror.report_miss(&lock, "shapes", "25", "1.14.0");
    let plain = mirror.report_miss(&lock, "plain_ex", "25", "1.14.0");

    let lease = |token: &str, worker: &str, seconds: u64| {
        mirror.post(
            "/precomp/v1/jobs/lease",
            Some(token),
            &lease_body(worker, "25", seconds),
        )
    };
    let leased = |answer: (u16, String)| -> Value {
        assert_eq!(answer.0, 200, "{}", answer.1);
        serde_json::from_str(&answer.1).unwrap()
    };

    // Refusals: no token, a lease length out of bounds.
    let (status, _) = mirror.post("/precomp/v1/jobs/lease", None, &lease_body("a", "25", 60));
    assert_eq!(status, 401);
    let (status, text) = lease(&w1, "a", 1);
    assert_eq!(status, 422, "{text}");
    // Another toolchain matches nothing.
    let (status, text) = mirror.post(
        "/precomp/v1/jobs/lease",
        Some(&w1),
        &lease_body("a", "26", 60),
    );
    assert_eq!(status, 204, "{text}");

    let first = leased(lease(&w1, "one", 2));
    assert_eq!(first["miss"]["base_key"], shapes.as_str(), "{first}");
    assert_eq!(first["miss"]["count"], 2);
    assert!(first["miss"]["lock"].as_str().unwrap().contains("shapes"));
    let job1 = first["job"].as_u64().unwrap();
    let second = leased(lease(&w2, "two", 60));
    assert_eq!(second["miss"]["base_key"], plain.as_str(), "{second}");
    let job2 = second["job"].as_u64().unwrap();
    assert_ne!(job1, job2);
    // Both misses are under live leases: nothing for anyone.
    let (status, text) = lease(&w2, "two", 60);
    assert_eq!(status, 204, "{text}");
    let (status, text) = lease(&w1, "one", 60);
    assert_eq!(status, 204, "{text}");

    // Only the token that leased a job renews it.
    let heartbeat = |token: &str, job: u64| {
        mirror.post(
            &format!("/precomp/v1/jobs/{job}/heartbeat"),
            Some(token),
            &json!({}),
        )
    };
    let (status, text) = heartbeat(&w1, job1);
    assert_eq!(status, 200, "{text}");
    let renewed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(renewed["base_key"], shapes.as_str());
    assert_eq!(renewed["lease_seconds"], 2);
    let (status, text) = heartbeat(&w2, job1);
    assert_eq!(status, 403, "{text}");
    let (status, _) = heartbeat(&w1, 999_999);
    assert_eq!(status, 404);

    // No heartbeat for longer than the lease: shapes goes back to the queue, to w2.
    std::thread::sleep(Duration::from_millis(2600));
    let third = leased(lease(&w2, "two", 60));
    assert_eq!(third["miss"]["base_key"], shapes.as_str(), "{third}");
    let job3 = third["job"].as_u64().unwrap();
    assert_ne!(job3, job1);
    let (status, text) = heartbeat(&w1, job1);
    assert_eq!(status, 409, "the lost lease is refused: {text}");
    assert!(text.contains("leased again"), "{text}");
    let (status, text) = lease(&w1, "one", 60);
    assert_eq!(status, 204, "w2 holds both: {text}");

    // w2 gives shapes back; w1 gets it.
    let (status, text) = mirror.post(
        &format!("/precomp/v1/jobs/{job3}/release"),
        Some(&w2),
        &json!({}),
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"released\""), "{text}");
    let (status, _) = heartbeat(&w2, job3);
    assert_eq!(status, 409, "a released job is not renewed");
    let fourth = leased(lease(&w1, "one", 60));
    assert_eq!(fourth["miss"]["base_key"], shapes.as_str(), "{fourth}");

    // Closing the miss (a failure record) ends the job: its heartbeat is 409.
    let (status, text) = mirror.post(
        "/precomp/v1/failures",
        Some(&w2),
        &json!({"package": "plain_ex", "version": "1.0.0", "base_key": plain,
                "toolchain_id": "host", "log": "boom"}),
    );
    assert!(status == 201 || status == 200, "{text}");
    let (status, text) = heartbeat(&w2, job2);
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("closed"), "{text}");
}

/// The host toolchain's OTP major and Elixir version, as `precomp toolchain list` gives them.
fn host_toolchain(data: &Path) -> (String, String) {
    let listed = ok(precomp(&[
        "--data",
        data.to_str().unwrap(),
        "toolchain",
        "list",
        "--json",
    ]));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let host = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "host")
        .unwrap()
        .clone();
    (
        host["otp"].as_str().unwrap().to_string(),
        host["elixir"].as_str().unwrap().to_string(),
    )
}

fn worker(data: &Path, mirror: &Mirror, token: &str, extra: &[&str]) -> std::process::Output {
    output_within(
        worker_command(data, mirror, token, extra),
        Duration::from_secs(600),
    )
}

/// `precomp worker --once` against `mirror`, signing with the fixture's builder key.
fn worker_command(data: &Path, mirror: &Mirror, token: &str, extra: &[&str]) -> Command {
    let mut command: Command = precomp_command();
    command
        .arg("--data")
        .arg(data)
        .args(["worker", "--once", "--mirror", mirror.server.base()])
        .args(["--token", token, "--key"])
        .arg(Fixture::get().path("keys/builder.key"))
        .args(extra);
    command
}

/// `precomp worker --once` leases a reported miss, builds it in the sandbox, publishes it
/// (the miss is closed, the index lists the build); with nothing open it says so and exits 0.
#[test]
fn a_worker_builds_and_publishes_a_reported_miss() {
    let fixture = Fixture::get();
    let mirror = Mirror::start();
    let token = mirror.token("worker");
    let data = data_dir("precomp-worker-data-");
    let (otp, elixir) = host_toolchain(data.path());

    // Nothing of opt_user's closure is built: the miss is named by its request key.
    let lock = fixture.lock(&["opt_user@1.0.0", "plain_ex@1.0.0"]);
    let request_key = mirror.report_miss(&lock, "opt_user", &otp, &elixir);

    // A 2 s lease, renewed by the worker's heartbeat while it builds: once the worker has
    // the job, another worker asking for the same toolchain never gets it.
    let other = mirror.token("other");
    let mut building = Watched::spawn(
        worker_command(
            data.path(),
            &mirror,
            &token,
            &["--json", "--lease-seconds", "2"],
        ),
        ": building opt_user",
    );
    let leased = building.saw_marker(Duration::from_secs(120));
    let mut polls = 0;
    while leased && building.child.try_wait().unwrap().is_none() {
        let mut body = lease_body("other", &otp, 60);
        body["elixir"] = elixir.as_str().into();
        let (status, text) = mirror.post("/precomp/v1/jobs/lease", Some(&other), &body);
        if status != 204 {
            let _ = building.child.kill();
        }
        assert_eq!(status, 204, "the job is leased while it builds: {text}");
        polls += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    let output = building.finish(Duration::from_secs(600));
    assert!(leased, "the worker leased no job: {}", describe(&output));
    eprintln!("polled {polls} times while the worker built");
    assert!(output.status.success(), "{}", describe(&output));
    let line: Value = serde_json::from_str(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no output: {}", describe(&output))),
    )
    .unwrap();
    assert_eq!(line["outcome"], "published", "{line}");
    assert_eq!(line["package"], "opt_user");
    assert_eq!(line["request_key"], request_key.as_str());
    assert_eq!(line["base_key"], Value::Null);
    assert_eq!(line["lease_lost"], false);
    let key = line["key"].as_str().unwrap().to_string();

    // The publish closed the miss: the build satisfies it (plain_ex built in the same job).
    let misses = mirror.get("/precomp/v1/misses", Some(&token));
    assert!(
        !misses.contains(&request_key),
        "the miss is closed: {misses}"
    );
    let index: Value =
        serde_json::from_str(&mirror.get("/precomp/v1/index/opt_user", None)).unwrap();
    let builds = index["builds"].as_array().unwrap();
    assert!(builds.iter().any(|b| b["key"] == key.as_str()), "{index}");
    let failures = mirror.get("/precomp/v1/failures/opt_user", None);
    assert!(!failures.contains(&request_key), "{failures}");
    // The manifest the mirror serves is the worker's, signed by its key.
    let manifest =
        reqwest::blocking::get(mirror.server.url(&format!("/precomp/v1/manifests/{key}")))
            .unwrap()
            .bytes()
            .unwrap();
    let pem = std::fs::read_to_string(fixture.path("keys/builder.pub")).unwrap();
    let public = precomp_proto::manifest::ArtifactPublicKey::from_pem(&pem).unwrap();
    let (manifest, _) = precomp_proto::manifest::SignedManifest::decode(&manifest)
        .unwrap()
        .verify(&[public])
        .unwrap();
    assert_eq!(manifest.key, key);
    assert_eq!(manifest.closure[0].name, "plain_ex");
    assert_eq!(manifest.closure[0].key.len(), 64);

    // Nothing open: --once says so and exits 0.
    let output = worker(data.path(), &mirror, &token, &[]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("no open misses"),
        "{}",
        describe(&output)
    );
}

/// A config variant: a miss carrying the consumer's values for env_reader's compile-env paths
/// (values a worker's own config does not give: it has none). Before it is built, the values
/// appear on no public page; the worker builds it with a config made from them, publishes a
/// build with exactly the miss's variant key (the key the consumer computes), which records
/// those values and closes the miss; the artifact returns them.
#[test]
fn a_config_variant_is_built_with_the_consumers_values() {
    let fixture = Fixture::get();
    let mirror = Mirror::start();
    let token = mirror.token("worker");
    let data = data_dir("precomp-worker-variant-");
    let (otp, elixir) = host_toolchain(data.path());
    let lock = fixture.lock(&["env_reader@1.0.0"]);
    let variant_key = mirror.report_miss_with(
        &lock,
        "env_reader",
        &otp,
        &elixir,
        json!([{"app": "env_reader", "path": "[greeting]", "value": "<<\"hi-from-ci\">>"},
               {"app": "env_reader", "path": "[format,punctuation]", "value": null}]),
    );
    for path in [
        "/precomp/v1/index",
        "/precomp/v1/index/env_reader",
        "/precomp/v1/failures/env_reader",
        "/metrics",
    ] {
        let page = mirror.get(path, None);
        assert!(!page.contains("hi-from-ci"), "{path}: {page}");
    }
    let misses = mirror.get("/precomp/v1/misses", Some(&token));
    assert!(misses.contains("hi-from-ci"), "builders see it: {misses}");

    let output = worker(data.path(), &mirror, &token, &["--json"]);
    assert!(output.status.success(), "{}", describe(&output));
    let line = last_json_line(&output);
    assert_eq!(line["outcome"], "published", "{line}");
    assert_eq!(line["variant_key"], variant_key.as_str(), "{line}");
    assert_eq!(
        line["key"],
        variant_key.as_str(),
        "the consumer's key: {line}"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("a config variant"),
        "{}",
        describe(&output)
    );
    let misses = mirror.get("/precomp/v1/misses", Some(&token));
    assert!(!misses.contains(&variant_key), "closed: {misses}");
    let index: Value =
        serde_json::from_str(&mirror.get("/precomp/v1/index/env_reader", None)).unwrap();
    let build = index["builds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["key"] == variant_key.as_str())
        .unwrap_or_else(|| panic!("{index}"))
        .clone();
    let recorded: BTreeMap<String, Value> = build["compile_env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e["value"].clone()))
        .collect();
    assert_eq!(recorded["[greeting]"], "<<\"hi-from-ci\">>", "{build}");
    assert_eq!(recorded["[format,punctuation]"], Value::Null, "{build}");
    // The beam holds the consumer's value.
    let artifact = line["results"][0]["artifact"].as_str().unwrap();
    let unpacked = tempfile::tempdir().unwrap();
    precomp_proto::artifact::unpack(
        &std::fs::read(artifact).unwrap(),
        &unpacked.path().join("env_reader"),
    )
    .unwrap();
    let greeting = Command::new("erl")
        .args(["-noshell", "-pa"])
        .arg(unpacked.path().join("env_reader/ebin"))
        .args([
            "-eval",
            "io:format(\"~s\", ['Elixir.EnvReader':greeting()]), halt().",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&greeting.stdout),
        "hi-from-ci",
        "{}",
        describe(&greeting)
    );
}

/// A miss whose values no config can give — two closure members carrying different values
/// for the same path — is not built: recorded as a failure under its variant key, naming the
/// path but never the values (failure logs are public), so no worker gets it again.
#[test]
fn a_variant_whose_values_cannot_be_one_config_is_recorded_as_not_buildable() {
    let fixture = Fixture::get();
    let mirror = Mirror::start();
    let token = mirror.token("worker");
    let data = data_dir("precomp-worker-conflict-");
    let (otp, elixir) = host_toolchain(data.path());
    let lock = fixture.lock(&["env_reader@1.0.0"]);
    let variant_key = mirror.report_miss_with(
        &lock,
        "env_reader",
        &otp,
        &elixir,
        json!([{"app": "env_reader", "path": "[greeting]", "value": "<<\"one-value\">>"},
               {"app": "env_reader", "path": "[greeting]", "value": "<<\"other-value\">>"}]),
    );
    let output = worker(data.path(), &mirror, &token, &["--json"]);
    assert!(output.status.success(), "{}", describe(&output));
    let line = last_json_line(&output);
    assert_eq!(line["outcome"], "not_buildable", "{line}");
    assert_eq!(line["variant_key"], variant_key.as_str());
    let reason = line["reason"].as_str().unwrap();
    assert!(
        reason.contains("two different values") && reason.contains("env_reader [:greeting]"),
        "{reason}"
    );
    let failures = mirror.get("/precomp/v1/failures/env_reader", None);
    assert!(failures.contains(&variant_key), "{failures}");
    assert!(
        !failures.contains("one-value") && !failures.contains("other-value"),
        "{failures}"
    );
    let misses = mirror.get("/precomp/v1/misses", Some(&token));
    assert!(!misses.contains(&variant_key), "{misses}");
}

/// A worker started with two toolchains — the host (OTP 25) and the trixie image (OTP 27) —
/// leases the misses of both tuples, builds each with its own toolchain, and leaves the miss
/// of a third tuple (OTP 26, which it does not have); the job listing shows that tuple as
/// served by no worker, and the worker with its two tuples.
#[test]
fn a_worker_with_two_toolchains_builds_both_tuples_and_leaves_a_third() {
    let fixture = Fixture::get();
    let mirror = Mirror::start();
    let token = mirror.token("worker");
    let data = data_dir("precomp-worker-multi-");
    let (otp, elixir) = host_toolchain(data.path());
    let trixie = image_id(Suite::Trixie);
    let cache = toolchain_cache();
    let lock = fixture.lock(&["plain_ex@1.0.0"]);
    let host_key = mirror.report_miss(&lock, "plain_ex", &otp, &elixir);
    let trixie_key = mirror.report_miss(&lock, "plain_ex", "27", "1.18.3");
    let third_key = mirror.report_miss(&lock, "plain_ex", "26", "1.16.3");

    let mut built = BTreeMap::new();
    for _ in 0..2 {
        let output = worker(
            data.path(),
            &mirror,
            &token,
            &[
                "--json",
                "--name",
                "multi",
                "--toolchain",
                "host",
                "--toolchain",
                &trixie,
                "--toolchains",
                cache.to_str().unwrap(),
            ],
        );
        assert!(output.status.success(), "{}", describe(&output));
        let line = last_json_line(&output);
        assert_eq!(line["outcome"], "published", "{line}");
        built.insert(
            line["base_key"].as_str().unwrap().to_string(),
            line["toolchain"].as_str().unwrap().to_string(),
        );
    }
    assert_eq!(built.get(&host_key).map(String::as_str), Some("host"));
    assert_eq!(built.get(&trixie_key), Some(&trixie), "{built:?}");
    let index: Value =
        serde_json::from_str(&mirror.get("/precomp/v1/index/plain_ex", None)).unwrap();
    let mut tuples: Vec<(String, String)> = index["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["otp_major"].as_str().unwrap().to_string(),
                b["elixir"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    tuples.sort();
    assert_eq!(
        tuples,
        vec![
            (otp.clone(), elixir.clone()),
            ("27".to_string(), "1.18.3".to_string())
        ]
    );

    // Nothing more for this worker; the third tuple's miss is left open, and listed as one
    // no worker can build.
    let output = worker(
        data.path(),
        &mirror,
        &token,
        &[
            "--name",
            "multi",
            "--toolchain",
            "host",
            "--toolchain",
            &trixie,
            "--toolchains",
            cache.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("no open misses") && stdout.contains("OTP 27, Elixir 1.18.3"),
        "{}",
        describe(&output)
    );
    let misses = mirror.get("/precomp/v1/misses", Some(&token));
    assert!(misses.contains(&third_key), "{misses}");
    let listing: Value =
        serde_json::from_str(&mirror.get("/precomp/v1/jobs", Some(&token))).unwrap();
    let listed = listing["tuples"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listing}");
    assert_eq!(listed[0]["otp_major"], "26");
    assert_eq!(listed[0]["elixir"], "1.16.3");
    assert_eq!(listed[0]["served"], false, "{listing}");
    assert_eq!(listed[0]["open_misses"], 1);
    let workers = listing["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{listing}");
    assert_eq!(workers[0]["worker"], "multi");
    let asked: Vec<&str> = workers[0]["tuples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["otp_major"].as_str().unwrap())
        .collect();
    assert!(
        asked.contains(&"27") && asked.contains(&otp.as_str()),
        "{listing}"
    );
}

/// A worker building slow_ex (which compiles for a minute), started in the background; its
/// output collected, `building` signalled once it has the job.
struct SlowJob {
    worker: Watched,
    data: tempfile::TempDir,
    base_key: String,
    otp: String,
    elixir: String,
}

impl SlowJob {
    fn start(mirror: &Mirror, token: &str, extra: &[&str]) -> SlowJob {
        let fixture = Fixture::get();
        let data = data_dir("precomp-worker-slow-");
        let (otp, elixir) = host_toolchain(data.path());
        let lock = fixture.lock(&["slow_ex@1.0.0"]);
        let base_key = mirror.report_miss(&lock, "slow_ex", &otp, &elixir);
        let mut command = precomp_command();
        command
            .arg("--data")
            .arg(data.path())
            .args(["worker", "--json", "--poll-seconds", "1", "--mirror"])
            .arg(mirror.server.base())
            .args(["--token", token, "--key"])
            .arg(fixture.path("keys/builder.key"))
            .args(extra);
        let mut job = SlowJob {
            worker: Watched::spawn(command, ": building slow_ex"),
            data,
            base_key,
            otp,
            elixir,
        };
        if !job.worker.saw_marker(Duration::from_secs(120)) {
            let _ = job.worker.child.kill();
            panic!("the worker never started building slow_ex");
        }
        // Until its sandbox runs: a bwrap naming the worker's data directory.
        let started = std::time::Instant::now();
        while job.sandboxes() == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no sandbox of the worker appeared"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        job
    }

    fn sandboxes(&self) -> usize {
        sandboxes(self.data.path(), self.worker.child.id())
    }

    /// Waits for the worker to exit (within `limit`); its output and the time it took.
    fn finish(self, limit: Duration) -> (std::process::Output, Duration, SlowJobLeft) {
        let pid = self.worker.child.id();
        let started = std::time::Instant::now();
        let output = self.worker.finish(limit);
        let took = started.elapsed();
        let sandboxes = sandboxes(self.data.path(), pid);
        let left = SlowJobLeft {
            sandboxes,
            // The store's manifests, artifacts and failure logs (DATA/builds/…).
            stored: ["manifests", "artifacts", "failures"]
                .iter()
                .map(|dir| {
                    std::fs::read_dir(self.data.path().join("builds").join(dir))
                        .map(|entries| entries.count())
                        .unwrap_or(0)
                })
                .sum(),
        };
        (output, took, left)
    }
}

/// Processes whose command line names the worker's data directory `data`, other than the
/// worker `worker` itself: its sandboxes (bwrap binds the build directory from there).
fn sandboxes(data: &Path, worker: u32) -> usize {
    let data = data.to_str().unwrap().to_string();
    let worker = worker.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.parse::<u32>().ok()?;
            (name != worker).then_some(name)
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(&data))
                .unwrap_or(false)
        })
        .count()
}

/// What a stopped worker left behind.
struct SlowJobLeft {
    sandboxes: usize,
    stored: usize,
}

fn last_json_line(output: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output: {}", describe(output)));
    serde_json::from_str(line).unwrap()
}

/// SIGTERM while a job's sandbox compiles: the sandbox is killed, nothing is published, the
/// job goes back to the queue (another worker leases it at once), and the worker exits 0.
#[test]
fn sigterm_stops_the_build_releases_the_job_and_exits() {
    let mirror = Mirror::start();
    let token = mirror.token("stopping");
    let job = SlowJob::start(&mirror, &token, &["--lease-seconds", "60"]);
    let status = Command::new("kill")
        .args(["-TERM", &job.worker.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (base_key, otp, elixir) = (job.base_key.clone(), job.otp.clone(), job.elixir.clone());
    let (output, took, left) = job.finish(Duration::from_secs(30));
    eprintln!("the worker stopped {took:?} after SIGTERM");
    assert!(output.status.success(), "{}", describe(&output));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let line = last_json_line(&output);
    assert_eq!(line["outcome"], "cancelled", "{line}");
    assert!(
        line["reason"].as_str().unwrap().contains("SIGTERM"),
        "{line}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("released for another worker"), "{stderr}");
    assert_eq!(left.sandboxes, 0, "a sandbox outlived the worker");
    assert_eq!(left.stored, 0, "a cancelled build was stored");
    // Not published, and back in the queue: another worker (a live 60 s lease aside) gets it.
    let index = reqwest::blocking::get(mirror.server.url("/precomp/v1/index/slow_ex")).unwrap();
    assert!(
        index.status() == 404 || !index.text().unwrap().contains(&base_key),
        "nothing of slow_ex is published"
    );
    let other = mirror.token("other");
    let mut body = lease_body("other", &otp, 60);
    body["elixir"] = elixir.as_str().into();
    let (status, text) = mirror.post("/precomp/v1/jobs/lease", Some(&other), &body);
    assert_eq!(status, 200, "{text}");
    let lease: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(lease["miss"]["base_key"], base_key.as_str(), "{lease}");
}

/// The mirror ends the lease while the job builds (here: someone records the miss's failure,
/// which closes it): the next heartbeat is refused, the build is stopped at once, nothing is
/// reported, and `--once` exits with the outcome `lease_lost`.
#[test]
fn a_lease_the_mirror_ends_stops_the_build() {
    let mirror = Mirror::start();
    let token = mirror.token("losing");
    let job = SlowJob::start(&mirror, &token, &["--once", "--lease-seconds", "3"]);
    let other = mirror.token("closer");
    let (status, text) = mirror.post(
        "/precomp/v1/failures",
        Some(&other),
        &json!({"package": "slow_ex", "version": "1.0.0", "base_key": job.base_key,
                "toolchain_id": "elsewhere", "log": "built and failed elsewhere\n"}),
    );
    assert!(status == 200 || status == 201, "{status} {text}");
    // A heartbeat every second: the build stops within a few.
    let (output, took, left) = job.finish(Duration::from_secs(30));
    eprintln!("the worker stopped {took:?} after the lease ended");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(!output.status.success(), "{}", describe(&output));
    let line = last_json_line(&output);
    assert_eq!(line["outcome"], "lease_lost", "{line}");
    assert_eq!(line["lease_lost"], true, "{line}");
    assert!(
        line["reason"].as_str().unwrap().contains("ended the lease"),
        "{line}"
    );
    assert_eq!(left.sandboxes, 0, "a sandbox outlived the worker");
    assert_eq!(left.stored, 0, "a cancelled build was stored");
    // Only the failure someone else recorded: the worker reported nothing.
    let failures = mirror.get("/precomp/v1/failures/slow_ex", None);
    let failures: Value = serde_json::from_str(&failures).unwrap();
    let failures = failures["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["toolchain_id"], "elsewhere");
}

/// A worker killed with SIGKILL cannot remove its build's work directory; the next builder or
/// worker on that data directory does (once nothing holds it), and leaves live ones alone.
#[test]
fn a_work_directory_left_by_a_killed_worker_is_removed_by_the_next_one() {
    let mirror = Mirror::start();
    let token = mirror.token("killed");
    let job = SlowJob::start(&mirror, &token, &["--lease-seconds", "60"]);
    let work = job.data.path().join("builds/work");
    let left_behind = |work: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(work)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("slow_ex-")
            })
            .collect()
    };
    // One or two: a second when the predicted pass falls back (docs/builder.md, "Atom order").
    assert!(
        !left_behind(&work).is_empty(),
        "the build works in directories under the work root"
    );

    let status = Command::new("kill")
        .args(["-KILL", &job.worker.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let data = job.data.path().to_path_buf();
    let pid = job.worker.child.id();
    let started = std::time::Instant::now();
    let SlowJob {
        worker: killed,
        data: _data_guard,
        ..
    } = job;
    let _ = killed.finish(Duration::from_secs(30));
    while sandboxes(&data, pid) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the sandbox outlived its worker"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let leftovers = left_behind(&work);
    assert!(
        !leftovers.is_empty(),
        "SIGKILL leaves the directories: the case to recover from"
    );

    // Older than the minute a sweep leaves young directories alone (one being created).
    for dir in &leftovers {
        assert!(Command::new("touch")
            .args(["-d", "2 hours ago"])
            .arg(dir)
            .status()
            .unwrap()
            .success());
    }
    // A directory another live process holds is not touched by the sweep.
    let live = work.join("slow_ex-live");
    std::fs::create_dir(&live).unwrap();
    let mut holder = Command::new("flock")
        .args(["--exclusive", "--close"])
        .arg(&live)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&live)
        .status()
        .unwrap()
        .success());

    // The next worker on this data directory (no job for it: the killed one's lease is live).
    let next = worker(&data, &mirror, &token, &[]);
    let _ = holder.kill();
    let _ = holder.wait();
    for dir in &leftovers {
        assert!(
            !dir.exists(),
            "{} is still there: {}",
            dir.display(),
            describe(&next)
        );
    }
    assert!(
        live.exists(),
        "a directory a live process holds was removed"
    );
}
