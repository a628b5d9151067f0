//! [`Decision`] → OpenRTB 2.6 bid response: one `bid` per placed ad, on the impression it
//! answers, and a checker that a response keeps the request's pod rules.
//!
//! The engine builds pods that keep the rules; this module only writes them down. It does not
//! look up creatives: the caller supplies each ad's price, markup and advertiser domain.

use crate::request::{BidRequestPlan, BreakImps, CURRENCY};
use podium_core::{Decision, DedupeKey, DurationRule, Micros, PlacedAd};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Seat Podium bids from.
pub const SEAT: &str = "podium";

/// AdCOM "Media type" of a video bid (`bid.mtype`).
const MTYPE_VIDEO: i64 = 2;

/// What the caller knows about one placed ad that the decision does not carry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BidAd {
    /// What to bid for it, CPM in USD.
    pub price: Micros,
    /// The advertiser's domain (`bid.adomain`), empty if unknown.
    pub adomain: String,
    /// IAB categories of the ad (`bid.cat`).
    pub cat: Vec<String>,
    /// The ad markup: a VAST document for this ad.
    pub adm: String,
    /// Win notice URL.
    pub nurl: Option<String>,
    /// Billing notice URL.
    pub burl: Option<String>,
    /// Creative id for the exchange's audit (`bid.crid`).
    pub crid: String,
}

/// Writes the bid response for `decision`, or `None` when no ad was placed (or the plan is a
/// no-bid): the server then answers 204 No Content.
///
/// Each placed ad becomes a bid on its fixed slot's impression, or on the pod's dynamic
/// impression. `slotinpod` echoes a fixed slot's position; in the dynamic part it is 1 for the
/// ad that opens a pod of two or more ads, -1 for the one that closes it, and 0 otherwise
/// (a lone ad may play anywhere). An ad the plan has no impression for (a break the request did
/// not have, a dynamic ad in a pod without a dynamic impression) is left out.
pub fn bid_response(
    plan: &BidRequestPlan,
    decision: &Decision,
    ad: impl Fn(&PlacedAd) -> BidAd,
) -> Option<Value> {
    let plan = plan.bid()?;
    let mut bids = Vec::new();
    for b in &decision.breaks {
        let Some(imps) = plan.break_imps(b.break_id.as_str()) else {
            continue;
        };
        let n = b.ads.len();
        for (k, placed) in b.ads.iter().enumerate() {
            let Some(imp) = imps.imp_for(placed.slot.as_deref()) else {
                continue;
            };
            let slot_in_pod = if placed.slot.is_some() {
                imp.slot_in_pod
            } else if n >= 2 && k == 0 {
                1
            } else if n >= 2 && k == n - 1 {
                -1
            } else {
                0
            };
            let a = ad(placed);
            let mut bid = Map::new();
            bid.insert("id".into(), json!(format!("{}", bids.len() + 1)));
            bid.insert("impid".into(), json!(imp.imp_id));
            bid.insert("price".into(), price_json(a.price));
            bid.insert("adid".into(), json!(placed.line_item_id.as_str()));
            bid.insert("crid".into(), json!(a.crid));
            if !a.adomain.is_empty() {
                bid.insert("adomain".into(), json!([a.adomain]));
            }
            if !a.cat.is_empty() {
                bid.insert("cat".into(), json!(a.cat));
            }
            bid.insert("dur".into(), json!(placed.duration_s));
            bid.insert("mtype".into(), json!(MTYPE_VIDEO));
            if slot_in_pod != 0 {
                bid.insert("slotinpod".into(), json!(slot_in_pod));
            }
            bid.insert("adm".into(), json!(a.adm));
            if let Some(u) = a.nurl {
                bid.insert("nurl".into(), json!(u));
            }
            if let Some(u) = a.burl {
                bid.insert("burl".into(), json!(u));
            }
            bids.push(Value::Object(bid));
        }
    }
    if bids.is_empty() {
        return None;
    }
    let id = plan.request.request_id.as_str();
    Some(json!({
        "id": id,
        "bidid": format!("{id}-{SEAT}"),
        "cur": CURRENCY,
        "seatbid": [{ "seat": SEAT, "bid": bids }],
    }))
}

/// A price as an OpenRTB decimal number (USD), exact to the micro.
fn price_json(p: Micros) -> Value {
    serde_json::Number::from_f64(p.as_units())
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// What a bid of the response answers, for checking.
struct CheckedBid<'a> {
    path: String,
    imp_id: &'a str,
    price: Micros,
    dur: u32,
    adomain: Vec<&'a str>,
    cat: Vec<&'a str>,
    crid: Option<&'a str>,
    slot_in_pod: i64,
}

/// Checks a bid response against the request's pod rules: every bid on a video impression of
/// the request, with `dur` accepted by the impression's durations, price at least its floor
/// (and `mincpmpersec` × `dur` in a dynamic part), at most one bid per fixed slot, at most
/// `maxseq` bids and `poddur` seconds in a dynamic part, no two bids of a pod sharing what
/// `poddedupe` names, and at most one first and one last bid per pod.
///
/// Returns the first rule broken, naming the bid (`seatbid[0].bid[2]`), its impression and the
/// rule.
pub fn check_response(plan: &BidRequestPlan, response: &Value) -> Result<(), String> {
    let bids = collect_bids(response)?;
    let Some(plan) = plan.bid() else {
        return if bids.is_empty() {
            Ok(())
        } else {
            Err("the request was a no-bid, but the response carries bids".into())
        };
    };
    let id = response.get("id").and_then(Value::as_str);
    if id != Some(plan.request.request_id.as_str()) {
        return Err(format!(
            "response id {id:?} is not the request id {:?}",
            plan.request.request_id.as_str()
        ));
    }
    if let Some(cur) = response.get("cur") {
        if cur.as_str() != Some(CURRENCY) {
            return Err(format!("cur {cur} is not {CURRENCY:?}"));
        }
    }

    // Impression id → (break index, Some(slot index) or None for the dynamic part).
    let mut imp_of: HashMap<&str, (usize, Option<usize>)> = HashMap::new();
    for (i, b) in plan.breaks.iter().enumerate() {
        if let Some(d) = &b.dynamic {
            imp_of.insert(&d.imp_id, (i, None));
        }
        for (j, s) in b.slots.iter().enumerate() {
            imp_of.insert(&s.imp_id, (i, Some(j)));
        }
    }
    let mut per_break: Vec<Vec<&CheckedBid>> = vec![Vec::new(); plan.breaks.len()];
    for bid in &bids {
        let Some(&(i, slot)) = imp_of.get(bid.imp_id) else {
            return Err(format!(
                "{}: impid {:?} is not a video impression of the request",
                bid.path, bid.imp_id
            ));
        };
        let ab = &plan.request.breaks[i];
        let rules = &ab.rules;
        let (durations, floor, what) = match slot {
            Some(j) => (&rules.slots[j].durations, rules.slots[j].floor_cpm, "slot"),
            None => (&rules.ad_durations, rules.floor_cpm, "dynamic pod"),
        };
        if !durations.admits(bid.dur) {
            return Err(format!(
                "{} (imp {:?}): dur {} s is not accepted by the {what} ({})",
                bid.path,
                bid.imp_id,
                bid.dur,
                describe(durations)
            ));
        }
        if let Some(f) = floor {
            if bid.price < f {
                return Err(format!(
                    "{} (imp {:?}): price {} is below the floor {f}",
                    bid.path, bid.imp_id, bid.price
                ));
            }
        }
        if slot.is_none() {
            if let Some(per_s) = rules.floor_cpm_per_s {
                let least = Micros(per_s.0.saturating_mul(i64::from(bid.dur)));
                if bid.price < least {
                    return Err(format!(
                        "{} (imp {:?}): price {} is below mincpmpersec {per_s} × {} s = {least}",
                        bid.path, bid.imp_id, bid.price, bid.dur
                    ));
                }
            }
        }
        per_break[i].push(bid);
    }

    for (i, bids) in per_break.iter().enumerate() {
        let imps = &plan.breaks[i];
        let ab = &plan.request.breaks[i];
        let pod = pod_name(imps);
        if let Some(d) = &imps.dynamic {
            let dynamic: Vec<_> = bids.iter().filter(|b| b.imp_id == d.imp_id).collect();
            if dynamic.len() > ab.max_ads as usize {
                return Err(format!(
                    "{pod}: {} bids on dynamic imp {:?}, more than maxseq {}",
                    dynamic.len(),
                    d.imp_id,
                    ab.max_ads
                ));
            }
            let total: u64 = dynamic.iter().map(|b| u64::from(b.dur)).sum();
            if total > u64::from(ab.max_duration_s) {
                return Err(format!(
                    "{pod}: the bids on dynamic imp {:?} last {total} s, more than poddur {} s",
                    d.imp_id, ab.max_duration_s
                ));
            }
        }
        for s in &imps.slots {
            let n = bids.iter().filter(|b| b.imp_id == s.imp_id).count();
            if n > 1 {
                return Err(format!(
                    "{pod}: {n} bids on fixed slot imp {:?}, which takes one ad",
                    s.imp_id
                ));
            }
        }
        for (end, name) in [(1, "first"), (-1, "last")] {
            let claims: Vec<_> = bids.iter().filter(|b| b.slot_in_pod == end).collect();
            if claims.len() > 1 {
                return Err(format!(
                    "{pod}: {} and {} both claim the {name} position (slotinpod {end})",
                    claims[0].path, claims[1].path
                ));
            }
        }
        for key in &ab.rules.dedupe {
            for (x, a) in bids.iter().enumerate() {
                for b in &bids[x + 1..] {
                    let shared = match key {
                        DedupeKey::Advertiser => a
                            .adomain
                            .iter()
                            .find(|d| b.adomain.contains(d))
                            .map(|d| format!("adomain {d:?}")),
                        DedupeKey::Category => a
                            .cat
                            .iter()
                            .find(|c| b.cat.contains(c))
                            .map(|c| format!("category {c:?}")),
                        DedupeKey::Creative => match (a.crid, b.crid) {
                            (Some(x), Some(y)) if x == y => Some(format!("crid {x:?}")),
                            (None, _) | (_, None) => {
                                Some("no crid, which poddedupe by creative needs".to_owned())
                            }
                            _ => None,
                        },
                    };
                    if let Some(shared) = shared {
                        return Err(format!(
                            "{pod}: {} and {} share {shared} (poddedupe)",
                            a.path, b.path
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn pod_name(imps: &BreakImps) -> String {
    match &imps.pod_id {
        Some(p) => format!("pod {p:?}"),
        None => format!("break {:?}", imps.break_id),
    }
}

fn describe(d: &DurationRule) -> String {
    if !d.exact_s.is_empty() {
        return format!("rqddurs {:?}", d.exact_s);
    }
    match d.max_s {
        Some(max) => format!("{}–{max} s", d.min_s),
        None => format!("at least {} s", d.min_s),
    }
}

fn collect_bids(response: &Value) -> Result<Vec<CheckedBid<'_>>, String> {
    let mut out = Vec::new();
    let seatbids = match response.get("seatbid") {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(format!("seatbid is not an array: {other}")),
    };
    for (i, sb) in seatbids.iter().enumerate() {
        let Some(bids) = sb.get("bid").and_then(Value::as_array) else {
            return Err(format!("seatbid[{i}].bid is not an array"));
        };
        for (j, bid) in bids.iter().enumerate() {
            let path = format!("seatbid[{i}].bid[{j}]");
            let imp_id = bid
                .get("impid")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{path}: impid is missing or not a string"))?;
            let price = bid
                .get("price")
                .and_then(Value::as_f64)
                .filter(|p| p.is_finite() && *p >= 0.0)
                .ok_or_else(|| format!("{path}: price is missing or not a non-negative number"))?;
            let dur = bid
                .get("dur")
                .and_then(Value::as_u64)
                .filter(|d| *d > 0 && *d <= u64::from(u32::MAX))
                .ok_or_else(|| {
                    format!("{path}: dur is missing or not a positive number of seconds")
                })?;
            if let Some(m) = bid.get("mtype") {
                if m.as_i64() != Some(MTYPE_VIDEO) {
                    return Err(format!("{path}: mtype {m} is not video ({MTYPE_VIDEO})"));
                }
            }
            let strings = |key: &str| -> Result<Vec<&str>, String> {
                match bid.get(key) {
                    None | Some(Value::Null) => Ok(Vec::new()),
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|v| {
                            v.as_str()
                                .ok_or_else(|| format!("{path}: {key} holds a non-string"))
                        })
                        .collect(),
                    Some(_) => Err(format!("{path}: {key} is not an array")),
                }
            };
            out.push(CheckedBid {
                imp_id,
                price: Micros::from_units(price),
                dur: dur as u32,
                adomain: strings("adomain")?,
                cat: strings("cat")?,
                crid: bid.get("crid").and_then(Value::as_str),
                slot_in_pod: bid.get("slotinpod").and_then(Value::as_i64).unwrap_or(0),
                path,
            });
        }
    }
    Ok(out)
}
