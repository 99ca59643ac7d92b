//! Operations on a real mirror's data directory: `precomp gc` (dry run, then --apply) never
//! removes a build a kept lock needs, and `precomp backup` / `precomp restore` give a data
//! directory that serves the same bytes. Everything goes through `precomp serve` over loopback
//! and the `precomp` binary.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use precomp_http::artifacts::ArtifactClient;
use precomp_proto::buildkey::{BuildInputs, BuildKey, ClosureMember, Manager, PackageRef, Target};
use precomp_proto::manifest::{
    ArtifactSigningKey, Manifest, Output as BuildOutput, SignedManifest,
};
use prost::Message;
use sha2::{Digest, Sha256};

/// shape_user 1.0.0 (outer checksum 11…11) with shapes 2.0.0 (22…22).
const LOCK: &str = r#"%{
  "shape_user": {:hex, :shape_user, "1.0.0", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", [:mix], [{:shapes, ">= 1.0.0", [hex: :shapes, repo: "hexpm", optional: false]}], "hexpm", "1111111111111111111111111111111111111111111111111111111111111111"},
  "shapes": {:hex, :shapes, "2.0.0", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", [:mix], [], "hexpm", "2222222222222222222222222222222222222222222222222222222222222222"},
}
"#;

const DAY: i64 = 86_400;

fn package(name: &str, version: &str, checksum: u8) -> PackageRef {
    PackageRef {
        name: name.into(),
        version: version.into(),
        outer_checksum: [checksum; 32],
    }
}

fn inputs(package: PackageRef, closure: Vec<PackageRef>, otp: &str, elixir: &str) -> BuildInputs {
    BuildInputs {
        package,
        manager: Manager::Mix,
        // Any keys: gc keeps builds by the releases of their closures.
        closure: closure
            .into_iter()
            .map(|package| ClosureMember {
                package,
                key: Some(BuildKey([7; 32])),
            })
            .collect(),
        otp_major: otp.into(),
        elixir: elixir.into(),
        mix_env: "prod".into(),
        target: Target::Any,
        compile_env: Vec::new(),
    }
}

/// A real artifact tarball whose one beam depends on `tag`.
fn artifact_bytes(tag: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(app.join("ebin")).unwrap();
    let mut beam = format!("artifact {tag}\n").into_bytes();
    beam.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(app.join("ebin/app.beam"), beam).unwrap();
    precomp_proto::artifact::pack(&app, dir.path())
        .unwrap()
        .bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One published build: its artifact and manifest.
struct Build {
    artifact: Vec<u8>,
    manifest: Manifest,
}

impl Build {
    fn new(inputs: &BuildInputs, tag: &str) -> Build {
        let artifact = artifact_bytes(tag);
        let output = BuildOutput {
            artifact_sha256: Sha256::digest(&artifact).to_vec(),
            artifact_size: artifact.len() as u64,
            files: precomp_proto::artifact::list(&artifact).unwrap(),
            native_code: false,
        };
        let manifest = test_manifest(inputs, output, "ops-test", None);
        Build { artifact, manifest }
    }

    fn key(&self) -> &str {
        &self.manifest.key
    }

    fn sha(&self) -> String {
        sha256_hex(&self.artifact)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn precomp_data(data: &Path, args: &[&str]) -> Output {
    let mut command = precomp_command();
    command.arg("--data").arg(data).args(args);
    output_within(command, Duration::from_secs(120))
}

/// A builder key (its .pub written to `dir`) and an upload token bound to it on `data`.
fn builder(data: &Path, dir: &Path) -> (ArtifactSigningKey, String) {
    let key = ArtifactSigningKey::generate();
    let public = dir.join("builder.pub");
    std::fs::write(&public, key.public_key().to_pem().unwrap()).unwrap();
    let token = ok(precomp_data(
        data,
        &[
            "token",
            "create",
            "--name",
            "builder",
            "--key",
            public.to_str().unwrap(),
        ],
    ))
    .trim()
    .to_string();
    (key, token)
}

/// `precomp serve` on `data` in front of the repository directory `upstream`.
fn serve(data: &Path, upstream: &Path, upstream_key: &Path) -> ServeProcess {
    std::fs::create_dir_all(upstream).unwrap();
    let mut command = precomp_command();
    command
        .arg("--data")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream"])
        .arg(format!("file://{}", upstream.display()))
        .arg("--upstream-key")
        .arg(upstream_key);
    ServeProcess::spawn(command)
}

fn publish(server: &ServeProcess, token: &str, key: &ArtifactSigningKey, builds: &[&Build]) {
    let client = ArtifactClient::new(server.base(), Some(token.to_string())).unwrap();
    runtime().block_on(async {
        for build in builds {
            let sha: [u8; 32] = Sha256::digest(&build.artifact).into();
            client
                .upload_artifact(&sha, build.artifact.clone())
                .await
                .unwrap();
            let signed = SignedManifest::sign(&build.manifest, key).encode_to_vec();
            client.upload_manifest(build.key(), signed).await.unwrap();
        }
    });
}

/// GET: status and body.
fn get(server: &ServeProcess, path: &str) -> (u16, Vec<u8>) {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let response = client.get(server.url(path)).send().unwrap();
    (
        response.status().as_u16(),
        response.bytes().unwrap().to_vec(),
    )
}

fn gc_json(data: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["gc", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(precomp_data(data, &all))).unwrap()
}

fn listed(report: &serde_json::Value, list: &str, field: &str) -> Vec<String> {
    let mut items: Vec<String> = report[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[field].as_str().unwrap().to_string())
        .collect();
    items.sort();
    items
}

fn sorted(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items
}

fn blob(data: &Path, sha: &str) -> PathBuf {
    data.join("artifacts/blobs/sha256")
        .join(&sha[..2])
        .join(sha)
}

#[test]
fn gc_never_removes_what_a_kept_lock_needs() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let upstream = scratch.path().join("empty-upstream");
    let upstream_key = scratch.path().join("repo.pem");
    keygen(&upstream_key);
    let upstream_key = scratch.path().join("repo.pem.pub");
    let (key, token) = builder(&data, scratch.path());
    let lock_path = scratch.path().join("mix.lock");
    std::fs::write(&lock_path, LOCK).unwrap();

    let shape_user = package("shape_user", "1.0.0", 0x11);
    // Two builds the lock needs (two toolchains), one of another closure, one of another
    // package that clients still download, and an artifact no manifest names.
    let locked_25 = Build::new(
        &inputs(
            shape_user.clone(),
            vec![package("shapes", "2.0.0", 0x22)],
            "25",
            "1.14.0",
        ),
        "locked-25",
    );
    let locked_27 = Build::new(
        &inputs(
            shape_user.clone(),
            vec![package("shapes", "2.0.0", 0x22)],
            "27",
            "1.18.3",
        ),
        "locked-27",
    );
    let other_closure = Build::new(
        &inputs(
            shape_user,
            vec![package("shapes", "1.0.0", 0x33)],
            "25",
            "1.14.0",
        ),
        "other-closure",
    );
    let downloaded = Build::new(
        &inputs(package("other", "1.0.0", 0x44), vec![], "25", "1.14.0"),
        "downloaded",
    );
    let orphan = artifact_bytes("orphan");
    {
        let server = serve(&data, &upstream, &upstream_key);
        publish(
            &server,
            &token,
            &key,
            &[&locked_25, &locked_27, &other_closure, &downloaded],
        );
        let client = ArtifactClient::new(server.base(), Some(token.clone())).unwrap();
        let sha: [u8; 32] = Sha256::digest(&orphan).into();
        runtime()
            .block_on(client.upload_artifact(&sha, orphan.clone()))
            .unwrap();
    }

    // Everything was published and last used 40 days ago.
    {
        let db = rusqlite::Connection::open(data.join("artifacts/artifacts.db")).unwrap();
        let old = precomp_ops::trust::unix_now() - 40 * DAY;
        db.execute("UPDATE manifests SET published_at = ?1", [old])
            .unwrap();
        db.execute("UPDATE artifacts SET uploaded_at = ?1", [old])
            .unwrap();
        db.execute("UPDATE artifact_use SET last_used = ?1", [old])
            .unwrap();
    }
    // A client downloads one artifact today.
    let server = serve(&data, &upstream, &upstream_key);
    assert_eq!(
        get(
            &server,
            &format!("/precomp/v1/artifacts/{}", downloaded.sha())
        )
        .0,
        200
    );

    // Without a kept lock, the locked builds would go too.
    let unkept = gc_json(&data, &["--older-than", "30"]);
    assert_eq!(
        listed(&unkept, "manifests", "key"),
        sorted(vec![
            locked_25.key().into(),
            locked_27.key().into(),
            other_closure.key().into()
        ]),
        "{unkept}"
    );

    // With it: a dry run lists only the other closure's build and the orphan, and changes
    // nothing.
    let lock_arg = lock_path.to_str().unwrap();
    let dry = gc_json(&data, &["--older-than", "30", "--keep-lock", lock_arg]);
    let expected_manifests = vec![other_closure.key().to_string()];
    let expected_artifacts = sorted(vec![other_closure.sha(), sha256_hex(&orphan)]);
    assert_eq!(
        listed(&dry, "manifests", "key"),
        expected_manifests,
        "{dry}"
    );
    assert_eq!(
        listed(&dry, "artifacts", "sha256"),
        expected_artifacts,
        "{dry}"
    );
    assert_eq!(dry["applied"], false);
    assert_eq!(dry["kept"]["kept_locks"], 2, "{dry}");
    assert_eq!(dry["kept"]["recent"], 1, "{dry}");
    let text = ok(precomp_data(
        &data,
        &["gc", "--older-than", "30", "--keep-lock", lock_arg],
    ));
    assert!(text.contains("dry run"), "{text}");
    assert!(blob(&data, &other_closure.sha()).exists());
    assert_eq!(
        get(
            &server,
            &format!("/precomp/v1/manifests/{}", other_closure.key())
        )
        .0,
        200
    );

    // --apply, while the mirror runs.
    let applied = gc_json(
        &data,
        &["--older-than", "30", "--keep-lock", lock_arg, "--apply"],
    );
    assert_eq!(
        listed(&applied, "manifests", "key"),
        expected_manifests,
        "{applied}"
    );
    assert_eq!(
        listed(&applied, "artifacts", "sha256"),
        expected_artifacts,
        "{applied}"
    );
    for gone in [&other_closure.sha(), &sha256_hex(&orphan)] {
        assert!(!blob(&data, gone).exists(), "{gone} is still on disk");
        assert_eq!(
            get(&server, &format!("/precomp/v1/artifacts/{gone}")).0,
            404
        );
    }
    assert_eq!(
        get(
            &server,
            &format!("/precomp/v1/manifests/{}", other_closure.key())
        )
        .0,
        404
    );
    // What the lock needs, and what was downloaded today, is all still served.
    for build in [&locked_25, &locked_27, &downloaded] {
        let (status, body) = get(&server, &format!("/precomp/v1/artifacts/{}", build.sha()));
        assert_eq!(status, 200);
        assert!(body == build.artifact, "{} changed", build.sha());
        assert_eq!(
            get(&server, &format!("/precomp/v1/manifests/{}", build.key())).0,
            200
        );
    }
    let (_, index) = get(&server, "/precomp/v1/index/shape_user");
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    assert_eq!(index["builds"].as_array().unwrap().len(), 2, "{index}");

    // Nothing more to collect.
    let again = gc_json(
        &data,
        &["--older-than", "30", "--keep-lock", lock_arg, "--apply"],
    );
    assert!(again["manifests"].as_array().unwrap().is_empty(), "{again}");
    assert!(again["artifacts"].as_array().unwrap().is_empty(), "{again}");
}

#[test]
fn a_backup_restored_into_an_empty_data_dir_serves_the_same_bytes() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    // The upstream: a signed repository of one fixture package.
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
    let upstream_key = root.join("repo.pem.pub");

    let data = root.join("data");
    let (key, token) = builder(&data, root);
    let build = Build::new(
        &inputs(
            package("shape_user", "1.0.0", 0x11),
            vec![package("shapes", "2.0.0", 0x22)],
            "25",
            "1.14.0",
        ),
        "backed-up",
    );
    ok(precomp(&[
        "keys",
        "generate",
        "--name",
        "root",
        "--out",
        root.join("keys").to_str().unwrap(),
    ]));
    ok(precomp_data(
        &data,
        &[
            "keys",
            "init",
            "--root",
            root.join("keys/root.key").to_str().unwrap(),
            "--builder",
            root.join("builder.pub").to_str().unwrap(),
        ],
    ));

    let paths = [
        "/names".to_string(),
        "/versions".to_string(),
        "/packages/plain_ex".to_string(),
        "/tarballs/plain_ex-1.0.0.tar".to_string(),
        format!("/precomp/v1/manifests/{}", build.key()),
        format!("/precomp/v1/artifacts/{}", build.sha()),
        "/precomp/v1/index/shape_user".to_string(),
        "/precomp/v1/trust".to_string(),
        "/precomp/v1/trust/1".to_string(),
    ];
    let backup = root.join("backup");
    let served: Vec<Vec<u8>> = {
        let server = serve(&data, &root.join("repo"), &upstream_key);
        publish(&server, &token, &key, &[&build]);
        let bodies: Vec<Vec<u8>> = paths
            .iter()
            .map(|path| {
                let (status, body) = get(&server, path);
                assert_eq!(
                    status,
                    200,
                    "GET {path}: {}",
                    String::from_utf8_lossy(&body)
                );
                body
            })
            .collect();
        // Backed up while the mirror runs.
        let out = ok(precomp_data(
            &data,
            &["backup", "--out", backup.to_str().unwrap()],
        ));
        assert!(out.contains("artifacts/artifacts.db"), "{out}");
        bodies
    };
    assert!(backup.join("precomp-backup.json").is_file());
    let listing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("precomp-backup.json")).unwrap())
            .unwrap();
    let files: Vec<&str> = listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for expected in [
        "artifacts/artifacts.db",
        "mirror/mirror.db",
        "trust/trust.doc",
        "trust/history/1.doc",
    ] {
        assert!(files.contains(&expected), "{expected} not in {files:?}");
    }
    assert!(
        files.contains(
            &format!(
                "artifacts/blobs/sha256/{}/{}",
                &build.sha()[..2],
                build.sha()
            )
            .as_str()
        ),
        "{files:?}"
    );

    // A restore never goes over a data directory in use.
    let over = precomp_data(&data, &["restore", "--from", backup.to_str().unwrap()]);
    assert!(
        !over.status.success() && text(&over).contains("not empty"),
        "{}",
        describe(&over)
    );

    // A damaged copy of the backup is refused, naming the file, and restores nothing.
    let damaged = root.join("damaged");
    precomp_testkit::copy_dir(&backup, &damaged);
    let blob = damaged
        .join("artifacts/blobs/sha256")
        .join(&build.sha()[..2])
        .join(build.sha());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let check = precomp_data(
        &root.join("unused"),
        &["restore", "--check", "--from", damaged.to_str().unwrap()],
    );
    assert!(
        !check.status.success() && text(&check).contains(&build.sha()),
        "{}",
        describe(&check)
    );
    let target = root.join("from-damaged");
    let refused = precomp_data(&target, &["restore", "--from", damaged.to_str().unwrap()]);
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(
        !target.exists(),
        "a failed restore left {}",
        target.display()
    );

    // A blob deleted together with its line in the listing: every file left still matches
    // the listing, but the database names the blob, so check and restore refuse, naming it.
    let incomplete = root.join("incomplete");
    precomp_testkit::copy_dir(&backup, &incomplete);
    let relative = format!(
        "artifacts/blobs/sha256/{}/{}",
        &build.sha()[..2],
        build.sha()
    );
    std::fs::remove_file(incomplete.join(&relative)).unwrap();
    let listing_path = incomplete.join("precomp-backup.json");
    let mut edited: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&listing_path).unwrap()).unwrap();
    edited["files"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["path"] != relative.as_str());
    std::fs::write(&listing_path, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    let check = precomp_data(
        &root.join("unused"),
        &["restore", "--check", "--from", incomplete.to_str().unwrap()],
    );
    assert!(
        !check.status.success()
            && text(&check).contains("incomplete")
            && text(&check).contains(&relative),
        "{}",
        describe(&check)
    );
    let target = root.join("from-incomplete");
    let refused = precomp_data(
        &target,
        &["restore", "--from", incomplete.to_str().unwrap()],
    );
    assert!(
        !refused.status.success() && text(&refused).contains(&relative),
        "{}",
        describe(&refused)
    );
    assert!(
        !target.exists(),
        "a refused restore left {}",
        target.display()
    );

    // A file the listing does not name: the listing does not describe this backup.
    let unlisted = root.join("unlisted");
    precomp_testkit::copy_dir(&backup, &unlisted);
    std::fs::write(unlisted.join("trust/extra.doc"), b"not listed").unwrap();
    let check = precomp_data(
        &root.join("unused"),
        &["restore", "--check", "--from", unlisted.to_str().unwrap()],
    );
    assert!(
        !check.status.success() && text(&check).contains("trust/extra.doc"),
        "{}",
        describe(&check)
    );

    // Restored into an empty directory, with upstream gone: the same bytes.
    let restored = root.join("restored");
    std::fs::create_dir(&restored).unwrap();
    ok(precomp_data(
        &restored,
        &["restore", "--check", "--from", backup.to_str().unwrap()],
    ));
    ok(precomp_data(
        &restored,
        &["restore", "--from", backup.to_str().unwrap()],
    ));
    let server = serve(&restored, &root.join("no-upstream"), &upstream_key);
    for (path, expected) in paths.iter().zip(&served) {
        let (status, body) = get(&server, path);
        assert_eq!(
            status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            body == *expected,
            "GET {path}: other bytes after the restore"
        );
    }
    // And it accepts uploads: the restored token still works.
    let later = Build::new(
        &inputs(package("later", "1.0.0", 0x55), vec![], "25", "1.14.0"),
        "later",
    );
    publish(&server, &token, &key, &[&later]);
}

/// `precomp store scrub` on a mirror's data directory: clean after publishing (exit 0); after
/// a published build's artifact is overwritten, another deleted and a file no row names is
/// added, it reports each of them by digest, in text and as JSON, and exits with status 1.
#[test]
fn store_scrub_reports_corrupt_missing_and_orphaned_artifacts() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let upstream = scratch.path().join("empty-upstream");
    let upstream_key = scratch.path().join("repo.pem");
    keygen(&upstream_key);
    let upstream_key = scratch.path().join("repo.pem.pub");
    let (key, token) = builder(&data, scratch.path());
    let one = Build::new(
        &inputs(package("one", "1.0.0", 0x11), vec![], "25", "1.14.0"),
        "one",
    );
    let two = Build::new(
        &inputs(package("two", "1.0.0", 0x22), vec![], "25", "1.14.0"),
        "two",
    );
    let three = Build::new(
        &inputs(package("three", "1.0.0", 0x33), vec![], "25", "1.14.0"),
        "three",
    );
    {
        let server = serve(&data, &upstream, &upstream_key);
        publish(&server, &token, &key, &[&one, &two, &three]);
    }
    let scrub = |json: bool| {
        let mut args = vec!["store", "scrub"];
        if json {
            args.push("--json");
        }
        precomp_data(&data, &args)
    };
    let clean = scrub(true);
    assert!(clean.status.success(), "{clean:?}");
    let report: serde_json::Value = serde_json::from_slice(&clean.stdout).unwrap();
    assert_eq!(report["checked"], 3, "{report}");
    for list in ["missing", "corrupt", "orphaned"] {
        assert_eq!(report[list].as_array().unwrap().len(), 0, "{report}");
    }

    let sha = |build: &Build| sha256_hex(&build.artifact);
    let mut damaged = std::fs::read(blob(&data, &sha(&one))).unwrap();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    std::fs::write(blob(&data, &sha(&one)), &damaged).unwrap();
    std::fs::remove_file(blob(&data, &sha(&two))).unwrap();
    let orphan = artifact_bytes("orphan");
    let orphan_sha = sha256_hex(&orphan);
    std::fs::create_dir_all(blob(&data, &orphan_sha).parent().unwrap()).unwrap();
    std::fs::write(blob(&data, &orphan_sha), &orphan).unwrap();

    let found = scrub(true);
    assert_eq!(found.status.code(), Some(1), "{found:?}");
    let report: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(listed(&report, "corrupt", "sha256"), vec![sha(&one)]);
    assert_eq!(report["corrupt"][0]["actual"], sha256_hex(&damaged));
    assert_eq!(listed(&report, "missing", "sha256"), vec![sha(&two)]);
    assert_eq!(report["missing"][0]["builds"][0], two.key());
    assert_eq!(
        listed(&report, "orphaned", "sha256"),
        vec![orphan_sha.clone()]
    );
    assert_eq!(report["checked"], 2);

    let text = scrub(false);
    assert_eq!(text.status.code(), Some(1));
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains(&format!("corrupt: artifact {}", sha(&one))),
        "{text}"
    );
    assert!(
        text.contains(&format!("missing: artifact {}", sha(&two))),
        "{text}"
    );
    assert!(
        text.contains(&format!("orphaned: blob {orphan_sha}")),
        "{text}"
    );
    assert!(text.contains("1 corrupt, 1 missing, 1 orphaned"), "{text}");
}
