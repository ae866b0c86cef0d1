//! Outcomes: how an execution ended, what it produced, and its JSON form.

use base64::Engine as _;
use serde::Serialize;

use crate::sandbox::output::Captured;
use crate::sandbox::snapshot::InterpreterModule;
use crate::volumes::{ExportInfo, ResolvedInput};

/// How an execution ended. Each kind is distinct; only `inconclusive` is the host's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// The program finished normally (exit code 0; for HTTP, a well-formed response).
    Ok,
    /// The program exited with a non-zero code.
    Exit,
    /// `resources.seconds` ran out (wall-clock deadline or fuel budget).
    Timeout,
    /// A memory growth was refused by `resources.memory` and the program then failed.
    OutOfMemory,
    /// The program trapped.
    Trap,
    /// The program exhausted its stack. Its own kind: where a stack overflows depends on the
    /// engine build, so a verifier treats a difference involving it as inconclusive.
    StackOverflow,
    /// The program could not be run: bad message, missing object, bad archive, malformed
    /// response …
    Error,
    /// A reproducible execution could not be completed for a host reason (the wall-clock
    /// safety net): the result says nothing about the program.
    Inconclusive,
}

impl OutcomeKind {
    /// The snake_case name used in JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Ok => "ok",
            OutcomeKind::Exit => "exit",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::OutOfMemory => "out_of_memory",
            OutcomeKind::Trap => "trap",
            OutcomeKind::StackOverflow => "stack_overflow",
            OutcomeKind::Error => "error",
            OutcomeKind::Inconclusive => "inconclusive",
        }
    }
}

/// What was full when the node, rather than the program, kept an execution from starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The node's memory budget could not hold the program's `resources.memory`.
    MemoryBudget,
    /// Every slot of the engine's instance pool is held by a live instance.
    InstancePool,
}

impl Refusal {
    /// The snake_case name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MemoryBudget => "memory_budget",
            Refusal::InstancePool => "instance_pool",
        }
    }
}

/// Whether the compiled module came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleCache {
    /// Loaded from the compiled-module cache.
    Hit,
    /// Compiled during this execution (and cached).
    Miss,
}

/// Everything one execution produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// How it ended.
    pub kind: OutcomeKind,
    /// The HTTP status (HTTP triggers that produced a response).
    pub status: Option<u16>,
    /// The HTTP response headers.
    pub headers: Vec<(String, String)>,
    /// The HTTP response body.
    pub body: Vec<u8>,
    /// The exit code, when the program exited.
    pub exit_code: Option<i32>,
    /// What went wrong, for every kind but `ok`.
    pub error: Option<String>,
    /// Captured stdout (for HTTP programs, what followed the response is not here).
    pub stdout: Captured,
    /// Captured stderr.
    pub stderr: Captured,
    /// Fuel consumed.
    pub fuel_consumed: u64,
    /// Wall-clock milliseconds of the guest's execution.
    pub elapsed_ms: u64,
    /// The stored export, when the program has an export mount.
    pub export: Option<ExportInfo>,
    /// Whether the module was compiled or loaded from the cache.
    pub module_cache: Option<ModuleCache>,
    /// Every object the execution was made from.
    pub inputs: Vec<ResolvedInput>,
    /// What a reproducible execution read through the guest API (content named by its hash),
    /// in the order first read.
    pub reads: Vec<crate::host::recorded::Read>,
    /// Whether the execution started a new instance (a cold start) rather than reusing a warm
    /// one.
    pub cold_start: bool,
    /// For an interpreter runtime, the interpreter module that ran (the original or the one
    /// prepared for snapshots: fuel counts differ between them).
    pub interpreter: Option<InterpreterModule>,
    /// Whether the instance that ran it was restored from a snapshot rather than booted.
    pub restored: bool,
    /// Set when the node had no room to start an instance (an `error` outcome that says
    /// nothing about the program; the node service answers it 503).
    pub refused: Option<Refusal>,
}

impl Outcome {
    /// An `error` outcome with a message.
    pub fn error(message: impl Into<String>) -> Self {
        Outcome {
            kind: OutcomeKind::Error,
            status: None,
            headers: Vec::new(),
            body: Vec::new(),
            exit_code: None,
            error: Some(message.into()),
            stdout: Captured::default(),
            stderr: Captured::default(),
            fuel_consumed: 0,
            elapsed_ms: 0,
            export: None,
            module_cache: None,
            inputs: Vec::new(),
            reads: Vec::new(),
            cold_start: false,
            interpreter: None,
            restored: false,
            refused: None,
        }
    }

    /// Whether the execution ended normally.
    pub fn is_ok(&self) -> bool {
        self.kind == OutcomeKind::Ok
    }

    /// The JSON object printed by `aleph-wasm run --json`.
    pub fn to_json(&self) -> serde_json::Value {
        let inputs: Vec<_> = self
            .inputs
            .iter()
            .map(|i| {
                serde_json::json!({
                    "field": i.field,
                    "ref": i.resolved.reference,
                    "message_hash": i.resolved.message_hash,
                    "file_hash": i.resolved.file_hash,
                })
            })
            .collect();
        serde_json::json!({
            "outcome": self.kind.as_str(),
            "status": self.status,
            "headers": self.headers.iter().map(|(k, v)| [k, v]).collect::<Vec<_>>(),
            "body_base64": base64::engine::general_purpose::STANDARD.encode(&self.body),
            "exit_code": self.exit_code,
            "error": self.error,
            "stdout": String::from_utf8_lossy(&self.stdout.bytes),
            "stderr": String::from_utf8_lossy(&self.stderr.bytes),
            "stdout_dropped": self.stdout.dropped,
            "stderr_dropped": self.stderr.dropped,
            "fuel_consumed": self.fuel_consumed,
            "elapsed_ms": self.elapsed_ms,
            "export": self.export,
            "module_cache": self.module_cache,
            "cold_start": self.cold_start,
            "interpreter": self.interpreter,
            "restored": self.restored,
            "inputs": inputs,
        })
    }
}
