//! Isolation for untrusted WASM mappers.
//!
//! An operator's module is a *mapper*: it sees one privacy unit's raw rows and answers with
//! rows that then go through the release gate. It must have no way to carry rows anywhere
//! else, and one unit must never influence another unit's output. This module enforces that:
//!
//! - **Nothing to call.** No WASI and no host function except `veil.log(ptr, len)`, whose
//!   text is dropped. No clock, randomness, files or network exist for the guest. A module
//!   importing anything else is refused before it sees a row ([`WasmRefusal`]).
//! - **A fresh instance per unit.** [`Mapper::run_unit`] instantiates the pre-linked module
//!   into a new `Store` for every call and drops it after; the pooling allocator resets a
//!   reused slot's memory, so no global, memory byte or table entry survives a unit.
//! - **Deterministic.** NaN canonicalisation on, no threads, relaxed SIMD deterministic.
//! - **Bounded.** Fuel per unit (the metering unit: about one per instruction), a wall-clock
//!   deadline per unit (fuel does not count host time, and `memory.fill` of 16 MiB costs one
//!   unit of fuel), checked on every tick of the epoch clock, a linear-memory and a table limit
//!   checked by [`UnitLimiter`] (a `Store` is unlimited by default), a stack limit, and an
//!   output size limit. A unit that breaks one gets a typed [`UnitFailure`]; the caller decides
//!   what the unit contributes instead, and the host carries on.
//! - **Compiled once.** [`WasmEngine::compile`] caches modules by their BLAKE3-keyed content
//!   so a second job with the same template does not recompile; module size and compile time
//!   are bounded. A compile cannot be stopped from inside its process, so untrusted bytes are
//!   compiled only in processes killed at their limits: an upload's [`WasmEngine::check`] in
//!   `veil __wasm-check`, a job's compile in `veil __job-exec`.
//!
//! # The host ABI
//!
//! A mapper module exports:
//!
//! | export | type | meaning |
//! |---|---|---|
//! | `memory` | memory | its linear memory (32-bit) |
//! | `veil_alloc` | `(len: i32) -> i32` | room for `len` input bytes; the host writes the input there |
//! | `veil_map` | `(ptr: i32, len: i32) -> i64` | maps the input at `ptr`; returns `out_ptr << 32 \| out_len`, or 0 on failure |
//!
//! and may import only `veil.log: (ptr: i32, len: i32) -> ()`. Input and output are
//! batches in `veil_sdk::columnar`'s layout. `veil_sdk::guest` writes all of this for a plain
//! Rust function.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::{
    Config, Enabled, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module,
    ModuleExport, PoolingAllocationConfig, ResourceLimiter, Store, Trap, UpdateDeadline, ValType,
};

/// Largest module accepted, in bytes. Compile time grows with module size; this bounds it.
pub const MODULE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Longest a module may take to compile, in milliseconds. (An upload's check in
/// `veil_runtime::compile` kills its child process at this limit; only there may the
/// `VEIL_COMPILE_MS_MAX` environment variable lower it, for tests.)
pub const COMPILE_MS_MAX: u64 = 30_000;
/// Largest linear memory any instance may have, in bytes (the engine's hard ceiling).
pub const MEMORY_BYTES_CEILING: usize = 256 * 1024 * 1024;
/// Native stack a guest may use, in bytes.
pub const STACK_BYTES: usize = 512 * 1024;
/// Instances that may be alive at once in this process.
const POOLED_INSTANCES: u32 = 64;
/// Slowest the epoch clock ticks, in microseconds: the resolution of deadlines of a
/// millisecond and more.
pub const EPOCH_TICK_US_MAX: u64 = 1_000;
/// Fastest the epoch clock may tick, in microseconds. Each tick wakes a thread (about 1% of
/// a core per 10 µs of period below 100 µs), so shorter deadlines are not offered.
pub const EPOCH_TICK_US_MIN: u64 = 50;
/// A unit is stopped at the first tick at or after its deadline, so the clock ticks at least
/// this many times per deadline: a unit ends within `1 + 1/DEADLINE_TICKS_MIN` of its deadline
/// (plus the operating system's wake-up latency).
pub const DEADLINE_TICKS_MIN: u64 = 2;
/// Shortest deadline a unit may be given, in microseconds.
pub const UNIT_WALL_US_MIN: u64 = EPOCH_TICK_US_MIN * DEADLINE_TICKS_MIN;
/// Bytes in a WebAssembly page.
const WASM_PAGE_BYTES: u64 = 64 * 1024;
/// Compiled modules kept in the cache.
const CACHE_ENTRIES_MAX: usize = 32;
/// Bytes of each pooled linear-memory slot kept resident between units (reset in place).
const LINEAR_MEMORY_KEEP_RESIDENT_BYTES: usize = 2 * 1024 * 1024;
/// Bytes of each pooled table slot kept resident between units.
const TABLE_KEEP_RESIDENT_BYTES: usize = 64 * 1024;

/// Limits of one unit's call. The defaults suit the example mappers with a wide margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmLimits {
    /// Fuel one unit's call may burn (instantiate, allocate, map).
    pub fuel_per_unit: u64,
    /// Wall-clock time one unit's call may take, in microseconds (at least
    /// [`UNIT_WALL_US_MIN`]). The call is stopped at the first tick of the epoch clock after
    /// it, at most `1/DEADLINE_TICKS_MIN` of it later.
    pub unit_wall_us: u64,
    /// Linear memory one instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Elements one table may hold.
    pub table_elements: usize,
    /// Largest input batch handed to one call, in bytes.
    pub input_bytes_per_unit: usize,
    /// Largest output batch one call may return, in bytes.
    pub output_bytes_per_unit: usize,
}

impl Default for WasmLimits {
    fn default() -> Self {
        Self {
            fuel_per_unit: 20_000_000,
            unit_wall_us: 1_000_000,
            memory_bytes: 16 * 1024 * 1024,
            table_elements: 10_000,
            input_bytes_per_unit: 4 * 1024 * 1024,
            output_bytes_per_unit: 1024 * 1024,
        }
    }
}

/// Why a module is refused before it sees any row. The texts name the module's own parts,
/// never data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WasmRefusal {
    #[error("the module is {bytes} bytes; the limit is {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    #[error("the module is not valid WebAssembly for this host: {0}")]
    Invalid(String),
    #[error("the module took longer than {limit_ms} ms to compile; make it smaller")]
    CompileTimedOut { limit_ms: u64 },
    #[error(
        "the module imports `{module}.{name}`; a mapper may import only `veil.log` (no WASI, no other host functions)"
    )]
    ForbiddenImport { module: String, name: String },
    #[error("the module does not export `{0}`; build it with veil_sdk::veil_mapper!")]
    MissingExport(&'static str),
    #[error("the module's `{name}` has the wrong type; expected {expected}")]
    WrongSignature {
        name: &'static str,
        expected: &'static str,
    },
    #[error("the module's memory starts at {bytes} bytes, above the {limit} bytes a unit may use")]
    MemoryTooLarge { bytes: u64, limit: usize },
    #[error("the module's table starts at {elements} elements, above the limit of {limit}")]
    TableTooLarge { elements: u64, limit: usize },
    #[error(
        "the module uses 64-bit or shared memory, or more than one memory; use one 32-bit memory"
    )]
    UnsupportedMemory,
}

/// Why one unit's call produced no usable output. Kept inside the domain: which units failed
/// is never told to the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitFailure {
    /// The unit's fuel ran out (a long or endless loop).
    OutOfFuel,
    /// The unit's wall-clock deadline passed.
    Deadline,
    /// The guest tried to grow its memory or table beyond the limit.
    MemoryLimit,
    /// The guest's call stack overflowed (deep recursion).
    StackOverflow,
    /// Any other trap (unreachable, out-of-bounds access, division by zero, …).
    Trap,
    /// `veil_alloc` returned room outside the guest's memory.
    BadInputBuffer,
    /// `veil_map` returned 0 (the guest could not read its input).
    NoOutput,
    /// `veil_map` pointed outside the guest's memory.
    BadOutputBuffer,
    /// The output is larger than the limit.
    OutputTooLarge,
    /// The input is larger than the limit; the unit is not called.
    InputTooLarge,
    /// The instance could not be created (e.g. every pooled slot busy).
    Instantiate,
}

impl UnitFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutOfFuel => "out of fuel",
            Self::Deadline => "deadline",
            Self::MemoryLimit => "memory limit",
            Self::StackOverflow => "stack overflow",
            Self::Trap => "trap",
            Self::BadInputBuffer => "bad input buffer",
            Self::NoOutput => "no output",
            Self::BadOutputBuffer => "bad output buffer",
            Self::OutputTooLarge => "output too large",
            Self::InputTooLarge => "input too large",
            Self::Instantiate => "instantiate",
        }
    }
}

/// What one unit's call gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitRun {
    /// The output batch's bytes (still unchecked: parse them with `veil_sdk::columnar`).
    pub output: Result<Vec<u8>, UnitFailure>,
    /// Fuel the call burned.
    pub fuel: u64,
}

/// A store's view of its limits: refuses growth past them and remembers that it did.
#[derive(Debug)]
pub struct UnitLimiter {
    memory_bytes: usize,
    table_elements: usize,
    denied: bool,
}

impl ResourceLimiter for UnitLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.denied = true;
            return Err(wasmtime::format_err!("memory limit"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.denied = true;
            return Err(wasmtime::format_err!("table limit"));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}

/// The per-call state a store carries.
#[derive(Debug)]
struct UnitState {
    limiter: UnitLimiter,
    /// When the call began (before instantiation) and how long it may take.
    started: Instant,
    deadline: Duration,
}

/// A compiled, validated, pre-linked mapper module.
pub struct Mapper {
    pre: InstancePre<UnitState>,
    /// The host ABI's exports, looked up by name once here rather than on every unit.
    exports: AbiExports,
    engine: Engine,
    /// The module's bytes, for compiling a [`Mapper::replica`].
    bytes: Arc<[u8]>,
    /// Size of the module, in bytes.
    pub module_bytes: usize,
}

impl std::fmt::Debug for Mapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapper")
            .field("module_bytes", &self.module_bytes)
            .finish()
    }
}

/// Where the host ABI's exports sit in a module (see [`check_abi`]).
struct AbiExports {
    memory: ModuleExport,
    alloc: ModuleExport,
    map: ModuleExport,
}

impl AbiExports {
    fn of(module: &Module) -> Result<Self, WasmRefusal> {
        let export = |name: &'static str| {
            module
                .get_export_index(name)
                .ok_or(WasmRefusal::MissingExport(name))
        };
        Ok(Self {
            memory: export("memory")?,
            alloc: export("veil_alloc")?,
            map: export("veil_map")?,
        })
    }
}

/// The process's WASM engine: one configuration, one pooling allocator, one epoch clock and
/// one cache of compiled mappers.
pub struct WasmEngine {
    engine: Engine,
    linker: Linker<UnitState>,
    cache: Mutex<HashMap<[u8; 32], Arc<Mapper>>>,
    compiles: std::sync::atomic::AtomicU64,
}

/// The epoch clock's period, in microseconds, shared between the mappers (which shorten it
/// when a unit's deadline needs it) and the ticking thread. It only ever shrinks, so a unit's
/// deadline can only be checked more often than it planned, never less.
static EPOCH_TICK_US: AtomicU64 = AtomicU64::new(EPOCH_TICK_US_MAX);

/// Makes the epoch clock tick at least `DEADLINE_TICKS_MIN` times within `unit_wall_us`.
/// The clock starts at [`EPOCH_TICK_US_MAX`] and speeds up only for a job whose units have
/// deadlines that short (a mapper over millions of rows), so other jobs do not pay for the
/// wake-ups.
fn tick_for(unit_wall_us: u64) {
    let wanted = (unit_wall_us / DEADLINE_TICKS_MIN).clamp(EPOCH_TICK_US_MIN, EPOCH_TICK_US_MAX);
    // A plain load first: the common case (the clock is fast enough) then writes nothing
    // that two mapping threads would pass back and forth.
    if EPOCH_TICK_US.load(Ordering::Relaxed) > wanted {
        EPOCH_TICK_US.fetch_min(wanted, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine").finish_non_exhaustive()
    }
}

impl WasmEngine {
    /// The process-wide engine, made on first use.
    pub fn global() -> Result<&'static WasmEngine, WasmRefusal> {
        static ENGINE: OnceLock<Result<WasmEngine, String>> = OnceLock::new();
        ENGINE
            .get_or_init(|| WasmEngine::new().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| WasmRefusal::Invalid(format!("the WASM engine could not start: {e}")))
    }

    fn new() -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_nan_canonicalization(true)
            // Threads are not compiled into this wasmtime (no `threads` feature): a module
            // with shared memory does not validate.
            .wasm_relaxed_simd(false)
            .relaxed_simd_deterministic(true)
            .wasm_memory64(false)
            .wasm_multi_memory(false)
            // Compilation is serial (no `parallel-compilation` feature): one job's compile
            // never takes both cores from other jobs.
            .max_wasm_stack(STACK_BYTES);
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_core_instances(POOLED_INSTANCES)
            .total_memories(POOLED_INSTANCES)
            .total_tables(POOLED_INSTANCES)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .max_memory_size(MEMORY_BYTES_CEILING)
            .table_elements(100_000)
            // Keep the first 2 MiB of each slot resident: resetting it for the next unit then
            // rewrites pages in place, instead of returning them to the kernel and faulting
            // them back in (and shooting down TLBs on every core).
            .linear_memory_keep_resident(LINEAR_MEMORY_KEEP_RESIDENT_BYTES)
            .table_keep_resident(TABLE_KEEP_RESIDENT_BYTES)
            // Not `PAGEMAP_SCAN`, although resetting only the pages the kernel reports dirty
            // is about 1 µs per unit faster than rewriting the kept region whole: wasmtime 48
            // asks only for *present* dirty pages, so a dirty page the kernel has swapped out
            // is neither reset nor released, and the next unit in the slot would read it
            // (bytecodealliance/wasmtime#14357). Rewriting the region touches every page,
            // swapped or not.
            .pagemap_scan(Enabled::No);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // The only host function: a log line, dropped unread so it can never reach anyone.
        linker.func_wrap("veil", "log", |_ptr: i32, _len: i32| {})?;
        // The epoch clock: on each tick, every running unit compares its own elapsed time with
        // its deadline (see `run_unit`), so a late or early tick never shortens or lengthens a
        // deadline — it only moves the moment it is noticed.
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("veil-wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    let period = EPOCH_TICK_US.load(Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(period));
                }
            })
            .map_err(|e| wasmtime::format_err!("starting the epoch clock: {e}"))?;
        Ok(Self {
            engine,
            linker,
            cache: Mutex::new(HashMap::new()),
            compiles: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many modules this engine has compiled (cache misses), for tests and metrics.
    pub fn compiles(&self) -> u64 {
        self.compiles.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Validates and compiles a mapper module, or returns the cached one with the same bytes.
    /// `limits` are the limits its units will run under; a module that could not start within
    /// them is refused now rather than failing on every unit.
    ///
    /// The compile runs on a thread the caller stops waiting for after [`COMPILE_MS_MAX`], but
    /// a compile cannot be stopped from inside a process: that thread goes on until it is done.
    /// So only a process that is itself killed at its limits may call this with bytes no check
    /// has accepted — a job's child process (`veil __job-exec`). A server checks an upload with
    /// [`WasmEngine::check`] in a child process of its own (`veil __wasm-check`).
    pub fn compile(&self, bytes: &[u8], limits: &WasmLimits) -> Result<Arc<Mapper>, WasmRefusal> {
        check_size(bytes)?;
        let key = *blake3::hash(bytes).as_bytes();
        let cached = self.cache.lock().ok().and_then(|c| c.get(&key).cloned());
        let mapper = match cached {
            Some(mapper) => mapper,
            None => {
                let mapper = Arc::new(self.compile_uncached(bytes)?);
                self.compiles
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Ok(mut cache) = self.cache.lock() {
                    if cache.len() >= CACHE_ENTRIES_MAX {
                        cache.clear();
                    }
                    cache.insert(key, mapper.clone());
                }
                mapper
            }
        };
        check_initial_sizes(mapper.pre.module(), limits)?;
        Ok(mapper)
    }

    /// Runs every check [`WasmEngine::compile`] runs — size, validation, compilation, the host
    /// ABI, linking, the initial memory and table sizes under `limits` — on the calling thread,
    /// without the cache, and drops the compiled module.
    ///
    /// It has no time limit of its own: it is meant for a process its parent kills when the
    /// compile takes too long (`veil __wasm-check`, see `veil_runtime::compile`), since a
    /// thread cannot be stopped once cranelift runs.
    pub fn check(&self, bytes: &[u8], limits: &WasmLimits) -> Result<(), WasmRefusal> {
        check_size(bytes)?;
        let module = Module::from_binary(&self.engine, bytes)
            .map_err(|e| WasmRefusal::Invalid(first_line(&e)))?;
        let mapper = self.link(module, Arc::from(bytes))?;
        check_initial_sizes(mapper.pre.module(), limits)
    }

    fn compile_uncached(&self, bytes: &[u8]) -> Result<Mapper, WasmRefusal> {
        // Compile on a thread of its own so a pathological module cannot hold the caller
        // past the limit. The thread finishes in the background and its result is dropped;
        // the process it runs in must have OS limits (see `compile`).
        let (send, receive) = mpsc::channel();
        let engine = self.engine.clone();
        let owned: Arc<[u8]> = Arc::from(bytes);
        let to_compile = owned.clone();
        std::thread::Builder::new()
            .name("veil-wasm-compile".into())
            .spawn(move || {
                let _ = send.send(Module::from_binary(&engine, &to_compile));
            })
            .map_err(|_| WasmRefusal::Invalid("no thread to compile on".into()))?;
        let module = match receive.recv_timeout(Duration::from_millis(COMPILE_MS_MAX)) {
            Ok(Ok(module)) => module,
            // The module is the operator's own bytes; wasmtime's reason names its parts.
            Ok(Err(e)) => return Err(WasmRefusal::Invalid(first_line(&e))),
            Err(_) => {
                return Err(WasmRefusal::CompileTimedOut {
                    limit_ms: COMPILE_MS_MAX,
                });
            }
        };
        self.link(module, owned)
    }

    /// Checks a compiled module's imports and exports and pre-links it.
    fn link(&self, module: Module, bytes: Arc<[u8]>) -> Result<Mapper, WasmRefusal> {
        check_abi(&module)?;
        let exports = AbiExports::of(&module)?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| WasmRefusal::Invalid(first_line(&e)))?;
        Ok(Mapper {
            pre,
            exports,
            engine: self.engine.clone(),
            module_bytes: bytes.len(),
            bytes,
        })
    }
}

/// Compile time grows with module size: larger modules are refused before any compile.
fn check_size(bytes: &[u8]) -> Result<(), WasmRefusal> {
    if bytes.len() > MODULE_BYTES_MAX {
        return Err(WasmRefusal::TooLarge {
            bytes: bytes.len(),
            max: MODULE_BYTES_MAX,
        });
    }
    Ok(())
}

fn first_line(error: &wasmtime::Error) -> String {
    let text = format!("{error:#}");
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect()
}

/// Imports and exports must be exactly the host ABI.
fn check_abi(module: &Module) -> Result<(), WasmRefusal> {
    for import in module.imports() {
        let allowed = import.module() == "veil"
            && import.name() == "log"
            && matches!(import.ty(), ExternType::Func(ref f)
                if f.params().len() == 2
                    && f.params().all(|p| matches!(p, ValType::I32))
                    && f.results().len() == 0);
        if !allowed {
            return Err(WasmRefusal::ForbiddenImport {
                module: import.module().chars().take(64).collect(),
                name: import.name().chars().take(64).collect(),
            });
        }
    }
    let mut memories = 0;
    for export in module.exports() {
        if let ExternType::Memory(memory) = export.ty() {
            memories += 1;
            if memory.is_64() || memory.is_shared() {
                return Err(WasmRefusal::UnsupportedMemory);
            }
        }
    }
    if memories > 1 {
        return Err(WasmRefusal::UnsupportedMemory);
    }
    let func =
        |name: &'static str, params: usize, result: ValType, expected: &'static str| match module
            .get_export(name)
        {
            Some(ExternType::Func(f)) => {
                let ok = f.params().len() == params
                    && f.params().all(|p| matches!(p, ValType::I32))
                    && f.results().len() == 1
                    && f.results().all(|r| r.matches(&result));
                if ok {
                    Ok(())
                } else {
                    Err(WasmRefusal::WrongSignature { name, expected })
                }
            }
            Some(_) => Err(WasmRefusal::WrongSignature { name, expected }),
            None => Err(WasmRefusal::MissingExport(name)),
        };
    match module.get_export("memory") {
        Some(ExternType::Memory(_)) => {}
        Some(_) => {
            return Err(WasmRefusal::WrongSignature {
                name: "memory",
                expected: "a memory",
            });
        }
        None => return Err(WasmRefusal::MissingExport("memory")),
    }
    func("veil_alloc", 1, ValType::I32, "(i32) -> i32")?;
    func("veil_map", 2, ValType::I64, "(i32, i32) -> i64")?;
    Ok(())
}

/// A module whose memory or table starts above the limits could never run a unit.
fn check_initial_sizes(module: &Module, limits: &WasmLimits) -> Result<(), WasmRefusal> {
    let needs = module.resources_required();
    if needs.num_memories > 1 {
        return Err(WasmRefusal::UnsupportedMemory);
    }
    if let Some(pages) = needs.max_initial_memory_size {
        let bytes = pages.saturating_mul(WASM_PAGE_BYTES);
        if bytes > limits.memory_bytes as u64 {
            return Err(WasmRefusal::MemoryTooLarge {
                bytes,
                limit: limits.memory_bytes,
            });
        }
    }
    if let Some(elements) = needs.max_initial_table_size
        && elements > limits.table_elements as u64
    {
        return Err(WasmRefusal::TableTooLarge {
            elements,
            limit: limits.table_elements,
        });
    }
    Ok(())
}

impl Mapper {
    /// The same module compiled again on an engine of its own — its own pool of instance
    /// slots and its own epoch clock — for another mapping thread.
    ///
    /// Two threads instantiating from one engine share its pool (a unit's slot was often last
    /// used, and its memory last rewritten, on the other core) and its type registry. With the
    /// pension mapper on two cores, two threads on one engine mapped units only about 1.1×
    /// as fast as one thread, each unit taking 60% more CPU; with an engine each, about 1.5×
    /// as fast at one thread's CPU per unit. The price is the module's compile time, once per
    /// thread. The bytes were compiled once already, within the limits, in this process.
    pub fn replica(&self) -> Result<Mapper, WasmRefusal> {
        let engine = WasmEngine::new()
            .map_err(|e| WasmRefusal::Invalid(format!("the WASM engine could not start: {e}")))?;
        engine.compile_uncached(&self.bytes)
    }

    /// Runs the mapper over one unit's input batch on a fresh instance.
    pub fn run_unit(&self, input: &[u8], limits: &WasmLimits) -> UnitRun {
        if input.len() > limits.input_bytes_per_unit {
            return UnitRun {
                output: Err(UnitFailure::InputTooLarge),
                fuel: 0,
            };
        }
        let unit_wall_us = limits.unit_wall_us.max(UNIT_WALL_US_MIN);
        tick_for(unit_wall_us);
        let mut store = Store::new(
            &self.engine,
            UnitState {
                limiter: UnitLimiter {
                    memory_bytes: limits.memory_bytes.min(MEMORY_BYTES_CEILING),
                    table_elements: limits.table_elements,
                    denied: false,
                },
                started: Instant::now(),
                deadline: Duration::from_micros(unit_wall_us),
            },
        );
        store.limiter(|state| &mut state.limiter);
        let fuel = limits.fuel_per_unit;
        if store.set_fuel(fuel).is_err() {
            return UnitRun {
                output: Err(UnitFailure::Instantiate),
                fuel: 0,
            };
        }
        // Every tick, the unit checks its own clock: it is stopped at the first tick at or
        // after its deadline, whenever the tick comes.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|context| {
            let state = context.data();
            Ok(if state.started.elapsed() >= state.deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Continue(1)
            })
        });
        let output = call(&self.pre, &self.exports, &mut store, input, limits);
        let burned = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let output = output.map_err(|error| match error {
            CallError::Failure(failure) => failure,
            CallError::Wasm(e) => classify(&e, store.data().limiter.denied),
        });
        UnitRun {
            output,
            fuel: burned,
        }
    }
}

enum CallError {
    Failure(UnitFailure),
    Wasm(wasmtime::Error),
}

impl From<wasmtime::Error> for CallError {
    fn from(error: wasmtime::Error) -> Self {
        Self::Wasm(error)
    }
}

fn call(
    pre: &InstancePre<UnitState>,
    exports: &AbiExports,
    store: &mut Store<UnitState>,
    input: &[u8],
    limits: &WasmLimits,
) -> Result<Vec<u8>, CallError> {
    let instance = pre.instantiate(&mut *store).map_err(|e| {
        if store.data().limiter.denied {
            CallError::Failure(UnitFailure::MemoryLimit)
        } else if e.downcast_ref::<Trap>().is_some() {
            CallError::Wasm(e)
        } else {
            CallError::Failure(UnitFailure::Instantiate)
        }
    })?;
    let missing = || CallError::Failure(UnitFailure::Instantiate);
    let memory = instance
        .get_module_export(&mut *store, &exports.memory)
        .and_then(|e| e.into_memory())
        .ok_or_else(missing)?;
    let alloc = instance
        .get_module_export(&mut *store, &exports.alloc)
        .and_then(|e| e.into_func())
        .ok_or_else(missing)?
        .typed::<u32, u32>(&*store)?;
    let map = instance
        .get_module_export(&mut *store, &exports.map)
        .and_then(|e| e.into_func())
        .ok_or_else(missing)?
        .typed::<(u32, u32), u64>(&*store)?;
    let ptr = alloc.call(&mut *store, input.len() as u32)?;
    memory
        .write(&mut *store, ptr as usize, input)
        .map_err(|_| CallError::Failure(UnitFailure::BadInputBuffer))?;
    let packed = map.call(&mut *store, (ptr, input.len() as u32))?;
    if packed == 0 {
        return Err(CallError::Failure(UnitFailure::NoOutput));
    }
    let (out_ptr, out_len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
    if out_len > limits.output_bytes_per_unit {
        return Err(CallError::Failure(UnitFailure::OutputTooLarge));
    }
    let data = memory.data(&*store);
    let end = out_ptr
        .checked_add(out_len)
        .ok_or(CallError::Failure(UnitFailure::BadOutputBuffer))?;
    data.get(out_ptr..end)
        .map(<[u8]>::to_vec)
        .ok_or(CallError::Failure(UnitFailure::BadOutputBuffer))
}

fn classify(error: &wasmtime::Error, denied: bool) -> UnitFailure {
    if denied {
        return UnitFailure::MemoryLimit;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => UnitFailure::OutOfFuel,
        Some(Trap::Interrupt) => UnitFailure::Deadline,
        Some(Trap::StackOverflow) => UnitFailure::StackOverflow,
        _ => UnitFailure::Trap,
    }
}
