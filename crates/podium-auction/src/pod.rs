//! Filling ad breaks: choose, order and price ads within each break's constraints.
//!
//! This is the greedy fill of the trunk: candidates in descending eCPM, each placed in the first
//! break where it fits, with generalised second-price clearing. Constraints that always hold: at
//! most `max_ads` ads and `max_duration_s` seconds per break, a line item at most once per request,
//! an advertiser at most once per break, no ad priced below the reserve or above its own eCPM.

use crate::marketplace::LineItem;
use podium_core::{AdBreak, Micros};
use std::collections::HashSet;

/// How winners pay (placeholder until the exact pod optimiser lands).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuctionType {
    /// Second price.
    #[default]
    SecondPrice,
    /// First price.
    FirstPrice,
}

/// A candidate with its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValuedCandidate {
    /// Position of the line item in the marketplace.
    pub line_item: u32,
    /// What an impression is worth.
    pub ecpm: Micros,
}

/// An ad placed in a break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Position of the line item in the marketplace.
    pub line_item: u32,
    /// Position of the creative in the line item's creatives.
    pub creative: u32,
    /// Clearing price (CPM).
    pub price_cpm: Micros,
    /// The candidate's eCPM.
    pub ecpm: Micros,
}

/// Fills `breaks` (in order) from `candidates`, returning one list of placements per break.
///
/// Each winner pays the eCPM of the candidate ranked right below it (or the reserve, whichever is
/// higher), never more than its own eCPM.
pub fn fill_breaks(
    breaks: &[AdBreak],
    candidates: &[ValuedCandidate],
    line_items: &[LineItem],
    reserve_cpm: Micros,
) -> Vec<Vec<Placement>> {
    let mut ranked: Vec<ValuedCandidate> = candidates
        .iter()
        .copied()
        .filter(|c| c.ecpm >= reserve_cpm && c.ecpm > Micros::ZERO)
        .collect();
    // Ties break by line item position so the outcome never depends on input order.
    ranked.sort_by(|a, b| b.ecpm.cmp(&a.ecpm).then(a.line_item.cmp(&b.line_item)));

    let mut out: Vec<Vec<Placement>> = breaks.iter().map(|_| Vec::new()).collect();
    let mut used_seconds = vec![0u32; breaks.len()];
    let mut advertisers: Vec<HashSet<&str>> = breaks.iter().map(|_| HashSet::new()).collect();
    let mut open = breaks.len();

    for (rank, cand) in ranked.iter().enumerate() {
        if open == 0 {
            break;
        }
        let li = &line_items[cand.line_item as usize];
        for (b, brk) in breaks.iter().enumerate() {
            if out[b].len() as u32 >= brk.max_ads
                || advertisers[b].contains(li.advertiser_id.as_str())
            {
                continue;
            }
            let room = brk.max_duration_s - used_seconds[b];
            // The shortest creative that fits leaves the most room for the ads after it.
            let Some((ci, creative)) = li
                .creatives
                .iter()
                .enumerate()
                .filter(|(_, c)| c.duration_s <= room)
                .min_by_key(|(_, c)| c.duration_s)
            else {
                continue;
            };
            let next = ranked.get(rank + 1).map_or(Micros::ZERO, |n| n.ecpm);
            out[b].push(Placement {
                line_item: cand.line_item,
                creative: ci as u32,
                price_cpm: next.max(reserve_cpm).min(cand.ecpm),
                ecpm: cand.ecpm,
            });
            used_seconds[b] += creative.duration_s;
            advertisers[b].insert(li.advertiser_id.as_str());
            if out[b].len() as u32 == brk.max_ads || used_seconds[b] == brk.max_duration_s {
                open -= 1;
            }
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketplace::{Bid, Creative};
    use podium_core::BreakPosition;
    use proptest::prelude::*;

    fn items(durations: &[Vec<u32>], advertisers: &[u8]) -> Vec<LineItem> {
        durations
            .iter()
            .zip(advertisers)
            .enumerate()
            .map(|(i, (ds, a))| LineItem {
                id: format!("li-{i}").as_str().into(),
                advertiser_id: format!("adv-{a}").as_str().into(),
                category: "x".into(),
                bid: Bid::Cpm {
                    cpm: Micros(1_000_000),
                },
                targeting: Default::default(),
                creatives: ds
                    .iter()
                    .enumerate()
                    .map(|(c, &d)| Creative {
                        id: format!("c-{i}-{c}").as_str().into(),
                        duration_s: d,
                        media_url: None,
                    })
                    .collect(),
                daily_budget: Micros(1),
                priors: Default::default(),
                goal: Default::default(),
                campaign_id: None,
                domain: None,
                caps: Vec::new(),
                position: Default::default(),
            })
            .collect()
    }

    fn brk(max_ads: u32, max_duration_s: u32) -> AdBreak {
        AdBreak {
            id: format!("b{max_ads}-{max_duration_s}").as_str().into(),
            position: BreakPosition::Midroll,
            max_ads,
            max_duration_s,
            rules: Default::default(),
        }
    }

    #[test]
    fn fills_by_value_and_prices_at_the_next_bid() {
        let li = items(&[vec![30], vec![15], vec![30]], &[0, 1, 2]);
        let cands = [
            ValuedCandidate {
                line_item: 0,
                ecpm: Micros(10_000_000),
            },
            ValuedCandidate {
                line_item: 1,
                ecpm: Micros(20_000_000),
            },
            ValuedCandidate {
                line_item: 2,
                ecpm: Micros(5_000_000),
            },
        ];
        let pods = fill_breaks(&[brk(2, 45)], &cands, &li, Micros(1_000_000));
        let got: Vec<_> = pods[0].iter().map(|p| (p.line_item, p.price_cpm)).collect();
        assert_eq!(got, vec![(1, Micros(10_000_000)), (0, Micros(5_000_000))]);
    }

    #[test]
    fn nothing_clears_below_the_reserve() {
        let li = items(&[vec![15]], &[0]);
        let cands = [ValuedCandidate {
            line_item: 0,
            ecpm: Micros(500_000),
        }];
        assert!(fill_breaks(&[brk(2, 45)], &cands, &li, Micros(1_000_000))[0].is_empty());
    }

    proptest! {
        #[test]
        fn never_breaks_a_constraint(
            durations in prop::collection::vec(prop::collection::vec(1u32..70, 1..3), 1..40),
            advertisers in prop::collection::vec(0u8..8, 40),
            values in prop::collection::vec(0i64..50_000_000, 40),
            shapes in prop::collection::vec((1u32..6, 5u32..121), 1..4),
            reserve in 0i64..5_000_000,
        ) {
            let li = items(&durations, &advertisers);
            let cands: Vec<_> = (0..li.len()).map(|i| ValuedCandidate { line_item: i as u32, ecpm: Micros(values[i]) }).collect();
            let breaks: Vec<_> = shapes.iter().map(|&(a, d)| brk(a, d)).collect();
            let pods = fill_breaks(&breaks, &cands, &li, Micros(reserve));
            let mut seen = HashSet::new();
            for (b, pod) in breaks.iter().zip(&pods) {
                prop_assert!(pod.len() as u32 <= b.max_ads);
                let secs: u32 = pod.iter().map(|p| li[p.line_item as usize].creatives[p.creative as usize].duration_s).sum();
                prop_assert!(secs <= b.max_duration_s);
                let mut advs = HashSet::new();
                for p in pod {
                    prop_assert!(seen.insert(p.line_item), "line item placed twice");
                    prop_assert!(advs.insert(li[p.line_item as usize].advertiser_id.clone()), "advertiser twice in a break");
                    prop_assert!(p.price_cpm >= Micros(reserve) && p.price_cpm <= p.ecpm);
                }
            }
        }
    }
}
