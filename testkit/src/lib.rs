//! Test support shared by the integration tests of the workspace.
//!
//! The reference implementation of the Hex formats is hex_core. Debian's rebar3 embeds it
//! (as `r3_hex_tarball`, `r3_hex_registry`, `r3_hex_pb_*`), so tests extract those beams from
//! the installed `/usr/bin/rebar3` escript at run time and ask the real thing. Nothing from
//! rebar3 is committed.

pub mod http;
mod nginx;
pub mod oci_registry;
pub mod toolchain;

pub use nginx::{AccessLogEntry, Nginx, NginxOptions};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// Where Debian installs the rebar3 escript.
pub const REBAR3: &str = "/usr/bin/rebar3";

/// Directory holding the beams of the rebar3 escript (hex_core among them). Extracted once
/// per installed rebar3 (keyed by a digest of the escript) and shared by every test process;
/// a process that loses the race to create it uses the winner's copy.
pub fn rebar3_ebin() -> &'static Path {
    static EBIN: OnceLock<PathBuf> = OnceLock::new();
    EBIN.get_or_init(|| {
        let escript = std::fs::read(REBAR3)
            .unwrap_or_else(|e| panic!("{REBAR3}: {e}: install it with `apt-get install rebar3`"));
        let digest = Sha256::digest(&escript);
        let dir = std::env::temp_dir().join(format!("precomp-testkit-rebar3-{}", hex16(&digest)));
        let ebin = dir.join("rebar/ebin");
        if ebin.join("r3_hex_tarball.beam").exists() {
            return ebin;
        }
        let staging = tempfile::tempdir_in(std::env::temp_dir()).expect("create extraction dir");
        let script = format!(
            "{{ok, S}} = escript:extract(\"{REBAR3}\", []), \
             {{archive, Bin}} = lists:keyfind(archive, 1, S), \
             {{ok, _}} = zip:extract(Bin, [{{cwd, \"{}\"}}]), halt().",
            staging.path().display()
        );
        run_erl(&["-noshell", "-eval", &script]);
        // Another process may have finished first; either copy is the same.
        if std::fs::rename(staging.keep(), &dir).is_err() && !ebin.exists() {
            panic!("could not move the extracted rebar3 into {}", dir.display());
        }
        assert!(
            ebin.join("r3_hex_tarball.beam").exists(),
            "rebar3 escript has no r3_hex_tarball"
        );
        ebin
    })
}

fn hex16(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Evaluates Erlang expressions with hex_core on the code path and returns what they print.
/// The expressions must end with `halt().` or the VM's default `halt()` is appended.
pub fn erl_eval(expr: &str) -> String {
    let ebin = rebar3_ebin();
    let expr = if expr.trim_end().ends_with("halt().") {
        expr.to_string()
    } else {
        format!("{expr}, halt().")
    };
    run_erl(&[
        "-noshell",
        "-pa",
        &ebin.display().to_string(),
        "-eval",
        &expr,
    ])
}

fn run_erl(args: &[&str]) -> String {
    let out = Command::new("erl")
        .args(args)
        // A failing expression must not leave erl_crash.dump files in the working directory.
        .env("ERL_CRASH_DUMP_SECONDS", "0")
        .output()
        .expect("running `erl` (install it with `apt-get install erlang-base`)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !stdout.contains("{\"init terminating"),
        "erl {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Quotes bytes as an Erlang binary literal, `<<1,2,3>>`, for passing data into `erl_eval`.
pub fn erl_binary(bytes: &[u8]) -> String {
    let body: Vec<String> = bytes.iter().map(|b| b.to_string()).collect();
    format!("<<{}>>", body.join(","))
}

/// Quotes a path or string as an Erlang string literal.
pub fn erl_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The workspace's root (`tests/fixtures` is under it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ is in the workspace")
        .to_path_buf()
}

/// A temporary directory the sandbox user can reach (tempfile makes them 0700): data
/// directories and anything a build reads.
pub fn data_dir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("make the temporary directory reachable");
    dir
}

/// Copies a directory tree (regular files and directories).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy destination");
    for entry in std::fs::read_dir(from).expect("read copy source") {
        let entry = entry.expect("read copy source entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

/// gzip at the default level.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// gunzip; panics on invalid input (tests feed it what they made).
pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}
