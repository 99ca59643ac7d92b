//! Audit verdicts on the mirror: `POST /precomp/v1/verdicts/KEY` (an auditor's token),
//! `GET /precomp/v1/verdicts/KEY`, and what the index says about them (`auditors`,
//! `flagged`, `verdicts`).
//!
//! A verdict is accepted only when it is signed by one of the auditor keys in effect — the
//! configured ones (`precomp serve --auditor-key`, `auditor_keys`) and the trust document's
//! keys with the auditor role, less those it revokes or whose validity ended
//! (`super::trust_policy`) — the token's own key when the token is bound to one; and when it
//! names the manifest published under its key by that manifest's digest, and its artifact.
//! One verdict is kept per build and auditor: a later one replaces it. A build with a
//! `mismatch` verdict is flagged in the index.

use base64::Engine as _;
use precomp_proto::manifest::{Manifest, SignedManifest};
use precomp_proto::verdict::{SignedVerdict, Verdict, MISMATCH};
use prost::Message;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

use super::super::api::{
    ChunkDifferenceJson, FileDifferenceJson, IndexBuild, VerdictRecord, VerdictSummary, Verdicts,
};
use super::{now, ArtifactStore, ArtifactStoreError};

/// Fills `flagged` and `verdicts` of each build from the verdicts table.
pub(super) fn attach(db: &Connection, builds: &mut [IndexBuild]) -> rusqlite::Result<()> {
    let mut stmt = db.prepare(
        "SELECT auditor_id, result, summary, toolchain_id, received_at FROM verdicts
         WHERE key = ?1 ORDER BY auditor_id",
    )?;
    for build in builds {
        let rows = stmt.query_map(params![build.key], |row| {
            Ok(VerdictSummary {
                auditor: row.get(0)?,
                result: row.get(1)?,
                summary: row.get(2)?,
                toolchain_id: row.get(3)?,
                received_at: row.get(4)?,
            })
        })?;
        build.verdicts = rows.collect::<Result<_, _>>()?;
        build.flagged = build.verdicts.iter().any(|v| v.result == MISMATCH);
    }
    Ok(())
}

/// How storing a verdict ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerdictPut {
    Stored {
        /// `created`, `replaced` or `unchanged`.
        how: &'static str,
        flagged: bool,
    },
    /// No manifest is published under the verdict's key.
    NoManifest,
    /// The published manifest is not the one the verdict names.
    OtherManifest { published: String },
    /// The verdict's published artifact is not the manifest's.
    OtherArtifact { published: String },
}

impl ArtifactStore {
    /// Stores a verified verdict, replacing the same auditor's earlier one, after checking it
    /// is about the manifest published under its key; one transaction.
    pub fn put_verdict(
        &self,
        verdict: &Verdict,
        bytes: &[u8],
        reported_by: &str,
    ) -> Result<VerdictPut, ArtifactStoreError> {
        let mut db = self.db.lock();
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db_err())?;
        // The published manifest, or an agreeing one (the one served while every signer of
        // the published one is excluded): a verdict may name either, they hold the same
        // artifact.
        let Some(published) =
            super::history::published_row(&tx, &verdict.key).map_err(self.db_err())?
        else {
            return Ok(VerdictPut::NoManifest);
        };
        let agreeing = super::history::history_rows(&tx, &verdict.key)
            .map_err(self.db_err())?
            .into_iter()
            .filter(|row| row.status == super::history::AGREEING);
        let named = hex::encode(&verdict.manifest_sha256);
        let Some(stored) = std::iter::once(published.clone())
            .chain(agreeing)
            .find(|row| row.manifest_digest == named)
            .map(|row| row.signed_manifest)
        else {
            return Ok(VerdictPut::OtherManifest {
                published: published.manifest_digest,
            });
        };
        // Stored manifests were verified when they were published.
        let signed = SignedManifest::decode(stored.as_slice()).ok();
        let manifest_bytes = signed
            .as_ref()
            .map(|s| s.manifest.as_slice())
            .unwrap_or(&[]);
        let artifact = Manifest::decode(manifest_bytes)
            .ok()
            .and_then(|m| m.output)
            .map(|o| o.artifact_sha256)
            .unwrap_or_default();
        if artifact != verdict.published_sha256 {
            return Ok(VerdictPut::OtherArtifact {
                published: hex::encode(artifact),
            });
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        let previous: Option<String> = tx
            .query_row(
                "SELECT verdict_sha256 FROM verdicts WHERE key = ?1 AND auditor_id = ?2",
                params![verdict.key, verdict.auditor_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.db_err())?;
        let how = match previous {
            Some(previous) if previous == sha256 => "unchanged",
            Some(_) => "replaced",
            None => "created",
        };
        if how != "unchanged" {
            tx.execute(
                "INSERT INTO verdicts (key, auditor_id, result, summary, toolchain_id,
                    signed_verdict, verdict_sha256, reported_by, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(key, auditor_id) DO UPDATE SET result = ?3, summary = ?4,
                    toolchain_id = ?5, signed_verdict = ?6, verdict_sha256 = ?7,
                    reported_by = ?8, received_at = ?9",
                params![
                    verdict.key,
                    verdict.auditor_id,
                    verdict.result,
                    verdict.summary,
                    verdict.toolchain_id,
                    bytes,
                    sha256,
                    reported_by,
                    now()
                ],
            )
            .map_err(self.db_err())?;
        }
        let flagged: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM verdicts WHERE key = ?1 AND result = ?2)",
                params![verdict.key, MISMATCH],
                |row| row.get(0),
            )
            .map_err(self.db_err())?;
        tx.commit().map_err(self.db_err())?;
        Ok(VerdictPut::Stored { how, flagged })
    }

    /// Every verdict on `key`, by auditor.
    pub fn verdicts(&self, key: &str) -> Result<Verdicts, ArtifactStoreError> {
        let db = self.db.lock();
        let verdicts = records(&db, key).map_err(self.db_err())?;
        let flagged = verdicts.iter().any(|v| v.result == MISMATCH);
        Ok(Verdicts {
            key: key.to_string(),
            flagged,
            verdicts,
            disagreements: Vec::new(),
        })
    }

    /// The packages with at least one published build, sorted.
    pub fn packages(&self) -> Result<Vec<String>, ArtifactStoreError> {
        let db = self.db.lock();
        let mut stmt = db
            .prepare("SELECT DISTINCT package FROM manifests ORDER BY package")
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map([], |row| row.get(0))
            .map_err(self.db_err())?;
        rows.collect::<Result<_, _>>().map_err(self.db_err())
    }
}

/// The stored verdicts on `key`, by auditor, as `GET verdicts/KEY` lists them.
pub(super) fn records(db: &Connection, key: &str) -> rusqlite::Result<Vec<VerdictRecord>> {
    let mut stmt = db.prepare(
        "SELECT signed_verdict, reported_by, received_at FROM verdicts WHERE key = ?1
         ORDER BY auditor_id",
    )?;
    let rows = stmt.query_map(params![key], |row| {
        Ok((
            row.get::<_, Vec<u8>>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
        ))
    })?;
    let mut verdicts = Vec::new();
    for row in rows {
        let (bytes, reported_by, received_at) = row?;
        // Verified when posted; a row that no longer decodes is skipped, not served.
        let decoded = SignedVerdict::decode(&bytes)
            .ok()
            .and_then(|s| Verdict::decode(s.verdict.as_slice()).ok());
        let Some(verdict) = decoded else {
            tracing::warn!(%key, "skipping an undecodable stored verdict");
            continue;
        };
        verdicts.push(record(&verdict, &bytes, reported_by, received_at));
    }
    Ok(verdicts)
}

/// A stored verdict as `GET verdicts/KEY` shows it.
pub fn record(
    verdict: &Verdict,
    signed_bytes: &[u8],
    reported_by: String,
    received_at: i64,
) -> VerdictRecord {
    VerdictRecord {
        auditor: verdict.auditor_id.clone(),
        result: verdict.result.clone(),
        summary: verdict.summary.clone(),
        toolchain_id: verdict.toolchain_id.clone(),
        toolchain_digest: verdict.toolchain_digest.clone(),
        published_sha256: hex::encode(&verdict.published_sha256),
        rebuilt_sha256: hex::encode(&verdict.rebuilt_sha256),
        rebuilt_size: verdict.rebuilt_size,
        files: files_json(verdict),
        reported_by,
        received_at,
        signed_verdict: base64::engine::general_purpose::STANDARD.encode(signed_bytes),
    }
}

/// A verdict's file differences as JSON.
pub fn files_json(verdict: &Verdict) -> Vec<FileDifferenceJson> {
    verdict
        .files
        .iter()
        .map(|file| FileDifferenceJson {
            path: file.path.clone(),
            change: file.change.clone(),
            published_sha256: hex::encode(&file.published_sha256),
            rebuilt_sha256: hex::encode(&file.rebuilt_sha256),
            published_size: file.published_size,
            rebuilt_size: file.rebuilt_size,
            chunks: file
                .chunks
                .iter()
                .map(|chunk| ChunkDifferenceJson {
                    id: chunk.id.clone(),
                    change: chunk.change.clone(),
                    published_size: chunk.published_size,
                    rebuilt_size: chunk.rebuilt_size,
                    explanation: chunk.explanation.clone(),
                })
                .collect(),
            explanation: file.explanation.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ManifestRecord;
    use precomp_proto::buildkey::{BuildInputs, Manager, PackageRef, Target};
    use precomp_proto::manifest::{ArtifactSigningKey, Output};
    use precomp_proto::verdict::{manifest_digest, MATCH};

    fn published(
        store: &ArtifactStore,
        builder: &ArtifactSigningKey,
    ) -> (Manifest, SignedManifest) {
        let mut manifest = Manifest::default();
        manifest
            .set_inputs(&BuildInputs {
                package: PackageRef {
                    name: "plain_ex".into(),
                    version: "1.0.0".into(),
                    outer_checksum: [7; 32],
                },
                manager: Manager::Mix,
                closure: vec![],
                otp_major: "25".into(),
                elixir: "1.14.0".into(),
                mix_env: "prod".into(),
                target: Target::Any,
                compile_env: vec![],
            })
            .unwrap();
        manifest.output = Some(Output {
            artifact_sha256: vec![1; 32],
            artifact_size: 10,
            ..Default::default()
        });
        let signed = SignedManifest::sign(&manifest, builder);
        let record = ManifestRecord {
            key: manifest.key.clone(),
            base_key: manifest.base_key.clone(),
            package: "plain_ex".into(),
            version: "1.0.0".into(),
            otp_major: "25".into(),
            elixir: "1.14.0".into(),
            mix_env: "prod".into(),
            target: "any".into(),
            artifact_sha256: hex::encode([1; 32]),
            artifact_size: 10,
            compile_env: vec![],
            signers: vec![builder.public_key().key_id()],
            key_format: manifest.format,
            base_text: manifest.check_key().unwrap().base_text().unwrap(),
            recipe: None,
        };
        store
            .put_manifest(
                &record,
                &signed,
                &signed.encode_to_vec(),
                "builder",
                &|_| true,
            )
            .unwrap();
        (manifest, signed)
    }

    fn verdict(manifest: &Manifest, signed: &SignedManifest, result: &str) -> Verdict {
        Verdict {
            key: manifest.key.clone(),
            manifest_sha256: manifest_digest(&signed.manifest).to_vec(),
            result: result.into(),
            published_sha256: vec![1; 32],
            rebuilt_sha256: if result == MATCH {
                vec![1; 32]
            } else {
                vec![2; 32]
            },
            summary: "1 file differs: ebin/Elixir.PlainEx.beam (LitT)".into(),
            ..Default::default()
        }
    }

    #[test]
    fn verdicts_are_checked_against_the_published_manifest_and_flag_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let (builder, auditor) = (
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
        );
        let (manifest, signed) = published(&store, &builder);
        let put = |v: Verdict| {
            let signed = v.sign(&auditor).unwrap();
            let verdict = signed.verify(&[auditor.public_key()]).unwrap();
            store
                .put_verdict(&verdict, &signed.encode_to_vec(), "auditor")
                .unwrap()
        };

        let mut unknown = verdict(&manifest, &signed, MISMATCH);
        unknown.key = "0".repeat(64);
        assert_eq!(put(unknown), VerdictPut::NoManifest);
        let mut other = verdict(&manifest, &signed, MISMATCH);
        other.manifest_sha256 = vec![9; 32];
        assert!(matches!(put(other), VerdictPut::OtherManifest { .. }));
        let mut other_artifact = verdict(&manifest, &signed, MISMATCH);
        other_artifact.published_sha256 = vec![3; 32];
        assert!(matches!(
            put(other_artifact),
            VerdictPut::OtherArtifact { .. }
        ));
        assert!(!store.verdicts(&manifest.key).unwrap().flagged);

        let mismatch = verdict(&manifest, &signed, MISMATCH);
        assert_eq!(
            put(mismatch.clone()),
            VerdictPut::Stored {
                how: "created",
                flagged: true
            }
        );
        assert_eq!(
            put(mismatch),
            VerdictPut::Stored {
                how: "unchanged",
                flagged: true
            }
        );
        let index = store.index("plain_ex").unwrap();
        assert!(index[0].flagged);
        assert_eq!(index[0].verdicts[0].auditor, auditor.public_key().key_id());
        assert_eq!(
            index[0].verdicts[0].summary,
            "1 file differs: ebin/Elixir.PlainEx.beam (LitT)"
        );
        assert_eq!(store.packages().unwrap(), vec!["plain_ex"]);
        assert_eq!(store.verdict_counts().unwrap(), (0, 1));

        // The same auditor's later match replaces its mismatch: no longer flagged.
        assert_eq!(
            put(verdict(&manifest, &signed, MATCH)),
            VerdictPut::Stored {
                how: "replaced",
                flagged: false
            }
        );
        assert_eq!(store.verdict_counts().unwrap(), (1, 0));
        let verdicts = store.verdicts(&manifest.key).unwrap();
        assert!(!verdicts.flagged);
        assert_eq!(verdicts.verdicts.len(), 1);
        assert_eq!(verdicts.verdicts[0].result, MATCH);
    }
}
