//! `metadata.config`: both requirement shapes, defaults, errors, and hex_core as the oracle in
//! both directions.

use precomp_proto::metadata::{
    guess_build_tools, MetadataError, PackageMetadata, Requirement, MAX_METADATA_SIZE,
};
use precomp_proto::term::Term;
use precomp_testkit::{erl_eval, erl_string};
use proptest::prelude::*;

mod term_support;

fn req(name: &str, app: &str, requirement: &str, optional: bool, repository: &str) -> Requirement {
    Requirement {
        name: name.into(),
        app: app.into(),
        requirement: requirement.into(),
        optional,
        repository: repository.into(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn parse(text: &str) -> PackageMetadata {
    PackageMetadata::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// As Mix (through hex_core's `io_lib_pretty`) writes it: keys sorted, requirements a list
/// of proplists.
const MIX_WRITTEN: &str = r#"{<<"app">>,<<"plug_cowboy">>}.
{<<"build_tools">>,[<<"mix">>]}.
{<<"description">>,<<"A Plug adapter for Cowboy">>}.
{<<"elixir">>,<<"~> 1.10">>}.
{<<"files">>,
 [<<"lib">>,<<"lib/plug">>,<<"lib/plug/cowboy.ex">>,<<"mix.exs">>,
  <<"README.md">>,<<"LICENSE">>,<<"CHANGELOG.md">>]}.
{<<"licenses">>,[<<"Apache-2.0">>]}.
{<<"links">>,[{<<"GitHub">>,<<"https://github.com/elixir-plug/plug_cowboy">>}]}.
{<<"name">>,<<"plug_cowboy">>}.
{<<"requirements">>,
 [[{<<"app">>,<<"plug">>},
   {<<"name">>,<<"plug">>},
   {<<"optional">>,false},
   {<<"repository">>,<<"hexpm">>},
   {<<"requirement">>,<<"~> 1.14">>}],
  [{<<"app">>,<<"cowboy">>},
   {<<"name">>,<<"cowboy">>},
   {<<"optional">>,false},
   {<<"repository">>,<<"hexpm">>},
   {<<"requirement">>,<<"~> 2.7">>}],
  [{<<"app">>,<<"cowboy_telemetry">>},
   {<<"name">>,<<"cowboy_telemetry">>},
   {<<"optional">>,true},
   {<<"repository">>,<<"hexpm">>},
   {<<"requirement">>,<<"~> 0.3">>}]]}.
{<<"version">>,<<"2.6.1">>}.
"#;

#[test]
fn reads_mix_shape() {
    let m = parse(MIX_WRITTEN);
    assert_eq!(m.name, "plug_cowboy");
    assert_eq!(m.version, "2.6.1");
    assert_eq!(m.app, "plug_cowboy");
    assert_eq!(m.description, "A Plug adapter for Cowboy");
    assert_eq!(m.elixir.as_deref(), Some("~> 1.10"));
    assert_eq!(m.build_tools, strings(&["mix"]));
    assert_eq!(m.licenses, strings(&["Apache-2.0"]));
    assert_eq!(m.files.len(), 7);
    assert_eq!(
        m.links,
        vec![(
            "GitHub".to_string(),
            "https://github.com/elixir-plug/plug_cowboy".to_string()
        )]
    );
    assert_eq!(
        m.requirements,
        vec![
            req("plug", "plug", "~> 1.14", false, "hexpm"),
            req("cowboy", "cowboy", "~> 2.7", false, "hexpm"),
            req(
                "cowboy_telemetry",
                "cowboy_telemetry",
                "~> 0.3",
                true,
                "hexpm"
            ),
        ]
    );
    assert!(m.other.is_empty());
}

#[test]
fn reads_spec_shape() {
    let m = parse(
        r#"{<<"name">>, <<"cowboy">>}.
{<<"version">>, <<"2.10.0">>}.
{<<"requirements">>, [
  {<<"cowlib">>, [{<<"app">>, <<"cowlib">>}, {<<"optional">>, false}, {<<"requirement">>, <<"2.12.1">>}, {<<"repository">>, <<"hexpm">>}]},
  {<<"private">>, [{<<"requirement">>, <<">= 1.0.0 and < 2.0.0">>}, {<<"repository">>, <<"hexpm:acme">>}, {<<"optional">>, true}]},
  {<<"ranch_pkg">>, [{<<"app">>, <<"ranch">>}, {<<"requirement">>, <<"1.8.0">>}]}
]}.
"#,
    );
    assert_eq!(
        m.requirements,
        vec![
            req("cowlib", "cowlib", "2.12.1", false, "hexpm"),
            req(
                "private",
                "private",
                ">= 1.0.0 and < 2.0.0",
                true,
                "hexpm:acme"
            ),
            req("ranch_pkg", "ranch", "1.8.0", false, "hexpm"),
        ]
    );
}

#[test]
fn reads_maps() {
    let m = parse(
        r#"{<<"name">>,<<"x">>}.
{<<"version">>,<<"1.0.0">>}.
{<<"links">>, #{<<"Docs">> => <<"https://d">>, <<"Source">> => <<"https://s">>}}.
{<<"requirements">>, #{<<"a">> => #{<<"requirement">> => <<"~> 1.0">>, <<"optional">> => true}}}.
"#,
    );
    assert_eq!(m.links.len(), 2);
    assert_eq!(m.requirements, vec![req("a", "a", "~> 1.0", true, "hexpm")]);
    let m = parse(
        r#"{<<"name">>,<<"x">>}.
{<<"version">>,<<"1.0.0">>}.
{<<"requirements">>, [#{<<"name">> => <<"b">>, <<"requirement">> => <<"~> 2.0">>, <<"app">> => <<"bee">>}]}.
"#,
    );
    assert_eq!(
        m.requirements,
        vec![req("b", "bee", "~> 2.0", false, "hexpm")]
    );
    // An empty list of either shape, and the empty string Erlang would print for it.
    for empty in ["[]", "#{}", "\"\""] {
        let m = parse(&format!(
            "{{<<\"name\">>,<<\"x\">>}}.\n{{<<\"version\">>,<<\"1\">>}}.\n{{<<\"requirements\">>,{empty}}}.\n"
        ));
        assert!(m.requirements.is_empty(), "{empty}");
    }
}

#[test]
fn minimal_file_gets_defaults() {
    let m = parse("{<<\"name\">>,<<\"tiny\">>}.\n{<<\"version\">>,<<\"0.1.0\">>}.\n");
    assert_eq!(m.app, "tiny");
    assert_eq!(m.description, "");
    assert!(m.files.is_empty() && m.licenses.is_empty() && m.links.is_empty());
    assert!(m.requirements.is_empty() && m.build_tools.is_empty());
    assert_eq!(m.elixir, None);
}

#[test]
fn guesses_build_tools_like_hex_core() {
    let m = parse(
        r#"{<<"name">>,<<"old">>}.
{<<"version">>,<<"1.0.0">>}.
{<<"files">>,[<<"src/old.erl">>,<<"rebar.config">>,<<"rebar">>,<<"Makefile">>,<<"Makefile.win">>,<<"sub/mix.exs">>,<<"./mix.exs">>]}.
"#,
    );
    assert_eq!(m.build_tools, strings(&["make", "rebar3"]));
    assert_eq!(
        guess_build_tools(&strings(&["mix.exs", "lib/a.ex"])),
        strings(&["mix"])
    );
    assert!(guess_build_tools(&[]).is_empty());
    // A non-list build_tools is guessed over, as hex_core does.
    let m = parse(
        "{<<\"name\">>,<<\"x\">>}.\n{<<\"version\">>,<<\"1\">>}.\n{<<\"build_tools\">>,nil}.\n{<<\"files\">>,[<<\"mix.exs\">>]}.\n",
    );
    assert_eq!(m.build_tools, strings(&["mix"]));
}

#[test]
fn keeps_other_keys_in_order() {
    let m = parse(
        r#"{<<"name">>,<<"x">>}.
{<<"secret_scan">>,false}.
{<<"version">>,<<"1.0.0">>}.
{<<"maintainers">>,[<<"Jane Doe">>]}.
{<<"extra">>,[{<<"foo">>,<<"bar">>}]}.
{<<"secret_scan">>,true}.
"#,
    );
    // A repeated key keeps its first place and its last value.
    let keys: Vec<&str> = m.other.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["secret_scan", "maintainers", "extra"]);
    assert_eq!(m.other[0].1, Term::Atom("true".into()));
}

/// Close to the size limit, with every line a distinct or repeated key: must stay fast.
#[test]
fn large_files_parse_in_linear_time() {
    let mut text = String::from("{<<\"name\">>,<<\"x\">>}.\n{<<\"version\">>,<<\"1\">>}.\n");
    let mut i = 0;
    while text.len() < MAX_METADATA_SIZE - 64 {
        text.push_str(&format!("{{<<\"k{}\">>,[{i}]}}.\n", i % 40_000));
        i += 1;
    }
    let start = std::time::Instant::now();
    let m = PackageMetadata::parse(text.as_bytes()).unwrap();
    assert_eq!(m.other.len(), 40_000);
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn non_utf8_is_read_as_latin1() {
    let mut bytes =
        b"{<<\"name\">>,<<\"x\">>}.\n{<<\"version\">>,<<\"1\">>}.\n{<<\"description\">>,\"caf"
            .to_vec();
    bytes.extend_from_slice(&[0xE9, b'"', b'}', b'.', b'\n']);
    let m = PackageMetadata::parse(&bytes).unwrap();
    assert_eq!(m.description, "café");
}

#[test]
fn errors_name_the_problem() {
    let err = |text: &str| {
        PackageMetadata::parse(text.as_bytes())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("{<<\"version\">>,<<\"1\">>}.\n"),
        "metadata.config: required key \"name\" is missing"
    );
    assert_eq!(
        err("{<<\"name\">>,<<\"x\">>}.\n"),
        "metadata.config: required key \"version\" is missing"
    );
    assert_eq!(
        err("{<<\"name\">>,<<\"x\">>}.\nfoo.\n"),
        "metadata.config: term 2 is not a {key, value} pair with a binary key, found foo"
    );
    assert_eq!(
        err("{<<\"name\">>,<<\"x\">>}.\n{1,2}.\n"),
        "metadata.config: term 2 is not a {key, value} pair with a binary key, found {1,2}"
    );
    assert_eq!(
        err("{<<\"name\">>,[1]}.\n"),
        "metadata.config: name: expected a UTF-8 string, found [1]"
    );
    assert_eq!(
        err("{<<\"name\">>,<<\"x\">>}.\n{<<\"version\">>,<<>>}.\n"),
        "metadata.config: version: must not be empty"
    );
    assert_eq!(
        err("{<<\"name\">>,<<\"x\">>}.\n{<<\"version\">>,<<\"1\">>}.\n{<<\"files\">>,[<<\"a\">>, 3]}.\n"),
        "metadata.config: files[1]: expected a UTF-8 string, found 3"
    );
    assert_eq!(
        err("{<<\"name\">>,<<\"x\">>}.\n{<<\"version\">>,<<\"1\">>}.\n{<<\"requirements\">>,[{<<\"a\">>,[{<<\"optional\">>,yes}]}]}.\n"),
        "metadata.config: requirements.a.requirement: is missing"
    );
    assert_eq!(
        err("{<<\"name\">>,<<\"x\">>}.\n{<<\"version\">>,<<\"1\">>}.\n{<<\"requirements\">>,[{<<\"a\">>,[{<<\"requirement\">>,<<\"1\">>},{<<\"optional\">>,yes}]}]}.\n"),
        "metadata.config: requirements.a.optional: expected true or false, found yes"
    );
    assert_eq!(
        err("{<<\"name\">>,<<\"x\">>}.\n{<<\"version\">>,<<\"1\">>}.\n{<<\"requirements\">>,[[{<<\"requirement\">>,<<\"1\">>}]]}.\n"),
        "metadata.config: requirements[0]: has no \"name\" key"
    );
    assert_eq!(
        err("{<<\"name\">>,<<\"x\">>}.\n{<<\"version\">>,<<\"1\">>}.\n{<<\"links\">>,[<<\"a\">>]}.\n"),
        "metadata.config: links[0]: expected a {name, url} pair, found <<\"a\">>"
    );
    assert_eq!(
        err("{<<\"name\">>, <<\"x\">>\n"),
        "metadata.config: line 2, column 1: unexpected end of input, expected ',' or '}' in a tuple"
    );
    let big = vec![b' '; MAX_METADATA_SIZE + 1];
    assert_eq!(
        PackageMetadata::parse(&big).unwrap_err(),
        MetadataError::TooLarge {
            size: MAX_METADATA_SIZE + 1,
            max: MAX_METADATA_SIZE
        }
    );
}

fn sample() -> PackageMetadata {
    PackageMetadata {
        name: "my_pkg".into(),
        version: "1.2.3-rc.1+build".into(),
        app: "my_app".into(),
        description: "Grüße \"quoted\" \\ back\nslash\ttab ✓".into(),
        files: strings(&["lib/my_pkg.ex", "mix.exs", "priv/é.txt"]),
        licenses: strings(&["Apache-2.0", "MIT"]),
        links: vec![("GitHub".into(), "https://github.com/acme/my_pkg".into())],
        requirements: vec![
            req("zzz", "zzz", "~> 1.0", false, "hexpm"),
            req("aaa", "aaa_app", ">= 0.0.0", true, "hexpm:acme"),
        ],
        build_tools: strings(&["mix"]),
        elixir: Some("~> 1.14".into()),
        other: vec![
            (
                "maintainers".into(),
                Term::List(vec![Term::Binary(b"Jane".to_vec())]),
            ),
            (
                "extra".into(),
                Term::List(vec![Term::Tuple(vec![
                    Term::Binary(b"k".to_vec()),
                    Term::Binary(vec![0xff, 0x00]),
                ])]),
            ),
        ],
    }
}

#[test]
fn to_config_round_trips_and_is_deterministic() {
    let m = sample();
    let text = m.to_config();
    assert_eq!(text, m.to_config());
    let back = PackageMetadata::parse(&text).unwrap();
    let mut expected = m.clone();
    expected.requirements.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(back, expected);
    let text = String::from_utf8(text).unwrap();
    let first_lines: Vec<&str> = text.lines().take(4).collect();
    assert_eq!(
        first_lines,
        [
            r#"{<<"name">>,<<"my_pkg">>}."#,
            r#"{<<"version">>,<<"1.2.3-rc.1+build">>}."#,
            r#"{<<"app">>,<<"my_app">>}."#,
            r#"{<<"description">>,<<"Grüße \"quoted\" \\ back\nslash\ttab ✓"/utf8>>}."#,
        ]
    );
    assert!(text.contains(
        r#"{<<"requirements">>,[[{<<"name">>,<<"aaa">>},{<<"app">>,<<"aaa_app">>},{<<"optional">>,true},{<<"requirement">>,<<">= 0.0.0">>},{<<"repository">>,<<"hexpm:acme">>}],[{<<"name">>,<<"zzz">>},"#
    ));
    assert!(text.ends_with("{<<\"extra\">>,[{<<\"k\">>,<<255,0>>}]}.\n"));
}

// ---------------------------------------------------------------------------------------------
// Oracle: hex_core (rebar3's vendored r3_hex_tarball)

/// Has hex_core build a tarball from `meta` (an Erlang map expression), writes the tarball
/// and its `metadata.config` into `dir`, and returns the latter.
fn hex_core_create(dir: &std::path::Path, meta: &str) -> Vec<u8> {
    let tarball = dir.join("orig.tar");
    let config = dir.join("orig.config");
    erl_eval(&format!(
        "Meta = {meta},
         {{ok, #{{tarball := T}}}} = r3_hex_tarball:create(Meta, [{{\"lib/x.ex\", <<\"x\">>}}]),
         ok = file:write_file({tarball}, T),
         {{ok, Members}} = erl_tar:extract({{binary, T}}, [memory]),
         {{_, M}} = lists:keyfind(\"metadata.config\", 1, Members),
         ok = file:write_file({config}, M)",
        tarball = erl_string(&tarball.display().to_string()),
        config = erl_string(&config.display().to_string()),
    ));
    std::fs::read(config).unwrap()
}

/// Puts `config` into a copy of the tarball in `dir` (fixing the checksum), has hex_core
/// unpack both, and tells whether hex_core reads the same metadata from each.
fn hex_core_reads_same(dir: &std::path::Path, config: &[u8]) -> bool {
    let ours = dir.join("ours.config");
    std::fs::write(&ours, config).unwrap();
    let p = |name: &str| erl_string(&dir.join(name).display().to_string());
    let out = erl_eval(&format!(
        "{{ok, T1}} = file:read_file({orig}),
         {{ok, M2}} = file:read_file({ours}),
         {{ok, Members}} = erl_tar:extract({{binary, T1}}, [memory]),
         {{_, Contents}} = lists:keyfind(\"contents.tar.gz\", 1, Members),
         Checksum = r3_hex_tarball:format_checksum(crypto:hash(sha256, <<\"3\", M2/binary, Contents/binary>>)),
         {{ok, Tar}} = erl_tar:open({out}, [write]),
         ok = erl_tar:add(Tar, <<\"3\">>, \"VERSION\", []),
         ok = erl_tar:add(Tar, Checksum, \"CHECKSUM\", []),
         ok = erl_tar:add(Tar, M2, \"metadata.config\", []),
         ok = erl_tar:add(Tar, Contents, \"contents.tar.gz\", []),
         ok = erl_tar:close(Tar),
         {{ok, T2}} = file:read_file({out}),
         {{ok, #{{metadata := Md1}}}} = r3_hex_tarball:unpack(T1, memory),
         {{ok, #{{metadata := Md2}}}} = r3_hex_tarball:unpack(T2, memory),
         io:format(\"~w~n\", [Md1 =:= Md2]),
         io:format(\"~w~n~w~n\", [Md1, Md2])",
        orig = p("orig.tar"),
        ours = p("ours.config"),
        out = p("ours.tar"),
    ));
    let first = out.lines().next().unwrap_or_default();
    assert!(first == "true" || first == "false", "{out}");
    if first != "true" {
        eprintln!("hex_core read different metadata:\n{out}");
    }
    first == "true"
}

/// Shape (a): requirements given as a map keyed by name, which hex_core writes as the
/// specification's kvlist.
const META_SPEC_SHAPE: &str = r#"#{<<"name">> => <<"my_pkg">>, <<"version">> => <<"1.2.3">>, <<"app">> => <<"my_app">>,
  <<"description">> => <<"Gr\x{fc}\x{df}e \x{395}\x{3bb}\x{3bb}\x{3b7}\x{3bd}\x{3b9}\x{3ba}\x{3ac}: a long description that makes io_lib_pretty wrap, \"quoted\"\n"/utf8>>,
  <<"files">> => [<<"lib/my_pkg.ex">>, <<"mix.exs">>, <<"README.md">>],
  <<"licenses">> => [<<"Apache-2.0">>],
  <<"links">> => #{<<"GitHub">> => <<"https://github.com/acme/my_pkg">>},
  <<"requirements">> => #{
     <<"cowlib">> => #{<<"app">> => <<"cowlib">>, <<"optional">> => false, <<"requirement">> => <<"~> 2.12">>, <<"repository">> => <<"hexpm">>},
     <<"private_dep">> => #{<<"app">> => <<"private">>, <<"optional">> => true, <<"requirement">> => <<">= 1.0.0 and < 2.0.0">>, <<"repository">> => <<"hexpm:acme">>}},
  <<"build_tools">> => [<<"mix">>],
  <<"elixir">> => <<"~> 1.14">>,
  <<"extra">> => #{<<"foo">> => [1, 2], <<"bar">> => <<"baz">>},
  <<"maintainers">> => [<<"Jane Doe">>]}"#;

/// Shape (b): what Mix hands hex_core, a list of maps with atom keys, which hex_core writes
/// as a list of proplists. No build_tools: hex_core and we must guess them.
const META_MIX_SHAPE: &str = r#"#{name => <<"old_pkg">>, version => <<"0.9.0">>, app => <<"old_pkg">>,
  description => <<"An old rebar3 package">>,
  files => [<<"src/old_pkg.erl">>, <<"rebar.config">>, <<"Makefile">>, <<"src/Makefile">>],
  licenses => [<<"MIT">>],
  links => [{<<"Home">>, <<"https://example.com">>}],
  requirements => [
    #{name => <<"ranch">>, app => <<"ranch">>, optional => false, requirement => <<"~> 1.8">>, repository => <<"hexpm">>},
    #{name => <<"jsx_pkg">>, app => <<"jsx">>, optional => true, requirement => <<"3.1.0">>, repository => <<"hexpm">>}]}"#;

#[test]
fn hex_core_writes_spec_shape_we_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = hex_core_create(dir.path(), META_SPEC_SHAPE);
    let text = String::from_utf8_lossy(&config).into_owned();
    assert!(
        text.contains("{<<\"cowlib\">>,"),
        "expected the kvlist shape:\n{text}"
    );
    let m = PackageMetadata::parse(&config).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(m.name, "my_pkg");
    assert_eq!(m.version, "1.2.3");
    assert_eq!(m.app, "my_app");
    assert_eq!(
        m.description,
        "Grüße Ελληνικά: a long description that makes io_lib_pretty wrap, \"quoted\"\n"
    );
    assert_eq!(m.files, strings(&["lib/my_pkg.ex", "mix.exs", "README.md"]));
    assert_eq!(m.licenses, strings(&["Apache-2.0"]));
    assert_eq!(
        m.links,
        vec![("GitHub".into(), "https://github.com/acme/my_pkg".into())]
    );
    assert_eq!(m.build_tools, strings(&["mix"]));
    assert_eq!(m.elixir.as_deref(), Some("~> 1.14"));
    let mut reqs = m.requirements.clone();
    reqs.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        reqs,
        vec![
            req("cowlib", "cowlib", "~> 2.12", false, "hexpm"),
            req(
                "private_dep",
                "private",
                ">= 1.0.0 and < 2.0.0",
                true,
                "hexpm:acme"
            ),
        ]
    );
    let other: Vec<&str> = m.other.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(other, ["extra", "maintainers"]);

    assert!(hex_core_reads_same(dir.path(), &m.to_config()), "{text}");
}

#[test]
fn hex_core_writes_mix_shape_we_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = hex_core_create(dir.path(), META_MIX_SHAPE);
    let text = String::from_utf8_lossy(&config).into_owned();
    assert!(
        text.contains("[[{<<\"app\">>"),
        "expected the list-of-proplists shape:\n{text}"
    );
    assert!(!text.contains("build_tools"));
    let m = PackageMetadata::parse(&config).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(m.name, "old_pkg");
    assert_eq!(m.build_tools, strings(&["make", "rebar3"]));
    assert_eq!(m.links, vec![("Home".into(), "https://example.com".into())]);
    assert_eq!(
        m.requirements,
        vec![
            req("ranch", "ranch", "~> 1.8", false, "hexpm"),
            req("jsx_pkg", "jsx", "3.1.0", true, "hexpm"),
        ]
    );
    assert!(m.other.is_empty());

    assert!(hex_core_reads_same(dir.path(), &m.to_config()), "{text}");
}

/// hex_core reads `to_config` output for metadata written from scratch, with escapes,
/// non-ASCII text, a non-UTF-8 binary and both link and requirement lists.
#[test]
fn hex_core_reads_our_config() {
    let dir = tempfile::tempdir().unwrap();
    let m = sample();
    let ours = dir.path().join("ours.config");
    std::fs::write(&ours, m.to_config()).unwrap();
    let out = erl_eval(&format!(
        "{{ok, B}} = file:read_file({ours}),
         {{ok, Toks, _}} = r3_safe_erl_term:string(unicode:characters_to_list(B)),
         M = maps:from_list(r3_safe_erl_term:terms(Toks)),
         io:format(\"~w~n\", [[
           maps:get(<<\"name\">>, M) =:= <<\"my_pkg\">>,
           maps:get(<<\"description\">>, M) =:= <<\"Gr\\x{{fc}}\\x{{df}}e \\\"quoted\\\" \\\\ back\\nslash\\ttab \\x{{2713}}\"/utf8>>,
           maps:get(<<\"files\">>, M) =:= [<<\"lib/my_pkg.ex\">>, <<\"mix.exs\">>, <<\"priv/\\x{{e9}}.txt\"/utf8>>],
           maps:get(<<\"extra\">>, M) =:= [{{<<\"k\">>, <<255, 0>>}}],
           lists:nth(1, maps:get(<<\"requirements\">>, M)) =:= [{{<<\"name\">>,<<\"aaa\">>}},{{<<\"app\">>,<<\"aaa_app\">>}},{{<<\"optional\">>,true}},{{<<\"requirement\">>,<<\">= 0.0.0\">>}},{{<<\"repository\">>,<<\"hexpm:acme\">>}}]
         ]])",
        ours = erl_string(&ours.display().to_string()),
    ));
    assert_eq!(out.trim(), "[true,true,true,true,true]");
}

fn arb_requirement() -> impl Strategy<Value = Requirement> {
    (".{0,12}", ".{0,12}", ".{0,12}", any::<bool>(), ".{0,12}").prop_map(
        |(name, app, requirement, optional, repository)| Requirement {
            name,
            app,
            requirement,
            optional,
            repository,
        },
    )
}

fn arb_metadata() -> impl Strategy<Value = PackageMetadata> {
    let strings = || proptest::collection::vec(".{0,16}", 0..4);
    (
        (".{1,16}", ".{1,16}", ".{0,16}", ".{0,40}"),
        (
            strings(),
            strings(),
            proptest::collection::vec((".{0,8}", ".{0,16}"), 0..3),
        ),
        (
            proptest::collection::vec(arb_requirement(), 0..4),
            strings(),
            proptest::option::of(".{0,8}"),
            proptest::collection::btree_map(
                prop_oneof!["[a-z_]{1,10}", ".{0,10}"],
                term_support::arb_term(),
                0..3,
            ),
        ),
    )
        .prop_map(
            |(
                (name, version, app, description),
                (files, licenses, links),
                (requirements, build_tools, elixir, other),
            )| {
                PackageMetadata {
                    name,
                    version,
                    app,
                    description,
                    files,
                    licenses,
                    links,
                    requirements,
                    build_tools,
                    elixir,
                    other: other
                        .into_iter()
                        .filter(|(k, _)| {
                            ![
                                "name",
                                "version",
                                "app",
                                "description",
                                "files",
                                "licenses",
                                "links",
                                "requirements",
                                "build_tools",
                                "elixir",
                            ]
                            .contains(&k.as_str())
                        })
                        .collect(),
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn to_config_then_parse_is_identity(m in arb_metadata()) {
        let config = m.to_config();
        let back = PackageMetadata::parse(&config)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{}", String::from_utf8_lossy(&config))))?;
        let mut expected = m;
        expected.requirements.sort_by(|a, b| a.name.cmp(&b.name));
        prop_assert_eq!(back, expected);
    }
}
