//! Character-level scanning shared by the Erlang and Elixir tokenizers: the cursor, the token
//! loop, quoted literals, escapes and numbers.

use super::{Position, Term, TermError};

/// Where something starts in the source: cheap to copy, turned into a line and column only
/// when an error is reported (computing positions eagerly would make parsing quadratic).
#[derive(Clone, Copy)]
pub(super) struct Loc<'a> {
    pub src: &'a str,
    pub offset: usize,
}

impl Loc<'_> {
    pub fn pos(self) -> Position {
        Position::of(self.src, self.offset)
    }
}

/// A token and the byte offset where it starts.
pub(super) struct Token<T> {
    pub tok: T,
    pub start: usize,
}

/// Splits `text` into tokens, skipping whitespace and comments that run from `comment` to the
/// end of the line. `token` scans one token: it gets the cursor just past the token's first
/// character, that character and the token's start offset.
pub(super) fn tokenize<T>(
    text: &str,
    comment: char,
    mut token: impl FnMut(&mut Cursor<'_>, char, usize) -> Result<T, TermError>,
) -> Result<Vec<Token<T>>, TermError> {
    let mut cur = Cursor::new(text);
    let mut tokens = Vec::new();
    loop {
        let start = cur.pos;
        match cur.bump() {
            None => return Ok(tokens),
            Some(c) if c <= ' ' || c.is_whitespace() => {}
            Some(c) if c == comment => {
                cur.eat_while(|c| c != '\n');
                cur.bump();
            }
            Some(c) => {
                let tok = token(&mut cur, c, start)?;
                tokens.push(Token { tok, start });
            }
        }
    }
}

/// A number literal. Character literals (`$a` in Erlang, `?a` in Elixir) are integers too,
/// but error messages name them apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Number {
    Int(u128),
    Float(f64),
    /// A character code; not yet checked to be a Unicode scalar value.
    Char(u32),
}

impl Number {
    pub fn describe(self) -> &'static str {
        match self {
            Number::Int(_) => "integer",
            Number::Float(_) => "float",
            Number::Char(_) => "character literal",
        }
    }

    /// The value of an integer or character code; `None` for a float.
    pub fn integer(self) -> Option<u128> {
        match self {
            Number::Int(m) => Some(m),
            Number::Char(c) => Some(u128::from(c)),
            Number::Float(_) => None,
        }
    }

    /// The number as a term, negated if `negative`; `at` is where the literal (or its sign)
    /// starts.
    pub fn to_term(self, negative: bool, at: Loc<'_>) -> Result<Term, TermError> {
        Ok(match self {
            Number::Int(m) => Term::Integer(signed(m, negative, at)?),
            Number::Char(c) => Term::Integer(signed(u128::from(c), negative, at)?),
            Number::Float(f) => Term::Float(if negative { -f } else { f }),
        })
    }
}

/// Walks a `&str` one character at a time. `pos` is always on a character boundary, so the
/// slicing below cannot panic.
pub(super) struct Cursor<'a> {
    pub src: &'a str,
    pub pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(src: &'a str) -> Self {
        Cursor { src, pos: 0 }
    }

    pub fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    pub fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    /// The character `n` characters ahead (0 is the current one).
    pub fn peek_nth(&self, n: usize) -> Option<char> {
        self.rest().chars().nth(n)
    }

    pub fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    pub fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    pub fn eat_str(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    /// The entry of `punctuation` that starts with `c`, just consumed, and goes on with
    /// what follows, which this consumes. Longer entries must come first.
    pub fn punct(&mut self, c: char, punctuation: &[&'static str]) -> Option<&'static str> {
        punctuation
            .iter()
            .copied()
            .find(|p| p.strip_prefix(c).is_some_and(|rest| self.eat_str(rest)))
    }

    /// Consumes characters while `pred` holds and returns them.
    pub fn eat_while(&mut self, pred: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let len = rest.find(|c| !pred(c)).unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    pub fn position(&self, offset: usize) -> Position {
        Position::of(self.src, offset)
    }

    pub fn loc(&self, offset: usize) -> Loc<'a> {
        Loc {
            src: self.src,
            offset,
        }
    }

    /// Consumes digits of `radix` with `_` allowed between digits, as both Erlang (OTP 23+)
    /// and Elixir allow; returns them without the underscores.
    pub fn digits(&mut self, radix: u32) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if c.is_digit(radix) {
                out.push(c);
                self.bump();
            } else if c == '_'
                && !out.is_empty()
                && self.peek_nth(1).is_some_and(|d| d.is_digit(radix))
            {
                self.bump();
            } else {
                break;
            }
        }
        out
    }

    /// The rest of a decimal number after its integer digits: a float such as `1.5` or
    /// `1.5e-3` if a `.` and a digit follow, else the integer. `at` is where the number starts.
    pub fn decimal(&mut self, int_digits: &str, at: Loc<'_>) -> Result<Number, TermError> {
        if self.peek() != Some('.') || !self.peek_nth(1).is_some_and(|c| c.is_ascii_digit()) {
            return Ok(Number::Int(magnitude(int_digits, 10, at)?));
        }
        self.bump();
        let frac = self.digits(10);
        let mut text = format!("{int_digits}.{frac}");
        if matches!(self.peek(), Some('e' | 'E')) {
            let save = self.pos;
            self.bump();
            let mut exp = String::from("e");
            if let Some(sign @ ('+' | '-')) = self.peek() {
                exp.push(sign);
                self.bump();
            }
            let exp_digits = self.digits(10);
            if exp_digits.is_empty() {
                // `1.5e` is the float 1.5 followed by the name `e`, which the parser rejects.
                self.pos = save;
            } else {
                text.push_str(&exp);
                text.push_str(&exp_digits);
            }
        }
        Ok(Number::Float(float(&text, at)?))
    }

    /// Scans a quoted literal after its opening `quote`, through the closing one; `start` is
    /// where the literal starts and `what` names it. `unit` reads one character `c` of the
    /// body found at offset `at`, with the rest of the escape sequence it may start: a unit of
    /// the literal, or none (an escaped line break in Elixir).
    pub fn quoted<U>(
        &mut self,
        quote: char,
        start: usize,
        what: &'static str,
        mut unit: impl FnMut(&mut Self, char, usize) -> Result<Option<U>, TermError>,
    ) -> Result<Vec<U>, TermError> {
        let mut units = Vec::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None => {
                    return Err(TermError::Unterminated {
                        at: self.position(start),
                        what,
                    })
                }
                Some(c) if c == quote => return Ok(units),
                Some(c) => units.extend(unit(self, c, at)?),
            }
        }
    }

    /// The character after the backslash of an escape sequence starting at `esc_start`.
    pub fn escaped(&mut self, esc_start: usize) -> Result<char, TermError> {
        self.bump().ok_or_else(|| TermError::Unterminated {
            at: self.position(esc_start),
            what: "escape sequence",
        })
    }

    /// The error for a malformed escape sequence starting at `esc_start`, quoting what has
    /// been read of it.
    pub fn invalid_escape(&self, esc_start: usize) -> TermError {
        TermError::InvalidEscape {
            at: self.position(esc_start),
            sequence: self
                .src
                .get(esc_start..self.pos)
                .unwrap_or("\\")
                .chars()
                .take(12)
                .collect(),
        }
    }

    /// Exactly `n` hex digits, as in `\xFF` (Erlang) or `\uFFFF` (Elixir).
    pub fn hex(&mut self, n: usize) -> Option<u32> {
        let mut value = 0;
        for _ in 0..n {
            value = value * 16 + self.bump()?.to_digit(16)?;
        }
        Some(value)
    }

    /// 1 to `max` hex digits and a closing `}`, after the `\x{` or `\u{` of an escape.
    pub fn braced_hex(&mut self, max: usize) -> Option<u32> {
        let mut value: u32 = 0;
        let mut n = 0;
        loop {
            match self.bump()? {
                '}' if n > 0 => return Some(value),
                d if n < max => {
                    value = value * 16 + d.to_digit(16)?;
                    n += 1;
                }
                _ => return None,
            }
        }
    }
}

/// The escapes both languages spell with a letter after the backslash: `\b`, `\d` (delete),
/// `\e`, `\f`, `\n`, `\r`, `\s` (space), `\t` and `\v`.
pub(super) fn letter_escape(c: char) -> Option<u32> {
    Some(match c {
        'b' => 8,
        'd' => 127,
        'e' => 27,
        'f' => 12,
        'n' => 10,
        'r' => 13,
        's' => 32,
        't' => 9,
        'v' => 11,
        _ => return None,
    })
}

/// Value of `digits` in `radix`, or an overflow error naming the literal.
pub(super) fn magnitude(digits: &str, radix: u32, at: Loc<'_>) -> Result<u128, TermError> {
    let mut value: u128 = 0;
    for c in digits.chars() {
        let d = c.to_digit(radix).ok_or_else(|| TermError::InvalidNumber {
            at: at.pos(),
            text: digits.to_string(),
            reason: "digit out of range for the radix",
        })?;
        value = value
            .checked_mul(u128::from(radix))
            .and_then(|v| v.checked_add(u128::from(d)))
            .ok_or_else(|| TermError::IntegerOverflow {
                at: at.pos(),
                text: digits.to_string(),
            })?;
    }
    Ok(value)
}

/// Applies a sign to a magnitude, allowing `-2^127`.
pub(super) fn signed(mag: u128, negative: bool, at: Loc<'_>) -> Result<i128, TermError> {
    if negative {
        if mag == 1u128 << 127 {
            return Ok(i128::MIN);
        }
        i128::try_from(mag).map(|v| -v)
    } else {
        i128::try_from(mag)
    }
    .map_err(|_| TermError::IntegerOverflow {
        at: at.pos(),
        text: format!("{}{mag}", if negative { "-" } else { "" }),
    })
}

/// Parses a float literal whose underscores were already removed; rejects overflow to
/// infinity as Erlang does.
pub(super) fn float(text: &str, at: Loc<'_>) -> Result<f64, TermError> {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(f),
        Ok(_) => Err(TermError::InvalidNumber {
            at: at.pos(),
            text: text.to_string(),
            reason: "float out of range",
        }),
        Err(_) => Err(TermError::InvalidNumber {
            at: at.pos(),
            text: text.to_string(),
            reason: "malformed float",
        }),
    }
}

/// A character code as a `char`, or an error if it is a surrogate or above U+10FFFF.
pub(super) fn to_char(code: u32, at: Loc<'_>) -> Result<char, TermError> {
    char::from_u32(code).ok_or_else(|| TermError::InvalidCodepoint {
        at: at.pos(),
        code: u64::from(code),
    })
}

/// Short description of a character for error messages.
pub(super) fn describe_char(c: char) -> String {
    if c.is_control() || c.is_whitespace() {
        format!("character {:?}", c)
    } else {
        format!("'{c}'")
    }
}
