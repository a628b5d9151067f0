//! The native JSON API: request and response shapes of `POST /v1/decide`, and errors.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use podium_core::{
    AdBreak, AdRequest, BreakPosition, Content, Decision, Device, PodRules, StageTimings, User,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// An HTTP error with a JSON body `{"error": "...", "field": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// A 400 about one field.
    pub fn field(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let field = field.into();
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!("{field}: {message}"),
            field: Some(field),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// The answer to a body that could not be read: 413 naming `limit` when it was too large,
    /// else the rejection's own status and text.
    pub fn body(e: axum::extract::rejection::BytesRejection, limit: usize) -> Self {
        match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {limit} bytes"),
            ),
            status => ApiError::new(status, e.body_text()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.message,
            field: self.field.as_deref(),
        };
        (self.status, Json(body)).into_response()
    }
}

/// `POST /v1/decide` body, as sent. Unknown fields are ignored; known fields must have their type.
#[derive(Debug, Deserialize)]
pub struct DecideRequest {
    /// Caller's id; one is generated when absent.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The viewer.
    pub user: UserJson,
    /// What is being watched.
    pub content: ContentJson,
    /// The breaks to fill.
    pub breaks: Vec<BreakJson>,
    /// Deadline in milliseconds; the server's default applies when absent.
    #[serde(default)]
    pub tmax_ms: Option<f64>,
    /// Advertiser categories that must not serve.
    #[serde(default)]
    pub blocked_categories: Vec<String>,
    /// Advertisers (ids or domains) that must not serve.
    #[serde(default)]
    pub blocked_advertisers: Vec<String>,
}

/// The viewer, as sent.
#[derive(Debug, Deserialize)]
pub struct UserJson {
    /// Viewer id.
    pub id: String,
    /// ISO 3166-1 alpha-2 country.
    pub country: String,
    /// `tv` (or `ctv`), `mobile`, `tablet`, `desktop`, `other`.
    pub device: Device,
    /// Region within the country (`CA` for California).
    #[serde(default)]
    pub region: Option<String>,
    /// Audience segments.
    #[serde(default)]
    pub segments: Vec<String>,
    /// Offset of the viewer's local time from UTC, minutes.
    #[serde(default)]
    pub utc_offset_min: Option<i32>,
}

/// The content, as sent.
#[derive(Debug, Deserialize)]
pub struct ContentJson {
    /// Content id.
    #[serde(default)]
    pub id: String,
    /// Genre.
    pub genre: String,
    /// Live stream or not.
    #[serde(default)]
    pub live: bool,
    /// Content rating (`tv-14`, …).
    #[serde(default)]
    pub rating: Option<String>,
    /// The live event streamed.
    #[serde(default)]
    pub event_id: Option<String>,
}

/// One break, as sent. Counts are signed here so that a negative one gets a precise message.
#[derive(Debug, Deserialize)]
pub struct BreakJson {
    /// Break id.
    pub id: String,
    /// `preroll`, `midroll` (default) or `postroll`.
    #[serde(default)]
    pub position: BreakPosition,
    /// Most ads in the break.
    pub max_ads: i64,
    /// Most seconds of ads in the break.
    pub max_duration_s: i64,
    /// Durations, fixed slots, floors and deduplication of the pod.
    #[serde(flatten)]
    pub rules: PodRules,
}

static GENERATED_IDS: AtomicU64 = AtomicU64::new(0);

/// Parses a request body into a validated [`AdRequest`], naming the field at fault on error.
pub fn parse_decide(body: &[u8]) -> Result<AdRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let wire: DecideRequest = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON body: {inner}"),
            )
        } else {
            ApiError::field(path, inner)
        }
    })?;
    let to_u32 = |field: String, v: i64| -> Result<u32, ApiError> {
        u32::try_from(v)
            .map_err(|_| ApiError::field(field, format!("must be a positive integer, got {v}")))
    };
    let breaks = wire
        .breaks
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            Ok(AdBreak {
                id: b.id.as_str().into(),
                position: b.position,
                max_ads: to_u32(format!("breaks[{i}].max_ads"), b.max_ads)?,
                max_duration_s: to_u32(format!("breaks[{i}].max_duration_s"), b.max_duration_s)?,
                rules: b.rules,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let tmax = match wire.tmax_ms {
        None => None,
        Some(ms) if ms.is_finite() && ms > 0.0 && ms <= 10_000.0 => {
            Some(Duration::from_micros((ms * 1000.0) as u64))
        }
        Some(ms) => {
            return Err(ApiError::field(
                "tmax_ms",
                format!("must be between 0 and 10000 ms, got {ms}"),
            ))
        }
    };
    let request_id = wire
        .request_id
        .unwrap_or_else(|| format!("gen-{}", GENERATED_IDS.fetch_add(1, Ordering::Relaxed)));
    AdRequest {
        request_id: request_id.as_str().into(),
        user: User {
            id: wire.user.id.as_str().into(),
            country: wire.user.country,
            device: wire.user.device,
            region: wire.user.region,
            segments: wire.user.segments,
            utc_offset_min: wire.user.utc_offset_min,
        },
        content: Content {
            id: wire.content.id.as_str().into(),
            genre: wire.content.genre,
            live: wire.content.live,
            rating: wire.content.rating,
            event_id: wire.content.event_id,
        },
        breaks,
        tmax,
        blocked_categories: wire.blocked_categories,
        blocked_advertisers: wire.blocked_advertisers,
    }
    .validate()
    .map_err(|e| ApiError::field(e.field, e.message))
}

/// One ad of the response.
#[derive(Debug, Serialize, Deserialize)]
pub struct AdJson {
    /// 1-based position in the break.
    pub sequence: u32,
    /// Line item.
    pub line_item_id: String,
    /// Creative.
    pub creative_id: String,
    /// Advertiser.
    pub advertiser_id: String,
    /// Creative length.
    pub duration_s: u32,
    /// Clearing price as a CPM in currency units.
    pub price_cpm: f64,
    /// The candidate's eCPM in currency units.
    pub ecpm: f64,
    /// The fixed slot it fills, in a structured pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

/// One break of the response.
#[derive(Debug, Serialize, Deserialize)]
pub struct BreakJsonOut {
    /// The break's id.
    pub break_id: String,
    /// Ads in play order.
    pub ads: Vec<AdJson>,
    /// Total seconds of the ads.
    pub duration_s: u32,
}

/// A model that took part.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelJson {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// 0 = the model answered; 1 = its fallback prior did.
    pub tier: u8,
}

/// `POST /v1/decide` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct DecideResponse {
    /// The request's id.
    pub request_id: String,
    /// One entry per requested break.
    pub breaks: Vec<BreakJsonOut>,
    /// Models used.
    pub model_versions: Vec<ModelJson>,
    /// Per-stage wall time in microseconds.
    pub timings_us: StageTimings,
    /// Line items that passed targeting and budget.
    pub eligible: usize,
    /// Stages that fell back, and why.
    pub degraded: Vec<String>,
    /// Experiment arms that applied (`layer:arm`, or `holdout`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub experiments: Vec<String>,
}

impl From<Decision> for DecideResponse {
    fn from(d: Decision) -> Self {
        Self {
            request_id: d.request_id.to_string(),
            breaks: d
                .breaks
                .into_iter()
                .map(|b| BreakJsonOut {
                    break_id: b.break_id.to_string(),
                    duration_s: b.ads.iter().map(|a| a.duration_s).sum(),
                    ads: b
                        .ads
                        .into_iter()
                        .enumerate()
                        .map(|(i, a)| AdJson {
                            sequence: i as u32 + 1,
                            line_item_id: a.line_item_id.to_string(),
                            creative_id: a.creative_id.to_string(),
                            advertiser_id: a.advertiser_id.to_string(),
                            duration_s: a.duration_s,
                            price_cpm: a.price_cpm.as_units(),
                            ecpm: a.ecpm.as_units(),
                            slot: a.slot,
                        })
                        .collect(),
                })
                .collect(),
            model_versions: d
                .model_versions
                .into_iter()
                .map(|m| ModelJson {
                    name: m.name,
                    version: m.version,
                    tier: m.tier,
                })
                .collect(),
            timings_us: d.timings,
            eligible: d.eligible,
            degraded: d.degraded,
            experiments: d.experiments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        parse_decide(body.as_bytes()).unwrap_err()
    }

    const OK: &str = r#"{"request_id":"r-1","user":{"id":"u-1","country":"US","device":"tv"},
        "content":{"id":"t","genre":"drama","live":false},
        "breaks":[{"id":"b1","position":"midroll","max_ads":4,"max_duration_s":90}],"extra":{"x":1}}"#;

    #[test]
    fn parses_the_documented_example_and_ignores_unknown_fields() {
        let r = parse_decide(OK.as_bytes()).unwrap();
        assert_eq!(r.breaks[0].max_duration_s, 90);
        assert_eq!(r.user.device, Device::Tv);
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(&OK.replace(r#""max_ads":4"#, r#""max_ads":"four""#));
        assert_eq!(e.field.as_deref(), Some("breaks[0].max_ads"));
        let e = err(&OK.replace(r#""max_duration_s":90"#, r#""max_duration_s":-5"#));
        assert_eq!(e.field.as_deref(), Some("breaks[0].max_duration_s"));
        assert!(e.message.contains("-5"));
        let e = err(&OK.replace(r#""device":"tv""#, r#""device":"fridge""#));
        assert_eq!(e.field.as_deref(), Some("user.device"));
        let e = err(r#"{"user":{"id":"u","country":"US","device":"tv"},"content":{"genre":"x"}}"#);
        assert!(e.message.contains("breaks"), "{}", e.message);
        let e = err("{not json");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = err(&OK.replace(
            r#""breaks":[{"id":"b1","position":"midroll","max_ads":4,"max_duration_s":90}]"#,
            r#""breaks":[]"#,
        ));
        assert_eq!(e.field.as_deref(), Some("breaks"));
        let e = err(&OK.replace(
            r#""request_id":"r-1","#,
            r#""request_id":"r-1","tmax_ms":-1,"#,
        ));
        assert_eq!(e.field.as_deref(), Some("tmax_ms"));
    }
}
