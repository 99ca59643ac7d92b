//! The trust document: which keys sign artifact manifests, in which role, until when, and
//! which are revoked, signed by a root key that clients pin.
//!
//! A [`TrustDocument`] (protobuf) is versioned: every change (a key added, rotated or revoked,
//! a new expiry) is a new document with `version` one higher. A [`SignedTrustDocument`]
//! carries its exact bytes and ed25519 signatures over them (the same keys and key ids as
//! manifests, under another signature context, so neither can pass for the other).
//!
//! A client pins a root key and holds the last document it verified. It accepts a document
//! ([`accept`]) only when:
//! - it is signed by a root key the client already trusts (the pinned key when it holds
//!   nothing; else the unrevoked root keys of the document it holds), and by one of the root
//!   keys the document itself lists (so a root rotation is signed by the old root and the
//!   new one, and a client holding the old document follows it);
//! - its version is higher than the one held (a lower one is a rollback, the same version
//!   with other bytes a fork: both refused);
//! - it is well formed ([`TrustDocument::validate`]); and, for the one finally used, not
//!   expired ([`TrustDocument::check_fresh`]).
//!
//! A client that fell several versions behind across a root rotation walks the versions in
//! between, one at a time (the mirror serves each by number).

use std::collections::BTreeSet;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signer, Verifier};
use prost::Message;

use crate::manifest::{ArtifactPublicKey, ArtifactSigningKey, Signature};

/// The trust document format this code writes and reads.
pub const TRUST_FORMAT: u32 = 1;

/// Signatures are over this prefix followed by the encoded document.
pub const TRUST_SIGNATURE_CONTEXT: &[u8] = b"precomp-trust-v1\n";

/// Bound on an encoded signed trust document.
pub const MAX_TRUST_DOCUMENT_SIZE: usize = 1024 * 1024;

/// Bound on the keys and on the revocations one document lists.
pub const MAX_TRUST_ENTRIES: usize = 4096;

/// Bound on a revocation reason or a key name, in bytes.
pub const MAX_TRUST_TEXT: usize = 256;

#[derive(Clone, PartialEq, Message)]
pub struct TrustDocument {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// 1 for the first document, one more for each next one.
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// Unix seconds.
    #[prost(int64, tag = "3")]
    pub issued_at: i64,
    /// Unix seconds: clients refuse to use the document from then on (re-issue it before).
    #[prost(int64, tag = "4")]
    pub expires_at: i64,
    #[prost(message, repeated, tag = "5")]
    pub keys: Vec<TrustKey>,
    #[prost(message, repeated, tag = "6")]
    pub revocations: Vec<Revocation>,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct TrustKey {
    /// `ed25519:` and 16 hex digits, as [`ArtifactPublicKey::key_id`] gives.
    #[prost(string, tag = "1")]
    pub key_id: String,
    /// SPKI PEM, as `precomp keys generate` writes `NAME.pub`.
    #[prost(string, tag = "2")]
    pub public_key_pem: String,
    /// `root`, `builder`, `auditor` ([`Role`]).
    #[prost(string, repeated, tag = "3")]
    pub roles: Vec<String>,
    /// Unix seconds; 0: no lower bound.
    #[prost(int64, tag = "4")]
    pub not_before: i64,
    /// Unix seconds; 0: no upper bound (until rotated out or revoked).
    #[prost(int64, tag = "5")]
    pub not_after: i64,
    /// A label for people (e.g. the builder's host name).
    #[prost(string, tag = "6")]
    pub name: String,
    /// The key that replaced this one in a rotation; it should sign nothing new.
    #[prost(string, tag = "7")]
    pub superseded_by: String,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct Revocation {
    #[prost(string, tag = "1")]
    pub key_id: String,
    #[prost(string, tag = "2")]
    pub reason: String,
    /// Unix seconds.
    #[prost(int64, tag = "3")]
    pub revoked_at: i64,
    /// The document version that added this revocation; 0 in documents written before the
    /// field existed (unknown).
    #[prost(uint64, tag = "4")]
    pub version: u64,
}

/// The signed envelope: the document's exact bytes and the signatures over them.
#[derive(Clone, PartialEq, Message)]
pub struct SignedTrustDocument {
    #[prost(bytes = "vec", tag = "1")]
    pub document: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    pub signatures: Vec<Signature>,
}

/// What a key in a trust document may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Signs trust documents.
    Root,
    /// Signs the manifests of what it built.
    Builder,
    /// Countersigns manifests of what it rebuilt and found identical.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Builder => "builder",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "root" => Some(Role::Root),
            "builder" => Some(Role::Builder),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a key stands at a given time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Revoked { reason: String, revoked_at: i64 },
    NotYetValid { not_before: i64 },
    Expired { not_after: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("trust document is {size} bytes, over the limit of {MAX_TRUST_DOCUMENT_SIZE}")]
    TooLarge { size: usize },
    #[error("not a signed trust document: {0}")]
    DecodeEnvelope(String),
    #[error("the signed bytes are not a trust document: {0}")]
    DecodeDocument(String),
    #[error("trust document format {0} is not supported (this precomp reads format {TRUST_FORMAT}); update precomp")]
    Format(u32),
    #[error("trust document version {version}: {message}")]
    Invalid { version: u64, message: String },
    #[error("trust document: signature by {key_id} does not verify: the document or the signature was changed")]
    BadSignature { key_id: String },
    #[error("trust document version {version} is not signed by a root key this client trusts ({trusted}); signed by: {signers}")]
    NotSignedByTrustedRoot {
        version: u64,
        trusted: String,
        signers: String,
    },
    #[error("trust document version {version} is not signed by any root key it lists ({roots})")]
    NotSelfSigned { version: u64, roots: String },
    #[error("trust document version {offered} is older than version {held}, which this client already verified: refusing a rollback")]
    Rollback { held: u64, offered: u64 },
    #[error("trust document version {version} differs from the version {version} this client already verified: two documents with one version (a fork); refusing both")]
    Fork { version: u64 },
    #[error("trust document version {version} expired at {expires_at} (now {now}); the mirror's operator must re-issue it (`precomp keys renew`)")]
    Expired {
        version: u64,
        expires_at: i64,
        now: i64,
    },
    #[error("key: {0}")]
    Key(String),
}

impl TrustDocument {
    /// Checks the structure: format, version, times, keys (ids match their PEM, known roles,
    /// no duplicates), at least one unrevoked root key, bounded texts and counts.
    pub fn validate(&self) -> Result<(), TrustError> {
        let invalid = |message: String| {
            Err(TrustError::Invalid {
                version: self.version,
                message,
            })
        };
        if self.format != TRUST_FORMAT {
            return Err(TrustError::Format(self.format));
        }
        if self.version == 0 {
            return invalid("versions start at 1".into());
        }
        if self.expires_at <= self.issued_at {
            return invalid(format!(
                "expires at {} but was issued at {}",
                self.expires_at, self.issued_at
            ));
        }
        if self.keys.len() > MAX_TRUST_ENTRIES || self.revocations.len() > MAX_TRUST_ENTRIES {
            return invalid(format!("more than {MAX_TRUST_ENTRIES} keys or revocations"));
        }
        let mut ids = BTreeSet::new();
        for key in &self.keys {
            let public = ArtifactPublicKey::from_pem(&key.public_key_pem).map_err(|e| {
                TrustError::Invalid {
                    version: self.version,
                    message: format!("key {}: {e}", key.key_id),
                }
            })?;
            if public.key_id() != key.key_id {
                return invalid(format!(
                    "key {} has the public key of {}",
                    key.key_id,
                    public.key_id()
                ));
            }
            if !ids.insert(key.key_id.as_str()) {
                return invalid(format!("key {} is listed twice", key.key_id));
            }
            if key.roles.is_empty() {
                return invalid(format!("key {} has no role", key.key_id));
            }
            for role in &key.roles {
                if Role::parse(role).is_none() {
                    return invalid(format!(
                        "key {} has the unknown role {role:?} (root, builder, auditor)",
                        key.key_id
                    ));
                }
            }
            if key.not_after != 0 && key.not_after <= key.not_before {
                return invalid(format!(
                    "key {} is valid until {}, before it is valid from {}",
                    key.key_id, key.not_after, key.not_before
                ));
            }
            if key.name.len() > MAX_TRUST_TEXT || key.name.chars().any(char::is_control) {
                return invalid(format!(
                    "key {}: the name must be at most {MAX_TRUST_TEXT} bytes on one line",
                    key.key_id
                ));
            }
        }
        let mut revoked = BTreeSet::new();
        for revocation in &self.revocations {
            if !valid_key_id(&revocation.key_id) {
                return invalid(format!(
                    "revocation of {:?}: not a key id",
                    revocation.key_id
                ));
            }
            if !revoked.insert(revocation.key_id.as_str()) {
                return invalid(format!("key {} is revoked twice", revocation.key_id));
            }
            if revocation.reason.len() > MAX_TRUST_TEXT
                || revocation.reason.chars().any(char::is_control)
            {
                return invalid(format!(
                    "revocation of {}: the reason must be at most {MAX_TRUST_TEXT} bytes on one line",
                    revocation.key_id
                ));
            }
        }
        if self.root_keys().is_empty() {
            return invalid("no unrevoked root key".into());
        }
        Ok(())
    }

    /// The key listed with `key_id`.
    pub fn key(&self, key_id: &str) -> Option<&TrustKey> {
        self.keys.iter().find(|k| k.key_id == key_id)
    }

    pub fn revocation(&self, key_id: &str) -> Option<&Revocation> {
        self.revocations.iter().find(|r| r.key_id == key_id)
    }

    /// The unrevoked keys with the root role (whatever their validity: a root key signs
    /// documents, whose own expiry bounds them).
    pub fn root_keys(&self) -> Vec<ArtifactPublicKey> {
        self.keys
            .iter()
            .filter(|k| k.has_role(Role::Root) && self.revocation(&k.key_id).is_none())
            .filter_map(|k| ArtifactPublicKey::from_pem(&k.public_key_pem).ok())
            .collect()
    }

    /// Where `key_id` stands at `now`; `None` when the document does not list it and no
    /// revocation names it.
    pub fn status(&self, key_id: &str, now: i64) -> Option<KeyStatus> {
        if let Some(revocation) = self.revocation(key_id) {
            return Some(KeyStatus::Revoked {
                reason: revocation.reason.clone(),
                revoked_at: revocation.revoked_at,
            });
        }
        let key = self.key(key_id)?;
        Some(if now < key.not_before {
            KeyStatus::NotYetValid {
                not_before: key.not_before,
            }
        } else if key.not_after != 0 && now >= key.not_after {
            KeyStatus::Expired {
                not_after: key.not_after,
            }
        } else {
            KeyStatus::Active
        })
    }

    /// The keys whose manifest signatures count at `now`: builders and auditors, not revoked,
    /// within their validity, with their roles.
    pub fn signing_keys(&self, now: i64) -> Vec<(ArtifactPublicKey, Vec<Role>)> {
        self.keys
            .iter()
            .filter(|k| self.status(&k.key_id, now) == Some(KeyStatus::Active))
            .filter_map(|k| {
                let roles: Vec<Role> = k
                    .roles
                    .iter()
                    .filter_map(|r| Role::parse(r))
                    .filter(|r| *r != Role::Root)
                    .collect();
                if roles.is_empty() {
                    return None;
                }
                Some((ArtifactPublicKey::from_pem(&k.public_key_pem).ok()?, roles))
            })
            .collect()
    }

    /// Refuses a document that has expired at `now`.
    pub fn check_fresh(&self, now: i64) -> Result<(), TrustError> {
        if now >= self.expires_at {
            return Err(TrustError::Expired {
                version: self.version,
                expires_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }
}

impl TrustKey {
    /// A key entry for `key` with `roles`, valid from `not_before` with no upper bound.
    pub fn new(
        key: &ArtifactPublicKey,
        name: &str,
        roles: &[Role],
        not_before: i64,
    ) -> Result<TrustKey, TrustError> {
        Ok(TrustKey {
            key_id: key.key_id(),
            public_key_pem: key.to_pem().map_err(|e| TrustError::Key(e.to_string()))?,
            roles: roles.iter().map(|r| r.as_str().to_string()).collect(),
            not_before,
            not_after: 0,
            name: name.to_string(),
            superseded_by: String::new(),
        })
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.iter().any(|r| r == role.as_str())
    }
}

impl SignedTrustDocument {
    /// Encodes `document` and signs it with every key of `signers` (one root key, or the old
    /// and the new root in a root rotation).
    pub fn sign(
        document: &TrustDocument,
        signers: &[&ArtifactSigningKey],
    ) -> Result<SignedTrustDocument, TrustError> {
        let bytes = document.encode_to_vec();
        let mut signatures: Vec<Signature> = Vec::new();
        for signer in signers {
            let key_id = signer.public_key().key_id();
            if signatures.iter().any(|s| s.key_id == key_id) {
                continue;
            }
            // The signing key is reachable only through its PKCS#8 form outside the manifest
            // module; trust documents are signed rarely, by the `precomp keys` commands.
            let pem = signer
                .to_pem()
                .map_err(|e| TrustError::Key(e.to_string()))?;
            let dalek = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| TrustError::Key(e.to_string()))?;
            signatures.push(Signature {
                key_id,
                signature: dalek.sign(&signed_message(&bytes)).to_bytes().to_vec(),
            });
        }
        Ok(SignedTrustDocument {
            document: bytes,
            signatures,
        })
    }

    pub fn decode(bytes: &[u8]) -> Result<SignedTrustDocument, TrustError> {
        if bytes.len() > MAX_TRUST_DOCUMENT_SIZE {
            return Err(TrustError::TooLarge { size: bytes.len() });
        }
        <SignedTrustDocument as Message>::decode(bytes)
            .map_err(|e| TrustError::DecodeEnvelope(e.to_string()))
    }

    /// The document, decoded but not verified: only to read its version before verifying.
    pub fn unverified_document(&self) -> Result<TrustDocument, TrustError> {
        <TrustDocument as Message>::decode(self.document.as_slice())
            .map_err(|e| TrustError::DecodeDocument(e.to_string()))
    }

    /// The key ids that signed it (unverified).
    pub fn signer_ids(&self) -> Vec<String> {
        self.signatures.iter().map(|s| s.key_id.clone()).collect()
    }

    /// Verifies the document against the root keys a client trusts: every signature by one
    /// of `trusted_roots` verifies and there is at least one; it is well formed; and one of
    /// the root keys it lists signed it too.
    pub fn verify(&self, trusted_roots: &[ArtifactPublicKey]) -> Result<TrustDocument, TrustError> {
        let document = self.unverified_document()?;
        let by_trusted = self.verified_signers(trusted_roots)?;
        if by_trusted.is_empty() {
            return Err(TrustError::NotSignedByTrustedRoot {
                version: document.version,
                trusted: ids(trusted_roots),
                signers: self.signers_text(),
            });
        }
        document.validate()?;
        self.check_self_signed(&document)?;
        Ok(document)
    }

    /// Verifies the document against the root keys it lists itself: what `precomp keys`
    /// checks of the document it changes (whose root key it is given separately).
    pub fn verify_self(&self) -> Result<TrustDocument, TrustError> {
        let document = self.unverified_document()?;
        document.validate()?;
        self.check_self_signed(&document)?;
        Ok(document)
    }

    fn check_self_signed(&self, document: &TrustDocument) -> Result<(), TrustError> {
        let roots = document.root_keys();
        if self.verified_signers(&roots)?.is_empty() {
            return Err(TrustError::NotSelfSigned {
                version: document.version,
                roots: ids(&roots),
            });
        }
        Ok(())
    }

    /// The ids of the keys in `keys` whose signatures are present; any present that does not
    /// verify is an error.
    fn verified_signers(&self, keys: &[ArtifactPublicKey]) -> Result<Vec<String>, TrustError> {
        let mut signers = Vec::new();
        for signature in &self.signatures {
            let Some(key) = keys.iter().find(|k| k.key_id() == signature.key_id) else {
                continue;
            };
            let pem = key.to_pem().map_err(|e| TrustError::Key(e.to_string()))?;
            let dalek = ed25519_dalek::VerifyingKey::from_public_key_pem(&pem)
                .map_err(|e| TrustError::Key(e.to_string()))?;
            let valid = ed25519_dalek::Signature::from_slice(&signature.signature)
                .map(|sig| dalek.verify(&signed_message(&self.document), &sig).is_ok())
                .unwrap_or(false);
            if !valid {
                return Err(TrustError::BadSignature {
                    key_id: signature.key_id.clone(),
                });
            }
            signers.push(signature.key_id.clone());
        }
        Ok(signers)
    }

    fn signers_text(&self) -> String {
        if self.signatures.is_empty() {
            "nobody".into()
        } else {
            self.signer_ids().join(", ")
        }
    }
}

/// What [`accept`] decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Accepted {
    /// The offered bytes are the document already held.
    Same,
    /// A newer document, verified.
    Newer(TrustDocument),
}

/// Whether a client holding `held` (the document and its exact bytes, or nothing) and pinning
/// `pinned` accepts `offered` (signed document bytes). The trusted roots are the held
/// document's unrevoked root keys, or `pinned` when nothing is held. Expiry is not checked
/// here: intermediate documents of a chain may have expired; check the one finally used with
/// [`TrustDocument::check_fresh`].
pub fn accept(
    held: Option<(&TrustDocument, &[u8])>,
    pinned: &ArtifactPublicKey,
    offered: &[u8],
) -> Result<Accepted, TrustError> {
    let signed = SignedTrustDocument::decode(offered)?;
    let version = signed.unverified_document()?.version;
    let trusted = match held {
        Some((document, bytes)) => {
            if version < document.version {
                return Err(TrustError::Rollback {
                    held: document.version,
                    offered: version,
                });
            }
            if version == document.version {
                return if bytes == offered {
                    Ok(Accepted::Same)
                } else {
                    Err(TrustError::Fork { version })
                };
            }
            document.root_keys()
        }
        None => vec![pinned.clone()],
    };
    signed.verify(&trusted).map(Accepted::Newer)
}

/// `ed25519:` and 16 lowercase hex digits.
pub fn valid_key_id(id: &str) -> bool {
    id.strip_prefix("ed25519:").is_some_and(|digits| {
        digits.len() == 16
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn signed_message(document: &[u8]) -> Vec<u8> {
    [TRUST_SIGNATURE_CONTEXT, document].concat()
}

fn ids(keys: &[ArtifactPublicKey]) -> String {
    if keys.is_empty() {
        return "none".into();
    }
    keys.iter()
        .map(ArtifactPublicKey::key_id)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const T0: i64 = 1_700_000_000;

    fn document(version: u64, keys: Vec<TrustKey>) -> TrustDocument {
        TrustDocument {
            format: TRUST_FORMAT,
            version,
            issued_at: T0,
            expires_at: T0 + 365 * DAY,
            keys,
            revocations: vec![],
        }
    }

    fn entry(key: &ArtifactSigningKey, roles: &[Role]) -> TrustKey {
        TrustKey::new(&key.public_key(), "k", roles, T0).unwrap()
    }

    fn bytes(document: &TrustDocument, signers: &[&ArtifactSigningKey]) -> Vec<u8> {
        SignedTrustDocument::sign(document, signers)
            .unwrap()
            .encode_to_vec()
    }

    #[test]
    fn a_client_follows_rotations_and_refuses_rollbacks_forks_and_strangers() {
        let (root1, root2, builder, stranger) = (
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
        );
        let pinned = root1.public_key();
        let v1 = document(
            1,
            vec![
                entry(&root1, &[Role::Root]),
                entry(&builder, &[Role::Builder]),
            ],
        );
        let v1_bytes = bytes(&v1, &[&root1]);
        let Accepted::Newer(held) = accept(None, &pinned, &v1_bytes).unwrap() else {
            panic!("v1 is new")
        };
        assert_eq!(held, v1);
        assert_eq!(
            accept(Some((&held, &v1_bytes)), &pinned, &v1_bytes).unwrap(),
            Accepted::Same
        );

        // A root rotation is signed by the old and the new root.
        let v2 = document(
            2,
            vec![
                entry(&root2, &[Role::Root]),
                entry(&builder, &[Role::Builder]),
            ],
        );
        let only_new = bytes(&v2, &[&root2]);
        assert!(matches!(
            accept(Some((&held, &v1_bytes)), &pinned, &only_new),
            Err(TrustError::NotSignedByTrustedRoot { version: 2, .. })
        ));
        let only_old = bytes(&v2, &[&root1]);
        assert!(matches!(
            accept(Some((&held, &v1_bytes)), &pinned, &only_old),
            Err(TrustError::NotSelfSigned { version: 2, .. })
        ));
        let v2_bytes = bytes(&v2, &[&root1, &root2]);
        let Accepted::Newer(held2) = accept(Some((&held, &v1_bytes)), &pinned, &v2_bytes).unwrap()
        else {
            panic!("v2 is newer")
        };
        // From v2 on only the new root counts, whatever the pinned key.
        let mut v3 = document(3, v2.keys.clone());
        v3.revocations.push(Revocation {
            key_id: builder.public_key().key_id(),
            reason: "stolen".into(),
            revoked_at: T0 + DAY,
            version: 3,
        });
        let v3_by_old = bytes(&v3, &[&root1]);
        assert!(accept(Some((&held2, &v2_bytes)), &pinned, &v3_by_old).is_err());
        let v3_bytes = bytes(&v3, &[&root2]);
        let Accepted::Newer(held3) = accept(Some((&held2, &v2_bytes)), &pinned, &v3_bytes).unwrap()
        else {
            panic!("v3 is newer")
        };
        assert!(held3.signing_keys(T0 + 2 * DAY).is_empty());
        assert!(matches!(
            held3.status(&builder.public_key().key_id(), T0),
            Some(KeyStatus::Revoked { .. })
        ));

        // Rollback and fork.
        assert_eq!(
            accept(Some((&held3, &v3_bytes)), &pinned, &v2_bytes).unwrap_err(),
            TrustError::Rollback {
                held: 3,
                offered: 2
            }
        );
        let mut other_v3 = v3.clone();
        other_v3.expires_at += 1;
        assert_eq!(
            accept(
                Some((&held3, &v3_bytes)),
                &pinned,
                &bytes(&other_v3, &[&root2])
            )
            .unwrap_err(),
            TrustError::Fork { version: 3 }
        );

        // A stranger's document, and a changed signature.
        let forged = document(1, vec![entry(&stranger, &[Role::Root, Role::Builder])]);
        assert!(matches!(
            accept(None, &pinned, &bytes(&forged, &[&stranger])),
            Err(TrustError::NotSignedByTrustedRoot { .. })
        ));
        let mut tampered = SignedTrustDocument::decode(&v1_bytes).unwrap();
        tampered.signatures[0].signature[5] ^= 1;
        assert!(matches!(
            accept(None, &pinned, &tampered.encode_to_vec()),
            Err(TrustError::BadSignature { .. })
        ));
        let mut changed = SignedTrustDocument::decode(&v1_bytes).unwrap();
        changed.document.push(0);
        assert!(accept(None, &pinned, &changed.encode_to_vec()).is_err());
    }

    #[test]
    fn validity_roles_and_expiry() {
        let (root, builder, auditor) = (
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
        );
        let mut retiring = entry(&builder, &[Role::Builder]);
        retiring.not_after = T0 + 10 * DAY;
        let doc = document(
            1,
            vec![
                entry(&root, &[Role::Root]),
                retiring,
                entry(&auditor, &[Role::Auditor, Role::Builder]),
            ],
        );
        doc.validate().unwrap();
        let ids_at = |now| {
            doc.signing_keys(now)
                .into_iter()
                .map(|(k, roles)| (k.key_id(), roles))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids_at(T0 + DAY),
            vec![
                (builder.public_key().key_id(), vec![Role::Builder]),
                (
                    auditor.public_key().key_id(),
                    vec![Role::Auditor, Role::Builder]
                )
            ]
        );
        assert_eq!(
            ids_at(T0 + 10 * DAY).len(),
            1,
            "the builder's validity ended"
        );
        assert_eq!(ids_at(T0 - 1).len(), 0, "not valid yet");
        assert!(doc.check_fresh(T0 + DAY).is_ok());
        assert!(matches!(
            doc.check_fresh(T0 + 365 * DAY),
            Err(TrustError::Expired { .. })
        ));

        // Malformed documents.
        let mut bad = doc.clone();
        bad.keys[1].public_key_pem = bad.keys[2].public_key_pem.clone();
        assert!(bad.validate().is_err(), "an id that is not its key's");
        let mut bad = doc.clone();
        bad.keys[1].roles = vec!["janitor".into()];
        assert!(bad.validate().is_err());
        let mut bad = doc.clone();
        bad.revocations.push(Revocation {
            key_id: root.public_key().key_id(),
            reason: "lost".into(),
            revoked_at: T0,
            version: 0,
        });
        assert!(bad.validate().is_err(), "no unrevoked root left");
        let mut bad = doc.clone();
        bad.version = 0;
        assert!(bad.validate().is_err());
        let mut bad = doc;
        bad.format = 2;
        assert_eq!(bad.validate().unwrap_err(), TrustError::Format(2));
        assert!(valid_key_id("ed25519:0123456789abcdef"));
        assert!(!valid_key_id("ed25519:0123456789ABCDEF"));
    }
}
