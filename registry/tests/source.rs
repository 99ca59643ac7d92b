//! Package sources → metadata and file lists, for our fixtures and for unusual projects made
//! up here, read the way `mix hex.build` and rebar3_hex read them.

use std::path::{Path, PathBuf};

use precomp_proto::metadata::PackageMetadata;
use precomp_proto::tarball;
use precomp_registry::source::{self, SourceKind, SourceOptions};
use precomp_testkit::{erl_eval, erl_string};

fn fixture(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/packages")
        .join(dir)
}

fn write(root: &Path, files: &[(&str, &str)]) {
    for (path, contents) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

#[test]
fn names_and_versions_come_from_the_project_not_the_directory() {
    let v1 = source::load(&fixture("shapes_v1")).unwrap();
    let v2 = source::load(&fixture("shapes_v2")).unwrap();
    assert_eq!(
        (v1.metadata.name.as_str(), v1.metadata.version.as_str()),
        ("shapes", "1.0.0")
    );
    assert_eq!(
        (v2.metadata.name.as_str(), v2.metadata.version.as_str()),
        ("shapes", "2.0.0")
    );
    assert_eq!(v1.kind, SourceKind::Mix);
}

#[test]
fn mix_requirements_and_build_tools() {
    let user = source::load(&fixture("shape_user")).unwrap();
    let req = &user.metadata.requirements;
    assert_eq!(req.len(), 1);
    assert_eq!(
        (req[0].name.as_str(), req[0].requirement.as_str()),
        ("shapes", ">= 1.0.0")
    );
    assert!(!req[0].optional);
    assert_eq!(req[0].repository, "hexpm");
    assert_eq!(user.metadata.build_tools, ["mix"]);
    assert_eq!(user.metadata.elixir.as_deref(), Some("~> 1.14"));

    let opt = source::load(&fixture("opt_user")).unwrap();
    assert!(opt.metadata.requirements[0].optional);

    // A Makefile beside mix.exs adds make, as Hex guesses it.
    let nif = source::load(&fixture("tiny_nif")).unwrap();
    assert_eq!(nif.metadata.build_tools, ["mix", "make"]);
    assert!(
        nif.files.contains(&"c_src/tiny_nif.c".to_string()),
        "{:?}",
        nif.files
    );
    assert!(nif
        .files
        .iter()
        .all(|f| !f.starts_with("priv/") && !f.starts_with("_build")));
}

#[test]
fn rebar3_and_erlang_mk_projects() {
    let counter = source::load(&fixture("erl_counter")).unwrap();
    assert_eq!(counter.kind, SourceKind::Rebar3);
    assert_eq!(counter.metadata.build_tools, ["rebar3"]);
    assert_eq!(counter.metadata.licenses, ["Apache-2.0"]);
    assert!(counter
        .files
        .contains(&"include/erl_counter.hrl".to_string()));
    assert!(counter
        .files
        .contains(&"src/erl_counter.app.src".to_string()));

    let ids = source::load(&fixture("erl_ids")).unwrap();
    let req = &ids.metadata.requirements;
    assert_eq!(
        (req[0].name.as_str(), req[0].requirement.as_str()),
        ("erl_counter", "~> 1.0")
    );

    let mk = source::load(&fixture("mk_erl")).unwrap();
    assert_eq!(mk.kind, SourceKind::ErlangMk);
    assert_eq!(mk.metadata.build_tools, ["make", "rebar3"]);
    assert!(mk.files.contains(&"ebin/mk_erl.app".to_string()));
    assert!(mk.files.contains(&"Makefile".to_string()));
    assert!(mk.files.iter().all(|f| !f.ends_with(".beam")));
}

#[test]
fn the_tarball_round_trips_and_is_deterministic() {
    let package = source::load(&fixture("env_reader")).unwrap();
    let a = package.tarball().unwrap();
    let b = package.tarball().unwrap();
    assert_eq!(a.bytes, b.bytes);
    let read = tarball::read(&a.bytes).unwrap();
    assert_eq!(read.outer_checksum, a.outer_checksum);
    let meta = PackageMetadata::parse(&read.metadata_config).unwrap();
    assert_eq!(meta, package.metadata);
    let listed: Vec<String> = tarball::list_contents(&read.contents_tar_gz)
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    let mut files = package.files.clone();
    files.sort();
    assert_eq!(listed, files);
}

#[test]
fn an_unusual_mix_project() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            (
                "mix.exs",
                r#"
defmodule Odd.MixProject do
  use Mix.Project
  IO.puts("mix.exs output must not confuse the probe")

  def project do
    [
      app: :odd_app,
      version: "0.3.0-rc.1+build.7",
      elixir: ">= 1.13.0",
      description: "  Padded description.  ",
      deps: deps(),
      package: [
        name: "odd_pkg",
        files: ["lib", "priv", "NOTES*"],
        exclude_patterns: [~r/secret/, "scratch"],
        licenses: ["MIT", "Apache-2.0"],
        links: %{"Source" => "https://example.invalid/odd", "Docs" => "https://example.invalid/docs"}
      ]
    ]
  end

  defp deps do
    [
      {:jason, "~> 1.4"},
      {:plug, "~> 1.14", optional: true, runtime: false},
      {:acme_internal, ">= 0.0.0", organization: "acme"},
      {:renamed_app, "~> 2.0", hex: :real_package},
      {:credo, "~> 1.7", only: [:dev, :test], runtime: false},
      {:dev_tool, git: "https://example.invalid/dev_tool.git", only: :dev},
      {:prod_only, "~> 0.1", only: :prod}
    ]
  end
end
"#,
            ),
            ("lib/odd.ex", "defmodule Odd do\nend\n"),
            ("lib/secret_key.ex", "# excluded by a regex\n"),
            ("lib/scratch/notes.ex", "# excluded by a string pattern\n"),
            ("priv/static/app.css", "body {}\n"),
            ("priv/.hidden", "dot files are kept, as with Hex\n"),
            ("NOTES.md", "notes\n"),
            ("README.md", "not in the custom file list\n"),
            ("test/odd_test.exs", "# never packaged\n"),
        ],
    );
    let package = source::load(dir.path()).unwrap();
    let meta = &package.metadata;
    assert_eq!(meta.name, "odd_pkg");
    assert_eq!(meta.app, "odd_app");
    assert_eq!(meta.version, "0.3.0-rc.1+build.7");
    assert_eq!(meta.description, "Padded description.");
    assert_eq!(meta.licenses, ["MIT", "Apache-2.0"]);
    assert_eq!(
        meta.links,
        [
            (
                "Docs".to_string(),
                "https://example.invalid/docs".to_string()
            ),
            (
                "Source".to_string(),
                "https://example.invalid/odd".to_string()
            )
        ]
    );
    // Hex's order: pattern by pattern, each directory before its entries, which it lists too;
    // dot files inside directories are kept, excluded patterns match anywhere in the path.
    assert_eq!(
        meta.files,
        [
            "lib",
            "lib/odd.ex",
            "priv",
            "priv/.hidden",
            "priv/static",
            "priv/static/app.css",
            "NOTES.md"
        ]
    );
    assert_eq!(
        package.files,
        [
            "lib/odd.ex",
            "priv/.hidden",
            "priv/static/app.css",
            "NOTES.md"
        ]
    );
    // Without mix.exs in the file list Hex guesses no tool and defaults to mix.
    assert_eq!(meta.build_tools, ["mix"]);

    let reqs: Vec<(&str, &str, &str, bool, &str)> = meta
        .requirements
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                r.app.as_str(),
                r.requirement.as_str(),
                r.optional,
                r.repository.as_str(),
            )
        })
        .collect();
    assert_eq!(
        reqs,
        [
            ("acme_internal", "acme_internal", ">= 0.0.0", false, "acme"),
            ("jason", "jason", "~> 1.4", false, "hexpm"),
            ("plug", "plug", "~> 1.14", true, "hexpm"),
            ("prod_only", "prod_only", "~> 0.1", false, "hexpm"),
            ("real_package", "renamed_app", "~> 2.0", false, "hexpm"),
        ]
    );
    package.tarball().unwrap();
}

#[test]
fn mix_projects_hex_cannot_publish_are_refused_with_the_reason() {
    let cases = [
        (
            r#"[{:dep, git: "https://example.invalid/dep.git"}]"#,
            "dependency dep is not a Hex package",
        ),
        (
            r#"[{:dep, path: "../dep"}]"#,
            "dependency dep is not a Hex package",
        ),
        (r#"[{:dep, "~> 1.0", override: true}]"#, "sets :override"),
    ];
    for (deps, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                (
                    "mix.exs",
                    &format!(
                        "defmodule Bad.MixProject do\n use Mix.Project\n def project, do: [app: :bad, version: \"1.0.0\", description: \"x\", deps: {deps}]\nend\n"
                    ),
                ),
                ("lib/bad.ex", "defmodule Bad do\nend\n"),
            ],
        );
        let err = source::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(expected), "{deps}: {err}");
        assert!(err.contains("mix.exs"), "{err}");
    }

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[("mix.exs", "defmodule Bad.MixProject do\n use Mix.Project\n def project, do: [app: :bad, version: \"one\"]\nend\n")],
    );
    let err = source::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("not a valid SemVer version"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[("mix.exs", "this is not elixir (")]);
    let err = source::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("mix.exs"), "{err}");
}

#[test]
fn an_unusual_rebar3_project() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            (
                "src/odd_erl.app.src",
                r#"%% comments and odd spacing are fine
{application,odd_erl,
 [{description,"An odd one"},
  {vsn,"2.1.0"},
  {pkg_name,odd_erl_pkg},
  {applications,[kernel,stdlib]},
  {licenses,["Apache-2.0"]},
  {links,[{"GitHub","https://example.invalid/odd_erl"}]},
  {exclude_files,["src/scratch.erl"]}]}.
"#,
            ),
            ("src/odd_erl.erl", "-module(odd_erl).\n"),
            ("src/scratch.erl", "-module(scratch).\n"),
            ("src/.odd_erl.erl.swp", "editor leftover\n"),
            ("src/odd_erl.erl~", "editor leftover\n"),
            ("include/odd.hrl", "-define(ODD, 1).\n"),
            ("priv/data.txt", "data\n"),
            ("_build/default/lib/x/ebin/x.beam", "build output\n"),
            ("LICENSE", "license\n"),
            // A plain Makefile (no erlang.mk, no PROJECT) does not make an erlang.mk project.
            ("Makefile", "all:\n\trebar3 compile\n"),
            (
                "rebar.config",
                r#"{erl_opts, [debug_info]}.
{deps, [bare_dep, {versioned, "1.2.3"}, {renamed, {pkg, real_name}}, {both, "~> 2.0", {pkg, real_both}}]}.
{profiles, [{test, [{deps, [meck]}]}]}.
"#,
            ),
            (
                "rebar.lock",
                r#"{"1.2.0",
[{<<"bare_dep">>,{pkg,<<"bare_dep">>,<<"0.4.1">>},0},
 {<<"both">>,{pkg,<<"real_both">>,<<"2.1.0">>},0},
 {<<"renamed">>,{pkg,<<"real_name">>,<<"3.0.0">>},0},
 {<<"transitive">>,{pkg,<<"transitive">>,<<"9.9.9">>},1},
 {<<"versioned">>,{pkg,<<"versioned">>,<<"1.2.3">>},0}]}.
"#,
            ),
        ],
    );
    let package = source::load(dir.path()).unwrap();
    let meta = &package.metadata;
    assert_eq!(package.kind, SourceKind::Rebar3);
    assert_eq!(
        (meta.name.as_str(), meta.app.as_str()),
        ("odd_erl_pkg", "odd_erl")
    );
    assert_eq!(meta.version, "2.1.0");
    assert_eq!(
        meta.links,
        [(
            "GitHub".to_string(),
            "https://example.invalid/odd_erl".to_string()
        )]
    );
    // rebar3_hex lists directories too, sorted; editor leftovers go (`~$`, `\.swp$`), and
    // so does what exclude_files names. Nothing else is hidden: it has no dot-file rule.
    assert_eq!(
        meta.files,
        [
            "LICENSE",
            "include",
            "include/odd.hrl",
            "priv",
            "priv/data.txt",
            "rebar.config",
            "rebar.lock",
            "src",
            "src/odd_erl.app.src",
            "src/odd_erl.erl"
        ]
    );
    assert_eq!(
        package.files,
        [
            "LICENSE",
            "include/odd.hrl",
            "priv/data.txt",
            "rebar.config",
            "rebar.lock",
            "src/odd_erl.app.src",
            "src/odd_erl.erl"
        ]
    );
    // rebar3_hex never guesses: [rebar3] unless the app.src says otherwise.
    assert_eq!(meta.build_tools, ["rebar3"]);
    let reqs: Vec<(&str, &str, &str)> = meta
        .requirements
        .iter()
        .map(|r| (r.name.as_str(), r.app.as_str(), r.requirement.as_str()))
        .collect();
    // update_versions: the requirement rebar.config gives under the package's own name, else
    // `~>` and the locked version (so the renamed ones take the lock's too).
    assert_eq!(
        reqs,
        [
            ("bare_dep", "bare_dep", "~>0.4.1"),
            ("real_both", "both", "~>2.1.0"),
            ("real_name", "renamed", "~>3.0.0"),
            ("versioned", "versioned", "1.2.3"),
        ]
    );

    // Without the lock, what rebar3_hex would take from it is unknown: refused, saying why.
    std::fs::remove_file(dir.path().join("rebar.lock")).unwrap();
    let err = source::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("rebar.config")
            && err.contains("dependency bare_dep")
            && err.contains("there is no rebar.lock")
            && err.contains("rebar3 lock"),
        "{err}"
    );
}

#[test]
fn rebar3_projects_that_cannot_be_published_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("src/g.app.src", "{application, g, [{vsn, git}]}.\n"),
            ("src/g.erl", "-module(g).\n"),
        ],
    );
    let err = source::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("g.app.src")
            && err.contains("{vsn, git}")
            && err.contains("--package-version"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("src/g.app.src", "{application, g, [{vsn, \"1.0.0\"}]}.\n"),
            (
                "rebar.config",
                "{deps, [{gdep, {git, \"https://example.invalid/g.git\", {tag, \"1\"}}}]}.\n",
            ),
        ],
    );
    let err = source::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("rebar.config") && err.contains("gdep is not a Hex package"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[("src/g.app.src", "{application, g, [{vsn, \"1.0\"")],
    );
    let err = source::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("g.app.src"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let err = source::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("not a package source"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Metadata equal to what the publishing tool writes. Each expected value is the Erlang map the
// tool hands hex_core (written here from the tool's source, cited), encoded by the real
// hex_core (rebar3's r3_hex_tarball) and read back as our own tarball's metadata is.

fn sources_fixture(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/sources")
        .join(dir)
}

/// The metadata hex_core writes for `meta`, an Erlang map expression.
fn as_hex_core_writes(meta: &str) -> PackageMetadata {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("metadata.config");
    erl_eval(&format!(
        "Meta = {meta},
         {{ok, #{{tarball := T}}}} = r3_hex_tarball:create(Meta, [{{\"x\", <<\"x\">>}}]),
         {{ok, Members}} = erl_tar:extract({{binary, T}}, [memory]),
         {{_, M}} = lists:keyfind(\"metadata.config\", 1, Members),
         ok = file:write_file({}, M)",
        erl_string(&config.display().to_string())
    ));
    PackageMetadata::parse(&std::fs::read(config).unwrap()).unwrap()
}

/// The metadata of the tarball `package` makes, which hex_core unpacks.
fn packaged(package: &source::SourcePackage) -> (PackageMetadata, Vec<u8>) {
    let created = package.tarball().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("package.tar");
    std::fs::write(&path, &created.bytes).unwrap();
    let out = erl_eval(&format!(
        "{{ok, T}} = file:read_file({}),
         {{ok, #{{metadata := _}}}} = r3_hex_tarball:unpack(T, memory),
         io:format(\"unpacked~n\")",
        erl_string(&path.display().to_string())
    ));
    assert!(out.contains("unpacked"), "{out}");
    let read = tarball::read(&created.bytes).unwrap();
    (
        PackageMetadata::parse(&read.metadata_config).unwrap(),
        created.bytes,
    )
}

/// The contents of `path` inside a package tarball.
fn packaged_file(tarball_bytes: &[u8], path: &str) -> Vec<u8> {
    let read = tarball::read(tarball_bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    tarball::unpack_contents(&read.contents_tar_gz, dir.path()).unwrap();
    std::fs::read(dir.path().join(path)).unwrap()
}

#[test]
fn an_erlang_mk_project_is_packaged_as_erlang_mk_writes_it() {
    // cowboy's case: the committed rebar.config lists git sources; erlang.mk publishes DEPS.
    let package = source::load(&sources_fixture("mk_web")).unwrap();
    assert_eq!(package.kind, SourceKind::ErlangMk);
    let (ours, bytes) = packaged(&package);

    // ninenines/erlang.mk plugins/hex.mk `hex_tarball_create.erl` (f440744): Requirements0 keyed
    // by package (`dep_NAME = hex VSN PKG` names it), requirement `hex_req_NAME` or
    // query_version (the tag of a git dep, the version of a hex dep), Metadata0 with
    // build_tools [make, rebar3], merged with HEX_TARBALL_EXTRA_METADATA ($(PROJECT_VERSION)
    // expanded by make). Files: HEX_TARBALL_FILES' order; include/ only *.hrl; priv/ all but
    // names with a space; no test/.
    let expected = as_hex_core_writes(
        r#"(#{
             app => <<"mk_web">>,
             build_tools => [<<"make">>, <<"rebar3">>],
             description => <<"precomp test fixture: erlang.mk project with git deps in rebar.config">>,
             files => [<<"ebin/mk_web.app">>, <<"erlang.mk">>, <<"include/mk_web.hrl">>,
                       <<"include/sub/deep.hrl">>, <<"LICENSE">>, <<"Makefile">>,
                       <<"priv/.placeholder">>, <<"priv/static/index.html">>, <<"README.md">>,
                       <<"rebar.config">>, <<"src/mk_web.erl">>],
             name => <<"mk_web">>,
             requirements => #{
                 <<"mk_erl">> => #{<<"app">> => <<"mk_erl">>, <<"optional">> => false, <<"requirement">> => <<"1.0.0">>},
                 <<"erl_ids">> => #{<<"app">> => <<"erl_ids">>, <<"optional">> => false, <<"requirement">> => <<"~> 1.0">>},
                 <<"real_json">> => #{<<"app">> => <<"jsonish">>, <<"optional">> => false, <<"requirement">> => <<"0.9.1">>}
             },
             version => <<"0.3.0">>
           })#{
             licenses => [<<"Apache-2.0">>],
             links => #{
                 <<"GitHub">> => <<"https://example.invalid/mk_web">>,
                 <<"Guide">> => <<"https://example.invalid/mk_web/0.3.0/guide/">>
             }
           }"#,
    );
    assert_eq!(ours, expected);
    // Everything listed is packaged, from the files on disk.
    let mut listed = expected.files.clone();
    listed.sort();
    let mut packed = package.files.clone();
    packed.sort();
    assert_eq!(packed, listed);
    assert_eq!(
        packaged_file(&bytes, "rebar.config"),
        std::fs::read(sources_fixture("mk_web/rebar.config")).unwrap()
    );
}

#[test]
fn the_erlang_mk_fixture_package_is_what_erlang_mk_writes() {
    let package = source::load(&fixture("mk_erl")).unwrap();
    let (ours, _) = packaged(&package);
    // No erlang.mk include, so no erlang.mk file; no DEPS, so an empty requirements map.
    let expected = as_hex_core_writes(
        r#"(#{
             app => <<"mk_erl">>,
             build_tools => [<<"make">>, <<"rebar3">>],
             description => <<"precomp test fixture: Erlang package with a committed ebin/mk_erl.app">>,
             files => [<<"ebin/mk_erl.app">>, <<"Makefile">>, <<"README.md">>, <<"rebar.config">>,
                       <<"src/mk_erl.erl">>, <<"src/mk_erl_fmt.erl">>],
             name => <<"mk_erl">>,
             requirements => #{},
             version => <<"1.0.0">>
           })#{licenses => [<<"Apache-2.0">>]}"#,
    );
    assert_eq!(ours, expected);
}

#[test]
fn a_rebar3_package_that_ships_a_mix_exs_is_published_by_rebar3() {
    // telemetry's case: both tools' files, the Hex metadata in the app.src.
    let dir = sources_fixture("dual_erl");
    assert_eq!(
        source::candidates(&dir),
        [SourceKind::Mix, SourceKind::Rebar3]
    );
    let package = source::load(&dir).unwrap();
    assert_eq!(package.kind, SourceKind::Rebar3);
    let (ours, _) = packaged(&package);

    // erlef/rebar3_hex v7.2.0 src/rebar3_hex_build.erl create_package/2: name, version,
    // requirements (none), then the non-empty optional fields (`parameters` [] is dropped);
    // build_tools [rebar3] when the app.src names none; files from include_files/3: the default
    // list plus include_files, directories included, sorted.
    let expected = as_hex_core_writes(
        r#"#{<<"name">> => <<"dual_erl">>, <<"version">> => <<"0.2.0">>,
             <<"requirements">> => #{},
             <<"app">> => <<"dual_erl">>,
             <<"description">> => <<"precomp test fixture: a rebar3 package that also ships a mix.exs">>,
             <<"files">> => [<<"CHANGELOG.md">>, <<"LICENSE">>, <<"README.md">>, <<"mix.exs">>,
                             <<"rebar.config">>, <<"src">>, <<"src/dual_erl.app.src">>,
                             <<"src/dual_erl.erl">>],
             <<"licenses">> => [<<"Apache-2.0">>],
             <<"links">> => #{<<"GitHub">> => <<"https://example.invalid/dual_erl">>},
             <<"build_tools">> => [<<"rebar3">>]}"#,
    );
    assert_eq!(ours, expected);
}

#[test]
fn a_git_version_asks_for_the_version_and_takes_it() {
    // telemetry_poller 1.0.0's case.
    let dir = sources_fixture("git_vsn");
    let err = source::load(&dir).unwrap_err().to_string();
    for part in [
        "git_vsn.app.src",
        "{vsn, \"git\"}",
        "git describe",
        "{vsn, \"1.2.3\"}",
        "--package-version git_vsn=",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert!(!err.contains("SemVer"), "{err}");

    let options = SourceOptions {
        version: Some("0.5.0".into()),
        ..Default::default()
    };
    let package = source::load_with(&dir, &options).unwrap();
    let (ours, bytes) = packaged(&package);
    // create_package/2 with the version vcs_vsn resolved; update_versions/2: `~>` and the
    // locked version for the bare erl_counter, "~> 1.0" as rebar.config writes erl_ids.
    let expected = as_hex_core_writes(
        r#"#{<<"name">> => <<"git_vsn">>, <<"version">> => <<"0.5.0">>,
             <<"requirements">> => #{
                 <<"erl_counter">> => #{<<"app">> => <<"erl_counter">>, <<"optional">> => false, <<"requirement">> => <<"~>1.0.0">>},
                 <<"erl_ids">> => #{<<"app">> => <<"erl_ids">>, <<"optional">> => false, <<"requirement">> => <<"~> 1.0">>}},
             <<"app">> => <<"git_vsn">>,
             <<"description">> => <<"precomp test fixture: the version comes from git tags">>,
             <<"files">> => [<<"LICENSE">>, <<"README.md">>, <<"rebar.config">>, <<"rebar.lock">>,
                             <<"src">>, <<"src/git_vsn.app.src">>, <<"src/git_vsn.erl">>],
             <<"licenses">> => [<<"Apache-2.0">>],
             <<"links">> => #{<<"GitHub">> => <<"https://example.invalid/git_vsn">>},
             <<"build_tools">> => [<<"rebar3">>]}"#,
    );
    assert_eq!(ours, expected);

    // update_app_src/2: the packaged app.src says the version published; Erlang reads it.
    let app_src = packaged_file(&bytes, "src/git_vsn.app.src");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("git_vsn.app.src");
    std::fs::write(&path, &app_src).unwrap();
    let out = erl_eval(&format!(
        "{{ok, [{{application, git_vsn, Props}}]}} = file:consult({}),
         io:format(\"~s ~w~n\", [proplists:get_value(vsn, Props), length(Props)])",
        erl_string(&path.display().to_string())
    ));
    assert_eq!(out.trim(), "0.5.0 8", "{out}");

    // Given for a project that states its version, a version is refused.
    let err = source::load_with(&fixture("erl_counter"), &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is not the one the app.src says (1.0.0)"),
        "{err}"
    );
    let err = source::load_with(&fixture("plain_ex"), &options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("only be given for a rebar3 project"), "{err}");
}

#[test]
fn versions_rebar3_works_out_when_publishing() {
    let cases = [
        ("{vsn, semver}", Err("{vsn, semver}")),
        ("{vsn, \"semver\"}", Err("{vsn, \"semver\"}")),
        ("{vsn, {git, short}}", Err("{vsn, {git,short}}")),
        ("{vsn, {cmd, \"cat VERSION\"}}", Err("runs that command")),
        ("{vsn, {file, \"VERSION\"}}", Ok("4.5.6")),
        ("{vsn, \"4.5.6\"}", Ok("4.5.6")),
    ];
    for (vsn, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("src/v.app.src", &format!("{{application, v, [{vsn}]}}.\n")),
                ("src/v.erl", "-module(v).\n"),
                ("VERSION", " 4.5.6\n"),
            ],
        );
        match (source::load(dir.path()), expected) {
            (Ok(p), Ok(version)) => assert_eq!(p.metadata.version, version, "{vsn}"),
            (Err(e), Err(part)) => {
                let e = e.to_string();
                assert!(
                    e.contains(part) && e.contains("--package-version"),
                    "{vsn}: {e}"
                );
            }
            (got, want) => panic!("{vsn}: got {got:?}, want {want:?}"),
        }
    }
}

/// A project with a mix.exs and a rebar3 app.src, the Hex configuration where asked.
fn dual_project(mix_package: bool, app_src_licenses: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let package = if mix_package {
        r#", package: [licenses: ["MIT"]]"#
    } else {
        ""
    };
    let licenses = if app_src_licenses {
        r#", {licenses, ["MIT"]}"#
    } else {
        ""
    };
    write(
        dir.path(),
        &[
            (
                "mix.exs",
                &format!(
                    "defmodule Both.MixProject do\n use Mix.Project\n def project, do: [app: :both, version: \"1.0.0\", description: \"both\"{package}]\nend\n"
                ),
            ),
            (
                "src/both.app.src",
                &format!("{{application, both, [{{vsn, \"1.0.0\"}}{licenses}]}}.\n"),
            ),
            ("src/both.erl", "-module(both).\n"),
            ("lib/both.ex", "defmodule Both do\nend\n"),
        ],
    );
    dir
}

#[test]
fn a_project_with_mix_and_rebar3_files_is_read_as_its_configured_publisher() {
    let mix = dual_project(true, false);
    assert_eq!(source::load(mix.path()).unwrap().kind, SourceKind::Mix);
    let rebar3 = dual_project(false, true);
    assert_eq!(
        source::load(rebar3.path()).unwrap().kind,
        SourceKind::Rebar3
    );

    for (dir, says) in [
        (
            dual_project(true, true),
            "more than one configures a Hex package",
        ),
        (dual_project(false, false), "none configures a Hex package"),
    ] {
        let err = source::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, source::SourceError::WhichTool { .. }),
            "{err}"
        );
        let text = err.to_string();
        let name = dir.path().file_name().unwrap().to_str().unwrap();
        assert!(
            text.contains(says) && text.contains(&format!("--build-tool {name}=TOOL")),
            "{text}"
        );
        // The explicit choice settles it either way.
        for tool in [SourceKind::Mix, SourceKind::Rebar3] {
            let options = SourceOptions {
                build_tool: Some(tool),
                ..Default::default()
            };
            assert_eq!(source::load_with(dir.path(), &options).unwrap().kind, tool);
        }
    }

    // A tool whose files are not there cannot be chosen.
    let options = SourceOptions {
        build_tool: Some(SourceKind::ErlangMk),
        ..Default::default()
    };
    let err = source::load_with(mix.path(), &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the build tool given is erlang.mk, but there is no Makefile that includes erlang.mk or sets PROJECT here"),
        "{err}"
    );
}

#[test]
fn erlang_mk_projects_that_cannot_be_published_are_refused_with_what_to_do() {
    let base = |makefile: &str| {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("Makefile", makefile),
                ("ebin/e.app", "{application, e, [{vsn, \"1.0.0\"}]}.\n"),
                ("src/e.erl", "-module(e).\n"),
            ],
        );
        dir
    };
    let header = "PROJECT = e\nPROJECT_VERSION = 1.0.0\n";
    let cases = [
        (
            format!("{header}DEPS = idx\ninclude erlang.mk\n"),
            "no `dep_idx = ...` line",
        ),
        (
            format!("{header}DEPS = g\ndep_g = git https://example.invalid/g master\n"),
            "\"master\" as the requirement on g",
        ),
        (format!("{header}DEPS = c\ndep_c = cp ../c\n"), "hex_req_c"),
        (
            format!("{header}DEPS = w\ndep_w = wget https://example.invalid/w 1.0.0\n"),
            "`wget` is not a fetch method",
        ),
        (
            "PROJECT = e\nPROJECT_VERSION = $(shell git describe)\n".to_string(),
            "$(shell git describe",
        ),
        (
            format!("{header}ifeq ($(shell uname),Linux)\nDEPS = x\nendif\n"),
            "condition precomp cannot evaluate",
        ),
        (
            "PROJECT = e\nPROJECT_VERSION = 2.0.0\n".to_string(),
            "says vsn \"1.0.0\", but the Makefile's PROJECT_VERSION is \"2.0.0\"",
        ),
        (
            "PROJECT = e\ninclude erlang.mk\n".to_string(),
            "PROJECT_VERSION is \"rolling\" (erlang.mk's default: the Makefile sets none)",
        ),
    ];
    for (makefile, expected) in cases {
        let dir = base(&makefile);
        let err = source::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(expected), "{makefile}\n=> {err}");
    }

    // The plugin builds ebin/APP.app first; a source without it says how to get it.
    let dir = base(header);
    std::fs::remove_file(dir.path().join("ebin/e.app")).unwrap();
    let err = source::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("make app"), "{err}");

    // A custom fetch method the Makefile defines publishes its third word, as git does.
    let dir = base(&format!(
        "{header}DEPS = z\ndep_z = mine https://example.invalid/z 3.1.0\ndep_fetch_mine = echo\n"
    ));
    let reqs = source::load(dir.path()).unwrap().metadata.requirements;
    assert_eq!(reqs[0].requirement, "3.1.0");
}
