//! `precomp toolchain`: the commands' contract, with real bwrap, the host toolchain and the
//! cached bookworm image (the store under `$PRECOMP_TOOLCHAIN_CACHE`, default
//! `/var/cache/precomp-test`, shared with the sandbox crate's tests; built there on first use).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{precomp_command, text};

fn precomp(data: &Path, args: &[&str]) -> Output {
    precomp_command()
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("run precomp")
}

fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("precomp-cli-toolchain-")
        .tempdir()
        .unwrap()
}

fn cache_dir() -> PathBuf {
    common::toolchain_cache()
}

#[test]
fn help_documents_the_toolchain_commands() {
    let data = data_dir();
    let help = text(&precomp(data.path(), &["toolchain", "--help"]));
    for word in ["build", "list", "verify", "run"] {
        assert!(help.contains(word), "toolchain --help lacks {word}: {help}");
    }
    let help = text(&precomp(data.path(), &["toolchain", "build", "--help"]));
    for word in [
        "--suite",
        "bookworm",
        "trixie",
        "debootstrap",
        "--mirror",
        "--rebuild",
    ] {
        assert!(help.contains(word), "build --help lacks {word}: {help}");
    }
    let help = text(&precomp(data.path(), &["toolchain", "run", "--help"]));
    for word in ["--timeout", "--output", "--ro", "--env", "124", "/build"] {
        assert!(help.contains(word), "run --help lacks {word}: {help}");
    }
    assert!(text(&precomp(data.path(), &["toolchain", "list", "--help"])).contains("--json"));
}

#[test]
fn run_returns_the_commands_status_and_streams_its_output() {
    let data = data_dir();
    let out = precomp(
        data.path(),
        &[
            "toolchain",
            "run",
            "host",
            "--",
            "elixir",
            "-e",
            "IO.puts(System.version())",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1.14.0\n");

    let out = precomp(
        data.path(),
        &["toolchain", "run", "host", "--", "sh", "-c", "exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    // The output directory and environment options.
    let output = data.path().join("out");
    let out = precomp(
        data.path(),
        &[
            "toolchain",
            "run",
            "host",
            "--output",
            output.to_str().unwrap(),
            "--env",
            "MIX_ENV=prod",
            "--",
            "sh",
            "-c",
            "echo $MIX_ENV > /build/env; echo $PWD",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/build\n");
    assert_eq!(
        std::fs::read_to_string(output.join("env")).unwrap(),
        "prod\n"
    );
}

#[test]
fn run_times_out_with_124_and_a_message() {
    let data = data_dir();
    let started = std::time::Instant::now();
    let out = precomp(
        data.path(),
        &[
            "toolchain",
            "run",
            "host",
            "--timeout",
            "1",
            "--",
            "sh",
            "-c",
            "sleep 60 & sleep 60",
        ],
    );
    assert_eq!(out.status.code(), Some(124), "{}", text(&out));
    assert!(text(&out).contains("timed out after"), "{}", text(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn errors_say_what_to_do() {
    let data = data_dir();
    let out = precomp(
        data.path(),
        &["toolchain", "run", "no-such-toolchain", "--", "true"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("precomp toolchain list"),
        "{}",
        text(&out)
    );

    let out = precomp_command()
        .arg("--data")
        .arg(data.path())
        .args(["toolchain", "run", "host", "--", "true"])
        .env("PRECOMP_BWRAP", "/nonexistent/bwrap")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("apt-get install bubblewrap"),
        "{}",
        text(&out)
    );

    let out = precomp(data.path(), &["toolchain", "build", "--suite", "sid"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("bookworm and trixie"), "{}", text(&out));
}

#[test]
fn list_json_has_the_host_toolchain() {
    let data = data_dir();
    let out = precomp(data.path(), &["toolchain", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.trim_start().starts_with('['), "{json}");
    for field in [
        "\"id\": \"host\"",
        "\"kind\": \"host\"",
        "\"otp\": \"25\"",
        "\"elixir\": \"1.14.0\"",
        "\"suite\": \"bookworm\"",
        "\"digest\": \"",
    ] {
        assert!(json.contains(field), "{field} missing: {json}");
    }
    let out = precomp(data.path(), &["toolchain", "verify", "host"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).starts_with("ok: host digest "), "{}", text(&out));
}

#[test]
fn build_list_verify_and_run_a_bookworm_image() {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).unwrap();
    let out = precomp(&cache, &["toolchain", "build", "--suite", "bookworm"]);
    assert!(out.status.success(), "{}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(summary.contains("bookworm image: OTP 25"), "{summary}");
    assert!(summary.contains("Elixir 1.14.0"), "{summary}");
    let id = summary.split_whitespace().next().unwrap().to_string();
    assert_eq!(id.len(), 12, "{summary}");

    let out = precomp(&cache, &["toolchain", "list", "--json"]);
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains(&format!("\"id\": \"{id}\"")), "{json}");

    let out = precomp(&cache, &["toolchain", "verify", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("ok: {id} digest")),
        "{}",
        text(&out)
    );

    let out = precomp(
        &cache,
        &[
            "toolchain",
            "run",
            &id,
            "--",
            "erl",
            "-noshell",
            "-eval",
            "io:format(\"~s~n\", [erlang:system_info(otp_release)]), halt().",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "25\n");
}

/// A data directory the sandbox user cannot reach (0700, like one under /root) is refused
/// before any debootstrap, naming the directory and the fix.
#[test]
fn build_refuses_a_store_the_sandbox_cannot_reach_before_debootstrap() {
    use std::os::unix::fs::PermissionsExt;
    let data = data_dir();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let started = std::time::Instant::now();
    let output = precomp(data.path(), &["toolchain", "build", "--suite", "bookworm"]);
    let took = started.elapsed();
    assert!(!output.status.success(), "{}", text(&output));
    let message = text(&output);
    assert!(
        message.contains("cannot be read by the sandbox user")
            && message.contains(&data.path().display().to_string()),
        "{message}"
    );
    assert!(
        took < std::time::Duration::from_secs(10),
        "took {took:?}: {message}"
    );
    // Nothing was staged.
    let staged: Vec<_> = walk(data.path())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".staging-")
        })
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

/// A runner killed with -9 at any moment of a sandbox's start leaves nothing that outlives
/// it, once what names its directory is cleaned up as a sweep does
/// (`precomp_sandbox::kill_leftovers`): bwrap dies with its runner from its first
/// instruction, and bwrap's init dies with bwrap — except an init bwrap never released,
/// which only the cleanup ends (sandbox/src/leftovers.rs). Each round kills the runner half a
/// millisecond later after its start. The windows are microseconds wide: on an idle machine no
/// round hit one (the count printed), under load they were seen; the test holds either way.
#[test]
fn a_runner_killed_as_its_sandbox_starts_leaves_nothing_once_cleaned_up() {
    let data = data_dir();
    let marker = format!("7{}.5", std::process::id() % 100_000);
    let mut survived_the_runner = 0;
    for delay_us in (0..80).map(|i| i * 500) {
        let delay_ms = delay_us as f64 / 1000.0;
        // The runner's temporary directories (its own, and the one detecting the host
        // toolchain uses) under one the test removes: a killed runner cannot.
        let tmp = precomp_sandbox::scratch_dir("precomp-orphan-test-").unwrap();
        let output = tmp.path().join("output");
        let mut runner = precomp_command()
            .env("TMPDIR", tmp.path())
            .arg("--data")
            .arg(data.path())
            .args(["toolchain", "run", "host", "--output"])
            .arg(&output)
            .args(["--", "sleep", &marker])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(delay_us));
        runner.kill().unwrap(); // SIGKILL
        runner.wait().unwrap();
        // What dies with the runner dies within moments.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !naming(tmp.path()).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if !naming(tmp.path()).is_empty() {
            survived_the_runner += 1;
        }
        precomp_sandbox::kill_leftovers(tmp.path());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let left = naming(tmp.path());
            if left.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "killed after {delay_ms} ms, left running: {left:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let sleepers = naming(Path::new(&marker));
        assert!(sleepers.is_empty(), "after {delay_ms} ms: {sleepers:?}");
    }
    eprintln!("rounds where a process outlived its runner until cleaned up: {survived_the_runner}");
}

/// Command lines of the processes with an argument that is `path`, under it, or (for a
/// bare word like the sleep marker) equal to it.
fn naming(path: &Path) -> Vec<String> {
    let path = path.to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).to_string();
        if cmdline
            .split('\0')
            .any(|arg| arg == path || arg.starts_with(&format!("{path}/")))
        {
            found.push(cmdline.replace('\0', " "));
        }
    }
    found
}
