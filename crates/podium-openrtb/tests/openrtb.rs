//! OpenRTB 2.6 requests in, bid responses out: the IAB examples, ad pods of every kind, refused
//! input with the exact field path, and responses checked against the pod rules.

use podium_core::{
    BreakDecision, BreakPosition, Decision, DedupeKey, Device, Micros, PlacedAd, SlotPosition,
    StageTimings,
};
use podium_openrtb::{
    bid_response, check_response, parse_bid_request, AuctionKind, BidAd, BidPlan, BidRequestPlan,
    NoBidReason, WireError,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

fn conformance() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/openrtb2.6")
}

fn plan(v: Value) -> BidPlan {
    match parse_bid_request(v.to_string().as_bytes()) {
        Ok(BidRequestPlan::Bid(p)) => p,
        other => panic!("expected a plan to bid, got {other:?}"),
    }
}

fn refused(v: Value) -> WireError {
    refused_bytes(v.to_string().as_bytes())
}

fn refused_bytes(b: &[u8]) -> WireError {
    match parse_bid_request(b) {
        Err(e) => e,
        Ok(p) => panic!("expected an error, got {p:?}"),
    }
}

fn video_imp(id: &str, video: Value) -> Value {
    let mut v = json!({ "mimes": ["video/mp4"] });
    v.as_object_mut()
        .unwrap()
        .extend(video.as_object().unwrap().clone());
    json!({ "id": id, "video": v })
}

fn request(imps: Vec<Value>) -> Value {
    json!({ "id": "req-1", "imp": imps })
}

// ----- the IAB's examples ----------------------------------------------------------------------

#[test]
fn every_conformance_request_parses() {
    let dir = conformance().join("bid-request");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("conformance bid requests") {
        let path = entry.unwrap().path();
        let body = std::fs::read(&path).unwrap();
        let plan = parse_bid_request(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_str().unwrap();
        if name == "video.json" {
            let p = plan.bid().expect("video.json is bid on");
            assert_eq!(p.request.breaks.len(), 1);
            assert_eq!(p.breaks[0].slots[0].imp_id, "1");
            assert_eq!(p.auction, AuctionKind::SecondPrice);
            assert_eq!(p.request.tmax, Some(Duration::from_millis(120)));
            assert_eq!(p.request.user.id.as_str(), "456789876567897654678987656789");
            assert_eq!(p.request.user.country, "ZZ");
            assert_eq!(p.request.user.segments.len(), 2);
            let slot = &p.request.breaks[0].rules.slots[0];
            assert_eq!(slot.durations.min_s, 5);
            assert_eq!(slot.durations.max_s, Some(30));
            assert_eq!(slot.floor_cpm, Some(Micros(30_000)));
            assert_eq!(p.request.content.id.as_str(), "1234567");
        } else {
            assert!(
                matches!(
                    plan,
                    BidRequestPlan::NoBid {
                        reason: NoBidReason::NoVideoImpression,
                        ..
                    }
                ),
                "{name}: {plan:?}"
            );
        }
        seen += 1;
    }
    assert_eq!(seen, 5, "the five IAB example requests");
}

// ----- pods ------------------------------------------------------------------------------------

fn dynamic_request() -> Value {
    json!({
        "id": "dyn-1", "at": 1, "tmax": 200, "cur": ["USD"],
        "imp": [{
            "id": "d1", "bidfloor": 2.5, "bidfloorcur": "USD",
            "video": {
                "mimes": ["video/mp4"], "w": 1920, "h": 1080, "startdelay": 0,
                "podid": "p1", "poddur": 90, "maxseq": 4, "rqddurs": [15, 30],
                "mincpmpersec": 0.1, "poddedupe": [1, 2, 3, 4, 501], "ext": {"x": [1, 2]}
            },
            "ext": {"anything": true}
        }],
        "device": {"devicetype": 3, "ifa": "ifa-1", "geo": {"country": "USA", "region": "ca", "utcoffset": -480}},
        "app": {"id": "app-1", "content": {"id": "show-9", "genre": "Drama", "livestream": 1, "contentrating": "TV-14"}},
        "user": {"data": [{"segment": [{"id": "Sports-Fans"}, {"id": "x"}, {"name": "no id"}]}]},
        "bcat": ["IAB25"], "badv": ["bad.example"],
        "unknown_top_level": {"deep": [[[]]]}
    })
}

#[test]
fn dynamic_pod() {
    let p = plan(dynamic_request());
    assert_eq!(p.auction, AuctionKind::FirstPrice);
    let r = &p.request;
    assert_eq!(r.request_id.as_str(), "dyn-1");
    assert_eq!(r.tmax, Some(Duration::from_millis(200)));
    assert_eq!(r.user.id.as_str(), "ifa-1");
    assert_eq!(r.user.country, "US");
    assert_eq!(r.user.region.as_deref(), Some("CA"));
    assert_eq!(r.user.utc_offset_min, Some(-480));
    assert_eq!(r.user.device, Device::Tv);
    assert_eq!(r.user.segments, vec!["sports-fans", "x"]);
    assert_eq!(r.content.id.as_str(), "show-9");
    assert_eq!(r.content.genre, "drama");
    assert!(r.content.live);
    assert_eq!(r.content.rating.as_deref(), Some("tv-14"));
    assert_eq!(r.blocked_categories, vec!["iab25"]);
    assert_eq!(r.blocked_advertisers, vec!["bad.example"]);

    assert_eq!(r.breaks.len(), 1);
    let b = &r.breaks[0];
    assert_eq!(b.id.as_str(), "pod:p1");
    assert_eq!(b.position, BreakPosition::Preroll);
    assert_eq!(b.max_ads, 4);
    assert_eq!(b.max_duration_s, 90);
    assert_eq!(b.rules.ad_durations.exact_s, vec![15, 30]);
    assert_eq!(b.rules.floor_cpm, Some(Micros(2_500_000)));
    assert_eq!(b.rules.floor_cpm_per_s, Some(Micros(100_000)));
    assert_eq!(
        b.rules.dedupe,
        vec![
            DedupeKey::Advertiser,
            DedupeKey::Category,
            DedupeKey::Creative
        ]
    );
    assert!(b.rules.slots.is_empty());
    let imps = &p.breaks[0];
    assert_eq!(imps.pod_id.as_deref(), Some("p1"));
    let d = imps.dynamic.as_ref().unwrap();
    assert_eq!(d.imp_id, "d1");
    assert_eq!(d.player_size, Some((1920, 1080)));
    assert_eq!(d.mimes, vec!["video/mp4"]);
}

#[test]
fn dynamic_pod_without_maxseq_is_bounded_by_the_shortest_duration() {
    let p = plan(request(vec![video_imp(
        "d",
        json!({"poddur": 60, "minduration": 15, "maxduration": 30}),
    )]));
    let b = &p.request.breaks[0];
    assert_eq!((b.max_ads, b.max_duration_s), (4, 60));
    assert_eq!(b.id.as_str(), "imp:d");
    // No shortest duration known: bounded by the core's most ads per break.
    let p = plan(request(vec![video_imp("d", json!({"poddur": 300}))]));
    assert_eq!(p.request.breaks[0].max_ads, 32);
    // maxseq above the core's bound is clamped, not refused.
    let p = plan(request(vec![video_imp(
        "d",
        json!({"poddur": 300, "maxseq": 500}),
    )]));
    assert_eq!(p.request.breaks[0].max_ads, 32);
}

#[test]
fn structured_pod() {
    let mut imps = Vec::new();
    for (id, slot, floor, min, max) in [
        ("s1", 1, 10.0, 15, 30),
        ("s2", 0, 5.0, 5, 15),
        ("s3", -1, 8.0, 30, 30),
    ] {
        let mut imp = video_imp(
            id,
            json!({"podid": 7, "slotinpod": slot, "minduration": min, "maxduration": max}),
        );
        imp["bidfloor"] = json!(floor);
        imps.push(imp);
    }
    let p = plan(request(imps));
    assert_eq!(p.request.breaks.len(), 1);
    let b = &p.request.breaks[0];
    assert_eq!(b.id.as_str(), "pod:7", "an integer podid is accepted");
    assert_eq!((b.max_ads, b.max_duration_s), (0, 0), "no dynamic part");
    let slots = &b.rules.slots;
    assert_eq!(slots.len(), 3);
    assert_eq!(slots[0].id, "s1");
    assert_eq!(slots[0].position, SlotPosition::First);
    assert_eq!(slots[0].floor_cpm, Some(Micros(10_000_000)));
    assert_eq!(
        (slots[0].durations.min_s, slots[0].durations.max_s),
        (15, Some(30))
    );
    assert_eq!(slots[1].position, SlotPosition::Any);
    assert_eq!(slots[1].floor_cpm, Some(Micros(5_000_000)));
    assert_eq!(slots[2].position, SlotPosition::Last);
    assert_eq!(slots[2].floor_cpm, Some(Micros(8_000_000)));
    let imps = &p.breaks[0];
    assert!(imps.dynamic.is_none());
    let ids: Vec<_> = imps
        .slots
        .iter()
        .map(|s| (s.imp_id.as_str(), s.slot_in_pod))
        .collect();
    assert_eq!(ids, vec![("s1", 1), ("s2", 0), ("s3", -1)]);
}

#[test]
fn first_or_last_takes_the_free_end() {
    let p = plan(request(vec![
        video_imp("a", json!({"podid": "x", "slotinpod": 1})),
        video_imp("b", json!({"podid": "x", "slotinpod": 2})),
    ]));
    assert_eq!(
        p.request.breaks[0].rules.slots[1].position,
        SlotPosition::Last
    );
    let e = refused(request(vec![
        video_imp("a", json!({"podid": "x", "slotinpod": 1})),
        video_imp("b", json!({"podid": "x", "slotinpod": -1})),
        video_imp("c", json!({"podid": "x", "slotinpod": 2})),
    ]));
    assert_eq!(e.field, "imp[2].video.slotinpod");
}

#[test]
fn hybrid_pod() {
    let mut slot = video_imp(
        "s1",
        json!({"podid": "h", "slotinpod": 1, "maxduration": 30}),
    );
    slot["bidfloor"] = json!(20);
    let mut dynamic = video_imp(
        "d1",
        json!({"podid": "h", "poddur": 60, "maxseq": 3, "minduration": 5, "maxduration": 30, "poddedupe": [1]}),
    );
    dynamic["bidfloor"] = json!(4);
    let p = plan(request(vec![slot, dynamic]));
    let b = &p.request.breaks[0];
    assert_eq!((b.max_ads, b.max_duration_s), (3, 60));
    assert_eq!(b.rules.slots.len(), 1);
    assert_eq!(b.rules.slots[0].floor_cpm, Some(Micros(20_000_000)));
    assert_eq!(b.rules.floor_cpm, Some(Micros(4_000_000)));
    assert_eq!(b.rules.ad_durations.min_s, 5);
    assert_eq!(b.rules.dedupe, vec![DedupeKey::Advertiser]);
    assert_eq!(p.breaks[0].dynamic.as_ref().unwrap().imp_id, "d1");
    assert_eq!(p.breaks[0].slots[0].imp_id, "s1");
}

#[test]
fn pods_play_in_podseq_order() {
    let p = plan(request(vec![
        video_imp(
            "last-a",
            json!({"podid": "A", "podseq": -1, "poddur": 30, "startdelay": -2}),
        ),
        video_imp("mid", json!({"maxduration": 30, "startdelay": 600})),
        video_imp("first-b", json!({"podid": "B", "podseq": 1, "poddur": 60})),
        video_imp("last-a2", json!({"podid": "A", "slotinpod": 1})),
    ]));
    let ids: Vec<_> = p.request.breaks.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, vec!["pod:B", "imp:mid", "pod:A"]);
    let positions: Vec<_> = p.request.breaks.iter().map(|b| b.position).collect();
    assert_eq!(
        positions,
        vec![
            BreakPosition::Midroll,
            BreakPosition::Midroll,
            BreakPosition::Postroll
        ]
    );
    assert_eq!(p.breaks[2].slots[0].imp_id, "last-a2");
    assert_eq!(p.breaks[2].dynamic.as_ref().unwrap().imp_id, "last-a");
}

#[test]
fn banner_imps_are_skipped_beside_video() {
    let p = plan(json!({"id": "r", "imp": [
        {"id": "b", "banner": {"w": 300, "h": 250}},
        {"id": "v", "video": {"mimes": ["video/mp4"]}}
    ]}));
    assert_eq!(p.breaks.len(), 1);
    assert_eq!(p.breaks[0].slots[0].imp_id, "v");
    assert_eq!(p.breaks[0].slots[0].index, 1);
}

#[test]
fn viewer_fallbacks() {
    let mut r = request(vec![video_imp("v", json!({}))]);
    r["user"] = json!({"buyeruid": "buyer-7", "geo": {"country": "deu"}});
    r["device"] = json!({"ifa": "ifa-1", "devicetype": 5});
    let p = plan(r.clone());
    assert_eq!(p.request.user.id.as_str(), "buyer-7");
    assert_eq!(
        p.request.user.country, "DE",
        "user.geo when the device has none"
    );
    assert_eq!(p.request.user.device, Device::Tablet);
    r["user"] = json!({});
    r["device"] = json!({"geo": {"country": "gb"}, "devicetype": 2});
    let p = plan(r.clone());
    assert_eq!(p.request.user.id.as_str(), "anon:req-1");
    assert_eq!(p.request.user.country, "GB");
    assert_eq!(p.request.user.device, Device::Desktop);
    r["device"] = json!({"geo": {"country": "QQQ"}});
    assert_eq!(plan(r.clone()).request.user.country, "ZZ");
    r["tmax"] = json!(60_000);
    assert_eq!(
        plan(r).request.tmax,
        Some(Duration::from_secs(10)),
        "clamped"
    );
}

#[test]
fn currency_other_than_usd_is_a_no_bid() {
    let mut r = request(vec![video_imp("v", json!({}))]);
    r["cur"] = json!(["EUR", "GBP"]);
    let p = parse_bid_request(r.to_string().as_bytes()).unwrap();
    assert!(matches!(
        p,
        BidRequestPlan::NoBid {
            reason: NoBidReason::Currency(_),
            ..
        }
    ));
    assert_eq!(p.request_id(), "req-1");

    let mut r = request(vec![video_imp("v", json!({}))]);
    r["imp"][0]["bidfloor"] = json!(1.0);
    r["imp"][0]["bidfloorcur"] = json!("EUR");
    let p = parse_bid_request(r.to_string().as_bytes()).unwrap();
    assert!(matches!(
        p,
        BidRequestPlan::NoBid {
            reason: NoBidReason::Currency(_),
            ..
        }
    ));
}

// ----- refused input ---------------------------------------------------------------------------

#[test]
fn wrong_types_name_the_field() {
    assert_eq!(refused(json!({"id": "r", "imp": {}})).field, "imp");
    let e = refused(request(vec![video_imp("v", json!({"minduration": "5"}))]));
    assert_eq!(e.field, "imp[0].video.minduration");
    let mut r = request(vec![video_imp("v", json!({}))]);
    r["tmax"] = json!("100");
    assert_eq!(refused(r).field, "tmax");
    let e = refused(request(vec![
        video_imp("a", json!({})),
        video_imp("b", json!({"rqddurs": [15, "30"]})),
    ]));
    assert_eq!(e.field, "imp[1].video.rqddurs[1]");
    let mut r = request(vec![video_imp("v", json!({}))]);
    r["device"] = json!({"geo": {"utcoffset": 1.5}});
    assert_eq!(refused(r).field, "device.geo.utcoffset");
    let mut r = request(vec![video_imp("v", json!({}))]);
    r["imp"][0]["bidfloor"] = json!("1.0");
    assert_eq!(refused(r).field, "imp[0].bidfloor");
    assert_eq!(refused_bytes(b"{not json").field, "body");
    assert_eq!(refused_bytes(b"[]").field, "body");
    assert_eq!(
        refused_bytes(b"{\"id\":\"r\",\"imp\":[]} trailing").field,
        "body"
    );
}

#[test]
fn missing_or_empty_parts_are_refused() {
    assert_eq!(refused(json!({"id": "r"})).field, "imp");
    assert_eq!(refused(json!({"id": "r", "imp": []})).field, "imp");
    assert_eq!(
        refused(json!({"imp": [{"id": "v", "video": {}}]})).field,
        "id"
    );
    assert_eq!(
        refused(json!({"id": "r", "imp": [{"video": {}}]})).field,
        "imp[0].id"
    );
    let e = refused(request(vec![
        video_imp("v", json!({})),
        video_imp("v", json!({})),
    ]));
    assert_eq!(e.field, "imp[1].id");
    assert!(e.message.contains("duplicate"), "{e}");
}

#[test]
fn contradictory_pod_rules_are_refused() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"rqddurs": [15], "minduration": 5}),
            "imp[0].video.rqddurs",
        ),
        (
            json!({"rqddurs": [15], "maxduration": 30}),
            "imp[0].video.rqddurs",
        ),
        (
            json!({"minduration": 30, "maxduration": 15}),
            "imp[0].video.maxduration",
        ),
        (json!({"minduration": -5}), "imp[0].video.minduration"),
        (json!({"rqddurs": [15, 0]}), "imp[0].video.rqddurs[1]"),
        (json!({"poddur": 0}), "imp[0].video.poddur"),
        (json!({"poddur": -30}), "imp[0].video.poddur"),
        (json!({"poddur": 30, "maxseq": 0}), "imp[0].video.maxseq"),
        (
            json!({"poddur": 30, "mincpmpersec": -1}),
            "imp[0].video.mincpmpersec",
        ),
        (json!({"slotinpod": 5}), "imp[0].video.slotinpod"),
        (json!({"podseq": 3}), "imp[0].video.podseq"),
        (json!({"startdelay": -7}), "imp[0].video.startdelay"),
    ];
    for (video, field) in cases {
        let e = refused(request(vec![video_imp("v", video.clone())]));
        assert_eq!(e.field, field, "{video} gave {e}");
    }
    let mut r = request(vec![video_imp("v", json!({}))]);
    r["imp"][0]["bidfloor"] = json!(-1);
    assert_eq!(refused(r).field, "imp[0].bidfloor");
    let mut r = request(vec![video_imp("v", json!({}))]);
    r["at"] = json!(3);
    assert_eq!(refused(r).field, "at");
    let mut r = request(vec![video_imp("v", json!({}))]);
    r["tmax"] = json!(-1);
    assert_eq!(refused(r).field, "tmax");
    let mut r = request(vec![video_imp("v", json!({}))]);
    r["device"] = json!({"geo": {"country": "U5A"}});
    assert_eq!(refused(r).field, "device.geo.country");
    let mut r = request(vec![video_imp("v", json!({}))]);
    r["device"] = json!({"geo": {"utcoffset": 2000}});
    assert_eq!(refused(r).field, "device.geo.utcoffset");
    let mut r = request(vec![video_imp("v", json!({}))]);
    r["bcat"] = json!(["IAB1", " "]);
    assert_eq!(
        refused(r).field,
        "bcat[1]",
        "a core validation error mapped back"
    );
}

#[test]
fn contradictions_between_imps_are_refused() {
    let two_first = request(vec![
        video_imp("a", json!({"podid": "p", "slotinpod": 1})),
        video_imp("b", json!({"podid": "p", "slotinpod": 1})),
    ]);
    assert_eq!(refused(two_first).field, "imp[1].video.slotinpod");
    let two_last = request(vec![
        video_imp("a", json!({"podid": "p", "slotinpod": -1})),
        video_imp("b", json!({"podid": "p"})),
        video_imp("c", json!({"podid": "p", "slotinpod": -1})),
    ]);
    assert_eq!(refused(two_last).field, "imp[2].video.slotinpod");
    let two_dynamic = request(vec![
        video_imp("a", json!({"podid": "p", "poddur": 30})),
        video_imp("b", json!({"podid": "p", "poddur": 60})),
    ]);
    assert_eq!(refused(two_dynamic).field, "imp[1].video.poddur");
    let podseq_in_pod = request(vec![
        video_imp("a", json!({"podid": "p", "podseq": 1})),
        video_imp("b", json!({"podid": "p", "podseq": -1})),
    ]);
    assert_eq!(refused(podseq_in_pod).field, "imp[1].video.podseq");
    let two_first_pods = request(vec![
        video_imp("a", json!({"podid": "p", "podseq": 1})),
        video_imp("b", json!({"podid": "q", "podseq": 1})),
    ]);
    assert_eq!(refused(two_first_pods).field, "imp[1].video.podseq");
}

// ----- responses -------------------------------------------------------------------------------

fn placed(li: &str, cr: &str, adv: &str, dur: u32, cpm: f64, slot: Option<&str>) -> PlacedAd {
    PlacedAd {
        line_item_id: li.into(),
        creative_id: cr.into(),
        advertiser_id: adv.into(),
        duration_s: dur,
        price_cpm: Micros::from_units(cpm),
        ecpm: Micros::from_units(cpm),
        slot: slot.map(str::to_owned),
        multiplier: 1.0,
    }
}

fn decision(request_id: &str, breaks: Vec<(&str, Vec<PlacedAd>)>) -> Decision {
    Decision {
        request_id: request_id.into(),
        breaks: breaks
            .into_iter()
            .map(|(id, ads)| BreakDecision {
                break_id: id.into(),
                ads,
            })
            .collect(),
        model_versions: Vec::new(),
        timings: StageTimings::default(),
        eligible: 0,
        degraded: Vec::new(),
        experiments: Vec::new(),
    }
}

/// The caller's creative lookup, in a test: advertiser id → domain, price = the clearing price.
fn creative(ad: &PlacedAd) -> BidAd {
    BidAd {
        price: ad.price_cpm,
        adomain: format!("{}.example", ad.advertiser_id.as_str()),
        cat: vec![format!("IAB-{}", ad.advertiser_id.as_str())],
        adm: format!(
            "<VAST version=\"4.2\"><!-- {} --></VAST>",
            ad.creative_id.as_str()
        ),
        nurl: None,
        burl: Some(format!("https://bill.example/{}", ad.line_item_id.as_str())),
        crid: ad.creative_id.as_str().to_owned(),
    }
}

fn hybrid_plan() -> BidRequestPlan {
    let mut slot = video_imp(
        "s1",
        json!({"podid": "h", "slotinpod": 1, "maxduration": 30}),
    );
    slot["bidfloor"] = json!(20);
    let mut dynamic = video_imp(
        "d1",
        json!({"podid": "h", "poddur": 60, "maxseq": 3, "rqddurs": [15, 30],
               "mincpmpersec": 0.5, "poddedupe": [1, 3]}),
    );
    dynamic["bidfloor"] = json!(4);
    let lone = video_imp("solo", json!({"maxduration": 30}));
    parse_bid_request(request(vec![slot, dynamic, lone]).to_string().as_bytes()).unwrap()
}

#[test]
fn bid_response_answers_each_imp() {
    let plan = hybrid_plan();
    let d = decision(
        "req-1",
        vec![
            (
                "pod:h",
                vec![
                    placed("li-1", "cr-1", "a1", 30, 25.0, Some("s1")),
                    placed("li-2", "cr-2", "a2", 15, 9.0, None),
                    placed("li-3", "cr-3", "a3", 30, 16.0, None),
                    placed("li-4", "cr-4", "a4", 15, 8.0, None),
                ],
            ),
            (
                "imp:solo",
                vec![placed("li-5", "cr-5", "a5", 30, 3.25, Some("solo"))],
            ),
        ],
    );
    let resp = bid_response(&plan, &d, creative).expect("ads were placed");
    assert_eq!(resp["id"], "req-1");
    assert_eq!(resp["cur"], "USD");
    assert_eq!(resp["seatbid"][0]["seat"], "podium");
    let bids = resp["seatbid"][0]["bid"].as_array().unwrap();
    let got: Vec<(&str, i64, u64, f64)> = bids
        .iter()
        .map(|b| {
            (
                b["impid"].as_str().unwrap(),
                b.get("slotinpod").and_then(Value::as_i64).unwrap_or(0),
                b["dur"].as_u64().unwrap(),
                b["price"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("s1", 1, 30, 25.0),
            ("d1", 0, 15, 9.0),
            ("d1", 0, 30, 16.0),
            ("d1", -1, 15, 8.0),
            ("solo", 0, 30, 3.25),
        ]
    );
    for b in bids {
        assert_eq!(b["mtype"], 2);
        assert!(b["adm"].as_str().unwrap().contains("VAST"));
    }
    assert_eq!(bids[0]["adomain"], json!(["a1.example"]));
    assert_eq!(bids[0]["crid"], "cr-1");
    assert_eq!(bids[0]["adid"], "li-1");
    assert_eq!(bids[0]["burl"], "https://bill.example/li-1");
    let ids: std::collections::HashSet<_> =
        bids.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), bids.len(), "bid ids are unique");
    check_response(&plan, &resp).unwrap();
}

#[test]
fn dynamic_pod_marks_first_and_last() {
    let plan = parse_bid_request(dynamic_request().to_string().as_bytes()).unwrap();
    let d = decision(
        "dyn-1",
        vec![(
            "pod:p1",
            vec![
                placed("l1", "c1", "a1", 30, 10.0, None),
                placed("l2", "c2", "a2", 15, 10.0, None),
                placed("l3", "c3", "a3", 30, 10.0, None),
            ],
        )],
    );
    let resp = bid_response(&plan, &d, creative).unwrap();
    let slots: Vec<i64> = resp["seatbid"][0]["bid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.get("slotinpod").and_then(Value::as_i64).unwrap_or(0))
        .collect();
    assert_eq!(slots, vec![1, 0, -1]);
    check_response(&plan, &resp).unwrap();
}

#[test]
fn no_ads_no_response() {
    let plan = hybrid_plan();
    let d = decision("req-1", vec![("pod:h", vec![]), ("imp:solo", vec![])]);
    assert!(bid_response(&plan, &d, creative).is_none());
    let nobid = parse_bid_request(br#"{"id":"x","imp":[{"id":"1","banner":{}}]}"#).unwrap();
    let d = decision(
        "x",
        vec![("imp:1", vec![placed("l", "c", "a", 30, 1.0, Some("1"))])],
    );
    assert!(bid_response(&nobid, &d, creative).is_none());
    // An ad on a break or slot the request did not have is left out.
    let d = decision(
        "req-1",
        vec![
            ("pod:nope", vec![placed("l", "c", "a", 30, 30.0, None)]),
            (
                "imp:solo",
                vec![placed("l", "c", "a", 30, 30.0, Some("s1"))],
            ),
        ],
    );
    assert!(bid_response(&plan, &d, creative).is_none());
}

fn good_response() -> (BidRequestPlan, Value) {
    let plan = hybrid_plan();
    let d = decision(
        "req-1",
        vec![(
            "pod:h",
            vec![
                placed("li-1", "cr-1", "a1", 30, 25.0, Some("s1")),
                placed("li-2", "cr-2", "a2", 15, 9.0, None),
                placed("li-3", "cr-3", "a3", 30, 16.0, None),
            ],
        )],
    );
    let resp = bid_response(&plan, &d, creative).unwrap();
    check_response(&plan, &resp).unwrap();
    (plan, resp)
}

fn broken(edit: impl FnOnce(&mut Vec<Value>)) -> String {
    let (plan, mut resp) = good_response();
    edit(resp["seatbid"][0]["bid"].as_array_mut().unwrap());
    check_response(&plan, &resp).expect_err("the response breaks a rule")
}

#[test]
fn check_response_catches_broken_rules() {
    let e = broken(|b| b[1]["price"] = json!(3.0));
    assert!(e.contains("below the floor"), "{e}");
    let e = broken(|b| b[1]["price"] = json!(7.0));
    assert!(e.contains("mincpmpersec"), "{e}");
    let e = broken(|b| b[1]["dur"] = json!(20));
    assert!(e.contains("rqddurs [15, 30]"), "{e}");
    let e = broken(|b| b[0]["dur"] = json!(45));
    assert!(e.contains("0–30 s"), "{e}");
    let e = broken(|b| b[2]["adomain"] = json!(["a2.example"]));
    assert!(e.contains("adomain \"a2.example\""), "{e}");
    let e = broken(|b| b[2]["crid"] = json!("cr-1"));
    assert!(e.contains("crid \"cr-1\""), "{e}");
    let e = broken(|b| {
        let extra = b[1].clone();
        b.push(extra.clone());
        b.push(extra);
    });
    assert!(e.contains("maxseq 3") || e.contains("adomain"), "{e}");
    let e = broken(|b| {
        for x in b.iter_mut().skip(1) {
            x["dur"] = json!(30);
            x["price"] = json!(30.0);
        }
        let mut extra = b[1].clone();
        extra["adomain"] = json!(["other.example"]);
        extra["crid"] = json!("cr-9");
        b.push(extra);
    });
    assert!(e.contains("more than poddur 60 s"), "{e}");
    let e = broken(|b| {
        let mut again = b[0].clone();
        again["adomain"] = json!(["z.example"]);
        again["crid"] = json!("cr-z");
        again.as_object_mut().unwrap().remove("slotinpod");
        b.push(again);
    });
    assert!(e.contains("fixed slot imp \"s1\""), "{e}");
    let e = broken(|b| b[1]["slotinpod"] = json!(1));
    assert!(e.contains("first position"), "{e}");
    let e = broken(|b| b[1]["impid"] = json!("ghost"));
    assert!(e.contains("\"ghost\""), "{e}");
    let e = broken(|b| {
        b[1].as_object_mut().unwrap().remove("dur");
    });
    assert!(e.contains("dur is missing"), "{e}");
    let e = broken(|b| b[1]["mtype"] = json!(1));
    assert!(e.contains("mtype"), "{e}");
}
