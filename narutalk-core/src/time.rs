//! Timestamps: stored as whole microseconds since the Unix epoch (UTC), shown as RFC 3339
//! with microseconds and `Z`, as the API writes them.

use chrono::{DateTime, SecondsFormat, Utc};

/// The current time, truncated to whole microseconds (what the database can hold).
pub fn now() -> DateTime<Utc> {
    from_micros(Utc::now().timestamp_micros())
}

/// `2026-11-26T10:14:03.123456Z`: always six fractional digits and `Z`.
pub fn format_rfc3339(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Serde helper: serializes a timestamp with [`format_rfc3339`] (the export file's
/// timestamps).
pub fn serialize<S: serde::Serializer>(
    at: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_rfc3339(at))
}

/// The stored form of a timestamp.
pub(crate) fn to_micros(at: &DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// A stored timestamp back as a date; out-of-range values (a damaged row) clamp to the epoch
/// rather than panic.
pub(crate) fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// Whole seconds since the epoch, as JWT `iat` and `exp` count.
pub(crate) fn unix_seconds(at: &DateTime<Utc>) -> i64 {
    at.timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_always_has_six_fractional_digits_and_z() {
        let at = from_micros(1_795_000_000_000_000);
        assert_eq!(format_rfc3339(&at), "2026-11-18T11:06:40.000000Z");
        let at = from_micros(1_795_000_000_123_456);
        assert_eq!(format_rfc3339(&at), "2026-11-18T11:06:40.123456Z");
    }

    #[test]
    fn now_round_trips_through_storage_exactly() {
        let at = now();
        assert_eq!(from_micros(to_micros(&at)), at);
    }
}
