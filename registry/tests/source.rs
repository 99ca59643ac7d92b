//! Package sources → metadata and file lists, for our fixtures and for unusual projects made
//! up here, read the way `mix hex.build` and rebar3_hex read them.

use std::path::{Path, PathBuf};

use precomp_proto::metadata::PackageMetadata;
use precomp_proto::tarball;
use precomp_registry::source::{self, SourceKind};

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
    assert_eq!(mk.metadata.build_tools, ["rebar3", "make"]);
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
    assert_eq!(listed, package.files);
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
    assert_eq!(
        package.files,
        [
            "NOTES.md",
            "lib/odd.ex",
            "priv/.hidden",
            "priv/static/app.css"
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
            ("Makefile", "all:\n\trebar3 compile\n"),
            (
                "rebar.config",
                r#"{erl_opts, [debug_info]}.
{deps, [bare_dep, {versioned, "1.2.3"}, {renamed, {pkg, real_name}}, {both, "~> 2.0", {pkg, real_both}}]}.
{profiles, [{test, [{deps, [meck]}]}]}.
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
    assert_eq!(
        package.files,
        [
            "LICENSE",
            "include/odd.hrl",
            "priv/data.txt",
            "rebar.config",
            "src/odd_erl.app.src",
            "src/odd_erl.erl"
        ]
    );
    // The Makefile is not in rebar3_hex's default file list, so only rebar3 is guessed.
    assert_eq!(meta.build_tools, ["rebar3"]);
    let reqs: Vec<(&str, &str, &str)> = meta
        .requirements
        .iter()
        .map(|r| (r.name.as_str(), r.app.as_str(), r.requirement.as_str()))
        .collect();
    assert_eq!(
        reqs,
        [
            ("bare_dep", "bare_dep", ">= 0.0.0"),
            ("real_both", "both", "~> 2.0"),
            ("real_name", "renamed", ">= 0.0.0"),
            ("versioned", "versioned", "1.2.3"),
        ]
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
        err.contains("g.app.src") && err.contains("literal version string"),
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
