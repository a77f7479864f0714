//! The columnar payload of WASM jobs: how rows go into a mapper and come back out.
//!
//! A mapper is called once per privacy unit with that unit's rows and answers with its output
//! rows. Both directions use this small, documented, little-endian layout instead of Arrow IPC:
//! a guest needs no Arrow library (its module stays small, so it compiles and instantiates
//! fast), and a host can check every length before it trusts a byte. Host and guest share this
//! code, so the two sides can never disagree about the format.
//!
//! ```text
//! batch    := magic "VCB1" · n_columns u32 · n_rows u32 · column × n_columns
//! column   := name_len u16 · name (UTF-8) · kind u8 · validity · values
//! validity := ⌈n_rows / 8⌉ bytes; bit (i mod 8) of byte (i div 8) set ⇔ row i is not null
//! values   := kind 1 (int64):   n_rows × i64
//!           | kind 2 (float64): n_rows × f64 (IEEE 754 bits)
//!           | kind 3 (utf8):    (n_rows + 1) × u32 offsets, ascending from 0, then the bytes
//! ```
//!
//! A null row's value is 0 (or an empty string) and carries no meaning. [`BatchView::parse`]
//! checks the whole buffer — lengths, offsets, UTF-8, trailing bytes — and never panics, so a
//! host may hand it whatever a guest returned.

use std::fmt;

/// The first four bytes of every batch.
pub const MAGIC: [u8; 4] = *b"VCB1";
/// Bytes of a batch before its first column: the magic, the column count and the row count.
pub const HEADER_BYTES: usize = 12;
/// Most columns one batch may hold.
pub const COLUMNS_MAX: usize = 256;
/// Longest column name, in bytes.
pub const NAME_BYTES_MAX: usize = 255;

/// A column's value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Signed 64-bit integers (kind code 1); a template declares it as `integer`.
    Int64,
    /// IEEE 754 double-precision floats (kind code 2); a template declares it as `float`.
    Float64,
    /// UTF-8 text (kind code 3); a template declares it as `text`.
    Utf8,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Self::Int64 => 1,
            Self::Float64 => 2,
            Self::Utf8 => 3,
        }
    }

    fn of_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Int64),
            2 => Some(Self::Float64),
            3 => Some(Self::Utf8),
            _ => None,
        }
    }

    /// The kind's name as a template declares it: `integer`, `float` or `text`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Int64 => "integer",
            Self::Float64 => "float",
            Self::Utf8 => "text",
        }
    }
}

/// Why a buffer is not a batch. The text names the part of the layout that is wrong, never a
/// value from the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub &'static str);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed columnar batch: {}", self.0)
    }
}

impl std::error::Error for FormatError {}

/// Writes a batch column by column. Every column must have the batch's row count.
#[derive(Debug)]
pub struct BatchWriter {
    buf: Vec<u8>,
    n_rows: usize,
    n_columns: u32,
}

impl BatchWriter {
    /// A writer of a batch of `n_rows` rows, with no columns yet.
    pub fn new(n_rows: usize) -> Self {
        Self::with_capacity(n_rows, 64)
    }

    /// Like [`BatchWriter::new`], reserving room for `bytes` bytes of output up front (a
    /// caller that knows the batch's size saves the buffer's regrowth).
    pub fn with_capacity(n_rows: usize, bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes.max(HEADER_BYTES));
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&(n_rows as u32).to_le_bytes());
        Self {
            buf,
            n_rows,
            n_columns: 0,
        }
    }

    /// Bytes a column named `name` of `n_rows` rows takes before its values: its header and
    /// its validity bitmap (for sizing a buffer with [`BatchWriter::with_capacity`]).
    pub fn column_bytes(name: &str, n_rows: usize) -> usize {
        2 + name.len().min(NAME_BYTES_MAX) + 1 + n_rows.div_ceil(8)
    }

    fn header(&mut self, name: &str, kind: Kind) {
        let name = &name.as_bytes()[..name.len().min(NAME_BYTES_MAX)];
        self.buf
            .extend_from_slice(&(name.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(name);
        self.buf.push(kind.code());
        self.n_columns += 1;
    }

    fn validity<T>(&mut self, values: impl Iterator<Item = Option<T>>) {
        let start = self.buf.len();
        self.buf.resize(start + self.n_rows.div_ceil(8), 0);
        for (i, value) in values.enumerate().take(self.n_rows) {
            if value.is_some() {
                self.buf[start + i / 8] |= 1 << (i % 8);
            }
        }
    }

    /// Appends an integer column. Missing rows (if `values` is short) are null.
    pub fn int64(&mut self, name: &str, values: &[Option<i64>]) -> &mut Self {
        self.int64_iter(name, values.iter().copied())
    }

    /// Appends an integer column from an iterator (walked twice).
    pub fn int64_iter(
        &mut self,
        name: &str,
        values: impl Iterator<Item = Option<i64>> + Clone,
    ) -> &mut Self {
        self.header(name, Kind::Int64);
        self.validity(values.clone());
        let mut written = 0;
        for v in values.take(self.n_rows) {
            self.buf.extend_from_slice(&v.unwrap_or(0).to_le_bytes());
            written += 1;
        }
        self.pad(written, 8);
        self
    }

    /// Appends a float column. Missing rows (if `values` is short) are null.
    pub fn float64(&mut self, name: &str, values: &[Option<f64>]) -> &mut Self {
        self.float64_iter(name, values.iter().copied())
    }

    /// Appends a float column from an iterator (walked twice).
    pub fn float64_iter(
        &mut self,
        name: &str,
        values: impl Iterator<Item = Option<f64>> + Clone,
    ) -> &mut Self {
        self.header(name, Kind::Float64);
        self.validity(values.clone());
        let mut written = 0;
        for v in values.take(self.n_rows) {
            self.buf.extend_from_slice(&v.unwrap_or(0.0).to_le_bytes());
            written += 1;
        }
        self.pad(written, 8);
        self
    }

    /// Zero values for rows an iterator did not give.
    fn pad(&mut self, written: usize, width: usize) {
        let missing = self.n_rows.saturating_sub(written) * width;
        self.buf.resize(self.buf.len() + missing, 0);
    }

    /// Appends a text column. Missing rows (if `values` is short) are null.
    pub fn utf8<S: AsRef<str>>(&mut self, name: &str, values: &[Option<S>]) -> &mut Self {
        self.utf8_iter(name, values.iter().map(|v| v.as_ref().map(AsRef::as_ref)))
    }

    /// Appends a text column from an iterator (walked three times).
    pub fn utf8_iter<'s>(
        &mut self,
        name: &str,
        values: impl Iterator<Item = Option<&'s str>> + Clone,
    ) -> &mut Self {
        self.header(name, Kind::Utf8);
        self.validity(values.clone());
        let mut offset = 0u32;
        self.buf.extend_from_slice(&offset.to_le_bytes());
        let mut written = 0;
        for v in values.clone().take(self.n_rows) {
            offset = offset.saturating_add(v.map_or(0, str::len) as u32);
            self.buf.extend_from_slice(&offset.to_le_bytes());
            written += 1;
        }
        for _ in written..self.n_rows {
            self.buf.extend_from_slice(&offset.to_le_bytes());
        }
        for s in values.take(self.n_rows).flatten() {
            self.buf.extend_from_slice(s.as_bytes());
        }
        self
    }

    /// The finished batch.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[4..8].copy_from_slice(&self.n_columns.to_le_bytes());
        self.buf
    }
}

/// One column of a parsed batch, borrowing the buffer.
#[derive(Debug, Clone, Copy)]
pub struct ColumnView<'a> {
    name: &'a str,
    kind: Kind,
    n_rows: usize,
    validity: &'a [u8],
    values: &'a [u8],
    /// Utf8 only: the offsets; `values` is then the string bytes.
    offsets: &'a [u8],
    /// Utf8 only: the string bytes, checked as UTF-8 (and every offset as a character
    /// boundary) once, when the batch was parsed.
    text: &'a str,
}

impl<'a> ColumnView<'a> {
    /// The column's name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The column's value type.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// How many rows the column has: the batch's row count.
    pub fn len(&self) -> usize {
        self.n_rows
    }

    /// True when the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.n_rows == 0
    }

    /// True when `row` exists and is not null.
    pub fn is_valid(&self, row: usize) -> bool {
        row < self.n_rows && self.validity[row / 8] & (1 << (row % 8)) != 0
    }

    fn word(&self, row: usize) -> [u8; 8] {
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.values[row * 8..row * 8 + 8]);
        word
    }

    /// The value at `row` of an integer column; `None` if null, past the last row, or not an
    /// integer column.
    pub fn int64(&self, row: usize) -> Option<i64> {
        (self.kind == Kind::Int64 && self.is_valid(row)).then(|| i64::from_le_bytes(self.word(row)))
    }

    /// The value at `row` of a float column (an integer column is widened); `None` if null,
    /// past the last row, or a text column.
    pub fn float64(&self, row: usize) -> Option<f64> {
        if !self.is_valid(row) {
            return None;
        }
        match self.kind {
            Kind::Float64 => Some(f64::from_le_bytes(self.word(row))),
            Kind::Int64 => Some(i64::from_le_bytes(self.word(row)) as f64),
            Kind::Utf8 => None,
        }
    }

    fn offset(&self, i: usize) -> usize {
        let mut word = [0u8; 4];
        word.copy_from_slice(&self.offsets[i * 4..i * 4 + 4]);
        u32::from_le_bytes(word) as usize
    }

    /// The value at `row` of a text column; `None` if null, past the last row, or not a
    /// text column.
    pub fn utf8(&self, row: usize) -> Option<&'a str> {
        if self.kind != Kind::Utf8 || !self.is_valid(row) {
            return None;
        }
        // The text and its offsets were checked at parse time, so this slice is on character
        // boundaries; `get` checks again (two comparisons) instead of re-reading the bytes.
        self.text.get(self.offset(row)..self.offset(row + 1))
    }
}

/// A parsed batch, borrowing the buffer.
#[derive(Debug, Clone)]
pub struct BatchView<'a> {
    n_rows: usize,
    columns: Vec<ColumnView<'a>>,
}

/// Reads a buffer front to back, checking every length.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        let end = self.at.checked_add(n).ok_or(FormatError(what))?;
        let slice = self.bytes.get(self.at..end).ok_or(FormatError(what))?;
        self.at = end;
        Ok(slice)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FormatError> {
        let mut word = [0u8; 4];
        word.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(word))
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, FormatError> {
        let mut word = [0u8; 2];
        word.copy_from_slice(self.take(2, what)?);
        Ok(u16::from_le_bytes(word))
    }
}

impl<'a> BatchView<'a> {
    /// Parses and checks a whole buffer.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let mut cursor = Cursor { bytes, at: 0 };
        if cursor.take(4, "the magic bytes are missing")? != MAGIC {
            return Err(FormatError("the magic bytes are not VCB1"));
        }
        let n_columns = cursor.u32("the column count is cut off")? as usize;
        let n_rows = cursor.u32("the row count is cut off")? as usize;
        if n_columns > COLUMNS_MAX {
            return Err(FormatError("more than 256 columns"));
        }
        let mut columns = Vec::with_capacity(n_columns);
        for _ in 0..n_columns {
            let name_len = cursor.u16("a column name length is cut off")? as usize;
            if name_len > NAME_BYTES_MAX {
                return Err(FormatError("a column name is longer than 255 bytes"));
            }
            let name = std::str::from_utf8(cursor.take(name_len, "a column name is cut off")?)
                .map_err(|_| FormatError("a column name is not UTF-8"))?;
            let kind = Kind::of_code(cursor.take(1, "a column kind is cut off")?[0])
                .ok_or(FormatError("a column kind is unknown"))?;
            let validity = cursor.take(n_rows.div_ceil(8), "a validity bitmap is cut off")?;
            let (values, offsets, text) = match kind {
                Kind::Int64 | Kind::Float64 => {
                    let len = n_rows.checked_mul(8).ok_or(FormatError("too many rows"))?;
                    let values = cursor.take(len, "a column's values are cut off")?;
                    (values, &[][..], "")
                }
                Kind::Utf8 => {
                    let len = n_rows
                        .checked_add(1)
                        .and_then(|n| n.checked_mul(4))
                        .ok_or(FormatError("too many rows"))?;
                    let offsets = cursor.take(len, "a text column's offsets are cut off")?;
                    let mut last = 0usize;
                    for (i, word) in offsets.chunks_exact(4).enumerate() {
                        let offset =
                            u32::from_le_bytes([word[0], word[1], word[2], word[3]]) as usize;
                        if (i == 0 && offset != 0) || offset < last {
                            return Err(FormatError("text offsets do not ascend from 0"));
                        }
                        last = offset;
                    }
                    let text = cursor.take(last, "a text column's bytes are cut off")?;
                    let text = std::str::from_utf8(text)
                        .map_err(|_| FormatError("a text column is not UTF-8"))?;
                    for word in offsets.chunks_exact(4) {
                        let offset =
                            u32::from_le_bytes([word[0], word[1], word[2], word[3]]) as usize;
                        if !text.is_char_boundary(offset) {
                            return Err(FormatError("a text offset splits a character"));
                        }
                    }
                    (text.as_bytes(), offsets, text)
                }
            };
            columns.push(ColumnView {
                name,
                kind,
                n_rows,
                validity,
                values,
                offsets,
                text,
            });
        }
        if cursor.at != bytes.len() {
            return Err(FormatError("bytes follow the last column"));
        }
        Ok(Self { n_rows, columns })
    }

    /// How many rows the batch has; every column has this many.
    pub fn num_rows(&self) -> usize {
        self.n_rows
    }

    /// The columns, in the order they were written.
    pub fn columns(&self) -> &[ColumnView<'a>] {
        &self.columns
    }

    /// The first column named `name`, if there is one.
    pub fn column(&self, name: &str) -> Option<&ColumnView<'a>> {
        self.columns.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut writer = BatchWriter::new(3);
        writer
            .int64("id", &[Some(1), None, Some(-7)])
            .float64("income", &[Some(1.5), Some(f64::MAX), None])
            .utf8("city", &[Some("太原"), None, Some("Datong")]);
        writer.finish()
    }

    #[test]
    fn round_trips_every_kind_and_null() -> Result<(), FormatError> {
        let bytes = sample();
        let batch = BatchView::parse(&bytes)?;
        assert_eq!(batch.num_rows(), 3);
        let id = batch.column("id").ok_or(FormatError("id"))?;
        assert_eq!(
            (id.int64(0), id.int64(1), id.int64(2)),
            (Some(1), None, Some(-7))
        );
        let income = batch.column("income").ok_or(FormatError("income"))?;
        assert_eq!(income.float64(1), Some(f64::MAX));
        assert_eq!(income.float64(2), None);
        let city = batch.column("city").ok_or(FormatError("city"))?;
        assert_eq!(
            (city.utf8(0), city.utf8(1), city.utf8(2)),
            (Some("太原"), None, Some("Datong"))
        );
        // Asking for the wrong kind is a null, not a reinterpretation.
        assert_eq!(city.int64(0), None);
        Ok(())
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(
                BatchView::parse(&bytes[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(BatchView::parse(&longer).is_err());
        // Flip every byte in turn: parsing may succeed (a value changed) or fail, never panic.
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0xff;
            let _ = BatchView::parse(&flipped);
        }
    }

    #[test]
    fn text_offsets_must_ascend_and_fit_characters() {
        let mut writer = BatchWriter::new(1);
        writer.utf8("c", &[Some("太")]);
        let mut bytes = writer.finish();
        // The column's second offset is the last four bytes before the 3 text bytes.
        let at = bytes.len() - 3 - 4;
        bytes[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
        bytes.truncate(bytes.len() - 2);
        assert_eq!(
            BatchView::parse(&bytes).err(),
            Some(FormatError("a text column is not UTF-8"))
        );
    }
}
