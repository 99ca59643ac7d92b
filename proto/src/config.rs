//! A Mix project's compile-time config, as `Application.compile_env` reads it.
//!
//! The builder records, in each manifest, the `compile_env` entries Mix wrote into the
//! artifact's `.app`: which application env paths the package read while compiling and the
//! values it saw. A client can use the artifact only if its own config gives the same values
//! for the same paths. Both sides read config the same way:
//!
//! 1. run [`DUMP_CONFIG_EXS`] with the real Elixir (`elixir FILE CONFIG_PATH MIX_ENV TARGET`):
//!    it evaluates the config with `Config.Reader.read!/2` exactly as Mix does (imports,
//!    `config_env()`, `config_target()`, deep merge of keyword lists) and prints every app's
//!    env as Erlang term text between marker lines;
//! 2. parse that output with [`AppConfig::parse`];
//! 3. evaluate paths with [`AppConfig::compile_env_value`] or [`AppConfig::entries_for`],
//!    which follow `Application.compile_env`'s traversal exactly (`Access.fetch/2` at each
//!    step), including the cases where it raises.
//!
//! Values that are not plain data (funs, pids, references, ports, integers beyond 128 bits,
//! bitstrings that are not binaries, maps with such keys) cannot be compared across machines:
//! the script prints the atom [`OPAQUE`] in their place, and reading one is an error.
//!
//! `docs/protocol.md`, "Compile-time config values", specifies the output format.

use std::collections::BTreeMap;

use crate::buildkey::{encode_term, CompileEnvEntry};
use crate::term::{parse_erlang_terms, to_erlang_text, Term, TermError};

/// The line before the dumped config.
pub const DUMP_BEGIN: &str = "precomp-config-begin";

/// The line after the dumped config.
pub const DUMP_END: &str = "precomp-config-end";

/// The atom that stands for a value that is not plain data.
pub const OPAQUE: &str = "$precomp_opaque";

/// Largest script output parsed.
pub const MAX_DUMP_SIZE: usize = 64 * 1024 * 1024;

/// The Elixir script that prints a project's compile-time config. Run it as
/// `elixir FILE CONFIG_PATH MIX_ENV TARGET` (`TARGET` is `MIX_TARGET`, `host` by default),
/// with the project directory as the working directory and the environment the build or
/// the consumer's `mix compile` sees (config files may read `System.get_env/1`). A
/// `CONFIG_PATH` that is not a regular file gives an empty config, as in Mix.
///
/// Output: stray output of the config files, then a line [`DUMP_BEGIN`], one
/// `{App, [{Key, Value}, ...]}.` line per app sorted by app (printed by
/// `io_lib:format("~0tp.~n")`), and a line [`DUMP_END`]. Works on Elixir 1.14 through 1.18.
pub const DUMP_CONFIG_EXS: &str = r#"# precomp: prints a Mix project's compile-time config as Erlang terms.
# Usage: elixir THIS_FILE CONFIG_PATH MIX_ENV TARGET
defmodule PrecompDumpConfig do
  @marker :"$precomp_opaque"
  @min -170_141_183_460_469_231_731_687_303_715_884_105_728
  @max 170_141_183_460_469_231_731_687_303_715_884_105_727

  def data(term) when is_integer(term) do
    if term >= @min and term <= @max, do: term, else: @marker
  end

  def data(term) when is_float(term) or is_atom(term) or is_binary(term), do: term
  def data([]), do: []
  def data([head | tail]), do: [data(head) | data(tail)]

  def data(term) when is_tuple(term) do
    term |> Tuple.to_list() |> Enum.map(&data/1) |> List.to_tuple()
  end

  def data(term) when is_map(term) do
    # :maps functions, not Map/Enum: structs are maps but not Enumerable.
    if Enum.all?(:maps.keys(term), fn key -> data(key) === key end) do
      :maps.map(fn _key, value -> data(value) end, term)
    else
      @marker
    end
  end

  def data(_other), do: @marker

  def main(argv) do
    {path, env, target} =
      case argv do
        [path, env, target] ->
          {path, String.to_atom(env), String.to_atom(target)}

        _ ->
          IO.puts(:stderr, "usage: elixir dump_config.exs CONFIG_PATH MIX_ENV TARGET")
          System.halt(2)
      end

    config =
      if File.regular?(path) do
        # Older configs call Mix.env/0 and Mix.target/0 (`use Mix.Config`).
        Mix.start()
        Mix.env(env)
        Mix.target(target)
        Config.Reader.read!(path, env: env, target: target)
      else
        []
      end

    lines =
      for {app, env} <- Enum.sort_by(config, fn {app, _} -> app end) do
        :io_lib.format(~c"~0tp.~n", [{app, data(env)}])
      end

    :ok = :io.setopts(:standard_io, encoding: :unicode)
    IO.write(["\nprecomp-config-begin\n", lines, "precomp-config-end\n"])
  end
end

PrecompDumpConfig.main(System.argv())
"#;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("config dump is {size} bytes, over the limit of {MAX_DUMP_SIZE}")]
    TooLarge { size: usize },
    #[error("config dump has no `{DUMP_BEGIN}` ... `{DUMP_END}` section: did the config script fail? (see its stderr)")]
    NoMarkers,
    #[error("config dump: {0}")]
    Parse(#[from] TermError),
    #[error("config dump: {0}")]
    Shape(String),
    #[error("config dump lists app {0} twice")]
    DuplicateApp(String),
    #[error("compile_env path {path} of {app}: {why}")]
    BadPath {
        app: String,
        path: String,
        why: &'static str,
    },
    #[error("compile_env path {path} of {app} reaches a value that is not plain data (a fun, pid, reference, port or huge integer): it cannot be compared across machines")]
    Opaque { app: String, path: String },
    #[error("Application.compile_env({app}, {path}) would raise with this config ({reason}): the package cannot compile with it")]
    Raises {
        app: String,
        path: String,
        reason: String,
    },
}

/// Every app's env as the project's config sets it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppConfig {
    /// App name → its env, a keyword list `[{Key, Value}]`.
    apps: BTreeMap<String, Vec<Term>>,
}

impl AppConfig {
    /// No config at all (no config file).
    pub fn empty() -> AppConfig {
        AppConfig::default()
    }

    /// Reads the output of [`DUMP_CONFIG_EXS`]: the last [`DUMP_BEGIN`] line, the terms, the
    /// first [`DUMP_END`] line after it. Output before it (from the config files) is ignored.
    pub fn parse(output: &str) -> Result<AppConfig, ConfigError> {
        if output.len() > MAX_DUMP_SIZE {
            return Err(ConfigError::TooLarge { size: output.len() });
        }
        let lines: Vec<&str> = output.split('\n').collect();
        let begin = lines
            .iter()
            .rposition(|l| l.trim_end_matches('\r') == DUMP_BEGIN)
            .ok_or(ConfigError::NoMarkers)?;
        let end = lines[begin + 1..]
            .iter()
            .position(|l| l.trim_end_matches('\r') == DUMP_END)
            .ok_or(ConfigError::NoMarkers)?
            + begin
            + 1;
        let body = lines[begin + 1..end].join("\n");
        let mut apps = BTreeMap::new();
        for term in parse_erlang_terms(&body)? {
            let (app, env) = match term.as_tuple() {
                Some([Term::Atom(app), env]) => (app.clone(), env),
                _ => {
                    return Err(ConfigError::Shape(format!(
                        "{} is not {{App, Env}}",
                        term.summary()
                    )))
                }
            };
            let env = env.as_list().ok_or_else(|| {
                ConfigError::Shape(format!("env of {app} is not a list: {}", env.summary()))
            })?;
            if apps.insert(app.clone(), env.to_vec()).is_some() {
                return Err(ConfigError::DuplicateApp(app));
            }
        }
        Ok(AppConfig { apps })
    }

    /// The apps the config sets anything for, sorted.
    pub fn apps(&self) -> impl Iterator<Item = &str> {
        self.apps.keys().map(String::as_str)
    }

    /// `app`'s env as configured: `{Key, Value}` tuples.
    pub fn app_env(&self, app: &str) -> Option<&[Term]> {
        self.apps.get(app).map(Vec::as_slice)
    }

    /// Adds the defaults of an application's `.app` (its `env` list): every `{Key, Value}`
    /// whose key the config does not set. This is what the VM does when it loads an app whose
    /// env the config already put: config keys win, whole, over the `.app`'s.
    pub fn add_app_defaults(&mut self, app: &str, defaults: &Term) -> Result<(), ConfigError> {
        let defaults = defaults.as_list().ok_or_else(|| {
            ConfigError::Shape(format!(
                "env defaults of {app} are not a list: {}",
                defaults.summary()
            ))
        })?;
        let env = self.apps.entry(app.to_string()).or_default();
        for default in defaults {
            let Some([Term::Atom(key), _]) = default.as_tuple() else {
                return Err(ConfigError::Shape(format!(
                    "env default of {app} is not {{Key, Value}}: {}",
                    default.summary()
                )));
            };
            if env_fetch(env, key).is_none() {
                env.push(default.clone());
            }
        }
        Ok(())
    }

    /// What `Application.compile_env(app, path)` sees with this config: `Some(value)` for
    /// `{ok, Value}`, `None` for `error` (Mix records both in the `.app`).
    ///
    /// `path` is `[Key | SubPath]`: the key must be an atom; each further element is looked up
    /// with `Access.fetch/2` semantics — in a map by exact key (`=:=`), in a list by
    /// `lists:keyfind/3` on an atom key, `nil` gives `error`. Where `Access.fetch/2` raises
    /// (a non-atom key into a list, a matching tuple that is not a pair, an improper list
    /// whose tail is reached, a struct, any other term), the compile would fail: that is
    /// [`ConfigError::Raises`]. Reading a value that is or holds [`OPAQUE`] is
    /// [`ConfigError::Opaque`].
    pub fn compile_env_value(&self, app: &str, path: &[Term]) -> Result<Option<Term>, ConfigError> {
        let shown = || to_erlang_text(&Term::List(path.to_vec()));
        let Some((key, rest)) = path.split_first() else {
            return Err(ConfigError::BadPath {
                app: app.to_string(),
                path: shown(),
                why: "it is empty",
            });
        };
        let Term::Atom(key) = key else {
            return Err(ConfigError::BadPath {
                app: app.to_string(),
                path: shown(),
                why: "its first element, the key, is not an atom",
            });
        };
        let Some(mut value) = self.apps.get(app).and_then(|env| env_fetch(env, key)) else {
            return Ok(None);
        };
        for step in rest {
            match access_fetch(value, step) {
                Ok(Some(next)) => value = next,
                Ok(None) => return Ok(None),
                Err(Fetch::Opaque) => {
                    return Err(ConfigError::Opaque {
                        app: app.to_string(),
                        path: shown(),
                    })
                }
                Err(Fetch::Raises(reason)) => {
                    return Err(ConfigError::Raises {
                        app: app.to_string(),
                        path: shown(),
                        reason,
                    })
                }
            }
        }
        if holds_opaque(value) {
            return Err(ConfigError::Opaque {
                app: app.to_string(),
                path: shown(),
            });
        }
        Ok(Some(value.clone()))
    }

    /// The entries `wanted` lists (an artifact's recorded compile env) with this config's
    /// values instead: what a build with this config would record for the same paths.
    pub fn entries_for(
        &self,
        wanted: &[CompileEnvEntry],
    ) -> Result<Vec<CompileEnvEntry>, ConfigError> {
        wanted
            .iter()
            .map(|entry| {
                Ok(CompileEnvEntry {
                    app: entry.app.clone(),
                    path: entry.path.clone(),
                    value: self.compile_env_value(&entry.app, &entry.path)?,
                })
            })
            .collect()
    }
}

/// `application:get_env(App, Key)` on a configured env: the first `{Key, Value}`.
fn env_fetch<'a>(env: &'a [Term], key: &str) -> Option<&'a Term> {
    env.iter().find_map(|item| match item.as_tuple() {
        Some([Term::Atom(k), value]) if k == key => Some(value),
        _ => None,
    })
}

enum Fetch {
    Opaque,
    Raises(String),
}

fn is_opaque(term: &Term) -> bool {
    matches!(term, Term::Atom(a) if a == OPAQUE)
}

/// Whether `term` is or holds [`OPAQUE`]: a value that is not plain data (a fun, pid,
/// reference, port, huge integer or bitstring), which no build can be given.
pub fn holds_opaque(term: &Term) -> bool {
    match term {
        Term::Atom(_) => is_opaque(term),
        Term::Tuple(items) | Term::List(items) => items.iter().any(holds_opaque),
        Term::ImproperList(items, tail) => items.iter().any(holds_opaque) || holds_opaque(tail),
        Term::Map(pairs) => pairs
            .iter()
            .any(|(k, v)| holds_opaque(k) || holds_opaque(v)),
        Term::Binary(_) | Term::Charlist(_) | Term::Integer(_) | Term::Float(_) => false,
    }
}

fn same_term(a: &Term, b: &Term) -> bool {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    encode_term(a, &mut x);
    encode_term(b, &mut y);
    x == y
}

/// `Access.fetch(container, key)` of Elixir 1.14–1.18: `Ok(Some(v))` for `{:ok, v}`,
/// `Ok(None)` for `:error`, or why it raises.
fn access_fetch<'a>(container: &'a Term, key: &Term) -> Result<Option<&'a Term>, Fetch> {
    if is_opaque(container) {
        return Err(Fetch::Opaque);
    }
    match container {
        Term::Map(pairs) => {
            let module = pairs.iter().find_map(|(k, v)| match (k, v) {
                (Term::Atom(k), Term::Atom(m)) if k == "__struct__" => Some(m),
                _ => None,
            });
            if let Some(module) = module {
                return Err(Fetch::Raises(format!(
                    "Access.fetch/2 on a %{}{{}} struct calls {}.fetch/2",
                    module.strip_prefix("Elixir.").unwrap_or(module),
                    module.strip_prefix("Elixir.").unwrap_or(module)
                )));
            }
            Ok(pairs
                .iter()
                .find_map(|(k, v)| same_term(k, key).then_some(v)))
        }
        Term::List(_) | Term::Charlist(_) | Term::ImproperList(..) => {
            let Term::Atom(key) = key else {
                return Err(Fetch::Raises(format!(
                    "the Access calls for keywords expect the key to be an atom, got {}",
                    key.summary()
                )));
            };
            let items: &[Term] = match container {
                Term::List(items) | Term::ImproperList(items, _) => items,
                _ => &[],
            };
            for item in items {
                if let Term::Tuple(fields) = item {
                    if matches!(fields.first(), Some(Term::Atom(k)) if k == key) {
                        return match fields.as_slice() {
                            [_, value] => Ok(Some(value)),
                            _ => Err(Fetch::Raises(format!(
                                "CaseClauseError: {} is not a pair",
                                item.summary()
                            ))),
                        };
                    }
                }
            }
            match container {
                Term::ImproperList(..) => Err(Fetch::Raises(
                    "lists:keyfind/3 reached the tail of an improper list".into(),
                )),
                _ => Ok(None),
            }
        }
        Term::Atom(a) if a == "nil" => Ok(None),
        other => Err(Fetch::Raises(format!(
            "FunctionClauseError: Access.fetch/2 takes no {}",
            other.summary()
        ))),
    }
}
