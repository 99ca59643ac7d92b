//! Removing precompiled installs no trusted key vouches for any more, when a fetch cannot run
//! its lookups at all: the trust policy left no usable key (a trust document that revoked
//! every builder), or is otherwise impossible. A normal fetch removes such installs as it
//! goes (an install whose manifest the policy refuses is a miss, and a miss removes the
//! stale install); this does the same for every precompiled install under `_build/<env>/lib`
//! before the run stops, so a revoked key's builds never outlive the run that learned of the
//! revocation — `mix compile` then builds those dependencies.

use std::path::Path;

use precomp_proto::manifest::{ArtifactPublicKey, ManifestError, SignedManifest};

use crate::error::ClientError;
use crate::install;
use crate::project::Project;
use crate::trust::TrustedKey;

/// A precompiled install that was removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    pub app: String,
    /// The key it was installed with.
    pub key: String,
    /// Why no key that counts vouches for it.
    pub reason: String,
}

impl Removed {
    /// Its `precomp fetch --json` line: `{"app", "key", "reason", "status": "removed"}`.
    pub fn line(&self) -> RemovedLine<'_> {
        RemovedLine {
            app: &self.app,
            key: &self.key,
            reason: &self.reason,
            status: "removed",
        }
    }
}

/// A removed install's `--json` line (fields in name order, as always printed).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RemovedLine<'a> {
    pub app: &'a str,
    pub key: &'a str,
    pub reason: &'a str,
    pub status: &'static str,
}

/// Removes every precompiled install of the project in `project_dir` (for `mix_env`) whose
/// stored signed manifest has no verifying signature by one of `counting` (the trusted keys
/// that are not revoked; empty when none is left), or that does not decode. `revoked` names
/// the revoked keys and why, for the reasons. Takes the build directory's lock as a fetch
/// does, and touches the project's `compile.lock` when it removed anything so Mix re-checks
/// its dependencies.
pub async fn remove_untrusted(
    project_dir: &Path,
    mix_env: &str,
    counting: &[TrustedKey],
    revoked: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<Removed>, ClientError> {
    let dir = project_dir.to_path_buf();
    let env = mix_env.to_string();
    let project = tokio::task::spawn_blocking(move || Project::probe(&dir, &env))
        .await
        .map_err(|e| ClientError::Internal(e.to_string()))??;
    let keys: Vec<ArtifactPublicKey> = counting.iter().map(|k| k.key.clone()).collect();
    let revoked = revoked.clone();
    tokio::task::spawn_blocking(move || remove_in(&project, &keys, &revoked))
        .await
        .map_err(|e| ClientError::Internal(e.to_string()))?
}

fn remove_in(
    project: &Project,
    keys: &[ArtifactPublicKey],
    revoked: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<Removed>, ClientError> {
    let lib_dir = project.lib_dir();
    if !lib_dir.is_dir() {
        return Ok(Vec::new());
    }
    let _guard = install::LibLock::acquire(&lib_dir)?;
    install::recover(&lib_dir)?;
    let mut apps: Vec<String> = std::fs::read_dir(&lib_dir)
        .map_err(ClientError::io(&lib_dir))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.') && install::is_precompiled(&lib_dir, name))
        .collect();
    apps.sort();
    let mut removed = Vec::new();
    for app in apps {
        let installed = install::installed(&lib_dir, &app);
        let key = installed
            .as_ref()
            .map(|i| i.key.clone())
            .unwrap_or_default();
        let Some(reason) = untrusted(installed.as_ref(), keys, revoked) else {
            continue;
        };
        install::remove(&lib_dir, &app)?;
        removed.push(Removed { app, key, reason });
    }
    if !removed.is_empty() {
        for path in &project.compile_locks {
            install::touch_compile_lock(path)?;
        }
    }
    Ok(removed)
}

/// Why `installed` is vouched for by none of `keys`; `None` when one of them signed it.
fn untrusted(
    installed: Option<&install::Installed>,
    keys: &[ArtifactPublicKey],
    revoked: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    let Some(installed) = installed else {
        return Some("its precomp markers are incomplete".into());
    };
    let signed = match SignedManifest::decode(&installed.signed_manifest) {
        Ok(signed) => signed,
        Err(e) => return Some(format!("its stored manifest does not decode: {e}")),
    };
    let signers: Vec<String> = signed.signatures.iter().map(|s| s.key_id.clone()).collect();
    match signed.verify(keys) {
        Ok(_) => None,
        Err(ManifestError::Untrusted { .. }) => {
            let why: Vec<String> = signers
                .iter()
                .map(|id| match revoked.get(id) {
                    Some(reason) => format!("{id}: revoked: {reason}"),
                    None => format!("{id}: not trusted"),
                })
                .collect();
            Some(format!(
                "signed only by keys this policy does not trust now ({})",
                why.join("; ")
            ))
        }
        Err(e) => Some(format!("its stored manifest does not verify: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use precomp_proto::manifest::ArtifactSigningKey;

    fn installed(signer: &ArtifactSigningKey) -> install::Installed {
        use prost::Message as _;
        let manifest = crate::trust::tests::manifest();
        install::Installed {
            key: "k".into(),
            signed_manifest: SignedManifest::sign(&manifest, signer).encode_to_vec(),
        }
    }

    #[test]
    fn an_install_no_counting_key_signed_is_untrusted_naming_the_revocation() {
        let (builder, other) = (
            ArtifactSigningKey::generate(),
            ArtifactSigningKey::generate(),
        );
        let id = builder.public_key().key_id();
        let revoked = [(
            id.clone(),
            "laptop stolen (trust document version 2)".into(),
        )]
        .into();
        let install = installed(&builder);
        assert_eq!(
            untrusted(Some(&install), &[builder.public_key()], &revoked),
            None
        );
        let reason = untrusted(Some(&install), &[other.public_key()], &revoked).unwrap();
        assert!(
            reason.contains(&id) && reason.contains("revoked: laptop stolen"),
            "{reason}"
        );
        // No key at all: nothing vouches for it.
        assert!(untrusted(Some(&install), &[], &revoked).is_some());
        let broken = install::Installed {
            key: "k".into(),
            signed_manifest: vec![0xff, 0xff],
        };
        assert!(untrusted(Some(&broken), &[builder.public_key()], &revoked).is_some());
    }
}
