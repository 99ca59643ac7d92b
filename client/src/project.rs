//! The consumer's Mix project, as Mix itself sees it: where the build directory is, which
//! deps it declares with which options, and the local toolchain.
//!
//! mix.exs is code, so the local `elixir` evaluates it with `project_probe.exs` (nothing is
//! fetched or compiled), with the consumer's `MIX_ENV` and `MIX_TARGET`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use precomp_proto::buildkey::Target;
use precomp_proto::lock::MixLock;
use precomp_proto::manager::{self, Converger, Manager, TopLevelDep};
use precomp_proto::term::{parse_erlang_terms, Term};

use crate::error::ClientError;
use crate::process::{spawn_marked, Marked, Reached, Tail};

const PROBE: &str = include_str!("project_probe.exs");

/// How long evaluating mix.exs may take.
const PROBE_LIMIT: Duration = Duration::from_secs(120);

/// What `precomp fetch` needs to know about the project and the local toolchain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    /// The project directory (where mix.exs is).
    pub dir: PathBuf,
    /// The project's app, or every child app of an umbrella.
    pub apps: Vec<String>,
    pub umbrella: bool,
    /// `_build/<env>` (or whatever MIX_BUILD_PATH, MIX_BUILD_ROOT, `build_path:`,
    /// `build_per_environment:` and MIX_TARGET make it): deps go to `<build_path>/lib/<app>`.
    pub build_path: PathBuf,
    /// `deps/`: the unpacked sources `mix deps.get` fetched.
    pub deps_path: PathBuf,
    pub lockfile: PathBuf,
    /// `config/config.exs` or the project's `config_path:`.
    pub config_path: PathBuf,
    /// The project's `compile.lock` files (one per umbrella child): touched after installing,
    /// as Mix's `will_recompile` does.
    pub compile_locks: Vec<PathBuf>,
    pub mix_env: String,
    pub mix_target: String,
    /// The exact Elixir version, e.g. `1.14.0`.
    pub elixir: String,
    /// The OTP major release, e.g. `25`.
    pub otp_major: String,
    /// `erlang:system_info(system_architecture)`, e.g. `x86_64-pc-linux-gnu`.
    pub system_architecture: String,
    /// The SCM module Mix gives Hex deps (`Hex.SCM`).
    pub hex_scm: String,
    /// The bytes of `compile.elixir_scm` Mix writes for a dep it compiled with Elixir:
    /// `term_to_binary({1, {ElixirVersion, OtpRelease}, Scm})`.
    pub elixir_scm: Vec<u8>,
    /// The deps the project (or each umbrella child) declares.
    pub deps: Vec<DeclaredDep>,
    /// The compile-time config dump the probe prints from the same VM
    /// (`precomp_proto::config`) after its answer: [`Tail::wait`] waits for it (the probe
    /// has usually ended by the time a lookup needs it). Empty when the config did not
    /// evaluate.
    pub config_dump: Tail,
}

/// A dependency declared in mix.exs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredDep {
    pub app: String,
    /// `env:`, `prod` by default: the env Mix compiles the dependency in.
    pub env: String,
    /// False when `only:` or `targets:` leave it out of this env and target.
    pub active: bool,
    /// False for git, path and umbrella deps.
    pub hex: bool,
    /// Options that make Mix build it differently from the package's own build (`compile:`,
    /// `manager:`, `app:`, `system_env:`, `config:`).
    pub custom: Vec<String>,
}

/// A probe of a Mix project started with [`Project::start_probe`]: its `elixir` VM runs
/// while the caller does other work; [`ProbeRun::wait`] takes its answer.
pub struct ProbeRun {
    dir: PathBuf,
    /// Holds the probe script and its answer file until the answer is read and the VM ended.
    scratch: std::sync::Arc<tempfile::TempDir>,
    child: Result<Marked, std::io::Error>,
}

impl Project {
    /// Evaluates `dir/mix.exs` with the local `elixir` for `mix_env` (and the MIX_TARGET of
    /// this process's environment).
    pub fn probe(dir: &Path, mix_env: &str) -> Result<Project, ClientError> {
        Project::start_probe(dir, mix_env)?.wait()
    }

    /// Starts evaluating `dir/mix.exs` ([`Project::probe`]) and returns at once.
    pub fn start_probe(dir: &Path, mix_env: &str) -> Result<ProbeRun, ClientError> {
        if !dir.join("mix.exs").is_file() {
            return Err(ClientError::NotAMixProject {
                dir: dir.to_path_buf(),
            });
        }
        let scratch = tempfile::tempdir().map_err(ClientError::io("a temporary directory"))?;
        let probe = scratch.path().join("precomp_fetch_probe.exs");
        let out = scratch.path().join("project.term");
        let dump = scratch.path().join("precomp_dump_config.exs");
        std::fs::write(&probe, PROBE).map_err(ClientError::io(&probe))?;
        std::fs::write(&dump, precomp_proto::config::DUMP_CONFIG_EXS)
            .map_err(ClientError::io(&dump))?;
        // The line the probe prints once its answer is written: named after the scratch
        // directory, which nothing in the project can know.
        let answered = format!("precomp-probe-answered {}", scratch.path().display());
        let mut command = Command::new("elixir");
        command
            .arg(&probe)
            .arg(&out)
            .arg(&answered)
            .arg(&dump)
            .current_dir(dir)
            .env("MIX_ENV", mix_env)
            .env_remove("MIX_EXS");
        let scratch = std::sync::Arc::new(scratch);
        Ok(ProbeRun {
            dir: dir.to_path_buf(),
            child: spawn_marked(command, answered, PROBE_LIMIT, Box::new(scratch.clone())),
            scratch,
        })
    }
}

impl std::fmt::Debug for ProbeRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeRun").field("dir", &self.dir).finish()
    }
}

impl ProbeRun {
    /// The probe's answer, as soon as it is written (the VM may still be printing the
    /// config dump and ending).
    pub fn wait(self) -> Result<Project, ClientError> {
        let dir = self.dir;
        let failed = |reason: String| ClientError::Probe {
            dir: dir.clone(),
            reason,
        };
        let running = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => failed(
                "`elixir` is not on PATH; install Elixir (precomp fetch runs where `mix` runs)"
                    .into(),
            ),
            _ => failed(format!("running elixir: {e}")),
        };
        let reached = self.child.and_then(Marked::wait).map_err(running)?;
        let out = self.scratch.path().join("project.term");
        let (text, config_dump) = match reached {
            Reached::Marker(tail) => (
                std::fs::read_to_string(&out).map_err(|e| {
                    failed(format!("reading the probe's answer {}: {e}", out.display()))
                })?,
                tail,
            ),
            Reached::Exited { status, stderr } => {
                return Err(failed(format!(
                    "elixir exited with {status}: {}",
                    String::from_utf8_lossy(&stderr).trim()
                )))
            }
        };
        let mut project = parse_probe(&dir, &text).map_err(failed)?;
        project.config_dump = config_dump;
        Ok(project)
    }
}

impl Project {
    /// `<build_path>/lib`: where deps are installed.
    pub fn lib_dir(&self) -> PathBuf {
        self.build_path.join("lib")
    }

    /// The declared options of `app`, if the project declares it.
    pub fn declared(&self, app: &str) -> Option<&DeclaredDep> {
        self.deps.iter().find(|d| d.app == app)
    }

    /// The manager (mix, rebar3, make) Mix uses for each Hex entry of `lock` in this project
    /// (`precomp_proto::manager::mix_managers`): the deps this env and target use are the
    /// top-level ones, files in `deps/<app>` decide where Mix looks at them. Entries Mix does
    /// not reach from them are absent; `None` where Mix finds no manager.
    ///
    /// Not modelled (docs/client.md): `manager:` and `override:` options (a `manager:` makes
    /// the dependency a custom build, which precomp leaves to Mix), and an umbrella's
    /// children, whose declared deps are all taken as top-level.
    pub fn mix_managers(&self, lock: &MixLock) -> BTreeMap<String, Option<Manager>> {
        let top_level: Vec<TopLevelDep> = self
            .deps
            .iter()
            .filter(|dep| dep.active)
            .map(|dep| TopLevelDep::new(dep.app.as_str()))
            .collect();
        let infer = |app: &str| {
            let dir = self.deps_path.join(app);
            let files = [
                "mix.exs",
                "rebar",
                "rebar.config",
                "rebar.config.script",
                "rebar.lock",
                "Makefile",
                "Makefile.win",
            ];
            Ok::<_, std::convert::Infallible>(Manager::infer_from_files(
                files.into_iter().filter(|file| dir.join(file).is_file()),
            ))
        };
        match manager::mix_managers(lock, &top_level, Converger::for_elixir(&self.elixir), infer) {
            Ok(managers) => managers,
            Err(never) => match never {},
        }
    }

    /// The build-key target of native code built on this machine, e.g. `x86_64-linux-gnu`.
    pub fn native_target(&self) -> Result<Target, ClientError> {
        native_target(&self.system_architecture).ok_or_else(|| ClientError::Target {
            value: self.system_architecture.clone(),
        })
    }
}

/// The build-key target for an Erlang `system_architecture`: shared with the builder
/// ([`Target::from_system_architecture`]).
pub fn native_target(system_architecture: &str) -> Option<Target> {
    Target::from_system_architecture(system_architecture)
}

/// Parses `ARCH-LIBC` (a `--target` value): [`Target::parse_native`], the one target parser.
pub fn parse_target(text: &str) -> Option<Target> {
    Target::parse_native(text)
}

fn parse_probe(dir: &Path, text: &str) -> Result<Project, String> {
    let terms = parse_erlang_terms(text).map_err(|e| format!("probe output: {e}"))?;
    let info = match terms.as_slice() {
        [Term::Tuple(items)] => match items.as_slice() {
            [ok, Term::Map(info)] if ok.as_atom() == Some("ok") => info,
            [error, message] if error.as_atom() == Some("error") => {
                return Err(message.as_str().unwrap_or("unknown error").to_string())
            }
            _ => return Err("probe output is neither {ok, _} nor {error, _}".into()),
        },
        _ => return Err("probe output is not one tuple".into()),
    };
    let map = Fields(info);
    let deps = map
        .list("deps")?
        .iter()
        .map(|dep| {
            let Term::Map(fields) = dep else {
                return Err(format!("probe output: dep {} is not a map", dep.summary()));
            };
            let dep = Fields(fields);
            Ok(DeclaredDep {
                app: dep.string("app")?,
                env: dep.string("env")?,
                active: dep.bool("active")?,
                hex: dep.bool("hex")?,
                custom: dep.strings("custom")?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let elixir_scm = hex::decode(map.string("elixir_scm")?)
        .map_err(|e| format!("probe output: elixir_scm: {e}"))?;
    Ok(Project {
        dir: dir.to_path_buf(),
        apps: map.strings("apps")?,
        umbrella: map.bool("umbrella")?,
        build_path: map.string("build_path")?.into(),
        deps_path: map.string("deps_path")?.into(),
        lockfile: map.string("lockfile")?.into(),
        config_path: map.string("config_path")?.into(),
        compile_locks: map
            .strings("compile_locks")?
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        mix_env: map.string("mix_env")?,
        mix_target: map.string("mix_target")?,
        elixir: map.string("elixir")?,
        otp_major: map.string("otp_release")?,
        system_architecture: map.string("system_architecture")?,
        hex_scm: map.string("hex_scm")?,
        elixir_scm,
        deps,
        config_dump: Tail::ready(None),
    })
}

struct Fields<'a>(&'a [(Term, Term)]);

impl Fields<'_> {
    fn get(&self, key: &str) -> Result<&Term, String> {
        self.0
            .iter()
            .find(|(k, _)| k.as_atom() == Some(key))
            .map(|(_, v)| v)
            .ok_or_else(|| format!("probe output has no {key}"))
    }

    fn string(&self, key: &str) -> Result<String, String> {
        self.get(key)?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("probe output: {key} is not a string"))
    }

    fn bool(&self, key: &str) -> Result<bool, String> {
        self.get(key)?
            .as_bool()
            .ok_or_else(|| format!("probe output: {key} is not a boolean"))
    }

    fn list(&self, key: &str) -> Result<&[Term], String> {
        self.get(key)?
            .as_list()
            .ok_or_else(|| format!("probe output: {key} is not a list"))
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        self.list(key)?
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("probe output: {key} holds {}", t.summary()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(arch: &str, libc: &str) -> Option<Target> {
        Some(Target::Native {
            arch: arch.into(),
            libc: libc.into(),
        })
    }

    #[test]
    fn targets_from_system_architecture() {
        assert_eq!(
            native_target("x86_64-pc-linux-gnu"),
            native("x86_64", "linux-gnu")
        );
        assert_eq!(
            native_target("aarch64-unknown-linux-gnu"),
            native("aarch64", "linux-gnu")
        );
        assert_eq!(
            native_target("x86_64-alpine-linux-musl"),
            native("x86_64", "linux-musl")
        );
        assert_eq!(
            native_target("aarch64-apple-darwin23.1.0"),
            native("aarch64", "darwin")
        );
        assert_eq!(native_target("x86_64"), None);
        assert_eq!(native_target("x86 64-pc-linux"), None);
        assert_eq!(
            parse_target("x86_64-linux-gnu"),
            native("x86_64", "linux-gnu")
        );
        assert_eq!(parse_target("any"), None);
        assert_eq!(parse_target("X86-linux"), None);
    }

    #[test]
    fn the_probe_output_is_read() {
        let text = r#"{ok,#{apps => [<<"mix_app">>], umbrella => false,
            build_path => <<"/p/_build/dev">>, deps_path => <<"/p/deps">>,
            lockfile => <<"/p/mix.lock">>, config_path => <<"/p/config/config.exs">>,
            compile_locks => [<<"/p/_build/dev/lib/mix_app/.mix/compile.lock">>],
            mix_env => <<"dev">>, mix_target => <<"host">>, elixir => <<"1.14.0">>,
            otp_release => <<"25">>, system_architecture => <<"x86_64-pc-linux-gnu">>,
            hex_scm => <<"Hex.SCM">>, elixir_scm => <<"8368">>,
            deps => [#{app => <<"jason">>, env => <<"prod">>, active => true, hex => true,
                       custom => [<<"manager">>]}]}}."#;
        let project = parse_probe(Path::new("/p"), text).unwrap();
        assert_eq!(project.lib_dir(), Path::new("/p/_build/dev/lib"));
        assert_eq!(project.elixir_scm, vec![0x83, 0x68]);
        assert_eq!(project.declared("jason").unwrap().custom, vec!["manager"]);
        assert_eq!(
            parse_probe(Path::new("/p"), r#"{error, <<"mix.exs has no :app">>}."#),
            Err("mix.exs has no :app".to_string())
        );
    }

    fn write(root: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    fn dep<'a>(project: &'a Project, app: &str) -> &'a DeclaredDep {
        project
            .declared(app)
            .unwrap_or_else(|| panic!("{app} not in {:?}", project.deps))
    }

    // Each probe below runs the real `elixir` on a project of its own.

    #[test]
    fn the_probe_answers_what_mix_exs_says_and_its_config_comes_from_the_same_vm() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            &[
                (
                    "mix.exs",
                    r#"defmodule Probed.MixProject do
  use Mix.Project

  def project do
    # What mix.exs prints goes nowhere near the answer, even a line like the marker's.
    IO.puts("precomp-probe-answered")
    [app: :probed, version: "0.1.0", lockfile: "other.lock", build_path: "out/build",
     config_path: "conf/main.exs", deps: deps()]
  end

  defp deps do
    [
      {:jason, "~> 1.0"},
      {:plug, "~> 1.0", only: :test},
      {:nif_thing, "~> 0.1", targets: [:rpi]},
      {:tool, "~> 1.0", env: :dev, manager: :rebar3},
      {:local, path: "../local"},
      {:gitty, git: "https://example.invalid/gitty.git"},
      {:opts_only, [only: [:dev, :test]]}
    ]
  end
end
"#,
                ),
                (
                    "conf/main.exs",
                    r#"import Config
IO.puts("the config prints too")
File.write!(Path.join(__DIR__, "evaluations"), "once\n", [:append])
config :jason, level: 3
"#,
                ),
            ],
        );
        let project = Project::probe(root, "dev").unwrap();
        let root = std::fs::canonicalize(root).unwrap();
        assert_eq!(project.apps, vec!["probed"]);
        assert!(!project.umbrella);
        assert_eq!(project.build_path, root.join("out/build/dev"));
        assert_eq!(project.deps_path, root.join("deps"));
        assert_eq!(project.lockfile, root.join("other.lock"));
        assert_eq!(project.config_path, root.join("conf/main.exs"));
        assert_eq!(
            project.compile_locks,
            vec![root.join("out/build/dev/lib/probed/.mix/compile.lock")]
        );
        assert_eq!(
            (project.mix_env.as_str(), project.mix_target.as_str()),
            ("dev", "host")
        );
        assert!(
            project.otp_major.parse::<u32>().is_ok(),
            "{}",
            project.otp_major
        );
        assert!(project.native_target().is_ok());
        assert_eq!(project.hex_scm, "Hex.SCM");
        // term_to_binary({1, {Elixir, Otp}, 'Elixir.Hex.SCM'}): version 131, a 3-tuple.
        assert_eq!(project.elixir_scm[..3], [131, 104, 3]);

        let apps: Vec<&str> = project.deps.iter().map(|d| d.app.as_str()).collect();
        assert_eq!(
            apps,
            [
                "jason",
                "plug",
                "nif_thing",
                "tool",
                "local",
                "gitty",
                "opts_only"
            ]
        );
        let jason = dep(&project, "jason");
        assert!(jason.active && jason.hex && jason.custom.is_empty());
        assert_eq!(jason.env, "prod");
        assert!(!dep(&project, "plug").active, "only: :test");
        assert!(!dep(&project, "nif_thing").active, "targets: [:rpi]");
        assert_eq!(dep(&project, "tool").env, "dev");
        assert_eq!(dep(&project, "tool").custom, vec!["manager"]);
        assert!(!dep(&project, "local").hex && !dep(&project, "gitty").hex);
        assert!(dep(&project, "opts_only").active && dep(&project, "opts_only").hex);

        // The compile-time config, printed by the probe's VM after its answer: evaluated
        // once, with no second VM.
        let config = crate::consumer_config::evaluate(&project).unwrap();
        let env = config.app_env("jason").unwrap();
        assert!(format!("{env:?}").contains('3'), "{env:?}");
        let evaluations = std::fs::read_to_string(root.join("conf/evaluations")).unwrap();
        assert_eq!(evaluations, "once\n");
    }

    #[test]
    fn an_umbrellas_answer_holds_every_child() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let child = |app: &str, deps: &str| {
            format!(
                "defmodule {}.MixProject do\n  use Mix.Project\n  def project, do: [app: :{app}, \
                 version: \"0.1.0\", build_path: \"../../_build\", config_path: \
                 \"../../config/config.exs\", deps_path: \"../../deps\", lockfile: \
                 \"../../mix.lock\", deps: {deps}]\nend\n",
                app.to_uppercase()
            )
        };
        write(
            root,
            &[
                (
                    "mix.exs",
                    "defmodule Umb.MixProject do\n  use Mix.Project\n  def project, do: \
                     [apps_path: \"apps\", deps: [{:credo, \"~> 1.0\", only: :test}]]\nend\n",
                ),
                ("apps/a/mix.exs", &child("a", "[{:jason, \"~> 1.0\"}]")),
                (
                    "apps/b/mix.exs",
                    &child(
                        "b",
                        "[{:a, in_umbrella: true}, {:plug, \"~> 1.0\", only: :dev}, \
                         {:jason, \"~> 1.0\"}]",
                    ),
                ),
            ],
        );
        let project = Project::probe(root, "dev").unwrap();
        let root = std::fs::canonicalize(root).unwrap();
        assert!(project.umbrella);
        assert_eq!(project.apps, vec!["a", "b"]);
        assert_eq!(project.build_path, root.join("_build/dev"));
        assert_eq!(
            project.compile_locks,
            vec![
                root.join("_build/dev/lib/a/.mix/compile.lock"),
                root.join("_build/dev/lib/b/.mix/compile.lock")
            ]
        );
        // The children's deps, each once; the umbrella root's own are not a child's.
        let apps: Vec<&str> = project.deps.iter().map(|d| d.app.as_str()).collect();
        assert_eq!(apps, ["jason", "a", "plug"]);
        assert!(!dep(&project, "a").hex);
        assert!(dep(&project, "plug").active);
        assert!(
            !Project::probe(&root, "prod")
                .unwrap()
                .declared("plug")
                .unwrap()
                .active
        );
    }

    #[test]
    fn a_mix_exs_that_fails_is_an_error_saying_why() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[(
                "mix.exs",
                "defmodule Broken.MixProject do\n  use Mix.Project\n  def project, do: \
                 raise \"broken on purpose\"\nend\n",
            )],
        );
        let error = Project::probe(dir.path(), "dev").unwrap_err().to_string();
        assert!(error.contains("broken on purpose"), "{error}");

        write(
            dir.path(),
            &[(
                "mix.exs",
                "defmodule NoApp.MixProject do\n  use Mix.Project\n  def project, do: \
                 [version: \"0.1.0\"]\nend\n",
            )],
        );
        let error = Project::probe(dir.path(), "dev").unwrap_err().to_string();
        assert!(error.contains("mix.exs has no :app"), "{error}");

        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            Project::probe(empty.path(), "dev"),
            Err(ClientError::NotAMixProject { .. })
        ));
    }
}
