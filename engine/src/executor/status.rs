//! Read-only views of the executor's state for the node service (`/about/executions/list`,
//! `/metrics`): what the pool of warm instances holds right now. Nothing here changes state.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Executor;

/// One idle warm instance, as the node API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceInfo {
    /// Seconds since the instance booted.
    pub up_seconds: f64,
    /// Seconds since it last served.
    pub idle_seconds: f64,
    /// Requests and events it has served.
    pub requests_served: u64,
    /// The largest linear memory it has reached, in bytes.
    pub peak_memory_bytes: u64,
    /// Fuel it has consumed (boot excluded), as counted at its reads of stdin.
    pub fuel_consumed: u64,
    /// What it holds of the node's memory budget, in MiB (0 without a budget).
    pub memory_reserved_mib: u64,
    /// Whether it is a persistent program's instance.
    pub persistent: bool,
    /// Requests and events in flight on it now.
    pub requests_in_flight: usize,
}

impl Executor {
    /// How many idle warm instances (no request in flight) each program has, by item hash;
    /// programs without any are left out.
    pub fn idle_instances(&self) -> BTreeMap<String, usize> {
        super::lock(&self.pool)
            .iter()
            .map(|(key, live)| {
                let idle = live.iter().filter(|w| w.info().requests_in_flight == 0);
                (key.clone(), idle.count())
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The live warm instances of each program, by item hash, with their age, use, requests
    /// in flight, memory and fuel.
    pub fn instance_details(&self) -> BTreeMap<String, Vec<InstanceInfo>> {
        super::lock(&self.pool)
            .iter()
            .filter(|(_, idle)| !idle.is_empty())
            .map(|(key, idle)| (key.clone(), idle.iter().map(|w| w.info()).collect()))
            .collect()
    }
}
