//! Host capabilities for WASI modules: the import module `aleph_host` gives a module the same
//! host functions an interpreter reaches over its channel (`net.resolve`, `net.connect`, …;
//! `docs/host.md`), with the same arguments and results, through two functions:
//!
//! - `call(name_ptr, name_len, args_ptr, args_len) -> i64` runs the function `name` with the
//!   argument bytes and waits for it (other instances go on; the module's own execution waits).
//!   It returns the length of the result (≥ 0), or a negative WASI errno when the call failed;
//!   the failure's text (`kind: message`) is then the result to take.
//! - `take(ptr, len) -> i32` copies the first `len` bytes (at most) of the pending result into
//!   memory at `ptr`, removes them, and returns how many it copied.
//!
//! A call without the capability returns `-EACCES` (2) and the text names the flag.

use wasmtime::{Caller, Extern, Linker};

use super::GuestState;
use crate::host::kind;

/// The import module's name.
pub const MODULE: &str = "aleph_host";

/// The WASI errno of a failure kind (`docs/host.md`).
pub fn errno(failure_kind: &str) -> i64 {
    match failure_kind {
        kind::PERMISSION | kind::FORBIDDEN => 2,  // EACCES
        kind::DNS => 3,                           // EADDRNOTAVAIL (no address for the name)
        kind::REFUSED => 14,                      // ECONNREFUSED
        kind::RESET => 15,                        // ECONNRESET
        kind::TIMEOUT => 73,                      // ETIMEDOUT
        kind::TLS => 65,                          // EPROTO
        kind::LIMIT => 13,                        // ECONNABORTED
        kind::BAD_HANDLE => 8,                    // EBADF
        kind::BAD_ARGS => 28,                     // EINVAL
        "unknown_call" => 52,                     // ENOSYS
        crate::channel::calls::WOULD_BLOCK => 16, // EDEADLK
        _ => 29,                                  // EIO
    }
}

fn memory<'a>(caller: &mut Caller<'a, GuestState>) -> Option<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

fn read(caller: &mut Caller<'_, GuestState>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let memory = memory(caller)?;
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    memory
        .data(&*caller)
        .get(start..start.checked_add(len)?)
        .map(<[u8]>::to_vec)
}

/// Adds `aleph_host.call` and `aleph_host.take` to `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    linker
        .func_wrap_async(
            MODULE,
            "call",
            |mut caller: Caller<'_, GuestState>,
             (name_ptr, name_len, args_ptr, args_len): (i32, i32, i32, i32)| {
                Box::new(async move {
                    let (Some(name), Some(args)) = (
                        read(&mut caller, name_ptr, name_len),
                        read(&mut caller, args_ptr, args_len),
                    ) else {
                        return Ok(-21); // EFAULT: outside the module's memory
                    };
                    let Ok(name) = String::from_utf8(name) else {
                        caller.data_mut().pending = b"bad_args: the name is not UTF-8".to_vec();
                        return Ok(-28);
                    };
                    let calls = caller.data().calls.clone();
                    let (code, bytes) = match calls.call(&name, args).await {
                        Ok(result) => (result.len() as i64, result),
                        Err(failure) => (
                            -errno(&failure.kind),
                            format!("{}: {}", failure.kind, failure.message).into_bytes(),
                        ),
                    };
                    caller.data_mut().pending = bytes;
                    Ok(code)
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot link {MODULE}.call: {e}"))?;
    linker
        .func_wrap(
            MODULE,
            "take",
            |mut caller: Caller<'_, GuestState>, ptr: i32, len: i32| -> i32 {
                let Some(memory) = memory(&mut caller) else {
                    return -21;
                };
                let n = (len.max(0) as usize).min(caller.data().pending.len());
                let bytes: Vec<u8> = caller.data_mut().pending.drain(..n).collect();
                match memory.write(&mut caller, ptr as u32 as usize, &bytes) {
                    Ok(()) => n as i32,
                    Err(_) => -21,
                }
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot link {MODULE}.take: {e}"))?;
    Ok(())
}
