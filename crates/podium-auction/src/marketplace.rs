//! The marketplace: line items with their bids, targeting, creatives and budgets.

use crate::targeting::Daypart;
use podium_core::{
    AdvertiserId, BreakPosition, CreativeId, Device, LineItemId, Micros, SlotPosition,
};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

/// How a line item pays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Bid {
    /// A price per thousand impressions.
    Cpm {
        /// The CPM.
        cpm: Micros,
    },
    /// A price per click; worth `cpc × pCTR` per impression.
    Cpc {
        /// The price of one click.
        cpc: Micros,
    },
    /// A price per completed view; worth `cpcv × pCompletion` per impression.
    Cpcv {
        /// The price of one completed view.
        cpcv: Micros,
    },
    /// A price per conversion (an action after the ad); worth `cpa × pConversion` per impression.
    Cpa {
        /// The price of one conversion.
        cpa: Micros,
    },
}

impl Bid {
    /// The amount bid, whatever it is per.
    pub fn amount(self) -> Micros {
        match self {
            Bid::Cpm { cpm } => cpm,
            Bid::Cpc { cpc } => cpc,
            Bid::Cpcv { cpcv } => cpcv,
            Bid::Cpa { cpa } => cpa,
        }
    }
}

/// Who a line item may be shown to. Dimensions combine with AND; the values listed in one
/// dimension combine with OR; an empty list means "any". `exclude` removes viewers or content
/// matching any of its values, and `segments_all` requires every listed segment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targeting {
    /// ISO country codes, upper case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    /// Regions as `COUNTRY-REGION` (ISO 3166-2, `US-CA`), upper case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// Content genres, lower case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub genres: Vec<String>,
    /// Content ratings (`tv-g`, `tv-14`, …), lower case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ratings: Vec<String>,
    /// Times of the viewer's local week when it may serve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dayparts: Vec<Daypart>,
    /// `true`: live streams only; `false`: on-demand only; absent: either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
    /// Live events (by event id) it is sold against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Audience segments, any of which qualifies the viewer, lower case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
    /// Audience segments the viewer must all belong to, lower case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments_all: Vec<String>,
    /// Values that disqualify a request.
    #[serde(default, skip_serializing_if = "Exclusions::is_empty")]
    pub exclude: Exclusions,
}

/// Targeting values that disqualify a request when it has any of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusions {
    /// Countries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    /// Regions (`US-CA`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// Genres.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub genres: Vec<String>,
    /// Ratings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ratings: Vec<String>,
    /// Audience segments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
}

impl Exclusions {
    /// Whether nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self == &Exclusions::default()
    }
}

/// What a frequency cap counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapScope {
    /// Impressions of this line item.
    LineItem,
    /// Impressions of any line item of its campaign.
    Campaign,
    /// Impressions of any line item of its advertiser.
    Advertiser,
}

/// At most `max` impressions per viewer within `window_s` seconds (a sliding window).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrequencyCap {
    /// What is counted.
    pub scope: CapScope,
    /// Most impressions in the window.
    pub max: u32,
    /// Window length, seconds (86,400 for "per day").
    pub window_s: u64,
}

/// A floor for some inventory: the highest floor among the rules a request matches applies.
/// Empty lists match anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloorRule {
    /// Countries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    /// Devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// Genres.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub genres: Vec<String>,
    /// Break positions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub positions: Vec<BreakPosition>,
    /// Live (`true`) or on-demand (`false`) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
    /// The floor, CPM.
    pub cpm: Micros,
}

/// A video creative.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creative {
    /// Creative id.
    pub id: CreativeId,
    /// Length in seconds.
    pub duration_s: u32,
    /// Where the video file is served from; absent, the server's creative base URL and the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_url: Option<String>,
}

/// Observed historical rates of a line item, served to models as candidate features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LineItemPriors {
    /// Click-through rate over the last 7 days.
    pub ctr_7d: f32,
    /// Completion rate over the last 7 days.
    pub completion_rate_7d: f32,
    /// Conversions per impression over the last 7 days (values CPA bids without a model).
    #[serde(default)]
    pub conversion_rate_7d: f32,
}

/// What a line item was sold as: a guaranteed delivery commitment or best-effort demand.
///
/// Pacing does not act on it yet; it is carried so that generated and imported marketplaces keep
/// the distinction, and so that guaranteed-delivery allocation has its input when it lands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Goal {
    /// Best-effort demand: buys what it wins, up to its budget.
    #[default]
    NonGuaranteed,
    /// A contracted number of impressions per day that the publisher must deliver.
    Guaranteed {
        /// Impressions to deliver per day.
        impressions_per_day: u64,
    },
}

impl Goal {
    /// Whether this is best-effort demand (the default, left out of written files).
    pub fn is_non_guaranteed(&self) -> bool {
        matches!(self, Goal::NonGuaranteed)
    }
}

/// The unit of buying: a bid, targeting, creatives and a daily budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineItem {
    /// Line item id.
    pub id: LineItemId,
    /// Advertiser.
    pub advertiser_id: AdvertiserId,
    /// IAB-style category of the advertiser (`auto`, `finance`, …).
    pub category: String,
    /// The bid.
    pub bid: Bid,
    /// Targeting.
    #[serde(default)]
    pub targeting: Targeting,
    /// Creatives, any of which may play.
    pub creatives: Vec<Creative>,
    /// Most it may spend per day.
    pub daily_budget: Micros,
    /// Historical rates.
    #[serde(default)]
    pub priors: LineItemPriors,
    /// Guaranteed or best-effort; files written before the field existed read as best-effort.
    #[serde(default, skip_serializing_if = "Goal::is_non_guaranteed")]
    pub goal: Goal,
    /// IAB content taxonomy codes of the advertiser's category (`IAB2`, `IAB8-5`): what OpenRTB
    /// `bcat` blocks and bid responses declare in `cat`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iab_categories: Vec<String>,
    /// Campaign it belongs to (frequency caps may count per campaign).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    /// Advertiser's domain (OpenRTB `adomain`, matched by `badv` and pod deduplication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Frequency caps per viewer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<FrequencyCap>,
    /// A slot it must play in (sponsors buy the first or last spot of a break).
    #[serde(default, skip_serializing_if = "is_any")]
    pub position: SlotPosition,
    /// How its day budget is spent over the day: `{"mode": "even"}` (default), `asap`, or
    /// `pid` (with its target and gains).
    #[serde(default, skip_serializing_if = "is_even")]
    pub pacing: podium_pacing::PacingMode,
    /// Lifetime budget, flight dates and time zone of its budget days (`daily` here, when set,
    /// overrides `daily_budget`).
    #[serde(default, skip_serializing_if = "is_default_budget")]
    pub budget: podium_pacing::BudgetSpec,
}

fn is_even(m: &podium_pacing::PacingMode) -> bool {
    *m == podium_pacing::PacingMode::Even
}

fn is_default_budget(b: &podium_pacing::BudgetSpec) -> bool {
    *b == podium_pacing::BudgetSpec::default()
}

fn is_any(p: &SlotPosition) -> bool {
    *p == SlotPosition::Any
}

impl LineItem {
    /// The advertiser's domain, or its id when no domain is known.
    pub fn domain(&self) -> &str {
        self.domain
            .as_deref()
            .unwrap_or(self.advertiser_id.as_str())
    }

    /// Whether a list of blocked categories blocks it: one names its `category`, one of its IAB
    /// codes, or a parent of one (`IAB8` blocks `IAB8-5`). Case is ignored.
    pub fn blocked_by(&self, blocked: &[String]) -> bool {
        blocked.iter().any(|b| {
            b.eq_ignore_ascii_case(&self.category)
                || self.iab_categories.iter().any(|c| {
                    c.eq_ignore_ascii_case(b)
                        || (c.len() > b.len()
                            && c.as_bytes()[b.len()] == b'-'
                            && c[..b.len()].eq_ignore_ascii_case(b))
                })
        })
    }

    /// The categories a bid response declares: the IAB codes, else the category itself.
    pub fn declared_categories(&self) -> Vec<String> {
        if self.iab_categories.is_empty() {
            vec![self.category.clone()]
        } else {
            self.iab_categories.clone()
        }
    }

    /// The campaign, or the line item itself when it names none.
    pub fn campaign(&self) -> &str {
        self.campaign_id.as_deref().unwrap_or(self.id.as_str())
    }
}

/// A marketplace file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MarketplaceError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a valid marketplace.
    #[error("{path}: {message}")]
    Invalid {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// All line items, and the auction's rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Marketplace {
    /// Floor price: no ad clears below this CPM.
    pub reserve_cpm: Micros,
    /// The line items.
    pub line_items: Vec<LineItem>,
    /// Floors by inventory, above `reserve_cpm`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub floors: Vec<FloorRule>,
    /// How winners pay.
    #[serde(default)]
    pub auction: crate::pod::AuctionType,
    /// No two ads of one advertiser category in a pod (competitive separation), whatever the
    /// request's own deduplication rules.
    #[serde(default = "yes")]
    pub competitive_separation: bool,
    /// Reserve learned per segment from recent winning bids; absent, only static floors apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_reserve: Option<crate::reserve::DynamicReserveConfig>,
}

fn yes() -> bool {
    true
}

impl Marketplace {
    /// Checks invariants: unique ids, at least one creative of positive duration, positive bids.
    pub fn check(&self) -> Result<(), String> {
        let mut ids = HashSet::new();
        for (i, li) in self.line_items.iter().enumerate() {
            if !ids.insert(&li.id) {
                return Err(format!("line_items[{i}].id: duplicate id {}", li.id));
            }
            if li.creatives.is_empty() {
                return Err(format!(
                    "line_items[{i}].creatives: line item {} has none",
                    li.id
                ));
            }
            if let Some(c) = li.creatives.iter().find(|c| c.duration_s == 0) {
                return Err(format!(
                    "line_items[{i}].creatives: creative {} has zero duration",
                    c.id
                ));
            }
            if li.bid.amount() <= Micros::ZERO {
                return Err(format!("line_items[{i}].bid: must be positive"));
            }
            if li.goal
                == (Goal::Guaranteed {
                    impressions_per_day: 0,
                })
            {
                return Err(format!(
                    "line_items[{i}].goal: a guaranteed goal needs impressions_per_day > 0"
                ));
            }
            for (j, c) in li.caps.iter().enumerate() {
                if c.max == 0 || c.window_s == 0 || c.window_s > crate::MAX_CAP_WINDOW_S {
                    return Err(format!(
                        "line_items[{i}].caps[{j}]: max must be positive and window_s between 1 and {}",
                        crate::MAX_CAP_WINDOW_S
                    ));
                }
            }
            li.budget
                .validate()
                .map_err(|e| format!("line_items[{i}].budget: {e}"))?;
            for (j, d) in li.targeting.dayparts.iter().enumerate() {
                d.check()
                    .map_err(|m| format!("line_items[{i}].targeting.dayparts[{j}]: {m}"))?;
            }
        }
        for (i, f) in self.floors.iter().enumerate() {
            if f.cpm < Micros::ZERO {
                return Err(format!("floors[{i}].cpm: must not be negative"));
            }
        }
        if self.reserve_cpm < Micros::ZERO {
            return Err("reserve_cpm: must not be negative".into());
        }
        if let Some(d) = &self.dynamic_reserve {
            d.check().map_err(|m| format!("dynamic_reserve: {m}"))?;
        }
        Ok(())
    }

    /// Reads and checks a marketplace JSON file.
    pub fn read(path: &Path) -> Result<Self, MarketplaceError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| MarketplaceError::Io {
            path: p.clone(),
            source: e,
        })?;
        let m: Marketplace =
            serde_json::from_str(&text).map_err(|e| MarketplaceError::Invalid {
                path: p.clone(),
                message: e.to_string(),
            })?;
        m.check()
            .map_err(|message| MarketplaceError::Invalid { path: p, message })?;
        Ok(m)
    }

    /// Writes the marketplace as JSON.
    pub fn write(&self, path: &Path) -> Result<(), MarketplaceError> {
        let text = serde_json::to_string_pretty(self).expect("marketplace serialises");
        std::fs::write(path, text).map_err(|e| MarketplaceError::Io {
            path: path.display().to_string(),
            source: e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"{"reserve_cpm": 2000000, "line_items": [{"id": "li-1",
        "advertiser_id": "adv-1", "category": "auto", "bid": {"type": "cpm", "cpm": 10000000},
        "creatives": [{"id": "c", "duration_s": 15}], "daily_budget": 1000000000}]}"#;

    #[test]
    fn files_without_a_goal_read_as_best_effort_and_goals_round_trip() {
        let mut m: Marketplace = serde_json::from_str(ONE).unwrap();
        let mut li = m.line_items[0].clone();
        li.iab_categories = vec!["IAB8-5".into()];
        assert!(
            li.blocked_by(&["iab8".into()]),
            "a parent blocks its children"
        );
        assert!(li.blocked_by(&["IAB8-5".into()]));
        assert!(li.blocked_by(&["AUTO".into()]), "the category itself");
        assert!(!li.blocked_by(&["IAB8-51".into(), "IAB8-".into(), "IAB2".into()]));
        assert!(m.competitive_separation, "on unless a file turns it off");
        assert_eq!(m.line_items[0].goal, Goal::NonGuaranteed);
        // Best-effort is the default and is left out, so existing files are written unchanged.
        assert!(!serde_json::to_string(&m).unwrap().contains("goal"));
        m.line_items[0].goal = Goal::Guaranteed {
            impressions_per_day: 50_000,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains(r#""goal":{"type":"guaranteed","impressions_per_day":50000}"#));
        assert_eq!(serde_json::from_str::<Marketplace>(&text).unwrap(), m);
        m.check().unwrap();
        m.line_items[0].goal = Goal::Guaranteed {
            impressions_per_day: 0,
        };
        assert!(m.check().unwrap_err().contains("line_items[0].goal"));
    }
}
