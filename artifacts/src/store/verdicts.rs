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
use precomp_proto::verdict::{SignedVerdict, Verdict, MISMATCH};
use prost::Message;
use rusqlite::{params, Connection};

use super::super::api::{
    ChunkDifferenceJson, FileDifferenceJson, IndexBuild, VerdictRecord, VerdictSummary,
};

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
    use super::super::contract::{build, post_verdict, put, verdict};
    use super::*;
    use crate::store::{ArtifactStore, MetadataStore};
    use precomp_proto::manifest::ArtifactSigningKey;
    use precomp_proto::verdict::MATCH;

    #[test]
    fn verdicts_are_checked_against_the_published_manifest_and_flag_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let (builder, auditor) = (
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
        );
        let built = build("25", 1, 1, &builder);
        put(&store, &built);
        let key = &built.0.key;
        let put = |v: Verdict| post_verdict(&store, &auditor, v);

        let mut unknown = verdict(&built, MISMATCH);
        unknown.key = "0".repeat(64);
        assert_eq!(put(unknown), VerdictPut::NoManifest);
        let mut other = verdict(&built, MISMATCH);
        other.manifest_sha256 = vec![9; 32];
        assert!(matches!(put(other), VerdictPut::OtherManifest { .. }));
        let mut other_artifact = verdict(&built, MISMATCH);
        other_artifact.published_sha256 = vec![3; 32];
        assert!(matches!(
            put(other_artifact),
            VerdictPut::OtherArtifact { .. }
        ));
        assert!(!store.verdicts(key).unwrap().flagged);

        let mismatch = verdict(&built, MISMATCH);
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
            put(verdict(&built, MATCH)),
            VerdictPut::Stored {
                how: "replaced",
                flagged: false
            }
        );
        assert_eq!(store.verdict_counts().unwrap(), (1, 0));
        let verdicts = store.verdicts(key).unwrap();
        assert!(!verdicts.flagged);
        assert_eq!(verdicts.verdicts.len(), 1);
        assert_eq!(verdicts.verdicts[0].result, MATCH);
    }
}
