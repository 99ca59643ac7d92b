//! What a rebuild needs besides the manifest's key inputs: the `mix.lock` of the package and
//! its closure, and a config giving the compile-time values the manifest records.
//!
//! **The lock** is made from the manifest's package and closure alone, as `mix deps.get`
//! would write it: each release's tarball (fetched from the mirror, refused unless its
//! SHA-256 is the outer checksum the manifest names) gives the app name, the inner checksum,
//! the build tools — which Hex writes into the lock as the managers, sorted (Hex.SCM
//! `update/1`) — and the requirements (app, optional). So the auditor trusts nothing the
//! builder says beyond the key inputs, and checks that the lock's closure of the package is
//! exactly the manifest's.
//!
//! **The config** sets, for each `compile_env` entry with a value — the package's, and those
//! of its closure members' published manifests (each member's key names what it was built
//! with, its compile env included) — exactly that value at that path (nested paths become keyword lists, or maps for non-atom keys); entries Mix
//! recorded as unset stay unset. Values are Erlang term text, parsed in the config by
//! `:erl_parse`, so no Elixir rendering can change them. The rebuild's key includes the
//! compile-env digest, so a config that did not reproduce the values shows as another key.

use std::collections::BTreeMap;

use precomp_builder::sources::SourceCache;
use precomp_proto::buildkey::{CompileEnvEntry, PackageRef};
use precomp_proto::lock::{HexLockEntry, LockDep, LockEntry, MixLock, DEFAULT_REPO};
use precomp_proto::manifest::Manifest;
use precomp_proto::metadata::PackageMetadata;
use precomp_proto::term::{to_erlang_text, Term};

use super::AuditError;

/// The lock of `manifest`'s package and closure, and the package's app name.
pub fn lock(manifest: &Manifest, sources: &SourceCache) -> Result<(MixLock, String), AuditError> {
    let (root, members) = manifest.releases()?;
    let mut lock = MixLock::default();
    let mut root_app = None;
    for (i, package) in std::iter::once(&root).chain(&members).enumerate() {
        let (app, entry) = entry(package, sources)?;
        if i == 0 {
            root_app = Some(app.clone());
        }
        if lock
            .entries
            .insert(app.clone(), LockEntry::Hex(entry))
            .is_some()
        {
            return Err(AuditError::Invalid(format!(
                "two packages of the manifest's closure are the app {app}"
            )));
        }
    }
    let app = root_app.expect("the package comes first");
    let (package, closure) = lock.closure(&app)?;
    let mut ours = closure.clone();
    ours.sort();
    let mut theirs = members.clone();
    theirs.sort();
    if package != root || ours != theirs {
        let names = |c: &[PackageRef]| {
            c.iter()
                .map(|p| format!("{} {}", p.name, p.version))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(AuditError::Invalid(format!(
            "the manifest's closure ({}) is not what its packages' own requirements give ({}): \
             the manifest is inconsistent",
            names(&theirs),
            names(&ours)
        )));
    }
    Ok((lock, app))
}

fn entry(
    package: &PackageRef,
    sources: &SourceCache,
) -> Result<(String, HexLockEntry), AuditError> {
    let tarball = sources.tarball(package)?;
    let metadata = PackageMetadata::parse(&tarball.metadata_config)
        .map_err(|e| AuditError::Invalid(format!("{} {}: {e}", package.name, package.version)))?;
    if metadata.name != package.name || metadata.version != package.version {
        return Err(AuditError::Invalid(format!(
            "the tarball of {} {} says it is {} {}",
            package.name, package.version, metadata.name, metadata.version
        )));
    }
    let mut managers = metadata.build_tools.clone();
    managers.sort();
    managers.dedup();
    let mut deps: Vec<LockDep> = metadata
        .requirements
        .iter()
        .map(|requirement| LockDep {
            app: requirement.app.clone(),
            requirement: Some(requirement.requirement.clone()),
            package: requirement.name.clone(),
            repo: requirement.repository.clone(),
            optional: requirement.optional,
        })
        .collect();
    deps.sort_by(|a, b| a.app.cmp(&b.app));
    Ok((
        metadata.app.clone(),
        HexLockEntry {
            package: package.name.clone(),
            version: package.version.clone(),
            inner_checksum: hex::encode(tarball.inner_checksum),
            managers,
            deps,
            repo: DEFAULT_REPO.into(),
            outer_checksum: Some(hex::encode(package.outer_checksum)),
            extra: Vec::new(),
        },
    ))
}

/// A `config.exs` setting exactly the recorded compile-env values; `None` when no entry has
/// a value.
pub fn config_exs(entries: &[CompileEnvEntry]) -> Option<String> {
    // app -> key -> tree
    let mut apps: BTreeMap<String, Vec<(Term, Node)>> = BTreeMap::new();
    for entry in entries {
        let Some(value) = &entry.value else { continue };
        let nodes = apps.entry(entry.app.clone()).or_default();
        insert(nodes, &entry.path, value);
    }
    if apps.is_empty() {
        return None;
    }
    let mut text = String::from(
        "import Config\n\
         # Written by precomp audit: the compile-time values the audited manifest records.\n\
         term = fn text ->\n  \
           {:ok, tokens, _} = :erl_scan.string(String.to_charlist(text))\n  \
           {:ok, term} = :erl_parse.parse_term(tokens)\n  \
           term\n\
         end\n",
    );
    for (app, nodes) in &apps {
        let keyword = render_keyword(nodes);
        text.push_str(&format!(
            "config {}, term.({})\n",
            elixir_atom(app),
            elixir_string(&format!("{keyword}."))
        ));
    }
    Some(text)
}

#[derive(Clone, Debug)]
enum Node {
    Value(Term),
    Branch(Vec<(Term, Node)>),
}

fn insert(nodes: &mut Vec<(Term, Node)>, path: &[Term], value: &Term) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let position = nodes.iter().position(|(key, _)| key == first);
    if rest.is_empty() {
        // A value recorded for the whole key wins over values under it.
        match position {
            Some(i) => nodes[i].1 = Node::Value(value.clone()),
            None => nodes.push((first.clone(), Node::Value(value.clone()))),
        }
        return;
    }
    let i = match position {
        Some(i) => i,
        None => {
            nodes.push((first.clone(), Node::Branch(Vec::new())));
            nodes.len() - 1
        }
    };
    if let Node::Branch(children) = &mut nodes[i].1 {
        insert(children, rest, value);
    }
}

/// `[{Key, Value}, ...]` when every key is an atom, else `#{Key => Value}`.
fn render_node(node: &Node) -> String {
    match node {
        Node::Value(term) => to_erlang_text(term),
        Node::Branch(children) if children.iter().all(|(k, _)| matches!(k, Term::Atom(_))) => {
            render_keyword(children)
        }
        Node::Branch(children) => format!(
            "#{{{}}}",
            children
                .iter()
                .map(|(k, v)| format!("{} => {}", to_erlang_text(k), render_node(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn render_keyword(children: &[(Term, Node)]) -> String {
    format!(
        "[{}]",
        children
            .iter()
            .map(|(k, v)| format!("{{{}, {}}}", to_erlang_text(k), render_node(v)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn elixir_atom(name: &str) -> String {
    format!(":{}", elixir_string(name))
}

/// A double-quoted Elixir string with no interpolation.
fn elixir_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '#' => out.push_str("\\#"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use precomp_proto::term::parse_erlang_terms;

    fn entry(path: &str, value: Option<&str>) -> CompileEnvEntry {
        let term = |text: &str| parse_erlang_terms(&format!("{text}.")).unwrap().remove(0);
        let Term::List(path) = term(path) else {
            panic!()
        };
        CompileEnvEntry {
            app: "env_reader".into(),
            path,
            value: value.map(term),
        }
    }

    #[test]
    fn the_config_sets_exactly_the_recorded_values() {
        assert_eq!(config_exs(&[entry("[greeting]", None)]), None);
        let text = config_exs(&[
            entry("[greeting]", Some("<<\"howdy\">>")),
            entry("[format, punctuation]", Some("<<\"?\">>")),
            entry("[format, style]", None),
            entry("[table, 1]", Some("one")),
        ])
        .unwrap();
        assert!(
            text.contains(
                r#"config :"env_reader", term.("[{greeting, <<\"howdy\">>}, {format, [{punctuation, <<\"?\">>}]}, {table, \#{1 => one}}].")"#
            ),
            "{text}"
        );
    }

    /// The generated config, read by Elixir's own Config.Reader, gives back the values.
    #[test]
    fn elixir_reads_the_values_back() {
        let text = config_exs(&[
            entry("[greeting]", Some("<<\"a \\\"#{x}\\\" b\">>")),
            entry("[format, punctuation]", Some("[1, {x, 2.5}]")),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.exs");
        std::fs::write(&path, text).unwrap();
        let output = std::process::Command::new("elixir")
            .arg("-e")
            .arg(format!(
                "c = Config.Reader.read!({:?})[:env_reader]; IO.inspect({{c[:greeting], c[:format][:punctuation]}})",
                path.display().to_string()
            ))
            .output()
            .expect("elixir runs");
        assert!(output.status.success(), "{output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            r##"{"a \"\#{x}\" b", [1, {:x, 2.5}]}"##
        );
    }
}
