//! Exact replay throughput on the standard workload (ARCHITECTURE.md §7): decisions made by the
//! engine are logged to a Parquet file, then read back and replayed (every row's auction run
//! again from its logged state and compared ad for ad), on one thread.
//! `cargo bench -p podium-engine --bench replay`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use podium_engine::replay::{check_exact, parse_row};
use podium_engine::{build_standard_with, EngineConfig, FeatureSetup};
use podium_features::offline::{read_decision_rows, write_records, DecisionRow};
use podium_log::decision_log::row_of;
use podium_log::MemoryLog;
use podium_serving::ComputePool;
use podium_sim::standard;
use podium_sim::traffic::{RequestGen, TrafficConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const VIEWERS: usize = 2_000;
const DECISIONS: usize = 2_000;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let _entered = rt.enter();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("std");
    standard::generate(&dir, 1).expect("the standard workload generates");
    let log = MemoryLog::spawn(DECISIONS);
    let config = EngineConfig {
        default_tmax: Duration::from_secs(1),
        monitoring: false,
        ..EngineConfig::default()
    };
    let (engine, _) = build_standard_with(
        &dir,
        Some(VIEWERS),
        config,
        Arc::new(log.clone()),
        ComputePool::new(1),
        &FeatureSetup::default(),
    )
    .expect("the standard world builds");
    let traffic = TrafficConfig {
        users: VIEWERS,
        ..TrafficConfig::standard()
    };
    let mut gen = RequestGen::new(traffic, 7);
    for _ in 0..DECISIONS {
        let req = gen.next_request().validate().expect("valid request");
        rt.block_on(engine.decide(req, Instant::now()));
    }
    let records = rt.block_on(log.recent(DECISIONS));
    let rows: Vec<DecisionRow> = records.iter().map(row_of).collect();
    let file = tmp.path().join("decisions.parquet");
    write_records(&file, &rows).expect("log written");
    let market = engine.market();

    // Every row must reproduce, or the figure is of the wrong work.
    let check = |rows: &[DecisionRow]| {
        let mut ok = 0;
        for row in rows {
            let (req, decision, state) = parse_row(row).expect("row parses");
            if check_exact(&market, &req, row.ts_ms, &decision, &state).is_ok() {
                ok += 1;
            }
        }
        ok
    };
    assert_eq!(check(&rows), DECISIONS, "every decision reproduces");

    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(DECISIONS as u64));
    group.sample_size(10);
    group.bench_function("read_and_replay_standard_2000", |b| {
        b.iter(|| {
            // What `podium replay --rescore 0` reads: not the hydrated entities nor the features.
            let rows: Vec<DecisionRow> = read_decision_rows(
                &file,
                &[
                    "served",
                    "features",
                    "model_versions",
                    "degraded",
                    "experiments",
                ],
            )
            .expect("log reads");
            check(&rows)
        })
    });
    group.bench_function("replay_parsed_rows_standard_2000", |b| {
        b.iter(|| check(&rows))
    });
    // The parts: JSON of the rows alone, and the auctions alone on rows parsed beforehand.
    group.bench_function("parse_only_standard_2000", |b| {
        b.iter(|| rows.iter().filter(|r| parse_row(r).is_ok()).count())
    });
    let parsed: Vec<_> = rows
        .iter()
        .map(|r| (r.ts_ms, parse_row(r).expect("row parses")))
        .collect();
    group.bench_function("auction_only_standard_2000", |b| {
        b.iter(|| {
            parsed
                .iter()
                .filter(|(ts, (req, d, s))| check_exact(&market, req, *ts, d, s).is_ok())
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
