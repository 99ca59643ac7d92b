//! nginx from Debian serving a directory on loopback: a real static web server with strong
//! ETags, which rebar3 requires on tarball responses. [`NginxOptions`] add what tests of a
//! client of that server need: an access log to count requests, and slow files.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx; stopped when dropped.
pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    access_log: bool,
    /// Whether a master process runs workers, which must be stopped through it.
    master: bool,
}

/// Settings beyond [`Nginx::serve`]'s plain static server.
#[derive(Clone, Debug, Default)]
pub struct NginxOptions {
    access_log: bool,
    limit_rates: Vec<(String, String)>,
    workers_as: Option<(String, String)>,
}

impl NginxOptions {
    pub fn new() -> NginxOptions {
        NginxOptions::default()
    }

    /// Logs every request, once it has ended, for [`Nginx::access_log`].
    pub fn access_log(mut self) -> NginxOptions {
        self.access_log = true;
        self
    }

    /// Serves from worker processes running as `user`:`group` (`nobody`, `nogroup`), as a
    /// stock nginx does with `www-data`: files it serves must be readable by others. Only
    /// root can start it so.
    pub fn workers_as(mut self, user: &str, group: &str) -> NginxOptions {
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        assert!(
            plain(user) && plain(group),
            "workers_as({user:?}, {group:?})"
        );
        self.workers_as = Some((user.to_string(), group.to_string()));
        self
    }

    /// Sends the file at exactly `path` (`/tarballs/x-1.0.0.tar`) at about `rate` per second,
    /// nginx's `limit_rate` syntax (`256k`, `1m`); nginx sends the first second's worth at once.
    pub fn limit_rate(mut self, path: &str, rate: &str) -> NginxOptions {
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_' | '+'))
        };
        assert!(
            path.starts_with('/') && plain(path) && plain(rate),
            "limit_rate({path:?}, {rate:?})"
        );
        self.limit_rates.push((path.to_string(), rate.to_string()));
        self
    }
}

/// One request from nginx's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub method: String,
    /// The request target as the client sent it.
    pub uri: String,
    pub status: u16,
    pub body_bytes_sent: u64,
    /// Whether the whole response was sent (`$request_completion`).
    pub complete: bool,
}

impl Nginx {
    /// Serves `root` on a free 127.0.0.1 port.
    pub fn serve(root: &Path) -> Nginx {
        Nginx::start(root, &NginxOptions::default())
    }

    /// Serves `root` on a free 127.0.0.1 port, with `options`.
    pub fn start(root: &Path, options: &NginxOptions) -> Nginx {
        assert!(
            Path::new("/usr/sbin/nginx").exists(),
            "/usr/sbin/nginx is missing: install it with `apt-get install nginx`"
        );
        let root = root.canonicalize().expect("nginx root exists");
        // A port taken between probing and nginx binding it is retried.
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("nginx scratch dir");
            let conf = dir.path().join("nginx.conf");
            std::fs::write(&conf, config(dir.path(), &root, port, options))
                .expect("write nginx.conf");
            let mut child = Command::new("/usr/sbin/nginx")
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx {
                        child,
                        port,
                        dir,
                        access_log: options.access_log,
                        master: options.workers_as.is_some(),
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "nginx did not start on port {port}: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
        }
        panic!("nginx did not start after 5 attempts");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request that has ended so far, oldest first. Needs [`NginxOptions::access_log`].
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        assert!(
            self.access_log,
            "this nginx was started without NginxOptions::access_log"
        );
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let [method, uri, status, bytes, completion] = fields[..] else {
                    panic!("unexpected access log line {line:?}");
                };
                AccessLogEntry {
                    method: method.to_string(),
                    uri: uri.to_string(),
                    status: status.parse().expect("status in the access log"),
                    body_bytes_sent: bytes.parse().expect("byte count in the access log"),
                    complete: completion == "OK",
                }
            })
            .collect()
    }

    /// The ended requests for exactly `uri`, any method.
    pub fn requests_for(&self, uri: &str) -> Vec<AccessLogEntry> {
        self.access_log()
            .into_iter()
            .filter(|entry| entry.uri == uri)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if self.master {
            // Killing the master would leave its workers serving: ask it to stop them.
            let stopped = Command::new("/usr/sbin/nginx")
                .arg("-p")
                .arg(self.dir.path())
                .arg("-c")
                .arg(self.dir.path().join("nginx.conf"))
                .args(["-s", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if stopped {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = self.child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

fn config(dir: &Path, root: &Path, port: u16, options: &NginxOptions) -> String {
    let d = |sub: &str| -> PathBuf { dir.join(sub) };
    let access_log = if options.access_log {
        format!(
            "log_format precomp '$request_method $request_uri $status $body_bytes_sent $request_completion';
    access_log {} precomp;",
            d("access.log").display()
        )
    } else {
        "access_log off;".to_string()
    };
    let locations: String = options
        .limit_rates
        .iter()
        .map(|(path, rate)| format!("\n        location = {path} {{ limit_rate {rate}; }}"))
        .collect();
    // Workers change user only under a master process started as root.
    let process = match &options.workers_as {
        Some((user, group)) => format!("master_process on;\nuser {user} {group};"),
        None => "master_process off;".to_string(),
    };
    format!(
        "daemon off;
{process}
worker_processes 1;
pid {pid};
error_log {log} warn;
events {{ worker_connections 1024; }}
http {{
    {access_log}
    client_body_temp_path {body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    types {{ }}
    default_type application/octet-stream;
    sendfile on;
    etag on;
    server {{
        listen 127.0.0.1:{port};
        root {root};{locations}
    }}
}}
",
        pid = d("nginx.pid").display(),
        log = d("error.log").display(),
        body = d("body").display(),
        proxy = d("proxy").display(),
        fastcgi = d("fastcgi").display(),
        uwsgi = d("uwsgi").display(),
        scgi = d("scgi").display(),
        root = root.display(),
    )
}
