//! What a rebuild needs besides the manifest's key inputs: the `mix.lock` of the package and
//! its closure, and a config giving the compile-time values the manifest records.
//!
//! **The lock** is made from the manifest's package and closure alone, as `mix deps.get`
//! would write it: each release's tarball (fetched from the mirror, refused unless its
//! SHA-256 is the outer checksum the manifest names) gives the app name, the inner checksum,
//! the build tools — which Hex writes into the lock as the managers, sorted (Hex.SCM
//! `update/1`) — and the requirements (app, optional). So the auditor trusts nothing the
//! builder says beyond the key inputs, and checks that the lock's closure of the package is
//! exactly the manifest's.
//!
//! **The config** sets, for each `compile_env` entry with a value — the package's, and those
//! of its closure members' published manifests (each member's key names what it was built
//! with, its compile env included) — exactly that value at that path (nested paths become keyword lists, or maps for non-atom keys); entries Mix
//! recorded as unset stay unset. Values are Erlang term text, parsed in the config by
//! `:erl_parse`, so no Elixir rendering can change them (`precomp_builder::config::config_exs`,
//! which workers use for config variants too). The rebuild's key includes the compile-env
//! digest, so a config that did not reproduce the values shows as another key.

use precomp_builder::sources::SourceCache;
use precomp_proto::buildkey::PackageRef;
use precomp_proto::lock::{HexLockEntry, LockDep, LockEntry, MixLock, DEFAULT_REPO};
use precomp_proto::manifest::Manifest;
use precomp_proto::metadata::PackageMetadata;

use super::AuditError;

/// The lock of `manifest`'s package and closure, and the package's app name.
pub fn lock(manifest: &Manifest, sources: &SourceCache) -> Result<(MixLock, String), AuditError> {
    let (root, members) = manifest.releases()?;
    let mut lock = MixLock::default();
    let mut root_app = None;
    for (i, package) in std::iter::once(&root).chain(&members).enumerate() {
        let (app, entry) = entry(package, sources)?;
        if i == 0 {
            root_app = Some(app.clone());
        }
        if lock
            .entries
            .insert(app.clone(), LockEntry::Hex(entry))
            .is_some()
        {
            return Err(AuditError::Invalid(format!(
                "two packages of the manifest's closure are the app {app}"
            )));
        }
    }
    let app = root_app.expect("the package comes first");
    let (package, closure) = lock.closure(&app)?;
    let mut ours = closure.clone();
    ours.sort();
    let mut theirs = members.clone();
    theirs.sort();
    if package != root || ours != theirs {
        let names = |c: &[PackageRef]| {
            c.iter()
                .map(|p| format!("{} {}", p.name, p.version))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(AuditError::Invalid(format!(
            "the manifest's closure ({}) is not what its packages' own requirements give ({}): \
             the manifest is inconsistent",
            names(&theirs),
            names(&ours)
        )));
    }
    Ok((lock, app))
}

fn entry(
    package: &PackageRef,
    sources: &SourceCache,
) -> Result<(String, HexLockEntry), AuditError> {
    let tarball = sources.tarball(package)?;
    let metadata = PackageMetadata::parse(&tarball.metadata_config)
        .map_err(|e| AuditError::Invalid(format!("{} {}: {e}", package.name, package.version)))?;
    if metadata.name != package.name || metadata.version != package.version {
        return Err(AuditError::Invalid(format!(
            "the tarball of {} {} says it is {} {}",
            package.name, package.version, metadata.name, metadata.version
        )));
    }
    let mut managers = metadata.build_tools.clone();
    managers.sort();
    managers.dedup();
    let mut deps: Vec<LockDep> = metadata
        .requirements
        .iter()
        .map(|requirement| LockDep {
            app: requirement.app.clone(),
            requirement: Some(requirement.requirement.clone()),
            package: requirement.name.clone(),
            repo: requirement.repository.clone(),
            optional: requirement.optional,
        })
        .collect();
    deps.sort_by(|a, b| a.app.cmp(&b.app));
    Ok((
        metadata.app.clone(),
        HexLockEntry {
            package: package.name.clone(),
            version: package.version.clone(),
            inner_checksum: hex::encode(tarball.inner_checksum),
            managers,
            deps,
            repo: DEFAULT_REPO.into(),
            outer_checksum: Some(hex::encode(package.outer_checksum)),
            extra: Vec::new(),
        },
    ))
}
