//! Audit workers (`precomp worker --audit`) against a real `precomp serve`: audit job leases
//! over HTTP (only auditors, exclusive while live, back in the queue once expired, closed by
//! the auditor's verdict, a failed audit never offered again to the same token), and a worker
//! rebuilding published builds in the sandbox on the host toolchain: a match is countersigned,
//! a mismatch flags the build.
//!
//! The fixture packages (and tests/fixtures/nonrepro/nonrepro_ex, which bakes its compile time
//! into a literal) are served from a signed static repository as the mirror's upstream; a
//! builder builds plain_ex and nonrepro_ex once (`precomp build`, its own data directory) and
//! publishes them to each test's mirror.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use precomp_proto::manifest::{ArtifactSigningKey, Manifest, SignedManifest};
use precomp_proto::verdict::{manifest_digest, Verdict, MATCH};
use prost::Message;
use serde_json::{json, Value};

/// The repository, the keys, and plain_ex and nonrepro_ex built once by the builder.
struct Fixture {
    repo: FixtureRepo,
    /// The builder's data directory: publishing reuses these builds.
    builder_data: tempfile::TempDir,
}

impl Fixture {
    fn get() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let fixture = Fixture {
                repo: FixtureRepo::new(
                    "precomp-audit-worker-fixture-",
                    &["nonrepro/nonrepro_ex"],
                    &["builder", "auditor", "auditor2"],
                ),
                builder_data: data_dir("precomp-audit-worker-builder-"),
            };
            let mut command = precomp_command();
            command
                .arg("--data")
                .arg(fixture.builder_data.path())
                .args(["build", "--json", "--lock"])
                .arg(fixture.lock(&["plain_ex@1.0.0", "nonrepro_ex@1.0.0"]))
                .args(["--mirror", &fixture.repo.repo_url(), "--key"])
                .arg(fixture.repo.key("builder.key"));
            let output = output_within(command, Duration::from_secs(900));
            assert!(output.status.success(), "{}", describe(&output));
            fixture
        })
    }

    /// `precomp repo lock` of `releases`, written once in the fixture directory.
    fn lock(&self, releases: &[&str]) -> PathBuf {
        let path = self.repo.path(&format!("{}.lock", releases.join("+")));
        if !path.exists() {
            self.repo.write_lock(&path, releases);
        }
        path
    }

    fn key(&self, name: &str) -> PathBuf {
        self.repo.key(name)
    }

    fn key_id(&self, name: &str) -> String {
        let pem = std::fs::read_to_string(self.key(&format!("{name}.pub"))).unwrap();
        precomp_proto::manifest::ArtifactPublicKey::from_pem(&pem)
            .unwrap()
            .key_id()
    }
}

/// A `precomp serve` of the fixture repository that knows both auditors' keys, with a token
/// bound to each key.
struct Mirror {
    server: ServeProcess,
    _data: tempfile::TempDir,
    builder: String,
    auditor: String,
    auditor2: String,
}

impl Mirror {
    fn start(fixture: &Fixture) -> Mirror {
        let data = data_dir("precomp-audit-worker-mirror-");
        let token = |name: &str| {
            ok(precomp(&[
                "--data",
                data.path().to_str().unwrap(),
                "token",
                "create",
                "--name",
                name,
                "--key",
                fixture.key(&format!("{name}.pub")).to_str().unwrap(),
            ]))
            .trim()
            .to_string()
        };
        let (builder, auditor, auditor2) = (token("builder"), token("auditor"), token("auditor2"));
        let mut command = precomp_command();
        command
            .arg("--data")
            .arg(data.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(fixture.repo.repo_url())
            .arg("--upstream-key")
            .arg(fixture.repo.path("repo.pem.pub"))
            .arg("--auditor-key")
            .arg(fixture.key("auditor.pub"))
            .arg("--auditor-key")
            .arg(fixture.key("auditor2.pub"));
        Mirror {
            server: ServeProcess::spawn(command),
            _data: data,
            builder,
            auditor,
            auditor2,
        }
    }

    /// The builder publishes its builds of `releases` (reused from its data directory).
    fn publish(&self, fixture: &Fixture, releases: &[&str]) {
        let mut command = precomp_command();
        command
            .arg("--data")
            .arg(fixture.builder_data.path())
            .args(["build", "--json", "--publish", "--lock"])
            .arg(fixture.lock(releases))
            .args(["--mirror", self.server.base(), "--token", &self.builder])
            .arg("--key")
            .arg(fixture.key("builder.key"));
        let output = output_within(command, Duration::from_secs(600));
        assert!(output.status.success(), "{}", describe(&output));
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let line: Value = serde_json::from_str(line).unwrap();
            assert_eq!(
                line["status"], "reused",
                "built once by the fixture: {line}"
            );
            assert_eq!(line["published"], true, "{line}");
        }
    }

    fn post(&self, path: &str, token: &str, body: &Value) -> (u16, String) {
        let response = reqwest::blocking::Client::new()
            .post(self.server.url(path))
            .bearer_auth(token)
            .body(body.to_string())
            .send()
            .unwrap();
        (response.status().as_u16(), response.text().unwrap())
    }

    /// `POST jobs/lease` for audit jobs on the host toolchain's tuple, of this precomp's build
    /// recipe (the builder's: the fixture's builds record it).
    fn lease(&self, token: &str, tuple: &(String, String), seconds: u64) -> (u16, String) {
        self.post(
            "/precomp/v1/jobs/lease",
            token,
            &json!({"kind": "audit", "worker": "api-test", "otp_major": tuple.0,
                    "elixir": tuple.1, "mix_env": "prod", "targets": ["any"],
                    "lease_seconds": seconds, "recipe": precomp_builder::RECIPE}),
        )
    }

    fn heartbeat(&self, token: &str, job: u64) -> (u16, String) {
        self.post(
            &format!("/precomp/v1/jobs/{job}/heartbeat"),
            token,
            &json!({}),
        )
    }

    fn get(&self, path: &str) -> reqwest::blocking::Response {
        let response = reqwest::blocking::get(self.server.url(path)).unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response
    }

    /// The index entry of the build of `package` (the only one).
    fn build(&self, package: &str) -> Value {
        let index: Value = serde_json::from_slice(
            &self
                .get(&format!("/precomp/v1/index/{package}"))
                .bytes()
                .unwrap(),
        )
        .unwrap();
        let builds = index["builds"].as_array().unwrap();
        assert_eq!(builds.len(), 1, "{index}");
        builds[0].clone()
    }

    /// A `match` verdict on `key`, signed with `key_file` (no rebuild: the API test only needs
    /// the mirror to take it).
    fn match_verdict(&self, key: &str, key_file: &Path) -> Vec<u8> {
        let signed = SignedManifest::decode(
            &self
                .get(&format!("/precomp/v1/manifests/{key}"))
                .bytes()
                .unwrap(),
        )
        .unwrap();
        let manifest = Manifest::decode(signed.manifest.as_slice()).unwrap();
        let output = manifest.output.unwrap();
        let signing =
            ArtifactSigningKey::from_pem(&std::fs::read_to_string(key_file).unwrap()).unwrap();
        Verdict {
            key: key.to_string(),
            manifest_sha256: manifest_digest(&signed.manifest).to_vec(),
            result: MATCH.into(),
            published_sha256: output.artifact_sha256.clone(),
            rebuilt_sha256: output.artifact_sha256,
            rebuilt_size: output.artifact_size,
            toolchain_id: "host".into(),
            toolchain_digest: "test".into(),
            summary: "the rebuild gave the same bytes".into(),
            ..Verdict::default()
        }
        .sign(&signing)
        .unwrap()
        .encode_to_vec()
    }
}

/// The host toolchain's OTP major and Elixir version, as `precomp toolchain list` gives them.
fn host_tuple() -> (String, String) {
    let data = tempfile::tempdir().unwrap();
    let listed: Value = serde_json::from_str(&ok(precomp(&[
        "--data",
        data.path().to_str().unwrap(),
        "toolchain",
        "list",
        "--json",
    ])))
    .unwrap();
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

/// `precomp worker --audit --once --json` with `token` and the auditor's key, in `data`.
fn audit_worker(mirror: &Mirror, data: &Path, token: &str, extra: &[&str]) -> Command {
    let mut command = precomp_command();
    command
        .arg("--data")
        .arg(data)
        .args(["worker", "--audit", "--once", "--json", "--mirror"])
        .arg(mirror.server.base())
        .args(["--token", token, "--key"])
        .arg(Fixture::get().key("auditor.key"))
        .args(extra);
    command
}

/// The worker's one JSON line.
fn job_line(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line per job: {}", describe(output));
    serde_json::from_str(lines[0]).unwrap()
}

/// Nothing is left under DATA/audit: the run directory was removed.
fn assert_no_run_left(data: &Path) {
    let left: Vec<_> = std::fs::read_dir(data.join("audit"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A worker audits plain_ex with a 2 s lease (the other auditor, polling, never gets the job
/// while it runs): a match, countersigned, the mirror's index lists the auditor, the run
/// directory is gone; run again, it finds nothing with fewer than one audit. (The rebuild
/// takes about a second, so the lease seldom needs renewing here: the renewal of audit leases
/// is tested over HTTP below and in registry's unit tests.)
#[test]
fn an_audit_worker_countersigns_a_reproducible_build_and_then_finds_no_job() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, &["plain_ex@1.0.0"]);
    let tuple = host_tuple();
    let data = data_dir("precomp-audit-worker-data-");

    let mut worker = Watched::spawn(
        audit_worker(
            &mirror,
            data.path(),
            &mirror.auditor,
            &["--lease-seconds", "2"],
        ),
        ": auditing plain_ex",
    );
    let leased = worker.saw_marker(Duration::from_secs(120));
    // Leased 2 s at a time and renewed by the heartbeat: auditor2 never gets it meanwhile.
    let mut polls = 0;
    while leased && worker.child.try_wait().unwrap().is_none() {
        let (status, text) = mirror.lease(&mirror.auditor2, &tuple, 60);
        if status != 204 {
            let _ = worker.child.kill();
        }
        assert_eq!(status, 204, "the job is leased while it is audited: {text}");
        polls += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    let output = worker.finish(Duration::from_secs(600));
    assert!(leased, "the worker leased no job: {}", describe(&output));
    eprintln!("polled {polls} times while the worker audited");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let line = job_line(&output);
    let build = mirror.build("plain_ex");
    assert_eq!(line["outcome"], "match", "{line}");
    assert_eq!(line["kind"], "audit", "{line}");
    assert_eq!(line["package"], "plain_ex", "{line}");
    assert_eq!(line["version"], "1.0.0", "{line}");
    assert_eq!(line["key"], build["key"], "{line}");
    assert!(line["job"].as_u64().is_some(), "{line}");
    assert_eq!(line["audit"]["result"], "match", "{line}");
    assert_eq!(line["audit"]["countersigned"], "countersigned", "{line}");
    assert_no_run_left(data.path());

    // The mirror: countersigned by the auditor, and its match verdict.
    let auditor = fixture.key_id("auditor");
    assert_eq!(build["auditors"], json!([auditor]), "{build}");
    assert_eq!(build["verdicts"][0]["auditor"], auditor.as_str(), "{build}");
    assert_eq!(build["verdicts"][0]["result"], "match", "{build}");

    // Audited once: nothing has fewer than one audit.
    let output = output_within(
        audit_worker(&mirror, data.path(), &mirror.auditor, &[]),
        Duration::from_secs(120),
    );
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let line = job_line(&output);
    assert_eq!(line["job"], Value::Null, "{line}");
    assert_eq!(line["outcome"], "no_jobs", "{line}");
}

/// nonrepro_ex embeds its compile time: the worker's rebuild differs, it exits 2 like
/// `precomp audit`, its verdict names the beam and LitT, and the mirror flags the build.
#[test]
fn an_audit_worker_flags_a_build_that_is_not_reproducible() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, &["nonrepro_ex@1.0.0"]);
    let data = data_dir("precomp-audit-worker-data-");
    let output = output_within(
        audit_worker(&mirror, data.path(), &mirror.auditor, &[]),
        Duration::from_secs(600),
    );
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let line = job_line(&output);
    assert_eq!(line["outcome"], "mismatch", "{line}");
    assert_eq!(line["package"], "nonrepro_ex", "{line}");
    assert_eq!(line["audit"]["flagged"], true, "{line}");
    assert!(
        line["audit"]["chunks"]
            .as_array()
            .unwrap()
            .contains(&"LitT".into()),
        "{line}"
    );
    assert_no_run_left(data.path());

    let build = mirror.build("nonrepro_ex");
    assert_eq!(line["key"], build["key"], "{line}");
    assert_eq!(build["flagged"], true, "{build}");
    assert_eq!(build.get("auditors"), None, "not countersigned: {build}");
    assert_eq!(build["verdicts"][0]["auditor"], fixture.key_id("auditor"));
    assert_eq!(build["verdicts"][0]["result"], "mismatch", "{build}");
}

/// Audit leases over HTTP: only auditors; exclusive while live; an expired one is leased
/// again and the lost lease's heartbeat is 409; a job released as failed is not offered to
/// that token again but is to another auditor; the auditor's verdict closes the job.
#[test]
fn audit_leases_are_exclusive_expire_and_end_with_a_verdict_or_a_failure() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, &["plain_ex@1.0.0", "nonrepro_ex@1.0.0"]);
    let tuple = host_tuple();
    let leased = |answer: (u16, String)| -> Value {
        assert_eq!(answer.0, 200, "{}", answer.1);
        serde_json::from_str(&answer.1).unwrap()
    };

    // A token bound to a builder's key may not audit; nor may a malformed request.
    let (status, text) = mirror.lease(&mirror.builder, &tuple, 60);
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("auditor"), "{text}");
    let (status, text) = mirror.post(
        "/precomp/v1/jobs/lease",
        &mirror.auditor,
        &json!({"kind": "audit", "worker": "w", "otp_major": tuple.0, "elixir": tuple.1,
                "mix_env": "prod", "targets": ["any"], "lease_seconds": 60, "fewer_than": 0}),
    );
    assert_eq!(status, 422, "{text}");

    // Exclusive while live: each auditor gets one build, then nothing.
    let first = leased(mirror.lease(&mirror.auditor, &tuple, 2));
    assert_eq!(first["kind"], "audit", "{first}");
    assert_eq!(first.get("miss"), None, "{first}");
    let x = first["build"]["key"].as_str().unwrap().to_string();
    assert_eq!(
        first["build"]["signers"],
        json!([fixture.key_id("builder")])
    );
    let job1 = first["job"].as_u64().unwrap();
    let second = leased(mirror.lease(&mirror.auditor2, &tuple, 60));
    let y = second["build"]["key"].as_str().unwrap().to_string();
    assert_ne!(x, y, "{first} {second}");
    let (status, text) = mirror.lease(&mirror.auditor2, &tuple, 60);
    assert_eq!(status, 204, "{text}");
    let (status, text) = mirror.lease(&mirror.auditor, &tuple, 60);
    assert_eq!(status, 204, "{text}");
    let (status, text) = mirror.heartbeat(&mirror.auditor, job1);
    assert_eq!(status, 200, "{text}");
    let renewed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(renewed["kind"], "audit", "{renewed}");
    assert_eq!(renewed["key"], x.as_str(), "{renewed}");
    let (status, text) = mirror.heartbeat(&mirror.auditor2, job1);
    assert_eq!(status, 403, "{text}");
    let (status, _) = mirror.heartbeat(&mirror.auditor, 999_999);
    assert_eq!(status, 404);

    // No heartbeat for longer than the 2 s lease: auditor2 gets x, auditor's lease is lost.
    let deadline = Instant::now() + Duration::from_secs(15);
    let third = loop {
        let (status, text) = mirror.lease(&mirror.auditor2, &tuple, 60);
        if status == 200 {
            break serde_json::from_str::<Value>(&text).unwrap();
        }
        assert_eq!(status, 204, "{text}");
        assert!(
            Instant::now() < deadline,
            "the expired lease never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(third["build"]["key"], x.as_str(), "{third}");
    let job3 = third["job"].as_u64().unwrap();
    let (status, text) = mirror.heartbeat(&mirror.auditor, job1);
    assert_eq!(status, 409, "the lost lease is refused: {text}");
    assert!(text.contains("leased again"), "{text}");

    // auditor2's rebuild of x fails: released as failed, never offered to it again (it holds
    // y), but offered to the other auditor.
    let (status, text) = mirror.post(
        &format!("/precomp/v1/jobs/{job3}/release"),
        &mirror.auditor2,
        &json!({"outcome": "failed", "reason": "the rebuild failed: mix compile exited 1"}),
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"failed\""), "{text}");
    let (status, text) = mirror.lease(&mirror.auditor2, &tuple, 60);
    assert_eq!(status, 204, "x is not offered again to auditor2: {text}");
    let fourth = leased(mirror.lease(&mirror.auditor, &tuple, 60));
    assert_eq!(fourth["build"]["key"], x.as_str(), "{fourth}");
    let job4 = fourth["job"].as_u64().unwrap();

    // The auditor's verdict on x closes its job.
    let verdict = mirror.match_verdict(&x, &fixture.key("auditor.key"));
    let response = reqwest::blocking::Client::new()
        .post(mirror.server.url(&format!("/precomp/v1/verdicts/{x}")))
        .bearer_auth(&mirror.auditor)
        .body(verdict)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 201, "{:?}", response.text());
    let (status, text) = mirror.heartbeat(&mirror.auditor, job4);
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("closed"), "{text}");
    let (status, text) = mirror.post(
        &format!("/precomp/v1/jobs/{job4}/release"),
        &mirror.auditor,
        &json!({}),
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"closed\""), "{text}");
    // Build jobs are still the default kind: this auditor's token (its scopes from its
    // auditor key: `auditor`) may not lease them.
    let (status, text) = mirror.post(
        "/precomp/v1/jobs/lease",
        &mirror.auditor,
        &json!({"worker": "w", "otp_major": tuple.0, "elixir": tuple.1, "mix_env": "prod",
                "targets": ["any"], "lease_seconds": 60}),
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("no builder scope"), "{text}");
}
