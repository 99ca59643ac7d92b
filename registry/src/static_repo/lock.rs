//! A `mix.lock` for pinned releases of a static repository: what `mix deps.get` would write
//! for them, without a Hex client. Checksums come from the signed registry records (verified
//! with the repository's public key), build tools from each tarball's metadata, and every
//! dependency of a pinned release must itself be pinned (optional ones may be left out, as
//! Mix does when nothing else asks for them).

use std::collections::BTreeMap;
use std::path::Path;

use precomp_proto::lock::{HexLockEntry, LockDep, LockEntry, MixLock, DEFAULT_REPO};
use precomp_proto::metadata::PackageMetadata;
use precomp_proto::registry::{decode_package, RepoPublicKey};
use precomp_proto::tarball;

use super::{layout, StaticRepoError};

/// The lock of `pins` (package name, version) from the repository in `dir`, named `repo`.
pub fn lock_for(
    dir: &Path,
    key: &RepoPublicKey,
    repo: &str,
    pins: &[(String, String)],
) -> Result<MixLock, StaticRepoError> {
    let fail = |message: String| StaticRepoError::Package {
        origin: dir.to_path_buf(),
        message,
    };
    let pinned: BTreeMap<&str, &str> = pins
        .iter()
        .map(|(name, version)| (name.as_str(), version.as_str()))
        .collect();
    let mut lock = MixLock::default();
    for (name, version) in &pinned {
        let path = dir.join(layout::package(name));
        let body = std::fs::read(&path).map_err(|source| StaticRepoError::Io {
            path: path.clone(),
            source,
        })?;
        let package = decode_package(&body, key, repo, name)
            .map_err(|e| fail(format!("packages/{name}: {e}")))?;
        let release = package
            .releases
            .iter()
            .find(|r| r.version == *version)
            .ok_or_else(|| fail(format!("{name} has no release {version}")))?;
        let tarball_path = dir.join(layout::tarball(name, version));
        let bytes = std::fs::read(&tarball_path).map_err(|source| StaticRepoError::Io {
            path: tarball_path.clone(),
            source,
        })?;
        let parsed =
            tarball::read(&bytes).map_err(|e| fail(format!("{}: {e}", tarball_path.display())))?;
        if Some(parsed.outer_checksum.as_slice()) != release.outer_checksum.as_deref() {
            return Err(fail(format!(
                "{} does not match the registry's outer checksum",
                tarball_path.display()
            )));
        }
        let metadata = PackageMetadata::parse(&parsed.metadata_config)
            .map_err(|e| fail(format!("{name} {version}: {e}")))?;
        let mut deps = Vec::new();
        for dep in &release.dependencies {
            let optional = dep.optional.unwrap_or(false);
            if !optional && !pinned.contains_key(dep.package.as_str()) {
                return Err(fail(format!(
                    "{name} {version} depends on {} ({}), which is not pinned",
                    dep.package, dep.requirement
                )));
            }
            deps.push(LockDep {
                app: dep.app.clone().unwrap_or_else(|| dep.package.clone()),
                requirement: Some(dep.requirement.clone()),
                package: dep.package.clone(),
                repo: dep
                    .repository
                    .clone()
                    .unwrap_or_else(|| DEFAULT_REPO.into()),
                optional,
            });
        }
        deps.sort_by(|a, b| a.app.cmp(&b.app));
        lock.entries.insert(
            metadata.app.clone(),
            LockEntry::Hex(HexLockEntry {
                package: name.to_string(),
                version: version.to_string(),
                inner_checksum: hex::encode(&release.inner_checksum),
                managers: metadata.build_tools.clone(),
                deps,
                repo: DEFAULT_REPO.into(),
                outer_checksum: Some(hex::encode(parsed.outer_checksum)),
                extra: Vec::new(),
            }),
        );
    }
    Ok(lock)
}
