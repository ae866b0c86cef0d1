//! Building: the prepared interpreter (once per interpreter) and a program's snapshot (once per
//! snapshot key), each cached on disk and built at most once at a time.
//!
//! A snapshot build boots the program on Wizer's instrumented copy of the prepared interpreter
//! (compiled once per prepared interpreter, through the compiled-module cache) with the
//! program's own preopens (private copies of the per-execution ones, [`super::mounts`])
//! and environment; at the checkpoint the host checks the stack
//! against the one the interpreter was prepared for, unwinds (`asyncify_start_unwind`), and once
//! `_start` has returned stops the unwind; Wizer then writes the paused state into a new module,
//! which is precompiled and cached next to its metadata (Asyncify data, clock, boot output).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use wasmtime::{Module, Store};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

use super::mounts::BuildMounts;
use super::prepare_cache::Prepared;
use super::restore::{Meta, Restorable};
use super::{Hook, Made, SnapshotEvent, SnapshotSource, Snapshots, cache, prepare};
use crate::channel::wire::{Frame, Item, Reader};
use crate::message::sha256_hex;
use crate::sandbox::output::{CappedOutput, SinkStream};
use crate::sandbox::{GuestSpec, GuestState, Sandbox, Stdio, StoreExtras, write_atomic};

/// Polls a future, turning a panic inside it into an error (a snapshot build must never take
/// the node down: a failure means a cold start).
struct CatchUnwind<'a, T>(Pin<Box<dyn Future<Output = T> + Send + 'a>>);

impl<T> Future for CatchUnwind<'_, T> {
    type Output = Result<T, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic_message(&panic))),
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    format!("internal error: {what}")
}

/// Runs CPU-heavy work off the async threads; a panic becomes an error.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: {e}"))?
}

fn compile(sandbox: &Sandbox, wasm: Vec<u8>) -> impl Future<Output = Result<Module, String>> {
    let engine = sandbox.engine().clone();
    blocking(move || Module::new(&engine, &wasm).map_err(|e| format!("cannot compile: {e:#}")))
}

/// What a run up to the checkpoint left behind.
struct Paused {
    store: Store<GuestState>,
    instance: Option<wasmtime::Instance>,
    result: Result<(), String>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Instantiates `module` (plain WASI + the checkpoint) and runs `_start` with `hook` until it
/// returns, traps, or `limit` passes. Stdin is empty: a guest that reads it without pausing
/// reads end-of-file.
async fn run_to_pause(
    sandbox: &Sandbox,
    module: &Module,
    spec: &GuestSpec,
    hook: Hook,
    fuel: u64,
    limit: Duration,
) -> Result<Paused, String> {
    let cap = sandbox.config().output_cap.max(1 << 20);
    let stdout = CappedOutput::new(cap);
    let stderr = CappedOutput::new(cap);
    let stdio = Stdio {
        stdin: Box::new(MemoryInputPipe::new(Vec::<u8>::new())),
        stdout: Box::new(SinkStream(stdout.clone())),
        stderr: Box::new(SinkStream(stderr.clone())),
    };
    let extras = StoreExtras {
        hook,
        clock_offset_ns: None,
    };
    let calls = spec.calls.make().one_at_a_time();
    let mut store = sandbox.new_store(spec, stdio, calls, fuel, None, extras)?;
    let linker = sandbox.linker_for(&store);
    let run = async {
        let instance = linker
            .instantiate_async(&mut store, module)
            .await
            .map_err(|e| format!("cannot instantiate: {e:#}"))?;
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .map_err(|e| format!("{e:#}"))?;
        let result = start
            .call_async(&mut store, ())
            .await
            .map_err(|e| format!("{e:#}"));
        Ok::<_, String>((instance, result))
    };
    let (instance, result) = match tokio::time::timeout(limit, run).await {
        Ok(Ok((instance, result))) => (Some(instance), result),
        Ok(Err(e)) => return Err(e),
        Err(_) => (None, Err(format!("no pause within {} s", limit.as_secs()))),
    };
    Ok(Paused {
        store,
        instance,
        result,
        stdout: stdout.captured().bytes,
        stderr: stderr.captured().bytes,
    })
}

/// Wizer's view of the paused instance.
struct State<'a> {
    store: &'a mut Store<GuestState>,
    instance: wasmtime::Instance,
}

impl InstanceState for State<'_> {
    async fn global_get(&mut self, name: &str, _type_hint: ValType) -> SnapshotVal {
        let value = self
            .instance
            .get_global(&mut *self.store, name)
            .map(|g| g.get(&mut *self.store));
        match value {
            Some(wasmtime::Val::I64(x)) => SnapshotVal::I64(x),
            Some(wasmtime::Val::F32(x)) => SnapshotVal::F32(x),
            Some(wasmtime::Val::F64(x)) => SnapshotVal::F64(x),
            Some(wasmtime::Val::V128(x)) => SnapshotVal::V128(x.as_u128()),
            Some(wasmtime::Val::I32(x)) => SnapshotVal::I32(x),
            // Wizer only asks for the globals it exported itself, which are numbers.
            _ => SnapshotVal::I32(0),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        match self.instance.get_memory(&mut *self.store, name) {
            Some(memory) => contents(memory.data(&*self.store)),
            None => contents(&[]),
        }
    }
}

/// What the boot wrote: whether the bootstrap said `READY`.
fn booted(stdout: &[u8]) -> Result<(), String> {
    let mut reader = Reader::new();
    reader.push(stdout);
    for item in reader {
        match item {
            Item::Frame(Frame::Ready(_)) => return Ok(()),
            Item::Frame(Frame::BootError(v)) => {
                return Err(format!(
                    "the program did not boot: {}",
                    v["message"].as_str().unwrap_or("")
                ));
            }
            _ => {}
        }
    }
    Err("the bootstrap never said it was ready".into())
}

impl Snapshots {
    /// The prepared interpreter for `source` (from memory, the cache, or prepared now).
    pub(super) async fn prepared(
        &self,
        sandbox: &Sandbox,
        source: &SnapshotSource,
        spec: &GuestSpec,
        fuel: u64,
        limit: Duration,
    ) -> Result<Arc<Prepared>, String> {
        let key = self.prepared_key(source, spec)?;
        let slot = Self::slot(&self.prepared, &key);
        let mut guard = slot.lock().await;
        if let Some(done) = self.current(&guard) {
            return done;
        }
        let started = Instant::now();
        let work = CatchUnwind(Box::pin(
            self.prepare_now(sandbox, &key, source, spec, fuel, limit),
        ));
        let result = work.await.and_then(|r| r).map(|(prepared, fresh)| {
            if fresh {
                self.record(SnapshotEvent::Prepared {
                    key: key.clone(),
                    ms: started.elapsed().as_millis() as u64,
                });
            }
            Arc::new(prepared)
        });
        *guard = Some(Made::now(result.clone()));
        result
    }

    async fn prepare_now(
        &self,
        sandbox: &Sandbox,
        key: &str,
        source: &SnapshotSource,
        spec: &GuestSpec,
        fuel: u64,
        limit: Duration,
    ) -> Result<(Prepared, bool), String> {
        let wasm_path = self.dir.join(format!("prepared-{key}.wasm"));
        let meta_path = self.dir.join(format!("prepared-{key}.json"));
        // Cached: its metadata now, its bytes (checked against the sha256) when needed.
        if let Ok(meta) = std::fs::read(&meta_path)
            && let Ok(mut prepared) = serde_json::from_slice::<Prepared>(&meta)
            && wasm_path.is_file()
        {
            prepared.path = wasm_path;
            return Ok((prepared, false));
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let path = source.interpreter_path.clone();
        let wasm_opt = self.wasm_opt();
        let (dir, tool) = (self.dir.clone(), wasm_opt.clone());
        let rewritten = blocking(move || {
            let original = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let rewritten = prepare::rewrite(&crate::sandbox::stack::relocate(&original)?)?;
            let work = tempfile::tempdir_in(&dir).map_err(|e| e.to_string())?;
            prepare::optimize(&tool, &rewritten, work.path())
        })
        .await?;
        let module = compile(sandbox, rewritten.wasm.clone()).await?;
        let mounts = BuildMounts::new(spec, &self.dir.join("tmp"))?;
        let paused =
            run_to_pause(sandbox, &module, &mounts.spec, Hook::Discover, fuel, limit).await?;
        let stack = match &paused.store.data().hook {
            Hook::Discovered(stack) => stack.clone(),
            _ => {
                return Err(format!(
                    "the interpreter never read stdin ({})",
                    paused.result.err().unwrap_or_else(|| "it ended".into())
                ));
            }
        };
        drop(paused);
        drop(module);
        let names = prepare::binaryen_names(&stack, rewritten.func_imports)?;
        let dir = self.dir.clone();
        let wasm = blocking(move || {
            let work = tempfile::tempdir_in(&dir).map_err(|e| e.to_string())?;
            prepare::asyncify(&wasm_opt, &rewritten.wasm, &names, work.path())
        })
        .await?;
        write_atomic(&wasm_path, &wasm).map_err(|e| e.to_string())?;
        let prepared = Prepared::made(sha256_hex(&wasm), stack, wasm_path, wasm);
        let meta = serde_json::to_vec(&prepared).map_err(|e| e.to_string())?;
        write_atomic(&meta_path, &meta).map_err(|e| e.to_string())?;
        tracing::info!(
            key,
            functions = prepared.stack.len(),
            "prepared the interpreter for snapshots"
        );
        Ok((prepared, true))
    }

    /// The snapshot `key` (from memory, the cache, or built now) and whether it already
    /// existed.
    pub(super) async fn restorable(
        &self,
        sandbox: &Sandbox,
        key: &str,
        prepared: &Prepared,
        spec: &GuestSpec,
        fuel: u64,
        limit: Duration,
    ) -> Result<(Arc<Restorable>, bool), String> {
        let slot = Self::slot(&self.snapshots, key);
        let mut guard = slot.lock().await;
        if let Some(done) = self.current(&guard) {
            return done.map(|r| (r, true));
        }
        let started = Instant::now();
        let work = CatchUnwind(Box::pin(
            self.build_now(sandbox, key, prepared, spec, fuel, limit),
        ));
        let result = work.await.and_then(|r| r);
        match result {
            Ok((r, compiled)) => {
                cache::touch(&self.dir, key);
                let existed = compiled.is_none();
                if let Some(modules_compiled) = compiled {
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::info!(key, ms, modules_compiled, "built a snapshot");
                    self.record(SnapshotEvent::Built {
                        key: key.into(),
                        ms,
                        modules_compiled,
                    });
                    cache::evict(&self.dir, self.config.cache_limit_bytes, &self.held());
                } else {
                    self.record(SnapshotEvent::Loaded { key: key.into() });
                }
                *guard = Some(Made::now(Ok(r.clone())));
                Ok((r, existed))
            }
            Err(e) => {
                *guard = Some(Made::now(Err(e.clone())));
                Err(e)
            }
        }
    }

    /// The snapshot from the disk cache (`None`), or built now (`Some`: how many modules the
    /// build compiled).
    async fn build_now(
        &self,
        sandbox: &Sandbox,
        key: &str,
        prepared: &Prepared,
        spec: &GuestSpec,
        fuel: u64,
        limit: Duration,
    ) -> Result<(Arc<Restorable>, Option<u32>), String> {
        let cwasm = self.dir.join(format!("{key}.cwasm"));
        let meta_path = self.dir.join(format!("{key}.json"));
        if let Ok(meta) = std::fs::read(&meta_path)
            && let Ok(meta) = serde_json::from_slice::<Meta>(&meta)
            && cwasm.is_file()
        {
            match Restorable::load(sandbox, key, &cwasm, meta) {
                Ok(r) => return Ok((Arc::new(r), None)),
                Err(e) => tracing::warn!(key, "cached snapshot unusable, building again: {e}"),
            }
        }
        let wizer = Wizer::new();
        let (cx, instrumented) = wizer
            .instrument(prepared.wasm()?)
            .map_err(|e| format!("cannot instrument: {e:#}"))?;
        // The instrumented interpreter is the same for every program of one prepared
        // interpreter: compiled once, through the compiled-module cache, so a build compiles
        // one module (its snapshot), not two. Between builds it is only on disk.
        let instrumented_hash = sha256_hex(&instrumented);
        let instrumented = sandbox
            .module_off_thread(&instrumented_hash, move || Ok(instrumented))
            .await
            .map_err(|e| format!("cannot compile: {e:#}"))?;
        sandbox.forget_module(&instrumented_hash);
        let modules_compiled = if instrumented.from_cache { 1 } else { 2 };
        let module = instrumented.module;
        let hook = Hook::Unwind {
            expected: prepared.stack.clone(),
            since: Instant::now(),
        };
        let mounts = BuildMounts::new(spec, &self.dir.join("tmp"))?;
        let mut paused = run_to_pause(sandbox, &module, &mounts.spec, hook, fuel, limit).await?;
        let (data, clock_ns) = match &paused.store.data().hook {
            // Under the determinism profile the clock at the pause is the virtual one.
            Hook::Unwinding { data, clock_ns } => match &paused.store.data().det {
                Some(det) => (*data, det.time.elapsed()),
                None => (*data, *clock_ns),
            },
            Hook::Refused(why) => return Err(why.clone()),
            _ => {
                return Err(format!(
                    "the interpreter did not pause: {}; stderr: {}",
                    match &paused.result {
                        Ok(()) => "it ended".to_string(),
                        Err(e) => e.clone(),
                    },
                    String::from_utf8_lossy(&paused.stderr).trim()
                ));
            }
        };
        paused.result.clone()?;
        booted(&paused.stdout)?;
        mounts.check_unchanged()?;
        let instance = paused
            .instance
            .ok_or("the instance is gone after the pause")?;
        instance
            .get_typed_func::<(), ()>(&mut paused.store, "asyncify_stop_unwind")
            .map_err(|e| format!("{e:#}"))?
            .call_async(&mut paused.store, ())
            .await
            .map_err(|e| format!("cannot stop the unwind: {e:#}"))?;
        let snapshot = wizer
            .snapshot(
                &cx,
                &mut State {
                    store: &mut paused.store,
                    instance,
                },
            )
            .await
            .map_err(|e| format!("cannot snapshot: {e:#}"))?;
        let meta = Meta {
            data,
            clock_ns,
            stdout: base64::engine::general_purpose::STANDARD.encode(&paused.stdout),
            reproducible: spec.determinism.is_some(),
        };
        drop(paused);
        drop(module);
        let module = compile(sandbox, snapshot).await?;
        let path = cwasm.clone();
        blocking(move || {
            let bytes = module.serialize().map_err(|e| format!("{e:#}"))?;
            write_atomic(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
        })
        .await?;
        let meta_bytes = serde_json::to_vec(&meta).map_err(|e| e.to_string())?;
        write_atomic(&meta_path, &meta_bytes).map_err(|e| e.to_string())?;
        Ok((
            Arc::new(Restorable::load(sandbox, key, &cwasm, meta)?),
            Some(modules_compiled),
        ))
    }
}

/// Removes a cached snapshot (its module and metadata), e.g. after it failed to restore.
pub(super) fn forget(dir: &Path, key: &str) {
    let _ = std::fs::remove_file(dir.join(format!("{key}.json")));
    let _ = std::fs::remove_file(dir.join(format!("{key}.cwasm")));
}
