//! The two sinks of a batch and what they share.
//!
//! - [`postgres`]: the session, and the COPY and write of a batch's rows.
//! - [`csv`]: stages a part file before that transaction and promotes it after.
//! - [`table`]: an output's table and its write mode (upsert, append, merge).
//! - [`copy`]: the binary COPY encoder feeding [`postgres`].
//! - [`pg_error`]: PostgreSQL's errors and what each means for a batch.
//!
//! The output columns' Arrow types are mapped once, here, to the PostgreSQL types
//! of the table and to the canonical Arrow types the encoder understands.

pub mod copy;
pub mod csv;
pub mod csv_rows;
pub mod csv_time;
pub mod pg_error;
pub mod pg_openssl;
pub mod pg_tls;
pub mod postgres;
pub mod table;

use datafusion::arrow::datatypes::{DataType, Schema, TimeUnit};

/// A PostgreSQL column type the sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgType {
    Text,
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Timestamptz,
    Timestamp,
    Date,
}

impl PgType {
    /// The type as PostgreSQL's `format_type` spells it (used in DDL and to compare
    /// with an existing table).
    pub fn sql(self) -> &'static str {
        match self {
            PgType::Text => "text",
            PgType::Bool => "boolean",
            PgType::Int2 => "smallint",
            PgType::Int4 => "integer",
            PgType::Int8 => "bigint",
            PgType::Float4 => "real",
            PgType::Float8 => "double precision",
            PgType::Timestamptz => "timestamp with time zone",
            PgType::Timestamp => "timestamp without time zone",
            PgType::Date => "date",
        }
    }

    /// The Arrow type a column is cast to before encoding.
    pub fn canonical(self) -> DataType {
        match self {
            PgType::Text => DataType::Utf8,
            PgType::Bool => DataType::Boolean,
            PgType::Int2 => DataType::Int16,
            PgType::Int4 => DataType::Int32,
            PgType::Int8 => DataType::Int64,
            PgType::Float4 => DataType::Float32,
            PgType::Float8 => DataType::Float64,
            PgType::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            PgType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            PgType::Date => DataType::Date32,
        }
    }

    /// The PostgreSQL type for an Arrow type, or why there is none.
    pub fn from_arrow(t: &DataType) -> Result<Self, String> {
        Ok(match t {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
                PgType::Text
            }
            DataType::Boolean => PgType::Bool,
            DataType::Int8 | DataType::Int16 | DataType::UInt8 => PgType::Int2,
            DataType::Int32 | DataType::UInt16 => PgType::Int4,
            DataType::Int64 | DataType::UInt32 => PgType::Int8,
            DataType::Float16 | DataType::Float32 => PgType::Float4,
            DataType::Float64 => PgType::Float8,
            DataType::Timestamp(_, Some(_)) => PgType::Timestamptz,
            DataType::Timestamp(_, None) => PgType::Timestamp,
            DataType::Date32 | DataType::Date64 => PgType::Date,
            other => {
                return Err(format!(
                    "{other} has no column type here; CAST it in the query \
                     (to VARCHAR, BIGINT, DOUBLE or TIMESTAMP)"
                ));
            }
        })
    }
}

/// One output column as the sinks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub pg: PgType,
}

/// Maps the transform's output schema to sink columns, refusing what PostgreSQL or
/// CSV could not hold faithfully.
pub fn columns(schema: &Schema) -> Result<Vec<Column>, String> {
    let mut seen = std::collections::HashSet::new();
    schema
        .fields()
        .iter()
        .map(|f| {
            if f.name().len() > 63 {
                return Err(format!(
                    "output column {:?} is longer than PostgreSQL's 63-byte limit: alias it",
                    f.name()
                ));
            }
            if !seen.insert(f.name().as_str()) {
                return Err(format!(
                    "output column {:?} appears twice: alias it",
                    f.name()
                ));
            }
            let pg = PgType::from_arrow(f.data_type())
                .map_err(|e| format!("output column {:?}: {e}", f.name()))?;
            Ok(Column {
                name: f.name().clone(),
                pg,
            })
        })
        .collect()
}

/// Quotes an identifier for PostgreSQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Checks a table name from the configuration (`name` or `schema.name`) and returns
/// it quoted. Names are limited to letters, digits, `_` and `$`, so that a flag value
/// can never carry SQL, and a typo'd name fails loudly instead of creating a table
/// nobody can find.
pub fn table_ident(name: &str) -> Result<String, String> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 || parts.iter().any(|p| !valid_ident(p)) {
        return Err(format!(
            "invalid table name {name:?}: use letters, digits, _ and $ (optionally schema.table), \
             starting with a letter or _, at most 63 bytes per part"
        ));
    }
    Ok(parts
        .iter()
        .map(|p| quote_ident(p))
        .collect::<Vec<_>>()
        .join("."))
}

/// Checks a column name from the configuration (such as `--key-column`).
pub fn column_ident(name: &str) -> Result<String, String> {
    if valid_ident(name) {
        Ok(quote_ident(name))
    } else {
        Err(format!(
            "invalid column name {name:?}: use letters, digits, _ and $, starting with a letter or _"
        ))
    }
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::Field;

    use super::*;

    #[test]
    fn identifiers_from_flags_cannot_carry_sql() {
        assert_eq!(table_ident("users").unwrap(), "\"users\"");
        assert_eq!(table_ident("app.Users").unwrap(), "\"app\".\"Users\"");
        for bad in [
            "",
            "users; DROP TABLE x",
            "a\"b",
            "1abc",
            "a.b.c",
            "na me",
            "x--",
        ] {
            assert!(table_ident(bad).is_err(), "{bad:?}");
        }
        assert!(column_ident("id").is_ok());
        assert!(column_ident("id\"").is_err());
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn types_map_or_explain() {
        let schema = Schema::new(vec![
            Field::new("a", DataType::Utf8View, true),
            Field::new(
                "b",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into())),
                true,
            ),
            Field::new("c", DataType::Int64, true),
        ]);
        let cols = columns(&schema).unwrap();
        assert_eq!(
            cols.iter().map(|c| c.pg).collect::<Vec<_>>(),
            [PgType::Text, PgType::Timestamptz, PgType::Int8]
        );
        let bad = Schema::new(vec![Field::new("k", DataType::Binary, true)]);
        let err = columns(&bad).unwrap_err();
        assert!(err.contains("\"k\"") && err.contains("CAST"), "{err}");
        let dup = Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new("a", DataType::Utf8, true),
        ]);
        assert!(columns(&dup).unwrap_err().contains("twice"));
    }
}
