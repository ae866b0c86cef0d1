//! `/metrics`: the node's counters in the OpenMetrics text format (which Prometheus scrapes):
//! executions by outcome, requests refused before execution, response codes of program
//! routes, cold starts (executions that started a new instance; how many of them restored a
//! snapshot) and module compilations, fuel, an execution-latency histogram, the executions,
//! requests waiting in the node's queue for an execution slot, idle warm instances, the memory budget and the instance pool at the time of the scrape, and
//! outbound traffic per program (bytes received and sent, connections opened), the triggers: cron ticks
//! (run or skipped), restarts of persistent instances (by reason), message deliveries (by
//! result), persistent instances running at the time of the scrape.

use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::AppState;
use super::error::ServiceError;
use crate::outcome::{ModuleCache, Outcome};

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the execution-latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabels {
    program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// The node's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    executions: Family<OutcomeLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    responses: Family<CodeLabels, Counter>,
    compiles: Counter,
    cold_starts: Counter,
    restored_starts: Counter,
    memory_budget: Gauge,
    memory_reserved: Gauge,
    pool_slots: Gauge,
    pool_held: Gauge,
    fuel: Counter<u64, AtomicU64>,
    latency: Histogram,
    in_flight: Gauge,
    queued: Gauge,
    idle_instances: Gauge,
    cron_ticks: Family<ResultLabels, Counter>,
    persistent_restarts: Family<ReasonLabels, Counter>,
    message_deliveries: Family<ResultLabels, Counter>,
    persistent_running: Gauge,
    net_received: Family<ProgramLabels, Counter<u64, AtomicU64>>,
    net_sent: Family<ProgramLabels, Counter<u64, AtomicU64>>,
    net_connections: Family<ProgramLabels, Counter<u64, AtomicU64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the `aleph_wasm_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aleph_wasm");
        let executions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "executions",
            "Executions of programs for HTTP requests, by outcome kind",
            executions.clone(),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refused_requests",
            "Requests to programs answered without an execution, by reason",
            refused.clone(),
        );
        let responses = Family::<CodeLabels, Counter>::default();
        registry.register(
            "program_responses",
            "Responses of the program routes, by HTTP status code",
            responses.clone(),
        );
        let compiles = Counter::default();
        registry.register(
            "module_compiles",
            "Executions whose module was compiled (compiled-module cache miss)",
            compiles.clone(),
        );
        let cold_starts = Counter::default();
        registry.register(
            "cold_starts",
            "Executions that started a new instance rather than reusing a warm one",
            cold_starts.clone(),
        );
        let restored_starts = Counter::default();
        registry.register(
            "restored_starts",
            "Cold starts whose new instance was restored from a snapshot rather than booted",
            restored_starts.clone(),
        );
        let memory_budget = Gauge::default();
        registry.register(
            "memory_budget_mib",
            "The node's memory budget in MiB (0: none)",
            memory_budget.clone(),
        );
        let memory_reserved = Gauge::default();
        registry.register(
            "memory_reserved_mib",
            "MiB of the memory budget held by live instances at the time of the scrape",
            memory_reserved.clone(),
        );
        let pool_slots = Gauge::default();
        registry.register(
            "instance_pool_slots",
            "Instance slots of the engine's pool that executions may take (0: no pool)",
            pool_slots.clone(),
        );
        let pool_held = Gauge::default();
        registry.register(
            "instance_pool_held",
            "Instance slots held by live instances at the time of the scrape",
            pool_held.clone(),
        );
        let fuel = Counter::<u64, AtomicU64>::default();
        registry.register(
            "fuel_consumed",
            "Fuel consumed by executions for HTTP requests",
            fuel.clone(),
        );
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "execution_duration_seconds",
            "Wall-clock time of executions for HTTP requests, instance boot included",
            latency.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "executions_in_flight",
            "Executions running at the time of the scrape",
            in_flight.clone(),
        );
        let queued = Gauge::default();
        registry.register(
            "queued_requests",
            "Requests waiting in the node's queue for an execution slot at the time of the scrape",
            queued.clone(),
        );
        let idle_instances = Gauge::default();
        registry.register(
            "idle_instances",
            "Idle warm instances kept at the time of the scrape",
            idle_instances.clone(),
        );
        let cron_ticks = Family::<ResultLabels, Counter>::default();
        registry.register(
            "cron_ticks",
            "Cron ticks, by result: run, or skipped because the previous tick was still running",
            cron_ticks.clone(),
        );
        let persistent_restarts = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "persistent_restarts",
            "Restarts of persistent instances, by reason: ended, start_failed, amended",
            persistent_restarts.clone(),
        );
        let message_deliveries = Family::<ResultLabels, Counter>::default();
        registry.register(
            "message_deliveries",
            "Runs of subscribed programs for a message, by result: delivered, retried, failed",
            message_deliveries.clone(),
        );
        let persistent_running = Gauge::default();
        registry.register(
            "persistent_instances",
            "Persistent programs whose instance runs at the time of the scrape",
            persistent_running.clone(),
        );
        let net_received = Family::<ProgramLabels, Counter<u64, AtomicU64>>::default();
        registry.register(
            "program_net_received_bytes",
            "Bytes programs received over outbound connections, by program",
            net_received.clone(),
        );
        let net_sent = Family::<ProgramLabels, Counter<u64, AtomicU64>>::default();
        registry.register(
            "program_net_sent_bytes",
            "Bytes programs sent over outbound connections, by program",
            net_sent.clone(),
        );
        let net_connections = Family::<ProgramLabels, Counter<u64, AtomicU64>>::default();
        registry.register(
            "program_net_connections",
            "Outbound connections (and guest API connections) programs opened, by program",
            net_connections.clone(),
        );
        Metrics {
            net_received,
            net_sent,
            net_connections,
            registry,
            cron_ticks,
            persistent_restarts,
            message_deliveries,
            persistent_running,
            executions,
            refused,
            responses,
            compiles,
            cold_starts,
            restored_starts,
            memory_budget,
            memory_reserved,
            pool_slots,
            pool_held,
            fuel,
            latency,
            in_flight,
            queued,
            idle_instances,
        }
    }

    /// Records one finished execution.
    pub fn execution(&self, outcome: &Outcome, seconds: f64) {
        self.executions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.kind.as_str().to_string(),
            })
            .inc();
        if outcome.module_cache == Some(ModuleCache::Miss) {
            self.compiles.inc();
        }
        if outcome.cold_start {
            self.cold_starts.inc();
            if outcome.restored {
                self.restored_starts.inc();
            }
        }
        self.fuel.inc_by(outcome.fuel_consumed);
        self.latency.observe(seconds);
    }

    /// Records a request refused before any execution (`reason` is a short fixed word).
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Records the status code a program route answered with.
    pub fn response(&self, code: u16) {
        self.responses
            .get_or_create(&CodeLabels {
                code: code.to_string(),
            })
            .inc();
    }

    /// Records a cron tick (`result`: `run` or `skipped`).
    pub fn cron_tick(&self, result: &str) {
        self.cron_ticks
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Records a restart of a persistent instance (`reason`: `ended`, `start_failed`,
    /// `amended`).
    pub fn persistent_restart(&self, reason: &str) {
        self.persistent_restarts
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Records one run of a subscribed program for a message (`result`: `delivered`,
    /// `retried`, `failed`).
    pub fn message_delivery(&self, result: &str) {
        self.message_deliveries
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Sets the gauge of persistent instances running (read at the next scrape).
    pub fn set_persistent_running(&self, n: usize) {
        self.persistent_running.set(n as i64);
    }

    /// Sets the memory-budget gauges (`None`: the node has no budget).
    pub fn set_memory(&self, memory: Option<crate::executor::memory::MemoryUse>) {
        let (total, reserved) = memory.map_or((0, 0), |m| (m.total_mib, m.reserved_mib));
        self.memory_budget.set(total as i64);
        self.memory_reserved.set(reserved as i64);
    }

    /// Sets the instance-pool gauges (`None`: the engine allocates on demand).
    pub fn set_pool(&self, pool: Option<crate::executor::memory::PoolUse>) {
        let (slots, held) = pool.map_or((0, 0), |p| (p.slots, p.held));
        self.pool_slots.set(slots as i64);
        self.pool_held.set(held as i64);
    }

    /// Brings the per-program traffic counters up to the host's totals.
    pub fn set_net_traffic(
        &self,
        traffic: &[(String, std::sync::Arc<crate::host::net::NetCounters>)],
    ) {
        for (program, counters) in traffic {
            let labels = ProgramLabels {
                program: program.clone(),
            };
            for (family, total) in [
                (&self.net_received, counters.bytes_in()),
                (&self.net_sent, counters.bytes_out()),
                (&self.net_connections, counters.connections()),
            ] {
                let counter = family.get_or_create(&labels);
                let seen = counter.get();
                if total > seen {
                    counter.inc_by(total - seen);
                }
            }
        }
    }

    /// The text exposition, with the gauges set to `in_flight`, `queued` and `idle_instances`.
    pub fn encode(
        &self,
        in_flight: usize,
        queued: usize,
        idle_instances: usize,
    ) -> Result<String, ServiceError> {
        self.in_flight.set(in_flight as i64);
        self.queued.set(queued as i64);
        self.idle_instances.set(idle_instances as i64);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|e| anyhow::anyhow!("cannot encode the metrics: {e}"))?;
        Ok(text)
    }
}

/// `GET /metrics`.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ServiceError> {
    let idle = state.executor().idle_instances().values().sum();
    state
        .metrics()
        .set_persistent_running(state.triggers().persistent_running());
    state.metrics().set_memory(state.executor().memory_use());
    state.metrics().set_pool(state.executor().pool_use());
    state
        .metrics()
        .set_net_traffic(&state.executor().host().traffic());
    let text = state
        .metrics()
        .encode(state.in_flight(), state.queued(), idle)?;
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}
