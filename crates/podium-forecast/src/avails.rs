//! The avails answer: how many opportunities a targeting will see over a window, how many the
//! booked guaranteed line items competing for them are already promised, and what is left to
//! book, with a frequency cap honoured.
//!
//! Contention is the pacing plan's allocation ([`podium_pacing::hwm_plan`], high-water mark):
//! the sampled viewers' requests at the window's hours of the week stand for the window's
//! supply (each weighted so that an hour of the week's sample adds up to its forecast), every
//! booked guaranteed line item whose flight overlaps the window asks for its daily goal over
//! the days of the overlap, and each sampled request is eligible for the line items whose
//! targeting and creatives it admits. The plan's allocation of the query's share of supply is
//! what is promised.

use crate::model::{iso, Compiled, ForecastError, TrafficModel, Window, HOUR_MS, WEEK};
use crate::opportunity::break_holds;
use crate::query::Targeting;
use podium_auction::{Goal, LineItem, TargetingIndex};
use podium_pacing::{hwm_plan, Contract, SupplySample};
use serde::Serialize;
use std::collections::HashMap;

/// A frequency cap on the booking: at most `max` per viewer per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cap {
    /// Most opportunities per viewer per period.
    pub max: u32,
    /// Period length, hours (24: a day, 168: a week).
    pub period_hours: i64,
}

impl Cap {
    /// Parses `3/day`, `10/week`, `1/hour`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("cap {text:?} is not N/hour, N/day or N/week");
        let (n, p) = text.trim().split_once('/').ok_or_else(bad)?;
        let max: u32 = n.trim().parse().map_err(|_| bad())?;
        if max == 0 {
            return Err(format!(
                "cap {text:?}: the most per period must be at least 1"
            ));
        }
        let period_hours = match p.trim().to_ascii_lowercase().as_str() {
            "hour" | "h" => 1,
            "day" | "d" => 24,
            "week" | "w" => 168,
            _ => return Err(bad()),
        };
        Ok(Self { max, period_hours })
    }
}

/// What is asked.
#[derive(Clone, Debug)]
pub struct AvailsQuery {
    /// Which opportunities.
    pub targeting: Targeting,
    /// When.
    pub window: Window,
    /// The booking's frequency cap.
    pub cap: Option<Cap>,
    /// Impressions the booking would ask for (the answer says whether they fit).
    pub impressions: Option<u64>,
}

/// A booked line item competing for the query's supply.
#[derive(Clone, Debug, Serialize)]
pub struct Competitor {
    /// Line item id.
    pub line_item: String,
    /// Its goal over the window (daily goal × days of the window in its flight).
    pub demand: f64,
    /// Of it, what the plan takes from the query's supply.
    pub from_this_supply: f64,
    /// Whether the plan cannot meet its goal from all of its supply.
    pub under_supplied: bool,
}

/// The answer.
#[derive(Clone, Debug, Serialize)]
pub struct Avails {
    /// The query as read.
    pub targeting: Targeting,
    /// Window forecast, RFC 3339.
    pub start: String,
    /// End of the window forecast.
    pub end: String,
    /// Opportunities (requests with a break that can hold the creative): a line item plays at
    /// most one ad per request.
    pub opportunities: f64,
    /// 80 % band of `opportunities`.
    pub opportunities_low: f64,
    /// 80 % band of `opportunities`.
    pub opportunities_high: f64,
    /// Of them, expected from calendar events.
    pub from_events: f64,
    /// Calendar events in the window.
    pub events: Vec<String>,
    /// With the cap, what one line item could take if nothing were promised.
    pub capped_opportunities: Option<f64>,
    /// Promised to booked guaranteed line items (their plan's share of this supply).
    pub promised: f64,
    /// Left to book: `opportunities − promised`, and capped when a cap is given.
    pub available: f64,
    /// 80 % band of `available`.
    pub available_low: f64,
    /// 80 % band of `available`.
    pub available_high: f64,
    /// Whether `impressions` fit in `available_low` / `available` (when asked).
    pub bookable: Option<String>,
    /// Distinct viewers over the window's length (from the sample of viewers).
    pub unique_viewers: f64,
    /// The booked line items competing for this supply.
    pub competing: Vec<Competitor>,
    /// Relative error of this forecast made 1–4 weeks earlier, against what happened.
    pub backtest_errors: Vec<f64>,
    /// Days of history, and where it ends.
    pub history_days: f64,
    /// Where the history ends and the forecast starts.
    pub origin: String,
    /// What the reader should know.
    pub notes: Vec<String>,
}

/// Answers an avails query; `market` holds the booked line items (guaranteed ones compete).
pub fn avails(
    model: &TrafficModel,
    q: &AvailsQuery,
    market: Option<&[LineItem]>,
) -> Result<Avails, ForecastError> {
    let compiled = model.compile(&q.targeting)?;
    let (from, to, notes) = model.check_window(q.window)?;
    let vol = model.forecast_hours(&compiled, from, to, notes)?;
    let mut notes = vol.notes.clone();

    let (promised_share, competing) = match market {
        Some(items) => contention(model, &compiled, from, to, items, &mut notes)?,
        None => {
            notes.push("no marketplace given: nothing counted as promised".into());
            (0.0, Vec::new())
        }
    };
    let keep = 1.0 - promised_share;
    let (capped_share, capped_all) = match q.cap {
        Some(cap) => {
            let (share, n) = model.cap_share(&compiled, cap.max, cap.period_hours, keep);
            let (all, _) = model.cap_share(&compiled, cap.max, cap.period_hours, 1.0);
            if n < 30 {
                notes.push(format!(
                    "the cap's effect rests on {n} sampled opportunities only; it is rough"
                ));
            }
            (share, Some(all * vol.total))
        }
        None => (keep, None),
    };
    let scale = |x: f64| x * capped_share;
    let available = scale(vol.total);
    let bookable = q.impressions.map(|n| {
        let n = n as f64;
        if n <= scale(vol.low) {
            "yes: within the low end of the band".to_string()
        } else if n <= available {
            "at risk: within the forecast but above the low end of its band".to_string()
        } else {
            "no: more than is available".to_string()
        }
    });
    let (unique_viewers, _) = model.reach(&compiled, (to - from) as usize);
    let mut out = Avails {
        targeting: q.targeting.clone(),
        start: iso(vol.from_ms),
        end: iso(vol.to_ms),
        opportunities: vol.total.round(),
        opportunities_low: vol.low.round(),
        opportunities_high: vol.high.round(),
        from_events: vol.events.round(),
        events: vol.event_list.clone(),
        capped_opportunities: capped_all.map(f64::round),
        promised: (vol.total * promised_share).round(),
        available: available.round(),
        available_low: scale(vol.low).round(),
        available_high: scale(vol.high).round(),
        bookable,
        unique_viewers: unique_viewers.round(),
        competing,
        backtest_errors: vol.backtest_errors.clone(),
        history_days: model.history_days(),
        origin: iso(model.origin_ms()),
        notes,
    };
    scale_competitors(&mut out);
    Ok(out)
}

/// The plan's share of the query's supply promised to booked guaranteed line items over model
/// hours `[from, to)`, and each competitor's part.
fn contention(
    model: &TrafficModel,
    q: &Compiled,
    from: i64,
    to: i64,
    items: &[LineItem],
    notes: &mut Vec<String>,
) -> Result<(f64, Vec<Competitor>), ForecastError> {
    let (start_ms, end_ms) = (
        (model.first_hour + from) * HOUR_MS,
        (model.first_hour + to) * HOUR_MS,
    );
    // Booked: guaranteed, with a flight overlapping the window.
    let booked: Vec<(&LineItem, f64)> = items
        .iter()
        .filter_map(|li| {
            let Goal::Guaranteed {
                impressions_per_day,
            } = li.goal
            else {
                return None;
            };
            let s = li.budget.flight_start_ms.unwrap_or(i64::MIN).max(start_ms);
            let e = li.budget.flight_end_ms.unwrap_or(i64::MAX).min(end_ms);
            (e > s).then(|| {
                let days = (e - s) as f64 / (24 * HOUR_MS) as f64;
                (li, impressions_per_day as f64 * days)
            })
        })
        .collect();
    if booked.is_empty() {
        notes.push("no booked guaranteed line item runs in the window".into());
        return Ok((0.0, Vec::new()));
    }
    let lis: Vec<LineItem> = booked.iter().map(|(li, _)| (*li).clone()).collect();
    let index = TargetingIndex::build(&lis);

    // Forecast traffic of each hour of the week in the window (all of it), and the sampled
    // requests of that hour of the week that stand for it.
    let all = model.compile(&Targeting::default())?;
    let all_series = model.baseline_series(&all);
    let forecast = model.seasonal(&all_series, model.origin, from, to);
    let mut per_how = [0.0f64; WEEK];
    for (k, f) in forecast.iter().enumerate() {
        per_how[(from + k as i64).rem_euclid(WEEK as i64) as usize] += f;
    }
    // Regular traffic stands for regular supply: past live events are not in the baseline.
    let rows: Vec<_> = model
        .recent_sample()
        .filter(|r| r.request.content.event_id.is_none() && per_how[r.hour as usize % WEEK] > 0.0)
        .collect();
    let mut count_how = [0u32; WEEK];
    for r in &rows {
        count_how[r.hour as usize % WEEK] += 1;
    }
    if rows.is_empty() {
        notes.push("no sampled request at the window's hours: contention not estimated".into());
        return Ok((0.0, Vec::new()));
    }
    // Group sampled requests by (eligible line items, in the query): the plan's supply.
    let mut groups: HashMap<(Vec<u32>, bool), f64> = HashMap::new();
    for r in &rows {
        let how = r.hour as usize % WEEK;
        let w = per_how[how] / f64::from(count_how[how]);
        let ts = (model.first_hour + i64::from(r.hour)) * HOUR_MS + HOUR_MS / 2;
        let mut eligible = index.eligible(&r.request, ts);
        eligible.retain(|&i| {
            lis[i as usize].creatives.iter().any(|c| {
                r.request
                    .breaks
                    .iter()
                    .any(|b| break_holds(b, c.duration_s))
            })
        });
        eligible.sort_unstable();
        let in_q = model.matches(q, r.cell, r.hour);
        *groups.entry((eligible, in_q)).or_default() += w;
    }
    let groups: Vec<((Vec<u32>, bool), f64)> = {
        let mut g: Vec<_> = groups.into_iter().collect();
        g.sort_by(|a, b| a.0.cmp(&b.0));
        g
    };
    let contracts: Vec<Contract<u32>> = booked
        .iter()
        .enumerate()
        .map(|(i, (_, d))| Contract {
            id: i as u32,
            demand: *d,
        })
        .collect();
    let supply: Vec<SupplySample<u32>> = groups
        .iter()
        .map(|((e, _), w)| SupplySample {
            eligible: e.clone(),
            weight: *w,
        })
        .collect();
    let plan = hwm_plan(&contracts, &supply);
    let mut taken = vec![0.0; booked.len()];
    let (mut q_supply, mut q_promised) = (0.0, 0.0);
    for ((eligible, in_q), w) in &groups {
        if !in_q {
            continue;
        }
        q_supply += w;
        let mut left = 1.0f64;
        for id in &plan.order {
            if eligible.contains(id) {
                let share = plan.rates.get(id).copied().unwrap_or(0.0).min(left);
                taken[*id as usize] += share * w;
                left -= share;
            }
        }
        q_promised += (1.0 - left) * w;
    }
    let share = if q_supply > 0.0 {
        q_promised / q_supply
    } else {
        0.0
    };
    let mut competing: Vec<Competitor> = booked
        .iter()
        .enumerate()
        .filter(|(i, _)| taken[*i] > 0.0)
        .map(|(i, (li, demand))| Competitor {
            line_item: li.id.to_string(),
            demand: demand.round(),
            // The sample stands for the query's supply in proportion; scale to the forecast.
            from_this_supply: taken[i],
            under_supplied: plan.infeasible.contains(&(i as u32)),
        })
        .collect();
    competing.sort_by(|a, b| b.from_this_supply.total_cmp(&a.from_this_supply));
    // What each takes, as a share of the query's sampled supply, applied by the caller to the
    // query's own forecast; kept in the sample's units here and rescaled to shares.
    for c in &mut competing {
        c.from_this_supply = if q_supply > 0.0 {
            c.from_this_supply / q_supply
        } else {
            0.0
        };
    }
    notes.push(format!(
        "contention: {} booked guaranteed line items in the window, planned over {} sampled requests ({} window)",
        booked.len(),
        rows.len(),
        if end_ms - start_ms >= 7 * 24 * HOUR_MS { "a week or more of" } else { "part of a week of" }
    ));
    Ok((share, competing))
}

/// Scales each competitor's share of the query's supply to opportunities.
fn scale_competitors(a: &mut Avails) {
    for c in &mut a.competing {
        c.from_this_supply = (c.from_this_supply * a.opportunities).round();
    }
}
