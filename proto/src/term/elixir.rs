//! Elixir literal syntax, as `mix.lock` is written (`inspect/2` of maps, tuples, lists,
//! atoms, strings and numbers).

use super::parse::{list, nested, Parser, TokenKind};
use super::scan::{
    describe_char, letter_escape, magnitude, signed, to_char, tokenize, Cursor, Number,
};
use super::{Term, TermError};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// `:foo`, `:"foo bar"`, `true`, `false`, `nil`, `Foo.Bar` (stored as `Elixir.Foo.Bar`).
    Atom(String),
    /// `foo:` or `"foo":`, the key of a keyword pair.
    Key(String),
    Str(Vec<u8>),
    Charlist(String),
    /// `?a` is a [`Number::Char`].
    Num(Number),
    Punct(&'static str),
}

impl TokenKind for Tok {
    const TRAILING_COMMA: bool = true;

    fn describe(&self) -> String {
        match self {
            Tok::Atom(a) => format!("atom :{a}"),
            Tok::Key(k) => format!("keyword key {k}:"),
            Tok::Str(_) => "string".into(),
            Tok::Charlist(_) => "charlist".into(),
            Tok::Num(n) => n.describe().into(),
            Tok::Punct(p) => format!("'{p}'"),
        }
    }

    fn punct(&self) -> Option<&'static str> {
        match self {
            Tok::Punct(p) => Some(p),
            _ => None,
        }
    }

    fn number(&self) -> Option<Number> {
        match self {
            Tok::Num(n) => Some(*n),
            _ => None,
        }
    }
}

/// Reads one Elixir literal term, such as the map that makes up a `mix.lock` file.
///
/// Strings are [`Term::Binary`]; `true`, `false` and `nil` are atoms; keyword lists
/// (`[hex: :cowlib]`, also after positional elements) are lists of `{atom, value}` tuples;
/// `"quoted": v` and `key: v` map keys are atoms, as in Elixir. String interpolation (`#{`),
/// heredocs, sigils other than `~c`, structs, variables and calls are rejected: `mix.lock`
/// never contains them.
pub fn parse_elixir_term(text: &str) -> Result<Term, TermError> {
    let mut parser = Parser::new(text, tokenize(text, '#', token)?);
    let term = parser.term(0)?;
    if !parser.at_end() {
        return Err(parser.unexpected("the end of input after the term"));
    }
    Ok(term)
}

// ---------------------------------------------------------------------------------------------
// Scanner

/// Elixir identifiers may use Unicode letters (`:é` is an atom); this approximates UAX #31
/// with Rust's character classes.
fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '@'
}

/// Lower-case start: a variable, a keyword key or one of `true`/`false`/`nil`.
fn is_lower_ident_start(c: char) -> bool {
    c == '_' || (is_ident_start(c) && !c.is_uppercase())
}

/// Operator atoms `inspect` may print after `:`, longest first so `:===` is not read as
/// `:==` followed by `=`.
const OPERATOR_ATOMS: &[&str] = &[
    "...", "..//", "===", "!==", "<<<", ">>>", "~~~", "<<~", "~>>", "<~>", "<|>", "|||", "&&&",
    "^^^", "==", "!=", "<=", ">=", "=~", "&&", "||", "++", "--", "<>", "|>", "->", "<-", "..",
    "\\\\", "::", "+", "-", "*", "/", "<", ">", "!", "^", "&", "|", "@", ".", "=", "%",
];

/// Punctuation tokens, each before any shorter one it starts with.
const PUNCTUATION: &[&str] = &[
    "%{", "<<", ">>", "=>", "{", "}", "[", "]", ",", "|", "-", "+",
];

/// Scans one token whose first character `c`, at offset `start`, was consumed.
fn token(cur: &mut Cursor<'_>, c: char, start: usize) -> Result<Tok, TermError> {
    let loc = cur.loc(start);
    Ok(match c {
        ':' => colon_atom(cur, start)?,
        '"' => {
            if cur.rest().starts_with("\"\"") {
                return Err(TermError::NotAllowed {
                    at: loc.pos(),
                    what: "heredoc".into(),
                });
            }
            let bytes = units_to_bytes(&cur.quoted('"', start, "string", unit)?);
            if eat_key_colon(cur) {
                let key = String::from_utf8(bytes).map_err(|_| TermError::NotAllowed {
                    at: loc.pos(),
                    what: "a keyword key that is not valid UTF-8".into(),
                })?;
                Tok::Key(key)
            } else {
                Tok::Str(bytes)
            }
        }
        '\'' => Tok::Charlist(units_to_string(&cur.quoted('\'', start, "charlist", unit)?)),
        '~' => match (cur.peek(), cur.peek_nth(1)) {
            (Some('c'), Some(q @ ('"' | '\''))) => {
                cur.bump();
                cur.bump();
                Tok::Charlist(units_to_string(&cur.quoted(q, start, "charlist", unit)?))
            }
            _ => {
                return Err(TermError::NotAllowed {
                    at: loc.pos(),
                    what: "a sigil other than ~c".into(),
                })
            }
        },
        '?' => match cur.bump() {
            Some('\\') => match escape(cur, start)? {
                Some(Unit::Char(c)) => Tok::Num(Number::Char(u32::from(c))),
                Some(Unit::Byte(b)) => Tok::Num(Number::Char(u32::from(b))),
                None => {
                    return Err(TermError::InvalidEscape {
                        at: loc.pos(),
                        sequence: "?\\<newline>".into(),
                    })
                }
            },
            Some(ch) => Tok::Num(Number::Char(u32::from(ch))),
            None => {
                return Err(TermError::UnexpectedEnd {
                    at: loc.pos(),
                    expected: "a character after '?'",
                })
            }
        },
        '0'..='9' => Tok::Num(number(cur, start)?),
        c if is_lower_ident_start(c) => {
            let name = format!("{c}{}", ident(cur));
            if eat_key_colon(cur) {
                Tok::Key(name)
            } else {
                match name.as_str() {
                    "true" | "false" | "nil" => Tok::Atom(name),
                    _ => {
                        return Err(TermError::NotAllowed {
                            at: loc.pos(),
                            what: format!("identifier {name} (variables and calls)"),
                        })
                    }
                }
            }
        }
        c if c.is_ascii_uppercase() => {
            let mut alias = String::from(c);
            loop {
                alias.push_str(cur.eat_while(|n| n.is_ascii_alphanumeric() || n == '_'));
                if cur.peek() == Some('.')
                    && cur.peek_nth(1).is_some_and(|n| n.is_ascii_uppercase())
                {
                    cur.bump();
                    alias.push('.');
                } else {
                    break;
                }
            }
            if !alias.contains('.') && eat_key_colon(cur) {
                Tok::Key(alias)
            } else if alias == "Elixir" || alias.starts_with("Elixir.") {
                Tok::Atom(alias)
            } else {
                Tok::Atom(format!("Elixir.{alias}"))
            }
        }
        '%' if cur.peek() != Some('{') => {
            return Err(TermError::NotAllowed {
                at: loc.pos(),
                what: "a struct".into(),
            })
        }
        other => match cur.punct(other, PUNCTUATION) {
            Some(p) => Tok::Punct(p),
            None => {
                return Err(TermError::Unexpected {
                    at: loc.pos(),
                    found: describe_char(other),
                    expected: "an Elixir literal",
                })
            }
        },
    })
}

/// Consumes the `:` that makes a name or string a keyword key (`::` is not one).
fn eat_key_colon(cur: &mut Cursor<'_>) -> bool {
    cur.peek() == Some(':') && cur.peek_nth(1) != Some(':') && cur.eat(':')
}

/// Identifier characters from here on, and an optional trailing `?` or `!`.
fn ident(cur: &mut Cursor<'_>) -> String {
    let mut name = cur.eat_while(is_ident_char).to_string();
    if let Some(s @ ('?' | '!')) = cur.peek() {
        name.push(s);
        cur.bump();
    }
    name
}

/// An atom after its `:`: `:foo?`, `:"quoted"`, `:Foo`, `:+`.
fn colon_atom(cur: &mut Cursor<'_>, start: usize) -> Result<Tok, TermError> {
    let loc = cur.loc(start);
    match cur.peek() {
        Some(q @ ('"' | '\'')) => {
            cur.bump();
            let units = cur.quoted(q, start, "quoted atom", unit)?;
            let name =
                String::from_utf8(units_to_bytes(&units)).map_err(|_| TermError::NotAllowed {
                    at: loc.pos(),
                    what: "an atom that is not valid UTF-8".into(),
                })?;
            Ok(Tok::Atom(name))
        }
        Some(c) if is_ident_start(c) => Ok(Tok::Atom(ident(cur))),
        _ => {
            for op in OPERATOR_ATOMS {
                if cur.eat_str(op) {
                    return Ok(Tok::Atom((*op).to_string()));
                }
            }
            Err(match cur.peek() {
                Some(c) => TermError::Unexpected {
                    at: cur.position(cur.pos),
                    found: describe_char(c),
                    expected: "an atom name after ':'",
                },
                None => TermError::UnexpectedEnd {
                    at: cur.position(cur.pos),
                    expected: "an atom name after ':'",
                },
            })
        }
    }
}

/// Integers (`1_000`, `0x1F`, `0o17`, `0b101`) and floats (`1.5`, `1.0e-7`).
fn number(cur: &mut Cursor<'_>, start: usize) -> Result<Number, TermError> {
    cur.pos = start;
    let loc = cur.loc(start);
    let radix = match (cur.peek(), cur.peek_nth(1)) {
        (Some('0'), Some('x')) => Some(16),
        (Some('0'), Some('o')) => Some(8),
        (Some('0'), Some('b')) => Some(2),
        _ => None,
    };
    if let Some(radix) = radix {
        cur.bump();
        cur.bump();
        let digits = cur.digits(radix);
        if digits.is_empty() {
            return Err(TermError::InvalidNumber {
                at: loc.pos(),
                text: cur.src.get(start..cur.pos).unwrap_or("").to_string(),
                reason: "no digits after the base prefix",
            });
        }
        return Ok(Number::Int(magnitude(&digits, radix, loc)?));
    }
    let int_digits = cur.digits(10);
    cur.decimal(&int_digits, loc)
}

/// A piece of a quoted literal: `\xFF` in a string is a raw byte, everything else a
/// character (UTF-8 encoded in strings, a code in charlists).
#[derive(Clone, Copy)]
enum Unit {
    Char(char),
    Byte(u8),
}

fn units_to_bytes(units: &[Unit]) -> Vec<u8> {
    let mut out = Vec::with_capacity(units.len());
    for unit in units {
        match *unit {
            Unit::Byte(b) => out.push(b),
            Unit::Char(c) => out.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
        }
    }
    out
}

fn units_to_string(units: &[Unit]) -> String {
    units
        .iter()
        .map(|u| match *u {
            Unit::Char(c) => c,
            Unit::Byte(b) => char::from(b),
        })
        .collect()
}

/// One character `c`, at offset `at`, of a quoted literal, or the escape it starts. `#{`
/// starts interpolation, which a lock file never needs: it is rejected rather than kept as
/// text that Elixir would not produce.
fn unit(cur: &mut Cursor<'_>, c: char, at: usize) -> Result<Option<Unit>, TermError> {
    match c {
        '#' if cur.peek() == Some('{') => Err(TermError::NotAllowed {
            at: cur.position(at),
            what: "string interpolation #{...}".into(),
        }),
        '\\' => escape(cur, at),
        c => Ok(Some(Unit::Char(c))),
    }
}

/// Resolves an escape after its backslash; `None` for a line continuation.
fn escape(cur: &mut Cursor<'_>, esc_start: usize) -> Result<Option<Unit>, TermError> {
    let code = match cur.escaped(esc_start)? {
        '\n' => return Ok(None),
        '\r' if cur.eat('\n') => return Ok(None),
        'a' => 7,
        '0' => 0,
        'x' | 'u' if cur.eat('{') => cur
            .braced_hex(6)
            .ok_or_else(|| cur.invalid_escape(esc_start))?,
        'u' => cur.hex(4).ok_or_else(|| cur.invalid_escape(esc_start))?,
        'x' => {
            // One or two hex digits: a raw byte.
            let digits: String = cur
                .rest()
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .take(2)
                .collect();
            cur.pos += digits.len();
            let byte =
                u8::from_str_radix(&digits, 16).map_err(|_| cur.invalid_escape(esc_start))?;
            return Ok(Some(Unit::Byte(byte)));
        }
        other => letter_escape(other).unwrap_or(u32::from(other)),
    };
    Ok(Some(Unit::Char(to_char(code, cur.loc(esc_start))?)))
}

// ---------------------------------------------------------------------------------------------
// Parser

/// The body of a list or tuple: positional items, the keyword pairs after them (as
/// `{atom, value}` tuples) and a list's `| tail`.
struct Items {
    positional: Vec<Term>,
    keywords: Vec<Term>,
    tail: Option<Term>,
}

/// What one slot of a list, tuple or map body held.
enum Item {
    Positional(Term),
    Keyword(String, Term),
}

impl Parser<'_, Tok> {
    fn term(&mut self, depth: usize) -> Result<Term, TermError> {
        let at = self.loc();
        let Some(tok) = self.peek().cloned() else {
            return Err(self.unexpected("a term"));
        };
        match tok {
            Tok::Atom(a) => {
                self.i += 1;
                Ok(Term::Atom(a))
            }
            Tok::Str(b) => {
                self.i += 1;
                Ok(Term::Binary(b))
            }
            Tok::Charlist(s) => {
                self.i += 1;
                Ok(Term::Charlist(s))
            }
            Tok::Num(_) | Tok::Punct("-" | "+") => self.number(),
            Tok::Punct(p @ ("{" | "[" | "%{" | "<<")) => {
                let depth = nested(depth, at)?;
                self.i += 1;
                match p {
                    "{" => self.tuple(depth),
                    "[" => self.list(depth),
                    "%{" => self.map(depth),
                    _ => self.binary(),
                }
            }
            Tok::Key(_) => Err(self.unexpected("a term (keyword pairs belong in a list)")),
            _ => Err(self.unexpected("a term")),
        }
    }

    /// A positional term or a `key: value` pair.
    fn item(&mut self, depth: usize) -> Result<Item, TermError> {
        if let Some(Tok::Key(k)) = self.peek().cloned() {
            self.i += 1;
            let value = self.term(depth)?;
            Ok(Item::Keyword(k, value))
        } else {
            Ok(Item::Positional(self.term(depth)?))
        }
    }

    /// Items up to `close`, keyword pairs turned into `{atom, value}` tuples. Returns the
    /// positional items and the keyword pairs that followed them; a positional item after a
    /// keyword pair is an error, as in Elixir.
    fn items(
        &mut self,
        depth: usize,
        close: &'static str,
        expected: &'static str,
        allow_tail: bool,
    ) -> Result<Items, TermError> {
        let mut positional = Vec::new();
        let mut keywords = Vec::new();
        let mut tail = None;
        self.seq(close, expected, |p| {
            let at = p.loc();
            match p.item(depth)? {
                Item::Positional(_) if !keywords.is_empty() => {
                    return Err(TermError::NotAllowed {
                        at: at.pos(),
                        what: "a positional element after keyword pairs".into(),
                    });
                }
                Item::Positional(t) => positional.push(t),
                Item::Keyword(k, v) => keywords.push(Term::Tuple(vec![Term::Atom(k), v])),
            }
            if allow_tail && keywords.is_empty() && p.eat_punct("|") {
                tail = Some(p.term(depth)?);
                p.end_of_tail()?;
            }
            Ok(())
        })?;
        Ok(Items {
            positional,
            keywords,
            tail,
        })
    }

    fn list(&mut self, depth: usize) -> Result<Term, TermError> {
        let Items {
            positional: mut items,
            keywords,
            tail,
        } = self.items(depth, "]", "',' or ']' in a list", true)?;
        items.extend(keywords);
        Ok(list(items, tail))
    }

    /// `{a, b: 1}` is `{a, [b: 1]}` in Elixir: trailing keyword pairs form the last element.
    fn tuple(&mut self, depth: usize) -> Result<Term, TermError> {
        let Items {
            positional: mut items,
            keywords,
            ..
        } = self.items(depth, "}", "',' or '}' in a tuple", false)?;
        if !keywords.is_empty() {
            items.push(Term::List(keywords));
        }
        Ok(Term::Tuple(items))
    }

    fn map(&mut self, depth: usize) -> Result<Term, TermError> {
        let mut seen_keyword = false;
        let pairs = self.seq("}", "',' or '}' in a map", |p| {
            let at = p.loc();
            match p.item(depth)? {
                Item::Keyword(k, v) => {
                    seen_keyword = true;
                    Ok((Term::Atom(k), v))
                }
                Item::Positional(_) if seen_keyword => Err(TermError::NotAllowed {
                    at: at.pos(),
                    what: "a `key => value` pair after keyword pairs".into(),
                }),
                Item::Positional(key) => {
                    p.expect_punct("=>", "'=>' after a map key")?;
                    Ok((key, p.term(depth)?))
                }
            }
        })?;
        Ok(Term::Map(pairs))
    }

    /// `<<1, 2, "abc">>`: how `inspect` prints binaries that are not valid UTF-8.
    fn binary(&mut self) -> Result<Term, TermError> {
        let segments = self.seq(">>", "',' or '>>' in a binary", |p| {
            let at = p.loc();
            let bytes = match p.peek().cloned() {
                Some(Tok::Str(b)) => b,
                // Out-of-range values wrap to a byte, as in Elixir.
                Some(Tok::Num(Number::Int(m))) => vec![(m % 256) as u8],
                Some(Tok::Num(Number::Char(c))) => vec![(c % 256) as u8],
                Some(Tok::Punct("-")) => {
                    p.i += 1;
                    match p.peek() {
                        Some(&Tok::Num(Number::Int(m))) => {
                            vec![signed(m, true, at)?.rem_euclid(256) as u8]
                        }
                        _ => return Err(p.unexpected("an integer after '-'")),
                    }
                }
                _ => return Err(p.unexpected("an integer or string in a binary")),
            };
            p.i += 1;
            Ok(bytes)
        })?;
        Ok(Term::Binary(segments.concat()))
    }
}

// Printer

/// Prints `term` the way Elixir's `inspect/1` shows it to an Elixir user — `:atom`, `nil`,
/// `Foo.Bar`, `"string"`, `~c"charlist"`, `[key: value]`, `%{key: value}` — as text that
/// `Code.eval_string/1` reads back as the same value. For messages to Elixir users (compile
/// env values of a Mix project); wire formats stay Erlang text ([`super::to_erlang_text`]).
///
/// Non-finite floats do not exist in Elixir: they are shown as Erlang prints them.
pub fn to_elixir_text(term: &Term) -> String {
    let mut out = String::new();
    print(&mut out, term);
    out
}

fn print(out: &mut String, term: &Term) {
    match term {
        Term::Atom(name) => print_atom(out, name),
        Term::Binary(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => print_quoted(out, text),
            Err(_) => {
                out.push_str("<<");
                for (i, byte) in bytes.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(&byte.to_string());
                }
                out.push_str(">>");
            }
        },
        Term::Charlist(text) => {
            out.push_str("~c");
            print_quoted(out, text);
        }
        Term::Integer(n) => out.push_str(&n.to_string()),
        Term::Float(f) if f.is_finite() => out.push_str(&super::float_text(*f)),
        Term::Float(_) => out.push_str(&super::to_erlang_text(term)),
        Term::Tuple(items) => {
            out.push('{');
            print_seq(out, items);
            out.push('}');
        }
        Term::List(items) => {
            out.push('[');
            if items.iter().all(|item| keyword_pair(item).is_some()) && !items.is_empty() {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let (key, value) = keyword_pair(item).expect("checked");
                    print_key(out, key);
                    print(out, value);
                }
            } else {
                print_seq(out, items);
            }
            out.push(']');
        }
        Term::ImproperList(items, tail) => {
            out.push('[');
            print_seq(out, items);
            out.push_str(" | ");
            print(out, tail);
            out.push(']');
        }
        Term::Map(pairs) => {
            let module = pairs.iter().find_map(|(k, v)| {
                (k.as_atom() == Some("__struct__"))
                    .then(|| v.as_atom()?.strip_prefix("Elixir."))
                    .flatten()
                    .filter(|m| is_alias(m))
            });
            let fields: Vec<&(Term, Term)> = pairs
                .iter()
                .filter(|(k, _)| module.is_none() || k.as_atom() != Some("__struct__"))
                .collect();
            out.push('%');
            if let Some(module) = module {
                out.push_str(module);
            }
            out.push('{');
            let all_atoms = fields.iter().all(|(k, _)| k.as_atom().is_some());
            for (i, (key, value)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                match key.as_atom() {
                    Some(name) if all_atoms => print_key(out, name),
                    _ => {
                        print(out, key);
                        out.push_str(" => ");
                    }
                }
                print(out, value);
            }
            out.push('}');
        }
    }
}

fn print_seq(out: &mut String, items: &[Term]) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        print(out, item);
    }
}

/// `{key, value}` with an atom key: an element of a keyword list.
fn keyword_pair(term: &Term) -> Option<(&str, &Term)> {
    match term {
        Term::Tuple(items) if items.len() == 2 => Some((items[0].as_atom()?, &items[1])),
        _ => None,
    }
}

/// `key: ` or `"odd key": `.
fn print_key(out: &mut String, name: &str) {
    if is_identifier(name) {
        out.push_str(name);
    } else {
        print_quoted(out, name);
    }
    out.push_str(": ");
}

fn print_atom(out: &mut String, name: &str) {
    if matches!(name, "nil" | "true" | "false") {
        out.push_str(name);
    } else if let Some(alias) = name.strip_prefix("Elixir.").filter(|a| is_alias(a)) {
        out.push_str(alias);
    } else {
        out.push(':');
        if is_identifier(name) {
            out.push_str(name);
        } else {
            print_quoted(out, name);
        }
    }
}

/// A name `:name` and `name:` take unquoted: a lowercase letter or `_`, then letters, digits,
/// `_` and `@`, and an optional final `?` or `!`.
fn is_identifier(name: &str) -> bool {
    let body = name.strip_suffix(['?', '!']).unwrap_or(name);
    let mut chars = body.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@')
}

/// `Foo.Bar`: segments each an uppercase letter then letters, digits and `_`.
fn is_alias(name: &str) -> bool {
    name.split('.').all(|segment| {
        let mut chars = segment.chars();
        chars.next().is_some_and(|c| c.is_ascii_uppercase())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// `"text"` with Elixir's escapes (and `#{` escaped so nothing is interpolated).
fn print_quoted(out: &mut String, text: &str) {
    out.push('"');
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '#' if chars.peek() == Some(&'{') => out.push_str("\\#"),
            // Controls, and the bidirectional formatting characters Elixir refuses unescaped
            // in source (and that would reorder a message on screen).
            c if c.is_control()
                || matches!(
                    c,
                    '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{2028}' | '\u{2029}' | '\u{FEFF}'
                )
                || ('\u{202A}'..='\u{202E}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c) =>
            {
                out.push_str(&format!("\\u{{{:X}}}", u32::from(c)))
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod printer_tests {
    use super::*;

    fn show(text: &str) -> String {
        let mut terms = super::super::parse_erlang_terms(&format!("{text}.")).unwrap();
        to_elixir_text(&terms.remove(0))
    }

    #[test]
    fn terms_read_as_an_elixir_user_writes_them() {
        assert_eq!(show("<<\"hello\">>"), "\"hello\"");
        assert_eq!(show("hello"), ":hello");
        assert_eq!(show("nil"), "nil");
        assert_eq!(show("'Elixir.Jason'"), "Jason");
        assert_eq!(show("'hello world'"), ":\"hello world\"");
        assert_eq!(show("\"abc\""), "~c\"abc\"");
        assert_eq!(
            show("[{json_library, 'Elixir.Jason'}, {port, 4000}]"),
            "[json_library: Jason, port: 4000]"
        );
        assert_eq!(show("#{a => 1}"), "%{a: 1}");
        assert_eq!(show("#{<<\"a\">> => 1, b => 2}"), "%{\"a\" => 1, :b => 2}");
        assert_eq!(
            show("#{'__struct__' => 'Elixir.URI', host => nil}"),
            "%URI{host: nil}"
        );
        assert_eq!(show("{ok, 1.0, [1 | 2]}"), "{:ok, 1.0, [1 | 2]}");
        assert_eq!(show("<<1,2,255>>"), "<<1, 2, 255>>");
        assert_eq!(show("<<\"#{x}\">>"), "\"\\#{x}\"");
        assert_eq!(show("[]"), "[]");
    }
}
