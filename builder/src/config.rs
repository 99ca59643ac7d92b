//! The build's compile-time config, evaluated in the sandbox (a config file is code).
//!
//! Stored builds record which `Application.compile_env` paths they read; to reuse one, this
//! run's values for those paths must give the same key. The config is evaluated at most once
//! per run, and only when a stored build records compile-env entries.

use std::sync::OnceLock;

use precomp_proto::buildkey::CompileEnvEntry;
use precomp_proto::config::{AppConfig, DUMP_CONFIG_EXS};
use precomp_sandbox::Spec;

use crate::build::BuildContext;
use crate::error::{io, BuildError, Result};
use crate::project;
use crate::run::CompileEnvSource;

/// [`CompileEnvSource`] backed by the build's config, evaluated in the sandbox.
pub struct SandboxedConfig<'a> {
    context: &'a BuildContext<'a>,
    evaluated: OnceLock<std::result::Result<AppConfig, String>>,
}

impl<'a> SandboxedConfig<'a> {
    pub fn new(context: &'a BuildContext<'a>) -> SandboxedConfig<'a> {
        SandboxedConfig {
            context,
            evaluated: OnceLock::new(),
        }
    }

    fn config(&self) -> Result<&AppConfig> {
        self.evaluated
            .get_or_init(|| evaluate(self.context).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|message| BuildError::Config(message.clone()))
    }
}

impl CompileEnvSource for SandboxedConfig<'_> {
    fn values_for(&self, recorded: &[CompileEnvEntry]) -> Result<Vec<CompileEnvEntry>> {
        self.config()?
            .entries_for(recorded)
            .map_err(|e| BuildError::Config(e.to_string()))
    }
}

/// Runs the dump script on the build's config in the sandbox and parses what it prints.
pub fn evaluate(context: &BuildContext<'_>) -> Result<AppConfig> {
    std::fs::create_dir_all(&context.work_root).map_err(io(&context.work_root))?;
    let work = tempfile::Builder::new()
        .prefix("config-")
        .tempdir_in(&context.work_root)
        .map_err(io(&context.work_root))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io(work.path()))?;
    }
    project::write(work.path(), "", context.config.as_deref())?;
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
    let outcome = context.sandbox.run(&spec)?;
    if !outcome.status.success() {
        return Err(BuildError::Config(format!(
            "evaluating the config failed ({}):\n{}",
            outcome.status,
            outcome.output_text()
        )));
    }
    AppConfig::parse(&outcome.stdout.text()).map_err(|e| BuildError::Config(e.to_string()))
}
