//! The manager (mix, rebar3 or make) each package of a lock is built with: the one the
//! consumer's Mix uses for it, decided by `precomp_proto::manager::mix_managers` from the
//! lock graph and the consumer's top-level deps. The generated project declares each package
//! with it (`project::ProjectDep::manager`).
//!
//! A builder is given a lock, not the consumer's `mix.exs`. Unless told otherwise it takes
//! the lock's roots for the top-level deps (`precomp_proto::manager::lock_roots`): a package
//! the lock reaches only through a rebar3 dependency gets rebar3, as in the consumer.
//! Callers that know better pass the consumer's top-level deps (`precomp build --top-level`),
//! or the managers the consumer computed (a reported miss).

use std::collections::BTreeMap;

use precomp_proto::buildkey::PackageRef;
use precomp_proto::lock::{LockEntry, MixLock};
use precomp_proto::manager::{self, Converger, Manager, TopLevelDep};
use precomp_proto::tarball::{list_contents, EntryKind};

use crate::error::{BuildError, Result};
use crate::sources::SourceCache;

/// Each Hex package's manager, by app. A package absent from it has none Mix could find (Mix
/// fails to compile it, as it would for the consumer).
pub type Managers = BTreeMap<String, Manager>;

/// The managers of every Hex package of `lock` in a project that declares `top_level`, on
/// Elixir `elixir` (`None`: the lock's roots). Release tarballs are fetched only for packages
/// whose files decide (lock entries that name neither mix nor rebar3).
pub fn for_lock(
    sources: &SourceCache,
    lock: &MixLock,
    top_level: Option<&[TopLevelDep]>,
    elixir: &str,
) -> Result<Managers> {
    let roots;
    let top_level = match top_level {
        Some(given) => given,
        None => {
            roots = manager::lock_roots(lock);
            &roots
        }
    };
    let infer = |app: &str| infer_from_tarball(sources, lock, app);
    let managers = manager::mix_managers(lock, top_level, Converger::for_elixir(elixir), infer)?;
    Ok(managers
        .into_iter()
        .filter_map(|(app, manager)| Some((app, manager?)))
        .collect())
}

/// `infer_manager/1` on the files at the root of the release's contents (what `mix deps.get`
/// unpacks into `deps/<app>`).
fn infer_from_tarball(sources: &SourceCache, lock: &MixLock, app: &str) -> Result<Option<Manager>> {
    let Some(LockEntry::Hex(entry)) = lock.entries.get(app) else {
        return Ok(None);
    };
    // Without an outer checksum the release cannot be fetched (nor keyed: it is not built).
    let Some(outer_checksum) = entry
        .outer_checksum
        .as_deref()
        .and_then(|outer| hex::decode(outer).ok())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
    else {
        return Ok(None);
    };
    let package = PackageRef {
        name: entry.package.clone(),
        version: entry.version.clone(),
        outer_checksum,
    };
    let tarball = sources.tarball(&package)?;
    let entries =
        list_contents(&tarball.contents_tar_gz).map_err(|source| BuildError::Tarball {
            package: package.name.clone(),
            version: package.version.clone(),
            source: Box::new(source),
        })?;
    let regular = |path: &str| {
        entries.iter().any(|e| {
            e.path == path && matches!(e.kind, EntryKind::File { .. } | EntryKind::HardLink { .. })
        })
    };
    // `File.regular?/1` follows links: a root link to a regular file counts.
    let root_files = entries
        .iter()
        .filter(|e| !e.path.contains('/'))
        .filter(|e| match &e.kind {
            EntryKind::File { .. } | EntryKind::HardLink { .. } => true,
            EntryKind::Symlink { target } => regular(target),
            EntryKind::Directory => false,
        })
        .map(|e| e.path.as_str());
    Ok(Manager::infer_from_files(root_files))
}
