//! The build key: which precompiled artifact a consumer may use instead of compiling a
//! dependency itself.
//!
//! An artifact is valid for a consumer exactly when every input that can change the compiled
//! output matches (`../shared/design/DESIGN.md`, "The build key"): the package (name,
//! version, outer checksum); its closure — every transitive dependency as the consumer's lock
//! resolves it, optional ones included when the lock has them; the OTP major release and
//! the exact Elixir version; the dependency's Mix env; the target; and the values of the
//! `Application.compile_env` paths the package reads, as the consumer's config sets them.
//!
//! The inputs are written as a canonical text (one fact per line, fixed order, sorted
//! closure, validated tokens with no spaces) and the key is its SHA-256. The text is the
//! specification: `docs/protocol.md` describes it byte for byte, with test vectors, so a
//! second implementation can compute the same keys. No clock, path or host name goes in.
//!
//! Which compile-env paths a package reads is only known once it is built (Mix records them
//! in its `.app`), so a key comes in two parts: the [`BuildInputs::base_key`] identifies the
//! build without the compile env; the full [`BuildInputs::key`] adds the digest of the
//! compile-env values. A client looks artifacts up by base key, reads the paths they record,
//! evaluates its own config for them, and takes the artifact whose compile-env digest matches.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::lock::{HexLockEntry, LockEntry, MixLock};
use crate::term::Term;

/// First line of every canonical text; changes whenever the encoding does.
pub const BUILD_KEY_VERSION: &str = "precomp-build-key-v1";

/// Prefix of the compile-env encoding.
pub const COMPILE_ENV_VERSION: &str = "precomp-compile-env-v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildKeyError {
    #[error("{field} {value:?} is not valid: {rule}")]
    Invalid {
        field: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error("the closure lists {name} twice")]
    DuplicateInClosure { name: String },
    #[error("the closure of {name} lists {name} itself")]
    SelfInClosure { name: String },
    #[error("mix.lock has no entry for {app}")]
    NotInLock { app: String },
    #[error("{app} is not a Hex dependency in mix.lock (it comes from {scm}); only packages whose whole closure is from Hex can be precompiled")]
    NotFromHex { app: String, scm: String },
    #[error("mix.lock: {dependent} depends on {app}, which the lock does not contain; run `mix deps.get`")]
    MissingDependency { dependent: String, app: String },
    #[error("mix.lock: {app} has no outer checksum (written by an old Hex); run `mix deps.get` with Hex 0.20 or newer")]
    NoOuterChecksum { app: String },
    #[error("mix.lock: {app}'s outer checksum {value:?} is not 64 hex digits")]
    BadChecksum { app: String, value: String },
}

/// A package release, identified the way the registry and the lock identify it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageRef {
    /// The Hex package name.
    pub name: String,
    pub version: String,
    /// SHA-256 of the release's tarball, as `Release.outer_checksum` and mix.lock carry it.
    pub outer_checksum: [u8; 32],
}

/// Where an artifact can run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// No native code: beams run on any architecture, like a wheel's `none-any`.
    Any,
    /// Native code for an architecture and C library, e.g. `x86_64` and `linux-gnu`.
    Native { arch: String, libc: String },
}

impl Target {
    /// The build-key target for an Erlang `system_architecture` such as `x86_64-pc-linux-gnu`:
    /// the architecture (Debian and Apple names mapped to GNU ones), the vendor dropped, and
    /// version numbers stripped (`aarch64-apple-darwin23.1.0` → `aarch64-darwin`).
    pub fn from_system_architecture(system_architecture: &str) -> Option<Target> {
        let lower = system_architecture.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('-').collect();
        let arch = match parts.first().copied()? {
            "amd64" => "x86_64",
            "arm64" => "aarch64",
            "i386" | "i486" | "i586" => "i686",
            other => other,
        };
        let rest: &[&str] = match parts.len() {
            0 | 1 => return None,
            2 => &parts[1..],
            _ => &parts[2..],
        };
        let libc: Vec<String> = rest
            .iter()
            .map(|part| {
                part.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')
                    .to_string()
            })
            .filter(|part| !part.is_empty())
            .collect();
        let libc = libc.join("-");
        let valid_arch = !arch.is_empty()
            && arch
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        let valid_libc = !libc.is_empty()
            && libc
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        (valid_arch && valid_libc).then(|| Target::Native {
            arch: arch.to_string(),
            libc,
        })
    }

    /// The target of native code built on a Debian `architecture` (`amd64`, `arm64`, …): that
    /// of the GNU triplet Debian's Erlang reports there.
    pub fn from_debian_architecture(architecture: &str) -> Option<Target> {
        let triplet = match architecture {
            "amd64" => "x86_64-pc-linux-gnu",
            "arm64" => "aarch64-unknown-linux-gnu",
            "armhf" => "arm-unknown-linux-gnueabihf",
            "armel" => "arm-unknown-linux-gnueabi",
            "i386" => "i686-pc-linux-gnu",
            "ppc64el" => "powerpc64le-unknown-linux-gnu",
            "s390x" => "s390x-ibm-linux-gnu",
            "riscv64" => "riscv64-unknown-linux-gnu",
            _ => return None,
        };
        Target::from_system_architecture(triplet)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Any => f.write_str("any"),
            Target::Native { arch, libc } => write!(f, "{arch}-{libc}"),
        }
    }
}

/// One `Application.compile_env` read, as Mix records it in the `.app`:
/// `{App, [Key | Path], {ok, Value} | error}`.
#[derive(Clone, Debug, PartialEq)]
pub struct CompileEnvEntry {
    pub app: String,
    /// `[Key | SubPath]`: the key then any nested keys.
    pub path: Vec<Term>,
    /// The value the config sets, or `None` when it sets none (Mix records `error`).
    pub value: Option<Term>,
}

/// Everything a build key covers.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildInputs {
    pub package: PackageRef,
    /// Every transitive dependency; order does not matter.
    pub closure: Vec<PackageRef>,
    /// The OTP major release, e.g. `25`.
    pub otp_major: String,
    /// The exact Elixir version, e.g. `1.14.0`.
    pub elixir: String,
    /// The dependency's Mix env: `prod` unless the consumer says otherwise.
    pub mix_env: String,
    pub target: Target,
    pub compile_env: Vec<CompileEnvEntry>,
}

/// A SHA-256 key, shown as lowercase hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuildKey(pub [u8; 32]);

impl fmt::Display for BuildKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl BuildInputs {
    /// The canonical text of everything but the compile env.
    pub fn base_text(&self) -> Result<String, BuildKeyError> {
        check_name("package name", &self.package.name)?;
        check_version("package version", &self.package.version)?;
        let mut closure: Vec<&PackageRef> = self.closure.iter().collect();
        closure.sort();
        for pair in closure.windows(2) {
            if pair[0].name == pair[1].name {
                return Err(BuildKeyError::DuplicateInClosure {
                    name: pair[0].name.clone(),
                });
            }
        }
        let mut text = format!("{BUILD_KEY_VERSION}\n");
        text.push_str(&package_line("package", &self.package));
        for dep in closure {
            check_name("dependency name", &dep.name)?;
            check_version("dependency version", &dep.version)?;
            if dep.name == self.package.name {
                return Err(BuildKeyError::SelfInClosure {
                    name: dep.name.clone(),
                });
            }
            text.push_str(&package_line("dep", dep));
        }
        check_token(
            "OTP major release",
            &self.otp_major,
            |c| c.is_ascii_digit(),
            "digits only",
        )?;
        check_version("Elixir version", &self.elixir)?;
        check_token(
            "Mix env",
            &self.mix_env,
            is_lower_word,
            "lowercase letters, digits and _",
        )?;
        if let Target::Native { arch, libc } = &self.target {
            check_token(
                "target architecture",
                arch,
                is_lower_word,
                "lowercase letters, digits and _",
            )?;
            check_token(
                "target libc",
                libc,
                |c| is_lower_word(c) || c == '-',
                "lowercase letters, digits, _ and -",
            )?;
        }
        text.push_str(&format!(
            "otp {}\nelixir {}\nenv {}\ntarget {}\n",
            self.otp_major, self.elixir, self.mix_env, self.target
        ));
        Ok(text)
    }

    /// The full canonical text: the base text, then the compile-env digest.
    pub fn text(&self) -> Result<String, BuildKeyError> {
        let mut text = self.base_text()?;
        text.push_str(&format!(
            "compile_env {}\n",
            hex::encode(compile_env_digest(&self.compile_env))
        ));
        Ok(text)
    }

    /// Identifies the build without the compile env: the lookup key.
    pub fn base_key(&self) -> Result<BuildKey, BuildKeyError> {
        Ok(BuildKey(Sha256::digest(self.base_text()?).into()))
    }

    /// The artifact's key.
    pub fn key(&self) -> Result<BuildKey, BuildKeyError> {
        Ok(BuildKey(Sha256::digest(self.text()?).into()))
    }
}

fn package_line(kind: &str, package: &PackageRef) -> String {
    format!(
        "{kind} {} {} {}\n",
        package.name,
        package.version,
        hex::encode(package.outer_checksum)
    )
}

/// SHA-256 of the compile-env entries: `COMPILE_ENV_VERSION`, a newline, then the canonical
/// encoding of the list `[{App, Path, {ok, Value} | error}]` sorted by (App, Path) with
/// duplicates removed.
pub fn compile_env_digest(entries: &[CompileEnvEntry]) -> [u8; 32] {
    let mut encoded: Vec<(Vec<u8>, Vec<u8>)> = entries
        .iter()
        .map(|entry| {
            let app = Term::Atom(entry.app.clone());
            let path = Term::List(entry.path.clone());
            let value = match &entry.value {
                Some(value) => Term::Tuple(vec![Term::atom("ok"), value.clone()]),
                None => Term::atom("error"),
            };
            let sort_key = encoded(&Term::Tuple(vec![app.clone(), path.clone()]));
            (sort_key, encoded(&Term::Tuple(vec![app, path, value])))
        })
        .collect();
    encoded.sort();
    encoded.dedup_by(|a, b| a.0 == b.0);
    let mut bytes = format!("{COMPILE_ENV_VERSION}\n").into_bytes();
    bytes.push(b'l');
    bytes.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    for (_, entry) in encoded {
        bytes.extend_from_slice(&entry);
    }
    Sha256::digest(&bytes).into()
}

fn encoded(term: &Term) -> Vec<u8> {
    let mut out = Vec::new();
    encode_term(term, &mut out);
    out
}

/// The canonical encoding of a term: one tag byte, then a big-endian u32 length or count,
/// then the contents. Equal Erlang terms encode equally: a charlist is the list of its code
/// points, and map entries are sorted by their keys' encodings.
///
/// | term | encoding |
/// |---|---|
/// | atom | `a` len UTF-8 |
/// | binary | `b` len bytes |
/// | integer | `i` len decimal ASCII (`-` for negatives) |
/// | float | `f` then the 8 bytes of the IEEE 754 double, big-endian |
/// | tuple | `t` count elements |
/// | proper list | `l` count elements |
/// | improper list | `L` count elements tail |
/// | map | `m` count (key, value) pairs sorted by the key's encoding |
pub fn encode_term(term: &Term, out: &mut Vec<u8>) {
    fn with_len(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
        out.push(tag);
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    fn seq(tag: u8, items: &[Term], out: &mut Vec<u8>) {
        out.push(tag);
        out.extend_from_slice(&(items.len() as u32).to_be_bytes());
        for item in items {
            encode_term(item, out);
        }
    }
    match term {
        Term::Atom(name) => with_len(b'a', name.as_bytes(), out),
        Term::Binary(bytes) => with_len(b'b', bytes, out),
        Term::Charlist(text) => {
            let codes: Vec<Term> = text.chars().map(|c| Term::Integer(c as i128)).collect();
            seq(b'l', &codes, out);
        }
        Term::Integer(n) => with_len(b'i', n.to_string().as_bytes(), out),
        Term::Float(x) => {
            out.push(b'f');
            out.extend_from_slice(&x.to_bits().to_be_bytes());
        }
        Term::Tuple(items) => seq(b't', items, out),
        Term::List(items) => seq(b'l', items, out),
        Term::ImproperList(items, tail) => {
            seq(b'L', items, out);
            encode_term(tail, out);
        }
        Term::Map(pairs) => {
            let mut encoded: Vec<(Vec<u8>, Vec<u8>)> = pairs
                .iter()
                .map(|(k, v)| {
                    let (mut key, mut value) = (Vec::new(), Vec::new());
                    encode_term(k, &mut key);
                    encode_term(v, &mut value);
                    (key, value)
                })
                .collect();
            encoded.sort();
            out.push(b'm');
            out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
            for (key, value) in encoded {
                out.extend_from_slice(&key);
                out.extend_from_slice(&value);
            }
        }
    }
}

impl MixLock {
    /// The Hex release of `app` and its closure as this lock resolves it: every transitive
    /// dependency, optional ones included when the lock has them (they change compilation).
    pub fn closure(&self, app: &str) -> Result<(PackageRef, Vec<PackageRef>), BuildKeyError> {
        let (package, closure) = self.closure_by_app(app)?;
        Ok((package, closure.into_values().collect()))
    }

    /// [`MixLock::closure`] keyed by each dependency's app name (the `deps/<app>` directory
    /// and the lock's key, which may differ from the package name).
    pub fn closure_by_app(
        &self,
        app: &str,
    ) -> Result<(PackageRef, std::collections::BTreeMap<String, PackageRef>), BuildKeyError> {
        let root = self.hex_entry(app)?;
        let mut seen = std::collections::BTreeMap::new();
        let mut stack = vec![(app.to_string(), root)];
        while let Some((dependent, entry)) = stack.pop() {
            for dep in &entry.deps {
                if seen.contains_key(&dep.app) || dep.app == app {
                    continue;
                }
                match self.entries.get(&dep.app) {
                    None if dep.optional => continue,
                    None => {
                        return Err(BuildKeyError::MissingDependency {
                            dependent,
                            app: dep.app.clone(),
                        })
                    }
                    Some(_) => {
                        let dep_entry = self.hex_entry(&dep.app)?;
                        seen.insert(dep.app.clone(), package_ref(&dep.app, dep_entry)?);
                        stack.push((dep.app.clone(), dep_entry));
                    }
                }
            }
        }
        Ok((package_ref(app, root)?, seen))
    }

    fn hex_entry(&self, app: &str) -> Result<&HexLockEntry, BuildKeyError> {
        match self.entries.get(app) {
            Some(LockEntry::Hex(entry)) => Ok(entry),
            Some(LockEntry::Git(_)) => Err(BuildKeyError::NotFromHex {
                app: app.to_string(),
                scm: "git".to_string(),
            }),
            Some(LockEntry::Other { scm }) => Err(BuildKeyError::NotFromHex {
                app: app.to_string(),
                scm: scm.clone(),
            }),
            None => Err(BuildKeyError::NotInLock {
                app: app.to_string(),
            }),
        }
    }
}

fn package_ref(app: &str, entry: &HexLockEntry) -> Result<PackageRef, BuildKeyError> {
    let outer = entry
        .outer_checksum
        .as_deref()
        .ok_or_else(|| BuildKeyError::NoOuterChecksum {
            app: app.to_string(),
        })?;
    let bytes = hex::decode(outer)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| BuildKeyError::BadChecksum {
            app: app.to_string(),
            value: outer.to_string(),
        })?;
    Ok(PackageRef {
        name: entry.package.clone(),
        version: entry.version.clone(),
        outer_checksum: bytes,
    })
}

fn is_lower_word(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

fn check_token(
    field: &'static str,
    value: &str,
    allowed: impl Fn(char) -> bool,
    rule: &'static str,
) -> Result<(), BuildKeyError> {
    if value.is_empty() || value.len() > 128 || !value.chars().all(allowed) {
        return Err(BuildKeyError::Invalid {
            field,
            value: value.to_string(),
            rule,
        });
    }
    Ok(())
}

fn check_name(field: &'static str, name: &str) -> Result<(), BuildKeyError> {
    check_token(
        field,
        name,
        is_lower_word,
        "lowercase letters, digits and _",
    )?;
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(BuildKeyError::Invalid {
            field,
            value: name.to_string(),
            rule: "must start with a lowercase letter",
        });
    }
    Ok(())
}

fn check_version(field: &'static str, version: &str) -> Result<(), BuildKeyError> {
    if version.len() > 128 || semver::Version::parse(version).is_err() {
        return Err(BuildKeyError::Invalid {
            field,
            value: version.to_string(),
            rule: "must be a SemVer version",
        });
    }
    Ok(())
}
