//! The targeting index: bitsets per targeting value, so the eligible set is a few word-wise ANDs
//! instead of a scan that tests every line item's rules.
//!
//! Each dimension keeps, per value, the line items that list it, and the line items that list
//! nothing (they match any value). A request's word is the AND over dimensions of
//! `any | by_value[request's value]`, less the line items that exclude one of its values or
//! require a segment the viewer lacks.

use crate::marketplace::{LineItem, Targeting};
use podium_core::AdRequest;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Hours in a week: dayparts are indexed by hour of the viewer's local week, Monday 00:00 = 0.
const WEEK_HOURS: usize = 7 * 24;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A time window of the viewer's local week: `start_hour` to `end_hour` (exclusive, 0–24) on
/// `days` (`mon` … `sun`; empty: every day). A window with `start_hour > end_hour` runs past
/// midnight into the next day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Daypart {
    /// Days it starts on; empty for every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// First hour, 0–23.
    pub start_hour: u8,
    /// Hour it ends before, 1–24 (or up to `start_hour` when it wraps past midnight).
    pub end_hour: u8,
}

impl Daypart {
    /// Checks days and hours.
    pub fn check(&self) -> Result<(), String> {
        if self.start_hour > 23 || self.end_hour > 24 || self.start_hour == self.end_hour {
            return Err(format!(
                "hours {}..{} are not a window (start 0-23, end 1-24, not equal)",
                self.start_hour, self.end_hour
            ));
        }
        for d in &self.days {
            if !DAY_NAMES.contains(&d.to_ascii_lowercase().as_str()) {
                return Err(format!("{d:?} is not a day (mon … sun)"));
            }
        }
        Ok(())
    }

    /// The hours of the week it covers.
    fn hours(&self) -> Vec<usize> {
        let days: Vec<usize> = if self.days.is_empty() {
            (0..7).collect()
        } else {
            self.days
                .iter()
                .filter_map(|d| DAY_NAMES.iter().position(|n| d.eq_ignore_ascii_case(n)))
                .collect()
        };
        let (start, end) = (usize::from(self.start_hour), usize::from(self.end_hour));
        let span = if end > start {
            end - start
        } else {
            24 - start + end
        };
        days.iter()
            .flat_map(|d| (0..span).map(move |h| (d * 24 + start + h) % WEEK_HOURS))
            .collect()
    }
}

/// The hour of the viewer's local week (Monday 00:00 = 0) at `now_ms`, given its UTC offset.
pub fn week_hour(now_ms: i64, utc_offset_min: Option<i32>) -> usize {
    let local_s = now_ms.div_euclid(1000) + i64::from(utc_offset_min.unwrap_or(0)) * 60;
    let hours = local_s.div_euclid(3600);
    // 1970-01-01 was a Thursday: hour 0 of the epoch is hour 72 of its week.
    (hours + 72).rem_euclid(WEEK_HOURS as i64) as usize
}

type Bits = Vec<u64>;

fn set(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

/// One targeting dimension: the line items listing each value, and those listing none.
#[derive(Clone, Debug)]
struct Dimension {
    by_value: HashMap<String, Bits>,
    any: Bits,
}

impl Dimension {
    fn new(words: usize) -> Self {
        Self {
            by_value: HashMap::new(),
            any: vec![0; words],
        }
    }

    fn add(&mut self, i: usize, values: impl IntoIterator<Item = String>) {
        let words = self.any.len();
        let mut none = true;
        for v in values {
            none = false;
            set(self.by_value.entry(v).or_insert_with(|| vec![0; words]), i);
        }
        if none {
            set(&mut self.any, i);
        }
    }

    /// The bitsets whose OR admits a request with these values.
    fn admitting<'a>(&'a self, values: impl IntoIterator<Item = &'a str>) -> Vec<&'a [u64]> {
        let mut out = vec![self.any.as_slice()];
        out.extend(
            values
                .into_iter()
                .filter_map(|v| self.by_value.get(v).map(Vec::as_slice)),
        );
        out
    }
}

/// Line items that exclude a value.
#[derive(Clone, Debug, Default)]
struct Exclusion {
    by_value: HashMap<String, Bits>,
}

impl Exclusion {
    fn add(&mut self, i: usize, words: usize, values: impl IntoIterator<Item = String>) {
        for v in values {
            set(self.by_value.entry(v).or_insert_with(|| vec![0; words]), i);
        }
    }

    fn hits<'a>(&'a self, values: impl IntoIterator<Item = &'a str>, out: &mut Vec<&'a [u64]>) {
        out.extend(
            values
                .into_iter()
                .filter_map(|v| self.by_value.get(v).map(Vec::as_slice)),
        );
    }
}

/// Bitset index over the line items of a marketplace (bit `i` is line item `i`).
#[derive(Clone, Debug)]
pub struct TargetingIndex {
    words: usize,
    len: usize,
    country: Dimension,
    region: Dimension,
    device: Dimension,
    genre: Dimension,
    rating: Dimension,
    event: Dimension,
    segment: Dimension,
    /// Per hour of the week: line items whose dayparts cover it; `daypart_any`: no dayparts.
    daypart: Vec<Bits>,
    daypart_any: Bits,
    /// Line items that may serve live streams / on-demand content.
    live_ok: Bits,
    vod_ok: Bits,
    /// Per segment: line items that require it (`segments_all`).
    required: HashMap<String, Bits>,
    exclude_country: Exclusion,
    exclude_region: Exclusion,
    exclude_device: Exclusion,
    exclude_genre: Exclusion,
    exclude_rating: Exclusion,
    exclude_segment: Exclusion,
}

fn upper(v: &[String]) -> impl Iterator<Item = String> + '_ {
    v.iter().map(|c| c.trim().to_ascii_uppercase())
}

fn lower(v: &[String]) -> impl Iterator<Item = String> + '_ {
    v.iter().map(|c| c.trim().to_ascii_lowercase())
}

impl TargetingIndex {
    /// Indexes `line_items`; positions in the slice are the ids the index returns.
    pub fn build(line_items: &[LineItem]) -> Self {
        let words = line_items.len().div_ceil(64);
        let dim = || Dimension::new(words);
        let mut x = Self {
            words,
            len: line_items.len(),
            country: dim(),
            region: dim(),
            device: dim(),
            genre: dim(),
            rating: dim(),
            event: dim(),
            segment: dim(),
            daypart: vec![vec![0; words]; WEEK_HOURS],
            daypart_any: vec![0; words],
            live_ok: vec![0; words],
            vod_ok: vec![0; words],
            required: HashMap::new(),
            exclude_country: Exclusion::default(),
            exclude_region: Exclusion::default(),
            exclude_device: Exclusion::default(),
            exclude_genre: Exclusion::default(),
            exclude_rating: Exclusion::default(),
            exclude_segment: Exclusion::default(),
        };
        for (i, li) in line_items.iter().enumerate() {
            let t = &li.targeting;
            x.country.add(i, upper(&t.countries));
            x.region.add(i, upper(&t.regions));
            x.device
                .add(i, t.devices.iter().map(|d| d.as_str().to_string()));
            x.genre.add(i, lower(&t.genres));
            x.rating.add(i, lower(&t.ratings));
            x.event.add(i, t.events.iter().cloned());
            x.segment.add(i, lower(&t.segments));
            if t.dayparts.is_empty() {
                set(&mut x.daypart_any, i);
            }
            for h in t.dayparts.iter().flat_map(Daypart::hours) {
                set(&mut x.daypart[h], i);
            }
            if t.live != Some(false) {
                set(&mut x.live_ok, i);
            }
            if t.live != Some(true) {
                set(&mut x.vod_ok, i);
            }
            for s in lower(&t.segments_all) {
                set(x.required.entry(s).or_insert_with(|| vec![0; words]), i);
            }
            let e = &t.exclude;
            x.exclude_country.add(i, words, upper(&e.countries));
            x.exclude_region.add(i, words, upper(&e.regions));
            x.exclude_device
                .add(i, words, e.devices.iter().map(|d| d.as_str().to_string()));
            x.exclude_genre.add(i, words, lower(&e.genres));
            x.exclude_rating.add(i, words, lower(&e.ratings));
            x.exclude_segment.add(i, words, lower(&e.segments));
        }
        x
    }

    /// Positions of the line items whose targeting admits the request at `now_ms`, ascending.
    pub fn eligible(&self, req: &AdRequest, now_ms: i64) -> Vec<u32> {
        self.eligible_where(req, now_ms, |_| u64::MAX)
    }

    /// As [`eligible`](Self::eligible), keeping only the line items whose bit is set in
    /// `open(w)`, the `w`-th 64-bit word of a caller's bitmap (line items that may still serve,
    /// say), so that excluding them costs one AND per 64 line items rather than a lookup each.
    pub fn eligible_where(
        &self,
        req: &AdRequest,
        now_ms: i64,
        open: impl Fn(usize) -> u64,
    ) -> Vec<u32> {
        let region = req
            .user
            .region
            .as_ref()
            .map(|r| format!("{}-{}", req.user.country, r));
        let segments = || req.user.segments.iter().map(String::as_str);
        let hour = week_hour(now_ms, req.user.utc_offset_min);
        // Each group admits a line item when any of its bitsets has its bit.
        let groups: [Vec<&[u64]>; 9] = [
            self.country.admitting([req.user.country.as_str()]),
            self.region.admitting(region.as_deref()),
            self.device.admitting([req.user.device.as_str()]),
            self.genre.admitting([req.content.genre.as_str()]),
            self.rating.admitting(req.content.rating.as_deref()),
            self.event.admitting(req.content.event_id.as_deref()),
            self.segment.admitting(segments()),
            vec![&self.daypart_any, &self.daypart[hour]],
            vec![if req.content.live {
                &self.live_ok
            } else {
                &self.vod_ok
            }],
        ];
        let mut excluded: Vec<&[u64]> = Vec::new();
        self.exclude_country
            .hits([req.user.country.as_str()], &mut excluded);
        self.exclude_region.hits(region.as_deref(), &mut excluded);
        self.exclude_device
            .hits([req.user.device.as_str()], &mut excluded);
        self.exclude_genre
            .hits([req.content.genre.as_str()], &mut excluded);
        self.exclude_rating
            .hits(req.content.rating.as_deref(), &mut excluded);
        self.exclude_segment.hits(segments(), &mut excluded);
        excluded.extend(
            self.required
                .iter()
                .filter(|(s, _)| !req.user.segments.iter().any(|u| u == *s))
                .map(|(_, b)| b.as_slice()),
        );

        let mut out = Vec::with_capacity(self.len / 4);
        for w in 0..self.words {
            let mut word = open(w);
            for g in &groups {
                word &= g.iter().fold(0, |acc, b| acc | b[w]);
                if word == 0 {
                    break;
                }
            }
            for x in &excluded {
                word &= !x[w];
            }
            while word != 0 {
                let bit = word.trailing_zeros();
                out.push((w * 64) as u32 + bit);
                word &= word - 1;
            }
        }
        out
    }
}

impl Targeting {
    /// Whether this targeting admits the request at `now_ms`, rule by rule: the reference the
    /// index must agree with, and a way to explain one line item's eligibility.
    pub fn admits(&self, req: &AdRequest, now_ms: i64) -> bool {
        let has = |list: &[String], v: &str| list.iter().any(|x| x.trim().eq_ignore_ascii_case(v));
        let open_or =
            |list: &[String], v: Option<&str>| list.is_empty() || v.is_some_and(|v| has(list, v));
        let region = req
            .user
            .region
            .as_ref()
            .map(|r| format!("{}-{}", req.user.country, r));
        let hour = week_hour(now_ms, req.user.utc_offset_min);
        let e = &self.exclude;
        open_or(&self.countries, Some(&req.user.country))
            && open_or(&self.regions, region.as_deref())
            && (self.devices.is_empty() || self.devices.contains(&req.user.device))
            && open_or(&self.genres, Some(&req.content.genre))
            && open_or(&self.ratings, req.content.rating.as_deref())
            && (self.events.is_empty()
                || req
                    .content
                    .event_id
                    .as_ref()
                    .is_some_and(|ev| self.events.contains(ev)))
            && (self.segments.is_empty()
                || req.user.segments.iter().any(|s| has(&self.segments, s)))
            && self.segments_all.iter().all(|s| {
                req.user
                    .segments
                    .iter()
                    .any(|u| u.eq_ignore_ascii_case(s.trim()))
            })
            && (self.dayparts.is_empty() || self.dayparts.iter().any(|d| d.hours().contains(&hour)))
            && self.live.is_none_or(|l| l == req.content.live)
            && !has(&e.countries, &req.user.country)
            && !region.as_deref().is_some_and(|r| has(&e.regions, r))
            && !e.devices.contains(&req.user.device)
            && !has(&e.genres, &req.content.genre)
            && !req
                .content
                .rating
                .as_deref()
                .is_some_and(|r| has(&e.ratings, r))
            && !req.user.segments.iter().any(|s| has(&e.segments, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketplace::{Bid, Creative, Exclusions};
    use podium_core::{AdBreak, BreakPosition, Content, Device, Micros, User};
    use proptest::prelude::*;

    fn li(i: usize, targeting: Targeting) -> LineItem {
        LineItem {
            id: format!("li-{i}").as_str().into(),
            advertiser_id: "a".into(),
            category: "auto".into(),
            bid: Bid::Cpm { cpm: Micros(1) },
            targeting,
            creatives: vec![Creative {
                id: "c".into(),
                duration_s: 15,
                media_url: None,
            }],
            daily_budget: Micros(1),
            priors: Default::default(),
            goal: Default::default(),
            iab_categories: Vec::new(),
            campaign_id: None,
            domain: None,
            caps: Vec::new(),
            position: Default::default(),
            pacing: Default::default(),
            budget: Default::default(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn req(
        country: &str,
        region: Option<&str>,
        device: Device,
        genre: &str,
        rating: Option<&str>,
        live: bool,
        event: Option<&str>,
        segments: &[&str],
        utc_offset_min: Option<i32>,
    ) -> AdRequest {
        AdRequest {
            request_id: "r".into(),
            user: User {
                id: "u".into(),
                country: country.into(),
                device,
                region: region.map(Into::into),
                segments: segments.iter().map(|s| s.to_string()).collect(),
                utc_offset_min,
            },
            content: Content {
                id: "c".into(),
                genre: genre.into(),
                live,
                rating: rating.map(Into::into),
                event_id: event.map(Into::into),
            },
            breaks: vec![AdBreak {
                id: "b".into(),
                position: BreakPosition::Midroll,
                max_ads: 1,
                max_duration_s: 30,
                rules: Default::default(),
            }],
            tmax: None,
            blocked_categories: Vec::new(),
            blocked_advertisers: Vec::new(),
        }
    }

    const COUNTRIES: [&str; 3] = ["US", "CA", "GB"];
    const REGIONS: [&str; 3] = ["CA", "NY", "ON"];
    const GENRES: [&str; 3] = ["drama", "sports", "news"];
    const RATINGS: [&str; 3] = ["tv-g", "tv-14", "tv-ma"];
    const SEGMENTS: [&str; 4] = ["auto-intender", "parents", "gamers", "travel"];
    const EVENTS: [&str; 2] = ["final-2026", "derby"];
    const DEVICES: [Device; 3] = [Device::Tv, Device::Mobile, Device::Desktop];

    fn pick<T: Clone>(all: &[T], mask: u8) -> Vec<T> {
        all.iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn strings(all: &[&str], mask: u8) -> Vec<String> {
        pick(all, mask).into_iter().map(String::from).collect()
    }

    prop_compose! {
        fn targeting()(
            // Mostly "any" (0), sometimes a subset.
            m in prop::collection::vec(prop_oneof![3 => Just(0u8), 2 => 1u8..16], 12),
            day in prop::option::of((0u8..7, 0u8..24, 1u8..25)),
            live in prop::option::of(any::<bool>()),
        ) -> Targeting {
            let regions: Vec<String> = pick(&REGIONS, m[1]).iter().map(|r| format!("US-{r}")).collect();
            Targeting {
                countries: strings(&COUNTRIES, m[0]),
                regions,
                devices: pick(&DEVICES, m[2]),
                genres: strings(&GENRES, m[3]),
                ratings: strings(&RATINGS, m[4]),
                dayparts: day.filter(|d| d.1 != d.2).map(|(d, s, e)| Daypart {
                    days: vec![DAY_NAMES[d as usize].to_string()],
                    start_hour: s,
                    end_hour: e,
                }).into_iter().collect(),
                live,
                events: strings(&EVENTS, m[5] & 3),
                segments: strings(&SEGMENTS, m[6]),
                segments_all: strings(&SEGMENTS, m[7] & m[8]),
                exclude: Exclusions {
                    countries: strings(&COUNTRIES, m[9] & 1),
                    regions: pick(&REGIONS, m[10] & 2).iter().map(|r| format!("US-{r}")).collect(),
                    devices: pick(&DEVICES, m[9] & 4),
                    genres: strings(&GENRES, m[11] & 1),
                    ratings: strings(&RATINGS, m[11] & 4),
                    segments: strings(&SEGMENTS, m[10] & 8),
                },
            }
        }
    }

    proptest! {
        #[test]
        fn index_agrees_with_every_rule(
            ts in prop::collection::vec(targeting(), 1..140),
            reqs in prop::collection::vec((0usize..3, prop::option::of(0usize..3), 0usize..3,
                0usize..3, prop::option::of(0usize..3), any::<bool>(), prop::option::of(0usize..2),
                0u8..16, prop::option::of(-600i32..600), 0i64..(14 * 86_400_000)), 1..20),
        ) {
            let items: Vec<LineItem> = ts.into_iter().enumerate().map(|(i, t)| li(i, t)).collect();
            let index = TargetingIndex::build(&items);
            for (c, r, d, g, rt, live, ev, segs, off, now) in reqs {
                let segs: Vec<&str> = pick(&SEGMENTS, segs);
                let rq = req(COUNTRIES[c], r.map(|r| REGIONS[r]), DEVICES[d], GENRES[g],
                    rt.map(|r| RATINGS[r]), live, ev.map(|e| EVENTS[e]), &segs, off);
                let expected: Vec<u32> = (0..items.len())
                    .filter(|&i| items[i].targeting.admits(&rq, now))
                    .map(|i| i as u32)
                    .collect();
                prop_assert_eq!(index.eligible(&rq, now), expected);
            }
        }
    }

    #[test]
    fn dayparts_follow_the_viewers_local_week() {
        // 2026-11-27 (a Friday) 02:30 UTC.
        let now = 1_795_746_600_000;
        assert_eq!(week_hour(now, None), 4 * 24 + 2);
        // Eight hours behind UTC it is still Thursday evening, 18:30.
        assert_eq!(week_hour(now, Some(-480)), 3 * 24 + 18);
        let evening = Targeting {
            dayparts: vec![Daypart {
                days: vec!["thu".into()],
                start_hour: 18,
                end_hour: 2,
            }],
            ..Default::default()
        };
        let la = req(
            "US",
            Some("CA"),
            Device::Tv,
            "drama",
            None,
            false,
            None,
            &[],
            Some(-480),
        );
        let utc = req(
            "US",
            Some("CA"),
            Device::Tv,
            "drama",
            None,
            false,
            None,
            &[],
            None,
        );
        assert!(evening.admits(&la, now));
        // Friday 02:30 is past the window's end (02:00), which wrapped from Thursday 18:00.
        assert!(!evening.admits(&utc, now));
        let index = TargetingIndex::build(&[li(0, evening)]);
        assert_eq!(index.eligible(&la, now), vec![0]);
        assert!(index.eligible(&utc, now).is_empty());
    }

    #[test]
    fn exclusions_and_required_segments_remove_line_items() {
        let t = Targeting {
            countries: vec!["US".into()],
            segments_all: vec!["parents".into(), "travel".into()],
            exclude: Exclusions {
                ratings: vec!["tv-ma".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let index = TargetingIndex::build(&[li(0, t)]);
        let both = ["parents", "travel"];
        let ok = req(
            "US",
            None,
            Device::Tv,
            "drama",
            Some("tv-14"),
            false,
            None,
            &both,
            None,
        );
        let mature = req(
            "US",
            None,
            Device::Tv,
            "drama",
            Some("tv-ma"),
            false,
            None,
            &both,
            None,
        );
        let one = req(
            "US",
            None,
            Device::Tv,
            "drama",
            None,
            false,
            None,
            &["parents"],
            None,
        );
        assert_eq!(index.eligible(&ok, 0), vec![0]);
        assert!(index.eligible(&mature, 0).is_empty());
        assert!(index.eligible(&one, 0).is_empty());
    }
}
