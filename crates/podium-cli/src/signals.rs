//! `podium signals …`: check the real-time signal sources of a definitions file against their
//! services, and run the demo signal service (HTTP and gRPC) to try sources out.

use anyhow::Context;
use clap::{Args, Subcommand};
use podium_core::AdRequest;
use podium_features::definitions::parse_duration;
use podium_features::{Definitions, Signals};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Signal source commands.
#[derive(Subcommand, Debug)]
pub enum SignalsCommand {
    /// Call every source of a definitions file once with a sample request; print what each
    /// answered (or why its defaults would be served) and how long it took, as JSON lines.
    /// Exits non-zero when a source fails.
    ///
    /// Example:
    ///   podium signals check --definitions features.toml --request request.json
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),
    /// Run the demo signal service: `POST http://<http>/<any path>` (JSON) and gRPC
    /// `podium.signals.v1.SignalSource/Fetch` on <grpc>, answering session_depth, brand_safety,
    /// fraud_score, event_minute and fields_seen from the fields sent.
    ///
    /// Example:
    ///   podium signals demo --http 127.0.0.1:9100 --grpc 127.0.0.1:9101 --delay 50ms
    #[command(verbatim_doc_comment)]
    Demo(DemoArgs),
}

/// Options of `podium signals check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Feature definitions (TOML) with `[[source]]` tables.
    #[arg(long)]
    definitions: PathBuf,
    /// A decision request (JSON, as POST /v1/decide takes) whose fields are sent; a built-in
    /// sample when absent.
    #[arg(long)]
    request: Option<PathBuf>,
}

/// Options of `podium signals demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:9100")]
    http: SocketAddr,
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:9101")]
    grpc: SocketAddr,
    /// Answer after this long (e.g. 500us is not accepted: use 1ms, 50ms).
    #[arg(long, value_parser = parse_delay, default_value = "0ms")]
    delay: Duration,
    /// Delay only one call in N (tail latency); 1: every call.
    #[arg(long, default_value_t = 1)]
    slow_every: u64,
    /// Fail every call (HTTP 503, gRPC UNAVAILABLE).
    #[arg(long)]
    failing: bool,
    /// Fail every other call.
    #[arg(long)]
    flapping: bool,
}

fn parse_delay(s: &str) -> Result<Duration, String> {
    if s.trim().trim_end_matches("ms") == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

/// Runs a `podium signals` command.
pub fn run(cmd: SignalsCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cmd {
        SignalsCommand::Check(args) => rt.block_on(check(args)),
        SignalsCommand::Demo(args) => rt.block_on(demo(args)),
    }
}

const SAMPLE: &str = r#"{"request_id": "signals-check", "user": {"id": "u1", "country": "US", "device": "ctv"},
 "content": {"id": "c1", "genre": "sports", "live": true},
 "breaks": [{"id": "b1", "position": "midroll", "max_ads": 2, "max_duration_s": 60}], "tmax": 100}"#;

async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let defs = Definitions::load(&args.definitions)?;
    if defs.sources().is_empty() {
        anyhow::bail!(
            "{}: declares no signal source ([[source]])",
            args.definitions.display()
        );
    }
    let text = match &args.request {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?,
        None => SAMPLE.to_string(),
    };
    let name = args
        .request
        .as_ref()
        .map_or("the sample request".to_string(), |p| {
            p.display().to_string()
        });
    let raw: AdRequest =
        serde_json::from_str(&text).with_context(|| format!("{name}: not a decision request"))?;
    let req = raw.validate().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let signals = Signals::new(defs.sources()).map_err(anyhow::Error::msg)?;
    let mut failed = 0;
    for source in signals.sources() {
        let one = Signals::new(std::slice::from_ref(source.def())).map_err(anyhow::Error::msg)?;
        let t = Instant::now();
        let outcome = one.fetch(&req, source.def().timeout).await.remove(0);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let values: serde_json::Map<String, serde_json::Value> = source
            .def()
            .features
            .iter()
            .zip(&outcome.values)
            .map(|(f, &v)| {
                // The f32 as written (0.098), not its f64 widening (0.09799999743…).
                let x: f64 = v.to_string().parse().unwrap_or(f64::NAN);
                (f.name.clone(), serde_json::Value::from(x))
            })
            .collect();
        let error = one.sources()[0].status().last_error;
        if outcome.fallback.is_some() {
            failed += 1;
        }
        println!(
            "{}",
            serde_json::json!({
                "source": source.def().name,
                "ok": outcome.fallback.is_none(),
                "fallback": outcome.fallback.map(|f| f.as_str()),
                "error": error,
                "ms": (ms * 1000.0).round() / 1000.0,
                "values": values,
            })
        );
    }
    if failed > 0 {
        anyhow::bail!("{failed} signal source(s) would serve their defaults");
    }
    Ok(())
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let server = podium_server::signal_demo::DemoSignalServer::start(args.http, args.grpc)
        .await
        .context("starting the demo signal service")?;
    server.control.set_delay(args.delay);
    server.control.set_slow_every(args.slow_every);
    server.control.set_failing(args.failing);
    server.control.set_flapping(args.flapping);
    eprintln!(
        "demo signal service: HTTP POST http://{}/signals, gRPC http://{} (delay {} ms{}{})",
        server.http,
        server.grpc,
        args.delay.as_millis(),
        if args.failing { ", failing" } else { "" },
        if args.flapping { ", flapping" } else { "" },
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
