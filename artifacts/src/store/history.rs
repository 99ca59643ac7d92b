//! Several manifests for one key (docs/protocol.md, "Several manifests for one key"): the
//! `manifest_history` table beside `manifests`.
//!
//! `manifests` holds one row per key, the build published under it (the index, jobs,
//! verdicts and gc read it). Every other manifest the mirror accepted or recorded for the key
//! is a `manifest_history` row with a status:
//!
//! - `agreeing`: another builder's manifest of the same key with the same artifact bytes (an
//!   identical rebuild). Its signature is over its own bytes (other provenance), so it cannot
//!   join the published envelope; it is kept as agreement evidence and is served in place of
//!   the published manifest when the mirror's trust document excludes every signer of that
//!   one (a revoked builder whose build another builder had already reproduced).
//! - `conflicting`: a manifest of the key whose artifact differs from the published one (a
//!   reproducibility finding): refused (409), recorded with what differs; the build is
//!   flagged while its signer is in good standing.
//! - `replaced`: a manifest that was published under the key until a rebuild replaced it,
//!   because the trust document excluded every one of its signers (revoked, expired); kept
//!   with why and the verdicts it had, for audits.
//!
//! Rows live as long as the key's build: `precomp gc` removes them with it.

use rusqlite::{params, OptionalExtension};

use super::{from_json, to_json};

/// The table as migration 4 makes it (`migrations/sqlite/V4__…sql`), for a database of the
/// line of development that called its schema 4 without it (`migrations::legacy_baseline`).
/// Frozen: a change to the table is a new migration.
pub(super) const LEGACY_HISTORY_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS manifest_history (
    key             TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    status          TEXT NOT NULL,
    signed_manifest BLOB NOT NULL,
    signers         TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    published_by    TEXT NOT NULL,
    published_at    INTEGER NOT NULL,
    changed_at      INTEGER NOT NULL,
    note            TEXT NOT NULL DEFAULT '',
    verdicts        TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (key, manifest_digest)
) STRICT;
";

/// Statuses of `manifest_history` rows.
pub const AGREEING: &str = "agreeing";
pub const CONFLICTING: &str = "conflicting";

/// At most this many conflicting manifests are kept per key: each is a finding worth keeping,
/// but a token holder must not grow a key's history (and `GET manifests/KEY/history`) without
/// bound. Past it a conflict is still refused and reported, just not recorded again.
pub const MAX_CONFLICTING_PER_KEY: u64 = 16;
pub const REPLACED: &str = "replaced";
/// The status [`KeyManifest`] gives the row of `manifests` (the build published under the
/// key).
pub const PUBLISHED: &str = "published";

/// One manifest kept for a key: the published one or a history row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyManifest {
    pub key: String,
    /// [`PUBLISHED`], [`AGREEING`], [`CONFLICTING`] or [`REPLACED`].
    pub status: String,
    /// SHA-256 of the manifest's bytes (`SignedManifest.manifest`), hex: what verdicts name.
    pub manifest_digest: String,
    /// The signed envelope as stored.
    pub signed_manifest: Vec<u8>,
    /// Key ids whose signatures the mirror verified.
    pub signers: Vec<String>,
    pub artifact_sha256: String,
    /// The token that uploaded it.
    pub published_by: String,
    pub published_at: i64,
    /// When it got its status (the publish time for the published one).
    pub changed_at: i64,
    /// Why it has its status: what differs (conflicting), why it was replaced.
    pub note: String,
    /// A replaced build's verdicts, as `GET verdicts/KEY` listed them (JSON).
    pub verdicts: serde_json::Value,
}

impl KeyManifest {
    /// Whether some signer counts (`counts`: the mirror's trust document does not exclude it).
    pub fn in_good_standing(&self, counts: &dyn Fn(&str) -> bool) -> bool {
        self.signers.iter().any(|id| counts(id))
    }
}

/// The columns [`history_row`] reads, in its order.
pub(super) const HISTORY_COLUMNS: &str = "key, status, manifest_digest, signed_manifest, \
    signers, artifact_sha256, published_by, published_at, changed_at, note, verdicts";

/// A `manifest_history` row selected as [`HISTORY_COLUMNS`].
pub(super) fn history_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyManifest> {
    Ok(KeyManifest {
        key: row.get(0)?,
        status: row.get(1)?,
        manifest_digest: row.get(2)?,
        signed_manifest: row.get(3)?,
        signers: from_json(&row.get::<_, String>(4)?),
        artifact_sha256: row.get(5)?,
        published_by: row.get(6)?,
        published_at: row.get(7)?,
        changed_at: row.get(8)?,
        note: row.get(9)?,
        verdicts: serde_json::from_str(&row.get::<_, String>(10)?)
            .unwrap_or(serde_json::Value::Array(Vec::new())),
    })
}

/// The published manifest of `key` (its `manifests` row) as a [`KeyManifest`].
pub(super) fn published_row(
    db: &rusqlite::Connection,
    key: &str,
) -> rusqlite::Result<Option<KeyManifest>> {
    db.query_row(
        "SELECT key, signed_manifest, signers, artifact_sha256, published_by, published_at
         FROM manifests WHERE key = ?1",
        params![key],
        |row| {
            let signed: Vec<u8> = row.get(1)?;
            Ok(KeyManifest {
                key: row.get(0)?,
                status: PUBLISHED.to_string(),
                manifest_digest: inner_digest(&signed),
                signed_manifest: signed,
                signers: from_json(&row.get::<_, String>(2)?),
                artifact_sha256: row.get(3)?,
                published_by: row.get(4)?,
                published_at: row.get(5)?,
                changed_at: row.get(5)?,
                note: String::new(),
                verdicts: serde_json::Value::Array(Vec::new()),
            })
        },
    )
    .optional()
}

/// The history rows of `key`, oldest first.
pub(super) fn history_rows(
    db: &rusqlite::Connection,
    key: &str,
) -> rusqlite::Result<Vec<KeyManifest>> {
    let mut stmt = db.prepare(&format!(
        "SELECT {HISTORY_COLUMNS} FROM manifest_history WHERE key = ?1
         ORDER BY published_at, manifest_digest"
    ))?;
    let rows = stmt.query_map(params![key], history_row)?;
    rows.collect()
}

/// SHA-256 (hex) of the manifest bytes inside a stored envelope; of nothing if it does not
/// decode (stored envelopes were verified when published).
pub(super) fn inner_digest(signed: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    let manifest = precomp_proto::manifest::SignedManifest::decode(signed)
        .map(|s| s.manifest)
        .unwrap_or_default();
    hex::encode(Sha256::digest(manifest))
}

/// Adds a history row (or, for one already there, its new status, envelope and note).
pub(super) fn put_history(
    tx: &rusqlite::Transaction<'_>,
    row: &KeyManifest,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO manifest_history (key, manifest_digest, status, signed_manifest, signers,
            artifact_sha256, published_by, published_at, changed_at, note, verdicts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT(key, manifest_digest) DO UPDATE SET status = ?3, signed_manifest = ?4,
            signers = ?5, changed_at = ?9, note = ?10, verdicts = ?11",
        params![
            row.key,
            row.manifest_digest,
            row.status,
            row.signed_manifest,
            to_json(&row.signers),
            row.artifact_sha256,
            row.published_by,
            row.published_at,
            row.changed_at,
            row.note,
            row.verdicts.to_string()
        ],
    )?;
    Ok(())
}

/// The signed envelope to serve for `key` among `rows` ([`super::MetadataStore::key_manifests`]):
/// the published one while one of its signers counts (`counts`), else the oldest agreeing
/// one with a signer that counts, else the published one (clients then say why they
/// refuse it). `None` when nothing is published. The same for every store: not a query.
pub fn serving<'a>(
    rows: &'a [KeyManifest],
    counts: &dyn Fn(&str) -> bool,
) -> Option<&'a KeyManifest> {
    let published = rows.first().filter(|row| row.status == PUBLISHED)?;
    if published.in_good_standing(counts) {
        return Some(published);
    }
    rows.iter()
        .find(|row| row.status == AGREEING && row.in_good_standing(counts))
        .or(Some(published))
}

#[cfg(test)]
mod tests {
    use super::super::contract::{self, miss};
    use super::super::{
        ArtifactStore, ManifestPut, ManifestRecord, MetadataStore, MissOutcome, MissPolicy,
        MissRecord,
    };
    use super::*;
    use crate::api::{MissRecorded, MissReport};
    use precomp_proto::manifest::{ArtifactSigningKey, SignedManifest};
    use prost::Message as _;

    /// Builds of plain_ex for OTP 27 ([`contract::build`]'s, which the contract checks use).
    fn build(
        artifact: u8,
        duration_ms: u64,
        signer: &ArtifactSigningKey,
    ) -> (ManifestRecord, SignedManifest) {
        contract::build("27", artifact, duration_ms, signer)
    }

    fn put(
        store: &ArtifactStore,
        (record, signed): &(ManifestRecord, SignedManifest),
        counts: &dyn Fn(&str) -> bool,
    ) -> ManifestPut {
        store
            .put_manifest(record, signed, &signed.encode_to_vec(), "token", counts)
            .unwrap()
    }

    fn statuses(store: &ArtifactStore, key: &str) -> Vec<String> {
        store
            .key_manifests(key)
            .unwrap()
            .into_iter()
            .map(|row| row.status)
            .collect()
    }

    const ALL: &dyn Fn(&str) -> bool = &|_| true;

    /// A second builder's identical build (other provenance, same artifact) is agreement;
    /// the same builder again, or the same bytes, change nothing; other bytes are a finding,
    /// recorded with what differs, and never published.
    #[test]
    fn identical_builds_agree_and_other_bytes_are_a_recorded_finding() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let (one, two, three) = (
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
        );
        let first = build(1, 100, &one);
        let key = first.0.key.clone();
        assert!(matches!(
            put(&store, &first, ALL),
            ManifestPut::Created { .. }
        ));
        // The same builder rebuilding bit for bit (its data directory lost): nothing new.
        assert!(matches!(
            put(&store, &build(1, 250, &one), ALL),
            ManifestPut::Unchanged { .. }
        ));
        // Another builder, same bytes: agreement, kept beside the published manifest.
        let agreeing = build(1, 300, &two);
        assert_eq!(
            put(&store, &agreeing, ALL),
            ManifestPut::Agreed {
                signers: vec![two.public_key().key_id()]
            }
        );
        assert!(matches!(
            put(&store, &agreeing, ALL),
            ManifestPut::Unchanged { .. }
        ));
        assert_eq!(statuses(&store, &key), [PUBLISHED, AGREEING]);
        // What is served is still the first builder's manifest.
        let rows = store.key_manifests(&key).unwrap();
        assert_eq!(
            serving(&rows, ALL).unwrap().signed_manifest,
            first.1.encode_to_vec()
        );
        // An auditor countersigning the agreeing manifest: its envelope gains the signature.
        let mut countersigned = agreeing.1.clone();
        countersigned.countersign(&three);
        let record = ManifestRecord {
            signers: vec![two.public_key().key_id(), three.public_key().key_id()],
            ..agreeing.0.clone()
        };
        assert!(matches!(
            put(&store, &(record, countersigned), ALL),
            ManifestPut::Countersigned { .. }
        ));
        assert_eq!(store.key_manifests(&key).unwrap()[1].signers.len(), 2);

        // Other bytes for the same key: a conflict naming the file, recorded, not published.
        let other = build(2, 100, &three);
        match put(&store, &other, ALL) {
            ManifestPut::Conflict {
                existing_artifact,
                difference,
                ..
            } => {
                assert_eq!(existing_artifact, hex::encode([1; 32]));
                assert!(
                    difference.contains("1 of 1 file(s) differ: ebin/Elixir.PlainEx.beam"),
                    "{difference}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(statuses(&store, &key), [PUBLISHED, AGREEING, CONFLICTING]);
        assert_eq!(
            store.manifest(&key).unwrap().unwrap(),
            first.1.encode_to_vec()
        );
        let disagreements =
            super::super::super::disagreements(&store.key_manifests(&key).unwrap(), ALL);
        assert_eq!(disagreements.len(), 1);
        assert_eq!(disagreements[0].artifact_sha256, hex::encode([2; 32]));
    }

    /// Conflicting manifests are kept up to the bound; past it a conflict is still reported,
    /// not recorded, and the same conflicting manifest again stays recorded.
    #[test]
    fn a_keys_conflicting_manifests_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let signer = ArtifactSigningKey::generate();
        let first = build(1, 1, &signer);
        let key = first.0.key.clone();
        put(&store, &first, ALL);
        let conflict = |artifact: u8| match put(&store, &build(artifact, 1, &signer), ALL) {
            ManifestPut::Conflict { recorded, .. } => recorded,
            other => panic!("{other:?}"),
        };
        for artifact in 0..MAX_CONFLICTING_PER_KEY as u8 {
            assert!(conflict(100 + artifact), "conflict {artifact} not recorded");
        }
        assert!(!conflict(200), "a conflict past the bound was recorded");
        assert!(conflict(100), "a conflict already kept is still recorded");
        let kept = statuses(&store, &key);
        assert_eq!(kept.len() as u64, 1 + MAX_CONFLICTING_PER_KEY, "{kept:?}");
        assert_eq!(kept[0], PUBLISHED);
    }

    /// When every signer of the published manifest is excluded (revoked), an agreeing one with
    /// a signer in good standing is served; with none, a rebuild replaces it (whatever its
    /// bytes), the old one kept as `replaced` with its verdicts, and the misses it satisfies
    /// close.
    #[test]
    fn what_a_revoked_builder_published_is_served_by_an_agreeing_one_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let (one, two, three) = (
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
        );
        let revoked = one.public_key().key_id();
        let without_one = |id: &str| id != revoked;
        let first = build(1, 100, &one);
        let key = first.0.key.clone();
        put(&store, &first, ALL);
        let agreeing = build(1, 300, &two);
        put(&store, &agreeing, ALL);
        let rows = store.key_manifests(&key).unwrap();
        assert_eq!(
            serving(&rows, &without_one).unwrap().signed_manifest,
            agreeing.1.encode_to_vec()
        );
        // Another build of other bytes is a conflict with the agreeing (served) one.
        assert!(matches!(
            put(&store, &build(2, 1, &three), &without_one),
            ManifestPut::Conflict { .. }
        ));

        // A key only the revoked builder published: a miss of it stays open, and a rebuild of
        // other bytes replaces it and closes the miss.
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        put(&store, &first, ALL);
        let auditor = ArtifactSigningKey::generate();
        let verdict = precomp_proto::verdict::Verdict {
            key: key.clone(),
            manifest_sha256: precomp_proto::verdict::manifest_digest(&first.1.manifest).to_vec(),
            result: precomp_proto::verdict::MATCH.into(),
            published_sha256: vec![1; 32],
            rebuilt_sha256: vec![1; 32],
            ..Default::default()
        }
        .sign(&auditor)
        .unwrap();
        let verified = verdict.verify(&[auditor.public_key()]).unwrap();
        store
            .put_verdict(&verified, &verdict.encode_to_vec(), "auditor")
            .unwrap();
        let report = miss_report(&first.0);
        let recorded = record(&store, &miss(&report), &without_one);
        assert!(recorded.open, "{recorded:?}");
        // While the builder counted, the same miss was closed by its build.
        let dir2 = tempfile::tempdir().unwrap();
        let trusting = ArtifactStore::open(dir2.path()).unwrap();
        put(&trusting, &first, ALL);
        assert!(!record(&trusting, &miss(&report), ALL).open);

        let rebuilt = build(3, 50, &two);
        assert_eq!(
            put(&store, &rebuilt, &without_one),
            ManifestPut::Replaced {
                closed_misses: 1,
                replaced: inner_digest(&first.1.encode_to_vec()),
            }
        );
        assert_eq!(
            store.manifest(&key).unwrap().unwrap(),
            rebuilt.1.encode_to_vec()
        );
        let rows = store.key_manifests(&key).unwrap();
        assert_eq!(statuses(&store, &key), [PUBLISHED, REPLACED]);
        assert_eq!(rows[0].artifact_sha256, hex::encode([3; 32]));
        assert!(rows[1].note.contains(&revoked), "{}", rows[1].note);
        assert!(
            rows[1]
                .verdicts
                .to_string()
                .contains(&auditor.public_key().key_id()),
            "the replaced build keeps its verdicts: {}",
            rows[1].verdicts
        );
        assert!(store.verdicts(&key).unwrap().verdicts.is_empty());
        assert_eq!(
            store.index("plain_ex").unwrap()[0].artifact_sha256,
            hex::encode([3; 32])
        );
    }

    fn miss_report(record: &ManifestRecord) -> MissReport {
        MissReport {
            package: record.package.clone(),
            version: record.version.clone(),
            base_key: Some(record.base_key.clone()),
            request_key: None,
            variant_key: None,
            reason: "revoked".into(),
            otp_major: record.otp_major.clone(),
            elixir: record.elixir.clone(),
            mix_env: record.mix_env.clone(),
            target: "any".into(),
            lock: String::new(),
            manager: "mix".into(),
            compile_env: vec![],
            closure: vec![],
        }
    }

    /// [`MetadataStore::record_miss`] with the default bounds; the miss is recorded.
    fn record(
        store: &ArtifactStore,
        miss: &MissRecord<'_>,
        counts: &dyn Fn(&str) -> bool,
    ) -> MissRecorded {
        match store
            .record_miss(miss, &MissPolicy::default(), counts)
            .unwrap()
        {
            MissOutcome::Recorded(recorded) => recorded,
            refused => panic!("{refused:?}"),
        }
    }

    /// A miss a publish closed opens again when it is reported after the build went away
    /// (`precomp gc` removed it); one a failure closed stays closed.
    #[test]
    fn a_miss_reported_after_its_build_went_away_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let builder = ArtifactSigningKey::generate();
        let published = build(1, 1, &builder);
        let report = miss_report(&published.0);
        let first = record(&store, &miss(&report), ALL);
        assert!(first.open);
        put(&store, &published, ALL);
        let closed = record(&store, &miss(&report), ALL);
        assert!(!closed.open);
        assert_eq!(
            closed.closed_by.as_deref(),
            Some(format!("published {}", published.0.key).as_str())
        );
        // gc removes the build (its rows, as ops::gc does).
        store
            .db
            .lock()
            .execute(
                "DELETE FROM manifests WHERE key = ?1",
                params![published.0.key],
            )
            .unwrap();
        let reopened = record(&store, &miss(&report), ALL);
        assert!(reopened.open, "{reopened:?}");
        assert_eq!(reopened.count, 3);
        assert_eq!(store.open_misses(10, 1 << 20).unwrap().len(), 1);
        // A failure closes it for good: reported again, it stays closed.
        store
            .record_failure(
                &crate::api::FailureReport {
                    package: "plain_ex".into(),
                    version: "1.0.0".into(),
                    base_key: published.0.base_key.clone(),
                    toolchain_id: "host".into(),
                    log: "boom".into(),
                },
                "builder",
            )
            .unwrap();
        let failed = record(&store, &miss(&report), ALL);
        assert!(!failed.open);
        assert_eq!(failed.closed_by.as_deref(), Some("failed on host"));
    }
}
