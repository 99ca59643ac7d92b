//! Keys and the trust document end to end: `precomp keys init|add|rotate|revoke` on the
//! mirror's data directory, `precomp serve` serving the document, and `precomp fetch
//! --root-key` in a real Mix project (real `mix`, `elixir`) trusting the document's builders,
//! refusing a revoked key with its reason, following a root rotation from the version it
//! holds, and refusing a rollback and a stranger's root.
//!
//! The artifact is real: plain_ex (a fixture package) compiled by `mix compile` in a copy of
//! the consumer, packed with `proto::artifact`, described by a manifest of its build inputs
//! and signed by builder keys made with `precomp keys generate`.
//!
//! Then the mirror's own upload authorization following the document (the second half):
//! keys added, revoked and given roles with `precomp keys` count for uploads from the next
//! request on, without restarting `precomp serve`; `auditor_keys` and `trust_root` in the
//! serve config file; a damaged or unverifiable document refuses uploads. Those manifests are
//! signed in the test with proto's API over small packed artifacts (nothing is compiled).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use precomp_proto::buildkey::{BuildInputs, Manager, PackageRef, Target};
use precomp_proto::lock::MixLock;
use precomp_proto::manifest::{ArtifactSigningKey, Manifest, Provenance, SignedManifest};
use precomp_proto::verdict::{manifest_digest, Verdict, MATCH, MISMATCH};
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
        assert!(closure.is_empty(), "plain_ex has no dependencies");
        let inputs = BuildInputs {
            package,
            manager: Manager::Mix,
            closure: vec![],
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
    // Renewed since (version 3): the miss still names version 2, the one that revoked it.
    ok(precomp_data(
        &data,
        &["keys", "renew", "--root", &key("root.key")],
    ));
    let refused = plain_ex(&fetch(&project, server.base(), &root_pub, &cache));
    assert_eq!(refused["status"], "miss", "{refused}");
    assert_eq!(refused["kind"], "revoked", "{refused}");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains(&b1_id) && reason.contains("laptop stolen (trust document version 2, "),
        "{reason}"
    );
    assert!(
        !project.join("_build/dev/lib/plain_ex/ebin").exists(),
        "the install signed by a revoked key was left in place"
    );
    assert_eq!(cached_version(&cache), 3);

    // The root rotates (version 4, signed by both roots), then the new root alone adds
    // builder-3 (version 5), who countersigns the build: it has the auditor role too, since
    // the mirror takes signatures added to a published manifest only from auditor keys. The
    // client holds version 3 and still pins the old root: it follows 4 and 5 and trusts
    // builder-3.
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
            "--role",
            "auditor",
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
    assert_eq!(cached_version(&cache), 5);

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
    assert_eq!(cached_version(&fresh_cache), 5);

    // The mirror serving an older version (a rollback) is refused by a client holding 5.
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

    // A bare file name as the cache is written in the working directory, with no warning.
    let workdir = scratch.path().join("workdir");
    std::fs::create_dir_all(&workdir).unwrap();
    let mut relative = precomp_command();
    relative
        .current_dir(&workdir)
        .args(["fetch", "--json", "--env", "dev", "--mirror", server.base()])
        .arg("--project")
        .arg(&fresh_project)
        .arg("--root-key")
        .arg(&root_pub)
        .args(["--trust-cache", "rel.doc"])
        .env_remove("HEX_MIRROR")
        .env_remove("MIX_BUILD_PATH")
        .env_remove("MIX_TARGET");
    let relative = output_within(relative, Duration::from_secs(120));
    assert!(
        relative.status.success() && !text(&relative).contains("not cached"),
        "{}",
        describe(&relative)
    );
    assert_eq!(cached_version(&workdir.join("rel.doc")), 5);

    // The mirror gone: the cached document is used, with a one-line warning that says so.
    drop(server);
    let offline = fetch(&project, "http://127.0.0.1:9", &root_pub, &cache);
    assert!(
        text(&offline).contains(
            "warning: using the cached trust document version 5: the mirror could not be asked ("
        ),
        "{}",
        describe(&offline)
    );
}

#[test]
fn keys_commands_refuse_a_zero_validity_and_say_who_serves_what_they_wrote() {
    let scratch = tempfile::tempdir().unwrap();
    let keys = scratch.path().join("keys");
    generate(&keys, "root");
    let root = keys.join("root.key");
    let data = scratch.path().join("data");

    // 0 days was silently 1 day: now a usage error, and nothing written.
    let zero = precomp_data(
        &data,
        &[
            "keys",
            "init",
            "--root",
            root.to_str().unwrap(),
            "--valid-days",
            "0",
        ],
    );
    assert!(!zero.status.success(), "{}", describe(&zero));
    assert!(text(&zero).contains("--valid-days"), "{}", describe(&zero));
    assert!(!data.join("trust/trust.doc").exists());

    // Into the mirror's data directory: served now.
    let served = ok(precomp_data(
        &data,
        &["keys", "init", "--root", root.to_str().unwrap()],
    ));
    assert!(
        served.contains("`precomp serve` with this --data serves it now"),
        "{served}"
    );

    // Into another directory (an offline machine): nobody serves it until it is copied.
    let offline = scratch.path().join("offline-trust");
    let written = ok(precomp_data(
        &data,
        &[
            "keys",
            "init",
            "--root",
            root.to_str().unwrap(),
            "--trust-dir",
            offline.to_str().unwrap(),
        ],
    ));
    assert!(
        !written.contains("serves it now")
            && written.contains(&format!("copy {}", offline.display())),
        "{written}"
    );
    assert!(offline.join("trust.doc").is_file());
}

// ---------------------------------------------------------------------------------------------
// The mirror's uploads follow the trust document
// ---------------------------------------------------------------------------------------------

/// A data directory, keys made with `precomp keys generate`, and what the CLI does with them.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        Site {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// `keys/NAME.key` and `.pub`: (private key, .pub path, key id).
    fn key(&self, name: &str) -> (ArtifactSigningKey, PathBuf, String) {
        generate(&self.keys(), name)
    }

    fn file(&self, name: &str) -> String {
        self.keys().join(name).to_str().unwrap().to_string()
    }

    /// `precomp --data DATA keys ARGS… --root keys/root.key`, which must succeed.
    fn keys_cli(&self, args: &[&str]) {
        let mut all = vec!["keys"];
        all.extend(args);
        let root = self.file("root.key");
        all.extend(["--root", root.as_str()]);
        ok(precomp_data(&self.data(), &all));
    }

    /// `precomp --data DATA token create --name NAME [--key KEY.pub]`: the token.
    fn token(&self, name: &str, key: Option<&Path>) -> String {
        let mut args = vec!["token", "create", "--name", name];
        if let Some(key) = key {
            args.extend(["--key", key.to_str().unwrap()]);
        }
        ok(precomp_data(&self.data(), &args)).trim().to_string()
    }

    /// `precomp --data DATA serve` on an empty upstream directory, with `args`.
    fn serve(&self, args: &[&str]) -> ServeProcess {
        let upstream = self.dir.path().join("empty-upstream");
        std::fs::create_dir_all(&upstream).unwrap();
        let mut command = precomp_command();
        command
            .arg("--data")
            .arg(self.data())
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(format!("file://{}", upstream.display()))
            .args(args);
        ServeProcess::spawn(command)
    }
}

/// A packed artifact and the manifest of a build of shape_user 1.0.0 for Elixir `elixir`
/// (each Elixir version another build key).
struct Build {
    artifact: Vec<u8>,
    manifest: Manifest,
}

impl Build {
    fn new(elixir: &str) -> Build {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("shape_user");
        std::fs::create_dir_all(app.join("ebin")).unwrap();
        std::fs::write(
            app.join("ebin/shape_user.app"),
            format!("{{application,shape_user,[{{vsn,\"1.0.0\"}},{{elixir,\"{elixir}\"}}]}}.\n"),
        )
        .unwrap();
        let packed = precomp_proto::artifact::pack(&app, dir.path()).unwrap();
        let inputs = BuildInputs {
            package: PackageRef {
                name: "shape_user".into(),
                version: "1.0.0".into(),
                outer_checksum: [0x11; 32],
            },
            manager: Manager::Mix,
            closure: vec![],
            otp_major: "25".into(),
            elixir: elixir.into(),
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
        Build {
            artifact: packed.bytes,
            manifest,
        }
    }

    fn key(&self) -> &str {
        &self.manifest.key
    }

    fn signed(&self, signers: &[&ArtifactSigningKey]) -> Vec<u8> {
        let mut signed = SignedManifest::sign(&self.manifest, signers[0]);
        for signer in &signers[1..] {
            signed.countersign(signer);
        }
        signed.encode_to_vec()
    }

    /// A verdict by `auditor` on this build, as published (a match, or a mismatch).
    fn verdict(&self, auditor: &ArtifactSigningKey, result: &str) -> Vec<u8> {
        let published: [u8; 32] = Sha256::digest(&self.artifact).into();
        let rebuilt = if result == MATCH { published } else { [9; 32] };
        Verdict {
            key: self.manifest.key.clone(),
            manifest_sha256: manifest_digest(&self.manifest.encode_to_vec()).to_vec(),
            result: result.into(),
            published_sha256: published.to_vec(),
            rebuilt_sha256: rebuilt.to_vec(),
            rebuilt_size: self.artifact.len() as u64,
            toolchain_id: "host".into(),
            toolchain_digest: "0".repeat(64),
            summary: if result == MATCH {
                String::new()
            } else {
                "1 file differs: ebin/shape_user.app".into()
            },
            ..Default::default()
        }
        .sign(auditor)
        .unwrap()
        .encode_to_vec()
    }
}

/// An HTTP answer: status and body text.
#[derive(Debug)]
struct Answer {
    status: u16,
    text: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    /// Asserts the status and that the body holds each of `expected`.
    fn refused(&self, status: u16, expected: &[&str]) {
        assert_eq!(self.status, status, "{}", self.text);
        for text in expected {
            assert!(self.text.contains(text), "no {text:?} in: {}", self.text);
        }
    }
}

fn send(method: &str, url: String, token: Option<&str>, body: Vec<u8>) -> Answer {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut request = client.request(method.parse().unwrap(), url).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().unwrap();
    Answer {
        status: response.status().as_u16(),
        text: response.text().unwrap(),
    }
}

/// `PUT artifacts/SHA256` of the build's artifact.
fn upload_artifact(server: &ServeProcess, token: &str, build: &Build) -> Answer {
    let sha = hex::encode(Sha256::digest(&build.artifact));
    send(
        "PUT",
        server.url(&format!("/precomp/v1/artifacts/{sha}")),
        Some(token),
        build.artifact.clone(),
    )
}

/// `PUT manifests/KEY` of `signed` (the artifact uploaded first, as builders do).
fn upload(server: &ServeProcess, token: &str, build: &Build, signed: Vec<u8>) -> Answer {
    let artifact = upload_artifact(server, token, build);
    if !matches!(artifact.status, 200 | 201) {
        return artifact;
    }
    send(
        "PUT",
        server.url(&format!("/precomp/v1/manifests/{}", build.key())),
        Some(token),
        signed,
    )
}

fn post_verdict(server: &ServeProcess, token: &str, build: &Build, verdict: Vec<u8>) -> Answer {
    send(
        "POST",
        server.url(&format!("/precomp/v1/verdicts/{}", build.key())),
        Some(token),
        verdict,
    )
}

/// A list field of an index entry (the index leaves out empty ones).
fn listed(entry: &serde_json::Value, field: &str) -> Vec<String> {
    entry
        .get(field)
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .unwrap_or_default()
}

/// The index's entry for `build`.
fn indexed(server: &ServeProcess, build: &Build) -> serde_json::Value {
    let answer = send(
        "GET",
        server.url("/precomp/v1/index/shape_user"),
        None,
        Vec::new(),
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json()["builds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["key"] == build.key())
        .cloned()
        .unwrap_or_else(|| panic!("{} is not indexed: {}", build.key(), answer.text))
}

#[test]
fn a_builder_key_the_document_adds_publishes_at_once_and_nothing_once_revoked() {
    let site = Site::new();
    site.key("root");
    let (builder, builder_pub, builder_id) = site.key("builder-1");
    let (_, auditor_pub, _) = site.key("auditor-1");
    site.keys_cli(&["init", "--auditor", auditor_pub.to_str().unwrap()]);
    let token = site.token("ci", None);
    let server = site.serve(&[]);
    let (first, second) = (Build::new("1.14.0"), Build::new("1.15.0"));

    // Not in the document, not configured: refused.
    upload(&server, &token, &first, first.signed(&[&builder])).refused(403, &["no signature by"]);

    // `precomp keys add --role builder` on the mirror's data directory: the next upload by a
    // token bound to no key is published, without a restart.
    site.keys_cli(&["add", builder_pub.to_str().unwrap(), "--role", "builder"]);
    let published = upload(&server, &token, &first, first.signed(&[&builder]));
    assert_eq!(published.status, 201, "{}", published.text);
    assert_eq!(published.json()["signers"], serde_json::json!([builder_id]));

    // Revoked: the next upload it signed is refused, naming the key, version and reason.
    site.keys_cli(&["revoke", &builder_id, "--reason", "laptop stolen"]);
    upload(&server, &token, &second, second.signed(&[&builder])).refused(
        403,
        &[&builder_id, "trust document version 3", "\"laptop stolen\""],
    );
    // Nothing was published under the second key.
    let missing = send(
        "GET",
        server.url(&format!("/precomp/v1/manifests/{}", second.key())),
        None,
        Vec::new(),
    );
    assert_eq!(missing.status, 404, "{}", missing.text);
}

#[test]
fn a_token_bound_to_a_revoked_key_is_refused_though_it_published_before() {
    let site = Site::new();
    site.key("root");
    let (builder, builder_pub, builder_id) = site.key("builder-1");
    let (stranger, stranger_pub, stranger_id) = site.key("stranger");
    site.keys_cli(&["init", "--builder", builder_pub.to_str().unwrap()]);
    let token = site.token("builder-1", Some(&builder_pub));
    let stranger_token = site.token("stranger", Some(&stranger_pub));
    let server = site.serve(&[]);
    let (first, second) = (Build::new("1.14.0"), Build::new("1.15.0"));

    let published = upload(&server, &token, &first, first.signed(&[&builder]));
    assert_eq!(published.status, 201, "{}", published.text);

    // With a trust document, a token's own key counts only with a role in it (without one
    // the mirror trusts a token's bound key unconditionally).
    upload(
        &server,
        &stranger_token,
        &second,
        second.signed(&[&stranger]),
    )
    .refused(403, &[&stranger_id, "neither a builder nor an auditor key"]);

    site.keys_cli(&["revoke", &builder_id, "--reason", "key leaked"]);
    // Refused before any body is stored: the artifact upload already.
    upload_artifact(&server, &token, &second).refused(
        403,
        &[
            &builder_id,
            "\"key leaked\"",
            "version 2",
            "precomp token revoke builder-1",
        ],
    );
    let manifest = send(
        "PUT",
        server.url(&format!("/precomp/v1/manifests/{}", second.key())),
        Some(&token),
        second.signed(&[&builder]),
    );
    manifest.refused(403, &["key leaked"]);
}

#[test]
fn an_auditor_key_the_document_adds_countersigns_and_posts_verdicts_until_revoked() {
    let site = Site::new();
    site.key("root");
    let (builder, builder_pub, builder_id) = site.key("builder-1");
    let (auditor, auditor_pub, auditor_id) = site.key("auditor-1");
    site.keys_cli(&["init", "--builder", builder_pub.to_str().unwrap()]);
    let builder_token = site.token("builder-1", Some(&builder_pub));
    let auditor_token = site.token("auditor-1", Some(&auditor_pub));
    let server = site.serve(&[]);
    let (build, other) = (Build::new("1.14.0"), Build::new("1.15.0"));
    let published = upload(&server, &builder_token, &build, build.signed(&[&builder]));
    assert_eq!(published.status, 201, "{}", published.text);

    // Not an auditor yet: neither verdicts nor countersignatures.
    post_verdict(
        &server,
        &auditor_token,
        &build,
        build.verdict(&auditor, MATCH),
    )
    .refused(403, &["trusts no auditor keys"]);
    upload(
        &server,
        &auditor_token,
        &build,
        build.signed(&[&builder, &auditor]),
    )
    .refused(403, &[&auditor_id]);

    // `precomp keys add --role auditor`: from the next request on.
    site.keys_cli(&["add", auditor_pub.to_str().unwrap(), "--role", "auditor"]);
    let countersigned = upload(
        &server,
        &auditor_token,
        &build,
        build.signed(&[&builder, &auditor]),
    );
    assert_eq!(countersigned.status, 200, "{}", countersigned.text);
    assert_eq!(countersigned.json()["result"], "countersigned");
    let entry = indexed(&server, &build);
    assert_eq!(
        listed(&entry, "signers"),
        [builder_id.clone(), auditor_id.clone()]
    );
    assert_eq!(
        listed(&entry, "auditors"),
        vec![auditor_id.clone()],
        "{entry}"
    );
    let verdict = post_verdict(
        &server,
        &auditor_token,
        &build,
        build.verdict(&auditor, MATCH),
    );
    assert_eq!(verdict.status, 201, "{}", verdict.text);
    // An auditor countersigns; it does not publish new manifests.
    upload(&server, &auditor_token, &other, other.signed(&[&auditor]))
        .refused(403, &["role check failed", "builder key"]);
    // The builder uploading what it published again changes nothing.
    let again = upload(&server, &builder_token, &build, build.signed(&[&builder]));
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json()["result"], "unchanged");

    // Revoked: no more verdicts, and its countersignature no longer makes an auditor.
    site.keys_cli(&["revoke", &auditor_id, "--reason", "audits faked"]);
    post_verdict(
        &server,
        &auditor_token,
        &build,
        build.verdict(&auditor, MISMATCH),
    )
    .refused(403, &[&auditor_id, "\"audits faked\"", "version 3"]);
    let entry = indexed(&server, &build);
    assert!(listed(&entry, "auditors").is_empty(), "{entry}");
    assert_eq!(
        listed(&entry, "signers").len(),
        2,
        "the countersignature stays: {entry}"
    );
    assert_ne!(
        entry.get("flagged"),
        Some(&serde_json::json!(true)),
        "the refused mismatch was stored: {entry}"
    );
}

#[test]
fn auditor_keys_and_trust_root_in_the_config_file_are_honoured() {
    let site = Site::new();
    let (root, _, _) = site.key("root");
    let (_, stranger_root_pub, _) = site.key("stranger-root");
    let (builder, builder_pub, _) = site.key("builder-1");
    let (auditor, auditor_pub, auditor_id) = site.key("auditor-1");
    let (_, other_pub, _) = site.key("other-auditor");
    let token = site.token("ci", None);
    let auditor_token = site.token("auditor-1", Some(&auditor_pub));
    let config = |extra: &str| {
        let path = site.dir.path().join("precomp.toml");
        std::fs::write(
            &path,
            format!(
                "builder_keys = [{:?}]\nauditor_keys = [{:?}]\n{extra}",
                builder_pub.to_str().unwrap(),
                auditor_pub.to_str().unwrap(),
            ),
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    };

    // No trust document: the file's auditor key posts verdicts and is listed as an auditor.
    let server = site.serve(&["--config", &config("")]);
    let build = Build::new("1.14.0");
    let published = upload(&server, &token, &build, build.signed(&[&builder]));
    assert_eq!(published.status, 201, "{}", published.text);
    let countersigned = upload(
        &server,
        &auditor_token,
        &build,
        build.signed(&[&builder, &auditor]),
    );
    assert_eq!(countersigned.status, 200, "{}", countersigned.text);
    assert_eq!(
        listed(&indexed(&server, &build), "auditors"),
        vec![auditor_id.clone()]
    );
    let verdict = post_verdict(
        &server,
        &auditor_token,
        &build,
        build.verdict(&auditor, MATCH),
    );
    assert_eq!(verdict.status, 201, "{}", verdict.text);
    drop(server);

    // --auditor-key replaces the file's list.
    let server = site.serve(&[
        "--config",
        &config(""),
        "--auditor-key",
        other_pub.to_str().unwrap(),
    ]);
    post_verdict(
        &server,
        &auditor_token,
        &build,
        build.verdict(&auditor, MATCH),
    )
    .refused(403, &["not one of this mirror's auditor keys"]);
    assert!(listed(&indexed(&server, &build), "auditors").is_empty());
    drop(server);

    // trust_root pins a root: with none issued yet, and with a document another root issued,
    // uploads are refused; --trust-root replaces the file's.
    let pinned_stranger = config(&format!(
        "trust_root = {:?}\n",
        stranger_root_pub.to_str().unwrap()
    ));
    let server = site.serve(&["--config", &pinned_stranger]);
    let other = Build::new("1.15.0");
    upload(&server, &token, &other, other.signed(&[&builder]))
        .refused(503, &["no trust document", "precomp keys init"]);
    site.keys_cli(&["init", "--builder", builder_pub.to_str().unwrap()]);
    upload(&server, &token, &other, other.signed(&[&builder]))
        .refused(503, &["root check failed", &root.public_key().key_id()]);
    drop(server);
    let server = site.serve(&[
        "--config",
        &pinned_stranger,
        "--trust-root",
        &site.file("root.pub"),
    ]);
    let published = upload(&server, &token, &other, other.signed(&[&builder]));
    assert_eq!(published.status, 201, "{}", published.text);
}

#[test]
fn a_tampered_trust_document_refuses_uploads_until_it_is_restored() {
    let site = Site::new();
    site.key("root");
    let (builder, builder_pub, _) = site.key("builder-1");
    let (auditor, auditor_pub, _) = site.key("auditor-1");
    site.keys_cli(&[
        "init",
        "--builder",
        builder_pub.to_str().unwrap(),
        "--auditor",
        auditor_pub.to_str().unwrap(),
    ]);
    let token = site.token("ci", None);
    let auditor_token = site.token("auditor-1", Some(&auditor_pub));
    // The same keys configured too: a broken document must not fall back to them.
    let server = site.serve(&[
        "--builder-key",
        builder_pub.to_str().unwrap(),
        "--auditor-key",
        auditor_pub.to_str().unwrap(),
    ]);
    let (first, second) = (Build::new("1.14.0"), Build::new("1.15.0"));
    let published = upload(&server, &token, &first, first.signed(&[&builder]));
    assert_eq!(published.status, 201, "{}", published.text);

    // One byte flipped in the middle of DATA/trust/trust.doc.
    let path = site.data().join("trust/trust.doc");
    let original = std::fs::read(&path).unwrap();
    let mut tampered = original.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    std::fs::write(&path, &tampered).unwrap();
    let expected = [
        "uploads are refused until the mirror's trust document can be used",
        "check failed",
        "trust.doc",
    ];
    upload(&server, &token, &second, second.signed(&[&builder])).refused(503, &expected);
    post_verdict(
        &server,
        &auditor_token,
        &first,
        first.verdict(&auditor, MATCH),
    )
    .refused(503, &expected);
    // Reading goes on.
    assert_eq!(listed(&indexed(&server, &first), "signers").len(), 1);

    // Put back: uploads resume without a restart.
    std::fs::write(&path, &original).unwrap();
    let published = upload(&server, &token, &second, second.signed(&[&builder]));
    assert_eq!(published.status, 201, "{}", published.text);
}
