//! The Random User API's nested result and its mapping to the flat [`UserEvent`].
//!
//! The API is loosely typed: `location.postcode` is a number for some countries and a
//! string for others, `location.street.number` is a number, and `id.value` is null for
//! some nationalities. The structs here accept all of those shapes so that one odd
//! record never stops a producer.

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Error, UserEvent};

/// The envelope returned by `https://randomuser.me/api/?results=N`.
#[derive(Debug, Clone, Deserialize)]
pub struct RandomUserResponse {
    pub results: Vec<RandomUserResult>,
}

/// One user as the Random User API returns it (only the parts the pipeline reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomUserResult {
    pub gender: String,
    pub name: Name,
    pub location: Location,
    pub email: String,
    pub login: Login,
    pub dob: Dated,
    pub registered: Dated,
    pub phone: String,
    #[serde(default)]
    pub id: Option<Identity>,
    pub picture: Picture,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Name {
    #[serde(default)]
    pub title: String,
    pub first: String,
    pub last: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub street: Street,
    pub city: String,
    pub state: String,
    pub country: String,
    /// A JSON number for some countries (US, FI), a string for others (GB, CA, NL).
    pub postcode: Scalar,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Street {
    pub number: Scalar,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Login {
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dated {
    pub date: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Picture {
    pub medium: String,
}

/// A JSON scalar that the API sends either as a number or as a string.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Scalar {
    Number(serde_json::Number),
    Text(String),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => Ok(Scalar::Number(n)),
            serde_json::Value::String(s) => Ok(Scalar::Text(s)),
            other => Err(serde::de::Error::custom(format!(
                "expected a string or a number, found {other}"
            ))),
        }
    }
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Number(n) => write!(f, "{n}"),
            Scalar::Text(s) => f.write_str(s),
        }
    }
}

impl RandomUserResult {
    /// Flattens the result the way the original pipeline did:
    /// address = "<number> <street>, <city>, <state>, <country>".
    pub fn to_event(&self) -> UserEvent {
        let l = &self.location;
        UserEvent {
            id: self.id.as_ref().and_then(|i| i.value.clone()),
            first_name: self.name.first.clone(),
            last_name: self.name.last.clone(),
            gender: self.gender.clone(),
            address: format!(
                "{} {}, {}, {}, {}",
                l.street.number, l.street.name, l.city, l.state, l.country
            ),
            post_code: l.postcode.to_string(),
            email: self.email.clone(),
            username: self.login.username.clone(),
            dob: self.dob.date.clone(),
            registered_date: self.registered.date.clone(),
            phone: self.phone.clone(),
            picture: self.picture.medium.clone(),
        }
    }
}

/// Reads one line of an NDJSON replay file: either a flat event or a raw Random User
/// API result (recognised by its nested `name` object).
pub fn parse_line(line: &str) -> Result<UserEvent, Error> {
    let value: serde_json::Value = serde_json::from_str(line)?;
    let Some(object) = value.as_object() else {
        return Err(Error::Unrecognised(format!(
            "expected a JSON object, found {}",
            json_kind(&value)
        )));
    };
    let parsed = if object.get("name").is_some_and(serde_json::Value::is_object) {
        serde_json::from_value::<RandomUserResult>(value).map(|r| r.to_event())
    } else {
        serde_json::from_value::<UserEvent>(value)
    };
    parsed.map_err(|e| Error::Unrecognised(e.to_string()))
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like real API output for a US user (numeric post code).
    const US: &str = r#"{"gender":"female","name":{"title":"Ms","first":"Lucy","last":"Walker"},
      "location":{"street":{"number":5350,"name":"Cherry St"},"city":"Riverside","state":"Maine",
      "country":"United States","postcode":53719,"coordinates":{"latitude":"-1.2","longitude":"3.4"},
      "timezone":{"offset":"+1:00","description":"Brussels"}},"email":"lucy.walker@example.com",
      "login":{"uuid":"7a0e","username":"blacksnake778","password":"x"},
      "dob":{"date":"1947-11-29T13:42:28.938Z","age":78},"registered":{"date":"2007-07-19T08:42:37.827Z","age":18},
      "phone":"(708) 553-1238","cell":"(1) 2","id":{"name":"SSN","value":"889-53-0877"},
      "picture":{"large":"l","medium":"https://randomuser.me/api/portraits/med/women/8.jpg","thumbnail":"t"},"nat":"US"}"#;

    /// A Canadian user: string post code, non-ASCII state.
    const CA: &str = r#"{"gender":"male","name":{"title":"Mr","first":"Liam","last":"Gagné"},
      "location":{"street":{"number":2850,"name":"Concession Road 6"},"city":"Summerside","state":"Québec",
      "country":"Canada","postcode":"S6S 4X4"},"email":"liam.gagne@example.com","login":{"username":"sadmouse176"},
      "dob":{"date":"1986-06-29T18:18:18.074Z"},"registered":{"date":"2010-01-01T00:00:00.000Z"},
      "phone":"E51 T83-6652","id":{"name":"SIN","value":"882348345"},"picture":{"medium":"m.jpg"}}"#;

    /// The API returns `id.value: null` for some nationalities (here IE).
    const NULL_ID: &str = r#"{"gender":"female","name":{"title":"Ms","first":"Aoife","last":"Ó Súilleabháin"},
      "location":{"street":{"number":12,"name":"Main Street"},"city":"Cork","state":"Munster","country":"Ireland",
      "postcode":41234},"email":"aoife@example.com","login":{"username":"bluebird1"},"dob":{"date":"1970-01-01T00:00:00.000Z"},
      "registered":{"date":"2015-05-05T05:05:05.005Z"},"phone":"011-1","id":{"name":"PPS","value":null},"picture":{"medium":"p.jpg"}}"#;

    #[test]
    fn maps_a_us_result_with_numeric_post_code() {
        let e = parse_line(US).unwrap();
        assert_eq!(e.id.as_deref(), Some("889-53-0877"));
        assert_eq!(e.address, "5350 Cherry St, Riverside, Maine, United States");
        assert_eq!(e.post_code, "53719");
        assert_eq!(e.username, "blacksnake778");
        assert_eq!(e.dob, "1947-11-29T13:42:28.938Z");
        assert_eq!(e.registered_date, "2007-07-19T08:42:37.827Z");
        assert_eq!(
            e.picture,
            "https://randomuser.me/api/portraits/med/women/8.jpg"
        );
    }

    #[test]
    fn maps_string_post_code_and_keeps_non_ascii() {
        let e = parse_line(CA).unwrap();
        assert_eq!(e.post_code, "S6S 4X4");
        assert_eq!(e.last_name, "Gagné");
        assert_eq!(
            e.address,
            "2850 Concession Road 6, Summerside, Québec, Canada"
        );
    }

    #[test]
    fn null_id_value_becomes_null_id() {
        let e = parse_line(NULL_ID).unwrap();
        assert_eq!(e.id, None);
        assert_eq!(e.key(), None);
        assert_eq!(e.last_name, "Ó Súilleabháin");
    }

    #[test]
    fn the_api_envelope_parses() {
        let body = format!(r#"{{"results":[{US},{CA}],"info":{{"seed":"x","results":2}}}}"#);
        let r: RandomUserResponse = serde_json::from_str(&body).unwrap();
        assert_eq!(r.results.len(), 2);
    }

    #[test]
    fn flat_events_pass_through() {
        let e = parse_line(US).unwrap();
        let line = String::from_utf8(e.to_json()).unwrap();
        assert_eq!(parse_line(&line).unwrap(), e);
    }

    #[test]
    fn bad_lines_say_why() {
        assert!(matches!(parse_line("{not json"), Err(Error::Json(_))));
        let err = parse_line("[1,2]").unwrap_err().to_string();
        assert!(err.contains("an array"), "{err}");
        let err = parse_line(r#"{"first_name":"x"}"#).unwrap_err().to_string();
        assert!(err.contains("missing field"), "{err}");
        let err = parse_line(&US.replace("53719", "[1]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("string or a number"), "{err}");
    }
}
