//! The simulator: deterministic marketplaces, audiences and impression histories generated from a
//! seed, and demo models trained on those histories.
//!
//! `podium serve` with no configuration runs on [`demo`]: a generated marketplace, a generated
//! audience in the embedded feature store, and three models trained at first start (an early
//! ranker, a CTR model and a completion model) against a known ground truth.
//!
//! Benchmarks and capacity figures run on [`standard`]: the standard workload of
//! `ARCHITECTURE.md` §7 (5,000 line items, 1,000,000 viewers, a linear ranker, five GBDTs and
//! three MLPs), generated from a seed by `podium sim gen`.
//!
//! Forecasting is measured on [`weeks`]: weeks of traffic with daily and weekly shapes, growth,
//! noise and live events, with the calendar of those events.

pub mod counterfactual;
pub mod demo;
pub mod pacing;
pub mod standard;
pub mod traffic;
pub mod weeks;

/// A feature definitions file (TOML, as `podium_features::Definitions` reads it) declaring a
/// world's stored viewer features — so the stream aggregator keeps them — followed by the
/// windowed aggregations every world streams: viewer, line item, advertiser and content counts.
pub fn default_definitions(space: &podium_features::FeatureSpace) -> String {
    use podium_features::{Entity, Source};
    use std::fmt::Write;
    let mut out = String::from(
        "# Feature definitions (docs/features.md). Written at first start; edit freely.\n\
         # Stored features are written by batch jobs (here: the world's audience fill);\n\
         # aggregations are folded from the event stream (POST /v1/events, or NATS JetStream).\n\n",
    );
    for (_, s) in space.of(Source::Stored(Entity::User)) {
        let _ = writeln!(
            out,
            "[[feature]]\nname = \"{}\"\nentity = \"user\"\ndefault = {:?}\nttl = \"30d\"\n",
            s.name, s.default
        );
    }
    let aggregations = [
        (
            "user_impressions_1h",
            "user",
            "count",
            "impression",
            "1h",
            "",
        ),
        ("user_clicks_1d", "user", "count", "click", "1d", ""),
        (
            "li_impressions_1h",
            "line_item",
            "count",
            "impression",
            "1h",
            "",
        ),
        ("li_clicks_1d", "line_item", "count", "click", "1d", ""),
        (
            "li_completions_1d",
            "line_item",
            "count",
            "completion",
            "1d",
            "",
        ),
        (
            "adv_impressions_1d",
            "advertiser",
            "count",
            "impression",
            "1d",
            "",
        ),
        (
            "adv_reach_1d",
            "advertiser",
            "distinct",
            "impression",
            "1d",
            "field = \"user_id\"\n",
        ),
        ("content_plays_1h", "content", "count", "play", "1h", ""),
    ];
    for (name, entity, agg, event, window, extra) in aggregations {
        let _ = writeln!(
            out,
            "[[feature]]\nname = \"{name}\"\nentity = \"{entity}\"\naggregation = \"{agg}\"\n\
             event = \"{event}\"\nwindow = \"{window}\"\n{extra}default = 0.0\nttl = \"7d\"\n"
        );
    }
    out
}

/// The IAB content taxonomy (1.0) codes of a generated advertiser category, as OpenRTB `cat` and
/// `bcat` carry them.
pub fn iab_categories(category: &str) -> Vec<String> {
    let codes: &[&str] = match category {
        "auto" => &["IAB2"],
        "finance" | "crypto" => &["IAB13"],
        "insurance" => &["IAB13-6"],
        "retail" | "cpg" => &["IAB22"],
        "food" | "beverages" => &["IAB8"],
        "restaurants" => &["IAB8-9"],
        "beer" | "spirits" | "alcohol" => &["IAB8-5"],
        "travel" | "hospitality" => &["IAB20"],
        "airlines" => &["IAB20-3"],
        "tech" | "telecom" => &["IAB19"],
        "entertainment" | "streaming" => &["IAB1"],
        "movies" => &["IAB1-5"],
        "music" => &["IAB1-6"],
        "gaming" => &["IAB9-30"],
        "sports_betting" => &["IAB9"],
        "pharma" | "health" => &["IAB7"],
        "beauty" => &["IAB18-1"],
        "fashion" => &["IAB18"],
        "home" | "utilities" | "energy" => &["IAB10"],
        "real_estate" => &["IAB21"],
        "education" => &["IAB5"],
        "jobs" => &["IAB4"],
        "government" | "legal" => &["IAB11"],
        "political" => &["IAB11-4"],
        "nonprofit" => &["IAB14"],
        "dating" => &["IAB14-1"],
        "pets" => &["IAB16"],
        "baby" | "toys" => &["IAB6"],
        "news_media" => &["IAB12"],
        "b2b" => &["IAB3"],
        _ => &[],
    };
    codes.iter().map(|c| c.to_string()).collect()
}
