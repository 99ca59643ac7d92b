//! A rebar3 project's `rebar.lock`: which packages (and checksums) its dependencies resolved
//! to.
//!
//! The file is Erlang term text (`file:consult`). rebar3 ≥ 3.5 writes a versioned lock, then
//! the package checksums in a second term:
//!
//! ```text
//! {"1.2.0",
//! [{<<"erl_counter">>,{pkg,<<"erl_counter">>,<<"1.0.0">>},1},
//!  {<<"erl_ids">>,{pkg,<<"erl_ids">>,<<"1.0.0">>},0}]}.
//! [
//! {pkg_hash,[
//!  {<<"erl_counter">>, <<"66066D70...">>},               % inner checksum, uppercase hex
//!  {<<"erl_ids">>, <<"5174CF72...">>}]},
//! {pkg_hash_ext,[
//!  {<<"erl_counter">>, <<"74D37143...">>},               % outer checksum, uppercase hex
//!  {<<"erl_ids">>, <<"25F59D53...">>}]}
//! ].
//! ```
//!
//! Older rebar3 wrote only the list of locks (the "beta" format, no checksums); `"1.1.0"`
//! locks carry `pkg_hash` but no `pkg_hash_ext`. Each lock is `{App, Source, Level}`: `Source`
//! is `{pkg, Name, Version}` for a Hex package (the package name may differ from the app
//! name) or `{git, Url, Ref}` and the like for other sources, kept and reported as not from
//! Hex. Checksums are keyed by app name, as rebar3's `rebar_config:consult_lock_file/1` reads
//! them; rebar.lock records no repository, so every package is from the default one.

use crate::term::{parse_erlang_terms, Term, TermError};

/// Larger lock files are refused before parsing; real ones are a few KiB.
pub const MAX_REBAR_LOCK_SIZE: usize = 16 * 1024 * 1024;

/// A parsed `rebar.lock`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RebarLock {
    /// The lock format version (`"1.2.0"`); `None` for the old format that is just the list.
    pub version: Option<String>,
    /// The locks in file order.
    pub entries: Vec<RebarLockEntry>,
}

/// One locked dependency.
#[derive(Debug, Clone, PartialEq)]
pub struct RebarLockEntry {
    /// The OTP application name.
    pub app: String,
    pub source: RebarSource,
    /// Depth in the dependency tree: 0 for the project's own deps.
    pub level: u32,
}

/// Where a locked dependency comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum RebarSource {
    Pkg(RebarPkg),
    /// `{git, ...}`, `{git_subdir, ...}`, `{hg, ...}`, ...: not something a Hex mirror serves.
    /// `kind` is the tuple's first atom; `term` the whole source as written.
    Other {
        kind: String,
        term: Term,
    },
}

/// A dependency resolved from a Hex repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebarPkg {
    /// The Hex package name.
    pub name: String,
    pub version: String,
    /// `pkg_hash`: SHA-256 of the tarball's contents as Hex computes it, normalised to
    /// lowercase hex (the file has uppercase). Absent in old locks.
    pub inner_checksum: Option<String>,
    /// `pkg_hash_ext`: SHA-256 of the whole tarball, normalised to lowercase hex. Absent in
    /// locks older than rebar3 3.14.
    pub outer_checksum: Option<String>,
}

/// Why a `rebar.lock` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebarLockError {
    #[error("rebar.lock is {size} bytes, more than the {max} byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("rebar.lock: {0}")]
    Syntax(#[from] TermError),
    #[error(
        "rebar.lock: expected {{\"1.2.0\", [Locks]}} or [Locks] as the first term, found {found}"
    )]
    NotALock { found: String },
    #[error("rebar.lock: lock {index}: {problem}")]
    InvalidLock { index: usize, problem: String },
    #[error("rebar.lock: dependency {app}: {problem}")]
    InvalidEntry { app: String, problem: String },
    #[error("rebar.lock: {section}: {problem}")]
    InvalidHashes {
        section: &'static str,
        problem: String,
    },
}

impl RebarLock {
    /// Reads a `rebar.lock`. An empty file is an empty lock, as for rebar3. Checksums are
    /// validated (64 hex digits) and normalised to lowercase; every error names the dependency
    /// or section it is about. Terms after the checksums are ignored, as rebar3 does.
    pub fn parse(text: &str) -> Result<Self, RebarLockError> {
        if text.len() > MAX_REBAR_LOCK_SIZE {
            return Err(RebarLockError::TooLarge {
                size: text.len(),
                max: MAX_REBAR_LOCK_SIZE,
            });
        }
        let terms = parse_erlang_terms(text)?;
        let Some(first) = terms.first() else {
            return Ok(RebarLock::default());
        };
        let (version, locks) = match first {
            Term::Tuple(items) => match items.as_slice() {
                [version, locks] => {
                    let version = version.as_str().ok_or_else(|| not_a_lock(first))?;
                    let locks = locks.as_list().ok_or_else(|| not_a_lock(first))?;
                    (Some(version.to_string()), locks)
                }
                _ => return Err(not_a_lock(first)),
            },
            other => (None, other.as_list().ok_or_else(|| not_a_lock(first))?),
        };
        // The beta format has no attributes; rebar3 reads only the first attribute term.
        let attrs = if version.is_some() {
            terms.get(1)
        } else {
            None
        };
        let inner = hashes(attrs, "pkg_hash")?;
        let outer = hashes(attrs, "pkg_hash_ext")?;

        let entries = locks
            .iter()
            .enumerate()
            .map(|(i, lock)| entry(i + 1, lock, &inner, &outer))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RebarLock { version, entries })
    }

    /// Entries resolved from Hex: (app, package).
    pub fn pkgs(&self) -> impl Iterator<Item = (&str, &RebarPkg)> + '_ {
        self.entries.iter().filter_map(|e| match &e.source {
            RebarSource::Pkg(p) => Some((e.app.as_str(), p)),
            RebarSource::Other { .. } => None,
        })
    }

    /// Entries from git and other sources.
    pub fn not_from_hex(&self) -> impl Iterator<Item = &RebarLockEntry> + '_ {
        self.entries
            .iter()
            .filter(|e| !matches!(e.source, RebarSource::Pkg(_)))
    }
}

fn not_a_lock(found: &Term) -> RebarLockError {
    RebarLockError::NotALock {
        found: found.summary(),
    }
}

/// Text of a binary, charlist or atom: the ways names are spelled in term files.
fn name(t: &Term) -> Option<&str> {
    t.as_str().or_else(|| t.as_atom())
}

/// `[{App, <<"HEX">>}]` from the `section` of the attributes term, checksums lowercased.
fn hashes(
    attrs: Option<&Term>,
    section: &'static str,
) -> Result<Vec<(String, String)>, RebarLockError> {
    let invalid = |problem: String| RebarLockError::InvalidHashes { section, problem };
    let Some(attrs) = attrs else {
        return Ok(Vec::new());
    };
    if attrs.as_list().is_none() {
        return Err(RebarLockError::InvalidHashes {
            section: "checksums",
            problem: format!(
                "expected a list such as [{{pkg_hash, [...]}}] after the locks, found {}",
                attrs.summary()
            ),
        });
    }
    let Some(list) = attrs.proplist_get(section) else {
        return Ok(Vec::new());
    };
    let items = list
        .as_list()
        .ok_or_else(|| invalid(format!("expected a list, found {}", list.summary())))?;
    items
        .iter()
        .map(|item| match item.as_tuple() {
            Some([app, hash]) => {
                let app = name(app).ok_or_else(|| {
                    invalid(format!(
                        "expected an app name as a binary, found {}",
                        app.summary()
                    ))
                })?;
                let hash =
                    checksum(hash).map_err(|problem| invalid(format!("{app}: {problem}")))?;
                Ok((app.to_string(), hash))
            }
            _ => Err(invalid(format!(
                "expected {{App, Checksum}}, found {}",
                item.summary()
            ))),
        })
        .collect()
}

fn checksum(t: &Term) -> Result<String, String> {
    match t.as_str() {
        Some(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(s.to_ascii_lowercase())
        }
        _ => Err(format!(
            "a checksum must be 64 hexadecimal digits, found {}",
            t.summary()
        )),
    }
}

fn lookup(hashes: &[(String, String)], app: &str) -> Option<String> {
    hashes
        .iter()
        .find(|(a, _)| a == app)
        .map(|(_, h)| h.clone())
}

fn entry(
    index: usize,
    lock: &Term,
    inner: &[(String, String)],
    outer: &[(String, String)],
) -> Result<RebarLockEntry, RebarLockError> {
    let Some([app, source, level]) = lock.as_tuple() else {
        return Err(RebarLockError::InvalidLock {
            index,
            problem: format!("expected {{App, Source, Level}}, found {}", lock.summary()),
        });
    };
    let app = name(app)
        .ok_or_else(|| RebarLockError::InvalidLock {
            index,
            problem: format!("the app name must be a binary, found {}", app.summary()),
        })?
        .to_string();
    let invalid = |problem: String| RebarLockError::InvalidEntry {
        app: app.clone(),
        problem,
    };
    let level = level
        .as_integer()
        .and_then(|l| u32::try_from(l).ok())
        .ok_or_else(|| {
            invalid(format!(
                "the level must be a non-negative integer, found {}",
                level.summary()
            ))
        })?;
    let items = source.as_tuple().unwrap_or_default();
    let kind = items.first().and_then(Term::as_atom).ok_or_else(|| {
        invalid(format!(
            "expected a source such as {{pkg, Name, Version}}, found {}",
            source.summary()
        ))
    })?;
    let source = if kind == "pkg" {
        let [_, package, version] = items else {
            return Err(invalid(format!(
                "expected {{pkg, Name, Version}}, found {}",
                source.summary()
            )));
        };
        let package = name(package).ok_or_else(|| {
            invalid(format!(
                "the package name must be a binary, found {}",
                package.summary()
            ))
        })?;
        let version = version.as_str().filter(|v| !v.is_empty()).ok_or_else(|| {
            invalid(format!(
                "the version must be a non-empty binary, found {}",
                version.summary()
            ))
        })?;
        RebarSource::Pkg(RebarPkg {
            name: package.to_string(),
            version: version.to_string(),
            inner_checksum: lookup(inner, &app),
            outer_checksum: lookup(outer, &app),
        })
    } else {
        RebarSource::Other {
            kind: kind.to_string(),
            term: source.clone(),
        }
    };
    Ok(RebarLockEntry { app, source, level })
}
