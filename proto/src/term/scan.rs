//! A character cursor shared by the Erlang and Elixir scanners.

use super::{Position, TermError};

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
