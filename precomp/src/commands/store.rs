//! `precomp store scrub`: hashes every blob of the artifact store again and compares it with
//! its name and the database's rows.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use precomp_artifacts::maintenance::{self, ScrubReport};
use precomp_artifacts::{open_existing_metadata, Blobs};
use precomp_ops::trust::utc;

use crate::Context;

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Re-verifies every stored artifact against its SHA-256 and the database: reports
    /// missing, corrupt and orphaned blobs, and exits with status 1 if there are any.
    ///
    /// Reads every blob (as much I/O as the store's size); safe while `precomp serve` runs.
    /// A corrupt or missing artifact is published again by its builder (`precomp build
    /// --publish`, or a worker once the miss is reported again) after removing its blob;
    /// orphaned blobs are removed by `precomp gc --apply` once older than its cutoff.
    Scrub(ScrubArgs),
}

#[derive(Args)]
pub struct ScrubArgs {
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(context: &Context, command: StoreCommand) -> anyhow::Result<ExitCode> {
    match command {
        StoreCommand::Scrub(args) => scrub(context, args),
    }
}

fn scrub(context: &Context, args: ScrubArgs) -> anyhow::Result<ExitCode> {
    let dir = context.data().join("artifacts");
    let store = open_existing_metadata(&dir)?;
    let report = maintenance::scrub(&*store, &Blobs::new(&dir))
        .with_context(|| format!("scrubbing the artifact store {}", dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn text(report: &ScrubReport) -> String {
    let mut out = String::new();
    for blob in &report.corrupt {
        out.push_str(&format!(
            "corrupt: artifact {} holds bytes whose sha256 is {} ({} bytes{})\n",
            blob.sha256,
            blob.actual,
            blob.size,
            blob.recorded_size
                .filter(|&recorded| recorded != blob.size)
                .map(|recorded| format!(", {recorded} recorded"))
                .unwrap_or_default()
        ));
    }
    for blob in &report.missing {
        let builds = if blob.builds.is_empty() {
            String::new()
        } else {
            format!(", named by build(s) {}", blob.builds.join(", "))
        };
        let row = if blob.recorded {
            "recorded"
        } else {
            "not recorded"
        };
        out.push_str(&format!(
            "missing: artifact {} ({row}{builds}) has no blob\n",
            blob.sha256
        ));
    }
    for blob in &report.orphaned {
        out.push_str(&format!(
            "orphaned: blob {} ({} bytes, modified {}) has no row\n",
            blob.sha256,
            blob.size,
            utc(blob.modified)
        ));
    }
    out.push_str(&format!(
        "precomp store scrub: {} blob(s), {} bytes checked; {} corrupt, {} missing, {} orphaned\n",
        report.checked,
        report.bytes,
        report.corrupt.len(),
        report.missing.len(),
        report.orphaned.len()
    ));
    out
}
