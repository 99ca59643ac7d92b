//! Renewing a job's lease while the job runs.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use precomp_builder::Cancel;
use precomp_http::artifacts::ArtifactClient;
use precomp_http::Error as ClientError;

use crate::error::{Result, WorkerError};
use crate::Observer;

/// Renews a job's lease every third of its length (on a fixed cadence, each renewal given
/// that long to be answered) on its own thread while the job runs.
/// When the mirror refuses a renewal (the lease was lost or the job closed meanwhile) it
/// cancels the job's handle, so its builds stop, and [`Heartbeat::refused`] and
/// [`Heartbeat::stop`] say why.
///
/// The worker's own result closes the job too: a renewal sent while that result is being
/// reported may be refused because of it. So the worker asks [`Heartbeat::refused`] when its
/// work is done, before reporting; a refusal after that is no lost lease when the report
/// went through.
pub struct Heartbeat {
    stop: mpsc::Sender<()>,
    refusal: Arc<Mutex<Option<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Heartbeat {
    /// Starts renewing `job`'s lease of `lease_seconds` on the mirror at `base_url`.
    pub fn start(
        base_url: &str,
        token: &str,
        job: u64,
        lease_seconds: u64,
        cancel: Cancel,
        observer: Arc<dyn Observer>,
    ) -> Result<Self> {
        let interval = Duration::from_millis(lease_seconds * 1000 / 3);
        // An answer later than the interval is as good as none: by then the next renewal is
        // due. Renewals are sent on a fixed cadence from the start, not an interval after the
        // previous answer, so that one renewal that times out still leaves another before the
        // lease ends (sent at 2/3 of it, not at its end).
        let client = ArtifactClient::with_timeout(base_url, Some(token.to_string()), interval)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| WorkerError::Start {
                what: "the heartbeat's HTTP client",
                source,
            })?;
        let (stop, stopped) = mpsc::channel::<()>();
        let refusal = Arc::new(Mutex::new(None));
        let refused = refusal.clone();
        let mut due = Instant::now() + interval;
        let thread = std::thread::spawn(move || loop {
            match stopped.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            // The next one is due an interval after this one was, however long this takes
            // (a renewal that took longer than its due time is followed at once by the next).
            due += interval;
            match runtime.block_on(client.heartbeat(job, None)) {
                Ok(renewed) => {
                    tracing::debug!(job, expires = renewed.lease_expires_at, "lease renewed")
                }
                // Lost (another worker has it) or closed: nothing more to renew.
                Err(ClientError::Refused {
                    status: 409,
                    message,
                    ..
                }) => {
                    // Recorded before the job is cancelled: a job that stops for it finds it.
                    *refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
                    cancel.cancel(format!(
                        "the mirror ended the lease of job {job}: {message}"
                    ));
                    return;
                }
                // Transient: the next beat may get through before the lease ends.
                Err(e) => observer.note(&format!("warning: heartbeat of job {job}: {e}")),
            }
        });
        Ok(Heartbeat {
            stop,
            refusal,
            thread,
        })
    }

    /// The 409 message if the mirror has refused a renewal so far (the lease was lost or the
    /// job closed); the lease is renewed on meanwhile if not.
    pub fn refused(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops renewing; the 409 message if the lease was lost or the job closed meanwhile.
    pub fn stop(self) -> Option<String> {
        let _ = self.stop.send(());
        let refusal = self.refusal.clone();
        let _ = self.thread.join();
        let refused = refusal.lock().unwrap_or_else(|e| e.into_inner()).clone();
        refused
    }
}
