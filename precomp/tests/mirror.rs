//! The pull-through mirror (`precomp serve`), run as a separate process in front of a fixture
//! upstream: a signed static repository of our fixture packages (`precomp repo build`, plus a
//! generated incompressible package, `big_blob`) served by nginx on loopback.
//!
//! Real clients go through it (rebar3, and Mix's Hex where installed); the rest is asserted
//! over HTTP, on the upstream's access log, on `/metrics` and on the store under DATA/mirror.

mod common;

use common::*;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use precomp_proto::registry::Signed;
use precomp_testkit::{copy_dir, gunzip, gzip, AccessLogEntry, Nginx, NginxOptions};
use prost::Message;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// The fixture upstream
// ---------------------------------------------------------------------------------------------

/// The generated package: a 2 MiB incompressible file makes a tarball big enough to be slow
/// behind nginx's `limit_rate`.
const BIG: &str = "/tarballs/big_blob-1.0.0.tar";
const BIG_BLOB_BYTES: usize = 2 * 1024 * 1024;

/// The upstream repository, built once per test process (building the Mix fixtures takes
/// seconds) and never modified: tests that tamper with it work on a copy. Each test serves it
/// with its own nginx and runs its own mirror on its own data directory.
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn get() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(Fixture::build)
    }

    fn build() -> Fixture {
        // Under target/tmp, per process; directories of test processes that are gone are
        // removed here, as a static is never dropped.
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("mirror-fixture-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = base.join(format!("mirror-fixture-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let packages = dir.join("packages");
        copy_dir(&workspace().join("tests/fixtures/packages"), &packages);
        write_big_package(&packages.join("big_blob"));
        let key = dir.join("key.pem");
        keygen(&key);
        let out = repo_build(&packages, &key, "hexpm", &dir.join("repo"));
        for release in ["erl_counter 1.0.0", "erl_ids 1.0.0", "big_blob 1.0.0"] {
            assert!(out.contains(release), "{out}");
        }
        let fixture = Fixture { dir };
        assert!(fixture.file(BIG).len() > BIG_BLOB_BYTES);
        fixture
    }

    fn root(&self) -> PathBuf {
        self.dir.join("repo")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn public_key(&self) -> PathBuf {
        self.dir.join("key.pem.pub")
    }

    /// The upstream's bytes of `uri` (`/packages/erl_ids`).
    fn file(&self, uri: &str) -> Vec<u8> {
        std::fs::read(self.root().join(uri.trim_start_matches('/'))).unwrap()
    }

    /// A copy of the repository to tamper with.
    fn copy(&self) -> tempfile::TempDir {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&self.root(), copy.path());
        copy
    }

    /// Every `/packages/NAME` of the repository.
    fn package_uris(&self) -> Vec<String> {
        let mut uris: Vec<String> = std::fs::read_dir(self.root().join("packages"))
            .unwrap()
            .map(|e| format!("/packages/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        uris.sort();
        uris
    }
}

/// A rebar3 package whose priv/blob.bin is pseudo-random (xorshift), so gzip cannot shrink it.
fn write_big_package(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("priv")).unwrap();
    std::fs::write(
        dir.join("src/big_blob.app.src"),
        "{application, big_blob, [\n    {description, \"precomp mirror test: a big incompressible package\"},\n    {vsn, \"1.0.0\"},\n    {applications, [kernel, stdlib]},\n    {licenses, [\"Apache-2.0\"]},\n    {links, []}\n]}.\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("src/big_blob.erl"),
        "-module(big_blob).\n-export([size/0]).\n\nsize() -> filelib:file_size(filename:join(code:priv_dir(big_blob), \"blob.bin\")).\n",
    )
    .unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id());
    let mut blob = Vec::with_capacity(BIG_BLOB_BYTES);
    while blob.len() < BIG_BLOB_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        blob.extend_from_slice(&state.to_le_bytes());
    }
    std::fs::write(dir.join("priv/blob.bin"), blob).unwrap();
}

/// Builds `erl_counter` and `erl_ids` into a repository named `name`, signed by the fixture's
/// key: correctly signed records that fail only the origin check.
fn build_repo_named(name: &str) -> tempfile::TempDir {
    let fixture = Fixture::get();
    let dir = tempfile::tempdir().unwrap();
    for package in ["erl_counter", "erl_ids"] {
        copy_dir(
            &workspace().join("tests/fixtures/packages").join(package),
            &dir.path().join("packages").join(package),
        );
    }
    repo_build(
        &dir.path().join("packages"),
        &fixture.key(),
        name,
        &dir.path().join("repo"),
    );
    dir
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Polls `probe` until it returns something, for up to `limit`.
fn eventually<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The requests for `uri` in `nginx`'s access log once there are at least `at_least`, and a
/// moment later: nginx logs a request after sending the response, which may be after the
/// mirror has answered its client; the moment lets an unexpected extra request show.
fn upstream_requests(nginx: &Nginx, uri: &str, at_least: usize) -> Vec<AccessLogEntry> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while nginx.requests_for(uri).len() < at_least && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    nginx.requests_for(uri)
}

/// A running `precomp serve`, killed when dropped.
struct Mirror {
    child: Child,
    /// `http://127.0.0.1:PORT`
    url: String,
    /// `127.0.0.1:PORT`
    addr: String,
    /// Its stderr (the log), for failure messages.
    log: tempfile::NamedTempFile,
}

impl Mirror {
    /// `precomp serve --data DATA --listen 127.0.0.1:0 --upstream URL --upstream-key KEY ARGS`.
    fn start(data: &Path, upstream: &str, key: &Path, args: &[&str]) -> Mirror {
        let mut command = precomp_command();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(["--upstream", upstream, "--upstream-key"])
            .arg(key)
            .args(args);
        Mirror::spawn(command)
    }

    /// Spawns `command` (a `precomp serve`) and waits for its "listening" line.
    fn spawn(mut command: Command) -> Mirror {
        let log = tempfile::NamedTempFile::new().unwrap();
        command
            .env("PRECOMP_LOG", "info")
            .stderr(log.reopen().unwrap());
        let log_path = log.path().to_path_buf();
        let (child, url) = spawn_serve(command, || {
            std::fs::read_to_string(&log_path).unwrap_or_default()
        });
        let addr = url.strip_prefix("http://").unwrap().to_string();
        Mirror {
            child,
            url,
            addr,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    fn get(&self, path: &str) -> reqwest::blocking::Response {
        client().get(self.url(path)).send().expect("GET")
    }

    /// GET, expecting 200; the body.
    fn get_ok(&self, path: &str) -> Vec<u8> {
        let response = self.get(path);
        let status = response.status();
        let body = response.bytes().unwrap().to_vec();
        assert_eq!(
            status,
            200,
            "GET {path}: {}\n{}",
            String::from_utf8_lossy(&body),
            self.log()
        );
        body
    }

    fn metrics(&self) -> String {
        String::from_utf8(self.get_ok("/metrics")).unwrap()
    }

    fn log(&self) -> String {
        format!(
            "mirror log:\n{}",
            std::fs::read_to_string(self.log.path()).unwrap_or_default()
        )
    }

    /// SIGTERM; the exit status and how long the exit took.
    fn terminate(&mut self) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let killed = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success());
        let status = wait_within(&mut self.child, Duration::from_secs(40))
            .unwrap_or_else(|| panic!("no exit 40 s after SIGTERM\n{}", self.log()));
        (status, start.elapsed())
    }

    /// SIGKILL, and reap.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the mirror");
        self.child.wait().expect("reap the mirror");
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// One client for the whole process: no proxies from the environment, no decompression.
fn client() -> &'static reqwest::blocking::Client {
    static CLIENT: OnceLock<reqwest::blocking::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    })
}

/// A response read off the wire as sent, for what an HTTP client library would hide (a body
/// after HEAD or 304, the exact path sent).
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `METHOD PATH HTTP/1.1` with `headers` and `Connection: close`, reads to EOF.
fn raw(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Raw {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&bytes)));
    let head = String::from_utf8(bytes[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Raw {
        status,
        headers,
        body: bytes[end + 4..].to_vec(),
    }
}

/// The sum of the samples of metric `name` whose labels contain every one of `labels`
/// (`result="stale"`).
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            (series_name == name && labels.iter().all(|label| series_labels.contains(label)))
                .then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------------------------
// The store under DATA/mirror
// ---------------------------------------------------------------------------------------------

/// The object paths with a row in DATA/mirror/mirror.db.
fn stored_paths(data: &Path) -> HashSet<String> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("mirror/mirror.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut statement = db.prepare("SELECT path FROM objects").unwrap();
    let paths = statement
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    paths
}

/// The sha256 of the content of every blob under DATA/mirror/blobs.
fn blob_digests(data: &Path) -> HashSet<String> {
    fn walk(dir: &Path, out: &mut HashSet<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.insert(sha256_hex(&std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = HashSet::new();
    walk(&data.join("mirror/blobs"), &mut out);
    out
}

/// Files in DATA/mirror/tmp, with their sizes.
fn tmp_files(data: &Path) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir(data.join("mirror/tmp"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path(), e.metadata().unwrap().len())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// rebar3
// ---------------------------------------------------------------------------------------------

/// rebar3 succeeded, both packages compiled, and the consumer runs on them.
fn assert_rebar3_built_and_runs(output: &Output, scratch: &Path, mirror: &Mirror) {
    assert!(
        output.status.success(),
        "rebar3 failed: {}\n{}",
        describe(output),
        mirror.log()
    );
    assert!(fetched(scratch, "erl_ids"));
    assert!(fetched(scratch, "erl_counter"));
    assert_consumer_runs(&scratch.join("rebar3_app/_build/default/lib"));
}

/// A mirror of `fixture`'s repository (served by nginx) run with `--require-read-token`, and a
/// `reader` token made for it: what docs/mirror.md says to configure for reading with a token.
/// The nginx and the data directory live as long as what is returned.
fn read_token_mirror(fixture: &Fixture) -> (Nginx, tempfile::TempDir, Mirror, String) {
    let nginx = Nginx::start(&fixture.root(), &NginxOptions::new());
    let data = tempfile::tempdir().unwrap();
    let token = ok(precomp(&[
        "--data",
        data.path().to_str().unwrap(),
        "token",
        "create",
        "--name",
        "ci",
        "--scope",
        "reader",
    ]))
    .trim()
    .to_string();
    let mirror = Mirror::start(
        data.path(),
        &nginx.url(),
        &fixture.public_key(),
        &["--require-read-token"],
    );
    (nginx, data, mirror, token)
}

/// rebar3 against a mirror that requires a token to read (`--require-read-token`), as
/// docs/mirror.md says to configure it: refused without `repo_key`, served with a reader
/// token as `repo_key` (hex_core sends it as the `authorization` header, bare).
#[test]
fn rebar3_reads_a_mirror_that_requires_a_token_with_its_repo_key() {
    let fixture = Fixture::get();
    let (_nginx, _data, mirror, token) = read_token_mirror(fixture);

    let (output, scratch) = rebar3_compile(&mirror.url, &fixture.public_key());
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(!fetched(scratch.path(), "erl_ids"));

    let (output, scratch) =
        rebar3_compile_with_repo_key(&mirror.url, &fixture.public_key(), Some(&token));
    assert_rebar3_built_and_runs(&output, scratch.path(), &mirror);
}

// ---------------------------------------------------------------------------------------------
// 1. rebar3 through the mirror, then from its store
// ---------------------------------------------------------------------------------------------

#[test]
fn rebar3_fetches_through_the_mirror_then_from_its_store_without_upstream() {
    let fixture = Fixture::get();
    let nginx = Nginx::start(&fixture.root(), &NginxOptions::new().access_log());
    let data = tempfile::tempdir().unwrap();
    let mut mirror = Mirror::start(data.path(), &nginx.url(), &fixture.public_key(), &[]);

    let (output, scratch) = rebar3_compile(&mirror.url, &fixture.public_key());
    assert_rebar3_built_and_runs(&output, scratch.path(), &mirror);
    // It came through the mirror, which asked upstream once per object.
    for uri in [
        "/packages/erl_ids",
        "/packages/erl_counter",
        "/tarballs/erl_ids-1.0.0.tar",
        "/tarballs/erl_counter-1.0.0.tar",
    ] {
        assert_eq!(
            upstream_requests(&nginx, uri, 1).len(),
            1,
            "{uri}: {:?}",
            nginx.access_log()
        );
    }

    // Upstream gone: a client with an empty cache and home is served from the store.
    let upstream = nginx.url();
    drop(nginx);
    let (output, scratch) = rebar3_compile(&mirror.url, &fixture.public_key());
    assert_rebar3_built_and_runs(&output, scratch.path(), &mirror);

    // A mirror that must revalidate every registry file (TTL 0) finds upstream down and
    // serves its verified copies, stale.
    let (status, _) = mirror.terminate();
    assert!(status.success(), "{status}\n{}", mirror.log());
    let mirror = Mirror::start(
        data.path(),
        &upstream,
        &fixture.public_key(),
        &["--registry-ttl", "0"],
    );
    let (output, scratch) = rebar3_compile(&mirror.url, &fixture.public_key());
    assert_rebar3_built_and_runs(&output, scratch.path(), &mirror);
    let metrics = mirror.metrics();
    assert!(
        metric(
            &metrics,
            "precomp_mirror_upstream_errors_total",
            &["route=\"packages\""]
        ) > 0.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "precomp_mirror_cache_total",
            &["route=\"packages\"", "result=\"stale\""]
        ) > 0.0,
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Tampered upstream
// ---------------------------------------------------------------------------------------------

/// Serves a copy of the repository with `file` tampered, through a fresh mirror: the mirror
/// answers 502 naming `check`, stores nothing of it, counts it, and rebar3 fails; once the
/// upstream file is fixed, the next request fetches it again and it is stored.
fn assert_tampered_upstream_refused(
    file: &str,
    check: &str,
    route: &str,
    tamper: impl FnOnce(&mut Vec<u8>),
) {
    let fixture = Fixture::get();
    let copy = fixture.copy();
    let path = copy.path().join(file);
    let original = std::fs::read(&path).unwrap();
    let mut tampered = original.clone();
    tamper(&mut tampered);
    assert_ne!(tampered, original);
    std::fs::write(&path, &tampered).unwrap();

    let nginx = Nginx::start(copy.path(), &NginxOptions::new().access_log());
    let data = tempfile::tempdir().unwrap();
    let mirror = Mirror::start(data.path(), &nginx.url(), &fixture.public_key(), &[]);
    let uri = format!("/{file}");

    let response = mirror.get(&uri);
    let status = response.status();
    let body = response.text().unwrap();
    assert_eq!(status, 502, "{uri}: {body}");
    assert!(
        body.contains(check),
        "{uri}: expected {check:?} in {body:?}"
    );

    let (output, scratch) = rebar3_compile(&mirror.url, &fixture.public_key());
    assert!(
        !output.status.success(),
        "rebar3 accepted tampered {file} through the mirror: {}",
        describe(&output)
    );
    assert!(!fetched(scratch.path(), "erl_counter"));

    // Nothing of it was stored: no row, no blob with its bytes.
    assert!(
        !stored_paths(data.path()).contains(file),
        "{file} has a row"
    );
    assert!(
        !blob_digests(data.path()).contains(&sha256_hex(&tampered)),
        "the tampered {file} is a blob"
    );
    // Refused each time: the direct request, and rebar3's.
    let metrics = mirror.metrics();
    assert!(
        metric(
            &metrics,
            "precomp_mirror_verification_failures_total",
            &[&format!("route=\"{route}\"")]
        ) >= 2.0,
        "{metrics}"
    );

    // Every request went upstream (the direct one and rebar3's): nothing was cached, not
    // even the failure. Fixed upstream, the next request fetches it again and gets it.
    let before = upstream_requests(&nginx, &uri, 2).len();
    assert!(before >= 2, "{:?}", nginx.access_log());
    std::fs::write(&path, &original).unwrap();
    assert_eq!(mirror.get_ok(&uri), original);
    assert_eq!(
        upstream_requests(&nginx, &uri, before + 1).len(),
        before + 1
    );
    assert!(stored_paths(data.path()).contains(file));
    assert!(blob_digests(data.path()).contains(&sha256_hex(&original)));
}

#[test]
fn mirror_refuses_a_registry_file_with_a_bad_signature() {
    // A byte of the signed payload, re-gzipped so only the signature can catch it.
    assert_tampered_upstream_refused(
        "packages/erl_counter",
        "signature check failed",
        "packages",
        |b| {
            let mut signed = Signed::decode(gunzip(b).as_slice()).unwrap();
            signed.payload[4] ^= 0x01;
            *b = gzip(&signed.encode_to_vec());
        },
    );
}

#[test]
fn mirror_refuses_a_registry_file_of_another_repository() {
    // Correctly signed by the same key, but for the repository "acme".
    let acme = build_repo_named("acme");
    let record = std::fs::read(acme.path().join("repo/packages/erl_counter")).unwrap();
    assert_tampered_upstream_refused(
        "packages/erl_counter",
        "origin check failed",
        "packages",
        |b| *b = record,
    );
}

#[test]
fn mirror_refuses_a_tarball_that_does_not_match_its_checksum() {
    // A byte inside contents.tar.gz: a well-formed tar whose sha256 is no longer the outer
    // checksum of the signed package record.
    assert_tampered_upstream_refused(
        "tarballs/erl_counter-1.0.0.tar",
        "checksum check failed",
        "tarballs",
        |b| {
            let gzip_start = b.windows(3).position(|w| w == [0x1f, 0x8b, 0x08]).unwrap();
            b[gzip_start + 40] ^= 0x01;
        },
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Concurrent misses
// ---------------------------------------------------------------------------------------------

#[test]
fn concurrent_misses_for_one_tarball_share_one_upstream_request() {
    const CLIENTS: usize = 200;
    let fixture = Fixture::get();
    // 2 MiB at 512 KiB/s: the upstream transfer takes about 3 s, so all requests overlap it.
    let nginx = Nginx::start(
        &fixture.root(),
        &NginxOptions::new().access_log().limit_rate(BIG, "512k"),
    );
    let data = tempfile::tempdir().unwrap();
    let mirror = Mirror::start(data.path(), &nginx.url(), &fixture.public_key(), &[]);
    let expected = fixture.file(BIG);
    let expected_sha = sha256_hex(&expected);

    let barrier = Arc::new(Barrier::new(CLIENTS));
    let url = mirror.url(BIG);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let url = url.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let response = client().get(&url).send().expect("GET");
                let status = response.status().as_u16();
                let etag = response
                    .headers()
                    .get("etag")
                    .map(|v| v.to_str().unwrap().to_string());
                let body = response.bytes().expect("body");
                (status, etag, sha256_hex(&body), body.len())
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    for (status, etag, sha, len) in &results {
        assert_eq!(*status, 200, "{}", mirror.log());
        assert_eq!((sha, *len), (&expected_sha, expected.len()));
        assert_eq!(
            etag.as_deref(),
            Some(format!("\"{expected_sha}\"").as_str())
        );
    }
    let upstream = upstream_requests(&nginx, BIG, 1);
    assert_eq!(upstream.len(), 1, "{upstream:?}");
    assert!(upstream[0].complete);
    assert_eq!(upstream_requests(&nginx, "/packages/big_blob", 1).len(), 1);
    // All of them waited for that one fetch: none found the tarball already stored.
    let metrics = mirror.metrics();
    let tarballs = |result: &str| {
        metric(
            &metrics,
            "precomp_mirror_cache_total",
            &["route=\"tarballs\"", &format!("result=\"{result}\"")],
        )
    };
    assert_eq!(tarballs("miss"), 1.0, "{metrics}");
    assert_eq!(
        tarballs("hit"),
        0.0,
        "some requests came after the upstream transfer ended: {metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Restart, graceful shutdown
// ---------------------------------------------------------------------------------------------

#[test]
fn restart_keeps_the_cache_and_sigterm_shuts_down_gracefully() {
    let fixture = Fixture::get();
    let nginx = Nginx::start(
        &fixture.root(),
        &NginxOptions::new().access_log().limit_rate(BIG, "1m"),
    );
    let data = tempfile::tempdir().unwrap();
    let mut mirror = Mirror::start(data.path(), &nginx.url(), &fixture.public_key(), &[]);

    let uris = [
        "/names",
        "/versions",
        "/packages/erl_ids",
        "/packages/erl_counter",
        "/tarballs/erl_ids-1.0.0.tar",
        "/tarballs/erl_counter-1.0.0.tar",
    ];
    let mut served = Vec::new();
    for uri in uris {
        let response = mirror.get(uri);
        assert_eq!(response.status(), 200, "{uri}");
        let etag = response.headers()["etag"].to_str().unwrap().to_string();
        let body = response.bytes().unwrap().to_vec();
        assert_eq!(body, fixture.file(uri), "{uri}");
        served.push((uri, body, etag));
    }

    // SIGTERM while a slow download is in flight: the request still completes, then the
    // mirror exits 0.
    let url = mirror.url(BIG);
    let in_flight = std::thread::spawn(move || {
        let response = client().get(url).send().expect("GET");
        (
            response.status().as_u16(),
            response.bytes().map(|b| b.to_vec()),
        )
    });
    eventually(
        Duration::from_secs(20),
        "the package record upstream",
        || (!nginx.requests_for("/packages/big_blob").is_empty()).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        nginx.requests_for(BIG).is_empty(),
        "the tarball transfer ended before SIGTERM"
    );
    let (status, took) = mirror.terminate();
    assert!(status.success(), "exit {status}\n{}", mirror.log());
    assert!(took < Duration::from_secs(15), "exit took {took:?}");
    let (code, body) = in_flight.join().unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        body.expect("the in-flight body"),
        fixture.file(BIG),
        "{}",
        mirror.log()
    );

    // Upstream gone, a new mirror on the same data: the same objects, bytes and ETags.
    drop(nginx);
    let mut mirror = Mirror::start(data.path(), DEAD_UPSTREAM, &fixture.public_key(), &[]);
    for (uri, body, etag) in &served {
        let response = mirror.get(uri);
        assert_eq!(response.status(), 200, "{uri}\n{}", mirror.log());
        assert_eq!(response.headers()["etag"].to_str().unwrap(), etag, "{uri}");
        assert_eq!(&response.bytes().unwrap().to_vec(), body, "{uri}");
    }
    assert_eq!(mirror.get_ok(BIG), fixture.file(BIG));

    // With only idle keep-alive connections open, SIGTERM exits at once.
    let (status, took) = mirror.terminate();
    assert!(status.success(), "exit {status}\n{}", mirror.log());
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9 mid-download
// ---------------------------------------------------------------------------------------------

#[test]
fn kill_9_mid_download_leaves_no_partial_object() {
    let fixture = Fixture::get();
    let expected = fixture.file(BIG);
    let object = BIG.trim_start_matches('/');
    // 2 MiB at 256 KiB/s: about 8 s to send, killed after a fraction of it.
    let slow = Nginx::start(
        &fixture.root(),
        &NginxOptions::new().access_log().limit_rate(BIG, "256k"),
    );
    let data = tempfile::tempdir().unwrap();
    let mut mirror = Mirror::start(data.path(), &slow.url(), &fixture.public_key(), &[]);

    let url = mirror.url(BIG);
    let request = std::thread::spawn(move || {
        client()
            .get(url)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.bytes())
            .map(|b| b.len())
    });
    eventually(
        Duration::from_secs(20),
        "the package record upstream",
        || (!slow.requests_for("/packages/big_blob").is_empty()).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(500));
    mirror.kill9();
    assert!(
        request.join().unwrap().is_err(),
        "the request completed despite kill -9"
    );
    // Upstream logs the transfer when it notices the mirror is gone: cut short.
    let transfer = eventually(Duration::from_secs(20), "the aborted transfer", || {
        slow.requests_for(BIG).pop()
    });
    assert!(
        !transfer.complete && transfer.body_bytes_sent < expected.len() as u64,
        "not killed mid-transfer: {transfer:?}"
    );

    // No object: at most a partial temp file, no blob, no row.
    let tmp = tmp_files(data.path());
    assert!(
        tmp.len() <= 1 && tmp.iter().all(|(_, len)| *len < expected.len() as u64),
        "{tmp:?}"
    );
    assert!(!blob_digests(data.path()).contains(&sha256_hex(&expected)));
    assert!(!stored_paths(data.path()).contains(object));
    // A crash while a blob is being written leaves such a file; make sure there is one.
    std::fs::write(
        data.path().join("mirror/tmp/.tmpCrashed"),
        &expected[..100_000],
    )
    .unwrap();
    drop(slow);

    // Restarted (against an upstream at full speed): tmp is emptied, and the tarball is
    // fetched whole, verified and stored.
    let fast = Nginx::start(&fixture.root(), &NginxOptions::new().access_log());
    let mirror = Mirror::start(data.path(), &fast.url(), &fixture.public_key(), &[]);
    assert_eq!(tmp_files(data.path()), vec![], "tmp not emptied at startup");
    let body = mirror.get_ok(BIG);
    assert_eq!(sha256_hex(&body), sha256_hex(&expected));
    let transfers = upstream_requests(&fast, BIG, 1);
    assert_eq!(transfers.len(), 1, "{transfers:?}");
    assert!(transfers[0].complete);
    assert_eq!(transfers[0].body_bytes_sent, expected.len() as u64);
    assert!(stored_paths(data.path()).contains(object));
    assert!(blob_digests(data.path()).contains(&sha256_hex(&expected)));
}

// ---------------------------------------------------------------------------------------------
// 6. Protocol details
// ---------------------------------------------------------------------------------------------

#[test]
fn protocol_details() {
    let fixture = Fixture::get();
    let nginx = Nginx::start(&fixture.root(), &NginxOptions::new());
    let data = tempfile::tempdir().unwrap();
    let mirror = Mirror::start(data.path(), &nginx.url(), &fixture.public_key(), &[]);
    let addr = mirror.addr.as_str();

    // Registry files and tarballs: upstream's bytes, an ETag, hex.pm's Cache-Control, and no
    // Content-Encoding even to a client that accepts gzip (the gzip is the body itself).
    let mut uris: Vec<(String, &str)> = ["/names", "/versions"]
        .iter()
        .map(|u| (u.to_string(), "public, max-age=3600"))
        .collect();
    uris.extend(
        fixture
            .package_uris()
            .into_iter()
            .map(|u| (u, "public, max-age=3600")),
    );
    uris.extend(
        [
            "/tarballs/erl_ids-1.0.0.tar",
            "/tarballs/shapes-2.0.0.tar",
            BIG,
        ]
        .iter()
        .map(|u| (u.to_string(), "public, max-age=604800")),
    );
    for (uri, cache_control) in &uris {
        let response = raw(addr, "GET", uri, &[("Accept-Encoding", "gzip")]);
        assert_eq!(response.status, 200, "{uri}");
        assert!(
            response.body == fixture.file(uri),
            "{uri}: not upstream's bytes"
        );
        assert_eq!(
            response.header("etag"),
            Some(format!("\"{}\"", sha256_hex(&response.body)).as_str()),
            "{uri}"
        );
        assert_eq!(
            response.header("cache-control"),
            Some(*cache_control),
            "{uri}"
        );
        assert_eq!(response.header("content-encoding"), None, "{uri}");
        assert_eq!(
            response.header("content-length"),
            Some(response.body.len().to_string().as_str()),
            "{uri}"
        );

        // If-None-Match with that ETag (alone, in a list, weak): 304, no body.
        let etag = response.header("etag").unwrap().to_string();
        for tag in [
            etag.clone(),
            format!("\"other\", {etag}"),
            format!("W/{etag}"),
        ] {
            let not_modified = raw(addr, "GET", uri, &[("If-None-Match", &tag)]);
            assert_eq!(not_modified.status, 304, "{uri} If-None-Match: {tag}");
            assert!(not_modified.body.is_empty(), "{uri}: a body with 304");
            assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
        }
        let changed = raw(addr, "GET", uri, &[("If-None-Match", "\"other\"")]);
        assert_eq!(changed.status, 200, "{uri}");
        assert!(changed.body == response.body);

        // HEAD: the same headers, no body.
        let head = raw(addr, "HEAD", uri, &[]);
        assert_eq!(head.status, 200, "{uri}");
        assert!(head.body.is_empty(), "{uri}: HEAD sent a body");
        assert_eq!(head.header("etag"), Some(etag.as_str()), "{uri}");
        assert_eq!(
            head.header("content-length"),
            response.header("content-length"),
            "{uri}"
        );
        assert_eq!(head.header("cache-control"), Some(*cache_control));
    }

    // Mix's HEX_MIRROR=http://m/ sends //packages/x.
    let doubled = raw(addr, "GET", "//packages/erl_ids", &[]);
    assert_eq!(doubled.status, 200);
    assert!(doubled.body == fixture.file("/packages/erl_ids"));

    for path in [
        "/",
        "/nope",
        "/packages",
        "/packages/Erl_ids",
        "/packages/../names",
        "/tarballs/erl_ids.tar",
        "/tarballs/erl_ids-1.0.0.tgz",
    ] {
        assert_eq!(raw(addr, "GET", path, &[]).status, 404, "{path}");
    }
    // Well-formed, but upstream has no such package or release.
    assert_eq!(mirror.get("/packages/no_such_package").status(), 404);
    assert_eq!(mirror.get("/tarballs/erl_ids-9.9.9.tar").status(), 404);

    for method in ["POST", "PUT", "DELETE"] {
        let response = raw(addr, method, "/names", &[("Content-Length", "0")]);
        assert_eq!(response.status, 405, "{method}");
    }

    let health = raw(addr, "GET", "/healthz", &[]);
    assert_eq!(health.status, 200);

    let key = raw(addr, "GET", "/public_key", &[]);
    assert_eq!(key.status, 200);
    assert_eq!(
        key.header("etag"),
        Some(format!("\"{}\"", sha256_hex(&key.body)).as_str())
    );
    let key = String::from_utf8(key.body).unwrap();
    assert!(key.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{key}");
    assert_eq!(
        key.trim(),
        std::fs::read_to_string(fixture.public_key())
            .unwrap()
            .trim()
    );
}

/// A stale package record and its tarball, with an upstream that never answers: the tarball
/// request is bounded by one upstream timeout in all (the record's revalidation and the
/// tarball's fetch share it), not one for each.
#[test]
fn a_tarball_request_waits_at_most_one_upstream_timeout() {
    let fixture = Fixture::get();
    let data = tempfile::tempdir().unwrap();
    let upstream = format!("file://{}", fixture.root().display());
    {
        // The record is stored while upstream works.
        let mirror = Mirror::start(data.path(), &upstream, &fixture.public_key(), &[]);
        mirror.get_ok("/packages/erl_ids");
    }
    // An upstream that accepts and then never answers.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging_url = format!("http://{}", hanging.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut streams = Vec::new();
        hanging.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            match hanging.accept() {
                Ok((stream, _)) => streams.push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let mirror = Mirror::start(
        data.path(),
        &hanging_url,
        &fixture.public_key(),
        &["--registry-ttl", "0", "--upstream-timeout", "2"],
    );
    let started = Instant::now();
    let response = mirror.get("/tarballs/erl_ids-1.0.0.tar");
    let took = started.elapsed();
    assert_eq!(response.status(), 502, "{}", mirror.log());
    let body = response.text().unwrap();
    assert!(body.contains("timed out"), "{body}");
    // Two seconds for the record (then served stale), none left for the tarball.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(3500),
        "took {took:?}, one upstream timeout is 2 s\n{}",
        mirror.log()
    );
    drop(mirror);
    drop(held);
}

// ---------------------------------------------------------------------------------------------
// 7. Configuration
// ---------------------------------------------------------------------------------------------

/// Nothing listens on port 1 of loopback.
const DEAD_UPSTREAM: &str = "http://127.0.0.1:1";
/// Not an address of this machine: binding it fails.
const UNBINDABLE: &str = "192.0.2.1:4000";

/// Gets /packages/erl_ids twice through `mirror`, and checks that this took `expected`
/// upstream requests (`total` counts them over the test).
fn two_gets_take_upstream_requests(
    mirror: &Mirror,
    nginx: &Nginx,
    expected: usize,
    total: &mut usize,
) {
    let uri = "/packages/erl_ids";
    for _ in 0..2 {
        assert_eq!(
            mirror.get_ok(uri),
            Fixture::get().file(uri),
            "{}",
            mirror.log()
        );
    }
    *total += expected;
    assert_eq!(upstream_requests(nginx, uri, *total).len(), *total);
}

fn has_store(data: &Path) -> bool {
    data.join("mirror/mirror.db").exists()
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[test]
fn settings_come_from_flags_then_env_then_config_file() {
    let fixture = Fixture::get();
    let nginx = Nginx::start(&fixture.root(), &NginxOptions::new().access_log());
    let scratch = tempfile::tempdir().unwrap();
    let dir = |name: &str| scratch.path().join(name);
    let key = fixture.public_key();
    let key = key.to_str().unwrap();
    let missing_key = dir("no-such-key.pem");
    let missing_key = missing_key.to_str().unwrap();
    let mut total = 0;

    // The file alone, every key of it. registry_ttl = 0: both GETs go upstream.
    let file = dir("all.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nupstream = {}\nupstream_key = {}\nupstream_repository = \"hexpm\"\nregistry_ttl = 0\nupstream_timeout = 20\nmemory_cache_mb = 16\ndata = {}\n",
            toml_string(&nginx.url()),
            toml_string(key),
            toml_string(dir("file-data").to_str().unwrap()),
        ),
    )
    .unwrap();
    let mut command = precomp_command();
    command.arg("serve").arg("--config").arg(&file);
    let mirror = Mirror::spawn(command);
    two_gets_take_upstream_requests(&mirror, &nginx, 2, &mut total);
    assert!(has_store(&dir("file-data")));
    drop(mirror);

    // The environment alone.
    let mut command = precomp_command();
    command
        .arg("serve")
        .env("PRECOMP_LISTEN", "127.0.0.1:0")
        .env("PRECOMP_UPSTREAM", nginx.url())
        .env("PRECOMP_UPSTREAM_KEY", key)
        .env("PRECOMP_UPSTREAM_REPOSITORY", "hexpm")
        .env("PRECOMP_REGISTRY_TTL", "0")
        .env("PRECOMP_UPSTREAM_TIMEOUT", "20")
        .env("PRECOMP_MEMORY_CACHE_MB", "16")
        .env("PRECOMP_DATA", dir("env-data"));
    let mirror = Mirror::spawn(command);
    two_gets_take_upstream_requests(&mirror, &nginx, 2, &mut total);
    assert!(has_store(&dir("env-data")));
    drop(mirror);

    // A file and an environment whose every value would fail (an address not of this
    // machine, a dead upstream, a key file that does not exist, TTL 0).
    let bad_file = dir("bad.toml");
    std::fs::write(
        &bad_file,
        format!(
            "listen = \"{UNBINDABLE}\"\nupstream = \"{DEAD_UPSTREAM}\"\nupstream_key = {}\nregistry_ttl = 0\ndata = {}\n",
            toml_string(missing_key),
            toml_string(dir("bad-file-data").to_str().unwrap()),
        ),
    )
    .unwrap();
    let bad_env = |command: &mut Command| {
        command
            .env("PRECOMP_LISTEN", UNBINDABLE)
            .env("PRECOMP_UPSTREAM", DEAD_UPSTREAM)
            .env("PRECOMP_UPSTREAM_KEY", missing_key)
            .env("PRECOMP_REGISTRY_TTL", "0")
            .env("PRECOMP_DATA", dir("bad-env-data"));
    };

    // Flags override both.
    let mut command = precomp_command();
    command.arg("serve").arg("--config").arg(&bad_file);
    bad_env(&mut command);
    command
        .args(["--listen", "127.0.0.1:0", "--upstream", &nginx.url()])
        .args(["--upstream-key", key, "--registry-ttl", "300", "--data"])
        .arg(dir("flag-data"));
    let mirror = Mirror::spawn(command);
    two_gets_take_upstream_requests(&mirror, &nginx, 1, &mut total);
    assert!(has_store(&dir("flag-data")));
    drop(mirror);

    // The environment overrides the file.
    let mut command = precomp_command();
    command
        .arg("serve")
        .arg("--config")
        .arg(&bad_file)
        .env("PRECOMP_LISTEN", "127.0.0.1:0")
        .env("PRECOMP_UPSTREAM", nginx.url())
        .env("PRECOMP_UPSTREAM_KEY", key)
        .env("PRECOMP_REGISTRY_TTL", "300")
        .env("PRECOMP_DATA", dir("env-over-file-data"));
    let mirror = Mirror::spawn(command);
    two_gets_take_upstream_requests(&mirror, &nginx, 1, &mut total);
    assert!(has_store(&dir("env-over-file-data")));
    drop(mirror);

    // The bad values were never used.
    assert!(!has_store(&dir("bad-file-data")));
    assert!(!has_store(&dir("bad-env-data")));

    // And they do fail when nothing overrides them: the check above can fail.
    let mut command = precomp_command();
    command.arg("serve").arg("--config").arg(&bad_file);
    let output = output_within(command, Duration::from_secs(30));
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no-such-key.pem"),
        "{}",
        describe(&output)
    );
}

#[test]
fn an_unknown_config_key_is_an_error_naming_it() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("precomp.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\nupstream_ttl = 60\nregistry_ttl = 10\n",
    )
    .unwrap();
    let mut command = precomp_command();
    command
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .arg("--data")
        .arg(scratch.path().join("data"));
    let output = output_within(command, Duration::from_secs(30));
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("upstream_ttl"), "{stderr}");
    assert!(stderr.contains("precomp.toml"), "{stderr}");
    assert!(!has_store(&scratch.path().join("data")));
}

#[test]
fn serve_help_documents_every_setting() {
    let help = ok(precomp(&["serve", "--help"]));
    let lines: Vec<&str> = help.lines().collect();
    for (flag, env) in [
        ("--config", "PRECOMP_CONFIG"),
        ("--listen", "PRECOMP_LISTEN"),
        ("--upstream", "PRECOMP_UPSTREAM"),
        ("--upstream-key", "PRECOMP_UPSTREAM_KEY"),
        ("--upstream-repository", "PRECOMP_UPSTREAM_REPOSITORY"),
        ("--registry-ttl", "PRECOMP_REGISTRY_TTL"),
        ("--upstream-timeout", "PRECOMP_UPSTREAM_TIMEOUT"),
        ("--memory-cache-mb", "PRECOMP_MEMORY_CACHE_MB"),
        ("--data", "PRECOMP_DATA"),
        ("--admin-listen", "PRECOMP_ADMIN_LISTEN"),
        ("--header-read-timeout", "PRECOMP_HEADER_READ_TIMEOUT"),
        ("--idle-timeout", "PRECOMP_IDLE_TIMEOUT"),
        ("--body-read-timeout", "PRECOMP_BODY_READ_TIMEOUT"),
        ("--body-min-rate", "PRECOMP_BODY_MIN_RATE"),
        ("--request-timeout", "PRECOMP_REQUEST_TIMEOUT"),
        ("--max-requests", "PRECOMP_MAX_REQUESTS"),
        ("--max-body-memory-mb", "PRECOMP_MAX_BODY_MEMORY_MB"),
        ("--max-connections", "PRECOMP_MAX_CONNECTIONS"),
        (
            "--max-connections-per-client",
            "PRECOMP_MAX_CONNECTIONS_PER_CLIENT",
        ),
        ("--trusted-proxy", "PRECOMP_TRUSTED_PROXIES"),
    ] {
        // `      --flag <VALUE>`, then its description, then `[env: NAME=]`.
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(&format!("{flag} <")))
            .unwrap_or_else(|| panic!("{flag} not in serve --help:\n{help}"));
        let description = lines[at + 1].trim();
        assert!(
            !description.is_empty() && !description.starts_with('['),
            "{flag} has no description:\n{help}"
        );
        let block: Vec<&str> = lines[at + 1..]
            .iter()
            .take_while(|l| !l.trim_start().starts_with('-'))
            .copied()
            .collect();
        assert!(
            block.iter().any(|l| l.contains(&format!("[env: {env}="))),
            "{flag}: no [env: {env}=] in serve --help:\n{help}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Mix's Hex client
// ---------------------------------------------------------------------------------------------

/// A Mix project depending on erl_ids (and through it erl_counter), with its own HOME, HEX_HOME
/// and MIX_HOME in a scratch directory; the installed Hex archive is used where it is
/// (`MIX_ARCHIVES`, from the environment's MIX_HOME).
struct MixConsumer {
    scratch: tempfile::TempDir,
    archives: String,
}

impl MixConsumer {
    fn new() -> MixConsumer {
        let archives = Command::new("elixir")
            .args(["-e", "IO.puts(Mix.path_for(:archives))"])
            .output()
            .unwrap();
        let archives = String::from_utf8(archives.stdout)
            .unwrap()
            .trim()
            .to_string();
        let scratch = tempfile::tempdir().unwrap();
        let consumer = MixConsumer { scratch, archives };
        std::fs::create_dir_all(consumer.project()).unwrap();
        std::fs::write(
            consumer.project().join("mix.exs"),
            "defmodule Consumer.MixProject do\n  use Mix.Project\n\n  def project do\n    [app: :consumer, version: \"0.1.0\", deps: [{:erl_ids, \"~> 1.0\"}]]\n  end\nend\n",
        )
        .unwrap();
        consumer
    }

    fn project(&self) -> PathBuf {
        self.scratch.path().join("consumer")
    }

    /// `mix ARGS` in the project with `env` (and no Hex setting from the test's environment);
    /// stdin is closed, so Hex's "authenticate now?" prompt is answered no.
    fn mix(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new("mix");
        command
            .args(args)
            .current_dir(self.project())
            .env("HOME", self.scratch.path().join("home"))
            .env("MIX_HOME", self.scratch.path().join("mix"))
            .env("MIX_ARCHIVES", &self.archives)
            .env("HEX_HOME", self.scratch.path().join("hex"));
        for name in [
            "HEX_MIRROR",
            "HEX_MIRROR_URL",
            "HEX_TRUSTED_MIRROR",
            "HEX_TRUSTED_MIRROR_URL",
            "HEX_UNSAFE_REGISTRY",
            "HEX_NO_VERIFY_REPO_ORIGIN",
            "HEX_OFFLINE",
            "HEX_REPOS_KEY",
            "HEX_API_KEY",
            "HEX_API_URL",
        ] {
            command.env_remove(name);
        }
        command.envs(env.iter().copied());
        output_within(command, Duration::from_secs(180))
    }

    /// `mix hex.repo set hexpm ARGS`, which must succeed.
    fn set_hexpm(&self, args: &[&str]) {
        let set = self.mix(&[&["hex.repo", "set", "hexpm"], args].concat(), &[]);
        assert!(set.status.success(), "{}", describe(&set));
    }

    /// Whether Hex fetched `dep`: its `.hex` metadata file, written after the unpack.
    fn fetched(&self, dep: &str) -> bool {
        self.project().join("deps").join(dep).join(".hex").exists()
    }
}

/// `mix deps.get` through the mirror, Hex verifying the registry with the fixture's key.
/// Ignored, as the other tests that need Mix's Hex client: run them where `mix local.hex` was
/// run, or with a Hex built from its source in a scratch MIX_HOME (README, Tests):
/// `MIX_HOME=DIR cargo test -p precomp --test mirror -- --ignored mix_`.
#[test]
#[ignore = "needs Mix's Hex client, which only hex.pm provides (`mix local.hex`)"]
fn mix_deps_get_through_the_mirror() {
    require_mix_hex_client();
    let fixture = Fixture::get();
    let nginx = Nginx::start(&fixture.root(), &NginxOptions::new());
    let data = tempfile::tempdir().unwrap();
    let mirror = Mirror::start(data.path(), &nginx.url(), &fixture.public_key(), &[]);

    let consumer = MixConsumer::new();
    consumer.set_hexpm(&["--public-key", fixture.public_key().to_str().unwrap()]);
    // A trailing slash, as users write it: Hex then asks for //packages/erl_ids.
    let mirror_url = format!("{}/", mirror.url);
    let deps_get = consumer.mix(&["deps.get"], &[("HEX_MIRROR", &mirror_url)]);
    assert!(
        deps_get.status.success(),
        "mix deps.get through the mirror failed: {}\n{}",
        describe(&deps_get),
        mirror.log()
    );
    for dep in ["erl_ids", "erl_counter"] {
        assert!(consumer.fetched(dep), "deps/{dep} missing");
    }
    let lock = std::fs::read_to_string(consumer.project().join("mix.lock")).unwrap();
    let outer = sha256_hex(&fixture.file("/tarballs/erl_ids-1.0.0.tar"));
    assert!(lock.contains(&outer), "mix.lock lacks {outer}: {lock}");
}

/// One request a client made: method, path, and its `Authorization` header if it sent one.
#[derive(Clone, Debug)]
struct SeenRequest {
    method: String,
    path: String,
    authorization: Option<String>,
}

/// A loopback forwarder in front of the mirror that records each request's `Authorization`
/// header, so a test can say what a client sent (the mirror logs no tokens). It passes the
/// method, path, body and `Authorization` on, and the status, body, `content-type`, `etag`
/// and `www-authenticate` back, one request per connection.
struct AuthSpy {
    url: String,
    seen: Arc<std::sync::Mutex<Vec<SeenRequest>>>,
}

impl AuthSpy {
    fn start(target: &str) -> AuthSpy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (target, record) = (target.to_string(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (target, record) = (target.clone(), record.clone());
                std::thread::spawn(move || {
                    let _ = AuthSpy::forward(stream, &target, &record);
                });
            }
        });
        AuthSpy { url, seen }
    }

    fn forward(
        mut stream: TcpStream,
        target: &str,
        record: &std::sync::Mutex<Vec<SeenRequest>>,
    ) -> std::io::Result<()> {
        let mut reader = std::io::BufReader::new(stream.try_clone()?);
        let incoming = precomp_testkit::http::read_request(&mut reader)?;
        let authorization = incoming.header("authorization").map(str::to_string);
        let precomp_testkit::http::Request {
            method, path, body, ..
        } = incoming;
        record.lock().unwrap().push(SeenRequest {
            method: method.clone(),
            path: path.clone(),
            authorization: authorization.clone(),
        });
        let mut request = client()
            .request(method.parse().unwrap(), format!("{target}{path}"))
            .body(body);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let (status, headers, body) = match request.send() {
            Ok(response) => (
                response.status().as_u16(),
                response.headers().clone(),
                response.bytes().map(|b| b.to_vec()).unwrap_or_default(),
            ),
            Err(e) => (502, Default::default(), e.to_string().into_bytes()),
        };
        let mut head = format!(
            "HTTP/1.1 {status} Forwarded\r\ncontent-length: {}\r\n",
            body.len()
        );
        for name in ["content-type", "etag", "www-authenticate"] {
            if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        head.push_str("connection: close\r\n\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)
    }

    /// Every request recorded so far; the record is then emptied.
    fn take(&self) -> Vec<SeenRequest> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// A mirror run with `--require-read-token` and Mix, as docs/mirror.md ("Tokens and scopes")
/// and docs/client.md (CI) say. Hex sends the `hexpm` repository's auth key (`mix hex.repo set
/// hexpm --auth-key TOKEN`) as the bare `authorization` header, and only to a mirror named
/// trusted (`HEX_TRUSTED_MIRROR`): with `HEX_MIRROR` it sends nothing and is refused. Hex 2.4
/// and later first try to exchange the hexpm repository's key for an OAuth token at Hex's API
/// (sending the mirror's token there): `--no-oauth-exchange` makes them send it as it is.
/// HEX_API_URL points at the spy, so nothing here goes to hex.pm.
#[test]
#[ignore = "needs Mix's Hex client, which only hex.pm provides (`mix local.hex`)"]
fn mix_sends_the_read_token_only_to_a_trusted_mirror() {
    let hex = require_mix_hex_client();
    let exchanges_keys = hex >= (2, 4, 0);
    let fixture = Fixture::get();
    let (_nginx, _data, mirror, token) = read_token_mirror(fixture);
    let spy = AuthSpy::start(&mirror.url);
    let api_url = format!("{}/api", spy.url);
    let public_key = fixture.public_key();
    let public_key = public_key.to_str().unwrap();
    let registry_requests = |seen: &[SeenRequest]| -> Vec<SeenRequest> {
        seen.iter()
            .filter(|r| r.path.contains("/packages/") || r.path.contains("/tarballs/"))
            .cloned()
            .collect()
    };

    // No key: refused. Hex before 2.4 shows the mirror's 401 text, which says what to send;
    // 2.4 and later show their own prompt to authenticate (answered no: stdin is closed) and
    // that the package is not in the registry.
    let consumer = MixConsumer::new();
    consumer.set_hexpm(&["--public-key", public_key]);
    let no_key = consumer.mix(
        &["deps.get"],
        &[("HEX_TRUSTED_MIRROR", &spy.url), ("HEX_API_URL", &api_url)],
    );
    let log = text(&no_key);
    assert!(!no_key.status.success(), "{log}");
    assert!(!consumer.fetched("erl_ids"), "{log}");
    if exchanges_keys {
        assert!(log.contains("No authenticated user found"), "{log}");
    } else {
        assert!(log.contains("this needs a token"), "{log}");
        assert!(log.contains("precomp token create"), "{log}");
    }
    assert!(log.contains("No package with name erl_ids"), "{log}");
    let seen = registry_requests(&spy.take());
    assert!(!seen.is_empty(), "Hex asked the mirror for nothing");
    assert!(seen.iter().all(|r| r.authorization.is_none()), "{seen:?}");

    // The key, as the docs say to set it, and HEX_TRUSTED_MIRROR: every registry and tarball
    // request carries it, bare, and deps.get succeeds.
    let key_args: Vec<&str> = if exchanges_keys {
        vec!["--auth-key", &token, "--no-oauth-exchange"]
    } else {
        vec!["--auth-key", &token]
    };
    let consumer = MixConsumer::new();
    consumer.set_hexpm(&[&["--public-key", public_key][..], &key_args].concat());
    let trusted = consumer.mix(
        &["deps.get"],
        &[("HEX_TRUSTED_MIRROR", &spy.url), ("HEX_API_URL", &api_url)],
    );
    assert!(
        trusted.status.success(),
        "{}\n{}",
        describe(&trusted),
        mirror.log()
    );
    for dep in ["erl_ids", "erl_counter"] {
        assert!(consumer.fetched(dep), "deps/{dep} missing");
    }
    let seen = registry_requests(&spy.take());
    for path in [
        "/packages/erl_ids",
        "/tarballs/erl_ids-1.0.0.tar",
        "/tarballs/erl_counter-1.0.0.tar",
    ] {
        assert!(
            seen.iter().any(|r| r.path.ends_with(path)),
            "{path}: {seen:?}"
        );
    }
    assert!(
        seen.iter()
            .all(|r| r.authorization.as_deref() == Some(token.as_str())),
        "{seen:?}"
    );

    // The same key with HEX_MIRROR (not trusted): Hex sends no key, and is refused.
    let consumer = MixConsumer::new();
    consumer.set_hexpm(&[&["--public-key", public_key][..], &key_args].concat());
    let untrusted = consumer.mix(
        &["deps.get"],
        &[("HEX_MIRROR", &spy.url), ("HEX_API_URL", &api_url)],
    );
    let log = text(&untrusted);
    assert!(!untrusted.status.success(), "{log}");
    assert!(!consumer.fetched("erl_ids"), "{log}");
    let seen = spy.take();
    assert!(!registry_requests(&seen).is_empty(), "{seen:?}");
    assert!(seen.iter().all(|r| r.authorization.is_none()), "{seen:?}");

    // Hex 2.4 and later, without --no-oauth-exchange: the key goes to Hex's API (here the spy)
    // to be exchanged for an OAuth token, the exchange fails, and deps.get with it.
    if exchanges_keys {
        let consumer = MixConsumer::new();
        consumer.set_hexpm(&["--public-key", public_key, "--auth-key", &token]);
        let exchanged = consumer.mix(
            &["deps.get"],
            &[("HEX_TRUSTED_MIRROR", &spy.url), ("HEX_API_URL", &api_url)],
        );
        let log = text(&exchanged);
        assert!(!exchanged.status.success(), "{log}");
        assert!(
            log.contains("Failed to exchange API key for OAuth token"),
            "{log}"
        );
        let seen = spy.take();
        assert!(
            seen.iter()
                .any(|r| r.method == "POST" && r.path.starts_with("/api/oauth")),
            "{seen:?}"
        );
        assert!(
            registry_requests(&seen)
                .iter()
                .all(|r| r.authorization.is_none()),
            "{seen:?}"
        );
    }
}
