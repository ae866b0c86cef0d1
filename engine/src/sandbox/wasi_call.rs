//! Calling the WASI preview 1 implementation from a host function that stands in for one of
//! its imports (the interposers of [`super::quota`] and [`super::meter`]).

/// Calls the WASI preview 1 implementation of `$func` with the caller's memory, exactly as the
/// linked import would, and evaluates to its errno.
macro_rules! call_wasi {
    ($caller:expr, $func:ident ( $($arg:expr),* )) => {{
        let caller: &mut Caller<'_, GuestState> = $caller;
        let fuel = wasmtime::AsContextMut::as_context_mut(&mut *caller).hostcall_fuel();
        match caller.get_export("memory") {
            Some(wasmtime::Extern::Memory(memory)) => {
                let (bytes, state) = memory.data_and_store_mut(&mut *caller);
                use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1 as _;
                state.wasi.set_hostcall_fuel(fuel);
                let mut guest = wiggle::GuestMemory::Unshared(bytes);
                wasmtime_wasi::p1::wasi_snapshot_preview1::$func(
                    &mut state.wasi, &mut guest, $($arg),*
                )
                .await
            }
            _ => Err(wasmtime::format_err!("missing required memory export")),
        }
    }};
}
