//! The engine on the standard workload: real model shapes (300-tree GBDTs, 49k-MAC MLPs), a
//! reduced audience so that the test starts quickly.

use podium_engine::{EngineConfig, StandardWorld};
use podium_log::MemoryLog;
use podium_serving::ComputePool;
use podium_sim::standard;
use podium_sim::traffic::{RequestGen, TrafficConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const VIEWERS: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_decisions_fill_pods_with_every_model_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("std");
    standard::generate(&dir, 1).unwrap();
    let world = StandardWorld::load(&dir, Some(VIEWERS)).unwrap();
    assert_eq!(world.spec.seed, 1);
    assert_eq!(world.models.scorers.len(), 8);
    let traffic = TrafficConfig {
        users: VIEWERS,
        ..TrafficConfig::standard()
    };

    // The frame the hydrator builds is the row the generator fitted the models on.
    let mut gen = RequestGen::new(traffic.clone(), 11);
    for _ in 0..5 {
        let req = gen.next_request();
        let hydrated = world.hydrator.hydrate(&req, Duration::from_secs(1)).await;
        assert!(hydrated.user_found);
        let li = 17;
        let cand = &world.market.candidate_features[li];
        let frame = world.hydrator.frame(&hydrated, &[cand.as_slice()]);
        let viewer: u64 = req.user.id.as_str()[2..].parse().unwrap();
        let expected = standard::feature_row(
            &req,
            &standard::viewer_features(1, viewer),
            &standard::candidate_features(1, &world.market.marketplace.line_items[li]),
        );
        // By name: the served space adds the definitions' streamed features between the world's.
        let got: Vec<f32> = standard::feature_space()
            .schema()
            .names()
            .iter()
            .map(|n| frame.column(frame.schema().column(n).unwrap())[0])
            .collect();
        assert_eq!(got, expected);
    }

    // Compute floor: the ranker scores every eligible line item, each scorer the top 100.
    let sample = world.compute_floor(&gen.next_request()).await;
    assert_eq!(sample.failures, 0);
    assert_eq!(sample.scored, 100);
    assert!(sample.eligible >= 100, "{sample:?}");
    assert_eq!(sample.scorer_us.len(), 8);
    assert!(sample.model_us() > 0.0);

    // Decisions through the engine. The deadline is generous: debug builds score far slower
    // than release, and this test is about correctness, not latency.
    let config = EngineConfig {
        default_tmax: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let engine = world.into_engine(config, Arc::new(MemoryLog::spawn(64)), ComputePool::new(2));
    let mut gen = RequestGen::new(traffic, 5);
    let mut eligible = 0;
    let n = 12;
    for _ in 0..n {
        let req = gen.next_request();
        let breaks = req.breaks.len();
        let d = engine.decide(req, Instant::now()).await;
        assert!(d.degraded.is_empty(), "{:?}", d.degraded);
        assert_eq!(d.model_versions.len(), 9);
        assert!(d.model_versions.iter().all(|m| m.tier == 0));
        assert_eq!(d.breaks.len(), breaks);
        for b in &d.breaks {
            assert!(!b.ads.is_empty(), "break {} left empty", b.break_id);
        }
        eligible += d.eligible;
    }
    let mean = eligible / n;
    assert!((300..3_000).contains(&mean), "mean eligible {mean}");
}
