//! Calls from the guest to the host: a guest's `CALL` frame names a function and passes
//! bytes; the session hands it to a [`HostCalls`] on a task of its own and writes the answer
//! back as a `REPLY`, while the guest's other requests go on.
//!
//! Which functions exist is the embedder's choice: a node grants host capabilities per program
//! by the [`HostCalls`] it gives each instance. [`Builtin`] has the functions every instance
//! gets.
//!
//! A reproducible instance's calls must be answered in an order that depends on nothing but the
//! calls themselves: its functions are [`OrderedCalls`], which the session hands the calls one
//! at a time, in the order the guest made them, and which say which replies each call makes due
//! (its own, or earlier calls' it completed); the session writes them in that order.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::wire::CallFailure;

/// What a call returns: the result bytes, or why it failed.
pub type CallResult = Result<Vec<u8>, CallFailure>;

/// The host functions an instance may call.
pub trait HostCalls: Send + Sync + 'static {
    /// Runs the call `name` with `args`. An unknown name fails with the kind `unknown_call`.
    fn call<'a>(
        &'a self,
        name: &'a str,
        args: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>>;
}

/// The functions every instance gets: `ping` (answers its argument bytes).
#[derive(Debug, Clone, Copy, Default)]
pub struct Builtin;

impl HostCalls for Builtin {
    fn call<'a>(
        &'a self,
        name: &'a str,
        args: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>> {
        Box::pin(async move {
            match name {
                "ping" => Ok(args),
                other => Err(unknown(other)),
            }
        })
    }
}

/// The failure of a call to a function that does not exist.
pub fn unknown(name: &str) -> CallFailure {
    CallFailure {
        kind: "unknown_call".into(),
        message: format!("the host has no function {name:?}"),
    }
}

/// The failure kind of an ordered call made by a caller that waits ([`InstanceCalls::one_at_a_time`])
/// when the call cannot be answered before a later one.
pub const WOULD_BLOCK: &str = "would_block";

/// The replies due after a call: call ids and their results, in the order they are written.
pub type Replies = Vec<(u32, CallResult)>;

/// Host functions whose answers, and the order of their answers, depend only on the calls the
/// guest made (a reproducible instance's). They get one call at a time, in the guest's order,
/// and return the replies due once it is taken: its own when it is answered at once, earlier
/// calls' that it completed (a read waiting for an answer this call made), or none when it waits.
pub trait OrderedCalls: Send + 'static {
    /// Takes call `id` of `name` with `args`; returns the replies now due, in order.
    fn call<'a>(
        &'a mut self,
        id: u32,
        name: &'a str,
        args: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Replies> + Send + 'a>>;
}

/// The host functions of one instance: answered concurrently, or in order.
#[derive(Clone)]
pub enum InstanceCalls {
    /// Each call runs on a task of its own; replies go out as calls finish.
    Concurrent(Arc<dyn HostCalls>),
    /// Calls are taken one at a time in the guest's order ([`OrderedCalls`]).
    Ordered(Arc<tokio::sync::Mutex<Box<dyn OrderedCalls>>>),
}

impl InstanceCalls {
    /// The same functions for a caller that waits for each answer before it calls again (a WASI
    /// module's imports). An ordered call that would wait fails instead: nothing else can answer
    /// it while the caller waits.
    pub fn one_at_a_time(&self) -> Arc<dyn HostCalls> {
        match self {
            InstanceCalls::Concurrent(calls) => Arc::clone(calls),
            InstanceCalls::Ordered(calls) => Arc::new(Sequential {
                calls: Arc::clone(calls),
                next_id: AtomicU32::new(1),
            }),
        }
    }
}

/// Ordered calls made by a caller that waits for each answer.
struct Sequential {
    calls: Arc<tokio::sync::Mutex<Box<dyn OrderedCalls>>>,
    next_id: AtomicU32,
}

impl HostCalls for Sequential {
    fn call<'a>(
        &'a self,
        name: &'a str,
        args: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>> {
        Box::pin(async move {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let replies = self.calls.lock().await.call(id, name, args).await;
            replies
                .into_iter()
                .find_map(|(reply_id, result)| (reply_id == id).then_some(result))
                .unwrap_or_else(|| {
                    Err(CallFailure {
                        kind: WOULD_BLOCK.into(),
                        message: format!(
                            "{name} would wait for something only a later call can bring, and \
                             the caller waits for it"
                        ),
                    })
                })
        })
    }
}

/// Makes the host functions of each new instance of a program: an instance's calls hold its
/// state (open connections), which ends with it. By default every instance gets [`Builtin`].
#[derive(Clone)]
pub struct CallsFactory(Arc<dyn Fn() -> InstanceCalls + Send + Sync>);

impl CallsFactory {
    /// A factory calling `make` once per instance.
    pub fn new(make: impl Fn() -> Arc<dyn HostCalls> + Send + Sync + 'static) -> Self {
        Self(Arc::new(move || InstanceCalls::Concurrent(make())))
    }

    /// A factory of ordered calls ([`OrderedCalls`]), calling `make` once per instance.
    pub fn ordered(make: impl Fn() -> Box<dyn OrderedCalls> + Send + Sync + 'static) -> Self {
        Self(Arc::new(move || {
            InstanceCalls::Ordered(Arc::new(tokio::sync::Mutex::new(make())))
        }))
    }

    /// The calls of a new instance.
    pub fn make(&self) -> InstanceCalls {
        (self.0)()
    }
}

impl Default for CallsFactory {
    fn default() -> Self {
        Self::new(|| Arc::new(Builtin))
    }
}

impl std::fmt::Debug for CallsFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallsFactory")
    }
}
