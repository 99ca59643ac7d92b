//! BEAM files: the IFF container (`FOR1`, size, `BEAM`, then chunks of a 4-byte id, a 4-byte
//! big-endian size and the data padded to 4 bytes), and the chunks whose format is public:
//! the atom table (`AtU8`/`Atom`) and the literal table (`LitT`). Read by the audit (what
//! differs between two builds) and the builder (the atoms a closure's beams hold).

use crate::etf::{self, Etf};

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

/// The literals of a `LitT` chunk: `<<UncompressedSize:32, zlib(Table)>>`, where the table
/// is `<<Count:32, [<<Size:32, ExternalTerm:Size/binary>>]>>` (an uncompressed size of 0
/// means the table follows as is).
pub fn literals(chunk: &[u8]) -> Result<Vec<Etf>, String> {
    literal_terms(chunk)?
        .iter()
        .map(|bytes| etf::decode(bytes).map_err(|e| e.to_string()))
        .collect()
}

/// Each literal of a `LitT` chunk as its external term's bytes (see [`literals`]).
pub fn literal_terms(chunk: &[u8]) -> Result<Vec<Vec<u8>>, String> {
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
        literals.push(bytes.to_vec());
        at += 4 + size;
    }
    Ok(literals)
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
