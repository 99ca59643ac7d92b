//! `precomp audit`: rebuilds published artifacts independently and compares the bytes; a match
//! countersigns the manifest on the mirror, a mismatch posts a signed verdict naming the
//! files and beam chunks that differ, and the mirror flags the build (docs/audit.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Args;
use precomp_builder::workdir::WorkDir;
use precomp_http::artifacts::ArtifactClient;
use precomp_ops::audit::{self, AuditReport, Auditor, Candidate, Outcome, Selection};
use precomp_proto::manifest::ArtifactSigningKey;
use precomp_sandbox::toolchain::Store;
use precomp_sandbox::Sandbox;

use crate::Context;

/// Exit status when some rebuild gave other bytes than the published artifact (`precomp audit`,
/// and `precomp worker --audit --once`).
pub(crate) const MISMATCH: u8 = 2;

/// Exit status when some build was not audited because its manifest records another build
/// recipe than this precomp's, or none (and nothing mismatched or failed): not a mismatch,
/// not a success either — an auditor of its recipe must audit it.
pub(crate) const OTHER_RECIPE: u8 = 3;

/// Rebuilds published artifacts independently and compares them byte for byte.
///
/// Each selected build is rebuilt from the inputs its signed manifest lists — the lock is
/// made from the closure's release tarballs, the config from the compile-env values it
/// records — with the builder's code but nothing of a builder's data: a fresh directory under
/// DATA/audit (sources, store, work), the --toolchain given (any image of the same OTP and
/// Elixir). The closure is rebuilt from source too.
///
/// Match: the manifest is countersigned with --key and uploaded (the mirror appends the
/// signature; clients that require an auditor accept it). Mismatch: a verdict signed with
/// --key naming every differing file and, for beams, chunk (with the decoded difference, e.g.
/// an absolute path in Dbgi or a literal in LitT) is posted, and the mirror flags the build.
///
/// A build whose manifest records another build recipe than this precomp's (or none, from a
/// builder before recipes) is not rebuilt: its bytes may depend on how it was compiled, not
/// only on what. It is reported as `other_recipe`, nothing is posted: audit it with a precomp
/// of its recipe.
///
/// Exit status: 0 when every audited build matched (skipped ones aside), 2 when any
/// mismatched, 1 when a rebuild failed or the audit could not run, 3 when none of that but
/// some build was of another recipe.
#[derive(Args)]
pub struct AuditArgs {
    /// The mirror: its index, manifests, artifacts and sources.
    #[arg(long, env = "PRECOMP_MIRROR")]
    mirror: String,
    /// The auditor's ed25519 signing key (`precomp keys generate`); its public key must be
    /// one of the mirror's --auditor-key.
    #[arg(long, env = "PRECOMP_AUDITOR_KEY")]
    key: PathBuf,
    /// The auditor's token (`precomp token create --name NAME --key AUDITOR.pub`); not
    /// needed with --dry-run.
    #[arg(long, env = "PRECOMP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Audit this package's builds.
    #[arg(long)]
    package: Option<String>,
    /// Audit every build of the mirror.
    #[arg(long, conflicts_with = "package")]
    all: bool,
    /// Audit a random sample of N builds (of those the toolchain can rebuild, of this
    /// precomp's build recipe).
    #[arg(long, value_name = "N")]
    sample: Option<usize>,
    /// Audit the builds fewer than N auditors have countersigned or posted a verdict on.
    #[arg(long, value_name = "N")]
    fewer_than: Option<usize>,
    /// The toolchain to rebuild with: `host`, an image id, a digest prefix or a suite.
    #[arg(long, default_value = "host")]
    toolchain: String,
    /// Where toolchain images are stored [default: the data directory].
    #[arg(long, env = "PRECOMP_TOOLCHAINS")]
    toolchains: Option<PathBuf>,
    /// Builds at a time: up to N builds are audited at once, each rebuild getting its share
    /// [default: the number of CPUs].
    #[arg(long)]
    jobs: Option<usize>,
    /// Compare only: countersign nothing, post no verdict.
    #[arg(long)]
    dry_run: bool,
    /// Keep the run's directory (sources, rebuilt artifacts, build projects) under DATA/audit.
    #[arg(long)]
    keep_work: bool,
    /// One JSON object per audited build on stdout: package, version, key, result (match,
    /// mismatch, skipped, other_recipe, failed), and for a mismatch the summary, chunks and
    /// files.
    #[arg(long)]
    json: bool,
}

pub fn run(context: &Context, args: AuditArgs) -> anyhow::Result<ExitCode> {
    if !(args.all || args.package.is_some() || args.sample.is_some() || args.fewer_than.is_some()) {
        bail!("say what to audit: --package NAME, --all, --sample N or --fewer-than N");
    }
    if args.token.is_none() && !args.dry_run {
        bail!(
            "an audit countersigns and posts verdicts: give the auditor's --token (`precomp \
             token create --name NAME --key AUDITOR.pub` on the mirror), or --dry-run"
        );
    }
    let data = context.data();
    let key_pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("reading the auditor key {}", args.key.display()))?;
    let key = ArtifactSigningKey::from_pem(&key_pem)
        .with_context(|| format!("{} is not an ed25519 signing key", args.key.display()))?;
    let sandbox = Sandbox::new()?;
    let toolchains_dir = args.toolchains.clone().unwrap_or_else(|| data.clone());
    let toolchain = Store::open(&toolchains_dir)
        .with_context(|| {
            format!(
                "opening the toolchain store in {}",
                toolchains_dir.display()
            )
        })?
        .resolve(&args.toolchain, &sandbox)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP client")?;
    let client = ArtifactClient::new(&args.mirror, args.token.clone())
        .with_context(|| format!("the mirror URL {:?}", args.mirror))?;
    let selection = Selection {
        package: args.package.clone(),
        fewer_than: args.fewer_than,
        sample: args.sample,
    };
    let candidates = audit::select(&client, &runtime, &selection, &toolchain)
        .context("listing the mirror's builds")?;
    if candidates.is_empty() {
        eprintln!("nothing to audit: no published build matches the selection");
        return Ok(ExitCode::SUCCESS);
    }

    let run = precomp_worker::audit_jobs::new_run_dir(&data.join("audit"))?;
    let run_dir = run.path().to_path_buf();
    let auditor = Auditor {
        sandbox: &sandbox,
        toolchain: &toolchain,
        key: &key,
        client: &client,
        runtime: &runtime,
        mirror: args.mirror.clone(),
        work: run_dir.clone(),
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        dry_run: args.dry_run,
        keep_work: args.keep_work,
        cancel: precomp_builder::Cancel::new(),
    };
    let reporter = Reporter { json: args.json };
    let reports = auditor.audit(&candidates, &reporter);
    // Failed rebuilds' logs are in the run's directory: keep it for them.
    let keep = args.keep_work
        || reports.as_ref().is_ok_and(|reports| {
            reports
                .iter()
                .any(|r| matches!(r.outcome, Outcome::Failed { log: Some(_), .. }))
        });
    finish_run_dir(run, keep);
    let reports = reports?;

    let count = |result: &str| reports.iter().filter(|r| r.result() == result).count();
    let (matched, mismatched, skipped, failed, other_recipe) = (
        count("match"),
        count("mismatch"),
        count("skipped"),
        count("failed"),
        count("other_recipe"),
    );
    if !args.json {
        eprintln!(
            "audited {} build{} with toolchain {} (OTP {}, Elixir {}) and recipe {}: \
             {matched} matched, {mismatched} mismatched, {failed} failed, {skipped} skipped, \
             {other_recipe} of another recipe",
            reports.len(),
            if reports.len() == 1 { "" } else { "s" },
            toolchain.id,
            toolchain.otp,
            toolchain.elixir,
            precomp_builder::RECIPE,
        );
    }
    Ok(if mismatched > 0 {
        ExitCode::from(MISMATCH)
    } else if failed > 0 {
        ExitCode::FAILURE
    } else if other_recipe > 0 {
        ExitCode::from(OTHER_RECIPE)
    } else {
        ExitCode::SUCCESS
    })
}

/// Removes the run directory, or keeps it (failed rebuilds' logs are in it) and says where.
pub(crate) fn finish_run_dir(run: WorkDir, keep: bool) {
    if keep {
        eprintln!("kept the audit's directory: {}", run.keep().display());
    }
}

/// Progress on stderr; with --json, one line per build on stdout (`precomp worker --audit`
/// prints its own JSON, and uses this for stderr only).
pub(crate) struct Reporter {
    pub(crate) json: bool,
}

impl audit::Progress for Reporter {
    fn started(&self, candidate: &Candidate) {
        if !self.json {
            eprintln!(
                "auditing {} {} ({})",
                candidate.package,
                candidate.build.version,
                candidate
                    .build
                    .key
                    .get(..12)
                    .unwrap_or(&candidate.build.key)
            );
        }
    }

    fn finished(&self, report: &AuditReport) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string(&report.line()).expect("plain data")
            );
            return;
        }
        let what = format!("{} {}", report.package, report.version);
        let line = match &report.outcome {
            Outcome::Match { published } => format!(
                "match      {what}: the same bytes{}",
                match published.as_deref() {
                    Some("countersigned") => "; countersigned on the mirror",
                    Some(_) => "; already countersigned",
                    None => " (dry run: nothing signed)",
                }
            ),
            Outcome::Mismatch { verdict, flagged } => {
                let mut text = format!(
                    "MISMATCH   {what}: {}{}",
                    verdict.summary,
                    match flagged {
                        Some(true) => "; verdict posted, the build is flagged",
                        Some(false) => "; verdict posted",
                        None => " (dry run: nothing posted)",
                    }
                );
                for file in &verdict.files {
                    text.push_str(&format!("\n  {}: {}", file.path, file.explanation));
                    for chunk in &file.chunks {
                        text.push_str(&format!("\n    {}: {}", chunk.id, chunk.explanation));
                    }
                }
                text
            }
            Outcome::Skipped { reason } => format!("skipped    {what}: {reason}"),
            Outcome::OtherRecipe { recipe } => format!(
                "NOT AUDITED {what}: {}; nothing posted",
                audit::other_recipe_reason(&report.key, recipe.as_deref())
            ),
            Outcome::Failed { reason, log } => format!(
                "FAILED     {what}: {reason}{}",
                log.as_ref()
                    .map(|l| format!(" (log: {})", l.display()))
                    .unwrap_or_default()
            ),
        };
        eprintln!("{line}");
    }
}
