//! What both archive readers share — Hex package contents (`tarball::contents`) and precomp
//! artifacts (`artifact`): a gzip stream bounded in decompressed size, and the staging
//! directory an archive is unpacked into before it is moved into place. Each reader keeps its
//! own model of which entries it accepts.

use std::cell::Cell;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Bytes that came out of the gzip stream so far, shared between the reader the tar parser
/// owns and the walker that has to tell a size-limit error from a corrupt stream.
#[derive(Default)]
pub(crate) struct Counter {
    read: Cell<u64>,
    exceeded: Cell<bool>,
}

impl Counter {
    /// Whether a read failed because the stream went past its limit.
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.get()
    }

    /// Decompressed bytes read so far.
    pub(crate) fn read(&self) -> u64 {
        self.read.get()
    }
}

/// Fails the read that would take the stream past `limit`.
pub(crate) struct Limited<R> {
    inner: R,
    counter: Rc<Counter>,
    limit: u64,
}

impl<R: Read> Limited<R> {
    /// `inner` limited to `limit` bytes, and the counter that tells how far it got.
    pub(crate) fn new(inner: R, limit: u64) -> (Limited<R>, Rc<Counter>) {
        let counter = Rc::new(Counter::default());
        let reader = Limited {
            inner,
            counter: Rc::clone(&counter),
            limit,
        };
        (reader, counter)
    }

    /// The reader it limits.
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let so_far = self.counter.read.get();
        // One byte past the limit is enough to know it was crossed; never ask for more, so
        // memory and time stay bounded whatever the compression ratio.
        let allowed = self.limit.saturating_sub(so_far).saturating_add(1);
        let cap = usize::try_from(allowed)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..cap])?;
        let total = so_far.saturating_add(n as u64);
        if total > self.limit {
            self.counter.exceeded.set(true);
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        self.counter.read.set(total);
        Ok(n)
    }
}

/// A new, empty directory `parent/.NAME.unpack-XXXXXX` (mode 0700) to unpack `name` into: on
/// the same file system as its destination, so the result is renamed into place.
pub(crate) fn staging_dir(parent: &Path, name: &std::ffi::OsStr) -> io::Result<PathBuf> {
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".unpack-");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    // Private until it is complete and moved into place.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
    Ok(builder.tempdir_in(parent)?.keep())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_past_the_limit_fails_and_says_so() {
        let (mut reader, counter) = Limited::new(&[7u8; 100][..], 64);
        let mut out = Vec::new();
        let error = reader.read_to_end(&mut out).unwrap_err();
        assert!(error.to_string().contains("limit"), "{error}");
        assert!(counter.exceeded());
        assert!(out.len() <= 64);

        let (mut reader, counter) = Limited::new(&[7u8; 64][..], 64);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert_eq!(
            (out.len(), counter.read(), counter.exceeded()),
            (64, 64, false)
        );
    }

    #[test]
    fn staging_dirs_are_new_private_and_beside_the_destination() {
        let parent = tempfile::tempdir().unwrap();
        let a = staging_dir(parent.path(), "pkg".as_ref()).unwrap();
        let b = staging_dir(parent.path(), "pkg".as_ref()).unwrap();
        assert_ne!(a, b);
        for dir in [&a, &b] {
            assert_eq!(dir.parent(), Some(parent.path()));
            let name = dir.file_name().unwrap().to_str().unwrap();
            assert!(name.starts_with(".pkg.unpack-"), "{name}");
            assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(dir).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o700);
            }
        }
    }
}
