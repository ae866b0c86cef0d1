//! The node service (`aleph-wasm serve`): an HTTP server, aleph-vm compatible, over one shared
//! [`Executor`].
//!
//! This module owns the service's configuration ([`ServerConfig`]), its shared state
//! ([`AppState`]: the executor with warm instances kept, the node-wide execution slots and the
//! bounded queue in front of them ([`queue`]), the metrics, what is known of each program
//! served), the assembly of the routes ([`router`],
//! testable without a socket) with host-based routing in front of them, and the server's life:
//! [`start`] binds and serves in the background, [`Server::shutdown`] stops gracefully,
//! [`serve`] runs until SIGINT or SIGTERM.
//!
//! Each route module owns its `router()`:
//! - [`vm`] answers `ANY /vm/{ref}/{path…}` and host-routed requests: requests to programs;
//! - [`about`] answers `/healthz`, `/about/config`, `/about/usage/system`,
//!   `/about/executions/list`;
//! - [`metrics`] answers `/metrics`;
//! - [`control`] answers `/control/machine/{ref}/stop|expire`, behind a bearer token;
//! - [`api`] answers `/api/v0/messages.json` and `/api/v0/storage/raw/{sha256}`: the store,
//!   read-only, for other nodes;
//! - [`ws`] answers `/api/ws0/messages`: every message the node takes in, as a websocket.
//!
//! With [`ServerConfig::api`] set, a program missing from the store (or anything it needs) is
//! fetched from that node on first use, verified, and stored ([`crate::store::prefetch`]), and
//! the node follows that node's message feed ([`triggers::feed`]).
//!
//! Besides HTTP, [`triggers`] starts and keeps persistent programs, runs cron schedules and
//! delivers messages to subscribed programs; [`ingest`] answers `POST /api/v0/messages`.
//!
//! Every failure is a [`ServiceError`], whose variants name their HTTP status.

pub mod about;
pub mod allocations;
pub mod api;
pub mod connectivity;
pub mod control;
pub mod error;
pub mod ingest;
pub mod metrics;
pub mod queue;
pub mod status;
pub mod triggers;
pub mod vm;
pub mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Request, State};
use axum::response::IntoResponse;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tower::ServiceExt as _;

use crate::executor::{Executor, ExecutorConfig, Isolation};
use crate::sandbox::PoolingLimits;
use crate::sandbox::snapshot::SnapshotConfig;
use crate::store::Store;
use crate::store::prefetch::Prefetcher;
use crate::store::remote::Remote;

pub use error::ServiceError;
pub use metrics::Metrics;

/// The address the node listens on unless told otherwise (aleph-vm's port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4020";
/// The node-wide limit on concurrent executions unless told otherwise.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;
/// How many requests may wait for an execution slot unless told otherwise
/// ([`ServerConfig::queue_limit`]). Enough for a load test of 1024 connections to one program
/// (at most 1024 − [`DEFAULT_MAX_CONCURRENT`] of them wait at once) four times over; a waiting
/// request costs a parked task and its connection, not an instance or its memory.
pub const DEFAULT_QUEUE_LIMIT: usize = 4096;
/// How long a request may wait for an execution slot unless told otherwise
/// ([`ServerConfig::queue_timeout`]): a minute, about when a client or proxy in front gives
/// up anyway.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest request body passed to a program unless told otherwise: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;
/// How long an idle warm instance is kept unless told otherwise: 5 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = crate::executor::DEFAULT_IDLE_TIMEOUT;
/// The node's isolation unless told otherwise: warm instances serve request after request
/// (the library's own default, for one-shot runs, is per request).
pub const DEFAULT_ISOLATION: Isolation = Isolation::Warm;
/// How long a shutdown waits for running executions unless told otherwise: 2 minutes.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// How the node service is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address to listen on; port 0 picks a free port ([`Server::local_addr`] tells which).
    /// By default [`DEFAULT_LISTEN`].
    pub listen: SocketAddr,
    /// The domain for host-based routing: a request whose `Host` is `<label>.<domain>`, where
    /// the label is a program's item hash in lowercase unpadded base32, goes to that program
    /// with its whole path. By default none (only `/vm/{ref}/…` reaches programs).
    pub domain: Option<String>,
    /// A file holding the bearer token of the control routes (surrounding whitespace is
    /// ignored; an empty file is refused). By default none: the control routes are disabled.
    pub token_file: Option<PathBuf>,
    /// How long an idle warm instance is kept before it is retired. By default
    /// [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// How many executions may run at once on the node; a request beyond that waits in the
    /// queue ([`ServerConfig::queue_limit`]). By default [`DEFAULT_MAX_CONCURRENT`].
    pub max_concurrent: usize,
    /// How many requests to programs may wait for an execution slot when all
    /// [`ServerConfig::max_concurrent`] are taken, first come first served ([`queue`]); a
    /// request that finds this many already waiting is answered 503 with `Retry-After: 1`
    /// naming the queue. 0: none wait (a busy node refuses at once). By default
    /// [`DEFAULT_QUEUE_LIMIT`].
    pub queue_limit: usize,
    /// How long a request may wait in the queue for an execution slot; one that waited this
    /// long is answered 503 with `Retry-After: 1`. `None`: as long as it takes. By default
    /// [`DEFAULT_QUEUE_TIMEOUT`].
    pub queue_timeout: Option<Duration>,
    /// The largest request body passed to a program; a longer one is answered 413. By default
    /// [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: usize,
    /// Where compiled modules are cached. By default none: the store's `cache/modules`.
    pub module_cache: Option<PathBuf>,
    /// How long a shutdown waits for running executions before retiring instances anyway. By
    /// default [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// How instances use snapshots. By default off here; `aleph-wasm serve` builds them in the
    /// background.
    pub snapshot: SnapshotConfig,
    /// Another node's API (`http://host:4020`, or an Aleph API node): a program missing from
    /// the store, and whatever it needs that is missing, is fetched from it on first use,
    /// verified and stored; and the node follows its message feed (`/api/ws0/messages`),
    /// storing each message verified and delivering it to subscribed programs
    /// ([`triggers::feed`]). By default none: only the store is used.
    pub api: Option<String>,
    /// How persistent programs, cron schedules and message subscriptions run (the cron clock,
    /// store polling, restart backoff, delivery retries).
    pub triggers: triggers::TriggerConfig,
    /// The node-wide memory budget in MiB: every live instance holds its program's
    /// `resources.memory`; a request whose program does not fit (after retiring idle
    /// instances) is answered 503. By default 80 % of the machine's memory (`None`: no budget).
    pub memory_budget_mib: Option<u64>,
    /// Whether an interpreter instance serves one request or many ([`Isolation`]). By default
    /// [`Isolation::Warm`]. Persistent programs keep their long-lived instance either way.
    pub isolation: Isolation,
    /// How many requests one warm interpreter instance serves at once, interleaved at their
    /// awaits (`ExecutorConfig::instance_concurrency`). By default
    /// [`crate::executor::DEFAULT_INSTANCE_CONCURRENCY`].
    pub instance_concurrency: usize,
    /// The engine's instance pool ([`PoolingLimits`]; [`ServerConfig::default_pooling`] sizes
    /// one from the other settings). A request that needs a new instance while every slot is
    /// held (after retiring idle instances) is answered 503 naming the pool. By default none:
    /// instances are allocated on demand.
    pub pooling: Option<PoolingLimits>,
    /// Host capabilities granted to programs: the address policy, TLS roots and limits of
    /// outbound connections, the guest API's cache ([`crate::host`]). Its upstream API is
    /// [`ServerConfig::api`].
    pub host: crate::host::HostConfig,
    /// The network scheduler's addresses (EVM): an allocation push signed by one of them
    /// (`Aleph-EIP191-V1`) is taken ([`allocations`]). By default none: only the control
    /// token authorizes it.
    pub schedulers: Vec<String>,
    /// Where `/status/check/host` sends its connectivity probes (today's nodes' targets by
    /// default).
    pub connectivity: connectivity::ConnectivityConfig,
}

/// How many pool slots the node keeps for idle warm and pinned (persistent) instances besides
/// one per concurrent execution, as a multiple of [`ServerConfig::max_concurrent`].
pub const POOL_IDLE_FACTOR: u32 = 1;

/// 80 % of the machine's memory in MiB, when `/proc/meminfo` says how much there is.
pub fn default_memory_budget_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024 * 4 / 5)
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 4020)),
            domain: None,
            token_file: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            queue_limit: DEFAULT_QUEUE_LIMIT,
            queue_timeout: Some(DEFAULT_QUEUE_TIMEOUT),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            module_cache: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            snapshot: SnapshotConfig::default(),
            api: None,
            triggers: triggers::TriggerConfig::default(),
            memory_budget_mib: default_memory_budget_mib(),
            isolation: DEFAULT_ISOLATION,
            instance_concurrency: crate::executor::DEFAULT_INSTANCE_CONCURRENCY,
            pooling: None,
            host: crate::host::HostConfig::default(),
            schedulers: Vec::new(),
            connectivity: connectivity::ConnectivityConfig::default(),
        }
    }
}

impl ServerConfig {
    /// The executor's configuration: instances kept warm for [`ServerConfig::idle_timeout`]
    /// or not ([`ServerConfig::isolation`]), modules cached in [`ServerConfig::module_cache`],
    /// the snapshot and pooling settings, every other setting at its default.
    pub fn executor_config(&self) -> ExecutorConfig {
        let mut config = ExecutorConfig {
            module_cache: self.module_cache.clone(),
            isolation: self.isolation,
            retire_after_answer: true,
            idle_timeout: self.idle_timeout,
            memory_budget_mib: self.memory_budget_mib,
            instance_concurrency: self.instance_concurrency,
            host: crate::host::HostConfig {
                upstream_api: self.api.clone(),
                ..self.host.clone()
            },
            ..ExecutorConfig::default()
        };
        config.sandbox.snapshot = self.snapshot.clone();
        config.sandbox.pooling = self.pooling;
        config
    }

    /// An instance pool sized from the node's settings: one slot per concurrent execution
    /// ([`ServerConfig::max_concurrent`]), as many again ([`POOL_IDLE_FACTOR`]) for idle warm
    /// and pinned instances, and [`crate::sandbox::POOL_HEADROOM`] for snapshot builds; each
    /// memory as large as the largest `resources.memory` the node admits (its memory budget,
    /// else the message limit), capped at the 4 GiB a slot holds.
    pub fn default_pooling(&self) -> PoolingLimits {
        let running = u32::try_from(self.max_concurrent).unwrap_or(u32::MAX);
        let instances = running
            .saturating_mul(1 + POOL_IDLE_FACTOR)
            .saturating_add(crate::sandbox::POOL_HEADROOM);
        let largest = self
            .memory_budget_mib
            .unwrap_or(crate::message::MAX_MEMORY_MIB)
            .min(crate::message::MAX_MEMORY_MIB);
        PoolingLimits::new(instances, largest)
    }
}

/// What the node knows of one program it has served.
#[derive(Debug, Clone, Default)]
pub struct ProgramActivity {
    /// Executions started for it.
    pub requests: u64,
    /// Executions running now.
    pub running: u64,
    /// When its first execution started (seconds since the epoch).
    pub first_request: f64,
    /// When its last execution started (seconds since the epoch).
    pub last_request: f64,
    /// The outcome of its last finished execution.
    pub last_outcome: Option<&'static str>,
}

/// The state shared by every request: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServerConfig,
    domain: Option<String>,
    token: Option<String>,
    executor: Arc<Executor>,
    prefetcher: Option<Prefetcher>,
    slots: queue::ExecutionSlots,
    metrics: Metrics,
    started: Instant,
    started_unix: f64,
    local_addr: Mutex<Option<SocketAddr>>,
    programs: Mutex<HashMap<String, ProgramActivity>>,
    triggers: triggers::Triggers,
    replays: allocations::Replays,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Seconds since the epoch, now.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl AppState {
    /// The state for `config` over `store`: one executor (warm instances kept), the token read
    /// from [`ServerConfig::token_file`], empty metrics.
    pub fn new(config: ServerConfig, store: Store) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config.max_concurrent > 0,
            "the limit on concurrent executions must be at least 1"
        );
        let token = match &config.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("token file {}", path.display()))?;
                let token = text.trim().to_string();
                anyhow::ensure!(!token.is_empty(), "token file {} is empty", path.display());
                Some(token)
            }
            None => None,
        };
        let domain = config
            .domain
            .as_deref()
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty());
        let prefetcher = match &config.api {
            Some(api) => Some(Prefetcher::new(
                Remote::new(api).with_context(|| format!("--api {api}"))?,
            )),
            None => None,
        };
        let executor = Executor::new(store, config.executor_config())?;
        let triggers = triggers::Triggers::new(config.triggers.clone());
        Ok(AppState {
            inner: Arc::new(Inner {
                slots: queue::ExecutionSlots::new(
                    config.max_concurrent,
                    config.queue_limit,
                    config.queue_timeout,
                ),
                config,
                domain,
                token,
                executor: Arc::new(executor),
                prefetcher,
                metrics: Metrics::new(),
                started: Instant::now(),
                started_unix: unix_now(),
                local_addr: Mutex::new(None),
                programs: Mutex::new(HashMap::new()),
                triggers,
                replays: allocations::Replays::default(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The host-routing domain, normalised (lower case, no trailing dot).
    pub fn domain(&self) -> Option<&str> {
        self.inner.domain.as_deref()
    }

    /// The shared executor.
    pub fn executor(&self) -> &Arc<Executor> {
        &self.inner.executor
    }

    /// What fetches missing programs from another node ([`ServerConfig::api`]), if any.
    pub fn prefetcher(&self) -> Option<&Prefetcher> {
        self.inner.prefetcher.as_ref()
    }

    /// The trigger service (persistent programs, cron, message subscriptions).
    pub fn triggers(&self) -> &triggers::Triggers {
        &self.inner.triggers
    }

    /// The last `iat` taken from each scheduler (replay protection of allocations).
    pub(crate) fn replays(&self) -> &allocations::Replays {
        &self.inner.replays
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The control routes' token, when they are enabled.
    pub(crate) fn token(&self) -> Option<&str> {
        self.inner.token.as_deref()
    }

    /// The node-wide execution slots (waited for without the queue's bounds).
    pub(crate) fn slots(&self) -> &Arc<Semaphore> {
        self.inner.slots.semaphore()
    }

    /// The node-wide execution slots with the queue in front of them, for requests.
    pub(crate) fn execution_slots(&self) -> &queue::ExecutionSlots {
        &self.inner.slots
    }

    /// Executions running now (node-wide).
    pub fn in_flight(&self) -> usize {
        self.inner.slots.taken()
    }

    /// Requests waiting for an execution slot now (node-wide).
    pub fn queued(&self) -> usize {
        self.inner.slots.waiting()
    }

    /// How long the service has been up.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// When the service started (seconds since the epoch).
    pub fn started_unix(&self) -> f64 {
        self.inner.started_unix
    }

    /// The address the server is bound to, once it is.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *lock(&self.inner.local_addr)
    }

    /// What the node knows of each program it has served, by item hash.
    pub fn programs(&self) -> HashMap<String, ProgramActivity> {
        lock(&self.inner.programs).clone()
    }

    /// Notes that an execution of `program` starts.
    pub(crate) fn execution_started(&self, program: &str) {
        let now = unix_now();
        let mut programs = lock(&self.inner.programs);
        let p = programs
            .entry(program.to_string())
            .or_insert_with(|| ProgramActivity {
                first_request: now,
                ..ProgramActivity::default()
            });
        p.requests += 1;
        p.running += 1;
        p.last_request = now;
    }

    /// Notes that an execution of `program` ended with `outcome`.
    pub(crate) fn execution_ended(&self, program: &str, outcome: &'static str) {
        if let Some(p) = lock(&self.inner.programs).get_mut(program) {
            p.running = p.running.saturating_sub(1);
            p.last_outcome = Some(outcome);
        }
    }
}

/// Every route of the service, with host-based routing in front of them when
/// [`ServerConfig::domain`] is set. Usable without a socket (`tower::ServiceExt::oneshot`);
/// the client's address is then unknown.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .merge(vm::router())
        .merge(about::router())
        .merge(metrics::router())
        .merge(control::router())
        .merge(allocations::router())
        .merge(status::router())
        .merge(api::router())
        .merge(ingest::router())
        .merge(ws::router())
        .fallback(no_route)
        .with_state(state.clone());
    if state.domain().is_none() {
        return routes;
    }
    Router::new()
        .fallback(move |State(state): State<AppState>, request: Request| {
            let routes = routes.clone();
            async move {
                match vm::program_of_host(&state, &request) {
                    Some(Ok(item_hash)) => vm::serve_host(state, item_hash, request).await,
                    Some(Err(e)) => e.into_response(),
                    None => match routes.oneshot(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    },
                }
            }
        })
        .with_state(state)
}

async fn no_route(request: Request) -> ServiceError {
    ServiceError::NoRoute(request.uri().path().to_string())
}

/// A running server (see [`start`]).
pub struct Server {
    state: AppState,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<std::io::Result<()>>,
    retiring: JoinHandle<()>,
    triggers: triggers::Guard,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Binds [`ServerConfig::listen`] and serves in the background, with a task that retires
/// idle warm instances. Must be called within a tokio runtime. Dropping the [`Server`] stops
/// accepting connections; call [`Server::shutdown`] to also wait and retire instances.
pub async fn start(config: ServerConfig, store: Store) -> anyhow::Result<Server> {
    let state = AppState::new(config, store)?;
    about::start_snapshots(&state);
    let listen = state.config().listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    *lock(&state.inner.local_addr) = Some(addr);
    let triggers = state.triggers().start(&state)?;

    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });

    // The task ends by itself once the executor is gone (a server dropped without shutdown).
    let executor = Arc::downgrade(state.executor());
    let idle = state.config().idle_timeout;
    let period = (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let retiring = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(executor) = executor.upgrade() else {
                return;
            };
            executor.retire_idle(idle).await;
        }
    });
    tracing::info!("listening on http://{addr}");
    Ok(Server {
        state,
        addr,
        stop,
        serving,
        retiring,
        triggers,
    })
}

impl Server {
    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops gracefully: no new connections, requests in progress finish, executions still
    /// running (a client that went away) get up to [`ServerConfig::drain_timeout`], then every
    /// warm instance is retired (lifespan shutdown, export). Triggers stop first: no more cron
    /// ticks or deliveries, persistent instances stopped.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // Websockets outlive their HTTP connection: they are closed first.
        self.state.triggers().close_feed();
        let _ = self.stop.send(());
        let served = self.serving.await;
        let limit = self.state.config().executor_config().shutdown_timeout + Duration::from_secs(5);
        self.triggers.shutdown(limit).await;
        let slots = self.state.config().max_concurrent as u32;
        let drain = self.state.config().drain_timeout;
        if tokio::time::timeout(drain, self.state.slots().acquire_many(slots))
            .await
            .is_err()
        {
            tracing::warn!(
                "{} executions still running after {drain:?}; retiring idle instances anyway",
                self.state.in_flight()
            );
        }
        self.retiring.abort();
        self.state.executor().shutdown().await;
        served
            .context("the server task failed")?
            .context("the server failed")
    }
}

/// Registers for SIGINT (Ctrl-C) and, on Unix, SIGTERM at once; the future ends at the first
/// of them. Registering before the server says it listens means a signal sent as soon as it
/// does is a graceful shutdown, never the default action that kills the process.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(interrupt.take()) => {}
                _ = wait(terminate.take()) => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs the node service until SIGINT or SIGTERM, then shuts down gracefully (see
/// [`Server::shutdown`]). Once bound, prints `listening on http://ADDR` on stdout (one line,
/// flushed), so a script that asked for port 0 learns the port.
pub async fn serve(config: ServerConfig, store: Store) -> anyhow::Result<()> {
    let server = start(config, store).await?;
    let signalled = shutdown_signal();
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{}", server.local_addr())?;
        out.flush()?;
    }
    signalled.await;
    tracing::info!("shutting down");
    server.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_listen_address_is_the_documented_one() {
        assert_eq!(ServerConfig::default().listen.to_string(), DEFAULT_LISTEN);
    }
}
