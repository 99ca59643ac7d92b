//! Running a [`Spec`]: bwrap under the sandbox's own uid, with its limits, watched until it
//! ends or is killed.

use std::ffi::{CString, OsString};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::bwrap;
use crate::cancel::Cancel;
use crate::cgroup::{Cgroup, Enforcement};
use crate::error::{Error, Result};
use crate::spec::{Root, Spec, Stdio};
use crate::tree;

/// The longest the watcher sleeps between looks at the sandbox (exit, cancel, limits).
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long a kill waits for bwrap to report the namespace's init (see the watcher loop).
const INIT_REPORT_GRACE: Duration = Duration::from_secs(2);

/// The host uid and gid a sandbox runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

impl Identity {
    /// `nobody:nogroup`: what the sandbox runs as when precomp runs as root.
    pub const NOBODY: Identity = Identity {
        uid: 65534,
        gid: 65534,
    };

    /// This process's real uid and gid.
    pub fn current() -> Identity {
        // SAFETY: getuid and getgid cannot fail.
        unsafe {
            Identity {
                uid: libc::getuid(),
                gid: libc::getgid(),
            }
        }
    }
}

/// How a sandboxed command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// The command exited with this code (128 + N when it was killed by signal N, as in a
    /// shell).
    Exited(i32),
    /// It ran past the wall-time limit; every process of the sandbox was killed.
    TimedOut(Duration),
    /// The output directory grew past its limit; every process of the sandbox was killed (or,
    /// if it was found after the command ended, the command's own status is dropped).
    OutputTooLarge { bytes: u64 },
    /// bwrap itself was killed by this signal (for example by the kernel's OOM killer).
    Killed(i32),
    /// The run was cancelled ([`Sandbox::run_cancellable`]); every process of the sandbox was
    /// killed. `reason` is the one given to [`Cancel::cancel`].
    Cancelled { reason: String },
}

impl Status {
    pub fn success(&self) -> bool {
        *self == Status::Exited(0)
    }

    /// The exit code a CLI should end with: the command's own, 124 on time-out (as
    /// `timeout(1)`), 125 when the output was too large, 128 + N for a signal, 130 (as for
    /// SIGINT) when cancelled.
    pub fn exit_code(&self) -> i32 {
        match self {
            Status::Exited(code) => *code,
            Status::TimedOut(_) => 124,
            Status::OutputTooLarge { .. } => 125,
            Status::Killed(signal) => 128 + signal,
            Status::Cancelled { .. } => 128 + libc::SIGINT,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Exited(code) => write!(f, "exit status {code}"),
            Status::TimedOut(after) => write!(
                f,
                "timed out after {:.1} s; every process of the sandbox was killed",
                after.as_secs_f64()
            ),
            Status::OutputTooLarge { bytes } => write!(
                f,
                "the output directory reached {bytes} bytes, over its limit; the sandbox was killed"
            ),
            Status::Killed(signal) => write!(f, "bwrap was killed by signal {signal}"),
            Status::Cancelled { reason } => write!(
                f,
                "cancelled ({reason}); every process of the sandbox was killed"
            ),
        }
    }
}

/// Captured stdout or stderr: everything when it fits, else the first and last halves of the
/// limit with a marker between them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captured {
    pub bytes: Vec<u8>,
    /// How many bytes the command wrote in all.
    pub total: u64,
}

impl Captured {
    pub fn truncated(&self) -> bool {
        self.total > self.bytes.len() as u64
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: Status,
    pub stdout: Captured,
    pub stderr: Captured,
    pub elapsed: Duration,
    /// Peak resident set size of the largest process of the sandbox.
    pub max_rss_bytes: u64,
    /// Total size of the regular files in the output directory after the run.
    pub output_bytes: u64,
    /// How memory and processes were limited.
    pub enforcement: Enforcement,
    /// cgroup only: processes killed by the memory limit.
    pub oom_kills: u64,
    /// cgroup only: forks refused by the process limit.
    pub pids_refused: u64,
}

impl Outcome {
    /// stdout and stderr as text, for error messages.
    pub fn output_text(&self) -> String {
        format!("{}{}", self.stdout.text(), self.stderr.text())
    }
}

/// The sandbox runner: where bwrap is, which uid builds run as, how limits are enforced.
#[derive(Clone, Debug)]
pub struct Sandbox {
    bwrap: PathBuf,
    identity: Identity,
    enforcement: Enforcement,
}

impl Sandbox {
    /// Finds bwrap (an error with the apt-get line if it is missing), picks the identity
    /// (`nobody` when running as root, this user otherwise) and the limit enforcement.
    pub fn new() -> Result<Sandbox> {
        let bwrap = bwrap::find()?;
        let identity = if is_root() {
            Identity::NOBODY
        } else {
            Identity::current()
        };
        let enforcement = Enforcement::detect();
        tracing::debug!(bwrap = %bwrap.display(), ?identity, %enforcement, "sandbox");
        Ok(Sandbox {
            bwrap,
            identity,
            enforcement,
        })
    }

    /// Runs builds as another uid/gid (root only): give concurrent builds distinct uids so
    /// that `RLIMIT_NPROC`, which counts per uid, does not add them up.
    pub fn with_identity(mut self, identity: Identity) -> Result<Sandbox> {
        if identity != Identity::current() && !is_root() {
            return Err(Error::InvalidSpec(format!(
                "only root can run the sandbox as uid {}",
                identity.uid
            )));
        }
        if identity.uid == 0 {
            return Err(Error::InvalidSpec(
                "the sandbox never runs as uid 0: the kernel does not apply RLIMIT_NPROC to \
                 root, and root owns the host's files"
                    .into(),
            ));
        }
        self.identity = identity;
        Ok(self)
    }

    /// Whether the sandbox user can read `path` and search every directory above it: where a
    /// caller may put build directories (the error names the first directory in the way).
    pub fn check_readable(&self, path: &Path) -> Result<()> {
        check_access(path, self.identity, Access::Read)
    }

    /// Forces rlimits even where cgroups are usable.
    pub fn without_cgroups(mut self) -> Sandbox {
        self.enforcement = Enforcement::Rlimits {
            reason: "cgroups disabled by the caller".into(),
        };
        self
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    pub fn bwrap(&self) -> &Path {
        &self.bwrap
    }

    /// Runs the spec's command to its end (or its limits) and reports how it went. Blocks; the
    /// sandbox is tied to the calling thread (`--die-with-parent` fires when it exits).
    pub fn run(&self, spec: &Spec) -> Result<Outcome> {
        self.run_cancellable(spec, &Cancel::new())
    }

    /// [`Sandbox::run`], also watching `cancel`: once it is cancelled (before or during the
    /// run), every process of the sandbox is killed as on a time-out — within the watcher's
    /// poll interval (at most 50 ms) — reaped, and the status is [`Status::Cancelled`]. The
    /// output directory is left as the killed command left it: the caller removes it.
    pub fn run_cancellable(&self, spec: &Spec, cancel: &Cancel) -> Result<Outcome> {
        let started = Instant::now();
        let drop_identity = is_root() && self.identity != Identity::current();
        self.prepare(spec, drop_identity)?;
        if let Some(reason) = cancel.reason() {
            // Nothing started.
            return Ok(Outcome {
                status: Status::Cancelled { reason },
                stdout: Captured::default(),
                stderr: Captured::default(),
                elapsed: started.elapsed(),
                max_rss_bytes: 0,
                output_bytes: 0,
                enforcement: self.enforcement.clone(),
                oom_kills: 0,
                pids_refused: 0,
            });
        }

        let (status_read, status_write) = pipe()?;
        let args = bwrap::arguments(spec, status_write.as_raw_fd())?;
        tracing::debug!(command = %bwrap::display(&self.bwrap, &args), "sandbox run");

        let cgroup = match &self.enforcement {
            Enforcement::Cgroup { parent } => match Cgroup::create(parent, &spec.limits) {
                Ok(cgroup) => Some(cgroup),
                Err(e) => {
                    tracing::warn!(parent = %parent.display(), error = %e, "cannot create a cgroup; using rlimits");
                    None
                }
            },
            Enforcement::Rlimits { .. } => None,
        };
        let enforcement = match &cgroup {
            Some(_) => self.enforcement.clone(),
            None => match &self.enforcement {
                Enforcement::Cgroup { .. } => Enforcement::Rlimits {
                    reason: "cgroup creation failed".into(),
                },
                other => other.clone(),
            },
        };
        let procs = cgroup
            .as_ref()
            .map(|c| c.procs())
            .transpose()
            .map_err(|e| Error::Sys {
                context: "opening cgroup.procs".into(),
                source: e,
            })?;

        let mut command = Command::new(&self.bwrap);
        command.args(&args).env_clear();
        match spec.stdio {
            Stdio::Capture => {
                command
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
            }
            Stdio::Inherit => {
                command
                    .stdin(std::process::Stdio::inherit())
                    .stdout(std::process::Stdio::inherit())
                    .stderr(std::process::Stdio::inherit());
            }
        }
        let setup = ChildSetup {
            // SAFETY: getpid has no preconditions.
            parent: unsafe { libc::getpid() },
            procs_fd: procs.as_ref().map(|f| f.as_raw_fd()),
            status_fd: status_write.as_raw_fd(),
            rlimits: rlimits(spec, self.identity),
            identity: drop_identity.then_some(self.identity),
        };
        // SAFETY: the closure only makes async-signal-safe system calls on values prepared
        // before the fork; it allocates nothing.
        unsafe {
            command.pre_exec(move || setup.apply());
        }
        let mut child = command.spawn().map_err(|e| Error::Spawn {
            program: self.bwrap.display().to_string(),
            source: e,
        })?;
        drop(status_write);
        drop(procs);
        let pid = child.id() as libc::pid_t;

        let limit = spec.limits.captured_bytes;
        let stdout = child.stdout.take().map(|s| capture(s, limit));
        let stderr = child.stderr.take().map(|s| capture(s, limit));
        let (status_tx, status_rx) = mpsc::channel();
        let status_reader = std::thread::spawn(move || read_status(status_read, status_tx));

        let mut watch = Watch {
            pid,
            init: None,
            started: false,
            cgroup: cgroup.as_ref(),
        };
        let deadline = started + spec.limits.wall_time;
        let mut poll = Duration::from_millis(2);
        let mut next_output_check = Instant::now() + Duration::from_millis(500);
        let mut verdict: Option<Status> = None;
        // When the verdict (cancelled, timed out, output too large) was reached.
        let mut condemned: Option<Instant> = None;
        let (wait_status, rusage) = loop {
            if let Some(done) = reap(pid, libc::WNOHANG)? {
                break done;
            }
            while let Ok(init) = status_rx.try_recv() {
                watch.adopt_init(init);
            }
            let now = Instant::now();
            if verdict.is_none() {
                if let Some(reason) = cancel.reason() {
                    tracing::info!(pid, %reason, "sandbox cancelled; killing it");
                    verdict = Some(Status::Cancelled { reason });
                } else if now >= deadline {
                    tracing::info!(pid, "sandbox timed out; killing it");
                    verdict = Some(Status::TimedOut(now - started));
                } else if now >= next_output_check {
                    let checked = Instant::now();
                    let (bytes, _) = tree::usage(&spec.output.host, spec.limits.output_bytes + 1);
                    if bytes > spec.limits.output_bytes {
                        tracing::info!(pid, bytes, "sandbox output too large; killing it");
                        verdict = Some(Status::OutputTooLarge { bytes });
                    }
                    // Walk at most ~10% of the time.
                    next_output_check =
                        Instant::now() + (checked.elapsed() * 10).max(Duration::from_millis(500));
                }
                if verdict.is_some() {
                    condemned = Some(now);
                }
            }
            if let Some(since) = condemned {
                // Kill through the namespace's init once bwrap has reported it. Killing bwrap
                // alone before that can leave the init running: its `--die-with-parent` is
                // set up by the init itself once it runs (and reset when it changes uid).
                // bwrap reports it within milliseconds; give up waiting after a while (a
                // bwrap stuck in its setup has no namespace to leave behind).
                if watch.started || now - since >= INIT_REPORT_GRACE {
                    watch.kill_all();
                    break reap(pid, 0)?.expect("blocking wait4 returns the child");
                }
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            std::thread::sleep(poll.min(deadline.saturating_duration_since(now)));
            poll = (poll * 2).min(POLL_INTERVAL);
        };
        // bwrap is gone; its pid namespace dies with its init. Make sure nothing is left.
        while let Ok(init) = status_rx.try_recv() {
            watch.adopt_init(init);
        }
        watch.ensure_ended();
        let started_command = watch.started;
        // Every process that held the pipes is dead now, so the readers reach EOF.
        let stdout = stdout.map(join).unwrap_or_default();
        let stderr = stderr.map(join).unwrap_or_default();
        let exit_code = status_reader.join().unwrap_or(None);
        drop(child);

        let (oom_kills, pids_refused) = cgroup.as_ref().map(|c| c.events()).unwrap_or((0, 0));
        drop(cgroup);
        let output_bytes = sanitize_output(&spec.output.host);

        let status = match verdict {
            Some(status) => status,
            None if output_bytes > spec.limits.output_bytes => Status::OutputTooLarge {
                bytes: output_bytes,
            },
            None => match exit_code {
                Some(code) => Status::Exited(code),
                None if libc::WIFSIGNALED(wait_status) => {
                    Status::Killed(libc::WTERMSIG(wait_status))
                }
                None => {
                    let text = stderr.text();
                    let message = match text.trim() {
                        "" => format!(
                            "bwrap exited with status {} before running the command (its message is above)",
                            libc::WEXITSTATUS(wait_status)
                        ),
                        message => message.to_string(),
                    };
                    // bwrap reports its init before the init has set the namespace up (mounts,
                    // hostname), so a reported init does not mean the setup succeeded: bwrap says
                    // `execvp CMD` when the command itself could not be executed. Without its
                    // message (stderr not captured), a reported init is the best hint.
                    let exec_failed = if text.trim().is_empty() {
                        started_command
                    } else {
                        text.contains("execvp")
                    };
                    return Err(if exec_failed {
                        Error::Exec {
                            command: spec.command[0].to_string_lossy().into_owned(),
                            message,
                        }
                    } else {
                        Error::Setup { message }
                    });
                }
            },
        };
        let outcome = Outcome {
            status,
            stdout,
            stderr,
            elapsed: started.elapsed(),
            max_rss_bytes: (rusage.ru_maxrss.max(0) as u64) * 1024,
            output_bytes,
            enforcement,
            oom_kills,
            pids_refused,
        };
        tracing::debug!(status = %outcome.status, elapsed = ?outcome.elapsed, "sandbox ended");
        Ok(outcome)
    }

    /// Checks that the sandbox user can reach what it must, and hands it the output directory.
    fn prepare(&self, spec: &Spec, drop_identity: bool) -> Result<()> {
        spec.validate()?;
        let id = self.identity;
        let root = spec.root.dir();
        for name in bwrap::SYSTEM_DIRS {
            let path = root.join(name);
            if path.is_dir() && !path.is_symlink() {
                check_access(&path, id, Access::Read)?;
            }
        }
        for source in &spec.sources {
            check_access(&source.host, id, Access::Read)?;
        }
        if drop_identity {
            chown_tree(&spec.output.host, id)?;
        }
        check_access(&spec.output.host, id, Access::Write)?;
        if let Root::Image(dir) = &spec.root {
            tracing::trace!(root = %dir.display(), "image root");
        }
        Ok(())
    }
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The processes to kill, and how.
struct Watch<'a> {
    pid: libc::pid_t,
    /// pidfd of the sandbox's init (pid 1 of its pid namespace), once bwrap has reported it.
    init: Option<OwnedFd>,
    /// bwrap reported the init's pid: the namespaces are set up.
    started: bool,
    cgroup: Option<&'a Cgroup>,
}

impl Watch<'_> {
    fn adopt_init(&mut self, init: libc::pid_t) {
        self.started = true;
        if self.init.is_some() {
            return;
        }
        // SAFETY: plain syscall; returns a new descriptor we own, or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, init, 0) } as i32;
        if fd < 0 {
            return; // Already gone.
        }
        // SAFETY: fd is a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The pid is ours to kill only if it is still bwrap's child (not a reused pid).
        let parent = std::fs::read_to_string(format!("/proc/{init}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:").map(|v| v.trim().parse().ok()))
                    .flatten()
            });
        if parent == Some(self.pid) {
            self.init = Some(fd);
        }
    }

    /// SIGKILL to the cgroup, the namespace's init (which takes every process of the
    /// namespace with it) and bwrap.
    fn kill_all(&self) {
        if let Some(cgroup) = self.cgroup {
            cgroup.kill();
        }
        if let Some(init) = &self.init {
            // SAFETY: signal through a pidfd we own.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    init.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
        // SAFETY: `pid` is our unreaped child.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }

    /// After bwrap is reaped: wait until the namespace's init has exited, which the kernel
    /// allows only once every process of the namespace is dead; kill it if it lingers.
    fn ensure_ended(&self) {
        let Some(init) = &self.init else {
            return;
        };
        for attempt in 0..2 {
            let mut poll = libc::pollfd {
                fd: init.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut poll, 1, 5000) } == 1 {
                return;
            }
            if attempt == 0 {
                tracing::warn!("sandbox processes outlived bwrap; killing them");
                self.kill_all();
            }
        }
        tracing::error!("sandbox processes still alive 10 s after bwrap ended");
    }
}

fn reap(pid: libc::pid_t, flags: i32) -> Result<Option<(i32, libc::rusage)>> {
    let mut status = 0;
    // SAFETY: rusage is plain data written by the kernel.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut rusage) };
        if r == pid {
            return Ok(Some((status, rusage)));
        }
        if r == 0 {
            return Ok(None);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::Sys {
                context: format!("waiting for bwrap (pid {pid})"),
                source: error,
            });
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::sys("creating a pipe"));
    }
    // SAFETY: fresh descriptors.
    unsafe { Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

/// Reads bwrap's `--json-status-fd` documents: sends the init's pid, returns the exit code.
/// bwrap closes this descriptor in the sandbox, so the command cannot write to it.
fn read_status(fd: OwnedFd, init: mpsc::Sender<libc::pid_t>) -> Option<i32> {
    let mut file = std::fs::File::from(fd);
    let mut text = String::new();
    let mut exit_code = None;
    let mut handled = 0;
    let mut buf = [0u8; 4096];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        // The documents are tiny: parse them all again, act on the new ones.
        let documents = serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>();
        for (index, value) in documents.map_while(|v| v.ok()).enumerate() {
            if index < handled {
                continue;
            }
            handled += 1;
            if let Some(pid) = value.get("child-pid").and_then(|v| v.as_i64()) {
                let _ = init.send(pid as libc::pid_t);
            }
            if let Some(code) = value.get("exit-code").and_then(|v| v.as_i64()) {
                exit_code = Some(code as i32);
            }
        }
    }
    exit_code
}

fn capture(
    mut source: impl Read + Send + 'static,
    limit: usize,
) -> std::thread::JoinHandle<Captured> {
    std::thread::spawn(move || {
        let half = limit / 2;
        let mut head = Vec::new();
        let mut tail = std::collections::VecDeque::new();
        let mut total = 0u64;
        let mut buf = [0u8; 8192];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            total += n as u64;
            for &b in &buf[..n] {
                if head.len() < limit - half {
                    head.push(b);
                } else {
                    tail.push_back(b);
                    if tail.len() > half {
                        tail.pop_front();
                    }
                }
            }
        }
        let kept = (head.len() + tail.len()) as u64;
        if kept < total {
            head.extend_from_slice(
                format!("\n[... {} bytes dropped ...]\n", total - kept).as_bytes(),
            );
        }
        head.extend(tail);
        Captured { bytes: head, total }
    })
}

fn join(handle: std::thread::JoinHandle<Captured>) -> Captured {
    handle.join().unwrap_or_default()
}

/// After a run: clears set-uid/set-gid bits on the output's files (the sandbox user owns them
/// and could set them) and returns the output's size.
fn sanitize_output(dir: &Path) -> u64 {
    use std::os::unix::fs::PermissionsExt;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(reader) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in reader.flatten() {
            let path = entry.path();
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                bytes += meta.len();
                if meta.mode() & 0o6000 != 0 {
                    tracing::warn!(path = %path.display(), "clearing set-uid/set-gid bits in the sandbox output");
                    let _ = std::fs::set_permissions(
                        &path,
                        std::fs::Permissions::from_mode(meta.mode() & 0o1777),
                    );
                }
            }
        }
    }
    bytes
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// Whether `id` can reach `path` (every parent searchable) and read or write it, by mode bits
/// (no supplementary groups: the sandbox has none). For this process's own identity, the
/// kernel's answer (`access(2)`).
fn check_access(path: &Path, id: Identity, access: Access) -> Result<()> {
    let what = match access {
        Access::Read => "read",
        Access::Write => "written",
    };
    let fail = |reason: String| Error::NotAccessible {
        path: path.to_path_buf(),
        access: what,
        uid: id.uid,
        gid: id.gid,
        reason,
    };
    let absolute = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    if id == Identity::current() && !is_root() {
        let c = CString::new(absolute.as_os_str().as_bytes()).map_err(|e| fail(e.to_string()))?;
        let mode = match access {
            Access::Read => libc::R_OK,
            Access::Write => libc::W_OK | libc::X_OK,
        };
        // SAFETY: reads the NUL-terminated path.
        return if unsafe { libc::access(c.as_ptr(), mode) } == 0 {
            Ok(())
        } else {
            Err(fail(std::io::Error::last_os_error().to_string()))
        };
    }
    let allows = |meta: &std::fs::Metadata, bits: u32| {
        let mode = meta.mode();
        let granted = if meta.uid() == id.uid {
            (mode >> 6) & 7
        } else if meta.gid() == id.gid {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        granted & bits == bits
    };
    let mut ancestor = PathBuf::from("/");
    let parents: Vec<_> = absolute
        .parent()
        .into_iter()
        .flat_map(|p| p.components())
        .collect();
    for component in parents {
        ancestor.push(component);
        let meta = ancestor.metadata().map_err(|e| Error::io(&ancestor, e))?;
        if !allows(&meta, 1) {
            return Err(fail(format!("{} is not searchable", ancestor.display())));
        }
    }
    let meta = absolute.metadata().map_err(|e| Error::io(&absolute, e))?;
    let bits = match (access, meta.is_dir()) {
        (Access::Read, true) => 5,
        (Access::Read, false) => 4,
        (Access::Write, _) => 7,
    };
    if allows(&meta, bits) {
        Ok(())
    } else {
        Err(fail(format!("mode {:o}", meta.mode() & 0o7777)))
    }
}

/// Gives the output tree to the sandbox user (as root), without following links.
fn chown_tree(dir: &Path, id: Identity) -> Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = path.symlink_metadata().map_err(|e| Error::io(&path, e))?;
        if meta.uid() != id.uid || meta.gid() != id.gid {
            std::os::unix::fs::lchown(&path, Some(id.uid), Some(id.gid))
                .map_err(|e| Error::io(&path, e))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(|e| Error::io(&path, e))? {
                stack.push(entry.map_err(|e| Error::io(&path, e))?.path());
            }
        }
    }
    Ok(())
}

/// (resource, value) pairs for the child.
fn rlimits(spec: &Spec, id: Identity) -> [(libc::__rlimit_resource_t, u64); 5] {
    let limits = &spec.limits;
    // RLIMIT_NPROC counts every task of the uid on the host (through each user namespace
    // level): leave room for what that uid already runs.
    let nproc = limits.processes + tasks_of(id.uid);
    [
        (libc::RLIMIT_NPROC, nproc),
        (libc::RLIMIT_DATA, limits.memory_bytes),
        (libc::RLIMIT_FSIZE, limits.file_size_bytes),
        (libc::RLIMIT_NOFILE, limits.open_files),
        (libc::RLIMIT_CORE, 0),
    ]
    .map(|(resource, value)| (resource, value.min(hard_limit(resource))))
}

/// This process's hard limit: a limit can only be lowered without CAP_SYS_RESOURCE (which
/// even root may lack, in containers).
fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    if unsafe { libc::getrlimit(resource, &mut limit) } == 0 {
        limit.rlim_max
    } else {
        u64::MAX
    }
}

/// How many tasks (threads included) `uid` runs on this host now.
fn tasks_of(uid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut tasks = 0;
    for entry in entries.flatten() {
        if !entry.file_name().as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        if field("Uid:") == Some(uid as u64) {
            tasks += field("Threads:").unwrap_or(1);
        }
    }
    tasks
}

/// What the child does between fork and exec. Only async-signal-safe calls.
struct ChildSetup {
    /// This process: bwrap dies with it (see [`ChildSetup::apply`]).
    parent: libc::pid_t,
    procs_fd: Option<i32>,
    status_fd: i32,
    rlimits: [(libc::__rlimit_resource_t, u64); 5],
    identity: Option<Identity>,
}

impl ChildSetup {
    fn apply(&self) -> std::io::Result<()> {
        // SAFETY (whole function): raw system calls on descriptors and values prepared before
        // fork; no allocation, no locks.
        unsafe {
            if let Some(fd) = self.procs_fd {
                // Into the sandbox's cgroup before anything else is forked.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (resource, value) in self.rlimits {
                let limit = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                if libc::setrlimit(resource, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Nothing but stdio and the status pipe crosses into bwrap (and bwrap passes what
            // it inherits on to the command): mark every other descriptor close-on-exec.
            cloexec_from(3, self.status_fd);
            let flags = libc::fcntl(self.status_fd, libc::F_GETFD);
            if flags < 0
                || libc::fcntl(self.status_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(id) = self.identity {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(id.gid) != 0
                    || libc::setuid(id.uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // bwrap's own `--die-with-parent` starts only after it has cloned the namespace's
            // init; a runner killed with -9 before that would leave bwrap running on. So
            // bwrap is bound to this thread from its first instruction. After the uid change,
            // which clears the setting; and if the parent is already gone, fail the spawn.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != self.parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        Ok(())
    }
}

/// Sets close-on-exec on every descriptor from `first` up (`keep` is fixed up after).
unsafe fn cloexec_from(first: u32, keep: i32) {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    if libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) == 0 {
        return;
    }
    // Kernels before 5.11: one by one, as far as the descriptor limit (capped).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
        limit.rlim_cur.min(1 << 16) as i32
    } else {
        1024
    };
    for fd in first as i32..max {
        if fd != keep {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// The arguments a spec would run with, for display (`--dry-run` style tooling).
pub fn command_line(sandbox: &Sandbox, spec: &Spec) -> Result<String> {
    let args: Vec<OsString> = bwrap::arguments(spec, 3)?;
    Ok(bwrap::display(sandbox.bwrap(), &args))
}
