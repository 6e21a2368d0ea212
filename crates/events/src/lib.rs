//! The user event that flows through the pipeline.
//!
//! Both binaries depend on this crate so that the producer's JSON and the consumer's
//! schema can never drift apart.
//!
//! # Layout
//! - [`event`]: [`UserEvent`], its JSON form, the field list and the Arrow schema.
//! - [`randomuser`]: the nested result of the Random User API and its mapping to the
//!   flat event, exactly as the original Python producer flattened it.
//! - [`synthetic`]: an offline, seeded generator of realistic Random User API results.

pub mod event;
pub mod randomuser;
pub mod synthetic;

pub use event::{FIELDS, UserEvent, arrow_schema};
pub use randomuser::{RandomUserResponse, RandomUserResult};
pub use synthetic::Generator;

/// Everything that can go wrong when reading events.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is not a valid event nor a valid Random User API result.
    #[error("not a user event nor a Random User API result: {0}")]
    Unrecognised(String),
    /// The JSON could not be parsed at all.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
}
