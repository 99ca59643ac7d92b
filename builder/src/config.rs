//! The build's compile-time config, evaluated in the sandbox (a config file is code).
//!
//! Stored builds record which `Application.compile_env` paths they read; to reuse one, this
//! run's values for those paths must give the same key. The config is evaluated at most once
//! per run, and only when a stored build records compile-env entries.

use std::sync::Mutex;

use precomp_proto::buildkey::CompileEnvEntry;
use precomp_proto::config::{AppConfig, DUMP_CONFIG_EXS};
use precomp_sandbox::{Spec, Status};

use crate::build::BuildContext;
use crate::error::{io, BuildError, Result};
use crate::project;
use crate::run::CompileEnvSource;

/// [`CompileEnvSource`] backed by the build's config, evaluated in the sandbox.
pub struct SandboxedConfig<'a> {
    context: &'a BuildContext<'a>,
    /// The evaluation's result, once there is one. A cancelled evaluation is not kept: the
    /// next run sharing this config (a worker's next job) evaluates it again.
    evaluated: Mutex<Option<std::result::Result<AppConfig, String>>>,
}

impl<'a> SandboxedConfig<'a> {
    pub fn new(context: &'a BuildContext<'a>) -> SandboxedConfig<'a> {
        SandboxedConfig {
            context,
            evaluated: Mutex::new(None),
        }
    }
}

impl CompileEnvSource for SandboxedConfig<'_> {
    fn values_for(&self, recorded: &[CompileEnvEntry]) -> Result<Vec<CompileEnvEntry>> {
        // Held while evaluating: concurrent callers wait for the one evaluation.
        let mut evaluated = self.evaluated.lock().unwrap_or_else(|e| e.into_inner());
        if evaluated.is_none() {
            match evaluate(self.context) {
                Err(BuildError::Cancelled { reason }) => {
                    return Err(BuildError::Cancelled { reason })
                }
                result => *evaluated = Some(result.map_err(|e| e.to_string())),
            }
        }
        match evaluated.as_ref().expect("evaluated above") {
            Ok(config) => config
                .entries_for(recorded)
                .map_err(|e| BuildError::Config(e.to_string())),
            Err(message) => Err(BuildError::Config(message.clone())),
        }
    }
}

/// Runs the dump script on the build's config in the sandbox and parses what it prints.
pub fn evaluate(context: &BuildContext<'_>) -> Result<AppConfig> {
    let work = crate::workdir::WorkDir::create(&context.work_root, "config-", 0o755)?;
    project::write(work.path(), "", None, context.config.as_deref())?;
    let script = work.path().join("dump_config.exs");
    std::fs::write(&script, DUMP_CONFIG_EXS).map_err(io(&script))?;
    let spec = Spec::build(
        context.toolchain.sandbox_root(),
        work.path(),
        [
            "elixir",
            "dump_config.exs",
            "config/config.exs",
            &context.config_env,
            "host",
        ],
    );
    let outcome = context.sandbox.run_cancellable(&spec, &context.cancel)?;
    if let Status::Cancelled { reason } = outcome.status {
        return Err(BuildError::Cancelled { reason });
    }
    if !outcome.status.success() {
        return Err(BuildError::Config(format!(
            "evaluating the config failed ({}):\n{}",
            outcome.status,
            outcome.output_text()
        )));
    }
    AppConfig::parse(&outcome.stdout.text()).map_err(|e| BuildError::Config(e.to_string()))
}
