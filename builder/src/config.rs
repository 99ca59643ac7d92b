//! The build's compile-time config, evaluated in the sandbox (a config file is code).
//!
//! Stored builds record which `Application.compile_env` paths they read; to reuse one, this
//! run's values for those paths must give the same key. The config is evaluated at most once
//! per run, and only when a stored build records compile-env entries.
//!
//! [`config_exs`] writes a config that gives exactly a given set of values: what audits
//! rebuild a manifest with, and what workers build a consumer's config variant with.

use std::collections::BTreeMap;
use std::sync::Mutex;

use precomp_proto::buildkey::CompileEnvEntry;
use precomp_proto::config::{AppConfig, DUMP_CONFIG_EXS};
use precomp_proto::term::{to_erlang_text, Term};
use precomp_sandbox::{Spec, Status};

use crate::build::BuildContext;
use crate::error::{io, BuildError, Result};
use crate::project;
use crate::run::CompileEnvSource;

/// [`CompileEnvSource`] backed by the build's config, evaluated in the sandbox.
pub struct SandboxedConfig<'a> {
    context: &'a BuildContext<'a>,
    /// The evaluation's result, once there is one. A cancelled evaluation is not kept: the
    /// next run sharing this config (a worker's next job) evaluates it again.
    evaluated: Mutex<Option<std::result::Result<AppConfig, String>>>,
}

impl<'a> SandboxedConfig<'a> {
    pub fn new(context: &'a BuildContext<'a>) -> SandboxedConfig<'a> {
        SandboxedConfig {
            context,
            evaluated: Mutex::new(None),
        }
    }
}

impl CompileEnvSource for SandboxedConfig<'_> {
    fn values_for(&self, recorded: &[CompileEnvEntry]) -> Result<Vec<CompileEnvEntry>> {
        // Held while evaluating: concurrent callers wait for the one evaluation.
        let mut evaluated = self.evaluated.lock().unwrap_or_else(|e| e.into_inner());
        if evaluated.is_none() {
            match evaluate(self.context) {
                Err(BuildError::Cancelled { reason }) => {
                    return Err(BuildError::Cancelled { reason })
                }
                result => *evaluated = Some(result.map_err(|e| e.to_string())),
            }
        }
        match evaluated.as_ref().expect("evaluated above") {
            Ok(config) => config
                .entries_for(recorded)
                .map_err(|e| BuildError::Config(e.to_string())),
            Err(message) => Err(BuildError::Config(message.clone())),
        }
    }
}

/// Runs the dump script on the build's config in the sandbox and parses what it prints.
pub fn evaluate(context: &BuildContext<'_>) -> Result<AppConfig> {
    let work = crate::workdir::WorkDir::create(&context.work_root, "config-", 0o755)?;
    project::write(work.path(), "", None, context.config.as_deref())?;
    let script = work.path().join("dump_config.exs");
    std::fs::write(&script, DUMP_CONFIG_EXS).map_err(io(&script))?;
    let spec = Spec::build(
        context.toolchain.sandbox_root(),
        work.path(),
        [
            "elixir",
            "dump_config.exs",
            "config/config.exs",
            &context.config_env,
            "host",
        ],
    );
    let outcome = context.sandbox.run_cancellable(&spec, &context.cancel)?;
    if let Status::Cancelled { reason } = outcome.status {
        return Err(BuildError::Cancelled { reason });
    }
    if !outcome.status.success() {
        return Err(BuildError::Config(format!(
            "evaluating the config failed ({}):\n{}",
            outcome.status,
            outcome.output_text()
        )));
    }
    AppConfig::parse(&outcome.stdout.text()).map_err(|e| BuildError::Config(e.to_string()))
}

/// A `config.exs` setting exactly the given compile-env values — the ones an audited
/// manifest records (`precomp audit`), or the ones a consumer's miss carries (a config
/// variant, built by `precomp worker` and `precomp build --missing`) — and nothing else;
/// `None` when no entry has a value (an empty config gives `error` for every path).
///
/// Each value goes to its path: `config :app, key: value` for `[key]`, nested paths as
/// keyword lists (maps where a key is not an atom), as `Application.compile_env` reads them;
/// a value for a whole key wins over values under it. Entries recorded as unset (`error`)
/// stay unset. Values are Erlang term text, parsed in the config by `:erl_parse`, so no
/// Elixir rendering can change them.
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
         # Written by precomp: exactly the compile-time values of a build's inputs.\n\
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
