//! Stopping a worker on SIGTERM or SIGINT.

use precomp_builder::Cancel;

use crate::error::{Result, WorkerError};

/// Cancels `shutdown` on the first SIGTERM or SIGINT (a thread waits for them, so the worker
/// finishes its job's clean-up: the job is released); exits the process at once, 130, on a
/// second. `note` says what happens, for people.
pub fn cancel_on_signals(shutdown: &Cancel, note: impl Fn(&str) + Send + 'static) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| WorkerError::Start {
            what: "the signal watcher",
            source,
        })?;
    // Registered before this returns: a signal from now on is seen.
    let (mut term, mut interrupt) = runtime
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })
        .map_err(|source| WorkerError::Signals { source })?;
    let shutdown = shutdown.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut first = true;
                loop {
                    let name = tokio::select! {
                        _ = term.recv() => "SIGTERM",
                        _ = interrupt.recv() => "SIGINT",
                    };
                    if !first {
                        note(&format!("{name} again: exiting now"));
                        std::process::exit(130);
                    }
                    first = false;
                    note(&format!(
                        "{name}: stopping the current job and releasing it (again to exit now)"
                    ));
                    shutdown.cancel(format!("the worker received {name}"));
                }
            })
        })
        .map_err(|source| WorkerError::Start {
            what: "the signal watcher",
            source,
        })?;
    Ok(())
}
