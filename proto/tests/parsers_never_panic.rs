//! The term, metadata and lock parsers return errors, never panic, on any input: random
//! text, token soup, and random byte mutations of valid documents.

mod term_support;

use precomp_proto::lock::MixLock;
use precomp_proto::metadata::PackageMetadata;
use precomp_proto::term::{parse_elixir_term, parse_erlang_terms, to_erlang_text};
use proptest::prelude::*;
use term_support::arb_term;

fn all_parsers(text: &str) {
    let _ = parse_erlang_terms(text);
    let _ = parse_elixir_term(text);
    let _ = MixLock::parse(text);
    let _ = PackageMetadata::parse(text.as_bytes());
}

/// Pieces of both grammars, so random sequences get past the first token.
const PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "<<",
    ">>",
    "#{",
    "%{",
    "#",
    "%",
    "\"",
    "'",
    "\\",
    "\\x",
    "\\x{",
    "\\u{",
    "\\^",
    "$",
    "?",
    ":",
    "::",
    "=>",
    ":=",
    "|",
    ".",
    ". ",
    ",",
    "-",
    "+",
    "/",
    "utf8",
    "1",
    "0x",
    "16#",
    "36#z",
    "1.5e",
    "e-3",
    "_",
    "a",
    "Foo.Bar",
    "foo:",
    "\"k\":",
    ":\"q\"",
    "nil",
    "true",
    "~c\"",
    "#{x}",
    "\n",
    " ",
    "%c\n",
    "é",
    "\u{0}",
    "999999999999999999999999999999999999999999",
    "1.0e999",
    "<<\"ā\">>",
    "<<1:4>>",
    "[a|",
    "X",
];

fn soup() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(PIECES), 0..40).prop_map(|p| p.concat())
}

#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, u8),
    Delete(usize),
    Replace(usize, u8),
    Truncate(usize),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let byte = prop_oneof![
        any::<u8>(),
        proptest::sample::select(b"{}[]<>#%\"'\\$:=|.,-/ \n0aZ".to_vec()),
    ];
    let m = prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Replace(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
    ];
    proptest::collection::vec(m, 1..8)
}

fn mutate(doc: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut d = doc.to_vec();
    for m in ms {
        let len = d.len();
        match *m {
            Mutation::Insert(i, b) => d.insert(i % (len + 1), b),
            Mutation::Delete(i) if len > 0 => {
                d.remove(i % len);
            }
            Mutation::Replace(i, b) if len > 0 => d[i % len] = b,
            Mutation::Truncate(i) => d.truncate(i % (len + 1)),
            _ => {}
        }
    }
    d
}

const METADATA: &str = r#"{<<"app">>,<<"plug_cowboy">>}.
{<<"build_tools">>,[<<"mix">>]}.
{<<"description">>,<<"A Plug adapter for Cowboy \"é\""/utf8>>}.
{<<"files">>,[<<"lib">>,<<"mix.exs">>]}.
{<<"links">>,#{<<"GitHub">> => <<"https://github.com/elixir-plug/plug_cowboy">>}}.
{<<"name">>,<<"plug_cowboy">>}.
{<<"extra">>,[{<<"n">>,-16#ff},{<<"c">>,$a},{<<"f">>,1.5e3},{<<"b">>,<<1,2:16,"x"/utf8>>},[a|b]]}.
{<<"requirements">>,
 [[{<<"app">>,<<"plug">>},{<<"name">>,<<"plug">>},{<<"optional">>,false},
   {<<"repository">>,<<"hexpm">>},{<<"requirement">>,<<"~> 1.14">>}]]}.
{<<"version">>,<<"2.6.1">>}.
"#;

const LOCK: &str = r#"%{
  :"x-y" => {:path, "../x", [in_umbrella: true]}, # comment
  "cowboy": {:hex, :cowboy, "2.10.0", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", [:make, :rebar3], [{:cowlib, "2.12.1", [hex: :cowlib, repo: "hexpm", optional: false]}, {:ranch, nil, [hex: :ranch, repo: "hexpm:acme", optional: true]}], "hexpm", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"},
  "my-dep": {:git, "https://x/y.git", "abc", [branch: "main", sparse: "a\u00e9\x41"]},
  old: {:hex, :old, "1.0.0", "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc", [:mix], []},
  z: {:weird, [1_000, 0x1F, ?a, -1.5e-3, 'cl', ~c"cl", <<1, 2>>, [a: 1], {1, b: 2}, %{"k" => Hex.SCM}, [1 | 2]]},
}
"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_text(text in ".{0,200}") {
        all_parsers(&text);
    }

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = PackageMetadata::parse(&bytes);
        all_parsers(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn token_soup(text in soup()) {
        all_parsers(&text);
    }

    #[test]
    fn mutated_metadata(ms in mutations()) {
        let doc = mutate(METADATA.as_bytes(), &ms);
        let _ = PackageMetadata::parse(&doc);
        all_parsers(&String::from_utf8_lossy(&doc));
    }

    #[test]
    fn mutated_lock(ms in mutations()) {
        let doc = mutate(LOCK.as_bytes(), &ms);
        all_parsers(&String::from_utf8_lossy(&doc));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn mutated_printed_terms(term in arb_term(), ms in mutations()) {
        let text = format!("{}.\n", to_erlang_text(&term));
        let doc = mutate(text.as_bytes(), &ms);
        all_parsers(&String::from_utf8_lossy(&doc));
    }
}

#[test]
fn the_seed_documents_are_valid() {
    PackageMetadata::parse(METADATA.as_bytes()).unwrap();
    let lock = MixLock::parse(LOCK).unwrap();
    assert_eq!(lock.hex().count(), 2);
    assert_eq!(lock.not_from_hex().count(), 3);
}
