//! `rebar.lock`: the file rebar3 writes today, the older formats, validation, no panics on
//! any input, and rebar3's own `rebar_config:consult_lock_file/1` as the oracle.

use precomp_proto::rebar_lock::{
    RebarLock, RebarLockEntry, RebarLockError, RebarPkg, RebarSource, MAX_REBAR_LOCK_SIZE,
};
use precomp_proto::term::Term;
use proptest::prelude::*;

/// Written by rebar3 3.19 (`rebar3 get-deps` in tests/fixtures/consumers/rebar3_app against
/// the fixture repository).
const REAL: &str = r#"{"1.2.0",
[{<<"erl_counter">>,{pkg,<<"erl_counter">>,<<"1.0.0">>},1},
 {<<"erl_ids">>,{pkg,<<"erl_ids">>,<<"1.0.0">>},0}]}.
[
{pkg_hash,[
 {<<"erl_counter">>, <<"66066D708D862621221539F1CB2FDAE0ABC69096F47B96B8E6BFB38A345FCB6E">>},
 {<<"erl_ids">>, <<"5174CF72C98DF38BF53E5CA1329BE75596C7572233A7B8E1A24A0EC737E519C9">>}]},
{pkg_hash_ext,[
 {<<"erl_counter">>, <<"74D371436B2B6456B5593E2C1478BA1139CD6A683BE73FC0D8398975A6C5D6F1">>},
 {<<"erl_ids">>, <<"25F59D5394D4D41ABDE6207E2C5FE7CE120F9245105148FE589AC305A464C908">>}]}
].
"#;

/// A package under another name, git and git_subdir sources, a hash for an app not locked.
const MIXED: &str = r#"%% comment
{"1.2.0",
[{<<"cowboy">>,{pkg,<<"cowboy">>,<<"2.10.0">>},0},
 {<<"my_fork">>,{git,"https://github.com/acme/my_fork.git",{ref,"0123456789abcdef"}},0},
 {<<"renamed">>,{pkg,<<"actual_package">>,<<"1.0.0-rc.1+build.7">>},1},
 {<<"sub">>,{git_subdir,"https://x/mono.git",{ref,"abc"},"apps/sub"},1}]}.
[
{pkg_hash,[
 {<<"cowboy">>, <<"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA">>},
 {<<"ghost">>, <<"CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC">>},
 {<<"renamed">>, <<"dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd">>}]},
{pkg_hash_ext,[
 {<<"cowboy">>, <<"BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB">>}]}
].
"#;

/// rebar3 before 3.5: the list alone, no checksums.
const BETA: &str = r#"[{<<"a">>,{pkg,<<"b">>,<<"1.0.0">>},0},{<<"g">>,{git,"https://x",{ref,"abc"}},1}].
"#;

/// rebar3 3.5 to 3.13: `pkg_hash` only.
const V110: &str = r#"{"1.1.0",
[{<<"jsx">>,{pkg,<<"jsx">>,<<"2.9.0">>},0}]}.
[
{pkg_hash,[
 {<<"jsx">>, <<"D2F6E5F069C00266CAD52FB15D87C428579EA4D7D73A33669E12679E203329DD">>}]}
].
"#;

fn pkg(
    app: &str,
    name: &str,
    version: &str,
    level: u32,
    inner: Option<&str>,
    outer: Option<&str>,
) -> RebarLockEntry {
    RebarLockEntry {
        app: app.into(),
        source: RebarSource::Pkg(RebarPkg {
            name: name.into(),
            version: version.into(),
            inner_checksum: inner.map(str::to_string),
            outer_checksum: outer.map(str::to_string),
        }),
        level,
    }
}

#[test]
fn reads_what_rebar3_writes() {
    let lock = RebarLock::parse(REAL).unwrap();
    assert_eq!(lock.version.as_deref(), Some("1.2.0"));
    assert_eq!(
        lock.entries,
        vec![
            pkg(
                "erl_counter",
                "erl_counter",
                "1.0.0",
                1,
                Some("66066d708d862621221539f1cb2fdae0abc69096f47b96b8e6bfb38a345fcb6e"),
                Some("74d371436b2b6456b5593e2c1478ba1139cd6a683be73fc0d8398975a6c5d6f1"),
            ),
            pkg(
                "erl_ids",
                "erl_ids",
                "1.0.0",
                0,
                Some("5174cf72c98df38bf53e5ca1329be75596c7572233a7b8e1a24a0ec737e519c9"),
                Some("25f59d5394d4d41abde6207e2c5fe7ce120f9245105148fe589ac305a464c908"),
            ),
        ]
    );
    assert_eq!(lock.pkgs().count(), 2);
    assert_eq!(lock.not_from_hex().count(), 0);
}

#[test]
fn keeps_other_sources_and_renamed_packages() {
    let lock = RebarLock::parse(MIXED).unwrap();
    let pkgs: Vec<(&str, &RebarPkg)> = lock.pkgs().collect();
    assert_eq!(pkgs.len(), 2);
    assert_eq!(pkgs[0].1.inner_checksum, Some("a".repeat(64)));
    assert_eq!(pkgs[0].1.outer_checksum, Some("b".repeat(64)));
    assert_eq!(pkgs[1].0, "renamed");
    assert_eq!(pkgs[1].1.name, "actual_package");
    assert_eq!(pkgs[1].1.version, "1.0.0-rc.1+build.7");
    assert_eq!(pkgs[1].1.inner_checksum, Some("d".repeat(64)));
    assert_eq!(pkgs[1].1.outer_checksum, None);
    let other: Vec<(&str, &str)> = lock
        .not_from_hex()
        .map(|e| match &e.source {
            RebarSource::Other { kind, .. } => (e.app.as_str(), kind.as_str()),
            RebarSource::Pkg(_) => unreachable!(),
        })
        .collect();
    assert_eq!(other, [("my_fork", "git"), ("sub", "git_subdir")]);
}

#[test]
fn reads_the_older_formats() {
    let beta = RebarLock::parse(BETA).unwrap();
    assert_eq!(beta.version, None);
    assert_eq!(beta.entries[0], pkg("a", "b", "1.0.0", 0, None, None));
    assert!(matches!(
        &beta.entries[1].source,
        RebarSource::Other { kind, term: Term::Tuple(_) } if kind == "git"
    ));

    let old = RebarLock::parse(V110).unwrap();
    assert_eq!(old.version.as_deref(), Some("1.1.0"));
    assert_eq!(
        old.entries,
        [pkg(
            "jsx",
            "jsx",
            "2.9.0",
            0,
            Some("d2f6e5f069c00266cad52fb15d87c428579ea4d7d73a33669e12679e203329dd"),
            None
        )]
    );

    // A versioned lock without the checksum term, and an empty file.
    let bare = RebarLock::parse("{\"1.2.0\",[]}.\n").unwrap();
    assert_eq!(bare.version.as_deref(), Some("1.2.0"));
    assert!(bare.entries.is_empty());
    assert_eq!(RebarLock::parse("").unwrap(), RebarLock::default());
    assert_eq!(
        RebarLock::parse("%% nothing\n").unwrap(),
        RebarLock::default()
    );
}

#[test]
fn errors_name_the_problem() {
    let err = |text: &str| RebarLock::parse(text).unwrap_err().to_string();

    assert!(
        matches!(
            RebarLock::parse("{\"1.2.0\", ["),
            Err(RebarLockError::Syntax(_))
        ),
        "{}",
        err("{\"1.2.0\", [")
    );
    assert!(err("foo.").contains("expected {\"1.2.0\", [Locks]} or [Locks]"));
    assert!(err("{\"1.2.0\", [], x}.").contains("first term"));
    assert!(err("[{<<\"a\">>, {pkg, <<\"a\">>, <<\"1.0.0\">>}}].")
        .contains("lock 1: expected {App, Source, Level}"));
    assert!(err("[{<<\"a\">>, {pkg, <<\"a\">>}, 0}].")
        .contains("dependency a: expected {pkg, Name, Version}"));
    assert!(err("[{<<\"a\">>, {pkg, <<\"a\">>, <<\"\">>}, 0}].")
        .contains("dependency a: the version must be a non-empty binary"));
    assert!(err("[{<<\"a\">>, {pkg, <<\"a\">>, <<\"1.0.0\">>}, -1}].")
        .contains("dependency a: the level"));
    assert!(err("[{<<\"a\">>, \"src\", 0}].").contains("dependency a: expected a source"));
    assert!(err("[{1, {pkg, <<\"a\">>, <<\"1.0.0\">>}, 0}].").contains("lock 1: the app name"));

    let bad_hash = "{\"1.2.0\",[{<<\"a\">>,{pkg,<<\"a\">>,<<\"1.0.0\">>},0}]}.\n[{pkg_hash_ext,[{<<\"a\">>,<<\"XYZ\">>}]}].\n";
    let e = err(bad_hash);
    assert!(
        e.contains("pkg_hash_ext: a: a checksum must be 64 hexadecimal digits"),
        "{e}"
    );
    let e = err("{\"1.2.0\",[]}.\n{pkg_hash, []}.\n");
    assert!(e.contains("checksums: expected a list"), "{e}");
    let e = err("{\"1.2.0\",[]}.\n[{pkg_hash, x}].\n");
    assert!(e.contains("pkg_hash: expected a list, found x"), "{e}");

    let huge = " ".repeat(MAX_REBAR_LOCK_SIZE + 1);
    assert!(matches!(
        RebarLock::parse(&huge),
        Err(RebarLockError::TooLarge { .. })
    ));
}

/// rebar3's reading of `text`, one line per lock: `app|pkg|name|version|inner|outer|level` or
/// `app|other|kind|level`.
fn rebar3_reads(text: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rebar.lock");
    std::fs::write(&path, text).unwrap();
    let out = precomp_testkit::erl_eval(&format!(
        "Hex = fun(undefined) -> \"-\"; (H) -> string:lowercase(binary_to_list(H)) end, \
         lists:foreach(fun \
           ({{A, {{pkg, N, V, I, O}}, L}}) -> \
             io:format(\"~s|pkg|~s|~s|~s|~s|~p~n\", [A, N, V, Hex(I), Hex(O), L]); \
           ({{A, Src, L}}) -> io:format(\"~s|other|~p|~p~n\", [A, element(1, Src), L]) \
         end, rebar_config:consult_lock_file({})), halt().",
        precomp_testkit::erl_string(path.to_str().unwrap())
    ));
    out.lines().map(str::to_string).collect()
}

fn our_reading(text: &str) -> Vec<String> {
    RebarLock::parse(text)
        .unwrap()
        .entries
        .iter()
        .map(|e| match &e.source {
            RebarSource::Pkg(p) => format!(
                "{}|pkg|{}|{}|{}|{}|{}",
                e.app,
                p.name,
                p.version,
                p.inner_checksum.as_deref().unwrap_or("-"),
                p.outer_checksum.as_deref().unwrap_or("-"),
                e.level
            ),
            RebarSource::Other { kind, .. } => format!("{}|other|{kind}|{}", e.app, e.level),
        })
        .collect()
}

#[test]
fn reads_locks_as_rebar3_does() {
    for text in [REAL, MIXED, BETA, V110] {
        assert_eq!(our_reading(text), rebar3_reads(text), "{text}");
    }
}

/// Pieces of the format, so random sequences get past the first token.
const PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "<<",
    ">>",
    "\"",
    ",",
    ".",
    ".\n",
    "\"1.2.0\"",
    "pkg",
    "git",
    "pkg_hash",
    "pkg_hash_ext",
    "<<\"a\">>",
    "<<\"1.0.0\">>",
    "0",
    "-1",
    "99999999999999999999999",
    "<<\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\">>",
    "%",
    "\n",
    "|",
    "'",
    "x",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_random_text(text in ".{0,200}") {
        let _ = RebarLock::parse(&text);
    }

    #[test]
    fn never_panics_on_token_soup(
        pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..60)
    ) {
        let _ = RebarLock::parse(&pieces.concat());
    }

    #[test]
    fn never_panics_on_mutated_locks(
        seed in proptest::sample::select(vec![REAL, MIXED, BETA, V110]),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut doc = seed.as_bytes().to_vec();
        for (at, byte, op) in edits {
            let len = doc.len();
            match op {
                0 => doc.insert(at % (len + 1), byte),
                1 if len > 0 => { doc.remove(at % len); }
                _ => doc.truncate(at % (len + 1)),
            }
        }
        let _ = RebarLock::parse(&String::from_utf8_lossy(&doc));
    }
}
