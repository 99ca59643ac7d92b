//! Hex registry resources: `/names`, `/versions` and `/packages/NAME`.
//!
//! On the wire each is `gzip(Signed { payload, signature })` where `payload` is the encoded
//! inner message and `signature` is RSA-PKCS1-SHA512 over exactly those payload bytes
//! (hexpm/specifications registry-v2.md; hex_core `hex_registry.erl`). Reading one is:
//! gunzip → decode `Signed` → verify the signature → decode the message → check its origin
//! (the repository name, and for a package its name), exactly what hex_core does before a
//! client trusts it. Each step fails with its own [`RegistryError`] naming the resource.

mod keys;
mod messages;

use std::fmt;
use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use prost::Message;

pub use keys::{KeyError, RepoPublicKey, RepoSigningKey, HEXPM_PUBLIC_KEY_PEM, MIN_KEY_BITS};
pub use messages::{
    AdvisorySeverity, Dependency, Names, NamesPackage, Package, Release, RetirementReason,
    RetirementStatus, SecurityAdvisory, Signed, Timestamp, Versions, VersionsPackage,
};

/// The default repository name, and the origin every hex.pm resource carries.
pub const HEXPM: &str = "hexpm";

/// The longest package name precomp accepts anywhere (URL paths, misses, repositories).
pub const MAX_PACKAGE_NAME: usize = 128;

/// A Hex package name: a lowercase letter, then lowercase letters, digits and `_` (hex.pm's
/// rule), at most [`MAX_PACKAGE_NAME`] bytes. The one check of package names: the mirror's
/// routes, the artifact API, `mirror sync` and `repo build` all use it.
pub fn is_package_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_PACKAGE_NAME
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Upper bound on a registry file as served (gzipped). hex.pm's largest, `/versions`, is a
/// few MiB; this leaves room to grow while bounding what a hostile upstream can make us hold.
pub const MAX_COMPRESSED_SIZE: u64 = 64 * 1024 * 1024;

/// Upper bound on a registry file once gunzipped; stops gzip bombs.
pub const MAX_DECOMPRESSED_SIZE: u64 = 256 * 1024 * 1024;

/// Which registry resource is being read; names it in errors and drives the origin check.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    Names,
    Versions,
    Package(String),
}

impl Resource {
    /// The resource's path relative to the repository root, without a leading slash.
    pub fn path(&self) -> String {
        match self {
            Resource::Names => "names".to_string(),
            Resource::Versions => "versions".to_string(),
            Resource::Package(name) => format!("packages/{name}"),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.path())
    }
}

/// A check on a registry resource that failed. Every variant names the resource.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{resource}: {size} bytes is over the limit of {limit} bytes for a registry file")]
    TooLarge {
        resource: Resource,
        size: u64,
        limit: u64,
    },
    #[error("{resource}: gunzip failed (registry files are gzip-compressed): {reason}")]
    Gunzip { resource: Resource, reason: String },
    #[error("{resource}: decoding the Signed envelope failed: {source}")]
    SignedDecode {
        resource: Resource,
        source: prost::DecodeError,
    },
    #[error("{resource}: signature check failed: the resource carries no signature")]
    MissingSignature { resource: Resource },
    #[error("{resource}: signature check failed: the signature does not verify with the repository's public key")]
    BadSignature { resource: Resource },
    #[error("{resource}: decoding the signed payload as a {message} message failed: {source}")]
    PayloadDecode {
        resource: Resource,
        message: &'static str,
        source: prost::DecodeError,
    },
    #[error("{resource}: origin check failed: the repository is {found:?}, expected {expected:?}")]
    RepositoryMismatch {
        resource: Resource,
        expected: String,
        found: String,
    },
    #[error(
        "{resource}: origin check failed: the package name is {found:?}, expected {expected:?}"
    )]
    PackageNameMismatch {
        resource: Resource,
        expected: String,
        found: String,
    },
}

impl RegistryError {
    /// The resource the failed check was made on.
    pub fn resource(&self) -> &Resource {
        match self {
            RegistryError::TooLarge { resource, .. }
            | RegistryError::Gunzip { resource, .. }
            | RegistryError::SignedDecode { resource, .. }
            | RegistryError::MissingSignature { resource }
            | RegistryError::BadSignature { resource }
            | RegistryError::PayloadDecode { resource, .. }
            | RegistryError::RepositoryMismatch { resource, .. }
            | RegistryError::PackageNameMismatch { resource, .. } => resource,
        }
    }
}

/// Gunzips a registry file and checks its signature; returns the verified payload bytes.
///
/// The mirror uses this alone: it stores and serves the original bytes, and needs the decoded
/// message only for the origin check and checksums.
pub fn verify_signed(
    body: &[u8],
    key: &RepoPublicKey,
    resource: &Resource,
) -> Result<Vec<u8>, RegistryError> {
    let signed = decode_signed(body, resource)?;
    let signature = signed
        .signature
        .ok_or_else(|| RegistryError::MissingSignature {
            resource: resource.clone(),
        })?;
    if !key.verify(&signed.payload, &signature) {
        return Err(RegistryError::BadSignature {
            resource: resource.clone(),
        });
    }
    Ok(signed.payload)
}

/// Gunzips and decodes the `Signed` envelope without checking the signature.
pub fn decode_signed(body: &[u8], resource: &Resource) -> Result<Signed, RegistryError> {
    let raw = gunzip(body, resource)?;
    Signed::decode(raw.as_slice()).map_err(|source| RegistryError::SignedDecode {
        resource: resource.clone(),
        source,
    })
}

/// Reads `/names`: verified, decoded, and its repository checked against `repository`.
pub fn decode_names(
    body: &[u8],
    key: &RepoPublicKey,
    repository: &str,
) -> Result<Names, RegistryError> {
    let resource = Resource::Names;
    let names: Names = decode_payload(body, key, &resource, "Names")?;
    check_repository(&resource, repository, &names.repository)?;
    Ok(names)
}

/// Reads `/versions`: verified, decoded, and its repository checked against `repository`.
pub fn decode_versions(
    body: &[u8],
    key: &RepoPublicKey,
    repository: &str,
) -> Result<Versions, RegistryError> {
    let resource = Resource::Versions;
    let versions: Versions = decode_payload(body, key, &resource, "Versions")?;
    check_repository(&resource, repository, &versions.repository)?;
    Ok(versions)
}

/// Reads `/packages/NAME`: verified, decoded, and both its repository and its package name
/// checked, so a valid record of one package cannot be replayed as another's (rebar3#1986).
pub fn decode_package(
    body: &[u8],
    key: &RepoPublicKey,
    repository: &str,
    name: &str,
) -> Result<Package, RegistryError> {
    let resource = Resource::Package(name.to_string());
    let package: Package = decode_payload(body, key, &resource, "Package")?;
    check_repository(&resource, repository, &package.repository)?;
    if package.name != name {
        return Err(RegistryError::PackageNameMismatch {
            resource,
            expected: name.to_string(),
            found: package.name,
        });
    }
    Ok(package)
}

/// Encodes, signs and gzips a registry message: the bytes of a registry file.
///
/// Deterministic for a given message and key: prost encodes fields in tag order, PKCS#1 v1.5
/// signatures have no salt, and the gzip header carries neither a name nor a time.
pub fn encode_signed<M: Message>(message: &M, key: &RepoSigningKey) -> Vec<u8> {
    let payload = message.encode_to_vec();
    let signature = key.sign(&payload);
    let signed = Signed {
        payload,
        signature: Some(signature),
    };
    gzip(&signed.encode_to_vec())
}

fn decode_payload<M: Message + Default>(
    body: &[u8],
    key: &RepoPublicKey,
    resource: &Resource,
    message: &'static str,
) -> Result<M, RegistryError> {
    let payload = verify_signed(body, key, resource)?;
    M::decode(payload.as_slice()).map_err(|source| RegistryError::PayloadDecode {
        resource: resource.clone(),
        message,
        source,
    })
}

fn check_repository(resource: &Resource, expected: &str, found: &str) -> Result<(), RegistryError> {
    if found != expected {
        return Err(RegistryError::RepositoryMismatch {
            resource: resource.clone(),
            expected: expected.to_string(),
            found: found.to_string(),
        });
    }
    Ok(())
}

fn gunzip(body: &[u8], resource: &Resource) -> Result<Vec<u8>, RegistryError> {
    let size = body.len() as u64;
    if size > MAX_COMPRESSED_SIZE {
        return Err(RegistryError::TooLarge {
            resource: resource.clone(),
            size,
            limit: MAX_COMPRESSED_SIZE,
        });
    }
    let mut out = Vec::new();
    GzDecoder::new(body)
        .take(MAX_DECOMPRESSED_SIZE + 1)
        .read_to_end(&mut out)
        .map_err(|e| RegistryError::Gunzip {
            resource: resource.clone(),
            reason: e.to_string(),
        })?;
    if out.len() as u64 > MAX_DECOMPRESSED_SIZE {
        return Err(RegistryError::TooLarge {
            resource: resource.clone(),
            size: out.len() as u64,
            limit: MAX_DECOMPRESSED_SIZE,
        });
    }
    Ok(out)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder
        .write_all(bytes)
        .and_then(|()| encoder.finish())
        .expect("gzip into a Vec cannot fail")
}
