//! Erlang projects: rebar3 (`src/APP.app.src`) and erlang.mk (a committed `ebin/APP.app`).
//!
//! Metadata follows rebar3_hex: the application resource file gives the version, description,
//! licenses, links and an optional `pkg_name`; `rebar.config`'s `deps` give the requirements.
//! Unlike Mix projects these are plain terms, read without running anything.

use std::path::Path;

use precomp_proto::metadata::{PackageMetadata, Requirement};
use precomp_proto::term::{parse_erlang_terms, Term};

use super::{
    expand_files, find_one, guess_build_tools, link_pairs, string_list, SourceError, SourceKind,
};

/// rebar3_hex's default package files.
const REBAR3_FILES: &[&str] = &[
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

/// What erlang.mk-built packages such as cowboy ship: the application file in ebin (but no
/// beams), the Makefile and erlang.mk include files, and rebar.config for rebar3 users.
const ERLANG_MK_FILES: &[&str] = &[
    "ebin/*.app",
    "src",
    "c_src",
    "include",
    "priv",
    "Makefile",
    "erlang.mk",
    "*.mk",
    "rebar.config",
    "CHANGELOG*",
    "README*",
    "LICENSE*",
    "NOTICE",
];

pub(super) fn read(
    dir: &Path,
    kind: SourceKind,
) -> Result<(PackageMetadata, Vec<String>), SourceError> {
    let (app_file, default_files, fallback_tool) = match kind {
        SourceKind::Rebar3 => (
            find_one(&dir.join("src"), ".app.src"),
            REBAR3_FILES,
            "rebar3",
        ),
        _ => (find_one(&dir.join("ebin"), ".app"), ERLANG_MK_FILES, "make"),
    };
    let app_file = app_file.ok_or_else(|| SourceError::NotAPackage {
        dir: dir.to_path_buf(),
    })?;
    let invalid = |file: &Path, message: String| SourceError::Invalid {
        file: file.to_path_buf(),
        message,
    };

    let text = std::fs::read_to_string(&app_file).map_err(SourceError::io(&app_file))?;
    let terms = parse_erlang_terms(&text).map_err(|e| invalid(&app_file, e.to_string()))?;
    let (app, props) = match terms.as_slice() {
        [Term::Tuple(t)] => match t.as_slice() {
            [tag, Term::Atom(app), Term::List(props)] if tag.as_atom() == Some("application") => {
                (app.clone(), props.as_slice())
            }
            _ => {
                return Err(invalid(
                    &app_file,
                    "expected {application, Name, [...]}".into(),
                ))
            }
        },
        _ => {
            return Err(invalid(
                &app_file,
                "expected exactly one {application, ...} term".into(),
            ))
        }
    };
    let prop = |key: &str| {
        props.iter().find_map(|p| match p.as_tuple()? {
            [k, v] if k.as_atom() == Some(key) => Some(v),
            _ => None,
        })
    };
    let strings = |key: &str| string_list(prop(key));

    let version = prop("vsn").and_then(Term::as_str).ok_or_else(|| {
        invalid(
            &app_file,
            "vsn must be a literal version string (rebar3 resolves `git` and `{cmd, ...}` only when publishing; write the version out)".into(),
        )
    })?;
    let name = match prop("pkg_name") {
        Some(pkg) => pkg
            .as_atom()
            .or_else(|| pkg.as_str())
            .ok_or_else(|| invalid(&app_file, "pkg_name must be an atom or string".into()))?
            .to_string(),
        None => app.clone(),
    };
    let links = link_pairs(prop("links"));

    let patterns: Vec<String> = match prop("files") {
        Some(_) => strings("files"),
        None => default_files.iter().map(|s| s.to_string()).collect(),
    }
    .into_iter()
    .chain(strings("include_files"))
    .collect();
    let excluded = strings("exclude_files");
    let files = expand_files(dir, &patterns, |path| {
        // Hidden files, editor leftovers and compiled output never belong in a package.
        path.split('/').any(|c| c.starts_with('.') || c == "_build")
            || path.ends_with('~')
            || path.ends_with(".beam")
            || excluded.iter().any(|e| e == path)
    })?;

    let rebar_config = dir.join("rebar.config");
    let requirements = if rebar_config.is_file() {
        rebar_requirements(&rebar_config)?
    } else {
        Vec::new()
    };

    let metadata = PackageMetadata {
        name,
        version: version.to_string(),
        app,
        description: prop("description")
            .and_then(Term::as_str)
            .unwrap_or_default()
            .trim()
            .to_string(),
        build_tools: guess_build_tools(&files, fallback_tool),
        files: files.clone(),
        licenses: strings("licenses"),
        links,
        requirements,
        elixir: None,
        other: Vec::new(),
    };
    Ok((metadata, files))
}

/// The Hex requirements of `rebar.config`'s top-level `deps`.
fn rebar_requirements(path: &Path) -> Result<Vec<Requirement>, SourceError> {
    let invalid = |message: String| SourceError::Invalid {
        file: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(SourceError::io(path))?;
    let terms = parse_erlang_terms(&text).map_err(|e| invalid(e.to_string()))?;
    let deps = terms
        .iter()
        .find_map(|t| match t.as_tuple()? {
            [k, Term::List(deps)] if k.as_atom() == Some("deps") => Some(deps.as_slice()),
            _ => None,
        })
        .unwrap_or_default();

    let mut requirements = Vec::new();
    for dep in deps {
        // `name`, `{name, "req"}`, `{name, {pkg, package}}`, `{name, "req", {pkg, package}}`;
        // anything with a source such as `{git, ...}` cannot be a Hex dependency.
        let (app, requirement, package) = match dep {
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
                    (
                        app.clone(),
                        req.as_str().map(str::to_string),
                        pkg_name(source),
                    )
                }
                [Term::Atom(app), ..] => {
                    return Err(invalid(format!(
                    "dependency {app} is not a Hex package (only Hex packages can be dependencies)"
                )))
                }
                _ => return Err(invalid(format!("unrecognised dependency {dep:?}"))),
            },
            _ => return Err(invalid(format!("unrecognised dependency {dep:?}"))),
        };
        requirements.push(Requirement {
            name: package.unwrap_or_else(|| app.clone()),
            app,
            // rebar3 takes any version of a bare dependency.
            requirement: requirement.unwrap_or_else(|| ">= 0.0.0".to_string()),
            optional: false,
            repository: "hexpm".to_string(),
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
