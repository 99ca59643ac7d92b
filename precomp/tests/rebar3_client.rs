//! rebar3, a real Hex client, reads what `precomp repo build` writes: a signed repository of
//! our fixture packages served by nginx on loopback, fetched with signature and origin checks
//! on. Any flipped byte in a registry file or tarball makes rebar3 refuse, and
//! `precomp repo verify` names the file.

mod common;

use common::*;
use precomp_testkit::{copy_dir, gunzip, gzip};
use std::path::{Path, PathBuf};
use std::process::Output;

use precomp_proto::registry::Signed;
use precomp_testkit::Nginx;
use prost::Message;

/// A signed repository of the fixture packages, and its keys.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn build() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        keygen(&key);
        let packages = workspace().join("tests/fixtures/packages");
        let out = repo_build(&packages, &key, "hexpm", &dir.path().join("repo"));
        assert!(out.contains("erl_counter 1.0.0"), "{out}");
        assert!(out.contains("erl_ids 1.0.0"), "{out}");
        Repo { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn public_key(&self) -> PathBuf {
        self.dir.path().join("key.pem.pub")
    }

    /// A copy of the repository to tamper with.
    fn copy(&self) -> tempfile::TempDir {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&self.root(), copy.path());
        copy
    }

    fn verify(&self, dir: &Path) -> Output {
        precomp(&[
            "repo",
            "verify",
            dir.to_str().unwrap(),
            "--public-key",
            self.public_key().to_str().unwrap(),
        ])
    }
}

#[test]
fn rebar3_fetches_verified_packages_and_runs_them() {
    let repo = Repo::build();
    ok(repo.verify(&repo.root()));
    let nginx = Nginx::serve(&repo.root());
    let (output, scratch) = rebar3_compile(&nginx.url(), &repo.public_key());
    assert!(
        output.status.success(),
        "rebar3 failed: {}",
        describe(&output)
    );
    assert!(fetched(scratch.path(), "erl_ids"));
    assert!(fetched(scratch.path(), "erl_counter"));

    // The fetched packages load and run.
    assert_consumer_runs(&scratch.path().join("rebar3_app/_build/default/lib"));

    // Without the right key configured, rebar3 refuses the repository outright.
    let wrong = tempfile::tempdir().unwrap();
    let wrong_key = wrong.path().join("other.pem");
    ok(precomp(&[
        "repo",
        "keygen",
        "--out",
        wrong_key.to_str().unwrap(),
    ]));
    let (output, scratch) = rebar3_compile(&nginx.url(), &wrong.path().join("other.pem.pub"));
    assert!(
        !output.status.success(),
        "rebar3 accepted a repository signed by another key"
    );
    assert!(!fetched(scratch.path(), "erl_ids"));
}

/// Tampers with one file of a copy of the repository, then expects rebar3 to refuse it and
/// `precomp repo verify` to name the file and the failed check.
fn assert_tamper_refused(
    repo: &Repo,
    file: &str,
    check: &str,
    rebar3_says: &str,
    tamper: impl FnOnce(&mut Vec<u8>),
) {
    let copy = repo.copy();
    let path = copy.path().join(file);
    let mut bytes = std::fs::read(&path).unwrap();
    tamper(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();

    let verify = repo.verify(copy.path());
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        !verify.status.success(),
        "verify accepted tampered {file}: {stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("FAIL {file}: ")))
        .unwrap_or_else(|| panic!("verify did not name {file}:\n{stdout}"));
    assert!(line.contains(check), "expected {check:?} in {line:?}");

    let nginx = Nginx::serve(copy.path());
    let (output, scratch) = rebar3_compile(&nginx.url(), &repo.public_key());
    assert!(
        !output.status.success(),
        "rebar3 accepted tampered {file}: {}",
        describe(&output)
    );
    assert!(
        describe(&output).contains(rebar3_says),
        "rebar3 refused tampered {file}, but not saying {rebar3_says:?}: {}",
        describe(&output)
    );
    assert!(
        !fetched(scratch.path(), "erl_counter"),
        "tampered {file}: erl_counter was fetched"
    );
}

/// rebar3 3.19 reports both a bad signature and a failed origin check (hex_core's
/// `{error, unverified}`) with this sentence.
const REBAR3_UNVERIFIED: &str = "deprecated for security reasons";

#[test]
fn rebar3_refuses_tampered_registry_files() {
    let repo = Repo::build();

    // A byte of the signed payload, re-gzipped so only the signature can catch it.
    assert_tamper_refused(
        &repo,
        "packages/erl_counter",
        "signature check failed",
        REBAR3_UNVERIFIED,
        |b| {
            let mut signed = Signed::decode(gunzip(b).as_slice()).unwrap();
            signed.payload[4] ^= 0x01;
            *b = gzip(&signed.encode_to_vec());
        },
    );

    // A raw byte of the gzipped file.
    // rebar3 swallows the gunzip failure and reports the package as missing.
    assert_tamper_refused(
        &repo,
        "packages/erl_counter",
        "gunzip failed",
        "Package not found",
        |b| {
            let i = b.len() / 2;
            b[i] ^= 0x01;
        },
    );

    // A correctly signed record, but of another repository: only the origin check catches it.
    let other = build_repo_named(&repo, "acme");
    let acme_record = std::fs::read(other.path().join("repo/packages/erl_counter")).unwrap();
    assert_tamper_refused(
        &repo,
        "packages/erl_counter",
        "origin check failed",
        REBAR3_UNVERIFIED,
        |b| *b = acme_record,
    );
}

#[test]
fn rebar3_refuses_tampered_tarballs() {
    let repo = Repo::build();
    let file = "tarballs/erl_counter-1.0.0.tar";

    // A byte inside contents.tar.gz: the outer checksum no longer matches the signed record.
    assert_tamper_refused(
        &repo,
        file,
        "checksum check failed",
        "inner_checksum_mismatch",
        |b| {
            let gzip_start = b.windows(3).position(|w| w == [0x1f, 0x8b, 0x08]).unwrap();
            b[gzip_start + 40] ^= 0x01;
        },
    );

    // A byte of a tar header.
    assert_tamper_refused(&repo, file, "checksum check failed", "bad_header", |b| {
        b[100] ^= 0x01;
    });

    // A well-formed tarball of different sources, internally consistent: only the comparison
    // with the outer checksum in the signed /packages record can catch it.
    let sources = tempfile::tempdir().unwrap();
    let package = sources.path().join("erl_counter");
    copy_dir(
        &workspace().join("tests/fixtures/packages/erl_counter"),
        &package,
    );
    let module = package.join("src/erl_counter.erl");
    let mut text = std::fs::read_to_string(&module).unwrap();
    text.push_str("\n%% A change the registry does not know about.\n");
    std::fs::write(&module, text).unwrap();
    let substitute = tempfile::tempdir().unwrap();
    repo_build(
        sources.path(),
        &repo.dir.path().join("key.pem"),
        "hexpm",
        &substitute.path().join("repo"),
    );
    let forged = std::fs::read(substitute.path().join("repo").join(file)).unwrap();
    assert_tamper_refused(
        &repo,
        file,
        "checksum check failed",
        "bad_registry_checksum",
        |b| *b = forged,
    );
}

/// The fixture repository again, signed by the same key but named `name`.
fn build_repo_named(repo: &Repo, name: &str) -> tempfile::TempDir {
    let other = tempfile::tempdir().unwrap();
    repo_build(
        &workspace().join("tests/fixtures/packages"),
        &repo.dir.path().join("key.pem"),
        name,
        &other.path().join("repo"),
    );
    other
}
