//! What the engine answers: the ads of each break, the models that chose them, and how long it took.

use crate::ids::{AdvertiserId, BreakId, CreativeId, LineItemId, RequestId};
use crate::money::Micros;
use serde::{Deserialize, Serialize};

/// One ad placed in a break.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacedAd {
    /// The winning line item.
    pub line_item_id: LineItemId,
    /// The creative that plays.
    pub creative_id: CreativeId,
    /// Its advertiser.
    pub advertiser_id: AdvertiserId,
    /// Length of the creative in seconds.
    pub duration_s: u32,
    /// The clearing price, as a CPM.
    pub price_cpm: Micros,
    /// What the candidate was worth to the auction (its eCPM), as a CPM.
    pub ecpm: Micros,
    /// The fixed slot of a structured pod it fills; `None` in the dynamic part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// The pacing multiplier its bid was computed with (`ecpm` = value × multiplier).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub multiplier: f64,
}

fn one() -> f64 {
    1.0
}

fn is_one(m: &f64) -> bool {
    *m == 1.0
}

/// The ads of one break, in play order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BreakDecision {
    /// The break this answers.
    pub break_id: BreakId,
    /// The ads, in play order; empty means no fill.
    pub ads: Vec<PlacedAd>,
}

/// Which version of a model served, and through which tier (0 = the model itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUse {
    /// Model name.
    pub name: String,
    /// Version that served.
    pub version: String,
    /// 0 when the model answered; 1 when its fallback prior did.
    pub tier: u8,
}

/// Wall time spent in each stage of the pipeline, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTimings {
    /// Admission: validation done, deadline fixed, snapshot pinned.
    pub admit_us: u64,
    /// Feature hydration.
    pub hydrate_us: u64,
    /// Targeting and budget filtering.
    pub retrieve_us: u64,
    /// Early ranking of all eligible candidates.
    pub rank_us: u64,
    /// Full scoring of the top K.
    pub score_us: u64,
    /// eCPM valuation.
    pub value_us: u64,
    /// Pricing and pod construction.
    pub pod_us: u64,
    /// Whole decision.
    pub total_us: u64,
}

impl StageTimings {
    /// Each stage's name and time, in pipeline order (the stages run one after another).
    pub fn stages(&self) -> [(&'static str, u64); 7] {
        [
            ("admit", self.admit_us),
            ("retrieve", self.retrieve_us),
            ("hydrate", self.hydrate_us),
            ("rank", self.rank_us),
            ("score", self.score_us),
            ("value", self.value_us),
            ("pod", self.pod_us),
        ]
    }
}

/// The engine's answer to one ad request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The request this answers.
    pub request_id: RequestId,
    /// One entry per requested break, in request order.
    pub breaks: Vec<BreakDecision>,
    /// Models that took part.
    pub model_versions: Vec<ModelUse>,
    /// Stage timings.
    pub timings: StageTimings,
    /// Number of line items that passed targeting and budget checks.
    pub eligible: usize,
    /// Stages that ran out of time or failed and fell back (`hydrate`, `score:ctr`, …).
    pub degraded: Vec<String>,
    /// Experiment arms that applied, as `layer:arm`; `holdout` for a held-out user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub experiments: Vec<String>,
}
