//! CSV rows of Arrow batches, byte for byte what arrow-csv writes, at less cost per value.
//!
//! arrow-csv formats every value through arrow's `ArrayFormatter` into a `String`
//! (one `fmt::write` per value), hands the row to the `csv` crate as a record, which
//! copies it into its buffer. In the profile of issue 14 that was a part file's
//! whole cost, inside the batch's transaction. Here text, integer and UTC or naive
//! timestamp columns, nearly all a part file holds, are written straight into the
//! output buffer; every other type goes through arrow's formatter with arrow-csv's
//! options. Quoting follows the `csv` crate with arrow-csv's settings (quote only
//! where needed, quotes doubled, `\n` ends a row), so the bytes do not change: a
//! test compares them with arrow-csv's.

use std::io::Write;

use datafusion::arrow::array::{
    Array, AsArray, GenericStringArray, Int32Array, Int64Array, OffsetSizeTrait, StringViewArray,
};
use datafusion::arrow::datatypes::{DataType, Int32Type, Int64Type};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use super::csv_time::{self, Timestamps};

/// How much is buffered before it goes to the file.
const FLUSH_AT: usize = 1 << 20;

/// The bytes that make a field quoted: the delimiter, the quote, and both line
/// ends (the `csv` crate quotes `\r` too, as its reader ends a row there).
const QUOTED: [u8; 4] = [b',', b'"', b'\n', b'\r'];

/// [`QUOTED`] as a table, for the bytes that do not fill a word.
const NEEDS_QUOTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < QUOTED.len() {
        t[QUOTED[i] as usize] = true;
        i += 1;
    }
    t
};

/// Whether the word holds the byte `b` (the exact "has a zero byte" test on the
/// word xor `b` in every byte).
const fn holds(word: u64, b: u8) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let x = word ^ (ONES * b as u64);
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// Whether a field holds a byte of [`NEEDS_QUOTES`]: eight bytes at a time, as
/// the `csv` crate also unrolls its test (a field is a few dozen bytes).
fn needs_quotes(field: &[u8]) -> bool {
    let mut words = field.chunks_exact(8);
    for w in &mut words {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(w);
        let w = u64::from_ne_bytes(bytes);
        if QUOTED.iter().any(|b| holds(w, *b)) {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|b| NEEDS_QUOTES[usize::from(*b)])
}

/// Appends one field, quoted when it holds a byte of [`NEEDS_QUOTES`].
fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    if !needs_quotes(field) {
        out.extend_from_slice(field);
        return;
    }
    out.push(b'"');
    for piece in field.split_inclusive(|b| *b == b'"') {
        out.extend_from_slice(piece);
        if piece.ends_with(b"\"") {
            out.push(b'"');
        }
    }
    out.push(b'"');
}

/// Ends a row that began at `start`: a row with no bytes at all (one empty field)
/// is written `""`, as the `csv` crate does, so that it is not an empty line.
fn end_row(out: &mut Vec<u8>, start: usize) {
    if out.len() == start {
        out.extend_from_slice(b"\"\"");
    }
    out.push(b'\n');
}

/// One column of a batch, read the cheapest way its type allows.
enum Values<'a> {
    Text(&'a GenericStringArray<i32>),
    LargeText(&'a GenericStringArray<i64>),
    TextView(&'a StringViewArray),
    Int32(&'a Int32Array),
    Int64(&'a Int64Array),
    Timestamp(Timestamps<'a>),
    /// Any other type: arrow's formatter, as arrow-csv uses it.
    Formatted(ArrayFormatter<'a>),
}

impl<'a> Values<'a> {
    fn of(array: &'a dyn Array, options: &FormatOptions<'a>) -> Result<Self, ArrowError> {
        if let Some(t) = Timestamps::of(array) {
            return Ok(Values::Timestamp(t));
        }
        Ok(match array.data_type() {
            DataType::Utf8 => Values::Text(array.as_string::<i32>()),
            DataType::LargeUtf8 => Values::LargeText(array.as_string::<i64>()),
            DataType::Utf8View => Values::TextView(array.as_string_view()),
            DataType::Int32 => Values::Int32(array.as_primitive::<Int32Type>()),
            DataType::Int64 => Values::Int64(array.as_primitive::<Int64Type>()),
            t if t.is_nested() => {
                return Err(ArrowError::CsvError(format!(
                    "Nested type {t} is not supported in CSV"
                )));
            }
            _ => Values::Formatted(ArrayFormatter::try_new(array, options)?),
        })
    }

    /// Appends the value at `row` to `out` (a null as an empty field, as
    /// arrow-csv's default null text is empty). Numbers and timestamps never
    /// need quotes.
    fn put(
        &self,
        row: usize,
        out: &mut Vec<u8>,
        text: &mut String,
        digits: &mut itoa::Buffer,
    ) -> Result<(), ArrowError> {
        match self {
            Values::Text(a) => put_text(out, a, row),
            Values::LargeText(a) => put_text(out, a, row),
            Values::TextView(a) if a.is_null(row) => {}
            Values::TextView(a) => put_field(out, a.value(row).as_bytes()),
            Values::Int32(a) if a.is_null(row) => {}
            Values::Int32(a) => out.extend_from_slice(digits.format(a.value(row)).as_bytes()),
            Values::Int64(a) if a.is_null(row) => {}
            Values::Int64(a) => out.extend_from_slice(digits.format(a.value(row)).as_bytes()),
            Values::Timestamp(t) if t.is_null(row) => {}
            Values::Timestamp(t) => t.write(row, out)?,
            Values::Formatted(f) => {
                text.clear();
                f.value(row).write(text)?;
                put_field(out, text.as_bytes());
            }
        }
        Ok(())
    }
}

fn put_text<O: OffsetSizeTrait>(out: &mut Vec<u8>, a: &GenericStringArray<O>, row: usize) {
    if !a.is_null(row) {
        put_field(out, a.value(row).as_bytes());
    }
}

/// arrow-csv's options for what the part files write through arrow's formatter.
fn format_options() -> FormatOptions<'static> {
    FormatOptions::default()
        .with_null("")
        .with_timestamp_tz_format(Some(csv_time::TZ_FORMAT))
        .with_timestamp_format(Some(csv_time::NAIVE_FORMAT))
}

fn io_error(e: std::io::Error) -> ArrowError {
    ArrowError::IoError(e.to_string(), e)
}

/// Writes `rows` as CSV with a header line (the first batch's column names, as
/// arrow-csv writes it) to `out`, and hands `out` back flushed.
pub fn write_rows<W: Write>(mut out: W, rows: &[RecordBatch]) -> Result<W, ArrowError> {
    let Some(first) = rows.first() else {
        return Ok(out);
    };
    let mut buf = Vec::with_capacity(FLUSH_AT + (64 << 10));
    let width = first.num_columns();
    for (i, field) in first.schema().fields().iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        put_field(&mut buf, field.name().as_bytes());
    }
    end_row(&mut buf, 0);
    let options = format_options();
    let mut text = String::with_capacity(64);
    let mut digits = itoa::Buffer::new();
    for batch in rows {
        if batch.num_columns() != width {
            // The `csv` crate's check: every row as wide as the first.
            return Err(ArrowError::CsvError(format!(
                "a batch of {} columns after a header of {width}",
                batch.num_columns()
            )));
        }
        let columns = batch
            .columns()
            .iter()
            .map(|a| Values::of(a.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            let start = buf.len();
            for (i, values) in columns.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                values.put(row, &mut buf, &mut text, &mut digits)?;
            }
            end_row(&mut buf, start);
            if buf.len() >= FLUSH_AT {
                out.write_all(&buf).map_err(io_error)?;
                buf.clear();
            }
        }
    }
    out.write_all(&buf).map_err(io_error)?;
    out.flush().map_err(io_error)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int16Array,
        LargeStringArray, ListArray, StringArray, TimestampMillisecondArray,
        TimestampNanosecondArray, UInt64Array,
    };
    use datafusion::arrow::datatypes::{Field, Schema};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// What arrow-csv writes, configured as the part files were before this module.
    fn arrow_csv(rows: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
        let mut writer = arrow_csv::WriterBuilder::new()
            .with_header(true)
            .with_timestamp_tz_format(csv_time::TZ_FORMAT.to_string())
            .with_timestamp_format(csv_time::NAIVE_FORMAT.to_string())
            .build(Vec::new());
        for b in rows {
            writer.write(b)?;
        }
        Ok(writer.into_inner())
    }

    fn ours(rows: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
        write_rows(Vec::new(), rows)
    }

    fn random_text(rng: &mut impl Rng) -> Option<String> {
        const PIECES: [&str; 12] = [
            "a", "Zoë", " ", "\"", ",", "\n", "\r", "\r\n", "'", "\\", "\t", "42",
        ];
        if rng.random_bool(0.1) {
            return None;
        }
        let n = rng.random_range(0..6);
        Some(
            (0..n)
                .map(|_| PIECES[rng.random_range(0..PIECES.len())])
                .collect(),
        )
    }

    fn random_batch(rng: &mut impl Rng, rows: usize) -> RecordBatch {
        let texts: Vec<Option<String>> = (0..rows).map(|_| random_text(rng)).collect();
        let int32: Vec<Option<i32>> = (0..rows)
            .map(|i| match i % 4 {
                0 => Some(i32::MIN),
                1 => Some(i32::MAX),
                _ => rng.random_bool(0.9).then(|| rng.random()),
            })
            .collect();
        let int64: Vec<Option<i64>> = (0..rows)
            .map(|i| match i % 5 {
                0 => Some(i64::MIN),
                1 => Some(0),
                _ => rng.random_bool(0.9).then(|| rng.random()),
            })
            .collect();
        let millis: Vec<Option<i64>> = (0..rows)
            .map(|_| {
                rng.random_bool(0.9)
                    .then(|| rng.random_range(-62_000_000_000_000..250_000_000_000_000))
            })
            .collect();
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("text", Arc::new(StringArray::from(texts.clone()))),
            ("large", Arc::new(LargeStringArray::from(texts.clone()))),
            ("view", Arc::new(StringViewArray::from(texts))),
            ("i32", Arc::new(Int32Array::from(int32))),
            ("i64", Arc::new(Int64Array::from(int64.clone()))),
            (
                "i16",
                Arc::new(Int16Array::from_iter((0..rows).map(|i| Some(i as i16 - 7)))),
            ),
            (
                "u64",
                Arc::new(UInt64Array::from_iter(
                    (0..rows).map(|_| Some(rng.random::<u64>())),
                )),
            ),
            (
                "f64",
                Arc::new(Float64Array::from_iter(
                    (0..rows).map(|i| Some(i as f64 / 3.0)),
                )),
            ),
            (
                "bool",
                Arc::new(BooleanArray::from_iter(
                    (0..rows).map(|i| (i % 3 != 0).then_some(i % 2 == 0)),
                )),
            ),
            (
                "date",
                Arc::new(Date32Array::from_iter(
                    (0..rows).map(|i| Some(i as i32 * 997 - 40_000)),
                )),
            ),
            (
                "dec",
                Arc::new(
                    Decimal128Array::from_iter(int64.iter().map(|v| v.map(i128::from)))
                        .with_precision_and_scale(38, 4)
                        .unwrap(),
                ),
            ),
            (
                "utc",
                Arc::new(TimestampMillisecondArray::from(millis.clone()).with_timezone("UTC")),
            ),
            (
                "india",
                Arc::new(TimestampMillisecondArray::from(millis.clone()).with_timezone("+05:30")),
            ),
            (
                "naive",
                Arc::new(TimestampNanosecondArray::from_iter(
                    // Nanoseconds since 1970 reach only the years 1677 to 2262.
                    millis
                        .iter()
                        .map(|m| m.map(|m| (m % 9_000_000_000_000) * 1_000_000 + 123_456)),
                )),
            ),
        ];
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn a_field_is_quoted_for_exactly_the_bytes_the_csv_crate_quotes_for() {
        // Every byte value, at every place of a word and of the remainder.
        for len in [1, 7, 8, 9, 16, 23] {
            for at in 0..len {
                for b in 0..=u8::MAX {
                    let mut field = vec![b'a'; len];
                    field[at] = b;
                    assert_eq!(
                        needs_quotes(&field),
                        NEEDS_QUOTES[usize::from(b)],
                        "byte {b} at {at} of {len}"
                    );
                }
            }
        }
        assert!(!needs_quotes(b""));
    }

    #[test]
    fn writes_what_arrow_csv_writes_for_every_column_type() {
        let mut rng = StdRng::seed_from_u64(14);
        for round in 0..20 {
            let batches: Vec<RecordBatch> = (0..3)
                .map(|_| {
                    let rows = rng.random_range(0..300);
                    random_batch(&mut rng, rows)
                })
                .collect();
            let expected = arrow_csv(&batches).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&ours(&batches).unwrap()),
                String::from_utf8_lossy(&expected),
                "round {round}"
            );
        }
    }

    #[test]
    fn a_row_of_one_empty_field_and_a_sliced_batch_are_written_as_arrow_csv_writes_them() {
        let batch = RecordBatch::try_from_iter([(
            "only",
            Arc::new(StringArray::from(vec![
                None,
                Some(""),
                Some("x,y"),
                Some("z"),
            ])) as ArrayRef,
        )])
        .unwrap();
        let rows = [batch.slice(1, 3), batch.clone(), batch.slice(0, 0)];
        let written = ours(&rows).unwrap();
        assert_eq!(written, arrow_csv(&rows).unwrap());
        assert!(
            String::from_utf8(written)
                .unwrap()
                .starts_with("only\n\"\"\n\"x,y\"\nz\n")
        );
    }

    #[test]
    fn the_header_comes_from_the_first_batch_even_without_rows() {
        let schema = Arc::new(Schema::new(vec![Field::new("a b", DataType::Int64, true)]));
        let rows = [RecordBatch::new_empty(schema)];
        assert_eq!(ours(&rows).unwrap(), b"a b\n");
        assert_eq!(ours(&rows).unwrap(), arrow_csv(&rows).unwrap());
        assert_eq!(ours(&[]).unwrap(), b"");
    }

    #[test]
    fn a_nested_column_is_refused_as_arrow_csv_refuses_it() {
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>([Some(vec![Some(1)])]);
        let rows = [RecordBatch::try_from_iter([("l", Arc::new(list) as ArrayRef)]).unwrap()];
        let e = ours(&rows).unwrap_err().to_string();
        assert!(e.contains("Nested type"), "{e}");
        assert!(arrow_csv(&rows).is_err());
    }

    #[test]
    fn a_timestamp_no_date_can_spell_fails_the_file() {
        let t = TimestampMillisecondArray::from(vec![Some(i64::MAX)]).with_timezone("+09:00");
        let rows = [RecordBatch::try_from_iter([("t", Arc::new(t) as ArrayRef)]).unwrap()];
        assert!(ours(&rows).is_err());
        assert!(arrow_csv(&rows).is_err());
    }
}
