//! Podium's shared vocabulary: ids, money, deadlines, the validated ad request, the feature frame
//! that models read, and the decision that comes back.
//!
//! This crate depends on no other Podium crate and does no I/O. Wire formats (native JSON,
//! OpenRTB, VAST) are parsed elsewhere, at the edge, into these types.

pub mod deadline;
pub mod decision;
pub mod frame;
pub mod ids;
pub mod money;
pub mod request;

pub use deadline::Deadline;
pub use decision::{BreakDecision, Decision, ModelUse, PlacedAd, StageTimings};
pub use frame::{FeatureFrame, FrameSchema};
pub use ids::{AdvertiserId, BreakId, ContentId, CreativeId, LineItemId, RequestId, UserId};
pub use money::Micros;
pub use request::{
    AdBreak, AdRequest, BreakPosition, Content, DedupeKey, Device, DurationRule, PodRules, PodSlot,
    RequestError, SlotPosition, User,
};
