//! Decisions of the demo world replayed from their records: the auction again from the logged
//! state, and the models again on the rebuilt frames, must give the same answer bit for bit.

use podium_core::{AdBreak, AdRequest, BreakPosition, Content, Device, User};
use podium_engine::replay::{bound_version, first_difference, replay_auction, Unreplayable};
use podium_engine::{build_demo, Engine, EngineConfig};
use podium_log::{DecisionRecord, MemoryLog};
use podium_serving::ComputePool;
use podium_sim::demo::DemoConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn request(n: usize) -> AdRequest {
    let genres = ["drama", "sports", "news", "kids", "comedy"];
    AdRequest {
        request_id: format!("r-{n}").as_str().into(),
        user: User {
            id: format!("u-{}", n % 97).as_str().into(),
            country: if n.is_multiple_of(5) { "CA" } else { "US" }.into(),
            device: Device::ALL[n % Device::ALL.len()],
            region: None,
            segments: Vec::new(),
            utc_offset_min: None,
        },
        content: Content {
            id: format!("title-{}", n % 13).as_str().into(),
            genre: genres[n % genres.len()].into(),
            live: n.is_multiple_of(3),
            rating: None,
            event_id: None,
        },
        breaks: (0..1 + n % 3)
            .map(|b| AdBreak {
                id: format!("b{b}").as_str().into(),
                position: BreakPosition::Midroll,
                max_ads: 1 + (n + b) as u32 % 4,
                max_duration_s: [30, 60, 90, 120][(n + b) % 4],
                rules: Default::default(),
            })
            .collect(),
        tmax: Some(Duration::from_millis(500)),
        blocked_categories: Vec::new(),
        blocked_advertisers: Vec::new(),
    }
    .validate()
    .unwrap()
}

async fn decided(exploration: f64, n: usize) -> (Engine, Vec<DecisionRecord>) {
    let tmp = tempfile::tempdir().unwrap();
    let log = MemoryLog::spawn(n);
    let cfg = DemoConfig {
        users: 500,
        training_impressions: 5_000,
        ..Default::default()
    };
    let engine = build_demo(
        tmp.path(),
        &cfg,
        EngineConfig {
            exploration,
            ..EngineConfig::default()
        },
        Arc::new(log.clone()),
        ComputePool::new(2),
    )
    .unwrap();
    engine.warm_up(1).await;
    for i in 0..n {
        engine.decide(request(i), Instant::now()).await;
        // Impressions of what was placed, so frequency caps and spend take part.
        if i.is_multiple_of(4) {
            for r in log.recent(1).await {
                for a in r.decision.breaks.iter().flat_map(|b| &b.ads) {
                    engine.record_impression(
                        r.request.user.id.as_str(),
                        a.line_item_id.as_str(),
                        r.ts_ms as i64,
                        Some(a.price_cpm.0 as f64 / 1e6),
                        None,
                        "",
                    );
                }
            }
        }
    }
    let records = log.recent(n).await;
    assert_eq!(records.len(), n);
    (engine, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auction_replays_exactly_and_every_model_rescores_bit_for_bit() {
    let (engine, records) = decided(0.0, 200).await;
    let market = engine.market();
    let models = engine.models();
    let mut ads = 0;
    for r in &records {
        let state = &r.replay;
        assert_eq!(state.market, market.fingerprint);
        let replayed =
            replay_auction(&market, &r.request, r.ts_ms as i64, state, None, true).unwrap();
        assert_eq!(
            first_difference(&r.decision.breaks, &replayed.breaks),
            None,
            "{}",
            r.request.request_id
        );
        ads += replayed.breaks.iter().map(|b| b.ads.len()).sum::<usize>();
        let frame = engine.replay_frame(r).unwrap();
        let k = state.top.len();
        for (m, used) in r.decision.model_versions.iter().skip(1).enumerate() {
            let model = bound_version(&models, &used.name, &used.version).unwrap();
            let again = model.try_score(&frame).unwrap();
            let logged = &state.scores[m * k..(m + 1) * k];
            assert!(
                again
                    .iter()
                    .zip(logged)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} {}: {again:?} vs {logged:?}",
                r.request.request_id,
                used.name
            );
        }
    }
    assert!(ads > 200, "only {ads} ads placed over 200 decisions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_score_or_marketplace_is_found_and_named() {
    let (engine, records) = decided(0.0, 40).await;
    let market = engine.market();
    let r = records
        .iter()
        .find(|r| r.decision.breaks.iter().any(|b| !b.ads.is_empty()))
        .unwrap();
    // The winner's budget lease emptied: it can no longer take part, and the replay must say so.
    let mut state = r.replay.clone();
    let winner = &r
        .decision
        .breaks
        .iter()
        .find(|b| !b.ads.is_empty())
        .unwrap()
        .ads[0];
    let pos = market.position(&winner.line_item_id).unwrap();
    let row = state.top.iter().position(|&i| i == pos).unwrap();
    state.available[row] = 0;
    let replayed = replay_auction(&market, &r.request, r.ts_ms as i64, &state, None, true).unwrap();
    let diff = first_difference(&r.decision.breaks, &replayed.breaks).unwrap();
    assert!(diff.contains("break"), "{diff}");

    let mut state = r.replay.clone();
    state.market ^= 1;
    let err = replay_auction(&market, &r.request, r.ts_ms as i64, &state, None, true).unwrap_err();
    assert!(matches!(err, Unreplayable::Marketplace { .. }), "{err}");
    state.market ^= 1;
    state.reserves.push(0);
    let err = replay_auction(&market, &r.request, r.ts_ms as i64, &state, None, true).unwrap_err();
    assert!(err.to_string().contains("reserves"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exploration_logs_propensities_and_replays_its_draws() {
    let epsilon = 0.3;
    let (engine, records) = decided(epsilon, 300).await;
    let market = engine.market();
    let (mut explored, mut breaks) = (0, 0);
    for r in &records {
        let state = &r.replay;
        assert_eq!(state.explore.len(), r.request.breaks.len());
        for e in &state.explore {
            breaks += 1;
            assert_eq!(e.rate, epsilon);
            explored += usize::from(e.explored);
            if let (Some(p), true) = (e.propensity, e.choices > 0) {
                let n = f64::from(e.choices);
                let greedy = 1.0 - epsilon + epsilon / n;
                assert!(
                    (p - greedy).abs() < 1e-12
                        || (p - epsilon / n).abs() < 1e-12
                        || (e.lead.is_none() && (p - (1.0 - epsilon)).abs() < 1e-12),
                    "{e:?}"
                );
            }
        }
        let replayed =
            replay_auction(&market, &r.request, r.ts_ms as i64, state, None, true).unwrap();
        assert_eq!(first_difference(&r.decision.breaks, &replayed.breaks), None);
        assert_eq!(replayed.explore, state.explore);
    }
    let share = explored as f64 / breaks as f64;
    assert!(
        (0.2..0.4).contains(&share),
        "{explored} of {breaks} breaks explored"
    );
}

/// The logged propensities are right end to end: with exploration on, the IPS and
/// self-normalised IPS estimates of the greedy policy's click rate (from the explored log alone,
/// the reward of each shown lead being its click probability under the demo's ground truth, so
/// that what is tested is the weighting, not click noise) land on its true value, which the
/// ground truth gives exactly for every logged request; ignoring the propensities does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_propensities_recover_the_greedy_policys_true_click_rate() {
    use podium_sim::counterfactual::{ips, snips, Sample};
    let epsilon = 0.5;
    let (engine, records) = decided(epsilon, 1_500).await;
    let market = engine.market();
    let (mut samples, mut truth) = (Vec::new(), Vec::new());
    for r in &records {
        let state = &r.replay;
        let frame = engine.replay_frame(r).unwrap();
        let p_click = |li: &str| {
            let pos = market.position(&li.into())?;
            let row = state.top.iter().position(|&i| i == pos)?;
            Some(
                podium_sim::demo::true_response(|name| {
                    frame
                        .schema()
                        .column(name)
                        .map_or(0.0, |c| f64::from(frame.column(c)[row]))
                })
                .0,
            )
        };
        let mut greedy_state = state.clone();
        greedy_state.explore.clear();
        let greedy = replay_auction(
            &market,
            &r.request,
            r.ts_ms as i64,
            &greedy_state,
            None,
            true,
        )
        .unwrap();
        for (e, b) in state.explore.iter().zip(&greedy.breaks) {
            let lead = b
                .ads
                .iter()
                .filter(|a| {
                    let i = market.position(&a.line_item_id).unwrap() as usize;
                    matches!(
                        market.marketplace.line_items[i].goal,
                        podium_auction::Goal::NonGuaranteed
                    )
                })
                .max_by_key(|a| a.ecpm)
                .map(|a| a.line_item_id.to_string());
            let (Some(p), Some(shown), Some(target)) = (e.propensity, &e.lead, &lead) else {
                continue;
            };
            truth.push(p_click(target).unwrap());
            samples.push(Sample {
                propensity: p,
                target: f64::from(u8::from(shown == target)),
                reward: p_click(shown).unwrap(),
                model_shown: 0.0,
                model_target: 0.0,
            });
        }
    }
    let true_value = truth.iter().sum::<f64>() / truth.len() as f64;
    assert!(samples.len() > 600, "{} samples", samples.len());
    for (name, est) in [
        ("ips", ips(&samples).unwrap()),
        ("snips", snips(&samples).unwrap()),
    ] {
        let slack = 3.0 * est.std_error;
        assert!(
            (est.value - true_value).abs() < slack,
            "{name}: {est:?} against the true {true_value}"
        );
        assert!(est.std_error < 0.05 * true_value, "{name}: {est:?}");
    }
    // Taking every shown lead as if chosen for sure is far off: the test can tell.
    let naive: Vec<Sample> = samples
        .iter()
        .map(|s| Sample {
            propensity: 1.0,
            ..*s
        })
        .collect();
    let est = ips(&naive).unwrap();
    assert!(
        (est.value - true_value).abs() > 10.0 * est.std_error,
        "{est:?} against the true {true_value}"
    );
}
