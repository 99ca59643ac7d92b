//! `precomp repo build` as a new user runs it: the output served by a stock nginx whose
//! workers are another user, one line per warning, and the options for what a release
//! source cannot say.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{describe, ok, precomp, workspace};
use precomp_proto::metadata::PackageMetadata;
use precomp_proto::tarball;
use precomp_testkit::{copy_dir, Nginx, NginxOptions};

/// A new repository key in `dir`.
fn keygen(dir: &Path) -> PathBuf {
    let key = dir.join("repo-key.pem");
    ok(precomp(&["repo", "keygen", "--out", key.to_str().unwrap()]));
    key
}

/// A packages directory in `dir` holding copies of these fixture directories (`root/name`).
fn packages(dir: &Path, fixtures: &[(&str, &str)]) -> PathBuf {
    let packages = dir.join("packages");
    for (root, name) in fixtures {
        copy_dir(
            &workspace().join("tests/fixtures").join(root).join(name),
            &packages.join(name),
        );
    }
    packages
}

fn repo_build(packages: &Path, key: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "repo",
        "build",
        "--packages",
        packages.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    precomp(&args)
}

/// Every path under `root` (itself included), relative, with its permission bits.
fn modes(root: &Path) -> Vec<(String, bool, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let relative = path.strip_prefix(root).unwrap().display().to_string();
        out.push((relative, meta.is_dir(), meta.permissions().mode() & 0o7777));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

fn metadata_of(tarball_path: &Path) -> PackageMetadata {
    let bytes = std::fs::read(tarball_path).unwrap();
    PackageMetadata::parse(&tarball::read(&bytes).unwrap().metadata_config).unwrap()
}

#[test]
fn a_stock_nginx_with_workers_as_another_user_serves_every_file() {
    assert!(
        is_root(),
        "this test starts nginx as root so that its workers run as `nobody`, as a stock nginx runs them as www-data; run it as root (CI does)"
    );
    let scratch = tempfile::tempdir().unwrap();
    // The workers must be able to reach the repository: the test's own directory is 0700.
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = keygen(scratch.path());
    let packages = packages(
        scratch.path(),
        &[("packages", "erl_counter"), ("packages", "mk_erl")],
    );
    let repo = scratch.path().join("repo");
    ok(repo_build(&packages, &key, &repo, &[]));

    let modes = modes(&repo);
    assert!(modes.len() > 8, "{modes:?}");
    for (path, is_dir, mode) in &modes {
        let want = if *is_dir { 0o755 } else { 0o644 };
        assert_eq!(*mode, want, "{path:?} is {mode:o}");
    }

    let nginx = Nginx::start(&repo, &NginxOptions::new().workers_as("nobody", "nogroup"));
    let client = reqwest::blocking::Client::new();
    let get = |path: &str| {
        let response = client
            .get(format!("{}/{path}", nginx.url()))
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response.bytes().unwrap().to_vec(),
        )
    };
    for (path, _, _) in modes.iter().filter(|(_, is_dir, _)| !is_dir) {
        let (status, body) = get(path);
        assert_eq!(status, 200, "GET /{path}");
        assert_eq!(body, std::fs::read(repo.join(path)).unwrap(), "GET /{path}");
    }
    // The control: a file only its owner may read is refused, so the workers really are
    // another user and the 200s above are the modes' doing.
    let tarball = repo.join("tarballs/erl_counter-1.0.0.tar");
    std::fs::set_permissions(&tarball, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(get("tarballs/erl_counter-1.0.0.tar").0, 403);
}

/// Whether this process runs as root (the owner of /proc/self is its effective user).
fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[test]
fn each_warning_is_printed_once() {
    let scratch = tempfile::tempdir().unwrap();
    let key = keygen(scratch.path());
    // erl_ids requires erl_counter, which is not there.
    let packages = packages(scratch.path(), &[("packages", "erl_ids")]);
    let output = repo_build(&packages, &key, &scratch.path().join("repo"), &[]);
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("erl_ids@1.0.0 requires erl_counter"))
        .collect();
    assert_eq!(
        lines,
        ["warning: erl_ids@1.0.0 requires erl_counter ~> 1.0, which this repository does not contain"],
        "stderr: {stderr}"
    );
}

#[test]
fn what_a_release_source_cannot_say_is_given_by_directory() {
    let scratch = tempfile::tempdir().unwrap();
    let key = keygen(scratch.path());
    let packages = packages(
        scratch.path(),
        &[("sources", "git_vsn"), ("sources", "dual_erl")],
    );
    let repo = scratch.path().join("repo");

    // {vsn, "git"}: refused with what to do, nothing written.
    let output = repo_build(&packages, &key, &repo, &[]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("{vsn, \"git\"}") && stderr.contains("--package-version git_vsn="),
        "{stderr}"
    );
    assert!(!repo.exists());

    // Given, it builds; dual_erl is rebar3's, unless told otherwise.
    ok(repo_build(
        &packages,
        &key,
        &repo,
        &["--package-version", "git_vsn=0.5.0"],
    ));
    assert_eq!(
        metadata_of(&repo.join("tarballs/git_vsn-0.5.0.tar")).version,
        "0.5.0"
    );
    assert_eq!(
        metadata_of(&repo.join("tarballs/dual_erl-0.2.0.tar")).build_tools,
        ["rebar3"]
    );
    ok(repo_build(
        &packages,
        &key,
        &repo,
        &[
            "--package-version",
            "git_vsn=0.5.0",
            "--build-tool",
            "dual_erl=mix",
        ],
    ));
    assert_eq!(
        metadata_of(&repo.join("tarballs/dual_erl-0.2.0.tar")).build_tools,
        ["mix"]
    );

    // A directory that is not there, or a tool precomp does not know, is an error.
    let output = repo_build(
        &packages,
        &key,
        &repo,
        &[
            "--package-version",
            "git_vsn=0.5.0",
            "--build-tool",
            "dual_rel=mix",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("dual_rel")
            && stderr.contains("not a package source directory"),
        "{stderr}"
    );
    let output = repo_build(&packages, &key, &repo, &["--build-tool", "dual_erl=cargo"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("unknown build tool \"cargo\""),
        "{stderr}"
    );
}
