//! Audit verdicts: an auditor's signed statement about one published build.
//!
//! An auditor rebuilds a published artifact from the inputs its manifest lists, on its own
//! host, data directory and (optionally) toolchain image, and compares the bytes. When they
//! are the same, the auditor countersigns the manifest itself
//! ([`crate::manifest::SignedManifest::countersign`]): that signature is the match verdict.
//! When they differ, it signs a [`Verdict`] saying so, naming every file that differs and,
//! for beams, every chunk, with what could be decoded about the difference (an absolute
//! path in `Dbgi`, a literal in `LitT`, ...). The mirror stores it and flags the build.
//!
//! The envelope is [`SignedVerdict`]: the verdict's exact bytes and one ed25519 signature
//! over [`VERDICT_SIGNATURE_CONTEXT`] followed by them, by the same kind of key that signs
//! manifests ([`ArtifactSigningKey`]), with its key id. A verdict names the manifest it is
//! about by the SHA-256 of the manifest's bytes (the `manifest` field of the signed
//! envelope, which countersignatures do not change), so it cannot be moved to another build.

use prost::Message;
use sha2::{Digest, Sha256};

use crate::manifest::{ArtifactPublicKey, ArtifactSigningKey, Signature};

/// The verdict format this code writes and reads.
pub const VERDICT_FORMAT: u32 = 1;

/// Signatures are over this prefix followed by the encoded verdict: a verdict signature can
/// never be taken for a manifest signature (`precomp-manifest-v1\n`) or the reverse.
pub const VERDICT_SIGNATURE_CONTEXT: &[u8] = b"precomp-verdict-v1\n";

/// Bound on an encoded signed verdict.
pub const MAX_SIGNED_VERDICT_SIZE: usize = 4 * 1024 * 1024;

/// Bound on the files a verdict lists (the first ones in path order are kept).
pub const MAX_FILES: usize = 4096;

/// Bound on the chunks listed for one file.
pub const MAX_CHUNKS: usize = 64;

/// Bound on one explanation, in bytes.
pub const MAX_EXPLANATION: usize = 8 * 1024;

/// Bound on the one-line summary, in bytes.
pub const MAX_SUMMARY: usize = 1024;

/// `result` of a verdict whose rebuild gave the published bytes.
pub const MATCH: &str = "match";
/// `result` of a verdict whose rebuild gave other bytes.
pub const MISMATCH: &str = "mismatch";

/// `change` values of a [`FileDifference`] or [`ChunkDifference`].
pub const CHANGED: &str = "changed";
pub const ONLY_PUBLISHED: &str = "only_published";
pub const ONLY_REBUILT: &str = "only_rebuilt";
/// A file whose bytes are equal but whose executable bit is not.
pub const EXECUTABLE: &str = "executable";

/// The signed envelope.
#[derive(Clone, PartialEq, Message)]
pub struct SignedVerdict {
    /// The encoded [`Verdict`], exactly as signed.
    #[prost(bytes = "vec", tag = "1")]
    pub verdict: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    pub signature: Option<Signature>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Verdict {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// The build key of the audited manifest, lowercase hex.
    #[prost(string, tag = "2")]
    pub key: String,
    /// SHA-256 of the audited manifest's bytes (`SignedManifest.manifest`).
    #[prost(bytes = "vec", tag = "3")]
    pub manifest_sha256: Vec<u8>,
    /// [`MATCH`] or [`MISMATCH`].
    #[prost(string, tag = "4")]
    pub result: String,
    /// SHA-256 of the published artifact (the manifest's).
    #[prost(bytes = "vec", tag = "5")]
    pub published_sha256: Vec<u8>,
    /// SHA-256 and size of the auditor's rebuild.
    #[prost(bytes = "vec", tag = "6")]
    pub rebuilt_sha256: Vec<u8>,
    #[prost(uint64, tag = "7")]
    pub rebuilt_size: u64,
    /// The toolchain the auditor rebuilt with (id and digest, as in a manifest's provenance).
    #[prost(string, tag = "8")]
    pub toolchain_id: String,
    #[prost(string, tag = "9")]
    pub toolchain_digest: String,
    /// The auditor's key id; equal to the signature's.
    #[prost(string, tag = "10")]
    pub auditor_id: String,
    /// One line for people: which files and chunks differ.
    #[prost(string, tag = "11")]
    pub summary: String,
    /// Every file that differs, sorted by path (at most [`MAX_FILES`]).
    #[prost(message, repeated, tag = "12")]
    pub files: Vec<FileDifference>,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct FileDifference {
    /// Relative to the app directory, e.g. `ebin/Elixir.Foo.beam`.
    #[prost(string, tag = "1")]
    pub path: String,
    /// [`CHANGED`], [`ONLY_PUBLISHED`], [`ONLY_REBUILT`] or [`EXECUTABLE`].
    #[prost(string, tag = "2")]
    pub change: String,
    #[prost(bytes = "vec", tag = "3")]
    pub published_sha256: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub rebuilt_sha256: Vec<u8>,
    #[prost(uint64, tag = "5")]
    pub published_size: u64,
    #[prost(uint64, tag = "6")]
    pub rebuilt_size: u64,
    /// For beams: the chunks that differ, in file order.
    #[prost(message, repeated, tag = "7")]
    pub chunks: Vec<ChunkDifference>,
    /// What could be said about the difference (text files: the first differing line).
    #[prost(string, tag = "8")]
    pub explanation: String,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct ChunkDifference {
    /// The 4-character chunk id: `Dbgi`, `LitT`, `Code`, `Attr`, `CInf`, `Docs`, ...
    #[prost(string, tag = "1")]
    pub id: String,
    /// [`CHANGED`], [`ONLY_PUBLISHED`] or [`ONLY_REBUILT`].
    #[prost(string, tag = "2")]
    pub change: String,
    #[prost(uint64, tag = "3")]
    pub published_size: u64,
    #[prost(uint64, tag = "4")]
    pub rebuilt_size: u64,
    /// The decoded difference, e.g. `literal 3: <<"built 2024-…">> vs <<"built 2025-…">>`.
    #[prost(string, tag = "5")]
    pub explanation: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VerdictError {
    #[error("signed verdict is {size} bytes, over the limit of {MAX_SIGNED_VERDICT_SIZE}")]
    TooLarge { size: usize },
    #[error("not a signed verdict: {0}")]
    DecodeEnvelope(prost::DecodeError),
    #[error("the signed bytes are not a verdict: {0}")]
    DecodeVerdict(prost::DecodeError),
    #[error("the verdict is not signed")]
    Unsigned,
    #[error("the verdict is signed by {signer}, not by a trusted auditor key")]
    Untrusted { signer: String },
    #[error("the signature by {key_id} does not verify: the verdict or the signature was changed")]
    BadSignature { key_id: String },
    #[error("verdict format {0} is not supported (this precomp reads format {VERDICT_FORMAT})")]
    Format(u32),
    #[error("verdict: {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

fn field(field: &'static str, message: impl Into<String>) -> VerdictError {
    VerdictError::Field {
        field,
        message: message.into(),
    }
}

impl Verdict {
    /// Fills `format` and `auditor_id`, checks the verdict, encodes it and signs it.
    pub fn sign(mut self, key: &ArtifactSigningKey) -> Result<SignedVerdict, VerdictError> {
        self.format = VERDICT_FORMAT;
        self.auditor_id = key.public_key().key_id();
        self.check()?;
        let bytes = self.encode_to_vec();
        let signature = key.sign_in_context(VERDICT_SIGNATURE_CONTEXT, &bytes);
        Ok(SignedVerdict {
            verdict: bytes,
            signature: Some(signature),
        })
    }

    /// Checks the fields: known format, a 64-hex key, 32-byte digests, a known result
    /// consistent with the digests, and every bound.
    pub fn check(&self) -> Result<(), VerdictError> {
        if self.format != VERDICT_FORMAT {
            return Err(VerdictError::Format(self.format));
        }
        if self.key.len() != 64
            || !self
                .key
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(field(
                "key",
                format!("{:?} is not 64 lowercase hex digits", self.key),
            ));
        }
        for (name, digest) in [
            ("manifest_sha256", &self.manifest_sha256),
            ("published_sha256", &self.published_sha256),
            ("rebuilt_sha256", &self.rebuilt_sha256),
        ] {
            if digest.len() != 32 {
                return Err(field(name, format!("{} bytes, not 32", digest.len())));
            }
        }
        match self.result.as_str() {
            MATCH if self.published_sha256 != self.rebuilt_sha256 => {
                return Err(field("result", "a match whose digests differ"))
            }
            MISMATCH if self.published_sha256 == self.rebuilt_sha256 => {
                return Err(field("result", "a mismatch whose digests are equal"))
            }
            MATCH | MISMATCH => {}
            other => {
                return Err(field(
                    "result",
                    format!("{other:?} is neither {MATCH:?} nor {MISMATCH:?}"),
                ))
            }
        }
        if !self.auditor_id.starts_with("ed25519:") || self.auditor_id.len() != 24 {
            return Err(field(
                "auditor_id",
                format!("{:?} is not a key id", self.auditor_id),
            ));
        }
        one_line("summary", &self.summary, MAX_SUMMARY)?;
        for (name, value) in [
            ("toolchain_id", &self.toolchain_id),
            ("toolchain_digest", &self.toolchain_digest),
        ] {
            one_line(name, value, 256)?;
        }
        if self.files.len() > MAX_FILES {
            return Err(field(
                "files",
                format!("{} files, over the limit of {MAX_FILES}", self.files.len()),
            ));
        }
        let mut previous: Option<&str> = None;
        for file in &self.files {
            if file.path.is_empty() || file.path.len() > 4096 || file.path.contains('\0') {
                return Err(field("files.path", format!("{:?}", file.path)));
            }
            if previous.is_some_and(|p| p >= file.path.as_str()) {
                return Err(field(
                    "files",
                    format!("{:?} is out of order or repeated", file.path),
                ));
            }
            previous = Some(&file.path);
            if ![CHANGED, ONLY_PUBLISHED, ONLY_REBUILT, EXECUTABLE].contains(&file.change.as_str())
            {
                return Err(field("files.change", format!("{:?}", file.change)));
            }
            bounded("files.explanation", &file.explanation, MAX_EXPLANATION)?;
            if file.chunks.len() > MAX_CHUNKS {
                return Err(field(
                    "files.chunks",
                    format!("{} chunks in {}", file.chunks.len(), file.path),
                ));
            }
            for chunk in &file.chunks {
                if chunk.id.len() != 4 || !chunk.id.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(field("chunks.id", format!("{:?}", chunk.id)));
                }
                if ![CHANGED, ONLY_PUBLISHED, ONLY_REBUILT].contains(&chunk.change.as_str()) {
                    return Err(field("chunks.change", format!("{:?}", chunk.change)));
                }
                bounded("chunks.explanation", &chunk.explanation, MAX_EXPLANATION)?;
            }
        }
        Ok(())
    }

    /// The ids of the chunks that differ, over every file, deduplicated in first-seen order.
    pub fn chunk_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for chunk in self.files.iter().flat_map(|f| &f.chunks) {
            if !ids.contains(&chunk.id) {
                ids.push(chunk.id.clone());
            }
        }
        ids
    }
}

fn bounded(name: &'static str, text: &str, max: usize) -> Result<(), VerdictError> {
    if text.len() > max {
        return Err(field(
            name,
            format!("{} bytes, over the limit of {max}", text.len()),
        ));
    }
    Ok(())
}

fn one_line(name: &'static str, text: &str, max: usize) -> Result<(), VerdictError> {
    bounded(name, text, max)?;
    if text.chars().any(char::is_control) {
        return Err(field(name, "holds control characters"));
    }
    Ok(())
}

/// SHA-256 of a manifest's bytes, as a verdict names it.
pub fn manifest_digest(manifest_bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(manifest_bytes).into()
}

impl SignedVerdict {
    pub fn decode(bytes: &[u8]) -> Result<SignedVerdict, VerdictError> {
        if bytes.len() > MAX_SIGNED_VERDICT_SIZE {
            return Err(VerdictError::TooLarge { size: bytes.len() });
        }
        <SignedVerdict as Message>::decode(bytes).map_err(VerdictError::DecodeEnvelope)
    }

    /// The signer's key id, if signed.
    pub fn signer(&self) -> Option<&str> {
        self.signature.as_ref().map(|s| s.key_id.as_str())
    }

    /// Checks the signature with the key of `trusted` it names, decodes and checks the
    /// verdict, and that the verdict names its signer as its auditor.
    pub fn verify(&self, trusted: &[ArtifactPublicKey]) -> Result<Verdict, VerdictError> {
        let signature = self.signature.as_ref().ok_or(VerdictError::Unsigned)?;
        let key = trusted
            .iter()
            .find(|k| k.key_id() == signature.key_id)
            .ok_or_else(|| VerdictError::Untrusted {
                signer: signature.key_id.clone(),
            })?;
        if !key.verify_in_context(
            VERDICT_SIGNATURE_CONTEXT,
            &self.verdict,
            &signature.signature,
        ) {
            return Err(VerdictError::BadSignature {
                key_id: signature.key_id.clone(),
            });
        }
        let verdict = <Verdict as Message>::decode(self.verdict.as_slice())
            .map_err(VerdictError::DecodeVerdict)?;
        verdict.check()?;
        if verdict.auditor_id != signature.key_id {
            return Err(field(
                "auditor_id",
                format!(
                    "names {} but is signed by {}",
                    verdict.auditor_id, signature.key_id
                ),
            ));
        }
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Manifest, SignedManifest};

    fn mismatch() -> Verdict {
        Verdict {
            key: "ab".repeat(32),
            manifest_sha256: vec![1; 32],
            result: MISMATCH.into(),
            published_sha256: vec![2; 32],
            rebuilt_sha256: vec![3; 32],
            rebuilt_size: 10,
            toolchain_id: "host".into(),
            toolchain_digest: "0".repeat(64),
            summary: "ebin/Elixir.X.beam: LitT".into(),
            files: vec![FileDifference {
                path: "ebin/Elixir.X.beam".into(),
                change: CHANGED.into(),
                chunks: vec![ChunkDifference {
                    id: "LitT".into(),
                    change: CHANGED.into(),
                    explanation: "literal 0 differs".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn verdicts_are_signed_verified_and_bound_to_their_signer() {
        let auditor = ArtifactSigningKey::generate();
        let other = ArtifactSigningKey::generate();
        let signed = mismatch().sign(&auditor).unwrap();
        let bytes = signed.encode_to_vec();
        let decoded = SignedVerdict::decode(&bytes).unwrap();
        let verdict = decoded.verify(&[auditor.public_key()]).unwrap();
        assert_eq!(verdict.auditor_id, auditor.public_key().key_id());
        assert_eq!(verdict.chunk_ids(), vec!["LitT"]);
        assert!(matches!(
            decoded.verify(&[other.public_key()]),
            Err(VerdictError::Untrusted { .. })
        ));

        // A changed byte of the verdict or of the signature fails.
        let mut tampered = decoded.clone();
        let last = tampered.verdict.len() - 1;
        tampered.verdict[last] ^= 1;
        assert!(matches!(
            tampered.verify(&[auditor.public_key()]),
            Err(VerdictError::BadSignature { .. })
        ));

        // A manifest signature over the same bytes is no verdict signature (contexts differ).
        let manifest = Manifest {
            key: "cd".repeat(32),
            ..Default::default()
        };
        let manifest_signed = SignedManifest::sign(&manifest, &auditor);
        let forged = SignedVerdict {
            verdict: manifest_signed.manifest.clone(),
            signature: Some(manifest_signed.signatures[0].clone()),
        };
        assert!(matches!(
            forged.verify(&[auditor.public_key()]),
            Err(VerdictError::BadSignature { .. })
        ));
    }

    #[test]
    fn inconsistent_verdicts_are_refused() {
        let auditor = ArtifactSigningKey::generate();
        let mut equal = mismatch();
        equal.rebuilt_sha256 = equal.published_sha256.clone();
        assert!(equal.sign(&auditor).is_err());
        let mut unknown = mismatch();
        unknown.result = "maybe".into();
        assert!(unknown.sign(&auditor).is_err());
        let mut short = mismatch();
        short.manifest_sha256 = vec![1; 31];
        assert!(short.sign(&auditor).is_err());
        let mut multiline = mismatch();
        multiline.summary = "a\nb".into();
        assert!(multiline.sign(&auditor).is_err());
        let mut unordered = mismatch();
        unordered.files.push(unordered.files[0].clone());
        assert!(unordered.sign(&auditor).is_err());
        let mut chunk = mismatch();
        chunk.files[0].chunks[0].id = "Lit".into();
        assert!(chunk.sign(&auditor).is_err());
        let mut matched = mismatch();
        matched.result = MATCH.into();
        matched.rebuilt_sha256 = matched.published_sha256.clone();
        assert!(matched.sign(&auditor).is_ok());
    }
}
