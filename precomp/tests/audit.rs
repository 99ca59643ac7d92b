//! `precomp audit` against a real `precomp serve`, with real builds in the sandbox on the host
//! toolchain, and `precomp fetch` with an audit policy in a real Mix project.
//!
//! The fixture packages (and tests/fixtures/nonrepro/nonrepro_ex, which bakes its compile time
//! into a literal) are published in a signed static repository that the mirror serves as its
//! upstream; a builder builds them once (`precomp build`, its own data directory) and
//! publishes them to each test's mirror; the auditor rebuilds them in its own data directory
//! with its own key and token.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use precomp_proto::manifest::{ArtifactPublicKey, SignedManifest};
use precomp_proto::verdict::SignedVerdict;

/// Every fixture release that builds, with shapes at 1.0.0 (as precomp/tests/build.rs).
const ALL: &[&str] = &[
    "counter_ex@1.0.0",
    "env_reader@1.0.0",
    "erl_counter@1.0.0",
    "erl_ids@1.0.0",
    "mk_erl@1.0.0",
    "opt_user@1.0.0",
    "plain_ex@1.0.0",
    "shape_user@1.0.0",
    "shapes@1.0.0",
    "tiny_nif@1.0.0",
];

/// The consumer of the policy tests: one package the auditor matched, one it found not
/// reproducible, one nobody audited.
const CONSUMER: &[&str] = &["nonrepro_ex@1.0.0", "plain_ex@1.0.0", "shapes@1.0.0"];

/// The repository, the keys, and every release built once by the builder.
struct Fixture {
    repo: FixtureRepo,
    /// The builder's data directory: publishing reuses these builds.
    builder_data: tempfile::TempDir,
}

impl Fixture {
    fn get() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let repo = FixtureRepo::new(
                "precomp-audit-fixture-",
                &["nonrepro/nonrepro_ex"],
                &["builder", "auditor"],
            );
            let fixture = Fixture {
                repo,
                builder_data: data_dir("precomp-audit-builder-"),
            };
            let mut everything = ALL.to_vec();
            everything.push("nonrepro_ex@1.0.0");
            let lock = fixture.lock("everything", &everything);
            let mut command = precomp_command();
            command
                .arg("--data")
                .arg(fixture.builder_data.path())
                .args(["build", "--json", "--lock"])
                .arg(&lock)
                .args(["--mirror", &fixture.repo_url(), "--key"])
                .arg(fixture.key("builder.key"));
            let output = output_within(command, Duration::from_secs(1200));
            assert!(output.status.success(), "{}", describe(&output));
            fixture
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.repo.path(name)
    }

    fn key(&self, name: &str) -> PathBuf {
        self.repo.key(name)
    }

    fn public_key(&self, name: &str) -> ArtifactPublicKey {
        ArtifactPublicKey::from_pem(&std::fs::read_to_string(self.key(name)).unwrap()).unwrap()
    }

    fn repo_url(&self) -> String {
        self.repo.repo_url()
    }

    /// `precomp repo lock` of `releases`, as `NAME.lock` in the fixture directory.
    fn lock(&self, name: &str, releases: &[&str]) -> PathBuf {
        let path = self.path(&format!("{name}.lock"));
        if path.exists() {
            return path;
        }
        self.repo.write_lock(&path, releases);
        path
    }
}

/// A `precomp serve` of the fixture repository that knows the auditor's key, with a builder
/// token and an auditor token (each bound to its key).
struct Mirror {
    server: ServeProcess,
    _data: tempfile::TempDir,
    builder_token: String,
    auditor_token: String,
}

impl Mirror {
    fn start(fixture: &Fixture) -> Mirror {
        let data = data_dir("precomp-audit-mirror-");
        let token = |name: &str, key: &str| {
            ok(precomp(&[
                "--data",
                data.path().to_str().unwrap(),
                "token",
                "create",
                "--name",
                name,
                "--key",
                fixture.key(key).to_str().unwrap(),
            ]))
            .trim()
            .to_string()
        };
        let builder_token = token("builder", "builder.pub");
        let auditor_token = token("auditor", "auditor.pub");
        let mut command = precomp_command();
        command
            .arg("--data")
            .arg(data.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(fixture.repo_url())
            .arg("--upstream-key")
            .arg(fixture.path("repo.pem.pub"))
            .arg("--auditor-key")
            .arg(fixture.key("auditor.pub"));
        Mirror {
            server: ServeProcess::spawn(command),
            _data: data,
            builder_token,
            auditor_token,
        }
    }

    fn url(&self) -> &str {
        self.server.base()
    }

    /// The builder publishes its builds of `lock` (reused from its data directory).
    fn publish(&self, fixture: &Fixture, lock: &Path) {
        let mut command = precomp_command();
        command
            .arg("--data")
            .arg(fixture.builder_data.path())
            .args(["build", "--json", "--publish", "--lock"])
            .arg(lock)
            .args([
                "--mirror",
                self.url(),
                "--token",
                &self.builder_token,
                "--key",
            ])
            .arg(fixture.key("builder.key"));
        let output = output_within(command, Duration::from_secs(600));
        assert!(output.status.success(), "{}", describe(&output));
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(
                line["status"], "reused",
                "built once by the fixture: {line}"
            );
            assert_eq!(line["published"], true, "{line}");
        }
    }

    /// `precomp audit --json ARGS` with the auditor's key and token, in a fresh data
    /// directory of the auditor's: the JSON lines by package and the output.
    fn audit(
        &self,
        fixture: &Fixture,
        args: &[&str],
    ) -> (BTreeMap<String, serde_json::Value>, Output) {
        let data = data_dir("precomp-auditor-");
        let mut command = precomp_command();
        command
            .arg("--data")
            .arg(data.path())
            .args(["audit", "--json", "--mirror", self.url(), "--token"])
            .arg(&self.auditor_token)
            .arg("--key")
            .arg(fixture.key("auditor.key"))
            .args(args);
        let output = output_within(command, Duration::from_secs(1200));
        let lines = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{e}: {line}\n{}", describe(&output)));
                (value["package"].as_str().unwrap().to_string(), value)
            })
            .collect();
        // The run's directory is removed once the audit is done.
        let left: Vec<_> = std::fs::read_dir(data.path().join("audit"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left behind: {left:?}");
        (lines, output)
    }

    fn get_json(&self, path: &str) -> serde_json::Value {
        let response = reqwest::blocking::get(self.server.url(path)).unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        serde_json::from_slice(&response.bytes().unwrap()).unwrap()
    }

    fn manifest(&self, key: &str) -> SignedManifest {
        let response =
            reqwest::blocking::get(self.server.url(&format!("/precomp/v1/manifests/{key}")))
                .unwrap();
        assert!(response.status().is_success());
        SignedManifest::decode(&response.bytes().unwrap()).unwrap()
    }

    /// The index entry of the build of `package` (the only one).
    fn build(&self, package: &str) -> serde_json::Value {
        let index = self.get_json(&format!("/precomp/v1/index/{package}"));
        let builds = index["builds"].as_array().unwrap();
        assert_eq!(builds.len(), 1, "{index}");
        builds[0].clone()
    }
}

/// Every fixture artifact, rebuilt by the auditor in another data directory (another host
/// path), gives the same bytes: each manifest is countersigned, the index lists the auditor,
/// and a second pass for builds with fewer than one audit finds nothing left.
#[test]
fn every_fixture_artifact_rebuilds_to_the_same_bytes_and_is_countersigned() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(fixture, &fixture.lock("all", ALL));
    let builder = fixture.public_key("builder.pub");
    let auditor = fixture.public_key("auditor.pub");

    let (lines, output) = mirror.audit(fixture, &["--all"]);
    assert!(output.status.success(), "{}", describe(&output));
    let packages: Vec<&str> = ALL.iter().map(|r| r.split('@').next().unwrap()).collect();
    assert_eq!(
        lines.keys().map(String::as_str).collect::<Vec<_>>(),
        packages
    );
    for (package, line) in &lines {
        assert_eq!(
            line["result"],
            "match",
            "{package}: {line}\n{}",
            describe(&output)
        );
        assert_eq!(line["countersigned"], "countersigned", "{line}");
        let build = mirror.build(package);
        assert_eq!(
            build["auditors"],
            serde_json::json!([auditor.key_id()]),
            "{build}"
        );
        assert_eq!(build.get("flagged"), None, "absent when false: {build}");
        assert_eq!(build["verdicts"][0]["auditor"], auditor.key_id(), "{build}");
        assert_eq!(build["verdicts"][0]["result"], "match", "{build}");
        assert_eq!(build["verdicts"][0]["toolchain_id"], "host", "{build}");
        let signed = mirror.manifest(build["key"].as_str().unwrap());
        // The builder's signature and the auditor's, each over the same manifest bytes.
        let (_, signers) = signed.verify(&[builder.clone(), auditor.clone()]).unwrap();
        assert_eq!(
            signers,
            vec![builder.key_id(), auditor.key_id()],
            "{package}"
        );
        signed.verify(std::slice::from_ref(&auditor)).unwrap();
    }

    // Nothing has fewer than one audit now.
    let (lines, output) = mirror.audit(fixture, &["--fewer-than", "1"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(lines.is_empty(), "{lines:?}");
    assert!(
        text(&output).contains("nothing to audit"),
        "{}",
        describe(&output)
    );
}

/// Builds made on the host toolchain, audited on the bookworm image (the same OTP and
/// Elixir, another root filesystem): the same bytes, native code included; the verdicts
/// record the image.
#[test]
fn another_toolchain_image_of_the_same_tuple_gives_the_same_bytes() {
    let fixture = Fixture::get();
    let mirror = Mirror::start(fixture);
    mirror.publish(
        fixture,
        &fixture.lock(
            "image",
            &["shapes@1.0.0", "shape_user@1.0.0", "tiny_nif@1.0.0"],
        ),
    );
    let cache = toolchain_cache();
    let bookworm = image_id(Suite::Bookworm);
    for package in ["shape_user", "tiny_nif"] {
        let (lines, output) = mirror.audit(
            fixture,
            &[
                "--package",
                package,
                "--toolchain",
                &bookworm,
                "--toolchains",
                cache.to_str().unwrap(),
            ],
        );
        assert!(output.status.success(), "{}", describe(&output));
        assert_eq!(lines[package]["result"], "match", "{}", describe(&output));
        let build = mirror.build(package);
        let toolchain = build["verdicts"][0]["toolchain_id"].as_str().unwrap();
        assert_ne!(toolchain, "host", "{build}");
        assert_eq!(toolchain.len(), 12, "an image id: {build}");
        assert_eq!(build["auditors"].as_array().unwrap().len(), 1, "{build}");
    }
    assert_ne!(mirror.build("tiny_nif")["target"], "any", "native code");
}

/// The mirror the policy tests share: the consumer's three packages published by the builder;
/// plain_ex audited (a match), nonrepro_ex audited (a mismatch), shapes never.
struct Audited {
    mirror: Mirror,
    /// The audit's JSON line for nonrepro_ex, and its exit status.
    nonrepro: serde_json::Value,
    nonrepro_status: Option<i32>,
}

impl Audited {
    fn get() -> &'static Audited {
        static AUDITED: OnceLock<Audited> = OnceLock::new();
        AUDITED.get_or_init(|| {
            let fixture = Fixture::get();
            let mirror = Mirror::start(fixture);
            mirror.publish(fixture, &fixture.lock("consumer", CONSUMER));
            let (lines, output) = mirror.audit(fixture, &["--package", "plain_ex"]);
            assert!(output.status.success(), "{}", describe(&output));
            assert_eq!(
                lines["plain_ex"]["result"],
                "match",
                "{}",
                describe(&output)
            );
            let (mut lines, output) = mirror.audit(fixture, &["--package", "nonrepro_ex"]);
            let nonrepro = lines
                .remove("nonrepro_ex")
                .unwrap_or_else(|| panic!("no line for nonrepro_ex: {}", describe(&output)));
            Audited {
                mirror,
                nonrepro,
                nonrepro_status: output.status.code(),
            }
        })
    }
}

/// nonrepro_ex embeds its compile time: the rebuild differs, the audit exits 2 and posts a
/// verdict that names the beam and the LitT chunk with both times; the mirror stores it,
/// serves it signed, and flags the build; nothing was countersigned.
#[test]
fn a_build_that_is_not_reproducible_gets_a_mismatch_verdict_and_is_flagged() {
    let fixture = Fixture::get();
    let audited = Audited::get();
    let mirror = &audited.mirror;
    let line = &audited.nonrepro;
    assert_eq!(audited.nonrepro_status, Some(2), "{line}");
    assert_eq!(line["result"], "mismatch", "{line}");
    assert_eq!(line["flagged"], true, "{line}");
    assert!(
        line["chunks"].as_array().unwrap().contains(&"LitT".into()),
        "{line}"
    );
    let files = line["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "only the beam differs: {line}");
    assert_eq!(files[0]["path"], "ebin/Elixir.NonreproEx.beam");
    let litt = files[0]["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "LitT")
        .unwrap();
    let explanation = litt["explanation"].as_str().unwrap();
    assert_eq!(
        explanation.matches("built at 20").count(),
        2,
        "{explanation}"
    );
    assert!(
        line["summary"]
            .as_str()
            .unwrap()
            .contains("ebin/Elixir.NonreproEx.beam (LitT"),
        "{line}"
    );

    // The mirror's copy: flagged in the index, the verdict served and signed by the auditor.
    let auditor = fixture.public_key("auditor.pub");
    let build = mirror.build("nonrepro_ex");
    let key = build["key"].as_str().unwrap();
    assert_eq!(build["flagged"], true, "{build}");
    assert_eq!(build.get("auditors"), None, "not countersigned: {build}");
    assert_eq!(build["verdicts"][0]["auditor"], auditor.key_id());
    assert_eq!(build["verdicts"][0]["result"], "mismatch");
    assert_eq!(build["verdicts"][0]["summary"], line["summary"]);
    assert_eq!(mirror.manifest(key).signatures.len(), 1);
    let verdicts = mirror.get_json(&format!("/precomp/v1/verdicts/{key}"));
    assert_eq!(verdicts["flagged"], true);
    let record = &verdicts["verdicts"][0];
    assert_eq!(record["files"], line["files"]);
    let signed = base64_decode(record["signed_verdict"].as_str().unwrap());
    let verdict = SignedVerdict::decode(&signed)
        .unwrap()
        .verify(std::slice::from_ref(&auditor))
        .unwrap();
    assert_eq!(verdict.key, key);
    assert_eq!(
        hex::encode(&verdict.published_sha256),
        build["artifact_sha256"]
    );
    assert!(SignedVerdict::decode(&signed)
        .unwrap()
        .verify(&[fixture.public_key("builder.pub")])
        .is_err());

    // Only auditors post verdicts, and only about the build they name.
    let client = reqwest::blocking::Client::new();
    let post = |key: &str, token: &str| {
        client
            .post(mirror.server.url(&format!("/precomp/v1/verdicts/{key}")))
            .bearer_auth(token)
            .body(signed.clone())
            .send()
            .unwrap()
    };
    let by_builder = post(key, &mirror.builder_token);
    assert_eq!(by_builder.status(), 403);
    assert!(by_builder
        .text()
        .unwrap()
        .contains("not one of this mirror's auditor keys"));
    let elsewhere = post(&"0".repeat(64), &mirror.auditor_token);
    assert_eq!(elsewhere.status(), 422);
    assert!(elsewhere.text().unwrap().contains("it is about key"));
    let again = post(key, &mirror.auditor_token);
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = serde_json::from_slice(&again.bytes().unwrap()).unwrap();
    assert_eq!(again["stored"], "unchanged", "{again}");
}

/// Standard base64 with padding (the mirror's `signed_verdict`).
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut bits, mut value) = (0u32, 0u32);
    for byte in text.bytes().filter(|&b| b != b'=') {
        let digit = ALPHABET.iter().position(|&c| c == byte).expect("base64") as u32;
        value = (value << 6) | digit;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((value >> bits) as u8);
            value &= (1 << bits) - 1;
        }
    }
    out
}

/// A Mix project depending on CONSUMER, with deps unpacked as `mix deps.get` leaves them and
/// the builder's stand-in SCM (Mix's Hex client is not installed here; precomp/tests/fetch.rs
/// says more).
fn consumer(fixture: &Fixture) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("precomp-audit-consumer-")
        .tempdir()
        .unwrap();
    let root = dir.path();
    let deps: Vec<String> = CONSUMER
        .iter()
        .map(|r| format!("{{:{}, \"~> 1.0\"}}", r.split('@').next().unwrap()))
        .collect();
    std::fs::write(
        root.join("mix.exs"),
        format!(
            "{}\ndefmodule AuditConsumer.MixProject do\n  use Mix.Project\n\n  def project do\n    \
             [app: :audit_consumer, version: \"0.1.0\", deps: [{}]]\n  end\nend\n",
            precomp_builder::project::SCM,
            deps.join(", ")
        ),
    )
    .unwrap();
    std::fs::copy(fixture.lock("consumer", CONSUMER), root.join("mix.lock")).unwrap();
    for release in CONSUMER {
        let (name, version) = release.split_once('@').unwrap();
        let tarball = std::fs::read(
            fixture
                .path("repo/tarballs")
                .join(format!("{name}-{version}.tar")),
        )
        .unwrap();
        let tarball = precomp_proto::tarball::read(&tarball).unwrap();
        let dest = root.join("deps").join(name);
        precomp_proto::tarball::unpack_contents(&tarball.contents_tar_gz, &dest).unwrap();
        std::fs::write(dest.join(".fetch"), "").unwrap();
    }
    dir
}

/// `precomp fetch --json` of a fresh consumer trusting the builder, with `args`: each dep's
/// line by app.
fn fetch(args: &[&str]) -> BTreeMap<String, serde_json::Value> {
    let fixture = Fixture::get();
    let audited = Audited::get();
    let project = consumer(fixture);
    let mut command = precomp_command();
    command
        .arg("fetch")
        .arg("--project")
        .arg(project.path())
        .args(["--mirror", audited.mirror.url(), "--json", "--trust"])
        .arg(fixture.key("builder.pub"))
        .args(args)
        .env("MIX_ENV", "dev");
    let output = output_within(command, Duration::from_secs(300));
    assert!(output.status.success(), "{}", describe(&output));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let app = value["app"].as_str()?.to_string();
            Some((app, value))
        })
        .collect()
}

fn audit_policy() -> Vec<String> {
    let fixture = Fixture::get();
    vec![
        "--auditor".into(),
        fixture.key("auditor.pub").display().to_string(),
        "--require-auditors".into(),
        "1".into(),
    ]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Policy "builder + at least one auditor": signed by the builder only is a policy miss; the
/// same build is a hit without the policy.
#[test]
fn a_build_no_auditor_signed_is_a_miss_when_the_policy_requires_one() {
    let with_policy = fetch(&strs(&audit_policy()));
    let shapes = &with_policy["shapes"];
    assert_eq!(shapes["status"], "miss", "{shapes}");
    assert_eq!(shapes["kind"], "policy", "{shapes}");
    assert!(
        shapes["reason"].as_str().unwrap().contains("auditor"),
        "{shapes}"
    );
    let without = fetch(&[]);
    assert_eq!(
        without["shapes"]["status"], "installed",
        "{}",
        without["shapes"]
    );
}

/// Policy "builder + at least one auditor": the build the auditor matched and countersigned
/// is installed, and both signed it.
#[test]
fn a_build_the_builder_and_an_auditor_signed_is_a_hit() {
    let fixture = Fixture::get();
    let fetched = fetch(&strs(&audit_policy()));
    let plain = &fetched["plain_ex"];
    assert_eq!(plain["status"], "installed", "{plain}");
    assert_eq!(
        plain["signers"],
        serde_json::json!([
            fixture.public_key("builder.pub").key_id(),
            fixture.public_key("auditor.pub").key_id()
        ]),
        "{plain}"
    );
}

/// With an audit policy, a build an auditor flagged is a miss naming the verdict, whatever
/// its signatures; without auditors in the policy the flag is not consulted.
#[test]
fn a_flagged_build_is_a_miss_with_an_audit_policy() {
    let fixture = Fixture::get();
    // Auditors named but none required: the flag alone makes the miss.
    let fetched = fetch(&["--auditor", fixture.key("auditor.pub").to_str().unwrap()]);
    let nonrepro = &fetched["nonrepro_ex"];
    assert_eq!(nonrepro["status"], "miss", "{nonrepro}");
    assert_eq!(nonrepro["kind"], "flagged", "{nonrepro}");
    let reason = nonrepro["reason"].as_str().unwrap();
    assert!(reason.starts_with("flagged by audit: "), "{reason}");
    assert!(reason.contains("LitT"), "{reason}");
    assert!(
        reason.contains(&fixture.public_key("auditor.pub").key_id()),
        "{reason}"
    );
    assert_eq!(fetched["shapes"]["status"], "installed", "not flagged");

    let without = fetch(&[]);
    assert_eq!(
        without["nonrepro_ex"]["status"], "installed",
        "{}",
        without["nonrepro_ex"]
    );
}

/// Arguments that cannot make an audit are refused before anything runs.
#[test]
fn audit_needs_a_selection_and_a_token() {
    let keys = tempfile::tempdir().unwrap();
    ok(precomp(&[
        "keys",
        "generate",
        "--name",
        "auditor",
        "--out",
        keys.path().to_str().unwrap(),
    ]));
    let run = |args: &[&str]| {
        let mut command = precomp_command();
        command
            .args(["audit", "--mirror", "http://127.0.0.1:9", "--key"])
            .arg(keys.path().join("auditor.key"))
            .args(args);
        output_within(command, Duration::from_secs(60))
    };
    let output = run(&["--token", "pct_x"]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("--package NAME, --all"),
        "{}",
        describe(&output)
    );
    let output = run(&["--all"]);
    assert!(!output.status.success());
    assert!(text(&output).contains("--dry-run"), "{}", describe(&output));
}
