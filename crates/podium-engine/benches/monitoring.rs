//! What model monitoring costs a decision: the demo world's decisions with monitoring on
//! (predictions kept for calibration, inputs and predictions sampled for drift) and off, on the
//! same requests. `cargo bench -p podium-engine --bench monitoring`.

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
}

criterion_group!(benches, bench);
criterion_main!(benches);
