//! BEAM files: the IFF container (`FOR1`, size, `BEAM`, then chunks of a 4-byte id, a 4-byte
//! big-endian size and the data padded to 4 bytes), and what differs between two builds of
//! one module, chunk by chunk, decoded where the format allows:
//!
//! - `Dbgi`, `Docs`, `Attr`, `CInf`, `ExCk`, `Meta`: one external term each; the places where
//!   the terms differ (e.g. `{3}{2}.file` of Elixir's debug info) with both values, and the
//!   absolute paths among them (mix-mechanics.md §4: where host paths end up in beams);
//! - `LitT`: the literal table (zlib), literal by literal;
//! - `AtU8`/`Atom`: the atoms only one side has;
//! - `StrT` and the code chunks (`Code`, `FunT`, `ExpT`, `ImpT`, `LocT`, `Line`, `Type`): the
//!   first differing byte; they follow from the source and the other chunks.

use std::fmt::Write as _;

use precomp_proto::verdict::{ChunkDifference, CHANGED, ONLY_PUBLISHED, ONLY_REBUILT};

use super::etf::{self, Etf};
pub use precomp_proto::beam::{atoms, literals, parse, Beam, BeamError};

/// A parsed beam: its chunks in file order.
/// Bound on the differences listed per chunk.
const PER_CHUNK: usize = 5;

/// Bound on a rendered value.
const VALUE_BUDGET: usize = 240;

/// The chunks that differ between two builds of one beam, in the published file's order
/// (then chunks only the rebuild has), each explained as far as it can be decoded.
pub fn diff(published: &Beam<'_>, rebuilt: &Beam<'_>) -> Vec<ChunkDifference> {
    let mut differences = Vec::new();
    for (id, data) in &published.chunks {
        match rebuilt.chunk(id) {
            Some(other) if other == *data => {}
            Some(other) => differences.push(ChunkDifference {
                id: id.clone(),
                change: CHANGED.into(),
                published_size: data.len() as u64,
                rebuilt_size: other.len() as u64,
                explanation: explain(id, data, other),
            }),
            None => differences.push(ChunkDifference {
                id: id.clone(),
                change: ONLY_PUBLISHED.into(),
                published_size: data.len() as u64,
                rebuilt_size: 0,
                explanation: format!("only the published beam has a {id} chunk"),
            }),
        }
    }
    for (id, data) in &rebuilt.chunks {
        if published.chunk(id).is_none() {
            differences.push(ChunkDifference {
                id: id.clone(),
                change: ONLY_REBUILT.into(),
                published_size: 0,
                rebuilt_size: data.len() as u64,
                explanation: format!("only the rebuilt beam has a {id} chunk"),
            });
        }
    }
    differences
}

/// What differs in one chunk, in words.
pub fn explain(id: &str, published: &[u8], rebuilt: &[u8]) -> String {
    let decoded = match id {
        "Dbgi" | "Docs" | "Attr" | "CInf" | "ExCk" | "Meta" | "Abst" => {
            match (etf::decode(published), etf::decode(rebuilt)) {
                (Ok(a), Ok(b)) => Some(term_differences(&a, &b, id, (published, rebuilt))),
                _ => None,
            }
        }
        "LitT" => match (literals(published), literals(rebuilt)) {
            (Ok(a), Ok(b)) => Some(literal_differences(&a, &b, (published, rebuilt))),
            _ => None,
        },
        "AtU8" | "Atom" => match (atoms(published), atoms(rebuilt)) {
            (Ok(a), Ok(b)) => Some(atom_differences(&a, &b)),
            _ => None,
        },
        "StrT" => Some(first_byte(published, rebuilt, true)),
        _ => None,
    };
    let mut text = decoded.unwrap_or_else(|| first_byte(published, rebuilt, false));
    if let Some(note) = note(id) {
        text.push_str(note);
    }
    cut(text, precomp_proto::verdict::MAX_EXPLANATION)
}

fn note(id: &str) -> Option<&'static str> {
    Some(match id {
        "Dbgi" => " (Dbgi is the debug info: the module's abstract code and, for Elixir, the source file's absolute path)",
        "CInf" => " (CInf is the compile info: options, version and, without `deterministic`, the source path)",
        "Attr" => " (Attr holds the module attributes; `vsn` is an MD5 of the code, so it follows from other chunks)",
        "LitT" => " (LitT is the literal table: compile-time values such as __ENV__.file or a time baked into the code)",
        "Code" => " (Code is the compiled code: it follows from the source, the literals and the atoms)",
        "Docs" => " (Docs holds the documentation; on Elixir 1.18 it records the absolute source_path)",
        _ => return None,
    })
}

fn term_differences(published: &Etf, rebuilt: &Etf, what: &str, bytes: (&[u8], &[u8])) -> String {
    let (found, count) = etf::differences(published, rebuilt, PER_CHUNK);
    if count == 0 {
        // Equal terms in other bytes: never "0 differences" for a chunk that differs.
        return format!(
            "the same {what} term, encoded differently (compression, or atoms or integers in \
             another encoding); {}",
            first_byte(bytes.0, bytes.1, false)
        );
    }
    let order_only = found.len() == count
        && found
            .iter()
            .all(|d| d.reorder.as_ref().is_some_and(|r| r.only));
    let mut text = String::new();
    let _ = write!(
        text,
        "{count} {}difference{} in the {what} term",
        if order_only { "order-only " } else { "" },
        if count == 1 { "" } else { "s" }
    );
    describe(&found, &mut text);
    text
}

fn describe(found: &[etf::Difference], text: &mut String) {
    let show = |value: &Option<Etf>| match value {
        Some(value) => etf::render(value, VALUE_BUDGET),
        None => "(absent)".into(),
    };
    let mut published_paths = Vec::new();
    let mut rebuilt_paths = Vec::new();
    for difference in found {
        if let Some(reorder) = &difference.reorder {
            text.push_str("; ");
            reorder_text(&difference.at, reorder, text);
            continue;
        }
        let _ = write!(
            text,
            "; at {}: published {}, rebuilt {}",
            difference.at,
            show(&difference.published),
            show(&difference.rebuilt)
        );
        if let Some(value) = &difference.published {
            etf::absolute_paths(value, &mut published_paths);
        }
        if let Some(value) = &difference.rebuilt {
            etf::absolute_paths(value, &mut rebuilt_paths);
        }
    }
    published_paths.retain(|p| !rebuilt_paths.contains(p));
    if !published_paths.is_empty() || !rebuilt_paths.is_empty() {
        let _ = write!(
            text,
            "; absolute paths: published {}, rebuilt {}",
            list(&published_paths),
            list(&rebuilt_paths)
        );
    }
}

/// `order-only difference in the keyword list at {3}{2}.x (41 elements) — keys moved (20 of
/// 41): a, b, …`, or for a container whose values differ too, that its keys moved as well.
fn reorder_text(at: &str, reorder: &etf::Reorder, text: &mut String) {
    let moved: Vec<String> = reorder
        .moved
        .iter()
        .map(|item| etf::render(item, 60))
        .collect();
    let more = if reorder.moved_count > reorder.moved.len() {
        ", …"
    } else {
        ""
    };
    let container = reorder.container.name();
    let items = reorder.container.items();
    let whole = if at == "the term" {
        " (the whole term)"
    } else {
        ""
    };
    if reorder.only {
        let _ = write!(
            text,
            "order-only difference in the {container} at {at}{whole} ({} elements, the same \
             on both sides) — {items} moved ({} of {}): {}{more}",
            reorder.length,
            reorder.moved_count,
            reorder.length,
            moved.join(", ")
        );
    } else {
        let _ = write!(
            text,
            "the {container} at {at}{whole} has its {items} in another order too — moved ({} \
             of {}): {}{more}",
            reorder.moved_count,
            reorder.length,
            moved.join(", ")
        );
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
    }
}

fn literal_differences(published: &[Etf], rebuilt: &[Etf], bytes: (&[u8], &[u8])) -> String {
    // The same literals in another order (the table follows the order code first uses them).
    if published != rebuilt {
        if let Some(order) = etf::matching(published, rebuilt, |a, b| a == b) {
            let moved: Vec<String> = etf::out_of_order(&order)
                .into_iter()
                .map(|i| format!("literal {i} {}", etf::render(&rebuilt[i], 60)))
                .collect();
            return format!(
                "order-only difference in the literal table ({} literals, the same on both \
                 sides) — literals moved ({} of {}): {}{}",
                rebuilt.len(),
                moved.len(),
                rebuilt.len(),
                moved
                    .iter()
                    .take(etf::MAX_MOVED)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if moved.len() > etf::MAX_MOVED {
                    ", …"
                } else {
                    ""
                }
            );
        }
    }
    let mut text = String::new();
    if published.len() != rebuilt.len() {
        let _ = write!(
            text,
            "{} literals published, {} rebuilt",
            published.len(),
            rebuilt.len()
        );
    }
    let mut found = Vec::new();
    let mut count = 0;
    for (i, (a, b)) in published.iter().zip(rebuilt).enumerate() {
        if a == b {
            continue;
        }
        let (inner, n) = etf::differences(a, b, PER_CHUNK);
        count += n;
        for mut difference in inner {
            if found.len() < PER_CHUNK {
                difference.at = if difference.at == "the term" {
                    format!("literal {i}")
                } else {
                    format!("literal {i} {}", difference.at)
                };
                found.push(difference);
            }
        }
    }
    // Literals only one side has.
    for (i, a) in published.iter().enumerate().skip(rebuilt.len()) {
        count += 1;
        if found.len() < PER_CHUNK {
            found.push(etf::Difference {
                at: format!("literal {i}"),
                published: Some(a.clone()),
                rebuilt: None,
                reorder: None,
            });
        }
    }
    for (i, b) in rebuilt.iter().enumerate().skip(published.len()) {
        count += 1;
        if found.len() < PER_CHUNK {
            found.push(etf::Difference {
                at: format!("literal {i}"),
                published: None,
                rebuilt: Some(b.clone()),
                reorder: None,
            });
        }
    }
    if count == 0 {
        return format!(
            "the same literals, encoded differently; {}",
            first_byte(bytes.0, bytes.1, false)
        );
    }
    if !text.is_empty() {
        text.push_str("; ");
    }
    let order_only = found.len() == count
        && found
            .iter()
            .all(|d| d.reorder.as_ref().is_some_and(|r| r.only));
    let _ = write!(
        text,
        "{count} {}literal difference{}",
        if order_only { "order-only " } else { "" },
        if count == 1 { "" } else { "s" }
    );
    describe(&found, &mut text);
    text
}

fn atom_differences(published: &[String], rebuilt: &[String]) -> String {
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter()
            .filter(|x| !b.contains(x))
            .take(8)
            .cloned()
            .collect()
    };
    let (p, r) = (only(published, rebuilt), only(rebuilt, published));
    if p.is_empty() && r.is_empty() {
        if let Some(order) = etf::matching(published, rebuilt, |a, b| a == b) {
            let moved = etf::out_of_order(&order);
            let names: Vec<&str> = moved
                .iter()
                .take(etf::MAX_MOVED)
                .map(|&i| rebuilt[i].as_str())
                .collect();
            return format!(
                "order-only difference in the atom table ({} atoms, the same on both sides) — \
                 atoms moved ({} of {}): {}{}",
                rebuilt.len(),
                moved.len(),
                rebuilt.len(),
                names.join(", "),
                if moved.len() > names.len() {
                    ", …"
                } else {
                    ""
                }
            );
        }
        return "the same atoms, some of them more often on one side".into();
    }
    format!(
        "atoms only published: {}; only rebuilt: {}",
        if p.is_empty() {
            "none".into()
        } else {
            p.join(", ")
        },
        if r.is_empty() {
            "none".into()
        } else {
            r.join(", ")
        }
    )
}

/// Where two byte strings first differ; with `text`, the bytes around it as text.
pub fn first_byte(published: &[u8], rebuilt: &[u8], text: bool) -> String {
    let at = published
        .iter()
        .zip(rebuilt)
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = format!(
        "{} bytes published, {} rebuilt; first difference at byte {at}",
        published.len(),
        rebuilt.len()
    );
    if text {
        let around = |bytes: &[u8]| {
            let start = at.saturating_sub(16);
            let end = (at + 48).min(bytes.len());
            String::from_utf8_lossy(&bytes[start.min(end)..end]).into_owned()
        };
        let _ = write!(
            out,
            ": published {:?}, rebuilt {:?}",
            around(published),
            around(rebuilt)
        );
    }
    out
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub(3);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beam(chunks: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = b"BEAM".to_vec();
        for (id, data) in chunks {
            body.extend_from_slice(id.as_bytes());
            body.extend_from_slice(&(data.len() as u32).to_be_bytes());
            body.extend_from_slice(data);
            body.resize(body.len() + (4 - data.len() % 4) % 4, 0);
        }
        let mut file = b"FOR1".to_vec();
        file.extend_from_slice(&(body.len() as u32).to_be_bytes());
        file.extend_from_slice(&body);
        file
    }

    #[test]
    fn parses_chunks_and_refuses_broken_files() {
        let bytes = beam(&[("AtU8", b"\0\0\0\x01\x03foo"), ("Code", b"xyz")]);
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.chunks.len(), 2);
        assert_eq!(parsed.chunk("Code"), Some(&b"xyz"[..]));
        assert_eq!(atoms(parsed.chunk("AtU8").unwrap()).unwrap(), vec!["foo"]);
        assert_eq!(parse(b"FOR1\0\0\0\x04BEAX"), Err(BeamError::NotBeam));
        let mut truncated = bytes.clone();
        truncated.truncate(bytes.len() - 4);
        assert!(parse(&truncated).is_err());
        let mut lying = bytes.clone();
        lying[16..20].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(parse(&lying), Err(BeamError::Truncated { index: 0 }));
    }

    /// `elixirc` of `source` (copied to `dir/src/`) into `dir/out`; the beam's bytes.
    fn elixirc(source: &std::path::Path, dir: &std::path::Path, deterministic: bool) -> Vec<u8> {
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        let file = src.join(source.file_name().unwrap());
        std::fs::copy(source, &file).unwrap();
        let mut command = std::process::Command::new("elixirc");
        command.arg("-o").arg(dir.join("out")).arg(&file);
        if deterministic {
            command.env("ERL_COMPILER_OPTIONS", "deterministic");
        } else {
            command.env_remove("ERL_COMPILER_OPTIONS");
        }
        let output = command.output().expect("elixirc runs");
        assert!(output.status.success(), "{output:?}");
        let out = dir.join("out");
        let beam = std::fs::read_dir(&out)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::read(beam).unwrap()
    }

    fn fixture(path: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(path)
    }

    /// Two compiles of a module that bakes in its compile time, same path, deterministic:
    /// only what follows from the literal differs, and LitT shows both times.
    #[test]
    fn a_compile_time_literal_is_found_in_litt() {
        let dir = tempfile::tempdir().unwrap();
        let source = fixture("nonrepro/nonrepro_ex/lib/nonrepro_ex.ex");
        let a = elixirc(&source, &dir.path().join("a"), true);
        // The same source path for both: move the first output away and compile again.
        std::fs::rename(dir.path().join("a"), dir.path().join("first")).unwrap();
        let b = elixirc(&source, &dir.path().join("a"), true);
        let chunks = diff(&parse(&a).unwrap(), &parse(&b).unwrap());
        let ids: Vec<&str> = chunks.iter().map(|c| c.id.as_str()).collect();
        assert!(ids.contains(&"LitT"), "{chunks:#?}");
        assert!(!ids.contains(&"CInf"), "deterministic: {chunks:#?}");
        let litt = chunks.iter().find(|c| c.id == "LitT").unwrap();
        assert_eq!(litt.change, CHANGED);
        assert!(
            litt.explanation.matches("built at 20").count() == 2,
            "both times are shown: {}",
            litt.explanation
        );
    }

    /// A plain module compiled from two directories without `deterministic`: Dbgi and CInf
    /// differ, and the explanation names both absolute source paths.
    #[test]
    fn absolute_source_paths_are_found_in_dbgi() {
        let dir = tempfile::tempdir().unwrap();
        let source = fixture("packages/plain_ex/lib/plain_ex.ex");
        let a = elixirc(&source, &dir.path().join("one"), false);
        let b = elixirc(&source, &dir.path().join("two"), false);
        let chunks = diff(&parse(&a).unwrap(), &parse(&b).unwrap());
        let ids: Vec<&str> = chunks.iter().map(|c| c.id.as_str()).collect();
        assert!(ids.contains(&"Dbgi") && ids.contains(&"CInf"), "{ids:?}");
        assert!(!ids.contains(&"LitT") && !ids.contains(&"Code"), "{ids:?}");
        let dbgi = chunks.iter().find(|c| c.id == "Dbgi").unwrap();
        let one = dir.path().join("one/src/plain_ex.ex").display().to_string();
        let two = dir.path().join("two/src/plain_ex.ex").display().to_string();
        assert!(
            dbgi.explanation.contains("absolute paths")
                && dbgi.explanation.contains(&one)
                && dbgi.explanation.contains(&two),
            "{}",
            dbgi.explanation
        );
        assert!(diff(&parse(&a).unwrap(), &parse(&a).unwrap()).is_empty());
    }

    #[test]
    fn names_each_differing_chunk() {
        let a = beam(&[
            ("AtU8", b"\0\0\0\x01\x03foo"),
            ("Code", b"same"),
            ("StrT", b""),
        ]);
        let b = beam(&[
            ("AtU8", b"\0\0\0\x01\x03bar"),
            ("Code", b"same"),
            ("Line", b"1"),
        ]);
        let chunks = diff(&parse(&a).unwrap(), &parse(&b).unwrap());
        let ids: Vec<(&str, &str)> = chunks
            .iter()
            .map(|c| (c.id.as_str(), c.change.as_str()))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("AtU8", CHANGED),
                ("StrT", ONLY_PUBLISHED),
                ("Line", ONLY_REBUILT)
            ]
        );
        assert!(chunks[0].explanation.contains("only published: foo"));
    }

    /// Compiles `source` (as `dir/order.ex`) with Elixir in a fresh VM that first creates
    /// `atoms` in the given order, as Elixir's parallel compiler may have created them in a
    /// build; the beam of the first module, written to `dir/NAME.beam`.
    fn elixir_after_atoms(
        dir: &std::path::Path,
        source: &str,
        atoms: &[String],
        name: &str,
    ) -> Vec<u8> {
        std::fs::write(dir.join("order.ex"), source).unwrap();
        let script = "Enum.each(System.argv(), &String.to_atom/1); \
                      [{_, beam} | _] = Code.compile_file(\"order.ex\"); \
                      File.write!(System.get_env(\"BEAM_OUT\"), beam)";
        let output = std::process::Command::new("elixir")
            .current_dir(dir)
            .env("ERL_COMPILER_OPTIONS", "deterministic")
            .env("BEAM_OUT", format!("{name}.beam"))
            .args(["-e", script, "--"])
            .args(atoms)
            .output()
            .expect("elixir runs");
        assert!(output.status.success(), "{output:?}");
        std::fs::read(dir.join(format!("{name}.beam"))).unwrap()
    }

    fn names(prefix: &str, count: usize) -> Vec<String> {
        (1..=count).map(|i| format!("{prefix}_{i:02}")).collect()
    }

    /// The phoenix case: a 40-field struct expanded in its module, compiled once after its
    /// fields' atoms were created in one order and once in the reverse order (on OTP 25 a
    /// map of more than 32 atom keys iterates in an order that follows atom creation). Only
    /// Dbgi differs, only in the order of keyword lists: that is what it says, with the
    /// keys that moved — never "0 differences".
    #[test]
    fn a_struct_whose_fields_came_in_another_order_is_an_order_only_difference() {
        let dir = tempfile::tempdir().unwrap();
        let fields = names("field", 40);
        let source = format!(
            "defmodule OrderOnly do\n  defstruct [{}]\n  def blank, do: %OrderOnly{{}}\nend\n",
            fields
                .iter()
                .map(|f| format!("{f}: 0"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let reversed: Vec<String> = fields.iter().rev().cloned().collect();
        let a = elixir_after_atoms(dir.path(), &source, &fields, "a");
        let b = elixir_after_atoms(dir.path(), &source, &reversed, "b");
        assert_ne!(
            a, b,
            "the atom order must show in the beam for this test to mean anything"
        );
        let chunks = diff(&parse(&a).unwrap(), &parse(&b).unwrap());
        let ids: Vec<&str> = chunks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["Dbgi"], "{chunks:#?}");
        let text = &chunks[0].explanation;
        assert!(
            text.starts_with("3 order-only differences in the Dbgi term; order-only difference in the keyword list at {3}{2}.definitions["),
            "{text}"
        );
        assert!(
            text.contains("(40 elements, the same on both sides) — keys moved ("),
            "{text}"
        );
        assert!(text.contains("field_"), "{text}");
        assert!(!text.contains("0 differences"), "{text}");
    }

    /// The Postgrex.ErrorCode case: clauses generated from an `Enum.group_by` map of 40 atom
    /// keys, compiled after those atoms were created in two orders. The literal list of keys
    /// and Dbgi's clause lists are the same elements in another order, and say so.
    #[test]
    fn generated_clauses_in_another_order_are_order_only_in_litt_and_dbgi() {
        let dir = tempfile::tempdir().unwrap();
        let classes = names("class", 40);
        let source = "defmodule OrderOnlyCodes do\n  \
            by_class = Enum.group_by(for(i <- 1..80, do: {String.to_atom(\"class_\" <> String.pad_leading(Integer.to_string(rem(i, 40) + 1), 2, \"0\")), i}), &elem(&1, 0), &elem(&1, 1))\n  \
            for {class, codes} <- by_class, do: def codes(unquote(class)), do: unquote(codes)\n  \
            def classes, do: unquote(Map.keys(by_class))\nend\n";
        let reversed: Vec<String> = classes.iter().rev().cloned().collect();
        let a = elixir_after_atoms(dir.path(), source, &classes, "a");
        let b = elixir_after_atoms(dir.path(), source, &reversed, "b");
        let chunks = diff(&parse(&a).unwrap(), &parse(&b).unwrap());
        let find = |id: &str| {
            chunks
                .iter()
                .find(|c| c.id == id)
                .unwrap_or_else(|| panic!("{id} differs: {chunks:#?}"))
                .explanation
                .clone()
        };
        let litt = find("LitT");
        assert!(
            litt.contains("order-only difference in the list at literal ")
                && litt.contains("(40 elements, the same on both sides) — elements moved (")
                && litt.contains("class_"),
            "{litt}"
        );
        let dbgi = find("Dbgi");
        assert!(
            dbgi.contains("order-only difference in the list at {3}{2}.definitions[")
                && dbgi.contains("elements moved ("),
            "{dbgi}"
        );
        for chunk in &chunks {
            assert!(!chunk.explanation.contains("0 differences"), "{chunk:?}");
        }
    }

    /// erlc: two sources that differ only in the order of an attribute's keyword list and of
    /// a plain list. Attr (the attributes) and Dbgi (the abstract code) name each list, and
    /// the keys or elements that moved.
    #[test]
    fn erlc_attributes_in_another_order_are_order_only_differences() {
        let dir = tempfile::tempdir().unwrap();
        let compile = |name: &str, keywords: &str, plain: &str| {
            let src = dir.path().join(name);
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(
                src.join("order_only.erl"),
                format!("-module(order_only).\n-export([f/0]).\n-settings({keywords}).\n-steps({plain}).\nf() -> ok.\n"),
            )
            .unwrap();
            let output = std::process::Command::new("erlc")
                .current_dir(&src)
                .args(["+deterministic", "+debug_info", "order_only.erl"])
                .output()
                .expect("erlc runs");
            assert!(output.status.success(), "{output:?}");
            std::fs::read(src.join("order_only.beam")).unwrap()
        };
        let a = compile(
            "a",
            "[{alpha, 1}, {beta, 2}, {gamma, 3}, {delta, 4}]",
            "[one, two, three]",
        );
        let b = compile(
            "b",
            "[{gamma, 3}, {alpha, 1}, {beta, 2}, {delta, 4}]",
            "[three, one, two]",
        );
        let chunks = diff(&parse(&a).unwrap(), &parse(&b).unwrap());
        let attr = &chunks
            .iter()
            .find(|c| c.id == "Attr")
            .expect("Attr differs")
            .explanation;
        assert!(
            attr.starts_with("2 order-only differences in the Attr term; order-only difference in the keyword list at .settings (4 elements, the same on both sides) — keys moved (1 of 4): gamma; order-only difference in the list at .steps (3 elements, the same on both sides) — elements moved (1 of 3): three"),
            "{attr}"
        );
        let dbgi = &chunks
            .iter()
            .find(|c| c.id == "Dbgi")
            .expect("Dbgi differs")
            .explanation;
        assert!(
            dbgi.contains("keys moved (1 of 4): gamma")
                && dbgi.contains("elements moved (1 of 3): three"),
            "{dbgi}"
        );
        assert!(!dbgi.contains("0 differences"), "{dbgi}");
    }

    /// Chunks whose bytes differ but whose terms are equal say how they differ.
    #[test]
    fn equal_terms_in_other_bytes_are_never_zero_differences() {
        // {ok} with the atom as ATOM_EXT (100) and as SMALL_ATOM_UTF8_EXT (119).
        let a = [131, 104, 1, 100, 0, 2, b'o', b'k'];
        let b = [131, 104, 1, 119, 2, b'o', b'k'];
        let text = explain("Attr", &a, &b);
        assert!(
            text.starts_with("the same Attr term, encoded differently"),
            "{text}"
        );
        assert!(text.contains("first difference at byte 3"), "{text}");
        // A literal table (uncompressed: size 0) with the same literals in another order.
        let table = |literals: &[&[u8]]| {
            let mut chunk = vec![0, 0, 0, 0];
            chunk.extend_from_slice(&(literals.len() as u32).to_be_bytes());
            for literal in literals {
                chunk.extend_from_slice(&(literal.len() as u32).to_be_bytes());
                chunk.extend_from_slice(literal);
            }
            chunk
        };
        let (x, y, z): (&[u8], &[u8], &[u8]) = (&[131, 97, 1], &[131, 97, 2], &[131, 97, 3]);
        let text = explain("LitT", &table(&[x, y, z]), &table(&[y, z, x]));
        assert!(
            text.starts_with("order-only difference in the literal table (3 literals, the same on both sides) — literals moved (1 of 3): literal 2 1"),
            "{text}"
        );
        let text = explain("LitT", &table(&[x, y]), &table(&[x, y]));
        assert!(
            text.starts_with("the same literals, encoded differently"),
            "{text}"
        );
        let text = explain("AtU8", b"\0\0\0\x02\x01a\x01b", b"\0\0\0\x02\x01b\x01a");
        assert!(text.starts_with("order-only difference in the atom table (2 atoms, the same on both sides) — atoms moved (1 of 2): b"), "{text}");
    }
}
