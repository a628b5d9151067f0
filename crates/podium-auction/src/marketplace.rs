//! The marketplace: line items with their bids, targeting, creatives and budgets.

use podium_core::{AdvertiserId, CreativeId, Device, LineItemId, Micros};
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
}

/// Who a line item may be shown to; an empty list means "any".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targeting {
    /// ISO country codes, upper case.
    #[serde(default)]
    pub countries: Vec<String>,
    /// Devices.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Content genres, lower case.
    #[serde(default)]
    pub genres: Vec<String>,
}

/// A video creative.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creative {
    /// Creative id.
    pub id: CreativeId,
    /// Length in seconds.
    pub duration_s: u32,
}

/// Observed historical rates of a line item, served to models as candidate features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LineItemPriors {
    /// Click-through rate over the last 7 days.
    pub ctr_7d: f32,
    /// Completion rate over the last 7 days.
    pub completion_rate_7d: f32,
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

/// All line items, and the auction's floor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Marketplace {
    /// Floor price: no ad clears below this CPM.
    pub reserve_cpm: Micros,
    /// The line items.
    pub line_items: Vec<LineItem>,
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
            let amount = match li.bid {
                Bid::Cpm { cpm } => cpm,
                Bid::Cpc { cpc } => cpc,
                Bid::Cpcv { cpcv } => cpcv,
            };
            if amount <= Micros::ZERO {
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
