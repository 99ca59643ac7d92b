//! Compile-time config values: the real Elixir evaluates a real config with
//! `DUMP_CONFIG_EXS`, precomp parses it, and `compile_env_value` is checked against what
//! `Application.compile_env` really records when a module is compiled with that config loaded.

use std::path::Path;
use std::process::Command;

use precomp_proto::buildkey::{encode_term, CompileEnvEntry};
use precomp_proto::config::{AppConfig, ConfigError, DUMP_CONFIG_EXS, OPAQUE};
use precomp_proto::term::{parse_erlang_terms, to_erlang_text, Term};

/// A config exercising every kind of value the dump must carry: maps, UTF-8 and non-UTF-8
/// binaries, floats, negative and 128-bit numbers, atoms that need quotes, charlists, nested
/// keyword lists merged across two `config` calls, an env-specific import, and values that
/// are not data. It also prints a fake begin marker and an unterminated term, as a config
/// file could.
const CONFIG_EXS: &str = r##"import Config
IO.puts("precomp-config-begin")
IO.write("{garbage")
config :app_a,
  int: 42,
  neg: -17,
  big: 123456789012345678901234567890,
  min128: -170_141_183_460_469_231_731_687_303_715_884_105_728,
  huge: 1_000_000_000_000_000_000_000_000_000_000_000_000_000_000,
  float: 1.5,
  negf: -0.25,
  tiny: 3.0e-10,
  large_f: 1.0e100,
  utf8: "héllo ünïcödé 日本",
  raw: <<255, 0, 1, 2>>,
  latin1: <<233>>,
  empty_bin: "",
  charlist: ~c"abc",
  unicode_charlist: [1000, 2000],
  empty_list: [],
  quoted_atom: :"hello world",
  module: Foo.Bar,
  unicode_atom: :"日本",
  latin_atom: :é,
  reserved_atom: :end,
  bool: true,
  tuple: {:ok, 1, "two"},
  improper: [1 | 2],
  kw: [level: [depth: 3, list: [1, 2]], nil_value: nil],
  map: %{"k" => [1, 2], 1 => :int_key, 1.0 => :float_key, {:t} => %{nested: true}},
  struct: ~r/abc/,
  fun: &String.upcase/1,
  pid: self(),
  ref: make_ref(),
  fun_in_list: [f: fn -> 1 end, g: 2],
  fun_key_map: %{fn -> 1 end => 1},
  bits: <<1::3>>,
  triple: [{:a, 1, 2}],
  improper_kw: [{:a, 1} | :tail],
  env: config_env(),
  target: config_target()
config :app_a, kw: [level: [extra: :merged]]
config :app_b, key: "b"
import_config "#{config_env()}.exs"
"##;

const PROD_EXS: &str = "import Config\nconfig :app_b, from_prod: true\n";
const DEV_EXS: &str = "import Config\nconfig :app_b, from_dev: true\n";

/// A project directory with `config/config.exs`, `prod.exs` and `dev.exs`.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("config.exs"), CONFIG_EXS).unwrap();
    std::fs::write(config.join("prod.exs"), PROD_EXS).unwrap();
    std::fs::write(config.join("dev.exs"), DEV_EXS).unwrap();
    dir
}

fn elixir(dir: &Path, script: &str, args: &[&str]) -> std::process::Output {
    let file = dir.join(".precomp-script.exs");
    std::fs::write(&file, script).unwrap();
    let output = Command::new("elixir")
        .arg(&file)
        .args(args)
        .current_dir(dir)
        .env("ERL_CRASH_DUMP_SECONDS", "0")
        .output()
        .expect("run `elixir` (apt-get install elixir)");
    std::fs::remove_file(&file).unwrap();
    output
}

/// `elixir DUMP_CONFIG_EXS config/config.exs ENV host` in `dir`, parsed.
fn dump(dir: &Path, config: &str, env: &str) -> AppConfig {
    let output = elixir(dir, DUMP_CONFIG_EXS, &[config, env, "host"]);
    assert!(
        output.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    AppConfig::parse(&String::from_utf8(output.stdout).unwrap()).unwrap()
}

fn atom(name: &str) -> Term {
    Term::atom(name)
}

fn path(keys: &[&str]) -> Vec<Term> {
    keys.iter().map(|k| atom(k)).collect()
}

fn encoded(term: &Term) -> Vec<u8> {
    let mut out = Vec::new();
    encode_term(term, &mut out);
    out
}

/// Equal as Erlang terms (`=:=`): a charlist and the list of its codes are the same term.
fn assert_same(actual: &Term, expected: &Term, what: &str) {
    assert_eq!(
        encoded(actual),
        encoded(expected),
        "{what}: got {}, expected {}",
        to_erlang_text(actual),
        to_erlang_text(expected)
    );
}

fn value(config: &AppConfig, app: &str, keys: &[&str]) -> Term {
    config
        .compile_env_value(app, &path(keys))
        .unwrap_or_else(|e| panic!("{app} {keys:?}: {e}"))
        .unwrap_or_else(|| panic!("{app} {keys:?}: unset"))
}

#[test]
fn dump_carries_every_kind_of_value() {
    let dir = project();
    let config = dump(dir.path(), "config/config.exs", "prod");
    assert_eq!(config.apps().collect::<Vec<_>>(), ["app_a", "app_b"]);
    let v = |keys: &[&str]| value(&config, "app_a", keys);
    let cases: Vec<(&str, Term)> = vec![
        ("int", Term::Integer(42)),
        ("neg", Term::Integer(-17)),
        ("big", Term::Integer(123456789012345678901234567890)),
        ("min128", Term::Integer(i128::MIN)),
        ("float", Term::Float(1.5)),
        ("negf", Term::Float(-0.25)),
        ("tiny", Term::Float(3.0e-10)),
        ("large_f", Term::Float(1.0e100)),
        ("utf8", Term::binary("héllo ünïcödé 日本")),
        ("raw", Term::Binary(vec![255, 0, 1, 2])),
        ("latin1", Term::Binary(vec![233])),
        ("empty_bin", Term::Binary(vec![])),
        ("charlist", Term::Charlist("abc".into())),
        ("unicode_charlist", Term::Charlist("\u{3e8}\u{7d0}".into())),
        ("empty_list", Term::List(vec![])),
        ("quoted_atom", atom("hello world")),
        ("module", atom("Elixir.Foo.Bar")),
        ("unicode_atom", atom("日本")),
        ("latin_atom", atom("é")),
        ("reserved_atom", atom("end")),
        ("bool", atom("true")),
        (
            "tuple",
            Term::Tuple(vec![atom("ok"), Term::Integer(1), Term::binary("two")]),
        ),
        (
            "improper",
            Term::ImproperList(vec![Term::Integer(1)], Box::new(Term::Integer(2))),
        ),
        (
            "map",
            Term::Map(vec![
                (
                    Term::binary("k"),
                    Term::List(vec![Term::Integer(1), Term::Integer(2)]),
                ),
                (Term::Integer(1), atom("int_key")),
                (Term::Float(1.0), atom("float_key")),
                (
                    Term::Tuple(vec![atom("t")]),
                    Term::Map(vec![(atom("nested"), atom("true"))]),
                ),
            ]),
        ),
        ("env", atom("prod")),
        ("target", atom("host")),
    ];
    for (key, expected) in &cases {
        assert_same(&v(&[key]), expected, key);
    }
    // Two `config :app_a, kw: ...` calls are deep-merged by Config.Reader.
    assert_same(
        &v(&["kw", "level"]),
        &Term::List(vec![
            Term::Tuple(vec![atom("depth"), Term::Integer(3)]),
            Term::Tuple(vec![
                atom("list"),
                Term::List(vec![Term::Integer(1), Term::Integer(2)]),
            ]),
            Term::Tuple(vec![atom("extra"), atom("merged")]),
        ]),
        "merged keyword list",
    );
    // The regex struct is data: a map whose re_pattern holds a compiled binary.
    let regex = v(&["struct"]);
    assert_eq!(
        regex.proplist_get("source"),
        Some(&Term::binary("abc")),
        "{}",
        regex.summary()
    );
    // Values that are not data are replaced, wholly or where they sit.
    for key in ["fun", "pid", "ref", "huge", "bits", "fun_key_map"] {
        assert_eq!(
            config
                .app_env("app_a")
                .unwrap()
                .iter()
                .find_map(|kv| match kv.as_tuple().unwrap() {
                    [k, v] if k.is_key(key) => Some(v.clone()),
                    _ => None,
                }),
            Some(atom(OPAQUE)),
            "{key}"
        );
    }
    // The env-specific import is evaluated for the env given.
    assert_same(
        &value(&config, "app_b", &["from_prod"]),
        &atom("true"),
        "prod.exs",
    );
    assert_eq!(
        config.compile_env_value("app_b", &path(&["from_dev"])),
        Ok(None)
    );
    let dev = dump(dir.path(), "config/config.exs", "dev");
    assert_same(
        &value(&dev, "app_b", &["from_dev"]),
        &atom("true"),
        "dev.exs",
    );
    assert_same(
        &value(&dev, "app_a", &["env"]),
        &atom("dev"),
        "config_env()",
    );
}

#[test]
fn opaque_values_cannot_be_read() {
    let dir = project();
    let config = dump(dir.path(), "config/config.exs", "prod");
    for keys in [
        &["fun"][..],
        &["pid"],
        &["ref"],
        &["huge"],
        &["fun_in_list"],
        &["fun_in_list", "f"],
        &["fun", "x"],
    ] {
        let error = config.compile_env_value("app_a", &path(keys)).unwrap_err();
        assert!(
            matches!(error, ConfigError::Opaque { .. }),
            "{keys:?}: {error}"
        );
        assert!(error.to_string().contains("not plain data"), "{error}");
    }
    // Next to an opaque value, plain data reads fine.
    assert_same(
        &value(&config, "app_a", &["fun_in_list", "g"]),
        &Term::Integer(2),
        "fun_in_list g",
    );
}

#[test]
fn missing_config_file_is_an_empty_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dump(dir.path(), "config/config.exs", "prod");
    assert_eq!(config, AppConfig::empty());
    assert_eq!(config.apps().count(), 0);
    assert_eq!(config.compile_env_value("app_a", &path(&["int"])), Ok(None));
}

#[test]
fn a_failing_config_gives_no_dump() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/config.exs"),
        "import Config\nIO.puts(\"precomp-config-begin\")\nraise \"boom\"\n",
    )
    .unwrap();
    let output = elixir(
        dir.path(),
        DUMP_CONFIG_EXS,
        &["config/config.exs", "prod", "host"],
    );
    assert!(!output.status.success());
    assert_eq!(
        AppConfig::parse(&String::from_utf8_lossy(&output.stdout)),
        Err(ConfigError::NoMarkers)
    );
}

#[test]
fn parse_takes_the_last_section_and_checks_its_shape() {
    let text = "precomp-config-begin\n{junk\nprecomp-config-begin\n{a,[{k,1}]}.\nprecomp-config-end\ntrailing\n";
    let config = AppConfig::parse(text).unwrap();
    assert_eq!(
        config.compile_env_value("a", &path(&["k"])),
        Ok(Some(Term::Integer(1)))
    );
    for bad in [
        "precomp-config-begin\n{a,[{k,1}]}.\n",
        "{a,[]}.\nprecomp-config-end\n",
        "precomp-config-begin\n{\"a\",[]}.\nprecomp-config-end\n",
        "precomp-config-begin\n{a,x}.\nprecomp-config-end\n",
        "precomp-config-begin\n{a,[]}.\n{a,[]}.\nprecomp-config-end\n",
        "precomp-config-begin\n{a,[}.\nprecomp-config-end\n",
    ] {
        assert!(AppConfig::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn entries_for_gives_this_configs_values_for_the_same_paths() {
    let dir = project();
    let config = dump(dir.path(), "config/config.exs", "prod");
    let wanted = vec![
        CompileEnvEntry {
            app: "app_a".into(),
            path: path(&["kw", "level", "depth"]),
            value: Some(Term::Integer(99)),
        },
        CompileEnvEntry {
            app: "app_b".into(),
            path: path(&["key"]),
            value: None,
        },
        CompileEnvEntry {
            app: "app_c".into(),
            path: path(&["anything"]),
            value: Some(atom("x")),
        },
    ];
    let entries = config.entries_for(&wanted).unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].path, wanted[0].path);
    assert_eq!(entries[0].value, Some(Term::Integer(3)));
    assert_eq!(entries[1].value, Some(Term::binary("b")));
    assert_eq!(entries[2].app, "app_c");
    assert_eq!(entries[2].value, None);
    let bad = vec![CompileEnvEntry {
        app: "app_a".into(),
        path: path(&["pid"]),
        value: None,
    }];
    assert!(matches!(
        config.entries_for(&bad),
        Err(ConfigError::Opaque { .. })
    ));
}

#[test]
fn app_defaults_fill_only_keys_the_config_does_not_set() {
    let mut config =
        AppConfig::parse("precomp-config-begin\n{a,[{set,[{x,1}]}]}.\nprecomp-config-end\n")
            .unwrap();
    let defaults = parse_erlang_terms("[{set,[{x,0},{y,2}]},{unset,3}].")
        .unwrap()
        .remove(0);
    config.add_app_defaults("a", &defaults).unwrap();
    config.add_app_defaults("b", &defaults).unwrap();
    // The config's key wins whole: no deep merge with the default.
    assert_eq!(
        config.compile_env_value("a", &path(&["set", "y"])),
        Ok(None)
    );
    assert_eq!(
        config.compile_env_value("a", &path(&["unset"])),
        Ok(Some(Term::Integer(3)))
    );
    assert_eq!(
        config.compile_env_value("b", &path(&["set", "y"])),
        Ok(Some(Term::Integer(2)))
    );
}

/// Compiles one module per path with the config loaded into the application env
/// (`Application.put_all_env`), each reading the path with `Application.compile_env`, and
/// records what the compiler's `{compile_env, App, Path, Return}` trace says — exactly what
/// Mix writes into the `.app` — or that compiling raised.
const ORACLE_EXS: &str = r##"
[config_path, env, target, paths_file] = System.argv()
env = String.to_atom(env)
target = String.to_atom(target)
config = Config.Reader.read!(config_path, env: env, target: target)
Application.put_all_env(config)
{:ok, paths} = :file.consult(String.to_charlist(paths_file))
:ets.new(:precomp_oracle, [:named_table, :public, :bag])

defmodule PrecompOracleTracer do
  def trace({:compile_env, app, path, return}, _env) do
    :ets.insert(:precomp_oracle, {:event, app, path, return})
    :ok
  end

  def trace(_event, _env), do: :ok
end

defmodule PrecompOracleData do
  def data(t) when is_function(t) or is_pid(t) or is_reference(t) or is_port(t), do: :"$precomp_opaque"
  def data([h | t]), do: [data(h) | data(t)]
  def data(t) when is_tuple(t), do: t |> Tuple.to_list() |> Enum.map(&data/1) |> List.to_tuple()
  def data(t) when is_map(t), do: :maps.from_list(Enum.map(:maps.to_list(t), fn {k, v} -> {data(k), data(v)} end))
  def data(t) when is_bitstring(t) and not is_binary(t), do: :"$precomp_opaque"
  def data(t), do: t
end

Code.put_compiler_option(:tracers, [PrecompOracleTracer])

results =
  for {{app, path}, i} <- Enum.with_index(paths) do
    :ets.delete_all_objects(:precomp_oracle)
    module = Module.concat(PrecompOracleProbe, "M#{i}")

    quoted =
      quote do
        defmodule unquote(module) do
          require Application
          @value Application.compile_env(unquote(app), unquote(Macro.escape(path)))
          def value, do: @value
        end
      end

    compiled =
      try do
        Code.compile_quoted(quoted)
        :ok
      rescue
        e -> {:raised, Exception.message(e)}
      end

    # The trace is what Mix records; a probe that fails after compile_env returned (a pid
    # cannot be put in code) still has it.
    result =
      case {:ets.lookup(:precomp_oracle, :event), compiled} do
        {[{:event, ^app, ^path, return}], _} -> PrecompOracleData.data(return)
        {[], {:raised, _} = raised} -> raised
        {other, _} -> {:unexpected, PrecompOracleData.data(other)}
      end

    {app, path, result}
  end

:ok = :io.setopts(:standard_io, encoding: :unicode)
IO.write(["\noracle-begin\n", Enum.map(results, &:io_lib.format(~c"~0tp.~n", [&1])), "oracle-end\n"])
"##;

/// What precomp must say for a path, checked against the oracle.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// `{ok, Value}` or `error`, equal to what Elixir records.
    Same,
    /// Elixir raises while compiling; precomp reports `Raises` (or `BadPath`).
    Raises,
    /// precomp refuses to read it (not plain data), whatever Elixir does.
    Opaque,
}

#[test]
fn compile_env_value_agrees_with_application_compile_env() {
    use Expect::*;
    let dir = project();
    let config = dump(dir.path(), "config/config.exs", "prod");
    let k = |key: &str| atom(key);
    let cases: Vec<(&str, Vec<Term>, Expect)> = vec![
        ("app_a", vec![k("int")], Same),
        ("app_a", vec![k("neg")], Same),
        ("app_a", vec![k("big")], Same),
        ("app_a", vec![k("float")], Same),
        ("app_a", vec![k("tiny")], Same),
        ("app_a", vec![k("large_f")], Same),
        ("app_a", vec![k("utf8")], Same),
        ("app_a", vec![k("raw")], Same),
        ("app_a", vec![k("latin1")], Same),
        ("app_a", vec![k("charlist")], Same),
        ("app_a", vec![k("unicode_charlist")], Same),
        ("app_a", vec![k("quoted_atom")], Same),
        ("app_a", vec![k("module")], Same),
        ("app_a", vec![k("unicode_atom")], Same),
        ("app_a", vec![k("latin_atom")], Same),
        ("app_a", vec![k("reserved_atom")], Same),
        ("app_a", vec![k("tuple")], Same),
        ("app_a", vec![k("improper")], Same),
        ("app_a", vec![k("struct")], Same),
        ("app_a", vec![k("missing")], Same),
        ("app_a", vec![k("kw")], Same),
        ("app_a", vec![k("kw"), k("level")], Same),
        ("app_a", vec![k("kw"), k("level"), k("depth")], Same),
        ("app_a", vec![k("kw"), k("level"), k("extra")], Same),
        ("app_a", vec![k("kw"), k("level"), k("list")], Same),
        ("app_a", vec![k("kw"), k("level"), k("missing")], Same),
        ("app_a", vec![k("kw"), k("nil_value")], Same),
        // nil: Access.fetch(nil, _) is :error.
        ("app_a", vec![k("kw"), k("nil_value"), k("x")], Same),
        // A charlist is a list without tuples: :error for an atom key.
        ("app_a", vec![k("charlist"), k("x")], Same),
        ("app_a", vec![k("empty_list"), k("x")], Same),
        ("app_a", vec![k("map"), Term::binary("k")], Same),
        ("app_a", vec![k("map"), Term::Integer(1)], Same),
        ("app_a", vec![k("map"), Term::Float(1.0)], Same),
        ("app_a", vec![k("map"), Term::Tuple(vec![k("t")])], Same),
        (
            "app_a",
            vec![k("map"), Term::Tuple(vec![k("t")]), k("nested")],
            Same,
        ),
        ("app_a", vec![k("map"), k("missing")], Same),
        ("app_a", vec![k("map"), Term::Integer(2)], Same),
        ("app_a", vec![k("improper_kw"), k("a")], Same),
        ("app_a", vec![k("fun_in_list"), k("g")], Same),
        ("app_a", vec![k("env")], Same),
        ("app_a", vec![k("target")], Same),
        ("app_b", vec![k("key")], Same),
        ("app_b", vec![k("from_prod")], Same),
        ("app_c", vec![k("anything")], Same),
        ("app_c", vec![k("anything"), k("deeper")], Same),
        // Where Access.fetch/2 raises, the package cannot compile.
        (
            "app_a",
            vec![k("kw"), k("level"), k("depth"), k("x")],
            Raises,
        ),
        ("app_a", vec![k("kw"), Term::binary("level")], Raises),
        ("app_a", vec![k("triple"), k("a")], Raises),
        ("app_a", vec![k("improper_kw"), k("b")], Raises),
        ("app_a", vec![k("struct"), k("source")], Raises),
        ("app_a", vec![k("utf8"), k("x")], Raises),
        ("app_a", vec![k("tuple"), k("ok")], Raises),
        ("app_a", vec![k("int"), k("x")], Raises),
        ("app_a", vec![k("module"), k("x")], Raises),
        ("app_a", vec![Term::binary("int")], Raises),
        ("app_a", vec![], Raises),
        // Not plain data: refused.
        ("app_a", vec![k("fun")], Opaque),
        ("app_a", vec![k("pid")], Opaque),
        ("app_a", vec![k("ref")], Opaque),
        ("app_a", vec![k("fun_in_list")], Opaque),
        ("app_a", vec![k("fun_key_map")], Opaque),
    ];

    let paths: String = cases
        .iter()
        .map(|(app, path, _)| {
            format!(
                "{{{}, {}}}.\n",
                to_erlang_text(&atom(app)),
                to_erlang_text(&Term::List(path.clone()))
            )
        })
        .collect();
    std::fs::write(dir.path().join("paths.txt"), paths).unwrap();
    let output = elixir(
        dir.path(),
        ORACLE_EXS,
        &["config/config.exs", "prod", "host", "paths.txt"],
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "oracle failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let body = stdout
        .rsplit_once("\noracle-begin\n")
        .and_then(|(_, rest)| rest.split_once("oracle-end\n"))
        .map(|(body, _)| body)
        .unwrap_or_else(|| panic!("no oracle output: {stdout}"));
    let results = parse_erlang_terms(body).unwrap();
    assert_eq!(results.len(), cases.len());

    let mut raised = 0;
    for ((app, path, expect), result) in cases.iter().zip(&results) {
        let [_, _, oracle] = result.as_tuple().unwrap() else {
            panic!("{}", result.summary())
        };
        let ours = config.compile_env_value(app, path);
        let shown = format!("{app} {}", to_erlang_text(&Term::List(path.clone())));
        match expect {
            Same => {
                let ours = ours.unwrap_or_else(|e| panic!("{shown}: {e}"));
                match (oracle.as_tuple(), ours) {
                    (Some([ok, value]), Some(ours)) if ok.is_key("ok") => {
                        assert_same(&ours, value, &shown)
                    }
                    (None, None) if oracle.is_key("error") => {}
                    (_, ours) => panic!(
                        "{shown}: Elixir records {}, precomp says {ours:?}",
                        oracle.summary()
                    ),
                }
            }
            Raises => {
                assert!(
                    matches!(oracle.as_tuple(), Some([tag, _]) if tag.is_key("raised")),
                    "{shown}: Elixir records {} but precomp expects a raise",
                    oracle.summary()
                );
                raised += 1;
                assert!(
                    matches!(
                        ours,
                        Err(ConfigError::Raises { .. } | ConfigError::BadPath { .. })
                    ),
                    "{shown}: {ours:?}"
                );
            }
            Opaque => {
                assert!(
                    matches!(ours, Err(ConfigError::Opaque { .. })),
                    "{shown}: {ours:?}"
                );
                // Elixir itself sees a fun, pid or reference there.
                assert!(
                    to_erlang_text(oracle).contains(OPAQUE),
                    "{shown}: Elixir records {}",
                    oracle.summary()
                );
            }
        }
    }
    assert_eq!(raised, 11);
}
