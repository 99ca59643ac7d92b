//! Erlang and Elixir term text: hand-written cases, and real `erl`/`elixir` as oracles in both
//! directions.

mod term_support;

use precomp_proto::term::{
    parse_elixir_term, parse_erlang_terms, to_elixir_text, to_erlang_text, Position, Term,
    TermError,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use std::process::Command;
use term_support::{arb_term, erl_ascii_string, normalize};

fn atom(s: &str) -> Term {
    Term::Atom(s.into())
}
fn bin(s: &str) -> Term {
    Term::Binary(s.as_bytes().to_vec())
}
fn chars(s: &str) -> Term {
    Term::Charlist(s.into())
}
fn int(i: i128) -> Term {
    Term::Integer(i)
}
fn tuple(items: Vec<Term>) -> Term {
    Term::Tuple(items)
}
fn list(items: Vec<Term>) -> Term {
    Term::List(items)
}
fn one(text: &str) -> Term {
    let mut terms = parse_erlang_terms(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!(terms.len(), 1, "{text:?}");
    terms.remove(0)
}
fn ex(text: &str) -> Term {
    parse_elixir_term(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Erlang parser

#[test]
fn erlang_atoms() {
    assert_eq!(one("foo."), atom("foo"));
    assert_eq!(one("foo_Bar@1."), atom("foo_Bar@1"));
    assert_eq!(one("'hello world'."), atom("hello world"));
    assert_eq!(one(r"'it\'s\n'."), atom("it's\n"));
    assert_eq!(one("''."), atom(""));
    assert_eq!(one("'Caps'."), atom("Caps"));
    assert_eq!(one("héllo."), atom("héllo"));
    assert_eq!(one(r"'\x{105}\x{119}'."), atom("ąę"));
    assert_eq!(one("true."), atom("true"));
}

#[test]
fn erlang_strings_and_escapes() {
    assert_eq!(one(r#""a\nb\tc\"d\\e\'f"."#), chars("a\nb\tc\"d\\e'f"));
    assert_eq!(
        one(r#""\x41\x{1F600}\101\7\08"."#),
        chars("A😀A\u{7}\u{0}8")
    );
    assert_eq!(
        one(r#""\^A\^z\e\s\d\b\f\v\r"."#),
        chars("\u{1}\u{1a}\u{1b} \u{7f}\u{8}\u{c}\u{b}\r")
    );
    assert_eq!(one(r#""\q"."#), chars("q"));
    assert_eq!(
        one(r#""adjacent" " strings"
        "concatenate"."#),
        chars("adjacent stringsconcatenate")
    );
    assert_eq!(one("\"\"."), chars(""));
    assert_eq!(one("\"é😀\"."), chars("é😀"));
    // Not Unicode scalar values: a list of integers, as Erlang holds it.
    assert_eq!(one(r#""a\x{D800}"."#), list(vec![int(97), int(0xD800)]));
}

#[test]
fn erlang_binaries() {
    assert_eq!(one(r#"<<"abc">>."#), bin("abc"));
    assert_eq!(one(r#"<<"é"/utf8>>."#), bin("é"));
    assert_eq!(one(r#"<<"\x{e9}"/utf8>>."#), bin("é"));
    assert_eq!(one(r#"<<"é">>."#), Term::Binary(vec![0xE9]));
    assert_eq!(one("<<1,2,3>>."), Term::Binary(vec![1, 2, 3]));
    assert_eq!(one("<<>>."), Term::Binary(vec![]));
    assert_eq!(one("<< >>."), Term::Binary(vec![]));
    assert_eq!(one(r#"<<"a", "b">>."#), bin("ab"));
    assert_eq!(
        one(r#"<<"a"
        "b", $c, 100>>."#),
        bin("abcd")
    );
    assert_eq!(one("<<256, -1>>."), Term::Binary(vec![0, 255]));
    assert_eq!(
        one("<<1:16, 258:16/little, -2:32>>."),
        Term::Binary(vec![0, 1, 2, 1, 255, 255, 255, 254])
    );
    assert_eq!(
        one(r#"<<"é"/utf16, $a/utf32-little>>."#),
        Term::Binary(vec![0, 0xE9, 97, 0, 0, 0])
    );
    assert!(matches!(
        parse_erlang_terms(r#"<<"ā">>."#),
        Err(TermError::InvalidBinary { .. })
    ));
    assert!(parse_erlang_terms("<<1:4>>.").is_err());
    assert!(parse_erlang_terms("<<1.5/float>>.").is_err());
    assert!(parse_erlang_terms("<<X>>.").is_err());
}

#[test]
fn erlang_numbers() {
    assert_eq!(one("0."), int(0));
    assert_eq!(one("-42."), int(-42));
    assert_eq!(one("+7."), int(7));
    assert_eq!(one("- 7."), int(-7));
    assert_eq!(one("1_000_000."), int(1_000_000));
    assert_eq!(one("16#FF."), int(255));
    assert_eq!(one("16#ff."), int(255));
    assert_eq!(one("2#1010."), int(10));
    assert_eq!(one("36#Z."), int(35));
    assert_eq!(one("-16#10."), int(-16));
    assert_eq!(one("$a."), int(97));
    assert_eq!(one("$\\n."), int(10));
    assert_eq!(one("$ ."), int(32));
    assert_eq!(one("$é."), int(233));
    assert_eq!(one("1.5e3."), Term::Float(1500.0));
    assert_eq!(one("1.5E-3."), Term::Float(0.0015));
    assert_eq!(one("-0.5."), Term::Float(-0.5));
    assert_eq!(one("2.0e+2."), Term::Float(200.0));
    assert_eq!(
        one("170141183460469231731687303715884105727."),
        int(i128::MAX)
    );
    assert_eq!(
        one("-170141183460469231731687303715884105728."),
        int(i128::MIN)
    );
    for big in [
        "170141183460469231731687303715884105728.",
        "99999999999999999999999999999999999999999999999.",
        "16#FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF.",
    ] {
        assert!(
            matches!(
                parse_erlang_terms(big),
                Err(TermError::IntegerOverflow { .. })
            ),
            "{big}"
        );
    }
    assert!(matches!(
        parse_erlang_terms("1.0e400."),
        Err(TermError::InvalidNumber { .. })
    ));
    assert!(parse_erlang_terms("37#1.").is_err());
    assert!(parse_erlang_terms("2#102.").is_err());
}

#[test]
fn erlang_containers() {
    assert_eq!(one("{}."), tuple(vec![]));
    assert_eq!(
        one("{a, {b}, []}."),
        tuple(vec![atom("a"), tuple(vec![atom("b")]), list(vec![])])
    );
    assert_eq!(
        one("[a|b]."),
        Term::ImproperList(vec![atom("a")], Box::new(atom("b")))
    );
    assert_eq!(
        one("[1,2|3]."),
        Term::ImproperList(vec![int(1), int(2)], Box::new(int(3)))
    );
    assert_eq!(
        one("[a|[b,c]]."),
        list(vec![atom("a"), atom("b"), atom("c")])
    );
    assert_eq!(one("[a|[]]."), list(vec![atom("a")]));
    assert_eq!(one(r#"[a|"bc"]."#), list(vec![atom("a"), int(98), int(99)]));
    assert_eq!(
        one("[a|[b|c]]."),
        Term::ImproperList(vec![atom("a"), atom("b")], Box::new(atom("c")))
    );
    assert_eq!(one("#{}."), Term::Map(vec![]));
    assert_eq!(
        one("#{a => 1, <<\"b\">> => [x], a => 2}."),
        Term::Map(vec![
            (atom("a"), int(1)),
            (bin("b"), list(vec![atom("x")])),
            (atom("a"), int(2))
        ])
    );
    assert_eq!(
        one("# { k => v }."),
        Term::Map(vec![(atom("k"), atom("v"))])
    );
}

#[test]
fn erlang_sequences_and_comments() {
    let text = "% leading comment\n{a, 1}. % trailing\n\n%% another\n{b, \"%not a comment\"}.\n[].";
    assert_eq!(
        parse_erlang_terms(text).unwrap(),
        vec![
            tuple(vec![atom("a"), int(1)]),
            tuple(vec![atom("b"), chars("%not a comment")]),
            list(vec![])
        ]
    );
    assert_eq!(parse_erlang_terms("").unwrap(), vec![]);
    assert_eq!(parse_erlang_terms("  % only a comment").unwrap(), vec![]);
    assert_eq!(parse_erlang_terms("a.%c").unwrap(), vec![atom("a")]);
    assert_eq!(
        parse_erlang_terms("a.b.").unwrap_err().to_string(),
        "line 1, column 2: unexpected '.', expected '.' ending the term"
    );
}

#[test]
fn erlang_app_src_and_rebar_config() {
    let app_src = r#"
%% -*- erlang -*-
{application, cowlib,
 [{description, "Support library for manipulating Web protocols."},
  {vsn, "2.12.1"},
  {id, "git"},
  {modules, ['cow_base64url','cow_cookie']},
  {registered, []},
  {applications, [kernel,stdlib,crypto]},
  {env, [{max, 16#FFFF}, {ratio, 0.75}, {sep, $,}]},
  {licenses, ["ISC"]},
  {links, [{"GitHub", "https://github.com/ninenines/cowlib"}]}
 ]}.
"#;
    let terms = parse_erlang_terms(app_src).unwrap();
    let app = terms[0].as_tuple().unwrap();
    assert_eq!(app[0].as_atom(), Some("application"));
    assert_eq!(app[1].as_atom(), Some("cowlib"));
    assert_eq!(
        app[2].proplist_get("vsn").and_then(Term::as_str),
        Some("2.12.1")
    );
    assert_eq!(
        app[2]
            .proplist_get("env")
            .and_then(|e| e.proplist_get("sep")),
        Some(&int(44))
    );

    let rebar_config = r#"
{erl_opts, [debug_info, {d, 'TEST'}, {platform_define, "^2", 'OTP_20'}]}.
{deps, [
    {cowboy, "2.10.0"},
    {jsx, {git, "https://github.com/talentdeficit/jsx.git", {tag, "v3.1.0"}}},
    {rebar3_hex, "~> 7.0"}
]}.
{profiles, [{test, [{deps, [meck]}]}]}.
{relx, [{release, {myapp, "0.1.0"}, [myapp, sasl]}, {dev_mode, true}]}.
"#;
    let terms = parse_erlang_terms(rebar_config).unwrap();
    assert_eq!(terms.len(), 4);
    let deps = terms[1].as_tuple().unwrap()[1].as_list().unwrap();
    assert_eq!(deps[1].as_tuple().unwrap()[0], atom("jsx"));
}

#[test]
fn erlang_errors_say_where() {
    let cases: &[(&str, &str)] = &[
        (
            "{a, b",
            "line 1, column 6: unexpected end of input, expected ',' or '}' in a tuple",
        ),
        (
            "{a,\n  X}.",
            "line 2, column 3: variable X is not allowed in a literal term",
        ),
        ("\"abc", "line 1, column 1: unterminated string"),
        ("'abc", "line 1, column 1: unterminated quoted atom"),
        (
            "[a, b}.",
            "line 1, column 6: unexpected '}', expected ',', '|' or ']' in a list",
        ),
        (
            "\n\n  \"\\x{zz}\".",
            "line 3, column 4: invalid escape sequence \\x{z",
        ),
        (
            "#rec{a = 1}.",
            "line 1, column 1: record #rec is not allowed in a literal term",
        ),
        (
            "a",
            "line 1, column 2: unexpected end of input, expected '.' ending the term",
        ),
        (
            "<0.80.0>.",
            "line 1, column 1: unexpected '<', expected a term",
        ),
        (
            "- a.",
            "line 1, column 3: unexpected atom 'a', expected a number after the sign",
        ),
        (
            "#{a => }.",
            "line 1, column 8: unexpected '}', expected a term",
        ),
    ];
    for (text, message) in cases {
        let err = parse_erlang_terms(text).unwrap_err();
        assert_eq!(err.to_string(), *message, "{text:?}");
    }
}

#[test]
fn nesting_is_capped() {
    let ok = format!("{}x{}.", "[".repeat(256), "]".repeat(256));
    assert!(parse_erlang_terms(&ok).is_ok());
    let deep = format!("{}x{}.", "[".repeat(257), "]".repeat(257));
    assert!(matches!(
        parse_erlang_terms(&deep),
        Err(TermError::TooDeep { max: 256, .. })
    ));
    let hostile = "{".repeat(1_000_000);
    assert!(matches!(
        parse_erlang_terms(&hostile),
        Err(TermError::TooDeep { .. })
    ));
    let hostile = "%{a: [".repeat(200_000);
    assert!(matches!(
        parse_elixir_term(&hostile),
        Err(TermError::TooDeep { .. })
    ));
}

#[test]
fn position_counts_characters() {
    assert_eq!(Position::of("aé\nbc", 0), Position { line: 1, column: 1 });
    assert_eq!(Position::of("aé\nbc", 3), Position { line: 1, column: 3 });
    assert_eq!(Position::of("aé\nbc", 5), Position { line: 2, column: 2 });
    assert_eq!(Position::of("aé\nbc", 999), Position { line: 2, column: 3 });
    // An offset inside a character counts that character.
    assert_eq!(Position::of("aé", 2), Position { line: 1, column: 3 });
}

#[test]
fn helpers() {
    let t = one(r#"[{name, <<"x">>}, {<<"vsn">>, "1.0"}, bare, {"char", 3}]."#);
    assert_eq!(t.proplist_get("name"), Some(&bin("x")));
    assert_eq!(t.proplist_get("vsn").and_then(Term::as_str), Some("1.0"));
    assert_eq!(t.proplist_get("char"), Some(&int(3)));
    assert_eq!(t.proplist_get("bare"), None);
    assert_eq!(t.as_list().map(<[Term]>::len), Some(4));
    let m = one(r#"#{<<"a">> => true}."#);
    assert_eq!(m.proplist_get("a").and_then(Term::as_bool), Some(true));
    assert_eq!(Term::Binary(vec![0xff]).as_str(), None);
    assert_eq!(chars("").as_list(), Some(&[][..]));
    assert_eq!(int(5).as_integer(), Some(5));
    assert_eq!(Term::atom("x").as_atom(), Some("x"));
}

// ---------------------------------------------------------------------------------------------
// Erlang printer

#[test]
fn printer_output() {
    let cases: Vec<(Term, &str)> = vec![
        (atom("foo"), "foo"),
        (atom("foo_Bar@1"), "foo_Bar@1"),
        (atom("Foo"), "'Foo'"),
        (atom("hello world"), "'hello world'"),
        (atom("end"), "'end'"),
        (atom(""), "''"),
        (atom("it's"), r"'it\'s'"),
        (atom("héllo"), "'héllo'"),
        (bin("abc"), r#"<<"abc">>"#),
        (bin("a\"b\\c\nd"), r#"<<"a\"b\\c\nd">>"#),
        (bin("é"), r#"<<"é"/utf8>>"#),
        (Term::Binary(vec![0xff, 0]), "<<255,0>>"),
        (Term::Binary(vec![1, 2, 3]), "<<1,2,3>>"),
        (bin(""), "<<>>"),
        (chars("a\u{0}\u{7f}\tb"), r#""a\000\177\tb""#),
        (chars(""), r#""""#),
        (int(-5), "-5"),
        (int(i128::MIN), "-170141183460469231731687303715884105728"),
        (Term::Float(1.5), "1.5"),
        (Term::Float(1e300), "1.0e300"),
        (Term::Float(-2.5e-7), "-2.5e-7"),
        (Term::Float(100.0), "100.0"),
        (Term::Float(-0.0), "-0.0"),
        (Term::Float(f64::NAN), "nan"),
        (tuple(vec![atom("a"), int(1)]), "{a,1}"),
        (list(vec![]), "[]"),
        (
            Term::ImproperList(vec![atom("a")], Box::new(atom("b"))),
            "[a|b]",
        ),
        (
            Term::Map(vec![(atom("a"), int(1)), (bin("b"), list(vec![]))]),
            r#"#{a => 1,<<"b">> => []}"#,
        ),
    ];
    for (term, text) in cases {
        assert_eq!(to_erlang_text(&term), text, "{term:?}");
        if !matches!(term, Term::Float(f) if f.is_nan()) {
            assert_eq!(one(&format!("{text}.")), term, "{text}");
        }
    }
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    #[test]
    fn printed_terms_read_back(terms in proptest::collection::vec(arb_term(), 1..4)) {
        let text: String = terms.iter().map(|t| format!("{}.\n", to_erlang_text(t))).collect();
        let parsed = parse_erlang_terms(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(parsed, terms);
    }
}

// ---------------------------------------------------------------------------------------------
// Oracle: real erl

/// Erlang expressions (ASCII, for the `-eval` command line) and the value each must read as.
fn oracle_cases() -> Vec<(&'static str, Term)> {
    let many_files: Vec<Term> = (0..40)
        .map(|i| bin(&format!("lib/some/deeply/nested/file_{i}.ex")))
        .collect();
    vec![
        ("foo", atom("foo")),
        ("'hello world'", atom("hello world")),
        ("foo_Bar@1", atom("foo_Bar@1")),
        ("'end'", atom("end")),
        ("'Caps'", atom("Caps")),
        ("'h\\x{e9}llo'", atom("héllo")),
        ("'\\x{105}\\x{119}'", atom("ąę")),
        ("''", atom("")),
        ("'quote\\'s\\n'", atom("quote's\n")),
        ("<<\"abc\">>", bin("abc")),
        ("<<\"\\x{e9}t\\x{e9}\"/utf8>>", bin("été")),
        ("<<233>>", Term::Binary(vec![233])),
        ("<<1,2,3>>", Term::Binary(vec![1, 2, 3])),
        ("<<>>", bin("")),
        ("<<0,255,128>>", Term::Binary(vec![0, 255, 128])),
        ("<<\"a\\nb\\tc\\\"d\\\\e\">>", bin("a\nb\tc\"d\\e")),
        ("list_to_binary(lists:duplicate(100, $a))", bin(&"a".repeat(100))),
        ("unicode:characters_to_binary(lists:duplicate(60, 16#444))", bin(&"ф".repeat(60))),
        ("unicode:characters_to_binary(\"Gr\\x{fc}\\x{df}e \\x{395}\\x{3bb}\\x{3bb}\\x{3b7}\\x{3bd}\\x{3b9}\\x{3ba}\\x{3ac}\")", bin("Grüße Ελληνικά")),
        ("\"hello\"", chars("hello")),
        ("\"h\\x{e9}llo\"", chars("héllo")),
        ("[16#444, 16#445]", chars("фх")),
        ("\"tab\\there\\r\\n\"", chars("tab\there\r\n")),
        ("[]", list(vec![])),
        ("[1,2,3]", list(vec![int(1), int(2), int(3)])),
        ("[a|b]", Term::ImproperList(vec![atom("a")], Box::new(atom("b")))),
        ("[1,2|3]", Term::ImproperList(vec![int(1), int(2)], Box::new(int(3)))),
        ("{}", tuple(vec![])),
        ("{a, <<\"b\">>, \"c\", 1}", tuple(vec![atom("a"), bin("b"), chars("c"), int(1)])),
        ("#{}", Term::Map(vec![])),
        (
            "#{a => 1, <<\"b\">> => [1, 2], {c} => #{}}",
            Term::Map(vec![
                (atom("a"), int(1)),
                (bin("b"), list(vec![int(1), int(2)])),
                (tuple(vec![atom("c")]), Term::Map(vec![])),
            ]),
        ),
        ("0", int(0)),
        ("-1", int(-1)),
        ("123456789012345678901234567890", int(123456789012345678901234567890)),
        ("-170141183460469231731687303715884105728", int(i128::MIN)),
        ("1.5", Term::Float(1.5)),
        ("-2.5e-7", Term::Float(-2.5e-7)),
        ("1.0e10", Term::Float(1e10)),
        ("0.1", Term::Float(0.1)),
        ("3.0e300", Term::Float(3e300)),
        ("123456.789", Term::Float(123456.789)),
        ("1.0e15", Term::Float(1e15)),
        ("1.0e16", Term::Float(1e16)),
        ("$a", int(97)),
        ("true", atom("true")),
        ("[[[[[[[[[[x]]]]]]]]]]", (0..10).fold(atom("x"), |t, _| list(vec![t]))),
        ("lists:seq(1, 60)", list((1..=60).map(int).collect())),
        (
            "{<<\"requirements\">>, [[{<<\"name\">>,<<\"cowlib\">>},{<<\"app\">>,<<\"cowlib\">>},{<<\"optional\">>,false},{<<\"requirement\">>,<<\"~> 2.12\">>},{<<\"repository\">>,<<\"hexpm\">>}]]}",
            tuple(vec![
                bin("requirements"),
                list(vec![list(vec![
                    tuple(vec![bin("name"), bin("cowlib")]),
                    tuple(vec![bin("app"), bin("cowlib")]),
                    tuple(vec![bin("optional"), atom("false")]),
                    tuple(vec![bin("requirement"), bin("~> 2.12")]),
                    tuple(vec![bin("repository"), bin("hexpm")]),
                ])]),
            ]),
        ),
        (
            "{<<\"files\">>, [list_to_binary(\"lib/some/deeply/nested/file_\" ++ integer_to_list(I) ++ \".ex\") || I <- lists:seq(0, 39)]}",
            tuple(vec![bin("files"), list(many_files)]),
        ),
    ]
}

/// Runs `erl` with hex_core on the path; the expression writes files the test reads.
fn erl(expr: &str) -> String {
    precomp_testkit::erl_eval(expr)
}

#[test]
fn erl_prints_we_parse() {
    let cases = oracle_cases();
    let dir = tempfile::tempdir().unwrap();
    let exprs: Vec<&str> = cases.iter().map(|(e, _)| *e).collect();
    let formats = [
        ("p", "io_lib:format(\"~p\", [T])"),
        ("tp", "io_lib:format(\"~tp\", [T])"),
        ("w", "io_lib:format(\"~w\", [T])"),
        ("tw", "io_lib:format(\"~tw\", [T])"),
        ("pretty", "io_lib_pretty:print(T, [{encoding, utf8}])"),
        (
            "narrow",
            "io_lib_pretty:print(T, [{encoding, utf8}, {column, 30}, {line_length, 40}])",
        ),
        (
            "latin1",
            "io_lib_pretty:print(T, [{encoding, latin1}, {line_length, 30}])",
        ),
    ];
    let mut script = format!("Terms = [{}]", exprs.join(",\n"));
    for (name, fmt) in &formats {
        let path = dir.path().join(format!("{name}.txt"));
        script.push_str(&format!(
            ", ok = file:write_file({}, unicode:characters_to_binary([[{fmt}, \".\\n\"] || T <- Terms]))",
            precomp_testkit::erl_string(&path.display().to_string())
        ));
    }
    erl(&script);
    for (name, _) in &formats {
        let text = std::fs::read_to_string(dir.path().join(format!("{name}.txt"))).unwrap();
        let parsed =
            parse_erlang_terms(&text).unwrap_or_else(|e| panic!("format {name}: {e}\n{text}"));
        assert_eq!(parsed.len(), cases.len(), "format {name}");
        for ((expr, expected), got) in cases.iter().zip(&parsed) {
            assert_eq!(
                normalize(got),
                normalize(expected),
                "format {name}, expression {expr}\n{text}"
            );
        }
    }
}

/// Whether hex_core's restricted scanner can read the printed term: it has no floats, no `|`
/// and knows no `\x` escapes (the printer avoids those).
fn safe_subset(t: &Term) -> bool {
    match t {
        Term::Float(_) | Term::ImproperList(..) => false,
        Term::Tuple(items) | Term::List(items) => items.iter().all(safe_subset),
        Term::Map(pairs) => pairs.iter().all(|(k, v)| safe_subset(k) && safe_subset(v)),
        _ => true,
    }
}

#[test]
fn erl_reads_what_we_print() {
    let cases = oracle_cases();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.config");
    let text: String = cases
        .iter()
        .map(|(_, t)| format!("{}.\n", to_erlang_text(t)))
        .collect();
    std::fs::write(&path, &text).unwrap();
    let exprs: Vec<&str> = cases.iter().map(|(e, _)| *e).collect();
    let script = format!(
        "Expected = [{exprs}],
         P = {path},
         {{ok, Got}} = file:consult(P),
         Consult = [G =:= E || {{G, E}} <- lists:zip(Got, Expected)],
         {{ok, Bin}} = file:read_file(P),
         Lines = [L || L <- string:split(unicode:characters_to_list(Bin), \"\\n\", all), L =/= []],
         Parse = [begin
                    {{ok, Toks, _}} = erl_scan:string(L),
                    {{ok, T}} = erl_parse:parse_term(Toks),
                    T =:= E
                  end || {{L, E}} <- lists:zip(Lines, Expected)],
         Safe = [try
                   {{ok, Toks2, _}} = r3_safe_erl_term:string(L),
                   [T2] = r3_safe_erl_term:terms(Toks2),
                   T2 =:= E
                 catch _:_ -> error end || {{L, E}} <- lists:zip(Lines, Expected)],
         io:format(\"~w~n~w~n~w~n\", [Consult, Parse, Safe])",
        exprs = exprs.join(",\n"),
        path = precomp_testkit::erl_string(&path.display().to_string()),
    );
    let out = erl(&script);
    let lines: Vec<&str> = out.lines().collect();
    let all_true = format!("[{}]", vec!["true"; cases.len()].join(","));
    assert_eq!(lines[0], all_true, "file:consult\n{text}");
    assert_eq!(lines[1], all_true, "erl_parse:parse_term\n{text}");
    let safe: Vec<&str> = lines[2].trim_matches(['[', ']']).split(',').collect();
    for ((expr, term), result) in cases.iter().zip(safe) {
        if safe_subset(term) {
            assert_eq!(
                result,
                "true",
                "hex_core safe_erl_term on {expr}: {}",
                to_erlang_text(term)
            );
        }
    }
}

/// Random terms: we print them, erl reads them and prints them back with `~tp` and `~w`, and
/// we read that: the value must survive both trips.
#[test]
fn random_terms_survive_erl() {
    let mut runner = TestRunner::new(Config {
        cases: 1,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(arb_term(), 150);
    let terms = strategy.new_tree(&mut runner).unwrap().current();
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.config");
    let text: String = terms
        .iter()
        .map(|t| format!("{}.\n", to_erlang_text(t)))
        .collect();
    std::fs::write(&ours, &text).unwrap();
    let mut script = format!(
        "{{ok, Ts}} = file:consult({})",
        precomp_testkit::erl_string(&ours.display().to_string())
    );
    for (name, fmt) in [("tp", "~tp.~n"), ("w", "~w.~n"), ("p", "~p.~n")] {
        let out = dir.path().join(format!("{name}.txt"));
        script.push_str(&format!(
            ", ok = file:write_file({}, unicode:characters_to_binary([io_lib:format({}, [T]) || T <- Ts]))",
            precomp_testkit::erl_string(&out.display().to_string()),
            erl_ascii_string(fmt)
        ));
    }
    erl(&script);
    for name in ["tp", "w", "p"] {
        let back = std::fs::read_to_string(dir.path().join(format!("{name}.txt"))).unwrap();
        let parsed = parse_erlang_terms(&back).unwrap_or_else(|e| panic!("{name}: {e}\n{back}"));
        assert_eq!(parsed.len(), terms.len());
        for (original, got) in terms.iter().zip(&parsed) {
            assert_eq!(
                normalize(got),
                normalize(original),
                "~{name} of {}",
                to_erlang_text(original)
            );
        }
    }
}

/// Random terms printed for Elixir users: real `elixir` evaluates each text back to exactly
/// the value `file:consult` reads from our Erlang text.
#[test]
fn random_terms_printed_for_elixir_evaluate_to_the_same_value() {
    let mut runner = TestRunner::new(Config {
        cases: 1,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(arb_term(), 150);
    let mut terms = strategy.new_tree(&mut runner).unwrap().current();
    terms.extend(oracle_cases().into_iter().map(|(_, term)| term));
    let dir = tempfile::tempdir().unwrap();
    let erl_path = dir.path().join("terms.config");
    let ex_path = dir.path().join("terms.exs-lines");
    let erl_text: String = terms
        .iter()
        .map(|t| format!("{}.\n", to_erlang_text(t)))
        .collect();
    let ex_text: String = terms
        .iter()
        .map(|t| format!("{}\n", to_elixir_text(t)))
        .collect();
    std::fs::write(&erl_path, erl_text).unwrap();
    std::fs::write(&ex_path, &ex_text).unwrap();
    let script = format!(
        r##"{{:ok, terms}} = :file.consult(~c"{}")
texts = File.read!("{}") |> String.split("\n", trim: true)
bad = for {{t, text}} <- Enum.zip(terms, texts), {{v, _}} = Code.eval_string(text), v !== t, do: text
IO.puts("#{{length(terms)}} #{{length(texts)}} #{{length(bad)}}")
Enum.each(Enum.take(bad, 5), &IO.puts/1)"##,
        erl_path.display(),
        ex_path.display()
    );
    let output = Command::new("elixir")
        .args(["-e", &script])
        .output()
        .expect("elixir (apt-get install elixir)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let first = stdout.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!("{} {} 0", terms.len(), terms.len()),
        "texts Elixir reads as other values:\n{stdout}"
    );
}

// ---------------------------------------------------------------------------------------------
// Elixir parser

#[test]
fn elixir_atoms() {
    assert_eq!(ex(":foo"), atom("foo"));
    assert_eq!(ex(":foo?"), atom("foo?"));
    assert_eq!(ex(":save!"), atom("save!"));
    assert_eq!(ex(":foo@bar"), atom("foo@bar"));
    assert_eq!(ex(":\"quoted-atom\""), atom("quoted-atom"));
    assert_eq!(ex(":'single'"), atom("single"));
    assert_eq!(ex(":Foo"), atom("Foo"));
    assert_eq!(ex(":é"), atom("é"));
    assert_eq!(ex(":+"), atom("+"));
    assert_eq!(ex(":==="), atom("==="));
    assert_eq!(ex(":\\\\"), atom("\\\\"));
    assert_eq!(ex("Hex.SCM"), atom("Elixir.Hex.SCM"));
    assert_eq!(ex("Foo"), atom("Elixir.Foo"));
    assert_eq!(ex("Elixir.Foo"), atom("Elixir.Foo"));
    assert_eq!(ex("true"), atom("true"));
    assert_eq!(ex("false"), atom("false"));
    assert_eq!(ex("nil"), atom("nil"));
}

#[test]
fn elixir_strings() {
    assert_eq!(ex(r#""abc""#), bin("abc"));
    assert_eq!(ex(r#""é\n\t\"\\\#{x}""#), bin("é\n\t\"\\#{x}"));
    assert_eq!(ex(r#""\xFF\x0""#), Term::Binary(vec![0xff, 0]));
    assert_eq!(ex(r#""\u00e9\u{1F600}\x{e9}""#), bin("é😀é"));
    assert_eq!(
        ex(r#""\a\b\d\e\f\r\s\v\0\z""#),
        bin("\u{7}\u{8}\u{7f}\u{1b}\u{c}\r \u{b}\u{0}z")
    );
    assert_eq!(ex("\"line\\\ncontinued\""), bin("linecontinued"));
    assert_eq!(ex("\"multi\nline\""), bin("multi\nline"));
    assert_eq!(ex("\"# not a comment\""), bin("# not a comment"));
    assert_eq!(ex("'abc'"), chars("abc"));
    assert_eq!(ex("~c\"abc\""), chars("abc"));
    assert_eq!(ex("'\\xFF'"), chars("\u{ff}"));
    assert_eq!(ex("<<255, 0, \"a\">>"), Term::Binary(vec![255, 0, 97]));
    assert_eq!(ex("<<>>"), bin(""));
    let err = parse_elixir_term("\"a#{b}\"").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 1, column 3: string interpolation #{...} is not allowed in a literal term"
    );
    assert!(matches!(
        parse_elixir_term("\"\"\"\nheredoc\n\"\"\""),
        Err(TermError::NotAllowed { .. })
    ));
    assert!(matches!(
        parse_elixir_term("~r/x/"),
        Err(TermError::NotAllowed { .. })
    ));
    assert!(matches!(
        parse_elixir_term("\"\\u{D800}\""),
        Err(TermError::InvalidCodepoint { .. })
    ));
    assert!(matches!(
        parse_elixir_term("\"abc"),
        Err(TermError::Unterminated { .. })
    ));
}

#[test]
fn elixir_numbers() {
    assert_eq!(ex("1_000_000"), int(1_000_000));
    assert_eq!(ex("-5"), int(-5));
    assert_eq!(ex("0x1F"), int(31));
    assert_eq!(ex("0o17"), int(15));
    assert_eq!(ex("0b101"), int(5));
    assert_eq!(ex("?a"), int(97));
    assert_eq!(ex("?\\n"), int(10));
    assert_eq!(ex("1.5"), Term::Float(1.5));
    assert_eq!(ex("1.0e-7"), Term::Float(1e-7));
    assert_eq!(ex("-2.5e3"), Term::Float(-2500.0));
    assert_eq!(ex("1_000.5"), Term::Float(1000.5));
    assert!(matches!(
        parse_elixir_term("99999999999999999999999999999999999999999"),
        Err(TermError::IntegerOverflow { .. })
    ));
}

#[test]
fn elixir_containers() {
    let kw = |k: &str, v: Term| tuple(vec![atom(k), v]);
    assert_eq!(
        ex("[hex: :cowlib, repo: \"hexpm\"]"),
        list(vec![kw("hex", atom("cowlib")), kw("repo", bin("hexpm"))])
    );
    assert_eq!(ex("[1, a: 2]"), list(vec![int(1), kw("a", int(2))]));
    assert_eq!(
        ex("[\"quoted key\": 1, Up: 2]"),
        list(vec![kw("quoted key", int(1)), kw("Up", int(2))])
    );
    assert_eq!(ex("[1, 2,]"), list(vec![int(1), int(2)]));
    assert_eq!(
        ex("[1 | 2]"),
        Term::ImproperList(vec![int(1)], Box::new(int(2)))
    );
    assert_eq!(ex("[1 | [2]]"), list(vec![int(1), int(2)]));
    assert_eq!(
        ex("{:a, b: 1}"),
        tuple(vec![atom("a"), list(vec![kw("b", int(1))])])
    );
    assert_eq!(ex("{1, 2,}"), tuple(vec![int(1), int(2)]));
    assert_eq!(ex("{}"), tuple(vec![]));
    assert_eq!(ex("%{}"), Term::Map(vec![]));
    assert_eq!(
        ex("%{\"a\" => 1, :b => 2, c: 3, \"d-e\": 4,}"),
        Term::Map(vec![
            (bin("a"), int(1)),
            (atom("b"), int(2)),
            (atom("c"), int(3)),
            (atom("d-e"), int(4))
        ])
    );
    let text =
        "# a comment\n%{\n  # another\n  \"dep\": {:hex, :dep, \"1.0.0\"}, # trailing\n\n}\n";
    assert_eq!(
        ex(text),
        Term::Map(vec![(
            atom("dep"),
            tuple(vec![atom("hex"), atom("dep"), bin("1.0.0")])
        )])
    );
    let cases: &[(&str, &str)] = &[
        ("[a: 1, 2]", "line 1, column 8: a positional element after keyword pairs is not allowed in a literal term"),
        ("%{a: 1, \"b\" => 2}", "line 1, column 9: a `key => value` pair after keyword pairs is not allowed in a literal term"),
        ("%Foo{}", "line 1, column 1: a struct is not allowed in a literal term"),
        ("[x]", "line 1, column 2: identifier x (variables and calls) is not allowed in a literal term"),
        ("{1, 2", "line 1, column 6: unexpected end of input, expected ',' or '}' in a tuple"),
        ("%{\"a\" 1}", "line 1, column 7: unexpected integer, expected '=>' after a map key"),
        ("1 2", "line 1, column 3: unexpected integer, expected the end of input after the term"),
        ("a: 1", "line 1, column 1: unexpected keyword key a:, expected a term (keyword pairs belong in a list)"),
        ("", "line 1, column 1: unexpected end of input, expected a term"),
    ];
    for (text, message) in cases {
        assert_eq!(
            parse_elixir_term(text).unwrap_err().to_string(),
            *message,
            "{text:?}"
        );
    }
}

/// Elixir prints each value twice, with `inspect` (what `mix.lock` holds) and as Erlang
/// `~tp`; both parsers must agree on the value.
#[test]
fn elixir_inspect_agrees_with_erlang_print() {
    let values = [
        ":foo",
        ":\"foo-bar\"",
        ":ok?",
        ":+",
        "Hex.SCM",
        ":\"Elixir.Foo\"",
        ":\"with space\"",
        ":\"\\u00e9\"",
        "true",
        "nil",
        "\"abc\"",
        "\"\\u00e9t\\u00e9 \\u{1F600}\"",
        "<<255, 0>>",
        "'single'",
        "~c\"sigil\"",
        "[1, 2]",
        "[a: 1, b: \"x\"]",
        "[1, {:a, 2}]",
        "{:hex, :cowboy, \"2.10.0\"}",
        "%{\"a\" => 1, b: 2}",
        "%{a: %{b: [c: nil]}}",
        "1_000_000",
        "-5",
        "0x1F",
        "1.5",
        "-2.5e-7",
        "1.0e20",
        "0.1",
        "\"tab\\there\\n\"",
        "\"quote\\\"back\\\\slash\"",
        "\"\\#{not}\"",
        "[1 | 2]",
        "{:a, [b: 1]}",
        "String.duplicate(\"long \", 40)",
        "Enum.to_list(1..50)",
        "?a",
        "\"\"",
        "[]",
        "{}",
        "%{}",
        "%{{:a, 1} => [x: 1], [1] => \"v\"}",
        "[{:cowlib, \"~> 2.12\", [hex: :cowlib, repo: \"hexpm\", optional: false]}]",
        "123456789012345678901234567890",
        "<<1, 2, 3>>",
        "\"\\x{7f}\"",
    ];
    let script = format!(
        "for v <- [{}] do
           IO.write(inspect(v, limit: :infinity, pretty: true, printable_limit: :infinity))
           IO.write(\"\\n-----8<-----\\n\")
           IO.write(:unicode.characters_to_binary(:io_lib.format('~tp.~n', [v])))
           IO.write(\"-----8<-----\\n\")
         end",
        values.join(",\n")
    );
    let out = Command::new("elixir")
        .arg("-e")
        .arg(&script)
        .output()
        .expect("run elixir");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let parts: Vec<&str> = stdout.split("\n-----8<-----\n").collect();
    assert_eq!(parts.len(), values.len() * 2 + 1, "{stdout}");
    for (i, value) in values.iter().enumerate() {
        let (elixir_text, erlang_text) = (parts[2 * i], parts[2 * i + 1]);
        let from_elixir = parse_elixir_term(elixir_text)
            .unwrap_or_else(|e| panic!("{value}: {e}\n{elixir_text}"));
        let from_erlang = parse_erlang_terms(erlang_text)
            .unwrap_or_else(|e| panic!("{value}: {e}\n{erlang_text}"));
        assert_eq!(from_erlang.len(), 1);
        assert_eq!(
            normalize(&from_elixir),
            normalize(&from_erlang[0]),
            "{value}\n{elixir_text}\n{erlang_text}"
        );
    }
}
