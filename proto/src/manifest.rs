//! Artifact manifests and their signatures.
//!
//! A [`Manifest`] (protobuf) binds a precompiled artifact to everything that went into it:
//! the build key and all its inputs, the artifact's digest and the digest of every file in
//! it, the compile-env entries its `.app` records, whether it holds native code, and
//! provenance (toolchain, builder, duration, build log digest). A [`SignedManifest`] carries
//! the encoded manifest and any number of ed25519 signatures over it, each with the signer's
//! key id: the builder's first, then auditors' who rebuilt it and got the same bytes.
//!
//! The manifest is self-checking: [`Manifest::check_key`] recomputes the key from the inputs
//! it lists, so a manifest cannot claim one key for other inputs.
//!
//! Format 2 (key format v2) adds the package's build tool (`manager`, field 13) and each
//! closure member's own key (`PackageId.key`, field 4). Format 1 manifests (key format v1,
//! whose closure is names, versions and checksums only) still decode, and
//! [`Manifest::releases`] reads them, but their key is not computed any more:
//! [`Manifest::check_key`] refuses them with [`ManifestError::OldKeyFormat`].

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, Verifier};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::buildkey::{
    BuildInputs, BuildKey, BuildKeyError, ClosureMember, CompileEnvEntry, Manager, PackageRef,
    Target,
};
use crate::term::{parse_erlang_terms, to_erlang_text, Term};

/// The manifest format this code writes and checks: 2, for key format v2.
pub const MANIFEST_FORMAT: u32 = 2;

/// The format of manifests with key format v1: decoded and shown, never checked or used.
pub const MANIFEST_FORMAT_V1: u32 = 1;

/// Signatures are over this prefix followed by the encoded manifest, so a manifest signature
/// can never be taken for a signature over anything else.
pub const SIGNATURE_CONTEXT: &[u8] = b"precomp-manifest-v1\n";

/// Bound on an encoded signed manifest (a large package lists a few thousand files).
pub const MAX_SIGNED_MANIFEST_SIZE: usize = 16 * 1024 * 1024;

#[derive(Clone, PartialEq, Message)]
pub struct Manifest {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// The build key, lowercase hex.
    #[prost(string, tag = "2")]
    pub key: String,
    /// The base key (without the compile env), lowercase hex: what clients look up.
    #[prost(string, tag = "3")]
    pub base_key: String,
    #[prost(message, optional, tag = "4")]
    pub package: Option<PackageId>,
    #[prost(message, repeated, tag = "5")]
    pub closure: Vec<PackageId>,
    #[prost(string, tag = "6")]
    pub otp_major: String,
    #[prost(string, tag = "7")]
    pub elixir: String,
    #[prost(string, tag = "8")]
    pub mix_env: String,
    /// `any` or `ARCH-LIBC`.
    #[prost(string, tag = "9")]
    pub target: String,
    /// The `compile_env` entries of the artifact's `.app`, with the values it was built with.
    #[prost(message, repeated, tag = "10")]
    pub compile_env: Vec<CompileEnvRecord>,
    #[prost(message, optional, tag = "11")]
    pub output: Option<Output>,
    #[prost(message, optional, tag = "12")]
    pub provenance: Option<Provenance>,
    /// Format 2: the build tool Mix used, `mix`, `rebar3` or `make`.
    #[prost(string, tag = "13")]
    pub manager: String,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct PackageId {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(bytes = "vec", tag = "3")]
    pub outer_checksum: Vec<u8>,
    /// Format 2, closure members: the member's own build key, lowercase hex. Empty for the
    /// package itself and in format 1.
    #[prost(string, tag = "4")]
    pub key: String,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct CompileEnvRecord {
    #[prost(string, tag = "1")]
    pub app: String,
    /// `[Key | Path]` as Erlang term text.
    #[prost(string, tag = "2")]
    pub path: String,
    /// The value as Erlang term text; absent when the config set none (Mix's `error`).
    #[prost(string, optional, tag = "3")]
    pub value: Option<String>,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct Output {
    /// SHA-256 of the artifact tarball.
    #[prost(bytes = "vec", tag = "1")]
    pub artifact_sha256: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub artifact_size: u64,
    /// Every file in the artifact, sorted by path.
    #[prost(message, repeated, tag = "3")]
    pub files: Vec<FileRecord>,
    #[prost(bool, tag = "4")]
    pub native_code: bool,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct FileRecord {
    /// Relative to the app's build directory, e.g. `ebin/jason.beam`.
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(bytes = "vec", tag = "2")]
    pub sha256: Vec<u8>,
    #[prost(uint64, tag = "3")]
    pub size: u64,
    #[prost(bool, tag = "4")]
    pub executable: bool,
}

/// Who built it with what: recorded, signed, but not part of the key — two builders with
/// different images for the same inputs must produce the same bytes.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct Provenance {
    #[prost(string, tag = "1")]
    pub toolchain_id: String,
    #[prost(string, tag = "2")]
    pub toolchain_digest: String,
    #[prost(string, tag = "3")]
    pub builder_id: String,
    #[prost(uint64, tag = "4")]
    pub build_duration_ms: u64,
    #[prost(bytes = "vec", tag = "5")]
    pub build_log_sha256: Vec<u8>,
    /// How the builder compiles (`precomp_builder::RECIPE`, e.g. `precomp-build-recipe-3`):
    /// what can change an artifact's bytes for the same key without changing the key (the
    /// atom list a package boots from, the sandbox's flags and environment, the project
    /// layout, the artifact's encoding). Auditors rebuild only builds of their own recipe.
    /// Absent in manifests of builders from before it was recorded: an unknown recipe.
    #[prost(string, optional, tag = "6")]
    pub recipe: Option<String>,
}

/// The signed envelope: the manifest's exact bytes and the signatures over them.
#[derive(Clone, PartialEq, Message)]
pub struct SignedManifest {
    #[prost(bytes = "vec", tag = "1")]
    pub manifest: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    pub signatures: Vec<Signature>,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct Signature {
    /// `ed25519:` and the first 16 hex digits of the SHA-256 of the raw public key.
    #[prost(string, tag = "1")]
    pub key_id: String,
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("signed manifest is {size} bytes, over the limit of {MAX_SIGNED_MANIFEST_SIZE}")]
    TooLarge { size: usize },
    #[error("not a signed manifest: {0}")]
    DecodeEnvelope(prost::DecodeError),
    #[error("the signed bytes are not a manifest: {0}")]
    DecodeManifest(prost::DecodeError),
    #[error("manifest format {0} is not supported (this precomp reads format {MANIFEST_FORMAT})")]
    Format(u32),
    #[error("manifest format 1 has key format v1, whose key does not cover what its dependencies were built with; this precomp checks key format v2 only: rebuild it with a current precomp")]
    OldKeyFormat,
    #[error("manifest: {0}")]
    Incomplete(&'static str),
    #[error("manifest: {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error("manifest inputs: {0}")]
    Inputs(#[from] BuildKeyError),
    #[error("manifest claims key {claimed} but its inputs give {computed}")]
    KeyMismatch { claimed: String, computed: String },
    #[error("signature by {key_id} does not verify: the manifest or the signature was changed")]
    BadSignature { key_id: String },
    #[error("no signature by a trusted key (signed by: {signers})")]
    Untrusted { signers: String },
    #[error("key: {0}")]
    Key(String),
}

impl Manifest {
    /// The build inputs this manifest lists (format 2; see [`Manifest::check_key`]).
    pub fn inputs(&self) -> Result<BuildInputs, ManifestError> {
        let (package, _) = self.releases()?;
        let target = Target::parse(&self.target).ok_or_else(|| ManifestError::Field {
            field: "target",
            message: format!("{:?} is neither `any` nor ARCH-LIBC", self.target),
        })?;
        let manager = Manager::parse(&self.manager).ok_or_else(|| ManifestError::Field {
            field: "manager",
            message: format!("{:?} is not mix, rebar3 or make", self.manager),
        })?;
        let compile_env = self
            .compile_env
            .iter()
            .map(|record| {
                let path = match one_term("compile_env path", &record.path)? {
                    Term::List(path) => path,
                    _ => {
                        return Err(ManifestError::Field {
                            field: "compile_env path",
                            message: format!("{:?} is not a list", record.path),
                        })
                    }
                };
                let value = match &record.value {
                    Some(text) => Some(one_term("compile_env value", text)?),
                    None => None,
                };
                Ok(CompileEnvEntry {
                    app: record.app.clone(),
                    path,
                    value,
                })
            })
            .collect::<Result<_, ManifestError>>()?;
        let closure = self
            .closure
            .iter()
            .map(|member| {
                let key = BuildKey::parse(&member.key).ok_or_else(|| ManifestError::Field {
                    field: "closure key",
                    message: format!(
                        "{}'s key {:?} is not 64 lowercase hex digits",
                        member.name, member.key
                    ),
                })?;
                Ok(ClosureMember {
                    package: member.to_ref()?,
                    key: Some(key),
                })
            })
            .collect::<Result<_, ManifestError>>()?;
        Ok(BuildInputs {
            package,
            manager,
            closure,
            otp_major: self.otp_major.clone(),
            elixir: self.elixir.clone(),
            mix_env: self.mix_env.clone(),
            target,
            compile_env,
        })
    }

    /// The package and its closure's releases (names, versions, checksums), in any format.
    pub fn releases(&self) -> Result<(PackageRef, Vec<PackageRef>), ManifestError> {
        let package = self
            .package
            .as_ref()
            .ok_or(ManifestError::Incomplete("no package"))?
            .to_ref()?;
        let closure = self
            .closure
            .iter()
            .map(PackageId::to_ref)
            .collect::<Result<_, _>>()?;
        Ok((package, closure))
    }

    /// Fills the format, the key, base key and every input field from `inputs`, whose
    /// closure keys must all be known.
    pub fn set_inputs(&mut self, inputs: &BuildInputs) -> Result<(), ManifestError> {
        self.format = MANIFEST_FORMAT;
        self.key = inputs.key()?.to_string();
        self.base_key = inputs.base_key()?.to_string();
        self.package = Some(PackageId::from_ref(&inputs.package, None));
        self.manager = inputs.manager.to_string();
        let mut closure: Vec<&ClosureMember> = inputs.closure.iter().collect();
        closure.sort();
        self.closure = closure
            .into_iter()
            .map(|member| PackageId::from_ref(&member.package, member.key))
            .collect();
        self.otp_major = inputs.otp_major.clone();
        self.elixir = inputs.elixir.clone();
        self.mix_env = inputs.mix_env.clone();
        self.target = inputs.target.to_string();
        self.compile_env = inputs
            .compile_env
            .iter()
            .map(|entry| CompileEnvRecord {
                app: entry.app.clone(),
                path: to_erlang_text(&Term::List(entry.path.clone())),
                value: entry.value.as_ref().map(to_erlang_text),
            })
            .collect();
        Ok(())
    }

    /// Checks that the format is 2 (format 1: [`ManifestError::OldKeyFormat`]) and that the
    /// key and base key are what the listed inputs give.
    pub fn check_key(&self) -> Result<BuildInputs, ManifestError> {
        if self.format == MANIFEST_FORMAT_V1 {
            return Err(ManifestError::OldKeyFormat);
        }
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format(self.format));
        }
        let inputs = self.inputs()?;
        for (claimed, computed) in [
            (&self.key, inputs.key()?.to_string()),
            (&self.base_key, inputs.base_key()?.to_string()),
        ] {
            if *claimed != computed {
                return Err(ManifestError::KeyMismatch {
                    claimed: claimed.clone(),
                    computed,
                });
            }
        }
        Ok(inputs)
    }
}

impl PackageId {
    fn from_ref(package: &PackageRef, key: Option<BuildKey>) -> PackageId {
        PackageId {
            name: package.name.clone(),
            version: package.version.clone(),
            outer_checksum: package.outer_checksum.to_vec(),
            key: key.map(|key| key.to_string()).unwrap_or_default(),
        }
    }

    fn to_ref(&self) -> Result<PackageRef, ManifestError> {
        Ok(PackageRef {
            name: self.name.clone(),
            version: self.version.clone(),
            outer_checksum: self.outer_checksum.as_slice().try_into().map_err(|_| {
                ManifestError::Field {
                    field: "outer_checksum",
                    message: format!(
                        "{} has {} bytes, not 32",
                        self.name,
                        self.outer_checksum.len()
                    ),
                }
            })?,
        })
    }
}

fn one_term(field: &'static str, text: &str) -> Result<Term, ManifestError> {
    match parse_erlang_terms(&format!("{text}.")) {
        Ok(mut terms) if terms.len() == 1 => Ok(terms.remove(0)),
        Ok(_) => Err(ManifestError::Field {
            field,
            message: format!("{text:?} is not exactly one term"),
        }),
        Err(e) => Err(ManifestError::Field {
            field,
            message: e.to_string(),
        }),
    }
}

/// An ed25519 key that signs manifests (a builder's or an auditor's).
pub struct ArtifactSigningKey {
    key: ed25519_dalek::SigningKey,
}

/// The public half, as clients trust it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactPublicKey {
    key: ed25519_dalek::VerifyingKey,
}

impl ArtifactSigningKey {
    pub fn generate() -> ArtifactSigningKey {
        ArtifactSigningKey {
            key: ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// Reads a PKCS#8 PEM private key (`BEGIN PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<ArtifactSigningKey, ManifestError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim())
            .map(|key| ArtifactSigningKey { key })
            .map_err(|e| ManifestError::Key(format!("not an ed25519 PKCS#8 PEM private key: {e}")))
    }

    /// PKCS#8 v1 PEM (RFC 8410, no embedded public key): the form OpenSSL and every other
    /// tool reads.
    pub fn to_pem(&self) -> Result<String, ManifestError> {
        ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| ManifestError::Key(e.to_string()))
    }

    pub fn public_key(&self) -> ArtifactPublicKey {
        ArtifactPublicKey {
            key: self.key.verifying_key(),
        }
    }

    fn sign(&self, manifest: &[u8]) -> Signature {
        Signature {
            key_id: self.public_key().key_id(),
            signature: self.key.sign(&signed_message(manifest)).to_bytes().to_vec(),
        }
    }

    /// A signature over `context` followed by `bytes`: for the other signed documents of this
    /// crate (audit verdicts), each with its own context so no signature can be taken for
    /// another kind.
    pub(crate) fn sign_in_context(&self, context: &[u8], bytes: &[u8]) -> Signature {
        Signature {
            key_id: self.public_key().key_id(),
            signature: self
                .key
                .sign(&[context, bytes].concat())
                .to_bytes()
                .to_vec(),
        }
    }
}

impl ArtifactPublicKey {
    /// Reads an SPKI PEM public key (`BEGIN PUBLIC KEY`).
    pub fn from_pem(pem: &str) -> Result<ArtifactPublicKey, ManifestError> {
        ed25519_dalek::VerifyingKey::from_public_key_pem(pem.trim())
            .map(|key| ArtifactPublicKey { key })
            .map_err(|e| ManifestError::Key(format!("not an ed25519 SPKI PEM public key: {e}")))
    }

    pub fn to_pem(&self) -> Result<String, ManifestError> {
        self.key
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| ManifestError::Key(e.to_string()))
    }

    /// `ed25519:` and the first 16 hex digits of the SHA-256 of the 32-byte public key.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.key.as_bytes());
        format!("ed25519:{}", hex::encode(&digest[..8]))
    }

    fn verify(&self, manifest: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.key
            .verify(&signed_message(manifest), &signature)
            .is_ok()
    }

    /// Verifies a [`ArtifactSigningKey::sign_in_context`] signature.
    pub(crate) fn verify_in_context(&self, context: &[u8], bytes: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.key
            .verify(&[context, bytes].concat(), &signature)
            .is_ok()
    }
}

fn signed_message(manifest: &[u8]) -> Vec<u8> {
    [SIGNATURE_CONTEXT, manifest].concat()
}

impl SignedManifest {
    /// Encodes `manifest` and signs it with `key`.
    pub fn sign(manifest: &Manifest, key: &ArtifactSigningKey) -> SignedManifest {
        let bytes = manifest.encode_to_vec();
        let signature = key.sign(&bytes);
        SignedManifest {
            manifest: bytes,
            signatures: vec![signature],
        }
    }

    /// Adds `key`'s signature over the same bytes (an auditor countersigning), replacing an
    /// earlier signature by the same key.
    pub fn countersign(&mut self, key: &ArtifactSigningKey) {
        let signature = key.sign(&self.manifest);
        self.signatures.retain(|s| s.key_id != signature.key_id);
        self.signatures.push(signature);
    }

    pub fn decode(bytes: &[u8]) -> Result<SignedManifest, ManifestError> {
        if bytes.len() > MAX_SIGNED_MANIFEST_SIZE {
            return Err(ManifestError::TooLarge { size: bytes.len() });
        }
        <SignedManifest as Message>::decode(bytes).map_err(ManifestError::DecodeEnvelope)
    }

    /// Checks every signature made by a key in `trusted` (any one that fails is an error:
    /// the bytes were changed), decodes the manifest and checks its key. Returns the manifest
    /// and the ids of the trusted keys that signed it; signatures by unknown keys are
    /// ignored. At least one trusted signature is required.
    pub fn verify(
        &self,
        trusted: &[ArtifactPublicKey],
    ) -> Result<(Manifest, Vec<String>), ManifestError> {
        let mut signers = Vec::new();
        for signature in &self.signatures {
            let Some(key) = trusted.iter().find(|k| k.key_id() == signature.key_id) else {
                continue;
            };
            if !key.verify(&self.manifest, &signature.signature) {
                return Err(ManifestError::BadSignature {
                    key_id: signature.key_id.clone(),
                });
            }
            if !signers.contains(&signature.key_id) {
                signers.push(signature.key_id.clone());
            }
        }
        if signers.is_empty() {
            let all: Vec<&str> = self.signatures.iter().map(|s| s.key_id.as_str()).collect();
            return Err(ManifestError::Untrusted {
                signers: if all.is_empty() {
                    "nobody".to_string()
                } else {
                    all.join(", ")
                },
            });
        }
        let manifest = <Manifest as Message>::decode(self.manifest.as_slice())
            .map_err(ManifestError::DecodeManifest)?;
        manifest.check_key()?;
        Ok((manifest, signers))
    }
}
