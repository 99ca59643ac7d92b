//! `precomp keys`: ed25519 keys that sign artifact manifests (builders, auditors), and the
//! signed trust document that says which of them clients trust, in which role, until when,
//! and which are revoked (`ops::trust`, `docs/operations.md`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use precomp_ops::trust::{
    self, utc, Held, Issue, NewKey, Replacement, TrustDir, DEFAULT_VALID_DAYS,
};
use precomp_proto::manifest::{ArtifactPublicKey, ArtifactSigningKey};
use precomp_proto::trust::{valid_key_id, KeyStatus, Role, SignedTrustDocument, TrustDocument};

use super::write_new;
use crate::Context;

#[derive(Subcommand)]
pub enum KeysCommand {
    Generate(GenerateArgs),
    Init(InitArgs),
    Add(AddArgs),
    Rotate(RotateArgs),
    Revoke(RevokeArgs),
    Renew(RenewArgs),
    List(ListArgs),
}

/// Writes a new ed25519 signing key to DIR/NAME.key (PKCS#8 PEM, mode 0600) and its public
/// key to DIR/NAME.pub (SPKI PEM), and prints the key id clients trust it by. Keys are
/// never overwritten. Keep NAME.key outside any build sandbox.
#[derive(Args)]
pub struct GenerateArgs {
    /// The key's name, e.g. the builder's host name: letters, digits, `-`, `_` and `.`.
    #[arg(long)]
    name: String,
    /// Directory for the two files; created if missing.
    #[arg(long)]
    out: PathBuf,
}

/// Where the trust document is kept and how long a new version is valid.
#[derive(Args)]
struct DocArgs {
    /// The trust directory [default: DATA/trust, which `precomp serve` serves as
    /// /precomp/v1/trust]. Keep it elsewhere to issue on an offline machine, then copy the
    /// directory to the mirror.
    #[arg(long, value_name = "DIR")]
    trust_dir: Option<PathBuf>,
    /// Days the new version is valid (at least 1); clients refuse an expired document, so
    /// renew before.
    #[arg(long, default_value_t = DEFAULT_VALID_DAYS,
          value_parser = clap::value_parser!(u32).range(1..))]
    valid_days: u32,
}

/// Creates the trust document (version 1): ROOT.key's public key as its root, and the given
/// builder and auditor keys. Clients pin ROOT.pub (`precomp fetch --root-key`).
#[derive(Args)]
pub struct InitArgs {
    /// The root's private key (`precomp keys generate`); keep it offline.
    #[arg(long, value_name = "ROOT.key")]
    root: PathBuf,
    /// A builder's public key. Repeatable.
    #[arg(long = "builder", value_name = "FILE.pub")]
    builders: Vec<PathBuf>,
    /// An auditor's public key. Repeatable.
    #[arg(long = "auditor", value_name = "FILE.pub")]
    auditors: Vec<PathBuf>,
    #[command(flatten)]
    doc: DocArgs,
}

/// Adds a key with a role: a new builder, auditor or a second root. Issues a new version.
#[derive(Args)]
pub struct AddArgs {
    /// The public key (SPKI PEM).
    #[arg(value_name = "KEY.pub")]
    key: PathBuf,
    /// builder, auditor or root. Repeatable.
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
    /// A label [default: the file name without .pub].
    #[arg(long)]
    name: Option<String>,
    /// Days from now until the key stops counting [default: until rotated out or revoked].
    #[arg(long, value_name = "DAYS")]
    valid_for_days: Option<u32>,
    /// A root's private key of the current document.
    #[arg(long, value_name = "ROOT.key")]
    root: PathBuf,
    #[command(flatten)]
    doc: DocArgs,
}

/// Replaces a key. A builder or auditor key: give the replacement's public key with --new;
/// it gets the old key's roles, the old key is marked superseded and, with
/// --retire-in-days, stops counting then. A root key: give the new root's private key with
/// --new-root; the new version is signed by both roots, so clients holding the previous
/// version follow the rotation. Issues a new version.
#[derive(Args)]
pub struct RotateArgs {
    /// The key id (or public key file) of the key being replaced.
    #[arg(long, value_name = "KEY")]
    old: String,
    /// The replacement's public key (builders and auditors).
    #[arg(
        long,
        value_name = "NEW.pub",
        conflicts_with = "new_root",
        required_unless_present = "new_root"
    )]
    new: Option<PathBuf>,
    /// The new root's private key (root rotation).
    #[arg(long, value_name = "NEW_ROOT.key")]
    new_root: Option<PathBuf>,
    /// A label for the new key [default: the file name without its extension].
    #[arg(long)]
    name: Option<String>,
    /// Days from now until the old key stops counting (builders and auditors) [default: it
    /// keeps counting for what it signed until revoked].
    #[arg(long, value_name = "DAYS")]
    retire_in_days: Option<u32>,
    /// A root's private key of the current document (for a root rotation: the old root).
    #[arg(long, value_name = "ROOT.key")]
    root: PathBuf,
    #[command(flatten)]
    doc: DocArgs,
}

/// Revokes a key: clients refuse its signatures from the new version on, naming the reason.
/// Issues a new version.
#[derive(Args)]
pub struct RevokeArgs {
    /// The key id (`ed25519:…`, as `precomp keys list` shows) or its public key file.
    #[arg(value_name = "KEY")]
    key: String,
    /// Why, on one line (clients show it).
    #[arg(long)]
    reason: String,
    /// A root's private key of the current document.
    #[arg(long, value_name = "ROOT.key")]
    root: PathBuf,
    #[command(flatten)]
    doc: DocArgs,
}

/// Re-issues the document with a new expiry (and version); nothing else changes.
#[derive(Args)]
pub struct RenewArgs {
    /// A root's private key of the current document.
    #[arg(long, value_name = "ROOT.key")]
    root: PathBuf,
    #[command(flatten)]
    doc: DocArgs,
}

/// Shows the trust document: version, validity, and each key with its roles, validity and
/// status (active, superseded, expired, revoked and why). Its signatures are checked against
/// the root keys it lists.
#[derive(Args)]
pub struct ListArgs {
    /// A signed trust document file [default: the trust directory's current one].
    #[arg(long, value_name = "FILE", conflicts_with = "trust_dir")]
    doc: Option<PathBuf>,
    /// The trust directory [default: DATA/trust].
    #[arg(long, value_name = "DIR")]
    trust_dir: Option<PathBuf>,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(context: &Context, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Generate(args) => generate(args),
        KeysCommand::Init(args) => {
            let dir = trust_dir(context, &args.doc);
            let root = read_signing_key(&args.root)?;
            let mut keys = Vec::new();
            for (files, role) in [
                (&args.builders, Role::Builder),
                (&args.auditors, Role::Auditor),
            ] {
                for file in files {
                    keys.push(NewKey {
                        key: read_public_key(file)?,
                        name: stem(file),
                        roles: vec![role],
                        not_after: None,
                    });
                }
            }
            let held = trust::init(
                &dir,
                &root,
                &stem(&args.root),
                &keys,
                Issue::now(args.doc.valid_days),
            )?;
            issued(context, &dir, &held);
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Add(args) => {
            let dir = trust_dir(context, &args.doc);
            let root = read_signing_key(&args.root)?;
            let roles = args
                .roles
                .iter()
                .map(|r| {
                    Role::parse(r)
                        .with_context(|| format!("role {r:?}: give builder, auditor or root"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let issue = Issue::now(args.doc.valid_days);
            let key = NewKey {
                key: read_public_key(&args.key)?,
                name: args.name.clone().unwrap_or_else(|| stem(&args.key)),
                roles,
                not_after: args
                    .valid_for_days
                    .map(|days| issue.now + i64::from(days) * 86_400),
            };
            let held = trust::add(&dir, &root, &key, issue)?;
            issued(context, &dir, &held);
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Rotate(args) => {
            let dir = trust_dir(context, &args.doc);
            let root = read_signing_key(&args.root)?;
            let old = key_id(&args.old)?;
            let issue = Issue::now(args.doc.valid_days);
            let retire_at = args
                .retire_in_days
                .map(|days| issue.now + i64::from(days) * 86_400);
            let new_root;
            let replacement = match (&args.new, &args.new_root) {
                (Some(file), _) => Replacement::Key {
                    key: read_public_key(file)?,
                    name: args.name.clone().unwrap_or_else(|| stem(file)),
                },
                (None, Some(file)) => {
                    new_root = read_signing_key(file)?;
                    Replacement::Root {
                        key: &new_root,
                        name: args.name.clone().unwrap_or_else(|| stem(file)),
                    }
                }
                (None, None) => {
                    bail!("give the replacement: --new NEW.pub or --new-root NEW_ROOT.key")
                }
            };
            let held = trust::rotate(&dir, &root, &old, replacement, retire_at, issue)?;
            issued(context, &dir, &held);
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke(args) => {
            let dir = trust_dir(context, &args.doc);
            let root = read_signing_key(&args.root)?;
            let id = key_id(&args.key)?;
            let held = trust::revoke(
                &dir,
                &root,
                &id,
                &args.reason,
                Issue::now(args.doc.valid_days),
            )?;
            issued(context, &dir, &held);
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Renew(args) => {
            let dir = trust_dir(context, &args.doc);
            let root = read_signing_key(&args.root)?;
            let held = trust::renew(&dir, &root, Issue::now(args.doc.valid_days))?;
            issued(context, &dir, &held);
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::List(args) => list(context, args),
    }
}

fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let valid = !args.name.is_empty()
        && !args.name.starts_with('.')
        && args
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        bail!(
            "key name {:?} must be letters, digits, `-`, `_` and `.`, not starting with `.`",
            args.name
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let private = args.out.join(format!("{}.key", args.name));
    let public = args.out.join(format!("{}.pub", args.name));
    for path in [&private, &public] {
        if path.exists() {
            bail!(
                "{} already exists; refusing to overwrite a key",
                path.display()
            );
        }
    }
    let key = ArtifactSigningKey::generate();
    write_new(&private, key.to_pem()?.as_bytes(), 0o600)?;
    write_new(&public, key.public_key().to_pem()?.as_bytes(), 0o644)?;
    println!("{} {}", key.public_key().key_id(), private.display());
    Ok(ExitCode::SUCCESS)
}

fn list(context: &Context, args: ListArgs) -> anyhow::Result<ExitCode> {
    let (document, source) = match &args.doc {
        Some(file) => {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let document = SignedTrustDocument::decode(&bytes)
                .and_then(|signed| signed.verify_self())
                .with_context(|| format!("{}", file.display()))?;
            (document, file.clone())
        }
        None => {
            let dir = match &args.trust_dir {
                Some(dir) => TrustDir::new(dir),
                None => TrustDir::of_data(&context.data()),
            };
            let held = dir.load()?.with_context(|| {
                format!(
                    "{} has no trust document yet: create one with `precomp keys init --root \
                     ROOT.key`",
                    dir.root().display()
                )
            })?;
            (held.document, dir.current_path())
        }
    };
    let now = trust::unix_now();
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&precomp_ops::trust::DocumentJson::new(&document, now))?
        );
    } else {
        print!("{}", document_text(&document, &source, now));
    }
    Ok(ExitCode::SUCCESS)
}

fn document_text(document: &TrustDocument, source: &Path, now: i64) -> String {
    let mut out = format!(
        "trust document version {} ({}), issued {}, expires {}{}\n",
        document.version,
        source.display(),
        utc(document.issued_at),
        utc(document.expires_at),
        if document.check_fresh(now).is_err() {
            " — EXPIRED: clients refuse it; run `precomp keys renew`"
        } else if document.expires_at - now < 30 * 86_400 {
            " — expires within 30 days: run `precomp keys renew`"
        } else {
            ""
        }
    );
    out.push_str(&format!(
        "{:<25} {:<16} {:<20} {:<21} {:<21} STATUS\n",
        "KEY", "ROLES", "NAME", "VALID FROM", "UNTIL"
    ));
    for key in &document.keys {
        out.push_str(&format!(
            "{:<25} {:<16} {:<20} {:<21} {:<21} {}\n",
            key.key_id,
            key.roles.join(","),
            key.name,
            utc(key.not_before),
            if key.not_after == 0 {
                "-".to_string()
            } else {
                utc(key.not_after)
            },
            status_text(document, &key.key_id, now)
        ));
    }
    for revocation in &document.revocations {
        if document.key(&revocation.key_id).is_none() {
            out.push_str(&format!(
                "{:<25} {:<16} {:<20} {:<21} {:<21} {}\n",
                revocation.key_id,
                "-",
                "-",
                "-",
                "-",
                status_text(document, &revocation.key_id, now)
            ));
        }
    }
    out
}

fn status_text(document: &TrustDocument, key_id: &str, now: i64) -> String {
    let superseded = document
        .key(key_id)
        .filter(|k| !k.superseded_by.is_empty())
        .map(|k| format!(", superseded by {}", k.superseded_by))
        .unwrap_or_default();
    match document.status(key_id, now) {
        Some(KeyStatus::Active) => format!("active{superseded}"),
        Some(KeyStatus::Revoked { reason, revoked_at }) => {
            format!("REVOKED {}: {reason}", utc(revoked_at))
        }
        Some(KeyStatus::NotYetValid { not_before }) => {
            format!("not valid before {}", utc(not_before))
        }
        Some(KeyStatus::Expired { not_after }) => {
            format!("expired {}{superseded}", utc(not_after))
        }
        None => "unknown".into(),
    }
}

/// What was written, and who serves it: the mirror re-reads `DATA/trust` on each request,
/// but a directory elsewhere (`--trust-dir`, an offline machine) is served by nobody until
/// it is copied there.
fn issued(context: &Context, dir: &TrustDir, held: &Held) {
    let served = if dir.current_path() == TrustDir::of_data(&context.data()).current_path() {
        "`precomp serve` with this --data serves it now".to_string()
    } else {
        format!(
            "copy {} to the mirror's DATA/trust to publish it",
            dir.current_path()
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .display()
        )
    };
    println!(
        "trust document version {} written to {} (expires {}); {served}",
        held.document.version,
        dir.current_path().display(),
        utc(held.document.expires_at)
    );
}

fn trust_dir(context: &Context, doc: &DocArgs) -> TrustDir {
    match &doc.trust_dir {
        Some(dir) => TrustDir::new(dir),
        None => TrustDir::of_data(&context.data()),
    }
}

fn read_signing_key(path: &Path) -> anyhow::Result<ArtifactSigningKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("reading the private key {}", path.display()))?;
    ArtifactSigningKey::from_pem(&pem).with_context(|| {
        format!(
            "{}: expected an ed25519 private key, as `precomp keys generate` writes NAME.key",
            path.display()
        )
    })
}

fn read_public_key(path: &Path) -> anyhow::Result<ArtifactPublicKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("reading the public key {}", path.display()))?;
    ArtifactPublicKey::from_pem(&pem).with_context(|| {
        format!(
            "{}: expected an ed25519 public key, as `precomp keys generate` writes NAME.pub",
            path.display()
        )
    })
}

/// A key id as given (`ed25519:…`), or the id of a public key file.
fn key_id(reference: &str) -> anyhow::Result<String> {
    if reference.starts_with("ed25519:") {
        let id = reference.to_ascii_lowercase();
        if !valid_key_id(&id) {
            bail!("{reference:?} is not a key id (ed25519: and 16 hex digits)");
        }
        return Ok(id);
    }
    Ok(read_public_key(Path::new(reference))?.key_id())
}

/// `keys/builder-1.pub` → `builder-1`.
fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
