//! An ad opportunity as the forecast counts it: one request, with the viewer and content
//! dimensions targeting reads and what its breaks can hold.
//!
//! The unit is the request, not the break or the slot: a line item plays at most one ad per
//! request (`podium_auction::pod::fill_breaks`), so a request with a break that can hold a
//! creative is one impression a booking can count on.

use podium_core::{AdBreak, AdRequest, BreakPosition};

/// Creative lengths (seconds) the forecast keeps break capacity for; a query names one of them.
pub const DURATIONS: [u32; 9] = [6, 10, 15, 20, 30, 45, 60, 90, 120];
/// Break positions, in the order of their bits in [`Fits`].
pub const POSITIONS: [BreakPosition; 3] = [
    BreakPosition::Preroll,
    BreakPosition::Midroll,
    BreakPosition::Postroll,
];

/// Which (position, creative length) a request's breaks can hold: bit `p * 9 + d` for
/// `POSITIONS[p]` and `DURATIONS[d]`.
pub type Fits = u32;

/// The bit of a position and duration index.
pub fn fit_bit(position: usize, duration: usize) -> Fits {
    1 << (position * DURATIONS.len() + duration)
}

/// Whether one break can hold a creative of `d` seconds (floors aside): in its dynamic part or
/// in one of its fixed slots.
pub fn break_holds(b: &AdBreak, d: u32) -> bool {
    let dynamic = b.max_ads > 0 && d <= b.max_duration_s && b.rules.ad_durations.admits(d);
    dynamic || b.rules.slots.iter().any(|s| s.durations.admits(d))
}

/// What the breaks of a request can hold.
pub fn fits_of(breaks: &[AdBreak]) -> Fits {
    let mut fits = 0;
    for b in breaks {
        let p = POSITIONS.iter().position(|&x| x == b.position).unwrap_or(1);
        for (k, &d) in DURATIONS.iter().enumerate() {
            if break_holds(b, d) {
                fits |= fit_bit(p, k);
            }
        }
    }
    fits
}

/// One logged request, reduced to what the forecast reads.
#[derive(Clone, Debug)]
pub struct Opportunity {
    /// Admission time, ms since the UTC epoch.
    pub ts_ms: i64,
    /// The viewer.
    pub user_id: String,
    /// Country (ISO 3166-1 alpha-2).
    pub country: String,
    /// Device name (`tv`, `mobile`, …).
    pub device: String,
    /// Genre of the content.
    pub genre: String,
    /// Live content.
    pub live: bool,
    /// The live event the stream carries, if any: its traffic is a one-off spike.
    pub event_id: Option<String>,
    /// The viewer's offset from UTC (dayparts are in local time).
    pub utc_offset_min: i32,
    /// What the breaks can hold.
    pub fits: Fits,
    /// The whole request, kept for sampled viewers only (contention evaluates line items'
    /// targeting on it).
    pub request: Option<Box<AdRequest>>,
}

impl Opportunity {
    /// The opportunity of a request admitted at `ts_ms`; `keep` keeps the request itself.
    pub fn of(req: &AdRequest, ts_ms: i64, keep: bool) -> Self {
        Self {
            ts_ms,
            user_id: req.user.id.to_string(),
            country: req.user.country.clone(),
            device: req.user.device.as_str().to_string(),
            genre: req.content.genre.clone(),
            live: req.content.live,
            event_id: req.content.event_id.clone(),
            utc_offset_min: req.user.utc_offset_min.unwrap_or(0),
            fits: fits_of(&req.breaks),
            request: keep.then(|| Box::new(req.clone())),
        }
    }
}

/// A stable hash of a viewer id in [0, 1): viewers under the sample rate are sampled, the same
/// ones on every run.
pub fn user_draw(user_id: &str) -> f64 {
    podium_pacing::draw(user_id, 0xF0CA)
}

#[cfg(test)]
mod tests {
    use super::*;
    use podium_core::{DurationRule, PodRules, PodSlot, SlotPosition};

    fn brk(position: BreakPosition, max_ads: u32, max_s: u32, slots: &[u32]) -> AdBreak {
        AdBreak {
            id: "b".into(),
            position,
            max_ads,
            max_duration_s: max_s,
            rules: PodRules {
                slots: slots
                    .iter()
                    .map(|&d| PodSlot {
                        id: format!("s{d}"),
                        durations: DurationRule {
                            exact_s: vec![d],
                            ..Default::default()
                        },
                        floor_cpm: None,
                        position: SlotPosition::Any,
                    })
                    .collect(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn fits_follow_the_dynamic_part_and_the_slots() {
        let pre = brk(BreakPosition::Preroll, 2, 30, &[]);
        let post = brk(BreakPosition::Postroll, 0, 0, &[60]);
        let f = fits_of(&[pre, post]);
        let d = |s: u32| DURATIONS.iter().position(|&x| x == s).unwrap();
        assert_ne!(f & fit_bit(0, d(30)), 0);
        assert_ne!(f & fit_bit(0, d(15)), 0);
        assert_eq!(f & fit_bit(0, d(45)), 0, "45 s exceeds the preroll");
        assert_ne!(f & fit_bit(2, d(60)), 0, "the postroll slot holds 60 s");
        assert_eq!(f & fit_bit(2, d(30)), 0, "the slot is exactly 60 s");
        assert_eq!(f & fit_bit(1, d(15)), 0, "no midroll");
    }
}
