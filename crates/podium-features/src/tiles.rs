//! Tiled windowed aggregation (Chronon-style): each (entity, feature) keeps one partial aggregate
//! per tile, so that a read at time t merges O(window / tile) partials instead of scanning events.
//!
//! Boundary rule ("hop" windows). Tiles are aligned to multiples of the tile length since the UTC
//! epoch: tile k covers `[k * s, (k + 1) * s)` ms. The window read at time t is nominally
//! `(t - w, t]`; it is evaluated at tile granularity on both ends: an event counts iff its tile
//! lies between the tile holding `t - w + 1` (the oldest instant of the window) and the tile
//! holding `t`, inclusive. So the oldest, partially covered tile is taken whole (the window may
//! reach back up to `s - 1` ms further than `w`), and reads are meant at `t` not before the events
//! folded (the stream's own clock), so that nothing in the newest tile lies after `t`. When `t + 1`
//! is a tile boundary the window is exactly `(t - w, t]`.
//!
//! This module does not know about entities, JSON or stores; [`EventGate`] decides which events
//! may be folded at all (lateness and duplicates).

use crate::definitions::Aggregation;
use std::collections::{BTreeMap, HashSet};

/// HyperLogLog with 2^8 registers (about 6.5 % standard error, 256 bytes per tile): small enough
/// to keep one per tile, and mergeable, so a window's estimate equals the estimate of the union.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HyperLogLog {
    #[serde(with = "registers")]
    registers: [u8; 256],
}

/// Serde for the register array (serde's arrays stop at 32 elements): as a byte sequence.
mod registers {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &[u8; 256], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(r)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 256], D::Error> {
        let v: Vec<u8> = Vec::deserialize(d)?;
        v.try_into()
            .map_err(|v: Vec<u8>| serde::de::Error::invalid_length(v.len(), &"256 registers"))
    }
}

impl Default for HyperLogLog {
    fn default() -> Self {
        Self {
            registers: [0; 256],
        }
    }
}

/// A 64-bit hash stable across processes and Rust versions (FNV-1a, then a splitmix finaliser so
/// that the top bits used to pick a register are well mixed).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl HyperLogLog {
    /// Adds an already hashed item.
    pub fn insert(&mut self, hash: u64) {
        let idx = (hash >> 56) as usize;
        let rest = hash << 8;
        let rho = (rest.leading_zeros() + 1).min(57) as u8;
        if self.registers[idx] < rho {
            self.registers[idx] = rho;
        }
    }

    /// Union with another sketch.
    pub fn merge(&mut self, other: &HyperLogLog) {
        for (a, b) in self.registers.iter_mut().zip(other.registers.iter()) {
            *a = (*a).max(*b);
        }
    }

    /// Estimated number of distinct items, with the small-range (linear counting) correction.
    pub fn estimate(&self) -> f64 {
        let m = 256.0_f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self.registers.iter().map(|r| 2f64.powi(-(*r as i32))).sum();
        let raw = alpha * m * m / sum;
        let zeros = self.registers.iter().filter(|r| **r == 0).count();
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }
}

/// What one event contributes to an aggregation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Observation {
    /// Just that it happened (count).
    Unit,
    /// A number (sum, mean, last; count too).
    Number(f64),
    /// A hashed item (distinct; count too).
    Hash(u64),
}

/// One tile's partial aggregate.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Partial {
    Count(u64),
    Sum(f64),
    Mean { sum: f64, count: u64 },
    Last { ts: i64, value: f64 },
    Distinct(Box<HyperLogLog>),
}

impl Partial {
    fn empty(aggregation: Aggregation) -> Self {
        match aggregation {
            Aggregation::Count => Partial::Count(0),
            Aggregation::Sum => Partial::Sum(0.0),
            Aggregation::Mean => Partial::Mean { sum: 0.0, count: 0 },
            Aggregation::Last => Partial::Last {
                ts: i64::MIN,
                value: f64::NAN,
            },
            Aggregation::Distinct => Partial::Distinct(Box::default()),
        }
    }

    fn add(&mut self, ts: i64, obs: Observation) {
        let number = match obs {
            Observation::Number(x) => Some(x),
            _ => None,
        };
        match self {
            Partial::Count(c) => *c += 1,
            Partial::Sum(s) => *s += number.unwrap_or(0.0),
            Partial::Mean { sum, count } => {
                if let Some(x) = number {
                    *sum += x;
                    *count += 1;
                }
            }
            // `>=`: among events with equal timestamps the one folded last wins.
            Partial::Last { ts: lts, value } => {
                if let Some(x) = number {
                    if ts >= *lts {
                        *lts = ts;
                        *value = x;
                    }
                }
            }
            Partial::Distinct(h) => {
                if let Observation::Hash(x) = obs {
                    h.insert(x);
                }
            }
        }
    }

    /// Folds `other` (an older or newer tile; tiles never overlap in time) into `self`.
    fn merge(&mut self, other: &Partial) {
        match (self, other) {
            (Partial::Count(a), Partial::Count(b)) => *a += b,
            (Partial::Sum(a), Partial::Sum(b)) => *a += b,
            (Partial::Mean { sum, count }, Partial::Mean { sum: s, count: c }) => {
                *sum += s;
                *count += c;
            }
            (Partial::Last { ts, value }, Partial::Last { ts: t, value: v }) => {
                if *t > *ts {
                    *ts = *t;
                    *value = *v;
                }
            }
            (Partial::Distinct(a), Partial::Distinct(b)) => a.merge(b),
            _ => unreachable!("tiles of one series share an aggregation"),
        }
    }

    fn finish(&self) -> Option<f64> {
        match self {
            Partial::Count(c) => Some(*c as f64),
            Partial::Sum(s) => Some(*s),
            Partial::Mean { sum, count } => (*count > 0).then(|| sum / *count as f64),
            Partial::Last { ts, value } => (*ts != i64::MIN).then_some(*value),
            Partial::Distinct(h) => Some(h.estimate()),
        }
    }
}

/// The tiles of one (entity key, feature).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TiledSeries {
    aggregation: Aggregation,
    window_ms: i64,
    tile_ms: i64,
    tiles: BTreeMap<i64, Partial>,
    last_event_ts: Option<i64>,
}

impl TiledSeries {
    /// An empty series; `window_ms` must be a positive multiple of `tile_ms`.
    pub fn new(aggregation: Aggregation, window_ms: i64, tile_ms: i64) -> Self {
        assert!(tile_ms > 0 && window_ms >= tile_ms, "bad window/tile");
        Self {
            aggregation,
            window_ms,
            tile_ms,
            tiles: BTreeMap::new(),
            last_event_ts: None,
        }
    }

    /// The tile index holding timestamp `ts` (ms since the UTC epoch).
    pub fn tile_of(&self, ts: i64) -> i64 {
        ts.div_euclid(self.tile_ms)
    }

    /// Folds one event into its tile. When the event opens a tile, returns the first time at
    /// which that tile is out of the window (from then on the window reads differently even with
    /// no new event).
    pub fn add(&mut self, ts: i64, obs: Observation) -> Option<i64> {
        let k = self.tile_of(ts);
        let agg = self.aggregation;
        let mut opened = false;
        self.tiles
            .entry(k)
            .or_insert_with(|| {
                opened = true;
                Partial::empty(agg)
            })
            .add(ts, obs);
        self.last_event_ts = Some(self.last_event_ts.map_or(ts, |l| l.max(ts)));
        // Tile k is read while tile_of(t - w + 1) <= k, i.e. until t = (k + 1)·tile + w - 1.
        opened.then(|| (k + 1) * self.tile_ms + self.window_ms - 1)
    }

    /// The aggregate of the window ending at `t` (see the module's boundary rule); `None` when
    /// the function has no value over no events (mean, last).
    pub fn read(&self, t: i64) -> Option<f64> {
        let lo = self.tile_of(t - self.window_ms + 1);
        let hi = self.tile_of(t);
        let mut acc = Partial::empty(self.aggregation);
        for p in self.tiles.range(lo..=hi).map(|(_, p)| p) {
            acc.merge(p);
        }
        acc.finish()
    }

    /// Timestamp of the newest event folded, for freshness checks.
    pub fn last_event_ts(&self) -> Option<i64> {
        self.last_event_ts
    }

    /// Drops tiles that no read at or after `t` can include; bounds memory.
    pub fn prune(&mut self, t: i64) {
        let lo = self.tile_of(t - self.window_ms + 1);
        self.tiles = self.tiles.split_off(&lo);
    }

    /// Number of tiles held.
    pub fn tile_count(&self) -> usize {
        self.tiles.len()
    }
}

/// Why an event was not folded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Fold it.
    Accepted,
    /// Older than the allowed lateness behind the newest timestamp seen.
    Late,
    /// Its id was already folded.
    Duplicate,
}

/// Admits events by lateness and drops duplicates by id. Ids are remembered per hour of event
/// time and forgotten once that hour is beyond the lateness horizon: an older redelivery is
/// rejected as late anyway, so the memory is bounded by the ids of the last `lateness + 1 h`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct EventGate {
    lateness_ms: i64,
    max_seen: Option<i64>,
    seen: BTreeMap<i64, HashSet<String>>,
    late: u64,
    duplicate: u64,
}

const HOUR_MS: i64 = 3_600_000;

impl EventGate {
    /// A gate allowing events up to `lateness_ms` behind the newest seen.
    pub fn new(lateness_ms: i64) -> Self {
        Self {
            lateness_ms,
            max_seen: None,
            seen: BTreeMap::new(),
            late: 0,
            duplicate: 0,
        }
    }

    /// A copy of the gate's memory (for saving an aggregator's state).
    pub fn clone_state(&self) -> Self {
        Self {
            lateness_ms: self.lateness_ms,
            max_seen: self.max_seen,
            seen: self.seen.clone(),
            late: self.late,
            duplicate: self.duplicate,
        }
    }

    /// Decides on one event and remembers it when accepted.
    pub fn admit(&mut self, id: &str, ts: i64) -> Admission {
        if let Some(max) = self.max_seen {
            if ts < max - self.lateness_ms {
                self.late += 1;
                return Admission::Late;
            }
        }
        let bucket = ts.div_euclid(HOUR_MS);
        let ids = self.seen.entry(bucket).or_default();
        if ids.contains(id) {
            self.duplicate += 1;
            return Admission::Duplicate;
        }
        ids.insert(id.to_owned());
        if self.max_seen.is_none_or(|m| ts > m) {
            self.max_seen = Some(ts);
            let horizon = (ts - self.lateness_ms).div_euclid(HOUR_MS);
            self.seen = self.seen.split_off(&horizon);
        }
        Admission::Accepted
    }

    /// The newest event timestamp accepted: the stream's clock.
    pub fn max_seen(&self) -> Option<i64> {
        self.max_seen
    }

    /// Events rejected as late so far.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Events dropped as duplicates so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicate
    }

    /// Ids remembered now (bounded by the lateness horizon).
    pub fn remembered(&self) -> usize {
        self.seen.values().map(HashSet::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

    const MIN: i64 = 60_000;

    /// Brute force with the same boundary rule: tiles of `t - w + 1` through `t`, inclusive.
    fn brute(
        agg: Aggregation,
        w: i64,
        s: i64,
        events: &[(i64, Observation)],
        t: i64,
    ) -> Option<f64> {
        let lo = (t - w + 1).div_euclid(s);
        let hi = t.div_euclid(s);
        let inside: Vec<_> = events
            .iter()
            .filter(|(ts, _)| (lo..=hi).contains(&ts.div_euclid(s)))
            .collect();
        let nums = || {
            inside.iter().filter_map(|(_, o)| match o {
                Observation::Number(x) => Some(*x),
                _ => None,
            })
        };
        match agg {
            Aggregation::Count => Some(inside.len() as f64),
            Aggregation::Sum => Some(nums().sum()),
            Aggregation::Mean => {
                let n = nums().count();
                (n > 0).then(|| nums().sum::<f64>() / n as f64)
            }
            Aggregation::Last => {
                let mut best: Option<(i64, f64)> = None;
                for (ts, o) in &inside {
                    if let Observation::Number(x) = o {
                        if best.is_none_or(|(bt, _)| *ts >= bt) {
                            best = Some((*ts, *x));
                        }
                    }
                }
                best.map(|b| b.1)
            }
            Aggregation::Distinct => {
                let mut h = HyperLogLog::default();
                for (_, o) in &inside {
                    if let Observation::Hash(x) = o {
                        h.insert(*x);
                    }
                }
                Some(h.estimate())
            }
        }
    }

    #[test]
    fn tiled_equals_brute_force_on_random_streams_with_late_and_duplicate_events() {
        let configs = [
            (Aggregation::Count, 60 * MIN, 5 * MIN),
            (Aggregation::Sum, 60 * MIN, 5 * MIN),
            (Aggregation::Mean, 24 * 60 * MIN, 60 * MIN),
            (Aggregation::Last, 60 * MIN, 5 * MIN),
            (Aggregation::Last, 24 * 60 * MIN, 60 * MIN),
            (Aggregation::Distinct, 24 * 60 * MIN, 60 * MIN),
            (Aggregation::Count, 7 * 24 * 60 * MIN, 60 * MIN),
            (Aggregation::Sum, 7 * 24 * 60 * MIN, 60 * MIN),
        ];
        let lateness = 60 * MIN;
        let (mut total_late, mut total_dup) = (0u64, 0u64);
        for seed in 0..20u64 {
            let mut rng = rand_chacha_like(seed);
            for &(agg, w, s) in &configs {
                let mut series = TiledSeries::new(agg, w, s);
                let mut gate = EventGate::new(lateness);
                let mut accepted: Vec<(i64, Observation)> = Vec::new();
                let mut sent: Vec<(String, i64, Observation)> = Vec::new();
                let mut accepted_ids = HashSet::new();
                // Start off the epoch and off tile boundaries.
                let mut clock: i64 = 1_700_000_123_457;
                let (mut n_late, mut n_dup) = (0u64, 0u64);
                for i in 0..600 {
                    let (id, ts, obs) = if !sent.is_empty() && rng.random_bool(0.05) {
                        sent[rng.random_range(0..sent.len())].clone()
                    } else {
                        clock += rng.random_range(0..lateness / 5);
                        // Some events arrive out of order, a few beyond the lateness.
                        let back = if rng.random_bool(0.2) {
                            rng.random_range(0..2 * lateness)
                        } else {
                            0
                        };
                        let obs = match rng.random_range(0..3) {
                            0 if agg == Aggregation::Distinct => Observation::Hash(stable_hash(
                                &rng.random_range(0..300u32).to_le_bytes(),
                            )),
                            _ if agg == Aggregation::Distinct => Observation::Hash(stable_hash(
                                &rng.random_range(0..40u32).to_le_bytes(),
                            )),
                            0 => Observation::Unit,
                            _ => Observation::Number(rng.random_range(0..100) as f64),
                        };
                        let e = (format!("e{i}"), clock - back, obs);
                        sent.push(e.clone());
                        e
                    };
                    // The reference applies the same lateness rule by itself, from first principles.
                    let max_before = gate.max_seen();
                    let expect_late = max_before.is_some_and(|m| ts < m - lateness);
                    let expect_dup = !expect_late && accepted_ids.contains(&id);
                    match gate.admit(&id, ts) {
                        Admission::Accepted => {
                            assert!(!expect_late && !expect_dup);
                            series.add(ts, obs);
                            accepted.push((ts, obs));
                            accepted_ids.insert(id.clone());
                        }
                        Admission::Late => {
                            assert!(expect_late);
                            n_late += 1;
                        }
                        Admission::Duplicate => {
                            assert!(expect_dup, "{id} dropped as duplicate");
                            n_dup += 1;
                        }
                    }
                    if i % 7 == 0 {
                        let t = gate.max_seen().unwrap() + rng.random_range(0..s);
                        let got = series.read(t);
                        let want = brute(agg, w, s, &accepted, t);
                        match (got, want) {
                            (Some(g), Some(b)) => {
                                assert!(
                                    (g - b).abs() <= 1e-9 * b.abs().max(1.0),
                                    "{agg:?} w={w} t={t}: tiled {g} vs brute {b}"
                                )
                            }
                            (g, b) => assert_eq!(g, b, "{agg:?} w={w} t={t}"),
                        }
                        series.prune(gate.max_seen().unwrap() - lateness);
                    }
                }
                assert_eq!(gate.late(), n_late);
                assert_eq!(gate.duplicates(), n_dup);
                total_late += n_late;
                total_dup += n_dup;
                assert!(series.tile_count() as i64 <= (w + lateness) / s + 2);
            }
        }
        assert!(
            total_dup > 100 && total_late > 100,
            "the streams exercised both rejections: {total_dup} duplicates, {total_late} late"
        );
    }

    fn rand_chacha_like(seed: u64) -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(seed)
    }

    #[test]
    fn hll_is_close_and_merges_as_union() {
        let mut a = HyperLogLog::default();
        let mut b = HyperLogLog::default();
        let mut u = HyperLogLog::default();
        for i in 0..5000u32 {
            let h = stable_hash(&i.to_le_bytes());
            if i < 3000 {
                a.insert(h);
            }
            if i >= 2000 {
                b.insert(h);
            }
            u.insert(h);
        }
        a.merge(&b);
        assert_eq!(a, u);
        let e = u.estimate();
        assert!((e - 5000.0).abs() < 5000.0 * 0.2, "estimate {e}");
        let mut small = HyperLogLog::default();
        for i in 0..10u32 {
            small.insert(stable_hash(&i.to_le_bytes()));
        }
        assert!((small.estimate() - 10.0).abs() < 1.5);
    }

    #[test]
    fn window_boundaries() {
        // 1 h window, 5 min tiles; read exactly at a boundary minus 1 ms is exact (t - w, t].
        let mut s = TiledSeries::new(Aggregation::Count, 60 * MIN, 5 * MIN);
        let t = 1_000 * 60 * MIN - 1;
        s.add(t - 60 * MIN, Observation::Unit); // excluded: at t - w
        s.add(t - 60 * MIN + 1, Observation::Unit); // included: first instant
        s.add(t, Observation::Unit);
        assert_eq!(s.read(t), Some(2.0));
        // One ms later the window starts inside the oldest tile, which is still taken whole ...
        assert_eq!(s.read(t + 1), Some(2.0));
        // ... until the window's start leaves that tile.
        assert_eq!(s.read(t + 5 * MIN), Some(1.0));
    }
}
