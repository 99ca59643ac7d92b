//! Build recipes (docs/builder.md "The build recipe"): audits compare like with like, against a
//! real `precomp serve` over loopback. Builds of another recipe, or of none, are signed here by
//! hand (the builder only ever writes its own): `precomp audit` does not rebuild them — it
//! says which recipe would, posts nothing and exits 3 — and the audit lease
//! (`POST /precomp/v1/jobs/lease`) offers each build only to auditors of its recipe, a request
//! without one (an older worker) only builds without one; `precomp worker --audit` asks with
//! this precomp's recipe.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;
use precomp_http::artifacts::ArtifactClient;
use precomp_proto::buildkey::{BuildInputs, Manager, PackageRef, Target};
use precomp_proto::manifest::{
    ArtifactSigningKey, Manifest, Output as BuildOutput, SignedManifest,
};
use prost::Message;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A recipe that is not this precomp's.
const OTHER: &str = "precomp-build-recipe-2";

/// A signing key written as `DIR/NAME.key` and `DIR/NAME.pub`.
fn key_files(dir: &Path, name: &str) -> ArtifactSigningKey {
    ok(precomp(&[
        "keys",
        "generate",
        "--name",
        name,
        "--out",
        dir.to_str().unwrap(),
    ]));
    let pem = std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap();
    ArtifactSigningKey::from_pem(&pem).unwrap()
}

/// A token named `name` bound to `DIR/NAME.pub`, on the mirror's data directory.
fn token(data: &Path, keys: &Path, name: &str) -> String {
    ok(precomp(&[
        "--data",
        data.to_str().unwrap(),
        "token",
        "create",
        "--name",
        name,
        "--key",
        keys.join(format!("{name}.pub")).to_str().unwrap(),
    ]))
    .trim()
    .to_string()
}

/// A build of `package` 1.0.0 for the host toolchain's tuple (OTP 25, Elixir 1.14.0), with a
/// real artifact whose beam says `tag`, recording `recipe`: its key and (artifact, manifest).
fn build(package: &str, tag: &str, recipe: Option<&str>) -> (String, Vec<u8>, Manifest) {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(app.join("ebin")).unwrap();
    std::fs::write(app.join("ebin/app.beam"), format!("{package} beam {tag}")).unwrap();
    let artifact = precomp_proto::artifact::pack(&app, dir.path())
        .unwrap()
        .bytes;
    let inputs = BuildInputs {
        package: PackageRef {
            name: package.into(),
            version: "1.0.0".into(),
            outer_checksum: [0x11; 32],
        },
        manager: Manager::Mix,
        closure: vec![],
        otp_major: "25".into(),
        elixir: "1.14.0".into(),
        mix_env: "prod".into(),
        target: Target::Any,
        compile_env: vec![],
    };
    let output = BuildOutput {
        artifact_sha256: Sha256::digest(&artifact).to_vec(),
        artifact_size: artifact.len() as u64,
        files: precomp_proto::artifact::list(&artifact).unwrap(),
        native_code: false,
    };
    let manifest = test_manifest(&inputs, output, "recipe-test", recipe);
    (manifest.key.clone(), artifact, manifest)
}

struct Mirror {
    server: ServeProcess,
    _data: tempfile::TempDir,
    keys: tempfile::TempDir,
    builder: ArtifactSigningKey,
    builder_token: String,
    auditor_token: String,
}

impl Mirror {
    /// `precomp serve` with an empty upstream, knowing the auditor's key; a builder's and an
    /// auditor's token, each bound to its key.
    fn start() -> Mirror {
        let data = data_dir("precomp-recipe-mirror-");
        let keys = tempfile::tempdir().unwrap();
        let builder = key_files(keys.path(), "builder");
        key_files(keys.path(), "auditor");
        keygen(&keys.path().join("repo.pem"));
        let upstream = keys.path().join("empty-upstream");
        std::fs::create_dir_all(&upstream).unwrap();
        let builder_token = token(data.path(), keys.path(), "builder");
        let auditor_token = token(data.path(), keys.path(), "auditor");
        let mut command = precomp_command();
        command
            .arg("--data")
            .arg(data.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(format!("file://{}", upstream.display()))
            .arg("--upstream-key")
            .arg(keys.path().join("repo.pem.pub"))
            .arg("--auditor-key")
            .arg(keys.path().join("auditor.pub"));
        Mirror {
            server: ServeProcess::spawn(command),
            _data: data,
            keys,
            builder,
            builder_token,
            auditor_token,
        }
    }

    /// Publishes a build signed by the builder; its key.
    fn publish(&self, package: &str, recipe: Option<&str>) -> String {
        let key = build(package, "", recipe).0;
        self.upload(package, "", recipe).expect("published");
        key
    }

    /// Uploads a build signed by the builder: the mirror's `result`, or its refusal.
    fn upload(
        &self,
        package: &str,
        tag: &str,
        recipe: Option<&str>,
    ) -> Result<String, precomp_http::Error> {
        let (key, artifact, manifest) = build(package, tag, recipe);
        let client =
            ArtifactClient::new(self.server.base(), Some(self.builder_token.clone())).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let sha: [u8; 32] = Sha256::digest(&artifact).into();
            client.upload_artifact(&sha, artifact).await.unwrap();
            let signed = SignedManifest::sign(&manifest, &self.builder).encode_to_vec();
            let (_, stored) = client.upload_manifest(&key, signed).await?;
            Ok(stored.result)
        })
    }

    /// The signed manifest served for `key`.
    fn manifest(&self, key: &str) -> Vec<u8> {
        let response =
            reqwest::blocking::get(self.server.url(&format!("/precomp/v1/manifests/{key}")))
                .unwrap();
        assert!(response.status().is_success());
        response.bytes().unwrap().to_vec()
    }

    /// `precomp audit --package PACKAGE` with the auditor's key and token, in a fresh data
    /// directory, with `flags`.
    fn audit_output(&self, package: &str, flags: &[&str]) -> Output {
        let data = data_dir("precomp-recipe-auditor-");
        let mut command = precomp_command();
        command
            .arg("--data")
            .arg(data.path())
            .args(["audit", "--mirror", self.server.base(), "--token"])
            .arg(&self.auditor_token)
            .arg("--key")
            .arg(self.keys.path().join("auditor.key"))
            .args(["--package", package])
            .args(flags);
        output_within(command, Duration::from_secs(300))
    }

    /// `precomp audit --json --package PACKAGE`: its one JSON line and the output.
    fn audit(&self, package: &str) -> (Value, Output) {
        let output = self.audit_output(package, &["--json"]);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{}", describe(&output));
        (serde_json::from_str(lines[0]).unwrap(), output)
    }

    /// `POST jobs/lease` for an audit job of the host tuple with `recipe` (none: a request of
    /// a worker from before recipes): status and body.
    fn lease(&self, worker: &str, recipe: Option<&str>) -> (u16, String) {
        let mut body = json!({"kind": "audit", "worker": worker, "otp_major": "25",
                              "elixir": "1.14.0", "mix_env": "prod", "targets": ["any"],
                              "lease_seconds": 60});
        if let Some(recipe) = recipe {
            body["recipe"] = json!(recipe);
        }
        let response = reqwest::blocking::Client::new()
            .post(self.server.url("/precomp/v1/jobs/lease"))
            .bearer_auth(&self.auditor_token)
            .json(&body)
            .send()
            .unwrap();
        (response.status().as_u16(), response.text().unwrap())
    }

    /// The key of the build an audit lease with `recipe` gives; `None` for 204.
    fn leased(&self, worker: &str, recipe: Option<&str>) -> Option<String> {
        let (status, text) = self.lease(worker, recipe);
        if status == 204 {
            return None;
        }
        assert_eq!(status, 200, "{text}");
        let lease: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            lease["build"].get("recipe").and_then(Value::as_str),
            recipe,
            "{lease}"
        );
        Some(lease["build"]["key"].as_str().unwrap().to_string())
    }

    /// The index entry of `package`'s one build.
    fn build(&self, package: &str) -> Value {
        let response =
            reqwest::blocking::get(self.server.url(&format!("/precomp/v1/index/{package}")))
                .unwrap();
        assert!(response.status().is_success());
        let index: Value = serde_json::from_slice(&response.bytes().unwrap()).unwrap();
        let builds = index["builds"].as_array().unwrap();
        assert_eq!(builds.len(), 1, "{index}");
        builds[0].clone()
    }

    /// `precomp worker --audit --once --json` with the auditor's key and token: its line.
    fn audit_worker_once(&self) -> (Value, Output) {
        let data = data_dir("precomp-recipe-worker-");
        let mut command = precomp_command();
        command
            .arg("--data")
            .arg(data.path())
            .args(["worker", "--audit", "--once", "--json", "--mirror"])
            .arg(self.server.base())
            .arg("--token")
            .arg(&self.auditor_token)
            .arg("--key")
            .arg(self.keys.path().join("auditor.key"));
        let output = output_within(command, Duration::from_secs(300));
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let line = stdout.lines().next().unwrap_or_default().to_string();
        let value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{e}: {line:?}\n{}", describe(&output)));
        (value, output)
    }
}

#[test]
fn audits_compare_builds_of_one_recipe_only() {
    let mirror = Mirror::start();
    let ours = precomp_builder::RECIPE;
    let other_key = mirror.publish("other_recipe_ex", Some(OTHER));
    let unknown_key = mirror.publish("unknown_recipe_ex", None);
    // The index says which recipe each build records (none: absent).
    assert_eq!(mirror.build("other_recipe_ex")["recipe"], OTHER);
    assert_eq!(mirror.build("unknown_recipe_ex").get("recipe"), None);

    // A worker asks with this precomp's recipe: neither build is offered to it (a request
    // without a recipe would get the unknown one, as below).
    let (line, output) = mirror.audit_worker_once();
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(line["outcome"], "no_jobs", "{}", describe(&output));

    // `precomp audit` of another recipe's build: not rebuilt, says why and who can, exit 3.
    let (line, output) = mirror.audit("other_recipe_ex");
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    assert_eq!(line["result"], "other_recipe", "{line}");
    assert_eq!(line["recipe"], OTHER, "{line}");
    let expected = format!(
        "{other_key} was built with recipe {OTHER}; this precomp builds with recipe {ours}, so \
         its rebuild may differ in bytes that depend on how it compiles, not on what: audit it \
         with a precomp of recipe {OTHER}"
    );
    assert_eq!(line["reason"], expected.as_str(), "{line}");
    // Of a build that records none: the same, naming no recipe.
    let (line, output) = mirror.audit("unknown_recipe_ex");
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    assert_eq!(line["result"], "other_recipe", "{line}");
    assert_eq!(line["recipe"], Value::Null, "{line}");
    let reason = line["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("{unknown_key} records no build recipe")),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("builds with recipe {ours}")),
        "{reason}"
    );
    // Without --json: the line and the summary say it.
    let output = mirror.audit_output("other_recipe_ex", &[]);
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    let stderr = text(&output);
    assert!(
        stderr.contains(&format!(
            "NOT AUDITED other_recipe_ex 1.0.0: {expected}; nothing posted"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("0 matched, 0 mismatched, 0 failed, 0 skipped, 1 of another recipe"),
        "{stderr}"
    );
    // Nothing was posted: no verdict, not flagged, not countersigned.
    for package in ["other_recipe_ex", "unknown_recipe_ex"] {
        let build = mirror.build(package);
        assert_eq!(build.get("verdicts"), None, "{build}");
        assert_eq!(build.get("flagged"), None, "{build}");
        assert_eq!(build["signers"].as_array().unwrap().len(), 1, "{build}");
    }

    // The audit lease: each build to an auditor of its recipe only.
    let ours_key = mirror.publish("our_recipe_ex", Some(ours));
    assert_eq!(mirror.leased("w1", Some(ours)), Some(ours_key));
    assert_eq!(mirror.leased("w2", Some(ours)), None, "ours is leased");
    assert_eq!(mirror.leased("w3", Some(OTHER)), Some(other_key));
    assert_eq!(mirror.leased("w4", None), Some(unknown_key));
    assert_eq!(mirror.leased("w5", None), None);
}

/// A second builder's other bytes for a published key are a disagreement only within one
/// recipe: of another recipe (or none) the upload is answered `other_recipe` and not kept.
#[test]
fn other_bytes_of_another_recipe_are_not_a_disagreement() {
    let mirror = Mirror::start();
    let ours = precomp_builder::RECIPE;
    let key = mirror.publish("two_recipes_ex", Some(ours));
    let served = mirror.manifest(&key);
    for recipe in [Some(OTHER), None] {
        let result = mirror.upload("two_recipes_ex", "other bytes", recipe);
        assert_eq!(result.unwrap(), "other_recipe");
    }
    assert_eq!(
        mirror.manifest(&key),
        served,
        "the published build is still served"
    );
    let build = mirror.build("two_recipes_ex");
    assert_eq!(build.get("disagreements"), None, "{build}");
    assert_eq!(build.get("flagged"), None, "{build}");
    // The same recipe, other bytes: a reproducibility finding (409), flagged.
    let refused = mirror
        .upload("two_recipes_ex", "other bytes", Some(ours))
        .unwrap_err();
    assert!(
        matches!(refused, precomp_http::Error::Refused { status: 409, .. }),
        "{refused}"
    );
    let build = mirror.build("two_recipes_ex");
    assert_eq!(build["flagged"], true, "{build}");
    assert_eq!(
        build["disagreements"].as_array().unwrap().len(),
        1,
        "{build}"
    );
}
