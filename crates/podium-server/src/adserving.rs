//! Ad serving over the industry's wire formats: OpenRTB 2.6 bid requests (`POST
//! /openrtb2/auction`), VAST 4.2 for server-side ad insertion (`GET /v1/vast`), the tracking
//! pixels those documents point at (`GET /v1/track`), and first-price win/loss notices that teach
//! the bid shader (`GET /v1/openrtb/win`, `/loss`).
//!
//! The engine decides; this module translates. Tracking events go into the same stream as
//! `POST /v1/events`, so they are deduplicated by event id there and feed caps, features and
//! labels the same way.

use crate::api::ApiError;
use crate::app::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use podium_auction::BidShader;
use podium_core::{
    AdBreak, AdRequest, BreakDecision, BreakPosition, Content, Device, DurationRule, Micros,
    PlacedAd, PodRules, User,
};
use podium_engine::{Engine, MarketSnapshot};
use podium_openrtb::{
    bid_response, empty_vast, parse_bid_request, vast_document, AuctionKind, BidAd, VastAd,
    VastDelivery, VastEvent, VastMedia,
};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where tracking and notice URLs point, and where creatives without their own URL are served.
#[derive(Clone, Debug)]
pub struct PublicUrls {
    /// This server as players and exchanges reach it, e.g. `https://ads.example.com`.
    pub base: String,
    /// Prefix of creative files: `<creatives>/<creative id>.mp4`.
    pub creatives: String,
}

impl PublicUrls {
    /// URLs under `base` (no trailing slash), creatives under `<base>/creatives`.
    pub fn new(base: &str, creatives: Option<&str>) -> Self {
        let base = base.trim_end_matches('/').to_string();
        let creatives = creatives
            .map(|c| c.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("{base}/creatives"));
        Self { base, creatives }
    }
}

fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// What a tracking URL needs to name the ad it reports on.
struct TrackContext<'a> {
    urls: &'a PublicUrls,
    request_id: &'a str,
    user_id: &'a str,
    content_id: &'a str,
}

impl TrackContext<'_> {
    fn url(&self, event: &str, break_id: &str, seq: usize, ad: &PlacedAd) -> String {
        let seq = seq.to_string();
        let mut pairs = vec![
            ("e", event),
            ("r", self.request_id),
            ("b", break_id),
            ("s", &seq),
            ("li", ad.line_item_id.as_str()),
            ("adv", ad.advertiser_id.as_str()),
            ("u", self.user_id),
            ("c", self.content_id),
        ];
        // The impression carries its price: it is what confirms the spend.
        let price = format!("{:.6}", ad.price_cpm.as_units());
        if event == "impression" {
            pairs.push(("p", &price));
        }
        format!("{}/v1/track?{}", self.urls.base, query(&pairs))
    }

    /// The VAST ad for the `seq`-th (from 1) ad of a break.
    fn vast_ad(
        &self,
        market: &MarketSnapshot,
        brk: &BreakDecision,
        seq: usize,
        ad: &PlacedAd,
        in_pod: bool,
    ) -> VastAd {
        let li = market
            .position(&ad.line_item_id)
            .map(|i| &market.marketplace.line_items[i as usize]);
        let media_url = li
            .and_then(|li| li.creatives.iter().find(|c| c.id == ad.creative_id))
            .and_then(|c| c.media_url.clone())
            .unwrap_or_else(|| format!("{}/{}.mp4", self.urls.creatives, ad.creative_id));
        let b = brk.break_id.as_str();
        let track = |e: VastEvent, name: &str| (e, self.url(name, b, seq, ad));
        VastAd {
            id: format!("{}-{}-{seq}", self.request_id, b),
            sequence: in_pod.then_some(seq as u32),
            title: ad.line_item_id.to_string(),
            advertiser: li.map(|l| l.domain().to_string()),
            category: li.and_then(|l| l.declared_categories().into_iter().next()),
            ad_serving_id: format!("{}:{}:{seq}", self.request_id, b),
            price: Some(ad.price_cpm),
            error_urls: vec![self.url("error", b, seq, ad) + "&code=[ERRORCODE]"],
            impression_urls: vec![self.url("impression", b, seq, ad)],
            creative_id: ad.creative_id.to_string(),
            duration_s: ad.duration_s,
            media: vec![VastMedia {
                url: media_url,
                mime: "video/mp4".into(),
                width: 1920,
                height: 1080,
                bitrate: Some(4500),
                delivery: VastDelivery::Progressive,
            }],
            tracking: vec![
                track(VastEvent::Start, "start"),
                track(VastEvent::FirstQuartile, "firstQuartile"),
                track(VastEvent::Midpoint, "midpoint"),
                track(VastEvent::ThirdQuartile, "thirdQuartile"),
                track(VastEvent::Complete, "complete"),
            ],
            click_through: None,
            click_tracking: vec![self.url("click", b, seq, ad)],
            ..VastAd::default()
        }
    }
}

fn engine(state: &AppState) -> Result<&Engine, ApiError> {
    state.engine().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "models are loading; retry shortly",
        )
    })
}

/// The bid shader's segment for a request: device × genre.
pub fn shading_segment(req: &AdRequest) -> String {
    format!("{}|{}", req.user.device.as_str(), req.content.genre)
}

/// `POST /openrtb2/auction`: an OpenRTB 2.6 bid request, answered with a bid response whose
/// bids keep every pod rule of the request, or 204 No Content for no bid.
pub async fn openrtb_auction(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let body = body.map_err(|e| ApiError::body(e, crate::MAX_BODY_BYTES))?;
    let plan = parse_bid_request(&body).map_err(|e| ApiError::field(e.field, e.message))?;
    let Some(bid) = plan.bid() else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let engine = engine(&state)?;
    let decision = engine.decide(bid.request.clone(), received).await;
    state.observe(&decision, "/openrtb2/auction");
    let market = engine.market();
    let urls = state.public_urls();
    let req = &bid.request;
    let ctx = TrackContext {
        urls: &urls,
        request_id: req.request_id.as_str(),
        user_id: req.user.id.as_str(),
        content_id: req.content.id.as_str(),
    };
    let segment = shading_segment(req);
    let shader = state.shader();
    let breaks: HashMap<&str, &AdBreak> = req.breaks.iter().map(|b| (b.id.as_str(), b)).collect();
    let response = bid_response(&plan, &decision, |ad| {
        let (seq, brk) = decision
            .breaks
            .iter()
            .find_map(|b| b.ads.iter().position(|a| a == ad).map(|k| (k + 1, b)))
            .expect("the ad is from this decision");
        let li = market
            .position(&ad.line_item_id)
            .map(|i| &market.marketplace.line_items[i as usize]);
        // The least this ad may bid: its slot's or break's floor, per-second floors included.
        let floor = breaks
            .get(brk.break_id.as_str())
            .map_or(Micros::ZERO, |b| ad_floor(b, ad));
        let price = match bid.auction {
            AuctionKind::SecondPrice => ad.ecpm,
            AuctionKind::FirstPrice => shader.bid(&segment, ad.ecpm).max(floor).min(ad.ecpm),
        };
        let notice = |kind: &str| {
            format!(
                "{}/v1/openrtb/{kind}?{}&price=${{AUCTION_PRICE}}",
                urls.base,
                query(&[("seg", &segment), ("bid", &price.0.to_string())])
            )
        };
        BidAd {
            price,
            adomain: li.map(|l| l.domain().to_string()).unwrap_or_default(),
            cat: li.map(|l| l.declared_categories()).unwrap_or_default(),
            adm: vast_document(&[ctx.vast_ad(&market, brk, seq, ad, false)]),
            nurl: (bid.auction == AuctionKind::FirstPrice).then(|| notice("win")),
            burl: Some(ctx.url("impression", brk.break_id.as_str(), seq, ad)),
            crid: ad.creative_id.to_string(),
        }
    });
    Ok(match response {
        Some(mut v) => {
            // Loss notices teach the shader too (OpenRTB `lurl`).
            if bid.auction == AuctionKind::FirstPrice {
                if let Some(bids) = v["seatbid"][0]["bid"].as_array_mut() {
                    for b in bids {
                        let price = b["price"].as_f64().unwrap_or(0.0);
                        b["lurl"] = json!(format!(
                            "{}/v1/openrtb/loss?{}",
                            urls.base,
                            query(&[
                                ("seg", &segment),
                                ("bid", &Micros::from_units(price).0.to_string())
                            ])
                        ));
                    }
                }
            }
            Json(v).into_response()
        }
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// The floor an ad had to clear in its break: the break's and its slot's, and the per-second
/// floor times its length.
fn ad_floor(b: &AdBreak, ad: &PlacedAd) -> Micros {
    let slot = ad
        .slot
        .as_deref()
        .and_then(|s| b.rules.slots.iter().find(|x| x.id == s))
        .and_then(|s| s.floor_cpm)
        .unwrap_or(Micros::ZERO);
    let per_s = b
        .rules
        .floor_cpm_per_s
        .map_or(Micros::ZERO, |f| Micros(f.0 * i64::from(ad.duration_s)));
    slot.max(per_s)
        .max(b.rules.floor_cpm.unwrap_or(Micros::ZERO))
}

fn param<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    q.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::field(name, "is required"))
}

fn number<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, ApiError> {
    q.get(name)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::field(name, format!("{v:?} is not a valid number")))
        })
        .transpose()
}

static VAST_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Builds the native request of `GET /v1/vast` from its query parameters.
pub fn vast_request(q: &HashMap<String, String>) -> Result<AdRequest, ApiError> {
    let device: Device = serde_json::from_value(json!(q.get("device").map_or("tv", |s| s)))
        .map_err(|_| {
            ApiError::field(
                "device",
                "must be tv (or ctv), mobile, tablet, desktop or other",
            )
        })?;
    let position: BreakPosition =
        serde_json::from_value(json!(q.get("position").map_or("midroll", |s| s)))
            .map_err(|_| ApiError::field("position", "must be preroll, midroll or postroll"))?;
    let live = match q.get("live").map(String::as_str) {
        None | Some("") | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(v) => {
            return Err(ApiError::field(
                "live",
                format!("{v:?} is not true or false"),
            ))
        }
    };
    let max_ads: u32 =
        number(q, "max_ads")?.ok_or_else(|| ApiError::field("max_ads", "is required"))?;
    let max_duration_s: u32 = number(q, "max_duration_s")?
        .ok_or_else(|| ApiError::field("max_duration_s", "is required"))?;
    let tmax = number::<f64>(q, "tmax_ms")?
        .map(|ms| {
            if ms.is_finite() && ms > 0.0 && ms <= 10_000.0 {
                Ok(std::time::Duration::from_micros((ms * 1000.0) as u64))
            } else {
                Err(ApiError::field("tmax_ms", "must be between 0 and 10000 ms"))
            }
        })
        .transpose()?;
    let list = |name: &str| -> Vec<String> {
        q.get(name)
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let request_id = q
        .get("request_id")
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| {
            format!(
                "vast-{}-{}",
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis()),
                VAST_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )
        });
    let rules = PodRules {
        ad_durations: DurationRule {
            min_s: number(q, "min_ad_duration_s")?.unwrap_or(0),
            max_s: number(q, "max_ad_duration_s")?,
            exact_s: list("ad_durations_s")
                .iter()
                .map(|d| {
                    d.parse().map_err(|_| {
                        ApiError::field("ad_durations_s", format!("{d:?} is not a number"))
                    })
                })
                .collect::<Result<_, _>>()?,
        },
        floor_cpm: match number::<f64>(q, "floor_cpm")? {
            Some(f) if !f.is_finite() || f < 0.0 => {
                return Err(ApiError::field(
                    "floor_cpm",
                    format!("{f} is not a price: a finite CPM of 0 or more"),
                ))
            }
            f => f.map(Micros::from_units),
        },
        ..Default::default()
    };
    AdRequest {
        request_id: request_id.as_str().into(),
        user: User {
            id: param(q, "user_id")?.into(),
            country: param(q, "country")?.to_string(),
            device,
            region: q.get("region").filter(|s| !s.is_empty()).cloned(),
            segments: list("segments"),
            utc_offset_min: number(q, "utc_offset_min")?,
        },
        content: Content {
            id: q.get("content_id").map_or("", |s| s).into(),
            genre: q.get("genre").map_or("unknown", |s| s).to_string(),
            live,
            rating: q.get("rating").filter(|s| !s.is_empty()).cloned(),
            event_id: q.get("event_id").filter(|s| !s.is_empty()).cloned(),
        },
        breaks: vec![AdBreak {
            id: q.get("break_id").map_or("break", |s| s).into(),
            position,
            max_ads,
            max_duration_s,
            rules,
        }],
        tmax,
        blocked_categories: list("blocked_categories"),
        blocked_advertisers: list("blocked_advertisers"),
    }
    .validate()
    .map_err(|e| ApiError::field(e.field, e.message))
}

/// `GET /v1/vast?user_id=U&country=US&device=tv&genre=drama&max_ads=4&max_duration_s=90`: the
/// decision for one break as a VAST 4.2 document, the pod as `<Ad sequence="n">`; an empty VAST
/// for no fill.
pub async fn vast(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let req = vast_request(&q)?;
    let engine = engine(&state)?;
    let decision = engine.decide(req.clone(), received).await;
    state.observe(&decision, "/v1/vast");
    let market = engine.market();
    let urls = state.public_urls();
    let ctx = TrackContext {
        urls: &urls,
        request_id: req.request_id.as_str(),
        user_id: req.user.id.as_str(),
        content_id: req.content.id.as_str(),
    };
    let ads: Vec<VastAd> = decision
        .breaks
        .iter()
        .flat_map(|b| {
            let ctx = &ctx;
            let market = &market;
            b.ads
                .iter()
                .enumerate()
                .map(move |(k, a)| ctx.vast_ad(market, b, k + 1, a, true))
        })
        .collect();
    let doc = if ads.is_empty() {
        empty_vast(None)
    } else {
        vast_document(&ads)
    };
    Ok((
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        doc,
    )
        .into_response())
}

/// Tracking events a VAST document or a bid's billing notice may report.
const TRACKED: [&str; 8] = [
    "impression",
    "start",
    "firstQuartile",
    "midpoint",
    "thirdQuartile",
    "complete",
    "click",
    "error",
];

/// `GET /v1/track?e=EVENT&r=REQUEST&b=BREAK&s=SEQ&li=…&adv=…&u=…&c=…[&p=PRICE]`: a tracking
/// pixel. The event joins the stream with id `trk:<r>:<b>:<s>:<e>`, so a player that fires twice
/// counts once; an impression's `p` (its CPM) becomes the event's `value`, the spend it confirms.
/// Answers 204.
pub async fn track(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let event = param(&q, "e")?;
    if !TRACKED.contains(&event) {
        return Err(ApiError::field(
            "e",
            format!("{event:?} is not one of {}", TRACKED.join(", ")),
        ));
    }
    let request = param(&q, "r")?;
    let brk = q.get("b").map_or("", |s| s);
    let seq = q.get("s").map_or("", |s| s);
    let ts_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let opt = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    let body = json!({
        "id": format!("trk:{request}:{brk}:{seq}:{event}"),
        "type": event,
        "ts_ms": ts_ms,
        "user_id": opt("u"),
        "line_item_id": opt("li"),
        "advertiser_id": opt("adv"),
        "content_id": opt("c"),
        // An impression's value is its price (CPM): it confirms the spend reserved for it.
        "value": if event == "impression" { q.get("p") } else { q.get("code") }
            .and_then(|c| c.parse::<f64>().ok()),
    });
    let ingest = state.events().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the event stream is not started yet; retry shortly",
        )
    })?;
    ingest
        .submit(vec![serde_json::to_vec(&body).unwrap_or_default()])
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn notice(state: &AppState, q: &HashMap<String, String>, won: bool) -> Result<Response, ApiError> {
    let segment = param(q, "seg")?;
    let bid: i64 = number(q, "bid")?.ok_or_else(|| ApiError::field("bid", "is required"))?;
    if bid <= 0 {
        return Err(ApiError::field("bid", "must be positive"));
    }
    state.shader().observe(segment, Micros(bid), won);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/openrtb/win?seg=…&bid=…`: a first-price win notice.
pub async fn win(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    notice(&state, &q, true)
}

/// `GET /v1/openrtb/loss?seg=…&bid=…`: a first-price loss notice.
pub async fn loss(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    notice(&state, &q, false)
}

/// `GET /v1/auction/state`: learned reserves per segment and win-rate models per segment.
pub async fn auction_state(State(state): State<AppState>) -> Result<Response, ApiError> {
    let engine = engine(&state)?;
    let market = engine.market();
    let reserves: Vec<_> = market
        .dynamic_reserve()
        .map(|d| d.snapshot())
        .unwrap_or_default()
        .into_iter()
        .map(|(segment, r, n)| json!({"segment": segment, "reserve_cpm": r.as_units(), "observations": n}))
        .collect();
    let shading: Vec<_> = state
        .shader()
        .snapshot()
        .into_iter()
        .map(|(segment, m)| json!({"segment": segment, "model": m}))
        .collect();
    Ok(Json(json!({
        "auction": market.marketplace.auction,
        "dynamic_reserves": reserves,
        "bid_shading": shading,
    }))
    .into_response())
}

/// A shader with default settings, for [`AppState`].
pub fn default_shader() -> BidShader {
    BidShader::new(Default::default())
}
