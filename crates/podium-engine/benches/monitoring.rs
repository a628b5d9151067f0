//! What model monitoring costs a decision: the demo world's decisions with monitoring on
//! (predictions kept for calibration, inputs and predictions sampled for drift) and off, on the
//! same requests; and, because whole decisions on a small shared machine vary by more than the
//! difference, the monitoring work itself: a batch recorded with and without its drift sample,
//! and one placed ad's predictions kept for calibration.
//! `cargo bench -p podium-engine --bench monitoring`.

use criterion::{criterion_group, criterion_main, Criterion};
use podium_engine::{build_demo, Engine, EngineConfig};
use podium_log::MemoryLog;
use podium_serving::ComputePool;
use podium_sim::demo::DemoConfig;
use podium_sim::traffic::{RequestGen, TrafficConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn engine(dir: &std::path::Path, monitoring: bool) -> Engine {
    let config = EngineConfig {
        default_tmax: Duration::from_secs(1),
        monitoring,
        ..EngineConfig::default()
    };
    build_demo(
        dir,
        &DemoConfig::default(),
        config,
        Arc::new(MemoryLog::spawn(1_000)),
        ComputePool::new(1),
    )
    .expect("the demo world builds")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let _entered = rt.enter();
    let dir = tempfile::tempdir().expect("temp dir");
    // Both engines read the same world: trained once, then loaded twice.
    let on = engine(dir.path(), true);
    let off = engine(dir.path(), false);
    let mut gen = RequestGen::new(TrafficConfig::demo(), 7);
    let requests: Vec<_> = (0..2_000)
        .map(|_| gen.next_request().validate().expect("valid request"))
        .collect();
    let mut group = c.benchmark_group("decide");
    for (name, engine) in [("monitoring_off", &off), ("monitoring_on", &on)] {
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % requests.len();
                rt.block_on(engine.decide(requests[i].clone(), Instant::now()))
            })
        });
    }
    group.finish();

    // The parts, per unit of work: decisions above score three batches (ranker, two scorers)
    // and place a few ads each; these say what each of those costs the request path.
    let placed: usize = requests
        .iter()
        .take(500)
        .map(|r| {
            rt.block_on(on.decide(r.clone(), Instant::now()))
                .breaks
                .iter()
                .map(|b| b.ads.len())
                .sum::<usize>()
        })
        .sum();
    eprintln!("ads placed per decision: {:.2}", placed as f64 / 500.0);
    let models = on.models();
    let model = models.ranker.first_local().expect("a local ranker").clone();
    let rows = 100;
    let mut frame = podium_core::FeatureFrame::new(on.schema().clone(), rows);
    for (i, &c) in model.columns().iter().enumerate() {
        for (r, v) in frame.column_mut(c).iter_mut().enumerate() {
            *v = ((r * 7 + i * 13) % 17) as f32 / 17.0;
        }
    }
    let predictions: Vec<f32> = (0..rows).map(|r| (r % 10) as f32 / 10.0).collect();
    let m = model.model();
    let plain = podium_serving::VersionStats::new(m.name(), m.version(), None);
    let sketched = podium_serving::VersionStats::new(m.name(), m.version(), m.reference().cloned());
    assert!(m.reference().is_some(), "the demo models carry a reference");
    let mut parts = c.benchmark_group("monitoring_parts");
    let elapsed = Duration::from_micros(40);
    parts.bench_function("batch_of_100_recorded", |b| {
        b.iter(|| plain.record_scored(elapsed, &model, &frame, Some(&predictions)))
    });
    parts.bench_function("batch_of_100_recorded_with_drift_sample", |b| {
        b.iter(|| sketched.record_scored(elapsed, &model, &frame, Some(&predictions)))
    });
    let calibration = podium_monitor::Calibration::new(Default::default());
    let mut n = 0u64;
    let (model_name, version): (Arc<str>, Arc<str>) = ("ctr".into(), "demo-1".into());
    let (ctr, completion): (Arc<str>, Arc<str>) = ("ctr".into(), "completion".into());
    parts.bench_function("placed_ad_kept_for_calibration", |b| {
        b.iter(|| {
            n += 1;
            let p = |task: &Arc<str>| podium_monitor::Prediction {
                task: task.clone(),
                model: model_name.clone(),
                version: version.clone(),
                p: 0.02,
            };
            calibration.predicted(
                format!("trk:r-{n}:b1:1"),
                1_000_000 + n as i64,
                "tv",
                vec![p(&ctr), p(&completion)],
            )
        })
    });
    parts.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
