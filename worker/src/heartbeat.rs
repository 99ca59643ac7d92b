//! Renewing a job's lease while the job runs.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use precomp_builder::Cancel;
use precomp_http::artifacts::ArtifactClient;
use precomp_http::Error as ClientError;

use crate::error::{Result, WorkerError};
use crate::Observer;

/// Renews a job's lease every third of its length on its own thread while the job runs.
/// When the mirror refuses a renewal (the lease was lost or the job closed meanwhile) it
/// cancels the job's handle, so its builds stop, and [`Heartbeat::stop`] says why.
pub struct Heartbeat {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Option<String>>,
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
        // An answer later than the interval is as good as none.
        let client = ArtifactClient::with_timeout(base_url, Some(token.to_string()), interval)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| WorkerError::Start {
                what: "the heartbeat's HTTP client",
                source,
            })?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || loop {
            match stopped.recv_timeout(interval) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return None,
            }
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
                    cancel.cancel(format!(
                        "the mirror ended the lease of job {job}: {message}"
                    ));
                    return Some(message);
                }
                // Transient: the next beat may get through before the lease ends.
                Err(e) => observer.note(&format!("warning: heartbeat of job {job}: {e}")),
            }
        });
        Ok(Heartbeat { stop, thread })
    }

    /// Stops renewing; the 409 message if the lease was lost or the job closed meanwhile.
    pub fn stop(self) -> Option<String> {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or(None)
    }
}
