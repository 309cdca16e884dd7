//! Event time: nanoseconds since the Unix epoch, written as RFC 3339 in UTC
//! with exactly nine fractional digits (`2026-11-27T01:55:03.123456789Z`).
//!
//! A fixed width keeps lines comparable as text and the hashed bytes stable.
//! Parsing accepts any RFC 3339 offset (used by `follow --since TIME`).

use std::borrow::Cow;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A point in time with nanosecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

/// Why a text is not an RFC 3339 time.
#[derive(Debug, thiserror::Error)]
#[error("not an RFC 3339 time: {0:?}")]
pub struct TimestampError(String);

impl Timestamp {
    /// The time from nanoseconds since the epoch.
    pub const fn from_unix_nanos(ns: i64) -> Self {
        Self(ns)
    }

    /// Nanoseconds since the epoch.
    pub const fn unix_nanos(self) -> i64 {
        self.0
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        let ns = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
        };
        Self(ns)
    }

    /// Parses an RFC 3339 time with any offset.
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimestampError> {
        let dt =
            OffsetDateTime::parse(text, &Rfc3339).map_err(|_| TimestampError(text.to_owned()))?;
        i64::try_from(dt.unix_timestamp_nanos())
            .map(Self)
            .map_err(|_| TimestampError(text.to_owned()))
    }

    /// The fixed-width UTC form as text.
    fn with_text<R>(self, f: impl FnOnce(&str) -> R) -> R {
        let text = self.fixed();
        // Only ASCII digits and punctuation were written.
        f(std::str::from_utf8(&text).unwrap_or_default())
    }

    /// Year, month, day, hour, minute, second, nanosecond (UTC).
    fn fields(self) -> (i64, u32, u32, i64, i64, i64, i64) {
        let secs = self.0.div_euclid(1_000_000_000);
        let nanos = self.0.rem_euclid(1_000_000_000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        (y, m, d, sod / 3600, (sod / 60) % 60, sod % 60, nanos)
    }

    /// The 30-byte form, written digit by digit instead of through the formatting machinery
    /// (it runs once per event). Nanoseconds in an i64 span the years 1677 to 2262, so the
    /// year always has four digits.
    fn fixed(self) -> [u8; 30] {
        let (y, m, d, h, min, sec, nanos) = self.fields();
        let mut out = *b"0000-00-00T00:00:00.000000000Z";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y as u64);
        put(5, 2, u64::from(m));
        put(8, 2, u64::from(d));
        put(11, 2, h as u64);
        put(14, 2, min as u64);
        put(17, 2, sec as u64);
        put(20, 9, nanos as u64);
        out
    }
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day).
/// Howard Hinnant's `civil_from_days`, valid for the whole i64 day range we use.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_text(|text| f.write_str(text))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_text(|text| s.serialize_str(text))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        Self::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "RFC 3339 time in UTC with nine fractional digits",
            "type": "string",
            "format": "date-time",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{9}Z$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_fixed_width_utc() {
        assert_eq!(
            Timestamp::from_unix_nanos(0).to_string(),
            "1970-01-01T00:00:00.000000000Z"
        );
        assert_eq!(
            Timestamp::from_unix_nanos(1_795_744_503_123_456_789).to_string(),
            "2026-11-27T01:55:03.123456789Z"
        );
        assert_eq!(
            Timestamp::from_unix_nanos(951_782_400_000_000_001).to_string(),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            Timestamp::from_unix_nanos(-1).to_string(),
            "1969-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn fixed_form_matches_the_general_one_and_serialises_as_json() {
        let general = |t: Timestamp| {
            let (y, m, d, h, min, sec, nanos) = t.fields();
            format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{sec:02}.{nanos:09}Z")
        };
        // The whole i64 range (years 1677 to 2262), in uneven steps, and both ends.
        let mut ns = i64::MIN;
        loop {
            let t = Timestamp::from_unix_nanos(ns);
            assert_eq!(t.to_string(), general(t), "{ns}");
            if ns == i64::MAX {
                break;
            }
            ns = ns.saturating_add(77_777_777_777_777_777);
        }
        let json = serde_json::to_string(&Timestamp::from_unix_nanos(1)).unwrap_or_default();
        assert_eq!(json, "\"1970-01-01T00:00:00.000000001Z\"");
    }

    #[test]
    fn round_trips_through_parse() {
        for ns in [0, 1, 1_795_744_503_123_456_789, -86_400_000_000_001] {
            let t = Timestamp::from_unix_nanos(ns);
            assert_eq!(Timestamp::parse_rfc3339(&t.to_string()).ok(), Some(t));
        }
        let with_offset = Timestamp::parse_rfc3339("2026-11-27T03:55:03+02:00");
        assert_eq!(
            with_offset.ok(),
            Some(Timestamp::from_unix_nanos(1_795_744_503_000_000_000))
        );
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }
}
