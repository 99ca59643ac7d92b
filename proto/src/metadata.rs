//! A package tarball's `metadata.config`: the package's name, version, files and dependencies.
//!
//! The file is Erlang term text, one `{<<"key">>, Value}.` per entry (hex_core writes it with
//! `io_lib_pretty`). Packages from different eras and build tools disagree on details, so
//! [`PackageMetadata::parse`] reads every shape in use:
//!
//! - `requirements` as the specification's kvlist keyed by dependency name, as Mix's list of
//!   proplists each carrying a `name`, or as maps;
//! - `links` as a list of `{name, url}` pairs or as a map;
//! - `build_tools` missing (old rebar3 packages): guessed from the top-level files, as
//!   hex_core's `guess_build_tools` does.
//!
//! [`PackageMetadata::to_config`] writes the canonical form back, readable by hex_core.

use std::collections::HashMap;

use crate::term::{parse_erlang_terms, to_erlang_text, Term, TermError};

/// Larger `metadata.config` files are refused before parsing. Real ones are a few KiB;
/// hex_core itself has no such check (only limits on the whole tarball), so this bound is
/// ours, to cap memory on hostile tarballs.
pub const MAX_METADATA_SIZE: usize = 1024 * 1024;

/// Repository a requirement resolves against when it names none.
pub const DEFAULT_REPOSITORY: &str = "hexpm";

/// What a package's `metadata.config` says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageMetadata {
    pub name: String,
    pub version: String,
    /// The OTP application name; defaults to `name`.
    pub app: String,
    pub description: String,
    pub files: Vec<String>,
    pub licenses: Vec<String>,
    /// `(name, url)` pairs in file order.
    pub links: Vec<(String, String)>,
    pub requirements: Vec<Requirement>,
    /// `mix`, `rebar3`, `make`, ...; guessed from `files` when the file has none.
    pub build_tools: Vec<String>,
    /// The Elixir version requirement, for packages built by Mix.
    pub elixir: Option<String>,
    /// Keys we don't model (`extra`, `maintainers`, `secret_scan`, ...), in file order.
    pub other: Vec<(String, Term)>,
}

/// One dependency of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The Hex package depended on.
    pub name: String,
    /// The OTP application it provides; defaults to `name`.
    pub app: String,
    /// A version requirement such as `~> 1.0`.
    pub requirement: String,
    pub optional: bool,
    /// `hexpm` unless the package comes from another repository (`hexpm:acme`, ...).
    pub repository: String,
}

/// Why a `metadata.config` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata.config is {size} bytes, more than the {max} byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("metadata.config: {0}")]
    Syntax(#[from] TermError),
    #[error("metadata.config: term {index} is not a {{key, value}} pair with a binary key, found {found}")]
    NotKeyValue { index: usize, found: String },
    #[error("metadata.config: required key {0:?} is missing")]
    MissingKey(&'static str),
    #[error("metadata.config: {key}: {problem}")]
    InvalidField { key: String, problem: String },
}

/// Keys with a field of their own; everything else goes to [`PackageMetadata::other`].
const MODELLED_KEYS: &[&str] = &[
    "name",
    "version",
    "app",
    "description",
    "files",
    "licenses",
    "links",
    "requirements",
    "build_tools",
    "elixir",
];

/// Top-level files that reveal a build tool, as in hex_core's `guess_build_tools`.
const BUILD_TOOL_FILES: &[(&str, &str)] = &[
    ("mix.exs", "mix"),
    ("rebar.config", "rebar3"),
    ("rebar", "rebar3"),
    ("Makefile", "make"),
    ("Makefile.win", "make"),
];

impl PackageMetadata {
    /// Reads a `metadata.config`. `name` and `version` are required; every other key may be
    /// missing. Text that is not UTF-8 is read as Latin-1, as hex_core does.
    pub fn parse(bytes: &[u8]) -> Result<Self, MetadataError> {
        if bytes.len() > MAX_METADATA_SIZE {
            return Err(MetadataError::TooLarge {
                size: bytes.len(),
                max: MAX_METADATA_SIZE,
            });
        }
        let text = match std::str::from_utf8(bytes) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => std::borrow::Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
        };
        let terms = parse_erlang_terms(&text)?;

        // Later duplicates win, as with hex_core's maps:from_list/1; the key keeps the place
        // of its first occurrence. The index keeps this linear on files full of keys.
        let mut entries: Vec<(String, Term)> = Vec::with_capacity(terms.len());
        let mut index: HashMap<String, usize> = HashMap::with_capacity(terms.len());
        for (i, term) in terms.into_iter().enumerate() {
            let pair = match &term {
                Term::Tuple(kv) => match kv.as_slice() {
                    [k, v] => key_text(k).map(|k| (k, v.clone())),
                    _ => None,
                },
                _ => None,
            };
            let Some((key, value)) = pair else {
                return Err(MetadataError::NotKeyValue {
                    index: i + 1,
                    found: term.summary(),
                });
            };
            match index.get(&key).and_then(|&at| entries.get_mut(at)) {
                Some(slot) => slot.1 = value,
                None => {
                    index.insert(key.clone(), entries.len());
                    entries.push((key, value));
                }
            }
        }
        let get = |key: &str| {
            index
                .get(key)
                .and_then(|&at| entries.get(at))
                .map(|(_, v)| v)
        };

        let name = required_string(get("name"), "name")?;
        let version = required_string(get("version"), "version")?;
        let app = match get("app") {
            Some(t) => string(t, "app")?,
            None => name.clone(),
        };
        let description = get("description")
            .map(|t| string(t, "description"))
            .transpose()?
            .unwrap_or_default();
        let files = get("files")
            .map(|t| string_list(t, "files"))
            .transpose()?
            .unwrap_or_default();
        let licenses = get("licenses")
            .map(|t| string_list(t, "licenses"))
            .transpose()?
            .unwrap_or_default();
        let links = get("links").map(links).transpose()?.unwrap_or_default();
        let requirements = get("requirements")
            .map(requirements)
            .transpose()?
            .unwrap_or_default();
        let build_tools = match get("build_tools") {
            Some(t @ (Term::List(_) | Term::Charlist(_))) => string_list(t, "build_tools")?,
            // hex_core guesses whenever build_tools is not a list.
            _ => guess_build_tools(&files),
        };
        let elixir = get("elixir").map(|t| string(t, "elixir")).transpose()?;
        let other = entries
            .iter()
            .filter(|(k, _)| !MODELLED_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();

        Ok(PackageMetadata {
            name,
            version,
            app,
            description,
            files,
            licenses,
            links,
            requirements,
            build_tools,
            elixir,
            other,
        })
    }

    /// Writes `metadata.config` text: deterministic, keys in a fixed order (the modelled
    /// ones, then [`Self::other`] in its order), requirements in Mix's list-of-proplists
    /// shape sorted by name. hex_core reads it back, provided the `other` terms hold no
    /// floats or improper lists, which its restricted scanner cannot read.
    pub fn to_config(&self) -> Vec<u8> {
        let bin = |s: &str| Term::Binary(s.as_bytes().to_vec());
        let bins = |v: &[String]| Term::List(v.iter().map(|s| bin(s)).collect());
        let mut entries: Vec<(&str, Term)> = vec![
            ("name", bin(&self.name)),
            ("version", bin(&self.version)),
            ("app", bin(&self.app)),
            ("description", bin(&self.description)),
        ];
        if let Some(elixir) = &self.elixir {
            entries.push(("elixir", bin(elixir)));
        }
        entries.push(("licenses", bins(&self.licenses)));
        entries.push((
            "links",
            Term::List(
                self.links
                    .iter()
                    .map(|(name, url)| Term::Tuple(vec![bin(name), bin(url)]))
                    .collect(),
            ),
        ));
        entries.push(("files", bins(&self.files)));
        let mut requirements: Vec<&Requirement> = self.requirements.iter().collect();
        requirements.sort_by(|a, b| a.name.cmp(&b.name));
        let pair = |k: &str, v: Term| Term::Tuple(vec![bin(k), v]);
        entries.push((
            "requirements",
            Term::List(
                requirements
                    .into_iter()
                    .map(|r| {
                        Term::List(vec![
                            pair("name", bin(&r.name)),
                            pair("app", bin(&r.app)),
                            pair("optional", Term::Atom(r.optional.to_string())),
                            pair("requirement", bin(&r.requirement)),
                            pair("repository", bin(&r.repository)),
                        ])
                    })
                    .collect(),
            ),
        ));
        entries.push(("build_tools", bins(&self.build_tools)));

        let mut out = String::new();
        let others = self.other.iter().map(|(k, v)| (k.as_str(), v.clone()));
        for (key, value) in entries.into_iter().chain(others) {
            out.push_str(&to_erlang_text(&Term::Tuple(vec![bin(key), value])));
            out.push_str(".\n");
        }
        out.into_bytes()
    }
}

/// hex_core's `guess_build_tools`: build tools implied by top-level files, sorted, deduped.
pub fn guess_build_tools(files: &[String]) -> Vec<String> {
    let mut tools: Vec<String> = BUILD_TOOL_FILES
        .iter()
        .filter(|(file, _)| files.iter().any(|f| f == file))
        .map(|(_, tool)| (*tool).to_string())
        .collect();
    tools.sort();
    tools.dedup();
    tools
}

/// A key as text: binaries and charlists (and, leniently, atoms).
fn key_text(t: &Term) -> Option<String> {
    t.as_str().or_else(|| t.as_atom()).map(str::to_string)
}

fn invalid(key: &str, problem: String) -> MetadataError {
    MetadataError::InvalidField {
        key: key.to_string(),
        problem,
    }
}

fn string(t: &Term, key: &str) -> Result<String, MetadataError> {
    t.as_str().map(str::to_string).ok_or_else(|| {
        invalid(
            key,
            format!("expected a UTF-8 string, found {}", t.summary()),
        )
    })
}

fn required_string(t: Option<&Term>, key: &'static str) -> Result<String, MetadataError> {
    let s = string(t.ok_or(MetadataError::MissingKey(key))?, key)?;
    if s.is_empty() {
        return Err(invalid(key, "must not be empty".into()));
    }
    Ok(s)
}

fn list<'t>(t: &'t Term, key: &str) -> Result<&'t [Term], MetadataError> {
    t.as_list()
        .ok_or_else(|| invalid(key, format!("expected a list, found {}", t.summary())))
}

fn string_list(t: &Term, key: &str) -> Result<Vec<String>, MetadataError> {
    list(t, key)?
        .iter()
        .enumerate()
        .map(|(i, item)| string(item, &format!("{key}[{i}]")))
        .collect()
}

/// `[{Name, Url}]` or `#{Name => Url}`.
fn links(t: &Term) -> Result<Vec<(String, String)>, MetadataError> {
    let pair = |i: usize, k: &Term, v: &Term| -> Result<(String, String), MetadataError> {
        let key = format!("links[{i}]");
        Ok((string(k, &key)?, string(v, &key)?))
    };
    match t {
        Term::Map(pairs) => pairs
            .iter()
            .enumerate()
            .map(|(i, (k, v))| pair(i, k, v))
            .collect(),
        _ => list(t, "links")?
            .iter()
            .enumerate()
            .map(|(i, item)| match item.as_tuple() {
                Some([k, v]) => pair(i, k, v),
                _ => Err(invalid(
                    &format!("links[{i}]"),
                    format!("expected a {{name, url}} pair, found {}", item.summary()),
                )),
            })
            .collect(),
    }
}

/// Both shapes of `requirements` (and maps), entry by entry, so a file mixing them is read
/// too.
fn requirements(t: &Term) -> Result<Vec<Requirement>, MetadataError> {
    match t {
        Term::Map(pairs) => pairs
            .iter()
            .enumerate()
            .map(|(i, (k, v))| keyed_requirement(i, k, v))
            .collect(),
        _ => list(t, "requirements")?
            .iter()
            .enumerate()
            .map(|(i, item)| match (item, item.as_tuple()) {
                // The specification's kvlist: {Name, Fields}.
                (_, Some([name, fields])) => keyed_requirement(i, name, fields),
                // Mix's list of proplists (or maps), each naming its package.
                (Term::List(_) | Term::Map(_), _) => {
                    let name = item.proplist_get("name").ok_or_else(|| {
                        invalid(
                            &format!("requirements[{i}]"),
                            "has no \"name\" key".to_string(),
                        )
                    })?;
                    let name = string(name, &format!("requirements[{i}].name"))?;
                    requirement_fields(name, item)
                }
                (other, _) => Err(invalid(
                    &format!("requirements[{i}]"),
                    format!(
                        "expected {{Name, Fields}} or a list with a \"name\" key, found {}",
                        other.summary()
                    ),
                )),
            })
            .collect(),
    }
}

fn keyed_requirement(i: usize, name: &Term, fields: &Term) -> Result<Requirement, MetadataError> {
    let name = string(name, &format!("requirements[{i}] name"))?;
    if !matches!(fields, Term::List(_) | Term::Map(_) | Term::Charlist(_)) {
        return Err(invalid(
            &format!("requirements.{name}"),
            format!("expected a proplist or map, found {}", fields.summary()),
        ));
    }
    requirement_fields(name, fields)
}

fn requirement_fields(name: String, fields: &Term) -> Result<Requirement, MetadataError> {
    let key = |field: &str| format!("requirements.{name}.{field}");
    let app = match fields.proplist_get("app") {
        Some(t) => string(t, &key("app"))?,
        None => name.clone(),
    };
    let requirement = match fields.proplist_get("requirement") {
        Some(t) => string(t, &key("requirement"))?,
        None => return Err(invalid(&key("requirement"), "is missing".into())),
    };
    let optional = match fields.proplist_get("optional") {
        None => false,
        Some(t) if t.as_atom() == Some("nil") => false,
        Some(t) => t.as_bool().ok_or_else(|| {
            invalid(
                &key("optional"),
                format!("expected true or false, found {}", t.summary()),
            )
        })?,
    };
    let repository = match fields.proplist_get("repository") {
        Some(t) => string(t, &key("repository"))?,
        None => DEFAULT_REPOSITORY.to_string(),
    };
    Ok(Requirement {
        name,
        app,
        requirement,
        optional,
        repository,
    })
}
