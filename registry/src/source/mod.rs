//! Package sources: a Mix, rebar3 or erlang.mk project directory turned into the Hex package
//! tarball its own tooling would publish (`mix hex.build`, `rebar3 hex build`).
//!
//! The package's name and version come from the project (mix.exs, `src/APP.app.src` or
//! `ebin/APP.app`), never from the directory's name, so several versions of one package can
//! sit side by side.

mod mix;
mod rebar;

use std::path::{Path, PathBuf};

use precomp_proto::metadata::PackageMetadata;
use precomp_proto::tarball::{self, CreatedTarball, PackageFile, PackageFileKind, TarballError};
use precomp_proto::term::Term;

/// How a project directory is built, which decides how its metadata is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// `mix.exs`: metadata from Mix itself (the project file is code).
    Mix,
    /// `src/APP.app.src` with `rebar.config`.
    Rebar3,
    /// erlang.mk style: a committed `ebin/APP.app` and a Makefile, as cowboy, cowlib and ranch.
    ErlangMk,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{dir}: not a package source (no mix.exs, src/*.app.src or ebin/*.app)")]
    NotAPackage { dir: PathBuf },
    #[error("{dir}: running `elixir` to read mix.exs failed: {reason} (is Elixir installed? `apt-get install elixir`)")]
    Elixir { dir: PathBuf, reason: String },
    #[error("{dir}: mix.exs: {message}")]
    MixProject { dir: PathBuf, message: String },
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir}: building the package tarball failed: {source}")]
    Tarball { dir: PathBuf, source: TarballError },
}

impl SourceError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
        move |source| SourceError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A project directory read into package metadata and the files that go into the package.
#[derive(Debug)]
pub struct SourcePackage {
    pub dir: PathBuf,
    pub kind: SourceKind,
    pub metadata: PackageMetadata,
    /// Relative paths, sorted; regular files only (links followed, as Hex does).
    pub files: Vec<String>,
}

/// Which kind of project `dir` holds, if any.
pub fn detect(dir: &Path) -> Option<SourceKind> {
    if dir.join("mix.exs").is_file() {
        Some(SourceKind::Mix)
    } else if find_one(&dir.join("src"), ".app.src").is_some() {
        Some(SourceKind::Rebar3)
    } else if find_one(&dir.join("ebin"), ".app").is_some() {
        Some(SourceKind::ErlangMk)
    } else {
        None
    }
}

/// Reads the project in `dir`.
pub fn load(dir: &Path) -> Result<SourcePackage, SourceError> {
    let kind = detect(dir).ok_or_else(|| SourceError::NotAPackage {
        dir: dir.to_path_buf(),
    })?;
    let (metadata, files) = match kind {
        SourceKind::Mix => mix::read(dir)?,
        SourceKind::Rebar3 | SourceKind::ErlangMk => rebar::read(dir, kind)?,
    };
    if let Err(e) = semver::Version::parse(&metadata.version) {
        return Err(SourceError::Invalid {
            file: dir.to_path_buf(),
            message: format!("version {:?} is not SemVer: {e}", metadata.version),
        });
    }
    Ok(SourcePackage {
        dir: dir.to_path_buf(),
        kind,
        metadata,
        files,
    })
}

impl SourcePackage {
    /// The package tarball, built deterministically from the files as they are on disk.
    pub fn tarball(&self) -> Result<CreatedTarball, SourceError> {
        let mut files = Vec::with_capacity(self.files.len());
        for relative in &self.files {
            let path = self.dir.join(relative);
            let contents = std::fs::read(&path).map_err(SourceError::io(&path))?;
            files.push(PackageFile {
                path: relative.clone(),
                kind: PackageFileKind::File {
                    contents,
                    executable: is_executable(&path)?,
                },
            });
        }
        tarball::create(&self.metadata.to_config(), &files).map_err(|source| SourceError::Tarball {
            dir: self.dir.clone(),
            source,
        })
    }
}

#[cfg(unix)]
fn is_executable(path: &Path) -> Result<bool, SourceError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(SourceError::io(path))?;
    Ok(meta.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(_path: &Path) -> Result<bool, SourceError> {
    Ok(false)
}

/// Hex's build tool guess from top-level files (hexpm/hex `mix hex.build`, in its order).
const BUILD_TOOL_FILES: &[(&str, &str)] = &[
    ("mix.exs", "mix"),
    ("rebar", "rebar3"),
    ("rebar.lock", "rebar3"),
    ("rebar.config", "rebar3"),
    ("rebar.config.script", "rebar3"),
    ("erlang.mk", "make"),
    ("Makefile", "make"),
    ("Makefile.win", "make"),
];

/// The build tools a package's files imply, `fallback` when none does.
pub fn guess_build_tools(files: &[String], fallback: &str) -> Vec<String> {
    let mut tools: Vec<String> = Vec::new();
    for (file, tool) in BUILD_TOOL_FILES {
        if files.iter().any(|f| f == file) && !tools.iter().any(|t| t == tool) {
            tools.push(tool.to_string());
        }
    }
    if tools.is_empty() {
        tools.push(fallback.to_string());
    }
    tools
}

/// Expands glob patterns relative to `dir` into sorted relative paths of regular files,
/// descending into directories, following links as Hex does, skipping `exclude`d ones.
fn expand_files(
    dir: &Path,
    patterns: &[String],
    exclude: impl Fn(&str) -> bool,
) -> Result<Vec<String>, SourceError> {
    let mut out = std::collections::BTreeSet::new();
    for pattern in patterns {
        let full = dir.join(pattern);
        let matches = glob::glob(&full.to_string_lossy()).map_err(|e| SourceError::Invalid {
            file: dir.to_path_buf(),
            message: format!("bad file pattern {pattern:?}: {e}"),
        })?;
        for path in matches.flatten() {
            collect_files(dir, &path, &mut out)?;
        }
    }
    Ok(out.into_iter().filter(|p| !exclude(p)).collect())
}

fn collect_files(
    root: &Path,
    path: &Path,
    out: &mut std::collections::BTreeSet<String>,
) -> Result<(), SourceError> {
    let meta = std::fs::metadata(path).map_err(SourceError::io(path))?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(SourceError::io(path))?
            .collect::<Result<_, _>>()
            .map_err(SourceError::io(path))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            collect_files(root, &entry.path(), out)?;
        }
    } else if meta.is_file() {
        let relative = path.strip_prefix(root).unwrap_or(path);
        let relative = relative
            .to_str()
            .ok_or_else(|| SourceError::Invalid {
                file: path.to_path_buf(),
                message: "file name is not UTF-8".into(),
            })?
            .to_string();
        out.insert(relative);
    }
    Ok(())
}

/// The strings of a list term (binaries or charlists); other elements are skipped.
fn string_list(term: Option<&Term>) -> Vec<String> {
    term.and_then(Term::as_list)
        .unwrap_or_default()
        .iter()
        .filter_map(Term::as_str)
        .map(str::to_string)
        .collect()
}

/// Package links, `[{Name, Url}]` with both as strings; malformed entries are skipped.
fn link_pairs(term: Option<&Term>) -> Vec<(String, String)> {
    term.and_then(Term::as_list)
        .unwrap_or_default()
        .iter()
        .filter_map(|link| match link.as_tuple()? {
            [k, v] => Some((k.as_str()?.to_string(), v.as_str()?.to_string())),
            _ => None,
        })
        .collect()
}

/// The single file in `dir` whose name ends with `suffix`, if there is exactly one.
fn find_one(dir: &Path, suffix: &str) -> Option<PathBuf> {
    let mut found = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(suffix)) && p.is_file());
    let first = found.next()?;
    found.next().is_none().then_some(first)
}
