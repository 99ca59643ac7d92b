//! Erlang's external term format (`term_to_binary/1`), decoded far enough to compare two
//! terms and show where they differ: what beam chunks such as `Dbgi`, `Docs`, `Attr`, `CInf`
//! and each literal of `LitT` hold.
//!
//! Every size is bounded: nesting depth, element counts (by the bytes left), and the
//! decompressed size of a compressed term.

use std::fmt::Write as _;
use std::io::Read;

/// Bound on the nesting of decoded terms.
const MAX_DEPTH: usize = 512;

/// Bound on a compressed term's decompressed size.
pub const MAX_INFLATED: usize = 64 * 1024 * 1024;

/// A decoded term. Pids, ports, references and funs are kept as a description only.
#[derive(Clone, Debug, PartialEq)]
pub enum Etf {
    Atom(String),
    Integer(i64),
    /// A bignum, as decimal text.
    Big(String),
    Float(f64),
    Binary(Vec<u8>),
    /// A bitstring: its bytes and the number of bits used in the last one.
    Bits(Vec<u8>, u8),
    Tuple(Vec<Etf>),
    /// A list and its tail (`None` for a proper list).
    List(Vec<Etf>, Option<Box<Etf>>),
    /// `STRING_EXT`: a list of bytes.
    Charlist(Vec<u8>),
    Map(Vec<(Etf, Etf)>),
    Opaque(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EtfError {
    #[error("not an external term (version byte {0})")]
    Version(u8),
    #[error("truncated external term")]
    Truncated,
    #[error("external term nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("unsupported external term tag {0}")]
    Tag(u8),
    #[error("compressed term: {0}")]
    Inflate(String),
    #[error("{0} bytes after the term")]
    Trailing(usize),
}

/// Decodes one whole `term_to_binary` result (version byte 131, possibly compressed).
pub fn decode(bytes: &[u8]) -> Result<Etf, EtfError> {
    match bytes.first() {
        Some(131) => {}
        Some(&other) => return Err(EtfError::Version(other)),
        None => return Err(EtfError::Truncated),
    }
    let body = &bytes[1..];
    let inflated;
    let body = if body.first() == Some(&80) {
        let size = u32::from_be_bytes(
            body.get(1..5)
                .ok_or(EtfError::Truncated)?
                .try_into()
                .unwrap(),
        ) as usize;
        if size > MAX_INFLATED {
            return Err(EtfError::Inflate(format!(
                "{size} bytes decompressed, over the limit of {MAX_INFLATED}"
            )));
        }
        inflated = inflate(&body[5..], size)?;
        inflated.as_slice()
    } else {
        body
    };
    let mut reader = Reader {
        bytes: body,
        at: 0,
        atoms: None,
    };
    let term = reader.term(0)?;
    if reader.at != body.len() {
        return Err(EtfError::Trailing(body.len() - reader.at));
    }
    Ok(term)
}

/// Every atom of one whole `term_to_binary` result, in the order they are encoded, those
/// inside funs (module, free variables) and pids, ports and references (node) included: the
/// atoms `binary_to_term` creates decoding it.
pub fn atoms(bytes: &[u8]) -> Result<Vec<String>, EtfError> {
    let (body, inflated);
    match bytes.first() {
        Some(131) => {}
        Some(&other) => return Err(EtfError::Version(other)),
        None => return Err(EtfError::Truncated),
    }
    if bytes.get(1) == Some(&80) {
        let size = u32::from_be_bytes(
            bytes
                .get(2..6)
                .ok_or(EtfError::Truncated)?
                .try_into()
                .unwrap(),
        ) as usize;
        if size > MAX_INFLATED {
            return Err(EtfError::Inflate(format!(
                "{size} bytes decompressed, over the limit of {MAX_INFLATED}"
            )));
        }
        inflated = inflate(&bytes[6..], size)?;
        body = inflated.as_slice();
    } else {
        body = &bytes[1..];
    }
    let mut reader = Reader {
        bytes: body,
        at: 0,
        atoms: Some(Vec::new()),
    };
    reader.term(0)?;
    if reader.at != body.len() {
        return Err(EtfError::Trailing(body.len() - reader.at));
    }
    Ok(reader.atoms.unwrap_or_default())
}

/// The size in bytes of the one term at the start of `body` (an external term without its
/// version byte), which is decoded to find it.
pub fn term_size(body: &[u8]) -> Result<usize, EtfError> {
    let mut reader = Reader {
        bytes: body,
        at: 0,
        atoms: None,
    };
    reader.term(0)?;
    Ok(reader.at)
}

/// zlib-inflates `data`, which must give exactly `size` bytes.
pub fn inflate(data: &[u8], size: usize) -> Result<Vec<u8>, EtfError> {
    let mut out = Vec::with_capacity(size.min(16 * 1024 * 1024));
    flate2::read::ZlibDecoder::new(data)
        .take(size as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| EtfError::Inflate(e.to_string()))?;
    if out.len() != size {
        return Err(EtfError::Inflate(format!(
            "{} bytes, the header says {size}",
            out.len()
        )));
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// With `Some`, every atom decoded is also collected here, and funs are decoded whole.
    atoms: Option<Vec<String>>,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EtfError> {
        let end = self.at.checked_add(n).ok_or(EtfError::Truncated)?;
        let slice = self.bytes.get(self.at..end).ok_or(EtfError::Truncated)?;
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, EtfError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, EtfError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap()) as usize)
    }

    fn u32(&mut self) -> Result<usize, EtfError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()) as usize)
    }

    /// A count of elements, each at least one byte: more than the bytes left is truncation.
    fn count(&mut self, count: usize) -> Result<usize, EtfError> {
        if count > self.bytes.len() - self.at {
            return Err(EtfError::Truncated);
        }
        Ok(count)
    }

    fn term(&mut self, depth: usize) -> Result<Etf, EtfError> {
        if depth > MAX_DEPTH {
            return Err(EtfError::TooDeep);
        }
        let tag = self.u8()?;
        Ok(match tag {
            97 => Etf::Integer(self.u8()? as i64),
            98 => Etf::Integer(i32::from_be_bytes(self.take(4)?.try_into().unwrap()) as i64),
            70 => Etf::Float(f64::from_be_bytes(self.take(8)?.try_into().unwrap())),
            99 => {
                let text = String::from_utf8_lossy(self.take(31)?);
                Etf::Float(
                    text.trim_end_matches('\0')
                        .trim()
                        .parse()
                        .map_err(|_| EtfError::Tag(99))?,
                )
            }
            100 | 118 => {
                let n = self.u16()?;
                self.atom(n, tag)?
            }
            115 | 119 => {
                let n = self.u8()? as usize;
                self.atom(n, tag)?
            }
            104 => {
                let n = self.u8()? as usize;
                self.tuple(n, depth)?
            }
            105 => {
                let n = self.u32()?;
                let n = self.count(n)?;
                self.tuple(n, depth)?
            }
            106 => Etf::List(Vec::new(), None),
            107 => {
                let n = self.u16()?;
                Etf::Charlist(self.take(n)?.to_vec())
            }
            108 => {
                let n = self.u32()?;
                let n = self.count(n)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.term(depth + 1)?);
                }
                let tail = self.term(depth + 1)?;
                let tail = match tail {
                    Etf::List(ref rest, None) if rest.is_empty() => None,
                    other => Some(Box::new(other)),
                };
                Etf::List(items, tail)
            }
            109 => {
                let n = self.u32()?;
                Etf::Binary(self.take(n)?.to_vec())
            }
            77 => {
                let n = self.u32()?;
                let bits = self.u8()?;
                Etf::Bits(self.take(n)?.to_vec(), bits)
            }
            110 => {
                let n = self.u8()? as usize;
                self.big(n)?
            }
            111 => {
                let n = self.u32()?;
                self.big(n)?
            }
            116 => {
                let n = self.u32()?;
                let n = self.count(n)?;
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    let key = self.term(depth + 1)?;
                    let value = self.term(depth + 1)?;
                    pairs.push((key, value));
                }
                Etf::Map(pairs)
            }
            113 => {
                let module = self.term(depth + 1)?;
                let function = self.term(depth + 1)?;
                let arity = self.term(depth + 1)?;
                Etf::Opaque(format!(
                    "fun {}:{}/{}",
                    render(&module, 64),
                    render(&function, 64),
                    render(&arity, 16)
                ))
            }
            112 => {
                let size = self.u32()?;
                if size < 4 {
                    return Err(EtfError::Truncated);
                }
                let end = self.at + size - 4;
                if self.atoms.is_some() {
                    // Arity, Uniq, Index, NumFree, then Module, OldIndex, OldUniq, Pid and
                    // the free variables.
                    self.take(1 + 16 + 4)?;
                    let free = self.u32()?;
                    let free = self.count(free)?;
                    for _ in 0..4 + free {
                        self.term(depth + 1)?;
                    }
                    if self.at != end {
                        return Err(EtfError::Truncated);
                    }
                } else {
                    self.take(size - 4)?;
                }
                Etf::Opaque("#Fun".into())
            }
            88 | 103 => {
                self.term(depth + 1)?;
                self.take(if tag == 88 { 12 } else { 9 })?;
                Etf::Opaque("#PID".into())
            }
            89 | 102 | 120 => {
                self.term(depth + 1)?;
                self.take(match tag {
                    89 => 8,
                    102 => 5,
                    _ => 12,
                })?;
                Etf::Opaque("#Port".into())
            }
            90 | 114 => {
                let words = self.u16()?;
                self.term(depth + 1)?;
                self.take(if tag == 90 { 4 } else { 1 })?;
                self.take(words.saturating_mul(4))?;
                Etf::Opaque("#Reference".into())
            }
            other => return Err(EtfError::Tag(other)),
        })
    }

    /// An atom of `n` bytes (latin-1 for the old tags 100 and 115, UTF-8 otherwise).
    fn atom(&mut self, n: usize, tag: u8) -> Result<Etf, EtfError> {
        let bytes = self.take(n)?;
        let name = if tag == 100 || tag == 115 {
            bytes.iter().map(|&b| b as char).collect()
        } else {
            String::from_utf8_lossy(bytes).into_owned()
        };
        if let Some(atoms) = &mut self.atoms {
            atoms.push(name.clone());
        }
        Ok(Etf::Atom(name))
    }

    fn tuple(&mut self, n: usize, depth: usize) -> Result<Etf, EtfError> {
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.term(depth + 1)?);
        }
        Ok(Etf::Tuple(items))
    }

    fn big(&mut self, n: usize) -> Result<Etf, EtfError> {
        let sign = self.u8()?;
        let digits = self.take(n)?;
        if n <= 8 {
            let mut value: u128 = 0;
            for (i, byte) in digits.iter().enumerate() {
                value |= (*byte as u128) << (8 * i);
            }
            let text = if sign == 0 {
                value.to_string()
            } else {
                format!("-{value}")
            };
            return Ok(match text.parse::<i64>() {
                Ok(small) => Etf::Integer(small),
                Err(_) => Etf::Big(text),
            });
        }
        Ok(Etf::Big(format!(
            "{}16#{}",
            if sign == 0 { "" } else { "-" },
            digits
                .iter()
                .rev()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
                .trim_start_matches('0')
        )))
    }
}

/// Erlang-like text of `term`, cut to about `budget` characters (`…` marks a cut).
pub fn render(term: &Etf, budget: usize) -> String {
    let mut out = String::new();
    write_term(term, &mut out, budget);
    if out.chars().count() > budget {
        let cut: String = out.chars().take(budget.saturating_sub(1)).collect();
        return format!("{cut}…");
    }
    out
}

fn write_term(term: &Etf, out: &mut String, budget: usize) {
    if out.len() > budget {
        return;
    }
    match term {
        Etf::Atom(name) => out.push_str(&atom_text(name)),
        Etf::Integer(n) => {
            let _ = write!(out, "{n}");
        }
        Etf::Big(text) => out.push_str(text),
        Etf::Float(f) => {
            let _ = write!(out, "{f:?}");
        }
        Etf::Binary(bytes) => match printable(bytes) {
            Some(text) => {
                let _ = write!(out, "<<{text:?}>>");
            }
            None => write_bytes(bytes, out, budget),
        },
        Etf::Bits(bytes, bits) => {
            write_bytes(bytes, out, budget);
            let _ = write!(out, "/{bits}bits");
        }
        Etf::Charlist(bytes) => match printable(bytes) {
            Some(text) => {
                let _ = write!(out, "{text:?}");
            }
            None => write_numbers(bytes, ("[", "]"), out, budget),
        },
        Etf::Tuple(items) => {
            out.push('{');
            write_items(items, out, budget);
            out.push('}');
        }
        Etf::List(items, tail) => {
            if let Some(text) = charlist(items) {
                let _ = write!(out, "{text:?}");
            } else {
                out.push('[');
                write_items(items, out, budget);
                if let Some(tail) = tail {
                    out.push('|');
                    write_term(tail, out, budget);
                }
                out.push(']');
            }
        }
        Etf::Map(pairs) => {
            out.push_str("#{");
            for (i, (key, value)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_term(key, out, budget);
                out.push_str(" => ");
                write_term(value, out, budget);
                if out.len() > budget {
                    break;
                }
            }
            out.push('}');
        }
        Etf::Opaque(text) => out.push_str(text),
    }
}

fn write_items(items: &[Etf], out: &mut String, budget: usize) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_term(item, out, budget);
        if out.len() > budget {
            break;
        }
    }
}

fn write_bytes(bytes: &[u8], out: &mut String, budget: usize) {
    write_numbers(bytes, ("<<", ">>"), out, budget);
}

/// `bytes` as comma-separated numbers between `brackets`, cut once `out` passes `budget`.
fn write_numbers(bytes: &[u8], brackets: (&str, &str), out: &mut String, budget: usize) {
    out.push_str(brackets.0);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{b}");
        if out.len() > budget {
            break;
        }
    }
    out.push_str(brackets.1);
}

fn atom_text(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@');
    if plain {
        name.to_string()
    } else {
        format!("'{}'", name.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// The text of `bytes` if it is printable UTF-8.
pub fn printable(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.chars()
        .all(|c| !c.is_control() || c == '\n' || c == '\t')
        .then_some(text)
}

/// A proper list of printable code points, as text.
fn charlist(items: &[Etf]) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    items
        .iter()
        .map(|item| match item {
            Etf::Integer(n) => u32::try_from(*n)
                .ok()
                .and_then(char::from_u32)
                .filter(|c| !c.is_control() || *c == '\n' || *c == '\t'),
            _ => None,
        })
        .collect()
}

/// Every text in `term` (binaries, charlists, atoms) that looks like an absolute path.
pub fn absolute_paths(term: &Etf, out: &mut Vec<String>) {
    let mut push = |text: &str| {
        if text.starts_with('/') && text.len() > 1 && !text.contains(char::is_whitespace) {
            let text = text.to_string();
            if !out.contains(&text) {
                out.push(text);
            }
        }
    };
    match term {
        Etf::Binary(bytes) | Etf::Charlist(bytes) => {
            if let Some(text) = printable(bytes) {
                push(text);
            }
        }
        Etf::Atom(name) => push(name),
        Etf::List(items, tail) => {
            if let Some(text) = charlist(items) {
                push(&text);
            } else {
                for item in items {
                    absolute_paths(item, out);
                }
            }
            if let Some(tail) = tail {
                absolute_paths(tail, out);
            }
        }
        Etf::Tuple(items) => {
            for item in items {
                absolute_paths(item, out);
            }
        }
        Etf::Map(pairs) => {
            for (key, value) in pairs {
                absolute_paths(key, out);
                absolute_paths(value, out);
            }
        }
        _ => {}
    }
}

/// One place where two terms differ: where (`{3}` tuple element, `[2]` list element,
/// `.file` atom map key or keyword, `#{K}` other map key) and both values, or, when the place
/// holds the same elements in another order, what moved ([`Reorder`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    pub at: String,
    pub published: Option<Etf>,
    pub rebuilt: Option<Etf>,
    /// The list, keyword list or map at `at` has its elements in another order (then
    /// `published` and `rebuilt` are `None`: the values are too long to be worth showing).
    pub reorder: Option<Reorder>,
}

/// What kind of container a [`Reorder`] is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    List,
    /// A list of `{atom, Value}` with distinct atoms (Elixir's keyword lists, Erlang's
    /// proplists): its keys are named.
    KeywordList,
    /// A map: the external format keeps its pairs in the order the VM iterated them.
    Map,
}

impl Container {
    pub fn name(self) -> &'static str {
        match self {
            Container::List => "list",
            Container::KeywordList => "keyword list",
            Container::Map => "map",
        }
    }

    /// What the moved items are called: keys, or (plain lists) elements.
    pub fn items(self) -> &'static str {
        match self {
            Container::List => "elements",
            Container::KeywordList | Container::Map => "keys",
        }
    }
}

/// The same elements (keyword list and map: keys) in another order.
#[derive(Clone, Debug, PartialEq)]
pub struct Reorder {
    pub container: Container,
    /// Elements (or pairs) of the container, the same on both sides when `only`.
    pub length: usize,
    /// The fewest elements that explain the new order — those outside a longest sequence the
    /// two orders share —, in the rebuilt order, at most [`MAX_MOVED`] of them (keys for
    /// keyword lists and maps).
    pub moved: Vec<Etf>,
    /// How many moved in all.
    pub moved_count: usize,
    /// The order is all that differs here; otherwise some values differ too, and those
    /// places are listed as differences of their own.
    pub only: bool,
}

/// Bound on the moved elements a [`Reorder`] names.
pub const MAX_MOVED: usize = 8;

/// Lists longer than this are not searched for a permutation (it takes quadratic time); they
/// are compared element by element.
const MAX_PERMUTED: usize = 2048;

/// Up to `limit` places where `published` and `rebuilt` differ, outermost first; the count
/// of all places found (searching stops at `limit * 4`).
pub fn differences(published: &Etf, rebuilt: &Etf, limit: usize) -> (Vec<Difference>, usize) {
    let mut found = Found {
        places: Vec::new(),
        count: 0,
        limit,
    };
    walk(published, rebuilt, &mut String::new(), &mut found);
    (found.places, found.count)
}

/// The places found so far: the first `limit` of them, and how many in all.
struct Found {
    places: Vec<Difference>,
    count: usize,
    limit: usize,
}

impl Found {
    fn full(&self) -> bool {
        self.count >= self.limit * 4
    }

    fn record(&mut self, difference: Difference) {
        self.count += 1;
        if self.places.len() < self.limit {
            self.places.push(difference);
        }
    }

    fn leaf(&mut self, at: &str, a: Option<&Etf>, b: Option<&Etf>) {
        self.record(Difference {
            at: place(at),
            published: a.cloned(),
            rebuilt: b.cloned(),
            reorder: None,
        });
    }

    /// Records that elements of the `container` at `at` moved (`moved`: them, or their keys),
    /// if any did.
    fn reordered(
        &mut self,
        at: &str,
        container: Container,
        length: usize,
        moved: Vec<Etf>,
        only: bool,
    ) {
        if moved.is_empty() {
            return;
        }
        self.record(Difference {
            at: place(at),
            published: None,
            rebuilt: None,
            reorder: Some(Reorder {
                container,
                length,
                moved_count: moved.len(),
                moved: moved.into_iter().take(MAX_MOVED).collect(),
                only,
            }),
        });
    }
}

fn place(at: &str) -> String {
    if at.is_empty() {
        "the term".into()
    } else {
        at.to_string()
    }
}

fn walk(a: &Etf, b: &Etf, at: &mut String, found: &mut Found) {
    if a == b || found.full() {
        return;
    }
    let mark = at.len();
    match (a, b) {
        (Etf::Tuple(x), Etf::Tuple(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                let _ = write!(at, "{{{}}}", i + 1);
                walk(p, q, at, found);
                at.truncate(mark);
            }
        }
        (Etf::List(x, xt), Etf::List(y, yt)) if xt == yt => {
            let keywords = (keyed(x), keyed(y));
            // The same elements in another order: that is all there is to say here.
            if let Some(order) = matching(x, y, |p, q| p == q) {
                let moved = out_of_order(&order).into_iter().map(|i| match &keywords {
                    (Some(_), Some(yk)) => Etf::Atom(yk[i].0.clone()),
                    _ => y[i].clone(),
                });
                let container = match keywords {
                    (Some(_), Some(_)) => Container::KeywordList,
                    _ => Container::List,
                };
                let moved = moved.collect();
                found.reordered(at, container, y.len(), moved, true);
                return;
            }
            // Keyword-like lists of {atom, _} compare by key.
            if let (Some(xk), Some(yk)) = keywords {
                let order: Vec<usize> = yk
                    .iter()
                    .filter_map(|(key, _)| xk.iter().position(|(k, _)| k == key))
                    .collect();
                let common: Vec<&String> = yk
                    .iter()
                    .filter(|(key, _)| xk.iter().any(|(k, _)| k == key))
                    .map(|(key, _)| key)
                    .collect();
                let moved = out_of_order(&order)
                    .into_iter()
                    .map(|i| Etf::Atom(common[i].clone()))
                    .collect();
                found.reordered(at, Container::KeywordList, y.len(), moved, false);
                for (key, p) in &xk {
                    let _ = write!(at, ".{}", atom_text(key));
                    match yk.iter().find(|(k, _)| k == key) {
                        Some((_, q)) => walk(p, q, at, found),
                        None => found.leaf(at, Some(p), None),
                    }
                    at.truncate(mark);
                }
                for (key, q) in &yk {
                    if !xk.iter().any(|(k, _)| k == key) {
                        let _ = write!(at, ".{}", atom_text(key));
                        found.leaf(at, None, Some(q));
                        at.truncate(mark);
                    }
                }
                return;
            }
            if x.len() == y.len() {
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    let _ = write!(at, "[{i}]");
                    walk(p, q, at, found);
                    at.truncate(mark);
                }
                return;
            }
            // Different lengths: the differing middle after the common prefix and suffix.
            let prefix = x.iter().zip(y).take_while(|(p, q)| p == q).count();
            let suffix = x[prefix..]
                .iter()
                .rev()
                .zip(y[prefix..].iter().rev())
                .take_while(|(p, q)| p == q)
                .count();
            let _ = write!(at, "[{prefix}..]");
            found.leaf(
                at,
                Some(&Etf::List(x[prefix..x.len() - suffix].to_vec(), None)),
                Some(&Etf::List(y[prefix..y.len() - suffix].to_vec(), None)),
            );
            at.truncate(mark);
        }
        (Etf::Map(x), Etf::Map(y)) => {
            // The same pairs in another order: an encoding difference only.
            if let Some(order) = matching(x, y, |p, q| p == q) {
                let moved = out_of_order(&order)
                    .into_iter()
                    .map(|i| y[i].0.clone())
                    .collect();
                found.reordered(at, Container::Map, y.len(), moved, true);
                return;
            }
            let order: Vec<usize> = y
                .iter()
                .filter_map(|(key, _)| x.iter().position(|(k, _)| k == key))
                .collect();
            let common: Vec<&Etf> = y
                .iter()
                .filter(|(key, _)| x.iter().any(|(k, _)| k == key))
                .map(|(key, _)| key)
                .collect();
            let moved = out_of_order(&order)
                .into_iter()
                .map(|i| common[i].clone())
                .collect();
            found.reordered(at, Container::Map, y.len(), moved, false);
            for (key, p) in x {
                push_key(at, key);
                match y.iter().find(|(k, _)| k == key) {
                    Some((_, q)) => walk(p, q, at, found),
                    None => found.leaf(at, Some(p), None),
                }
                at.truncate(mark);
            }
            for (key, q) in y {
                if !x.iter().any(|(k, _)| k == key) {
                    push_key(at, key);
                    found.leaf(at, None, Some(q));
                    at.truncate(mark);
                }
            }
        }
        _ => found.leaf(at, Some(a), Some(b)),
    }
}

/// If `rebuilt` holds the same elements as `published` (by `equal`), in another order or
/// not: for each rebuilt element, the index of the published element it is. `None` when
/// they are not a permutation of each other (or too long to search).
pub fn matching<T>(
    published: &[T],
    rebuilt: &[T],
    equal: impl Fn(&T, &T) -> bool,
) -> Option<Vec<usize>> {
    if published.len() != rebuilt.len() || rebuilt.len() > MAX_PERMUTED {
        return None;
    }
    let mut used = vec![false; published.len()];
    let mut order = Vec::with_capacity(rebuilt.len());
    for item in rebuilt {
        let index = (0..published.len()).find(|&i| !used[i] && equal(&published[i], item))?;
        used[index] = true;
        order.push(index);
    }
    Some(order)
}

/// The positions of `order` (published indices, in rebuilt order) outside one longest
/// increasing subsequence: the fewest elements whose moving explains the new order.
pub fn out_of_order(order: &[usize]) -> Vec<usize> {
    // Patience sorting: tails[k] is the position ending the best increasing run of length k+1.
    let mut tails: Vec<usize> = Vec::new();
    let mut previous = vec![usize::MAX; order.len()];
    for (position, &value) in order.iter().enumerate() {
        let k = tails.partition_point(|&t| order[t] < value);
        if k > 0 {
            previous[position] = tails[k - 1];
        }
        if k == tails.len() {
            tails.push(position);
        } else {
            tails[k] = position;
        }
    }
    let mut kept = vec![false; order.len()];
    let mut at = tails.last().copied().unwrap_or(usize::MAX);
    while at != usize::MAX {
        kept[at] = true;
        at = previous[at];
    }
    (0..order.len()).filter(|&i| !kept[i]).collect()
}

fn push_key(at: &mut String, key: &Etf) {
    match key {
        Etf::Atom(name) => {
            let _ = write!(at, ".{}", atom_text(name));
        }
        other => {
            let _ = write!(at, "#{{{}}}", render(other, 40));
        }
    }
}

/// `[{atom, Value}]` with distinct atoms, as pairs.
fn keyed(items: &[Etf]) -> Option<Vec<(String, &Etf)>> {
    if items.is_empty() {
        return None;
    }
    let mut pairs: Vec<(String, &Etf)> = Vec::new();
    for item in items {
        match item {
            Etf::Tuple(t) if t.len() == 2 => match &t[0] {
                Etf::Atom(key) if !pairs.iter().any(|(k, _)| k == key) => {
                    pairs.push((key.clone(), &t[1]))
                }
                _ => return None,
            },
            _ => return None,
        }
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_terms_erlang_wrote() {
        // term_to_binary({ok, [1, <<"a">>], #{file => "/x"}, 300, -2, 1.5})
        let bytes = [
            131, 104, 6, 100, 0, 2, 111, 107, 108, 0, 0, 0, 2, 97, 1, 109, 0, 0, 0, 1, 97, 106,
            116, 0, 0, 0, 1, 100, 0, 4, 102, 105, 108, 101, 107, 0, 2, 47, 120, 98, 0, 0, 1, 44,
            98, 255, 255, 255, 254, 70, 63, 248, 0, 0, 0, 0, 0, 0,
        ];
        let term = decode(&bytes).unwrap();
        assert_eq!(
            render(&term, 200),
            "{ok,[1,<<\"a\">>],#{file => \"/x\"},300,-2,1.5}"
        );
        let mut paths = Vec::new();
        absolute_paths(&term, &mut paths);
        assert_eq!(paths, vec!["/x"]);
        assert_eq!(decode(&bytes[..20]), Err(EtfError::Truncated));
        assert_eq!(decode(&[130, 97, 1]), Err(EtfError::Version(130)));
        // A list claiming more elements than there are bytes is refused, not allocated.
        assert_eq!(
            decode(&[131, 108, 255, 255, 255, 255, 106]),
            Err(EtfError::Truncated)
        );
    }

    #[test]
    fn differences_say_where_and_what() {
        let file = |path: &str| {
            Etf::Tuple(vec![
                Etf::Atom("debug_info_v1".into()),
                Etf::Map(vec![
                    (
                        Etf::Atom("file".into()),
                        Etf::Binary(path.as_bytes().to_vec()),
                    ),
                    (Etf::Atom("line".into()), Etf::Integer(1)),
                ]),
                Etf::List(
                    vec![Etf::Tuple(vec![Etf::Atom("vsn".into()), Etf::Integer(7)])],
                    None,
                ),
            ])
        };
        let (found, count) = differences(&file("/tmp/a/x.ex"), &file("/build/x.ex"), 5);
        assert_eq!(count, 1);
        assert_eq!(found[0].at, "{2}.file");
        assert_eq!(
            render(found[0].published.as_ref().unwrap(), 100),
            "<<\"/tmp/a/x.ex\">>"
        );
        let mut other = file("/tmp/a/x.ex");
        if let Etf::Tuple(items) = &mut other {
            items[2] = Etf::List(
                vec![Etf::Tuple(vec![Etf::Atom("vsn".into()), Etf::Integer(8)])],
                None,
            );
        }
        let (found, _) = differences(&file("/tmp/a/x.ex"), &other, 5);
        assert_eq!(found[0].at, "{3}.vsn");
    }

    fn pair(key: &str, value: i64) -> Etf {
        Etf::Tuple(vec![Etf::Atom(key.into()), Etf::Integer(value)])
    }

    fn keywords(pairs: &[(&str, i64)]) -> Etf {
        Etf::List(pairs.iter().map(|(k, v)| pair(k, *v)).collect(), None)
    }

    #[test]
    fn out_of_order_keeps_a_longest_common_order() {
        assert!(out_of_order(&[0, 1, 2]).is_empty());
        assert_eq!(out_of_order(&[2, 0, 1]), vec![0]);
        assert_eq!(out_of_order(&[0, 3, 1, 2]), vec![1]);
        assert_eq!(out_of_order(&[3, 2, 1, 0]).len(), 3);
        assert_eq!(
            matching(&[1, 1, 2], &[2, 1, 1], |a, b| a == b),
            Some(vec![2, 0, 1])
        );
        assert_eq!(matching(&[1, 1, 2], &[2, 2, 1], |a, b| a == b), None);
    }

    #[test]
    fn the_same_elements_in_another_order_are_one_order_only_difference() {
        // A keyword list: its keys are named.
        let (found, count) = differences(
            &keywords(&[("a", 1), ("b", 2), ("c", 3)]),
            &keywords(&[("c", 3), ("a", 1), ("b", 2)]),
            5,
        );
        assert_eq!(count, 1);
        let reorder = found[0].reorder.as_ref().unwrap();
        assert_eq!(found[0].at, "the term");
        assert_eq!(
            (reorder.container, reorder.length, reorder.only),
            (Container::KeywordList, 3, true)
        );
        assert_eq!(reorder.moved, vec![Etf::Atom("c".into())]);

        // A plain list with a repeated element, inside a tuple.
        let list = |items: &[i64]| {
            Etf::Tuple(vec![Etf::List(
                items.iter().map(|i| Etf::Integer(*i)).collect(),
                None,
            )])
        };
        let (found, count) = differences(&list(&[7, 7, 9]), &list(&[9, 7, 7]), 5);
        assert_eq!(count, 1);
        assert_eq!(found[0].at, "{1}");
        let reorder = found[0].reorder.as_ref().unwrap();
        assert_eq!(reorder.container, Container::List);
        assert_eq!(reorder.moved, vec![Etf::Integer(9)]);

        // A map whose pairs were written in another order.
        let map = |pairs: &[(&str, i64)]| {
            Etf::Map(
                pairs
                    .iter()
                    .map(|(k, v)| (Etf::Atom((*k).into()), Etf::Integer(*v)))
                    .collect(),
            )
        };
        let (found, count) =
            differences(&map(&[("x", 1), ("y", 2)]), &map(&[("y", 2), ("x", 1)]), 5);
        assert_eq!(count, 1);
        let reorder = found[0].reorder.as_ref().unwrap();
        assert_eq!((reorder.container, reorder.only), (Container::Map, true));
        assert_eq!(reorder.moved_count, 1);
    }

    #[test]
    fn a_reorder_beside_changed_values_names_both() {
        let (found, count) = differences(
            &keywords(&[("a", 1), ("b", 2), ("c", 3)]),
            &keywords(&[("c", 3), ("a", 1), ("b", 9)]),
            5,
        );
        assert_eq!(count, 2, "{found:?}");
        let reorder = found[0].reorder.as_ref().unwrap();
        assert!(!reorder.only);
        assert_eq!(reorder.moved, vec![Etf::Atom("c".into())]);
        assert_eq!(found[1].at, ".b");
        assert_eq!(found[1].published, Some(Etf::Integer(2)));
        assert_eq!(found[1].rebuilt, Some(Etf::Integer(9)));
        // Lists that are no permutation of each other are still compared element by element.
        let (found, count) = differences(&keywords(&[]), &keywords(&[("a", 1)]), 5);
        assert_eq!(count, 1);
        assert!(found[0].reorder.is_none());
    }
}
