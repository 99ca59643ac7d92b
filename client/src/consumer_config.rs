//! The consumer's compile-time config, evaluated with the local `elixir` exactly as Mix
//! loads it for compiling deps (`config/config.exs` and what it imports, for the consumer's
//! MIX_ENV and MIX_TARGET), through `precomp_proto::config`'s dump script.

use std::process::Command;
use std::time::Duration;

use precomp_proto::config::{AppConfig, DUMP_CONFIG_EXS};

use crate::process::output_within;
use crate::project::Project;

/// How long evaluating the config may take.
const LIMIT: Duration = Duration::from_secs(120);

/// Evaluates the project's config; the error says why, with elixir's output.
pub fn evaluate(project: &Project) -> Result<AppConfig, String> {
    // Usually the probe prints it from its own VM, after its answer.
    let dump = project.config_dump.wait();
    if dump.contains(precomp_proto::config::DUMP_END) {
        if let Ok(config) = AppConfig::parse(&dump) {
            return Ok(config);
        }
    }
    let scratch = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let script = scratch.path().join("precomp_dump_config.exs");
    std::fs::write(&script, DUMP_CONFIG_EXS).map_err(|e| format!("{}: {e}", script.display()))?;
    let mut command = Command::new("elixir");
    command
        .arg(&script)
        .arg(&project.config_path)
        .arg(&project.mix_env)
        .arg(&project.mix_target)
        .current_dir(&project.dir)
        .env("MIX_ENV", &project.mix_env)
        .env("MIX_TARGET", &project.mix_target);
    let output = output_within(command, LIMIT).map_err(|e| format!("running elixir: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "evaluating {} failed ({}): {}",
            project.config_path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    AppConfig::parse(&stdout).map_err(|e| format!("reading the evaluated config: {e}"))
}
