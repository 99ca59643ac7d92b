//! Stopping a worker on SIGTERM or SIGINT.

use anyhow::Context as _;
use precomp_builder::Cancel;

/// Cancels `shutdown` on the first SIGTERM or SIGINT (a thread waits for them, so the worker
/// finishes its job's clean-up: the job is released); exits the process at once, 130, on a
/// second. `note` says what happens, for people.
pub fn cancel_on_signals(
    shutdown: &Cancel,
    note: impl Fn(&str) + Send + 'static,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal watcher")?;
    // Registered before this returns: a signal from now on is seen.
    let (mut term, mut interrupt) = runtime
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })
        .context("listening for SIGTERM and SIGINT")?;
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
        .context("starting the signal watcher")?;
    Ok(())
}
