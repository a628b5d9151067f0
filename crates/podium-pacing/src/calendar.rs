//! The calendar of live events: one-off spikes of traffic that planners know in advance (a final,
//! a concert), with the audience they expect.
//!
//! A file of `[[event]]` tables (`events.toml`):
//!
//! ```toml
//! [[event]]
//! id = "cup-final"                 # the `content.event_id` its requests carry
//! name = "Cup final"               # optional
//! start = "2026-11-15T19:00:00Z"   # RFC 3339
//! end = "2026-11-15T22:00:00Z"
//! expected_requests = 120000       # planners' estimate of the ad requests it brings
//! genre = "sports"                 # optional: the genre its streams carry
//! country = "US"                   # optional: the market it is mainly watched in
//! ```
//!
//! Forecasting keeps an event's traffic apart from the baseline (its requests carry its id), and
//! adds a future event's expected requests to the forecast of the hours it spans.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// One live event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveEvent {
    /// The id its requests carry in `content.event_id`.
    pub id: String,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Start, RFC 3339.
    pub start: String,
    /// End (exclusive), RFC 3339.
    pub end: String,
    /// Ad requests the event is expected to bring over its span.
    pub expected_requests: u64,
    /// Genre of its streams, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genre: Option<String>,
    /// The market it is mainly watched in (ISO country code), when known: a home match draws
    /// most of its audience there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

impl LiveEvent {
    /// Start and end, ms since the UTC epoch.
    pub fn span_ms(&self) -> Result<(i64, i64), String> {
        let at = |what: &str, s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| {
                    format!(
                        "event {:?}: {what} {s:?} is not an RFC 3339 time: {e}",
                        self.id
                    )
                })
        };
        let (start, end) = (at("start", &self.start)?, at("end", &self.end)?);
        if end <= start {
            return Err(format!(
                "event {:?}: end {} is not after start {}",
                self.id, self.end, self.start
            ));
        }
        Ok((start, end))
    }
}

/// The events of a calendar file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calendar {
    /// The events, in any order.
    #[serde(default, rename = "event")]
    pub events: Vec<LiveEvent>,
}

impl Calendar {
    /// Reads and checks a calendar file; errors name the file and the problem.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks calendar text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cal: Calendar = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut ids = std::collections::HashSet::new();
        for e in &cal.events {
            e.span_ms()?;
            if !ids.insert(e.id.as_str()) {
                return Err(format!("event {:?} is listed twice", e.id));
            }
        }
        Ok(cal)
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The event of an id.
    pub fn get(&self, id: &str) -> Option<&LiveEvent> {
        self.events.iter().find(|e| e.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_events_and_refuses_bad_ones() {
        let cal = Calendar::parse(
            r#"
            [[event]]
            id = "final"
            start = "2026-11-15T19:00:00Z"
            end = "2026-11-15T22:00:00Z"
            expected_requests = 1000
            genre = "sports"
            "#,
        )
        .unwrap();
        assert_eq!(cal.events.len(), 1);
        let (s, e) = cal.get("final").unwrap().span_ms().unwrap();
        assert_eq!(e - s, 3 * 3_600_000);
        assert_eq!(Calendar::parse(&cal.to_toml()).unwrap(), cal);

        let backwards = r#"
            [[event]]
            id = "x"
            start = "2026-11-15T19:00:00Z"
            end = "2026-11-15T18:00:00Z"
            expected_requests = 1
            "#;
        assert!(Calendar::parse(backwards)
            .unwrap_err()
            .contains("not after"));
        let bad_time = r#"
            [[event]]
            id = "x"
            start = "tomorrow"
            end = "2026-11-15T18:00:00Z"
            expected_requests = 1
            "#;
        assert!(Calendar::parse(bad_time).unwrap_err().contains("RFC 3339"));
        assert!(Calendar::parse("[[event]]\nid = 1").is_err());
    }
}
