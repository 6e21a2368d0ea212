//! The pipeline file (`--pipeline pipeline.toml`): several outputs of one stream.
//!
//! ```toml
//! [[output]]
//! name = "users"                  # the metrics label; the table's name by default
//! mode = "upsert"                 # upsert (default) | append | merge
//! key = ["id"]
//! part_files = "."                # under --output-dir; no part files when left out
//!
//! [[output]]
//! name = "signups_per_minute_by_country"
//! sql_file = "signups.sql"        # or sql = "..."; neither: the default query
//! mode = "merge"
//! key = ["country", "minute"]
//! merge = { signups = "count" }   # each value column: sum | count | min | max | last
//! ```
//!
//! Unknown keys and wrong types are refused by the parser with the line and
//! column; what only the query can tell (a key it does not produce) is refused by
//! `outputs::Spec::check` with the line of the key concerned.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{Place, Spec, WriteMode};
use crate::Error;
use crate::sink::postgres::Combine;

/// Every key of an `[[output]]` table, with what it means (the README's table).
pub const KEYS: [(&str, &str); 9] = [
    (
        "name",
        "The output's name: the `output` label of its metrics, and its table's name unless `table` is set. Letters, digits, `_`, `-`, `.`; unique.",
    ),
    ("sql", "The query over the batch table `events`, inline."),
    (
        "sql_file",
        "The query from a file, relative to the pipeline file. Neither `sql` nor `sql_file`: the default transform.",
    ),
    (
        "table",
        "The PostgreSQL table (`name` or `schema.name`); created if missing, new columns added.",
    ),
    (
        "mode",
        "`upsert` (default): by key, the latest row wins. `append`: every row inserted. `merge`: by key, each value column combined with the stored one.",
    ),
    (
        "key",
        "The key columns (upsert and merge; an array). The table's primary key.",
    ),
    (
        "order_by",
        "Upsert only: the output column that decides which row is newer (as `--order-by`); by default the Kafka position.",
    ),
    (
        "merge",
        "Merge only: each value column's rule, `sum`, `count` (partial counts added up), `min`, `max` or `last`.",
    ),
    (
        "part_files",
        "A directory under `--output-dir` (`.` for itself) for the output's CSV part files; none when left out.",
    ),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    output: Vec<Spanned<RawOutput>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    name: Spanned<String>,
    sql: Option<Spanned<String>>,
    sql_file: Option<Spanned<PathBuf>>,
    table: Option<Spanned<String>>,
    mode: Option<Spanned<WriteMode>>,
    key: Option<Spanned<Vec<String>>>,
    order_by: Option<Spanned<String>>,
    merge: Option<Spanned<BTreeMap<String, Combine>>>,
    part_files: Option<Spanned<PathBuf>>,
}

/// Reads the pipeline file at `path`; `part_files` resolve under `output_dir`.
pub fn load(path: &Path, output_dir: &Path) -> Result<Vec<Spec>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read --pipeline {}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, &path.display().to_string(), base, output_dir).map_err(Error::Config)
}

/// Parses a pipeline file's text; `shown` names it in messages, `base` is where
/// `sql_file` paths start.
pub fn parse(text: &str, shown: &str, base: &Path, output_dir: &Path) -> Result<Vec<Spec>, String> {
    let lines = Lines::new(text);
    let file: File = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => {
            let (line, column) = lines.at(span.start);
            format!("{shown}:{line}:{column}: {}", e.message().trim_end())
        }
        None => format!("{shown}: {}", e.message().trim_end()),
    })?;
    if file.output.is_empty() {
        return Err(format!("{shown}: no [[output]] defined"));
    }
    file.output
        .into_iter()
        .map(|raw| spec(raw, shown, &lines, base, output_dir))
        .collect()
}

/// The line of each key of an output, for messages about it.
fn key_lines(raw: &RawOutput, lines: &Lines) -> HashMap<&'static str, usize> {
    let mut at = HashMap::new();
    let mut mark = |key: &'static str, span: Option<Range<usize>>| {
        if let Some(span) = span {
            at.insert(key, lines.at(span.start).0);
        }
    };
    mark("name", Some(raw.name.span()));
    mark("sql", raw.sql.as_ref().map(Spanned::span));
    mark("sql", raw.sql_file.as_ref().map(Spanned::span));
    mark("table", raw.table.as_ref().map(Spanned::span));
    mark("key", raw.key.as_ref().map(Spanned::span));
    mark("order_by", raw.order_by.as_ref().map(Spanned::span));
    mark("merge", raw.merge.as_ref().map(Spanned::span));
    mark("part_files", raw.part_files.as_ref().map(Spanned::span));
    // A missing key or merge table is reported at the mode that needs it.
    let mode_span = raw.mode.as_ref().map(Spanned::span);
    if raw.key.is_none() {
        mark("key", mode_span.clone());
    }
    if raw.merge.is_none() {
        mark("merge", mode_span);
    }
    at
}

fn spec(
    raw: Spanned<RawOutput>,
    shown: &str,
    lines: &Lines,
    base: &Path,
    output_dir: &Path,
) -> Result<Spec, String> {
    let line = lines.at(raw.span().start).0;
    let raw = raw.into_inner();
    let at = key_lines(&raw, lines);
    let place = Place::File {
        path: shown.to_string(),
        line,
        lines: at,
    };
    let name = raw.name.into_inner();
    let here = |field| place.at(&name, field);
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "{}invalid name: use letters, digits, _, - and . (at most 63)",
            here("name")
        ));
    }
    let sql = query(raw.sql, raw.sql_file, base).map_err(|e| format!("{}{e}", here("sql")))?;
    let mode = raw.mode.map(Spanned::into_inner).unwrap_or_default();
    if mode != WriteMode::Upsert && raw.order_by.is_some() {
        return Err(format!("{}order_by is for upsert only", here("order_by")));
    }
    if mode != WriteMode::Merge && raw.merge.is_some() {
        return Err(format!(
            "{}merge rules are for mode = \"merge\" only",
            here("merge")
        ));
    }
    let part_files = match raw.part_files.map(Spanned::into_inner) {
        Some(dir) if !plain_dir(&dir) => {
            return Err(format!(
                "{}part_files is a directory under --output-dir: no absolute path, no .., \
                 no hidden (.name) directory",
                here("part_files")
            ));
        }
        Some(dir) => Some(super::normal(&output_dir.join(dir))),
        None => None,
    };
    Ok(Spec {
        table: raw
            .table
            .map(Spanned::into_inner)
            .unwrap_or_else(|| name.clone()),
        name,
        sql,
        mode,
        key: raw.key.map(Spanned::into_inner).unwrap_or_default(),
        order_by: raw.order_by.map(Spanned::into_inner),
        merge: raw
            .merge
            .map(Spanned::into_inner)
            .unwrap_or_default()
            .into_iter()
            .collect(),
        part_files,
        place,
    })
}

/// A directory under --output-dir that is neither absolute, nor above it, nor
/// hidden: `.staging` and its like belong to the part-file protocol.
fn plain_dir(dir: &Path) -> bool {
    use std::path::Component;
    dir.components().all(|c| match c {
        Component::CurDir => true,
        Component::Normal(name) => !name.to_string_lossy().starts_with('.'),
        _ => false,
    })
}

/// The output's query: inline, from a file (relative to `base`), or the default.
fn query(
    sql: Option<Spanned<String>>,
    file: Option<Spanned<PathBuf>>,
    base: &Path,
) -> Result<String, String> {
    match (sql, file) {
        (Some(_), Some(_)) => Err("set sql or sql_file, not both".into()),
        (Some(sql), None) => Ok(sql.into_inner()),
        (None, Some(file)) => {
            let path = base.join(file.into_inner());
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read sql_file {}: {e}", path.display()))
        }
        (None, None) => Ok(crate::transform::DEFAULT_SQL.to_string()),
    }
}

/// Byte offsets to 1-based line and column.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self(starts)
    }

    fn at(&self, offset: usize) -> (usize, usize) {
        let line = self.0.partition_point(|start| *start <= offset);
        (line, offset - self.0[line - 1] + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<Vec<Spec>, String> {
        parse(text, "p.toml", Path::new("."), Path::new("out"))
    }

    const TWO: &str = r#"
[[output]]
name = "users"
key = ["id"]
part_files = "."

[[output]]
name = "signups"
sql = "SELECT gender, count(*) AS n FROM events GROUP BY gender"
mode = "merge"
key = ["gender"]
merge = { n = "count" }
part_files = "signups"
"#;

    #[test]
    fn a_file_defines_outputs_with_their_modes_and_directories() {
        let specs = parsed(TWO).unwrap();
        assert_eq!(specs.len(), 2);
        let (users, signups) = (&specs[0], &specs[1]);
        assert_eq!(
            (users.name.as_str(), users.table.as_str(), users.mode),
            ("users", "users", WriteMode::Upsert)
        );
        assert_eq!(users.sql, crate::transform::DEFAULT_SQL);
        assert_eq!(users.part_files.as_deref(), Some(Path::new("out")));
        assert_eq!(signups.mode, WriteMode::Merge);
        assert_eq!(signups.merge, [("n".to_string(), Combine::Count)]);
        assert_eq!(
            signups.part_files.as_deref(),
            Some(Path::new("out/signups"))
        );
        let Place::File { line, lines, .. } = &signups.place else {
            panic!()
        };
        assert_eq!((*line, lines["key"], lines["merge"]), (7, 11, 12));
    }

    #[test]
    fn mistakes_are_refused_with_their_line() {
        let e = parsed("[[output]]\nname = \"a\"\ntabel = \"x\"\n").unwrap_err();
        assert!(e.starts_with("p.toml:3:1: unknown field `tabel`"), "{e}");
        let e = parsed("[[output]]\nname = \"a\"\nmode = \"upsertt\"\n").unwrap_err();
        assert!(
            e.starts_with("p.toml:3:8: unknown variant `upsertt`"),
            "{e}"
        );
        let e = parsed("[[output]]\nname = \"a\"\nmode = \"merge\"\nmerge = { n = \"avg\" }\n")
            .unwrap_err();
        assert!(
            e.starts_with("p.toml:4:") && e.contains("unknown variant `avg`"),
            "{e}"
        );
        let e =
            parsed("[[output]]\nname = \"a\"\nmode = \"append\"\norder_by = \"x\"\n").unwrap_err();
        assert!(
            e.starts_with("p.toml:4: output \"a\": order_by is for upsert only"),
            "{e}"
        );
        let e = parsed("[[output]]\nname = \"a b\"\n").unwrap_err();
        assert!(
            e.starts_with("p.toml:2: output \"a b\": invalid name"),
            "{e}"
        );
        for dir in ["../x", "/abs", ".staging/x", "a/.hidden"] {
            let text = format!("[[output]]\nname = \"a\"\npart_files = {dir:?}\n");
            let e = parsed(&text).unwrap_err();
            assert!(e.contains("no absolute path, no .."), "{dir}: {e}");
        }
        assert!(parsed("[[output]]\nname = \"a\"\npart_files = \"./x/y\"\n").is_ok());
        let e = parsed("[[output]]\nname = \"a\"\nsql_file = \"missing.sql\"\n").unwrap_err();
        assert!(
            e.starts_with("p.toml:3: output \"a\": cannot read sql_file ./missing.sql"),
            "{e}"
        );
        assert_eq!(
            parsed("").unwrap_err(),
            "p.toml:1:1: missing field `output`"
        );
    }

    #[test]
    fn every_key_is_documented_and_every_documented_key_parses() {
        let keys: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
        for key in &keys {
            let text = format!("[[output]]\nname = \"a\"\n{key} = 1\n");
            let e = parsed(&text).err().unwrap_or_default();
            assert!(!e.contains("unknown field"), "{key}: {e}");
        }
        let e = parsed("[[output]]\nname = \"a\"\nnope = 1\n").unwrap_err();
        for key in keys {
            assert!(e.contains(&format!("`{key}`")), "{key} missing from {e}");
        }
    }
}
