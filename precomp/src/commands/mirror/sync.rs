//! `precomp mirror sync`: prefetch packages into the mirror's store, for serving offline.
//!
//! Everything goes through [`Mirror::object`] in this process, exactly as a client's request
//! would: registry files verified by signature and origin, tarballs by the outer checksum in
//! the verified `/packages/NAME`, stored before they count as synced. The store is the one
//! `precomp serve` uses on the same data directory, and may be shared with a running server.
//!
//! Resuming: a tarball already in the store is never requested again (tarballs are
//! immutable). A registry file is taken from the store while it was checked upstream within
//! the registry TTL, as the server does, and otherwise revalidated with a conditional request
//! (a 304 costs no body). So a run interrupted at any point continues where it stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{ArgGroup, Args};
use indicatif::{DecimalBytes, ProgressBar, ProgressStyle};
use precomp_proto::lock::{LockEntry, MixLock, DEFAULT_REPO};
use precomp_proto::rebar_lock::{RebarLock, RebarSource};
use precomp_proto::registry::{self, is_package_name, Package, Release};
use precomp_registry::mirror::{Mirror, Outcome, Route};
use tokio::sync::Semaphore;

use super::MirrorSettings;
use crate::Context;

/// Bytes of hot objects the sync keeps in memory: enough for the package records it re-reads
/// while fetching their tarballs.
const MEMORY_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Prefetches packages from upstream into the mirror's store, for offline use.
///
/// What to sync, in any combination, each option repeatable: --mix-lock FILE (every Hex
/// dependency of a mix.lock), --rebar-lock FILE (every package of a rebar.lock), --package
/// NAME (every release of a package, or its --latest N), --all (every package upstream's
/// /names lists).
///
/// For a lock, each entry's /packages/NAME and its exact tarball are fetched, and the lock's
/// checksums (mix.lock's inner and outer checksums, rebar.lock's pkg_hash and pkg_hash_ext)
/// must equal the release's in the verified registry record, or the entry fails. Entries from
/// other repositories than hexpm or --upstream-repository, and git or path dependencies, are
/// listed as skipped. For --package and --all, /names and /versions are fetched too.
///
/// Objects are fetched in this process, verified as `precomp serve` verifies them, and stored
/// in DATA/mirror, which a running `precomp serve` on the same data directory serves at once.
/// Tarballs already stored are skipped; registry files checked upstream within --registry-ttl
/// are taken from the store, older ones revalidated. So an interrupted sync (Ctrl-C) continues
/// where it stopped when run again.
///
/// Shows a progress bar when stderr is a terminal. Prints one `SKIP` line per skipped lock
/// entry, one `FAIL` line per failure with its reason, and a summary line; exits 1 if anything
/// failed, 130 when interrupted.
#[derive(Args, Debug)]
#[command(
    group(ArgGroup::new("what").required(true).multiple(true)
        .args(["mix_lock", "rebar_lock", "packages", "all"])),
    group(ArgGroup::new("named").multiple(true).args(["packages", "all"])),
)]
pub struct SyncArgs {
    #[command(flatten)]
    mirror: MirrorSettings,
    /// A mix.lock: every Hex dependency's package record and locked tarball.
    #[arg(long, value_name = "FILE")]
    mix_lock: Vec<PathBuf>,
    /// A rebar.lock: every package's record and locked tarball.
    #[arg(long, value_name = "FILE")]
    rebar_lock: Vec<PathBuf>,
    /// A package: its record and every release's tarball (see --latest).
    #[arg(long = "package", value_name = "NAME")]
    packages: Vec<String>,
    /// With --package or --all: only the N highest versions by SemVer, pre-releases excluded
    /// unless a package has no stable release.
    #[arg(long, value_name = "N", requires = "named",
          value_parser = clap::value_parser!(u32).range(1..))]
    latest: Option<u32>,
    /// Every package upstream's /names lists, with every release (or the --latest N).
    #[arg(long)]
    all: bool,
    /// Objects fetched at the same time.
    #[arg(long, short = 'j', value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..))]
    jobs: u32,
}

pub fn run(context: &Context, args: SyncArgs) -> anyhow::Result<ExitCode> {
    let (mut config, _file) = args.mirror.resolve(context)?;
    config.memory_cache_bytes = MEMORY_CACHE_BYTES;
    let mut plan = Plan::default();
    for name in &args.packages {
        if !is_package_name(name) {
            bail!(
                "--package {name:?}: not a Hex package name (a lowercase letter, then lowercase \
                 letters, digits and _)"
            );
        }
        plan.want(name).named = Some(format!("--package {name}"));
    }
    plan.all = args.all;
    plan.latest = args.latest.map(|n| n as usize);
    for path in &args.mix_lock {
        plan.add_mix_lock(path, &config.upstream_repository)?;
    }
    for path in &args.rebar_lock {
        plan.add_rebar_lock(path)?;
    }
    for line in &plan.skipped {
        println!("SKIP {line}");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let started = Instant::now();
    let (report, interrupted) = runtime.block_on(async {
        let mirror = Mirror::open(config).context("opening the mirror's store")?;
        let sync = Arc::new(Sync::new(mirror, args.jobs as usize));
        let interrupted = tokio::select! {
            () = Arc::clone(&sync).run(plan) => false,
            _ = tokio::signal::ctrl_c() => true,
        };
        sync.bar.finish_and_clear();
        let report = std::mem::take(&mut *sync.report.lock().expect("report lock"));
        Ok::<_, anyhow::Error>((report, interrupted))
    })?;
    // Waits for stores in progress, so nothing is left half-written.
    drop(runtime);

    let mut failures = report.failures;
    failures.sort();
    for failure in &failures {
        println!("FAIL {failure}");
    }
    println!(
        "synced {} objects ({} fetched, {} already stored), {} failed, {:.1} MB fetched in {:.1}s",
        report.fetched + report.stored,
        report.fetched,
        report.stored,
        failures.len(),
        report.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    if interrupted {
        println!("interrupted: run the same command again to continue");
        return Ok(ExitCode::from(130));
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What to sync, by package.
#[derive(Default)]
struct Plan {
    packages: BTreeMap<String, Wanted>,
    /// --all: add every name upstream's /names lists.
    all: bool,
    /// --latest N for named packages.
    latest: Option<usize>,
    /// Lock entries not synced, and why.
    skipped: Vec<String>,
    /// Lock entries that cannot be synced (an invalid package name).
    failures: Vec<String>,
}

#[derive(Default)]
struct Wanted {
    /// Named by `--package NAME` or `--all`: every release, or the latest N.
    named: Option<String>,
    locked: Vec<Locked>,
}

/// A release a lock pins, with the checksums it expects.
struct Locked {
    /// `FILE: APP`, for messages.
    origin: String,
    version: String,
    inner: Option<String>,
    outer: Option<String>,
}

impl Plan {
    fn want(&mut self, name: &str) -> &mut Wanted {
        self.packages.entry(name.to_string()).or_default()
    }

    /// Names from /names and from --package: whether any of them asks for the indexes.
    fn named(&self) -> bool {
        self.all || self.packages.values().any(|w| w.named.is_some())
    }

    fn lock(&mut self, name: &str, locked: Locked) {
        if is_package_name(name) {
            self.want(name).locked.push(locked);
        } else {
            self.failures.push(format!(
                "{}: {name:?} is not a Hex package name",
                locked.origin
            ));
        }
    }

    fn add_mix_lock(&mut self, path: &Path, repository: &str) -> anyhow::Result<()> {
        let text = read(path)?;
        let lock = MixLock::parse(&text).with_context(|| format!("reading {}", path.display()))?;
        for (app, entry) in &lock.entries {
            let origin = format!("{}: {app}", path.display());
            match entry {
                LockEntry::Hex(hex) if hex.repo == DEFAULT_REPO || hex.repo == repository => {
                    self.lock(
                        &hex.package,
                        Locked {
                            origin,
                            version: hex.version.clone(),
                            inner: Some(hex.inner_checksum.clone()),
                            outer: hex.outer_checksum.clone(),
                        },
                    );
                }
                LockEntry::Hex(hex) => self.skipped.push(format!(
                    "{origin}: from repository {:?}, not {DEFAULT_REPO:?} or the upstream's {repository:?}",
                    hex.repo
                )),
                LockEntry::Git(git) => self
                    .skipped
                    .push(format!("{origin}: git dependency ({}), not from Hex", git.url)),
                LockEntry::Other { scm } => self
                    .skipped
                    .push(format!("{origin}: {scm} dependency, not from Hex")),
            }
        }
        Ok(())
    }

    fn add_rebar_lock(&mut self, path: &Path) -> anyhow::Result<()> {
        let text = read(path)?;
        let lock =
            RebarLock::parse(&text).with_context(|| format!("reading {}", path.display()))?;
        for entry in &lock.entries {
            let origin = format!("{}: {}", path.display(), entry.app);
            match &entry.source {
                RebarSource::Pkg(pkg) => self.lock(
                    &pkg.name,
                    Locked {
                        origin,
                        version: pkg.version.clone(),
                        inner: pkg.inner_checksum.clone(),
                        outer: pkg.outer_checksum.clone(),
                    },
                ),
                RebarSource::Other { kind, .. } => self
                    .skipped
                    .push(format!("{origin}: {kind} dependency, not from Hex")),
            }
        }
        Ok(())
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Tallies, for the summary.
#[derive(Default)]
struct Report {
    fetched: u64,
    stored: u64,
    /// Bytes of the objects fetched.
    bytes: u64,
    failures: Vec<String>,
}

struct Sync {
    mirror: Arc<Mirror>,
    permits: Semaphore,
    report: Mutex<Report>,
    bar: ProgressBar,
}

impl Sync {
    fn new(mirror: Arc<Mirror>, jobs: usize) -> Sync {
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0).with_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} objects {msg}",
                )
                .expect("a valid progress template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        Sync {
            mirror,
            permits: Semaphore::new(jobs),
            report: Mutex::new(Report::default()),
            bar,
        }
    }

    async fn run(self: Arc<Self>, mut plan: Plan) {
        for failure in std::mem::take(&mut plan.failures) {
            self.fail(failure);
        }
        if plan.named() {
            self.bar.inc_length(2);
            let (names, _versions) =
                tokio::join!(self.object(&Route::Names), self.object(&Route::Versions));
            if plan.all {
                if let Some(body) = names {
                    match registry::decode_names(
                        &body,
                        &self.mirror.config().upstream_key,
                        &self.mirror.config().upstream_repository,
                    ) {
                        Ok(names) => {
                            for package in names.packages {
                                if is_package_name(&package.name) {
                                    let wanted = plan.want(&package.name);
                                    if wanted.named.is_none() {
                                        wanted.named = Some("--all".to_string());
                                    }
                                } else {
                                    self.fail(format!(
                                        "/names: {:?} is not a Hex package name",
                                        package.name
                                    ));
                                }
                            }
                        }
                        Err(e) => self.fail(e.to_string()),
                    }
                }
            }
        }
        self.bar.inc_length(plan.packages.len() as u64);
        let latest = plan.latest;
        let tasks: Vec<_> = plan
            .packages
            .into_iter()
            .map(|(name, wanted)| tokio::spawn(Arc::clone(&self).package(name, wanted, latest)))
            .collect();
        for task in tasks {
            if let Err(e) = task.await {
                self.fail(format!("a sync task failed: {e}"));
            }
        }
    }

    /// One package: its record, the lock checks, then its tarballs.
    async fn package(self: Arc<Self>, name: String, wanted: Wanted, latest: Option<usize>) {
        let Some((versions, unknown)) = self.releases(&name, wanted, latest).await else {
            return;
        };
        self.bar.inc_length((versions.len() + unknown.len()) as u64);
        let mut tasks = Vec::new();
        for version in versions {
            let this = Arc::clone(&self);
            let name = name.clone();
            tasks.push(tokio::spawn(async move {
                this.tarball(&name, &version).await;
            }));
        }
        for locked in unknown {
            let this = Arc::clone(&self);
            let name = name.clone();
            tasks.push(tokio::spawn(async move {
                this.unknown_release(&name, locked).await;
            }));
        }
        for task in tasks {
            if let Err(e) = task.await {
                self.fail(format!("a sync task failed: {e}"));
            }
        }
    }

    /// The package's record, and from it the releases to fetch (`select`ed ones and locked
    /// ones whose checksums agree) and the locked releases it does not list. The record is
    /// dropped before the tarballs are fetched: with --all, thousands wait their turn.
    async fn releases(
        &self,
        name: &str,
        wanted: Wanted,
        latest: Option<usize>,
    ) -> Option<(BTreeSet<String>, Vec<Locked>)> {
        let body = self
            .object_for(&Route::Package(name.to_string()), &wanted)
            .await?;
        let record = self.decode(name, &body)?;
        let mut versions = match wanted.named {
            Some(_) => select(&record, latest),
            None => BTreeSet::new(),
        };
        let mut unknown = Vec::new();
        for locked in wanted.locked {
            match record.releases.iter().find(|r| r.version == locked.version) {
                Some(release) => match check(name, release, &locked) {
                    Ok(()) => {
                        versions.insert(locked.version);
                    }
                    Err(failure) => self.fail(failure),
                },
                None => unknown.push(locked),
            }
        }
        Some((versions, unknown))
    }

    /// A tarball: skipped when stored, since tarballs never change.
    async fn tarball(&self, name: &str, version: &str) {
        let route = Route::Tarball {
            name: name.to_string(),
            version: version.to_string(),
        };
        if self.mirror.store().get(&route.object_path()).is_some() {
            self.done(false, 0);
        } else {
            self.object(&route).await;
        }
    }

    /// A locked release the stored record does not list: perhaps published since it was
    /// checked. The mirror re-reads the record upstream once when asked for the tarball; the
    /// lock is then checked against that record.
    async fn unknown_release(&self, name: &str, locked: Locked) {
        let route = Route::Tarball {
            name: name.to_string(),
            version: locked.version.clone(),
        };
        let outcome = {
            let _permit = self.permits.acquire().await.expect("semaphore open");
            self.mirror.object(&route).await
        };
        let size = match outcome {
            Outcome::Found { meta, .. } => meta.size,
            Outcome::NotFound => {
                return self.failed(format!(
                    "{}: {name} {}: no such release upstream (not in /packages/{name})",
                    locked.origin, locked.version
                ))
            }
            other => return self.failed(describe_failure(&route, other)),
        };
        let record = match self.mirror.object(&Route::Package(name.to_string())).await {
            Outcome::Found { body, .. } => self.decode(name, &body),
            other => {
                return self.failed(describe_failure(&Route::Package(name.to_string()), other))
            }
        };
        let Some(record) = record else {
            return self.bar.inc(1);
        };
        match record.releases.iter().find(|r| r.version == locked.version) {
            Some(release) => match check(name, release, &locked) {
                Ok(()) => self.done(true, size),
                Err(failure) => self.failed(failure),
            },
            None => self.failed(format!(
                "{}: {name} {}: no such release in /packages/{name}",
                locked.origin, locked.version
            )),
        }
    }

    /// [`Sync::object`], with what wanted the object named in its failure.
    async fn object_for(&self, route: &Route, wanted: &Wanted) -> Option<Bytes> {
        let before = self.mirror.store().get(&route.object_path());
        let outcome = {
            let _permit = self.permits.acquire().await.expect("semaphore open");
            self.mirror.object(route).await
        };
        match outcome {
            Outcome::Found { meta, body } => {
                let unchanged = before.is_some_and(|b| b.sha256 == meta.sha256);
                self.done(!unchanged, meta.size);
                Some(body)
            }
            other => {
                let mut wanted_by: Vec<String> =
                    wanted.named.iter().map(|n| n.to_string()).collect();
                wanted_by.extend(wanted.locked.iter().map(|l| l.origin.clone()));
                let more = wanted_by.len().saturating_sub(3);
                wanted_by.truncate(3);
                let mut reason = describe_failure(route, other);
                if !wanted_by.is_empty() {
                    reason = format!("{reason} (wanted by {}", wanted_by.join(", "));
                    if more > 0 {
                        reason.push_str(&format!(" and {more} more"));
                    }
                    reason.push(')');
                }
                self.failed(reason);
                None
            }
        }
    }

    /// Fetches (or finds stored) one object through the mirror and counts it: fetched when
    /// the store did not hold these bytes before.
    async fn object(&self, route: &Route) -> Option<Bytes> {
        self.object_for(route, &Wanted::default()).await
    }

    fn decode(&self, name: &str, body: &[u8]) -> Option<Package> {
        let config = self.mirror.config();
        match registry::decode_package(
            body,
            &config.upstream_key,
            &config.upstream_repository,
            name,
        ) {
            Ok(record) => Some(record),
            Err(e) => {
                self.fail(e.to_string());
                None
            }
        }
    }

    fn done(&self, fetched: bool, bytes: u64) {
        let mut report = self.report.lock().expect("report lock");
        if fetched {
            report.fetched += 1;
            report.bytes += bytes;
        } else {
            report.stored += 1;
        }
        self.bar.inc(1);
        self.bar.set_message(progress(&report));
    }

    /// A failure that is not about an object counted in the progress bar's length.
    fn fail(&self, failure: String) {
        let mut report = self.report.lock().expect("report lock");
        report.failures.push(failure);
        self.bar.set_message(progress(&report));
    }

    /// A scheduled object that failed.
    fn failed(&self, failure: String) {
        self.fail(failure);
        self.bar.inc(1);
    }
}

fn progress(report: &Report) -> String {
    let failed = match report.failures.len() {
        0 => String::new(),
        n => format!(", {n} failed"),
    };
    format!("({} fetched{failed})", DecimalBytes(report.bytes))
}

/// Why the mirror had no object for `route`, naming the route once.
fn describe_failure(route: &Route, outcome: Outcome) -> String {
    let reason = match outcome {
        Outcome::Found { .. } => return format!("{route}: found"),
        Outcome::NotFound => "not found upstream".to_string(),
        Outcome::BadGateway(reason) => reason,
        Outcome::Internal(reason) => format!("the mirror's store failed: {reason}"),
    };
    let prefix = route.to_string();
    if reason.starts_with(&prefix) {
        reason
    } else {
        format!("{prefix}: {reason}")
    }
}

/// The releases a named package syncs: all, or the `latest` highest by SemVer (stable ones
/// unless there are none).
fn select(record: &Package, latest: Option<usize>) -> BTreeSet<String> {
    let Some(n) = latest else {
        return record.releases.iter().map(|r| r.version.clone()).collect();
    };
    let mut parsed: Vec<semver::Version> = record
        .releases
        .iter()
        .filter_map(|r| semver::Version::parse(&r.version).ok())
        .collect();
    if parsed.iter().any(|v| v.pre.is_empty()) {
        parsed.retain(|v| v.pre.is_empty());
    }
    parsed.sort_unstable_by(|a, b| b.cmp(a));
    parsed.into_iter().take(n).map(|v| v.to_string()).collect()
}

/// The lock's checksums against the verified registry record's.
fn check(name: &str, release: &Release, locked: &Locked) -> Result<(), String> {
    let pairs = [
        ("outer", &locked.outer, release.outer_checksum.as_deref()),
        (
            "inner",
            &locked.inner,
            Some(release.inner_checksum.as_slice()),
        ),
    ];
    for (which, lock, registry) in pairs {
        let Some(lock) = lock else { continue };
        let registry = registry.map(hex::encode);
        if registry.as_deref() != Some(lock.as_str()) {
            return Err(format!(
                "{}: {name} {}: {which} checksum check failed: the lock says {lock}, the registry says {}",
                locked.origin,
                locked.version,
                registry.as_deref().unwrap_or("nothing (no outer checksum)")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(versions: &[&str]) -> Package {
        Package {
            releases: versions
                .iter()
                .map(|v| Release {
                    version: v.to_string(),
                    inner_checksum: vec![0; 32],
                    dependencies: vec![],
                    retired: None,
                    outer_checksum: Some(vec![1; 32]),
                    advisory_indexes: vec![],
                    published_at: None,
                })
                .collect(),
            name: "p".into(),
            repository: "hexpm".into(),
            advisories: vec![],
        }
    }

    fn set(versions: &[&str]) -> BTreeSet<String> {
        versions.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn latest_is_by_semver_and_stable_first() {
        let r = record(&["1.10.0", "1.9.0", "2.0.0-rc.1", "1.2.3", "0.1.0"]);
        assert_eq!(select(&r, Some(1)), set(&["1.10.0"]));
        assert_eq!(select(&r, Some(2)), set(&["1.10.0", "1.9.0"]));
        assert_eq!(select(&r, Some(9)).len(), 4);
        assert_eq!(select(&r, None).len(), 5);
        let pre = record(&["1.0.0-rc.1", "1.0.0-rc.2", "1.0.0-beta"]);
        assert_eq!(select(&pre, Some(1)), set(&["1.0.0-rc.2"]));
    }

    #[test]
    fn lock_checksums_are_compared_with_the_registry() {
        let r = record(&["1.0.0"]);
        let release = &r.releases[0];
        let locked = |inner: &str, outer: Option<&str>| Locked {
            origin: "mix.lock: p".into(),
            version: "1.0.0".into(),
            inner: Some(inner.into()),
            outer: outer.map(str::to_string),
        };
        let zeros = "00".repeat(32);
        let ones = "01".repeat(32);
        assert_eq!(check("p", release, &locked(&zeros, Some(&ones))), Ok(()));
        assert_eq!(check("p", release, &locked(&zeros, None)), Ok(()));
        let e = check("p", release, &locked(&zeros, Some(&zeros))).unwrap_err();
        assert_eq!(
            e,
            format!(
                "mix.lock: p: p 1.0.0: outer checksum check failed: the lock says {zeros}, the registry says {ones}"
            )
        );
        let e = check("p", release, &locked(&ones, Some(&ones))).unwrap_err();
        assert!(e.contains("inner checksum check failed"), "{e}");
    }

    #[test]
    fn names_are_checked_like_the_routes() {
        assert!(is_package_name("a_b2"));
        assert!(!is_package_name("Ab"));
        assert!(!is_package_name("a/b"));
        assert!(!is_package_name("a%2Fb"));
        assert!(!is_package_name(""));
    }
}
