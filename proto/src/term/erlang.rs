//! Erlang term text: the `file:consult` format and a printer for it.

use super::scan::{describe_char, float, magnitude, signed, to_char, Cursor, Loc};
use super::{Position, Term, TermError, MAX_DEPTH};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Atom(String),
    Var(String),
    /// Character codes; not yet checked to be Unicode scalar values.
    Str(Vec<u32>),
    Char(u32),
    Int(u128),
    Float(f64),
    /// `.` followed by whitespace, a comment or the end: ends a term.
    Dot,
    Punct(&'static str),
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    start: usize,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Atom(a) => format!("atom '{a}'"),
            Tok::Var(v) => format!("variable {v}"),
            Tok::Str(_) => "string".into(),
            Tok::Char(_) => "character literal".into(),
            Tok::Int(_) => "integer".into(),
            Tok::Float(_) => "float".into(),
            Tok::Dot => "'.'".into(),
            Tok::Punct(p) => format!("'{p}'"),
        }
    }
}

/// Reads a sequence of Erlang terms, each ending with `.`, as `file:consult/1` does.
///
/// Accepts what `io_lib:format("~p.~n")`, `~tp` and `io_lib_pretty` print for data (atoms,
/// numbers, strings, binaries, tuples, lists, maps) and hand-written `.app`, `.app.src` and
/// `rebar.config` files. Pids, references, funs, records, variables and expressions other
/// than a sign on a number are rejected.
pub fn parse_erlang_terms(text: &str) -> Result<Vec<Term>, TermError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        src: text,
        tokens,
        i: 0,
    };
    let mut terms = Vec::new();
    while parser.i < parser.tokens.len() {
        let term = parser.term(0)?;
        parser.expect_dot()?;
        terms.push(term);
    }
    Ok(terms)
}

// ---------------------------------------------------------------------------------------------
// Scanner

fn is_atom_start(c: char) -> bool {
    c.is_ascii_lowercase() || (('\u{df}'..='\u{ff}').contains(&c) && c != '\u{f7}')
}

fn is_var_start(c: char) -> bool {
    c.is_ascii_uppercase() || c == '_' || (('\u{c0}'..='\u{de}').contains(&c) && c != '\u{d7}')
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || c == '_'
        || c == '@'
        || (('\u{c0}'..='\u{ff}').contains(&c) && c != '\u{d7}' && c != '\u{f7}')
}

fn tokenize(text: &str) -> Result<Vec<Token>, TermError> {
    let mut cur = Cursor::new(text);
    let mut tokens = Vec::new();
    loop {
        // Whitespace and comments.
        match cur.peek() {
            None => break,
            Some(c) if c <= ' ' || c.is_whitespace() => {
                cur.bump();
                continue;
            }
            Some('%') => {
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
            c if is_atom_start(c) => {
                let mut name = String::from(c);
                while let Some(n) = cur.peek().filter(|&n| is_name_char(n)) {
                    name.push(n);
                    cur.bump();
                }
                Tok::Atom(name)
            }
            c if is_var_start(c) => {
                let mut name = String::from(c);
                while let Some(n) = cur.peek().filter(|&n| is_name_char(n)) {
                    name.push(n);
                    cur.bump();
                }
                Tok::Var(name)
            }
            '0'..='9' => number(&mut cur, start)?,
            '\'' => {
                let codes = quoted(&mut cur, '\'', start, "quoted atom")?;
                let mut name = String::with_capacity(codes.len());
                for code in codes {
                    name.push(to_char(code, loc)?);
                }
                Tok::Atom(name)
            }
            '"' => Tok::Str(quoted(&mut cur, '"', start, "string")?),
            '$' => match cur.bump() {
                None => {
                    return Err(TermError::UnexpectedEnd {
                        at: loc.pos(),
                        expected: "a character after '$'",
                    })
                }
                Some('\\') => Tok::Char(escape(&mut cur, start)?),
                Some(ch) => Tok::Char(u32::from(ch)),
            },
            '.' => match cur.peek() {
                None | Some('%') => Tok::Dot,
                Some(n) if n <= ' ' || n.is_whitespace() => Tok::Dot,
                Some(_) => Tok::Punct("."),
            },
            '<' if cur.eat('<') => Tok::Punct("<<"),
            '>' if cur.eat('>') => Tok::Punct(">>"),
            '=' if cur.eat('>') => Tok::Punct("=>"),
            ':' if cur.eat('=') => Tok::Punct(":="),
            '=' => Tok::Punct("="),
            '{' => Tok::Punct("{"),
            '}' => Tok::Punct("}"),
            '[' => Tok::Punct("["),
            ']' => Tok::Punct("]"),
            '(' => Tok::Punct("("),
            ')' => Tok::Punct(")"),
            ',' => Tok::Punct(","),
            '|' => Tok::Punct("|"),
            '#' => Tok::Punct("#"),
            '/' => Tok::Punct("/"),
            ':' => Tok::Punct(":"),
            '-' => Tok::Punct("-"),
            '+' => Tok::Punct("+"),
            other => {
                return Err(TermError::Unexpected {
                    at: loc.pos(),
                    found: describe_char(other),
                    expected: "a term",
                })
            }
        };
        tokens.push(Token { tok, start });
    }
    Ok(tokens)
}

/// Scans a number whose first digit was consumed: decimal or `Radix#Digits` integers and
/// floats such as `1.5e-3`.
fn number(cur: &mut Cursor<'_>, start: usize) -> Result<Tok, TermError> {
    cur.pos = start;
    let at = cur.loc(start);
    let int_digits = cur.digits(10);
    if cur.peek() == Some('#') && cur.peek_nth(1).is_some_and(|c| c.is_ascii_alphanumeric()) {
        let radix = int_digits
            .parse::<u32>()
            .ok()
            .filter(|r| (2..=36).contains(r))
            .ok_or_else(|| TermError::InvalidNumber {
                at: at.pos(),
                text: format!("{int_digits}#"),
                reason: "radix must be between 2 and 36",
            })?;
        cur.bump();
        let digits = cur.digits(radix);
        if digits.is_empty() {
            return Err(TermError::InvalidNumber {
                at: at.pos(),
                text: format!("{radix}#"),
                reason: "no digits after the radix",
            });
        }
        if cur.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
            return Err(TermError::InvalidNumber {
                at: at.pos(),
                text: cur.src.get(start..cur.pos + 1).unwrap_or("").to_string(),
                reason: "digit out of range for the radix",
            });
        }
        return Ok(Tok::Int(magnitude(&digits, radix, at)?));
    }
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
                // `1.5e` is the float 1.5 followed by the atom `e`, which the parser rejects.
                cur.pos = save;
            } else {
                text.push_str(&exp);
                text.push_str(&exp_digits);
            }
        }
        return Ok(Tok::Float(float(&text, at)?));
    }
    Ok(Tok::Int(magnitude(&int_digits, 10, at)?))
}

/// Scans the body of a quoted atom or string after its opening quote, resolving escapes.
fn quoted(
    cur: &mut Cursor<'_>,
    quote: char,
    start: usize,
    what: &'static str,
) -> Result<Vec<u32>, TermError> {
    let mut codes = Vec::new();
    loop {
        match cur.bump() {
            None => {
                return Err(TermError::Unterminated {
                    at: cur.position(start),
                    what,
                })
            }
            Some(c) if c == quote => return Ok(codes),
            Some('\\') => {
                let esc_start = cur.pos - 1;
                codes.push(escape(cur, esc_start)?);
            }
            Some(c) => codes.push(u32::from(c)),
        }
    }
}

/// Resolves an escape sequence after its backslash, as `erl_scan` does.
fn escape(cur: &mut Cursor<'_>, esc_start: usize) -> Result<u32, TermError> {
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
    Ok(match c {
        '0'..='7' => {
            let mut value = c as u32 - '0' as u32;
            for _ in 0..2 {
                match cur.peek() {
                    Some(d @ '0'..='7') => {
                        value = value * 8 + (d as u32 - '0' as u32);
                        cur.bump();
                    }
                    _ => break,
                }
            }
            value
        }
        'x' => {
            if cur.eat('{') {
                let mut value: u32 = 0;
                let mut n = 0;
                loop {
                    match cur.bump() {
                        Some('}') if n > 0 => break,
                        Some(d) if d.is_ascii_hexdigit() && n < 8 => {
                            value = value * 16 + d.to_digit(16).unwrap_or(0);
                            n += 1;
                        }
                        _ => return Err(invalid(cur)),
                    }
                }
                if value > 0x10FFFF {
                    return Err(invalid(cur));
                }
                value
            } else {
                let mut value = 0;
                for _ in 0..2 {
                    match cur.bump() {
                        Some(d) if d.is_ascii_hexdigit() => {
                            value = value * 16 + d.to_digit(16).unwrap_or(0);
                        }
                        _ => return Err(invalid(cur)),
                    }
                }
                value
            }
        }
        '^' => match cur.bump() {
            Some(ch) => u32::from(ch) & 31,
            None => return Err(invalid(cur)),
        },
        'b' => 8,
        'd' => 127,
        'e' => 27,
        'f' => 12,
        'n' => 10,
        'r' => 13,
        's' => 32,
        't' => 9,
        'v' => 11,
        other => u32::from(other),
    })
}

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser<'a> {
    src: &'a str,
    tokens: Vec<Token>,
    i: usize,
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

    fn expect_dot(&mut self) -> Result<(), TermError> {
        if self.peek() == Some(&Tok::Dot) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.unexpected("'.' ending the term"))
        }
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.i).map(|t| t.tok.clone());
        self.i += 1;
        t
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
            Tok::Var(v) => Err(TermError::NotAllowed {
                at: at.pos(),
                what: format!("variable {v}"),
            }),
            Tok::Str(_) => {
                let codes = self.strings();
                Ok(codes_to_term(codes))
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
                match self.next() {
                    Some(Tok::Int(m)) => Ok(Term::Integer(signed(m, negative, at)?)),
                    Some(Tok::Char(c)) => {
                        let v = i128::from(c);
                        Ok(Term::Integer(if negative { -v } else { v }))
                    }
                    Some(Tok::Float(f)) => Ok(Term::Float(if negative { -f } else { f })),
                    _ => {
                        self.i -= 1;
                        Err(self.unexpected("a number after the sign"))
                    }
                }
            }
            Tok::Punct(p @ ("{" | "[" | "<<" | "#")) => {
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
                    "<<" => self.binary(),
                    _ => {
                        if let Some(Tok::Atom(name)) = self.peek() {
                            return Err(TermError::NotAllowed {
                                at: at.pos(),
                                what: format!("record #{name}"),
                            });
                        }
                        self.expect_punct("{", "'{' after '#' to open a map")?;
                        self.map(depth + 1)
                    }
                }
            }
            _ => Err(self.unexpected("a term")),
        }
    }

    /// Adjacent string literals, concatenated as the Erlang scanner does.
    fn strings(&mut self) -> Vec<u32> {
        let mut codes = Vec::new();
        while let Some(Tok::Str(s)) = self.peek() {
            codes.extend_from_slice(s);
            self.i += 1;
        }
        codes
    }

    fn tuple(&mut self, depth: usize) -> Result<Term, TermError> {
        let mut items = Vec::new();
        if self.is_punct("}") {
            self.i += 1;
            return Ok(Term::Tuple(items));
        }
        loop {
            items.push(self.term(depth)?);
            if self.is_punct(",") {
                self.i += 1;
            } else {
                self.expect_punct("}", "',' or '}' in a tuple")?;
                return Ok(Term::Tuple(items));
            }
        }
    }

    fn list(&mut self, depth: usize) -> Result<Term, TermError> {
        let mut items = Vec::new();
        if self.is_punct("]") {
            self.i += 1;
            return Ok(Term::List(items));
        }
        loop {
            items.push(self.term(depth)?);
            if self.is_punct(",") {
                self.i += 1;
            } else if self.is_punct("|") {
                self.i += 1;
                let tail = self.term(depth)?;
                self.expect_punct("]", "']' after the tail of a list")?;
                return Ok(cons(items, tail));
            } else {
                self.expect_punct("]", "',', '|' or ']' in a list")?;
                return Ok(Term::List(items));
            }
        }
    }

    fn map(&mut self, depth: usize) -> Result<Term, TermError> {
        let mut pairs = Vec::new();
        if self.is_punct("}") {
            self.i += 1;
            return Ok(Term::Map(pairs));
        }
        loop {
            let key = self.term(depth)?;
            self.expect_punct("=>", "'=>' after a map key")?;
            let value = self.term(depth)?;
            pairs.push((key, value));
            if self.is_punct(",") {
                self.i += 1;
            } else {
                self.expect_punct("}", "',' or '}' in a map")?;
                return Ok(Term::Map(pairs));
            }
        }
    }

    fn binary(&mut self) -> Result<Term, TermError> {
        let mut bytes = Vec::new();
        if self.is_punct(">>") {
            self.i += 1;
            return Ok(Term::Binary(bytes));
        }
        loop {
            self.bin_element(&mut bytes)?;
            if self.is_punct(",") {
                self.i += 1;
            } else {
                self.expect_punct(">>", "',' or '>>' in a binary")?;
                return Ok(Term::Binary(bytes));
            }
        }
    }

    /// One `Value[:Size][/Type-Specifiers]` element of a binary.
    fn bin_element(&mut self, out: &mut Vec<u8>) -> Result<(), TermError> {
        enum Value {
            Codes(Vec<u32>),
            Int(i128),
        }
        let src = self.src;
        let at = Loc {
            src,
            offset: self.loc().offset,
        };
        let value = match self.peek().cloned() {
            Some(Tok::Str(_)) => Value::Codes(self.strings()),
            Some(Tok::Char(c)) => {
                self.i += 1;
                Value::Int(i128::from(c))
            }
            Some(Tok::Int(m)) => {
                self.i += 1;
                Value::Int(signed(m, false, at)?)
            }
            Some(Tok::Punct(p @ ("-" | "+"))) => {
                self.i += 1;
                let negative = p == "-";
                match self.next() {
                    Some(Tok::Int(m)) => Value::Int(signed(m, negative, at)?),
                    Some(Tok::Char(c)) => {
                        let v = i128::from(c);
                        Value::Int(if negative { -v } else { v })
                    }
                    _ => {
                        self.i -= 1;
                        return Err(self.unexpected("an integer after the sign"));
                    }
                }
            }
            Some(Tok::Float(_)) => {
                return Err(TermError::InvalidBinary {
                    at: at.pos(),
                    reason: "float segments are not supported".into(),
                })
            }
            _ => return Err(self.unexpected("a string or integer binary segment")),
        };
        let mut size: Option<u128> = None;
        if self.is_punct(":") {
            self.i += 1;
            match self.next() {
                Some(Tok::Int(m)) => size = Some(m),
                _ => {
                    self.i -= 1;
                    return Err(self.unexpected("an integer segment size after ':'"));
                }
            }
        }
        let mut encoding: Option<&'static str> = None;
        let mut little = false;
        if self.is_punct("/") {
            self.i += 1;
            loop {
                let spec_at = self.loc().offset;
                match self.next() {
                    Some(Tok::Atom(spec)) => match spec.as_str() {
                        "utf8" => encoding = Some("utf8"),
                        "utf16" => encoding = Some("utf16"),
                        "utf32" => encoding = Some("utf32"),
                        "big" => little = false,
                        "little" => little = true,
                        "integer" | "signed" | "unsigned" => {}
                        other => {
                            return Err(TermError::InvalidBinary {
                                at: Position::of(src, spec_at),
                                reason: format!("unsupported type specifier {other}"),
                            })
                        }
                    },
                    _ => {
                        self.i -= 1;
                        return Err(self.unexpected("a type specifier after '/'"));
                    }
                }
                if self.is_punct("-") {
                    self.i += 1;
                } else {
                    break;
                }
            }
        }
        if encoding.is_some() && size.is_some() {
            return Err(TermError::InvalidBinary {
                at: at.pos(),
                reason: "a size is not allowed with utf8/utf16/utf32".into(),
            });
        }
        match (value, encoding) {
            (Value::Codes(codes), None) => {
                if size.is_some() {
                    return Err(TermError::InvalidBinary {
                        at: at.pos(),
                        reason: "a size is not supported on string segments".into(),
                    });
                }
                for code in codes {
                    let byte = u8::try_from(code).map_err(|_| TermError::InvalidBinary {
                        at: at.pos(),
                        reason: format!(
                            "character code {code} does not fit in a byte (write /utf8)"
                        ),
                    })?;
                    out.push(byte);
                }
            }
            (Value::Codes(codes), Some(enc)) => {
                for code in codes {
                    encode_char(out, to_char(code, at)?, enc, little);
                }
            }
            (Value::Int(v), Some(enc)) => {
                let code = u32::try_from(v).map_err(|_| TermError::InvalidCodepoint {
                    at: at.pos(),
                    code: u64::try_from(v).unwrap_or(u64::MAX),
                })?;
                encode_char(out, to_char(code, at)?, enc, little);
            }
            (Value::Int(v), None) => {
                let bits = size.unwrap_or(8);
                if bits % 8 != 0 {
                    return Err(TermError::InvalidBinary {
                        at: at.pos(),
                        reason: format!("size {bits} is not a whole number of bytes"),
                    });
                }
                if bits > 128 {
                    return Err(TermError::InvalidBinary {
                        at: at.pos(),
                        reason: format!("size {bits} is larger than the supported 128 bits"),
                    });
                }
                let n = usize::try_from(bits / 8).unwrap_or(0);
                let be = v.to_be_bytes();
                let mut seg: Vec<u8> = be.iter().skip(16 - n).copied().collect();
                if little {
                    seg.reverse();
                }
                out.extend_from_slice(&seg);
            }
        }
        Ok(())
    }
}

fn encode_char(out: &mut Vec<u8>, c: char, encoding: &str, little: bool) {
    match encoding {
        "utf16" => {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                let b = if little {
                    unit.to_le_bytes()
                } else {
                    unit.to_be_bytes()
                };
                out.extend_from_slice(&b);
            }
        }
        "utf32" => {
            let v = u32::from(c);
            out.extend_from_slice(&if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            });
        }
        _ => {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

/// A string literal's codes as a charlist, or as a list of integers when some code is not a
/// Unicode scalar value (Erlang allows `"\x{D800}"`, Rust strings do not).
fn codes_to_term(codes: Vec<u32>) -> Term {
    let text: Option<String> = codes.iter().map(|&c| char::from_u32(c)).collect();
    match text {
        Some(s) => Term::Charlist(s),
        None => Term::List(
            codes
                .into_iter()
                .map(|c| Term::Integer(i128::from(c)))
                .collect(),
        ),
    }
}

/// `[items | tail]`, flattened into a proper list when the tail is one.
fn cons(mut items: Vec<Term>, tail: Term) -> Term {
    match tail {
        Term::List(rest) => {
            items.extend(rest);
            Term::List(items)
        }
        Term::Charlist(s) => {
            items.extend(s.chars().map(|c| Term::Integer(i128::from(u32::from(c)))));
            Term::List(items)
        }
        Term::ImproperList(rest, tail) => {
            items.extend(rest);
            Term::ImproperList(items, tail)
        }
        other => Term::ImproperList(items, Box::new(other)),
    }
}

// ---------------------------------------------------------------------------------------------
// Printer

/// Prints `term` as Erlang text that `erl_parse:parse_term/1` and `file:consult/1` read back
/// as the same value. No trailing `.`; output is deterministic (map pairs in stored order).
///
/// The output also stays within what hex_core's restricted `safe_erl_term` scanner (used on
/// `metadata.config`) understands, as long as the term has no floats, improper lists or
/// atoms unknown to the reading VM: escapes are only the letter forms and 3-digit octal,
/// never `\x`, and there are no comments, radixes or `$c` literals.
///
/// Erlang has no NaN or infinities: non-finite floats are printed as the atoms `nan`,
/// `infinity` and `'-infinity'`.
pub fn to_erlang_text(term: &Term) -> String {
    let mut out = String::new();
    print(&mut out, term);
    out
}

fn print(out: &mut String, term: &Term) {
    match term {
        Term::Atom(a) => print_atom(out, a),
        Term::Binary(b) => print_binary(out, b),
        Term::Charlist(s) => {
            out.push('"');
            push_escaped(out, s, '"');
            out.push('"');
        }
        Term::Integer(i) => out.push_str(&i.to_string()),
        Term::Float(f) => print_float(out, *f),
        Term::Tuple(items) => {
            out.push('{');
            print_seq(out, items);
            out.push('}');
        }
        Term::List(items) => {
            out.push('[');
            print_seq(out, items);
            out.push(']');
        }
        Term::ImproperList(items, tail) => {
            if items.is_empty() {
                print(out, tail);
            } else {
                out.push('[');
                print_seq(out, items);
                out.push('|');
                print(out, tail);
                out.push(']');
            }
        }
        Term::Map(pairs) => {
            out.push_str("#{");
            for (i, (k, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                print(out, k);
                out.push_str(" => ");
                print(out, v);
            }
            out.push('}');
        }
    }
}

fn print_seq(out: &mut String, items: &[Term]) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        print(out, item);
    }
}

/// Words the Erlang parser reserves; as atoms they must be quoted.
const RESERVED: &[&str] = &[
    "after", "and", "andalso", "band", "begin", "bnot", "bor", "bsl", "bsr", "bxor", "case",
    "catch", "cond", "div", "else", "end", "fun", "if", "let", "maybe", "not", "of", "or",
    "orelse", "receive", "rem", "try", "when", "xor",
];

fn print_atom(out: &mut String, name: &str) {
    let mut chars = name.chars();
    let bare = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@')
        && !RESERVED.contains(&name);
    if bare {
        out.push_str(name);
    } else {
        out.push('\'');
        push_escaped(out, name, '\'');
        out.push('\'');
    }
}

fn print_binary(out: &mut String, bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).ok().filter(|s| {
        !s.chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    });
    match text {
        Some(s) if !s.is_empty() => {
            out.push_str("<<\"");
            push_escaped(out, s, '"');
            out.push('"');
            if !s.is_ascii() {
                out.push_str("/utf8");
            }
            out.push_str(">>");
        }
        _ => {
            out.push_str("<<");
            for (i, b) in bytes.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&b.to_string());
            }
            out.push_str(">>");
        }
    }
}

/// Escapes that both `erl_scan` and hex_core's `safe_erl_term` understand.
fn push_escaped(out: &mut String, s: &str, quote: char) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\{:03o}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
}

fn print_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("nan");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "infinity" } else { "'-infinity'" });
        return;
    }
    // Rust's Debug output is the shortest text that reads back as the same f64; Erlang only
    // needs a digit on both sides of the point.
    let text = format!("{f:?}");
    match text.split_once('e') {
        Some((mantissa, exp)) if !mantissa.contains('.') => {
            out.push_str(mantissa);
            out.push_str(".0e");
            out.push_str(exp);
        }
        Some(_) => out.push_str(&text),
        None if text.contains('.') => out.push_str(&text),
        None => {
            out.push_str(&text);
            out.push_str(".0");
        }
    }
}
