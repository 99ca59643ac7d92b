//! Erlang term text: the `file:consult` format and a printer for it.

use super::parse::{list, nested, Parser, TokenKind};
use super::scan::{
    describe_char, letter_escape, magnitude, signed, to_char, tokenize, Cursor, Number,
};
use super::{Term, TermError};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Atom(String),
    Var(String),
    /// Character codes; not yet checked to be Unicode scalar values.
    Str(Vec<u32>),
    Num(Number),
    /// `.` followed by whitespace, a comment or the end: ends a term.
    Dot,
    Punct(&'static str),
}

impl TokenKind for Tok {
    const TRAILING_COMMA: bool = false;

    fn describe(&self) -> String {
        match self {
            Tok::Atom(a) => format!("atom '{a}'"),
            Tok::Var(v) => format!("variable {v}"),
            Tok::Str(_) => "string".into(),
            Tok::Num(n) => n.describe().into(),
            Tok::Dot => "'.'".into(),
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

/// Reads a sequence of Erlang terms, each ending with `.`, as `file:consult/1` does.
///
/// Accepts what `io_lib:format("~p.~n")`, `~tp` and `io_lib_pretty` print for data (atoms,
/// numbers, strings, binaries, tuples, lists, maps) and hand-written `.app`, `.app.src` and
/// `rebar.config` files. Pids, references, funs, records, variables and expressions other
/// than a sign on a number are rejected.
pub fn parse_erlang_terms(text: &str) -> Result<Vec<Term>, TermError> {
    let mut parser = Parser::new(text, tokenize(text, '%', token)?);
    let mut terms = Vec::new();
    while !parser.at_end() {
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

/// Punctuation tokens, each before any shorter one it starts with.
const PUNCTUATION: &[&str] = &[
    "<<", ">>", "=>", ":=", "=", "{", "}", "[", "]", "(", ")", ",", "|", "#", "/", ":", "-", "+",
];

/// Scans one token whose first character `c`, at offset `start`, was consumed.
fn token(cur: &mut Cursor<'_>, c: char, start: usize) -> Result<Tok, TermError> {
    let loc = cur.loc(start);
    Ok(match c {
        c if is_atom_start(c) => Tok::Atom(format!("{c}{}", cur.eat_while(is_name_char))),
        c if is_var_start(c) => Tok::Var(format!("{c}{}", cur.eat_while(is_name_char))),
        '0'..='9' => Tok::Num(number(cur, start)?),
        '\'' => {
            let codes = cur.quoted('\'', start, "quoted atom", unit)?;
            let name: Result<String, _> = codes.into_iter().map(|c| to_char(c, loc)).collect();
            Tok::Atom(name?)
        }
        '"' => Tok::Str(cur.quoted('"', start, "string", unit)?),
        '$' => match cur.bump() {
            None => {
                return Err(TermError::UnexpectedEnd {
                    at: loc.pos(),
                    expected: "a character after '$'",
                })
            }
            Some('\\') => Tok::Num(Number::Char(escape(cur, start)?)),
            Some(ch) => Tok::Num(Number::Char(u32::from(ch))),
        },
        '.' => match cur.peek() {
            None | Some('%') => Tok::Dot,
            Some(n) if n <= ' ' || n.is_whitespace() => Tok::Dot,
            Some(_) => Tok::Punct("."),
        },
        other => match cur.punct(other, PUNCTUATION) {
            Some(p) => Tok::Punct(p),
            None => {
                return Err(TermError::Unexpected {
                    at: loc.pos(),
                    found: describe_char(other),
                    expected: "a term",
                })
            }
        },
    })
}

/// Scans a number whose first digit was consumed: decimal or `Radix#Digits` integers and
/// floats such as `1.5e-3`.
fn number(cur: &mut Cursor<'_>, start: usize) -> Result<Number, TermError> {
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
        return Ok(Number::Int(magnitude(&digits, radix, at)?));
    }
    cur.decimal(&int_digits, at)
}

/// One character `c`, at offset `at`, of a quoted atom or string, or the escape it starts.
fn unit(cur: &mut Cursor<'_>, c: char, at: usize) -> Result<Option<u32>, TermError> {
    Ok(Some(if c == '\\' {
        escape(cur, at)?
    } else {
        u32::from(c)
    }))
}

/// Resolves an escape sequence after its backslash, as `erl_scan` does.
fn escape(cur: &mut Cursor<'_>, esc_start: usize) -> Result<u32, TermError> {
    let c = cur.escaped(esc_start)?;
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
            let value = if cur.eat('{') {
                cur.braced_hex(8).filter(|&v| v <= 0x10FFFF)
            } else {
                cur.hex(2)
            };
            value.ok_or_else(|| cur.invalid_escape(esc_start))?
        }
        '^' => match cur.bump() {
            Some(ch) => u32::from(ch) & 31,
            None => return Err(cur.invalid_escape(esc_start)),
        },
        other => letter_escape(other).unwrap_or(u32::from(other)),
    })
}

// ---------------------------------------------------------------------------------------------
// Parser

impl Parser<'_, Tok> {
    fn expect_dot(&mut self) -> Result<(), TermError> {
        if self.peek() == Some(&Tok::Dot) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.unexpected("'.' ending the term"))
        }
    }

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
            Tok::Var(v) => Err(TermError::NotAllowed {
                at: at.pos(),
                what: format!("variable {v}"),
            }),
            Tok::Str(_) => {
                let codes = self.strings();
                Ok(codes_to_term(codes))
            }
            Tok::Num(_) | Tok::Punct("-" | "+") => self.number(),
            Tok::Punct(p @ ("{" | "[" | "<<" | "#")) => {
                let depth = nested(depth, at)?;
                self.i += 1;
                match p {
                    "{" => self.tuple(depth),
                    "[" => self.list(depth),
                    "<<" => self.binary(),
                    _ => {
                        if let Some(Tok::Atom(name)) = self.peek() {
                            return Err(TermError::NotAllowed {
                                at: at.pos(),
                                what: format!("record #{name}"),
                            });
                        }
                        self.expect_punct("{", "'{' after '#' to open a map")?;
                        self.map(depth)
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
        let items = self.seq("}", "',' or '}' in a tuple", |p| p.term(depth))?;
        Ok(Term::Tuple(items))
    }

    fn list(&mut self, depth: usize) -> Result<Term, TermError> {
        let mut tail = None;
        let items = self.seq("]", "',', '|' or ']' in a list", |p| {
            let item = p.term(depth)?;
            if p.eat_punct("|") {
                tail = Some(p.term(depth)?);
                p.end_of_tail()?;
            }
            Ok(item)
        })?;
        // A string tail is a list of character codes: `[$a | "bc"]` is `"abc"`.
        let tail = tail.map(|t| match t {
            Term::Charlist(s) => Term::List(
                s.chars()
                    .map(|c| Term::Integer(i128::from(u32::from(c))))
                    .collect(),
            ),
            t => t,
        });
        Ok(list(items, tail))
    }

    fn map(&mut self, depth: usize) -> Result<Term, TermError> {
        let pairs = self.seq("}", "',' or '}' in a map", |p| {
            let key = p.term(depth)?;
            p.expect_punct("=>", "'=>' after a map key")?;
            Ok((key, p.term(depth)?))
        })?;
        Ok(Term::Map(pairs))
    }

    fn binary(&mut self) -> Result<Term, TermError> {
        let segments = self.seq(">>", "',' or '>>' in a binary", Self::bin_element)?;
        Ok(Term::Binary(segments.concat()))
    }

    /// The bytes of one `Value[:Size][/Type-Specifiers]` element of a binary.
    fn bin_element(&mut self) -> Result<Vec<u8>, TermError> {
        enum Value {
            Codes(Vec<u32>),
            Int(i128),
        }
        let at = self.loc();
        let value = match self.peek().cloned() {
            Some(Tok::Str(_)) => Value::Codes(self.strings()),
            Some(Tok::Num(Number::Float(_))) => {
                return Err(TermError::InvalidBinary {
                    at: at.pos(),
                    reason: "float segments are not supported".into(),
                })
            }
            Some(Tok::Num(_) | Tok::Punct("-" | "+")) => {
                let negative = self.sign();
                match self.peek().and_then(Tok::number).and_then(Number::integer) {
                    Some(m) => {
                        self.i += 1;
                        Value::Int(signed(m, negative, at)?)
                    }
                    None => return Err(self.unexpected("an integer after the sign")),
                }
            }
            _ => return Err(self.unexpected("a string or integer binary segment")),
        };
        let size = if self.eat_punct(":") {
            match self.peek() {
                Some(&Tok::Num(Number::Int(m))) => {
                    self.i += 1;
                    Some(m)
                }
                _ => return Err(self.unexpected("an integer segment size after ':'")),
            }
        } else {
            None
        };
        let mut encoding: Option<&'static str> = None;
        let mut little = false;
        if self.eat_punct("/") {
            loop {
                let spec_at = self.loc();
                let Some(Tok::Atom(spec)) = self.peek() else {
                    return Err(self.unexpected("a type specifier after '/'"));
                };
                match spec.as_str() {
                    "utf8" => encoding = Some("utf8"),
                    "utf16" => encoding = Some("utf16"),
                    "utf32" => encoding = Some("utf32"),
                    "big" => little = false,
                    "little" => little = true,
                    "integer" | "signed" | "unsigned" => {}
                    other => {
                        return Err(TermError::InvalidBinary {
                            at: spec_at.pos(),
                            reason: format!("unsupported type specifier {other}"),
                        })
                    }
                }
                self.i += 1;
                if !self.eat_punct("-") {
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
        let mut out = Vec::new();
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
                    encode_char(&mut out, to_char(code, at)?, enc, little);
                }
            }
            (Value::Int(v), Some(enc)) => {
                let code = u32::try_from(v).map_err(|_| TermError::InvalidCodepoint {
                    at: at.pos(),
                    code: u64::try_from(v).unwrap_or(u64::MAX),
                })?;
                encode_char(&mut out, to_char(code, at)?, enc, little);
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
        Ok(out)
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
    out.push_str(&super::float_text(f));
}
