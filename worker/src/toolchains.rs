//! The toolchains a worker works with: one per tuple (OTP major, Elixir, native target),
//! each job done with the toolchain of its tuple.

use std::path::Path;

use precomp_sandbox::toolchain::{Store, Toolchain};
use precomp_sandbox::Sandbox;

use crate::error::{Result, WorkerError};

/// The toolchain `spec` names (`host`, an image id, a digest prefix or a suite) in the store
/// at `toolchains` (default: the data directory).
pub fn resolve_toolchain(
    data: &Path,
    toolchains: Option<&Path>,
    spec: &str,
    sandbox: &Sandbox,
) -> Result<Toolchain> {
    Ok(open_store(toolchains.unwrap_or(data))?.resolve(spec, sandbox)?)
}

fn open_store(dir: &Path) -> Result<Store> {
    Store::open(dir).map_err(|source| WorkerError::ToolchainStore {
        dir: dir.to_path_buf(),
        source,
    })
}

/// A toolchain a worker works with, and the target its native code gets.
#[derive(Clone, Debug)]
pub struct WorkerToolchain {
    pub toolchain: Toolchain,
    /// `ARCH-LIBC`, as builds of this toolchain name their target.
    pub native: String,
}

impl WorkerToolchain {
    /// `toolchain` with its native target.
    pub fn new(toolchain: Toolchain) -> Result<WorkerToolchain> {
        let native = precomp_builder::build::native_target(&toolchain.architecture)?.to_string();
        Ok(WorkerToolchain { toolchain, native })
    }

    /// Whether jobs of this tuple are done with it.
    pub fn builds(&self, otp_major: &str, elixir: &str, target: &str) -> bool {
        self.toolchain.otp == otp_major
            && self.toolchain.elixir == elixir
            && (target == "any" || target == self.native)
    }
}

/// The toolchains a worker given `specs` (each as `--toolchain` takes it; none: `host`
/// unless `all`) and, with `all`, every toolchain of the store works with, one per tuple: a
/// toolchain with the OTP major, Elixir and native target of one before it is left out, with
/// a warning (returned for the caller to show).
pub fn worker_toolchains(
    data: &Path,
    store_dir: Option<&Path>,
    specs: &[String],
    all: bool,
    sandbox: &Sandbox,
) -> Result<(Vec<WorkerToolchain>, Vec<String>)> {
    let mut found = Vec::new();
    let given = if specs.is_empty() && !all {
        vec!["host".to_string()]
    } else {
        specs.to_vec()
    };
    for spec in &given {
        found.push(resolve_toolchain(data, store_dir, spec, sandbox)?);
    }
    if all {
        found.extend(open_store(store_dir.unwrap_or(data))?.list(sandbox)?);
    }
    let mut toolchains: Vec<WorkerToolchain> = Vec::new();
    let mut warnings = Vec::new();
    for toolchain in found {
        let candidate = WorkerToolchain::new(toolchain)?;
        let (toolchain, native) = (&candidate.toolchain, &candidate.native);
        if let Some(first) = toolchains.iter().find(|t| {
            t.toolchain.otp == toolchain.otp
                && t.toolchain.elixir == toolchain.elixir
                && &t.native == native
        }) {
            if first.toolchain.id != toolchain.id {
                warnings.push(format!(
                    "toolchain {} has the tuple of {} (OTP {}, Elixir {}, {native}): its jobs \
                     are done with {}",
                    toolchain.id,
                    first.toolchain.id,
                    toolchain.otp,
                    toolchain.elixir,
                    first.toolchain.id
                ));
            }
            continue;
        }
        toolchains.push(candidate);
    }
    if toolchains.is_empty() {
        return Err(WorkerError::NoToolchainGiven);
    }
    Ok((toolchains, warnings))
}
