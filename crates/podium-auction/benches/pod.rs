//! Pod construction on a realistic request: 100 candidates, 1–3 creatives of 15/30/60 s each,
//! 300 advertisers in 40 categories, category dedupe on.
//!
//! `cargo bench -p podium-auction --bench pod -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use podium_auction::{fill_breaks, solve_pod, AuctionType, BreakSpec, PodCandidate, PodCreative};
use podium_core::{
    AdBreak, BreakPosition, DedupeKey, DurationRule, Micros, PodRules, PodSlot, SlotPosition,
};

/// splitmix64: a fixed, dependency-free stream so every run benches the same instance.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Categories follow advertisers (`advertiser % 40`) unless `free_categories`, where they are
/// drawn independently and so cut across advertisers.
fn candidates(seed: u64, free_categories: bool) -> Vec<PodCandidate> {
    let mut rng = Rng(seed);
    (0..100u32)
        .map(|i| {
            let ecpm = Micros(1_000_000 + rng.below(29_000_000) as i64);
            let advertiser = rng.below(300);
            let category = if free_categories {
                rng.below(40)
            } else {
                advertiser % 40
            };
            let position = match rng.below(20) {
                0 => SlotPosition::First,
                1 => SlotPosition::Last,
                _ => SlotPosition::Any,
            };
            let creatives = (0..1 + rng.below(3) as u32)
                .map(|k| PodCreative {
                    index: k,
                    duration_s: [15, 30, 60][rng.below(3) as usize],
                    key: u64::from(i) * 4 + u64::from(k),
                })
                .collect();
            PodCandidate {
                line_item: i,
                value: ecpm.0,
                ecpm,
                guaranteed: rng.below(10) == 0,
                creatives,
                advertiser,
                category,
                position,
            }
        })
        .collect()
}

fn brk(
    id: &str,
    max_ads: u32,
    max_duration_s: u32,
    slots: Vec<PodSlot>,
    dedupe: Vec<DedupeKey>,
) -> AdBreak {
    AdBreak {
        id: id.into(),
        position: BreakPosition::Midroll,
        max_ads,
        max_duration_s,
        rules: PodRules {
            slots,
            floor_cpm: Some(Micros(2_000_000)),
            floor_cpm_per_s: Some(Micros(100_000)),
            dedupe,
            ..Default::default()
        },
    }
}

fn slot(id: &str, exact_s: &[u32], position: SlotPosition) -> PodSlot {
    PodSlot {
        id: id.into(),
        durations: DurationRule {
            exact_s: exact_s.to_vec(),
            ..Default::default()
        },
        floor_cpm: Some(Micros(5_000_000)),
        position,
    }
}

fn bench(c: &mut Criterion) {
    let cands = candidates(7, false);
    let cat = vec![DedupeKey::Category];
    let dynamic = brk("dynamic", 4, 120, Vec::new(), cat.clone());
    let structured = brk(
        "structured",
        0,
        0,
        vec![
            slot("open", &[15, 30], SlotPosition::First),
            slot("mid", &[30], SlotPosition::Any),
            slot("close", &[15, 30, 60], SlotPosition::Last),
        ],
        cat.clone(),
    );
    let hybrid = brk(
        "hybrid",
        4,
        120,
        vec![
            slot("open", &[15, 30], SlotPosition::First),
            slot("close", &[15], SlotPosition::Last),
        ],
        cat.clone(),
    );
    let reserve = Micros(1_000_000);
    for (name, b) in [
        ("dynamic_4x120s", &dynamic),
        ("structured_3_slots", &structured),
        ("hybrid_2_slots_4x120s", &hybrid),
    ] {
        let out = solve_pod(b, reserve, &cands, |_| true, AuctionType::SecondPrice);
        eprintln!("{name}: {} ads, exact {}", out.placements.len(), out.exact);
        c.bench_function(&format!("solve_pod/{name}"), |bench| {
            bench.iter(|| {
                solve_pod(
                    black_box(b),
                    reserve,
                    black_box(&cands),
                    |_| true,
                    AuctionType::SecondPrice,
                )
            })
        });
    }

    // Advertiser, category and creative dedupe with categories cutting across advertisers: the
    // branch and bound path.
    let crossed = candidates(11, true);
    let all_keys = brk(
        "crossed",
        6,
        120,
        Vec::new(),
        vec![
            DedupeKey::Advertiser,
            DedupeKey::Category,
            DedupeKey::Creative,
        ],
    );
    let out = solve_pod(
        &all_keys,
        reserve,
        &crossed,
        |_| true,
        AuctionType::SecondPrice,
    );
    eprintln!(
        "crossed_keys_6x120s: {} ads, exact {}",
        out.placements.len(),
        out.exact
    );
    c.bench_function("solve_pod/crossed_keys_6x120s", |bench| {
        bench.iter(|| {
            solve_pod(
                black_box(&all_keys),
                reserve,
                black_box(&crossed),
                |_| true,
                AuctionType::SecondPrice,
            )
        })
    });

    let specs = [
        BreakSpec {
            brk: &structured,
            reserve_cpm: reserve,
        },
        BreakSpec {
            brk: &dynamic,
            reserve_cpm: reserve,
        },
        BreakSpec {
            brk: &hybrid,
            reserve_cpm: reserve,
        },
        BreakSpec {
            brk: &dynamic,
            reserve_cpm: reserve,
        },
    ];
    c.bench_function("fill_breaks/4_breaks", |bench| {
        bench.iter(|| {
            fill_breaks(
                black_box(&specs),
                black_box(&cands),
                AuctionType::SecondPrice,
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
