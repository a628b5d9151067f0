//! The targeting index: bitsets per targeting value, so the eligible set is a few word-wise ANDs
//! instead of a scan that tests every line item's rules.

use crate::marketplace::LineItem;
use podium_core::AdRequest;
use std::collections::HashMap;

#[derive(Clone, Debug, Default)]
struct Dimension {
    by_value: HashMap<String, Vec<u64>>,
    any: Vec<u64>,
}

impl Dimension {
    fn matching<'a>(&'a self, value: &str) -> (&'a [u64], Option<&'a [u64]>) {
        (&self.any, self.by_value.get(value).map(Vec::as_slice))
    }
}

/// Bitset index over the line items of a marketplace (bit `i` is line item `i`).
#[derive(Clone, Debug)]
pub struct TargetingIndex {
    words: usize,
    len: usize,
    country: Dimension,
    device: Dimension,
    genre: Dimension,
}

fn set(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

impl TargetingIndex {
    /// Indexes `line_items`; positions in the slice are the ids the index returns.
    pub fn build(line_items: &[LineItem]) -> Self {
        let words = line_items.len().div_ceil(64);
        let mut index = Self {
            words,
            len: line_items.len(),
            country: Dimension {
                any: vec![0; words],
                ..Default::default()
            },
            device: Dimension {
                any: vec![0; words],
                ..Default::default()
            },
            genre: Dimension {
                any: vec![0; words],
                ..Default::default()
            },
        };
        for (i, li) in line_items.iter().enumerate() {
            let t = &li.targeting;
            let add = |dim: &mut Dimension, values: Vec<String>| {
                if values.is_empty() {
                    set(&mut dim.any, i);
                }
                for v in values {
                    set(dim.by_value.entry(v).or_insert_with(|| vec![0; words]), i);
                }
            };
            add(
                &mut index.country,
                t.countries.iter().map(|c| c.to_ascii_uppercase()).collect(),
            );
            add(
                &mut index.device,
                t.devices.iter().map(|d| d.as_str().to_string()).collect(),
            );
            add(
                &mut index.genre,
                t.genres.iter().map(|g| g.to_ascii_lowercase()).collect(),
            );
        }
        index
    }

    /// Positions of the line items whose targeting admits the request, in ascending order.
    pub fn eligible(&self, req: &AdRequest) -> Vec<u32> {
        self.eligible_where(req, |_| u64::MAX)
    }

    /// As [`eligible`](Self::eligible), keeping only the line items whose bit is set in
    /// `open(w)`, the `w`-th 64-bit word of a caller's bitmap (line items that may still serve,
    /// say), so that excluding them costs one AND per 64 line items rather than a lookup each.
    pub fn eligible_where(&self, req: &AdRequest, open: impl Fn(usize) -> u64) -> Vec<u32> {
        let dims = [
            self.country.matching(&req.user.country),
            self.device.matching(req.user.device.as_str()),
            self.genre.matching(&req.content.genre),
        ];
        let mut out = Vec::with_capacity(self.len / 4);
        for w in 0..self.words {
            let mut word = open(w);
            for (any, exact) in &dims {
                word &= any[w] | exact.map_or(0, |e| e[w]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketplace::{Bid, Creative, Targeting};
    use podium_core::{AdBreak, BreakPosition, Content, Device, Micros, User};

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
            }],
            daily_budget: Micros(1),
            priors: Default::default(),
            goal: Default::default(),
        }
    }

    fn req(country: &str, device: Device, genre: &str) -> AdRequest {
        AdRequest {
            request_id: "r".into(),
            user: User {
                id: "u".into(),
                country: country.into(),
                device,
                region: None,
                segments: Vec::new(),
                utc_offset_min: None,
            },
            content: Content {
                id: "c".into(),
                genre: genre.into(),
                live: false,
                rating: None,
                event_id: None,
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

    fn matches(t: &Targeting, r: &AdRequest) -> bool {
        (t.countries.is_empty() || t.countries.contains(&r.user.country))
            && (t.devices.is_empty() || t.devices.contains(&r.user.device))
            && (t.genres.is_empty() || t.genres.contains(&r.content.genre))
    }

    #[test]
    fn agrees_with_a_scan_of_every_rule() {
        let countries = ["US", "CA", "GB"];
        let genres = ["drama", "sports", "news"];
        let devices = [Device::Tv, Device::Mobile, Device::Desktop];
        let items: Vec<LineItem> = (0..150)
            .map(|i| {
                let pick = |n: usize| (i / n) % 4;
                li(
                    i,
                    Targeting {
                        countries: if pick(1) == 3 {
                            vec![]
                        } else {
                            vec![countries[pick(1)].into()]
                        },
                        devices: if pick(4) == 3 {
                            vec![]
                        } else {
                            vec![devices[pick(4)], Device::Tablet]
                        },
                        genres: if pick(16) == 3 {
                            vec![]
                        } else {
                            vec![genres[pick(16)].into(), "kids".into()]
                        },
                    },
                )
            })
            .collect();
        let index = TargetingIndex::build(&items);
        for c in countries {
            for d in devices {
                for g in genres {
                    let r = req(c, d, g);
                    let expected: Vec<u32> = (0..items.len())
                        .filter(|&i| matches(&items[i].targeting, &r))
                        .map(|i| i as u32)
                        .collect();
                    assert_eq!(index.eligible(&r), expected, "{c} {d:?} {g}");
                }
            }
        }
    }
}
