//! The interpreter's C stack, moved into pages of its own and guarded.
//!
//! A WASI build made by LLVM keeps its C stack in linear memory: a region whose size is fixed
//! at link time (512 KiB for the `python-3.12` interpreter, laid out first and growing down
//! towards address 0), addressed through a mutable `i32` global, the stack pointer. CPython
//! spends that stack on nested imports (about 18 KiB a level), so an ordinary import chain
//! 28 deep overflowed it. [`relocate`] rewrites an interpreter so that:
//! - its memory starts [`STACK_BYTES`] larger, and the stack pointer starts at the top of
//!   those new pages (the old stack's pages stay, unused). The C heap is unaffected: the
//!   allocator's first region ends where the linked memory ended (wasi-libc's `__heap_end`),
//!   and it grows with `memory.grow`, past the new pages;
//! - every write of the stack pointer goes through a guard function that, when the new value
//!   is within [`GUARD_BYTES`] of the stack's low end, reads the last byte of the 32-bit address
//!   space: an out-of-bounds trap at an address the sandbox names as a C stack overflow
//!   (without the guard, an overflowing stack would silently write over the heap below it).
//!
//! An interpreter linked with an 8 MiB stack at the bottom of memory (`--stack-first`) is left
//! as it is: its overflow already faults below address 0. That is also the only safe choice for
//! a wasi-libc older than `__heap_end` (2023), whose allocator takes the whole initial memory,
//! new pages included, as its first region.
//!
//! The engine relocates every interpreter it runs (the original and, before its own rewrite,
//! the one prepared for snapshots); the key of the compiled module says so
//! ([`relocated_key`]). WASI modules that are a program's code run as they were linked.

use sha2::{Digest, Sha256};
use wasm_encoder::reencode::{Error as ReencodeError, Reencode, utils};
use wasmparser::{KnownCustom, Parser, Payload, TypeRef};

/// The size of the relocated stack: 8 MiB, as a native thread's default.
pub const STACK_BYTES: u32 = 8 << 20;
/// The margin kept at the stack's low end: a function that makes no calls may address up to
/// its frame's size below the stack pointer without writing it.
pub const GUARD_BYTES: u32 = 64 << 10;
/// The address the guard reads to trap: the last byte of the 32-bit address space.
pub const GUARD_FAULT_ADDRESS: u32 = u32::MAX;
/// The version of the relocation; part of [`relocated_key`].
const VERSION: u32 = 2;
const PAGE: u32 = 64 << 10;

/// The compiled-module key of `interpreter_sha256` relocated by this version of [`relocate`].
pub fn relocated_key(interpreter_sha256: &str) -> String {
    let doc = serde_json::json!({
        "interpreter": interpreter_sha256,
        "stack": {"version": VERSION, "bytes": STACK_BYTES, "guard": GUARD_BYTES},
    });
    hex::encode(Sha256::digest(doc.to_string().as_bytes()))
}

/// What [`relocate`] learns of a module before rewriting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The index of the stack-pointer global.
    pub stack_pointer: u32,
    /// Its initial value in the input module.
    pub initial_stack_pointer: u32,
    /// The memory's initial size in pages, in the input module.
    pub initial_pages: u64,
    /// The memory's maximum size in pages, when the module sets one.
    pub maximum_pages: Option<u64>,
    /// The lowest address an active data segment starts at (`None`: no data).
    pub lowest_data: Option<u32>,
    types: u32,
    func_imports: u32,
    global_imports: u32,
    defined_funcs: u32,
}

impl Layout {
    /// The lowest address the relocated stack may hold.
    pub fn stack_base(&self) -> u32 {
        (self.initial_pages as u32) * PAGE
    }

    /// The relocated stack pointer's initial value: the top of the new pages.
    pub fn stack_top(&self) -> u32 {
        self.stack_base() + STACK_BYTES
    }

    /// Whether the stack as linked is already [`STACK_BYTES`] or more at the bottom of memory
    /// (linked `--stack-first`, below every data segment). Such a stack needs no relocation:
    /// an overflow takes the stack pointer below 0, where the first write faults at an address
    /// near the top of the 32-bit space, as the guard's does.
    pub fn linked_stack_suffices(&self) -> bool {
        self.initial_stack_pointer >= STACK_BYTES
            && self
                .lowest_data
                .is_none_or(|data| data >= self.initial_stack_pointer)
    }

    fn guard_index(&self) -> u32 {
        self.func_imports + self.defined_funcs
    }
}

/// Reads the layout of a WASI command: its one defined memory and its stack pointer (the global
/// named `__stack_pointer`, else LLVM's first defined global, a mutable `i32` set by a constant).
pub fn layout(wasm: &[u8]) -> Result<Layout, String> {
    let mut types = 0;
    let mut func_imports = 0;
    let mut defined_funcs = 0;
    let mut global_imports = 0;
    let mut globals: Vec<(bool, Option<u32>)> = Vec::new(); // (mutable i32, constant init)
    let mut memories = Vec::new();
    let mut named_sp = None;
    let mut lowest_data: Option<u32> = None;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| format!("not valid WebAssembly: {e}"))? {
            Payload::TypeSection(s) => types = s.count(),
            Payload::ImportSection(s) => {
                for imports in s {
                    for item in imports.map_err(|e| e.to_string())? {
                        let (_, import) = item.map_err(|e| e.to_string())?;
                        match import.ty {
                            TypeRef::Func(_) | TypeRef::FuncExact(_) => func_imports += 1,
                            TypeRef::Global(_) => global_imports += 1,
                            TypeRef::Memory(_) => {
                                return Err("the module imports its memory".into());
                            }
                            _ => {}
                        }
                    }
                }
            }
            Payload::FunctionSection(s) => defined_funcs = s.count(),
            Payload::MemorySection(s) => {
                for m in s {
                    memories.push(m.map_err(|e| e.to_string())?);
                }
            }
            Payload::GlobalSection(s) => {
                for g in s {
                    let g = g.map_err(|e| e.to_string())?;
                    let mutable_i32 = g.ty.mutable && g.ty.content_type == wasmparser::ValType::I32;
                    let mut ops = g.init_expr.get_operators_reader();
                    let init = match ops.read() {
                        Ok(wasmparser::Operator::I32Const { value }) => Some(value as u32),
                        _ => None,
                    };
                    globals.push((mutable_i32, init));
                }
            }
            Payload::CustomSection(c) => {
                named_sp = named_stack_pointer(&c).or(named_sp);
            }
            Payload::DataSection(s) => {
                for data in s {
                    let data = data.map_err(|e| e.to_string())?;
                    if let wasmparser::DataKind::Active { offset_expr, .. } = data.kind {
                        // A segment placed by anything but a constant could be anywhere.
                        let offset = match offset_expr.get_operators_reader().read() {
                            Ok(wasmparser::Operator::I32Const { value }) => value as u32,
                            _ => 0,
                        };
                        lowest_data = Some(lowest_data.map_or(offset, |low| low.min(offset)));
                    }
                }
            }
            _ => {}
        }
    }
    let memory = match memories.as_slice() {
        [m] if !m.memory64 && !m.shared => *m,
        [_] => return Err("the module's memory is 64-bit or shared".into()),
        _ => {
            return Err(format!(
                "the module defines {} memories, not one",
                memories.len()
            ));
        }
    };
    let stack_pointer = named_sp.unwrap_or(global_imports);
    let initial_stack_pointer = match stack_pointer
        .checked_sub(global_imports)
        .and_then(|i| globals.get(i as usize))
    {
        Some((true, Some(init))) => *init,
        _ => return Err("no mutable i32 stack-pointer global set by a constant".into()),
    };
    let layout = Layout {
        stack_pointer,
        initial_stack_pointer,
        initial_pages: memory.initial,
        maximum_pages: memory.maximum,
        lowest_data,
        types,
        func_imports,
        global_imports,
        defined_funcs,
    };
    let top = layout.initial_pages * u64::from(PAGE) + u64::from(STACK_BYTES);
    if top >= 1 << 32 {
        return Err("the module's initial memory leaves no room for the stack".into());
    }
    if let Some(max) = layout.maximum_pages
        && max * u64::from(PAGE) < top
    {
        return Err(format!(
            "the module's memory may not grow past {max} pages, too few for a {} MiB stack",
            STACK_BYTES >> 20
        ));
    }
    Ok(layout)
}

/// The index of the global that `section`, when it is the name section, names
/// `__stack_pointer` (LLVM's name for the stack pointer).
pub(crate) fn named_stack_pointer(section: &wasmparser::CustomSectionReader<'_>) -> Option<u32> {
    let KnownCustom::Name(names) = section.as_known() else {
        return None;
    };
    names.into_iter().flatten().find_map(|sub| match sub {
        wasmparser::Name::Global(map) => map
            .into_iter()
            .flatten()
            .find(|naming| naming.name == "__stack_pointer")
            .map(|naming| naming.index),
        _ => None,
    })
}

/// Rewrites a WASI command built by LLVM so that its C stack is [`STACK_BYTES`] in new pages
/// above its initial memory, with every stack-pointer write guarded; a module whose linked
/// stack already suffices ([`Layout::linked_stack_suffices`]) is returned as it is. Fails (never panics) on a
/// module it cannot handle; the output is validated.
pub fn relocate(wasm: &[u8]) -> Result<Vec<u8>, String> {
    let layout = layout(wasm)?;
    if layout.linked_stack_suffices() {
        return Ok(wasm.to_vec());
    }
    let mut relocator = Relocator { layout };
    let mut module = wasm_encoder::Module::new();
    relocator
        .parse_core_module(&mut module, Parser::new(0), wasm)
        .map_err(|e| format!("cannot relocate the stack: {e:?}"))?;
    let out = module.finish();
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&out)
        .map_err(|e| format!("the module with its stack relocated is not valid: {e}"))?;
    Ok(out)
}

/// The re-encoder: grows the memory's initial size, moves the stack pointer's start, sends
/// `global.set` of the stack pointer to the guard, and appends the guard.
struct Relocator {
    layout: Layout,
}

impl Reencode for Relocator {
    type Error = String;

    fn parse_custom_section(
        &mut self,
        module: &mut wasm_encoder::Module,
        section: wasmparser::CustomSectionReader<'_>,
    ) -> Result<(), ReencodeError<String>> {
        // DWARF describes the old code offsets; names stay valid (the guard is appended).
        let name = section.name();
        if name.starts_with(".debug") || name.starts_with("reloc.") {
            return Ok(());
        }
        utils::parse_custom_section(self, module, section)
    }

    fn memory_type(
        &mut self,
        memory: wasmparser::MemoryType,
    ) -> Result<wasm_encoder::MemoryType, ReencodeError<String>> {
        let mut out = utils::memory_type(self, memory);
        out.minimum += u64::from(STACK_BYTES / PAGE);
        Ok(out)
    }

    fn parse_global_section(
        &mut self,
        globals: &mut wasm_encoder::GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), ReencodeError<String>> {
        let imported = self.layout.global_imports;
        for (i, global) in section.into_iter().enumerate() {
            let global = global?;
            if i as u32 + imported == self.layout.stack_pointer {
                globals.global(
                    utils::global_type(self, global.ty)?,
                    &wasm_encoder::ConstExpr::i32_const(self.layout.stack_top() as i32),
                );
            } else {
                utils::parse_global(self, globals, global)?;
            }
        }
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        func: wasmparser::FunctionBody<'_>,
    ) -> Result<(), ReencodeError<String>> {
        use wasm_encoder::Instruction as I;
        use wasmparser::Operator as O;
        let sp = self.layout.stack_pointer;
        let mut f = utils::new_function_with_parsed_locals(self, &func)?;
        let mut reader = func.get_operators_reader()?;
        // The last two operators read: LLVM's prologue ends `i32.sub; local.tee $fp;
        // global.set $sp`, its epilogue `i32.const N; i32.add; global.set $sp`.
        let (mut before, mut last): (Option<O<'_>>, Option<O<'_>>) = (None, None);
        while !reader.eof() {
            let op = reader.read()?;
            match (&op, &last, &before) {
                (O::GlobalSet { global_index }, Some(O::LocalTee { local_index }), _)
                    if *global_index == sp =>
                {
                    // A new value also kept in a local: set, then check the local.
                    f.instruction(&I::GlobalSet(sp));
                    f.instruction(&I::LocalGet(*local_index));
                    self.check(&mut f);
                }
                (O::GlobalSet { global_index }, Some(O::I32Add), Some(O::I32Const { value }))
                    if *global_index == sp && *value >= 0 =>
                {
                    // A frame released: the stack pointer goes up.
                    f.instruction(&I::GlobalSet(sp));
                }
                (O::GlobalSet { global_index }, _, _) if *global_index == sp => {
                    f.instruction(&I::Call(self.layout.guard_index()));
                }
                _ => {
                    f.instruction(&utils::instruction(self, op.clone())?);
                }
            }
            before = last.take();
            last = Some(op);
        }
        code.function(&f);
        Ok(())
    }

    fn parse_type_section(
        &mut self,
        types: &mut wasm_encoder::TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), ReencodeError<String>> {
        utils::parse_type_section(self, types, section)?;
        types.ty().function([wasm_encoder::ValType::I32], []);
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut wasm_encoder::FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), ReencodeError<String>> {
        utils::parse_function_section(self, functions, section)?;
        functions.function(self.layout.types);
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), ReencodeError<String>> {
        utils::parse_code_section(self, code, section)?;
        use wasm_encoder::Instruction as I;
        let mut guard = wasm_encoder::Function::new([]);
        guard.instruction(&I::LocalGet(0));
        self.check(&mut guard);
        guard
            .instruction(&I::LocalGet(0))
            .instruction(&I::GlobalSet(self.layout.stack_pointer))
            .instruction(&I::End);
        code.function(&guard);
        Ok(())
    }
}

impl Relocator {
    /// Consumes the `i32` on top of the operand stack, a new stack-pointer value: when it is
    /// within [`GUARD_BYTES`] of the stack's low end, reads [`GUARD_FAULT_ADDRESS`] (a trap).
    fn check(&self, f: &mut wasm_encoder::Function) {
        use wasm_encoder::Instruction as I;
        let limit = self.layout.stack_base() + GUARD_BYTES;
        f.instruction(&I::I32Const(limit as i32))
            .instruction(&I::I32LtU)
            .instruction(&I::If(wasm_encoder::BlockType::Empty))
            .instruction(&I::I32Const(GUARD_FAULT_ADDRESS as i32))
            .instruction(&I::I32Load8U(wasm_encoder::MemArg {
                offset: 0,
                align: 0,
                memory_index: 0,
            }))
            .instruction(&I::Drop)
            .instruction(&I::End);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Engine, Instance, Module, Store};

    /// A module laid out as LLVM's `--stack-first` does: a 1 KiB stack under the data, and a
    /// recursive function taking 1 KiB of stack a call, in LLVM's prologue and epilogue.
    const GUEST: &str = r#"(module
        (memory (export "memory") 1)
        (global $sp (mut i32) (i32.const 1024))
        (data (i32.const 1024) "data")
        (func $rec (export "rec") (param $n i32) (result i32) (local $fp i32)
            global.get $sp
            i32.const 1024
            i32.sub
            local.tee $fp
            global.set $sp
            (i32.store (local.get $fp) (local.get $n))
            (if (result i32) (i32.eqz (local.get $n))
                (then (i32.const 0))
                (else (i32.add (i32.const 1) (call $rec (i32.sub (local.get $n) (i32.const 1))))))
            local.get $fp
            i32.const 1024
            i32.add
            global.set $sp)
        (func (export "set_sp") (param i32) (global.set $sp (local.get 0)))
        (func (export "sp") (result i32) (global.get $sp))
        (func (export "data") (result i32) (i32.load (i32.const 1024)))
    )"#;

    fn instance(wasm: &[u8]) -> (Store<()>, Instance) {
        let engine = Engine::default();
        let module = Module::new(&engine, wasm).unwrap();
        let mut store = Store::new(&engine, ());
        let instance = Instance::new(&mut store, &module, &[]).unwrap();
        (store, instance)
    }

    fn call(
        store: &mut Store<()>,
        instance: &Instance,
        name: &str,
        n: i32,
    ) -> wasmtime::Result<i32> {
        instance
            .get_typed_func::<i32, i32>(&mut *store, name)?
            .call(&mut *store, n)
    }

    #[test]
    fn the_layout_of_an_llvm_module_is_read() {
        let l = layout(&wat::parse_str(GUEST).unwrap()).unwrap();
        assert_eq!((l.stack_pointer, l.initial_stack_pointer), (0, 1024));
        assert_eq!((l.initial_pages, l.maximum_pages), (1, None));
        assert_eq!(l.stack_base(), 65536);
        assert_eq!(l.stack_top(), 65536 + STACK_BYTES);
    }

    #[test]
    fn the_relocated_stack_holds_deep_calls_and_traps_at_its_end() {
        let wasm = wat::parse_str(GUEST).unwrap();
        // As linked: two calls overflow the 1 KiB stack, wrapping below address 0.
        let (mut store, original) = instance(&wasm);
        let err = call(&mut store, &original, "rec", 2).unwrap_err();
        assert!(
            format!("{err:?}").contains("memory fault at wasm address 0xfffff"),
            "{err:?}"
        );

        let (mut store, relocated) = instance(&relocate(&wasm).unwrap());
        let memory = relocated.get_memory(&mut store, "memory").unwrap();
        assert_eq!(memory.size(&store), 1 + u64::from(STACK_BYTES / PAGE));
        let top = (65536 + STACK_BYTES) as i32;
        assert_eq!(call(&mut store, &relocated, "rec", 1000).unwrap(), 1000);
        let sp = relocated
            .get_typed_func::<(), i32>(&mut store, "sp")
            .unwrap();
        assert_eq!(sp.call(&mut store, ()).unwrap(), top);
        // The data under the old stack is where it was.
        let data = relocated
            .get_typed_func::<(), i32>(&mut store, "data")
            .unwrap();
        assert_eq!(
            data.call(&mut store, ()).unwrap(),
            i32::from_le_bytes(*b"data")
        );

        // 8 Mi / 1 Ki calls reach the guard: a trap at the guard's address, nothing written
        // below the stack.
        let (mut store, relocated) = instance(&relocate(&wasm).unwrap());
        let err = call(&mut store, &relocated, "rec", 8192).unwrap_err();
        assert!(
            format!("{err:?}").contains(&format!(
                "memory fault at wasm address {GUARD_FAULT_ADDRESS:#x}"
            )),
            "{err:?}"
        );
        let memory = relocated.get_memory(&mut store, "memory").unwrap();
        let below = &memory.data(&store)[65536 - 4096..65536];
        assert!(below.iter().all(|b| *b == 0));

        // A stack pointer set from elsewhere goes through the guard function.
        let (mut store, relocated) = instance(&relocate(&wasm).unwrap());
        let set = relocated
            .get_typed_func::<i32, ()>(&mut store, "set_sp")
            .unwrap();
        set.call(&mut store, top - 4096).unwrap();
        let sp = relocated
            .get_typed_func::<(), i32>(&mut store, "sp")
            .unwrap();
        assert_eq!(sp.call(&mut store, ()).unwrap(), top - 4096);
        assert!(set.call(&mut store, 65536 + 16).is_err());
    }

    #[test]
    fn a_stack_linked_first_and_large_enough_is_left_as_it_is() {
        // 8 MiB of stack under the data, as `--stack-first -z stack-size=8388608` links it.
        let first = format!(
            r#"(module (memory 129) (global $sp (mut i32) (i32.const {STACK_BYTES}))
                (data (i32.const {STACK_BYTES}) "data"))"#
        );
        let wasm = wat::parse_str(&first).unwrap();
        assert!(layout(&wasm).unwrap().linked_stack_suffices());
        assert_eq!(relocate(&wasm).unwrap(), wasm);
        // The same stack pointer above data is not a stack at the bottom: relocated.
        let after = format!(
            r#"(module (memory 129) (global $sp (mut i32) (i32.const {STACK_BYTES}))
                (data (i32.const 1024) "data"))"#
        );
        let wasm = wat::parse_str(&after).unwrap();
        assert!(!layout(&wasm).unwrap().linked_stack_suffices());
        assert_ne!(relocate(&wasm).unwrap(), wasm);
        // The 1 KiB stack of the guest above is too small.
        let small = layout(&wat::parse_str(GUEST).unwrap()).unwrap();
        assert!(!small.linked_stack_suffices());
    }

    #[test]
    fn modules_it_cannot_relocate_are_refused() {
        let imported =
            r#"(module (import "env" "memory" (memory 1)) (global (mut i32) (i32.const 8)))"#;
        let err = relocate(&wat::parse_str(imported).unwrap()).unwrap_err();
        assert!(err.contains("imports its memory"), "{err}");
        let capped = r#"(module (memory 1 4) (global (mut i32) (i32.const 8)))"#;
        let err = relocate(&wat::parse_str(capped).unwrap()).unwrap_err();
        assert!(err.contains("may not grow past 4 pages"), "{err}");
        let no_sp = r#"(module (memory 1) (global i64 (i64.const 8)))"#;
        let err = relocate(&wat::parse_str(no_sp).unwrap()).unwrap_err();
        assert!(err.contains("stack-pointer"), "{err}");
        assert!(relocate(b"not wasm").is_err());
        // The key changes with the interpreter.
        assert_ne!(relocated_key("a"), relocated_key("b"));
    }
}
