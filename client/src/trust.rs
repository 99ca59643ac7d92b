//! Which manifest signatures the client accepts: trusted keys and a policy.
//!
//! A manifest is accepted when every signature by a trusted key verifies (one that does not
//! means the manifest or the signature was changed), at least `min_signatures` distinct
//! trusted, unrevoked keys signed it, and every required signer is among them. Signatures
//! by unknown keys are ignored; signatures by revoked keys never count.

use std::fmt;
use std::path::{Path, PathBuf};

use precomp_proto::manifest::{ArtifactPublicKey, Manifest, ManifestError, SignedManifest};
use serde::Deserialize;

use crate::error::ClientError;

/// A public key the client trusts, and where it came from.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    pub key: ArtifactPublicKey,
    /// `ed25519:` and 16 hex digits.
    pub id: String,
    /// The file it was read from.
    pub source: PathBuf,
}

/// Trusted keys and what a manifest needs to be accepted.
#[derive(Clone, Debug)]
pub struct TrustPolicy {
    pub keys: Vec<TrustedKey>,
    /// Distinct trusted signers needed (at least 1).
    pub min_signatures: usize,
    /// Key ids that must all have signed.
    pub required: Vec<String>,
    /// Key ids whose signatures never count.
    pub revoked: Vec<String>,
    /// Key ids of auditors (also in `keys`): their signature says they rebuilt the artifact
    /// and got the same bytes. With any, builds an audit flagged are skipped.
    pub auditors: Vec<String>,
    /// Distinct auditors who must have signed.
    pub min_auditors: usize,
    /// Why a key was revoked (key id → reason, as the trust document says), for messages.
    pub revocation_reasons: std::collections::BTreeMap<String, String>,
}

/// Why a signed manifest was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a signed manifest, or its key does not match its inputs.
    Invalid(String),
    /// A signature by a trusted key does not verify.
    BadSignature { key_id: String },
    /// Nobody the client trusts signed it.
    Untrusted { signers: Vec<String> },
    /// Only revoked keys (among the trusted ones) signed it.
    Revoked { key_ids: Vec<String> },
    /// Fewer distinct trusted signers than the policy needs.
    TooFewSignatures { signers: Vec<String>, needed: usize },
    /// A required signer did not sign.
    MissingRequired { missing: Vec<String> },
    /// Fewer auditors signed than the policy needs.
    TooFewAuditors {
        auditors: Vec<String>,
        needed: usize,
    },
}

impl Refusal {
    /// A short machine-readable kind, as `--json` reports it.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) | Refusal::BadSignature { .. } => "verification_failed",
            Refusal::Untrusted { .. } => "untrusted",
            Refusal::Revoked { .. } => "revoked",
            Refusal::TooFewSignatures { .. }
            | Refusal::MissingRequired { .. }
            | Refusal::TooFewAuditors { .. } => "policy",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Invalid(message) => write!(f, "invalid manifest: {message}"),
            Refusal::BadSignature { key_id } => write!(
                f,
                "bad signature by {key_id}: the manifest or its signature was changed"
            ),
            Refusal::Untrusted { signers } if signers.is_empty() => {
                write!(f, "the manifest is not signed")
            }
            Refusal::Untrusted { signers } => write!(
                f,
                "signed only by untrusted keys ({}); trust one with --trust FILE",
                signers.join(", ")
            ),
            Refusal::Revoked { key_ids } => {
                write!(f, "signed only by revoked keys ({})", key_ids.join(", "))
            }
            Refusal::TooFewSignatures { signers, needed } => write!(
                f,
                "{} trusted signature(s) ({}), the policy needs {needed}",
                signers.len(),
                if signers.is_empty() {
                    "none".to_string()
                } else {
                    signers.join(", ")
                }
            ),
            Refusal::MissingRequired { missing } => {
                write!(f, "not signed by required signer(s) {}", missing.join(", "))
            }
            Refusal::TooFewAuditors { auditors, needed } => write!(
                f,
                "audited by {} trusted auditor(s){}, the policy needs {needed}: not yet \
                 rebuilt and countersigned by enough auditors",
                auditors.len(),
                if auditors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", auditors.join(", "))
                }
            ),
        }
    }
}

impl TrustPolicy {
    /// Checks `signed` against the policy; the decoded manifest (its key checked against
    /// its inputs) and the trusted signers.
    pub fn verify(&self, signed: &SignedManifest) -> Result<(Manifest, Vec<String>), Refusal> {
        let active: Vec<ArtifactPublicKey> = self
            .keys
            .iter()
            .filter(|k| !self.revoked.contains(&k.id))
            .map(|k| k.key.clone())
            .collect();
        let (manifest, signers) = match signed.verify(&active) {
            Ok(verified) => verified,
            Err(ManifestError::BadSignature { key_id }) => {
                return Err(Refusal::BadSignature { key_id })
            }
            Err(ManifestError::Untrusted { .. }) => {
                let mut all: Vec<String> =
                    signed.signatures.iter().map(|s| s.key_id.clone()).collect();
                all.dedup();
                let revoked: Vec<String> = all
                    .iter()
                    .filter(|id| self.revoked.contains(id))
                    .cloned()
                    .collect();
                return Err(if revoked.is_empty() {
                    Refusal::Untrusted { signers: all }
                } else {
                    Refusal::Revoked { key_ids: revoked }
                });
            }
            Err(other) => return Err(Refusal::Invalid(other.to_string())),
        };
        if signers.len() < self.min_signatures {
            return Err(Refusal::TooFewSignatures {
                signers,
                needed: self.min_signatures,
            });
        }
        let missing: Vec<String> = self
            .required
            .iter()
            .filter(|id| !signers.contains(id))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(Refusal::MissingRequired { missing });
        }
        let auditors: Vec<String> = signers
            .iter()
            .filter(|id| self.auditors.contains(id))
            .cloned()
            .collect();
        if auditors.len() < self.min_auditors {
            return Err(Refusal::TooFewAuditors {
                auditors,
                needed: self.min_auditors,
            });
        }
        Ok((manifest, signers))
    }

    /// Adds auditors' keys (trusted, and counted as auditors) and how many of them must have
    /// signed; refuses a minimum more unrevoked auditors than there are could meet.
    pub fn with_auditors(
        mut self,
        auditors: Vec<TrustedKey>,
        min_auditors: usize,
    ) -> Result<TrustPolicy, ClientError> {
        for key in auditors {
            if !self.auditors.contains(&key.id) {
                self.auditors.push(key.id.clone());
            }
            if !self.keys.iter().any(|k| k.id == key.id) {
                self.keys.push(key);
            }
        }
        let usable = self
            .auditors
            .iter()
            .filter(|id| !self.revoked.contains(id))
            .count();
        if min_auditors > usable {
            return Err(ClientError::Policy(format!(
                "the policy needs {min_auditors} auditor signature(s) but only {usable} \
                 auditor key(s) are trusted and not revoked; add them with --auditor FILE.pub"
            )));
        }
        self.min_auditors = min_auditors;
        Ok(self)
    }

    /// Records why keys were revoked (key id → reason), so that a refusal names it. The ids
    /// themselves are revoked by [`TrustPolicy::new`]'s `revoked`.
    pub fn with_revocation_reasons(
        mut self,
        reasons: std::collections::BTreeMap<String, String>,
    ) -> TrustPolicy {
        self.revocation_reasons.extend(reasons);
        self
    }

    /// `refusal` as a message, with the reasons of the revocations it names.
    pub fn explain(&self, refusal: &Refusal) -> String {
        let Refusal::Revoked { key_ids } = refusal else {
            return refusal.to_string();
        };
        let reasons: Vec<String> = key_ids
            .iter()
            .filter_map(|id| Some(format!("{id}: {}", self.revocation_reasons.get(id)?)))
            .collect();
        if reasons.is_empty() {
            refusal.to_string()
        } else {
            format!("{refusal}: revoked {}", reasons.join("; "))
        }
    }

    /// Whether the policy names auditors: then builds an audit flagged are not used.
    pub fn has_auditors(&self) -> bool {
        !self.auditors.is_empty()
    }

    /// Builds a policy from its parts, checking that it can be met: at least one key, a
    /// minimum of at least one signature and no more than the trusted unrevoked keys, and
    /// required signers that are trusted and not revoked.
    pub fn new(
        keys: Vec<TrustedKey>,
        min_signatures: usize,
        required: Vec<String>,
        revoked: Vec<String>,
    ) -> Result<TrustPolicy, ClientError> {
        let invalid = |message: String| Err(ClientError::Policy(message));
        let mut unique: Vec<TrustedKey> = Vec::new();
        for key in keys {
            if !unique.iter().any(|k| k.id == key.id) {
                unique.push(key);
            }
        }
        let usable = unique.iter().filter(|k| !revoked.contains(&k.id)).count();
        if unique.is_empty() {
            return invalid(
                "no trusted keys: pass --trust FILE (a builder's public key, PEM) or list keys \
                 under [trust] in the config file"
                    .into(),
            );
        }
        if usable == 0 {
            return invalid("every trusted key is revoked".into());
        }
        if min_signatures == 0 {
            return invalid("min_signatures must be at least 1".into());
        }
        if min_signatures > usable {
            return invalid(format!(
                "the policy needs {min_signatures} signatures but only {usable} trusted key(s) \
                 are not revoked"
            ));
        }
        for id in &required {
            if revoked.contains(id) {
                return invalid(format!("required signer {id} is revoked"));
            }
            if !unique.iter().any(|k| &k.id == id) {
                return invalid(format!(
                    "required signer {id} is not a trusted key; add its public key with --trust"
                ));
            }
        }
        Ok(TrustPolicy {
            keys: unique,
            min_signatures,
            required,
            revoked,
            auditors: Vec::new(),
            min_auditors: 0,
            revocation_reasons: std::collections::BTreeMap::new(),
        })
    }
}

/// Reads every `PUBLIC KEY` PEM block of `path` (one or more ed25519 SPKI keys).
pub fn read_keys(path: &Path) -> Result<Vec<TrustedKey>, ClientError> {
    let text = std::fs::read_to_string(path).map_err(ClientError::io(path))?;
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let bad = |message: String| ClientError::KeyFile {
        path: path.to_path_buf(),
        message,
    };
    let mut keys = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let end = after
            .find(END)
            .ok_or_else(|| bad("a PUBLIC KEY block has no END line".into()))?;
        let pem = &after[..end + END.len()];
        let key = ArtifactPublicKey::from_pem(pem).map_err(|e| bad(e.to_string()))?;
        keys.push(TrustedKey {
            id: key.key_id(),
            key,
            source: path.to_path_buf(),
        });
        rest = &after[end + END.len()..];
    }
    if keys.is_empty() {
        return Err(bad(
            "no `BEGIN PUBLIC KEY` block (expected an ed25519 public key, e.g. from \
             `precomp keys generate`)"
                .into(),
        ));
    }
    Ok(keys)
}

/// A signer reference: a key id (`ed25519:` and 16 hex digits) or a public key file, whose
/// ids it stands for.
pub fn signer_ids(reference: &str, base: &Path) -> Result<Vec<String>, ClientError> {
    if let Some(digits) = reference.strip_prefix("ed25519:") {
        if digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(vec![format!("ed25519:{}", digits.to_ascii_lowercase())]);
        }
        return Err(ClientError::Policy(format!(
            "{reference:?} is not a key id (ed25519: and 16 hex digits)"
        )));
    }
    Ok(read_keys(&base.join(reference))?
        .into_iter()
        .map(|k| k.id)
        .collect())
}

/// The `precomp fetch` config file (TOML). Paths are relative to the file's directory.
///
/// ```toml
/// mirror = "https://hex.example.internal"
/// jobs = 8
/// retries = 3
///
/// [trust]
/// keys = ["keys/builder.pub", "keys/auditor.pub"]
/// min_signatures = 2
/// require = ["keys/auditor.pub"]        # key files or key ids
/// revoked = ["ed25519:0123456789abcdef"]
/// auditors = ["keys/auditor.pub"]       # auditors' public keys (trusted as such)
/// require_auditors = 1                  # distinct auditors who must have countersigned
/// root = "keys/precomp-root.pub"        # pin the root of the mirror's trust document
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    pub mirror: Option<String>,
    pub jobs: Option<usize>,
    pub retries: Option<u32>,
    #[serde(default)]
    pub trust: TrustSection,
    /// The directory relative paths are resolved against (not in the file).
    #[serde(skip)]
    pub base: PathBuf,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustSection {
    #[serde(default)]
    pub keys: Vec<String>,
    pub min_signatures: Option<usize>,
    #[serde(default)]
    pub require: Vec<String>,
    #[serde(default)]
    pub revoked: Vec<String>,
    /// Auditors' public key files.
    #[serde(default)]
    pub auditors: Vec<String>,
    pub require_auditors: Option<usize>,
    /// The root key file (SPKI PEM) that signs the mirror's trust document: its builder and
    /// auditor keys are then trusted too (`precomp fetch --root-key`).
    pub root: Option<String>,
}

impl SettingsFile {
    /// Bound on the config file's size.
    const MAX_SIZE: u64 = 1024 * 1024;

    pub fn read(path: &Path) -> Result<SettingsFile, ClientError> {
        let size = std::fs::metadata(path)
            .map_err(ClientError::io(path))?
            .len();
        let bad = |message: String| ClientError::Settings {
            path: path.to_path_buf(),
            message,
        };
        if size > Self::MAX_SIZE {
            return Err(bad(format!("{size} bytes is too large")));
        }
        let text = std::fs::read_to_string(path).map_err(ClientError::io(path))?;
        let mut settings: SettingsFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        settings.base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(settings)
    }

    /// The trusted keys the file lists.
    pub fn keys(&self) -> Result<Vec<TrustedKey>, ClientError> {
        let mut keys = Vec::new();
        for file in &self.trust.keys {
            keys.extend(read_keys(&self.base.join(file))?);
        }
        Ok(keys)
    }

    /// The auditors' keys the file lists (`[trust] auditors`).
    pub fn auditor_keys(&self) -> Result<Vec<TrustedKey>, ClientError> {
        let mut keys = Vec::new();
        for file in &self.trust.auditors {
            keys.extend(read_keys(&self.base.join(file))?);
        }
        Ok(keys)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use precomp_proto::manifest::ArtifactSigningKey;

    fn trusted(key: &ArtifactSigningKey) -> TrustedKey {
        TrustedKey {
            key: key.public_key(),
            id: key.public_key().key_id(),
            source: PathBuf::from("test.pub"),
        }
    }

    /// plain_ex 1.0.0's inputs (OTP 25, Elixir 1.14.0, prod, any target), no output.
    pub(crate) fn manifest() -> Manifest {
        use precomp_proto::buildkey::{BuildInputs, Manager, PackageRef, Target};
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
        manifest
    }

    #[test]
    fn policy_counts_trusted_unrevoked_signers_and_required_ones() {
        let (builder, auditor, stranger) = (
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
        );
        let mut signed = SignedManifest::sign(&manifest(), &builder);
        let keys = vec![trusted(&builder), trusted(&auditor)];
        let builder_id = builder.public_key().key_id();
        let auditor_id = auditor.public_key().key_id();

        let one = TrustPolicy::new(keys.clone(), 1, vec![], vec![]).unwrap();
        assert_eq!(one.verify(&signed).unwrap().1, vec![builder_id.clone()]);

        let two = TrustPolicy::new(keys.clone(), 2, vec![], vec![]).unwrap();
        assert!(matches!(
            two.verify(&signed),
            Err(Refusal::TooFewSignatures { needed: 2, .. })
        ));
        let audited = TrustPolicy::new(keys.clone(), 1, vec![auditor_id.clone()], vec![]).unwrap();
        assert_eq!(
            audited.verify(&signed).unwrap_err(),
            Refusal::MissingRequired {
                missing: vec![auditor_id.clone()]
            }
        );
        signed.countersign(&auditor);
        assert_eq!(two.verify(&signed).unwrap().1.len(), 2);
        assert!(audited.verify(&signed).is_ok());

        // A revoked builder no longer counts.
        let revoked = TrustPolicy::new(keys.clone(), 1, vec![], vec![builder_id.clone()]).unwrap();
        assert_eq!(revoked.verify(&signed).unwrap().1, vec![auditor_id.clone()]);
        let only_builder = SignedManifest::sign(&manifest(), &builder);
        assert_eq!(
            revoked.verify(&only_builder).unwrap_err(),
            Refusal::Revoked {
                key_ids: vec![builder_id.clone()]
            }
        );

        // Unknown signers are named; a changed signature is caught.
        let by_stranger = SignedManifest::sign(&manifest(), &stranger);
        assert_eq!(
            one.verify(&by_stranger).unwrap_err(),
            Refusal::Untrusted {
                signers: vec![stranger.public_key().key_id()]
            }
        );
        let mut tampered = SignedManifest::sign(&manifest(), &builder);
        tampered.signatures[0].signature[0] ^= 1;
        assert_eq!(
            one.verify(&tampered).unwrap_err(),
            Refusal::BadSignature { key_id: builder_id }
        );
    }

    #[test]
    fn auditor_policies_count_auditors_only() {
        let (builder, auditor, other_auditor) = (
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
        );
        let policy = TrustPolicy::new(vec![trusted(&builder)], 1, vec![], vec![])
            .unwrap()
            .with_auditors(vec![trusted(&auditor), trusted(&other_auditor)], 1)
            .unwrap();
        assert!(policy.has_auditors());
        let mut signed = SignedManifest::sign(&manifest(), &builder);
        assert_eq!(
            policy.verify(&signed).unwrap_err(),
            Refusal::TooFewAuditors {
                auditors: vec![],
                needed: 1
            }
        );
        assert_eq!(policy.verify(&signed).unwrap_err().kind(), "policy");
        signed.countersign(&auditor);
        assert_eq!(policy.verify(&signed).unwrap().1.len(), 2);
        // Two auditors needed: one is not enough, and a second builder signature is no auditor.
        let two = policy.clone().with_auditors(vec![], 2).unwrap();
        assert!(matches!(
            two.verify(&signed),
            Err(Refusal::TooFewAuditors { needed: 2, .. })
        ));
        signed.countersign(&other_auditor);
        assert!(two.verify(&signed).is_ok());
        // More auditors than there are keys is an error up front.
        assert!(policy.with_auditors(vec![], 3).is_err());
        // Auditor keys count as trusted keys for min_signatures too.
        let only_auditor = TrustPolicy::new(vec![trusted(&builder)], 1, vec![], vec![])
            .unwrap()
            .with_auditors(vec![trusted(&auditor)], 0)
            .unwrap();
        let by_auditor = SignedManifest::sign(&manifest(), &auditor);
        assert!(only_auditor.verify(&by_auditor).is_ok());
    }

    #[test]
    fn a_revoked_signer_is_refused_with_the_reason() {
        let builder = ArtifactSigningKey::generate();
        let other = ArtifactSigningKey::generate();
        let id = builder.public_key().key_id();
        let policy = TrustPolicy::new(
            vec![trusted(&builder), trusted(&other)],
            1,
            vec![],
            vec![id.clone()],
        )
        .unwrap()
        .with_revocation_reasons([(id.clone(), "laptop stolen".to_string())].into());
        let refusal = policy
            .verify(&SignedManifest::sign(&manifest(), &builder))
            .unwrap_err();
        assert_eq!(refusal.kind(), "revoked");
        let message = policy.explain(&refusal);
        assert!(
            message.contains(&id) && message.contains("laptop stolen"),
            "{message}"
        );
    }

    #[test]
    fn impossible_policies_are_refused() {
        let builder = ArtifactSigningKey::generate();
        let keys = vec![trusted(&builder)];
        assert!(TrustPolicy::new(vec![], 1, vec![], vec![]).is_err());
        assert!(TrustPolicy::new(keys.clone(), 0, vec![], vec![]).is_err());
        assert!(TrustPolicy::new(keys.clone(), 2, vec![], vec![]).is_err());
        assert!(TrustPolicy::new(
            keys.clone(),
            1,
            vec!["ed25519:0000000000000000".into()],
            vec![]
        )
        .is_err());
        let id = builder.public_key().key_id();
        assert!(TrustPolicy::new(keys, 1, vec![], vec![id]).is_err());
    }

    #[test]
    fn key_files_hold_one_or_more_keys_and_settings_resolve_paths() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
        );
        let both = format!(
            "{}\n{}",
            a.public_key().to_pem().unwrap(),
            b.public_key().to_pem().unwrap()
        );
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("keys/both.pub"), both).unwrap();
        std::fs::write(dir.path().join("keys/junk.pub"), "hello").unwrap();
        let config = dir.path().join("precomp.toml");
        std::fs::write(
            &config,
            "mirror = \"http://m\"\n[trust]\nkeys = [\"keys/both.pub\"]\nmin_signatures = 2\nrequire = [\"ED25519:00112233445566AA\"]\n",
        )
        .unwrap();
        let settings = SettingsFile::read(&config).unwrap();
        assert_eq!(settings.mirror.as_deref(), Some("http://m"));
        let ids: Vec<String> = settings.keys().unwrap().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, vec![a.public_key().key_id(), b.public_key().key_id()]);
        assert!(read_keys(&dir.path().join("keys/junk.pub")).is_err());
        assert_eq!(signer_ids("keys/both.pub", dir.path()).unwrap().len(), 2);
        assert_eq!(
            signer_ids("ed25519:00112233445566AA", dir.path()).unwrap(),
            vec!["ed25519:00112233445566aa"]
        );
        std::fs::write(&config, "mirorr = 1\n").unwrap();
        assert!(SettingsFile::read(&config).is_err());
    }
}
