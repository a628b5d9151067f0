//! The demo world: a marketplace, an audience, and models trained on simulated impressions.

use podium_auction::{
    Bid, CapScope, Creative, Daypart, DynamicReserveConfig, FloorRule, FrequencyCap, Goal,
    LineItem, LineItemPriors, Marketplace, Targeting,
};
use podium_core::{BreakPosition, Device, Micros, SlotPosition};
use podium_features::{Entity, FeatureSpace, FeatureSpec, Source};
use podium_model::manifest::{OutputSpec, ServingSpec};
use podium_model::{
    linear::fit_logistic, linear::LinearWeights, BundleWriter, GoldenRow, InputSpec, Link,
    Manifest, ModelKind,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Countries the demo marketplace targets.
pub const COUNTRIES: [&str; 10] = ["US", "CA", "GB", "DE", "FR", "BR", "MX", "JP", "AU", "IN"];
/// Content genres of the demo catalogue.
pub const GENRES: [&str; 8] = [
    "drama",
    "comedy",
    "sports",
    "news",
    "kids",
    "documentary",
    "reality",
    "action",
];
/// Advertiser categories.
pub const CATEGORIES: [&str; 10] = [
    "auto",
    "finance",
    "retail",
    "cpg",
    "travel",
    "tech",
    "pharma",
    "entertainment",
    "food",
    "telecom",
];
/// Creative lengths in seconds, as CTV inventory sells them.
pub const DURATIONS: [u32; 7] = [6, 10, 15, 20, 30, 45, 60];
/// Name and version of the demo models.
pub const DEMO_VERSION: &str = "demo-1";

/// Size of the demo world.
#[derive(Clone, Copy, Debug)]
pub struct DemoConfig {
    /// Seed of every random draw; the same seed gives the same world.
    pub seed: u64,
    /// Number of line items.
    pub line_items: usize,
    /// Number of advertisers.
    pub advertisers: usize,
    /// Number of viewers with stored features (`u-0` … `u-{n-1}`).
    pub users: usize,
    /// Simulated impressions the demo models train on.
    pub training_impressions: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            line_items: 400,
            advertisers: 60,
            users: 10_000,
            training_impressions: 20_000,
        }
    }
}

/// The feature space of the demo world.
pub fn feature_space() -> FeatureSpace {
    let f = |name: &str, source, default| FeatureSpec::new(name, source, default);
    FeatureSpace::new(vec![
        f("ctx_device_tv", Source::Context, 0.0),
        f("ctx_device_mobile", Source::Context, 0.0),
        f("ctx_device_tablet", Source::Context, 0.0),
        f("ctx_device_desktop", Source::Context, 0.0),
        f("ctx_live", Source::Context, 0.0),
        f("user_ctr_7d", Source::Stored(Entity::User), 0.01),
        f(
            "user_completion_rate_7d",
            Source::Stored(Entity::User),
            0.75,
        ),
        f("user_ads_seen_1d", Source::Stored(Entity::User), 0.0),
        f("user_tenure_days", Source::Stored(Entity::User), 30.0),
        f("li_ctr_7d", Source::Candidate, 0.01),
        f("li_completion_rate_7d", Source::Candidate, 0.75),
        f("li_min_duration_s", Source::Candidate, 15.0),
    ])
}

/// Candidate feature values of a line item, in [`FeatureSpace::candidate_names`] order of the
/// demo space.
pub fn candidate_features(li: &LineItem) -> Vec<f32> {
    let min_duration = li
        .creatives
        .iter()
        .map(|c| c.duration_s)
        .min()
        .unwrap_or(15);
    vec![
        li.priors.ctr_7d,
        li.priors.completion_rate_7d,
        min_duration as f32,
    ]
}

/// Generates the demo marketplace.
pub fn marketplace(cfg: &DemoConfig) -> Marketplace {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let advertiser_category: Vec<&str> = (0..cfg.advertisers)
        .map(|_| CATEGORIES[rng.random_range(0..CATEGORIES.len())])
        .collect();
    let pick_some = |rng: &mut ChaCha8Rng, all: &[&str], any_share: f64| -> Vec<String> {
        if rng.random_bool(any_share) {
            return Vec::new();
        }
        let n = rng.random_range(1..=3);
        let mut v: Vec<String> = (0..n)
            .map(|_| all[rng.random_range(0..all.len())].to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let line_items = (0..cfg.line_items)
        .map(|i| {
            let adv = rng.random_range(0..cfg.advertisers);
            let bid = match rng.random_range(0..100) {
                0..60 => Bid::Cpm {
                    cpm: Micros::from_units(round2(rng.random_range(4.0..40.0))),
                },
                60..85 => Bid::Cpc {
                    cpc: Micros::from_units(round2(rng.random_range(0.2..2.0))),
                },
                _ => Bid::Cpcv {
                    cpcv: Micros::from_units(round2(rng.random_range(0.01..0.06))),
                },
            };
            let devices = if rng.random_bool(0.6) {
                Vec::new()
            } else {
                let mut d: Vec<Device> = (0..rng.random_range(1..=2))
                    .map(|_| Device::ALL[rng.random_range(0..4)])
                    .collect();
                d.sort_by_key(|d| d.as_str());
                d.dedup();
                d
            };
            let creatives = (0..rng.random_range(1..=3))
                .map(|c| Creative {
                    id: format!("cr-{i}-{c}").as_str().into(),
                    duration_s: DURATIONS[rng.random_range(0..DURATIONS.len())],
                    media_url: None,
                })
                .collect();
            LineItem {
                id: format!("li-{i}").as_str().into(),
                advertiser_id: format!("adv-{adv}").as_str().into(),
                category: advertiser_category[adv].to_string(),
                bid,
                targeting: Targeting {
                    countries: pick_some(&mut rng, &COUNTRIES, 0.5),
                    devices,
                    genres: pick_some(&mut rng, &GENRES, 0.5),
                    ..Default::default()
                },
                creatives,
                daily_budget: Micros::from_units(round2(rng.random_range(200.0..5000.0))),
                priors: LineItemPriors {
                    ctr_7d: rng.random_range(0.002f32..0.03),
                    completion_rate_7d: rng.random_range(0.5f32..0.95),
                    conversion_rate_7d: 0.0,
                },
                goal: Goal::NonGuaranteed,
                iab_categories: crate::iab_categories(advertiser_category[adv]),
                campaign_id: None,
                domain: Some(format!("adv-{adv}.example")),
                caps: Vec::new(),
                position: SlotPosition::Any,
                pacing: Default::default(),
                budget: Default::default(),
            }
        })
        .collect();
    let mut m = Marketplace {
        reserve_cpm: Micros::from_units(2.0),
        line_items,
        floors: vec![
            FloorRule {
                devices: vec![Device::Tv],
                cpm: Micros::from_units(4.0),
                ..Default::default()
            },
            FloorRule {
                live: Some(true),
                positions: vec![BreakPosition::Preroll],
                cpm: Micros::from_units(6.0),
                ..Default::default()
            },
        ],
        auction: Default::default(),
        competitive_separation: true,
        dynamic_reserve: Some(DynamicReserveConfig::default()),
    };
    dress(&mut m, cfg.seed);
    m
}

/// The demo's richer selling terms, from a stream of their own so the base draws stay as they
/// were: campaigns, frequency caps, a few guaranteed deals and sponsor slots, CPA buyers, and
/// targeting by region, rating, daypart and audience segment.
fn dress(m: &mut Marketplace, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5E11_D0C5);
    for (i, li) in m.line_items.iter_mut().enumerate() {
        li.campaign_id = Some(format!("{}-camp-{}", li.advertiser_id, i % 3));
        if rng.random_bool(0.4) {
            li.caps.push(FrequencyCap {
                scope: CapScope::LineItem,
                max: rng.random_range(2..=5),
                window_s: 86_400,
            });
        }
        if rng.random_bool(0.1) {
            li.caps.push(FrequencyCap {
                scope: CapScope::Advertiser,
                max: 8,
                window_s: 3_600,
            });
        }
        match rng.random_range(0..100) {
            0..8 => {
                li.goal = Goal::Guaranteed {
                    impressions_per_day: rng.random_range(5..50) * 1000,
                };
                li.bid = Bid::Cpm {
                    cpm: Micros::from_units(round2(rng.random_range(15.0..45.0))),
                };
            }
            8..11 => {
                li.bid = Bid::Cpa {
                    cpa: Micros::from_units(round2(rng.random_range(20.0..120.0))),
                };
                li.priors.conversion_rate_7d = rng.random_range(0.0001f32..0.001);
            }
            _ => {}
        }
        match rng.random_range(0..100) {
            0..3 => li.position = SlotPosition::First,
            3..5 => li.position = SlotPosition::Last,
            _ => {}
        }
        let t = &mut li.targeting;
        match rng.random_range(0..100) {
            0..5 => t.regions = vec!["US-CA".into(), "US-NY".into()],
            5..10 => t.ratings = vec!["tv-g".into(), "tv-pg".into()],
            10..14 => t.exclude.ratings = vec!["tv-ma".into()],
            14..18 => {
                t.dayparts = vec![Daypart {
                    days: Vec::new(),
                    start_hour: 18,
                    end_hour: 23,
                }]
            }
            18..22 => t.segments = vec!["sports-fans".into(), "auto-intenders".into()],
            22..24 => t.live = Some(true),
            _ => {}
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The store key and stored features (in the demo space's user order) of every demo viewer.
pub fn audience(cfg: &DemoConfig) -> Vec<(String, Arc<[f32]>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xA0D1_E9CE);
    (0..cfg.users)
        .map(|u| {
            let values: Vec<f32> = vec![
                rng.random_range(0.001f32..0.04),
                rng.random_range(0.4f32..0.98),
                rng.random_range(0..25) as f32,
                rng.random_range(1..2000) as f32,
            ];
            (format!("user:u-{u}"), Arc::from(values))
        })
        .collect()
}

/// The demo's ground truth: the probabilities that a viewer clicks and completes an ad, from the
/// feature values (by feature-space name) of the viewer, the context and the line item. The
/// demo's training impressions are drawn from it, and so are `podium sim market`'s outcomes.
pub fn true_response(get: impl Fn(&str) -> f64) -> (f64, f64) {
    let row = Row {
        tv: get("ctx_device_tv"),
        mobile: get("ctx_device_mobile"),
        tablet: get("ctx_device_tablet"),
        desktop: get("ctx_device_desktop"),
        live: get("ctx_live"),
        user_ctr: get("user_ctr_7d"),
        user_completion: get("user_completion_rate_7d"),
        ads_seen: get("user_ads_seen_1d"),
        tenure: get("user_tenure_days"),
        li_ctr: get("li_ctr_7d"),
        li_completion: get("li_completion_rate_7d"),
        min_duration: get("li_min_duration_s"),
    };
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    (
        sigmoid(Truth::ctr_logit(&row)),
        sigmoid(Truth::completion_logit(&row)),
    )
}

/// The ground truth the demo's simulated viewers click and complete by.
struct Truth;

impl Truth {
    fn ctr_logit(x: &Row) -> f64 {
        -4.6 + 20.0 * (x.user_ctr - 0.01) + 25.0 * (x.li_ctr - 0.01) + 0.3 * x.tv - 0.2 * x.mobile
            + 0.25 * x.live
            - 0.03 * x.ads_seen
    }

    fn completion_logit(x: &Row) -> f64 {
        1.1 + 3.0 * (x.user_completion - 0.75) + 3.0 * (x.li_completion - 0.75) + 0.5 * x.tv
            - 0.4 * x.mobile
            - 0.015 * (x.min_duration - 15.0)
            + 0.3 * x.live
    }
}

/// One simulated impression's features, named as the feature space names them.
struct Row {
    tv: f64,
    mobile: f64,
    tablet: f64,
    desktop: f64,
    live: f64,
    user_ctr: f64,
    user_completion: f64,
    ads_seen: f64,
    tenure: f64,
    li_ctr: f64,
    li_completion: f64,
    min_duration: f64,
}

impl Row {
    fn get(&self, name: &str) -> f64 {
        match name {
            "ctx_device_tv" => self.tv,
            "ctx_device_mobile" => self.mobile,
            "ctx_device_tablet" => self.tablet,
            "ctx_device_desktop" => self.desktop,
            "ctx_live" => self.live,
            "user_ctr_7d" => self.user_ctr,
            "user_completion_rate_7d" => self.user_completion,
            "user_ads_seen_1d" => self.ads_seen,
            "user_tenure_days" => self.tenure,
            "li_ctr_7d" => self.li_ctr,
            "li_completion_rate_7d" => self.li_completion,
            "li_min_duration_s" => self.min_duration,
            other => panic!("demo row has no feature {other}"),
        }
    }
}

fn simulate(cfg: &DemoConfig, market: &Marketplace) -> Vec<Row> {
    let users = audience(cfg);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x1397_2E55);
    (0..cfg.training_impressions)
        .map(|_| {
            let u = &users[rng.random_range(0..users.len())].1;
            let li = &market.line_items[rng.random_range(0..market.line_items.len())];
            // Devices as the demo traffic has them (half on the TV), so that the models'
            // reference distributions match what they will serve.
            let device = [0, 0, 0, 1, 2, 3][rng.random_range(0..6)];
            let c = candidate_features(li);
            Row {
                tv: (device == 0) as u8 as f64,
                mobile: (device == 1) as u8 as f64,
                tablet: (device == 2) as u8 as f64,
                desktop: (device == 3) as u8 as f64,
                live: rng.random_bool(0.15) as u8 as f64,
                user_ctr: u[0] as f64,
                user_completion: u[1] as f64,
                ads_seen: u[2] as f64,
                tenure: u[3] as f64,
                li_ctr: c[0] as f64,
                li_completion: c[1] as f64,
                min_duration: c[2] as f64,
            }
        })
        .collect()
}

/// A demo model to train: its name, task, inputs and label.
struct Spec {
    name: &'static str,
    task: &'static str,
    inputs: &'static [&'static str],
    truth: fn(&Row) -> f64,
    prior: f64,
}

const MODELS: [Spec; 3] = [
    Spec {
        name: "early_ranker",
        task: "rank",
        inputs: &["user_ctr_7d", "li_ctr_7d", "ctx_device_tv"],
        truth: Truth::ctr_logit,
        prior: 0.01,
    },
    Spec {
        name: "ctr",
        task: "ctr",
        inputs: &[
            "ctx_device_tv",
            "ctx_device_mobile",
            "ctx_live",
            "user_ctr_7d",
            "user_ads_seen_1d",
            "user_tenure_days",
            "li_ctr_7d",
        ],
        truth: Truth::ctr_logit,
        prior: 0.01,
    },
    Spec {
        name: "completion",
        task: "completion",
        inputs: &[
            "ctx_device_tv",
            "ctx_device_mobile",
            "ctx_live",
            "user_completion_rate_7d",
            "li_completion_rate_7d",
            "li_min_duration_s",
        ],
        truth: Truth::completion_logit,
        prior: 0.75,
    },
];

/// Names of the demo models, in the order [`ensure_models`] returns their bundle directories.
pub fn model_names() -> [&'static str; 3] {
    [MODELS[0].name, MODELS[1].name, MODELS[2].name]
}

/// Trains the demo models on simulated impressions and writes their bundles under `dir`, unless
/// a bundle is already there. Returns the bundle directories, in [`model_names`] order.
pub fn ensure_models(
    cfg: &DemoConfig,
    market: &Marketplace,
    dir: &Path,
) -> Result<Vec<PathBuf>, podium_model::ModelError> {
    let mut rows = None;
    let mut out = Vec::new();
    for spec in &MODELS {
        let bundle = dir.join(spec.name);
        if !bundle.join("model.toml").exists() {
            let rows = rows.get_or_insert_with(|| simulate(cfg, market));
            train(cfg, spec, rows, &bundle)?;
        }
        out.push(bundle);
    }
    Ok(out)
}

fn train(
    cfg: &DemoConfig,
    spec: &Spec,
    rows: &[Row],
    bundle: &Path,
) -> Result<(), podium_model::ModelError> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ spec.name.len() as u64);
    let d = spec.inputs.len();
    let x: Vec<f64> = rows
        .iter()
        .flat_map(|r| spec.inputs.iter().map(|n| r.get(n)))
        .collect();
    let y: Vec<f64> = rows
        .iter()
        .map(|r| {
            let p = 1.0 / (1.0 + (-(spec.truth)(r)).exp());
            if rng.random_bool(p) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let (intercept, weights) = fit_logistic(&x, &y, d, 1e-2, 15);
    // Round-trip through f32 so golden rows are computed from exactly the weights the runtime reads.
    let intercept = intercept as f32 as f64;
    let weights: Vec<f64> = weights.iter().map(|&w| w as f32 as f64).collect();
    let golden = rows
        .iter()
        .take(32)
        .map(|r| {
            let inputs: Vec<f32> = spec.inputs.iter().map(|n| r.get(n) as f32).collect();
            let z = intercept
                + inputs
                    .iter()
                    .zip(&weights)
                    .map(|(&v, &w)| v as f64 * w)
                    .sum::<f64>();
            GoldenRow {
                inputs,
                expected: 1.0 / (1.0 + (-z).exp()),
            }
        })
        .collect::<Vec<_>>();
    let manifest = Manifest {
        name: spec.name.to_string(),
        version: DEMO_VERSION.to_string(),
        kind: ModelKind::Linear,
        task: spec.task.to_string(),
        weights: "weights/linear.json".to_string(),
        inputs: spec
            .inputs
            .iter()
            .map(|n| InputSpec {
                name: n.to_string(),
                kind: "f32".to_string(),
                default: None,
            })
            .collect(),
        output: OutputSpec {
            link: Link::Logistic,
            ..OutputSpec::default()
        },
        serving: ServingSpec {
            latency_budget_us: 2_000,
            fallback_prior: spec.prior,
        },
        calibration: None,
    };
    let file = LinearWeights {
        intercept,
        weights: spec
            .inputs
            .iter()
            .map(|n| n.to_string())
            .zip(weights.iter().copied())
            .collect(),
        hashed: None,
    };
    // The training rows' distributions: the baseline drift monitoring compares traffic with.
    let names: Vec<String> = spec.inputs.iter().map(|n| n.to_string()).collect();
    let inputs: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| spec.inputs.iter().map(|n| r.get(n) as f32).collect())
        .collect();
    let outputs: Vec<f64> = x
        .chunks(d)
        .map(|row| {
            let z = intercept + row.iter().zip(&weights).map(|(v, w)| v * w).sum::<f64>();
            1.0 / (1.0 + (-z).exp())
        })
        .collect();
    let reference = podium_model::reference::Reference::of_rows(&names, &inputs, &outputs);
    BundleWriter::new(bundle, manifest)
        .weights(serde_json::to_vec_pretty(&file).expect("weights serialise"))
        .golden(&golden)
        .file(
            "reference.json",
            serde_json::to_vec_pretty(&reference).expect("reference serialises"),
        )
        .write()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_world() {
        let cfg = DemoConfig {
            line_items: 50,
            users: 20,
            ..Default::default()
        };
        assert_eq!(marketplace(&cfg), marketplace(&cfg));
        assert_eq!(audience(&cfg), audience(&cfg));
        marketplace(&cfg).check().unwrap();
    }

    #[test]
    fn trained_models_load_and_learn_the_ground_truth() {
        let cfg = DemoConfig {
            line_items: 50,
            users: 200,
            training_impressions: 8_000,
            ..Default::default()
        };
        let tmp = tempfile::tempdir().unwrap();
        let dirs = ensure_models(&cfg, &marketplace(&cfg), tmp.path()).unwrap();
        let completion = podium_model::load_bundle(&dirs[2]).unwrap();
        assert_eq!(completion.version(), DEMO_VERSION);
        // The truth penalises long creatives; the fitted weight must have the same sign.
        let w = LinearWeights::read(&dirs[2].join("weights/linear.json")).unwrap();
        assert!(w.weights["li_min_duration_s"] < 0.0, "{:?}", w.weights);
        assert!(w.weights["ctx_device_tv"] > 0.0, "{:?}", w.weights);
    }
}
