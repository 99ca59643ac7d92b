//! A real OCI registry on loopback (Debian's `docker-registry`, the CNCF distribution
//! registry), anonymous or with Basic authentication from an htpasswd file, and `skopeo` to
//! push images to it. Used by the tests of `precomp toolchain import`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running registry; stopped when dropped.
pub struct OciRegistry {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl OciRegistry {
    /// Starts `docker-registry serve` on a free loopback port, storing under a temporary
    /// directory. With `user`, it asks for HTTP Basic authentication (bcrypt htpasswd entry
    /// made by `htpasswd -B` from apache2-utils).
    pub fn start(user: Option<(&str, &str)>) -> OciRegistry {
        let dir = tempfile::Builder::new()
            .prefix("precomp-oci-registry-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((name, password)) = user {
            let output = Command::new("htpasswd")
                .args(["-Bbn", name, password])
                .output()
                .unwrap_or_else(|e| {
                    panic!("htpasswd: {e}: install it with `apt-get install apache2-utils`")
                });
            assert!(output.status.success(), "htpasswd failed");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, &output.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: precomp-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("docker-registry: {e}: install it with `apt-get install docker-registry`")
            });
        let mut registry = OciRegistry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("docker-registry exited ({status}): {}", registry.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {port}: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps blobs: `…/blobs/sha256/AB/ABCD…/data`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `skopeo copy` from `source` to `dest` (transport syntax: `oci:DIR:TAG`,
/// `docker://HOST/NAME:TAG`, `docker-archive:FILE:NAME:TAG`), plain HTTP to loopback
/// registries, with `creds` (`user:password`) for the destination. Panics with skopeo's
/// output on failure.
pub fn skopeo_copy(source: &str, dest: &str, creds: Option<&str>, extra: &[&str]) {
    let mut command = Command::new("skopeo");
    command
        .args(["--insecure-policy", "copy", "--quiet"])
        .args(["--src-tls-verify=false", "--dest-tls-verify=false"])
        .args(extra);
    if let Some(creds) = creds {
        command.arg("--dest-creds").arg(creds);
    }
    let output = command
        .arg(source)
        .arg(dest)
        .output()
        .unwrap_or_else(|e| panic!("skopeo: {e}: install it with `apt-get install skopeo`"));
    check(&output, "skopeo copy");
}

/// `skopeo inspect --raw` of a registry image: the manifest bytes it serves.
pub fn skopeo_raw_manifest(image: &str, creds: Option<&str>) -> Vec<u8> {
    let mut command = Command::new("skopeo");
    command.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some(creds) = creds {
        command.arg("--creds").arg(creds);
    }
    let output = command.arg(image).output().unwrap();
    check(&output, "skopeo inspect");
    output.stdout
}

/// `umoci ARGS` (image layouts: `init`, `new`, `unpack`, `repack`, `config`, `gc`).
pub fn umoci(args: &[&str], cwd: &Path) {
    let output = Command::new("umoci")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("umoci: {e}: install it with `apt-get install umoci`"));
    check(&output, &format!("umoci {}", args.join(" ")));
}

fn check(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
