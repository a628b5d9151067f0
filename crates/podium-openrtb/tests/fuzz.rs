//! No input makes the OpenRTB parser panic: random bytes, random JSON, and valid pod requests
//! with random values dropped into their fields. Whatever parses validates, and a response
//! built from it by filling every break keeps or names the broken rule without panicking.

use podium_core::{BreakDecision, Decision, Micros, PlacedAd, StageTimings};
use podium_openrtb::{bid_response, check_response, parse_bid_request, BidAd, BidRequestPlan};
use proptest::prelude::*;
use serde_json::{json, Value};

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        prop_oneof![
            Just(-1i64),
            Just(0),
            Just(1),
            Just(2),
            Just(15),
            Just(30),
            Just(3601)
        ]
        .prop_map(Value::from),
        "[a-zA-Z0-9 &<>\\]]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn base() -> Value {
    json!({
        "id": "r", "at": 2, "tmax": 150,
        "imp": [
            {"id": "a", "bidfloor": 5, "video": {"mimes": ["video/mp4"], "podid": "p", "slotinpod": 1, "maxduration": 30}},
            {"id": "b", "bidfloor": 2, "video": {"mimes": ["video/mp4"], "podid": "p", "poddur": 90, "maxseq": 3, "rqddurs": [15, 30], "mincpmpersec": 0.1, "poddedupe": [1, 2, 3]}},
            {"id": "c", "video": {"mimes": ["video/mp4"], "podid": "q", "podseq": 1, "poddur": 60}},
            {"id": "d", "banner": {"w": 300}}
        ],
        "device": {"devicetype": 3, "geo": {"country": "USA", "utcoffset": 60}},
        "user": {"id": "u", "data": [{"segment": [{"id": "s"}]}]},
        "site": {"content": {"genre": "news", "livestream": 0}},
        "bcat": ["IAB1"], "cur": ["USD"]
    })
}

const FIELDS: &[&str] = &[
    "/id",
    "/at",
    "/tmax",
    "/cur",
    "/bcat",
    "/badv",
    "/imp",
    "/imp/0",
    "/imp/0/id",
    "/imp/0/bidfloor",
    "/imp/0/bidfloorcur",
    "/imp/0/video",
    "/imp/0/video/podid",
    "/imp/0/video/slotinpod",
    "/imp/0/video/minduration",
    "/imp/0/video/maxduration",
    "/imp/1/video/poddur",
    "/imp/1/video/maxseq",
    "/imp/1/video/rqddurs",
    "/imp/1/video/rqddurs/0",
    "/imp/1/video/mincpmpersec",
    "/imp/1/video/poddedupe",
    "/imp/1/video/podseq",
    "/imp/2/video/podid",
    "/imp/2/video/podseq",
    "/imp/2/video/startdelay",
    "/device",
    "/device/devicetype",
    "/device/geo/country",
    "/device/geo/utcoffset",
    "/user",
    "/user/data",
    "/user/data/0/segment/0/id",
    "/site/content",
    "/site/content/livestream",
    "/site/content/genre",
];

/// Sets the value at a JSON pointer, creating nothing: a pointer whose parent is gone is skipped.
fn set(doc: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(key.to_owned(), value);
        }
        Some(Value::Array(a)) => {
            if let Ok(i) = key.parse::<usize>() {
                if i < a.len() {
                    a[i] = value;
                }
            }
        }
        _ => {}
    }
}

/// Fills every break with ads that try to keep its rules, then checks the response.
fn exercise_response(plan: &BidRequestPlan) {
    let Some(p) = plan.bid() else { return };
    let mut breaks = Vec::new();
    for (b, imps) in p.request.breaks.iter().zip(&p.breaks) {
        let mut ads = Vec::new();
        for (k, s) in b.rules.slots.iter().enumerate() {
            let dur = s
                .durations
                .exact_s
                .first()
                .copied()
                .unwrap_or(s.durations.min_s.max(1));
            ads.push(ad(k, dur, Some(imps.slots[k].imp_id.clone())));
        }
        for k in 0..b.max_ads.min(3) {
            let d = &b.rules.ad_durations;
            let dur = d.exact_s.first().copied().unwrap_or(d.min_s.max(1));
            ads.push(ad(100 + k as usize, dur, None));
        }
        breaks.push(BreakDecision {
            break_id: b.id.clone(),
            ads,
        });
    }
    let d = Decision {
        request_id: p.request.request_id.clone(),
        breaks,
        model_versions: vec![],
        timings: StageTimings::default(),
        eligible: 0,
        degraded: vec![],
        experiments: vec![],
    };
    if let Some(resp) = bid_response(plan, &d, |a| BidAd {
        price: Micros(a.price_cpm.0),
        adomain: format!("{}.example", a.advertiser_id.as_str()),
        crid: a.creative_id.as_str().to_owned(),
        ..BidAd::default()
    }) {
        // Either verdict is fine; it must not panic.
        let _ = check_response(plan, &resp);
    }
}

fn ad(k: usize, dur: u32, slot: Option<String>) -> PlacedAd {
    PlacedAd {
        line_item_id: format!("li{k}").as_str().into(),
        creative_id: format!("cr{k}").as_str().into(),
        advertiser_id: format!("adv{k}").as_str().into(),
        duration_s: dur,
        price_cpm: Micros(1_000_000_000),
        ecpm: Micros(1_000_000_000),
        slot,
        multiplier: 1.0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_bid_request(&bytes);
    }

    #[test]
    fn random_json_never_panics(v in any_json()) {
        if let Ok(plan) = parse_bid_request(v.to_string().as_bytes()) {
            exercise_response(&plan);
        }
    }

    #[test]
    fn mutated_pod_requests_never_panic(
        edits in prop::collection::vec((0..FIELDS.len(), any_json()), 1..4)
    ) {
        let mut doc = base();
        for (f, v) in edits {
            set(&mut doc, FIELDS[f], v);
        }
        match parse_bid_request(doc.to_string().as_bytes()) {
            Ok(plan) => {
                if let Some(p) = plan.bid() {
                    // What parses is a request the core accepts as it is.
                    prop_assert!(p.request.clone().validate().is_ok());
                    prop_assert_eq!(p.request.breaks.len(), p.breaks.len());
                }
                exercise_response(&plan);
            }
            Err(e) => prop_assert!(!e.field.is_empty() && !e.message.is_empty()),
        }
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let deep = format!(
        "{{\"id\":\"r\",\"ext\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(parse_bid_request(deep.as_bytes()).is_err());
}
