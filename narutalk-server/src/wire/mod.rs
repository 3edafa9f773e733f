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

/// Serializes a timestamp as the API writes it: `2026-11-26T10:14:03.123456Z`.
fn timestamp<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&at.format(TIMESTAMP_FORMAT))
}

/// The API's timestamp format: RFC 3339 in UTC, always six fractional digits and `Z`
/// (what [`narutalk_core::time::format_rfc3339`] writes, without building a string).
const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

#[cfg(test)]
mod tests {
    use narutalk_core::time;

    #[test]
    fn timestamps_are_written_as_the_core_formats_them() {
        #[derive(serde::Serialize)]
        struct At(#[serde(serialize_with = "super::timestamp")] chrono::DateTime<chrono::Utc>);
        for at in [
            "2026-11-18T11:06:40Z",
            "2026-11-18T11:06:40.123456Z",
            "1999-01-02T03:04:05.000001Z",
            "2026-12-31T23:59:59.999999Z",
        ] {
            let at = chrono::DateTime::parse_from_rfc3339(at)
                .map(|at| at.to_utc())
                .unwrap_or_default();
            assert_eq!(
                serde_json::to_string(&At(at)).unwrap_or_default(),
                format!("\"{}\"", time::format_rfc3339(&at))
            );
        }
    }
}
