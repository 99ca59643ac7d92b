//! Cancelling runs from another thread: [`Cancel`] is a shared flag with a reason, which
//! [`Sandbox::run_cancellable`](crate::Sandbox::run_cancellable) polls while it waits, killing
//! the whole sandbox when it is set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// A cancellation handle: cheap to clone, every clone sees the same state. Once cancelled it
/// stays cancelled; the first reason given is kept.
///
/// A handle made by [`Cancel::child`] is also cancelled when its parent is (one handle per
/// job under one per process, say), while cancelling the child leaves the parent alone.
#[derive(Clone, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    reason: OnceLock<String>,
    parent: Option<Cancel>,
}

impl Cancel {
    /// A handle nobody has cancelled yet (and never will, unless a clone of it is cancelled):
    /// what callers that do not cancel pass.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// A handle cancelled when this one is, or when it is cancelled itself.
    pub fn child(&self) -> Cancel {
        Cancel {
            inner: Arc::new(Inner {
                parent: Some(self.clone()),
                ..Inner::default()
            }),
        }
    }

    /// Cancels: runs watching this handle (or a child of it) kill their sandboxes and nothing
    /// new starts. `reason` says why (`"the lease was lost"`, `"SIGTERM"`); only the first
    /// reason is kept. Returns whether this call was the one that cancelled it. Allocates and
    /// takes no lock a signal handler could hold, but is not async-signal-safe: call it from
    /// a thread (e.g. one that waits for the signal), not from a signal handler.
    pub fn cancel(&self, reason: impl Into<String>) -> bool {
        // The reason first, so that whoever sees the flag also finds the reason.
        let first = self.inner.reason.set(reason.into()).is_ok();
        self.inner.cancelled.store(true, Ordering::Release);
        first
    }

    /// Whether this handle or one of its parents was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
            || self.inner.parent.as_ref().is_some_and(Cancel::is_cancelled)
    }

    /// Why it was cancelled (its own reason before a parent's); `None` while it is not.
    pub fn reason(&self) -> Option<String> {
        if self.inner.cancelled.load(Ordering::Acquire) {
            return self.inner.reason.get().cloned();
        }
        self.inner.parent.as_ref().and_then(Cancel::reason)
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason() {
            Some(reason) => write!(f, "Cancel(cancelled: {reason:?})"),
            None => f.write_str("Cancel(not cancelled)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_state_and_the_first_reason_wins() {
        let cancel = Cancel::new();
        let clone = cancel.clone();
        assert!(!clone.is_cancelled());
        assert_eq!(clone.reason(), None);
        assert!(cancel.cancel("lease lost"));
        assert!(!clone.cancel("SIGTERM"));
        assert!(clone.is_cancelled());
        assert_eq!(clone.reason().as_deref(), Some("lease lost"));
        assert_eq!(format!("{clone:?}"), "Cancel(cancelled: \"lease lost\")");
    }

    #[test]
    fn a_child_follows_its_parent_but_not_the_other_way() {
        let parent = Cancel::new();
        let job = parent.child();
        let other_job = parent.child();
        job.cancel("lease lost");
        assert!(job.is_cancelled());
        assert!(!parent.is_cancelled());
        assert!(!other_job.is_cancelled());

        parent.cancel("SIGTERM");
        assert!(other_job.is_cancelled());
        assert_eq!(other_job.reason().as_deref(), Some("SIGTERM"));
        // Its own reason comes first.
        assert_eq!(job.reason().as_deref(), Some("lease lost"));
    }

    /// A real sandbox (bwrap, host root): a tree of sleepers — children, one in its own
    /// session, one ignoring SIGTERM — is killed within a fraction of a second of the cancel,
    /// and none is left once the run returns.
    #[test]
    fn a_cancelled_run_is_killed_promptly_with_every_process() {
        use crate::{scratch_dir, Root, Sandbox, Spec, Status};
        use std::time::{Duration, Instant};

        let out = scratch_dir("precomp-cancel-test-").unwrap();
        let marker = format!("5{}.25", std::process::id() % 100_000);
        let script = format!(
            "sleep {m} & (setsid sleep {m} &) ; sh -c 'trap \"\" TERM HUP; sleep {m}' & sleep {m}",
            m = marker
        );
        let spec = Spec::build(Root::Host, out.path(), ["sh", "-c", &script]);
        let sandbox = Sandbox::new().expect("bwrap: apt-get install bubblewrap");
        let cancel = Cancel::new();
        let run = {
            let cancel = cancel.clone();
            std::thread::spawn(move || sandbox.run_cancellable(&spec, &cancel))
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while sleepers(&marker) < 4 {
            assert!(Instant::now() < deadline, "the sleepers never started");
            assert!(!run.is_finished(), "the run ended early: {:?}", run.join());
            std::thread::sleep(Duration::from_millis(10));
        }
        let cancelled = Instant::now();
        cancel.cancel("test says stop");
        let outcome = run.join().unwrap().unwrap();
        let took = cancelled.elapsed();
        assert_eq!(
            sleepers(&marker),
            0,
            "sandbox processes survived the cancel"
        );
        assert_eq!(
            outcome.status,
            Status::Cancelled {
                reason: "test says stop".into()
            }
        );
        assert_eq!(outcome.status.exit_code(), 130);
        assert!(took < Duration::from_millis(500), "took {took:?}");

        // Cancelled before it starts: nothing runs.
        let spec = Spec::build(Root::Host, out.path(), ["sleep", &marker]);
        let outcome = Sandbox::new()
            .unwrap()
            .run_cancellable(&spec, &cancel)
            .unwrap();
        assert!(matches!(outcome.status, Status::Cancelled { .. }));
        assert_eq!(sleepers(&marker), 0);
    }

    /// Cancelled while bwrap is still setting up (before it reports the namespace's init):
    /// the kill waits for the init, so nothing survives bwrap. Each round cancels a little
    /// later after the start.
    #[test]
    fn a_run_cancelled_as_it_starts_leaves_nothing_behind() {
        use crate::{scratch_dir, Root, Sandbox, Spec, Status};
        use std::time::{Duration, Instant};

        let out = scratch_dir("precomp-cancel-test-").unwrap();
        let marker = format!("6{}.75", std::process::id() % 100_000);
        let sandbox = Sandbox::new().expect("bwrap: apt-get install bubblewrap");
        for delay_us in [0, 200, 500, 1000, 2000, 4000, 8000] {
            let spec = Spec::build(Root::Host, out.path(), ["sleep", &marker]);
            let cancel = Cancel::new();
            let run = {
                let (sandbox, cancel) = (sandbox.clone(), cancel.clone());
                std::thread::spawn(move || sandbox.run_cancellable(&spec, &cancel))
            };
            std::thread::sleep(Duration::from_micros(delay_us));
            let cancelled = Instant::now();
            cancel.cancel("stop");
            let outcome = run.join().unwrap().unwrap();
            assert_eq!(
                outcome.status,
                Status::Cancelled {
                    reason: "stop".into()
                },
                "after {delay_us} µs"
            );
            assert!(
                cancelled.elapsed() < Duration::from_secs(1),
                "after {delay_us} µs"
            );
            assert_eq!(
                sleepers(&marker),
                0,
                "a sleeper survived (after {delay_us} µs)"
            );
        }
    }

    /// Processes of this host running `sleep MARKER`.
    fn sleepers(marker: &str) -> usize {
        let mut count = 0;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if text.starts_with("sleep") && text.contains(marker) {
                    count += 1;
                }
            }
        }
        count
    }
}
