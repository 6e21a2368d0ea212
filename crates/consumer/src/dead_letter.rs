//! Dead letters: every record the pipeline could not turn into a row, kept with its
//! Kafka coordinates, its raw bytes and the reason, so that none is ever dropped.
//!
//! They are built here, by one named constructor per stage that can refuse a
//! record, and stored here, in the dead-letter table the user names. The stage is
//! an enum, so the table's `stage` column and the metrics' `reason` label can only
//! take the values listed below.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, Int32Builder, Int64Array, Int64Builder, StringArray,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Int32Type, Int64Type, Schema, TimestampMillisecondType,
};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
// A hash map with DataFusion's fast hash, for keys taken from a batch's rows.
use datafusion::common::HashMap as FastMap;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::decode::{Origin, Reject};
use crate::sink::copy::{self, RowAt};
use crate::transform;

/// Header of a replayed dead letter: the original record's partition.
pub const ORIGIN_PARTITION_HEADER: &str = "users-pipeline-origin-partition";
/// Header of a replayed dead letter: the original record's offset.
pub const ORIGIN_OFFSET_HEADER: &str = "users-pipeline-origin-offset";

/// The rank a replayed record keeps: its original (partition, offset), from the
/// values of the two origin headers.
pub fn origin_rank(partition: Option<&[u8]>, offset: Option<&[u8]>) -> Option<(i32, i64)> {
    Some((parse_header(partition)?, parse_header(offset)?))
}

/// A message header's value, by name.
pub fn header<'a>(headers: &'a rdkafka::message::BorrowedHeaders, name: &str) -> Option<&'a [u8]> {
    use rdkafka::message::Headers;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value)
}

/// A header value holding a number as text.
pub fn parse_header<T: std::str::FromStr>(value: Option<&[u8]>) -> Option<T> {
    std::str::from_utf8(value?).ok()?.parse().ok()
}

/// Where in the pipeline a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The payload is not an event (not JSON, not an object, a tombstone, ...).
    Decode,
    /// The transform SQL failed on the row (a CAST meeting a bad value, say).
    Transform,
    /// PostgreSQL (or the COPY encoder, for values it cannot store) refused the row.
    Sink,
}

impl Stage {
    /// Every stage, for metrics registered before the first dead letter.
    pub const ALL: [Stage; 3] = [Stage::Decode, Stage::Transform, Stage::Sink];

    /// The value of the dead-letter table's `stage` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Transform => "transform",
            Stage::Sink => "sink",
        }
    }

    /// The `reason` label of the dead-letter counter: a bounded set of values (the
    /// full message is in the table).
    pub fn metric_reason(self) -> &'static str {
        match self {
            Stage::Decode => "malformed",
            Stage::Transform => "transform_failed",
            Stage::Sink => "rejected_by_postgres",
        }
    }
}

/// A record that could not become a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub reason: String,
    pub stage: Stage,
}

impl DeadLetter {
    /// A payload the decoder refused, with the message's coordinates and raw bytes.
    pub fn malformed(origin: &Origin<'_>, payload: Option<&[u8]>, reject: &Reject) -> Self {
        Self {
            topic: Some(origin.topic.to_string()),
            partition: Some(origin.partition),
            offset: Some(origin.offset),
            timestamp: origin.timestamp,
            key: origin.key.map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec),
            reason: reject.to_string(),
            stage: Stage::Decode,
        }
    }

    /// An input row (of the `events` table) the transform failed on, with its Kafka
    /// coordinates and its event fields as JSON.
    pub fn transform_failed(row: &RecordBatch, reason: &str) -> Self {
        Self::of_input_row(row, format!("transform failed: {reason}"), Stage::Transform)
    }

    /// One input row (of the `events` table) as a dead letter: its Kafka
    /// coordinates, and its event fields as the JSON payload (what the decoder
    /// read, so a replay decodes it the same way).
    fn of_input_row(row: &RecordBatch, reason: String, stage: Stage) -> Self {
        let topic = row
            .column_by_name("topic")
            .map(|a| a.as_string::<i32>().value(0).to_string());
        let partition = row
            .column_by_name("partition")
            .map(|a| a.as_primitive::<Int32Type>().value(0));
        let offset = row
            .column_by_name("offset")
            .map(|a| a.as_primitive::<Int64Type>().value(0));
        let timestamp = row.column_by_name("timestamp").and_then(|a| {
            let a = a.as_primitive::<TimestampMillisecondType>();
            a.is_valid(0).then(|| a.value(0))
        });
        let key = row.column_by_name("key").and_then(|a| {
            let a = a.as_binary::<i32>();
            a.is_valid(0).then(|| a.value(0).to_vec())
        });
        let fields: Vec<usize> = (0..events::FIELDS.len()).collect();
        let payload = row
            .project(&fields)
            .map(|r| copy::row_json(&r, 0).into_bytes())
            .ok();
        Self {
            topic,
            partition,
            offset,
            timestamp,
            key,
            payload,
            reason,
            stage,
        }
    }

    /// An output row PostgreSQL (or the encoder) refused whose input record is not
    /// known: the row as JSON, without coordinates.
    pub fn refused(topic: &str, row_json: String, reason: String) -> Self {
        Self {
            topic: Some(topic.to_string()),
            partition: None,
            offset: None,
            timestamp: None,
            key: None,
            payload: Some(row_json.into_bytes()),
            reason,
            stage: Stage::Sink,
        }
    }
}

/// Which input record an output row came from, so that a row PostgreSQL refuses
/// becomes a dead letter with the record's coordinates and event, like any other
/// (and so can be replayed to its own partition, and is stored once however often
/// the record is read again). Rows are matched by key: the input record of the
/// batch with the output row's key and the highest rank (`origin_partition`,
/// `origin_offset`), which is the one the default query keeps.
/// A transform whose key is not an input column (an aggregate, say) has no such
/// record: its refused rows are stored as the output row's JSON, without
/// coordinates.
pub struct Provenance {
    input: RecordBatch,
    /// The key columns' names, when the input has every one of them (else empty).
    key: Vec<String>,
    /// Key text -> the input row with that key and the highest rank (the one the
    /// default query keeps), built on first use.
    by_key: OnceLock<FastMap<String, usize>>,
}

/// The columns holding the rank of a row's record in the output table.
pub const RANK_COLUMNS: [&str; 2] = ["_kafka_partition", "_kafka_offset"];

impl Provenance {
    /// `input` is the batch the transform read; `key` the output's key columns
    /// (none: the output's rows are not one record's, an aggregate's say).
    pub fn new(input: RecordBatch, key: &[String]) -> Self {
        let all_in_input = key
            .iter()
            .all(|k| input.schema().column_with_name(k).is_some());
        let key = if all_in_input {
            key.to_vec()
        } else {
            Vec::new()
        };
        Self {
            input,
            key,
            by_key: OnceLock::new(),
        }
    }

    /// The input rows' ranks: `origin_partition`, `origin_offset`.
    fn ranks(&self) -> Option<(&Int32Array, &Int64Array)> {
        self.pair("origin_partition", "origin_offset")
    }

    /// The ranks, then the rows' own positions (`partition`, `offset`), which break
    /// ties between equal ranks (two replays of one dead letter) as the default
    /// query does: the highest position wins.
    fn order(&self) -> Order<'_> {
        [self.ranks(), self.pair("partition", "offset")]
    }

    /// Two columns of the input, as a partition and an offset.
    fn pair(&self, partition: &str, offset: &str) -> Option<(&Int32Array, &Int64Array)> {
        let p = self.input.column_by_name(partition)?;
        let o = self.input.column_by_name(offset)?;
        Some((p.as_primitive_opt()?, o.as_primitive_opt()?))
    }

    /// The input row an output row came from: the one with the output row's key
    /// and the highest rank (the one the default query keeps).
    fn input_row(&self, keys: &[Option<String>], row: usize) -> Option<usize> {
        let by_key = self.by_key.get_or_init(|| {
            let keys = key_texts(&self.input, &self.key);
            highest_ranked(keys.into_iter(), self.order())
        });
        keys.get(row)?.as_ref().and_then(|k| by_key.get(k).copied())
    }

    /// The key column when there is one and it is text (the usual case).
    fn text_key(&self, batch: &RecordBatch) -> Option<StringArray> {
        let [key] = self.key.as_slice() else {
            return None;
        };
        batch.column_by_name(key)?.as_string_opt::<i32>().cloned()
    }

    /// For each row of an output batch, the input row it came from. Text keys are
    /// matched as borrowed strings, through `by_text` (built once per batch of
    /// input), with no copy per row.
    fn input_rows(
        &self,
        batch: &RecordBatch,
        by_text: Option<&FastMap<&str, usize>>,
    ) -> Vec<Option<usize>> {
        if let (Some(by_key), Some(output)) = (by_text, self.text_key(batch)) {
            return output.iter().map(|k| by_key.get(k?).copied()).collect();
        }
        let keys = key_texts(batch, &self.key);
        (0..batch.num_rows())
            .map(|row| self.input_row(&keys, row))
            .collect()
    }

    /// The output with the rank of each row's record appended as
    /// [`RANK_COLUMNS`] (null where the record is not known).
    pub fn ranked(&self, output: &[RecordBatch]) -> Result<Vec<RecordBatch>, ArrowError> {
        let order = self.order();
        let [ranks, _] = order;
        let input_keys = self.text_key(&self.input);
        let by_text = input_keys
            .as_ref()
            .map(|keys| highest_ranked(keys.iter(), order));
        output
            .iter()
            .map(|batch| {
                let (mut partitions, mut offsets) = (Int32Builder::new(), Int64Builder::new());
                for input in self.input_rows(batch, by_text.as_ref()) {
                    let rank = input.zip(ranks).map(|(i, (p, o))| (p.value(i), o.value(i)));
                    partitions.append_option(rank.map(|r| r.0));
                    offsets.append_option(rank.map(|r| r.1));
                }
                let mut fields: Vec<Field> = batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                fields.push(Field::new(RANK_COLUMNS[0], DataType::Int32, true));
                fields.push(Field::new(RANK_COLUMNS[1], DataType::Int64, true));
                let mut columns = batch.columns().to_vec();
                columns.push(Arc::new(partitions.finish()) as ArrayRef);
                columns.push(Arc::new(offsets.finish()) as ArrayRef);
                RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            })
            .collect()
    }

    /// The dead letters of output rows refused at `at`, each with its reason.
    pub fn dead_letters(
        &self,
        output: &[RecordBatch],
        refused: Vec<(RowAt, String)>,
        topic: &str,
    ) -> Vec<DeadLetter> {
        let mut keys: HashMap<usize, Vec<Option<String>>> = HashMap::new();
        refused
            .into_iter()
            .map(|((b, row), reason)| {
                let batch = &output[b];
                let batch_keys = keys.entry(b).or_insert_with(|| key_texts(batch, &self.key));
                match self.input_row(batch_keys, row) {
                    Some(i) => {
                        DeadLetter::of_input_row(&self.input.slice(i, 1), reason, Stage::Sink)
                    }
                    None => DeadLetter::refused(topic, copy::row_json(batch, row), reason),
                }
            })
            .collect()
    }
}

/// Partition-and-offset pairs of columns that order the input rows, compared in turn
/// (a missing pair compares equal).
type Order<'a> = [Option<(&'a Int32Array, &'a Int64Array)>; 2];

/// Key -> the row with that key and the highest rank, then position (`None` keys
/// left out): the default query's `is_latest` decision, with this module's order.
fn highest_ranked<K: std::hash::Hash + Eq>(
    keys: impl Iterator<Item = Option<K>>,
    order: Order<'_>,
) -> FastMap<K, usize> {
    let rank = |i: usize| order.map(|pair| pair.map(|(p, o)| (p.value(i), o.value(i))));
    transform::highest_ranked(keys, |a, b| rank(a) >= rank(b))
}

/// Every row's key as text (`None` when the column is missing or the value null).
/// With several key columns, their texts joined by a unit separator (`None` when
/// any is null).
fn key_texts(batch: &RecordBatch, key: &[String]) -> Vec<Option<String>> {
    match key {
        [] => vec![None; batch.num_rows()],
        [one] => column_texts(batch, one),
        several => {
            let columns: Vec<_> = several.iter().map(|k| column_texts(batch, k)).collect();
            (0..batch.num_rows())
                .map(|row| {
                    let parts: Option<Vec<&str>> =
                        columns.iter().map(|c| c[row].as_deref()).collect();
                    parts.map(|p| p.join("\u{1f}"))
                })
                .collect()
        }
    }
}

/// One column's values as text (`None` when missing or null).
fn column_texts(batch: &RecordBatch, key: &str) -> Vec<Option<String>> {
    let Some(column) = batch.column_by_name(key) else {
        return vec![None; batch.num_rows()];
    };
    if let Some(strings) = column.as_string_opt::<i32>() {
        return strings.iter().map(|v| v.map(str::to_string)).collect();
    }
    let options = FormatOptions::default();
    let Ok(format) = ArrayFormatter::try_new(column.as_ref(), &options) else {
        return vec![None; batch.num_rows()];
    };
    (0..batch.num_rows())
        .map(|row| (!column.is_null(row)).then(|| format.value(row).to_string()))
        .collect()
}

/// The DDL of the dead-letter table (also printed by `consumer validate`).
pub fn ddl(table: &str) -> String {
    format!(
        r#"CREATE TABLE IF NOT EXISTS {table} (
            id             bigserial   PRIMARY KEY,
            topic          text,
            "partition"    integer,
            "offset"       bigint,
            "timestamp"    timestamptz,
            "key"          bytea,
            payload        bytea,
            reason         text        NOT NULL,
            stage          text        NOT NULL,
            batch_id       uuid,
            created_at     timestamptz NOT NULL DEFAULT now(),
            replayed_at    timestamptz
        )"#
    )
}

/// What a dead-letter table lacks until its first start with this version (a new
/// table too): the group column, and the index that finds a record's dead letter
/// by its coordinates. Run only when the column is missing (see [`upgraded`]):
/// `ALTER TABLE` locks the table even when there is nothing to add.
pub fn upgrade(table: &str) -> String {
    let base = crate::sink::postgres::unquote(table.rsplit('.').next().unwrap_or(table));
    let index = crate::sink::quote_ident(&format!("{base}_record"));
    format!(
        r#"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS consumer_group text;
           CREATE INDEX IF NOT EXISTS {index} ON {table} (topic, "partition", "offset")"#
    )
}

/// Whether the dead-letter table has what [`upgrade`] adds.
pub async fn upgraded(tx: &Transaction<'_>, table: &str) -> Result<bool, tokio_postgres::Error> {
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1)
                            AND attname = 'consumer_group' AND NOT attisdropped)",
            &[&table],
        )
        .await?;
    Ok(row.get(0))
}

/// How reasons are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reasons {
    AsIs,
    /// Non-ASCII characters escaped (`\u{..}`): for a database whose encoding
    /// cannot hold a character of a reason (which may quote the record).
    Ascii,
}

/// Stores a batch's dead letters in its transaction, once per record and group:
/// a record read again (a reset, a rebuild) that is refused again is not stored
/// twice. Every value is one PostgreSQL accepts whatever the record held (bytes as
/// bytea, reasons without NUL and, should the database's encoding refuse one,
/// escaped to ASCII), so storing a dead letter cannot fail on the record's content.
/// Returns the dead letters stored.
pub async fn insert(
    tx: &mut Transaction<'_>,
    table: &str,
    group: &str,
    batch: Uuid,
    dead: &[DeadLetter],
) -> Result<u64, tokio_postgres::Error> {
    let sp = tx.savepoint("dead_letters").await?;
    match insert_as(&sp, table, group, batch, dead, Reasons::AsIs).await {
        Ok(n) => {
            sp.commit().await?;
            Ok(n)
        }
        Err(e) if crate::sink::postgres::fault(&e) == crate::sink::postgres::Fault::Rows => {
            sp.rollback().await?;
            insert_as(tx, table, group, batch, dead, Reasons::Ascii).await
        }
        Err(e) => Err(e),
    }
}

async fn insert_as(
    tx: &Transaction<'_>,
    table: &str,
    group: &str,
    batch: Uuid,
    dead: &[DeadLetter],
    how: Reasons,
) -> Result<u64, tokio_postgres::Error> {
    let topics: Vec<Option<&str>> = dead.iter().map(|d| d.topic.as_deref()).collect();
    let partitions: Vec<Option<i32>> = dead.iter().map(|d| d.partition).collect();
    let offsets: Vec<Option<i64>> = dead.iter().map(|d| d.offset).collect();
    let timestamps: Vec<Option<chrono::DateTime<chrono::Utc>>> = dead
        .iter()
        .map(|d| storable_timestamp(d.timestamp))
        .collect();
    let keys: Vec<Option<&[u8]>> = dead.iter().map(|d| d.key.as_deref()).collect();
    let payloads: Vec<Option<&[u8]>> = dead.iter().map(|d| d.payload.as_deref()).collect();
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| storable_reason(&d.reason, how))
        .collect();
    let stages: Vec<&str> = dead.iter().map(|d| d.stage.as_str()).collect();
    tx.execute(
        &format!(
            r#"INSERT INTO {table} (topic, "partition", "offset", "timestamp", "key", payload, reason,
                                    stage, batch_id, consumer_group)
               SELECT t, p, o, ts, k, v, r, s, $9, $10
               FROM unnest($1::text[], $2::int4[], $3::int8[], $4::timestamptz[], $5::bytea[],
                           $6::bytea[], $7::text[], $8::text[]) AS d(t, p, o, ts, k, v, r, s)
               WHERE o IS NULL OR NOT EXISTS (
                   SELECT 1 FROM {table} x
                   WHERE x.topic = d.t AND x."partition" = d.p AND x."offset" = d.o
                     AND x.consumer_group = $10)"#
        ),
        &[
            &topics,
            &partitions,
            &offsets,
            &timestamps,
            &keys,
            &payloads,
            &reasons,
            &stages,
            &batch,
            &group,
        ],
    )
    .await
}

/// A reason PostgreSQL text can hold: no NUL, and ASCII only when asked.
fn storable_reason(reason: &str, how: Reasons) -> String {
    let reason = reason.replace('\0', "\\0");
    match how {
        Reasons::AsIs => reason,
        Reasons::Ascii => reason
            .chars()
            .map(|c| {
                if c.is_ascii() {
                    c.to_string()
                } else {
                    c.escape_unicode().to_string()
                }
            })
            .collect(),
    }
}

/// A Kafka timestamp (any integer) as one PostgreSQL can store, or none.
fn storable_timestamp(ms: Option<i64>) -> Option<chrono::DateTime<chrono::Utc>> {
    // chrono itself refuses years past PostgreSQL's upper bound.
    ms.filter(|ms| *ms >= copy::PG_MIN_TIMESTAMP_MICROS / 1000)
        .and_then(chrono::DateTime::from_timestamp_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keyed_by_several_columns_get_their_newest_records_rank() {
        let mut b = crate::decode::BatchBuilder::new();
        for (offset, payload) in [
            (1, r#"{"id":"1","gender":"f","last_name":"A"}"#),
            (2, r#"{"id":"2","gender":"f","last_name":"B"}"#),
            (3, r#"{"id":"3","gender":"f","last_name":"A"}"#),
            (4, r#"{"id":"4","gender":"m","last_name":null}"#),
        ] {
            let origin = Origin {
                topic: "t",
                partition: 0,
                offset,
                timestamp: None,
                key: None,
                rank: None,
            };
            b.push(&origin, Some(payload.as_bytes()));
        }
        let input = b.finish().0;
        let schema = input.schema();
        let cols = ["gender", "last_name"].map(|c| schema.index_of(c).unwrap());
        let output = input.project(&cols).unwrap();
        let key = ["gender".to_string(), "last_name".to_string()];
        let ranked = Provenance::new(input, &key).ranked(&[output]).unwrap();
        let offsets = ranked[0]
            .column_by_name(RANK_COLUMNS[1])
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone();
        let got: Vec<Option<i64>> = offsets.iter().collect();
        // (f, A) -> its newest record, offset 3; a null key part matches nothing.
        assert_eq!(got, [Some(3), Some(2), Some(3), None]);
    }

    /// Two replays of one dead letter rank the same: the record named for a refused
    /// row is the one at the highest position, the row the default query keeps, not
    /// the one taken last.
    #[test]
    fn equal_ranks_are_told_apart_by_position() {
        let mut b = crate::decode::BatchBuilder::new();
        for (partition, offset) in [(1, 8), (2, 4), (1, 9)] {
            let origin = Origin::ranked(partition, offset, Some((1, 3)));
            b.push(&origin, Some(br#"{"id":"x"}"#.as_slice()));
        }
        let input = b.finish().0;
        let output = input.project(&[0]).unwrap();
        let provenance = Provenance::new(input, &["id".to_string()]);
        let refused = provenance.dead_letters(&[output], vec![((0, 0), "no".into())], "t");
        assert_eq!(
            (refused[0].partition, refused[0].offset),
            (Some(2), Some(4))
        );
    }

    #[test]
    fn stages_have_one_column_value_and_one_metric_label_each() {
        let columns: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(columns, ["decode", "transform", "sink"]);
        let labels: Vec<&str> = Stage::ALL.iter().map(|s| s.metric_reason()).collect();
        assert_eq!(
            labels,
            ["malformed", "transform_failed", "rejected_by_postgres"]
        );
    }

    #[test]
    fn a_malformed_record_keeps_its_coordinates_and_bytes() {
        let origin = Origin {
            topic: "t",
            partition: 2,
            offset: 41,
            timestamp: Some(5),
            key: Some(b"k"),
            rank: None,
        };
        let d = DeadLetter::malformed(&origin, Some(b"{oops"), &Reject::Empty);
        assert_eq!(
            (d.topic.as_deref(), d.partition, d.offset, d.timestamp),
            (Some("t"), Some(2), Some(41), Some(5))
        );
        assert_eq!(d.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(d.payload.as_deref(), Some(&b"{oops"[..]));
        assert_eq!(d.stage, Stage::Decode);
    }

    #[test]
    fn a_replayed_record_keeps_the_rank_its_headers_carry() {
        assert_eq!(origin_rank(Some(b"2"), Some(b"41")), Some((2, 41)));
        assert_eq!(origin_rank(Some(b"2"), None), None);
        assert_eq!(origin_rank(Some(b"x"), Some(b"41")), None);
    }

    #[test]
    fn reasons_are_made_storable() {
        assert_eq!(storable_reason("a\0b", Reasons::AsIs), "a\\0b");
        assert_eq!(storable_reason("名 é", Reasons::Ascii), "\\u{540d} \\u{e9}");
        let up = upgrade("\"app\".\"dl\"");
        assert!(up.contains("ALTER TABLE \"app\".\"dl\" ADD COLUMN IF NOT EXISTS consumer_group"));
        assert!(
            up.contains("INDEX IF NOT EXISTS \"dl_record\" ON \"app\".\"dl\""),
            "{up}"
        );
    }

    #[test]
    fn timestamps_postgres_cannot_hold_are_left_out() {
        assert!(storable_timestamp(Some(0)).is_some());
        assert!(storable_timestamp(Some(i64::MIN)).is_none());
        assert!(storable_timestamp(Some(i64::MAX)).is_none());
        assert!(storable_timestamp(None).is_none());
    }
}
