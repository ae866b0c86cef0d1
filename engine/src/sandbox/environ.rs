//! The environment imports, `environ_sizes_get` and `environ_get`, answered from the guest's
//! environment encoded once per store.
//!
//! WASI preview 1's implementation rebuilds the environment for every call: a copy of each
//! name and value, then a walk that writes them into guest memory piece by piece. Most guests
//! read their environment once, at start-up, and that cost does not matter. Some read it on
//! every system call: the prebuilt python-3.12 interpreter embeds a virtual file system that
//! looks up one variable before each `fd_read`, `fd_write` and `poll_oneoff`, with both imports
//! each time. There the copies were a fifth of the host's instructions for a
//! request served alone (`benches/server-instructions.sh`).
//!
//! The answers are the same bytes as WASI's, so a guest cannot tell the two apart: the sizes,
//! then an array of pointers and the `NAME=value\0` strings they point to. A pointer outside the
//! guest's memory, or a misaligned one, traps, as it does there. Host calls consume no fuel, so
//! fuel counts and receipts do not change.

use wasmtime::{Caller, Linker};

use super::GuestState;

/// One guest's environment as WASI hands it over.
#[derive(Debug)]
pub(crate) struct Environ {
    /// `NAME=value\0` for each variable, in order.
    strings: Vec<u8>,
    /// Where each variable starts in `strings`.
    offsets: Vec<u32>,
}

impl Environ {
    /// Encodes `vars` in the order given.
    pub(crate) fn new(vars: &[(String, String)]) -> Self {
        let mut strings = Vec::new();
        let mut offsets = Vec::with_capacity(vars.len());
        for (name, value) in vars {
            offsets.push(strings.len() as u32);
            strings.extend_from_slice(name.as_bytes());
            strings.push(b'=');
            strings.extend_from_slice(value.as_bytes());
            strings.push(0);
        }
        Environ { strings, offsets }
    }

    /// Writes the pointer array at `environ` and the strings at `buf` into `memory`.
    fn write_into(&self, memory: &mut [u8], environ: u32, buf: u32) -> Result<(), String> {
        let pointers = range(memory.len(), environ, 4, self.offsets.len() * 4)?;
        let strings = range(memory.len(), buf, 1, self.strings.len())?;
        // Each variable starts inside the strings' range, which is inside a 32-bit memory.
        for (slot, offset) in memory[pointers].chunks_exact_mut(4).zip(&self.offsets) {
            slot.copy_from_slice(&(buf + offset).to_le_bytes());
        }
        memory[strings].copy_from_slice(&self.strings);
        Ok(())
    }
}

/// The range of `len` bytes at the guest's pointer `at` in a memory of `size` bytes: an error
/// when `at` is not a multiple of `align` or the range is not inside the memory.
fn range(size: usize, at: u32, align: u32, len: usize) -> Result<std::ops::Range<usize>, String> {
    if !at.is_multiple_of(align) {
        return Err(format!(
            "the guest's pointer {at:#x} is not aligned to {align} bytes"
        ));
    }
    let start = at as usize;
    match start.checked_add(len) {
        Some(end) if end <= size => Ok(start..end),
        _ => Err(format!(
            "{len} bytes at the guest's pointer {at:#x} are outside its memory"
        )),
    }
}

/// Runs `f` on the guest's memory and its state; an error of `f` traps, naming `call`.
fn with_memory(
    caller: &mut Caller<'_, GuestState>,
    call: &str,
    f: impl FnOnce(&mut [u8], &GuestState) -> Result<(), String>,
) -> wasmtime::Result<i32> {
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        wasmtime::bail!("{call}: the guest exports no memory");
    };
    let (bytes, state) = memory.data_and_store_mut(&mut *caller);
    f(bytes, state).map_err(|e| wasmtime::format_err!("{call}: {e}"))?;
    Ok(0)
}

/// Adds the two imports to `linker`, in place of WASI preview 1's.
pub(super) fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "environ_sizes_get",
            |mut caller: Caller<'_, GuestState>, count: i32, size: i32| {
                with_memory(&mut caller, "environ_sizes_get", |memory, state| {
                    let env = &state.environ;
                    let words = [
                        (count as u32, env.offsets.len() as u32),
                        (size as u32, env.strings.len() as u32),
                    ];
                    for (at, value) in words {
                        let r = range(memory.len(), at, 4, 4)?;
                        memory[r].copy_from_slice(&value.to_le_bytes());
                    }
                    Ok(())
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot link environ_sizes_get: {e}"))?;
    linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "environ_get",
            |mut caller: Caller<'_, GuestState>, environ: i32, buf: i32| {
                with_memory(&mut caller, "environ_get", |memory, state| {
                    state.environ.write_into(memory, environ as u32, buf as u32)
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot link environ_get: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pointers_and_strings_as_wasi_does() {
        let env = Environ::new(&[
            ("A".into(), "1".into()),
            ("PATH".into(), "/x=y".into()),
            ("EMPTY".into(), String::new()),
        ]);
        let mut memory = vec![0xaa; 64];
        env.write_into(&mut memory, 4, 20).unwrap();
        let words: Vec<u32> = memory[4..16]
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(words, [20, 24, 34]);
        assert_eq!(&memory[20..41], b"A=1\0PATH=/x=y\0EMPTY=\0");
        assert_eq!(memory[41], 0xaa, "nothing is written past the strings");
    }

    #[test]
    fn misaligned_or_outside_pointers_are_refused() {
        let env = Environ::new(&[("A".into(), "1".into())]);
        let mut memory = vec![0; 16];
        let e = env.write_into(&mut memory, 2, 8).unwrap_err();
        assert!(e.contains("not aligned to 4 bytes"), "{e}");
        let e = env.write_into(&mut memory, 0, 13).unwrap_err();
        assert!(
            e.contains("4 bytes at the guest's pointer 0xd are outside"),
            "{e}"
        );
        assert_eq!(
            range(16, u32::MAX, 1, 2),
            Err(format!(
                "2 bytes at the guest's pointer {:#x} are outside its memory",
                u32::MAX
            ))
        );
    }
}
