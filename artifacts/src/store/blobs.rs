//! Artifact bodies: content-addressed files under `DATA/artifacts/blobs/sha256/`, beside
//! whichever metadata store holds their rows ([`super::MetadataStore`]). Uploads are received
//! in `tmp/`, hashed as they arrive, and renamed into place only under the name their digest
//! gives ([`Blobs::persist`]); they are read back as streams, never whole.

use std::io::Read;
use std::path::{Path, PathBuf};

use precomp_proto::manifest::Output;
use sha2::{Digest, Sha256};

use super::maintenance::BlobFile;
use super::{io, ArtifactCheck, ArtifactStoreError};

/// The blob directory of a store (`DATA/artifacts`).
#[derive(Clone, Debug)]
pub struct Blobs {
    root: PathBuf,
}

impl Blobs {
    pub fn new(root: &Path) -> Blobs {
        Blobs {
            root: root.to_path_buf(),
        }
    }

    /// `DATA/artifacts`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where uploads are received before they are verified.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn artifact_path(&self, sha256: &[u8; 32]) -> PathBuf {
        self.path(&hex::encode(sha256))
    }

    /// Where the blob named `sha256_hex` is (or would be).
    pub fn path(&self, sha256_hex: &str) -> PathBuf {
        self.root
            .join(precomp_registry::blob_relative_path(sha256_hex))
    }

    /// Every file in the blob directory named like a blob (64 hex digits), sorted.
    pub fn files(&self) -> Result<Vec<BlobFile>, ArtifactStoreError> {
        super::maintenance::list_blob_files(&self.root.join("blobs/sha256"))
    }

    /// Removes a blob; absent is fine.
    pub fn remove(&self, sha256_hex: &str) -> Result<(), ArtifactStoreError> {
        let path = self.path(sha256_hex);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Moves a received, synced upload whose sha256 the caller computed into place, unless it
    /// is there already. Whether it was new.
    pub fn persist(
        &self,
        tmp: tempfile::NamedTempFile,
        sha256: &[u8; 32],
    ) -> Result<bool, ArtifactStoreError> {
        let blob = self.artifact_path(sha256);
        let created = !blob.exists();
        if created {
            let dir = blob.parent().expect("blob paths have a parent");
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            tmp.persist(&blob).map_err(|e| ArtifactStoreError::Io {
                path: blob.clone(),
                source: e.error,
            })?;
            // The rename itself is durable once the directory is.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(created)
    }

    /// Whether the artifact a manifest's `output` names is here, with the size it names and
    /// exactly the files it lists: the blob is streamed from disk once, and hashed once, in
    /// the same pass as its files are read (never held in memory whole).
    ///
    /// What is trusted: the blob's name only says what its digest was when it was stored
    /// (`PUT artifacts/SHA256` hashes the upload and renames it into place only under that
    /// digest), and a disk can damage it since. So nothing about the bytes is taken on trust:
    /// the one hash of the stream is compared with the name, and a damaged blob is never
    /// indexed ([`ArtifactStoreError::Corrupt`], what `precomp store scrub` reports). The
    /// file's size on disk is trusted only to refuse early (it must be the manifest's, which
    /// the upload bound keeps within `MAX_ARTIFACT_SIZE`); the stream read is bounded by it.
    pub fn check_artifact(
        &self,
        sha256: &[u8; 32],
        output: &Output,
    ) -> Result<ArtifactCheck, ArtifactStoreError> {
        let path = self.artifact_path(sha256);
        let stored = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ArtifactCheck::Missing)
            }
            Err(e) => return Err(io(&path)(e)),
        };
        if stored != output.artifact_size {
            return Ok(ArtifactCheck::SizeMismatch { stored });
        }
        // The bound `check` keeps on bytes in memory, kept on the stream (uploads are bounded
        // by it already).
        if stored > precomp_proto::artifact::MAX_ARTIFACT_SIZE {
            let too_large = precomp_proto::artifact::ArtifactError::TooLarge {
                what: "compressed size",
                limit: precomp_proto::artifact::MAX_ARTIFACT_SIZE,
            };
            return Ok(ArtifactCheck::FilesMismatch(too_large.to_string()));
        }
        let file = std::fs::File::open(&path).map_err(io(&path))?;
        let mut hashing = HashingReader {
            // One byte more than it should have, so growth shows as a digest mismatch.
            inner: file.take(stored.saturating_add(1)),
            hasher: Sha256::new(),
        };
        let checked = precomp_proto::artifact::check_files(
            std::io::BufReader::with_capacity(64 * 1024, &mut hashing),
            output,
        );
        // The files check stops at the first problem: hash the rest, so the digest is the
        // whole blob's (a damaged blob is said to be damaged, not to mismatch its manifest).
        std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io(&path))?;
        let actual: [u8; 32] = hashing.hasher.finalize().into();
        if actual != *sha256 {
            return Err(ArtifactStoreError::Corrupt {
                path,
                expected: hex::encode(sha256),
                actual: hex::encode(actual),
            });
        }
        Ok(match checked {
            Ok(()) => ArtifactCheck::Present,
            Err(e) => ArtifactCheck::FilesMismatch(e.to_string()),
        })
    }
}

/// Hashes what is read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use precomp_proto::artifact::PackedArtifact;

    /// A real artifact (`ebin/a.beam`, `priv/b.txt`) stored as a blob under its digest.
    fn stored(blobs: &Blobs) -> PackedArtifact {
        let project = tempfile::tempdir().unwrap();
        let app = project.path().join("app");
        std::fs::create_dir_all(app.join("ebin")).unwrap();
        std::fs::create_dir_all(app.join("priv")).unwrap();
        std::fs::write(app.join("ebin/a.beam"), b"FOR1 beam").unwrap();
        std::fs::write(app.join("priv/b.txt"), b"data").unwrap();
        let packed = precomp_proto::artifact::pack(&app, project.path()).unwrap();
        std::fs::create_dir_all(blobs.tmp_dir()).unwrap();
        let mut tmp = tempfile::NamedTempFile::new_in(blobs.tmp_dir()).unwrap();
        std::io::Write::write_all(&mut tmp, &packed.bytes).unwrap();
        assert!(blobs.persist(tmp, &packed.sha256).unwrap());
        packed
    }

    /// The one streamed pass checks the files against the manifest and the bytes against
    /// the blob's name: a blob damaged on disk is `Corrupt`, never indexed; a manifest whose
    /// files differ is `FilesMismatch`; size and presence are checked first.
    #[test]
    fn a_blob_is_checked_against_its_manifest_and_its_name_in_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path());
        let packed = stored(&blobs);
        let output = packed.output();
        assert_eq!(
            blobs.check_artifact(&packed.sha256, &output).unwrap(),
            ArtifactCheck::Present
        );

        let mut other_file = output.clone();
        other_file.files[0].sha256 = vec![0; 32];
        match blobs.check_artifact(&packed.sha256, &other_file).unwrap() {
            ArtifactCheck::FilesMismatch(why) => assert!(why.contains("ebin/a.beam"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut bigger = output.clone();
        bigger.artifact_size += 1;
        assert_eq!(
            blobs.check_artifact(&packed.sha256, &bigger).unwrap(),
            ArtifactCheck::SizeMismatch {
                stored: output.artifact_size
            }
        );
        assert_eq!(
            blobs.check_artifact(&[9; 32], &output).unwrap(),
            ArtifactCheck::Missing
        );

        // One byte flipped on disk, same size: the digest no longer matches the name.
        let path = blobs.artifact_path(&packed.sha256);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        match blobs.check_artifact(&packed.sha256, &output) {
            Err(ArtifactStoreError::Corrupt { expected, .. }) => {
                assert_eq!(expected, hex::encode(packed.sha256))
            }
            other => panic!("a damaged blob is corrupt, not {other:?}"),
        }
    }
}
