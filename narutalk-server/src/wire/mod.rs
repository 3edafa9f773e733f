//! The JSON the server answers, REST and WebSocket alike: one type per object of the
//! contract, built from the core's plain types, and the OpenAPI document's schema of that
//! object (`ToSchema`), so that what is served and what is documented come from the same
//! definitions.
//!
//! The core's types do not serialize themselves in the API's shapes: a type here borrows
//! the core's value (`Message<'a>` holds `&'a core::Message`'s fields), so a list answer
//! is serialized straight from what the core read, without a copy. Each type lists its
//! keys in the order the API answers them; timestamps are RFC 3339 in UTC with
//! microseconds ([`narutalk_core::time::format_rfc3339`]).
//!
//! The choices (`Category`, `Sender`, `MessageType`, `Role`) are the server's own enums,
//! with one `From` the core's: their names are the API's, and a unit test holds them equal
//! to the core's stored names.
//!
//! Request bodies are not here: the core reads them field by field with the contract's
//! messages, and the document's request schemas live with the rest of the document
//! (`docs`).

pub mod accounts;
pub mod chat;
pub mod errors;
pub mod frames;
pub mod health;

use chrono::{DateTime, Utc};
use serde::Serializer;

/// Serializes a timestamp as the API writes it: `2026-11-26T10:14:03.123456Z`
/// ([`narutalk_core::time::format_rfc3339`]).
fn timestamp<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&narutalk_core::time::format_rfc3339(at))
}

/// The answer to `OPTIONS`: DRF's metadata of a view, keys in name order (as the server
/// has always written it).
#[derive(serde::Serialize)]
pub struct ViewMetadata {
    /// Always empty.
    pub description: &'static str,
    /// The view's name.
    pub name: &'static str,
    /// The media types it reads.
    pub parses: [&'static str; 1],
    /// The media types it answers.
    pub renders: [&'static str; 1],
}

impl ViewMetadata {
    /// The metadata of the view named `name`: JSON in, JSON out.
    pub fn new(name: &'static str) -> Self {
        ViewMetadata {
            description: "",
            name,
            parses: ["application/json"],
            renders: ["application/json"],
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_have_six_fractional_digits_and_z() {
        #[derive(serde::Serialize)]
        struct At(#[serde(serialize_with = "super::timestamp")] chrono::DateTime<chrono::Utc>);
        let at = chrono::DateTime::from_timestamp_micros(1_795_000_000_000_001).unwrap();
        assert_eq!(
            serde_json::to_string(&At(at)).unwrap(),
            r#""2026-11-18T11:06:40.000001Z""#
        );
    }

    #[test]
    fn view_metadata_has_drfs_keys_in_name_order() {
        assert_eq!(
            serde_json::to_string(&super::ViewMetadata::new("Login")).unwrap(),
            r#"{"description":"","name":"Login","parses":["application/json"],"renders":["application/json"]}"#
        );
    }
}
