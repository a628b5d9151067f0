//! Identifier newtypes, so that a line item id can never be passed where a creative id is meant.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a string as this id.
            pub fn new(s: impl AsRef<str>) -> Self {
                Self(Arc::from(s.as_ref()))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }
    };
}

string_id!(
    /// The caller's id of one ad request, echoed in the response and the decision log.
    RequestId
);
string_id!(
    /// A viewer (or household) id; experiment assignment and frequency caps hash it.
    UserId
);
string_id!(
    /// A piece of content (title, episode, live event) the ads run in.
    ContentId
);
string_id!(
    /// One ad break of a request, as the caller named it.
    BreakId
);
string_id!(
    /// A line item: the unit of buying that carries a bid, targeting and a budget.
    LineItemId
);
string_id!(
    /// A creative (one video ad of a given duration) of a line item.
    CreativeId
);
string_id!(
    /// An advertiser; pods never hold two ads of one advertiser.
    AdvertiserId
);
