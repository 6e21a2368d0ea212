//! The pipeline's outputs: each a SQL query over the batch table `events` and a
//! target, a PostgreSQL table written in one of three modes (upsert, append,
//! merge) and optionally CSV part files.
//!
//! One output comes from the flags (`--transform-sql`, `--table`, `--key-column`,
//! `--order-by`, `--output-dir`: today's command line, unchanged); several from a
//! pipeline file (`--pipeline`, read by [`file`]). Everything here is checked
//! before any service is contacted, so a query that does not plan, a key the query
//! does not produce or a value column without a combine rule stops the consumer
//! with where it was defined (the file's line, or the flag).

pub mod file;

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use crate::Error;
use crate::sink::postgres::{Combine, Guard, Mode, Table};
use crate::sink::{self, Column, column_ident, table_ident};
use crate::transform::Transform;

/// How an output writes its table (the pipeline file's `mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// By key, the latest row wins (under the ordering guard).
    #[default]
    Upsert,
    /// Every row inserted.
    Append,
    /// By key, each value column combined with the stored one.
    Merge,
}

/// Where an output was defined, for messages.
#[derive(Debug, Clone)]
pub enum Place {
    /// The flags: messages name the flag.
    Flags,
    /// A pipeline file: messages start with `path:line:`, the line of the key
    /// concerned (or of the output's table).
    File {
        path: String,
        line: usize,
        lines: HashMap<&'static str, usize>,
    },
}

impl Place {
    /// The start of a message about `field`.
    fn at(&self, name: &str, field: &'static str) -> String {
        match self {
            Place::Flags => String::new(),
            Place::File { path, line, lines } => {
                let line = lines.get(field).unwrap_or(line);
                format!("{path}:{line}: output {name:?}: ")
            }
        }
    }

    /// How `field` is spelled where it was defined: the file's key, or the flag.
    fn spelled(&self, field: &'static str) -> &'static str {
        match (self, field) {
            (Place::File { .. }, _) => field,
            (Place::Flags, "key") => "--key-column",
            (Place::Flags, "order_by") => "--order-by",
            (Place::Flags, "table") => "--table",
            (Place::Flags, "part_files") => "--output-dir",
            (Place::Flags, _) => "--transform-sql",
        }
    }
}

/// One output as defined, not checked yet.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub sql: String,
    pub table: String,
    pub mode: WriteMode,
    pub key: Vec<String>,
    pub order_by: Option<String>,
    /// Merge: each value column's combine rule.
    pub merge: Vec<(String, Combine)>,
    /// The directory of its part files, if it writes any.
    pub part_files: Option<PathBuf>,
    pub place: Place,
}

/// A checked output: its planned query, its table, where its part files go.
pub struct Output {
    pub name: String,
    pub transform: Transform,
    /// The query's output columns (the CSV header).
    pub columns: Vec<Column>,
    pub table: Table,
    pub part_files: Option<PathBuf>,
    /// Upsert: the key columns, by which a row is traced back to its input record
    /// (its rank for the guard, its record for a dead letter; see
    /// `dead_letter::Provenance`). Empty for the other modes: their rows are not
    /// one record's.
    pub provenance_key: Vec<String>,
}

impl Spec {
    /// Plans the query and checks the table's definition against its columns.
    /// `index` numbers the output's staging table.
    pub async fn check(&self, index: usize) -> Result<Output, Error> {
        let at = |field| self.place.at(&self.name, field);
        let config =
            |field: &'static str, reason: String| Error::Config(format!("{}{reason}", at(field)));
        let table = table_ident(&self.table).map_err(|e| config("table", e))?;
        let transform = match Transform::new(&self.sql).await {
            Ok(t) => t,
            Err(e) if matches!(self.place, Place::Flags) => return Err(e.into()),
            Err(e) => return Err(config("sql", format!("the query does not plan: {e}"))),
        };
        let columns = sink::columns(&transform.output_schema()).map_err(|e| config("sql", e))?;
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let listed = names.join(", ");
        let key = self.key_columns(&columns, &listed)?;
        let mode = match self.mode {
            WriteMode::Upsert => Mode::Upsert(self.guard(&columns, &listed)?),
            WriteMode::Append => Mode::Append,
            WriteMode::Merge => Mode::Merge(self.combine_rules(&columns)?),
        };
        let provenance_key = match self.mode {
            WriteMode::Upsert => self.key.clone(),
            _ => Vec::new(),
        };
        Ok(Output {
            name: self.name.clone(),
            table: Table::new(&self.name, table, key, &columns, mode, index),
            transform,
            columns,
            part_files: self.part_files.clone(),
            provenance_key,
        })
    }

    /// The key columns, quoted: each an output column, and none for `append`.
    fn key_columns(&self, columns: &[Column], listed: &str) -> Result<Vec<String>, Error> {
        let at = self.place.at(&self.name, "key");
        let spelled = self.place.spelled("key");
        if self.mode == WriteMode::Append {
            if !self.key.is_empty() {
                return Err(Error::Config(format!(
                    "{at}append writes every row: remove {spelled}"
                )));
            }
            return Ok(Vec::new());
        }
        if self.key.is_empty() {
            return Err(Error::Config(format!(
                "{at}{} needs {spelled}: the columns that identify a row",
                self.mode_name()
            )));
        }
        let mut seen = HashSet::new();
        self.key
            .iter()
            .map(|k| {
                let quoted = column_ident(k).map_err(|e| Error::Config(format!("{at}{e}")))?;
                if !columns.iter().any(|c| &c.name == k) {
                    return Err(Error::Config(format!(
                        "{at}the transform's output has no key column {k:?} (columns: {listed}); \
                         select it or set {spelled}"
                    )));
                }
                if !seen.insert(k) {
                    return Err(Error::Config(format!(
                        "{at}key column {k:?} is listed twice"
                    )));
                }
                Ok(quoted)
            })
            .collect()
    }

    /// Upsert's ordering guard: `order_by`, an output column other than a key, or
    /// the Kafka position of each row's record.
    fn guard(&self, columns: &[Column], listed: &str) -> Result<Guard, Error> {
        let Some(order_by) = &self.order_by else {
            return Ok(Guard::Kafka);
        };
        let at = self.place.at(&self.name, "order_by");
        let quoted = column_ident(order_by).map_err(|e| Error::Config(format!("{at}{e}")))?;
        if !columns.iter().any(|c| &c.name == order_by) || self.key.contains(order_by) {
            return Err(Error::Config(format!(
                "{at}{} {order_by:?} must be an output column other than the key \
                 (columns: {listed})",
                self.place.spelled("order_by")
            )));
        }
        Ok(Guard::Column(quoted))
    }

    /// Merge: every column that is not a key has exactly one rule that its type
    /// allows, in the table's column order.
    fn combine_rules(&self, columns: &[Column]) -> Result<Vec<(String, Combine)>, Error> {
        let at = self.place.at(&self.name, "merge");
        if let Some((c, _)) = self
            .merge
            .iter()
            .find(|(c, _)| !columns.iter().any(|o| &o.name == c))
        {
            return Err(Error::Config(format!(
                "{at}merge names {c:?}, which the query does not produce"
            )));
        }
        if let Some((c, _)) = self.merge.iter().find(|(c, _)| self.key.contains(c)) {
            return Err(Error::Config(format!(
                "{at}{c:?} is a key column: it identifies the row and is not combined"
            )));
        }
        let values = columns.iter().filter(|c| !self.key.contains(&c.name));
        let mut rules = Vec::new();
        for column in values {
            let Some((_, rule)) = self.merge.iter().find(|(c, _)| *c == column.name) else {
                return Err(Error::Config(format!(
                    "{at}value column {:?} has no combine rule: add `{} = \"sum\"` (or count, \
                     min, max, last) under merge",
                    column.name, column.name
                )));
            };
            if !rule.accepts(column.pg) {
                return Err(Error::Config(format!(
                    "{at}{:?} is {}, which {} cannot combine",
                    column.name,
                    column.pg.sql(),
                    rule.as_str()
                )));
            }
            rules.push((sink::quote_ident(&column.name), *rule));
        }
        Ok(rules)
    }

    fn mode_name(&self) -> &'static str {
        match self.mode {
            WriteMode::Upsert => "upsert",
            WriteMode::Append => "append",
            WriteMode::Merge => "merge",
        }
    }
}

/// Checks every output, and that no two share a name, a table or a directory of
/// part files (part files are named after the batch, so two outputs in one
/// directory would overwrite each other's).
pub async fn check_all(specs: &[Spec], dead_letter_table: &str) -> Result<Vec<Output>, Error> {
    let mut outputs = Vec::with_capacity(specs.len());
    let (mut names, mut tables, mut dirs) = (HashSet::new(), HashMap::new(), HashMap::new());
    for (i, spec) in specs.iter().enumerate() {
        let output = spec.check(i).await?;
        let at = |field| spec.place.at(&spec.name, field);
        if !names.insert(spec.name.clone()) {
            return Err(Error::Config(format!(
                "{}the name is used twice",
                at("name")
            )));
        }
        if output.table.name == dead_letter_table {
            return Err(Error::Config(format!(
                "{}table {} is the dead-letter table",
                at("table"),
                spec.table
            )));
        }
        if let Some(other) = tables.insert(output.table.name.clone(), spec.name.clone()) {
            return Err(Error::Config(format!(
                "{}table {} is output {other:?}'s too",
                at("table"),
                spec.table
            )));
        }
        if let Some(dir) = &output.part_files
            && let Some(other) = dirs.insert(normal(dir), spec.name.clone())
        {
            return Err(Error::Config(format!(
                "{}part files in {} are output {other:?}'s too",
                at("part_files"),
                dir.display()
            )));
        }
        outputs.push(output);
    }
    Ok(outputs)
}

/// A path with `.` and `name/..` taken out (`.` when nothing is left).
pub(crate) fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// The one output the flags define: today's command line.
pub fn from_flags(config: &crate::Config, sql: String) -> Spec {
    Spec {
        name: config.table.clone(),
        sql,
        table: config.table.clone(),
        mode: WriteMode::Upsert,
        key: vec![config.key_column.clone()],
        order_by: config.order_by.clone(),
        merge: Vec::new(),
        part_files: Some(config.output_dir.clone()),
        place: Place::Flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: WriteMode, sql: &str, key: &[&str], merge: &[(&str, Combine)]) -> Spec {
        Spec {
            name: "o".into(),
            sql: sql.into(),
            table: "o".into(),
            mode,
            key: key.iter().map(|k| k.to_string()).collect(),
            order_by: None,
            merge: merge.iter().map(|(c, r)| (c.to_string(), *r)).collect(),
            part_files: None,
            place: Place::File {
                path: "p.toml".into(),
                line: 3,
                lines: HashMap::from([("merge", 9), ("key", 7)]),
            },
        }
    }

    const COUNTS: &str =
        "SELECT gender, count(*) AS n, max(registered_date) AS latest FROM events GROUP BY gender";

    async fn refusal(s: Spec) -> String {
        match s.check(0).await {
            Ok(_) => panic!("accepted: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn a_merge_needs_a_rule_for_every_value_column_and_says_where() {
        let ok = spec(
            WriteMode::Merge,
            COUNTS,
            &["gender"],
            &[("n", Combine::Count), ("latest", Combine::Max)],
        );
        let out = ok.check(2).await.unwrap();
        assert_eq!(out.table.stage, "pg_temp.pipeline_stage_2");
        assert!(
            out.provenance_key.is_empty(),
            "an aggregate row is no record's"
        );
        let e = refusal(spec(
            WriteMode::Merge,
            COUNTS,
            &["gender"],
            &[("n", Combine::Count)],
        ))
        .await;
        assert!(
            e.starts_with("p.toml:9: output \"o\": value column \"latest\" has no combine rule"),
            "{e}"
        );
        let e = refusal(spec(
            WriteMode::Merge,
            COUNTS,
            &["gender"],
            &[("n", Combine::Sum), ("latest", Combine::Sum)],
        ))
        .await;
        assert!(
            e.contains("\"latest\" is text, which sum cannot combine"),
            "{e}"
        );
        let e = refusal(spec(
            WriteMode::Merge,
            COUNTS,
            &["gender"],
            &[
                ("n", Combine::Sum),
                ("latest", Combine::Max),
                ("gone", Combine::Max),
            ],
        ))
        .await;
        assert!(e.contains("merge names \"gone\""), "{e}");
        let e = refusal(spec(WriteMode::Merge, COUNTS, &[], &[])).await;
        assert!(
            e.starts_with("p.toml:7: output \"o\": merge needs key"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn keys_must_be_output_columns_and_append_has_none() {
        let e = refusal(spec(WriteMode::Upsert, COUNTS, &["country"], &[])).await;
        assert!(
            e.contains("no key column \"country\" (columns: gender, n, latest)"),
            "{e}"
        );
        let e = refusal(spec(WriteMode::Append, COUNTS, &["gender"], &[])).await;
        assert!(e.contains("append writes every row: remove key"), "{e}");
        let out = spec(WriteMode::Append, COUNTS, &[], &[])
            .check(0)
            .await
            .unwrap();
        assert!(out.table.key.is_empty() && out.table.columns.len() == 3);
        let out = spec(WriteMode::Upsert, COUNTS, &["gender"], &[])
            .check(0)
            .await
            .unwrap();
        assert_eq!(out.provenance_key, ["gender"]);
        assert_eq!(
            out.table.columns.len(),
            5,
            "upsert adds the Kafka rank columns"
        );
    }

    #[tokio::test]
    async fn a_query_that_does_not_plan_is_refused_at_its_line() {
        let e = refusal(spec(WriteMode::Append, "SELECT nope FROM events", &[], &[])).await;
        assert!(
            e.starts_with("p.toml:3: output \"o\": the query does not plan"),
            "{e}"
        );
    }

    #[test]
    fn directories_are_compared_and_opened_without_dots() {
        assert_eq!(normal(Path::new("./.")), Path::new("."));
        assert_eq!(normal(Path::new("out/./a/../b")), Path::new("out/b"));
    }

    #[tokio::test]
    async fn two_outputs_cannot_share_a_table_or_a_directory() {
        let mut a = spec(WriteMode::Append, COUNTS, &[], &[]);
        a.part_files = Some("out/./x".into());
        let mut b = a.clone();
        b.name = "b".into();
        b.table = "b".into();
        b.part_files = Some("out/y/../x".into());
        let e = check_all(&[a.clone(), b.clone()], "\"dl\"")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("are output \"o\"'s too"), "{e}");
        b.part_files = None;
        b.table = "o".into();
        let e = check_all(&[a.clone(), b.clone()], "\"dl\"")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("table o is output \"o\"'s too"), "{e}");
        b.table = "dl".into();
        let e = check_all(&[a.clone(), b], "\"dl\"")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is the dead-letter table"), "{e}");
        let e = check_all(&[a.clone(), a], "\"dl\"")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("the name is used twice"), "{e}");
    }
}
