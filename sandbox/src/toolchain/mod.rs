//! Toolchains: pinned (OTP, Elixir, rebar3, C compiler) roots a build runs on.
//!
//! - **Images**: minimal Debian roots made with debootstrap ([`Store::build`]), identified by
//!   the digest of their tree ([`crate::tree`]), stored content-addressed under
//!   `DATA/toolchains/<digest>/` (`root/`, `manifest`, `toolchain.json`) and found again by
//!   the digest of what went into them (`DATA/toolchains/inputs/<key>`).
//! - **Imported**: a container image's root ([`Store::import`]: a registry, an OCI layout or
//!   a `docker save` archive), stored the same way; the image's manifest digest is provenance
//!   (`image` in `toolchain.json`) and found again by it (`DATA/toolchains/imports/`).
//! - **`host`**: the host's own `/usr` and `/etc`, read-only; its digest is that of the
//!   installed package list (`dpkg-query`), so it changes whenever a package does.

mod image;
pub mod import;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use image::{default_mirror, ImageRequest, Suite, DEFAULT_MIRROR, DEFAULT_PACKAGES};
pub use import::{Credentials, ImageOrigin, ImportError, ImportRequest, Imported, IMPORTED_SUITE};

use crate::error::{Error, Result};
use crate::run::{Sandbox, Status};
use crate::spec::{Limits, Root, Spec};
use crate::tree::{self, Manifest};

/// The id of the host toolchain.
pub const HOST: &str = "host";

/// Image (built with debootstrap), imported (from a container image) or host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Image,
    Imported,
    Host,
}

/// A toolchain's record (`toolchain.json`, and one element of `toolchain list --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toolchain {
    /// `host`, or the first 12 hex digits of an image's digest.
    pub id: String,
    pub kind: Kind,
    /// Debian suite: `bookworm`, `trixie` (for `host`, the host's codename).
    pub suite: String,
    /// SHA-256, hex: of the tree's manifest (image) or of the installed package list (host).
    pub digest: String,
    /// OTP major release, as `erlang:system_info(otp_release)`: `25`.
    pub otp: String,
    /// Full OTP version from `releases/MAJOR/OTP_VERSION`: `25.2.3`.
    pub otp_full: String,
    /// `System.version()`: `1.14.0`.
    pub elixir: String,
    /// `rebar3 version`: `3.19.0`.
    pub rebar3: String,
    /// Debian architecture: `amd64`.
    pub architecture: String,
    /// The toolchain packages and their installed Debian versions.
    pub packages: BTreeMap<String, String>,
    /// Images: digest of what went into the image (recipe, suite, architecture, packages, the
    /// suite's signed InRelease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_key: Option<String>,
    /// Images: the same without the InRelease, to find an image when the mirror is offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_key: Option<String>,
    /// Images: SHA-256 of the suite's InRelease the packages came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_sha256: Option<String>,
    /// Images: regular files and their total size.
    #[serde(default)]
    pub files: u64,
    #[serde(default)]
    pub bytes: u64,
    /// Images: where the root is on this machine (not stored; filled in when loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Where `rebar3` is inside the sandbox, when not `/usr/bin/rebar3` (imported images put
    /// it in `/usr/local/bin`); see [`Toolchain::rebar3_command`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebar3_path: Option<String>,
    /// Imported toolchains: the image they came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageOrigin>,
}

impl Toolchain {
    /// What the sandbox mounts for this toolchain.
    pub fn sandbox_root(&self) -> Root {
        match (&self.kind, &self.root) {
            (Kind::Image | Kind::Imported, Some(root)) => Root::Image(root.clone()),
            _ => Root::Host,
        }
    }

    /// The `rebar3` to run inside the sandbox (`MIX_REBAR3`): the one found in the image, else
    /// Debian's `/usr/bin/rebar3`.
    pub fn rebar3_command(&self) -> &str {
        self.rebar3_path.as_deref().unwrap_or("/usr/bin/rebar3")
    }

    /// One line for humans.
    pub fn summary(&self) -> String {
        let line = format!(
            "{} {} {}: OTP {} ({}), Elixir {}, rebar3 {}, {}",
            self.id,
            self.suite,
            match self.kind {
                Kind::Image => "image",
                Kind::Imported => "imported",
                Kind::Host => "host",
            },
            self.otp,
            self.otp_full,
            self.elixir,
            if self.rebar3.is_empty() {
                "none"
            } else {
                &self.rebar3
            },
            self.architecture
        );
        match &self.image {
            Some(image) => format!("{line}, from {}", image.reference),
            None => line,
        }
    }
}

/// Records as pretty JSON (the format of `precomp toolchain list --json`).
pub fn to_json(toolchains: &[Toolchain]) -> String {
    serde_json::to_string_pretty(toolchains).expect("records serialize")
}

/// The result of [`Store::verify`].
#[derive(Clone, Debug)]
pub struct Verification {
    pub toolchain: Toolchain,
    /// The digest found now.
    pub actual: String,
    /// Human-readable differences, first differing paths first (empty when it matches).
    pub differences: Vec<String>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.differences.is_empty() && self.actual == self.toolchain.digest
    }
}

/// The toolchains of one data directory: `DATA/toolchains/`.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating) `DATA/toolchains`. The sandbox user must be able to search the data
    /// directory and this one (they are made 0755 here); keep keys in private subdirectories.
    pub fn open(data_dir: &Path) -> Result<Store> {
        let dir = data_dir.join("toolchains");
        for d in [data_dir, dir.as_path()] {
            if !d.exists() {
                std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
                set_mode(d, 0o755)?;
            }
        }
        let dir = std::fs::canonicalize(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The images in this store, sorted by suite then id.
    pub fn images(&self) -> Result<Vec<Toolchain>> {
        let mut out = Vec::new();
        let reader = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        for entry in reader {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                if let Some(toolchain) = self.load_image(&name)? {
                    out.push(toolchain);
                }
            }
        }
        out.sort_by(|a, b| (&a.suite, &a.id).cmp(&(&b.suite, &b.id)));
        Ok(out)
    }

    /// Every toolchain: the images, then `host` when the host has Erlang and Elixir.
    pub fn list(&self, sandbox: &Sandbox) -> Result<Vec<Toolchain>> {
        let mut all = self.images()?;
        if host_has_toolchain() {
            all.push(self.host(sandbox)?);
        }
        Ok(all)
    }

    pub(crate) fn load_image(&self, digest: &str) -> Result<Option<Toolchain>> {
        let dir = self.dir.join(digest);
        let record = dir.join("toolchain.json");
        if !record.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&record).map_err(|e| Error::io(&record, e))?;
        let mut toolchain: Toolchain =
            serde_json::from_str(&text).map_err(|e| Error::BadRecord {
                path: record.clone(),
                reason: e.to_string(),
            })?;
        if toolchain.digest != digest {
            return Err(Error::BadRecord {
                path: record,
                reason: format!("it names digest {}", toolchain.digest),
            });
        }
        toolchain.root = Some(dir.join("root"));
        Ok(Some(toolchain))
    }

    /// Finds a toolchain by `host`, id, digest or digest prefix (at least 4 hex digits), suite
    /// name (the most recently built image of that suite; `imported` for imported ones), or
    /// the image reference a toolchain was imported from.
    pub fn resolve(&self, id: &str, sandbox: &Sandbox) -> Result<Toolchain> {
        if id == HOST {
            return self.host(sandbox);
        }
        let images = self.images()?;
        let known = || {
            let mut names: Vec<String> = images
                .iter()
                .map(|t| format!("{} ({})", t.id, t.suite))
                .collect();
            names.push(HOST.into());
            names.join(", ")
        };
        let by_suite: Vec<&Toolchain> = images.iter().filter(|t| t.suite == id).collect();
        if !by_suite.is_empty() {
            let newest = by_suite
                .into_iter()
                .max_by_key(|t| {
                    std::fs::metadata(self.dir.join(&t.digest).join("toolchain.json"))
                        .and_then(|m| m.modified())
                        .ok()
                })
                .expect("non-empty");
            return Ok(newest.clone());
        }
        // An imported image by the reference it was imported from (the newest import).
        let by_reference = images
            .iter()
            .filter(|t| t.image.as_ref().is_some_and(|i| i.reference == id))
            .max_by_key(|t| {
                std::fs::metadata(self.dir.join(&t.digest).join("toolchain.json"))
                    .and_then(|m| m.modified())
                    .ok()
            });
        if let Some(imported) = by_reference {
            return Ok(imported.clone());
        }
        let lower = id.to_ascii_lowercase();
        if lower.len() < 4 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::UnknownToolchain {
                id: id.into(),
                known: known(),
            });
        }
        let matches: Vec<&Toolchain> = images
            .iter()
            .filter(|t| t.digest.starts_with(&lower))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::UnknownToolchain {
                id: id.into(),
                known: known(),
            }),
            many => Err(Error::AmbiguousToolchain {
                id: id.into(),
                matches: many
                    .iter()
                    .map(|t| t.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Builds a Debian image, or returns the one already built from the same inputs.
    pub fn build(&self, sandbox: &Sandbox, request: &ImageRequest) -> Result<Built> {
        image::build(self, sandbox, request)
    }

    /// Imports a container image as a toolchain, or returns the one already imported from the
    /// same manifest. Needs root (the root's files keep the image's owners).
    pub fn import(&self, sandbox: &Sandbox, request: &ImportRequest) -> Result<Imported> {
        import::import(self, sandbox, request)
    }

    /// The host toolchain. Versions are detected in the sandbox once per package-list digest
    /// and remembered under `DATA/toolchains/host/`.
    pub fn host(&self, sandbox: &Sandbox) -> Result<Toolchain> {
        let (digest, packages) = host_packages()?;
        let cached = self.dir.join("host").join(format!("{digest}.json"));
        if let Ok(text) = std::fs::read_to_string(&cached) {
            if let Ok(toolchain) = serde_json::from_str::<Toolchain>(&text) {
                return Ok(toolchain);
            }
        }
        let versions = detect(sandbox, &Root::Host)?;
        let toolchain = Toolchain {
            id: HOST.into(),
            kind: Kind::Host,
            suite: host_codename(),
            digest,
            otp: versions.otp,
            otp_full: versions.otp_full,
            elixir: versions.elixir,
            rebar3: versions.rebar3,
            architecture: versions.architecture,
            packages: DEFAULT_PACKAGES
                .iter()
                .filter_map(|p| Some((p.to_string(), packages.get(*p)?.clone())))
                .collect(),
            input_key: None,
            recipe_key: None,
            release_sha256: None,
            files: 0,
            bytes: 0,
            root: None,
            rebar3_path: None,
            image: None,
        };
        write_json(&cached, &toolchain)?;
        Ok(toolchain)
    }

    /// Recomputes a toolchain's digest. Images: the tree's manifest against the stored one
    /// (the differing paths named). Host: the toolchain packages' files against dpkg's
    /// checksums (`dpkg --verify`, configuration files excepted).
    pub fn verify(&self, toolchain: &Toolchain) -> Result<Verification> {
        match toolchain.kind {
            Kind::Image | Kind::Imported => {
                let dir = self.dir.join(&toolchain.digest);
                let root = dir.join("root");
                let actual = tree::manifest(&root)?;
                let stored_path = dir.join("manifest");
                let stored = std::fs::read_to_string(&stored_path)
                    .map_err(|e| Error::io(&stored_path, e))?;
                let stored = Manifest::from_text(stored);
                let mut differences = Vec::new();
                if stored.digest != toolchain.digest {
                    differences.push(format!(
                        "the stored manifest {} has digest {}, not {}",
                        stored_path.display(),
                        stored.digest,
                        toolchain.digest
                    ));
                }
                differences.extend(stored.differences(&actual));
                Ok(Verification {
                    toolchain: toolchain.clone(),
                    actual: actual.digest,
                    differences,
                })
            }
            Kind::Host => {
                let (digest, packages) = host_packages()?;
                let mut differences = Vec::new();
                if digest != toolchain.digest {
                    differences.push(format!(
                        "the installed package list changed (digest {digest})"
                    ));
                }
                let names: Vec<&String> = packages
                    .keys()
                    .filter(|p| {
                        DEFAULT_PACKAGES.contains(&p.as_str())
                            || p.starts_with("erlang-")
                            || p.starts_with("elixir")
                    })
                    .collect();
                let output = Command::new("dpkg")
                    .arg("--verify")
                    .args(&names)
                    .output()
                    .map_err(|e| Error::Spawn {
                        program: "dpkg".into(),
                        source: e,
                    })?;
                for line in String::from_utf8_lossy(&output.stdout).lines() {
                    // "??5??????   /usr/bin/x", or "missing   c /etc/x" for a conffile.
                    let mut fields = line.split_whitespace();
                    let flags = fields.next().unwrap_or("");
                    let rest: Vec<&str> = fields.collect();
                    if rest.first() == Some(&"c") {
                        continue;
                    }
                    differences.push(format!("{} {flags}", rest.join(" ")));
                }
                Ok(Verification {
                    toolchain: toolchain.clone(),
                    actual: digest,
                    differences,
                })
            }
        }
    }
}

/// What [`Store::build`] returns.
#[derive(Clone, Debug)]
pub struct Built {
    pub toolchain: Toolchain,
    /// True when an image built from the same inputs was found and nothing was built.
    pub reused: bool,
    pub elapsed: Duration,
}

/// Versions found by running the tools in the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versions {
    pub otp: String,
    pub otp_full: String,
    pub elixir: String,
    pub rebar3: String,
    pub architecture: String,
}

/// Runs `erl`, `elixir`, `rebar3` and `dpkg` in the sandbox on `root` and reads their versions.
pub fn detect(sandbox: &Sandbox, root: &Root) -> Result<Versions> {
    let scratch = crate::scratch_dir("precomp-detect-")?;
    let what = match root {
        Root::Host => "the host toolchain".to_string(),
        Root::Image(dir) => format!("the image at {}", dir.display()),
    };
    let run = |command: &[&str]| -> Result<String> {
        let mut spec = Spec::build(root.clone(), scratch.path(), command.iter().copied());
        spec.limits = Limits {
            wall_time: Duration::from_secs(120),
            memory_bytes: 2 << 30,
            processes: 256,
            ..Limits::build()
        };
        let outcome = sandbox.run(&spec)?;
        if outcome.status != Status::Exited(0) {
            return Err(Error::StepFailed {
                step: format!("`{}` in {what}", command.join(" ")),
                status: outcome.status.to_string(),
                output: outcome.output_text(),
            });
        }
        Ok(outcome.stdout.text())
    };
    let erl = run(&[
        "erl",
        "-noshell",
        "-eval",
        "R = erlang:system_info(otp_release), \
         {ok, V} = file:read_file(filename:join([code:root_dir(), \"releases\", R, \"OTP_VERSION\"])), \
         io:format(\"~s ~s~n\", [R, string:trim(V)]), halt().",
    ])?;
    let mut words = erl.split_whitespace();
    let (otp, otp_full) = match (words.next(), words.next()) {
        (Some(otp), Some(full)) => (otp.to_string(), full.to_string()),
        _ => {
            return Err(Error::Detect {
                what,
                field: "OTP release",
                output: erl,
            })
        }
    };
    let elixir_out = run(&["elixir", "-e", "IO.puts(System.version())"])?;
    let elixir = elixir_out.trim().to_string();
    if elixir.is_empty() || !elixir.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(Error::Detect {
            what,
            field: "Elixir version",
            output: elixir_out,
        });
    }
    // "rebar 3.19.0 on Erlang/OTP 25 Erts 13.1.5"
    let rebar_out = run(&["rebar3", "version"])?;
    let rebar3 = rebar_out
        .lines()
        .find_map(|l| l.strip_prefix("rebar "))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
        .ok_or_else(|| Error::Detect {
            what: what.clone(),
            field: "rebar3 version",
            output: rebar_out.clone(),
        })?;
    let architecture = run(&["dpkg", "--print-architecture"])?.trim().to_string();
    Ok(Versions {
        otp,
        otp_full,
        elixir,
        rebar3,
        architecture,
    })
}

/// The host's installed packages: (digest of the sorted `name version arch` lines, name →
/// version).
pub fn host_packages() -> Result<(String, BTreeMap<String, String>)> {
    let output = Command::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
        ])
        .output()
        .map_err(|e| Error::Dpkg(e.to_string()))?;
    if !output.status.success() {
        return Err(Error::Dpkg(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = Vec::new();
    let mut packages = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() == 4 && fields[0].starts_with("ii") {
            lines.push(format!("{} {} {}", fields[1], fields[2], fields[3]));
            packages.insert(fields[1].to_string(), fields[2].to_string());
        }
    }
    lines.sort();
    let mut hasher = Sha256::new();
    hasher.update(b"precomp-host-packages v1\n");
    for line in &lines {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    Ok((hex::encode(hasher.finalize()), packages))
}

fn host_has_toolchain() -> bool {
    Path::new("/usr/bin/erl").exists() && Path::new("/usr/bin/elixir").exists()
}

fn host_codename() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, e))
}

/// Writes JSON atomically (temporary file, then rename).
pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    let mut text = serde_json::to_string_pretty(value).expect("records serialize");
    text.push('\n');
    file.write_all(text.as_bytes())
        .map_err(|e| Error::io(path, e))?;
    set_mode(file.path(), 0o644)?;
    file.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}
