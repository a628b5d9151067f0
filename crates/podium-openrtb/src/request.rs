//! OpenRTB 2.6 bid request → [`AdRequest`]: video impressions grouped into ad pods (OpenRTB 2.6
//! §7.6), each pod one break with its dynamic part and its fixed slots.
//!
//! Only the fields Podium uses are read; unknown fields and every `ext` are ignored. Banner,
//! native and audio impressions are not for us and are skipped. This module does not decide
//! anything: it refuses contradictory requests with a [`WireError`] naming the field, and says
//! when the request cannot be bid on at all ([`BidRequestPlan::NoBid`]).

use crate::country;
use crate::WireError;
use podium_core::request::{MAX_ADS_PER_BREAK, MAX_BREAK_SECONDS, MAX_TMAX};
use podium_core::{
    AdBreak, AdRequest, BreakPosition, Content, DedupeKey, Device, DurationRule, Micros, PodRules,
    PodSlot, RequestError, SlotPosition, User,
};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// Country used when the request carries none (`device.geo.country`, `user.geo.country`), or an
/// alpha-3 code that ISO 3166-1 does not list: `ZZ`, the ISO user-assigned "unknown" code, so
/// that country-targeted line items do not match while untargeted ones still may.
pub const UNKNOWN_COUNTRY: &str = "ZZ";

/// The only currency Podium bids in.
pub const CURRENCY: &str = "USD";

/// Most exact durations (`rqddurs`) one impression may list.
const MAX_RQDDURS: usize = 64;

// ---------------------------------------------------------------------------------------------
// The OpenRTB 2.6 objects we read. Every field is optional at this level so that a missing
// required field gets our own error naming it, rather than serde's "missing field" at the parent.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct RawBidRequest {
    id: Option<String>,
    imp: Option<Vec<RawImp>>,
    site: Option<RawDistribution>,
    app: Option<RawDistribution>,
    device: Option<RawDevice>,
    user: Option<RawUser>,
    at: Option<i64>,
    tmax: Option<i64>,
    cur: Option<Vec<String>>,
    bcat: Option<Vec<String>>,
    badv: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawImp {
    id: Option<String>,
    video: Option<RawVideo>,
    bidfloor: Option<f64>,
    bidfloorcur: Option<String>,
}

#[derive(Deserialize)]
struct RawVideo {
    mimes: Option<Vec<String>>,
    minduration: Option<i64>,
    maxduration: Option<i64>,
    rqddurs: Option<Vec<i64>>,
    poddur: Option<i64>,
    maxseq: Option<i64>,
    #[serde(default, deserialize_with = "pod_id")]
    podid: Option<String>,
    podseq: Option<i64>,
    slotinpod: Option<i64>,
    mincpmpersec: Option<f64>,
    poddedupe: Option<Vec<i64>>,
    startdelay: Option<i64>,
    w: Option<i64>,
    h: Option<i64>,
}

#[derive(Deserialize)]
struct RawDistribution {
    id: Option<String>,
    content: Option<RawContent>,
}

#[derive(Deserialize)]
struct RawContent {
    id: Option<String>,
    genre: Option<String>,
    livestream: Option<i64>,
    contentrating: Option<String>,
}

#[derive(Deserialize)]
struct RawDevice {
    devicetype: Option<i64>,
    ifa: Option<String>,
    geo: Option<RawGeo>,
}

#[derive(Deserialize)]
struct RawGeo {
    country: Option<String>,
    region: Option<String>,
    utcoffset: Option<i64>,
}

#[derive(Deserialize)]
struct RawUser {
    id: Option<String>,
    buyeruid: Option<String>,
    geo: Option<RawGeo>,
    data: Option<Vec<RawData>>,
}

#[derive(Deserialize)]
struct RawData {
    segment: Option<Vec<RawSegment>>,
}

#[derive(Deserialize)]
struct RawSegment {
    id: Option<String>,
}

/// `video.podid` is a string in OpenRTB 2.6 and an integer in AdCOM 1.0; both are seen on the
/// wire, so both are accepted and kept as a string.
fn pod_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct PodIdVisitor;
    impl<'de> Visitor<'de> for PodIdVisitor {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a pod id (string or integer)")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(PodIdVisitor)
}

// ---------------------------------------------------------------------------------------------
// What the server gets back.
// ---------------------------------------------------------------------------------------------

/// How the exchange clears the auction (OpenRTB `at`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuctionKind {
    /// `at` = 1: the winner pays its bid.
    FirstPrice,
    /// `at` = 2, or `at` absent (the OpenRTB default): the winner pays the second price.
    SecondPrice,
}

/// Why Podium will not bid on a well-formed request (the server answers 204 No Content).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoBidReason {
    /// No impression offers video (banner, native or audio only).
    NoVideoImpression,
    /// A floor in a currency other than USD, or a `cur` list that does not allow USD.
    Currency(String),
}

impl fmt::Display for NoBidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoBidReason::NoVideoImpression => f.write_str("no video impression"),
            NoBidReason::Currency(why) => write!(f, "currency: {why}"),
        }
    }
}

/// One OpenRTB impression as it was offered, for answering it.
#[derive(Clone, Debug, PartialEq)]
pub struct ImpInfo {
    /// `imp.id`: the `impid` a bid for it carries.
    pub imp_id: String,
    /// Position of the impression in the request's `imp` array.
    pub index: usize,
    /// `imp.bidfloor` in USD CPM, if positive.
    pub floor_cpm: Option<Micros>,
    /// The slot position the seller guarantees (AdCOM "Slot Position in Pod": 1 first, -1 last,
    /// 0 any), with 2 (first or last) resolved to the one Podium will fill.
    pub slot_in_pod: i8,
    /// `video.mimes`: media types the player accepts.
    pub mimes: Vec<String>,
    /// `video.w`, `video.h`: the player size in device-independent pixels, when given.
    pub player_size: Option<(u32, u32)>,
}

/// The impressions behind one break of [`BidPlan::request`], at the same index.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakImps {
    /// The break's id in the [`AdRequest`]: `pod:<podid>`, or `imp:<imp id>` for an impression
    /// outside any pod.
    pub break_id: String,
    /// `video.podid`, when the break is an OpenRTB ad pod.
    pub pod_id: Option<String>,
    /// The dynamic impression (the one with `poddur`) whose id the dynamic part's bids carry.
    pub dynamic: Option<ImpInfo>,
    /// The structured impressions, in the order of the break's `rules.slots` (each slot's id is
    /// its impression id).
    pub slots: Vec<ImpInfo>,
}

impl BreakImps {
    /// The impression a placed ad answers: its fixed slot's, or the dynamic impression's.
    pub fn imp_for(&self, slot: Option<&str>) -> Option<&ImpInfo> {
        match slot {
            Some(id) => self.slots.iter().find(|s| s.imp_id == id),
            None => self.dynamic.as_ref(),
        }
    }
}

/// A request Podium will bid on.
#[derive(Clone, Debug, PartialEq)]
pub struct BidPlan {
    /// The validated native request the engine decides on.
    pub request: AdRequest,
    /// How the exchange clears the auction.
    pub auction: AuctionKind,
    /// For each break of `request.breaks`, at the same index, the impressions behind it.
    pub breaks: Vec<BreakImps>,
}

impl BidPlan {
    /// The impressions behind the break called `break_id`.
    pub fn break_imps(&self, break_id: &str) -> Option<&BreakImps> {
        self.breaks.iter().find(|b| b.break_id == break_id)
    }
}

/// What to do with an OpenRTB bid request.
// One plan per request, moved once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum BidRequestPlan {
    /// Decide on the request and answer its impressions.
    Bid(BidPlan),
    /// Answer with no bid (HTTP 204).
    NoBid {
        /// The request's `id`.
        request_id: String,
        /// Why.
        reason: NoBidReason,
    },
}

impl BidRequestPlan {
    /// The OpenRTB request id.
    pub fn request_id(&self) -> &str {
        match self {
            BidRequestPlan::Bid(p) => p.request.request_id.as_str(),
            BidRequestPlan::NoBid { request_id, .. } => request_id,
        }
    }

    /// The plan to bid, if Podium bids.
    pub fn bid(&self) -> Option<&BidPlan> {
        match self {
            BidRequestPlan::Bid(p) => Some(p),
            BidRequestPlan::NoBid { .. } => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing.
// ---------------------------------------------------------------------------------------------

/// Parses an OpenRTB 2.6 bid request into what to decide and how to answer.
///
/// Refuses (a 400) a body that is not JSON, a field of the wrong JSON type, a missing `id` or
/// `imp`, duplicate impression ids, and contradictory pod rules (`rqddurs` with `minduration` or
/// `maxduration`, `maxduration` below `minduration`, negative durations or floors, `poddur` or
/// `maxseq` not positive, two dynamic impressions or two first/last slots in one pod, pods that
/// disagree on `podseq`), each with the JSON path of the field at fault.
///
/// Decisions on points the specification leaves open:
/// - Viewer id: `user.id`, else `user.buyeruid`, else `device.ifa`, else `anon:<request id>`
///   (an id that lives for one request only, so frequency caps cannot count it).
/// - Country: `device.geo.country`, else `user.geo.country`, as ISO 3166-1 alpha-3 (converted)
///   or alpha-2 (kept); absent, or an alpha-3 code ISO does not list, gives [`UNKNOWN_COUNTRY`].
/// - `tmax` above Podium's [`MAX_TMAX`] is clamped to it (more time than we use is harmless);
///   `tmax` 0 or absent leaves the server's default deadline.
/// - `maxseq` above [`MAX_ADS_PER_BREAK`] and `poddur` above [`MAX_BREAK_SECONDS`] are clamped;
///   without `maxseq`, a dynamic pod holds at most `poddur` / its shortest accepted duration ads
///   (`rqddurs` minimum, else `minduration`, else 1 s), at most [`MAX_ADS_PER_BREAK`].
/// - `maxduration` 0 means no maximum; `minduration` 0 or `maxduration` 0 beside `rqddurs` is
///   not counted as a contradiction.
/// - `slotinpod` 2 (first or last) becomes first unless another impression of the pod claims
///   first, else last.
/// - Break position from `video.startdelay`: 0 pre-roll, -2 post-roll, otherwise mid-roll.
/// - A positive `bidfloor` in a currency other than USD, or a `cur` list without USD, means no
///   bid for the whole request.
pub fn parse_bid_request(body: &[u8]) -> Result<BidRequestPlan, WireError> {
    let raw = decode(body)?;
    let request_id = non_empty(raw.id.as_deref()).ok_or_else(|| {
        WireError::new("id", "the bid request id is required and must not be empty")
    })?;
    let auction = match raw.at {
        None | Some(2) => AuctionKind::SecondPrice,
        Some(1) => AuctionKind::FirstPrice,
        Some(other) => {
            return Err(WireError::new(
                "at",
                format!("auction type {other} is not supported (1 first price, 2 second price)"),
            ))
        }
    };
    let imps = match raw.imp.as_deref() {
        None | Some([]) => {
            return Err(WireError::new("imp", "at least one impression is required"))
        }
        Some(imps) => imps,
    };
    let mut imp_ids: HashMap<&str, usize> = HashMap::new();
    for (i, imp) in imps.iter().enumerate() {
        let id = non_empty(imp.id.as_deref()).ok_or_else(|| {
            WireError::new(format!("imp[{i}].id"), "required and must not be empty")
        })?;
        if let Some(j) = imp_ids.insert(id, i) {
            return Err(WireError::new(
                format!("imp[{i}].id"),
                format!("duplicate impression id {id:?} (also imp[{j}])"),
            ));
        }
    }
    let video: Vec<VideoImp> = imps
        .iter()
        .enumerate()
        .filter_map(|(i, imp)| {
            imp.video.as_ref().map(|v| VideoImp {
                index: i,
                id: imp.id.as_deref().unwrap_or_default(),
                imp,
                video: v,
            })
        })
        .collect();
    if video.is_empty() {
        return Ok(BidRequestPlan::NoBid {
            request_id: request_id.to_owned(),
            reason: NoBidReason::NoVideoImpression,
        });
    }

    let (breaks, imps_of) = build_breaks(&video)?;
    let user = viewer(&raw, request_id)?;
    let content = content(&raw);
    let tmax = match raw.tmax {
        None | Some(0) => None,
        Some(ms) if ms < 0 => {
            return Err(WireError::new("tmax", format!("{ms} ms is negative")));
        }
        Some(ms) => Some(Duration::from_millis(ms as u64).min(MAX_TMAX)),
    };

    if let Some(cur) = &raw.cur {
        if !cur.is_empty() && !cur.iter().any(|c| c.trim().eq_ignore_ascii_case(CURRENCY)) {
            return Ok(BidRequestPlan::NoBid {
                request_id: request_id.to_owned(),
                reason: NoBidReason::Currency(format!("cur {cur:?} does not allow USD")),
            });
        }
    }
    for v in &video {
        let cur = v.imp.bidfloorcur.as_deref().map(str::trim).unwrap_or("");
        let floored = v.imp.bidfloor.is_some_and(|f| f > 0.0);
        if floored && !cur.is_empty() && !cur.eq_ignore_ascii_case(CURRENCY) {
            return Ok(BidRequestPlan::NoBid {
                request_id: request_id.to_owned(),
                reason: NoBidReason::Currency(format!(
                    "imp[{}].bidfloorcur {cur:?} is not USD",
                    v.index
                )),
            });
        }
    }

    let request = AdRequest {
        request_id: request_id.into(),
        user: user.user,
        content,
        breaks,
        tmax,
        blocked_categories: raw.bcat.clone().unwrap_or_default(),
        blocked_advertisers: raw.badv.clone().unwrap_or_default(),
    };
    let request = request
        .validate()
        .map_err(|e| core_error(e, &imps_of, user.country_field))?;
    Ok(BidRequestPlan::Bid(BidPlan {
        request,
        auction,
        breaks: imps_of,
    }))
}

fn decode(body: &[u8]) -> Result<RawBidRequest, WireError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw: RawBidRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // A syntax error inside an object ends the path with an unknown key, `?`.
        let path = e.path().to_string();
        let path = path.strip_suffix(".?").unwrap_or(&path);
        let field = match path {
            "" | "." | "?" => "body".to_owned(),
            p => p.to_owned(),
        };
        WireError::new(field, e.into_inner().to_string())
    })?;
    de.end().map_err(|e| {
        WireError::new(
            "body",
            format!("trailing characters after the request: {e}"),
        )
    })?;
    Ok(raw)
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

struct VideoImp<'a> {
    index: usize,
    id: &'a str,
    imp: &'a RawImp,
    video: &'a RawVideo,
}

impl VideoImp<'_> {
    fn path(&self, field: &str) -> String {
        format!("imp[{}].video.{field}", self.index)
    }
}

/// A pod (or a lone impression) being gathered.
struct PodDraft<'a, 'b> {
    pod_id: Option<String>,
    podseq: Option<(i64, usize)>,
    imps: Vec<&'b VideoImp<'a>>,
}

fn build_breaks(video: &[VideoImp]) -> Result<(Vec<AdBreak>, Vec<BreakImps>), WireError> {
    let mut pods: Vec<PodDraft> = Vec::new();
    let mut by_pod: HashMap<&str, usize> = HashMap::new();
    for v in video {
        let pos = match v.video.podid.as_deref().map(str::trim) {
            Some(pid) if !pid.is_empty() => match by_pod.get(pid) {
                Some(&k) => k,
                None => {
                    by_pod.insert(pid, pods.len());
                    pods.push(PodDraft {
                        pod_id: Some(pid.to_owned()),
                        podseq: None,
                        imps: Vec::new(),
                    });
                    pods.len() - 1
                }
            },
            _ => {
                pods.push(PodDraft {
                    pod_id: None,
                    podseq: None,
                    imps: Vec::new(),
                });
                pods.len() - 1
            }
        };
        let pod = &mut pods[pos];
        if let Some(seq) = v.video.podseq {
            if !(-1..=1).contains(&seq) {
                return Err(WireError::new(
                    v.path("podseq"),
                    format!("{seq} is not a pod sequence (-1 last, 0 any, 1 first)"),
                ));
            }
            match pod.podseq {
                Some((s, j)) if s != seq => {
                    return Err(WireError::new(
                        v.path("podseq"),
                        format!("{seq} contradicts podseq {s} of imp[{j}] in the same pod"),
                    ))
                }
                Some(_) => {}
                None => pod.podseq = Some((seq, v.index)),
            }
        }
        pod.imps.push(v);
    }
    // One pod only can be the first of the stream, and one the last.
    for claim in [1, -1] {
        let mut holder: Option<usize> = None;
        for pod in &pods {
            if let Some((s, j)) = pod.podseq {
                if s == claim {
                    if let Some(first) = holder {
                        return Err(WireError::new(
                            format!("imp[{j}].video.podseq"),
                            format!(
                                "a second pod claims to be the {} pod of the stream (imp[{first}] \
                                 already does)",
                                if claim == 1 { "first" } else { "last" }
                            ),
                        ));
                    }
                    holder = Some(j);
                }
            }
        }
    }
    // Playback order: the first pod, then the others as they appeared, then the last pod.
    pods.sort_by_key(|p| match p.podseq.map(|(s, _)| s) {
        Some(1) => 0,
        Some(-1) => 2,
        _ => 1,
    });

    let mut breaks = Vec::with_capacity(pods.len());
    let mut imps_of = Vec::with_capacity(pods.len());
    for pod in &pods {
        let (b, imps) = build_break(pod)?;
        breaks.push(b);
        imps_of.push(imps);
    }
    Ok((breaks, imps_of))
}

fn build_break(pod: &PodDraft) -> Result<(AdBreak, BreakImps), WireError> {
    let break_id = match &pod.pod_id {
        Some(p) => format!("pod:{p}"),
        None => format!("imp:{}", pod.imps[0].id),
    };
    let mut position = BreakPosition::Midroll;
    if let Some(v) = pod.imps.iter().find(|v| v.video.startdelay.is_some()) {
        position = match v.video.startdelay.unwrap_or(-1) {
            0 => BreakPosition::Preroll,
            -2 => BreakPosition::Postroll,
            d if d > 0 || d == -1 => BreakPosition::Midroll,
            d => {
                return Err(WireError::new(
                    v.path("startdelay"),
                    format!("{d} is not a start delay (seconds, or 0, -1, -2)"),
                ))
            }
        };
    }

    let mut rules = PodRules::default();
    let mut dynamic: Option<ImpInfo> = None;
    let mut max_ads = 0;
    let mut max_duration_s = 0;
    let mut slots: Vec<(ImpInfo, PodSlot, bool)> = Vec::new();
    for v in &pod.imps {
        let durations = duration_rule(v)?;
        let floor_cpm = price(v.imp.bidfloor, || format!("imp[{}].bidfloor", v.index))?;
        for (k, key) in v.video.poddedupe.iter().flatten().enumerate() {
            // AdCOM "Pod Deduplication": 1 adomain, 2 IAB category, 3 creative id, 4 media
            // file URL. The engine does not see media file URLs, so 4 and vendor-specific
            // values (500+) are ignored rather than refused.
            let key = match key {
                1 => Some(DedupeKey::Advertiser),
                2 => Some(DedupeKey::Category),
                3 => Some(DedupeKey::Creative),
                n if *n < 0 => {
                    return Err(WireError::new(
                        v.path(&format!("poddedupe[{k}]")),
                        format!("{n} is not a pod deduplication setting"),
                    ))
                }
                _ => None,
            };
            if let Some(key) = key {
                if !rules.dedupe.contains(&key) {
                    rules.dedupe.push(key);
                }
            }
        }
        let info = ImpInfo {
            imp_id: v.id.to_owned(),
            index: v.index,
            floor_cpm,
            slot_in_pod: 0,
            mimes: v.video.mimes.clone().unwrap_or_default(),
            player_size: match (v.video.w, v.video.h) {
                (Some(w), Some(h)) if w > 0 && h > 0 => {
                    Some((w.min(u32::MAX as i64) as u32, h.min(u32::MAX as i64) as u32))
                }
                _ => None,
            },
        };
        if let Some(poddur) = v.video.poddur {
            if let Some(d) = &dynamic {
                return Err(WireError::new(
                    v.path("poddur"),
                    format!(
                        "a pod has one dynamic part: imp[{}] already sets poddur for pod {:?}",
                        d.index,
                        pod.pod_id.as_deref().unwrap_or_default()
                    ),
                ));
            }
            if poddur <= 0 {
                return Err(WireError::new(
                    v.path("poddur"),
                    format!("{poddur} s: the pod duration must be positive"),
                ));
            }
            let poddur = poddur.min(MAX_BREAK_SECONDS as i64) as u32;
            max_ads = match v.video.maxseq {
                Some(n) if n <= 0 => {
                    return Err(WireError::new(
                        v.path("maxseq"),
                        format!("{n}: the most ads of a pod must be positive"),
                    ))
                }
                Some(n) => n.min(MAX_ADS_PER_BREAK as i64) as u32,
                None => {
                    let shortest = durations
                        .exact_s
                        .iter()
                        .copied()
                        .min()
                        .unwrap_or(durations.min_s)
                        .max(1);
                    (poddur / shortest).clamp(1, MAX_ADS_PER_BREAK)
                }
            };
            max_duration_s = poddur;
            rules.ad_durations = durations;
            rules.floor_cpm = floor_cpm;
            rules.floor_cpm_per_s = price(v.video.mincpmpersec, || v.path("mincpmpersec"))?;
            dynamic = Some(info);
        } else {
            let (position, either_end) = match v.video.slotinpod.unwrap_or(0) {
                0 => (SlotPosition::Any, false),
                1 => (SlotPosition::First, false),
                -1 => (SlotPosition::Last, false),
                2 => (SlotPosition::Any, true),
                n => {
                    return Err(WireError::new(
                        v.path("slotinpod"),
                        format!("{n} is not a slot position (-1 last, 0 any, 1 first, 2 either)"),
                    ))
                }
            };
            let slot = PodSlot {
                id: v.id.to_owned(),
                durations,
                floor_cpm,
                position,
            };
            slots.push((info, slot, either_end));
        }
    }
    // Explicit first/last claims first, then "first or last" takes whichever end is free.
    let mut ends: [Option<usize>; 2] = [None, None];
    for (info, slot, _) in &slots {
        let end = match slot.position {
            SlotPosition::First => 0,
            SlotPosition::Last => 1,
            SlotPosition::Any => continue,
        };
        if let Some(j) = ends[end] {
            return Err(WireError::new(
                format!("imp[{}].video.slotinpod", info.index),
                format!(
                    "imp[{j}] already holds the {} slot of this pod",
                    ["first", "last"][end]
                ),
            ));
        }
        ends[end] = Some(info.index);
    }
    for (info, slot, either_end) in &mut slots {
        if !*either_end {
            continue;
        }
        let end = ends.iter().position(Option::is_none).ok_or_else(|| {
            WireError::new(
                format!("imp[{}].video.slotinpod", info.index),
                "both the first and the last slot of this pod are already taken",
            )
        })?;
        ends[end] = Some(info.index);
        slot.position = [SlotPosition::First, SlotPosition::Last][end];
    }
    let mut slot_imps = Vec::with_capacity(slots.len());
    for (mut info, slot, _) in slots {
        info.slot_in_pod = match slot.position {
            SlotPosition::First => 1,
            SlotPosition::Last => -1,
            SlotPosition::Any => 0,
        };
        rules.slots.push(slot);
        slot_imps.push(info);
    }
    let b = AdBreak {
        id: break_id.as_str().into(),
        position,
        max_ads,
        max_duration_s,
        rules,
    };
    let imps = BreakImps {
        break_id,
        pod_id: pod.pod_id.clone(),
        dynamic,
        slots: slot_imps,
    };
    Ok((b, imps))
}

fn duration_rule(v: &VideoImp) -> Result<DurationRule, WireError> {
    let seconds = |value: i64, field: &str| -> Result<u32, WireError> {
        if value < 0 {
            return Err(WireError::new(
                v.path(field),
                format!("{value} s is negative"),
            ));
        }
        Ok(value.min(MAX_BREAK_SECONDS as i64) as u32)
    };
    let min_s = match v.video.minduration {
        Some(d) if d > MAX_BREAK_SECONDS as i64 => {
            return Err(WireError::new(
                v.path("minduration"),
                format!("{d} s is longer than any break ({MAX_BREAK_SECONDS} s)"),
            ))
        }
        Some(d) => seconds(d, "minduration")?,
        None => 0,
    };
    let max_s = match v.video.maxduration {
        Some(d) => Some(seconds(d, "maxduration")?).filter(|&d| d > 0),
        None => None,
    };
    let mut exact_s = Vec::new();
    if let Some(rqd) = v.video.rqddurs.as_deref().filter(|r| !r.is_empty()) {
        if min_s > 0 || max_s.is_some() {
            return Err(WireError::new(
                v.path("rqddurs"),
                "rqddurs and minduration/maxduration are mutually exclusive",
            ));
        }
        if rqd.len() > MAX_RQDDURS {
            return Err(WireError::new(
                v.path("rqddurs"),
                format!("at most {MAX_RQDDURS} durations"),
            ));
        }
        for (k, &d) in rqd.iter().enumerate() {
            if d <= 0 || d > MAX_BREAK_SECONDS as i64 {
                return Err(WireError::new(
                    v.path(&format!("rqddurs[{k}]")),
                    format!("{d} s: a duration must be between 1 and {MAX_BREAK_SECONDS} s"),
                ));
            }
            if !exact_s.contains(&(d as u32)) {
                exact_s.push(d as u32);
            }
        }
    }
    if let Some(max) = max_s {
        if max < min_s {
            return Err(WireError::new(
                v.path("maxduration"),
                format!("{max} s is below minduration {min_s} s"),
            ));
        }
    }
    Ok(DurationRule {
        min_s,
        max_s,
        exact_s,
    })
}

/// A USD CPM from the wire: absent or 0 is no floor; negative is an error.
fn price(value: Option<f64>, field: impl Fn() -> String) -> Result<Option<Micros>, WireError> {
    match value {
        None => Ok(None),
        Some(p) if !p.is_finite() || p < 0.0 => Err(WireError::new(
            field(),
            format!("{p} is not a price (a non-negative CPM)"),
        )),
        Some(0.0) => Ok(None),
        Some(p) => Ok(Some(Micros::from_units(p))),
    }
}

struct Viewer {
    user: User,
    country_field: &'static str,
}

fn viewer(raw: &RawBidRequest, request_id: &str) -> Result<Viewer, WireError> {
    let ruser = raw.user.as_ref();
    let device = raw.device.as_ref();
    let id = non_empty(ruser.and_then(|u| u.id.as_deref()))
        .or_else(|| non_empty(ruser.and_then(|u| u.buyeruid.as_deref())))
        .or_else(|| non_empty(device.and_then(|d| d.ifa.as_deref())))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("anon:{request_id}"));

    // Device geo is where the ad plays; user geo (home) is the fallback.
    let (geo, geo_field) = match (
        device.and_then(|d| d.geo.as_ref()),
        ruser.and_then(|u| u.geo.as_ref()),
    ) {
        (Some(g), _) if g.country.is_some() => (Some(g), "device.geo"),
        (_, Some(g)) if g.country.is_some() => (Some(g), "user.geo"),
        (Some(g), _) => (Some(g), "device.geo"),
        (None, g) => (g, "user.geo"),
    };
    let country_field = if geo_field == "device.geo" {
        "device.geo.country"
    } else {
        "user.geo.country"
    };
    let country = match geo.and_then(|g| non_empty(g.country.as_deref())) {
        None => UNKNOWN_COUNTRY.to_owned(),
        Some(c) => {
            let c = c.to_ascii_uppercase();
            if !c.bytes().all(|b| b.is_ascii_alphabetic()) || !(2..=3).contains(&c.len()) {
                return Err(WireError::new(
                    country_field,
                    format!("{c:?} is not an ISO 3166-1 alpha-3 (or alpha-2) country code"),
                ));
            }
            if c.len() == 2 {
                c
            } else {
                country::alpha2(&c).unwrap_or(UNKNOWN_COUNTRY).to_owned()
            }
        }
    };
    let utc_offset_min = match geo.and_then(|g| g.utcoffset) {
        Some(off) if !(-16 * 60..=16 * 60).contains(&off) => {
            return Err(WireError::new(
                format!("{geo_field}.utcoffset"),
                format!("{off} is not a UTC offset (-960 to 960 minutes)"),
            ))
        }
        off => off.map(|o| o as i32),
    };
    let device_kind = match device.and_then(|d| d.devicetype) {
        // AdCOM 1.0 "Device Types".
        Some(3) | Some(7) => Device::Tv,
        Some(1) | Some(4) => Device::Mobile,
        Some(5) => Device::Tablet,
        Some(2) => Device::Desktop,
        _ => Device::Other,
    };
    let mut segments: Vec<String> = Vec::new();
    for data in ruser.and_then(|u| u.data.as_deref()).unwrap_or_default() {
        for seg in data.segment.as_deref().unwrap_or_default() {
            if let Some(id) = non_empty(seg.id.as_deref()) {
                if !segments.iter().any(|s| s == id) {
                    segments.push(id.to_owned());
                }
            }
        }
    }
    Ok(Viewer {
        user: User {
            id: id.as_str().into(),
            country,
            device: device_kind,
            region: geo.and_then(|g| non_empty(g.region.as_deref()).map(str::to_owned)),
            segments,
            utc_offset_min,
        },
        country_field,
    })
}

fn content(raw: &RawBidRequest) -> Content {
    let dist = raw.site.as_ref().or(raw.app.as_ref());
    let c = dist.and_then(|d| d.content.as_ref());
    let id = non_empty(c.and_then(|c| c.id.as_deref()))
        .or_else(|| non_empty(dist.and_then(|d| d.id.as_deref())))
        .unwrap_or("unknown");
    Content {
        id: id.into(),
        genre: non_empty(c.and_then(|c| c.genre.as_deref()))
            .unwrap_or("unknown")
            .to_lowercase(),
        live: c.and_then(|c| c.livestream) == Some(1),
        rating: non_empty(c.and_then(|c| c.contentrating.as_deref())).map(str::to_lowercase),
        event_id: None,
    }
}

/// Maps a core validation error back to the OpenRTB field it came from.
fn core_error(e: RequestError, imps: &[BreakImps], country_field: &str) -> WireError {
    let field = e.field.as_str();
    let index = |s: &str| -> Option<(usize, usize)> {
        let close = s.find(']')?;
        Some((s[..close].parse().ok()?, close + 1))
    };
    let mapped = if let Some(rest) = field.strip_prefix("breaks[") {
        index(rest).and_then(|(i, after)| {
            let b = imps.get(i)?;
            let rest = &rest[after..];
            let imp = match rest.strip_prefix(".slots[").and_then(index) {
                Some((j, _)) => b.slots.get(j),
                None => b.dynamic.as_ref().or(b.slots.first()),
            }?;
            Some(format!("imp[{}].video", imp.index))
        })
    } else if field == "breaks" {
        Some("imp".to_owned())
    } else if let Some(rest) = field.strip_prefix("blocked_categories") {
        Some(format!("bcat{rest}"))
    } else {
        match field {
            "user.country" => Some(country_field.to_owned()),
            "user.id" => Some("user.id".to_owned()),
            "tmax_ms" => Some("tmax".to_owned()),
            "request_id" => Some("id".to_owned()),
            _ => None,
        }
    };
    match mapped {
        Some(f) => WireError::new(f, format!("{} ({})", e.message, e.field)),
        None => WireError::new(e.field, e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_codes() {
        assert_eq!(country::alpha2("USA"), Some("US"));
        assert_eq!(country::alpha2("DEU"), Some("DE"));
        assert_eq!(country::alpha2("GBR"), Some("GB"));
        assert_eq!(country::alpha2("XKX"), Some("XK"));
        assert_eq!(country::alpha2("QQQ"), None);
    }

    #[test]
    fn core_errors_name_openrtb_fields() {
        let imps = vec![BreakImps {
            break_id: "pod:1".into(),
            pod_id: Some("1".into()),
            dynamic: None,
            slots: vec![ImpInfo {
                imp_id: "a".into(),
                index: 3,
                floor_cpm: None,
                slot_in_pod: 0,
                mimes: vec![],
                player_size: None,
            }],
        }];
        let e = core_error(
            RequestError::new("breaks[0].slots[0].durations", "bad"),
            &imps,
            "device.geo.country",
        );
        assert_eq!(e.field, "imp[3].video");
        let e = core_error(
            RequestError::new("blocked_categories[2]", "empty"),
            &imps,
            "",
        );
        assert_eq!(e.field, "bcat[2]");
        let e = core_error(RequestError::new("breaks[9]", "x"), &imps, "");
        assert_eq!(e.field, "breaks[9]");
    }
}
