//! Budget leases: what one server may spend of each shared budget without asking anyone.
//!
//! A server takes a lease (a slice of a budget) from the [`BudgetLedger`] off the request path,
//! and the request path only ever reserves against the lease it holds: [`LeaseBook::reserve`]
//! does no I/O and answers from local state. Since the ledger never allocates past a budget's
//! limit and nothing is spent without a reservation against an allocated lease, a fleet of any
//! size does not overspend, also when traffic jumps ×20 in a minute: the spike only empties the
//! leases sooner. The price is underdelivery by at most the leases left unused at the end.
//!
//! A reservation is *pending* until its impression is confirmed ([`LeaseBook::confirm`]); one
//! not confirmed within the TTL (the ad never played) is released back into the lease
//! ([`LeaseBook::expire`]). Confirmed spend is reported to the ledger on the next refill.
//!
//! Lease size: `clamp(remaining / (k × servers), min_lease, max_lease)`, `remaining` being the
//! budget's limit minus what the ledger has allocated to the whole fleet, and never below the
//! largest cost a reservation was refused for (so the last impressions of a budget can still be
//! bought). With `k = 4`, the leases out at any time are at most about a quarter of what is left,
//! and they shrink geometrically as the budget nears its end, so the budget runs out on all
//! servers at nearly the same time instead of stranding large leases on quiet servers.
//!
//! The book is shared by the request path and the refill task through a sharded map whose
//! per-key lock is held for a few instructions and never across an await.

use crate::ledger::{BudgetLedger, LedgerError};
use dashmap::DashMap;
use podium_core::Micros;
use std::collections::VecDeque;

/// Sizing and timing of leases.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeaseConfig {
    /// Servers sharing the budgets (an estimate is enough; it only sizes leases).
    pub servers: u32,
    /// Lease = remaining / (`k` × servers).
    pub k: f64,
    /// Largest lease, whatever is left.
    pub max_lease: Micros,
    /// Smallest lease worth a ledger round trip (capped by what is left).
    pub min_lease: Micros,
    /// Refill once the unreserved part of the lease falls below this share of the lease size.
    pub low_water: f64,
    /// A reservation not confirmed within this long is released (the ad never played).
    pub pending_ttl_ms: i64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            servers: 1,
            k: 4.0,
            max_lease: Micros::from_units(100.0),
            min_lease: Micros::ZERO,
            low_water: 0.5,
            pending_ttl_ms: 5 * 60_000,
        }
    }
}

/// One budget key's lease on this server, for reports and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The budget's limit as this server knows it.
    pub limit: Micros,
    /// Lease held (spent and pending included), not yet given back.
    pub granted: Micros,
    /// Reserved, awaiting an impression.
    pub pending: Micros,
    /// Confirmed spend on this server.
    pub spent: Micros,
    /// What reserve() may still hand out.
    pub available: Micros,
    /// Reservations that expired unconfirmed, in total.
    pub expired: Micros,
}

#[derive(Debug, Default)]
struct Account {
    limit: i64,
    granted: i64,
    spent: i64,
    /// Pending reservations per second: (second, amount), oldest first; coalesced so a busy key
    /// holds at most TTL-in-seconds entries.
    pending: VecDeque<(i64, i64)>,
    pending_total: i64,
    /// Confirmed spend not yet recorded in the ledger.
    unreported: i64,
    /// Lease dropped here and not yet given back to the ledger.
    to_release: i64,
    /// Lease size wanted, from the last refill.
    target: i64,
    /// Largest cost a reservation was refused for since the last refill.
    refused: i64,
    expired: i64,
    retired: bool,
}

impl Account {
    fn available(&self) -> i64 {
        self.granted - self.spent - self.pending_total
    }

    /// Stops delivery on this key at once: the unreserved lease is set aside to be given back.
    fn drop_lease(&mut self) {
        let unused = self.available().max(0);
        self.granted -= unused;
        self.to_release += unused;
    }

    fn expire(&mut self, now_ms: i64, ttl_ms: i64) {
        let cutoff = (now_ms - ttl_ms).div_euclid(1000);
        while let Some(&(sec, amount)) = self.pending.front() {
            if sec >= cutoff {
                break;
            }
            self.pending.pop_front();
            self.pending_total -= amount;
            self.expired += amount;
        }
    }
}

/// This server's leases on shared budgets, by ledger key (see [`crate::budget_key`]).
#[derive(Debug, Default)]
pub struct LeaseBook {
    config: LeaseConfig,
    accounts: DashMap<String, Account>,
}

impl LeaseBook {
    /// An empty book: every reserve fails until a refill took a lease.
    pub fn new(config: LeaseConfig) -> Self {
        Self {
            config,
            accounts: DashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Reserves `cost` for a decision about to place an ad: true only if this server's lease
    /// covers it. No I/O; an unknown key (no lease taken yet) is refused.
    pub fn reserve(&self, key: &str, cost: Micros, now_ms: i64) -> bool {
        let Some(mut a) = self.accounts.get_mut(key) else {
            return false;
        };
        let cost = cost.0.max(0);
        if a.retired || a.available() < cost {
            a.refused = a.refused.max(cost);
            return false;
        }
        let sec = now_ms.div_euclid(1000);
        match a.pending.back_mut() {
            Some((s, amount)) if *s == sec => *amount += cost,
            _ => a.pending.push_back((sec, cost)),
        }
        a.pending_total += cost;
        true
    }

    /// An impression arrived for a reservation of `cost`: pending becomes spent (oldest
    /// reservations first). A confirmation after its reservation expired still counts: the money
    /// was spent.
    pub fn confirm(&self, key: &str, cost: Micros) {
        let Some(mut a) = self.accounts.get_mut(key) else {
            return;
        };
        let cost = cost.0.max(0);
        let mut left = cost;
        while left > 0 {
            let Some(front) = a.pending.front_mut() else {
                break;
            };
            let take = front.1.min(left);
            front.1 -= take;
            left -= take;
            if front.1 == 0 {
                a.pending.pop_front();
            }
        }
        a.pending_total -= cost - left;
        a.spent += cost;
        a.unreported += cost;
    }

    /// Releases reservations older than the TTL back into their leases.
    pub fn expire(&self, now_ms: i64) {
        for mut a in self.accounts.iter_mut() {
            a.expire(now_ms, self.config.pending_ttl_ms);
        }
    }

    /// How much more lease `key` should take, if it is below its low-water mark; `None` when it
    /// needs nothing (or is unknown: [`LeaseBook::refill`] starts tracking a key).
    pub fn needs(&self, key: &str) -> Option<Micros> {
        let a = self.accounts.get(key)?;
        self.want(&a).map(Micros)
    }

    fn want(&self, a: &Account) -> Option<i64> {
        if a.retired {
            return None;
        }
        let target = a.target.max(a.refused);
        let available = a.available();
        (available < (self.config.low_water * target as f64).ceil() as i64 || available < a.refused)
            .then_some(target - available)
            .filter(|&w| w > 0)
    }

    /// Sets a budget's limit after an edit. A lower limit drops this server's unreserved lease at
    /// once (given back on the next refill), so a budget set below what is spent stops here
    /// immediately; the ledger then grants nothing while allocated ≥ limit.
    pub fn set_limit(&self, key: &str, limit: Micros) {
        let mut a = self.accounts.entry(key.to_string()).or_default();
        if limit.0 < a.limit {
            a.drop_lease();
        }
        a.limit = limit.0;
    }

    /// Stops using `key` (its period ended): the unreserved lease is set aside to be given back by
    /// [`LeaseBook::settle`], which forgets the key once nothing is pending.
    pub fn retire(&self, key: &str) {
        if let Some(mut a) = self.accounts.get_mut(key) {
            a.drop_lease();
            a.retired = true;
        }
    }

    /// Off the request path (a background task, the simulator's tick): reports confirmed spend,
    /// gives back dropped leases and, if the lease is low, takes more from `ledger` for a budget
    /// of `limit`. Returns what was granted. On a ledger error nothing local is lost: the server
    /// keeps spending what is left of its lease (and no more), and a later refill catches up.
    pub async fn refill(
        &self,
        ledger: &dyn BudgetLedger,
        key: &str,
        limit: Micros,
        now_ms: i64,
    ) -> Result<Micros, LedgerError> {
        self.set_limit(key, limit);
        let (unreported, to_release) = {
            let mut a = self.accounts.get_mut(key).expect("set_limit created it");
            a.expire(now_ms, self.config.pending_ttl_ms);
            a.retired = false;
            (
                std::mem::take(&mut a.unreported),
                std::mem::take(&mut a.to_release),
            )
        };
        self.flush(ledger, key, unreported, to_release).await?;
        // A lease still above its low-water mark needs nothing: no round trip (the control loop
        // visits every line item each second).
        let enough = self
            .accounts
            .get(key)
            .is_some_and(|a| a.target > 0 && self.want(&a).is_none());
        if enough {
            return Ok(Micros::ZERO);
        }
        let allocated = ledger.allocated(key).await?;
        let remaining = (limit - allocated).0.max(0);
        let c = &self.config;
        let size = (remaining as f64 / (c.k * f64::from(c.servers.max(1)))).floor() as i64;
        let want = {
            let mut a = self.accounts.get_mut(key).expect("still tracked");
            a.target = size.clamp(c.min_lease.0.min(c.max_lease.0), c.max_lease.0.max(0));
            self.want(&a)
        };
        let Some(want) = want else {
            return Ok(Micros::ZERO);
        };
        let granted = ledger.allocate(key, limit, Micros(want)).await?;
        if let Some(mut a) = self.accounts.get_mut(key) {
            if a.limit < limit.0 {
                // The budget was lowered while we were asking: do not spend the grant.
                a.to_release += granted.0;
            } else {
                a.granted += granted.0;
                a.refused = 0;
            }
        }
        Ok(granted)
    }

    /// Reports spend and gives back dropped leases for every key; forgets retired keys that have
    /// nothing pending. Call it at period ends and on shutdown.
    pub async fn settle(&self, ledger: &dyn BudgetLedger) -> Result<(), LedgerError> {
        let keys: Vec<String> = self.accounts.iter().map(|e| e.key().clone()).collect();
        let mut result = Ok(());
        for key in keys {
            let taken = self.accounts.get_mut(&key).map(|mut a| {
                (
                    std::mem::take(&mut a.unreported),
                    std::mem::take(&mut a.to_release),
                )
            });
            let Some((unreported, to_release)) = taken else {
                continue;
            };
            if let Err(e) = self.flush(ledger, &key, unreported, to_release).await {
                result = Err(e);
                continue;
            }
            self.accounts.remove_if(&key, |_, a| {
                a.retired && a.pending_total == 0 && a.unreported == 0 && a.to_release == 0
            });
        }
        result
    }

    /// Records spend and releases leases, putting back what could not be sent.
    async fn flush(
        &self,
        ledger: &dyn BudgetLedger,
        key: &str,
        unreported: i64,
        to_release: i64,
    ) -> Result<(), LedgerError> {
        let put_back = |unreported: i64, to_release: i64| {
            if let Some(mut a) = self.accounts.get_mut(key) {
                a.unreported += unreported;
                a.to_release += to_release;
            }
        };
        if unreported != 0 {
            if let Err(e) = ledger.record_spent(key, Micros(unreported)).await {
                put_back(unreported, to_release);
                return Err(e);
            }
        }
        if to_release != 0 {
            if let Err(e) = ledger.release(key, Micros(to_release)).await {
                put_back(0, to_release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The lease of `key` on this server.
    pub fn status(&self, key: &str) -> Option<LeaseStatus> {
        self.accounts.get(key).map(|a| LeaseStatus {
            limit: Micros(a.limit),
            granted: Micros(a.granted),
            pending: Micros(a.pending_total),
            spent: Micros(a.spent),
            available: Micros(a.available().max(0)),
            expired: Micros(a.expired),
        })
    }
}
