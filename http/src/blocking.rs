//! [`Client`] for code that has no async runtime (the builder's source downloads, run on the
//! builder's own threads): each call runs on a small runtime this client owns.
//!
//! Not for use inside an async runtime (a call would block one of its threads): async code
//! uses [`Client`].

use std::sync::Arc;

use bytes::Bytes;

use crate::{Client, Error, Request, Settings};

/// A [`Client`] and the runtime its calls run on; cheap to clone.
#[derive(Clone, Debug)]
pub struct BlockingClient {
    client: Client,
    runtime: Arc<OwnedRuntime>,
}

/// Shut down without waiting when dropped, so that dropping the last clone is fine anywhere
/// (a tokio runtime dropped inside another runtime would panic).
#[derive(Debug)]
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.0
            .as_ref()
            .expect("running until dropped")
            .block_on(future)
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl BlockingClient {
    pub fn new(settings: Settings) -> Result<BlockingClient, Error> {
        // One worker thread drives the connections; callers on any thread wait for theirs.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("precomp-http")
            .enable_all()
            .build()
            .map_err(|e| Error::BadUrl {
                what: "HTTP client",
                url: String::new(),
                reason: format!("starting its runtime: {e}"),
            })?;
        Ok(BlockingClient {
            client: Client::new(settings)?,
            runtime: Arc::new(OwnedRuntime(Some(runtime))),
        })
    }

    pub fn settings(&self) -> &Settings {
        self.client.settings()
    }

    /// [`Client::get`]: the body (at most `limit` bytes), `None` on 404.
    pub fn get(&self, url: &str, limit: u64) -> Result<Option<Bytes>, Error> {
        self.runtime.block_on(self.client.get(url, limit))
    }

    /// [`Client::fetch`].
    pub fn fetch(&self, request: &Request) -> Result<(crate::Head, Bytes), Error> {
        self.runtime.block_on(self.client.fetch(request))
    }
}
