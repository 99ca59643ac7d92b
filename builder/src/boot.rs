//! The boot script of a predicted pass, written by the builder without a VM (docs/builder.md
//! "One pass from a predicted atom list").
//!
//! Its list holds what can be known before the package's compile starts, read outside any
//! sandbox from trusted files: the toolchain's atoms (recorded by the toolchain's own
//! sandbox run, [`crate::atoms::toolchain_atoms_command`]), every atom of the closure's
//! beams and `.app` files (verified artifacts), and a few fixed names. The compile VM's
//! phase (`Precomp.BuildAtoms.prime/0` in `atoms.exs`) adds the names the package's sources
//! make. The list is sorted and free of duplicates, so it is a function of those inputs
//! only; an atom in it that the compile never uses only takes an index.

use std::collections::BTreeSet;
use std::path::Path;

use precomp_proto::{beam, etf};

use crate::atoms::MAX_BOOT_BYTES;
use crate::error::{io, BuildError, Result};

/// The macros epp predefines (an Erlang header read by `Record.extract` or an include).
const PREPROCESSOR: [&str; 11] = [
    "BEAM",
    "MODULE",
    "MODULE_STRING",
    "FILE",
    "LINE",
    "MACHINE",
    "FUNCTION_NAME",
    "FUNCTION_ARITY",
    "OTP_RELEASE",
    "FEATURE_AVAILABLE",
    "FEATURE_ENABLED",
];

/// The chunks holding one external term each whose atoms reading them creates: attributes,
/// compile info, Elixir's checker chunk, debug info and docs (a closure member's macros and
/// `Code.fetch_docs` read the last two).
const TERM_CHUNKS: [&str; 5] = ["Attr", "CInf", "ExCk", "Dbgi", "Docs"];

/// Adds every atom of a beam to `out`: its atom table and literals (what loading it
/// creates) and the atoms of [`TERM_CHUNKS`]. A chunk that does not decode adds nothing
/// (the same on every run: the list stays a function of the file).
pub fn beam_atoms(bytes: &[u8], out: &mut BTreeSet<String>) {
    let Ok(parsed) = beam::parse(bytes) else {
        return;
    };
    for (id, data) in &parsed.chunks {
        match id.as_str() {
            "AtU8" | "Atom" => {
                if let Ok(atoms) = beam::atoms(data) {
                    out.extend(atoms);
                }
            }
            "LitT" => {
                for literal in beam::literal_terms(data).unwrap_or_default() {
                    out.extend(etf::atoms(&literal).unwrap_or_default());
                }
            }
            id if TERM_CHUNKS.contains(&id) => out.extend(etf::atoms(data).unwrap_or_default()),
            _ => {}
        }
    }
}

/// Adds the atoms of the closure installed under `lib` (`_build/<env>/lib`): each member's
/// `ebin/*.beam` and `ebin/*.app`, `app`'s own directory left out.
pub fn closure_atoms(lib: &Path, app: &str, out: &mut BTreeSet<String>) -> Result<()> {
    for member in sorted_entries(lib)? {
        if member.file_name().is_some_and(|name| name == app) {
            continue;
        }
        let ebin = member.join("ebin");
        if !ebin.is_dir() {
            continue;
        }
        for file in sorted_entries(&ebin)? {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            if name.ends_with(".beam") {
                beam_atoms(&std::fs::read(&file).map_err(io(&file))?, out);
            } else if name.ends_with(".app") {
                let text = std::fs::read(&file).map_err(io(&file))?;
                if let Ok(terms) =
                    precomp_proto::term::parse_erlang_terms(&String::from_utf8_lossy(&text))
                {
                    for term in &terms {
                        term_atoms(term, out);
                    }
                }
            }
        }
    }
    Ok(())
}

fn term_atoms(term: &precomp_proto::term::Term, out: &mut BTreeSet<String>) {
    use precomp_proto::term::Term;
    match term {
        Term::Atom(name) => {
            out.insert(name.clone());
        }
        Term::Tuple(items) | Term::List(items) => items.iter().for_each(|t| term_atoms(t, out)),
        Term::ImproperList(items, tail) => {
            items.iter().for_each(|t| term_atoms(t, out));
            term_atoms(tail, out);
        }
        Term::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            term_atoms(k, out);
            term_atoms(v, out);
        }),
        _ => {}
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(io(dir))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    entries.sort();
    Ok(entries)
}

/// The boot script's list: the toolchain's atoms (`toolchain_atoms`, the external term of a
/// list of atoms the toolchain's run wrote), the closure's under `lib`, epp's predefined
/// macros and `sigil_` with each ASCII letter (Elixir's parser makes a sigil's name itself).
pub fn base_atoms(toolchain_atoms: &[u8], lib: &Path, app: &str) -> Result<BTreeSet<String>> {
    let mut atoms: BTreeSet<String> = etf::atoms(toolchain_atoms)
        .map_err(|e| {
            BuildError::Invalid(format!(
                "the cached toolchain atoms do not decode ({e}); remove the work root's \
                 .toolchain-atoms directory to compute them again"
            ))
        })?
        .into_iter()
        .collect();
    closure_atoms(lib, app, &mut atoms)?;
    atoms.extend(PREPROCESSOR.iter().map(|name| name.to_string()));
    atoms.insert(FIRST_POOLED.to_string());
    for letter in ('a'..='z').chain('A'..='Z') {
        atoms.insert(format!("sigil_{letter}"));
    }
    Ok(atoms)
}

/// Elixir's pool of modules to evaluate code in (`elixir_compiler_0`, …): how many a compile
/// makes depends on scheduling, so no list holds them (as the hook's `pooled?/1`) — except
/// [`FIRST_POOLED`].
fn pooled(name: &str) -> bool {
    name != FIRST_POOLED
        && name
            .strip_prefix("elixir_compiler_")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The first pooled name: every compile VM makes it evaluating its `-e` code, before the
/// phase, the same way on every run. Listed so that it exists from the boot on and is not
/// made between the boot script's atoms and the phase's (which the phase's check refuses).
const FIRST_POOLED: &str = "elixir_compiler_0";

/// The toolchain's `no_dot_erlang.boot` (`{script, Id, Instructions}`, `term_to_binary`
/// form) with `{preLoaded, Atoms}` in front of its instructions, as the hook's `write_boot`
/// writes it: decoding it creates `atoms` in their order before init loads a module. Pooled
/// names but the first and names no atom can have (over 255 characters) are left out.
pub fn boot_script(no_dot_erlang: &[u8], atoms: &BTreeSet<String>) -> Result<Vec<u8>> {
    let invalid = |what: &str| {
        BuildError::Invalid(format!(
            "the toolchain's cached no_dot_erlang.boot is not a boot script ({what}); remove \
             the work root's .toolchain-atoms directory to record it again"
        ))
    };
    let inflated;
    let body = match no_dot_erlang {
        [131, 80, rest @ ..] if rest.len() >= 4 => {
            let size = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            inflated = etf::inflate(&rest[4..], size).map_err(|e| invalid(&e.to_string()))?;
            inflated.as_slice()
        }
        [131, rest @ ..] => rest,
        _ => return Err(invalid("no version byte")),
    };
    // {script, Id, Instructions}: the tuple header, the atom and Id are kept as they are.
    if body.get(..2) != Some(&[104, 3]) {
        return Err(invalid("not a 3-tuple"));
    }
    let script = 2 + etf::term_size(&body[2..]).map_err(|e| invalid(&e.to_string()))?;
    let id = script + etf::term_size(&body[script..]).map_err(|e| invalid(&e.to_string()))?;
    let (count, rest) = match body.get(id) {
        Some(108) if body.len() >= id + 5 => (
            u32::from_be_bytes(body[id + 1..id + 5].try_into().unwrap()),
            &body[id + 5..],
        ),
        Some(106) => (0, &body[id..]),
        _ => return Err(invalid("its instructions are not a list")),
    };
    let wanted: Vec<&String> = atoms
        .iter()
        .filter(|name| !pooled(name) && name.chars().count() <= 255)
        .collect();
    let mut out =
        Vec::with_capacity(body.len() + wanted.iter().map(|a| a.len() + 2).sum::<usize>());
    out.push(131);
    out.extend_from_slice(&body[..id]);
    out.push(108);
    out.extend_from_slice(&(count + 1).to_be_bytes());
    out.extend_from_slice(&[104, 2]);
    encode_atom("preLoaded", &mut out);
    if wanted.is_empty() {
        out.push(106);
    } else {
        out.push(108);
        out.extend_from_slice(&(wanted.len() as u32).to_be_bytes());
        for name in &wanted {
            encode_atom(name, &mut out);
        }
        out.push(106);
    }
    out.extend_from_slice(rest);
    if out.len() as u64 > MAX_BOOT_BYTES {
        return Err(BuildError::Invalid(format!(
            "the predicted boot script is {} bytes, more than the {MAX_BOOT_BYTES} allowed",
            out.len()
        )));
    }
    Ok(out)
}

/// `SMALL_ATOM_UTF8_EXT` (up to 255 bytes) or `ATOM_UTF8_EXT`, as `term_to_binary` writes.
fn encode_atom(name: &str, out: &mut Vec<u8>) {
    let bytes = name.as_bytes();
    if bytes.len() < 256 {
        out.extend_from_slice(&[119, bytes.len() as u8]);
    } else {
        out.push(118);
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_names_are_only_the_numbered_ones() {
        assert!(pooled("elixir_compiler_1") && pooled("elixir_compiler_12"));
        assert!(!pooled("elixir_compiler_0"), "listed: the -e code makes it");
        assert!(!pooled("elixir_compiler_") && !pooled("elixir_compiler_x1"));
        assert!(!pooled("elixir_compiler"));
    }

    #[test]
    fn the_boot_script_keeps_the_instructions_and_puts_the_atoms_first() {
        // {script, {"OTP", "1"}, [{progress, preloaded}]}
        let mut original = vec![131, 104, 3, 119, 6];
        original.extend_from_slice(b"script");
        original.extend_from_slice(&[104, 2, 109, 0, 0, 0, 3]);
        original.extend_from_slice(b"OTP");
        original.extend_from_slice(&[109, 0, 0, 0, 1, b'1']);
        original.extend_from_slice(&[108, 0, 0, 0, 1, 104, 2, 119, 8]);
        original.extend_from_slice(b"progress");
        original.extend_from_slice(&[119, 9]);
        original.extend_from_slice(b"preloaded");
        original.push(106);
        let atoms: BTreeSet<String> = ["b", "a", "elixir_compiler_3", "é"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let script = boot_script(&original, &atoms).unwrap();
        let decoded = etf::decode(&script).unwrap();
        let etf::Etf::Tuple(items) = decoded else {
            panic!("{decoded:?}")
        };
        assert_eq!(items[0], etf::Etf::Atom("script".into()));
        let etf::Etf::List(instructions, None) = &items[2] else {
            panic!("{items:?}")
        };
        assert_eq!(instructions.len(), 2);
        assert_eq!(
            instructions[0],
            etf::Etf::Tuple(vec![
                etf::Etf::Atom("preLoaded".into()),
                etf::Etf::List(
                    vec![
                        etf::Etf::Atom("a".into()),
                        etf::Etf::Atom("b".into()),
                        etf::Etf::Atom("é".into())
                    ],
                    None
                )
            ])
        );
        assert!(boot_script(b"\x83\x6a", &atoms).is_err());
    }
}
