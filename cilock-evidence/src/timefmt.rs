//! Timestamps as Go's `time.Time` marshals them: RFC 3339 with nanoseconds,
//! trailing zeros trimmed.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Formats `t` (UTC) as RFC 3339 with trimmed fractional seconds.
pub fn rfc3339(t: OffsetDateTime) -> String {
    // Rfc3339 in the time crate already trims trailing zeros of the fraction.
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

/// The current time, RFC 3339.
pub fn now() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// Parses an RFC 3339 timestamp.
pub fn parse(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(s, &Rfc3339)
}
