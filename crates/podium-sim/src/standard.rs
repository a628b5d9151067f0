//! The standard workload of `ARCHITECTURE.md` §7, generated deterministically from a seed.
//!
//! `podium sim gen --seed 1 --out DIR` ([`generate`]) writes a data directory that
//! `podium serve` serves: `marketplace.json` (5,000 line items from 300 advertisers across 40
//! categories; CPM, CPC and CPCV bids; guaranteed and best-effort goals; targeting on country,
//! device and genre tuned so that about 1,000 line items are eligible per request of
//! [`TrafficConfig::standard`](crate::traffic::TrafficConfig::standard) traffic), `models/` (a
//! linear early ranker, five LightGBM models of 300 trees × 31 leaves over 20 features, three
//! ONNX MLPs of ~49k multiply-adds per row, each a validated bundle with golden rows),
//! `models.toml`, and `workload.json`, which records the seed so that the audience can be
//! regenerated.
//!
//! The 1,000,000 viewers are not written: each viewer's stored features are a pure function of
//! the seed and the viewer's number ([`viewer_features`]), and [`fill_audience`] writes them into
//! the in-memory store at start-up, in parallel, faster than reading a file of them would be.
//!
//! The models are generated, not trained: their structure is drawn (balanced trees with
//! thresholds at quantiles of the features, He-initialised hidden layers) and their outputs are
//! fitted to a known ground truth ([`Task`]) so that predictions are sane probabilities that vary
//! with the viewer, the context and the line item. What they are for is realistic compute cost
//! per decision, not accuracy. Nothing here is used by the embedded demo.

mod fit;
mod gbdt;
mod mlp;

use crate::traffic::{RequestGen, TrafficConfig};
use fit::{fnv1a, log_normal, normal, normal_pair, ridge, sigmoid, SplitMix64};
use podium_auction::{
    Bid, Creative, Goal, LineItem, LineItemPriors, Marketplace, MarketplaceError, Targeting,
};
use podium_core::{AdRequest, Device, Micros};
use podium_features::{
    Entity, FeatureSpace, FeatureSpec, Hydrator, MemoryStore, Source, StoredValue,
};
use podium_model::linear::LinearWeights;
use podium_model::package::{package, PackageOptions};
use podium_model::{Link, ModelError, ModelKind};
use podium_serving::{ConfigError, ModelSetConfig, SlotConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Revision of the generator; part of every model version, so a changed generator never reuses
/// a version string for different weights.
pub const GENERATOR: &str = "std1";
/// The name `workload.json` gives this workload.
pub const WORKLOAD: &str = "standard";
/// The file that marks a generated standard data directory and records its seed.
pub const WORKLOAD_FILE: &str = "workload.json";
/// Viewers with stored features: `u-0` … `u-999999`.
pub const VIEWERS: usize = 1_000_000;
/// Line items in the marketplace.
pub const LINE_ITEMS: usize = 5_000;
/// Advertisers owning them.
pub const ADVERTISERS: usize = 300;
/// Candidates the early ranker passes to full scoring.
pub const TOP_K: usize = 100;
/// Trees per GBDT model.
pub const GBDT_TREES: usize = 300;
/// Leaves per tree.
pub const GBDT_LEAVES: usize = 31;
/// Features each GBDT model reads.
pub const GBDT_FEATURES: usize = 20;
/// Width of the viewer and line-item embeddings.
pub const EMBEDDING: usize = 16;

/// Countries of the standard world; requests come from them, line items target them.
pub const COUNTRIES: [&str; 20] = [
    "US", "CA", "GB", "DE", "FR", "BR", "MX", "JP", "AU", "IN", "ES", "IT", "NL", "SE", "KR", "AR",
    "CO", "PL", "ZA", "NZ",
];
/// Share of requests from the US on top of its uniform share of [`COUNTRIES`] (43 % in all).
pub const US_EXTRA_SHARE: f64 = 0.4;
/// Content genres of the standard catalogue.
pub const GENRES: [&str; 16] = [
    "drama",
    "comedy",
    "sports",
    "news",
    "kids",
    "documentary",
    "reality",
    "action",
    "thriller",
    "romance",
    "horror",
    "animation",
    "music",
    "food",
    "travel",
    "scifi",
];
/// Advertiser categories, each with the brand risk of its ads next to sensitive content (0 = none).
pub const CATEGORIES: [(&str, f32); 40] = [
    ("auto", 0.05),
    ("finance", 0.1),
    ("insurance", 0.05),
    ("retail", 0.0),
    ("cpg", 0.0),
    ("beverages", 0.05),
    ("restaurants", 0.05),
    ("travel", 0.05),
    ("hospitality", 0.05),
    ("airlines", 0.1),
    ("tech", 0.0),
    ("telecom", 0.0),
    ("streaming", 0.1),
    ("gaming", 0.3),
    ("pharma", 0.4),
    ("health", 0.2),
    ("beauty", 0.05),
    ("fashion", 0.05),
    ("home", 0.0),
    ("real_estate", 0.1),
    ("education", 0.0),
    ("jobs", 0.0),
    ("government", 0.2),
    ("political", 0.7),
    ("nonprofit", 0.1),
    ("sports_betting", 0.95),
    ("beer", 0.8),
    ("spirits", 0.9),
    ("dating", 0.7),
    ("crypto", 0.6),
    ("legal", 0.3),
    ("energy", 0.1),
    ("utilities", 0.0),
    ("pets", 0.0),
    ("baby", 0.0),
    ("toys", 0.0),
    ("movies", 0.2),
    ("music", 0.1),
    ("news_media", 0.2),
    ("b2b", 0.0),
];
/// Creative lengths in seconds and their weights: mostly 15 and 30 s spots, as CTV sells them.
const DURATIONS: [(u32, u32); 7] = [
    (15, 35),
    (30, 40),
    (45, 5),
    (60, 10),
    (6, 4),
    (10, 3),
    (20, 3),
];

/// Context features: derived from the request by the hydrator (`ctx_*` naming rules).
const CONTEXT: [&str; 16] = [
    "ctx_device_tv",
    "ctx_device_mobile",
    "ctx_device_tablet",
    "ctx_device_desktop",
    "ctx_live",
    "ctx_breaks",
    "ctx_genre_drama",
    "ctx_genre_comedy",
    "ctx_genre_sports",
    "ctx_genre_news",
    "ctx_genre_kids",
    "ctx_genre_documentary",
    "ctx_genre_reality",
    "ctx_genre_action",
    "ctx_country_us",
    "ctx_country_gb",
];
/// Stored viewer features before the embedding, with the default served for an unknown viewer
/// (the population median).
const USER_SCALARS: [(&str, f32); 8] = [
    ("user_ctr_7d", 0.006),
    ("user_completion_rate_7d", 0.78),
    ("user_ads_seen_1d", 6.0),
    ("user_tenure_days", 400.0),
    ("user_sessions_7d", 8.0),
    ("user_watch_hours_7d", 6.0),
    ("user_skip_rate_7d", 0.15),
    ("user_premium", 0.0),
];
/// Line-item features before the embedding, with their defaults.
const CANDIDATE_SCALARS: [(&str, f32); 8] = [
    ("li_ctr_7d", 0.006),
    ("li_completion_rate_7d", 0.8),
    ("li_min_duration_s", 15.0),
    ("li_max_duration_s", 30.0),
    ("li_bid_usd", 1.0),
    ("li_guaranteed", 0.0),
    ("li_category_code", 0.0),
    ("li_brand_risk", 0.0),
];
/// Stored values per viewer.
pub const USER_WIDTH: usize = USER_SCALARS.len() + EMBEDDING;
/// Values per line item.
pub const CANDIDATE_WIDTH: usize = CANDIDATE_SCALARS.len() + EMBEDDING;
/// Width of the feature space: context, viewer and candidate features.
pub const FEATURES: usize = CONTEXT.len() + USER_WIDTH + CANDIDATE_WIDTH;

/// Column of each feature the ground truth reads, in the space's order (context, user,
/// candidate; checked against the names by a test).
mod col {
    pub const TV: usize = 0;
    pub const MOBILE: usize = 1;
    pub const LIVE: usize = 4;
    pub const BREAKS: usize = 5;
    pub const SPORTS: usize = 8;
    pub const NEWS: usize = 9;
    pub const KIDS: usize = 10;
    pub const U: usize = super::CONTEXT.len();
    pub const U_CTR: usize = U;
    pub const U_COMPLETION: usize = U + 1;
    pub const U_SEEN: usize = U + 2;
    pub const U_TENURE: usize = U + 3;
    pub const U_WATCH: usize = U + 5;
    pub const U_SKIP: usize = U + 6;
    pub const U_PREMIUM: usize = U + 7;
    pub const U_EMB: usize = U + 8;
    pub const C: usize = U + super::USER_WIDTH;
    pub const C_CTR: usize = C;
    pub const C_COMPLETION: usize = C + 1;
    pub const C_MIN_DURATION: usize = C + 2;
    pub const C_GUARANTEED: usize = C + 5;
    pub const C_RISK: usize = C + 7;
    pub const C_EMB: usize = C + 8;
}

/// Seed salts, so the marketplace, audience, samples and models draw independent streams.
const MARKET_SALT: u64 = 0x5354_445f_4d4b_5431;
const AUDIENCE_SALT: u64 = 0x5354_445f_5553_5231;
const FIT_SALT: u64 = 0x5354_445f_4649_5431;
const GOLDEN_SALT: u64 = 0x5354_445f_474f_4c44;
const MODEL_SALT: u64 = 0x5354_445f_4d44_4c31;

/// `workload.json`: what a generated directory holds and how to regenerate its audience.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Always [`WORKLOAD`].
    pub workload: String,
    /// The generator revision that wrote the directory ([`GENERATOR`]).
    pub generator: String,
    /// Seed of every draw.
    pub seed: u64,
    /// Viewers whose features the server generates at start-up.
    pub viewers: usize,
}

/// Why a standard data directory could not be generated or read.
#[derive(Debug, thiserror::Error)]
pub enum StandardError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A directory or `workload.json` is not what the generator expects.
    #[error("{path}: {message}")]
    Invalid {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A generated model failed to package.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The generated marketplace failed its checks or could not be written.
    #[error(transparent)]
    Marketplace(#[from] MarketplaceError),
    /// `models.toml` could not be written.
    #[error(transparent)]
    ModelSet(#[from] ConfigError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StandardError + '_ {
    move |source| StandardError::Io {
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Features

/// The standard feature space: 16 context, 24 viewer and 24 line-item features (64 in all).
pub fn feature_space() -> FeatureSpace {
    let spec = |name: String, source, default| FeatureSpec::new(name, source, default);
    let mut specs: Vec<FeatureSpec> = CONTEXT
        .iter()
        .map(|n| spec(n.to_string(), Source::Context, 0.0))
        .collect();
    specs.extend(
        USER_SCALARS
            .iter()
            .map(|(n, d)| spec(n.to_string(), Source::Stored(Entity::User), *d)),
    );
    specs.extend((0..EMBEDDING).map(|k| {
        spec(
            format!("user_emb_{k:02}"),
            Source::Stored(Entity::User),
            0.0,
        )
    }));
    specs.extend(
        CANDIDATE_SCALARS
            .iter()
            .map(|(n, d)| spec(n.to_string(), Source::Candidate, *d)),
    );
    specs.extend((0..EMBEDDING).map(|k| spec(format!("li_emb_{k:02}"), Source::Candidate, 0.0)));
    FeatureSpace::new(specs)
}

/// Feature names in column order.
pub fn feature_names() -> Vec<String> {
    feature_space().schema().names().to_vec()
}

/// The stored features of viewer `u-{viewer}`, in the space's viewer order. A pure function of
/// the seed and the viewer's number, so that any subset of the audience can be regenerated.
pub fn viewer_features(seed: u64, viewer: u64) -> Vec<f32> {
    // One cheap stream per viewer: independent draws without generating the viewers before it.
    let mut rng = SplitMix64::stream(seed ^ AUDIENCE_SALT, viewer);
    let r = &mut rng;
    let mut v = Vec::with_capacity(USER_WIDTH);
    v.push(log_normal(r, 0.006, 0.6, 0.0005, 0.06) as f32);
    v.push((0.78 + 0.1 * normal(r)).clamp(0.3, 0.99) as f32);
    v.push(log_normal(r, 6.0, 0.8, 0.0, 60.0).floor() as f32);
    v.push(log_normal(r, 400.0, 1.0, 1.0, 3650.0).floor() as f32);
    v.push(log_normal(r, 8.0, 0.7, 0.0, 80.0).floor() as f32);
    v.push(log_normal(r, 6.0, 0.9, 0.1, 80.0) as f32);
    v.push((0.15 + 0.1 * normal(r)).clamp(0.0, 0.9) as f32);
    v.push(if r.random_bool(0.15) { 1.0 } else { 0.0 });
    for _ in 0..EMBEDDING / 2 {
        let (a, b) = normal_pair(r);
        v.push((0.35 * a) as f32);
        v.push((0.35 * b) as f32);
    }
    v
}

/// Writes the stored features of viewers `u-0` … `u-{viewers-1}` into `store`, on every core.
pub fn fill_audience(store: &MemoryStore, seed: u64, viewers: usize) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16);
    let chunk = viewers.div_ceil(threads).max(1);
    let now = podium_features::now_ms();
    std::thread::scope(|s| {
        for start in (0..viewers).step_by(chunk) {
            s.spawn(move || {
                for v in start..(start + chunk).min(viewers) {
                    let key = Hydrator::user_key(&format!("u-{v}"));
                    store.insert(key, StoredValue::new(viewer_features(seed, v as u64), now));
                }
            });
        }
    });
}

/// An embedding drawn from a hash of `parts`, so it depends on names, not on drawing order.
fn embedding(seed: u64, parts: &[&[u8]], scale: f64) -> [f64; EMBEDDING] {
    let seed = seed.to_le_bytes();
    let mut key = vec![&seed[..]];
    key.extend_from_slice(parts);
    let mut rng = ChaCha8Rng::seed_from_u64(fnv1a(&key));
    std::array::from_fn(|_| scale * normal(&mut rng))
}

/// The line item's features, in the space's candidate order: observed rates, creative lengths,
/// bid, goal, category, brand risk, and an embedding near its category's.
pub fn candidate_features(seed: u64, li: &LineItem) -> Vec<f32> {
    let durations = li.creatives.iter().map(|c| c.duration_s);
    let min = durations.clone().min().unwrap_or(15);
    let max = durations.max().unwrap_or(15);
    let bid = match li.bid {
        Bid::Cpm { cpm } => cpm,
        Bid::Cpc { cpc } => cpc,
        Bid::Cpcv { cpcv } => cpcv,
        Bid::Cpa { cpa } => cpa,
    };
    let category = CATEGORIES.iter().position(|(c, _)| *c == li.category);
    let risk = category.map_or(0.5, |i| CATEGORIES[i].1);
    let mut v = vec![
        li.priors.ctr_7d,
        li.priors.completion_rate_7d,
        min as f32,
        max as f32,
        (bid.0 as f64 / 1e6) as f32,
        if li.goal.is_non_guaranteed() {
            0.0
        } else {
            1.0
        },
        category.unwrap_or(CATEGORIES.len()) as f32,
        risk,
    ];
    let centroid = embedding(seed, &[b"category", li.category.as_bytes()], 0.35);
    let own = embedding(seed, &[b"line_item", li.id.as_str().as_bytes()], 0.2);
    v.extend(centroid.iter().zip(&own).map(|(c, o)| (c + o) as f32));
    v
}

/// The context features of a request, as the hydrator derives them from the `ctx_*` names.
pub fn context_features(req: &AdRequest) -> Vec<f32> {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    CONTEXT
        .iter()
        .map(|name| {
            if let Some(d) = name.strip_prefix("ctx_device_") {
                flag(req.user.device.as_str() == d)
            } else if let Some(g) = name.strip_prefix("ctx_genre_") {
                flag(req.content.genre == g)
            } else if let Some(c) = name.strip_prefix("ctx_country_") {
                flag(req.user.country.eq_ignore_ascii_case(c))
            } else if *name == "ctx_live" {
                flag(req.content.live)
            } else {
                req.breaks.len() as f32
            }
        })
        .collect()
}

/// One row of the feature space: the request's context, the viewer's and the line item's values.
pub fn feature_row(req: &AdRequest, viewer: &[f32], candidate: &[f32]) -> Vec<f32> {
    let mut row = context_features(req);
    row.extend_from_slice(viewer);
    row.extend_from_slice(candidate);
    row
}

// ---------------------------------------------------------------------------------------------
// Marketplace

/// A skewed draw in `0..n`: low indices are drawn far more often (big advertisers, big categories).
fn skewed(rng: &mut impl Rng, n: usize) -> usize {
    let u: f64 = rng.random();
    ((u * u) * n as f64) as usize
}

fn cents(x: f64) -> Micros {
    Micros::from_units((x * 100.0).round() / 100.0)
}

/// `k` distinct values of `all`, in their listed order.
fn pick(rng: &mut impl Rng, all: &[&str], k: usize) -> Vec<String> {
    let mut idx: Vec<usize> = (0..all.len()).collect();
    for i in 0..k {
        let j = rng.random_range(i..idx.len());
        idx.swap(i, j);
    }
    idx.truncate(k);
    idx.sort_unstable();
    idx.iter().map(|&i| all[i].to_string()).collect()
}

fn country_targeting(rng: &mut impl Rng) -> Vec<String> {
    let abroad = &COUNTRIES[1..];
    match rng.random_range(0..100) {
        0..30 => Vec::new(),
        30..58 => vec!["US".to_string()],
        58..79 => {
            let k = rng.random_range(1..=3);
            let mut v = vec!["US".to_string()];
            v.extend(pick(rng, abroad, k));
            v
        }
        _ => {
            let k = rng.random_range(1..=4);
            pick(rng, abroad, k)
        }
    }
}

fn device_targeting(rng: &mut impl Rng) -> Vec<Device> {
    match rng.random_range(0..100) {
        0..55 => Vec::new(),
        55..80 => vec![Device::Tv],
        80..90 => vec![Device::Tv, Device::Desktop],
        _ => vec![Device::Mobile, Device::Tablet],
    }
}

fn genre_targeting(rng: &mut impl Rng) -> Vec<String> {
    if rng.random_range(0..100) < 33 {
        return Vec::new();
    }
    let k = rng.random_range(1..=6);
    pick(rng, &GENRES, k)
}

/// The standard marketplace of a seed.
///
/// Targeting is independent per dimension, so the mean eligible count per request is
/// `5,000 × P(country) × P(device) × P(genre)` ≈ 5,000 × 0.54 × 0.78 × 0.48 ≈ 1,000 under
/// [`TrafficConfig::standard`] (43 % US, half the devices TVs, genres uniform).
pub fn marketplace(seed: u64) -> Marketplace {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ MARKET_SALT);
    let r = &mut rng;
    // The first 40 advertisers cover every category once; the rest favour the big categories.
    let advertiser_category: Vec<usize> = (0..ADVERTISERS)
        .map(|a| {
            if a < CATEGORIES.len() {
                a
            } else {
                skewed(r, CATEGORIES.len())
            }
        })
        .collect();
    // Advertisers differ in how much they pay and how well their ads perform.
    let advertiser_price: Vec<f64> = (0..ADVERTISERS)
        .map(|_| log_normal(r, 1.0, 0.3, 0.4, 2.5))
        .collect();
    let advertiser_ctr: Vec<f64> = (0..ADVERTISERS)
        .map(|_| log_normal(r, 0.006, 0.5, 0.001, 0.03))
        .collect();
    let total_weight: u32 = DURATIONS.iter().map(|d| d.1).sum();
    let line_items = (0..LINE_ITEMS)
        .map(|i| {
            // Every advertiser runs at least one line item; the big ones run many.
            let adv = if i < ADVERTISERS {
                i
            } else {
                skewed(r, ADVERTISERS)
            };
            let price = advertiser_price[adv];
            let guaranteed = r.random_bool(0.2);
            let (bid, goal) = if guaranteed {
                // Guaranteed deals are sold on CPM, at a premium.
                let cpm = cents(price * 1.25 * log_normal(r, 18.0, 0.4, 3.0, 90.0));
                let impressions = (log_normal(r, 50_000.0, 0.8, 5_000.0, 1_000_000.0) / 1000.0)
                    .round() as u64
                    * 1000;
                (
                    Bid::Cpm { cpm },
                    Goal::Guaranteed {
                        impressions_per_day: impressions.max(1000),
                    },
                )
            } else {
                let bid = match r.random_range(0..100) {
                    0..55 => Bid::Cpm {
                        cpm: cents(price * log_normal(r, 18.0, 0.45, 3.0, 90.0)),
                    },
                    55..80 => Bid::Cpc {
                        cpc: cents(price * log_normal(r, 2.5, 0.5, 0.2, 12.0)),
                    },
                    _ => Bid::Cpcv {
                        cpcv: Micros::from_units(
                            (price * log_normal(r, 0.022, 0.4, 0.005, 0.1) * 1000.0).round()
                                / 1000.0,
                        ),
                    },
                };
                (bid, Goal::NonGuaranteed)
            };
            let targeting = Targeting {
                countries: country_targeting(r),
                devices: device_targeting(r),
                genres: genre_targeting(r),
                ..Default::default()
            };
            let creatives: Vec<Creative> = (0..r.random_range(1..=3))
                .map(|c| {
                    let mut w = r.random_range(0..total_weight);
                    let duration_s = DURATIONS
                        .iter()
                        .find(|d| {
                            if w < d.1 {
                                true
                            } else {
                                w -= d.1;
                                false
                            }
                        })
                        .map_or(30, |d| d.0);
                    Creative {
                        id: format!("cr-{i}-{c}").as_str().into(),
                        duration_s,
                        media_url: None,
                    }
                })
                .collect();
            let shortest = creatives.iter().map(|c| c.duration_s).min().unwrap_or(15);
            let priors = LineItemPriors {
                ctr_7d: (advertiser_ctr[adv] * log_normal(r, 1.0, 0.3, 0.2, 5.0))
                    .clamp(0.0005, 0.05) as f32,
                // Long spots are watched to the end less often.
                completion_rate_7d: (0.85 - 0.004 * (f64::from(shortest) - 15.0) + 0.05 * normal(r))
                    .clamp(0.4, 0.98) as f32,
                conversion_rate_7d: 0.0,
            };
            LineItem {
                id: format!("li-{i}").as_str().into(),
                advertiser_id: format!("adv-{adv}").as_str().into(),
                category: CATEGORIES[advertiser_category[adv]].0.to_string(),
                bid,
                targeting,
                creatives,
                // Large enough that a benchmark never exhausts one: even at the highest CPM
                // drawn (about $100), spending the $100,000 floor takes a million impressions.
                daily_budget: cents(log_normal(r, 250_000.0, 0.6, 100_000.0, 2_000_000.0)),
                priors,
                goal,
                iab_categories: crate::iab_categories(CATEGORIES[advertiser_category[adv]].0),
                campaign_id: None,
                domain: Some(format!("adv-{adv}.example")),
                caps: Vec::new(),
                position: Default::default(),
                pacing: Default::default(),
                budget: Default::default(),
            }
        })
        .collect();
    Marketplace {
        reserve_cpm: Micros::from_units(2.0),
        line_items,
        floors: Vec::new(),
        auction: Default::default(),
        competitive_separation: true,
        dynamic_reserve: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Ground truth and models

/// What a model predicts; each task has a ground-truth logit the generated models are fitted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Click-through rate.
    Ctr,
    /// Completed view.
    Completion,
    /// Conversion after the view.
    Conversion,
    /// Probability that the ad is safe to show next to this content.
    BrandSafety,
}

impl Task {
    /// The task name models declare in `model.toml` (`ctr`, `completion`, …).
    pub fn name(self) -> &'static str {
        match self {
            Task::Ctr => "ctr",
            Task::Completion => "completion",
            Task::Conversion => "conversion",
            Task::BrandSafety => "brand_safety",
        }
    }

    /// The ground-truth logit of a feature row (64 values in the space's column order).
    pub fn truth(self, x: &[f32]) -> f64 {
        let f = |c: usize| f64::from(x[c]);
        let affinity: f64 = (0..EMBEDDING)
            .map(|k| f(col::U_EMB + k) * f(col::C_EMB + k))
            .sum();
        let ctr = || {
            (0.5 * (f(col::U_CTR) + f(col::C_CTR))).max(1e-4).ln()
                + 1.5 * affinity
                + 0.3 * f(col::TV)
                - 0.25 * f(col::MOBILE)
                + 0.2 * f(col::LIVE)
                - 0.015 * f(col::U_SEEN)
                - 0.8 * f(col::U_SKIP)
                + 0.15 * f(col::U_PREMIUM)
        };
        match self {
            Task::Ctr => ctr(),
            Task::Completion => {
                1.0 + 3.0 * (f(col::U_COMPLETION) - 0.75)
                    + 3.0 * (f(col::C_COMPLETION) - 0.75)
                    + 0.5 * f(col::TV)
                    - 0.4 * f(col::MOBILE)
                    - 0.012 * (f(col::C_MIN_DURATION) - 15.0)
                    + 0.3 * f(col::LIVE)
                    + 0.8 * affinity
                    - 2.0 * f(col::U_SKIP)
                    - 0.05 * (f(col::BREAKS) - 1.0)
                    + 0.01 * f(col::U_WATCH).min(40.0)
            }
            Task::Conversion => {
                ctr() - 2.3
                    + 0.4 * f(col::U_PREMIUM)
                    + 0.0003 * f(col::U_TENURE).min(1500.0)
                    + 0.5 * affinity
                    + 0.2 * f(col::C_GUARANTEED)
            }
            Task::BrandSafety => {
                let risk = f(col::C_RISK);
                3.5 - 4.0 * risk * f(col::KIDS)
                    - 2.0 * risk * f(col::NEWS)
                    - 0.8 * risk * f(col::SPORTS)
                    - 1.0 * risk
                    - 0.5 * risk * f(col::LIVE)
            }
        }
    }
}

/// A generated GBDT model: its name, task, and the features it must read (the rest of its 20
/// are drawn).
struct GbdtSpec {
    name: &'static str,
    task: Task,
    core: &'static [&'static str],
}

const CTR_CORE: &[&str] = &[
    "ctx_device_tv",
    "ctx_device_mobile",
    "ctx_live",
    "user_ctr_7d",
    "user_ads_seen_1d",
    "user_skip_rate_7d",
    "user_premium",
    "li_ctr_7d",
    "li_bid_usd",
    "li_category_code",
];
const COMPLETION_CORE: &[&str] = &[
    "ctx_device_tv",
    "ctx_device_mobile",
    "ctx_live",
    "ctx_breaks",
    "user_completion_rate_7d",
    "user_skip_rate_7d",
    "user_watch_hours_7d",
    "li_completion_rate_7d",
    "li_min_duration_s",
    "li_max_duration_s",
];

/// The five GBDTs, in `models.toml` order: valuation reads the first scorer of each task, so
/// `ctr_gbdt_a` and `completion_gbdt_a` price candidates and the others only cost compute, as
/// challengers and secondary objectives do in production.
const GBDTS: [GbdtSpec; 5] = [
    GbdtSpec {
        name: "ctr_gbdt_a",
        task: Task::Ctr,
        core: CTR_CORE,
    },
    GbdtSpec {
        name: "completion_gbdt_a",
        task: Task::Completion,
        core: COMPLETION_CORE,
    },
    GbdtSpec {
        name: "ctr_gbdt_b",
        task: Task::Ctr,
        core: CTR_CORE,
    },
    GbdtSpec {
        name: "completion_gbdt_b",
        task: Task::Completion,
        core: COMPLETION_CORE,
    },
    GbdtSpec {
        name: "conversion_gbdt",
        task: Task::Conversion,
        core: &[
            "ctx_device_tv",
            "ctx_live",
            "user_ctr_7d",
            "user_premium",
            "user_tenure_days",
            "user_skip_rate_7d",
            "li_ctr_7d",
            "li_guaranteed",
            "li_category_code",
        ],
    },
];

/// The three MLPs, reading all 64 features.
const MLPS: [(&str, Task, mlp::Head); 3] = [
    ("ctr_mlp", Task::Ctr, mlp::Head::Sigmoid),
    ("completion_mlp", Task::Completion, mlp::Head::Softmax),
    ("brand_safety_mlp", Task::BrandSafety, mlp::Head::Sigmoid),
];

/// The early ranker's name, and its inputs: cheap scalar features, no embeddings.
const RANKER: &str = "early_ranker";
const RANKER_FEATURES: [&str; 16] = [
    "ctx_device_tv",
    "ctx_device_mobile",
    "ctx_device_tablet",
    "ctx_live",
    "ctx_breaks",
    "user_ctr_7d",
    "user_completion_rate_7d",
    "user_ads_seen_1d",
    "user_skip_rate_7d",
    "user_premium",
    "li_ctr_7d",
    "li_completion_rate_7d",
    "li_min_duration_s",
    "li_bid_usd",
    "li_guaranteed",
    "li_brand_risk",
];

/// Sample rows the models are fitted on, and golden rows.
const FIT_ROWS: usize = 3_000;
/// Rows the MLP output layers are fitted on (each costs a forward pass).
const MLP_FIT_ROWS: usize = 2_000;
const GOLDEN_ROWS: usize = 200;
/// Golden rows that carry the unknown-viewer defaults, as hydration serves them on a miss.
const GOLDEN_DEFAULT_ROWS: usize = 8;

/// Names of the models, ranker first, then the scorers in `models.toml` order.
pub fn model_names() -> Vec<&'static str> {
    std::iter::once(RANKER)
        .chain(GBDTS.iter().map(|g| g.name))
        .chain(MLPS.iter().map(|m| m.0))
        .collect()
}

/// Feature rows drawn like serving sees them: a request of standard traffic, its viewer's stored
/// features, and a random line item.
fn sample_rows(
    seed: u64,
    salt: u64,
    candidates: &[Vec<f32>],
    n: usize,
    defaults: usize,
) -> Vec<Vec<f32>> {
    let mut traffic = RequestGen::new(TrafficConfig::standard(), seed ^ salt);
    let mut rng = ChaCha8Rng::seed_from_u64((seed ^ salt).wrapping_add(1));
    let space = feature_space();
    let user_defaults: Vec<f32> = space
        .of(Source::Stored(Entity::User))
        .map(|(_, s)| s.default)
        .collect();
    (0..n)
        .map(|i| {
            let req = traffic.next_request();
            let viewer: u64 = req.user.id.as_str()[2..].parse().expect("u-N viewer ids");
            let user = if i < defaults {
                user_defaults.clone()
            } else {
                viewer_features(seed, viewer)
            };
            let li = rng.random_range(0..candidates.len());
            feature_row(&req, &user, &candidates[li])
        })
        .collect()
}

fn select(rows: &[Vec<f32>], columns: &[usize]) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|r| columns.iter().map(|&c| r[c]).collect())
        .collect()
}

/// A golden CSV: the features, and the generator's own prediction for Podium to reproduce.
fn golden_csv(names: &[String], rows: &[Vec<f32>], predictions: &[f64]) -> String {
    let mut s = names.join(",");
    s.push_str(",prediction\n");
    for (r, p) in rows.iter().zip(predictions) {
        for v in r {
            s.push_str(&format!("{v},"));
        }
        s.push_str(&format!("{p}\n"));
    }
    s
}

/// One model to package.
struct Packaged<'a> {
    name: &'a str,
    task: Task,
    kind: ModelKind,
    features: Vec<String>,
    file_name: &'a str,
    weights: Vec<u8>,
    golden_rows: Vec<Vec<f32>>,
    golden_predictions: Vec<f64>,
    output: Option<String>,
    link: Option<Link>,
    latency_budget_us: u64,
}

/// Packages a generated model as a bundle under `models/`: its golden rows carry the
/// generator's predictions, so packaging proves that Podium's runtime scores the file as the
/// generator does (to 1e-5) before the bundle is written.
fn package_model(
    seed: u64,
    staging: &Path,
    models: &Path,
    m: Packaged<'_>,
) -> Result<(), StandardError> {
    let dir = staging.join(m.name);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let weights = dir.join(m.file_name);
    std::fs::write(&weights, &m.weights).map_err(io(&weights))?;
    let golden = dir.join("golden.csv");
    std::fs::write(
        &golden,
        golden_csv(&m.features, &m.golden_rows, &m.golden_predictions),
    )
    .map_err(io(&golden))?;
    package(&PackageOptions {
        kind: m.kind,
        weights,
        name: m.name.to_string(),
        version: format!("{GENERATOR}-s{seed}"),
        task: m.task.name().to_string(),
        features: Some(m.features),
        link: m.link,
        output: m.output,
        golden: Some(golden),
        calibration: None,
        fallback_prior: None,
        latency_budget_us: m.latency_budget_us,
        out: models.join(m.name),
    })?;
    Ok(())
}

/// Generates and packages every model of the workload under `models`.
fn write_models(
    seed: u64,
    market: &Marketplace,
    staging: &Path,
    models: &Path,
) -> Result<(), StandardError> {
    let names = feature_names();
    let column = |n: &str| names.iter().position(|x| x == n).expect("known feature");
    let candidates: Vec<Vec<f32>> = market
        .line_items
        .iter()
        .map(|li| candidate_features(seed, li))
        .collect();
    let rows = sample_rows(seed, FIT_SALT, &candidates, FIT_ROWS, 0);
    let golden = sample_rows(
        seed,
        GOLDEN_SALT,
        &candidates,
        GOLDEN_ROWS,
        GOLDEN_DEFAULT_ROWS,
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ MODEL_SALT);

    // Early ranker: a linear fit of the CTR truth on cheap features.
    let cols: Vec<usize> = RANKER_FEATURES.iter().map(|n| column(n)).collect();
    let x: Vec<f64> = select(&rows, &cols)
        .iter()
        .flatten()
        .map(|&v| f64::from(v))
        .collect();
    let y: Vec<f64> = rows.iter().map(|r| Task::Ctr.truth(r)).collect();
    let (intercept, weights) = ridge(&x, &y, cols.len(), 1e-3);
    // Rounded to f32 as the runtime holds them, so the golden predictions are exact.
    let intercept = f64::from(intercept as f32);
    let weights: Vec<f64> = weights.iter().map(|&w| f64::from(w as f32)).collect();
    let file = LinearWeights {
        intercept,
        weights: RANKER_FEATURES
            .iter()
            .map(|n| n.to_string())
            .zip(weights.iter().copied())
            .collect(),
        hashed: None,
    };
    let golden_rows = select(&golden, &cols);
    let golden_predictions = golden_rows
        .iter()
        .map(|r| {
            sigmoid(
                intercept
                    + r.iter()
                        .zip(&weights)
                        .map(|(&v, w)| f64::from(v) * w)
                        .sum::<f64>(),
            )
        })
        .collect();
    package_model(
        seed,
        staging,
        models,
        Packaged {
            name: RANKER,
            task: Task::Ctr,
            kind: ModelKind::Linear,
            features: RANKER_FEATURES.iter().map(|n| n.to_string()).collect(),
            file_name: "linear.json",
            weights: serde_json::to_vec_pretty(&file).expect("weights serialise"),
            golden_rows,
            golden_predictions,
            output: None,
            link: Some(Link::Logistic),
            latency_budget_us: 1_000,
        },
    )?;

    for spec in &GBDTS {
        // The task's own features, then others drawn at random up to 20, in column order.
        let mut cols: Vec<usize> = spec.core.iter().map(|n| column(n)).collect();
        while cols.len() < GBDT_FEATURES {
            let c = rng.random_range(0..FEATURES);
            if !cols.contains(&c) {
                cols.push(c);
            }
        }
        cols.sort_unstable();
        let features: Vec<String> = cols.iter().map(|&c| names[c].clone()).collect();
        let target: Vec<f64> = rows.iter().map(|r| spec.task.truth(r)).collect();
        let ensemble = gbdt::generate(
            features.clone(),
            &select(&rows, &cols),
            &target,
            gbdt::EnsembleShape {
                trees: GBDT_TREES,
                leaves: GBDT_LEAVES,
                learning_rate: 0.05,
                min_data_in_leaf: 20,
            },
            &mut rng,
        );
        let golden_rows = select(&golden, &cols);
        let golden_predictions = golden_rows
            .iter()
            .map(|r| sigmoid(ensemble.margin(r)))
            .collect();
        package_model(
            seed,
            staging,
            models,
            Packaged {
                name: spec.name,
                task: spec.task,
                kind: ModelKind::Lightgbm,
                features,
                file_name: "model.txt",
                weights: ensemble.to_lightgbm_text().into_bytes(),
                golden_rows,
                golden_predictions,
                output: None,
                link: None,
                latency_budget_us: 2_000,
            },
        )?;
    }

    for (name, task, head) in MLPS {
        let fit_rows = &rows[..MLP_FIT_ROWS];
        let target: Vec<f64> = fit_rows.iter().map(|r| task.truth(r)).collect();
        let net = mlp::generate(fit_rows, &target, head, &mut rng);
        let (tensor, column) = head.output();
        package_model(
            seed,
            staging,
            models,
            Packaged {
                name,
                task,
                kind: ModelKind::Onnx,
                features: names.clone(),
                file_name: "model.onnx",
                weights: net.to_onnx(name, GENERATOR),
                golden_predictions: golden.iter().map(|r| net.predict(r)).collect(),
                golden_rows: golden.clone(),
                output: Some(format!("{tensor}:{column}")),
                link: None,
                latency_budget_us: 3_000,
            },
        )?;
    }
    Ok(())
}

/// The model set: the ranker, then the eight scorers, none with fallbacks.
pub fn model_set() -> ModelSetConfig {
    let names = model_names();
    ModelSetConfig {
        top_k: TOP_K,
        ranker: SlotConfig::of(names[0]),
        scorers: names[1..].iter().map(|n| SlotConfig::of(n)).collect(),
        serve_only: Vec::new(),
        micro_batching: Default::default(),
    }
}

// ---------------------------------------------------------------------------------------------
// The data directory

/// Reads `workload.json` of a directory; `None` when the directory holds none.
pub fn read_spec(dir: &Path) -> Result<Option<WorkloadSpec>, StandardError> {
    let path = dir.join(WORKLOAD_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let spec: WorkloadSpec = serde_json::from_str(&text).map_err(|e| StandardError::Invalid {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if spec.workload != WORKLOAD || spec.generator != GENERATOR {
        return Err(StandardError::Invalid {
            path,
            message: format!(
                "written by workload {:?} generator {:?}; this build serves {WORKLOAD:?} \
                 generator {GENERATOR:?}: generate it again into another directory",
                spec.workload, spec.generator
            ),
        });
    }
    Ok(Some(spec))
}

fn is_empty_dir(dir: &Path) -> Result<bool, StandardError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Writes the standard workload of `seed` into `dir`, which must not exist or be empty.
///
/// Everything is written into a sibling directory first and renamed into place at the end, so
/// an interrupted run never leaves a half-written directory that looks generated.
pub fn generate(dir: &Path, seed: u64) -> Result<WorkloadSpec, StandardError> {
    if !is_empty_dir(dir)? {
        return Err(StandardError::Invalid {
            path: dir.to_path_buf(),
            message: "already exists and is not empty; the generator never overwrites".into(),
        });
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| StandardError::Invalid {
            path: dir.to_path_buf(),
            message: "has no directory name".into(),
        })?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let partial = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let result = write_into(&partial, seed);
    let result = result.and_then(|spec| {
        if dir.exists() {
            std::fs::remove_dir(dir).map_err(io(dir))?;
        }
        std::fs::rename(&partial, dir).map_err(io(dir))?;
        Ok(spec)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result
}

fn write_into(dir: &Path, seed: u64) -> Result<WorkloadSpec, StandardError> {
    let models = dir.join("models");
    std::fs::create_dir_all(&models).map_err(io(&models))?;
    let market = marketplace(seed);
    market.check().map_err(|message| StandardError::Invalid {
        path: dir.join("marketplace.json"),
        message,
    })?;
    market.write(&dir.join("marketplace.json"))?;
    let staging = dir.join(".staging");
    write_models(seed, &market, &staging, &models)?;
    std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    model_set().write(&dir.join("models.toml"))?;
    let spec = WorkloadSpec {
        workload: WORKLOAD.to_string(),
        generator: GENERATOR.to_string(),
        seed,
        viewers: VIEWERS,
    };
    let path = dir.join(WORKLOAD_FILE);
    let text = serde_json::to_string_pretty(&spec).expect("spec serialises") + "\n";
    std::fs::write(&path, text).map_err(io(&path))?;
    Ok(spec)
}

/// The standard workload of `seed` in `dir`: read if it is there (its seed must match), generated
/// if `dir` is absent or empty. Returns the spec and whether it was generated now.
pub fn ensure(dir: &Path, seed: u64) -> Result<(WorkloadSpec, bool), StandardError> {
    if let Some(spec) = read_spec(dir)? {
        if spec.seed != seed {
            return Err(StandardError::Invalid {
                path: dir.join(WORKLOAD_FILE),
                message: format!(
                    "generated with seed {}, not {seed}: pass --seed {} or another --data-dir",
                    spec.seed, spec.seed
                ),
            });
        }
        return Ok((spec, false));
    }
    if !is_empty_dir(dir)? {
        return Err(StandardError::Invalid {
            path: dir.to_path_buf(),
            message: format!(
                "is not empty and holds no {WORKLOAD_FILE}: not a standard workload directory"
            ),
        });
    }
    Ok((generate(dir, seed)?, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use podium_auction::TargetingIndex;

    #[test]
    fn feature_space_is_64_wide_and_the_truth_reads_the_named_columns() {
        let names = feature_names();
        assert_eq!(names.len(), FEATURES);
        assert_eq!(FEATURES, 64);
        for (c, n) in [
            (col::TV, "ctx_device_tv"),
            (col::MOBILE, "ctx_device_mobile"),
            (col::LIVE, "ctx_live"),
            (col::BREAKS, "ctx_breaks"),
            (col::SPORTS, "ctx_genre_sports"),
            (col::NEWS, "ctx_genre_news"),
            (col::KIDS, "ctx_genre_kids"),
            (col::U_CTR, "user_ctr_7d"),
            (col::U_COMPLETION, "user_completion_rate_7d"),
            (col::U_SEEN, "user_ads_seen_1d"),
            (col::U_TENURE, "user_tenure_days"),
            (col::U_WATCH, "user_watch_hours_7d"),
            (col::U_SKIP, "user_skip_rate_7d"),
            (col::U_PREMIUM, "user_premium"),
            (col::U_EMB, "user_emb_00"),
            (col::C_CTR, "li_ctr_7d"),
            (col::C_COMPLETION, "li_completion_rate_7d"),
            (col::C_MIN_DURATION, "li_min_duration_s"),
            (col::C_GUARANTEED, "li_guaranteed"),
            (col::C_RISK, "li_brand_risk"),
            (col::C_EMB, "li_emb_00"),
        ] {
            assert_eq!(names[c], n);
        }
        assert_eq!(names[col::C_EMB + EMBEDDING - 1], "li_emb_15");
        let space = feature_space();
        assert_eq!(space.user_names().len(), USER_WIDTH);
        assert_eq!(space.candidate_names().len(), CANDIDATE_WIDTH);
    }

    #[test]
    fn marketplace_has_the_standard_shape() {
        let m = marketplace(1);
        m.check().unwrap();
        assert_eq!(m, marketplace(1));
        assert_ne!(m, marketplace(2));
        assert_eq!(m.line_items.len(), LINE_ITEMS);
        let advertisers: std::collections::HashSet<_> =
            m.line_items.iter().map(|l| &l.advertiser_id).collect();
        assert_eq!(advertisers.len(), ADVERTISERS);
        let categories: std::collections::HashSet<_> =
            m.line_items.iter().map(|l| &l.category).collect();
        assert_eq!(categories.len(), CATEGORIES.len());
        let count = |f: &dyn Fn(&LineItem) -> bool| m.line_items.iter().filter(|l| f(l)).count();
        let cpm = count(&|l| matches!(l.bid, Bid::Cpm { .. }));
        let cpc = count(&|l| matches!(l.bid, Bid::Cpc { .. }));
        let cpcv = count(&|l| matches!(l.bid, Bid::Cpcv { .. }));
        let guaranteed = count(&|l| !l.goal.is_non_guaranteed());
        assert!(cpc > 800 && cpcv > 500 && cpm > 2_500, "{cpm} {cpc} {cpcv}");
        assert!((800..1_200).contains(&guaranteed), "{guaranteed}");
        for li in &m.line_items {
            assert!(li.daily_budget >= Micros::from_units(100_000.0));
            // eCPM of every bid type lands in a realistic CTV range.
            let e = podium_auction::ecpm(
                li.bid,
                li.priors.ctr_7d,
                li.priors.completion_rate_7d,
                li.priors.conversion_rate_7d,
            );
            assert!(e > Micros::ZERO && e < Micros::from_units(400.0), "{e:?}");
        }
    }

    #[test]
    fn about_1000_line_items_are_eligible_per_request() {
        let m = marketplace(1);
        let index = TargetingIndex::build(&m.line_items);
        let mut traffic = RequestGen::new(TrafficConfig::standard(), 7);
        let n = 500;
        let counts: Vec<usize> = (0..n)
            .map(|_| index.eligible(&traffic.next_request(), 0).len())
            .collect();
        let mean = counts.iter().sum::<usize>() as f64 / n as f64;
        assert!((900.0..1_100.0).contains(&mean), "mean eligible {mean}");
        // Every request has enough candidates to fill the top 100.
        assert!(
            counts.iter().all(|&c| c >= TOP_K),
            "{:?}",
            counts.iter().min()
        );
    }

    #[test]
    fn viewers_are_a_pure_function_of_seed_and_number() {
        assert_eq!(viewer_features(1, 42), viewer_features(1, 42));
        assert_ne!(viewer_features(1, 42), viewer_features(1, 43));
        assert_ne!(viewer_features(1, 42), viewer_features(2, 42));
        let store = MemoryStore::new();
        fill_audience(&store, 1, 1_000);
        assert_eq!(store.len(), 1_000);
        let v = viewer_features(1, 999);
        assert_eq!(v.len(), USER_WIDTH);
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn ground_truth_gives_sane_rates() {
        let m = marketplace(1);
        let candidates: Vec<Vec<f32>> = m
            .line_items
            .iter()
            .map(|l| candidate_features(1, l))
            .collect();
        let rows = sample_rows(1, FIT_SALT, &candidates, 2_000, 0);
        let mean = |t: Task| rows.iter().map(|r| sigmoid(t.truth(r))).sum::<f64>() / 2_000.0;
        let (ctr, completion, conversion, safe) = (
            mean(Task::Ctr),
            mean(Task::Completion),
            mean(Task::Conversion),
            mean(Task::BrandSafety),
        );
        assert!((0.003..0.03).contains(&ctr), "ctr {ctr}");
        assert!((0.6..0.9).contains(&completion), "completion {completion}");
        assert!(conversion < ctr, "conversion {conversion}");
        assert!((0.8..0.99).contains(&safe), "brand safety {safe}");
    }
}
