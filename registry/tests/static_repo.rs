//! Static repositories: built deterministically, verified file by file, every tampered byte
//! named.

use precomp_testkit::copy_dir;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use precomp_proto::registry::{decode_package, RepoSigningKey};
use precomp_registry::static_repo::{self, StaticRepoError};

fn key() -> &'static RepoSigningKey {
    static KEY: OnceLock<RepoSigningKey> = OnceLock::new();
    KEY.get_or_init(|| RepoSigningKey::generate(2048).unwrap())
}

fn fixture(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/packages")
        .join(dir)
}

/// A packages directory with a few fixtures: rebar3, erlang.mk and one Mix project.
fn packages() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["erl_counter", "erl_ids", "mk_erl", "plain_ex"] {
        copy_dir(&fixture(name), &dir.path().join(name));
    }
    // Not a package: ignored.
    std::fs::create_dir(dir.path().join("notes")).unwrap();
    std::fs::write(dir.path().join("README.md"), "not a package").unwrap();
    dir
}

/// Every file under `root`, relative path → contents.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn builds_are_deterministic_and_verify() {
    let packages = packages();
    let out = tempfile::tempdir().unwrap();
    let first = out.path().join("first");
    let second = out.path().join("second");
    let built = static_repo::build(packages.path(), "hexpm", key(), &first).unwrap();
    static_repo::build(packages.path(), "hexpm", key(), &second).unwrap();

    assert_eq!(
        built.packages.keys().collect::<Vec<_>>(),
        ["erl_counter", "erl_ids", "mk_erl", "plain_ex"]
    );
    assert!(built.unresolved.is_empty(), "{:?}", built.unresolved);
    let a = files(&first);
    assert_eq!(a, files(&second), "two builds of the same inputs differ");
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        [
            "names",
            "packages/erl_counter",
            "packages/erl_ids",
            "packages/mk_erl",
            "packages/plain_ex",
            "public_key",
            "tarballs/erl_counter-1.0.0.tar",
            "tarballs/erl_ids-1.0.0.tar",
            "tarballs/mk_erl-1.0.0.tar",
            "tarballs/plain_ex-1.0.0.tar",
            "versions",
        ]
    );

    let report = static_repo::verify(&first, &key().public_key(), None);
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(
        (report.repository.as_str(), report.packages, report.releases),
        ("hexpm", 4, 4)
    );

    // The registry record says what the tarball is and what it needs.
    let record = decode_package(
        &a["packages/erl_ids"],
        &key().public_key(),
        "hexpm",
        "erl_ids",
    )
    .unwrap();
    let release = &record.releases[0];
    assert_eq!(release.dependencies.len(), 1);
    assert_eq!(release.dependencies[0].package, "erl_counter");
    assert_eq!(release.dependencies[0].requirement, "~> 1.0");
    assert_eq!(
        release.dependencies[0].repository, None,
        "same repository is left out"
    );
    assert_eq!(
        release.outer_checksum.as_deref(),
        Some(precomp_proto::tarball::outer_checksum(&a["tarballs/erl_ids-1.0.0.tar"]).as_slice())
    );

    // Rebuilding over an existing repository replaces it.
    static_repo::build(packages.path(), "hexpm", key(), &first).unwrap();
    assert_eq!(files(&first), a);
}

#[test]
fn everything_written_is_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let packages = packages();
    let out = tempfile::tempdir().unwrap();
    let repo = out.path().join("repo");
    static_repo::build(packages.path(), "hexpm", key(), &repo).unwrap();
    // Temporary files start 0600 and temporary directories 0700, whatever the umask.
    let mut checked = 0;
    let mut stack = vec![repo.clone()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            assert_eq!(mode, static_repo::DIR_MODE, "{}", path.display());
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, static_repo::FILE_MODE, "{}", path.display());
        }
        checked += 1;
    }
    // The root, names, versions, public_key, two directories, four records, four tarballs.
    assert_eq!(checked, 14);
}

#[test]
fn every_tampered_file_is_named() {
    let packages = packages();
    let out = tempfile::tempdir().unwrap();
    let repo = out.path().join("repo");
    static_repo::build(packages.path(), "hexpm", key(), &repo).unwrap();
    let public = key().public_key();

    for (file, bytes) in files(&repo) {
        for position in [0, bytes.len() / 2, bytes.len() - 1] {
            let copy = tempfile::tempdir().unwrap();
            copy_dir(&repo, copy.path());
            let mut tampered = bytes.clone();
            tampered[position] ^= 0x20;
            std::fs::write(copy.path().join(&file), &tampered).unwrap();

            let report = static_repo::verify(copy.path(), &public, Some("hexpm"));
            assert!(
                report.failures.iter().any(|f| f.file == file),
                "flipping byte {position} of {file} was not reported: {:?}",
                report.failures
            );
        }
    }
}

#[test]
fn missing_and_unlisted_files_are_reported() {
    let packages = packages();
    let out = tempfile::tempdir().unwrap();
    let repo = out.path().join("repo");
    static_repo::build(packages.path(), "hexpm", key(), &repo).unwrap();
    let public = key().public_key();

    std::fs::remove_file(repo.join("tarballs/mk_erl-1.0.0.tar")).unwrap();
    std::fs::write(repo.join("tarballs/stray-0.1.0.tar"), b"stray").unwrap();
    std::fs::remove_file(repo.join("packages/plain_ex")).unwrap();
    let report = static_repo::verify(&repo, &public, None);
    let failures: Vec<String> = report.failures.iter().map(ToString::to_string).collect();
    let has = |file: &str, text: &str| {
        failures
            .iter()
            .any(|f| f.starts_with(&format!("{file}: ")) && f.contains(text))
    };
    assert!(has("tarballs/mk_erl-1.0.0.tar", "missing"), "{failures:#?}");
    assert!(
        has("tarballs/stray-0.1.0.tar", "no /packages record lists"),
        "{failures:#?}"
    );
    assert!(
        has("names", "\"plain_ex\", which has no /packages record"),
        "{failures:#?}"
    );
    assert!(
        has("versions", "\"plain_ex\", which has no /packages record"),
        "{failures:#?}"
    );
}

#[test]
fn the_wrong_key_or_name_fails_every_signed_file() {
    let packages = packages();
    let out = tempfile::tempdir().unwrap();
    let repo = out.path().join("repo");
    static_repo::build(packages.path(), "acme", key(), &repo).unwrap();

    let other = RepoSigningKey::generate(2048).unwrap().public_key();
    let report = static_repo::verify(&repo, &other, Some("acme"));
    let signature_failures: Vec<&str> = report
        .failures
        .iter()
        .filter(|f| f.check.starts_with("signature check failed"))
        .map(|f| f.file.as_str())
        .collect();
    assert_eq!(
        signature_failures,
        [
            "names",
            "packages/erl_counter",
            "packages/erl_ids",
            "packages/mk_erl",
            "packages/plain_ex",
            "versions"
        ]
    );
    assert!(report
        .failures
        .iter()
        .any(|f| f.file == "public_key" && f.check.contains("not the key given")));

    // Read as the repository a client expects, "hexpm", every origin check fails.
    let report = static_repo::verify(&repo, &key().public_key(), Some("hexpm"));
    let origin_failures = report
        .failures
        .iter()
        .filter(|f| f.check.starts_with("origin check failed"))
        .count();
    assert_eq!(origin_failures, 6, "{:?}", report.failures);
    // Without a name, the signed names file says which repository this is.
    assert!(static_repo::verify(&repo, &key().public_key(), None).ok());
}

#[test]
fn tarballs_are_included_byte_for_byte() {
    let packages = packages();
    let out = tempfile::tempdir().unwrap();
    let from_sources = out.path().join("from-sources");
    static_repo::build(packages.path(), "hexpm", key(), &from_sources).unwrap();

    // A second repository from nothing but the first one's tarballs is the same repository.
    let tars = tempfile::tempdir().unwrap();
    for (file, bytes) in files(&from_sources.join("tarballs")) {
        std::fs::write(tars.path().join(file), bytes).unwrap();
    }
    let from_tarballs = out.path().join("from-tarballs");
    static_repo::build(tars.path(), "hexpm", key(), &from_tarballs).unwrap();
    assert_eq!(files(&from_sources), files(&from_tarballs));

    // A damaged tarball is refused, naming it.
    let name = tars.path().join("erl_ids-1.0.0.tar");
    let mut bytes = std::fs::read(&name).unwrap();
    let i = bytes.len() - 700;
    bytes[i] ^= 0x01;
    std::fs::write(&name, bytes).unwrap();
    let err = static_repo::build(tars.path(), "hexpm", key(), &out.path().join("bad"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("erl_ids-1.0.0.tar"), "{err}");
    assert!(!out.path().join("bad").exists());
}

#[test]
fn refusals() {
    let packages = packages();
    let out = tempfile::tempdir().unwrap();

    // The same release twice.
    let built = out.path().join("repo");
    static_repo::build(packages.path(), "hexpm", key(), &built).unwrap();
    std::fs::copy(
        built.join("tarballs/erl_counter-1.0.0.tar"),
        packages.path().join("erl_counter-1.0.0.tar"),
    )
    .unwrap();
    let err =
        static_repo::build(packages.path(), "hexpm", key(), &out.path().join("dup")).unwrap_err();
    assert!(matches!(err, StaticRepoError::Duplicate { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("erl_counter@1.0.0") && text.contains("erl_counter-1.0.0.tar"),
        "{text}"
    );
    std::fs::remove_file(packages.path().join("erl_counter-1.0.0.tar")).unwrap();

    // An output directory that holds something else is never replaced.
    let precious = out.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("thesis.txt"), "four years").unwrap();
    let err = static_repo::build(packages.path(), "hexpm", key(), &precious).unwrap_err();
    assert!(matches!(err, StaticRepoError::OutNotARepo { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(precious.join("thesis.txt")).unwrap(),
        "four years"
    );

    // Nothing to publish.
    let empty = tempfile::tempdir().unwrap();
    let err = static_repo::build(empty.path(), "hexpm", key(), &out.path().join("e")).unwrap_err();
    assert!(matches!(err, StaticRepoError::Empty { .. }), "{err}");

    // A bad repository name.
    let err = static_repo::build(packages.path(), "a/b", key(), &out.path().join("n")).unwrap_err();
    assert!(matches!(err, StaticRepoError::RepoName { .. }), "{err}");

    // A requirement nothing in the repository satisfies is reported.
    std::fs::remove_dir_all(packages.path().join("erl_counter")).unwrap();
    let built = static_repo::build(packages.path(), "hexpm", key(), &out.path().join("u")).unwrap();
    assert_eq!(built.unresolved.len(), 1);
    assert!(
        built.unresolved[0].contains("erl_ids@1.0.0 requires erl_counter"),
        "{:?}",
        built.unresolved
    );

    // No staging directories are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
