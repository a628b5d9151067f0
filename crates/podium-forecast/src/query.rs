//! Targeting queries: which opportunities a booking would buy.
//!
//! Text form, `key=value` pairs separated by `,` (or `;`), alternatives by `|`:
//!
//! ```text
//! country=US|CA, device=tv, genre=sports, live=true, daypart=primetime, position=preroll, duration=30
//! ```
//!
//! Keys: `country`, `device`, `genre`, `live` (`true`/`false`), `daypart` (`overnight` 0–6,
//! `morning` 6–12, `afternoon` 12–18, `primetime` 18–24, viewer's local time), `hours` (`18-23`,
//! local, may wrap past midnight), `days` (`mon`…`sun`), `position` (`preroll`, `midroll`,
//! `postroll`), `duration` (creative seconds, one of [`DURATIONS`]). A key left out matches
//! everything; `*` or an empty text matches all traffic.

use crate::opportunity::{fit_bit, Fits, DURATIONS, POSITIONS};

/// Names of [`POSITIONS`], in their order.
const POSITION_NAMES: [&str; 3] = ["preroll", "midroll", "postroll"];
use serde::{Deserialize, Serialize};

/// Named dayparts: (name, first local hour, hour it ends before).
pub const DAYPARTS: [(&str, u8, u8); 4] = [
    ("overnight", 0, 6),
    ("morning", 6, 12),
    ("afternoon", 12, 18),
    ("primetime", 18, 24),
];
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const KEYS: [&str; 9] = [
    "country", "device", "genre", "live", "daypart", "hours", "days", "position", "duration",
];

/// A parsed targeting query, as given (values checked against a vocabulary later).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Targeting {
    /// Countries (upper case); empty for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    /// Devices (lower case); empty for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Genres (lower case); empty for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub genres: Vec<String>,
    /// Live content only (`true`) or none of it (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
    /// Local hours of the week matched (Monday 00:00 = 0); `None` for every hour.
    #[serde(default, skip)]
    pub week_hours: Option<Vec<bool>>,
    /// The daypart as written, for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daypart: Option<String>,
    /// Break positions; empty for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub positions: Vec<String>,
    /// Creative length, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<u32>,
    /// The query as written.
    pub text: String,
}

impl Targeting {
    /// Parses the text form; errors name the pair and what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut t = Targeting {
            text: text.trim().to_string(),
            ..Default::default()
        };
        let (mut hours, mut days): (Option<(u8, u8)>, Option<Vec<usize>>) = (None, None);
        let mut seen = Vec::new();
        for pair in text.split([',', ';']).map(str::trim) {
            if pair.is_empty() || pair == "*" {
                continue;
            }
            let Some((key, value)) = pair.split_once('=') else {
                return Err(format!(
                    "{pair:?} is not key=value (keys: {})",
                    KEYS.join(", ")
                ));
            };
            let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
            if seen.contains(&key) {
                return Err(format!("{key} is given twice"));
            }
            seen.push(key.clone());
            let values: Vec<&str> = value.split('|').map(str::trim).collect();
            if values.iter().any(|v| v.is_empty()) {
                return Err(format!("{key}: an empty value in {value:?}"));
            }
            match key.as_str() {
                "country" => t.countries = values.iter().map(|v| v.to_ascii_uppercase()).collect(),
                "device" => {
                    t.devices = values
                        .iter()
                        .map(|v| match v.to_ascii_lowercase().as_str() {
                            "ctv" => "tv".to_string(),
                            v => v.to_string(),
                        })
                        .collect()
                }
                "genre" => t.genres = values.iter().map(|v| v.to_ascii_lowercase()).collect(),
                "live" => {
                    t.live = Some(match value.to_ascii_lowercase().as_str() {
                        "true" | "yes" | "1" => true,
                        "false" | "no" | "0" => false,
                        _ => return Err(format!("live: {value:?} is not true or false")),
                    })
                }
                "daypart" => {
                    let names: Vec<String> = DAYPARTS.iter().map(|d| d.0.to_string()).collect();
                    let mut hs = Vec::new();
                    for v in &values {
                        let Some(&(_, a, b)) =
                            DAYPARTS.iter().find(|d| d.0.eq_ignore_ascii_case(v))
                        else {
                            return Err(format!(
                                "daypart: {v:?} is not one of {} (or give hours=A-B)",
                                names.join(", ")
                            ));
                        };
                        hs.push((a, b));
                    }
                    t.daypart = Some(value.to_string());
                    t.week_hours = Some(week_hours(&hs, None));
                }
                "hours" => {
                    let bad = || format!("hours: {value:?} is not A-B with hours 0-24");
                    let (a, b) = value.split_once('-').ok_or_else(bad)?;
                    let a: u8 = a.trim().parse().map_err(|_| bad())?;
                    let b: u8 = b.trim().parse().map_err(|_| bad())?;
                    if a > 23 || b > 24 || a == b {
                        return Err(bad());
                    }
                    hours = Some((a, b));
                }
                "days" => {
                    let mut ds = Vec::new();
                    for v in &values {
                        match DAYS.iter().position(|d| d.eq_ignore_ascii_case(v)) {
                            Some(d) => ds.push(d),
                            None => return Err(format!("days: {v:?} is not a day (mon … sun)")),
                        }
                    }
                    days = Some(ds);
                }
                "position" => {
                    for v in &values {
                        let v = v.to_ascii_lowercase();
                        let v = v.trim_end_matches("-roll").trim_end_matches("roll");
                        let name = match v {
                            "pre" => "preroll",
                            "mid" => "midroll",
                            "post" => "postroll",
                            _ => {
                                return Err(format!(
                                    "position: {v:?} is not preroll, midroll or postroll"
                                ))
                            }
                        };
                        t.positions.push(name.to_string());
                    }
                }
                "duration" => {
                    let d: u32 =
                        value.trim_end_matches('s').trim().parse().map_err(|_| {
                            format!("duration: {value:?} is not a number of seconds")
                        })?;
                    if !DURATIONS.contains(&d) {
                        return Err(format!(
                            "duration: {d} s is not a length the forecast keeps ({:?} s)",
                            DURATIONS
                        ));
                    }
                    t.duration_s = Some(d);
                }
                _ => {
                    return Err(format!(
                        "unknown targeting key {key:?} (keys: {})",
                        KEYS.join(", ")
                    ))
                }
            }
        }
        if hours.is_some() || days.is_some() {
            if t.week_hours.is_some() {
                return Err("give daypart or hours/days, not both".into());
            }
            let spans = vec![hours.unwrap_or((0, 24))];
            t.week_hours = Some(week_hours(&spans, days.as_deref()));
            let mut label = Vec::new();
            if let Some((a, b)) = hours {
                label.push(format!("{a:02}-{b:02}h"));
            }
            if let Some(ds) = &days {
                label.push(ds.iter().map(|&d| DAYS[d]).collect::<Vec<_>>().join("|"));
            }
            t.daypart = Some(label.join(" "));
        }
        Ok(t)
    }

    /// The break capacity a matching request must have: any bit of the mask.
    pub fn fits_mask(&self) -> Fits {
        let positions: Vec<usize> = if self.positions.is_empty() {
            (0..POSITIONS.len()).collect()
        } else {
            self.positions
                .iter()
                .filter_map(|p| POSITION_NAMES.iter().position(|x| x == p))
                .collect()
        };
        let durations: Vec<usize> = match self.duration_s {
            Some(d) => DURATIONS.iter().position(|&x| x == d).into_iter().collect(),
            None => (0..DURATIONS.len()).collect(),
        };
        let mut mask = 0;
        for &p in &positions {
            for &d in &durations {
                mask |= fit_bit(p, d);
            }
        }
        mask
    }

    /// Whether a local hour of the week is in the daypart.
    pub fn at_hour(&self, local_week_hour: usize) -> bool {
        self.week_hours
            .as_ref()
            .is_none_or(|h| h[local_week_hour % 168])
    }
}

/// The local hours of the week covered by hour spans on some days (all days when `None`).
fn week_hours(spans: &[(u8, u8)], days: Option<&[usize]>) -> Vec<bool> {
    let mut out = vec![false; 168];
    let all: Vec<usize> = (0..7).collect();
    for &d in days.unwrap_or(&all) {
        for &(a, b) in spans {
            let (a, b) = (usize::from(a), usize::from(b));
            let span = if b > a { b - a } else { 24 - a + b };
            for h in 0..span {
                out[(d * 24 + a + h) % 168] = true;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form() {
        let t = Targeting::parse(
            "country=us|CA, device=ctv, genre=Sports, live=true, daypart=primetime, position=pre, duration=30",
        )
        .unwrap();
        assert_eq!(t.countries, ["US", "CA"]);
        assert_eq!(t.devices, ["tv"]);
        assert_eq!(t.genres, ["sports"]);
        assert_eq!(t.live, Some(true));
        assert!(t.at_hour(20) && !t.at_hour(10) && t.at_hour(6 * 24 + 23));
        assert_eq!(t.positions, ["preroll"]);
        assert_eq!(t.fits_mask(), fit_bit(0, 4));
        assert_eq!(Targeting::parse("*").unwrap().fits_mask().count_ones(), 27);

        let wrap = Targeting::parse("hours=22-2; days=sat").unwrap();
        assert!(wrap.at_hour(5 * 24 + 23) && wrap.at_hour(6 * 24 + 1) && !wrap.at_hour(22));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for (text, says) in [
            ("planet=mars", "unknown targeting key"),
            ("country", "not key=value"),
            ("live=maybe", "not true or false"),
            ("daypart=brunch", "not one of"),
            ("duration=37", "not a length"),
            ("hours=25-3", "hours"),
            ("days=funday", "not a day"),
            ("position=side", "not preroll"),
            ("country=US,country=CA", "twice"),
            ("daypart=morning,hours=1-2", "not both"),
            ("genre=|drama", "empty value"),
        ] {
            let e = Targeting::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
