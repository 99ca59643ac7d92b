//! Erlang and Elixir term text: one value type for both syntaxes.
//!
//! Hex speaks Erlang term text in `metadata.config`, `.app`/`.app.src` files and
//! `rebar.config`, and Elixir literal syntax in `mix.lock`. Both are read into [`Term`], so the
//! modules above this one ([`crate::metadata`], [`crate::lock`]) deal with one shape.
//!
//! - [`parse_erlang_terms`] reads the `file:consult` format (what `io_lib:format("~p.~n")`,
//!   `~tp` and `io_lib_pretty` write, plus hand-written files).
//! - [`to_erlang_text`] prints a term so that `erl_parse:parse_term`, `file:consult` and
//!   hex_core's restricted `safe_erl_term` scanner read the same value back.
//! - [`parse_elixir_term`] reads one Elixir literal, as found in `mix.lock`.
//!
//! The parsers never panic and cap nesting at [`MAX_DEPTH`] so hostile input cannot exhaust
//! the stack.

mod elixir;
mod erlang;
mod parse;
mod scan;

pub use elixir::{parse_elixir_term, to_elixir_text};
pub use erlang::{parse_erlang_terms, to_erlang_text};

use std::fmt;

/// Deepest nesting of tuples, lists, maps and binaries the parsers accept. Real files nest a
/// handful of levels; the cap keeps recursion bounded on hostile input.
pub const MAX_DEPTH: usize = 256;

/// One Erlang or Elixir value.
///
/// Integers are `i128`: Erlang integers are unbounded, but anything in the files we read fits,
/// and literals that do not fit are reported as [`TermError::IntegerOverflow`] rather than
/// truncated.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// `foo`, `'hello world'`, `:foo`, `true`, `nil`; Elixir aliases such as `Hex.SCM` are
    /// stored with their `Elixir.` prefix, as the VM does.
    Atom(String),
    /// `<<"abc">>` in Erlang; every `"string"` in Elixir.
    Binary(Vec<u8>),
    /// An Erlang `"string"` (a list of character codes) or an Elixir `'charlist'` / `~c"..."`.
    Charlist(String),
    Integer(i128),
    /// Always finite when produced by the parsers.
    Float(f64),
    Tuple(Vec<Term>),
    /// A proper list. `[]` is `List(vec![])`; an Erlang `""` parses as `Charlist("")`.
    List(Vec<Term>),
    /// `[a, b | tail]`. The parsers only produce it when the tail is not itself a list.
    ImproperList(Vec<Term>, Box<Term>),
    /// Key/value pairs in source order. Duplicate keys are kept as written.
    Map(Vec<(Term, Term)>),
}

/// A finite float as both Erlang and Elixir read it back: the shortest text that gives the
/// same f64 (Rust's `Debug`), with a digit on both sides of the point (`1.0`, `1.0e20`).
fn float_text(f: f64) -> String {
    let text = format!("{f:?}");
    match text.split_once('e') {
        Some((mantissa, exp)) if !mantissa.contains('.') => format!("{mantissa}.0e{exp}"),
        Some(_) => text,
        None if text.contains('.') => text,
        None => format!("{text}.0"),
    }
}

/// The language a person reads terms in: an Elixir user's (a Mix project's config) or an
/// Erlang user's (a rebar3 project's). Messages show values in it; wire formats are always
/// Erlang text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    Elixir,
    Erlang,
}

impl Syntax {
    /// `term` as this syntax writes it.
    pub fn print(self, term: &Term) -> String {
        match self {
            Syntax::Elixir => to_elixir_text(term),
            Syntax::Erlang => to_erlang_text(term),
        }
    }

    /// [`Syntax::print`], cut to 60 characters: for messages.
    pub fn summary(self, term: &Term) -> String {
        let text = self.print(term);
        if text.chars().count() > 60 {
            let short: String = text.chars().take(57).collect();
            format!("{short}...")
        } else {
            text
        }
    }
}

impl Term {
    /// The term as Erlang text, cut to 60 characters: for error messages.
    pub fn summary(&self) -> String {
        Syntax::Erlang.summary(self)
    }

    /// The atom's name, if this is an atom.
    pub fn as_atom(&self) -> Option<&str> {
        match self {
            Term::Atom(a) => Some(a),
            _ => None,
        }
    }

    /// Text of a binary that is valid UTF-8, or of a charlist: the two ways a string is
    /// spelled in term files.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Term::Binary(b) => std::str::from_utf8(b).ok(),
            Term::Charlist(s) => Some(s),
            _ => None,
        }
    }

    /// The raw bytes of a binary.
    pub fn as_binary(&self) -> Option<&[u8]> {
        match self {
            Term::Binary(b) => Some(b),
            _ => None,
        }
    }

    /// Elements of a proper list. The empty charlist `""` is the empty list too.
    pub fn as_list(&self) -> Option<&[Term]> {
        match self {
            Term::List(items) => Some(items),
            Term::Charlist(s) if s.is_empty() => Some(&[]),
            _ => None,
        }
    }

    /// Elements of a tuple.
    pub fn as_tuple(&self) -> Option<&[Term]> {
        match self {
            Term::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// Pairs of a map.
    pub fn as_map(&self) -> Option<&[(Term, Term)]> {
        match self {
            Term::Map(pairs) => Some(pairs),
            _ => None,
        }
    }

    /// The integer's value.
    pub fn as_integer(&self) -> Option<i128> {
        match self {
            Term::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// `true` or `false` atoms.
    pub fn as_bool(&self) -> Option<bool> {
        match self.as_atom() {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        }
    }

    /// Whether this term names `key`: an atom, a UTF-8 binary or a charlist with that text.
    /// Term files spell keys all three ways (`{name, ...}`, `{<<"name">>, ...}`, `name: ...`).
    pub fn is_key(&self, key: &str) -> bool {
        match self {
            Term::Atom(a) => a == key,
            Term::Binary(b) => b == key.as_bytes(),
            Term::Charlist(s) => s == key,
            _ => false,
        }
    }

    /// The value of the first `{key, value}` tuple of a proplist (or keyword list), or of the
    /// first pair of a map, whose key is the atom, binary or charlist `key`.
    ///
    /// Bare atoms in a proplist (which `proplists` reads as `{atom, true}`) are not matched.
    pub fn proplist_get(&self, key: &str) -> Option<&Term> {
        match self {
            Term::List(items) => items.iter().find_map(|item| match item.as_tuple() {
                Some([k, v]) if k.is_key(key) => Some(v),
                _ => None,
            }),
            Term::Map(pairs) => pairs
                .iter()
                .find_map(|(k, v)| if k.is_key(key) { Some(v) } else { None }),
            _ => None,
        }
    }

    /// Shorthand for building an atom.
    pub fn atom(name: impl Into<String>) -> Term {
        Term::Atom(name.into())
    }

    /// Shorthand for building a binary from text.
    pub fn binary(text: impl AsRef<[u8]>) -> Term {
        Term::Binary(text.as_ref().to_vec())
    }
}

/// A place in the text, both 1-based; the column counts characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// Line and column of byte `offset` of `text`. Offsets past the end or inside a character
    /// are clamped, so this never panics.
    pub fn of(text: &str, offset: usize) -> Position {
        let mut line = 1;
        let mut column = 1;
        for (i, c) in text.char_indices() {
            if i >= offset {
                break;
            }
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        Position { line, column }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why a term text could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermError {
    #[error("{at}: unexpected {found}, expected {expected}")]
    Unexpected {
        at: Position,
        found: String,
        expected: &'static str,
    },
    #[error("{at}: unexpected end of input, expected {expected}")]
    UnexpectedEnd {
        at: Position,
        expected: &'static str,
    },
    #[error("{at}: unterminated {what}")]
    Unterminated { at: Position, what: &'static str },
    #[error("{at}: invalid escape sequence {sequence}")]
    InvalidEscape { at: Position, sequence: String },
    #[error("{at}: character code {code} is not a Unicode scalar value")]
    InvalidCodepoint { at: Position, code: u64 },
    #[error("{at}: integer {text} does not fit in 128 bits")]
    IntegerOverflow { at: Position, text: String },
    #[error("{at}: invalid number {text}: {reason}")]
    InvalidNumber {
        at: Position,
        text: String,
        reason: &'static str,
    },
    #[error("{at}: nesting deeper than {max} levels")]
    TooDeep { at: Position, max: usize },
    #[error("{at}: {what} is not allowed in a literal term")]
    NotAllowed { at: Position, what: String },
    #[error("{at}: invalid binary element: {reason}")]
    InvalidBinary { at: Position, reason: String },
}
