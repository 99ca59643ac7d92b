//! The variables of a project's own Makefile as GNU make computes them, read without running
//! make: what erlang.mk's Hex plugin reads (`PROJECT`, `PROJECT_VERSION`, `DEPS`, `dep_*`, ...).
//!
//! Covered: assignments (`=`, `:=`, `::=`, `:::=`, `?=`, `+=`, with `override`/`export`),
//! `define ... endef`, backslash-newline continuations, comments, recipes (skipped),
//! conditionals (`ifeq`, `ifneq`, `ifdef`, `ifndef`, `else`, `endif`), substitution references
//! and the text functions (`if`, `or`, `and`, `strip`, `subst`, `patsubst`, `findstring`,
//! `filter`, `filter-out`, `sort`, `word`, `words`, `wordlist`, `firstword`, `lastword`,
//! `addprefix`, `addsuffix`, `notdir`, `dir`).
//!
//! The environment is empty, as in a clean release build: `ifdef HIPE` is false. Anything that
//! would run or read something (`$(shell)`, `$(wildcard)`, `!=`, `$(call)`, ...) is never
//! evaluated: a variable that needs it reads as an error naming it, never as a guess; so does
//! one set under a condition that needs it. Included files are not read, but `include
//! erlang.mk` applies erlang.mk's defaults for the project variables there
//! (ninenines/erlang.mk core/core.mk: `PROJECT ?= $(notdir $(CURDIR))`, `PROJECT :=
//! $(strip $(PROJECT))`, `PROJECT_VERSION ?= rolling`). `tests/makefile.rs` checks the result
//! against GNU make itself.

use std::collections::{HashMap, HashSet};

/// Expansions nested deeper than this are a loop (`A = $(B)`, `B = $(A)`).
const MAX_EXPANSION_DEPTH: usize = 64;

/// Functions that run commands, read files or define things: never evaluated.
const UNEVALUATED_FUNCTIONS: &[&str] = &[
    "shell", "wildcard", "foreach", "call", "eval", "origin", "flavor", "value", "file", "info",
    "warning", "error", "realpath", "abspath", "guile", "let", "intcmp", "join", "basename",
    "suffix",
];

/// A Makefile's variables after reading it top to bottom.
#[derive(Debug, Clone, Default)]
pub struct Makefile {
    vars: HashMap<String, Value>,
    /// Variables a line of the Makefile assigns (erlang.mk's defaults are not).
    assigned: HashSet<String>,
    includes: Vec<String>,
}

#[derive(Debug, Clone)]
enum Value {
    /// `=`: expanded when used.
    Recursive(String),
    /// `:=`: expanded when set.
    Simple(String),
    /// Set by something not evaluated; the reason.
    Unknown(String),
}

/// Why a Makefile or one of its variables could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MakeError(pub String);

/// Whether lines at this point are read.
#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Active,
    Inactive,
    /// Under a condition that could not be evaluated: assignments make their variable unknown.
    Unknown(String),
}

struct Conditional {
    parent: Mode,
    current: Mode,
    /// Some branch was taken (or could not be ruled out).
    decided: bool,
    /// Line of the `if...`, for "missing endif".
    line: usize,
}

impl Makefile {
    /// Reads `text`, a Makefile in a directory named `curdir_name` (erlang.mk's default
    /// `PROJECT`).
    pub fn parse(text: &str, curdir_name: &str) -> Result<Makefile, MakeError> {
        let lines: Vec<&str> = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .collect();
        let mut make = Makefile::default();
        let mut conditionals: Vec<Conditional> = Vec::new();
        let mut in_recipe = false;
        let mut i = 0;
        while i < lines.len() {
            let number = i + 1;
            let first = lines[i];
            i += 1;
            // A logical line: backslash-newline and the blanks around it become one space.
            let mut logical = first.to_string();
            while ends_with_continuation(&logical) && i < lines.len() {
                logical.pop();
                let kept = logical.trim_end().len();
                logical.truncate(kept);
                logical.push(' ');
                logical.push_str(lines[i].trim_start());
                i += 1;
            }
            if in_recipe && logical.starts_with('\t') {
                continue;
            }
            let line = strip_comment(&logical);
            // make keeps the blanks that end a value, even before a comment.
            let line = line.trim_start();
            if line.trim_end().is_empty() {
                continue;
            }
            let at = |message: String| MakeError(format!("line {number}: {message}"));
            let mode = conditionals
                .last()
                .map_or(Mode::Active, |c| c.current.clone());
            let (word, rest) = split_directive(line);

            match word {
                "ifeq" | "ifneq" | "ifdef" | "ifndef" => {
                    let current = match &mode {
                        Mode::Active => match make.condition(word, rest) {
                            Ok(true) => Mode::Active,
                            Ok(false) => Mode::Inactive,
                            Err(reason) => Mode::Unknown(format!("line {number}: {reason}")),
                        },
                        other => other.clone(),
                    };
                    conditionals.push(Conditional {
                        decided: current != Mode::Inactive,
                        parent: mode,
                        current,
                        line: number,
                    });
                    continue;
                }
                "else" => {
                    let Some(c) = conditionals.last_mut() else {
                        return Err(at("`else` without a conditional".into()));
                    };
                    c.current = if c.parent != Mode::Active {
                        c.parent.clone()
                    } else if let Mode::Unknown(reason) = &c.current {
                        Mode::Unknown(reason.clone())
                    } else if c.decided {
                        Mode::Inactive
                    } else {
                        let (word, rest) = split_directive(rest);
                        let evaluated = match word {
                            "" => Ok(true),
                            "ifeq" | "ifneq" | "ifdef" | "ifndef" => make.condition(word, rest),
                            _ => return Err(at(format!("unexpected text after else: {rest}"))),
                        };
                        match evaluated {
                            Ok(true) => Mode::Active,
                            Ok(false) => Mode::Inactive,
                            Err(reason) => Mode::Unknown(format!("line {number}: {reason}")),
                        }
                    };
                    c.decided |= c.current != Mode::Inactive;
                    continue;
                }
                "endif" => {
                    if conditionals.pop().is_none() {
                        return Err(at("`endif` without a conditional".into()));
                    }
                    continue;
                }
                "define" => {
                    let (name, op) = define_header(rest);
                    let mut body = Vec::new();
                    let mut nesting = 0;
                    loop {
                        let Some(next) = lines.get(i) else {
                            return Err(at(format!("`define {name}` has no `endef`")));
                        };
                        i += 1;
                        let (w, _) = split_directive(next.trim());
                        if w == "define" {
                            nesting += 1;
                        } else if w == "endef" {
                            if nesting == 0 {
                                break;
                            }
                            nesting -= 1;
                        }
                        body.push(*next);
                    }
                    in_recipe = false;
                    make.assign_in(&mode, name, op, &body.join("\n"));
                    continue;
                }
                "endef" => return Err(at("`endef` without `define`".into())),
                _ => {}
            }
            if mode == Mode::Inactive {
                continue;
            }
            match word {
                "include" | "-include" | "sinclude" => {
                    in_recipe = false;
                    if let Ok(files) = make.expand(rest, 0) {
                        for file in files.split_whitespace() {
                            make.includes.push(file.to_string());
                            if mode == Mode::Active && file.rsplit('/').next() == Some("erlang.mk")
                            {
                                make.erlang_mk_defaults(curdir_name);
                            }
                        }
                    }
                    continue;
                }
                "vpath" | "unexport" => continue,
                _ => {}
            }
            // `override`, `export` and `private` change nothing here.
            let mut statement = line;
            loop {
                let (word, rest) = split_directive(statement);
                match word {
                    "override" | "export" | "private" if !rest.is_empty() => statement = rest,
                    _ => break,
                }
            }
            match find_operator(statement) {
                Some(Found::Assignment { at, op }) => {
                    in_recipe = false;
                    let name_text = statement[..at].trim();
                    let value = statement[at + op.len()..].trim_start();
                    let name = match make.expand(name_text, 0) {
                        Ok(name) => name.trim().to_string(),
                        // A computed name we cannot compute could be any variable.
                        Err(_) => continue,
                    };
                    make.assign_in(&mode, &name, op, value);
                }
                Some(Found::Rule) => in_recipe = true,
                // `$(eval ...)`, `$(info ...)` and the like at top level.
                None => {}
            }
        }
        if let Some(open) = conditionals.last() {
            return Err(MakeError(format!(
                "line {}: conditional has no `endif`",
                open.line
            )));
        }
        Ok(make)
    }

    /// Whether the Makefile sets `name` at all (even to nothing).
    pub fn is_defined(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    /// Whether a line of the Makefile assigns `name` (not only erlang.mk's defaults).
    pub fn sets(&self, name: &str) -> bool {
        self.assigned.contains(name)
    }

    /// The names of every variable the Makefile sets.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// `$(name)`, expanded: empty when the Makefile does not set it.
    pub fn value(&self, name: &str) -> Result<String, MakeError> {
        self.variable(name, 0)
            .map_err(|reason| MakeError(format!("{name}: {reason}")))
    }

    /// Files named by `include` lines (expanded where possible), in order.
    pub fn includes(&self) -> &[String] {
        &self.includes
    }

    /// Whether an `include` line names erlang.mk.
    pub fn includes_erlang_mk(&self) -> bool {
        self.includes
            .iter()
            .any(|f| f.rsplit('/').next() == Some("erlang.mk"))
    }

    fn erlang_mk_defaults(&mut self, curdir_name: &str) {
        self.assign("PROJECT", "?=", curdir_name);
        self.assign("PROJECT", ":=", "$(strip $(PROJECT))");
        self.assign("PROJECT_VERSION", "?=", "rolling");
    }

    fn assign_in(&mut self, mode: &Mode, name: &str, op: &str, value: &str) {
        if *mode != Mode::Inactive {
            self.assigned.insert(name.to_string());
        }
        match mode {
            Mode::Active => self.assign(name, op, value),
            Mode::Inactive => {}
            Mode::Unknown(reason) => {
                self.vars.insert(
                    name.to_string(),
                    Value::Unknown(format!(
                        "set under a condition precomp cannot evaluate ({reason})"
                    )),
                );
            }
        }
    }

    fn assign(&mut self, name: &str, op: &str, value: &str) {
        let simple = |make: &Makefile, text: &str| match make.expand(text, 0) {
            Ok(v) => Value::Simple(v),
            Err(reason) => Value::Unknown(reason),
        };
        let new = match op {
            "=" => Value::Recursive(value.to_string()),
            ":=" | "::=" | ":::=" => simple(self, value),
            "?=" => {
                if self.vars.contains_key(name) {
                    return;
                }
                Value::Recursive(value.to_string())
            }
            "+=" => match self.vars.get(name) {
                None => Value::Recursive(value.to_string()),
                Some(Value::Recursive(old)) => Value::Recursive(join_words(old, value)),
                Some(Value::Simple(old)) => match self.expand(value, 0) {
                    Ok(v) => Value::Simple(join_words(old, &v)),
                    Err(reason) => Value::Unknown(reason),
                },
                Some(Value::Unknown(reason)) => Value::Unknown(reason.clone()),
            },
            "!=" => Value::Unknown(
                "is set with `!=` (a shell command), which precomp does not run".into(),
            ),
            _ => return,
        };
        self.vars.insert(name.to_string(), new);
    }

    /// Evaluates `ifeq (a,b)`, `ifneq "a" "b"`, `ifdef VAR`, ...
    fn condition(&self, directive: &str, rest: &str) -> Result<bool, String> {
        match directive {
            "ifdef" | "ifndef" => {
                let name = self.expand(rest, 0)?;
                // ifdef looks at the value as set, without expanding it.
                let set = match self.vars.get(name.trim()) {
                    None => false,
                    Some(Value::Recursive(v) | Value::Simple(v)) => !v.is_empty(),
                    Some(Value::Unknown(reason)) => return Err(reason.clone()),
                };
                Ok(set == (directive == "ifdef"))
            }
            _ => {
                let (a, b) = condition_args(rest)
                    .ok_or_else(|| format!("cannot read the arguments of `{directive} {rest}`"))?;
                let equal = self.expand(a, 0)? == self.expand(b, 0)?;
                Ok(equal == (directive == "ifeq"))
            }
        }
    }

    fn variable(&self, name: &str, depth: usize) -> Result<String, String> {
        match self.vars.get(name) {
            None => Ok(String::new()),
            Some(Value::Simple(v)) => Ok(v.clone()),
            Some(Value::Recursive(v)) => self.expand(v, depth + 1),
            Some(Value::Unknown(reason)) => Err(reason.clone()),
        }
    }

    /// Expands every reference in `text`.
    fn expand(&self, text: &str, depth: usize) -> Result<String, String> {
        if depth > MAX_EXPANSION_DEPTH {
            return Err("a variable refers to itself".into());
        }
        let mut out = String::new();
        let mut rest = text;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            let mut chars = after.chars();
            match chars.next() {
                None => rest = "",
                Some('$') => {
                    out.push('$');
                    rest = &after[1..];
                }
                Some(open @ ('(' | '{')) => {
                    let close = if open == '(' { ')' } else { '}' };
                    let end = matching(after, open, close)
                        .ok_or_else(|| format!("unterminated reference in {text:?}"))?;
                    out.push_str(&self.reference(&after[1..end], depth)?);
                    rest = &after[end + 1..];
                }
                Some(c) => {
                    out.push_str(&self.variable(&c.to_string(), depth)?);
                    rest = chars.as_str();
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The inside of `$(...)`: a function call, a substitution reference or a variable.
    fn reference(&self, inner: &str, depth: usize) -> Result<String, String> {
        if let Some(space) = inner.find([' ', '\t']) {
            let function = &inner[..space];
            let args = inner[space..].trim_start_matches([' ', '\t']);
            if UNEVALUATED_FUNCTIONS.contains(&function) {
                let shown: String = inner.chars().take(40).collect();
                return Err(format!(
                    "$({shown}...) is not evaluated (precomp reads Makefiles without running anything)"
                ));
            }
            if let Some(result) = self.function(function, args, depth) {
                return result;
            }
        }
        if let Some(colon) = top_level_find(inner, ':') {
            if let Some(eq) = top_level_find(&inner[colon..], '=') {
                let value = self.variable(self.expand(&inner[..colon], depth)?.trim(), depth)?;
                let from = self.expand(&inner[colon + 1..colon + eq], depth)?;
                let to = self.expand(&inner[colon + eq + 1..], depth)?;
                let (from, to) = if from.contains('%') {
                    (from, to)
                } else {
                    (format!("%{from}"), format!("%{to}"))
                };
                return Ok(patsubst(&from, &to, &value));
            }
        }
        let name = self.expand(inner, depth)?;
        self.variable(&name, depth)
    }

    fn function(&self, name: &str, args: &str, depth: usize) -> Option<Result<String, String>> {
        let arity = match name {
            "if" | "subst" | "patsubst" | "wordlist" => 3,
            "findstring" | "filter" | "filter-out" | "word" | "addprefix" | "addsuffix" => 2,
            "strip" | "sort" | "words" | "firstword" | "lastword" | "notdir" | "dir" => 1,
            "or" | "and" => usize::MAX,
            _ => return None,
        };
        let raw = split_args(args, arity);
        let e = |i: usize| -> Result<String, String> {
            raw.get(i)
                .map_or(Ok(String::new()), |a| self.expand(a, depth))
        };
        let number = |s: String| -> Result<usize, String> {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("$({name} ...) needs a number, got {s:?}"))
        };
        let result = (|| -> Result<String, String> {
            Ok(match name {
                "if" => {
                    if !e(0)?.trim().is_empty() {
                        e(1)?
                    } else {
                        e(2)?
                    }
                }
                "or" => {
                    for i in 0..raw.len() {
                        let v = e(i)?;
                        if !v.trim().is_empty() {
                            return Ok(v);
                        }
                    }
                    String::new()
                }
                "and" => {
                    let mut last = String::new();
                    for i in 0..raw.len() {
                        last = e(i)?;
                        if last.trim().is_empty() {
                            return Ok(String::new());
                        }
                    }
                    last
                }
                "strip" => words(&e(0)?).join(" "),
                "subst" => {
                    let (from, to, text) = (e(0)?, e(1)?, e(2)?);
                    if from.is_empty() {
                        text + &to
                    } else {
                        text.replace(&from, &to)
                    }
                }
                "patsubst" => patsubst(&e(0)?, &e(1)?, &e(2)?),
                "findstring" => {
                    let (find, within) = (e(0)?, e(1)?);
                    if within.contains(&find) {
                        find
                    } else {
                        String::new()
                    }
                }
                "filter" | "filter-out" => {
                    let patterns = e(0)?;
                    let patterns = words(&patterns);
                    let keep = name == "filter";
                    words(&e(1)?)
                        .into_iter()
                        .filter(|w| patterns.iter().any(|p| pattern_match(p, w).is_some()) == keep)
                        .collect::<Vec<_>>()
                        .join(" ")
                }
                "sort" => {
                    let text = e(0)?;
                    let mut w = words(&text);
                    w.sort_unstable();
                    w.dedup();
                    w.join(" ")
                }
                "word" => {
                    let n = number(e(0)?)?;
                    if n == 0 {
                        return Err("$(word 0, ...) is invalid".into());
                    }
                    words(&e(1)?).get(n - 1).copied().unwrap_or("").to_string()
                }
                "wordlist" => {
                    let (start, end) = (number(e(0)?)?, number(e(1)?)?);
                    if start == 0 {
                        return Err("$(wordlist 0, ...) is invalid".into());
                    }
                    // The text from the first word to the last, blanks between kept.
                    let text = e(2)?;
                    let spans = word_spans(&text);
                    match (
                        spans.get(start - 1),
                        spans.get(end.min(spans.len()).wrapping_sub(1)),
                    ) {
                        (Some(first), Some(last)) if end >= start => {
                            text[first.0..last.1].to_string()
                        }
                        _ => String::new(),
                    }
                }
                "words" => words(&e(0)?).len().to_string(),
                "firstword" => words(&e(0)?).first().copied().unwrap_or("").to_string(),
                "lastword" => words(&e(0)?).last().copied().unwrap_or("").to_string(),
                "addprefix" | "addsuffix" => {
                    let affix = e(0)?;
                    words(&e(1)?)
                        .into_iter()
                        .map(|w| {
                            if name == "addprefix" {
                                format!("{affix}{w}")
                            } else {
                                format!("{w}{affix}")
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                }
                "notdir" | "dir" => words(&e(0)?)
                    .into_iter()
                    .map(|w| match w.rfind('/') {
                        Some(i) if name == "notdir" => w[i + 1..].to_string(),
                        Some(i) => w[..=i].to_string(),
                        None if name == "notdir" => w.to_string(),
                        None => "./".to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => unreachable!("arity covers every function"),
            })
        })();
        Some(result)
    }
}

/// Whitespace-separated words, as make splits them.
pub fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

/// Byte ranges of the words of `text`.
fn word_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, text.len()));
    }
    spans
}

fn join_words(old: &str, new: &str) -> String {
    if old.is_empty() {
        new.to_string()
    } else {
        format!("{old} {new}")
    }
}

/// An odd number of trailing backslashes continues the line.
fn ends_with_continuation(line: &str) -> bool {
    line.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1
}

/// Cuts a `#` comment (not `\#`) and unescapes `\#`.
fn strip_comment(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'#') => {
                out.push('#');
                chars.next();
            }
            '#' => break,
            _ => out.push(c),
        }
    }
    out
}

/// The first word of a line (up to a blank or a parenthesis) and the rest, trimmed.
fn split_directive(line: &str) -> (&str, &str) {
    let end = line
        .find(|c: char| c.is_whitespace() || c == '(' || c == '"' || c == '\'')
        .unwrap_or(line.len());
    (&line[..end], line[end..].trim())
}

/// `define NAME`, `define NAME =`, `define NAME :=`, ...
fn define_header(rest: &str) -> (&str, &str) {
    let rest = rest.trim();
    for op in [":::=", "::=", ":=", "?=", "+=", "!=", "="] {
        if let Some(name) = rest.strip_suffix(op) {
            return (name.trim(), op);
        }
    }
    (rest, "=")
}

enum Found {
    Assignment { at: usize, op: &'static str },
    Rule,
}

/// The assignment operator of a line, or whether it is a rule, looking only outside `$(...)`.
fn find_operator(line: &str) -> Option<Found> {
    let bytes = line.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'(' | b'{' => depth += 1,
            b')' | b'}' => depth = depth.saturating_sub(1),
            b':' if depth == 0 => {
                for op in [":::=", "::=", ":="] {
                    if line[i..].starts_with(op) {
                        return Some(Found::Assignment { at: i, op });
                    }
                }
                return Some(Found::Rule);
            }
            b'=' if depth == 0 => {
                for (prefix, op) in [(b'?', "?="), (b'+', "+="), (b'!', "!=")] {
                    if i > 0 && bytes[i - 1] == prefix {
                        return Some(Found::Assignment { at: i - 1, op });
                    }
                }
                return Some(Found::Assignment { at: i, op: "=" });
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index in `text` (which starts with `open`) of the `close` that ends it.
fn matching(text: &str, open: char, close: char) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// The first `needle` outside any parentheses or braces.
fn top_level_find(text: &str, needle: char) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' | '{' => depth += 1,
            ')' | '}' => depth = depth.saturating_sub(1),
            c if c == needle && depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

/// Function arguments split at top-level commas; the last of `arity` takes the rest.
fn split_args(args: &str, arity: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in args.char_indices() {
        match c {
            '(' | '{' => depth += 1,
            ')' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 && out.len() + 1 < arity => {
                out.push(&args[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&args[start..]);
    out
}

/// `ifeq (a,b)` or `ifeq "a" "b"` (either quote) → the two unexpanded arguments.
fn condition_args(rest: &str) -> Option<(&str, &str)> {
    let rest = rest.trim();
    if let Some(inner) = rest.strip_prefix('(') {
        let inner = inner.strip_suffix(')')?;
        let comma = top_level_find(inner, ',')?;
        return Some((inner[..comma].trim(), inner[comma + 1..].trim()));
    }
    let quoted = |s: &str| -> Option<(usize, usize)> {
        let q = s.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let end = s[1..].find(q)? + 1;
        Some((1, end))
    };
    let (a_start, a_end) = quoted(rest)?;
    let second = rest[a_end + 1..].trim_start();
    let (b_start, b_end) = quoted(second)?;
    if !second[b_end + 1..].trim().is_empty() {
        return None;
    }
    Some((&rest[a_start..a_end], &second[b_start..b_end]))
}

/// make's `%` pattern: the stem when `word` matches `pattern`.
fn pattern_match<'w>(pattern: &str, word: &'w str) -> Option<&'w str> {
    match pattern.split_once('%') {
        None => (pattern == word).then_some(""),
        Some((prefix, suffix)) => (word.len() >= prefix.len() + suffix.len()
            && word.starts_with(prefix)
            && word.ends_with(suffix))
        .then(|| &word[prefix.len()..word.len() - suffix.len()]),
    }
}

fn patsubst(pattern: &str, replacement: &str, text: &str) -> String {
    words(text)
        .into_iter()
        .map(|w| match pattern_match(pattern, w) {
            Some(stem) if pattern.contains('%') => replacement.replacen('%', stem, 1),
            Some(_) => replacement.to_string(),
            None => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
