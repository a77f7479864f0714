//! Writing a WASM mapper: a plain Rust function over one privacy unit's rows.
//!
//! ```ignore
//! use veil_sdk::guest::{Output, OutputKind, Rows};
//!
//! fn eligible(rows: &Rows) -> Output {
//!     let mut out = Output::new(&[("eligible", OutputKind::Integer)]);
//!     let months: i64 = rows.iter().filter_map(|r| r.int("contribution_months")).sum();
//!     out.push(&[Value::Int(i64::from(months >= 180))]);
//!     out
//! }
//! veil_sdk::veil_mapper!(eligible);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-unknown-unknown` as a `cdylib`. The
//! macro exports the host ABI (see `veil_sandbox::wasm`):
//!
//! - `veil_alloc(len: u32) -> u32` — room for the input batch, written by the host;
//! - `veil_map(ptr: u32, len: u32) -> u64` — maps the batch and returns `ptr << 32 | len` of
//!   the output batch (0 when the input cannot be read, which the host treats as a failure).
//!
//! The only import a mapper may have is `veil.log(ptr, len)` ([`log`]); the host keeps what it
//! says inside the domain and never shows it to the operator. Each call runs on a fresh
//! instance, so nothing a mapper keeps in memory or globals reaches the next unit.

use crate::columnar::{BatchView, BatchWriter, ColumnView};

pub use crate::columnar::Kind as OutputKind;

/// One unit's input rows.
pub struct Rows<'a> {
    batch: BatchView<'a>,
}

/// One input row.
#[derive(Clone, Copy)]
pub struct Row<'r, 'a> {
    rows: &'r Rows<'a>,
    index: usize,
}

impl<'a> Rows<'a> {
    /// Reads an input batch (what the host's `veil_map` does; also for running a mapper
    /// natively, in tests and benchmarks).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, crate::columnar::FormatError> {
        BatchView::parse(bytes).map(|batch| Self { batch })
    }

    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn column(&self, name: &str) -> Option<&ColumnView<'a>> {
        self.batch.column(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = Row<'_, 'a>> + '_ {
        (0..self.len()).map(move |index| Row { rows: self, index })
    }
}

impl<'a> Row<'_, 'a> {
    /// An integer column's value; `None` when null, missing or not an integer.
    pub fn int(&self, column: &str) -> Option<i64> {
        self.rows.column(column).and_then(|c| c.int64(self.index))
    }

    /// A numeric column's value as a float.
    pub fn float(&self, column: &str) -> Option<f64> {
        self.rows.column(column).and_then(|c| c.float64(self.index))
    }

    pub fn text(&self, column: &str) -> Option<&'a str> {
        self.rows.column(column).and_then(|c| c.utf8(self.index))
    }
}

/// One output value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

/// The rows a mapper returns for its unit, in the template's declared output schema.
pub struct Output {
    columns: Vec<(String, OutputKind)>,
    rows: Vec<Vec<Value>>,
}

impl Output {
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

    /// The output batch's bytes.
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

/// `veil_alloc`: room for `len` input bytes, leaked (the instance lives for one call).
#[doc(hidden)]
pub fn alloc(len: u32) -> u32 {
    let buffer = vec![0u8; len as usize].leak();
    buffer.as_mut_ptr() as usize as u32
}

/// `veil_map`: reads the input the host wrote at `ptr`, runs the mapper, leaks the output.
#[doc(hidden)]
pub fn map(ptr: u32, len: u32, mapper: fn(&Rows) -> Output) -> u64 {
    // SAFETY: the host wrote `len` bytes at `ptr`, which `alloc` returned for exactly `len`.
    let input = unsafe { std::slice::from_raw_parts(ptr as usize as *const u8, len as usize) };
    let Ok(batch) = BatchView::parse(input) else {
        return 0;
    };
    let output = mapper(&Rows { batch }).encode().leak();
    ((output.as_ptr() as usize as u64) << 32) | output.len() as u64
}

/// Exports a mapper function `fn(&Rows) -> Output` through the host ABI.
#[macro_export]
macro_rules! veil_mapper {
    ($mapper:path) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn veil_alloc(len: u32) -> u32 {
            $crate::guest::alloc(len)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn veil_map(ptr: u32, len: u32) -> u64 {
            $crate::guest::map(ptr, len, $mapper)
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
