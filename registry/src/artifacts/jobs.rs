//! Build jobs leased to workers on other machines (`precomp worker`):
//! `POST /precomp/v1/jobs/lease`, `POST /precomp/v1/jobs/ID/heartbeat`,
//! `POST /precomp/v1/jobs/ID/release`, all with a token that may publish.
//!
//! A job is an open miss leased to one worker: the `leases` table holds one row per lease,
//! its id the job id. A miss is leasable while it is open and has no live lease (not ended,
//! not expired). Leasing a miss whose earlier lease expired ends that lease as `lost`: a
//! heartbeat on it is then `409`, so its worker stops. A heartbeat on an expired lease that
//! nobody took since renews it. Results are reported with `PUT manifests/KEY` or
//! `POST failures`, which close the miss and so end the job; a heartbeat on a job whose miss
//! is closed is `409`. Times are kept in milliseconds so short leases expire on time.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::super::api::{HeartbeatRequest, Lease, LeaseReleased, LeaseRenewed, LeaseRequest, Miss};
use super::super::token::valid_token_name;
use super::super::{Artifacts, Publisher, Refusal, MAX_LEASE_SECONDS, MIN_LEASE_SECONDS};
use super::{ArtifactStore, ArtifactStoreError};

/// Bound on the targets one lease request names.
const MAX_TARGETS: usize = 16;

impl Artifacts {
    /// Leases the most-reported open miss that `request` matches and no live lease holds, to
    /// the worker of `publisher`'s token; `None` when there is none.
    pub fn lease_job(
        &self,
        request: &LeaseRequest,
        publisher: &Publisher,
    ) -> Result<Option<Lease>, Refusal> {
        check_lease_request(request)?;
        let store = &self.store;
        let err = store.db_err();
        let now = now_ms();
        let mut db = store.db.lock().expect("db lock");
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let chosen: Option<String> = {
            let mut stmt = tx
                .prepare(
                    "SELECT base_key, target FROM misses m
                     WHERE closed_at IS NULL AND otp_major = ?1 AND elixir = ?2 AND mix_env = ?3
                       AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.base_key = m.base_key
                                       AND l.ended_at IS NULL AND l.expires_ms > ?4)
                     ORDER BY count DESC, first_reported, base_key",
                )
                .map_err(&err)?;
            let mut rows = stmt
                .query(params![
                    request.otp_major,
                    request.elixir,
                    request.mix_env,
                    now
                ])
                .map_err(&err)?;
            let mut chosen = None;
            while let Some(row) = rows.next().map_err(&err)? {
                let target: String = row.get(1).map_err(&err)?;
                if request.targets.contains(&target) {
                    chosen = Some(row.get(0).map_err(&err)?);
                    break;
                }
            }
            chosen
        };
        let Some(base_key) = chosen else {
            return Ok(None);
        };
        // Any earlier lease of this miss expired: its worker lost it.
        tx.execute(
            "UPDATE leases SET ended_at = ?2, ended = 'lost' WHERE base_key = ?1 AND ended_at IS NULL",
            params![base_key, now / 1000],
        )
        .map_err(&err)?;
        let lease_ms = request.lease_seconds as i64 * 1000;
        tx.execute(
            "INSERT INTO leases (base_key, worker, token_name, lease_ms, leased_at, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                base_key,
                request.worker,
                publisher.name,
                lease_ms,
                now / 1000,
                now + lease_ms
            ],
        )
        .map_err(&err)?;
        let job = tx.last_insert_rowid() as u64;
        let miss = tx
            .query_row(
                "SELECT package, version, base_key, reason, otp_major, elixir, mix_env, target,
                    lock, count, first_reported, last_reported
                 FROM misses WHERE base_key = ?1",
                params![base_key],
                |row| {
                    Ok(Miss {
                        package: row.get(0)?,
                        version: row.get(1)?,
                        base_key: row.get(2)?,
                        reason: row.get(3)?,
                        otp_major: row.get(4)?,
                        elixir: row.get(5)?,
                        mix_env: row.get(6)?,
                        target: row.get(7)?,
                        lock: row.get(8)?,
                        count: row.get::<_, i64>(9)? as u64,
                        first_reported: row.get(10)?,
                        last_reported: row.get(11)?,
                    })
                },
            )
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        tracing::info!(
            job,
            base_key = %base_key,
            package = %miss.package,
            version = %miss.version,
            worker = %request.worker,
            token = %publisher.name,
            "job leased"
        );
        Ok(Some(Lease {
            job,
            lease_expires_at: expires_at(now + lease_ms),
            lease_seconds: request.lease_seconds,
            miss,
        }))
    }

    /// Renews the lease of `job` for the token that leased it: `409` when it was lost (it
    /// expired and was leased again), released, or its miss is closed.
    pub fn heartbeat_job(
        &self,
        job: u64,
        request: &HeartbeatRequest,
        publisher: &Publisher,
    ) -> Result<LeaseRenewed, Refusal> {
        if let Some(seconds) = request.lease_seconds {
            check_lease_seconds(seconds)?;
        }
        let store = &self.store;
        let err = store.db_err();
        let now = now_ms();
        let mut db = store.db.lock().expect("db lock");
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let held = held_job(store, &tx, job, publisher).map_err(Refusal::from)??;
        if let Some(ended) = &held.ended {
            return Err(Refusal::new(409, ended_message(job, ended)));
        }
        if let Some(closed_by) = &held.closed_by {
            return Err(Refusal::new(
                409,
                format!("job {job} is closed ({closed_by}): stop building it"),
            ));
        }
        let lease_ms = request
            .lease_seconds
            .map_or(held.lease_ms, |s| s as i64 * 1000);
        tx.execute(
            "UPDATE leases SET expires_ms = ?2, lease_ms = ?3 WHERE job = ?1",
            params![job as i64, now + lease_ms, lease_ms],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(LeaseRenewed {
            job,
            base_key: held.base_key,
            lease_expires_at: expires_at(now + lease_ms),
            lease_seconds: (lease_ms / 1000) as u64,
        })
    }

    /// Gives `job` back to the queue (the token that leased it): its miss is leasable again.
    pub fn release_job(&self, job: u64, publisher: &Publisher) -> Result<LeaseReleased, Refusal> {
        let store = &self.store;
        let err = store.db_err();
        let now = now_ms();
        let mut db = store.db.lock().expect("db lock");
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let held = held_job(store, &tx, job, publisher).map_err(Refusal::from)??;
        let result = match held.ended.as_deref() {
            Some("released") => "already_released",
            Some(ended) => return Err(Refusal::new(409, ended_message(job, ended))),
            None => {
                tx.execute(
                    "UPDATE leases SET ended_at = ?2, ended = 'released' WHERE job = ?1",
                    params![job as i64, now / 1000],
                )
                .map_err(&err)?;
                if held.closed_by.is_some() {
                    "closed"
                } else {
                    "released"
                }
            }
        };
        tx.commit().map_err(&err)?;
        tracing::info!(job, base_key = %held.base_key, token = %publisher.name, result, "job released");
        Ok(LeaseReleased {
            job,
            base_key: held.base_key,
            result: result.to_string(),
        })
    }
}

/// A lease row as a heartbeat or a release sees it.
struct HeldJob {
    base_key: String,
    lease_ms: i64,
    /// `lost` or `released`.
    ended: Option<String>,
    /// Set when the miss is closed.
    closed_by: Option<String>,
}

/// The lease `job`, if it exists and `publisher`'s token leased it (`404`, `403` otherwise).
fn held_job(
    store: &ArtifactStore,
    tx: &rusqlite::Transaction<'_>,
    job: u64,
    publisher: &Publisher,
) -> Result<Result<HeldJob, Refusal>, ArtifactStoreError> {
    let row: Option<(String, HeldJob)> = tx
        .query_row(
            "SELECT l.base_key, l.token_name, l.lease_ms, l.ended, m.closed_at, m.closed_by
             FROM leases l LEFT JOIN misses m ON m.base_key = l.base_key WHERE l.job = ?1",
            params![job as i64],
            |row| {
                let closed_at: Option<i64> = row.get(4)?;
                let closed_by: Option<String> = row.get(5)?;
                Ok((
                    row.get(1)?,
                    HeldJob {
                        base_key: row.get(0)?,
                        lease_ms: row.get(2)?,
                        ended: row.get(3)?,
                        closed_by: closed_at
                            .map(|_| closed_by.unwrap_or_else(|| "closed".to_string())),
                    },
                ))
            },
        )
        .optional()
        .map_err(store.db_err())?;
    let Some((token_name, held)) = row else {
        return Ok(Err(Refusal::new(
            404,
            format!("no job {job} on this mirror: lease one with POST /precomp/v1/jobs/lease"),
        )));
    };
    if token_name != publisher.name {
        return Ok(Err(Refusal::new(
            403,
            format!(
                "job {job} was leased with token {token_name:?}, not {:?}: only the token that \
                 leased a job renews or releases it",
                publisher.name
            ),
        )));
    }
    Ok(Ok(held))
}

fn ended_message(job: u64, ended: &str) -> String {
    match ended {
        "lost" => format!(
            "job {job}: the lease expired and the job was leased again; stop building it \
             (heartbeat more often than the lease lasts)"
        ),
        _ => format!("job {job} was released; lease a new job"),
    }
}

fn check_lease_seconds(seconds: u64) -> Result<(), Refusal> {
    if !(MIN_LEASE_SECONDS..=MAX_LEASE_SECONDS).contains(&seconds) {
        return Err(Refusal::new(
            422,
            format!(
                "lease_seconds {seconds} is not within {MIN_LEASE_SECONDS}..={MAX_LEASE_SECONDS}"
            ),
        ));
    }
    Ok(())
}

fn check_lease_request(request: &LeaseRequest) -> Result<(), Refusal> {
    if !valid_token_name(&request.worker) {
        return Err(Refusal::new(
            422,
            format!(
                "worker {:?} must be 1 to 64 letters, digits, `-`, `_` and `.`, not starting \
                 with `.`",
                request.worker
            ),
        ));
    }
    for (field, value) in [
        ("otp_major", &request.otp_major),
        ("elixir", &request.elixir),
        ("mix_env", &request.mix_env),
    ] {
        if value.is_empty() || value.len() > 64 || value.chars().any(char::is_control) {
            return Err(Refusal::new(
                422,
                format!("{field} must be 1 to 64 characters on one line"),
            ));
        }
    }
    if request.targets.is_empty() || request.targets.len() > MAX_TARGETS {
        return Err(Refusal::new(
            422,
            format!("targets must list 1 to {MAX_TARGETS} targets (`any`, ARCH-LIBC)"),
        ));
    }
    for target in &request.targets {
        let valid = target == "any"
            || (target.len() <= 64
                && target
                    .split_once('-')
                    .is_some_and(|(a, l)| !a.is_empty() && !l.is_empty())
                && target
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        if !valid {
            return Err(Refusal::new(
                422,
                format!("target {target:?} is neither `any` nor ARCH-LIBC"),
            ));
        }
    }
    check_lease_seconds(request.lease_seconds)
}

/// Unix seconds at or after `ms`.
fn expires_at(ms: i64) -> i64 {
    (ms + 999) / 1000
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
