//! High-water-mark allocation of guaranteed contracts, after Chen et al., "Ad serving using a
//! compact allocation plan" (EC 2012).
//!
//! Given contracts with remaining demand and a sample of forecast supply (each sample: which
//! contracts it is eligible for and how many impressions it stands for), the plan gives each
//! contract one number, a rate `α_j`, and an order. Contracts with the least eligible supply
//! allocate first; each takes the share `α_j` of every eligible impression still unallocated,
//! with `α_j` solving `Σ_{i ∈ Γ(j)} s_i · min(r_i, α_j) = d_j` over the remaining fractions
//! `r_i`. Serving replays the same walk per request, so only the rates travel to the servers.
//!
//! It does not forecast supply nor track delivery: the caller re-plans (e.g. hourly) with the
//! remaining demand and the forecast of the remaining supply.

use std::collections::HashMap;
use std::hash::Hash;

/// A guaranteed contract: an id and how many impressions it still needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Contract<Id> {
    /// The contract (line item) id.
    pub id: Id,
    /// Remaining demand, in impressions.
    pub demand: f64,
}

/// A slice of forecast supply: the contracts it is eligible for and its impressions.
#[derive(Clone, Debug, PartialEq)]
pub struct SupplySample<Id> {
    /// Contracts that may serve these impressions.
    pub eligible: Vec<Id>,
    /// Forecast impressions this sample stands for.
    pub weight: f64,
}

/// An allocation plan: a rate per contract and the order in which contracts take supply.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan<Id: Eq + Hash> {
    /// `α_j`: the share of each eligible, not yet allocated impression contract `j` takes.
    pub rates: HashMap<Id, f64>,
    /// Allocation order (least eligible supply first); serving walks it.
    pub order: Vec<Id>,
    /// Contracts whose demand exceeds the supply left to them; they take all of it.
    pub infeasible: Vec<Id>,
    position: HashMap<Id, usize>,
}

/// Plans the allocation of `supply` to `contracts` (see the module comment). Contracts with no
/// demand get rate 0; demand with no eligible supply is infeasible.
pub fn hwm_plan<Id: Clone + Eq + Hash>(
    contracts: &[Contract<Id>],
    supply: &[SupplySample<Id>],
) -> Plan<Id> {
    let index: HashMap<&Id, usize> = contracts
        .iter()
        .enumerate()
        .map(|(k, c)| (&c.id, k))
        .collect();
    // Γ(j): the samples each contract is eligible for, and its total eligible supply.
    let mut gamma: Vec<Vec<usize>> = vec![Vec::new(); contracts.len()];
    let mut eligible_supply = vec![0.0; contracts.len()];
    for (i, s) in supply.iter().enumerate() {
        for id in &s.eligible {
            if let Some(&j) = index.get(id) {
                if gamma[j].last() != Some(&i) {
                    gamma[j].push(i);
                    eligible_supply[j] += s.weight.max(0.0);
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..contracts.len()).collect();
    // Stable on ties, so the plan is the same on every server.
    order.sort_by(|&a, &b| eligible_supply[a].total_cmp(&eligible_supply[b]));
    let mut remaining = vec![1.0f64; supply.len()];
    let mut rates = HashMap::with_capacity(contracts.len());
    let mut infeasible = Vec::new();
    for &j in &order {
        let demand = contracts[j].demand.max(0.0);
        let mut avail: Vec<(f64, f64)> = gamma[j]
            .iter()
            .map(|&i| (remaining[i], supply[i].weight.max(0.0)))
            .filter(|&(r, s)| r > 0.0 && s > 0.0)
            .collect();
        let (alpha, feasible) = solve_alpha(&mut avail, demand);
        if !feasible {
            infeasible.push(contracts[j].id.clone());
        }
        for &i in &gamma[j] {
            remaining[i] -= remaining[i].min(alpha);
        }
        rates.insert(contracts[j].id.clone(), alpha);
    }
    let order: Vec<Id> = order.into_iter().map(|j| contracts[j].id.clone()).collect();
    let position = order
        .iter()
        .enumerate()
        .map(|(k, id)| (id.clone(), k))
        .collect();
    Plan {
        rates,
        order,
        infeasible,
        position,
    }
}

/// The smallest `α` with `Σ s·min(r, α) = demand` over `(r, s)` pairs, and whether it exists;
/// when it does not, `α` is the largest `r` (all that is left).
fn solve_alpha(avail: &mut [(f64, f64)], demand: f64) -> (f64, bool) {
    if demand <= 0.0 {
        return (0.0, true);
    }
    avail.sort_by(|a, b| a.0.total_cmp(&b.0));
    // For α between consecutive r's: f(α) = Σ_{r ≤ α} s·r + α · Σ_{r > α} s.
    let mut below = 0.0;
    let mut above: f64 = avail.iter().map(|&(_, s)| s).sum();
    let mut prev_r = 0.0;
    for &(r, s) in avail.iter() {
        // At α = r: f = below + r × above.
        if below + r * above >= demand {
            let alpha = (demand - below) / above;
            return (alpha.clamp(prev_r, r), true);
        }
        below += s * r;
        above -= s;
        prev_r = r;
    }
    (avail.last().map_or(0.0, |&(r, _)| r), false)
}

impl<Id: Clone + Eq + Hash> Plan<Id> {
    /// Which of `eligible` contracts serves a request, given a uniform draw `u` in [0, 1) (e.g.
    /// [`crate::draw`]): walking the plan order, each contract takes `min(α_j, what is left)` of
    /// the unit interval; `None` when `u` falls past them all (the request goes to the auction).
    pub fn serve(&self, eligible: &[Id], u: f64) -> Option<Id> {
        let mut ranked: Vec<(usize, &Id)> = eligible
            .iter()
            .filter_map(|id| self.position.get(id).map(|&k| (k, id)))
            .collect();
        ranked.sort_unstable_by_key(|&(k, _)| k);
        ranked.dedup_by_key(|&mut (k, _)| k);
        let mut taken = 0.0;
        for (_, id) in ranked {
            let rate = self.rates.get(id).copied().unwrap_or(0.0);
            taken += rate.min(1.0 - taken);
            if u < taken {
                return Some(id.clone());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(id: &'static str, demand: f64) -> Contract<&'static str> {
        Contract { id, demand }
    }

    fn s(eligible: &[&'static str], weight: f64) -> SupplySample<&'static str> {
        SupplySample {
            eligible: eligible.to_vec(),
            weight,
        }
    }

    /// Served impressions per contract, replaying every sample with a fine grid of draws.
    fn replay<Id: Clone + Eq + Hash>(
        plan: &Plan<Id>,
        supply: &[SupplySample<Id>],
    ) -> HashMap<Id, f64> {
        let grid = 2000;
        let mut served = HashMap::new();
        for sample in supply {
            for k in 0..grid {
                let u = (k as f64 + 0.5) / grid as f64;
                if let Some(id) = plan.serve(&sample.eligible, u) {
                    *served.entry(id).or_insert(0.0) += sample.weight / grid as f64;
                }
            }
        }
        served
    }

    /// The textbook picture: a narrow contract (sports, 100 impressions of supply) and a broad one
    /// (sports or news, 300). The narrow one allocates first, at 40/100; the broad one then needs
    /// 120 from 60 sports and 200 news: α solves 200α + 100 min(0.6, α) = 120 → α = 0.4.
    #[test]
    fn two_contracts_sharing_supply() {
        let supply = [s(&["sports", "broad"], 100.0), s(&["broad"], 200.0)];
        let plan = hwm_plan(&[c("broad", 120.0), c("sports", 40.0)], &supply);
        assert_eq!(plan.order, vec!["sports", "broad"]);
        assert!((plan.rates["sports"] - 0.4).abs() < 1e-12);
        assert!((plan.rates["broad"] - 0.4).abs() < 1e-12);
        assert!(plan.infeasible.is_empty());
        let served = replay(&plan, &supply);
        assert!((served["sports"] - 40.0).abs() < 0.1, "{served:?}");
        assert!((served["broad"] - 120.0).abs() < 0.1, "{served:?}");
        // A sports request: u < 0.4 → sports; 0.4 ≤ u < 0.8 → broad; else the auction.
        assert_eq!(plan.serve(&["broad", "sports"], 0.1), Some("sports"));
        assert_eq!(plan.serve(&["broad", "sports"], 0.5), Some("broad"));
        assert_eq!(plan.serve(&["broad", "sports"], 0.9), None);
        assert_eq!(plan.serve(&["unknown"], 0.0), None);
    }

    #[test]
    fn infeasible_demand_takes_all_that_is_left_and_is_flagged() {
        let supply = [s(&["a", "b"], 100.0), s(&["b"], 50.0)];
        let plan = hwm_plan(&[c("a", 80.0), c("b", 200.0), c("idle", 0.0)], &supply);
        assert_eq!(plan.infeasible, vec!["b"]);
        assert_eq!(plan.rates["idle"], 0.0);
        assert!((plan.rates["a"] - 0.8).abs() < 1e-12);
        assert_eq!(plan.rates["b"], 1.0);
        let served = replay(&plan, &supply);
        assert!((served["a"] - 80.0).abs() < 0.1, "{served:?}");
        assert!(
            (served["b"] - 70.0).abs() < 0.1,
            "all that is left: {served:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// On random instances, replaying the plan serves each feasible contract its demand and
        /// each contract exactly `Σ_i s_i x_ij`, never more than the supply.
        #[test]
        fn served_shares_match_the_plan(
            demands in prop::collection::vec(0.0f64..400.0, 1..6),
            samples in prop::collection::vec((prop::collection::vec(0usize..6, 1..4), 1.0f64..200.0), 1..10),
        ) {
            let contracts: Vec<Contract<usize>> = demands
                .iter()
                .enumerate()
                .map(|(id, &demand)| Contract { id, demand })
                .collect();
            let supply: Vec<SupplySample<usize>> = samples
                .into_iter()
                .map(|(eligible, weight)| SupplySample { eligible, weight })
                .collect();
            let plan = hwm_plan(&contracts, &supply);
            let served = replay(&plan, &supply);
            let total: f64 = supply.iter().map(|s| s.weight).sum();
            prop_assert!(served.values().sum::<f64>() <= total * (1.0 + 1e-9));
            for c in &contracts {
                let got = served.get(&c.id).copied().unwrap_or(0.0);
                if plan.infeasible.contains(&c.id) {
                    prop_assert!(got <= c.demand + 0.5, "{} got {} > {}", c.id, got, c.demand);
                } else {
                    // The draw grid resolves shares to 1/2000 of each sample.
                    let tol = supply.len() as f64 * 200.0 / 2000.0 + 1e-6;
                    prop_assert!((got - c.demand).abs() <= tol, "{} got {} want {}", c.id, got, c.demand);
                }
            }
        }
    }
}
