//! The validated ad request every wire format is parsed into before the engine sees it.

use crate::ids::{BreakId, ContentId, RequestId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;

/// Longest deadline a caller may ask for; beyond it a "real-time" decision is no longer real time.
pub const MAX_TMAX: Duration = Duration::from_secs(10);
/// Most breaks one request may carry (a long-form title has a handful).
pub const MAX_BREAKS: usize = 32;
/// Most ads one break may hold.
pub const MAX_ADS_PER_BREAK: u32 = 32;
/// Longest break, in seconds.
pub const MAX_BREAK_SECONDS: u32 = 3600;

/// Why a request was refused, naming the field at fault as a JSON path (`breaks[0].max_ads`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RequestError {
    /// Path of the offending field, e.g. `breaks[1].max_duration_s`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl RequestError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The kind of screen the ad plays on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// Connected TV or set-top box.
    #[serde(alias = "ctv")]
    Tv,
    /// Phone.
    Mobile,
    /// Tablet.
    Tablet,
    /// Desktop or laptop browser.
    Desktop,
    /// Anything else (game console, car screen, …).
    Other,
}

impl Device {
    /// Every device, in a fixed order (feature one-hot encodings rely on it).
    pub const ALL: [Device; 5] = [
        Device::Tv,
        Device::Mobile,
        Device::Tablet,
        Device::Desktop,
        Device::Other,
    ];

    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Tv => "tv",
            Device::Mobile => "mobile",
            Device::Tablet => "tablet",
            Device::Desktop => "desktop",
            Device::Other => "other",
        }
    }
}

/// Where a break sits in the content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BreakPosition {
    /// Before the content starts.
    Preroll,
    /// Inside the content.
    #[default]
    Midroll,
    /// After the content ends.
    Postroll,
}

/// The viewer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Viewer id; hashing it assigns experiments, and caps count per id.
    pub id: UserId,
    /// ISO 3166-1 alpha-2 country code, upper case.
    pub country: String,
    /// The screen.
    pub device: Device,
}

/// What is being watched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Content {
    /// Content id.
    pub id: ContentId,
    /// Genre, lower case (`drama`, `sports`, …).
    pub genre: String,
    /// Whether this is a live stream (live events get priority).
    pub live: bool,
}

/// One ad break to fill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdBreak {
    /// The caller's id of the break.
    pub id: BreakId,
    /// Pre-, mid- or post-roll.
    pub position: BreakPosition,
    /// At most this many ads.
    pub max_ads: u32,
    /// At most this many seconds of ads in total.
    pub max_duration_s: u32,
}

/// A validated ad request. Construct it through [`AdRequest::validate`] at the edge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdRequest {
    /// The caller's request id.
    pub request_id: RequestId,
    /// The viewer.
    pub user: User,
    /// The content.
    pub content: Content,
    /// The breaks to fill, in playback order.
    pub breaks: Vec<AdBreak>,
    /// The caller's deadline, if it set one; the server's default applies otherwise.
    #[serde(with = "opt_duration_ms")]
    pub tmax: Option<Duration>,
}

impl AdRequest {
    /// Checks the invariants the engine relies on, and normalises case of country and genre.
    pub fn validate(mut self) -> Result<Self, RequestError> {
        if self.request_id.as_str().is_empty() {
            return Err(RequestError::new("request_id", "must not be empty"));
        }
        if self.user.id.as_str().is_empty() {
            return Err(RequestError::new("user.id", "must not be empty"));
        }
        let country = self.user.country.trim().to_ascii_uppercase();
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(RequestError::new(
                "user.country",
                format!(
                    "must be a two-letter ISO 3166-1 code, got {:?}",
                    self.user.country
                ),
            ));
        }
        self.user.country = country;
        self.content.genre = self.content.genre.trim().to_ascii_lowercase();
        if self.breaks.is_empty() {
            return Err(RequestError::new("breaks", "must hold at least one break"));
        }
        if self.breaks.len() > MAX_BREAKS {
            return Err(RequestError::new(
                "breaks",
                format!("at most {MAX_BREAKS} breaks per request"),
            ));
        }
        let mut seen = HashSet::new();
        for (i, b) in self.breaks.iter().enumerate() {
            if b.id.as_str().is_empty() {
                return Err(RequestError::new(
                    format!("breaks[{i}].id"),
                    "must not be empty",
                ));
            }
            if !seen.insert(b.id.clone()) {
                return Err(RequestError::new(
                    format!("breaks[{i}].id"),
                    format!("duplicate break id {:?}", b.id.as_str()),
                ));
            }
            if b.max_ads == 0 || b.max_ads > MAX_ADS_PER_BREAK {
                return Err(RequestError::new(
                    format!("breaks[{i}].max_ads"),
                    format!("must be between 1 and {MAX_ADS_PER_BREAK}"),
                ));
            }
            if b.max_duration_s == 0 || b.max_duration_s > MAX_BREAK_SECONDS {
                return Err(RequestError::new(
                    format!("breaks[{i}].max_duration_s"),
                    format!("must be between 1 and {MAX_BREAK_SECONDS} seconds"),
                ));
            }
        }
        if let Some(t) = self.tmax {
            if t.is_zero() || t > MAX_TMAX {
                return Err(RequestError::new(
                    "tmax_ms",
                    format!("must be between 1 and {} ms", MAX_TMAX.as_millis()),
                ));
            }
        }
        Ok(self)
    }
}

mod opt_duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_micros() as f64 / 1000.0)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let ms: Option<f64> = Option::deserialize(d)?;
        Ok(ms.map(|ms| Duration::from_micros((ms * 1000.0) as u64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> AdRequest {
        AdRequest {
            request_id: "r-1".into(),
            user: User {
                id: "u-1".into(),
                country: "us".into(),
                device: Device::Tv,
            },
            content: Content {
                id: "t-1".into(),
                genre: " Drama".into(),
                live: false,
            },
            breaks: vec![AdBreak {
                id: "b1".into(),
                position: BreakPosition::Midroll,
                max_ads: 4,
                max_duration_s: 90,
            }],
            tmax: None,
        }
    }

    #[test]
    fn normalises_country_and_genre() {
        let r = request().validate().unwrap();
        assert_eq!(r.user.country, "US");
        assert_eq!(r.content.genre, "drama");
    }

    #[test]
    fn names_the_field_at_fault() {
        let mut r = request();
        r.breaks[0].max_ads = 0;
        assert_eq!(r.validate().unwrap_err().field, "breaks[0].max_ads");

        let mut r = request();
        r.breaks.push(r.breaks[0].clone());
        assert_eq!(r.validate().unwrap_err().field, "breaks[1].id");

        let mut r = request();
        r.user.country = "USA".into();
        assert_eq!(r.validate().unwrap_err().field, "user.country");

        let mut r = request();
        r.breaks.clear();
        assert_eq!(r.validate().unwrap_err().field, "breaks");

        let mut r = request();
        r.tmax = Some(Duration::from_secs(60));
        assert_eq!(r.validate().unwrap_err().field, "tmax_ms");
    }
}
