//! Valuation: what one impression of a candidate is worth, as an eCPM, from its bid type and the
//! models' predictions.

use crate::marketplace::Bid;
use podium_core::Micros;

/// The eCPM of a candidate: CPM as bid; CPC × pCTR × 1000; CPCV × pCompletion × 1000;
/// CPA × pConversion × 1000. A NaN or out-of-range prediction is clamped to [0, 1] so a broken
/// model cannot mint money.
pub fn ecpm(bid: Bid, p_click: f32, p_complete: f32, p_conversion: f32) -> Micros {
    let clamp = |p: f32| {
        if p.is_nan() {
            0.0
        } else {
            p.clamp(0.0, 1.0) as f64
        }
    };
    match bid {
        Bid::Cpm { cpm } => cpm,
        Bid::Cpc { cpc } => Micros((cpc.0 as f64 * clamp(p_click) * 1000.0).round() as i64),
        Bid::Cpcv { cpcv } => Micros((cpcv.0 as f64 * clamp(p_complete) * 1000.0).round() as i64),
        Bid::Cpa { cpa } => Micros((cpa.0 as f64 * clamp(p_conversion) * 1000.0).round() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_each_bid_type() {
        let m = Micros::from_units;
        assert_eq!(ecpm(Bid::Cpm { cpm: m(12.0) }, 0.5, 0.5, 0.5), m(12.0));
        // $2 per click at 1% CTR is worth $20 per thousand impressions.
        assert_eq!(ecpm(Bid::Cpc { cpc: m(2.0) }, 0.01, 0.0, 0.0), m(20.0));
        // 5 cents per completed view at 75% completion: $37.50 CPM.
        assert_eq!(ecpm(Bid::Cpcv { cpcv: m(0.05) }, 0.0, 0.75, 0.0), m(37.5));
        // $40 per conversion at one conversion in 10,000 impressions: $4 CPM.
        assert_eq!(ecpm(Bid::Cpa { cpa: m(40.0) }, 0.0, 0.0, 0.0001), m(4.0));
        assert_eq!(
            ecpm(Bid::Cpc { cpc: m(2.0) }, f32::NAN, 0.0, 0.0),
            Micros::ZERO
        );
        assert_eq!(ecpm(Bid::Cpc { cpc: m(2.0) }, 7.0, 0.0, 0.0), m(2000.0));
    }
}
