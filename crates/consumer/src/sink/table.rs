//! One output's PostgreSQL table and how a batch is written into it: the write
//! mode's statement, the table's DDL and the check of an existing table.
//!
//! Every mode stages the batch's rows with binary COPY into a temporary table of
//! the session (one per output), then runs one statement over a range of staged
//! rows (`__ord` in `$1..$2`), so that `postgres::isolate` can retry it on halves
//! when PostgreSQL refuses a row:
//! - [`Mode::Upsert`]: the last row per key of the batch replaces the stored row of
//!   its key, under the [`Guard`].
//! - [`Mode::Append`]: every row is inserted.
//! - [`Mode::Merge`]: the batch's rows are grouped by key and each value column
//!   combined ([`Combine`]) within the batch, then with the stored row, in the
//!   `ON CONFLICT ... DO UPDATE` of the same statement. Exactly once because it runs
//!   in the transaction that moves the offsets: a batch is merged once or not at all.

use tokio_postgres::GenericClient;

use super::postgres::{Guard, PgError, unquote};
use super::{Column, quote_ident};
use crate::dead_letter::RANK_COLUMNS;

/// How a new partial value combines with the stored one in a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Combine {
    /// Added up (nulls ignored).
    Sum,
    /// A count: partial counts are added up, like `Sum`.
    Count,
    /// The smaller (nulls ignored).
    Min,
    /// The larger (nulls ignored).
    Max,
    /// The newest: the batch's last row of the key, then replacing the stored one.
    Last,
}

impl Combine {
    pub const ALL: [Combine; 5] = [
        Combine::Sum,
        Combine::Count,
        Combine::Min,
        Combine::Max,
        Combine::Last,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Combine::Sum => "sum",
            Combine::Count => "count",
            Combine::Min => "min",
            Combine::Max => "max",
            Combine::Last => "last",
        }
    }

    /// The aggregate over the batch's staged rows of one key.
    fn within_batch(self, c: &str) -> String {
        match self {
            Combine::Sum | Combine::Count => format!("sum({c})"),
            Combine::Min => format!("min({c})"),
            Combine::Max => format!("max({c})"),
            Combine::Last => format!("(array_agg({c} ORDER BY __ord DESC))[1]"),
        }
    }

    /// The stored value (`cur`) combined with the batch's (`EXCLUDED`).
    fn with_stored(self, c: &str) -> String {
        match self {
            Combine::Sum | Combine::Count => {
                format!("COALESCE(cur.{c} + EXCLUDED.{c}, cur.{c}, EXCLUDED.{c})")
            }
            Combine::Min => format!("LEAST(cur.{c}, EXCLUDED.{c})"),
            Combine::Max => format!("GREATEST(cur.{c}, EXCLUDED.{c})"),
            Combine::Last => format!("EXCLUDED.{c}"),
        }
    }

    /// Whether a column of this type can be combined this way.
    pub fn accepts(self, pg: super::PgType) -> bool {
        use super::PgType::*;
        match self {
            Combine::Sum | Combine::Count => {
                matches!(pg, Int2 | Int4 | Int8 | Float4 | Float8)
            }
            Combine::Min | Combine::Max => pg != Bool,
            Combine::Last => true,
        }
    }
}

/// How rows are written into the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// By key, the latest row wins under the guard.
    Upsert(Guard),
    /// Every row inserted.
    Append,
    /// By key, each value column (quoted, in table order) combined with the stored one.
    Merge(Vec<(String, Combine)>),
}

impl Mode {
    /// The name used in the pipeline file and in messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Upsert(_) => "upsert",
            Mode::Append => "append",
            Mode::Merge(_) => "merge",
        }
    }
}

/// One output's table, with identifiers checked and quoted.
#[derive(Debug, Clone)]
pub struct Table {
    /// The output's name (metrics label, messages).
    pub output: String,
    /// The table, quoted.
    pub name: String,
    /// The key columns, quoted (empty for `append`).
    pub key: Vec<String>,
    /// The table's columns: the output's, and the guard's ([`Guard::columns`]).
    pub columns: Vec<Column>,
    pub mode: Mode,
    /// This output's staging table in the session (`pg_temp.pipeline_stage_N`).
    pub stage: String,
}

impl Table {
    /// The table of output number `index` (its staging table is named after it).
    pub fn new(
        output: &str,
        name: String,
        key: Vec<String>,
        output_columns: &[Column],
        mode: Mode,
        index: usize,
    ) -> Self {
        let columns = match &mode {
            Mode::Upsert(guard) => guard.columns(output_columns),
            _ => output_columns.to_vec(),
        };
        Self {
            output: output.to_string(),
            name,
            key,
            columns,
            mode,
            stage: format!("pg_temp.pipeline_stage_{index}"),
        }
    }

    /// The table's column names, quoted.
    pub fn quoted_columns(&self) -> Vec<String> {
        self.columns.iter().map(|c| quote_ident(&c.name)).collect()
    }

    /// The binary COPY into this output's staging table (the columns, then `__ord`).
    pub fn copy_sql(&self) -> String {
        format!(
            "COPY {} ({}, __ord) FROM STDIN (FORMAT binary)",
            self.stage,
            self.quoted_columns().join(", ")
        )
    }

    /// The table's columns as in CREATE TABLE: quoted name and type.
    fn column_definitions(&self) -> Vec<String> {
        self.columns
            .iter()
            .map(|c| format!("{} {}", quote_ident(&c.name), c.pg.sql()))
            .collect()
    }

    /// The table's CREATE TABLE.
    pub fn create_sql(&self) -> String {
        let cols = self.column_definitions().join(", ");
        if self.key.is_empty() {
            format!("CREATE TABLE {} ({cols})", self.name)
        } else {
            format!(
                "CREATE TABLE {} ({cols}, PRIMARY KEY ({}))",
                self.name,
                self.key.join(", ")
            )
        }
    }

    /// The per-session staging table; its rows vanish at each commit.
    pub fn stage_ddl(&self) -> String {
        let name = self.stage.trim_start_matches("pg_temp.");
        format!(
            "DROP TABLE IF EXISTS {stage};
             CREATE TEMP TABLE {name} ({}, __ord bigint NOT NULL) ON COMMIT DELETE ROWS",
            self.column_definitions().join(", "),
            stage = self.stage
        )
    }

    /// The statement writing staged rows `$1..$2` into the table, by the mode.
    pub fn write_sql(&self) -> String {
        match &self.mode {
            Mode::Upsert(guard) => self.upsert_sql(guard),
            Mode::Append => {
                let list = self.quoted_columns().join(", ");
                format!(
                    "INSERT INTO {table} ({list})
                     SELECT {list} FROM {stage} WHERE __ord >= $1 AND __ord < $2 ORDER BY __ord",
                    table = self.name,
                    stage = self.stage
                )
            }
            Mode::Merge(values) => self.merge_sql(values),
        }
    }

    /// Upsert: the last row per key of the batch winning, and a stored row replaced
    /// only when the [`Guard`] allows.
    fn upsert_sql(&self, guard: &Guard) -> String {
        let cols = self.quoted_columns();
        let list = cols.join(", ");
        let key = self.key.join(", ");
        let updates: Vec<String> = cols
            .iter()
            .filter(|c| !self.key.contains(c))
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let table = &self.name;
        let (order, allowed) = match guard {
            Guard::Kafka => {
                let (p, o) = (quote_ident(RANK_COLUMNS[0]), quote_ident(RANK_COLUMNS[1]));
                let allowed = format!(
                    "{table}.{p} IS DISTINCT FROM EXCLUDED.{p} OR {table}.{o} IS NULL \
                     OR EXCLUDED.{o} IS NULL OR {table}.{o} <= EXCLUDED.{o}"
                );
                (String::new(), allowed)
            }
            Guard::Column(c) => (
                format!("{c} DESC NULLS LAST, "),
                format!("{table}.{c} IS NULL OR EXCLUDED.{c} >= {table}.{c}"),
            ),
        };
        let action = if updates.is_empty() {
            "NOTHING".to_string()
        } else {
            format!("UPDATE SET {} WHERE {allowed}", updates.join(", "))
        };
        format!(
            "INSERT INTO {table} ({list})
             SELECT DISTINCT ON ({key}) {list} FROM {stage}
             WHERE __ord >= $1 AND __ord < $2
             ORDER BY {key}, {order}__ord DESC
             ON CONFLICT ({key}) DO {action}",
            stage = self.stage
        )
    }

    /// Merge: the batch's partial per key, combined with the stored row.
    fn merge_sql(&self, values: &[(String, Combine)]) -> String {
        let key = self.key.join(", ");
        let list: Vec<&str> = self
            .key
            .iter()
            .chain(values.iter().map(|(c, _)| c))
            .map(String::as_str)
            .collect();
        let partials: Vec<String> = values.iter().map(|(c, f)| f.within_batch(c)).collect();
        let updates: Vec<String> = values
            .iter()
            .map(|(c, f)| format!("{c} = {}", f.with_stored(c)))
            .collect();
        let action = if updates.is_empty() {
            "NOTHING".to_string()
        } else {
            format!("UPDATE SET {}", updates.join(", "))
        };
        let select: Vec<&str> = self
            .key
            .iter()
            .map(String::as_str)
            .chain(partials.iter().map(String::as_str))
            .collect();
        format!(
            "INSERT INTO {table} AS cur ({list})
             SELECT {select} FROM {stage}
             WHERE __ord >= $1 AND __ord < $2
             GROUP BY {key}
             ON CONFLICT ({key}) DO {action}",
            table = self.name,
            list = list.join(", "),
            select = select.join(", "),
            stage = self.stage
        )
    }

    /// Upsert only: the staged rows that are not in the table as staged (kept out
    /// by the guard, or superseded by a later row of the same key in the batch).
    pub fn not_written_sql(&self) -> String {
        let cols = self.quoted_columns();
        let row = |alias: &str| {
            let qualified: Vec<String> = cols.iter().map(|c| format!("{alias}.{c}")).collect();
            format!("ROW({})", qualified.join(", "))
        };
        let on: Vec<String> = self.key.iter().map(|k| format!("t.{k} = s.{k}")).collect();
        format!(
            "SELECT s.__ord FROM {stage} s
             LEFT JOIN {table} t ON {on}
             WHERE t.{first} IS NULL OR {t_row} IS DISTINCT FROM {s_row}",
            stage = self.stage,
            table = self.name,
            on = on.join(" AND "),
            first = self.key[0],
            t_row = row("t"),
            s_row = row("s"),
        )
    }

    /// What the table needs: nothing, a CREATE TABLE, or ALTERs adding new
    /// columns. Refuses type changes and, for the modes with a key, a table without
    /// a unique index on exactly the key. Runs nothing, so `consumer validate` can
    /// print it.
    pub async fn plan(&self, client: &impl GenericClient) -> Result<Vec<String>, PgError> {
        let schema_error = |reason: String| PgError::Schema {
            table: self.name.clone(),
            reason,
        };
        let existing = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
                 FROM pg_attribute a
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attnum",
                &[&self.name],
            )
            .await?;
        if existing.is_empty() {
            return Ok(vec![self.create_sql()]);
        }
        let mut plan = Vec::new();
        for c in &self.columns {
            match existing.iter().find(|r| r.get::<_, String>(0) == c.name) {
                Some(row) => {
                    let have: String = row.get(1);
                    if have != c.pg.sql() {
                        return Err(schema_error(format!(
                            "column {:?} is {have} but the transform now produces {}; \
                             migrate the table or CAST in the query",
                            c.name,
                            c.pg.sql()
                        )));
                    }
                }
                None => plan.push(format!(
                    "ALTER TABLE {} ADD COLUMN {} {}",
                    self.name,
                    quote_ident(&c.name),
                    c.pg.sql()
                )),
            }
        }
        if !self.key.is_empty() && !self.has_key_index(client).await? {
            return Err(schema_error(format!(
                "no primary key or unique index on ({}) exactly, which the {} needs",
                self.key.join(", "),
                self.mode.as_str()
            )));
        }
        Ok(plan)
    }

    /// Whether a unique index on exactly the key columns exists, one that
    /// `ON CONFLICT (key)` can use.
    async fn has_key_index(&self, client: &impl GenericClient) -> Result<bool, PgError> {
        let key: Vec<String> = self.key.iter().map(|k| unquote(k)).collect();
        let found = client
            .query_opt(
                r#"SELECT 1 FROM pg_index i
                 WHERE i.indrelid = to_regclass($1) AND i.indisunique
                   AND i.indnkeyatts = cardinality($2::text[])
                   -- ON CONFLICT (key) can only use a plain, valid, immediate index;
                   -- both sides sorted in one collation ("C", as `name` sorts).
                   AND i.indpred IS NULL AND i.indexprs IS NULL
                   AND i.indimmediate AND i.indisvalid
                   AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text COLLATE "C")
                        FROM pg_attribute a
                        WHERE a.attrelid = i.indrelid
                          AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1]))
                       = (SELECT array_agg(k ORDER BY k COLLATE "C") FROM unnest($2::text[]) k)"#,
                &[&self.name, &key],
            )
            .await?;
        Ok(found.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::PgType;

    fn column(name: &str, pg: PgType) -> Column {
        Column {
            name: name.into(),
            pg,
        }
    }

    #[test]
    fn merge_combines_within_the_batch_and_with_the_stored_row() {
        let cols = [
            column("country", PgType::Text),
            column("minute", PgType::Timestamptz),
            column("signups", PgType::Int8),
            column("last_name", PgType::Text),
        ];
        let mode = Mode::Merge(vec![
            ("\"signups\"".into(), Combine::Count),
            ("\"last_name\"".into(), Combine::Last),
        ]);
        let key = vec!["\"country\"".into(), "\"minute\"".into()];
        let t = Table::new("s", "\"s\"".into(), key, &cols, mode, 1);
        let sql = t.write_sql();
        assert!(sql.contains("FROM pg_temp.pipeline_stage_1"), "{sql}");
        assert!(sql.contains("GROUP BY \"country\", \"minute\""), "{sql}");
        assert!(sql.contains("sum(\"signups\")"), "{sql}");
        assert!(
            sql.contains("(array_agg(\"last_name\" ORDER BY __ord DESC))[1]"),
            "{sql}"
        );
        assert!(
            sql.contains("\"signups\" = COALESCE(cur.\"signups\" + EXCLUDED.\"signups\""),
            "{sql}"
        );
        assert!(
            sql.contains("\"last_name\" = EXCLUDED.\"last_name\""),
            "{sql}"
        );
        assert!(
            t.create_sql()
                .ends_with("PRIMARY KEY (\"country\", \"minute\"))")
        );
    }

    #[test]
    fn append_inserts_every_row_in_order_into_a_table_without_key() {
        let cols = [column("id", PgType::Text)];
        let t = Table::new("log", "\"log\"".into(), vec![], &cols, Mode::Append, 0);
        let sql = t.write_sql();
        assert!(sql.starts_with("INSERT INTO \"log\" (\"id\")"), "{sql}");
        assert!(
            sql.contains("ORDER BY __ord") && !sql.contains("ON CONFLICT"),
            "{sql}"
        );
        assert_eq!(t.create_sql(), "CREATE TABLE \"log\" (\"id\" text)");
    }

    #[test]
    fn upsert_keeps_the_guard_and_takes_several_key_columns() {
        let cols = [
            column("a", PgType::Text),
            column("b", PgType::Text),
            column("v", PgType::Int8),
        ];
        let key = vec!["\"a\"".into(), "\"b\"".into()];
        let t = Table::new(
            "u",
            "\"u\"".into(),
            key,
            &cols,
            Mode::Upsert(Guard::Kafka),
            0,
        );
        let sql = t.write_sql();
        assert!(sql.contains("DISTINCT ON (\"a\", \"b\")"), "{sql}");
        assert!(
            sql.contains("ON CONFLICT (\"a\", \"b\") DO UPDATE SET \"v\" = EXCLUDED.\"v\""),
            "{sql}"
        );
        assert!(sql.contains("_kafka_offset"), "{sql}");
        assert!(
            !sql.contains("\"a\" = EXCLUDED"),
            "keys are not updated: {sql}"
        );
        assert!(
            t.not_written_sql()
                .contains("t.\"a\" = s.\"a\" AND t.\"b\" = s.\"b\"")
        );
    }

    #[test]
    fn combine_rules_refuse_types_they_cannot_add_up() {
        assert!(Combine::Sum.accepts(PgType::Float8));
        assert!(!Combine::Sum.accepts(PgType::Text));
        assert!(!Combine::Count.accepts(PgType::Timestamptz));
        assert!(Combine::Max.accepts(PgType::Timestamptz));
        assert!(!Combine::Min.accepts(PgType::Bool));
        assert!(Combine::Last.accepts(PgType::Bool));
    }
}
