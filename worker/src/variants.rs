//! Config variants: building a consumer's miss with the compile-time values its config gives,
//! shared by workers and `precomp build --missing` (docs/builder.md "Config
//! variants").
//!
//! A miss carries, for the package and each closure member the mirror has built before, the
//! consumer's values for the `Application.compile_env` paths those builds record. The
//! builder's own config (`--config`; workers have none) is used when it gives every one of
//! them — the build is then the one the builder makes anyway. Otherwise the miss is built
//! with a config made from the carried values alone ([`precomp_builder::config::config_exs`]
//! on top of an empty config: paths the miss does not carry stay unset), for the whole
//! closure in one run, so each member's variant is built before its dependents. Before
//! anything compiles, the generated config is evaluated in the sandbox on the build's own
//! toolchain, and must give back every carried value; the build's key then proves the rest
//! (a build that read other paths does not satisfy the miss: `settle_miss`).
//!
//! What is reported to the mirror when a miss cannot be built this way names paths, never
//! values: failure logs are public (`GET /precomp/v1/failures/PACKAGE`).

use std::path::{Path, PathBuf};

use precomp_artifacts::compile_env_entry;
use precomp_builder::run::CompileEnvSource;
use precomp_builder::workdir::WorkDir;
use precomp_http::artifacts::ArtifactClient;
use precomp_proto::api::{FailureReport, Miss};
use precomp_proto::buildkey::{compile_env_digest, CompileEnvEntry};
use precomp_sandbox::toolchain::Toolchain;

use crate::error::{chain, Result, WorkerError};

/// The config a miss is built with.
pub enum MissConfig {
    /// The builder's own: the miss carries no compile-env values, or exactly those that config
    /// gives.
    Builder,
    /// A config made from the miss's values.
    Variant(VariantConfig),
}

/// A generated `config.exs` giving exactly a miss's carried values, in a directory of the
/// work root that is removed when this is dropped.
pub struct VariantConfig {
    _dir: WorkDir,
    path: PathBuf,
    /// How many values it sets (entries recorded as unset are left out).
    pub values: usize,
}

impl VariantConfig {
    /// The config file, for `BuildContext::config`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The compile-env entries `miss` carries (the package's and its members'), parsed.
pub fn carried_entries(miss: &Miss) -> Result<Vec<CompileEnvEntry>> {
    miss.all_compile_env()
        .map(compile_env_entry)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| WorkerError::MissCompileEnv { message })
}

/// The first carried entry `config` gives another value for: (the miss's, the config's).
pub fn first_difference(
    carried: &[CompileEnvEntry],
    config: &dyn CompileEnvSource,
) -> Result<Option<(CompileEnvEntry, CompileEnvEntry)>> {
    if carried.is_empty() {
        return Ok(None);
    }
    let ours = config.values_for(carried)?;
    Ok(carried.iter().zip(ours).find_map(|(theirs, ours)| {
        (compile_env_digest(std::slice::from_ref(theirs))
            != compile_env_digest(std::slice::from_ref(&ours)))
        .then(|| (theirs.clone(), ours))
    }))
}

/// How `miss` is built: with the builder's config (`builder_config`) when it gives every value
/// the miss carries, else with a config made from them, written under `work_root`.
/// `Err(reason)`: the values cannot be given to a build (the reason names paths, not values).
pub fn miss_config(
    miss: &Miss,
    builder_config: &dyn CompileEnvSource,
    work_root: &Path,
) -> Result<Result<MissConfig, String>> {
    let carried = carried_entries(miss)?;
    if carried.is_empty() {
        return Ok(Ok(MissConfig::Builder));
    }
    // The builder's config is evaluated for the carried paths; one that cannot give them
    // (it raises for such a path) is not the config to build this miss with either.
    if let Ok(None) = first_difference(&carried, builder_config) {
        return Ok(Ok(MissConfig::Builder));
    }
    // Two members reading the same path carry the consumer's one value for it.
    for (i, entry) in carried.iter().enumerate() {
        if let Some(other) = carried[..i].iter().find(|other| {
            other.app == entry.app
                && other.path == entry.path
                && compile_env_digest(std::slice::from_ref(*other))
                    != compile_env_digest(std::slice::from_ref(entry))
        }) {
            return Ok(Err(format!(
                "the miss carries two different values for {}: a config cannot give both",
                other.describe_path(precomp_proto::term::Syntax::Elixir)
            )));
        }
    }
    let dir = WorkDir::create(work_root, "variant-", 0o755).map_err(|source| {
        WorkerError::VariantDir {
            source: Box::new(source),
        }
    })?;
    let path = dir.path().join("config.exs");
    let text = precomp_builder::config::config_exs(&carried)
        .unwrap_or_else(|| "import Config\n".to_string());
    std::fs::write(&path, text).map_err(WorkerError::io("writing", &path))?;
    Ok(Ok(MissConfig::Variant(VariantConfig {
        _dir: dir,
        path,
        values: carried.iter().filter(|e| e.value.is_some()).count(),
    })))
}

/// Checks a variant's generated config, evaluated in the sandbox (`variant_config`): it must
/// give every value `miss` carries. `Some(reason)` (naming the path, not the values) when it
/// does not, or cannot be evaluated.
pub fn check_variant(miss: &Miss, variant_config: &dyn CompileEnvSource) -> Result<Option<String>> {
    let carried = carried_entries(miss)?;
    match first_difference(&carried, variant_config) {
        Ok(None) => Ok(None),
        Ok(Some((theirs, _))) => Ok(Some(format!(
            "the config made from the miss's compile-time values does not give back the value \
             of {}",
            theirs.describe_path(precomp_proto::term::Syntax::Elixir)
        ))),
        Err(WorkerError::Build(e))
            if matches!(*e, precomp_builder::BuildError::Cancelled { .. }) =>
        {
            Err(WorkerError::Build(e))
        }
        Err(e) => Ok(Some(format!(
            "the config made from the miss's compile-time values cannot be evaluated: {}",
            first_line(&chain(&e))
        ))),
    }
}

/// Records that `miss` is not built, and why, as a failure under its key (which closes it):
/// so it does not come back to every builder.
pub fn record_not_built(
    runtime: &tokio::runtime::Runtime,
    client: &ArtifactClient,
    toolchain: &Toolchain,
    miss: &Miss,
    reason: &str,
) -> Result<()> {
    runtime
        .block_on(client.record_failure(&FailureReport {
            package: miss.package.clone(),
            version: miss.version.clone(),
            base_key: miss.miss_key().to_string(),
            toolchain_id: toolchain.id.clone(),
            log: format!("precomp: not built: {reason}\n"),
        }))
        .map_err(|source| WorkerError::RecordNotBuilt {
            package: miss.package.clone(),
            version: miss.version.clone(),
            source,
        })?;
    Ok(())
}

/// What a miss is, for people: `env_reader 1.0.0 (variant key …)`.
pub fn describe_miss_key(miss: &Miss) -> String {
    let kind = if miss.variant_key.is_some() {
        "config variant, variant key"
    } else if miss.base_key.is_some() {
        "base key"
    } else {
        "request key"
    };
    format!("{kind} {}", miss.miss_key())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}
