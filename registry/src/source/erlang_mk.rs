//! erlang.mk projects (cowboy, cowlib, ranch): the package erlang.mk's own Hex plugin builds
//! with `make hex-tarball-create`, computed from the project's Makefile.
//!
//! Source: ninenines/erlang.mk `plugins/hex.mk` (`HEX_TARBALL_FILES`,
//! `hex_tarball_create.erl`) and `core/deps.mk` (`query_fetch_method`, `query_version`), read at
//! commit f440744 (2025-11) and in the erlang.mk 61f58ff that cowboy 2.12.0 ships, which
//! differ only in `hex_req_NAME` (newer) and `LEGACY`:
//!
//! - name and app `$(PROJECT)`, version `$(PROJECT_VERSION)`, description
//!   `$(strip $(PROJECT_DESCRIPTION))`; `build_tools` always `[make, rebar3]`;
//! - requirements from `DEPS` only (`BUILD_DEPS`, `LOCAL_DEPS`, `TEST_DEPS`, `DOC_DEPS` are not
//!   published): for each `NAME`, the package is `NAME`, or the third word of
//!   `dep_NAME = hex VERSION PACKAGE`; the requirement is `hex_req_NAME`, else
//!   `dep_NAME_commit`, else the version word of `dep_NAME` (the second for `hex`, the third,
//!   the tag, for `git`, `git-subfolder` and `hg`); never optional. The `rebar.config` such
//!   projects commit is generated from the same Makefile (erlang.mk `core/compat.mk`), with
//!   git sources rebar3 needs, and plays no part here;
//! - files: `early-plugins.mk`, `ebin/$(PROJECT).app` and `.appup`, `erlang.mk`,
//!   `include/**/*.hrl`, `LICENSE*`, `Makefile`, `plugins.mk`, `priv/**`, `README*`,
//!   `rebar.config`, `src/**`, in that order (the directory walks sorted; names with a space
//!   or `#` skipped), unless the Makefile sets `HEX_TARBALL_FILES`;
//! - `HEX_TARBALL_EXTRA_METADATA` (an Erlang map, as cowboy's `licenses` and `links`) merged
//!   over the rest.
//!
//! The plugin builds `ebin/$(PROJECT).app` first (`make app`), so a release source must
//! carry it, committed as cowboy does, and it must say the same version.

use std::path::Path;

use precomp_proto::metadata::{PackageMetadata, Requirement, DEFAULT_REPOSITORY};
use precomp_proto::term::{parse_erlang_terms, Term};

use super::makefile::{words, Makefile};
use super::{is_version_requirement, string_list, Read, SourceError};

/// Fetch methods erlang.mk defines (`dep_fetch_*` in core/deps.mk); a Makefile may add its own.
const FETCH_METHODS: &[&str] = &[
    "git",
    "git-subfolder",
    "git-submodule",
    "hg",
    "svn",
    "cp",
    "ln",
    "hex",
    "fail",
];

/// Methods whose `query_version` is `-`: nothing Hex could resolve.
const NO_VERSION_METHODS: &[&str] = &["git-submodule", "svn", "cp", "ln", "fail"];

/// The Makefile of `dir`, read as make would.
pub(super) fn makefile(dir: &Path) -> Result<Makefile, SourceError> {
    let path = dir.join("Makefile");
    let text = std::fs::read_to_string(&path).map_err(SourceError::io(&path))?;
    let curdir = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    Makefile::parse(&text, &curdir).map_err(|e| SourceError::Invalid {
        file: path,
        message: e.to_string(),
    })
}

/// Whether `dir` is an erlang.mk project: its Makefile includes erlang.mk or names the
/// project with `PROJECT`, erlang.mk's project variable.
pub(super) fn is_project(dir: &Path) -> bool {
    if !dir.join("Makefile").is_file() {
        return false;
    }
    match makefile(dir) {
        Ok(make) => make.includes_erlang_mk() || make.sets("PROJECT"),
        // Unreadable, but erlang.mk is there: reading it will say what is wrong.
        Err(_) => dir.join("erlang.mk").is_file(),
    }
}

/// What in the Makefile configures erlang.mk's Hex package, if anything.
pub(super) fn publishing_config(dir: &Path) -> Result<Option<String>, SourceError> {
    let make = makefile(dir)?;
    let set: Vec<&str> = make
        .names()
        .filter(|name| {
            make.sets(name)
                && (*name == "PROJECT_VERSION"
                    || name.starts_with("HEX_TARBALL_")
                    || name.starts_with("hex_req_"))
        })
        .collect();
    Ok((!set.is_empty()).then(|| {
        let mut set = set;
        set.sort_unstable();
        format!("Makefile sets {}", set.join(", "))
    }))
}

pub(super) fn read(dir: &Path) -> Result<Read, SourceError> {
    let makefile_path = dir.join("Makefile");
    let make = makefile(dir)?;
    let invalid = |message: String| SourceError::Invalid {
        file: makefile_path.clone(),
        message,
    };
    let value = |name: &str| make.value(name).map_err(|e| invalid(e.to_string()));

    let project = words(&value("PROJECT")?).join(" ");
    if project.is_empty() {
        return Err(invalid(
            "PROJECT is not set: erlang.mk's Hex plugin publishes the package $(PROJECT)".into(),
        ));
    }
    let version = words(&value("PROJECT_VERSION")?).join(" ");
    if version.is_empty() {
        return Err(invalid(
            "PROJECT_VERSION is not set: erlang.mk's Hex plugin publishes version $(PROJECT_VERSION)"
                .into(),
        ));
    }
    if let Err(e) = semver::Version::parse(&version) {
        let default = if make.sets("PROJECT_VERSION") {
            ""
        } else {
            " (erlang.mk's default: the Makefile sets none)"
        };
        return Err(invalid(format!(
            "PROJECT_VERSION is {version:?}{default}, which is not SemVer ({e}); erlang.mk's Hex plugin publishes it as the version"
        )));
    }
    let description = words(&value("PROJECT_DESCRIPTION")?).join(" ");

    // The plugin builds a map keyed by package: a later duplicate replaces an earlier one.
    let mut by_package = std::collections::BTreeMap::new();
    for dep in words(&value("DEPS")?) {
        let requirement = requirement(&make, dep).map_err(invalid)?;
        by_package.insert(requirement.name.clone(), requirement);
    }
    let requirements = by_package.into_values().collect();

    let files = if make.sets("HEX_TARBALL_FILES") {
        words(&value("HEX_TARBALL_FILES")?)
            .into_iter()
            .map(str::to_string)
            .collect()
    } else {
        default_files(dir, &project, &make)?
    };
    check_app_file(dir, &project, &version)?;

    let mut metadata = PackageMetadata {
        name: project.clone(),
        version,
        app: project,
        description,
        files: files.clone(),
        licenses: Vec::new(),
        links: Vec::new(),
        requirements,
        build_tools: vec!["make".into(), "rebar3".into()],
        elixir: None,
        other: Vec::new(),
    };
    let extra = value("HEX_TARBALL_EXTRA_METADATA")?;
    if !extra.trim().is_empty() {
        merge_extra(&mut metadata, &extra).map_err(|e| {
            invalid(format!(
                "HEX_TARBALL_EXTRA_METADATA: {e} (erlang.mk merges it into the metadata map as `Metadata0#{{...}}`)"
            ))
        })?;
    }
    Ok(Read {
        metadata,
        files,
        replaced: Default::default(),
        package_config: false,
    })
}

/// One `DEPS` entry as the plugin's `Requirements0` map has it.
fn requirement(make: &Makefile, dep: &str) -> Result<Requirement, String> {
    let value = |name: String| make.value(&name).map_err(|e| e.to_string());
    let line = value(format!("dep_{dep}"))?;
    let line = words(&line);
    let Some(&method_word) = line.first() else {
        return Err(format!(
            "DEPS lists {dep}, but there is no `dep_{dep} = ...` line: erlang.mk would look {dep} up in its package index, which precomp does not read; write `dep_{dep} = hex VERSION` (or `git URL TAG`) in the Makefile"
        ));
    };
    let custom = make.sets(&format!("dep_fetch_{method_word}"));
    let method = if FETCH_METHODS.contains(&method_word) || custom {
        method_word
    } else {
        "fail"
    };
    let package = match (method, line.get(2)) {
        ("hex", Some(package)) => package.to_string(),
        _ => dep.to_string(),
    };
    let hex_req = words(&value(format!("hex_req_{dep}"))?).join(" ");
    let commit = value(format!("dep_{dep}_commit"))?;
    let requirement = if !hex_req.is_empty() {
        hex_req
    } else if NO_VERSION_METHODS.contains(&method) {
        let why = if method == "fail" {
            format!("`{method_word}` is not a fetch method erlang.mk knows")
        } else {
            format!("erlang.mk gives {method} dependencies no version (\"-\")")
        };
        return Err(format!(
            "dep_{dep} = {}: {why}, so its Hex plugin would publish no usable requirement for {dep}; set `hex_req_{dep} = REQUIREMENT` or use `dep_{dep} = hex VERSION`",
            line.join(" ")
        ));
    } else if !commit.trim().is_empty() {
        commit.trim().to_string()
    } else {
        let index = if method == "hex" { 1 } else { 2 };
        line.get(index).copied().unwrap_or("").to_string()
    };
    if !is_version_requirement(&requirement) {
        return Err(format!(
            "dep_{dep} = {}: erlang.mk's Hex plugin would publish {requirement:?} as the requirement on {package}, which is not a Hex version requirement; pin a release tag, or set `hex_req_{dep} = ~> X.Y`",
            line.join(" ")
        ));
    }
    Ok(Requirement {
        name: package,
        app: dep.to_string(),
        requirement,
        optional: false,
        repository: DEFAULT_REPOSITORY.to_string(),
    })
}

/// erlang.mk's default `HEX_TARBALL_FILES`, in its order.
fn default_files(dir: &Path, project: &str, make: &Makefile) -> Result<Vec<String>, SourceError> {
    let existing = |name: &str| dir.join(name).is_file().then(|| name.to_string());
    let legacy = !make
        .value("LEGACY")
        .map_err(|e| SourceError::Invalid {
            file: dir.join("Makefile"),
            message: e.to_string(),
        })?
        .trim()
        .is_empty();
    let mut files = Vec::new();
    files.extend(existing("early-plugins.mk"));
    files.extend(existing(&format!("ebin/{project}.app")));
    files.extend(existing(&format!("ebin/{project}.appup")));
    // $(notdir $(ERLANG_MK_FILENAME)): the erlang.mk the Makefile includes.
    if make.includes_erlang_mk() {
        files.extend(existing("erlang.mk"));
    }
    files.extend(core_find(dir, "include", |name| name.ends_with(".hrl"))?);
    files.extend(top_level_matching(dir, "LICENSE")?);
    files.extend(existing("Makefile"));
    files.extend(existing("plugins.mk"));
    files.extend(core_find(dir, "priv", |_| true)?);
    files.extend(top_level_matching(dir, "README")?);
    files.extend(existing("rebar.config"));
    let app_src = format!("src/{project}.app.src");
    files.extend(
        core_find(dir, "src", |_| true)?
            .into_iter()
            .filter(|f| !(legacy && *f == app_src)),
    );
    Ok(files)
}

/// `$(sort $(call core_find,DIR/,PATTERN))`: `find DIR \( -type l -o -type f \) -name
/// PATTERN -not -name "*[ #]*"`, sorted. Links are listed, not followed.
fn core_find(
    dir: &Path,
    sub: &str,
    matches: impl Fn(&str) -> bool + Copy,
) -> Result<Vec<String>, SourceError> {
    fn walk(
        root: &Path,
        path: &Path,
        matches: impl Fn(&str) -> bool + Copy,
        out: &mut Vec<String>,
    ) -> Result<(), SourceError> {
        for entry in std::fs::read_dir(path).map_err(SourceError::io(path))? {
            let entry = entry.map_err(SourceError::io(path))?;
            let file_type = entry.file_type().map_err(SourceError::io(path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if file_type.is_dir() {
                walk(root, &entry.path(), matches, out)?;
            } else if (file_type.is_file() || file_type.is_symlink())
                && matches(&name)
                && !name.contains([' ', '#'])
            {
                out.push(super::relative(root, &entry.path())?);
            }
        }
        Ok(())
    }
    let start = dir.join(sub);
    let mut out = Vec::new();
    if start.is_dir() {
        walk(dir, &start, matches, &mut out)?;
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `$(wildcard PREFIX*)` at the top level, sorted.
fn top_level_matching(dir: &Path, prefix: &str) -> Result<Vec<String>, SourceError> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map_err(SourceError::io(dir))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| name.starts_with(prefix))
        .collect();
    out.sort();
    Ok(out)
}

/// The committed `ebin/PROJECT.app` the plugin would otherwise generate: present, and for
/// this version.
fn check_app_file(dir: &Path, project: &str, version: &str) -> Result<(), SourceError> {
    let relative = format!("ebin/{project}.app");
    let path = dir.join(&relative);
    let invalid = |message: String| SourceError::Invalid {
        file: path.clone(),
        message,
    };
    if !path.is_file() {
        return Err(invalid(format!(
            "missing: erlang.mk's Hex plugin builds {relative} (`make app`) before packaging; commit it, as cowboy does, or run `make app` in {}",
            dir.display()
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(SourceError::io(&path))?;
    let terms = parse_erlang_terms(&text).map_err(|e| invalid(e.to_string()))?;
    let vsn = terms.first().and_then(|t| match t.as_tuple()? {
        [_, _, Term::List(props)] => props.iter().find_map(|p| match p.as_tuple()? {
            [k, v] if k.as_atom() == Some("vsn") => v.as_str().map(str::to_string),
            _ => None,
        }),
        _ => None,
    });
    match vsn {
        Some(vsn) if vsn == version => Ok(()),
        other => Err(invalid(format!(
            "says vsn {:?}, but the Makefile's PROJECT_VERSION is {version:?}; erlang.mk regenerates it with `make app`",
            other.unwrap_or_default()
        ))),
    }
}

/// `Metadata0#{...}`: the extra map's keys replace the computed ones.
fn merge_extra(metadata: &mut PackageMetadata, text: &str) -> Result<(), String> {
    let terms = parse_erlang_terms(&format!("{text}.")).map_err(|e| e.to_string())?;
    let Some(Term::Map(pairs)) = terms.first().filter(|_| terms.len() == 1) else {
        return Err("expected one map, #{...}".into());
    };
    for (key, value) in pairs {
        let key = key
            .as_atom()
            .or_else(|| key.as_str())
            .ok_or_else(|| format!("key {} is not an atom or string", key.summary()))?;
        let value = binarify(value);
        let text = |v: &Term| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("{key} must be a string"))
        };
        match key {
            "licenses" => metadata.licenses = string_list(Some(&value)),
            "build_tools" => metadata.build_tools = string_list(Some(&value)),
            "links" => {
                metadata.links = match &value {
                    Term::Map(pairs) => pairs
                        .iter()
                        .filter_map(|(k, v)| Some((k.as_str()?.into(), v.as_str()?.into())))
                        .collect(),
                    other => super::link_pairs(Some(other)),
                };
                // hex_core writes a map's pairs in key order.
                metadata.links.sort();
            }
            "description" => metadata.description = text(&value)?,
            "name" => metadata.name = text(&value)?,
            "app" => metadata.app = text(&value)?,
            "version" => metadata.version = text(&value)?,
            "files" | "requirements" => {
                return Err(format!(
                    "it sets {key}, which precomp does not take from it; list files with HEX_TARBALL_FILES, requirements with DEPS"
                ))
            }
            other => metadata.other.push((other.to_string(), value)),
        }
    }
    Ok(())
}

/// hex_core's `binarify`: atoms (but booleans) become binaries, recursively.
fn binarify(term: &Term) -> Term {
    match term {
        Term::Atom(a) if a != "true" && a != "false" && a != "undefined" => {
            Term::Binary(a.as_bytes().to_vec())
        }
        Term::List(items) => Term::List(items.iter().map(binarify).collect()),
        Term::Tuple(items) => Term::Tuple(items.iter().map(binarify).collect()),
        Term::Map(pairs) => Term::Map(
            pairs
                .iter()
                .map(|(k, v)| (binarify(k), binarify(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}
