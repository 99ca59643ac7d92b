//! `precomp repo verify`: checks every signature, origin and checksum of a static repository,
//! as a client would, and reports each file that fails — not just the first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use precomp_proto::metadata::PackageMetadata;
use precomp_proto::registry::{
    decode_names, decode_package, decode_versions, verify_signed, Names, RegistryError,
    RepoPublicKey, Resource, Versions, HEXPM,
};
use precomp_proto::tarball;
use prost::Message;
use sha2::{Digest, Sha256};

use super::layout;

/// One failed check on one file of the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyFailure {
    /// The file's path relative to the repository root, e.g. `packages/foo`.
    pub file: String,
    /// What was checked and how it failed.
    pub check: String,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.check)
    }
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    /// The repository name the origin checks used.
    pub repository: String,
    pub packages: usize,
    pub releases: usize,
    pub failures: Vec<VerifyFailure>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    fn fail(&mut self, file: impl Into<String>, check: impl Into<String>) {
        self.failures.push(VerifyFailure {
            file: file.into(),
            check: check.into(),
        });
    }

    fn fail_registry(&mut self, err: &RegistryError) {
        let resource = err.resource();
        let text = err.to_string();
        let prefix = format!("{resource}: ");
        let check = text.strip_prefix(&prefix).unwrap_or(&text).to_string();
        self.fail(resource.path(), check);
    }
}

/// Verifies the repository in `dir` against `key`. The origin checks use `name`, or when it is
/// not given the repository name that the signed `/names` (else `/versions`) carries.
pub fn verify(dir: &Path, key: &RepoPublicKey, name: Option<&str>) -> VerifyReport {
    let mut report = VerifyReport::default();
    let names_bytes = read(dir, layout::NAMES, &mut report);
    let versions_bytes = read(dir, layout::VERSIONS, &mut report);
    report.repository = match name {
        Some(name) => name.to_string(),
        None => signed_repository::<Names>(names_bytes.as_deref(), key, Resource::Names)
            .or_else(|| {
                signed_repository::<Versions>(versions_bytes.as_deref(), key, Resource::Versions)
            })
            .unwrap_or_else(|| HEXPM.to_string()),
    };
    let repository = report.repository.clone();

    let names: Option<BTreeSet<String>> =
        names_bytes.and_then(|bytes| match decode_names(&bytes, key, &repository) {
            Ok(names) => Some(names.packages.into_iter().map(|p| p.name).collect()),
            Err(e) => {
                report.fail_registry(&e);
                None
            }
        });
    let versions: Option<BTreeMap<String, Vec<String>>> =
        versions_bytes.and_then(|bytes| match decode_versions(&bytes, key, &repository) {
            Ok(v) => Some(
                v.packages
                    .into_iter()
                    .map(|p| (p.name, p.versions))
                    .collect(),
            ),
            Err(e) => {
                report.fail_registry(&e);
                None
            }
        });

    match std::fs::read(dir.join(layout::PUBLIC_KEY)) {
        Ok(pem) => match String::from_utf8(pem)
            .ok()
            .map(|p| RepoPublicKey::from_pem(&p))
        {
            Some(Ok(served)) if served == *key => {}
            Some(Ok(_)) => report.fail(
                layout::PUBLIC_KEY,
                "key check failed: the served public key is not the key given to verify with",
            ),
            _ => report.fail(
                layout::PUBLIC_KEY,
                "key check failed: not an RSA public key in PEM form",
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => report.fail(layout::PUBLIC_KEY, format!("cannot read: {e}")),
    }

    // Every /packages/NAME record, and every tarball it lists.
    let package_files = list(dir, layout::PACKAGES_DIR, &mut report);
    let mut referenced_tarballs = BTreeSet::new();
    let mut releases_by_package: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for package_name in &package_files {
        let file = format!("{}/{package_name}", layout::PACKAGES_DIR);
        let Some(bytes) = read(dir, &file, &mut report) else {
            continue;
        };
        let package = match decode_package(&bytes, key, &repository, package_name) {
            Ok(p) => p,
            Err(e) => {
                report.fail_registry(&e);
                continue;
            }
        };
        report.packages += 1;
        let versions = releases_by_package.entry(package_name.clone()).or_default();
        for release in &package.releases {
            report.releases += 1;
            versions.push(release.version.clone());
            let tarball_file = layout::tarball(package_name, &release.version);
            referenced_tarballs.insert(tarball_file.clone());
            check_tarball(
                dir,
                &file,
                &tarball_file,
                package_name,
                release,
                &mut report,
            );
        }
    }

    // The indexes must agree with the package records.
    if let Some(names) = &names {
        let packages: BTreeSet<String> = package_files.iter().cloned().collect();
        for missing in names.difference(&packages) {
            report.fail(
                layout::NAMES,
                format!("index check failed: lists {missing:?}, which has no /packages record"),
            );
        }
        for unlisted in packages.difference(names) {
            report.fail(
                format!("{}/{unlisted}", layout::PACKAGES_DIR),
                "index check failed: the package is not listed in /names",
            );
        }
    }
    if let Some(versions) = &versions {
        for (package, listed) in versions {
            let actual = releases_by_package.get(package);
            let mut listed_sorted = listed.clone();
            listed_sorted.sort();
            let mut actual_sorted = actual.cloned().unwrap_or_default();
            actual_sorted.sort();
            if actual.is_some() && listed_sorted != actual_sorted {
                report.fail(
                    layout::VERSIONS,
                    format!(
                        "index check failed: lists {package} versions {listed:?}, its /packages record has {actual_sorted:?}"
                    ),
                );
            } else if actual.is_none() && package_files.contains(package) {
                // The record itself failed and was reported above.
            } else if actual.is_none() {
                report.fail(
                    layout::VERSIONS,
                    format!("index check failed: lists {package:?}, which has no /packages record"),
                );
            }
        }
        for package in releases_by_package.keys() {
            if !versions.contains_key(package) {
                report.fail(
                    format!("{}/{package}", layout::PACKAGES_DIR),
                    "index check failed: the package is not listed in /versions",
                );
            }
        }
    }
    for tarball in list(dir, layout::TARBALLS_DIR, &mut report) {
        let file = format!("{}/{tarball}", layout::TARBALLS_DIR);
        if !referenced_tarballs.contains(&file) {
            report.fail(
                file,
                "index check failed: no /packages record lists this tarball",
            );
        }
    }
    report
        .failures
        .sort_by(|a, b| a.file.cmp(&b.file).then(a.check.cmp(&b.check)));
    report
}

fn check_tarball(
    dir: &Path,
    package_file: &str,
    tarball_file: &str,
    package_name: &str,
    release: &precomp_proto::registry::Release,
    report: &mut VerifyReport,
) {
    let Some(expected_outer) = release.outer_checksum.as_deref() else {
        report.fail(
            package_file,
            format!(
                "checksum check failed: release {} has no outer checksum",
                release.version
            ),
        );
        return;
    };
    let path = dir.join(tarball_file);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.len() > tarball::MAX_TARBALL_SIZE => {
            report.fail(
                tarball_file,
                format!(
                    "size check failed: {} bytes is over the Hex limit of {}",
                    meta.len(),
                    tarball::MAX_TARBALL_SIZE
                ),
            );
            return;
        }
        Ok(_) => {}
        Err(e) => {
            report.fail(
                tarball_file,
                format!("missing: {e} (listed in /{package_file})"),
            );
            return;
        }
    }
    let Some(bytes) = read(dir, tarball_file, report) else {
        return;
    };
    let outer = Sha256::digest(&bytes);
    if outer.as_slice() != expected_outer {
        report.fail(
            tarball_file,
            format!(
                "checksum check failed: outer checksum is {}, /{package_file} says {}",
                hex::encode(outer),
                hex::encode(expected_outer)
            ),
        );
        return;
    }
    let parsed = match tarball::read(&bytes) {
        Ok(parsed) => parsed,
        Err(e) => {
            report.fail(tarball_file, format!("tarball check failed: {e}"));
            return;
        }
    };
    if parsed.inner_checksum.as_slice() != release.inner_checksum.as_slice() {
        report.fail(
            tarball_file,
            format!(
                "checksum check failed: inner checksum is {}, /{package_file} says {}",
                hex::encode(parsed.inner_checksum),
                hex::encode(&release.inner_checksum)
            ),
        );
    }
    if let Err(e) = tarball::list_contents(&parsed.contents_tar_gz) {
        report.fail(tarball_file, format!("contents check failed: {e}"));
    }
    match PackageMetadata::parse(&parsed.metadata_config) {
        Ok(meta) if meta.name == package_name && meta.version == release.version => {}
        Ok(meta) => report.fail(
            tarball_file,
            format!(
                "metadata check failed: the tarball holds {}@{}, not {package_name}@{}",
                meta.name, meta.version, release.version
            ),
        ),
        Err(e) => report.fail(tarball_file, format!("metadata check failed: {e}")),
    }
}

/// The repository name a signed index carries, if its signature verifies.
fn signed_repository<M: Message + Default + HasRepository>(
    bytes: Option<&[u8]>,
    key: &RepoPublicKey,
    resource: Resource,
) -> Option<String> {
    let payload = verify_signed(bytes?, key, &resource).ok()?;
    M::decode(payload.as_slice()).ok().map(|m| m.repository())
}

trait HasRepository {
    fn repository(&self) -> String;
}
impl HasRepository for Names {
    fn repository(&self) -> String {
        self.repository.clone()
    }
}
impl HasRepository for Versions {
    fn repository(&self) -> String {
        self.repository.clone()
    }
}

fn read(dir: &Path, file: &str, report: &mut VerifyReport) -> Option<Vec<u8>> {
    match std::fs::read(dir.join(file)) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            report.fail(file, format!("cannot read: {e}"));
            None
        }
    }
}

fn list(dir: &Path, sub: &str, report: &mut VerifyReport) -> Vec<String> {
    let path = dir.join(sub);
    match std::fs::read_dir(&path) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.'))
                .collect();
            names.sort();
            names
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            report.fail(sub, format!("cannot list: {e}"));
            Vec::new()
        }
    }
}
