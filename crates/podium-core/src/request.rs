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
    /// Region within the country (ISO 3166-2 subdivision without the country, `CA`, `ON`), upper
    /// case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Audience segments the viewer belongs to, lower case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
    /// The viewer's offset from UTC in minutes, for dayparting by local time; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset_min: Option<i32>,
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
    /// Content rating (`tv-pg`, `tv-14`, `tv-ma`, …), lower case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<String>,
    /// The live event this stream carries (a match, a concert), for event-targeted line items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
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
    /// Pod rules beyond count and length: durations, fixed slots, floors, deduplication.
    #[serde(default, flatten)]
    pub rules: PodRules,
}

/// Which ad durations a slot accepts: a range, or an exact list (OpenRTB `rqddurs`), not both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurationRule {
    /// Shortest accepted creative, seconds (0: no minimum).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_s: u32,
    /// Longest accepted creative, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_s: Option<u32>,
    /// The only accepted lengths, seconds (live TV fills exact gaps: no dead air).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exact_s: Vec<u32>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl DurationRule {
    /// Whether a creative of `d` seconds is accepted.
    pub fn admits(&self, d: u32) -> bool {
        if !self.exact_s.is_empty() {
            return self.exact_s.contains(&d);
        }
        d >= self.min_s && self.max_s.is_none_or(|m| d <= m)
    }

    /// Whether the rule accepts everything.
    pub fn is_open(&self) -> bool {
        self == &DurationRule::default()
    }

    fn check(&self, field: &str) -> Result<(), RequestError> {
        if !self.exact_s.is_empty() && (self.min_s > 0 || self.max_s.is_some()) {
            return Err(RequestError::new(
                field,
                "exact durations (rqddurs) exclude a minimum or maximum duration",
            ));
        }
        if self.exact_s.contains(&0) || self.exact_s.len() > 64 {
            return Err(RequestError::new(
                format!("{field}.exact_s"),
                "durations must be positive, at most 64 of them",
            ));
        }
        if let Some(max) = self.max_s {
            if max < self.min_s {
                return Err(RequestError::new(
                    format!("{field}.max_s"),
                    format!("{max} is below the minimum {}", self.min_s),
                ));
            }
        }
        Ok(())
    }
}

/// A place in a pod that a slot is sold for (OpenRTB `slotinpod`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotPosition {
    /// Anywhere.
    #[default]
    Any,
    /// The first ad of the pod.
    First,
    /// The last ad of the pod.
    Last,
}

/// A fixed slot of a structured pod: exactly one ad, with its own duration rule and floor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSlot {
    /// The caller's id of the slot (an OpenRTB impression id).
    pub id: String,
    /// Durations it accepts.
    #[serde(default, skip_serializing_if = "DurationRule::is_open")]
    pub durations: DurationRule,
    /// Floor of the slot, CPM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_cpm: Option<crate::Micros>,
    /// Where in the pod it plays.
    #[serde(default)]
    pub position: SlotPosition,
}

/// What must differ between any two ads of one pod (OpenRTB `poddedupe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupeKey {
    /// The creative.
    Creative,
    /// The advertiser (its domain, on the OpenRTB side).
    Advertiser,
    /// The advertiser's category.
    Category,
}

/// The rules of a pod beyond `max_ads` and `max_duration_s`, which bound its dynamic part.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRules {
    /// Durations a dynamic ad may have.
    #[serde(default, skip_serializing_if = "DurationRule::is_open")]
    pub ad_durations: DurationRule,
    /// Fixed slots (a structured pod, or the structured part of a hybrid one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<PodSlot>,
    /// Floor of every ad of the break, CPM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_cpm: Option<crate::Micros>,
    /// Floor per second of creative, CPM (OpenRTB `mincpmpersec`): a 30 s ad must clear 30 × it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_cpm_per_s: Option<crate::Micros>,
    /// What no two ads of the pod may share.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dedupe: Vec<DedupeKey>,
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
    /// Advertiser categories that must not serve (OpenRTB `bcat`), lower case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_categories: Vec<String>,
    /// Advertisers that must not serve (OpenRTB `badv`, matched against advertiser ids and
    /// domains).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_advertisers: Vec<String>,
}

impl PodRules {
    fn check(&self, field: &str) -> Result<(), RequestError> {
        self.ad_durations.check(&format!("{field}.ad_durations"))?;
        if self.slots.len() > MAX_ADS_PER_BREAK as usize {
            return Err(RequestError::new(
                format!("{field}.slots"),
                format!("at most {MAX_ADS_PER_BREAK} fixed slots"),
            ));
        }
        let mut ids = HashSet::new();
        let (mut first, mut last) = (0, 0);
        for (j, s) in self.slots.iter().enumerate() {
            let f = format!("{field}.slots[{j}]");
            if s.id.is_empty() || !ids.insert(s.id.as_str()) {
                return Err(RequestError::new(
                    format!("{f}.id"),
                    "must be non-empty and unique within the break",
                ));
            }
            s.durations.check(&format!("{f}.durations"))?;
            if s.floor_cpm.is_some_and(|m| m.0 < 0) {
                return Err(RequestError::new(
                    format!("{f}.floor_cpm"),
                    "must not be negative",
                ));
            }
            first += usize::from(s.position == SlotPosition::First);
            last += usize::from(s.position == SlotPosition::Last);
        }
        if first > 1 || last > 1 {
            return Err(RequestError::new(
                format!("{field}.slots"),
                "at most one first and one last slot",
            ));
        }
        for (name, v) in [
            ("floor_cpm", self.floor_cpm),
            ("floor_cpm_per_s", self.floor_cpm_per_s),
        ] {
            if v.is_some_and(|m| m.0 < 0) {
                return Err(RequestError::new(
                    format!("{field}.{name}"),
                    "must not be negative",
                ));
            }
        }
        Ok(())
    }
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
        if let Some(r) = &mut self.user.region {
            *r = r.trim().to_ascii_uppercase();
        }
        for s in &mut self.user.segments {
            *s = s.trim().to_ascii_lowercase();
        }
        if let Some(r) = &mut self.content.rating {
            *r = r.trim().to_ascii_lowercase();
        }
        if let Some(off) = self.user.utc_offset_min {
            if !(-16 * 60..=16 * 60).contains(&off) {
                return Err(RequestError::new(
                    "user.utc_offset_min",
                    format!("{off} is not a UTC offset (-960 to 960 minutes)"),
                ));
            }
        }
        for (i, c) in self.blocked_categories.iter_mut().enumerate() {
            *c = c.trim().to_ascii_lowercase();
            if c.is_empty() {
                return Err(RequestError::new(
                    format!("blocked_categories[{i}]"),
                    "must not be empty",
                ));
            }
        }
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
            // A structured pod may have no dynamic part; any other break needs room for an ad.
            let least = u32::from(b.rules.slots.is_empty());
            if b.max_ads < least || b.max_ads > MAX_ADS_PER_BREAK {
                return Err(RequestError::new(
                    format!("breaks[{i}].max_ads"),
                    format!("must be between {least} and {MAX_ADS_PER_BREAK}"),
                ));
            }
            if b.max_duration_s < least || b.max_duration_s > MAX_BREAK_SECONDS {
                return Err(RequestError::new(
                    format!("breaks[{i}].max_duration_s"),
                    format!("must be between {least} and {MAX_BREAK_SECONDS} seconds"),
                ));
            }
            b.rules.check(&format!("breaks[{i}]"))?;
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
                region: None,
                segments: Vec::new(),
                utc_offset_min: None,
            },
            content: Content {
                id: "t-1".into(),
                genre: " Drama".into(),
                live: false,
                rating: None,
                event_id: None,
            },
            breaks: vec![AdBreak {
                id: "b1".into(),
                position: BreakPosition::Midroll,
                max_ads: 4,
                max_duration_s: 90,
                rules: Default::default(),
            }],
            tmax: None,
            blocked_categories: Vec::new(),
            blocked_advertisers: Vec::new(),
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
