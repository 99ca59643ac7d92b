//! Which keys the mirror trusts for uploads: the keys its operator configured (`precomp serve
//! --builder-key` / `--auditor-key`, `builder_keys` / `auditor_keys` in its config file) and,
//! when `DATA/trust/trust.doc` exists, the signed trust document `precomp keys` issues there.
//!
//! **Without a trust document** the rules are those the mirror always had:
//! - a token bound to a key K uploads manifests signed by K: new ones and signatures added to
//!   published ones (K is trusted because the operator bound the token to it);
//! - a token bound to no key uploads manifests signed by a configured builder key;
//! - verdicts: a token bound to a configured auditor key, signed by that key; a token bound to
//!   no key, signed by any configured auditor key.
//!
//! **With a trust document** it is verified ([`TrustPolicy::keys`]): against the root keys it
//! lists (`verify_self`) or, when the operator pinned a root (`trust_root`), against that root
//! and the chain of root rotations from it in `DATA/trust/history/`; and it must not have
//! expired. Then ([`EffectiveKeys`]):
//! - the effective builder keys are the configured builder keys plus the document's keys
//!   valid now with the `builder` role; the auditor keys likewise with `auditor`; a key the
//!   document revokes, or whose validity has ended or not begun, is excluded even when it is
//!   configured;
//! - a token bound to K: an excluded K is refused (403, naming the key, the document version
//!   and the revocation reason); K must be an effective builder key to publish a new
//!   manifest, and an effective auditor key to add its signature to a published manifest or
//!   to post a verdict;
//! - a token bound to no key: a new manifest needs a signature by an effective builder key;
//!   signatures added to a published manifest must be effective auditor keys'; verdicts may
//!   be signed by any effective auditor key.
//!
//! The document is read on every authorization (bounded by [`MAX_TRUST_DOCUMENT_SIZE`]) and
//! verified again only when its bytes changed (the last verified one is kept by digest), so
//! `precomp keys revoke` on the mirror's data directory takes effect on the next upload,
//! without a restart. A document that cannot be used — unreadable, damaged, signed by the
//! wrong keys, rolled back, expired — refuses every upload (503, saying which check failed
//! and how to fix it): the mirror never falls back to the configured keys alone. With
//! `trust_root` set, a missing document refuses uploads too.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use precomp_proto::file::ReadError;
use precomp_proto::manifest::ArtifactPublicKey;
use precomp_proto::trust::{
    ChainError, KeyStatus, Role, SignedTrustDocument, TrustDocument, TrustError,
    MAX_TRUST_DOCUMENT_SIZE,
};
use sha2::{Digest, Sha256};

use super::{Publisher, Refusal};
pub(crate) use precomp_proto::time::{unix_now, utc};

/// At most this many versions are followed from the pinned root to the current document.
pub use precomp_proto::trust::MAX_CHAIN_STEPS as MAX_TRUST_CHAIN_STEPS;

/// Bound on the keys one refusal message names.
const MAX_KEYS_NAMED: usize = 8;

/// The status of an upload refused because the trust document cannot be used.
const UNUSABLE: u16 = 503;

/// A trust document that stays unusable is logged again after this long.
const RELOG_AFTER: Duration = Duration::from_secs(600);

/// The trust configuration of a mirror and the trust document it last verified.
pub struct TrustPolicy {
    /// `DATA/trust`.
    dir: PathBuf,
    builder_keys: Vec<ArtifactPublicKey>,
    auditor_keys: Vec<ArtifactPublicKey>,
    root: Option<ArtifactPublicKey>,
    verified: Mutex<Option<Verified>>,
    /// The last refusal logged (its text without digits, which hold times) and when, so a
    /// broken document is logged when the problem changes and every [`RELOG_AFTER`], not on
    /// every request.
    last_logged: Mutex<Option<(String, Instant)>>,
}

/// A verified document, its exact bytes and their digest.
struct Verified {
    digest: [u8; 32],
    bytes: Vec<u8>,
    document: Arc<TrustDocument>,
}

impl TrustPolicy {
    /// The policy of a mirror whose trust directory is `dir` (`DATA/trust`), with the
    /// configured builder and auditor keys and, if pinned, the root the document must chain to.
    pub fn new(
        dir: PathBuf,
        builder_keys: Vec<ArtifactPublicKey>,
        auditor_keys: Vec<ArtifactPublicKey>,
        root: Option<ArtifactPublicKey>,
    ) -> TrustPolicy {
        TrustPolicy {
            dir,
            builder_keys,
            auditor_keys,
            root,
            verified: Mutex::new(None),
            last_logged: Mutex::new(None),
        }
    }

    pub fn configured_builder_keys(&self) -> &[ArtifactPublicKey] {
        &self.builder_keys
    }

    pub fn configured_auditor_keys(&self) -> &[ArtifactPublicKey] {
        &self.auditor_keys
    }

    pub fn trust_root(&self) -> Option<&ArtifactPublicKey> {
        self.root.as_ref()
    }

    /// `DATA/trust/trust.doc`.
    pub fn document_path(&self) -> PathBuf {
        self.dir.join("trust.doc")
    }

    /// The keys in effect now.
    pub fn keys(&self) -> Result<EffectiveKeys, Refusal> {
        self.keys_at(unix_now())
    }

    /// The keys in effect at `now` (Unix seconds): the configured ones without a trust
    /// document, else as the verified, unexpired document says (see the module docs). A
    /// document that cannot be used is a refusal (503) saying why and what to do.
    pub fn keys_at(&self, now: i64) -> Result<EffectiveKeys, Refusal> {
        let result = self.load(now);
        if let Err(refusal) = &result {
            let problem: String = refusal
                .message
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .collect();
            let mut last = self
                .last_logged
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let logged_lately = last
                .as_ref()
                .is_some_and(|(text, at)| *text == problem && at.elapsed() < RELOG_AFTER);
            if !logged_lately {
                tracing::error!("{}", refusal.message);
                *last = Some((problem, Instant::now()));
            }
        }
        result
    }

    fn load(&self, now: i64) -> Result<EffectiveKeys, Refusal> {
        let path = self.document_path();
        let bytes = match read_bounded(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(refuse_read(&path, &e)),
        };
        let Some(bytes) = bytes else {
            if let Some(root) = &self.root {
                return Err(Refusal::new(
                    UNUSABLE,
                    format!(
                        "uploads are refused: trust_root pins {} but there is no trust document \
                         at {}: issue one with `precomp keys init --root ROOT.key` on the \
                         mirror's data directory (or copy the trust directory there), or remove \
                         trust_root (--trust-root, PRECOMP_TRUST_ROOT) from the mirror's settings",
                        root.key_id(),
                        path.display()
                    ),
                ));
            }
            return Ok(EffectiveKeys::resolve(
                &self.builder_keys,
                &self.auditor_keys,
                None,
                now,
            ));
        };
        let document = self.verify(&path, &bytes)?;
        document.check_fresh(now).map_err(|e| unusable(&path, &e))?;
        Ok(EffectiveKeys::resolve(
            &self.builder_keys,
            &self.auditor_keys,
            Some(document),
            now,
        ))
    }

    /// The document `bytes` (read from `path`) verified, or the one verified before if the
    /// bytes are the same.
    fn verify(&self, path: &Path, bytes: &[u8]) -> Result<Arc<TrustDocument>, Refusal> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = verified.as_ref() {
            if held.digest == digest {
                return Ok(held.document.clone());
            }
        }
        let document = match &self.root {
            None => SignedTrustDocument::decode(bytes)
                .and_then(|signed| signed.verify_self())
                .map_err(|e| unusable(path, &e))?,
            Some(root) => self.follow(path, root, verified.as_ref(), bytes)?,
        };
        let document = Arc::new(document);
        let (builders, auditors) = role_ids(&document);
        tracing::info!(
            version = document.version,
            expires_at = document.expires_at,
            builders = ?builders,
            auditors = ?auditors,
            revoked = ?document.revocations.iter().map(|r| r.key_id.as_str()).collect::<Vec<_>>(),
            "trust document verified: uploads follow it"
        );
        *verified = Some(Verified {
            digest,
            bytes: bytes.to_vec(),
            document: document.clone(),
        });
        Ok(document)
    }

    /// Verifies `bytes` as a client pinning `root` and holding `held` does
    /// ([`precomp_proto::trust::follow`], the walk clients use too): signed by a root the held
    /// version trusts (`root` when nothing is held), newer than it; across root rotations the
    /// versions in between are read from `history/` and verified one by one. Holding nothing,
    /// the chain starts at the first version the pinned root signed.
    fn follow(
        &self,
        path: &Path,
        root: &ArtifactPublicKey,
        held: Option<&Verified>,
        bytes: &[u8],
    ) -> Result<TrustDocument, Refusal> {
        let pair = held.map(|h| (h.document.as_ref(), h.bytes.as_slice()));
        let history = |version: u64| self.dir.join("history").join(format!("{version}.doc"));
        let read = |version| {
            let path = history(version);
            std::future::ready(match read_bounded(&path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(refuse_read(&path, &e)),
            })
        };
        // The reads are local and complete at once: the future is ready when first polled.
        let followed = futures::executor::block_on(precomp_proto::trust::follow(
            pair,
            root,
            bytes.to_vec(),
            read,
        ));
        // The current document's version (it was decoded to get this far).
        let target = SignedTrustDocument::decode(bytes)
            .and_then(|s| s.unverified_document())
            .map_or(0, |d| d.version);
        followed.map(|f| f.document).map_err(|e| match e {
            ChainError::Latest(e) => unusable(path, &e),
            ChainError::Step { version, error } => {
                let at = if version == target {
                    path.to_path_buf()
                } else {
                    history(version)
                };
                unusable(&at, &error)
            }
            ChainError::TooFar { start, target } => Refusal::new(
                UNUSABLE,
                format!(
                    "uploads are refused until the mirror's trust document can be used: {}: \
                     root check failed: version {target} is not signed by the pinned \
                     trust_root {} and cannot be chained to it (versions {start} to {target}, \
                     at most {MAX_TRUST_CHAIN_STEPS} are followed). Set trust_root to the \
                     public key of the root that issues the document now (`precomp keys list` \
                     shows it)",
                    path.display(),
                    root.key_id()
                ),
            ),
            ChainError::Missing { version } => Refusal::new(
                UNUSABLE,
                format!(
                    "uploads are refused until the mirror's trust document can be used: {}: \
                     root check failed: version {target} is not signed by the pinned \
                     trust_root {}, and {} is missing, so the chain of root rotations from it \
                     cannot be followed. Restore the trust directory's history (a backup, or where the \
                     document was issued), or set trust_root to the current root's public key",
                    path.display(),
                    root.key_id(),
                    history(version).display()
                ),
            ),
            ChainError::WrongVersion { version, .. } => Refusal::new(
                UNUSABLE,
                format!(
                    "uploads are refused until the mirror's trust document can be used: {} is \
                     not trust document version {version}; restore the trust directory from a \
                     backup",
                    history(version).display()
                ),
            ),
            ChainError::Read(refusal) => refusal,
        })
    }
}

/// The keys in effect for one authorization, and the document they come from.
#[derive(Clone, Debug)]
pub struct EffectiveKeys {
    builders: Vec<ArtifactPublicKey>,
    auditors: Vec<ArtifactPublicKey>,
    document: Option<Arc<TrustDocument>>,
    now: i64,
}

impl EffectiveKeys {
    /// The configured keys, and with a (verified) `document` its keys valid at `now` by role,
    /// less every key it excludes at `now` (revoked, expired, not yet valid).
    pub fn resolve(
        configured_builders: &[ArtifactPublicKey],
        configured_auditors: &[ArtifactPublicKey],
        document: Option<Arc<TrustDocument>>,
        now: i64,
    ) -> EffectiveKeys {
        let Some(doc) = &document else {
            return EffectiveKeys {
                builders: configured_builders.to_vec(),
                auditors: configured_auditors.to_vec(),
                document: None,
                now,
            };
        };
        let signing = doc.signing_keys(now);
        let with_role = |configured: &[ArtifactPublicKey], role: Role| {
            let mut keys: Vec<ArtifactPublicKey> = Vec::new();
            let listed = signing
                .iter()
                .filter(|(_, roles)| roles.contains(&role))
                .map(|(key, _)| key);
            let in_good_standing = configured.iter().filter(|key| {
                matches!(
                    doc.status(&key.key_id(), now),
                    None | Some(KeyStatus::Active)
                )
            });
            for key in in_good_standing.chain(listed) {
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
            keys
        };
        EffectiveKeys {
            builders: with_role(configured_builders, Role::Builder),
            auditors: with_role(configured_auditors, Role::Auditor),
            document,
            now,
        }
    }

    pub fn builders(&self) -> &[ArtifactPublicKey] {
        &self.builders
    }

    pub fn auditors(&self) -> &[ArtifactPublicKey] {
        &self.auditors
    }

    pub fn builder_ids(&self) -> Vec<String> {
        self.builders
            .iter()
            .map(ArtifactPublicKey::key_id)
            .collect()
    }

    pub fn auditor_ids(&self) -> Vec<String> {
        self.auditors
            .iter()
            .map(ArtifactPublicKey::key_id)
            .collect()
    }

    /// The version of the trust document in effect; `None` without one.
    pub fn document_version(&self) -> Option<u64> {
        self.document.as_ref().map(|d| d.version)
    }

    /// Why the trust document excludes `key_id` now; `None` when it does not.
    pub fn exclusion(&self, key_id: &str) -> Option<String> {
        let document = self.document.as_ref()?;
        let version = document.version;
        Some(match document.status(key_id, self.now)? {
            KeyStatus::Active => return None,
            KeyStatus::Revoked { reason, revoked_at } => format!(
                "trust document version {version} revokes {key_id}: {reason:?} (revoked {})",
                utc(revoked_at)
            ),
            KeyStatus::Expired { not_after } => format!(
                "the validity of {key_id} in trust document version {version} ended {}",
                utc(not_after)
            ),
            KeyStatus::NotYetValid { not_before } => format!(
                "{key_id} is valid in trust document version {version} only from {}",
                utc(not_before)
            ),
        })
    }

    /// The key that supersedes `key_id` in the trust document (`precomp keys rotate`), if
    /// any. A superseded builder key publishes nothing new; its signatures on what it
    /// published before still count, until its validity ends.
    pub fn superseded_by(&self, key_id: &str) -> Option<&str> {
        self.document
            .as_ref()?
            .key(key_id)
            .map(|entry| entry.superseded_by.as_str())
            .filter(|new| !new.is_empty())
    }

    fn superseded_refusal(&self, key_id: &str) -> Refusal {
        Refusal::new(
            403,
            format!(
                "{key_id} was superseded by {} (trust document version {}): it publishes no new \
                 builds; sign with the new key and use its token (`precomp token create --name \
                 NAME --key NEW.pub`). What it published before still counts",
                self.superseded_by(key_id).unwrap_or("another key"),
                self.document_version().unwrap_or(0)
            ),
        )
    }

    /// The keys whose signature on a manifest uploaded with `publisher`'s token can count
    /// (checked before the body is read): see the module docs. Which of them a given upload
    /// needs — a builder's for a new manifest, an auditor's to countersign — is
    /// [`EffectiveKeys::check_roles`].
    pub fn manifest_keys(&self, publisher: &Publisher) -> Result<Vec<ArtifactPublicKey>, Refusal> {
        match (&publisher.key, &self.document) {
            (Some(key), None) => Ok(vec![key.clone()]),
            (Some(key), Some(document)) => {
                self.refuse_excluded(publisher, key)?;
                if self.builders.contains(key) || self.auditors.contains(key) {
                    return Ok(vec![key.clone()]);
                }
                Err(Refusal::new(
                    403,
                    format!(
                        "token {:?} is bound to {}, which is neither a builder nor an auditor key \
                         of this mirror: trust document version {} does not give it either role \
                         and it is not configured (--builder-key, --auditor-key). Add it with \
                         `precomp keys add FILE.pub --role builder --root ROOT.key` (it counts \
                         from the next upload on, no restart needed)",
                        publisher.name,
                        key.key_id(),
                        document.version
                    ),
                ))
            }
            (None, None) if !self.builders.is_empty() => Ok(self.builders.clone()),
            (None, None) => Err(Refusal::new(
                403,
                format!(
                    "token {:?} is bound to no key and this mirror trusts no builder keys, so \
                     nothing it uploads could be published: start `precomp serve` with \
                     --builder-key FILE.pub (or `builder_keys = [\"FILE.pub\"]` in its config), \
                     issue a trust document with builder keys (`precomp keys init`), or create a \
                     token bound to the builder's key with `precomp token create --name NAME \
                     --key FILE.pub`",
                    publisher.name
                ),
            )),
            (None, Some(document)) => {
                let mut keys = self.builders.clone();
                for key in &self.auditors {
                    if !keys.contains(key) {
                        keys.push(key.clone());
                    }
                }
                if !keys.is_empty() {
                    return Ok(keys);
                }
                Err(Refusal::new(
                    403,
                    format!(
                        "token {:?} is bound to no key and this mirror trusts no builder or \
                         auditor key now (trust document version {}{}), so nothing it uploads \
                         could be published: add a builder key to the trust document (`precomp \
                         keys add FILE.pub --role builder --root ROOT.key`) or to the mirror's \
                         settings (--builder-key FILE.pub, `builder_keys`), or create a token \
                         bound to the builder's key with `precomp token create --name NAME --key \
                         FILE.pub`",
                        publisher.name,
                        document.version,
                        self.excluded_summary()
                    ),
                ))
            }
        }
    }

    /// The keys a new manifest uploaded with `publisher`'s token may be signed by: what
    /// [`EffectiveKeys::manifest_keys`] allows, less the keys that only countersign (with a
    /// trust document, a token bound to an auditor-only key publishes no new build). 403 when
    /// none is left. Who may lease build jobs.
    pub fn builder_keys_for(
        &self,
        publisher: &Publisher,
    ) -> Result<Vec<ArtifactPublicKey>, Refusal> {
        let keys = self.manifest_keys(publisher)?;
        let Some(document) = &self.document else {
            return Ok(keys);
        };
        let (builders, superseded): (Vec<ArtifactPublicKey>, Vec<ArtifactPublicKey>) = keys
            .into_iter()
            .filter(|key| self.builders.contains(key))
            .partition(|key| self.superseded_by(&key.key_id()).is_none());
        if builders.is_empty() {
            if let Some(old) = superseded.first() {
                return Err(self.superseded_refusal(&old.key_id()));
            }
            return Err(Refusal::new(
                403,
                format!(
                    "token {:?} cannot publish builds: {} no builder key of this mirror (trust \
                     document version {}, --builder-key); give the key the builder role \
                     (`precomp keys add FILE.pub --role builder --root ROOT.key`) or use a \
                     builder's token",
                    publisher.name,
                    match &publisher.key {
                        Some(key) => format!("it is bound to {}, which is", key.key_id()),
                        None => "the mirror has".to_string(),
                    },
                    document.version
                ),
            ));
        }
        Ok(builders)
    }

    /// With a trust document, checks the roles of the keys whose verified signatures
    /// (`signers`) an upload of the manifest under `key` brings: a new manifest (`published`
    /// is `None`) needs a builder key's signature; signatures added to a published one
    /// (`published`: the key ids that already signed it) must all be auditor keys'. Without
    /// a trust document there is nothing to check.
    pub fn check_roles(
        &self,
        key: &str,
        signers: &[String],
        published: Option<&[String]>,
    ) -> Result<(), Refusal> {
        let Some(document) = &self.document else {
            return Ok(());
        };
        match published {
            None => {
                let builders = self.builder_ids();
                let by_builders: Vec<&String> =
                    signers.iter().filter(|s| builders.contains(s)).collect();
                if by_builders
                    .iter()
                    .any(|id| self.superseded_by(id.as_str()).is_none())
                {
                    return Ok(());
                }
                if let Some(old) = by_builders.first() {
                    return Err(self.superseded_refusal(old));
                }
                Err(Refusal::new(
                    403,
                    format!(
                        "manifest refused: role check failed: a new manifest must be signed by a \
                         builder key, and {} {} not one (trust document version {}; auditor keys \
                         only countersign manifests already published): sign it with a \
                         builder's key, or give this key the builder role (`precomp keys add \
                         FILE.pub --role builder --root ROOT.key`)",
                        named(signers),
                        if signers.len() == 1 { "is" } else { "are" },
                        document.version
                    ),
                ))
            }
            Some(present) => {
                let auditors = self.auditor_ids();
                let added: Vec<String> = signers
                    .iter()
                    .filter(|s| !present.contains(s) && !auditors.contains(s))
                    .cloned()
                    .collect();
                if added.is_empty() {
                    return Ok(());
                }
                Err(Refusal::new(
                    403,
                    format!(
                        "manifest refused: role check failed: {key} is already published and \
                         only auditor keys add their signature to a published manifest (they \
                         countersign what they rebuilt); {} {} not an auditor key (trust \
                         document version {}, --auditor-key): give it the auditor role if it \
                         audits (`precomp keys add FILE.pub --role auditor --root ROOT.key`), \
                         or leave the published manifest as it is",
                        named(&added),
                        if added.len() == 1 { "is" } else { "are" },
                        document.version
                    ),
                ))
            }
        }
    }

    /// The keys a verdict posted with `publisher`'s token may be signed by: the token's key if
    /// it is an effective auditor key, any effective auditor key for a token bound to none;
    /// 403 otherwise, naming the revocation of a revoked key.
    pub fn verdict_keys(&self, publisher: &Publisher) -> Result<Vec<ArtifactPublicKey>, Refusal> {
        if let Some(key) = &publisher.key {
            self.refuse_excluded(publisher, key)?;
        }
        let document = self
            .document_version()
            .map(|v| format!(", or the auditor role in trust document version {v}"))
            .unwrap_or_default();
        if self.auditors.is_empty() {
            return Err(Refusal::new(
                403,
                format!(
                    "this mirror trusts no auditor keys{}, so it takes no verdicts: start \
                     `precomp serve` with --auditor-key FILE.pub (the auditor's public key; \
                     `auditor_keys = [\"FILE.pub\"]` in its config), or give the key the \
                     auditor role in the trust document (`precomp keys add FILE.pub --role \
                     auditor --root ROOT.key`)",
                    match self.document_version() {
                        Some(v) =>
                            format!(" (trust document version {v}{})", self.excluded_summary()),
                        None => String::new(),
                    }
                ),
            ));
        }
        match &publisher.key {
            Some(key) if self.auditors.contains(key) => Ok(vec![key.clone()]),
            Some(key) => Err(Refusal::new(
                403,
                format!(
                    "token {:?} is bound to {}, which is not one of this mirror's auditor keys \
                     (--auditor-key, `auditor_keys`{document}); only auditors post verdicts",
                    publisher.name,
                    key.key_id()
                ),
            )),
            None => Ok(self.auditors.clone()),
        }
    }

    /// For a signature check that found no trusted signature: why the trust document excludes
    /// any of `signers` (`; ` and the reasons), or nothing.
    pub fn explain_signers<'a>(&self, signers: impl IntoIterator<Item = &'a str>) -> String {
        let reasons: Vec<String> = signers
            .into_iter()
            .filter_map(|id| self.exclusion(id))
            .take(MAX_KEYS_NAMED)
            .collect();
        if reasons.is_empty() {
            String::new()
        } else {
            format!("; {}", reasons.join("; "))
        }
    }

    /// A 403 when the trust document excludes `key`, the key `publisher`'s token is bound to.
    fn refuse_excluded(
        &self,
        publisher: &Publisher,
        key: &ArtifactPublicKey,
    ) -> Result<(), Refusal> {
        let Some(why) = self.exclusion(&key.key_id()) else {
            return Ok(());
        };
        Err(Refusal::new(
            403,
            format!(
                "token {:?} is bound to {}, which this mirror no longer trusts: {why}. Nothing \
                 signed by it is accepted (manifests, countersignatures, verdicts): give the \
                 builder or auditor a new key (`precomp keys generate`, then `precomp keys add \
                 NEW.pub --role builder|auditor --root ROOT.key`) and a token bound to it \
                 (`precomp token create --name NAME --key NEW.pub`), and revoke this token \
                 (`precomp token revoke {}`)",
                publisher.name,
                key.key_id(),
                publisher.name
            ),
        ))
    }

    /// `; excluded: …` for the configured keys and the document's builder and auditor keys
    /// that the document excludes now (at most [`MAX_KEYS_NAMED`]), or nothing.
    fn excluded_summary(&self) -> String {
        let Some(document) = &self.document else {
            return String::new();
        };
        let mut ids: Vec<String> = Vec::new();
        let listed = document
            .keys
            .iter()
            .filter(|k| k.has_role(Role::Builder) || k.has_role(Role::Auditor))
            .map(|k| k.key_id.clone());
        for id in listed.chain(document.revocations.iter().map(|r| r.key_id.clone())) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let reasons: Vec<String> = ids
            .iter()
            .filter_map(|id| self.exclusion(id))
            .take(MAX_KEYS_NAMED)
            .collect();
        if reasons.is_empty() {
            String::new()
        } else {
            format!("; excluded: {}", reasons.join("; "))
        }
    }
}

/// The document's builder and auditor key ids (whatever their status), for logs.
fn role_ids(document: &TrustDocument) -> (Vec<&str>, Vec<&str>) {
    let with = |role| {
        document
            .keys
            .iter()
            .filter(|k| k.has_role(role))
            .map(|k| k.key_id.as_str())
            .collect()
    };
    (with(Role::Builder), with(Role::Auditor))
}

/// The refusal for a trust document that fails `error`'s check, with what to do about it.
fn unusable(path: &Path, error: &TrustError) -> Refusal {
    const RESTORE: &str = "It is not what `precomp keys` wrote (changed or damaged): copy the \
        newest DATA/trust/history/N.doc over it, or restore the trust directory from a backup; \
        `precomp keys list` checks it";
    let (check, fix) = match error {
        TrustError::TooLarge { .. }
        | TrustError::DecodeEnvelope(_)
        | TrustError::DecodeDocument(_) => ("decode", RESTORE),
        TrustError::Format(_) => (
            "format",
            "Update precomp on the mirror if a newer one issued the document; if not, it was \
             changed or damaged: copy the newest DATA/trust/history/N.doc over it, or restore \
             the trust directory from a backup",
        ),
        TrustError::Invalid { .. } | TrustError::Key(_) => ("structure", RESTORE),
        TrustError::BadSignature { .. } | TrustError::NotSelfSigned { .. } => {
            ("signature", RESTORE)
        }
        TrustError::NotSignedByTrustedRoot { .. } => (
            "root",
            "trust_root (--trust-root, PRECOMP_TRUST_ROOT) must be the public key of a root that \
             signed this version or an earlier one: root rotations since are followed through \
             DATA/trust/history/, which must be intact (`precomp keys list` shows the current \
             roots)",
        ),
        TrustError::Rollback { .. } | TrustError::Fork { .. } => (
            "version",
            "Put the newest version back (DATA/trust/history/ keeps each one), or restart the \
             mirror if the document was deliberately restored from a backup",
        ),
        TrustError::Expired { .. } => (
            "expiry",
            "Renew it on the mirror's data directory: `precomp keys renew --root ROOT.key`; \
             uploads resume with the next request",
        ),
    };
    Refusal::new(
        UNUSABLE,
        format!(
            "uploads are refused until the mirror's trust document can be used: {}: {check} \
             check failed: {error}. {fix}",
            path.display()
        ),
    )
}

/// The file at `path`, at most [`MAX_TRUST_DOCUMENT_SIZE`] bytes.
fn read_bounded(path: &Path) -> Result<Vec<u8>, ReadError> {
    precomp_proto::file::read_bounded(path, MAX_TRUST_DOCUMENT_SIZE as u64)
}

/// A trust file that is there but cannot be read (permissions, or over the size bound).
fn refuse_read(path: &Path, error: &ReadError) -> Refusal {
    match error {
        ReadError::TooLarge { size, .. } => unusable(
            path,
            &TrustError::TooLarge {
                size: *size as usize,
            },
        ),
        ReadError::Io { source, .. } => Refusal::new(
            UNUSABLE,
            format!(
                "uploads are refused until the mirror's trust document can be used: {}: cannot \
                 be read ({source}): the mirror's user must be able to read the trust directory",
                path.display()
            ),
        ),
    }
}

/// Key ids for a message: at most [`MAX_KEYS_NAMED`], then how many more.
fn named(ids: &[String]) -> String {
    if ids.is_empty() {
        return "nobody".into();
    }
    let mut text = ids
        .iter()
        .take(MAX_KEYS_NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > MAX_KEYS_NAMED {
        text.push_str(&format!(" and {} more", ids.len() - MAX_KEYS_NAMED));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use precomp_proto::manifest::ArtifactSigningKey;
    use precomp_proto::trust::{Revocation, TrustKey, TRUST_FORMAT};
    use prost::Message;

    const DAY: i64 = 86_400;
    const T0: i64 = 1_700_000_000;
    const NOW: i64 = T0 + 2 * DAY;

    fn document(version: u64, keys: Vec<TrustKey>, revocations: Vec<Revocation>) -> TrustDocument {
        TrustDocument {
            format: TRUST_FORMAT,
            version,
            issued_at: T0,
            expires_at: T0 + 365 * DAY,
            keys,
            revocations,
        }
    }

    fn entry(key: &ArtifactSigningKey, roles: &[Role]) -> TrustKey {
        TrustKey::new(&key.public_key(), "k", roles, T0).unwrap()
    }

    fn revocation(key: &ArtifactSigningKey, reason: &str) -> Revocation {
        Revocation {
            key_id: key.public_key().key_id(),
            reason: reason.into(),
            revoked_at: T0 + DAY,
            version: 0,
        }
    }

    fn signed(document: &TrustDocument, signers: &[&ArtifactSigningKey]) -> Vec<u8> {
        SignedTrustDocument::sign(document, signers)
            .unwrap()
            .encode_to_vec()
    }

    fn publisher(key: Option<&ArtifactSigningKey>) -> Publisher {
        Publisher {
            name: "t1".into(),
            key: key.map(ArtifactSigningKey::public_key),
            scopes: None,
        }
    }

    fn ids(keys: &[ArtifactPublicKey]) -> Vec<String> {
        keys.iter().map(ArtifactPublicKey::key_id).collect()
    }

    fn id(key: &ArtifactSigningKey) -> String {
        key.public_key().key_id()
    }

    /// The keys of the role tests: a root; a builder, an auditor and a key with both roles in
    /// the document; a configured builder the document does not list; a configured builder it
    /// revokes; a configured auditor whose validity in it ended; a key valid only later.
    struct Cast {
        root: ArtifactSigningKey,
        builder: ArtifactSigningKey,
        auditor: ArtifactSigningKey,
        both: ArtifactSigningKey,
        configured: ArtifactSigningKey,
        revoked: ArtifactSigningKey,
        expired: ArtifactSigningKey,
        later: ArtifactSigningKey,
        stranger: ArtifactSigningKey,
    }

    impl Cast {
        fn new() -> Cast {
            let k = ArtifactSigningKey::generate;
            Cast {
                root: k(),
                builder: k(),
                auditor: k(),
                both: k(),
                configured: k(),
                revoked: k(),
                expired: k(),
                later: k(),
                stranger: k(),
            }
        }

        fn document(&self) -> TrustDocument {
            let mut expired = entry(&self.expired, &[Role::Auditor]);
            expired.not_after = T0 + DAY;
            let mut later = entry(&self.later, &[Role::Builder]);
            later.not_before = T0 + 10 * DAY;
            document(
                3,
                vec![
                    entry(&self.root, &[Role::Root]),
                    entry(&self.builder, &[Role::Builder]),
                    entry(&self.auditor, &[Role::Auditor]),
                    entry(&self.both, &[Role::Builder, Role::Auditor]),
                    entry(&self.revoked, &[Role::Builder]),
                    expired,
                    later,
                ],
                vec![revocation(&self.revoked, "laptop stolen")],
            )
        }

        fn keys(&self, with_document: bool) -> EffectiveKeys {
            EffectiveKeys::resolve(
                &[self.configured.public_key(), self.revoked.public_key()],
                &[self.expired.public_key()],
                with_document.then(|| Arc::new(self.document())),
                NOW,
            )
        }
    }

    #[test]
    fn a_superseded_builder_key_publishes_nothing_new_but_its_old_builds_still_count() {
        let (root, old, new) = (
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
        );
        let mut old_entry = entry(&old, &[Role::Builder]);
        old_entry.superseded_by = id(&new);
        let keys = EffectiveKeys::resolve(
            &[],
            &[],
            Some(Arc::new(document(
                4,
                vec![
                    entry(&root, &[Role::Root]),
                    old_entry,
                    entry(&new, &[Role::Builder]),
                ],
                vec![],
            ))),
            NOW,
        );
        // Still a builder key: its signatures on what it published count for clients.
        assert!(keys.builder_ids().contains(&id(&old)));
        assert_eq!(keys.superseded_by(&id(&old)), Some(id(&new).as_str()));
        assert_eq!(keys.superseded_by(&id(&new)), None);

        let refused = keys
            .check_roles(&"k".repeat(64), &[id(&old)], None)
            .unwrap_err();
        assert_eq!(refused.status, 403);
        assert!(
            refused.message.contains("superseded by") && refused.message.contains(&id(&new)),
            "{}",
            refused.message
        );
        keys.check_roles(&"k".repeat(64), &[id(&new)], None)
            .unwrap();
        keys.check_roles(&"k".repeat(64), &[id(&old), id(&new)], None)
            .unwrap();

        // A token bound to the old key leases no build jobs; one bound to the new key does.
        let leased = keys.builder_keys_for(&publisher(Some(&old))).unwrap_err();
        assert!(
            leased.message.contains("superseded by"),
            "{}",
            leased.message
        );
        assert_eq!(
            ids(&keys.builder_keys_for(&publisher(Some(&new))).unwrap()),
            vec![id(&new)]
        );
        // A token bound to no key publishes with the document's current builders only.
        assert_eq!(
            ids(&keys.builder_keys_for(&publisher(None)).unwrap()),
            vec![id(&new)]
        );
    }

    #[test]
    fn effective_keys_add_the_documents_roles_and_exclude_what_it_revokes_or_expired() {
        let cast = Cast::new();
        let keys = cast.keys(true);
        assert_eq!(keys.document_version(), Some(3));
        assert_eq!(
            keys.builder_ids(),
            vec![id(&cast.configured), id(&cast.builder), id(&cast.both)],
            "configured (less the revoked one) then the document's active builders"
        );
        assert_eq!(keys.auditor_ids(), vec![id(&cast.auditor), id(&cast.both)]);
        let revoked = keys.exclusion(&id(&cast.revoked)).unwrap();
        assert!(
            revoked.contains("version 3") && revoked.contains("\"laptop stolen\""),
            "{revoked}"
        );
        assert!(keys
            .exclusion(&id(&cast.expired))
            .unwrap()
            .contains("ended"));
        assert!(keys
            .exclusion(&id(&cast.later))
            .unwrap()
            .contains("only from"));
        assert_eq!(keys.exclusion(&id(&cast.builder)), None);
        assert_eq!(keys.exclusion(&id(&cast.configured)), None, "not listed");

        // Without a document: the configured keys, all of them.
        let plain = cast.keys(false);
        assert_eq!(plain.document_version(), None);
        assert_eq!(
            plain.builder_ids(),
            vec![id(&cast.configured), id(&cast.revoked)]
        );
        assert_eq!(plain.auditor_ids(), vec![id(&cast.expired)]);
        assert_eq!(plain.exclusion(&id(&cast.revoked)), None);
    }

    #[test]
    fn a_token_publishes_countersigns_and_posts_verdicts_by_its_keys_role() {
        let cast = Cast::new();
        let keys = cast.keys(true);
        let manifest_keys = |key: Option<&ArtifactSigningKey>| keys.manifest_keys(&publisher(key));

        // Bound tokens: a builder or auditor key counts; a revoked one is refused by name.
        assert_eq!(
            ids(&manifest_keys(Some(&cast.builder)).unwrap()),
            vec![id(&cast.builder)]
        );
        assert_eq!(
            ids(&manifest_keys(Some(&cast.auditor)).unwrap()),
            vec![id(&cast.auditor)]
        );
        let refused = manifest_keys(Some(&cast.revoked)).unwrap_err();
        assert_eq!(refused.status, 403);
        for expected in [
            id(&cast.revoked).as_str(),
            "version 3",
            "laptop stolen",
            "precomp token revoke t1",
        ] {
            assert!(refused.message.contains(expected), "{}", refused.message);
        }
        let expired = manifest_keys(Some(&cast.expired)).unwrap_err();
        assert!(expired.message.contains("ended"), "{}", expired.message);
        let stranger = manifest_keys(Some(&cast.stranger)).unwrap_err();
        assert_eq!(stranger.status, 403);
        assert!(
            stranger
                .message
                .contains("neither a builder nor an auditor")
                && stranger.message.contains("precomp keys add"),
            "{}",
            stranger.message
        );
        // A token bound to no key: every builder and auditor key in effect.
        assert_eq!(
            ids(&manifest_keys(None).unwrap()),
            vec![
                id(&cast.configured),
                id(&cast.builder),
                id(&cast.both),
                id(&cast.auditor)
            ]
        );

        // New manifests need a builder; signatures added to published ones, auditors.
        let key = "ab".repeat(32);
        let role = keys
            .check_roles(&key, &[id(&cast.auditor)], None)
            .unwrap_err();
        assert_eq!(role.status, 403);
        assert!(
            role.message.contains("role check failed"),
            "{}",
            role.message
        );
        keys.check_roles(&key, &[id(&cast.builder)], None).unwrap();
        keys.check_roles(&key, &[id(&cast.both)], None).unwrap();
        let published = [id(&cast.builder)];
        keys.check_roles(&key, &[id(&cast.auditor)], Some(&published))
            .unwrap();
        keys.check_roles(&key, &[id(&cast.builder)], Some(&published))
            .unwrap();
        let by_builder = keys
            .check_roles(&key, &[id(&cast.configured)], Some(&published))
            .unwrap_err();
        assert!(
            by_builder.message.contains("already published")
                && by_builder.message.contains(&id(&cast.configured)),
            "{}",
            by_builder.message
        );

        // Build jobs: only tokens that can publish a new manifest lease them.
        let builder_keys =
            |key: Option<&ArtifactSigningKey>| keys.builder_keys_for(&publisher(key));
        assert_eq!(
            ids(&builder_keys(Some(&cast.builder)).unwrap()),
            vec![id(&cast.builder)]
        );
        let auditor_only = builder_keys(Some(&cast.auditor)).unwrap_err();
        assert_eq!(auditor_only.status, 403);
        assert!(
            auditor_only.message.contains("cannot publish builds")
                && auditor_only.message.contains(&id(&cast.auditor)),
            "{}",
            auditor_only.message
        );
        assert_eq!(
            ids(&builder_keys(None).unwrap()),
            vec![id(&cast.configured), id(&cast.builder), id(&cast.both)]
        );

        // Verdicts: auditors only, a revoked one refused with its reason.
        let verdict_keys = |key: Option<&ArtifactSigningKey>| keys.verdict_keys(&publisher(key));
        assert_eq!(
            ids(&verdict_keys(Some(&cast.auditor)).unwrap()),
            vec![id(&cast.auditor)]
        );
        assert_eq!(
            ids(&verdict_keys(None).unwrap()),
            vec![id(&cast.auditor), id(&cast.both)]
        );
        let builder = verdict_keys(Some(&cast.builder)).unwrap_err();
        assert!(
            builder
                .message
                .contains("not one of this mirror's auditor keys"),
            "{}",
            builder.message
        );
        assert!(verdict_keys(Some(&cast.expired))
            .unwrap_err()
            .message
            .contains("ended"));
        assert!(keys
            .explain_signers([id(&cast.revoked).as_str()])
            .contains("laptop stolen"));
        assert_eq!(keys.explain_signers([id(&cast.builder).as_str()]), "");

        // Without a document: the token's own key, unconditionally; no role checks.
        let plain = cast.keys(false);
        assert_eq!(
            ids(&plain
                .manifest_keys(&publisher(Some(&cast.stranger)))
                .unwrap()),
            vec![id(&cast.stranger)]
        );
        plain
            .check_roles(&key, &[id(&cast.stranger)], Some(&published))
            .unwrap();
        let none = EffectiveKeys::resolve(&[], &[], None, NOW);
        let refused = none.manifest_keys(&publisher(None)).unwrap_err();
        assert!(
            refused.message.contains("--builder-key")
                && refused
                    .message
                    .contains("precomp token create --name NAME --key"),
            "{}",
            refused.message
        );
        assert_eq!(none.verdict_keys(&publisher(None)).unwrap_err().status, 403);

        // A document that leaves no builder or auditor: the refusal names the exclusions.
        let only_revoked = EffectiveKeys::resolve(
            &[],
            &[],
            Some(Arc::new(document(
                2,
                vec![
                    entry(&cast.root, &[Role::Root]),
                    entry(&cast.revoked, &[Role::Builder]),
                ],
                vec![revocation(&cast.revoked, "laptop stolen")],
            ))),
            NOW,
        );
        let refused = only_revoked.manifest_keys(&publisher(None)).unwrap_err();
        assert!(
            refused.message.contains("laptop stolen") && refused.message.contains("version 2"),
            "{}",
            refused.message
        );
    }

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn the_document_is_read_again_when_it_changes_and_a_broken_one_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (root, builder, configured) = (
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
        );
        let policy = TrustPolicy::new(
            dir.path().to_path_buf(),
            vec![builder.public_key(), configured.public_key()],
            vec![],
            None,
        );
        let path = dir.path().join("trust.doc");

        // No document: the configured keys.
        let keys = policy.keys_at(NOW).unwrap();
        assert_eq!(keys.document_version(), None);
        assert_eq!(keys.builder_ids(), vec![id(&builder), id(&configured)]);

        // Version 1 lists the builder; version 2 revokes it: each seen on the next call.
        let v1 = document(
            1,
            vec![
                entry(&root, &[Role::Root]),
                entry(&builder, &[Role::Builder]),
            ],
            vec![],
        );
        write(&path, &signed(&v1, &[&root]));
        let keys = policy.keys_at(NOW).unwrap();
        assert_eq!(keys.document_version(), Some(1));
        assert_eq!(keys.builder_ids(), vec![id(&builder), id(&configured)]);
        let mut v2 = v1.clone();
        v2.version = 2;
        v2.revocations.push(revocation(&builder, "left the team"));
        let v2_bytes = signed(&v2, &[&root]);
        write(&path, &v2_bytes);
        let keys = policy.keys_at(NOW).unwrap();
        assert_eq!(keys.document_version(), Some(2));
        assert_eq!(keys.builder_ids(), vec![id(&configured)]);
        assert!(keys
            .manifest_keys(&publisher(Some(&builder)))
            .unwrap_err()
            .message
            .contains("left the team"));

        // One byte changed anywhere: refused, never the configured keys alone.
        for at in [3, v2_bytes.len() / 2, v2_bytes.len() - 1] {
            let mut tampered = v2_bytes.clone();
            tampered[at] ^= 0x01;
            write(&path, &tampered);
            let refused = policy.keys_at(NOW).unwrap_err();
            assert_eq!(refused.status, 503, "byte {at}: {}", refused.message);
            assert!(
                refused.message.contains("check failed")
                    && refused.message.contains("history/N.doc"),
                "byte {at}: {}",
                refused.message
            );
        }
        write(&path, &vec![0u8; MAX_TRUST_DOCUMENT_SIZE + 1]);
        assert!(policy
            .keys_at(NOW)
            .unwrap_err()
            .message
            .contains("over the limit"));

        // Expired: refused, saying to renew.
        write(&path, &v2_bytes);
        let refused = policy.keys_at(T0 + 365 * DAY).unwrap_err();
        assert_eq!(refused.status, 503);
        assert!(
            refused.message.contains("expiry check failed")
                && refused.message.contains("precomp keys renew"),
            "{}",
            refused.message
        );
        assert_eq!(policy.keys_at(NOW).unwrap().document_version(), Some(2));
    }

    #[test]
    fn a_pinned_root_is_followed_across_rotations_and_anything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (root1, root2, builder, auditor, stranger) = (
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
        );
        let pinned = |root: &ArtifactSigningKey| {
            TrustPolicy::new(
                dir.path().to_path_buf(),
                vec![],
                vec![],
                Some(root.public_key()),
            )
        };
        let path = dir.path().join("trust.doc");
        let history = |v: u64| dir.path().join(format!("history/{v}.doc"));

        // Pinned, but nothing issued yet: refused.
        let refused = pinned(&root1).keys_at(NOW).unwrap_err();
        assert_eq!(refused.status, 503);
        assert!(
            refused.message.contains("no trust document"),
            "{}",
            refused.message
        );

        // 1: root1 and a builder. 2: root1 rotated to root2 (both sign). 3: root2 adds an
        // auditor, alone.
        let v1 = document(
            1,
            vec![
                entry(&root1, &[Role::Root]),
                entry(&builder, &[Role::Builder]),
            ],
            vec![],
        );
        let v2 = document(
            2,
            vec![
                entry(&root2, &[Role::Root]),
                entry(&builder, &[Role::Builder]),
            ],
            vec![],
        );
        let mut v3 = v2.clone();
        v3.version = 3;
        v3.keys.push(entry(&auditor, &[Role::Auditor]));
        let bytes = [
            signed(&v1, &[&root1]),
            signed(&v2, &[&root1, &root2]),
            signed(&v3, &[&root2]),
        ];
        for (i, b) in bytes.iter().enumerate() {
            write(&history(i as u64 + 1), b);
        }
        write(&path, &bytes[2]);

        let policy = pinned(&root1);
        let keys = policy.keys_at(NOW).unwrap();
        assert_eq!(keys.document_version(), Some(3));
        assert_eq!(keys.builder_ids(), vec![id(&builder)]);
        assert_eq!(keys.auditor_ids(), vec![id(&auditor)]);
        // Pinning the current root works directly.
        assert_eq!(
            pinned(&root2).keys_at(NOW).unwrap().document_version(),
            Some(3)
        );

        // A rollback to an older version, after the mirror saw 3: refused.
        write(&path, &bytes[1]);
        let rollback = policy.keys_at(NOW).unwrap_err();
        assert!(
            rollback.message.contains("rollback"),
            "{}",
            rollback.message
        );
        write(&path, &bytes[2]);
        assert_eq!(policy.keys_at(NOW).unwrap().document_version(), Some(3));

        // A root nobody issued the document with; a document its own stranger root signed.
        let refused = pinned(&stranger).keys_at(NOW).unwrap_err();
        assert!(
            refused.message.contains("root check failed"),
            "{}",
            refused.message
        );
        let forged = document(
            4,
            vec![entry(&stranger, &[Role::Root, Role::Builder])],
            vec![],
        );
        write(&path, &signed(&forged, &[&stranger]));
        let refused = policy.keys_at(NOW).unwrap_err();
        assert_eq!(refused.status, 503);
        assert!(
            refused.message.contains("check failed"),
            "{}",
            refused.message
        );

        // 4: root2 rotated to root3 (both sign). 5: root3 alone. A mirror that held 3 follows;
        // so does a fresh one pinning root1 (from version 1) or root2 (from version 2, the
        // first it signed).
        let root3 = ArtifactSigningKey::generate();
        let mut v4 = v3.clone();
        v4.version = 4;
        v4.keys[0] = entry(&root3, &[Role::Root]);
        let mut v5 = v4.clone();
        v5.version = 5;
        v5.expires_at += DAY;
        let later = [signed(&v4, &[&root2, &root3]), signed(&v5, &[&root3])];
        write(&history(4), &later[0]);
        write(&history(5), &later[1]);
        write(&path, &later[1]);
        assert_eq!(policy.keys_at(NOW).unwrap().document_version(), Some(5));
        for root in [&root1, &root2, &root3] {
            assert_eq!(
                pinned(root).keys_at(NOW).unwrap().document_version(),
                Some(5)
            );
        }

        // Without the history, the chain from the pinned root cannot be followed; a root
        // pinned after the missing version does not need it.
        std::fs::remove_file(history(2)).unwrap();
        let refused = pinned(&root1).keys_at(NOW).unwrap_err();
        assert!(
            refused.message.contains("is missing"),
            "{}",
            refused.message
        );
        std::fs::remove_file(history(3)).unwrap();
        assert_eq!(
            pinned(&root2).keys_at(NOW).unwrap().document_version(),
            Some(5),
            "root2 also signed version 4"
        );
        std::fs::remove_file(history(4)).unwrap();
        let refused = pinned(&root2).keys_at(NOW).unwrap_err();
        assert!(
            refused.message.contains("root check failed"),
            "{}",
            refused.message
        );
        assert_eq!(
            pinned(&root3).keys_at(NOW).unwrap().document_version(),
            Some(5)
        );
    }

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_740_823_200), "2025-03-01T10:00:00Z");
    }
}
