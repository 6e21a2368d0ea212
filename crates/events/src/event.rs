//! The flat event: twelve string fields, one JSON object per Kafka message.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

/// The event's field names in their canonical order (the order of the original
/// pipeline's CSV header and PostgreSQL table).
pub const FIELDS: [&str; 12] = [
    "id",
    "first_name",
    "last_name",
    "gender",
    "address",
    "post_code",
    "email",
    "username",
    "dob",
    "registered_date",
    "phone",
    "picture",
];

/// One user as published to Kafka.
///
/// `id` is optional because the Random User API returns `id.value: null` for some
/// nationalities; the Kafka key is the id, so such events have a null key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    pub id: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub gender: String,
    pub address: String,
    pub post_code: String,
    pub email: String,
    pub username: String,
    /// ISO-8601, e.g. `1947-11-29T13:42:28.938Z`.
    pub dob: String,
    /// ISO-8601, e.g. `2007-07-19T08:42:37.827Z`.
    pub registered_date: String,
    pub phone: String,
    pub picture: String,
}

impl UserEvent {
    /// The JSON payload of the Kafka message.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of strings into memory cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The Kafka key: the id's bytes, or none for a null id.
    pub fn key(&self) -> Option<&[u8]> {
        self.id.as_deref().map(str::as_bytes)
    }
}

/// The Arrow schema of the event: twelve nullable UTF-8 columns in [`FIELDS`] order.
///
/// Every column is nullable because the consumer accepts payloads with missing
/// fields (they become null) rather than rejecting them.
pub fn arrow_schema() -> SchemaRef {
    Arc::new(Schema::new(
        FIELDS
            .iter()
            .map(|name| Field::new(*name, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> UserEvent {
        UserEvent {
            id: Some("889-53-0877".into()),
            first_name: "Lucy".into(),
            last_name: "Walker".into(),
            gender: "female".into(),
            address: "5350 Cherry St, Riverside, Maine, United States".into(),
            post_code: "53719".into(),
            email: "lucy.walker@example.com".into(),
            username: "blacksnake778".into(),
            dob: "1947-11-29T13:42:28.938Z".into(),
            registered_date: "2007-07-19T08:42:37.827Z".into(),
            phone: "(708) 553-1238".into(),
            picture: "https://randomuser.me/api/portraits/med/women/8.jpg".into(),
        }
    }

    #[test]
    fn json_has_the_twelve_fields_in_order() {
        let json = String::from_utf8(sample().to_json()).unwrap();
        let positions: Vec<usize> = FIELDS
            .iter()
            .map(|f| json.find(&format!("\"{f}\":")).expect(f))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{json}");
        let back: UserEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn null_id_gives_null_key() {
        let mut e = sample();
        assert_eq!(e.key(), Some(&b"889-53-0877"[..]));
        e.id = None;
        assert_eq!(e.key(), None);
        assert!(
            String::from_utf8(e.to_json())
                .unwrap()
                .starts_with("{\"id\":null,")
        );
    }

    #[test]
    fn schema_matches_fields() {
        let schema = arrow_schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, FIELDS);
        assert!(schema.fields().iter().all(|f| f.is_nullable()));
    }
}
