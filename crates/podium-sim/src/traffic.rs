//! Ad request traffic: a deterministic stream of native decide requests drawn from a viewer
//! population, as the load generator and replay tests send them.

use crate::demo::{COUNTRIES, GENRES};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Shape of the traffic.
#[derive(Clone, Debug)]
pub struct TrafficConfig {
    /// Viewers are `u-0` … `u-{users-1}`.
    pub users: usize,
    /// Share of requests from live streams.
    pub live_share: f64,
    /// Most breaks per request.
    pub max_breaks: u32,
    /// Slots per break, inclusive range.
    pub slots: (u32, u32),
    /// Break length in seconds, inclusive range.
    pub seconds: (u32, u32),
}

impl TrafficConfig {
    /// Traffic for the embedded demo world.
    pub fn demo() -> Self {
        Self {
            users: 10_000,
            live_share: 0.1,
            max_breaks: 2,
            slots: (1, 6),
            seconds: (15, 120),
        }
    }
}

/// Generates request bodies from a seed; the same seed gives the same stream.
pub struct RequestGen {
    rng: ChaCha8Rng,
    cfg: TrafficConfig,
    next: u64,
}

const DEVICES: [&str; 6] = ["tv", "tv", "tv", "mobile", "tablet", "desktop"];

impl RequestGen {
    /// A generator of this traffic from `seed`.
    pub fn new(cfg: TrafficConfig, seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            cfg,
            next: 0,
        }
    }

    /// The next request as a JSON body of `POST /v1/decide`.
    pub fn next_body(&mut self) -> String {
        let id = self.next;
        self.next += 1;
        let r = &mut self.rng;
        let breaks: Vec<serde_json::Value> = (0..r.random_range(1..=self.cfg.max_breaks))
            .map(|b| {
                let position = ["preroll", "midroll", "postroll"][r.random_range(0..3)];
                serde_json::json!({
                    "id": format!("b{b}"),
                    "position": position,
                    "max_ads": r.random_range(self.cfg.slots.0..=self.cfg.slots.1),
                    "max_duration_s": r.random_range(self.cfg.seconds.0..=self.cfg.seconds.1),
                })
            })
            .collect();
        // Half the traffic from the largest market, the rest spread.
        let country = if r.random_bool(0.5) {
            "US"
        } else {
            COUNTRIES[r.random_range(0..COUNTRIES.len())]
        };
        serde_json::json!({
            "request_id": format!("lg-{id}"),
            "user": {
                "id": format!("u-{}", r.random_range(0..self.cfg.users)),
                "country": country,
                "device": DEVICES[r.random_range(0..DEVICES.len())],
            },
            "content": {
                "id": format!("t-{}", r.random_range(0..5_000)),
                "genre": GENRES[r.random_range(0..GENRES.len())],
                "live": r.random_bool(self.cfg.live_share),
            },
            "breaks": breaks,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = RequestGen::new(TrafficConfig::demo(), 3);
        let mut b = RequestGen::new(TrafficConfig::demo(), 3);
        for _ in 0..50 {
            let (x, y) = (a.next_body(), b.next_body());
            assert_eq!(x, y);
            let v: serde_json::Value = serde_json::from_str(&x).unwrap();
            let breaks = v["breaks"].as_array().unwrap();
            assert!(!breaks.is_empty() && breaks.len() <= 2);
            for br in breaks {
                assert!((1..=6).contains(&br["max_ads"].as_u64().unwrap()));
            }
        }
    }
}
