//! Writing a WASM mapper: a plain Rust function over one privacy unit's rows.
//!
//! ```
//! use veil_sdk::guest::{Output, OutputKind, Rows, Value};
//!
//! fn eligible(rows: &Rows) -> Output {
//!     let mut out = Output::new(&[("eligible", OutputKind::Int64)]);
//!     let months: i64 = rows.iter().filter_map(|r| r.int("contribution_months")).sum();
//!     out.push(&[Value::Int(i64::from(months >= 180))]);
//!     out
//! }
//! veil_sdk::veil_mapper!(eligible);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-unknown-unknown` as a `cdylib`. The
//! macro exports the host ABI (see `veil_gate::sandbox::wasm`):
//!
//! - `veil_alloc(len: u32) -> u32` — room for the input batch, written by the host
//!   ([`alloc`]);
//! - `veil_map(ptr: u32, len: u32) -> u64` — maps the batch and returns `ptr << 32 | len` of
//!   the output batch (0 when the input cannot be read, which the host treats as a failure)
//!   ([`map`]).
//!
//! A mapper author writes no `unsafe` code: the one place that trusts the host is
//! `veil_map`, whose contract is [`map`]'s `# Safety` section, and the host keeps it by
//! calling `veil_map` only on the buffer `veil_alloc` gave it.
//!
//! The only import a mapper may have is `veil.log(ptr, len)` ([`log`]); the host keeps what it
//! says inside the domain and never shows it to the operator. Each call runs on a fresh
//! instance, so nothing a mapper keeps in memory or globals reaches the next unit.
//!
//! What the host does with the [`Output`]: it must have exactly the template's declared
//! output columns, each of its declared type, or the unit's call counts as failed and the
//! unit contributes the template's fallback. Rows beyond the template's `max_rows_per_unit`
//! are dropped, numbers are clamped to their declared bounds, and text outside its declared
//! keys becomes null. Which units failed never reaches the operator.

use crate::columnar::{BatchView, BatchWriter, ColumnView};

pub use crate::columnar::Kind as OutputKind;

/// One unit's input rows: what the template's input SQL selected for this privacy unit,
/// every column it outputs, in the order the query gave them.
pub struct Rows<'a> {
    batch: BatchView<'a>,
}

/// One input row, read column by column by name.
#[derive(Clone, Copy)]
pub struct Row<'r, 'a> {
    rows: &'r Rows<'a>,
    index: usize,
}

impl<'a> Rows<'a> {
    /// Reads an input batch (what the host's `veil_map` does; also for running a mapper
    /// natively, in tests and benchmarks). Fails, never panics, on bytes that are not a
    /// whole batch (see [`crate::columnar`]).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, crate::columnar::FormatError> {
        BatchView::parse(bytes).map(|batch| Self { batch })
    }

    /// How many rows this unit has (at least one when the host calls the mapper).
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The input column named `name`, for reading it whole; `None` when the input SQL does
    /// not output it.
    pub fn column(&self, name: &str) -> Option<&ColumnView<'a>> {
        self.batch.column(name)
    }

    /// The rows, in the order the input SQL gave them.
    pub fn iter(&self) -> impl Iterator<Item = Row<'_, 'a>> + '_ {
        (0..self.len()).map(move |index| Row { rows: self, index })
    }
}

impl<'a> Row<'_, 'a> {
    /// An integer column's value; `None` when null, missing or not an integer.
    pub fn int(&self, column: &str) -> Option<i64> {
        self.rows.column(column).and_then(|c| c.int64(self.index))
    }

    /// A numeric column's value as a float (an integer is widened); `None` when null,
    /// missing or text.
    pub fn float(&self, column: &str) -> Option<f64> {
        self.rows.column(column).and_then(|c| c.float64(self.index))
    }

    /// A text column's value; `None` when null, missing or not text.
    pub fn text(&self, column: &str) -> Option<&'a str> {
        self.rows.column(column).and_then(|c| c.utf8(self.index))
    }
}

/// One output value. A value that does not fit its column's kind is written as null, except
/// an integer in a float column, which is widened.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value.
    Null,
    /// An integer, for an [`OutputKind::Int64`] (or [`OutputKind::Float64`]) column.
    Int(i64),
    /// A float, for an [`OutputKind::Float64`] column.
    Float(f64),
    /// Text, for an [`OutputKind::Utf8`] column.
    Text(String),
}

/// The rows a mapper returns for its unit, in the template's declared output schema.
pub struct Output {
    columns: Vec<(String, OutputKind)>,
    rows: Vec<Vec<Value>>,
}

impl Output {
    /// An output with these columns (name and kind, in order) and no rows yet. They must be
    /// the template's declared output columns with their types (`integer` is
    /// [`OutputKind::Int64`], `float` [`OutputKind::Float64`], `text` [`OutputKind::Utf8`]),
    /// or the host counts the unit as failed.
    pub fn new(columns: &[(&str, OutputKind)]) -> Self {
        Self {
            columns: columns.iter().map(|(n, k)| (n.to_string(), *k)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; values beyond the columns are ignored, missing ones are null.
    pub fn push(&mut self, row: &[Value]) {
        self.rows.push(row.to_vec());
    }

    /// The output as a columnar batch (see [`crate::columnar`]): what `veil_map` hands the
    /// host, and what a native test of a mapper can parse back.
    ///
    /// The batch's size is known before the first byte is written, so it is written into one
    /// buffer of exactly that size, straight from the rows (no per-column copies): a mapper
    /// runs once per unit, and this is a good part of what it does.
    pub fn encode(&self) -> Vec<u8> {
        let n_rows = self.rows.len();
        let bytes: usize = self
            .columns
            .iter()
            .enumerate()
            .map(|(index, (name, kind))| {
                let values = match kind {
                    OutputKind::Int64 | OutputKind::Float64 => 8 * n_rows,
                    OutputKind::Utf8 => {
                        let text: usize = self
                            .rows
                            .iter()
                            .map(|r| match r.get(index) {
                                Some(Value::Text(v)) => v.len(),
                                _ => 0,
                            })
                            .sum();
                        4 * (n_rows + 1) + text
                    }
                };
                BatchWriter::column_bytes(name, n_rows) + values
            })
            .sum();
        let mut writer = BatchWriter::with_capacity(n_rows, crate::columnar::HEADER_BYTES + bytes);
        for (index, (name, kind)) in self.columns.iter().enumerate() {
            let rows = self.rows.iter();
            match kind {
                OutputKind::Int64 => {
                    writer.int64_iter(
                        name,
                        rows.map(|r| match r.get(index) {
                            Some(Value::Int(v)) => Some(*v),
                            _ => None,
                        }),
                    );
                }
                OutputKind::Float64 => {
                    writer.float64_iter(
                        name,
                        rows.map(|r| match r.get(index) {
                            Some(Value::Float(v)) => Some(*v),
                            Some(Value::Int(v)) => Some(*v as f64),
                            _ => None,
                        }),
                    );
                }
                OutputKind::Utf8 => {
                    writer.utf8_iter(
                        name,
                        rows.map(|r| match r.get(index) {
                            Some(Value::Text(v)) => Some(v.as_str()),
                            _ => None,
                        }),
                    );
                }
            }
        }
        writer.finish()
    }
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "veil")]
unsafe extern "C" {
    #[link_name = "log"]
    fn veil_log(ptr: u32, len: u32);
}

/// Sends a line to the host's in-domain log (never shown to the operator).
pub fn log(message: &str) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host only reads `len` bytes at `ptr`, which is the message.
    unsafe {
        veil_log(message.as_ptr() as u32, message.len() as u32)
    };
    #[cfg(not(target_arch = "wasm32"))]
    let _ = message;
}

/// The body of the exported `veil_alloc`: room for `len` input bytes, which the host then
/// writes the unit's input batch into. The buffer is leaked on purpose: the instance lives for
/// one call, and [`map`] reads it in place. It is not zeroed first: the host overwrites every
/// byte of it before `veil_map` runs.
pub fn alloc(len: u32) -> u32 {
    let mut buffer = Vec::<u8>::with_capacity(len as usize);
    let ptr = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    ptr as usize as u32
}

/// Alignment of every block [`UnitAllocator`] hands out from its arena, in bytes. Blocks that
/// ask for more are aligned to what they ask for.
#[cfg(target_arch = "wasm32")]
const ARENA_ALIGN_BYTES: usize = 8;
/// Bytes in a WebAssembly page.
#[cfg(target_arch = "wasm32")]
const WASM_PAGE_BYTES: usize = 64 * 1024;

/// The global allocator [`veil_mapper!`](crate::veil_mapper) installs in a mapper module:
/// it serves a unit's allocations from the free end of the memory the module starts with,
/// so a typical unit never grows its memory.
///
/// # Why
///
/// Every unit runs on a fresh instance. Rust's default allocator on `wasm32` asks for a new
/// page with `memory.grow` on its first allocation, whatever room is left in the module's
/// initial memory; the host must then make that page accessible and, before the next unit,
/// inaccessible again (two `mprotect` calls, each flushing the TLBs of every core) and
/// wipe it. That cost more than the mapper itself. This allocator first hands out the bytes
/// between the linker's `__heap_base` and the end of the initial memory — about 30 KiB with
/// the examples' 32 KiB stack, plenty for one person's rows — by bumping a pointer, and only
/// when they run out does it fall back to the standard allocator, which grows memory as
/// before. So nothing changes for a large unit but speed, and a small one touches a few pages
/// and makes no system call. (The host rewrites the whole initial memory after every unit, so
/// a mapper with a smaller stack — `-C link-arg=-zstack-size=32768`, see
/// `examples/wasm/.cargo/config.toml` — also resets faster than one with Rust's 1 MiB.)
///
/// Blocks in the arena are not reused, except that freeing or growing the most recent block
/// gives back or extends it in place (a growing `Vec`, a `String` being built). The instance
/// ends with the unit, so nothing leaks beyond it, and its state — three words in the
/// module's data — starts over with every fresh instance.
///
/// On other targets (a mapper compiled natively for a test) it is the system allocator.
#[derive(Debug)]
// Natively every call goes to the system allocator and the arena's fields stay unread.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub struct UnitAllocator {
    /// Next free byte of the arena; 0 until the first allocation finds the arena.
    next: std::sync::atomic::AtomicUsize,
    /// One past the arena's last byte.
    end: std::sync::atomic::AtomicUsize,
    /// Start of the most recent block, which may still be freed or grown in place.
    last: std::sync::atomic::AtomicUsize,
}

impl UnitAllocator {
    /// An allocator that has not handed out anything yet.
    pub const fn new() -> Self {
        use std::sync::atomic::AtomicUsize;
        Self {
            next: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            last: AtomicUsize::new(usize::MAX),
        }
    }
}

impl Default for UnitAllocator {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(target_arch = "wasm32")]
impl UnitAllocator {
    /// Finds the arena on first use: from `__heap_base`, which the linker places after the
    /// stack and the static data, to the end of the memory the module started with. No other
    /// code grows memory before this runs (the standard allocator is only reached through this
    /// one), so the memory's current size is its initial size.
    fn arena(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let next = self.next.load(Relaxed);
        if next != 0 {
            return (next, self.end.load(Relaxed));
        }
        unsafe extern "C" {
            static __heap_base: u8;
        }
        // Only the symbol's address is taken (which needs no `unsafe`); the byte itself is
        // never read.
        let start = (&raw const __heap_base) as usize;
        let end = core::arch::wasm32::memory_size(0) * WASM_PAGE_BYTES;
        // An address of 0 is reserved for "not started"; a module linked so that its heap
        // starts at 0 simply has no arena.
        let start = start.max(ARENA_ALIGN_BYTES);
        self.next.store(start, Relaxed);
        self.end.store(end.max(start), Relaxed);
        (start, end.max(start))
    }

    /// A block from the arena, or `None` when it does not fit.
    fn bump(&self, layout: std::alloc::Layout) -> Option<*mut u8> {
        use std::sync::atomic::Ordering::Relaxed;
        let (next, end) = self.arena();
        let align = layout.align().max(ARENA_ALIGN_BYTES);
        let start = next.checked_add(align - 1)? & !(align - 1);
        let stop = start.checked_add(layout.size())?;
        if stop > end {
            return None;
        }
        self.next.store(stop, Relaxed);
        self.last.store(start, Relaxed);
        Some(start as *mut u8)
    }

    fn in_arena(&self, ptr: *mut u8) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let addr = ptr as usize;
        self.next.load(Relaxed) != 0 && addr < self.end.load(Relaxed)
    }
}

// SAFETY: arena blocks are disjoint (the bump pointer only moves past a block while it is
// live; it moves back over a block only when that block, the most recent, is freed), aligned
// as asked, inside the module's initial memory and above its stack and data; every other block
// comes from and returns to `System`. A `wasm32` mapper has one thread (the host refuses shared
// memory), so the relaxed loads and stores never race.
#[cfg(target_arch = "wasm32")]
unsafe impl std::alloc::GlobalAlloc for UnitAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(ptr) => ptr,
            // SAFETY: the caller's contract for `layout` is passed on unchanged.
            None => unsafe { std::alloc::System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.in_arena(ptr) {
            // SAFETY: a block outside the arena came from `System.alloc` with this layout.
            return unsafe { std::alloc::System.dealloc(ptr, layout) };
        }
        if self.last.load(Relaxed) == ptr as usize {
            self.next.store(ptr as usize, Relaxed);
            self.last.store(usize::MAX, Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.in_arena(ptr) {
            // SAFETY: a block outside the arena came from `System.alloc` with this layout.
            return unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        }
        let addr = ptr as usize;
        if self.last.load(Relaxed) == addr
            && let Some(stop) = addr.checked_add(new_size)
            && stop <= self.end.load(Relaxed)
        {
            self.next.store(stop, Relaxed);
            return ptr;
        }
        // SAFETY: `new_size` with the old alignment is a valid layout (the caller's
        // contract); the new block is distinct from the old one, which holds at least
        // `min(old, new)` initialized bytes, and is freed once copied.
        unsafe {
            let new_layout =
                std::alloc::Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

// SAFETY: natively, every call goes to `System` unchanged.
#[cfg(not(target_arch = "wasm32"))]
unsafe impl std::alloc::GlobalAlloc for UnitAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

/// The body of the exported `veil_map`: reads the input batch the host wrote at `ptr`, runs
/// `mapper` over it, and returns `ptr << 32 | len` of the encoded [`Output`], leaked for the
/// host to read. Returns 0 when the `len` bytes at `ptr` are not a whole batch, which the
/// host treats as a failed unit. Mappers call it through [`veil_mapper!`](crate::veil_mapper).
///
/// # Safety
///
/// `ptr` and `len` are an address in this instance's linear memory and a length. The caller
/// must guarantee that:
///
/// - the `len` bytes from `ptr` are one allocation of this instance, all initialized, and
///   `ptr` is not 0 — as the buffer [`alloc`]`(len)` returned is (the host writes the input
///   there before calling);
/// - nothing writes to those bytes while `map` runs (the input is read in place);
/// - the code runs on `wasm32`, where a `u32` holds any address. On a 64-bit host a `u32`
///   cannot carry a pointer; to run a mapper natively, use [`Rows::parse`] instead.
pub unsafe fn map(ptr: u32, len: u32, mapper: fn(&Rows) -> Output) -> u64 {
    // SAFETY: the caller guarantees that `len` initialized bytes of one allocation start at
    // the non-null `ptr` and are not written during this call, which is what
    // `from_raw_parts` requires; a `u8` slice needs no alignment.
    let input = unsafe { std::slice::from_raw_parts(ptr as usize as *const u8, len as usize) };
    let Ok(batch) = BatchView::parse(input) else {
        return 0;
    };
    let output = mapper(&Rows { batch }).encode().leak();
    ((output.as_ptr() as usize as u64) << 32) | output.len() as u64
}

/// Exports a mapper function `fn(&Rows) -> Output` through the host ABI: `veil_alloc` and
/// `veil_map` (see the [`guest`](crate::guest) module). Use it once per module, at the crate
/// root.
#[macro_export]
macro_rules! veil_mapper {
    ($mapper:path) => {
        /// The unit's allocator: the free end of the initial memory first, so a small unit
        /// never grows its memory (see `veil_sdk::guest::UnitAllocator`).
        #[global_allocator]
        static VEIL_UNIT_ALLOCATOR: $crate::guest::UnitAllocator =
            $crate::guest::UnitAllocator::new();

        /// The host ABI's allocator: room for `len` input bytes.
        #[unsafe(no_mangle)]
        pub extern "C" fn veil_alloc(len: u32) -> u32 {
            $crate::guest::alloc(len)
        }

        /// The host ABI's entry point: maps the input batch at `ptr`.
        ///
        /// # Safety
        ///
        /// The same as `veil_sdk::guest::map`'s: `ptr` is the buffer `veil_alloc(len)`
        /// returned, holding the input, and nothing writes to it during the call. Only the
        /// host calls this, and it does so on a fresh instance for every unit.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn veil_map(ptr: u32, len: u32) -> u64 {
            // SAFETY: `veil_map`'s contract is `map`'s, and its caller, the host, keeps it:
            // it writes the input into the buffer `veil_alloc(len)` returned and passes that
            // buffer's address and length, then waits for the call to return.
            unsafe { $crate::guest::map(ptr, len, $mapper) }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapper_runs_natively_over_encoded_rows() {
        fn count(rows: &Rows) -> Output {
            let mut out = Output::new(&[("n", OutputKind::Int64), ("city", OutputKind::Utf8)]);
            let city = rows
                .iter()
                .find_map(|r| r.text("city"))
                .unwrap_or("")
                .to_string();
            out.push(&[Value::Int(rows.len() as i64), Value::Text(city)]);
            out
        }
        let mut writer = BatchWriter::new(2);
        writer
            .int64("id", &[Some(1), Some(1)])
            .utf8("city", &[Some("Taiyuan"), None]);
        let input = writer.finish();
        let rows = Rows {
            batch: BatchView::parse(&input).expect("valid"),
        };
        let output = count(&rows).encode();
        let batch = BatchView::parse(&output).expect("valid");
        assert_eq!(batch.column("n").and_then(|c| c.int64(0)), Some(2));
        assert_eq!(
            batch.column("city").and_then(|c| c.utf8(0)),
            Some("Taiyuan")
        );
    }
}
