//! Helpers shared by the term, metadata, lock and proptest suites: a `Term` generator and
//! comparison by Erlang value.
#![allow(dead_code)]

use precomp_proto::term::{to_erlang_text, Term};
use proptest::prelude::*;

/// Erlang's view of a term, for comparing what different printers produce: charlists become
/// lists of integers, `[a | [b]]` becomes `[a, b]`, and maps lose duplicate keys (the last
/// one wins, as in an Erlang map literal) and are sorted.
pub fn normalize(term: &Term) -> Term {
    match term {
        Term::Charlist(s) => Term::List(
            s.chars()
                .map(|c| Term::Integer(i128::from(u32::from(c))))
                .collect(),
        ),
        Term::List(items) => Term::List(items.iter().map(normalize).collect()),
        Term::Tuple(items) => Term::Tuple(items.iter().map(normalize).collect()),
        Term::ImproperList(items, tail) => {
            let mut items: Vec<Term> = items.iter().map(normalize).collect();
            match normalize(tail) {
                Term::List(rest) => {
                    items.extend(rest);
                    Term::List(items)
                }
                Term::ImproperList(rest, t) => {
                    items.extend(rest);
                    Term::ImproperList(items, t)
                }
                t if items.is_empty() => t,
                t => Term::ImproperList(items, Box::new(t)),
            }
        }
        Term::Map(pairs) => {
            let mut out: Vec<(String, Term, Term)> = Vec::new();
            for (k, v) in pairs {
                let k = normalize(k);
                let key = to_erlang_text(&k);
                out.retain(|(existing, _, _)| *existing != key);
                out.push((key, k, normalize(v)));
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Term::Map(out.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        other => other.clone(),
    }
}

fn atom_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-zA-Z0-9_@]{0,12}",
        "[A-Z_][a-zA-Z0-9 .-]{0,12}",
        ".{0,12}",
        Just("end".to_string()),
        Just("'quoted\\'".to_string()),
        Just("héllo".to_string()),
    ]
}

fn finite_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        proptest::num::f64::NORMAL,
        proptest::num::f64::ZERO,
        Just(1.5),
        Just(-0.0),
        Just(1e300),
        Just(123456.789),
    ]
}

/// Leaves Erlang can hold; no NaN or infinities.
fn leaf() -> impl Strategy<Value = Term> {
    prop_oneof![
        atom_text().prop_map(Term::Atom),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(Term::Binary),
        ".{0,24}".prop_map(|s: String| Term::Binary(s.into_bytes())),
        "[ -~\t\n]{0,24}".prop_map(|s: String| Term::Binary(s.into_bytes())),
        ".{0,16}".prop_map(Term::Charlist),
        any::<i128>().prop_map(Term::Integer),
        (-1000i128..1000).prop_map(Term::Integer),
        finite_float().prop_map(Term::Float),
    ]
}

/// Any term the parsers could produce, with finite floats, proper tails of improper lists,
/// and shallow nesting.
pub fn arb_term() -> impl Strategy<Value = Term> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        let tail = inner.clone().prop_filter("tail must not be a list", |t| {
            !matches!(
                t,
                Term::List(_) | Term::Charlist(_) | Term::ImproperList(..)
            )
        });
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Term::Tuple),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Term::List),
            (proptest::collection::vec(inner.clone(), 1..4), tail)
                .prop_map(|(items, tail)| Term::ImproperList(items, Box::new(tail))),
            proptest::collection::vec((inner.clone(), inner), 0..4)
                .prop_filter(
                    "keys equal before OTP 27 (-0.0 and 0.0)",
                    |pairs: &Vec<(Term, Term)>| zero_keys_distinct(pairs),
                )
                .prop_map(Term::Map),
        ]
    })
}

/// Whether no two keys differ only in the sign of a zero: before OTP 27, `-0.0 =:= 0.0`, so
/// such keys are one key to `erl` (which one survives is not ours to model) and two to us.
fn zero_keys_distinct(pairs: &[(Term, Term)]) -> bool {
    let texts: Vec<String> = pairs.iter().map(|(k, _)| to_erlang_text(k)).collect();
    texts.iter().enumerate().all(|(i, a)| {
        texts[..i]
            .iter()
            .all(|b| a == b || a.replace("-0.0", "0.0") != b.replace("-0.0", "0.0"))
    })
}

/// A Rust string as an ASCII-only Erlang string literal (`\x{...}` for the rest), for
/// putting arbitrary text on an `erl -eval` command line.
pub fn erl_ascii_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c => out.push_str(&format!("\\x{{{:x}}}", u32::from(c))),
        }
    }
    out.push('"');
    out
}
