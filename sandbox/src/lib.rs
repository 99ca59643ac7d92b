//! The sandbox: the hermetic container every build runs in — bubblewrap, no network, a
//! read-only toolchain root identified by digest, a clean environment, fixed paths, limits —
//! and the toolchain images it runs.
//!
//! - [`Spec`] says what runs: the toolchain [`Root`] (an image or the host's system
//!   directories, read-only), read-only sources, exactly one writable output directory, the
//!   working path, the exact environment, the [`Limits`] and the command. [`Spec::build`] is
//!   the build policy.
//! - [`Sandbox::run`] turns it into a bwrap invocation (every namespace, loopback only, no
//!   capabilities, no new privileges, nested user namespaces disabled), runs it as an
//!   unprivileged uid (`nobody` when we are root), enforces the limits (cgroup v2 when
//!   delegated to us, rlimits otherwise), kills the whole tree on time-out and returns an
//!   [`Outcome`]. [`Sandbox::run_cancellable`] also kills it when a [`Cancel`] handle is
//!   cancelled from another thread.
//! - [`toolchain::Store`] builds Debian images with debootstrap, digests them
//!   ([`tree::manifest`]), stores them content-addressed under the data directory, finds them
//!   by id, digest, suite or `host`, and verifies them.
//!
//! The threat model — what a hostile package can and cannot do — is in `docs/sandbox.md`.

mod bwrap;
mod cancel;
mod cgroup;
mod error;
mod leftovers;
mod run;
mod spec;
pub mod toolchain;
pub mod tree;

pub use bwrap::{arguments as bwrap_arguments, SHM_BYTES, SYSTEM_DIRS};
pub use cancel::Cancel;
pub use cgroup::Enforcement;
pub use error::{Error, Result};
pub use leftovers::{kill_leftovers, scratch_dir, sweep_abandoned, sweep_scratch_dirs, ScratchDir};
pub use run::{command_line, Captured, Identity, Outcome, Sandbox, Status};
pub use spec::{
    build_env, Limits, Mount, Root, Spec, Stdio, BUILD_DIR, DEFAULT_SOURCE_DATE_EPOCH, HOME_DIR,
    HOSTNAME, IMAGE_PATH, PATH,
};
