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
    pub fn encode(&self) -> Vec<u8> {
        let mut writer = BatchWriter::new(self.rows.len());
        for (index, (name, kind)) in self.columns.iter().enumerate() {
            let cell = |row: &Vec<Value>| row.get(index).cloned().unwrap_or(Value::Null);
            match kind {
                OutputKind::Int64 => {
                    let values: Vec<Option<i64>> = self
                        .rows
                        .iter()
                        .map(|r| match cell(r) {
                            Value::Int(v) => Some(v),
                            _ => None,
                        })
                        .collect();
                    writer.int64(name, &values);
                }
                OutputKind::Float64 => {
                    let values: Vec<Option<f64>> = self
                        .rows
                        .iter()
                        .map(|r| match cell(r) {
                            Value::Float(v) => Some(v),
                            Value::Int(v) => Some(v as f64),
                            _ => None,
                        })
                        .collect();
                    writer.float64(name, &values);
                }
                OutputKind::Utf8 => {
                    let values: Vec<Option<String>> = self
                        .rows
                        .iter()
                        .map(|r| match cell(r) {
                            Value::Text(v) => Some(v),
                            _ => None,
                        })
                        .collect();
                    writer.utf8(name, &values);
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
/// one call, and [`map`] reads it in place.
pub fn alloc(len: u32) -> u32 {
    let buffer = vec![0u8; len as usize].leak();
    buffer.as_mut_ptr() as usize as u32
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
