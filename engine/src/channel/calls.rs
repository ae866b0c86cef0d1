//! Calls from the guest to the host: a guest's `CALL` frame names a function and passes
//! bytes; the session hands it to a [`HostCalls`] on a task of its own and writes the answer
//! back as a `REPLY`, while the guest's other requests go on.
//!
//! Which functions exist is the embedder's choice: a node grants host capabilities per program
//! by the [`HostCalls`] it gives each instance. [`Builtin`] has the functions every instance
//! gets.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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

/// Makes the [`HostCalls`] of each new instance of a program: an instance's calls hold its
/// state (open connections), which ends with it. By default every instance gets [`Builtin`].
#[derive(Clone)]
pub struct CallsFactory(Arc<dyn Fn() -> Arc<dyn HostCalls> + Send + Sync>);

impl CallsFactory {
    /// A factory calling `make` once per instance.
    pub fn new(make: impl Fn() -> Arc<dyn HostCalls> + Send + Sync + 'static) -> Self {
        Self(Arc::new(make))
    }

    /// The calls of a new instance.
    pub fn make(&self) -> Arc<dyn HostCalls> {
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
