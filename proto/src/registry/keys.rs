//! RSA keys of a Hex repository: RSASSA-PKCS1-v1_5 with SHA-512, as hex_core's
//! `public_key:sign(Payload, sha512, Key)`.

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256, Sha512};

/// Hex.pm's registry public key (SPKI PEM), as hard-coded in hex_core (`?HEXPM_PUBLIC_KEY`)
/// and published at <https://hex.pm/docs/public_keys>.
pub const HEXPM_PUBLIC_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEApqREcFDt5vV21JVe2QNB
Edvzk6w36aNFhVGWN5toNJRjRJ6m4hIuG4KaXtDWVLjnvct6MYMfqhC79HAGwyF+
IqR6Q6a5bbFSsImgBJwz1oadoVKD6ZNetAuCIK84cjMrEFRkELtEIPNHblCzUkkM
3rS9+DPlnfG8hBvGi6tvQIuZmXGCxF/73hU0/MyGhbmEjIKRtG6b0sJYKelRLTPW
XgK7s5pESgiwf2YC/2MGDXjAJfpfCd0RpLdvd4eRiXtVlE9qO9bND94E7PgQ/xqZ
J1i2xWFndWa6nfFnRxZmCStCOZWYYPlaxr+FZceFbpMwzTNs4g3d4tLNUcbKAIH4
0wIDAQAB
-----END PUBLIC KEY-----
";

/// Key sizes below this are refused when loading: hexpm/specifications requires 2048-bit keys.
pub const MIN_KEY_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "not an RSA public key in PEM form (tried SPKI `BEGIN PUBLIC KEY` and PKCS#1 `BEGIN RSA PUBLIC KEY`): {0}"
    )]
    PublicKeyPem(String),
    #[error(
        "not an RSA private key in PEM form (tried PKCS#8 `BEGIN PRIVATE KEY` and PKCS#1 `BEGIN RSA PRIVATE KEY`): {0}"
    )]
    PrivateKeyPem(String),
    #[error("the RSA key has {bits} bits; at least {MIN_KEY_BITS} are required")]
    TooSmall { bits: usize },
    #[error("generating an RSA key failed: {0}")]
    Generate(String),
    #[error("encoding the key as PEM failed: {0}")]
    Encode(String),
}

/// A repository's public key, for verifying registry resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoPublicKey {
    key: RsaPublicKey,
}

impl RepoPublicKey {
    /// Reads a PEM public key in SPKI (`BEGIN PUBLIC KEY`, as hex.pm publishes) or PKCS#1
    /// (`BEGIN RSA PUBLIC KEY`, as `mix hex.registry build` writes) form.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let key = match RsaPublicKey::from_public_key_pem(pem.trim()) {
            Ok(key) => key,
            Err(spki) => RsaPublicKey::from_pkcs1_pem(pem.trim()).map_err(|pkcs1| {
                KeyError::PublicKeyPem(format!("SPKI: {spki}; PKCS#1: {pkcs1}"))
            })?,
        };
        check_size(key.size() * 8)?;
        Ok(Self { key })
    }

    /// Hex.pm's own key.
    pub fn hexpm() -> Self {
        Self::from_pem(HEXPM_PUBLIC_KEY_PEM).expect("the built-in hex.pm key parses")
    }

    /// The key as SPKI PEM: the form every Hex client reads (hexpm-rust only reads this one).
    pub fn to_spki_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// `SHA256:<base64>` of the key's SSH wire encoding: the fingerprint form hex_core
    /// (`ssh:hostkey_fingerprint(sha256, Key)`) and `mix hex.repo` show.
    pub fn fingerprint(&self) -> String {
        let mut blob = Vec::new();
        ssh_string(&mut blob, b"ssh-rsa");
        ssh_mpint(&mut blob, &self.key.e().to_bytes_be());
        ssh_mpint(&mut blob, &self.key.n().to_bytes_be());
        format!("SHA256:{}", base64_no_pad(&Sha256::digest(&blob)))
    }

    /// True when `signature` is a valid RSA-PKCS1-SHA512 signature of exactly `payload`.
    pub fn verify(&self, payload: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = Signature::try_from(signature) else {
            return false;
        };
        VerifyingKey::<Sha512>::new(self.key.clone())
            .verify(payload, &signature)
            .is_ok()
    }
}

/// A repository's private key, for signing registry resources of repositories we build.
#[derive(Clone)]
pub struct RepoSigningKey {
    key: RsaPrivateKey,
}

impl std::fmt::Debug for RepoSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepoSigningKey(..)")
    }
}

impl RepoSigningKey {
    /// Reads a PEM private key in PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`, as `openssl genrsa -traditional` writes) form.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let key = match RsaPrivateKey::from_pkcs8_pem(pem.trim()) {
            Ok(key) => key,
            Err(pkcs8) => RsaPrivateKey::from_pkcs1_pem(pem.trim()).map_err(|pkcs1| {
                KeyError::PrivateKeyPem(format!("PKCS#8: {pkcs8}; PKCS#1: {pkcs1}"))
            })?,
        };
        check_size(key.size() * 8)?;
        Ok(Self { key })
    }

    /// A new random key of `bits` bits (at least [`MIN_KEY_BITS`]).
    pub fn generate(bits: usize) -> Result<Self, KeyError> {
        check_size(bits)?;
        let key = RsaPrivateKey::new(&mut rand_core::OsRng, bits)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(Self { key })
    }

    /// The key as PKCS#8 PEM.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    pub fn public_key(&self) -> RepoPublicKey {
        RepoPublicKey {
            key: self.key.to_public_key(),
        }
    }

    /// RSA-PKCS1-SHA512 signature of `payload`. Deterministic: PKCS#1 v1.5 has no salt.
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        SigningKey::<Sha512>::new(self.key.clone())
            .sign(payload)
            .to_vec()
    }
}

/// RFC 4251 `string`: a u32 length, then the bytes.
fn ssh_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// RFC 4251 `mpint` of a non-negative number: minimal big-endian bytes, with a zero byte in
/// front when the high bit is set so it does not read as negative.
fn ssh_mpint(out: &mut Vec<u8>, big_endian: &[u8]) {
    let trimmed: &[u8] = match big_endian.iter().position(|b| *b != 0) {
        Some(first) => &big_endian[first..],
        None => &[],
    };
    if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
        out.extend_from_slice(&(trimmed.len() as u32 + 1).to_be_bytes());
        out.push(0);
        out.extend_from_slice(trimmed);
    } else {
        ssh_string(out, trimmed);
    }
}

fn check_size(bits: usize) -> Result<(), KeyError> {
    if bits < MIN_KEY_BITS {
        return Err(KeyError::TooSmall { bits });
    }
    Ok(())
}

/// Standard base64 without padding, as `ssh:hostkey_fingerprint/2` prints it. Ten lines do not
/// justify a dependency.
fn base64_no_pad(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_no_pad(b""), "");
        assert_eq!(base64_no_pad(b"f"), "Zg");
        assert_eq!(base64_no_pad(b"fo"), "Zm8");
        assert_eq!(base64_no_pad(b"foo"), "Zm9v");
        assert_eq!(base64_no_pad(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn hexpm_key_is_2048_bits() {
        assert_eq!(RepoPublicKey::hexpm().key.size() * 8, 2048);
    }
}
