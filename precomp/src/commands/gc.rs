//! `precomp gc`: removes published builds and artifacts nobody needs any more from the
//! mirror's artifact store. A dry run unless --apply.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use precomp_ops::gc::{self, GcOptions, GcReport};
use precomp_ops::trust::{unix_now, utc};

use crate::Context;

/// Removes artifacts no recent lock needs from DATA/artifacts (dry run by default).
///
/// A build is kept when it was published or its artifact was downloaded within the last
/// --older-than days, when a --keep-lock lock needs it (its package, version and closure are
/// those of an entry of the lock, whatever toolchain it was built for), or when a lock a
/// client sent with a miss within those days needs it. An artifact goes when no kept build
/// names it and it was neither uploaded nor used within those days. Without --apply, prints
/// what would go; with it, removes the rows in one transaction, then the files. Safe while
/// `precomp serve` runs.
#[derive(clap::Args)]
pub struct GcArgs {
    /// Keep what was published or used within this many days.
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    older_than: u32,
    /// A mix.lock whose builds are kept, however old (a release branch, a long-lived
    /// deployment). Repeatable.
    #[arg(long = "keep-lock", value_name = "FILE")]
    keep_locks: Vec<PathBuf>,
    /// Remove; without it nothing is changed.
    #[arg(long)]
    apply: bool,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(context: &Context, args: GcArgs) -> anyhow::Result<ExitCode> {
    let mut keep_locks = Vec::new();
    for path in &args.keep_locks {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the kept lock {}", path.display()))?;
        keep_locks.push((path.clone(), text));
    }
    let report = gc::collect(&GcOptions {
        store: context.data().join("artifacts"),
        older_than_days: args.older_than,
        keep_locks,
        apply: args.apply,
        now: unix_now(),
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn text(report: &GcReport) -> String {
    let verb = if report.applied {
        "removed"
    } else {
        "would remove"
    };
    let mut out = String::new();
    for m in &report.manifests {
        out.push_str(&format!(
            "{verb} build {} {} {} (published {}, last used {})\n",
            m.package,
            m.version,
            m.key,
            utc(m.published_at),
            m.last_used.map_or("never".to_string(), utc)
        ));
    }
    for a in &report.artifacts {
        out.push_str(&format!(
            "{verb} artifact {} ({} bytes, uploaded {}, last used {})\n",
            a.sha256,
            a.size,
            utc(a.uploaded_at),
            a.last_used.map_or("never".to_string(), utc)
        ));
    }
    for blob in &report.stray_blobs {
        out.push_str(&format!("{verb} stray blob {blob} (no row names it)\n"));
    }
    for blob in &report.missing_blobs {
        out.push_str(&format!(
            "warning: a kept build's artifact {blob} is missing from the store; publish it again\n"
        ));
    }
    out.push_str(&format!(
        "precomp gc: {verb} {} build(s), {} artifact(s), {} stray blob(s), {} bytes, {} closed \
         miss(es); kept {} recent, {} for kept locks, {} for clients' recent misses{}, {} artifact(s) (cutoff {})\n",
        report.manifests.len(),
        report.artifacts.len(),
        report.stray_blobs.len(),
        report.bytes,
        report.closed_misses,
        report.kept.recent,
        report.kept.kept_locks,
        report.kept.miss_locks,
        if report.kept.undecodable > 0 {
            format!(", {} undecodable", report.kept.undecodable)
        } else {
            String::new()
        },
        report.kept_artifacts,
        utc(report.cutoff)
    ));
    if !report.applied
        && (!report.manifests.is_empty()
            || !report.artifacts.is_empty()
            || !report.stray_blobs.is_empty()
            || report.closed_misses > 0)
    {
        out.push_str("dry run: nothing was changed; run again with --apply to remove them\n");
    }
    out
}
