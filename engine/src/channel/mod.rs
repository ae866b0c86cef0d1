//! The channel between the host and a long-lived interpreter instance: protocol AW4
//! (`docs/channel.md`), owned here end to end on the host's side.
//!
//! - [`wire`]: frames as bytes and back — the only encoder and decoder, checked against the
//!   test vectors the guest's bootstrap also checks;
//! - [`pipe`]: the guest's stdin, fed by the host, and line-split output streams;
//! - [`session`]: one instance's requests in flight: ids, the demultiplexing of what the guest
//!   writes, the instance's own frames and logs;
//! - [`calls`]: the guest's calls of host functions, answered while other requests proceed.
//!
//! `interface::asgi` maps ASGI onto these frames and `executor` drives instances with them.

pub mod calls;
pub(crate) mod pipe;
pub(crate) mod session;
pub mod wire;

pub use calls::{
    Builtin, CallResult, CallsFactory, HostCalls, InstanceCalls, OrderedCalls, Replies,
};
pub use wire::{CallFailure, Frame, PROTOCOL, RequestHead};

/// The REPL line that starts serving on an instance paused after its boot: reseeds Python's
/// `random` with `seed_hex` (32 bytes in hex) and enters the serving loop, concurrent or
/// sequential.
pub fn enter_line(seed_hex: &str, concurrent: bool) -> Vec<u8> {
    format!(
        "__aleph_wasm__.run(\"{seed_hex}\", {})\n",
        u8::from(concurrent)
    )
    .into_bytes()
}
