//! Hostile clients against a real `precomp serve`: slow and silent connections, sockets past
//! the descriptor limit, stalled and flooding request bodies. The server must close what
//! misbehaves, keep answering others (and `/healthz` on the admin listener) within a budget,
//! and keep its memory bounded. Loopback only (the whole of 127.0.0.0/8 is loopback: hostile
//! clients connect from 127.0.0.2 and up, well-behaved ones from 127.0.0.1), bounded in
//! counts and time (each test well under a minute), the server under a lowered open file
//! limit (`prlimit`) with small configured limits.
//!
//! Also: HTTP/2 with prior knowledge (h2c) on the same port as HTTP/1.1 (curl).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use common::precomp_command;

const NORMAL: &str = "127.0.0.1";

/// A `precomp serve` under `prlimit --nofile=FDS`, with an admin listener, in front of an
/// empty repository directory (nothing here needs upstream: `/public_key` and the artifact
/// API answer from the mirror itself). Killed when dropped.
struct Server {
    child: Child,
    main: SocketAddr,
    admin: SocketAddr,
    log: tempfile::NamedTempFile,
    data: tempfile::TempDir,
}

impl Server {
    fn start(fds: u32, args: &[&str]) -> Server {
        Server::start_with(fds, args, &[])
    }

    /// With a signed upstream holding the registry records of `locks`' releases
    /// (`common::signed_upstream`).
    fn start_with(fds: u32, args: &[&str], locks: &[&str]) -> Server {
        let data = tempfile::tempdir().unwrap();
        let upstream = data.path().join("empty-upstream");
        std::fs::create_dir_all(&upstream).unwrap();
        let (_, upstream_key) = common::signed_upstream(&upstream, locks);
        let precomp = precomp_command();
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={fds}:{fds}"))
            .arg("--")
            .arg(precomp.get_program())
            .arg("--data")
            .arg(data.path())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--upstream")
            .arg(format!("file://{}", upstream.display()))
            .arg("--upstream-key")
            .arg(upstream_key)
            .args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PRECOMP_") {
                command.env_remove(key);
            }
        }
        let log = tempfile::NamedTempFile::new().unwrap();
        command
            .env("PRECOMP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap());
        let mut child = command.spawn().expect("spawn prlimit precomp serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let second = lines.next();
            let _ = tx.send((first, second));
            for _ in lines {}
        });
        let address = |line: Option<std::io::Result<String>>, prefix: &str| -> SocketAddr {
            let line = line.and_then(Result::ok).unwrap_or_default();
            line.strip_prefix(prefix)
                .and_then(|url| url.strip_prefix("http://"))
                .unwrap_or_else(|| panic!("unexpected line {line:?}"))
                .parse()
                .unwrap()
        };
        let (first, second) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(lines) => lines,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "precomp serve did not start: {}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                );
            }
        };
        let main = address(first, "precomp mirror listening on ");
        let admin = address(second, "precomp admin listening on ");
        Server {
            child,
            main,
            admin,
            log,
            data,
        }
    }

    fn log(&self) -> String {
        format!(
            "server log:\n{}",
            std::fs::read_to_string(self.log.path()).unwrap_or_default()
        )
    }

    /// The server's resident memory, in KiB (`VmRSS` of /proc/PID/status).
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// The value of metric `name` with all of `labels` (0 when absent), from the admin
    /// listener.
    async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (status, text) = get(NORMAL, self.admin, "/metrics").await.unwrap();
        assert_eq!(status, 200, "{text}");
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                    && labels.iter().all(|l| line.contains(l))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))?;
    socket.connect(to).await
}

/// `GET path` from `from` with `Connection: close`, within 10 s: the status and body.
async fn get(from: &str, to: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    request(from, to, "GET", path, &[], b"").await
}

async fn request(
    from: &str,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = connect(from, to).await?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n");
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("no answer within 10 s")))
}

/// Reads `stream` until the server closes it (EOF or reset); how long that took, or `None`
/// if it is still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

/// A well-behaved client is answered, quickly.
async fn assert_served(server: &Server, budget: Duration) {
    let started = Instant::now();
    let (status, body) = get(NORMAL, server.main, "/public_key")
        .await
        .unwrap_or_else(|e| panic!("a normal client got no answer: {e}\n{}", server.log()));
    assert_eq!(status, 200, "{body}\n{}", server.log());
    assert!(body.contains("BEGIN PUBLIC KEY"), "{body}");
    let took = started.elapsed();
    assert!(took < budget, "a normal client waited {took:?}");
}

/// `/healthz` on the admin listener answers `ok`, quickly.
async fn assert_healthy(server: &Server, budget: Duration) {
    let started = Instant::now();
    let (status, body) = get(NORMAL, server.admin, "/healthz")
        .await
        .unwrap_or_else(|e| panic!("/healthz got no answer: {e}\n{}", server.log()));
    assert_eq!((status, body.as_str()), (200, "ok\n"), "{}", server.log());
    let took = started.elapsed();
    assert!(took < budget, "/healthz took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_connections_are_closed_after_the_header_timeout() {
    let server = Server::start(
        1024,
        &["--header-read-timeout", "2", "--idle-timeout", "30"],
    );
    let mut silent = Vec::new();
    for _ in 0..30 {
        silent.push(connect("127.0.0.2", server.main).await.unwrap());
    }
    // Slow headers: a request line and one header line, then a byte every 300 ms.
    let mut slow = Vec::new();
    for _ in 0..30 {
        let mut stream = connect("127.0.0.3", server.main).await.unwrap();
        stream
            .write_all(b"GET /public_key HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    let dripping = tokio::spawn(async move {
        for _ in 0..20 {
            for stream in &mut slow {
                let _ = stream.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        slow
    });
    assert_served(&server, Duration::from_secs(1)).await;

    for stream in &mut silent {
        let took = closed_within(stream, Duration::from_secs(6))
            .await
            .unwrap_or_else(|| panic!("a silent connection is still open\n{}", server.log()));
        assert!(took < Duration::from_secs(4), "closed after {took:?}");
    }
    let mut slow = dripping.await.unwrap();
    for stream in &mut slow {
        // Long closed by now (2 s of header time; the drip ran 6 s): reads see the end.
        assert!(
            closed_within(stream, Duration::from_secs(2))
                .await
                .is_some(),
            "a slow-header connection is still open\n{}",
            server.log()
        );
    }
    assert!(
        server
            .metric("precomp_mirror_connections_closed_total", &["no_request"])
            .await
            >= 30.0
    );
    assert_served(&server, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_past_the_descriptor_limit_leave_health_and_other_clients_served() {
    // 400 descriptors; 500 hostile sockets. The server keeps 192 for itself, so at most 150
    // connections, 100 per client address.
    let server = Server::start(
        400,
        &[
            "--max-connections",
            "150",
            "--max-connections-per-client",
            "100",
            "--header-read-timeout",
            "10",
            "--idle-timeout",
            "10",
        ],
    );
    let started = Instant::now();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..400 {
        held.push(connect("127.0.0.2", server.main).await.unwrap());
    }
    // Over the per-client limit: answered 503 and closed at once.
    for stream in held.iter_mut().skip(100) {
        if closed_within(stream, Duration::from_millis(500))
            .await
            .is_some()
        {
            refused += 1;
        }
    }
    assert_eq!(refused, 300, "{}", server.log());
    assert_served(&server, Duration::from_secs(1)).await;
    assert_healthy(&server, Duration::from_secs(1)).await;

    // Another address fills the total: 50 of its 100 get in.
    for _ in 0..100 {
        held.push(connect("127.0.0.3", server.main).await.unwrap());
    }
    let mut refused_total = 0;
    for stream in held.iter_mut().skip(400 + 50) {
        if closed_within(stream, Duration::from_millis(500))
            .await
            .is_some()
        {
            refused_total += 1;
        }
    }
    assert_eq!(refused_total, 50, "{}", server.log());
    // At the limit in total, a normal client is refused too (503, or a reset when its request
    // crossed the refusal), but the admin listener answers.
    if let Ok((status, body)) = get(NORMAL, server.main, "/public_key").await {
        assert_eq!(status, 503, "{body}");
    }
    assert_healthy(&server, Duration::from_secs(1)).await;
    assert!(
        server
            .metric("precomp_mirror_connections_refused_total", &["per_client"])
            .await
            >= 300.0
    );
    assert!(
        server
            .metric("precomp_mirror_connections_refused_total", &["\"total\""])
            .await
            >= 51.0
    );
    assert_eq!(
        server
            .metric("precomp_mirror_connections", &["listener=\"main\""])
            .await as u64,
        150
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "too slow to test the limits"
    );

    // The held sockets time out (10 s of no request); the server is itself again.
    for stream in held.iter_mut().take(100) {
        assert!(
            closed_within(stream, Duration::from_secs(15))
                .await
                .is_some(),
            "an idle socket was never closed\n{}",
            server.log()
        );
    }
    drop(held);
    assert_served(&server, Duration::from_secs(1)).await;
}

/// A miss report body: JSON-ish junk of `size` bytes (the server reads it whole before
/// parsing).
fn junk_body(size: usize) -> Vec<u8> {
    let mut body = b"{\"package\": \"".to_vec();
    body.resize(size, b'a');
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_are_cut_off_and_memory_stays_bounded() {
    let server = Server::start(
        1024,
        &["--body-read-timeout", "2", "--max-body-memory-mb", "16"],
    );
    let before = server.rss_kib();
    // 200 clients declare a 2 MB miss report, send 256 KiB of it, and stall.
    let declared = 2_000_000;
    let sent = junk_body(256 * 1024);
    let mut stalled = Vec::new();
    for i in 0..200 {
        let from = format!("127.0.0.{}", 10 + i % 20);
        let mut stream = connect(&from, server.main).await.unwrap();
        let head = format!(
            "POST /precomp/v1/misses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {declared}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let _ = stream.write_all(&sent).await;
        stalled.push(stream);
    }
    let mut peak = server.rss_kib();
    assert_served(&server, Duration::from_secs(1)).await;
    // Every one is answered (429: over the memory budget; 408: cut off after 2 s of nothing)
    // and closed.
    let mut statuses = std::collections::BTreeMap::new();
    for stream in &mut stalled {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut answer));
        match read.await {
            Ok(_) => {
                let status = String::from_utf8_lossy(&answer)
                    .split(' ')
                    .nth(1)
                    .unwrap_or("reset")
                    .to_string();
                *statuses.entry(status).or_insert(0) += 1;
            }
            Err(_) => panic!("a stalled body is still being waited for\n{}", server.log()),
        }
        peak = peak.max(server.rss_kib());
    }
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!("stalled bodies: answers {statuses:?}, RSS {before} KiB -> peak {peak} KiB");
    assert!(
        statuses.get("429").copied().unwrap_or(0) > 0,
        "{statuses:?}"
    );
    assert!(
        statuses.get("408").copied().unwrap_or(0) > 0,
        "{statuses:?}"
    );
    assert!(
        statuses
            .keys()
            .all(|s| s == "429" || s == "408" || s == "reset"),
        "{statuses:?}"
    );
    // 200 x 2 MB would be 400 MB; the budget is 16 MiB.
    assert!(
        growth_mib < 96,
        "RSS grew by {growth_mib} MiB\n{}",
        server.log()
    );
    assert!(
        server
            .metric("precomp_mirror_requests_limited_total", &["body_stalled"])
            .await
            > 0.0
    );
    assert_served(&server, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_misses_is_refused_not_buffered() {
    let server = Server::start(1024, &["--max-body-memory-mb", "8"]);
    let before = server.rss_kib();
    // Over the miss report's bound: 413 from its declared length, the body discarded unread.
    let (status, body) = request(
        NORMAL,
        server.main,
        "POST",
        "/precomp/v1/misses",
        &[],
        &junk_body(3_000_000),
    )
    .await
    .unwrap();
    assert_eq!(status, 413, "{body}");

    // 64 clients at once, each a complete 2 MB report: 8 MiB of budget holds 4 of them at a
    // time; the rest are told to come back (429), none is held in memory past the budget.
    let body = junk_body(2_000_000);
    let mut clients = Vec::new();
    for i in 0..64 {
        let body = body.clone();
        let to = server.main;
        clients.push(tokio::spawn(async move {
            let from = format!("127.0.1.{}", 1 + i % 50);
            request(&from, to, "POST", "/precomp/v1/misses", &[], &body).await
        }));
    }
    let mut statuses = std::collections::BTreeMap::new();
    let mut peak = before;
    for client in clients {
        let (status, _) = client.await.unwrap().unwrap();
        *statuses.entry(status).or_insert(0) += 1;
        peak = peak.max(server.rss_kib());
    }
    eprintln!("flood: answers {statuses:?}, RSS {before} KiB -> peak {peak} KiB");
    // 400: read within the budget, then refused as not JSON; 429: no budget left.
    assert!(
        statuses.keys().all(|s| *s == 400 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.get(&429).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert!(statuses.get(&400).copied().unwrap_or(0) > 0, "{statuses:?}");
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 96,
        "RSS grew by {growth_mib} MiB\n{}",
        server.log()
    );
    assert_served(&server, Duration::from_secs(1)).await;
}

/// A one-entry mix.lock pinning the leaf package `name` 1.0.0 with these checksums.
fn leaf_lock(name: &str, inner: &str, outer: &str) -> String {
    format!("%{{\n  \"{name}\": {{:hex, :{name}, \"1.0.0\", \"{inner}\", [:mix], [], \"hexpm\", \"{outer}\"}},\n}}\n")
}

/// A miss report of the leaf `name` pinned by `lock` with `outer` checksum, with the base key
/// its inputs give (so only the registry check can refuse it).
fn leaf_miss(name: &str, lock: &str, outer: [u8; 32]) -> Vec<u8> {
    use precomp_proto::buildkey::{BuildInputs, Manager, PackageRef, Target};
    let key = BuildInputs {
        package: PackageRef {
            name: name.into(),
            version: "1.0.0".into(),
            outer_checksum: outer,
        },
        manager: Manager::Mix,
        closure: vec![],
        otp_major: "25".into(),
        elixir: "1.14.0".into(),
        mix_env: "prod".into(),
        target: Target::Any,
        compile_env: vec![],
    }
    .base_key()
    .unwrap()
    .to_string();
    serde_json::to_vec(&serde_json::json!({
        "package": name, "version": "1.0.0", "base_key": key, "reason": "not built",
        "otp_major": "25", "elixir": "1.14.0", "mix_env": "prod", "target": "any",
        "lock": lock, "manager": "mix", "compile_env": [], "closure": [],
    }))
    .unwrap()
}

/// A flood of misses: forged ones (keys consistent with their locks, checksums not the
/// registry's) are refused by the registry check and never stored; real ones open at most
/// `--max-open-misses` rows (429 past it), repeats only count, one address past its rate gets
/// 429; the database stays bounded and other clients are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_real_and_forged_misses_keeps_the_database_bounded() {
    let names: Vec<String> = (0..24).map(|i| format!("leaf_{i:02}")).collect();
    let outer = |i: usize| [i as u8 + 1; 32];
    let locks: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| leaf_lock(name, &"a".repeat(64), &hex::encode(outer(i))))
        .collect();
    let lock_refs: Vec<&str> = locks.iter().map(String::as_str).collect();
    let server = Server::start_with(
        1024,
        &[
            "--max-open-misses",
            "8",
            "--miss-reports-per-client",
            "20",
            "--miss-reports-total",
            "1000",
        ],
        &lock_refs,
    );
    let mut statuses = std::collections::BTreeMap::<(&str, u16), u32>::new();
    let mut clients = Vec::new();
    // Forged: each of 100 reports from its own address claims other checksums for a
    // release upstream has (its key computed from the forged lock).
    for i in 0..100usize {
        let name = names[i % names.len()].clone();
        let forged_outer = [0xee; 32];
        let lock = leaf_lock(&name, &"f".repeat(64), &hex::encode(forged_outer));
        let body = leaf_miss(&name, &lock, forged_outer);
        let to = server.main;
        clients.push(tokio::spawn(async move {
            let from = format!("127.0.2.{}", 1 + i % 200);
            let answer = request(&from, to, "POST", "/precomp/v1/misses", &[], &body).await;
            ("forged", answer)
        }));
    }
    // Real: every leaf once, from 24 addresses.
    for (i, name) in names.iter().enumerate() {
        let body = leaf_miss(name, &locks[i], outer(i));
        let to = server.main;
        clients.push(tokio::spawn(async move {
            let from = format!("127.0.3.{}", 1 + i);
            let answer = request(&from, to, "POST", "/precomp/v1/misses", &[], &body).await;
            ("real", answer)
        }));
    }
    for client in clients {
        let (kind, answer) = client.await.unwrap();
        let (status, body) = answer.unwrap();
        if kind == "forged" {
            assert!(
                status == 422 && body.contains("checksum") && !body.contains(&"a".repeat(64)),
                "{status} {body}"
            );
        }
        *statuses.entry((kind, status)).or_insert(0) += 1;
    }
    eprintln!("miss flood: {statuses:?}");
    assert_eq!(statuses.get(&("real", 201)), Some(&8), "{statuses:?}");
    assert_eq!(statuses.get(&("real", 429)), Some(&16), "{statuses:?}");
    assert_served(&server, Duration::from_secs(1)).await;

    // One address repeating an open miss: counted (200) up to its rate, then 429.
    let db = rusqlite::Connection::open(server.data.path().join("artifacts/artifacts.db")).unwrap();
    let open: String = db
        .query_row("SELECT package FROM misses LIMIT 1", [], |row| row.get(0))
        .unwrap();
    let i = names.iter().position(|n| *n == open).unwrap();
    let body = leaf_miss(&open, &locks[i], outer(i));
    let mut answers = Vec::new();
    for _ in 0..22 {
        answers.push(
            request(
                "127.0.4.1",
                server.main,
                "POST",
                "/precomp/v1/misses",
                &[],
                &body,
            )
            .await
            .unwrap(),
        );
    }
    assert!(answers[..20].iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert!(
        answers[20..]
            .iter()
            .all(|(s, b)| *s == 429 && b.contains("one address")),
        "{answers:?}"
    );
    let (rows, counted): (i64, i64) = db
        .query_row("SELECT count(*), max(count) FROM misses", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
    assert_eq!((rows, counted), (8, 21));
    assert_served(&server, Duration::from_secs(1)).await;
    assert_healthy(&server, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_and_http1_share_the_port() {
    let server = Server::start(1024, &[]);
    let url = format!("http://{}/public_key", server.main);
    let curl = |http: &str| {
        let output = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                http,
                "-w",
                "\n%{http_version} %{http_code}",
            ])
            .arg(&url)
            .output()
            .expect("curl (apt-get install curl)");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let h2 = curl("--http2-prior-knowledge");
    assert!(h2.contains("BEGIN PUBLIC KEY"), "{h2}");
    assert!(h2.ends_with("\n2 200"), "{h2}");
    let h1 = curl("--http1.1");
    assert!(h1.ends_with("\n1.1 200"), "{h1}");
    assert_eq!(h1.lines().next(), h2.lines().next());
    // The same limits apply: an h2 connection that never sends a request is closed.
    let mut stream = connect("127.0.0.2", server.main).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    drop(stream);
    assert_healthy(&server, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_unhealthy_when_a_database_is_unusable() {
    let server = Server::start(1024, &[]);
    assert_healthy(&server, Duration::from_secs(2)).await;
    // Another process breaks the artifact database's schema: the server can no longer use
    // it, and /healthz says so instead of `ok`.
    let db = rusqlite::Connection::open(server.data.path().join("artifacts/artifacts.db")).unwrap();
    db.execute_batch("DROP TABLE tokens").unwrap();
    let (status, body) = get(NORMAL, server.admin, "/healthz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("unhealthy: artifact store: "), "{body}");
    // The main listener's /healthz agrees.
    let (status, _) = get(NORMAL, server.main, "/healthz").await.unwrap();
    assert_eq!(status, 503);
}

/// `PROXY TCP4 SOURCE 127.0.0.1 PORT 4000\r\n`: a load balancer's header for `source`.
fn proxy_header(source: &str, port: u16) -> String {
    format!("PROXY TCP4 {source} 127.0.0.1 {port} 4000\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_protocol_balancer_clients_are_limited_by_their_own_address() {
    let server = Server::start(
        1024,
        &[
            "--proxy-protocol",
            "--max-connections-per-client",
            "2",
            "--header-read-timeout",
            "5",
        ],
    );
    // Every connection comes from the balancer (127.0.0.1); the header names the client. Each
    // held connection is answered once (kept alive), so the server has read its header and
    // counts it before the third arrives.
    let mut held = Vec::new();
    for port in [40001, 40002] {
        let mut stream = connect(NORMAL, server.main).await.unwrap();
        let request = format!(
            "{}GET /public_key HTTP/1.1\r\nHost: x\r\n\r\n",
            proxy_header("203.0.113.7", port)
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answered = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answered))
            .await
            .expect("a held connection was not answered")
            .unwrap();
        assert_eq!(&answered, b"HTTP/1.1 200");
        held.push(stream);
    }
    // A third from the same client is refused...
    let mut third = connect(NORMAL, server.main).await.unwrap();
    third
        .write_all(proxy_header("203.0.113.7", 40003).as_bytes())
        .await
        .unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(2))
            .await
            .is_some(),
        "a third connection of one client was kept\n{}",
        server.log()
    );
    // ... another client behind the same balancer is served.
    let mut other = connect(NORMAL, server.main).await.unwrap();
    let request = format!(
        "{}GET /public_key HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        proxy_header("198.51.100.2", 40004)
    );
    other.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), other.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("BEGIN PUBLIC KEY"), "{answer}");
    // A connection without the header is closed.
    let (status, _) = get(NORMAL, server.main, "/public_key")
        .await
        .unwrap_or((0, String::new()));
    assert_ne!(status, 200, "a request without a PROXY header was served");
    assert!(
        server
            .metric("precomp_mirror_connections_refused_total", &["per_client"])
            .await
            >= 1.0
    );
    // Counted as the server drops the connection: look again for a moment.
    let mut closed = 0.0;
    for _ in 0..20 {
        closed = server
            .metric("precomp_mirror_connections_closed_total", &["proxy_header"])
            .await;
        if closed >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed >= 1.0, "{}", server.log());
}
