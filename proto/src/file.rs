//! Reading a file whose size is bounded: what every reader of trust documents, manifests,
//! artifacts and tarballs on disk needs, so that a huge or growing file is an error, never
//! an allocation of its size.

use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is {size} bytes or more, over the limit of {limit}", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
}

impl ReadError {
    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The contents of `path`, at most `limit` bytes: reading stops one byte past the limit, so
/// the bound holds for a file that grows or lies about its size (a pipe, `/proc`).
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let declared = file.metadata().map(|m| m.len()).unwrap_or(0);
    if declared > limit {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            size: declared,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_up_to_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_bounded(&path, 5).unwrap(), b"12345");
        let error = read_bounded(&path, 4).unwrap_err();
        assert!(
            matches!(
                error,
                ReadError::TooLarge {
                    size: 5,
                    limit: 4,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("over the limit of 4"));
        let missing = read_bounded(&dir.path().join("none"), 4).unwrap_err();
        assert!(missing.is_not_found());
        // A file that says it is empty but is not (procfs): bounded all the same.
        assert!(matches!(
            read_bounded(Path::new("/proc/self/status"), 10),
            Err(ReadError::TooLarge { limit: 10, .. })
        ));
    }
}
