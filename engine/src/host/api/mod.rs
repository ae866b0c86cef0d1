//! The guest API: what a program with `environment.aleph_api: true` reaches from inside its
//! sandbox (aleph-vm serves it to a VM on a unix socket; programs' SDKs call it as
//! `http://localhost/…`), served by the node in-process.
//!
//! One [`GuestApi`] serves the whole node: its store, its cache backend ([`CacheBackend`],
//! chosen by [`CacheConfig`]), its optional upstream Aleph API. Each connection of a program
//! ([`GuestApi::connect`]) is one end of an in-memory duplex stream, served as HTTP/1.1 on the
//! node's runtime for as long as the guest keeps it open, on behalf of that program only: its
//! cache keys, its signing rights.
//!
//! - [`routes`]: the routes (`/properties`, `/sign`, `/cache/…`, pubsub) and the node's own
//!   answers;
//! - [`proxy`]: the Aleph API (`/api/v0/…`) from the node's store, else from the upstream API;
//! - [`cache`]: key and pattern rules, the [`CacheBackend`] trait, [`CacheConfig`], the
//!   embedded backend ([`EmbeddedCache`]);
//! - [`redis`]: the Redis backend ([`RedisCache`]), laid out as aleph-vm's.
//!
//! `/sign` signs with the node's key (`--signing-key`, a [`Signer`]), as aleph-vm's VM
//! connector does.

pub mod cache;
pub mod proxy;
pub mod redis;
pub mod routes;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;

pub use self::cache::{
    CACHE_TTL, CacheBackend, CacheConfig, CacheError, CacheFuture, EmbeddedCache,
};
pub use self::redis::RedisCache;
pub use crate::message::Signer;
use crate::store::Store;

/// The buffer of a guest connection, in each direction.
const DUPLEX_BUFFER: usize = 64 * 1024;

/// Longest wait for an upstream API's connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for the next bytes of an upstream API's answer.
const UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The node's guest API: one for the node, shared by every program's connections.
pub struct GuestApi {
    store: Store,
    cache: Arc<dyn CacheBackend>,
    /// The upstream Aleph API's base URL, without a trailing slash.
    upstream: Option<String>,
    client: reqwest::Client,
    cache_ttl: Duration,
    /// The node's signing key, if it has one.
    signer: Option<Arc<Signer>>,
    router: Router<Guest>,
}

impl std::fmt::Debug for GuestApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestApi")
            .field("store", &self.store.root())
            .field("cache", &self.cache.describe())
            .field("upstream", &self.upstream)
            .field("cache_ttl", &self.cache_ttl)
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

/// What a connection's requests are served with: the API and the program they come from.
#[derive(Clone)]
struct Guest {
    api: Arc<GuestApi>,
    program: Arc<str>,
}

impl GuestApi {
    /// The guest API over `store` and `cache`, sending what the store does not hold (and
    /// pubsub messages) to the Aleph API at `upstream` (`https://api2.aleph.im`) when given.
    pub fn new(store: Store, cache: Arc<dyn CacheBackend>, upstream: Option<String>) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(UPSTREAM_CONNECT_TIMEOUT)
            .read_timeout(UPSTREAM_READ_TIMEOUT)
            .user_agent(concat!("aleph-wasm/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|e| {
                tracing::error!("guest API: the HTTP client's settings failed ({e}); defaults");
                reqwest::Client::new()
            });
        GuestApi {
            store,
            cache,
            upstream: upstream
                .map(|u| u.trim().trim_end_matches('/').to_string())
                .filter(|u| !u.is_empty()),
            client,
            cache_ttl: CACHE_TTL,
            signer: None,
            router: routes::router(),
        }
    }

    /// The same API with cached values living `ttl` instead of [`CACHE_TTL`].
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// The same API signing programs' messages with `signer` (`/properties`, `/sign`); without
    /// one both answer 501.
    pub fn with_signer(mut self, signer: Arc<Signer>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The node's signing key, if any.
    pub fn signer(&self) -> Option<&Arc<Signer>> {
        self.signer.as_ref()
    }

    /// The upstream Aleph API's base URL, if any.
    pub fn upstream(&self) -> Option<&str> {
        self.upstream.as_deref()
    }

    /// The cache backend.
    pub fn cache(&self) -> &Arc<dyn CacheBackend> {
        &self.cache
    }

    /// How long cached values live.
    pub fn cache_ttl(&self) -> Duration {
        self.cache_ttl
    }

    /// A connection for the program `program` (its item hash): the returned end is the
    /// guest's; the other end is served as HTTP/1.1, on a task of the current tokio runtime,
    /// until the guest closes (drops) its end. Must be called within a tokio runtime.
    pub fn connect(self: &Arc<Self>, program: &str) -> tokio::io::DuplexStream {
        let (guest_end, node_end) = tokio::io::duplex(DUPLEX_BUFFER);
        let state = Guest {
            api: Arc::clone(self),
            program: Arc::from(program),
        };
        let service = TowerToHyperService::new(self.router.clone().with_state(state));
        let program = program.to_string();
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(node_end), service)
                .await;
            if let Err(e) = served {
                tracing::debug!("guest API: a connection of {program} ended: {e}");
            }
        });
        guest_end
    }
}
