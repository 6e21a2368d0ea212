//! A binary COPY encoder writing Arrow columns straight into PostgreSQL's wire format.
//!
//! tokio-postgres' `BinaryCopyInWriter` goes through `ToSql` per value; here each
//! column is cast once to a canonical Arrow type and its values are copied into one
//! buffer, which is what makes COPY the fast path it should be.
//!
//! Every staged row carries an extra `__ord` column, its position in the batch, so
//! the upsert can keep the last row per key and replay a sub-range of rows.

use bytes::{BufMut, Bytes, BytesMut};
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use super::{Column, PgType};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between the Unix epoch and PostgreSQL's.
const PG_EPOCH_DAYS: i32 = 10_957;

/// Length of the binary COPY header (signature, flags, extension length).
pub const HEADER_LEN: usize = 19;
/// The binary COPY trailer.
pub const TRAILER: [u8; 2] = [0xff, 0xff];

/// Where an output row is: (batch index, row index) in the transform's output.
pub type RowAt = (usize, usize);

/// A row the encoder could not stage, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub at: RowAt,
    pub reason: String,
}

/// The COPY payload of one batch.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Bytes,
    /// Rows staged (numbered `0..rows` in `__ord`).
    pub rows: i64,
    /// Per staged row (by `__ord`): the byte offset in `bytes` where it ends, so
    /// any range of rows can be sent again on its own.
    pub row_ends: Vec<usize>,
    /// Per staged row (by `__ord`): where it is in the output.
    pub rows_at: Vec<RowAt>,
    pub rejected: Vec<Rejected>,
}

impl Encoded {
    /// The COPY stream of rows `lo..hi` alone, as chunks (no copy of the rows).
    pub fn range(&self, lo: usize, hi: usize) -> [Bytes; 3] {
        let start = if lo == 0 {
            HEADER_LEN
        } else {
            self.row_ends[lo - 1]
        };
        let end = if hi == 0 {
            start
        } else {
            self.row_ends[hi - 1]
        };
        [
            self.bytes.slice(..HEADER_LEN),
            self.bytes.slice(start..end.max(start)),
            Bytes::from_static(&TRAILER),
        ]
    }
}

/// Encodes `batches` (whose columns are `columns`, in order) as a binary COPY stream
/// with the trailing `__ord` column.
pub fn encode(batches: &[RecordBatch], columns: &[Column]) -> Result<Encoded, ArrowError> {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut buf = BytesMut::with_capacity(
        19 + 2
            + total * (2 + 12 + columns.len() * 24)
            + batches
                .iter()
                .map(|b| b.get_array_memory_size())
                .sum::<usize>()
                / 2,
    );
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0); // flags
    buf.put_i32(0); // header extension length
    let mut ord: i64 = 0;
    let mut rejected = Vec::new();
    let mut row_ends = Vec::with_capacity(total);
    let mut rows_at = Vec::with_capacity(total);
    let fields = i16::try_from(columns.len() + 1)
        .map_err(|_| ArrowError::InvalidArgumentError("too many columns for COPY".into()))?;
    for (b, batch) in batches.iter().enumerate() {
        let cast_columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .zip(columns)
            .map(|(a, c)| cast(a, &c.pg.canonical()))
            .collect::<Result<_, _>>()?;
        // Only columns that may hold a value PostgreSQL cannot store are checked row
        // by row (a text column with a NUL byte somewhere, a time before 4714 BC).
        let suspects: Vec<(&ArrayRef, &Column)> = cast_columns
            .iter()
            .zip(columns)
            .filter(|(array, column)| may_be_unstorable(array, column.pg))
            .collect();
        'rows: for row in 0..batch.num_rows() {
            // A value PostgreSQL cannot store rejects its row, not the whole COPY.
            for &(array, column) in &suspects {
                if let Some(why) = unstorable(array, column.pg, row) {
                    rejected.push(Rejected {
                        at: (b, row),
                        reason: format!("column {:?} {why}", column.name),
                    });
                    continue 'rows;
                }
            }
            buf.put_i16(fields);
            for (array, column) in cast_columns.iter().zip(columns) {
                put_value(&mut buf, array, column.pg, row);
            }
            buf.put_i32(8);
            buf.put_i64(ord);
            ord += 1;
            row_ends.push(buf.len());
            rows_at.push((b, row));
        }
    }
    buf.put_i16(-1);
    Ok(Encoded {
        bytes: buf.freeze(),
        rows: ord,
        row_ends,
        rows_at,
        rejected,
    })
}

/// Earliest timestamp PostgreSQL accepts (4714-11-24 BC), in Unix microseconds.
pub const PG_MIN_TIMESTAMP_MICROS: i64 = -210_866_803_200_000_000;
/// Earliest date PostgreSQL accepts, in days since the Unix epoch.
const PG_MIN_DATE_DAYS: i32 = -2_440_588;

/// Whether any value of `array` may be one PostgreSQL cannot store: a scan of the
/// whole column at once, so that clean columns (nearly all) skip [`unstorable`].
/// It may say yes for a clean column (a sliced array's buffer holds bytes outside
/// the slice), never no for one with such a value.
fn may_be_unstorable(array: &ArrayRef, pg: PgType) -> bool {
    match pg {
        PgType::Text => array.as_string::<i32>().values().contains(&0),
        PgType::Timestamptz | PgType::Timestamp => array
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .iter()
            .any(|&v| v < PG_MIN_TIMESTAMP_MICROS),
        PgType::Date => array
            .as_primitive::<Date32Type>()
            .values()
            .iter()
            .any(|&v| v < PG_MIN_DATE_DAYS),
        _ => false,
    }
}

/// Why PostgreSQL could not store this value, if it could not.
fn unstorable(array: &ArrayRef, pg: PgType, row: usize) -> Option<&'static str> {
    if array.is_null(row) {
        return None;
    }
    match pg {
        PgType::Text if array.as_string::<i32>().value(row).as_bytes().contains(&0) => {
            Some("contains a NUL character, which PostgreSQL text cannot store")
        }
        PgType::Timestamptz | PgType::Timestamp
            if array.as_primitive::<TimestampMicrosecondType>().value(row)
                < PG_MIN_TIMESTAMP_MICROS =>
        {
            Some("is a timestamp before PostgreSQL's earliest (4714 BC)")
        }
        PgType::Date if array.as_primitive::<Date32Type>().value(row) < PG_MIN_DATE_DAYS => {
            Some("is a date before PostgreSQL's earliest (4714 BC)")
        }
        _ => None,
    }
}

fn put_value(buf: &mut BytesMut, array: &ArrayRef, pg: PgType, row: usize) {
    if array.is_null(row) {
        buf.put_i32(-1);
        return;
    }
    match pg {
        PgType::Text => {
            let v = array.as_string::<i32>().value(row).as_bytes();
            buf.put_i32(v.len() as i32);
            buf.put_slice(v);
        }
        PgType::Bool => {
            buf.put_i32(1);
            buf.put_u8(u8::from(array.as_boolean().value(row)));
        }
        PgType::Int2 => {
            buf.put_i32(2);
            buf.put_i16(array.as_primitive::<Int16Type>().value(row));
        }
        PgType::Int4 => {
            buf.put_i32(4);
            buf.put_i32(array.as_primitive::<Int32Type>().value(row));
        }
        PgType::Int8 => {
            buf.put_i32(8);
            buf.put_i64(array.as_primitive::<Int64Type>().value(row));
        }
        PgType::Float4 => {
            buf.put_i32(4);
            buf.put_f32(array.as_primitive::<Float32Type>().value(row));
        }
        PgType::Float8 => {
            buf.put_i32(8);
            buf.put_f64(array.as_primitive::<Float64Type>().value(row));
        }
        PgType::Timestamptz | PgType::Timestamp => {
            buf.put_i32(8);
            let micros = array.as_primitive::<TimestampMicrosecondType>().value(row);
            buf.put_i64(micros - PG_EPOCH_MICROS); // in range: checked by `unstorable`
        }
        PgType::Date => {
            buf.put_i32(4);
            buf.put_i32(array.as_primitive::<Date32Type>().value(row) - PG_EPOCH_DAYS);
        }
    }
}

/// One row as a JSON object of its displayed values, for a dead letter.
pub fn row_json(batch: &RecordBatch, row: usize) -> String {
    let options = FormatOptions::default();
    let mut object = serde_json::Map::new();
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        let value = if array.is_null(row) {
            serde_json::Value::Null
        } else {
            ArrayFormatter::try_new(array.as_ref(), &options)
                .map(|f| serde_json::Value::String(f.value(row).to_string()))
                .unwrap_or(serde_json::Value::Null)
        };
        object.insert(field.name().clone(), value);
    }
    serde_json::Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray, TimestampNanosecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn batch() -> (RecordBatch, Vec<Column>) {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into())),
                true,
            ),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema.clone()),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), Some("b\0c"), None])),
                Arc::new(Int64Array::from(vec![Some(1), Some(2), None])),
                Arc::new(
                    TimestampNanosecondArray::from(vec![
                        Some(946_684_800_000_000_000),
                        None,
                        Some(0),
                    ])
                    .with_timezone("+00:00"),
                ),
            ],
        )
        .unwrap();
        (batch, super::super::columns(&schema).unwrap())
    }

    #[test]
    fn encodes_the_binary_copy_format() {
        let (batch, columns) = batch();
        let e = encode(&[batch], &columns).unwrap();
        assert_eq!(e.rows, 2);
        assert_eq!(e.rejected.len(), 1);
        assert!(e.rejected[0].reason.contains("NUL"));
        assert_eq!(
            e.rejected[0].at,
            (0, 1),
            "the second row is the one refused"
        );
        assert_eq!(e.rows_at, [(0, 0), (0, 2)]);
        let b = &e.bytes[..];
        assert_eq!(&b[..11], b"PGCOPY\n\xff\r\n\0");
        let mut expected: Vec<u8> = b"PGCOPY\n\xff\r\n\0".to_vec();
        expected.extend([0u8; 8]);
        // row 1: 4 fields; "a"; 1; 2000-01-01 = 0 micros; ord 0
        expected.extend(4i16.to_be_bytes());
        expected.extend(1i32.to_be_bytes());
        expected.extend(b"a");
        expected.extend(8i32.to_be_bytes());
        expected.extend(1i64.to_be_bytes());
        expected.extend(8i32.to_be_bytes());
        expected.extend(0i64.to_be_bytes());
        expected.extend(8i32.to_be_bytes());
        expected.extend(0i64.to_be_bytes());
        // row 3: nulls; 1970-01-01; ord 1
        expected.extend(4i16.to_be_bytes());
        expected.extend((-1i32).to_be_bytes());
        expected.extend((-1i32).to_be_bytes());
        expected.extend(8i32.to_be_bytes());
        expected.extend((-PG_EPOCH_MICROS).to_be_bytes());
        expected.extend(8i32.to_be_bytes());
        expected.extend(1i64.to_be_bytes());
        expected.extend((-1i16).to_be_bytes());
        assert_eq!(b, &expected[..]);
        // Any range of rows is a complete COPY stream of its own.
        let second: Vec<u8> = e.range(1, 2).iter().flat_map(|c| c.to_vec()).collect();
        let mut alone = expected[..HEADER_LEN].to_vec();
        alone.extend(&expected[e.row_ends[0]..e.row_ends[1]]);
        alone.extend(TRAILER);
        assert_eq!(second, alone);
        let all: Vec<u8> = e.range(0, 2).iter().flat_map(|c| c.to_vec()).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn values_postgres_cannot_store_reject_their_row_only() {
        use datafusion::arrow::array::Date32Array;
        let schema = Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("d", DataType::Date32, true),
        ]);
        let too_old = PG_MIN_TIMESTAMP_MICROS - 1;
        let batch = RecordBatch::try_new(
            Arc::new(schema.clone()),
            vec![
                Arc::new(StringArray::from(vec!["ok", "old-ts", "old-date"])),
                Arc::new(
                    datafusion::arrow::array::TimestampMicrosecondArray::from(vec![
                        Some(0),
                        Some(too_old),
                        Some(0),
                    ])
                    .with_timezone("UTC"),
                ),
                Arc::new(Date32Array::from(vec![
                    Some(0),
                    Some(0),
                    Some(PG_MIN_DATE_DAYS - 1),
                ])),
            ],
        )
        .unwrap();
        let e = encode(&[batch], &super::super::columns(&schema).unwrap()).unwrap();
        assert_eq!(e.rows, 1);
        let reasons: Vec<&str> = e.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons.len(), 2);
        assert!(
            reasons[0].starts_with("column \"t\" is a timestamp before"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].starts_with("column \"d\" is a date before"),
            "{reasons:?}"
        );
        assert_eq!(e.rejected[1].at, (0, 2), "old-date");
    }
}
