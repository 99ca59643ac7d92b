//! docs/operations.md, "Deployment", run as written with podman (as root):
//!
//! - the container: `ops/deploy/build-image.sh` builds the image from
//!   `ops/deploy/Containerfile`, the mirror runs in it with its data in a volume, serves a
//!   local signed upstream byte for byte, takes `exec precomp token create`, keeps its data
//!   across `podman stop`/`start`, exits 0 on the SIGTERM of `podman stop`; and `precomp build`
//!   runs its sandbox (bubblewrap) inside the container with the documented security options;
//! - systemd: a container booted with systemd as init gets the units of `ops/deploy/` installed
//!   exactly as the docs say (sysusers, units, config, `systemctl enable --now`, `token create`
//!   as user precomp); the mirror answers, the gc and backup services succeed,
//!   `precomp-worker@build` leases a reported miss, builds it in the sandbox and publishes it,
//!   and `systemctl stop` ends both units cleanly.
//!
//! What differs from the docs' text, and why: names (containers, volumes, image tags) are
//! unique per run, ports are loopback ports picked by the test, the engine is podman
//! (`CONTAINER_ENGINE=podman`), and the binary put into the images is the one these tests run
//! (`PRECOMP_BINARY=$CARGO_BIN_EXE_precomp`, a bookworm build like the release binary the docs
//! build) so CI need not build a release. The bookworm base image is made with debootstrap as
//! the docs say and cached under `$PRECOMP_TOOLCHAIN_CACHE/container-base/` (keyed by the
//! recipe and the digest of the suite's signed InRelease) and in podman's storage.
//!
//! Needs podman, runc and debootstrap (`bash .ci/setup`) and the Debian mirror the first time;
//! a machine where podman cannot run containers fails these tests, naming the error. Run:
//! `cargo test -p precomp --test deploy`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

/// `podman run` options every container here needs on hosts like the development VM (docs:
/// root without CAP_SYS_RESOURCE, so podman's default rlimits fail); harmless elsewhere.
const ULIMITS: &[&str] = &[
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=32768:32768",
];

/// What bubblewrap needs inside a podman container (docs: "Container").
const SANDBOX_OPTIONS: &[&str] = &[
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "unmask=ALL",
];

const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

fn podman_command(args: &[&str]) -> Command {
    let mut command = Command::new("podman");
    command.args(args);
    command
}

fn podman(args: &[&str]) -> Output {
    try_output_within(podman_command(args), Duration::from_secs(600)).unwrap_or_else(|e| {
        panic!("podman cannot run ({e}): install it with `apt-get install podman runc` (.ci/setup)")
    })
}

fn podman_ok(args: &[&str]) -> String {
    let output = podman(args);
    assert!(
        output.status.success(),
        "podman {}: {}",
        args.join(" "),
        describe(&output)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Fails with the reason unless podman can run a container here (with runc, as the docs do).
fn require_podman(image: &str) {
    let mut args = vec!["--runtime", "runc", "run", "--rm"];
    args.extend(ULIMITS);
    args.extend([image, "true"]);
    let output = podman(&args);
    assert!(
        output.status.success(),
        "podman cannot run a container on this machine, so the deployment procedures cannot be \
         tested: {}",
        describe(&output)
    );
}

/// A name no other run uses: containers, volumes and image tags of this process.
fn unique(what: &str) -> String {
    static STARTED: OnceLock<u128> = OnceLock::new();
    let started = STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    });
    format!("precomp-test-{}-{started:x}-{what}", std::process::id())
}

/// Containers, volumes and images a test made, removed when it ends (passed or not).
#[derive(Default)]
struct Owned {
    containers: Vec<String>,
    volumes: Vec<String>,
    images: Vec<String>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = podman_command(&["rm", "--force", "--time", "0", container]).output();
        }
        for volume in &self.volumes {
            let _ = podman_command(&["volume", "rm", "--force", volume]).output();
        }
        // Without --force: a concurrent run whose build found the same image in podman's
        // cache holds it under its own tag, which this must only untag.
        for image in &self.images {
            let _ = podman_command(&["rmi", image]).output();
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The bookworm base image (docs: "No Docker Hub: a bookworm base from the Debian mirror"):
/// `debootstrap --variant=minbase bookworm` imported with `podman import`. Found in podman's
/// storage by its key, else imported from the cached root tarball, else made now (≈ 1 min).
/// The key digests the recipe and the suite's signed InRelease, so a Debian point release
/// makes a new one; older ones of this recipe are removed then.
fn base_image() -> String {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(make_base_image).clone()
}

fn make_base_image() -> String {
    let architecture = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .expect("dpkg")
            .stdout,
    )
    .unwrap();
    let recipe = format!(
        "debootstrap --variant=minbase bookworm ROOT {DEBIAN_MIRROR}\n\
         architecture={}\n\
         tar -C ROOT -c . | podman import --change 'CMD [\"/bin/bash\"]' - IMAGE\n",
        architecture.trim()
    );
    let release_url = format!("{DEBIAN_MIRROR}/dists/bookworm/InRelease");
    let release = match reqwest::blocking::get(&release_url)
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.bytes())
    {
        Ok(release) => release,
        Err(error) => {
            // Offline: a base made earlier will do (the builds' apt layers are cached too).
            let listed = podman_ok(&[
                "images",
                "--format",
                "{{.Repository}}:{{.Tag}}",
                "--filter",
                "reference=localhost/precomp-test-base",
            ]);
            let Some(earlier) = listed.lines().next() else {
                panic!(
                    "fetching {release_url} (the base image's key) failed and no base was made \
                     before: {error}; the first run needs the Debian mirror"
                )
            };
            eprintln!("{release_url}: {error}; using the base made before, {earlier}");
            return earlier.to_string();
        }
    };
    let key = sha256_hex(format!("{recipe}release={}\n", sha256_hex(&release)).as_bytes());
    let key = &key[..16];
    let tag = format!("localhost/precomp-test-base:bookworm-minbase-{key}");

    let dir = toolchain_cache().join("container-base");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| {
        panic!(
            "creating {}: {e} (set PRECOMP_TOOLCHAIN_CACHE to a writable directory)",
            dir.display()
        )
    });
    // One maker at a time across test processes; the others wait and reuse its image.
    let lock = std::fs::File::create(dir.join("lock")).unwrap();
    lock.lock().unwrap();
    if podman(&["image", "exists", &tag]).status.success() {
        return tag;
    }
    let tarball = dir.join(format!("bookworm-minbase-{key}.tar"));
    if !tarball.exists() {
        let started = Instant::now();
        let scratch = tempfile::Builder::new()
            .prefix("rootfs-")
            .tempdir_in(&dir)
            .unwrap();
        let root = scratch.path().join("rootfs");
        let mut debootstrap = Command::new("debootstrap");
        debootstrap
            .args(["--variant=minbase", "bookworm"])
            .arg(&root)
            .arg(DEBIAN_MIRROR);
        let output = try_output_within(debootstrap, Duration::from_secs(900)).unwrap_or_else(|e| {
            panic!("debootstrap cannot run ({e}): `apt-get install debootstrap` (.ci/setup)")
        });
        assert!(
            output.status.success(),
            "debootstrap: {}",
            describe(&output)
        );
        let partial = scratch.path().join("rootfs.tar");
        let output = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&partial)
            .arg(".")
            .output()
            .unwrap();
        assert!(output.status.success(), "tar: {}", describe(&output));
        std::fs::rename(&partial, &tarball).unwrap();
        eprintln!(
            "bookworm base made in {:.0} s: {}",
            started.elapsed().as_secs_f64(),
            tarball.display()
        );
    }
    // Earlier keys' tarballs and images (this recipe's own names only).
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("bookworm-minbase-") && path != tarball {
            let _ = std::fs::remove_file(&path);
        }
    }
    // The caches made on earlier bases: layers first, then the bases they were built on.
    for cache in [
        "localhost/precomp-test-systemd",
        "localhost/precomp-test-image-apt-layer",
        "localhost/precomp-test-base",
    ] {
        let listed = podman_ok(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "--filter",
            &format!("reference={cache}"),
        ]);
        for old in listed.lines() {
            if old.starts_with(&format!("{cache}:")) && !old.ends_with(key) {
                let _ = podman_command(&["rmi", old]).output();
            }
        }
    }
    podman_ok(&[
        "import",
        "--change",
        "CMD [\"/bin/bash\"]",
        tarball.to_str().unwrap(),
        &tag,
    ]);
    tag
}

/// The key part of the base image's tag: names images built on it (layer caches).
fn base_key() -> String {
    base_image().rsplit('-').next().unwrap().to_string()
}

/// Tags `image`'s layer made by the instruction containing `marker` as `tag`, so removing
/// `image` keeps it and the next build on the same base finds it in podman's cache ("Using
/// cache") instead of installing again.
fn keep_layer(image: &str, marker: &str, tag: &str) {
    let history = podman_ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.ID}}\t{{.CreatedBy}}",
        image,
    ]);
    let id = history
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(id, created_by)| created_by.contains(marker) && !id.contains("missing"))
        .map(|(id, _)| id.to_string())
        .unwrap_or_else(|| panic!("no layer of {image} made by {marker:?}: {history}"));
    podman_ok(&["tag", &id, tag]);
}

/// The Containerfile's `apt-get install` layer (the toolchain packages, bubblewrap, the user
/// precomp) on the current base, under a tag of its own: made once per base by a first run of
/// `build-image.sh`, so that the container test's build finds it in podman's cache and the
/// systemd test's image starts from it, instead of each installing the packages again.
fn apt_layer() -> String {
    static LAYER: OnceLock<String> = OnceLock::new();
    LAYER
        .get_or_init(|| {
            let tag = format!("localhost/precomp-test-image-apt-layer:{}", base_key());
            if !podman(&["image", "exists", &tag]).status.success() {
                let mut owned = Owned::default();
                let image = run_build_image(&mut owned);
                keep_layer(&image, "apt-get update", &tag);
            }
            tag
        })
        .clone()
}

/// docs: `ops/deploy/build-image.sh precomp:0.1.0 --build-arg BASE=... --isolation=chroot`,
/// from the tests' precomp binary, on the cached package layer. Returns the tag (removed with
/// `owned`).
fn build_image(owned: &mut Owned) -> String {
    apt_layer();
    run_build_image(owned)
}

fn run_build_image(owned: &mut Owned) -> String {
    let tag = format!("localhost/{}:0.1.0", unique("image"));
    owned.images.push(tag.clone());
    let mut command = Command::new(workspace().join("ops/deploy/build-image.sh"));
    command
        .arg(&tag)
        .arg("--build-arg")
        .arg(format!("BASE={}", base_image()))
        .arg("--isolation=chroot")
        .env("CONTAINER_ENGINE", "podman")
        .env("PRECOMP_BINARY", env!("CARGO_BIN_EXE_precomp"));
    let started = Instant::now();
    let output = output_within(command, Duration::from_secs(900));
    assert!(
        output.status.success(),
        "build-image.sh: {}",
        describe(&output)
    );
    eprintln!("image built in {:.0} s", started.elapsed().as_secs_f64());
    tag
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn get(url: &str) -> Vec<u8> {
    let response = http()
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(response.status().is_success(), "GET {url}: {response:?}");
    response.bytes().unwrap().to_vec()
}

/// Waits up to a minute for `url` to answer 200; on failure panics with `diagnostics()`.
fn wait_for(url: &str, diagnostics: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = http().get(url).send() {
            if response.status().is_success() {
                return;
            }
        }
        if Instant::now() > deadline {
            panic!("{url} did not answer within 60 s: {}", diagnostics());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn logs(container: &str) -> String {
    text(&podman(&["logs", container]))
}

/// The Hex paths compared with upstream, byte for byte.
const HEX_PATHS: &[&str] = &[
    "names",
    "versions",
    "packages/plain_ex",
    "tarballs/plain_ex-1.0.0.tar",
];

fn assert_hex_paths_identical(base: &str, upstream: &Path) {
    for path in HEX_PATHS {
        let served = get(&format!("{base}/{path}"));
        let expected = std::fs::read(upstream.join(path)).unwrap();
        assert!(
            served == expected,
            "/{path}: {} bytes served, upstream has {} bytes",
            served.len(),
            expected.len()
        );
    }
}

/// A file the image's user (uid unknown to the host) can read, in a world-readable directory.
fn readable_copy(from: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let to = dir.join(from.file_name().unwrap());
    std::fs::copy(from, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
    to
}

/// docs/operations.md "Container", the commands that worked, as written (with this test's
/// names, a loopback port and the fixture repository as upstream).
#[test]
fn container_procedure() {
    // The docs' block holds the options and commands this test runs.
    let documented = deployment_blocks()[3].replace("\\\n    ", "");
    for fragment in [
        "debootstrap --variant=minbase bookworm",
        "--build-arg BASE=localhost/debian:bookworm-minbase --isolation=chroot",
        "podman --runtime runc run -d --name precomp --ulimit nofile=20000:20000 --ulimit \
         nproc=32768:32768 -p 4000:4000 -v precomp-data:/var/lib/precomp precomp:0.1.0",
        "podman exec precomp precomp token create --name builder-1 --key \
         /etc/precomp/builder-1.pub",
        "podman stop precomp && podman start precomp",
        "--security-opt seccomp=unconfined --security-opt unmask=ALL",
        "--data /out/data build --json --lock /work/mix.lock --mirror file:///upstream \
         --toolchain host --key /work/builder-1.key",
    ] {
        assert!(
            documented.contains(fragment),
            "docs/operations.md's container block no longer says {fragment:?}: update the \
             test and the docs together\n{documented}"
        );
    }
    require_podman(&base_image());
    let mut owned = Owned::default();
    let image = build_image(&mut owned);
    let fixture = FixtureRepo::new("precomp-deploy-container-", &[], &["builder-1"]);
    let upstream = fixture.path("repo");
    // /etc/precomp of the docs' `token create --key /etc/precomp/builder-1.pub`.
    let etc = data_dir("precomp-deploy-etc-");
    readable_copy(&fixture.key("builder-1.pub"), etc.path());

    let name = unique("mirror");
    let volume = unique("data");
    owned.containers.push(name.clone());
    owned.volumes.push(volume.clone());
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:4000");
    let data_mount = format!("{volume}:/var/lib/precomp");
    let upstream_mount = format!("{}:/upstream:ro", upstream.display());
    let etc_mount = format!("{}:/etc/precomp:ro", etc.path().display());
    let mut run = vec!["--runtime", "runc", "run", "-d", "--name", &name];
    run.extend(ULIMITS);
    run.extend(["-p", &publish, "-v", &data_mount]);
    run.extend(["-v", &upstream_mount, "-v", &etc_mount]);
    run.extend(["-e", "PRECOMP_UPSTREAM=file:///upstream"]);
    run.extend(["-e", "PRECOMP_UPSTREAM_KEY=/upstream/public_key"]);
    run.push(&image);
    podman_ok(&run);
    let base = format!("http://127.0.0.1:{port}");
    wait_for(&format!("{base}/metrics"), || logs(&name));

    // `curl -s localhost:4000/metrics`, and Hex paths byte for byte.
    let metrics = String::from_utf8(get(&format!("{base}/metrics"))).unwrap();
    assert!(metrics.contains("precomp_mirror_"), "{metrics}");
    assert_hex_paths_identical(&base, &upstream);

    // `podman exec precomp precomp --version`, `... token create` as the image's user.
    let version = podman_ok(&["exec", &name, "precomp", "--version"]);
    assert_eq!(version, format!("precomp {}", env!("CARGO_PKG_VERSION")));
    let user = podman_ok(&["exec", &name, "id", "-un"]);
    assert_eq!(user, "precomp", "operator commands run as the image's user");
    let token = podman_ok(&[
        "exec",
        &name,
        "precomp",
        "token",
        "create",
        "--name",
        "builder-1",
        "--key",
        "/etc/precomp/builder-1.pub",
    ]);
    assert!(token.contains("pct_"), "a token: {token}");

    // `podman stop`: SIGTERM, the mirror drains and exits 0 (podman's SIGKILL after its 10 s
    // grace would leave 137).
    podman_ok(&["stop", &name]);
    let exit_code = podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(exit_code, "0", "exit code after SIGTERM: {}", logs(&name));
    assert!(
        logs(&name).contains("shutting down"),
        "the mirror said it drains: {}",
        logs(&name)
    );

    // `podman start`: the volume kept the mirror's objects and the token.
    podman_ok(&["start", &name]);
    wait_for(&format!("{base}/metrics"), || logs(&name));
    let after_restart = logs(&name);
    let opened = after_restart
        .lines()
        .rfind(|line| line.contains("mirror store opened"))
        .unwrap_or_else(|| panic!("no 'mirror store opened' line: {after_restart}"));
    let objects: usize = opened
        .split_whitespace()
        .find_map(|field| field.strip_prefix("objects="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no objects= in {opened}"));
    assert!(
        objects >= HEX_PATHS.len(),
        "the restarted mirror found {objects} stored objects, not the {} it fetched: {opened}",
        HEX_PATHS.len()
    );
    assert_hex_paths_identical(&base, &upstream);
    let tokens = podman_ok(&["exec", &name, "precomp", "token", "list"]);
    assert!(tokens.contains("builder-1"), "the token survived: {tokens}");
    podman_ok(&["stop", &name]);

    // A sandboxed build inside the container, with the documented security options: the
    // fixture's plain_ex, erl_ids (and erl_counter, its dependency) and tiny_nif (a C NIF:
    // gcc and make in the image).
    let work = data_dir("precomp-deploy-build-");
    fixture.write_lock(
        &work.path().join("mix.lock"),
        &[
            "plain_ex@1.0.0",
            "erl_ids@1.0.0",
            "erl_counter@1.0.0",
            "tiny_nif@1.0.0",
        ],
    );
    readable_copy(&fixture.key("builder-1.key"), work.path());
    let out = data_dir("precomp-deploy-out-");
    {
        use std::os::unix::fs::PermissionsExt;
        // Written by the image's user.
        std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let work_mount = format!("{}:/work:ro", work.path().display());
    let upstream_mount = format!("{}:/upstream:ro", upstream.display());
    let out_mount = format!("{}:/out", out.path().display());
    let mut run = vec!["--runtime", "runc", "run", "--rm"];
    run.extend(ULIMITS);
    run.extend(SANDBOX_OPTIONS);
    run.extend(["-v", &work_mount, "-v", &upstream_mount, "-v", &out_mount]);
    run.extend([&image, "--data", "/out/data", "build", "--json"]);
    run.extend(["--lock", "/work/mix.lock", "--mirror", "file:///upstream"]);
    run.extend(["--toolchain", "host", "--key", "/work/builder-1.key"]);
    let started = Instant::now();
    let output = podman(&run);
    assert!(
        output.status.success(),
        "precomp build in the container: {}",
        describe(&output)
    );
    eprintln!(
        "sandboxed build in the container: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut built = Vec::new();
    for line in stdout.lines() {
        let line: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{e}: {line}\n{}", describe(&output)));
        assert_eq!(line["status"], "built", "{line}");
        // The artifact is on the host side of /out, as the manifest says.
        let artifact = line["artifact"].as_str().unwrap();
        let on_host = out.path().join(artifact.strip_prefix("/out/").unwrap());
        let bytes = std::fs::read(&on_host).unwrap();
        assert_eq!(
            sha256_hex(&bytes),
            line["artifact_sha256"].as_str().unwrap(),
            "{line}"
        );
        built.push(line["app"].as_str().unwrap().to_string());
    }
    built.sort();
    assert_eq!(
        built,
        ["erl_counter", "erl_ids", "plain_ex", "tiny_nif"],
        "{stdout}"
    );
}

/// An image that boots systemd as init, with what the units run: the Containerfile's package
/// layer (the toolchain, so the worker builds on `--toolchain host`, and bubblewrap) without
/// its user precomp (the docs' `systemd-sysusers` makes it), systemd, and sudo for the docs'
/// `sudo -u precomp`. Kept in podman's storage per recipe and base: the units and the binary
/// come in at run time, not in the image.
fn systemd_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let containerfile = format!(
                "FROM {}\n\
                 RUN userdel --remove precomp \\\n \
                 && apt-get update \\\n \
                 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
                 systemd systemd-sysv sudo \\\n \
                 && rm -rf /var/lib/apt/lists/*\n\
                 STOPSIGNAL SIGRTMIN+3\n\
                 CMD [\"/sbin/init\"]\n",
                apt_layer()
            );
            // Named by its recipe (which names the base), ending with the base's key like
            // the other caches.
            let tag = format!(
                "localhost/precomp-test-systemd:{}-{}",
                &sha256_hex(containerfile.as_bytes())[..12],
                base_key()
            );
            if podman(&["image", "exists", &tag]).status.success() {
                return tag;
            }
            let context = tempfile::tempdir().unwrap();
            std::fs::write(context.path().join("Containerfile"), containerfile).unwrap();
            let started = Instant::now();
            podman_ok(&[
                "build",
                "--isolation=chroot",
                "-t",
                &tag,
                context.path().to_str().unwrap(),
            ]);
            eprintln!(
                "systemd image built in {:.0} s",
                started.elapsed().as_secs_f64()
            );
            tag
        })
        .clone()
}

/// The `sh` blocks of docs/operations.md's "Deployment" section, in order.
fn deployment_blocks() -> Vec<String> {
    let doc = std::fs::read_to_string(workspace().join("docs/operations.md")).unwrap();
    let start = doc
        .find("\n## Deployment\n")
        .expect("docs/operations.md has a Deployment section");
    let section = &doc[start + 1..];
    let section = &section[..section[1..].find("\n## ").map_or(section.len(), |i| i + 1)];
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_string())
        .collect()
}

/// `text` with `from` replaced by `to`, which must occur in it (the docs changed otherwise).
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "{from:?} is not in the docs' block:\n{text}"
    );
    text.replace(from, to)
}

/// Runs `script` with bash in the container `name` as root, from `/src` (the checkout).
fn exec_script(name: &str, script: &str) -> String {
    let full = format!("set -euo pipefail\ncd /src\n{script}");
    podman_ok(&["exec", name, "bash", "-c", &full])
}

fn unit_property(name: &str, unit: &str, property: &str) -> String {
    podman_ok(&[
        "exec",
        name,
        "systemctl",
        "show",
        "--value",
        "-p",
        property,
        unit,
    ])
}

fn journal(name: &str, unit: &str) -> String {
    text(&podman(&[
        "exec",
        name,
        "journalctl",
        "--no-pager",
        "-u",
        unit,
    ]))
}

/// `unit` ran and ended as a clean stop or success: exited 0, not killed, no failure.
fn assert_exited_cleanly(name: &str, unit: &str) {
    let result = unit_property(name, unit, "Result");
    let code = unit_property(name, unit, "ExecMainCode");
    let status = unit_property(name, unit, "ExecMainStatus");
    assert!(
        result == "success" && code == "1" && status == "0",
        "{unit}: Result={result} ExecMainCode={code} (1: exited) ExecMainStatus={status}\n{}",
        journal(name, unit)
    );
}

/// The miss a consumer of `lock` reports for `package` (no dependencies) on `otp`/`elixir`:
/// posted to the mirror, as `precomp fetch` does; its base key.
fn report_miss(base: &str, lock: &str, package: &str, otp: &str, elixir: &str) -> String {
    use precomp_proto::buildkey::{KeyParts, KeyToolchain, Target};
    use precomp_proto::lock::MixLock;
    use precomp_proto::manager::{lock_roots, mix_managers, Converger};
    let parsed = MixLock::parse(lock).unwrap();
    let (app, entry) = parsed.hex().find(|(_, e)| e.package == package).unwrap();
    let infer = |_: &str| Ok::<_, std::convert::Infallible>(None);
    let managers =
        mix_managers(&parsed, &lock_roots(&parsed), Converger::Elixir1_15, infer).unwrap();
    let manager = managers[app].expect("the lock names the manager");
    let parts = std::collections::BTreeMap::from([(
        app.to_string(),
        KeyParts {
            manager,
            target: Some(Target::Any),
            compile_env: Vec::new(),
        },
    )]);
    let toolchain = KeyToolchain {
        otp_major: otp.into(),
        elixir: elixir.into(),
        mix_env: "prod".into(),
    };
    let inputs = parsed
        .inputs_bottom_up(app, Target::Any, &parts, &toolchain)
        .unwrap();
    let base_key = inputs.base_key().unwrap().to_string();
    let report = serde_json::json!({"package": package, "version": entry.version,
        "reason": "not built", "otp_major": otp, "elixir": elixir, "mix_env": "prod",
        "target": "any", "lock": lock, "manager": manager.to_string(), "compile_env": [],
        "closure": [], "base_key": base_key});
    let response = http()
        .post(format!("{base}/precomp/v1/misses"))
        .json(&report)
        .send()
        .unwrap();
    let status = response.status();
    let body = response.text().unwrap();
    assert!(status.is_success(), "reporting the miss: {status} {body}");
    base_key
}

/// docs/operations.md "systemd" and "Workers", the `sh` blocks as written, under a real
/// systemd (PID 1 of a podman container): the mirror's units, then a build worker on the
/// same machine with the mirror's token.
#[test]
fn systemd_procedure() {
    require_podman(&base_image());
    let image = systemd_image();
    let blocks = deployment_blocks();
    let mut owned = Owned::default();
    let fixture = FixtureRepo::new("precomp-deploy-systemd-", &[], &["builder-1", "auditor-1"]);
    let upstream = fixture.path("repo");
    let keys = data_dir("precomp-deploy-keys-");
    for key in ["builder-1.pub", "builder-1.key", "auditor-1.pub"] {
        readable_copy(&fixture.key(key), keys.path());
    }

    let name = unique("systemd");
    owned.containers.push(name.clone());
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:4000");
    let checkout = format!(
        "{}:/src/ops/deploy:ro",
        workspace().join("ops/deploy").display()
    );
    let binary = format!(
        "{}:/src/target/release/precomp:ro",
        env!("CARGO_BIN_EXE_precomp")
    );
    let upstream_mount = format!("{}:/upstream:ro", upstream.display());
    let keys_mount = format!("{}:/keys:ro", keys.path().display());
    let mut run = vec!["--runtime", "runc", "run", "-d", "--name", &name];
    run.push("--systemd=always");
    run.extend(ULIMITS);
    // For the worker's sandbox (bubblewrap), as for `precomp build` in the image.
    run.extend(SANDBOX_OPTIONS);
    run.extend(["-p", &publish, "-v", &checkout, "-v", &binary]);
    run.extend([
        "-v",
        &upstream_mount,
        "-v",
        &keys_mount,
        &image,
        "/sbin/init",
    ]);
    podman_ok(&run);
    // Until systemd's bus is up, systemctl cannot even ask.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (booted, state) = loop {
        let booted = podman(&["exec", &name, "systemctl", "is-system-running", "--wait"]);
        let state = String::from_utf8_lossy(&booted.stdout).trim().to_string();
        if !state.is_empty() || Instant::now() > deadline {
            break (booted, state);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        state == "running" || state == "degraded",
        "systemd did not boot in the container: {}",
        describe(&booted)
    );
    if state == "degraded" {
        eprintln!(
            "failed units in the container: {}",
            text(&podman(&["exec", &name, "systemctl", "--failed"]))
        );
    }

    // Before the docs' block: the public keys in /etc/precomp ("with the builders' and
    // auditors' public keys already in /etc/precomp"), and the test's upstream for the mirror
    // (the fixture repository instead of hex.pm) in a drop-in.
    exec_script(
        &name,
        "install -d /etc/precomp\n\
         install -m 0644 /keys/builder-1.pub /keys/auditor-1.pub /etc/precomp/\n\
         mkdir -p /etc/systemd/system/precomp.service.d\n\
         printf '[Service]\\nEnvironment=PRECOMP_UPSTREAM=file:///upstream\\n\
         Environment=PRECOMP_UPSTREAM_KEY=/upstream/public_key\\n' \
         > /etc/systemd/system/precomp.service.d/upstream.conf\n",
    );
    let before = podman(&["exec", &name, "id", "precomp"]);
    assert!(
        !before.status.success(),
        "the user precomp is the docs' systemd-sysusers' to make: {}",
        describe(&before)
    );
    let install = exec_script(&name, &blocks[0]);
    let token = install
        .split_whitespace()
        .find(|word| word.starts_with("pct_"))
        .unwrap_or_else(|| panic!("no token in the install's output: {install}"))
        .to_string();

    let base = format!("http://127.0.0.1:{port}");
    wait_for(&format!("{base}/metrics"), || journal(&name, "precomp"));
    assert_hex_paths_identical(&base, &upstream);
    let pid = unit_property(&name, "precomp", "MainPID");
    let user = podman_ok(&["exec", &name, "stat", "-c", "%U", &format!("/proc/{pid}")]);
    assert_eq!(user, "precomp", "the mirror runs as the unit's user");
    let timers = podman_ok(&["exec", &name, "systemctl", "list-timers", "--all"]);
    for timer in ["precomp-gc.timer", "precomp-backup.timer"] {
        assert!(timers.contains(timer), "{timer} is scheduled: {timers}");
    }

    // What the timers start, now: both succeed beside the running mirror.
    podman_ok(&[
        "exec",
        &name,
        "systemctl",
        "start",
        "precomp-gc.service",
        "precomp-backup.service",
    ]);
    for unit in ["precomp-gc.service", "precomp-backup.service"] {
        assert_exited_cleanly(&name, unit);
    }
    let backups = podman_ok(&["exec", &name, "ls", "/var/lib/precomp-backups"]);
    assert_eq!(backups.lines().count(), 1, "one backup: {backups}");

    // The worker, with the key of the token made above: its block as written, but for the
    // mirror's address and the token.
    exec_script(
        &name,
        "install -m 0400 -o precomp -g precomp /keys/builder-1.key /etc/precomp/builder-1.key\n",
    );
    let worker = substitute(
        &blocks[1],
        "PRECOMP_MIRROR=http://mirror.internal:4000",
        "PRECOMP_MIRROR=http://127.0.0.1:4000",
    );
    let worker = substitute(
        &worker,
        "PRECOMP_TOKEN=pct_...",
        &format!("PRECOMP_TOKEN={token}"),
    );
    exec_script(&name, &worker);

    // A consumer's miss of plain_ex on the container's toolchain: the worker leases it, builds
    // it in the sandbox and publishes it.
    let toolchains = podman_ok(&[
        "exec",
        "-u",
        "precomp",
        &name,
        "precomp",
        "--data",
        "/tmp/toolchains",
        "toolchain",
        "list",
        "--json",
    ]);
    let toolchains: serde_json::Value = serde_json::from_str(&toolchains).unwrap();
    let host = toolchains
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "host")
        .unwrap_or_else(|| panic!("no host toolchain: {toolchains}"));
    let lock_file = tempfile::NamedTempFile::new().unwrap();
    fixture.write_lock(lock_file.path(), &["plain_ex@1.0.0"]);
    let lock = std::fs::read_to_string(lock_file.path()).unwrap();
    let base_key = report_miss(
        &base,
        &lock,
        "plain_ex",
        host["otp"].as_str().unwrap(),
        host["elixir"].as_str().unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let index: serde_json::Value =
            serde_json::from_slice(&get(&format!("{base}/precomp/v1/index/plain_ex"))).unwrap();
        let builds = index["builds"].as_array().cloned().unwrap_or_default();
        if !builds.is_empty() {
            eprintln!("published by the worker: {index}");
            assert!(
                builds.iter().any(|b| b["base_key"] == base_key.as_str()),
                "the build answers the miss {base_key}: {index}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no build of plain_ex (miss {base_key}) after 180 s: {index}\n{}",
            journal(&name, "precomp-worker@build")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        journal(&name, "precomp-worker@build").contains("plain_ex"),
        "the worker's journal names the job"
    );

    // `systemctl stop`: SIGTERM; both drain or release and exit 0.
    podman_ok(&[
        "exec",
        &name,
        "systemctl",
        "stop",
        "precomp-worker@build",
        "precomp",
    ]);
    assert_exited_cleanly(&name, "precomp-worker@build");
    assert_exited_cleanly(&name, "precomp");
    // What systemd could not apply in a container (docs: "Tested under systemd").
    let everything = text(&podman(&["exec", &name, "journalctl", "--no-pager"]));
    for line in everything
        .lines()
        .filter(|l| l.contains("precomp") && l.contains("ignoring"))
    {
        eprintln!("journal: {line}");
    }
    assert!(
        journal(&name, "precomp").contains("shutting down"),
        "{}",
        journal(&name, "precomp")
    );
}
