//! Importing container images (`toolchain::import`) with real tools: images made by umoci,
//! pushed by skopeo to Debian's `docker-registry` on loopback (anonymous and htpasswd Basic
//! auth), read back over the OCI distribution API, from the OCI layout and from a
//! `docker-archive`. The images here are tiny (a few files): these tests check formats,
//! whiteouts, platforms, auth and verification; the whole-toolchain import and build is in
//! `precomp/tests/toolchain_import.rs`.

mod common;

use std::path::{Path, PathBuf};

use precomp_sandbox::toolchain::import::{self, host_platform, ImportRequest, Unpacked};
use precomp_sandbox::toolchain::{Credentials, ImportError, Store};
use precomp_sandbox::tree;
use precomp_testkit::oci_registry::{skopeo_copy, skopeo_raw_manifest, umoci, OciRegistry};
use sha2::{Digest, Sha256};

/// An OCI layout `dir/layout` with image `t`: two layers made by `umoci repack`, the second
/// deleting a file and a directory of the first (umoci writes them as whiteouts).
fn tiny_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    umoci(&["init", "--layout", "layout"], dir);
    umoci(&["new", "--image", "layout:t"], dir);
    let bundle = dir.join("bundle");
    umoci(&["unpack", "--image", "layout:t", "bundle"], dir);
    let rootfs = bundle.join("rootfs");
    write(
        &rootfs.join("usr/bin/tool"),
        "#!/bin/sh\necho tool\n",
        0o755,
    );
    write(&rootfs.join("etc/motd"), "hello\n", 0o644);
    write(&rootfs.join("etc/gone"), "removed by layer 2\n", 0o644);
    write(&rootfs.join("opt/d/a"), "a\n", 0o644);
    write(&rootfs.join("usr/bin/su-like"), "x\n", 0o4755);
    std::os::unix::fs::symlink("usr/bin", rootfs.join("bin")).unwrap();
    umoci(&["repack", "--image", "layout:t", "bundle"], dir);
    std::fs::remove_dir_all(&bundle).unwrap();
    umoci(&["unpack", "--image", "layout:t", "bundle"], dir);
    std::fs::remove_file(rootfs.join("etc/gone")).unwrap();
    std::fs::remove_dir_all(rootfs.join("opt/d")).unwrap();
    write(&rootfs.join("etc/new"), "added by layer 2\n", 0o644);
    umoci(&["repack", "--image", "layout:t", "bundle"], dir);
    std::fs::remove_dir_all(&bundle).unwrap();
    umoci(&["gc", "--layout", "layout"], dir);
    layout
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    common::chmod(path, mode);
}

fn unpack(
    image: &str,
    credentials: Option<Credentials>,
) -> Result<(Unpacked, tempfile::TempDir), ImportError> {
    let dir = tempfile::tempdir().unwrap();
    let mut request = ImportRequest::new(image);
    request.credentials = credentials;
    let unpacked = import::unpack(&request, dir.path())?;
    Ok((unpacked, dir))
}

/// What the tiny image's root must hold after both layers.
fn check_tiny_root(root: &Path) {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    assert_eq!(read("usr/bin/tool"), "#!/bin/sh\necho tool\n");
    assert_eq!(read("etc/motd"), "hello\n");
    assert_eq!(read("etc/new"), "added by layer 2\n");
    assert!(
        !root.join("etc/gone").exists(),
        "a whiteout removes the lower layer's file"
    );
    assert!(
        !root.join("opt/d").exists(),
        "a whiteout removes the lower layer's directory"
    );
    assert_eq!(
        std::fs::read_link(root.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("usr/bin/tool"), 0o755);
    assert_eq!(mode("usr/bin/su-like"), 0o755, "set-uid cleared");
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[test]
fn a_layout_a_registry_and_a_docker_archive_give_the_same_root() {
    let work = tempfile::tempdir().unwrap();
    let layout = tiny_layout(work.path());
    let from_layout = format!("oci:{}:t", layout.display());
    let (a, _a_dir) = unpack(&from_layout, None).unwrap();
    check_tiny_root(&a.root);
    assert_eq!(a.format, "oci-layout");
    assert_eq!(a.layers, 2);
    assert_eq!(a.applied.setid_cleared, 1);
    assert_eq!(a.platform, format!("linux/{}", host_platform().0));
    let expected = tree::manifest(&a.root).unwrap();

    // Pushed by skopeo to a registry on loopback, pulled anonymously over plain HTTP.
    let registry = OciRegistry::start(None);
    let reference = format!("{}/tiny:1", registry.host());
    skopeo_copy(&from_layout, &format!("docker://{reference}"), None, &[]);
    let (b, _b_dir) = unpack(&reference, None).unwrap();
    check_tiny_root(&b.root);
    assert_eq!(b.format, "registry");
    assert_eq!(tree::manifest(&b.root).unwrap(), expected);
    let served = skopeo_raw_manifest(&format!("docker://{reference}"), None);
    assert_eq!(b.manifest_digest.as_deref(), Some(sha256(&served).as_str()));
    assert_eq!(b.config_digest, a.config_digest);

    // By digest, and through `docker://`.
    let pinned = format!("docker://{}/tiny@{}", registry.host(), sha256(&served));
    let (c, _c_dir) = unpack(&pinned, None).unwrap();
    assert_eq!(tree::manifest(&c.root).unwrap(), expected);
    let wrong = format!("{}/tiny@sha256:{}", registry.host(), "0".repeat(64));
    assert!(unpack(&wrong, None).is_err());

    // `docker save` format, written by skopeo: no manifest, the config digest identifies it.
    let archive = work.path().join("tiny.tar");
    skopeo_copy(
        &from_layout,
        &format!("docker-archive:{}:tiny:1", archive.display()),
        None,
        &[],
    );
    for image in [
        format!("docker-archive:{}", archive.display()),
        archive.display().to_string(),
        format!("docker-archive:{}:tiny:1", archive.display()),
    ] {
        let (d, _d_dir) = unpack(&image, None).unwrap_or_else(|e| panic!("{image}: {e}"));
        check_tiny_root(&d.root);
        assert_eq!(d.format, "docker-archive");
        assert_eq!(d.manifest_digest, None);
        assert_eq!(d.config_digest, a.config_digest);
        assert_eq!(tree::manifest(&d.root).unwrap(), expected);
    }
    let missing = format!("docker-archive:{}:other:2", archive.display());
    let error = unpack(&missing, None).unwrap_err().to_string();
    assert!(error.contains("no image tagged \"other:2\""), "{error}");
}

#[test]
fn basic_auth_with_htpasswd() {
    let work = tempfile::tempdir().unwrap();
    let layout = tiny_layout(work.path());
    let registry = OciRegistry::start(Some(("ci", "s3cret")));
    let reference = format!("{}/private/tiny:1", registry.host());
    skopeo_copy(
        &format!("oci:{}:t", layout.display()),
        &format!("docker://{reference}"),
        Some("ci:s3cret"),
        &[],
    );
    // No credentials: a clear error naming what to give.
    let error = unpack(&reference, None).unwrap_err();
    assert!(matches!(error, ImportError::Unauthorized { .. }), "{error}");
    assert!(error.to_string().contains("--password-stdin"), "{error}");
    // A wrong password: refused, naming the user.
    let wrong = Credentials {
        username: "ci".into(),
        password: "wrong".into(),
    };
    let error = unpack(&reference, Some(wrong)).unwrap_err();
    assert!(matches!(error, ImportError::Unauthorized { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("credentials of \"ci\" were not accepted"),
        "{error}"
    );
    // The right one.
    let right = Credentials {
        username: "ci".into(),
        password: "s3cret".into(),
    };
    let (unpacked, _dir) = unpack(&reference, Some(right)).unwrap();
    check_tiny_root(&unpacked.root);
}

/// A second image for the platform this machine is not, and an index naming both.
#[test]
fn an_index_with_two_platforms_gives_this_machine_s_image() {
    let work = tempfile::tempdir().unwrap();
    let layout = tiny_layout(work.path());
    let dir = work.path();
    let (host_arch, _) = host_platform();
    let other_arch = if host_arch == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    umoci(&["new", "--image", "layout:other"], dir);
    umoci(&["unpack", "--image", "layout:other", "bundle"], dir);
    write(&dir.join("bundle/rootfs/etc/arch"), other_arch, 0o644);
    umoci(&["repack", "--image", "layout:other", "bundle"], dir);
    umoci(
        &[
            "config",
            "--image",
            "layout:other",
            "--architecture",
            other_arch,
        ],
        dir,
    );

    // The index (a blob of the layout, named `multi`), as `docker buildx` would push it.
    let index_path = layout.join("index.json");
    let mut top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let by_name = |name: &str| {
        top["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
            .unwrap()
            .clone()
    };
    let entry = |m: serde_json::Value, arch: &str| {
        serde_json::json!({
            "mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(by_name("other"), other_arch), entry(by_name("t"), host_arch)],
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let index_digest = sha256(&index_bytes);
    std::fs::write(
        layout.join("blobs/sha256").join(&index_digest[7..]),
        &index_bytes,
    )
    .unwrap();
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest, "size": index_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(&index_path, serde_json::to_vec(&top).unwrap()).unwrap();

    let (local, _l) = unpack(&format!("oci:{}:multi", layout.display()), None).unwrap();
    check_tiny_root(&local.root);
    assert!(!local.root.join("etc/arch").exists());
    assert_eq!(local.index_digest.as_deref(), Some(index_digest.as_str()));

    // Pushed with both platforms (`skopeo copy --all`), pulled from the registry.
    let registry = OciRegistry::start(None);
    let reference = format!("{}/multi:1", registry.host());
    skopeo_copy(
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{reference}"),
        None,
        &["--all"],
    );
    let (remote, _r) = unpack(&reference, None).unwrap();
    check_tiny_root(&remote.root);
    assert!(remote.index_digest.is_some());
    assert_eq!(remote.config_digest, local.config_digest);

    // The other platform alone is refused, saying what it offers.
    let error = unpack(&format!("oci:{}:other", layout.display()), None).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&format!("linux/{other_arch}")) && text.contains("natively"),
        "{text}"
    );
}

/// A toolchain store the sandbox user can reach.
fn store() -> (Store, tempfile::TempDir) {
    let data = common::open_dir();
    (Store::open(data.path()).unwrap(), data)
}

/// Everything in the store but the bookkeeping directories (`.locks`, `imports`).
fn stored(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".locks")
        .collect();
    names.sort();
    names
}

#[test]
fn a_layer_that_does_not_match_its_digest_is_refused_and_nothing_is_stored() {
    let work = tempfile::tempdir().unwrap();
    let layout = tiny_layout(work.path());
    let registry = OciRegistry::start(None);
    let reference = format!("{}/tiny:1", registry.host());
    skopeo_copy(
        &format!("oci:{}:t", layout.display()),
        &format!("docker://{reference}"),
        None,
        &[],
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&skopeo_raw_manifest(&format!("docker://{reference}"), None))
            .unwrap();
    let layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    // Same size, one byte changed: in the layout and in the registry's storage.
    for path in [
        layout.join("blobs/sha256").join(&layer[7..]),
        registry.blob_path(&layer),
    ] {
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let sandbox = common::sandbox();
    for image in [reference.clone(), format!("oci:{}:t", layout.display())] {
        let (store, _data) = store();
        let error = store
            .import(&sandbox, &ImportRequest::new(&image))
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("layer 2 of 2") && text.contains("does not match its digest"),
            "{image}: {text}"
        );
        assert!(stored(&store).is_empty(), "{image}: {:?}", stored(&store));
    }
}

#[test]
fn an_image_without_erlang_is_refused_and_nothing_is_stored() {
    let work = tempfile::tempdir().unwrap();
    let layout = tiny_layout(work.path());
    let (store, _data) = store();
    let error = store
        .import(
            &common::sandbox(),
            &ImportRequest::new(format!("oci:{}:t", layout.display())),
        )
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("not a toolchain") && text.contains("no Erlang/OTP"),
        "{text}"
    );
    assert!(stored(&store).is_empty(), "{:?}", stored(&store));
}
