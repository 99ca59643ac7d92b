//! `precomp toolchain import` end to end: the bookworm toolchain image (the shared store under
//! `$PRECOMP_TOOLCHAIN_CACHE`) turned into a container image — its root archived by GNU tar as
//! one layer of an OCI layout, pushed by skopeo to Debian's `docker-registry` on loopback —
//! imported over the OCI distribution API, then used by `precomp build`: the same tuple as the
//! image it came from, so the artifacts must be the same bytes (DESIGN.md: the image is
//! provenance, not key).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use precomp_testkit::oci_registry::{skopeo_copy, skopeo_raw_manifest, OciRegistry};
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Writes a blob into an OCI layout; its digest.
fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&digest[7..]), bytes).unwrap();
    digest
}

/// An OCI layout at `layout` with one image, `NAME`: `root` archived by GNU tar
/// (`--numeric-owner`) as a single gzip layer, and a config for this machine's platform.
fn layout_of_root(root: &Path, layout: &Path, name: &str) {
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut tar = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(root)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let staged = layout.join("layer.tmp");
    let mut gzip = flate2::write::GzEncoder::new(
        std::fs::File::create(&staged).unwrap(),
        flate2::Compression::fast(),
    );
    let mut uncompressed = Sha256::new();
    let mut stdout = tar.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        uncompressed.update(&buf[..n]);
        gzip.write_all(&buf[..n]).unwrap();
    }
    assert!(tar.wait().unwrap().success(), "tar of {}", root.display());
    gzip.finish().unwrap();
    let diff_id = format!("sha256:{}", hex::encode(uncompressed.finalize()));
    let mut compressed = Sha256::new();
    let mut file = std::fs::File::open(&staged).unwrap();
    let size = std::io::copy(&mut file, &mut compressed).unwrap();
    let layer_digest = format!("sha256:{}", hex::encode(compressed.finalize()));
    std::fs::rename(
        &staged,
        layout.join("blobs/sha256").join(&layer_digest[7..]),
    )
    .unwrap();

    let (arch, _) = precomp_sandbox::toolchain::import::host_platform();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": put_blob(layout, &config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": size,
        }],
    }))
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": put_blob(layout, &manifest),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// `precomp build --json` of `lock`; each app's (key, artifact SHA-256).
fn build(
    data: &Path,
    toolchains: &Path,
    toolchain: &str,
    fixture: &FixtureRepo,
    lock: &Path,
) -> BTreeMap<String, (String, String)> {
    let mut command = precomp_command();
    command
        .arg("--data")
        .arg(data)
        .args(["build", "--json", "--lock"])
        .arg(lock)
        .args(["--mirror", &fixture.repo_url(), "--toolchain", toolchain])
        .arg("--toolchains")
        .arg(toolchains)
        .arg("--key")
        .arg(fixture.key("builder.key"));
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["status"], "built", "{v}");
            (
                v["app"].as_str().unwrap().to_string(),
                (
                    v["key"].as_str().unwrap().to_string(),
                    v["artifact_sha256"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

#[test]
fn an_imported_image_of_the_bookworm_toolchain_builds_the_same_artifacts() {
    let cache = toolchain_cache();
    // A bookworm image of the shared store (any recipe will do: the test compares the import
    // with its source); built there when there is none.
    let cache_arg = cache.to_str().unwrap();
    let listed = ok(precomp(&[
        "--data",
        cache_arg,
        "toolchain",
        "list",
        "--json",
    ]));
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let source = match listed
        .into_iter()
        .find(|t| t["suite"] == "bookworm" && t["kind"] == "image")
    {
        Some(found) => found,
        None => {
            let built = ok(precomp(&[
                "--data",
                cache_arg,
                "toolchain",
                "build",
                "--suite",
                "bookworm",
                "--json",
            ]));
            serde_json::from_str::<serde_json::Value>(&built).unwrap()[0].clone()
        }
    };
    let source_root = Path::new(source["root"].as_str().unwrap());

    // The image: pushed to the registry, then the local layout removed (disk).
    let registry = OciRegistry::start(None);
    let reference = format!("{}/toolchains/bookworm:1", registry.host());
    {
        let work = tempfile::tempdir().unwrap();
        let layout = work.path().join("layout");
        layout_of_root(source_root, &layout, "bookworm");
        skopeo_copy(
            &format!("oci:{}:bookworm", layout.display()),
            &format!("docker://{reference}"),
            None,
            &[],
        );
    }
    let served = skopeo_raw_manifest(&format!("docker://{reference}"), None);

    let data = data_dir("precomp-import-data-");
    let data_arg = data.path().to_str().unwrap();
    let imported = ok(precomp(&[
        "--data",
        data_arg,
        "toolchain",
        "import",
        &reference,
        "--json",
    ]));
    let record: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&imported).unwrap()[0].clone();
    for field in ["otp", "otp_full", "elixir", "rebar3", "architecture"] {
        assert_eq!(record[field], source[field], "{field}: {record}");
    }
    assert_eq!(record["kind"], "imported");
    assert_eq!(record["image"]["reference"], reference.as_str());
    assert_eq!(record["image"]["format"], "registry");
    assert_eq!(record["image"]["manifest_digest"], sha256(&served).as_str());
    assert_eq!(
        record["image"]["system_architecture"],
        "x86_64-pc-linux-gnu"
    );
    assert!(
        record["image"]["libc"]
            .as_str()
            .unwrap()
            .starts_with("glibc 2.36"),
        "{record}"
    );
    assert!(
        record["image"]["setid_cleared"].as_u64().unwrap() > 0,
        "{record}"
    );
    assert_eq!(record["rebar3_path"], "/usr/bin/rebar3");
    let id = record["id"].as_str().unwrap();

    // Verified like any image; found by id and by reference; a second import is instant.
    let verified = ok(precomp(&["--data", data_arg, "toolchain", "verify", id]));
    assert!(verified.contains(&format!("ok: {id}")), "{verified}");
    let listed = ok(precomp(&["--data", data_arg, "toolchain", "list"]));
    assert!(
        listed.contains("imported") && listed.contains(&reference),
        "{listed}"
    );
    let again = ok(precomp(&[
        "--data",
        data_arg,
        "toolchain",
        "import",
        &reference,
    ]));
    assert!(again.contains("reused (imported before)"), "{again}");
    let version = ok(precomp(&[
        "--data",
        data_arg,
        "toolchain",
        "run",
        &reference,
        "--",
        "elixir",
        "-e",
        "IO.puts(System.version())",
    ]));
    assert_eq!(version.trim(), source["elixir"].as_str().unwrap());

    // The same lock built on the image and on its import: the same keys and bytes.
    let fixture = FixtureRepo::new("precomp-import-fixture-", &[], &["builder"]);
    let lock = fixture.path("mix.lock");
    fixture.write_lock(
        &lock,
        &[
            "shapes@1.0.0",
            "shape_user@1.0.0",
            "tiny_nif@1.0.0",
            "erl_counter@1.0.0",
            "erl_ids@1.0.0",
            "plain_ex@1.0.0",
        ],
    );
    let on_image = build(
        data_dir("precomp-import-build-a-").path(),
        &cache,
        source["id"].as_str().unwrap(),
        &fixture,
        &lock,
    );
    let on_import = build(
        data_dir("precomp-import-build-b-").path(),
        data.path(),
        id,
        &fixture,
        &lock,
    );
    assert_eq!(on_image.len(), 6, "{on_image:?}");
    assert_eq!(on_image, on_import);
}
