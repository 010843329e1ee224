//! Where a Kafka record's event time comes from (`--event-time`). The gate must see the same
//! time for the same record in blue and green, so it comes from the record, never the clock.

use std::fmt;
use std::str::FromStr;

use kafka_protocol::records::{Record, TimestampType};
use thiserror::Error;

/// The source of a record's event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTimeSource {
    /// The record's `CreateTime` timestamp (what the DataStream `KafkaSink` sets from the
    /// element's timestamp, and Flink SQL from a writable `timestamp` metadata column).
    RecordTimestamp,
    /// A field of the JSON value, by JSON pointer (`/ts`, `/meta/eventTime`): a number of ms
    /// since the epoch, or an RFC 3339 string.
    Json(String),
    /// A header's value: decimal ms since the epoch (ASCII), or 8 bytes big-endian.
    Header(String),
}

/// A `--event-time` value that names no source.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error(
    "unknown event-time source `{0}`; expected `record-timestamp`, `json:/POINTER` or `header:NAME`"
)]
pub struct UnknownSource(String);

impl FromStr for EventTimeSource {
    type Err = UnknownSource;

    fn from_str(s: &str) -> Result<Self, UnknownSource> {
        if s == "record-timestamp" {
            Ok(Self::RecordTimestamp)
        } else if let Some(p) = s.strip_prefix("json:").filter(|p| p.starts_with('/')) {
            Ok(Self::Json(p.to_owned()))
        } else if let Some(h) = s.strip_prefix("header:").filter(|h| !h.is_empty()) {
            Ok(Self::Header(h.to_owned()))
        } else {
            Err(UnknownSource(s.to_owned()))
        }
    }
}

impl fmt::Display for EventTimeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RecordTimestamp => f.write_str("record-timestamp"),
            Self::Json(p) => write!(f, "json:{p}"),
            Self::Header(h) => write!(f, "header:{h}"),
        }
    }
}

/// Why a record has no usable event time (the client is told, and it is counted).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum NoEventTime {
    /// No `CreateTime` (a negative timestamp, or `LogAppendTime`).
    #[error("the record has no CreateTime timestamp (sluice's --event-time is record-timestamp)")]
    NoTimestamp,
    /// The value is not JSON.
    #[error("the record value is not JSON (sluice's --event-time is json:{0})")]
    NotJson(String),
    /// The pointer finds nothing usable.
    #[error("the JSON value has no event time at {0} (a number of ms or an RFC 3339 string)")]
    NoField(String),
    /// The header is missing or not a time.
    #[error("the record has no header {0} holding an event time (decimal ms, or 8 bytes)")]
    NoHeader(String),
}

impl EventTimeSource {
    /// The record's event time in ms since the epoch.
    pub fn of(&self, record: &Record) -> Result<i64, NoEventTime> {
        match self {
            Self::RecordTimestamp => (record.timestamp_type == TimestampType::Creation
                && record.timestamp >= 0)
                .then_some(record.timestamp)
                .ok_or(NoEventTime::NoTimestamp),
            Self::Json(pointer) => {
                let value: serde_json::Value = record
                    .value
                    .as_deref()
                    .and_then(|v| serde_json::from_slice(v).ok())
                    .ok_or_else(|| NoEventTime::NotJson(pointer.clone()))?;
                let field = value.pointer(pointer);
                field
                    .and_then(serde_json::Value::as_i64)
                    .or_else(|| {
                        let s = field?.as_str()?;
                        let t = humantime::parse_rfc3339_weak(s).ok()?;
                        let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
                        i64::try_from(ms).ok()
                    })
                    .ok_or_else(|| NoEventTime::NoField(pointer.clone()))
            }
            Self::Header(name) => {
                let v = record
                    .headers
                    .iter()
                    .find(|(k, _)| k.as_str() == name.as_str())
                    .and_then(|(_, v)| v.as_deref())
                    .ok_or_else(|| NoEventTime::NoHeader(name.clone()))?;
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .or_else(|| <[u8; 8]>::try_from(v).ok().map(i64::from_be_bytes))
                    .ok_or_else(|| NoEventTime::NoHeader(name.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::protocol::StrBytes;

    fn record(ts: i64, value: &str, headers: &[(&str, &[u8])]) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: ts,
            key: None,
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        StrBytes::from_string((*k).into()),
                        Some(Bytes::copy_from_slice(v)),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn each_source_reads_its_field_and_names_what_is_missing() {
        let r = record(
            1_700,
            r#"{"ts": 42, "at": "2023-11-14T22:13:20Z"}"#,
            &[("t", b"99"), ("b", &7i64.to_be_bytes())],
        );
        let src = |s: &str| s.parse::<EventTimeSource>().unwrap();
        assert_eq!(src("record-timestamp").of(&r), Ok(1_700));
        assert_eq!(src("json:/ts").of(&r), Ok(42));
        assert_eq!(src("json:/at").of(&r), Ok(1_700_000_000_000));
        assert_eq!(src("header:t").of(&r), Ok(99));
        assert_eq!(src("header:b").of(&r), Ok(7));
        assert_eq!(
            src("json:/nope").of(&r),
            Err(NoEventTime::NoField("/nope".into()))
        );
        assert_eq!(
            src("header:x").of(&r),
            Err(NoEventTime::NoHeader("x".into()))
        );
        assert_eq!(
            src("record-timestamp").of(&record(-1, "", &[])),
            Err(NoEventTime::NoTimestamp)
        );
        assert!(matches!(
            src("json:/ts").of(&record(1, "not json", &[])),
            Err(NoEventTime::NotJson(_))
        ));
        for bad in ["", "json:ts", "header:", "clock"] {
            assert!(bad.parse::<EventTimeSource>().is_err(), "{bad}");
        }
        assert_eq!(src("json:/a/b").to_string(), "json:/a/b");
    }
}
