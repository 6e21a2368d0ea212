//! Timestamps as the part files write them, formatted without chrono's strftime.
//!
//! arrow-csv formats a timestamp by handing chrono a format string, which chrono
//! parses again for every value: in the profile of issue 14 that was a tenth of the
//! consumer's CPU. The part files' format is fixed (`2024-01-31T12:34:56.789+00:00`,
//! or without the offset for a timestamp without a time zone), so UTC and naive
//! timestamp columns are turned into text here, digit by digit, before the CSV
//! writer sees them; any other time zone, and a year outside 0000-9999, goes through
//! chrono with the same format, so the bytes written do not change.

use std::fmt::Write;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::{
    DataType, Field, Schema, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

/// The part files' format of a timestamp with a time zone (arrow-csv's, by chrono).
pub const TZ_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f%:z";
/// ... and without one.
pub const NAIVE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f";

/// The batch with its UTC and naive timestamp columns as text in the part files'
/// format; other columns as they are.
pub fn timestamps_as_text(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    if !schema
        .fields()
        .iter()
        .any(|f| formatted_here(f.data_type()))
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        match field.data_type() {
            DataType::Timestamp(unit, tz) if formatted_here(field.data_type()) => {
                fields.push(Field::new(
                    field.name(),
                    DataType::Utf8,
                    field.is_nullable(),
                ));
                columns.push(as_text(column, *unit, tz.is_some())?);
            }
            _ => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// A timestamp type whose values this module formats: no time zone, or UTC.
fn formatted_here(data_type: &DataType) -> bool {
    match data_type {
        DataType::Timestamp(_, None) => true,
        DataType::Timestamp(_, Some(tz)) => matches!(&**tz, "UTC" | "+00:00" | "Z"),
        _ => false,
    }
}

/// A timestamp column as text: (milliseconds since the epoch, the sub-millisecond
/// part dropped as `%.3f` does).
fn as_text(column: &ArrayRef, unit: TimeUnit, with_offset: bool) -> Result<ArrayRef, ArrowError> {
    let millis = |i: usize| -> i64 {
        match unit {
            TimeUnit::Second => column
                .as_primitive::<TimestampSecondType>()
                .value(i)
                .saturating_mul(1000),
            TimeUnit::Millisecond => column.as_primitive::<TimestampMillisecondType>().value(i),
            TimeUnit::Microsecond => column
                .as_primitive::<TimestampMicrosecondType>()
                .value(i)
                .div_euclid(1000),
            TimeUnit::Nanosecond => column
                .as_primitive::<TimestampNanosecondType>()
                .value(i)
                .div_euclid(1_000_000),
        }
    };
    let width = if with_offset { 29 } else { 23 };
    let mut out = StringBuilder::with_capacity(column.len(), column.len() * width);
    let mut text = String::with_capacity(32);
    for i in 0..column.len() {
        if column.is_null(i) {
            out.append_null();
            continue;
        }
        text.clear();
        let at = millis(i);
        if !format_millis(&mut text, at, with_offset) {
            return Err(ArrowError::CastError(format!(
                "timestamp {at} ms since the epoch has no date to write in a part file"
            )));
        }
        out.append_value(&text);
    }
    Ok(Arc::new(out.finish()))
}

/// Appends `millis` (since the epoch, UTC) in the part files' format; false when
/// no date can spell it (arrow-csv then failed the file too).
pub fn format_millis(out: &mut String, millis: i64, with_offset: bool) -> bool {
    let days = millis.div_euclid(86_400_000);
    let in_day = millis.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        // chrono's own spelling of such years (a sign, more digits).
        let format = if with_offset { TZ_FORMAT } else { NAIVE_FORMAT };
        return match chrono::DateTime::from_timestamp_millis(millis) {
            Some(t) if with_offset => write!(out, "{}", t.format(format)).is_ok(),
            Some(t) => write!(out, "{}", t.naive_utc().format(format)).is_ok(),
            None => false,
        };
    }
    let (h, m, s, ms) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    let mut digits = [0u8; 23];
    let mut put = |at: usize, value: i64, width: usize| {
        let mut v = value;
        for k in (0..width).rev() {
            digits[at + k] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, h, 2);
    put(14, m, 2);
    put(17, s, 2);
    put(20, ms, 3);
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        digits[at] = sep;
    }
    // Only ASCII digits and separators were written.
    out.push_str(std::str::from_utf8(&digits).unwrap_or_default());
    if with_offset {
        out.push_str("+00:00");
    }
    true
}

/// (year, month, day) of a day counted from 1970-01-01, proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{StringArray, TimestampMicrosecondArray};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn chrono_text(millis: i64, with_offset: bool) -> String {
        let t = chrono::DateTime::from_timestamp_millis(millis).unwrap();
        if with_offset {
            t.format(TZ_FORMAT).to_string()
        } else {
            t.naive_utc().format(NAIVE_FORMAT).to_string()
        }
    }

    #[test]
    fn every_value_is_spelled_as_chrono_spells_it() {
        let mut rng = StdRng::seed_from_u64(7);
        // Around the epoch, leap days, the four-digit bounds, and far beyond them.
        let mut values = vec![
            0,
            -1,
            1,
            951_782_400_000,
            -62_167_219_200_000,
            -62_167_219_200_001,
            253_402_300_799_999,
            253_402_300_800_000,
            -210_866_803_200_000,
        ];
        values.extend(
            (0..20_000).map(|_| rng.random_range(-80_000_000_000_000..300_000_000_000_000)),
        );
        for millis in values {
            for with_offset in [true, false] {
                let mut ours = String::new();
                assert!(format_millis(&mut ours, millis, with_offset));
                assert_eq!(ours, chrono_text(millis, with_offset), "{millis}");
            }
        }
    }

    #[test]
    fn utc_columns_become_text_and_others_stay() {
        let utc =
            TimestampMicrosecondArray::from(vec![Some(1_500), None, Some(-1)]).with_timezone("UTC");
        let paris = TimestampMicrosecondArray::from(vec![Some(0), None, Some(0)])
            .with_timezone("Europe/Paris");
        let batch = RecordBatch::try_from_iter([
            ("t", Arc::new(utc) as ArrayRef),
            ("p", Arc::new(paris) as ArrayRef),
        ])
        .unwrap();
        let out = timestamps_as_text(&batch).unwrap();
        let t = out
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(t.value(0), "1970-01-01T00:00:00.001+00:00");
        assert!(t.is_null(1));
        assert_eq!(t.value(2), "1969-12-31T23:59:59.999+00:00");
        assert_eq!(out.column(1).data_type(), batch.column(1).data_type());
        // Beyond any date chrono can spell: an error, never an empty field.
        let far = TimestampMicrosecondArray::from(vec![Some(i64::MAX)]).with_timezone("UTC");
        let batch = RecordBatch::try_from_iter([("t", Arc::new(far) as ArrayRef)]).unwrap();
        assert!(timestamps_as_text(&batch).is_err());
    }
}
