//! nginx from Debian serving a directory on loopback: a real static web server with strong
//! ETags, which rebar3 requires on tarball responses.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx; stopped when dropped.
pub struct Nginx {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Serves `root` on a free 127.0.0.1 port.
    pub fn serve(root: &Path) -> Nginx {
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
            std::fs::write(&conf, config(dir.path(), &root, port)).expect("write nginx.conf");
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
                        _dir: dir,
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
}

impl Drop for Nginx {
    fn drop(&mut self) {
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

fn config(dir: &Path, root: &Path, port: u16) -> String {
    let d = |sub: &str| -> PathBuf { dir.join(sub) };
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {pid};
error_log {log} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
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
        root {root};
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
