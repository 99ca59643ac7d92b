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

use precomp_http::artifacts::ArtifactClient;
use precomp_proto::buildkey::{BuildInputs, Manager, PackageRef, Target};
use precomp_proto::lock::MixLock;
use precomp_proto::manifest::{ArtifactSigningKey, Manifest, SignedManifest};
use precomp_proto::verdict::{manifest_digest, Verdict, MATCH, MISMATCH};
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
        common::remove_at_exit(dir.path());
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
        let manifest = test_manifest(&inputs, packed.output(), "trust-test", None);
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
// Revocation and recovery with real builds (`precomp build` in the sandbox, host toolchain)
// ---------------------------------------------------------------------------------------------

/// A mirror of the fixture repository on `data`, which holds its trust document.
fn serve_fixture(data: &Path) -> ServeProcess {
    let fixture = Fixture::get();
    let mut serve = precomp_command();
    serve
        .arg("--data")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream"])
        .arg(format!("file://{}", fixture.path("repo").display()))
        .arg("--upstream-key")
        .arg(fixture.path("repo.pem.pub"));
    ServeProcess::spawn(serve)
}

/// `precomp --data DATA build ARGS… --json` (a builder's machine: DATA is its own): the
/// output and plain_ex's line.
fn precomp_build(data: &Path, args: &[&str]) -> (Output, serde_json::Value) {
    let mut command = precomp_command();
    command
        .arg("--data")
        .arg(data)
        .arg("build")
        .args(args)
        .args(["--toolchain", "host", "--json"]);
    let output = output_within(command, Duration::from_secs(900));
    let line = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|v| v["package"] == "plain_ex")
        .unwrap_or_else(|| panic!("no plain_ex line: {}", describe(&output)));
    (output, line)
}

/// A consumer at `dir` set up as docs/operations.md says: `.precomp.toml` beside mix.exs names
/// the mirror and pins the root's public key, committed at `ci/keys/precomp-root.pub`.
fn configured_consumer(dir: &Path, mirror: &str, root_pub: &Path) {
    Fixture::get().consumer(dir);
    std::fs::create_dir_all(dir.join("ci/keys")).unwrap();
    std::fs::copy(root_pub, dir.join("ci/keys/precomp-root.pub")).unwrap();
    std::fs::write(
        dir.join(".precomp.toml"),
        format!("mirror = {mirror:?}\n[trust]\nroot = \"ci/keys/precomp-root.pub\"\n"),
    )
    .unwrap();
}

/// `precomp fetch ARGS…` run in `project` with no other settings (`.precomp.toml`), the trust
/// document cached at `cache`.
fn fetch_here(project: &Path, cache: &Path, args: &[&str]) -> Output {
    let mut command = precomp_command();
    command
        .arg("fetch")
        .args(args)
        .current_dir(project)
        .env("PRECOMP_TRUST_CACHE", cache)
        .env("MIX_ENV", "dev")
        .env_remove("HEX_MIRROR")
        .env_remove("MIX_BUILD_PATH")
        .env_remove("MIX_TARGET");
    output_within(command, Duration::from_secs(120))
}

/// `mix compile` in `project`: its log (it must succeed).
fn mix_compile(project: &Path) -> String {
    let mut mix = Command::new("mix");
    mix.arg("compile")
        .current_dir(project)
        .env("MIX_ENV", "dev")
        .env_remove("MIX_BUILD_PATH")
        .env_remove("MIX_TARGET");
    let compiled = output_within(mix, Duration::from_secs(300));
    assert!(compiled.status.success(), "{}", describe(&compiled));
    text(&compiled)
}

/// `GET /precomp/v1/manifests/KEY/history`.
fn history(server: &ServeProcess, key: &str) -> serde_json::Value {
    let answer =
        reqwest::blocking::get(server.url(&format!("/precomp/v1/manifests/{key}/history")))
            .unwrap();
    assert_eq!(answer.status(), 200);
    answer.json().unwrap()
}

/// docs/operations.md, "Setting it up" then "A compromised builder or auditor key", as written,
/// when the compromised key is the org's only builder: `precomp keys revoke ID --reason …
/// --root ROOT.key` and `precomp token revoke builder-1`. The next `precomp fetch` removes the
/// install it signed and stops (exit 1) naming the revocation; `mix compile` builds the
/// dependency. Then the way back: a new builder (`keys add`, `token create`), `precomp fetch
/// --request-builds` reports the `revoked` miss (open), `precomp build --missing --publish`
/// rebuilds it from a fresh data directory and replaces the revoked build, and the next fetch
/// installs builder-2's build, which `mix compile` leaves alone.
#[test]
fn procedure_a_compromised_builder_key_the_only_one_and_the_way_back() {
    let scratch = data_dir("precomp-compromised-");
    let root = scratch.path();
    let data = root.join("data");
    let keys = root.join("keys");
    let key = |name: &str| keys.join(name).to_str().unwrap().to_string();
    let (_, root_pub, _) = generate(&keys, "precomp-root");
    let (_, b1_pub, b1_id) = generate(&keys, "builder-1");
    let (_, b2_pub, b2_id) = generate(&keys, "builder-2");
    ok(precomp_data(
        &data,
        &[
            "keys",
            "init",
            "--root",
            &key("precomp-root.key"),
            "--builder",
            b1_pub.to_str().unwrap(),
        ],
    ));
    let token1 = ok(precomp_data(
        &data,
        &[
            "token",
            "create",
            "--name",
            "builder-1",
            "--key",
            b1_pub.to_str().unwrap(),
        ],
    ))
    .trim()
    .to_string();
    let server = serve_fixture(&data);
    let lock = Fixture::get().path("mix.lock");
    let lock = lock.to_str().unwrap();

    // builder-1, the only builder, builds and publishes the lock.
    let (built, line) = precomp_build(
        &root.join("builder-1"),
        &[
            "--lock",
            lock,
            "--mirror",
            server.base(),
            "--key",
            &key("builder-1.key"),
            "--publish",
            "--token",
            &token1,
        ],
    );
    assert!(built.status.success(), "{}", describe(&built));
    assert_eq!(
        (&line["published"], &line["publish_result"]),
        (&serde_json::json!(true), &serde_json::json!("created")),
        "{line}"
    );
    let build_key = line["key"].as_str().unwrap().to_string();

    // A client set up as the doc says installs it.
    let project = root.join("project");
    configured_consumer(&project, server.base(), &root_pub);
    let cache = root.join("cache/trust.doc");
    let installed = plain_ex(&fetch_here(&project, &cache, &["--json"]));
    assert_eq!(installed["status"], "installed", "{installed}");
    assert_eq!(installed["signers"], serde_json::json!([b1_id]));

    // Compromised: revoked, and its token.
    ok(precomp_data(
        &data,
        &[
            "keys",
            "revoke",
            &b1_id,
            "--reason",
            "laptop stolen",
            "--root",
            &key("precomp-root.key"),
        ],
    ));
    ok(precomp_data(&data, &["token", "revoke", "builder-1"]));
    // The mirror refuses it from the next request on.
    let refused = reqwest::blocking::Client::new()
        .put(server.url(&format!("/precomp/v1/manifests/{build_key}")))
        .bearer_auth(&token1)
        .body(Vec::new())
        .send()
        .unwrap();
    assert_eq!(refused.status(), 401);

    // The client: it removes what builder-1 signed and stops, naming the revocation.
    let stopped = fetch_here(&project, &cache, &[]);
    let said = text(&stopped);
    assert!(!stopped.status.success(), "{}", describe(&stopped));
    for expected in [
        "leaves no builder key in effect",
        b1_id.as_str(),
        "laptop stolen (trust document version 2",
        "Removed 1 precompiled install(s)",
        "removed    plain_ex: signed only by keys this policy does not trust now",
    ] {
        assert!(said.contains(expected), "no {expected:?} in: {said}");
    }
    assert!(
        !project.join("_build/dev/lib/plain_ex").exists(),
        "the install builder-1 signed is still in _build"
    );
    // mix compile builds it.
    let log = mix_compile(&project);
    assert!(log.contains("==> plain_ex"), "{log}");
    assert!(project
        .join("_build/dev/lib/plain_ex/ebin/plain_ex.app")
        .is_file());

    // The way back: a new builder, then clients report what they miss.
    ok(precomp_data(
        &data,
        &[
            "keys",
            "add",
            b2_pub.to_str().unwrap(),
            "--role",
            "builder",
            "--root",
            &key("precomp-root.key"),
        ],
    ));
    let token2 = ok(precomp_data(
        &data,
        &[
            "token",
            "create",
            "--name",
            "builder-2",
            "--key",
            b2_pub.to_str().unwrap(),
        ],
    ))
    .trim()
    .to_string();
    let reported = fetch_here(&project, &cache, &["--request-builds"]);
    let said = text(&reported);
    assert!(reported.status.success(), "{}", describe(&reported));
    assert!(
        said.contains("[revoked]") && said.contains("laptop stolen"),
        "{said}"
    );
    assert!(
        said.contains("requested builds for 1 miss(es): 1 open for builders"),
        "{said}"
    );

    // builder-2 builds the misses from a fresh data directory: its build replaces builder-1's.
    let (rebuilt, line) = precomp_build(
        &root.join("builder-2"),
        &[
            "--missing",
            "--mirror",
            server.base(),
            "--key",
            &key("builder-2.key"),
            "--publish",
            "--token",
            &token2,
        ],
    );
    assert!(rebuilt.status.success(), "{}", describe(&rebuilt));
    assert_eq!(line["key"], build_key.as_str(), "{line}");
    assert_eq!(line["publish_result"], "replaced", "{line}");
    let kept = history(&server, &build_key);
    let manifests = kept["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2, "{kept}");
    assert_eq!(manifests[0]["status"], "published");
    assert_eq!(manifests[0]["signers"], serde_json::json!([b2_id]));
    assert_eq!(manifests[1]["status"], "replaced");
    assert_eq!(manifests[1]["signers"], serde_json::json!([b1_id]));
    assert!(
        manifests[1]["excluded"][0]
            .as_str()
            .unwrap()
            .contains("laptop stolen"),
        "{kept}"
    );

    // The next fetch installs builder-2's build; mix compile leaves it alone.
    let back = plain_ex(&fetch_here(&project, &cache, &["--json"]));
    assert_eq!(back["status"], "installed", "{back}");
    assert_eq!(back["signers"], serde_json::json!([b2_id]));
    let log = mix_compile(&project);
    assert!(!log.contains("==> plain_ex"), "{log}");
}

/// docs/operations.md, "Garbage collection", then the miss loop: a build gc removed is missed
/// again (`no_artifact`), the miss its publish closed reopens when reported again (`precomp
/// fetch --request-builds`: "1 open for builders"), a builder rebuilds it from the reported
/// misses (`build --missing --publish`), and the next fetch installs it.
#[test]
fn a_build_gc_removed_is_missed_again_and_rebuilt() {
    let scratch = data_dir("precomp-gc-reopen-");
    let root = scratch.path();
    let data = root.join("data");
    let keys = root.join("keys");
    let key = |name: &str| keys.join(name).to_str().unwrap().to_string();
    let (_, root_pub, _) = generate(&keys, "precomp-root");
    let (_, b1_pub, b1_id) = generate(&keys, "builder-1");
    ok(precomp_data(
        &data,
        &[
            "keys",
            "init",
            "--root",
            &key("precomp-root.key"),
            "--builder",
            b1_pub.to_str().unwrap(),
        ],
    ));
    let token = ok(precomp_data(
        &data,
        &[
            "token",
            "create",
            "--name",
            "builder-1",
            "--key",
            b1_pub.to_str().unwrap(),
        ],
    ))
    .trim()
    .to_string();
    let server = serve_fixture(&data);
    let build_missing = |dir: &str| {
        precomp_build(
            &root.join(dir),
            &[
                "--missing",
                "--mirror",
                server.base(),
                "--key",
                &key("builder-1.key"),
                "--publish",
                "--token",
                &token,
            ],
        )
    };
    let project = root.join("project");
    configured_consumer(&project, server.base(), &root_pub);
    let cache = root.join("cache/trust.doc");
    let requested = |expected: &str| {
        let reported = fetch_here(&project, &cache, &["--request-builds"]);
        let said = text(&reported);
        assert!(reported.status.success(), "{}", describe(&reported));
        assert!(said.contains("[no_artifact]"), "{said}");
        assert!(said.contains(expected), "no {expected:?} in: {said}");
    };

    // Nothing built yet: the miss is reported, a builder builds it, the client installs it.
    requested("requested builds for 1 miss(es): 1 open for builders");
    let (built, line) = build_missing("builder-first");
    assert!(built.status.success(), "{}", describe(&built));
    assert_eq!(line["publish_result"], "created", "{line}");
    let build_key = line["key"].as_str().unwrap().to_string();
    let installed = plain_ex(&fetch_here(&project, &cache, &["--json"]));
    assert_eq!(installed["status"], "installed", "{installed}");
    assert_eq!(installed["signers"], serde_json::json!([b1_id.clone()]));

    // gc as written, with nothing kept: published and downloaded before the cutoff (now).
    std::thread::sleep(Duration::from_millis(2100));
    let gc = |extra: &[&str]| {
        let mut args = vec!["gc", "--older-than", "0", "--json"];
        args.extend_from_slice(extra);
        let report: serde_json::Value =
            serde_json::from_str(&ok(precomp_data(&data, &args))).unwrap();
        let keys = report["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["key"].as_str().unwrap().to_string())
            .collect::<Vec<_>>();
        (keys, report["closed_misses"].as_u64().unwrap())
    };
    // The miss the publish closed, last reported before the cutoff, goes too.
    assert_eq!(gc(&[]), (vec![build_key.clone()], 1), "the dry run");
    assert_eq!(gc(&["--apply"]), (vec![build_key.clone()], 1), "--apply");
    assert_eq!(gc(&[]), (vec![], 0), "after --apply");
    let gone =
        reqwest::blocking::get(server.url(&format!("/precomp/v1/manifests/{build_key}"))).unwrap();
    assert_eq!(gone.status(), 404);

    // A fresh CI run (an install that is current needs nothing from the mirror) misses it
    // again and reports it: a new miss (gc deleted the closed one).
    std::fs::remove_dir_all(project.join("_build")).unwrap();
    requested("requested builds for 1 miss(es): 1 open for builders");
    let (rebuilt, line) = build_missing("builder-again");
    assert!(rebuilt.status.success(), "{}", describe(&rebuilt));
    assert_eq!(line["key"], build_key.as_str(), "{line}");
    assert_eq!(line["publish_result"], "created", "{line}");
    let back = plain_ex(&fetch_here(&project, &cache, &["--json"]));
    assert_eq!(back["status"], "installed", "{back}");
    let listed =
        reqwest::blocking::get(server.url(&format!("/precomp/v1/manifests/{build_key}"))).unwrap();
    assert_eq!(listed.status(), 200);
}

/// Two builders of the same lock agree: builder-2, from a fresh data directory, rebuilds what
/// builder-1 published bit for bit and is told `agreed` (exit 0; the same again: `unchanged`).
/// Revoking builder-1 then loses nothing: the mirror serves builder-2's agreeing manifest and
/// the client installs it without any rebuild.
#[test]
fn identical_builds_agree_and_outlive_the_revocation_of_the_first_builder() {
    let scratch = data_dir("precomp-agreement-");
    let root = scratch.path();
    let data = root.join("data");
    let keys = root.join("keys");
    let key = |name: &str| keys.join(name).to_str().unwrap().to_string();
    let (_, root_pub, _) = generate(&keys, "precomp-root");
    let (_, b1_pub, b1_id) = generate(&keys, "builder-1");
    let (_, b2_pub, b2_id) = generate(&keys, "builder-2");
    ok(precomp_data(
        &data,
        &[
            "keys",
            "init",
            "--root",
            &key("precomp-root.key"),
            "--builder",
            b1_pub.to_str().unwrap(),
            "--builder",
            b2_pub.to_str().unwrap(),
        ],
    ));
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
    let (token1, token2) = (token("builder-1", &b1_pub), token("builder-2", &b2_pub));
    let server = serve_fixture(&data);
    let lock = Fixture::get().path("mix.lock");
    let publish = |builder: &str, token: &str| {
        precomp_build(
            &root.join(builder),
            &[
                "--lock",
                lock.to_str().unwrap(),
                "--mirror",
                server.base(),
                "--key",
                &key(&format!("{builder}.key")),
                "--publish",
                "--token",
                token,
            ],
        )
    };
    let (first, line) = publish("builder-1", &token1);
    assert!(first.status.success(), "{}", describe(&first));
    assert_eq!(line["publish_result"], "created", "{line}");
    let build_key = line["key"].as_str().unwrap().to_string();
    let (second, line) = publish("builder-2", &token2);
    assert!(second.status.success(), "{}", describe(&second));
    assert_eq!(line["status"], "built", "{line}");
    assert_eq!(line["key"], build_key.as_str());
    assert_eq!(
        (&line["published"], &line["publish_result"]),
        (&serde_json::json!(true), &serde_json::json!("agreed")),
        "{line}"
    );
    let (again, line) = publish("builder-2", &token2);
    assert!(again.status.success(), "{}", describe(&again));
    assert_eq!(line["publish_result"], "unchanged", "{line}");
    let index: serde_json::Value = reqwest::blocking::get(server.url("/precomp/v1/index/plain_ex"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(index["builds"][0]["signers"], serde_json::json!([b1_id]));
    assert_eq!(index["builds"][0]["agreed_by"], serde_json::json!([b2_id]));
    // A client installs what is served: builder-1's manifest.
    let project = root.join("project");
    configured_consumer(&project, server.base(), &root_pub);
    let cache = root.join("cache/trust.doc");
    let fetched = plain_ex(&fetch_here(&project, &cache, &["--json"]));
    assert_eq!(fetched["signers"], serde_json::json!([b1_id]), "{fetched}");

    // builder-1 revoked: builder-2's manifest of the same bytes is served, nothing rebuilt.
    ok(precomp_data(
        &data,
        &[
            "keys",
            "revoke",
            &b1_id,
            "--reason",
            "laptop stolen",
            "--root",
            &key("precomp-root.key"),
        ],
    ));
    // A run that stops on another error (here: no mix.lock) still removes the install only
    // builder-1 signed, naming the revocation, so Mix never uses it again.
    let lock_file = project.join("mix.lock");
    let lock_aside = root.join("mix.lock.aside");
    std::fs::rename(&lock_file, &lock_aside).unwrap();
    let stopped = fetch_here(&project, &cache, &[]);
    let said = text(&stopped);
    assert!(!stopped.status.success(), "{}", describe(&stopped));
    for expected in [
        "mix.lock",
        "Removed 1 precompiled install(s)",
        "removed    plain_ex: signed only by keys this policy does not trust now",
        "revoked: laptop stolen",
    ] {
        assert!(said.contains(expected), "no {expected:?} in: {said}");
    }
    assert!(!project.join("_build/dev/lib/plain_ex").exists());
    std::fs::rename(&lock_aside, &lock_file).unwrap();
    let fetched = plain_ex(&fetch_here(&project, &cache, &["--json"]));
    assert_eq!(fetched["status"], "installed", "{fetched}");
    assert_eq!(fetched["signers"], serde_json::json!([b2_id]));
    let kept = history(&server, &build_key);
    assert_eq!(kept["manifests"][0]["served"], false, "{kept}");
    assert_eq!(kept["manifests"][1]["status"], "agreeing", "{kept}");
    assert_eq!(kept["manifests"][1]["served"], true, "{kept}");
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
        Build::with_description(elixir, "")
    }

    /// A build of the same key as [`Build::new`]`(elixir)` whose artifact holds other bytes
    /// (its `.app` has `description`): what a non-reproducible second build gives.
    fn with_description(elixir: &str, description: &str) -> Build {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("shape_user");
        std::fs::create_dir_all(app.join("ebin")).unwrap();
        let description = if description.is_empty() {
            String::new()
        } else {
            format!(",{{description,\"{description}\"}}")
        };
        std::fs::write(
            app.join("ebin/shape_user.app"),
            format!(
                "{{application,shape_user,[{{vsn,\"1.0.0\"}},{{elixir,\"{elixir}\"}}{description}]}}.\n"
            ),
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
        let manifest = test_manifest(&inputs, packed.output(), "trust-test", None);
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

/// docs/operations.md, "A new builder or auditor", as written: `precomp keys add
/// keys/builder-2.pub --role builder --root ROOT.key` (bounded with `--valid-for-days`) and
/// `precomp token create --name builder-2 --key keys/builder-2.pub`; the running mirror accepts
/// its uploads from the next request on. A key with `--role auditor` countersigns what others
/// published.
#[test]
fn procedure_a_new_builder_or_auditor() {
    let site = Site::new();
    site.key("root");
    let (_, b1_pub, _) = site.key("builder-1");
    let (b2, b2_pub, b2_id) = site.key("builder-2");
    let (auditor, auditor_pub, auditor_id) = site.key("auditor-1");
    site.keys_cli(&["init", "--builder", b1_pub.to_str().unwrap()]);
    let server = site.serve(&[]);
    let token = site.token("builder-2", Some(&b2_pub));
    let build = Build::new("1.14.0");
    // Not in the document yet: refused, naming the key.
    upload(&server, &token, &build, build.signed(&[&b2]))
        .refused(403, &[&b2_id, "neither a builder nor an auditor key"]);

    site.keys_cli(&[
        "add",
        b2_pub.to_str().unwrap(),
        "--role",
        "builder",
        "--valid-for-days",
        "90",
    ]);
    let published = upload(&server, &token, &build, build.signed(&[&b2]));
    assert_eq!(published.status, 201, "{}", published.text);
    assert_eq!(published.json()["signers"], serde_json::json!([b2_id]));
    let document: serde_json::Value =
        serde_json::from_str(&ok(precomp_data(&site.data(), &["keys", "list", "--json"]))).unwrap();
    let entry = document["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == b2_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["roles"], serde_json::json!(["builder"]), "{entry}");
    let until = entry["not_after"].as_i64().unwrap() - precomp_ops::trust::unix_now();
    assert!((89 * 86_400..=90 * 86_400).contains(&until), "{entry}");

    // An auditor: `--role auditor`, its own token; it countersigns the published build.
    let auditor_token = site.token("auditor-1", Some(&auditor_pub));
    site.keys_cli(&["add", auditor_pub.to_str().unwrap(), "--role", "auditor"]);
    let countersigned = upload(
        &server,
        &auditor_token,
        &build,
        build.signed(&[&b2, &auditor]),
    );
    assert_eq!(countersigned.status, 200, "{}", countersigned.text);
    assert_eq!(countersigned.json()["result"], "countersigned");
    assert_eq!(
        listed(&indexed(&server, &build), "auditors"),
        vec![auditor_id]
    );
}

/// docs/operations.md, "Planned rotation of a builder key", as written: `precomp keys
/// generate --name builder-1b`, `precomp keys rotate --old keys/builder-1.pub --new
/// keys/builder-1b.pub --root ROOT.key`, a token for the new key, then the old token revoked.
/// The new key gets the old one's roles and publishes; the old one is superseded: what it
/// signed still counts, but the mirror publishes nothing new signed only by it (403 naming the
/// new key). With `--retire-in-days` it stops counting then.
#[test]
fn procedure_planned_rotation_of_a_builder_key() {
    let site = Site::new();
    site.key("root");
    let (b1, b1_pub, b1_id) = site.key("builder-1");
    site.keys_cli(&["init", "--builder", b1_pub.to_str().unwrap()]);
    let old_token = site.token("builder-1", Some(&b1_pub));
    let server = site.serve(&[]);
    let (before, after, later) = (
        Build::new("1.14.0"),
        Build::new("1.15.0"),
        Build::new("1.16.0"),
    );
    let published = upload(&server, &old_token, &before, before.signed(&[&b1]));
    assert_eq!(published.status, 201, "{}", published.text);

    let (b1b, b1b_pub, b1b_id) = site.key("builder-1b");
    site.keys_cli(&[
        "rotate",
        "--old",
        b1_pub.to_str().unwrap(),
        "--new",
        b1b_pub.to_str().unwrap(),
    ]);
    let new_token = site.token("builder-1b", Some(&b1b_pub));
    // The old key publishes nothing new (its token still valid): 403 naming its successor.
    upload(&server, &old_token, &after, after.signed(&[&b1]))
        .refused(403, &[&b1_id, "superseded by", &b1b_id]);
    ok(precomp_data(
        &site.data(),
        &["token", "revoke", "builder-1"],
    ));
    upload(&server, &old_token, &after, after.signed(&[&b1])).refused(401, &["revoked"]);
    // The new key has the old one's roles and publishes.
    let published = upload(&server, &new_token, &after, after.signed(&[&b1b]));
    assert_eq!(published.status, 201, "{}", published.text);
    let shown = ok(precomp_data(&site.data(), &["keys", "list"]));
    assert!(
        shown.contains(&format!("superseded by {b1b_id}")),
        "{shown}"
    );
    let document: serde_json::Value =
        serde_json::from_str(&ok(precomp_data(&site.data(), &["keys", "list", "--json"]))).unwrap();
    let roles = |id: &str| {
        document["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == id)
            .unwrap()["roles"]
            .clone()
    };
    assert_eq!(roles(&b1b_id), roles(&b1_id));
    // What the old key signed still counts: served and listed as it was.
    let entry = indexed(&server, &before);
    assert_eq!(listed(&entry, "signers"), vec![b1_id.clone()]);
    let history = send(
        "GET",
        server.url(&format!("/precomp/v1/manifests/{}/history", before.key())),
        None,
        Vec::new(),
    );
    assert_eq!(history.status, 200, "{}", history.text);
    assert!(
        history.json()["manifests"][0]["excluded"].is_null(),
        "the superseded key still counts: {}",
        history.text
    );

    // With --retire-in-days, the old key's validity ends then.
    let (_, b1c_pub, _) = site.key("builder-1c");
    site.keys_cli(&[
        "rotate",
        "--old",
        b1b_pub.to_str().unwrap(),
        "--new",
        b1c_pub.to_str().unwrap(),
        "--retire-in-days",
        "30",
    ]);
    let document: serde_json::Value =
        serde_json::from_str(&ok(precomp_data(&site.data(), &["keys", "list", "--json"]))).unwrap();
    let retired = document["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == b1b_id.as_str())
        .unwrap()
        .clone();
    let until = retired["not_after"].as_i64().unwrap() - precomp_ops::trust::unix_now();
    assert!((29 * 86_400..=30 * 86_400).contains(&until), "{retired}");
    assert_eq!(retired["status"], "active", "{retired}");
    upload(&server, &new_token, &later, later.signed(&[&b1b])).refused(403, &["superseded"]);
}

/// Other artifact bytes for a published key are a reproducibility finding: refused with 409
/// naming the published artifact, its signer and the file that differs; recorded, so the
/// index and `GET verdicts/KEY` flag the build, and the key's history keeps the other
/// manifest. An identical build by another builder is agreement (200 `agreed`).
#[test]
fn a_published_key_rebuilt_with_other_bytes_is_a_recorded_finding() {
    let site = Site::new();
    site.key("root");
    let (b1, b1_pub, b1_id) = site.key("builder-1");
    let (b2, b2_pub, b2_id) = site.key("builder-2");
    site.keys_cli(&[
        "init",
        "--builder",
        b1_pub.to_str().unwrap(),
        "--builder",
        b2_pub.to_str().unwrap(),
    ]);
    let (token1, token2) = (
        site.token("builder-1", Some(&b1_pub)),
        site.token("builder-2", Some(&b2_pub)),
    );
    let server = site.serve(&[]);
    let build = Build::new("1.14.0");
    assert_eq!(
        upload(&server, &token1, &build, build.signed(&[&b1])).status,
        201
    );
    // builder-2's identical build: other provenance, the same artifact.
    let mut identical = Build::new("1.14.0");
    identical
        .manifest
        .provenance
        .as_mut()
        .unwrap()
        .build_duration_ms = 4321;
    let agreed = upload(&server, &token2, &identical, identical.signed(&[&b2]));
    assert_eq!(agreed.status, 200, "{}", agreed.text);
    assert_eq!(agreed.json()["result"], "agreed");
    let entry = indexed(&server, &build);
    assert_eq!(listed(&entry, "agreed_by"), vec![b2_id.clone()]);
    assert_ne!(entry.get("flagged"), Some(&serde_json::json!(true)));

    // Other bytes: 409, naming what differs.
    let other = Build::with_description("1.14.0", "rebuilt elsewhere");
    assert_eq!(other.key(), build.key());
    upload(&server, &token2, &other, other.signed(&[&b2])).refused(
        409,
        &[
            "reproducibility finding",
            &hex::encode(Sha256::digest(&build.artifact)),
            &b1_id,
            "ebin/shape_user.app (other bytes)",
        ],
    );
    // Served as before, flagged, and kept in the history.
    let served = send(
        "GET",
        server.url(&format!("/precomp/v1/manifests/{}", build.key())),
        None,
        Vec::new(),
    );
    assert_eq!(served.status, 200);
    let entry = indexed(&server, &build);
    assert_eq!(entry["flagged"], true, "{entry}");
    assert_eq!(
        entry["disagreements"][0]["signers"],
        serde_json::json!([b2_id]),
        "{entry}"
    );
    let verdicts = send(
        "GET",
        server.url(&format!("/precomp/v1/verdicts/{}", build.key())),
        None,
        Vec::new(),
    );
    assert_eq!(verdicts.json()["flagged"], true, "{}", verdicts.text);
    let history = send(
        "GET",
        server.url(&format!("/precomp/v1/manifests/{}/history", build.key())),
        None,
        Vec::new(),
    )
    .json();
    let statuses: Vec<&str> = history["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["published", "agreeing", "conflicting"],
        "{history}"
    );
    assert_eq!(history["manifests"][0]["served"], true);
}

/// docs/operations.md, "Before the document expires", as written: `precomp keys list` warns
/// 30 days ahead; an expired document stops every `precomp fetch` pinning the root and every
/// upload; `precomp keys renew --root ROOT.key` issues the same keys with a new expiry and
/// both work again.
#[test]
fn procedure_before_the_document_expires() {
    let site = Site::new();
    let (root, root_pub, _) = site.key("root");
    let (builder, builder_pub, _) = site.key("builder-1");
    site.keys_cli(&[
        "init",
        "--builder",
        builder_pub.to_str().unwrap(),
        "--valid-days",
        "20",
    ]);
    let listed = ok(precomp_data(&site.data(), &["keys", "list"]));
    assert!(listed.contains("expires within 30 days"), "{listed}");

    // Version 2, issued as if 10 days ago for a day: expired.
    let dir = precomp_ops::trust::TrustDir::of_data(&site.data());
    precomp_ops::trust::renew(
        &dir,
        &root,
        precomp_ops::trust::Issue {
            now: precomp_ops::trust::unix_now() - 10 * 86_400,
            valid_days: 1,
        },
    )
    .unwrap();
    let listed = ok(precomp_data(&site.data(), &["keys", "list"]));
    assert!(listed.contains("EXPIRED"), "{listed}");
    let token = site.token("builder-1", Some(&builder_pub));
    let server = site.serve(&[]);
    let build = Build::new("1.14.0");
    upload(&server, &token, &build, build.signed(&[&builder])).refused(503, &["expired"]);
    let fixture = Fixture::get();
    let project = site.dir.path().join("project");
    fixture.consumer(&project);
    let cache = site.dir.path().join("cache/trust.doc");
    let stopped = fetch(&project, server.base(), &root_pub, &cache);
    assert!(
        !stopped.status.success() && text(&stopped).contains("expired"),
        "{}",
        describe(&stopped)
    );

    site.keys_cli(&["renew"]);
    let listed = ok(precomp_data(&site.data(), &["keys", "list"]));
    assert!(
        listed.contains("version 3") && !listed.contains("EXPIRED"),
        "{listed}"
    );
    let published = upload(&server, &token, &build, build.signed(&[&builder]));
    assert_eq!(published.status, 201, "{}", published.text);
    let fetched = fetch(&project, server.base(), &root_pub, &cache);
    assert!(fetched.status.success(), "{}", describe(&fetched));
}

/// docs/operations.md, "Rotating the root", as written: `precomp keys generate --name
/// precomp-root-2 --out /secure/keys`, `precomp keys rotate --old …/precomp-root.pub
/// --new-root …/precomp-root-2.key --root …/precomp-root.key`. The old root issues nothing any
/// more; clients pinning it follow the rotation, with or without a cached document; a project
/// that updates its pinned key works; then `keys revoke OLD-ID --reason … --root NEW.key` revokes the old
/// root, and clients pinning the new one go on installing.
#[test]
fn procedure_rotating_the_root() {
    let fixture = Fixture::get();
    let scratch = data_dir("precomp-root-rotation-");
    let root = scratch.path();
    let data = root.join("data");
    let secure = root.join("secure/keys");
    let keys = root.join("keys");
    let (_, root_pub, root_id) = generate(&secure, "precomp-root");
    let (b1, b1_pub, b1_id) = generate(&keys, "builder-1");
    let secure_key = |name: &str| secure.join(name).to_str().unwrap().to_string();
    ok(precomp_data(
        &data,
        &[
            "keys",
            "init",
            "--root",
            &secure_key("precomp-root.key"),
            "--builder",
            b1_pub.to_str().unwrap(),
        ],
    ));
    let token = ok(precomp_data(
        &data,
        &[
            "token",
            "create",
            "--name",
            "builder-1",
            "--key",
            b1_pub.to_str().unwrap(),
        ],
    ))
    .trim()
    .to_string();
    let server = serve_fixture(&data);
    let client = ArtifactClient::new(server.base(), Some(token)).unwrap();
    let sha: [u8; 32] = Sha256::digest(&fixture.artifact).into();
    let signed = SignedManifest::sign(&fixture.manifest, &b1).encode_to_vec();
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
    let project = root.join("project");
    configured_consumer(&project, server.base(), &root_pub);
    let cache = root.join("cache/trust.doc");
    let first = plain_ex(&fetch_here(&project, &cache, &["--json"]));
    assert_eq!(first["status"], "installed", "{first}");
    assert_eq!(cached_version(&cache), 1);

    // The procedure.
    let (_, root2_pub, root2_id) = generate(&secure, "precomp-root-2");
    ok(precomp_data(
        &data,
        &[
            "keys",
            "rotate",
            "--old",
            root_pub.to_str().unwrap(),
            "--new-root",
            &secure_key("precomp-root-2.key"),
            "--root",
            &secure_key("precomp-root.key"),
        ],
    ));
    let listed = ok(precomp_data(&data, &["keys", "list"]));
    assert!(
        listed.contains("version 2") && listed.contains(&root2_id),
        "{listed}"
    );
    // Only the new root issues versions now.
    let by_old_root = precomp_data(
        &data,
        &["keys", "renew", "--root", &secure_key("precomp-root.key")],
    );
    assert!(
        !by_old_root.status.success() && text(&by_old_root).contains("not a root key"),
        "{}",
        describe(&by_old_root)
    );
    // Clients pinning the old root follow the rotation: the one that cached version 1, and one
    // with nothing cached (it walks the chain from the pinned root).
    let followed = plain_ex(&fetch_here(&project, &cache, &["--json"]));
    assert_eq!(followed["status"], "current", "{followed}");
    assert_eq!(cached_version(&cache), 2);
    let fresh = root.join("fresh");
    configured_consumer(&fresh, server.base(), &root_pub);
    let installed = plain_ex(&fetch_here(
        &fresh,
        &root.join("fresh-cache/trust.doc"),
        &["--json"],
    ));
    assert_eq!(installed["status"], "installed", "{installed}");
    assert_eq!(installed["signers"], serde_json::json!([b1_id]));

    // A project updates its pinned key (the file `.precomp.toml` names), then the old root is
    // revoked with the new one.
    std::fs::copy(&root2_pub, fresh.join("ci/keys/precomp-root.pub")).unwrap();
    ok(precomp_data(
        &data,
        &[
            "keys",
            "revoke",
            &root_id,
            "--reason",
            "leaked",
            "--root",
            &secure_key("precomp-root-2.key"),
        ],
    ));
    let listed = ok(precomp_data(&data, &["keys", "list", "--json"]));
    let document: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert!(document.to_string().contains(&root_id), "{document}");
    let pinned_new = fetch_here(&fresh, &root.join("pinned-new/trust.doc"), &["--json"]);
    let line = plain_ex(&pinned_new);
    assert_eq!(line["status"], "current", "{line}");
    assert_eq!(cached_version(&root.join("pinned-new/trust.doc")), 3);
    // The revoked old root issues nothing.
    let revoked_root = precomp_data(
        &data,
        &["keys", "renew", "--root", &secure_key("precomp-root.key")],
    );
    assert!(
        !revoked_root.status.success(),
        "{}",
        describe(&revoked_root)
    );
}

/// A miss whose inputs the mirror's builders tried and failed is `build_failed`: the reason
/// names the toolchain, the attempts, where the log is and its digest, and `--request-builds`
/// says the mirror keeps that miss closed (a failure is recorded under its key).
#[test]
fn a_build_the_mirror_holds_a_failure_for_is_missed_naming_the_failure_and_its_log() {
    let fixture = Fixture::get();
    let scratch = data_dir("precomp-failed-miss-");
    let root = scratch.path();
    let data = root.join("data");
    let keys = root.join("keys");
    let (_, root_pub, _) = generate(&keys, "precomp-root");
    let (_, b1_pub, _) = generate(&keys, "builder-1");
    ok(precomp_data(
        &data,
        &[
            "keys",
            "init",
            "--root",
            keys.join("precomp-root.key").to_str().unwrap(),
            "--builder",
            b1_pub.to_str().unwrap(),
        ],
    ));
    let token = ok(precomp_data(
        &data,
        &[
            "token",
            "create",
            "--name",
            "builder-1",
            "--key",
            b1_pub.to_str().unwrap(),
        ],
    ))
    .trim()
    .to_string();
    let server = serve_fixture(&data);
    let client = ArtifactClient::new(server.base(), Some(token)).unwrap();
    let log = "** (CompileError) lib/plain_ex.ex:1: undefined function boom/0\n";
    let recorded = runtime()
        .block_on(client.record_failure(&precomp_artifacts::FailureReport {
            package: "plain_ex".into(),
            version: "1.0.0".into(),
            base_key: fixture.manifest.base_key.clone(),
            toolchain_id: "host".into(),
            log: log.into(),
        }))
        .unwrap();

    let project = root.join("project");
    configured_consumer(&project, server.base(), &root_pub);
    let cache = root.join("cache/trust.doc");
    let missed = plain_ex(&fetch_here(&project, &cache, &["--json"]));
    assert_eq!(missed["kind"], "build_failed", "{missed}");
    let reason = missed["reason"].as_str().unwrap();
    for expected in [
        "toolchain host",
        "1 attempt,",
        &format!("{}/precomp/v1/failures/plain_ex", server.base()),
        &recorded.log_sha256,
    ] {
        assert!(reason.contains(expected), "no {expected:?} in: {reason}");
    }
    // The log is where the reason says.
    let failures: serde_json::Value =
        reqwest::blocking::get(server.url("/precomp/v1/failures/plain_ex"))
            .unwrap()
            .json()
            .unwrap();
    assert!(
        failures.to_string().contains("undefined function boom/0"),
        "{failures}"
    );

    let requested = fetch_here(&project, &cache, &["--request-builds"]);
    let said = text(&requested);
    assert!(requested.status.success(), "{}", describe(&requested));
    assert!(
        said.contains("requested builds for 1 miss(es): 0 open for builders, 1 closed on the mirror (plain_ex: failed on host"),
        "{said}"
    );
}
