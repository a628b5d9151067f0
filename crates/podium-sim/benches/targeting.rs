//! Retrieval on the standard workload: 5,000 line items, about 1,000 eligible per request.
//!
//! `index/*` is the bitset index; `scan/*` tests every line item's rules one by one
//! (`Targeting::admits`), the reference the index replaces, measured in the same run. `rich`
//! adds regions, ratings, dayparts, segments (any and all) and exclusions to a third of the line
//! items, and segments, a region, a rating and a UTC offset to the requests.
//!
//! cargo bench -p podium-sim --bench targeting

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use podium_auction::{Daypart, Exclusions, Marketplace, TargetingIndex};
use podium_core::AdRequest;
use podium_sim::standard::marketplace;
use podium_sim::traffic::{RequestGen, TrafficConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SEGMENTS: [&str; 12] = [
    "sports-fans",
    "auto-intenders",
    "parents",
    "gamers",
    "travel",
    "foodies",
    "finance",
    "streamers",
    "movie-buffs",
    "news-junkies",
    "home-owners",
    "students",
];

fn enrich(m: &mut Marketplace, reqs: &mut [AdRequest]) {
    let mut r = ChaCha8Rng::seed_from_u64(3);
    for li in m.line_items.iter_mut() {
        if !r.random_bool(0.33) {
            continue;
        }
        let t = &mut li.targeting;
        match r.random_range(0..6) {
            0 => t.regions = vec!["US-CA".into(), "US-NY".into(), "US-TX".into()],
            1 => t.ratings = vec!["tv-g".into(), "tv-pg".into(), "tv-14".into()],
            2 => {
                t.dayparts = vec![Daypart {
                    days: Vec::new(),
                    start_hour: 17,
                    end_hour: 2,
                }]
            }
            3 => {
                t.segments = (0..3)
                    .map(|_| SEGMENTS[r.random_range(0..SEGMENTS.len())].into())
                    .collect()
            }
            4 => t.segments_all = vec![SEGMENTS[r.random_range(0..SEGMENTS.len())].into()],
            _ => {
                t.exclude = Exclusions {
                    ratings: vec!["tv-ma".into()],
                    segments: vec![SEGMENTS[r.random_range(0..SEGMENTS.len())].into()],
                    ..Default::default()
                }
            }
        }
    }
    for q in reqs {
        q.user.region = Some(["CA", "NY", "TX", "WA"][r.random_range(0..4)].into());
        q.user.segments = (0..r.random_range(0..5))
            .map(|_| SEGMENTS[r.random_range(0..SEGMENTS.len())].into())
            .collect();
        q.user.utc_offset_min = Some(-300);
        q.content.rating = Some(["tv-g", "tv-14", "tv-ma"][r.random_range(0..3)].into());
    }
}

fn bench(c: &mut Criterion) {
    let now_ms = 1_795_746_600_000;
    let mut traffic = RequestGen::new(TrafficConfig::standard(), 7);
    let mut reqs: Vec<AdRequest> = (0..1000).map(|_| traffic.next_request()).collect();
    let mut m = marketplace(1);
    for rich in [false, true] {
        if rich {
            enrich(&mut m, &mut reqs);
        }
        let name = if rich { "rich" } else { "standard" };
        let index = TargetingIndex::build(&m.line_items);
        let mean = reqs
            .iter()
            .map(|q| index.eligible(q, now_ms).len())
            .sum::<usize>() as f64
            / reqs.len() as f64;
        eprintln!(
            "{name}: {} line items, mean eligible {mean:.0}",
            m.line_items.len()
        );
        let mut i = 0;
        c.bench_function(&format!("index/{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % reqs.len();
                black_box(index.eligible(&reqs[i], now_ms).len())
            })
        });
        c.bench_function(&format!("scan/{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % reqs.len();
                let q = &reqs[i];
                black_box(
                    m.line_items
                        .iter()
                        .filter(|li| li.targeting.admits(q, now_ms))
                        .count(),
                )
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
