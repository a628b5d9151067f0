//! Ad request traffic: a deterministic stream of decide requests drawn from a viewer population,
//! as the load generator, the compute-floor measurement and the tests send them.
//!
//! The stream is drawn as validated [`AdRequest`]s; [`RequestGen::next_body`] writes the same
//! request as the JSON body of `POST /v1/decide`, so in-process measurements and HTTP load see
//! the same traffic.

use podium_core::{AdBreak, AdRequest, BreakPosition, Content, Device, User};
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
    /// Countries requests come from, drawn uniformly once the home market's share is drawn.
    pub countries: &'static [&'static str],
    /// The largest market, which gets `home_share` of the traffic on top of its uniform share.
    pub home_country: &'static str,
    /// Extra share of the home market.
    pub home_share: f64,
    /// Genres of the content catalogue, drawn uniformly.
    pub genres: &'static [&'static str],
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
            countries: &crate::demo::COUNTRIES,
            home_country: "US",
            home_share: 0.5,
            genres: &crate::demo::GENRES,
        }
    }

    /// Traffic of the standard workload (`ARCHITECTURE.md` §7): its 1,000,000 viewers, its
    /// countries and genres, breaks of 1–6 slots and 15–120 s.
    pub fn standard() -> Self {
        Self {
            users: crate::standard::VIEWERS,
            live_share: 0.1,
            max_breaks: 2,
            slots: (1, 6),
            seconds: (15, 120),
            countries: &crate::standard::COUNTRIES,
            home_country: "US",
            home_share: crate::standard::US_EXTRA_SHARE,
            genres: &crate::standard::GENRES,
        }
    }
}

/// What a caller fixes of a request drawn by [`RequestGen::request_with`].
#[derive(Clone, Copy, Debug)]
pub struct Dims<'a> {
    /// The viewer is `u-{user}`.
    pub user: usize,
    /// Country (ISO 3166-1 alpha-2).
    pub country: &'a str,
    /// The screen.
    pub device: Device,
    /// The viewer's offset from UTC, when known.
    pub utc_offset_min: Option<i32>,
    /// Content genre.
    pub genre: &'a str,
    /// Whether the stream is live.
    pub live: bool,
    /// Content id; a catalogue title (`t-…`) is drawn when absent.
    pub content_id: Option<&'a str>,
    /// The live event the stream carries.
    pub event_id: Option<&'a str>,
}

/// Generates requests from a seed; the same seed gives the same stream.
pub struct RequestGen {
    rng: ChaCha8Rng,
    cfg: TrafficConfig,
    next: u64,
}

/// Devices in proportion to their traffic: half of CTV viewing happens on the TV.
const DEVICES: [Device; 6] = [
    Device::Tv,
    Device::Tv,
    Device::Tv,
    Device::Mobile,
    Device::Tablet,
    Device::Desktop,
];
const POSITIONS: [BreakPosition; 3] = [
    BreakPosition::Preroll,
    BreakPosition::Midroll,
    BreakPosition::Postroll,
];

impl RequestGen {
    /// A generator of this traffic from `seed`.
    pub fn new(cfg: TrafficConfig, seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            cfg,
            next: 0,
        }
    }

    /// The next request.
    pub fn next_request(&mut self) -> AdRequest {
        let id = self.next;
        self.next += 1;
        let r = &mut self.rng;
        let cfg = &self.cfg;
        let breaks = draw_breaks(r, cfg);
        let country = if r.random_bool(cfg.home_share) {
            cfg.home_country
        } else {
            cfg.countries[r.random_range(0..cfg.countries.len())]
        };
        AdRequest {
            request_id: format!("lg-{id}").as_str().into(),
            user: User {
                id: format!("u-{}", r.random_range(0..cfg.users))
                    .as_str()
                    .into(),
                country: country.to_string(),
                device: DEVICES[r.random_range(0..DEVICES.len())],
                region: None,
                segments: Vec::new(),
                utc_offset_min: None,
            },
            content: Content {
                id: format!("t-{}", r.random_range(0..5_000)).as_str().into(),
                genre: cfg.genres[r.random_range(0..cfg.genres.len())].to_string(),
                live: r.random_bool(cfg.live_share),
                rating: None,
                event_id: None,
            },
            breaks,
            tmax: None,
            blocked_categories: Vec::new(),
            blocked_advertisers: Vec::new(),
        }
    }

    /// The next request with the viewer and content `dims` gives; its breaks (and its title when
    /// `dims` names none) are drawn as [`next_request`](Self::next_request) draws them.
    pub fn request_with(&mut self, dims: &Dims<'_>) -> AdRequest {
        let id = self.next;
        self.next += 1;
        let r = &mut self.rng;
        let breaks = draw_breaks(r, &self.cfg);
        let content_id = match dims.content_id {
            Some(c) => c.into(),
            None => format!("t-{}", r.random_range(0..5_000)).as_str().into(),
        };
        AdRequest {
            request_id: format!("lg-{id}").as_str().into(),
            user: User {
                id: format!("u-{}", dims.user).as_str().into(),
                country: dims.country.to_string(),
                device: dims.device,
                region: None,
                segments: Vec::new(),
                utc_offset_min: dims.utc_offset_min,
            },
            content: Content {
                id: content_id,
                genre: dims.genre.to_string(),
                live: dims.live,
                rating: None,
                event_id: dims.event_id.map(str::to_string),
            },
            breaks,
            tmax: None,
            blocked_categories: Vec::new(),
            blocked_advertisers: Vec::new(),
        }
    }

    /// The next request as a JSON body of `POST /v1/decide`.
    pub fn next_body(&mut self) -> String {
        body(&self.next_request())
    }
}

/// One to `max_breaks` breaks of drawn position, slots and length.
fn draw_breaks(r: &mut ChaCha8Rng, cfg: &TrafficConfig) -> Vec<AdBreak> {
    (0..r.random_range(1..=cfg.max_breaks))
        .map(|b| AdBreak {
            id: format!("b{b}").as_str().into(),
            position: POSITIONS[r.random_range(0..3)],
            max_ads: r.random_range(cfg.slots.0..=cfg.slots.1),
            max_duration_s: r.random_range(cfg.seconds.0..=cfg.seconds.1),
            rules: Default::default(),
        })
        .collect()
}

/// The JSON body of `POST /v1/decide` for a request.
pub fn body(req: &AdRequest) -> String {
    let breaks: Vec<serde_json::Value> = req
        .breaks
        .iter()
        .map(|b| {
            let position = match b.position {
                BreakPosition::Preroll => "preroll",
                BreakPosition::Midroll => "midroll",
                BreakPosition::Postroll => "postroll",
            };
            serde_json::json!({
                "id": b.id.as_str(),
                "position": position,
                "max_ads": b.max_ads,
                "max_duration_s": b.max_duration_s,
            })
        })
        .collect();
    let mut v = serde_json::json!({
        "request_id": req.request_id.as_str(),
        "user": {
            "id": req.user.id.as_str(),
            "country": req.user.country,
            "device": req.user.device.as_str(),
        },
        "content": {
            "id": req.content.id.as_str(),
            "genre": req.content.genre,
            "live": req.content.live,
        },
        "breaks": breaks,
    });
    if let Some(t) = req.tmax {
        v["tmax_ms"] = serde_json::json!(t.as_millis() as u64);
    }
    v.to_string()
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

    #[test]
    fn requests_are_valid_and_use_the_worlds_vocabulary() {
        let cfg = TrafficConfig::standard();
        let mut g = RequestGen::new(cfg.clone(), 1);
        for _ in 0..200 {
            let req = g.next_request();
            assert_eq!(req.clone().validate().unwrap(), req);
            assert!(cfg.countries.contains(&req.user.country.as_str()));
            assert!(cfg.genres.contains(&req.content.genre.as_str()));
            let u: usize = req.user.id.as_str()[2..].parse().unwrap();
            assert!(u < cfg.users);
        }
    }
}
