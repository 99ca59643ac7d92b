//! Audit verdicts, the service's side: `POST /precomp/v1/verdicts/KEY` (an auditor's token)
//! is checked here (keys, signature, the key in the path) and stored by the metadata store
//! ([`crate::MetadataStore::put_verdict`]); the index's `auditors`, `agreed_by` and
//! `disagreements` are worked out here from what the store returns. The rules are in
//! `store/verdicts.rs`'s docs.

use precomp_proto::manifest::ArtifactPublicKey;
use precomp_proto::verdict::{SignedVerdict, VerdictError};

use crate::api::{IndexBuild, VerdictStored};
use crate::store::verdicts::VerdictPut;
use crate::store::ArtifactStoreError;
use crate::{Artifacts, EffectiveKeys, Publisher, Refusal};

impl Artifacts {
    /// The auditor keys in effect now: the configured ones (`precomp serve --auditor-key`,
    /// `auditor_keys`) and the trust document's, less the keys it excludes. None while the
    /// trust document cannot be used (fail closed; the policy logs why).
    pub fn auditor_keys(&self) -> Vec<ArtifactPublicKey> {
        self.effective_keys()
            .map(|keys| keys.auditors().to_vec())
            .unwrap_or_default()
    }

    /// Every build of `package` for the index, with `auditors` filled from the auditor keys
    /// in effect ([`Artifacts::auditor_keys`]): the build's signers that are one of them. A
    /// build whose key has other manifests (docs/protocol.md, "Several manifests for one
    /// key") lists the signers of the one `GET manifests/KEY` serves, the builders that
    /// agree (`agreed_by`) and those whose bytes differ (`disagreements`, which flag it).
    pub fn index_builds(&self, package: &str) -> Result<Vec<IndexBuild>, ArtifactStoreError> {
        let keys = self.effective_keys().ok();
        let auditors: Vec<String> = keys
            .as_ref()
            .map(EffectiveKeys::auditor_ids)
            .unwrap_or_default();
        let counts = |id: &str| crate::counts(keys.as_ref(), id);
        let mut builds = self.store.index(package)?;
        let history = self.store.package_history(package)?;
        for build in &mut builds {
            let rows: Vec<&crate::store::history::KeyManifest> =
                history.iter().filter(|row| row.key == build.key).collect();
            if rows.is_empty() {
                continue;
            }
            let agreeing: Vec<&crate::store::history::KeyManifest> = rows
                .iter()
                .copied()
                .filter(|row| {
                    row.status == crate::store::history::AGREEING && row.in_good_standing(&counts)
                })
                .collect();
            if !build.signers.iter().any(|id| counts(id)) {
                if let Some(served) = agreeing.first() {
                    build.signers = served.signers.clone();
                }
            }
            for id in agreeing.iter().flat_map(|row| row.signers.iter()) {
                if !build.signers.contains(id) && !build.agreed_by.contains(id) {
                    build.agreed_by.push(id.clone());
                }
            }
            build.disagreements =
                crate::disagreements_with(&build.artifact_sha256, rows.into_iter(), &counts);
            build.flagged |= !build.disagreements.is_empty();
        }
        for build in &mut builds {
            build.auditors = build
                .signers
                .iter()
                .filter(|s| auditors.contains(s))
                .cloned()
                .collect();
        }
        Ok(builds)
    }

    /// Verifies a verdict posted to `POST verdicts/KEY` and stores it. The checks, in order:
    /// the trust document, if any, can be used (503); the token may post verdicts
    /// ([`Artifacts::verdict_keys`], 403); the body decodes (422); it is signed by an auditor
    /// key — the token's key when the token is bound to one (403, naming a revocation); the
    /// signature verifies and the verdict is well formed (422); its key is `url_key` (422); a
    /// manifest is published under it (404) and it is the one the verdict names, with its
    /// artifact (422).
    pub fn record_verdict(
        &self,
        url_key: &str,
        bytes: &[u8],
        publisher: &Publisher,
    ) -> Result<VerdictStored, Refusal> {
        let keys = self.effective_keys()?;
        let trusted = keys.verdict_keys(publisher)?;
        let signed = SignedVerdict::decode(bytes)
            .map_err(|e| Refusal::new(422, format!("verdict refused: {e}")))?;
        self.store_verdict(url_key, bytes, &signed, &trusted, &keys, publisher)
    }

    /// The keys a verdict posted with `publisher`'s token may be signed by: the token's key
    /// if it is an auditor key in effect, any auditor key in effect for a token bound to none
    /// (the configured ones and the trust document's, less those it excludes); 403 otherwise
    /// (naming the revocation of a revoked key), 503 when the trust document cannot be used.
    /// Checked before the body is read, and by job leasing.
    pub fn verdict_keys(&self, publisher: &Publisher) -> Result<Vec<ArtifactPublicKey>, Refusal> {
        self.effective_keys()?.verdict_keys(publisher)
    }

    /// Records a verified verdict (see [`Artifacts::record_verdict`]); `signed` and `trusted`
    /// as it checked them, `keys` the keys in effect.
    fn store_verdict(
        &self,
        url_key: &str,
        bytes: &[u8],
        signed: &SignedVerdict,
        trusted: &[ArtifactPublicKey],
        keys: &EffectiveKeys,
        publisher: &Publisher,
    ) -> Result<VerdictStored, Refusal> {
        let verdict = signed.verify(trusted).map_err(|e| match e {
            VerdictError::Untrusted { .. } | VerdictError::Unsigned => Refusal::new(
                403,
                format!(
                    "verdict refused: {e}{}; it must be signed by {}",
                    keys.explain_signers(signed.signer()),
                    trusted
                        .iter()
                        .map(ArtifactPublicKey::key_id)
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ),
            other => Refusal::new(422, format!("verdict refused: {other}")),
        })?;
        if verdict.key != url_key {
            return Err(Refusal::new(
                422,
                format!(
                    "verdict refused: it is about key {}, but was posted to \
                     /precomp/v1/verdicts/{url_key}",
                    verdict.key
                ),
            ));
        }
        let (how, flagged) = match self.store.put_verdict(&verdict, bytes, &publisher.name)? {
            VerdictPut::Stored { how, flagged } => (how, flagged),
            VerdictPut::NoManifest => {
                return Err(Refusal::new(
                    404,
                    format!("verdict refused: no manifest is published for key {url_key}"),
                ))
            }
            VerdictPut::OtherManifest { published } => {
                return Err(Refusal::new(
                    422,
                    format!(
                        "verdict refused: it is about manifest {}, but the manifest published \
                         under {url_key} is {published}",
                        hex::encode(&verdict.manifest_sha256)
                    ),
                ))
            }
            VerdictPut::OtherArtifact { published } => {
                return Err(Refusal::new(
                    422,
                    format!(
                        "verdict refused: it says the published artifact is {}, the manifest \
                         says {published}",
                        hex::encode(&verdict.published_sha256)
                    ),
                ))
            }
        };
        tracing::info!(
            key = %verdict.key,
            auditor = %verdict.auditor_id,
            result = %verdict.result,
            publisher = %publisher.name,
            stored = how,
            "audit verdict recorded"
        );
        Ok(VerdictStored {
            key: verdict.key.clone(),
            auditor: verdict.auditor_id.clone(),
            result: verdict.result.clone(),
            stored: how.to_string(),
            flagged,
        })
    }
}
