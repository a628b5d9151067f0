//! End-to-end ad serving over the industry's formats on the real binary: OpenRTB 2.6 pods,
//! VAST 4.2 documents checked by xmllint against the IAB schema, tracking pixels that count
//! toward frequency caps, and first-price notices.

mod common;

use common::Server;
use podium_openrtb::{check_response, parse_bid_request};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn conformance() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../podium-openrtb/tests/conformance")
}

/// Posts an OpenRTB request; a 200 answer must keep every pod rule of the request.
async fn auction(server: &Server, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(server.url("/openrtb2/auction"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let answer: Value = r.json().await.unwrap_or(Value::Null);
    if status == 200 {
        let plan = parse_bid_request(body.to_string().as_bytes()).unwrap();
        check_response(&plan, &answer).unwrap_or_else(|e| panic!("{e}\n{answer:#}"));
        assert_eq!(answer["id"], body["id"]);
    }
    (status, answer)
}

fn base_request(id: &str, imps: Vec<Value>) -> Value {
    json!({
        "id": id,
        "imp": imps,
        "site": {"page": "https://tv.example/watch/42",
                 "content": {"id": "title-42", "genre": "Drama", "livestream": 0}},
        "device": {"devicetype": 3, "ifa": "dev-1", "geo": {"country": "USA", "region": "CA"}},
        "user": {"id": "viewer-1"},
        "tmax": 500,
        "cur": ["USD"]
    })
}

fn bids(answer: &Value) -> Vec<Value> {
    answer["seatbid"][0]["bid"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn openrtb_pods_are_answered_within_every_rule() {
    let server = Server::start().await;

    // The IAB examples: the video one is answered (or passed on), the banner ones are not ours.
    let dir = conformance().join("openrtb2.6/bid-request");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let body: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let (status, answer) = auction(&server, &body).await;
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name == "video.json" {
            assert!(status == 200 || status == 204, "{name}: {status} {answer}");
        } else {
            assert_eq!(status, 204, "{name}: {answer}");
        }
    }

    // A dynamic pod: 90 s, at most 4 ads of exactly 15 or 30 s, $0.10 per second, one ad per
    // advertiser domain and per category.
    let dynamic = base_request(
        "dyn-1",
        vec![json!({"id": "1", "bidfloor": 2.0, "video": {
            "mimes": ["video/mp4"], "podid": "pod-1", "poddur": 90, "maxseq": 4,
            "rqddurs": [15, 30], "mincpmpersec": 0.1, "poddedupe": [1, 2]}})],
    );
    let (status, answer) = auction(&server, &dynamic).await;
    assert_eq!(status, 200, "{answer}");
    let got = bids(&answer);
    assert!(!got.is_empty() && got.len() <= 4, "{answer:#}");
    for b in &got {
        assert_eq!(b["impid"], "1");
        assert!(b["dur"] == 15 || b["dur"] == 30, "{b}");
        assert!(b["adm"].as_str().unwrap().contains("<VAST version=\"4.2\""));
        assert!(b["burl"]
            .as_str()
            .unwrap()
            .contains("/v1/track?e=impression"));
    }

    // A structured pod: three slots of their own lengths and floors, first and last fixed.
    let slot = |id: &str, pos: i64, min: i64, max: i64, floor: f64| {
        json!({"id": id, "bidfloor": floor, "video": {"mimes": ["video/mp4"], "podid": "p",
               "slotinpod": pos, "minduration": min, "maxduration": max}})
    };
    let structured = base_request(
        "str-1",
        vec![
            slot("a", 1, 5, 15, 3.0),
            slot("b", 0, 15, 30, 2.0),
            slot("c", -1, 5, 30, 4.0),
        ],
    );
    let (status, answer) = auction(&server, &structured).await;
    assert_eq!(status, 200, "{answer}");
    let got = bids(&answer);
    let mut imps: Vec<&str> = got.iter().map(|b| b["impid"].as_str().unwrap()).collect();
    imps.sort();
    imps.dedup();
    assert_eq!(imps.len(), got.len(), "one bid per slot: {answer:#}");

    // Hybrid: a first slot of its own and a dynamic remainder in the same pod.
    let hybrid = base_request(
        "hyb-1",
        vec![
            slot("s1", 1, 5, 15, 1.0),
            json!({"id": "d", "video": {"mimes": ["video/mp4"], "podid": "p", "poddur": 60,
                   "maxseq": 3, "minduration": 5, "maxduration": 30}}),
        ],
    );
    let (status, answer) = auction(&server, &hybrid).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        bids(&answer).iter().any(|b| b["impid"] == "d"),
        "{answer:#}"
    );

    // Blocked categories never bid: an IAB parent code (`IAB8`) blocks its children (`IAB8-5`).
    let parent = |c: &str| c.split('-').next().unwrap().to_string();
    let cats: Vec<String> = got
        .iter()
        .flat_map(|b| b["cat"].as_array().cloned().unwrap_or_default())
        .map(|c| parent(c.as_str().unwrap()))
        .collect();
    assert!(cats.iter().all(|c| c.starts_with("IAB")), "{cats:?}");
    let mut blocked = dynamic.clone();
    blocked["id"] = json!("dyn-2");
    blocked["bcat"] = json!(cats);
    blocked["badv"] = json!([got[0]["adomain"][0]]);
    let (status, answer) = auction(&server, &blocked).await;
    assert!(status == 200 || status == 204, "{answer}");
    for b in bids(&answer) {
        for c in b["cat"].as_array().unwrap() {
            assert!(
                !cats.contains(&parent(c.as_str().unwrap())),
                "blocked {c}: {answer:#}"
            );
        }
        assert_ne!(b["adomain"], got[0]["adomain"], "blocked advertiser bid");
    }

    // Bad input: a 400 naming the field.
    let mut bad = dynamic.clone();
    bad["imp"][0]["video"]["minduration"] = json!(5);
    let (status, answer) = auction(&server, &bad).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "imp[0].video.rqddurs", "{answer}");
    let (status, answer) = auction(&server, &json!({"id": "x", "imp": "nope"})).await;
    assert_eq!(status, 400);
    assert_eq!(answer["field"], "imp", "{answer}");
    let (status, answer) = auction(&server, &json!({"id": "x"})).await;
    assert_eq!(status, 400);
    assert_eq!(answer["field"], "imp", "{answer}");
}

#[tokio::test]
async fn first_price_bids_are_shaded_from_notices() {
    let server = Server::start().await;
    let mut req = base_request(
        "fp-1",
        vec![
            json!({"id": "1", "video": {"mimes": ["video/mp4"], "podid": "p", "poddur": 60,
                    "maxseq": 2, "minduration": 5, "maxduration": 30}}),
        ],
    );
    req["at"] = json!(1);
    let (status, answer) = auction(&server, &req).await;
    assert_eq!(status, 200, "{answer}");
    let bid = &bids(&answer)[0];
    let nurl = bid["nurl"].as_str().expect("a win notice URL");
    let lurl = bid["lurl"].as_str().expect("a loss notice URL");
    // The exchange substitutes the macro, then calls.
    for url in [nurl.replace("${AUCTION_PRICE}", "7.5"), lurl.to_string()] {
        let r = reqwest::get(url).await.unwrap();
        assert_eq!(r.status(), 204);
    }
    let state = server.get_json("/v1/auction/state").await;
    let model = &state["bid_shading"][0];
    assert_eq!(model["segment"], "tv|drama", "{state}");
    assert_eq!(model["model"]["observations"], 2, "{state}");
}

fn xmllint(doc: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("doc.xml");
    std::fs::write(&file, doc).unwrap();
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(conformance().join("vast/vast_4.2.xsd"))
        .arg(&file)
        .output()
        .expect("this test needs xmllint on PATH (Debian: apt-get install libxml2-utils)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// The text of every `<Tag …><![CDATA[…]]></Tag>` in a document.
fn cdata_of(doc: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}");
    doc.match_indices(&open)
        .filter_map(|(i, _)| {
            let rest = &doc[i..];
            let start = rest.find("<![CDATA[")? + 9;
            let end = rest[start..].find("]]>")?;
            Some(rest[start..start + end].to_string())
        })
        .collect()
}

async fn vast(server: &Server, query: &str) -> (u16, String) {
    let r = reqwest::get(server.url(&format!("/v1/vast?{query}")))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn applied(server: &Server) -> u64 {
    let s = server.get_json("/v1/features/stats").await;
    s["stream"]["applied"].as_u64().unwrap()
}

#[tokio::test]
async fn vast_pods_validate_and_their_impressions_count_toward_caps() {
    let server = Server::start().await;
    let market: Value = serde_json::from_slice(
        &std::fs::read(server.data.path().join("marketplace.json")).unwrap(),
    )
    .unwrap();
    // Per-day line item caps of the demo marketplace.
    let caps: HashMap<String, u64> = market["line_items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|li| {
            let cap = li["caps"]
                .as_array()?
                .iter()
                .find(|c| c["scope"] == "line_item")?;
            Some((li["id"].as_str()?.to_string(), cap["max"].as_u64()?))
        })
        .collect();
    assert!(!caps.is_empty());

    let mut served: HashMap<String, u64> = HashMap::new();
    let mut fired = 0;
    let mut clicks = 0.0;
    for i in 0..25 {
        let (status, doc) = vast(
            &server,
            &format!("user_id=cap-viewer&country=US&device=tv&genre=drama&max_ads=4&max_duration_s=120&request_id=v{i}"),
        )
        .await;
        assert_eq!(status, 200);
        xmllint(&doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
        let ads = doc.matches("<Ad ").count();
        assert!(ads <= 4, "{doc}");
        if i == 0 {
            assert!(ads > 0, "the demo fills a 4-ad break: {doc}");
            assert!(doc.contains("sequence=\"1\""), "{doc}");
            assert!(doc.contains("<Tracking event=\"firstQuartile\">"), "{doc}");
        }
        // The player reports every impression, twice: the second is a duplicate.
        for url in cdata_of(&doc, "Impression") {
            let li = url
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("li="))
                .unwrap()
                .to_string();
            *served.entry(li).or_default() += 1;
            for _ in 0..2 {
                let r = reqwest::get(&url).await.unwrap();
                assert_eq!(r.status(), 204, "{url}");
            }
            fired += 1;
        }
        // The viewer clicks the first ad of every other break (a click counts once too).
        if i % 2 == 0 {
            if let Some(url) = cdata_of(&doc, "ClickTracking").first() {
                for _ in 0..2 {
                    assert_eq!(reqwest::get(url).await.unwrap().status(), 204);
                }
                fired += 1;
                clicks += 1.0;
            }
        }
        let started = Instant::now();
        while applied(&server).await < fired {
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(applied(&server).await, fired, "duplicates are not applied");
    let mut binding = 0;
    for (li, n) in &served {
        if let Some(max) = caps.get(li) {
            assert!(
                n <= max,
                "{li} served {n} times to one viewer, capped at {max}"
            );
            binding += u64::from(n == max);
        }
    }
    assert!(binding > 0, "no cap was reached: {served:?}");

    // Calibration joined each impression and click with the CTR model's prediction for that ad.
    let impressions: u64 = served.values().sum();
    let report = server.get_json("/v1/monitor/calibration?hours=1").await;
    let ctr = report["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == "ctr" && r["segment"] == "all")
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(ctr["impressions"], impressions as f64, "{ctr}");
    assert_eq!(ctr["observed"], clicks, "{ctr}");
    assert!(ctr["calibration_ratio"].as_f64().unwrap() > 0.0, "{ctr}");
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("podium_model_calibration_ratio{model=\"ctr\""),
        "{metrics}"
    );
    let bad = reqwest::get(server.url("/v1/monitor/calibration?hours=99"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // No fill (no creative is a second long) is an empty, valid VAST.
    let (status, doc) = vast(
        &server,
        "user_id=u&country=US&device=tv&genre=drama&max_ads=2&max_duration_s=1",
    )
    .await;
    assert_eq!(status, 200);
    assert!(!doc.contains("<Ad "), "{doc}");
    xmllint(&doc).unwrap();

    // Bad input names the parameter.
    let (status, body) = vast(&server, "country=US&max_ads=2&max_duration_s=30").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("user_id"), "{body}");
    let (status, body) = vast(
        &server,
        "user_id=u&country=US&max_ads=two&max_duration_s=30",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("max_ads"), "{body}");
    let r = reqwest::get(server.url("/v1/track?e=teleport&r=x"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
