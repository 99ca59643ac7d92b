//! The token cursor shared by the Erlang and Elixir parsers, and the grammar pieces the two
//! syntaxes have in common. Each syntax adds its own grammar in an `impl Parser<'_, Tok>`
//! block over its token type.

use super::scan::{Loc, Number, Token};
use super::{Term, TermError, MAX_DEPTH};

/// What the shared parser needs to know about a syntax's tokens.
pub(super) trait TokenKind {
    /// Whether a `,` may stand right before the closing bracket of a sequence.
    const TRAILING_COMMA: bool;

    /// How error messages name the token: `atom 'foo'`, `'{'`.
    fn describe(&self) -> String;

    /// The punctuation, if the token is one.
    fn punct(&self) -> Option<&'static str>;

    /// The number, if the token is one.
    fn number(&self) -> Option<Number>;
}

/// A cursor over the tokens of `src`.
pub(super) struct Parser<'a, T> {
    src: &'a str,
    tokens: Vec<Token<T>>,
    /// Index of the next token.
    pub i: usize,
}

impl<'a, T: TokenKind> Parser<'a, T> {
    pub fn new(src: &'a str, tokens: Vec<Token<T>>) -> Self {
        Parser { src, tokens, i: 0 }
    }

    pub fn at_end(&self) -> bool {
        self.i >= self.tokens.len()
    }

    pub fn peek(&self) -> Option<&T> {
        self.tokens.get(self.i).map(|t| &t.tok)
    }

    /// Where the next token starts (the end of the text after the last one).
    pub fn loc(&self) -> Loc<'a> {
        Loc {
            src: self.src,
            offset: self.tokens.get(self.i).map_or(self.src.len(), |t| t.start),
        }
    }

    /// The error for finding the next token (or the end) where `expected` should be.
    pub fn unexpected(&self, expected: &'static str) -> TermError {
        let at = self.loc().pos();
        match self.peek() {
            Some(t) => TermError::Unexpected {
                at,
                found: t.describe(),
                expected,
            },
            None => TermError::UnexpectedEnd { at, expected },
        }
    }

    pub fn is_punct(&self, p: &str) -> bool {
        self.peek().and_then(T::punct) == Some(p)
    }

    /// Consumes the punctuation `p` if it is next.
    pub fn eat_punct(&mut self, p: &str) -> bool {
        let found = self.is_punct(p);
        if found {
            self.i += 1;
        }
        found
    }

    pub fn expect_punct(
        &mut self,
        p: &'static str,
        expected: &'static str,
    ) -> Result<(), TermError> {
        if self.eat_punct(p) {
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    /// Consumes a `-` or `+` if one is next; whether it was `-`.
    pub fn sign(&mut self) -> bool {
        let negative = self.eat_punct("-");
        if !negative {
            self.eat_punct("+");
        }
        negative
    }

    /// A number with an optional `-` or `+` sign: `1`, `-1.5`, `+$a`. The next token is
    /// a number or a sign.
    pub fn number(&mut self) -> Result<Term, TermError> {
        let at = self.loc();
        let negative = self.sign();
        match self.peek().and_then(T::number) {
            Some(n) => {
                self.i += 1;
                n.to_term(negative, at)
            }
            None => Err(self.unexpected("a number after the sign")),
        }
    }

    /// Reads the body of a bracketed sequence after its opening bracket, through `close`:
    /// nothing, or elements separated by `,`, each read by `element`. `expected` says what
    /// may follow an element. A `,` before `close` is accepted where the syntax allows it.
    pub fn seq<E>(
        &mut self,
        close: &'static str,
        expected: &'static str,
        mut element: impl FnMut(&mut Self) -> Result<E, TermError>,
    ) -> Result<Vec<E>, TermError> {
        let mut elements = Vec::new();
        if self.eat_punct(close) {
            return Ok(elements);
        }
        loop {
            elements.push(element(self)?);
            if !self.eat_punct(",") {
                self.expect_punct(close, expected)?;
                return Ok(elements);
            }
            if T::TRAILING_COMMA && self.eat_punct(close) {
                return Ok(elements);
            }
        }
    }

    /// Checks that a list's `]` follows its `| tail`; [`Parser::seq`] consumes it.
    pub fn end_of_tail(&self) -> Result<(), TermError> {
        if self.is_punct("]") {
            Ok(())
        } else {
            Err(self.unexpected("']' after the tail of a list"))
        }
    }
}

/// The depth inside a bracket at `at` opened at `depth`, or an error past [`MAX_DEPTH`].
pub(super) fn nested(depth: usize, at: Loc<'_>) -> Result<usize, TermError> {
    if depth >= MAX_DEPTH {
        return Err(TermError::TooDeep {
            at: at.pos(),
            max: MAX_DEPTH,
        });
    }
    Ok(depth + 1)
}

/// `[items | tail]`, or `[items]` without a tail; flattened into a proper list when the tail
/// is one.
pub(super) fn list(mut items: Vec<Term>, tail: Option<Term>) -> Term {
    match tail {
        None => Term::List(items),
        Some(Term::List(rest)) => {
            items.extend(rest);
            Term::List(items)
        }
        Some(Term::ImproperList(rest, tail)) => {
            items.extend(rest);
            Term::ImproperList(items, tail)
        }
        Some(other) => Term::ImproperList(items, Box::new(other)),
    }
}
