//! Host capabilities: what a program may reach outside its sandbox, granted by its message and
//! nothing else. An instance gets a [`ProgramCalls`] (its [`HostCalls`]): the guest's `CALL`
//! frames (`docs/channel.md`) name a function of the table below, and the answer comes back as
//! a `REPLY` while the instance's other requests go on.
//!
//! | capability | granted by | functions |
//! | --- | --- | --- |
//! | outbound connections ([`net`]) | `environment.internet` | `net.resolve`, `net.connect`, `net.tls`, `net.send`, `net.recv`, `net.shutdown`, `net.close` |
//! | the guest API ([`api`]) | `environment.aleph_api` | `net.connect` to `{"unix": ALEPH_API_UNIX_SOCKET}` or to `localhost:80` |
//!
//! Without the flag a function fails with the kind `permission` and a message naming the flag
//! (`content.environment.internet is false`). The ABI (argument and result encodings, failure
//! kinds) is in `docs/host.md`.
//!
//! A reproducible execution gets [`recorded::RecordedCalls`] instead
//! ([`Host::recorded_calls_for`]): no internet, and from the guest API only reads of content
//! named by its hash, answered in an order that depends on the guest alone and recorded for
//! its receipt.

pub mod api;
pub mod net;
pub mod policy;
pub mod recorded;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::channel::wire::CallFailure;
use crate::channel::{CallResult, CallsFactory, HostCalls};

/// What one program is granted, from its message's `environment`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grants {
    /// `environment.internet`: outbound connections.
    pub internet: bool,
    /// `environment.aleph_api`: the guest API.
    pub aleph_api: bool,
}

/// The failure kinds of host calls (the `kind` of a [`CallFailure`]); `docs/host.md` says how
/// the Python runtime raises each.
pub mod kind {
    /// The capability is not granted: the message names the flag.
    pub const PERMISSION: &str = "permission";
    /// The address is not allowed by the node's policy (loopback, private, …).
    pub const FORBIDDEN: &str = "forbidden";
    /// A name that does not resolve.
    pub const DNS: &str = "dns";
    /// The peer refused the connection.
    pub const REFUSED: &str = "refused";
    /// The peer reset the connection.
    pub const RESET: &str = "reset";
    /// A connect, a read or a handshake took longer than allowed.
    pub const TIMEOUT: &str = "timeout";
    /// The TLS handshake failed (certificate, name, protocol).
    pub const TLS: &str = "tls";
    /// A per-execution limit (connections, bytes) is reached: the message names it.
    pub const LIMIT: &str = "limit";
    /// A handle that is not (or no longer) open.
    pub const BAD_HANDLE: &str = "bad_handle";
    /// Arguments the function cannot read.
    pub const BAD_ARGS: &str = "bad_args";
    /// Any other I/O failure.
    pub const IO: &str = "io";
}

/// A call failure of `kind` with `message`.
pub fn failure(kind: &str, message: impl Into<String>) -> CallFailure {
    CallFailure {
        kind: kind.into(),
        message: message.into(),
    }
}

/// The host functions of one instance: its program's grants over the node's capabilities.
pub struct ProgramCalls {
    net: net::NetSession,
}

impl ProgramCalls {
    /// The calls of an instance, over its network session.
    pub fn new(net: net::NetSession) -> Self {
        Self { net }
    }
}

impl HostCalls for ProgramCalls {
    fn call<'a>(
        &'a self,
        name: &'a str,
        args: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>> {
        Box::pin(async move {
            match name.strip_prefix("net.") {
                Some(function) => self.net.call(function, args).await,
                None => crate::channel::Builtin.call(name, args).await,
            }
        })
    }
}

/// The node's options for host capabilities.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// Outbound connections: the address policy, TLS roots, limits.
    pub net: Arc<net::NetOptions>,
    /// Where the guest API keeps each program's cache.
    pub cache: api::CacheConfig,
    /// The Aleph API the guest API proxies what the node's store does not hold (`--api`).
    pub upstream_api: Option<String>,
    /// The key with which the guest API signs programs' messages (`--signing-key`); without
    /// it `/properties` and `/sign` answer 501.
    pub signing_key: Option<Arc<api::Signer>>,
}

/// The environment a program with `aleph_api` gets, as on Aleph's VMs: where the guest API is.
pub const API_ENV: [(&str, &str); 4] = [
    ("ALEPH_API_HOST", "http://localhost"),
    ("ALEPH_API_UNIX_SOCKET", net::API_SOCKET),
    ("ALEPH_REMOTE_CRYPTO_HOST", "http://localhost"),
    ("ALEPH_REMOTE_CRYPTO_UNIX_SOCKET", net::API_SOCKET),
];

/// The variable holding the program's own item hash (every program gets it).
pub const ITEM_HASH_ENV: &str = "ALEPH_ITEM_HASH";

/// The variable holding the program's host label, as on Aleph's VMs (its hostname there): the
/// item hash as lowercase unpadded base32 (every program gets it).
pub const ADDRESS_ENV: &str = "ALEPH_ADDRESS_TO_USE";

/// A node's host capabilities: its options, the guest API (made when a program first needs
/// it), and each program's traffic counters.
pub struct Host {
    config: HostConfig,
    store: crate::store::Store,
    api: tokio::sync::OnceCell<Arc<api::GuestApi>>,
    counters: Mutex<BTreeMap<String, Arc<net::NetCounters>>>,
}

impl Host {
    /// The capabilities of a node whose store is `store`.
    pub fn new(store: crate::store::Store, config: HostConfig) -> Self {
        Self {
            config,
            store,
            api: tokio::sync::OnceCell::new(),
            counters: Mutex::new(BTreeMap::new()),
        }
    }

    /// The node's options.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The guest API, made on first use (a Redis cache is connected then).
    pub async fn guest_api(&self) -> Result<Arc<api::GuestApi>, String> {
        self.api
            .get_or_try_init(|| async {
                let cache = self.config.cache.backend(&self.store).await?;
                let mut api =
                    api::GuestApi::new(self.store.clone(), cache, self.config.upstream_api.clone());
                if let Some(signer) = &self.config.signing_key {
                    api = api.with_signer(Arc::clone(signer));
                }
                Ok::<_, String>(Arc::new(api))
            })
            .await
            .cloned()
    }

    /// What makes the calls of each instance of `program` (its item hash), granted `grants`.
    pub async fn calls_for(&self, program: &str, grants: Grants) -> Result<CallsFactory, String> {
        let api: Option<Arc<dyn net::ApiConnector>> = if grants.aleph_api {
            Some(Arc::new(ProgramApi {
                api: self.guest_api().await?,
                program: program.to_string(),
            }))
        } else {
            None
        };
        let counters = self.counters_of(program);
        let options = self.config.net.clone();
        Ok(CallsFactory::new(move || {
            Arc::new(ProgramCalls::new(net::NetSession::new(
                grants,
                options.clone(),
                api.clone(),
                counters.clone(),
            )))
        }))
    }

    /// What makes the calls of each instance of a reproducible execution granted `grants`:
    /// content-addressed reads of the node's store through the guest API, recorded in `log`.
    pub fn recorded_calls_for(&self, grants: Grants, log: recorded::ReadLog) -> CallsFactory {
        let store = self.store.clone();
        let options = self.config.net.clone();
        CallsFactory::ordered(move || {
            Box::new(recorded::RecordedCalls::new(
                store.clone(),
                grants.aleph_api,
                options.max_connections,
                options.max_bytes,
                log.clone(),
            ))
        })
    }

    fn counters_of(&self, program: &str) -> Arc<net::NetCounters> {
        let mut all = match self.counters.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        all.entry(program.to_string()).or_default().clone()
    }

    /// Each program's outbound traffic so far, by item hash.
    pub fn traffic(&self) -> Vec<(String, Arc<net::NetCounters>)> {
        let all = match self.counters.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        all.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// The guest API as one program reaches it.
struct ProgramApi {
    api: Arc<api::GuestApi>,
    program: String,
}

impl net::ApiConnector for ProgramApi {
    fn connect(&self) -> tokio::io::DuplexStream {
        self.api.connect(&self.program)
    }
}
