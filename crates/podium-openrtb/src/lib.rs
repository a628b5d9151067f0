//! Podium's wire formats for programmatic video: an OpenRTB 2.6 bid request parsed into a
//! validated [`podium_core::AdRequest`] (ad pods included), the engine's
//! [`podium_core::Decision`] written back as an OpenRTB 2.6 bid response, and VAST 4.2 documents
//! for the ads it places.
//!
//! This crate does no I/O and makes no decision: it translates at the edge, and names the field
//! at fault when it cannot. Creative lookup (markup, media files, advertiser domains) belongs to
//! the caller, which hands it in through closures and plain structs.

#![warn(missing_docs)]

mod country;
pub mod request;
pub mod response;
pub mod vast;

pub use request::{
    parse_bid_request, AuctionKind, BidPlan, BidRequestPlan, BreakImps, ImpInfo, NoBidReason,
};
pub use response::{bid_response, check_response, BidAd};
pub use vast::{
    empty_vast, vast_document, UniversalAdId, VastAd, VastDelivery, VastEvent, VastMedia,
};

/// Why an OpenRTB message was refused (an HTTP 400), naming the field at fault as a JSON path
/// into the message, e.g. `imp[0].video.rqddurs`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct WireError {
    /// JSON path of the offending field (`body` when the message as a whole is at fault).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl WireError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
