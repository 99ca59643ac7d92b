//! `precomp token`: upload tokens for builders publishing to the mirror, kept in the artifact
//! store (DATA/artifacts/artifacts.db) that `precomp serve` reads on every upload, so a token
//! created or revoked here takes effect at once, without a restart.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use precomp_artifacts::{open_metadata, Scope};
use precomp_proto::manifest::ArtifactPublicKey;
use precomp_proto::time::utc;

use crate::Context;

#[derive(Subcommand)]
pub enum TokenCommand {
    Create(CreateArgs),
    List,
    Revoke(RevokeArgs),
}

/// Creates an upload token and prints it, once: only its SHA-256 is stored, so it cannot be
/// shown again. Builders send it as `Authorization: Bearer TOKEN` (`precomp build --publish
/// --token TOKEN`).
///
/// With --key, the token publishes only manifests signed by that key. Without, it publishes
/// manifests signed by one of the keys `precomp serve --builder-key` trusts. An auditor's
/// token is bound to the auditor's key (one of `precomp serve --auditor-key`): it countersigns
/// manifests and posts verdicts (`precomp audit`).
#[derive(Args)]
pub struct CreateArgs {
    /// Who the token is for, e.g. the builder's host name: letters, digits, `-`, `_`, `.`.
    #[arg(long)]
    name: String,
    /// The builder's (or auditor's) public key (SPKI PEM, as `precomp keys generate` writes
    /// NAME.pub).
    #[arg(long, value_name = "FILE.pub")]
    key: Option<PathBuf>,
    /// What the token may do: `reader` (read when the mirror requires a token to), `builder`
    /// (publish builds, lease build jobs, list misses), `auditor` (countersign, post
    /// verdicts, lease audit jobs), `publisher` (reserved for organisation repositories).
    /// Repeat for several; every scope reads. Without it the token has the scopes its key
    /// gives it (an auditor key: auditor; a builder key: builder; no key: both), as tokens
    /// always had.
    #[arg(long = "scope", value_name = "SCOPE", value_parser = parse_scope)]
    scopes: Vec<Scope>,
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    Scope::parse(text)
        .ok_or_else(|| format!("{text:?} is not a scope: reader, builder, auditor or publisher"))
}

/// Revokes a token: the mirror refuses it from its next request on.
#[derive(Args)]
pub struct RevokeArgs {
    name: String,
}

pub fn run(context: &Context, command: TokenCommand) -> anyhow::Result<ExitCode> {
    let dir = context.data().join("artifacts");
    let store = open_metadata(&dir)
        .with_context(|| format!("opening the artifact store {}", dir.display()))?;
    match command {
        TokenCommand::Create(args) => {
            let key = match &args.key {
                Some(path) => {
                    let pem = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    Some(ArtifactPublicKey::from_pem(&pem).with_context(|| {
                        format!(
                            "{} is not an ed25519 public key (SPKI PEM, as `precomp keys generate` writes NAME.pub)",
                            path.display()
                        )
                    })?)
                }
                None => None,
            };
            let scopes = (!args.scopes.is_empty()).then_some(args.scopes.as_slice());
            let token = store.create_token(&args.name, key.as_ref(), scopes)?;
            println!("{token}");
            eprintln!(
                "token {:?} created with {}, {}. It is shown only this once: store it now.",
                args.name,
                describe_scopes(scopes),
                match &key {
                    Some(key) => format!("bound to key {}", key.key_id()),
                    None =>
                        "bound to no key (it publishes what the mirror's --builder-key keys signed)"
                            .to_string(),
                }
            );
        }
        TokenCommand::List => {
            let tokens = store.list_tokens()?;
            if tokens.is_empty() {
                eprintln!("no tokens; create one with `precomp token create --name NAME`");
            }
            for token in tokens {
                println!(
                    "{}\t{}\t{}\tcreated {}\t{}",
                    token.name,
                    token.key_id.as_deref().unwrap_or("any-builder-key"),
                    match &token.scopes {
                        Some(scopes) => precomp_artifacts::token::scopes_text(scopes),
                        None => "scopes-from-key".to_string(),
                    },
                    utc(token.created_at),
                    match token.revoked_at {
                        Some(at) => format!("revoked {}", utc(at)),
                        None => "active".to_string(),
                    }
                );
            }
        }
        TokenCommand::Revoke(args) => {
            store.revoke_token(&args.name)?;
            eprintln!("token {:?} revoked", args.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_scopes(scopes: Option<&[Scope]>) -> String {
    match scopes {
        Some(scopes) => format!(
            "the scopes {}",
            precomp_artifacts::token::scopes_text(scopes).replace(' ', ", ")
        ),
        None => "the scopes its key gives it".to_string(),
    }
}
