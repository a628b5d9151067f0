//! Where predictions become money: the marketplace of line items, the targeting index that finds
//! the eligible ones, eCPM valuation by bid type, pricing, and filling ad breaks (pods).
//!
//! Models, features and budgets are inputs to this crate, not things it fetches.

pub mod marketplace;
pub mod pod;
pub mod targeting;
pub mod value;

pub use marketplace::{
    Bid, Creative, Goal, LineItem, LineItemPriors, Marketplace, MarketplaceError, Targeting,
};
pub use pod::{
    fill_breaks, solve_pod, AuctionType, BreakSpec, PodCandidate, PodCreative, PodOutcome,
    PodPlacement,
};
pub use targeting::TargetingIndex;
pub use value::ecpm;
