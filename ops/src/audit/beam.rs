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

/// A parsed beam: its chunks in file order.
#[derive(Debug, PartialEq, Eq)]
pub struct Beam<'a> {
    pub chunks: Vec<(String, &'a [u8])>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BeamError {
    #[error("not a BEAM file (no FOR1/BEAM header)")]
    NotBeam,
    #[error("the FOR1 size {declared} does not match the file ({actual} bytes)")]
    Size { declared: usize, actual: usize },
    #[error("chunk {index} is truncated")]
    Truncated { index: usize },
}

/// Bound on the differences listed per chunk.
const PER_CHUNK: usize = 5;

/// Bound on a rendered value.
const VALUE_BUDGET: usize = 240;

/// Parses the container; chunk data is borrowed.
pub fn parse(bytes: &[u8]) -> Result<Beam<'_>, BeamError> {
    if bytes.len() < 12 || &bytes[0..4] != b"FOR1" || &bytes[8..12] != b"BEAM" {
        return Err(BeamError::NotBeam);
    }
    let declared = u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize;
    // The size counts everything after itself; some writers leave padding after it.
    if declared + 8 > bytes.len() || declared < 4 {
        return Err(BeamError::Size {
            declared,
            actual: bytes.len(),
        });
    }
    let end = declared + 8;
    let mut at = 12;
    let mut chunks = Vec::new();
    while at + 8 <= end {
        let index = chunks.len();
        let id = String::from_utf8_lossy(&bytes[at..at + 4]).into_owned();
        let size = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let start = at + 8;
        let stop = start
            .checked_add(size)
            .filter(|&s| s <= end)
            .ok_or(BeamError::Truncated { index })?;
        chunks.push((id, &bytes[start..stop]));
        at = stop + (4 - size % 4) % 4;
    }
    Ok(Beam { chunks })
}

impl Beam<'_> {
    pub fn chunk(&self, id: &str) -> Option<&[u8]> {
        self.chunks
            .iter()
            .find(|(chunk, _)| chunk == id)
            .map(|(_, data)| *data)
    }
}

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
                (Ok(a), Ok(b)) => Some(term_differences(&a, &b, id)),
                _ => None,
            }
        }
        "LitT" => match (literals(published), literals(rebuilt)) {
            (Ok(a), Ok(b)) => Some(literal_differences(&a, &b)),
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

fn term_differences(published: &Etf, rebuilt: &Etf, what: &str) -> String {
    let (found, count) = etf::differences(published, rebuilt, PER_CHUNK);
    let mut text = String::new();
    let _ = write!(
        text,
        "{count} difference{} in the {what} term",
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

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The literals of a `LitT` chunk: `<<UncompressedSize:32, zlib(Table)>>`, where the table
/// is `<<Count:32, [<<Size:32, ExternalTerm:Size/binary>>]>>` (an uncompressed size of 0
/// means the table follows as is).
pub fn literals(chunk: &[u8]) -> Result<Vec<Etf>, String> {
    let size = u32::from_be_bytes(
        chunk
            .get(0..4)
            .ok_or("truncated")?
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    let inflated;
    let table = if size == 0 {
        &chunk[4..]
    } else {
        if size > etf::MAX_INFLATED {
            return Err(format!("literal table of {size} bytes"));
        }
        inflated = etf::inflate(&chunk[4..], size).map_err(|e| e.to_string())?;
        inflated.as_slice()
    };
    let count = u32::from_be_bytes(
        table
            .get(0..4)
            .ok_or("truncated")?
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    let mut at = 4;
    let mut literals = Vec::new();
    for _ in 0..count {
        let size = u32::from_be_bytes(
            table
                .get(at..at + 4)
                .ok_or("truncated")?
                .try_into()
                .expect("4 bytes"),
        ) as usize;
        let bytes = table
            .get(at + 4..at + 4 + size)
            .ok_or("truncated literal")?;
        literals.push(etf::decode(bytes).map_err(|e| e.to_string())?);
        at += 4 + size;
    }
    Ok(literals)
}

fn literal_differences(published: &[Etf], rebuilt: &[Etf]) -> String {
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
            });
        }
    }
    if !text.is_empty() {
        text.push_str("; ");
    }
    let _ = write!(
        text,
        "{count} literal difference{}",
        if count == 1 { "" } else { "s" }
    );
    describe(&found, &mut text);
    text
}

/// The atom table: `<<Count:32/signed, [<<Length, Name:Length/binary>>]>>`; a negative count
/// (OTP 28) means lengths in the compact encoding.
pub fn atoms(chunk: &[u8]) -> Result<Vec<String>, String> {
    let count = i32::from_be_bytes(
        chunk
            .get(0..4)
            .ok_or("truncated")?
            .try_into()
            .expect("4 bytes"),
    );
    let compact = count < 0;
    let count = count.unsigned_abs() as usize;
    let mut at = 4;
    let mut atoms = Vec::new();
    for _ in 0..count {
        let length = if compact {
            let first = *chunk.get(at).ok_or("truncated")? as usize;
            at += 1;
            if first & 0x08 == 0 {
                first >> 4
            } else if first & 0x10 == 0 {
                let next = *chunk.get(at).ok_or("truncated")? as usize;
                at += 1;
                ((first >> 5) << 8) | next
            } else {
                return Err("atom length in an unsupported encoding".into());
            }
        } else {
            let length = *chunk.get(at).ok_or("truncated")? as usize;
            at += 1;
            length
        };
        let name = chunk.get(at..at + length).ok_or("truncated atom")?;
        atoms.push(String::from_utf8_lossy(name).into_owned());
        at += length;
    }
    Ok(atoms)
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
        return "the same atoms in another order".into();
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
}
