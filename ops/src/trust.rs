//! Keys with roles in a signed trust document: issuing it (`precomp keys init`, `add`,
//! `rotate`, `revoke`, `renew`), storing it where the mirror serves it, and a client's refresh
//! (fetch, verify against a pinned root, follow rotations, refuse rollbacks, cache).
//!
//! The format and the acceptance rules are `precomp_proto::trust`. On the mirror's machine:
//!
//! ```text
//! DATA/trust/trust.doc            the current signed document (GET /precomp/v1/trust)
//! DATA/trust/history/N.doc        every version ever issued (GET /precomp/v1/trust/N)
//! ```
//!
//! A new version is written to `history/` first (created exclusively: two operators issuing
//! at once cannot both write version N), then `trust.doc` is replaced atomically (temporary
//! file, sync, rename, sync of the directory).

use std::io::Write;
use std::path::{Path, PathBuf};

use precomp_http::artifacts::ArtifactClient;
use precomp_proto::file::ReadError;
use precomp_proto::manifest::{ArtifactPublicKey, ArtifactSigningKey};
pub use precomp_proto::time::{unix_now, utc};
use precomp_proto::trust::{
    accept, Accepted, ChainError, KeyStatus, Revocation, Role, SignedTrustDocument, TrustDocument,
    TrustError, TrustKey, MAX_TRUST_DOCUMENT_SIZE, MAX_TRUST_TEXT, TRUST_FORMAT,
};
use prost::Message;

/// The trust directory under a data directory.
pub const TRUST_DIR: &str = "trust";

/// Default validity of a newly issued document.
pub const DEFAULT_VALID_DAYS: u32 = 365;

/// At most this many versions are walked in one refresh.
pub use precomp_proto::trust::MAX_CHAIN_STEPS;

const DAY: i64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum TrustOpsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("{path}: {source}")]
    Document { path: PathBuf, source: TrustError },
    #[error("{} has no trust document yet: create one with `precomp keys init --root ROOT.key`", dir.display())]
    NoDocument { dir: PathBuf },
    #[error("{} already exists: the trust document is initialised; change it with `precomp keys add|rotate|revoke|renew`", path.display())]
    Exists { path: PathBuf },
    #[error("version {version} was issued meanwhile ({} exists): someone else changed the trust document; run the command again", path.display())]
    Raced { version: u64, path: PathBuf },
    #[error("{key_id} is not a root key of trust document version {version} (its roots: {roots}); sign with one of them")]
    NotARoot {
        key_id: String,
        version: u64,
        roots: String,
    },
    #[error(
        "trust document version {version} lists no key {key_id} (`precomp keys list` shows them)"
    )]
    UnknownKey { key_id: String, version: u64 },
    #[error("{key_id} is already in the trust document")]
    AlreadyListed { key_id: String },
    #[error("{key_id} is already revoked")]
    AlreadyRevoked { key_id: String },
    #[error("{0}")]
    Usage(String),
    #[error("the mirror: {0}")]
    Mirror(String),
    #[error("the mirror at {url} publishes no trust document (GET /precomp/v1/trust is 404): its operator creates one with `precomp keys init`")]
    NotPublished { url: String },
    #[error("the mirror does not have trust document version {version}, needed to follow the chain of rotations from the version this client holds")]
    MissingVersion { version: u64 },
    #[error("the mirror's trust document is {versions} versions ahead of this client's, more than the {MAX_CHAIN_STEPS} it walks at once")]
    TooFarBehind { versions: u64 },
    #[error(transparent)]
    Read(#[from] ReadError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrustOpsError + '_ {
    move |source| TrustOpsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A verified document and its exact signed bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub document: TrustDocument,
    pub bytes: Vec<u8>,
}

/// The trust directory of a data directory (or any directory an operator keeps it in).
#[derive(Clone, Debug)]
pub struct TrustDir {
    root: PathBuf,
}

impl TrustDir {
    pub fn new(root: impl Into<PathBuf>) -> TrustDir {
        TrustDir { root: root.into() }
    }

    /// `DATA/trust`.
    pub fn of_data(data: &Path) -> TrustDir {
        TrustDir::new(data.join(TRUST_DIR))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn current_path(&self) -> PathBuf {
        self.root.join("trust.doc")
    }

    pub fn version_path(&self, version: u64) -> PathBuf {
        self.root.join("history").join(format!("{version}.doc"))
    }

    /// The current document, verified against the root keys it lists; `None` if there is none.
    pub fn load(&self) -> Result<Option<Held>, TrustOpsError> {
        let path = self.current_path();
        let bytes = match read_bounded(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let document = SignedTrustDocument::decode(&bytes)
            .and_then(|signed| signed.verify_self())
            .map_err(|source| TrustOpsError::Document {
                path: path.clone(),
                source,
            })?;
        Ok(Some(Held { document, bytes }))
    }

    fn require(&self) -> Result<Held, TrustOpsError> {
        self.load()?.ok_or_else(|| TrustOpsError::NoDocument {
            dir: self.root.clone(),
        })
    }

    /// Writes a new version: `history/N.doc` exclusively, then `trust.doc` atomically.
    fn publish(&self, held: &Held) -> Result<(), TrustOpsError> {
        let history = self.root.join("history");
        std::fs::create_dir_all(&history).map_err(io(&history))?;
        let versioned = self.version_path(held.document.version);
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&versioned)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(TrustOpsError::Raced {
                    version: held.document.version,
                    path: versioned,
                })
            }
            Err(e) => return Err(io(&versioned)(e)),
        };
        file.write_all(&held.bytes)
            .and_then(|()| file.sync_all())
            .map_err(io(&versioned))?;
        sync_dir(&history)?;
        write_atomically(&self.current_path(), &held.bytes)
    }
}

/// A key to list, as `init` and `add` take it.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub key: ArtifactPublicKey,
    /// A label for people; empty for none.
    pub name: String,
    pub roles: Vec<Role>,
    /// Unix seconds; `None`: no end.
    pub not_after: Option<i64>,
}

/// What replaces a key in [`rotate`].
pub enum Replacement<'a> {
    /// A builder's or auditor's new public key; it gets the old key's roles.
    Key {
        key: ArtifactPublicKey,
        name: String,
    },
    /// A new root key: the new document is signed by the old root and this one.
    Root {
        key: &'a ArtifactSigningKey,
        name: String,
    },
}

/// When and for how long documents are issued.
#[derive(Clone, Copy, Debug)]
pub struct Issue {
    /// Unix seconds.
    pub now: i64,
    pub valid_days: u32,
}

impl Issue {
    pub fn now(valid_days: u32) -> Issue {
        Issue {
            now: unix_now(),
            valid_days,
        }
    }

    /// When a document issued now expires; a validity of 0 days is refused, never rounded up.
    fn expires_at(&self) -> Result<i64, TrustOpsError> {
        if self.valid_days == 0 {
            return Err(TrustOpsError::Usage(
                "a trust document must be valid for at least 1 day (--valid-days)".into(),
            ));
        }
        Ok(self.now + i64::from(self.valid_days) * DAY)
    }
}

/// Creates version 1: `root` as the root key, and `keys`.
pub fn init(
    dir: &TrustDir,
    root: &ArtifactSigningKey,
    root_name: &str,
    keys: &[NewKey],
    issue: Issue,
) -> Result<Held, TrustOpsError> {
    if dir.current_path().exists() {
        return Err(TrustOpsError::Exists {
            path: dir.current_path(),
        });
    }
    let mut document = TrustDocument {
        format: TRUST_FORMAT,
        version: 1,
        issued_at: issue.now,
        expires_at: issue.expires_at()?,
        keys: vec![TrustKey::new(
            &root.public_key(),
            root_name,
            &[Role::Root],
            issue.now,
        )?],
        revocations: Vec::new(),
    };
    for key in keys {
        add_entry(&mut document, key, issue.now)?;
    }
    document.validate()?;
    let signed = SignedTrustDocument::sign(&document, &[root])?;
    let held = Held {
        bytes: signed.encode_to_vec(),
        document,
    };
    dir.publish(&held)?;
    Ok(held)
}

/// Adds a key (a new builder or auditor, or another root).
pub fn add(
    dir: &TrustDir,
    root: &ArtifactSigningKey,
    key: &NewKey,
    issue: Issue,
) -> Result<Held, TrustOpsError> {
    reissue(dir, root, &[], issue, |document| {
        add_entry(document, key, issue.now)
    })
}

/// Replaces `old_key_id`. A builder or auditor key: the new key gets its roles, the old one
/// is marked superseded and, with `retire_at`, stops counting then (without, it keeps counting
/// for what it signed until it is revoked). A root key: the new root replaces it and the
/// document is signed by both, so clients holding the previous document follow.
pub fn rotate(
    dir: &TrustDir,
    root: &ArtifactSigningKey,
    old_key_id: &str,
    replacement: Replacement<'_>,
    retire_at: Option<i64>,
    issue: Issue,
) -> Result<Held, TrustOpsError> {
    let current = dir.require()?;
    let old = current
        .document
        .key(old_key_id)
        .ok_or_else(|| TrustOpsError::UnknownKey {
            key_id: old_key_id.to_string(),
            version: current.document.version,
        })?
        .clone();
    match replacement {
        Replacement::Key { key, name } => {
            if old.has_role(Role::Root) {
                return Err(TrustOpsError::Usage(format!(
                    "{old_key_id} is a root key: rotate it with --new-root NEW_ROOT.key (the \
                     private key: the new document is signed by the old root and the new one)"
                )));
            }
            let roles: Vec<Role> = old.roles.iter().filter_map(|r| Role::parse(r)).collect();
            let new_id = key.key_id();
            reissue(dir, root, &[], issue, |document| {
                add_entry(
                    document,
                    &NewKey {
                        key: key.clone(),
                        name: name.clone(),
                        roles,
                        not_after: None,
                    },
                    issue.now,
                )?;
                let entry = document
                    .keys
                    .iter_mut()
                    .find(|k| k.key_id == old_key_id)
                    .expect("checked above");
                entry.superseded_by = new_id;
                if let Some(at) = retire_at {
                    entry.not_after = at.max(entry.not_before + 1);
                }
                Ok(())
            })
        }
        Replacement::Root {
            key: new_root,
            name,
        } => {
            if !old.has_role(Role::Root) {
                return Err(TrustOpsError::Usage(format!(
                    "{old_key_id} is not a root key: give its replacement's public key with --new"
                )));
            }
            let new_id = new_root.public_key().key_id();
            reissue(dir, root, &[new_root], issue, |document| {
                add_entry(
                    document,
                    &NewKey {
                        key: new_root.public_key(),
                        name: name.clone(),
                        roles: vec![Role::Root],
                        not_after: None,
                    },
                    issue.now,
                )?;
                // The old root keeps its other roles, if any; as a root it is gone.
                let entry = document
                    .keys
                    .iter_mut()
                    .find(|k| k.key_id == old_key_id)
                    .expect("checked above");
                entry.roles.retain(|r| r != Role::Root.as_str());
                entry.superseded_by = new_id;
                document.keys.retain(|k| !k.roles.is_empty());
                Ok(())
            })
        }
    }
}

/// Revokes `key_id`: from this version on, clients refuse its signatures, naming `reason`.
pub fn revoke(
    dir: &TrustDir,
    root: &ArtifactSigningKey,
    key_id: &str,
    reason: &str,
    issue: Issue,
) -> Result<Held, TrustOpsError> {
    if reason.is_empty() || reason.len() > MAX_TRUST_TEXT || reason.chars().any(char::is_control) {
        return Err(TrustOpsError::Usage(format!(
            "the reason must be 1 to {MAX_TRUST_TEXT} bytes on one line"
        )));
    }
    if !precomp_proto::trust::valid_key_id(key_id) {
        return Err(TrustOpsError::Usage(format!(
            "{key_id:?} is not a key id (ed25519: and 16 lowercase hex digits, as `precomp keys \
             list` shows them)"
        )));
    }
    if key_id == root.public_key().key_id() {
        return Err(TrustOpsError::Usage(
            "a root key cannot revoke itself: rotate it first (`precomp keys rotate --old ID \
             --new-root NEW.key`), then revoke it with the new root"
                .into(),
        ));
    }
    reissue(dir, root, &[], issue, |document| {
        if document.revocation(key_id).is_some() {
            return Err(TrustOpsError::AlreadyRevoked {
                key_id: key_id.to_string(),
            });
        }
        document.revocations.push(Revocation {
            key_id: key_id.to_string(),
            reason: reason.to_string(),
            revoked_at: issue.now,
            version: document.version,
        });
        Ok(())
    })
}

/// Re-issues the document unchanged but for its version and times: before it expires.
pub fn renew(
    dir: &TrustDir,
    root: &ArtifactSigningKey,
    issue: Issue,
) -> Result<Held, TrustOpsError> {
    reissue(dir, root, &[], issue, |_| Ok(()))
}

/// The next version of the current document, changed by `edit`, signed by `root` (which must
/// be one of its roots) and `extra`, checked as a client holding the current one would check
/// it, and published.
fn reissue(
    dir: &TrustDir,
    root: &ArtifactSigningKey,
    extra: &[&ArtifactSigningKey],
    issue: Issue,
    edit: impl FnOnce(&mut TrustDocument) -> Result<(), TrustOpsError>,
) -> Result<Held, TrustOpsError> {
    let current = dir.require()?;
    let roots = current.document.root_keys();
    let root_id = root.public_key().key_id();
    if !roots.iter().any(|k| k.key_id() == root_id) {
        return Err(TrustOpsError::NotARoot {
            key_id: root_id,
            version: current.document.version,
            roots: roots
                .iter()
                .map(ArtifactPublicKey::key_id)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut document = current.document.clone();
    document.version += 1;
    document.issued_at = issue.now;
    document.expires_at = issue.expires_at()?;
    edit(&mut document)?;
    document.validate()?;
    let mut signers = vec![root];
    signers.extend_from_slice(extra);
    let signed = SignedTrustDocument::sign(&document, &signers)?;
    let bytes = signed.encode_to_vec();
    // What a client holding the current version does with it.
    match accept(
        Some((&current.document, &current.bytes)),
        &root.public_key(),
        &bytes,
    )? {
        Accepted::Newer(_) => {}
        Accepted::Same => unreachable!("the version was increased"),
    }
    let held = Held { document, bytes };
    dir.publish(&held)?;
    Ok(held)
}

fn add_entry(document: &mut TrustDocument, key: &NewKey, now: i64) -> Result<(), TrustOpsError> {
    let key_id = key.key.key_id();
    if document.key(&key_id).is_some() {
        return Err(TrustOpsError::AlreadyListed { key_id });
    }
    if document.revocation(&key_id).is_some() {
        return Err(TrustOpsError::AlreadyRevoked { key_id });
    }
    if key.roles.is_empty() {
        return Err(TrustOpsError::Usage(format!("{key_id}: give it a role")));
    }
    let mut entry = TrustKey::new(&key.key, &key.name, &key.roles, now)?;
    if let Some(at) = key.not_after {
        if at <= now {
            return Err(TrustOpsError::Usage(format!(
                "{key_id}: its validity would end before it starts"
            )));
        }
        entry.not_after = at;
    }
    document.keys.push(entry);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// What a client trusts after [`refresh`].
#[derive(Clone, Debug)]
pub struct ClientTrust {
    pub held: Held,
    /// The versions verified on the way, oldest first (empty: nothing new).
    pub followed: Vec<u64>,
    /// Set when the mirror could not be asked and the cached document was used.
    pub offline: Option<String>,
}

/// Where a client caches the last document it verified for the root `pinned`:
/// `$XDG_CACHE_HOME/precomp/trust/<id>.doc`, else `$HOME/.cache/precomp/trust/<id>.doc`.
pub fn default_cache_path(pinned: &ArtifactPublicKey) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })?;
    let id = pinned.key_id().replace(':', "-");
    Some(base.join("precomp/trust").join(format!("{id}.doc")))
}

/// The document cached at `path`, if it is one whose own roots signed it. A missing or
/// unreadable cache is nothing held (the chain is then followed from `pinned` again).
pub fn load_cache(path: &Path) -> Option<Held> {
    let bytes = match read_bounded(path) {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return None,
        Err(e) => {
            tracing::warn!("ignoring the trust cache: {e}");
            return None;
        }
    };
    match SignedTrustDocument::decode(&bytes).and_then(|s| s.verify_self()) {
        Ok(document) => Some(Held { document, bytes }),
        Err(e) => {
            tracing::warn!("ignoring the trust cache {}: {e}", path.display());
            None
        }
    }
}

/// Fetches the mirror's trust document and verifies it as a client holding `cached` (or
/// nothing) and pinning `pinned`: a newer version must be signed by a root the client trusts;
/// across a root rotation the versions in between are fetched and verified one by one; an
/// older one is a rollback and refused. The result must not be expired at `now`. When the
/// mirror cannot be reached, an unexpired cached document is used (`offline`). The caller
/// stores the result with [`store_cache`].
pub async fn refresh(
    client: &ArtifactClient,
    pinned: &ArtifactPublicKey,
    cached: Option<Held>,
    now: i64,
) -> Result<ClientTrust, TrustOpsError> {
    let latest = match client.trust_document(None).await {
        Ok(Some(bytes)) => bytes.to_vec(),
        Ok(None) => {
            return Err(TrustOpsError::NotPublished {
                url: client.base_url().to_string(),
            })
        }
        Err(e) => {
            let Some(held) = cached else {
                return Err(TrustOpsError::Mirror(e.to_string()));
            };
            held.document.check_fresh(now)?;
            return Ok(ClientTrust {
                held,
                followed: Vec::new(),
                offline: Some(e.to_string()),
            });
        }
    };
    let held = cached.as_ref().map(|h| (&h.document, h.bytes.as_slice()));
    let read = |version| async move {
        let bytes = client.trust_document(Some(version)).await?;
        Ok::<_, precomp_http::Error>(bytes.map(|b| b.to_vec()))
    };
    let followed = precomp_proto::trust::follow(held, pinned, latest, read)
        .await
        .map_err(|e| match e {
            ChainError::Latest(e) | ChainError::Step { error: e, .. } => TrustOpsError::Trust(e),
            ChainError::Missing { version } => TrustOpsError::MissingVersion { version },
            ChainError::TooFar { start, target } if target >= start => {
                TrustOpsError::TooFarBehind {
                    versions: target - start + 1,
                }
            }
            // A version 0: `accept` refuses older versions before it checks signatures.
            ChainError::TooFar { target, .. } => TrustOpsError::Trust(TrustError::Invalid {
                version: target,
                message: "versions start at 1".into(),
            }),
            ChainError::WrongVersion { version, found } => {
                TrustOpsError::Trust(TrustError::Invalid {
                    version: found,
                    message: format!("the mirror served it as version {version}"),
                })
            }
            ChainError::Read(e) => TrustOpsError::Mirror(e.to_string()),
        })?;
    let held = match cached {
        Some(held) if followed.versions.is_empty() => held,
        _ => Held {
            document: followed.document,
            bytes: followed.bytes,
        },
    };
    held.document.check_fresh(now)?;
    Ok(ClientTrust {
        held,
        followed: followed.versions,
        offline: None,
    })
}

/// Stores the verified document for the next run (temporary file, then rename).
pub fn store_cache(path: &Path, held: &Held) -> Result<(), TrustOpsError> {
    write_atomically(path, &held.bytes)
}

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

/// A trust document as `precomp keys list --json` prints it (docs/operations.md): its
/// version and validity, each key with its roles, validity and status at `now` (`active`,
/// `revoked`, `not_yet_valid`, `expired`), and the revocations. Absent optional values
/// (`not_after`, `superseded_by`, a revocation's `version`) are null. Fields in name order,
/// as always printed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DocumentJson {
    pub expired: bool,
    pub expires_at: i64,
    pub issued_at: i64,
    pub keys: Vec<KeyJson>,
    pub revocations: Vec<RevocationJson>,
    pub version: u64,
}

/// One key of a [`DocumentJson`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyJson {
    pub key_id: String,
    pub name: String,
    pub not_after: Option<i64>,
    pub not_before: i64,
    pub roles: Vec<String>,
    pub status: &'static str,
    pub superseded_by: Option<String>,
}

/// One revocation of a [`DocumentJson`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RevocationJson {
    pub key_id: String,
    pub reason: String,
    pub revoked_at: i64,
    pub version: Option<u64>,
}

impl DocumentJson {
    /// `document` as seen at `now` (Unix seconds).
    pub fn new(document: &TrustDocument, now: i64) -> DocumentJson {
        DocumentJson {
            expired: document.check_fresh(now).is_err(),
            expires_at: document.expires_at,
            issued_at: document.issued_at,
            keys: document
                .keys
                .iter()
                .map(|k| KeyJson {
                    key_id: k.key_id.clone(),
                    name: k.name.clone(),
                    not_after: (k.not_after != 0).then_some(k.not_after),
                    not_before: k.not_before,
                    roles: k.roles.clone(),
                    status: match document.status(&k.key_id, now) {
                        Some(KeyStatus::Active) => "active",
                        Some(KeyStatus::Revoked { .. }) => "revoked",
                        Some(KeyStatus::NotYetValid { .. }) => "not_yet_valid",
                        Some(KeyStatus::Expired { .. }) => "expired",
                        None => "unknown",
                    },
                    superseded_by: (!k.superseded_by.is_empty()).then(|| k.superseded_by.clone()),
                })
                .collect(),
            revocations: document
                .revocations
                .iter()
                .map(|r| RevocationJson {
                    key_id: r.key_id.clone(),
                    reason: r.reason.clone(),
                    revoked_at: r.revoked_at,
                    version: (r.version != 0).then_some(r.version),
                })
                .collect(),
            version: document.version,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Files and time
// ---------------------------------------------------------------------------------------------

fn read_bounded(path: &Path) -> Result<Vec<u8>, ReadError> {
    precomp_proto::file::read_bounded(path, MAX_TRUST_DOCUMENT_SIZE as u64)
}

/// Temporary file beside `path`, synced, renamed over it, directory synced.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TrustOpsError> {
    // A bare file name (`--trust-cache rel.doc`) has the empty path as its parent.
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io(path))?;
    tmp.persist(path).map_err(|e| TrustOpsError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), TrustOpsError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod json_tests {
    use super::*;

    /// `keys list --json`: every field of docs/operations.md's document, optional values
    /// null when absent, fields in name order; statuses as seen at `now`.
    #[test]
    fn a_document_prints_with_statuses_and_nulls() {
        let document = TrustDocument {
            format: TRUST_FORMAT,
            version: 3,
            issued_at: 100,
            expires_at: 1000,
            keys: vec![
                TrustKey {
                    key_id: "ed25519:aa".into(),
                    roles: vec!["root".into()],
                    not_before: 0,
                    not_after: 0,
                    name: "root".into(),
                    superseded_by: "ed25519:cc".into(),
                    ..TrustKey::default()
                },
                TrustKey {
                    key_id: "ed25519:bb".into(),
                    roles: vec!["builder".into()],
                    not_before: 0,
                    not_after: 150,
                    name: "b1".into(),
                    ..TrustKey::default()
                },
            ],
            revocations: vec![Revocation {
                key_id: "ed25519:dd".into(),
                reason: "lost".into(),
                revoked_at: 120,
                version: 0,
            }],
        };
        assert_eq!(
            serde_json::to_string(&DocumentJson::new(&document, 200)).unwrap(),
            r#"{"expired":false,"expires_at":1000,"issued_at":100,"keys":[{"key_id":"ed25519:aa","name":"root","not_after":null,"not_before":0,"roles":["root"],"status":"active","superseded_by":"ed25519:cc"},{"key_id":"ed25519:bb","name":"b1","not_after":150,"not_before":0,"roles":["builder"],"status":"expired","superseded_by":null}],"revocations":[{"key_id":"ed25519:dd","reason":"lost","revoked_at":120,"version":null}],"version":3}"#
        );
        assert!(DocumentJson::new(&document, 1000).expired);
    }
}
