//! `precomp repo build`: package sources and tarballs → a static, signed Hex repository.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use precomp_proto::registry::RepoSigningKey;
use precomp_registry::source::SourceKind;
use precomp_registry::static_repo::{self, BuildOptions};

use crate::Context;

/// Builds a static, signed Hex repository from package sources and tarballs.
///
/// Every directory directly inside --packages that is a Mix project (mix.exs), a rebar3
/// project (src/APP.app.src) or an erlang.mk project (a Makefile that includes erlang.mk or
/// sets PROJECT) is packaged as its publishing tool would (`mix hex.build`, `rebar3 hex
/// build`, erlang.mk's `make hex-tarball-create`); every NAME-VERSION.tar there is checked and
/// included as it is. Names and versions come from the projects, not from directory names.
/// A directory with files of several tools is published by the one whose Hex package
/// configuration it has (see the README), or by the one --build-tool names. OUT then holds
/// `names`, `versions`, `packages/NAME`, `tarballs/NAME-VERSION.tar` and `public_key`,
/// world-readable (files 0644, directories 0755), ready for any static web server. Building
/// twice from the same inputs gives the same bytes.
#[derive(Args)]
pub struct BuildArgs {
    /// Directory holding package source directories and/or package .tar files.
    #[arg(long)]
    packages: PathBuf,
    /// The repository's RSA private key, PEM (PKCS#8 or PKCS#1); see `precomp repo keygen`.
    #[arg(long)]
    key: PathBuf,
    /// Repository name, checked by clients as the origin of every registry file. Mix and
    /// rebar3 expect "hexpm" for the repository they use through HEX_MIRROR / HEX_CDN.
    #[arg(long, default_value = "hexpm")]
    name: String,
    /// Output directory; replaced if it already holds a repository.
    #[arg(long)]
    out: PathBuf,
    /// DIR=TOOL: read the package source directory DIR (its name inside --packages) as TOOL
    /// (mix, rebar3 or erlang.mk) publishes it, whatever else its files say. Repeatable.
    #[arg(long = "build-tool", value_name = "DIR=TOOL", value_parser = parse_build_tool)]
    build_tools: Vec<(String, SourceKind)>,
    /// DIR=VERSION: the version of the rebar3 project in DIR whose app.src has rebar3 work it
    /// out when publishing ({vsn, git}, semver, {cmd, ...}); its packaged app.src carries it.
    /// Repeatable.
    #[arg(long = "package-version", value_name = "DIR=VERSION", value_parser = parse_dir_value)]
    versions: Vec<(String, String)>,
}

fn parse_dir_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((dir, value)) if !dir.is_empty() && !value.is_empty() => {
            Ok((dir.trim_end_matches('/').to_string(), value.to_string()))
        }
        _ => Err(format!("{text:?}: expected DIR=VALUE")),
    }
}

fn parse_build_tool(text: &str) -> Result<(String, SourceKind), String> {
    let (dir, tool) = parse_dir_value(text)?;
    Ok((dir, tool.parse()?))
}

pub fn run(_context: &Context, args: BuildArgs) -> anyhow::Result<ExitCode> {
    let pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("reading the signing key {}", args.key.display()))?;
    let key = RepoSigningKey::from_pem(&pem)
        .with_context(|| format!("loading the signing key {}", args.key.display()))?;
    let mut options = BuildOptions::default();
    for (dir, tool) in args.build_tools {
        options.sources.entry(dir).or_default().build_tool = Some(tool);
    }
    for (dir, version) in args.versions {
        options.sources.entry(dir).or_default().version = Some(version);
    }
    let built = static_repo::build_with(&args.packages, &args.name, &key, &args.out, &options)?;
    for (name, versions) in &built.packages {
        println!("{name} {}", versions.join(" "));
    }
    // The library only returns warnings; this is the one place they are printed.
    for warning in &built.unresolved {
        eprintln!("warning: {warning}");
    }
    println!(
        "built repository {:?} in {}: {} packages, {} releases, key {}",
        args.name,
        args.out.display(),
        built.packages.len(),
        built.release_count(),
        key.public_key().fingerprint()
    );
    Ok(ExitCode::SUCCESS)
}
