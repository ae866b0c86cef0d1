//! What the node tells about itself: `/healthz`, `/about/config` (listen address, domain,
//! isolation, instance pool, limits, the request queue's bounds, snapshots and their `wasm-opt`, host capability options), `/about/usage/system` (in
//! today's nodes' shape — cores, load, core frequencies, memory and disk, the period, the CPU's
//! architecture and vendor, GPUs (none), `active` — plus uptime, executions running and
//! requests queued, the memory budget and instance pool in use) and
//! `/about/executions/list` (each program the node knows to be active: executions started and
//! running, idle warm instances, the state of a persistent program's instance). Read-only; no
//! host paths.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use super::{AppState, unix_now};
use crate::sandbox::snapshot::{SnapshotBuild, WasmOptSource, WasmOptStatus, wasm_opt};

/// `GET /healthz`, `/about/config`, `/about/usage/system`, `/about/executions/list`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/about/config", get(config))
        .route("/about/usage/system", get(usage))
        .route("/about/executions/list", get(executions))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn config(State(state): State<AppState>) -> Json<Value> {
    let c = state.config();
    let executor = c.executor_config();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "listen": c.listen.to_string(),
        "bound": state.local_addr().map(|a| a.to_string()),
        "domain": state.domain(),
        "control_routes": state.token().is_some(),
        "isolation": executor.isolation.as_str(),
        "messages": {
            "unsigned": state.executor().store().unsigned().as_str(),
            "verified_chains": {
                "evm": crate::message::verify::EVM_CHAINS,
                "other": [crate::message::verify::SOL_CHAIN],
            },
            "delegations": "security aggregate",
        },
        "pooling": executor.sandbox.pooling.map(|p| json!({
            "instances": p.instances,
            "max_memory_bytes": p.max_memory_bytes,
        })),
        "limits": {
            "max_concurrent_executions": c.max_concurrent,
            "instance_concurrency": executor.instance_concurrency,
            "queue_limit": c.queue_limit,
            "queue_timeout_seconds": c.queue_timeout.map(|t| t.as_secs_f64()),
            "max_request_body_bytes": c.max_body_bytes,
            "idle_timeout_seconds": c.idle_timeout.as_secs_f64(),
            "boot_timeout_seconds": executor.boot_timeout.as_secs_f64(),
            "shutdown_timeout_seconds": executor.shutdown_timeout.as_secs_f64(),
            "drain_timeout_seconds": c.drain_timeout.as_secs_f64(),
        },
        "snapshots": snapshots(&state),
        "host": host(&executor.host),
    }))
}

/// The host capability options: the address ranges allowed besides public ones, how many extra
/// TLS roots, the limits, the guest API's cache and upstream.
fn host(host: &crate::host::HostConfig) -> Value {
    let net = &host.net;
    json!({
        "allow_net": net.policy.allowed().iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "extra_tls_roots": net.extra_roots.len(),
        "net_max_connections": net.max_connections,
        "net_max_bytes": net.max_bytes,
        "connect_timeout_seconds": net.connect_timeout.as_secs_f64(),
        "cache": host.cache.to_string(),
        "upstream_api": host.upstream_api,
    })
}

/// The snapshot mode (`off`, `wait`, `background`).
fn snapshot_mode(state: &AppState) -> &'static str {
    let config = state.executor().sandbox().snapshots().config();
    match (config.enabled, config.build) {
        (false, _) => "off",
        (true, SnapshotBuild::Wait) => "wait",
        (true, SnapshotBuild::Background) => "background",
    }
}

/// `{mode, wasm_opt}`: `wasm_opt` is `null` with snapshots off, else `{"state": …}`:
/// `not_looked_for`, `obtaining`, `ready` (with `version` and `source`: `configured`, `pinned`
/// with its `package` and `sha256`, or `path` with the `pinned_error` that made it fall back)
/// or `error` (with the `error`: snapshots are off until it is tried again).
fn snapshots(state: &AppState) -> Value {
    let wasm_opt = match state.executor().sandbox().snapshots().wasm_opt_status() {
        WasmOptStatus::Off => Value::Null,
        WasmOptStatus::NotLookedFor => json!({"state": "not_looked_for"}),
        WasmOptStatus::Obtaining => json!({"state": "obtaining"}),
        WasmOptStatus::Ready(found) => match &found.source {
            WasmOptSource::Configured => json!({
                "state": "ready", "version": found.version, "source": "configured",
            }),
            WasmOptSource::Pinned => json!({
                "state": "ready", "version": found.version, "source": "pinned",
                "package": wasm_opt::PINNED_PACKAGE, "sha256": wasm_opt::PINNED_SHA256,
            }),
            WasmOptSource::Path { pinned_error } => json!({
                "state": "ready", "version": found.version, "source": "path",
                "pinned_error": pinned_error,
            }),
        },
        WasmOptStatus::Failed(error) => json!({"state": "error", "error": error}),
    };
    json!({"mode": snapshot_mode(state), "wasm_opt": wasm_opt})
}

/// At start-up: logs the snapshot mode and starts finding or obtaining `wasm-opt` on a thread
/// of its own (which logs what it found, or an error saying that snapshots are off and why).
pub(super) fn start_snapshots(state: &AppState) {
    let snapshots = state.executor().sandbox().snapshots();
    let mode = snapshot_mode(state);
    if mode == "off" {
        tracing::info!("snapshots: off");
        return;
    }
    let looking_for = match &snapshots.config().wasm_opt {
        Some(path) => format!("the configured wasm-opt ({})", path.display()),
        None => format!(
            "binaryen {}'s wasm-opt (obtained by its sha256 once per machine, in the \
             background)",
            wasm_opt::PINNED_VERSION
        ),
    };
    tracing::info!("snapshots: {mode}; looking for {looking_for}");
    snapshots.obtain_wasm_opt();
}

/// The `kB` fields of `/proc/meminfo` that are asked for, when readable.
fn meminfo(fields: &[&str]) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            fields.contains(&name).then_some(())?;
            let kib = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some((name.to_string(), kib))
        })
        .collect()
}

/// The three load averages from `/proc/loadavg`, when readable.
fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// The machine's uptime in seconds from `/proc/uptime`, when readable.
fn system_uptime() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The lowest and highest frequency of the first core in MHz (cpufreq's bounds, else the
/// current frequency from `/proc/cpuinfo`), when known.
fn core_frequencies() -> Option<(f64, f64)> {
    let khz = |name: &str| {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cpufreq/{name}"))
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
    };
    if let (Some(min), Some(max)) = (khz("cpuinfo_min_freq"), khz("cpuinfo_max_freq")) {
        return Some((min / 1000.0, max / 1000.0));
    }
    let current = cpuinfo_field("cpu MHz")?.parse::<f64>().ok()?;
    Some((current, current))
}

/// The first value of `field` in `/proc/cpuinfo`.
fn cpuinfo_field(field: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == field).then(|| value.trim().to_string())
    })
}

/// The CPU's architecture as today's nodes name it (`x86_64`, `arm64`).
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    }
}

/// `(total, available)` kB (1000 bytes) of the file system holding `path`.
fn disk_kb(path: &std::path::Path) -> Option<(u64, u64)> {
    let stat = rustix::fs::statvfs(path).ok()?;
    let unit = stat.f_frsize.max(1);
    Some((
        stat.f_blocks.saturating_mul(unit) / 1000,
        stat.f_bavail.saturating_mul(unit) / 1000,
    ))
}

async fn usage(State(state): State<AppState>) -> Json<Value> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = meminfo(&["MemTotal", "MemFree", "MemAvailable"]);
    let load = load_average();
    let disk = disk_kb(state.executor().store().root());
    // Today's nodes report usage per minute: the period is the current minute.
    let now = unix_now() as i64;
    let period_start =
        chrono::DateTime::from_timestamp(now - now.rem_euclid(60), 0).unwrap_or_default();
    Json(json!({
        "cpu": {
            "count": cores,
            "load_average": load.map(|[l1, l5, l15]| json!({
                "load1": l1, "load5": l5, "load15": l15,
            })),
            "core_frequencies": core_frequencies().map(|(min, max)| json!({
                "min": min, "max": max,
            })),
        },
        "mem": {
            "total_kB": mem.get("MemTotal"),
            "free_kB": mem.get("MemFree"),
            "available_kB": mem.get("MemAvailable"),
        },
        "disk": disk.map(|(total, available)| json!({
            "total_kB": total, "available_kB": available,
        })),
        "period": {
            "start_timestamp": period_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "duration_seconds": 60,
        },
        "properties": {
            "cpu": {
                "architecture": architecture(),
                "vendor": cpuinfo_field("vendor_id"),
                "features": [],
            },
        },
        "gpu": {"devices": [], "available_devices": []},
        "active": true,
        "uptime_seconds": state.uptime().as_secs_f64(),
        "system_uptime_seconds": system_uptime(),
        "started": state.started_unix(),
        "now": unix_now(),
        "executions": {
            "running": state.in_flight(),
            "max_concurrent": state.config().max_concurrent,
            "queued": state.queued(),
            "queue_limit": state.config().queue_limit,
        },
        "memory_budget": state.executor().memory_use().map(|m| json!({
            "total_mib": m.total_mib,
            "reserved_mib": m.reserved_mib,
        })),
        "instance_pool": state.executor().pool_use().map(|p| json!({
            "slots": p.slots,
            "held": p.held,
        })),
    }))
}

/// Every program that has run since the node started, has idle warm instances or is
/// persistent, by item hash: executions started and running, idle instances, first and last
/// request (seconds since the epoch), the last outcome, each idle instance (up and idle time,
/// requests served, peak memory, fuel, memory held of the budget), and for a persistent program its
/// instance (`state`, `since`, `restarts`, `last_end`; `null` for other programs).
async fn executions(State(state): State<AppState>) -> Json<Value> {
    let idle = state.executor().idle_instances();
    let details = state.executor().instance_details();
    let programs = state.programs();
    let persistent = state.triggers().persistent_status();
    let mut hashes: Vec<&String> = programs
        .keys()
        .chain(idle.keys())
        .chain(persistent.keys())
        .collect();
    hashes.sort();
    hashes.dedup();
    let list: serde_json::Map<String, Value> = hashes
        .into_iter()
        .map(|hash| {
            let p = programs.get(hash).cloned().unwrap_or_default();
            let value = json!({
                "requests": p.requests,
                "running": p.running,
                "idle_instances": idle.get(hash).copied().unwrap_or(0),
                "instances": details.get(hash).cloned().unwrap_or_default(),
                "first_request": (p.requests > 0).then_some(p.first_request),
                "last_request": (p.requests > 0).then_some(p.last_request),
                "last_outcome": p.last_outcome,
                "persistent": persistent.get(hash),
            });
            (hash.clone(), value)
        })
        .collect();
    Json(Value::Object(list))
}
