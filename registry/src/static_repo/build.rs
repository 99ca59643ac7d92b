//! `precomp repo build`: package sources and tarballs → a static, signed Hex repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use precomp_proto::metadata::PackageMetadata;
use precomp_proto::registry::{
    encode_signed, Dependency, Names, NamesPackage, Package, Release, RepoSigningKey, Versions,
    VersionsPackage,
};
use precomp_proto::tarball;

use super::{layout, set_mode, write_atomically, StaticRepoError, DIR_MODE};
use crate::source::{self, SourceOptions};

/// One release going into the repository, with where it came from for error messages.
#[derive(Debug)]
struct Input {
    origin: PathBuf,
    metadata: PackageMetadata,
    tarball: Vec<u8>,
    inner_checksum: [u8; 32],
    outer_checksum: [u8; 32],
}

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltRepo {
    /// Package name → its versions, ascending.
    pub packages: BTreeMap<String, Vec<String>>,
    /// Requirements on packages of this repository that it does not contain: clients will fail
    /// to resolve them.
    pub unresolved: Vec<String>,
}

impl BuiltRepo {
    pub fn release_count(&self) -> usize {
        self.packages.values().map(Vec::len).sum()
    }
}

/// What a build needs beyond its inputs.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// By package source directory (its name inside the packages directory): what its files
    /// cannot say. Each must name a package source there.
    pub sources: BTreeMap<String, SourceOptions>,
}

/// Builds the repository named `name` from every package source directory and every `.tar`
/// directly inside `packages`, signed with `key`, into `out`.
///
/// The whole repository is written to a staging directory beside `out` and swapped in at the
/// end, so `out` is never seen half-written. An existing `out` is replaced only if it is empty
/// or already a repository (it has `names`), so a mistyped path cannot wipe unrelated data.
/// Every file is written 0644 and every directory 0755: all of it is meant to be served.
pub fn build(
    packages: &Path,
    name: &str,
    key: &RepoSigningKey,
    out: &Path,
) -> Result<BuiltRepo, StaticRepoError> {
    build_with(packages, name, key, out, &BuildOptions::default())
}

/// [`build`], with options.
pub fn build_with(
    packages: &Path,
    name: &str,
    key: &RepoSigningKey,
    out: &Path,
    options: &BuildOptions,
) -> Result<BuiltRepo, StaticRepoError> {
    check_repo_name(name)?;
    let inputs = collect_inputs(packages, options)?;
    let mut by_package: BTreeMap<String, BTreeMap<semver::Version, Input>> = BTreeMap::new();
    for input in inputs {
        let version = semver::Version::parse(&input.metadata.version).map_err(|e| {
            StaticRepoError::Package {
                origin: input.origin.clone(),
                message: format!("version {:?} is not SemVer: {e}", input.metadata.version),
            }
        })?;
        check_package_name(&input.origin, &input.metadata.name)?;
        let releases = by_package.entry(input.metadata.name.clone()).or_default();
        if let Some(existing) = releases.get(&version) {
            return Err(StaticRepoError::Duplicate {
                release: format!("{}@{}", input.metadata.name, input.metadata.version),
                first: existing.origin.clone(),
                second: input.origin,
            });
        }
        releases.insert(version, input);
    }
    if by_package.is_empty() {
        return Err(StaticRepoError::Empty {
            dir: packages.to_path_buf(),
        });
    }

    let mut unresolved = Vec::new();
    for (package, releases) in &by_package {
        for input in releases.values() {
            for req in &input.metadata.requirements {
                if req.repository == name && !by_package.contains_key(&req.name) {
                    // Returned, not logged: the caller reports each once.
                    unresolved.push(format!(
                        "{package}@{} requires {} {}, which this repository does not contain",
                        input.metadata.version, req.name, req.requirement
                    ));
                }
            }
        }
    }

    let staging = staging_dir(out)?;
    let result = write_repo(staging.path(), name, key, &by_package)
        .and_then(|()| replace_dir(staging.path(), out));
    result?;
    // The staging directory was renamed into place; nothing is left to clean up.
    let _ = staging.keep();

    Ok(BuiltRepo {
        packages: by_package
            .iter()
            .map(|(name, releases)| {
                (
                    name.clone(),
                    releases.keys().map(|v| v.to_string()).collect(),
                )
            })
            .collect(),
        unresolved,
    })
}

fn collect_inputs(packages: &Path, options: &BuildOptions) -> Result<Vec<Input>, StaticRepoError> {
    let io = |source| StaticRepoError::Io {
        path: packages.to_path_buf(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(packages)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();

    for dir_name in options.sources.keys() {
        let dir = packages.join(dir_name);
        if dir_name.contains('/') || !dir.is_dir() || !source::is_source(&dir) {
            return Err(StaticRepoError::Package {
                origin: dir,
                message: "options were given for it, but it is not a package source directory in the packages directory".into(),
            });
        }
    }

    let mut inputs = Vec::new();
    for path in entries {
        if path.is_dir() {
            if !source::is_source(&path) {
                tracing::debug!(path = %path.display(), "skipping: not a package source");
                continue;
            }
            let source_options = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| options.sources.get(n))
                .cloned()
                .unwrap_or_default();
            let package = source::load_with(&path, &source_options)?;
            let created = package.tarball()?;
            tracing::info!(
                package = %package.metadata.name,
                version = %package.metadata.version,
                files = package.files.len(),
                "packaged {}",
                path.display()
            );
            inputs.push(Input {
                origin: path,
                metadata: package.metadata,
                tarball: created.bytes,
                inner_checksum: created.inner_checksum,
                outer_checksum: created.outer_checksum,
            });
        } else if path.extension().is_some_and(|e| e == "tar") {
            inputs.push(read_tarball(&path)?);
        }
    }
    Ok(inputs)
}

/// A ready-made package tarball: checked as a client would before it goes into the repository.
fn read_tarball(path: &Path) -> Result<Input, StaticRepoError> {
    let package_error = |message: String| StaticRepoError::Package {
        origin: path.to_path_buf(),
        message,
    };
    let size = std::fs::metadata(path)
        .map_err(|source| StaticRepoError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if size > tarball::MAX_TARBALL_SIZE {
        return Err(package_error(format!(
            "{size} bytes is over the Hex limit of {} bytes",
            tarball::MAX_TARBALL_SIZE
        )));
    }
    let bytes = std::fs::read(path).map_err(|source| StaticRepoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let parsed = tarball::read(&bytes).map_err(|e| package_error(e.to_string()))?;
    tarball::list_contents(&parsed.contents_tar_gz).map_err(|e| package_error(e.to_string()))?;
    let metadata = PackageMetadata::parse(&parsed.metadata_config)
        .map_err(|e| package_error(format!("metadata.config: {e}")))?;
    Ok(Input {
        origin: path.to_path_buf(),
        metadata,
        inner_checksum: parsed.inner_checksum,
        outer_checksum: parsed.outer_checksum,
        tarball: bytes,
    })
}

fn write_repo(
    root: &Path,
    name: &str,
    key: &RepoSigningKey,
    by_package: &BTreeMap<String, BTreeMap<semver::Version, Input>>,
) -> Result<(), StaticRepoError> {
    let mut names = Names {
        repository: name.to_string(),
        packages: Vec::new(),
    };
    let mut versions = Versions {
        repository: name.to_string(),
        packages: Vec::new(),
    };
    for (package_name, releases) in by_package {
        let mut package = Package {
            name: package_name.clone(),
            repository: name.to_string(),
            releases: Vec::new(),
            advisories: Vec::new(),
        };
        for input in releases.values() {
            let meta = &input.metadata;
            write_atomically(
                &root.join(layout::tarball(package_name, &meta.version)),
                &input.tarball,
            )?;
            package.releases.push(Release {
                version: meta.version.clone(),
                inner_checksum: input.inner_checksum.to_vec(),
                outer_checksum: Some(input.outer_checksum.to_vec()),
                dependencies: meta
                    .requirements
                    .iter()
                    .map(|req| Dependency {
                        package: req.name.clone(),
                        requirement: req.requirement.clone(),
                        optional: Some(req.optional),
                        // Absent when equal to the package / this repository, as hex.pm does.
                        app: (req.app != req.name).then(|| req.app.clone()),
                        repository: (req.repository != name).then(|| req.repository.clone()),
                    })
                    .collect(),
                ..Default::default()
            });
        }
        versions.packages.push(VersionsPackage {
            name: package_name.clone(),
            versions: package.releases.iter().map(|r| r.version.clone()).collect(),
            retired: Vec::new(),
            with_advisories: Vec::new(),
        });
        // No `updated_at`: a repository built twice from the same inputs is byte-identical.
        names.packages.push(NamesPackage {
            name: package_name.clone(),
            updated_at: None,
        });
        write_atomically(
            &root.join(layout::package(package_name)),
            &encode_signed(&package, key),
        )?;
    }
    write_atomically(&root.join(layout::NAMES), &encode_signed(&names, key))?;
    write_atomically(&root.join(layout::VERSIONS), &encode_signed(&versions, key))?;
    let public_pem = key.public_key().to_spki_pem()?;
    write_atomically(&root.join(layout::PUBLIC_KEY), public_pem.as_bytes())?;
    Ok(())
}

fn staging_dir(out: &Path) -> Result<tempfile::TempDir, StaticRepoError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|source| StaticRepoError::Io {
        path: parent.clone(),
        source,
    })?;
    let staging = tempfile::Builder::new()
        .prefix(".precomp-repo-staging-")
        .tempdir_in(&parent)
        .map_err(|source| StaticRepoError::Io {
            path: parent,
            source,
        })?;
    // Renamed into place as the repository's root, which is served too.
    set_mode(staging.path(), DIR_MODE)?;
    Ok(staging)
}

/// Puts `staging` at `out`, replacing a previous repository there.
fn replace_dir(staging: &Path, out: &Path) -> Result<(), StaticRepoError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StaticRepoError::Io { path, source }
    };
    if out.exists() {
        let is_empty = std::fs::read_dir(out).map_err(io(out))?.next().is_none();
        if !is_empty && !out.join(layout::NAMES).is_file() {
            return Err(StaticRepoError::OutNotARepo {
                out: out.to_path_buf(),
            });
        }
        let old = out.with_file_name(format!(
            ".{}.old-{}",
            out.file_name().and_then(|n| n.to_str()).unwrap_or("repo"),
            std::process::id()
        ));
        std::fs::rename(out, &old).map_err(io(out))?;
        std::fs::rename(staging, out).map_err(io(out))?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(staging, out).map_err(io(out))?;
    }
    Ok(())
}

/// Hex package names ([`precomp_proto::registry::is_package_name`]).
fn check_package_name(origin: &Path, name: &str) -> Result<(), StaticRepoError> {
    if !precomp_proto::registry::is_package_name(name) {
        return Err(StaticRepoError::Package {
            origin: origin.to_path_buf(),
            message: format!(
                "package name {name:?} is not a valid Hex name (lowercase letters, digits and _, starting with a letter, at most {} bytes)",
                precomp_proto::registry::MAX_PACKAGE_NAME
            ),
        });
    }
    Ok(())
}

fn check_repo_name(name: &str) -> Result<(), StaticRepoError> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(StaticRepoError::RepoName {
            name: name.to_string(),
        });
    }
    Ok(())
}
