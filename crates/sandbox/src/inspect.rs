//! `strata driver inspect`: what a driver component imports and exports, read from its binary
//! without compiling it.
//!
//! Loading a driver for use compiles it to native code (Cranelift), which costs memory and
//! time that grow with its code: a 12 MiB component took 2.4 GB and 9 s. Inspecting needs only
//! the names of its top-level imports and exports, so the binary is read (at most
//! [`MAX_COMPONENT_SIZE`](super::cache::MAX_COMPONENT_SIZE), as for loading), validated with
//! `wasmparser` — the validator wasmtime itself uses, one function body at a time — and its
//! import and export sections read. Nothing is compiled and nothing is written to the
//! component cache; loading the driver for use still compiles it under the sandbox's limits.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmparser::{Encoding, FuncValidatorAllocations, Parser, Payload, ValidPayload, Validator};

use super::runtime::{ContractVersion, Interfaces, interfaces};
use super::{Capability, SandboxError};

/// What `driver inspect` shows of a component.
#[derive(Clone, Debug)]
pub struct ComponentSummary {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    /// The WIT version of the driver interface it exports, e.g. `0.1.0`.
    pub wit_version: String,
    /// The contract version whose bindings would serve it.
    pub contract: ContractVersion,
    /// Strata capabilities it imports.
    pub capabilities: Vec<Capability>,
    /// Every top-level import and export, as named in the component (WASI included), in the
    /// component's order.
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Reads and validates the component at `path` (driver `name`, for messages) and lists its
/// imports and exports, without compiling it.
pub fn inspect_component(name: &str, path: &Path) -> Result<ComponentSummary, SandboxError> {
    let wasm = super::cache::read_component(name, path)?;
    let invalid = |reason: String| SandboxError::Invalid {
        driver: name.into(),
        path: path.into(),
        reason,
    };
    let (imports, exports) = names(&wasm).map_err(invalid)?;
    let Interfaces {
        wit_version,
        contract,
        capabilities,
    } = interfaces(name, &imports, &exports)?;
    Ok(ComponentSummary {
        name: name.into(),
        path: path.into(),
        sha256: hex::encode(Sha256::digest(&wasm)),
        wit_version,
        contract,
        capabilities,
        imports,
        exports,
    })
}

/// The top-level import and export names of the component `wasm`, which is validated whole
/// (function bodies included) on the way.
fn names(wasm: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let mut validator = Validator::new();
    let mut allocations = FuncValidatorAllocations::default();
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    // Nesting of modules and components inside the top-level component: only depth 0's
    // imports and exports are the component's own.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| e.to_string())?;
        match validator.payload(&payload).map_err(|e| e.to_string())? {
            ValidPayload::Func(func, body) => {
                let mut v = func.into_validator(allocations);
                v.validate(&body).map_err(|e| e.to_string())?;
                allocations = v.into_allocations();
            }
            ValidPayload::End(_) if depth == 0 => break,
            ValidPayload::End(_) => depth -= 1,
            _ => {}
        }
        match payload {
            Payload::Version {
                encoding: Encoding::Module,
                ..
            } if depth == 0 => {
                return Err("a core WebAssembly module, not a component".into());
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    imports.push(import.map_err(|e| e.to_string())?.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    exports.push(export.map_err(|e| e.to_string())?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}
