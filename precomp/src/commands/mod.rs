//! One module per subcommand.

pub mod audit;
pub mod backup;
pub mod build;
pub mod demo;
pub mod fetch;
pub mod gc;
pub mod inspect;
pub mod keys;
pub mod mirror;
pub mod repo;
pub mod serve;
pub mod store;
pub mod token;
pub mod toolchain;
pub mod worker;

/// Creates `path` with `bytes` and `mode`, failing if it exists: keys are never overwritten.
pub(crate) fn write_new(path: &std::path::Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
