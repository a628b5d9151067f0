//! Streaming aggregation throughput: events per second folded into tiles by one core, then the
//! cost of a flush of every touched entity into the embedded store.
//!
//! ```sh
//! cargo run --release -p podium-features --example aggregate_bench -- [EVENTS] [USERS]
//! ```
//!
//! Prints one JSON line. Events are parsed from JSON as they would arrive from the bus.

use podium_features::{Aggregator, Definitions, MemoryStore};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFINITIONS: &str = r#"
[[feature]]
name = "user_impressions_1h"
entity = "user"
aggregation = "count"
event = "impression"
window = "1h"
default = 0.0
ttl = "1d"

[[feature]]
name = "user_impressions_1d"
entity = "user"
aggregation = "count"
event = "impression"
window = "1d"
default = 0.0
ttl = "7d"

[[feature]]
name = "user_clicks_7d"
entity = "user"
aggregation = "count"
event = "click"
window = "7d"
default = 0.0
ttl = "30d"

[[feature]]
name = "user_watch_mean_1d"
entity = "user"
aggregation = "mean"
event = "play"
field = "value"
window = "1d"
default = 0.0
ttl = "7d"

[[feature]]
name = "li_impressions_1h"
entity = "line_item"
aggregation = "count"
event = "impression"
window = "1h"
default = 0.0
ttl = "1d"

[[feature]]
name = "li_distinct_users_1d"
entity = "line_item"
aggregation = "distinct"
event = "impression"
field = "user_id"
window = "1d"
default = 0.0
ttl = "7d"
"#;

fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let users: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let defs = Arc::new(
        Definitions::parse(DEFINITIONS, std::path::Path::new("bench.toml"))
            .expect("bench definitions"),
    );
    let mut agg = Aggregator::new(defs, Duration::from_secs(3600));

    // Events 10 ms apart over a few hours, a mix of types, users and 5,000 line items; built
    // before the clock starts so that only parsing and folding are timed.
    let start_ms: i64 = 1_790_000_000_000;
    let types = [
        "impression",
        "impression",
        "impression",
        "play",
        "click",
        "completion",
    ];
    let bodies: Vec<String> = (0..events)
        .map(|i| {
            let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            x ^= x >> 29;
            let kind = types[(x % types.len() as u64) as usize];
            format!(
                r#"{{"id":"e{i}","type":"{kind}","ts_ms":{},"user_id":"u{}","line_item_id":"li{}","value":{}}}"#,
                start_ms + i as i64 * 10,
                (x >> 8) % users as u64,
                (x >> 24) % 5_000,
                (x >> 40) % 120
            )
        })
        .collect();

    let t = Instant::now();
    let mut rejected = 0u64;
    for b in &bodies {
        if agg.apply_json(b.as_bytes()).is_err() {
            rejected += 1;
        }
    }
    let fold = t.elapsed();

    let store = MemoryStore::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let t = Instant::now();
    let written = runtime
        .block_on(agg.flush(&store))
        .expect("flush to memory");
    let flush = t.elapsed();

    println!(
        "{}",
        serde_json::json!({
            "events": events,
            "rejected": rejected,
            "fold_s": fold.as_secs_f64(),
            "events_per_s_one_core": (events as f64 / fold.as_secs_f64()).round(),
            "entities_flushed": written,
            "flush_s": flush.as_secs_f64(),
        })
    );
}
