//! Kafka payloads to Arrow, one record at a time, with dead letters kept apart.
//!
//! Each message is decoded the moment it arrives, straight into Arrow builders, so
//! a batch never holds both the raw payloads and their decoded form. Every payload
//! that cannot become a row is kept with its raw bytes and a reason: a bad record
//! must never fail its whole batch (as one bad line fails `arrow-json`'s decoder),
//! and must never be dropped.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use events::FIELDS;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::dead_letter::DeadLetter;

mod plain;

/// The schema of the `events` table the transform SQL reads: the event fields,
/// the Kafka columns named as Spark's Kafka source names them, then the record's
/// rank, `origin_partition` and `origin_offset` (its own position, or for a
/// replayed dead letter the original record's).
pub fn input_schema() -> SchemaRef {
    let mut fields: Vec<Field> = events::arrow_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend([
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("key", DataType::Binary, true),
        Field::new("origin_partition", DataType::Int32, false),
        Field::new("origin_offset", DataType::Int64, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, when the message has a timestamp.
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    /// The position that ranks this record against others of its key: its own,
    /// or for a replayed dead letter the original record's (`None`: its own).
    pub rank: Option<(i32, i64)>,
}

#[cfg(test)]
impl Origin<'static> {
    /// A record of topic "t" at `partition`, `offset`, ranked by `rank`, without
    /// timestamp or key (tests of ranking).
    pub fn ranked(partition: i32, offset: i64, rank: Option<(i32, i64)>) -> Self {
        Origin {
            topic: "t",
            partition,
            offset,
            timestamp: None,
            key: None,
            rank,
        }
    }
}

/// Why a payload is a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    Tombstone,
    Empty,
    NotUtf8(String),
    NotObject(&'static str),
    Invalid(String),
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::Tombstone => f.write_str("null payload (tombstone)"),
            Reject::Empty => f.write_str("empty payload"),
            Reject::NotUtf8(e) => write!(f, "payload is not UTF-8: {e}"),
            Reject::NotObject(kind) => write!(f, "payload is {kind}, not a JSON object"),
            Reject::Invalid(e) => write!(f, "invalid event: {e}"),
        }
    }
}

/// Accumulates one micro-batch.
pub struct BatchBuilder {
    fields: Vec<StringBuilder>,
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    key: BinaryBuilder,
    dead: Vec<DeadLetter>,
    origin_partition: Int32Builder,
    origin_offset: Int64Builder,
    records: u64,
    bytes: u64,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self {
            fields: (0..FIELDS.len()).map(|_| StringBuilder::new()).collect(),
            topic: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            timestamp: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            key: BinaryBuilder::new(),
            dead: Vec::new(),
            origin_partition: Int32Builder::new(),
            origin_offset: Int64Builder::new(),
            records: 0,
            bytes: 0,
        }
    }

    /// Messages taken so far (rows and dead letters).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Payload and key bytes taken so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Decodes one message into a row, or keeps it as a dead letter.
    pub fn push(&mut self, origin: &Origin<'_>, payload: Option<&[u8]>) {
        self.records += 1;
        self.bytes += (payload.map_or(0, <[u8]>::len) + origin.key.map_or(0, <[u8]>::len)) as u64;
        match parse(payload) {
            Ok(values) => {
                for (builder, value) in self.fields.iter_mut().zip(values.iter()) {
                    builder.append_option(value.as_deref());
                }
                self.topic.append_value(origin.topic);
                self.partition.append_value(origin.partition);
                self.offset.append_value(origin.offset);
                self.timestamp.append_option(origin.timestamp);
                self.key.append_option(origin.key);
                let (rank_partition, rank_offset) =
                    origin.rank.unwrap_or((origin.partition, origin.offset));
                self.origin_partition.append_value(rank_partition);
                self.origin_offset.append_value(rank_offset);
            }
            Err(reject) => self
                .dead
                .push(DeadLetter::malformed(origin, payload, &reject)),
        }
    }

    /// The rows as a record batch of [`input_schema`], and the dead letters.
    pub fn finish(mut self) -> (RecordBatch, Vec<DeadLetter>) {
        let mut columns: Vec<ArrayRef> = self
            .fields
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        columns.push(Arc::new(self.topic.finish()));
        columns.push(Arc::new(self.partition.finish()));
        columns.push(Arc::new(self.offset.finish()));
        columns.push(Arc::new(self.timestamp.finish()));
        columns.push(Arc::new(self.key.finish()));
        columns.push(Arc::new(self.origin_partition.finish()));
        columns.push(Arc::new(self.origin_offset.finish()));
        // The columns are built from the same schema in the same order, so this
        // cannot fail; an empty batch keeps the pipeline going if it ever did.
        let batch = RecordBatch::try_new(input_schema(), columns)
            .unwrap_or_else(|_| RecordBatch::new_empty(input_schema()));
        (batch, self.dead)
    }
}

/// The twelve fields of one payload, borrowed from it where no unescaping is needed.
pub type Values<'a> = [Option<Cow<'a, str>>; FIELDS.len()];

/// Parses one payload leniently: a JSON number or boolean in a string field becomes
/// its text, missing fields are null, unknown fields are ignored. The plain shape
/// nearly every payload has is read by [`plain`] first, serde_json reads the rest.
pub fn parse(payload: Option<&[u8]>) -> Result<Values<'_>, Reject> {
    let payload = payload.ok_or(Reject::Tombstone)?;
    // The fast check says only yes or no; std's says where and why, for the reason.
    let text = simdutf8::basic::from_utf8(payload)
        .or_else(|_| std::str::from_utf8(payload))
        .map_err(|e| Reject::NotUtf8(e.to_string()))?;
    if let Some(values) = plain::parse(text) {
        return Ok(values);
    }
    let trimmed = text.trim_start();
    match trimmed.as_bytes().first() {
        None => return Err(Reject::Empty),
        Some(b'{') => {}
        // serde would happily read a struct from an array: check the shape first.
        Some(b'[') => return Err(Reject::NotObject("a JSON array")),
        Some(b'"') => return Err(Reject::NotObject("a JSON string")),
        Some(b'n') if trimmed.trim_end() == "null" => {
            return Err(Reject::NotObject("JSON null"));
        }
        Some(b't' | b'f') if matches!(trimmed.trim_end(), "true" | "false") => {
            return Err(Reject::NotObject("a JSON boolean"));
        }
        Some(b'-' | b'0'..=b'9') if serde_json::from_str::<f64>(trimmed).is_ok() => {
            return Err(Reject::NotObject("a JSON number"));
        }
        Some(_) => {}
    }
    parse_with_serde(text)
}

/// Reads a payload with serde_json: the rules and the reasons of dead letters.
fn parse_with_serde(text: &str) -> Result<Values<'_>, Reject> {
    let mut de = serde_json::Deserializer::from_str(text);
    let values = de
        .deserialize_map(EventVisitor)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| Reject::Invalid(e.to_string()))?;
    Ok(values)
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Values<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values: Values<'de> = Default::default();
        let mut seen = [false; FIELDS.len()];
        while let Some(FieldName(field)) = map.next_key::<FieldName>()? {
            match field {
                Some(i) => {
                    let name = FIELDS[i];
                    if seen[i] {
                        return Err(de::Error::custom(format_args!("duplicate field `{name}`")));
                    }
                    seen[i] = true;
                    values[i] = map
                        .next_value::<Text<'de>>()
                        .map_err(|e| de::Error::custom(format_args!("field `{name}`: {e}")))?
                        .0;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }
}

/// A key of the payload's object: which event field it names, if any. It is read
/// without a copy (serde's `Cow<str>` would allocate a `String` per key).
struct FieldName(Option<usize>);

impl<'de> de::Deserialize<'de> for FieldName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = FieldName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FieldName(FIELDS.iter().position(|f| *f == v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A string field's value: text, a number or a boolean as text, or null.
struct Text<'de>(Option<Cow<'de, str>>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number, boolean or null")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(if v { "true" } else { "false" }))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
                Err(de::Error::custom(
                    "expected a string, number or boolean, found an object",
                ))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
                Err(de::Error::custom(
                    "expected a string, number or boolean, found an array",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, AsArray};

    use super::*;

    fn origin(offset: i64) -> Origin<'static> {
        Origin {
            topic: "t",
            partition: 2,
            offset,
            timestamp: Some(1_700_000_000_000),
            key: Some(b"k"),
            rank: None,
        }
    }

    fn reject(payload: Option<&[u8]>) -> Reject {
        parse(payload).expect_err("should be rejected")
    }

    #[test]
    fn lenient_fields() {
        let v = parse(Some(
            br#"{"id":"a\"b","post_code":53719,"phone":1.5,"gender":true,"email":null,"extra":{"x":[1]}}"#,
        ))
        .unwrap();
        assert_eq!(v[0].as_deref(), Some("a\"b"));
        assert_eq!(v[5].as_deref(), Some("53719"));
        assert_eq!(v[10].as_deref(), Some("1.5"));
        assert_eq!(v[3].as_deref(), Some("true"));
        assert_eq!(v[6], None);
        assert_eq!(v[1], None, "missing field is null");
        // A key spelled with escapes names the same field (and counts as a repeat).
        let v = parse(Some(
            r#"{"fir\u0073t_name":"Zoë","\u0069d":"7"}"#.as_bytes(),
        ))
        .unwrap();
        assert_eq!(v[1].as_deref(), Some("Zoë"));
        assert_eq!(v[0].as_deref(), Some("7"));
        let twice = parse(Some(br#"{"id":"1","\u0069d":"2"}"#)).unwrap_err();
        assert!(
            twice.to_string().contains("duplicate field `id`"),
            "{twice}"
        );
    }

    #[test]
    fn every_kind_of_bad_payload_is_rejected_with_a_reason() {
        assert_eq!(reject(None), Reject::Tombstone);
        assert_eq!(reject(Some(b"")), Reject::Empty);
        assert_eq!(reject(Some(b"  \n")), Reject::Empty);
        assert!(matches!(reject(Some(b"\xff\xfe{}")), Reject::NotUtf8(_)));
        assert_eq!(reject(Some(b"[1,2]")), Reject::NotObject("a JSON array"));
        assert_eq!(reject(Some(b"\"x\"")), Reject::NotObject("a JSON string"));
        assert_eq!(reject(Some(b"42")), Reject::NotObject("a JSON number"));
        assert_eq!(reject(Some(b"null")), Reject::NotObject("JSON null"));
        assert!(matches!(reject(Some(b"{\"id\":")), Reject::Invalid(_)));
        assert!(matches!(reject(Some(b"not json")), Reject::Invalid(_)));
        assert!(matches!(reject(Some(b"{} trailing")), Reject::Invalid(_)));
        let Reject::Invalid(why) = reject(Some(br#"{"id":{"value":"1"}}"#)) else {
            panic!()
        };
        assert!(
            why.contains("field `id`") && why.contains("found an object"),
            "{why}"
        );
        let Reject::Invalid(why) = reject(Some(br#"{"email":["a"]}"#)) else {
            panic!()
        };
        assert!(why.contains("found an array"), "{why}");
        let Reject::Invalid(why) = reject(Some(br#"{"id":"1","id":"2"}"#)) else {
            panic!()
        };
        assert!(why.contains("duplicate field"), "{why}");
        // Deep nesting in a known field is refused; in an unknown field it is skipped
        // (serde_json skips ignored values without recursion).
        let deep = format!("{{\"id\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(reject(Some(deep.as_bytes())), Reject::Invalid(_)));
        let deep = format!(
            "{{\"id\":\"d\",\"x\":{}1{}}}",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert_eq!(
            parse(Some(deep.as_bytes())).unwrap()[0].as_deref(),
            Some("d")
        );
    }

    #[test]
    fn builder_keeps_rows_and_dead_letters_apart() {
        let mut b = BatchBuilder::new();
        b.push(
            &origin(10),
            Some(r#"{"id":"1","first_name":"Zoë"}"#.as_bytes()),
        );
        b.push(&origin(11), Some(b"garbage"));
        b.push(&origin(12), None);
        b.push(&origin(13), Some(br#"{"id":"2"}"#));
        assert_eq!(b.records(), 4);
        let (batch, dead) = b.finish();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), input_schema());
        let first = batch
            .column_by_name("first_name")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(first.value(0), "Zoë");
        assert!(first.is_null(1));
        let offsets = batch.column_by_name("offset").unwrap();
        let offsets = offsets.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        assert_eq!(offsets.values().to_vec(), vec![10, 13]);
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].offset, Some(11));
        assert_eq!(dead[0].payload.as_deref(), Some(&b"garbage"[..]));
        assert!(
            dead[0].reason.starts_with("invalid event"),
            "{}",
            dead[0].reason
        );
        assert_eq!(dead[1].reason, "null payload (tombstone)");
        assert_eq!(dead[1].key.as_deref(), Some(&b"k"[..]));
    }
}
