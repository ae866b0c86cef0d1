//! The prepared interpreter: the WASI build rewritten so that it can pause in its read of stdin.
//!
//! Four steps, once per interpreter (cached by [`super::Snapshots`]):
//! 1. [`rewrite`]: every call of the `fd_read` import goes through a new function
//!    `hook(fd, …) { if fd == 0 { checkpoint() } return fd_read(fd, …) }`, where `checkpoint`
//!    is the host-owned import `aleph_wasm.checkpoint`; the stack-pointer global is exported;
//!    DWARF and the name section are dropped (their offsets and indices would be stale);
//! 2. [`optimize`]: binaryen's `wasm-opt` (the one [`super::wasm_opt`] finds or obtains)
//!    optimises the whole module ([`OPTIMIZE_ARGS`]). The interpreter's build leaves work that
//!    binaryen's whole-module passes remove, and inlining small functions saves calls, which
//!    fuel makes costly (the fuel count is saved before every call and reloaded after it):
//!    CPython then runs about 30 % faster;
//! 3. discovery: the optimised module runs once up to its first read of stdin, where the host
//!    captures the Wasm backtrace: the functions on the stack at the pause;
//! 4. [`asyncify`]: `wasm-opt --asyncify`, limited to exactly those functions, so the stack can
//!    be unwound at the checkpoint and rewound later (a narrow list keeps the interpreter's
//!    speed; a full Asyncify makes it ~40 % slower).
//!
//! Every step is deterministic: the same interpreter and the same `wasm-opt` give the same bytes
//! on every node, so a receipt's fuel means the same thing wherever it is verified.

use std::path::Path;
use std::process::Command;

use wasm_encoder::reencode::{Error as ReencodeError, Reencode, utils};
use wasmparser::{Parser, Payload, TypeRef};

use super::{CHECKPOINT_MODULE, CHECKPOINT_NAME, STACK_POINTER_EXPORT};
use crate::sandbox::stack::named_stack_pointer;

/// What [`rewrite`] produced.
#[derive(Debug, Clone)]
pub struct Rewritten {
    /// The new module.
    pub wasm: Vec<u8>,
    /// How many functions the new module imports (binaryen names a defined function by its
    /// index minus this number).
    pub func_imports: u32,
}

/// Facts about the input module gathered before rewriting.
struct Scan {
    func_imports: u32,
    fd_read: u32,
    fd_read_type: u32,
    types: u32,
    defined_funcs: u32,
    stack_pointer: u32,
}

fn scan(wasm: &[u8]) -> Result<Scan, String> {
    let mut func_imports = 0u32;
    let mut fd_read = None;
    let mut types = 0u32;
    let mut defined_funcs = 0u32;
    let mut globals: Vec<(bool, bool)> = Vec::new(); // (mutable, i32) of defined globals
    let mut global_imports = 0u32;
    let mut named_sp = None;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| format!("not valid WebAssembly: {e}"))? {
            Payload::TypeSection(s) => types = s.count(),
            Payload::ImportSection(s) => {
                for imports in s {
                    let imports = imports.map_err(|e| e.to_string())?;
                    for item in imports {
                        let (_, import) = item.map_err(|e| e.to_string())?;
                        match import.ty {
                            TypeRef::Func(ty) | TypeRef::FuncExact(ty) => {
                                if import.module == "wasi_snapshot_preview1"
                                    && import.name == "fd_read"
                                {
                                    fd_read = Some((func_imports, ty));
                                }
                                if import.module == CHECKPOINT_MODULE {
                                    return Err("the module already imports the checkpoint".into());
                                }
                                func_imports += 1;
                            }
                            TypeRef::Global(_) => global_imports += 1,
                            _ => {}
                        }
                    }
                }
            }
            Payload::FunctionSection(s) => defined_funcs = s.count(),
            Payload::GlobalSection(s) => {
                for g in s {
                    let g = g.map_err(|e| e.to_string())?;
                    globals.push((g.ty.mutable, g.ty.content_type == wasmparser::ValType::I32));
                }
            }
            Payload::CustomSection(c) => {
                named_sp = named_stack_pointer(&c).or(named_sp);
            }
            _ => {}
        }
    }
    let (fd_read, fd_read_type) =
        fd_read.ok_or("the module does not import wasi_snapshot_preview1.fd_read")?;
    // The stack pointer: named `__stack_pointer`, else (LLVM's layout) the first defined global.
    let stack_pointer = named_sp.unwrap_or(global_imports);
    let defined = stack_pointer
        .checked_sub(global_imports)
        .and_then(|i| globals.get(i as usize));
    if defined != Some(&(true, true)) {
        return Err("no mutable i32 stack-pointer global found".into());
    }
    Ok(Scan {
        func_imports,
        fd_read,
        fd_read_type,
        types,
        defined_funcs,
        stack_pointer,
    })
}

/// The re-encoder: shifts defined functions by one (the new import), sends calls of `fd_read`
/// to the hook, and appends the new type, import, function, body and export.
struct Rewriter {
    scan: Scan,
}

impl Rewriter {
    fn checkpoint_index(&self) -> u32 {
        self.scan.func_imports
    }

    fn hook_index(&self) -> u32 {
        self.scan.func_imports + 1 + self.scan.defined_funcs
    }
}

impl Reencode for Rewriter {
    type Error = String;

    fn function_index(&mut self, func: u32) -> Result<u32, ReencodeError<String>> {
        Ok(if func == self.scan.fd_read {
            self.hook_index()
        } else if func < self.scan.func_imports {
            func
        } else {
            func + 1
        })
    }

    fn parse_type_section(
        &mut self,
        types: &mut wasm_encoder::TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), ReencodeError<String>> {
        utils::parse_type_section(self, types, section)?;
        types.ty().function([], []);
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), ReencodeError<String>> {
        utils::parse_import_section(self, imports, section)?;
        imports.import(
            CHECKPOINT_MODULE,
            CHECKPOINT_NAME,
            wasm_encoder::EntityType::Function(self.scan.types),
        );
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut wasm_encoder::FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), ReencodeError<String>> {
        utils::parse_function_section(self, functions, section)?;
        functions.function(self.scan.fd_read_type);
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), ReencodeError<String>> {
        utils::parse_code_section(self, code, section)?;
        use wasm_encoder::Instruction as I;
        let mut hook = wasm_encoder::Function::new([]);
        hook.instruction(&I::LocalGet(0))
            .instruction(&I::I32Eqz)
            .instruction(&I::If(wasm_encoder::BlockType::Empty))
            .instruction(&I::Call(self.checkpoint_index()))
            .instruction(&I::End);
        for i in 0..4 {
            hook.instruction(&I::LocalGet(i));
        }
        hook.instruction(&I::Call(self.scan.fd_read))
            .instruction(&I::End);
        code.function(&hook);
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), ReencodeError<String>> {
        utils::parse_export_section(self, exports, section)?;
        exports.export(
            STACK_POINTER_EXPORT,
            wasm_encoder::ExportKind::Global,
            self.scan.stack_pointer,
        );
        Ok(())
    }

    fn parse_custom_section(
        &mut self,
        module: &mut wasm_encoder::Module,
        section: wasmparser::CustomSectionReader<'_>,
    ) -> Result<(), ReencodeError<String>> {
        // DWARF and names describe the old code; `target_features` and `producers` stay (wasm-opt
        // reads the features from the former).
        let name = section.name();
        if name == "name" || name.starts_with(".debug") || name.starts_with("reloc.") {
            return Ok(());
        }
        utils::parse_custom_section(self, module, section)
    }
}

/// Rewrites a WASI command so that its reads of stdin pass through the checkpoint import, and
/// exports its stack pointer. Fails (never panics) on a module it cannot handle.
pub fn rewrite(wasm: &[u8]) -> Result<Rewritten, String> {
    let scan = scan(wasm)?;
    if scan.defined_funcs == 0 {
        return Err("the module defines no function".into());
    }
    let func_imports = scan.func_imports + 1;
    let mut rewriter = Rewriter { scan };
    let mut module = wasm_encoder::Module::new();
    rewriter
        .parse_core_module(&mut module, Parser::new(0), wasm)
        .map_err(|e| format!("cannot rewrite the module: {e:?}"))?;
    let wasm = module.finish();
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&wasm)
        .map_err(|e| format!("the rewritten module is not valid: {e}"))?;
    Ok(Rewritten { wasm, func_imports })
}

/// The arguments of [`optimize`]: `-O3`, and inlining of functions up to 6 (always) or 40
/// (without loops or calls) binaryen size units instead of binaryen's 2 and 20. Measured with
/// `benches` `metering-cost --module` on CPython 3.12 (ns per step of `interpreter_speed`,
/// fuel and epochs on, medians of 3): original 41 600, `-O3` 32 100, these 27 700; larger
/// limits (10/60, 15/100) did no better and grew the module; inlining functions with loops
/// (up to 150) made fuel cost more than the calls it saved. Part of the prepared
/// interpreter's key.
pub const OPTIMIZE_ARGS: &[&str] = &[
    "-O3",
    "--always-inline-max-function-size",
    "6",
    "--flexible-inline-max-function-size",
    "40",
];

/// Runs `wasm-opt ARGS IN -o OUT` on `wasm` in `work` and returns OUT's bytes; a failure
/// names `what` (the step) and carries wasm-opt's message.
fn run_wasm_opt(
    wasm_opt: &Path,
    args: &[String],
    wasm: &[u8],
    work: &Path,
    what: &str,
) -> Result<Vec<u8>, String> {
    let input = work.join("input.wasm");
    let output = work.join("output.wasm");
    std::fs::write(&input, wasm).map_err(|e| format!("{}: {e}", input.display()))?;
    let out = Command::new(wasm_opt)
        .args(args)
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .map_err(|e| format!("wasm-opt ({}) cannot be run: {e}", wasm_opt.display()))?;
    if !out.status.success() {
        return Err(format!(
            "wasm-opt {what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    std::fs::read(&output).map_err(|e| format!("{}: {e}", output.display()))
}

/// Runs binaryen's whole-module optimisation ([`OPTIMIZE_ARGS`]) on the rewritten module.
/// Binaryen may drop imports nothing calls, so the function import count is read again; the
/// checkpoint import, the stack-pointer export and `_start` must have survived.
pub fn optimize(wasm_opt: &Path, rewritten: &Rewritten, work: &Path) -> Result<Rewritten, String> {
    let args: Vec<String> = OPTIMIZE_ARGS.iter().map(|a| a.to_string()).collect();
    let wasm = run_wasm_opt(
        wasm_opt,
        &args,
        &rewritten.wasm,
        work,
        &OPTIMIZE_ARGS.join(" "),
    )?;
    let mut func_imports = 0u32;
    let mut checkpoint = false;
    let mut exports = Vec::new();
    for payload in Parser::new(0).parse_all(&wasm) {
        match payload.map_err(|e| format!("the optimised module is not valid: {e}"))? {
            Payload::ImportSection(s) => {
                for imports in s {
                    let imports = imports.map_err(|e| e.to_string())?;
                    for item in imports {
                        let (_, import) = item.map_err(|e| e.to_string())?;
                        if let TypeRef::Func(_) | TypeRef::FuncExact(_) = import.ty {
                            func_imports += 1;
                            checkpoint |= import.module == CHECKPOINT_MODULE
                                && import.name == CHECKPOINT_NAME;
                        }
                    }
                }
            }
            Payload::ExportSection(s) => {
                for e in s.into_iter().flatten() {
                    exports.push(e.name.to_string());
                }
            }
            _ => {}
        }
    }
    if !checkpoint {
        return Err(format!(
            "the optimised module no longer imports {CHECKPOINT_MODULE}.{CHECKPOINT_NAME}"
        ));
    }
    for wanted in [STACK_POINTER_EXPORT, "_start"] {
        if !exports.iter().any(|e| e == wanted) {
            return Err(format!("the optimised module does not export {wanted}"));
        }
    }
    Ok(Rewritten { wasm, func_imports })
}

/// The function names binaryen gives the defined functions on the pause stack (`index minus
/// imports`, in a module without a name section), deduplicated, in stack order.
pub fn binaryen_names(stack: &[u32], func_imports: u32) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for &f in stack {
        let n = f
            .checked_sub(func_imports)
            .ok_or_else(|| format!("an imported function (index {f}) is on the pause stack"))?
            .to_string();
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// Runs binaryen's Asyncify on `wasm`, instrumenting exactly `names`, with the checkpoint as
/// the only import that may unwind; the code Asyncify flattens is optimised again.
pub fn asyncify(
    wasm_opt: &Path,
    wasm: &[u8],
    names: &[String],
    work: &Path,
) -> Result<Vec<u8>, String> {
    let args = [
        "--asyncify".to_string(),
        format!("--pass-arg=asyncify-imports@{CHECKPOINT_MODULE}.{CHECKPOINT_NAME}"),
        format!("--pass-arg=asyncify-onlylist@{}", names.join(",")),
        // Asyncify flattens code and optimises it again only at an optimisation level.
        // Binaryen 108 flattened every function: without a level the module was 2.5 times
        // larger and did the same work in about 2.4 times the Wasm instructions, which fuel
        // counts. Binaryen 123 (the pinned release) flattens only the listed functions and
        // takes 3 s instead of 53 s for CPython; the level still trims what it flattened
        // (0.6 % of the module). Level 1 (for CPython, the same output as level 2 in less
        // time) adds no pass of its own; Asyncify then runs function passes only, so function
        // indices, and the pause stack with them, stay as they are.
        "--optimize-level".to_string(),
        "1".to_string(),
    ];
    let result = run_wasm_opt(wasm_opt, &args, wasm, work, "--asyncify")?;
    let mut exports = Vec::new();
    for payload in Parser::new(0).parse_all(&result) {
        if let Ok(Payload::ExportSection(s)) = payload {
            for e in s.into_iter().flatten() {
                exports.push(e.name.to_string());
            }
        }
    }
    for wanted in [
        "asyncify_start_unwind",
        "asyncify_stop_unwind",
        "asyncify_start_rewind",
        "asyncify_stop_rewind",
        STACK_POINTER_EXPORT,
        "_start",
    ] {
        if !exports.iter().any(|e| e == wanted) {
            return Err(format!("the asyncified module does not export {wanted}"));
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: &str = r#"(module
        (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (global $sp (mut i32) (i32.const 1024))
        (func $read (result i32) (call $r (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (func (export "_start") (drop (call $read)) (drop (call $w (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0))))
        (elem declare func $read)
    )"#;

    #[test]
    fn calls_of_fd_read_go_through_the_hook() {
        let wasm = wat::parse_str(GUEST).unwrap();
        let out = rewrite(&wasm).unwrap();
        assert_eq!(out.func_imports, 3);
        let text = wasmprinter_like(&out.wasm);
        assert!(text.contains(&format!("{CHECKPOINT_MODULE}.{CHECKPOINT_NAME}")));
        assert!(text.contains(STACK_POINTER_EXPORT));
    }

    #[test]
    fn a_module_without_fd_read_is_refused() {
        let wasm = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        assert!(rewrite(&wasm).unwrap_err().contains("fd_read"));
        assert!(rewrite(b"not wasm").is_err());
    }

    #[test]
    fn binaryen_names_skip_imports_and_repeat() {
        assert_eq!(
            binaryen_names(&[7, 5, 7, 4], 3).unwrap(),
            vec!["4", "2", "1"]
        );
        assert!(binaryen_names(&[1], 3).is_err());
    }

    /// A stand-in for `wasm-opt` (`wasm-opt -O3 IN -o OUT`): a shell script running `body`.
    #[cfg(unix)]
    fn fake_wasm_opt(dir: &Path, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("wasm-opt");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[cfg(unix)]
    #[test]
    fn optimize_counts_the_imports_left_and_refuses_a_module_the_snapshot_cannot_use() {
        let work = tempfile::tempdir().unwrap();
        let original = wat::parse_str(GUEST).unwrap();
        let rewritten = rewrite(&original).unwrap();
        // A tool that writes `file` as its output (its last argument).
        let writes =
            |file: &Path| format!("for last; do :; done\ncp '{}' \"$last\"", file.display());

        // What binaryen leaves: the import nothing calls gone, the checkpoint and exports kept.
        let trimmed = wat::parse_str(format!(
            r#"(module
                (import "{CHECKPOINT_MODULE}" "{CHECKPOINT_NAME}" (func $c))
                (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))
                (memory (export "memory") 1)
                (global $sp (export "{STACK_POINTER_EXPORT}") (mut i32) (i32.const 1024))
                (func (export "_start") (call $c) (drop (call $r (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))))"#
        ))
        .unwrap();
        let kept = work.path().join("trimmed.wasm");
        std::fs::write(&kept, &trimmed).unwrap();
        let tool = fake_wasm_opt(work.path(), &writes(&kept));
        let out = optimize(&tool, &rewritten, work.path()).unwrap();
        assert_eq!((out.func_imports, out.wasm), (2, trimmed));

        // The tool's arguments: OPTIMIZE_ARGS, the input, `-o`, the output.
        let args = work.path().join("args.txt");
        let n = OPTIMIZE_ARGS.len();
        let body = format!(
            "printf '%s\\n' \"$@\" > '{}'\nfor last; do :; done\ncp \"${{{}}}\" \"$last\"",
            args.display(),
            n + 1
        );
        let tool = fake_wasm_opt(work.path(), &body);
        let out = optimize(&tool, &rewritten, work.path()).unwrap();
        assert_eq!(out.wasm, rewritten.wasm);
        assert_eq!(out.func_imports, rewritten.func_imports);
        let seen = std::fs::read_to_string(&args).unwrap();
        let seen: Vec<&str> = seen.lines().collect();
        assert_eq!(&seen[..n], OPTIMIZE_ARGS);
        assert_eq!(seen[n + 1], "-o");
        assert_eq!(seen.len(), n + 3);

        // A module without the checkpoint could never pause.
        let kept = work.path().join("original.wasm");
        std::fs::write(&kept, &original).unwrap();
        let tool = fake_wasm_opt(work.path(), &writes(&kept));
        let error = optimize(&tool, &rewritten, work.path()).unwrap_err();
        assert!(
            error.contains("no longer imports aleph_wasm.checkpoint"),
            "{error}"
        );

        let tool = fake_wasm_opt(work.path(), "echo 'unknown option' >&2; exit 1");
        let error = optimize(&tool, &rewritten, work.path()).unwrap_err();
        assert_eq!(
            error,
            format!(
                "wasm-opt {} failed: unknown option",
                OPTIMIZE_ARGS.join(" ")
            )
        );
        let error = optimize(&work.path().join("absent"), &rewritten, work.path()).unwrap_err();
        assert!(error.contains("cannot be run"), "{error}");
    }

    /// Import and export names of a module, one a line.
    fn wasmprinter_like(wasm: &[u8]) -> String {
        let mut out = String::new();
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.unwrap() {
                Payload::ImportSection(s) => {
                    for imports in s {
                        for item in imports.unwrap() {
                            let (_, i) = item.unwrap();
                            out += &format!("{}.{}\n", i.module, i.name);
                        }
                    }
                }
                Payload::ExportSection(s) => {
                    for e in s {
                        out += &format!("{}\n", e.unwrap().name);
                    }
                }
                _ => {}
            }
        }
        out
    }
}
