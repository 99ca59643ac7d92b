//! `precomp mirror sync` against a fixture upstream: a signed static repository of the fixture
//! packages (`precomp repo build`) served by nginx on loopback, with its access log counting
//! what the sync asked for. What a sync stores, `precomp serve` then serves with upstream gone,
//! whether it was started afterwards or was running all along.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use precomp_proto::registry::{decode_package, Release, RepoPublicKey};
use precomp_testkit::{copy_dir, Nginx, NginxOptions};

/// The upstream repository, built once per test process and never modified.
struct Fixture {
    dir: tempfile::TempDir,
    key: RepoPublicKey,
}

impl Fixture {
    fn get() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let key = dir.path().join("key.pem");
            keygen(&key);
            repo_build(
                &workspace().join("tests/fixtures/packages"),
                &key,
                "hexpm",
                &dir.path().join("repo"),
            );
            let pem = std::fs::read_to_string(dir.path().join("key.pem.pub")).unwrap();
            Fixture {
                key: RepoPublicKey::from_pem(&pem).unwrap(),
                dir,
            }
        })
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn public_key(&self) -> PathBuf {
        self.dir.path().join("key.pem.pub")
    }

    fn file(&self, uri: &str) -> Vec<u8> {
        std::fs::read(self.root().join(uri.trim_start_matches('/'))).unwrap()
    }

    /// The release from the repository's signed record.
    fn release(&self, name: &str, version: &str) -> Release {
        let record = decode_package(
            &self.file(&format!("/packages/{name}")),
            &self.key,
            "hexpm",
            name,
        )
        .unwrap();
        record
            .releases
            .into_iter()
            .find(|r| r.version == version)
            .unwrap()
    }

    /// (inner, outer) checksums of a release, lowercase hex.
    fn checksums(&self, name: &str, version: &str) -> (String, String) {
        let release = self.release(name, version);
        (
            hex(&release.inner_checksum),
            hex(release.outer_checksum.as_deref().unwrap()),
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn upstream() -> Nginx {
    Nginx::start(&Fixture::get().root(), &NginxOptions::new().access_log())
}

/// `precomp --data DATA mirror sync --upstream URL --upstream-key KEY ARGS`.
fn sync(data: &Path, upstream: &str, args: &[&str]) -> Output {
    let key = Fixture::get().public_key();
    let mut all = vec![
        "--data",
        data.to_str().unwrap(),
        "mirror",
        "sync",
        "--upstream",
        upstream,
        "--upstream-key",
        key.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    precomp(&all)
}

/// The upstream's requests for tarballs, in order.
fn tarball_requests(nginx: &Nginx) -> Vec<String> {
    nginx
        .access_log()
        .into_iter()
        .filter(|e| e.uri.starts_with("/tarballs/"))
        .map(|e| e.uri)
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A running `precomp serve`; killed when dropped.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(data: &Path, upstream: &str) -> Serve {
        let mut command = precomp_command();
        command
            .arg("--data")
            .arg(data)
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream", upstream])
            .arg("--upstream-key")
            .arg(Fixture::get().public_key())
            .stderr(Stdio::null());
        let (child, url) = spawn_serve(command, String::new);
        Serve { child, url }
    }

    /// GET `path`: status and body.
    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let response = client.get(format!("{}{path}", self.url)).send().unwrap();
        let status = response.status().as_u16();
        (status, response.bytes().unwrap().to_vec())
    }

    /// Every path is served, byte for byte as upstream has it.
    fn assert_serves(&self, paths: &[String]) {
        let fixture = Fixture::get();
        for path in paths {
            let (status, body) = self.get(path);
            assert_eq!(
                status,
                200,
                "GET {path}: {}",
                String::from_utf8_lossy(&body)
            );
            assert!(
                body == fixture.file(path),
                "GET {path}: not upstream's bytes"
            );
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mix.lock of fixture packages with their real checksums, in each generation of the Hex
/// entry, plus entries a Hex mirror cannot serve.
fn mix_lock() -> String {
    let f = Fixture::get();
    let (shapes_i, shapes_o) = f.checksums("shapes", "2.0.0");
    let (user_i, user_o) = f.checksums("shape_user", "1.0.0");
    let (counter_i, counter_o) = f.checksums("erl_counter", "1.0.0");
    let (cex_i, cex_o) = f.checksums("counter_ex", "1.0.0");
    let (plain_i, _) = f.checksums("plain_ex", "1.0.0");
    format!(
        r#"%{{
  "counter_ex": {{:hex, :counter_ex, "1.0.0", "{cex_i}", [:mix], [{{:erl_counter, ">= 1.0.0", [hex: :erl_counter, repo: "hexpm", optional: false]}}], "hexpm", "{cex_o}"}},
  "erl_counter": {{:hex, :erl_counter, "1.0.0", "{counter_up}", [:rebar3], [], "hexpm", "{counter_o}"}},
  "local": {{:path, "../local", []}},
  "my_fork": {{:git, "https://example.invalid/my_fork.git", "0123456789abcdef0123456789abcdef01234567", [branch: "main"]}},
  "plain_ex": {{:hex, :plain_ex, "1.0.0", "{plain_i}", [:mix], []}},
  "private": {{:hex, :private, "1.0.0", "{plain_i}", [:mix], [], "hexpm:acme", "{shapes_o}"}},
  "shape_user": {{:hex, :shape_user, "1.0.0", "{user_i}", [:mix], [{{:shapes, ">= 1.0.0", [hex: :shapes, repo: "hexpm", optional: false]}}], "hexpm", "{user_o}"}},
  "shapes": {{:hex, :shapes, "2.0.0", "{shapes_i}", [:mix], [], "hexpm", "{shapes_o}"}},
}}
"#,
        counter_up = counter_i.to_uppercase(),
    )
}

const MIX_LOCK_OBJECTS: &[&str] = &[
    "/packages/counter_ex",
    "/packages/erl_counter",
    "/packages/plain_ex",
    "/packages/shape_user",
    "/packages/shapes",
    "/tarballs/counter_ex-1.0.0.tar",
    "/tarballs/erl_counter-1.0.0.tar",
    "/tarballs/plain_ex-1.0.0.tar",
    "/tarballs/shape_user-1.0.0.tar",
    "/tarballs/shapes-2.0.0.tar",
];

#[test]
fn a_synced_mix_lock_is_served_offline_and_a_rerun_fetches_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let lock = scratch.path().join("mix.lock");
    std::fs::write(&lock, mix_lock()).unwrap();
    let data = scratch.path().join("data");
    let nginx = upstream();

    let out = ok(sync(
        &data,
        &nginx.url(),
        &["--mix-lock", lock.to_str().unwrap()],
    ));
    assert!(
        out.contains("synced 10 objects (10 fetched, 0 already stored), 0 failed"),
        "{out}"
    );
    let skipped: Vec<&str> = out.lines().filter(|l| l.starts_with("SKIP ")).collect();
    assert_eq!(skipped.len(), 3, "{out}");
    for (app, why) in [
        ("local", "path dependency, not from Hex"),
        ("my_fork", "git dependency"),
        ("private", "from repository \"hexpm:acme\""),
    ] {
        assert!(
            skipped
                .iter()
                .any(|l| l.contains(&format!("mix.lock: {app}: {why}"))),
            "{app}: {out}"
        );
    }
    let tarballs: Vec<String> = MIX_LOCK_OBJECTS
        .iter()
        .filter(|p| p.starts_with("/tarballs/"))
        .map(|p| p.to_string())
        .collect();
    assert_eq!(sorted(tarball_requests(&nginx)), tarballs);
    // The mix.lock closure only: no indexes, no other package.
    assert_eq!(nginx.access_log().len(), MIX_LOCK_OBJECTS.len());

    // Again: everything is already stored, and no tarball is asked for.
    let out = ok(sync(
        &data,
        &nginx.url(),
        &["--mix-lock", lock.to_str().unwrap()],
    ));
    assert!(
        out.contains("synced 10 objects (0 fetched, 10 already stored), 0 failed, 0.0 MB fetched"),
        "{out}"
    );
    assert_eq!(tarball_requests(&nginx).len(), tarballs.len());

    // Upstream gone: a mirror started on the same data serves every object from the store.
    let dead = nginx.url();
    drop(nginx);
    let serve = Serve::start(&data, &dead);
    serve.assert_serves(&strings(MIX_LOCK_OBJECTS));
    // What was not synced is not there (so the above really came from the store).
    assert_eq!(serve.get("/tarballs/shapes-1.0.0.tar").0, 502);
}

/// rebar3 writes the lock; the sync runs beside a server already serving the same data
/// directory, which must serve what the sync stored once upstream is gone; rebar3 then builds
/// its dependencies from that mirror, offline.
#[test]
fn a_synced_rebar_lock_is_served_by_a_server_running_during_the_sync() {
    let fixture = Fixture::get();
    let scratch = tempfile::tempdir().unwrap();
    let nginx = upstream();
    let project = scratch.path().join("rebar3_app");
    copy_dir(
        &workspace().join("tests/fixtures/consumers/rebar3_app"),
        &project,
    );
    let rebar3 = |url: &str, home: &str| {
        let home = scratch.path().join(home);
        let config_dir = home.join(".config/rebar3");
        std::fs::create_dir_all(&config_dir).unwrap();
        let pem = std::fs::read_to_string(fixture.public_key()).unwrap();
        std::fs::write(
            config_dir.join("rebar.config"),
            format!(
                "{{hex, [{{repos, [#{{name => <<\"hexpm\">>, repo_public_key => <<\"{}\">>}}]}}]}}.\n",
                pem.trim()
            ),
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(project.join("_build"));
        Command::new("rebar3")
            .arg("get-deps")
            .current_dir(&project)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", &home)
            .env("REBAR_CACHE_DIR", home.join("cache"))
            .env("HEX_CDN", url)
            .env("LANG", "C.UTF-8")
            .output()
            .expect("run rebar3 (install it with `apt-get install rebar3`)")
    };
    let got = rebar3(&nginx.url(), "home1");
    assert!(got.status.success(), "{}", describe(&got));
    let lock = project.join("rebar.lock");
    assert!(std::fs::read_to_string(&lock)
        .unwrap()
        .contains("pkg_hash_ext"));

    let data = scratch.path().join("data");
    let serve = Serve::start(&data, &nginx.url());
    assert_eq!(serve.get("/healthz").0, 200);
    let before = nginx.access_log().len();
    let out = ok(sync(
        &data,
        &nginx.url(),
        &["--rebar-lock", lock.to_str().unwrap()],
    ));
    assert!(
        out.contains("synced 4 objects (4 fetched, 0 already stored), 0 failed"),
        "{out}"
    );
    assert_eq!(nginx.access_log().len() - before, 4);

    drop(nginx);
    serve.assert_serves(&strings(&[
        "/packages/erl_counter",
        "/packages/erl_ids",
        "/tarballs/erl_counter-1.0.0.tar",
        "/tarballs/erl_ids-1.0.0.tar",
    ]));
    let offline = rebar3(&serve.url, "home2");
    assert!(offline.status.success(), "{}", describe(&offline));
    assert!(project.join("_build/default/lib/erl_counter/src").is_dir());
}

#[test]
fn latest_all_and_resuming() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let nginx = upstream();

    // Only shapes 2.0.0, the higher of its two releases; and the indexes.
    let out = ok(sync(
        &data,
        &nginx.url(),
        &["--package", "shapes", "--latest", "1"],
    ));
    assert!(
        out.contains("synced 4 objects (4 fetched, 0 already stored), 0 failed"),
        "{out}"
    );
    assert_eq!(tarball_requests(&nginx), ["/tarballs/shapes-2.0.0.tar"]);
    assert_eq!(
        sorted(nginx.access_log().into_iter().map(|e| e.uri).collect()),
        [
            "/names",
            "/packages/shapes",
            "/tarballs/shapes-2.0.0.tar",
            "/versions"
        ]
    );

    // Everything: 15 packages, 16 releases and the two indexes; what the first sync stored is
    // not fetched again.
    let out = ok(sync(&data, &nginx.url(), &["--all", "-j", "3"]));
    assert!(
        out.contains("synced 33 objects (29 fetched, 4 already stored), 0 failed"),
        "{out}"
    );
    let mut all_tarballs: Vec<String> = std::fs::read_dir(Fixture::get().root().join("tarballs"))
        .unwrap()
        .map(|e| format!("/tarballs/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    all_tarballs.sort();
    assert_eq!(all_tarballs.len(), 16);
    assert_eq!(sorted(tarball_requests(&nginx)), all_tarballs);

    // Once more: all stored, no tarball asked for.
    let out = ok(sync(&data, &nginx.url(), &["--all"]));
    assert!(
        out.contains("synced 33 objects (0 fetched, 33 already stored), 0 failed"),
        "{out}"
    );
    assert_eq!(tarball_requests(&nginx).len(), 16);

    // With a registry TTL of 0, registry files are revalidated (304s), tarballs still not.
    let before = nginx.access_log().len();
    let out = ok(sync(&data, &nginx.url(), &["--all", "--registry-ttl", "0"]));
    assert!(out.contains("(0 fetched, 33 already stored)"), "{out}");
    let revalidated: Vec<_> = nginx.access_log().split_off(before);
    assert_eq!(revalidated.len(), 17, "{revalidated:?}");
    assert!(
        revalidated
            .iter()
            .all(|e| e.status == 304 && !e.uri.starts_with("/tarballs/")),
        "{revalidated:?}"
    );

    drop(nginx);
    let serve = Serve::start(&data, "http://127.0.0.1:9");
    let mut everything = all_tarballs;
    everything.extend(strings(&["/names", "/versions", "/packages/tiny_nif"]));
    serve.assert_serves(&everything);
}

#[test]
fn locks_that_disagree_with_the_registry_fail_their_entries() {
    let fixture = Fixture::get();
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let nginx = upstream();

    let (shapes_i, shapes_o) = fixture.checksums("shapes", "2.0.0");
    let (plain_i, plain_o) = fixture.checksums("plain_ex", "1.0.0");
    let wrong = "ab".repeat(32);
    let mix = scratch.path().join("mix.lock");
    std::fs::write(
        &mix,
        format!(
            r#"%{{
  "ghost": {{:hex, :shapes, "9.9.9", "{shapes_i}", [:mix], [], "hexpm", "{shapes_o}"}},
  "plain_ex": {{:hex, :plain_ex, "1.0.0", "{plain_i}", [:mix], [], "hexpm", "{plain_o}"}},
  "shapes": {{:hex, :shapes, "2.0.0", "{shapes_i}", [:mix], [], "hexpm", "{wrong}"}},
}}
"#
        ),
    )
    .unwrap();
    let (counter_i, _) = fixture.checksums("erl_counter", "1.0.0");
    let (_, ids_o) = fixture.checksums("erl_ids", "1.0.0");
    let rebar = scratch.path().join("rebar.lock");
    std::fs::write(
        &rebar,
        format!(
            "{{\"1.2.0\",\n[{{<<\"erl_counter\">>,{{pkg,<<\"erl_counter\">>,<<\"1.0.0\">>}},1}},\n \
             {{<<\"erl_ids\">>,{{pkg,<<\"erl_ids\">>,<<\"1.0.0\">>}},0}}]}}.\n[\n\
             {{pkg_hash,[{{<<\"erl_counter\">>, <<\"{}\">>}}]}},\n\
             {{pkg_hash_ext,[{{<<\"erl_counter\">>, <<\"{}\">>}}, {{<<\"erl_ids\">>, <<\"{}\">>}}]}}\n].\n",
            counter_i.to_uppercase(),
            "CD".repeat(32),
            ids_o.to_uppercase()
        ),
    )
    .unwrap();

    let output = sync(
        &data,
        &nginx.url(),
        &[
            "--mix-lock",
            mix.to_str().unwrap(),
            "--rebar-lock",
            rebar.to_str().unwrap(),
            "--package",
            "nope",
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let out = String::from_utf8_lossy(&output.stdout);
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL ")).collect();
    let (_, counter_o) = fixture.checksums("erl_counter", "1.0.0");
    let expected = [
        "FAIL /packages/nope: not found upstream (wanted by --package nope)".to_string(),
        format!(
            "FAIL {}: erl_counter: erl_counter 1.0.0: outer checksum check failed: the lock says {}, the registry says {counter_o}",
            rebar.display(),
            "cd".repeat(32)
        ),
        format!(
            "FAIL {}: ghost: shapes 9.9.9: no such release upstream (not in /packages/shapes)",
            mix.display()
        ),
        format!(
            "FAIL {}: shapes: shapes 2.0.0: outer checksum check failed: the lock says {wrong}, the registry says {shapes_o}",
            mix.display()
        ),
    ];
    assert_eq!(
        sorted(fails.iter().map(|s| s.to_string()).collect()),
        sorted(expected.to_vec()),
        "{out}"
    );
    // The indexes, four records, and the tarballs of plain_ex and erl_ids are synced; the
    // disagreeing entries' tarballs are never asked for, nor the release upstream lacks.
    assert!(
        out.contains("synced 8 objects (8 fetched, 0 already stored), 4 failed"),
        "{out}"
    );
    assert_eq!(
        sorted(tarball_requests(&nginx)),
        [
            "/tarballs/erl_ids-1.0.0.tar",
            "/tarballs/plain_ex-1.0.0.tar"
        ]
    );
}

#[test]
fn an_interrupted_sync_says_so() {
    // An upstream that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let scratch = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_precomp"))
        .arg("--data")
        .arg(scratch.path().join("data"))
        .args(["mirror", "sync", "--upstream", &url, "--upstream-key"])
        .arg(Fixture::get().public_key())
        .args(["--package", "shapes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The sync is waiting on upstream once it has connected.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    silent.set_nonblocking(true).unwrap();
    let mut held = Vec::new();
    while held.is_empty() && std::time::Instant::now() < deadline {
        if let Ok((stream, _)) = silent.accept() {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!held.is_empty(), "the sync never connected upstream");
    let kill = Command::new("kill")
        .args(["-s", "INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", describe(&output));
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("synced 0 objects"), "{out}");
    assert!(
        out.contains("interrupted: run the same command again to continue"),
        "{out}"
    );
}

#[test]
fn usage_errors_are_clear() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let data = data.to_str().unwrap();

    let help = ok(precomp(&["mirror", "sync", "--help"]));
    for word in [
        "--mix-lock",
        "--rebar-lock",
        "--package",
        "--latest",
        "--all",
        "--jobs",
        "--upstream",
        "--upstream-key",
        "--upstream-repository",
        "--upstream-timeout",
        "--registry-ttl",
        "--config",
        "--data",
    ] {
        assert!(help.contains(word), "sync --help lacks {word}: {help}");
    }

    let text = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let none = precomp(&["--data", data, "mirror", "sync"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(text(&none).contains("--mix-lock"), "{}", text(&none));

    let latest = precomp(&[
        "--data",
        data,
        "mirror",
        "sync",
        "--mix-lock",
        "x",
        "--latest",
        "1",
    ]);
    assert_eq!(latest.status.code(), Some(2), "{}", text(&latest));

    let name = precomp(&["--data", data, "mirror", "sync", "--package", "Bad"]);
    assert_eq!(name.status.code(), Some(1));
    assert!(
        text(&name).contains("--package \"Bad\": not a Hex package name"),
        "{}",
        text(&name)
    );

    let broken = scratch.path().join("rebar.lock");
    std::fs::write(
        &broken,
        "{\"1.2.0\", [{<<\"a\">>, {pkg, <<\"a\">>}, 0}]}.\n",
    )
    .unwrap();
    let out = precomp(&[
        "--data",
        data,
        "mirror",
        "sync",
        "--rebar-lock",
        broken.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out);
    assert!(e.contains(&format!("reading {}", broken.display())), "{e}");
    assert!(
        e.contains("dependency a: expected {pkg, Name, Version}"),
        "{e}"
    );

    let missing = precomp(&[
        "--data",
        data,
        "mirror",
        "sync",
        "--mix-lock",
        "/nonexistent/mix.lock",
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing).contains("reading /nonexistent/mix.lock"),
        "{}",
        text(&missing)
    );

    // The same --config file as `precomp serve`, serve-only keys included.
    let config = scratch.path().join("precomp.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nmemory_cache_mb = 1\nupstream = \"ftp://x\"\n",
    )
    .unwrap();
    let out = precomp(&[
        "--data",
        data,
        "mirror",
        "sync",
        "--config",
        config.to_str().unwrap(),
        "--all",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("must be an http://, https:// or file:/// URL"),
        "{}",
        text(&out)
    );
}
