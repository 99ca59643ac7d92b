//! The build key: which precompiled artifact a consumer may use instead of compiling a
//! dependency itself.
//!
//! An artifact is valid for a consumer exactly when every input that can change the compiled
//! output matches (`../shared/design/DESIGN.md`, "The build key"): the package (name,
//! version, outer checksum); its closure — every transitive dependency as the consumer's lock
//! resolves it, optional ones included when the lock has them; the OTP major release and
//! the exact Elixir version; the dependency's Mix env; the target; the build tool Mix uses
//! for it; and the values of the `Application.compile_env` paths the package reads, as the
//! consumer's config sets them.
//!
//! Each closure member is identified by its own key (key format v2, a Merkle key as Nix's
//! store paths are): a dependency's macro can expand a value the dependency's own config
//! fixed, so what a member was built with is part of what the package is built against.
//! Keys are therefore computed bottom-up over the closure ([`MixLock::inputs_bottom_up`]).
//! Key format v1 (closure members by name, version and checksum only) is not computed any
//! more: its manifests are read as such and reported as misses.
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

use std::collections::BTreeMap;

use crate::lock::{HexLockEntry, LockEntry, MixLock};
use crate::term::{Syntax, Term};

/// First line of every canonical text; changes whenever the encoding does.
pub const BUILD_KEY_VERSION: &str = "precomp-build-key-v2";

/// First line of a miss's request text ([`BuildInputs::request_text`]): what identifies a
/// miss when some closure member's key is not known yet. Never a build key's first line, so a
/// request key can never equal a base key.
pub const MISS_REQUEST_VERSION: &str = "precomp-miss-request-v1";

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
    #[error("Mix cannot tell how to build {app}: its lock entry lists neither mix nor rebar3 as a build tool, and its package has no mix.exs, rebar.config or Makefile")]
    NoManager { app: String },
    #[error("the key of {name}, a dependency in the closure, is not known")]
    UnknownMemberKey { name: String },
    #[error("{name}, a dependency in the closure, has no {what}")]
    MissingMemberInput { name: String, what: &'static str },
    #[error("mix.lock: {first} and {second} depend on each other")]
    Cycle { first: String, second: String },
}

/// The build tool Mix compiles a package with; which one depends on the consumer's whole
/// dependency graph ([`crate::manager`]). Part of the key.
pub use crate::manager::Manager;

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
    /// Reads `any` or `ARCH-LIBC` (the key text's form): the architecture lowercase letters,
    /// digits and `_`, the C library the same and `-` (`x86_64-linux-gnu`), as a key needs
    /// them. The one parser of targets: manifests, misses, `--target`.
    pub fn parse(text: &str) -> Option<Target> {
        if text == "any" {
            return Some(Target::Any);
        }
        let (arch, libc) = text.split_once('-')?;
        let valid = |part: &str, extra: char| {
            !part.is_empty() && part.chars().all(|c| is_lower_word(c) || c == extra)
        };
        (valid(arch, '_') && valid(libc, '-')).then(|| Target::Native {
            arch: arch.to_string(),
            libc: libc.to_string(),
        })
    }

    /// [`Target::parse`] of a machine's target: `ARCH-LIBC`, never `any`.
    pub fn parse_native(text: &str) -> Option<Target> {
        Target::parse(text).filter(|target| *target != Target::Any)
    }

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
        Target::parse_native(&format!("{arch}-{}", libc.join("-")))
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

impl CompileEnvEntry {
    /// `app [key, sub]` as a person using `syntax` writes the path: `env_reader [:greeting]`
    /// in Elixir, `env_reader [greeting]` in Erlang.
    pub fn describe_path(&self, syntax: Syntax) -> String {
        format!(
            "{} {}",
            self.app,
            syntax.print(&Term::List(self.path.clone()))
        )
    }

    /// The value in `syntax` (cut to 60 characters), or `nothing` when the config sets none.
    pub fn describe_value(&self, syntax: Syntax) -> String {
        match &self.value {
            Some(value) => syntax.summary(value),
            None => "nothing".to_string(),
        }
    }
}

/// A closure member: its release and its own build key, computed with the same OTP, Elixir
/// and Mix env, its own target, manager and compile env, and its own closure's keys.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClosureMember {
    pub package: PackageRef,
    /// `None` only while a miss is being described ([`BuildInputs::request_text`]): the mirror
    /// has no build of the member, so what it reads (its target, its compile-env paths) is
    /// not known yet. A build key needs every member's key.
    pub key: Option<BuildKey>,
}

/// Everything a build key covers.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildInputs {
    pub package: PackageRef,
    /// The build tool the consumer's Mix uses for the package ([`crate::manager::mix_managers`]).
    pub manager: Manager,
    /// Every transitive dependency with its own key; order does not matter.
    pub closure: Vec<ClosureMember>,
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

impl BuildKey {
    /// Reads 64 lowercase hex digits (the only form keys are written in).
    pub fn parse(text: &str) -> Option<BuildKey> {
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        hex::decode(text).ok()?.try_into().ok().map(BuildKey)
    }
}

/// What the key of one package needs besides the lock and the [`KeyToolchain`]: how Mix
/// builds it, where it runs, and the compile-env values it reads.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyParts {
    pub manager: Manager,
    /// `None` when not known (the mirror has no build of the package for this toolchain, so
    /// nobody knows whether it holds native code): its key, and its dependents', are then
    /// unknown.
    pub target: Option<Target>,
    /// The entries the config gives for the paths the package reads (as far as known).
    pub compile_env: Vec<CompileEnvEntry>,
}

/// What every key of one closure shares: a closure is built with one toolchain and one Mix
/// env.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyToolchain {
    pub otp_major: String,
    pub elixir: String,
    pub mix_env: String,
}

impl BuildInputs {
    /// The canonical text of everything but the compile env. Every closure member's key must
    /// be known.
    pub fn base_text(&self) -> Result<String, BuildKeyError> {
        if let Some(unknown) = self.closure.iter().find(|m| m.key.is_none()) {
            return Err(BuildKeyError::UnknownMemberKey {
                name: unknown.package.name.clone(),
            });
        }
        self.text_with_header(BUILD_KEY_VERSION)
    }

    /// The text that identifies a miss some of whose closure members have no known key (the
    /// mirror has no build of them yet): the base text with [`MISS_REQUEST_VERSION`] as its
    /// first line and `unknown` for each unknown member key. See docs/protocol.md, "Misses".
    pub fn request_text(&self) -> Result<String, BuildKeyError> {
        self.text_with_header(MISS_REQUEST_VERSION)
    }

    /// SHA-256 of [`BuildInputs::request_text`].
    pub fn request_key(&self) -> Result<BuildKey, BuildKeyError> {
        Ok(BuildKey(Sha256::digest(self.request_text()?).into()))
    }

    fn text_with_header(&self, header: &str) -> Result<String, BuildKeyError> {
        check_name("package name", &self.package.name)?;
        check_version("package version", &self.package.version)?;
        let mut closure: Vec<&ClosureMember> = self.closure.iter().collect();
        closure.sort();
        for pair in closure.windows(2) {
            if pair[0].package.name == pair[1].package.name {
                return Err(BuildKeyError::DuplicateInClosure {
                    name: pair[0].package.name.clone(),
                });
            }
        }
        let mut text = format!("{header}\n");
        text.push_str(&package_line("package", &self.package));
        text.push_str(&format!("manager {}\n", self.manager));
        for member in closure {
            let dep = &member.package;
            check_name("dependency name", &dep.name)?;
            check_version("dependency version", &dep.version)?;
            if dep.name == self.package.name {
                return Err(BuildKeyError::SelfInClosure {
                    name: dep.name.clone(),
                });
            }
            let line = package_line("dep", dep);
            let key = member
                .key
                .map_or_else(|| "unknown".to_string(), |key| key.to_string());
            text.push_str(&format!("{} {key}\n", line.trim_end()));
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

    /// What identifies a miss that carries the package's own compile-env entries (a config
    /// variant: docs/protocol.md, "Misses"): when every closure member's key is known, the
    /// build key itself ([`BuildInputs::key`]: what the consumer computes for the build it
    /// wants); otherwise the SHA-256 of the request text followed by the same `compile_env`
    /// line. Consumers whose own values differ thus report different misses.
    pub fn variant_key(&self) -> Result<BuildKey, BuildKeyError> {
        if self.closure.iter().all(|m| m.key.is_some()) {
            return self.key();
        }
        let mut text = self.request_text()?;
        text.push_str(&format!(
            "compile_env {}\n",
            hex::encode(compile_env_digest(&self.compile_env))
        ));
        Ok(BuildKey(Sha256::digest(text).into()))
    }

    /// The closure's releases, without their keys.
    pub fn releases(&self) -> Vec<PackageRef> {
        self.closure.iter().map(|m| m.package.clone()).collect()
    }
}

/// Whether a build whose base text is `base_text` satisfies the miss whose request text is
/// `request_text` (docs/protocol.md, "Misses"): line for line the same after the first line,
/// except that a member key the request says is `unknown` matches any key, and a request for
/// target `any` (what a client asks for when nobody has built the package yet) is satisfied
/// by a native build too.
pub fn request_satisfied_by(request_text: &str, base_text: &str) -> bool {
    let mut request = request_text.lines();
    let mut base = base_text.lines();
    if request.next() != Some(MISS_REQUEST_VERSION) || base.next() != Some(BUILD_KEY_VERSION) {
        return false;
    }
    let (request, base): (Vec<&str>, Vec<&str>) = (request.collect(), base.collect());
    request.len() == base.len()
        && request.iter().zip(&base).all(|(wanted, built)| {
            wanted == built
                || (wanted.starts_with("dep ")
                    && wanted.strip_suffix(" unknown").is_some_and(|release| {
                        built
                            .rsplit_once(' ')
                            .is_some_and(|(built_release, _)| built_release == release)
                    }))
                || (*wanted == "target any" && built.starts_with("target "))
        })
}

/// Whether a build that records the compile-env entries `recorded` was built with the
/// values a miss carries (`carried`, the consumer's values for the paths known when it
/// missed): every path the build read is carried, with the same value (both `error`, or
/// equal terms). The consumer's key for such a build is then the build's key. A build that
/// read a path the miss does not carry does not satisfy it: the consumer's value for that
/// path is not known.
pub fn compile_env_covers(carried: &[CompileEnvEntry], recorded: &[CompileEnvEntry]) -> bool {
    let identity = |entry: &CompileEnvEntry| {
        encoded(&Term::Tuple(vec![
            Term::Atom(entry.app.clone()),
            Term::List(entry.path.clone()),
        ]))
    };
    let value = |entry: &CompileEnvEntry| entry.value.as_ref().map(encoded);
    recorded.iter().all(|built| {
        let wanted = identity(built);
        carried
            .iter()
            .find(|entry| identity(entry) == wanted)
            .is_some_and(|entry| value(entry) == value(built))
    })
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
    ) -> Result<(PackageRef, BTreeMap<String, PackageRef>), BuildKeyError> {
        let root = self.hex_entry(app)?;
        let mut seen = BTreeMap::new();
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

    /// The inputs of `app`'s key for `target`, each closure member's key computed bottom-up
    /// from `parts` (by app name; every member of the closure, and `app`, must have one): a
    /// member's key is its own inputs' key, with its own target, manager and compile env and
    /// its own closure's keys; `None` when its target, or some key in its closure, is
    /// unknown. `app`'s compile env is `parts[app]`'s.
    pub fn inputs_bottom_up(
        &self,
        app: &str,
        target: Target,
        parts: &BTreeMap<String, KeyParts>,
        toolchain: &KeyToolchain,
    ) -> Result<BuildInputs, BuildKeyError> {
        let mut memo = BTreeMap::new();
        self.inputs_with_memo(app, target, parts, toolchain, &mut memo)
    }

    fn inputs_with_memo(
        &self,
        app: &str,
        target: Target,
        parts: &BTreeMap<String, KeyParts>,
        toolchain: &KeyToolchain,
        memo: &mut BTreeMap<String, Option<BuildKey>>,
    ) -> Result<BuildInputs, BuildKeyError> {
        let (package, closure) = self.closure_by_app(app)?;
        let own = parts
            .get(app)
            .ok_or_else(|| BuildKeyError::MissingMemberInput {
                name: package.name.clone(),
                what: "manager",
            })?;
        let mut members = Vec::new();
        for (member_app, member) in closure {
            let key = match memo.get(&member_app) {
                Some(key) => *key,
                None => {
                    if self.closure_by_app(&member_app)?.1.contains_key(app) {
                        return Err(BuildKeyError::Cycle {
                            first: app.to_string(),
                            second: member_app,
                        });
                    }
                    let member_parts = parts.get(&member_app).ok_or_else(|| {
                        BuildKeyError::MissingMemberInput {
                            name: member.name.clone(),
                            what: "manager",
                        }
                    })?;
                    let key = match &member_parts.target {
                        None => None,
                        Some(target) => {
                            let inputs = self.inputs_with_memo(
                                &member_app,
                                target.clone(),
                                parts,
                                toolchain,
                                memo,
                            )?;
                            match inputs.key() {
                                Ok(key) => Some(key),
                                Err(BuildKeyError::UnknownMemberKey { .. }) => None,
                                Err(e) => return Err(e),
                            }
                        }
                    };
                    memo.insert(member_app.clone(), key);
                    key
                }
            };
            members.push(ClosureMember {
                package: member,
                key,
            });
        }
        Ok(BuildInputs {
            package,
            manager: own.manager,
            closure: members,
            otp_major: toolchain.otp_major.clone(),
            elixir: toolchain.elixir.clone(),
            mix_env: toolchain.mix_env.clone(),
            target,
            compile_env: own.compile_env.clone(),
        })
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
