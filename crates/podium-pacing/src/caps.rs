//! Frequency caps: how often each viewer has seen a line item, its campaign and its advertiser.
//!
//! Impressions arrive from the event path (after deduplication by event id), are kept per viewer
//! as (key, time) pairs over the longest cap window, and are counted per request against each
//! candidate's caps. One read per request fetches a viewer's whole history, whatever the number
//! of capped candidates.

use dashmap::DashMap;

/// Most impressions remembered per viewer; a viewer past it forgets the oldest first.
pub const MAX_HISTORY: usize = 2048;

/// A frequency-cap counter key: a scope tag and an id, hashed (FNV-1a, stable across processes).
pub fn cap_key(scope: &str, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in scope.bytes().chain([0xff]).chain(id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Where viewers' impressions are counted. The embedded store is in memory.
pub trait FrequencyStore: Send + Sync {
    /// Records one impression of `user` under each of `keys` at `ts_ms`.
    fn record(&self, user: &str, keys: &[u64], ts_ms: i64);

    /// The viewer's remembered impressions, (key, time), oldest first.
    fn history(&self, user: &str) -> Vec<(u64, i64)>;
}

/// The embedded frequency store: a concurrent map of viewer → recent impressions.
pub struct MemoryFrequencyStore {
    horizon_ms: i64,
    users: DashMap<String, Vec<(u64, i64)>>,
}

impl MemoryFrequencyStore {
    /// A store that forgets impressions older than `horizon_ms` (the longest cap window).
    pub fn new(horizon_ms: i64) -> Self {
        Self {
            horizon_ms,
            users: DashMap::new(),
        }
    }

    /// Viewers with remembered impressions.
    pub fn users(&self) -> usize {
        self.users.len()
    }
}

impl FrequencyStore for MemoryFrequencyStore {
    fn record(&self, user: &str, keys: &[u64], ts_ms: i64) {
        let mut h = self.users.entry(user.to_string()).or_default();
        // Events arrive nearly in order; insert keeps the list sorted by time when they do not.
        let at = h.partition_point(|&(_, t)| t <= ts_ms);
        h.splice(at..at, keys.iter().map(|&k| (k, ts_ms)));
        let newest = h.last().map_or(ts_ms, |&(_, t)| t);
        let keep_from = h.partition_point(|&(_, t)| t < newest - self.horizon_ms);
        let over = h.len().saturating_sub(MAX_HISTORY);
        h.drain(..keep_from.max(over));
    }

    fn history(&self, user: &str) -> Vec<(u64, i64)> {
        self.users.get(user).map_or_else(Vec::new, |h| h.clone())
    }
}

/// Impressions under `key` at or after `since_ms` in a viewer's history.
pub fn count_since(history: &[(u64, i64)], key: u64, since_ms: i64) -> u32 {
    let from = history.partition_point(|&(_, t)| t < since_ms);
    history[from..].iter().filter(|&&(k, _)| k == key).count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_and_forgets_past_the_horizon() {
        let s = MemoryFrequencyStore::new(86_400_000);
        let li = cap_key("line_item", "li-1");
        let adv = cap_key("advertiser", "adv-1");
        assert_ne!(li, cap_key("advertiser", "li-1"), "scopes do not collide");
        s.record("u1", &[li, adv], 1_000);
        s.record("u1", &[li, adv], 5_000);
        // Out of order: still counted at its own time.
        s.record("u1", &[adv], 3_000);
        let h = s.history("u1");
        assert_eq!(count_since(&h, li, 0), 2);
        assert_eq!(count_since(&h, adv, 0), 3);
        assert_eq!(count_since(&h, adv, 2_000), 2);
        assert!(s.history("u2").is_empty());
        // A day later the first three are past the horizon.
        s.record("u1", &[li], 86_400_000 + 4_000);
        let h = s.history("u1");
        assert_eq!(count_since(&h, adv, 0), 1);
        assert_eq!(count_since(&h, li, 0), 2);
    }
}
