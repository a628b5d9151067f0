//! Where predictions become money: the marketplace of line items, the targeting index that finds
//! the eligible ones, eCPM valuation by bid type, reserve prices, pricing and bid shading, and
//! filling ad breaks (pods).
//!
//! Models, features and budgets are inputs to this crate, not things it fetches.

pub mod marketplace;
pub mod pod;
pub mod reserve;
pub mod shading;
pub mod targeting;
pub mod value;

/// Longest frequency-cap window: 30 days.
pub const MAX_CAP_WINDOW_S: u64 = 30 * 86_400;

pub use marketplace::{
    Bid, CapScope, Creative, Exclusions, FloorRule, FrequencyCap, Goal, LineItem, LineItemPriors,
    Marketplace, MarketplaceError, Targeting,
};
pub use pod::{
    fill_breaks, solve_pod, AuctionType, BreakSpec, PodCandidate, PodCreative, PodOutcome,
    PodPlacement,
};
pub use reserve::{
    myerson_reserve, myerson_reserve_from_winners, static_floor, DynamicReserve,
    DynamicReserveConfig,
};
pub use shading::{BidShader, ShadingConfig, WinRateModel};
pub use targeting::{week_hour, Daypart, TargetingIndex};
pub use value::ecpm;
