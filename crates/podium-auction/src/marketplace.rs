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
