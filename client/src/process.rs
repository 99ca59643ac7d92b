//! Child processes with a time limit.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `command` to completion with stdin closed, stdout and stderr captured; kills it and
/// fails with `TimedOut` after `limit`.
pub fn output_within(mut command: Command, limit: Duration) -> std::io::Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let readers = [
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    ]
    .map(|reader| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut reader) = reader {
                // Bounded: a runaway child cannot fill memory.
                let _ = reader.by_ref().take(16 * 1024 * 1024).read_to_end(&mut buf);
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
            }
            buf
        })
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("still running after {} s; killed", limit.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let [stdout, stderr] = readers.map(|r| r.join().unwrap_or_default());
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// A child that says, by printing a marker line on stdout, that its answer is ready before it
/// has finished ([`spawn_marked`]): the caller goes on at once, and what the child prints
/// after the marker is collected in the background ([`Tail`]).
pub struct Marked {
    events: std::sync::mpsc::Receiver<Event>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    tail: Tail,
}

/// How a [`Marked`] child got on.
#[derive(Debug)]
pub enum Reached {
    /// It printed the marker line and is still running (or finishing).
    Marker(Tail),
    /// It exited without printing the marker.
    Exited {
        status: std::process::ExitStatus,
        stderr: Vec<u8>,
    },
}

enum Event {
    Marker,
    Eof,
    Exited(std::process::ExitStatus),
    TimedOut,
    Failed(std::io::Error),
}

/// What a [`Marked`] child printed on stdout after its marker line, once it exited; and a way
/// to stop it when that is not wanted any more. Clones share one child; dropping the last
/// clone stops the child if it still runs.
#[derive(Clone)]
pub struct Tail(std::sync::Arc<TailHandle>);

struct TailHandle {
    shared: std::sync::Arc<TailShared>,
    running: Running,
}

/// The child and what is kept for it, until it is reaped (by its watcher or by a stop):
/// only ever waited for under this lock, so a kill never reaches another process.
type Running = std::sync::Arc<std::sync::Mutex<Option<(std::process::Child, Box<dyn Send>)>>>;

#[derive(Default)]
struct TailShared {
    /// `None` until stdout closed.
    text: std::sync::Mutex<Option<Vec<u8>>>,
    closed: std::sync::Condvar,
}

impl Drop for TailHandle {
    fn drop(&mut self) {
        stop(&self.running);
    }
}

/// Kills and reaps the child if it still runs, and drops what was kept for it.
fn stop(running: &Running) {
    let taken = running.lock().map(|mut running| running.take());
    if let Ok(Some((mut child, keep))) = taken {
        let _ = child.kill();
        let _ = child.wait();
        drop(keep);
    }
}

/// Two tails are equal when they are one child's.
impl PartialEq for Tail {
    fn eq(&self, other: &Tail) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Tail {}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tail")
    }
}

impl Tail {
    /// A tail that is already known (no child behind it).
    pub fn ready(text: Option<String>) -> Tail {
        let shared = TailShared::default();
        *shared.text.lock().expect("tail") = Some(text.map(String::into_bytes).unwrap_or_default());
        Tail(std::sync::Arc::new(TailHandle {
            shared: std::sync::Arc::new(shared),
            running: Running::default(),
        }))
    }

    /// Waits for the child's stdout to close (at the latest when it is killed at its time
    /// limit), and returns what it printed after the marker.
    pub fn wait(&self) -> String {
        let shared = &self.0.shared;
        let mut text = shared.text.lock().expect("tail");
        while text.is_none() {
            text = shared.closed.wait(text).expect("tail");
        }
        String::from_utf8_lossy(text.as_deref().unwrap_or_default()).into_owned()
    }

    /// Stops the child (killed and reaped) if it is still running: what it would print is
    /// not wanted.
    pub fn stop(&self) {
        stop(&self.0.running);
    }
}

/// Starts `command` (stdin closed, stdout and stderr captured); [`Marked::wait`] returns as
/// soon as it prints a line equal to `marker` on stdout, or when it exits. It is killed after
/// `limit`, or when its [`Tail`] is stopped or dropped. `keep` (e.g. the directory of files
/// it reads) is dropped once it has ended.
pub fn spawn_marked(
    mut command: Command,
    marker: String,
    limit: Duration,
    keep: Box<dyn Send>,
) -> std::io::Result<Marked> {
    use std::io::BufRead;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (events, received) = std::sync::mpsc::channel();
    let shared = std::sync::Arc::new(TailShared::default());

    let stdout = child.stdout.take();
    let (sender, tail_shared) = (events.clone(), shared.clone());
    std::thread::spawn(move || {
        let mut tail = Vec::new();
        if let Some(stdout) = stdout {
            // Bounded: a runaway child cannot fill memory.
            let mut reader = std::io::BufReader::new(stdout.take(OUTPUT_LIMIT));
            let mut line = Vec::new();
            let mut seen = false;
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if seen => tail.extend_from_slice(&line),
                    Ok(_) => {
                        if line.strip_suffix(b"\n").unwrap_or(&line) == marker.as_bytes() {
                            seen = true;
                            let _ = sender.send(Event::Marker);
                        }
                    }
                }
            }
            let _ = std::io::copy(reader.get_mut().get_mut(), &mut std::io::sink());
        }
        *tail_shared.text.lock().expect("tail") = Some(tail);
        tail_shared.closed.notify_all();
        let _ = sender.send(Event::Eof);
    });

    let stderr = child.stderr.take().map(|stderr| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut stderr = stderr;
            let _ = stderr.by_ref().take(OUTPUT_LIMIT).read_to_end(&mut buf);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            buf
        })
    });

    let running: Running = std::sync::Arc::new(std::sync::Mutex::new(Some((child, keep))));
    let watched = running.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        loop {
            {
                let Ok(mut guard) = watched.lock() else {
                    return;
                };
                let Some((child, _)) = guard.as_mut() else {
                    // Stopped (killed and reaped) by its tail.
                    let _ = events.send(Event::Failed(std::io::Error::other("stopped")));
                    return;
                };
                let event = match child.try_wait() {
                    Ok(Some(status)) => Some(Event::Exited(status)),
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        Some(Event::TimedOut)
                    }
                    Ok(None) => None,
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        Some(Event::Failed(e))
                    }
                };
                if let Some(event) = event {
                    // Reaped: what was kept for it goes.
                    guard.take();
                    let _ = events.send(event);
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });

    Ok(Marked {
        events: received,
        stderr,
        tail: Tail(std::sync::Arc::new(TailHandle { shared, running })),
    })
}

/// At most this much of a child's stdout and of its stderr is kept.
const OUTPUT_LIMIT: u64 = 16 * 1024 * 1024;

impl Marked {
    /// Waits for the marker line or the child's exit, whichever comes first; fails with
    /// `TimedOut` when it was killed at its time limit.
    pub fn wait(mut self) -> std::io::Result<Reached> {
        let (mut status, mut eof) = (None, false);
        loop {
            match self.events.recv() {
                Ok(Event::Marker) => return Ok(Reached::Marker(self.tail)),
                Ok(Event::Eof) => eof = true,
                Ok(Event::Exited(exit)) => status = Some(exit),
                Ok(Event::TimedOut) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "still running at its time limit; killed",
                    ))
                }
                Ok(Event::Failed(e)) => return Err(e),
                Err(_) => return Err(std::io::Error::other("the child's watcher stopped")),
            }
            // Exited without the marker: stdout is read to its end first (the marker may be
            // in what is left of it).
            if let (Some(status), true) = (status, eof) {
                let stderr = self
                    .stderr
                    .take()
                    .and_then(|reader| reader.join().ok())
                    .unwrap_or_default();
                return Ok(Reached::Exited { status, stderr });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        command
    }

    fn marked(script: &str) -> Marked {
        spawn_marked(
            sh(script),
            "ANSWERED".into(),
            Duration::from_secs(30),
            Box::new(()),
        )
        .unwrap()
    }

    #[test]
    fn the_marker_returns_before_the_child_ends_and_its_tail_follows() {
        let started = Instant::now();
        let reached = marked("echo noise; echo ANSWERED; sleep 1; echo config; echo more")
            .wait()
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "waited for the child's end"
        );
        let Reached::Marker(tail) = reached else {
            panic!("no marker: {reached:?}")
        };
        // What came before the marker is not in the tail.
        assert_eq!(tail.wait(), "config\nmore\n");
        assert!(started.elapsed() >= Duration::from_secs(1));
    }

    #[test]
    fn a_stopped_tail_kills_the_child_and_drops_what_was_kept() {
        let kept = std::sync::Arc::new(());
        let child = spawn_marked(
            sh("echo ANSWERED; exec sleep 30"),
            "ANSWERED".into(),
            Duration::from_secs(60),
            Box::new(kept.clone()),
        )
        .unwrap();
        let Reached::Marker(tail) = child.wait().unwrap() else {
            panic!("no marker")
        };
        let started = Instant::now();
        tail.stop();
        assert_eq!(std::sync::Arc::strong_count(&kept), 1, "kept until stopped");
        assert_eq!(tail.wait(), "");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn without_the_marker_the_exit_status_and_stderr_are_returned() {
        // A line that only contains the marker is no marker.
        match marked("echo 'not ANSWERED'; echo oops >&2; exit 3")
            .wait()
            .unwrap()
        {
            Reached::Exited { status, stderr } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr, b"oops\n");
            }
            other => panic!("{other:?}"),
        }
        // The marker as the last thing the child prints, just before it exits, is seen.
        assert!(matches!(
            marked("printf 'ANSWERED\\n'; exit 0").wait().unwrap(),
            Reached::Marker(_)
        ));
    }

    #[test]
    fn a_child_past_its_limit_is_killed() {
        let child = spawn_marked(
            sh("sleep 30"),
            "ANSWERED".into(),
            Duration::from_millis(200),
            Box::new(()),
        )
        .unwrap();
        let error = child.wait().unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    }
}
