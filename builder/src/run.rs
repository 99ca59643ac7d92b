//! A lock's packages as a DAG: each package builds once all its dependencies have an
//! artifact, up to `jobs` builds at a time, and any package whose key is already in the
//! store is reused instead of rebuilt. Once the context's [`Cancel`](crate::Cancel) handle is
//! cancelled, no package starts and running builds are killed: those packages end as
//! [`Status::Cancelled`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use precomp_proto::buildkey::{
    BuildInputs, BuildKey, BuildKeyError, ClosureMember, CompileEnvEntry, Manager, PackageRef,
    Target,
};
use precomp_proto::lock::{LockEntry, MixLock};
use precomp_proto::manifest::ArtifactPublicKey;
use precomp_proto::tarball::{list_contents, ContentEntry};

use crate::build::{build_package, native_target, BuildContext, BuildOutcome, DependencyArtifact};
use crate::error::{io, BuildError, Result};
use crate::managers::Managers;
use crate::store::{BuildStore, StoredBuild};

/// How one package ended.
#[derive(Clone, Debug)]
pub enum Status {
    /// Built in this run.
    Built { duration: Duration },
    /// Already in the store with the same key.
    Reused,
    /// It did not compile; the log is kept at `log`. `base_key` is the key the build would
    /// have had without native code and compile env (what clients report as a miss).
    Failed {
        reason: String,
        log: std::path::PathBuf,
        base_key: String,
    },
    /// Not attempted: a dependency failed or could not be built.
    Skipped { reason: String },
    /// The run was cancelled (`reason` as given to [`Cancel::cancel`](crate::Cancel::cancel))
    /// before this package started, or while it compiled (its sandbox was killed). Nothing
    /// of it was stored and no failure was recorded: it may be built again later.
    Cancelled { reason: String },
    /// Cannot be precompiled from this lock: its closure has a git or path dependency, or an
    /// entry without an outer checksum (the key could not say what it was built against).
    NotBuildable { reason: String },
}

/// One package's result.
#[derive(Clone, Debug)]
pub struct PackageResult {
    pub app: String,
    pub package: PackageRef,
    pub status: Status,
    /// The stored build when it was built or reused.
    pub build: Option<StoredBuild>,
}

/// Progress callbacks (the CLI draws them).
pub trait Progress: Sync {
    fn started(&self, _app: &str) {}
    fn finished(&self, _result: &PackageResult) {}
}

impl Progress for () {}

/// Decides whether a stored build is valid for this run's config: looks at the compile-env
/// paths it records and returns this run's values for them.
pub trait CompileEnvSource: Sync {
    fn values_for(&self, recorded: &[CompileEnvEntry]) -> Result<Vec<CompileEnvEntry>>;
}

struct Node {
    app: String,
    package: PackageRef,
    /// The build tool Mix uses for it (part of its key).
    manager: Manager,
    closure: BTreeMap<String, PackageRef>,
    /// Direct dependencies (indices), each of which must finish first.
    deps: Vec<usize>,
}

#[derive(Clone)]
enum State {
    Waiting,
    Running,
    Done(Box<PackageResult>),
}

/// Where finished builds are kept and which of them may be reused.
pub struct Reuse<'a> {
    pub store: &'a BuildStore,
    /// Keys whose signatures make a stored build trustworthy.
    pub trusted: &'a [ArtifactPublicKey],
    /// This run's compile-env values, for stored builds that record some.
    pub compile_env: &'a dyn CompileEnvSource,
}

/// Builds `apps` of `lock` and everything they depend on, reusing stored builds; each package
/// with its manager in `managers` (`managers::for_lock`: the one the consumer's Mix uses).
pub fn build_lock(
    context: &BuildContext<'_>,
    reuse: &Reuse<'_>,
    lock: &MixLock,
    managers: &Managers,
    apps: &[String],
    jobs: usize,
    progress: &dyn Progress,
) -> Result<Vec<PackageResult>> {
    // Packages whose closure the lock cannot give (a git or path dependency, a missing
    // entry, no outer checksum) cannot be keyed: they are skipped, the others still build.
    // So are those Mix could not pick a build tool for (the manager is part of the key).
    let mut unbuildable = Vec::new();
    let mut buildable = Vec::new();
    for app in apps {
        let keyable = lock.closure_by_app(app).map_err(BuildError::from).and_then(
            |(_, closure)| match closure
                .keys()
                .chain([app])
                .find(|m| !managers.contains_key(*m))
            {
                Some(member) => Err(BuildError::Lock(BuildKeyError::NoManager {
                    app: member.clone(),
                })),
                None => Ok(()),
            },
        );
        match keyable {
            Ok(()) => buildable.push(app.clone()),
            Err(e @ (BuildError::Lock(_) | BuildError::Invalid(_))) => {
                unbuildable.push(PackageResult {
                    app: app.clone(),
                    package: lock_package(lock, app),
                    status: Status::NotBuildable {
                        reason: e.to_string(),
                    },
                    build: None,
                })
            }
            Err(e) => return Err(e),
        }
    }
    for result in &unbuildable {
        progress.finished(result);
    }
    let nodes = plan(lock, &buildable, managers)?;
    let priority = critical_paths(&nodes, &estimated_costs(context, &nodes));
    let states = Mutex::new(vec![State::Waiting; nodes.len()]);
    let wake = Condvar::new();
    let error: Mutex<Option<BuildError>> = Mutex::new(None);

    let worker = || loop {
        // Take the next package whose dependencies are all done, or stop when none is left.
        let next = {
            let mut guard = states.lock().unwrap();
            loop {
                if error.lock().unwrap().is_some() {
                    return;
                }
                // Cancelled: whatever has not started ends here; running builds end on
                // their own (their sandboxes are killed) and wake the waiting workers.
                if let Some(reason) = context.cancel.reason() {
                    for (i, node) in nodes.iter().enumerate() {
                        if matches!(guard[i], State::Waiting) {
                            let result = PackageResult {
                                app: node.app.clone(),
                                package: node.package.clone(),
                                status: Status::Cancelled {
                                    reason: reason.clone(),
                                },
                                build: None,
                            };
                            progress.finished(&result);
                            guard[i] = State::Done(Box::new(result));
                        }
                    }
                    wake.notify_all();
                }
                let mut waiting = false;
                let mut pick: Option<usize> = None;
                for (i, node) in nodes.iter().enumerate() {
                    if !matches!(guard[i], State::Waiting) {
                        continue;
                    }
                    waiting = true;
                    let ready = node
                        .deps
                        .iter()
                        .all(|&d| matches!(guard[d], State::Done(_)));
                    // Of the ready packages, the one at the head of the longest chain of
                    // work left goes first.
                    if ready && pick.is_none_or(|p| priority[i] > priority[p]) {
                        pick = Some(i);
                    }
                }
                match pick {
                    Some(i) => {
                        let failed_dep = nodes[i].deps.iter().find_map(|&d| match &guard[d] {
                            State::Done(r) if r.build.is_none() => Some(r.app.clone()),
                            _ => None,
                        });
                        if let Some(dep) = failed_dep {
                            let result = PackageResult {
                                app: nodes[i].app.clone(),
                                package: nodes[i].package.clone(),
                                status: Status::Skipped {
                                    reason: format!("its dependency {dep} has no artifact"),
                                },
                                build: None,
                            };
                            progress.finished(&result);
                            guard[i] = State::Done(Box::new(result));
                            wake.notify_all();
                            continue;
                        }
                        guard[i] = State::Running;
                        let dependencies: Vec<StoredBuild> = nodes[i]
                            .closure
                            .keys()
                            .map(|app| {
                                let index = nodes.iter().position(|n| &n.app == app).unwrap();
                                match &guard[index] {
                                    State::Done(r) => r.build.clone().unwrap(),
                                    _ => unreachable!("the closure finished before its dependents"),
                                }
                            })
                            .collect();
                        break Some((i, dependencies));
                    }
                    None if waiting => guard = wake.wait(guard).unwrap(),
                    None => break None,
                }
            }
        };
        let Some((i, dependencies)) = next else {
            return;
        };
        let node = &nodes[i];
        progress.started(&node.app);
        let result = build_node(context, reuse, lock, managers, node, &dependencies);
        let mut guard = states.lock().unwrap();
        match result {
            Ok(result) => {
                progress.finished(&result);
                guard[i] = State::Done(Box::new(result));
            }
            Err(e) => {
                error.lock().unwrap().get_or_insert(e);
            }
        }
        wake.notify_all();
    };
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(worker);
        }
    });
    if let Some(e) = error.into_inner().unwrap() {
        return Err(e);
    }
    let mut results = unbuildable;
    results.extend(
        states
            .into_inner()
            .unwrap()
            .into_iter()
            .map(|state| match state {
                State::Done(result) => *result,
                _ => unreachable!("every package finishes"),
            }),
    );
    Ok(results)
}

/// The fixed cost of one build in [`estimated_costs`]'s unit (a byte of Erlang source): a
/// sandbox, a VM, Mix loading the project — about 0.8 s here, the time to compile ~50 KB of
/// Erlang.
const BUILD_OVERHEAD: u64 = 50_000;

/// An estimate of each package's build time, in bytes of Erlang source: its release's `.erl`
/// and C files, its `.ex` files twice (Elixir compiles about half as many bytes a second;
/// measured on a Phoenix-sized stack, docs/benchmarks.md), plus [`BUILD_OVERHEAD`]. Only the
/// order of the estimates matters ([`critical_paths`]). A release that cannot be read counts
/// as the overhead alone (its build will say why).
fn estimated_costs(context: &BuildContext<'_>, nodes: &[Node]) -> Vec<u64> {
    nodes
        .iter()
        .map(|node| {
            let source = context
                .sources
                .tarball(&node.package)
                .ok()
                .and_then(|tarball| list_contents(&tarball.contents_tar_gz).ok())
                .map_or(0, |entries| entries.iter().map(source_cost).sum());
            BUILD_OVERHEAD + source
        })
        .collect()
}

fn source_cost(entry: &ContentEntry) -> u64 {
    let in_sources = ["lib/", "src/", "c_src/"]
        .iter()
        .any(|dir| entry.path.starts_with(dir));
    if !in_sources {
        0
    } else if entry.path.ends_with(".ex") {
        2 * entry.size
    } else {
        entry.size
    }
}

/// For each node, the cost of the longest chain of builds that starts with it and follows
/// its dependents: list scheduling by critical path. With few CPUs the long chains (cowlib
/// -> cowboy -> plug_cowboy -> phoenix in a Phoenix lock) must start first, and small
/// leaves fill the gaps.
fn critical_paths(nodes: &[Node], costs: &[u64]) -> Vec<u64> {
    fn visit(i: usize, nodes: &[Node], costs: &[u64], memo: &mut [Option<u64>]) -> u64 {
        if let Some(known) = memo[i] {
            return known;
        }
        let longest_after = (0..nodes.len())
            .filter(|&d| nodes[d].deps.contains(&i))
            .map(|d| visit(d, nodes, costs, memo))
            .max()
            .unwrap_or(0);
        let total = costs[i] + longest_after;
        memo[i] = Some(total);
        total
    }
    let mut memo = vec![None; nodes.len()];
    (0..nodes.len())
        .map(|i| visit(i, nodes, costs, &mut memo))
        .collect()
}

/// What the lock says of `app`, for reporting a package that cannot be built: its package
/// name, version and outer checksum when it has them.
fn lock_package(lock: &MixLock, app: &str) -> PackageRef {
    let (name, version, outer) = match lock.entries.get(app) {
        Some(LockEntry::Hex(entry)) => (
            entry.package.clone(),
            entry.version.clone(),
            entry.outer_checksum.as_deref().unwrap_or_default(),
        ),
        _ => (app.to_string(), String::new(), ""),
    };
    PackageRef {
        name,
        version,
        outer_checksum: hex::decode(outer)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .unwrap_or([0; 32]),
    }
}

fn build_node(
    context: &BuildContext<'_>,
    reuse: &Reuse<'_>,
    lock: &MixLock,
    managers: &Managers,
    node: &Node,
    dependencies: &[StoredBuild],
) -> Result<PackageResult> {
    match build_or_reuse(context, reuse, lock, managers, node, dependencies) {
        // Cancelled while evaluating the config for reuse.
        Err(BuildError::Cancelled { reason }) => Ok(PackageResult {
            app: node.app.clone(),
            package: node.package.clone(),
            status: Status::Cancelled { reason },
            build: None,
        }),
        other => other,
    }
}

fn build_or_reuse(
    context: &BuildContext<'_>,
    reuse: &Reuse<'_>,
    lock: &MixLock,
    managers: &Managers,
    node: &Node,
    dependencies: &[StoredBuild],
) -> Result<PackageResult> {
    let result = |status, build| PackageResult {
        app: node.app.clone(),
        package: node.package.clone(),
        status,
        build,
    };
    if let Some(stored) = reusable(context, reuse, node, dependencies)? {
        return Ok(result(Status::Reused, Some(stored)));
    }
    let artifacts = dependencies
        .iter()
        .zip(node.closure.keys())
        .map(|(stored, app)| {
            Ok(DependencyArtifact {
                app: app.clone(),
                key: stored_key(stored)?,
                artifact: std::fs::read(&stored.artifact_path)
                    .map_err(io(&stored.artifact_path))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    match build_package(context, lock, managers, &node.app, &artifacts)? {
        BuildOutcome::Built(built) => {
            let before_store = started.elapsed();
            let stored = reuse.store.put(&built)?;
            tracing::debug!(
                app = %node.app,
                built_ms = before_store.as_millis() as u64,
                stored_ms = started.elapsed().as_millis() as u64,
                "stored"
            );
            Ok(result(
                Status::Built {
                    duration: started.elapsed(),
                },
                Some(stored),
            ))
        }
        // Nothing is stored: no artifact, and no failure (the package did not fail).
        BuildOutcome::Cancelled { reason } => Ok(result(Status::Cancelled { reason }, None)),
        BuildOutcome::Failed { reason, log } => {
            let base = base_inputs(context, node, dependencies, Target::Any)?.base_key()?;
            let name = format!("{}-{}-{}", node.package.name, node.package.version, base);
            let log = reuse.store.record_failure(&name, &log)?;
            Ok(result(
                Status::Failed {
                    reason,
                    log,
                    base_key: base.to_string(),
                },
                None,
            ))
        }
    }
}

/// A stored build with this node's full key, if there is one: the base key (for either
/// target; it holds the keys of the closure's builds of this run) matches and the
/// compile-env values it was built with are this run's.
fn reusable(
    context: &BuildContext<'_>,
    reuse: &Reuse<'_>,
    node: &Node,
    dependencies: &[StoredBuild],
) -> Result<Option<StoredBuild>> {
    for target in [Target::Any, native_target(&context.toolchain.architecture)?] {
        let mut inputs = base_inputs(context, node, dependencies, target)?;
        for stored in reuse
            .store
            .with_base_key(&inputs.base_key()?, reuse.trusted)?
        {
            inputs.compile_env = if stored.manifest.compile_env.is_empty() {
                Vec::new()
            } else {
                reuse
                    .compile_env
                    .values_for(&stored.manifest.inputs()?.compile_env)?
            };
            if inputs.key()?.to_string() == stored.manifest.key {
                return Ok(Some(stored));
            }
        }
    }
    Ok(None)
}

/// The key inputs of `node` without its compile env: each closure member with the key of its
/// build in this run (`dependencies`, in the closure's order).
fn base_inputs(
    context: &BuildContext<'_>,
    node: &Node,
    dependencies: &[StoredBuild],
    target: Target,
) -> Result<BuildInputs> {
    let closure = node
        .closure
        .values()
        .zip(dependencies)
        .map(|(package, stored)| {
            Ok(ClosureMember {
                package: package.clone(),
                key: Some(stored_key(stored)?),
            })
        })
        .collect::<Result<_>>()?;
    Ok(BuildInputs {
        package: node.package.clone(),
        manager: node.manager,
        closure,
        otp_major: context.toolchain.otp.clone(),
        elixir: context.toolchain.elixir.clone(),
        mix_env: context.mix_env.clone(),
        target,
        compile_env: Vec::new(),
    })
}

fn stored_key(stored: &StoredBuild) -> Result<BuildKey> {
    BuildKey::parse(&stored.manifest.key).ok_or_else(|| {
        BuildError::Invalid(format!(
            "stored build {:?} has no valid key",
            stored.manifest.key
        ))
    })
}

/// The packages to build: `apps` and their closures, each with its direct dependencies and
/// its manager (from `managers`, by app).
fn plan(lock: &MixLock, apps: &[String], managers: &Managers) -> Result<Vec<Node>> {
    let mut wanted = BTreeSet::new();
    for app in apps {
        let (_, closure) = lock.closure_by_app(app)?;
        wanted.insert(app.clone());
        wanted.extend(closure.into_keys());
    }
    let order: Vec<String> = wanted.into_iter().collect();
    let mut nodes = Vec::new();
    for app in &order {
        let (package, closure) = lock.closure_by_app(app)?;
        let Some(LockEntry::Hex(entry)) = lock.entries.get(app) else {
            unreachable!("closure_by_app checked it")
        };
        let deps = entry
            .deps
            .iter()
            .filter(|dep| lock.entries.contains_key(&dep.app) && &dep.app != app)
            .map(|dep| {
                order
                    .iter()
                    .position(|a| a == &dep.app)
                    .expect("in the closure")
            })
            .collect();
        nodes.push(Node {
            app: app.clone(),
            package,
            manager: *managers
                .get(app)
                .expect("the manager of every app to build is decided first"),
            closure,
            deps,
        });
    }
    check_acyclic(&nodes)?;
    Ok(nodes)
}

fn check_acyclic(nodes: &[Node]) -> Result<()> {
    for (i, node) in nodes.iter().enumerate() {
        if node.closure.contains_key(&node.app) || node.deps.contains(&i) {
            return Err(BuildError::Invalid(format!(
                "mix.lock: {} depends on itself",
                node.app
            )));
        }
    }
    // A cycle would put some node into its own closure; closure_by_app excludes the root
    // itself, so check that no dependency's closure contains the node.
    for node in nodes {
        for &d in &node.deps {
            if nodes[d].closure.contains_key(&node.app) {
                return Err(BuildError::Invalid(format!(
                    "mix.lock: {} and {} depend on each other",
                    node.app, nodes[d].app
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(app: &str, deps: &[usize]) -> Node {
        Node {
            app: app.to_string(),
            package: PackageRef {
                name: app.to_string(),
                version: "1.0.0".into(),
                outer_checksum: [0; 32],
            },
            manager: Manager::Mix,
            closure: BTreeMap::new(),
            deps: deps.to_vec(),
        }
    }

    #[test]
    fn the_head_of_the_longest_chain_of_work_goes_first() {
        // cowlib -> cowboy -> phoenix, and a big leaf nothing waits for.
        let nodes = [
            node("cowlib", &[]),
            node("cowboy", &[0]),
            node("phoenix", &[1, 4]),
            node("big_leaf", &[]),
            node("telemetry", &[]),
        ];
        let costs = [30, 20, 100, 120, 5];
        let priority = critical_paths(&nodes, &costs);
        assert_eq!(priority, [150, 120, 100, 120, 105]);
        // Ready at the start: cowlib, big_leaf, telemetry; cowlib's chain is the longest
        // although big_leaf is the biggest package and telemetry has as many dependents.
        let ready = [0, 3, 4];
        assert_eq!(ready.iter().max_by_key(|&&i| priority[i]), Some(&0));
        assert!(priority[4] < priority[3]);
    }
}
