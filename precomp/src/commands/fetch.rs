//! `precomp fetch`: installs precompiled dependencies into a Mix project's `_build`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use precomp_client::fetch::{human_bytes, DepReport, FetchOptions, Observer, Outcome};
use precomp_client::project::parse_target;
use precomp_client::trust::{read_keys, signer_ids, SettingsFile, TrustPolicy, TrustedKey};

use crate::Context;

/// The config file looked for in the project when --config is not given.
const PROJECT_CONFIG: &str = ".precomp.toml";

/// Exit status of `--require-all` when something was missed.
const MISSED: u8 = 3;

/// Installs precompiled dependencies into a Mix project's `_build` after `mix deps.get`.
///
/// Reads mix.lock, the local Elixir and OTP, MIX_ENV (default dev) and the project's
/// compile-time config; computes each Hex dependency's build key as the builder does; looks
/// it up on the mirror; verifies the signed manifest against the trusted keys and policy and
/// the artifact against the manifest; installs it atomically into
/// `_build/<MIX_ENV>/lib/<app>` with the markers Mix checks. `mix compile` then compiles only
/// what was missed. Every miss is listed with its reason and left to Mix.
///
/// Settings come from flags, then environment variables, then the config file (--config, or
/// `.precomp.toml` in the project): `mirror`, `jobs`, `retries` and a `[trust]` table with
/// `keys`, `min_signatures`, `require`, `revoked`, `auditors` and `require_auditors` (see
/// docs/client.md, docs/audit.md).
///
/// Exit status: 0 (misses included), 3 with --require-all when anything was missed, 1 on
/// errors (no mix.lock, no trusted keys, a project Mix cannot read).
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// The Mix project directory.
    #[arg(long, default_value = ".")]
    project: PathBuf,
    /// A token (any scope, e.g. `precomp token create --scope reader`) sent with every
    /// request, for a mirror that requires one to read (`precomp serve
    /// --require-read-token`) [default: none].
    #[arg(long, env = "PRECOMP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The mirror's URL [env: PRECOMP_MIRROR, then the mirror Mix's Hex uses:
    /// HEX_TRUSTED_MIRROR_URL, HEX_TRUSTED_MIRROR, HEX_MIRROR_URL, HEX_MIRROR; else `mirror` in
    /// the config file].
    #[arg(long)]
    mirror: Option<String>,
    /// A trusted public key file (PEM; may hold several keys). Repeatable; added to the
    /// config file's keys.
    #[arg(long = "trust", value_name = "FILE")]
    trust: Vec<PathBuf>,
    /// The config file [env: PRECOMP_FETCH_CONFIG; default: .precomp.toml in the project,
    /// when present].
    #[arg(long, env = "PRECOMP_FETCH_CONFIG")]
    config: Option<PathBuf>,
    /// Distinct trusted signatures a manifest needs [default: 1, or the config file's].
    #[arg(long)]
    min_signatures: Option<usize>,
    /// A signer every manifest must have: a key id (ed25519:…) or a public key file.
    /// Repeatable.
    #[arg(long = "require-signer", value_name = "KEY")]
    require_signer: Vec<String>,
    /// A revoked signer, whose signatures never count: a key id or a public key file.
    /// Repeatable.
    #[arg(long = "revoked", value_name = "KEY")]
    revoked: Vec<String>,
    /// An auditor's public key file (PEM): trusted, and counted as an auditor who rebuilt
    /// the artifact (`precomp audit`). With any auditor, builds an audit flagged (its rebuild
    /// gave other bytes) are misses. Repeatable; added to the config file's `auditors`.
    #[arg(long = "auditor", value_name = "FILE")]
    auditor: Vec<PathBuf>,
    /// Distinct auditors who must have countersigned a manifest, e.g. 1 for "a builder and
    /// an auditor who rebuilt it" [default: 0, or the config file's `require_auditors`].
    #[arg(long)]
    require_auditors: Option<usize>,
    /// The root key (SPKI PEM) that signs the mirror's trust document (`precomp keys init`):
    /// the document's builder and auditor keys are trusted in their roles, its revoked keys
    /// refused. The document is verified, followed across rotations and cached [default:
    /// `root` under [trust] in the config file].
    #[arg(long = "root-key", value_name = "FILE")]
    root_key: Option<PathBuf>,
    /// Where the last trust document verified is kept (rollback protection) [default:
    /// ~/.cache/precomp/trust/ROOT-KEY-ID.doc].
    #[arg(long, env = "PRECOMP_TRUST_CACHE", value_name = "FILE")]
    trust_cache: Option<PathBuf>,
    /// The consumer's Mix env.
    #[arg(long = "env", env = "MIX_ENV", default_value = "dev")]
    mix_env: String,
    /// This machine's target for native code, ARCH-LIBC (e.g. x86_64-linux-gnu) [default:
    /// from Erlang's system architecture].
    #[arg(long)]
    target: Option<String>,
    /// Downloads at a time [default: 8, or the config file's].
    #[arg(long)]
    jobs: Option<usize>,
    /// Extra attempts for a request that fails transiently [default: 3, or the config
    /// file's].
    #[arg(long)]
    retries: Option<u32>,
    /// Report misses to the mirror, so builders build them.
    #[arg(long)]
    request_builds: bool,
    /// Exit with status 3 if any dependency was missed.
    #[arg(long)]
    require_all: bool,
    /// Print only the names of the dependencies Mix still has to compile (misses, git and
    /// path deps), space-separated on stdout, for `mix deps.compile`; the report goes to
    /// stderr.
    #[arg(long, conflicts_with = "json")]
    print_missing: bool,
    /// One JSON object per dependency on stdout, then a summary object (`hits`, `misses`,
    /// `bytes`, `seconds`, `missing`, …) as the last line.
    #[arg(long)]
    json: bool,
    /// Also list skipped dependencies (not needed in this env, git and path deps).
    #[arg(long, short)]
    verbose: bool,
}

pub fn run(_context: &Context, args: FetchArgs) -> anyhow::Result<ExitCode> {
    let project_dir = std::path::absolute(&args.project)
        .with_context(|| format!("resolving {}", args.project.display()))?;
    // The probe of the project (an `elixir` VM) is the fixed cost of a fetch: started before
    // anything else, it runs while the settings, keys and mirror are read. A project it cannot
    // start on is probed again by the fetch, which reports why.
    let probe = precomp_client::project::Project::start_probe(&project_dir, &args.mix_env).ok();
    let settings_path = match &args.config {
        Some(path) => Some(path.clone()),
        None => Some(project_dir.join(PROJECT_CONFIG)).filter(|p| p.is_file()),
    };
    let settings = match &settings_path {
        Some(path) => SettingsFile::read(path)?,
        None => SettingsFile {
            base: project_dir.clone(),
            ..SettingsFile::default()
        },
    };

    let mirror = args
        .mirror
        .clone()
        .or_else(|| non_empty_env("PRECOMP_MIRROR"))
        .or_else(|| {
            HEX_MIRROR_VARIABLES
                .iter()
                .find_map(|name| non_empty_env(name))
        })
        .or_else(|| settings.mirror.clone())
        .context(
            "no mirror: pass --mirror URL, or set PRECOMP_MIRROR or HEX_MIRROR (or \
             HEX_TRUSTED_MIRROR), or `mirror` in the config file",
        )?;

    let cwd = std::env::current_dir().context("the current directory")?;
    let mut keys = settings.keys()?;
    for file in &args.trust {
        keys.extend(read_keys(file)?);
    }
    let mut required = Vec::new();
    for reference in &settings.trust.require {
        required.extend(signer_ids(reference, &settings.base)?);
    }
    for reference in &args.require_signer {
        required.extend(signer_ids(reference, &cwd)?);
    }
    let mut revoked = Vec::new();
    for reference in &settings.trust.revoked {
        revoked.extend(signer_ids(reference, &settings.base)?);
    }
    for reference in &args.revoked {
        revoked.extend(signer_ids(reference, &cwd)?);
    }
    required.sort();
    required.dedup();
    revoked.sort();
    revoked.dedup();
    let min_signatures = args
        .min_signatures
        .or(settings.trust.min_signatures)
        .unwrap_or(1);
    let mut auditors = settings.auditor_keys()?;
    for file in &args.auditor {
        auditors.extend(read_keys(file)?);
    }
    // The mirror's trust document, when a root key is pinned.
    let root_key = args.root_key.clone().or_else(|| {
        settings
            .trust
            .root
            .as_ref()
            .map(|root| settings.base.join(root))
    });
    let mut revocation_reasons = std::collections::BTreeMap::new();
    // The document's version, when it leaves no builder key in effect.
    let mut no_builders_in = None;
    if let Some(root) = &root_key {
        let document = trust_document(
            &mirror,
            args.token.clone(),
            root,
            args.trust_cache.as_deref(),
        )?;
        if document.builders.is_empty() {
            no_builders_in = Some(document.version);
        }
        keys.extend(document.builders);
        auditors.extend(document.auditors);
        revoked.extend(document.revoked.keys().cloned());
        revoked.sort();
        revoked.dedup();
        revocation_reasons = document.revoked;
    }
    let require_auditors = args
        .require_auditors
        .or(settings.trust.require_auditors)
        .unwrap_or(0);
    if require_auditors > 0 && auditors.is_empty() {
        anyhow::bail!(
            "--require-auditors {require_auditors} needs the auditors' public keys: pass \
             --auditor FILE.pub (or `auditors` under [trust] in the config file)"
        );
    }
    // Auditors' keys are trusted keys too (a policy may list only auditors besides builders).
    keys.extend(auditors.iter().cloned());
    let counting: Vec<TrustedKey> = keys
        .iter()
        .filter(|key| !revoked.contains(&key.id))
        .cloned()
        .collect();
    let policy = match TrustPolicy::new(keys, min_signatures, required, revoked)
        .and_then(|policy| policy.with_auditors(auditors, require_auditors))
    {
        Ok(policy) => policy.with_revocation_reasons(revocation_reasons.clone()),
        // No lookup can run: what no key that still counts signed is removed all the same,
        // then the run stops.
        Err(error) => {
            return Err(stop_without_policy(
                &args,
                &project_dir,
                &counting,
                &revocation_reasons,
                no_builders_in,
                error,
            ))
        }
    };

    let target = match &args.target {
        Some(text) => Some(parse_target(text).with_context(|| {
            format!("--target {text:?}: give ARCH-LIBC, e.g. x86_64-linux-gnu")
        })?),
        None => None,
    };
    let jobs = args.jobs.or(settings.jobs).unwrap_or(8).clamp(1, 64);
    let options = FetchOptions {
        project_dir: project_dir.clone(),
        mix_env: args.mix_env.clone(),
        mirror,
        policy,
        jobs,
        retries: args.retries.or(settings.retries).unwrap_or(3),
        target,
        token: args.token.clone(),
        request_builds: args.request_builds,
        probe,
    };

    let progress = Arc::new(Progress::new(!args.json && std::io::stderr().is_terminal()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(precomp_client::fetch(options, progress.clone()));
    progress.finish();
    // A run that stopped on an error still takes out what no key that counts signed (a
    // revocation reaches `_build` whatever else fails).
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            let cleanup =
                remove_untrusted_installs(&args, &project_dir, &counting, &revocation_reasons);
            if cleanup.is_empty() {
                return Err(error.into());
            }
            return Err(anyhow::anyhow!(
                "{}.{cleanup}",
                error.to_string().trim_end_matches('.')
            ));
        }
    };

    if args.json {
        let mut out = String::new();
        for dep in &report.deps {
            out.push_str(&serde_json::to_string(&dep.line())?);
            out.push('\n');
        }
        out.push_str(&serde_json::to_string(&report.json_summary())?);
        out.push('\n');
        print!("{out}");
    } else {
        let mut text = String::new();
        for line in &report.recovered {
            text.push_str(&format!("recovered  {line}\n"));
        }
        for dep in &report.deps {
            if let Some(line) = dep_line(dep, args.verbose) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        if args.request_builds {
            text.push_str(&format!(
                "requested builds for {} miss(es): {} open for builders{}\n",
                report.requested,
                report.requested_open,
                if report.requested_closed.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", {} closed on the mirror ({})",
                        report.requested_closed.len(),
                        report.requested_closed.join("; ")
                    )
                }
            ));
        }
        for error in &report.request_errors {
            text.push_str(&format!("could not request a build: {error}\n"));
        }
        text.push_str(&report.summary_line());
        text.push('\n');
        if report.misses() > 0 {
            text.push_str(
                "missed dependencies are left to Mix: `mix compile` builds them (see `precomp \
                 fetch --help` and docs/client.md)\n",
            );
        }
        if args.print_missing {
            eprint!("{text}");
            println!("{}", report.missing_apps().join(" "));
        } else {
            print!("{text}");
        }
    }

    if args.require_all && report.misses() > 0 {
        if !args.json {
            eprintln!(
                "error: {} dependenc{} missed and --require-all is set",
                report.misses(),
                if report.misses() == 1 {
                    "y was"
                } else {
                    "ies were"
                }
            );
        }
        return Ok(ExitCode::from(MISSED));
    }
    Ok(ExitCode::SUCCESS)
}

/// The run cannot look anything up (`error`: the trust policy is impossible, e.g. no key
/// left to trust): removes every precompiled install no key of `counting` signed, says which
/// (as `removed` lines, or JSON objects with `--json`), and returns the error to stop with —
/// naming the trust document's revocations when it left no builder key in effect.
fn stop_without_policy(
    args: &FetchArgs,
    project_dir: &std::path::Path,
    counting: &[TrustedKey],
    revocations: &std::collections::BTreeMap<String, String>,
    no_builders_in: Option<u64>,
    error: precomp_client::ClientError,
) -> anyhow::Error {
    let cleanup = remove_untrusted_installs(args, project_dir, counting, revocations);
    match no_builders_in {
        Some(version) if !revocations.is_empty() => anyhow::anyhow!(
            "the mirror's trust document (version {version}) leaves no builder key in effect: \
             it revoked {}. No precompiled dependency can be trusted until it lists a builder \
             again: the mirror's operators add one (`precomp keys add NEW.pub --role builder \
             --root ROOT.key`, docs/operations.md \"A compromised builder or auditor key\").\
             {cleanup}",
            revocations
                .iter()
                .map(|(id, why)| format!("{id} ({why})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => anyhow::anyhow!("{}.{cleanup}", error.to_string().trim_end_matches('.')),
    }
}

/// Removes every precompiled install of the project no key of `counting` signed, prints which
/// (`removed` lines, or JSON objects with `--json`), and returns a sentence for the error the
/// run stops with (empty when nothing was removed).
fn remove_untrusted_installs(
    args: &FetchArgs,
    project_dir: &std::path::Path,
    counting: &[TrustedKey],
    revocations: &std::collections::BTreeMap<String, String>,
) -> String {
    let removed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| {
            runtime
                .block_on(precomp_client::revoked::remove_untrusted(
                    project_dir,
                    &args.mix_env,
                    counting,
                    revocations,
                ))
                .map_err(anyhow::Error::from)
        });
    match &removed {
        Ok(removed) => {
            let mut out = String::new();
            for dep in removed {
                if args.json {
                    out.push_str(&serde_json::to_string(&dep.line()).expect("plain data"));
                } else {
                    out.push_str(&format!(
                        "removed    {}: {}; Mix builds it",
                        dep.app, dep.reason
                    ));
                }
                out.push('\n');
            }
            if args.print_missing {
                eprint!("{out}");
            } else {
                print!("{out}");
            }
            match removed.len() {
                0 => String::new(),
                n => format!(
                    " Removed {n} precompiled install(s) no trusted key signed, so `mix \
                     compile` builds them."
                ),
            }
        }
        Err(e) => format!(" Could not remove the installs no trusted key signed: {e:#}"),
    }
}

/// What the mirror's trust document makes trusted.
struct DocumentKeys {
    version: u64,
    builders: Vec<TrustedKey>,
    auditors: Vec<TrustedKey>,
    /// Revoked key id → why and when.
    revoked: std::collections::BTreeMap<String, String>,
}

/// Fetches the mirror's trust document, verifies it against the pinned root (following
/// rotations from the cached version) and caches it: its builders, auditors and revocations.
fn trust_document(
    mirror: &str,
    token: Option<String>,
    root: &std::path::Path,
    cache: Option<&std::path::Path>,
) -> anyhow::Result<DocumentKeys> {
    use precomp_ops::trust;
    use precomp_proto::trust::Role;
    let pem = std::fs::read_to_string(root)
        .with_context(|| format!("reading the root key {}", root.display()))?;
    let pinned = precomp_proto::manifest::ArtifactPublicKey::from_pem(&pem).with_context(|| {
        format!(
            "{}: expected the trust document's root public key (SPKI PEM)",
            root.display()
        )
    })?;
    let cache = cache
        .map(std::path::Path::to_path_buf)
        .or_else(|| trust::default_cache_path(&pinned));
    let cached = cache.as_deref().and_then(trust::load_cache);
    let client = precomp_http::artifacts::ArtifactClient::with_timeout(
        mirror,
        token,
        std::time::Duration::from_secs(60),
    )?;
    let now = trust::unix_now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let refreshed = runtime
        .block_on(trust::refresh(&client, &pinned, cached, now))
        .context("the mirror's trust document")?;
    if let Some(error) = &refreshed.offline {
        eprintln!(
            "warning: using the cached trust document version {}: the mirror could not be \
             asked ({error})",
            refreshed.held.document.version
        );
    }
    if let Some(path) = &cache {
        if !refreshed.followed.is_empty() {
            // Without the cache, the next run checks the chain from the pinned root again.
            if let Err(e) = trust::store_cache(path, &refreshed.held) {
                eprintln!("warning: the trust document is not cached: {e}");
            }
        }
    }
    let document = &refreshed.held.document;
    let source = PathBuf::from(format!(
        "{mirror}/precomp/v1/trust (version {})",
        document.version
    ));
    let mut keys = DocumentKeys {
        version: document.version,
        builders: Vec::new(),
        auditors: Vec::new(),
        revoked: std::collections::BTreeMap::new(),
    };
    for (key, roles) in document.signing_keys(now) {
        let trusted = TrustedKey {
            id: key.key_id(),
            key,
            source: source.clone(),
        };
        if roles.contains(&Role::Auditor) {
            keys.auditors.push(trusted.clone());
        }
        if roles.contains(&Role::Builder) {
            keys.builders.push(trusted);
        }
    }
    for revocation in &document.revocations {
        // The version that revoked it, not the current one: that is where an operator looks.
        let when = match revocation.version {
            0 => trust::utc(revocation.revoked_at),
            version => format!(
                "trust document version {version}, {}",
                trust::utc(revocation.revoked_at)
            ),
        };
        keys.revoked.insert(
            revocation.key_id.clone(),
            format!("{} ({when})", revocation.reason),
        );
    }
    tracing::info!(
        version = document.version,
        followed = ?refreshed.followed,
        builders = keys.builders.len(),
        auditors = keys.auditors.len(),
        revoked = keys.revoked.len(),
        "trust document verified"
    );
    Ok(keys)
}

/// The variables Mix's Hex takes its mirror from, in the order it prefers them (a trusted
/// mirror, which gets the repository's auth key — a mirror run with `--require-read-token` —
/// over a plain one), so `precomp fetch` reads from the mirror `mix deps.get` used.
const HEX_MIRROR_VARIABLES: [&str; 4] = [
    "HEX_TRUSTED_MIRROR_URL",
    "HEX_TRUSTED_MIRROR",
    "HEX_MIRROR_URL",
    "HEX_MIRROR",
];

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A human line for one dependency, or none for a skipped one unless `verbose`.
fn dep_line(dep: &DepReport, verbose: bool) -> Option<String> {
    let name = match (&dep.package, &dep.version) {
        (Some(package), Some(version)) if package == &dep.app => format!("{package} {version}"),
        (Some(package), Some(version)) => format!("{} ({package} {version})", dep.app),
        _ => dep.app.clone(),
    };
    Some(match &dep.outcome {
        Outcome::Installed {
            bytes,
            replaced: Some(reason),
            ..
        } => format!("replaced   {name} ({}): {reason}", human_bytes(*bytes)),
        Outcome::Installed { bytes, .. } => {
            format!("installed  {name} ({})", human_bytes(*bytes))
        }
        Outcome::Current { .. } => format!("current    {name}"),
        Outcome::Miss {
            kind,
            reason,
            removed_stale,
        } => format!(
            "miss       {name}: {reason} [{}]{}",
            kind.as_str(),
            if *removed_stale {
                " (removed the stale precompiled build)"
            } else {
                ""
            }
        ),
        Outcome::Skipped { reason, mix_builds } if verbose || *mix_builds => {
            format!("skipped    {name}: {reason}")
        }
        Outcome::Skipped { .. } => return None,
    })
}

/// The progress bar: dependencies done, bytes received. Drawn only on a terminal.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    bytes: AtomicU64,
}

impl Progress {
    fn new(visible: bool) -> Progress {
        let bar = visible.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message("reading the Mix project");
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            bytes: AtomicU64::new(0),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn started(&self, deps: usize) {
        if let Some(bar) = &self.bar {
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} fetching [{bar:30}] {pos}/{len} deps {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_length(deps as u64);
            bar.set_message("");
        }
    }

    fn bytes(&self, bytes: u64) {
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(bar) = &self.bar {
            bar.set_message(human_bytes(total));
        }
    }

    fn finished(&self, dep: &DepReport) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
            if dep.is_miss() {
                bar.set_message(format!(
                    "{} (missed {})",
                    human_bytes(self.bytes.load(Ordering::Relaxed)),
                    dep.app
                ));
            }
        }
    }
}
