//! Real toolchain images: debootstrap'd bookworm and trixie roots (built once per machine in
//! the shared store, see `precomp_testkit::toolchain`), the host toolchain, digests and
//! verification.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use precomp_sandbox::toolchain::{self, ImageRequest, Kind, Store, Suite, Toolchain};
use precomp_sandbox::{Root, Status};

/// Runs erl, elixir, rebar3 and the C compiler in the sandbox on `root`.
fn check_tools(root: &Root, otp: &str, elixir: &str) {
    let out = open_dir();
    let erl = sandbox()
        .run(&spec(
            root,
            out.path(),
            &[
                "erl",
                "-noshell",
                "-eval",
                "io:format(\"~s~n\", [erlang:system_info(otp_release)]), halt().",
            ],
        ))
        .unwrap();
    assert_eq!(erl.stdout.text(), format!("{otp}\n"), "{erl:?}");
    let ex = sandbox()
        .run(&spec(root, out.path(), &["elixir", "--version"]))
        .unwrap();
    let text = ex.stdout.text();
    assert!(text.contains(&format!("Erlang/OTP {otp} ")), "{ex:?}");
    assert!(text.contains(&format!("Elixir {elixir} ")), "{ex:?}");
    let cc = sh(
        root,
        out.path(),
        "printf 'int main(void){return 42;}\\n' > /build/a.c && cc -o /build/a /build/a.c && /build/a",
    );
    assert_eq!(cc.status, Status::Exited(42), "{cc:?}");
}

fn check_record(t: &Toolchain, suite: &str, otp: &str, otp_full: &str, elixir: &str, rebar3: &str) {
    assert_eq!(t.kind, Kind::Image);
    assert_eq!(t.suite, suite);
    assert_eq!(t.otp, otp);
    assert!(t.otp_full.starts_with(otp_full), "{t:?}");
    assert_eq!(t.elixir, elixir);
    assert!(t.rebar3.starts_with(rebar3), "{t:?}");
    assert_eq!(t.id, t.digest[..12]);
    assert_eq!(t.digest.len(), 64);
    for package in toolchain::DEFAULT_PACKAGES {
        assert!(
            t.packages.contains_key(*package),
            "{package} missing: {t:?}"
        );
    }
    let arch = std::process::Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .unwrap();
    assert_eq!(t.architecture, String::from_utf8_lossy(&arch.stdout).trim());
}

#[test]
fn bookworm_image_has_otp_25_and_elixir_1_14() {
    let image = image(Suite::Bookworm);
    check_record(&image, "bookworm", "25", "25.2", "1.14.0", "3.19");
    check_tools(&image.sandbox_root(), "25", "1.14.0");
}

#[test]
fn trixie_image_has_otp_27_and_elixir_1_18_3() {
    let image = image(Suite::Trixie);
    check_record(&image, "trixie", "27", "27.", "1.18.3", "3.24");
    check_tools(&image.sandbox_root(), "27", "1.18.3");
}

#[test]
fn host_toolchain_has_otp_25_and_elixir_1_14() {
    let data = open_dir();
    let store = Store::open(data.path()).unwrap();
    let host = store.host(&sandbox()).unwrap();
    assert_eq!(host.id, "host");
    assert_eq!(host.kind, Kind::Host);
    assert_eq!(host.otp, "25");
    assert_eq!(host.elixir, "1.14.0");
    // Its digest is the installed package list's.
    assert_eq!(host.digest, toolchain::host_packages().unwrap().0);
    assert_eq!(store.resolve("host", &sandbox()).unwrap(), host);
    assert!(store.verify(&host).unwrap().ok());
    check_tools(&Root::Host, "25", "1.14.0");
}

#[test]
fn containment_holds_on_an_image() {
    let root = image(Suite::Bookworm).sandbox_root();
    check_no_network(&root);
    check_secrets_unreachable(&root);
    check_writes_confined(&root);
}

#[test]
fn images_carry_nothing_of_the_machine_or_day_that_built_them() {
    let image = image(Suite::Bookworm);
    let root = image.root.clone().unwrap();
    for gone in [
        "etc/resolv.conf",
        "etc/hostname",
        "var/lib/dbus/machine-id",
        "etc/shadow-",
    ] {
        assert!(!root.join(gone).exists(), "{gone} is in the image");
    }
    assert_eq!(std::fs::read(root.join("etc/machine-id")).unwrap(), b"");
    for dir in [
        "var/log",
        "var/lib/apt/lists",
        "var/cache/apt",
        "tmp",
        "dev",
        "run",
    ] {
        assert!(no_files(&root.join(dir)), "{dir} has files");
    }
    let shadow = std::fs::read_to_string(root.join("etc/shadow")).unwrap();
    for line in shadow.lines() {
        let day = line.split(':').nth(2).unwrap();
        assert!(day.is_empty() || day == "3652", "{line}");
    }
    assert_eq!(
        std::fs::read_to_string(root.join("etc/apt/sources.list")).unwrap(),
        "deb http://deb.debian.org/debian bookworm main\n"
    );
}

#[test]
fn building_the_same_image_twice_gives_the_same_digest() {
    // An independent build (possibly on another day than the cached one), started first so
    // that on a clean machine it runs while another test builds the cached image.
    let scratch = tempfile::Builder::new()
        .prefix("scratch-")
        .tempdir_in({
            std::fs::create_dir_all(toolchain_cache()).unwrap();
            toolchain_cache()
        })
        .unwrap();
    chmod(scratch.path(), 0o755);
    let store = Store::open(scratch.path()).unwrap();
    // Two builders of the same image at once: one builds, the other waits on the store's lock
    // and reuses that image. (Threads here; separate processes are alike: the lock is a
    // `flock` on a file opened by each builder.)
    let request = ImageRequest::new(Suite::Bookworm);
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| store.build(&sandbox(), &request).unwrap());
        let b = scope.spawn(|| store.build(&sandbox(), &request).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    let (fresh, waited) = if a.reused { (b, a) } else { (a, b) };
    eprintln!(
        "second bookworm build: {:.1} s",
        fresh.elapsed.as_secs_f64()
    );
    assert!(!fresh.reused, "neither builder built: {fresh:?}");
    assert!(waited.reused, "both builders built: {waited:?}");
    assert_eq!(waited.toolchain, fresh.toolchain);

    let cached = image(Suite::Bookworm);
    assert_eq!(
        fresh.toolchain.digest,
        cached.digest,
        "two builds of the same packages differ; compare {} and {}",
        store.dir().display(),
        toolchain_store().dir().display()
    );
    // Asking again for the same inputs is instant: nothing is built.
    let again = toolchain_store()
        .build(&sandbox(), &ImageRequest::new(Suite::Bookworm))
        .unwrap();
    assert!(again.reused);
    assert_eq!(again.toolchain, cached);
    assert!(
        again.elapsed < Duration::from_secs(30),
        "{:?}",
        again.elapsed
    );

    // Lookups by suite, id and digest prefix; unknown ids are explained.
    let sb = sandbox();
    assert_eq!(store.resolve("bookworm", &sb).unwrap(), fresh.toolchain);
    assert_eq!(
        store.resolve(&fresh.toolchain.id, &sb).unwrap(),
        fresh.toolchain
    );
    assert_eq!(
        store.resolve(&cached.digest[..8], &sb).unwrap(),
        fresh.toolchain
    );
    let unknown = store.resolve("trixie", &sb).unwrap_err().to_string();
    assert!(unknown.contains("toolchain build --suite"), "{unknown}");

    // Verification: clean, then every kind of tampering named by path.
    assert!(store.verify(&fresh.toolchain).unwrap().ok());
    let root = fresh.toolchain.root.clone().unwrap();
    let version = root.join("usr/lib/erlang/releases/25/OTP_VERSION");
    let mut text = std::fs::read_to_string(&version).unwrap();
    text.push('\n');
    std::fs::write(&version, text).unwrap();
    chmod(&root.join("etc/passwd"), 0o666);
    std::fs::write(root.join("usr/bin/planted"), "#!/bin/sh\n").unwrap();
    std::fs::remove_file(root.join("usr/bin/rebar3")).unwrap();
    let verification = store.verify(&fresh.toolchain).unwrap();
    assert!(!verification.ok());
    assert_ne!(verification.actual, fresh.toolchain.digest);
    let paths: Vec<&str> = verification
        .differences
        .iter()
        .map(|d| d.split(':').next().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "changed /etc/passwd",
            "unexpected /usr/bin/planted",
            "missing /usr/bin/rebar3",
            "changed /usr/lib/erlang/releases/25/OTP_VERSION",
        ]
    );
}

fn no_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().all(|e| {
        let path = e.path();
        path.is_dir() && !path.is_symlink() && no_files(&path)
    })
}
