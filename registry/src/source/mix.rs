//! Mix projects: mix.exs is code, so the local `elixir` evaluates it with `mix_probe.exs`,
//! which reports the metadata `mix hex.build` would publish as an Erlang term.

use std::path::Path;
use std::process::Command;

use precomp_proto::metadata::{PackageMetadata, Requirement};
use precomp_proto::term::{parse_erlang_terms, Term};

use super::{guess_build_tools, link_pairs, string_list, Read, SourceError};

const PROBE: &str = include_str!("mix_probe.exs");

pub(super) fn read(dir: &Path) -> Result<Read, SourceError> {
    let scratch = tempfile::tempdir().map_err(SourceError::io(dir))?;
    let probe = scratch.path().join("mix_probe.exs");
    let out = scratch.path().join("metadata.term");
    std::fs::write(&probe, PROBE).map_err(SourceError::io(&probe))?;

    let elixir_error = |reason: String| SourceError::Elixir {
        dir: dir.to_path_buf(),
        reason,
    };
    let output = Command::new("elixir")
        .arg(&probe)
        .arg(&out)
        .current_dir(dir)
        // The project is read as Hex would publish it; its own env must not leak in.
        .env("MIX_ENV", "prod")
        .env_remove("MIX_EXS")
        .env_remove("MIX_TARGET")
        .output()
        .map_err(|e| elixir_error(e.to_string()))?;
    let text = std::fs::read_to_string(&out).map_err(|_| {
        elixir_error(format!(
            "{}; stderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    })?;

    let invalid = |message: String| SourceError::MixProject {
        dir: dir.to_path_buf(),
        message,
    };
    let terms = parse_erlang_terms(&text).map_err(|e| invalid(format!("probe output: {e}")))?;
    let result = match terms.as_slice() {
        [Term::Tuple(items)] => items.as_slice(),
        _ => return Err(invalid("probe output is not one tuple".into())),
    };
    let info = match result {
        [ok, Term::Map(info)] if ok.as_atom() == Some("ok") => info,
        [error, message] if error.as_atom() == Some("error") => {
            return Err(invalid(
                message.as_str().unwrap_or("unknown error").to_string(),
            ))
        }
        _ => {
            return Err(invalid(
                "probe output is neither {ok, _} nor {error, _}".into(),
            ))
        }
    };
    let get = |key: &str| {
        info.iter()
            .find(|(k, _)| k.as_atom() == Some(key))
            .map(|(_, v)| v)
    };
    let string = |key: &str| -> Result<String, SourceError> {
        get(key)
            .and_then(Term::as_str)
            .map(str::to_string)
            .ok_or_else(|| invalid(format!("probe output has no {key}")))
    };
    let optional_string = |key: &str| get(key).and_then(Term::as_str).map(str::to_string);
    let strings = |key: &str| string_list(get(key));

    let files = strings("files");
    // `undefined` when mix.exs sets none: then Hex guesses from the files.
    let build_tools = match get("build_tools") {
        Some(tools) if tools.as_list().is_some() => string_list(Some(tools)),
        _ => guess_build_tools(&files, "mix"),
    };
    let links = link_pairs(get("links"));
    let mut requirements = Vec::new();
    for req in get("requirements")
        .and_then(Term::as_list)
        .unwrap_or_default()
    {
        let Term::Map(fields) = req else {
            return Err(invalid("probe output has a malformed requirement".into()));
        };
        let field = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k.as_atom() == Some(key))
                .map(|(_, v)| v)
        };
        let text = |key: &str| {
            field(key)
                .and_then(Term::as_str)
                .map(str::to_string)
                .ok_or_else(|| invalid(format!("a requirement has no {key}")))
        };
        requirements.push(Requirement {
            name: text("name")?,
            app: text("app")?,
            requirement: text("requirement")?,
            optional: field("optional").and_then(Term::as_atom) == Some("true"),
            repository: text("repository")?,
        });
    }

    // Directories are listed in the metadata; the files under them are what gets packed.
    let package_files = files
        .iter()
        .filter(|f| dir.join(f).is_file())
        .cloned()
        .collect();
    let metadata = PackageMetadata {
        name: string("name")?,
        version: string("version")?,
        app: string("app")?,
        description: string("description")?,
        files,
        licenses: strings("licenses"),
        links,
        requirements,
        build_tools,
        elixir: optional_string("elixir"),
        other: Vec::new(),
    };
    Ok(Read {
        metadata,
        files: package_files,
        replaced: Default::default(),
        package_config: get("package_config").and_then(Term::as_atom) == Some("true"),
    })
}
