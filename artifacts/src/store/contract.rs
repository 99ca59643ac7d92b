//! The contract of [`MetadataStore`], as checks any implementation can run: one function per
//! behaviour, each given a fresh, empty store (`&dyn MetadataStore`), each panicking (an
//! assertion) when the store does not behave. The SQLite store runs them all (the tests at
//! the end); a PostgreSQL implementation runs the same functions on its own store.
//!
//! They use nothing but the trait (no SQL, no tables), and only times the trait takes (lease
//! clocks) or that do not depend on the clock.

use precomp_proto::buildkey::{BuildInputs, Manager, PackageRef, Target};
use precomp_proto::manifest::{ArtifactSigningKey, FileRecord, Manifest, Output, SignedManifest};
use precomp_proto::verdict::{manifest_digest, Verdict, MATCH, MISMATCH};
use prost::Message as _;

use super::jobs::{Job, JobError, LeaseEnd, LeaseEnded, LeaseQuery};
use super::maintenance::GcDrop;
use super::verdicts::VerdictPut;
use super::{
    ArtifactStoreError, ManifestPut, ManifestRecord, MetadataStore, MissOutcome, MissPolicy,
    MissRecord, TokenLookup,
};
use crate::api::{FailureReport, JobKind, LeaseRequest, MissReport, ReleaseOutcome};
use crate::token::Scope;

/// One behaviour: a check run on a fresh, empty store.
pub type Behaviour = fn(&dyn MetadataStore);

/// Every behaviour, by name, for an implementation's test to run each on a fresh store.
pub const ALL: &[(&str, Behaviour)] = &[
    ("tokens_and_scopes", tokens_and_scopes),
    (
        "publishing_and_manifest_history",
        publishing_and_manifest_history,
    ),
    (
        "misses_are_deduplicated_bounded_and_expire",
        misses_are_deduplicated_bounded_and_expire,
    ),
    (
        "a_publish_or_a_failure_closes_misses",
        a_publish_or_a_failure_closes_misses,
    ),
    (
        "leases_are_leased_renewed_lost_and_released",
        leases_are_leased_renewed_lost_and_released,
    ),
    (
        "audit_leases_offer_builds_of_the_auditors_recipe",
        audit_leases_offer_builds_of_the_auditors_recipe,
    ),
    (
        "another_recipes_bytes_are_not_a_finding",
        another_recipes_bytes_are_not_a_finding,
    ),
    (
        "verdicts_are_kept_per_auditor",
        verdicts_are_kept_per_auditor,
    ),
    (
        "gc_reads_and_drops_in_one_step",
        gc_reads_and_drops_in_one_step,
    ),
];

const COUNTS_ALL: &dyn Fn(&str) -> bool = &|_| true;

/// Tokens: created once per live name, looked up by the token with their scopes, listed
/// without secrets, revoked (at once), a revoked name reusable; bad names refused.
pub fn tokens_and_scopes(store: &dyn MetadataStore) {
    let key = ArtifactSigningKey::generate().public_key();
    let builder = store
        .create_token("ci-builder", Some(&key), Some(&[Scope::Builder]))
        .unwrap();
    let reader = store.create_token("reader", None, None).unwrap();
    assert_ne!(builder, reader);
    match store.lookup_token(&builder).unwrap() {
        TokenLookup::Active(publisher) => {
            assert_eq!(publisher.name, "ci-builder");
            assert_eq!(publisher.key.map(|k| k.key_id()), Some(key.key_id()));
            assert_eq!(publisher.scopes, Some(vec![Scope::Builder]));
        }
        other => panic!("a new token is active, not {other:?}"),
    }
    match store.lookup_token(&reader).unwrap() {
        TokenLookup::Active(publisher) => assert_eq!(publisher.scopes, None),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.create_token("ci-builder", None, None),
        Err(ArtifactStoreError::TokenExists(name)) if name == "ci-builder"
    ));
    assert!(matches!(
        store.create_token(".hidden", None, None),
        Err(ArtifactStoreError::BadTokenName(_))
    ));
    let listed = store.list_tokens().unwrap();
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["ci-builder", "reader"]);
    assert_eq!(listed[0].key_id, Some(key.key_id()));
    assert!(listed.iter().all(|t| t.revoked_at.is_none()));

    store.revoke_token("ci-builder").unwrap();
    assert!(matches!(
        store.lookup_token(&builder).unwrap(),
        TokenLookup::Revoked { name, .. } if name == "ci-builder"
    ));
    assert!(matches!(
        store.revoke_token("ci-builder"),
        Err(ArtifactStoreError::AlreadyRevoked(_))
    ));
    assert!(matches!(
        store.revoke_token("nobody"),
        Err(ArtifactStoreError::NoSuchToken(_))
    ));
    // A revoked name can be reused; the old token stays refused.
    let again = store.create_token("ci-builder", None, None).unwrap();
    assert!(matches!(
        store.lookup_token(&again).unwrap(),
        TokenLookup::Active(_)
    ));
    assert!(!matches!(
        store.lookup_token(&builder).unwrap(),
        TokenLookup::Active(_)
    ));
    // A well-formed token never created.
    let unknown = format!("pct_{}", "A".repeat(43));
    assert!(matches!(
        store.lookup_token(&unknown).unwrap(),
        TokenLookup::Unknown
    ));
}

/// Publishing: a manifest is indexed and served; the same bytes change nothing; another
/// builder's identical build is kept as agreement; other bytes under the key are a finding
/// kept in its history, never published.
pub fn publishing_and_manifest_history(store: &dyn MetadataStore) {
    let (first, second) = (
        ArtifactSigningKey::generate(),
        ArtifactSigningKey::generate(),
    );
    let published = build("25", 1, 1, &first);
    assert_eq!(
        put(store, &published),
        ManifestPut::Created { closed_misses: 0 }
    );
    let key = &published.0.key;
    assert_eq!(
        store.manifest(key).unwrap(),
        Some(published.1.encode_to_vec())
    );
    assert!(matches!(
        put(store, &published),
        ManifestPut::Unchanged { .. }
    ));
    let index = store.index("plain_ex").unwrap();
    assert_eq!(index.len(), 1);
    assert_eq!(index[0].key, *key);
    assert_eq!(index[0].signers, vec![first.public_key().key_id()]);
    assert_eq!(store.packages().unwrap(), ["plain_ex"]);
    assert!(store.index("other").unwrap().is_empty());
    assert_eq!(store.manifest("0".repeat(64).as_str()).unwrap(), None);

    // Another builder, the same artifact (another provenance): agreement.
    assert!(matches!(
        put(store, &build("25", 1, 2, &second)),
        ManifestPut::Agreed { .. }
    ));
    // Other bytes: a recorded finding, the published manifest unchanged.
    match put(store, &build("25", 2, 3, &second)) {
        ManifestPut::Conflict {
            existing_artifact,
            recorded,
            ..
        } => {
            assert_eq!(existing_artifact, hex::encode([1; 32]));
            assert!(recorded);
        }
        other => panic!("other bytes under a published key are a conflict, not {other:?}"),
    }
    assert_eq!(
        store.manifest(key).unwrap(),
        Some(published.1.encode_to_vec())
    );
    let rows = store.key_manifests(key).unwrap();
    // The published one first; the others oldest first (within a second, in any order).
    let mut statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    statuses[1..].sort();
    assert_eq!(statuses, ["published", "agreeing", "conflicting"]);
    let conflicting = rows.iter().find(|r| r.status == "conflicting").unwrap();
    assert_eq!(conflicting.artifact_sha256, hex::encode([2; 32]));
    let history = store.package_history("plain_ex").unwrap();
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|row| row.key == *key));
}

/// Misses: reports of one miss are counted, not duplicated; open misses are bounded
/// (`max_open`) while reports of open ones still count; values expire after the retention,
/// closing the miss; the listing is bounded by count and bytes.
pub fn misses_are_deduplicated_bounded_and_expire(store: &dyn MetadataStore) {
    let policy = MissPolicy {
        max_open: 2,
        ..MissPolicy::default()
    };
    let a = miss_report("25");
    let b = miss_report("26");
    let c = miss_report("27");
    let first = record_miss(store, &miss(&a), &policy);
    assert_eq!((first.count, first.open), (1, true));
    let again = record_miss(store, &miss(&a), &policy);
    assert_eq!((again.count, again.open), (2, true));
    record_miss(store, &miss(&b), &policy);
    assert_eq!(
        store.record_miss(&miss(&c), &policy, COUNTS_ALL).unwrap(),
        MissOutcome::TooManyOpen { limit: 2 }
    );
    // An open one still counts at the bound.
    let third = record_miss(store, &miss(&b), &policy);
    assert_eq!(third.count, 2);

    let open = store.open_misses(10, usize::MAX).unwrap();
    assert_eq!(open.len(), 2);
    assert_eq!(store.open_misses(1, usize::MAX).unwrap().len(), 1);
    // The first is listed even past the byte bound; no more after it.
    assert_eq!(store.open_misses(10, 0).unwrap().len(), 1);

    // Nothing is erased before the retention, everything after.
    let now = crate::store::now();
    assert_eq!(store.expire_miss_values(now, 3600).unwrap(), 0);
    assert_eq!(store.open_misses(10, usize::MAX).unwrap().len(), 2);
    assert!(store.expire_miss_values(now + 3601, 3600).unwrap() >= 2);
    assert!(store.open_misses(10, usize::MAX).unwrap().is_empty());
    // A new report opens an expired miss again.
    let reopened = record_miss(store, &miss(&a), &policy);
    assert!(reopened.open);
    assert_eq!(store.open_misses(10, usize::MAX).unwrap().len(), 1);
}

/// A published build closes the misses it satisfies (in its own transaction); a recorded
/// failure closes the misses of its base key, and later reports of them stay closed.
pub fn a_publish_or_a_failure_closes_misses(store: &dyn MetadataStore) {
    let builder = ArtifactSigningKey::generate();
    let policy = MissPolicy::default();
    let built = build("25", 1, 1, &builder);
    let report = miss_report("25");
    assert!(record_miss(store, &miss(&report), &policy).open);
    assert_eq!(
        put(store, &built),
        ManifestPut::Created { closed_misses: 1 }
    );
    let after = record_miss(store, &miss(&report), &policy);
    assert!(!after.open);
    assert_eq!(after.closed_by, Some(format!("published {}", built.0.key)));

    let failing = miss_report("26");
    assert!(record_miss(store, &miss(&failing), &policy).open);
    let failure = FailureReport {
        package: "plain_ex".into(),
        version: "1.0.0".into(),
        base_key: failing.base_key.clone().unwrap(),
        toolchain_id: "otp-26".into(),
        log: "** (CompileError) boom".into(),
    };
    let first = store.record_failure(&failure, "builder").unwrap();
    assert_eq!((first.attempts, first.closed_misses), (1, 1));
    assert_eq!(
        store.record_failure(&failure, "builder").unwrap().attempts,
        2
    );
    let failures = store.failures("plain_ex").unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].log, failure.log);
    assert_eq!(failures[0].attempts, 2);
    assert!(!record_miss(store, &miss(&failing), &policy).open);
    assert!(store.open_misses(10, usize::MAX).unwrap().is_empty());
}

/// Leases: an open miss is leased to one worker at a time; a renewed lease lasts; an expired
/// one is leased again and the first worker's lease is then lost; only the leasing token
/// renews or ends it; a release puts the work back; a closed job cannot be renewed.
pub fn leases_are_leased_renewed_lost_and_released(store: &dyn MetadataStore) {
    let policy = MissPolicy::default();
    let report = miss_report("25");
    record_miss(store, &miss(&report), &policy);
    let request = lease_request("25", 60);
    let query = |token: &'static str| LeaseQuery {
        request: &request,
        token,
        auditor: None,
        auditor_ids: &[],
    };
    let t0: i64 = 1_000_000_000_000;
    let first = store
        .lease_job(&query("w1"), t0)
        .unwrap()
        .expect("an open miss");
    assert_eq!(first.expires_ms, t0 + 60_000);
    match &first.work {
        Job::Build(leased) => assert_eq!(leased.miss_key(), report.base_key.clone().unwrap()),
        other => panic!("a build lease is a miss, not {other:?}"),
    }
    // Live: nobody else gets it.
    assert!(store.lease_job(&query("w2"), t0 + 1).unwrap().is_none());
    let listing = store.job_listing(t0 + 1).unwrap();
    assert_eq!(listing.jobs.len(), 1);
    assert_eq!(listing.jobs[0].job, first.job);
    assert_eq!(listing.tuples[0].leased, 1);

    // Only its token renews it; renewed, it outlives its first expiry.
    assert_eq!(
        store
            .renew_lease(first.job, "w2", None, t0 + 2)
            .unwrap_err_job(),
        JobError::NotYours {
            job: first.job,
            leased_by: "w1".into(),
            token: "w2".into()
        }
    );
    let renewed = store
        .renew_lease(first.job, "w1", Some(120_000), t0 + 50_000)
        .unwrap();
    assert_eq!((renewed.kind, renewed.lease_ms), (JobKind::Build, 120_000));
    assert!(store
        .lease_job(&query("w2"), t0 + 100_000)
        .unwrap()
        .is_none());

    // Expired: leased again, and the first lease is lost.
    let expired = t0 + 50_000 + 120_001;
    let second = store
        .lease_job(&query("w2"), expired)
        .unwrap()
        .expect("expired");
    assert_ne!(second.job, first.job);
    assert_eq!(
        store
            .renew_lease(first.job, "w1", None, expired)
            .unwrap_err_job(),
        JobError::Ended {
            job: first.job,
            ended: LeaseEnded::Lost
        }
    );
    assert_eq!(
        store.job(first.job).unwrap().unwrap().ended,
        Some(LeaseEnded::Lost)
    );

    // Released: back in the queue at once; releasing again changes nothing.
    assert_eq!(
        store
            .end_lease(
                second.job,
                "w2",
                ReleaseOutcome::Released,
                Some("busy"),
                expired + 1
            )
            .unwrap(),
        LeaseEnd::Ended { closed: false }
    );
    assert_eq!(
        store
            .end_lease(
                second.job,
                "w2",
                ReleaseOutcome::Released,
                None,
                expired + 2
            )
            .unwrap(),
        LeaseEnd::AlreadyReleased
    );
    let third = store
        .lease_job(&query("w1"), expired + 3)
        .unwrap()
        .expect("released");

    // Closed by a failure: renewing is refused, ending says it was closed.
    store
        .record_failure(
            &FailureReport {
                package: "plain_ex".into(),
                version: "1.0.0".into(),
                base_key: report.base_key.clone().unwrap(),
                toolchain_id: "otp-25".into(),
                log: "failed".into(),
            },
            "w1",
        )
        .unwrap();
    assert!(matches!(
        store.renew_lease(third.job, "w1", None, expired + 4).unwrap_err_job(),
        JobError::Closed { job, .. } if job == third.job
    ));
    assert_eq!(
        store
            .end_lease(third.job, "w1", ReleaseOutcome::Released, None, expired + 5)
            .unwrap(),
        LeaseEnd::Ended { closed: true }
    );
    assert!(store
        .lease_job(&query("w1"), expired + 6)
        .unwrap()
        .is_none());

    // No such job.
    assert_eq!(store.job(9_999_999).unwrap(), None);
    assert_eq!(
        store
            .renew_lease(9_999_999, "w1", None, expired)
            .unwrap_err_job(),
        JobError::NotFound { job: 9_999_999 }
    );
    // The workers that asked are listed, by tuple.
    let listing = store.job_listing(expired + 7).unwrap();
    let tokens: Vec<&str> = listing.workers.iter().map(|w| w.token.as_str()).collect();
    assert_eq!(tokens, ["w1", "w2"]);
    assert!(listing.jobs.is_empty());
}

/// Audit leases compare like with like: an auditor gets only builds whose manifest records
/// its build recipe, and one that names no recipe (a worker from before recipes) only
/// builds that record none; the index shows each build's recipe.
pub fn audit_leases_offer_builds_of_the_auditors_recipe(store: &dyn MetadataStore) {
    const OURS: &str = "precomp-build-recipe-3";
    const OTHER: &str = "precomp-build-recipe-4";
    let builder = ArtifactSigningKey::generate();
    // One build per OTP major (so each has its own key): ours, another recipe's, none.
    let recipes = [("25", Some(OURS)), ("26", Some(OTHER)), ("27", None)];
    let mut keys = Vec::new();
    for (otp, recipe) in recipes {
        let built = build_of_recipe(otp, 1, recipe, &builder);
        keys.push(built.0.key.clone());
        assert!(matches!(put(store, &built), ManifestPut::Created { .. }));
    }
    let mut index = store.index("plain_ex").unwrap();
    index.sort_by(|a, b| a.otp_major.cmp(&b.otp_major));
    let indexed: Vec<Option<&str>> = index.iter().map(|b| b.recipe.as_deref()).collect();
    assert_eq!(indexed, [Some(OURS), Some(OTHER), None]);

    let t0: i64 = 1_000_000_000_000;
    let lease = |auditor: &str, recipe: Option<&str>, now: i64| {
        let mut request = lease_request("25", 60);
        request.kind = JobKind::Audit;
        request.tuples = recipes
            .iter()
            .map(|(otp, _)| crate::api::LeaseTuple {
                otp_major: otp.to_string(),
                elixir: "1.18.3".into(),
                mix_env: "prod".into(),
                targets: vec!["any".into()],
            })
            .collect();
        request.recipe = recipe.map(str::to_string);
        let leased = store
            .lease_job(
                &LeaseQuery {
                    request: &request,
                    token: "auditor",
                    auditor: Some(auditor),
                    auditor_ids: &[],
                },
                now,
            )
            .unwrap();
        leased.map(|leased| match leased.work {
            Job::Audit(audit) => {
                assert_eq!(audit.build.recipe.as_deref(), recipe);
                audit.build.key
            }
            other => panic!("an audit lease is a build, not {other:?}"),
        })
    };
    // Our recipe: our build, and once it is leased, nothing else (not the other recipe's,
    // not the unknown one, though both are unaudited and of a tuple asked for).
    assert_eq!(lease("ed25519:a", Some(OURS), t0), Some(keys[0].clone()));
    assert_eq!(lease("ed25519:b", Some(OURS), t0 + 1), None);
    // The other recipe's auditor gets the other build; one that names none, the unknown one.
    assert_eq!(
        lease("ed25519:c", Some(OTHER), t0 + 2),
        Some(keys[1].clone())
    );
    assert_eq!(lease("ed25519:d", None, t0 + 3), Some(keys[2].clone()));
    assert_eq!(lease("ed25519:e", None, t0 + 4), None);
}

/// A second build of a published key with other bytes is a finding only when it was built
/// with the same recipe: of another recipe (or of none, against one), nothing is stored and
/// the published build stays unflagged.
pub fn another_recipes_bytes_are_not_a_finding(store: &dyn MetadataStore) {
    const OURS: &str = "precomp-build-recipe-3";
    let published = build_of_recipe("25", 1, Some(OURS), &ArtifactSigningKey::generate());
    let key = published.0.key.clone();
    assert!(matches!(
        put(store, &published),
        ManifestPut::Created { .. }
    ));
    let other_builder = ArtifactSigningKey::generate();
    for recipe in [Some("precomp-build-recipe-4"), None] {
        let other = build_of_recipe("25", 2, recipe, &other_builder);
        assert_eq!(other.0.key, key);
        assert_eq!(
            put(store, &other),
            ManifestPut::OtherRecipe {
                published_recipe: Some(OURS.into()),
                signers: published.0.signers.clone(),
            }
        );
    }
    // No `conflicting` manifest: nothing for the service to flag the build with.
    assert_eq!(store.key_manifests(&key).unwrap().len(), 1, "nothing kept");
    // The same recipe with other bytes: a finding, as ever.
    let conflicting = build_of_recipe("25", 3, Some(OURS), &other_builder);
    assert!(matches!(
        put(store, &conflicting),
        ManifestPut::Conflict { recorded: true, .. }
    ));
    assert_eq!(store.key_manifests(&key).unwrap().len(), 2);
}

/// Verdicts: stored only about the published manifest, one per auditor (a later one
/// replaces it), a mismatch flags the build, counted by result.
pub fn verdicts_are_kept_per_auditor(store: &dyn MetadataStore) {
    let (builder, auditor) = (
        ArtifactSigningKey::generate(),
        ArtifactSigningKey::generate(),
    );
    let built = build("25", 1, 1, &builder);
    put(store, &built);
    let manifest = Manifest::decode(built.1.manifest.as_slice()).unwrap();
    let put_verdict = |result: &str, key: &str| {
        let mut verdict = verdict(&built, result);
        verdict.key = key.to_string();
        post_verdict(store, &auditor, verdict)
    };
    assert_eq!(
        put_verdict(MISMATCH, &"0".repeat(64)),
        VerdictPut::NoManifest
    );
    assert_eq!(
        put_verdict(MISMATCH, &manifest.key),
        VerdictPut::Stored {
            how: "created",
            flagged: true
        }
    );
    assert_eq!(store.verdict_counts().unwrap(), (0, 1));
    let verdicts = store.verdicts(&manifest.key).unwrap();
    assert!(verdicts.flagged);
    assert_eq!(verdicts.verdicts[0].auditor, auditor.public_key().key_id());
    assert!(store.index("plain_ex").unwrap()[0].flagged);
    assert_eq!(
        put_verdict(MATCH, &manifest.key),
        VerdictPut::Stored {
            how: "replaced",
            flagged: false
        }
    );
    assert_eq!(store.verdict_counts().unwrap(), (1, 0));
    assert_eq!(store.verdicts(&manifest.key).unwrap().verdicts.len(), 1);
}

/// What gc needs: the view it decides on lists the builds and artifacts; a dry run changes
/// nothing; applied, the dropped build (with its history and verdicts) and artifact rows
/// are gone. The artifact rows and the artifacts builds name are listed for scrub and backup.
pub fn gc_reads_and_drops_in_one_step(store: &dyn MetadataStore) {
    let builder = ArtifactSigningKey::generate();
    let kept = build("25", 1, 1, &builder);
    let dropped = build("26", 2, 1, &builder);
    for (artifact, _) in [(1u8, &kept), (2, &dropped)] {
        store
            .record_artifact(&[artifact; 32], 10, "builder")
            .unwrap();
    }
    store.record_artifact(&[3; 32], 5, "builder").unwrap();
    // A miss the kept build closes, and one that stays open.
    let policy = MissPolicy::default();
    for otp in ["25", "27"] {
        store
            .record_miss(&miss(&miss_report(otp)), &policy, COUNTS_ALL)
            .unwrap();
    }
    put(store, &kept);
    put(store, &dropped);
    let named: Vec<(String, Vec<String>)> = store
        .named_artifacts()
        .unwrap()
        .into_iter()
        .map(|a| (a.sha256, a.builds))
        .collect();
    assert_eq!(
        named,
        [
            (hex::encode([1; 32]), vec![kept.0.key.clone()]),
            (hex::encode([2; 32]), vec![dropped.0.key.clone()])
        ]
    );
    assert_eq!(store.recorded_artifacts().unwrap().len(), 3);

    let mut seen = (0, 0);
    let plan = GcDrop {
        builds: vec![dropped.0.key.clone()],
        artifacts: vec![hex::encode([2; 32]), hex::encode([3; 32])],
        ..GcDrop::default()
    };
    let planned = store
        .collect_garbage(0, false, &mut |view| {
            seen = (view.builds.len(), view.artifacts.len());
            plan.clone()
        })
        .unwrap();
    assert_eq!(seen, (2, 3));
    assert_eq!(planned.builds, std::slice::from_ref(&dropped.0.key));
    assert_eq!(
        store.index("plain_ex").unwrap().len(),
        2,
        "a dry run drops nothing"
    );
    store
        .collect_garbage(0, true, &mut |_| plan.clone())
        .unwrap();
    let left: Vec<String> = store
        .index("plain_ex")
        .unwrap()
        .into_iter()
        .map(|b| b.key)
        .collect();
    assert_eq!(left, std::slice::from_ref(&kept.0.key));
    assert!(store.key_manifests(&dropped.0.key).unwrap().is_empty());
    let recorded: Vec<String> = store
        .recorded_artifacts()
        .unwrap()
        .into_iter()
        .map(|a| a.sha256)
        .collect();
    assert_eq!(recorded, [hex::encode([1; 32])]);

    // Closed misses older than `misses_since` are counted, and deleted only when asked; an
    // open one never is.
    let mut old_closed = Vec::new();
    for (apply, delete) in [(false, true), (true, false), (true, true), (true, true)] {
        store
            .collect_garbage(i64::MAX, apply, &mut |view| {
                old_closed.push(view.old_closed_misses);
                GcDrop {
                    old_closed_misses: delete,
                    ..GcDrop::default()
                }
            })
            .unwrap();
    }
    assert_eq!(old_closed, [1, 1, 1, 0]);
    assert_eq!(store.open_misses(10, usize::MAX).unwrap().len(), 1);
}

// Helpers -------------------------------------------------------------------------------------

trait JobErrorOf {
    fn unwrap_err_job(self) -> JobError;
}

impl<T: std::fmt::Debug> JobErrorOf for Result<T, ArtifactStoreError> {
    /// The [`JobError`] this failed with (a panic otherwise).
    fn unwrap_err_job(self) -> JobError {
        match self {
            Err(ArtifactStoreError::Job(e)) => e,
            other => panic!("expected a JobError, got {other:?}"),
        }
    }
}

pub(crate) fn inputs(otp: &str) -> BuildInputs {
    BuildInputs {
        package: PackageRef {
            name: "plain_ex".into(),
            version: "1.0.0".into(),
            outer_checksum: [7; 32],
        },
        manager: Manager::Mix,
        closure: vec![],
        otp_major: otp.into(),
        elixir: "1.18.3".into(),
        mix_env: "prod".into(),
        target: Target::Any,
        compile_env: vec![],
    }
}

/// A build of plain_ex for OTP `otp` whose artifact is `[artifact; 32]` (one file),
/// `duration_ms` in its provenance (what differs between two identical builds).
pub(crate) fn build(
    otp: &str,
    artifact: u8,
    duration_ms: u64,
    signer: &ArtifactSigningKey,
) -> (ManifestRecord, SignedManifest) {
    let mut manifest = Manifest::default();
    manifest.set_inputs(&inputs(otp)).unwrap();
    manifest.output = Some(Output {
        artifact_sha256: vec![artifact; 32],
        artifact_size: 10,
        files: vec![FileRecord {
            path: "ebin/Elixir.PlainEx.beam".into(),
            sha256: vec![artifact; 32],
            size: 10,
            executable: false,
        }],
        native_code: false,
    });
    manifest.provenance = Some(precomp_proto::manifest::Provenance {
        build_duration_ms: duration_ms,
        ..Default::default()
    });
    let signed = SignedManifest::sign(&manifest, signer);
    let record = ManifestRecord {
        key: manifest.key.clone(),
        base_key: manifest.base_key.clone(),
        package: "plain_ex".into(),
        version: "1.0.0".into(),
        otp_major: otp.into(),
        elixir: "1.18.3".into(),
        mix_env: "prod".into(),
        target: "any".into(),
        artifact_sha256: hex::encode([artifact; 32]),
        artifact_size: 10,
        compile_env: vec![],
        signers: vec![signer.public_key().key_id()],
        key_format: manifest.format,
        base_text: inputs(otp).base_text().unwrap(),
        recipe: None,
    };
    (record, signed)
}

/// An auditor's verdict on `built` (as [`build`] makes it): `result` ([`MATCH`], or
/// [`MISMATCH`] with other rebuilt bytes), with the summary an audit gives a one-file
/// difference.
pub(crate) fn verdict(built: &(ManifestRecord, SignedManifest), result: &str) -> Verdict {
    let published = hex::decode(&built.0.artifact_sha256).unwrap();
    let rebuilt = if result == MATCH {
        published.clone()
    } else {
        published.iter().map(|byte| !byte).collect()
    };
    Verdict {
        key: built.0.key.clone(),
        manifest_sha256: manifest_digest(&built.1.manifest).to_vec(),
        result: result.into(),
        published_sha256: published,
        rebuilt_sha256: rebuilt,
        summary: "1 file differs: ebin/Elixir.PlainEx.beam (LitT)".into(),
        ..Default::default()
    }
}

/// Signs `verdict` as `auditor`, verifies it as the service does, and stores it.
pub(crate) fn post_verdict(
    store: &dyn MetadataStore,
    auditor: &ArtifactSigningKey,
    verdict: Verdict,
) -> VerdictPut {
    let signed = verdict.sign(auditor).unwrap();
    let verified = signed.verify(&[auditor.public_key()]).unwrap();
    store
        .put_verdict(&verified, &signed.encode_to_vec(), "auditor")
        .unwrap()
}

/// [`build`] of artifact `artifact` with `recipe` recorded in its provenance and its record.
pub(crate) fn build_of_recipe(
    otp: &str,
    artifact: u8,
    recipe: Option<&str>,
    signer: &ArtifactSigningKey,
) -> (ManifestRecord, SignedManifest) {
    let (mut record, signed) = build(otp, artifact, 1, signer);
    let mut manifest = Manifest::decode(signed.manifest.as_slice()).unwrap();
    let provenance = manifest.provenance.get_or_insert_with(Default::default);
    provenance.recipe = recipe.map(str::to_string);
    record.recipe = provenance.recipe.clone();
    (record, SignedManifest::sign(&manifest, signer))
}

pub(crate) fn put(
    store: &dyn MetadataStore,
    (record, signed): &(ManifestRecord, SignedManifest),
) -> ManifestPut {
    store
        .put_manifest(
            record,
            signed,
            &signed.encode_to_vec(),
            "builder",
            COUNTS_ALL,
        )
        .unwrap()
}

/// A miss of plain_ex's build for OTP `otp`, by its base key.
fn miss_report(otp: &str) -> MissReport {
    let mut manifest = Manifest::default();
    manifest.set_inputs(&inputs(otp)).unwrap();
    MissReport {
        package: "plain_ex".into(),
        version: "1.0.0".into(),
        base_key: Some(manifest.base_key),
        request_key: None,
        variant_key: None,
        reason: "not built".into(),
        otp_major: otp.into(),
        elixir: "1.18.3".into(),
        mix_env: "prod".into(),
        target: "any".into(),
        lock: "%{}".into(),
        manager: "mix".into(),
        compile_env: vec![],
        closure: vec![],
    }
}

pub(crate) fn miss(report: &MissReport) -> MissRecord<'_> {
    MissRecord {
        report,
        miss_key: report.base_key.clone().unwrap(),
        request_text: inputs(&report.otp_major).request_text().unwrap(),
        variant_key: None,
        own_compile_env: Vec::new(),
        variants: Vec::new(),
    }
}

/// Records `record` under `policy`, every signer counting; the miss must not be refused.
pub(crate) fn record_miss(
    store: &dyn MetadataStore,
    record: &MissRecord,
    policy: &MissPolicy,
) -> crate::api::MissRecorded {
    match store.record_miss(record, policy, COUNTS_ALL).unwrap() {
        MissOutcome::Recorded(recorded) => recorded,
        refused => panic!("the miss was refused: {refused:?}"),
    }
}

fn lease_request(otp: &str, lease_seconds: u64) -> LeaseRequest {
    LeaseRequest {
        kind: JobKind::Build,
        worker: "w".into(),
        otp_major: otp.into(),
        elixir: "1.18.3".into(),
        mix_env: "prod".into(),
        targets: vec!["any".into()],
        tuples: Vec::new(),
        lease_seconds,
        fewer_than: 1,
        auditor: None,
        recipe: None,
    }
}

/// The SQLite store keeps the contract: each behaviour on a fresh store.
#[cfg(test)]
mod sqlite {
    use super::ALL;
    use crate::store::ArtifactStore;

    #[test]
    fn the_sqlite_store_keeps_the_metadata_store_contract() {
        let mut failed = Vec::new();
        for (name, behaviour) in ALL {
            let dir = tempfile::tempdir().unwrap();
            let store = ArtifactStore::open(dir.path()).unwrap();
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| behaviour(&store)));
            if result.is_err() {
                failed.push(*name);
            }
        }
        assert!(
            failed.is_empty(),
            "contract behaviours failed (see above): {failed:?}"
        );
    }
}
