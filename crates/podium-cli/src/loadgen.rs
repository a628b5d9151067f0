//! `podium loadgen`: an open-loop load generator.
//!
//! Requests go out on a fixed schedule whatever the server does, and each latency is measured
//! from the request's *scheduled* send time, so a server that stalls is charged for every request
//! it delayed (no coordinated omission).

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use podium_sim::traffic::{RequestGen, TrafficConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options of `podium loadgen`.
#[derive(Args, Debug)]
pub struct LoadgenArgs {
    /// Server to load: a base URL (requests go to /v1/decide) or a full endpoint URL.
    #[arg(long)]
    target: String,
    /// Requests per second, sent on schedule.
    #[arg(long)]
    rate: f64,
    /// How long to send, e.g. 30s, 2m, 500ms.
    #[arg(long, value_parser = parse_duration)]
    duration: Duration,
    /// Which traffic to send.
    #[arg(long, value_enum, default_value = "demo")]
    workload: Workload,
    /// Send this JSON body with every request instead of generated decide requests (e.g. an
    /// Open Inference Protocol infer request, with --target naming the infer URL).
    #[arg(long)]
    body: Option<std::path::PathBuf>,
    /// Seed of the request stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A request not answered within this many milliseconds counts as an error.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Most requests in flight; a send beyond it counts as an error rather than queueing.
    #[arg(long, default_value_t = 20_000)]
    max_in_flight: u64,
    /// Process id of the server under load (Linux): the summary then reports the CPU time the
    /// server used during the run and per answered request, the figure the serving overhead
    /// (CPU per decision ÷ compute floor) is computed from.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A number of microseconds in every answer to histogram beside the client-side latency,
    /// as a dotted path into the response JSON (e.g. `timings_us.hydrate_us` of a decision, or
    /// `hydrate_us` of /v1/features/hydrate): the server's own figure for one stage under load.
    #[arg(long)]
    server_timing: Option<String>,
    /// Async worker threads of the generator (pin the process with taskset to keep it off the
    /// server's cores).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// The traffic a load run sends.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Workload {
    /// Viewers and breaks of the embedded demo world (10,000 viewers).
    Demo,
    /// The standard workload's traffic: its 1,000,000 viewers, 20 countries and 16 genres, breaks
    /// of 1–6 slots and 15–120 s (serve it with `podium serve --workload standard`).
    Standard,
}

/// Parses `30s`, `2m`, `500ms` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 2m or 500ms"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{s:?} must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    shed: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
}

struct Latencies {
    /// Answered requests the server admitted.
    all: Histogram<u64>,
    /// Requests the server shed (answered at once with no ads, or 503).
    shed: Histogram<u64>,
    window: Histogram<u64>,
    /// The `--server-timing` field of admitted answers.
    server: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= 1_000_000.0) {
        bail!("--rate must be in (0, 1000000], got {}", args.rate);
    }
    let url = if args.target.trim_end_matches('/').matches('/').count() <= 2 {
        format!("{}/v1/decide", args.target.trim_end_matches('/'))
    } else {
        args.target.clone()
    };
    reqwest::Url::parse(&url)
        .with_context(|| format!("--target {:?} is not a URL", args.target))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(drive(url, args))?;
    println!("{summary}");
    Ok(())
}

async fn drive(url: String, args: LoadgenArgs) -> anyhow::Result<serde_json::Value> {
    let traffic = match args.workload {
        Workload::Demo => TrafficConfig::demo(),
        Workload::Standard => TrafficConfig::standard(),
    };
    // Bodies are made before the clock starts so that generating them never delays a send.
    let total = (args.rate * args.duration.as_secs_f64()).ceil() as u64;
    let bodies: Arc<Vec<bytes_body::Body>> = Arc::new(match &args.body {
        Some(path) => vec![bytes_body::Body::from(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --body {}", path.display()))?,
        )],
        None => {
            let mut generator = RequestGen::new(traffic, args.seed);
            let distinct = total.clamp(1, 100_000) as usize;
            (0..distinct)
                .map(|_| bytes_body::Body::from(generator.next_body()))
                .collect()
        }
    });

    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Mutex::new(Latencies {
        all: histogram(),
        shed: histogram(),
        window: histogram(),
        server: histogram(),
    }));
    let timing_path: Option<Arc<Vec<String>>> = args
        .server_timing
        .as_ref()
        .map(|p| Arc::new(p.split('.').map(str::to_owned).collect()));

    let cpu_before = match args.server_pid {
        Some(pid) => Some(process_cpu(pid)?),
        None => None,
    };
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let progress = tokio::spawn(report_progress(counters.clone(), latencies.clone(), start));
    let mut next = 0u64;
    while next < total {
        let scheduled = start + interval.mul_f64(next as f64);
        let now = Instant::now();
        if scheduled > now {
            let wait = scheduled - now;
            // tokio's timer has millisecond granularity: sleep the bulk, yield through the rest.
            if wait > Duration::from_millis(2) {
                tokio::time::sleep(wait - Duration::from_millis(1)).await;
            } else {
                tokio::task::yield_now().await;
            }
            continue;
        }
        counters.sent.fetch_add(1, Ordering::Relaxed);
        if counters.in_flight.load(Ordering::Relaxed) >= args.max_in_flight {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            next += 1;
            continue;
        }
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let body = bodies[(next % bodies.len() as u64) as usize].clone();
        let (client, url, counters, latencies, timing_path) = (
            client.clone(),
            url.clone(),
            counters.clone(),
            latencies.clone(),
            timing_path.clone(),
        );
        tokio::spawn(async move {
            let result = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.into_inner())
                .send()
                .await;
            let mut server_us = None;
            let (ok, shed) = match result {
                Ok(r) => {
                    let status = r.status();
                    let shed = r.headers().contains_key("x-podium-shed");
                    let body = r.bytes().await;
                    if let (Some(path), Ok(b)) = (&timing_path, &body) {
                        server_us = field_u64(b, path);
                    }
                    (body.is_ok() && status.is_success() && !shed, shed)
                }
                Err(_) => (false, false),
            };
            let us = (scheduled.elapsed().as_micros().max(1) as u64).min(60_000_000);
            if ok {
                counters.ok.fetch_add(1, Ordering::Relaxed);
            } else if shed {
                counters.shed.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
            {
                let mut l = latencies.lock().expect("latency lock");
                if shed {
                    let _ = l.shed.record(us);
                } else {
                    let _ = l.all.record(us);
                    let _ = l.window.record(us);
                }
                if let (true, Some(s)) = (ok, server_us) {
                    let _ = l.server.record(s.clamp(1, 60_000_000));
                }
            }
            counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
        next += 1;
    }
    let sending = start.elapsed();
    let drain_deadline = Instant::now() + Duration::from_millis(args.timeout_ms + 500);
    while counters.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    progress.abort();
    let l = latencies.lock().expect("latency lock");
    let ms = |q: f64| l.all.value_at_quantile(q) as f64 / 1000.0;
    let ok = counters.ok.load(Ordering::Relaxed);
    let mut summary = serde_json::json!({
        "sent": counters.sent.load(Ordering::Relaxed),
        "ok": ok,
        "shed": counters.shed.load(Ordering::Relaxed),
        "shed_p99_ms": l.shed.value_at_quantile(0.99) as f64 / 1000.0,
        "errors": counters.errors.load(Ordering::Relaxed) + counters.in_flight.load(Ordering::Relaxed),
        "target_rps": args.rate,
        "achieved_rps": ok as f64 / sending.as_secs_f64().max(1e-9),
        "duration_s": sending.as_secs_f64(),
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": l.all.max() as f64 / 1000.0,
    });
    if let Some(field) = &args.server_timing {
        let q = |q: f64| l.server.value_at_quantile(q) as f64 / 1000.0;
        summary["server_timing"] = serde_json::json!({
            "field": field,
            "count": l.server.len(),
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
            "p999_ms": q(0.999),
            "max_ms": l.server.max() as f64 / 1000.0,
        });
    }
    if let (Some(pid), Some(before)) = (args.server_pid, cpu_before) {
        let used = process_cpu(pid)?.saturating_sub(before);
        summary["server_cpu_s"] = serde_json::json!(used.as_secs_f64());
        summary["server_cpu_us_per_ok"] =
            serde_json::json!((used.as_secs_f64() * 1e6 / ok.max(1) as f64).round());
    }
    Ok(summary)
}

/// The unsigned integer at a dotted `path` of a JSON body, if there is one.
fn field_u64(body: &[u8], path: &[String]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    path.iter().try_fold(&v, |v, k| v.get(k))?.as_u64()
}

/// User plus system CPU time a process has used, from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .with_context(|| format!("--server-pid {pid}: reading {path} (Linux only)"))?;
    parse_cpu(&stat).with_context(|| format!("--server-pid {pid}: unexpected {path}: {stat:?}"))
}

/// utime and stime are fields 14 and 15, counted in USER_HZ ticks (100 per second on every
/// Linux architecture); the command name before them may hold spaces, so count from its `)`.
fn parse_cpu(stat: &str) -> anyhow::Result<Duration> {
    let rest = &stat[stat.rfind(')').context("no command name")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks =
        |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("too few fields")?.parse()?) };
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

async fn report_progress(
    counters: Arc<Counters>,
    latencies: Arc<Mutex<Latencies>>,
    start: Instant,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last_ok = 0;
    loop {
        tick.tick().await;
        let ok = counters.ok.load(Ordering::Relaxed);
        let (p50, p99) = {
            let mut l = latencies.lock().expect("latency lock");
            let r = (
                l.window.value_at_quantile(0.5),
                l.window.value_at_quantile(0.99),
            );
            l.window.reset();
            r
        };
        eprintln!(
            "t={:>4.0}s sent={} ok/s={} shed={} errors={} in_flight={} p50={:.2}ms p99={:.2}ms",
            start.elapsed().as_secs_f64(),
            counters.sent.load(Ordering::Relaxed),
            ok - last_ok,
            counters.shed.load(Ordering::Relaxed),
            counters.errors.load(Ordering::Relaxed),
            counters.in_flight.load(Ordering::Relaxed),
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
        );
        last_ok = ok;
    }
}

/// Request bodies shared between sends without copying.
mod bytes_body {
    /// A cheaply clonable request body.
    #[derive(Clone)]
    pub struct Body(std::sync::Arc<str>);

    impl From<String> for Body {
        fn from(s: String) -> Self {
            Body(s.into())
        }
    }

    impl Body {
        /// The body for reqwest (one copy per send; bodies are a few hundred bytes).
        pub fn into_inner(self) -> String {
            self.0.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("3 fortnights").is_err());
    }

    #[test]
    fn reads_a_timing_field_by_path() {
        let path: Vec<String> = vec!["timings_us".into(), "hydrate_us".into()];
        assert_eq!(
            field_u64(br#"{"timings_us":{"hydrate_us":42}}"#, &path),
            Some(42)
        );
        assert_eq!(field_u64(br#"{"timings_us":{}}"#, &path), None);
        assert_eq!(field_u64(b"not json", &path), None);
    }

    #[test]
    fn reads_cpu_time_from_proc_stat() {
        let stat =
            "4242 (podium serve) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 56 0 0 20 0 9 0 7 0 0";
        assert_eq!(parse_cpu(stat).unwrap(), Duration::from_millis(12_900));
        assert!(parse_cpu("garbage").is_err());
        let own = process_cpu(std::process::id()).unwrap();
        assert!(own < Duration::from_secs(3600));
    }
}
