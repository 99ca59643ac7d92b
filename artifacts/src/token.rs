//! Upload tokens: `pct_` and 43 base64url characters (32 bytes from the OS's random number
//! generator). Only the token's SHA-256 is ever stored; a presented token is hashed and looked
//! up by that hash, and the hashes are compared in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

/// Every token starts with this, so a leaked one is easy to recognise (and to scan for).
pub const TOKEN_PREFIX: &str = "pct_";

/// Characters after the prefix: 32 bytes in unpadded base64url.
const TOKEN_BODY_LEN: usize = 43;

/// A new random token. Show it once; store [`token_sha256`] of it.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `token` has the shape of one of ours (checked before any lookup).
pub fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|body| {
        body.len() == TOKEN_BODY_LEN
            && URL_SAFE_NO_PAD
                .decode(body)
                .is_ok_and(|bytes| bytes.len() == 32)
    })
}

/// What the database holds for a token: the SHA-256 of its text.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time equality of two digests.
pub fn digests_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token in an `Authorization: Bearer TOKEN` header value; `None` when the header is
/// not a bearer credential.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Token names: letters, digits, `-`, `_` and `.`, not starting with `.`, at most 64.
pub fn valid_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What a token may do. Every scope also reads (`reader`): builders and auditors fetch
/// sources and artifacts like anyone.
///
/// | scope | may |
/// |---|---|
/// | `reader` | read the Hex routes and the artifact API's public reads, and report misses, when the mirror requires a token for that (`--require-read-token`) |
/// | `builder` | upload artifacts, publish manifests, report failed builds, list open misses, lease build jobs |
/// | `auditor` | countersign published manifests, post verdicts, lease audit jobs |
/// | `publisher` | reserved: publishing packages to an organisation's repository on the mirror (not served yet); today it reads only |
///
/// The keys still decide what a builder or auditor may sign (`trust_policy`): a scope lets
/// a token use an endpoint at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Reader,
    Builder,
    Auditor,
    Publisher,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::Reader,
        Scope::Builder,
        Scope::Auditor,
        Scope::Publisher,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Reader => "reader",
            Scope::Builder => "builder",
            Scope::Auditor => "auditor",
            Scope::Publisher => "publisher",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == text)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Scopes as the `tokens.scopes` column holds them: sorted, space-separated.
pub fn scopes_text(scopes: &[Scope]) -> String {
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    scopes
        .iter()
        .map(|scope| scope.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The scopes of a `tokens.scopes` value; unknown words (a newer precomp's) are skipped.
pub fn parse_scopes(text: &str) -> Vec<Scope> {
    text.split_whitespace().filter_map(Scope::parse).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn scopes_round_trip() {
        let scopes = [Scope::Auditor, Scope::Builder, Scope::Auditor];
        assert_eq!(scopes_text(&scopes), "builder auditor");
        assert_eq!(
            parse_scopes("builder auditor future"),
            vec![Scope::Builder, Scope::Auditor]
        );
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(Scope::parse("admin"), None);
    }

    use super::*;

    #[test]
    fn tokens_are_random_well_formed_and_hashed() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + TOKEN_BODY_LEN);
        assert!(well_formed(&a), "{a}");
        assert!(!well_formed(&a[..a.len() - 1]));
        assert!(!well_formed(&a.replacen("pct_", "pat_", 1)));
        assert!(!well_formed(&format!("{}!", &a[..a.len() - 1])));
        assert_eq!(token_sha256(&a), token_sha256(&a.clone()));
        assert_ne!(token_sha256(&a), token_sha256(&b));
        assert!(digests_equal(&token_sha256(&a), &token_sha256(&a)));
        assert!(!digests_equal(&token_sha256(&a), &token_sha256(&b)));
        assert!(!digests_equal(&[1, 2], &[1, 2, 3]));
    }

    #[test]
    fn reads_bearer_headers() {
        assert_eq!(bearer("Bearer pct_x"), Some("pct_x"));
        assert_eq!(bearer("bearer  pct_x "), Some("pct_x"));
        assert_eq!(bearer("Basic dXNlcg=="), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn token_names() {
        assert!(valid_token_name("builder-1.example"));
        assert!(!valid_token_name(""));
        assert!(!valid_token_name(".hidden"));
        assert!(!valid_token_name("a b"));
        assert!(!valid_token_name(&"a".repeat(65)));
    }
}
