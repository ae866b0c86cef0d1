//! aleph-wasm runs Aleph.im `vm-function` (PROGRAM) messages inside a WebAssembly sandbox.
//!
//! Data flows one way, one module per step:
//!
//! message → [`store`] (resolve refs) → [`runtime`] + [`volumes`] (prepare) → [`sandbox`]
//! (wasmtime store, WASI context, limits) → [`interface`] (CGI, job) → [`outcome`] →
//! [`receipt`].
//!
//! [`message`] validates a message once, at [`message::parse`]; later steps trust the model.
//! [`host`] holds the capabilities a message may grant (outbound connections, the guest API),
//! reached by guests through [`channel`] calls or the `aleph_host` imports.
//! [`executor`] is the composition root that walks a message through the steps. [`cli`] is a
//! thin shell over the library.

#![deny(missing_docs)]

pub mod channel;
pub mod cli;
pub mod executor;
pub mod host;
pub mod interface;
pub mod message;
pub mod outcome;
pub mod receipt;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod volumes;

pub use executor::{Executor, ExecutorConfig, Isolation};
pub use interface::{HttpRequest, Trigger};
pub use outcome::{Outcome, OutcomeKind, Refusal};
pub use store::Store;
