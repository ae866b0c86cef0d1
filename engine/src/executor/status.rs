//! Read-only views of the executor's state for the node service (`/about/executions/list`,
//! `/metrics`): what the pool of warm instances holds right now. Nothing here changes state.

use std::collections::BTreeMap;

use super::Executor;

impl Executor {
    /// How many idle warm instances each program has, by item hash; programs without any are
    /// left out. Instances serving a request at this moment are not in the pool, so they are
    /// not counted.
    pub fn idle_instances(&self) -> BTreeMap<String, usize> {
        super::lock(&self.pool)
            .iter()
            .filter(|(_, idle)| !idle.is_empty())
            .map(|(key, idle)| (key.clone(), idle.len()))
            .collect()
    }
}
