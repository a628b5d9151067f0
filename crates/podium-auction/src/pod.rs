//! Pod construction: choose, place, order and price the ads of each ad break, exactly.
//!
//! One break is an optimisation problem: pick at most one creative per candidate and a place for
//! it (a fixed slot, or the dynamic part bounded by `max_ads` / `max_duration_s`) so that every
//! duration rule, floor, dedupe key and first/last position holds, maximising the sum of the
//! candidates' values. [`solve_pod`] solves it exactly with a dynamic programme over the pod's
//! resources, and enforces dedupe keys the programme cannot see by branch and bound.
//! [`fill_breaks`] fills a request's breaks in playback order, a line item at most once.
//!
//! This module does not value candidates, check targeting, pacing or budgets: values and eCPMs
//! come in already computed, and candidates the caller must not serve never reach it.

use podium_core::{AdBreak, DedupeKey, DurationRule, Micros, SlotPosition};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A line item that may fill ads of a break, with what it is worth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCandidate {
    /// Position of the line item in the marketplace; each appears at most once per request.
    pub line_item: u32,
    /// Objective weight: the solver maximises the sum over placed ads; only positive values place.
    pub value: i64,
    /// Worth of one impression (CPM): floors are compared with it, second price derives from it.
    pub ecpm: Micros,
    /// Guaranteed line items pay their own eCPM (the contract rate), never an auction price.
    pub guaranteed: bool,
    /// The creatives that may play (shared: a line item's creatives are the same on every
    /// request, so callers build them once).
    pub creatives: std::sync::Arc<[PodCreative]>,
    /// Advertiser dedupe key (an id or hash chosen by the caller).
    pub advertiser: u64,
    /// Category dedupe key (an id or hash chosen by the caller).
    pub category: u64,
    /// Where in the pod the line item must play.
    pub position: SlotPosition,
}

/// A creative a candidate may play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodCreative {
    /// Position of the creative in the line item's creatives.
    pub index: u32,
    /// Length, seconds.
    pub duration_s: u32,
    /// Creative dedupe key (an id or hash chosen by the caller).
    pub key: u64,
}

/// How winners of a break are priced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuctionType {
    /// Uniform clearing price: the highest losing admissible eCPM, or the winner's floor.
    #[default]
    SecondPrice,
    /// Each winner pays its own eCPM.
    FirstPrice,
}

/// An ad placed in a break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodPlacement {
    /// Index of the candidate in the `candidates` slice.
    pub candidate: usize,
    /// The creative's [`PodCreative::index`].
    pub creative: u32,
    /// The creative's length, seconds.
    pub duration_s: u32,
    /// Index of the fixed slot it fills; `None` for the dynamic part of the pod.
    pub slot: Option<usize>,
    /// Clearing price, CPM.
    pub price_cpm: Micros,
}

/// One break to fill, with the floor every one of its ads must clear.
#[derive(Clone, Copy, Debug)]
pub struct BreakSpec<'a> {
    /// The break and its pod rules.
    pub brk: &'a AdBreak,
    /// The caller's reserve (static or dynamic), a floor for every ad of the break.
    pub reserve_cpm: Micros,
}

/// The filled pod of one break.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodOutcome {
    /// The ads in play order.
    pub placements: Vec<PodPlacement>,
    /// Whether the pod is proven optimal. `false` only when the search hit [`WORK_BUDGET`] (or
    /// the pod is too large to solve exactly); the placements then still obey every rule.
    pub exact: bool,
}

impl PodOutcome {
    /// Sum of the values of the placed candidates.
    pub fn value(&self, candidates: &[PodCandidate]) -> i64 {
        self.placements
            .iter()
            .map(|p| candidates[p.candidate].value)
            .fold(0, i64::saturating_add)
    }
}

/// Most dynamic-programme cell updates one break may spend, summed over branch and bound nodes.
/// A typical break spends a few thousand; this caps a pathological one at a few milliseconds.
pub const WORK_BUDGET: u64 = 1 << 22;

/// Solves one break exactly and prices its winners; placements in play order.
///
/// Candidates for which `allowed(index)` is false, or whose value is not positive, take no part
/// (not even as second-price competition). In a pod of two or more ads, a first-only line item
/// sits in the fixed first slot or takes the dynamic first place, and one ad at most holds the
/// first place (the first slot's ad or a dynamic first-only one); likewise last. A lone ad may
/// sit anywhere it is admissible. Play order: the first-place ad, the fixed slots of position
/// `Any` in slot order, the other dynamic ads by descending value (then line item), the
/// last-place ad. Equal-value alternatives resolve the same way on every run, whatever the order
/// of `candidates`.
pub fn solve_pod(
    brk: &AdBreak,
    reserve_cpm: Micros,
    candidates: &[PodCandidate],
    allowed: impl Fn(usize) -> bool,
    auction: AuctionType,
) -> PodOutcome {
    solve_within(brk, reserve_cpm, candidates, allowed, auction, WORK_BUDGET)
}

/// Fills `breaks` in playback order, each exactly, a line item at most once per request.
pub fn fill_breaks(
    breaks: &[BreakSpec<'_>],
    candidates: &[PodCandidate],
    auction: AuctionType,
) -> Vec<PodOutcome> {
    debug_assert!(
        {
            let mut ids: Vec<u32> = candidates.iter().map(|c| c.line_item).collect();
            ids.sort_unstable();
            ids.windows(2).all(|w| w[0] != w[1])
        },
        "a line item appears twice among the candidates"
    );
    let mut used: Vec<bool> = vec![false; candidates.len()];
    breaks
        .iter()
        .map(|b| {
            let out = solve_pod(b.brk, b.reserve_cpm, candidates, |c| !used[c], auction);
            for p in &out.placements {
                used[p.candidate] = true;
            }
            out
        })
        .collect()
}

fn solve_within(
    brk: &AdBreak,
    reserve_cpm: Micros,
    candidates: &[PodCandidate],
    allowed: impl Fn(usize) -> bool,
    auction: AuctionType,
    budget: u64,
) -> PodOutcome {
    let pod = Pod::build(brk, reserve_cpm, candidates, allowed);
    let (chosen, exact) = pod.search(budget);
    PodOutcome {
        placements: pod.finish(&chosen, auction),
        exact,
    }
}

/// The place an option takes: first and last are tokens, since only one ad can hold each.
const FIRST: u8 = 1;
const LAST: u8 = 2;
/// `Opt::class` of an ad in the dynamic part.
const DYNAMIC: u16 = u16::MAX;
/// Indices into `Opt::keys`.
const ADVERTISER: usize = 0;
const CATEGORY: usize = 1;
const CREATIVE: usize = 2;

/// One way to place a candidate: a creative in the dynamic part or in a class of fixed slots.
#[derive(Clone, Copy, Debug)]
struct Opt {
    cand: u32,
    /// Index into the candidate's `creatives`.
    creative: u32,
    duration_s: u32,
    class: u16,
    tokens: u8,
    /// Options of one bucket are interchangeable for the pod's resources (pruning relies on it).
    bucket: u16,
    value: i64,
    line_item: u32,
    /// Dedupe group: at most one option per group (the coarsest candidate-level key).
    group: u32,
    keys: [u64; 3],
}

/// Fixed slots with the same rules: which of them holds which ad does not matter.
struct SlotClass<'a> {
    durations: &'a DurationRule,
    floor: Option<Micros>,
    position: SlotPosition,
    slots: Vec<usize>,
}

struct Pod<'a> {
    brk: &'a AdBreak,
    reserve: Micros,
    cands: &'a [PodCandidate],
    classes: Vec<SlotClass<'a>>,
    /// DP options, sorted best first (value, then line item, creative, place): the total order
    /// every tie is broken by.
    opts: Vec<Opt>,
    /// Dedupe keys that cut across groups, enforced by branching.
    cross: Vec<usize>,
    /// Per bucket, this many better pairwise-distinct options make any worse one useless.
    threshold: usize,
    /// Buckets are numbered `0..n_buckets`.
    n_buckets: usize,
    /// Seconds per dynamic-duration unit (gcd of the dynamic durations) and the unit count.
    unit_s: u32,
    units: usize,
    /// Dynamic ads + 1 (1 when no ad can go dynamic).
    ads: usize,
    /// Best single ad, including places only a lone ad may take (a first-only line item in a
    /// last slot is both first and last when alone).
    alone: Option<Opt>,
    /// Candidates with any admissible place: second-price competition.
    admissible: Vec<bool>,
}

/// Value of a state no choice of options reaches.
const NONE: i64 = i64::MIN;

/// Buffers of the dynamic programme, reused by every node of a search.
#[derive(Default)]
struct Scratch {
    /// Best value per state before and after the current group.
    old: Vec<i64>,
    new: Vec<i64>,
    /// One bit per state of `old` / `new`: set exactly where the value is not `NONE`, so the
    /// scan visits reachable states only (a small share of them in practice).
    old_live: Vec<u64>,
    new_live: Vec<u64>,
    /// Per group and state, 1 + the member that last improved the state (0: none).
    choice: Vec<u16>,
}

thread_local! {
    /// Reused by every pod a thread solves: allocating and clearing the tables anew costs more
    /// than the programme itself on typical pods. Taken out while in use, so never shared.
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

/// A solution of the relaxed programme of one node.
struct Relaxed {
    value: i64,
    chosen: Vec<usize>,
    work: u64,
}

impl<'a> Pod<'a> {
    fn build(
        brk: &'a AdBreak,
        reserve: Micros,
        cands: &'a [PodCandidate],
        allowed: impl Fn(usize) -> bool,
    ) -> Self {
        let rules = &brk.rules;
        let mut classes: Vec<SlotClass<'a>> = Vec::new();
        for (j, s) in rules.slots.iter().enumerate() {
            match classes.iter_mut().find(|c| {
                *c.durations == s.durations && c.floor == s.floor_cpm && c.position == s.position
            }) {
                Some(c) => c.slots.push(j),
                None => classes.push(SlotClass {
                    durations: &s.durations,
                    floor: s.floor_cpm,
                    position: s.position,
                    slots: vec![j],
                }),
            }
        }
        // Built in this order, the options come out sorted in the order ties are broken by (line
        // items are distinct, so the order is total). Keys sorted in place: no lookups per compare.
        let mut by_value: Vec<(Reverse<i64>, u32, u32)> = (0..cands.len())
            .filter(|&c| cands[c].value > 0 && allowed(c))
            .map(|c| (Reverse(cands[c].value), cands[c].line_item, c as u32))
            .collect();
        by_value.sort_unstable();
        let usable: Vec<usize> = by_value.iter().map(|&(_, _, c)| c as usize).collect();

        // Group by the candidate-level key with the fewest values: the programme enforces it for
        // free, and the fewer keys left to branch on, the fewer nodes.
        let on = |k| rules.dedupe.contains(&k);
        let distinct = |key: fn(&PodCandidate) -> u64| {
            let mut v: Vec<u64> = usable.iter().map(|&c| key(&cands[c])).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let adv_vals = on(DedupeKey::Advertiser).then(|| distinct(|c| c.advertiser));
        let cat_vals = on(DedupeKey::Category).then(|| distinct(|c| c.category));
        let (group_key, group_vals) = match (adv_vals, cat_vals) {
            (Some(a), Some(c)) if a.len() < c.len() => (Some(ADVERTISER), a),
            (_, Some(c)) => (Some(CATEGORY), c),
            (Some(a), None) => (Some(ADVERTISER), a),
            // One group per line item, numbered in line item order so that ties never depend on
            // the order of the candidates slice.
            (None, None) => (None, distinct(|c| u64::from(c.line_item))),
        };
        let mut cross = Vec::new();
        for (k, key) in [
            (ADVERTISER, DedupeKey::Advertiser),
            (CATEGORY, DedupeKey::Category),
            (CREATIVE, DedupeKey::Creative),
        ] {
            if on(key) && group_key != Some(k) {
                cross.push(k);
            }
        }

        let floor_for = |d: u32| {
            let per_s = rules
                .floor_cpm_per_s
                .map_or(Micros::ZERO, |p| Micros(p.0.saturating_mul(i64::from(d))));
            reserve
                .max(rules.floor_cpm.unwrap_or(Micros::ZERO))
                .max(per_s)
        };
        let creatives: usize = usable.iter().map(|&c| cands[c].creatives.len()).sum();
        let mut opts = Vec::with_capacity(creatives * (classes.len() + 1));
        let creative_cross = cross.contains(&CREATIVE);
        let mut alone: Option<Opt> = None;
        let mut admissible = vec![false; cands.len()];
        for &c in &usable {
            let cand = &cands[c];
            let first_opt = opts.len();
            let group_of = match group_key {
                Some(ADVERTISER) => cand.advertiser,
                Some(_) => cand.category,
                None => u64::from(cand.line_item),
            };
            let group = group_vals.binary_search(&group_of).unwrap_or(0) as u32;
            for (ci, cr) in cand.creatives.iter().enumerate() {
                let d = cr.duration_s;
                let floor = floor_for(d);
                let dynamic = (brk.max_ads > 0
                    && d <= brk.max_duration_s
                    && rules.ad_durations.admits(d)
                    && cand.ecpm >= floor)
                    .then_some((DYNAMIC, token(cand.position), true));
                let fixed = classes.iter().enumerate().filter_map(|(k, cl)| {
                    let ok =
                        cl.durations.admits(d) && cand.ecpm >= floor.max(cl.floor.unwrap_or(floor));
                    let tokens = token(cl.position);
                    // In a pod of two or more, a first-only line item plays first only from the
                    // first place; alone, it is first wherever it is.
                    let in_pods =
                        cand.position == SlotPosition::Any || token(cand.position) == tokens;
                    ok.then_some((k as u16, tokens, in_pods))
                });
                for (class, tokens, in_pods) in fixed.chain(dynamic) {
                    admissible[c] = true;
                    let opt = Opt {
                        cand: c as u32,
                        creative: ci as u32,
                        duration_s: d,
                        class,
                        tokens,
                        bucket: 0,
                        value: cand.value,
                        line_item: cand.line_item,
                        group,
                        keys: [cand.advertiser, cand.category, cr.key],
                    };
                    if alone.is_none_or(|a| better(&opt, &a)) {
                        alone = Some(opt);
                    }
                    // Fixed-slot ads use no seconds, so only the creative key tells two creatives
                    // of one candidate in one place apart; keep the first.
                    let same = |o: &Opt| {
                        o.class == class
                            && o.tokens == tokens
                            && (class != DYNAMIC || o.duration_s == d)
                            && (!creative_cross || o.keys[CREATIVE] == cr.key)
                    };
                    if in_pods && !opts[first_opt..].iter().any(same) {
                        opts.push(opt);
                    }
                }
            }
        }
        debug_assert!(opts.windows(2).all(|w| better(&w[0], &w[1])));
        // (class, tokens, seconds of a dynamic ad) packed in one word: a cheap linear lookup.
        let mut buckets: Vec<u64> = Vec::new();
        for o in &mut opts {
            let seconds = if o.class == DYNAMIC { o.duration_s } else { 0 };
            let b = u64::from(o.class) << 40 | u64::from(o.tokens) << 32 | u64::from(seconds);
            o.bucket = match buckets.iter().position(|&x| x == b) {
                Some(i) => i as u16,
                None => {
                    buckets.push(b);
                    (buckets.len() - 1) as u16
                }
            };
        }

        let n_buckets = buckets.len();

        let dynamic = || {
            opts.iter()
                .filter(|o| o.class == DYNAMIC)
                .map(|o| o.duration_s)
        };
        let (unit_s, units, ads) = if dynamic().next().is_none() {
            (1, 1, 1)
        } else {
            // Once 1, the gcd stays 1.
            let mut g = 0;
            for d in dynamic() {
                g = gcd(g, d);
                if g == 1 {
                    break;
                }
            }
            let g = g.max(1);
            let longest = dynamic().max().unwrap_or(0);
            let reach = brk.max_duration_s.min(longest.saturating_mul(brk.max_ads));
            (g, (reach / g) as usize + 1, brk.max_ads as usize + 1)
        };
        let most_ads = (ads - 1) + rules.slots.len();
        let threshold = (1 + cross.len()) * most_ads.saturating_sub(1) + 1;
        Pod {
            brk,
            reserve,
            cands,
            classes,
            opts,
            cross,
            threshold,
            n_buckets,
            unit_s,
            units,
            ads,
            alone,
            admissible,
        }
    }

    /// Branch and bound over the cross-cutting dedupe keys. Returns the chosen options and
    /// whether they are proven optimal.
    fn search(&self, budget: u64) -> (Vec<Opt>, bool) {
        let mut best: Vec<Opt> = self.alone.into_iter().collect();
        let mut best_value = total(&best);
        let words = self.opts.len().div_ceil(64);
        let mut nodes: Vec<Vec<u64>> = vec![vec![0; words]];
        // Best bound first; ties in creation order, so the search is deterministic.
        let mut heap = BinaryHeap::from([(i64::MAX, Reverse(0usize))]);
        let mut spent = 0u64;
        let mut exact = true;
        let mut scratch = SCRATCH.take();
        while let Some((bound, Reverse(id))) = heap.pop() {
            if bound <= best_value {
                break;
            }
            if spent >= budget {
                exact = false;
                break;
            }
            let banned = std::mem::take(&mut nodes[id]);
            let Some(relaxed) = self.relax(&banned, budget - spent, &mut scratch) else {
                // Too large to solve exactly: at the root take a greedy pod, else keep the best.
                exact = false;
                if id == 0 {
                    let greedy = self.greedy();
                    if total(&greedy) > best_value {
                        best = greedy;
                    }
                }
                break;
            };
            spent += relaxed.work;
            if relaxed.value <= best_value {
                continue;
            }
            let Some((a, b, key)) = self.conflict(&relaxed.chosen) else {
                best = relaxed.chosen.iter().map(|&i| self.opts[i]).collect();
                best_value = relaxed.value;
                continue;
            };
            // Dropping the worse ad of each clash keeps every other rule, so the repaired pod
            // is a feasible incumbent.
            let repaired = self.repair(&relaxed.chosen);
            if total(&repaired) > best_value {
                best_value = total(&repaired);
                best = repaired;
            }
            if relaxed.value <= best_value {
                continue;
            }
            // A feasible pod keeps the clashing key value on at most one of the two: ban it from
            // one, then from the other.
            for o in [a, b] {
                let mut child = banned.clone();
                let (cand, v) = (self.opts[o].cand, self.opts[o].keys[key]);
                for (i, p) in self.opts.iter().enumerate() {
                    if p.cand == cand && p.keys[key] == v {
                        child[i / 64] |= 1 << (i % 64);
                    }
                }
                nodes.push(child);
                heap.push((relaxed.value, Reverse(nodes.len() - 1)));
            }
        }
        // Kept for the next pod of this thread, unless a pathological pod made it large.
        if scratch.choice.capacity() <= 1 << 20 {
            SCRATCH.set(scratch);
        }
        (best, exact)
    }

    /// Solves the programme that enforces everything but the cross-cutting dedupe keys, over
    /// the options not banned. `None` when it would cost more than `budget` updates.
    fn relax(&self, banned: &[u64], budget: u64, scratch: &mut Scratch) -> Option<Relaxed> {
        let kept = self.prune(banned);
        let has_first = kept.iter().any(|&i| self.opts[i].tokens & FIRST != 0);
        let has_last = kept.iter().any(|&i| self.opts[i].tokens & LAST != 0);
        let compact = |t: u8| {
            let mut c = 0usize;
            if t & FIRST != 0 {
                c |= 1;
            }
            if t & LAST != 0 {
                c |= if has_first { 2 } else { 1 };
            }
            c
        };
        let tok_n = 1usize << (usize::from(has_first) + usize::from(has_last));
        let (units, ads) = (self.units, self.ads);
        let block = units * ads;
        // Only slots of position Any need a fill count: a first or last slot is full exactly
        // when its token is taken (by it, or by a dynamic ad that must play there).
        let mut strides = Vec::with_capacity(self.classes.len());
        let mut slot_n = 1usize;
        for cl in &self.classes {
            if cl.position == SlotPosition::Any {
                strides.push(Some(slot_n));
                slot_n = slot_n.checked_mul(cl.slots.len() + 1)?;
            } else {
                strides.push(None);
            }
        }
        let states = slot_n.checked_mul(tok_n)?.checked_mul(block)?;
        let work = (states as u64).saturating_mul(kept.len() as u64 + 1);
        if work > budget {
            return None;
        }

        // Best first within a group: `kept` is in option order, so sorting (group, option) pairs
        // is the stable sort by group.
        let mut pairs: Vec<u64> = kept
            .iter()
            .map(|&i| u64::from(self.opts[i].group) << 32 | i as u64)
            .collect();
        pairs.sort_unstable();
        let groups: Vec<usize> = pairs.iter().map(|&p| (p & 0xffff_ffff) as usize).collect();
        let same_group = |&a: &usize, &b: &usize| self.opts[a].group == self.opts[b].group;
        // Choices are recorded as u16 marks.
        if groups
            .chunk_by(same_group)
            .any(|m| m.len() >= usize::from(u16::MAX))
        {
            return None;
        }
        let n_groups = groups.chunk_by(same_group).count();
        let Scratch {
            old,
            new,
            old_live,
            new_live,
            choice,
        } = scratch;
        for v in [&mut *old, &mut *new] {
            v.clear();
            v.resize(states, NONE);
        }
        old[0] = 0;
        let words = states.div_ceil(64);
        for v in [&mut *old_live, &mut *new_live] {
            v.clear();
            v.resize(words, 0);
        }
        old_live[0] = 1;
        choice.resize(n_groups * states, 0);
        // Every state from `reach` on is unreached (`NONE`), in `old` and in `new` alike (the
        // states `new` reached a group earlier, `old` reaches too): copies stop there.
        let mut reach = 1;
        for (g, members) in groups.chunk_by(same_group).enumerate() {
            new[..reach].copy_from_slice(&old[..reach]);
            let live_words = reach.div_ceil(64);
            new_live[..live_words].copy_from_slice(&old_live[..live_words]);
            let mut new_reach = reach;
            // A mark is read back only where the state is reached; one this group does not
            // improve was reached before it, below `reach`: clearing there hides stale marks.
            let choice = &mut choice[g * states..(g + 1) * states];
            choice[..reach].fill(0);
            for (k, &i) in members.iter().enumerate() {
                let o = &self.opts[i];
                let tok = compact(o.tokens);
                let (da, du) = if o.class == DYNAMIC {
                    (1, (o.duration_s / self.unit_s) as usize)
                } else {
                    (0, 0)
                };
                if du >= units {
                    continue;
                }
                let class = (o.class != DYNAMIC)
                    .then(|| {
                        strides[o.class as usize]
                            .map(|s| (s, self.classes[o.class as usize].slots.len()))
                    })
                    .flatten();
                let delta =
                    class.map_or(0, |(s, _)| s * tok_n * block) + tok * block + da * units + du;
                let mark = (k + 1) as u16;
                let mut update = |src: usize| {
                    let v = old[src].saturating_add(o.value);
                    let dst = src + delta;
                    if v > new[dst] {
                        new[dst] = v;
                        choice[dst] = mark;
                        new_live[dst / 64] |= 1 << (dst % 64);
                        new_reach = new_reach.max(dst + 1);
                    }
                };
                for slot in 0..slot_n {
                    if class.is_some_and(|(s, n)| (slot / s) % (n + 1) >= n) {
                        continue;
                    }
                    for t in (0..tok_n).filter(|t| t & tok == 0) {
                        let base = (slot * tok_n + t) * block;
                        if du == 0 {
                            // Every row of the block is a source: one run.
                            let end = base + (ads - da) * units;
                            for_each_live(old_live, base, end, &mut update);
                        } else {
                            for a in 0..ads - da {
                                let row = base + a * units;
                                for_each_live(old_live, row, row + units - du, &mut update);
                            }
                        }
                    }
                }
            }
            std::mem::swap(old, new);
            std::mem::swap(old_live, new_live);
            reach = new_reach;
        }

        let mut at = 0;
        for (s, &v) in old[..reach].iter().enumerate() {
            if v > old[at] {
                at = s;
            }
        }
        let value = old[at];
        let mut chosen = Vec::new();
        let starts: Vec<usize> = groups
            .chunk_by(|&a, &b| self.opts[a].group == self.opts[b].group)
            .scan(0, |start, m| {
                let s = *start;
                *start += m.len();
                Some(s)
            })
            .collect();
        for g in (0..n_groups).rev() {
            let mark = choice[g * states + at] as usize;
            if mark == 0 {
                continue;
            }
            let i = groups[starts[g] + mark - 1];
            let o = &self.opts[i];
            let tok = compact(o.tokens);
            let mut delta = tok * block;
            if o.class == DYNAMIC {
                delta += units + (o.duration_s / self.unit_s) as usize;
            } else {
                delta += strides[o.class as usize].map_or(0, |s| s * tok_n * block);
            }
            at -= delta;
            chosen.push(i);
        }
        chosen.sort_unstable();
        Some(Relaxed {
            value,
            chosen,
            work,
        })
    }

    /// Options (indices, best first) that can be part of an optimal pod of this node: in each
    /// bucket, an option with `threshold` better options pairwise distinct in every dedupe key
    /// can always be swapped for one of them that clashes with none of the pod's other ads.
    fn prune(&self, banned: &[u64]) -> Vec<usize> {
        // Bucket b's witnesses: `witnesses[b * cap..][..count[b]]` (never more than the options).
        let cap = self.threshold.min(self.opts.len());
        let mut witnesses = vec![0usize; self.n_buckets * cap];
        let mut count = vec![0usize; self.n_buckets];
        let mut kept = Vec::new();
        for (i, o) in self.opts.iter().enumerate() {
            if banned[i / 64] >> (i % 64) & 1 == 1 {
                continue;
            }
            let b = o.bucket as usize;
            if count[b] >= self.threshold {
                continue;
            }
            let w = &witnesses[b * cap..][..count[b]];
            let same_group = w.iter().any(|&j| self.opts[j].group == o.group);
            if same_group && self.cross.is_empty() {
                // A better option of the same group and bucket does everything this one does
                // when no other key tells them apart.
                continue;
            }
            kept.push(i);
            let distinct = !same_group
                && w.iter().all(|&j| {
                    self.cross
                        .iter()
                        .all(|&k| self.opts[j].keys[k] != o.keys[k])
                });
            if distinct {
                witnesses[b * cap + count[b]] = i;
                count[b] += 1;
            }
        }
        kept
    }

    /// The first pair of chosen options sharing a cross-cutting key value.
    fn conflict(&self, chosen: &[usize]) -> Option<(usize, usize, usize)> {
        for &k in &self.cross {
            for (x, &a) in chosen.iter().enumerate() {
                for &b in &chosen[x + 1..] {
                    if self.opts[a].keys[k] == self.opts[b].keys[k] {
                        return Some((a, b, k));
                    }
                }
            }
        }
        None
    }

    /// The chosen options, best first, without any that clash with a better one.
    fn repair(&self, chosen: &[usize]) -> Vec<Opt> {
        let mut out: Vec<Opt> = Vec::new();
        for &i in chosen {
            let o = self.opts[i];
            if !out
                .iter()
                .any(|p| self.cross.iter().any(|&k| p.keys[k] == o.keys[k]))
            {
                out.push(o);
            }
        }
        out
    }

    /// Best first, each option that still fits: the fallback when a pod is too large to solve.
    fn greedy(&self) -> Vec<Opt> {
        let mut out: Vec<Opt> = Vec::new();
        let (mut ads, mut seconds, mut tokens) = (0u32, 0u32, 0u8);
        let mut filled = vec![0usize; self.classes.len()];
        for o in &self.opts {
            let clash = out.iter().any(|p| {
                p.cand == o.cand
                    || p.group == o.group
                    || self.cross.iter().any(|&k| p.keys[k] == o.keys[k])
            });
            if clash || tokens & o.tokens != 0 {
                continue;
            }
            if o.class == DYNAMIC {
                if ads >= self.brk.max_ads || seconds + o.duration_s > self.brk.max_duration_s {
                    continue;
                }
                ads += 1;
                seconds += o.duration_s;
            } else {
                let c = o.class as usize;
                if filled[c] >= self.classes[c].slots.len() {
                    continue;
                }
                filled[c] += 1;
            }
            tokens |= o.tokens;
            out.push(*o);
        }
        out
    }

    /// Assigns fixed slots, orders the ads for play and prices them.
    fn finish(&self, chosen: &[Opt], auction: AuctionType) -> Vec<PodPlacement> {
        let mut ads: Vec<(Opt, Option<usize>)> = chosen.iter().map(|&o| (o, None)).collect();
        ads.sort_by(|a, b| {
            b.0.value
                .cmp(&a.0.value)
                .then(a.0.line_item.cmp(&b.0.line_item))
        });
        let mut filled = vec![0usize; self.classes.len()];
        for (o, slot) in &mut ads {
            if o.class != DYNAMIC {
                let c = o.class as usize;
                *slot = Some(self.classes[c].slots[filled[c]]);
                filled[c] += 1;
            }
        }
        // A lone ad is first and last at once, wherever it sits.
        let several = ads.len() > 1;
        let rank = |(o, slot): &(Opt, Option<usize>)| -> (u8, usize) {
            if several && o.tokens & FIRST != 0 {
                (0, 0)
            } else if several && o.tokens & LAST != 0 {
                (3, 0)
            } else if let Some(j) = slot {
                (1, *j)
            } else {
                (2, 0)
            }
        };
        // Stable: dynamic ads keep their value order.
        ads.sort_by_key(rank);

        let clearing = self
            .admissible
            .iter()
            .enumerate()
            .filter(|&(c, &ok)| ok && !chosen.iter().any(|o| o.cand as usize == c))
            .map(|(c, _)| self.cands[c].ecpm)
            .max()
            .unwrap_or(Micros::ZERO);
        let rules = &self.brk.rules;
        ads.iter()
            .map(|&(o, slot)| {
                let cand = &self.cands[o.cand as usize];
                let price_cpm = if cand.guaranteed || auction == AuctionType::FirstPrice {
                    cand.ecpm
                } else {
                    let per_s = rules.floor_cpm_per_s.map_or(Micros::ZERO, |p| {
                        Micros(p.0.saturating_mul(i64::from(o.duration_s)))
                    });
                    let slot_floor = slot
                        .and_then(|j| rules.slots[j].floor_cpm)
                        .unwrap_or(Micros::ZERO);
                    let floor = self
                        .reserve
                        .max(rules.floor_cpm.unwrap_or(Micros::ZERO))
                        .max(per_s)
                        .max(slot_floor);
                    floor.max(clearing).min(cand.ecpm)
                };
                PodPlacement {
                    candidate: o.cand as usize,
                    creative: cand.creatives[o.creative as usize].index,
                    duration_s: o.duration_s,
                    slot,
                    price_cpm,
                }
            })
            .collect()
    }
}

/// The total order ties are broken by: value, then line item, creative, place.
fn order(o: &Opt) -> (Reverse<i64>, u32, u32, u16, u8) {
    (Reverse(o.value), o.line_item, o.creative, o.class, o.tokens)
}

fn better(a: &Opt, b: &Opt) -> bool {
    order(a) < order(b)
}

/// The place token a position takes.
fn token(p: SlotPosition) -> u8 {
    match p {
        SlotPosition::Any => 0,
        SlotPosition::First => FIRST,
        SlotPosition::Last => LAST,
    }
}

fn total(opts: &[Opt]) -> i64 {
    opts.iter().map(|o| o.value).fold(0, i64::saturating_add)
}

/// Calls `f` with every set bit of `live` in `start..end`, in increasing order.
#[inline(always)]
fn for_each_live(live: &[u64], start: usize, end: usize, mut f: impl FnMut(usize)) {
    if start >= end {
        return;
    }
    let (first, last) = (start / 64, (end - 1) / 64);
    for (w, &word) in live.iter().enumerate().take(last + 1).skip(first) {
        let mut bits = word;
        if w == first {
            bits &= !0 << (start % 64);
        }
        if w == last {
            bits &= !0 >> (63 - (end - 1) % 64);
        }
        while bits != 0 {
            f(w * 64 + bits.trailing_zeros() as usize);
            bits &= bits - 1;
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podium_core::{BreakPosition, PodRules, PodSlot};
    use proptest::prelude::*;

    const M: i64 = 1_000_000;

    fn cand(line_item: u32, value: i64, ecpm: i64, creatives: &[(u32, u64)]) -> PodCandidate {
        PodCandidate {
            line_item,
            value,
            ecpm: Micros(ecpm * M),
            guaranteed: false,
            creatives: creatives
                .iter()
                .enumerate()
                .map(|(i, &(duration_s, key))| PodCreative {
                    index: i as u32,
                    duration_s,
                    key,
                })
                .collect(),
            advertiser: u64::from(line_item),
            category: u64::from(line_item),
            position: SlotPosition::Any,
        }
    }

    fn brk(max_ads: u32, max_duration_s: u32, rules: PodRules) -> AdBreak {
        AdBreak {
            id: "b".into(),
            position: BreakPosition::Midroll,
            max_ads,
            max_duration_s,
            rules,
        }
    }

    fn slot(
        id: &str,
        durations: DurationRule,
        floor: Option<i64>,
        position: SlotPosition,
    ) -> PodSlot {
        PodSlot {
            id: id.into(),
            durations,
            floor_cpm: floor.map(|f| Micros(f * M)),
            position,
        }
    }

    fn exact(ds: &[u32]) -> DurationRule {
        DurationRule {
            exact_s: ds.to_vec(),
            ..Default::default()
        }
    }

    fn solve(b: &AdBreak, reserve: i64, cands: &[PodCandidate]) -> PodOutcome {
        solve_pod(
            b,
            Micros(reserve * M),
            cands,
            |_| true,
            AuctionType::SecondPrice,
        )
    }

    fn placed(out: &PodOutcome, cands: &[PodCandidate]) -> Vec<(u32, Option<usize>)> {
        out.placements
            .iter()
            .map(|p| (cands[p.candidate].line_item, p.slot))
            .collect()
    }

    /// The floor an ad of `d` seconds in `slot` must clear.
    fn floor_of(b: &AdBreak, reserve: Micros, d: u32, slot: Option<usize>) -> Micros {
        let r = &b.rules;
        let mut f = reserve.max(r.floor_cpm.unwrap_or(Micros::ZERO));
        if let Some(p) = r.floor_cpm_per_s {
            f = f.max(Micros(p.0 * i64::from(d)));
        }
        if let Some(j) = slot {
            f = f.max(r.slots[j].floor_cpm.unwrap_or(Micros::ZERO));
        }
        f
    }

    /// Whether creative `k` of `c` may play in `slot` (`None`: the dynamic part), positions aside.
    fn admissible(
        b: &AdBreak,
        reserve: Micros,
        c: &PodCandidate,
        k: usize,
        slot: Option<usize>,
    ) -> bool {
        let d = c.creatives[k].duration_s;
        let fits = match slot {
            None => b.max_ads > 0 && d <= b.max_duration_s && b.rules.ad_durations.admits(d),
            Some(j) => b.rules.slots[j].durations.admits(d),
        };
        fits && c.ecpm >= floor_of(b, reserve, d, slot)
    }

    fn key_of(c: &PodCandidate, k: usize, key: DedupeKey) -> u64 {
        match key {
            DedupeKey::Creative => c.creatives[k].key,
            DedupeKey::Advertiser => c.advertiser,
            DedupeKey::Category => c.category,
        }
    }

    /// The position rule of a pod of two or more ads: a first-only line item sits in the first
    /// slot or takes the dynamic first place, one ad at most takes the first place (likewise last).
    fn positions_hold(
        b: &AdBreak,
        cands: &[PodCandidate],
        ads: &[(usize, usize, Option<usize>)],
    ) -> bool {
        if ads.len() <= 1 {
            return true;
        }
        for want in [SlotPosition::First, SlotPosition::Last] {
            let mut holders = 0;
            for &(c, _, slot) in ads {
                let slot_pos = slot.map(|j| b.rules.slots[j].position);
                if cands[c].position == want && slot_pos.is_some_and(|p| p != want) {
                    return false;
                }
                if slot_pos == Some(want) || (slot.is_none() && cands[c].position == want) {
                    holders += 1;
                }
            }
            if holders > 1 {
                return false;
            }
        }
        true
    }

    /// Every rule of the break on the returned pod, and the prices. `Err` names the broken one.
    fn check(
        b: &AdBreak,
        reserve: Micros,
        cands: &[PodCandidate],
        allowed: &[bool],
        auction: AuctionType,
        out: &PodOutcome,
    ) -> Result<(), String> {
        let ps = &out.placements;
        let mut ads = Vec::new();
        let (mut dyn_ads, mut dyn_s) = (0, 0);
        for p in ps {
            let c = &cands[p.candidate];
            if !allowed[p.candidate] || c.value <= 0 {
                return Err(format!("candidate {} may not place", p.candidate));
            }
            let k = c
                .creatives
                .iter()
                .position(|cr| cr.index == p.creative && cr.duration_s == p.duration_s)
                .ok_or("unknown creative")?;
            if !admissible(b, reserve, c, k, p.slot) {
                return Err(format!("{p:?} is not admissible"));
            }
            if p.slot.is_none() {
                dyn_ads += 1;
                dyn_s += p.duration_s;
            }
            ads.push((p.candidate, k, p.slot));
        }
        if dyn_ads > b.max_ads || dyn_s > b.max_duration_s {
            return Err(format!("dynamic part holds {dyn_ads} ads, {dyn_s} s"));
        }
        for (x, a) in ads.iter().enumerate() {
            for y in &ads[x + 1..] {
                if a.0 == y.0 {
                    return Err("a candidate placed twice".into());
                }
                if a.2.is_some() && a.2 == y.2 {
                    return Err("a fixed slot filled twice".into());
                }
                for &key in &b.rules.dedupe {
                    if key_of(&cands[a.0], a.1, key) == key_of(&cands[y.0], y.1, key) {
                        return Err(format!("two ads share {key:?}"));
                    }
                }
            }
        }
        if !positions_hold(b, cands, &ads) {
            return Err("position rule broken".into());
        }
        let n = ps.len();
        for (i, p) in ps.iter().enumerate() {
            let slot_pos = p.slot.map(|j| b.rules.slots[j].position);
            let pos = cands[p.candidate].position;
            if (pos == SlotPosition::First || slot_pos == Some(SlotPosition::First)) && i != 0 {
                return Err(format!("first-only ad plays at {i}"));
            }
            if (pos == SlotPosition::Last || slot_pos == Some(SlotPosition::Last)) && i + 1 != n {
                return Err(format!("last-only ad plays at {i} of {n}"));
            }
        }
        let any_slots: Vec<usize> = ps
            .iter()
            .filter_map(|p| {
                p.slot
                    .filter(|&j| b.rules.slots[j].position == SlotPosition::Any)
            })
            .collect();
        if any_slots.windows(2).any(|w| w[0] > w[1]) {
            return Err("fixed slots out of order".into());
        }
        let clearing = (0..cands.len())
            .filter(|&c| allowed[c] && cands[c].value > 0 && !ps.iter().any(|p| p.candidate == c))
            .filter(|&c| {
                (0..cands[c].creatives.len()).any(|k| {
                    admissible(b, reserve, &cands[c], k, None)
                        || (0..b.rules.slots.len())
                            .any(|j| admissible(b, reserve, &cands[c], k, Some(j)))
                })
            })
            .map(|c| cands[c].ecpm)
            .max()
            .unwrap_or(Micros::ZERO);
        for p in ps {
            let c = &cands[p.candidate];
            let floor = floor_of(b, reserve, p.duration_s, p.slot);
            let want = if c.guaranteed || auction == AuctionType::FirstPrice {
                c.ecpm
            } else {
                floor.max(clearing).min(c.ecpm)
            };
            if p.price_cpm != want || p.price_cpm > c.ecpm || p.price_cpm < floor {
                return Err(format!("{p:?} priced {:?}, want {want:?}", p.price_cpm));
            }
        }
        Ok(())
    }

    /// The best total value over every feasible pod, by enumeration.
    fn brute(b: &AdBreak, reserve: Micros, cands: &[PodCandidate], allowed: &[bool]) -> i64 {
        fn go(
            b: &AdBreak,
            reserve: Micros,
            cands: &[PodCandidate],
            allowed: &[bool],
            c: usize,
            ads: &mut Vec<(usize, usize, Option<usize>)>,
        ) -> i64 {
            if c == cands.len() {
                if !positions_hold(b, cands, ads) {
                    return i64::MIN;
                }
                return ads.iter().map(|a| cands[a.0].value).sum();
            }
            let mut best = go(b, reserve, cands, allowed, c + 1, ads);
            if !allowed[c] || cands[c].value <= 0 {
                return best;
            }
            let places: Vec<Option<usize>> = std::iter::once(None)
                .chain((0..b.rules.slots.len()).map(Some))
                .collect();
            for k in 0..cands[c].creatives.len() {
                for &slot in &places {
                    if !admissible(b, reserve, &cands[c], k, slot) {
                        continue;
                    }
                    let taken = match slot {
                        Some(_) => ads.iter().any(|a| a.2 == slot),
                        None => {
                            let dynamic: Vec<_> = ads.iter().filter(|a| a.2.is_none()).collect();
                            let secs: u32 = dynamic
                                .iter()
                                .map(|a| cands[a.0].creatives[a.1].duration_s)
                                .sum();
                            dynamic.len() as u32 >= b.max_ads
                                || secs + cands[c].creatives[k].duration_s > b.max_duration_s
                        }
                    };
                    let clash = ads.iter().any(|a| {
                        b.rules
                            .dedupe
                            .iter()
                            .any(|&key| key_of(&cands[a.0], a.1, key) == key_of(&cands[c], k, key))
                    });
                    if taken || clash {
                        continue;
                    }
                    ads.push((c, k, slot));
                    best = best.max(go(b, reserve, cands, allowed, c + 1, ads));
                    ads.pop();
                }
            }
            best
        }
        go(b, reserve, cands, allowed, 0, &mut Vec::new())
    }

    #[test]
    fn structured_pod_fills_each_slot_with_what_it_admits() {
        let rules = PodRules {
            slots: vec![
                slot("s0", exact(&[30]), None, SlotPosition::Any),
                slot("s1", exact(&[15]), Some(8), SlotPosition::Any),
                slot("s2", DurationRule::default(), None, SlotPosition::Any),
            ],
            ..Default::default()
        };
        let b = brk(0, 0, rules);
        let cands = [
            cand(0, 10, 10, &[(30, 0)]),
            cand(1, 9, 9, &[(15, 1)]),
            cand(2, 8, 7, &[(15, 2)]), // 15 s but under s1's floor: only s2 takes it
            cand(3, 1, 5, &[(60, 3)]),
        ];
        let out = solve(&b, 1, &cands);
        assert!(out.exact);
        assert_eq!(
            placed(&out, &cands),
            vec![(0, Some(0)), (1, Some(1)), (2, Some(2))]
        );
        // The loser bids 5; s1's floor of 8 lifts its price.
        let prices: Vec<_> = out.placements.iter().map(|p| p.price_cpm.0 / M).collect();
        assert_eq!(prices, vec![5, 8, 5]);
    }

    #[test]
    fn dynamic_pod_is_a_knapsack_not_a_greedy_fill() {
        let b = brk(3, 60, PodRules::default());
        // Greedy by value takes the 45 s ad and has no room left; two 30 s ads are worth more.
        let cands = [
            cand(0, 10, 10, &[(45, 0)]),
            cand(1, 7, 7, &[(30, 1)]),
            cand(2, 7, 6, &[(30, 2)]),
        ];
        let out = solve(&b, 0, &cands);
        assert_eq!(placed(&out, &cands), vec![(1, None), (2, None)]);
        assert_eq!(out.value(&cands), 14);
        // Second price: the unplaced 45 s ad bids 10, capped by each winner's own eCPM.
        let prices: Vec<_> = out.placements.iter().map(|p| p.price_cpm.0 / M).collect();
        assert_eq!(prices, vec![7, 6]);
    }

    #[test]
    fn a_creative_is_chosen_to_fit_the_remaining_seconds() {
        let b = brk(2, 45, PodRules::default());
        let cands = [
            cand(0, 5, 5, &[(30, 0), (15, 1)]),
            cand(1, 5, 5, &[(30, 2)]),
        ];
        let out = solve(&b, 0, &cands);
        let durations: Vec<_> = out.placements.iter().map(|p| p.duration_s).collect();
        assert_eq!(durations, vec![15, 30]);
    }

    #[test]
    fn hybrid_pod_fills_slots_and_the_dynamic_part() {
        let rules = PodRules {
            slots: vec![
                slot("open", exact(&[15]), None, SlotPosition::First),
                slot("close", exact(&[30]), None, SlotPosition::Last),
            ],
            ..Default::default()
        };
        let b = brk(2, 30, rules);
        let cands = [
            cand(0, 9, 9, &[(15, 0)]),
            cand(1, 8, 8, &[(30, 1)]),
            cand(2, 7, 7, &[(15, 2)]),
            cand(3, 6, 6, &[(15, 3)]),
            cand(4, 5, 5, &[(30, 4)]),
        ];
        let out = solve(&b, 0, &cands);
        // The dynamic part takes two 15 s ads; the slots frame them (which 15 s ad opens is a
        // tie of equal value).
        assert_eq!(out.value(&cands), 9 + 8 + 7 + 6);
        let order = placed(&out, &cands);
        assert_eq!(order.len(), 4);
        assert_eq!(order[0].1, Some(0));
        assert_eq!(order[3], (1, Some(1)));
        assert!(order[1..3].iter().all(|p| p.1.is_none()));
        check(
            &b,
            Micros::ZERO,
            &cands,
            &[true; 5],
            AuctionType::SecondPrice,
            &out,
        )
        .unwrap();
    }

    #[test]
    fn exact_durations_admit_only_the_listed_lengths() {
        let rules = PodRules {
            ad_durations: exact(&[15, 30]),
            ..Default::default()
        };
        let b = brk(3, 90, rules);
        let cands = [
            cand(0, 9, 9, &[(20, 0)]),
            cand(1, 5, 5, &[(20, 1), (30, 2)]),
            cand(2, 4, 4, &[(15, 3)]),
        ];
        let out = solve(&b, 0, &cands);
        let got: Vec<_> = out
            .placements
            .iter()
            .map(|p| (p.candidate, p.duration_s))
            .collect();
        assert_eq!(got, vec![(1, 30), (2, 15)]);
        // The 20 s-only line item is not admissible, so it sets no price: the floor (0) does.
        assert!(out.placements.iter().all(|p| p.price_cpm == Micros::ZERO));
    }

    #[test]
    fn per_second_floor_scales_with_the_creative() {
        let rules = PodRules {
            floor_cpm_per_s: Some(Micros(200_000)), // 30 s must clear 6, 15 s must clear 3
            ..Default::default()
        };
        let b = brk(1, 30, rules);
        let cands = [
            cand(0, 9, 5, &[(30, 0), (15, 1)]),
            cand(1, 1, 2, &[(15, 2)]),
        ];
        let out = solve(&b, 0, &cands);
        assert_eq!(out.placements.len(), 1);
        assert_eq!(out.placements[0].duration_s, 15);
        // The loser clears no floor; the price is the winner's own per-second floor.
        assert_eq!(out.placements[0].price_cpm, Micros(3 * M));
    }

    #[test]
    fn first_and_last_line_items_play_first_and_last() {
        let b = brk(4, 120, PodRules::default());
        let mut cands = vec![
            cand(0, 5, 5, &[(30, 0)]),
            cand(1, 9, 9, &[(30, 1)]),
            cand(2, 8, 8, &[(30, 2)]),
            cand(3, 7, 7, &[(30, 3)]),
            cand(4, 6, 6, &[(30, 4)]),
        ];
        cands[0].position = SlotPosition::First;
        cands[1].position = SlotPosition::Last;
        cands[2].position = SlotPosition::Last; // two last-only ads cannot share a pod
        let out = solve(&b, 0, &cands);
        assert_eq!(
            placed(&out, &cands),
            vec![(0, None), (3, None), (4, None), (1, None)]
        );
    }

    #[test]
    fn a_lone_ad_is_both_first_and_last() {
        let rules = PodRules {
            slots: vec![slot(
                "close",
                DurationRule::default(),
                None,
                SlotPosition::Last,
            )],
            ..Default::default()
        };
        let b = brk(0, 0, rules);
        let mut cands = vec![cand(0, 5, 5, &[(30, 0)])];
        cands[0].position = SlotPosition::First;
        let out = solve(&b, 0, &cands);
        assert_eq!(placed(&out, &cands), vec![(0, Some(0))]);
    }

    #[test]
    fn second_price_is_the_best_losing_bid_above_each_floor() {
        let rules = PodRules {
            floor_cpm: Some(Micros(2 * M)),
            slots: vec![slot(
                "s",
                DurationRule::default(),
                Some(6),
                SlotPosition::Any,
            )],
            ..Default::default()
        };
        let b = brk(2, 30, rules);
        let mut cands = vec![
            cand(0, 10, 10, &[(30, 0)]),
            cand(1, 9, 9, &[(15, 1)]),
            cand(2, 8, 8, &[(15, 2)]),
            cand(3, 1, 4, &[(30, 3)]), // loses: bids 4
            cand(4, 1, 1, &[(15, 4)]), // under the floor: no competition
        ];
        cands[2].guaranteed = true;
        let out = solve(&b, 3, &cands);
        let got: Vec<_> = out
            .placements
            .iter()
            .map(|p| (cands[p.candidate].line_item, p.slot, p.price_cpm.0 / M))
            .collect();
        // The slot's floor (6) tops the losing bid (4); the dynamic ad pays 4 (reserve 3 is
        // lower); the guaranteed line item pays its contract rate.
        assert_eq!(got, vec![(0, Some(0), 6), (1, None, 4), (2, None, 8)]);
        let first = solve_pod(&b, Micros(3 * M), &cands, |_| true, AuctionType::FirstPrice);
        let paid: Vec<_> = first.placements.iter().map(|p| p.price_cpm.0 / M).collect();
        assert_eq!(paid, vec![10, 9, 8]);
    }

    #[test]
    fn cross_cutting_dedupe_keys_are_exact() {
        let rules = PodRules {
            dedupe: vec![
                DedupeKey::Advertiser,
                DedupeKey::Category,
                DedupeKey::Creative,
            ],
            ..Default::default()
        };
        let b = brk(3, 90, rules);
        let mut cands = vec![
            cand(0, 10, 10, &[(30, 7)]),
            cand(1, 9, 9, &[(30, 7)]), // same creative as 0
            cand(2, 8, 8, &[(30, 8)]),
            cand(3, 6, 6, &[(30, 9)]),
            cand(4, 5, 5, &[(30, 10)]),
        ];
        // 0 shares a category with 2, 1 shares an advertiser with 3.
        cands[2].category = cands[0].category;
        cands[3].advertiser = cands[1].advertiser;
        let out = solve(&b, 0, &cands);
        assert!(out.exact);
        let allowed = [true; 5];
        assert_eq!(out.value(&cands), brute(&b, Micros::ZERO, &cands, &allowed));
        check(
            &b,
            Micros::ZERO,
            &cands,
            &allowed,
            AuctionType::SecondPrice,
            &out,
        )
        .unwrap();
    }

    #[test]
    fn an_exhausted_budget_still_returns_a_valid_pod() {
        let rules = PodRules {
            dedupe: vec![DedupeKey::Advertiser, DedupeKey::Creative],
            ..Default::default()
        };
        let b = brk(4, 120, rules);
        let cands: Vec<_> = (0..12)
            .map(|i| {
                let mut c = cand(i, 20 - i64::from(i), 10, &[(30, u64::from(i % 3))]);
                c.advertiser = u64::from(i % 4);
                c
            })
            .collect();
        let out = solve_within(
            &b,
            Micros::ZERO,
            &cands,
            |_| true,
            AuctionType::SecondPrice,
            1,
        );
        assert!(!out.exact);
        check(
            &b,
            Micros::ZERO,
            &cands,
            &[true; 12],
            AuctionType::SecondPrice,
            &out,
        )
        .unwrap();
        let full = solve(&b, 0, &cands);
        assert!(full.exact);
        assert_eq!(
            full.value(&cands),
            brute(&b, Micros::ZERO, &cands, &[true; 12])
        );
    }

    #[test]
    fn breaks_never_share_a_line_item() {
        let b1 = brk(2, 60, PodRules::default());
        let b2 = brk(2, 60, PodRules::default());
        let cands: Vec<_> = (0..3)
            .map(|i| cand(i, 10 - i64::from(i), 10, &[(30, 0)]))
            .collect();
        let specs = [
            BreakSpec {
                brk: &b1,
                reserve_cpm: Micros::ZERO,
            },
            BreakSpec {
                brk: &b2,
                reserve_cpm: Micros::ZERO,
            },
        ];
        let pods = fill_breaks(&specs, &cands, AuctionType::SecondPrice);
        assert_eq!(placed(&pods[0], &cands), vec![(0, None), (1, None)]);
        assert_eq!(placed(&pods[1], &cands), vec![(2, None)]);
    }

    #[test]
    fn auction_type_reads_snake_case() {
        let t: AuctionType = serde_json::from_str("\"first_price\"").unwrap();
        assert_eq!(t, AuctionType::FirstPrice);
        assert_eq!(
            serde_json::to_string(&AuctionType::default()).unwrap(),
            "\"second_price\""
        );
    }

    fn position() -> impl Strategy<Value = SlotPosition> {
        prop_oneof![
            3 => Just(SlotPosition::Any),
            1 => Just(SlotPosition::First),
            1 => Just(SlotPosition::Last),
        ]
    }

    fn duration_rule() -> impl Strategy<Value = DurationRule> {
        let d = prop::sample::select(vec![5u32, 10, 15, 20, 30]);
        prop_oneof![
            Just(DurationRule::default()),
            (0u32..20, prop::option::of(10u32..40)).prop_map(|(min_s, max_s)| DurationRule {
                min_s,
                max_s: max_s.map(|m| m.max(min_s)),
                exact_s: Vec::new(),
            }),
            prop::collection::vec(d, 1..3).prop_map(|exact_s| DurationRule {
                exact_s,
                ..Default::default()
            }),
        ]
    }

    prop_compose! {
        fn candidate()(
            value in prop_oneof![1 => -1i64..1, 9 => 1i64..12],
            ecpm in 0i64..20,
            guaranteed in prop::bool::weighted(0.2),
            creatives in prop::collection::vec((prop::sample::select(vec![5u32, 10, 15, 20, 30]), 0u64..4), 1..3),
            advertiser in 0u64..4,
            category in 0u64..3,
            position in position(),
        ) -> PodCandidate {
            let mut c = cand(0, value, ecpm, &creatives);
            c.guaranteed = guaranteed;
            c.advertiser = advertiser;
            c.category = category;
            c.position = position;
            c
        }
    }

    prop_compose! {
        fn instance()(
            cands in prop::collection::vec(candidate(), 2..9),
            slots in prop::collection::vec((duration_rule(), prop::option::of(0i64..8), position()), 0..4),
            max_ads in 0u32..5,
            max_duration_s in prop_oneof![1 => 0u32..20, 4 => 20u32..61],
            ad_durations in duration_rule(),
            floor in prop::option::of(0i64..6),
            per_s in prop::option::of(0i64..200_000),
            dedupe in prop::sample::subsequence(vec![DedupeKey::Creative, DedupeKey::Advertiser, DedupeKey::Category], 0..=3),
            reserve in 0i64..4,
            allowed in prop::collection::vec(prop::bool::weighted(0.9), 8),
            first_price in any::<bool>(),
        ) -> (AdBreak, Micros, Vec<PodCandidate>, Vec<bool>, AuctionType) {
            let rules = PodRules {
                ad_durations,
                slots: slots
                    .into_iter()
                    .enumerate()
                    .map(|(j, (d, f, p))| slot(&format!("s{j}"), d, f, p))
                    .collect(),
                floor_cpm: floor.map(|f| Micros(f * M)),
                floor_cpm_per_s: per_s.map(Micros),
                dedupe,
            };
            let cands: Vec<_> = cands
                .into_iter()
                .enumerate()
                .map(|(i, mut c)| {
                    // Distinct line items in scrambled order, so ties test the line item order.
                    c.line_item = (i as u32 * 5) % 9;
                    c
                })
                .collect();
            let auction = if first_price { AuctionType::FirstPrice } else { AuctionType::SecondPrice };
            (brk(max_ads, max_duration_s, rules), Micros(reserve * M), cands, allowed, auction)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn matches_brute_force_and_keeps_every_rule((b, reserve, cands, allowed, auction) in instance()) {
            let out = solve_pod(&b, reserve, &cands, |c| allowed[c], auction);
            prop_assert!(out.exact);
            check(&b, reserve, &cands, &allowed, auction, &out).map_err(TestCaseError::fail)?;
            prop_assert_eq!(out.value(&cands), brute(&b, reserve, &cands, &allowed));
        }

        #[test]
        fn candidate_order_does_not_change_the_pod((b, reserve, cands, allowed, auction) in instance()) {
            let out = solve_pod(&b, reserve, &cands, |c| allowed[c], auction);
            let rev: Vec<_> = cands.iter().rev().cloned().collect();
            let n = cands.len();
            let out_rev = solve_pod(&b, reserve, &rev, |c| allowed[n - 1 - c], auction);
            let key = |o: &PodOutcome, cs: &[PodCandidate]| -> Vec<_> {
                o.placements.iter().map(|p| (cs[p.candidate].line_item, p.creative, p.slot, p.price_cpm)).collect()
            };
            prop_assert_eq!(key(&out, &cands), key(&out_rev, &rev));
        }

        #[test]
        fn small_budgets_stay_valid((b, reserve, cands, allowed, auction) in instance(), budget in 0u64..400) {
            let out = solve_within(&b, reserve, &cands, |c| allowed[c], auction, budget);
            check(&b, reserve, &cands, &allowed, auction, &out).map_err(TestCaseError::fail)?;
        }

        #[test]
        fn fill_breaks_uses_a_line_item_once((b, reserve, cands, _allowed, auction) in instance()) {
            let specs = [BreakSpec { brk: &b, reserve_cpm: reserve }; 3];
            let pods = fill_breaks(&specs, &cands, auction);
            let mut allowed = vec![true; cands.len()];
            for (spec, pod) in specs.iter().zip(&pods) {
                // `check` refuses a candidate placed where it was not allowed: here, used before.
                check(spec.brk, reserve, &cands, &allowed, auction, pod).map_err(TestCaseError::fail)?;
                for p in &pod.placements {
                    allowed[p.candidate] = false;
                }
            }
        }
    }
}
