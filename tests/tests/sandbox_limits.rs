//! Per-call limits a hostile driver cannot get around (issue 15, items 4 and 5).
//!
//! Time: a driver that sleeps (a blocking WASI wait), loops on small host calls, keeps the
//! host busy with bulk work, or is fed an endless layer stream fails within its limits with
//! an error naming the driver, the operation and the limit; the store lock is released and
//! nothing of the failed layer is left. Each such call runs on its own thread with a
//! watchdog, so a regression fails the test instead of hanging it.
//!
//! Memory: one budget for everything a call allocates. Components that grow a table, or
//! several linear memories, are generated here (the driver SDK cannot emit `table.grow`)
//! and the host's peak RSS (`VmHWM`) is measured while they try.

use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use strata_core::layers::{LayerError, Strata};
use strata_sandbox::{
    CallError, ComponentCache, DriverComponent, DriverRuntime, SandboxEngine, SandboxError,
    SandboxLimits,
};
use strata_tests::{TempStore, cache_dir, create_with, hostile_config, hostile_wasm, root_or_skip};

const NAME: &str = strata_tests::HOSTILE;

/// How long a call may take before the watchdog calls the test hung.
const WATCHDOG: Duration = Duration::from_secs(30);

/// What a watched call reported: its error, how long it took, and whether the store served
/// a plain create right after it (the lock released, the store consistent).
struct Outcome {
    error: LayerError,
    took: Duration,
}

/// Opens the hostile driver with `section` and runs `attack` on a thread; fails the test if
/// it does not return within [`WATCHDOG`]. After the attack the same store must create a
/// plain layer, and the attacked layer `victim` must have left no record and no data.
fn watched(
    section: &str,
    attack: impl FnOnce(&Strata) -> Result<(), LayerError> + Send + 'static,
) -> Outcome {
    let t = TempStore::new();
    let cfg = hostile_config(&t, section);
    let home = t.home(NAME);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let s = t
            .open_with(&hostile_wasm(), cfg)
            .expect("opening the hostile driver");
        let start = Instant::now();
        let r = attack(&s);
        let took = start.elapsed();
        let after = create_with(&s, "after", &[]);
        let victim_record = s.get("victim").is_ok();
        let _ = tx.send((r, took, after, victim_record));
        drop(s);
        drop(t);
    });
    let (r, took, after, victim_record) = rx
        .recv_timeout(WATCHDOG)
        .unwrap_or_else(|_| panic!("the driver call did not return within {WATCHDOG:?}"));
    let error = r.expect_err("the hostile call must fail");
    after.unwrap_or_else(|e| panic!("the store did not serve the next call: {e}"));
    assert!(!victim_record, "the failed layer's record is gone");
    assert!(
        !home.join("dir/victim").exists(),
        "the failed layer's data is gone"
    );
    Outcome { error, took }
}

fn sandbox_error(e: &LayerError) -> &SandboxError {
    match e {
        LayerError::Call(CallError::Sandbox(s)) | LayerError::Sandbox(s) => s,
        LayerError::ApplyFailed { cause, .. } | LayerError::ApplyUndone { cause, .. } => {
            sandbox_error(cause)
        }
        other => panic!("expected a sandbox error, got {other}"),
    }
}

#[test]
fn a_sleeping_driver_fails_at_its_deadline() {
    if !root_or_skip(
        "a_sleeping_driver_fails_at_its_deadline",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let o = watched("deadline = \"1s\"", |s| {
        create_with(s, "victim", &[("sleep", "3600")])
    });
    eprintln!("sleep=3600 with deadline=1s failed after {:?}", o.took);
    assert!(
        matches!(sandbox_error(&o.error), SandboxError::Deadline { deadline, op, .. }
            if *deadline == Duration::from_secs(1) && op == "create"),
        "{}",
        o.error
    );
    let msg = o.error.to_string();
    assert!(
        msg.contains(NAME) && msg.contains("create") && msg.contains("deadline of 1s"),
        "{msg}"
    );
    assert!(o.took < Duration::from_secs(3), "failed after {:?}", o.took);
}

#[test]
fn a_sleep_longer_than_the_call_timeout_fails_at_the_call_timeout() {
    if !root_or_skip(
        "a_sleep_longer_than_the_call_timeout_fails_at_the_call_timeout",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let o = watched("deadline = \"1h\"\ncall_timeout = \"1s\"", |s| {
        create_with(s, "victim", &[("sleep", "3600")])
    });
    eprintln!("sleep=3600 with call_timeout=1s failed after {:?}", o.took);
    assert!(
        matches!(sandbox_error(&o.error), SandboxError::CallTimeout { limit, .. }
            if *limit == Duration::from_secs(1)),
        "{}",
        o.error
    );
    assert!(
        o.error.to_string().contains("call timeout of 1s"),
        "{}",
        o.error
    );
    assert!(o.took < Duration::from_secs(3), "failed after {:?}", o.took);
}

#[test]
fn a_driver_looping_on_small_host_calls_fails_at_its_deadline() {
    if !root_or_skip(
        "a_driver_looping_on_small_host_calls_fails_at_its_deadline",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let o = watched("deadline = \"1s\"", |s| {
        create_with(s, "victim", &[("host-loop", "stat")])
    });
    eprintln!("host-loop=stat with deadline=1s failed after {:?}", o.took);
    assert!(
        matches!(sandbox_error(&o.error), SandboxError::Deadline { .. }),
        "{}",
        o.error
    );
    // The calls are the driver's own time: the deadline holds on the wall clock.
    assert!(
        o.took < Duration::from_millis(1500),
        "failed after {:?}",
        o.took
    );
}

#[test]
fn a_driver_looping_on_bulk_host_work_fails_at_its_call_timeout() {
    if !root_or_skip(
        "a_driver_looping_on_bulk_host_work_fails_at_its_call_timeout",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let o = watched("deadline = \"1s\"\ncall_timeout = \"2s\"", |s| {
        create_with(s, "victim", &[("host-loop", "copy")])
    });
    eprintln!(
        "host-loop=copy with call_timeout=2s failed after {:?}",
        o.took
    );
    assert!(
        matches!(sandbox_error(&o.error), SandboxError::CallTimeout { .. }),
        "{}",
        o.error
    );
    assert!(o.took < Duration::from_secs(4), "failed after {:?}", o.took);
}

/// A layer stream that never ends: one tar header for a file of a terabyte, then its
/// content, slowly.
struct Endless {
    header: Vec<u8>,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.header.is_empty() {
            let n = buf.len().min(self.header.len());
            buf[..n].copy_from_slice(&self.header[..n]);
            self.header.drain(..n);
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(2));
        let n = buf.len().min(4096);
        buf[..n].fill(b'x');
        Ok(n)
    }
}

#[test]
fn applying_an_endless_stream_stops_at_the_call_timeout() {
    if !root_or_skip(
        "applying_an_endless_stream_stops_at_the_call_timeout",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let o = watched("call_timeout = \"2s\"", |s| {
        create_with(s, "victim", &[])?;
        let mut h = tar::Header::new_gnu();
        h.set_path("big").unwrap();
        h.set_size(1 << 40);
        h.set_mode(0o644);
        h.set_cksum();
        let r = s
            .apply(
                "victim",
                Box::new(Endless {
                    header: h.as_bytes().to_vec(),
                }),
            )
            .map(|_| ());
        // A failed apply leaves the layer as it was (here: empty); removed for the checks of
        // `watched`.
        assert!(s.get("victim").is_ok(), "the failed apply kept the layer");
        s.remove("victim")?;
        r
    });
    eprintln!(
        "an endless layer with call_timeout=2s failed after {:?}",
        o.took
    );
    assert!(
        matches!(o.error, LayerError::ApplyUndone { .. }),
        "{}",
        o.error
    );
    assert!(
        matches!(sandbox_error(&o.error), SandboxError::CallTimeout { .. }),
        "{}",
        o.error
    );
    assert!(o.took < Duration::from_secs(4), "failed after {:?}", o.took);
}

/// Memory tests measure the process's peak RSS: one at a time.
static MEASURING: Mutex<()> = Mutex::new(());

/// The memory limit the attacks run under.
const LIMIT: usize = 256 << 20;
/// What the host's RSS may grow by during the call beyond the limit itself: the store, the
/// instance and wasmtime's bookkeeping (measured: a few MiB).
const HEADROOM: usize = 32 << 20;

fn status_kib(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets the peak RSS to the current RSS (`clear_refs` 5).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
}

#[derive(Clone, Copy, Debug)]
enum Attack {
    /// `table.grow` to 2^27 funcref elements (1 GiB of host memory) in steps of 2^20.
    Table,
    /// Four linear memories, each grown to 200 MiB and written.
    Memories,
}

/// Runs `attack` in a generated component's `create` under [`LIMIT`]; returns the error
/// (`None` if the call succeeded) and how far the host's RSS rose above where it was before
/// the call (peak during the call less RSS before), in bytes.
fn run_attack(attack: Attack) -> (Option<SandboxError>, usize) {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join(format!("{attack:?}.wasm").to_lowercase());
    std::fs::write(&wasm, generated::component(attack)).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let engine = SandboxEngine::new().unwrap();
    let cache = ComponentCache::new(cache_dir());
    let component = DriverComponent::load(&engine, &cache, "attack", &wasm).unwrap();
    let limits = SandboxLimits {
        memory: LIMIT,
        ..SandboxLimits::default()
    };
    let driver = DriverRuntime::new(&engine, &component, &[], Path::new(&home), limits).unwrap();
    reset_peak_rss();
    let before = status_kib("VmRSS:") << 10;
    let r = driver.create("x", None, false, &[]);
    let peak = status_kib("VmHWM:") << 10;
    eprintln!(
        "{attack:?}: RSS before {} MiB, peak during the call {} MiB, limit {} MiB",
        before >> 20,
        peak >> 20,
        LIMIT >> 20
    );
    let err = match r {
        Ok(()) => None,
        Err(CallError::Sandbox(e)) => Some(e),
        Err(other) => panic!("{attack:?}: unexpected {other}"),
    };
    (err, peak.saturating_sub(before))
}

fn assert_refused(attack: Attack) {
    let (err, growth) = run_attack(attack);
    match err {
        Some(SandboxError::OutOfMemory { limit, .. }) => assert_eq!(limit, LIMIT),
        other => panic!("{attack:?} must fail with OutOfMemory, got {other:?}"),
    }
    assert!(
        growth < LIMIT + HEADROOM,
        "{attack:?}: the host's RSS rose by {} MiB during a call under a {} MiB limit",
        growth >> 20,
        LIMIT >> 20
    );
}

#[test]
fn a_growing_table_counts_against_the_memory_limit() {
    assert_refused(Attack::Table);
}

#[test]
fn several_memories_share_one_memory_limit() {
    assert_refused(Attack::Memories);
}

/// Driver components built from core wasm written here: every function of
/// `strata:driver/driver` traps except `create`, which runs the attack.
mod generated {
    use super::Attack;
    use wasm_encoder::{
        BlockType, CodeSection, ConstExpr, ExportKind, ExportSection, Function, FunctionSection,
        GlobalSection, GlobalType, HeapType, Instruction as I, MemorySection, MemoryType, Module,
        RefType, TableSection, TableType, TypeSection, ValType,
    };
    use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
    use wit_parser::abi::{AbiVariant, WasmType};
    use wit_parser::{
        LiftLowerAbi, ManglingAndAbi, Resolve, WasmExport, WasmExportKind, WorldItem,
    };

    fn val(t: &WasmType) -> ValType {
        match t {
            WasmType::I32 | WasmType::Pointer | WasmType::Length => ValType::I32,
            WasmType::I64 | WasmType::PointerOrI64 => ValType::I64,
            WasmType::F32 => ValType::F32,
            WasmType::F64 => ValType::F64,
        }
    }

    /// Where `create` says "ok": a zeroed `result<_, error>` in memory 0.
    const RET_AREA: i32 = 1024;
    /// Where `cabi_realloc` starts handing out memory.
    const HEAP: i32 = 4096;

    pub fn component(attack: Attack) -> Vec<u8> {
        let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/v0.2");
        let mut resolve = Resolve::new();
        let (pkg, _) = resolve.push_dir(&wit).expect("parsing wit/");
        let world = resolve
            .select_world(&[pkg], Some("strata-driver"))
            .expect("the strata-driver world");
        let mangling = ManglingAndAbi::Legacy(LiftLowerAbi::Sync);

        let mut types = TypeSection::new();
        let mut funcs = FunctionSection::new();
        let mut exports = ExportSection::new();
        let mut code = CodeSection::new();
        let mut next_func = 0u32;

        // cabi_realloc: a bump allocator (the host only passes a few short strings).
        types.ty().function([ValType::I32; 4], [ValType::I32]);
        funcs.function(0);
        let mut f = Function::new([(1, ValType::I32)]);
        // ret = (bump + align - 1) & -align; bump = ret + new_size
        f.instruction(&I::GlobalGet(0))
            .instruction(&I::LocalGet(2))
            .instruction(&I::I32Add)
            .instruction(&I::I32Const(1))
            .instruction(&I::I32Sub)
            .instruction(&I::I32Const(0))
            .instruction(&I::LocalGet(2))
            .instruction(&I::I32Sub)
            .instruction(&I::I32And)
            .instruction(&I::LocalTee(4))
            .instruction(&I::LocalGet(3))
            .instruction(&I::I32Add)
            .instruction(&I::GlobalSet(0))
            .instruction(&I::LocalGet(4))
            .instruction(&I::End);
        code.function(&f);
        exports.export(
            &resolve.wasm_export_name(mangling, WasmExport::Realloc),
            ExportKind::Func,
            next_func,
        );
        next_func += 1;

        for (key, item) in &resolve.worlds[world].exports {
            let WorldItem::Interface { id, .. } = item else {
                continue;
            };
            for (name, func) in &resolve.interfaces[*id].functions {
                let sig = resolve.wasm_signature(AbiVariant::GuestExport, func);
                types.ty().function(
                    sig.params.iter().map(val).collect::<Vec<_>>(),
                    sig.results.iter().map(val).collect::<Vec<_>>(),
                );
                funcs.function(next_func);
                let body = if name == "create" {
                    assert_eq!(sig.results.len(), 1, "create returns a pointer");
                    attack_body(attack, sig.params.len() as u32)
                } else {
                    let mut f = Function::new([]);
                    f.instruction(&I::Unreachable).instruction(&I::End);
                    f
                };
                code.function(&body);
                let export = resolve.wasm_export_name(
                    mangling,
                    WasmExport::Func {
                        interface: Some(key),
                        func,
                        kind: WasmExportKind::Normal,
                    },
                );
                exports.export(&export, ExportKind::Func, next_func);
                next_func += 1;
            }
        }

        let mut tables = TableSection::new();
        if matches!(attack, Attack::Table) {
            tables.table(TableType {
                element_type: RefType::FUNCREF,
                table64: false,
                minimum: 0,
                maximum: None,
                shared: false,
            });
        }
        let mut memories = MemorySection::new();
        let count = match attack {
            Attack::Table => 1,
            Attack::Memories => 4,
        };
        for i in 0..count {
            memories.memory(MemoryType {
                minimum: u64::from(i == 0),
                maximum: None,
                memory64: false,
                shared: false,
                page_size_log2: None,
            });
        }
        exports.export(
            &resolve.wasm_export_name(mangling, WasmExport::Memory),
            ExportKind::Memory,
            0,
        );
        let mut globals = GlobalSection::new();
        globals.global(
            GlobalType {
                val_type: ValType::I32,
                mutable: true,
                shared: false,
            },
            &ConstExpr::i32_const(HEAP),
        );

        let mut module = Module::new();
        module
            .section(&types)
            .section(&funcs)
            .section(&tables)
            .section(&memories)
            .section(&globals)
            .section(&exports)
            .section(&code);
        let mut bytes = module.finish();
        embed_component_metadata(&mut bytes, &resolve, world, StringEncoding::UTF8)
            .expect("embedding the component type");
        ComponentEncoder::default()
            .module(&bytes)
            .expect("a core module wit-component accepts")
            .validate(true)
            .encode()
            .expect("encoding the component")
    }

    /// `create`'s body; `params` is its parameter count (its first local after them is a
    /// scratch i32).
    fn attack_body(attack: Attack, params: u32) -> Function {
        let scratch = params;
        let mut f = Function::new([(1, ValType::I32)]);
        match attack {
            Attack::Table => {
                // until table.size >= 2^27: table.grow(null, 2^20)
                f.instruction(&I::Loop(BlockType::Empty))
                    .instruction(&I::RefNull(HeapType::FUNC))
                    .instruction(&I::I32Const(1 << 20))
                    .instruction(&I::TableGrow(0))
                    .instruction(&I::Drop)
                    .instruction(&I::TableSize(0))
                    .instruction(&I::I32Const(1 << 27))
                    .instruction(&I::I32LtU)
                    .instruction(&I::BrIf(0))
                    .instruction(&I::End);
            }
            Attack::Memories => {
                for m in 0..4u32 {
                    // while memory.size(m) < 3200 pages (200 MiB): grow by 1 MiB, fill it
                    f.instruction(&I::Block(BlockType::Empty))
                        .instruction(&I::Loop(BlockType::Empty))
                        .instruction(&I::MemorySize(m))
                        .instruction(&I::I32Const(3200))
                        .instruction(&I::I32GeU)
                        .instruction(&I::BrIf(1))
                        .instruction(&I::MemorySize(m))
                        .instruction(&I::I32Const(65536))
                        .instruction(&I::I32Mul)
                        .instruction(&I::LocalSet(scratch))
                        .instruction(&I::I32Const(16))
                        .instruction(&I::MemoryGrow(m))
                        .instruction(&I::I32Const(-1))
                        .instruction(&I::I32Eq)
                        .instruction(&I::BrIf(1))
                        .instruction(&I::LocalGet(scratch))
                        .instruction(&I::I32Const(0xa5))
                        .instruction(&I::I32Const(1 << 20))
                        .instruction(&I::MemoryFill(m))
                        .instruction(&I::Br(0))
                        .instruction(&I::End)
                        .instruction(&I::End);
                }
            }
        }
        f.instruction(&I::I32Const(RET_AREA)).instruction(&I::End);
        f
    }
}
