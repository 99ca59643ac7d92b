//! A project's `mix.lock`: which package versions (and checksums) its dependencies resolved to.
//!
//! The file is one Elixir map literal keyed by dependency app name, written by Mix with
//! `inspect/2`. Hex entries have grown over the years:
//!
//! ```text
//! {:hex, :pkg, "1.0.0", "inner", [:mix], [deps]}                      # 6 elements, old Hex
//! {:hex, :pkg, "1.0.0", "inner", [:mix], [deps], "hexpm"}             # 7: + repository
//! {:hex, :pkg, "1.0.0", "inner", [:mix], [deps], "hexpm", "outer"}    # 8: + outer checksum
//! ```
//!
//! Each dep is `{:app, requirement | nil, [hex: :package, repo: "hexpm", optional: false]}`.
//! Entries from other SCMs (`{:git, url, rev, opts}`, `{:path, ...}`, ...) are kept and
//! reported as not from Hex rather than rejected.

use std::collections::BTreeMap;

use crate::manager::Manager;
use crate::term::{parse_elixir_term, Term, TermError};

/// Larger lock files are refused before parsing; real ones are a few hundred KiB at most.
pub const MAX_LOCK_SIZE: usize = 16 * 1024 * 1024;

/// The repository a dependency comes from when the lock names none.
pub const DEFAULT_REPO: &str = "hexpm";

/// A parsed `mix.lock`, entries keyed by dependency app name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MixLock {
    pub entries: BTreeMap<String, LockEntry>,
}

/// One locked dependency.
#[derive(Debug, Clone, PartialEq)]
pub enum LockEntry {
    Hex(HexLockEntry),
    Git(GitLockEntry),
    /// Any other `{:scm, ...}` tuple, such as `{:path, ...}`: not something a Hex mirror
    /// serves.
    Other {
        scm: String,
    },
}

/// A dependency resolved from a Hex repository.
#[derive(Debug, Clone, PartialEq)]
pub struct HexLockEntry {
    /// The Hex package name (may differ from the app name the entry is keyed by).
    pub package: String,
    pub version: String,
    /// SHA-256 of the tarball's contents as Hex computes it, lowercase hex.
    pub inner_checksum: String,
    /// Build tools Mix detected: `mix`, `rebar3`, `make`, ...
    pub managers: Vec<String>,
    pub deps: Vec<LockDep>,
    /// `hexpm`, or an organisation's `hexpm:acme`; `hexpm` for locks older than Hex 0.16.
    pub repo: String,
    /// SHA-256 of the whole tarball, lowercase hex; absent in locks older than Hex 0.20.
    pub outer_checksum: Option<String>,
    /// Elements after the eighth, kept verbatim: a newer Hex wrote this entry.
    pub extra: Vec<Term>,
}

impl HexLockEntry {
    /// The manager Mix takes from the lock entry's build tools alone: `mix` if they list it,
    /// else `rebar3` if they list it, else none (Mix then takes a rebar3 parent's manager, or
    /// infers it from the package's files: [`crate::manager::mix_managers`]).
    ///
    /// Mix's rule, `Mix.Dep.Loader.load/2` and `scm_manager/2` (lib/mix/lib/mix/dep/loader.ex,
    /// identical in v1.14.0 and v1.18.3): `opts[:manager] || scm_manager(scm, opts) ||
    /// parent's manager || infer_manager(dest)`, where `scm_manager` is the first of
    /// `@scm_managers ~w(mix rebar3)a` among `scm.managers(opts)` (for Hex, the lock's build
    /// tools) — make is never taken from them ("the file based heuristic will always figure
    /// it out"). The parent's manager makes the difference for make-only entries:
    /// [`crate::manager::mix_managers`].
    pub fn mix_manager(&self) -> Option<Manager> {
        Manager::from_build_tools(&self.managers)
    }
}

/// A dependency of a locked Hex package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockDep {
    pub app: String,
    /// `None` when the lock says `nil` (no version constraint).
    pub requirement: Option<String>,
    /// The `hex:` option; defaults to `app`.
    pub package: String,
    /// The `repo:` option; defaults to `hexpm`.
    pub repo: String,
    pub optional: bool,
}

/// A dependency checked out from git.
#[derive(Debug, Clone, PartialEq)]
pub struct GitLockEntry {
    pub url: String,
    /// The locked commit.
    pub rev: String,
    /// `branch:`, `tag:`, `ref:`, `submodules:`, `sparse:`, ... in file order.
    pub opts: Vec<(String, Term)>,
}

/// Why a `mix.lock` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("mix.lock is {size} bytes, more than the {max} byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("mix.lock: {0}")]
    Syntax(#[from] TermError),
    #[error("mix.lock: expected a map %{{...}} at the top level, found {found}")]
    NotAMap { found: String },
    #[error("mix.lock: a dependency name must be an atom or a string, found {found}")]
    InvalidKey { found: String },
    #[error("mix.lock: dependency {dep}: {problem}")]
    InvalidEntry { dep: String, problem: String },
}

impl MixLock {
    /// Reads a `mix.lock`. Checksums are validated (64 hex digits) and normalised to
    /// lowercase; every error names the dependency it is about.
    pub fn parse(text: &str) -> Result<Self, LockError> {
        if text.len() > MAX_LOCK_SIZE {
            return Err(LockError::TooLarge {
                size: text.len(),
                max: MAX_LOCK_SIZE,
            });
        }
        let term = parse_elixir_term(text)?;
        let Term::Map(pairs) = term else {
            return Err(LockError::NotAMap {
                found: describe(&term),
            });
        };
        let mut entries = BTreeMap::new();
        for (key, value) in pairs {
            let name = key
                .as_atom()
                .or_else(|| key.as_str())
                .ok_or_else(|| LockError::InvalidKey {
                    found: describe(&key),
                })?
                .to_string();
            let entry = entry(&value).map_err(|problem| LockError::InvalidEntry {
                dep: name.clone(),
                problem,
            })?;
            entries.insert(name, entry);
        }
        Ok(MixLock { entries })
    }

    /// The lock as Mix writes it: `%{` then one `"app": {:hex, ...},` line per entry, sorted
    /// by app, then `}`. Only Hex entries can be written (a lock of git or path deps comes
    /// from Mix itself).
    pub fn to_text(&self) -> Result<String, LockError> {
        let mut text = String::from("%{\n");
        for (app, entry) in &self.entries {
            let LockEntry::Hex(entry) = entry else {
                return Err(LockError::InvalidEntry {
                    dep: app.clone(),
                    problem: "only Hex entries can be written".into(),
                });
            };
            if !entry.extra.is_empty() {
                return Err(LockError::InvalidEntry {
                    dep: app.clone(),
                    problem: "entries with fields newer than Hex 2 cannot be written".into(),
                });
            }
            let managers: Vec<String> = entry.managers.iter().map(|m| atom(m)).collect();
            let deps: Vec<String> = entry
                .deps
                .iter()
                .map(|dep| {
                    format!(
                        "{{{}, {}, [hex: {}, repo: {}, optional: {}]}}",
                        atom(&dep.app),
                        dep.requirement
                            .as_deref()
                            .map_or_else(|| "nil".to_string(), elixir_string),
                        atom(&dep.package),
                        elixir_string(&dep.repo),
                        dep.optional
                    )
                })
                .collect();
            text.push_str(&format!(
                "  {}: {{:hex, {}, {}, {}, [{}], [{}], {}",
                elixir_string(app),
                atom(&entry.package),
                elixir_string(&entry.version),
                elixir_string(&entry.inner_checksum),
                managers.join(", "),
                deps.join(", "),
                elixir_string(&entry.repo),
            ));
            if let Some(outer) = &entry.outer_checksum {
                text.push_str(&format!(", {}", elixir_string(outer)));
            }
            text.push_str("},\n");
        }
        text.push_str("}\n");
        Ok(text)
    }

    /// Entries resolved from Hex, by app name.
    pub fn hex(&self) -> impl Iterator<Item = (&str, &HexLockEntry)> + '_ {
        self.entries.iter().filter_map(|(name, e)| match e {
            LockEntry::Hex(h) => Some((name.as_str(), h)),
            _ => None,
        })
    }

    /// Entries from git, paths or other SCMs, by app name.
    pub fn not_from_hex(&self) -> impl Iterator<Item = (&str, &LockEntry)> + '_ {
        self.entries
            .iter()
            .filter(|(_, e)| !matches!(e, LockEntry::Hex(_)))
            .map(|(name, e)| (name.as_str(), e))
    }
}

/// `:name`, quoted when it is not a plain identifier.
fn atom(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        format!(":{name}")
    } else {
        format!(":{}", elixir_string(name))
    }
}

/// A double-quoted Elixir string.
fn elixir_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' | '\\' | '#' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Short printed form of a term for error messages.
fn describe(t: &Term) -> String {
    let text = crate::term::to_erlang_text(t);
    if text.chars().count() > 60 {
        let short: String = text.chars().take(57).collect();
        format!("{short}...")
    } else {
        text
    }
}

fn entry(value: &Term) -> Result<LockEntry, String> {
    let items = value.as_tuple().ok_or_else(|| {
        format!(
            "expected a tuple such as {{:hex, ...}}, found {}",
            describe(value)
        )
    })?;
    let scm = items.first().and_then(Term::as_atom).ok_or_else(|| {
        format!(
            "expected a tuple starting with an SCM atom such as :hex, found {}",
            describe(value)
        )
    })?;
    match scm {
        "hex" => hex_entry(items).map(LockEntry::Hex),
        "git" => git_entry(items).map(LockEntry::Git),
        other => Ok(LockEntry::Other {
            scm: other.to_string(),
        }),
    }
}

/// Text of an atom or a UTF-8 string.
fn name(t: &Term) -> Option<&str> {
    t.as_atom().or_else(|| t.as_str())
}

fn text<'t>(t: &'t Term, what: &str) -> Result<&'t str, String> {
    t.as_str()
        .ok_or_else(|| format!("{what} must be a string, found {}", describe(t)))
}

fn checksum(t: &Term, what: &str) -> Result<String, String> {
    let s = text(t, what)?;
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "{what} must be 64 hexadecimal digits, found {}",
            describe(t)
        ))
    }
}

fn hex_entry(items: &[Term]) -> Result<HexLockEntry, String> {
    let [_, package, version, inner, managers, deps, rest @ ..] = items else {
        return Err(format!(
            "a :hex entry has {} elements, expected at least 6 (:hex, package, version, checksum, managers, deps)",
            items.len()
        ));
    };
    let package = name(package)
        .ok_or_else(|| {
            format!(
                "package name must be an atom or a string, found {}",
                describe(package)
            )
        })?
        .to_string();
    let version = text(version, "version")?.to_string();
    if version.is_empty() {
        return Err("version must not be empty".into());
    }
    let inner_checksum = checksum(inner, "inner checksum")?;
    let managers = managers
        .as_list()
        .ok_or_else(|| format!("managers must be a list, found {}", describe(managers)))?
        .iter()
        .map(|m| {
            name(m)
                .map(str::to_string)
                .ok_or_else(|| format!("managers must be atoms, found {}", describe(m)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let deps = deps
        .as_list()
        .ok_or_else(|| format!("deps must be a list, found {}", describe(deps)))?
        .iter()
        .enumerate()
        .map(|(i, d)| lock_dep(i, d))
        .collect::<Result<Vec<_>, _>>()?;
    let repo = match rest.first() {
        Some(t) => text(t, "repo")?.to_string(),
        None => DEFAULT_REPO.to_string(),
    };
    let outer_checksum = match rest.get(1) {
        None => None,
        Some(t) if t.as_atom() == Some("nil") => None,
        Some(t) => Some(checksum(t, "outer checksum")?),
    };
    Ok(HexLockEntry {
        package,
        version,
        inner_checksum,
        managers,
        deps,
        repo,
        outer_checksum,
        extra: rest.get(2..).unwrap_or_default().to_vec(),
    })
}

fn lock_dep(i: usize, d: &Term) -> Result<LockDep, String> {
    let Some([app, requirement, opts]) = d.as_tuple() else {
        return Err(format!(
            "dep {} must be {{:app, requirement, opts}}, found {}",
            i + 1,
            describe(d)
        ));
    };
    let app = name(app)
        .ok_or_else(|| format!("dep {} app must be an atom, found {}", i + 1, describe(app)))?
        .to_string();
    let requirement = match requirement {
        Term::Atom(a) if a == "nil" => None,
        t => Some(text(t, &format!("requirement of dep {app}"))?.to_string()),
    };
    if opts.as_list().is_none() {
        return Err(format!(
            "options of dep {app} must be a keyword list, found {}",
            describe(opts)
        ));
    }
    let package = match opts.proplist_get("hex") {
        Some(t) => name(t)
            .ok_or_else(|| {
                format!(
                    "hex: option of dep {app} must be an atom, found {}",
                    describe(t)
                )
            })?
            .to_string(),
        None => app.clone(),
    };
    let repo = match opts.proplist_get("repo") {
        Some(t) => text(t, &format!("repo: option of dep {app}"))?.to_string(),
        None => DEFAULT_REPO.to_string(),
    };
    let optional = match opts.proplist_get("optional") {
        None => false,
        Some(t) if t.as_atom() == Some("nil") => false,
        Some(t) => t.as_bool().ok_or_else(|| {
            format!(
                "optional: option of dep {app} must be true or false, found {}",
                describe(t)
            )
        })?,
    };
    Ok(LockDep {
        app,
        requirement,
        package,
        repo,
        optional,
    })
}

fn git_entry(items: &[Term]) -> Result<GitLockEntry, String> {
    let url = items
        .get(1)
        .ok_or("a :git entry needs a URL")
        .and_then(|t| text(t, "git URL").map_err(|_| "git URL must be a string"))?
        .to_string();
    let rev = items
        .get(2)
        .ok_or("a :git entry needs a revision")
        .and_then(|t| text(t, "git revision").map_err(|_| "git revision must be a string"))?
        .to_string();
    let opts = match items.get(3) {
        None => Vec::new(),
        Some(t) => t
            .as_list()
            .ok_or_else(|| format!("git options must be a keyword list, found {}", describe(t)))?
            .iter()
            .map(|o| match o.as_tuple() {
                Some([k, v]) => name(k)
                    .map(|k| (k.to_string(), v.clone()))
                    .ok_or_else(|| format!("git option keys must be atoms, found {}", describe(k))),
                _ => Err(format!(
                    "git options must be a keyword list, found {}",
                    describe(o)
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(GitLockEntry { url, rev, opts })
}
