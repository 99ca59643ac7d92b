//! The toolchain images the tests share: one store per machine, each image built by whichever
//! test asks for it first and reused by every later test and run.
//!
//! The store is `$PRECOMP_TOOLCHAIN_CACHE` (default `/var/cache/precomp-test`). `.ci/setup`
//! builds both images there before the tests; [`image`] builds a missing one itself, so no
//! test depends on another having run first. Several test processes asking at once are safe:
//! [`Store::build`] takes a file lock per image recipe in the store, so the second asker waits
//! for the first and reuses its image.

use std::path::PathBuf;
use std::sync::OnceLock;

pub use precomp_sandbox::toolchain::{ImageRequest, Store, Suite, Toolchain};
use precomp_sandbox::Sandbox;

/// Where the shared images live: `$PRECOMP_TOOLCHAIN_CACHE`, default `/var/cache/precomp-test`.
/// Pass it as `--toolchains` (or `--data` for `precomp toolchain ...`).
pub fn toolchain_cache() -> PathBuf {
    std::env::var_os("PRECOMP_TOOLCHAIN_CACHE")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/precomp-test"))
}

/// The store under [`toolchain_cache`], created if missing.
pub fn toolchain_store() -> Store {
    let dir = toolchain_cache();
    Store::open(&dir).unwrap_or_else(|e| {
        panic!(
            "opening the toolchain store {}: {e} (set PRECOMP_TOOLCHAIN_CACHE to a writable \
             directory)",
            dir.display()
        )
    })
}

/// The image of `suite` in the shared store: found by the digest of its inputs, else built
/// now (debootstrap and apt from the Debian mirror: root, a few minutes), once per process.
/// Pass its `id` to `--toolchain`: the exact image, whatever else the store holds.
pub fn image(suite: Suite) -> Toolchain {
    static BOOKWORM: OnceLock<Toolchain> = OnceLock::new();
    static TRIXIE: OnceLock<Toolchain> = OnceLock::new();
    let once = match suite {
        Suite::Bookworm => &BOOKWORM,
        Suite::Trixie => &TRIXIE,
    };
    // Other threads asking for the same suite wait here; other processes wait on the store's
    // lock inside `build`.
    once.get_or_init(|| build(suite)).clone()
}

fn build(suite: Suite) -> Toolchain {
    let sandbox = Sandbox::new().expect("bwrap: install it with `apt-get install bubblewrap`");
    let store = toolchain_store();
    let built = store
        .build(&sandbox, &ImageRequest::new(suite))
        .unwrap_or_else(|e| {
            panic!(
                "the {suite} toolchain image is not in {} and building it failed: {e}\n\
                 Building one needs root, debootstrap and debian-archive-keyring (`bash \
                 .ci/setup` installs them and builds both images) and the Debian mirror; or \
                 point PRECOMP_TOOLCHAIN_CACHE at a store that has it.",
                store.dir().display()
            )
        });
    eprintln!(
        "{suite} toolchain image {} {} in {:.1} s ({})",
        built.toolchain.id,
        if built.reused { "found" } else { "built" },
        built.elapsed.as_secs_f64(),
        store.dir().display()
    );
    built.toolchain
}
