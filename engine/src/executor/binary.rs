//! Binary programs: the code is a WASI command module, run once per trigger — CGI-style with
//! an HTTP request, as a job without one.

use std::path::{Component, Path};

use crate::interface::{Trigger, cgi};
use crate::message::{CodeSource, Encoding, Interface, ProgramContent};
use crate::outcome::{ModuleCache, Outcome, OutcomeKind};
use crate::runtime::ResolvedRuntime;
use crate::sandbox::determinism::Determinism;
use crate::sandbox::{GuestEnd, GuestRun, GuestSpec, LoadedModule};
use crate::volumes::{self, ExportPlan, ResolvedInput};

use super::Executor;
use super::asgi::BootError;

/// The module a program runs, with what it was made from.
pub(super) struct Code {
    hash: String,
    bytes: Option<Vec<u8>>,
    dir: Option<std::path::PathBuf>,
    inputs: Vec<ResolvedInput>,
}

/// A binary program made ready to run for one trigger: the compiled module, the guest's spec,
/// the execution directory behind its mounts, its export plan and what it was made from.
pub(super) struct Prepared {
    pub(super) loaded: LoadedModule,
    pub(super) spec: GuestSpec,
    pub(super) export: Option<ExportPlan>,
    pub(super) inputs: Vec<ResolvedInput>,
    /// A reproducible execution's reads through the guest API.
    pub(super) reads: Option<crate::host::recorded::ReadLog>,
    /// Keeps the per-execution directory (data, export, ephemeral volumes) alive.
    pub(super) exec_dir: tempfile::TempDir,
    /// The persistent volumes the execution mounts, held until it is over.
    pub(super) lease: super::volume_lease::VolumeLease,
    /// The execution's share of the node's memory, held until it is over; taken after `lease`.
    pub(super) memory: super::memory::Reservation,
}

impl Executor {
    /// Runs a binary program once.
    pub(super) async fn execute_binary(
        &self,
        item_hash: &str,
        program: &ProgramContent,
        runtime: ResolvedRuntime,
        trigger: &Trigger,
        determinism: Option<Determinism>,
    ) -> Result<Outcome, String> {
        let prepared = match self
            .prepare_binary(item_hash, program, runtime, trigger, determinism)
            .await
        {
            Ok(prepared) => prepared,
            Err(BootError::Refused(refused)) => return Ok(refused.outcome()),
            Err(e) => return Err(e.into()),
        };
        let run = self
            .sandbox
            .run(&prepared.loaded.module, prepared.spec)
            .await;
        let mut outcome = interpret(run, trigger);
        outcome.module_cache = Some(if prepared.loaded.from_cache {
            ModuleCache::Hit
        } else {
            ModuleCache::Miss
        });
        outcome.inputs = prepared.inputs;
        super::reproducible::record_reads(&mut outcome, prepared.reads.as_ref());
        if let Some(plan) = &prepared.export
            && !matches!(outcome.kind, OutcomeKind::Error | OutcomeKind::Inconclusive)
        {
            match volumes::collect_export(&self.store, plan, &program.address, program.time) {
                Ok(info) => outcome.export = Some(info),
                Err(e) => {
                    outcome.kind = OutcomeKind::Error;
                    outcome.error = Some(e.to_string());
                }
            }
        }
        drop(prepared.exec_dir);
        Ok(outcome)
    }

    /// Resolves, unpacks, mounts and compiles what a binary program needs for `trigger`:
    /// CGI meta-variables and the body on stdin for a request, the message JSON on stdin for
    /// a message, nothing more for a job or a cron tick.
    pub(super) async fn prepare_binary(
        &self,
        item_hash: &str,
        program: &ProgramContent,
        runtime: ResolvedRuntime,
        trigger: &Trigger,
        determinism: Option<Determinism>,
    ) -> Result<Prepared, BootError> {
        if program.code.interface != Interface::Binary {
            return Err(format!(
                "content.code.interface: runtime {:?} runs WASI modules, which speak the binary \
                 interface, not {:?}",
                runtime.manifest.name, program.code.interface
            )
            .into());
        }
        let mut inputs = vec![ResolvedInput {
            field: "content.runtime".into(),
            resolved: runtime.resolved.clone(),
        }];
        let code = self.code(program)?;
        inputs.extend(code.inputs.iter().cloned());

        let exec_dir = tempfile::tempdir_in(self.store.tmp_dir())
            .map_err(|e| format!("cannot make the execution directory: {e}"))?;
        let mounts = volumes::prepare(
            &self.store,
            program,
            code.dir.as_deref(),
            &[volumes::CODE_MOUNT],
            exec_dir.path(),
            &self.config.volumes,
        )
        .map_err(|e| e.to_string())?;
        inputs.extend(mounts.inputs.iter().cloned());
        // The volumes first, then the memory: an execution that waits for another one to let go
        // of a volume holds none of the node's memory meanwhile.
        let lease = self.lease_volumes(&mounts.preopens).await?;
        let memory = self.reserve_memory(program.resources.memory_mib).await?;

        let hash = code.hash.clone();
        let loaded = {
            let bytes = code.bytes;
            let dir = code.dir.clone();
            let entry = program.code.entrypoint.clone();
            self.sandbox
                .module_off_thread(&hash, move || match (bytes, dir) {
                    (Some(b), _) => Ok(b),
                    (None, Some(d)) => Ok(std::fs::read(d.join(entry))?),
                    (None, None) => anyhow::bail!("no code"),
                })
                .await
                .map_err(|e| format!("content.code: {e:#}"))?
        };

        let mut env: Vec<(String, String)> = program
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut stdin = Vec::new();
        match trigger {
            Trigger::Http(req) => {
                env.extend(cgi::environment(req));
                stdin = req.body.clone();
            }
            Trigger::Message(message) => stdin = message.to_string().into_bytes(),
            Trigger::Job | Trigger::Cron { .. } => {}
        }
        let granted = self.grant(item_hash, program, &mut env).await?;
        let mut args = vec![program.code.entrypoint.clone()];
        args.extend(program.code.args.iter().cloned());
        let spec = GuestSpec {
            args,
            env,
            stdin,
            preopens: mounts.preopens,
            memory_bytes: program.resources.memory_mib.saturating_mul(1 << 20),
            seconds: program.resources.seconds,
            // A WASI program has no boot phase of its own: the execution key throughout.
            determinism: determinism.map(Determinism::without_boot_phase),
            calls: granted.calls,
        };
        Ok(Prepared {
            loaded,
            spec,
            export: mounts.export,
            inputs,
            reads: granted.reads,
            exec_dir,
            lease,
            memory,
        })
    }

    /// Resolves the code to module bytes (or a file in an unpacked archive).
    pub(super) fn code(&self, program: &ProgramContent) -> Result<Code, String> {
        let code = &program.code;
        let r = match &code.source {
            CodeSource::Inline(text) => {
                return Ok(Code {
                    hash: crate::message::sha256_hex(text.as_bytes()),
                    bytes: Some(text.as_bytes().to_vec()),
                    dir: None,
                    inputs: Vec::new(),
                });
            }
            CodeSource::Ref(r) => r,
        };
        let resolved = self
            .store
            .resolve(r)
            .map_err(|e| format!("content.code: {e}"))?;
        let input = ResolvedInput {
            field: "content.code".into(),
            resolved: resolved.clone(),
        };
        if code.encoding == Encoding::Plain {
            let bytes = self
                .store
                .read_object(&resolved.file_hash)
                .map_err(|e| format!("content.code: {e}"))?;
            return Ok(Code {
                hash: resolved.file_hash,
                bytes: Some(bytes),
                dir: None,
                inputs: vec![input],
            });
        }
        let dir = volumes::unpack_encoded(
            &self.store,
            &resolved,
            code.encoding,
            "code",
            &self.config.volumes.unpack,
        )
        .map_err(|e| format!("content.code: {e}"))?;
        let entry = Path::new(&code.entrypoint);
        if entry
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(format!(
                "content.code.entrypoint: {:?} must be a relative path inside the code archive",
                code.entrypoint
            ));
        }
        let path = dir.join(entry);
        let meta = std::fs::symlink_metadata(&path).map_err(|_| {
            format!(
                "content.code.entrypoint: {:?} is not in the code archive",
                code.entrypoint
            )
        })?;
        if !meta.is_file() {
            return Err(format!(
                "content.code.entrypoint: {:?} is not a regular file in the code archive",
                code.entrypoint
            ));
        }
        let mut file = std::fs::File::open(&path).map_err(|e| format!("content.code: {e}"))?;
        let hash =
            crate::store::sha256_reader(&mut file).map_err(|e| format!("content.code: {e}"))?;
        Ok(Code {
            hash,
            bytes: None,
            dir: Some(dir),
            inputs: vec![input],
        })
    }
}

/// Turns what the sandbox saw into an outcome, reading the CGI response for HTTP triggers.
fn interpret(run: GuestRun, trigger: &Trigger) -> Outcome {
    let mut outcome = Outcome::error("");
    outcome.error = None;
    outcome.fuel_consumed = run.fuel_consumed;
    outcome.elapsed_ms = run.elapsed.as_millis() as u64;
    outcome.stderr = run.stderr;
    match run.end {
        GuestEnd::Exited(0) => {
            outcome.kind = OutcomeKind::Ok;
            outcome.exit_code = Some(0);
            if let Trigger::Http(_) = trigger {
                match cgi::parse_response(&run.stdout.bytes) {
                    Ok(resp) => {
                        outcome.status = Some(resp.status);
                        outcome.headers = resp.headers;
                        outcome.body = resp.body;
                        if run.stdout.dropped > 0 {
                            outcome.kind = OutcomeKind::Error;
                            outcome.status = None;
                            outcome.headers.clear();
                            outcome.body.clear();
                            outcome.error = Some(format!(
                                "the CGI response is larger than the output cap ({} bytes dropped)",
                                run.stdout.dropped
                            ));
                        }
                    }
                    Err(e) => {
                        outcome.kind = OutcomeKind::Error;
                        outcome.error = Some(format!("malformed CGI response: {e}"));
                    }
                }
            }
        }
        GuestEnd::Exited(code) => {
            outcome.kind = OutcomeKind::Exit;
            outcome.exit_code = Some(code);
            outcome.error = Some(format!("the program exited with code {code}"));
        }
        GuestEnd::Timeout(why) => {
            outcome.kind = OutcomeKind::Timeout;
            outcome.error = Some(why);
        }
        GuestEnd::OutOfMemory(why) => {
            outcome.kind = OutcomeKind::OutOfMemory;
            outcome.error = Some(why);
        }
        GuestEnd::Trap(why) => {
            outcome.kind = OutcomeKind::Trap;
            outcome.error = Some(why);
        }
        GuestEnd::StackOverflow(why) => {
            outcome.kind = OutcomeKind::StackOverflow;
            outcome.error = Some(why);
        }
        GuestEnd::Error(why) => {
            outcome.kind = OutcomeKind::Error;
            outcome.error = Some(why);
        }
        GuestEnd::Inconclusive(why) => {
            outcome.kind = OutcomeKind::Inconclusive;
            outcome.error = Some(why);
        }
    }
    if !(outcome.kind == OutcomeKind::Ok && matches!(trigger, Trigger::Http(_))) {
        outcome.stdout = run.stdout;
    }
    outcome
}
