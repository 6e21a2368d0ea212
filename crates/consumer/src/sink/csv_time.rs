//! Timestamps as the part files write them, formatted without chrono's strftime.
//!
//! arrow-csv formats a timestamp by handing chrono a format string, which chrono
//! parses again for every value: in the profile of issue 14 that was a tenth of the
//! consumer's CPU. The part files' format is fixed (`2024-01-31T12:34:56.789+00:00`,
//! or without the offset for a timestamp without a time zone), so the values of UTC
//! and naive timestamp columns are spelled here, digit by digit, straight into the
//! row being written; any other time zone goes through arrow's formatter (chrono)
//! with the same format, and so does a year outside 0000-9999 here, so the bytes
//! written do not change.

use std::io::Write;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{
    DataType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::arrow::error::ArrowError;

/// The part files' format of a timestamp with a time zone (arrow-csv's, by chrono).
pub const TZ_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f%:z";
/// ... and without one.
pub const NAIVE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f";

/// A timestamp column this module spells: no time zone, or UTC.
pub struct Timestamps<'a> {
    column: &'a dyn Array,
    values: &'a [i64],
    unit: TimeUnit,
    with_offset: bool,
}

impl<'a> Timestamps<'a> {
    /// The column, when its type is one spelled here.
    pub fn of(column: &'a dyn Array) -> Option<Self> {
        let DataType::Timestamp(unit, tz) = column.data_type() else {
            return None;
        };
        if tz
            .as_deref()
            .is_some_and(|tz| !matches!(tz, "UTC" | "+00:00" | "Z"))
        {
            return None;
        }
        let values: &[i64] = match unit {
            TimeUnit::Second => column.as_primitive::<TimestampSecondType>().values(),
            TimeUnit::Millisecond => column.as_primitive::<TimestampMillisecondType>().values(),
            TimeUnit::Microsecond => column.as_primitive::<TimestampMicrosecondType>().values(),
            TimeUnit::Nanosecond => column.as_primitive::<TimestampNanosecondType>().values(),
        };
        Some(Self {
            column,
            values,
            unit: *unit,
            with_offset: tz.is_some(),
        })
    }

    pub fn is_null(&self, row: usize) -> bool {
        self.column.is_null(row)
    }

    /// Appends the value at `row` (not null) in the part files' format.
    pub fn write(&self, row: usize, out: &mut Vec<u8>) -> Result<(), ArrowError> {
        let v = self.values[row];
        // Milliseconds, the sub-millisecond part dropped as `%.3f` does.
        let at = match self.unit {
            TimeUnit::Second => v.saturating_mul(1000),
            TimeUnit::Millisecond => v,
            TimeUnit::Microsecond => v.div_euclid(1000),
            TimeUnit::Nanosecond => v.div_euclid(1_000_000),
        };
        if format_millis(out, at, self.with_offset) {
            Ok(())
        } else {
            Err(ArrowError::CastError(format!(
                "timestamp {at} ms since the epoch has no date to write in a part file"
            )))
        }
    }
}

/// Appends `millis` (since the epoch, UTC) in the part files' format; false when
/// no date can spell it (arrow-csv then failed the file too).
pub fn format_millis(out: &mut Vec<u8>, millis: i64, with_offset: bool) -> bool {
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
    out.extend_from_slice(&digits);
    if with_offset {
        out.extend_from_slice(b"+00:00");
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
    use datafusion::arrow::array::{Int64Array, TimestampMicrosecondArray, TimestampSecondArray};
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
                let mut ours = Vec::new();
                assert!(format_millis(&mut ours, millis, with_offset));
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    chrono_text(millis, with_offset),
                    "{millis}"
                );
            }
        }
    }

    #[test]
    fn utc_and_naive_columns_are_spelled_here_and_others_left_to_chrono() {
        let utc =
            TimestampMicrosecondArray::from(vec![Some(1_500), None, Some(-1)]).with_timezone("UTC");
        let t = Timestamps::of(&utc).unwrap();
        let spelled = |row| {
            let mut out = Vec::new();
            t.write(row, &mut out)
                .map(|()| String::from_utf8(out).unwrap())
        };
        assert_eq!(spelled(0).unwrap(), "1970-01-01T00:00:00.001+00:00");
        assert!(t.is_null(1));
        assert_eq!(spelled(2).unwrap(), "1969-12-31T23:59:59.999+00:00");
        let naive = TimestampSecondArray::from(vec![86_400]);
        let mut out = Vec::new();
        Timestamps::of(&naive).unwrap().write(0, &mut out).unwrap();
        assert_eq!(out, b"1970-01-02T00:00:00.000");
        let paris = TimestampMicrosecondArray::from(vec![Some(0)]).with_timezone("Europe/Paris");
        assert!(Timestamps::of(&paris).is_none());
        assert!(Timestamps::of(&Int64Array::from(vec![0])).is_none());
        // Beyond any date chrono can spell: an error, never an empty field.
        let far = TimestampMicrosecondArray::from(vec![Some(i64::MAX)]).with_timezone("UTC");
        assert!(Timestamps::of(&far).unwrap().write(0, &mut out).is_err());
    }
}
