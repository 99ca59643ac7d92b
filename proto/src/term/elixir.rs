//! Elixir literal syntax, as `mix.lock` is written (`inspect/2` of maps, tuples, lists,
//! atoms, strings and numbers).

use super::scan::{describe_char, float, magnitude, signed, to_char, Cursor, Loc};
use super::{Position, Term, TermError, MAX_DEPTH};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// `:foo`, `:"foo bar"`, `true`, `false`, `nil`, `Foo.Bar` (stored as `Elixir.Foo.Bar`).
    Atom(String),
    /// `foo:` or `"foo":`, the key of a keyword pair.
    Key(String),
    Str(Vec<u8>),
    Charlist(String),
    /// `?a`: a character code.
    Char(u32),
    Int(u128),
    Float(f64),
    Punct(&'static str),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Atom(a) => format!("atom :{a}"),
            Tok::Key(k) => format!("keyword key {k}:"),
            Tok::Str(_) => "string".into(),
            Tok::Charlist(_) => "charlist".into(),
            Tok::Char(_) => "character literal".into(),
            Tok::Int(_) => "integer".into(),
            Tok::Float(_) => "float".into(),
            Tok::Punct(p) => format!("'{p}'"),
        }
    }
}

struct Token {
    tok: Tok,
    start: usize,
}

/// Reads one Elixir literal term, such as the map that makes up a `mix.lock` file.
///
/// Strings are [`Term::Binary`]; `true`, `false` and `nil` are atoms; keyword lists
/// (`[hex: :cowlib]`, also after positional elements) are lists of `{atom, value}` tuples;
/// `"quoted": v` and `key: v` map keys are atoms, as in Elixir. String interpolation (`#{`),
/// heredocs, sigils other than `~c`, structs, variables and calls are rejected: `mix.lock`
/// never contains them.
pub fn parse_elixir_term(text: &str) -> Result<Term, TermError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        src: text,
        tokens,
        i: 0,
    };
    let term = parser.term(0)?;
    if parser.i < parser.tokens.len() {
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

fn tokenize(text: &str) -> Result<Vec<Token>, TermError> {
    let mut cur = Cursor::new(text);
    let mut tokens = Vec::new();
    loop {
        match cur.peek() {
            None => break,
            Some(c) if c.is_whitespace() || c <= ' ' => {
                cur.bump();
                continue;
            }
            Some('#') => {
                while let Some(c) = cur.bump() {
                    if c == '\n' {
                        break;
                    }
                }
                continue;
            }
            Some(_) => {}
        }
        let start = cur.pos;
        let loc = cur.loc(start);
        let Some(c) = cur.bump() else { break };
        let tok = match c {
            ':' => colon_atom(&mut cur, start)?,
            '"' => {
                if cur.rest().starts_with("\"\"") {
                    return Err(TermError::NotAllowed {
                        at: loc.pos(),
                        what: "heredoc".into(),
                    });
                }
                let units = quoted(&mut cur, '"', start, "string")?;
                let bytes = units_to_bytes(&units);
                if cur.peek() == Some(':') && cur.peek_nth(1) != Some(':') {
                    cur.bump();
                    let key = String::from_utf8(bytes).map_err(|_| TermError::NotAllowed {
                        at: loc.pos(),
                        what: "a keyword key that is not valid UTF-8".into(),
                    })?;
                    Tok::Key(key)
                } else {
                    Tok::Str(bytes)
                }
            }
            '\'' => Tok::Charlist(units_to_string(
                &quoted(&mut cur, '\'', start, "charlist")?,
                loc,
            )?),
            '~' => match (cur.peek(), cur.peek_nth(1)) {
                (Some('c'), Some(q @ ('"' | '\''))) => {
                    cur.bump();
                    cur.bump();
                    let units = quoted(&mut cur, q, start, "charlist")?;
                    Tok::Charlist(units_to_string(&units, loc)?)
                }
                _ => {
                    return Err(TermError::NotAllowed {
                        at: loc.pos(),
                        what: "a sigil other than ~c".into(),
                    })
                }
            },
            '?' => match cur.bump() {
                Some('\\') => {
                    let unit = escape(&mut cur, start)?;
                    match unit {
                        Some(Unit::Char(c)) => Tok::Char(c),
                        Some(Unit::Byte(b)) => Tok::Char(u32::from(b)),
                        None => {
                            return Err(TermError::InvalidEscape {
                                at: loc.pos(),
                                sequence: "?\\<newline>".into(),
                            })
                        }
                    }
                }
                Some(ch) => Tok::Char(u32::from(ch)),
                None => {
                    return Err(TermError::UnexpectedEnd {
                        at: loc.pos(),
                        expected: "a character after '?'",
                    })
                }
            },
            '0'..='9' => number(&mut cur, start)?,
            c if is_lower_ident_start(c) => {
                let mut name = String::from(c);
                while let Some(n) = cur.peek().filter(|&n| is_ident_char(n)) {
                    name.push(n);
                    cur.bump();
                }
                if let Some(s @ ('?' | '!')) = cur.peek() {
                    name.push(s);
                    cur.bump();
                }
                if cur.peek() == Some(':') && cur.peek_nth(1) != Some(':') {
                    cur.bump();
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
                    while let Some(n) = cur
                        .peek()
                        .filter(|&n| n.is_ascii_alphanumeric() || n == '_')
                    {
                        alias.push(n);
                        cur.bump();
                    }
                    if cur.peek() == Some('.')
                        && cur.peek_nth(1).is_some_and(|n| n.is_ascii_uppercase())
                    {
                        cur.bump();
                        alias.push('.');
                    } else {
                        break;
                    }
                }
                if cur.peek() == Some(':') && cur.peek_nth(1) != Some(':') && !alias.contains('.') {
                    cur.bump();
                    Tok::Key(alias)
                } else if alias == "Elixir" || alias.starts_with("Elixir.") {
                    Tok::Atom(alias)
                } else {
                    Tok::Atom(format!("Elixir.{alias}"))
                }
            }
            '%' => {
                if cur.eat('{') {
                    Tok::Punct("%{")
                } else {
                    return Err(TermError::NotAllowed {
                        at: loc.pos(),
                        what: "a struct".into(),
                    });
                }
            }
            '<' if cur.eat('<') => Tok::Punct("<<"),
            '>' if cur.eat('>') => Tok::Punct(">>"),
            '=' if cur.eat('>') => Tok::Punct("=>"),
            '{' => Tok::Punct("{"),
            '}' => Tok::Punct("}"),
            '[' => Tok::Punct("["),
            ']' => Tok::Punct("]"),
            ',' => Tok::Punct(","),
            '|' => Tok::Punct("|"),
            '-' => Tok::Punct("-"),
            '+' => Tok::Punct("+"),
            other => {
                return Err(TermError::Unexpected {
                    at: loc.pos(),
                    found: describe_char(other),
                    expected: "an Elixir literal",
                })
            }
        };
        tokens.push(Token { tok, start });
    }
    Ok(tokens)
}

/// An atom after its `:`: `:foo?`, `:"quoted"`, `:Foo`, `:+`.
fn colon_atom(cur: &mut Cursor<'_>, start: usize) -> Result<Tok, TermError> {
    let loc = cur.loc(start);
    match cur.peek() {
        Some(q @ ('"' | '\'')) => {
            cur.bump();
            let units = quoted(cur, q, start, "quoted atom")?;
            let name =
                String::from_utf8(units_to_bytes(&units)).map_err(|_| TermError::NotAllowed {
                    at: loc.pos(),
                    what: "an atom that is not valid UTF-8".into(),
                })?;
            Ok(Tok::Atom(name))
        }
        Some(c) if is_ident_start(c) => {
            let mut name = String::new();
            while let Some(n) = cur.peek().filter(|&n| is_ident_char(n)) {
                name.push(n);
                cur.bump();
            }
            if let Some(s @ ('?' | '!')) = cur.peek() {
                name.push(s);
                cur.bump();
            }
            Ok(Tok::Atom(name))
        }
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
fn number(cur: &mut Cursor<'_>, start: usize) -> Result<Tok, TermError> {
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
        return Ok(Tok::Int(magnitude(&digits, radix, loc)?));
    }
    let int_digits = cur.digits(10);
    if cur.peek() == Some('.') && cur.peek_nth(1).is_some_and(|c| c.is_ascii_digit()) {
        cur.bump();
        let frac = cur.digits(10);
        let mut text = format!("{int_digits}.{frac}");
        if matches!(cur.peek(), Some('e' | 'E')) {
            let save = cur.pos;
            cur.bump();
            let mut exp = String::from("e");
            if let Some(sign @ ('+' | '-')) = cur.peek() {
                exp.push(sign);
                cur.bump();
            }
            let exp_digits = cur.digits(10);
            if exp_digits.is_empty() {
                cur.pos = save;
            } else {
                text.push_str(&exp);
                text.push_str(&exp_digits);
            }
        }
        return Ok(Tok::Float(float(&text, loc)?));
    }
    Ok(Tok::Int(magnitude(&int_digits, 10, loc)?))
}

/// A piece of a quoted literal: `\xFF` in a string is a raw byte, everything else a
/// character (UTF-8 encoded in strings, a code in charlists).
#[derive(Clone, Copy)]
enum Unit {
    Char(u32),
    Byte(u8),
}

fn units_to_bytes(units: &[Unit]) -> Vec<u8> {
    let mut out = Vec::with_capacity(units.len());
    for unit in units {
        match *unit {
            Unit::Byte(b) => out.push(b),
            Unit::Char(c) => {
                // Codes were checked when scanned; the fallback is unreachable.
                let ch = char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER);
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

fn units_to_string(units: &[Unit], loc: Loc<'_>) -> Result<String, TermError> {
    units
        .iter()
        .map(|u| match *u {
            Unit::Char(c) => to_char(c, loc),
            Unit::Byte(b) => Ok(char::from(b)),
        })
        .collect()
}

/// Scans a quoted literal after its opening quote. `#{` starts interpolation, which a lock
/// file never needs: it is rejected rather than kept as text that Elixir would not produce.
fn quoted(
    cur: &mut Cursor<'_>,
    quote: char,
    start: usize,
    what: &'static str,
) -> Result<Vec<Unit>, TermError> {
    let mut units = Vec::new();
    loop {
        let here = cur.pos;
        match cur.bump() {
            None => {
                return Err(TermError::Unterminated {
                    at: cur.position(start),
                    what,
                })
            }
            Some(c) if c == quote => return Ok(units),
            Some('#') if cur.peek() == Some('{') => {
                return Err(TermError::NotAllowed {
                    at: cur.position(here),
                    what: "string interpolation #{...}".into(),
                })
            }
            Some('\\') => {
                if let Some(unit) = escape(cur, here)? {
                    units.push(unit);
                }
            }
            Some(c) => units.push(Unit::Char(u32::from(c))),
        }
    }
}

/// Resolves an escape after its backslash; `None` for a line continuation.
fn escape(cur: &mut Cursor<'_>, esc_start: usize) -> Result<Option<Unit>, TermError> {
    let invalid = |cur: &Cursor<'_>| TermError::InvalidEscape {
        at: cur.position(esc_start),
        sequence: cur
            .src
            .get(esc_start..cur.pos)
            .unwrap_or("\\")
            .chars()
            .take(12)
            .collect(),
    };
    let Some(c) = cur.bump() else {
        return Err(TermError::Unterminated {
            at: cur.position(esc_start),
            what: "escape sequence",
        });
    };
    let code = match c {
        '\n' => return Ok(None),
        '\r' if cur.eat('\n') => return Ok(None),
        'a' => 7,
        'b' => 8,
        'd' => 127,
        'e' => 27,
        'f' => 12,
        'n' => 10,
        'r' => 13,
        's' => 32,
        't' => 9,
        'v' => 11,
        '0' => 0,
        'x' => {
            if cur.eat('{') {
                let code = braced_hex(cur).ok_or_else(|| invalid(cur))?;
                return Ok(Some(Unit::Char(check_code(code, cur, esc_start)?)));
            }
            let mut value: u32 = 0;
            let mut n = 0;
            while n < 2 {
                match cur.peek().and_then(|d| d.to_digit(16)) {
                    Some(d) => {
                        value = value * 16 + d;
                        cur.bump();
                        n += 1;
                    }
                    None => break,
                }
            }
            if n == 0 {
                return Err(invalid(cur));
            }
            return Ok(Some(Unit::Byte(u8::try_from(value).unwrap_or(0))));
        }
        'u' => {
            let code = if cur.eat('{') {
                braced_hex(cur).ok_or_else(|| invalid(cur))?
            } else {
                let mut value: u32 = 0;
                for _ in 0..4 {
                    match cur.bump().and_then(|d| d.to_digit(16)) {
                        Some(d) => value = value * 16 + d,
                        None => return Err(invalid(cur)),
                    }
                }
                value
            };
            check_code(code, cur, esc_start)?
        }
        other => u32::from(other),
    };
    Ok(Some(Unit::Char(code)))
}

/// 1 to 6 hex digits and a closing `}`.
fn braced_hex(cur: &mut Cursor<'_>) -> Option<u32> {
    let mut value: u32 = 0;
    let mut n = 0;
    loop {
        match cur.bump()? {
            '}' if n > 0 => return Some(value),
            d if n < 6 => {
                value = value * 16 + d.to_digit(16)?;
                n += 1;
            }
            _ => return None,
        }
    }
}

fn check_code(code: u32, cur: &Cursor<'_>, at: usize) -> Result<u32, TermError> {
    char::from_u32(code)
        .map(u32::from)
        .ok_or_else(|| TermError::InvalidCodepoint {
            at: cur.position(at),
            code: u64::from(code),
        })
}

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser<'a> {
    src: &'a str,
    tokens: Vec<Token>,
    i: usize,
}

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

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.i).map(|t| &t.tok)
    }

    fn loc(&self) -> Loc<'a> {
        Loc {
            src: self.src,
            offset: self.tokens.get(self.i).map_or(self.src.len(), |t| t.start),
        }
    }

    fn at(&self) -> Position {
        self.loc().pos()
    }

    fn unexpected(&self, expected: &'static str) -> TermError {
        match self.peek() {
            Some(t) => TermError::Unexpected {
                at: self.at(),
                found: t.describe(),
                expected,
            },
            None => TermError::UnexpectedEnd {
                at: self.at(),
                expected,
            },
        }
    }

    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Some(Tok::Punct(q)) if *q == p)
    }

    fn expect_punct(&mut self, p: &'static str, expected: &'static str) -> Result<(), TermError> {
        if self.is_punct(p) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn term(&mut self, depth: usize) -> Result<Term, TermError> {
        let start = self.loc().offset;
        let src = self.src;
        let at = Loc { src, offset: start };
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
            Tok::Char(c) => {
                self.i += 1;
                Ok(Term::Integer(i128::from(c)))
            }
            Tok::Int(m) => {
                self.i += 1;
                Ok(Term::Integer(signed(m, false, at)?))
            }
            Tok::Float(f) => {
                self.i += 1;
                Ok(Term::Float(f))
            }
            Tok::Punct(p @ ("-" | "+")) => {
                self.i += 1;
                let negative = p == "-";
                let tok = self.peek().cloned();
                let term = match tok {
                    Some(Tok::Int(m)) => Term::Integer(signed(m, negative, at)?),
                    Some(Tok::Char(c)) => {
                        let v = i128::from(c);
                        Term::Integer(if negative { -v } else { v })
                    }
                    Some(Tok::Float(f)) => Term::Float(if negative { -f } else { f }),
                    _ => return Err(self.unexpected("a number after the sign")),
                };
                self.i += 1;
                Ok(term)
            }
            Tok::Punct(p @ ("{" | "[" | "%{" | "<<")) => {
                if depth >= MAX_DEPTH {
                    return Err(TermError::TooDeep {
                        at: at.pos(),
                        max: MAX_DEPTH,
                    });
                }
                self.i += 1;
                match p {
                    "{" => self.tuple(depth + 1),
                    "[" => self.list(depth + 1),
                    "%{" => self.map(depth + 1),
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
        loop {
            if self.is_punct(close) {
                self.i += 1;
                break;
            }
            let at = self.loc();
            match self.item(depth)? {
                Item::Positional(t) => {
                    if !keywords.is_empty() {
                        return Err(TermError::NotAllowed {
                            at: at.pos(),
                            what: "a positional element after keyword pairs".into(),
                        });
                    }
                    positional.push(t);
                }
                Item::Keyword(k, v) => keywords.push(Term::Tuple(vec![Term::Atom(k), v])),
            }
            if self.is_punct(",") {
                self.i += 1;
            } else if allow_tail && self.is_punct("|") && keywords.is_empty() {
                self.i += 1;
                tail = Some(self.term(depth)?);
                self.expect_punct(close, "']' after the tail of a list")?;
                break;
            } else {
                self.expect_punct(close, expected)?;
                break;
            }
        }
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
        Ok(match tail {
            None => Term::List(items),
            Some(Term::List(rest)) => {
                items.extend(rest);
                Term::List(items)
            }
            Some(Term::ImproperList(rest, t)) => {
                items.extend(rest);
                Term::ImproperList(items, t)
            }
            Some(other) => Term::ImproperList(items, Box::new(other)),
        })
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
        let mut pairs = Vec::new();
        let mut seen_keyword = false;
        loop {
            if self.is_punct("}") {
                self.i += 1;
                return Ok(Term::Map(pairs));
            }
            let at = self.loc();
            match self.item(depth)? {
                Item::Keyword(k, v) => {
                    seen_keyword = true;
                    pairs.push((Term::Atom(k), v));
                }
                Item::Positional(key) => {
                    if seen_keyword {
                        return Err(TermError::NotAllowed {
                            at: at.pos(),
                            what: "a `key => value` pair after keyword pairs".into(),
                        });
                    }
                    self.expect_punct("=>", "'=>' after a map key")?;
                    let value = self.term(depth)?;
                    pairs.push((key, value));
                }
            }
            if self.is_punct(",") {
                self.i += 1;
            } else {
                self.expect_punct("}", "',' or '}' in a map")?;
                return Ok(Term::Map(pairs));
            }
        }
    }

    /// `<<1, 2, "abc">>`: how `inspect` prints binaries that are not valid UTF-8.
    fn binary(&mut self) -> Result<Term, TermError> {
        let mut bytes = Vec::new();
        loop {
            if self.is_punct(">>") {
                self.i += 1;
                return Ok(Term::Binary(bytes));
            }
            let at = self.loc();
            match self.peek().cloned() {
                Some(Tok::Str(b)) => bytes.extend_from_slice(&b),
                Some(Tok::Int(m)) => {
                    // Out-of-range values wrap to a byte, as in Elixir.
                    bytes.push((m % 256) as u8);
                }
                Some(Tok::Char(c)) => bytes.push((c % 256) as u8),
                Some(Tok::Punct("-")) => {
                    self.i += 1;
                    match self.peek().cloned() {
                        Some(Tok::Int(m)) => {
                            let v = signed(m, true, at)?;
                            bytes.push(v.rem_euclid(256) as u8);
                        }
                        _ => return Err(self.unexpected("an integer after '-'")),
                    }
                }
                _ => return Err(self.unexpected("an integer or string in a binary")),
            }
            self.i += 1;
            if self.is_punct(",") {
                self.i += 1;
            } else {
                self.expect_punct(">>", "',' or '>>' in a binary")?;
                return Ok(Term::Binary(bytes));
            }
        }
    }
}
