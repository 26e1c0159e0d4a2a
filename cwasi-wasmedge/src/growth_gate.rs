//! One memory budget for a container's instances on WasmEdge.
//!
//! libwasmedge has no hook on a memory's growth, so the module gets one:
//! as it is loaded, every `memory.grow` of its memory 0 becomes a call of
//! an import, [`MODULE`].[`GROW`], which asks the instance's
//! [`MemoryShare`] of the container's budget before it grows the memory.
//! The guest sees what `memory.grow` would give it: the old size in pages,
//! or -1 when the budget (or the engine) refuses. The engine's
//! configuration refuses a second memory and a 64-bit one (`setup`), so
//! memory 0 is all a module can grow; one that never grows it is left as
//! it is.
//!
//! A guest importing the function itself gains nothing: it grows its own
//! memory, through the same budget.

use anyhow::Context as _;
use cwasi_engine::MemoryShare;
use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{EntityType, Instruction, ValType};
use wasmedge_sdk::error::CoreError;
use wasmedge_sdk::{CallingFrame, ImportObject, ImportObjectBuilder, Instance, WasmValue};
use wasmparser::{Operator, Parser, Payload, TypeRef};

use crate::setup::PAGE;

/// The import that `memory.grow` becomes.
pub(crate) const MODULE: &str = "cwasi_memory_gate";
pub(crate) const GROW: &str = "grow";

/// A module ready to load, with its growths routed through the gate.
pub(crate) struct GatedModule {
    pub wasm: Vec<u8>,
    /// The size memory 0 starts at, in bytes: taken from the budget before
    /// the instance is made, as the gate only sees growths.
    pub initial_memory: u64,
}

/// `wasm` with its growths of memory 0 routed through [`GROW`] (`wasm`
/// itself when there is nothing to route).
pub(crate) fn route_growths(wasm: Vec<u8>) -> anyhow::Result<GatedModule> {
    let shape = Shape::of(&wasm)?;
    let initial_memory = shape.initial_pages.saturating_mul(PAGE);
    if !shape.grows || shape.memory64 {
        return Ok(GatedModule { wasm, initial_memory });
    }
    let mut rewriter = GrowthRewriter { shape };
    let mut module = wasm_encoder::Module::new();
    rewriter
        .parse_core_module(&mut module, Parser::new(0), &wasm)
        .map_err(|e| anyhow::anyhow!("routing the module's memory growths: {e:?}"))?;
    Ok(GatedModule { wasm: module.finish(), initial_memory })
}

/// What the rewrite needs to know of a module.
#[derive(Default, Clone, Copy)]
struct Shape {
    /// Functions it imports: the gate's index, the first shifted one.
    imported_functions: u32,
    types: u32,
    has_types: bool,
    has_imports: bool,
    grows: bool,
    memory64: bool,
    /// Of memory 0.
    initial_pages: u64,
}

impl Shape {
    fn of(wasm: &[u8]) -> anyhow::Result<Self> {
        let mut shape = Shape::default();
        let mut memories_seen = 0;
        for payload in Parser::new(0).parse_all(wasm) {
            match payload? {
                Payload::TypeSection(groups) => {
                    shape.has_types = true;
                    for group in groups {
                        shape.types += group?.types().len() as u32;
                    }
                }
                Payload::ImportSection(imports) => {
                    shape.has_imports = true;
                    for import in imports.into_imports() {
                        match import?.ty {
                            TypeRef::Func(_) => shape.imported_functions += 1,
                            TypeRef::Memory(memory) => {
                                shape.note_memory(memories_seen, memory);
                                memories_seen += 1;
                            }
                            _ => {}
                        }
                    }
                }
                Payload::MemorySection(memories) => {
                    for memory in memories {
                        shape.note_memory(memories_seen, memory?);
                        memories_seen += 1;
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    let mut operators = body.get_operators_reader()?;
                    while !operators.eof() {
                        if matches!(operators.read()?, Operator::MemoryGrow { mem: 0 }) {
                            shape.grows = true;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(shape)
    }

    fn note_memory(&mut self, index: u32, memory: wasmparser::MemoryType) {
        if index == 0 {
            self.memory64 = memory.memory64;
            self.initial_pages = memory.initial;
        }
    }
}

/// Re-encodes a module with the gate imported last among its functions:
/// defined functions move up one index.
struct GrowthRewriter {
    shape: Shape,
}

impl GrowthRewriter {
    fn gate(&self) -> u32 {
        self.shape.imported_functions
    }

    fn gate_type(&self) -> u32 {
        self.shape.types
    }

    fn add_gate_type(&self, types: &mut wasm_encoder::TypeSection) {
        types.ty().function([ValType::I32], [ValType::I32]);
    }

    fn add_gate_import(&self, imports: &mut wasm_encoder::ImportSection) {
        imports.import(MODULE, GROW, EntityType::Function(self.gate_type()));
    }
}

impl Reencode for GrowthRewriter {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error> {
        Ok(if func >= self.gate() { func + 1 } else { func })
    }

    fn instruction<'a>(&mut self, op: Operator<'a>) -> Result<Instruction<'a>, reencode::Error> {
        match op {
            Operator::MemoryGrow { mem: 0 } => Ok(Instruction::Call(self.gate())),
            other => reencode::utils::instruction(self, other),
        }
    }

    fn parse_type_section(
        &mut self,
        types: &mut wasm_encoder::TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        reencode::utils::parse_type_section(self, types, section)?;
        self.add_gate_type(types);
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        reencode::utils::parse_import_section(self, imports, section)?;
        self.add_gate_import(imports);
        Ok(())
    }

    /// Adds the type and import sections a module lacks, where they belong:
    /// before every other section but custom ones.
    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<wasm_encoder::SectionId>,
        before: Option<wasm_encoder::SectionId>,
    ) -> Result<(), reencode::Error> {
        use wasm_encoder::SectionId;
        let passed = |section: SectionId| before.is_none_or(|next| next != SectionId::Type && next != section);
        if !self.shape.has_types && passed(SectionId::Type) {
            self.shape.has_types = true;
            let mut types = wasm_encoder::TypeSection::new();
            self.add_gate_type(&mut types);
            module.section(&types);
        }
        if !self.shape.has_imports && self.shape.has_types && passed(SectionId::Import) {
            self.shape.has_imports = true;
            let mut imports = wasm_encoder::ImportSection::new();
            self.add_gate_import(&mut imports);
            module.section(&imports);
        }
        Ok(())
    }
}

/// A module loaded through the gate, and what its memory starts at.
#[derive(Clone)]
pub(crate) struct LoadedModule {
    pub module: wasmedge_sdk::Module,
    pub initial_memory: u64,
}

/// `path`'s module, its growths routed through the gate, validated.
pub(crate) fn load(path: &std::path::Path, config: &wasmedge_sdk::config::Config) -> anyhow::Result<LoadedModule> {
    let wasm = std::fs::read(path).with_context(|| format!("reading module {}", path.display()))?;
    let gated = route_growths(wasm).with_context(|| format!("loading module {}", path.display()))?;
    let module = wasmedge_sdk::Module::from_bytes(Some(config), &gated.wasm)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("loading module {}", path.display()))?;
    Ok(LoadedModule { module, initial_memory: gated.initial_memory })
}

/// The gate's import module for one new instance of `module`, drawing on
/// `share`, which first takes the memory the instance starts with; `who`
/// names the instance in the refusal.
pub(crate) fn admit(share: MemoryShare, module: &LoadedModule, who: &str) -> anyhow::Result<ImportObject<MemoryShare>> {
    let mut share = share;
    if !share.grow(0, module.initial_memory) {
        let why = share.denied().explain(share.budget()).unwrap_or_default();
        anyhow::bail!("{who} cannot start within the container's memory limit: {why}");
    }
    let mut builder = ImportObjectBuilder::new(MODULE, share)?;
    builder.with_func::<i32, i32>(GROW, grow)?;
    Ok(builder.build())
}

/// `memory.grow` of memory 0, asking the budget first.
fn grow(
    share: &mut MemoryShare,
    _: &mut Instance,
    frame: &mut CallingFrame,
    args: Vec<WasmValue>,
) -> Result<Vec<WasmValue>, CoreError> {
    const REFUSED: i32 = -1;
    let answer = |value: i32| Ok(vec![WasmValue::from_i32(value)]);
    // `memory.grow` takes its operand as unsigned.
    let [delta] = args[..] else { return answer(REFUSED) };
    let delta = delta.to_i32() as u32;
    let Some(mut memory) = frame.memory_mut(0) else { return answer(REFUSED) };
    let pages = memory.size();
    let (current, desired) = (u64::from(pages) * PAGE, (u64::from(pages) + u64::from(delta)) * PAGE);
    if !share.grow(current, desired) {
        return answer(REFUSED);
    }
    match memory.grow(delta) {
        Ok(()) => answer(pages as i32),
        Err(_) => {
            // Past the engine's own cap (or out of address space).
            share.grow_failed();
            answer(REFUSED)
        }
    }
}

#[cfg(test)]
mod tests {
    use wasmparser::{ExternalKind, Payload};

    use super::*;

    fn gated(wat: &str) -> Vec<u8> {
        let wasm = route_growths(wat::parse_str(wat).unwrap()).unwrap().wasm;
        wasmparser::validate(&wasm).unwrap();
        wasm
    }

    /// The module's function imports, the calls and growths in its code,
    /// its exported functions and its start function.
    #[derive(Default, Debug)]
    struct Seen {
        imports: Vec<(String, String)>,
        calls: Vec<u32>,
        grows: usize,
        exports: Vec<u32>,
        start: Option<u32>,
    }

    fn seen(wasm: &[u8]) -> Seen {
        let mut seen = Seen::default();
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.unwrap() {
                Payload::ImportSection(imports) => {
                    for import in imports.into_imports() {
                        let import = import.unwrap();
                        seen.imports.push((import.module.to_owned(), import.name.to_owned()));
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    let mut operators = body.get_operators_reader().unwrap();
                    while !operators.eof() {
                        match operators.read().unwrap() {
                            Operator::Call { function_index } => seen.calls.push(function_index),
                            Operator::MemoryGrow { .. } => seen.grows += 1,
                            _ => {}
                        }
                    }
                }
                Payload::ExportSection(exports) => {
                    for export in exports {
                        let export = export.unwrap();
                        if export.kind == ExternalKind::Func {
                            seen.exports.push(export.index);
                        }
                    }
                }
                Payload::StartSection { func, .. } => seen.start = Some(func),
                _ => {}
            }
        }
        seen
    }

    #[test]
    fn growths_of_memory_0_call_the_gate_and_function_indices_move_up() {
        let wasm = gated(
            r#"(module
                (import "wasi" "f" (func $f (param i32)))
                (memory 1)
                (func $g (export "g") (param i32) (result i32)
                  (call $h (memory.grow (local.get 0))))
                (func $h (param i32) (result i32) local.get 0)
                (start $s) (func $s))"#,
        );
        let seen = seen(&wasm);
        assert_eq!(seen.imports, [("wasi".into(), "f".into()), (MODULE.into(), GROW.into())], "{seen:?}");
        assert_eq!(seen.grows, 0, "{seen:?}");
        // $g is 2 now: it calls the gate (1), then $h (3); $s is 4.
        assert_eq!(seen.calls, [1, 3], "{seen:?}");
        assert_eq!((seen.exports.as_slice(), seen.start), (&[2][..], Some(4)), "{seen:?}");
    }

    #[test]
    fn a_module_without_types_or_imports_gets_them_and_one_that_never_grows_is_left_alone() {
        let wasm = gated("(module (memory 1) (func (export \"g\") (drop (memory.grow (i32.const 1)))))");
        let seen = seen(&wasm);
        assert_eq!((seen.imports.len(), seen.calls.as_slice(), seen.grows), (1, &[0][..], 0), "{seen:?}");

        let still = wat::parse_str("(module (memory 3) (func (export \"g\") (drop (memory.size))))").unwrap();
        let gated = route_growths(still.clone()).unwrap();
        assert_eq!((gated.wasm, gated.initial_memory), (still, 3 * PAGE));
        let wide = wat::parse_str("(module (memory i64 1) (func (drop (memory.grow (i64.const 1)))))").unwrap();
        assert_eq!(route_growths(wide.clone()).unwrap().wasm, wide);
    }
}
