//! `/metrics`: the node's counters in the OpenMetrics text format (which Prometheus scrapes):
//! executions by outcome, requests refused before execution, response codes of program
//! routes, module compilations (cold starts), fuel, an execution-latency histogram, and the
//! executions and idle warm instances at the time of the scrape.

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

/// The node's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    executions: Family<OutcomeLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    responses: Family<CodeLabels, Counter>,
    compiles: Counter,
    fuel: Counter<u64, AtomicU64>,
    latency: Histogram,
    in_flight: Gauge,
    idle_instances: Gauge,
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
            "Cold starts: executions whose module was compiled (compiled-module cache miss)",
            compiles.clone(),
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
        let idle_instances = Gauge::default();
        registry.register(
            "idle_instances",
            "Idle warm instances kept at the time of the scrape",
            idle_instances.clone(),
        );
        Metrics {
            registry,
            executions,
            refused,
            responses,
            compiles,
            fuel,
            latency,
            in_flight,
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

    /// The text exposition, with the gauges set to `in_flight` and `idle_instances`.
    pub fn encode(&self, in_flight: usize, idle_instances: usize) -> Result<String, ServiceError> {
        self.in_flight.set(in_flight as i64);
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
    let text = state.metrics().encode(state.in_flight(), idle)?;
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}
