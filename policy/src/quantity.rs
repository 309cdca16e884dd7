//! Quantities written in a manifest: byte sizes (`256Mi`), durations (`300s`, `5m`) and CPU
//! counts (`1.5`, `500m`). Parsing, canonical serialisation and their JSON Schema live here;
//! what the numbers mean for a container lives in the compiler.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a quantity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text is not a number followed by a known unit.
    #[error("invalid {kind} {text:?}: expected {expected}")]
    Invalid {
        /// Which kind of quantity was being read.
        kind: &'static str,
        /// The offending text.
        text: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// The value does not fit in 64 bits.
    #[error("{kind} {text:?} is too large")]
    Overflow {
        /// Which kind of quantity was being read.
        kind: &'static str,
        /// The offending text.
        text: String,
    },
}

const SIZE_EXPECTED: &str =
    "bytes as an integer or with a unit Ki, Mi, Gi, Ti, k, M, G or T (e.g. 256Mi)";
const DURATION_EXPECTED: &str =
    "a duration such as 300s, 5m, 1h30m or 1500ms, or an integer number of seconds";
const CPUS_EXPECTED: &str = "a number of CPUs from 0.001 to 4096 such as 1, 0.5 or 500m";

/// A size in bytes, written `256Mi`, `1Gi`, `512M` or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
}

impl FromStr for ByteSize {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || QuantityError::Invalid {
            kind: "size",
            text: text.to_string(),
            expected: SIZE_EXPECTED,
        };
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        if digits.is_empty() {
            return Err(invalid());
        }
        let n: u64 = digits.parse().map_err(|_| QuantityError::Overflow {
            kind: "size",
            text: text.to_string(),
        })?;
        let mult: u64 = match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            "k" | "K" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            _ => return Err(invalid()),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| QuantityError::Overflow {
                kind: "size",
                text: text.to_string(),
            })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "Ti"),
            (1 << 30, "Gi"),
            (1 << 20, "Mi"),
            (1 << 10, "Ki"),
        ];
        for (mult, unit) in UNITS {
            if self.0 >= mult && self.0.is_multiple_of(mult) {
                return write!(f, "{}{unit}", self.0 / mult);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A wall-clock duration, written `300s`, `5m`, `1h30m`, `1500ms` or integer seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationSpec(pub Duration);

impl FromStr for DurationSpec {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || QuantityError::Invalid {
            kind: "duration",
            text: text.to_string(),
            expected: DURATION_EXPECTED,
        };
        let overflow = || QuantityError::Overflow {
            kind: "duration",
            text: text.to_string(),
        };
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(invalid());
        }
        if rest.bytes().all(|b| b.is_ascii_digit()) {
            let secs: u64 = rest.parse().map_err(|_| overflow())?;
            return Ok(DurationSpec(Duration::from_secs(secs)));
        }
        let mut total_ms: u64 = 0;
        while !rest.is_empty() {
            let split = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let (digits, tail) = rest.split_at(split);
            if digits.is_empty() {
                return Err(invalid());
            }
            let n: u64 = digits.parse().map_err(|_| overflow())?;
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let mult: u64 = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                _ => return Err(invalid()),
            };
            let part = n.checked_mul(mult).ok_or_else(overflow)?;
            total_ms = total_ms.checked_add(part).ok_or_else(overflow)?;
            rest = tail;
        }
        Ok(DurationSpec(Duration::from_millis(total_ms)))
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// A number of CPUs, written `1`, `0.5` or in millicores `500m`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Cpus(pub f64);

impl Cpus {
    /// The CFS quota, in microseconds, for the given period in microseconds (rounded down,
    /// so never more than `self` CPUs).
    pub fn quota_for_period(self, period_us: u64) -> i64 {
        let q = (self.0 * period_us as f64).floor();
        if q >= i64::MAX as f64 {
            i64::MAX
        } else {
            q as i64
        }
    }
}

impl FromStr for Cpus {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || QuantityError::Invalid {
            kind: "cpus",
            text: text.to_string(),
            expected: CPUS_EXPECTED,
        };
        let t = text.trim();
        let value = if let Some(milli) = t.strip_suffix('m') {
            milli.parse::<u64>().map_err(|_| invalid())? as f64 / 1000.0
        } else {
            t.parse::<f64>().map_err(|_| invalid())?
        };
        Cpus::checked(value).ok_or_else(invalid)
    }
}

impl Cpus {
    fn checked(value: f64) -> Option<Self> {
        (value.is_finite() && (0.001..=4096.0).contains(&value)).then_some(Cpus(value))
    }
}

/// Accepts a string (parsed with `FromStr`) or an unsigned integer (converted with `from_int`).
struct StrOrInt<T> {
    expecting: &'static str,
    from_int: fn(u64) -> Option<T>,
    from_float: fn(f64) -> Option<T>,
}

impl<'de, T> Visitor<'de> for StrOrInt<T>
where
    T: FromStr<Err = QuantityError>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.from_int)(v)
            .ok_or_else(|| E::custom(format!("{v} is out of range: expected {}", self.expecting)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        match u64::try_from(v) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::custom(format!(
                "{v} is negative: expected {}",
                self.expecting
            ))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        (self.from_float)(v)
            .ok_or_else(|| E::custom(format!("{v} is not valid: expected {}", self.expecting)))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrOrInt {
            expecting: SIZE_EXPECTED,
            from_int: |n| Some(ByteSize(n)),
            from_float: |_| None,
        })
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrOrInt {
            expecting: DURATION_EXPECTED,
            from_int: |n| Some(DurationSpec(Duration::from_secs(n))),
            from_float: |_| None,
        })
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrOrInt {
            expecting: CPUS_EXPECTED,
            from_int: |n| Cpus::checked(n as f64),
            from_float: Cpus::checked,
        })
    }
}

impl Serialize for Cpus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: bytes as an integer, or a number with a unit Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000).",
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+(Ki|Mi|Gi|Ti|k|K|M|G|T)?$"}
            ],
            "examples": ["256Mi", "1Gi"]
        })
    }
}

impl JsonSchema for DurationSpec {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: integer seconds, or parts with units h, m, s, ms (e.g. 300s, 5m, 1h30m).",
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^([0-9]+(h|m|s|ms))+$"}
            ],
            "examples": ["300s", "5m"]
        })
    }
}

impl JsonSchema for Cpus {
    fn schema_name() -> Cow<'static, str> {
        "Cpus".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A number of CPUs (e.g. 1, 0.5) or millicores (e.g. 500m).",
            "oneOf": [
                {"type": "number", "minimum": 0.001, "maximum": 4096},
                {"type": "string", "pattern": "^([0-9]+m|[0-9]+(\\.[0-9]+)?)$"}
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("256Mi".parse::<ByteSize>(), Ok(ByteSize(256 << 20)));
        assert_eq!("1Gi".parse::<ByteSize>(), Ok(ByteSize(1 << 30)));
        assert_eq!("512M".parse::<ByteSize>(), Ok(ByteSize(512_000_000)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert!("256Xi".parse::<ByteSize>().is_err());
        assert!("Mi".parse::<ByteSize>().is_err());
        assert!("-1".parse::<ByteSize>().is_err());
        assert!("99999999999Ti".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(256 << 20).to_string(), "256Mi");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn durations_parse_with_units() {
        let secs = |t: &str| t.parse::<DurationSpec>().map(|d| d.0.as_millis());
        assert_eq!(secs("300s"), Ok(300_000));
        assert_eq!(secs("5m"), Ok(300_000));
        assert_eq!(secs("1h30m"), Ok(5_400_000));
        assert_eq!(secs("1500ms"), Ok(1500));
        assert_eq!(secs("42"), Ok(42_000));
        assert!(secs("5x").is_err());
        assert!(secs("s").is_err());
        assert!(secs("").is_err());
        assert_eq!(DurationSpec(Duration::from_secs(300)).to_string(), "300s");
    }

    #[test]
    fn cpus_parse_as_numbers_or_millicores() {
        assert_eq!("500m".parse::<Cpus>(), Ok(Cpus(0.5)));
        assert_eq!("1.5".parse::<Cpus>(), Ok(Cpus(1.5)));
        assert!("0".parse::<Cpus>().is_err());
        assert!("0.0001".parse::<Cpus>().is_err());
        assert_eq!(Cpus(1.0 / 3.0).quota_for_period(100_000), 33_333);
        assert!("NaN".parse::<Cpus>().is_err());
        assert_eq!(Cpus(1.5).quota_for_period(100_000), 150_000);
    }
}
