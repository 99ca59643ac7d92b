//! Which manager (mix, rebar3, make) each dependency is built with: `precomp_proto::manager`
//! against Mix itself, and the builder against a consumer's own `mix deps.compile`, on the
//! host toolchain (bookworm: OTP 25, Elixir 1.14) and the trixie image (OTP 27, Elixir 1.18;
//! the store under `$PRECOMP_TOOLCHAIN_CACHE`, default `/var/cache/precomp-test`).
//!
//! Mix runs in the build sandbox (`precomp toolchain run`), with `Precomp.BuildSCM` and
//! `Precomp.LockConverger` standing in for Hex (not installed here): as with Hex, a
//! dependency's managers and children come from its mix.lock entry.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use common::*;
use precomp_proto::lock::{HexLockEntry, LockDep, LockEntry, MixLock};
use precomp_proto::manager::{mix_managers, Converger, Manager, TopLevelDep};

// ---------------------------------------------------------------------------------------------
// The rule against Mix's converger, on generated graphs
// ---------------------------------------------------------------------------------------------

/// One consumer project: its lock, what its mix.exs declares, and which build files each
/// package has at its root (what `infer_manager/1` looks at).
#[derive(Clone, Debug)]
struct Graph {
    lock: MixLock,
    top_level: Vec<TopLevelDep>,
    files: BTreeMap<String, Vec<&'static str>>,
}

/// A small deterministic generator (xorshift64*), so a failing graph can be reproduced.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

fn entry(tools: &[&str], deps: &[(String, bool)]) -> LockEntry {
    LockEntry::Hex(HexLockEntry {
        package: String::new(),
        version: "1.0.0".into(),
        inner_checksum: "a".repeat(64),
        managers: tools.iter().map(|t| t.to_string()).collect(),
        deps: deps
            .iter()
            .map(|(app, optional)| LockDep {
                app: app.clone(),
                requirement: Some("~> 1.0".into()),
                package: app.clone(),
                repo: "hexpm".into(),
                optional: *optional,
            })
            .collect(),
        repo: "hexpm".into(),
        outer_checksum: Some("b".repeat(64)),
        extra: vec![],
    })
}

/// A package: `(app, build tools, [(dep, optional)], root files)`.
type Package<'a> = (
    &'a str,
    &'a [&'a str],
    &'a [(&'a str, bool)],
    &'a [&'static str],
);

/// A lock of `packages`, declaring `top_level`.
fn graph(packages: &[Package<'_>], top_level: &[&str]) -> Graph {
    let mut lock = MixLock::default();
    let mut files = BTreeMap::new();
    for (app, tools, deps, root_files) in packages {
        let deps: Vec<(String, bool)> = deps.iter().map(|(d, o)| (d.to_string(), *o)).collect();
        let mut e = entry(tools, &deps);
        if let LockEntry::Hex(hex) = &mut e {
            hex.package = app.to_string();
        }
        lock.entries.insert(app.to_string(), e);
        files.insert(app.to_string(), root_files.to_vec());
    }
    Graph {
        lock,
        top_level: top_level.iter().map(|a| TopLevelDep::new(*a)).collect(),
        files,
    }
}

/// Hand-written cases: the Phoenix stack of the issue and the converger's corners.
fn known_graphs() -> Vec<Graph> {
    const MK: &[&str] = &["Makefile"];
    const MIX: &[&str] = &["mix.exs"];
    const REBAR: &[&str] = &["rebar.config"];
    let phoenix: &[Package<'_>] = &[
        (
            "phoenix",
            &["mix"],
            &[("plug", false), ("plug_cowboy", true)],
            MIX,
        ),
        ("plug", &["mix"], &[], MIX),
        (
            "plug_cowboy",
            &["mix"],
            &[("cowboy", false), ("plug", false)],
            MIX,
        ),
        (
            "cowboy",
            &["make", "rebar3"],
            &[("cowlib", false), ("ranch", false)],
            &["Makefile", "rebar.config"],
        ),
        (
            "cowlib",
            &["make", "rebar3"],
            &[],
            &["Makefile", "rebar.config"],
        ),
        ("ranch", &["make"], &[], MK),
    ];
    let mut declared_ranch = graph(phoenix, &["phoenix", "plug_cowboy", "ranch"]);
    declared_ranch.top_level[2].override_ = true;
    let mut explicit = graph(phoenix, &["plug_cowboy", "ranch", "cowlib"]);
    explicit.top_level[1].manager = Some(Manager::Rebar3);
    explicit.top_level[1].override_ = true;
    explicit.top_level[2].manager = Some(Manager::Make);
    explicit.top_level[2].override_ = true;
    vec![
        graph(phoenix, &["phoenix", "plug_cowboy"]),
        graph(phoenix, &["phoenix", "plug_cowboy", "ranch"]),
        declared_ranch,
        explicit,
        // ranch from a mix parent and a rebar3 grandparent's branch, in both orders.
        graph(
            &[
                ("web", &["mix"], &[("ranch", false)], MIX),
                ("db", &["mix"], &[("pool", false)], MIX),
                ("pool", &["rebar3"], &[("ranch", false)], REBAR),
                ("ranch", &["make"], &[], MK),
            ],
            &["db", "web"],
        ),
        // An ancestor declares ranch: its (make) occurrence is in the upper breadths.
        graph(
            &[
                ("web", &["mix"], &[("pool", false), ("ranch", false)], MIX),
                ("pool", &["rebar3"], &[("ranch", false)], REBAR),
                ("ranch", &["make"], &[], MK),
            ],
            &["web"],
        ),
        // Elixir 1.14 drops the optional occurrence, 1.15+ merges it once ranch loads.
        graph(
            &[
                ("early", &["mix"], &[("late", false)], MIX),
                ("opt_parent", &["rebar3"], &[("ranch", true)], REBAR),
                ("late", &["mix"], &[("ranch", false)], MIX),
                ("ranch", &["make"], &[], MK),
            ],
            &["early", "opt_parent"],
        ),
        // No files and no build tools: Mix has no manager.
        graph(
            &[
                ("top", &["mix"], &[("bare", false)], MIX),
                ("bare", &[], &[], &[]),
            ],
            &["top"],
        ),
    ]
}

/// `count` random consumer projects: DAGs of 3–8 packages with every kind of build tools and
/// root files, optional deps, the roots and some others declared (a few with `manager:` and
/// `override: true`), in random order.
fn random_graphs(seed: u64, count: usize) -> Vec<Graph> {
    const TOOLS: &[&[&str]] = &[
        &["make"],
        &["make"],
        &["make", "rebar3"],
        &["rebar3"],
        &["mix"],
        &["make", "mix"],
        &[],
    ];
    const FILES: &[&[&str]] = &[
        &["Makefile"],
        &["Makefile"],
        &["Makefile", "rebar.config"],
        &["rebar.config"],
        &["mix.exs"],
        &[],
    ];
    let mut random = Random(seed);
    (0..count)
        .map(|_| {
            let n = 3 + (random.next() % 6) as usize;
            let apps: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
            let mut lock = MixLock::default();
            let mut files = BTreeMap::new();
            let mut depended = vec![false; n];
            for i in 0..n {
                let mut deps = Vec::new();
                for (j, seen) in depended.iter_mut().enumerate().skip(i + 1) {
                    if random.chance(35) {
                        deps.push((apps[j].clone(), random.chance(20)));
                        *seen = true;
                    }
                }
                let mut e = entry(random.pick(TOOLS), &deps);
                if let LockEntry::Hex(hex) = &mut e {
                    hex.package = apps[i].clone();
                }
                lock.entries.insert(apps[i].clone(), e);
                files.insert(apps[i].clone(), random.pick(FILES).to_vec());
            }
            let mut top_level = Vec::new();
            for i in 0..n {
                if depended[i] && !random.chance(25) {
                    continue;
                }
                let mut dep = TopLevelDep::new(apps[i].as_str());
                if random.chance(10) {
                    dep.manager = Some(random.pick(&Manager::PRIORITY));
                    dep.override_ = true;
                } else if random.chance(10) {
                    dep.override_ = true;
                }
                top_level.push(dep);
            }
            for i in (1..top_level.len()).rev() {
                let j = (random.next() % (i as u64 + 1)) as usize;
                top_level.swap(i, j);
            }
            Graph {
                lock,
                top_level,
                files,
            }
        })
        .collect()
}

/// Converges each project in `dir` (named in `names`) with Mix on `toolchain` and returns
/// Mix's manager for each dependency, by project, and the toolchain's Elixir version.
fn mix_converges(
    dir: &Path,
    toolchain: &str,
    names: &[String],
) -> (BTreeMap<String, BTreeMap<String, Option<Manager>>>, String) {
    let script = format!(
        "Mix.start()\n{}{}{}",
        precomp_builder::project::SCM,
        precomp_builder::project::LOCK_CONVERGER,
        r##"
[out | projects] = System.argv()
lines =
  for name <- projects do
    Mix.Project.in_project(String.to_atom(name), name, fn _ ->
      {deps, _, _} = Mix.Dep.Converger.converge(nil, nil, [env: :prod], &{&1, &2, &3})
      for dep <- deps, do: "#{name} #{dep.app} #{dep.manager || :none}\n"
    end)
  end
File.write!(out, ["elixir #{System.version()}\n" | lines])
"##
    );
    std::fs::write(dir.join("managers.exs"), script).unwrap();
    let mut command = precomp_command();
    command
        .arg("--data")
        .arg(toolchain_cache())
        .args(["toolchain", "run", toolchain, "--output"])
        .arg(dir)
        .args(["--", "elixir", "managers.exs", "managers.out"])
        .args(names);
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let text = std::fs::read_to_string(dir.join("managers.out")).unwrap();
    let mut elixir = String::new();
    let mut found: BTreeMap<String, BTreeMap<String, Option<Manager>>> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["elixir", version] => elixir = version.to_string(),
            [project, app, manager] => {
                let manager = match *manager {
                    "none" => None,
                    other => Some(Manager::parse(other).unwrap_or_else(|| panic!("{line}"))),
                };
                found
                    .entry(project.to_string())
                    .or_default()
                    .insert(app.to_string(), manager);
            }
            _ => panic!("unexpected line {line:?} from Mix"),
        }
    }
    (found, elixir)
}

/// Writes `graph` as a Mix project `dir/name`: mix.exs declaring its top-level deps, mix.lock,
/// and `deps/<app>/` holding its (empty) root build files.
fn write_project(dir: &Path, name: &str, graph: &Graph) {
    let project = dir.join(name);
    let deps: Vec<String> = graph
        .top_level
        .iter()
        .map(|dep| {
            let mut text = format!("{{:{}, \"~> 1.0\"", dep.app);
            if let Some(manager) = dep.manager {
                text.push_str(&format!(", manager: :{manager}"));
            }
            if dep.override_ {
                text.push_str(", override: true");
            }
            text.push('}');
            text
        })
        .collect();
    let module = name.to_uppercase();
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("mix.exs"),
        format!(
            "defmodule {module}.MixProject do\n  use Mix.Project\n  def project, do: [app: :{name}, version: \"0.1.0\", deps: [{}]]\nend\n",
            deps.join(", ")
        ),
    )
    .unwrap();
    std::fs::write(project.join("mix.lock"), graph.lock.to_text().unwrap()).unwrap();
    for (app, files) in &graph.files {
        let dep = project.join("deps").join(app);
        std::fs::create_dir_all(&dep).unwrap();
        for file in files {
            std::fs::write(dep.join(file), "").unwrap();
        }
    }
}

fn rule_agrees_with_mix(toolchain: &str) {
    let mut graphs = known_graphs();
    graphs.extend(random_graphs(0x005e_ed0f_4d1c, 120));
    let dir = data_dir("precomp-manager-graphs-");
    let names: Vec<String> = (0..graphs.len()).map(|i| format!("g{i:03}")).collect();
    for (name, graph) in names.iter().zip(&graphs) {
        write_project(dir.path(), name, graph);
    }
    let (mix, elixir) = mix_converges(dir.path(), toolchain, &names);
    assert_eq!(mix.len(), graphs.len(), "Mix converged every project");
    let converger = Converger::for_elixir(&elixir);
    let mut differ = 0;
    let mut rebar3_from_parent = 0;
    for (name, graph) in names.iter().zip(&graphs) {
        let infer = |app: &str| {
            Ok::<_, std::convert::Infallible>(Manager::infer_from_files(&graph.files[app]))
        };
        let ours = mix_managers(&graph.lock, &graph.top_level, converger, infer).unwrap();
        // Mix reports the packages it reaches; ours also gives the others (as if declared).
        let theirs = mix.get(name).cloned().unwrap_or_default();
        let reached: BTreeMap<String, Option<Manager>> = ours
            .iter()
            .filter(|(app, _)| theirs.contains_key(*app))
            .map(|(app, m)| (app.clone(), *m))
            .collect();
        if reached != theirs {
            differ += 1;
            eprintln!(
                "{name} (Elixir {elixir}): Mix {theirs:?}, precomp {reached:?}\n  top level {:?}\n{}",
                graph.top_level,
                graph.lock.to_text().unwrap()
            );
        }
        rebar3_from_parent += theirs
            .iter()
            .filter(|(app, m)| {
                **m == Some(Manager::Rebar3)
                    && Manager::infer_from_files(&graph.files[*app]) != Some(Manager::Rebar3)
                    && match &graph.lock.entries[*app] {
                        LockEntry::Hex(e) => Manager::from_build_tools(&e.managers).is_none(),
                        _ => false,
                    }
            })
            .count();
    }
    let compared: usize = mix.values().map(BTreeMap::len).sum();
    eprintln!("{toolchain} (Elixir {elixir}): {compared} managers in {} projects, {rebar3_from_parent} make-only packages built with rebar3", graphs.len());
    assert_eq!(differ, 0, "precomp and Mix chose different managers");
    // The generated graphs exercise the case that matters: a make-only package that Mix
    // builds with rebar3 because of where it meets it.
    assert!(rebar3_from_parent >= 10, "{rebar3_from_parent}");
    // The hand-written cases, as Mix decided them.
    assert_eq!(mix["g000"]["ranch"], Some(Manager::Rebar3));
    assert_eq!(mix["g001"]["ranch"], Some(Manager::Make));
    assert_eq!(mix["g003"]["ranch"], Some(Manager::Rebar3));
    assert_eq!(mix["g003"]["cowlib"], Some(Manager::Make));
    assert_eq!(mix["g004"]["ranch"], Some(Manager::Rebar3));
    assert_eq!(mix["g005"]["ranch"], Some(Manager::Make));
    let optional = if converger == Converger::Elixir1_14 {
        Manager::Make
    } else {
        Manager::Rebar3
    };
    assert_eq!(mix["g006"]["ranch"], Some(optional), "Elixir {elixir}");
    assert_eq!(mix["g007"]["bare"], None);
}

#[test]
fn host_mix_picks_the_managers_precomp_computes() {
    rule_agrees_with_mix("host");
}

#[test]
fn trixie_mix_picks_the_managers_precomp_computes() {
    rule_agrees_with_mix("trixie");
}

// ---------------------------------------------------------------------------------------------
// The builder against a consumer's own `mix deps.compile`, on the fixtures
// ---------------------------------------------------------------------------------------------

/// The fixture repository and a builder key, made once per test process.
fn fixture() -> &'static FixtureRepo {
    static FIXTURE: OnceLock<FixtureRepo> = OnceLock::new();
    FIXTURE.get_or_init(|| FixtureRepo::new("precomp-manager-fixture-", &[], &["builder"]))
}

/// erl_uses_mk (rebar3) and its make-only dependency mk_makefail, whose `make` fails.
const RELEASES: &[&str] = &["erl_uses_mk@1.0.0", "mk_makefail@1.0.0"];

/// A consumer project in a new directory declaring `declared`, with the fixtures' lock and
/// their sources unpacked under deps/ as `mix deps.get` leaves them.
fn consumer(declared: &[&str]) -> tempfile::TempDir {
    let dir = data_dir("precomp-manager-consumer-");
    let deps: Vec<String> = declared
        .iter()
        .map(|app| format!("{{:{app}, \"~> 1.0\"}}"))
        .collect();
    std::fs::write(
        dir.path().join("mix.exs"),
        format!(
            "{}{}\ndefmodule Consumer.MixProject do\n  use Mix.Project\n  def project, do: [app: :consumer, version: \"0.1.0\", deps: [{}]]\nend\n",
            precomp_builder::project::SCM,
            precomp_builder::project::LOCK_CONVERGER,
            deps.join(", ")
        ),
    )
    .unwrap();
    fixture().write_lock(&dir.path().join("mix.lock"), RELEASES);
    for release in RELEASES {
        let (name, version) = release.split_once('@').unwrap();
        let bytes = std::fs::read(
            fixture()
                .path("repo/tarballs")
                .join(format!("{name}-{version}.tar")),
        )
        .unwrap();
        let tarball = precomp_proto::tarball::read(&bytes).unwrap();
        let dest = dir.path().join("deps").join(name);
        precomp_proto::tarball::unpack_contents(&tarball.contents_tar_gz, &dest).unwrap();
    }
    dir
}

/// `mix deps.compile` in `project`, in the sandbox of `toolchain`.
fn mix_deps_compile(project: &Path, toolchain: &str) -> std::process::Output {
    let mut command = precomp_command();
    command
        .arg("--data")
        .arg(toolchain_cache())
        .args(["toolchain", "run", toolchain, "--output"])
        .arg(project)
        .args([
            "--env",
            "MIX_ENV=prod",
            "--env",
            "MIX_REBAR3=/usr/bin/rebar3",
            "--",
            "mix",
            "deps.compile",
        ]);
    command.output().unwrap()
}

/// `precomp build --json` of the fixtures' lock with `extra` arguments: each package's line.
fn precomp_build(
    data: &Path,
    toolchain: &str,
    extra: &[&str],
) -> BTreeMap<String, serde_json::Value> {
    let fixture = fixture();
    let lock = data.join("mix.lock");
    fixture.write_lock(&lock, RELEASES);
    let mut command = precomp_command();
    command
        .arg("--data")
        .arg(data)
        .args(["build", "--json", "--lock"])
        .arg(&lock)
        .args(["--mirror", &fixture.repo_url(), "--toolchain", toolchain])
        .arg("--toolchains")
        .arg(toolchain_cache())
        .arg("--key")
        .arg(fixture.key("builder.key"))
        .args(extra);
    let output = command.output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{e}: {line}\n{}", describe(&output)));
            (value["app"].as_str().unwrap().to_string(), value)
        })
        .collect()
}

fn field<'a>(line: &'a serde_json::Value, name: &str) -> &'a str {
    line[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// The build log of a built package (`DATA/builds/logs/<key>.log`).
fn build_log(data: &Path, line: &serde_json::Value) -> String {
    let path = data
        .join("builds/logs")
        .join(format!("{}.log", field(line, "key")));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Mix builds mk_makefail with rebar3 when the consumer reaches it through erl_uses_mk, and
/// with make (which fails) when the consumer declares it; the builder does the same for the
/// same lock and top-level deps, and what it built runs.
fn builder_picks_the_manager_mix_picks(toolchain: &str) {
    // The consumer's own Mix.
    let through_parent = consumer(&["erl_uses_mk"]);
    let output = mix_deps_compile(through_parent.path(), toolchain);
    assert!(output.status.success(), "{}", describe(&output));
    let log = text(&output);
    assert!(
        log.contains("Compiling mk_makefail"),
        "rebar3 built it: {log}"
    );
    assert!(through_parent
        .path()
        .join("_build/prod/lib/mk_makefail/ebin/mk_makefail.beam")
        .is_file());
    let declared = consumer(&["erl_uses_mk", "mk_makefail"]);
    let output = mix_deps_compile(declared.path(), toolchain);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        text(&output).contains("make fails on purpose"),
        "{}",
        describe(&output)
    );

    // The builder, given the lock (its roots are the consumer's top-level deps).
    let data = data_dir("precomp-manager-build-");
    let built = precomp_build(data.path(), toolchain, &[]);
    for app in ["erl_uses_mk", "mk_makefail"] {
        assert_eq!(
            field(&built[app], "status"),
            "built",
            "{app}: {}",
            built[app]
        );
    }
    let log = build_log(data.path(), &built["mk_makefail"]);
    assert!(
        log.contains("Compiling mk_makefail"),
        "rebar3 built it: {log}"
    );
    let run = data_dir("precomp-manager-run-");
    let mut command = precomp_command();
    command
        .arg("--data")
        .arg(toolchain_cache())
        .args(["toolchain", "run", toolchain, "--output"])
        .arg(run.path())
        .args(["--", "erl", "-noshell"]);
    for (app, line) in &built {
        let dest = run.path().join(app);
        precomp_proto::artifact::unpack(&std::fs::read(field(line, "artifact")).unwrap(), &dest)
            .unwrap();
        command.arg("-pa").arg(format!("{app}/ebin"));
    }
    let output = command
        .args([
            "-eval",
            "io:format(\"~s~n\", [erl_uses_mk:welcome(<<\"ci\">>)]), halt().",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "hello, ci!");

    // Told that the consumer declares mk_makefail too, the builder uses make, as Mix does.
    let data = data_dir("precomp-manager-declared-");
    let declared = precomp_build(
        data.path(),
        toolchain,
        &["--top-level", "erl_uses_mk", "--top-level", "mk_makefail"],
    );
    assert_eq!(field(&declared["mk_makefail"], "status"), "failed");
    let log = std::fs::read_to_string(field(&declared["mk_makefail"], "log")).unwrap();
    assert!(log.contains("make fails on purpose"), "{log}");
    assert_eq!(field(&declared["erl_uses_mk"], "status"), "skipped");
}

#[test]
fn host_builder_picks_the_manager_mix_picks() {
    builder_picks_the_manager_mix_picks("host");
}

#[test]
fn trixie_builder_picks_the_manager_mix_picks() {
    builder_picks_the_manager_mix_picks("trixie");
}
