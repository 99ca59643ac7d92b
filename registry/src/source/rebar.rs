//! rebar3 projects (`src/APP.app.src`): the package rebar3_hex builds with `rebar3 hex build`,
//! read from plain terms without running anything.
//!
//! Source: erlef/rebar3_hex v7.2.0, `src/rebar3_hex_build.erl` (`create_package`,
//! `include_files`, `update_versions`), `src/rebar3_hex_app.erl` (`vcs_vsn`, `get_deps`) and
//! `src/rebar3_hex_file.erl` (`expand_paths`, `update_app_src`):
//!
//! - version: `vsn` as written, or read from `{file, F}`; `git`, `semver` and `{cmd, ...}` are
//!   resolved by rebar3 from the repository or a command when publishing, which a release
//!   source cannot repeat: they need the version given (`SourceOptions::version`);
//! - name `pkg_name` or the app; description, licenses and links as written; build tools the
//!   app.src's `build_tools`, else `[rebar3]` (never guessed from the files);
//! - requirements: `rebar.config`'s top-level `deps` (default profile), Hex packages only; the
//!   requirement is the one rebar.config gives as `{Package, "Req"}`, otherwise `~>` and the
//!   version rebar.lock locks (rebar3_hex's `update_versions`, which looks the dependency up
//!   by package name);
//! - files: `files` (or the default list) expanded, each directory listed before its contents,
//!   sorted; minus `exclude_paths`, minus paths matching `~$`, `\.o$`, `\.so$`, `\.swp$` or
//!   `exclude_patterns`; plus `include_paths`; plus `src/APP.app.src`. The v6 names
//!   (`include_files`, `exclude_files`, `exclude_regexps`) are read too, as rebar3_hex does.
//!
//! Two deliberate differences: `exclude_patterns` are matched against `/` + the path inside
//! the package (rebar3_hex matches the absolute path, so a pattern could match the directory
//! the source happens to sit in), and the packaged `src/APP.app.src` is the file as written
//! (rebar3_hex writes the same term back in `~tp` layout) unless the version was given, when
//! it is written with that `vsn`, as rebar3_hex's `update_app_src` does.

use std::collections::BTreeMap;
use std::path::Path;

use precomp_proto::metadata::{PackageMetadata, Requirement, DEFAULT_REPOSITORY};
use precomp_proto::rebar_lock::{RebarLock, RebarSource};
use precomp_proto::term::{parse_erlang_terms, to_erlang_text, Term};

use super::{find_one, link_pairs, relative, string_list, Read, SourceError, SourceOptions};

/// rebar3_hex's `?DEFAULT_FILES`.
const DEFAULT_FILES: &[&str] = &[
    "src",
    "c_src",
    "include",
    "rebar.config.script",
    "priv",
    "rebar.config",
    "rebar.lock",
    "CHANGELOG*",
    "changelog*",
    "README*",
    "readme*",
    "LICENSE*",
    "license*",
    "NOTICE",
];

/// rebar3_hex's `known_exclude_file/2`: editor and build leftovers.
const KNOWN_EXCLUDES: &[&str] = &["~$", r"\.o$", r"\.so$", r"\.swp$"];

/// app.src keys only rebar3_hex reads: a project that sets one is published with rebar3_hex.
const PACKAGE_KEYS: &[&str] = &[
    "licenses",
    "links",
    "pkg_name",
    "files",
    "include_paths",
    "include_files",
    "exclude_paths",
    "exclude_files",
    "exclude_patterns",
    "exclude_regexps",
    "build_tools",
];

/// `src/APP.app.src`: the application name and its properties.
struct AppSrc {
    path: std::path::PathBuf,
    app: String,
    props: Vec<Term>,
}

impl AppSrc {
    fn read(dir: &Path) -> Result<AppSrc, SourceError> {
        let path =
            find_one(&dir.join("src"), ".app.src").ok_or_else(|| SourceError::NotAPackage {
                dir: dir.to_path_buf(),
            })?;
        let invalid = |message: String| SourceError::Invalid {
            file: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(SourceError::io(&path))?;
        let terms = parse_erlang_terms(&text).map_err(|e| invalid(e.to_string()))?;
        let [Term::Tuple(t)] = terms.as_slice() else {
            return Err(invalid(
                "expected exactly one {application, ...} term".into(),
            ));
        };
        match t.as_slice() {
            [tag, Term::Atom(app), Term::List(props)] if tag.as_atom() == Some("application") => {
                Ok(AppSrc {
                    app: app.clone(),
                    props: props.clone(),
                    path,
                })
            }
            _ => Err(invalid("expected {application, Name, [...]}".into())),
        }
    }

    fn get(&self, key: &str) -> Option<&Term> {
        self.props.iter().find_map(|p| match p.as_tuple()? {
            [k, v] if k.as_atom() == Some(key) => Some(v),
            _ => None,
        })
    }

    fn strings(&self, key: &str) -> Vec<String> {
        string_list(self.get(key))
    }

    fn invalid(&self, message: String) -> SourceError {
        SourceError::Invalid {
            file: self.path.clone(),
            message,
        }
    }
}

/// What configures rebar3_hex's package in the app.src or rebar.config, if anything.
pub(super) fn publishing_config(dir: &Path) -> Result<Option<String>, SourceError> {
    let app_src = AppSrc::read(dir)?;
    let mut found: Vec<String> = PACKAGE_KEYS
        .iter()
        .filter(|key| app_src.get(key).is_some())
        .map(|key| {
            format!(
                "{} sets {key}",
                relative(dir, &app_src.path).unwrap_or_default()
            )
        })
        .collect();
    let config = dir.join("rebar.config");
    if config.is_file() {
        let terms = rebar_config(&config)?;
        let entry = |key: &str| {
            terms.iter().find_map(|t| match t.as_tuple()? {
                [k, v] if k.as_atom() == Some(key) => Some(v),
                _ => None,
            })
        };
        if entry("hex").is_some() {
            found.push("rebar.config has a hex section".into());
        }
        let uses_plugin = ["plugins", "project_plugins"].iter().any(|key| {
            entry(key)
                .and_then(Term::as_list)
                .unwrap_or_default()
                .iter()
                .any(|p| {
                    p.as_atom() == Some("rebar3_hex")
                        || p.as_tuple().and_then(|t| t.first()?.as_atom()) == Some("rebar3_hex")
                })
        });
        if uses_plugin {
            found.push("rebar.config uses the rebar3_hex plugin".into());
        }
    }
    Ok((!found.is_empty()).then(|| found.join(", ")))
}

pub(super) fn read(dir: &Path, options: &SourceOptions) -> Result<Read, SourceError> {
    let app_src = AppSrc::read(dir)?;
    let app_src_relative = format!("src/{}.app.src", app_src.app);

    let written = version(dir, &app_src)?;
    let mut replaced = BTreeMap::new();
    let version = match (written, &options.version) {
        (Vsn::Known(v), None) => v,
        (Vsn::Known(v), Some(given)) if *given == v => v,
        (Vsn::Known(v), Some(given)) => {
            return Err(app_src.invalid(format!(
                "the version given ({given}) is not the one the app.src says ({v})"
            )))
        }
        (Vsn::Resolved(how), None) => {
            return Err(app_src.invalid(format!(
                "{how}, and precomp reads a release source without running anything: write the released version in the app.src, e.g. {{vsn, \"1.2.3\"}} (for a git tag `v1.2.3` rebar3 publishes 1.2.3), or give it: `precomp repo build --package-version {}=1.2.3`",
                dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
            )))
        }
        (Vsn::Resolved(_), Some(given)) => {
            // rebar3_hex's update_app_src: the packaged app.src carries the version published.
            let props = app_src
                .props
                .iter()
                .map(|p| match p.as_tuple() {
                    Some([k, _]) if k.as_atom() == Some("vsn") => Term::Tuple(vec![
                        Term::atom("vsn"),
                        Term::Charlist(given.clone()),
                    ]),
                    _ => p.clone(),
                })
                .collect();
            let term = Term::Tuple(vec![
                Term::atom("application"),
                Term::atom(app_src.app.clone()),
                Term::List(props),
            ]);
            replaced.insert(
                app_src_relative.clone(),
                format!("{}.\n", to_erlang_text(&term)).into_bytes(),
            );
            given.clone()
        }
    };

    let name = match app_src.get("pkg_name") {
        Some(pkg) => pkg
            .as_atom()
            .or_else(|| pkg.as_str())
            .ok_or_else(|| app_src.invalid("pkg_name must be an atom or string".into()))?
            .to_string(),
        None => app_src.app.clone(),
    };
    let build_tools = match app_src.get("build_tools") {
        // binarify: atoms and strings alike.
        Some(tools) => tools
            .as_list()
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t.as_str().or_else(|| t.as_atom()))
            .map(str::to_string)
            .collect(),
        None => vec!["rebar3".to_string()],
    };

    let listed = package_files(dir, &app_src, &app_src_relative)?;
    // Directories are listed in the metadata; their files are what gets packed.
    let files = listed
        .iter()
        .filter(|f| dir.join(f).is_file())
        .cloned()
        .collect();

    let rebar_config = dir.join("rebar.config");
    let requirements = if rebar_config.is_file() {
        requirements(dir, &rebar_config)?
    } else {
        Vec::new()
    };

    let metadata = PackageMetadata {
        name,
        version,
        app: app_src.app.clone(),
        description: app_src
            .get("description")
            .and_then(Term::as_str)
            .unwrap_or_default()
            .to_string(),
        build_tools,
        files: listed,
        licenses: app_src.strings("licenses"),
        links: link_pairs(app_src.get("links")),
        requirements,
        elixir: None,
        other: Vec::new(),
    };
    Ok(Read {
        metadata,
        files,
        replaced,
        package_config: false,
    })
}

/// The app.src's `vsn`.
enum Vsn {
    Known(String),
    /// rebar3 works it out when publishing; how, for the message.
    Resolved(String),
}

/// rebar3_hex's `vcs_vsn`, as far as it can be followed without running anything.
fn version(dir: &Path, app_src: &AppSrc) -> Result<Vsn, SourceError> {
    let Some(vsn) = app_src.get("vsn") else {
        return Err(app_src.invalid("no vsn".into()));
    };
    let from_vcs = |written: &str| {
        Vsn::Resolved(format!(
            "{{vsn, {written}}}: rebar3_hex takes the version from the version control history (`git describe`, the latest tag) when it publishes"
        ))
    };
    Ok(match vsn {
        // A string naming a resource rebar3 knows is that resource (`list_to_existing_atom`);
        // a binary is always the version itself.
        Term::Charlist(s) if s == "git" || s == "semver" => from_vcs(&to_erlang_text(vsn)),
        v if v.as_str().is_some() => Vsn::Known(v.as_str().unwrap_or_default().to_string()),
        Term::Atom(a) if is_vcs(a) => from_vcs(a),
        Term::Tuple(t) => match t.as_slice() {
            [tag, _] if tag.as_atom() == Some("cmd") => Vsn::Resolved(format!(
                "{}: rebar3_hex runs that command for the version when it publishes",
                to_erlang_text(vsn)
            )),
            [tag, file] if tag.as_atom() == Some("file") => {
                let file = file.as_str().ok_or_else(|| {
                    app_src.invalid("{vsn, {file, F}}: F must be a string".into())
                })?;
                let path = dir.join(file);
                let text = std::fs::read_to_string(&path).map_err(SourceError::io(&path))?;
                Vsn::Known(text.trim().to_string())
            }
            [tag, _] if tag.as_atom().is_some_and(is_vcs) => from_vcs(&to_erlang_text(vsn)),
            _ => {
                return Err(app_src.invalid(format!(
                    "unknown vsn format {} (rebar3_hex: \"Unknown vsn format\")",
                    vsn.summary()
                )))
            }
        },
        other => {
            return Err(app_src.invalid(format!(
                "unknown vsn format {} (rebar3_hex: \"Unknown vsn format\")",
                other.summary()
            )))
        }
    })
}

/// Version control resources rebar3 resolves a version from (`semver` is git).
fn is_vcs(name: &str) -> bool {
    matches!(name, "git" | "semver" | "hg")
}

/// rebar3_hex's `include_files/3`: the metadata file list, directories included.
fn package_files(
    dir: &Path,
    app_src: &AppSrc,
    app_src_relative: &str,
) -> Result<Vec<String>, SourceError> {
    // The v7 name wins over the v6 one.
    let either = |new: &str, old: &str| match app_src.get(new) {
        Some(_) => app_src.strings(new),
        None => app_src.strings(old),
    };
    let patterns: Vec<String> = match app_src.get("files") {
        Some(_) => app_src.strings("files"),
        None => DEFAULT_FILES.iter().map(|s| s.to_string()).collect(),
    };
    let include = either("include_paths", "include_files");
    let exclude = either("exclude_paths", "exclude_files");
    let mut regexes = Vec::new();
    for pattern in KNOWN_EXCLUDES
        .iter()
        .map(|s| s.to_string())
        .chain(either("exclude_patterns", "exclude_regexps"))
    {
        regexes.push(regex::Regex::new(&pattern).map_err(|e| {
            app_src.invalid(format!(
                "exclude pattern {pattern:?} is not a regular expression precomp can read: {e}"
            ))
        })?);
    }

    let excluded = expand_paths(dir, &exclude)?;
    let mut files: Vec<String> = expand_paths(dir, &patterns)?
        .into_iter()
        .filter(|path| {
            let rooted = format!("/{path}");
            !excluded.contains(path) && !regexes.iter().any(|re| re.is_match(&rooted))
        })
        .collect();
    // Explicit includes come back even when excluded (ukeymerge).
    files.extend(expand_paths(dir, &include)?);
    files.sort();
    files.dedup();
    // lists:keystore: the app.src is always in, appended if the patterns missed it.
    if !files.iter().any(|f| f == app_src_relative) {
        files.push(app_src_relative.to_string());
    }
    Ok(files)
}

/// rebar3_hex_file's `expand_paths/2`: each glob's matches, directories followed by everything
/// under them (links not followed), as sorted relative paths.
fn expand_paths(dir: &Path, patterns: &[String]) -> Result<Vec<String>, SourceError> {
    fn walk(root: &Path, path: &Path, out: &mut Vec<String>) -> Result<(), SourceError> {
        out.push(relative(root, path)?);
        let is_dir = std::fs::symlink_metadata(path)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_dir {
            for entry in std::fs::read_dir(path).map_err(SourceError::io(path))? {
                let entry = entry.map_err(SourceError::io(path))?;
                walk(root, &entry.path(), out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for pattern in patterns {
        let full = dir.join(pattern);
        let matches = glob::glob(&full.to_string_lossy()).map_err(|e| SourceError::Invalid {
            file: dir.to_path_buf(),
            message: format!("bad file pattern {pattern:?}: {e}"),
        })?;
        for path in matches.flatten() {
            walk(dir, &path, &mut out)?;
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn rebar_config(path: &Path) -> Result<Vec<Term>, SourceError> {
    let text = std::fs::read_to_string(path).map_err(SourceError::io(path))?;
    parse_erlang_terms(&text).map_err(|e| SourceError::Invalid {
        file: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The Hex requirements rebar3_hex publishes for `rebar.config`'s top-level `deps`.
fn requirements(dir: &Path, path: &Path) -> Result<Vec<Requirement>, SourceError> {
    let invalid = |message: String| SourceError::Invalid {
        file: path.to_path_buf(),
        message,
    };
    let terms = rebar_config(path)?;
    let deps = terms
        .iter()
        .find_map(|t| match t.as_tuple()? {
            [k, Term::List(deps)] if k.as_atom() == Some("deps") => Some(deps.as_slice()),
            _ => None,
        })
        .unwrap_or_default();
    if deps.is_empty() {
        return Ok(Vec::new());
    }
    let lock_path = dir.join("rebar.lock");
    let lock = if lock_path.is_file() {
        let text = std::fs::read_to_string(&lock_path).map_err(SourceError::io(&lock_path))?;
        Some(RebarLock::parse(&text).map_err(|e| SourceError::Invalid {
            file: lock_path.clone(),
            message: e.to_string(),
        })?)
    } else {
        None
    };
    let locked = |app: &str| {
        lock.as_ref()?.entries.iter().find_map(|e| match &e.source {
            RebarSource::Pkg(pkg) if e.level == 0 && e.app == app => Some(pkg),
            _ => None,
        })
    };

    let mut requirements = Vec::new();
    for dep in deps {
        // `name`, `{name, "req"}`, `{name, {pkg, package}}`, `{name, "req", {pkg, package}}`;
        // anything with a source such as `{git, ...}` cannot be a Hex dependency.
        let (app, written, package) = match dep {
            Term::Atom(app) => (app.clone(), None, None),
            Term::Tuple(t) => match t.as_slice() {
                [Term::Atom(app), req] if req.as_str().is_some() => {
                    (app.clone(), req.as_str().map(str::to_string), None)
                }
                [Term::Atom(app), source] if pkg_name(source).is_some() => {
                    (app.clone(), None, pkg_name(source))
                }
                [Term::Atom(app), req, source]
                    if req.as_str().is_some() && pkg_name(source).is_some() =>
                {
                    (app.clone(), None, pkg_name(source))
                }
                [Term::Atom(app), ..] => {
                    return Err(invalid(format!(
                        "dependency {app} is not a Hex package (rebar3_hex: only Hex packages can be dependencies)"
                    )))
                }
                _ => return Err(invalid(format!("unrecognised dependency {}", dep.summary()))),
            },
            _ => return Err(invalid(format!("unrecognised dependency {}", dep.summary()))),
        };
        let from_lock = locked(&app);
        let name = package
            .or_else(|| from_lock.map(|p| p.name.clone()))
            .unwrap_or_else(|| app.clone());
        // update_versions finds `{Package, "Req"}` in rebar.config; anything else takes `~>`
        // and the locked version.
        let requirement = match written {
            Some(req) if name == app => req,
            _ => match from_lock {
                Some(pkg) => format!("~>{}", pkg.version),
                None => {
                    return Err(invalid(format!(
                        "dependency {app}: rebar3_hex publishes `~>` and the version rebar.lock locks for it, and {} ; commit rebar.lock (`rebar3 lock`) or write `{{{name}, \"~> X.Y\"}}`",
                        if lock.is_some() { "rebar.lock has no top-level entry for it" } else { "there is no rebar.lock" }
                    )))
                }
            },
        };
        requirements.push(Requirement {
            name,
            app,
            requirement,
            optional: false,
            repository: DEFAULT_REPOSITORY.to_string(),
        });
    }
    requirements.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(requirements)
}

/// `{pkg, Name}` → the package name.
fn pkg_name(source: &Term) -> Option<String> {
    match source.as_tuple()? {
        [tag, name] if tag.as_atom() == Some("pkg") => {
            name.as_atom().or_else(|| name.as_str()).map(str::to_string)
        }
        _ => None,
    }
}
