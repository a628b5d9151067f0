//! Money as integer micro-units of the currency, never floating-point dollars.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, AddAssign, Sub};

/// An amount of money in millionths of the currency unit (1 USD = 1,000,000 micros).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Micros(pub i64);

impl Micros {
    /// Zero money.
    pub const ZERO: Micros = Micros(0);

    /// Converts a decimal amount (e.g. a CPM of 12.5 dollars), rounding to the nearest micro.
    pub fn from_units(units: f64) -> Micros {
        Micros((units * 1e6).round() as i64)
    }

    /// The amount in currency units, for display and wire formats that want decimals.
    pub fn as_units(self) -> f64 {
        self.0 as f64 / 1e6
    }

    /// The cost of one impression at this CPM (price per thousand impressions).
    pub fn cpm_to_impression_cost(self) -> Micros {
        Micros(self.0 / 1000)
    }
}

impl Add for Micros {
    type Output = Micros;
    fn add(self, rhs: Micros) -> Micros {
        Micros(self.0.saturating_add(rhs.0))
    }
}

impl AddAssign for Micros {
    fn add_assign(&mut self, rhs: Micros) {
        self.0 = self.0.saturating_add(rhs.0);
    }
}

impl Sub for Micros {
    type Output = Micros;
    fn sub(self, rhs: Micros) -> Micros {
        Micros(self.0.saturating_sub(rhs.0))
    }
}

impl fmt::Debug for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6}", self.as_units())
    }
}

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6}", self.as_units())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_units_exactly_for_cent_amounts() {
        assert_eq!(Micros::from_units(12.34), Micros(12_340_000));
        assert_eq!(Micros(12_340_000).as_units(), 12.34);
        assert_eq!(Micros(12_000_000).cpm_to_impression_cost(), Micros(12_000));
    }

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        assert_eq!(Micros(i64::MAX) + Micros(1), Micros(i64::MAX));
        assert_eq!(Micros(i64::MIN) - Micros(1), Micros(i64::MIN));
    }
}
