//! Package sources: release tarballs fetched through the mirror, checked against the lock's
//! outer checksum (which the build key carries), cached by that checksum, and unpacked.

use std::path::{Path, PathBuf};

use precomp_http::blocking::BlockingClient;
use precomp_http::{not_found_is_none, Request, Settings};
use sha2::{Digest, Sha256};

use precomp_proto::buildkey::PackageRef;
use precomp_proto::tarball;

use crate::error::{io, BuildError, Result};

/// Downloads and caches release tarballs.
pub struct SourceCache {
    dir: PathBuf,
    mirror: String,
    client: BlockingClient,
}

impl SourceCache {
    /// `dir` holds `<outer checksum>.tar`; `mirror` is a Hex repository URL (the precomp
    /// mirror, or any Hex repository) or `file:///DIR`.
    /// `token`, if any, is sent with each download: a mirror may require one to read (`precomp
    /// serve --require-read-token`).
    pub fn new(dir: PathBuf, mirror: &str, token: Option<String>) -> Result<SourceCache> {
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let client = BlockingClient::new(Settings {
            server: "the mirror",
            token,
            ..Settings::default()
        })?;
        Ok(SourceCache {
            dir,
            mirror: mirror.trim_end_matches('/').to_string(),
            client,
        })
    }

    /// The verified tarball of `package`: from the cache, or fetched, checked and cached.
    pub fn tarball(&self, package: &PackageRef) -> Result<tarball::Tarball> {
        let outer = hex::encode(package.outer_checksum);
        let cached = self.dir.join(format!("{outer}.tar"));
        let bytes = match precomp_proto::file::read_bounded(&cached, tarball::MAX_TARBALL_SIZE) {
            Ok(bytes) if Sha256::digest(&bytes).as_slice() == package.outer_checksum => bytes,
            _ => {
                let bytes = self.download(package)?;
                let tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io(&self.dir))?;
                std::fs::write(tmp.path(), &bytes).map_err(io(tmp.path()))?;
                tmp.persist(&cached).map_err(|e| BuildError::Io {
                    path: cached.clone(),
                    source: e.error,
                })?;
                bytes
            }
        };
        tarball::read(&bytes).map_err(|source| BuildError::Tarball {
            package: package.name.clone(),
            version: package.version.clone(),
            source: Box::new(source),
        })
    }

    fn download(&self, package: &PackageRef) -> Result<Vec<u8>> {
        let name = format!("{}-{}.tar", package.name, package.version);
        let url = format!("{}/tarballs/{name}", self.mirror);
        let bytes = if let Some(dir) = self.mirror.strip_prefix("file://") {
            let path = Path::new(dir).join("tarballs").join(&name);
            precomp_proto::file::read_bounded(&path, tarball::MAX_TARBALL_SIZE).map_err(|e| {
                BuildError::Fetch {
                    url: url.clone(),
                    message: e.to_string(),
                }
            })?
        } else {
            let request = Request::get(&url, tarball::MAX_TARBALL_SIZE).with_token_if_any();
            match not_found_is_none(self.client.fetch(&request).map(|(_, bytes)| bytes))? {
                Some(bytes) => bytes.to_vec(),
                None => {
                    return Err(BuildError::Fetch {
                        url: url.clone(),
                        message: "the mirror has no such tarball (404)".into(),
                    })
                }
            }
        };
        let actual = Sha256::digest(&bytes);
        if actual.as_slice() != package.outer_checksum {
            return Err(BuildError::ChecksumMismatch {
                package: package.name.clone(),
                version: package.version.clone(),
                expected: hex::encode(package.outer_checksum),
                actual: hex::encode(actual),
            });
        }
        Ok(bytes)
    }
}

/// Unpacks a verified tarball's contents into `dest` (created).
pub fn unpack(package: &PackageRef, tarball: &tarball::Tarball, dest: &Path) -> Result<()> {
    tarball::unpack_contents(&tarball.contents_tar_gz, dest).map_err(|source| {
        BuildError::Tarball {
            package: package.name.clone(),
            version: package.version.clone(),
            source: Box::new(source),
        }
    })?;
    Ok(())
}
