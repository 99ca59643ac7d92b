//! Keys and the trust document end to end: `precomp keys init|add|rotate|revoke` on the
//! mirror's data directory, `precomp serve` serving the document, and `precomp fetch
//! --root-key` in a real Mix project (real `mix`, `elixir`) trusting the document's builders,
//! refusing a revoked key with its reason, following a root rotation from the version it
//! holds, and refusing a rollback and a stranger's root.
//!
//! The artifact is real: plain_ex (a fixture package) compiled by `mix compile` in a copy of
//! the consumer, packed with `proto::artifact`, described by a manifest of its build inputs
//! and signed by builder keys made with `precomp keys generate`.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use precomp_proto::buildkey::{BuildInputs, Target};
use precomp_proto::lock::MixLock;
use precomp_proto::manifest::{ArtifactSigningKey, Manifest, Provenance, SignedManifest};
use precomp_registry::artifacts::ArtifactClient;
use prost::Message;
use sha2::{Digest, Sha256};

const TEST_SCM: &str = precomp_builder::project::SCM;

const MIX_EXS: &str = r#"
defmodule TrustApp.MixProject do
  use Mix.Project

  def project do
    [app: :trust_app, version: "0.1.0", elixir: "~> 1.14", deps: [{:plain_ex, "~> 1.0"}]]
  end
end
"#;

/// The repository, lock, consumer template and plain_ex's artifact and manifest, made once.
struct Fixture {
    dir: tempfile::TempDir,
    artifact: Vec<u8>,
    manifest: Manifest,
}

impl Fixture {
    fn get() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(Fixture::build)
    }

    fn build() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("precomp-trust-fixture-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        let packages = root.join("packages");
        precomp_testkit::copy_dir(
            &workspace().join("tests/fixtures/packages/plain_ex"),
            &packages.join("plain_ex"),
        );
        keygen(&root.join("repo.pem"));
        repo_build(
            &packages,
            &root.join("repo.pem"),
            "hexpm",
            &root.join("repo"),
        );
        ok(precomp(&[
            "repo",
            "lock",
            "--repo",
            root.join("repo").to_str().unwrap(),
            "--public-key",
            root.join("repo.pem.pub").to_str().unwrap(),
            "--out",
            root.join("mix.lock").to_str().unwrap(),
            "plain_ex@1.0.0",
        ]));
        let fixture = Fixture {
            dir,
            artifact: Vec::new(),
            manifest: Manifest::default(),
        };

        // Compile plain_ex as a consumer's dep (its Mix env is prod) and pack it.
        let build = fixture.path("build");
        fixture.consumer(&build);
        let mut mix = Command::new("mix");
        mix.arg("compile")
            .current_dir(&build)
            .env("MIX_ENV", "dev")
            .env_remove("MIX_BUILD_PATH")
            .env_remove("MIX_TARGET");
        let compiled = output_within(mix, Duration::from_secs(300));
        assert!(compiled.status.success(), "{}", describe(&compiled));
        let packed =
            precomp_proto::artifact::pack(&build.join("_build/dev/lib/plain_ex"), &build).unwrap();
        let lock =
            MixLock::parse(&std::fs::read_to_string(fixture.path("mix.lock")).unwrap()).unwrap();
        let (package, closure) = lock.closure("plain_ex").unwrap();
        let inputs = BuildInputs {
            package,
            closure,
            otp_major: erl_eval("erlang:system_info(otp_release)"),
            elixir: capture(Command::new("elixir").args(["-e", "IO.write(System.version())"])),
            mix_env: "prod".into(),
            target: Target::Any,
            compile_env: Vec::new(),
        };
        let mut manifest = Manifest::default();
        manifest.set_inputs(&inputs).unwrap();
        manifest.output = Some(packed.output());
        manifest.provenance = Some(Provenance {
            toolchain_id: "host".into(),
            toolchain_digest: "0".repeat(64),
            builder_id: "trust-test".into(),
            build_duration_ms: 1,
            build_log_sha256: vec![0; 32],
        });
        Fixture {
            artifact: packed.bytes,
            manifest,
            ..fixture
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A consumer project at `dir` as `mix deps.get` leaves it: mix.exs (with the test SCM
    /// standing in for Hex), mix.lock, deps/plain_ex unpacked with its `.fetch` marker.
    fn consumer(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("mix.exs"), format!("{TEST_SCM}{MIX_EXS}")).unwrap();
        std::fs::copy(self.path("mix.lock"), dir.join("mix.lock")).unwrap();
        let tarball = std::fs::read(self.path("repo/tarballs/plain_ex-1.0.0.tar")).unwrap();
        let tarball = precomp_proto::tarball::read(&tarball).unwrap();
        let dest = dir.join("deps/plain_ex");
        precomp_proto::tarball::unpack_contents(&tarball.contents_tar_gz, &dest).unwrap();
        std::fs::write(dest.join(".fetch"), "").unwrap();
    }
}

fn erl_eval(expr: &str) -> String {
    capture(Command::new("erl").args([
        "-noshell",
        "-eval",
        &format!("io:format(\"~s\", [{expr}]), halt()."),
    ]))
}

fn capture(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// `precomp --data DATA ARGS…`.
fn precomp_data(data: &Path, args: &[&str]) -> Output {
    let mut command = precomp_command();
    command.arg("--data").arg(data).args(args);
    output_within(command, Duration::from_secs(60))
}

/// A new signing key made with `precomp keys generate`: (private key, its .pub, key id).
fn generate(keys: &Path, name: &str) -> (ArtifactSigningKey, PathBuf, String) {
    let stdout = ok(precomp(&[
        "keys",
        "generate",
        "--name",
        name,
        "--out",
        keys.to_str().unwrap(),
    ]));
    let id = stdout.split_whitespace().next().unwrap().to_string();
    let pem = std::fs::read_to_string(keys.join(format!("{name}.key"))).unwrap();
    (
        ArtifactSigningKey::from_pem(&pem).unwrap(),
        keys.join(format!("{name}.pub")),
        id,
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `precomp fetch --json` in `project` against `mirror`, pinning `root`, caching in `cache`.
fn fetch(project: &Path, mirror: &str, root: &Path, cache: &Path) -> Output {
    let mut command = precomp_command();
    command
        .args(["fetch", "--json", "--env", "dev", "--mirror", mirror])
        .arg("--project")
        .arg(project)
        .arg("--root-key")
        .arg(root)
        .arg("--trust-cache")
        .arg(cache)
        .env_remove("HEX_MIRROR")
        .env_remove("MIX_BUILD_PATH")
        .env_remove("MIX_TARGET");
    output_within(command, Duration::from_secs(120))
}

/// plain_ex's line of a `fetch --json` output.
fn plain_ex(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", describe(output));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|v| v["app"] == "plain_ex")
        .unwrap_or_else(|| panic!("no plain_ex line: {}", describe(output)))
}

fn cached_version(cache: &Path) -> u64 {
    let bytes = std::fs::read(cache).unwrap();
    precomp_proto::trust::SignedTrustDocument::decode(&bytes)
        .unwrap()
        .verify_self()
        .unwrap()
        .version
}

#[test]
fn clients_trust_the_documents_keys_refuse_revoked_ones_and_follow_rotations() {
    let fixture = Fixture::get();
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let keys = scratch.path().join("keys");
    let (_, root_pub, _) = generate(&keys, "root");
    generate(&keys, "root2");
    let (b1, b1_pub, b1_id) = generate(&keys, "builder-1");
    let (_, b2_pub, _) = generate(&keys, "builder-2");
    let (b3, b3_pub, b3_id) = generate(&keys, "builder-3");
    let key = |name: &str| keys.join(name).to_str().unwrap().to_string();

    // Version 1: the root, two builders.
    ok(precomp_data(
        &data,
        &[
            "keys",
            "init",
            "--root",
            &key("root.key"),
            "--builder",
            b1_pub.to_str().unwrap(),
            "--builder",
            b2_pub.to_str().unwrap(),
        ],
    ));
    let listed = ok(precomp_data(&data, &["keys", "list"]));
    assert!(
        listed.contains("version 1") && listed.contains(&b1_id),
        "{listed}"
    );

    // The mirror, with builder-1 and builder-3 allowed to publish (tokens bound to them).
    let token = |name: &str, public: &Path| {
        ok(precomp_data(
            &data,
            &[
                "token",
                "create",
                "--name",
                name,
                "--key",
                public.to_str().unwrap(),
            ],
        ))
        .trim()
        .to_string()
    };
    let (token1, token3) = (token("b1", &b1_pub), token("b3", &b3_pub));
    let mut serve = precomp_command();
    serve
        .arg("--data")
        .arg(&data)
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream"])
        .arg(format!("file://{}", fixture.path("repo").display()))
        .arg("--upstream-key")
        .arg(fixture.path("repo.pem.pub"));
    let server = ServeProcess::spawn(serve);
    let publish = |token: &str, signer: &ArtifactSigningKey| {
        let client = ArtifactClient::new(server.base(), Some(token.to_string())).unwrap();
        let sha: [u8; 32] = Sha256::digest(&fixture.artifact).into();
        let signed = SignedManifest::sign(&fixture.manifest, signer).encode_to_vec();
        runtime().block_on(async {
            client
                .upload_artifact(&sha, fixture.artifact.clone())
                .await
                .unwrap();
            client
                .upload_manifest(&fixture.manifest.key, signed)
                .await
                .unwrap();
        });
    };
    publish(&token1, &b1);

    // The mirror serves the document as issued.
    let served = reqwest::blocking::get(server.url("/precomp/v1/trust")).unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.bytes().unwrap().to_vec(),
        std::fs::read(data.join("trust/trust.doc")).unwrap()
    );

    // A client pinning the root trusts builder-1 through the document.
    let project = scratch.path().join("project");
    fixture.consumer(&project);
    let cache = scratch.path().join("cache/trust.doc");
    let first = plain_ex(&fetch(&project, server.base(), &root_pub, &cache));
    assert_eq!(first["status"], "installed", "{first}");
    assert_eq!(first["signers"], serde_json::json!([b1_id]), "{first}");
    assert_eq!(cached_version(&cache), 1);

    // builder-1 is revoked: the client refuses its signature, naming the revocation.
    ok(precomp_data(
        &data,
        &[
            "keys",
            "revoke",
            b1_pub.to_str().unwrap(),
            "--reason",
            "laptop stolen",
            "--root",
            &key("root.key"),
        ],
    ));
    let refused = plain_ex(&fetch(&project, server.base(), &root_pub, &cache));
    assert_eq!(refused["status"], "miss", "{refused}");
    assert_eq!(refused["kind"], "revoked", "{refused}");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains(&b1_id) && reason.contains("laptop stolen"),
        "{reason}"
    );
    assert!(
        !project.join("_build/dev/lib/plain_ex/ebin").exists(),
        "the install signed by a revoked key was left in place"
    );
    assert_eq!(cached_version(&cache), 2);

    // The root rotates (version 3, signed by both roots), then the new root alone adds
    // builder-3 (version 4), who countersigns the build. The client holds version 2 and
    // still pins the old root: it follows 3 and 4 and trusts builder-3.
    ok(precomp_data(
        &data,
        &[
            "keys",
            "rotate",
            "--old",
            root_pub.to_str().unwrap(),
            "--new-root",
            &key("root2.key"),
            "--root",
            &key("root.key"),
        ],
    ));
    ok(precomp_data(
        &data,
        &[
            "keys",
            "add",
            b3_pub.to_str().unwrap(),
            "--role",
            "builder",
            "--root",
            &key("root2.key"),
        ],
    ));
    let by_old_root = precomp_data(&data, &["keys", "renew", "--root", &key("root.key")]);
    assert!(
        !by_old_root.status.success() && text(&by_old_root).contains("not a root key"),
        "the rotated-out root still issues: {}",
        describe(&by_old_root)
    );
    publish(&token3, &b3);
    let followed = plain_ex(&fetch(&project, server.base(), &root_pub, &cache));
    assert_eq!(followed["status"], "installed", "{followed}");
    assert_eq!(
        followed["signers"],
        serde_json::json!([b3_id]),
        "{followed}"
    );
    assert_eq!(cached_version(&cache), 4);

    // A client with nothing cached walks the chain from version 1 the same way.
    let fresh_cache = scratch.path().join("fresh/trust.doc");
    let fresh_project = scratch.path().join("fresh-project");
    fixture.consumer(&fresh_project);
    let fresh = plain_ex(&fetch(
        &fresh_project,
        server.base(),
        &root_pub,
        &fresh_cache,
    ));
    assert_eq!(fresh["status"], "installed", "{fresh}");
    assert_eq!(cached_version(&fresh_cache), 4);

    // The mirror serving an older version (a rollback) is refused by a client holding 4.
    let current = std::fs::read(data.join("trust/trust.doc")).unwrap();
    std::fs::write(
        data.join("trust/trust.doc"),
        std::fs::read(data.join("trust/history/2.doc")).unwrap(),
    )
    .unwrap();
    let rolled_back = fetch(&project, server.base(), &root_pub, &cache);
    assert!(
        !rolled_back.status.success() && text(&rolled_back).contains("rollback"),
        "{}",
        describe(&rolled_back)
    );
    std::fs::write(data.join("trust/trust.doc"), current).unwrap();

    // A root nobody issued the document with.
    let (_, stranger_pub, _) = generate(&keys, "stranger");
    let stranger = fetch(
        &project,
        server.base(),
        &stranger_pub,
        &scratch.path().join("stranger/trust.doc"),
    );
    assert!(
        !stranger.status.success()
            && text(&stranger).contains("not signed by a root key this client trusts"),
        "{}",
        describe(&stranger)
    );
}
