//! Shared by the sandbox's integration tests: real bwrap, real toolchain images.
//!
//! Images come from `precomp_testkit::toolchain` (re-exported here): the store under
//! `$PRECOMP_TOOLCHAIN_CACHE` (default `/var/cache/precomp-test`) shared by every test, each
//! image built there by whichever test needs it first (root, debootstrap, the Debian mirror).

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use precomp_sandbox::{Limits, Outcome, Root, Sandbox, Spec};
#[allow(unused_imports)] // containment.rs needs no image
pub use precomp_testkit::toolchain::{image, toolchain_cache, toolchain_store};

pub fn sandbox() -> Sandbox {
    Sandbox::new().expect("bwrap: install it with `apt-get install bubblewrap`")
}

/// A directory the sandbox user can reach (tempfile makes them 0700).
pub fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("precomp-sandbox-test-")
        .tempdir()
        .unwrap();
    chmod(dir.path(), 0o755);
    dir
}

pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The build policy with tight limits: tests must never take the machine down.
pub fn spec(root: &Root, out: &Path, command: &[&str]) -> Spec {
    let mut spec = Spec::build(root.clone(), out, command.iter().copied());
    spec.limits = Limits {
        wall_time: Duration::from_secs(60),
        memory_bytes: 1 << 30,
        processes: 256,
        file_size_bytes: 64 << 20,
        output_bytes: 128 << 20,
        tmp_bytes: 64 << 20,
        ..Limits::build()
    };
    spec
}

pub fn sh(root: &Root, out: &Path, script: &str) -> Outcome {
    sandbox()
        .run(&spec(root, out, &["sh", "-c", script]))
        .expect("sandbox runs")
}

/// A TCP connection from inside to a listener on the host's loopback fails (and succeeds from
/// the host, so the check means something); name resolution fails; only `lo` exists.
pub fn check_no_network(root: &Root) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the host reaches its listener");
    let (_accepted, _) = listener.accept().expect("the host's connection arrives");

    let out = open_dir();
    let tcp = sh(
        root,
        out.path(),
        &format!("exec bash -c 'echo hello > /dev/tcp/127.0.0.1/{port}'"),
    );
    assert_ne!(tcp.status, precomp_sandbox::Status::Exited(0), "{tcp:?}");
    assert!(
        tcp.stderr.text().contains("Connection refused"),
        "{}",
        tcp.stderr.text()
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        listener.accept().is_err(),
        "a connection from the sandbox reached the host's listener"
    );

    let dns = sh(root, out.path(), "getent hosts deb.debian.org");
    assert_eq!(dns.status, precomp_sandbox::Status::Exited(2), "{dns:?}");
    assert!(dns.stdout.text().is_empty(), "{}", dns.stdout.text());

    let links = sh(root, out.path(), "cat /proc/net/dev");
    let interfaces: Vec<String> = links
        .stdout
        .text()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_string()))
        .collect();
    assert_eq!(interfaces, ["lo"], "{}", links.stdout.text());
}

/// A key file planted in the data directory (even world-readable), the host's /root and
/// /etc/shadow, and the host's processes are out of reach.
pub fn check_secrets_unreachable(root: &Root) {
    let data = open_dir();
    let keys = data.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    chmod(&keys, 0o755);
    let key = keys.join("signing-key.pem");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nsecret\n").unwrap();
    chmod(&key, 0o644);
    assert!(std::fs::read_to_string(&key).unwrap().contains("secret"));

    let out = data.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let script = format!(
        "cat {key}; echo key=$?; ls {data}; echo data=$?; ls -a /root; echo root=$?; \
         cat /etc/shadow; echo shadow=$?; ls /proc | grep -cx '[0-9]*'",
        key = key.display(),
        data = data.path().display()
    );
    let outcome = sh(root, &out, &script);
    let text = outcome.stdout.text();
    assert!(!text.contains("secret"), "{text}");
    for probe in ["key", "data", "root", "shadow"] {
        let code = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{probe}=")))
            .unwrap_or_else(|| panic!("no {probe}= in {text}"));
        assert_ne!(
            code,
            "0",
            "{probe} was readable: {text}{}",
            outcome.stderr.text()
        );
    }
    // Its own pid namespace: a handful of processes, none of the host's.
    let processes: u32 = text.lines().last().unwrap().trim().parse().unwrap();
    assert!(processes <= 5, "{processes} processes visible: {text}");
}

/// Writes to /usr, /etc, / and a read-only source fail; the output directory is the only
/// writable place that reaches the host; /tmp is private.
pub fn check_writes_confined(root: &Root) {
    let out = open_dir();
    let src = open_dir();
    std::fs::write(src.path().join("mix.exs"), "defmodule X do end\n").unwrap();
    let marker = format!("precomp-private-{}", std::process::id());
    let script = format!(
        "for f in /usr/evil /usr/bin/evil /etc/evil /evil /src/evil /src/mix.exs /var/evil; do \
           if echo x > $f; then echo wrote $f; fi; done; \
         echo ok > /build/result; echo tmp > /tmp/{marker}; cat /src/mix.exs"
    );
    let spec = spec(root, out.path(), &["sh", "-c", &script]).source(src.path(), "/src");
    let outcome = sandbox().run(&spec).unwrap();
    assert!(outcome.status.success(), "{outcome:?}");
    assert!(
        !outcome.stdout.text().contains("wrote"),
        "{}",
        outcome.stdout.text()
    );
    assert!(outcome.stdout.text().contains("defmodule X"));
    assert_eq!(
        std::fs::read_to_string(out.path().join("result")).unwrap(),
        "ok\n"
    );
    assert_eq!(
        std::fs::read_to_string(src.path().join("mix.exs")).unwrap(),
        "defmodule X do end\n"
    );
    assert!(!src.path().join("evil").exists());
    assert!(!Path::new("/tmp").join(&marker).exists());
    if let Root::Image(dir) = root {
        assert!(!dir.join("usr/evil").exists() && !dir.join("etc/evil").exists());
    } else {
        assert!(!Path::new("/usr/evil").exists() && !Path::new("/etc/evil").exists());
    }
}
