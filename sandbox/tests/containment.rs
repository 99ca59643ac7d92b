//! Containment and limits, with real bwrap on the host toolchain (fast). The same containment
//! checks run on a real image in `images.rs`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::*;
use precomp_sandbox::{build_env, Enforcement, Root, Status};

#[test]
fn no_network_inside() {
    check_no_network(&Root::Host);
}

#[test]
fn signing_keys_root_and_host_processes_are_out_of_reach() {
    check_secrets_unreachable(&Root::Host);
}

#[test]
fn only_the_output_directory_is_writable() {
    check_writes_confined(&Root::Host);
}

#[test]
fn environment_working_path_and_hostname_are_fixed() {
    let out = open_dir();
    let env = sandbox()
        .run(&spec(&Root::Host, out.path(), &["env", "-0"]))
        .unwrap();
    assert!(env.status.success(), "{env:?}");
    let found: BTreeMap<String, String> = env
        .stdout
        .text()
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    // Exactly the policy's variables (and PWD, which bwrap sets to the working directory):
    // nothing of this test process (CARGO_*, HOME, USER...).
    let mut expected = build_env(precomp_sandbox::DEFAULT_SOURCE_DATE_EPOCH, true);
    expected.insert("PWD".into(), "/build".into());
    assert_eq!(found, expected);

    let where_ = sh(
        &Root::Host,
        out.path(),
        "pwd; hostname; echo $HOME; test -w $HOME && echo home-writable",
    );
    assert_eq!(
        where_.stdout.text(),
        "/build\nprecomp\n/tmp/home\nhome-writable\n",
        "{where_:?}"
    );
}

#[test]
fn no_privileges_and_an_unprivileged_host_uid() {
    let out = open_dir();
    let marker = format!("7{}.25", std::process::id() % 1000);
    let watcher = {
        let marker = marker.clone();
        std::thread::spawn(move || {
            // Find the sandboxed `sleep` from the host and read its host uid.
            for _ in 0..500 {
                for (pid, cmdline) in processes() {
                    if cmdline.contains(&marker) && cmdline.starts_with("sleep") {
                        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                            .unwrap_or_default();
                        return status
                            .lines()
                            .find_map(|l| l.strip_prefix("Uid:"))
                            .map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>());
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        })
    };
    let outcome = sh(
        &Root::Host,
        out.path(),
        &format!(
            "grep -E '^(NoNewPrivs|CapEff|CapPrm|CapBnd|CapAmb):' /proc/self/status; \
             unshare --user true 2>/dev/null && echo nested-userns; \
             sleep {marker} & sleep 0.5; kill $!"
        ),
    );
    let text = outcome.stdout.text();
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    for cap in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert!(
            text.contains(&format!("{cap}:\t0000000000000000")),
            "{cap}: {text}"
        );
    }
    assert!(!text.contains("nested-userns"), "{text}");
    let uids = watcher.join().unwrap().expect("saw the sandboxed process");
    let expected = sandbox().identity().uid.to_string();
    assert!(uids.iter().all(|u| *u == expected), "host uids {uids:?}");
    assert_ne!(expected, "0");
}

#[test]
fn exit_status_is_the_commands() {
    let out = open_dir();
    assert_eq!(
        sh(&Root::Host, out.path(), "exit 7").status,
        Status::Exited(7)
    );
    assert_eq!(
        sh(&Root::Host, out.path(), "kill -9 $$").status,
        Status::Exited(137)
    );
    let missing = sandbox()
        .run(&spec(&Root::Host, out.path(), &["no-such-command-here"]))
        .unwrap_err();
    assert!(
        matches!(missing, precomp_sandbox::Error::Exec { .. }),
        "{missing:?}"
    );
    assert!(
        missing.to_string().contains("no-such-command-here"),
        "{missing}"
    );
}

#[test]
fn descriptors_of_the_caller_do_not_leak_in() {
    // A descriptor this process leaks (not close-on-exec), as a careless parent would.
    let file = std::fs::File::open("/etc/hostname").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: clearing FD_CLOEXEC on our own descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let out = open_dir();
    let outcome = sh(&Root::Host, out.path(), "ls /proc/$$/fd");
    let fds: Vec<String> = outcome.stdout.text().lines().map(String::from).collect();
    assert_eq!(fds, ["0", "1", "2"], "leaked fd {fd}: {fds:?}");
    drop(file);
}

#[test]
fn a_sleeper_past_its_limit_is_killed_with_its_children() {
    let out = open_dir();
    let marker = format!("3{}.5", std::process::id() % 100_000);
    let mut spec = spec(
        &Root::Host,
        out.path(),
        &[
            "sh",
            "-c",
            // Children, a grandchild in its own session, and a daemonised one.
            &format!(
                "sleep {m} & sleep {m} & (setsid sleep {m} &) ; \
                 sh -c 'trap \"\" TERM HUP; sleep {m}' & sleep {m}",
                m = marker
            ),
        ],
    );
    spec.limits.wall_time = Duration::from_secs(2);
    let seen = {
        let marker = marker.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(1800) {
                most = most.max(sleepers(&marker));
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        })
    };
    let started = Instant::now();
    let outcome = sandbox().run(&spec).unwrap();
    let elapsed = started.elapsed();
    // Checked at once: nothing may be left to die later.
    let left = sleepers(&marker);
    assert!(
        matches!(outcome.status, Status::TimedOut(_)),
        "{:?}",
        outcome.status
    );
    assert_eq!(outcome.status.exit_code(), 124);
    assert!(outcome.status.to_string().contains("timed out"));
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
    assert_eq!(left, 0, "sandbox processes survived the time-out");
    assert!(seen.join().unwrap() >= 5, "the sleepers never ran");
}

#[test]
fn a_fork_bomb_is_stopped_by_the_process_limit() {
    let out = open_dir();
    // Bounded even if the limit failed: at most 400 sleeping processes for 20 s.
    let mut spec = spec(
        &Root::Host,
        out.path(),
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo $i; sleep 20 & done; wait",
        ],
    );
    spec.limits.processes = 32;
    spec.limits.wall_time = Duration::from_secs(60);
    let outcome = sandbox().run(&spec).unwrap();
    let started: u64 = outcome
        .stdout
        .text()
        .lines()
        .last()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    assert!(
        started > 5 && started <= 32,
        "{started} forks with a limit of 32: {outcome:?}"
    );
    assert!(!outcome.status.success(), "{outcome:?}");
    assert!(
        !matches!(outcome.status, Status::TimedOut(_)),
        "{outcome:?}"
    );
    let refused = outcome.stderr.text().contains("Cannot fork") || outcome.pids_refused > 0;
    assert!(refused, "{}", outcome.stderr.text());
    assert!(
        outcome.elapsed < Duration::from_secs(15),
        "{:?}",
        outcome.elapsed
    );
}

#[test]
fn a_memory_hog_is_stopped_by_the_memory_limit() {
    let out = open_dir();
    // `tail -n 1` keeps the current line in memory: 1 GiB without a newline needs 1 GiB. Even
    // if the limit failed this stays at 1 GiB.
    let mut spec = spec(
        &Root::Host,
        out.path(),
        &[
            "sh",
            "-c",
            "head -c 1073741824 /dev/zero | tail -n 1 > /dev/null",
        ],
    );
    spec.limits.memory_bytes = 256 << 20;
    let outcome = sandbox().run(&spec).unwrap();
    assert!(!outcome.status.success(), "{outcome:?}");
    assert!(
        !matches!(outcome.status, Status::TimedOut(_)),
        "{outcome:?}"
    );
    assert!(
        outcome.max_rss_bytes < 320 << 20,
        "peak RSS {} MiB over a 256 MiB limit",
        outcome.max_rss_bytes >> 20
    );
    // RLIMIT_DATA makes the allocation fail; a cgroup's memory.max may OOM-kill it first.
    let stopped = outcome.stderr.text().contains("memory exhausted") || outcome.oom_kills > 0;
    assert!(stopped, "{outcome:?}");
    if let Enforcement::Rlimits { .. } = outcome.enforcement {
        assert_eq!(outcome.oom_kills, 0);
    }

    // The same with room enough succeeds: the limit, not the command, stopped it.
    let mut roomy = spec.clone();
    roomy.limits.memory_bytes = 2 << 30;
    roomy.command = [
        "sh",
        "-c",
        "head -c 67108864 /dev/zero | tail -n 1 > /dev/null",
    ]
    .map(Into::into)
    .to_vec();
    let ok = sandbox().run(&roomy).unwrap();
    assert!(ok.status.success(), "{ok:?}");
}

#[test]
fn output_is_bounded_per_file_in_total_and_on_stdout() {
    // One file past RLIMIT_FSIZE: the writer gets SIGXFSZ, the file stops at the limit.
    let out = open_dir();
    let mut big = spec(
        &Root::Host,
        out.path(),
        &["sh", "-c", "head -c 16777216 /dev/zero > /build/big"],
    );
    big.limits.file_size_bytes = 4 << 20;
    let outcome = sandbox().run(&big).unwrap();
    assert_eq!(
        outcome.status,
        Status::Exited(128 + libc::SIGXFSZ),
        "{outcome:?}"
    );
    assert_eq!(
        std::fs::metadata(out.path().join("big")).unwrap().len(),
        4 << 20
    );

    // Many files under that limit: the total is watched and the sandbox killed.
    let out = open_dir();
    let mut many = spec(
        &Root::Host,
        out.path(),
        &[
            "sh",
            "-c",
            "for i in $(seq 1 40); do head -c 3145728 /dev/zero > /build/f$i; sleep 0.1; done",
        ],
    );
    many.limits.output_bytes = 12 << 20;
    let outcome = sandbox().run(&many).unwrap();
    assert!(
        matches!(outcome.status, Status::OutputTooLarge { .. }),
        "{outcome:?}"
    );
    assert!(!out.path().join("f40").exists());
    assert!(outcome.output_bytes < 40 << 20, "{}", outcome.output_bytes);

    // stdout: the first and last halves kept, the total counted.
    let out = open_dir();
    let mut loud = spec(
        &Root::Host,
        out.path(),
        &[
            "sh",
            "-c",
            "echo BEGIN; head -c 5242880 /dev/zero | tr '\\0' a; echo; echo END",
        ],
    );
    loud.limits.captured_bytes = 64 << 10;
    let outcome = sandbox().run(&loud).unwrap();
    assert!(outcome.status.success());
    assert!(outcome.stdout.truncated());
    assert_eq!(outcome.stdout.total, 5 + 1 + (5 << 20) + 1 + 4);
    assert!(outcome.stdout.bytes.len() < (64 << 10) + 100);
    let text = outcome.stdout.text();
    assert!(text.starts_with("BEGIN\naaa") && text.ends_with("aaa\nEND\n"));
    assert!(text.contains("bytes dropped"));
}

#[test]
fn set_id_bits_are_cleared_in_the_output() {
    let out = open_dir();
    let outcome = sh(
        &Root::Host,
        out.path(),
        "cp /bin/true /build/tool && chmod 6755 /build/tool && stat -c %a /build/tool",
    );
    assert_eq!(outcome.stdout.text(), "6755\n", "{outcome:?}");
    let mode = std::fs::metadata(out.path().join("tool")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755);
}

#[test]
fn paths_the_sandbox_user_cannot_reach_are_refused_clearly() {
    let private = tempfile::tempdir().unwrap();
    chmod(private.path(), 0o700);
    let out = private.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let result = sandbox().run(&spec(&Root::Host, &out, &["true"]));
    if sandbox().identity().uid == nix_uid() {
        // Not root (CI is): the sandbox runs as us and reaches what we reach.
        let outcome = result.expect("the sandbox runs as the caller");
        assert!(outcome.status.success(), "{outcome:?}");
    } else {
        let message = result.unwrap_err().to_string();
        assert!(message.contains("is not searchable"), "{message}");
        assert!(message.contains("chmod o+x"), "{message}");
    }
}

fn nix_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

fn processes() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            out.push((pid, text));
        }
    }
    out
}

fn sleepers(marker: &str) -> usize {
    processes()
        .iter()
        .filter(|(_, cmdline)| cmdline.starts_with("sleep") && cmdline.contains(marker))
        .count()
}
