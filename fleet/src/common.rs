//! Helpers every provider shares: the wall clock in milliseconds, the human-readable durations
//! (`"30s"`, `"2m"`) their configuration tables use, and the note of host-bound providers that
//! a tenant's regions do not apply to them.

use serde::{Deserialize, Deserializer, Serializer};
use shoal_core::Millis;
use std::time::Duration;

/// Milliseconds since the Unix epoch by the host's clock; 0 if the clock is before 1970.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX))
        .unwrap_or(0)
}

/// Nanoseconds since the Unix epoch by the host's clock; 0 if the clock is before 1970.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Says once per process that `provider` runs every sandbox on its one host, the first time it
/// creates a sandbox whose tenant lists regions (the list is ignored, not refused: the host is
/// the only place there is).
pub(crate) fn note_regions_ignored(provider: &str, spec: &crate::SandboxSpec) {
    static NOTED: std::sync::Once = std::sync::Once::new();
    if !spec.regions.is_empty() {
        NOTED.call_once(|| {
            tracing::info!(
                provider,
                tenant = %spec.tenant,
                regions = ?spec.regions,
                "this provider runs sandboxes on its own host; tenants' limits.regions are ignored"
            );
        });
    }
}

/// A `Duration` written as humantime text in configuration, for `#[serde(with = ...)]`.
pub mod duration {
    use super::*;

    /// Reads `"30s"`, `"2m 30s"`, `"1h"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    /// Writes the form [`deserialize`] reads.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct T {
        #[serde(with = "duration")]
        d: Duration,
    }

    #[test]
    fn durations_read_and_write_as_text() {
        let t: T = serde_json::from_str(r#"{"d":"2m 30s"}"#).unwrap();
        assert_eq!(t.d, Duration::from_secs(150));
        let back = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<T>(&back).unwrap(), t);
        assert!(serde_json::from_str::<T>(r#"{"d":"soon"}"#).is_err());
    }

    #[test]
    fn the_clock_reads_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
        assert!(now_nanos() / 1_000_000 >= now_ms() - 1_000);
    }
}
