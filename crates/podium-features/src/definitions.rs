//! Feature definitions file: which entities carry which features, and for windowed aggregations
//! what they fold (event type, field, window). Parsed once at start-up into checked types; it does
//! not evaluate anything (see [`crate::tiles`] and [`crate::stream`]).

use crate::signals::SourceDef;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An entity a feature is keyed by; its store key is `"<entity>:<id>"`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    /// The viewer.
    User,
    /// The viewer's device.
    Device,
    /// A line item (campaign flight).
    LineItem,
    /// An advertiser.
    Advertiser,
    /// A piece of content (show, episode, channel).
    Content,
}

impl Entity {
    /// Name used in store keys and files.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::User => "user",
            Entity::Device => "device",
            Entity::LineItem => "line_item",
            Entity::Advertiser => "advertiser",
            Entity::Content => "content",
        }
    }

    /// Every entity, in a fixed order.
    pub const ALL: [Entity; 5] = [
        Entity::User,
        Entity::Device,
        Entity::LineItem,
        Entity::Advertiser,
        Entity::Content,
    ];
}

/// Kinds of events the stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// An ad was shown.
    Impression,
    /// An ad was clicked.
    Click,
    /// An ad played to the end.
    Completion,
    /// Content playback started.
    Play,
    /// An ad started playing (VAST `start`).
    Start,
    /// An ad played a quarter through.
    FirstQuartile,
    /// An ad played half through.
    Midpoint,
    /// An ad played three quarters through.
    ThirdQuartile,
    /// The player could not play an ad (VAST `Error`).
    Error,
}

impl EventType {
    /// Parses the wire name; `None` for a type Podium does not know.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "impression" => Some(Self::Impression),
            "click" => Some(Self::Click),
            "completion" => Some(Self::Completion),
            "play" => Some(Self::Play),
            // VAST's own names are accepted beside ours, so tracking URLs can pass them through.
            "complete" => Some(Self::Completion),
            "start" => Some(Self::Start),
            "first_quartile" | "firstQuartile" => Some(Self::FirstQuartile),
            "midpoint" => Some(Self::Midpoint),
            "third_quartile" | "thirdQuartile" => Some(Self::ThirdQuartile),
            "error" => Some(Self::Error),
            _ => None,
        }
    }
}

/// An event field an aggregation reads: the numeric `value`, or an entity id (for `distinct`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventField {
    /// The numeric `value` of the event.
    Value,
    /// `user_id`.
    UserId,
    /// `device_id`.
    DeviceId,
    /// `line_item_id`.
    LineItemId,
    /// `advertiser_id`.
    AdvertiserId,
    /// `content_id`.
    ContentId,
}

/// A windowed aggregation function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Number of events (having `field`, when one is named).
    Count,
    /// Sum of `value`.
    Sum,
    /// Mean of `value`.
    Mean,
    /// `value` of the latest event by timestamp.
    Last,
    /// Approximate number of distinct values of `field` (HyperLogLog).
    Distinct,
}

/// A windowed aggregation, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowSpec {
    /// Which function.
    pub aggregation: Aggregation,
    /// Events of this type are folded.
    pub event: EventType,
    /// The event field read, if any.
    pub field: Option<EventField>,
    /// Window length; the window at time t is (t - window, t] at tile granularity.
    pub window: Duration,
    /// Tile length; divides `window`.
    pub tile: Duration,
}

/// How a feature's value is produced.
#[derive(Clone, Debug, PartialEq)]
pub enum FeatureKind {
    /// Written to the online store by some other job (batch, backfill).
    Stored,
    /// Folded from the event stream.
    Aggregation(WindowSpec),
}

/// One feature, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureDef {
    /// Name models refer to it by.
    pub name: String,
    /// Entity it is keyed by.
    pub entity: Entity,
    /// Stored or aggregated.
    pub kind: FeatureKind,
    /// Value when nothing is known or the value is older than `ttl`.
    pub default: f32,
    /// Freshness: an aggregation with no event for this long reads as `default`.
    pub ttl: Duration,
}

/// A definitions file, checked: features in file order, then the real-time signal sources.
#[derive(Clone, Debug, PartialEq)]
pub struct Definitions {
    features: Vec<FeatureDef>,
    sources: Vec<SourceDef>,
}

/// A definitions file that could not be read or is wrong; names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The file could not be read.
    #[error("feature definitions {file}: cannot read: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or a field has the wrong type or an unknown value.
    #[error("feature definitions {file}: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message (with line, column and field).
        message: String,
    },
    /// A feature is well-formed TOML but does not make sense.
    #[error("feature definitions {file}: feature `{feature}`, field `{field}`: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The feature's name.
        feature: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A signal source does not make sense.
    #[error("feature definitions {file}: source `{source_name}`, field `{field}`: {message}")]
    Source {
        /// The file.
        file: PathBuf,
        /// The source's name.
        source_name: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, rename = "feature")]
    features: Vec<RawFeature>,
    #[serde(default, rename = "source")]
    sources: Vec<crate::signals::RawSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    name: String,
    entity: Entity,
    #[serde(default)]
    aggregation: Option<Aggregation>,
    #[serde(default)]
    event: Option<EventType>,
    #[serde(default)]
    field: Option<EventField>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    tile: Option<String>,
    default: f32,
    ttl: String,
}

/// Parses `250ms`, `30s`, `5m`, `1h`, `7d` (a positive integer and one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit (ms, s, m, h or d)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` does not start with a number"))?;
    let millis: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h or d)")),
    };
    if n == 0 {
        return Err(format!("`{s}` is zero"));
    }
    n.checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// The default tile for a window: 5 min tiles up to 1 h, hourly tiles beyond, so that a read
/// touches at most 168 tiles for a 7 d window.
pub fn default_tile(window: Duration) -> Duration {
    if window <= Duration::from_secs(3600) {
        Duration::from_secs(300).min(window)
    } else {
        Duration::from_secs(3600)
    }
}

impl Definitions {
    /// Reads and checks a definitions file.
    pub fn load(path: &Path) -> Result<Self, DefinitionError> {
        let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Io {
            file: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks definitions given as TOML text; `file` is only used in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, DefinitionError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| DefinitionError::Syntax {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let mut features = Vec::with_capacity(raw.features.len());
        let mut seen = std::collections::HashSet::new();
        for f in raw.features {
            let invalid = |field: &'static str, message: String| DefinitionError::Invalid {
                file: file.to_owned(),
                feature: f.name.clone(),
                field,
                message,
            };
            if f.name.is_empty() {
                return Err(invalid("name", "is empty".into()));
            }
            if !seen.insert(f.name.clone()) {
                return Err(invalid("name", "is defined twice".into()));
            }
            if !f.default.is_finite() {
                return Err(invalid("default", "is not a finite number".into()));
            }
            let ttl = parse_duration(&f.ttl).map_err(|m| invalid("ttl", m))?;
            let kind = match f.aggregation {
                None => {
                    for (field, present) in [
                        ("event", f.event.is_some()),
                        ("field", f.field.is_some()),
                        ("window", f.window.is_some()),
                        ("tile", f.tile.is_some()),
                    ] {
                        if present {
                            return Err(invalid(
                                field,
                                "only applies to an aggregation (set `aggregation`)".into(),
                            ));
                        }
                    }
                    FeatureKind::Stored
                }
                Some(aggregation) => {
                    let event = f
                        .event
                        .ok_or_else(|| invalid("event", "is required for an aggregation".into()))?;
                    let window_text = f.window.as_deref().ok_or_else(|| {
                        invalid("window", "is required for an aggregation".into())
                    })?;
                    let window = parse_duration(window_text).map_err(|m| invalid("window", m))?;
                    let tile = match &f.tile {
                        Some(t) => parse_duration(t).map_err(|m| invalid("tile", m))?,
                        None => default_tile(window),
                    };
                    if window.as_millis() % tile.as_millis() != 0 {
                        return Err(invalid(
                            "tile",
                            format!("{tile:?} does not divide the window {window:?}"),
                        ));
                    }
                    match (aggregation, f.field) {
                        (Aggregation::Sum | Aggregation::Mean | Aggregation::Last, None) => {
                            return Err(invalid(
                                "field",
                                format!("{aggregation:?} needs `field = \"value\"`"),
                            ))
                        }
                        (Aggregation::Sum | Aggregation::Mean | Aggregation::Last, Some(fl))
                            if fl != EventField::Value =>
                        {
                            return Err(invalid(
                                "field",
                                format!("{aggregation:?} reads a number: only `value` fits"),
                            ))
                        }
                        (Aggregation::Distinct, None) => {
                            return Err(invalid("field", "distinct needs a field to count".into()))
                        }
                        _ => {}
                    }
                    FeatureKind::Aggregation(WindowSpec {
                        aggregation,
                        event,
                        field: f.field,
                        window,
                        tile,
                    })
                }
            };
            features.push(FeatureDef {
                name: f.name,
                entity: f.entity,
                kind,
                default: f.default,
                ttl,
            });
        }
        let names = seen;
        let sources = crate::signals::check_sources(raw.sources, &names, file)?;
        Ok(Self { features, sources })
    }

    /// The real-time signal sources (`[[source]]`), in file order.
    pub fn sources(&self) -> &[SourceDef] {
        &self.sources
    }

    /// All features, in file order.
    pub fn features(&self) -> &[FeatureDef] {
        &self.features
    }

    /// Features of one entity in file order: the order of that entity's stored vector.
    pub fn of(&self, entity: Entity) -> impl Iterator<Item = &FeatureDef> {
        self.features.iter().filter(move |f| f.entity == entity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[feature]]
name = "user_age_bucket"
entity = "user"
default = 0.0
ttl = "30d"

[[feature]]
name = "user_impressions_1h"
entity = "user"
aggregation = "count"
event = "impression"
window = "1h"
default = 0.0
ttl = "1d"

[[feature]]
name = "li_watch_mean_7d"
entity = "line_item"
aggregation = "mean"
event = "completion"
field = "value"
window = "7d"
default = 0.5
ttl = "7d"

[[feature]]
name = "user_distinct_content_1d"
entity = "user"
aggregation = "distinct"
event = "play"
field = "content_id"
window = "1d"
tile = "2h"
default = 0.0
ttl = "1d"
"#;

    fn parse(t: &str) -> Result<Definitions, DefinitionError> {
        Definitions::parse(t, Path::new("features.toml"))
    }

    #[test]
    fn parses_a_good_file() {
        let d = parse(GOOD).unwrap();
        assert_eq!(d.features().len(), 4);
        assert_eq!(d.features()[0].kind, FeatureKind::Stored);
        let FeatureKind::Aggregation(w) = &d.features()[1].kind else {
            panic!("not an aggregation")
        };
        assert_eq!(w.window, Duration::from_secs(3600));
        assert_eq!(w.tile, Duration::from_secs(300));
        let FeatureKind::Aggregation(w) = &d.features()[3].kind else {
            panic!("not an aggregation")
        };
        assert_eq!(w.tile, Duration::from_secs(7200));
        assert_eq!(w.field, Some(EventField::ContentId));
        assert_eq!(d.of(Entity::User).count(), 3);
    }

    fn err(t: &str) -> String {
        parse(t).unwrap_err().to_string()
    }

    #[test]
    fn bad_files_name_file_feature_and_field() {
        let e = err(&GOOD.replace("window = \"7d\"", "window = \"7w\""));
        assert!(
            e.contains("features.toml") && e.contains("li_watch_mean_7d"),
            "{e}"
        );
        assert!(e.contains("`window`") && e.contains("unknown unit"), "{e}");

        let e = err(&GOOD.replace("field = \"value\"", ""));
        assert!(
            e.contains("`field`") && e.contains("li_watch_mean_7d"),
            "{e}"
        );

        let e = err(&GOOD.replace("event = \"impression\"", "event = \"view\""));
        assert!(e.contains("features.toml") && e.contains("view"), "{e}");

        let e = err(&GOOD.replace("tile = \"2h\"", "tile = \"7h\""));
        assert!(e.contains("`tile`") && e.contains("does not divide"), "{e}");

        let e = err(&GOOD.replace("user_age_bucket", "user_impressions_1h"));
        assert!(e.contains("defined twice"), "{e}");

        let e = err(&GOOD.replace("entity = \"line_item\"", "entity = \"campaign\""));
        assert!(e.contains("campaign"), "{e}");

        let e = err(&format!("{GOOD}\n[[feature]]\nname = \"x\"\nentity = \"user\"\ndefault = 0\nttl = \"1h\"\nwindow = \"1h\"\n"));
        assert!(e.contains("feature `x`") && e.contains("`window`"), "{e}");

        let e = err(&GOOD.replace("ttl = \"30d\"", "tll = \"30d\""));
        assert!(e.contains("tll"), "{e}");

        let e = Definitions::load(Path::new("/nonexistent/features.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/features.toml"), "{e}");
    }

    const SOURCE: &str = r#"
[[source]]
name = "session"
protocol = "http"
url = "http://127.0.0.1:9100/signals"
fields = ["user.id", "content.id"]
timeout = "15ms"
cache_ttl = "30s"
[[source.feature]]
name = "session_depth"
default = 0.0
"#;

    #[test]
    fn sources_parse_and_bad_ones_name_the_source_and_field() {
        let d = parse(&format!("{GOOD}{SOURCE}")).unwrap();
        let s = &d.sources()[0];
        assert_eq!(s.timeout, Duration::from_millis(15));
        assert_eq!(s.cache_ttl, Some(Duration::from_secs(30)));
        assert_eq!(s.features[0].field, "session_depth");
        assert_eq!(s.fields.len(), 2);
        assert_eq!(s.breaker.failures, crate::signals::DEFAULT_BREAKER_FAILURES);

        let bad = |edit: &dyn Fn(&str) -> String| err(&format!("{GOOD}{}", edit(SOURCE)));
        let e = bad(&|s| s.replace("\"user.id\"", "\"user.age\""));
        assert!(
            e.contains("features.toml") && e.contains("source `session`") && e.contains("user.age"),
            "{e}"
        );
        let e = bad(&|s| s.replace("http://127.0.0.1:9100", "https://example.com"));
        assert!(e.contains("`url`") && e.contains("http://"), "{e}");
        let e = bad(&|s| s.replace("15ms", "15"));
        assert!(e.contains("`timeout`") && e.contains("no unit"), "{e}");
        let e = bad(&|s| s.replace("cache_ttl", "hedge_after"));
        assert!(
            e.contains("`hedge_after`") && e.contains("idempotent"),
            "{e}"
        );
        let e = bad(&|s| s.replace("protocol = \"http\"", "protocol = \"soap\""));
        assert!(e.contains("soap"), "{e}");
        let e = bad(&|s| s.replace("session_depth", "user_age_bucket"));
        assert!(e.contains("user_age_bucket") && e.contains("twice"), "{e}");
        let e = bad(&|s| {
            s.replace(
                "[[source.feature]]\nname = \"session_depth\"\ndefault = 0.0\n",
                "",
            )
        });
        assert!(e.contains("at least one feature"), "{e}");
        let e = err(&format!("{GOOD}{SOURCE}{SOURCE}").replacen("session_depth", "x", 1));
        assert!(e.contains("defined twice"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("12").is_err());
    }
}
