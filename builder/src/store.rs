//! The builder's local store, `DATA/builds/`: every artifact and signed manifest it made or
//! reused, and the logs of failed builds.
//!
//! ```text
//! artifacts/<sha256>.tar.gz     the artifact, named by its digest
//! manifests/<key>.manifest      the signed manifest
//! by-base/<base key>/<key>      empty: which keys share a base key (lookup without the compile env)
//! logs/<key>.log                the build log of a success
//! failures/<package>-<version>-<base key>.log  the log of a failed build
//! ```
//!
//! Files are written to a temporary file in the same directory, then renamed: a crash leaves
//! each entry either absent or complete. Everything read back is checked again (signature,
//! key, digest), so a damaged store can only cause a rebuild, never a wrong artifact.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use precomp_proto::buildkey::BuildKey;
use precomp_proto::manifest::{ArtifactPublicKey, Manifest, ManifestError, SignedManifest};

use crate::build::Built;
use crate::error::{io, BuildError, Result};

/// Where one stored build's files are.
#[derive(Clone, Debug)]
pub struct StoredBuild {
    pub manifest: Manifest,
    pub signed_bytes: Vec<u8>,
    pub artifact_path: PathBuf,
    pub manifest_path: PathBuf,
}

pub struct BuildStore {
    dir: PathBuf,
}

impl BuildStore {
    pub fn open(dir: &Path) -> Result<BuildStore> {
        for sub in ["artifacts", "manifests", "by-base", "logs", "failures"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io(&path))?;
        }
        Ok(BuildStore {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores a finished build (artifact first, so a manifest never points at nothing).
    pub fn put(&self, built: &Built) -> Result<StoredBuild> {
        let sha = hex::encode(built.artifact.sha256);
        let artifact_path = self.dir.join("artifacts").join(format!("{sha}.tar.gz"));
        write_atomic(&artifact_path, &built.artifact.bytes)?;
        let key = &built.manifest.key;
        let log_path = self.dir.join("logs").join(format!("{key}.log"));
        write_atomic(&log_path, &built.log)?;
        let signed_bytes = prost::Message::encode_to_vec(&built.signed);
        self.put_manifest(&built.manifest, &signed_bytes)?;
        Ok(StoredBuild {
            manifest: built.manifest.clone(),
            signed_bytes,
            artifact_path,
            manifest_path: self.manifest_path(key),
        })
    }

    fn put_manifest(&self, manifest: &Manifest, signed_bytes: &[u8]) -> Result<()> {
        let path = self.manifest_path(&manifest.key);
        write_atomic(&path, signed_bytes)?;
        let base = self.dir.join("by-base").join(&manifest.base_key);
        std::fs::create_dir_all(&base).map_err(io(&base))?;
        let marker = base.join(&manifest.key);
        std::fs::write(&marker, b"").map_err(io(&marker))
    }

    fn manifest_path(&self, key: &str) -> PathBuf {
        self.dir.join("manifests").join(format!("{key}.manifest"))
    }

    /// Every stored build with this base key whose manifest verifies with one of `trusted`
    /// and whose artifact is present and intact. Damaged entries are skipped with a warning;
    /// intact ones signed by no key this run trusts (another builder's, a rotated key's) are
    /// skipped quietly: they are not damage.
    pub fn with_base_key(
        &self,
        base_key: &BuildKey,
        trusted: &[ArtifactPublicKey],
    ) -> Result<Vec<StoredBuild>> {
        let dir = self.dir.join("by-base").join(base_key.to_string());
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut found = Vec::new();
        let mut keys: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        keys.sort();
        for key in keys {
            match self.load(&key, trusted) {
                Ok(stored) => found.push(stored),
                Err(e @ BuildError::Manifest(ManifestError::Untrusted { .. })) => {
                    tracing::info!(%key, "not reusing a stored build this run does not trust: {e}")
                }
                Err(e) => tracing::warn!(%key, error = %e, "skipping a damaged stored build"),
            }
        }
        Ok(found)
    }

    /// A stored build by key, checked: signature, key, artifact digest.
    pub fn load(&self, key: &str, trusted: &[ArtifactPublicKey]) -> Result<StoredBuild> {
        let manifest_path = self.manifest_path(key);
        let signed_bytes = std::fs::read(&manifest_path).map_err(io(&manifest_path))?;
        let signed = SignedManifest::decode(&signed_bytes)?;
        let (manifest, _signers) = signed.verify(trusted)?;
        manifest.check_key()?;
        if manifest.key != key {
            return Err(self.damaged(format!("{} holds the manifest of {}", key, manifest.key)));
        }
        let output = manifest
            .output
            .as_ref()
            .ok_or_else(|| self.damaged(format!("manifest {key} has no output")))?;
        let artifact_path = self
            .dir
            .join("artifacts")
            .join(format!("{}.tar.gz", hex::encode(&output.artifact_sha256)));
        let bytes = std::fs::read(&artifact_path).map_err(io(&artifact_path))?;
        if Sha256::digest(&bytes).as_slice() != output.artifact_sha256.as_slice() {
            return Err(self.damaged(format!(
                "{} does not match its digest",
                artifact_path.display()
            )));
        }
        Ok(StoredBuild {
            manifest,
            signed_bytes,
            artifact_path,
            manifest_path,
        })
    }

    /// Keeps a failed build's log; returns where.
    pub fn record_failure(&self, name: &str, log: &[u8]) -> Result<PathBuf> {
        let path = self.dir.join("failures").join(format!("{name}.log"));
        write_atomic(&path, log)?;
        Ok(path)
    }

    fn damaged(&self, message: String) -> BuildError {
        BuildError::Store {
            path: self.dir.clone(),
            message,
        }
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io(path))?;
    tmp.persist(path).map_err(|e| BuildError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}
