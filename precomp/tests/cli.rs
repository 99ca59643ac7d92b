//! The CLI's contract: documented commands, clear errors, exit codes, keys never overwritten.

mod common;

use std::process::Command;

use common::{precomp, text};

#[test]
fn help_documents_commands_and_global_options() {
    let help = text(&precomp(&["--help"]));
    for word in ["repo", "demo", "--data", "PRECOMP_DATA", "--log"] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
    let help = text(&precomp(&["repo", "build", "--help"]));
    for word in [
        "--packages",
        "--key",
        "--name",
        "--out",
        "mix.exs",
        "app.src",
    ] {
        assert!(
            help.contains(word),
            "repo build --help lacks {word}: {help}"
        );
    }
    let help = text(&precomp(&["repo", "verify", "--help"]));
    assert!(help.contains("--public-key"), "{help}");
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let out = precomp(&["repo", "keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let public = std::fs::read_to_string(dir.path().join("k.pem.pub")).unwrap();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "private key is readable by others: {mode:o}"
        );
    }

    let again = precomp(&["repo", "keygen", "--out", key.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), pem);

    let small = precomp(&[
        "repo",
        "keygen",
        "--out",
        dir.path().join("s.pem").to_str().unwrap(),
        "--bits",
        "1024",
    ]);
    assert!(!small.status.success());
    assert!(text(&small).contains("at least 2048"), "{}", text(&small));
}

#[test]
fn errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let out = precomp(&[
        "repo",
        "build",
        "--packages",
        dir.path().to_str().unwrap(),
        "--key",
        missing.to_str().unwrap(),
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("missing.pem"), "{}", text(&out));

    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    let out = precomp(&[
        "repo",
        "verify",
        dir.path().to_str().unwrap(),
        "--public-key",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not an RSA public key"),
        "{}",
        text(&out)
    );

    // An empty directory is not a repository: every index file is reported missing.
    let key = dir.path().join("k.pem");
    assert!(precomp(&["repo", "keygen", "--out", key.to_str().unwrap()])
        .status
        .success());
    let empty = tempfile::tempdir().unwrap();
    let out = precomp(&[
        "repo",
        "verify",
        empty.path().to_str().unwrap(),
        "--public-key",
        dir.path().join("k.pem.pub").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAIL names: cannot read"), "{stdout}");
    assert!(stdout.contains("FAIL versions: cannot read"), "{stdout}");
}

/// The README's first command: the demo runs the whole loop that exists today.
#[test]
fn demo_runs_the_main_job() {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_precomp"))
        .args(["--data", data.path().to_str().unwrap(), "demo"])
        .current_dir(workspace)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout.contains("16 releases"), "{stdout}");
    assert!(stdout.contains("identical to upstream, cold"), "{stdout}");
    assert!(stdout.contains("identical to upstream, warm"), "{stdout}");
    assert!(
        stdout.contains("fetched and compiled erl_counter, erl_ids, rebar3_app through the mirror"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"rebar3_app:run() = [<<"order-1">>,<<"order-2">>,<<"order-3">>]"#),
        "{stdout}"
    );
    // The mirror stored what it served.
    assert!(data.path().join("demo/mirror/mirror.db").exists());
    // The Mix loop: 7 packages built and published, 6 installed for dev (plain_ex is
    // test-only), none compiled by mix, the sample ran on them.
    assert!(
        stdout.contains("build    7 packages of the sample's lock built in the sandbox"),
        "{stdout}"
    );
    // Builder + auditor: before the audit, a fetch that requires one auditor installs
    // nothing; the auditor rebuilds all 7 builds and every one matches; then the same fetch
    // installs them all, each countersigned by the auditor.
    assert!(
        stdout.contains(
            "policy   before any audit, precomp fetch --require-auditors 1 installs nothing: \
             6 missed, not yet audited"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("rebuilt the 7 published builds from source: 7 matched, 0 mismatched,"),
        "{stdout}"
    );
    let fetch = stdout
        .lines()
        .find(|l| l.starts_with("fetch    precomp fetch installed"))
        .unwrap_or_else(|| panic!("no precomp fetch line in {stdout}"));
    assert!(
        fetch.starts_with("fetch    precomp fetch installed 6 dependencies, 0 missed, "),
        "{fetch}"
    );
    assert!(
        fetch.contains(
            " bytes, each signed by the builder and countersigned by the auditor \
             (--require-auditors 1)"
        ),
        "{fetch}"
    );
    // The auditor worked in its own data directory, with its own key.
    assert!(data.path().join("demo/auditor").is_dir());
    assert!(data.path().join("demo/keys/demo-auditor.key").is_file());
    assert!(
        stdout.contains("mix compile after precomp fetch compiled none of the dependencies"),
        "{stdout}"
    );
    for value in ["greeting: \"howdy, ci?\"", "nif: 42", "shapes: \"2.0.0\""] {
        assert!(stdout.contains(value), "{value} not in {stdout}");
    }
    assert!(stdout.contains("compare  mix deps.compile"), "{stdout}");
}

#[test]
fn keys_generate_writes_an_ed25519_pair_openssl_reads() {
    let dir = tempfile::tempdir().unwrap();
    let out = precomp(&[
        "keys",
        "generate",
        "--name",
        "builder-1",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("ed25519:"), "{stdout}");
    let private = dir.path().join("builder-1.key");
    let public = std::fs::read_to_string(dir.path().join("builder-1.pub")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "private key is readable by others: {mode:o}"
        );
    }
    // OpenSSL derives the same public key from the private key.
    let derived = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .output()
        .unwrap();
    assert!(derived.status.success(), "{}", text(&derived));
    assert_eq!(String::from_utf8_lossy(&derived.stdout), public);

    let again = precomp(&[
        "keys",
        "generate",
        "--name",
        "builder-1",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    let bad = precomp(&[
        "keys",
        "generate",
        "--name",
        "../x",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("must be letters"), "{}", text(&bad));
}
