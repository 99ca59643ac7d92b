//! Which build tool ("manager") Mix compiles each dependency of a consumer's project with:
//! `mix`, `rebar3` or `make`.
//!
//! It is not a property of the package alone. Mix decides it while it converges the
//! consumer's dependency graph, so the same lock entry can be built with different managers
//! in different projects — e.g. ranch 1.8.0, whose lock entry says `[:make]`, is built with
//! rebar3 when Mix reaches it as a child of cowboy (a rebar3 dependency), and with make when
//! the consumer's `mix.exs` declares it itself. A build key must say which.
//!
//! [`mix_managers`] replays Mix's rule on the lock graph. The rule, from elixir-lang/elixir
//! at tags v1.14.0 and v1.18.3 (the same in both unless noted):
//!
//! 1. **Loading a dependency** (`Mix.Dep.Loader.load/2,3`, `lib/mix/lib/mix/dep/loader.ex`):
//!    `manager = opts[:manager] || scm_manager(scm, opts) || manager || infer_manager(dest)` —
//!    the `manager:` option of the declaration; else the first of `[:mix, :rebar3]` among the
//!    SCM's managers (for Hex, `Hex.SCM.managers/1` returns the lock entry's build tools,
//!    hexpm/hex `lib/hex/scm.ex`; `:make` is never taken from there); else the manager the
//!    *parent* handed down; else the files in `deps/<app>`: `mix.exs` → mix, `rebar`,
//!    `rebar.config`, `rebar.config.script`, `rebar.lock` → rebar3, `Makefile`,
//!    `Makefile.win` → make.
//! 2. **What a parent hands down** (`to_dep/3` from `mix_dep/2` and `rebar_dep/3`): a
//!    rebar3-managed parent gives its children `manager: :rebar3` ("deps of a Rebar project
//!    need to default to Rebar if we cannot chose a manager from files"); a mix parent and
//!    the project itself give nothing. A make-managed parent has no children at all. For Hex
//!    deps the children are the lock entry's deps (`Hex.RemoteConverger.deps/2`).
//! 3. **Converging** (`Mix.Dep.Converger`, `lib/mix/lib/mix/dep/converger.ex`): the graph is
//!    walked level by level (`all/9`, `all/8` on v1.14.0); a dependency is loaded where it is
//!    first met, and each later occurrence is matched against it (`match_deps/4`). If the
//!    app is in the *upper breadths* (declared by the project or by an ancestor of the
//!    occurrence's parent) the first one wins outright when it has `override: true`, and
//!    otherwise keeps its manager (`sort_manager(other, manager, true)` is `other ||
//!    manager`). Elsewhere the two merge by priority: `@managers [:mix, :rebar3, :make]`, the
//!    first present wins (`sort_manager(_, _, false)`). Occurrences whose `manager:` options
//!    differ do not converge (`opts_equal?/2`): Mix reports them as diverged and nothing is
//!    merged.
//! 4. **Optional children** are followed only when their app was already loaded. Since
//!    Elixir 1.15 (commit ceec568cae, "Make sure diverging optional dependencies is not order
//!    dependent") one set aside comes back as soon as its app is loaded; v1.14 drops it.
//!
//! So a make-only package (`[:make]`, no rebar files) is built with rebar3 when some rebar3
//! dependency reaches it from outside the upper breadths, and with make when the project
//! declares it (or an ancestor of each rebar3 parent does). A package whose lock entry lists
//! `mix` or `rebar3` gets that manager wherever it is reached, unless `manager:` says otherwise.
//!
//! The replay is the algorithm, not an approximation: `precomp/tests/manager.rs` compares it
//! with Mix's own converger (Elixir 1.14 and 1.18) on generated graphs.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use crate::lock::{LockEntry, MixLock};
use crate::term::Syntax;

/// The build tool Mix compiles a dependency with (`Mix.Dep`'s `manager`). It decides how the
/// package is compiled (mix compiles Elixir with the project's config loaded, rebar3 and make
/// compile Erlang their own way), so it is part of the build key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Manager {
    Mix,
    Rebar3,
    Make,
}

impl Manager {
    /// Mix's priority order when two occurrences merge (`@managers` in `Mix.Dep.Converger`).
    pub const PRIORITY: [Manager; 3] = [Manager::Mix, Manager::Rebar3, Manager::Make];

    /// The syntax the package's people write config and values in: Elixir for Mix packages,
    /// Erlang for rebar3 and make ones.
    pub fn syntax(self) -> Syntax {
        match self {
            Manager::Mix => Syntax::Elixir,
            Manager::Rebar3 | Manager::Make => Syntax::Erlang,
        }
    }

    /// The atom's name: `mix`, `rebar3`, `make`.
    pub fn as_str(self) -> &'static str {
        match self {
            Manager::Mix => "mix",
            Manager::Rebar3 => "rebar3",
            Manager::Make => "make",
        }
    }

    /// `mix`, `rebar3` or `make`; anything else (Hex's `rebar` for rebar 2 included) is none.
    pub fn parse(name: &str) -> Option<Manager> {
        match name {
            "mix" => Some(Manager::Mix),
            "rebar3" => Some(Manager::Rebar3),
            "make" => Some(Manager::Make),
            _ => None,
        }
    }

    /// `scm_manager/2`: the manager a lock entry's build tools decide — the first of `mix`,
    /// `rebar3` they contain. `make` alone decides nothing (Mix then looks further).
    pub fn from_build_tools<S: AsRef<str>>(tools: &[S]) -> Option<Manager> {
        [Manager::Mix, Manager::Rebar3]
            .into_iter()
            .find(|m| tools.iter().any(|t| t.as_ref() == m.as_str()))
    }

    /// `infer_manager/1`: what Mix infers from a dependency's files when nothing else decides
    /// — `mix.exs`, then a rebar file, then a Makefile. `has_file` says whether the package
    /// has a regular file of that name at its top level (`deps/<app>`).
    pub fn infer(has_file: impl Fn(&str) -> bool) -> Option<Manager> {
        if has_file("mix.exs") {
            Some(Manager::Mix)
        } else if ["rebar", "rebar.config", "rebar.config.script", "rebar.lock"]
            .into_iter()
            .any(&has_file)
        {
            Some(Manager::Rebar3)
        } else if ["Makefile", "Makefile.win"].into_iter().any(&has_file) {
            Some(Manager::Make)
        } else {
            None
        }
    }

    /// [`Manager::infer`] given the names of the regular files at the package's root.
    pub fn infer_from_files<I, S>(root_files: I) -> Option<Manager>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names: Vec<S> = root_files.into_iter().collect();
        Manager::infer(|file| names.iter().any(|n| n.as_ref() == file))
    }
}

impl fmt::Display for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Manager {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Manager::parse(s).ok_or_else(|| format!("{s:?} is not a manager (mix, rebar3 or make)"))
    }
}

/// A dependency the consumer's `mix.exs` declares, with the options that decide its manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopLevelDep {
    pub app: String,
    /// Its `manager:` option.
    pub manager: Option<Manager>,
    /// Its `override: true`.
    pub override_: bool,
}

impl TopLevelDep {
    /// A plain declaration: `{:app, requirement}`.
    pub fn new(app: impl Into<String>) -> TopLevelDep {
        TopLevelDep {
            app: app.into(),
            manager: None,
            override_: false,
        }
    }
}

/// The lock's roots: entries no Hex entry of the lock requires (an optional dependency does
/// not count: only a declaration or a required dependency puts an entry in a lock). What a
/// builder that is given only a lock takes for the consumer's declared deps — the roots must
/// be declared; other entries may be too, which a lock does not record.
pub fn lock_roots(lock: &MixLock) -> Vec<TopLevelDep> {
    let depended: std::collections::BTreeSet<&str> = lock
        .hex()
        .flat_map(|(_, entry)| entry.deps.iter().filter(|d| !d.optional))
        .map(|d| d.app.as_str())
        .collect();
    lock.entries
        .keys()
        .filter(|app| !depended.contains(app.as_str()))
        .map(TopLevelDep::new)
        .collect()
}

/// Which version of Mix's converger to replay: optional children are handled differently
/// before and since Elixir 1.15 (see the module documentation, point 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Converger {
    /// Elixir up to 1.14: an optional child whose app is not loaded yet is dropped.
    Elixir1_14,
    /// Elixir 1.15 and later: it comes back once its app is loaded.
    Elixir1_15,
}

impl Converger {
    /// The converger of an Elixir version such as `1.14.0` or `1.18.3` (the newer one for
    /// anything that is not `1.0`–`1.14`).
    pub fn for_elixir(version: &str) -> Converger {
        let mut parts = version.split(['.', '-']);
        let major = parts.next().and_then(|p| p.parse::<u32>().ok());
        let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
        match (major, minor) {
            (Some(1), Some(minor)) if minor < 15 => Converger::Elixir1_14,
            _ => Converger::Elixir1_15,
        }
    }
}

/// The manager Mix compiles each Hex entry of `lock` with in a project that declares
/// `top_level`, replaying Mix's converger (module documentation). `None` where Mix finds no
/// manager (it cannot compile the package). Entries Mix does not reach from `top_level` (only
/// through a git or path dependency, whose children the lock does not list, or not at all)
/// get the manager they would have declared at the top level.
///
/// `infer(app)` is `infer_manager/1` on `deps/<app>` (see [`Manager::infer_from_files`]): it
/// is called only for entries whose manager neither a declaration, the lock's build tools
/// nor a rebar3 parent decides, at most once per app.
pub fn mix_managers<E>(
    lock: &MixLock,
    top_level: &[TopLevelDep],
    converger: Converger,
    infer: impl FnMut(&str) -> Result<Option<Manager>, E>,
) -> Result<BTreeMap<String, Option<Manager>>, E> {
    let mut walk = Walk {
        lock,
        infer,
        converger,
        loaded: BTreeMap::new(),
        set_aside: Vec::new(),
    };
    let main: Vec<Occurrence> = top_level
        .iter()
        .map(|dep| Occurrence {
            app: dep.app.clone(),
            handed_down: None,
            explicit: dep.manager,
            override_: dep.override_,
            optional: false,
        })
        .collect();
    let breadths: Vec<String> = main.iter().map(|o| o.app.clone()).collect();
    walk.level(main, &[], &breadths)?;
    let mut managers = BTreeMap::new();
    for (app, entry) in lock.hex() {
        let manager = match walk.loaded.get(app) {
            Some(loaded) => loaded.manager,
            None => match Manager::from_build_tools(&entry.managers) {
                Some(manager) => Some(manager),
                None => (walk.infer)(app)?,
            },
        };
        managers.insert(app.to_string(), manager);
    }
    Ok(managers)
}

/// One occurrence of a dependency in the graph: a declaration in mix.exs or a parent's child.
#[derive(Clone, Debug)]
struct Occurrence {
    app: String,
    /// `Mix.Dep.manager` as `to_dep/3` sets it: `rebar3` for a child of a rebar3 dependency.
    handed_down: Option<Manager>,
    /// `opts[:manager]`.
    explicit: Option<Manager>,
    override_: bool,
    optional: bool,
}

/// A dependency Mix has loaded (the first occurrence met), as later ones leave it.
struct Loaded {
    manager: Option<Manager>,
    explicit: Option<Manager>,
    override_: bool,
}

struct Walk<'l, F> {
    lock: &'l MixLock,
    infer: F,
    converger: Converger,
    loaded: BTreeMap<String, Loaded>,
    /// Elixir 1.15+: optional children not followed yet (`optional` in `all/9`).
    set_aside: Vec<Occurrence>,
}

impl<F, E> Walk<'_, F>
where
    F: FnMut(&str) -> Result<Option<Manager>, E>,
{
    /// `all/9`: the siblings in order (each loaded, or matched against the one loaded
    /// before), then the children of those loaded here, the last loaded first — Mix recurses
    /// into the rest of the list before it descends into a dependency's children.
    fn level(
        &mut self,
        siblings: Vec<Occurrence>,
        upper: &[String],
        breadths: &[String],
    ) -> Result<(), E> {
        let mut queue: VecDeque<Occurrence> = siblings.into();
        let mut loaded_here: Vec<Vec<Occurrence>> = Vec::new();
        while let Some(occurrence) = queue.pop_front() {
            if let Some(other) = self.loaded.get_mut(&occurrence.app) {
                let in_upper = upper.contains(&occurrence.app);
                merge(other, &occurrence, in_upper);
                continue;
            }
            let children = self.load(&occurrence)?;
            if self.converger == Converger::Elixir1_15 {
                // `no_longer_optional ++ t`: set-aside occurrences of this app come next.
                let (back, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.set_aside)
                    .into_iter()
                    .partition(|o| o.app == occurrence.app);
                self.set_aside = rest;
                for o in back.into_iter().rev() {
                    queue.push_front(o);
                }
            }
            loaded_here.push(children);
        }
        for children in loaded_here.into_iter().rev() {
            let (discarded, followed): (Vec<_>, Vec<_>) = children
                .into_iter()
                .partition(|c| c.optional && !self.loaded.contains_key(&c.app));
            if self.converger == Converger::Elixir1_15 {
                let mut set_aside = discarded;
                set_aside.append(&mut self.set_aside);
                self.set_aside = set_aside;
            }
            let mut next_breadths: Vec<String> = followed.iter().map(|c| c.app.clone()).collect();
            next_breadths.extend(breadths.iter().cloned());
            self.level(followed, breadths, &next_breadths)?;
        }
        Ok(())
    }

    /// `Mix.Dep.Loader.load`: the manager, and the children it hands down.
    fn load(&mut self, occurrence: &Occurrence) -> Result<Vec<Occurrence>, E> {
        let entry = match self.lock.entries.get(&occurrence.app) {
            Some(LockEntry::Hex(entry)) => Some(entry),
            _ => None,
        };
        let mut manager = occurrence
            .explicit
            .or_else(|| entry.and_then(|e| Manager::from_build_tools(&e.managers)))
            .or(occurrence.handed_down);
        if manager.is_none() {
            manager = (self.infer)(&occurrence.app)?;
        }
        self.loaded.insert(
            occurrence.app.clone(),
            Loaded {
                manager,
                explicit: occurrence.explicit,
                override_: occurrence.override_,
            },
        );
        // Children of git and path deps come from their own mix.exs or rebar.config, which the
        // lock does not have: they are left out.
        let handed_down = match manager {
            Some(Manager::Mix) => None,
            Some(Manager::Rebar3) => Some(Manager::Rebar3),
            Some(Manager::Make) | None => return Ok(Vec::new()),
        };
        Ok(entry
            .map(|entry| {
                entry
                    .deps
                    .iter()
                    .map(|dep| Occurrence {
                        app: dep.app.clone(),
                        handed_down,
                        explicit: None,
                        override_: false,
                        optional: dep.optional,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// `match_deps/4` once the app is loaded, for what decides the manager.
fn merge(other: &mut Loaded, occurrence: &Occurrence, in_upper: bool) {
    if in_upper && other.override_ {
        return;
    }
    if other.explicit != occurrence.explicit {
        // Diverged (`converge?/2` compares the `manager:` options): Mix reports it and merges
        // nothing.
        return;
    }
    other.manager = if in_upper {
        other.manager.or(occurrence.handed_down)
    } else {
        Manager::PRIORITY
            .into_iter()
            .find(|m| other.manager == Some(*m) || occurrence.handed_down == Some(*m))
            .or(other.manager)
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{HexLockEntry, LockDep};
    use std::convert::Infallible;

    /// `(app, build tools, [(dep, optional)])`.
    type Entry<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, bool)]);

    fn lock(entries: &[Entry<'_>]) -> MixLock {
        let mut lock = MixLock::default();
        for (app, tools, deps) in entries {
            lock.entries.insert(
                app.to_string(),
                LockEntry::Hex(HexLockEntry {
                    package: app.to_string(),
                    version: "1.0.0".into(),
                    inner_checksum: "0".repeat(64),
                    managers: tools.iter().map(|t| t.to_string()).collect(),
                    deps: deps
                        .iter()
                        .map(|(dep, optional)| LockDep {
                            app: dep.to_string(),
                            requirement: Some("~> 1.0".into()),
                            package: dep.to_string(),
                            repo: "hexpm".into(),
                            optional: *optional,
                        })
                        .collect(),
                    repo: "hexpm".into(),
                    outer_checksum: Some("1".repeat(64)),
                    extra: vec![],
                }),
            );
        }
        lock
    }

    /// Managers with `make` inferred for make-only entries (an erlang.mk package: Makefile,
    /// no rebar files), on both convergers (which must agree when no optional dep is in play).
    fn managers(lock: &MixLock, top: &[TopLevelDep]) -> BTreeMap<String, Option<Manager>> {
        let infer = |_: &str| Ok::<_, Infallible>(Some(Manager::Make));
        let old = mix_managers(lock, top, Converger::Elixir1_14, infer).unwrap();
        let new = mix_managers(lock, top, Converger::Elixir1_15, infer).unwrap();
        assert_eq!(old, new);
        new
    }

    fn top(apps: &[&str]) -> Vec<TopLevelDep> {
        apps.iter().map(|a| TopLevelDep::new(*a)).collect()
    }

    /// The Phoenix stack of the issue: ranch's entry says `[:make]`, cowboy's `[:make, :rebar3]`.
    fn phoenix_like() -> MixLock {
        lock(&[
            (
                "phoenix",
                &["mix"],
                &[("plug", false), ("plug_cowboy", true)],
            ),
            ("plug", &["mix"], &[]),
            (
                "plug_cowboy",
                &["mix"],
                &[("cowboy", false), ("plug", false)],
            ),
            (
                "cowboy",
                &["make", "rebar3"],
                &[("cowlib", false), ("ranch", false)],
            ),
            ("cowlib", &["make", "rebar3"], &[]),
            ("ranch", &["make"], &[]),
        ])
    }

    #[test]
    fn a_make_only_child_of_a_rebar3_dependency_is_built_with_rebar3() {
        let got = managers(&phoenix_like(), &top(&["phoenix", "plug_cowboy"]));
        assert_eq!(got["ranch"], Some(Manager::Rebar3));
        assert_eq!(got["cowboy"], Some(Manager::Rebar3));
        assert_eq!(got["cowlib"], Some(Manager::Rebar3));
        assert_eq!(got["plug_cowboy"], Some(Manager::Mix));
        assert_eq!(got.len(), 6);
    }

    #[test]
    fn declared_at_the_top_level_it_is_built_with_make() {
        // The project's own declaration is in every occurrence's upper breadths: it keeps
        // the manager its files give, with or without override.
        let got = managers(&phoenix_like(), &top(&["phoenix", "plug_cowboy", "ranch"]));
        assert_eq!(got["ranch"], Some(Manager::Make));
        let mut overriding = top(&["plug_cowboy", "ranch"]);
        overriding[1].override_ = true;
        assert_eq!(
            managers(&phoenix_like(), &overriding)["ranch"],
            Some(Manager::Make)
        );
        // Build tools naming rebar3 decide wherever the package is declared.
        let got = managers(&phoenix_like(), &top(&["plug_cowboy", "cowlib"]));
        assert_eq!(got["cowlib"], Some(Manager::Rebar3));
    }

    #[test]
    fn an_explicit_manager_wins() {
        let mut declared = top(&["plug_cowboy", "ranch", "cowlib"]);
        declared[1].manager = Some(Manager::Rebar3);
        declared[1].override_ = true;
        declared[2].manager = Some(Manager::Make);
        declared[2].override_ = true;
        let got = managers(&phoenix_like(), &declared);
        assert_eq!(got["ranch"], Some(Manager::Rebar3));
        assert_eq!(got["cowlib"], Some(Manager::Make));
    }

    #[test]
    fn reached_from_a_mix_parent_and_a_rebar3_parent_it_merges_to_rebar3() {
        // web (mix) -> ranch, and db (mix) -> pool (rebar3) -> ranch: the two occurrences
        // are in different branches (not upper breadths), so they merge by priority.
        let lock = lock(&[
            ("web", &["mix"], &[("ranch", false)]),
            ("db", &["mix"], &[("pool", false)]),
            ("pool", &["rebar3"], &[("ranch", false)]),
            ("ranch", &["make"], &[]),
        ]);
        assert_eq!(
            managers(&lock, &top(&["web", "db"]))["ranch"],
            Some(Manager::Rebar3)
        );
        assert_eq!(
            managers(&lock, &top(&["db", "web"]))["ranch"],
            Some(Manager::Rebar3)
        );
    }

    #[test]
    fn an_ancestor_declaring_it_keeps_its_manager() {
        // web (mix) declares both ranch and pool; pool (rebar3) declares ranch too. pool's
        // child is in the upper breadths (its parent's sibling): the first one, loaded from
        // web with make, keeps make — as in Mix.
        let lock = lock(&[
            ("web", &["mix"], &[("pool", false), ("ranch", false)]),
            ("pool", &["rebar3"], &[("ranch", false)]),
            ("ranch", &["make"], &[]),
        ]);
        assert_eq!(
            managers(&lock, &top(&["web"]))["ranch"],
            Some(Manager::Make)
        );
    }

    #[test]
    fn files_decide_for_make_only_entries_and_mix_beats_rebar3() {
        let lock = lock(&[
            ("pool", &["rebar3"], &[("legacy", false), ("plain", false)]),
            ("legacy", &["make"], &[]),
            ("plain", &[], &[]),
        ]);
        // `legacy` ships a mix.exs (an erlang.mk package with one): mix, whatever the parent.
        let infer = |app: &str| {
            Ok::<_, Infallible>(match app {
                "legacy" => Some(Manager::Mix),
                _ => None,
            })
        };
        let got = mix_managers(&lock, &top(&["pool"]), Converger::Elixir1_15, infer).unwrap();
        // Loaded from a rebar3 parent: the parent's manager comes before the files.
        assert_eq!(got["legacy"], Some(Manager::Rebar3));
        assert_eq!(got["plain"], Some(Manager::Rebar3));
        let got = mix_managers(
            &lock,
            &top(&["legacy", "plain"]),
            Converger::Elixir1_15,
            infer,
        )
        .unwrap();
        assert_eq!(got["legacy"], Some(Manager::Mix));
        assert_eq!(got["plain"], None, "no files, no build tools: Mix has none");
        assert_eq!(
            got["pool"],
            Some(Manager::Rebar3),
            "not reached: as if declared"
        );
    }

    #[test]
    fn make_dependencies_have_no_children_and_unreached_entries_stand_alone() {
        let lock = lock(&[
            ("mk", &["make"], &[("pool", false)]),
            ("pool", &["rebar3"], &[("ranch", false)]),
            ("ranch", &["make"], &[]),
        ]);
        // mk (make) hands nothing down: pool and ranch are not reached, and get what they
        // would have declared at the top level — ranch make, not its rebar3 parent's.
        let got = managers(&lock, &top(&["mk"]));
        assert_eq!(got["mk"], Some(Manager::Make));
        assert_eq!(got["pool"], Some(Manager::Rebar3));
        assert_eq!(got["ranch"], Some(Manager::Make));
        // Reached through pool, ranch is built with rebar3.
        assert_eq!(
            managers(&lock, &top(&["pool"]))["ranch"],
            Some(Manager::Rebar3)
        );
    }

    #[test]
    fn infer_is_called_once_per_app_and_only_when_needed() {
        let mut asked = Vec::new();
        let got = mix_managers(
            &phoenix_like(),
            &top(&["phoenix", "plug_cowboy", "ranch"]),
            Converger::Elixir1_15,
            |app: &str| {
                asked.push(app.to_string());
                Ok::<_, Infallible>(Some(Manager::Make))
            },
        )
        .unwrap();
        assert_eq!(asked, ["ranch"]);
        assert_eq!(got["ranch"], Some(Manager::Make));
        let failed = mix_managers(
            &phoenix_like(),
            &top(&["ranch"]),
            Converger::Elixir1_15,
            |_: &str| Err("no tarball"),
        );
        assert_eq!(failed, Err("no tarball"));
    }

    #[test]
    fn optional_children_differ_between_1_14_and_1_15() {
        // opt_parent (rebar3) has ranch as an optional child; early (mix) -> late (mix) ->
        // ranch. Mix descends into the last loaded sibling first, so opt_parent's children
        // come before ranch is loaded: v1.14 drops the optional occurrence, v1.15+ sets it
        // aside and matches it once late loads ranch — a rebar3 parent's, so rebar3 wins.
        let lock = lock(&[
            ("early", &["mix"], &[("late", false)]),
            ("opt_parent", &["rebar3"], &[("ranch", true)]),
            ("late", &["mix"], &[("ranch", false)]),
            ("ranch", &["make"], &[]),
        ]);
        let top = top(&["early", "opt_parent"]);
        let infer = |_: &str| Ok::<_, Infallible>(Some(Manager::Make));
        let old = mix_managers(&lock, &top, Converger::Elixir1_14, infer).unwrap();
        let new = mix_managers(&lock, &top, Converger::Elixir1_15, infer).unwrap();
        assert_eq!(old["ranch"], Some(Manager::Make));
        assert_eq!(new["ranch"], Some(Manager::Rebar3));
    }

    #[test]
    fn roots_build_tools_files_and_versions() {
        let roots: Vec<String> = lock_roots(&phoenix_like())
            .into_iter()
            .map(|d| d.app)
            .collect();
        assert_eq!(
            roots,
            ["phoenix", "plug_cowboy"],
            "plug_cowboy is optional for phoenix"
        );
        assert_eq!(
            Manager::from_build_tools(&["make", "rebar3"]),
            Some(Manager::Rebar3)
        );
        assert_eq!(
            Manager::from_build_tools(&["rebar3", "mix"]),
            Some(Manager::Mix)
        );
        assert_eq!(Manager::from_build_tools(&["make", "rebar"]), None);
        assert_eq!(
            Manager::infer_from_files(["Makefile", "rebar.config"]),
            Some(Manager::Rebar3)
        );
        assert_eq!(
            Manager::infer_from_files(["erlang.mk", "Makefile"]),
            Some(Manager::Make)
        );
        assert_eq!(Manager::infer_from_files(["README.md"]), None);
        assert_eq!(Converger::for_elixir("1.14.0"), Converger::Elixir1_14);
        assert_eq!(Converger::for_elixir("1.15.0-rc.1"), Converger::Elixir1_15);
        assert_eq!(Converger::for_elixir("1.18.3"), Converger::Elixir1_15);
        assert_eq!("rebar3".parse::<Manager>(), Ok(Manager::Rebar3));
        assert!("rebar".parse::<Manager>().is_err());
    }
}
