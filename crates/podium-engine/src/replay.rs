//! Replay of logged decisions: the auction of a decision run again from the state it read (the
//! scores, pacing multipliers, lease balances, reserves and cap history the log holds), by the
//! same valuation and pod functions the live path calls; and the frame its full-scoring models
//! read, rebuilt from the logged feature values, so that models (the logged versions, or
//! candidates) can score it again.

use crate::pipeline::{
    allowed_in_pod, break_rules, placed_ad, solve_break, value_candidates, TaskScores,
};
use crate::{Engine, MarketSnapshot};
use podium_core::{AdRequest, BreakDecision, FeatureFrame, Micros, PlacedAd};
use podium_features::offline::DecisionRow;
use podium_log::decision_log::replay_state;
use podium_log::{DecisionRecord, Explored, ReplayState};
use podium_serving::{BoundModel, ModelSet};

/// A decision's auction, run again.
#[derive(Clone, Debug, PartialEq)]
pub struct Replayed {
    /// The breaks and their ads, as the decision would answer them.
    pub breaks: Vec<BreakDecision>,
    /// Exploration of each break, when the decision explored.
    pub explore: Vec<Explored>,
}

/// Why a logged decision cannot be replayed at all.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Unreplayable {
    /// The row has no replay state (a layout-1 log, or a decision that fell back before the
    /// auction).
    #[error("the row holds no replay state (decision log layout 1)")]
    NoState,
    /// The decision ran on another marketplace than the one replayed.
    #[error("logged under marketplace {logged:016x}, replaying marketplace {here:016x}")]
    Marketplace {
        /// Fingerprint in the log.
        logged: u64,
        /// Fingerprint of the marketplace replayed.
        here: u64,
    },
    /// The state is inconsistent with itself or with the request.
    #[error("inconsistent replay state: {0}")]
    State(String),
}

impl Unreplayable {
    /// A short name of the reason, for counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoState => "no_state",
            Self::Marketplace { .. } => "marketplace_changed",
            Self::State(_) => "bad_state",
        }
    }
}

/// The exploration rate a decision ran with (0 when it did not explore).
pub fn exploration_rate(state: &ReplayState) -> f64 {
    state.explore.first().map_or(0.0, |e| e.rate)
}

/// Runs a logged decision's auction again on `market` from its logged state, with the logged
/// scores or `scores` (same layout: model by model over `state.top`) instead. `check_market`
/// false replays on a changed marketplace (a candidate auction configuration); positions must
/// still name the same line items.
pub fn replay_auction(
    market: &MarketSnapshot,
    req: &AdRequest,
    ts_ms: i64,
    state: &ReplayState,
    scores: Option<&[f32]>,
    check_market: bool,
) -> Result<Replayed, Unreplayable> {
    if state.market == 0 && state.top.is_empty() && state.reserves.is_empty() {
        return Err(Unreplayable::NoState);
    }
    if check_market && state.market != market.fingerprint {
        return Err(Unreplayable::Marketplace {
            logged: state.market,
            here: market.fingerprint,
        });
    }
    let k = state.top.len();
    let scores = scores.unwrap_or(&state.scores);
    let bad = |m: String| Err(Unreplayable::State(m));
    if scores.len() != state.tasks.len() * k {
        return bad(format!(
            "{} scores for {} models over {k} candidates",
            scores.len(),
            state.tasks.len()
        ));
    }
    if state.multipliers.len() != k || state.available.len() != k {
        return bad(format!(
            "{} multipliers and {} lease balances for {k} candidates",
            state.multipliers.len(),
            state.available.len()
        ));
    }
    if state.reserves.len() != req.breaks.len() {
        return bad(format!(
            "{} reserves for {} breaks",
            state.reserves.len(),
            req.breaks.len()
        ));
    }
    let items = market.marketplace.line_items.len();
    if let Some(&i) = state.top.iter().find(|&&i| i as usize >= items) {
        return bad(format!(
            "candidate position {i} beyond the marketplace's {items} line items"
        ));
    }
    let by_task = TaskScores::of(&state.tasks, |m| &scores[m * k..(m + 1) * k]);
    let candidates = value_candidates(market, &state.top, &by_task, &state.multipliers);
    let epsilon = exploration_rate(state);
    let mut placed: Vec<u32> = Vec::new();
    let mut breaks = Vec::with_capacity(req.breaks.len());
    let mut explore = Vec::new();
    for (b, &reserve) in req.breaks.iter().zip(&state.reserves) {
        let brk = break_rules(&market.marketplace, b);
        let allowed = |c: usize| {
            allowed_in_pod(
                market,
                &candidates,
                &state.available,
                &placed,
                &state.history,
                ts_ms,
                c,
            )
        };
        let (outcome, explored) = solve_break(
            market,
            req.request_id.as_str(),
            &brk,
            Micros(reserve),
            &candidates,
            &allowed,
            epsilon,
        );
        explore.extend(explored);
        let ads: Vec<PlacedAd> = outcome
            .placements
            .iter()
            .filter(|p| {
                !state
                    .lease_lost
                    .contains(&candidates[p.candidate].line_item)
            })
            .map(|p| {
                let cand = &candidates[p.candidate];
                placed.push(cand.line_item);
                placed_ad(market, b, cand, p, state.multipliers[p.candidate])
            })
            .collect();
        breaks.push(BreakDecision {
            break_id: b.id.clone(),
            ads,
        });
    }
    Ok(Replayed { breaks, explore })
}

/// The first difference between what a decision answered and its replay, in words; `None`
/// when they are the same ad for ad (line item, creative, duration, price, eCPM, slot and
/// multiplier, in play order).
pub fn first_difference(logged: &[BreakDecision], replayed: &[BreakDecision]) -> Option<String> {
    if logged.len() != replayed.len() {
        return Some(format!(
            "{} breaks logged, {} replayed",
            logged.len(),
            replayed.len()
        ));
    }
    for (l, r) in logged.iter().zip(replayed) {
        let b = l.break_id.as_str();
        if l.ads.len() != r.ads.len() {
            let ids = |ads: &[PlacedAd]| {
                ads.iter()
                    .map(|a| a.line_item_id.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            return Some(format!(
                "break {b}: {} ads logged [{}], {} replayed [{}]",
                l.ads.len(),
                ids(&l.ads),
                r.ads.len(),
                ids(&r.ads)
            ));
        }
        for (k, (x, y)) in l.ads.iter().zip(&r.ads).enumerate() {
            if x.line_item_id != y.line_item_id || x.creative_id != y.creative_id {
                return Some(format!(
                    "break {b} ad {}: logged {}/{}, replayed {}/{}",
                    k + 1,
                    x.line_item_id.as_str(),
                    x.creative_id.as_str(),
                    y.line_item_id.as_str(),
                    y.creative_id.as_str()
                ));
            }
            if x.price_cpm != y.price_cpm || x.ecpm != y.ecpm {
                return Some(format!(
                    "break {b} ad {} ({}): logged price {} eCPM {}, replayed price {} eCPM {}",
                    k + 1,
                    x.line_item_id.as_str(),
                    x.price_cpm.0,
                    x.ecpm.0,
                    y.price_cpm.0,
                    y.ecpm.0
                ));
            }
            if x.slot != y.slot
                || x.duration_s != y.duration_s
                || x.multiplier.to_bits() != y.multiplier.to_bits()
            {
                return Some(format!(
                    "break {b} ad {} ({}): slot, duration or multiplier differ",
                    k + 1,
                    x.line_item_id.as_str()
                ));
            }
        }
    }
    None
}

/// A model version of a set, bound to its schema: primaries, fallbacks, canaries, shadows and
/// experiment alternates alike.
pub fn bound_version(set: &ModelSet, name: &str, version: &str) -> Option<BoundModel> {
    let slots = std::iter::once(&set.ranker).chain(&set.scorers);
    for s in slots {
        let found = s
            .models()
            .find(|m| m.model().name() == name && m.model().version() == version)
            .cloned()
            .or_else(|| {
                s.variants()
                    .chain(s.alternates())
                    .find(|v| {
                        v.model.model().name() == name && v.model.model().version() == version
                    })
                    .map(|v| (*v.model).clone())
            });
        if found.is_some() {
            return found;
        }
    }
    None
}

impl Engine {
    /// The frame a logged decision's full-scoring models read, rebuilt from the log: its
    /// request-level feature values, the fully scored candidates' marketplace values and the
    /// stored values their line items and advertisers were served (`served`); every column of
    /// the schema is present.
    pub fn replay_frame(&self, record: &DecisionRecord) -> Result<FeatureFrame, String> {
        let hydrator = self.hydrator();
        let names = hydrator.space().schema().names();
        for (k, (name, _)) in record.features.iter().enumerate() {
            match names.get(k) {
                Some(n) if n == name => {}
                Some(n) => {
                    return Err(format!(
                        "the log's feature {k} is `{name}`, this feature space's is `{n}`: the \
                         feature definitions changed since the decision was logged"
                    ))
                }
                None => {
                    return Err(format!(
                        "the log has feature `{name}` this feature space does not"
                    ))
                }
            }
        }
        let market = self.market();
        let state = &record.replay;
        let line_items = &market.marketplace.line_items;
        let ids = state
            .top
            .iter()
            .map(|&i| {
                line_items
                    .get(i as usize)
                    .map(|li| (li.id.as_str(), li.advertiser_id.as_str()))
                    .ok_or_else(|| {
                        format!(
                            "candidate position {i} beyond {} line items",
                            line_items.len()
                        )
                    })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let stored = hydrator.candidate_stored_from(&record.served, &ids);
        let items = market.candidate_features.len();
        let rows = state
            .top
            .iter()
            .map(|&i| {
                market
                    .candidate_features
                    .get(i as usize)
                    .map(Vec::as_slice)
                    .ok_or_else(|| format!("candidate position {i} beyond {items} line items"))
            })
            .collect::<Result<Vec<&[f32]>, String>>()?;
        let values: Vec<f32> = record.features.iter().map(|(_, v)| *v).collect();
        let all: Vec<usize> = (0..names.len()).collect();
        Ok(hydrator.frame_replayed(&values, &rows, &stored, &all))
    }
}

/// A logged row's request, decision and replay state; `Err` says which column did not parse.
pub fn parse_row(
    row: &DecisionRow,
) -> Result<(AdRequest, podium_core::Decision, ReplayState), String> {
    let req = serde_json::from_str(&row.request).map_err(|e| format!("`request`: {e}"))?;
    let decision = serde_json::from_str(&row.decision).map_err(|e| format!("`decision`: {e}"))?;
    let state = replay_state(&row.state)?;
    Ok((req, decision, state))
}

/// Whether two breaks' explorations are the same; propensities within the last bit of their
/// JSON encoding (serde_json's float parsing may land one ulp away).
pub fn same_exploration(a: &[Explored], b: &[Explored]) -> bool {
    let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
        (x, y) => x.is_none() && y.is_none(),
    };
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            a.break_id == b.break_id
                && a.lead == b.lead
                && a.explored == b.explored
                && a.choices == b.choices
                && close(a.propensity, b.propensity)
                && close(Some(a.rate), Some(b.rate))
        })
}

/// Replays one parsed row exactly: `Ok` when the auction places the same ads at the same
/// prices and explores the same way, else the kind of difference and the difference in words.
pub fn check_exact(
    market: &MarketSnapshot,
    req: &AdRequest,
    ts_ms: i64,
    decision: &podium_core::Decision,
    state: &ReplayState,
) -> Result<(), (&'static str, String)> {
    let replayed = replay_auction(market, req, ts_ms, state, None, true)
        .map_err(|e| (e.kind(), e.to_string()))?;
    if let Some(d) = first_difference(&decision.breaks, &replayed.breaks) {
        return Err(("auction_differs", d));
    }
    if !same_exploration(&state.explore, &replayed.explore) {
        let pair =
            state.explore.iter().zip(&replayed.explore).find(|(l, r)| {
                !same_exploration(std::slice::from_ref(*l), std::slice::from_ref(*r))
            });
        return Err((
            "exploration_differs",
            format!(
                "exploration logged {:?}, replayed {:?}",
                pair.map(|p| p.0),
                pair.map(|p| p.1)
            ),
        ));
    }
    Ok(())
}
