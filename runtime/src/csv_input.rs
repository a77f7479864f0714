//! Reading a provider's CSV file at registration: its text encoding, its delimiter, and errors
//! that say where a bad row is.
//!
//! Providers export CSV from spreadsheets, and Excel on Chinese Windows writes GBK, not UTF-8.
//! Read as UTF-8, such a file either fails or — worse — turns `太原` into other characters that
//! still look like text. So the bureau names the encoding ([`CsvOptions`]), and the bytes are
//! decoded to UTF-8 by `encoding_rs` *while* they are read ([`Decoding`]), never in one piece:
//! a file of any size streams through a fixed buffer. Bytes that are not valid in the named
//! encoding stop the registration, naming the line and the column, rather than becoming
//! replacement characters.
//!
//! Arrow's CSV reader converts the rows; when it fails, [`diagnose`] reads the file again
//! record by record (the `csv` crate, which knows each record's line) to find the first row
//! that breaks, and says which line, which column and what was expected. The message may quote
//! the value: registration is the bureau's action on the bureau's own data, and these messages
//! go nowhere else.

use std::fmt;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::StringArray;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Schema};
use encoding_rs::{DecoderResult, Encoding, UTF_8};

use crate::error::{Error, Result};

/// Bytes read from the file at a time.
const INPUT_CHUNK_BYTES: usize = 64 * 1024;
/// Decoded bytes produced at a time (GBK's two bytes become at most three in UTF-8, so
/// decoding stops for output space now and then; that is only another round).
const OUTPUT_CHUNK_BYTES: usize = 64 * 1024;
/// Characters of an offending value shown in a message; the rest is cut with `…`.
const VALUE_SHOWN_CHARS_MAX: usize = 80;
/// Encodings named in messages, as the examples of what `--encoding` takes.
const ENCODINGS_SHOWN: &str = "utf-8 (the default), gbk, gb18030, big5, utf-16le";

/// How to read a CSV file: its text encoding and its field delimiter.
#[derive(Debug, Clone, Copy)]
pub struct CsvOptions {
    encoding: &'static Encoding,
    delimiter: u8,
    /// Whether the caller chose either option, so a Parquet file given them is refused rather
    /// than read as if they applied.
    chosen: bool,
}

impl Default for CsvOptions {
    /// UTF-8 and commas. A file that starts with a byte-order mark is read in the encoding the
    /// mark names, whatever was chosen.
    fn default() -> Self {
        Self {
            encoding: UTF_8,
            delimiter: b',',
            chosen: false,
        }
    }
}

impl CsvOptions {
    /// Options from the command line's words: an encoding label (`utf-8`, `gbk`, `gb18030`,
    /// or any label of the WHATWG Encoding Standard) and a delimiter (one ASCII character, or
    /// `tab`). `None` keeps the default.
    pub fn parse(encoding: Option<&str>, delimiter: Option<&str>) -> Result<Self> {
        let mut options = Self::default();
        if let Some(label) = encoding {
            options.encoding = Encoding::for_label(label.trim().as_bytes()).ok_or_else(|| {
                Error::invalid(format!(
                    "--encoding `{label}` is not an encoding Veil knows; use one of {ENCODINGS_SHOWN}"
                ))
            })?;
            // The replacement encoding decodes everything to one U+FFFD; UTF-16 files are
            // fine, but their labels mean "sniff", which the BOM does anyway.
            if options.encoding == encoding_rs::REPLACEMENT {
                return Err(Error::invalid(format!(
                    "--encoding `{label}` cannot decode text; use one of {ENCODINGS_SHOWN}"
                )));
            }
            options.chosen = true;
        }
        if let Some(text) = delimiter {
            options.delimiter = match text {
                "tab" | "\\t" | "\t" => b'\t',
                _ => match text.as_bytes() {
                    [byte] if byte.is_ascii() && !matches!(byte, b'"' | b'\n' | b'\r') => *byte,
                    _ => {
                        return Err(Error::invalid(format!(
                            "--delimiter `{}` is not one ASCII character; give the character that separates the fields, such as `,` `;` `|` or `tab`",
                            text.escape_debug()
                        )));
                    }
                },
            };
            options.chosen = true;
        }
        Ok(options)
    }

    /// The field delimiter.
    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }

    /// The encoding's canonical name (`UTF-8`, `GBK`, …).
    pub fn encoding_name(&self) -> &'static str {
        self.encoding.name()
    }

    /// Whether the caller chose an encoding or a delimiter.
    pub fn chosen(&self) -> bool {
        self.chosen
    }

    /// The CSV format Arrow reads with: a header row and these options.
    pub(crate) fn arrow_format(&self) -> datafusion::arrow::csv::reader::Format {
        datafusion::arrow::csv::reader::Format::default()
            .with_header(true)
            .with_delimiter(self.delimiter)
    }

    /// A reader of `source` that yields its text as UTF-8.
    pub(crate) fn decode<R: Read>(&self, source: R) -> Decoding<R> {
        Decoding::new(source, self.encoding, self.delimiter)
    }
}

/// Bytes the file held that are not valid in its encoding, and where they are.
#[derive(Debug, Clone)]
pub(crate) struct EncodingError {
    /// The line, from 1.
    line: u64,
    /// The field within the line, from 0 (counted by delimiters outside quotes).
    field: u64,
    bytes: Vec<u8>,
    encoding: &'static Encoding,
}

impl fmt::Display for EncodingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: Vec<String> = self.bytes.iter().map(|b| format!("{b:02X}")).collect();
        write!(
            f,
            "the bytes {} are not valid {} text",
            if bytes.is_empty() {
                "there".to_string()
            } else {
                bytes.join(" ")
            },
            self.encoding.name()
        )?;
        if self.encoding == UTF_8 {
            write!(
                f,
                "; a file saved by Excel on Chinese Windows is usually GBK: register it with --encoding gbk (or gb18030)"
            )?;
        } else {
            write!(
                f,
                "; check the file's encoding and pass it with --encoding ({ENCODINGS_SHOWN})"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for EncodingError {}

/// A reader that decodes another reader's bytes from `encoding` to UTF-8 as they stream
/// through, and counts the raw bytes read (for progress). Malformed input is an error of kind
/// `InvalidData` whose payload is an [`EncodingError`], returned after every byte decoded
/// before it.
pub(crate) struct Decoding<R> {
    inner: R,
    decoder: encoding_rs::Decoder,
    encoding: &'static Encoding,
    delimiter: u8,
    input: Box<[u8]>,
    input_start: usize,
    input_end: usize,
    input_done: bool,
    output: Box<[u8]>,
    output_start: usize,
    output_end: usize,
    finished: bool,
    failed: Option<EncodingError>,
    /// Where the decoded text has reached: line (from 1), field (from 0), inside quotes.
    line: u64,
    field: u64,
    quoted: bool,
    bytes_read: Arc<AtomicU64>,
}

impl<R: Read> Decoding<R> {
    fn new(inner: R, encoding: &'static Encoding, delimiter: u8) -> Self {
        Self {
            inner,
            // BOM sniffing: a file that starts with a byte-order mark is read in the encoding
            // it names (Excel's "CSV UTF-8" writes one), and the mark is not part of the text.
            decoder: encoding.new_decoder(),
            encoding,
            delimiter,
            input: vec![0; INPUT_CHUNK_BYTES].into_boxed_slice(),
            input_start: 0,
            input_end: 0,
            input_done: false,
            output: vec![0; OUTPUT_CHUNK_BYTES].into_boxed_slice(),
            output_start: 0,
            output_end: 0,
            finished: false,
            failed: None,
            line: 1,
            field: 0,
            quoted: false,
            bytes_read: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The count of raw bytes read so far, shared so a caller can read it while another
    /// owner (Arrow's reader) holds this one.
    pub(crate) fn bytes_read(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.bytes_read)
    }

    /// Moves the line, field and quote state over decoded text.
    fn track(&mut self, from: usize, to: usize) {
        let (mut line, mut field, mut quoted) = (self.line, self.field, self.quoted);
        for &byte in &self.output[from..to] {
            if byte == b'"' {
                quoted = !quoted;
            } else if byte == b'\n' {
                line += 1;
                if !quoted {
                    field = 0;
                }
            } else if byte == self.delimiter && !quoted {
                field += 1;
            }
        }
        (self.line, self.field, self.quoted) = (line, field, quoted);
    }

    /// Decodes the next piece into `output`; false when nothing is left.
    fn fill(&mut self) -> io::Result<bool> {
        loop {
            if self.finished {
                return Ok(false);
            }
            if self.input_start == self.input_end && !self.input_done {
                let n = loop {
                    match self.inner.read(&mut self.input) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                };
                self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                self.input_start = 0;
                self.input_end = n;
                self.input_done = n == 0;
            }
            let (result, read, written) = self.decoder.decode_to_utf8_without_replacement(
                &self.input[self.input_start..self.input_end],
                &mut self.output,
                self.input_done,
            );
            let consumed_to = self.input_start + read;
            self.input_start = consumed_to;
            self.output_start = 0;
            self.output_end = written;
            self.track(0, written);
            match result {
                DecoderResult::InputEmpty => self.finished = self.input_done,
                DecoderResult::OutputFull => {}
                DecoderResult::Malformed(bad, after) => {
                    // The malformed bytes end `after` bytes before where decoding stopped;
                    // they may have begun in an earlier chunk, which is gone: show what is here.
                    let end = consumed_to.saturating_sub(usize::from(after));
                    let start = end.saturating_sub(usize::from(bad));
                    self.failed = Some(EncodingError {
                        line: self.line,
                        field: self.field,
                        bytes: self.input[start..end].to_vec(),
                        encoding: self.encoding,
                    });
                    self.finished = true;
                }
            }
            if written > 0 {
                return Ok(true);
            }
        }
    }
}

impl<R: Read> Read for Decoding<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.output_start == self.output_end && !self.fill()? {
            return match self.failed.clone() {
                Some(error) => Err(io::Error::new(io::ErrorKind::InvalidData, error)),
                None => Ok(0),
            };
        }
        let n = buf.len().min(self.output_end - self.output_start);
        buf[..n].copy_from_slice(&self.output[self.output_start..self.output_start + n]);
        self.output_start += n;
        Ok(n)
    }
}

/// Why a file has no usable rows, checked before its types are inferred: an empty file (or
/// one with only blank lines), or a header with an empty or repeated column name.
pub(crate) fn check_header(path: &Path, schema: &Schema, records: usize) -> Result<()> {
    if schema.fields().is_empty() {
        return Err(Error::invalid(format!(
            "{} is empty; a CSV file needs a header row naming the columns, then one row per record",
            path.display()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (index, field) in schema.fields().iter().enumerate() {
        let name = field.name();
        if name.trim().is_empty() {
            return Err(Error::invalid(format!(
                "{}, line 1, column {}: the header names no column there; name every column (the policy gives each one a role)",
                path.display(),
                index + 1
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(Error::invalid(format!(
                "{}, line 1, column {}: the header names `{}` a second time; give every column its own name",
                path.display(),
                index + 1,
                shown(name)
            )));
        }
    }
    if records == 0 {
        let names: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("`{}`", shown(f.name())))
            .collect();
        return Err(Error::invalid(format!(
            "{} has a header row ({}) but no data rows; export the rows too",
            path.display(),
            names.join(", ")
        )));
    }
    Ok(())
}

/// Finds the first row from record `from` (0 = the first after the header) that Arrow could
/// not read as `schema`, and says where it is and what was expected. `arrow_error` is what
/// Arrow said, used only when no row breaks a rule this function knows.
pub(crate) fn diagnose(
    path: &Path,
    options: &CsvOptions,
    schema: Option<&Schema>,
    from: u64,
    arrow_error: &dyn fmt::Display,
) -> Error {
    match find_bad_row(path, options, schema, from) {
        Ok(Some(message)) => Error::invalid(message),
        Ok(None) => Error::invalid(format!(
            "{} cannot be read as CSV ({} text, fields separated by `{}`): {arrow_error}; check the --encoding and --delimiter options",
            path.display(),
            options.encoding.name(),
            (options.delimiter as char).escape_debug()
        )),
        Err(error) => error,
    }
}

fn find_bad_row(
    path: &Path,
    options: &CsvOptions,
    schema: Option<&Schema>,
    from: u64,
) -> Result<Option<String>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .delimiter(options.delimiter)
        .from_reader(options.decode(file));
    let where_ = |line: u64| format!("{}, line {line}", path.display());
    let headers = match reader.headers() {
        Ok(headers) => headers.clone(),
        Err(error) => return Ok(Some(csv_error(&where_, &error, &[]))),
    };
    let names: Vec<String> = headers.iter().map(str::to_string).collect();
    let mut record = csv::StringRecord::new();
    let mut index = 0u64;
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(None),
            Ok(true) => {}
            Err(error) => return Ok(Some(csv_error(&where_, &error, &names))),
        }
        let this = index;
        index += 1;
        if this < from {
            continue;
        }
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != names.len() {
            return Ok(Some(field_count(
                &where_(line),
                record.len(),
                &names,
                options,
            )));
        }
        let Some(schema) = schema else {
            continue;
        };
        for (column, (field, value)) in schema.fields().iter().zip(record.iter()).enumerate() {
            // Arrow reads an empty field as no value, whatever the column's type.
            if value.is_empty() || parses_as(value, field.data_type()) {
                continue;
            }
            return Ok(Some(format!(
                "{}, column `{}` (column {}): expected {}, found `{}`; the column was read as {} from the file's first rows — fix the value, or leave the field empty for no value",
                where_(line),
                shown(field.name()),
                column + 1,
                expected(field.data_type()),
                shown(value),
                expected(field.data_type()),
            )));
        }
    }
}

/// The message for an error of the `csv` crate: the encoding, or the text itself.
fn csv_error(where_: &dyn Fn(u64) -> String, error: &csv::Error, names: &[String]) -> String {
    if let csv::ErrorKind::Io(io) = error.kind()
        && let Some(bad) = io.get_ref().and_then(|e| e.downcast_ref::<EncodingError>())
    {
        let column = match names.get(bad.field as usize) {
            Some(name) if bad.line > 1 => {
                format!("column `{}` (column {})", shown(name), bad.field + 1)
            }
            _ => format!("column {}", bad.field + 1),
        };
        return format!("{}, {column}: {bad}", where_(bad.line));
    }
    let line = error.position().map_or(0, |p| p.line());
    format!("{}: {error}", where_(line))
}

fn field_count(at: &str, found: usize, names: &[String], options: &CsvOptions) -> String {
    let delimiter = (options.delimiter as char).escape_debug().to_string();
    let column = if found > names.len() {
        format!("column {} has no name in the header", names.len() + 1)
    } else {
        format!(
            "column `{}` (column {}) is missing",
            names.get(found).map_or_else(String::new, |n| shown(n)),
            found + 1
        )
    };
    format!(
        "{at}: {column} — expected {} fields separated by `{delimiter}` as in the header, found {found}; quote a value that contains `{delimiter}`, or pass --delimiter if the file separates fields with another character",
        names.len()
    )
}

/// Whether Arrow's CSV reader would read `value` as `data_type` (its parsers are the cast
/// kernel's, but for booleans, which the CSV reader accepts only as `true`/`false`).
fn parses_as(value: &str, data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => true,
        DataType::Boolean => {
            value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false")
        }
        other => {
            let array = StringArray::from(vec![value]);
            let strict = CastOptions {
                safe: false,
                ..CastOptions::default()
            };
            cast_with_options(&array, other, &strict).is_ok()
        }
    }
}

/// What a column of `data_type` holds, for people.
fn expected(data_type: &DataType) -> String {
    match data_type {
        t if t.is_integer() => "an integer".to_string(),
        t if t.is_floating() => "a number".to_string(),
        DataType::Boolean => "true or false".to_string(),
        DataType::Date32 | DataType::Date64 => "a date (YYYY-MM-DD)".to_string(),
        DataType::Timestamp(..) => "a date and time (YYYY-MM-DD HH:MM:SS)".to_string(),
        other => format!("a value of type {other}"),
    }
}

/// A value as a message shows it: control characters escaped, at most
/// [`VALUE_SHOWN_CHARS_MAX`] characters.
pub(crate) fn shown(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(VALUE_SHOWN_CHARS_MAX)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().count() > VALUE_SHOWN_CHARS_MAX {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(bytes: &[u8], options: &CsvOptions) -> io::Result<String> {
        let mut text = String::new();
        options.decode(bytes).read_to_string(&mut text)?;
        Ok(text)
    }

    #[test]
    fn decodes_gbk_and_drops_a_utf8_byte_order_mark() -> io::Result<()> {
        let (gbk, _, _) = encoding_rs::GBK.encode("city\n太原\n");
        let options = CsvOptions::parse(Some("gbk"), None).expect("gbk");
        assert_eq!(decoded(&gbk, &options)?, "city\n太原\n");
        let with_bom = [b"\xEF\xBB\xBF".as_slice(), "city\n大同\n".as_bytes()].concat();
        assert_eq!(decoded(&with_bom, &CsvOptions::default())?, "city\n大同\n");
        Ok(())
    }

    #[test]
    fn decodes_across_chunk_boundaries() -> io::Result<()> {
        // Enough two-byte characters that some straddle the 64 KiB input chunks.
        let text = "太原,".repeat(40_000);
        let (gbk, _, _) = encoding_rs::GBK.encode(&text);
        let options = CsvOptions::parse(Some("GB18030"), None).expect("gb18030");
        assert_eq!(decoded(&gbk, &options)?, text);
        Ok(())
    }

    #[test]
    fn gbk_read_as_utf8_fails_naming_line_and_field_and_the_fix() {
        // 大同 in GBK starts with B4, which no UTF-8 character starts with. (Some GBK text
        // is valid UTF-8 by chance — 太原 reads as two other characters — which is why the
        // quality report checks key sets.)
        let (gbk, _, _) = encoding_rs::GBK.encode("id,city\n1,\"a,b\"\n2,大同\n");
        let error = decoded(&gbk, &CsvOptions::default()).expect_err("not UTF-8");
        let bad = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<EncodingError>())
            .expect("an encoding error");
        assert_eq!((bad.line, bad.field), (3, 1));
        assert!(bad.to_string().contains("--encoding gbk"), "{bad}");
    }

    #[test]
    fn parses_options_and_refuses_what_it_cannot_use() {
        let options = CsvOptions::parse(Some("GBK"), Some("tab")).expect("options");
        assert_eq!(
            (
                options.encoding_name(),
                options.delimiter(),
                options.chosen()
            ),
            ("GBK", b'\t', true)
        );
        assert!(!CsvOptions::default().chosen());
        let unknown = CsvOptions::parse(Some("klingon"), None).expect_err("unknown");
        assert!(unknown.to_string().contains("gbk"), "{unknown}");
        let long = CsvOptions::parse(None, Some(";;")).expect_err("two characters");
        assert!(long.to_string().contains("one ASCII character"), "{long}");
        assert!(CsvOptions::parse(None, Some("\"")).is_err());
    }

    #[test]
    fn checks_values_the_way_the_csv_reader_reads_them() {
        assert!(parses_as("42", &DataType::Int64));
        assert!(!parses_as("4x2", &DataType::Int64));
        assert!(parses_as("2.5", &DataType::Float64));
        assert!(!parses_as("yes", &DataType::Boolean));
        assert!(parses_as("2026-10-01", &DataType::Date32));
        assert!(!parses_as("October", &DataType::Date32));
    }

    #[test]
    fn shows_values_escaped_and_cut() {
        assert_eq!(shown("a\nb"), "a\\nb");
        assert_eq!(
            shown(&"x".repeat(100)).chars().count(),
            VALUE_SHOWN_CHARS_MAX + 1
        );
    }
}
